/* One node's part of a cluster step (DESIGN.md section 5, LLEP_SCOPE_CLUSTER).
 *
 * A cluster layer spans `num_nodes` nodes with the same number P_l of logical devices each;
 * global device g = node * P_l + local device (node-major), P = num_nodes * P_l, and expert x
 * is native on global device x / M (M = N / P). Each node's engine (engine.h) is created with
 * its own share only: num_experts = N / num_nodes (its experts node * P_l * M ..), num_devices
 * = P_l, and the weights of those experts.
 *
 * The global token order (DESIGN.md section 2) is node-major: node 0's home devices in order,
 * then node 1's, ..., each home device's tokens, then k. So the slots of expert x coming from
 * node j hold the global ranks [base_j[x], base_j[x] + loads_j[x]), base_j[x] = sum of
 * loads_i[x] over i < j, and every node derives the same positions from the per-node loads
 * without knowing any other node's tokens.
 *
 * A step on one node goes through these phases; between them the caller (llepd's cluster
 * layers, or a test that plays every node in one process) moves the buffers between nodes:
 *
 *   count    this node's batches -> its per-expert loads[N] (to send to the other nodes)
 *   prepare  every node's loads and the global plan (the caller computed it from their sum, with
 *            P devices) -> step buffers allocated and charged, ROWS_OUT[j] packed for every
 *            other node j, ROWS_IN[j] and the WEIGHTS_IN blocks sized, WEIGHTS_OUT listed
 *            and copied out of their devices
 *   compute  (ROWS_IN[j] and WEIGHTS_IN filled by the caller) -> this node's expert chunks run,
 *            RESULTS_OUT[j] packed for every other node j
 *   combine  (RESULTS_IN[j] filled by the caller) -> each batch's y written, step buffers freed
 *
 * Where those buffers live is the part's wire mode (llep__part_set_device_wire(), changed
 * only between steps):
 *
 *   host    (the default) host memory, for a caller that sends bytes (llepd over TCP); results
 *           and weights leave the devices by the backend's download.
 *   device  memory of this node's logical device 0, for a communicator that moves device memory
 *           between nodes (xnode.h): every buffer llep__part_buffer() returns and every
 *           llep_part_weights.data. They are charged to device 0's budget, count in its peak
 *           and are freed with the step; RESULTS_IN is the very copy the combines read, and
 *           ROWS_OUT is packed on the host and copied up by prepare.
 *
 * Layouts, traffic and statistics are the same in both modes but for device 0's peak. What a
 * phase fills is complete when it returns; what the caller fills must be complete before it
 * calls the next phase.
 *
 * Wire layouts, the same on both ends by construction: ROWS from node j to node n hold, for each
 * expert x ascending, each range of x (plan order) on a device of node n, the ranks of that range
 * that come from node j, ascending: rows of D elements in the layer's dtype. RESULTS from n back
 * to j have the same rows in the same order as float32. A WEIGHTS block is one expert's block as
 * llep__engine_expert_bytes() lays it out.
 *
 * Results equal llep__engine_step's over the same tokens on P devices: the combine sums k = 0..K-1
 * in order from rows computed by the same kernels. abort() may be called after any phase and
 * frees the step; no phase writes any y except combine, which writes all of them.
 *
 * The part runs its steps on the engine's devices and step buffers: while a part's step is
 * prepared, the engine must not run llep__engine_step() (one step at a time per engine). Each
 * phase (prepare, compute, combine) holds the devices' turn (devices.h) while it uses them;
 * between phases other engines on the same devices run their steps, and this step's buffers
 * stay charged. */
#ifndef LLEP_ENGINE_PART_H
#define LLEP_ENGINE_PART_H

#include <stdint.h>

#include "engine.h"

typedef struct llep_part llep_part;

/* Host memory, or device 0's in device-wire mode. */
enum llep_part_buf {
    LLEP_PART_ROWS_OUT,     /* to node j: packed by prepare */
    LLEP_PART_ROWS_IN,      /* from node j: filled by the caller before compute */
    LLEP_PART_RESULTS_OUT,  /* to node j: packed by compute */
    LLEP_PART_RESULTS_IN,   /* from node j: filled by the caller before combine */
};

/* One expert's weight block crossing nodes in this step: one per (expert, node that computes a
 * range of it without being its native node), however many of that node's devices use it.
 * Both ends list them in the same order (experts ascending, then the order of the expert's
 * ranges in the plan), so the caller may pair them by (expert, node) or by position. */
