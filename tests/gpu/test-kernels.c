/* Every CUDA kernel against its CPU twin (kernels/moe-cuda.h against kernels/moe-cpu.h), and
 * the expert FFN chunk of the CUDA backend against the float64 formula of DESIGN.md section 4
 * (float32 storage within 1e-5 relative L2 error, bf16 within 1e-2) and against the CPU twin.
 * Ends with the GEMM rate check of issue 6: expert chunks against one cuBLAS GEMM of the same
 * total size (target: at least 70 %).
 *
 * Exits 77 (skipped, for meson) when no GPU is visible, 1 on any failure. Options:
 *   --no-rate        skip the GEMM rate check
 *   --json F         write the figures as JSON to F
 *   --self-test-cpu  only the chunk checks, with the CPU backend in place of CUDA: tests the
 *                    harness (reference, layouts, tolerances) where there is no GPU */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "backend-cuda.h"
#include "fixtures.h"
#include "gpu-check.h"
#include "moe-cpu.h"
#include "moe-cuda.h"

static FILE *json;
static int self_test;  /* --self-test-cpu: "device" memory is host memory */


#define CUDA_OK(call)                                                                     \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            printf("FAIL: %s: %s (%s:%d)\n", #call, cudaGetErrorString(e_), __FILE__,      \
                   __LINE__);                                                             \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

static uint64_t rng_state = 12345; /* splitmix64: rng_next, rng_sym (fixtures.h) */

static void *dev_copy(const void *host, size_t bytes) {
    void *d = NULL;
    CUDA_OK(cudaMalloc(&d, bytes ? bytes : 1));
    if (bytes)
        CUDA_OK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    return d;
}

static void *host_back(const void *dev, size_t bytes) {
    void *h = malloc(bytes ? bytes : 1);
    if (!h)
        exit(1);
    if (self_test)
        memcpy(h, dev, bytes);
    else
        CUDA_OK(cudaMemcpy(h, dev, bytes, cudaMemcpyDeviceToHost));
    return h;
}

