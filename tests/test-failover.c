/* A failed device (issue 16; devices.h, "failed devices"), made to fail by the CPU backend's
 * test hook LLEP_TEST_FAIL_DEVICE=D@N (backend-cpu.c).
 *
 * In-process: the step in which the device fails returns -EIO naming it and leaves every y as
 * it was (a sentinel); the device is marked failed and served by a survivor; later steps on
 * P - 1 devices are exact against float64 where the engine's owner can give the weights again
 * (engine.h: reload), and the layer reports plainly that its experts are gone where it cannot,
 * step after step, while the other layers keep serving and new layers are made on the
 * survivors. With no device left, every step says so.
 *
 * Against a private llepd: a model layer (tests/make-checkpoints.py's mixtral-f32) is re-read
 * from its checkpoint and exact again after the failed step, a client-created layer (llepd
 * keeps no host copy of its weights unless keep-host-weights) reports its lost experts, or with
 * keep-host-weights is exact again, `llepctl devices` shows the
 * state, the metrics export it, and the failed device holds nothing once every layer has
 * stepped. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "client-fixtures.h"
#include "devices.h"
#include "engine-fixtures.h"
#include "engine.h"
#include "fixtures.h"
#include "json-fixtures.h"
#include "llep/client.h"
#include "test-nodes.h"

#define SENTINEL 12345.0f

/* ---- layers, batches, the reference (engine-fixtures.h) ------------------------------------ */

typedef llep_test_batch batch;

/* A layer, and how often the engine asked its owner for its weights again. */
typedef struct layer {
    llep_test_layer t;
    int reloads;                     /* reload.get calls */
} layer;

static void layer_init(layer *l, uint32_t n, uint32_t k, uint32_t d, uint32_t h, uint64_t seed) {
    l->reloads = 0;
    llep_test_layer_init(&l->t, (llep_test_shape){ n, k, d, h }, seed);
}

static void fill_sentinel(batch *b, uint32_t d) {
    for (size_t i = 0; i < (size_t)b->tokens * d; i++)
        b->y[i] = SENTINEL;
}

static void assert_untouched(const batch *b, uint32_t d, const char *what) {
    for (size_t i = 0; i < (size_t)b->tokens * d; i++)
        ck_assert_msg(b->y[i] == SENTINEL, "%s: y[%zu] = %g was written by a failed step", what,
                      i, b->y[i]);
}

/* y of b against the float64 reference of a layer of shape s with weights w. */
static void assert_exact_w(const llep_test_f32_weights *w, llep_test_shape s, const batch *b,
                           const char *what) {
    double err = llep_test_batch_error_w(w, s, b);

    ck_assert_msg(err <= 1e-5, "%s: relative L2 error %g over 1e-5", what, err);
}

/* ---- in-process ------------------------------------------------------------------------------ */

static int reload_get(void *arg, llep_engine_weights *w, char *err, size_t errlen) {
    layer *l = arg;
    const llep_test_f32_weights *lw = &l->t.w;

    (void)err;
    (void)errlen;
    l->reloads++;
    *w = (llep_engine_weights){ lw->wg, lw->wu, lw->wd, lw->bg, lw->bu, lw->bd, NULL };
    return 0;
}

/* An engine of l on dv (NULL: devices of its own, P of them), with the weights to give again
 * when reload. */
static llep_engine *engine_of(llep_devices *dv, uint32_t p, layer *l, bool reload) {
    llep_engine_config cfg;
    llep_engine *e = NULL;
    char err[256] = "";

    llep_test_engine_config(&cfg, &l->t, dv, p);
    cfg.threads = 2;
    if (reload)
        cfg.reload = (llep_engine_reload){ .get = reload_get, .arg = l };
    ck_assert_msg(llep__engine_new(&cfg, &e, err, sizeof(err)) == 0, "%s", err);
    return e;
}

static void step_exact(llep_engine *e, uint32_t p, layer *l, uint64_t seed, double skew,
                       const char *what) {
    batch b;
    llep_engine_stats st;

    llep_test_batch_spread(&b, &l->t, 64, skew, seed);
    int r = llep_test_engine_step(e, p, &l->t, &b, &st);
    ck_assert_msg(r == 0, "%s: %s", what, llep__engine_error(e));
    ck_assert_uint_eq(st.num_devices, p);
    llep_test_assert_exact(&l->t, &b, what);
    llep_test_batch_fini(&b);
}

