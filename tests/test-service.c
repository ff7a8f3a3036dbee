/* llepd as a systemd service, without systemd: the test plays systemd's part.
 *
 *   notify      a datagram socket bound here is $NOTIFY_SOCKET: READY=1 only once the daemon's
 *               socket accepts, STATUS= lines that follow clients, layers and steps,
 *               WATCHDOG=1 at half of $WATCHDOG_USEC (and none without it), RELOADING=1 and
 *               READY=1 around SIGHUP (a refused reload keeps the old settings and says why in
 *               STATUS=), STOPPING=1 on SIGTERM; log lines carry "<N>" priorities when
 *               stderr is the journal's stream ($JOURNAL_STREAM).
 *   activation  the test creates the listening socket and hands it over as fd 3 with
 *               $LISTEN_FDS and $LISTEN_PID, as llepd.socket does; a client runs a forward
 *               through it (forward-check, $FORWARD_CHECK), and llepd leaves the socket file
 *               to its owner when it stops; a $LISTEN_PID of another process or an fd 3 that
 *               is not a listening socket are not taken for an activation socket.
 *   peercred    (`test-service peercred`, root only, else skipped with 77): with the socket
 *               opened to everyone, a connection from `nobody` is still refused through
 *               SO_PEERCRED, while root's is accepted; a `nobody` in group llep (created
 *               after llepd started, when absent) is accepted with no restart; with a group
 *               database that takes seconds (slow-nss.c preloaded), root is served while
 *               nobody's lookup runs, and one that takes over 10 s refuses nobody saying so.
 *
 * $LLEPD names the daemon binary, $LLEPCTL llepctl. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fixtures.h"
#include "llep/client.h"

/* Generous: the daemon runs under AddressSanitizer on a loaded 2-core machine. */
#define WAIT_MS 10000

/* Every test works in its own directory under basedir; basedir is made and removed by the
 * runner's process, so even a failed test (whose process ends at the failed assertion, and
 * whose daemon Check kills with the test's process group) leaves nothing behind. */
static char basedir[32], tmpdir[48], sock_path[64], notify_path[64], log_path[64], conf_path[64];
static int notify_fd = -1;
static pid_t llepd_pid = -1;

/* ---- systemd's side: the notification socket ------------------------------------------- */

static void make_basedir(void) {
    snprintf(basedir, sizeof(basedir), "/tmp/test-service-XXXXXX");
    if (!mkdtemp(basedir) || chmod(basedir, 0755) < 0) { /* 0755: nobody must pass */
        perror("test-service: mkdtemp");
        exit(1);
    }
}

static void remove_basedir(void) {
    char cmd[64];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", basedir);
    if (system(cmd) != 0)
        fprintf(stderr, "test-service: could not remove %s\n", basedir);
}

