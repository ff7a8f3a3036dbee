/* llepd end to end, at the protocol level: a private daemon on a temporary socket, driven by
 * raw protocol clients (frames, the arena and its rings) written here, so these tests check
 * the daemon against the wire contract and not against the client library.
 *
 * Outputs are compared with the float64 reference of DESIGN.md section 4 (ref-moe.c).
 * $LLEPD names the daemon binary (set by meson). */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fdpass.h"
#include "fixtures.h"
#include "frame.h"
#include "ref-moe.h"
#include "ring.h"
#include "validate.h"

/* ---- the daemon ------------------------------------------------------------------------- */

static char sock_path[108];
static pid_t daemon_pid;

static void start_daemon(const char *devices) {
    /* $LLEPD_TEST_LOG_LEVEL, for debugging a failure */
    llep_test_llepd o = { .sock = sock_path, .devices = devices,
                          .log_level = getenv("LLEPD_TEST_LOG_LEVEL") };

    snprintf(sock_path, sizeof(sock_path), "/tmp/llepd-test-%d.sock", (int)getpid());
    unlink(sock_path);
    daemon_pid = llep_test_llepd_start(&o);
}

/* SIGTERM must make the daemon exit 0 without hanging. */
static void stop_daemon(void) {
    int st = llep_test_stop(&daemon_pid, 10000);

    ck_assert_msg(st != -1, "llepd did not exit within 10 s of SIGTERM");
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "llepd exit status %d", st);
}

/* ---- a raw protocol client -------------------------------------------------------------- */

typedef struct rawc {
    int fd;
    llep_frame_decoder dec;
    llep_arena arena;
    int sq_efd, cq_efd;
    uint64_t next_id, next_tag;
    uint64_t weights_end;      /* tensor bytes used by weights; forwards go after */
} rawc;

static int rc_connect(rawc *c) {
    memset(c, 0, sizeof(*c));
    c->fd = llep_test_unix_connect(sock_path);
    c->sq_efd = c->cq_efd = -1;
    c->arena.fd = -1;
    c->next_id = 1;
    llep__frame_decoder_init(&c->dec, 0);
    return c->fd;
}

static void rc_close(rawc *c) {
    close(c->fd);
    llep__frame_decoder_fini(&c->dec);
    llep__arena_unmap(&c->arena);
    if (c->sq_efd >= 0)
        close(c->sq_efd);
    if (c->cq_efd >= 0)
        close(c->cq_efd);
}

static uint64_t rc_send(rawc *c, LlepPb__Frame *f) {
    uint8_t *buf;
    size_t len;

    if (!f->id)
        f->id = c->next_id++;
    ck_assert_int_eq(llep__frame_encode_alloc(f, &buf, &len), 0);
    ck_assert_int_eq(write(c->fd, buf, len), (ssize_t)len);
    free(buf);
    return f->id;
}

/* Next frame; NULL when the daemon closed the connection. fds receives passed descriptors. */
static LlepPb__Frame *rc_recv(rawc *c, int *fds, size_t *nfds) {
    LlepPb__Frame *f;
    uint8_t buf[65536];

    if (nfds)
        *nfds = 0;
    for (;;) {
        int r = llep__frame_decoder_next(&c->dec, &f);
        ck_assert_int_ge(r, 0);
        if (r == 1)
            return f;
        size_t got = 0;
        int tmp[4];
        ssize_t n = llep__recv_with_fds(c->fd, buf, sizeof(buf), tmp, 4, &got);
        if (n <= 0)
            return NULL;
        for (size_t i = 0; i < got; i++) {
            if (fds && nfds)
                fds[(*nfds)++] = tmp[i];
            else
                close(tmp[i]);
        }
        ck_assert_int_eq(llep__frame_decoder_feed(&c->dec, buf, (size_t)n), 0);
    }
}

/* Receives the reply to request id, skipping frames the daemon sends on its own. */
static LlepPb__Frame *rc_reply(rawc *c, uint64_t id, int *fds, size_t *nfds) {
    for (;;) {
        LlepPb__Frame *f = rc_recv(c, fds, nfds);
        ck_assert_msg(f != NULL, "daemon closed the connection instead of replying");
        if (f->id == id)
            return f;
        llep__frame_free(f);
    }
}

static void rc_hello_kind(rawc *c, LlepPb__PeerKind kind) {
    LlepPb__Hello h = LLEP_PB__HELLO__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    char err[256];

    h.version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    h.program = (char *)"test-llepd";
    h.kind = kind;
    f.body_case = LLEP_PB__FRAME__BODY_HELLO;
    f.hello = &h;
    LlepPb__Frame *r = rc_reply(c, rc_send(c, &f), NULL, NULL);
    ck_assert_int_eq(llep__frame_check_hello_reply(r, err, sizeof(err)), 0);
    llep__frame_free(r);
}

