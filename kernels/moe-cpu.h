/* CPU twins of the per-step MoE kernels: load counting, row gather (dispatch), the expert FFN
 * of one chunk of rows, and the weighted combine.
 *
 * The CUDA backend mirrors each of these with a kernel of the same contract, so the CPU
 * versions are the executable specification of what a device does in a step (DESIGN.md
 * sections 3 and 4). They hold no state, allocate nothing and never log. */
#ifndef LLEP_MOE_CPU_H
#define LLEP_MOE_CPU_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "llep/bf16.h"
#include "llep/types.h"

/* Rows of one GEMM tile inside a chunk: bounds the intermediates (gate and up activations)
 * to LLEP_FFN_TILE_ROWS x H floats each, however many tokens an expert gets. */
#define LLEP_FFN_TILE_ROWS 256u
/* Rows of a bf16 weight matrix converted to float32 at a time (a K-block of the GEMM). */
#define LLEP_FFN_BF16_KBLOCK 256u

#define LLEP_ACT_DEFAULT_ALPHA 1.702f
#define LLEP_ACT_DEFAULT_LIMIT 7.0f

/* bf16 <-> float32 of single values: llep_bf16_to_f32, llep_f32_to_bf16 (llep/bf16.h). */
void llep__bf16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void llep__f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);

static inline size_t llep__dtype_size(enum llep_dtype t) {
    return t == LLEP_DTYPE_BF16 ? 2 : 4;
}

/* What one expert computes: shapes, storage type and activation. */
typedef struct llep_ffn_shape {
    uint32_t hidden, inter;    /* D, H */
    enum llep_dtype dtype;     /* storage of weights, biases and input rows */
    enum llep_act act;
    float act_alpha, act_limit;
} llep_ffn_shape;

/* One expert applied to `rows` consecutive rows: y = FFN(x) (DESIGN.md section 4). All
 * pointers are in the memory of the device that runs the chunk. */
typedef struct llep_expert_chunk {
    llep_ffn_shape shape;
    uint32_t rows;
    const void *w_gate, *w_up;     /* [D][H] */
    const void *w_down;            /* [H][D] */
    const void *b_gate, *b_up;     /* [H] or NULL */
    const void *b_down;            /* [D] or NULL */
    const void *x;                 /* [rows][D], shape.dtype */
    float *y;                      /* [rows][D] */
    void *scratch;                 /* llep__ffn_scratch_bytes(&shape, rows) bytes, 64-aligned */
} llep_expert_chunk;

/* The weighted sum that returns results to their home device:
 * y[t] = sum over k = 0..K-1, in that order, of w[t][k] * src[t * K + k][0..D). */
typedef struct llep_combine {
    uint32_t tokens, top_k, hidden;
    enum llep_dtype dtype;         /* of y */
    const float *topk_w;           /* [tokens][K] */
    const float *const *src;       /* [tokens * K] rows of D floats */
    void *y;                       /* [tokens][D] */
} llep_combine;

/* Adds the slots of idx[0..n) to loads[N]. Returns 0, or -EINVAL (leaving loads partly
 * updated) when an index is outside [0, N). */
int llep__k_count_loads(const int32_t *idx, size_t n, uint32_t num_experts, uint64_t *loads);

/* dst[i] = *src[i] for i < n, rows of row_bytes bytes. */
void llep__k_gather_rows(void *dst, const void *const *src, size_t n, size_t row_bytes);

/* Bytes of scratch the FFN needs for chunks of at most max_rows rows. Depends only on the
 * shape and min(max_rows, LLEP_FFN_TILE_ROWS); 0 when max_rows is 0. */
size_t llep__ffn_scratch_bytes(const llep_ffn_shape *s, uint32_t max_rows);

/* Runs one expert chunk. Row i of y depends only on row i of x (up to the GEMM library's
 * choice of kernel for a given number of rows). */
void llep__k_expert_ffn(const llep_expert_chunk *c);

void llep__k_combine(const llep_combine *c);

/* The activation on one tile: g[i] = act(g[i], u[i]) for i < n. */
void llep__k_activate(float *restrict g, const float *restrict u, size_t n, enum llep_act act, float alpha,
                      float limit);

#endif