static double rel_l2(const float *a, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ---- load count ---- */

static void test_count(uint32_t n_experts, size_t n) {
    int32_t *idx = malloc(n * sizeof(*idx));
    uint64_t *want = calloc(n_experts, sizeof(*want));
    for (size_t i = 0; i < n; i++)
        idx[i] = (int32_t)(rng_next(&rng_state) % 10 < 3 ? 0 : rng_next(&rng_state) % n_experts);
    llep__k_count_loads(idx, n, n_experts, want);

    int32_t *d_idx = dev_copy(idx, n * sizeof(*idx));
    unsigned long long *d_loads;
    unsigned int *d_bad;
    CUDA_OK(cudaMalloc((void **)&d_loads, n_experts * sizeof(*d_loads)));
    CUDA_OK(cudaMalloc((void **)&d_bad, sizeof(*d_bad)));
    CUDA_OK(cudaMemset(d_loads, 0, n_experts * sizeof(*d_loads)));
    CUDA_OK(cudaMemset(d_bad, 0, sizeof(*d_bad)));
    if (llep__cu_count_loads(d_idx, n, n_experts, d_loads, d_bad, 0) != 0)
        fail("count: launch");
    unsigned long long *got = host_back(d_loads, n_experts * sizeof(*got));
    unsigned int *bad = host_back(d_bad, sizeof(*bad));
    for (uint32_t e = 0; e < n_experts; e++)
        if (got[e] != want[e]) {
            fail("count N=%u n=%zu: expert %u has %llu, CPU twin %llu", n_experts, n, e, got[e],
                 (unsigned long long)want[e]);
            break;
        }
    if (*bad)
        fail("count N=%u: bad flag set on valid input", n_experts);
    /* An index outside [0, N) sets the flag. */
    int32_t neg = -1;
    CUDA_OK(cudaMemcpy(d_idx, &neg, sizeof(neg), cudaMemcpyHostToDevice));
    llep__cu_count_loads(d_idx, n, n_experts, d_loads, d_bad, 0);
    free(bad);
    bad = host_back(d_bad, sizeof(*bad));
    if (!*bad)
        fail("count N=%u: index -1 not flagged", n_experts);
    printf("count     N=%-5u slots=%-8zu ok\n", n_experts, n);
    cudaFree(d_idx);
    cudaFree(d_loads);
    cudaFree(d_bad);
    free(idx);
    free(want);
    free(got);
    free(bad);
}

/* ---- gather and permutation ---- */

static void test_gather(size_t row_bytes, size_t rows, size_t n) {
    unsigned char *src = malloc(rows * row_bytes), *want = malloc(n * row_bytes);
    uint32_t *perm = malloc(n * sizeof(*perm));
    const void **hp = malloc(n * sizeof(*hp)), **dp = malloc(n * sizeof(*dp));
    for (size_t i = 0; i < rows * row_bytes; i++)
        src[i] = (unsigned char)rng_next(&rng_state);
    unsigned char *d_src = dev_copy(src, rows * row_bytes);
    for (size_t i = 0; i < n; i++) {
        perm[i] = (uint32_t)(rng_next(&rng_state) % rows);
        hp[i] = src + perm[i] * row_bytes;
        dp[i] = d_src + perm[i] * row_bytes;
    }
    llep__k_gather_rows(want, hp, n, row_bytes);

    void *d_dst, *d_ptrs = dev_copy(dp, n * sizeof(*dp));
    uint32_t *d_perm = dev_copy(perm, n * sizeof(*perm));
    CUDA_OK(cudaMalloc(&d_dst, n * row_bytes));
    if (llep__cu_gather_rows(d_dst, d_ptrs, n, row_bytes, 0) != 0)
        fail("gather: launch");
    unsigned char *got = host_back(d_dst, n * row_bytes);
    if (memcmp(got, want, n * row_bytes) != 0)
        fail("gather row_bytes=%zu: differs from the CPU twin", row_bytes);
    free(got);
    CUDA_OK(cudaMemset(d_dst, 0, n * row_bytes));
    if (llep__cu_permute_rows(d_dst, d_src, d_perm, n, row_bytes, 0) != 0)
        fail("permute: launch");
    got = host_back(d_dst, n * row_bytes);
    if (memcmp(got, want, n * row_bytes) != 0)
        fail("permute row_bytes=%zu: differs from the CPU twin", row_bytes);
    printf("gather    row_bytes=%-6zu rows=%-6zu ok\n", row_bytes, n);
    free(got);
    cudaFree(d_dst);
    cudaFree(d_ptrs);
    cudaFree(d_perm);
    cudaFree(d_src);
    free(src);
    free(want);
    free(perm);
    free(hp);
    free(dp);
}

/* ---- bias + activation ---- */

static void store(void *dst, const float *src, size_t n, enum llep_dtype t) {
    if (t == LLEP_DTYPE_BF16)
        llep__f32_to_bf16_n(dst, src, n);
    else
        memcpy(dst, src, n * sizeof(float));
}

static void test_bias_act(enum llep_act act, enum llep_dtype bias_t, enum llep_dtype out_t,
                          int with_bias) {
    size_t rows = 77, h = 1000, n = rows * h, esz = llep__dtype_size(bias_t);
    float *g = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float));
    float *bg = malloc(h * sizeof(float)), *bu = malloc(h * sizeof(float));
    void *bgs = malloc(h * esz), *bus = malloc(h * esz);
    float *want = malloc(n * sizeof(float)), *wu = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        /* Mostly ordinary values, some far outside the clamps and the exp range. */
        float scale = i % 97 == 0 ? 500.0f : 8.0f;
        g[i] = rng_sym(&rng_state) * scale;
        u[i] = rng_sym(&rng_state) * scale;
    }
    for (size_t j = 0; j < h; j++) {
        bg[j] = rng_sym(&rng_state);
        bu[j] = rng_sym(&rng_state);
    }
    store(bgs, bg, h, bias_t);
    store(bus, bu, h, bias_t);
    /* The biases as the kernel sees them: rounded to their storage type. */
    if (bias_t == LLEP_DTYPE_BF16) {
        llep__bf16_to_f32_n(bg, bgs, h);
        llep__bf16_to_f32_n(bu, bus, h);
    }
    for (size_t i = 0; i < n; i++) {
        want[i] = g[i] + (with_bias ? bg[i % h] : 0.0f);
        wu[i] = u[i] + (with_bias ? bu[i % h] : 0.0f);
    }
    llep__k_activate(want, wu, n, act, LLEP_ACT_DEFAULT_ALPHA, LLEP_ACT_DEFAULT_LIMIT);

    float *dg = dev_copy(g, n * sizeof(float)), *du = dev_copy(u, n * sizeof(float));
    void *dbg = dev_copy(bgs, h * esz), *dbu = dev_copy(bus, h * esz), *dout;
    CUDA_OK(cudaMalloc(&dout, n * llep__dtype_size(out_t)));
    if (llep__cu_bias_act(dg, du, with_bias ? dbg : NULL, with_bias ? dbu : NULL, bias_t, rows,
                          h, act, LLEP_ACT_DEFAULT_ALPHA, LLEP_ACT_DEFAULT_LIMIT, dout, out_t,
                          0) != 0)
        fail("bias_act: launch");
    void *raw = host_back(dout, n * llep__dtype_size(out_t));
    float *got = malloc(n * sizeof(float));
    if (out_t == LLEP_DTYPE_BF16)
        llep__bf16_to_f32_n(got, raw, n);
    else
        memcpy(got, raw, n * sizeof(float));
    /* CUDA's expf against glibc's: a few ulp; a bf16 result: one bf16 rounding. */
    double tol = out_t == LLEP_DTYPE_BF16 ? 8e-3 : 1e-5;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) {
            fail("bias_act: element %zu is %g from finite input", i, got[i]);
            break;
        }
        double err = fabs((double)got[i] - want[i]) / fmax(1e-3, fabs((double)want[i]));
        worst = err > worst ? err : worst;
    }
    if (worst > tol)
        fail("bias_act act=%d bias=%s out=%s: worst relative error %.3g > %.1g", act,
             bias_t ? "bf16" : "f32", out_t ? "bf16" : "f32", worst, tol);
    printf("bias_act  act=%-10s bias=%s%-4s out=%-4s worst rel err %.2e ok\n",
           act == LLEP_ACT_SWIGLU ? "swiglu" : "swiglu_oai", with_bias ? "" : "none/",
           bias_t ? "bf16" : "f32", out_t ? "bf16" : "f32", worst);
    cudaFree(dg);
    cudaFree(du);
    cudaFree(dbg);
    cudaFree(dbu);
    cudaFree(dout);
    free(g);
    free(u);
    free(bg);
    free(bu);
    free(bgs);
    free(bus);
    free(want);
    free(wu);
    free(raw);
    free(got);
}

