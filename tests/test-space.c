/* Device spaces (issue 17; llep/space.h, docs/ARCHITECTURE.md section 5.3) on the CPU
 * backend, where a sealed memfd stands in for GPU memory: the submission checks, forwards
 * reading x and writing y in place (checked against the float64 reference and against the
 * arena path bit for bit), every refusal of SpaceRegister as a raw client sees it, and the
 * lifetime cases (a second space, freeing while in flight, a client dying mid-step, stray
 * descriptors). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client-fixtures.h"
#include "conn.h"
#include "fixtures.h"
#include "llep/client.h"
#include "ref-moe.h"
#include "ring.h"

static char tmpdir[32];
static char sock_path[64];
static pid_t llepd_pid = -1;
static uint64_t rng_state = 0x2545f4914f6cdd1du;

static void setup_daemon(void) {
    llep_test_llepd o = { .sock = sock_path, .devices = "4" };

    llep_test_tmpdir(tmpdir, sizeof(tmpdir), "test-space");
    snprintf(sock_path, sizeof(sock_path), "%s/llepd.sock", tmpdir);
    llepd_pid = llep_test_llepd_start(&o);
}

static void teardown_daemon(void) {
    llep_test_stop(&llepd_pid, 5000);
    llep_test_rm_rf(tmpdir);
}

/* ---- a float32 layer and its reference ------------------------------------------------------ */

typedef llep_test_client_layer test_layer;

/* Routing for `tokens` tokens, skewed towards expert 0 so that LLEP plans spill. */
static void routing(const test_layer *t, uint32_t tokens, int32_t *idx, float *w) {
    for (size_t i = 0; i < (size_t)tokens * t->d.top_k; i++) {
        idx[i] = xorshift_skewed(&rng_state, 0.6, t->d.num_experts);
        w[i] = xorshift_sym(&rng_state);
    }
}

static void assert_reference(const test_layer *t, uint32_t tokens, const float *x,
                             const int32_t *idx, const float *w, const float *y) {
    size_t n = (size_t)tokens * t->d.hidden;
    double *ref = malloc(n * sizeof(double) + 1);
    llep_ref_f32 l = { .n = t->d.num_experts, .d = t->d.hidden, .h = t->d.inter,
                       .act = t->d.act, .wg = t->w.wg, .wu = t->w.wu, .wd = t->w.wd,
                       .bg = t->w.bg, .bu = t->w.bu, .bd = t->w.bd };

    ck_assert_ptr_nonnull(ref);
    llep_ref_moe_f32_layer(&l, tokens, t->d.top_k, x, idx, w, ref);
    double err = llep_test_rel_l2(y, ref, n);
    ck_assert_msg(err <= 1e-5, "relative L2 error %g over 1e-5", err);
    free(ref);
}

static llep_space *space_ok(llep_client *c, uint64_t bytes, int gpu) {
    llep_space *s = NULL;
    int r = llep_space_alloc(c, bytes, gpu, &s);

    ck_assert_msg(r == 0, "llep_space_alloc: %s: %s", llep_strerror(r), llep_client_error(c));
    ck_assert_ptr_nonnull(s);
    return s;
}

/* ---- the submission check ------------------------------------------------------------------- */

