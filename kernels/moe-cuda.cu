/* CUDA twins of the per-step MoE kernels (moe-cuda.h). Written in the C subset of CUDA: no
 * classes, no templates, no exceptions; every launcher checks its arguments and the launch. */
#include "moe-cuda.h"

#include <errno.h>

#define THREADS 256
/* Grids larger than this walk their rows with a stride instead. */
#define MAX_BLOCKS 65535u
/* Experts counted in a shared-memory histogram before the global one (32 KiB). */
#define SHARED_HIST_MAX 8192u

static int launched(void) {
    return cudaGetLastError() == cudaSuccess ? 0 : -EIO;
}

static unsigned int blocks_for(size_t n) {
    return n < MAX_BLOCKS ? (unsigned int)n : MAX_BLOCKS;
}

/* Same rounding as llep_f32_to_bf16: to nearest even, NaN stays a quiet NaN. */
static __device__ uint16_t f32_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static __device__ float bf16_to_f32(uint16_t h) {
    return __uint_as_float((uint32_t)h << 16);
}

static __device__ float load_val(const void *p, size_t i, enum llep_dtype t) {
    return t == LLEP_DTYPE_BF16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* ---- load count ---- */

static __global__ void count_shared(const int32_t *idx, size_t n, uint32_t num_experts,
                                    unsigned long long *loads, unsigned int *bad) {
    extern __shared__ unsigned int hist[];

    for (uint32_t e = threadIdx.x; e < num_experts; e += blockDim.x)
        hist[e] = 0;
    __syncthreads();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int32_t e = idx[i];
        if (e < 0 || (uint32_t)e >= num_experts)
            *bad = 1;
        else
            atomicAdd(&hist[e], 1u);
    }
    __syncthreads();
    for (uint32_t e = threadIdx.x; e < num_experts; e += blockDim.x)
        if (hist[e])
            atomicAdd(&loads[e], (unsigned long long)hist[e]);
}

static __global__ void count_global(const int32_t *idx, size_t n, uint32_t num_experts,
                                    unsigned long long *loads, unsigned int *bad) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int32_t e = idx[i];
        if (e < 0 || (uint32_t)e >= num_experts)
            *bad = 1;
        else
            atomicAdd(&loads[e], 1ull);
    }
}

extern "C" int llep__cu_count_loads(const int32_t *idx, size_t n, uint32_t num_experts,
                                    unsigned long long *loads, unsigned int *bad,
                                    cudaStream_t stream) {
    if (num_experts == 0 || !loads || !bad || (n && !idx))
        return -EINVAL;
    if (n == 0)
        return 0;
    /* Enough blocks to fill the GPU; each block's histogram costs num_experts atomics. */
    unsigned int blocks = blocks_for((n + THREADS * 16 - 1) / (THREADS * 16));
    if (num_experts <= SHARED_HIST_MAX)
        count_shared<<<blocks, THREADS, num_experts * sizeof(unsigned int), stream>>>(
            idx, n, num_experts, loads, bad);
    else
        count_global<<<blocks, THREADS, 0, stream>>>(idx, n, num_experts, loads, bad);
    return launched();
}

/* ---- row gather and permutation ---- */

/* One row per block: 16-byte words when both ends and the length allow, bytes otherwise. */
static __device__ void copy_row(char *d, const char *s, size_t bytes) {
    if ((((uintptr_t)d | (uintptr_t)s | bytes) & 15u) == 0) {
        for (size_t j = threadIdx.x; j < bytes / 16; j += blockDim.x)
            ((uint4 *)d)[j] = ((const uint4 *)s)[j];
    } else if ((((uintptr_t)d | (uintptr_t)s | bytes) & 3u) == 0) {
        for (size_t j = threadIdx.x; j < bytes / 4; j += blockDim.x)
            ((uint32_t *)d)[j] = ((const uint32_t *)s)[j];
    } else {
        for (size_t j = threadIdx.x; j < bytes; j += blockDim.x)
            d[j] = s[j];
    }
}

static __global__ void gather_rows(char *dst, const void *const *src, size_t n,
                                   size_t row_bytes) {
    for (size_t i = blockIdx.x; i < n; i += gridDim.x)
        copy_row(dst + i * row_bytes, (const char *)src[i], row_bytes);
}

static __global__ void permute_rows(char *dst, const char *src, const uint32_t *idx, size_t n,
                                    size_t row_bytes) {
    for (size_t i = blockIdx.x; i < n; i += gridDim.x)
        copy_row(dst + i * row_bytes, src + (size_t)idx[i] * row_bytes, row_bytes);
}

extern "C" int llep__cu_gather_rows(void *dst, const void *const *src, size_t n,
                                    size_t row_bytes, cudaStream_t stream) {
    if (n == 0 || row_bytes == 0)
        return 0;
    if (!dst || !src)
        return -EINVAL;
    gather_rows<<<blocks_for(n), 128, 0, stream>>>((char *)dst, src, n, row_bytes);
    return launched();
}

extern "C" int llep__cu_permute_rows(void *dst, const void *src, const uint32_t *idx, size_t n,
                                     size_t row_bytes, cudaStream_t stream) {
    if (n == 0 || row_bytes == 0)
        return 0;
    if (!dst || !src || !idx)
        return -EINVAL;
    permute_rows<<<blocks_for(n), 128, 0, stream>>>((char *)dst, (const char *)src, idx, n,
                                                    row_bytes);
    return launched();
}