static void setup(void) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    snprintf(tmpdir, sizeof(tmpdir), "%s/t-XXXXXX", basedir);
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(sock_path, sizeof(sock_path), "%s/llepd.sock", tmpdir);
    snprintf(notify_path, sizeof(notify_path), "%s/notify", tmpdir);
    snprintf(log_path, sizeof(log_path), "%s/llepd.log", tmpdir);
    snprintf(conf_path, sizeof(conf_path), "%s/llepd.conf", tmpdir);
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(notify_fd, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", notify_path);
    ck_assert_int_eq(bind(notify_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
}

/* Stops the daemon if a test left it running, and removes what the test made. */
static void teardown(void) {
    llep_test_kill(&llepd_pid);
    close(notify_fd);
    notify_fd = -1;
    llep_test_rm_rf(tmpdir);
}

/* The next notification, NUL-terminated in buf; false when none came within timeout_ms. */
static bool notify_recv(char *buf, size_t len, int timeout_ms) {
    struct pollfd p = { .fd = notify_fd, .events = POLLIN };
    ssize_t n;

    if (poll(&p, 1, timeout_ms) <= 0)
        return false;
    n = recv(notify_fd, buf, len - 1, 0);
    ck_assert_int_ge(n, 0);
    buf[n] = '\0';
    return true;
}

/* Whether the message has the line `line` ("READY=1"), or a line starting with it when it
 * ends in '=' ("STATUS="). */
static const char *has_line(const char *msg, const char *line) {
    size_t len = strlen(line);
    bool prefix = len && line[len - 1] == '=';

    for (const char *p = msg; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        const char *end = strchr(p, '\n');
        size_t n = end ? (size_t)(end - p) : strlen(p);

        if (prefix ? n >= len && strncmp(p, line, len) == 0 : n == len && !strncmp(p, line, len))
            return p;
    }
    return NULL;
}

/* Receives until a message has `line` (and, when `status_part` is given, a STATUS= line that
 * contains it), skipping the others; the matching message is left in buf. */
static bool notify_wait(const char *line, const char *status_part, char *buf, size_t len,
                        int timeout_ms) {
    long long deadline = (long long)now_ms() + timeout_ms;

    for (;;) {
        long long left = deadline - (long long)now_ms();

        if (left <= 0 || !notify_recv(buf, len, (int)left))
            return false;
        if (!has_line(buf, line))
            continue;
        if (!status_part)
            return true;
        const char *st = has_line(buf, "STATUS=");
        if (st && strstr(st, status_part))
            return true;
    }
}

/* Counts the messages with `line` arriving within ms. */
static int notify_count(const char *line, int ms) {
    long long deadline = (long long)now_ms() + ms;
    char buf[1024];
    int count = 0;

    for (;;) {
        long long left = deadline - (long long)now_ms();

        if (left <= 0 || !notify_recv(buf, sizeof(buf), (int)left))
            return count;
        count += has_line(buf, line) != NULL;
    }
}

/* ---- the daemon -------------------------------------------------------------------------- */

typedef struct daemon_opts {
    const char *watchdog_usec;    /* $WATCHDOG_USEC, or NULL */
    const char *watchdog_pid;     /* $WATCHDOG_PID, or NULL */
    int listen_fd;                /* handed over as fd 3 when >= 0 */
    const char *listen_pid;       /* $LISTEN_PID; NULL: the daemon's own pid */
    bool config;                  /* --config conf_path */
    const char *option, *value;   /* one more option and its value, or NULL */
    int journal;                  /* 1: $JOURNAL_STREAM names stderr; -1: another stream */
    const char *slow_nss_ms;      /* group lookups this slow ($LLEP_TEST_SLOW_NSS), or NULL */
} daemon_opts;

/* In the child: what systemd would do before exec. */
static void exec_llepd(const daemon_opts *o) {
    const char *exe = getenv("LLEPD");
    const char *argv[16];
    char pid[32];
    int a = 0, log_fd;

    log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0 || dup2(log_fd, STDERR_FILENO) < 0)
        _exit(126);
    if (o->journal) {
        struct stat st;
        char js[64];

        if (fstat(STDERR_FILENO, &st) < 0)
            _exit(126);
        snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev,
                 (unsigned long long)st.st_ino + (o->journal < 0));
        setenv("JOURNAL_STREAM", js, 1);
    }
    setenv("NOTIFY_SOCKET", notify_path, 1);
    if (o->watchdog_usec)
        setenv("WATCHDOG_USEC", o->watchdog_usec, 1);
    if (o->watchdog_pid)
        setenv("WATCHDOG_PID", o->watchdog_pid, 1);
    if (o->listen_fd >= 0) {
        if (o->listen_fd != 3 && dup2(o->listen_fd, 3) < 0)
            _exit(126);
        fcntl(3, F_SETFD, 0); /* not close-on-exec: the daemon inherits it */
        snprintf(pid, sizeof(pid), "%ld", (long)getpid());
        setenv("LISTEN_FDS", "1", 1);
        setenv("LISTEN_PID", o->listen_pid ? o->listen_pid : pid, 1);
    }
    if (o->slow_nss_ms) {
        const char *lib = getenv("LLEP_TEST_SLOW_NSS"), *asan = getenv("ASAN_OPTIONS");
        char opts[512];

        if (!lib)
            _exit(126);
        setenv("LD_PRELOAD", lib, 1);
        setenv("LLEP_TEST_SLOW_NSS_MS", o->slow_nss_ms, 1);
        /* The shim comes before a sanitized llepd's runtime in the library list: harmless. */
        snprintf(opts, sizeof(opts), "%s:verify_asan_link_order=0", asan ? asan : "");
        setenv("ASAN_OPTIONS", opts, 1);
    }
    argv[a++] = exe;
    argv[a++] = "--socket";
    argv[a++] = sock_path;
    argv[a++] = "--backend";
    argv[a++] = "cpu";
    argv[a++] = "--devices";
    argv[a++] = "2";
    argv[a++] = "--log-level";
    argv[a++] = "info";
    if (o->config) {
        argv[a++] = "--config";
        argv[a++] = conf_path;
    }
    if (o->option) {
        argv[a++] = o->option;
        argv[a++] = o->value;
    }
    argv[a] = NULL;
    execv(exe, (char *const *)argv);
    _exit(127);
}