START_TEST(test_sqe_space_check) {
    llep_arena_geom g;
    llep_arena a;
    char err[200];
    const uint64_t space = 1 << 16;
    llep_sqe_shape shape = { .top_k = 2, .hidden = 16, .elem_size = 4, .space_size = space };
    llep_sqe_shape none = shape;

    none.space_size = 0;
    ck_assert_int_eq(llep__arena_layout(1 << 16, 0, 0, &g), 0);
    ck_assert_int_eq(llep__arena_create(&g, &a), 0);
    uint64_t t0 = g.tensor_offset;
    /* 4 tokens: x and y 256 bytes, routing 32 bytes each, in the arena. */
    llep_sqe ok = { .tag = 1, .tokens = 4, .x_offset = 0, .topk_idx_offset = t0,
                    .topk_w_offset = t0 + 64, .y_offset = 256,
                    .flags = LLEP_SQE_X_SPACE | LLEP_SQE_Y_SPACE };
    ck_assert_msg(llep__sqe_check(&a, &ok, &shape, err, sizeof(err)) == 0, "%s", err);

    /* x at offset 0 of the space and y at the arena's first tensor byte do not overlap: they
     * are different memory. */
    llep_sqe e = ok;
    e.flags = LLEP_SQE_X_SPACE;
    e.y_offset = t0 + 1024;
    ck_assert_msg(llep__sqe_check(&a, &e, &shape, err, sizeof(err)) == 0, "%s", err);
    e = ok;
    e.flags = LLEP_SQE_Y_SPACE;
    e.x_offset = t0 + 1024;
    e.y_offset = 0;
    ck_assert_msg(llep__sqe_check(&a, &e, &shape, err, sizeof(err)) == 0, "%s", err);

    /* Flags without a space, unknown flags. */
    ck_assert_int_eq(llep__sqe_check(&a, &ok, &none, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "registered none"));
    e = ok;
    e.flags |= 4;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);

    /* Outside the space: the last byte, past the end, an offset that overflows. */
    e = ok;
    e.x_offset = space - 256;
    ck_assert_msg(llep__sqe_check(&a, &e, &shape, err, sizeof(err)) == 0, "%s", err);
    e.x_offset = space - 252;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "outside the device space"));
    e = ok;
    e.y_offset = UINT64_MAX - 16;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "y ["));
    /* An arena offset used as a space offset is outside the space here. */
    e = ok;
    e.x_offset = t0 + space;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    /* y overlapping x inside the space; misaligned x. */
    e = ok;
    e.y_offset = 128;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "y overlaps x"));
    e = ok;
    e.x_offset = 2;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    /* The routing never lies in the space: its arena offsets are checked as before. */
    e = ok;
    e.topk_idx_offset = 0;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    llep__arena_unmap(&a);
}
END_TEST

/* ---- forwards through a space ----------------------------------------------------------------- */

/* x and y in the space, and the same forward through the arena: equal bit for bit, and within
 * the tolerance of the float64 reference; then x only and y only in the space. */
START_TEST(test_forward_in_place) {
    const uint32_t tokens = 200;
    test_layer t;
    llep_test_client_layer_init(&t, &rng_state, 8, 2, 64, 96, LLEP_ACT_SWIGLU);
    llep_client *c = llep_test_connect(sock_path);
    llep_layer *l = llep_test_layer_create(c, "space", &t.d);
    size_t xn = (size_t)tokens * t.d.hidden, xb = xn * sizeof(float);
    llep_space *s = space_ok(c, 2 * xb + 4096, -1);
    float *x = llep_space_base(s), *y = (float *)((char *)x + xb + 4096);
    float *x_host = malloc(xb), *y_host = malloc(xb), *w = malloc(tokens * 2 * sizeof(float));
    int32_t *idx = malloc(tokens * 2 * sizeof(int32_t));

    ck_assert_int_eq(llep_space_kind(s), LLEP_SPACE_HOST);
    ck_assert_int_eq(llep_space_gpu(s), -1);
    ck_assert_uint_eq(llep_space_size(s), 2 * xb + 4096);
    ck_assert_ptr_eq(llep_client_space(c), s);
    ck_assert_ptr_nonnull(x_host);
    ck_assert_ptr_nonnull(y_host);
    for (size_t i = 0; i < xn; i++)
        x[i] = x_host[i] = xorshift_sym(&rng_state);
    routing(&t, tokens, idx, w);

    int r = llep_forward(l, tokens, x, idx, w, y);
    ck_assert_msg(r == 0, "forward in the space: %s: %s", llep_strerror(r), llep_client_error(c));
    ck_assert_int_eq(llep_forward(l, tokens, x_host, idx, w, y_host), 0);
    ck_assert_int_eq(memcmp(y, y_host, xb), 0);
    assert_reference(&t, tokens, x_host, idx, w, y);

    /* x in the space, y in ordinary memory; and the other way round. */
    memset(y_host, 0, xb);
    ck_assert_int_eq(llep_forward(l, tokens, x, idx, w, y_host), 0);
    assert_reference(&t, tokens, x_host, idx, w, y_host);
    memset(y, 0, xb);
    ck_assert_int_eq(llep_forward(l, tokens, x_host, idx, w, y), 0);
    assert_reference(&t, tokens, x_host, idx, w, y);

    ck_assert_int_eq(llep_space_free(s), 0);
    ck_assert_ptr_null(llep_client_space(c));
    free(x_host);
    free(y_host);
    free(w);
    free(idx);
    llep_disconnect(c);
    llep_test_f32_weights_fini(&t.w);
}
END_TEST

