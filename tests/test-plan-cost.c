/* Tests of the cost-aware planner (daemon/core/plan-cost.c).
 *
 * The model of a plan is written out again here, plainly (model_plain()), and every check
 * measures plans with it rather than with the planner's own figures: plans are valid, their
 * reported makespan is the plain model's, they are never worse than EP, and on small cases at
 * least 90 % as good as the best plan of a brute-force search. The planner gives the same
 * plan hash in two processes, and falls back to the paper's LLA where it has no model. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cost.h"
#include "fixtures.h"
#include "plan-cost.h"
#include "plan.h"

#define MAXP 64

/* The modelled makespan of a plan, from its ranges, as plan-cost.h defines it: each device's
 * time is the copies it receives (one per expert it helps with, none where it holds a copy)
 * plus one chunk per expert it runs; each native device's copies sent to another physical
 * device or node bound the step too (copies within one GPU or host do not queue at a port). */
static double model_plain(const llep_plan *p, const llep_cost_model *m, const llep_cost_layer *l,
                          const uint8_t *held) {
    double t[MAXP] = { 0 }, s[MAXP] = { 0 }, max = 0;
    uint32_t np = p->num_devices;

    for (uint32_t x = 0; x < p->num_experts; x++) {
        uint64_t rows[MAXP] = { 0 };
        uint32_t native = x / p->experts_per_device;
        for (uint32_t i = p->range_off[x]; i < p->range_off[x + 1]; i++)
            rows[p->ranges[i].device] += p->ranges[i].end - p->ranges[i].start;
        for (uint32_t d = 0; d < np; d++) {
            if (rows[d] == 0)
                continue;
            t[d] += llep__cost_chunk_ns(m, l, rows[d]);
            if (d != native && !(held && held[x * np + d])) {
                double cp = llep__cost_transfer_ns(m, native, d, l->weight_bytes);
                enum llep_link k = llep__cost_link_kind(m, native, d);
                t[d] += cp;
                if (k == LLEP_LINK_PEER || k == LLEP_LINK_NODE)
                    s[native] += cp;
            }
        }
    }
    for (uint32_t d = 0; d < np; d++)
        max = fmax(max, fmax(t[d], s[d]));
    return max;
}

static llep_cost_model nominal(const char *name) {
    llep_cost_model m;
    ck_assert_int_eq(llep__cost_nominal(name, &m), 0);
    return m;
}

/* The planner's parameters: the defaults, planner COST with model m for layer l. */
static llep_plan_params cost_params(const llep_cost_model *m, const llep_cost_layer *l) {
    llep_plan_params pp;
    llep__plan_params_default(&pp);
    pp.planner = LLEP_PLANNER_COST;
    pp.cost = m;
    pp.cost_layer = l;
    return pp;
}

static void run_valid(llep_plan *p, const uint64_t *loads, const llep_plan_params *pp,
                      const uint8_t *held) {
    char err[256];

    ck_assert_int_eq(llep__plan_run(p, loads, pp, held), 0);
    ck_assert_msg(llep__plan_validate(p, err, sizeof(err)) == 0, "invalid plan: %s", err);
}

/* EP's modelled makespan for the loads, through the plain model. */
static double ep_plain(uint32_t n, uint32_t np, const uint64_t *loads, const llep_cost_model *m,
                       const llep_cost_layer *l) {
    llep_plan ep;
    llep_plan_params pp;

    llep__plan_params_default(&pp);
    pp.policy = LLEP_POLICY_EP;
    ck_assert_int_eq(llep__plan_init(&ep, n, np), 0);
    ck_assert_int_eq(llep__plan_compute(&ep, loads, &pp), 0);
    double ns = model_plain(&ep, m, l, NULL);
    llep__plan_fini(&ep);
    return ns;
}

/* Skewed loads as a step of tokens_per_device tokens per device, top-4, would route them:
 * share of the slots into `hot` random experts, the rest spread at random. */