static void rc_start(rawc *c, uint64_t tensor_bytes) {
    LlepPb__ArenaSetup as = LLEP_PB__ARENA_SETUP__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    int fds[4];
    size_t nfds;
    char err[256];
    llep_arena_geom g;

    ck_assert_int_ge(rc_connect(c), 0);
    rc_hello_kind(c, LLEP_PB__PEER_KIND__PEER_KIND_CLIENT);
    as.tensor_bytes = tensor_bytes;
    f.body_case = LLEP_PB__FRAME__BODY_ARENA_SETUP;
    f.arena_setup = &as;
    LlepPb__Frame *r = rc_reply(c, rc_send(c, &f), fds, &nfds);
    ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_ARENA_REPLY);
    ck_assert_msg(r->arena_reply->status == 0, "%s", r->arena_reply->message);
    ck_assert_uint_eq(nfds, 3);
    llep__arena_reply_get_geom(r->arena_reply, &g);
    ck_assert_msg(llep__arena_map(fds[0], &g, &c->arena, err, sizeof(err)) == 0, "%s", err);
    close(fds[0]);
    c->sq_efd = fds[1];
    c->cq_efd = fds[2];
    llep__frame_free(r);
}

/* ---- layers and the reference ----------------------------------------------------------- */

typedef struct layer {
    uint32_t n, k, d, h;
    int oai, bias;
    llep_test_f32_weights w;
} layer;

static uint64_t seed; /* the generator's state (lcg_next) */

static float *rand_vec(size_t n, float scale) {
    return llep_test_random_floats(lcg_sym, &seed, n, scale);
}

static void layer_make(layer *L, uint32_t n, uint32_t k, uint32_t d, uint32_t h, int oai,
                       int bias) {
    *L = (layer){ .n = n, .k = k, .d = d, .h = h, .oai = oai, .bias = bias };
    llep_test_f32_weights_init(&L->w, lcg_sym, &seed, n, d, h, 0.3f, 0.3f, bias ? 0.1f : 0);
}

static void layer_free(layer *L) {
    llep_test_f32_weights_fini(&L->w);
}

/* The float64 reference (ref-moe.c) of t tokens. */
static void reference(const layer *L, uint32_t t, const float *x, const int32_t *idx,
                      const float *w, double *y) {
    llep_ref_f32 l = { .n = L->n, .d = L->d, .h = L->h,
                       .act = L->oai ? LLEP_ACT_SWIGLU_OAI : LLEP_ACT_SWIGLU, .wg = L->w.wg,
                       .wu = L->w.wu, .wd = L->w.wd, .bg = L->w.bg, .bu = L->w.bu,
                       .bd = L->w.bd };

    llep_ref_moe_f32_layer(&l, t, L->k, x, idx, w, y);
}

static LlepPb__TensorRef *put(rawc *c, LlepPb__TensorRef *ref, const float *v, size_t n) {
    llep_pb__tensor_ref__init(ref);
    if (!v)
        return NULL;
    ref->offset = c->arena.geom.tensor_offset + c->weights_end;
    ref->bytes = n * sizeof(float);
    memcpy(llep__arena_ptr(&c->arena, ref->offset), v, ref->bytes);
    c->weights_end += (ref->bytes + 63) & ~(uint64_t)63;
    return ref;
}

static void fill_desc(LlepPb__LayerDesc *d, const layer *L, uint32_t group, LlepPb__Policy pol) {
    llep_pb__layer_desc__init(d);
    d->num_experts = L->n;
    d->top_k = L->k;
    d->hidden = L->d;
    d->inter = L->h;
    d->act = L->oai ? LLEP_PB__ACTIVATION__ACT_SWIGLU_OAI : LLEP_PB__ACTIVATION__ACT_SWIGLU;
    d->group = group;
    d->group_timeout_ms = 1000; /* long enough for a loaded CI machine */
    d->policy = pol;
    d->min_tokens = 1;
}

/* Sends f (a layer create or attach) and takes its reply of body want: the layer id, or 0 with
 * the daemon's message in err. */
static uint32_t rc_layer_request(rawc *c, LlepPb__Frame *f, LlepPb__Frame__BodyCase want,
                                 char *err, size_t errlen) {
    LlepPb__Frame *rep = rc_reply(c, rc_send(c, f), NULL, NULL);

    ck_assert_int_eq(rep->body_case, want);
    const LlepPb__LayerReply *lr = want == LLEP_PB__FRAME__BODY_LAYER_CREATE_REPLY
                                       ? rep->layer_create_reply
                                       : rep->layer_attach_reply;
    uint32_t id = lr->status == 0 ? lr->layer_id : 0;
    snprintf(err, errlen, "%s", lr->message);
    llep__frame_free(rep);
    return id;
}

