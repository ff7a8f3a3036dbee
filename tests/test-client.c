/* libllep-client: argument checks without a daemon, a fake daemon for the connection's edge
 * cases, and, when $LLEPD names the daemon binary, a private llepd for forwards checked
 * against a float64 reference of DESIGN.md section 4. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client-fixtures.h"
#include "fixtures.h"
#include "frame.h"
#include "llep/client.h"
#include "ref-moe.h"

/* ---------------------------------------------------------------------------------------- */
/* Helpers: temp directory, a private llepd, random layers and the reference. */

static char tmpdir[32];
static char sock_path[64];
static pid_t llepd_pid = -1;

static void make_tmpdir(void) {
    llep_test_tmpdir(tmpdir, sizeof(tmpdir), "test-client");
    snprintf(sock_path, sizeof(sock_path), "%s/llepd.sock", tmpdir);
}

static void remove_tmpdir(void) {
    llep_test_rm_rf(tmpdir);
}

/* Starts $LLEPD on a socket of its own, with an extra option when `option` is not NULL, and
 * waits until it accepts connections. */
static void llepd_start_with(const char *option, const char *value) {
    const char *args[] = { option, value, NULL };
    llep_test_llepd o = { .sock = sock_path, .devices = "4", .args = args };

    llepd_pid = llep_test_llepd_start(&o);
}

static void llepd_start(void) {
    make_tmpdir();
    llepd_start_with(NULL, NULL);
}

/* Stops it with SIGTERM: its wait status, -1 when it did not exit within 5 s. */
static int llepd_stop(void) {
    return llep_test_stop(&llepd_pid, 5000);
}

static void setup_daemon(void) {
    llepd_start();
}

static void teardown_daemon(void) {
    llepd_stop();
    remove_tmpdir();
}

/* Per thread, so the threads of test_threads do not share (and race on) one generator. */
static _Thread_local uint64_t rng_state = 0x9e3779b97f4a7c15u;

static float *random_floats(size_t n, float scale) {
    return llep_test_random_floats(xorshift_sym, &rng_state, n, scale);
}

/* A float32 layer with biases and the desc that creates it. */
typedef llep_test_client_layer test_layer;

/* One batch of routed tokens and room for its output. skew > 0 sends that share of the
 * slots to expert 0. */
typedef struct batch {
    uint32_t tokens;
    float *x, *w, *y;
    int32_t *idx;
} batch;

static void batch_init(batch *b, const test_layer *t, uint32_t tokens, double skew) {
    uint32_t n = t->d.num_experts, k = t->d.top_k;

    b->tokens = tokens;
    b->x = random_floats((size_t)tokens * t->d.hidden, 1.0f);
    b->w = random_floats((size_t)tokens * k, 1.0f);
    b->y = calloc((size_t)tokens * t->d.hidden + 1, sizeof(float));
    b->idx = malloc(((size_t)tokens * k + 1) * sizeof(int32_t));
    ck_assert_ptr_nonnull(b->y);
    ck_assert_ptr_nonnull(b->idx);
    for (size_t i = 0; i < (size_t)tokens * k; i++)
        b->idx[i] = xorshift_skewed(&rng_state, skew, n);
}

static void batch_fini(batch *b) {
    free(b->x);
    free(b->w);
    free(b->y);
    free(b->idx);
}

/* Relative L2 error of the batch's output against the float64 reference (ref-moe.c). */
static double rel_error(const test_layer *t, const batch *b) {
    size_t n = (size_t)b->tokens * t->d.hidden;
    double *ref = malloc(n * sizeof(double) + 1), err;
    llep_ref_f32 l = { .n = t->d.num_experts, .d = t->d.hidden, .h = t->d.inter,
                       .act = t->d.act, .alpha = t->d.act_alpha, .limit = t->d.act_limit,
                       .wg = t->w.wg, .wu = t->w.wu, .wd = t->w.wd, .bg = t->w.bg,
                       .bu = t->w.bu, .bd = t->w.bd };

    ck_assert_ptr_nonnull(ref);
    llep_ref_moe_f32_layer(&l, b->tokens, t->d.top_k, b->x, b->idx, b->w, ref);
    err = llep_test_rel_l2(b->y, ref, n);
    free(ref);
    return err;
}

static void assert_matches(const test_layer *t, const batch *b) {
    double err = rel_error(t, b);

    ck_assert_msg(err <= 1e-5, "relative L2 error %g over 1e-5", err);
}

