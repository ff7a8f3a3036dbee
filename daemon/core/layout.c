/* Layout and dtype conversion primitives (layout.h). */
#include "layout.h"
#include "llep/bf16.h"

#include <errno.h>
#include <string.h>

/* Side of the square tiles a strided gather walks in: 32 x 32 four-byte elements are 4 KiB
 * of source and of destination, which stay in L1 while the tile is transposed. */
#define TILE 32u

size_t llep__layout_dtype_size(enum llep_dtype t) {
    return t == LLEP_DTYPE_BF16 ? 2 : 4;
}

static inline float same_f32(float v) {
    return v;
}

static inline uint16_t same_bf16(uint16_t v) {
    return v;
}

static inline size_t min_size(size_t a, size_t b) {
    return a < b ? a : b;
}

/* One gather per (destination, source) type pair, so that the conversion inlines into the
 * loop. Rows with unit column stride are walked whole; strided ones in tiles. */
#define DEFINE_GATHER(name, dst_t, src_t, conv)                                            \
    static void name(dst_t *dst, const src_t *src, size_t rows, size_t cols, size_t rs,    \
                     size_t cs) {                                                          \
        if (cs == 1) {                                                                     \
            for (size_t i = 0; i < rows; i++)                                              \
                for (size_t j = 0; j < cols; j++)                                          \
                    dst[i * cols + j] = conv(src[i * rs + j]);                             \
            return;                                                                        \
        }                                                                                  \
        for (size_t i0 = 0; i0 < rows; i0 += TILE) {                                       \
            size_t i1 = min_size(i0 + TILE, rows);                                         \
            for (size_t j0 = 0; j0 < cols; j0 += TILE) {                                   \
                size_t j1 = min_size(j0 + TILE, cols);                                     \
                for (size_t i = i0; i < i1; i++)                                           \
                    for (size_t j = j0; j < j1; j++)                                       \
                        dst[i * cols + j] = conv(src[i * rs + j * cs]);                    \
            }                                                                              \
        }                                                                                  \
    }

DEFINE_GATHER(gather_f32_f32, float, float, same_f32)
DEFINE_GATHER(gather_bf16_bf16, uint16_t, uint16_t, same_bf16)
DEFINE_GATHER(gather_f32_bf16, float, uint16_t, llep_bf16_to_f32)
DEFINE_GATHER(gather_bf16_f32, uint16_t, float, llep_f32_to_bf16)

void llep__layout_gather(void *dst, enum llep_dtype dt, const void *src, enum llep_dtype st,
                         size_t rows, size_t cols, size_t row_stride, size_t col_stride) {
    size_t es = llep__layout_dtype_size(dt);

    /* A plain copy, row by row: what most tensors are when their layout is already llep's. */
    if (dt == st && col_stride == 1) {
        for (size_t i = 0; i < rows; i++)
            memcpy((char *)dst + i * cols * es, (const char *)src + i * row_stride * es,
                   cols * es);
        return;
    }
    if (dt == LLEP_DTYPE_F32 && st == LLEP_DTYPE_F32)
        gather_f32_f32(dst, src, rows, cols, row_stride, col_stride);
    else if (dt == LLEP_DTYPE_BF16 && st == LLEP_DTYPE_BF16)
        gather_bf16_bf16(dst, src, rows, cols, row_stride, col_stride);
    else if (dt == LLEP_DTYPE_F32)
        gather_f32_bf16(dst, src, rows, cols, row_stride, col_stride);
    else
        gather_bf16_f32(dst, src, rows, cols, row_stride, col_stride);
}

void llep__layout_convert(void *dst, enum llep_dtype dt, const void *src, enum llep_dtype st,
                          size_t n) {
    llep__layout_gather(dst, dt, src, st, 1, n, n, 1);
}

int llep__layout_idx_from_i64(int32_t *dst, const int64_t *src, size_t n, int64_t limit,
                              size_t *ret_bad) {
    for (size_t i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= limit || src[i] > INT32_MAX) {
            if (ret_bad)
                *ret_bad = i;
            return -ERANGE;
        }
        dst[i] = (int32_t)src[i];
    }
    return 0;
}