/* Returns the layer id, or 0 with the daemon's message in err. */
static uint32_t rc_create(rawc *c, const char *name, const layer *L, uint32_t group,
                          LlepPb__Policy pol, char *err, size_t errlen) {
    LlepPb__LayerCreate lc = LLEP_PB__LAYER_CREATE__INIT;
    LlepPb__LayerDesc d;
    LlepPb__TensorRef r[6];
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    size_t ndh = (size_t)L->n * L->d * L->h;

    c->weights_end = 0;
    fill_desc(&d, L, group, pol);
    lc.name = (char *)name;
    lc.desc = &d;
    lc.w_gate = put(c, &r[0], L->w.wg, ndh);
    lc.w_up = put(c, &r[1], L->w.wu, ndh);
    lc.w_down = put(c, &r[2], L->w.wd, ndh);
    lc.b_gate = put(c, &r[3], L->w.bg, (size_t)L->n * L->h);
    lc.b_up = put(c, &r[4], L->w.bu, (size_t)L->n * L->h);
    lc.b_down = put(c, &r[5], L->w.bd, (size_t)L->n * L->d);
    f.body_case = LLEP_PB__FRAME__BODY_LAYER_CREATE;
    f.layer_create = &lc;
    return rc_layer_request(c, &f, LLEP_PB__FRAME__BODY_LAYER_CREATE_REPLY, err, errlen);
}

static uint32_t rc_attach(rawc *c, const char *name, const layer *L, char *err, size_t errlen) {
    LlepPb__LayerAttach la = LLEP_PB__LAYER_ATTACH__INIT;
    LlepPb__LayerDesc d;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    if (L)
        fill_desc(&d, L, 0, LLEP_PB__POLICY__POLICY_AUTO);
    la.name = (char *)name;
    la.desc = L ? &d : NULL;
    f.body_case = LLEP_PB__FRAME__BODY_LAYER_ATTACH;
    f.layer_attach = &la;
    return rc_layer_request(c, &f, LLEP_PB__FRAME__BODY_LAYER_ATTACH_REPLY, err, errlen);
}

/* Places a forward's tensors after the weights and pushes it; returns the tag. */
static uint64_t rc_submit(rawc *c, uint32_t layer_id, const layer *L, uint32_t t,
                          const float *x, const int32_t *idx, const float *w, uint64_t slot,
                          llep_sqe *ret) {
    uint64_t base = c->arena.geom.tensor_offset + c->weights_end;
    uint64_t xb = (uint64_t)t * L->d * 4, kb = (uint64_t)t * L->k * 4;
    uint64_t per = 2 * xb + 2 * kb + 256;
    llep_sqe e = { .tag = ++c->next_tag, .layer_id = layer_id, .tokens = t };

    base += slot * ((per + 63) & ~(uint64_t)63);
    e.x_offset = base;
    e.topk_idx_offset = base + xb;
    e.topk_w_offset = base + xb + kb;
    e.y_offset = (base + xb + 2 * kb + 63) & ~(uint64_t)63;
    memcpy(llep__arena_ptr(&c->arena, e.x_offset), x, xb);
    memcpy(llep__arena_ptr(&c->arena, e.topk_idx_offset), idx, kb);
    memcpy(llep__arena_ptr(&c->arena, e.topk_w_offset), w, kb);
    float *y = llep__arena_ptr(&c->arena, e.y_offset);
    for (uint64_t i = 0; i < xb / 4; i++)
        y[i] = NAN; /* poisoned: an unwritten row fails the comparison */
    ck_assert_int_eq(llep__sq_push(&c->arena, &e), 0);
    if (llep__ring_need_wake(&c->arena.sq))
        llep__eventfd_signal(c->sq_efd);
    if (ret)
        *ret = e;
    return e.tag;
}

/* Waits for one completion (10 s at most). */
static int rc_complete(rawc *c, llep_cqe *ret) {
    for (int i = 0; i < 10000; i++) {
        if (llep__cq_pop(&c->arena, ret) == 0)
            return 0;
        if (llep__ring_prepare_sleep(&c->arena.cq)) {
            struct pollfd p = { .fd = c->cq_efd, .events = POLLIN };
            poll(&p, 1, 1);
            uint64_t n;
            if (p.revents & POLLIN)
                ck_assert_int_eq(read(c->cq_efd, &n, sizeof(n)), sizeof(n));
        }
        llep__ring_finish_sleep(&c->arena.cq);
    }
    return -ETIMEDOUT;
}