static void forward_ok(llep_layer *l, batch *b) {
    int r = llep_forward(l, b->tokens, b->x, b->idx, b->w, b->y);

    ck_assert_msg(r == 0, "llep_forward: %s: %s", llep_strerror(r),
                  llep_client_error(llep_layer_client(l)));
}

/* ---------------------------------------------------------------------------------------- */
/* Without a daemon. */

START_TEST(test_null_arguments) {
    llep_layer_desc d = { 0 };
    uint64_t ticket;

    ck_assert_int_eq(llep_connect(NULL, NULL), -EINVAL);
    ck_assert_str_ne(llep_client_error(NULL), "");
    ck_assert_int_eq(llep_layer_create(NULL, "x", &d, NULL), -EINVAL);
    ck_assert_int_eq(llep_forward(NULL, 1, NULL, NULL, NULL, NULL), -EINVAL);
    ck_assert_int_eq(llep_submit(NULL, 1, NULL, NULL, NULL, NULL, &ticket), -EINVAL);
    ck_assert_int_eq(llep_wait(NULL, 1, 0), -EINVAL);
    ck_assert_int_eq(llep_layer_get_desc(NULL, &d), -EINVAL);
    ck_assert_ptr_null(llep_layer_client(NULL));
    llep_layer_release(NULL);
    llep_disconnect(NULL);
}
END_TEST

START_TEST(test_strerror) {
    static const int codes[] = { EINVAL, ENOMEM, EPROTO, EPROTONOSUPPORT, ENOENT, EEXIST,
                                 EPERM, EACCES, ETIMEDOUT, ESHUTDOWN, EIO, ECONNRESET,
                                 ECONNREFUSED, EAGAIN, ENAMETOOLONG, ENXIO, EMSGSIZE };

    ck_assert_str_eq(llep_strerror(0), "success");
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        ck_assert_ptr_nonnull(llep_strerror(-codes[i]));
        ck_assert_str_ne(llep_strerror(-codes[i]), "unknown error");
    }
    ck_assert_str_eq(llep_strerror(-12345), "unknown error");
    ck_assert_str_eq(llep_strerror(7), "unknown error");
}
END_TEST

START_TEST(test_connect_missing_socket) {
    llep_client *c = (llep_client *)1;

    ck_assert_int_eq(llep_connect("/nonexistent/llep/llepd.sock", &c), -ENOENT);
    ck_assert_ptr_null(c);
    ck_assert_ptr_nonnull(strstr(llep_client_error(NULL), "/nonexistent/llep/llepd.sock"));
}
END_TEST

START_TEST(test_connect_refused) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    llep_client *c = NULL;
    int fd;

    make_tmpdir();
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    /* A socket file nobody listens on any more. */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    ck_assert_int_eq(llep_connect(sock_path, &c), -ECONNREFUSED);
    ck_assert_ptr_null(c);
    remove_tmpdir();
}
END_TEST

START_TEST(test_connect_default_path) {
    llep_client *c = NULL;

    /* With $LLEP_SOCKET set, NULL means that path. */
    setenv("LLEP_SOCKET", "/nonexistent/env/llepd.sock", 1);
    ck_assert_int_eq(llep_connect(NULL, &c), -ENOENT);
    ck_assert_ptr_nonnull(strstr(llep_client_error(NULL), "/nonexistent/env/llepd.sock"));
    unsetenv("LLEP_SOCKET");
}
END_TEST

/* ---------------------------------------------------------------------------------------- */
/* A fake daemon: answers Hello as told, then does what the test asks. */

enum fake_mode { FAKE_OK, FAKE_BAD_VERSION, FAKE_CLOSE_AFTER_HELLO, FAKE_GARBAGE };

typedef struct fake {
    int listen_fd;
    enum fake_mode mode;
    pthread_t thread;
} fake;

static LlepPb__Frame *read_frame(int fd) {
    llep_frame_decoder d;
    LlepPb__Frame *f = NULL;
    uint8_t buf[4096];

    llep__frame_decoder_init(&d, 0);
    for (;;) {
        ssize_t n;
        int r = llep__frame_decoder_next(&d, &f);

        if (r != 0)
            break;
        n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        llep__frame_decoder_feed(&d, buf, (size_t)n);
    }
    llep__frame_decoder_fini(&d);
    return f;
}

static void write_frame(int fd, const LlepPb__Frame *f) {
    uint8_t *buf;
    size_t len;

    ck_assert_int_eq(llep__frame_encode_alloc(f, &buf, &len), 0);
    ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
    free(buf);
}

