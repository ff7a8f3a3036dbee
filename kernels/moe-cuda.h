/* CUDA twins of the per-step MoE kernels of moe-cpu.h, callable from C.
 *
 * Each launcher queues one kernel on `stream` and returns 0 or a negative errno (-EINVAL for
 * bad arguments, -EIO when the launch fails). Every pointer is device memory (or memory the
 * device can address through unified addressing: pinned host memory, a peer GPU's memory).
 * The contracts are those of the CPU twins named with each function; tests/gpu/test-kernels.c
 * checks every kernel against its twin. */
#ifndef LLEP_MOE_CUDA_H
#define LLEP_MOE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "llep/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* llep__k_count_loads: loads[idx[i]]++ for i < n (loads is not cleared first). An index
 * outside [0, N) is not counted and sets *bad to 1, so the caller can fail with -EINVAL. */
int llep__cu_count_loads(const int32_t *idx, size_t n, uint32_t num_experts,
                         unsigned long long *loads, unsigned int *bad, cudaStream_t stream);

/* llep__k_gather_rows: dst row i = *src[i] (src is a device array of n row pointers). */
int llep__cu_gather_rows(void *dst, const void *const *src, size_t n, size_t row_bytes,
                         cudaStream_t stream);

/* The permutation into (compute device, expert, global order): dst row i = src row idx[i]. */
int llep__cu_permute_rows(void *dst, const void *src, const uint32_t *idx, size_t n,
                          size_t row_bytes, cudaStream_t stream);

/* The activation of llep__k_expert_ffn fused with the gate and up biases, on rows x inter
 * values: a = act(g + b_gate, u + b_up) (DESIGN.md section 4). Biases are in `bias_dtype` and
 * may be NULL. The result goes to out: float32 (out may be g) or bf16 (round to nearest
 * even), as out_dtype says. */
int llep__cu_bias_act(const float *g, const float *u, const void *b_gate, const void *b_up,
                      enum llep_dtype bias_dtype, size_t rows, size_t inter, enum llep_act act,
                      float alpha, float limit, void *out, enum llep_dtype out_dtype,
                      cudaStream_t stream);

/* y[i][j] += b[j] for rows x cols float32 values; b in `dtype`. */
int llep__cu_add_bias(float *y, const void *b, enum llep_dtype dtype, size_t rows, size_t cols,
                      cudaStream_t stream);

/* llep__k_combine: y[t] = sum over k = 0..K-1, in that order, of w[t][k] * src[t*K + k]; src
 * and topk_w are device arrays, y in `dtype`. */
int llep__cu_combine(const float *const *src, const float *topk_w, size_t tokens,
                     uint32_t top_k, uint32_t hidden, void *y, enum llep_dtype dtype,
                     cudaStream_t stream);

/* Storage conversions (llep__bf16_to_f32_n, llep__f32_to_bf16_n). */
int llep__cu_bf16_to_f32(float *dst, const uint16_t *src, size_t n, cudaStream_t stream);
int llep__cu_f32_to_bf16(uint16_t *dst, const float *src, size_t n, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