/* One blocking forward; returns the completion status, the error frame's message in err. */
static int rc_forward(rawc *c, uint32_t layer_id, const layer *L, uint32_t t, const float *x,
                      const int32_t *idx, const float *w, float *y, char *err, size_t errlen) {
    llep_sqe e;
    llep_cqe cq;

    rc_submit(c, layer_id, L, t, x, idx, w, 0, &e);
    ck_assert_int_eq(rc_complete(c, &cq), 0);
    ck_assert_uint_eq(cq.tag, e.tag);
    if (cq.status == 0) {
        memcpy(y, llep__arena_ptr(&c->arena, e.y_offset), (size_t)t * L->d * 4);
        return 0;
    }
    /* The SubmissionError frame was sent before the completion. */
    LlepPb__Frame *f;
    while ((f = rc_recv(c, NULL, NULL)) && f->body_case != LLEP_PB__FRAME__BODY_SUBMISSION_ERROR)
        llep__frame_free(f);
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(f->submission_error->tag, e.tag);
    snprintf(err, errlen, "%s", f->submission_error->message);
    llep__frame_free(f);
    return cq.status;
}

/* Routing with `hot` share of the slots on expert 0 (the rest uniform). */
static void make_routing(const layer *L, uint32_t t, double hot, int32_t *idx, float *w) {
    for (uint32_t i = 0; i < t * L->k; i++) {
        double u = (lcg_sym(&seed) + 1) / 2;
        idx[i] = u < hot ? 0 : (int32_t)((seed >> 20) % L->n);
        w[i] = (lcg_sym(&seed) + 1.5f) / 2;
    }
}

/* ---- tests ------------------------------------------------------------------------------- */

static void check_forward(rawc *c, uint32_t id, const layer *L, uint32_t t, double hot,
                          float *ret_y) {
    float *x = rand_vec((size_t)t * L->d, 1.0f), *w = malloc(t * L->k * 4);
    float *y = ret_y ? ret_y : malloc((size_t)t * L->d * 4);
    int32_t *idx = malloc(t * L->k * 4);
    double *ref = malloc((size_t)t * L->d * 8);
    char err[256];

    make_routing(L, t, hot, idx, w);
    ck_assert_msg(rc_forward(c, id, L, t, x, idx, w, y, err, sizeof(err)) == 0, "%s", err);
    reference(L, t, x, idx, w, ref);
    double e = llep_test_rel_l2(y, ref, (size_t)t * L->d);
    ck_assert_msg(e < 1e-5, "relative L2 error %g", e);
    free(x);
    free(w);
    free(idx);
    free(ref);
    if (!ret_y)
        free(y);
}

START_TEST(forward_matches_reference)
{
    rawc c;
    layer L;
    char err[256];

    seed = 42 + (uint64_t)_i;
    start_daemon("4");
    rc_start(&c, 8 << 20);
    layer_make(&L, 8, 2, 24, 40, _i & 1, _i & 2);
    uint32_t id = rc_create(&c, "moe", &L, 0, LLEP_PB__POLICY__POLICY_AUTO, err, sizeof(err));
    ck_assert_msg(id != 0, "create failed: %s", err);
    check_forward(&c, id, &L, 64, 0.0, NULL);   /* balanced */
    check_forward(&c, id, &L, 200, 0.9, NULL);  /* skewed: LLEP */
    check_forward(&c, id, &L, 1, 0.0, NULL);
    layer_free(&L);
    rc_close(&c);
    stop_daemon();
}
END_TEST

/* The same input under forced EP and forced LLEP gives the same output (within 1e-6). */
START_TEST(ep_and_llep_agree)
{
    rawc c;
    layer L;
    char err[256];
    uint32_t t = 300;

    seed = 7;
    start_daemon("4");
    rc_start(&c, 16 << 20);
    layer_make(&L, 8, 2, 16, 32, 0, 1);
    uint32_t ep = rc_create(&c, "ep", &L, 0, LLEP_PB__POLICY__POLICY_EP, err, sizeof(err));
    ck_assert_msg(ep != 0, "%s", err);
    /* The second layer comes from a second client, with its own arena. */
    rawc c2;
    rc_start(&c2, 16 << 20);
    uint32_t ll = rc_create(&c2, "llep", &L, 0, LLEP_PB__POLICY__POLICY_LLEP, err, sizeof(err));
    ck_assert_msg(ll != 0, "%s", err);

    float *x = rand_vec((size_t)t * L.d, 1.0f), *w = malloc(t * L.k * 4);
    int32_t *idx = malloc(t * L.k * 4);
    float *y1 = malloc((size_t)t * L.d * 4), *y2 = malloc((size_t)t * L.d * 4);
    make_routing(&L, t, 0.95, idx, w);
    ck_assert_int_eq(rc_forward(&c, ep, &L, t, x, idx, w, y1, err, sizeof(err)), 0);
    ck_assert_int_eq(rc_forward(&c2, ll, &L, t, x, idx, w, y2, err, sizeof(err)), 0);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)t * L.d; i++) {
        num += ((double)y1[i] - y2[i]) * ((double)y1[i] - y2[i]);
        den += (double)y1[i] * y1[i];
    }
    ck_assert_msg(sqrt(num / den) < 1e-6, "EP and LLEP differ by %g", sqrt(num / den));
    free(x);
    free(w);
    free(idx);
    free(y1);
    free(y2);
    layer_free(&L);
    rc_close(&c);
    rc_close(&c2);
    stop_daemon();
}
END_TEST