static void *fake_run(void *arg) {
    fake *fk = arg;
    LlepPb__HelloReply hr = LLEP_PB__HELLO_REPLY__INIT;
    LlepPb__Frame reply = LLEP_PB__FRAME__INIT, *f;
    int fd = accept(fk->listen_fd, NULL, NULL);

    f = read_frame(fd);
    if (!f || f->body_case != LLEP_PB__FRAME__BODY_HELLO) {
        close(fd);
        return NULL;
    }
    reply.id = f->id;
    llep__frame_free(f);
    reply.body_case = LLEP_PB__FRAME__BODY_HELLO_REPLY;
    reply.hello_reply = &hr;
    hr.version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    hr.daemon_version = "fake";
    if (fk->mode == FAKE_BAD_VERSION) {
        hr.status = LLEP_PB__STATUS__STATUS_VERSION_MISMATCH;
        hr.version = 99;
        hr.message = "protocol version mismatch: llepd speaks 99";
    }
    write_frame(fd, &reply);
    if (fk->mode == FAKE_GARBAGE) {
        /* A length prefix far over the limit. */
        static const uint8_t junk[] = { 0xff, 0xff, 0xff, 0x7f, 1, 2, 3 };

        f = read_frame(fd);
        llep__frame_free(f);
        ck_assert_int_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
        sleep_ms(50);
    }
    close(fd);
    return NULL;
}

static void fake_start(fake *fk, enum fake_mode mode) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    make_tmpdir();
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    fk->mode = mode;
    fk->listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(fk->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(fk->listen_fd, 4), 0);
    ck_assert_int_eq(pthread_create(&fk->thread, NULL, fake_run, fk), 0);
}

static void fake_stop(fake *fk) {
    pthread_join(fk->thread, NULL);
    close(fk->listen_fd);
    remove_tmpdir();
}

START_TEST(test_version_mismatch) {
    llep_client *c = NULL;
    fake fk;

    fake_start(&fk, FAKE_BAD_VERSION);
    ck_assert_int_eq(llep_connect(sock_path, &c), -EPROTONOSUPPORT);
    ck_assert_ptr_null(c);
    ck_assert_ptr_nonnull(strstr(llep_client_error(NULL), "99"));
    fake_stop(&fk);
}
END_TEST

/* Everything the library checks itself, and then a daemon that hangs up: -ECONNRESET. */
START_TEST(test_argument_checks) {
    test_layer t;
    llep_layer_desc d;
    llep_layer *l = (llep_layer *)1;
    llep_client *c;
    fake fk;

    fake_start(&fk, FAKE_CLOSE_AFTER_HELLO);
    c = llep_test_connect(sock_path);
    llep_test_client_layer_init(&t, &rng_state, 8, 2, 4, 4, LLEP_ACT_SWIGLU);

    ck_assert_int_eq(llep_layer_create(c, "x", &t.d, NULL), -EINVAL);
    ck_assert_int_eq(llep_layer_create(c, NULL, &t.d, &l), -EINVAL);
    ck_assert_ptr_null(l);
    ck_assert_int_eq(llep_layer_create(c, "", &t.d, &l), -EINVAL);
    ck_assert_int_eq(llep_layer_create(c, "has space", &t.d, &l), -EINVAL);
    ck_assert_str_ne(llep_client_error(c), "");

    d = t.d;
    d.w_up = NULL;    /* some weights but not all */
    ck_assert_int_eq(llep_layer_create(c, "x", &d, &l), -EINVAL);
    ck_assert_ptr_nonnull(strstr(llep_client_error(c), "w_gate"));
    d = t.d;
    d.top_k = 9;      /* K > N */
    ck_assert_int_eq(llep_layer_create(c, "x", &d, &l), -EINVAL);
    ck_assert_ptr_nonnull(strstr(llep_client_error(c), "top_k"));
    d = t.d;
    d.num_experts = 0;
    ck_assert_int_eq(llep_layer_create(c, "x", &d, &l), -EINVAL);
    d = t.d;
    d.dtype = (enum llep_dtype)7;
    ck_assert_int_eq(llep_layer_create(c, "x", &d, &l), -EINVAL);
    d = t.d;
    d.alpha = NAN;
    ck_assert_int_eq(llep_layer_create(c, "x", &d, &l), -EINVAL);
    d = t.d;
    d.w_gate = d.w_up = d.w_down = NULL;  /* attach with biases: meaningless */
    ck_assert_int_eq(llep_layer_create(c, "x", &d, &l), -EINVAL);
    ck_assert_int_eq(llep_wait(c, 12345, 0), -EINVAL);

    /* The fake daemon has hung up: the first request finds out, and every call after. */
    ck_assert_int_eq(llep_layer_create(c, "x", &t.d, &l), -ECONNRESET);
    ck_assert_ptr_nonnull(strstr(llep_client_error(c), "closed"));
    ck_assert_int_eq(llep_layer_create(c, "x", NULL, &l), -ECONNRESET);
    llep_disconnect(c);
    llep_test_client_layer_fini(&t);
    fake_stop(&fk);
}
END_TEST

