/* Tests of the Least-Loaded Assignment planner (daemon/core/plan.c).
 *
 * Three kinds of check: small cases worked out by hand from DESIGN.md section 2; a literal
 * transcription of that section (ref_lla below, deliberately naive) that the fast planner must
 * match on thousands of random load vectors; and invariants over the same vectors. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "plan.h"

/* ---- helpers ---------------------------------------------------------------------------- */

typedef struct want_range {
    uint32_t expert, device;
    uint64_t start, end;
} want_range;

static llep_plan_params params(double alpha, double lambda, uint64_t m, enum llep_policy pol) {
    llep_plan_params p = { .alpha = alpha, .lambda = lambda, .min_tokens = m, .policy = pol };
    return p;
}

static void plan_or_die(llep_plan *p, uint32_t n, uint32_t np, const uint64_t *loads,
                        const llep_plan_params *pp) {
    char err[256];

    ck_assert_int_eq(llep__plan_init(p, n, np), 0);
    ck_assert_int_eq(llep__plan_compute(p, loads, pp), 0);
    ck_assert_msg(llep__plan_validate(p, err, sizeof(err)) == 0, "invalid plan: %s", err);
}

/* Checks the ranges of the plan, in expert order, against a hand-written list. */
static void expect_ranges(const llep_plan *p, const want_range *want, uint32_t nwant) {
    uint32_t k = 0;

    for (uint32_t e = 0; e < p->num_experts; e++)
        for (uint32_t i = p->range_off[e]; i < p->range_off[e + 1]; i++, k++) {
            ck_assert_uint_lt(k, nwant);
            ck_assert_uint_eq(e, want[k].expert);
            ck_assert_uint_eq(p->ranges[i].device, want[k].device);
            ck_assert_uint_eq(p->ranges[i].start, want[k].start);
            ck_assert_uint_eq(p->ranges[i].end, want[k].end);
        }
    ck_assert_uint_eq(k, nwant);
}

static void expect_loads(const llep_plan *p, const uint64_t *want) {
    for (uint32_t d = 0; d < p->num_devices; d++)
        ck_assert_msg(p->device_loads[d] == want[d], "device %u: load %llu, want %llu", d,
                      (unsigned long long)p->device_loads[d], (unsigned long long)want[d]);
}

static void expect_transfer(const llep_plan *p, uint32_t t, uint32_t e, uint32_t src,
                            uint32_t dst) {
    ck_assert_uint_lt(t, p->num_transfers);
    ck_assert_uint_eq(p->transfers[t].expert, e);
    ck_assert_uint_eq(p->transfers[t].src, src);
    ck_assert_uint_eq(p->transfers[t].dst, dst);
}

/* ---- hand-worked cases (DESIGN.md section 2) -------------------------------------------- */

START_TEST(balanced_runs_ep)
{
    llep_plan p;
    uint64_t loads[4] = { 10, 12, 11, 9 };
    llep_plan_params pp = params(1.0, 1.3, 1024, LLEP_POLICY_AUTO);

    plan_or_die(&p, 4, 2, loads, &pp);
    ck_assert_int_eq(p.mode, LLEP_PLAN_EP);
    ck_assert_double_eq_tol(p.imbalance, 22.0 / 21.0, 1e-12);
    ck_assert_uint_eq(p.capacity, 21);
    ck_assert_uint_eq(p.num_transfers, 0);
    want_range w[] = { { 0, 0, 0, 10 }, { 1, 0, 0, 12 }, { 2, 1, 0, 11 }, { 3, 1, 0, 9 } };
    expect_ranges(&p, w, 4);
    llep__plan_fini(&p);
}
END_TEST

/* e0 = 60, e1 = 20 on device 0; e2 = e3 = 10 on device 1; total 100, cap 50.
 * e0: pending[0] = 20, avail = 30 < 60: device 0 takes [0, 30), device 1 (eff 20, room 30)
 * takes [30, 60). e1: eff(0) = 30, avail 20 >= 20: native. e2, e3: native. */
START_TEST(native_takes_part_then_all)
{
    llep_plan p;
    uint64_t loads[4] = { 60, 20, 10, 10 };
    llep_plan_params pp = params(1.0, 1.3, 1, LLEP_POLICY_AUTO);

    plan_or_die(&p, 4, 2, loads, &pp);
    ck_assert_int_eq(p.mode, LLEP_PLAN_LLEP);
    ck_assert_double_eq_tol(p.imbalance, 1.6, 1e-12);
    ck_assert_uint_eq(p.capacity, 50);
    want_range w[] = { { 0, 0, 0, 30 }, { 0, 1, 30, 60 }, { 1, 0, 0, 20 }, { 2, 1, 0, 10 },
                       { 3, 1, 0, 10 } };
    expect_ranges(&p, w, 5);
    uint64_t dl[2] = { 50, 50 };
    expect_loads(&p, dl);
    ck_assert_uint_eq(p.num_transfers, 1);
    expect_transfer(&p, 0, 0, 0, 1);
    llep__plan_fini(&p);
}
END_TEST

/* e0 = e1 = 40 on device 0, nothing on device 1; cap 40. e0: pending[0] = 40 leaves
 * avail = 0, so all of e0 spills to device 1; e1 then fits natively. */
START_TEST(native_full_spills_everything)
{
    llep_plan p;
    uint64_t loads[4] = { 40, 40, 0, 0 };
    llep_plan_params pp = params(1.0, 1.3, 1, LLEP_POLICY_AUTO);

    plan_or_die(&p, 4, 2, loads, &pp);
    ck_assert_int_eq(p.mode, LLEP_PLAN_LLEP);
    want_range w[] = { { 0, 1, 0, 40 }, { 1, 0, 0, 40 } };
    expect_ranges(&p, w, 2);
    uint64_t dl[2] = { 40, 40 };
    expect_loads(&p, dl);
    ck_assert_uint_eq(p.num_transfers, 1);
    expect_transfer(&p, 0, 0, 0, 1);
    llep__plan_fini(&p);
}
END_TEST

/* One hot expert over four devices: capacity 25, the spill fills devices 1, 2, 3 in index
 * order (all tie at effective load 0). */