typedef struct llep_part_weights {
    uint32_t expert;        /* global id */
    uint32_t node;          /* OUT: the node to send to; IN: the node it comes from */
    void *data;             /* OUT: a copy made by prepare; IN: where the caller puts it (host
                             * memory, or device 0's in device-wire mode) */
    uint64_t bytes;
} llep_part_weights;

/* A part over engine e (which it borrows; free the part first) for node `node` of `num_nodes`,
 * in host mode. The backend must have the download op, which host mode needs (backend.h; the
 * CPU and CUDA backends do). Results from other nodes are held on this node's device 0 for the
 * combines, charged to its budget. Returns 0, -EINVAL (bad node, too many experts or devices),
 * -EOPNOTSUPP (a backend without download) or -ENOMEM; the message is in err. */
int llep__part_new(llep_engine *e, uint32_t num_nodes, uint32_t node, llep_part **ret,
                   char *err, size_t errlen);
void llep__part_free(llep_part *pt);

/* Device-wire mode on (on != 0) or back to host mode for the steps prepared from now on.
 * Returns 0, or -EINVAL while a step is prepared (message in llep__part_error). */
int llep__part_set_device_wire(llep_part *pt, int on);

/* Checks this node's batches ([P_l]) and counts their per-expert loads into loads[N] (global
 * expert ids). Returns 0 or -EINVAL (message in llep__part_error). */
int llep__part_count(llep_part *pt, const llep_engine_batch *batches, uint64_t *loads);

/* node_loads[j] is node j's loads[N] (this node's included); plan is the global plan computed
 * from their sum on P devices (the part keeps a copy). Checks that plan and loads agree and
 * that node_loads[this node] are what the batches hold (-EINVAL; prepare counts them again),
 * chunk sizes (-E2BIG) and the budgets of this node's devices (-ENOMEM; device 0's counts the
 * device-wire buffers in that mode) before allocating; packs ROWS_OUT and copies the
 * WEIGHTS_OUT blocks out of their devices, both complete on return. -EINVAL too when a step is
 * already prepared. On failure nothing stays allocated. The batches must be the ones given to
 * count and stay valid until combine or abort. */
int llep__part_prepare(llep_part *pt, const llep_plan *plan, const uint64_t *const *node_loads,
                       const llep_engine_batch *batches);

/* After prepare: the buffer of `kind` for node j (j != this node), in host or device 0 memory
 * by the mode; bytes may be 0 (the pointer may then be NULL). Returns 0 or -EINVAL for a bad
 * node or kind. The buffers live until combine or abort. */
int llep__part_buffer(llep_part *pt, enum llep_part_buf kind, uint32_t node, void **ret,
                      uint64_t *ret_bytes);

/* After prepare: the weight blocks this node sends (out = 1) or receives (out = 0). */
uint32_t llep__part_num_weights(const llep_part *pt, int out);
const llep_part_weights *llep__part_weights(const llep_part *pt, int out, uint32_t i);

/* Runs this node's chunks (reading ROWS_IN and WEIGHTS_IN); on return RESULTS_OUT is filled.
 * On failure the step is freed. */
int llep__part_compute(llep_part *pt);

/* Combines from RESULTS_IN (copied to device 0 first in host mode), writes every batch's y,
 * frees the step and fills stats (stats may be NULL): mode, imbalance and capacity of the
 * global plan; slots of this node's batches; this node's P_l devices, with the makespan over
 * them; transfers and weight_bytes_moved for the plan's transfers into this node's devices;
 * token_bytes_moved for this node's slots computed away from their home device, on this node
 * or another. Summed over the nodes these equal llep__engine_step's figures. wall_ns runs from
 * prepare. */
int llep__part_combine(llep_part *pt, llep_engine_stats *stats);

/* Frees the step's buffers after a failure or a step abandoned between phases; safe to call
 * when nothing is prepared. */
void llep__part_abort(llep_part *pt);

/* Rows and weight bytes this node sends to and receives from other nodes in the step last
 * prepared (set by prepare). */
typedef struct llep_part_traffic {
    uint64_t rows_out, rows_in;             /* token rows sent / received (not results) */
    uint64_t bytes_out, bytes_in;           /* rows, results and weights */
    uint32_t weights_out, weights_in;
} llep_part_traffic;
void llep__part_traffic(const llep_part *pt, llep_part_traffic *ret);

/* The message of the last failure; "" after success. */
const char *llep__part_error(const llep_part *pt);

#endif
