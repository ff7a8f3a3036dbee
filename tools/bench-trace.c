/* llep-bench --trace: persistent skew, replayed with the replica cache off and on
 * (bench-modes.h).
 *
 * The paper's premise is that a post-trained model keeps domain-specific hot experts, so the
 * experts that spill stay the same for many steps and copying their weights to the helpers on
 * every step is waste (issue 15). This mode generates a routing trace of --steps steps in which
 * a share of the token-slots goes to a set of hot experts (the --scenario's share and count):
 *   drift  the hot set changes slowly: every DRIFT_PERIOD steps one hot expert (in turn) is
 *          replaced by another expert, and the shares among the hot experts sway slowly;
 *   jump   the whole hot set is replaced by other experts every JUMP_PERIOD steps.
 * The other slots go to the other experts at random. Two engines on the same layer, each on
 * devices of its own with the same budget, one without a replica cache and one with it, run
 * every step of the trace on the same inputs (in alternating order), under the same planner.
 * Printed: the weight bytes moved per step, the makespans, and each engine's peak device
 * memory against its budget (llep__devices_figures: the most any device ever used, staging
 * included). */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench-modes.h"
#include "json-out.h"

#define DRIFT_PERIOD 50u
#define JUMP_PERIOD 100u
#define WINDOW 100u            /* steps per line of the table */
#define SWAY_PERIOD 250.0      /* steps per cycle of the hot experts' shares (drift) */

typedef struct trace_gen {
    uint32_t n, hot;
    double share;
    int jump;
    uint32_t *hot_set;         /* [hot] expert ids */
    uint64_t rng;
} trace_gen;

typedef struct side {
    const char *name;
    llep_engine *eng;
    uint64_t *w_bytes, *makespan;   /* [steps] */
    uint64_t hits, transfers;
    uint64_t peak, budget;          /* largest over the devices */
} side;

static uint64_t next_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int is_hot(const trace_gen *g, uint32_t e) {
    for (uint32_t i = 0; i < g->hot; i++)
        if (g->hot_set[i] == e)
            return 1;
    return 0;
}

/* An expert not in the hot set, at random. */
static uint32_t pick_cold(trace_gen *g) {
    for (;;) {
        uint32_t e = (uint32_t)(next_rand(&g->rng) % g->n);
        if (!is_hot(g, e))
            return e;
    }
}

/* Moves the hot set to step t of the trace. */
static void advance(trace_gen *g, uint32_t t) {
    if (t == 0) {
        for (uint32_t i = 0; i < g->hot; i++)
            g->hot_set[i] = g->n;
        for (uint32_t i = 0; i < g->hot; i++)
            g->hot_set[i] = pick_cold(g);
    } else if (g->jump && t % JUMP_PERIOD == 0) {
        /* All new: none of the old hot experts stays hot. */
        uint32_t *old = llep__bench_calloc(g->hot, sizeof(*old));
        memcpy(old, g->hot_set, g->hot * sizeof(*old));
        for (uint32_t i = 0; i < g->hot; i++) {
            uint32_t e;
            int again;
            do {
                e = pick_cold(g);
                again = 0;
                for (uint32_t j = 0; j < g->hot; j++)
                    again |= old[j] == e;
            } while (again);
            g->hot_set[i] = e;
        }
        free(old);
    } else if (!g->jump && t % DRIFT_PERIOD == 0) {
        g->hot_set[(t / DRIFT_PERIOD) % g->hot] = pick_cold(g);
    }
}