START_TEST(spill_over_several_helpers)
{
    llep_plan p;
    uint64_t loads[4] = { 100, 0, 0, 0 };
    llep_plan_params pp = params(1.0, 1.3, 1, LLEP_POLICY_AUTO);

    plan_or_die(&p, 4, 4, loads, &pp);
    want_range w[] = { { 0, 0, 0, 25 }, { 0, 1, 25, 50 }, { 0, 2, 50, 75 }, { 0, 3, 75, 100 } };
    expect_ranges(&p, w, 4);
    ck_assert_uint_eq(p.num_transfers, 3);
    expect_transfer(&p, 0, 0, 0, 1);
    expect_transfer(&p, 1, 0, 0, 2);
    expect_transfer(&p, 2, 0, 0, 3);
    llep__plan_fini(&p);
}
END_TEST

/* Same load with m = 30: the first helper's room (25) is a small chunk while 75 remain, no
 * other device has more room, so all 75 are forced onto the least-loaded device 1. */
START_TEST(small_chunks_force_assignment)
{
    llep_plan p;
    uint64_t loads[4] = { 100, 0, 0, 0 };
    llep_plan_params pp = params(1.0, 1.3, 30, LLEP_POLICY_AUTO);

    plan_or_die(&p, 4, 4, loads, &pp);
    want_range w[] = { { 0, 0, 0, 25 }, { 0, 1, 25, 100 } };
    expect_ranges(&p, w, 2);
    uint64_t dl[4] = { 25, 75, 0, 0 };
    expect_loads(&p, dl);
    llep__plan_fini(&p);
}
END_TEST

/* The same load with --scale-min-tokens: m is capped at capacity / P (25 / 4 = 6), so each
 * helper's room of 25 is no longer a small chunk and the hot expert spreads evenly. */
START_TEST(scaled_min_tokens_spread_small_batches)
{
    llep_plan p;
    uint64_t loads[4] = { 100, 0, 0, 0 };
    llep_plan_params pp = params(1.0, 1.3, 30, LLEP_POLICY_AUTO);

    pp.scale_min_tokens = true;
    plan_or_die(&p, 4, 4, loads, &pp);
    ck_assert_uint_eq(llep__plan_min_tokens(&p, &pp), 6);
    want_range w[] = { { 0, 0, 0, 25 }, { 0, 1, 25, 50 }, { 0, 2, 50, 75 }, { 0, 3, 75, 100 } };
    expect_ranges(&p, w, 4);
    /* A capacity of at least P m leaves m as it is. */
    pp.min_tokens = 5;
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), 0);
    ck_assert_uint_eq(llep__plan_min_tokens(&p, &pp), 5);
    llep__plan_fini(&p);
}
END_TEST

/* e0 = 60, e1 = 45, e2 = 35 on three devices, m = 12, policy LLEP (imbalance 1.29 < 1.3).
 * cap = floor(140 / 3) = 46.
 * e0: native [0, 46); 14 spill; device 2 (eff 35) has room 11 < m while 14 remain: forced,
 *     device 2 takes all 14.
 * e1: eff(1) = 0, native.
 * e2: eff(2) = 14, avail 32: native [0, 32); 3 spill; device 1 (eff 45, room 1) is the
 *     least-loaded other, 1 < m and 1 < 3: forced, device 1 takes all 3. */
START_TEST(forced_assignment_twice)
{
    llep_plan p;
    uint64_t loads[3] = { 60, 45, 35 };
    llep_plan_params pp = params(1.0, 1.3, 12, LLEP_POLICY_AUTO);

    plan_or_die(&p, 3, 3, loads, &pp);
    ck_assert_int_eq(p.mode, LLEP_PLAN_EP);
    llep__plan_fini(&p);

    pp.policy = LLEP_POLICY_LLEP;
    plan_or_die(&p, 3, 3, loads, &pp);
    ck_assert_int_eq(p.mode, LLEP_PLAN_LLEP);
    ck_assert_uint_eq(p.capacity, 46);
    want_range w[] = { { 0, 0, 0, 46 }, { 0, 2, 46, 60 }, { 1, 1, 0, 45 }, { 2, 2, 0, 32 },
                       { 2, 1, 32, 35 } };
    expect_ranges(&p, w, 5);
    uint64_t dl[3] = { 46, 48, 46 };
    expect_loads(&p, dl);
    ck_assert_uint_eq(p.num_transfers, 2);
    expect_transfer(&p, 0, 0, 0, 2);
    expect_transfer(&p, 1, 2, 2, 1);
    llep__plan_fini(&p);
}
END_TEST

/* A chunk smaller than m is still taken when it is all that remains (c == r). */
START_TEST(small_final_chunk_is_taken)
{
    llep_plan p;
    uint64_t loads[3] = { 45, 40, 35 };
    llep_plan_params pp = params(1.0, 1.3, 1000, LLEP_POLICY_LLEP);

    plan_or_die(&p, 3, 3, loads, &pp);
    /* cap 40: e0 native [0, 40), 5 spill to device 2 (eff 35, room 5): 5 == r, taken. */
    want_range w[] = { { 0, 0, 0, 40 }, { 0, 2, 40, 45 }, { 1, 1, 0, 40 }, { 2, 2, 0, 35 } };
    expect_ranges(&p, w, 4);
    uint64_t dl[3] = { 40, 40, 40 };
    expect_loads(&p, dl);
    llep__plan_fini(&p);
}
END_TEST

/* Equal loads are visited lower expert id first: e1 (dev 0) and e2 (dev 1) tie at 30; with
 * policy LLEP and cap 22, e1 spills first and takes device 1's spare room before e2. */
START_TEST(ties_visit_lower_expert_first)
{
    llep_plan p;
    uint64_t loads[4] = { 0, 30, 30, 0 };
    llep_plan_params pp = params(0.75, 1.3, 1, LLEP_POLICY_LLEP);

    plan_or_die(&p, 4, 2, loads, &pp);
    ck_assert_uint_eq(p.capacity, 22);
    /* e1: pending[0] = 0, avail 22: [0, 22) native; 8 spill to device 1 (eff 30, room 0):
     * forced onto device 1. e2: eff(1) = 8, avail 14: [0, 14) native; 16 spill to device 0
     * (eff 22, room 0): forced. */
    want_range w[] = { { 1, 0, 0, 22 }, { 1, 1, 22, 30 }, { 2, 1, 0, 14 }, { 2, 0, 14, 30 } };
    expect_ranges(&p, w, 4);
    expect_transfer(&p, 0, 1, 0, 1);
    expect_transfer(&p, 1, 2, 1, 0);
    llep__plan_fini(&p);
}
END_TEST