static void skewed_loads(uint64_t *s, uint32_t n, uint32_t np, uint64_t tokens_per_device,
                         double share, uint32_t hot, uint64_t *loads) {
    uint64_t slots = tokens_per_device * np * 4;
    uint64_t hot_slots = (uint64_t)(share * (double)slots);
    uint64_t cold = (slots - hot_slots) / n;

    for (uint32_t e = 0; e < n; e++)
        loads[e] = rng_below(s, (uint32_t)(2 * cold + 1));
    for (uint32_t h = 0; h < hot; h++)
        loads[rng_below(s, n)] += hot_slots / hot;
}

/* ---- hand-made cases -------------------------------------------------------------------- */

/* One hot expert at decode: 30 rows. Copying its weights over NVLink (about 0.12 ms) costs
 * far more than splitting 30 rows saves, so the plan stays EP, where the paper's LLA spills. */
START_TEST(decode_spill_does_not_pay) {
    llep_cost_model m = nominal("h200");
    llep_cost_layer l;
    uint64_t loads[16] = { 30, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1 };
    llep_plan p;

    llep__cost_layer(&l, 2880, 2880, 2, true);
    llep_plan_params pp = cost_params(&m, &l);
    ck_assert_int_eq(llep__plan_init(&p, 16, 8), 0);
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), 0);
    ck_assert_int_eq(p.mode, LLEP_PLAN_LLEP);
    ck_assert_uint_gt(p.num_transfers, 0);
    double lla_ns = model_plain(&p, &m, &l, NULL);
    run_valid(&p, loads, &pp, NULL);
    ck_assert_int_eq(p.pick, LLEP_PICK_EP);
    ck_assert_int_eq(p.mode, LLEP_PLAN_EP);
    ck_assert_double_eq_tol(p.model_ns, model_plain(&p, &m, &l, NULL), 1e-6);
    ck_assert_double_lt(p.model_ns, lla_ns);
    llep__plan_fini(&p);
}
END_TEST

/* One hot expert with 60000 rows: its chunk is worth splitting across every device, far
 * better than EP, and better than LLA, which forces what the helpers cannot take at m onto
 * one of them. */
START_TEST(big_hot_expert_spreads) {
    llep_cost_model m = nominal("h200");
    llep_cost_layer l;
    uint64_t loads[16];
    llep_plan p;

    llep__cost_layer(&l, 2880, 2880, 2, true);
    for (uint32_t e = 0; e < 16; e++)
        loads[e] = 100;
    loads[3] = 60000;
    llep_plan_params pp = cost_params(&m, &l);
    ck_assert_int_eq(llep__plan_init(&p, 16, 8), 0);
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), 0);
    double lla_ns = model_plain(&p, &m, &l, NULL);
    run_valid(&p, loads, &pp, NULL);
    double ep_ns = ep_plain(16, 8, loads, &m, &l);
    ck_assert_int_eq(p.pick, LLEP_PICK_REFINED);
    ck_assert_double_eq_tol(p.model_ns, model_plain(&p, &m, &l, NULL), 1e-6);
    ck_assert_double_lt(p.model_ns, lla_ns);
    ck_assert_double_lt(p.model_ns, ep_ns / 4);
    /* At least half the devices run part of expert 3 (the copies its native device sends
     * bound how many). */
    ck_assert_uint_ge(p.range_off[4] - p.range_off[3], 4);
    llep__plan_fini(&p);
}
END_TEST

/* A helper that holds a copy of the hot expert takes part of it for free; without the copy
 * the same loads move weights. */
START_TEST(held_copies_are_free) {
    llep_cost_model m = nominal("h200");
    llep_cost_layer l;
    uint64_t loads[8] = { 3000, 10, 10, 10, 10, 10, 10, 10 };
    uint8_t held[8 * 4] = { 0 };
    llep_plan p;

    llep__cost_layer(&l, 2880, 2880, 2, true);
    held[0 * 4 + 2] = 1; /* device 2 holds expert 0 */
    llep_plan_params pp = cost_params(&m, &l);
    ck_assert_int_eq(llep__plan_init(&p, 8, 4), 0);
    run_valid(&p, loads, &pp, NULL);
    double without = p.model_ns;
    run_valid(&p, loads, &pp, held);
    ck_assert_double_eq_tol(p.model_ns, model_plain(&p, &m, &l, held), 1e-6);
    ck_assert_double_lt(p.model_ns, without);
    int on_2 = 0;
    for (uint32_t i = p.range_off[0]; i < p.range_off[1]; i++)
        on_2 |= p.ranges[i].device == 2;
    ck_assert(on_2);
    llep__plan_fini(&p);
}
END_TEST

