/* llep-bench --tune: alpha, m, lambda and the replica cache size for a shape and a routing
 * scenario, measured on the bench's backend (bench-modes.h; issue 15, item 4).
 *
 * The grid is small and fixed (ALPHAS x LAMBDAS x MINS x caches). Many of its points give the
 * same plan for the scenario's loads (lambda only decides EP or LLEP; m only matters for the
 * chunks it forbids), so the points are grouped by the hash of the plan they make
 * (llep__plan_hash) and the cache setting. A group is named by its point nearest llepd's
 * defaults.
 *
 * Measuring is what takes the time, so the groups are first ranked by their makespan under
 * the device cost model the bench calibrated (b->cost, the model the cost planner plans with;
 * llep__plan_model_ns, not a second model here), and only the best --tune-top K of them by
 * the model are measured, with the defaults' group (K 0: all of them). Each measured group
 * runs a step in turn, `repeat` rounds after one unmeasured round, each device's least busy
 * time kept, the makespan the largest of those (as every llep-bench table). The defaults
 * (alpha 1, lambda 1.3, m 1024, cache auto) are always measured, so the table says how far
 * they are from the best point; it also says how good the model's ranking was (the measured
 * rank of its top pick; with K 0, whether the default K would have kept the measured best).
 * --write-config writes the best point into an llepd config file.
 *
 * m is in the run's tokens: give --tokens the batch per device llepd will see. */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench-modes.h"
#include "bench-tune-config.h"
#include "config.h"
#include "plan-cost.h"

static const double alphas[] = { 1.0, 1.1, 1.25, 1.5 };
static const double lambdas[] = { 1.1, 1.3, 1.5, 2.0 };
static const uint32_t mins[] = { 1, 16, 64, 256, 1024 };
#define NA (sizeof(alphas) / sizeof(alphas[0]))
#define NL (sizeof(lambdas) / sizeof(lambdas[0]))
#define NM (sizeof(mins) / sizeof(mins[0]))
#define NC 2u   /* replica cache off, auto */
#define NPOINTS (NA * NL * NM * NC)
/* Within this of the best, a point is as good as the best on this machine's noise. */
#define NOISE 1.03

typedef struct point {
    double alpha, lambda;
    uint32_t min_tokens;
    int cache;              /* 0 off, 1 auto */
    uint64_t hash;          /* of the plan the point makes */
    uint32_t group;
} point;

typedef struct group {
    uint32_t rep;           /* the point that names it */
    uint32_t points;        /* how many grid points make this plan with this cache */
    enum llep_plan_mode mode;
    uint32_t transfers;
    double model_ns;        /* the rep's modelled makespan */
    uint32_t model_rank;    /* 1-based, among all groups by model_ns */
    bool measured;
    uint32_t rank;          /* 1-based, among the measured groups by makespan_ns; 0: not */
    uint64_t *busy;         /* [P] least over the rounds */
    uint64_t makespan_ns, weight_bytes;
} group;

/* The search and its results, as the printers need them. */
typedef struct tune {
    const llep_scenario *sc;
    point *pts;
    group *gs;
    uint32_t ng;            /* distinct plans */
    uint32_t *by_model;     /* [ng] group indices, best model first */
    uint32_t *order;        /* [nm] measured groups, least makespan first */
    uint32_t nm;            /* groups measured */
    uint32_t def;           /* the defaults' group */
} tune;

/* How many of the point's settings differ from llepd's defaults: a group is named by its
 * point with the fewest, so that the advice changes no more than it must. */
static int distance(const point *p) {
    return (p->alpha != LLEP_DEFAULT_ALPHA) + (p->lambda != LLEP_DEFAULT_LAMBDA) +
           (p->min_tokens != LLEP_DEFAULT_MIN_TOKENS) + (p->cache != 1);
}

static void point_params(const llep_bench *b, const point *p, llep_plan_params *pp) {
    llep_bench planner_b = *b;

    planner_b.o.alpha = p->alpha;
    planner_b.o.lambda = p->lambda;
    planner_b.o.min_tokens = p->min_tokens;
    llep__bench_planner_params(&planner_b,
                               b->o.num_planners ? b->o.planners[0] : LLEP_BENCH_LLA, pp);
}

