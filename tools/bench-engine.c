/* llep-bench's layer on the engine, its inputs, routing and planners (bench.h). */
#include "bench.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "backend-select.h"
#include "json-out.h"
#include "calibrate.h"
#include "cli.h"
#include "parse-number.h"

const llep_bench_preset llep__bench_presets[] = {
    { "gpt-oss-120b", 128, 2880, 2880, 4, 32768 },
    { "gpt-oss-20b", 32, 2880, 2880, 4, 32768 },
    { "deepseek-v3", 256, 7168, 2048, 8, 16384 },
    { "kimi-k2", 384, 7168, 2048, 8, 16384 },
};
const size_t llep__bench_num_presets = sizeof(llep__bench_presets) / sizeof(llep__bench_presets[0]);

void llep__bench_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    llep__cli_vsay("llep-bench", 0, fmt, ap);
    va_end(ap);
    exit(EXIT_FAILURE);
}

void llep__bench_usage_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    llep__cli_vsay("llep-bench", 1, fmt, ap);
    va_end(ap);
    exit(2);
}

void *llep__bench_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        llep__bench_die("out of memory (%zu x %zu bytes)", n, size);
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

uint64_t llep__bench_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const char *llep__bench_blas_core(void) {
#ifdef LLEP_HAVE_OPENBLAS_CORENAME
    return openblas_get_corename();
#else
    return "unknown";
#endif
}

void llep__bench_print_header(const llep_bench *b, FILE *f, const char *prefix) {
    const llep_bench_preset *ps = b->o.preset;
    const char *core = llep__bench_blas_core();

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
    /* --tune searches these, so it prints none. */
    if (!b->o.tune && (b->o.num_planners || b->o.trace))
        fprintf(f, "%sLLA: alpha %g, lambda %g, m %" PRIu64 ", replica cache %s\n", prefix,
                b->o.alpha, b->o.lambda, b->o.min_tokens, cache);
    else if (!b->o.tune)
        fprintf(f, "%sLLEP: policy auto, alpha %g, lambda %g, m %" PRIu64 ", replica cache %s; "
                "EP: policy ep\n", prefix, b->o.alpha, b->o.lambda, b->o.min_tokens, cache);
    if (b->ops != &llep__backend_cpu)
        fprintf(f, "%sbackend %s: busy time = CUDA event time of each device's work (logical "
                "devices sharing a GPU run one at a time); each device's least over %u steps, "
                "makespan = the largest; no plain-GEMM yardstick (GEMM column 0)\n",
                prefix, b->ops->name, b->o.repeat);
    else if (b->o.trace || b->o.tune)
        fprintf(f, "%sbusy time = per-device CPU time (thread CPU clock of each device's work); "
                "devices run on %u host thread(s) of %ld CPUs; OpenBLAS core %s\n", prefix,
                b->threads, sysconf(_SC_NPROCESSORS_ONLN), core);
    else
        fprintf(f, "%sbusy time = per-device CPU time (thread CPU clock of each device's work); "
                "each device's least over %u steps, makespan = the largest; devices run on %u "
                "host thread(s) of %ld CPUs; OpenBLAS core %s\n",
                prefix, b->o.repeat, b->threads, sysconf(_SC_NPROCESSORS_ONLN), core);
}

/* The layer's weights, the same for every engine of the run (seeded). */
static void make_weights(const llep_bench *b, float **wg, float **wu, float **wd) {
    size_t wn = (size_t)b->n * b->d * b->h;
    uint64_t rng = 42;

    *wg = malloc(wn * sizeof(float));
    *wu = malloc(wn * sizeof(float));
    *wd = malloc(wn * sizeof(float));
    if (!*wg || !*wu || !*wd)
        llep__bench_die("out of memory for %zu weights", 3 * wn);
    for (size_t i = 0; i < wn; i++) {
        (*wg)[i] = rng_sym(&rng) / sqrtf((float)b->d);
        (*wu)[i] = rng_sym(&rng) / sqrtf((float)b->d);
        (*wd)[i] = rng_sym(&rng) / sqrtf((float)b->h);
    }
}

