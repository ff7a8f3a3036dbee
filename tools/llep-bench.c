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

#include "backend-select.h"
#include "cli.h"
#include "engine.h"
#include "scenarios.h"
#include "moe-cpu.h"
#include "parse-number.h"
#include "plan.h"

typedef struct preset {
    const char *name;
    uint32_t n, d, h, k, tokens;
} preset;

static const preset presets[] = {
    { "gpt-oss-120b", 128, 2880, 2880, 4, 32768 },
    { "gpt-oss-20b", 32, 2880, 2880, 4, 32768 },
    { "deepseek-v3", 256, 7168, 2048, 8, 16384 },
    { "kimi-k2", 384, 7168, 2048, 8, 16384 },
};

typedef llep_scenario scenario;

enum format { FMT_TABLE, FMT_JSON, FMT_CSV };

typedef struct options {
    const preset *preset;
    int scenario;          /* -1: all */
    uint32_t devices, tokens, scale, repeat;
    double alpha, lambda;
    uint64_t min_tokens;
    int min_tokens_set, tokens_set;
    enum format format;
    uint32_t nodes;        /* 0: no node figures */
    const char *plot;
    enum llep_backend_kind backend;
    uint64_t replica_cache;  /* engine.h: 0 off (default), LLEP_DEVICES_CACHE_AUTO, bytes */
} options;

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

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    llep__cli_vsay("llep-bench", 0, fmt, ap);
    va_end(ap);
    exit(EXIT_FAILURE);
}

/* A bad command line: exit code 2 with the hint to --help. */
static void usage_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    llep__cli_vsay("llep-bench", 1, fmt, ap);
    va_end(ap);
    exit(2);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_sym(uint64_t *s) { /* [-1, 1) */
    return (float)((double)(rng_next(s) >> 11) / 4503599627370496.0 - 1.0);
}

static uint64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void usage(FILE *f) {
    fprintf(f,
        "Usage: llep-bench [--preset gpt-oss-120b|gpt-oss-20b|deepseek-v3|kimi-k2]\n"
        "                  [--scenario NAME|all] [--devices P] [--tokens T] [--scale S]\n"
        "                  [--alpha A] [--lambda L] [--min-tokens M] [--repeat R]\n"
        "                  [--json|--csv] [--plot FILE.png] [--backend cpu|cuda|auto]\n"
        "                  [--nodes K] [--replica-cache SIZE|auto|off]\n"
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
        "Environment: LLEP_BENCH_THREADS host threads running the devices (default 1, so\n"
        "devices do not disturb each other's CPU time); OPENBLAS_CORETYPE as for OpenBLAS.\n");
}

static uint32_t parse_u32(const char *opt, const char *s, uint32_t min) {
    uint32_t v;
    if (llep__parse_u32(s, &v) < 0 || v < min)
        usage_die("%s: '%s' is not an integer >= %u", opt, s, min);
    return v;
}