/* More submissions than devices in one step: llepd stages several into one home device and
 * copies x out of and y back into the space (llepd_homes_build / unstage). */
START_TEST(test_staged_submissions) {
    enum { SUBS = 11, TOKENS = 37 };
    test_layer t;
    llep_test_client_layer_init(&t, &rng_state, 8, 2, 32, 48, LLEP_ACT_SWIGLU);
    llep_client *c = llep_test_connect(sock_path);
    llep_layer *l = llep_test_layer_create(c, "staged", &t.d);
    size_t xn = (size_t)TOKENS * t.d.hidden, xb = xn * sizeof(float);
    llep_space *s = space_ok(c, 2 * SUBS * xb, -1);
    float *base = llep_space_base(s);
    int32_t idx[SUBS][TOKENS * 2];
    float w[SUBS][TOKENS * 2];
    uint64_t tickets[SUBS];

    for (size_t i = 0; i < SUBS * xn; i++)
        base[i] = xorshift_sym(&rng_state);
    for (int i = 0; i < SUBS; i++) {
        routing(&t, TOKENS, idx[i], w[i]);
        int r = llep_submit(l, TOKENS, base + i * xn, idx[i], w[i], base + (SUBS + i) * xn,
                            &tickets[i]);
        ck_assert_msg(r == 0, "submit %d: %s", i, llep_client_error(c));
    }
    for (int i = 0; i < SUBS; i++)
        ck_assert_int_eq(llep_wait(c, tickets[i], -1), 0);
    for (int i = 0; i < SUBS; i++)
        assert_reference(&t, TOKENS, base + i * xn, idx[i], w[i], base + (SUBS + i) * xn);
    llep_disconnect(c);
    llep_test_f32_weights_fini(&t.w);
}
END_TEST

/* The library's refusals: a second space, a tensor partly inside, a dtype other than the
 * layer's, freeing while a forward naming the space is in flight. A GPU space asked of a CPU
 * llepd is the host stand-in. */
START_TEST(test_client_refusals) {
    test_layer t;
    llep_test_client_layer_init(&t, &rng_state, 4, 1, 16, 16, LLEP_ACT_SWIGLU);
    llep_client *c = llep_test_connect(sock_path);
    llep_layer *l = llep_test_layer_create(c, "refusals", &t.d);
    llep_space *s = space_ok(c, 1 << 16, 0), *s2 = NULL;
    float *x = llep_space_base(s), w[64];
    int32_t idx[64];
    uint64_t ticket;

    ck_assert_int_eq(llep_space_kind(s), LLEP_SPACE_HOST);
    ck_assert_int_eq(llep_space_alloc(c, 4096, -1, &s2), -EEXIST);
    ck_assert_ptr_null(s2);
    ck_assert_int_eq(llep_space_alloc(NULL, 4096, -1, &s2), -EINVAL);
    routing(&t, 64, idx, w);
    /* x running over the end of the space. */
    float *tail = (float *)((char *)x + (1 << 16) - 16 * 4 * 2);
    ck_assert_int_eq(llep_forward(l, 4, tail, idx, w, x), -EINVAL);
    ck_assert_ptr_nonnull(strstr(llep_client_error(c), "partly outside"));
    /* x in the space as bf16 while the layer is f32: llepd reads it in place, unconverted. */
    llep_io io = { .tokens = 4, .x = x, .topk_idx = idx, .topk_w = w, .y = x + 1024,
                   .x_dtype = LLEP_IO_BF16 };
    ck_assert_int_eq(llep_forward_ex(l, &io), -EINVAL);
    ck_assert_ptr_nonnull(strstr(llep_client_error(c), "dtype"));
    /* Freeing while a forward naming it is in flight. */
    ck_assert_int_eq(llep_submit(l, 64, x, idx, w, x + 4096, &ticket), 0);
    ck_assert_int_eq(llep_space_free(s), -EBUSY);
    ck_assert_int_eq(llep_wait(c, ticket, -1), 0);
    ck_assert_int_eq(llep_space_free(s), 0);
    /* A new one after the free. */
    s = space_ok(c, 4096, -1);
    ck_assert_int_eq(llep_space_free(s), 0);
    llep_disconnect(c);
    llep_test_f32_weights_fini(&t.w);
}
END_TEST

