/* Devices shared by every layer (daemon/engine/devices.h, issue 13).
 *
 * In-process, on one llep_devices: the turn is granted first come, first served and the
 * try never waits or jumps the queue; two engines share one memory account, exact to the
 * byte, a layer that does not fit is refused with a sentence naming the device and the bytes
 * while the others keep serving, and steps of two engines from two threads at once are exact
 * against float64 (ref-moe.c).
 *
 * Against a private llepd ($LLEPD): its thread count does not grow with 60 layers; `llepctl
 * devices` shows budget, used and peak exact to the byte across layers; and a fast layer's
 * steps from one client never wait behind more than one step of a slow layer from another. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client-fixtures.h"
#include "devices.h"
#include "engine-fixtures.h"
#include "engine.h"
#include "fixtures.h"
#include "json-fixtures.h"
#include "llep/client.h"
#include "test-nodes.h"

/* ---- layers, batches and the reference (engine-fixtures.h) -------------------------------- */

typedef llep_test_shape shape;
typedef llep_test_layer layer;
typedef llep_test_batch batch;


/* Bytes of one expert on a device as the engine lays it out, from an engine of that shape. */
static uint64_t expert_bytes(const layer *l) {
    llep_engine_config cfg;
    llep_engine *e = NULL;
    char err[256] = "";

    llep_test_engine_config(&cfg, l, NULL, 1);
    cfg.threads = 1;
    ck_assert_msg(llep__engine_new(&cfg, &e, err, sizeof(err)) == 0, "%s", err);
    uint64_t b = llep__engine_expert_bytes(e);
    llep__engine_free(e);
    return b;
}

/* ---- in-process: the turn ------------------------------------------------------------------ */

static llep_devices *devices_new(uint32_t p, uint64_t budget) {
    llep_devices_config dc = { .num_devices = p, .budget = budget };
    llep_devices *dv = NULL;
    char err[256] = "";

    ck_assert_msg(llep__devices_new(&dc, &dv, err, sizeof(err)) == 0, "%s", err);
    return dv;
}

static void wait_waiting(llep_devices *dv, uint32_t n) {
    llep_devices_turns t;

    for (int i = 0; i < 5000; i++) {
        llep__devices_turn_figures(dv, &t);
        if (t.waiting == n)
            return;
        sleep_ms(1);
    }
    ck_abort_msg("never %u threads waiting for the turn (%u)", n, t.waiting);
}

typedef struct turn_arg {
    llep_devices *dv;
    atomic_int *seq;
    int got;            /* order in which this thread got the turn */
    bool tried;         /* try_turn instead of waiting */
    bool try_ok;
    uint64_t place;     /* a reserved place to wait for, or 0 */
} turn_arg;

static void *turn_waiter(void *p) {
    turn_arg *a = p;

    if (a->tried) {
        a->try_ok = llep__devices_turn_try(a->dv);
        if (a->try_ok)
            llep__devices_turn_end(a->dv);
        return NULL;
    }
    if (a->place)
        llep__devices_turn_wait_reserved(a->dv, a->place);
    else
        llep__devices_turn_wait(a->dv);
    a->got = atomic_fetch_add(a->seq, 1);
    ck_assert(llep__devices_turn_held(a->dv));
    llep__devices_turn_end(a->dv);
    return NULL;
}

/* The holder's thread may take the turn again (try and wait); others waiting get it in the
 * order they asked; a try from elsewhere fails while anyone holds or waits, and succeeds once
 * nobody does. */
START_TEST(test_turn_fifo) {
    llep_devices *dv = devices_new(2, 0);
    atomic_int seq = 0;
    turn_arg a[3] = { { dv, &seq, -1, false, false, 0 }, { dv, &seq, -1, false, false, 0 },
                      { dv, &seq, -1, true, false, 0 } };
    pthread_t t[3];

    llep__devices_turn_wait(dv);
    ck_assert(llep__devices_turn_try(dv));
    llep__devices_turn_wait(dv);
    llep__devices_turn_end(dv);
    llep__devices_turn_end(dv);
    ck_assert(llep__devices_turn_held(dv));
    ck_assert_int_eq(pthread_create(&t[0], NULL, turn_waiter, &a[0]), 0);
    wait_waiting(dv, 1);
    ck_assert_int_eq(pthread_create(&t[1], NULL, turn_waiter, &a[1]), 0);
    wait_waiting(dv, 2);
    ck_assert_int_eq(pthread_create(&t[2], NULL, turn_waiter, &a[2]), 0);
    ck_assert_int_eq(pthread_join(t[2], NULL), 0);
    ck_assert(!a[2].try_ok);
    llep__devices_turn_end(dv);
    ck_assert(!llep__devices_turn_held(dv));
    ck_assert_int_eq(pthread_join(t[0], NULL), 0);
    ck_assert_int_eq(pthread_join(t[1], NULL), 0);
    ck_assert_int_eq(a[0].got, 0);
    ck_assert_int_eq(a[1].got, 1);
    a[2].try_ok = false;
    ck_assert_int_eq(pthread_create(&t[2], NULL, turn_waiter, &a[2]), 0);
    ck_assert_int_eq(pthread_join(t[2], NULL), 0);
    ck_assert(a[2].try_ok);
    llep_devices_turns tf;
    llep__devices_turn_figures(dv, &tf);
    ck_assert_uint_eq(tf.granted, 4);
    ck_assert_uint_eq(tf.waiting, 0);
    llep__devices_free(dv);
}
END_TEST

