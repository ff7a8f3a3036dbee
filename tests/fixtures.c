/* Fixtures every test program may use (fixtures.h). */
#include "fixtures.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test-nodes.h"

int llep_test_run_suite(Suite *s, int mode) {
    SRunner *sr = srunner_create(s);
    int failed;

    srunner_run_all(sr, (enum print_output)mode);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

float *llep_test_random_floats(float (*rnd)(uint64_t *), uint64_t *s, size_t n, float scale) {
    float *v = malloc((n ? n : 1) * sizeof(float));

    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < n; i++)
        v[i] = rnd(s) * scale;
    return v;
}

void llep_test_f32_weights_init(llep_test_f32_weights *w, float (*rnd)(uint64_t *), uint64_t *s,
                                size_t n, size_t d, size_t h, float w_in, float w_out, float b) {
    memset(w, 0, sizeof(*w));
    w->wg = llep_test_random_floats(rnd, s, n * d * h, w_in);
    w->wu = llep_test_random_floats(rnd, s, n * d * h, w_in);
    w->wd = llep_test_random_floats(rnd, s, n * h * d, w_out);
    if (b != 0) {
        w->bg = llep_test_random_floats(rnd, s, n * h, b);
        w->bu = llep_test_random_floats(rnd, s, n * h, b);
        w->bd = llep_test_random_floats(rnd, s, n * d, b);
    }
}

void llep_test_f32_weights_fini(llep_test_f32_weights *w) {
    free(w->wg);
    free(w->wu);
    free(w->wd);
    free(w->bg);
    free(w->bu);
    free(w->bd);
    memset(w, 0, sizeof(*w));
}