/* Step t's per-expert loads over total slots. */
static void trace_loads(trace_gen *g, uint32_t t, uint64_t total, uint64_t *loads) {
    uint64_t hot_slots = g->hot ? (uint64_t)llround(g->share * (double)total) : 0, given = 0;
    double w[64], wsum = 0;

    advance(g, t);
    memset(loads, 0, g->n * sizeof(*loads));
    for (uint32_t i = 0; i < g->hot; i++) {
        /* Drift: the hot experts' shares sway slowly, out of phase. */
        double phase = 2 * M_PI * ((double)t / SWAY_PERIOD + (double)i / g->hot);
        w[i] = g->jump ? 1.0 : 1.0 + 0.5 * sin(phase);
        wsum += w[i];
    }
    for (uint32_t i = 0; i < g->hot; i++) {
        uint64_t c = i + 1 < g->hot ? (uint64_t)((double)hot_slots * w[i] / wsum)
                                    : hot_slots - given;
        loads[g->hot_set[i]] += c;
        given += c;
    }
    for (uint64_t s = hot_slots; s < total; s++) {
        uint32_t e;
        do
            e = (uint32_t)(next_rand(&g->rng) % g->n);
        while (g->hot && is_hot(g, e));
        loads[e]++;
    }
}

static void run_side(llep_bench *b, side *s, const llep_plan_params *pp, uint32_t t) {
    llep_engine_stats st;

    llep__bench_batches(b, b->y_llep);
    if (llep__engine_step(s->eng, b->batches, pp, &st) < 0)
        llep__bench_die("trace step %u, cache %s: %s", t, s->name, llep__engine_error(s->eng));
    s->w_bytes[t] = st.weight_bytes_moved;
    s->makespan[t] = st.makespan_ns;
    s->hits += st.cache_hits;
    s->transfers += st.transfers;
}