START_TEST(single_device_stays_native)
{
    llep_plan p;
    uint64_t loads[4] = { 1000, 0, 3, 7 };
    llep_plan_params pp = params(1.0, 1.3, 1, LLEP_POLICY_LLEP);

    plan_or_die(&p, 4, 1, loads, &pp);
    ck_assert_uint_eq(p.num_transfers, 0);
    ck_assert_uint_eq(p.device_loads[0], 1010);
    ck_assert_uint_eq(p.num_ranges, 3);
    llep__plan_fini(&p);
}
END_TEST

START_TEST(all_zero_is_ep)
{
    llep_plan p;
    uint64_t loads[8] = { 0 };
    llep_plan_params pp = params(1.0, 1.3, 1, LLEP_POLICY_LLEP);

    plan_or_die(&p, 8, 4, loads, &pp);
    ck_assert_int_eq(p.mode, LLEP_PLAN_EP);
    ck_assert_uint_eq(p.num_ranges, 0);
    ck_assert_double_eq(p.imbalance, 1.0);
    ck_assert_uint_eq(p.capacity, 1);
    llep__plan_fini(&p);
}
END_TEST

START_TEST(policy_ep_never_spills)
{
    llep_plan p;
    uint64_t loads[4] = { 1000, 0, 0, 0 };
    llep_plan_params pp = params(1.0, 1.3, 1, LLEP_POLICY_EP);

    plan_or_die(&p, 4, 4, loads, &pp);
    ck_assert_int_eq(p.mode, LLEP_PLAN_EP);
    ck_assert_double_eq(p.imbalance, 4.0);
    ck_assert_uint_eq(p.device_loads[0], 1000);
    llep__plan_fini(&p);
}
END_TEST

START_TEST(bad_arguments)
{
    llep_plan p;
    uint64_t loads[4] = { 1, 2, 3, 4 };
    llep_plan_params pp;
    char err[128];

    ck_assert_int_eq(llep__plan_init(&p, 4, 0), -EINVAL);
    ck_assert_int_eq(llep__plan_init(&p, 5, 2), -EINVAL);
    ck_assert_int_eq(llep__plan_init(&p, 0, 1), -EINVAL);
    ck_assert_int_eq(llep__plan_init(&p, LLEP_MAX_EXPERTS + 1, 1), -EINVAL);
    ck_assert_int_eq(llep__plan_init(&p, 4, 2), 0);

    llep__plan_params_default(&pp);
    pp.alpha = 0;
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), -EINVAL);
    ck_assert_int_eq(llep__plan_params_check(&pp, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "alpha"));
    pp.alpha = 1.0 / 0.0;
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), -EINVAL);
    llep__plan_params_default(&pp);
    pp.lambda = -1;
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), -EINVAL);
    llep__plan_params_default(&pp);
    pp.policy = (enum llep_policy)7;
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), -EINVAL);

    /* The total must fit in 64 bits; a failed call keeps the previous plan intact. */
    llep__plan_params_default(&pp);
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), 0);
    uint64_t huge[4] = { UINT64_MAX / 2, UINT64_MAX / 2, 2, 0 };
    ck_assert_int_eq(llep__plan_compute(&p, huge, &pp), -EOVERFLOW);
    ck_assert_uint_eq(p.total, 10);
    ck_assert_int_eq(llep__plan_validate(&p, err, sizeof(err)), 0);
    llep__plan_fini(&p);
}
END_TEST

/* The validator itself must catch broken plans, or the random tests prove nothing. */
START_TEST(validator_catches_corruption)
{
    llep_plan p;
    uint64_t loads[4] = { 60, 20, 10, 10 };
    llep_plan_params pp = params(1.0, 1.3, 1, LLEP_POLICY_AUTO);
    char err[256];

    plan_or_die(&p, 4, 2, loads, &pp);
    p.ranges[1].end = 59;
    ck_assert_int_eq(llep__plan_validate(&p, err, sizeof(err)), -EINVAL);
    p.ranges[1].end = 60;
    p.ranges[1].device = 0;
    ck_assert_int_eq(llep__plan_validate(&p, err, sizeof(err)), -EINVAL);
    p.ranges[1].device = 1;
    p.num_transfers = 0;
    ck_assert_int_eq(llep__plan_validate(&p, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "transfer"));
    p.num_transfers = 1;
    p.device_loads[0]++;
    ck_assert_int_eq(llep__plan_validate(&p, err, sizeof(err)), -EINVAL);
    p.device_loads[0]--;
    p.transfers[p.num_transfers++] = p.transfers[0];
    ck_assert_int_eq(llep__plan_validate(&p, err, sizeof(err)), -EINVAL);
    p.num_transfers = 1;
    ck_assert_int_eq(llep__plan_validate(&p, err, sizeof(err)), 0);
    llep__plan_fini(&p);
}
END_TEST

/* ---- reference: DESIGN.md section 2 transcribed literally ------------------------------ */

typedef struct ref_plan {
    uint32_t n;
    uint64_t dev_load[64];
    /* (expert, device, start, end) in visiting order */
    uint32_t nr;
    want_range r[4096];
} ref_plan;

static void ref_give(ref_plan *rp, uint64_t *assigned, uint32_t e, uint32_t d, uint64_t o,
                     uint64_t c) {
    rp->r[rp->nr++] = (want_range){ e, d, o, o + c };
    assigned[d] += c;
}

/* Lists the devices other than nat, on nat's node (near = 1) or off it (near = 0; every
 * device counts as on the node when per_node = np), sorted by (effective load, index). */
static uint32_t ref_sorted(const uint64_t *assigned, const uint64_t *pending, uint32_t np,
                           uint32_t per_node, uint32_t nat, int near, uint32_t *ord) {
    uint32_t k = 0;

    for (uint32_t d = 0; d < np; d++)
        if (d != nat && (d / per_node == nat / per_node) == near)
            ord[k++] = d;
    for (uint32_t i = 1; i < k; i++) /* insertion sort by (eff, index) */
        for (uint32_t j = i; j > 0; j--) {
            uint64_t ea = assigned[ord[j - 1]] + pending[ord[j - 1]];
            uint64_t eb = assigned[ord[j]] + pending[ord[j]];
            if (eb < ea) {
                uint32_t t = ord[j];
                ord[j] = ord[j - 1];
                ord[j - 1] = t;
            }
        }
    return k;
}

