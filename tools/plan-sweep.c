/* llep-plan-sweep: the modelled decode sweep of issue 15 (docs/PERFORMANCE.md).
 *
 *   llep-plan-sweep [--model nominal:h200|nominal:cpu|FILE] [--devices P] [--summary] [--json]
 *
 * For the gpt-oss-120b and DeepSeek-V3 shapes on P devices (default 8), tokens per device
 * 1, 16, 64, 256, 1024, 4096 and 32768, and the 13 scenarios of DESIGN.md section 7, routes
 * every token-slot at random (seeded, as llep-bench-plan does) and prints the modelled
 * makespan (plan-cost.h: copies received plus chunks per device, copies sent as a bound of
 * their own) of EP, the paper's LLA (m 1024, the daemon's defaults) and the cost-aware
 * planner, each as the same model measures it, with the ideal bound (every expert's whole
 * chunk time spread evenly over the devices) and the cost planner's fraction of it. These are
 * figures of a model: nominal datasheet figures, or with --model FILE a calibration measured
 * on real devices (calib-file.h), never a run of the plans. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib-file.h"
#include "cost.h"
#include "json-out.h"
#include "parse-number.h"
#include "plan-cost.h"
#include "plan.h"
#include "scenarios.h"

typedef struct shape {
    const char *name;
    uint32_t experts, top_k, hidden, inter;
    bool biases;
} shape;

static const shape shapes[] = {
    { "gpt-oss-120b", 128, 4, 2880, 2880, true },
    { "deepseek-v3", 256, 8, 7168, 2048, false },
};
static const uint32_t sizes[] = { 1, 16, 64, 256, 1024, 4096, 32768 };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))
#define NSHAPES (sizeof(shapes) / sizeof(shapes[0]))

static uint64_t next_random(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Every token-slot: with probability share to a uniformly chosen hot expert, else to a
 * uniformly chosen other expert (all experts when balanced); llep-bench-plan's routing. */
static void route(const shape *sh, uint32_t devices, uint32_t tokens, const llep_scenario *sc,
                  uint64_t seed, uint64_t *loads) {
    uint64_t slots = (uint64_t)devices * tokens * sh->top_k, s = seed;
    uint64_t threshold = (uint64_t)(sc->share * 18446744073709551615.0);

    memset(loads, 0, sh->experts * sizeof(*loads));
    for (uint64_t i = 0; i < slots; i++) {
        uint64_t r = next_random(&s);
        if (sc->hot && r < threshold)
            loads[r % sc->hot]++;
        else if (sc->hot)
            loads[sc->hot + next_random(&s) % (sh->experts - sc->hot)]++;
        else
            loads[r % sh->experts]++;
    }
}

typedef struct row {
    double ep_ns, lla_ns, cost_ns, ideal_ns;
    enum llep_plan_pick pick;
} row;

/* The three plans of one case and the ideal bound. */
static int model_case(llep_plan *p, const uint64_t *loads, const llep_cost_model *m,
                      const llep_cost_layer *l, row *ret) {
    llep_plan_params pp;
    int r;

    llep__plan_params_default(&pp);
    pp.policy = LLEP_POLICY_EP;
    if ((r = llep__plan_run(p, loads, &pp, NULL)) < 0)
        return r;
    ret->ep_ns = llep__plan_model_ns(p, m, l, NULL);
    pp.policy = LLEP_POLICY_AUTO;
    if ((r = llep__plan_run(p, loads, &pp, NULL)) < 0)
        return r;
    ret->lla_ns = llep__plan_model_ns(p, m, l, NULL);
    pp.planner = LLEP_PLANNER_COST;
    pp.cost = m;
    pp.cost_layer = l;
    if ((r = llep__plan_run(p, loads, &pp, NULL)) < 0)
        return r;
    ret->cost_ns = llep__plan_model_ns(p, m, l, NULL);
    ret->pick = p->pick;
    if ((r = llep__plan_validate(p, NULL, 0)) < 0)
        return r;
    double sum = 0;
    for (uint32_t x = 0; x < p->num_experts; x++)
        sum += llep__cost_chunk_ns(m, l, loads[x]);
    ret->ideal_ns = sum / p->num_devices;
    return 0;
}

