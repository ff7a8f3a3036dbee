/* What the test programs share (fixtures.c): the Check runner, seedable generators, time,
 * random float32 layers, temporary directories, programs run with their output captured, llepd
 * processes started, waited for, stopped and killed, and the loopback nodes of the cluster
 * suites (with test-nodes.c).
 *
 * The generators are inline and need nothing but libc, so the GPU programs (tests/gpu/), which
 * do not link Check, use them too. Each takes its state by pointer: a test keeps its own seed
 * (and its own numbers) wherever the state lives. */
#ifndef LLEP_TEST_FIXTURES_H
#define LLEP_TEST_FIXTURES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* ---- Check ----------------------------------------------------------------------------------- */

struct Suite;

/* main() of a Check suite: runs every test of s, printing as mode (CK_ENV, CK_NORMAL) says;
 * EXIT_FAILURE when one failed. */
int llep_test_run_suite(struct Suite *s, int mode);

/* ---- generators ------------------------------------------------------------------------------ */

/* splitmix64. */
static inline uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint32_t rng_below(uint64_t *s, uint32_t n) {
    return (uint32_t)(rng_next(s) % n);
}

/* The top 53 bits of x as a double in [0, 1), and in [-1, 1). */
static inline double bits_unit(uint64_t x) {
    return (double)(x >> 11) / 9007199254740992.0;
}

static inline float bits_sym(uint64_t x) {
    return (float)(bits_unit(x) * 2.0 - 1.0);
}

static inline double rng_unit(uint64_t *s) { /* [0, 1) */
    return bits_unit(rng_next(s));
}

static inline float rng_sym(uint64_t *s) { /* [-1, 1) */
    return bits_sym(rng_next(s));
}

/* xorshift64 (13, 7, 17). */
static inline uint64_t xorshift_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static inline float xorshift_sym(uint64_t *s) { /* [-1, 1) */
    return bits_sym(xorshift_next(s));
}

/* An expert for one slot: 0 with probability skew, else uniform below n. */
static inline int32_t xorshift_skewed(uint64_t *s, double skew, uint32_t n) {
    double u = bits_unit(xorshift_next(s));

    return u < skew ? 0 : (int32_t)(xorshift_next(s) % n);
}

/* Knuth's MMIX linear congruential generator. */
static inline uint64_t lcg_next(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s;
}

static inline float lcg_sym(uint64_t *s) { /* [-1, 1) */
    return bits_sym(lcg_next(s));
}

/* ---- time ------------------------------------------------------------------------------------ */

static inline void sleep_ms(int ms) {
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };

    nanosleep(&ts, NULL);
}

