/* Printing plans: a table with bars for people (the JSON for programs is built with json-c
 * in tools/plan-json.c). */
#include "plan-print.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

static const char *mode_name(enum llep_plan_mode m) {
    return m == LLEP_PLAN_LLEP ? "llep" : "ep";
}

static int stream_status(FILE *f) {
    return ferror(f) ? -EIO : 0;
}

#define BAR_WIDTH 28

/* A bar of up to BAR_WIDTH '#', padded to the full width unless it ends the line. */
static void bar(FILE *f, uint64_t v, uint64_t max, int pad) {
    int n = max ? (int)((long double)v * BAR_WIDTH / max + 0.5L) : 0;

    if (v > 0 && n == 0)
        n = 1; /* a device with any load shows at least a sliver */
    for (int i = 0; i < (pad ? BAR_WIDTH : n); i++)
        fputc(i < n ? '#' : ' ', f);
}

static uint64_t max_u64(const uint64_t *v, uint32_t n) {
    uint64_t m = 0;
    for (uint32_t i = 0; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

static void print_header(const llep_plan *p, const llep_plan_params *pp, FILE *f) {
    fprintf(f, "%" PRIu32 " experts on %" PRIu32 " devices, %" PRIu64
               " token-slots (alpha %g, lambda %g, min-tokens %" PRIu64 ")\n\n",
            p->num_experts, p->num_devices, p->total, pp->alpha, pp->lambda, pp->min_tokens);
    const char *why;
    if (pp->policy == LLEP_POLICY_EP)
        why = "policy ep";
    else if (pp->policy == LLEP_POLICY_LLEP)
        why = p->total ? "policy llep" : "nothing routed";
    else if (p->mode == LLEP_PLAN_LLEP)
        why = "imbalance >= lambda";
    else if (p->total && p->imbalance >= pp->lambda)
        why = "imbalance >= lambda, but EP is fastest in the cost model";
    else
        why = p->total ? "imbalance < lambda" : "nothing routed";
    fprintf(f, "  mode       %s (%s)\n", mode_name(p->mode), why);
    fprintf(f, "  imbalance  %.3f  (busiest device's EP load / mean)\n", p->imbalance);
    fprintf(f, "  capacity   %" PRIu64 " token-slots per device\n", p->capacity);
    if (llep__plan_min_tokens(p, pp) != pp->min_tokens)
        fprintf(f, "  min-tokens %" PRIu64 " used (capacity / devices, --scale-min-tokens)\n",
                llep__plan_min_tokens(p, pp));
    fputc('\n', f);
}

static void print_devices(const llep_plan *p, FILE *f) {
    uint64_t ep_max = max_u64(p->native_loads, p->num_devices);
    uint64_t max = max_u64(p->device_loads, p->num_devices);
    uint64_t scale = ep_max > max ? ep_max : max;
    double mean = (double)p->total / p->num_devices;

    fprintf(f, "  %6s  %14s %-*s  %14s\n", "device", "EP load", BAR_WIDTH, "",
            p->mode == LLEP_PLAN_LLEP ? "LLEP load" : "plan load");
    for (uint32_t d = 0; d < p->num_devices; d++) {
        fprintf(f, "  %6" PRIu32 "  %14" PRIu64 " ", d, p->native_loads[d]);
        bar(f, p->native_loads[d], scale, 1);
        fprintf(f, "  %14" PRIu64 " ", p->device_loads[d]);
        bar(f, p->device_loads[d], scale, 0);
        fputc('\n', f);
    }
    if (p->total) {
        fprintf(f, "  %6s  %14.3f %-*s  %14.3f\n", "max/mean", ep_max / mean, BAR_WIDTH, "",
                max / mean);
        fprintf(f, "  speedup bound of this plan over EP (max EP load / max plan load): %.3f\n",
                (double)ep_max / (double)max);
    }
    fputc('\n', f);
}

/* Transfers come grouped by expert because the planner makes them expert by expert. */
static void print_transfers(const llep_plan *p, FILE *f) {
    fprintf(f, "  weight transfers: %" PRIu32 "\n", p->num_transfers);
    for (uint32_t t = 0; t < p->num_transfers;) {
        const llep_transfer *x = &p->transfers[t];
        fprintf(f, "    expert %5" PRIu32 "  device %" PRIu32 " ->", x->expert, x->src);
        for (; t < p->num_transfers && p->transfers[t].expert == x->expert; t++)
            fprintf(f, " %" PRIu32, p->transfers[t].dst);
        fputc('\n', f);
    }
}

int llep__plan_print_report(const llep_plan *p, const llep_plan_params *pp, FILE *f) {
    print_header(p, pp, f);
    print_devices(p, f);
    print_transfers(p, f);
    return stream_status(f);
}

int llep__plan_print_nodes(const llep_plan *p, const llep_plan_nodes *nodes, FILE *f) {
    fprintf(f, "\n  nodes: %" PRIu32 " of %" PRIu32 " devices each (spills stay on the native "
               "node when they can)\n", nodes->num_nodes, nodes->devices_per_node);
    fprintf(f, "  inter-node rows: %" PRIu64 " of %" PRIu64 " token-slots computed off their "
               "home node\n", nodes->rows, p->total);
    fprintf(f, "  inter-node transfers: %" PRIu32 " of %" PRIu32 "\n", nodes->transfers,
            p->num_transfers);
    return stream_status(f);
}