static void test_add_bias(enum llep_dtype t) {
    size_t rows = 33, cols = 515, n = rows * cols;
    float *y = malloc(n * sizeof(float)), *b = malloc(cols * sizeof(float));
    void *bs = malloc(cols * 4);
    for (size_t i = 0; i < n; i++)
        y[i] = rng_sym(&rng_state);
    for (size_t j = 0; j < cols; j++)
        b[j] = rng_sym(&rng_state);
    store(bs, b, cols, t);
    if (t == LLEP_DTYPE_BF16)
        llep__bf16_to_f32_n(b, bs, cols);
    float *dy = dev_copy(y, n * sizeof(float));
    void *db = dev_copy(bs, cols * llep__dtype_size(t));
    llep__cu_add_bias(dy, db, t, rows, cols, 0);
    float *got = host_back(dy, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        if (got[i] != y[i] + b[i % cols]) {
            fail("add_bias %s: element %zu", t ? "bf16" : "f32", i);
            break;
        }
    printf("add_bias  %s ok\n", t ? "bf16" : "f32");
    cudaFree(dy);
    cudaFree(db);
    free(y);
    free(b);
    free(bs);
    free(got);
}

/* ---- combine ---- */

static void test_combine(enum llep_dtype t) {
    uint32_t tokens = 301, k = 4, d = 2880, nrows = 700;
    float *rows = malloc((size_t)nrows * d * sizeof(float));
    float *w = malloc((size_t)tokens * k * sizeof(float));
    const float **hp = malloc((size_t)tokens * k * sizeof(*hp));
    const float **dp = malloc((size_t)tokens * k * sizeof(*dp));
    for (size_t i = 0; i < (size_t)nrows * d; i++)
        rows[i] = rng_sym(&rng_state) * 3;
    float *drows = dev_copy(rows, (size_t)nrows * d * sizeof(float));
    for (size_t s = 0; s < (size_t)tokens * k; s++) {
        /* Now and then the same row twice in one token, as when top-k repeats an expert. */
        uint32_t r = s % k == 1 && s % 3 == 0 ? (uint32_t)((s - 1) % nrows)
                                              : (uint32_t)(rng_next(&rng_state) % nrows);
        hp[s] = rows + (size_t)r * d;
        dp[s] = drows + (size_t)r * d;
        w[s] = (rng_sym(&rng_state) + 1) / 2;
    }
    size_t ybytes = (size_t)tokens * d * llep__dtype_size(t);
    void *want = malloc(ybytes);
    llep_combine c = { tokens, k, d, t, w, hp, want };
    llep__k_combine(&c);

    void *dptr = dev_copy(dp, (size_t)tokens * k * sizeof(*dp));
    float *dw = dev_copy(w, (size_t)tokens * k * sizeof(float));
    void *dy;
    CUDA_OK(cudaMalloc(&dy, ybytes));
    if (llep__cu_combine(dptr, dw, tokens, k, d, dy, t, 0) != 0)
        fail("combine: launch");
    void *got = host_back(dy, ybytes);
    double worst = 0;
    for (size_t i = 0; i < (size_t)tokens * d; i++) {
        double a = t ? llep_bf16_to_f32(((uint16_t *)got)[i]) : ((float *)got)[i];
        double b = t ? llep_bf16_to_f32(((uint16_t *)want)[i]) : ((float *)want)[i];
        /* Relative to the size of the terms (values of order 1): where the K terms cancel,
         * a fused multiply-add changes the result by a few ulp of the terms, not of it. */
        double err = fabs(a - b) / fmax(1.0, fabs(b));
        worst = err > worst ? err : worst;
    }
    /* Same order of the sum; only fused multiply-adds differ (and one bf16 rounding). */
    double tol = t ? 8e-3 : 1e-5;
    if (worst > tol)
        fail("combine %s: worst relative error %.3g > %.1g", t ? "bf16" : "f32", worst, tol);
    printf("combine   %s worst rel err %.2e ok\n", t ? "bf16" : "f32", worst);
    cudaFree(drows);
    cudaFree(dptr);
    cudaFree(dw);
    cudaFree(dy);
    free(rows);
    free(w);
    free(hp);
    free(dp);
    free(want);
    free(got);
}

static void test_convert(void) {
    size_t n = 100003;
    float *f = malloc(n * sizeof(float));
    uint16_t *want = malloc(n * 2);
    for (size_t i = 0; i < n; i++)
        f[i] = rng_sym(&rng_state) * (float)(1 << (i % 30));
    f[0] = NAN;
    f[1] = INFINITY;
    f[2] = -0.0f;
    llep__f32_to_bf16_n(want, f, n);
    float *df = dev_copy(f, n * sizeof(float)), *back;
    uint16_t *db;
    CUDA_OK(cudaMalloc((void **)&db, n * 2));
    CUDA_OK(cudaMalloc((void **)&back, n * sizeof(float)));
    llep__cu_f32_to_bf16(db, df, n, 0);
    llep__cu_bf16_to_f32(back, db, n, 0);
    uint16_t *got = host_back(db, n * 2);
    float *gotf = host_back(back, n * sizeof(float));
    if (memcmp(got, want, n * 2) != 0)
        fail("f32_to_bf16 differs from the CPU twin");
    for (size_t i = 0; i < n; i++) {
        float w = llep_bf16_to_f32(want[i]);
        if (memcmp(&gotf[i], &w, sizeof(w)) != 0) {
            fail("bf16_to_f32: element %zu", i);
            break;
        }
    }
    printf("convert   f32<->bf16 ok\n");
    cudaFree(df);
    cudaFree(db);
    cudaFree(back);
    free(f);
    free(want);
    free(got);
    free(gotf);
}

/* ---- the expert chunk through the CUDA backend ---- */

/* FFN_e(x) in float64 (DESIGN.md section 4), from values already in their storage type. */
static void ffn_ref(const float *x, const float *wg, const float *wu, const float *wd,
                    const float *bg, const float *bu, const float *bd, uint32_t rows,
                    uint32_t d, uint32_t h, enum llep_act act, double *out) {
    double *g = malloc(h * sizeof(double)), *u = malloc(h * sizeof(double));
    /* Loops ordered so every weight matrix is read row by row (a 2880 x 2880 reference would
     * otherwise spend a minute in cache misses). */
    for (uint32_t r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d;
        double *y = out + (size_t)r * d;
        for (uint32_t j = 0; j < h; j++) {
            g[j] = bg ? bg[j] : 0;
            u[j] = bu ? bu[j] : 0;
        }
        for (uint32_t i = 0; i < d; i++) {
            const float *wgr = wg + (size_t)i * h, *wur = wu + (size_t)i * h;
            for (uint32_t j = 0; j < h; j++) {
                g[j] += (double)xr[i] * wgr[j];
                u[j] += (double)xr[i] * wur[j];
            }
        }
        for (uint32_t j = 0; j < h; j++) {
            if (act == LLEP_ACT_SWIGLU) {
                g[j] = g[j] / (1 + exp(-g[j])) * u[j];
            } else {
                double lim = LLEP_ACT_DEFAULT_LIMIT, al = LLEP_ACT_DEFAULT_ALPHA;
                double gc = g[j] < lim ? g[j] : lim;
                double uc = u[j] < -lim ? -lim : (u[j] > lim ? lim : u[j]);
                g[j] = (uc + 1) * gc / (1 + exp(-al * gc));
            }
        }
        for (uint32_t i = 0; i < d; i++)
            y[i] = bd ? bd[i] : 0;
        for (uint32_t j = 0; j < h; j++) {
            const float *wdr = wd + (size_t)j * d;
            for (uint32_t i = 0; i < d; i++)
                y[i] += g[j] * wdr[i];
        }
    }
    free(g);
    free(u);
}

/* Rounds v to the storage type in place and writes the stored form to dst. */
static void to_storage(float *v, void *dst, size_t n, enum llep_dtype t) {
    store(dst, v, n, t);
    if (t == LLEP_DTYPE_BF16)
        llep__bf16_to_f32_n(v, dst, n);
}

static void test_chunk(llep_backend *be, uint32_t rows, uint32_t d, uint32_t h,
                       enum llep_dtype t, enum llep_act act, int biases) {
    const llep_backend_ops *ops = be->ops;
    size_t esz = llep__dtype_size(t), dh = (size_t)d * h;
    float *wg = malloc(dh * 4), *wu = malloc(dh * 4), *wd = malloc(dh * 4);
    float *x = malloc((size_t)rows * d * 4), *bg = malloc(h * 4), *bu = malloc(h * 4);
    float *bd = malloc(d * 4);
    /* One expert block as the engine lays it out: gate, up, down, biases, 64-aligned. */
    size_t off_up = (dh * esz + 63) & ~(size_t)63, off_down = 2 * off_up;
    size_t off_bg = 3 * off_up, off_bu = off_bg + ((h * esz + 63) & ~(size_t)63);
    size_t off_bd = off_bu + ((h * esz + 63) & ~(size_t)63);
    size_t blk_bytes = off_bd + d * esz;
    char *blk = calloc(1, blk_bytes);
    void *xs = malloc((size_t)rows * d * esz);
    for (size_t i = 0; i < dh; i++) {
        wg[i] = rng_sym(&rng_state) / sqrtf((float)d);
        wu[i] = rng_sym(&rng_state) / sqrtf((float)d);
        wd[i] = rng_sym(&rng_state) / sqrtf((float)h);
    }
    for (size_t i = 0; i < (size_t)rows * d; i++)
        x[i] = rng_sym(&rng_state) * 2;
    for (uint32_t j = 0; j < h; j++) {
        bg[j] = rng_sym(&rng_state) * 0.5f;
        bu[j] = rng_sym(&rng_state) * 0.5f;
    }
    for (uint32_t i = 0; i < d; i++)
        bd[i] = rng_sym(&rng_state) * 0.5f;
    to_storage(wg, blk, dh, t);
    to_storage(wu, blk + off_up, dh, t);
    to_storage(wd, blk + off_down, dh, t);
    to_storage(bg, blk + off_bg, h, t);
    to_storage(bu, blk + off_bu, h, t);
    to_storage(bd, blk + off_bd, d, t);
    to_storage(x, xs, (size_t)rows * d, t);

    llep_ffn_shape shape = { d, h, t, act, LLEP_ACT_DEFAULT_ALPHA, LLEP_ACT_DEFAULT_LIMIT };
    size_t sbytes = llep__ffn_scratch_bytes(&shape, rows);
    void *dblk, *dx, *dy, *dscratch;
    if (ops->alloc(be, 0, blk_bytes, &dblk) || ops->alloc(be, 0, (size_t)rows * d * esz, &dx) ||
        ops->alloc(be, 0, (size_t)rows * d * 4, &dy) || ops->alloc(be, 0, sbytes, &dscratch)) {
        fail("chunk: device memory");
        return;
    }
    ops->copy(be, 0, dblk, blk, blk_bytes);
    ops->copy(be, 0, dx, xs, (size_t)rows * d * esz);
    const char *b = dblk;
    llep_expert_chunk c = {
        .shape = shape, .rows = rows, .w_gate = b, .w_up = b + off_up, .w_down = b + off_down,
        .b_gate = biases ? b + off_bg : NULL, .b_up = biases ? b + off_bu : NULL,
        .b_down = biases ? b + off_bd : NULL, .x = dx, .y = dy, .scratch = dscratch,
    };
    int r = ops->run_chunk(be, 0, &c);
    if (r == 0)
        r = ops->sync(be);
    if (r != 0)
        fail("chunk: backend error %d", r);
    float *got = host_back(dy, (size_t)rows * d * 4);

    /* The CPU twin on the same stored values. */
    float *cpu = malloc((size_t)rows * d * 4);
    void *cscratch = aligned_alloc(64, (sbytes + 63) & ~(size_t)63);
    llep_expert_chunk cc = c;
    cc.w_gate = blk;
    cc.w_up = blk + off_up;
    cc.w_down = blk + off_down;
    cc.b_gate = biases ? blk + off_bg : NULL;
    cc.b_up = biases ? blk + off_bu : NULL;
    cc.b_down = biases ? blk + off_bd : NULL;
    cc.x = xs;
    cc.y = cpu;
    cc.scratch = cscratch;
    llep__k_expert_ffn(&cc);

    double *ref = malloc((size_t)rows * d * sizeof(double));
    ffn_ref(x, wg, wu, wd, biases ? bg : NULL, biases ? bu : NULL, biases ? bd : NULL, rows, d,
            h, act, ref);
    double e_gpu = rel_l2(got, ref, (size_t)rows * d);
    double e_cpu = rel_l2(cpu, ref, (size_t)rows * d);
    double tol = t == LLEP_DTYPE_BF16 ? 1e-2 : 1e-5;
    int finite = 1;
    for (size_t i = 0; i < (size_t)rows * d; i++)
        finite &= isfinite(got[i]) != 0;
    if (!finite || !(e_gpu <= tol))
        fail("chunk rows=%u D=%u H=%u %s act=%d biases=%d: relative L2 error %.3g > %.0e "
             "(CPU twin %.3g)", rows, d, h, t ? "bf16" : "f32", act, biases, e_gpu, tol, e_cpu);
    printf("chunk     rows=%-5u D=%-4u H=%-4u %-4s %-10s bias=%d  rel L2 GPU %.2e, CPU twin "
           "%.2e (tol %.0e) ok\n", rows, d, h, t ? "bf16" : "f32",
           act == LLEP_ACT_SWIGLU ? "swiglu" : "swiglu_oai", biases, e_gpu, e_cpu, tol);
    if (json)
        fprintf(json, "  {\"check\": \"chunk\", \"rows\": %u, \"d\": %u, \"h\": %u, \"dtype\": "
                "\"%s\", \"act\": %d, \"biases\": %d, \"rel_l2_gpu\": %.3e, \"rel_l2_cpu\": "
                "%.3e},\n", rows, d, h, t ? "bf16" : "f32", act, biases, e_gpu, e_cpu);
    ops->free(be, 0, dblk);
    ops->free(be, 0, dx);
    ops->free(be, 0, dy);
    ops->free(be, 0, dscratch);
    free(wg);
    free(wu);
    free(wd);
    free(x);
    free(bg);
    free(bu);
    free(bd);
    free(blk);
    free(xs);
    free(got);
    free(cpu);
    free(cscratch);
    free(ref);
}

/* ---- GEMM rate: expert chunks against one large GEMM of the same total size ---- */

static double seconds_between(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return ms / 1e3;
}

/* bf16, gpt-oss-120b's D = H = 2880: `experts` chunks of `rows` rows each through the
 * backend (busy time from its events) against three cublasGemmEx calls of experts x rows
 * rows (the gate, up and down projections of one expert on all rows at once). */
static void gemm_rate(llep_backend *be, uint32_t experts, uint32_t rows) {
    const llep_backend_ops *ops = be->ops;
    uint32_t d = 2880, h = 2880;
    size_t dh = (size_t)d * h, total = (size_t)experts * rows;
    size_t blk = 3 * ((dh * 2 + 63) & ~(size_t)63);
    llep_ffn_shape shape = { d, h, LLEP_DTYPE_BF16, LLEP_ACT_SWIGLU_OAI, LLEP_ACT_DEFAULT_ALPHA,
                             LLEP_ACT_DEFAULT_LIMIT };
    size_t sbytes = llep__ffn_scratch_bytes(&shape, rows);
    void *w, *x, *y, *scratch, *g;
    if (ops->alloc(be, 0, experts * blk, &w) || ops->alloc(be, 0, total * d * 2, &x) ||
        ops->alloc(be, 0, total * d * 4, &y) || ops->alloc(be, 0, sbytes, &scratch) ||
        ops->alloc(be, 0, total * h * 4, &g)) {
        fail("gemm rate: device memory for %u x %u rows", experts, rows);
        return;
    }
    /* Small values in every byte pattern are fine for timing; zeros would be too easy. */
    CUDA_OK(cudaMemset(w, 0x3c, experts * blk));
    CUDA_OK(cudaMemset(x, 0x3c, total * d * 2));
    CUDA_OK(cudaDeviceSynchronize());

    double flops = 6.0 * (double)total * d * h, best_chunks = 1e30, best_one = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        uint64_t b0 = ops->busy_ns(be, 0);
        for (uint32_t e = 0; e < experts; e++) {
            const char *wb = (const char *)w + e * blk;
            llep_expert_chunk c = {
                .shape = shape, .rows = rows, .w_gate = wb, .w_up = wb + blk / 3,
                .w_down = wb + 2 * blk / 3, .x = (const char *)x + (size_t)e * rows * d * 2,
                .y = (float *)y + (size_t)e * rows * d, .scratch = scratch,
            };
            ops->run_chunk(be, 0, &c);
        }
        if (ops->sync(be) != 0)
            fail("gemm rate: backend error");
        double s = (double)(ops->busy_ns(be, 0) - b0) / 1e9;
        best_chunks = s < best_chunks ? s : best_chunks;
    }
    cublasHandle_t hdl;
    cudaEvent_t e0, e1;
    cublasCreate(&hdl);
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    const float one = 1, zero = 0;
    for (int rep = 0; rep < 3; rep++) {
        cudaEventRecord(e0, 0);
        for (int i = 0; i < 2; i++)
            cublasGemmEx(hdl, CUBLAS_OP_N, CUBLAS_OP_N, (int)h, (int)total, (int)d, &one, w,
                         CUDA_R_16BF, (int)h, x, CUDA_R_16BF, (int)d, &zero, g, CUDA_R_32F,
                         (int)h, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        /* The down projection reads bf16 activations: reuse x as their stand-in. */
        cublasGemmEx(hdl, CUBLAS_OP_N, CUBLAS_OP_N, (int)d, (int)total, (int)h, &one, w,
                     CUDA_R_16BF, (int)d, x, CUDA_R_16BF, (int)h, &zero, y, CUDA_R_32F, (int)d,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        double s = seconds_between(e0, e1);
        best_one = s < best_one ? s : best_one;
    }
    double rc = flops / best_chunks / 1e12, r1 = flops / best_one / 1e12, ratio = rc / r1;
    printf("gemm rate %u experts x %u rows, bf16 D=H=2880: chunks %.1f TFLOP/s, one GEMM %.1f "
           "TFLOP/s, ratio %.2f (target >= 0.70) %s\n", experts, rows, rc, r1, ratio,
           ratio >= 0.70 ? "MET" : "MISSED");
    if (json)
        fprintf(json, "  {\"check\": \"gemm_rate\", \"experts\": %u, \"rows\": %u, "
                "\"chunks_tflops\": %.2f, \"one_gemm_tflops\": %.2f, \"ratio\": %.3f},\n",
                experts, rows, rc, r1, ratio);
    cublasDestroy(hdl);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    ops->free(be, 0, w);
    ops->free(be, 0, x);
    ops->free(be, 0, y);
    ops->free(be, 0, scratch);
    ops->free(be, 0, g);
}

int main(int argc, char **argv) {
    int rate = 1, n = 0;

    for (int i = 1; i < argc; i++)
        self_test |= strcmp(argv[i], "--self-test-cpu") == 0;
    cudaError_t probe = self_test ? cudaSuccess : cudaGetDeviceCount(&n);
    if (!self_test && (probe != cudaSuccess || n == 0)) {
        printf("SKIP: no GPU visible (%s)\n",
               probe != cudaSuccess ? cudaGetErrorString(probe) : "no device");
        return 77;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--self-test-cpu") == 0) {
            continue;
        } else if (strcmp(argv[i], "--no-rate") == 0) {
            rate = 0;
        } else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
            json = fopen(argv[++i], "w");
            if (!json) {
                perror(argv[i]);
                return 1;
            }
            fputs("[\n", json);
        } else {
            fprintf(stderr, "usage: test-gpu-kernels [--no-rate] [--json FILE] "
                    "[--self-test-cpu]\n");
            return 2;
        }
    }
    if (self_test) {
        printf("self-test: chunk checks only, the CPU backend stands in for CUDA\n");
        goto chunks;
    }
    CUDA_OK(cudaSetDevice(0));

    test_count(8, 1000);
    test_count(128, 1u << 20);
    test_count(10000, 300000);
    test_gather(5760, 1000, 5000);
    test_gather(11520, 300, 777);
    test_gather(12, 100, 1000);
    test_gather(7, 100, 1000);
    for (int act = 0; act < 2; act++)
        for (int bt = 0; bt < 2; bt++)
            for (int ot = 0; ot < 2; ot++)
                test_bias_act((enum llep_act)act, (enum llep_dtype)bt, (enum llep_dtype)ot,
                              1);
    test_bias_act(LLEP_ACT_SWIGLU_OAI, LLEP_DTYPE_F32, LLEP_DTYPE_F32, 0);
    test_add_bias(LLEP_DTYPE_F32);
    test_add_bias(LLEP_DTYPE_BF16);
    test_combine(LLEP_DTYPE_F32);
    test_combine(LLEP_DTYPE_BF16);
    test_convert();

chunks:;
    const llep_backend_ops *ops = self_test ? &llep__backend_cpu : &llep__backend_cuda;
    llep_backend_options opt = { .num_devices = 1, .devices = "cuda:0x1" };
    llep_backend *be = NULL;
    int r = ops->create(&opt, &be);
    if (r < 0) {
        fail("CUDA backend: create failed (%d)", r);
        return 1;
    }
    static const uint32_t rows[] = { 1, 255, 256, 300, 600 };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        for (int t = 0; t < 2; t++)
            test_chunk(be, rows[i], 256, 384, (enum llep_dtype)t,
                       i % 2 ? LLEP_ACT_SWIGLU : LLEP_ACT_SWIGLU_OAI, i != 1);
    test_chunk(be, 200, 2880, 2880, LLEP_DTYPE_BF16, LLEP_ACT_SWIGLU_OAI, 1);
    test_chunk(be, 64, 2880, 2880, LLEP_DTYPE_F32, LLEP_ACT_SWIGLU_OAI, 1);
    if (rate && !self_test) {
        gemm_rate(be, 16, 4096);
        gemm_rate(be, 128, 1024);
    }
    ops->destroy(be);
    if (json) {
        fprintf(json, "  {\"check\": \"summary\", \"failures\": %d}\n]\n", failures);
        fclose(json);
    }
    return finish();
}