/* A step that must fail with want (a negative errno), saying `says`, and leave y alone. */
static void step_fails_with(llep_engine *e, uint32_t p, layer *l, uint64_t seed, int want,
                            const char *says, const char *what) {
    batch b;

    llep_test_batch_spread(&b, &l->t, 64, 0.0, seed);
    fill_sentinel(&b, l->t.s.d);
    int r = llep_test_engine_step(e, p, &l->t, &b, NULL);
    ck_assert_msg(r == want, "%s: %d (%s), not %d", what, r, llep__engine_error(e), want);
    ck_assert_msg(strstr(llep__engine_error(e), says), "%s: '%s' does not say '%s'", what,
                  llep__engine_error(e), says);
    assert_untouched(&b, l->t.s.d, what);
    llep_test_batch_fini(&b);
}

static void step_fails(llep_engine *e, uint32_t p, layer *l, uint64_t seed, const char *says,
                       const char *what) {
    step_fails_with(e, p, l, seed, -EIO, says, what);
}

static void fail_hook(const char *v) {
    ck_assert_int_eq(setenv("LLEP_TEST_FAIL_DEVICE", v, 1), 0);
}

/* Device 2 of 4 fails in the second step: that step errs and writes nothing; the engine puts
 * device 2's experts on the survivor serving it from the weights its owner gives again, and
 * every later step is exact, skewed or not, on the three devices left. */
START_TEST(test_engine_rehomes) {
    layer l;

    layer_init(&l, 8, 2, 16, 12, 7);
    fail_hook("2@2");
    llep_engine *e = engine_of(NULL, 4, &l, true);
    unsetenv("LLEP_TEST_FAIL_DEVICE");
    llep_devices *dv = llep__engine_devices(e);
    llep_device_status st;

    step_exact(e, 4, &l, 1, 0.0, "the step before the failure");
    step_fails(e, 4, &l, 2, "device 2 failed", "the failing step");
    llep__devices_status(dv, 2, &st);
    ck_assert(st.failed);
    ck_assert_uint_ne(st.served_by, 2);
    ck_assert_uint_lt(st.served_by, 4);
    ck_assert_ptr_nonnull(strstr(st.why, "LLEP_TEST_FAIL_DEVICE"));
    ck_assert_uint_eq(llep__devices_failures(dv), 1);
    for (uint32_t d = 0; d < 4; d++)
        if (d != 2) {
            llep__devices_status(dv, d, &st);
            ck_assert(!st.failed);
            ck_assert_uint_eq(st.served_by, d);
        }
    char err[128] = "";
    ck_assert_int_eq(llep__devices_set_budget(dv, 2, 1u << 30, err, sizeof(err)), -ENODEV);
    ck_assert_str_eq(err, "device 2 failed");
    step_exact(e, 4, &l, 3, 0.0, "the first step after");
    ck_assert_int_eq(l.reloads, 1);
    step_exact(e, 4, &l, 4, 0.8, "a skewed step after (LLEP)");
    step_exact(e, 4, &l, 5, 0.0, "another step after");
    ck_assert_int_eq(l.reloads, 1);
    /* The failed device holds nothing: its experts' old blocks were given back. */
    llep_device_figures f;
    llep__devices_figures(dv, 2, &f);
    ck_assert_uint_eq(f.used, 0);
    ck_assert_uint_eq(f.held, 0);
    llep__engine_free(e);
    llep_test_layer_fini(&l.t);
}
END_TEST

/* Device 1 of 4 fails during the combines of the second step (LLEP_TEST_FAIL_DEVICE=1@2:combine,
 * as a GPU whose context takes a sticky error there): the other devices' combines ran, yet the
 * step leaves every y as it was (backend.h: a combine's output reaches y only in a sync that
 * succeeds), and later steps are exact, skewed (LLEP) or not. */
START_TEST(test_engine_combine_fails) {
    layer l;

    layer_init(&l, 8, 2, 16, 12, 8);
    fail_hook("1@2:combine");
    llep_engine *e = engine_of(NULL, 4, &l, true);
    unsetenv("LLEP_TEST_FAIL_DEVICE");
    llep_device_status st;

    step_exact(e, 4, &l, 1, 0.0, "the step before the failure");
    step_fails(e, 4, &l, 2, "device 1 failed", "the step failing in its combines");
    llep__devices_status(llep__engine_devices(e), 1, &st);
    ck_assert(st.failed);
    step_exact(e, 4, &l, 3, 0.0, "the first step after");
    step_exact(e, 4, &l, 4, 0.8, "a skewed step after (LLEP)");
    ck_assert_int_eq(l.reloads, 1);
    llep__engine_free(e);
    llep_test_layer_fini(&l.t);
}
END_TEST

