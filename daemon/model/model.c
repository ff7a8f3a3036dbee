/* Opening a model and checking its tensors against config.json (model.h). */
#include "model-internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"

#define SHAPE_TEXT 96u

static void shape_text(char *buf, size_t len, uint32_t ndim, const uint64_t *shape) {
    size_t at = (size_t)snprintf(buf, len, "[");

    for (uint32_t d = 0; d < ndim && at < len; d++)
        at += (size_t)snprintf(buf + at, len - at, "%s%llu", d ? ", " : "",
                               (unsigned long long)shape[d]);
    if (at < len)
        snprintf(buf + at, len - at, "]");
}

static bool same_shape(const llep_st_tensor *t, uint32_t ndim, const uint64_t *shape) {
    if (t->ndim != ndim)
        return false;
    for (uint32_t d = 0; d < ndim; d++)
        if (t->shape[d] != shape[d])
            return false;
    return true;
}

static int wrong_shape(const llep_model *m, const char *file, const llep_st_tensor *t,
                       uint32_t ndim, const uint64_t *shape, char *err, size_t errlen) {
    char want[SHAPE_TEXT], got[SHAPE_TEXT];

    shape_text(want, sizeof(want), ndim, shape);
    shape_text(got, sizeof(got), t->ndim, t->shape);
    return llep__errf(err, errlen, -EINVAL,
                      "%s: tensor '%s' has shape %s, expected %s (%s: %s %u, hidden_size %u, "
                      "%s %u)", file, t->name, got, want, llep__ckpt_config_path(m->ckpt),
                      m->cfg.experts_key, m->cfg.num_experts, m->cfg.hidden, m->cfg.inter_key,
                      m->cfg.inter);
}

/* A tensor that should be there: found, of an allowed dtype, of the expected shape. */
static int check_tensor(const llep_model *m, const char *name, bool packed, uint32_t ndim,
                        const uint64_t *shape, bool *all_bf16, char *err, size_t errlen) {
    const char *file;
    const llep_st_tensor *t = llep__ckpt_find(m->ckpt, name, &file);

    if (!t)
        return llep__ckpt_missing(m->ckpt, name, err, errlen);
    if (packed ? t->dtype != LLEP_ST_U8
               : t->dtype != LLEP_ST_F32 && t->dtype != LLEP_ST_F16 && t->dtype != LLEP_ST_BF16)
        return llep__errf(err, errlen, -EINVAL, "%s: tensor '%s' has dtype %s; %s", file, name,
                          llep__st_dtype_name(t->dtype),
                          packed ? "MXFP4 blocks and scales are U8"
                                 : "expert weights must be F32, F16 or BF16");
    if (!same_shape(t, ndim, shape))
        return wrong_shape(m, file, t, ndim, shape, err, errlen);
    if (!packed && t->dtype != LLEP_ST_BF16)
        *all_bf16 = false;
    return 0;
}

/* Expert 0 there but every one from e on missing: the checkpoint has fewer experts than
 * config.json says, which the message adds to the missing tensor's. */
static int fewer_experts(const llep_model *m, const llep_src *src, uint32_t e, char *err,
                         size_t errlen) {
    char missing[512], name[LLEP_SRC_NAME_MAX];

    for (uint32_t k = e + 1; k < m->cfg.num_experts; k++) {
        llep__src_name(src, k, name, sizeof(name));
        if (llep__ckpt_find(m->ckpt, name, NULL))
            return -ENOENT;   /* just this one missing */
    }
    if (!err || !errlen)
        return -ENOENT;
    snprintf(missing, sizeof(missing), "%s", err);
    return llep__errf(err, errlen, -ENOENT, "%s, but %s says %s is %u", missing,
                      llep__ckpt_config_path(m->ckpt), m->cfg.experts_key, m->cfg.num_experts);
}

/* Per-expert tensors for experts config.json does not have mean it names too few. */
static int check_no_extra(const llep_model *m, const llep_src *src, char *err, size_t errlen) {
    char name[LLEP_SRC_NAME_MAX];
    const char *file;

    llep__src_name(src, m->cfg.num_experts, name, sizeof(name));
    if (!llep__ckpt_find(m->ckpt, name, &file))
        return 0;
    return llep__errf(err, errlen, -EINVAL, "%s: tensor '%s' is there, but %s says %s is %u",
                      file, name, llep__ckpt_config_path(m->ckpt), m->cfg.experts_key,
                      m->cfg.num_experts);
}

