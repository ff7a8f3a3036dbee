/* One MoE layer's weights in llep's layout (model.h): each expert's matrix of each source
 * tensor is brought to f32 or bf16 where it is not already (f16, MXFP4, or an address the
 * file left unaligned), then gathered into place by core's layout primitives. */
#include "model-internal.h"

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "errbuf.h"
#include "layout.h"

/* Elements of one expert's slice of each output: [D][H], [D][H], [H][D], [H], [H], [D]. */
static size_t out_elems(const llep_model_config *info, enum llep_out o) {
    size_t d = info->hidden, h = info->inter;

    switch (o) {
    case LLEP_OUT_W_GATE:
    case LLEP_OUT_W_UP:
    case LLEP_OUT_W_DOWN:
        return d * h;
    case LLEP_OUT_B_GATE:
    case LLEP_OUT_B_UP:
        return h;
    default:
        return d;
    }
}

/* The one allocation of all outputs, its bytes overflow-checked. */
static int alloc_outputs(const llep_model_config *info, void *out[LLEP_OUT_COUNT], char *err,
                         size_t errlen) {
    size_t es = llep__layout_dtype_size(info->dtype), total = 0, at[LLEP_OUT_COUNT];
    unsigned count = info->bias ? LLEP_OUT_COUNT : LLEP_OUT_B_GATE;
    char *block;

    for (unsigned o = 0; o < count; o++) {
        size_t bytes;

        at[o] = total;
        if (__builtin_mul_overflow(out_elems(info, o), (size_t)info->num_experts, &bytes) ||
            __builtin_mul_overflow(bytes, es, &bytes) ||
            __builtin_add_overflow(total, bytes, &total))
            return llep__errf(err, errlen, -EOVERFLOW,
                              "a layer of %u experts, hidden %u, inter %u does not fit in memory",
                              info->num_experts, info->hidden, info->inter);
    }
    block = malloc(total ? total : 1);
    if (!block)
        return llep__errf(err, errlen, -ENOMEM, "out of memory for a layer's %zu bytes", total);
    for (unsigned o = 0; o < LLEP_OUT_COUNT; o++)
        out[o] = o < count ? block + at[o] : NULL;
    return 0;
}

/* One expert's matrix of a source as f32 or bf16 at an aligned address: in place when the
 * file already has it so, else converted or copied into tmp. */
typedef struct matrix {
    const void *p;
    enum llep_dtype t;
} matrix;

static int mxfp4_matrix(const llep_model *m, const llep_src *src, uint32_t e, float *tmp,
                        const llep_st_tensor *blocks, char *err, size_t errlen) {
    const char *file = NULL;
    const llep_st_tensor *scales = llep__ckpt_find(m->ckpt, src->scales, &file);
    size_t rows = src->shape[1], groups = src->shape[2], bad;
    const uint8_t *b = (const uint8_t *)blocks->data + (size_t)e * rows * groups * 16;
    const uint8_t *s = (const uint8_t *)scales->data + (size_t)e * rows * groups;

    if (llep__mxfp4_to_f32(tmp, b, s, rows, groups, &bad) < 0)
        return llep__errf(err, errlen, -EDOM,
                          "%s: tensor '%s': expert %u, row %zu, block %zu has scale 255, "
                          "which the MX format reserves for NaN", file, src->scales, e,
                          bad / groups, bad % groups);
    return 0;
}