/* Reserved places go in the order they were taken, whenever their threads come; a thread
 * without one does not wait for a place whose thread has not come; a try fails while a place
 * is reserved; a place given back frees the queue. */
START_TEST(test_turn_reserved) {
    llep_devices *dv = devices_new(2, 0);
    atomic_int seq = 0;
    llep_devices_turns tf;

    uint64_t r1 = llep__devices_reserve(dv);
    ck_assert_uint_ne(r1, 0);
    ck_assert(!llep__devices_turn_try(dv));
    llep__devices_turn_wait(dv); /* r1's thread has not come: no waiting for it */
    llep__devices_turn_end(dv);
    llep__devices_unreserve(dv, r1);
    ck_assert(llep__devices_turn_try(dv)); /* holds the turn from here */

    uint64_t r2 = llep__devices_reserve(dv), r3 = llep__devices_reserve(dv);
    turn_arg a[2] = { { dv, &seq, -1, false, false, r2 }, { dv, &seq, -1, false, false, r3 } };
    pthread_t t[2];
    ck_assert_int_eq(pthread_create(&t[1], NULL, turn_waiter, &a[1]), 0);
    wait_waiting(dv, 1);
    llep__devices_turn_end(dv); /* r3's thread waits, r2's has not come: nobody may go */
    sleep_ms(20);
    ck_assert_int_eq(atomic_load(&seq), 0);
    llep__devices_turn_figures(dv, &tf);
    ck_assert_uint_eq(tf.waiting, 1);
    ck_assert_uint_eq(tf.reserved, 1);
    ck_assert(!llep__devices_turn_try(dv));
    ck_assert_int_eq(pthread_create(&t[0], NULL, turn_waiter, &a[0]), 0);
    ck_assert_int_eq(pthread_join(t[0], NULL), 0);
    ck_assert_int_eq(pthread_join(t[1], NULL), 0);
    ck_assert_int_eq(a[0].got, 0);
    ck_assert_int_eq(a[1].got, 1);

    /* A place given back while its successor waits lets the successor go. */
    uint64_t r4 = llep__devices_reserve(dv), r5 = llep__devices_reserve(dv);
    turn_arg b = { dv, &seq, -1, false, false, r5 };
    ck_assert_int_eq(pthread_create(&t[0], NULL, turn_waiter, &b), 0);
    wait_waiting(dv, 1);
    llep__devices_unreserve(dv, r4);
    ck_assert_int_eq(pthread_join(t[0], NULL), 0);
    ck_assert_int_eq(b.got, 2);
    llep__devices_turn_figures(dv, &tf);
    ck_assert_uint_eq(tf.waiting + tf.reserved, 0);
    ck_assert(llep__devices_turn_try(dv));
    llep__devices_turn_end(dv);
    llep__devices_free(dv);
}
END_TEST

/* ---- in-process: one account for two engines ---------------------------------------------- */

static llep_engine *engine_on(llep_devices *dv, const layer *l, int *ret_r, char *err,
                              size_t errlen) {
    llep_engine_config cfg;
    llep_engine *e = NULL;

    llep_test_engine_config(&cfg, l, dv, 0);
    *ret_r = llep__engine_new(&cfg, &e, err, errlen);
    return e;
}

static llep_engine *engine_ok(llep_devices *dv, const layer *l) {
    char err[256] = "";
    int r;
    llep_engine *e = engine_on(dv, l, &r, err, sizeof(err));

    ck_assert_msg(r == 0, "%s", err);
    return e;
}

static void figures(llep_devices *dv, uint32_t d, llep_device_figures *f) {
    llep__devices_figures(dv, d, f);
}

/* Two layers' weights on one budget: used and held are their native bytes exactly, a step's
 * peak is the other layer's weights plus the step's own peak, a third layer that does not fit
 * is refused naming the device and the bytes and leaves the account as it was, and both
 * layers keep stepping exactly; freeing one gives its bytes back. */