static void make_grid(point *pts) {
    size_t i = 0;

    for (size_t a = 0; a < NA; a++)
        for (size_t l = 0; l < NL; l++)
            for (size_t m = 0; m < NM; m++)
                for (int c = 0; c < (int)NC; c++)
                    pts[i++] = (point){ alphas[a], lambdas[l], mins[m], c, 0, 0 };
}

/* The layer's figures for planning and modelling: the engine fills in the same ones for a
 * step (the bench's f32 experts, no biases). */
static void bench_layer(const llep_bench *b, llep_cost_layer *layer) {
    llep__cost_layer(layer, b->d, b->h, sizeof(float), false);
    layer->weight_bytes = llep__engine_expert_bytes(b->eng);
}

/* Plans the point for the routed loads into plan; held as for llep__plan_run(). */
static void plan_point(const llep_bench *b, const point *p, const llep_cost_layer *layer,
                       llep_plan *plan, const uint8_t *held) {
    llep_plan_params pp;

    point_params(b, p, &pp);
    if (pp.planner == LLEP_PLANNER_COST)
        pp.cost_layer = layer;
    int r = llep__plan_run(plan, b->loads, &pp, held);
    if (r < 0)
        llep__bench_die("planning alpha %g, lambda %g, m %u: %s", p->alpha, p->lambda,
                        p->min_tokens, strerror(-r));
}

/* Plans every point for the routed loads and groups equal plans with equal caches. */
static uint32_t group_points(const llep_bench *b, point *pts, group *gs) {
    llep_plan plan;
    llep_cost_layer layer;
    uint32_t ng = 0;

    bench_layer(b, &layer);
    if (llep__plan_init(&plan, b->n, b->p) < 0)
        llep__bench_die("out of memory for a plan");
    for (size_t i = 0; i < NPOINTS; i++) {
        plan_point(b, &pts[i], &layer, &plan, NULL);
        pts[i].hash = llep__plan_hash(&plan);
        uint32_t g = 0;
        while (g < ng && !(pts[gs[g].rep].hash == pts[i].hash &&
                           pts[gs[g].rep].cache == pts[i].cache))
            g++;
        if (g == ng)
            gs[ng++] = (group){ .rep = (uint32_t)i, .mode = plan.mode,
                                .transfers = plan.num_transfers };
        else if (distance(&pts[i]) < distance(&pts[gs[g].rep]))
            gs[g].rep = (uint32_t)i;
        gs[g].points++;
        pts[i].group = g;
    }
    llep__plan_fini(&plan);
    return ng;
}

/* The modelled makespan of each group's named point under the calibrated model. With the
 * replica cache off every step copies the spilled experts again: the plan as made, no copies
 * held. With it on, the measured rounds run after an unmeasured one, so the helpers already
 * hold what the point's plan sent them: the steady state is the point planned again with
 * those copies held (as the engine plans with its cache) and modelled with them held. */
static void model_groups(const llep_bench *b, const point *pts, group *gs, uint32_t ng) {
    llep_plan plan;
    llep_cost_layer layer;
    uint8_t *held = llep__bench_calloc((size_t)b->n * b->p, 1);

    bench_layer(b, &layer);
    if (llep__plan_init(&plan, b->n, b->p) < 0)
        llep__bench_die("out of memory for a plan");
    for (uint32_t g = 0; g < ng; g++) {
        const point *p = &pts[gs[g].rep];
        plan_point(b, p, &layer, &plan, NULL);
        if (p->cache) {
            memset(held, 0, (size_t)b->n * b->p);
            for (uint32_t t = 0; t < plan.num_transfers; t++)
                held[(size_t)plan.transfers[t].expert * b->p + plan.transfers[t].dst] = 1;
            plan_point(b, p, &layer, &plan, held);
        }
        gs[g].model_ns = llep__plan_model_ns(&plan, &b->cost, &layer, p->cache ? held : NULL);
    }
    llep__plan_fini(&plan);
    free(held);
}

/* Group indices ordered by key (model_ns or makespan_ns), ties to the point nearer the
 * defaults, then grid order: the same ranking every run for the same figures. */
