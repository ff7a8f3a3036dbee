/* Loopback nodes for the cluster suites (test-nodes.h). */
#include "test-nodes.h"

#include <arpa/inet.h>
#include <check.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixtures.h"

uint16_t llep_test_free_port(void) {
    static unsigned seed;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

    /* Not pid ^ time: two suites started together by meson can get equal seeds that way,
     * pick the same ports and stop each other's daemons from binding. */
    while (!seed)
        ck_assert_int_eq(getrandom(&seed, sizeof(seed), 0), (ssize_t)sizeof(seed));
    for (int attempt = 0; attempt < 200; attempt++) {
        uint16_t port = (uint16_t)(20000 + rand_r(&seed) % 12000);
        int fd = socket(AF_INET, SOCK_STREAM, 0), r;

        ck_assert_int_ge(fd, 0);
        sa.sin_port = htons(port);
        r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
        close(fd);
        if (r == 0)
            return port;
    }
    ck_abort_msg("no free port on 127.0.0.1 in 20000-31999");
    return 0;
}

void llep_test_peers(int n, uint16_t *ports, char *peers, size_t len) {
    size_t used = 0;

    for (int i = 0; i < n; i++) {
        bool taken;
        do {
            ports[i] = llep_test_free_port();
            taken = false;
            for (int j = 0; j < i; j++)
                taken |= ports[j] == ports[i];
        } while (taken);
        used += (size_t)snprintf(peers + used, len - used, "%s%d=127.0.0.1:%u", i ? "," : "", i,
                                 ports[i]);
        ck_assert_uint_lt(used, len);
    }
}

void llep_test_llepctl(char *path, size_t len) {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

    ck_assert_int_gt(n, 0);
    self[n] = '\0';
    snprintf(path, len, "%s/../tools/llepctl", dirname(self));
    ck_assert_msg(access(path, X_OK) == 0, "no llepctl at %s", path);
}

void llep_test_kill_nodes(pid_t *pids, int n, const char *dir) {
    for (int i = 0; i < n; i++)
        llep_test_kill(&pids[i]);
    llep_test_rm_rf(dir);
}
