/* CPU twins of the per-step MoE kernels (see moe-cpu.h). */
#include "moe-cpu.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>

void llep__bf16_to_f32_n(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = llep_bf16_to_f32(src[i]);
}

void llep__f32_to_bf16_n(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = llep_f32_to_bf16(src[i]);
}

int llep__k_count_loads(const int32_t *idx, size_t n, uint32_t num_experts, uint64_t *loads) {
    for (size_t i = 0; i < n; i++) {
        int32_t e = idx[i];
        if (e < 0 || (uint32_t)e >= num_experts)
            return -EINVAL;
        loads[e]++;
    }
    return 0;
}

void llep__k_gather_rows(void *dst, const void *const *src, size_t n, size_t row_bytes) {
    char *d = dst;

    for (size_t i = 0; i < n; i++, d += row_bytes)
        memcpy(d, src[i], row_bytes);
}

/* Scratch sections are padded to 64 bytes so every GEMM operand starts on a cache line. */
static size_t floats_padded(size_t n) {
    return (n + 15) & ~(size_t)15;
}

typedef struct ffn_scratch {
    float *g, *u;          /* [R][H] */
    float *x;              /* [R][D], bf16 only */
    float *w;              /* [KBLOCK][max(D, H)], bf16 only */
    float *b_gate, *b_up;  /* [H], bf16 only */
    float *b_down;         /* [D], bf16 only */
} ffn_scratch;

static size_t tile_rows(uint32_t max_rows) {
    return max_rows < LLEP_FFN_TILE_ROWS ? max_rows : LLEP_FFN_TILE_ROWS;
}

/* Lays out the scratch (when base is not NULL) and returns its size in floats. */
static size_t scratch_layout(const llep_ffn_shape *s, uint32_t max_rows, float *base,
                             ffn_scratch *ret) {
    size_t r = tile_rows(max_rows), d = s->hidden, h = s->inter, off = 0;
    float *sections[7] = { NULL };
    size_t sizes[7] = { r * h, r * h, 0, 0, 0, 0, 0 };

    if (r == 0)
        return 0;
    if (s->dtype == LLEP_DTYPE_BF16) {
        sizes[2] = r * d;
        sizes[3] = (size_t)LLEP_FFN_BF16_KBLOCK * (d > h ? d : h);
        sizes[4] = h;
        sizes[5] = h;
        sizes[6] = d;
    }
    for (int i = 0; i < 7; i++) {
        sections[i] = base && sizes[i] ? base + off : NULL;
        off += floats_padded(sizes[i]);
    }
    if (ret)
        *ret = (ffn_scratch){ sections[0], sections[1], sections[2], sections[3],
                              sections[4], sections[5], sections[6] };
    return off;
}

size_t llep__ffn_scratch_bytes(const llep_ffn_shape *s, uint32_t max_rows) {
    return scratch_layout(s, max_rows, NULL, NULL) * sizeof(float);
}

/* 1 / (1 + exp(-x)). For x below about -88, exp(-x) is infinite and the result is exactly 0,
 * never NaN. (A branch-free polynomial exp that the compiler vectorises was measured no
 * faster than glibc's expf on this machine, so the simpler and more exact one stays.) */
static inline float sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

void llep__k_activate(float *restrict g, const float *restrict u, size_t n, enum llep_act act,
                      float alpha, float limit) {
    if (act == LLEP_ACT_SWIGLU) {
        for (size_t i = 0; i < n; i++)
            g[i] = g[i] * sigmoid(g[i]) * u[i];
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float gc = g[i] < limit ? g[i] : limit;
        float uc = u[i] < -limit ? -limit : (u[i] > limit ? limit : u[i]);
        g[i] = (uc + 1.0f) * gc * sigmoid(alpha * gc);
    }
}

/* Sets each of the rows x cols of c (leading dimension cols) to bias, or leaves it when there
 * is no bias. Returns the beta the first GEMM into c must use. */
static float init_rows(float *c, size_t rows, size_t cols, const float *bias) {
    if (!bias)
        return 0.0f;
    for (size_t i = 0; i < rows; i++)
        memcpy(c + i * cols, bias, cols * sizeof(float));
    return 1.0f;
}

/* c[m][n] (+)= a[m][k] (leading dimension lda) * w[k][n], w in storage type `dtype`. bf16
 * weights are converted LLEP_FFN_BF16_KBLOCK rows at a time into wbuf, so no whole tensor is
 * ever held in float32; each K-block accumulates into c. */