/* Two layers on shared devices, device 1 failing in the second step (layer B's): B kept no
 * weights elsewhere, so each of its later steps fails saying so without writing y, while layer
 * A is re-homed and exact, and a layer made after the failure lands on the survivors. */
START_TEST(test_engine_lost_beside_others) {
    llep_devices_config dc = { .num_devices = 4, .threads = 2 };
    llep_devices *dv = NULL;
    char err[256] = "";
    layer a, b, c;

    layer_init(&a, 8, 2, 16, 12, 11);
    layer_init(&b, 4, 2, 8, 6, 12);
    layer_init(&c, 8, 2, 16, 8, 13);
    fail_hook("1@2");
    ck_assert_msg(llep__devices_new(&dc, &dv, err, sizeof(err)) == 0, "%s", err);
    unsetenv("LLEP_TEST_FAIL_DEVICE");
    llep_engine *ea = engine_of(dv, 4, &a, true), *eb = engine_of(dv, 4, &b, false);

    step_exact(ea, 4, &a, 1, 0.0, "A before");
    step_fails(eb, 4, &b, 2, "device 1 failed", "B's failing step");
    step_exact(ea, 4, &a, 3, 0.5, "A after");
    for (int i = 0; i < 2; i++)
        step_fails(eb, 4, &b, 4 + (uint64_t)i, "device 1 failed and the weights of this "
                   "layer's experts 1..1 were only there", "B after");
    llep_engine *ec = engine_of(dv, 4, &c, false);
    step_exact(ec, 4, &c, 6, 0.3, "C made after");
    step_exact(ea, 4, &a, 7, 0.0, "A again");
    ck_assert_int_eq(a.reloads, 1);
    ck_assert_int_eq(c.reloads, 0);
    llep_device_figures f;
    llep__devices_figures(dv, 1, &f);
    ck_assert_uint_eq(f.used, 0);
    llep__engine_free(ec);
    llep__engine_free(eb);
    llep__engine_free(ea);
    llep__devices_free(dv);
    llep_test_layer_fini(&a.t);
    llep_test_layer_fini(&b.t);
    llep_test_layer_fini(&c.t);
}
END_TEST

static int reload_gone(void *arg, llep_engine_weights *w, char *err, size_t errlen) {
    layer *l = arg;

    (void)w;
    l->reloads++;
    snprintf(err, errlen, "the weights went away");
    return -ESTALE;
}

/* The owner cannot give the weights again after all: the layer reports it, step after step,
 * without asking again. */
START_TEST(test_engine_reload_fails) {
    layer l;
    llep_engine_config cfg;
    llep_engine *e = NULL;
    char err[256] = "";

    layer_init(&l, 4, 2, 8, 6, 41);
    llep_test_engine_config(&cfg, &l.t, NULL, 2);
    cfg.reload = (llep_engine_reload){ .get = reload_gone, .arg = &l };
    fail_hook("1@1");
    ck_assert_msg(llep__engine_new(&cfg, &e, err, sizeof(err)) == 0, "%s", err);
    unsetenv("LLEP_TEST_FAIL_DEVICE");
    step_fails(e, 2, &l, 1, "device 1 failed", "the failing step");
    for (int i = 0; i < 2; i++)
        step_fails(e, 2, &l, 2 + (uint64_t)i, "device 1 failed and its experts could not be put "
                   "on device 0: the weights went away", "a step after");
    ck_assert_int_eq(l.reloads, 1);
    llep__engine_free(e);
    llep_test_layer_fini(&l.t);
}
END_TEST

/* The first two asks find the weights not here yet (as a cluster node's share on its way from
 * the origin), then they are given. */
static int reload_later(void *arg, llep_engine_weights *w, char *err, size_t errlen) {
    layer *l = arg;
    const llep_test_f32_weights *lw = &l->t.w;

    if (++l->reloads <= 2) {
        snprintf(err, errlen, "the weights are on their way");
        return -EAGAIN;
    }
    *w = (llep_engine_weights){ lw->wg, lw->wu, lw->wd, lw->bg, lw->bu, lw->bd, NULL };
    return 0;
}

/* While the owner says -EAGAIN each step fails with it, saying why, and nothing is lost: the
 * next step asks again, and once the weights are given the layer is exact on the survivor. */
