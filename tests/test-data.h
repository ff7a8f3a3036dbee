/* Deterministic test data for the engine suites: values stored in a layer's dtype next to their
 * float64 value (what the reference computes with), from splitmix64 numbers (fixtures.h), and
 * a layer's weights in both forms with the engine configuration and reference that use them. */
#ifndef LLEP_TEST_DATA_H
#define LLEP_TEST_DATA_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "fixtures.h"
#include "moe-cpu.h"
#include "ref-moe.h"

/* A value rounded to the storage type, written at position i of the storage array. */
static inline double store(void *dst, size_t i, double v, enum llep_dtype t) {
    if (t == LLEP_DTYPE_F32) {
        ((float *)dst)[i] = (float)v;
        return (float)v;
    }
    uint16_t b = llep_f32_to_bf16((float)v);
    ((uint16_t *)dst)[i] = b;
    return llep_bf16_to_f32(b);
}

static inline double load(const void *src, size_t i, enum llep_dtype t) {
    return t == LLEP_DTYPE_F32 ? ((const float *)src)[i]
                               : llep_bf16_to_f32(((const uint16_t *)src)[i]);
}

/* n values uniform in [-scale, scale): *ret_v as float64, *ret_s in storage type t. */
static inline void fill(uint64_t *rng, size_t n, double scale, enum llep_dtype t,
                        double **ret_v, void **ret_s) {
    double *v = malloc(n * sizeof(*v) + 1);
    void *s = malloc(n * llep__dtype_size(t) + 1);
    ck_assert(v && s);
    for (size_t i = 0; i < n; i++)
        v[i] = store(s, i, (2 * rng_unit(rng) - 1) * scale, t);
    *ret_v = v;
    *ret_s = s;
}

/* The tokens of P home devices, each array [P]: their counts, the inputs x [T][D] (float64,
 * and stored in the layer's dtype), the top-k routing (idx, w [T][K]), room for the outputs y
 * (stored) and the float64 reference of them. */
typedef struct test_tokens {
    uint32_t p;
    uint32_t *tokens;
    double **x;
    void **sx;
    int32_t **idx;
    float **w;
    void **y;
    double **ref;
} test_tokens;

static inline void tokens_new(test_tokens *t, uint32_t p) {
    t->p = p;
    t->tokens = calloc(p, sizeof(*t->tokens));
    t->x = calloc(p, sizeof(*t->x));
    t->sx = calloc(p, sizeof(*t->sx));
    t->idx = calloc(p, sizeof(*t->idx));
    t->w = calloc(p, sizeof(*t->w));
    t->y = calloc(p, sizeof(*t->y));
    t->ref = calloc(p, sizeof(*t->ref));
    ck_assert(t->tokens && t->x && t->sx && t->idx && t->w && t->y && t->ref);
}

/* Home device g's tokens, tk of them: x uniform within 2, for each of the k slots an expert
 * from route(arg, rng) and a weight in [0, 1). Its earlier tokens are freed. */
static inline void tokens_draw(test_tokens *t, uint32_t g, uint32_t tk, uint64_t *rng,
                               uint32_t k, uint32_t d, enum llep_dtype dt,
                               int32_t (*route)(void *arg, uint64_t *rng), void *arg) {
    free(t->x[g]);
    free(t->sx[g]);
    free(t->idx[g]);
    free(t->w[g]);
    free(t->y[g]);
    t->tokens[g] = tk;
    fill(rng, (size_t)tk * d, 2.0, dt, &t->x[g], &t->sx[g]);
    t->idx[g] = malloc(((size_t)tk * k + 1) * sizeof(int32_t));
    t->w[g] = malloc(((size_t)tk * k + 1) * sizeof(float));
    t->y[g] = malloc((size_t)tk * d * llep__dtype_size(dt) + 1);
    ck_assert(t->idx[g] && t->w[g] && t->y[g]);
    for (size_t i = 0; i < (size_t)tk * k; i++) {
        t->idx[g][i] = route(arg, rng);
        t->w[g][i] = (float)rng_unit(rng);
    }
}

