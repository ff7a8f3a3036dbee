/* The device cost model (issue 15, item 1): what a step's pieces take on this hardware.
 *
 * The planner of section 2 balances token counts only. To decide whether a spill pays, the
 * cost-aware planner (plan.h, planner LLEP_PLANNER_COST) needs three figures, which this model
 * gives from a calibration measured on the backend in use (engine/calibrate.c) and kept in
 * llepd's state directory:
 *   - the time of one expert chunk as a function of its rows: a fixed cost per chunk plus the
 *     chunk's work at the rate the device reaches for that many rows (a GEMM of a few rows runs
 *     far below peak, so the rate is a measured curve, not a constant);
 *   - the time to move an expert's weights, or a token's row, between two devices: latency plus
 *     bytes over bandwidth, per kind of link (same physical GPU, between GPUs of a node,
 *     between nodes);
 *   - nothing else: combine and gather costs do not depend on the plan.
 *
 * The curve is measured once, at one reference shape, as a rate in flops per nanosecond against
 * rows; a layer's chunk time scales it by the layer's own flops per row (6 * D * H for SwiGLU's
 * three GEMMs). Pure data and arithmetic: no I/O, no allocation, nothing that knows about CUDA,
 * so the planner can use it and every node given the same model computes the same figures. */
#ifndef LLEP_COST_H
#define LLEP_COST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Points of the rate curve; calibration measures rows 1, 2, 4, ... up to this many points. */
#define LLEP_COST_MAX_POINTS 16

/* Where a transfer goes, from the cheapest to the dearest. */
enum llep_link {
    LLEP_LINK_SAME = 0, /* source and destination are the same logical device: free */
    LLEP_LINK_GPU,      /* two logical devices on one physical device (one GPU, the host) */
    LLEP_LINK_PEER,     /* two physical devices of one node (NVLink, PCIe) */
    LLEP_LINK_NODE,     /* devices of different nodes (the communicator between nodes) */
    LLEP_LINK_KINDS
};

typedef struct llep_cost_link {
    double latency_ns;   /* fixed cost of one transfer */
    double ns_per_byte;  /* 1 / bandwidth */
} llep_cost_link;

typedef struct llep_cost_model {
    /* The rate curve: rate[i] flops per ns reached by one chunk of rows[i] rows. rows strictly
     * increasing from 1; between points the rate is interpolated linearly in log2(rows), beyond
     * the last it stays at the last. */
    uint32_t num_points;
    uint32_t rows[LLEP_COST_MAX_POINTS];
    double rate[LLEP_COST_MAX_POINTS];
    double chunk_fixed_ns;          /* per chunk, whatever its rows (launch, weight fetch) */
    llep_cost_link link[LLEP_LINK_KINDS];
    /* How the P logical devices map onto hardware, for the kind of link between two of them:
     * devices_per_gpu consecutive logical devices share one physical device, devices_per_node
     * consecutive ones one node. 0 means all of them. */
    uint32_t devices_per_gpu, devices_per_node;
    char backend[32];               /* the backend it was measured on ("cpu", "cuda") */
    char device_name[64];           /* "NVIDIA H200", the BLAS core, ... */
} llep_cost_model;

/* One layer's figures under a model: what a chunk's row and an expert's weights weigh. */
typedef struct llep_cost_layer {
    double flops_per_row;   /* 6 * D * H (three GEMMs of 2 * D * H flops per row) */
    uint64_t weight_bytes;  /* one expert's weights and biases */
    uint64_t row_bytes;     /* one token row of x (and of its result) */
} llep_cost_layer;

/* Fills ret with the layer's figures for hidden D, inter H and element size elem (bytes per
 * weight; gpt-oss's MXFP4 expands to bf16 before it reaches the engine), with_bias whether
 * the expert has biases. */
void llep__cost_layer(llep_cost_layer *ret, uint32_t hidden, uint32_t inter, size_t elem,
                      bool with_bias);

/* Checks a model: at least one point, rows strictly increasing from 1, rates finite and > 0,
 * costs finite and >= 0, link kinds non-decreasing in cost at 1 MiB. Returns 0 or -EINVAL with
 * the first problem in err. */
int llep__cost_check(const llep_cost_model *m, char *err, size_t errlen);

/* Time in ns of one chunk of `rows` rows (0 rows: 0). */
double llep__cost_chunk_ns(const llep_cost_model *m, const llep_cost_layer *l, uint64_t rows);

/* A model prepared for one layer's chunks: llep__cost_chunk_ns() is llep__cost_curve_init()
 * then llep__cost_curve_ns(), and a planner that evaluates thousands of chunks per plan
 * prepares once and gets exactly the same figures. */
typedef struct llep_cost_curve {
    uint32_t num_points;
    bool pow2;                          /* rows[i] == 2^i: the segment is found by bit count */
    uint32_t rows[LLEP_COST_MAX_POINTS];
    double lg[LLEP_COST_MAX_POINTS];    /* log2(rows[i]) */
    double rate[LLEP_COST_MAX_POINTS];
    double chunk_fixed_ns, flops_per_row;
} llep_cost_curve;

void llep__cost_curve_init(llep_cost_curve *c, const llep_cost_model *m, const llep_cost_layer *l);
double llep__cost_curve_ns(const llep_cost_curve *c, uint64_t rows);

/* Kind of link between logical devices a and b under the model's mapping. */
enum llep_link llep__cost_link_kind(const llep_cost_model *m, uint32_t a, uint32_t b);

/* Whether a copy over this kind of link occupies the source device's outgoing link, so that a
 * device's copies sent bound a step (plan-cost.h): true where it leaves the physical device
 * (PEER: the GPU's NVLink or PCIe port; NODE: its network port). Within one physical device
 * (GPU) the receiver's stream or thread copies from memory it shares with the source, whose
 * own work goes on; nothing queues behind a port. */
static inline bool llep__cost_link_sends(enum llep_link kind) {
    return kind == LLEP_LINK_PEER || kind == LLEP_LINK_NODE;
}

/* Time in ns to move `bytes` from device src to device dst (0 when src == dst). */
double llep__cost_transfer_ns(const llep_cost_model *m, uint32_t src, uint32_t dst,
                              uint64_t bytes);

/* A nominal model for a backend that has not been calibrated, from datasheet figures: for
 * tests and for modelling hardware this machine does not have (docs/PERFORMANCE.md says which
 * figures are nominal). name: "cpu" or "h200". Returns 0 or -ENOENT. */
int llep__cost_nominal(const char *name, llep_cost_model *ret);

/* A 64-bit FNV-1a hash of the model's figures (little-endian, doubles by their bits), so that
 * nodes can check that they plan with the same model. */
uint64_t llep__cost_hash(const llep_cost_model *m);

#endif
