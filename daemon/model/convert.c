/* f16 and MXFP4 to float32 (convert.h). */
#include "convert.h"

#include <errno.h>
#include <math.h>
#include <string.h>

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t u;
    float f;

    if (exp == 0x1fu) {
        u = sign | 0x7f800000u | man << 13;                  /* infinity or NaN */
    } else if (exp == 0) {
        f = ldexpf((float)man, -24);                         /* zero or subnormal: man 2^-24 */
        return sign ? -f : f;
    } else {
        u = sign | (exp + (127u - 15u)) << 23 | man << 13;   /* rebias the exponent */
    }
    memcpy(&f, &u, sizeof(f));
    return f;
}

void llep__f16_to_f32(float *dst, const uint8_t *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = f16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
}

/* E2M1: sign, two exponent bits, one mantissa bit; the table transformers uses (FP4_VALUES). */
static const float fp4[16] = {
    +0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f,
};

int llep__mxfp4_to_f32(float *dst, const uint8_t *blocks, const uint8_t *scales, size_t rows,
                       size_t groups, size_t *ret_bad) {
    for (size_t i = 0; i < rows * groups; i++) {
        const uint8_t *b = blocks + 16 * i;
        float *out = dst + 32 * i;
        int e = (int)scales[i] - 127;

        if (scales[i] == LLEP_MXFP4_NAN_SCALE) {
            *ret_bad = i;
            return -EDOM;
        }
        /* ldexpf is exact here: two significant bits scaled by a power of two, which can
         * only overflow to infinity (as transformers' ldexp does) for scales near 254. */
        for (size_t k = 0; k < 16; k++) {
            out[2 * k] = ldexpf(fp4[b[k] & 0xfu], e);
            out[2 * k + 1] = ldexpf(fp4[b[k] >> 4], e);
        }
    }
    return 0;
}
