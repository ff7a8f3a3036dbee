/* What llep-bench's modes share (bench-engine.c): the model shapes, the options, the layer
 * with its inputs on the engine, routing, the planners a run compares, and the error exits.
 *
 * llep-bench.c parses the command line and runs EP against LLEP (the classic table); the
 * other modes live in their own files and are called from it: bench-decode.c (--planners:
 * several planners side by side, the decode sweep), bench-trace.c (--trace: routing traces
 * replayed with the replica cache on and off), bench-tune.c (--tune). */
#ifndef LLEP_TOOLS_BENCH_H
#define LLEP_TOOLS_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "config.h"
#include "cost.h"
#include "engine.h"
#include "plan.h"
#include "scenarios.h"

typedef struct llep_bench_preset {
    const char *name;
    uint32_t n, d, h, k, tokens;
} llep_bench_preset;

extern const llep_bench_preset llep__bench_presets[];
extern const size_t llep__bench_num_presets;

enum llep_bench_format { LLEP_BENCH_TABLE, LLEP_BENCH_JSON, LLEP_BENCH_CSV };

/* The planners a --planners run compares. Each is a way to fill llep_plan_params from the
 * run's alpha, lambda and m (llep__bench_planner_params). */
enum llep_bench_planner {
    LLEP_BENCH_EP,          /* policy EP: every expert on its native device */
    LLEP_BENCH_LLA,         /* the paper's LLA: policy auto with alpha, lambda, m */
    LLEP_BENCH_LLA_SCALED,  /* LLA with scale_min_tokens (m capped at capacity / P) */
    LLEP_BENCH_COST,        /* the cost-aware planner (plan-cost.h) with the devices' model,
                               calibrated when the bench opens (calibrate.h) */
    LLEP_BENCH_NUM_PLANNERS
};
#define LLEP_BENCH_MAX_PLANNERS 8u
/* --tune-top's default: the distinct plans of the tuning grid measured, best by the model. */
#define LLEP_BENCH_TUNE_TOP 8u

typedef struct llep_bench_options {
    const llep_bench_preset *preset;
    int scenario;          /* -1: all */
    uint32_t devices, tokens, scale, repeat;
    double alpha, lambda;
    uint64_t min_tokens;
    int min_tokens_set, tokens_set;
    enum llep_bench_format format;
    uint32_t nodes;        /* 0: no node figures */
    const char *plot;
    enum llep_backend_kind backend;
    uint64_t replica_cache;  /* engine.h: 0 off (default), LLEP_DEVICES_CACHE_AUTO, bytes */
    uint64_t device_memory;  /* per-device budget; 0: unlimited (the bench measures memory) */
    /* --planners: the planners to compare, in the order given (bench-decode.c). */
    enum llep_bench_planner planners[LLEP_BENCH_MAX_PLANNERS];
    uint32_t num_planners;
    const char *trace;     /* --trace drift|jump (bench-trace.c); NULL: none */
    uint32_t steps;        /* --steps: the trace's length */
    int tune;              /* --tune (bench-tune.c) */
    uint32_t tune_top;     /* --tune-top K: measure the K best plans by the cost model and
                              the defaults'; 0 all (default LLEP_BENCH_TUNE_TOP) */
    const char *write_config;  /* --write-config FILE with --tune */
    int calibrate;         /* --calibrate: the device cost model only (bench-calibrate.c) */
} llep_bench_options;

/* The bench's layer and inputs, shared by every scenario. */
typedef struct llep_bench {
    llep_bench_options o;
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
    uint64_t *loads;        /* [N]: the loads last routed */
    /* The cost model the cost planner uses: calibrated on the main engine's devices when a
     * run names the cost planner or tunes (have_cost), the same for every engine of the run. */
    llep_cost_model cost;
    bool have_cost;
    llep_engine_batch *batches;
} llep_bench;

struct json_object;

/* Adds the layer's members every mode's --json starts with: preset, scale, experts, hidden,
 * inter, top_k, devices, tokens_per_device (json-out.h). */
void llep__bench_json_layer(const llep_bench *b, struct json_object *o);

/* "llep-bench: message" and exit 1. */
void llep__bench_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* A bad command line: the message, the hint to --help, exit 2. */
void llep__bench_usage_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void *llep__bench_calloc(size_t n, size_t size);
uint64_t llep__bench_cpu_ns(void);

/* Fills b's shape from its options (preset scaled, P, T), picks the backend and threads,
 * opens the main engine (b->eng, with the options' replica cache and budget) and the inputs. */
void llep__bench_open(llep_bench *b);
void llep__bench_close(llep_bench *b);

/* One more engine on the bench's layer (same weights, its own devices): replica_cache as in
 * llep_engine_config; mem_budget per device, 0 unlimited, LLEP_BENCH_BUDGET_DEFAULT the
 * engine's (and llepd's) default: the native weights plus the default token budget. */
#define LLEP_BENCH_BUDGET_DEFAULT UINT64_MAX
llep_engine *llep__bench_engine(llep_bench *b, uint64_t replica_cache, uint64_t mem_budget);

/* Routes the slots so that each expert gets exactly the scenario's load, spread at random
 * over home devices, tokens and k. */
void llep__bench_route(llep_bench *b, const llep_scenario *s);
/* The same for any per-expert loads summing to P x T x K; seed picks the spread. */
void llep__bench_route_loads(llep_bench *b, const uint64_t *loads, uint64_t seed);
/* Per-expert loads of a scenario over total slots (the hot experts first). */
void llep__bench_scenario_loads(const llep_bench *b, const llep_scenario *s, uint64_t *loads);

/* Points b->batches at the inputs and the outputs y[P]. */
void llep__bench_batches(llep_bench *b, float **y);

/* The planner's name on the command line and in the tables; and the reverse (-1: unknown). */
const char *llep__bench_planner_name(enum llep_bench_planner pl);
int llep__bench_planner_parse(const char *name);
/* The step parameters of planner pl under the run's alpha, lambda and m. */
void llep__bench_planner_params(const llep_bench *b, enum llep_bench_planner pl,
                                llep_plan_params *ret);

/* The shape, parameters and how busy time is taken, one line each, every line prefixed. */
void llep__bench_print_header(const llep_bench *b, FILE *f, const char *prefix);

/* The OpenBLAS core name, or "unknown". */
const char *llep__bench_blas_core(void);

#endif