static bool before(const point *pts, const group *gs, uint32_t a, uint32_t b, bool by_model) {
    double ka = by_model ? gs[a].model_ns : (double)gs[a].makespan_ns;
    double kb = by_model ? gs[b].model_ns : (double)gs[b].makespan_ns;
    if (ka != kb)
        return ka < kb;
    int da = distance(&pts[gs[a].rep]), db = distance(&pts[gs[b].rep]);
    return da != db ? da < db : a < b;
}

static void sort_groups(const point *pts, const group *gs, uint32_t *idx, uint32_t n,
                        bool by_model) {
    for (uint32_t i = 1; i < n; i++)  /* insertion sort: a few dozen groups */
        for (uint32_t j = i; j > 0 && before(pts, gs, idx[j], idx[j - 1], by_model); j--) {
            uint32_t t = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = t;
        }
}

/* The group llepd's defaults fall in. */
static uint32_t default_group(const point *pts) {
    for (size_t i = 0; i < NPOINTS; i++)
        if (distance(&pts[i]) == 0)
            return pts[i].group;
    return 0;
}

/* Ranks the groups by the model and marks the best `top` of them (0: all) and the defaults'
 * for measuring. */
static void prune(tune *t, uint32_t top) {
    t->by_model = llep__bench_calloc(t->ng, sizeof(*t->by_model));
    for (uint32_t g = 0; g < t->ng; g++)
        t->by_model[g] = g;
    sort_groups(t->pts, t->gs, t->by_model, t->ng, true);
    for (uint32_t i = 0; i < t->ng; i++) {
        group *g = &t->gs[t->by_model[i]];
        g->model_rank = i + 1;
        g->measured = top == 0 || i < top;
    }
    t->gs[t->def].measured = true;
}

static void measure_step(llep_bench *b, llep_engine *eng, const point *p, group *g,
                         uint32_t round) {
    llep_plan_params pp;
    llep_engine_stats st;

    point_params(b, p, &pp);
    llep__bench_batches(b, b->y_llep);
    if (llep__engine_step(eng, b->batches, &pp, &st) < 0)
        llep__bench_die("step failed: %s", llep__engine_error(eng));
    for (uint32_t d = 0; d < b->p && g; d++)
        if (round == 0 || st.devices[d].busy_ns < g->busy[d])
            g->busy[d] = st.devices[d].busy_ns;
    if (g)
        g->weight_bytes += st.weight_bytes_moved;
}

/* Measures the marked groups, in the model's order, a step of each in turn for `repeat`
 * rounds after one unmeasured round; then ranks them by makespan. */
static void measure(llep_bench *b, tune *t) {
    llep_engine *eng[NC] = { llep__bench_engine(b, 0, 0),
                             llep__bench_engine(b, LLEP_DEVICES_CACHE_AUTO, 0) };
    const point *pts = t->pts;
    group *gs = t->gs;

    t->order = llep__bench_calloc(t->ng, sizeof(*t->order));
    t->nm = 0;
    for (uint32_t i = 0; i < t->ng; i++)
        if (gs[t->by_model[i]].measured)
            t->order[t->nm++] = t->by_model[i];
    for (uint32_t i = 0; i < t->nm; i++) {
        group *g = &gs[t->order[i]];
        g->busy = llep__bench_calloc(b->p, sizeof(uint64_t));
        measure_step(b, eng[pts[g->rep].cache], &pts[g->rep], NULL, 0);
    }
    for (uint32_t r = 0; r < b->o.repeat; r++)
        for (uint32_t i = 0; i < t->nm; i++) {
            group *g = &gs[t->order[i]];
            const point *p = &pts[g->rep];
            fprintf(stderr, "llep-bench: tune round %u/%u, plan %u/%u: alpha %g, lambda %g, "
                    "m %u, cache %s\n", r + 1, b->o.repeat, i + 1, t->nm, p->alpha, p->lambda,
                    p->min_tokens, p->cache ? "auto" : "off");
            measure_step(b, eng[p->cache], p, g, r);
        }
    for (uint32_t i = 0; i < t->nm; i++) {
        group *g = &gs[t->order[i]];
        for (uint32_t d = 0; d < b->p; d++)
            if (g->busy[d] > g->makespan_ns)
                g->makespan_ns = g->busy[d];
        g->weight_bytes /= b->o.repeat;
    }
    for (uint32_t i = 0; i < NC; i++)
        llep__engine_free(eng[i]);
    sort_groups(pts, gs, t->order, t->nm, false);
    for (uint32_t i = 0; i < t->nm; i++)
        gs[t->order[i]].rank = i + 1;
}