START_TEST(test_shared_account) {
    const uint32_t p = 4;
    layer a, b, big;
    llep_test_layer_init(&a, (shape){ 8, 2, 32, 48 }, 0xa1);
    llep_test_layer_init(&b, (shape){ 16, 4, 24, 16 }, 0xb2);
    llep_test_layer_init(&big, (shape){ 8, 2, 128, 256 }, 0xc3);
    uint64_t ha = expert_bytes(&a) * (a.s.n / p), hb = expert_bytes(&b) * (b.s.n / p);
    uint64_t hbig = expert_bytes(&big) * (big.s.n / p);
    uint64_t budget = ha + hb + hbig / 2;
    llep_devices *dv = devices_new(p, budget);
    llep_engine *ea = engine_ok(dv, &a), *eb = engine_ok(dv, &b);
    llep_device_figures f;

    for (uint32_t d = 0; d < p; d++) {
        figures(dv, d, &f);
        ck_assert_uint_eq(f.used, ha + hb);
        ck_assert_uint_eq(f.held, ha + hb);
        ck_assert_uint_eq(f.peak, ha + hb);
        ck_assert_uint_eq(f.budget, budget);
        ck_assert_uint_eq(f.free, budget - ha - hb);
    }

    char err[256] = "", want[128];
    int r;
    ck_assert_ptr_null(engine_on(dv, &big, &r, err, sizeof(err)));
    ck_assert_int_eq(r, -ENOMEM);
    snprintf(want, sizeof(want), "device 0: the native weights need %" PRIu64 " bytes, %" PRIu64
             " of its budget of %" PRIu64 " bytes are free", hbig, budget - ha - hb, budget);
    ck_assert_msg(strstr(err, want), "message: %s", err);
    for (uint32_t d = 0; d < p; d++) {
        figures(dv, d, &f);
        ck_assert_uint_eq(f.used, ha + hb);
    }

    batch ba, bb;
    llep_test_batch_init(&ba, &a, 64, 0.7, 1);
    llep_test_batch_init(&bb, &b, 40, 0.5, 2);
    llep_engine_stats st;
    ck_assert_int_eq(llep_test_engine_step(ea, p, &a, &ba, &st), 0);
    llep_test_assert_exact(&a, &ba, "layer a");
    for (uint32_t d = 0; d < p; d++) {
        figures(dv, d, &f);
        ck_assert_uint_eq(st.devices[d].held_bytes, ha);
        ck_assert_uint_eq(st.devices[d].budget_bytes, budget);
        ck_assert_uint_eq(f.used, ha + hb);
        ck_assert_uint_eq(f.peak, hb + st.devices[d].peak_bytes);
    }
    uint64_t peak_a[4];
    for (uint32_t d = 0; d < p; d++)
        peak_a[d] = st.devices[d].peak_bytes;
    ck_assert_int_eq(llep_test_engine_step(eb, p, &b, &bb, &st), 0);
    llep_test_assert_exact(&b, &bb, "layer b");
    for (uint32_t d = 0; d < p; d++) {
        figures(dv, d, &f);
        uint64_t pa = hb + peak_a[d], pb = ha + st.devices[d].peak_bytes;
        ck_assert_uint_eq(f.peak, pa > pb ? pa : pb);
    }

    llep__engine_free(eb);
    for (uint32_t d = 0; d < p; d++) {
        figures(dv, d, &f);
        ck_assert_uint_eq(f.used, ha);
        ck_assert_uint_eq(f.held, ha);
    }
    memset(ba.y, 0, (size_t)ba.tokens * a.s.d * sizeof(float));
    ck_assert_int_eq(llep_test_engine_step(ea, p, &a, &ba, NULL), 0);
    llep_test_assert_exact(&a, &ba, "layer a after b was freed");

    llep_test_batch_fini(&ba);
    llep_test_batch_fini(&bb);
    llep__engine_free(ea);
    for (uint32_t d = 0; d < p; d++) {
        figures(dv, d, &f);
        ck_assert_uint_eq(f.used, 0);
    }
    llep__devices_free(dv);
    llep_test_layer_fini(&a);
    llep_test_layer_fini(&b);
    llep_test_layer_fini(&big);
}
END_TEST

/* A step that does not fit beside the other layer's weights fails with -ENOMEM, saying so,
 * and writes nothing; with the other layer gone the same step runs. The budget is what the
 * step took alone (its peak) plus the other layer's weights, less one byte. */
