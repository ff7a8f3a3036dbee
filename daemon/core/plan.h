/* Least-Loaded Assignment planner (DESIGN.md section 2).
 *
 * Pure computation: no I/O, no allocation after llep__plan_init(), nothing that knows about
 * devices beyond their count. Every participant that feeds the same loads and parameters gets
 * the same plan, byte for byte. */
#ifndef LLEP_PLAN_H
#define LLEP_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llep/types.h"

/* Upper bounds that keep every index in 32 bits and the workspace reasonable. */
#define LLEP_MAX_EXPERTS 65536u
#define LLEP_MAX_DEVICES 4096u

enum llep_plan_mode { LLEP_PLAN_EP = 0, LLEP_PLAN_LLEP = 1 };

struct llep_cost_model;
struct llep_cost_layer;

/* Which planner llep__plan_run() uses. LLA is the paper's Least-Loaded Assignment
 * (DESIGN.md section 2, this file's llep__plan_compute()); COST is the cost-aware planner of
 * plan-cost.h, which needs a cost model and the layer's figures and falls back to LLA
 * without them. */
enum llep_planner { LLEP_PLANNER_LLA = 0, LLEP_PLANNER_COST = 1 };

/* Which candidate a plan is: EP, the paper's LLA, or the cost planner's refined plan. */
enum llep_plan_pick { LLEP_PICK_EP = 0, LLEP_PICK_LLA = 1, LLEP_PICK_REFINED = 2 };

typedef struct llep_plan_params {
    double alpha;          /* capacity factor, > 0 */
    double lambda;         /* imbalance threshold for LLEP_POLICY_AUTO, > 0 */
    uint64_t min_tokens;   /* m: smallest chunk worth a separate GEMM */
    enum llep_policy policy;
    /* Beyond DESIGN.md section 2, off by default: use at most capacity / P as m. With small
     * batches (decode) the capacity falls below the default m of 1024, every helper's room
     * counts as a small chunk, and section 2 forces whole remainders onto single devices
     * (docs/PERFORMANCE.md). At the paper's batch sizes capacity / P exceeds m: no change. */
    bool scale_min_tokens;
    /* Cluster scope: the P devices form K = P / devices_per_node nodes, node-major (device g
     * is on node g / devices_per_node). A spill then goes to the least-loaded device on the
     * native device's own node when one there qualifies, because moving tokens and weights
     * inside a node is far cheaper than between nodes; only when none does is the helper
     * the least-loaded device of the other nodes. Forced assignments stay as section 2 says.
     * 0 (the default) is the flat plan of section 2, and so is P. Must divide P, or
     * llep__plan_compute() returns -EINVAL. */
    uint32_t devices_per_node;
    /* The planner llep__plan_run() uses (llep__plan_compute() is always LLA), and for
     * LLEP_PLANNER_COST the device cost model and the layer's figures (cost.h), borrowed for
     * the call. NULL cost or cost_layer: LLA. */
    enum llep_planner planner;
    const struct llep_cost_model *cost;
    const struct llep_cost_layer *cost_layer;
} llep_plan_params;

/* One slice [start, end) of an expert's tokens (in the global token order) computed on
 * `device`. */
typedef struct llep_range {
    uint32_t device;
    uint64_t start, end;
} llep_range;

/* The weights of `expert` are copied from its native device `src` to helper `dst`. */
typedef struct llep_transfer {
    uint32_t expert, src, dst;
} llep_transfer;

typedef struct llep_plan {
    uint32_t num_experts;      /* N */
    uint32_t num_devices;      /* P; N is a multiple of P */
    uint32_t experts_per_device; /* M = N / P */

    /* Result of the last llep__plan_compute(). */
    enum llep_plan_mode mode;
    double imbalance;          /* max(native device load) / mean; 1.0 when nothing is routed */
    uint64_t capacity;         /* per-device capacity used by LLA (reported for EP too) */
    uint64_t total;            /* sum of loads */
    uint64_t *loads;           /* [N] copy of the input loads */
    uint64_t *native_loads;    /* [P] device loads under EP placement */
    uint64_t *device_loads;    /* [P] device loads under this plan */
    /* Expert e's ranges are ranges[range_off[e] .. range_off[e+1]), in token order, covering
     * [0, loads[e]) exactly once. Experts with no load have none. */
    uint32_t *range_off;       /* [N + 1] */
    llep_range *ranges;
    uint32_t num_ranges;
    /* One transfer per (expert, helper) pair, in the order the planner made them. */
    llep_transfer *transfers;
    uint32_t num_transfers;
    /* Which candidate this plan is, and its modelled makespan in ns under the cost model the
     * cost planner was given (0 when planned without one). */
    enum llep_plan_pick pick;
    double model_ns;

    /* Workspace sized once by llep__plan_init(); not part of the result. */
    struct llep_plan_ws *ws;
} llep_plan;

