/* The MoE step engine: one layer's experts on P logical devices (DESIGN.md section 3).
 *
 * A step takes one batch per home device, counts the per-expert loads, plans (EP or LLEP,
 * plan.h), dispatches every token-slot's row to the device that computes its slice of the
 * expert (in the global token order of DESIGN.md section 2), copies spilled experts' weights
 * and biases to their helpers, runs each device's expert chunks, and combines the results
 * back into each home device's output, summing k = 0..K-1 in order. The combine never
 * depends on the plan, so EP and LLEP give the same outputs up to the GEMM library's
 * rounding for different row counts (docs/PERFORMANCE.md).
 *
 * Every device buffer the engine allocates is charged to that device's account (devices.h),
 * which every engine created on the same llep_devices shares: a layer whose weights do not fit
 * beside the others' is refused, and a step whose buffers would not fit fails with -ENOMEM
 * before any output is written; the engine stays usable. A helper keeps the spilled experts it
 * received in the devices' replica cache (devices.h) when one is configured: a later step that
 * spills the same expert there uses the copy instead of moving the weights again, and node-
 * scope plans prefer such helpers where the makespan allows (llep__plan_compute_cached()). The
 * copy is byte for byte the native block, so outputs do not depend on the cache. One step at a time per engine;
 * engines on the same devices take turns on them (first come, first served), so their steps
 * may be called from different threads at once. */
#ifndef LLEP_ENGINE_H
#define LLEP_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "devices.h"
#include "llep/types.h"
#include "plan.h"

typedef struct llep_engine llep_engine;

/* Bytes each device may use beyond its native weights when no budget is given. */
#define LLEP_ENGINE_DEFAULT_TOKEN_BUDGET LLEP_DEVICES_DEFAULT_TOKEN_BUDGET

/* Host copies of a layer's weights, as in llep_engine_config below (all N experts); priv is
 * the provider's. */
typedef struct llep_engine_weights {
    const void *w_gate, *w_up, *w_down;
    const void *b_gate, *b_up, *b_down;
    void *priv;
} llep_engine_weights;

/* Where the engine's owner can find the layer's weights again after a device failed
 * (devices.h, "failed devices"): get fills w (0, or a negative errno with the reason in err),
 * put gives them back; both are called from the step's thread, under the devices' turn.
 * get -EAGAIN: not here yet (a cluster node's share on its way from the origin): the step
 * fails with err, nothing is lost, and the next step asks again.
 * free_arg, when set, releases arg when the engine goes (or its creation fails). get NULL:
 * the weights exist only on the devices, and a failed device's experts are lost. */
typedef struct llep_engine_reload {
    int (*get)(void *arg, llep_engine_weights *w, char *err, size_t errlen);
    void (*put)(void *arg, llep_engine_weights *w);
    void (*free_arg)(void *arg);
    void *arg;
} llep_engine_reload;

typedef struct llep_engine_config {
    uint32_t num_experts, top_k, hidden, inter;  /* N, K, D, H */
    enum llep_dtype dtype;                       /* of weights, biases, x and y */
    enum llep_act act;
    float act_alpha, act_limit;                  /* 0: 1.702 and 7.0 */
    /* Host memory, row-major, experts contiguous: w_gate, w_up [N][D][H]; w_down [N][H][D];
     * b_gate, b_up [N][H]; b_down [N][D]. Each bias may be NULL. Copied at creation. */
    const void *w_gate, *w_up, *w_down;
    const void *b_gate, *b_up, *b_down;

    uint32_t num_devices;                        /* P; N must be a multiple of P */
    llep_plan_params plan;                       /* defaults for steps given no params */

    /* The devices to run on, shared with other engines (devices.h), which the engine borrows:
     * free it first. P is theirs (num_devices 0 or equal) and the fields below are ignored.
     * NULL: the engine opens devices of its own from the fields below. */
    llep_devices *devices;
    /* Per-device budget in bytes; 0: native weights + token_budget. */
    uint64_t mem_budget;
    uint64_t token_budget;                       /* 0: LLEP_ENGINE_DEFAULT_TOKEN_BUDGET */
    const llep_backend_ops *backend;             /* NULL: the CPU backend */
    uint32_t threads;                            /* CPU backend threads; 0: min(P, CPUs) */
    const char *backend_devices;                 /* device spec for the backend ("cuda:0x4",
                                                    backend-select.h); NULL: its default */
    /* Replica cache per device (devices.h): 0 none, LLEP_DEVICES_CACHE_AUTO, or bytes. */
    uint64_t replica_cache;
    /* The weights again after a device failed; zero: nowhere. The engine owns arg from
     * llep__engine_new() on. */
    llep_engine_reload reload;
    /* The layer's number of this engine's expert 0, for messages only: a cluster node's
     * engine holds experts first_expert.. of the layer (its share); 0 otherwise. */
    uint32_t first_expert;
} llep_engine_config;

/* Fills cfg with the defaults: f32, SWIGLU, default activation and plan parameters, CPU
 * backend. Shapes, weights and devices are left zero for the caller. */