/* Writes raw bytes and expects an ErrorReply (or a close) and nothing else broken. */
static void expect_rejected(const void *bytes, size_t len, LlepPb__Status want) {
    rawc c;

    ck_assert_int_ge(rc_connect(&c), 0);
    ck_assert_int_eq(write(c.fd, bytes, len), (ssize_t)len);
    LlepPb__Frame *f = rc_recv(&c, NULL, NULL);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(f->body_case, LLEP_PB__FRAME__BODY_ERROR);
    ck_assert_int_eq(f->error->status, want);
    ck_assert_str_ne(f->error->message, "");
    llep__frame_free(f);
    ck_assert_ptr_null(rc_recv(&c, NULL, NULL)); /* then the daemon closes */
    rc_close(&c);
}

START_TEST(bad_frames_get_error_replies)
{
    static const uint8_t garbage[] = { 5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff };
    static const uint8_t oversize[] = { 0xff, 0xff, 0xff, 0x7f };
    rawc ok, c;
    layer L;
    char err[256];

    seed = 3;
    start_daemon("2");
    rc_start(&ok, 4 << 20);
    layer_make(&L, 4, 2, 8, 8, 0, 0);
    uint32_t id = rc_create(&ok, "good", &L, 0, LLEP_PB__POLICY__POLICY_AUTO, err, sizeof(err));
    ck_assert_msg(id, "%s", err);

    expect_rejected(garbage, sizeof(garbage), LLEP_PB__STATUS__STATUS_PROTOCOL);
    expect_rejected(oversize, sizeof(oversize), LLEP_PB__STATUS__STATUS_PROTOCOL);

    /* A name with a NUL byte inside, "good\0x", made by hand: without the wire check it would
     * attach to "good". It is refused as a bad frame naming the field, then the connection
     * ends. */
    {
        LlepPb__LayerAttach la = LLEP_PB__LAYER_ATTACH__INIT;
        LlepPb__Frame af = LLEP_PB__FRAME__INIT;
        uint8_t *buf, *x;
        size_t len;

        la.name = (char *)"goodXx";
        af.id = 77;
        af.body_case = LLEP_PB__FRAME__BODY_LAYER_ATTACH;
        af.layer_attach = &la;
        ck_assert_int_eq(llep__frame_encode_alloc(&af, &buf, &len), 0);
        x = memmem(buf, len, "goodXx", 6);
        ck_assert_ptr_nonnull(x);
        x[4] = '\0';
        rc_start(&c, 1 << 20);
        ck_assert_int_eq(write(c.fd, buf, len), (ssize_t)len);
        free(buf);
        LlepPb__Frame *e = rc_recv(&c, NULL, NULL);
        ck_assert_ptr_nonnull(e);
        ck_assert_int_eq(e->body_case, LLEP_PB__FRAME__BODY_ERROR);
        ck_assert_int_eq(e->error->status, LLEP_PB__STATUS__STATUS_PROTOCOL);
        ck_assert_msg(strstr(e->error->message, "string field 'name' of LayerAttach has a NUL "
                             "byte at offset 4"), "%s", e->error->message);
        llep__frame_free(e);
        ck_assert_ptr_null(rc_recv(&c, NULL, NULL));
        rc_close(&c);
    }

    /* A wrong protocol version is named in the reply. */
    LlepPb__Hello h = LLEP_PB__HELLO__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    h.version = 99;
    h.kind = LLEP_PB__PEER_KIND__PEER_KIND_CLIENT;
    f.body_case = LLEP_PB__FRAME__BODY_HELLO;
    f.hello = &h;
    ck_assert_int_ge(rc_connect(&c), 0);
    LlepPb__Frame *r = rc_reply(&c, rc_send(&c, &f), NULL, NULL);
    ck_assert_int_eq(r->hello_reply->status, LLEP_PB__STATUS__STATUS_VERSION_MISMATCH);
    ck_assert_ptr_nonnull(strstr(r->hello_reply->message, "99"));
    llep__frame_free(r);
    rc_close(&c);

    /* Anything before Hello is a protocol error. */
    LlepPb__StatusRequest sr = LLEP_PB__STATUS_REQUEST__INIT;
    LlepPb__Frame g = LLEP_PB__FRAME__INIT;
    g.body_case = LLEP_PB__FRAME__BODY_STATUS;
    g.status = &sr;
    ck_assert_int_ge(rc_connect(&c), 0);
    r = rc_reply(&c, rc_send(&c, &g), NULL, NULL);
    ck_assert_int_ne(r->hello_reply->status, 0);
    llep__frame_free(r);
    rc_close(&c);

    /* llepctl may not create layers. */
    ck_assert_int_ge(rc_connect(&c), 0);
    rc_hello_kind(&c, LLEP_PB__PEER_KIND__PEER_KIND_CTL);
    LlepPb__LayerRelease rel = LLEP_PB__LAYER_RELEASE__INIT;
    LlepPb__Frame rf = LLEP_PB__FRAME__INIT;
    rf.body_case = LLEP_PB__FRAME__BODY_LAYER_RELEASE;
    rf.layer_release = &rel;
    r = rc_reply(&c, rc_send(&c, &rf), NULL, NULL);
    ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_ERROR);
    ck_assert_ptr_nonnull(strstr(r->error->message, "for clients"));
    llep__frame_free(r);
    rc_close(&c);

    /* The first client never noticed. */
    check_forward(&ok, id, &L, 16, 0.5, NULL);
    layer_free(&L);
    rc_close(&ok);
    stop_daemon();
}
END_TEST

