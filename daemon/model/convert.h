/* Element conversions a checkpoint needs beyond core's layout.h (f32 and bf16): IEEE half to
 * float32, and the MXFP4 blocks of gpt-oss to float32. Both are exact. Sources are read byte
 * by byte (little-endian), so they may lie at any address of a mapped file. */
#ifndef LLEP_MODEL_CONVERT_H
#define LLEP_MODEL_CONVERT_H

#include <stddef.h>
#include <stdint.h>

/* n little-endian f16 values at src to float32 (every f16 is a float32: subnormals, signed
 * zeros, infinities and NaN payloads are kept). */
void llep__f16_to_f32(float *dst, const uint8_t *src, size_t n);

/* The E8M0 scale that the MX format reserves for NaN. */
#define LLEP_MXFP4_NAN_SCALE 255u

/* Dequantises rows x groups MX blocks of 32 FP4 (E2M1) values as transformers'
 * convert_moe_packed_tensors does: blocks [rows][groups][16] bytes, each byte two values, the
 * low nibble first; scales [rows][groups] E8M0 exponents, the value times 2^(scale - 127).
 * Writes dst [rows][groups * 32]. Returns 0, or -EDOM with the flat index of the first NaN
 * scale (255) in *ret_bad. */
int llep__mxfp4_to_f32(float *dst, const uint8_t *blocks, const uint8_t *scales, size_t rows,
                       size_t groups, size_t *ret_bad);

#endif
