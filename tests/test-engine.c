/* Tests of the step engine (daemon/engine/engine.c), its CPU backend and the CPU kernels, against a
 * float64 reference of DESIGN.md section 4 written out plainly below. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cost.h"
#include "devices.h"
#include "engine.h"
#include "moe-cpu.h"
#include "plan-cost.h"
#include "plan.h"
#include "ref-moe.h"
#include "test-data.h"

#define TOL_F32 1e-5
#define TOL_BF16 1e-2
#define TOL_EP_LLEP 1e-6

/* ---- a test case: shapes, weights, routing, and what the engine is fed ---- */

enum scenario { BALANCED, SKEW };

typedef struct case_spec {
    uint32_t n, k, d, h, p;
    enum llep_dtype dtype;
    enum llep_act act;
    int biases;
    enum scenario scen;
    double hot_share;      /* SKEW: share of slots into the hot experts */
    uint32_t hot;          /* SKEW: hot experts 0..hot-1 */
    uint32_t max_tokens;   /* tokens per home device drawn in [0, max_tokens] */
    uint64_t seed;
} case_spec;

typedef struct test_case {
    case_spec s;
    size_t esz;
    test_weights wt;     /* float64 values and the storage-type copies given to the engine */
    test_tokens tk;      /* of the P home devices; y is the engine's output */
} test_case;

/* The expert a slot is routed to under the case's scenario. */
static int32_t route(void *arg, uint64_t *rng) {
    const case_spec *s = &((test_case *)arg)->s;
    if (s->scen == SKEW && s->hot < s->n) {
        if (rng_unit(rng) < s->hot_share)
            return (int32_t)rng_below(rng, s->hot);
        return (int32_t)(s->hot + rng_below(rng, s->n - s->hot));
    }
    return (int32_t)rng_below(rng, s->n);
}

/* The float64 reference (ref-moe.c) over each home device's tokens. */
static void make_reference(test_case *c) {
    const case_spec *s = &c->s;
    llep_ref r = weights_ref(&c->wt, s->d, s->h, s->act);

    tokens_reference(&c->tk, &r, s->k);
}

static test_case *case_new(const case_spec *spec) {
    test_case *c = calloc(1, sizeof(*c));
    uint64_t rng = spec->seed;
    ck_assert(c);
    c->s = *spec;
    const case_spec *s = &c->s;
    size_t n = s->n, d = s->d, h = s->h;
    enum llep_dtype t = s->dtype;
    c->esz = llep__dtype_size(t);

    weights_fill(&c->wt, &rng, n, d, h, t, s->biases);
    tokens_new(&c->tk, s->p);
    for (uint32_t p = 0; p < s->p; p++)
        tokens_draw(&c->tk, p, rng_below(&rng, s->max_tokens + 1), &rng, s->k, s->d, t, route,
                    c);
    return c;
}

static void case_free(test_case *c) {
    weights_free(&c->wt);
    tokens_free(&c->tk);
    free(c);
}

static llep_engine *case_engine(const test_case *c, uint64_t budget) {
    llep_engine_config cfg;
    llep_engine *e = NULL;
    char err[256] = "";

    llep__engine_config_default(&cfg);
    weights_config(&c->wt, &cfg, 0, c->s.n, c->s.k, c->s.d, c->s.h, c->s.dtype, c->s.act, c->s.p);
    cfg.mem_budget = budget;
    int r = llep__engine_new(&cfg, &e, err, sizeof(err));
    ck_assert_msg(r == 0, "engine_new: %d %s", r, err);
    return e;
}

static void batches_of(const test_case *c, llep_engine_batch *b) {
    for (uint32_t p = 0; p < c->s.p; p++)
        b[p] = tokens_batch(&c->tk, p, c->tk.y[p]);
}

/* Fills every output with NaN so a row the engine does not write fails the comparison. */
static void poison(test_case *c) {
    for (uint32_t p = 0; p < c->s.p; p++) {
        size_t n = (size_t)c->tk.tokens[p] * c->s.d;
        for (size_t i = 0; i < n; i++)
            store(c->tk.y[p], i, NAN, c->s.dtype);
    }
}

static int all_poisoned(const test_case *c) {
    for (uint32_t p = 0; p < c->s.p; p++)
        for (size_t i = 0; i < (size_t)c->tk.tokens[p] * c->s.d; i++)
            if (!isnan(load(c->tk.y[p], i, c->s.dtype)))
                return 0;
    return 1;
}