static void gemm_w(size_t m, size_t n, size_t k, const float *a, size_t lda, const void *w,
                   enum llep_dtype dtype, float beta, float *c, float *wbuf) {
    if (dtype == LLEP_DTYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a,
                    (int)lda, w, (int)n, beta, c, (int)n);
        return;
    }
    const uint16_t *wb = w;
    for (size_t k0 = 0; k0 < k; k0 += LLEP_FFN_BF16_KBLOCK) {
        size_t kb = k - k0 < LLEP_FFN_BF16_KBLOCK ? k - k0 : LLEP_FFN_BF16_KBLOCK;
        llep__bf16_to_f32_n(wbuf, wb + k0 * n, kb * n);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)kb, 1.0f,
                    a + k0, (int)lda, wbuf, (int)n, k0 == 0 ? beta : 1.0f, c, (int)n);
    }
}

/* Float32 view of an optional bias: the stored one for f32, a converted copy for bf16. */
static const float *bias_f32(const void *b, size_t n, enum llep_dtype dtype, float *buf) {
    if (!b)
        return NULL;
    if (dtype == LLEP_DTYPE_F32)
        return b;
    llep__bf16_to_f32_n(buf, b, n);
    return buf;
}

void llep__k_expert_ffn(const llep_expert_chunk *c) {
    const llep_ffn_shape *s = &c->shape;
    size_t d = s->hidden, h = s->inter, esz = llep__dtype_size(s->dtype);
    ffn_scratch sc;

    if (c->rows == 0)
        return;
    scratch_layout(s, c->rows, c->scratch, &sc);
    const float *bg = bias_f32(c->b_gate, h, s->dtype, sc.b_gate);
    const float *bu = bias_f32(c->b_up, h, s->dtype, sc.b_up);
    const float *bd = bias_f32(c->b_down, d, s->dtype, sc.b_down);

    for (size_t r0 = 0; r0 < c->rows; r0 += LLEP_FFN_TILE_ROWS) {
        size_t m = c->rows - r0 < LLEP_FFN_TILE_ROWS ? c->rows - r0 : LLEP_FFN_TILE_ROWS;
        const char *xin = (const char *)c->x + r0 * d * esz;
        const float *x;
        if (s->dtype == LLEP_DTYPE_F32) {
            x = (const float *)xin;
        } else {
            llep__bf16_to_f32_n(sc.x, (const uint16_t *)xin, m * d);
            x = sc.x;
        }
        float beta = init_rows(sc.g, m, h, bg);
        gemm_w(m, h, d, x, d, c->w_gate, s->dtype, beta, sc.g, sc.w);
        beta = init_rows(sc.u, m, h, bu);
        gemm_w(m, h, d, x, d, c->w_up, s->dtype, beta, sc.u, sc.w);
        llep__k_activate(sc.g, sc.u, m * h, s->act, s->act_alpha, s->act_limit);
        float *y = c->y + r0 * d;
        beta = init_rows(y, m, d, bd);
        gemm_w(m, d, h, sc.g, h, c->w_down, s->dtype, beta, y, sc.w);
    }
}

/* Columns summed per pass for bf16 outputs, so the accumulator fits on the stack. */
#define COMBINE_COLS 256u

void llep__k_combine(const llep_combine *c) {
    size_t d = c->hidden, k = c->top_k;

    for (size_t t = 0; t < c->tokens; t++) {
        const float *w = c->topk_w + t * k;
        const float *const *src = c->src + t * k;
        if (c->dtype == LLEP_DTYPE_F32) {
            float *y = (float *)c->y + t * d;
            for (size_t j = 0; j < d; j++)
                y[j] = 0.0f;
            for (size_t i = 0; i < k; i++)
                for (size_t j = 0; j < d; j++)
                    y[j] += w[i] * src[i][j];
            continue;
        }
        uint16_t *y = (uint16_t *)c->y + t * d;
        for (size_t j0 = 0; j0 < d; j0 += COMBINE_COLS) {
            size_t n = d - j0 < COMBINE_COLS ? d - j0 : COMBINE_COLS;
            float acc[COMBINE_COLS];
            for (size_t j = 0; j < n; j++)
                acc[j] = 0.0f;
            for (size_t i = 0; i < k; i++)
                for (size_t j = 0; j < n; j++)
                    acc[j] += w[i] * src[i][j0 + j];
            llep__f32_to_bf16_n(y + j0, acc, n);
        }
    }
}