/* The float64 reference (ref-moe.c) of every home device's tokens under r, top-k k. */
static inline void tokens_reference(test_tokens *t, const llep_ref *r, uint32_t k) {
    for (uint32_t g = 0; g < t->p; g++) {
        free(t->ref[g]);
        t->ref[g] = calloc((size_t)t->tokens[g] * r->d + 1, sizeof(double));
        ck_assert(t->ref[g]);
        llep_ref_moe(r, t->tokens[g], k, t->x[g], t->idx[g], t->w[g], t->ref[g]);
    }
}

/* Home device g's batch for the engine, its output into y. */
static inline llep_engine_batch tokens_batch(const test_tokens *t, uint32_t g, void *y) {
    return (llep_engine_batch){ t->tokens[g], t->sx[g], t->idx[g], t->w[g], y };
}

static inline void tokens_free(test_tokens *t) {
    for (uint32_t g = 0; g < t->p; g++) {
        free(t->x[g]);
        free(t->sx[g]);
        free(t->idx[g]);
        free(t->w[g]);
        free(t->y[g]);
        free(t->ref[g]);
    }
    free(t->tokens);
    free(t->x);
    free(t->sx);
    free(t->idx);
    free(t->w);
    free(t->y);
    free(t->ref);
}

/* Weights of n experts: w_gate and w_up [n][D][H] uniform within 1.5/sqrt(D), w_down [n][H][D]
 * within 1/sqrt(H), and with biases b_gate, b_up [n][H] and b_down [n][D] within 0.5 (NULL
 * without). As float64 values already rounded to the storage type, and stored. */
typedef struct test_weights {
    double *wg, *wu, *wd, *bg, *bu, *bd;
    void *swg, *swu, *swd, *sbg, *sbu, *sbd;
} test_weights;

static inline void weights_fill(test_weights *w, uint64_t *rng, size_t n, size_t d, size_t h,
                                enum llep_dtype t, int biases) {
    memset(w, 0, sizeof(*w));
    fill(rng, n * d * h, 1.5 / sqrt((double)d), t, &w->wg, &w->swg);
    fill(rng, n * d * h, 1.5 / sqrt((double)d), t, &w->wu, &w->swu);
    fill(rng, n * h * d, 1.0 / sqrt((double)h), t, &w->wd, &w->swd);
    if (biases) {
        fill(rng, n * h, 0.5, t, &w->bg, &w->sbg);
        fill(rng, n * h, 0.5, t, &w->bu, &w->sbu);
        fill(rng, n * d, 0.5, t, &w->bd, &w->sbd);
    }
}

static inline void weights_free(test_weights *w) {
    void *v[] = { w->wg, w->wu, w->wd, w->bg, w->bu, w->bd,
                  w->swg, w->swu, w->swd, w->sbg, w->sbu, w->sbd };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        free(v[i]);
}

/* The float64 reference (ref-moe.c) of these weights. */
static inline llep_ref weights_ref(const test_weights *w, uint32_t d, uint32_t h,
                                   enum llep_act act) {
    llep_ref r = { .d = d, .h = h, .act = act, .wg = w->wg, .wu = w->wu, .wd = w->wd,
                   .bg = w->bg, .bu = w->bu, .bd = w->bd };
    return r;
}

/* cfg (from llep__engine_config_default) for experts first .. first + n - 1 of these weights,
 * top-k k, on p devices. */
static inline void weights_config(const test_weights *w, llep_engine_config *cfg, uint32_t first,
                                  uint32_t n, uint32_t k, uint32_t d, uint32_t h,
                                  enum llep_dtype t, enum llep_act act, uint32_t p) {
    size_t es = llep__dtype_size(t), dh = (size_t)d * h * es, hb = h * es, db = d * es;

    cfg->num_experts = n;
    cfg->top_k = k;
    cfg->hidden = d;
    cfg->inter = h;
    cfg->dtype = t;
    cfg->act = act;
    cfg->w_gate = (const char *)w->swg + first * dh;
    cfg->w_up = (const char *)w->swu + first * dh;
    cfg->w_down = (const char *)w->swd + first * dh;
    if (w->sbg) {
        cfg->b_gate = (const char *)w->sbg + first * hb;
        cfg->b_up = (const char *)w->sbu + first * hb;
        cfg->b_down = (const char *)w->sbd + first * db;
    }
    cfg->num_devices = p;
}

#endif
