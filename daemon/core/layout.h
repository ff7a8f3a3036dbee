/* Tensor layout and dtype conversion primitives: what turns a framework's weights and routing
 * into llep's canonical layout (DESIGN.md section 4) while they are copied anyway, into the
 * client's arena or out of a checkpoint.
 *
 * Everything here is plain C over libc: no allocation, no errors other than the range check
 * of indices, element types given as enum llep_dtype (bf16 as raw 16-bit words). */
#ifndef LLEP_LAYOUT_H
#define LLEP_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "llep/types.h"

/* Single values: llep_bf16_to_f32 and llep_f32_to_bf16 (llep/bf16.h). */

/* Bytes of one element: 4 (f32) or 2 (bf16). */
size_t llep__layout_dtype_size(enum llep_dtype t);

/* n contiguous elements from src (type st) to dst (type dt), converting when they differ.
 * dst and src must not overlap. */
void llep__layout_convert(void *dst, enum llep_dtype dt, const void *src, enum llep_dtype st,
                          size_t n);

/* Gathers a rows x cols matrix into contiguous row-major dst (type dt):
 *     dst[i][j] = src[i * row_stride + j * col_stride]      (strides in elements of st)
 * converting the type on the way. One primitive covers a copy (row_stride = cols,
 * col_stride = 1), a transpose of a [cols][rows] matrix (row_stride = 1, col_stride = rows),
 * and the de-interleave of every other column (col_stride = 2). Transposes go in tiles so
 * that both sides stay in cache. */
void llep__layout_gather(void *dst, enum llep_dtype dt, const void *src, enum llep_dtype st,
                         size_t rows, size_t cols, size_t row_stride, size_t col_stride);

/* n int64 expert ids to int32, each checked to lie in [0, limit). Returns 0, or -ERANGE with
 * the position of the first id outside in *ret_bad (dst is then partly written). */
int llep__layout_idx_from_i64(int32_t *dst, const int64_t *src, size_t n, int64_t limit,
                              size_t *ret_bad);

#endif
