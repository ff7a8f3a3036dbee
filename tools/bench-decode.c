/* llep-bench --planners: the scenarios under several planners side by side (bench-modes.h).
 *
 * Made for the decode sweep of issue 15 (scripts/bench-decode.sh runs it per batch size and
 * shape): at small batches the paper's LLA (m = 1024) can force a hot expert's remainder onto
 * one helper, so the question per row is whether a planner is ever slower than EP. Every
 * planner runs the same routed inputs, one step each in turn, `repeat` rounds, so all see the
 * same spells of noise. Two makespans per planner: each device's least busy time over the
 * rounds, then the largest (noise only ever adds CPU time: the figure the verdict uses, as in
 * the EP against LLEP table), and the median over the rounds of the step's own makespan.
 * Busy time includes receiving spilled experts' weights; with the replica cache off (the
 * bench's default) every step copies them again.
 *
 * Two bounds per row. `ideal` counts token slots: EP's largest device load over the mean,
 * as if a row cost the same in every chunk. It is not reachable where chunks differ in size:
 * a GEMM runs far below its peak on a few rows (calibrate.h), so EP's hot device, whose rows
 * sit in one large chunk, does more rows per second than a device holding many cold experts'
 * small chunks, which no plan can make larger. `work` is the measured bound: EP's busy time
 * summed over the devices, over P. Every plan runs EP's chunks or pieces of them, and a piece
 * is not cheaper per row than its whole up to a few per cent (on the CPU a chunk of tens of
 * thousands of rows runs a little slower per row than its pieces, whose rows stay in cache),
 * so no plan's makespan is much below it (copies, which it leaves out, only add); runs have
 * come in up to 4 % under it. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench-modes.h"
#include "json-out.h"

/* A planner slower than EP by more than this is a failure of the row (issue 15: 3 % noise). */
#define NOISE 1.03

typedef struct prun {
    uint64_t *busy;          /* [P] least over the rounds */
    uint64_t *step_ns;       /* [repeat] each round's makespan (ns) */
    uint64_t makespan_ns;    /* largest of busy */
    uint64_t median_ns;      /* median of step_ns */
    uint64_t weight_bytes;   /* summed, then per step */
    uint64_t peak_max;       /* largest device peak over the rounds */
    uint32_t transfers;
    enum llep_plan_mode mode;
} prun;

typedef struct prow {
    const llep_scenario *scen;
    double ideal;            /* EP's largest native device load / (total / P) */
    uint64_t work_ns;        /* EP's busy time summed over devices / P; 0 without ep */
    prun runs[LLEP_BENCH_MAX_PLANNERS];
} prow;

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double ideal_of(const llep_bench *b) {
    uint32_t per = b->n / b->p;
    uint64_t total = 0, max = 0;

    for (uint32_t d = 0; d < b->p; d++) {
        uint64_t s = 0;
        for (uint32_t e = d * per; e < (d + 1) * per; e++)
            s += b->loads[e];
        total += s;
        if (s > max)
            max = s;
    }
    return total ? (double)max * b->p / (double)total : 1.0;
}

static void step_planner(llep_bench *b, enum llep_bench_planner pl, prun *r, uint32_t round) {
    llep_plan_params pp;
    llep_engine_stats st;

    llep__bench_planner_params(b, pl, &pp);
    llep__bench_batches(b, b->y_llep);
    if (llep__engine_step(b->eng, b->batches, &pp, &st) < 0)
        llep__bench_die("%s step failed: %s", llep__bench_planner_name(pl),
                        llep__engine_error(b->eng));
    for (uint32_t d = 0; d < b->p; d++) {
        uint64_t busy = st.devices[d].busy_ns;
        if (round == 0 || busy < r->busy[d])
            r->busy[d] = busy;
        if (st.devices[d].peak_bytes > r->peak_max)
            r->peak_max = st.devices[d].peak_bytes;
    }
    r->step_ns[round] = st.makespan_ns;
    r->weight_bytes += st.weight_bytes_moved;
    r->transfers = st.transfers;
    r->mode = st.mode;
}

static void finish(const llep_bench *b, prun *r) {
    for (uint32_t d = 0; d < b->p; d++)
        if (r->busy[d] > r->makespan_ns)
            r->makespan_ns = r->busy[d];
    qsort(r->step_ns, b->o.repeat, sizeof(*r->step_ns), cmp_u64);
    r->median_ns = r->step_ns[b->o.repeat / 2];
    r->weight_bytes /= b->o.repeat;
}