/* Milliseconds on the monotonic clock. */
static inline uint64_t now_ms(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- data ------------------------------------------------------------------------------------ */

/* n floats uniform in [-scale, scale) from rnd(s), a generator of [-1, 1) above (malloc'd; the
 * test fails when there is no memory). */
float *llep_test_random_floats(float (*rnd)(uint64_t *), uint64_t *s, size_t n, float scale);

/* The float32 weights of a layer of n experts, as a client hands them over: w_gate, w_up
 * [n][D][H] within w_in, w_down [n][H][D] within w_out, biases b_gate, b_up [n][H] and b_down
 * [n][D] within b (none, NULL, when b is 0), drawn in that order from rnd(s). */
typedef struct llep_test_f32_weights {
    float *wg, *wu, *wd, *bg, *bu, *bd;
} llep_test_f32_weights;

void llep_test_f32_weights_init(llep_test_f32_weights *w, float (*rnd)(uint64_t *), uint64_t *s,
                                size_t n, size_t d, size_t h, float w_in, float w_out, float b);
void llep_test_f32_weights_fini(llep_test_f32_weights *w);

/* Relative L2 error of y[0..n) against the float64 reference ref (the absolute error where
 * the reference is all zeros). */
double llep_test_rel_l2(const float *y, const double *ref, size_t n);

/* ---- files ----------------------------------------------------------------------------------- */

/* A new directory /tmp/NAME-XXXXXX, its path in dir; and one in the directory base. */
void llep_test_tmpdir(char *dir, size_t len, const char *name);
void llep_test_tmpdir_in(char *dir, size_t len, const char *base, const char *name);

/* Removes dir and what it holds; fails the test when that does not work. */
void llep_test_rm_rf(const char *dir);

/* Whether the file at path (up to its first 64 KiB) contains text; false when there is no such
 * file. */
bool llep_test_file_contains(const char *path, const char *text);

/* Entries of the directory at path, without "." and ".." (the test fails when it cannot be
 * read): /proc/PID/fd for a process's descriptors, /proc/PID/task for its threads. */
int llep_test_dir_entries(const char *path);

/* A stream socket connected to the unix socket at path, or -errno. */
int llep_test_unix_connect(const char *path);

/* ---- programs -------------------------------------------------------------------------------- */

/* What a program run by llep_test_run() did. */
typedef struct llep_test_output {
    int status;                  /* exit status, or -1 when it did not exit normally */
    char *out, *err;             /* its stdout and stderr, NUL-terminated (malloc'd) */
} llep_test_output;

/* Runs argv[0] with argv (NULL-terminated), stdin_text (NULL: nothing) on its stdin, and
 * waits for it; stdout and stderr go to temporary files, so neither can block the other. */
llep_test_output llep_test_run(const char *const *argv, const char *stdin_text);
void llep_test_output_free(llep_test_output *o);

/* ---- checkpoints ------------------------------------------------------------------------------ */

/* Runs tests/make-checkpoints.py ($LLEP_MAKE_CHECKPOINTS) with $LLEP_PYTHON into a new
 * temporary directory: once per suite process, as an unchecked fixture before the tests fork.
 * Its failure is reported by every test that asks for a checkpoint, never skipped: the cure is
 * scripts/install-deps.sh. remove deletes the directory. */
void llep_test_checkpoints_make(void);
void llep_test_checkpoints_remove(void);

/* The directory of checkpoint `name` (a directory make-checkpoints.py writes) into buf; fails
 * the test with the script's error when it did not write them. */
void llep_test_checkpoint(char *buf, size_t len, const char *name);

/* ---- llepd processes ------------------------------------------------------------------------- */

/* How a test starts $LLEPD: on the CPU backend, on its own unix socket. */
typedef struct llep_test_llepd {
    const char *sock;            /* --socket */
    const char *devices;         /* --devices */
    const char *log_level;       /* --log-level; NULL: "warning" */
    const char *log;             /* its stderr, appended to this file; NULL: the test's */
    const char *const *args;     /* more arguments, NULL-terminated; NULL: none */
    const char *const *env;      /* NAME=VALUE settings for it, NULL-terminated; NULL: none */
} llep_test_llepd;

/* Forks and execs $LLEPD as o says; does not wait for it. */
pid_t llep_test_llepd_spawn(const llep_test_llepd *o);

/* Waits until the socket at sock accepts connections: 500 tries 10 ms apart. Fails the test
 * when it does not, or when the process pid (if > 0) exits first. */
void llep_test_llepd_wait(const char *sock, pid_t pid);

/* Both: the daemon's pid, once its socket accepts connections. */
pid_t llep_test_llepd_start(const llep_test_llepd *o);

/* SIGTERM to *pid (when > 0), then waits up to ms for it to exit: its wait status, or -1 when
 * it did not exit in time (then it is SIGKILLed and reaped). *pid is -1 after; 0 when there
 * was no process. */
int llep_test_stop(pid_t *pid, int ms);

/* SIGKILLs and reaps *pid when it is > 0; *pid is -1 after. */
void llep_test_kill(pid_t *pid);

/* ---- loopback nodes -------------------------------------------------------------------------- */

/* The nodes of a cluster suite, in storage the suite keeps: n nodes under the directory dir,
 * node i on the unix socket dir/sI.sock with its stderr in dir/logI, on ports[i] of
 * 127.0.0.1 as the --peers list peers says, its llepd in pids[i] (-1: none), and the llepctl
 * of this build. */
typedef struct llep_test_nodes {
    int n;
    char *dir;
    size_t dir_len;
    char *llepctl;
    size_t llepctl_len;
    char *peers;
    size_t peers_len;
    uint16_t *ports;
    pid_t *pids;
} llep_test_nodes;

/* The set-up of a cluster suite's test: llepctl found, a new directory /tmp/NAME-XXXXXX, free
 * ports and their --peers list, no node running. */
void llep_test_nodes_setup(const llep_test_nodes *t, const char *name);

/* Its teardown: every node still running SIGKILLed, the directory removed. */
void llep_test_nodes_teardown(const llep_test_nodes *t);

void llep_test_node_sock(const llep_test_nodes *t, int node, char *buf, size_t len);
void llep_test_node_log(const llep_test_nodes *t, int node, char *buf, size_t len);

/* Whether node's log says text; fails the test when there is no log. */
bool llep_test_node_log_has(const llep_test_nodes *t, int node, const char *text);

/* Starts llepd as node (into pids[node]; does not wait for it): --devices devices, --node-id,
 * --peers peer_list, --log-level info, then args (NULL-terminated, or NULL), with the NAME=VALUE
 * settings env (NULL-terminated, or NULL), stderr appended to its log. */
void llep_test_node_spawn(const llep_test_nodes *t, int node, const char *devices,
                          const char *peer_list, const char *const *args,
                          const char *const *env);

/* llepctl --socket NODE'S SOCKET args... (NULL-terminated). */
llep_test_output llep_test_node_llepctl(const llep_test_nodes *t, int node,
                                        const char *const *args);

#endif