START_TEST(test_engine_reload_later) {
    layer l;
    llep_engine_config cfg;
    llep_engine *e = NULL;
    char err[256] = "";

    layer_init(&l, 4, 2, 8, 6, 43);
    llep_test_engine_config(&cfg, &l.t, NULL, 2);
    cfg.reload = (llep_engine_reload){ .get = reload_later, .arg = &l };
    fail_hook("1@1");
    ck_assert_msg(llep__engine_new(&cfg, &e, err, sizeof(err)) == 0, "%s", err);
    unsetenv("LLEP_TEST_FAIL_DEVICE");
    step_fails(e, 2, &l, 1, "device 1 failed", "the failing step");
    for (int i = 0; i < 2; i++)
        step_fails_with(e, 2, &l, 2 + (uint64_t)i, -EAGAIN, "device 1 failed and the weights "
                        "are on their way", "a step while they are on their way");
    step_exact(e, 2, &l, 4, 0.0, "the step once they are here");
    step_exact(e, 2, &l, 5, 0.6, "a skewed step after");
    ck_assert_int_eq(l.reloads, 3);
    llep__engine_free(e);
    llep_test_layer_fini(&l.t);
}
END_TEST

/* The only device fails: no device is left to serve it, and every later step says so. */
START_TEST(test_engine_no_survivor) {
    layer l;

    layer_init(&l, 2, 1, 8, 4, 21);
    fail_hook("0@1");
    llep_engine *e = engine_of(NULL, 1, &l, true);
    unsetenv("LLEP_TEST_FAIL_DEVICE");

    step_fails(e, 1, &l, 1, "device 0 failed", "the failing step");
    step_fails(e, 1, &l, 2, "no device is left to serve it", "a step after");
    llep_device_status st;
    llep__devices_status(llep__engine_devices(e), 0, &st);
    ck_assert(st.failed);
    ck_assert_uint_eq(st.served_by, LLEP_DEVICES_NONE);
    llep__engine_free(e);
    llep_test_layer_fini(&l.t);
}
END_TEST

/* ---- through llepd ------------------------------------------------------------------------ */

#define TOKENS 24u

static char tmpdir[64], sock_path[128], log_path[160], llepctl[PATH_MAX];
static pid_t llepd_pid = -1;

static void setup_llepd(void) {
    llep_test_tmpdir(tmpdir, sizeof(tmpdir), "test-failover");
    snprintf(sock_path, sizeof(sock_path), "%s/llepd.sock", tmpdir);
    snprintf(log_path, sizeof(log_path), "%s/llepd.log", tmpdir);
    llep_test_llepctl(llepctl, sizeof(llepctl));
}

static void teardown_llepd(void) {
    ck_assert_int_eq(llep_test_stop(&llepd_pid, 10000), 0);
    llep_test_rm_rf(tmpdir);
}

/* `llepctl ARGS...` (NULL-terminated after the verb), its output. */
static llep_test_output ctl(const char *verb, const char *opt) {
    const char *argv[] = { llepctl, "--socket", sock_path, verb, opt, NULL };
    llep_test_output o = llep_test_run(argv, NULL);

    ck_assert_msg(o.status == 0, "llepctl %s: %s", verb, o.err);
    return o;
}

static void forward_exact(llep_layer *h, const llep_test_f32_weights *w, const layer *shape,
                          uint64_t seed, const char *what) {
    batch b;

    llep_test_batch_spread(&b, &shape->t, TOKENS, 0.0, seed);
    int r = llep_forward(h, b.tokens, b.x, b.idx, b.w, b.y);
    ck_assert_msg(r == 0, "%s: %s: %s", what, llep_strerror(r),
                  llep_client_error(llep_layer_client(h)));
    assert_exact_w(w, shape->t.s, &b, what);
    llep_test_batch_fini(&b);
}

static void forward_fails(llep_layer *h, const layer *shape, uint64_t seed, const char *says,
                          const char *what) {
    batch b;

    llep_test_batch_spread(&b, &shape->t, TOKENS, 0.0, seed);
    fill_sentinel(&b, shape->t.s.d);
    int r = llep_forward(h, b.tokens, b.x, b.idx, b.w, b.y);
    const char *msg = llep_client_error(llep_layer_client(h));
    ck_assert_msg(r < 0, "%s: the forward succeeded", what);
    ck_assert_msg(strstr(msg, says), "%s: '%s' does not say '%s'", what, msg, says);
    assert_untouched(&b, shape->t.s.d, what);
    llep_test_batch_fini(&b);
}