/* The measured bound: EP's least busy time per device, summed, over P. */
static uint64_t work_of(const llep_bench *b, const prun *ep) {
    uint64_t sum = 0;

    for (uint32_t d = 0; d < b->p; d++)
        sum += ep->busy[d];
    return sum / b->p;
}

static void run_row(llep_bench *b, const llep_scenario *s, prow *row, size_t i, size_t n) {
    uint32_t np = b->o.num_planners;

    llep__bench_route(b, s);
    row->scen = s;
    row->ideal = ideal_of(b);
    for (uint32_t j = 0; j < np; j++) {
        row->runs[j].busy = llep__bench_calloc(b->p, sizeof(uint64_t));
        row->runs[j].step_ns = llep__bench_calloc(b->o.repeat, sizeof(uint64_t));
    }
    /* One unmeasured round: first-touch faults and cold caches land outside the figures. */
    for (uint32_t j = 0; j < np; j++) {
        prun scratch = { .busy = llep__bench_calloc(b->p, sizeof(uint64_t)),
                         .step_ns = llep__bench_calloc(1, sizeof(uint64_t)) };
        step_planner(b, b->o.planners[j], &scratch, 0);
        free(scratch.busy);
        free(scratch.step_ns);
    }
    for (uint32_t r = 0; r < b->o.repeat; r++) {
        fprintf(stderr, "[%zu/%zu] %s: round %u/%u\n", i + 1, n, s->name, r + 1, b->o.repeat);
        for (uint32_t j = 0; j < np; j++)
            step_planner(b, b->o.planners[j], &row->runs[j], r);
    }
    for (uint32_t j = 0; j < np; j++) {
        finish(b, &row->runs[j]);
        if (b->o.planners[j] == LLEP_BENCH_EP)
            row->work_ns = work_of(b, &row->runs[j]);
    }
}

/* The index of EP among the planners, or -1. */
static int ep_index(const llep_bench *b) {
    for (uint32_t j = 0; j < b->o.num_planners; j++)
        if (b->o.planners[j] == LLEP_BENCH_EP)
            return (int)j;
    return -1;
}

static double ratio(uint64_t a, uint64_t b) {
    return b ? (double)a / (double)b : 0;
}

static const char *verdict(const prow *row, int ep, uint32_t j) {
    if (ep < 0)
        return "-";
    return (double)row->runs[j].makespan_ns <= NOISE * (double)row->runs[ep].makespan_ns ?
           "ok" : "SLOWER";
}

static void print_table(const llep_bench *b, const prow *rows, size_t nrows) {
    int ep = ep_index(b);

    llep__bench_print_header(b, stdout, "");
    printf("per planner: ms = makespan (each device's least busy time over %u rounds, the "
           "largest), med = median of the rounds' makespans, x = speedup over ep (ms), "
           "%%id = x / ideal (token slots), %%wk = work / ms (work: ep's busy time summed "
           "over devices / P, measured), w = weight MiB moved per step, ok = not slower than "
           "ep beyond %.0f %%; under each planner's name, the mode its plans ran in\n\n",
           b->o.repeat, (NOISE - 1) * 100);
    printf("%-9s %6s %9s", "scenario", "ideal", "work ms");
    for (uint32_t j = 0; j < b->o.num_planners; j++)
        printf(" | %-10s %9s %9s %6s %5s %5s %7s %6s",
               llep__bench_planner_name(b->o.planners[j]), "ms", "med ms", "x", "%id", "%wk",
               "w MiB", "ok?");
    printf("\n");
    for (size_t i = 0; i < nrows; i++) {
        const prow *r = &rows[i];
        printf("%-9s %6.2f %9.3f", r->scen->name, r->ideal, r->work_ns / 1e6);
        for (uint32_t j = 0; j < b->o.num_planners; j++) {
            const prun *u = &r->runs[j];
            double x = ep >= 0 ? ratio(r->runs[ep].makespan_ns, u->makespan_ns) : 0;
            printf(" | %-10s %9.3f %9.3f %6.2f %4.0f%% %4.0f%% %7.2f %6s",
                   u->mode == LLEP_PLAN_LLEP ? "llep" : "ep", u->makespan_ns / 1e6,
                   u->median_ns / 1e6, x, 100 * x / r->ideal,
                   100 * ratio(r->work_ns, u->makespan_ns),
                   (double)u->weight_bytes / (1024.0 * 1024.0), verdict(r, ep, j));
        }
        printf("\n");
    }
}