START_TEST(test_step_refused) {
    const uint32_t p = 2;
    layer a, b;
    llep_test_layer_init(&a, (shape){ 4, 2, 64, 64 }, 0xd4);
    llep_test_layer_init(&b, (shape){ 4, 2, 64, 64 }, 0xe5);
    uint64_t hb = expert_bytes(&b) * 2;
    llep_devices *dv = devices_new(p, 0);
    llep_engine *ea = engine_ok(dv, &a);
    batch ba;
    llep_test_batch_init(&ba, &a, 200, 0.95, 3);
    llep_plan_params pp;
    llep__plan_params_default(&pp);
    pp.policy = LLEP_POLICY_LLEP;
    pp.min_tokens = 1;
    llep_engine_batch hb2[2] = {
        { .tokens = 100, .x = ba.x, .topk_idx = ba.idx, .topk_w = ba.w, .y = ba.y },
        { .tokens = 100, .x = ba.x + 100 * a.s.d, .topk_idx = ba.idx + 200,
          .topk_w = ba.w + 200, .y = ba.y + 100 * a.s.d },
    };
    llep_engine_stats st;
    ck_assert_msg(llep__engine_step(ea, hb2, &pp, &st) == 0, "%s", llep__engine_error(ea));
    ck_assert_int_eq(st.mode, LLEP_PLAN_LLEP);
    uint64_t peak = 0;
    for (uint32_t d = 0; d < p; d++)
        peak = st.devices[d].peak_bytes > peak ? st.devices[d].peak_bytes : peak;
    char err[256] = "";
    for (uint32_t d = 0; d < p; d++)
        ck_assert_msg(llep__devices_set_budget(dv, d, peak + hb - 1, err, sizeof(err)) == 0,
                      "%s", err);
    llep_engine *eb = engine_ok(dv, &b);

    for (size_t i = 0; i < (size_t)ba.tokens * a.s.d; i++)
        ba.y[i] = 7.0f;
    ck_assert_int_eq(llep__engine_step(ea, hb2, &pp, NULL), -ENOMEM);
    const char *msg = llep__engine_error(ea);
    ck_assert_msg(strstr(msg, "device ") && strstr(msg, "of its budget of") &&
                  strstr(msg, "are free"), "message: %s", msg);
    for (size_t i = 0; i < (size_t)ba.tokens * a.s.d; i++)
        ck_assert(ba.y[i] == 7.0f);
    llep__engine_free(eb);
    ck_assert_msg(llep__engine_step(ea, hb2, &pp, NULL) == 0, "%s", llep__engine_error(ea));
    llep_test_assert_exact(&a, &ba, "after the other layer went");
    llep_test_batch_fini(&ba);
    llep__engine_free(ea);
    llep__devices_free(dv);
    llep_test_layer_fini(&a);
    llep_test_layer_fini(&b);
}
END_TEST

typedef struct stepper {
    llep_engine *e;
    const layer *l;
    batch *b;       /* [n] */
    uint32_t n, p;
    int r;
} stepper;

static void *stepper_main(void *arg) {
    stepper *s = arg;

    for (uint32_t i = 0; i < s->n && s->r == 0; i++)
        s->r = llep_test_engine_step(s->e, s->p, s->l, &s->b[i], NULL);
    return NULL;
}

/* Two threads step two engines on the same devices at once: every output exact, nothing left
 * charged but the weights, and every step had a turn of its own. */
START_TEST(test_concurrent_steps) {
    const uint32_t p = 4, n = 12;
    layer a, b;
    llep_test_layer_init(&a, (shape){ 8, 2, 48, 64 }, 0xf6);
    llep_test_layer_init(&b, (shape){ 8, 3, 32, 32 }, 0x17);
    llep_devices *dv = devices_new(p, 0);
    llep_engine *ea = engine_ok(dv, &a), *eb = engine_ok(dv, &b);
    batch xa[12], xb[12];
    for (uint32_t i = 0; i < n; i++) {
        llep_test_batch_init(&xa[i], &a, 96 + 8 * i, 0.8, 100 + i);
        llep_test_batch_init(&xb[i], &b, 8 + i, 0.3, 200 + i);
    }
    llep_devices_turns t0, t1;
    llep__devices_turn_figures(dv, &t0);
    stepper sa = { ea, &a, xa, n, p, 0 }, sb = { eb, &b, xb, n, p, 0 };
    pthread_t ta, tb;
    ck_assert_int_eq(pthread_create(&ta, NULL, stepper_main, &sa), 0);
    ck_assert_int_eq(pthread_create(&tb, NULL, stepper_main, &sb), 0);
    ck_assert_int_eq(pthread_join(ta, NULL), 0);
    ck_assert_int_eq(pthread_join(tb, NULL), 0);
    ck_assert_msg(sa.r == 0, "%s", llep__engine_error(ea));
    ck_assert_msg(sb.r == 0, "%s", llep__engine_error(eb));
    llep__devices_turn_figures(dv, &t1);
    ck_assert_uint_eq(t1.granted - t0.granted, 2 * n);
    for (uint32_t i = 0; i < n; i++) {
        llep_test_assert_exact(&a, &xa[i], "layer a");
        llep_test_assert_exact(&b, &xb[i], "layer b");
        llep_test_batch_fini(&xa[i]);
        llep_test_batch_fini(&xb[i]);
    }
    llep_device_figures f;
    uint64_t held = expert_bytes(&a) * 2 + expert_bytes(&b) * 2;
    for (uint32_t d = 0; d < p; d++) {
        figures(dv, d, &f);
        ck_assert_uint_eq(f.used, held);
        ck_assert_uint_eq(f.budget, held + LLEP_DEVICES_DEFAULT_TOKEN_BUDGET);
    }
    llep__engine_free(ea);
    llep__engine_free(eb);
    llep__devices_free(dv);
    llep_test_layer_fini(&a);
    llep_test_layer_fini(&b);
}
END_TEST

/* ---- against llepd -------------------------------------------------------------------------- */

static char tmpdir[64], sock_path[128], llepctl[PATH_MAX];
static pid_t llepd_pid = -1;

/* llepd's --replica-cache for the test (its default, auto, unless a test says otherwise). */
static const char *replica_cache = "auto";