static llep_layer *client_layer(llep_client *c, const char *name, const layer *l) {
    llep_layer_desc d;

    memset(&d, 0, sizeof(d));
    d.num_experts = l->t.s.n;
    d.top_k = l->t.s.k;
    d.hidden = l->t.s.d;
    d.inter = l->t.s.h;
    d.dtype = LLEP_DTYPE_F32;
    d.act = LLEP_ACT_SWIGLU;
    d.w_gate = l->t.w.wg;
    d.w_up = l->t.w.wu;
    d.w_down = l->t.w.wd;
    d.b_gate = l->t.w.bg;
    d.b_up = l->t.w.bu;
    d.b_down = l->t.w.bd;
    return llep_test_layer_create(c, name, &d);
}

/* llepd on 4 CPU devices, device 1 failing in the third step that computes on it: the
 * client layer's first step, then the model layer's steps until one fails. */
START_TEST(test_llepd_failover) {
    char dir[512], arg[600];
    llep_model_info mi;

    llep_test_checkpoint(dir, sizeof(dir), "mixtral-f32");
    snprintf(arg, sizeof(arg), "m=%s", dir);
    char listen[32];
    snprintf(listen, sizeof(listen), "127.0.0.1:%u", llep_test_free_port());
    const char *args[] = { "--model", arg, "--min-tokens", "1", "--metrics-listen", listen,
                           NULL };
    const char *env[] = { "LLEP_TEST_FAIL_DEVICE=1@3", NULL };
    llep_test_llepd o = { .sock = sock_path, .devices = "4", .args = args, .env = env,
                          .log = log_path, .log_level = "info" };
    llepd_pid = llep_test_llepd_start(&o);
    llep_client *c = llep_test_connect(sock_path);
    /* The model loads after llepd accepts connections. */
    int r = -EAGAIN;
    for (int i = 0; i < 1000 && r != 0; i++) {
        r = llep_model_get(c, "m", &mi);
        if (r != 0)
            sleep_ms(10);
    }
    ck_assert_msg(r == 0, "%s", llep_client_error(c));
    ck_assert_uint_ge(mi.num_layers, 2);
    ck_assert_uint_eq(mi.desc.dtype, LLEP_DTYPE_F32);
    layer ms = { .t.s = { mi.desc.num_experts, mi.desc.top_k, mi.desc.hidden,
                          mi.desc.inter } };
    llep_test_f32_weights w0, w1;
    llep_test_read_expected(dir, &mi, 0, &w0);
    llep_test_read_expected(dir, &mi, 1, &w1);
    llep_layer *m0 = NULL, *m1 = NULL;
    ck_assert_msg(llep_model_layer(c, "m", 0, &m0) == 0, "%s", llep_client_error(c));
    ck_assert_msg(llep_model_layer(c, "m", 1, &m1) == 0, "%s", llep_client_error(c));
    layer cl;
    layer_init(&cl, mi.desc.num_experts, mi.desc.top_k, mi.desc.hidden, mi.desc.inter, 31);
    llep_layer *ch = client_layer(c, "client", &cl);

    forward_exact(ch, &cl.t.w, &cl, 1, "client layer before");
    /* Whatever else computed on device 1 since llepd started, one of the next few steps is
     * the third that does: every step before it is exact, it fails and writes nothing. */
    for (int i = 0;; i++) {
        batch b;
        llep_test_batch_spread(&b, &ms.t, TOKENS, 0.0, 100 + (uint64_t)i);
        fill_sentinel(&b, ms.t.s.d);
        ck_assert_int_lt(i, 3);
        if (llep_forward(m0, b.tokens, b.x, b.idx, b.w, b.y) == 0) {
            assert_exact_w(&w0, ms.t.s, &b, "model layer 0 before");
            llep_test_batch_fini(&b);
            continue;
        }
        const char *msg = llep_client_error(c);
        ck_assert_msg(strstr(msg, "device 1 failed"), "'%s' does not name device 1", msg);
        assert_untouched(&b, ms.t.s.d, "the failing step");
        llep_test_batch_fini(&b);
        break;
    }

    /* llepctl devices: device 1 failed, served by a survivor. */
    llep_test_output out = ctl("devices", "--json");
    json_object *j = json_tokener_parse(out.out), *devs = llep_test_jget(j, "devices");
    ck_assert_uint_eq(json_object_array_length(devs), 4);
    json_object *d1 = json_object_array_get_idx(devs, 1);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(d1, "state")), "failed");
    uint32_t by = (uint32_t)json_object_get_int(llep_test_jget(d1, "served_by"));
    ck_assert_uint_ne(by, 1);
    ck_assert_uint_lt(by, 4);
    ck_assert_ptr_nonnull(strstr(json_object_get_string(llep_test_jget(d1, "failure")),
                                 "LLEP_TEST_FAIL_DEVICE"));
    ck_assert_str_eq(json_object_get_string(llep_test_jget(json_object_array_get_idx(devs, 0), "state")),
                     "ok");
    json_object_put(j);
    llep_test_output_free(&out);
    out = ctl("devices", NULL);
    char want[64];
    snprintf(want, sizeof(want), "served by device %u", by);
    ck_assert_msg(strstr(out.out, want), "llepctl devices does not say '%s':\n%s", want, out.out);
    llep_test_output_free(&out);

    /* The model layers come back from the checkpoint; the client layer's experts are gone. */
    forward_exact(m0, &w0, &ms, 4, "model layer 0 after");
    forward_exact(m1, &w1, &ms, 5, "model layer 1 after");
    for (int i = 0; i < 2; i++)
        forward_fails(ch, &cl, 6 + (uint64_t)i, "weights of this layer's experts 1..1 were "
                      "only there", "client layer after");
    forward_exact(m0, &w0, &ms, 8, "model layer 0 again");
    layer c2;
    layer_init(&c2, mi.desc.num_experts, mi.desc.top_k, mi.desc.hidden, mi.desc.inter, 32);
    llep_layer *ch2 = client_layer(c, "client-after", &c2);
    forward_exact(ch2, &c2.t.w, &c2, 9, "a client layer made after");

    /* Every block on the failed device was given back. */
    out = ctl("devices", "--json");
    j = json_tokener_parse(out.out);
    d1 = json_object_array_get_idx(llep_test_jget(j, "devices"), 1);
    ck_assert_int_eq(json_object_get_int64(llep_test_jget(d1, "memory_used")), 0);
    json_object_put(j);
    llep_test_output_free(&out);
    ck_assert(llep_test_file_contains(log_path, "device 1 failed"));

    /* The metrics say so too (curl, as tests/python/test_metrics.py scrapes). */
    char url[64];
    snprintf(url, sizeof(url), "http://%s/metrics", listen);
    const char *curl[] = { "/bin/sh", "-c", "exec curl -sf \"$0\"", url, NULL };
    llep_test_output m = llep_test_run(curl, NULL);
    ck_assert_msg(m.status == 0, "curl %s: %s", url, m.err);
    ck_assert_msg(strstr(m.out, "llep_device_up{device=\"cpu1\"} 0\n") &&
                  strstr(m.out, "llep_device_up{device=\"cpu0\"} 1\n") &&
                  strstr(m.out, "llep_device_failures_total 1\n"),
                  "the metrics do not show device 1 failed:\n%s", m.out);
    llep_test_output_free(&m);

    llep_layer_release(ch2);
    llep_layer_release(ch);
    llep_layer_release(m1);
    llep_layer_release(m0);
    llep_disconnect(c);
    free(w0.wg);
    free(w1.wg);
    llep_test_layer_fini(&cl.t);
    llep_test_layer_fini(&c2.t);
}
END_TEST