static double slower(const group *g, const group *best) {
    return best->makespan_ns ? (double)g->makespan_ns / (double)best->makespan_ns : 0;
}

/* ---- how good the model's ranking was ---------------------------------------------------- */

/* What a user needs to trust the pruning: where the model's top pick landed when measured,
 * where the model put the measured best, and, when every plan was measured, whether the
 * default --tune-top would have kept the measured best (the defaults' group is always
 * measured, so it counts as kept) and how close the best point it kept was. */
typedef struct model_check {
    uint32_t pick;              /* the model's top pick (a group) */
    uint32_t pick_rank;         /* its measured rank */
    uint32_t best_model_rank;   /* the measured best's rank by the model */
    bool all_measured;          /* --tune-top 0 */
    uint32_t top;               /* LLEP_BENCH_TUNE_TOP: the K checked */
    bool top_has_best;          /* the K best by the model (and the defaults) held the best */
    double top_best_vs_best;    /* the best makespan among those over the best's */
} model_check;

static void check_model(const llep_bench *b, const tune *t, model_check *ret) {
    const group *gs = t->gs, *best = &gs[t->order[0]];

    *ret = (model_check){ .pick = t->by_model[0], .pick_rank = gs[t->by_model[0]].rank,
                          .best_model_rank = best->model_rank,
                          .all_measured = b->o.tune_top == 0, .top = LLEP_BENCH_TUNE_TOP };
    if (!ret->all_measured)
        return;
    for (uint32_t i = 0; i < t->nm; i++) {
        const group *g = &gs[t->order[i]];
        if (g->model_rank <= ret->top || t->order[i] == t->def) {
            ret->top_has_best = i == 0;
            ret->top_best_vs_best = slower(g, best);
            break;
        }
    }
}

/* ---- the table ---------------------------------------------------------------------------- */

static void print_row(const char *label, const point *p, const group *g, const group *best) {
    printf("%-8s %6g %7g %6u %6s %5s %6u %7u %10.3f %9.3f %7.3f %10.3f %4u\n", label, p->alpha,
           p->lambda, p->min_tokens, p->cache ? "auto" : "off",
           g->mode == LLEP_PLAN_LLEP ? "llep" : "ep", g->transfers, g->points,
           g->makespan_ns / 1e6, g->weight_bytes / (1024.0 * 1024.0), slower(g, best),
           g->model_ns / 1e6, g->model_rank);
}

static void print_model_check(const llep_bench *b, const tune *t, const model_check *mc) {
    const point *pick = &t->pts[t->gs[mc->pick].rep];

    printf("model: the %s cost model (%s) ranked the %u distinct plans; %u measured ",
           b->cost.backend, b->cost.device_name, t->ng, t->nm);
    if (mc->all_measured)
        printf("(--tune-top 0: all)\n");
    else
        printf("(its top %u, --tune-top %u, and the defaults')\n", b->o.tune_top,
               b->o.tune_top);
    printf("model: its top pick (alpha %g, lambda %g, m %u, cache %s) measured #%u of %u "
           "(%.3fx the best's makespan); the measured best is its #%u\n", pick->alpha,
           pick->lambda, pick->min_tokens, pick->cache ? "auto" : "off", mc->pick_rank, t->nm,
           slower(&t->gs[mc->pick], &t->gs[t->order[0]]), mc->best_model_rank);
    if (mc->all_measured)
        printf("model: its top %u (--tune-top %u) %s the measured best%s; the best point they "
               "hold takes %.3fx the best's makespan\n", mc->top, mc->top,
               mc->top_has_best ? "hold" : "miss",
               mc->top_has_best ? ": pruning loses nothing here" : "", mc->top_best_vs_best);
}