static void start_llepd(const daemon_opts *o) {
    ck_assert_msg(getenv("LLEPD") != NULL, "LLEPD is not set");
    llepd_pid = fork();
    ck_assert_int_ge(llepd_pid, 0);
    if (llepd_pid == 0)
        exec_llepd(o);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");

    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

/* SIGTERM; the daemon must exit 0 in time. */
static void stop_llepd(void) {
    int st;

    ck_assert_int_gt(llepd_pid, 0);
    st = llep_test_stop(&llepd_pid, WAIT_MS);
    ck_assert_msg(st != -1, "llepd did not exit within %d ms of SIGTERM", WAIT_MS);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "llepd exit status %d", st);
}

/* Waits for READY=1 and checks that a client can connect and say Hello at once, with no
 * retry: systemd starts the units that need llepd as soon as READY=1 arrives. */
static void wait_ready(const char *path) {
    char buf[1024];
    llep_client *c = NULL;
    int r;

    ck_assert_msg(notify_wait("READY=1", NULL, buf, sizeof(buf), WAIT_MS),
                  "no READY=1 within %d ms", WAIT_MS);
    ck_assert_msg(has_line(buf, "STATUS="), "READY=1 without STATUS=: '%s'", buf);
    r = llep_connect(path, &c);
    ck_assert_msg(r == 0, "connect right after READY=1: %s (%s)", llep_strerror(r),
                  llep_client_error(NULL));
    llep_disconnect(c);
}

/* ---- notify ------------------------------------------------------------------------------ */

START_TEST(test_ready_after_listen) {
    daemon_opts o = { .listen_fd = -1 };
    char buf[1024];

    start_llepd(&o);
    /* The first message is READY=1: nothing claims readiness before the socket exists. */
    ck_assert_msg(notify_recv(buf, sizeof(buf), WAIT_MS), "no notification at all");
    ck_assert_msg(has_line(buf, "READY=1"), "first notification is not READY=1: '%s'", buf);
    ck_assert_int_ge(llep_test_unix_connect(sock_path), 0);
    ck_assert_msg(has_line(buf, "STATUS=0 clients, 0 layers, 0 steps"), "'%s'", buf);
    stop_llepd();
}
END_TEST

START_TEST(test_status_follows_figures) {
    daemon_opts o = { .listen_fd = -1 };
    char buf[1024];
    llep_client *c = NULL;

    start_llepd(&o);
    wait_ready(sock_path);
    ck_assert_int_eq(llep_connect(sock_path, &c), 0);
    ck_assert_msg(notify_wait("STATUS=", "1 client, 0 layers, 0 steps", buf, sizeof(buf), WAIT_MS),
                  "no STATUS= with one client");
    llep_disconnect(c);
    ck_assert_msg(notify_wait("STATUS=", "0 clients, 0 layers, 0 steps", buf, sizeof(buf), WAIT_MS),
                  "no STATUS= after the client left");
    stop_llepd();
}
END_TEST

/* A forward makes a layer and a step; the STATUS= line shows both (forward-check releases its
 * layer when done, so the layer count goes back to 0 and the step count stays). */