/* Without a model, or with planner LLA, llep__plan_run() is the paper's planner exactly; a
 * bad model is refused and leaves the previous plan as it was. */
START_TEST(falls_back_to_lla) {
    llep_cost_model m = nominal("cpu");
    llep_cost_layer l;
    uint64_t s = 7, loads[64];
    llep_plan a, b;

    llep__cost_layer(&l, 256, 256, 4, false);
    ck_assert_int_eq(llep__plan_init(&a, 64, 8), 0);
    ck_assert_int_eq(llep__plan_init(&b, 64, 8), 0);
    for (int i = 0; i < 50; i++) {
        skewed_loads(&s, 64, 8, 256, 0.8, 2, loads);
        llep_plan_params pp = cost_params(&m, &l);
        pp.planner = LLEP_PLANNER_LLA;
        ck_assert_int_eq(llep__plan_compute(&a, loads, &pp), 0);
        ck_assert_int_eq(llep__plan_run(&b, loads, &pp, NULL), 0);
        ck_assert_uint_eq(llep__plan_hash(&a), llep__plan_hash(&b));
        pp.planner = LLEP_PLANNER_COST;
        pp.cost = NULL;
        ck_assert_int_eq(llep__plan_run(&b, loads, &pp, NULL), 0);
        ck_assert_uint_eq(llep__plan_hash(&a), llep__plan_hash(&b));
        ck_assert_int_eq(b.pick, a.mode == LLEP_PLAN_LLEP ? LLEP_PICK_LLA : LLEP_PICK_EP);
    }
    uint64_t before = llep__plan_hash(&b);
    llep_cost_model bad = m;
    bad.rate[0] = 0;
    llep_plan_params pp = cost_params(&bad, &l);
    ck_assert_int_eq(llep__plan_run(&b, loads, &pp, NULL), -EINVAL);
    ck_assert_uint_eq(llep__plan_hash(&b), before);
    pp = cost_params(&m, &l);
    pp.planner = (enum llep_planner)7;
    ck_assert_int_eq(llep__plan_run(&b, loads, &pp, NULL), -EINVAL);
    llep__plan_fini(&a);
    llep__plan_fini(&b);
}
END_TEST

/* Policy EP and AUTO under lambda give EP; policy LLEP never gives mode EP. */
START_TEST(policy_and_lambda) {
    llep_cost_model m = nominal("h200");
    llep_cost_layer l;
    uint64_t loads[16] = { 30, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1 };
    uint64_t flat[16];
    llep_plan p;

    llep__cost_layer(&l, 2880, 2880, 2, true);
    for (int e = 0; e < 16; e++)
        flat[e] = 100 + (uint64_t)e % 2;
    ck_assert_int_eq(llep__plan_init(&p, 16, 8), 0);
    llep_plan_params pp = cost_params(&m, &l);
    run_valid(&p, flat, &pp, NULL);
    ck_assert_int_eq(p.mode, LLEP_PLAN_EP);
    ck_assert_double_eq_tol(p.model_ns, model_plain(&p, &m, &l, NULL), 1e-6);
    pp.policy = LLEP_POLICY_EP;
    run_valid(&p, loads, &pp, NULL);
    ck_assert_int_eq(p.mode, LLEP_PLAN_EP);
    pp.policy = LLEP_POLICY_LLEP;
    run_valid(&p, loads, &pp, NULL);
    ck_assert_int_eq(p.mode, LLEP_PLAN_LLEP);
    ck_assert_int_ne(p.pick, LLEP_PICK_EP);
    llep__plan_fini(&p);
}
END_TEST