static void llepd_up(const char *devices, const char *device_memory) {
    const char *args[] = { "--device-memory", device_memory, "--min-tokens", "1",
                           "--replica-cache", replica_cache, NULL };
    const char *args_nomem[] = { "--min-tokens", "1", "--replica-cache", replica_cache, NULL };
    llep_test_llepd o = { .sock = sock_path, .devices = devices,
                          .args = device_memory ? args : args_nomem };

    llepd_pid = llep_test_llepd_start(&o);
}

static void setup_llepd(void) {
    llep_test_tmpdir(tmpdir, sizeof(tmpdir), "test-devices");
    snprintf(sock_path, sizeof(sock_path), "%s/llepd.sock", tmpdir);
    llep_test_llepctl(llepctl, sizeof(llepctl));
}

static void teardown_llepd(void) {
    ck_assert_int_eq(llep_test_stop(&llepd_pid, 10000), 0);
    llep_test_rm_rf(tmpdir);
}

static int count_threads(pid_t pid) {
    char path[64];

    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    return llep_test_dir_entries(path);
}

static void desc_of(const layer *l, llep_layer_desc *d) {
    memset(d, 0, sizeof(*d));
    d->num_experts = l->s.n;
    d->top_k = l->s.k;
    d->hidden = l->s.d;
    d->inter = l->s.h;
    d->dtype = LLEP_DTYPE_F32;
    d->act = LLEP_ACT_SWIGLU;
    d->w_gate = l->w.wg;
    d->w_up = l->w.wu;
    d->w_down = l->w.wd;
    d->b_gate = l->w.bg;
    d->b_up = l->w.bu;
    d->b_down = l->w.bd;
}

static llep_layer *create_ok(llep_client *c, const char *name, const layer *l) {
    llep_layer_desc d;

    desc_of(l, &d);
    return llep_test_layer_create(c, name, &d);
}

static void forward_ok(llep_layer *h, batch *b) {
    int r = llep_forward(h, b->tokens, b->x, b->idx, b->w, b->y);

    ck_assert_msg(r == 0, "llep_forward: %s: %s", llep_strerror(r),
                  llep_client_error(llep_layer_client(h)));
}

/* `llepctl --json VERB`, parsed. */
static json_object *ctl_json(const char *verb) {
    const char *argv[] = { llepctl, "--socket", sock_path, "--json", verb, NULL };
    return llep_test_run_json(argv);
}

static uint64_t ju64(json_object *o, const char *key) {
    return (uint64_t)json_object_get_int64(llep_test_jget(o, key));
}

/* The thread count of llepd: with 60 layers it is what it was with one, at most the devices'
 * workers and a few more (the loop, libuv's pool), not one pool of workers per layer. */
START_TEST(test_threads_60_layers) {
    layer l;
    llep_test_layer_init(&l, (shape){ 8, 2, 16, 16 }, 0x60);
    llepd_up("8", NULL);
    llep_client *c = llep_test_connect(sock_path);
    llep_layer *h[60];
    char name[32];

    int before = count_threads(llepd_pid);
    h[0] = create_ok(c, "layer-0", &l);
    int one = count_threads(llepd_pid);
    for (int i = 1; i < 60; i++) {
        snprintf(name, sizeof(name), "layer-%d", i);
        h[i] = create_ok(c, name, &l);
    }
    batch b;
    llep_test_batch_init(&b, &l, 40, 0.5, 9);
    for (int i = 0; i < 60; i += 7) {
        memset(b.y, 0, (size_t)b.tokens * l.s.d * sizeof(float));
        forward_ok(h[i], &b);
        llep_test_assert_exact(&l, &b, "one of 60 layers");
    }
    int sixty = count_threads(llepd_pid);
    fprintf(stderr, "llepd threads with 8 devices: %d at start, %d with 1 layer, %d with 60 "
            "layers\n", before, one, sixty);
    ck_assert_int_le(sixty, 8 + 8);
    ck_assert_int_le(sixty, one + 1);
    json_object *dev = ctl_json("devices");
    uint64_t held = expert_bytes(&l) * 60;
    for (size_t d = 0; d < 8; d++) {
        json_object *v = json_object_array_get_idx(llep_test_jget(dev, "devices"), d);
        ck_assert_uint_eq(ju64(v, "memory_used") - ju64(v, "cache_bytes"), held);
    }
    json_object_put(dev);
    llep_test_batch_fini(&b);
    for (int i = 0; i < 60; i++)
        llep_layer_release(h[i]);
    llep_disconnect(c);
    llep_test_layer_fini(&l);
}
END_TEST

/* Budget, used and peak of `llepctl devices`, to the byte: used is every layer's weights, the
 * peak after a step of one layer is the other layers' weights plus that step's own peak (its
 * layer's device_peak_memory in `llepctl stats`). A layer that does not fit is refused with
 * the device and the bytes named, and the others go on, exact. */