double llep_test_rel_l2(const float *y, const double *ref, size_t n) {
    double num = 0, den = 0;

    for (size_t i = 0; i < n; i++) {
        num += (y[i] - ref[i]) * (y[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

void llep_test_tmpdir(char *dir, size_t len, const char *name) {
    llep_test_tmpdir_in(dir, len, "/tmp", name);
}

void llep_test_tmpdir_in(char *dir, size_t len, const char *base, const char *name) {
    ck_assert_int_lt(snprintf(dir, len, "%s/%s-XXXXXX", base, name), (int)len);
    ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp %s: %s", dir, strerror(errno));
}

void llep_test_rm_rf(const char *dir) {
    char cmd[PATH_MAX + 16];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

int llep_test_dir_entries(const char *path) {
    DIR *d = opendir(path);
    int n = 0;

    ck_assert_msg(d != NULL, "cannot read %s", path);
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

bool llep_test_file_contains(const char *path, const char *text) {
    char buf[65536];
    FILE *f = fopen(path, "r");
    size_t n;

    if (!f)
        return false;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, text) != NULL;
}

int llep_test_unix_connect(const char *path) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), err;

    ck_assert_int_ge(fd, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

/* An unlinked temporary file, at offset 0. */
static int temp_fd(void) {
    char path[] = "/tmp/llep-test-XXXXXX";
    int fd = mkstemp(path);

    ck_assert_int_ge(fd, 0);
    unlink(path);
    return fd;
}

/* All of fd from its start, NUL-terminated (malloc'd). */
static char *slurp(int fd) {
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    ssize_t n;

    ck_assert_ptr_nonnull(buf);
    lseek(fd, 0, SEEK_SET);
    while ((n = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (cap - len < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
            ck_assert_ptr_nonnull(buf);
        }
    }
    buf[len] = '\0';
    return buf;
}

llep_test_output llep_test_run(const char *const *argv, const char *stdin_text) {
    int in = temp_fd(), out = temp_fd(), err = temp_fd(), st;
    llep_test_output o;
    pid_t pid;

    if (stdin_text) {
        ssize_t len = (ssize_t)strlen(stdin_text);

        ck_assert_int_eq(write(in, stdin_text, (size_t)len), len);
        lseek(in, 0, SEEK_SET);
    }
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    o.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    o.out = slurp(out);
    o.err = slurp(err);
    close(in);
    close(out);
    close(err);
    return o;
}

void llep_test_output_free(llep_test_output *o) {
    free(o->out);
    free(o->err);
    o->out = o->err = NULL;
}

pid_t llep_test_llepd_spawn(const llep_test_llepd *o) {
    const char *bin = getenv("LLEPD");
    const char *argv[64];
    int a = 0;
    pid_t pid;

    ck_assert_msg(bin != NULL, "LLEPD is not set");
    argv[a++] = bin;
    argv[a++] = "--socket";
    argv[a++] = o->sock;
    argv[a++] = "--backend";
    argv[a++] = "cpu";
    argv[a++] = "--devices";
    argv[a++] = o->devices;
    argv[a++] = "--log-level";
    argv[a++] = o->log_level ? o->log_level : "warning";
    for (const char *const *p = o->args; p && *p; p++) {
        ck_assert_int_lt(a, 63);
        argv[a++] = *p;
    }
    argv[a] = NULL;
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (o->log) {
            int fd = open(o->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
            dup2(fd, 2);
        }
        for (const char *const *e = o->env; e && *e; e++)
            putenv((char *)*e);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

void llep_test_llepd_wait(const char *sock, pid_t pid) {
    for (int i = 0; i < 500; i++) {
        int fd = llep_test_unix_connect(sock);

        if (fd >= 0) {
            close(fd);
            return;
        }
        if (pid > 0)
            ck_assert_msg(waitpid(pid, NULL, WNOHANG) == 0, "llepd on %s exited", sock);
        sleep_ms(10);
    }
    ck_abort_msg("llepd did not start listening on %s", sock);
}

pid_t llep_test_llepd_start(const llep_test_llepd *o) {
    pid_t pid = llep_test_llepd_spawn(o);

    llep_test_llepd_wait(o->sock, pid);
    return pid;
}

int llep_test_stop(pid_t *pid, int ms) {
    int status = -1;

    if (*pid <= 0)
        return 0;
    ck_assert_int_eq(kill(*pid, SIGTERM), 0);
    for (int i = 0; i < ms / 10; i++) {
        if (waitpid(*pid, &status, WNOHANG) == *pid) {
            *pid = -1;
            return status;
        }
        sleep_ms(10);
    }
    llep_test_kill(pid);
    return -1;
}

void llep_test_kill(pid_t *pid) {
    if (*pid <= 0)
        return;
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    *pid = -1;
}

void llep_test_nodes_setup(const llep_test_nodes *t, const char *name) {
    llep_test_llepctl(t->llepctl, t->llepctl_len);
    llep_test_tmpdir(t->dir, t->dir_len, name);
    llep_test_peers(t->n, t->ports, t->peers, t->peers_len);
    for (int i = 0; i < t->n; i++)
        t->pids[i] = -1;
}

void llep_test_nodes_teardown(const llep_test_nodes *t) {
    llep_test_kill_nodes(t->pids, t->n, t->dir);
}

void llep_test_node_sock(const llep_test_nodes *t, int node, char *buf, size_t len) {
    snprintf(buf, len, "%s/s%d.sock", t->dir, node);
}

void llep_test_node_log(const llep_test_nodes *t, int node, char *buf, size_t len) {
    snprintf(buf, len, "%s/log%d", t->dir, node);
}

bool llep_test_node_log_has(const llep_test_nodes *t, int node, const char *text) {
    char path[PATH_MAX];

    llep_test_node_log(t, node, path, sizeof(path));
    ck_assert_msg(access(path, R_OK) == 0, "node %d has no log %s", node, path);
    return llep_test_file_contains(path, text);
}

void llep_test_node_spawn(const llep_test_nodes *t, int node, const char *devices,
                          const char *peer_list, const char *const *args,
                          const char *const *env) {
    char sock[PATH_MAX], log[PATH_MAX], id[16];
    const char *argv[32] = { "--node-id", id, "--peers", peer_list };
    int a = 4;
    llep_test_llepd o = { .sock = sock, .devices = devices, .log_level = "info", .log = log,
                          .args = argv, .env = env };

    llep_test_node_sock(t, node, sock, sizeof(sock));
    llep_test_node_log(t, node, log, sizeof(log));
    snprintf(id, sizeof(id), "%d", node);
    for (const char *const *p = args; p && *p; p++) {
        ck_assert_int_lt(a, 31);
        argv[a++] = *p;
    }
    argv[a] = NULL;
    t->pids[node] = llep_test_llepd_spawn(&o);
}

llep_test_output llep_test_node_llepctl(const llep_test_nodes *t, int node,
                                        const char *const *args) {
    char sock[PATH_MAX];
    const char *argv[32] = { t->llepctl, "--socket", sock };
    int a = 3;

    llep_test_node_sock(t, node, sock, sizeof(sock));
    for (const char *const *p = args; p && *p; p++) {
        ck_assert_int_lt(a, 31);
        argv[a++] = *p;
    }
    argv[a] = NULL;
    return llep_test_run(argv, NULL);
}

/* ---- checkpoints ------------------------------------------------------------------------------ */

static char ckpt_root[PATH_MAX];
static int ckpt_status = -1;
static char ckpt_why[4096] = "llep_test_checkpoints_make() was not run";

void llep_test_checkpoints_make(void) {
    const char *python = getenv("LLEP_PYTHON"), *script = getenv("LLEP_MAKE_CHECKPOINTS");
    llep_test_output o;

    if (!python || !script) {
        snprintf(ckpt_why, sizeof(ckpt_why), "LLEP_PYTHON or LLEP_MAKE_CHECKPOINTS is not set "
                 "(run the suite through meson test)");
        return;
    }
    llep_test_tmpdir(ckpt_root, sizeof(ckpt_root), "llep-ckpt");
    o = llep_test_run((const char *const[]){ python, script, ckpt_root, NULL }, NULL);
    ckpt_status = o.status;
    snprintf(ckpt_why, sizeof(ckpt_why), "%s %s: %s%s; run scripts/install-deps.sh, which "
             "makes the .venv with numpy and safetensors that LLEP_PYTHON names", python,
             script, o.status == 127 ? "cannot run it " : "", o.err);
    llep_test_output_free(&o);
}

void llep_test_checkpoints_remove(void) {
    if (ckpt_root[0])
        llep_test_rm_rf(ckpt_root);
}

void llep_test_checkpoint(char *buf, size_t len, const char *name) {
    ck_assert_msg(ckpt_status == 0, "tests/make-checkpoints.py did not write the checkpoints "
                  "(status %d): %s", ckpt_status, ckpt_why);
    ck_assert_int_lt(snprintf(buf, len, "%s/%s", ckpt_root, name), (int)len);
}