/* ---- random loads ----------------------------------------------------------------------- */

static const uint64_t tpd_choices[] = { 1, 16, 64, 256, 1024, 4096, 32768 };
static const double share_choices[] = { 0, 0.3, 0.5, 0.8, 0.95 };

/* Valid plans, the reported makespan the plain model's, never worse than EP, never worse than
 * LLA when EP is a candidate; flat and by nodes, both nominal models, with and without copies
 * held. */
START_TEST(random_never_worse) {
    struct { uint32_t n, np, per_node; const char *model; } shapes[] = {
        { 16, 4, 0, "h200" }, { 128, 8, 0, "h200" }, { 64, 8, 4, "h200" }, { 32, 8, 0, "cpu" },
        { 256, 8, 0, "h200" }, { 64, 16, 8, "cpu" },
    };
    uint64_t s = 1000 + (uint64_t)_i;
    llep_cost_layer l;

    llep__cost_layer(&l, 2880, 2880, 2, true);
    for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++) {
        uint32_t n = shapes[k].n, np = shapes[k].np;
        llep_cost_model m = nominal(shapes[k].model);
        m.devices_per_node = shapes[k].per_node;
        uint64_t *loads = calloc(n, sizeof(*loads));
        uint8_t *held = calloc((size_t)n * np, 1);
        llep_plan p;
        ck_assert_int_eq(llep__plan_init(&p, n, np), 0);
        for (int it = 0; it < 150; it++) {
            skewed_loads(&s, n, np, tpd_choices[rng_below(&s, 7)], share_choices[rng_below(&s, 5)],
                         1 + rng_below(&s, 4), loads);
            for (size_t i = 0; i < (size_t)n * np; i++)
                held[i] = rng_below(&s, 20) == 0;
            const uint8_t *h = it % 3 == 0 ? held : NULL;
            llep_plan_params pp = cost_params(&m, &l);
            pp.devices_per_node = shapes[k].per_node;
            pp.policy = it % 2 ? LLEP_POLICY_LLEP : LLEP_POLICY_AUTO;
            ck_assert_int_eq(llep__plan_compute_cached(&p, loads, &pp, h), 0);
            double lla_ns = model_plain(&p, &m, &l, h);
            run_valid(&p, loads, &pp, h);
            double got = model_plain(&p, &m, &l, h);
            ck_assert_msg(fabs(got - p.model_ns) <= 1e-9 * got + 1e-6, "reported %.1f, model %.1f",
                          p.model_ns, got);
            ck_assert_msg(got <= lla_ns * (1 + 1e-12), "worse than LLA: %.1f > %.1f", got, lla_ns);
            if (pp.policy == LLEP_POLICY_AUTO) {
                double ep = ep_plain(n, np, loads, &m, &l);
                ck_assert_msg(got <= ep * (1 + 1e-12), "worse than EP: %.1f > %.1f", got, ep);
            }
        }
        llep__plan_fini(&p);
        free(loads);
        free(held);
    }
}
END_TEST

/* ---- brute force ------------------------------------------------------------------------ */

/* The search space: every expert's load cut into Q = 4 quarters (quarter i holds rows
 * [l*i/4, l*(i+1)/4)), and every quarter of every searched expert placed on any of the P
 * devices; unsearched experts stay native. Plans are told apart by how many quarters of each
 * expert each device gets (a composition of 4 into P parts: 35 for P 4), so the search visits
 * 35^S plans for S searched experts. Each is measured with the plain model. */
#define Q 4

typedef struct bf {
    uint32_t n, np, searched;
    const uint64_t *loads;
    const llep_cost_model *m;
    const llep_cost_layer *l;
    uint32_t comp[35][MAXP]; /* the compositions of Q into np parts */
    uint32_t ncomp;
    uint32_t pick[8];        /* composition chosen for each searched expert */
    double best;
    /* Figures worked out once: chunk_q[x][q0][q] the chunk of expert x's quarters q0 .. q0+q-1,
     * copy[a][b] one expert's copy from device a to b. */
    double chunk_q[8][Q + 1][Q + 1];
    double copy[MAXP][MAXP];
} bf;