llep_engine *llep__bench_engine(llep_bench *b, uint64_t replica_cache, uint64_t mem_budget) {
    float *wg, *wu, *wd;
    llep_engine_config cfg;
    llep_engine *eng;
    char err[256];

    make_weights(b, &wg, &wu, &wd);
    llep__engine_config_default(&cfg);
    cfg.num_experts = b->n;
    cfg.top_k = b->k;
    cfg.hidden = b->d;
    cfg.inter = b->h;
    cfg.w_gate = wg;
    cfg.w_up = wu;
    cfg.w_down = wd;
    cfg.num_devices = b->p;
    /* Without a budget the bench measures memory, it does not limit it. */
    cfg.mem_budget = mem_budget == LLEP_BENCH_BUDGET_DEFAULT ? 0 :
                     mem_budget ? mem_budget : UINT64_C(1) << 62;
    cfg.threads = b->threads;
    cfg.backend = b->ops;
    cfg.replica_cache = replica_cache;
    int r = llep__engine_new(&cfg, &eng, err, sizeof(err));
    free(wg);
    free(wu);
    free(wd);
    if (r < 0)
        llep__bench_die("engine: %s", err);
    return eng;
}

/* The plain-GEMM yardstick's copy of the weights: it runs on the host, so only the CPU
 * backend has one. */
static void make_ref_weights(llep_bench *b) {
    size_t dh = (size_t)b->d * b->h;
    float *wg, *wu, *wd;

    if (b->ops != &llep__backend_cpu)
        return;
    make_weights(b, &wg, &wu, &wd);
    b->ref_w = llep__bench_calloc(3 * b->n * dh, sizeof(float));
    for (size_t e = 0; e < b->n; e++) {
        memcpy(b->ref_w + (3 * e + 0) * dh, wg + e * dh, dh * sizeof(float));
        memcpy(b->ref_w + (3 * e + 1) * dh, wu + e * dh, dh * sizeof(float));
        memcpy(b->ref_w + (3 * e + 2) * dh, wd + e * dh, dh * sizeof(float));
    }
    free(wg);
    free(wu);
    free(wd);
}

static void make_inputs(llep_bench *b) {
    size_t rows = b->t, slots = (size_t)b->t * b->k;
    uint64_t rng = 7;

    b->x = llep__bench_calloc(b->p, sizeof(*b->x));
    b->topk_w = llep__bench_calloc(b->p, sizeof(*b->topk_w));
    b->y_ep = llep__bench_calloc(b->p, sizeof(*b->y_ep));
    b->y_llep = llep__bench_calloc(b->p, sizeof(*b->y_llep));
    b->idx = llep__bench_calloc(b->p, sizeof(*b->idx));
    b->batches = llep__bench_calloc(b->p, sizeof(*b->batches));
    b->slot_expert = llep__bench_calloc(slots * b->p, sizeof(*b->slot_expert));
    b->loads = llep__bench_calloc(b->n, sizeof(*b->loads));
    for (uint32_t p = 0; p < b->p; p++) {
        b->x[p] = llep__bench_calloc(rows * b->d, sizeof(float));
        b->y_ep[p] = llep__bench_calloc(rows * b->d, sizeof(float));
        b->y_llep[p] = llep__bench_calloc(rows * b->d, sizeof(float));
        b->topk_w[p] = llep__bench_calloc(slots, sizeof(float));
        b->idx[p] = llep__bench_calloc(slots, sizeof(int32_t));
        for (size_t i = 0; i < rows * b->d; i++)
            b->x[p][i] = rng_sym(&rng);
        for (size_t i = 0; i < slots; i++)
            b->topk_w[p][i] = (rng_sym(&rng) + 1) / 2;
    }
    if (!b->o.nodes)
        return;
    b->y_hier = llep__bench_calloc(b->p, sizeof(*b->y_hier));
    for (uint32_t p = 0; p < b->p; p++)
        b->y_hier[p] = llep__bench_calloc(rows * b->d, sizeof(float));
    b->node_loads = llep__bench_calloc(b->o.nodes, sizeof(*b->node_loads));
    for (uint32_t j = 0; j < b->o.nodes; j++)
        b->node_loads[j] = llep__bench_calloc(b->n, sizeof(**b->node_loads));
}

/* The cost planner needs the devices' cost model, and --tune ranks its grid by it: measured
 * here, once, on the main engine's devices (calibrate.h, as llepd does at start), and given
 * to every step that asks for it. At the bench layer's own shape and with copies of one
 * expert's weights, where llepd measures a reference shape: a chunk's rate at few rows depends
 * on where its weights live (on the CPU, a small layer's experts sit in cache, a 512 x 512
 * one's do not), and a copy's on its size, and the reference shape's figures overprice a small
 * layer's chunks and copies 2 to 5 times (docs/PERFORMANCE.md). */