void llep__engine_config_default(llep_engine_config *cfg);

/* One home device's tokens for a step. x and y are [tokens][D] in the layer's dtype; tokens
 * = 0 needs no pointers. */
typedef struct llep_engine_batch {
    uint32_t tokens;
    const void *x;
    const int32_t *topk_idx;   /* [tokens][K], each in [0, N) */
    const float *topk_w;       /* [tokens][K] */
    void *y;
} llep_engine_batch;

typedef struct llep_engine_device_stats {
    uint64_t rows;             /* token-slots computed here (the plan's device load) */
    uint32_t chunks;           /* expert chunks run here */
    uint32_t experts_received; /* spilled experts whose weights were copied here */
    uint32_t cache_hits;       /* spilled experts whose copy was in the replica cache here */
    uint64_t busy_ns;          /* device time of this device's work in the step */
    uint64_t weight_bytes_in;  /* received expert weights and biases */
    uint64_t weight_bytes_saved; /* weights and biases the replica cache spared moving here */
    uint64_t token_bytes_in;   /* rows dispatched here from other home devices */
    uint64_t held_bytes;       /* held between steps (native weights) */
    uint64_t peak_bytes;       /* this engine's highest use during the step, held included */
    uint64_t budget_bytes;     /* the device's budget, shared with the other engines on it */
} llep_engine_device_stats;

typedef struct llep_engine_stats {
    enum llep_plan_mode mode;
    double imbalance;          /* max native device load / mean */
    uint64_t capacity;         /* the plan's per-device capacity */
    uint64_t slots;            /* token-slots in the step (sum of tokens x K) */
    uint32_t transfers;        /* the plan's (expert, helper) pairs */
    uint32_t cache_hits;       /* pairs whose helper had the copy already: nothing moved */
    uint64_t weight_bytes_moved; /* (transfers - cache_hits) x expert bytes */
    uint64_t weight_bytes_saved; /* cache_hits x expert bytes */
    uint64_t token_bytes_moved;  /* rows crossing devices, dispatch and combine */
    uint64_t makespan_ns;      /* largest device busy time */
    uint64_t wall_ns;          /* wall time of the whole step */
    uint32_t num_devices;
    const llep_engine_device_stats *devices;  /* [P], valid until the next step or free */
} llep_engine_stats;

/* Checks the configuration, opens the devices (unless cfg->devices), charges each device its
 * native experts and copies them there, one device per turn. Returns 0, -EINVAL (message in
 * err) or -ENOMEM (a device cannot hold its native weights beside what it holds already, the
 * message naming the device, the bytes needed, free and the budget; or the host is out of
 * memory): nothing of the engine stays charged then. */
int llep__engine_new(const llep_engine_config *cfg, llep_engine **ret, char *err, size_t errlen);
void llep__engine_free(llep_engine *e);

/* Runs one step over batches[0..P), holding the devices' turn (devices.h) from its budget check
 * to its last sync; a caller that holds the turn already keeps it. params: NULL for the
 * configuration's. Returns 0,
 * -EINVAL (bad batch or expert index, or bad parameters), -ENOMEM (a device budget or the
 * host), -E2BIG (one expert's slice over 2^32 - 1 rows), -EOVERFLOW, or -EIO when a device
 * failed (devices.h): in this step (the message names it) or before, when its experts could
 * not be put back on the device serving it (every later step fails the same way; steps of
 * other layers go on). On failure llep__engine_error() says why. Every check and every
 * device allocation comes before the combine, the combines start only after every device's
 * expert work succeeded, and the backend writes their output to y only in a sync() that
 * succeeded (backend.h), so a failed step writes no y, even a device failing during the
 * combines or the host running out of memory while they are queued. ret_stats may be NULL. */
int llep__engine_step(llep_engine *e, const llep_engine_batch *batches,
                      const llep_plan_params *params, llep_engine_stats *ret_stats);

/* The message of the last failed call; "" after a successful step. */
const char *llep__engine_error(const llep_engine *e);

/* The backend instance the engine's devices run on (for its optional parts, backend.h). */
llep_backend *llep__engine_backend(const llep_engine *e);
/* The devices the engine runs on: the shared ones it was created on, or its own. */
llep_devices *llep__engine_devices(const llep_engine *e);

/* The plan of the last step that got as far as planning. */
const llep_plan *llep__engine_plan(const llep_engine *e);

/* The engine's owner id in its devices' replica cache (devices.h), for naming its copies. */
uint64_t llep__engine_cache_owner(const llep_engine *e);

/* Bytes one expert's weights and biases take on a device: each present tensor (gate, up,
 * down, then the biases) starts on a 64-byte boundary. */
uint64_t llep__engine_expert_bytes(const llep_engine *e);

/* Changes a device's budget (of the devices, so for every engine on them); fails with -EINVAL
 * for a bad device and -ENOMEM when the device already holds more. */
int llep__engine_set_budget(llep_engine *e, uint32_t dev, uint64_t bytes);

#endif
