/* llep-bench-plan: how long one Least-Loaded Assignment takes.
 *
 *   llep-bench-plan [--iterations N] [--devices-per-node D] [--planner lla|cost]
 *                   [--tokens-per-device T] [--json]
 *
 * For each model shape (N experts, P devices, K, tokens per device) and each routing scenario
 * of DESIGN.md section 7, routes the tokens at random (seeded) to get per-expert loads, then
 * times llep__plan_compute() call by call on the daemon's default parameters and prints the
 * median, 99th percentile and minimum. The planner runs once per step on the daemon's critical
 * path, so these are the figures docs/PERFORMANCE.md records. --devices-per-node times the
 * hierarchical placement (llep_plan_params.devices_per_node) instead of the flat one.
 * --planner cost times the cost-aware planner (plan-cost.h, llep__plan_run()) under the
 * nominal 8 x H200 model with the shape's layer figures; --tokens-per-device replaces the
 * shapes' token counts (decode sizes). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json-out.h"
#include "parse-number.h"
#include "plan-cost.h"
#include "plan.h"
#include "scenarios.h"

typedef struct shape {
    const char *name;
    uint32_t experts, devices, top_k, tokens_per_device;
    uint32_t hidden, inter;
} shape;

typedef llep_scenario scenario;

static const shape shapes[] = {
    { "gpt-oss-120b", 128, 8, 4, 32768, 2880, 2880 },
    { "kimi-k2/64", 384, 64, 8, 16384, 7168, 2048 },
};

static uint64_t rng = 0x5eed;

static uint64_t next_random(void) {
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Routes every token-slot: with probability share to a uniformly chosen hot expert, else
 * to a uniformly chosen other expert (all experts when balanced). */