static int expert_matrix(const llep_model *m, const llep_src *src, uint32_t e, void *tmp,
                         matrix *ret, char *err, size_t errlen) {
    char name[LLEP_SRC_NAME_MAX];
    const llep_st_tensor *t;
    const uint8_t *p;
    size_t n = src->expert_elems, es;

    llep__src_name(src, e, name, sizeof(name));
    t = llep__ckpt_find(m->ckpt, name, NULL);   /* there: llep__model_open checked it */
    if (src->mxfp4) {
        *ret = (matrix){ tmp, LLEP_DTYPE_F32 };
        return mxfp4_matrix(m, src, e, tmp, t, err, errlen);
    }
    es = llep__st_dtype_size(t->dtype);
    p = (const uint8_t *)t->data + (src->per_expert ? 0 : (size_t)e * n * es);
    if (t->dtype == LLEP_ST_F16) {
        llep__f16_to_f32(tmp, p, n);
        *ret = (matrix){ tmp, LLEP_DTYPE_F32 };
        return 0;
    }
    *ret = (matrix){ p, t->dtype == LLEP_ST_BF16 ? LLEP_DTYPE_BF16 : LLEP_DTYPE_F32 };
    if ((uintptr_t)p % es != 0) {   /* the header's length put the data off alignment */
        memcpy(tmp, p, n * es);
        ret->p = tmp;
    }
    return 0;
}

static void gather(const llep_model_config *info, const llep_copy *c, uint32_t e,
                   const matrix *mat, const llep_src *src, void *out[LLEP_OUT_COUNT]) {
    size_t es = llep__layout_dtype_size(info->dtype), ms = llep__layout_dtype_size(mat->t);
    char *dst = (char *)out[c->out] + (size_t)e * out_elems(info, c->out) * es;

    /* The family's plans stay inside the expert's matrix; this would be a bug in one. */
    assert(c->rows * c->cols == out_elems(info, c->out));
    assert(c->offset + (c->rows - 1) * c->row_stride + (c->cols - 1) * c->col_stride <
           src->expert_elems);
    (void)src;
    llep__layout_gather(dst, info->dtype, (const char *)mat->p + c->offset * ms, mat->t,
                        c->rows, c->cols, c->row_stride, c->col_stride);
}

static int convert_src(const llep_model *m, const llep_layer_plan *plan, unsigned s, void *tmp,
                       void *out[LLEP_OUT_COUNT], char *err, size_t errlen) {
    for (uint32_t e = 0; e < m->info.num_experts; e++) {
        matrix mat;
        int r = expert_matrix(m, &plan->src[s], e, tmp, &mat, err, errlen);

        if (r < 0)
            return r;
        for (unsigned c = 0; c < plan->ncopy; c++)
            if (plan->copy[c].src == s)
                gather(&m->info, &plan->copy[c], e, &mat, &plan->src[s], out);
    }
    return 0;
}

/* Room for the largest expert matrix as f32: conversions and realigned copies go there. */
static void *alloc_tmp(const llep_layer_plan *plan) {
    size_t most = 1;

    for (unsigned s = 0; s < plan->nsrc; s++)
        if (plan->src[s].expert_elems > most)
            most = plan->src[s].expert_elems;
    return malloc(most * sizeof(float));
}

int llep__model_layer_weights(llep_model *m, uint32_t index, llep_model_weights *ret,
                              char *err, size_t errlen) {
    void *out[LLEP_OUT_COUNT], *tmp;
    llep_layer_plan plan;
    int r = 0;

    memset(ret, 0, sizeof(*ret));
    if (index >= m->info.num_moe_layers)
        return llep__errf(err, errlen, -ERANGE, "MoE layer %u: the model has %u", index,
                          m->info.num_moe_layers);
    r = llep__family_plan(&m->cfg, m->info.layer_of[index], m->storage[index], &plan, err,
                          errlen);
    if (r < 0)
        return r;
    r = alloc_outputs(&m->info, out, err, errlen);
    if (r < 0)
        return r;
    tmp = alloc_tmp(&plan);
    if (!tmp)
        r = llep__errf(err, errlen, -ENOMEM, "out of memory converting MoE layer %u", index);
    for (unsigned s = 0; r == 0 && s < plan.nsrc; s++)
        r = convert_src(m, &plan, s, tmp, out, err, errlen);
    free(tmp);
    if (r < 0) {
        free(out[LLEP_OUT_W_GATE]);
        return r;
    }
    *ret = (llep_model_weights){ m->info.dtype, out[0], out[1], out[2], out[3], out[4], out[5] };
    return 0;
}

void llep__model_weights_free(llep_model_weights *w) {
    free(w->w_gate);
    memset(w, 0, sizeof(*w));
}