/* The first device of ord[0..k) whose chunk qualifies, with the chunk in *ret_c; UINT32_MAX
 * when none does. */
static uint32_t ref_first_qualifying(const uint64_t *assigned, const uint64_t *pending,
                                     const uint32_t *ord, uint32_t k, uint64_t cap, uint64_t m,
                                     uint64_t r, uint64_t *ret_c) {
    for (uint32_t i = 0; i < k; i++) {
        uint32_t g = ord[i];
        __int128 c = (__int128)cap - (__int128)(assigned[g] + pending[g]);
        if (c > (__int128)r)
            c = r;
        if (c <= 0 || ((uint64_t)c < m && r > (uint64_t)c))
            continue;
        *ret_c = (uint64_t)c;
        return g;
    }
    return UINT32_MAX;
}

/* The naive reading: sort the other devices by effective load on every spill step and scan
 * them in that order for the first qualifying one; hierarchically, the native node's devices
 * first, then the other nodes' (per_node = np: flat). Signed 128-bit arithmetic so
 * "cap - eff" may go negative exactly as the text says. */
static void ref_lla(const uint64_t *l, uint32_t n, uint32_t np, uint32_t per_node, uint64_t cap,
                    uint64_t m, ref_plan *rp) {
    uint64_t pending[64] = { 0 }, assigned[64] = { 0 };
    uint32_t visited[4096] = { 0 };
    uint32_t per = n / np;

    rp->nr = 0;
    for (uint32_t e = 0; e < n; e++)
        pending[e / per] += l[e];
    for (uint32_t step = 0; step < n; step++) {
        uint32_t e = UINT32_MAX;
        for (uint32_t i = 0; i < n; i++)
            if (!visited[i] && (e == UINT32_MAX || l[i] > l[e]))
                e = i;
        visited[e] = 1;
        if (l[e] == 0)
            continue;
        uint32_t nat = e / per;
        pending[nat] -= l[e];
        if (np == 1) {
            ref_give(rp, assigned, e, nat, 0, l[e]);
            continue;
        }
        __int128 avail = (__int128)cap - (__int128)(assigned[nat] + pending[nat]);
        uint64_t o = 0, r = l[e];
        if (avail >= (__int128)l[e]) {
            ref_give(rp, assigned, e, nat, 0, l[e]);
            continue;
        }
        if (avail > 0) {
            ref_give(rp, assigned, e, nat, 0, (uint64_t)avail);
            o = (uint64_t)avail;
            r -= (uint64_t)avail;
        }
        while (r > 0) {
            uint32_t ord[64], k;
            uint64_t c = 0;
            k = ref_sorted(assigned, pending, np, per_node, nat, 1, ord);
            uint32_t g = ref_first_qualifying(assigned, pending, ord, k, cap, m, r, &c);
            if (g == UINT32_MAX) {
                k = ref_sorted(assigned, pending, np, per_node, nat, 0, ord);
                g = ref_first_qualifying(assigned, pending, ord, k, cap, m, r, &c);
            }
            if (g == UINT32_MAX) {
                /* nobody qualifies: the least-loaded of all the other devices takes r */
                k = ref_sorted(assigned, pending, np, np, nat, 1, ord);
                g = ord[0];
                c = r;
            }
            ref_give(rp, assigned, e, g, o, c);
            o += c;
            r -= c;
        }
    }
    for (uint32_t d = 0; d < np; d++)
        rp->dev_load[d] = assigned[d];
}

/* ---- random load vectors ---------------------------------------------------------------- */

static uint64_t rng_state; /* splitmix64 (fixtures.h) */

static uint64_t rnd_below(uint64_t n) {
    return n ? rng_next(&rng_state) % n : 0;
}

enum shape { UNIFORM, ZIPF, ONE_HOT, COLOCATED_HOT, ALL_ZERO, SINGLE, NEAR_MAX, NSHAPES };

static void make_loads(enum shape s, uint64_t *l, uint32_t n, uint32_t np) {
    uint64_t scale = 1 + rnd_below(100000);

    switch (s) {
    case UNIFORM:
        for (uint32_t e = 0; e < n; e++)
            l[e] = rnd_below(scale);
        break;
    case ZIPF: {
        /* load ~ scale / rank for a random permutation of ranks */
        for (uint32_t e = 0; e < n; e++)
            l[e] = scale * 16 / (e + 1);
        for (uint32_t e = n - 1; e > 0; e--) {
            uint32_t j = (uint32_t)rnd_below(e + 1);
            uint64_t t = l[e];
            l[e] = l[j];
            l[j] = t;
        }
        break;
    }
    case ONE_HOT:
        for (uint32_t e = 0; e < n; e++)
            l[e] = rnd_below(scale / 16 + 1);
        l[rnd_below(n)] = scale * (1 + rnd_below(64));
        break;
    case COLOCATED_HOT: {
        /* every hot expert on one device, as in DESIGN.md section 7 with h <= M */
        uint32_t per = n / np, d = (uint32_t)rnd_below(np);
        for (uint32_t e = 0; e < n; e++)
            l[e] = rnd_below(scale / 8 + 1);
        for (uint32_t i = 0; i < per; i++)
            if (rnd_below(2) || i == 0)
                l[d * per + i] = scale * (2 + rnd_below(16));
        break;
    }
    case ALL_ZERO:
        memset(l, 0, n * sizeof(*l));
        break;
    case SINGLE:
        memset(l, 0, n * sizeof(*l));
        l[rnd_below(n)] = 1 + rnd_below(scale);
        break;
    case NEAR_MAX:
        for (uint32_t e = 0; e < n; e++)
            l[e] = UINT64_MAX / n - rnd_below(1u << 20);
        break;
    default:
        break;
    }
}