/* With keep-host-weights llepd keeps a host copy of client layers' weights: after the failed
 * step a client layer is exact again on the three devices left. */
START_TEST(test_llepd_kept_weights) {
    const char *args[] = { "--keep-host-weights", "yes", "--min-tokens", "1", NULL };
    const char *env[] = { "LLEP_TEST_FAIL_DEVICE=2@2", NULL };
    llep_test_llepd o = { .sock = sock_path, .devices = "4", .args = args, .env = env,
                          .log = log_path };
    llepd_pid = llep_test_llepd_start(&o);
    llep_client *c = llep_test_connect(sock_path);
    layer a, b;
    layer_init(&a, 8, 2, 16, 12, 51);
    layer_init(&b, 4, 2, 8, 6, 52);
    llep_layer *ha = client_layer(c, "a", &a), *hb = client_layer(c, "b", &b);

    forward_exact(ha, &a.t.w, &a, 1, "layer a before");
    forward_fails(hb, &b, 2, "device 2 failed", "the failing step");
    forward_exact(hb, &b.t.w, &b, 3, "layer b after");
    forward_exact(ha, &a.t.w, &a, 4, "layer a after");
    forward_exact(hb, &b.t.w, &b, 5, "layer b again");
    llep_test_output out = ctl("devices", NULL);
    ck_assert_msg(strstr(out.out, "served by device"), "%s", out.out);
    llep_test_output_free(&out);
    llep_layer_release(hb);
    llep_layer_release(ha);
    llep_disconnect(c);
    llep_test_layer_fini(&a.t);
    llep_test_layer_fini(&b.t);
}
END_TEST