START_TEST(test_status_counts_steps) {
    daemon_opts o = { .listen_fd = -1 };
    const char *fc = getenv("FORWARD_CHECK");
    char buf[1024], cmd[512];

    ck_assert_msg(fc != NULL, "FORWARD_CHECK is not set");
    start_llepd(&o);
    wait_ready(sock_path);
    snprintf(cmd, sizeof(cmd), "'%s' '%s' >/dev/null", fc, sock_path);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_msg(notify_wait("STATUS=", "0 clients, 0 layers, 1 step", buf, sizeof(buf), WAIT_MS),
                  "no STATUS= with the step");
    stop_llepd();
}
END_TEST

START_TEST(test_watchdog_pings) {
    daemon_opts o = { .listen_fd = -1, .watchdog_usec = "200000" };
    int n;

    start_llepd(&o);
    wait_ready(sock_path);
    /* Every 100 ms: about 10 in a second; a loaded machine may delay some. */
    n = notify_count("WATCHDOG=1", 1000);
    ck_assert_msg(n >= 5 && n <= 12, "%d WATCHDOG=1 in 1 s with WatchdogSec=200ms", n);
    ck_assert(llep_test_file_contains(log_path, "WATCHDOG=1 every 100 ms"));
    stop_llepd();
}
END_TEST

START_TEST(test_no_watchdog_unless_asked) {
    daemon_opts o = { .listen_fd = -1 };

    start_llepd(&o);
    wait_ready(sock_path);
    ck_assert_int_eq(notify_count("WATCHDOG=1", 500), 0);
    stop_llepd();
}
END_TEST

/* $WATCHDOG_PID names another process: the watchdog is not llepd's to feed. */
START_TEST(test_watchdog_other_pid) {
    daemon_opts o = { .listen_fd = -1, .watchdog_usec = "100000", .watchdog_pid = "1" };

    start_llepd(&o);
    wait_ready(sock_path);
    ck_assert_int_eq(notify_count("WATCHDOG=1", 500), 0);
    stop_llepd();
}
END_TEST

/* With stderr connected to the journal, lines carry "<N>" syslog priorities (journalctl -p);
 * a $JOURNAL_STREAM inherited from elsewhere does not count. */
START_TEST(test_journal_priorities) {
    daemon_opts o = { .listen_fd = -1, .journal = 1 };

    start_llepd(&o);
    wait_ready(sock_path);
    stop_llepd();
    ck_assert_msg(llep_test_file_contains(log_path, "<5>llepd "),
                  "no '<5>' (notice) prefix on the start line");
    ck_assert(llep_test_file_contains(log_path, "<5>stopping: SIGTERM"));
    ck_assert(!llep_test_file_contains(log_path, "llepd: notice:"));

    o.journal = -1;
    ck_assert_int_eq(unlink(log_path), 0);
    start_llepd(&o);
    wait_ready(sock_path);
    stop_llepd();
    ck_assert(llep_test_file_contains(log_path, "llepd: notice: stopping: SIGTERM"));
    ck_assert(!llep_test_file_contains(log_path, "<5>"));
}
END_TEST

START_TEST(test_stopping_on_sigterm) {
    daemon_opts o = { .listen_fd = -1, .watchdog_usec = "2000000" };
    char buf[1024];
    int st;

    start_llepd(&o);
    wait_ready(sock_path);
    ck_assert_int_eq(kill(llepd_pid, SIGTERM), 0);
    ck_assert_msg(notify_wait("STOPPING=1", "stopping (SIGTERM)", buf, sizeof(buf), WAIT_MS),
                  "no STOPPING=1 after SIGTERM");
    ck_assert_int_eq(waitpid(llepd_pid, &st, 0), llepd_pid);
    llepd_pid = -1;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
    /* Nothing after STOPPING=1 claims readiness again. */
    while (notify_recv(buf, sizeof(buf), 0))
        ck_assert_msg(!has_line(buf, "READY=1"), "READY=1 after STOPPING=1");
}
END_TEST