START_TEST(test_garbage_from_daemon) {
    test_layer t;
    llep_layer *l = NULL;
    llep_client *c;
    fake fk;

    fake_start(&fk, FAKE_GARBAGE);
    c = llep_test_connect(sock_path);
    llep_test_client_layer_init(&t, &rng_state, 4, 1, 4, 4, LLEP_ACT_SWIGLU);
    ck_assert_int_eq(llep_layer_create(c, "x", NULL, &l), -ECONNRESET);
    ck_assert_ptr_nonnull(strstr(llep_client_error(c), "bad frame"));
    ck_assert_int_eq(llep_layer_create(c, "x", &t.d, &l), -ECONNRESET);
    llep_disconnect(c);
    llep_test_client_layer_fini(&t);
    fake_stop(&fk);
}
END_TEST

/* ---------------------------------------------------------------------------------------- */
/* Against a real llepd. */

START_TEST(test_forward_reference) {
    static const enum llep_act acts[] = { LLEP_ACT_SWIGLU, LLEP_ACT_SWIGLU_OAI };
    llep_client *c = llep_test_connect(sock_path);

    for (int a = 0; a < 2; a++) {
        llep_layer_desc got;
        test_layer t;
        llep_layer *l;
        batch b;

        llep_test_client_layer_init(&t, &rng_state, 8, 2, 16, 24, acts[a]);
        l = llep_test_layer_create(c, a ? "oai" : "swiglu", &t.d);
        ck_assert_int_eq(llep_layer_get_desc(l, &got), 0);
        ck_assert_uint_eq(got.num_experts, 8);
        ck_assert_uint_eq(got.top_k, 2);
        ck_assert_uint_eq(got.hidden, 16);
        ck_assert_uint_eq(got.inter, 24);
        ck_assert_ptr_null(got.w_gate);
        ck_assert_ptr_eq(llep_layer_client(l), c);

        for (uint32_t tokens = 1; tokens <= 65; tokens += 32) {
            batch_init(&b, &t, tokens, 0.5);
            forward_ok(l, &b);
            assert_matches(&t, &b);
            batch_fini(&b);
        }
        ck_assert_int_eq(llep_forward(l, 0, NULL, NULL, NULL, NULL), 0);
        llep_layer_release(l);
        llep_test_client_layer_fini(&t);
    }
    llep_disconnect(c);
}
END_TEST

START_TEST(test_attach) {
    llep_client *c1 = llep_test_connect(sock_path), *c2 = llep_test_connect(sock_path);
    llep_layer *l1, *l2, *l3 = (llep_layer *)1;
    llep_layer_desc d;
    test_layer t;
    batch b;
    int r;

    llep_test_client_layer_init(&t, &rng_state, 8, 2, 8, 12, LLEP_ACT_SWIGLU);
    l1 = llep_test_layer_create(c1, "shared", &t.d);

    /* Created twice: -EEXIST. */
    ck_assert_int_eq(llep_layer_create(c2, "shared", &t.d, &l3), -EEXIST);
    ck_assert_ptr_null(l3);

    /* Attach by name with the same shape, and with no desc at all. */
    d = t.d;
    d.w_gate = d.w_up = d.w_down = d.b_gate = d.b_up = d.b_down = NULL;
    l2 = llep_test_layer_create(c2, "shared", &d);
    l3 = llep_test_layer_create(c2, "shared", NULL);
    ck_assert_int_eq(llep_layer_get_desc(l3, &d), 0);
    ck_assert_uint_eq(d.hidden, 8);
    ck_assert_uint_eq(d.inter, 12);

    batch_init(&b, &t, 20, 0.3);
    forward_ok(l2, &b);
    assert_matches(&t, &b);
    memset(b.y, 0, 20 * 8 * sizeof(float));
    forward_ok(l3, &b);
    assert_matches(&t, &b);
    batch_fini(&b);

    /* A different shape: -EINVAL naming both. */
    d = t.d;
    d.w_gate = d.w_up = d.w_down = d.b_gate = d.b_up = d.b_down = NULL;
    d.inter = 16;
    l3 = (llep_layer *)1;
    r = llep_layer_create(c2, "shared", &d, &l3);
    ck_assert_int_eq(r, -EINVAL);
    ck_assert_ptr_null(l3);
    ck_assert_msg(strstr(llep_client_error(c2), "H=12") && strstr(llep_client_error(c2), "H=16"),
                  "message does not name both shapes: %s", llep_client_error(c2));

    /* No such layer. */
    ck_assert_int_eq(llep_layer_create(c2, "nosuch", NULL, &l3), -ENOENT);

    /* The creator leaving does not take the layer from the other client. */
    llep_layer_release(l1);
    llep_disconnect(c1);
    batch_init(&b, &t, 5, 0);
    forward_ok(l2, &b);
    assert_matches(&t, &b);
    batch_fini(&b);
    llep_layer_release(l2);
    llep_disconnect(c2);
    llep_test_client_layer_fini(&t);
}
END_TEST