START_TEST(bad_requests_are_named)
{
    rawc c;
    layer L, other;
    char err[256];

    seed = 5;
    start_daemon("2");
    rc_start(&c, 4 << 20);
    layer_make(&L, 4, 2, 8, 8, 0, 0);
    uint32_t id = rc_create(&c, "moe", &L, 0, LLEP_PB__POLICY__POLICY_AUTO, err, sizeof(err));
    ck_assert_msg(id, "%s", err);

    /* The same name twice. */
    ck_assert_uint_eq(rc_create(&c, "moe", &L, 0, 0, err, sizeof(err)), 0);
    ck_assert_ptr_nonnull(strstr(err, "exists"));
    /* N not a multiple of the devices. */
    layer_make(&other, 3, 1, 8, 8, 0, 0);
    ck_assert_uint_eq(rc_create(&c, "odd", &other, 0, 0, err, sizeof(err)), 0);
    ck_assert_ptr_nonnull(strstr(err, "multiple"));
    layer_free(&other);
    /* Attaching with another shape names both. */
    layer_make(&other, 4, 2, 16, 8, 0, 0);
    ck_assert_uint_eq(rc_attach(&c, "moe", &other, err, sizeof(err)), 0);
    ck_assert_ptr_nonnull(strstr(err, "D=8"));
    ck_assert_ptr_nonnull(strstr(err, "D=16"));
    layer_free(&other);
    ck_assert_uint_eq(rc_attach(&c, "nosuch", NULL, err, sizeof(err)), 0);
    ck_assert_ptr_nonnull(strstr(err, "nosuch"));

    /* Submissions: bad expert id, non-finite gate weight, unknown layer. */
    float x[8 * 2] = { 0 }, y[8 * 2], w[4] = { 1, 1, 1, 1 };
    int32_t idx[4] = { 0, 1, 2, 9 };
    int r = rc_forward(&c, id, &L, 2, x, idx, w, y, err, sizeof(err));
    ck_assert_int_eq(r, -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "9"));
    idx[3] = 3;
    w[1] = NAN;
    ck_assert_int_eq(rc_forward(&c, id, &L, 2, x, idx, w, y, err, sizeof(err)), -EINVAL);
    w[1] = 1;
    ck_assert_int_eq(rc_forward(&c, 77, &L, 2, x, idx, w, y, err, sizeof(err)), -ENOENT);

    /* Offsets outside the arena. */
    llep_sqe e = { .tag = 1000, .layer_id = id, .tokens = 1,
                   .x_offset = c.arena.geom.arena_size - 4, .topk_idx_offset = 0,
                   .topk_w_offset = 0, .y_offset = 0 };
    llep_cqe cq;
    ck_assert_int_eq(llep__sq_push(&c.arena, &e), 0);
    if (llep__ring_need_wake(&c.arena.sq))
        llep__eventfd_signal(c.sq_efd);
    ck_assert_int_eq(rc_complete(&c, &cq), 0);
    ck_assert_int_eq(cq.status, -EINVAL);

    /* And the layer still computes. */
    check_forward(&c, id, &L, 32, 0.7, NULL);
    layer_free(&L);
    rc_close(&c);
    stop_daemon();
}
END_TEST