/* A tunable (alpha, lambda) layer `name` runs with, as `llepctl --json layers` reports it
 * ($LLEPCTL). */
static double layer_tunable(const char *name, const char *tunable) {
    const char *ctl = getenv("LLEPCTL");
    char cmd[256], out[8192], key[96], field[32];
    const char *p;
    size_t n;
    FILE *f;

    ck_assert_msg(ctl != NULL, "LLEPCTL is not set");
    snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' --json layers", ctl, sock_path);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    n = fread(out, 1, sizeof(out) - 1, f);
    out[n] = '\0';
    ck_assert_int_eq(pclose(f), 0);
    snprintf(key, sizeof(key), "\"name\": \"%s\"", name);
    p = strstr(out, key);
    ck_assert_msg(p != NULL, "no layer %s in: %s", name, out);
    snprintf(field, sizeof(field), "\"%s\": ", tunable);
    p = strstr(p, field);
    ck_assert_msg(p != NULL, "no %s in: %s", tunable, out);
    return strtod(p + strlen(field), NULL);
}

/* As at start, the file first and the command line over it: --lambda keeps winning. */
START_TEST(test_reload) {
    daemon_opts o = { .listen_fd = -1, .config = true, .option = "--lambda", .value = "1.7" };
    static float w[4 * 4 * 4];
    llep_layer_desc d = { .num_experts = 4, .top_k = 1, .hidden = 4, .inter = 4,
                          .w_gate = w, .w_up = w, .w_down = w };
    llep_client *holder = NULL;
    llep_layer *l = NULL;
    char buf[1024];

    write_file(conf_path, "# test\nalpha = 1.5\nlambda = 1.2\n");
    start_llepd(&o);
    wait_ready(sock_path);
    /* A client keeps a layer (with the daemon's default alpha) through the reloads. */
    ck_assert_int_eq(llep_connect(sock_path, &holder), 0);
    ck_assert_int_eq(llep_layer_create(holder, "held", &d, &l), 0);
    ck_assert_double_eq_tol(layer_tunable("held", "alpha"), 1.5, 1e-6);
    ck_assert_double_eq_tol(layer_tunable("held", "lambda"), 1.7, 1e-6);

    write_file(conf_path, "alpha = 2.5\nlambda = 1.1\ndevice-memory = 1G\n");
    ck_assert_int_eq(kill(llepd_pid, SIGHUP), 0);
    ck_assert_msg(notify_wait("RELOADING=1", NULL, buf, sizeof(buf), WAIT_MS), "no RELOADING=1");
    ck_assert_msg(has_line(buf, "MONOTONIC_USEC="), "RELOADING=1 without MONOTONIC_USEC: '%s'",
                  buf);
    ck_assert_msg(notify_wait("READY=1", NULL, buf, sizeof(buf), WAIT_MS), "no READY=1 after reload");
    ck_assert_ptr_null(strstr(buf, "refused"));
    ck_assert_double_eq_tol(layer_tunable("held", "alpha"), 2.5, 1e-6);
    ck_assert_double_eq_tol(layer_tunable("held", "lambda"), 1.7, 1e-6);
    ck_assert(llep_test_file_contains(log_path,
                                      "a new 'device-memory' takes effect at the next start"));

    /* A bad file is refused whole: the settings in force stay, and STATUS= says why. */
    write_file(conf_path, "alpha = 3\nlambda = -1\n");
    ck_assert_int_eq(kill(llepd_pid, SIGHUP), 0);
    ck_assert_msg(notify_wait("RELOADING=1", NULL, buf, sizeof(buf), WAIT_MS), "no RELOADING=1");
    ck_assert_msg(notify_wait("READY=1", "last reload refused", buf, sizeof(buf), WAIT_MS),
                  "no READY=1 with the refusal after a bad reload");
    ck_assert_msg(strstr(buf, "llepd.conf:2") != NULL, "refusal without FILE:LINE: '%s'", buf);
    ck_assert_double_eq_tol(layer_tunable("held", "alpha"), 2.5, 1e-6);
    ck_assert(llep_test_file_contains(log_path, "reload refused"));

    /* The client that held the layer through both reloads is still connected. */
    float x[4] = { 1, 2, 3, 4 }, y[4], tw = 1;
    int32_t idx = 0;
    ck_assert_int_eq(llep_forward(l, 1, x, &idx, &tw, y), 0);

    write_file(conf_path, "alpha = 1\n");
    ck_assert_int_eq(kill(llepd_pid, SIGHUP), 0);
    ck_assert_msg(notify_wait("READY=1", NULL, buf, sizeof(buf), WAIT_MS), "no READY=1");
    ck_assert_ptr_null(strstr(buf, "refused"));
    llep_disconnect(holder);
    stop_llepd();
}
END_TEST

