/* Deterministic test data for the engine suites: splitmix64 numbers and values stored in a
 * layer's dtype next to their float64 value (what the reference computes with). */
#ifndef LLEP_TEST_DATA_H
#define LLEP_TEST_DATA_H

#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#include "moe-cpu.h"

static inline uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint32_t rng_below(uint64_t *s, uint32_t n) {
    return (uint32_t)(rng_next(s) % n);
}

static inline double rng_unit(uint64_t *s) { /* [0, 1) */
    return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

/* A value rounded to the storage type, written at position i of the storage array. */
static inline double store(void *dst, size_t i, double v, enum llep_dtype t) {
    if (t == LLEP_DTYPE_F32) {
        ((float *)dst)[i] = (float)v;
        return (float)v;
    }
    uint16_t b = llep__f32_to_bf16((float)v);
    ((uint16_t *)dst)[i] = b;
    return llep__bf16_to_f32(b);
}

static inline double load(const void *src, size_t i, enum llep_dtype t) {
    return t == LLEP_DTYPE_F32 ? ((const float *)src)[i]
                               : llep__bf16_to_f32(((const uint16_t *)src)[i]);
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

#endif