static json_object *run_json(const prow *row, int ep, uint32_t j) {
    const prun *u = &row->runs[j];
    double x = ep >= 0 ? ratio(row->runs[ep].makespan_ns, u->makespan_ns) : 0;
    json_object *o = llep__jout_object();

    llep__jout_str(o, "mode", u->mode == LLEP_PLAN_LLEP ? "llep" : "ep");
    llep__jout_u64(o, "makespan_ns", u->makespan_ns);
    llep__jout_u64(o, "median_makespan_ns", u->median_ns);
    llep__jout_f64(o, "speedup", x);
    llep__jout_f64(o, "fraction_of_ideal", x / row->ideal);
    llep__jout_f64(o, "fraction_of_work", ratio(row->work_ns, u->makespan_ns));
    llep__jout_u64(o, "weight_bytes_moved", u->weight_bytes);
    llep__jout_u64(o, "transfers", u->transfers);
    llep__jout_u64(o, "peak_bytes", u->peak_max);
    llep__jout_str(o, "verdict", verdict(row, ep, j));
    return o;
}

static json_object *row_json(const llep_bench *b, const prow *row, int ep) {
    json_object *o = llep__jout_object(), *runs = llep__jout_object();

    llep__jout_str(o, "scenario", row->scen->name);
    llep__jout_f64(o, "ideal", row->ideal);
    llep__jout_u64(o, "work_bound_ns", row->work_ns);
    for (uint32_t j = 0; j < b->o.num_planners; j++)
        llep__jout_add(runs, llep__bench_planner_name(b->o.planners[j]), run_json(row, ep, j));
    llep__jout_add(o, "runs", runs);
    return o;
}

/* One document, built whole (a few kilobytes per scenario) and written indented. */
static int print_json(const llep_bench *b, const prow *rows, size_t nrows) {
    int ep = ep_index(b);
    json_object *o = llep__jout_object(), *pl = llep__jout_array(), *sc = llep__jout_array();

    llep__bench_json_layer(b, o);
    llep__jout_str(o, "dtype", "f32");
    llep__jout_f64(o, "alpha", b->o.alpha);
    llep__jout_f64(o, "lambda", b->o.lambda);
    llep__jout_u64(o, "min_tokens", b->o.min_tokens);
    llep__jout_u64(o, "repeat", b->o.repeat);
    /* -1: the cache sized automatically (LLEP_DEVICES_CACHE_AUTO). */
    if (b->o.replica_cache == LLEP_DEVICES_CACHE_AUTO)
        llep__jout_i64(o, "replica_cache", -1);
    else
        llep__jout_u64(o, "replica_cache", b->o.replica_cache);
    llep__jout_f64(o, "noise", NOISE);
    for (uint32_t j = 0; j < b->o.num_planners; j++)
        llep__jout_push(pl, json_object_new_string(llep__bench_planner_name(b->o.planners[j])));
    llep__jout_add(o, "planners", pl);
    for (size_t i = 0; i < nrows; i++)
        llep__jout_push(sc, row_json(b, &rows[i], ep));
    llep__jout_add(o, "scenarios", sc);
    return llep__jout_write(stdout, o, LLEP_JOUT_PRETTY, "\n");
}

int llep__bench_planners(llep_bench *b) {
    size_t first = b->o.scenario >= 0 ? (size_t)b->o.scenario : 0;
    size_t nrows = b->o.scenario >= 0 ? 1 : llep__num_scenarios;
    prow *rows = llep__bench_calloc(nrows, sizeof(*rows));
    int ep = ep_index(b), slower = 0, rc = EXIT_SUCCESS;

    for (size_t i = 0; i < nrows; i++)
        run_row(b, &llep__scenarios[first + i], &rows[i], i, nrows);
    if (b->o.format != LLEP_BENCH_JSON)
        print_table(b, rows, nrows);
    else if (print_json(b, rows, nrows) < 0) {
        fprintf(stderr, "llep-bench: cannot write the JSON output\n");
        rc = EXIT_FAILURE;
    }
    for (size_t i = 0; i < nrows; i++)
        for (uint32_t j = 0; j < b->o.num_planners; j++) {
            slower += ep >= 0 && strcmp(verdict(&rows[i], ep, j), "ok") != 0;
            free(rows[i].runs[j].busy);
            free(rows[i].runs[j].step_ns);
        }
    if (slower)
        fprintf(stderr, "llep-bench: %d planner row(s) slower than ep beyond %.0f %%\n", slower,
                (NOISE - 1) * 100);
    free(rows);
    return rc;
}