/* Several submissions in flight on one client, collected out of order. */
START_TEST(test_async) {
    enum { COUNT = 12 };
    llep_client *c = llep_test_connect(sock_path);
    uint64_t tickets[COUNT], zero;
    batch b[COUNT];
    test_layer t;
    llep_layer *l;

    llep_test_client_layer_init(&t, &rng_state, 16, 4, 16, 16, LLEP_ACT_SWIGLU);
    l = llep_test_layer_create(c, "async", &t.d);
    for (int i = 0; i < COUNT; i++) {
        batch_init(&b[i], &t, 1 + 13 * (uint32_t)i, 0.4);
        ck_assert_int_eq(llep_submit(l, b[i].tokens, b[i].x, b[i].idx, b[i].w, b[i].y,
                                     &tickets[i]), 0);
    }
    for (int i = 0; i < COUNT; i++)
        for (int j = 0; j < i; j++)
            ck_assert_uint_ne(tickets[i], tickets[j]);
    ck_assert_int_eq(llep_submit(l, 0, NULL, NULL, NULL, NULL, &zero), 0);
    ck_assert_int_eq(llep_wait(c, zero, 0), 0);
    ck_assert_int_eq(llep_wait(c, zero, 0), -EINVAL);  /* collected already */
    ck_assert_int_eq(llep_submit(l, 1, b[0].x, b[0].idx, b[0].w, b[0].y, NULL), -EINVAL);
    for (int i = COUNT - 1; i >= 0; i--) {
        int r = llep_wait(c, tickets[i], -1);

        ck_assert_msg(r == 0, "ticket %d: %s: %s", i, llep_strerror(r), llep_client_error(c));
        assert_matches(&t, &b[i]);
        batch_fini(&b[i]);
    }
    llep_layer_release(l);
    llep_disconnect(c);
    llep_test_client_layer_fini(&t);
}
END_TEST

typedef struct worker {
    llep_layer *l;
    const test_layer *t;
    int failures;
} worker;

static void *worker_run(void *arg) {
    worker *w = arg;

    for (int i = 0; i < 15; i++) {
        batch b;
        uint64_t ticket;

        batch_init(&b, w->t, 3 + (uint32_t)i, 0.5);
        if (i % 2)
            w->failures += llep_forward(w->l, b.tokens, b.x, b.idx, b.w, b.y) != 0;
        else
            w->failures += llep_submit(w->l, b.tokens, b.x, b.idx, b.w, b.y, &ticket) != 0 ||
                           llep_wait(llep_layer_client(w->l), ticket, -1) != 0;
        w->failures += rel_error(w->t, &b) > 1e-5;
        batch_fini(&b);
    }
    return NULL;
}

/* Threads sharing one client: each gets its own results. */
START_TEST(test_threads) {
    enum { THREADS = 4 };
    llep_client *c = llep_test_connect(sock_path);
    pthread_t th[THREADS];
    worker w[THREADS];
    test_layer t;
    llep_layer *l;

    llep_test_client_layer_init(&t, &rng_state, 8, 2, 8, 8, LLEP_ACT_SWIGLU);
    l = llep_test_layer_create(c, "threads", &t.d);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){ .l = l, .t = &t };
        ck_assert_int_eq(pthread_create(&th[i], NULL, worker_run, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(w[i].failures, 0);
    }
    llep_layer_release(l);
    llep_disconnect(c);
    llep_test_client_layer_fini(&t);
}
END_TEST