/* A client killed mid-step takes nothing down with it. */
/* A client that corrupts its own ring loses its connection, and only that: another client's
 * forwards go on. An arena request while submissions are in flight is refused, not obeyed. */
START_TEST(hostile_client_is_cut_off)
{
    rawc good, bad;
    layer L;
    char err[256];

    seed = 23;
    start_daemon("2");
    layer_make(&L, 4, 2, 8, 8, 0, 0);
    rc_start(&good, 4 << 20);
    uint32_t id = rc_create(&good, "shared", &L, 0, LLEP_PB__POLICY__POLICY_AUTO, err, sizeof(err));
    ck_assert_msg(id, "%s", err);

    /* While a collective step waits (group 2 with one client), the arena cannot change. */
    rc_start(&bad, 4 << 20);
    uint32_t cid = rc_create(&bad, "coll", &L, 2, LLEP_PB__POLICY__POLICY_AUTO, err, sizeof(err));
    ck_assert_msg(cid, "%s", err);
    float x[8 * 4], w[8];
    int32_t idx[8];
    for (int i = 0; i < 32; i++)
        x[i] = lcg_sym(&seed);
    make_routing(&L, 4, 0.5, idx, w);
    rc_submit(&bad, cid, &L, 4, x, idx, w, 0, NULL);
    usleep(20000);
    LlepPb__ArenaSetup as = LLEP_PB__ARENA_SETUP__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    as.tensor_bytes = 1 << 20;
    f.body_case = LLEP_PB__FRAME__BODY_ARENA_SETUP;
    f.arena_setup = &as;
    LlepPb__Frame *r = rc_reply(&bad, rc_send(&bad, &f), NULL, NULL);
    ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_ARENA_REPLY);
    ck_assert_int_eq(r->arena_reply->status, LLEP_PB__STATUS__STATUS_INVALID);
    ck_assert_ptr_nonnull(strstr(r->arena_reply->message, "in flight"));
    llep__frame_free(r);

    /* Now the ring: a head a million entries ahead of the tail is impossible. */
    atomic_store(&bad.arena.sq.ctl->head, bad.arena.sq.prod + 1000000u);
    llep__eventfd_signal(bad.sq_efd);
    LlepPb__Frame *g;
    while ((g = rc_recv(&bad, NULL, NULL)))
        llep__frame_free(g); /* the daemon hangs up on it */
    check_forward(&good, id, &L, 16, 0.5, NULL);
    layer_free(&L);
    rc_close(&bad);
    rc_close(&good);
    stop_daemon();
}
END_TEST

START_TEST(client_killed_mid_step)
{
    rawc c;
    layer L;
    char err[256];

    seed = 11;
    start_daemon("4");
    layer_make(&L, 8, 4, 64, 128, 0, 0);
    rc_start(&c, 64 << 20);
    uint32_t id = rc_create(&c, "shared", &L, 0, LLEP_PB__POLICY__POLICY_AUTO, err, sizeof(err));
    ck_assert_msg(id, "%s", err);

    for (int round = 0; round < 3; round++) {
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            rawc v;
            char e2[256];
            rc_start(&v, 64 << 20);
            uint32_t vid = rc_attach(&v, "shared", &L, e2, sizeof(e2));
            uint32_t t = 4096;
            float *x = rand_vec((size_t)t * L.d, 1.0f), *w = malloc(t * L.k * 4);
            int32_t *idx = malloc(t * L.k * 4);
            make_routing(&L, t, 0.8, idx, w);
            for (uint64_t s = 0; s < 4; s++)
                rc_submit(&v, vid, &L, t, x, idx, w, s, NULL);
            pause(); /* killed while the steps run */
            _exit(0);
        }
        usleep(20000 + 30000 * round);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        check_forward(&c, id, &L, 64, 0.8, NULL);
    }
    layer_free(&L);
    rc_close(&c);
    stop_daemon();
}
END_TEST

/* 8 client processes x 200 forwards on one shared layer, random skew: every output equals the
 * reference and every completion arrives exactly once. */