static int check_src(const llep_model *m, const llep_src *src, bool *all_bf16, char *err,
                     size_t errlen) {
    char name[LLEP_SRC_NAME_MAX];
    uint32_t count = src->per_expert ? m->cfg.num_experts : 1;
    int r = 0;

    for (uint32_t e = 0; r == 0 && e < count; e++) {
        llep__src_name(src, e, name, sizeof(name));
        r = check_tensor(m, name, src->mxfp4, src->ndim, src->shape, all_bf16, err, errlen);
        if (r == -ENOENT && e > 0)
            r = fewer_experts(m, src, e, err, errlen);
    }
    if (r == 0 && src->mxfp4)
        r = check_tensor(m, src->scales, true, src->scales_ndim, src->scales_shape, all_bf16,
                         err, errlen);
    if (r == 0 && src->per_expert)
        r = check_no_extra(m, src, err, errlen);
    return r;
}

/* The first storage whose first tensor is there; the family's usual one when none is, so
 * that the message names the tensor people expect. */
static int find_plan(const llep_model *m, uint32_t layer, llep_layer_plan *plan, char *err,
                     size_t errlen) {
    const enum llep_storage *list;
    size_t n = llep__family_storages(&m->cfg, &list);
    char name[LLEP_SRC_NAME_MAX], why[256];
    const char *file;

    for (size_t i = 0; i < n; i++) {
        int r = llep__family_plan(&m->cfg, layer, list[i], plan, why, sizeof(why));

        llep__src_name(&plan->src[0], 0, name, sizeof(name));
        if (!llep__ckpt_find(m->ckpt, name, &file) && i + 1 < n)
            continue;
        if (r < 0)
            return llep__errf(err, errlen, r, "%s: tensor '%s': %s",
                              llep__ckpt_find(m->ckpt, name, &file) ? file
                                  : llep__ckpt_config_path(m->ckpt), name, why);
        return 0;
    }
    return -EINVAL;  /* not reached: a family has at least one storage */
}

static int check_layers(llep_model *m, char *err, size_t errlen) {
    bool all_bf16 = true;
    llep_layer_plan plan;
    int r = 0;

    for (uint32_t i = 0; r == 0 && i < m->cfg.num_moe_layers; i++) {
        r = find_plan(m, m->cfg.layer_of[i], &plan, err, errlen);
        for (unsigned s = 0; r == 0 && s < plan.nsrc; s++)
            r = check_src(m, &plan.src[s], &all_bf16, err, errlen);
        m->storage[i] = plan.storage;
    }
    m->info.dtype = all_bf16 ? LLEP_DTYPE_BF16 : LLEP_DTYPE_F32;
    return r;
}

static void fill_info(llep_model *m) {
    llep_model_config *info = &m->info;

    snprintf(info->model_type, sizeof(info->model_type), "%s", m->cfg.model_type);
    info->num_moe_layers = m->cfg.num_moe_layers;
    info->layer_of = m->cfg.layer_of;
    info->num_experts = m->cfg.num_experts;
    info->top_k = m->cfg.top_k;
    info->hidden = m->cfg.hidden;
    info->inter = m->cfg.inter;
    info->act = m->cfg.act;
    info->act_alpha = m->cfg.act_alpha;
    info->act_limit = m->cfg.act_limit;
    info->bias = m->cfg.bias;
}

int llep__model_open(const char *dir, llep_model **ret, char *err, size_t errlen) {
    llep_model *m = calloc(1, sizeof(*m));
    int r;

    *ret = NULL;
    if (!m)
        return llep__errf(err, errlen, -ENOMEM, "%s: out of memory", dir);
    r = llep__ckpt_open(dir, &m->ckpt, err, errlen);
    if (r == 0)
        r = llep__family_config(llep__ckpt_config(m->ckpt), llep__ckpt_config_path(m->ckpt),
                                &m->cfg, err, errlen);
    if (r == 0 && !(m->storage = calloc(m->cfg.num_moe_layers, sizeof(*m->storage))))
        r = llep__errf(err, errlen, -ENOMEM, "%s: out of memory", dir);
    if (r == 0) {
        fill_info(m);
        r = check_layers(m, err, errlen);
    }
    if (r < 0) {
        llep__model_close(m);
        return r;
    }
    *ret = m;
    return 0;
}

const llep_model_config *llep__model_info(const llep_model *m) {
    return &m->info;
}

void llep__model_close(llep_model *m) {
    if (!m)
        return;
    free(m->storage);
    llep__family_config_fini(&m->cfg);
    llep__ckpt_close(m->ckpt);
    free(m);
}