/* Bad routing is refused with the daemon's message; the client keeps working. */
START_TEST(test_submission_errors) {
    llep_client *c = llep_test_connect(sock_path);
    test_layer t;
    llep_layer *l;
    batch b;
    int r;

    llep_test_client_layer_init(&t, &rng_state, 8, 2, 8, 8, LLEP_ACT_SWIGLU);
    l = llep_test_layer_create(c, "errors", &t.d);
    batch_init(&b, &t, 10, 0);
    b.idx[7] = 8;
    r = llep_forward(l, b.tokens, b.x, b.idx, b.w, b.y);
    ck_assert_int_eq(r, -EINVAL);
    ck_assert_msg(strstr(llep_client_error(c), "8"), "message: %s", llep_client_error(c));
    b.idx[7] = -1;
    ck_assert_int_eq(llep_forward(l, b.tokens, b.x, b.idx, b.w, b.y), -EINVAL);
    b.idx[7] = 1;
    b.w[3] = INFINITY;
    ck_assert_int_eq(llep_forward(l, b.tokens, b.x, b.idx, b.w, b.y), -EINVAL);
    ck_assert_str_ne(llep_client_error(c), "");
    b.w[3] = NAN;
    ck_assert_int_eq(llep_forward(l, b.tokens, b.x, b.idx, b.w, b.y), -EINVAL);
    b.w[3] = 0.5f;
    ck_assert_int_eq(llep_forward(l, b.tokens, b.x, NULL, b.w, b.y), -EINVAL);
    ck_assert_ptr_nonnull(strstr(llep_client_error(c), "topk_idx"));
    forward_ok(l, &b);
    assert_matches(&t, &b);
    batch_fini(&b);
    llep_layer_release(l);
    llep_disconnect(c);
    llep_test_client_layer_fini(&t);
}
END_TEST