static void calibrate(llep_bench *b) {
    llep_calibrate_options o;
    llep_calibration cal;
    char err[256];
    int want = 0;

    for (uint32_t i = 0; i < b->o.num_planners; i++)
        want |= b->o.planners[i] == LLEP_BENCH_COST;
    if (!want && !b->o.tune)
        return;
    llep__calibrate_defaults(b->ops->name, &o);
    o.hidden = b->d;
    o.inter = b->h;
    o.dtype = LLEP_DTYPE_F32;
    /* One expert's weights (the bench's layers have no biases); the smaller copy is 4 KiB. */
    o.transfer_bytes = 3ull * b->d * b->h * sizeof(float);
    if (o.transfer_bytes < (64u << 10))
        o.transfer_bytes = 64u << 10;
    int r = llep__calibrate(llep__engine_devices(b->eng), &o, &cal, err, sizeof(err));
    if (r < 0)
        llep__bench_die("calibrating the devices' cost model: %s", err);
    b->cost = cal.model;
    b->have_cost = true;
    fprintf(stderr, "llep-bench: %s: calibrated at the layer's shape (D %u, H %u, f32, copies "
            "of %" PRIu64 " bytes) in %.0f ms (chunk fixed cost %.2f us, %u points of the rate "
            "curve)\n", want ? "cost planner" : "tune's cost model", b->d, b->h,
            o.transfer_bytes, cal.elapsed_ms, cal.model.chunk_fixed_ns / 1e3,
            cal.model.num_points);
}

void llep__bench_open(llep_bench *b) {
    const llep_bench_preset *ps = b->o.preset;
    char spec[16], msg[256];
    llep_backend_options bo;

    b->n = ps->n;
    b->k = ps->k;
    b->d = ps->d / b->o.scale ? ps->d / b->o.scale : 1;
    b->h = ps->h / b->o.scale ? ps->h / b->o.scale : 1;
    b->p = b->o.devices;
    b->t = b->o.tokens;
    const char *th = getenv("LLEP_BENCH_THREADS");
    uint32_t threads = 1;
    /* One thread by default: devices then run one at a time, so no device's CPU time is
     * inflated by another device of the same run competing for the core or its caches
     * (which would penalise LLEP, whose devices all work at once, more than EP). */
    if (th && *th && (llep__parse_u32(th, &threads) < 0 || threads < 1))
        llep__bench_usage_die("LLEP_BENCH_THREADS: '%s' is not an integer >= 1", th);
    b->threads = threads;
    snprintf(spec, sizeof(spec), "%u", b->p);
    if (llep__backend_select(b->o.backend, spec, &b->ops, &bo, msg, sizeof(msg)) < 0)
        llep__bench_die("%s", msg);
    fprintf(stderr, "llep-bench: %s\n", msg);
    b->eng = llep__bench_engine(b, b->o.replica_cache, b->o.device_memory);
    calibrate(b);
    make_ref_weights(b);
    make_inputs(b);
}

void llep__bench_close(llep_bench *b) {
    for (uint32_t p = 0; p < b->p; p++) {
        free(b->x[p]);
        free(b->y_ep[p]);
        free(b->y_llep[p]);
        free(b->topk_w[p]);
        free(b->idx[p]);
    }
    for (uint32_t p = 0; b->y_hier && p < b->p; p++)
        free(b->y_hier[p]);
    for (uint32_t j = 0; b->node_loads && j < b->o.nodes; j++)
        free(b->node_loads[j]);
    free(b->y_hier);
    free(b->node_loads);
    free(b->x);
    free(b->y_ep);
    free(b->y_llep);
    free(b->topk_w);
    free(b->idx);
    free(b->batches);
    free(b->slot_expert);
    free(b->loads);
    free(b->ref_w);
    llep__engine_free(b->eng);
}

/* Counts each expert's slots per home node from the batches as routed: home device p is on
 * node p / (P / K). */