/* ---- activation with biases ---- */

/* 1 / (1 + exp(-x)) with expf, as in the CPU twin: 0 once exp(-x) overflows, never NaN. */
static __device__ float sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

/* The comparisons are written as in llep__k_activate, so NaN handling matches too. */
static __device__ float activate(float g, float u, enum llep_act act, float alpha, float limit) {
    if (act == LLEP_ACT_SWIGLU)
        return g * sigmoid(g) * u;
    float gc = g < limit ? g : limit;
    float uc = u < -limit ? -limit : (u > limit ? limit : u);
    return (uc + 1.0f) * gc * sigmoid(alpha * gc);
}

static __global__ void bias_act(const float *g, const float *u, const void *bg, const void *bu,
                                enum llep_dtype bias_dtype, size_t total, size_t inter,
                                enum llep_act act, float alpha, float limit, void *out,
                                enum llep_dtype out_dtype) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t j = i % inter;
        float gv = g[i], uv = u[i];
        if (bg)
            gv += load_val(bg, j, bias_dtype);
        if (bu)
            uv += load_val(bu, j, bias_dtype);
        float a = activate(gv, uv, act, alpha, limit);
        if (out_dtype == LLEP_DTYPE_BF16)
            ((uint16_t *)out)[i] = f32_to_bf16(a);
        else
            ((float *)out)[i] = a;
    }
}

extern "C" int llep__cu_bias_act(const float *g, const float *u, const void *b_gate,
                                 const void *b_up, enum llep_dtype bias_dtype, size_t rows,
                                 size_t inter, enum llep_act act, float alpha, float limit,
                                 void *out, enum llep_dtype out_dtype, cudaStream_t stream) {
    size_t total = rows * inter;

    if (total == 0)
        return 0;
    if (!g || !u || !out || (act != LLEP_ACT_SWIGLU && act != LLEP_ACT_SWIGLU_OAI))
        return -EINVAL;
    bias_act<<<blocks_for((total + THREADS - 1) / THREADS), THREADS, 0, stream>>>(
        g, u, b_gate, b_up, bias_dtype, total, inter, act, alpha, limit, out, out_dtype);
    return launched();
}

static __global__ void add_bias(float *y, const void *b, enum llep_dtype dtype, size_t total,
                                size_t cols) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += load_val(b, i % cols, dtype);
}

extern "C" int llep__cu_add_bias(float *y, const void *b, enum llep_dtype dtype, size_t rows,
                                 size_t cols, cudaStream_t stream) {
    size_t total = rows * cols;

    if (total == 0 || !b)
        return 0;
    if (!y)
        return -EINVAL;
    add_bias<<<blocks_for((total + THREADS - 1) / THREADS), THREADS, 0, stream>>>(
        y, b, dtype, total, cols);
    return launched();
}

/* ---- combine ---- */

/* One token per block; each thread owns columns and sums k = 0..K-1 in order, as the CPU
 * twin does, so the result does not depend on where the rows were computed. */
static __global__ void combine(const float *const *src, const float *w, size_t tokens,
                               uint32_t top_k, uint32_t hidden, void *y,
                               enum llep_dtype dtype) {
    for (size_t t = blockIdx.x; t < tokens; t += gridDim.x) {
        const float *const *s = src + t * top_k;
        const float *wt = w + t * top_k;
        for (uint32_t j = threadIdx.x; j < hidden; j += blockDim.x) {
            float acc = 0.0f;
            for (uint32_t k = 0; k < top_k; k++)
                acc += wt[k] * s[k][j];
            if (dtype == LLEP_DTYPE_BF16)
                ((uint16_t *)y)[t * hidden + j] = f32_to_bf16(acc);
            else
                ((float *)y)[t * hidden + j] = acc;
        }
    }
}

extern "C" int llep__cu_combine(const float *const *src, const float *topk_w, size_t tokens,
                                uint32_t top_k, uint32_t hidden, void *y, enum llep_dtype dtype,
                                cudaStream_t stream) {
    if (tokens == 0)
        return 0;
    if (!src || !topk_w || !y || top_k == 0 || hidden == 0)
        return -EINVAL;
    combine<<<blocks_for(tokens), THREADS, 0, stream>>>(src, topk_w, tokens, top_k, hidden, y,
                                                        dtype);
    return launched();
}

/* ---- conversions ---- */

static __global__ void to_f32(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = bf16_to_f32(src[i]);
}

static __global__ void to_bf16(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = f32_to_bf16(src[i]);
}

extern "C" int llep__cu_bf16_to_f32(float *dst, const uint16_t *src, size_t n,
                                    cudaStream_t stream) {
    if (n == 0)
        return 0;
    if (!dst || !src)
        return -EINVAL;
    to_f32<<<blocks_for((n + THREADS - 1) / THREADS), THREADS, 0, stream>>>(dst, src, n);
    return launched();
}

extern "C" int llep__cu_f32_to_bf16(uint16_t *dst, const float *src, size_t n,
                                    cudaStream_t stream) {
    if (n == 0)
        return 0;
    if (!dst || !src)
        return -EINVAL;
    to_bf16<<<blocks_for((n + THREADS - 1) / THREADS), THREADS, 0, stream>>>(dst, src, n);
    return launched();
}