static void bf_figures(bf *b) {
    for (uint32_t x = 0; x < b->n; x++)
        for (uint32_t q0 = 0; q0 <= Q; q0++)
            for (uint32_t q = 0; q0 + q <= Q; q++) {
                uint64_t l = b->loads[x], rows = l * (q0 + q) / Q - l * q0 / Q;
                b->chunk_q[x][q0][q] = llep__cost_chunk_ns(b->m, b->l, rows);
            }
    for (uint32_t a = 0; a < b->np; a++)
        for (uint32_t d = 0; d < b->np; d++)
            b->copy[a][d] = llep__cost_transfer_ns(b->m, a, d, b->l->weight_bytes);
}

static void compositions(bf *b, uint32_t d, uint32_t left, uint32_t *cur) {
    if (d == b->np - 1) {
        cur[d] = left;
        memcpy(b->comp[b->ncomp++], cur, b->np * sizeof(*cur));
        return;
    }
    for (uint32_t k = 0; k <= left; k++) {
        cur[d] = k;
        compositions(b, d + 1, left - k, cur);
    }
}

static double bf_model(const bf *b) {
    double t[MAXP] = { 0 }, s[MAXP] = { 0 }, max = 0;
    uint32_t per = b->n / b->np;

    for (uint32_t x = 0; x < b->n; x++) {
        uint32_t native = x / per;
        uint64_t l = b->loads[x];
        if (x >= b->searched) {
            t[native] += b->chunk_q[x][0][Q];
            continue;
        }
        const uint32_t *c = b->comp[b->pick[x]];
        uint32_t q = 0;
        for (uint32_t d = 0; d < b->np; d++) {
            uint64_t rows = l * (q + c[d]) / Q - l * q / Q;
            double ns = b->chunk_q[x][q][c[d]];
            q += c[d];
            if (rows == 0)
                continue;
            t[d] += ns;
            if (d != native) {
                t[d] += b->copy[native][d];
                s[native] += b->copy[native][d];
            }
        }
    }
    for (uint32_t d = 0; d < b->np; d++)
        max = fmax(max, fmax(t[d], s[d]));
    return max;
}

static void bf_search(bf *b, uint32_t x) {
    if (x == b->searched) {
        b->best = fmin(b->best, bf_model(b));
        return;
    }
    for (uint32_t k = 0; k < b->ncomp; k++) {
        b->pick[x] = k;
        bf_search(b, x + 1);
    }
}

/* Small cases, N 4 on P 4 with every expert searched and N 8 on P 4 with the first two
 * searched (the hot ones are put there): the planner's makespan is at least 90 % as good as
 * the best of the search (best / ours >= 0.9). Loads from 1 to 40000 rows per hot expert, so
 * both decode sizes (where copies dominate) and large ones (where splitting pays) occur. */
START_TEST(brute_force_ninety_percent) {
    uint64_t s = 77 + (uint64_t)_i;
    const char *models[] = { "h200", "cpu" };
    llep_cost_layer l;
    double worst = 1;

    llep__cost_layer(&l, 2880, 2880, 2, true);
    for (int it = 0; it < 12; it++) {
        llep_cost_model m = nominal(models[it % 2]);
        bf b = { .np = 4, .m = &m, .l = &l };
        uint64_t loads[8];
        uint32_t cur[MAXP];
        b.n = it % 3 == 0 ? 4 : 8;
        b.searched = b.n == 4 ? 4 : 2;
        uint64_t scale = (uint64_t[]){ 4, 40, 400, 4000, 40000 }[rng_below(&s, 5)];
        for (uint32_t x = 0; x < b.n; x++)
            loads[x] = x < b.searched ? rng_below(&s, (uint32_t)scale) + 1
                                      : rng_below(&s, (uint32_t)(scale / 8 + 2));
        b.loads = loads;
        compositions(&b, 0, Q, cur);
        bf_figures(&b);
        ck_assert_uint_eq(b.ncomp, 35);
        b.best = INFINITY;
        bf_search(&b, 0);

        llep_plan p;
        llep_plan_params pp = cost_params(&m, &l);
        ck_assert_int_eq(llep__plan_init(&p, b.n, 4), 0);
        run_valid(&p, loads, &pp, NULL);
        double ours = model_plain(&p, &m, &l, NULL);
        double ratio = b.best / ours;
        worst = fmin(worst, ratio);
        ck_assert_msg(ratio >= 0.9, "case %d (%s, N %u, scale %" PRIu64 "): best %.1f ns, "
                      "ours %.1f", it, models[it % 2], b.n, scale, b.best, ours);
        llep__plan_fini(&p);
    }
    fprintf(stderr, "brute force: worst best/ours %.3f\n", worst);
}
END_TEST