static double parse_pos(const char *opt, const char *s) {
    double v;
    if (llep__parse_double(s, &v) < 0 || !(v > 0))
        usage_die("%s: '%s' is not a number > 0", opt, s);
    return v;
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
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    int c;

    *o = (options){ .preset = &presets[0], .scenario = -1, .devices = 8, .scale = 8,
                    .repeat = 5, .alpha = LLEP_DEFAULT_ALPHA, .lambda = LLEP_DEFAULT_LAMBDA,
                    .backend = LLEP_BACKEND_CPU };
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            o->preset = NULL;
            for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
                if (strcmp(optarg, presets[i].name) == 0)
                    o->preset = &presets[i];
            if (!o->preset)
                usage_die("--preset: unknown preset '%s'", optarg);
            break;
        case 's':
            if (strcmp(optarg, "all") == 0) {
                o->scenario = -1;
            } else {
                const llep_scenario *sc = llep__scenario_find(optarg);
                if (!sc)
                    usage_die("--scenario: unknown scenario '%s' (see --help)", optarg);
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
            if (strcmp(optarg, "auto") == 0)
                o->replica_cache = LLEP_DEVICES_CACHE_AUTO;
            else if (strcmp(optarg, "off") == 0)
                o->replica_cache = 0;
            else if (llep__parse_size(optarg, &o->replica_cache) < 0 ||
                     o->replica_cache == LLEP_DEVICES_CACHE_AUTO)
                usage_die("--replica-cache: '%s' is not a size, auto or off", optarg);
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
                usage_die("--backend: '%s' is not cpu, cuda or auto", optarg);
            break;
        case 'h': usage(stdout); exit(EXIT_SUCCESS);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc)
        usage_die("unexpected argument '%s'", argv[optind]);
    if (o->preset->n % o->devices)
        usage_die("--devices: %s has %u experts, not a multiple of %u", o->preset->name, o->preset->n,
            o->devices);
    if (o->nodes && o->devices % o->nodes)
        usage_die("--nodes: %u does not divide --devices %u", o->nodes, o->devices);
    if (!o->tokens_set)
        o->tokens = o->preset->tokens / o->scale ? o->preset->tokens / o->scale : 1;
    if (!o->min_tokens_set) {
        o->min_tokens = (uint64_t)LLEP_DEFAULT_MIN_TOKENS * o->tokens / o->preset->tokens;
        if (o->min_tokens < 1)
            o->min_tokens = 1;
    }
}

/* The bench's layer and inputs, shared by every scenario. */
typedef struct bench {
    options o;
    uint32_t n, k, d, h, p, t;
    uint32_t threads;       /* host threads running the devices */
    const llep_backend_ops *ops;  /* the engine's backend */
    llep_engine *eng;
    float *ref_w;           /* [N][gate, up, down][D * H] for the plain-GEMM yardstick */
    float **x, **topk_w, **y_ep, **y_llep;
    float **y_hier;         /* [P] with --nodes, else NULL */
    uint64_t **node_loads;  /* [K][N] with --nodes: slots of each expert per home node */
    int32_t **idx;
    int32_t *slot_expert;   /* [P * T * K] */
    llep_engine_batch *batches;
} bench;

static void make_engine(bench *b) {
    size_t wn = (size_t)b->n * b->d * b->h;
    float *wg = malloc(wn * sizeof(float)), *wu = malloc(wn * sizeof(float));
    float *wd = malloc(wn * sizeof(float));
    uint64_t rng = 42;
    char err[256];

    if (!wg || !wu || !wd)
        die("out of memory for %zu weights", 3 * wn);
    for (size_t i = 0; i < wn; i++) {
        wg[i] = rng_sym(&rng) / sqrtf((float)b->d);
        wu[i] = rng_sym(&rng) / sqrtf((float)b->d);
        wd[i] = rng_sym(&rng) / sqrtf((float)b->h);
    }
    /* The plain-GEMM yardstick runs on the host, so only the CPU backend has one. */
    b->ref_w = b->ops == &llep__backend_cpu ? xcalloc(3 * wn, sizeof(float)) : NULL;
    for (size_t e = 0; b->ref_w && e < b->n; e++) {
        size_t dh = (size_t)b->d * b->h;
        memcpy(b->ref_w + (3 * e + 0) * dh, wg + e * dh, dh * sizeof(float));
        memcpy(b->ref_w + (3 * e + 1) * dh, wu + e * dh, dh * sizeof(float));
        memcpy(b->ref_w + (3 * e + 2) * dh, wd + e * dh, dh * sizeof(float));
    }
    llep_engine_config cfg;
    llep__engine_config_default(&cfg);
    cfg.num_experts = b->n;
    cfg.top_k = b->k;
    cfg.hidden = b->d;
    cfg.inter = b->h;
    cfg.w_gate = wg;
    cfg.w_up = wu;
    cfg.w_down = wd;
    cfg.num_devices = b->p;
    cfg.mem_budget = UINT64_C(1) << 62; /* the bench measures memory, it does not limit it */
    cfg.threads = b->threads;
    cfg.backend = b->ops;
    cfg.replica_cache = b->o.replica_cache;
    int r = llep__engine_new(&cfg, &b->eng, err, sizeof(err));
    free(wg);
    free(wu);
    free(wd);
    if (r < 0)
        die("engine: %s", err);
}