static const char *const pick_names[] = { "ep", "lla", "refined" };

typedef struct summary {
    double worst_cost_vs_ep, worst_cost_vs_lla, min_ideal_frac;
    double log_lla_speedup, log_cost_speedup;
    uint32_t cases, cost_better_than_lla, cost_worse_than_lla;
} summary;

static void summary_add(summary *s, const row *r) {
    double vs_ep = r->cost_ns / r->ep_ns, vs_lla = r->cost_ns / r->lla_ns;
    double frac = r->ideal_ns / r->cost_ns;

    if (s->cases == 0) {
        s->worst_cost_vs_ep = vs_ep;
        s->worst_cost_vs_lla = vs_lla;
        s->min_ideal_frac = frac;
    }
    s->worst_cost_vs_ep = fmax(s->worst_cost_vs_ep, vs_ep);
    s->worst_cost_vs_lla = fmax(s->worst_cost_vs_lla, vs_lla);
    s->min_ideal_frac = fmin(s->min_ideal_frac, frac);
    s->log_lla_speedup += log(r->ep_ns / r->lla_ns);
    s->log_cost_speedup += log(r->ep_ns / r->cost_ns);
    s->cost_better_than_lla += vs_lla < 1 - 1e-9;
    s->cost_worse_than_lla += vs_lla > 1 + 1e-9;
    s->cases++;
}

static void usage(FILE *f) {
    fprintf(f, "Usage: llep-plan-sweep [--model nominal:h200|nominal:cpu|FILE] [--devices P] "
               "[--summary] [--json]\n"
               "Modelled makespans of EP, LLA (m 1024) and the cost-aware planner over decode\n"
               "sizes, the 13 scenarios and the gpt-oss-120b and DeepSeek-V3 shapes.\n"
               "  --model     FILE: a calibration (llepd's calibration.json or what\n"
               "              `llep-bench --calibrate --json` printed) instead of nominal figures\n"
               "  --summary   one line per shape and size instead of one per scenario\n");
}

/* nominal:NAME, else the path of a calibration file (calib-file.h, either form). */
static int parse_model(const char *arg, llep_cost_model *m) {
    llep_calibration cal;
    char err[256];

    if (strncmp(arg, "nominal:", 8) == 0) {
        if (llep__cost_nominal(arg + 8, m) < 0) {
            fprintf(stderr, "llep-plan-sweep: --model: '%s' is not nominal:h200 or nominal:cpu\n",
                    arg);
            return -EINVAL;
        }
        return 0;
    }
    int r = llep__calib_load_any(arg, &cal, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "llep-plan-sweep: --model: %s\n", err);
        return r;
    }
    *m = cal.model;
    return 0;
}

/* One case: a line of the table, or (json not NULL) an object appended to the array json. */
static void print_row(json_object *json, const shape *sh, uint32_t tokens, const char *scenario,
                      const row *r) {
    if (json) {
        json_object *o = llep__jout_object();
        llep__jout_str(o, "shape", sh->name);
        llep__jout_u64(o, "tokens_per_device", tokens);
        llep__jout_str(o, "scenario", scenario);
        llep__jout_f64(o, "ep_us", r->ep_ns / 1e3);
        llep__jout_f64(o, "lla_us", r->lla_ns / 1e3);
        llep__jout_f64(o, "cost_us", r->cost_ns / 1e3);
        llep__jout_str(o, "pick", pick_names[r->pick]);
        llep__jout_f64(o, "ideal_us", r->ideal_ns / 1e3);
        llep__jout_f64(o, "ideal_fraction", r->ideal_ns / r->cost_ns);
        llep__jout_push(json, o);
        return;
    }
    printf("%-12s %6u %-9s %10.1f %10.1f %10.1f %-7s %6.2f %6.2f %6.3f\n", sh->name, tokens,
           scenario, r->ep_ns / 1e3, r->lla_ns / 1e3, r->cost_ns / 1e3, pick_names[r->pick],
           r->ep_ns / r->lla_ns, r->ep_ns / r->cost_ns, r->ideal_ns / r->cost_ns);
}