/* ---- determinism across processes ------------------------------------------------------- */

static char self_exe[4096];

/* The plan hash of seed's loads (N 128, P 8, 256 tokens per device, 95 % into one expert,
 * nominal H200 model, the gpt-oss-120b shape); 0 when planning fails. No ck_assert: the
 * second process runs it outside Check's runner. */
static uint64_t hash_for_seed(uint64_t seed) {
    llep_cost_model m;
    llep_cost_layer l;
    uint64_t loads[128], s = seed, h = 0;
    llep_plan p;

    if (llep__cost_nominal("h200", &m) < 0 || llep__plan_init(&p, 128, 8) < 0)
        return 0;
    llep__cost_layer(&l, 2880, 2880, 2, true);
    skewed_loads(&s, 128, 8, 256, 0.95, 1, loads);
    llep_plan_params pp = cost_params(&m, &l);
    if (llep__plan_run(&p, loads, &pp, NULL) == 0 && llep__plan_validate(&p, NULL, 0) == 0)
        h = llep__plan_hash(&p);
    llep__plan_fini(&p);
    return h;
}

START_TEST(same_hash_in_another_process) {
    for (uint64_t seed = 1; seed <= 3; seed++) {
        char cmd[4200], out[64] = "";
        snprintf(cmd, sizeof(cmd), "'%s' --plan-hash %" PRIu64, self_exe, seed);
        FILE *f = popen(cmd, "r");
        ck_assert_ptr_nonnull(f);
        ck_assert_ptr_nonnull(fgets(out, sizeof(out), f));
        ck_assert_int_eq(pclose(f), 0);
        uint64_t here = hash_for_seed(seed);
        ck_assert_uint_ne(here, 0);
        ck_assert_uint_eq(strtoull(out, NULL, 16), here);
    }
}
END_TEST

static Suite *plan_cost_suite(void) {
    Suite *s = suite_create("plan-cost");
    TCase *hand = tcase_create("hand-made");
    TCase *rnd = tcase_create("random");

    tcase_set_timeout(hand, 60);
    tcase_add_test(hand, decode_spill_does_not_pay);
    tcase_add_test(hand, big_hot_expert_spreads);
    tcase_add_test(hand, held_copies_are_free);
    tcase_add_test(hand, falls_back_to_lla);
    tcase_add_test(hand, policy_and_lambda);
    tcase_add_test(hand, same_hash_in_another_process);
    suite_add_tcase(s, hand);
    tcase_set_timeout(rnd, 300);
    tcase_add_loop_test(rnd, random_never_worse, 0, 4);
    tcase_add_loop_test(rnd, brute_force_ninety_percent, 0, 3);
    suite_add_tcase(s, rnd);
    return s;
}

int main(int argc, char **argv) {
    ssize_t len = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
    if (len <= 0)
        return EXIT_FAILURE;
    self_exe[len] = '\0';
    /* The second process of same_hash_in_another_process. */
    if (argc == 3 && strcmp(argv[1], "--plan-hash") == 0) {
        printf("%016" PRIx64 "\n", hash_for_seed(strtoull(argv[2], NULL, 10)));
        return 0;
    }
    return llep_test_run_suite(plan_cost_suite(), CK_NORMAL);
}