/* ---- SpaceRegister as a raw client sees it ------------------------------------------------------ */

static void raw_open(llep_conn *conn) {
    char err[256];
    int r = llep__conn_open(conn, sock_path, LLEP_PB__PEER_KIND__PEER_KIND_CLIENT, "test-space",
                            5000, err, sizeof(err));
    ck_assert_msg(r == 0, "connect: %s", err);
}

/* A memfd of `bytes` (sealed against shrinking when `seal`). */
static int memfd_of(uint64_t bytes, bool seal) {
    int fd = memfd_create("test-space", MFD_CLOEXEC | MFD_ALLOW_SEALING);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)bytes), 0);
    if (seal)
        ck_assert_int_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
    return fd;
}

/* Sends SpaceRegister (with fd when >= 0) and returns the reply's status, its message in msg. */
static int raw_register(llep_conn *conn, int kind, uint64_t size, int gpu, int fd, char *msg,
                        size_t len) {
    LlepPb__SpaceRegister m = LLEP_PB__SPACE_REGISTER__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
    char err[256];

    m.kind = kind;
    m.size = size;
    m.gpu = gpu;
    m.fd_count = fd >= 0;
    req.body_case = LLEP_PB__FRAME__BODY_SPACE_REGISTER;
    req.space_register = &m;
    conn->out_fds = &fd;
    conn->out_nfds = fd >= 0;
    int r = llep__conn_request(conn, &req, 5000, NULL, NULL, &reply, err, sizeof(err));
    conn->out_nfds = 0;
    ck_assert_msg(r == 0, "request: %s", err);
    ck_assert_int_eq(reply->body_case, LLEP_PB__FRAME__BODY_SPACE_REPLY);
    int status = reply->space_reply->status;
    snprintf(msg, len, "%s", reply->space_reply->message);
    llep__frame_free(reply);
    return status;
}

static void expect_refusal(llep_conn *conn, int kind, uint64_t size, int gpu, int fd,
                           int status, const char *text) {
    char msg[512];
    int got = raw_register(conn, kind, size, gpu, fd, msg, sizeof(msg));

    ck_assert_msg(got == status && strstr(msg, text), "status %d \"%s\", expected %d with "
                  "\"%s\"", got, msg, status, text);
}