static void print_summary(const shape *sh, uint32_t tokens, const summary *s) {
    printf("%-12s %6u %8.3f %8.3f %8.3f %8.3f %7.3f %4u/%-4u %4u\n", sh->name, tokens,
           exp(s->log_lla_speedup / s->cases), exp(s->log_cost_speedup / s->cases),
           s->worst_cost_vs_ep, s->worst_cost_vs_lla, s->min_ideal_frac, s->cost_better_than_lla,
           s->cases, s->cost_worse_than_lla);
}

/* Runs every case of one shape and size, printing rows (or not, for --summary; or into the
 * array json). */
static int sweep_size(const shape *sh, uint32_t devices, uint32_t tokens,
                      const llep_cost_model *m, json_object *json, int rows, summary *ret) {
    llep_cost_layer l;
    llep_plan p;
    uint64_t *loads = calloc(sh->experts, sizeof(*loads));
    int r = loads ? llep__plan_init(&p, sh->experts, devices) : -ENOMEM;

    if (r < 0) {
        free(loads);
        return r;
    }
    llep__cost_layer(&l, sh->hidden, sh->inter, 2, sh->biases);
    memset(ret, 0, sizeof(*ret));
    for (size_t k = 0; k < llep__num_scenarios && r == 0; k++) {
        const llep_scenario *sc = &llep__scenarios[k];
        row rw;
        route(sh, devices, tokens, sc, 0x5eed + tokens * 131 + k, loads);
        r = model_case(&p, loads, m, &l, &rw);
        if (r == 0) {
            summary_add(ret, &rw);
            if (rows)
                print_row(json, sh, tokens, sc->name, &rw);
        }
    }
    llep__plan_fini(&p);
    free(loads);
    return r;
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        { "model", required_argument, NULL, 'm' },
        { "devices", required_argument, NULL, 'd' },
        { "summary", no_argument, NULL, 's' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    llep_cost_model m;
    uint32_t devices = 8;
    int json = 0, only_summary = 0, c;

    llep__cost_nominal("h200", &m);
    while ((c = getopt_long(argc, argv, "m:d:sjh", longopts, NULL)) != -1) {
        if (c == 'm' && parse_model(optarg, &m) < 0)
            return 2;
        if (c == 'd' && (llep__parse_u32(optarg, &devices) < 0 || devices == 0 || 128 % devices)) {
            fprintf(stderr, "llep-plan-sweep: --devices: '%s' does not divide 128\n", optarg);
            return 2;
        }
        if (c == 's')
            only_summary = 1;
        if (c == 'j')
            json = 1;
        if (c == 'h') {
            usage(stdout);
            return 0;
        }
        if (c == '?') {
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc || (json && only_summary)) {
        usage(stderr);
        return 2;
    }
    /* --json: one array of every case, built whole (a few hundred rows) and written at the
     * end. */
    json_object *rows = json ? llep__jout_array() : NULL;
    if (only_summary)
        printf("%-12s %6s %8s %8s %8s %8s %7s %9s %4s\n", "shape", "tokens", "lla_x", "cost_x",
               "cost/ep", "cost/lla", "ideal", "<lla", ">lla");
    else if (!json)
        printf("%-12s %6s %-9s %10s %10s %10s %-7s %6s %6s %6s\n", "shape", "tokens", "scenario",
               "ep_us", "lla_us", "cost_us", "pick", "lla_x", "cost_x", "ideal");
    for (size_t s = 0; s < NSHAPES; s++)
        for (size_t t = 0; t < NSIZES; t++) {
            summary sum;
            int r = sweep_size(&shapes[s], devices, sizes[t], &m, rows, !only_summary, &sum);
            if (r < 0) {
                fprintf(stderr, "llep-plan-sweep: %s at %u tokens: %s\n", shapes[s].name,
                        sizes[t], strerror(-r));
                json_object_put(rows);
                return 1;
            }
            if (only_summary)
                print_summary(&shapes[s], sizes[t], &sum);
            fflush(stdout);
        }
    if (rows && llep__jout_write(stdout, rows, LLEP_JOUT_PRETTY, "\n") < 0) {
        fprintf(stderr, "llep-plan-sweep: cannot write the JSON output\n");
        return 1;
    }
    return 0;
}
