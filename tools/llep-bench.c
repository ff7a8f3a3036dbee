/* llep-bench: EP against LLEP on the engine, for the scenarios of DESIGN.md section 7.
 *
 * Every scenario runs the same inputs under EP and under LLEP (policy AUTO with lambda, as in
 * the paper), on the CPU backend with scaled-down shapes. Busy times are per-device thread
 * CPU times, so the makespan is meaningful even with more logical devices than cores.
 *
 * With --nodes K the P devices form K nodes (node-major: device d is on node d / (P / K)) and
 * each scenario also runs LLEP with hierarchical placement (llep_plan_params.devices_per_node),
 * reporting beside the flat plan the token rows and weights that would cross nodes. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "bench.h"
#include "bench-modes.h"
#include "bench-calibrate.h"
#include "json-out.h"
#include "moe-cpu.h"
#include "parse-number.h"
#include "tool-random.h"

typedef llep_scenario scenario;
typedef llep_bench_preset preset;
typedef llep_bench_options options;
typedef llep_bench bench;

#define FMT_TABLE LLEP_BENCH_TABLE
#define FMT_JSON LLEP_BENCH_JSON
#define FMT_CSV LLEP_BENCH_CSV

/* One policy's figures for a scenario over its repeats. */
typedef struct run {
    enum llep_plan_mode mode;
    uint64_t makespan_ns, wall_ns;
    double balance;         /* mean device busy / max */
    uint64_t peak_max;      /* largest device peak */
    uint64_t *peak;         /* [P] */
    uint64_t *busy;         /* [P] */
    uint64_t *rows;         /* [P] */
    uint64_t weight_bytes, token_bytes;
    uint64_t slots;
    uint32_t transfers;
    double ffn_gflops;      /* expert FLOPs / summed device busy time */
} run;

/* What one plan moves between nodes (llep__plan_node_traffic). */
typedef struct traffic {
    uint64_t rows;          /* token-slots computed off their home node */
    uint32_t transfers;     /* weight transfers between nodes */
} traffic;

typedef struct result {
    const scenario *scen;
    double imbalance;       /* ideal speedup bound: EP max device load / (total / P) */
    run ep, llep;
    run hier;               /* LLEP with hierarchical placement; only with --nodes */
    traffic x_ep, x_llep, x_hier;  /* cross-node figures; only with --nodes */
    double diff_hier;       /* relative L2 difference of the EP and hierarchical outputs */
    double gemm_gflops;     /* plain cblas_sgemm on the LLEP plan's chunk shapes */
    double diff;            /* relative L2 difference of the EP and LLEP outputs */
} result;