START_TEST(test_register_refusals) {
    llep_conn conn = { .fd = -1 };
    const int host = LLEP_PB__SPACE_KIND__SPACE_HOST, cuda = LLEP_PB__SPACE_KIND__SPACE_CUDA;
    const int invalid = LLEP_PB__STATUS__STATUS_INVALID;
    int sealed = memfd_of(8192, true), unsealed = memfd_of(8192, false), pipefd[2];

    raw_open(&conn);
    ck_assert_int_eq(pipe(pipefd), 0);
    /* A GPU this llepd does not own: it runs the CPU backend. */
    expect_refusal(&conn, cuda, 8192, 0, sealed, invalid, "owns no GPU");
    /* Sizes that do not match the descriptor, none at all, too many. */
    expect_refusal(&conn, host, 4096, -1, sealed, invalid, "has 8192 bytes");
    expect_refusal(&conn, host, 16384, -1, sealed, invalid, "has 8192 bytes");
    expect_refusal(&conn, host, 0, -1, sealed, invalid, "1 to");
    expect_refusal(&conn, host, UINT64_C(1) << 40, -1, sealed, LLEP_PB__STATUS__STATUS_NO_MEMORY,
                   "1 to");
    /* Memory that could vanish under a step, or is no memory. */
    expect_refusal(&conn, host, 8192, -1, unsealed, invalid, "not sealed");
    expect_refusal(&conn, host, 8192, -1, pipefd[0], invalid, "not a memfd");
    /* A host space on a GPU, an unknown kind, no descriptor. */
    expect_refusal(&conn, host, 8192, 1, sealed, invalid, "gpu must be -1");
    expect_refusal(&conn, 7, 8192, -1, sealed, invalid, "unknown space kind");
    expect_refusal(&conn, host, 8192, -1, -1, invalid, "exactly one descriptor");

    /* Accepted once; a second is refused until the first is released. */
    char msg[512];
    ck_assert_int_eq(raw_register(&conn, host, 8192, -1, sealed, msg, sizeof(msg)), 0);
    expect_refusal(&conn, host, 8192, -1, sealed, LLEP_PB__STATUS__STATUS_EXISTS,
                   "already");
    /* The seal holds: the client cannot shrink what llepd maps. */
    ck_assert_int_eq(ftruncate(sealed, 4096), -1);
    ck_assert_int_eq(errno, EPERM);

    LlepPb__SpaceRelease rel = LLEP_PB__SPACE_RELEASE__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
    char err[256];
    req.body_case = LLEP_PB__FRAME__BODY_SPACE_RELEASE;
    req.space_release = &rel;
    ck_assert_int_eq(llep__conn_request(&conn, &req, 5000, NULL, NULL, &reply, err,
                                        sizeof(err)), 0);
    ck_assert_int_eq(llep__conn_reply_check(reply, LLEP_PB__FRAME__BODY_SPACE_RELEASE_REPLY,
                                            err, sizeof(err)), 0);
    llep__frame_free(reply);
    ck_assert_int_eq(llep__conn_request(&conn, &req, 5000, NULL, NULL, &reply, err,
                                        sizeof(err)), 0);
    ck_assert_int_eq(llep__conn_reply_check(reply, LLEP_PB__FRAME__BODY_SPACE_RELEASE_REPLY,
                                            err, sizeof(err)), -ENOENT);
    llep__frame_free(reply);
    ck_assert_int_eq(raw_register(&conn, host, 8192, -1, sealed, msg, sizeof(msg)), 0);

    close(sealed);
    close(unsealed);
    close(pipefd[0]);
    close(pipefd[1]);
    llep__conn_close(&conn);
}
END_TEST

/* Descriptors llepd holds now. */
static int llepd_fds(void) {
    char path[64];

    snprintf(path, sizeof(path), "/proc/%d/fd", (int)llepd_pid);
    return llep_test_dir_entries(path);
}

/* Descriptors sent with frames that take none are closed, not kept: a client cannot make
 * llepd run out of them. */
START_TEST(test_stray_descriptors) {
    llep_conn conn = { .fd = -1 };
    int fd = memfd_of(4096, true);
    char err[256];

    raw_open(&conn);
    int before = llepd_fds();
    for (int i = 0; i < 200; i++) {
        LlepPb__StatusRequest sr = LLEP_PB__STATUS_REQUEST__INIT;
        LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
        req.body_case = LLEP_PB__FRAME__BODY_STATUS;
        req.status = &sr;
        conn.out_fds = &fd;
        conn.out_nfds = 1;
        ck_assert_int_eq(llep__conn_request(&conn, &req, 5000, NULL, NULL, &reply, err,
                                            sizeof(err)), 0);
        llep__frame_free(reply);
    }
    int after = llepd_fds();
    ck_assert_msg(after <= before + 2, "llepd held %d descriptors before, %d after", before,
                  after);
    close(fd);
    llep__conn_close(&conn);
}
END_TEST

/* A client that dies with a step reading and writing its space: llepd's own mapping keeps the
 * memory, the step ends, and another client is served exactly. */