/* Fills params with the DESIGN.md defaults and policy AUTO. */
void llep__plan_params_default(llep_plan_params *ret);

/* Checks alpha, lambda and policy; returns 0 or -EINVAL and, when err is not NULL, a message. */
int llep__plan_params_check(const llep_plan_params *params, char *err, size_t errlen);

/* Allocates a plan and its workspace for N experts on P devices. Returns 0, -EINVAL (P = 0,
 * N not a multiple of P, or over the limits) or -ENOMEM. */
int llep__plan_init(llep_plan *p, uint32_t num_experts, uint32_t num_devices);
void llep__plan_fini(llep_plan *p);

/* Computes the plan for loads[N]. Returns 0, -EINVAL for bad parameters (including a
 * devices_per_node that does not divide P) or -EOVERFLOW when the loads do not sum within 64
 * bits. On error the previous result is left untouched. */
int llep__plan_compute(llep_plan *p, const uint64_t *loads, const llep_plan_params *params);

/* As llep__plan_compute(), for a layer whose helpers may hold copies of experts from earlier
 * steps (the replica cache, engine.h): held[x * P + d] != 0 when device d holds a copy of
 * expert x; NULL is llep__plan_compute(). An LLEP plan then also runs LLA with a preference,
 * at each spill, for the least-loaded helper holding a copy whose chunk qualifies under
 * section 2's rule, and keeps that plan only when it needs fewer weight copies than LLA's and
 * its largest device load is no larger; otherwise the plan is LLA's. The same loads,
 * parameters and copies give the same plan. */
int llep__plan_compute_cached(llep_plan *p, const uint64_t *loads, const llep_plan_params *params,
                              const uint8_t *held);

/* The m a plan with these parameters uses: params->min_tokens, capped at the plan's
 * capacity / P when params->scale_min_tokens is set. Valid after llep__plan_compute(). */
uint64_t llep__plan_min_tokens(const llep_plan *p, const llep_plan_params *params);

/* Copies the result of src into dst, which was initialised for the same N and P. Returns 0 or
 * -EINVAL when the sizes differ. No allocation. */
int llep__plan_copy(llep_plan *dst, const llep_plan *src);

/* Native (EP) device of expert e. */
static inline uint32_t llep__plan_native(const llep_plan *p, uint32_t expert) {
    return expert / p->experts_per_device;
}

/* Checks every invariant of a computed plan: ranges cover each loaded expert exactly once and
 * in order, device ids are in range, transfers are exactly the (expert, non-native device)
 * pairs of the ranges, device loads equal the sums of the ranges, EP plans keep everything
 * native. Returns 0 or -EINVAL with a description in err. */
int llep__plan_validate(const llep_plan *p, char *err, size_t errlen);

/* A 64-bit FNV-1a hash of the plan's result: N, P, mode, capacity, total, the loads, the
 * range offsets and ranges, and the transfers, each integer fed as little-endian bytes so
 * that every host gets the same value. Nodes that plan the same step compare hashes to
 * check that they agree. */
uint64_t llep__plan_hash(const llep_plan *p);

/* Token-slots and weight transfers that cross nodes, for nodes of devices_per_node devices.
 * node_loads[j][x] are the slots of expert x whose home device is on node j; they must sum
 * over j to p->loads[x]. In the global token order node j's slots of expert x are the ranks
 * [base, base + node_loads[j][x]) with base the sum of node_loads[i][x] for i < j.
 * ret_rows: slots computed on a device of a node other than their home node.
 * ret_transfers: transfers whose source and destination are on different nodes.
 * Either may be NULL. Returns 0, or -EINVAL when devices_per_node * num_nodes != P or the
 * node loads do not sum to the plan's loads. */
int llep__plan_node_traffic(const llep_plan *p, uint32_t devices_per_node,
                            const uint64_t *const *node_loads, uint32_t num_nodes,
                            uint64_t *ret_rows, uint32_t *ret_transfers);

#endif