/* ---- device spaces through llepd (issue 17) -------------------------------------------------- */

/* Where a client of the space tests keeps x and y: both in its device space (a memfd on the
 * CPU backend), y alone, or both in ordinary memory (through the arena). */
enum { IN_SPACE_XY, IN_SPACE_Y, IN_ARENA };

typedef struct space_client {
    llep_client *c;
    llep_layer *l;
    llep_space *s;
    int where;
    batch b;            /* x and the routing; y gets what the forward wrote, for the check */
    float *x, *y;       /* what the forward names: in the space, or b's */
    uint64_t ticket;
} space_client;

/* n clients of one layer `name` (weights of l): client i keeps x and y as IN_SPACE_XY, _Y,
 * _ARENA in turn (client 0 in its space). With n > 1 the layer is collective (group n), so
 * that one step takes one submission of each client. */
static void space_clients(space_client *sc, uint32_t n, const char *name, const layer *l) {
    llep_layer_desc d;
    size_t xb = (size_t)TOKENS * l->t.s.d * sizeof(float);

    memset(&d, 0, sizeof(d));
    d.num_experts = l->t.s.n;
    d.top_k = l->t.s.k;
    d.hidden = l->t.s.d;
    d.inter = l->t.s.h;
    d.dtype = LLEP_DTYPE_F32;
    d.act = LLEP_ACT_SWIGLU;
    d.group = n > 1 ? n : 0;
    for (uint32_t i = 0; i < n; i++) {
        memset(&sc[i], 0, sizeof(sc[i]));
        sc[i].where = (int)(i % 3);
        sc[i].c = llep_test_connect(sock_path);
        if (i == 0) {
            d.w_gate = l->t.w.wg;
            d.w_up = l->t.w.wu;
            d.w_down = l->t.w.wd;
            d.b_gate = l->t.w.bg;
            d.b_up = l->t.w.bu;
            d.b_down = l->t.w.bd;
        } else {
            d.w_gate = d.w_up = d.w_down = d.b_gate = d.b_up = d.b_down = NULL;
        }
        sc[i].l = llep_test_layer_create(sc[i].c, name, &d);
        if (sc[i].where == IN_ARENA)
            continue;
        int r = llep_space_alloc(sc[i].c, 2 * xb + 4096, -1, &sc[i].s);
        ck_assert_msg(r == 0, "llep_space_alloc: %s", llep_client_error(sc[i].c));
    }
}

static void space_clients_free(space_client *sc, uint32_t n) {
    for (uint32_t i = n; i-- > 0;) {
        if (sc[i].s)
            ck_assert_int_eq(llep_space_free(sc[i].s), 0);
        llep_layer_release(sc[i].l);
        llep_disconnect(sc[i].c);
    }
}

/* One forward of every client at once (one step): with fail_dev < UINT32_MAX each must fail
 * naming that device and leave y as it was, byte for byte, and x in the space as it was;
 * else each y must be exact against float64. */
static void space_round(space_client *sc, uint32_t n, const layer *l, uint64_t seed,
                        uint32_t fail_dev, const char *what) {
    size_t dn = (size_t)TOKENS * l->t.s.d, xb = dn * sizeof(float);
    float *sentinel = malloc(xb);

    ck_assert_ptr_nonnull(sentinel);
    for (size_t j = 0; j < dn; j++)
        sentinel[j] = SENTINEL;
    for (uint32_t i = 0; i < n; i++) {
        space_client *s = &sc[i];
        llep_test_batch_spread(&s->b, &l->t, TOKENS, 0.0, seed + i);
        s->x = s->b.x;
        s->y = s->b.y;
        if (s->where != IN_ARENA)
            s->y = (float *)((char *)llep_space_base(s->s) + xb + 4096);
        if (s->where == IN_SPACE_XY) {
            s->x = llep_space_base(s->s);
            memcpy(s->x, s->b.x, xb);
        }
        memcpy(s->y, sentinel, xb);
        int r = llep_submit(s->l, TOKENS, s->x, s->b.idx, s->b.w, s->y, &s->ticket);
        ck_assert_msg(r == 0, "%s: submit %u: %s", what, i, llep_client_error(s->c));
    }
    for (uint32_t i = 0; i < n; i++) {
        space_client *s = &sc[i];
        int r = llep_wait(s->c, s->ticket, -1);
        if (fail_dev == UINT32_MAX) {
            ck_assert_msg(r == 0, "%s: client %u: %s: %s", what, i, llep_strerror(r),
                          llep_client_error(s->c));
            if (s->y != s->b.y)
                memcpy(s->b.y, s->y, xb);
            assert_exact_w(&l->t.w, l->t.s, &s->b, what);
        } else {
            char says[32];
            snprintf(says, sizeof(says), "device %u failed", fail_dev);
            ck_assert_msg(r < 0, "%s: client %u: the forward succeeded", what, i);
            ck_assert_msg(strstr(llep_client_error(s->c), says), "%s: client %u: '%s' does "
                          "not say '%s'", what, i, llep_client_error(s->c), says);
            for (size_t j = 0; j < dn; j++)
                ck_assert_msg(memcmp(&s->y[j], &sentinel[j], sizeof(float)) == 0,
                              "%s: client %u (y %s): y[%zu] = %g was written by the failed "
                              "step", what, i, s->where == IN_ARENA ? "in the arena" :
                              "in its space", j, s->y[j]);
            ck_assert_msg(memcmp(s->x, s->b.x, xb) == 0, "%s: client %u: the failed step "
                          "changed x", what, i);
        }
        llep_test_batch_fini(&s->b);
    }
    free(sentinel);
}