/* ---- socket activation ------------------------------------------------------------------- */

static int make_listener(const char *path) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_int_ge(fd, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(fd, 16), 0);
    return fd;
}

START_TEST(test_activation_forward) {
    char act_path[64], cmd[512];
    const char *fc = getenv("FORWARD_CHECK");
    struct stat st;
    int lfd;

    ck_assert_msg(fc != NULL, "FORWARD_CHECK is not set");
    snprintf(act_path, sizeof(act_path), "%s/activated.sock", tmpdir);
    lfd = make_listener(act_path);
    daemon_opts o = { .listen_fd = lfd };
    start_llepd(&o);
    close(lfd);
    wait_ready(act_path);
    snprintf(cmd, sizeof(cmd), "'%s' '%s'", fc, act_path);
    ck_assert_int_eq(system(cmd), 0);
    /* It served the socket it was given, did not bind --socket, and says which it serves. */
    ck_assert_int_eq(stat(sock_path, &st), -1);
    ck_assert(llep_test_file_contains(log_path, "(socket activation)"));
    ck_assert(llep_test_file_contains(log_path, act_path));
    stop_llepd();
    /* The socket belongs to whoever made it (llepd.socket): llepd leaves it in place. */
    ck_assert_int_eq(stat(act_path, &st), 0);
    ck_assert(S_ISSOCK(st.st_mode));
}
END_TEST

/* $LISTEN_PID of another process: the descriptors are not llepd's, so it binds --socket. */
START_TEST(test_activation_other_pid) {
    char act_path[64];
    int lfd;

    snprintf(act_path, sizeof(act_path), "%s/activated.sock", tmpdir);
    lfd = make_listener(act_path);
    daemon_opts o = { .listen_fd = lfd, .listen_pid = "1" };
    start_llepd(&o);
    close(lfd);
    wait_ready(sock_path);
    ck_assert(!llep_test_file_contains(log_path, "(socket activation)"));
    stop_llepd();
}
END_TEST

/* fd 3 is not a listening socket: llepd refuses to start rather than serve nothing. */
START_TEST(test_activation_not_a_socket) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC), st;

    daemon_opts o = { .listen_fd = fd };
    start_llepd(&o);
    close(fd);
    ck_assert_int_eq(waitpid(llepd_pid, &st, 0), llepd_pid);
    llepd_pid = -1;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "exit status %d", st);
    ck_assert(llep_test_file_contains(log_path, "not a listening unix stream socket"));
}
END_TEST

/* ---- who may connect --------------------------------------------------------------------- */

/* In a child that becomes `nobody` with the ngroups supplementary groups given: can it talk
 * to llepd? Returns the child's exit status: 0 connected and said Hello, 3 refused, others
 * for test errors. */
