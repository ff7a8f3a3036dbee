/* A new layer's weights from the caller's layout into llep's own (gate_up_layout and
 * down_layout of llep_layer_desc, include/llep/client.h), while they are copied into the
 * arena: every source tensor is a sequence of experts, and each expert's matrix of llep's
 * layout is one strided gather of core's layout.c out of it. */
#include "client-internal.h"
#include "layout.h"

#include <stdbool.h>

/* An expert's matrix of `rows` x `cols` at `offset` elements into its slice of `expert`
 * elements: element [i][j] at offset + i * rs + j * cs. */
static llep_weight_src matrix(const void *src, size_t expert, size_t offset, size_t rows,
                              size_t cols, size_t rs, size_t cs) {
    return (llep_weight_src){ src, expert, offset, rows, cols, rs, cs };
}

/* A plain [rows][cols] matrix per expert. */
static llep_weight_src plain(const void *src, size_t rows, size_t cols) {
    return matrix(src, rows * cols, 0, rows, cols, cols, 1);
}

bool llep__gate_up_fused(enum llep_gate_up_layout g) {
    return g == LLEP_GATE_UP_FUSED || g == LLEP_GATE_UP_FUSED_T ||
           g == LLEP_GATE_UP_INTERLEAVED;
}

void llep__weight_sources(const llep_layer_desc *d, llep_weight_src ret[LLEP_WEIGHT_COUNT]) {
    size_t dd = d->hidden, h = d->inter;
    const void *gu = d->w_gate_up, *bgu = d->b_gate_up;

    switch (d->gate_up_layout) {
    case LLEP_GATE_UP_SEPARATE_T:       /* [H][D] each, transposed */
        ret[LLEP_W_GATE] = matrix(d->w_gate, dd * h, 0, dd, h, 1, dd);
        ret[LLEP_W_UP] = matrix(d->w_up, dd * h, 0, dd, h, 1, dd);
        break;
    case LLEP_GATE_UP_FUSED:            /* [D][2H]: gate columns, then up columns */
        ret[LLEP_W_GATE] = matrix(gu, 2 * dd * h, 0, dd, h, 2 * h, 1);
        ret[LLEP_W_UP] = matrix(gu, 2 * dd * h, h, dd, h, 2 * h, 1);
        break;
    case LLEP_GATE_UP_FUSED_T:          /* [2H][D]: gate rows, then up rows, transposed */
        ret[LLEP_W_GATE] = matrix(gu, 2 * dd * h, 0, dd, h, 1, dd);
        ret[LLEP_W_UP] = matrix(gu, 2 * dd * h, h * dd, dd, h, 1, dd);
        break;
    case LLEP_GATE_UP_INTERLEAVED:      /* [D][2H]: gate j at column 2j, up j at 2j + 1 */
        ret[LLEP_W_GATE] = matrix(gu, 2 * dd * h, 0, dd, h, 2 * h, 2);
        ret[LLEP_W_UP] = matrix(gu, 2 * dd * h, 1, dd, h, 2 * h, 2);
        break;
    default:                            /* SEPARATE: llep's own */
        ret[LLEP_W_GATE] = plain(d->w_gate, dd, h);
        ret[LLEP_W_UP] = plain(d->w_up, dd, h);
        break;
    }
    if (d->gate_up_layout == LLEP_GATE_UP_INTERLEAVED) {
        ret[LLEP_B_GATE] = matrix(bgu, 2 * h, 0, 1, h, 2 * h, 2);
        ret[LLEP_B_UP] = matrix(bgu, 2 * h, 1, 1, h, 2 * h, 2);
    } else if (llep__gate_up_fused(d->gate_up_layout)) {
        ret[LLEP_B_GATE] = matrix(bgu, 2 * h, 0, 1, h, 2 * h, 1);
        ret[LLEP_B_UP] = matrix(bgu, 2 * h, h, 1, h, 2 * h, 1);
    } else {
        ret[LLEP_B_GATE] = plain(d->b_gate, 1, h);
        ret[LLEP_B_UP] = plain(d->b_up, 1, h);
    }
    if (d->down_layout == LLEP_DOWN_DH)  /* [D][H], transposed */
        ret[LLEP_W_DOWN] = matrix(d->w_down, dd * h, 0, h, dd, 1, h);
    else
        ret[LLEP_W_DOWN] = plain(d->w_down, h, dd);
    ret[LLEP_B_DOWN] = plain(d->b_down, 1, dd);
}

void llep__weight_copy(void *dst, enum llep_dtype t, uint32_t n, const llep_weight_src *s) {
    size_t es = llep__layout_dtype_size(t), out = s->rows * s->cols * es;

    for (uint32_t e = 0; e < n; e++)
        llep__layout_gather((char *)dst + e * out, t,
                            (const char *)s->src + (e * s->expert + s->offset) * es, t,
                            s->rows, s->cols, s->row_stride, s->col_stride);
}