static void usage(FILE *f) {
    fprintf(f,
        "Usage: llep-bench [--preset gpt-oss-120b|gpt-oss-20b|deepseek-v3|kimi-k2]\n"
        "                  [--scenario NAME|all] [--devices P] [--tokens T] [--scale S]\n"
        "                  [--alpha A] [--lambda L] [--min-tokens M] [--repeat R]\n"
        "                  [--json|--csv] [--plot FILE.png] [--backend cpu|cuda|auto]\n"
        "                  [--nodes K] [--replica-cache SIZE|auto|off]\n"
        "                  [--device-memory SIZE] [--planners LIST]\n"
        "                  [--trace drift|jump [--steps N]] [--tune [--tune-top K]\n"
        "                  [--write-config FILE]]\n"
        "       llep-bench --calibrate [--backend cpu|cuda|auto] [--devices P] [--json]\n"
        "\n"
        "Runs the scenarios of DESIGN.md section 7 under EP and LLEP on the same inputs (CPU\n"
        "backend, float32) and prints makespan, speedup, ideal bound, balance efficiency, peak\n"
        "memory and weight bytes moved.\n"
        "  --preset      model shape (default gpt-oss-120b)\n"
        "  --scenario    balanced, 30%%-16, 30%%-4, 30%%-1, 50%%-..., 80%%-..., 95%%-1 or all\n"
        "                (X%%-h: X %% of all token-slots evenly into h hot experts)\n"
        "  --devices     logical devices P (default 8)\n"
        "  --scale       divide D and H by S (default 8)\n"
        "  --tokens      tokens per device (default: the preset's divided by S)\n"
        "  --min-tokens  LLA's m (default 1024 scaled like the tokens)\n"
        "  --alpha, --lambda  LLA parameters (defaults 1.0, 1.3)\n"
        "  --repeat      steps per policy and scenario; each device's least busy time is kept\n"
        "                (default 5)\n"
        "  --plot        draw speedup and peak memory per scenario with gnuplot\n"
        "  --backend     cpu (default), cuda (P logical devices over the visible GPUs, e.g.\n"
        "                --devices 8 on one GPU is cuda:0x8; busy time from CUDA events) or auto\n"
        "  --nodes       K nodes of P / K devices each (K divides P; device d on node\n"
        "                d / (P / K), a token's home node that of its home device): each\n"
        "                scenario also runs LLEP with hierarchical placement, and the table\n"
        "                and --json add makespans flat vs hierarchical and the token rows\n"
        "                (D x 8 bytes each: the f32 row out, the f32 result back) and expert\n"
        "                weights that cross nodes (not in --csv)\n"
        "  --replica-cache  keep spilled experts' weights on their helpers across steps, up\n"
        "                to SIZE per device (K, M, G suffixes) or auto (llepd's default); off\n"
        "                (the default here) copies them every step. w moved is the mean per\n"
        "                LLEP step over the repeats either way\n"
        "  --device-memory  each device's budget (K, M, G suffixes; default: none, the bench\n"
        "                measures memory); a step over it fails\n"
        "  --planners    ep,lla,lla-scaled,cost (any of them, comma-separated): run the scenarios\n"
        "                under each planner in turn, alternating, and print each one's makespan\n"
        "                (the weight copies included), speedup over ep and whether it is\n"
        "                slower than ep beyond 3 %%; lla is the paper's LLA (policy auto with\n"
        "                alpha, lambda, m), lla-scaled the same with m capped at capacity / P,\n"
        "                cost the cost-aware planner with the devices' model, calibrated first.\n"
        "                With --trace or --tune: the one planner they use (default lla)\n"
        "  --trace       replay a routing trace of --steps steps (default 1000) through two\n"
        "                engines, replica cache off and on (auto unless --replica-cache), and\n"
        "                print the weight bytes moved per step, makespans and peak memory\n"
        "                against the budget (llepd's default unless --device-memory): drift\n"
        "                (the hot experts of --scenario, default 80%%-4, change one at a time,\n"
        "                every 50 steps) or jump (all of them every 100 steps)\n"
        "  --tune        search alpha, m, lambda and the replica cache (off, auto) for the\n"
        "                shape and --scenario (default 80%%-4): rank the distinct plans by\n"
        "                the devices' cost model (calibrated first), measure the best of\n"
        "                them and the defaults', print the best point, how far llepd's\n"
        "                defaults are from it and how good the model's ranking was. m is\n"
        "                in this run's tokens: give --tokens the batch llepd will see\n"
        "  --tune-top    with --tune: how many plans to measure, best by the model (default\n"
        "                %u; the defaults' plan is measured too); 0 measures all of them and\n"
        "                says whether the default would have kept the measured best\n"
        "  --write-config  with --tune: set alpha, lambda, min-tokens and replica-cache in\n"
        "                this llepd config file to the best point, keeping its other lines\n"
        "  --calibrate   measure the backend's device cost model instead (chunk time against\n"
        "                rows, transfers) and print it as `llepctl tune` does\n"
        "Environment: LLEP_BENCH_THREADS host threads running the devices (default 1, so\n"
        "devices do not disturb each other's CPU time); OPENBLAS_CORETYPE as for OpenBLAS.\n",
        LLEP_BENCH_TUNE_TOP);
}

static uint32_t parse_u32(const char *opt, const char *s, uint32_t min) {
    uint32_t v;
    if (llep__parse_u32(s, &v) < 0 || v < min)
        llep__bench_usage_die("%s: '%s' is not an integer >= %u", opt, s, min);
    return v;
}

static double parse_pos(const char *opt, const char *s) {
    double v;
    if (llep__parse_double(s, &v) < 0 || !(v > 0))
        llep__bench_usage_die("%s: '%s' is not a number > 0", opt, s);
    return v;
}

/* --planners ep,lla,...: each planner once, in the order given. */
static void parse_planners(const char *arg, options *o) {
    char buf[256];

    if (strlen(arg) >= sizeof(buf))
        llep__bench_usage_die("--planners: '%.40s...' is too long", arg);
    snprintf(buf, sizeof(buf), "%s", arg);
    o->num_planners = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int pl = llep__bench_planner_parse(tok);
        if (pl < 0)
            llep__bench_usage_die("--planners: unknown planner '%s' (ep, lla, lla-scaled or cost)",
                                  tok);
        for (uint32_t i = 0; i < o->num_planners; i++)
            if (o->planners[i] == (enum llep_bench_planner)pl)
                llep__bench_usage_die("--planners: '%s' is given twice", tok);
        o->planners[o->num_planners++] = (enum llep_bench_planner)pl;
    }
    if (o->num_planners == 0)
        llep__bench_usage_die("--planners: no planner named");
}

/* --planners, --trace and --tune are modes of their own, without the classic run's extras;
 * --trace and --tune take at most one planner (default lla). */
static void check_modes(const options *o, int steps_set, int cache_set, int top_set) {
    int modes = (o->num_planners > 0) + (o->trace != NULL) + o->tune;

    if (o->trace && o->tune)
        llep__bench_usage_die("--trace and --tune exclude each other");
    if ((o->trace || o->tune) && o->num_planners > 1)
        llep__bench_usage_die("--planners: --trace and --tune take one planner");
    if (o->trace && cache_set && o->replica_cache == 0)
        llep__bench_usage_die("--trace compares the replica cache off with it on: "
                              "--replica-cache must be a size > 0 or auto");
    if (o->write_config && !o->tune)
        llep__bench_usage_die("--write-config needs --tune");
    if (top_set && !o->tune)
        llep__bench_usage_die("--tune-top needs --tune");
    if (steps_set && !o->trace)
        llep__bench_usage_die("--steps needs --trace");
    if (modes && (o->nodes || o->plot || o->format == FMT_CSV))
        llep__bench_usage_die("--nodes, --plot and --csv go with the EP against LLEP run only, "
                              "not with --planners, --trace or --tune");
}