static uint64_t max_of(const uint64_t *v, uint32_t n) {
    uint64_t m = 0;
    for (uint32_t i = 0; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

static void check_against_reference(const llep_plan *p, uint64_t m, uint32_t per_node) {
    static ref_plan rp;

    ref_lla(p->loads, p->num_experts, p->num_devices, per_node ? per_node : p->num_devices,
            p->capacity, m, &rp);
    for (uint32_t d = 0; d < p->num_devices; d++)
        ck_assert_uint_eq(p->device_loads[d], rp.dev_load[d]);
    ck_assert_uint_eq(p->num_ranges, rp.nr);
    /* The reference lists ranges in visiting order; each expert's ranges are contiguous in
     * both, so compare per expert. */
    for (uint32_t i = 0; i < rp.nr; i++) {
        const want_range *w = &rp.r[i];
        uint32_t k = p->range_off[w->expert];
        while (k < p->range_off[w->expert + 1] && p->ranges[k].start != w->start)
            k++;
        ck_assert_uint_lt(k, p->range_off[w->expert + 1]);
        ck_assert_uint_eq(p->ranges[k].device, w->device);
        ck_assert_uint_eq(p->ranges[k].end, w->end);
    }
}

/* 12,000 seeded vectors over every shape and a spread of N, P, alpha, m and lambda. */
START_TEST(random_invariants)
{
    static const uint32_t devs[] = { 1, 2, 3, 4, 8, 16, 64 };
    uint64_t loads[4096];
    char err[256];
    uint32_t llep_runs = 0;

    rng_state = 0x11e9u + (uint64_t)_i;
    for (int iter = 0; iter < 2000; iter++) {
        uint32_t np = devs[rnd_below(sizeof(devs) / sizeof(devs[0]))];
        uint32_t per = 1 + (uint32_t)rnd_below(np >= 16 ? 6 : 24);
        uint32_t n = np * per;
        enum shape s = (enum shape)rnd_below(NSHAPES);
        llep_plan_params pp = params(1.0 + (double)rnd_below(4) / 4, 1.0 + (double)rnd_below(8) / 8,
                                     rnd_below(4) == 0 ? 0 : 1 + rnd_below(2048),
                                     rnd_below(3) == 0 ? LLEP_POLICY_LLEP : LLEP_POLICY_AUTO);
        llep_plan p;

        pp.scale_min_tokens = rnd_below(4) == 0;

        make_loads(s, loads, n, np);
        plan_or_die(&p, n, np, loads, &pp);
        ck_assert_msg(llep__plan_validate(&p, err, sizeof(err)) == 0, "%s", err);

        /* LLEP never makes the busiest device busier than EP does (alpha >= 1). */
        ck_assert_msg(max_of(p.device_loads, np) <= max_of(p.native_loads, np),
                      "iter %d shape %d N=%u P=%u: LLEP max %llu > EP max %llu", iter, s, n, np,
                      (unsigned long long)max_of(p.device_loads, np),
                      (unsigned long long)max_of(p.native_loads, np));
        if (p.mode == LLEP_PLAN_LLEP) {
            llep_runs++;
            check_against_reference(&p, llep__plan_min_tokens(&p, &pp), 0);
        } else {
            ck_assert_uint_eq(p.num_transfers, 0);
        }

        /* Deterministic: the same input gives the same plan. */
        llep_plan q;
        plan_or_die(&q, n, np, loads, &pp);
        ck_assert_int_eq(q.mode, p.mode);
        ck_assert_uint_eq(q.num_ranges, p.num_ranges);
        ck_assert_mem_eq(q.ranges, p.ranges, p.num_ranges * sizeof(*p.ranges));
        ck_assert_mem_eq(q.transfers, p.transfers, p.num_transfers * sizeof(*p.transfers));
        llep__plan_fini(&q);
        llep__plan_fini(&p);
    }
    ck_assert_uint_gt(llep_runs, 500);
}
END_TEST

/* N = P: one expert per device; the hot one spreads over the others. */
START_TEST(one_expert_per_device)
{
    uint64_t loads[8] = { 8000, 0, 0, 0, 0, 0, 0, 0 };
    llep_plan p;
    llep_plan_params pp = params(1.0, 1.3, 1, LLEP_POLICY_AUTO);

    plan_or_die(&p, 8, 8, loads, &pp);
    for (uint32_t d = 0; d < 8; d++)
        ck_assert_uint_eq(p.device_loads[d], 1000);
    ck_assert_uint_eq(p.num_transfers, 7);
    llep__plan_fini(&p);
}
END_TEST

/* ---- cluster scope: hierarchical placement ---------------------------------------------- */

/* Loads { 100, 10, 0, 0 } on four devices, alpha 1.5: total 110, cap floor(1.5 * 27) = 40.
 * e0 keeps [0, 40) on device 0 and spills 60.
 * Flat: device 2 (eff 0, room 40) takes [40, 80), then device 3 (eff 0) [80, 100).
 * Two nodes of two: device 1 shares node 0 with device 0 and has room 30 (eff 10): it takes
 * [40, 70); node 0 is then full, so device 2, the least-loaded of node 1, takes [70, 100).
 * e1 then fits natively on device 1 in both plans. */
START_TEST(hierarchical_prefers_own_node)
{
    llep_plan p;
    uint64_t loads[4] = { 100, 10, 0, 0 };
    llep_plan_params pp = params(1.5, 1.3, 1, LLEP_POLICY_AUTO);

    plan_or_die(&p, 4, 4, loads, &pp);
    ck_assert_uint_eq(p.capacity, 40);
    want_range flat[] = { { 0, 0, 0, 40 }, { 0, 2, 40, 80 }, { 0, 3, 80, 100 }, { 1, 1, 0, 10 } };
    expect_ranges(&p, flat, 4);
    expect_transfer(&p, 0, 0, 0, 2);
    expect_transfer(&p, 1, 0, 0, 3);

    pp.devices_per_node = 2;
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), 0);
    want_range hier[] = { { 0, 0, 0, 40 }, { 0, 1, 40, 70 }, { 0, 2, 70, 100 }, { 1, 1, 0, 10 } };
    expect_ranges(&p, hier, 4);
    uint64_t dl[4] = { 40, 40, 30, 0 };
    expect_loads(&p, dl);
    ck_assert_uint_eq(p.num_transfers, 2);
    expect_transfer(&p, 0, 0, 0, 1);
    expect_transfer(&p, 1, 0, 0, 2);
    llep__plan_fini(&p);
}
END_TEST

/* Loads { 60, 5, 0, 0 }, m = 1000, two nodes of two: cap 16; e0 keeps [0, 16) and spills 44.
 * Device 1 (node 0, room 11) and device 2 (node 1, room 16) both offer small chunks, so
 * nobody qualifies and the forced assignment goes, as in the flat plan, to the least-loaded
 * device of all: device 2 (eff 0), not device 1 on the native node (eff 5). */