/* Each case: llepd on 4 CPU devices, device 1 failing in its first step (in the expert work,
 * or with ":combine" in the combines, as a GPU whose context takes a sticky error there),
 * with 1, 3 (a home device each) or 6 clients (more than the devices: two share a home
 * device, staged by llepd). */
static const struct {
    const char *fail;
    uint32_t clients;
} space_cases[] = {
    { "1@1", 1 }, { "1@1", 3 }, { "1@1", 6 },
    { "1@1:combine", 1 }, { "1@1:combine", 3 }, { "1@1:combine", 6 },
};

/* A step that fails leaves y untouched in the clients' spaces and the arena alike, and x in
 * the spaces; later steps, on the three devices left, are exact with y in the spaces. */
START_TEST(test_llepd_space_failed_step) {
    const char *args[] = { "--keep-host-weights", "yes", "--min-tokens", "1", NULL };
    char env0[64];
    snprintf(env0, sizeof(env0), "LLEP_TEST_FAIL_DEVICE=%s", space_cases[_i].fail);
    const char *env[] = { env0, NULL };
    llep_test_llepd o = { .sock = sock_path, .devices = "4", .args = args, .env = env,
                          .log = log_path };
    uint32_t n = space_cases[_i].clients;
    space_client sc[6];
    layer l;
    char what[96];

    llepd_pid = llep_test_llepd_start(&o);
    layer_init(&l, 8, 2, 16, 12, 61 + (uint64_t)_i);
    space_clients(sc, n, "space", &l);
    snprintf(what, sizeof(what), "%s, %u client(s): the failing step", space_cases[_i].fail, n);
    space_round(sc, n, &l, 10, 1, what);
    for (int k = 0; k < 3; k++) {
        snprintf(what, sizeof(what), "%s, %u client(s): step %d after", space_cases[_i].fail, n,
                 k + 1);
        space_round(sc, n, &l, 20 + 10 * (uint64_t)k, UINT32_MAX, what);
    }
    llep_test_output out = ctl("devices", NULL);
    ck_assert_msg(strstr(out.out, "served by device"), "%s", out.out);
    llep_test_output_free(&out);
    space_clients_free(sc, n);
    llep_test_layer_fini(&l.t);
}
END_TEST

static Suite *failover_suite(void) {
    Suite *s = suite_create("failover");
    TCase *tc = tcase_create("engine");

    tcase_add_test(tc, test_engine_rehomes);
    tcase_add_test(tc, test_engine_combine_fails);
    tcase_add_test(tc, test_engine_lost_beside_others);
    tcase_add_test(tc, test_engine_reload_fails);
    tcase_add_test(tc, test_engine_reload_later);
    tcase_add_test(tc, test_engine_no_survivor);
    suite_add_tcase(s, tc);
    tc = tcase_create("llepd");
    tcase_set_timeout(tc, 120);
    tcase_add_unchecked_fixture(tc, llep_test_checkpoints_make, llep_test_checkpoints_remove);
    tcase_add_checked_fixture(tc, setup_llepd, teardown_llepd);
    tcase_add_test(tc, test_llepd_failover);
    tcase_add_test(tc, test_llepd_kept_weights);
    tcase_add_loop_test(tc, test_llepd_space_failed_step, 0,
                        (int)(sizeof(space_cases) / sizeof(space_cases[0])));
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(failover_suite(), CK_ENV);
}
