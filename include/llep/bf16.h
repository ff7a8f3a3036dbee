/* bfloat16 as llep stores it: the top 16 bits of an IEEE float32, passed as raw uint16_t words
 * (C has no bf16 type). The one definition of the conversions: the client library, the
 * daemon's layout conversions and the CPU kernels all use these, so a value converted anywhere
 * in llep rounds the same way. */
#ifndef LLEP_BF16_H
#define LLEP_BF16_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exact: every bf16 value is a float32. */
static inline float llep_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;

    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Round to nearest even; NaN stays NaN (made quiet), infinities stay infinite, finite values
 * beyond bf16's range round to infinity as IEEE rounding does. */
static inline uint16_t llep_f32_to_bf16(float f) {
    uint32_t u;

    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#ifdef __cplusplus
}
#endif

#endif