static void print_table(const llep_bench *b, const tune *t, const model_check *mc) {
    const point *pts = t->pts;
    const group *gs = t->gs, *best = &gs[t->order[0]];

    llep__bench_print_header(b, stdout, "");
    printf("tune: scenario %s, %zu grid points (alpha x lambda x m x cache), %u distinct plans, "
           "%u measured, %u rounds; makespan = each device's least busy time over the rounds, "
           "the largest; model = the calibrated cost model's makespan, m# its rank; m in this "
           "run's tokens (%u per device)\n\n", t->sc->name, (size_t)NPOINTS, t->ng, t->nm,
           b->o.repeat, b->t);
    printf("%-8s %6s %7s %6s %6s %5s %6s %7s %10s %9s %7s %10s %4s\n", "", "alpha", "lambda",
           "m", "cache", "mode", "xfers", "points", "makespan", "w MiB", "/best", "model ms",
           "m#");
    for (uint32_t i = 0; i < t->nm && i < 8; i++) {
        char label[16];
        snprintf(label, sizeof(label), "#%u", i + 1);
        print_row(label, &pts[gs[t->order[i]].rep], &gs[t->order[i]], best);
    }
    point dp = { LLEP_DEFAULT_ALPHA, LLEP_DEFAULT_LAMBDA, LLEP_DEFAULT_MIN_TOKENS, 1, 0, t->def };
    print_row("defaults", &dp, &gs[t->def], best);
    double s = slower(&gs[t->def], best);
    printf("\nbest: alpha %g, lambda %g, m %u, replica cache %s; llepd's defaults take %.3fx "
           "its makespan (%s)\n", pts[best->rep].alpha, pts[best->rep].lambda,
           pts[best->rep].min_tokens, pts[best->rep].cache ? "auto" : "off", s,
           s <= NOISE ? "within this machine's 3 % noise" : "beyond the 3 % noise");
    print_model_check(b, t, mc);
}

/* ---- --json, through json-c ---------------------------------------------------------------- */

/* A double printed with prec decimals, or as %g when prec < 0 (json-c keeps the text), so
 * that 1.1 stays 1.1. */
static json_object *num(double v, int prec) {
    char s[64];
    if (prec < 0)
        snprintf(s, sizeof(s), "%g", v);
    else
        snprintf(s, sizeof(s), "%.*f", prec, v);
    return json_object_new_double_s(v, s);
}

static void add(json_object *o, const char *key, json_object *v) {
    json_object_object_add(o, key, v);
}

/* A point's figures; the measured ones only when its group was measured. */
static json_object *json_point(const point *p, const group *g, const group *best) {
    json_object *o = json_object_new_object();

    add(o, "alpha", num(p->alpha, -1));
    add(o, "lambda", num(p->lambda, -1));
    add(o, "min_tokens", json_object_new_int64(p->min_tokens));
    add(o, "replica_cache", json_object_new_string(p->cache ? "auto" : "off"));
    add(o, "mode", json_object_new_string(g->mode == LLEP_PLAN_LLEP ? "llep" : "ep"));
    add(o, "transfers", json_object_new_int64(g->transfers));
    add(o, "points", json_object_new_int64(g->points));
    add(o, "model_ns", num(g->model_ns, 1));
    add(o, "model_rank", json_object_new_int64(g->model_rank));
    add(o, "measured", json_object_new_boolean(g->measured));
    if (g->measured) {
        add(o, "makespan_ns", json_object_new_int64((int64_t)g->makespan_ns));
        add(o, "weight_bytes_moved", json_object_new_int64((int64_t)g->weight_bytes));
        add(o, "vs_best", num(slower(g, best), 4));
        add(o, "rank", json_object_new_int64(g->rank));
    }
    return o;
}

static json_object *json_model_check(const llep_bench *b, const tune *t,
                                     const model_check *mc) {
    json_object *o = json_object_new_object();
    char hash[32];

    snprintf(hash, sizeof(hash), "%016" PRIx64, llep__cost_hash(&b->cost));
    add(o, "backend", json_object_new_string(b->cost.backend));
    add(o, "device_name", json_object_new_string(b->cost.device_name));
    add(o, "hash", json_object_new_string(hash));
    add(o, "top_pick", json_point(&t->pts[t->gs[mc->pick].rep], &t->gs[mc->pick],
                                  &t->gs[t->order[0]]));
    add(o, "top_pick_measured_rank", json_object_new_int64(mc->pick_rank));
    add(o, "best_model_rank", json_object_new_int64(mc->best_model_rank));
    if (mc->all_measured) {
        add(o, "pruned_top", json_object_new_int64(mc->top));
        add(o, "pruned_contains_best", json_object_new_boolean(mc->top_has_best));
        add(o, "pruned_best_vs_best", num(mc->top_best_vs_best, 4));
    }
    return o;
}

