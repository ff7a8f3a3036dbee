/* 64-bit FNV-1a for the hashes nodes compare (plan.h: llep__plan_hash, cost.h:
 * llep__cost_hash): every integer is fed as 8 little-endian bytes, so the hash does not depend
 * on the host's byte order or on struct padding. */
#ifndef LLEP_FNV_H
#define LLEP_FNV_H

#include <stdint.h>

#define LLEP_FNV_OFFSET UINT64_C(0xcbf29ce484222325)
#define LLEP_FNV_PRIME UINT64_C(0x100000001b3)

static inline uint64_t llep__fnv_u64(uint64_t h, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        h ^= (v >> (8 * i)) & 0xff;
        h *= LLEP_FNV_PRIME;
    }
    return h;
}

#endif