START_TEST(test_devices_exact) {
    const uint32_t p = 4;
    layer a, b, big;
    llep_test_layer_init(&a, (shape){ 8, 2, 32, 48 }, 0x71);
    llep_test_layer_init(&b, (shape){ 16, 4, 24, 16 }, 0x72);
    llep_test_layer_init(&big, (shape){ 8, 2, 512, 640 }, 0x73);
    uint64_t ha = expert_bytes(&a) * (a.s.n / p), hb = expert_bytes(&b) * (b.s.n / p);
    uint64_t budget = 4u << 20;
    ck_assert_uint_gt(expert_bytes(&big) * 2, budget);
    /* The account to the byte, steps' buffers and weights only: no copies kept between steps
     * (test-replica-cache.c checks the account with them). */
    replica_cache = "off";
    char mem[32];
    snprintf(mem, sizeof(mem), "%" PRIu64, budget);
    llepd_up("4", mem);
    llep_client *c = llep_test_connect(sock_path);
    llep_layer *la = create_ok(c, "a", &a), *lb = create_ok(c, "b", &b);

    json_object *dev = ctl_json("devices");
    for (uint32_t d = 0; d < p; d++) {
        json_object *v = json_object_array_get_idx(llep_test_jget(dev, "devices"), d);
        ck_assert_uint_eq(ju64(v, "memory_budget"), budget);
        ck_assert_uint_eq(ju64(v, "memory_used"), ha + hb);
        ck_assert_uint_eq(ju64(v, "memory_peak"), ha + hb);
    }
    json_object_put(dev);

    batch ba, bb;
    llep_test_batch_init(&ba, &a, 120, 0.8, 11);
    llep_test_batch_init(&bb, &b, 60, 0.4, 12);
    forward_ok(la, &ba);
    llep_test_assert_exact(&a, &ba, "layer a");
    json_object *stats = ctl_json("stats");
    json_object *sa = json_object_array_get_idx(llep_test_jget(stats, "layers"), 0);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(sa, "name")), "a");
    uint64_t peak_a[4];
    dev = ctl_json("devices");
    for (uint32_t d = 0; d < p; d++) {
        peak_a[d] = (uint64_t)json_object_get_int64(
            json_object_array_get_idx(llep_test_jget(sa, "device_peak_memory"), d));
        json_object *v = json_object_array_get_idx(llep_test_jget(dev, "devices"), d);
        ck_assert_uint_eq(ju64(v, "memory_used"), ha + hb);
        ck_assert_uint_eq(ju64(v, "memory_peak"), hb + peak_a[d]);
        ck_assert_uint_eq((uint64_t)json_object_get_int64(
                              json_object_array_get_idx(llep_test_jget(stats, "device_peak_memory"), d)),
                          hb + peak_a[d]);
    }
    json_object_put(stats);
    json_object_put(dev);

    llep_layer_desc d;
    llep_layer *lbig = NULL;
    desc_of(&big, &d);
    ck_assert_int_eq(llep_layer_create(c, "big", &d, &lbig), -ENOMEM);
    const char *msg = llep_client_error(c);
    ck_assert_msg(strstr(msg, "device 0: the native weights need") && strstr(msg, "budget of") &&
                  strstr(msg, "are free"), "message: %s", msg);

    forward_ok(lb, &bb);
    llep_test_assert_exact(&b, &bb, "layer b");
    memset(ba.y, 0, (size_t)ba.tokens * a.s.d * sizeof(float));
    forward_ok(la, &ba);
    llep_test_assert_exact(&a, &ba, "layer a again");
    stats = ctl_json("stats");
    dev = ctl_json("devices");
    json_object *sb = json_object_array_get_idx(llep_test_jget(stats, "layers"), 1);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(sb, "name")), "b");
    for (uint32_t k = 0; k < p; k++) {
        uint64_t pb = (uint64_t)json_object_get_int64(
            json_object_array_get_idx(llep_test_jget(sb, "device_peak_memory"), k));
        json_object *v = json_object_array_get_idx(llep_test_jget(dev, "devices"), k);
        uint64_t want = hb + peak_a[k] > ha + pb ? hb + peak_a[k] : ha + pb;
        ck_assert_uint_eq(ju64(v, "memory_used"), ha + hb);
        ck_assert_uint_eq(ju64(v, "memory_peak"), want);
    }
    json_object_put(stats);
    json_object_put(dev);

    llep_layer_release(lb);
    llep_disconnect(c);
    llep_test_batch_fini(&ba);
    llep_test_batch_fini(&bb);
    llep_test_layer_fini(&a);
    llep_test_layer_fini(&b);
    llep_test_layer_fini(&big);
}
END_TEST

/* ---- fairness -------------------------------------------------------------------------------- */

typedef struct fair {
    layer slow, fast;
    atomic_uint slow_started, slow_done;
    atomic_bool stop;
    uint32_t slow_steps;
    int slow_r;
    double slow_err;
} fair;

static void *slow_client(void *arg) {
    fair *f = arg;
    llep_client *c = llep_test_connect(sock_path);
    llep_layer *h = create_ok(c, "slow", &f->slow);
    batch b;

    llep_test_batch_init(&b, &f->slow, 512, 0.6, 21);
    while (!atomic_load(&f->stop) && f->slow_r == 0) {
        atomic_fetch_add(&f->slow_started, 1);
        f->slow_r = llep_forward(h, b.tokens, b.x, b.idx, b.w, b.y);
        atomic_fetch_add(&f->slow_done, 1);
        f->slow_steps++;
    }
    /* The same batch every step: the last output stands for all of them. */
    f->slow_err = llep_test_batch_error(&f->slow, &b);
    llep_test_batch_fini(&b);
    llep_layer_release(h);
    llep_disconnect(c);
    return NULL;
}