static void print_json(const llep_bench *b, const tune *t, const model_check *mc) {
    const point *pts = t->pts;
    const group *gs = t->gs, *best = &gs[t->order[0]];
    point dp = { LLEP_DEFAULT_ALPHA, LLEP_DEFAULT_LAMBDA, LLEP_DEFAULT_MIN_TOKENS, 1, 0, t->def };
    json_object *o = json_object_new_object(), *ranked = json_object_new_array();
    json_object *by_model = json_object_new_array();

    llep__bench_json_layer(b, o);
    add(o, "scenario", json_object_new_string(t->sc->name));
    add(o, "planner", json_object_new_string(llep__bench_planner_name(
                          b->o.num_planners ? b->o.planners[0] : LLEP_BENCH_LLA)));
    add(o, "repeat", json_object_new_int64(b->o.repeat));
    add(o, "grid_points", json_object_new_int64((int64_t)NPOINTS));
    add(o, "distinct_plans", json_object_new_int64(t->ng));
    add(o, "tune_top", json_object_new_int64(b->o.tune_top));
    add(o, "plans_measured", json_object_new_int64(t->nm));
    add(o, "noise", num(NOISE, 2));
    add(o, "best", json_point(&pts[best->rep], best, best));
    add(o, "defaults", json_point(&dp, &gs[t->def], best));
    add(o, "model", json_model_check(b, t, mc));
    for (uint32_t i = 0; i < t->nm; i++)
        json_object_array_add(ranked, json_point(&pts[gs[t->order[i]].rep], &gs[t->order[i]],
                                                 best));
    add(o, "ranked", ranked);
    for (uint32_t i = 0; i < t->ng; i++)
        json_object_array_add(by_model, json_point(&pts[gs[t->by_model[i]].rep],
                                                   &gs[t->by_model[i]], best));
    add(o, "by_model", by_model);
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                      JSON_C_TO_STRING_SPACED |
                                                      JSON_C_TO_STRING_NOSLASHESCAPE);
    if (!s)
        llep__bench_die("out of memory for the JSON");
    printf("%s\n", s);
    json_object_put(o);
}

int llep__bench_tune(llep_bench *b) {
    tune t = { .sc = b->o.scenario >= 0 ? &llep__scenarios[b->o.scenario]
                                        : llep__scenario_find("80%-4") };
    model_check mc;

    if (!b->have_cost)
        llep__bench_die("--tune: no calibrated cost model");  /* llep__bench_open() made it */
    t.pts = llep__bench_calloc(NPOINTS, sizeof(*t.pts));
    t.gs = llep__bench_calloc(NPOINTS, sizeof(*t.gs));
    llep__bench_route(b, t.sc);
    make_grid(t.pts);
    t.ng = group_points(b, t.pts, t.gs);
    t.def = default_group(t.pts);
    model_groups(b, t.pts, t.gs, t.ng);
    prune(&t, b->o.tune_top);
    uint32_t marked = 0;
    for (uint32_t g = 0; g < t.ng; g++)
        marked += t.gs[g].measured;
    fprintf(stderr, "llep-bench: tune %s: %zu grid points make %u distinct plans; measuring %u "
            "(%s)\n", t.sc->name, (size_t)NPOINTS, t.ng, marked,
            b->o.tune_top ? "the best --tune-top by the cost model and the defaults'" : "all");
    measure(b, &t);
    check_model(b, &t, &mc);
    if (b->o.format == LLEP_BENCH_JSON)
        print_json(b, &t, &mc);
    else
        print_table(b, &t, &mc);
    const point *best = &t.pts[t.gs[t.order[0]].rep];
    if (b->o.write_config)
        llep__bench_write_config(b->o.write_config, best->alpha, best->lambda,
                                 best->min_tokens, best->cache);
    for (uint32_t g = 0; g < t.ng; g++)
        free(t.gs[g].busy);
    free(t.by_model);
    free(t.order);
    free(t.gs);
    free(t.pts);
    return EXIT_SUCCESS;
}
