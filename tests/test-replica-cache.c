/* Tests of the replica cache (issue 15, item 3; daemon/engine/devices.c, engine.c, the
 * planner's preference in daemon/core/plan.c and `llepctl devices`): a helper keeps the spilled
 * experts it received, later steps use the copy instead of moving the weights, the cache is
 * bounded and evicts by decayed load, gives way to any step that needs its memory, and forgets
 * a layer's copies when the layer goes. Every step is checked against the float64 reference
 * (ref-moe.c); outputs with and without the cache are equal bit for bit for the same plan. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devices.h"
#include "engine.h"
#include "fixtures.h"
#include "llep/client.h"
#include "plan.h"
#include "ref-moe.h"
#include "test-data.h"
#include "test-nodes.h"

#define TOL_F32 1e-5
#define TOL_EP_LLEP 1e-6

/* A layer of N 16 experts (M 4 per device on P 4), K 2, D 32, H 48, float32 with biases, and
 * the tokens of its P home devices, a share of whose slots go to one hot expert. */
typedef struct rc {
    uint32_t n, k, d, h, p;
    test_weights wt;
    test_tokens tk;
    uint32_t hot;
    double share;
    uint64_t rng;
} rc;

static int32_t route_hot(void *arg, uint64_t *rng) {
    const rc *c = arg;

    if (rng_unit(rng) < c->share)
        return (int32_t)c->hot;
    return (int32_t)rng_below(rng, c->n);
}

static void rc_init(rc *c, uint64_t seed) {
    memset(c, 0, sizeof(*c));
    *c = (rc){ .n = 16, .k = 2, .d = 32, .h = 48, .p = 4, .hot = 0, .share = 0.8, .rng = seed };
    weights_fill(&c->wt, &c->rng, c->n, c->d, c->h, LLEP_DTYPE_F32, 1);
    tokens_new(&c->tk, c->p);
}

static void rc_fini(rc *c) {
    weights_free(&c->wt);
    tokens_free(&c->tk);
}

/* New tokens for every home device, and their reference. */
static void rc_draw(rc *c, uint32_t tokens) {
    llep_ref r = weights_ref(&c->wt, c->d, c->h, LLEP_ACT_SWIGLU);

    for (uint32_t g = 0; g < c->p; g++)
        tokens_draw(&c->tk, g, tokens, &c->rng, c->k, c->d, LLEP_DTYPE_F32, route_hot, c);
    tokens_reference(&c->tk, &r, c->k);
}

/* An engine of the layer: on dv when given, else on devices of its own with this budget
 * (0: weights + 1 GiB) and replica cache. */
static llep_engine *rc_engine(const rc *c, llep_devices *dv, uint64_t budget, uint64_t cache) {
    llep_engine_config cfg;
    llep_engine *e = NULL;
    char err[256] = "";

    llep__engine_config_default(&cfg);
    weights_config(&c->wt, &cfg, 0, c->n, c->k, c->d, c->h, LLEP_DTYPE_F32, LLEP_ACT_SWIGLU,
                   c->p);
    cfg.devices = dv;
    cfg.mem_budget = budget;
    cfg.replica_cache = cache;
    int r = llep__engine_new(&cfg, &e, err, sizeof(err));
    ck_assert_msg(r == 0, "engine_new: %d %s", r, err);
    return e;
}