/* A slow layer (512-token steps) and a fast one (8 and 24 tokens) stepped together by two
 * clients, both exact. Each fast step waits behind at most one slow step: every slow step
 * that has ended when a fast step returns had started before the fast step was in its ring
 * (the slow client submits one step at a time, so at most one of those had not ended), i.e.
 * no slow step submitted later ran first. */
START_TEST(test_fair_interleaving) {
    fair *f = calloc(1, sizeof(*f));
    ck_assert_ptr_nonnull(f);
    llep_test_layer_init(&f->slow, (shape){ 8, 2, 256, 512 }, 0x81);
    llep_test_layer_init(&f->fast, (shape){ 8, 2, 32, 32 }, 0x82);
    llepd_up("4", NULL);
    llep_client *c = llep_test_connect(sock_path);
    llep_layer *h = create_ok(c, "fast", &f->fast);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, slow_client, f), 0);
    while (atomic_load(&f->slow_done) < 2)
        sleep_ms(1);

    const uint32_t nfast = 40;
    uint32_t worst = 0, waited = 0;
    for (uint32_t i = 0; i < nfast; i++) {
        batch b;
        llep_test_batch_init(&b, &f->fast, i % 2 ? 24 : 8, 0.5, 300 + i);
        /* Counted once the submission is in the ring: a slow step started later reached the
         * daemon after it. */
        unsigned done0 = atomic_load(&f->slow_done);
        uint64_t ticket;
        int r = llep_submit(h, b.tokens, b.x, b.idx, b.w, b.y, &ticket);
        ck_assert_msg(r == 0, "llep_submit: %s", llep_strerror(r));
        unsigned started0 = atomic_load(&f->slow_started);
        r = llep_wait(c, ticket, -1);
        ck_assert_msg(r == 0, "llep_wait: %s: %s", llep_strerror(r), llep_client_error(c));
        unsigned done1 = atomic_load(&f->slow_done);
        ck_assert_msg(done1 <= started0, "fast step %u: %u slow steps had started when it was "
                      "submitted, %u had ended when it returned", i, started0, done1);
        worst = done1 - done0 > worst ? done1 - done0 : worst;
        waited += done1 > done0;
        llep_test_assert_exact(&f->fast, &b, "fast layer");
        llep_test_batch_fini(&b);
    }
    atomic_store(&f->stop, true);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_msg(f->slow_r == 0, "slow layer: %s", llep_strerror(f->slow_r));
    ck_assert_msg(f->slow_err <= 1e-5, "slow layer: relative L2 error %g", f->slow_err);
    fprintf(stderr, "fairness: %u slow steps, %u fast steps, %u of them saw a slow step end, "
            "at most %u\n", f->slow_steps, nfast, waited, worst);

    json_object *stats = ctl_json("stats");
    json_object *ls = llep_test_jget(stats, "layers");
    for (size_t i = 0; i < json_object_array_length(ls); i++) {
        json_object *l = json_object_array_get_idx(ls, i);
        const char *name = json_object_get_string(llep_test_jget(l, "name"));
        if (strcmp(name, "fast") == 0)
            ck_assert_uint_eq(ju64(l, "steps"), nfast);
    }
    json_object_put(stats);
    llep_layer_release(h);
    llep_disconnect(c);
    llep_test_layer_fini(&f->slow);
    llep_test_layer_fini(&f->fast);
    free(f);
}
END_TEST

/* ---- a cluster layer beside a busy node-scope layer ----------------------------------------- */

static char nodes_dir[64], nodes_ctl[PATH_MAX], nodes_peers[256];
static uint16_t nodes_ports[2];
static pid_t nodes_pids[2];
static const llep_test_nodes nodes = { 2, nodes_dir, sizeof(nodes_dir), nodes_ctl,
                                       sizeof(nodes_ctl), nodes_peers, sizeof(nodes_peers),
                                       nodes_ports, nodes_pids };

static void setup_nodes(void) {
    llep_test_nodes_setup(&nodes, "test-devices-nodes");
}

static void teardown_nodes(void) {
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(llep_test_stop(&nodes_pids[i], 10000), 0);
    llep_test_nodes_teardown(&nodes);
}

static llep_client *node_connect(int node) {
    char sock[128];
    llep_client *c = NULL;

    llep_test_node_sock(&nodes, node, sock, sizeof(sock));
    for (int i = 0; i < 2000; i++) {
        if (llep_connect(sock, &c) == 0)
            return c;
        sleep_ms(10);
    }
    ck_abort_msg("node %d: cannot connect", node);
    return NULL;
}