START_TEST(eight_clients_share_a_layer)
{
    rawc c;
    layer L;
    char err[256];
    pid_t kids[8];

    seed = 99;
    start_daemon("4");
    layer_make(&L, 16, 4, 16, 24, 1, 1);
    rc_start(&c, 8 << 20);
    uint32_t id = rc_create(&c, "shared", &L, 0, LLEP_PB__POLICY__POLICY_AUTO, err, sizeof(err));
    ck_assert_msg(id, "%s", err);
    for (int k = 0; k < 8; k++) {
        kids[k] = fork();
        ck_assert_int_ge(kids[k], 0);
        if (kids[k] == 0) {
            rawc v;
            char e2[256];
            seed = 1000 + (uint64_t)k;
            rc_start(&v, 8 << 20);
            uint32_t vid = rc_attach(&v, "shared", &L, e2, sizeof(e2));
            if (!vid)
                _exit(3);
            for (int i = 0; i < 200; i++) {
                uint32_t t = 1 + (uint32_t)((seed >> 33) % 48);
                check_forward(&v, vid, &L, t, (i % 5) * 0.2, NULL);
            }
            rc_close(&v);
            _exit(0);
        }
    }
    for (int k = 0; k < 8; k++) {
        int st;
        ck_assert_int_eq(waitpid(kids[k], &st, 0), kids[k]);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client %d failed (%d)", k, st);
    }
    layer_free(&L);
    rc_close(&c);
    stop_daemon();
}
END_TEST

/* Collective batching: a step waits for one submission from each of `group` clients; alone,
 * a client's submission times out. */
START_TEST(collective_batching)
{
    rawc a, b;
    layer L;
    char err[256];
    llep_cqe ca, cb;

    seed = 17;
    start_daemon("2");
    layer_make(&L, 4, 2, 8, 8, 0, 0);
    rc_start(&a, 4 << 20);
    uint32_t id = rc_create(&a, "coll", &L, 2, LLEP_PB__POLICY__POLICY_AUTO, err, sizeof(err));
    ck_assert_msg(id, "%s", err);
    rc_start(&b, 4 << 20);
    uint32_t idb = rc_attach(&b, "coll", NULL, err, sizeof(err));
    ck_assert_msg(idb, "%s", err);

    float x[8 * 4], w[8];
    int32_t idx[8];
    for (int i = 0; i < 32; i++)
        x[i] = lcg_sym(&seed);
    make_routing(&L, 4, 0.5, idx, w);
    rc_submit(&a, id, &L, 4, x, idx, w, 0, NULL);
    ck_assert_int_eq(rc_complete(&a, &ca), 0);
    ck_assert_int_eq(ca.status, -ETIMEDOUT);

    rc_submit(&a, id, &L, 4, x, idx, w, 0, NULL);
    usleep(50000);
    rc_submit(&b, idb, &L, 4, x, idx, w, 0, NULL);
    ck_assert_int_eq(rc_complete(&a, &ca), 0);
    ck_assert_int_eq(rc_complete(&b, &cb), 0);
    ck_assert_int_eq(ca.status, 0);
    ck_assert_int_eq(cb.status, 0);
    ck_assert_uint_eq(ca.step, cb.step); /* one step served both */
    layer_free(&L);
    rc_close(&a);
    rc_close(&b);
    stop_daemon();
}
END_TEST

/* SIGTERM: the daemon exits 0 and clients see the connection end. */
START_TEST(sigterm_ends_connections)
{
    rawc c;

    start_daemon("2");
    rc_start(&c, 1 << 20);
    stop_daemon();
    LlepPb__Frame *f;
    int notices = 0;
    while ((f = rc_recv(&c, NULL, NULL))) {
        notices += f->body_case == LLEP_PB__FRAME__BODY_NOTICE &&
                   f->notice->status == LLEP_PB__STATUS__STATUS_SHUTTING_DOWN;
        llep__frame_free(f);
    }
    ck_assert_int_eq(notices, 1);
    rc_close(&c);
    ck_assert_int_lt(llep_test_unix_connect(sock_path), 0);
}
END_TEST

/* SIGTERM the moment the socket accepts, before llepd's loop runs, and a second one from
 * stop_daemon() while it stops: still a clean stop (exit 0), not a death by the signal. The
 * socket listens before the signal handles start, and closing them at the end puts back the
 * default action; llepd notes the signals in both windows. Races, so several rounds. */
START_TEST(sigterm_right_after_listening)
{
    for (int i = 0; i < 10; i++) {
        start_daemon("2");
        ck_assert_int_eq(kill(daemon_pid, SIGTERM), 0);
        stop_daemon();
    }
}
END_TEST

static Suite *llepd_suite(void) {
    Suite *s = suite_create("llepd");
    TCase *tc = tcase_create("protocol");

    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, forward_matches_reference, 0, 4);
    tcase_add_test(tc, ep_and_llep_agree);
    tcase_add_test(tc, bad_frames_get_error_replies);
    tcase_add_test(tc, bad_requests_are_named);
    tcase_add_test(tc, client_killed_mid_step);
    tcase_add_test(tc, hostile_client_is_cut_off);
    tcase_add_test(tc, eight_clients_share_a_layer);
    tcase_add_test(tc, collective_batching);
    tcase_add_test(tc, sigterm_ends_connections);
    tcase_add_test(tc, sigterm_right_after_listening);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(llepd_suite(), CK_NORMAL);
}