static int connect_as_nobody(size_t ngroups, const gid_t *groups) {
    pid_t pid = fork();
    int st;

    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        llep_client *c = NULL;
        char buf[16];
        int fd;

        if (setgroups(ngroups, groups) < 0 || setresgid(65534, 65534, 65534) < 0 ||
            setresuid(65534, 65534, 65534) < 0)
            _exit(10);
        /* At the socket level: the kernel accepts, llepd reads SO_PEERCRED, answers
         * whatever comes first with a refusal and hangs up. */
        fd = llep_test_unix_connect(sock_path);
        if (fd < 0)
            _exit(11);
        if (send(fd, "\0\0\0\0", 4, MSG_NOSIGNAL) < 0 && errno != EPIPE &&
            errno != ECONNRESET)
            _exit(12);
        ssize_t n, total = 0;
        while ((n = read(fd, buf, sizeof(buf))) > 0)
            total += n;
        close(fd);
        if (n < 0 && errno != ECONNRESET)
            _exit(13);
        (void)total;
        /* And through the library: the connect fails with -EPERM, naming the uid. */
        int r = llep_connect(sock_path, &c);
        if (r == 0) {
            llep_disconnect(c);
            _exit(0);
        }
        _exit(r == -EPERM && strstr(llep_client_error(NULL), "uid 65534") ? 3 : 14);
    }
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st));
    return WEXITSTATUS(st);
}

START_TEST(test_nobody_refused) {
    daemon_opts o = { .listen_fd = -1 };
    llep_client *c = NULL;

    ck_assert_int_eq(chmod(tmpdir, 0755), 0);
    start_llepd(&o);
    wait_ready(sock_path);
    /* The daemon made it 0660; open it to everyone so only SO_PEERCRED stands in the way. */
    ck_assert_int_eq(chmod(sock_path, 0666), 0);
    ck_assert_int_eq(connect_as_nobody(0, NULL), 3);
    ck_assert_msg(llep_test_file_contains(log_path, "refused a connection from uid 65534"),
                  "llepd did not log the refusal");
    /* Root is let in. */
    ck_assert_int_eq(llep_connect(sock_path, &c), 0);
    llep_disconnect(c);
    stop_llepd();
}
END_TEST

/* Group llep is looked up at each connection, and the peer's own groups count: llepd started
 * while the group did not exist (it is created here when absent, and removed again), then a
 * `nobody` whose supplementary groups include it is let in, with no restart and without being
 * in the group's member list; one without it is still refused. */
START_TEST(test_group_joined_later) {
    daemon_opts o = { .listen_fd = -1 };
    struct group *g = getgrnam("llep");
    bool created = false;

    ck_assert_int_eq(chmod(tmpdir, 0755), 0);
    start_llepd(&o);
    wait_ready(sock_path);
    ck_assert_int_eq(chmod(sock_path, 0666), 0);
    if (!g) {
        ck_assert_msg(system("groupadd -r llep") == 0, "groupadd -r llep failed");
        created = true;
        g = getgrnam("llep");
    }
    gid_t gid = g ? g->gr_gid : (gid_t)-1;
    int with = g ? connect_as_nobody(1, &gid) : -1;
    int without = connect_as_nobody(0, NULL);
    /* Removed before any assertion can end the test. */
    int removed = created ? system("groupdel llep") : 0;
    ck_assert_msg(g, "group llep is missing after groupadd");
    ck_assert_int_eq(with, 0);
    ck_assert_int_eq(without, 3);
    ck_assert_int_eq(removed, 0);
    stop_llepd();
}
END_TEST

/* In a child as `nobody` (no groups): llep_connect, which llepd must refuse with -EPERM and a
 * message containing `why`; the child exits 0 when it did so after at least min_ms. */
static pid_t nobody_refused_after(const char *why, int min_ms) {
    pid_t pid = fork();

    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        llep_client *c = NULL;
        if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
            setresuid(65534, 65534, 65534) < 0)
            _exit(10);
        uint64_t t0 = now_ms();
        int r = llep_connect(sock_path, &c);
        uint64_t took = now_ms() - t0;
        if (r == 0)
            _exit(11);
        if (r != -EPERM || !strstr(llep_client_error(NULL), why)) {
            fprintf(stderr, "nobody's connect: %d, '%s'\n", r, llep_client_error(NULL));
            _exit(12);
        }
        if (took < (uint64_t)min_ms) {
            fprintf(stderr, "nobody refused after %llu ms, before the lookup could end\n",
                    (unsigned long long)took);
            _exit(13);
        }
        _exit(0);
    }
    return pid;
}