/* Creates (weights) or attaches (none) the cluster layer, once every node is up. */
static llep_layer *cluster_layer(llep_client *c, const layer *l, bool create) {
    llep_layer_desc d;
    llep_layer *h = NULL;
    int r = -1;

    desc_of(l, &d);
    d.scope = LLEP_SCOPE_CLUSTER;
    d.policy = LLEP_POLICY_LLEP;
    d.min_tokens = 1;
    if (!create)
        d.w_gate = d.w_up = d.w_down = d.b_gate = d.b_up = d.b_down = NULL;
    for (int i = 0; i < 500 && r != 0; i++) {
        r = llep_layer_create(c, "cl", &d, &h);
        if (r != 0)
            sleep_ms(20); /* peers not up yet, or the layer not there yet */
    }
    ck_assert_msg(r == 0, "cluster layer: %s: %s", llep_strerror(r), llep_client_error(c));
    return h;
}

typedef struct cl_forward {
    llep_layer *h;
    batch *b;
    int r;
} cl_forward;

static void *cl_forward_main(void *arg) {
    cl_forward *f = arg;

    f->r = llep_forward(f->h, f->b->tokens, f->b->x, f->b->idx, f->b->w, f->b->y);
    return NULL;
}

/* While a slow node-scope layer keeps node 0's devices busy, a cluster layer over both nodes
 * steps: its prepare, compute and combine take their turns on node 0's devices (on the pool
 * when the turn is taken) and every step of both layers is exact. */
START_TEST(test_cluster_beside) {
    fair *f = calloc(1, sizeof(*f));
    ck_assert_ptr_nonnull(f);
    llep_test_layer_init(&f->slow, (shape){ 8, 2, 256, 512 }, 0x91);
    layer cl;
    llep_test_layer_init(&cl, (shape){ 8, 2, 16, 16 }, 0x92);
    const char *args[] = { "--peer-heartbeat-ms", "100", "--peer-timeout-ms", "1000", NULL };
    for (int i = 0; i < 2; i++)
        llep_test_node_spawn(&nodes, i, "2", nodes_peers, args, NULL);
    llep_client *c0 = node_connect(0), *c1 = node_connect(1);
    llep_layer *h0 = cluster_layer(c0, &cl, true), *h1 = cluster_layer(c1, &cl, false);

    char sock[128];
    llep_test_node_sock(&nodes, 0, sock, sizeof(sock));
    snprintf(sock_path, sizeof(sock_path), "%s", sock); /* the slow client's daemon */
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, slow_client, f), 0);
    while (atomic_load(&f->slow_done) < 1)
        sleep_ms(1);
    for (uint32_t i = 0; i < 12; i++) {
        batch b[2];
        cl_forward fw[2];
        pthread_t th[2];
        for (int n = 0; n < 2; n++) {
            llep_test_batch_init(&b[n], &cl, 40 + 10 * n, 0.7, 500 + 2 * i + n);
            fw[n] = (cl_forward){ n ? h1 : h0, &b[n], 0 };
            ck_assert_int_eq(pthread_create(&th[n], NULL, cl_forward_main, &fw[n]), 0);
        }
        for (int n = 0; n < 2; n++) {
            ck_assert_int_eq(pthread_join(th[n], NULL), 0);
            ck_assert_msg(fw[n].r == 0, "node %d: %s: %s", n, llep_strerror(fw[n].r),
                          llep_client_error(n ? c1 : c0));
            llep_test_assert_exact(&cl, &b[n], "cluster layer");
            llep_test_batch_fini(&b[n]);
        }
    }
    atomic_store(&f->stop, true);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_msg(f->slow_r == 0, "slow layer: %s", llep_strerror(f->slow_r));
    ck_assert_msg(f->slow_err <= 1e-5, "slow layer: relative L2 error %g", f->slow_err);
    fprintf(stderr, "cluster beside: %u slow steps during 12 cluster steps\n", f->slow_steps);
    ck_assert_uint_ge(f->slow_steps, 2);
    llep_layer_release(h0);
    llep_layer_release(h1);
    llep_disconnect(c0);
    llep_disconnect(c1);
    llep_test_layer_fini(&cl);
    llep_test_layer_fini(&f->slow);
    free(f);
}
END_TEST

static Suite *devices_suite(void) {
    Suite *s = suite_create("devices");
    TCase *tc = tcase_create("in-process");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_turn_fifo);
    tcase_add_test(tc, test_turn_reserved);
    tcase_add_test(tc, test_shared_account);
    tcase_add_test(tc, test_step_refused);
    tcase_add_test(tc, test_concurrent_steps);
    suite_add_tcase(s, tc);

    tc = tcase_create("llepd");
    tcase_set_timeout(tc, 240);
    tcase_add_checked_fixture(tc, setup_llepd, teardown_llepd);
    tcase_add_test(tc, test_threads_60_layers);
    tcase_add_test(tc, test_devices_exact);
    tcase_add_test(tc, test_fair_interleaving);
    suite_add_tcase(s, tc);

    tc = tcase_create("cluster");
    tcase_set_timeout(tc, 240);
    tcase_add_checked_fixture(tc, setup_nodes, teardown_nodes);
    tcase_add_test(tc, test_cluster_beside);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(devices_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