static void make_inputs(bench *b) {
    size_t rows = b->t, slots = (size_t)b->t * b->k;
    uint64_t rng = 7;

    b->x = xcalloc(b->p, sizeof(*b->x));
    b->topk_w = xcalloc(b->p, sizeof(*b->topk_w));
    b->y_ep = xcalloc(b->p, sizeof(*b->y_ep));
    b->y_llep = xcalloc(b->p, sizeof(*b->y_llep));
    b->idx = xcalloc(b->p, sizeof(*b->idx));
    b->batches = xcalloc(b->p, sizeof(*b->batches));
    b->slot_expert = xcalloc(slots * b->p, sizeof(*b->slot_expert));
    for (uint32_t p = 0; p < b->p; p++) {
        b->x[p] = xcalloc(rows * b->d, sizeof(float));
        b->y_ep[p] = xcalloc(rows * b->d, sizeof(float));
        b->y_llep[p] = xcalloc(rows * b->d, sizeof(float));
        b->topk_w[p] = xcalloc(slots, sizeof(float));
        b->idx[p] = xcalloc(slots, sizeof(int32_t));
        for (size_t i = 0; i < rows * b->d; i++)
            b->x[p][i] = rng_sym(&rng);
        for (size_t i = 0; i < slots; i++)
            b->topk_w[p][i] = (rng_sym(&rng) + 1) / 2;
    }
    if (!b->o.nodes)
        return;
    b->y_hier = xcalloc(b->p, sizeof(*b->y_hier));
    for (uint32_t p = 0; p < b->p; p++)
        b->y_hier[p] = xcalloc(rows * b->d, sizeof(float));
    b->node_loads = xcalloc(b->o.nodes, sizeof(*b->node_loads));
    for (uint32_t j = 0; j < b->o.nodes; j++)
        b->node_loads[j] = xcalloc(b->n, sizeof(**b->node_loads));
}

/* Counts each expert's slots per home node from the batches as routed: home device p is on
 * node p / (P / K). */
static void count_node_loads(bench *b) {
    uint32_t per_node = b->p / b->o.nodes;

    for (uint32_t j = 0; j < b->o.nodes; j++)
        memset(b->node_loads[j], 0, b->n * sizeof(**b->node_loads));
    for (uint32_t p = 0; p < b->p; p++)
        for (size_t i = 0; i < (size_t)b->t * b->k; i++)
            b->node_loads[p / per_node][b->idx[p][i]]++;
}

/* Routes the slots so that each expert gets exactly the scenario's load, spread at random
 * over home devices, tokens and k. */