/* A group database that takes 3 s per lookup (slow-nss.c preloaded into llepd, as a slow LDAP
 * directory): while nobody's connection waits for its lookup, root connects and is served at
 * once, so the lookup does not hold llepd's event loop; nobody is then refused as before. */
START_TEST(test_slow_group_database) {
    daemon_opts o = { .listen_fd = -1, .slow_nss_ms = "3000" };
    llep_client *c = NULL;
    int st;

    ck_assert_int_eq(chmod(tmpdir, 0755), 0);
    start_llepd(&o);
    wait_ready(sock_path);
    ck_assert_int_eq(chmod(sock_path, 0666), 0);
    pid_t pid = nobody_refused_after("uid 65534 may not use llepd", 2500);
    sleep_ms(300); /* nobody's lookup has started */
    uint64_t t0 = now_ms();
    ck_assert_int_eq(llep_connect(sock_path, &c), 0);
    llep_disconnect(c);
    uint64_t took = now_ms() - t0;
    /* The lookup is still running: nobody has no answer yet. */
    ck_assert_int_eq(waitpid(pid, &st, WNOHANG), 0);
    ck_assert_msg(took < 1500, "root's connect took %llu ms while a lookup ran",
                  (unsigned long long)took);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "nobody's child: status %d", st);
    stop_llepd();
}
END_TEST

/* A group database that does not answer within 10 s: the connection waiting for it is
 * refused saying so, rather than left waiting for ever; root is served meanwhile. */
START_TEST(test_group_database_timeout) {
    daemon_opts o = { .listen_fd = -1, .slow_nss_ms = "12000" };
    llep_client *c = NULL;
    int st;

    ck_assert_int_eq(chmod(tmpdir, 0755), 0);
    start_llepd(&o);
    wait_ready(sock_path);
    ck_assert_int_eq(chmod(sock_path, 0666), 0);
    pid_t pid = nobody_refused_after("the group database did not answer within 10 s", 9000);
    sleep_ms(300);
    ck_assert_int_eq(llep_connect(sock_path, &c), 0);
    llep_disconnect(c);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "nobody's child: status %d", st);
    ck_assert(llep_test_file_contains(log_path, "the group database did not answer in time"));
    stop_llepd();
}
END_TEST

/* A test case whose tests each get a directory of their own under basedir. */
static TCase *service_tcase(const char *name) {
    TCase *t = tcase_create(name);

    tcase_add_unchecked_fixture(t, make_basedir, remove_basedir);
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 60);
    return t;
}

static Suite *service_suite(bool peercred) {
    Suite *s = suite_create("service");
    TCase *t;

    if (peercred) {
        t = service_tcase("peercred");
        tcase_add_test(t, test_nobody_refused);
        tcase_add_test(t, test_group_joined_later);
        tcase_add_test(t, test_slow_group_database);
        tcase_add_test(t, test_group_database_timeout);
        suite_add_tcase(s, t);
        return s;
    }
    t = service_tcase("notify");
    tcase_add_test(t, test_ready_after_listen);
    tcase_add_test(t, test_status_follows_figures);
    tcase_add_test(t, test_status_counts_steps);
    tcase_add_test(t, test_watchdog_pings);
    tcase_add_test(t, test_no_watchdog_unless_asked);
    tcase_add_test(t, test_watchdog_other_pid);
    tcase_add_test(t, test_stopping_on_sigterm);
    tcase_add_test(t, test_journal_priorities);
    tcase_add_test(t, test_reload);
    suite_add_tcase(s, t);

    t = service_tcase("activation");
    tcase_add_test(t, test_activation_forward);
    tcase_add_test(t, test_activation_other_pid);
    tcase_add_test(t, test_activation_not_a_socket);
    suite_add_tcase(s, t);
    return s;
}

int main(int argc, char **argv) {
    bool peercred = argc > 1 && strcmp(argv[1], "peercred") == 0;

    if (peercred && geteuid() != 0) {
        printf("SKIP: changing to uid nobody needs root\n");
        return 77; /* meson: skipped */
    }
    return llep_test_run_suite(service_suite(peercred), CK_ENV);
}