START_TEST(hierarchical_forced_goes_to_least_loaded)
{
    llep_plan p;
    uint64_t loads[4] = { 60, 5, 0, 0 };
    llep_plan_params pp = params(1.0, 1.3, 1000, LLEP_POLICY_LLEP);

    pp.devices_per_node = 2;
    plan_or_die(&p, 4, 4, loads, &pp);
    ck_assert_uint_eq(p.capacity, 16);
    want_range w[] = { { 0, 0, 0, 16 }, { 0, 2, 16, 60 }, { 1, 1, 0, 5 } };
    expect_ranges(&p, w, 3);
    uint64_t dl[4] = { 16, 5, 44, 0 };
    expect_loads(&p, dl);
    llep__plan_fini(&p);
}
END_TEST

/* A device count per node must divide P; a refused call keeps the previous plan. */
START_TEST(hierarchical_bad_node_size)
{
    llep_plan p;
    uint64_t loads[8] = { 100, 0, 0, 0, 0, 0, 0, 0 };
    llep_plan_params pp = params(1.0, 1.3, 1, LLEP_POLICY_AUTO);
    char err[128];

    plan_or_die(&p, 8, 4, loads, &pp);
    uint64_t hash = llep__plan_hash(&p);
    uint64_t other[8] = { 0, 0, 0, 0, 0, 0, 0, 100 };
    pp.devices_per_node = 3;
    ck_assert_int_eq(llep__plan_compute(&p, other, &pp), -EINVAL);
    pp.devices_per_node = 8;
    ck_assert_int_eq(llep__plan_compute(&p, other, &pp), -EINVAL);
    ck_assert_uint_eq(llep__plan_hash(&p), hash);
    ck_assert_int_eq(llep__plan_validate(&p, err, sizeof(err)), 0);
    /* The default is flat. */
    llep__plan_params_default(&pp);
    ck_assert_uint_eq(pp.devices_per_node, 0);
    llep__plan_fini(&p);
}
END_TEST

/* Divisors of np other than 0 and np, chosen at random; 0 when np has none. */
static uint32_t random_node_size(uint32_t np) {
    uint32_t div[64], k = 0;

    for (uint32_t d = 1; d < np; d++)
        if (np % d == 0)
            div[k++] = d;
    return k ? div[rnd_below(k)] : 0;
}

static llep_plan_params random_params(void) {
    llep_plan_params pp = params(1.0 + (double)rnd_below(4) / 4, 1.0 + (double)rnd_below(8) / 8,
                                 rnd_below(4) == 0 ? 0 : 1 + rnd_below(2048),
                                 rnd_below(3) == 0 ? LLEP_POLICY_LLEP : LLEP_POLICY_AUTO);
    pp.scale_min_tokens = rnd_below(4) == 0;
    return pp;
}

/* Field by field: a range's padding bytes are not part of the plan. */
static int same_ranges(const llep_plan *a, const llep_plan *b) {
    if (a->num_ranges != b->num_ranges)
        return 0;
    for (uint32_t i = 0; i < a->num_ranges; i++)
        if (a->ranges[i].device != b->ranges[i].device ||
            a->ranges[i].start != b->ranges[i].start || a->ranges[i].end != b->ranges[i].end)
            return 0;
    return 1;
}

static void expect_same_plan(const llep_plan *a, const llep_plan *b) {
    ck_assert_int_eq(a->mode, b->mode);
    ck_assert_uint_eq(a->num_ranges, b->num_ranges);
    ck_assert_uint_eq(a->num_transfers, b->num_transfers);
    ck_assert_mem_eq(a->range_off, b->range_off, (a->num_experts + 1) * sizeof(*a->range_off));
    ck_assert(same_ranges(a, b));
    ck_assert_mem_eq(a->transfers, b->transfers, a->num_transfers * sizeof(*a->transfers));
    ck_assert_mem_eq(a->device_loads, b->device_loads, a->num_devices * sizeof(*a->device_loads));
    ck_assert_uint_eq(llep__plan_hash(a), llep__plan_hash(b));
}

/* devices_per_node 0, P and 1 all give today's flat plan, byte for byte. */
START_TEST(hierarchical_degenerate_is_flat)
{
    static const uint32_t devs[] = { 1, 2, 3, 4, 8, 16, 64 };
    uint64_t loads[4096];

    rng_state = 0xf1a7u + (uint64_t)_i;
    for (int iter = 0; iter < 1000; iter++) {
        uint32_t np = devs[rnd_below(sizeof(devs) / sizeof(devs[0]))];
        uint32_t n = np * (1 + (uint32_t)rnd_below(np >= 16 ? 6 : 24));
        llep_plan_params pp = random_params();
        llep_plan flat, q;

        make_loads((enum shape)rnd_below(NSHAPES), loads, n, np);
        plan_or_die(&flat, n, np, loads, &pp);
        ck_assert_int_eq(llep__plan_init(&q, n, np), 0);
        const uint32_t sizes[] = { np, 1 };
        for (int i = 0; i < 2; i++) {
            pp.devices_per_node = sizes[i];
            ck_assert_int_eq(llep__plan_compute(&q, loads, &pp), 0);
            expect_same_plan(&flat, &q);
        }
        llep__plan_fini(&q);
        llep__plan_fini(&flat);
    }
}
END_TEST

/* Hierarchical plans against the literal reference, on random node sizes. */
START_TEST(hierarchical_random_matches_reference)
{
    static const uint32_t devs[] = { 4, 6, 8, 12, 16, 64 };
    uint64_t loads[4096];
    char err[256];
    uint32_t llep_runs = 0;

    rng_state = 0x41e7u + (uint64_t)_i;
    for (int iter = 0; iter < 2000; iter++) {
        uint32_t np = devs[rnd_below(sizeof(devs) / sizeof(devs[0]))];
        uint32_t n = np * (1 + (uint32_t)rnd_below(np >= 16 ? 6 : 24));
        llep_plan_params pp = random_params();
        llep_plan p;

        pp.devices_per_node = random_node_size(np);
        make_loads((enum shape)rnd_below(NSHAPES), loads, n, np);
        plan_or_die(&p, n, np, loads, &pp);
        ck_assert_msg(llep__plan_validate(&p, err, sizeof(err)) == 0, "%s", err);
        ck_assert(max_of(p.device_loads, np) <= max_of(p.native_loads, np));
        if (p.mode == LLEP_PLAN_LLEP) {
            llep_runs++;
            check_against_reference(&p, llep__plan_min_tokens(&p, &pp), pp.devices_per_node);
        }
        llep__plan_fini(&p);
    }
    ck_assert_uint_gt(llep_runs, 500);
}
END_TEST