START_TEST(test_client_dies_mid_step) {
    test_layer t;
    llep_test_client_layer_init(&t, &rng_state, 8, 2, 128, 256, LLEP_ACT_SWIGLU);
    llep_client *c = llep_test_connect(sock_path);
    llep_layer *l = llep_test_layer_create(c, "dies", &t.d);

    for (int round = 0; round < 3; round++) {
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            enum { TOKENS = 4096 };
            llep_client *cc = NULL;
            llep_layer *ll = NULL;
            llep_space *s = NULL;
            static int32_t idx[TOKENS * 2];
            static float w[TOKENS * 2];
            uint64_t ticket;
            size_t xb = (size_t)TOKENS * 128 * sizeof(float);

            if (llep_connect(sock_path, &cc) < 0 || llep_layer_create(cc, "dies", NULL, &ll) < 0 ||
                llep_space_alloc(cc, 2 * xb, -1, &s) < 0)
                _exit(2);
            routing(&t, TOKENS, idx, w);
            float *x = llep_space_base(s);
            for (size_t i = 0; i < xb / 4; i++)
                x[i] = 0.5f;
            if (llep_submit(ll, TOKENS, x, idx, w, (char *)x + xb, &ticket) < 0)
                _exit(3);
            /* Gone with the step in flight: its mapping, descriptor and socket with it. */
            if (round == 1)
                munmap(x, 2 * xb);
            _exit(0);
        }
        int status;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    }
    enum { TOKENS = 50 };
    float x[TOKENS * 128], y[TOKENS * 128], w[TOKENS * 2];
    int32_t idx[TOKENS * 2];
    for (size_t i = 0; i < TOKENS * 128; i++)
        x[i] = xorshift_sym(&rng_state);
    routing(&t, TOKENS, idx, w);
    ck_assert_int_eq(llep_forward(l, TOKENS, x, idx, w, y), 0);
    assert_reference(&t, TOKENS, x, idx, w, y);
    ck_assert_int_eq(kill(llepd_pid, 0), 0);
    llep_disconnect(c);
    llep_test_f32_weights_fini(&t.w);
}
END_TEST

/* A reconnecting client keeps its space through a restart of llepd: the library registers it
 * with the new llepd, and forwards naming it are exact again. */
START_TEST(test_space_after_restart) {
    enum { TOKENS = 40 };
    test_layer t;
    llep_test_client_layer_init(&t, &rng_state, 8, 2, 32, 48, LLEP_ACT_SWIGLU);
    llep_client *c = NULL;
    llep_layer *l = NULL;
    ck_assert_int_eq(llep_connect_ex(sock_path, LLEP_CONNECT_RECONNECT, &c), 0);
    ck_assert_int_eq(llep_layer_create_ex(c, "restart", &t.d, LLEP_LAYER_KEEP_WEIGHTS, &l), 0);
    size_t xn = (size_t)TOKENS * 32;
    llep_space *s = space_ok(c, 1 << 16, -1);
    float *x = llep_space_base(s), *y = x + 4096;
    int32_t idx[TOKENS * 2];
    float w[TOKENS * 2];

    for (size_t i = 0; i < xn; i++)
        x[i] = xorshift_sym(&rng_state);
    routing(&t, TOKENS, idx, w);
    ck_assert_int_eq(llep_forward(l, TOKENS, x, idx, w, y), 0);
    assert_reference(&t, TOKENS, x, idx, w, y);

    llep_test_kill(&llepd_pid);
    ck_assert_int_eq(llep_forward(l, TOKENS, x, idx, w, y), -ECONNRESET);
    llep_test_llepd o = { .sock = sock_path, .devices = "4" };
    llepd_pid = llep_test_llepd_start(&o);
    memset(y, 0, xn * sizeof(float));
    int r = llep_forward(l, TOKENS, x, idx, w, y);
    ck_assert_msg(r == 0, "after the restart: %s: %s", llep_strerror(r), llep_client_error(c));
    assert_reference(&t, TOKENS, x, idx, w, y);
    ck_assert_int_eq(llep_space_free(s), 0);
    llep_disconnect(c);
    llep_test_f32_weights_fini(&t.w);
}
END_TEST

static Suite *space_suite(void) {
    Suite *s = suite_create("space");
    TCase *tc = tcase_create("checks");
    TCase *td = tcase_create("llepd");

    tcase_add_test(tc, test_sqe_space_check);
    suite_add_tcase(s, tc);
    tcase_add_checked_fixture(td, setup_daemon, teardown_daemon);
    tcase_set_timeout(td, 60);
    tcase_add_test(td, test_forward_in_place);
    tcase_add_test(td, test_staged_submissions);
    tcase_add_test(td, test_client_refusals);
    tcase_add_test(td, test_register_refusals);
    tcase_add_test(td, test_stray_descriptors);
    tcase_add_test(td, test_client_dies_mid_step);
    tcase_add_test(td, test_space_after_restart);
    suite_add_tcase(s, td);
    return s;
}

int main(void) {
    return llep_test_run_suite(space_suite(), CK_ENV);
}
