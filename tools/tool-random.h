/* Seeded random inputs for the demo and benchmark tools: the same seed gives the same weights
 * and routing on every run, so figures can be compared between runs. */
#ifndef LLEP_TOOL_RANDOM_H
#define LLEP_TOOL_RANDOM_H

#include <stdint.h>
#include <stdlib.h>

/* A 64-bit LCG; the top 53 bits make a uniform double. */
static inline float llep__tool_frand(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* n floats uniform in [-scale, scale); NULL when out of memory. */
static inline float *llep__tool_rand_vec(uint64_t *state, size_t n, float scale) {
    float *v = malloc(n * sizeof(*v));
    for (size_t i = 0; v && i < n; i++)
        v[i] = llep__tool_frand(state) * scale;
    return v;
}

#endif