/* Weights and batches larger than the first arena make the client grow it. */
START_TEST(test_arena_growth) {
    llep_client *c = llep_test_connect(sock_path);
    uint64_t tickets[3];
    batch small, big[3];
    test_layer t;
    llep_layer *l;

    /* 8 experts x 64 x 256 x 3 tensors x 4 bytes = 1.5 MiB of weights. */
    llep_test_client_layer_init(&t, &rng_state, 8, 2, 64, 256, LLEP_ACT_SWIGLU);
    l = llep_test_layer_create(c, "big", &t.d);
    batch_init(&small, &t, 2, 0);
    forward_ok(l, &small);
    assert_matches(&t, &small);
    /* 3000 tokens x 64 x 4 bytes x (x + y) = 1.5 MiB: more than is free beside a small one
     * in flight, so the client waits for it, then grows. */
    ck_assert_int_eq(llep_submit(l, small.tokens, small.x, small.idx, small.w, small.y,
                                 &tickets[0]), 0);
    batch_init(&big[0], &t, 3000, 0.2);
    ck_assert_int_eq(llep_submit(l, 3000, big[0].x, big[0].idx, big[0].w, big[0].y,
                                 &tickets[1]), 0);
    ck_assert_int_eq(llep_wait(c, tickets[1], -1), 0);
    ck_assert_int_eq(llep_wait(c, tickets[0], -1), 0);
    assert_matches(&t, &big[0]);
    batch_fini(&big[0]);
    batch_fini(&small);
    for (int i = 0; i < 3; i++) {
        batch_init(&big[i], &t, 2000, 0.5);
        ck_assert_int_eq(llep_submit(l, 2000, big[i].x, big[i].idx, big[i].w, big[i].y,
                                     &tickets[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(llep_wait(c, tickets[i], -1), 0);
        assert_matches(&t, &big[i]);
        batch_fini(&big[i]);
    }
    llep_layer_release(l);
    llep_disconnect(c);
    llep_test_client_layer_fini(&t);
}
END_TEST

/* More than the daemon will map (it caps tensor space): -ENOMEM before the client reads a
 * byte of the (small) buffers, and the arena it had keeps working. Then weights large enough
 * that the client hands their pages back after the upload, and a second layer reusing them. */
START_TEST(test_arena_limits) {
    llep_client *c = llep_test_connect(sock_path);
    test_layer t, t2;
    llep_layer *l, *l2;
    batch b;
    int r;

    llep_test_client_layer_init(&t, &rng_state, 8, 2, 8, 8, LLEP_ACT_SWIGLU);
    l = llep_test_layer_create(c, "small", &t.d);
    batch_init(&b, &t, 4, 0);
    r = llep_forward(l, UINT32_MAX, b.x, b.idx, b.w, b.y);
    ck_assert_msg(r == -ENOMEM, "forward: %s: %s", llep_strerror(r), llep_client_error(c));
    forward_ok(l, &b);
    assert_matches(&t, &b);
    batch_fini(&b);

    /* 8 experts x 128 x 512 x 3 tensors x 4 bytes = 6 MiB. */
    llep_test_client_layer_init(&t2, &rng_state, 8, 2, 128, 512, LLEP_ACT_SWIGLU);
    l2 = llep_test_layer_create(c, "large", &t2.d);
    batch_init(&b, &t2, 6, 0.5);
    forward_ok(l2, &b);
    assert_matches(&t2, &b);
    batch_fini(&b);
    llep_layer_release(l2);
    llep_layer_release(l);
    t2.w.wg[5] += 1.0f;   /* different weights, same name: must not read stale pages */
    l2 = llep_test_layer_create(c, "large", &t2.d);
    batch_init(&b, &t2, 300, 0.5);
    forward_ok(l2, &b);
    assert_matches(&t2, &b);
    batch_fini(&b);
    llep_layer_release(l2);
    llep_disconnect(c);
    llep_test_client_layer_fini(&t);
    llep_test_client_layer_fini(&t2);
}
END_TEST

/* When llepd stops, calls return -ECONNRESET, and it exits 0. */
START_TEST(test_daemon_goes_away) {
    llep_client *c = llep_test_connect(sock_path);
    llep_layer *l, *l2;
    test_layer t;
    batch b;

    llep_test_client_layer_init(&t, &rng_state, 4, 1, 4, 4, LLEP_ACT_SWIGLU);
    l = llep_test_layer_create(c, "bye", &t.d);
    batch_init(&b, &t, 3, 0);
    forward_ok(l, &b);
    ck_assert_int_eq(llepd_stop(), 0);
    ck_assert_int_eq(llep_forward(l, b.tokens, b.x, b.idx, b.w, b.y), -ECONNRESET);
    ck_assert_int_eq(llep_forward(l, b.tokens, b.x, b.idx, b.w, b.y), -ECONNRESET);
    ck_assert_int_eq(llep_layer_create(c, "bye", NULL, &l2), -ECONNRESET);
    /* The daemon's Notice says why it went. */
    ck_assert_msg(strstr(llep_client_error(c), "shutting down"), "message: %s",
                  llep_client_error(c));
    llep_layer_release(l);
    llep_disconnect(c);
    batch_fini(&b);
    llep_test_client_layer_fini(&t);
}
END_TEST

/* bf16 storage: x, y and weights as raw bfloat16 words, within 1e-2 of the reference. */
static uint16_t to_bf16(float f) {
    uint32_t u;

    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);    /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;

    memcpy(&f, &u, 4);
    return f;
}

/* Rounds a float array to bf16 in place, returning the bf16 words. */
static uint16_t *round_bf16(float *v, size_t n) {
    uint16_t *h = malloc(n * sizeof(uint16_t));

    for (size_t i = 0; i < n; i++) {
        h[i] = to_bf16(v[i]);
        v[i] = from_bf16(h[i]);
    }
    return h;
}

START_TEST(test_bf16) {
    llep_client *c = llep_test_connect(sock_path);
    uint16_t *wg, *wu, *wd, *x, *y;
    size_t nw, nx;
    llep_layer_desc d;
    test_layer t;
    llep_layer *l;
    batch b;
    int r;

    llep_test_client_layer_init(&t, &rng_state, 8, 2, 16, 16, LLEP_ACT_SWIGLU);
    nw = (size_t)8 * 16 * 16;
    wg = round_bf16(t.w.wg, nw);
    wu = round_bf16(t.w.wu, nw);
    wd = round_bf16(t.w.wd, nw);
    /* No biases: zero them for the reference. */
    memset(t.w.bg, 0, 8 * 16 * sizeof(float));
    memset(t.w.bu, 0, 8 * 16 * sizeof(float));
    memset(t.w.bd, 0, 8 * 16 * sizeof(float));
    d = t.d;
    d.dtype = LLEP_DTYPE_BF16;
    d.w_gate = wg;
    d.w_up = wu;
    d.w_down = wd;
    d.b_gate = d.b_up = d.b_down = NULL;
    l = llep_test_layer_create(c, "bf16", &d);

    batch_init(&b, &t, 33, 0.3);
    nx = (size_t)33 * 16;
    x = round_bf16(b.x, nx);
    y = calloc(nx, sizeof(uint16_t));
    r = llep_forward(l, b.tokens, x, b.idx, b.w, y);
    ck_assert_msg(r == 0, "forward: %s", llep_client_error(c));
    for (size_t i = 0; i < nx; i++)
        b.y[i] = from_bf16(y[i]);
    ck_assert_msg(rel_error(&t, &b) <= 1e-2, "bf16 error %g", rel_error(&t, &b));
    free(x);
    free(y);
    free(wg);
    free(wu);
    free(wd);
    batch_fini(&b);
    llep_layer_release(l);
    llep_disconnect(c);
    llep_test_client_layer_fini(&t);
}
END_TEST

/* llep_wait with a zero timeout looks and leaves the ticket; disconnecting with submissions
 * in flight abandons them cleanly (no leak, no crash, the daemon serves on). */
START_TEST(test_wait_timeout_and_abandon) {
    llep_client *c = llep_test_connect(sock_path), *c2;
    uint64_t tickets[4];
    batch b[4];
    test_layer t;
    llep_layer *l;
    int r;

    llep_test_client_layer_init(&t, &rng_state, 8, 2, 32, 32, LLEP_ACT_SWIGLU);
    l = llep_test_layer_create(c, "abandon", &t.d);
    for (int i = 0; i < 4; i++) {
        batch_init(&b[i], &t, 500, 0.5);
        ck_assert_int_eq(llep_submit(l, 500, b[i].x, b[i].idx, b[i].w, b[i].y, &tickets[i]), 0);
    }
    r = llep_wait(c, tickets[0], 0);
    ck_assert_msg(r == 0 || r == -EAGAIN, "wait: %s", llep_strerror(r));
    if (r == -EAGAIN)
        ck_assert_int_eq(llep_wait(c, tickets[0], -1), 0);
    assert_matches(&t, &b[0]);
    llep_disconnect(c);   /* three still in flight, and the layer not released */

    c2 = llep_test_connect(sock_path);
    /* freed with its last reference: create again */
    l = llep_test_layer_create(c2, "abandon", &t.d);
    forward_ok(l, &b[1]);
    assert_matches(&t, &b[1]);
    llep_disconnect(c2);
    for (int i = 0; i < 4; i++)
        batch_fini(&b[i]);
    llep_test_client_layer_fini(&t);
}
END_TEST

/* Weights the devices cannot hold: -ENOMEM with the daemon's message. */
START_TEST(test_device_memory) {
    llep_client *c;
    llep_layer *l = (llep_layer *)1;
    test_layer t;
    int r;

    llepd_stop();
    llepd_start_with("--device-memory", "64K");
    c = llep_test_connect(sock_path);
    /* 192 KiB per device */
    llep_test_client_layer_init(&t, &rng_state, 8, 2, 64, 256, LLEP_ACT_SWIGLU);
    r = llep_layer_create(c, "huge", &t.d, &l);
    ck_assert_msg(r == -ENOMEM, "create: %s: %s", llep_strerror(r), llep_client_error(c));
    ck_assert_ptr_null(l);
    ck_assert_str_ne(llep_client_error(c), "");
    llep_disconnect(c);
    llep_test_client_layer_fini(&t);
}
END_TEST

static Suite *client_suite(void) {
    Suite *s = suite_create("client");
    TCase *tc = tcase_create("no daemon");
    TCase *td = tcase_create("llepd");

    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_strerror);
    tcase_add_test(tc, test_connect_missing_socket);
    tcase_add_test(tc, test_connect_refused);
    tcase_add_test(tc, test_connect_default_path);
    tcase_add_test(tc, test_version_mismatch);
    tcase_add_test(tc, test_argument_checks);
    tcase_add_test(tc, test_garbage_from_daemon);
    suite_add_tcase(s, tc);

    if (getenv("LLEPD") && getenv("LLEPD")[0]) {
        tcase_add_checked_fixture(td, setup_daemon, teardown_daemon);
        tcase_set_timeout(td, 60);
        tcase_add_test(td, test_forward_reference);
        tcase_add_test(td, test_attach);
        tcase_add_test(td, test_async);
        tcase_add_test(td, test_threads);
        tcase_add_test(td, test_submission_errors);
        tcase_add_test(td, test_arena_growth);
        tcase_add_test(td, test_arena_limits);
        tcase_add_test(td, test_bf16);
        tcase_add_test(td, test_wait_timeout_and_abandon);
        tcase_add_test(td, test_device_memory);
        tcase_add_test(td, test_daemon_goes_away);
        suite_add_tcase(s, td);
    } else {
        fprintf(stderr, "LLEPD is not set: skipping the tests against a running llepd\n");
    }
    return s;
}

int main(void) {
    return llep_test_run_suite(client_suite(), CK_ENV);
}