static void count_node_loads(llep_bench *b) {
    uint32_t per_node = b->p / b->o.nodes;

    for (uint32_t j = 0; j < b->o.nodes; j++)
        memset(b->node_loads[j], 0, b->n * sizeof(**b->node_loads));
    for (uint32_t p = 0; p < b->p; p++)
        for (size_t i = 0; i < (size_t)b->t * b->k; i++)
            b->node_loads[p / per_node][b->idx[p][i]]++;
}

void llep__bench_scenario_loads(const llep_bench *b, const llep_scenario *s, uint64_t *loads) {
    uint64_t total = (uint64_t)b->p * b->t * b->k;
    uint32_t hot = s->share > 0 ? (s->hot < b->n ? s->hot : b->n - 1) : 0;
    uint64_t hot_slots = (uint64_t)llround(s->share * (double)total);

    for (uint32_t e = 0; e < hot; e++)
        loads[e] = hot_slots / hot + (e < hot_slots % hot);
    uint64_t cold = total - (hot ? hot_slots : 0), nc = b->n - hot;
    for (uint32_t e = hot; e < b->n; e++)
        loads[e] = cold / nc + (e - hot < cold % nc);
}

void llep__bench_route_loads(llep_bench *b, const uint64_t *loads, uint64_t seed) {
    size_t total = (size_t)b->p * b->t * b->k, pos = 0;
    uint64_t rng = seed;

    for (uint32_t e = 0; e < b->n; e++) {
        for (uint64_t i = 0; i < loads[e] && pos < total; i++)
            b->slot_expert[pos++] = (int32_t)e;
        b->loads[e] = loads[e];
    }
    if (pos != total)
        llep__bench_die("routing: the loads sum to %zu slots, not %zu", pos, total);
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

void llep__bench_route(llep_bench *b, const llep_scenario *s) {
    uint64_t *loads = llep__bench_calloc(b->n, sizeof(*loads));

    llep__bench_scenario_loads(b, s, loads);
    llep__bench_route_loads(b, loads, 1234);
    free(loads);
}

void llep__bench_batches(llep_bench *b, float **y) {
    for (uint32_t p = 0; p < b->p; p++)
        b->batches[p] = (llep_engine_batch){ b->t, b->x[p], b->idx[p], b->topk_w[p], y[p] };
}

static const char *const planner_names[LLEP_BENCH_NUM_PLANNERS] = {
    [LLEP_BENCH_EP] = "ep",
    [LLEP_BENCH_LLA] = "lla",
    [LLEP_BENCH_LLA_SCALED] = "lla-scaled",
    [LLEP_BENCH_COST] = "cost",
};

const char *llep__bench_planner_name(enum llep_bench_planner pl) {
    return pl < LLEP_BENCH_NUM_PLANNERS ? planner_names[pl] : "?";
}

int llep__bench_planner_parse(const char *name) {
    for (int i = 0; i < LLEP_BENCH_NUM_PLANNERS; i++)
        if (strcmp(name, planner_names[i]) == 0)
            return i;
    return -1;
}

void llep__bench_planner_params(const llep_bench *b, enum llep_bench_planner pl,
                                llep_plan_params *ret) {
    *ret = (llep_plan_params){ .alpha = b->o.alpha, .lambda = b->o.lambda,
                               .min_tokens = b->o.min_tokens, .policy = LLEP_POLICY_AUTO };
    switch (pl) {
    case LLEP_BENCH_EP:
        ret->policy = LLEP_POLICY_EP;
        break;
    case LLEP_BENCH_LLA_SCALED:
        ret->scale_min_tokens = true;
        break;
    case LLEP_BENCH_COST:
        /* The engine fills in the layer's figures; the model is the run's calibration. */
        ret->planner = LLEP_PLANNER_COST;
        ret->cost = b->have_cost ? &b->cost : NULL;
        break;
    case LLEP_BENCH_LLA:
    case LLEP_BENCH_NUM_PLANNERS:
        break;
    }
}

void llep__bench_json_layer(const llep_bench *b, json_object *o) {
    llep__jout_str(o, "preset", b->o.preset->name);
    llep__jout_u64(o, "scale", b->o.scale);
    llep__jout_u64(o, "experts", b->n);
    llep__jout_u64(o, "hidden", b->d);
    llep__jout_u64(o, "inter", b->h);
    llep__jout_u64(o, "top_k", b->k);
    llep__jout_u64(o, "devices", b->p);
    llep__jout_u64(o, "tokens_per_device", b->t);
}
