/* Free loopback ports for tests (test-ports.h). */
#include "test-ports.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

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
