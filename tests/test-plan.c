/* Tests of the Least-Loaded Assignment planner (daemon/plan.c).
 *
 * Three kinds of check: small cases worked out by hand from DESIGN.md section 2; a literal
 * transcription of that section (ref_lla below, deliberately naive) that the fast planner must
 * match on thousands of random load vectors; and invariants over the same vectors. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* The naive reading: sort the other devices by effective load on every spill step and scan
 * them in that order for the first qualifying one. Signed 128-bit arithmetic so "cap - eff"
 * may go negative exactly as the text says. */
static void ref_lla(const uint64_t *l, uint32_t n, uint32_t np, uint64_t cap, uint64_t m,
                    ref_plan *rp) {
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
            uint32_t ord[64], k = 0;
            for (uint32_t d = 0; d < np; d++)
                if (d != nat)
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
            int found = 0;
            for (uint32_t i = 0; i < k && !found; i++) {
                uint32_t g = ord[i];
                __int128 c = (__int128)cap - (__int128)(assigned[g] + pending[g]);
                if (c > (__int128)r)
                    c = r;
                if (c <= 0 || ((uint64_t)c < m && r > (uint64_t)c))
                    continue;
                ref_give(rp, assigned, e, g, o, (uint64_t)c);
                o += (uint64_t)c;
                r -= (uint64_t)c;
                found = 1;
            }
            if (!found) {
                ref_give(rp, assigned, e, ord[0], o, r);
                r = 0;
            }
        }
    }
    for (uint32_t d = 0; d < np; d++)
        rp->dev_load[d] = assigned[d];
}

/* ---- random load vectors ---------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void) {
    /* splitmix64: tiny, seedable, good enough for test inputs */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rnd_below(uint64_t n) {
    return n ? rnd() % n : 0;
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

static void check_against_reference(const llep_plan *p, uint64_t m) {
    static ref_plan rp;

    ref_lla(p->loads, p->num_experts, p->num_devices, p->capacity, m, &rp);
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
            check_against_reference(&p, llep__plan_min_tokens(&p, &pp));
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
    suite_add_tcase(s, hand);

    /* six forked runs of 2,000 vectors each, different seeds */
    tcase_set_timeout(rnd_tc, 300);
    tcase_add_loop_test(rnd_tc, random_invariants, 0, 6);
    suite_add_tcase(s, rnd_tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(plan_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