/* Relative L2 error of the output against the reference; infinity if anything is not finite. */
static double rel_err_ref(const test_case *c) {
    double num = 0, den = 0;
    for (uint32_t p = 0; p < c->s.p; p++)
        for (size_t i = 0; i < (size_t)c->tk.tokens[p] * c->s.d; i++) {
            double y = load(c->tk.y[p], i, c->s.dtype), r = c->tk.ref[p][i];
            if (!isfinite(y))
                return INFINITY;
            num += (y - r) * (y - r);
            den += r * r;
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double **copy_outputs(const test_case *c) {
    double **o = calloc(c->s.p, sizeof(*o));
    ck_assert(o);
    for (uint32_t p = 0; p < c->s.p; p++) {
        size_t n = (size_t)c->tk.tokens[p] * c->s.d;
        o[p] = malloc((n + 1) * sizeof(double));
        ck_assert(o[p]);
        for (size_t i = 0; i < n; i++)
            o[p][i] = load(c->tk.y[p], i, c->s.dtype);
    }
    return o;
}

static double rel_diff(const test_case *c, double **a) {
    double num = 0, den = 0;
    for (uint32_t p = 0; p < c->s.p; p++)
        for (size_t i = 0; i < (size_t)c->tk.tokens[p] * c->s.d; i++) {
            double y = load(c->tk.y[p], i, c->s.dtype);
            num += (y - a[p][i]) * (y - a[p][i]);
            den += a[p][i] * a[p][i];
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void free_outputs(const test_case *c, double **o) {
    for (uint32_t p = 0; p < c->s.p; p++)
        free(o[p]);
    free(o);
}

/* ---- expected memory, derived from the plan alone ---- */

static uint64_t al64(uint64_t v) {
    return (v + 63) / 64 * 64;
}

static uint64_t expert_bytes_of(const case_spec *s) {
    uint64_t es = llep__dtype_size(s->dtype), b = 3 * al64((uint64_t)s->d * s->h * es);
    if (s->biases)
        b += 2 * al64((uint64_t)s->h * es) + al64((uint64_t)s->d * es);
    return b;
}

/* Native weights, received experts, dispatched rows (storage type), their float32 results,
 * and the FFN scratch for the device's largest chunk. */
static uint64_t expected_peak(const case_spec *s, const llep_plan *pl, uint32_t d) {
    uint64_t eb = expert_bytes_of(s), es = llep__dtype_size(s->dtype);
    uint64_t bytes = (uint64_t)(s->n / s->p) * eb, rows = 0, max_chunk = 0;
    for (uint32_t t = 0; t < pl->num_transfers; t++)
        if (pl->transfers[t].dst == d)
            bytes += eb;
    for (uint32_t i = 0; i < pl->num_ranges; i++)
        if (pl->ranges[i].device == d) {
            uint64_t len = pl->ranges[i].end - pl->ranges[i].start;
            rows += len;
            if (len > max_chunk)
                max_chunk = len;
        }
    llep_ffn_shape sh = { s->d, s->h, s->dtype, s->act, 1.702f, 7.0f };
    bytes += rows * s->d * es + rows * s->d * 4 + llep__ffn_scratch_bytes(&sh, (uint32_t)max_chunk);
    return bytes;
}

/* ---- running a case ---- */

typedef struct run_result {
    llep_engine_stats st;
    llep_engine_device_stats dev[8];
    llep_plan_params params;
} run_result;

static void check_stats(const test_case *c, llep_engine *e, const llep_engine_stats *st) {
    const llep_plan *pl = llep__engine_plan(e);
    uint64_t slots = 0;
    ck_assert_ptr_nonnull(pl);
    for (uint32_t p = 0; p < c->s.p; p++)
        slots += (uint64_t)c->tk.tokens[p] * c->s.k;
    ck_assert_uint_eq(st->slots, slots);
    ck_assert_uint_eq(st->num_devices, c->s.p);
    ck_assert_uint_eq(st->transfers, pl->num_transfers);
    ck_assert_uint_eq(st->weight_bytes_moved, (uint64_t)pl->num_transfers * expert_bytes_of(&c->s));
    ck_assert_uint_eq(llep__engine_expert_bytes(e), expert_bytes_of(&c->s));
    uint64_t max_busy = 0;
    for (uint32_t d = 0; d < c->s.p; d++) {
        const llep_engine_device_stats *ds = &st->devices[d];
        ck_assert_uint_eq(ds->rows, pl->device_loads[d]);
        ck_assert_uint_eq(ds->peak_bytes, expected_peak(&c->s, pl, d));
        ck_assert_uint_eq(ds->held_bytes, (uint64_t)(c->s.n / c->s.p) * expert_bytes_of(&c->s));
        if (ds->rows > 0)
            ck_assert_uint_gt(ds->busy_ns, 0);
        if (ds->busy_ns > max_busy)
            max_busy = ds->busy_ns;
    }
    ck_assert_uint_eq(st->makespan_ns, max_busy);
}

/* Runs one policy on a poisoned output and checks it against the reference. */
static void run_policy(test_case *c, llep_engine *e, enum llep_policy pol, uint64_t min_tokens,
                       llep_engine_stats *ret) {
    llep_engine_batch b[8];
    llep_plan_params pp;
    llep__plan_params_default(&pp);
    pp.policy = pol;
    pp.min_tokens = min_tokens;
    batches_of(c, b);
    poison(c);
    int r = llep__engine_step(e, b, &pp, ret);
    ck_assert_msg(r == 0, "step: %d %s", r, llep__engine_error(e));
    double err = rel_err_ref(c), tol = c->s.dtype == LLEP_DTYPE_F32 ? TOL_F32 : TOL_BF16;
    ck_assert_msg(err <= tol, "policy %d: relative L2 error %g > %g (N %u K %u D %u H %u P %u "
                  "dtype %d act %d biases %d)", pol, err, tol, c->s.n, c->s.k, c->s.d, c->s.h,
                  c->s.p, c->s.dtype, c->s.act, c->s.biases);
    check_stats(c, e, ret);
    if (pol == LLEP_POLICY_EP)
        ck_assert_int_eq(ret->mode, LLEP_PLAN_EP);
    if (pol == LLEP_POLICY_LLEP && ret->slots > 0)
        ck_assert_int_eq(ret->mode, LLEP_PLAN_LLEP);
}

/* Worst EP-vs-LLEP difference and transfers seen in this test's process. */
static double worst_ep_llep;
static uint32_t transfers_seen;

/* EP, forced LLEP with a small minimum chunk (so small batches spill too), and AUTO: each
 * against the reference, and LLEP against EP. */
static void run_case(const case_spec *s) {
    test_case *c = case_new(s);
    llep_engine *e = case_engine(c, 0);
    llep_engine_stats st;
    make_reference(c);

    run_policy(c, e, LLEP_POLICY_EP, 1024, &st);
    double **ep = copy_outputs(c);
    run_policy(c, e, LLEP_POLICY_LLEP, 1 + rng_next(&(uint64_t){ s->seed }) % 8, &st);
    transfers_seen += st.transfers;
    double diff = rel_diff(c, ep);
    if (diff > worst_ep_llep)
        worst_ep_llep = diff;
    double tol = s->dtype == LLEP_DTYPE_F32 ? TOL_EP_LLEP : TOL_BF16;
    ck_assert_msg(diff <= tol, "EP vs LLEP: relative L2 difference %g > %g", diff, tol);
    run_policy(c, e, LLEP_POLICY_AUTO, 1024, &st);
    free_outputs(c, ep);
    llep__engine_free(e);
    case_free(c);
}

/* A random case for P devices; shapes up to D, H 256, N 64, K 8. */
static case_spec random_spec(uint64_t seed, uint32_t p, enum llep_dtype dt, enum scenario scen) {
    uint64_t rng = seed;
    case_spec s = { 0 };
    uint32_t m = 1 + rng_below(&rng, 64 / p);
    s.p = p;
    s.n = m * p;
    s.k = 1 + rng_below(&rng, 8);
    s.d = 1 + rng_below(&rng, 256);
    s.h = 1 + rng_below(&rng, 256);
    /* Keep the float64 reference affordable under the sanitizers. */
    while ((uint64_t)s.d * s.h > 24000) {
        if (s.d > s.h)
            s.d /= 2;
        else
            s.h /= 2;
    }
    s.dtype = dt;
    s.act = rng_below(&rng, 2) ? LLEP_ACT_SWIGLU_OAI : LLEP_ACT_SWIGLU;
    s.biases = (int)rng_below(&rng, 2);
    s.scen = scen;
    static const double shares[] = { 0.3, 0.5, 0.8, 0.95 };
    s.hot_share = shares[rng_below(&rng, 4)];
    static const uint32_t hots[] = { 16, 4, 1 };
    s.hot = hots[rng_below(&rng, 3)];
    if (s.hot > s.n)
        s.hot = 1;
    s.max_tokens = 1 + rng_below(&rng, 48 / s.k + 4);
    s.seed = rng_next(&rng);
    return s;
}

static const uint32_t device_counts[] = { 1, 2, 3, 4, 8 };

START_TEST(test_reference_f32) {
    uint32_t p = device_counts[_i % 5];
    enum scenario scen = _i / 5 % 2 ? SKEW : BALANCED;
    case_spec s = random_spec(0x1000 + _i, p, LLEP_DTYPE_F32, scen);
    run_case(&s);
}
END_TEST

START_TEST(test_reference_bf16) {
    uint32_t p = device_counts[_i % 5];
    case_spec s = random_spec(0x2000 + _i, p, LLEP_DTYPE_BF16, _i % 2 ? SKEW : BALANCED);
    run_case(&s);
}
END_TEST

/* Every activation with and without biases, in both storage types, on a skewed 4-device
 * layer, so none of the combinations is left to chance. */
START_TEST(test_activation_bias_matrix) {
    case_spec s = { .n = 16, .k = 4, .d = 40, .h = 72, .p = 4, .scen = SKEW,
                    .hot_share = 0.8, .hot = 1, .max_tokens = 24 };
    s.act = _i & 1 ? LLEP_ACT_SWIGLU_OAI : LLEP_ACT_SWIGLU;
    s.biases = _i >> 1 & 1;
    s.dtype = _i >> 2 & 1 ? LLEP_DTYPE_BF16 : LLEP_DTYPE_F32;
    s.seed = 0x3000 + _i;
    transfers_seen = 0;
    run_case(&s);
    ck_assert_uint_gt(transfers_seen, 0);
}
END_TEST

/* Skewed routing must actually make LLEP move weights, or the tests above prove little. */
START_TEST(test_skew_spills) {
    transfers_seen = 0;
    for (uint32_t i = 0; i < 4; i++) {
        case_spec s = random_spec(0x4000 + i, 1u << (i % 3 + 1), LLEP_DTYPE_F32, SKEW);
        s.hot_share = 0.95;
        s.hot = 1;
        s.max_tokens = 40;
        run_case(&s);
    }
    ck_assert_uint_gt(transfers_seen, 0);
    ck_assert_msg(worst_ep_llep <= TOL_EP_LLEP, "EP vs LLEP %g", worst_ep_llep);
    fprintf(stderr, "test_skew_spills: %u weight transfers, worst EP vs LLEP relative L2 "
            "difference %.3g\n", transfers_seen, worst_ep_llep);
}
END_TEST

/* Plans of the cost-aware planner run as exactly as LLA's: each step against the float64
 * reference and against EP, with the replica cache off and on, three steps each (later ones
 * find copies in the cache). Two models: the nominal CPU model, set on the engine's devices
 * (the engine's own path to a model), and one with nearly free copies and no fixed cost per
 * chunk, given in the parameters, under which the refinement spills even these small layers.
 * The test fails if no step ran a refined plan with weight transfers. */
START_TEST(test_cost_planner_exact) {
    static uint32_t refined_with_transfers;
    llep_cost_model cheap;
    ck_assert_int_eq(llep__cost_nominal("cpu", &cheap), 0);
    cheap.chunk_fixed_ns = 0;
    for (int k = LLEP_LINK_GPU; k < LLEP_LINK_KINDS; k++)
        cheap.link[k] = (llep_cost_link){ 0, 1e-9 };
    for (uint32_t i = 0; i < 6; i++) {
        case_spec s = random_spec(0x6000 + i, 2u << (i % 3), LLEP_DTYPE_F32, SKEW);
        s.hot_share = 0.9;
        s.hot = 1;
        s.max_tokens = 40;
        test_case *c = case_new(&s);
        make_reference(c);
        llep_engine_config cfg;
        llep_engine *e = NULL;
        char err[256] = "";
        llep__engine_config_default(&cfg);
        weights_config(&c->wt, &cfg, 0, s.n, s.k, s.d, s.h, s.dtype, s.act, s.p);
        cfg.replica_cache = i % 2 ? LLEP_DEVICES_CACHE_AUTO : 0;
        ck_assert_msg(llep__engine_new(&cfg, &e, err, sizeof(err)) == 0, "%s", err);
        llep_cost_model cpu;
        ck_assert_int_eq(llep__cost_nominal("cpu", &cpu), 0);
        llep__devices_set_cost(llep__engine_devices(e), &cpu);
        llep_engine_stats st;
        run_policy(c, e, LLEP_POLICY_EP, 1024, &st);
        double **ep = copy_outputs(c);
        for (int step = 0; step < 6; step++) {
            llep_engine_batch b[8];
            llep_plan_params pp;
            llep__plan_params_default(&pp);
            pp.planner = LLEP_PLANNER_COST;
            pp.policy = step % 2 ? LLEP_POLICY_AUTO : LLEP_POLICY_LLEP;
            if (step >= 3)
                pp.cost = &cheap;
            batches_of(c, b);
            poison(c);
            int r = llep__engine_step(e, b, &pp, &st);
            ck_assert_msg(r == 0, "step: %d %s", r, llep__engine_error(e));
            double er = rel_err_ref(c);
            ck_assert_msg(er <= TOL_F32, "cost planner: relative L2 error %g", er);
            double diff = rel_diff(c, ep);
            ck_assert_msg(diff <= TOL_EP_LLEP, "cost planner vs EP: %g", diff);
            if (!cfg.replica_cache) /* check_stats counts no cached copies as held */
                check_stats(c, e, &st);
            const llep_plan *pl = llep__engine_plan(e);
            ck_assert_double_gt(pl->model_ns, 0);
            refined_with_transfers += pl->pick == LLEP_PICK_REFINED && pl->num_transfers > 0;
        }
        free_outputs(c, ep);
        llep__engine_free(e);
        case_free(c);
    }
    ck_assert_uint_gt(refined_with_transfers, 0);
    fprintf(stderr, "test_cost_planner_exact: %u refined plans with transfers\n",
            refined_with_transfers);
}
END_TEST

/* The same expert several times in one token's top-k contributes every time. */
START_TEST(test_duplicates_in_topk) {
    case_spec s = { .n = 4, .k = 8, .d = 24, .h = 40, .p = 2, .dtype = LLEP_DTYPE_F32,
                    .scen = BALANCED, .max_tokens = 12, .seed = 0x5000 };
    test_case *c = case_new(&s);
    /* Token 0 of each device: all eight slots on expert 1; token 1: experts 3,3,0,0,... */
    for (uint32_t p = 0; p < s.p; p++) {
        if (c->tk.tokens[p] < 2) {
            free(c->tk.y[p]);
            c->tk.tokens[p] = 2;
            ck_assert_ptr_nonnull(c->tk.y[p] = malloc(2 * s.d * sizeof(float)));
            free(c->tk.idx[p]);
            free(c->tk.w[p]);
            ck_assert_ptr_nonnull(c->tk.idx[p] = calloc(2 * s.k, sizeof(int32_t)));
            ck_assert_ptr_nonnull(c->tk.w[p] = calloc(2 * s.k, sizeof(float)));
            free(c->tk.x[p]);
            free(c->tk.sx[p]);
            uint64_t rng = 7;
            fill(&rng, 2 * s.d, 2.0, s.dtype, &c->tk.x[p], &c->tk.sx[p]);
        }
        for (uint32_t k = 0; k < s.k; k++) {
            c->tk.idx[p][k] = 1;
            c->tk.idx[p][s.k + k] = k < 2 ? 3 : 0;
            c->tk.w[p][k] = 0.125f * (float)(k + 1);
            c->tk.w[p][s.k + k] = 0.5f;
        }
    }
    make_reference(c);
    llep_engine *e = case_engine(c, 0);
    llep_engine_stats st;
    run_policy(c, e, LLEP_POLICY_EP, 1, &st);
    run_policy(c, e, LLEP_POLICY_LLEP, 1, &st);
    llep__engine_free(e);
    case_free(c);
}
END_TEST

/* Home devices with no tokens, a step with no tokens at all, and experts nobody picks. */
START_TEST(test_empty_batches) {
    case_spec s = { .n = 8, .k = 2, .d = 16, .h = 24, .p = 4, .dtype = LLEP_DTYPE_F32,
                    .scen = SKEW, .hot_share = 1.0, .hot = 2, .max_tokens = 10, .seed = 0x6000 };
    test_case *c = case_new(&s);
    c->tk.tokens[1] = 0;
    c->tk.tokens[3] = 0;
    make_reference(c);
    llep_engine *e = case_engine(c, 0);
    llep_engine_stats st;
    run_policy(c, e, LLEP_POLICY_EP, 1, &st);
    run_policy(c, e, LLEP_POLICY_LLEP, 1, &st);
    for (uint32_t x = 2; x < s.n; x++)
        ck_assert_uint_eq(llep__engine_plan(e)->loads[x], 0);

    llep_engine_batch none[4] = { { 0 } };
    int r = llep__engine_step(e, none, NULL, &st);
    ck_assert_int_eq(r, 0);
    ck_assert_uint_eq(st.slots, 0);
    for (uint32_t d = 0; d < s.p; d++)
        ck_assert_uint_eq(st.devices[d].peak_bytes, st.devices[d].held_bytes);
    llep__engine_free(e);
    case_free(c);
}
END_TEST

/* A bad expert index fails the step before any output is written; the engine goes on. */
START_TEST(test_bad_index) {
    case_spec s = { .n = 8, .k = 2, .d = 16, .h = 24, .p = 2, .dtype = LLEP_DTYPE_F32,
                    .scen = BALANCED, .max_tokens = 10, .seed = 0x7000 };
    test_case *c = case_new(&s);
    c->tk.tokens[0] = c->tk.tokens[1] = 5;
    make_reference(c);
    llep_engine *e = case_engine(c, 0);
    llep_engine_batch b[2];
    batches_of(c, b);
    int32_t saved = c->tk.idx[1][3];
    c->tk.idx[1][3] = (int32_t)s.n;
    poison(c);
    ck_assert_int_eq(llep__engine_step(e, b, NULL, NULL), -EINVAL);
    ck_assert_ptr_nonnull(strstr(llep__engine_error(e), "batch 1"));
    ck_assert(all_poisoned(c));
    c->tk.idx[1][3] = -1;
    ck_assert_int_eq(llep__engine_step(e, b, NULL, NULL), -EINVAL);
    b[0].y = NULL;
    c->tk.idx[1][3] = saved;
    ck_assert_int_eq(llep__engine_step(e, b, NULL, NULL), -EINVAL);
    llep_plan_params bad;
    llep__plan_params_default(&bad);
    bad.lambda = -1;
    batches_of(c, b);
    ck_assert_int_eq(llep__engine_step(e, b, &bad, NULL), -EINVAL);
    ck_assert(all_poisoned(c));
    llep_engine_stats st;
    run_policy(c, e, LLEP_POLICY_AUTO, 1024, &st);
    llep__engine_free(e);
    case_free(c);
}
END_TEST

/* A budget that holds LLEP's balanced step but not EP's hot device: EP fails cleanly and
 * names the device, LLEP on the same input succeeds, and the engine stays usable. */
START_TEST(test_memory_budget) {
    case_spec s = { .n = 8, .k = 2, .d = 32, .h = 48, .p = 4, .dtype = LLEP_DTYPE_F32,
                    .act = LLEP_ACT_SWIGLU_OAI, .biases = 1, .scen = SKEW, .hot_share = 0.95,
                    .hot = 1, .max_tokens = 0, .seed = 0x8000 };
    test_case *c = case_new(&s);
    /* 40 tokens on each device, rerouted: 95 % of the slots to expert 0 (device 0). */
    uint64_t rng = 99;
    for (uint32_t p = 0; p < s.p; p++) {
        free(c->tk.x[p]);
        free(c->tk.sx[p]);
        free(c->tk.idx[p]);
        free(c->tk.w[p]);
        free(c->tk.y[p]);
        c->tk.tokens[p] = 40;
        fill(&rng, 40 * s.d, 2.0, s.dtype, &c->tk.x[p], &c->tk.sx[p]);
        ck_assert_ptr_nonnull(c->tk.idx[p] = malloc(40 * s.k * sizeof(int32_t)));
        ck_assert_ptr_nonnull(c->tk.w[p] = malloc(40 * s.k * sizeof(float)));
        ck_assert_ptr_nonnull(c->tk.y[p] = malloc(40 * s.d * sizeof(float)));
        for (uint32_t i = 0; i < 40 * s.k; i++) {
            c->tk.idx[p][i] = i % 20 == 19 ? (int32_t)(2 + rng_below(&rng, 6)) : 0;
            c->tk.w[p][i] = (float)rng_unit(&rng);
        }
    }
    make_reference(c);

    /* Plan both ways to size the budget between LLEP's largest need and EP's. */
    uint64_t loads[8] = { 0 };
    for (uint32_t p = 0; p < s.p; p++)
        for (uint32_t i = 0; i < 40 * s.k; i++)
            loads[c->tk.idx[p][i]]++;
    llep_plan pl;
    llep_plan_params pp;
    ck_assert_int_eq(llep__plan_init(&pl, s.n, s.p), 0);
    llep__plan_params_default(&pp);
    pp.min_tokens = 8;
    pp.policy = LLEP_POLICY_EP;
    ck_assert_int_eq(llep__plan_compute(&pl, loads, &pp), 0);
    uint64_t ep_need = expected_peak(&s, &pl, 0);
    pp.policy = LLEP_POLICY_LLEP;
    ck_assert_int_eq(llep__plan_compute(&pl, loads, &pp), 0);
    uint64_t llep_need = 0;
    for (uint32_t d = 0; d < s.p; d++)
        if (expected_peak(&s, &pl, d) > llep_need)
            llep_need = expected_peak(&s, &pl, d);
    llep__plan_fini(&pl);
    ck_assert_uint_lt(llep_need, ep_need);
    uint64_t budget = (llep_need + ep_need) / 2;

    llep_engine *e = case_engine(c, budget);
    llep_engine_batch b[4];
    batches_of(c, b);
    pp.policy = LLEP_POLICY_EP;
    poison(c);
    ck_assert_int_eq(llep__engine_step(e, b, &pp, NULL), -ENOMEM);
    const char *msg = llep__engine_error(e);
    ck_assert_msg(strstr(msg, "device 0") && strstr(msg, "budget"), "message: %s", msg);
    char bytes[32];
    snprintf(bytes, sizeof(bytes), "%llu", (unsigned long long)budget);
    ck_assert_msg(strstr(msg, bytes), "message %s does not name the budget %s", msg, bytes);
    ck_assert(all_poisoned(c));

    llep_engine_stats st;
    run_policy(c, e, LLEP_POLICY_LLEP, 8, &st);
    ck_assert_uint_gt(st.transfers, 0);
    for (uint32_t d = 0; d < s.p; d++)
        ck_assert_uint_le(st.devices[d].peak_bytes, budget);

    /* The failed step left nothing charged: raising the budget makes EP work. */
    for (uint32_t d = 0; d < s.p; d++)
        ck_assert_int_eq(llep__engine_set_budget(e, d, ep_need), 0);
    run_policy(c, e, LLEP_POLICY_EP, 8, &st);
    ck_assert_uint_eq(st.devices[0].peak_bytes, ep_need);
    ck_assert_int_eq(llep__engine_set_budget(e, 0, 1), -ENOMEM);
    llep__engine_free(e);
    case_free(c);
}
END_TEST

/* Native weights that do not fit fail creation with -ENOMEM. */
START_TEST(test_budget_too_small_for_weights) {
    case_spec s = { .n = 4, .k = 1, .d = 8, .h = 8, .p = 2, .dtype = LLEP_DTYPE_F32,
                    .max_tokens = 1, .seed = 0x9000 };
    test_case *c = case_new(&s);
    llep_engine_config cfg;
    llep_engine *e = (llep_engine *)&cfg;
    char err[256] = "";
    llep__engine_config_default(&cfg);
    cfg.num_experts = s.n;
    cfg.top_k = s.k;
    cfg.hidden = s.d;
    cfg.inter = s.h;
    cfg.w_gate = c->wt.swg;
    cfg.w_up = c->wt.swu;
    cfg.w_down = c->wt.swd;
    cfg.num_devices = s.p;
    cfg.mem_budget = 2 * expert_bytes_of(&s) - 1;
    ck_assert_int_eq(llep__engine_new(&cfg, &e, err, sizeof(err)), -ENOMEM);
    ck_assert_ptr_null(e);
    ck_assert_ptr_nonnull(strstr(err, "device 0"));
    cfg.mem_budget = 2 * expert_bytes_of(&s);
    ck_assert_int_eq(llep__engine_new(&cfg, &e, err, sizeof(err)), 0);
    llep__engine_free(e);
    case_free(c);
}
END_TEST

START_TEST(test_bad_config) {
    float w[64] = { 0 };
    llep_engine_config cfg;
    llep_engine *e = NULL;
    char err[128];
    llep__engine_config_default(&cfg);
    cfg.num_experts = 4;
    cfg.top_k = 2;
    cfg.hidden = 2;
    cfg.inter = 2;
    cfg.w_gate = cfg.w_up = cfg.w_down = w;
    cfg.num_devices = 3;
    ck_assert_int_eq(llep__engine_new(&cfg, &e, err, sizeof(err)), -EINVAL);
    cfg.num_devices = 2;
    cfg.top_k = 0;
    ck_assert_int_eq(llep__engine_new(&cfg, &e, err, sizeof(err)), -EINVAL);
    cfg.top_k = 2;
    cfg.w_down = NULL;
    ck_assert_int_eq(llep__engine_new(&cfg, &e, err, sizeof(err)), -EINVAL);
    cfg.w_down = w;
    cfg.dtype = 7;
    ck_assert_int_eq(llep__engine_new(&cfg, &e, err, sizeof(err)), -EINVAL);
    cfg.dtype = LLEP_DTYPE_F32;
    cfg.plan.alpha = 0;
    ck_assert_int_eq(llep__engine_new(&cfg, &e, err, sizeof(err)), -EINVAL);
    cfg.plan.alpha = 1;
    ck_assert_int_eq(llep__engine_new(&cfg, &e, err, sizeof(err)), 0);
    ck_assert_int_eq(llep__engine_set_budget(e, 2, 1 << 20), -EINVAL);
    ck_assert_int_eq(llep__engine_step(e, NULL, NULL, NULL), -EINVAL);
    llep__engine_free(e);
}
END_TEST

/* The backend on its own: queued copies and gathers happen in order at sync, per device, and
 * busy time grows only on devices that worked. */
START_TEST(test_backend_cpu_ops) {
    llep_backend_options o = { .num_devices = 3, .threads = 2 };
    llep_backend *b = NULL;
    ck_assert_int_eq(llep__backend_cpu.create(&o, &b), 0);
    ck_assert_uint_eq(b->num_devices, 3);
    void *a = NULL, *c = NULL;
    ck_assert_int_eq(b->ops->alloc(b, 0, 1000, &a), 0);
    ck_assert_int_eq(b->ops->alloc(b, 2, 1000, &c), 0);
    ck_assert_uint_eq((uintptr_t)a % 64, 0);
    ck_assert_int_eq(b->ops->alloc(b, 3, 8, &c), -EINVAL);
    int src[250];
    for (int i = 0; i < 250; i++)
        src[i] = i;
    ck_assert_int_eq(b->ops->copy(b, 0, a, src, sizeof(src)), 0);
    /* Queued after the copy on the same device: sees its result. */
    const void *rows[3] = { (int *)a + 10, (int *)a + 0, (int *)a + 5 };
    int out[6];
    ck_assert_int_eq(b->ops->gather(b, 0, out, rows, 3, 2 * sizeof(int)), 0);
    ck_assert_int_eq(b->ops->sync(b), 0);
    int want[6] = { 10, 11, 0, 1, 5, 6 };
    ck_assert_mem_eq(out, want, sizeof(want));
    ck_assert_uint_eq(b->ops->busy_ns(b, 1), 0);
    ck_assert_int_eq(b->ops->sync(b), 0);
    b->ops->free(b, 0, a);
    b->ops->free(b, 2, c);

    /* Freed blocks are cached and handed out again; more than the cache holds are released
     * (the sanitizers check that nothing is used after it is freed or leaked). */
    void *blk[40];
    for (int i = 0; i < 40; i++) {
        ck_assert_int_eq(b->ops->alloc(b, 1, 100 + 64 * (size_t)i, &blk[i]), 0);
        memset(blk[i], i, 100 + 64 * (size_t)i);
    }
    for (int i = 0; i < 40; i++)
        b->ops->free(b, 1, blk[i]);
    void *again = NULL;
    ck_assert_int_eq(b->ops->alloc(b, 1, 64 * 39 + 100, &again), 0);
    ck_assert_ptr_eq(again, blk[39]);
    memset(again, 0, 64 * 39 + 100);
    b->ops->free(b, 1, again);
    b->ops->destroy(b);
}
END_TEST

START_TEST(test_bf16_conversion) {
    ck_assert_uint_eq(llep_f32_to_bf16(1.0f), 0x3f80);
    ck_assert(llep_bf16_to_f32(0x3f80) == 1.0f);
    /* 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0). */
    ck_assert_uint_eq(llep_f32_to_bf16(1.00390625f), 0x3f80);
    ck_assert_uint_eq(llep_f32_to_bf16(1.01171875f), 0x3f82);
    ck_assert_uint_eq(llep_f32_to_bf16(-2.0f), 0xc000);
    ck_assert(isinf(llep_bf16_to_f32(llep_f32_to_bf16(INFINITY))));
    ck_assert(isnan(llep_bf16_to_f32(llep_f32_to_bf16(NAN))));
    ck_assert_uint_eq(llep_f32_to_bf16(3.4e38f), 0x7f80); /* rounds up to infinity */
    uint64_t rng = 5;
    for (int i = 0; i < 10000; i++) {
        float f = (float)((2 * rng_unit(&rng) - 1) * 1e3);
        float g = llep_bf16_to_f32(llep_f32_to_bf16(f));
        ck_assert(fabsf(f - g) <= fabsf(f) * (1.0f / 256));
    }
}
END_TEST

/* Finite inputs, however large, never give NaN, and both activations match the formulas. */
START_TEST(test_activation_kernel) {
    float g[6] = { -1e30f, -100, -1, 0.5f, 100, 1e30f }, u[6] = { 1e30f, 2, -3, 4, -1e30f, 0.25f };
    for (int act = 0; act < 2; act++) {
        float a[6];
        memcpy(a, g, sizeof(a));
        llep__k_activate(a, u, 6, act, 1.702f, 7.0f);
        for (int i = 0; i < 6; i++) {
            double want;
            if (act == LLEP_ACT_SWIGLU) {
                want = (double)g[i] / (1 + exp(-(double)g[i])) * u[i];
            } else {
                double gc = fmin(g[i], 7.0), uc = fmax(fmin(u[i], 7.0), -7.0);
                want = (uc + 1) * gc / (1 + exp(-1.702 * gc));
            }
            ck_assert_msg(!isnan(a[i]), "act %d: NaN at %d", act, i);
            if (isfinite(want))
                ck_assert_msg(fabs(a[i] - want) <= 1e-5 * fabs(want) + 1e-30,
                              "act %d [%d]: %g vs %g", act, i, a[i], want);
        }
    }
}
END_TEST

static Suite *engine_suite(void) {
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_reference_f32, 0, 20);
    tcase_add_loop_test(tc, test_reference_bf16, 0, 10);
    tcase_add_loop_test(tc, test_activation_bias_matrix, 0, 8);
    tcase_add_test(tc, test_skew_spills);
    tcase_add_test(tc, test_cost_planner_exact);
    tcase_add_test(tc, test_duplicates_in_topk);
    tcase_add_test(tc, test_empty_batches);
    tcase_add_test(tc, test_bad_index);
    tcase_add_test(tc, test_memory_budget);
    tcase_add_test(tc, test_budget_too_small_for_weights);
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_backend_cpu_ops);
    tcase_add_test(tc, test_bf16_conversion);
    tcase_add_test(tc, test_activation_kernel);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(engine_suite(), CK_ENV);
}