static void route(const shape *sh, const scenario *sc, uint64_t *loads) {
    uint64_t slots = (uint64_t)sh->devices * sh->tokens_per_device * sh->top_k;
    uint64_t threshold = (uint64_t)(sc->share * 18446744073709551615.0);

    memset(loads, 0, sh->experts * sizeof(*loads));
    for (uint64_t i = 0; i < slots; i++) {
        uint64_t r = next_random();
        if (sc->hot && r < threshold)
            loads[r % sc->hot]++;
        else if (sc->hot)
            loads[sc->hot + (next_random() % (sh->experts - sc->hot))]++;
        else
            loads[r % sh->experts]++;
    }
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct figures {
    double median_us, p99_us, min_us, imbalance;
    int llep;
    uint32_t transfers;
    enum llep_plan_pick pick;
} figures;

static const char *const pick_names[] = { "ep", "lla", "refined" };

static int measure(const shape *sh, const scenario *sc, uint32_t iterations, uint32_t per_node,
                   enum llep_planner planner, figures *ret) {
    uint64_t *loads = calloc(sh->experts, sizeof(*loads));
    double *t = calloc(iterations, sizeof(*t));
    llep_plan plan;
    llep_plan_params pp;
    int r = -ENOMEM;

    if (!loads || !t)
        goto out;
    r = llep__plan_init(&plan, sh->experts, sh->devices);
    if (r < 0)
        goto out;
    llep__plan_params_default(&pp);
    pp.devices_per_node = per_node;
    llep_cost_model model;
    llep_cost_layer layer;
    if (planner == LLEP_PLANNER_COST) {
        llep__cost_nominal("h200", &model);
        llep__cost_layer(&layer, sh->hidden, sh->inter, 2, false);
        pp.planner = planner;
        pp.cost = &model;
        pp.cost_layer = &layer;
    }
    route(sh, sc, loads);
    for (uint32_t i = 0; i < iterations && r == 0; i++) {
        double t0 = now_ns();
        r = llep__plan_run(&plan, loads, &pp, NULL);
        t[i] = now_ns() - t0;
    }
    if (r == 0) {
        qsort(t, iterations, sizeof(*t), cmp_double);
        ret->median_us = t[iterations / 2] / 1e3;
        ret->p99_us = t[(size_t)(iterations * 0.99)] / 1e3;
        ret->min_us = t[0] / 1e3;
        ret->imbalance = plan.imbalance;
        ret->llep = plan.mode == LLEP_PLAN_LLEP;
        ret->transfers = plan.num_transfers;
        ret->pick = plan.pick;
    }
    llep__plan_fini(&plan);
out:
    free(loads);
    free(t);
    return r;
}

static void usage(FILE *f) {
    fprintf(f, "Usage: llep-bench-plan [--iterations N] [--devices-per-node D]\n"
               "                       [--planner lla|cost] [--tokens-per-device T] [--json]\n"
               "Times the Least-Loaded Assignment planner on DESIGN.md section 7 scenarios.\n"
               "  --devices-per-node D  hierarchical placement over nodes of D devices (D must\n"
               "                        divide every shape's P: 1, 2, 4 or 8)\n"
               "  --planner cost        the cost-aware planner under the nominal 8 x H200 model\n"
               "  --tokens-per-device T route T tokens per device instead of the shapes' own\n");
}

/* A node size must divide the device count of every shape. */
static int valid_node_size(const char *arg, uint32_t *ret) {
    if (llep__parse_u32(arg, ret) < 0 || *ret == 0)
        return 0;
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        if (shapes[s].devices % *ret != 0)
            return 0;
    return 1;
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        { "iterations", required_argument, NULL, 'n' },
        { "json", no_argument, NULL, 'j' },
        { "devices-per-node", required_argument, NULL, 'd' },
        { "planner", required_argument, NULL, 'p' },
        { "tokens-per-device", required_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint32_t iterations = 20000, per_node = 0, tokens = 0;
    enum llep_planner planner = LLEP_PLANNER_LLA;
    int json = 0, c;

    while ((c = getopt_long(argc, argv, "n:jh", longopts, NULL)) != -1) {
        if (c == 'n' && (llep__parse_u32(optarg, &iterations) < 0 || iterations < 100)) {
            fprintf(stderr, "llep-bench-plan: --iterations: '%s' is not a count >= 100\n", optarg);
            return 2;
        } else if (c == 'd') {
            if (!valid_node_size(optarg, &per_node)) {
                fprintf(stderr, "llep-bench-plan: --devices-per-node: '%s' does not divide "
                        "every shape's device count\n", optarg);
                return 2;
            }
        } else if (c == 'p') {
            if (strcmp(optarg, "lla") != 0 && strcmp(optarg, "cost") != 0) {
                fprintf(stderr, "llep-bench-plan: --planner: '%s' is not lla or cost\n", optarg);
                return 2;
            }
            planner = strcmp(optarg, "cost") == 0 ? LLEP_PLANNER_COST : LLEP_PLANNER_LLA;
        } else if (c == 't') {
            if (llep__parse_u32(optarg, &tokens) < 0 || tokens == 0 || tokens > 1000000) {
                fprintf(stderr, "llep-bench-plan: --tokens-per-device: '%s' is not a count from "
                        "1 to 1000000\n", optarg);
                return 2;
            }
        } else if (c == 'j') {
            json = 1;
        } else if (c == 'h') {
            usage(stdout);
            return 0;
        } else if (c != 'n') {
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "llep-bench-plan: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    /* --json: one array of every case, built whole (a few dozen rows) and written at the end;
     * the table is printed as it goes. */
    json_object *rows = json ? llep__jout_array() : NULL;
    if (!json)
        printf("%-14s %4s %3s %-9s %5s %-7s %9s %6s %10s %10s %10s\n", "shape", "N", "P",
               "scenario", "mode", "pick", "imbalance", "xfers", "median_us", "p99_us", "min_us");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        for (size_t k = 0; k < llep__num_scenarios; k++) {
            shape sized = shapes[s];
            if (tokens)
                sized.tokens_per_device = tokens;
            const shape *sh = &sized;
            const scenario *sc = &llep__scenarios[k];
            figures f = { 0 };
            int r = measure(sh, sc, iterations, per_node, planner, &f);
            if (r < 0) {
                fprintf(stderr, "llep-bench-plan: %s %s: %s\n", sh->name, sc->name, strerror(-r));
                json_object_put(rows);
                return 1;
            }
            if (json) {
                json_object *o = llep__jout_object();
                llep__jout_str(o, "shape", sh->name);
                llep__jout_u64(o, "experts", sh->experts);
                llep__jout_u64(o, "devices", sh->devices);
                llep__jout_u64(o, "tokens_per_device", sh->tokens_per_device);
                llep__jout_str(o, "scenario", sc->name);
                llep__jout_str(o, "mode", f.llep ? "llep" : "ep");
                llep__jout_str(o, "pick", pick_names[f.pick]);
                llep__jout_f64(o, "imbalance", f.imbalance);
                llep__jout_u64(o, "transfers", f.transfers);
                llep__jout_f64(o, "median_us", f.median_us);
                llep__jout_f64(o, "p99_us", f.p99_us);
                llep__jout_f64(o, "min_us", f.min_us);
                llep__jout_push(rows, o);
            } else
                printf("%-14s %4u %3u %-9s %5s %-7s %9.3f %6u %10.3f %10.3f %10.3f\n", sh->name,
                       sh->experts, sh->devices, sc->name, f.llep ? "llep" : "ep",
                       pick_names[f.pick], f.imbalance, f.transfers, f.median_us, f.p99_us,
                       f.min_us);
            fflush(stdout);
        }
    if (rows && llep__jout_write(stdout, rows, LLEP_JOUT_PRETTY, "\n") < 0) {
        fprintf(stderr, "llep-bench-plan: cannot write the JSON output\n");
        return 1;
    }
    return 0;
}