static void route(bench *b, const scenario *s) {
    size_t total = (size_t)b->p * b->t * b->k, pos = 0;
    uint32_t hot = s->share > 0 ? (s->hot < b->n ? s->hot : b->n - 1) : 0;
    size_t hot_slots = (size_t)llround(s->share * (double)total);
    uint64_t rng = 1234;

    for (uint32_t e = 0; e < hot; e++) {
        size_t c = hot_slots / hot + (e < hot_slots % hot);
        for (size_t i = 0; i < c; i++)
            b->slot_expert[pos++] = (int32_t)e;
    }
    size_t cold = total - pos, nc = b->n - hot;
    for (uint32_t e = hot; e < b->n; e++) {
        size_t c = cold / nc + (e - hot < cold % nc);
        for (size_t i = 0; i < c; i++)
            b->slot_expert[pos++] = (int32_t)e;
    }
    for (size_t i = total - 1; i > 0; i--) {
        size_t j = rng_next(&rng) % (i + 1);
        int32_t v = b->slot_expert[i];
        b->slot_expert[i] = b->slot_expert[j];
        b->slot_expert[j] = v;
    }
    for (uint32_t p = 0; p < b->p; p++)
        memcpy(b->idx[p], b->slot_expert + (size_t)p * b->t * b->k,
               (size_t)b->t * b->k * sizeof(int32_t));
    if (b->o.nodes)
        count_node_loads(b);
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
        die("step failed: %s", llep__engine_error(b->eng));
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
        die("counting the traffic between nodes failed: %s", strerror(-r));
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
        runs[j]->peak = xcalloc(b->p, sizeof(uint64_t));
        runs[j]->busy = xcalloc(b->p, sizeof(uint64_t));
        runs[j]->rows = xcalloc(b->p, sizeof(uint64_t));
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
    float *x = xcalloc(max_rows * b->d, sizeof(float)), *y = xcalloc(max_rows * b->d, sizeof(float));
    float *g = xcalloc(tile * b->h, sizeof(float)), *u = xcalloc(tile * b->h, sizeof(float));
    for (size_t i = 0; i < max_rows * b->d; i++)
        x[i] = y[i] = rng_sym(&rng);
    for (size_t i = 0; i < tile * b->h; i++)
        g[i] = u[i] = rng_sym(&rng);

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
                    uint64_t t0 = cpu_ns();
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, (int)b->h,
                                (int)b->d, 1, xa, (int)b->d, wg, (int)b->h, 0, g, (int)b->h);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, (int)b->h,
                                (int)b->d, 1, xa, (int)b->d, wu, (int)b->h, 0, u, (int)b->h);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, (int)b->d,
                                (int)b->h, 1, g, (int)b->h, wd, (int)b->d, 0, y + r0 * b->d,
                                (int)b->d);
                    pass_ns += cpu_ns() - t0;
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

    route(b, s);
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

static void print_header(const bench *b, FILE *f, const char *prefix) {
    const preset *ps = b->o.preset;
    const char *core = "unknown";
#ifdef LLEP_HAVE_OPENBLAS_CORENAME
    core = openblas_get_corename();
#endif
    fprintf(f, "%s%s scaled by %u: N %u, D %u (of %u), H %u (of %u), K %u; P %u devices, "
            "%u tokens per device (of %u); float32\n", prefix, ps->name, b->o.scale, b->n, b->d,
            ps->d, b->h, ps->h, b->k, b->p, b->t, ps->tokens);
    char cache[32];
    if (b->o.replica_cache == LLEP_DEVICES_CACHE_AUTO)
        snprintf(cache, sizeof(cache), "auto");
    else if (b->o.replica_cache == 0)
        snprintf(cache, sizeof(cache), "off");
    else
        snprintf(cache, sizeof(cache), "%" PRIu64 " bytes", b->o.replica_cache);
    fprintf(f, "%sLLEP: policy auto, alpha %g, lambda %g, m %" PRIu64 ", replica cache %s; EP: "
            "policy ep\n", prefix, b->o.alpha, b->o.lambda, b->o.min_tokens, cache);
    if (b->ops != &llep__backend_cpu)
        fprintf(f, "%sbackend %s: busy time = CUDA event time of each device's work (logical "
                "devices sharing a GPU run one at a time); each device's least over %u steps, "
                "makespan = the largest; no plain-GEMM yardstick (GEMM column 0)\n",
                prefix, b->ops->name, b->o.repeat);
    else
    fprintf(f, "%sbusy time = per-device CPU time (thread CPU clock of each device's work); "
            "each device's least over %u steps, makespan = the largest; devices run on %u host "
            "thread(s) of %ld CPUs; OpenBLAS core %s\n",
            prefix, b->o.repeat, b->threads, sysconf(_SC_NPROCESSORS_ONLN), core);
}