/* ---- plan hash -------------------------------------------------------------------------- */

/* FNV-1a 64 written out on a byte buffer, to check llep__plan_hash() against. */
static uint64_t fnv1a(const uint8_t *b, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static size_t put_le(uint8_t *b, size_t at, uint64_t v) {
    for (int i = 0; i < 8; i++)
        b[at + i] = (uint8_t)(v >> (8 * i));
    return at + 8;
}

/* The plan of native_takes_part_then_all, serialised by hand in the documented order. */
START_TEST(hash_is_fnv1a_of_the_result)
{
    llep_plan p;
    uint64_t loads[4] = { 60, 20, 10, 10 };
    llep_plan_params pp = params(1.0, 1.3, 1, LLEP_POLICY_AUTO);
    uint8_t buf[1024];
    size_t n = 0;

    plan_or_die(&p, 4, 2, loads, &pp);
    const uint64_t head[] = { 4, 2, LLEP_PLAN_LLEP, 50, 100, 60, 20, 10, 10, 0, 2, 3, 4, 5 };
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); i++)
        n = put_le(buf, n, head[i]);
    const uint64_t ranges[][3] = { { 0, 0, 30 }, { 1, 30, 60 }, { 0, 0, 20 }, { 1, 0, 10 },
                                   { 1, 0, 10 } };
    for (size_t i = 0; i < 5; i++)
        for (int j = 0; j < 3; j++)
            n = put_le(buf, n, ranges[i][j]);
    const uint64_t tail[] = { 1, 0, 0, 1 }; /* one transfer: expert 0, 0 -> 1 */
    for (size_t i = 0; i < 4; i++)
        n = put_le(buf, n, tail[i]);
    ck_assert_uint_eq(llep__plan_hash(&p), fnv1a(buf, n));
    llep__plan_fini(&p);
}
END_TEST

/* Two plans made apart from the same loads hash alike; any change to a load, a range or a
 * transfer changes the hash. */
START_TEST(hash_tells_plans_apart)
{
    uint64_t loads[16];
    llep_plan a, b;
    llep_plan_params pp = params(1.0, 1.3, 8, LLEP_POLICY_AUTO);

    rng_state = 0xa5a5u;
    make_loads(ONE_HOT, loads, 16, 4);
    plan_or_die(&a, 16, 4, loads, &pp);
    plan_or_die(&b, 16, 4, loads, &pp);
    uint64_t h = llep__plan_hash(&a);
    ck_assert_uint_eq(llep__plan_hash(&b), h);

    /* A cold expert's load one higher: a different input, a different hash. */
    uint32_t cold = 0;
    while (loads[cold] == max_of(loads, 16))
        cold++;
    loads[cold]++;
    ck_assert_int_eq(llep__plan_compute(&b, loads, &pp), 0);
    ck_assert_uint_ne(llep__plan_hash(&b), h);
    loads[cold]--;
    ck_assert_int_eq(llep__plan_compute(&b, loads, &pp), 0);
    ck_assert_uint_eq(llep__plan_hash(&b), h);

    /* The same loads placed differently. */
    ck_assert_uint_gt(b.num_transfers, 0);
    b.ranges[0].device ^= 1;
    ck_assert_uint_ne(llep__plan_hash(&b), h);
    b.ranges[0].device ^= 1;
    b.ranges[0].end++;
    ck_assert_uint_ne(llep__plan_hash(&b), h);
    b.ranges[0].end--;
    b.transfers[0].dst ^= 1;
    ck_assert_uint_ne(llep__plan_hash(&b), h);
    b.transfers[0].dst ^= 1;
    ck_assert_uint_eq(llep__plan_hash(&b), h);

    llep__plan_fini(&a);
    llep__plan_fini(&b);

    /* The flat and hierarchical plans of hierarchical_prefers_own_node: same loads, same
     * totals, different helpers. */
    uint64_t hand[4] = { 100, 10, 0, 0 };
    pp = params(1.5, 1.3, 1, LLEP_POLICY_AUTO);
    plan_or_die(&a, 4, 4, hand, &pp);
    pp.devices_per_node = 2;
    plan_or_die(&b, 4, 4, hand, &pp);
    ck_assert(!same_ranges(&a, &b));
    ck_assert_uint_ne(llep__plan_hash(&a), llep__plan_hash(&b));
    llep__plan_fini(&a);
    llep__plan_fini(&b);
}
END_TEST

/* ---- cross-node traffic ----------------------------------------------------------------- */

/* The hand-worked plans of hierarchical_prefers_own_node, each expert's slots split evenly
 * over two home nodes (e0: node 0 ranks [0, 50), node 1 [50, 100); e1: [0, 5) and [5, 10)).
 * Flat: device 2 (node 1) computes e0 [40, 80), of which [40, 50) is node 0's: 10 rows; e1
 * runs on device 1 (node 0), so node 1's 5 cross: 15 rows; both transfers (0 -> 2, 0 -> 3)
 * leave node 0. Hierarchical: device 1 (node 0) computes e0 [40, 70), of which [50, 70) is
 * node 1's: 20 rows, plus e1's 5: 25 rows; only 0 -> 2 crosses. */