static void side_figures(const llep_bench *b, side *s, llep_device_figures *f) {
    llep_devices *dv = llep__engine_devices(s->eng);

    for (uint32_t d = 0; d < b->p; d++) {
        llep_device_figures x;
        llep__devices_figures(dv, d, &x);
        if (x.peak > s->peak)
            s->peak = x.peak;
        if (x.budget > s->budget)
            s->budget = x.budget;
        if (d == 0 || x.cache_bytes > f->cache_bytes)
            *f = x;
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t median(const uint64_t *v, uint32_t from, uint32_t to) {
    uint32_t n = to - from;
    uint64_t *c = llep__bench_calloc(n, sizeof(*c));
    memcpy(c, v + from, n * sizeof(*c));
    qsort(c, n, sizeof(*c), cmp_u64);
    uint64_t m = c[n / 2];
    free(c);
    return m;
}

static double mean(const uint64_t *v, uint32_t from, uint32_t to) {
    double s = 0;
    for (uint32_t i = from; i < to; i++)
        s += (double)v[i];
    return to > from ? s / (to - from) : 0;
}

static double mib(double bytes) {
    return bytes / (1024.0 * 1024.0);
}

static void describe(const llep_bench *b, const trace_gen *g, const char *planner, FILE *f,
                     const char *prefix) {
    if (g->jump)
        fprintf(f, "%strace jump: %u steps; %.0f %% of the slots into %u hot experts, the whole "
                "hot set replaced every %u steps; the rest at random; planner %s\n", prefix,
                b->o.steps, g->share * 100, g->hot, JUMP_PERIOD, planner);
    else
        fprintf(f, "%strace drift: %u steps; %.0f %% of the slots into %u hot experts, one of "
                "them replaced every %u steps, their shares swaying (period %.0f steps); the "
                "rest at random; planner %s\n", prefix, b->o.steps, g->share * 100, g->hot,
                DRIFT_PERIOD, SWAY_PERIOD, planner);
}

static void print_table(const llep_bench *b, const trace_gen *g, const char *planner,
                        const side *s, const llep_device_figures *cf) {
    uint32_t n = b->o.steps;
    double w0 = mean(s[0].w_bytes, 0, n), w1 = mean(s[1].w_bytes, 0, n);
    uint64_t m0 = median(s[0].makespan, 0, n), m1 = median(s[1].makespan, 0, n);

    llep__bench_print_header(b, stdout, "");
    describe(b, g, planner, stdout, "");
    printf("makespan = the step's largest device busy time (CPU time, weight copies included); "
           "per window of %u steps: mean weight MiB moved per step, median makespan\n\n",
           WINDOW);
    printf("%-11s %12s %12s %8s %11s %11s %7s\n", "steps", "w MiB off", "w MiB on", "w less",
           "ms off", "ms on", "on/off");
    for (uint32_t a = 0; a < n; a += WINDOW) {
        uint32_t z = a + WINDOW < n ? a + WINDOW : n;
        double x0 = mean(s[0].w_bytes, a, z), x1 = mean(s[1].w_bytes, a, z);
        uint64_t k0 = median(s[0].makespan, a, z), k1 = median(s[1].makespan, a, z);
        char label[32];
        snprintf(label, sizeof(label), "%u-%u", a + 1, z);
        printf("%-11s %12.3f %12.3f %7.1f%% %11.3f %11.3f %7.3f\n", label, mib(x0), mib(x1),
               x0 > 0 ? 100 * (1 - x1 / x0) : 0, k0 / 1e6, k1 / 1e6,
               k0 ? (double)k1 / (double)k0 : 0);
    }
    printf("%-11s %12.3f %12.3f %7.1f%% %11.3f %11.3f %7.3f\n\n", "all", mib(w0), mib(w1),
           w0 > 0 ? 100 * (1 - w1 / w0) : 0, m0 / 1e6, m1 / 1e6, m0 ? (double)m1 / m0 : 0);
    for (int i = 0; i < 2; i++)
        printf("cache %-4s peak %.2f MiB of a %.2f MiB budget per device (%s); %" PRIu64
               " transfers, %" PRIu64 " of them cache hits\n", s[i].name, mib((double)s[i].peak),
               mib((double)s[i].budget), s[i].peak <= s[i].budget ? "within" : "OVER",
               s[i].transfers, s[i].hits);
    printf("cache on, the device caching most at the end: %u experts, %.2f MiB of a %.2f MiB "
           "limit, %" PRIu64 " evicted\n", cf->cache_experts, mib((double)cf->cache_bytes),
           mib((double)cf->cache_limit), cf->cache_evictions);
}

/* One document, built whole (the per-step series hold 4 numbers a step) and written
 * indented. */
static int print_json(const llep_bench *b, const trace_gen *g, const char *planner,
                      const side *s, const llep_device_figures *cf) {
    uint32_t n = b->o.steps;
    json_object *o = llep__jout_object(), *end = llep__jout_object();
    json_object *per = llep__jout_object();

    llep__jout_str(o, "trace", b->o.trace);
    llep__jout_u64(o, "steps", n);
    llep__jout_f64(o, "share", g->share);
    llep__jout_u64(o, "hot", g->hot);
    llep__jout_u64(o, "period", g->jump ? JUMP_PERIOD : DRIFT_PERIOD);
    llep__jout_str(o, "planner", planner);
    llep__bench_json_layer(b, o);
    llep__jout_u64(o, "min_tokens", b->o.min_tokens);
    for (int i = 0; i < 2; i++) {
        json_object *c = llep__jout_object();
        char key[16];
        llep__jout_f64(c, "mean_weight_bytes", mean(s[i].w_bytes, 0, n));
        llep__jout_u64(c, "median_makespan_ns", median(s[i].makespan, 0, n));
        llep__jout_u64(c, "transfers", s[i].transfers);
        llep__jout_u64(c, "cache_hits", s[i].hits);
        llep__jout_u64(c, "peak_bytes", s[i].peak);
        llep__jout_u64(c, "budget_bytes", s[i].budget);
        snprintf(key, sizeof(key), "cache_%s", s[i].name);
        llep__jout_add(o, key, c);
    }
    llep__jout_u64(end, "experts", cf->cache_experts);
    llep__jout_u64(end, "bytes", cf->cache_bytes);
    llep__jout_u64(end, "limit", cf->cache_limit);
    llep__jout_u64(end, "evictions", cf->cache_evictions);
    llep__jout_add(o, "cache_end", end);
    llep__jout_add(per, "weight_bytes_off", llep__jout_u64s(s[0].w_bytes, n));
    llep__jout_add(per, "weight_bytes_on", llep__jout_u64s(s[1].w_bytes, n));
    llep__jout_add(per, "makespan_ns_off", llep__jout_u64s(s[0].makespan, n));
    llep__jout_add(per, "makespan_ns_on", llep__jout_u64s(s[1].makespan, n));
    llep__jout_add(o, "per_step", per);
    return llep__jout_write(stdout, o, LLEP_JOUT_PRETTY, "\n");
}

int llep__bench_trace(llep_bench *b) {
    const llep_scenario *sc = b->o.scenario >= 0 ? &llep__scenarios[b->o.scenario]
                                                 : llep__scenario_find("80%-4");
    enum llep_bench_planner pl = b->o.num_planners ? b->o.planners[0] : LLEP_BENCH_LLA;
    const char *plname = llep__bench_planner_name(pl);
    uint64_t total = (uint64_t)b->p * b->t * b->k;
    uint64_t budget = b->o.device_memory ? b->o.device_memory : LLEP_BENCH_BUDGET_DEFAULT;
    trace_gen g = { .n = b->n, .hot = sc->hot, .share = sc->share,
                    .jump = strcmp(b->o.trace, "jump") == 0, .rng = 99 };
    side s[2] = { { .name = "off" }, { .name = "on" } };
    uint64_t *loads = llep__bench_calloc(b->n, sizeof(*loads));
    llep_plan_params pp;
    llep_device_figures cf = { 0 };

    if (g.hot == 0 || g.hot > 64 || g.hot >= b->n)
        llep__bench_usage_die("--trace: the scenario needs 1 to 64 hot experts, fewer than N");
    g.hot_set = llep__bench_calloc(g.hot, sizeof(*g.hot_set));
    llep__bench_planner_params(b, pl, &pp);
    s[0].eng = llep__bench_engine(b, 0, budget);
    s[1].eng = llep__bench_engine(b, b->o.replica_cache ? b->o.replica_cache
                                                        : LLEP_DEVICES_CACHE_AUTO, budget);
    for (int i = 0; i < 2; i++) {
        s[i].w_bytes = llep__bench_calloc(b->o.steps, sizeof(uint64_t));
        s[i].makespan = llep__bench_calloc(b->o.steps, sizeof(uint64_t));
    }
    describe(b, &g, plname, stderr, "llep-bench: ");
    for (uint32_t t = 0; t < b->o.steps; t++) {
        trace_loads(&g, t, total, loads);
        llep__bench_route_loads(b, loads, 1000 + t);
        if (t % WINDOW == 0)
            fprintf(stderr, "llep-bench: trace step %u/%u\n", t + 1, b->o.steps);
        /* Alternate which engine goes first, so neither always finds the rows warm. */
        run_side(b, &s[t & 1], &pp, t);
        run_side(b, &s[!(t & 1)], &pp, t);
    }
    side_figures(b, &s[0], &cf);
    side_figures(b, &s[1], &cf);
    int written = 0;
    if (b->o.format == LLEP_BENCH_JSON)
        written = print_json(b, &g, plname, s, &cf);
    else
        print_table(b, &g, plname, s, &cf);
    for (int i = 0; i < 2; i++) {
        llep__engine_free(s[i].eng);
        free(s[i].w_bytes);
        free(s[i].makespan);
    }
    free(g.hot_set);
    free(loads);
    if (written < 0)
        fprintf(stderr, "llep-bench: cannot write the JSON output\n");
    return written == 0 && s[0].peak <= s[0].budget && s[1].peak <= s[1].budget ? EXIT_SUCCESS
                                                                                : EXIT_FAILURE;
}