static void parse_options(int argc, char **argv, options *o) {
    static const struct option longopts[] = {
        { "preset", required_argument, NULL, 'p' },
        { "scenario", required_argument, NULL, 's' },
        { "devices", required_argument, NULL, 'P' },
        { "tokens", required_argument, NULL, 'T' },
        { "scale", required_argument, NULL, 'S' },
        { "alpha", required_argument, NULL, 'a' },
        { "lambda", required_argument, NULL, 'l' },
        { "min-tokens", required_argument, NULL, 'm' },
        { "repeat", required_argument, NULL, 'r' },
        { "json", no_argument, NULL, 'j' },
        { "csv", no_argument, NULL, 'c' },
        { "plot", required_argument, NULL, 'o' },
        { "backend", required_argument, NULL, 'B' },
        { "nodes", required_argument, NULL, 'N' },
        { "replica-cache", required_argument, NULL, 'C' },
        { "device-memory", required_argument, NULL, 'M' },
        { "planners", required_argument, NULL, 'L' },
        { "trace", required_argument, NULL, 't' },
        { "steps", required_argument, NULL, 'n' },
        { "tune", no_argument, NULL, 'u' },
        { "write-config", required_argument, NULL, 'w' },
        { "tune-top", required_argument, NULL, 'k' },
        { "calibrate", no_argument, NULL, 'K' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    int c, steps_set = 0, cache_set = 0, top_set = 0;

    *o = (options){ .preset = &llep__bench_presets[0], .scenario = -1, .devices = 8, .scale = 8,
                    .repeat = 5, .alpha = LLEP_DEFAULT_ALPHA, .lambda = LLEP_DEFAULT_LAMBDA,
                    .backend = LLEP_BACKEND_CPU, .steps = 1000,
                    .tune_top = LLEP_BENCH_TUNE_TOP };
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            o->preset = NULL;
            for (size_t i = 0; i < llep__bench_num_presets; i++)
                if (strcmp(optarg, llep__bench_presets[i].name) == 0)
                    o->preset = &llep__bench_presets[i];
            if (!o->preset)
                llep__bench_usage_die("--preset: unknown preset '%s'", optarg);
            break;
        case 's':
            if (strcmp(optarg, "all") == 0) {
                o->scenario = -1;
            } else {
                const llep_scenario *sc = llep__scenario_find(optarg);
                if (!sc)
                    llep__bench_usage_die("--scenario: unknown scenario '%s' (see --help)", optarg);
                o->scenario = (int)(sc - llep__scenarios);
            }
            break;
        case 'P': o->devices = parse_u32("--devices", optarg, 1); break;
        case 'T': o->tokens = parse_u32("--tokens", optarg, 1); o->tokens_set = 1; break;
        case 'S': o->scale = parse_u32("--scale", optarg, 1); break;
        case 'a': o->alpha = parse_pos("--alpha", optarg); break;
        case 'l': o->lambda = parse_pos("--lambda", optarg); break;
        case 'm':
            o->min_tokens = parse_u32("--min-tokens", optarg, 0);
            o->min_tokens_set = 1;
            break;
        case 'r': o->repeat = parse_u32("--repeat", optarg, 1); break;
        case 'N': o->nodes = parse_u32("--nodes", optarg, 1); break;
        case 'C':
            cache_set = 1;
            if (strcmp(optarg, "auto") == 0)
                o->replica_cache = LLEP_DEVICES_CACHE_AUTO;
            else if (strcmp(optarg, "off") == 0)
                o->replica_cache = 0;
            else if (llep__parse_size(optarg, &o->replica_cache) < 0 ||
                     o->replica_cache == LLEP_DEVICES_CACHE_AUTO)
                llep__bench_usage_die("--replica-cache: '%s' is not a size, auto or off", optarg);
            break;
        case 'M':
            if (llep__parse_size(optarg, &o->device_memory) < 0 || o->device_memory == 0)
                llep__bench_usage_die("--device-memory: '%s' is not a size > 0", optarg);
            break;
        case 'L': parse_planners(optarg, o); break;
        case 't':
            if (strcmp(optarg, "drift") != 0 && strcmp(optarg, "jump") != 0)
                llep__bench_usage_die("--trace: '%s' is not drift or jump", optarg);
            o->trace = optarg;
            break;
        case 'n': o->steps = parse_u32("--steps", optarg, 1); steps_set = 1; break;
        case 'u': o->tune = 1; break;
        case 'k': o->tune_top = parse_u32("--tune-top", optarg, 0); top_set = 1; break;
        case 'K': o->calibrate = 1; break;
        case 'w':
            if (!optarg[0])
                llep__bench_usage_die("--write-config: the file name is empty");
            o->write_config = optarg;
            break;
        case 'j': o->format = FMT_JSON; break;
        case 'c': o->format = FMT_CSV; break;
        case 'o': o->plot = optarg; break;
        case 'B':
            if (strcmp(optarg, "cpu") == 0)
                o->backend = LLEP_BACKEND_CPU;
            else if (strcmp(optarg, "cuda") == 0)
                o->backend = LLEP_BACKEND_CUDA;
            else if (strcmp(optarg, "auto") == 0)
                o->backend = LLEP_BACKEND_AUTO;
            else
                llep__bench_usage_die("--backend: '%s' is not cpu, cuda or auto", optarg);
            break;
        case 'h': usage(stdout); exit(EXIT_SUCCESS);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc)
        llep__bench_usage_die("unexpected argument '%s'", argv[optind]);
    if (o->calibrate)
        return;
    check_modes(o, steps_set, cache_set, top_set);
    /* A trace compares the cache off with it on: on means llepd's default unless given. */
    if (o->trace && !cache_set)
        o->replica_cache = LLEP_DEVICES_CACHE_AUTO;
    if (o->preset->n % o->devices)
        llep__bench_usage_die("--devices: %s has %u experts, not a multiple of %u", o->preset->name, o->preset->n,
            o->devices);
    if (o->nodes && o->devices % o->nodes)
        llep__bench_usage_die("--nodes: %u does not divide --devices %u", o->nodes, o->devices);
    if (!o->tokens_set)
        o->tokens = o->preset->tokens / o->scale ? o->preset->tokens / o->scale : 1;
    if (!o->min_tokens_set) {
        o->min_tokens = (uint64_t)LLEP_DEFAULT_MIN_TOKENS * o->tokens / o->preset->tokens;
        if (o->min_tokens < 1)
            o->min_tokens = 1;
    }
}

/* Takes a step's figures; busy times keep, per device, the least seen over the repeats. */
static void add_step(bench *b, const llep_engine_stats *st, run *r, int first) {
    r->mode = st->mode;
    r->wall_ns = first || st->wall_ns < r->wall_ns ? st->wall_ns : r->wall_ns;
    r->slots = st->slots;
    r->peak_max = 0;
    for (uint32_t d = 0; d < b->p; d++) {
        uint64_t busy = st->devices[d].busy_ns;
        r->busy[d] = first || busy < r->busy[d] ? busy : r->busy[d];
        r->peak[d] = st->devices[d].peak_bytes;
        r->rows[d] = st->devices[d].rows;
        if (r->peak[d] > r->peak_max)
            r->peak_max = r->peak[d];
    }
    /* Summed over the repeats, a mean per step after finish_run(): with the replica cache the
     * first step moves the weights and later ones may not. */
    r->weight_bytes = (first ? 0 : r->weight_bytes) + st->weight_bytes_moved;
    r->token_bytes = st->token_bytes_moved;
    r->transfers = st->transfers;
}

static void finish_run(bench *b, run *r) {
    uint64_t sum = 0;

    r->makespan_ns = 0;
    for (uint32_t d = 0; d < b->p; d++) {
        sum += r->busy[d];
        if (r->busy[d] > r->makespan_ns)
            r->makespan_ns = r->busy[d];
    }
    r->balance = r->makespan_ns ? (double)sum / b->p / (double)r->makespan_ns : 1.0;
    r->weight_bytes /= b->o.repeat;
    r->ffn_gflops = sum ? (double)(r->slots * 6 * (uint64_t)b->d * b->h) / (double)sum : 0;
}

/* One step of one policy on the scenario's inputs, writing the outputs to y. per_node:
 * llep_plan_params.devices_per_node (0: flat). */
static void step_policy(bench *b, enum llep_policy pol, uint32_t per_node, float **y, run *out,
                        int first) {
    llep_plan_params pp = { .alpha = b->o.alpha, .lambda = b->o.lambda,
                            .min_tokens = b->o.min_tokens, .policy = pol,
                            .devices_per_node = per_node };
    llep_engine_stats st;

    for (uint32_t p = 0; p < b->p; p++)
        b->batches[p] = (llep_engine_batch){ b->t, b->x[p], b->idx[p], b->topk_w[p], y[p] };
    if (llep__engine_step(b->eng, b->batches, &pp, &st) < 0)
        llep__bench_die("step failed: %s", llep__engine_error(b->eng));
    add_step(b, &st, out, first);
}

/* Runs EP and LLEP `repeat` times each, alternating, so both see the same spells of noise
 * from whatever else the machine runs. Noise only ever adds CPU time, so each device's busy
 * time is the least it took over the repeats; the makespan is the largest of these. */
/* Cross-node figures of the engine's last plan, from the scenario's node loads. */
static void node_traffic(bench *b, traffic *ret) {
    const llep_plan *pl = llep__engine_plan(b->eng);
    int r = llep__plan_node_traffic(pl, b->p / b->o.nodes, (const uint64_t *const *)b->node_loads,
                                    b->o.nodes, &ret->rows, &ret->transfers);
    if (r < 0)
        llep__bench_die("counting the traffic between nodes failed: %s", strerror(-r));
}

/* Runs EP and LLEP (and, with --nodes, hierarchical LLEP) `repeat` times each, alternating,
 * so all see the same spells of noise from whatever else the machine runs. Noise only ever
 * adds CPU time, so each device's busy time is the least it took over the repeats; the
 * makespan is the largest of these. Plans are deterministic, so the first repeat's give the
 * cross-node figures. */
static void run_pair(bench *b, result *res, const char *label, size_t si, size_t ns) {
    run *runs[3] = { &res->ep, &res->llep, &res->hier };
    int nruns = b->o.nodes ? 3 : 2;
    uint32_t per_node = b->o.nodes ? b->p / b->o.nodes : 0;

    for (int j = 0; j < nruns; j++) {
        runs[j]->peak = llep__bench_calloc(b->p, sizeof(uint64_t));
        runs[j]->busy = llep__bench_calloc(b->p, sizeof(uint64_t));
        runs[j]->rows = llep__bench_calloc(b->p, sizeof(uint64_t));
    }
    for (uint32_t i = 0; i < b->o.repeat; i++) {
        fprintf(stderr, "[%zu/%zu] %s: EP and LLEP%s, step %u/%u\n", si + 1, ns, label,
                b->o.nodes ? " (flat and hierarchical)" : "", i + 1, b->o.repeat);
        step_policy(b, LLEP_POLICY_EP, 0, b->y_ep, &res->ep, i == 0);
        res->imbalance = llep__engine_plan(b->eng)->imbalance;
        if (b->o.nodes && i == 0)
            node_traffic(b, &res->x_ep);
        if (b->o.nodes) {
            step_policy(b, LLEP_POLICY_AUTO, per_node, b->y_hier, &res->hier, i == 0);
            if (i == 0)
                node_traffic(b, &res->x_hier);
        }
        /* Flat LLEP last: the plain-GEMM yardstick reads the engine's last plan. */
        step_policy(b, LLEP_POLICY_AUTO, 0, b->y_llep, &res->llep, i == 0);
        if (b->o.nodes && i == 0)
            node_traffic(b, &res->x_llep);
    }
    for (int j = 0; j < nruns; j++)
        finish_run(b, runs[j]);
}

/* Plain cblas_sgemm on the GEMMs the engine ran for the last plan: per chunk, the three GEMMs
 * of each tile of at most LLEP_FFN_TILE_ROWS rows, with each expert's own weight matrices and
 * the chunk's rows streamed like the engine's, timed on this thread's CPU clock. The engine's
 * expert throughput is compared with this, so the ratio shows what the rest of its work
 * (dispatch, activation, combine, bookkeeping) costs. */
static double plain_gemm_gflops(bench *b, const float *wts) {
    const llep_plan *pl = llep__engine_plan(b->eng);
    size_t dh = (size_t)b->d * b->h, tile = LLEP_FFN_TILE_ROWS;
    uint64_t max_rows = 1, flops = 0, ns = 0, rng = 3;

    for (uint32_t i = 0; i < pl->num_ranges; i++)
        if (pl->ranges[i].end - pl->ranges[i].start > max_rows)
            max_rows = pl->ranges[i].end - pl->ranges[i].start;
    float *x = llep__bench_calloc(max_rows * b->d, sizeof(float)), *y = llep__bench_calloc(max_rows * b->d, sizeof(float));
    float *g = llep__bench_calloc(tile * b->h, sizeof(float)), *u = llep__bench_calloc(tile * b->h, sizeof(float));
    for (size_t i = 0; i < max_rows * b->d; i++)
        x[i] = y[i] = llep__tool_frand(&rng);
    for (size_t i = 0; i < tile * b->h; i++)
        g[i] = u[i] = llep__tool_frand(&rng);

    /* Like the engine's busy times, the least of `repeat` passes. */
    for (uint32_t rep = 0; rep < b->o.repeat; rep++) {
        uint64_t pass_ns = 0;
        flops = 0;
        for (uint32_t e = 0; e < b->n; e++) {
            const float *wg = wts + 3 * e * dh, *wu = wg + dh, *wd = wu + dh;
            for (uint32_t i = pl->range_off[e]; i < pl->range_off[e + 1]; i++) {
                uint64_t rows = pl->ranges[i].end - pl->ranges[i].start;
                for (uint64_t r0 = 0; r0 < rows; r0 += tile) {
                    int m = (int)(rows - r0 < tile ? rows - r0 : tile);
                    const float *xa = x + r0 * b->d;
                    uint64_t t0 = llep__bench_cpu_ns();
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, (int)b->h,
                                (int)b->d, 1, xa, (int)b->d, wg, (int)b->h, 0, g, (int)b->h);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, (int)b->h,
                                (int)b->d, 1, xa, (int)b->d, wu, (int)b->h, 0, u, (int)b->h);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, (int)b->d,
                                (int)b->h, 1, g, (int)b->h, wd, (int)b->d, 0, y + r0 * b->d,
                                (int)b->d);
                    pass_ns += llep__bench_cpu_ns() - t0;
                    flops += 6 * (uint64_t)m * b->d * b->h;
                }
            }
        }
        if (rep == 0 || pass_ns < ns)
            ns = pass_ns;
    }
    free(x);
    free(y);
    free(g);
    free(u);
    return ns ? (double)flops / (double)ns : 0;
}