START_TEST(node_traffic_by_hand)
{
    llep_plan p;
    uint64_t loads[4] = { 100, 10, 0, 0 };
    uint64_t n0[4] = { 50, 5, 0, 0 }, n1[4] = { 50, 5, 0, 0 };
    const uint64_t *const nodes[2] = { n0, n1 };
    llep_plan_params pp = params(1.5, 1.3, 1, LLEP_POLICY_AUTO);
    uint64_t rows;
    uint32_t transfers;

    plan_or_die(&p, 4, 4, loads, &pp);
    ck_assert_int_eq(llep__plan_node_traffic(&p, 2, nodes, 2, &rows, &transfers), 0);
    ck_assert_uint_eq(rows, 15);
    ck_assert_uint_eq(transfers, 2);
    pp.devices_per_node = 2;
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), 0);
    ck_assert_int_eq(llep__plan_node_traffic(&p, 2, nodes, 2, &rows, &transfers), 0);
    ck_assert_uint_eq(rows, 25);
    ck_assert_uint_eq(transfers, 1);

    /* Sizes that disagree. */
    ck_assert_int_eq(llep__plan_node_traffic(&p, 2, nodes, 1, &rows, &transfers), -EINVAL);
    ck_assert_int_eq(llep__plan_node_traffic(&p, 3, nodes, 1, &rows, &transfers), -EINVAL);
    ck_assert_int_eq(llep__plan_node_traffic(&p, 0, nodes, 2, &rows, &transfers), -EINVAL);
    ck_assert_int_eq(llep__plan_node_traffic(&p, 2, NULL, 2, &rows, &transfers), -EINVAL);
    n1[0] = 49;
    ck_assert_int_eq(llep__plan_node_traffic(&p, 2, nodes, 2, &rows, &transfers), -EINVAL);
    n1[0] = UINT64_MAX - 10; /* sums past 2^64 back to a small number */
    ck_assert_int_eq(llep__plan_node_traffic(&p, 2, nodes, 2, &rows, &transfers), -EINVAL);
    /* One node: nothing crosses. */
    const uint64_t *const one[1] = { loads };
    ck_assert_int_eq(llep__plan_node_traffic(&p, 4, one, 1, &rows, &transfers), 0);
    ck_assert_uint_eq(rows, 0);
    ck_assert_uint_eq(transfers, 0);
    llep__plan_fini(&p);
}
END_TEST

/* Rank by rank: the home node of each slot and the device computing it. */
static void brute_traffic(const llep_plan *p, uint32_t per_node, const uint64_t *const *nl,
                          uint32_t k, uint64_t *ret_rows, uint32_t *ret_transfers) {
    uint64_t rows = 0;
    uint32_t transfers = 0;

    for (uint32_t x = 0; x < p->num_experts; x++)
        for (uint64_t t = 0; t < p->loads[x]; t++) {
            uint32_t home = 0;
            uint64_t upto = nl[0][x];
            while (t >= upto)
                upto += nl[++home][x];
            uint32_t i = p->range_off[x];
            while (t >= p->ranges[i].end)
                i++;
            rows += p->ranges[i].device / per_node != home;
        }
    for (uint32_t t = 0; t < p->num_transfers; t++)
        transfers += p->transfers[t].src / per_node != p->transfers[t].dst / per_node;
    *ret_rows = rows;
    *ret_transfers = transfers;
}

/* Random plans (flat and hierarchical) and random splits over home nodes, some nodes with
 * nothing of an expert, against the rank-by-rank count. */
START_TEST(node_traffic_random_matches_brute_force)
{
    static const uint32_t devs[] = { 2, 4, 6, 8, 16 };
    uint64_t loads[512], nl[16][512];
    const uint64_t *nodes[16];

    rng_state = 0x7a11u;
    for (int iter = 0; iter < 400; iter++) {
        uint32_t np = devs[rnd_below(sizeof(devs) / sizeof(devs[0]))];
        uint32_t n = np * (1 + (uint32_t)rnd_below(8));
        uint32_t per = random_node_size(np), k = np / per;
        llep_plan_params pp = params(1.0, 1.3, rnd_below(64), LLEP_POLICY_LLEP);
        llep_plan p;

        pp.devices_per_node = rnd_below(2) ? per : 0;
        for (uint32_t e = 0; e < n; e++) {
            loads[e] = 0;
            for (uint32_t j = 0; j < k; j++) {
                nl[j][e] = rnd_below(4) == 0 ? 0 : rnd_below(e % 5 == 0 ? 3000 : 200);
                loads[e] += nl[j][e];
            }
        }
        for (uint32_t j = 0; j < k; j++)
            nodes[j] = nl[j];
        plan_or_die(&p, n, np, loads, &pp);
        uint64_t rows, want_rows;
        uint32_t transfers, want_transfers;
        ck_assert_int_eq(llep__plan_node_traffic(&p, per, nodes, k, &rows, &transfers), 0);
        brute_traffic(&p, per, nodes, k, &want_rows, &want_transfers);
        ck_assert_uint_eq(rows, want_rows);
        ck_assert_uint_eq(transfers, want_transfers);
        llep__plan_fini(&p);
    }
}
END_TEST

static Suite *plan_suite(void) {
    Suite *s = suite_create("plan");
    TCase *hand = tcase_create("hand-worked");
    TCase *rnd_tc = tcase_create("random");

    tcase_add_test(hand, balanced_runs_ep);
    tcase_add_test(hand, native_takes_part_then_all);
    tcase_add_test(hand, native_full_spills_everything);
    tcase_add_test(hand, spill_over_several_helpers);
    tcase_add_test(hand, small_chunks_force_assignment);
    tcase_add_test(hand, scaled_min_tokens_spread_small_batches);
    tcase_add_test(hand, forced_assignment_twice);
    tcase_add_test(hand, small_final_chunk_is_taken);
    tcase_add_test(hand, ties_visit_lower_expert_first);
    tcase_add_test(hand, single_device_stays_native);
    tcase_add_test(hand, all_zero_is_ep);
    tcase_add_test(hand, policy_ep_never_spills);
    tcase_add_test(hand, one_expert_per_device);
    tcase_add_test(hand, bad_arguments);
    tcase_add_test(hand, validator_catches_corruption);
    tcase_add_test(hand, hierarchical_prefers_own_node);
    tcase_add_test(hand, hierarchical_forced_goes_to_least_loaded);
    tcase_add_test(hand, hierarchical_bad_node_size);
    tcase_add_test(hand, hash_is_fnv1a_of_the_result);
    tcase_add_test(hand, hash_tells_plans_apart);
    tcase_add_test(hand, node_traffic_by_hand);
    suite_add_tcase(s, hand);

    /* six forked runs of 2,000 vectors each, different seeds */
    tcase_set_timeout(rnd_tc, 300);
    tcase_add_loop_test(rnd_tc, random_invariants, 0, 6);
    tcase_add_loop_test(rnd_tc, hierarchical_degenerate_is_flat, 0, 2);
    tcase_add_loop_test(rnd_tc, hierarchical_random_matches_reference, 0, 3);
    tcase_add_test(rnd_tc, node_traffic_random_matches_brute_force);
    suite_add_tcase(s, rnd_tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(plan_suite(), CK_NORMAL);
}