static void print_table(const bench *b, const result *res, size_t nres) {
    print_header(b, stdout, "");
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
    print_header(b, stdout, "# ");
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

static void json_u64s(const char *name, const uint64_t *v, uint32_t n, const char *sep) {
    printf("\"%s\": [", name);
    for (uint32_t i = 0; i < n; i++)
        printf("%s%" PRIu64, i ? ", " : "", v[i]);
    printf("]%s", sep);
}

static void json_run(const bench *b, const char *name, const run *r, const char *sep) {
    printf("    \"%s\": {\"mode\": \"%s\", \"makespan_ns\": %" PRIu64 ", \"wall_ns\": %" PRIu64
           ", \"balance\": %.4f, \"transfers\": %u, \"weight_bytes_moved\": %" PRIu64
           ", \"token_bytes_moved\": %" PRIu64 ", \"gflops\": %.2f, ", name,
           r->mode == LLEP_PLAN_LLEP ? "llep" : "ep", r->makespan_ns, r->wall_ns, r->balance,
           r->transfers, r->weight_bytes, r->token_bytes, r->ffn_gflops);
    json_u64s("busy_ns", r->busy, b->p, ", ");
    json_u64s("rows", r->rows, b->p, ", ");
    json_u64s("peak_bytes", r->peak, b->p, "");
    printf("}%s\n", sep);
}

static void json_traffic(const bench *b, const char *name, const traffic *t, const char *sep) {
    uint64_t eb = llep__engine_expert_bytes(b->eng);

    printf("\"%s\": {\"rows\": %" PRIu64 ", \"token_bytes\": %" PRIu64 ", \"transfers\": %u, "
           "\"weight_bytes\": %" PRIu64 "}%s", name, t->rows, t->rows * row_bytes(b),
           t->transfers, t->transfers * eb, sep);
}

/* The --nodes part of a scenario: the hierarchical run and what each plan moves between
 * nodes. */
static void json_nodes(const bench *b, const result *r) {
    json_run(b, "hier", &r->hier, ",");
    printf("    \"hier_makespan_ratio\": %.4f, \"ep_hier_rel_l2\": %.3g,\n", hier_ratio(r),
           r->diff_hier);
    printf("    \"inter_node\": {");
    json_traffic(b, "ep", &r->x_ep, ", ");
    json_traffic(b, "llep", &r->x_llep, ", ");
    json_traffic(b, "hier", &r->x_hier, "}\n");
}

static void print_json(const bench *b, const result *res, size_t nres) {
    const preset *ps = b->o.preset;
    printf("{\"preset\": \"%s\", \"scale\": %u, \"experts\": %u, \"hidden\": %u, \"inter\": %u, "
           "\"top_k\": %u, \"devices\": %u, \"tokens_per_device\": %u, \"dtype\": \"f32\",\n"
           " \"alpha\": %g, \"lambda\": %g, \"min_tokens\": %" PRIu64 ", \"repeat\": %u,\n"
           " \"busy_time\": \"%s\",\n",
           ps->name, b->o.scale, b->n, b->d, b->h, b->k, b->p, b->t, b->o.alpha, b->o.lambda,
           b->o.min_tokens, b->o.repeat, b->ops == &llep__backend_cpu ?
           "per-device thread CPU time" : "per-device CUDA event time");
    if (b->o.nodes)
        printf(" \"nodes\": %u, \"devices_per_node\": %u, \"row_bytes\": %" PRIu64
               ", \"expert_bytes\": %" PRIu64 ",\n", b->o.nodes, b->p / b->o.nodes,
               row_bytes(b), llep__engine_expert_bytes(b->eng));
    printf(" \"scenarios\": [\n");
    for (size_t i = 0; i < nres; i++) {
        const result *r = &res[i];
        printf("  {\"scenario\": \"%s\", \"speedup\": %.4f, \"ideal\": %.4f, "
               "\"plain_sgemm_gflops\": %.2f, \"ep_llep_rel_l2\": %.3g,\n", r->scen->name,
               speedup(r), r->imbalance, r->gemm_gflops, r->diff);
        json_run(b, "ep", &r->ep, ",");
        json_run(b, "llep", &r->llep, b->o.nodes ? "," : "");
        if (b->o.nodes)
            json_nodes(b, r);
        printf("  }%s\n", i + 1 < nres ? "," : "");
    }
    printf(" ]}\n");
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

int main(int argc, char **argv) {
    bench b = { 0 };

    parse_options(argc, argv, &b.o);
    const preset *ps = b.o.preset;
    b.n = ps->n;
    b.k = ps->k;
    b.d = ps->d / b.o.scale ? ps->d / b.o.scale : 1;
    b.h = ps->h / b.o.scale ? ps->h / b.o.scale : 1;
    b.p = b.o.devices;
    b.t = b.o.tokens;
    const char *th = getenv("LLEP_BENCH_THREADS");
    /* One thread by default: devices then run one at a time, so no device's CPU time is
     * inflated by another device of the same run competing for the core or its caches
     * (which would penalise LLEP, whose devices all work at once, more than EP). */
    b.threads = th && *th ? parse_u32("LLEP_BENCH_THREADS", th, 1) : 1;
    if (b.o.plot && !have_gnuplot())
        fprintf(stderr, "llep-bench: gnuplot not found in PATH: --plot %s will be skipped\n",
                b.o.plot);

    char spec[16], msg[256];
    llep_backend_options bo;
    snprintf(spec, sizeof(spec), "%u", b.p);
    if (llep__backend_select(b.o.backend, spec, &b.ops, &bo, msg, sizeof(msg)) < 0)
        die("%s", msg);
    fprintf(stderr, "llep-bench: %s\n", msg);
    print_header(&b, stderr, "llep-bench: ");
    make_engine(&b);
    make_inputs(&b);

    size_t first = b.o.scenario >= 0 ? (size_t)b.o.scenario : 0;
    size_t nres = b.o.scenario >= 0 ? 1 : llep__num_scenarios;
    result *res = xcalloc(nres, sizeof(*res));

    /* One unmeasured step so first-touch page faults do not land on the first scenario. */
    route(&b, &llep__scenarios[0]);
    for (uint32_t p = 0; p < b.p; p++)
        b.batches[p] = (llep_engine_batch){ b.t, b.x[p], b.idx[p], b.topk_w[p], b.y_ep[p] };
    if (llep__engine_step(b.eng, b.batches, NULL, NULL) < 0)
        die("warm-up step failed: %s", llep__engine_error(b.eng));

    for (size_t i = 0; i < nres; i++)
        run_scenario(&b, first + i, i, nres, &res[i]);

    if (b.o.format == FMT_JSON)
        print_json(&b, res, nres);
    else if (b.o.format == FMT_CSV)
        print_csv(&b, res, nres);
    else
        print_table(&b, res, nres);
    if (b.o.nodes && b.o.format == FMT_TABLE)
        print_node_table(&b, res, nres);
    int rc = EXIT_SUCCESS;
    if (b.o.plot && have_gnuplot() && plot(&b, res, nres, b.o.plot) < 0)
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
    for (uint32_t p = 0; p < b.p; p++) {
        free(b.x[p]);
        free(b.y_ep[p]);
        free(b.y_llep[p]);
        free(b.topk_w[p]);
        free(b.idx[p]);
    }
    for (uint32_t p = 0; b.y_hier && p < b.p; p++)
        free(b.y_hier[p]);
    for (uint32_t j = 0; b.node_loads && j < b.o.nodes; j++)
        free(b.node_loads[j]);
    free(b.y_hier);
    free(b.node_loads);
    free(b.x);
    free(b.y_ep);
    free(b.y_llep);
    free(b.topk_w);
    free(b.idx);
    free(b.batches);
    free(b.slot_expert);
    free(b.ref_w);
    llep__engine_free(b.eng);
    return rc;
}