static double rel_err(const rc *c) {
    double num = 0, den = 0;

    for (uint32_t g = 0; g < c->p; g++)
        for (size_t i = 0; i < (size_t)c->tk.tokens[g] * c->d; i++) {
            double y = ((const float *)c->tk.y[g])[i], r = c->tk.ref[g][i];
            if (!isfinite(y))
                return INFINITY;
            num += (y - r) * (y - r);
            den += r * r;
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* One step of the drawn tokens with min_tokens 1 under policy pol, outputs poisoned first and
 * checked against the reference after. Returns the step's result. */
static int rc_step(rc *c, llep_engine *e, enum llep_policy pol, llep_engine_stats *st) {
    llep_engine_batch b[4];
    llep_plan_params pp;

    llep__plan_params_default(&pp);
    pp.policy = pol;
    pp.min_tokens = 1;
    for (uint32_t g = 0; g < c->p; g++) {
        for (size_t i = 0; i < (size_t)c->tk.tokens[g] * c->d; i++)
            ((float *)c->tk.y[g])[i] = NAN;
        b[g] = tokens_batch(&c->tk, g, c->tk.y[g]);
    }
    int r = llep__engine_step(e, b, &pp, st);
    if (r == 0) {
        double err = rel_err(c);
        ck_assert_msg(err <= TOL_F32, "relative L2 error %g", err);
    }
    return r;
}

static void step_ok(rc *c, llep_engine *e, enum llep_policy pol, llep_engine_stats *st) {
    int r = rc_step(c, e, pol, st);

    ck_assert_msg(r == 0, "step: %d %s", r, llep__engine_error(e));
}

/* The per-step invariants of the cache's figures. */
static void check_step(const llep_engine *e, const llep_engine_stats *st) {
    uint64_t eb = llep__engine_expert_bytes(e);
    uint32_t hits = 0, received = 0;

    ck_assert_uint_le(st->cache_hits, st->transfers);
    ck_assert_uint_eq(st->weight_bytes_moved, (uint64_t)(st->transfers - st->cache_hits) * eb);
    ck_assert_uint_eq(st->weight_bytes_saved, (uint64_t)st->cache_hits * eb);
    for (uint32_t d = 0; d < st->num_devices; d++) {
        hits += st->devices[d].cache_hits;
        received += st->devices[d].experts_received;
        ck_assert_uint_eq(st->devices[d].weight_bytes_in,
                          (uint64_t)st->devices[d].experts_received * eb);
        ck_assert_uint_eq(st->devices[d].weight_bytes_saved,
                          (uint64_t)st->devices[d].cache_hits * eb);
    }
    ck_assert_uint_eq(hits, st->cache_hits);
    ck_assert_uint_eq(received + hits, st->transfers);
}

/* Between steps a device holds its weights and its cache, nothing else; the cache holds whole
 * experts within its limit. */
static void check_account(const llep_engine *e, uint32_t p) {
    llep_devices *dv = llep__engine_devices(e);
    uint64_t eb = llep__engine_expert_bytes(e);

    for (uint32_t d = 0; d < p; d++) {
        llep_device_figures f;
        llep__devices_figures(dv, d, &f);
        ck_assert_uint_eq(f.used, f.held + f.cache_bytes);
        ck_assert_uint_eq(f.cache_bytes, (uint64_t)f.cache_experts * eb);
        ck_assert_uint_le(f.cache_bytes, f.cache_limit);
        ck_assert_uint_le(f.used, f.budget);
    }
}

/* A persistently hot expert: from the second step on its helpers have its weights already,
 * the weight bytes moved drop to what new helpers need, and the outputs stay exact. */
START_TEST(test_hits_persistent) {
    rc c;
    rc_init(&c, 0x5eed01);
    llep_engine *on = rc_engine(&c, NULL, 0, LLEP_DEVICES_CACHE_AUTO);
    llep_engine *off = rc_engine(&c, NULL, 0, 0);
    uint64_t moved_on = 0, moved_off = 0, first = 0;
    uint32_t steps = 12, hits = 0;

    for (uint32_t i = 0; i < steps; i++) {
        llep_engine_stats st;
        rc_draw(&c, 64);
        step_ok(&c, off, LLEP_POLICY_LLEP, &st);
        moved_off += st.weight_bytes_moved;
        ck_assert_uint_eq(st.cache_hits, 0);
        step_ok(&c, on, LLEP_POLICY_LLEP, &st);
        check_step(on, &st);
        check_account(on, c.p);
        ck_assert_uint_gt(st.transfers, 0);
        if (i == 0) {
            ck_assert_uint_eq(st.cache_hits, 0);
            first = st.weight_bytes_moved;
        } else {
            ck_assert_msg(st.cache_hits > 0, "step %u: no hit", i);
            hits += st.cache_hits;
        }
        moved_on += st.weight_bytes_moved;
    }
    /* The hot expert's helpers hold it: at most a few first copies after the first step. */
    fprintf(stderr, "persistent hot expert, %u steps: weight bytes moved %" PRIu64
            " with the cache, %" PRIu64 " without (first step %" PRIu64 "), %u hits\n", steps,
            moved_on, moved_off, first, hits);
    ck_assert_uint_lt(moved_on * 4, moved_off);
    llep_devices *dv = llep__engine_devices(on);
    uint64_t fig_hits = 0, saved = 0;
    for (uint32_t d = 0; d < c.p; d++) {
        llep_device_figures f;
        llep__devices_figures(dv, d, &f);
        fig_hits += f.cache_hits;
        saved += f.cache_saved;
        /* Auto: what the budget leaves after the weights and the largest step. */
        ck_assert_uint_eq(f.cache_limit, f.budget - f.held - f.largest_step);
    }
    ck_assert_uint_eq(fig_hits, hits);
    ck_assert_uint_eq(saved, hits * llep__engine_expert_bytes(on));
    llep__engine_free(on);
    llep__engine_free(off);
    rc_fini(&c);
}
END_TEST

/* The same tokens through engines with and without the cache: the same plan, and outputs equal
 * bit for bit, while the cached engine moves no weights after its first step; LLEP with the
 * cache agrees with EP within float64 tolerance of float32 rounding. */
START_TEST(test_exact_bitwise) {
    rc c;
    rc_init(&c, 0x5eed02);
    llep_engine *on = rc_engine(&c, NULL, 0, LLEP_DEVICES_CACHE_AUTO);
    llep_engine *off = rc_engine(&c, NULL, 0, 0);
    size_t n = (size_t)64 * c.d;
    float *y_off[4];

    rc_draw(&c, 64);
    for (int i = 0; i < 3; i++) {
        llep_engine_stats st;
        step_ok(&c, off, LLEP_POLICY_LLEP, &st);
        uint64_t h_off = llep__plan_hash(llep__engine_plan(off));
        for (uint32_t g = 0; g < c.p; g++) {
            y_off[g] = malloc(n * sizeof(float));
            memcpy(y_off[g], c.tk.y[g], n * sizeof(float));
        }
        step_ok(&c, on, LLEP_POLICY_LLEP, &st);
        check_step(on, &st);
        ck_assert_uint_eq(llep__plan_hash(llep__engine_plan(on)), h_off);
        ck_assert_uint_eq(st.cache_hits, i == 0 ? 0 : st.transfers);
        ck_assert_uint_eq(st.weight_bytes_moved, i == 0 ? st.transfers * llep__engine_expert_bytes(on) : 0);
        for (uint32_t g = 0; g < c.p; g++) {
            ck_assert_msg(memcmp(y_off[g], c.tk.y[g], n * sizeof(float)) == 0,
                          "step %d home %u: outputs differ with the cache", i, g);
            free(y_off[g]);
        }
    }
    /* EP and LLEP agree. */
    float *y_llep[4];
    for (uint32_t g = 0; g < c.p; g++) {
        y_llep[g] = malloc(n * sizeof(float));
        memcpy(y_llep[g], c.tk.y[g], n * sizeof(float));
    }
    llep_engine_stats st;
    step_ok(&c, on, LLEP_POLICY_EP, &st);
    double num = 0, den = 0;
    for (uint32_t g = 0; g < c.p; g++) {
        for (size_t i = 0; i < n; i++) {
            double a = ((float *)c.tk.y[g])[i], b = y_llep[g][i];
            num += (a - b) * (a - b);
            den += b * b;
        }
        free(y_llep[g]);
    }
    ck_assert_msg(sqrt(num / den) <= TOL_EP_LLEP, "EP vs LLEP %g", sqrt(num / den));
    llep__engine_free(on);
    llep__engine_free(off);
    rc_fini(&c);
}
END_TEST

/* A cache of one expert per device, with the hot expert alternating between two experts of
 * device 0 and more tokens every step: each helper keeps the copy that served the most
 * decayed load, the newer one, evicting the other; the account stays whole and exact. */
START_TEST(test_eviction) {
    rc c;
    rc_init(&c, 0x5eed03);
    llep_engine *probe = rc_engine(&c, NULL, 0, 0);
    uint64_t eb = llep__engine_expert_bytes(probe);
    llep__engine_free(probe);
    llep_engine *e = rc_engine(&c, NULL, 0, eb);
    uint64_t evictions = 0;

    for (uint32_t i = 0; i < 8; i++) {
        llep_engine_stats st;
        c.hot = i % 2;
        rc_draw(&c, 32 + 16 * i);
        step_ok(&c, e, LLEP_POLICY_LLEP, &st);
        check_step(e, &st);
        check_account(e, c.p);
        /* Every copy left holds the step's hot expert: it served more than the other did. */
        llep_devices *dv = llep__engine_devices(e);
        for (uint32_t d = 1; d < c.p; d++) {
            uint64_t owner;
            uint32_t expert;
            llep_device_figures f;
            llep__devices_figures(dv, d, &f);
            ck_assert_uint_le(f.cache_experts, 1);
            ck_assert_uint_eq(f.cache_limit, eb);
            if (llep__devices_cache_list(dv, d, &owner, &expert, 1) == 1) {
                ck_assert_uint_eq(owner, llep__engine_cache_owner(e));
                ck_assert_uint_eq(expert, c.hot);
            }
            if (i == 7)
                evictions += f.cache_evictions;
        }
    }
    ck_assert_uint_gt(evictions, 0);
    /* A smaller limit evicts at once; off empties the cache. */
    llep_devices *dv = llep__engine_devices(e);
    llep__devices_turn_wait(dv);
    llep__devices_cache_set_limit(dv, 0);
    llep__devices_turn_end(dv);
    check_account(e, c.p);
    for (uint32_t d = 0; d < c.p; d++) {
        llep_device_figures f;
        llep__devices_figures(dv, d, &f);
        ck_assert_uint_eq(f.cache_bytes, 0);
    }
    llep__engine_free(e);
    rc_fini(&c);
}
END_TEST

/* A budget that fits the weights and one large step exactly: after skewed steps have filled
 * the cache (sized to the whole budget), the large step still runs, because the cache gives
 * its memory back first, instead of failing with -ENOMEM. */
START_TEST(test_shrinks_for_step) {
    rc c;
    rc_init(&c, 0x5eed04);
    llep_engine_stats st;
    /* The large step: many uniformly routed tokens under EP; its peak on each device. */
    rc big;
    rc_init(&big, 0x5eed04);
    big.share = 0;
    rc_draw(&big, 256);
    llep_engine *ref = rc_engine(&big, NULL, 0, 0);
    step_ok(&big, ref, LLEP_POLICY_EP, &st);
    uint64_t peak[4], budget = 0;
    for (uint32_t d = 0; d < c.p; d++) {
        peak[d] = st.devices[d].peak_bytes;
        if (peak[d] > budget)
            budget = peak[d];
    }
    uint64_t held = st.devices[0].held_bytes;
    llep__engine_free(ref);

    llep_engine *e = rc_engine(&big, NULL, budget, budget);
    /* Small skewed steps, each of the four experts of device 0 hot in turn: the helpers
     * receive and keep all four. */
    for (uint32_t i = 0; i < 8; i++) {
        big.share = 0.8;
        big.hot = i % 4;
        rc_draw(&big, 16);
        step_ok(&big, e, LLEP_POLICY_LLEP, &st);
        check_step(e, &st);
        check_account(e, c.p);
    }
    llep_devices *dv = llep__engine_devices(e);
    int tight = 0;
    uint64_t evictions0[4];
    for (uint32_t d = 0; d < c.p; d++) {
        llep_device_figures f;
        llep__devices_figures(dv, d, &f);
        evictions0[d] = f.cache_evictions;
        /* Without giving the cache's memory back the large step would not fit here. */
        tight |= f.used + (peak[d] - held) > budget;
    }
    ck_assert_msg(tight, "the cache does not stand in the large step's way");
    big.share = 0;
    rc_draw(&big, 256);
    int r = rc_step(&big, e, LLEP_POLICY_EP, &st);
    ck_assert_msg(r == 0, "the large step failed: %d %s", r, llep__engine_error(e));
    uint64_t evicted = 0;
    for (uint32_t d = 0; d < c.p; d++) {
        llep_device_figures f;
        llep__devices_figures(dv, d, &f);
        evicted += f.cache_evictions - evictions0[d];
        ck_assert_uint_le(f.peak, budget);
    }
    ck_assert_uint_gt(evicted, 0);
    check_account(e, c.p);
    /* A layer that needs the memory gets it from the cache too. */
    big.share = 0.8;
    big.hot = 0;
    rc_draw(&big, 16);
    step_ok(&big, e, LLEP_POLICY_LLEP, &st);
    llep__engine_free(e);
    rc_fini(&big);
    rc_fini(&c);
}
END_TEST

/* A layer freed drops its copies; a new layer with other weights on the same devices (the same
 * slots of the account, perhaps the same addresses) gets no hit from them and is exact. */
START_TEST(test_invalidation) {
    llep_devices_config dc = { .num_devices = 4, .replica_cache = LLEP_DEVICES_CACHE_AUTO };
    llep_devices *dv = NULL;
    char err[256];
    ck_assert_int_eq(llep__devices_new(&dc, &dv, err, sizeof(err)), 0);

    rc a;
    rc_init(&a, 0x5eed05);
    llep_engine *ea = rc_engine(&a, dv, 0, 0);
    llep_engine_stats st;
    for (int i = 0; i < 3; i++) {
        rc_draw(&a, 48);
        step_ok(&a, ea, LLEP_POLICY_LLEP, &st);
        check_step(ea, &st);
    }
    ck_assert_uint_gt(st.cache_hits, 0);
    uint64_t owner_a = llep__engine_cache_owner(ea);
    llep__engine_free(ea);
    for (uint32_t d = 0; d < 4; d++) {
        llep_device_figures f;
        llep__devices_figures(dv, d, &f);
        ck_assert_uint_eq(f.cache_bytes, 0);
        ck_assert_uint_eq(f.cache_experts, 0);
        ck_assert_uint_eq(f.used, 0);
    }

    rc b;
    rc_init(&b, 0x5eed06); /* other weights, the same shape */
    llep_engine *eb = rc_engine(&b, dv, 0, 0);
    ck_assert_uint_ne(llep__engine_cache_owner(eb), owner_a);
    for (int i = 0; i < 3; i++) {
        rc_draw(&b, 48);
        step_ok(&b, eb, LLEP_POLICY_LLEP, &st);
        check_step(eb, &st);
        if (i == 0)
            ck_assert_uint_eq(st.cache_hits, 0);
    }
    ck_assert_uint_gt(st.cache_hits, 0);
    llep__engine_free(eb);
    rc_fini(&a);
    rc_fini(&b);
    llep__devices_free(dv);
}
END_TEST

/* The planner's preference: with copies held on a helper that is not the least-loaded one, a
 * plan that uses them moves fewer weights with the same largest device load; without copies it
 * is LLA's plan; it never raises the largest device load. */
START_TEST(test_plan_prefers_copies) {
    llep_plan a, b;
    llep_plan_params pp;
    /* N 8 on P 4: device 0 has 20 tokens, device 2 four; alpha 2: capacity 12. */
    uint64_t loads[8] = { 20, 0, 0, 0, 4, 0, 0, 0 };
    uint8_t held[8 * 4] = { 0 };

    llep__plan_params_default(&pp);
    pp.policy = LLEP_POLICY_LLEP;
    pp.min_tokens = 1;
    pp.alpha = 2;
    ck_assert_int_eq(llep__plan_init(&a, 8, 4), 0);
    ck_assert_int_eq(llep__plan_init(&b, 8, 4), 0);
    ck_assert_int_eq(llep__plan_compute(&a, loads, &pp), 0);
    ck_assert_int_eq(llep__plan_compute_cached(&b, loads, &pp, NULL), 0);
    ck_assert_uint_eq(llep__plan_hash(&a), llep__plan_hash(&b));
    /* LLA spills expert 0's 8 tokens to device 1, the least loaded: one copy. With a copy on
     * device 2, which has room for them, it moves none, and the largest load stays 12. */
    uint64_t max_a = 0;
    for (uint32_t d = 0; d < 4; d++)
        max_a = a.device_loads[d] > max_a ? a.device_loads[d] : max_a;
    held[0 * 4 + 2] = 1;
    ck_assert_int_eq(llep__plan_compute_cached(&b, loads, &pp, held), 0);
    uint64_t max_b = 0;
    int on2 = 0, moves_a = 0, moves_b = 0;
    for (uint32_t d = 0; d < 4; d++)
        max_b = b.device_loads[d] > max_b ? b.device_loads[d] : max_b;
    for (uint32_t t = 0; t < a.num_transfers; t++)
        moves_a += !held[a.transfers[t].expert * 4 + a.transfers[t].dst];
    for (uint32_t t = 0; t < b.num_transfers; t++) {
        moves_b += !held[b.transfers[t].expert * 4 + b.transfers[t].dst];
        on2 |= b.transfers[t].expert == 0 && b.transfers[t].dst == 2;
    }
    ck_assert(on2);
    ck_assert_int_lt(moves_b, moves_a);
    ck_assert_uint_le(max_b, max_a);
    /* Random loads and copies: never a larger device load, never more copies moved. */
    pp.alpha = 1;
    uint64_t rng = 0x91a;
    for (int it = 0; it < 2000; it++) {
        for (int x = 0; x < 8; x++)
            loads[x] = rng_below(&rng, 4) ? rng_below(&rng, 200) : 0;
        for (int i = 0; i < 32; i++)
            held[i] = rng_below(&rng, 3) == 0;
        ck_assert_int_eq(llep__plan_compute(&a, loads, &pp), 0);
        ck_assert_int_eq(llep__plan_compute_cached(&b, loads, &pp, held), 0);
        uint64_t ma = 0, mb = 0;
        int va = 0, vb = 0;
        for (uint32_t d = 0; d < 4; d++) {
            ma = a.device_loads[d] > ma ? a.device_loads[d] : ma;
            mb = b.device_loads[d] > mb ? b.device_loads[d] : mb;
        }
        for (uint32_t t = 0; t < a.num_transfers; t++)
            va += !held[a.transfers[t].expert * 4 + a.transfers[t].dst];
        for (uint32_t t = 0; t < b.num_transfers; t++)
            vb += !held[b.transfers[t].expert * 4 + b.transfers[t].dst];
        ck_assert_uint_le(mb, ma);
        ck_assert_int_le(vb, va);
        char err_buf[256];
        ck_assert_msg(llep__plan_validate(&b, err_buf, sizeof(err_buf)) == 0, "%s", err_buf);
    }
    llep__plan_fini(&a);
    llep__plan_fini(&b);
}
END_TEST

/* ---- llepd: `llepctl devices` ------------------------------------------------------------ */

static char tmpdir[64], sock_path[128], llepctl[PATH_MAX];
static pid_t llepd_pid = -1;

static void setup_llepd(void) {
    llep_test_tmpdir(tmpdir, sizeof(tmpdir), "test-replica-cache");
    snprintf(sock_path, sizeof(sock_path), "%s/llepd.sock", tmpdir);
    llep_test_llepctl(llepctl, sizeof(llepctl));
}

static void teardown_llepd(void) {
    ck_assert_int_eq(llep_test_stop(&llepd_pid, 10000), 0);
    llep_test_rm_rf(tmpdir);
}

static llep_test_output ctl(const char *json, const char *verb) {
    const char *argv[] = { llepctl, "--socket", sock_path, json ? json : verb,
                           json ? verb : NULL, NULL };
    llep_test_output o = llep_test_run(argv, NULL);

    ck_assert_msg(o.status == 0, "llepctl %s: %s", verb, o.err);
    return o;
}

static uint64_t ju64(json_object *o, const char *key) {
    json_object *v;

    ck_assert_msg(json_object_object_get_ex(o, key, &v), "no %s", key);
    return (uint64_t)json_object_get_int64(v);
}

/* A layer served by llepd with its default cache: the hot expert's helpers show it cached,
 * their hits and the bytes saved, in JSON and in text; the outputs stay exact. */
START_TEST(test_llepctl_devices) {
    const char *args[] = { "--min-tokens", "1", NULL };
    llep_test_llepd o = { .sock = sock_path, .devices = "4", .args = args };
    llepd_pid = llep_test_llepd_start(&o);
    llep_client *cl = NULL;
    ck_assert_int_eq(llep_connect(sock_path, &cl), 0);

    rc c;
    rc_init(&c, 0x5eed07);
    llep_layer_desc d;
    memset(&d, 0, sizeof(d));
    d.num_experts = c.n;
    d.top_k = c.k;
    d.hidden = c.d;
    d.inter = c.h;
    d.dtype = LLEP_DTYPE_F32;
    d.act = LLEP_ACT_SWIGLU;
    d.w_gate = c.wt.swg;
    d.w_up = c.wt.swu;
    d.w_down = c.wt.swd;
    d.b_gate = c.wt.sbg;
    d.b_up = c.wt.sbu;
    d.b_down = c.wt.sbd;
    d.policy = LLEP_POLICY_LLEP;
    llep_layer *l = NULL;
    int r = llep_layer_create(cl, "cached", &d, &l);
    ck_assert_msg(r == 0, "create: %s", llep_client_error(cl));

    uint32_t steps = 4;
    for (uint32_t i = 0; i < steps; i++) {
        /* One home: one submission of 128 tokens per step. */
        rc_draw(&c, 128);
        r = llep_forward(l, c.tk.tokens[0], c.tk.sx[0], c.tk.idx[0], c.tk.w[0], c.tk.y[0]);
        ck_assert_msg(r == 0, "forward: %s", llep_client_error(cl));
        double num = 0, den = 0;
        for (size_t j = 0; j < (size_t)c.tk.tokens[0] * c.d; j++) {
            double y = ((float *)c.tk.y[0])[j], ref = c.tk.ref[0][j];
            num += (y - ref) * (y - ref);
            den += ref * ref;
        }
        ck_assert_msg(sqrt(num / den) <= TOL_F32, "step %u: error %g", i, sqrt(num / den));
    }

    llep_test_output out = ctl("--json", "devices");
    json_object *j = json_tokener_parse(out.out), *devs;
    ck_assert_ptr_nonnull(j);
    ck_assert(json_object_object_get_ex(j, "devices", &devs));
    uint64_t hits = 0, saved = 0, cached = 0;
    int hot_cached = 0;
    /* One expert's bytes: gate, up, down, then the three biases, each 64-aligned. */
    uint64_t eb = 3 * ((c.d * c.h * 4 + 63) / 64 * 64) + 2 * ((c.h * 4 + 63) / 64 * 64) +
                  (c.d * 4 + 63) / 64 * 64;
    for (size_t k = 0; k < json_object_array_length(devs); k++) {
        json_object *v = json_object_array_get_idx(devs, k), *ce;
        ck_assert(json_object_object_get_ex(v, "cached_experts", &ce));
        hits += ju64(v, "cache_hits");
        saved += ju64(v, "cache_bytes_saved");
        cached += json_object_array_length(ce);
        ck_assert_uint_eq(ju64(v, "cache_bytes"), json_object_array_length(ce) * eb);
        ck_assert_uint_le(ju64(v, "cache_bytes"), ju64(v, "cache_limit"));
        ck_assert_uint_ge(ju64(v, "memory_used"), ju64(v, "cache_bytes"));
        (void)ju64(v, "cache_evictions");
        for (size_t x = 0; x < json_object_array_length(ce); x++)
            hot_cached |= ju64(json_object_array_get_idx(ce, x), "expert") == 0 &&
                          ju64(json_object_array_get_idx(ce, x), "layer_id") == 1;
    }
    json_object_put(j);
    llep_test_output_free(&out);
    ck_assert_uint_gt(hits, steps - 2);
    ck_assert_uint_eq(saved, hits * eb);
    ck_assert_uint_gt(cached, 0);
    ck_assert(hot_cached);

    out = ctl(NULL, "devices");
    ck_assert_msg(strstr(out.out, "HITS") && strstr(out.out, "SAVED") &&
                  strstr(out.out, "cached (limit") && strstr(out.out, " 1:0"), "%s", out.out);
    llep_test_output_free(&out);

    llep_layer_release(l);
    llep_disconnect(cl);
    rc_fini(&c);
}
END_TEST

static Suite *replica_cache_suite(void) {
    Suite *s = suite_create("replica-cache");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_hits_persistent);
    tcase_add_test(tc, test_exact_bitwise);
    tcase_add_test(tc, test_eviction);
    tcase_add_test(tc, test_shrinks_for_step);
    tcase_add_test(tc, test_invalidation);
    tcase_add_test(tc, test_plan_prefers_copies);
    suite_add_tcase(s, tc);
    tc = tcase_create("llepd");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup_llepd, teardown_llepd);
    tcase_add_test(tc, test_llepctl_devices);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(replica_cache_suite(), CK_ENV);
}