static double output_diff(bench *b, float **y) {
    double num = 0, den = 0;
    for (uint32_t p = 0; p < b->p; p++)
        for (size_t i = 0; i < (size_t)b->t * b->d; i++) {
            double e = b->y_ep[p][i], l = y[p][i];
            num += (e - l) * (e - l);
            den += e * e;
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void run_scenario(bench *b, size_t si, size_t idx, size_t ns, result *res) {
    const scenario *s = &llep__scenarios[si];

    llep__bench_route(b, s);
    res->scen = s;
    run_pair(b, res, s->name, idx, ns);
    res->gemm_gflops = b->ref_w ? plain_gemm_gflops(b, b->ref_w) : 0;
    res->diff = output_diff(b, b->y_llep);
    if (b->o.nodes)
        res->diff_hier = output_diff(b, b->y_hier);
}

static double mib(uint64_t bytes) {
    return (double)bytes / (1024.0 * 1024.0);
}

static double speedup(const result *r) {
    return r->llep.makespan_ns ? (double)r->ep.makespan_ns / (double)r->llep.makespan_ns : 0;
}


static void print_table(const bench *b, const result *res, size_t nres) {
    llep__bench_print_header(b, stdout, "");
    printf("peak = largest per-device peak (weights + token buffers); GEMM eff = engine "
           "expert FLOP/s (all device work) / plain cblas_sgemm on the same GEMMs\n\n");
    printf("%-9s %4s %9s %9s %7s %6s %6s %6s %6s %9s %9s %8s %5s %9s\n", "scenario", "mode",
           "EP ms", "LLEP ms", "speedup", "ideal", "%ideal", "bal.EP", "bal.LL", "peak EP",
           "peak LL", "w moved", "GEMM", "EP-LL");
    printf("%-9s %4s %9s %9s %7s %6s %6s %6s %6s %9s %9s %8s %5s %9s\n", "", "", "", "", "", "",
           "", "", "", "MiB", "MiB", "MiB", "eff", "rel L2");
    for (size_t i = 0; i < nres; i++) {
        const result *r = &res[i];
        double sp = speedup(r);
        printf("%-9s %4s %9.1f %9.1f %7.2f %6.2f %5.0f%% %6.3f %6.3f %9.1f %9.1f %8.1f %5.2f %9.2g\n",
               r->scen->name, r->llep.mode == LLEP_PLAN_LLEP ? "llep" : "ep",
               r->ep.makespan_ns / 1e6, r->llep.makespan_ns / 1e6, sp, r->imbalance,
               100 * sp / r->imbalance, r->ep.balance, r->llep.balance, mib(r->ep.peak_max),
               mib(r->llep.peak_max), mib(r->llep.weight_bytes),
               r->gemm_gflops > 0 ? r->llep.ffn_gflops / r->gemm_gflops : 0, r->diff);
    }
}

/* Bytes a token row costs between nodes: the row out in the bench's float32 and the f32
 * result back. */
static uint64_t row_bytes(const bench *b) {
    return (uint64_t)b->d * (sizeof(float) + 4);
}

static double hier_ratio(const result *r) {
    return r->llep.makespan_ns ? (double)r->hier.makespan_ns / (double)r->llep.makespan_ns : 0;
}

/* With --nodes: flat LLEP against hierarchical, makespans and what crosses nodes. */
static void print_node_table(const bench *b, const result *res, size_t nres) {
    uint64_t rb = row_bytes(b), eb = llep__engine_expert_bytes(b->eng);
    uint32_t per_node = b->p / b->o.nodes;

    printf("\n%u nodes of %u devices (device d on node d / %u; a token's home node is its home "
           "device's): LLEP flat vs hierarchical (spills stay on the native node when they "
           "can)\n", b->o.nodes, per_node, per_node);
    printf("x-rows = token-slots computed off their home node; tok MiB = x-rows x D x 8 "
           "(f32 row out, f32 result back); xfers = weight transfers between nodes, "
           "w MiB = xfers x %.2f MiB\n\n", mib(eb));
    printf("%-9s %9s %9s %6s %9s %9s %9s %8s %8s %6s %6s %8s %8s\n", "scenario", "flat ms",
           "hier ms", "h/f", "x-rows", "x-rows", "x-rows", "tok MiB", "tok MiB", "xfers",
           "xfers", "w MiB", "w MiB");
    printf("%-9s %9s %9s %6s %9s %9s %9s %8s %8s %6s %6s %8s %8s\n", "", "", "", "", "EP",
           "flat", "hier", "flat", "hier", "flat", "hier", "flat", "hier");
    for (size_t i = 0; i < nres; i++) {
        const result *r = &res[i];
        printf("%-9s %9.1f %9.1f %6.3f %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %8.1f %8.1f %6u "
               "%6u %8.1f %8.1f\n", r->scen->name, r->llep.makespan_ns / 1e6,
               r->hier.makespan_ns / 1e6, hier_ratio(r), r->x_ep.rows, r->x_llep.rows,
               r->x_hier.rows, mib(r->x_llep.rows * rb), mib(r->x_hier.rows * rb),
               r->x_llep.transfers, r->x_hier.transfers, mib(r->x_llep.transfers * eb),
               mib(r->x_hier.transfers * eb));
    }
}

static void print_csv(const bench *b, const result *res, size_t nres) {
    llep__bench_print_header(b, stdout, "# ");
    printf("scenario,mode,ep_makespan_ms,llep_makespan_ms,speedup,ideal,ep_balance,"
           "llep_balance,ep_peak_bytes,llep_peak_bytes,weight_bytes_moved,llep_token_bytes_moved,"
           "engine_gflops,plain_sgemm_gflops,ep_llep_rel_l2\n");
    for (size_t i = 0; i < nres; i++) {
        const result *r = &res[i];
        printf("%s,%s,%.3f,%.3f,%.4f,%.4f,%.4f,%.4f,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
               ",%.2f,%.2f,%.3g\n", r->scen->name, r->llep.mode == LLEP_PLAN_LLEP ? "llep" : "ep",
               r->ep.makespan_ns / 1e6, r->llep.makespan_ns / 1e6, speedup(r), r->imbalance,
               r->ep.balance, r->llep.balance, r->ep.peak_max, r->llep.peak_max,
               r->llep.weight_bytes, r->llep.token_bytes, r->llep.ffn_gflops, r->gemm_gflops,
               r->diff);
    }
}

static json_object *json_run(const bench *b, const run *r) {
    json_object *o = llep__jout_object();

    llep__jout_str(o, "mode", r->mode == LLEP_PLAN_LLEP ? "llep" : "ep");
    llep__jout_u64(o, "makespan_ns", r->makespan_ns);
    llep__jout_u64(o, "wall_ns", r->wall_ns);
    llep__jout_f64(o, "balance", r->balance);
    llep__jout_u64(o, "transfers", r->transfers);
    llep__jout_u64(o, "weight_bytes_moved", r->weight_bytes);
    llep__jout_u64(o, "token_bytes_moved", r->token_bytes);
    llep__jout_f64(o, "gflops", r->ffn_gflops);
    llep__jout_add(o, "busy_ns", llep__jout_u64s(r->busy, b->p));
    llep__jout_add(o, "rows", llep__jout_u64s(r->rows, b->p));
    llep__jout_add(o, "peak_bytes", llep__jout_u64s(r->peak, b->p));
    return o;
}

static json_object *json_traffic(const bench *b, const traffic *t) {
    json_object *o = llep__jout_object();

    llep__jout_u64(o, "rows", t->rows);
    llep__jout_u64(o, "token_bytes", t->rows * row_bytes(b));
    llep__jout_u64(o, "transfers", t->transfers);
    llep__jout_u64(o, "weight_bytes", t->transfers * llep__engine_expert_bytes(b->eng));
    return o;
}

/* The --nodes part of a scenario: the hierarchical run and what each plan moves between
 * nodes. */
static void json_nodes(const bench *b, const result *r, json_object *o) {
    json_object *x = llep__jout_object();

    llep__jout_add(o, "hier", json_run(b, &r->hier));
    llep__jout_f64(o, "hier_makespan_ratio", hier_ratio(r));
    llep__jout_f64(o, "ep_hier_rel_l2", r->diff_hier);
    llep__jout_add(x, "ep", json_traffic(b, &r->x_ep));
    llep__jout_add(x, "llep", json_traffic(b, &r->x_llep));
    llep__jout_add(x, "hier", json_traffic(b, &r->x_hier));
    llep__jout_add(o, "inter_node", x);
}

/* One document, built whole (a few kilobytes per scenario) and written indented. */
static int print_json(const bench *b, const result *res, size_t nres) {
    json_object *o = llep__jout_object(), *scens = llep__jout_array();

    llep__bench_json_layer(b, o);
    llep__jout_str(o, "dtype", "f32");
    llep__jout_f64(o, "alpha", b->o.alpha);
    llep__jout_f64(o, "lambda", b->o.lambda);
    llep__jout_u64(o, "min_tokens", b->o.min_tokens);
    llep__jout_u64(o, "repeat", b->o.repeat);
    llep__jout_str(o, "busy_time", b->ops == &llep__backend_cpu ? "per-device thread CPU time"
                                                                : "per-device CUDA event time");
    if (b->o.nodes) {
        llep__jout_u64(o, "nodes", b->o.nodes);
        llep__jout_u64(o, "devices_per_node", b->p / b->o.nodes);
        llep__jout_u64(o, "row_bytes", row_bytes(b));
        llep__jout_u64(o, "expert_bytes", llep__engine_expert_bytes(b->eng));
    }
    for (size_t i = 0; i < nres; i++) {
        const result *r = &res[i];
        json_object *sc = llep__jout_object();

        llep__jout_str(sc, "scenario", r->scen->name);
        llep__jout_f64(sc, "speedup", speedup(r));
        llep__jout_f64(sc, "ideal", r->imbalance);
        llep__jout_f64(sc, "plain_sgemm_gflops", r->gemm_gflops);
        llep__jout_f64(sc, "ep_llep_rel_l2", r->diff);
        llep__jout_add(sc, "ep", json_run(b, &r->ep));
        llep__jout_add(sc, "llep", json_run(b, &r->llep));
        if (b->o.nodes)
            json_nodes(b, r, sc);
        llep__jout_push(scens, sc);
    }
    llep__jout_add(o, "scenarios", scens);
    return llep__jout_write(stdout, o, LLEP_JOUT_PRETTY, "\n");
}

/* Draws speedup (with the ideal bound) and peak memory per scenario through gnuplot. */
static int plot(const bench *b, const result *res, size_t nres, const char *file) {
    char data[] = "/tmp/llep-bench-XXXXXX";
    int fd = mkstemp(data);
    if (fd < 0) {
        fprintf(stderr, "llep-bench: --plot: cannot create a data file: %s\n", strerror(errno));
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(data);
        return -1;
    }
    for (size_t i = 0; i < nres; i++)
        fprintf(f, "\"%s\" %.4f %.4f %.3f %.3f\n", res[i].scen->name, speedup(&res[i]),
                res[i].imbalance, mib(res[i].ep.peak_max), mib(res[i].llep.peak_max));
    fclose(f);

    FILE *g = popen("gnuplot 1>&2", "w");
    if (!g) {
        unlink(data);
        return -1;
    }
    fprintf(g,
        "set terminal pngcairo size 1200,900 noenhanced\n"
        "set output '%s'\n"
        "set multiplot layout 2,1 title '%s scaled by %u, P %u, %u tokens/device: EP vs LLEP "
        "(busy = per-device CPU time)'\n"
        "set style data histograms\nset style histogram clustered gap 1\n"
        "set style fill solid 0.8 border -1\nset grid ytics\nset xtics rotate by -30\n"
        "set key top left\nset yrange [0:*]\n"
        "set ylabel 'speedup over EP'\n"
        "plot '%s' using 2:xtic(1) title 'LLEP speedup', '' using 3 title 'ideal bound'\n"
        "set ylabel 'peak memory per device (MiB)'\n"
        "plot '%s' using 4:xtic(1) title 'EP', '' using 5 title 'LLEP'\n"
        "unset multiplot\n",
        file, b->o.preset->name, b->o.scale, b->p, b->t, data, data);
    int st = pclose(g);
    unlink(data);
    if (st != 0) {
        fprintf(stderr, "llep-bench: --plot: gnuplot failed (status %d); is gnuplot (with the "
                "pngcairo terminal) installed? No plot written.\n", st);
        return -1;
    }
    fprintf(stderr, "llep-bench: plot written to %s\n", file);
    return 0;
}

static int have_gnuplot(void) {
    return system("command -v gnuplot >/dev/null 2>&1") == 0;
}

/* The classic run: EP against LLEP for each scenario. */
static int ep_against_llep(bench *b) {
    size_t first = b->o.scenario >= 0 ? (size_t)b->o.scenario : 0;
    size_t nres = b->o.scenario >= 0 ? 1 : llep__num_scenarios;
    result *res = llep__bench_calloc(nres, sizeof(*res));

    /* One unmeasured step so first-touch page faults do not land on the first scenario. */
    llep__bench_route(b, &llep__scenarios[0]);
    llep__bench_batches(b, b->y_ep);
    if (llep__engine_step(b->eng, b->batches, NULL, NULL) < 0)
        llep__bench_die("warm-up step failed: %s", llep__engine_error(b->eng));

    for (size_t i = 0; i < nres; i++)
        run_scenario(b, first + i, i, nres, &res[i]);

    int rc = EXIT_SUCCESS;
    if (b->o.format == FMT_JSON) {
        if (print_json(b, res, nres) < 0) {
            fprintf(stderr, "llep-bench: cannot write the JSON output\n");
            rc = EXIT_FAILURE;
        }
    } else if (b->o.format == FMT_CSV)
        print_csv(b, res, nres);
    else
        print_table(b, res, nres);
    if (b->o.nodes && b->o.format == FMT_TABLE)
        print_node_table(b, res, nres);
    if (b->o.plot && have_gnuplot() && plot(b, res, nres, b->o.plot) < 0)
        rc = EXIT_FAILURE;

    for (size_t i = 0; i < nres; i++) {
        run *rs[3] = { &res[i].ep, &res[i].llep, &res[i].hier };
        for (int j = 0; j < 3; j++) {
            free(rs[j]->peak);
            free(rs[j]->busy);
            free(rs[j]->rows);
        }
    }
    free(res);
    return rc;
}

int main(int argc, char **argv) {
    bench b = { 0 };
    int rc;

    parse_options(argc, argv, &b.o);
    if (b.o.calibrate)
        return llep__bench_calibrate(b.o.backend, b.o.devices, b.o.format == FMT_JSON);
    if (b.o.plot && !have_gnuplot())
        fprintf(stderr, "llep-bench: gnuplot not found in PATH: --plot %s will be skipped\n",
                b.o.plot);
    llep__bench_open(&b);
    llep__bench_print_header(&b, stderr, "llep-bench: ");
    if (b.o.tune)
        rc = llep__bench_tune(&b);
    else if (b.o.trace)
        rc = llep__bench_trace(&b);
    else if (b.o.num_planners)
        rc = llep__bench_planners(&b);
    else
        rc = ep_against_llep(&b);
    llep__bench_close(&b);
    return rc;
}
