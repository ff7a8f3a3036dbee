/* The MoE families and their tensors (family.h). */
#include "family.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "jsonfile.h"

/* Bounds on config values: far above any model, and low enough that products of two of them
 * cannot overflow; products of three are checked where the bytes are allocated. */
#define MAX_DIM (1u << 24)
#define MAX_LAYERS (1u << 16)

/* gpt-oss's SwiGLU (GptOssExperts: alpha = 1.702, limit = config.swiglu_limit or 7.0). */
#define OAI_ALPHA 1.702f
#define OAI_LIMIT 7.0f

/* The MX block: 32 values share one scale, packed two to a byte. */
#define MX_BLOCK 32u

enum names { NAMES_MIXTRAL, NAMES_QWEN, NAMES_GPT_OSS };
enum rule { RULE_ALL, RULE_QWEN, RULE_DEEPSEEK };

typedef struct family {
    const char *model_type;
    const char *experts_key, *inter_key;
    const char *experts_alt;    /* the expert count's other name, or NULL */
    enum names names;
    enum rule rule;
    uint32_t first_k_default;   /* DeepSeek's first_k_dense_replace when config has none */
} family;

static const family families[] = {
    { "mixtral", "num_local_experts", "intermediate_size", NULL, NAMES_MIXTRAL, RULE_ALL, 0 },
    /* transformers 5 writes Qwen's expert count as num_local_experts. */
    { "qwen2_moe", "num_experts", "moe_intermediate_size", "num_local_experts", NAMES_QWEN,
      RULE_QWEN, 0 },
    { "qwen3_moe", "num_experts", "moe_intermediate_size", "num_local_experts", NAMES_QWEN,
      RULE_QWEN, 0 },
    /* DeepseekV2Config defaults first_k_dense_replace to 0, DeepseekV3Config to 3. */
    { "deepseek_v2", "n_routed_experts", "moe_intermediate_size", NULL, NAMES_QWEN,
      RULE_DEEPSEEK, 0 },
    { "deepseek_v3", "n_routed_experts", "moe_intermediate_size", NULL, NAMES_QWEN,
      RULE_DEEPSEEK, 3 },
    { "gpt_oss", "num_local_experts", "intermediate_size", NULL, NAMES_GPT_OSS, RULE_ALL, 0 },
};

#define NUM_FAMILIES (sizeof(families) / sizeof(families[0]))

static const family *family_of(const char *model_type) {
    for (size_t i = 0; model_type && i < NUM_FAMILIES; i++)
        if (strcmp(families[i].model_type, model_type) == 0)
            return &families[i];
    return NULL;
}

/* ---- which layers are MoE ------------------------------------------------------------- */

static int alloc_layers(llep_family_config *c, const char *label, char *err, size_t errlen) {
    c->layer_of = calloc(c->num_layers ? c->num_layers : 1, sizeof(*c->layer_of));
    return c->layer_of ? 0 : llep__errf(err, errlen, -ENOMEM, "%s: out of memory", label);
}

/* Whether the JSON array (or null) holds the integer i. */
static bool array_has(json_object *arr, uint32_t i) {
    for (size_t k = 0; arr && k < json_object_array_length(arr); k++) {
        json_object *v = json_object_array_get_idx(arr, k);

        if (json_object_is_type(v, json_type_int) && json_object_get_int64(v) == (int64_t)i)
            return true;
    }
    return false;
}

/* Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer: a sparse block where
 * (i not in mlp_only_layers) and num_experts > 0 and (i + 1) % decoder_sparse_step == 0. */
static int qwen_layers(json_object *cfg, const char *label, llep_family_config *c, char *err,
                       size_t errlen) {
    json_object *only = NULL;
    uint32_t step;
    int r = llep__json_u32(cfg, "decoder_sparse_step", true, 1, 1, MAX_LAYERS, &step, label,
                           err, errlen);

    if (r < 0)
        return r;
    if (json_object_object_get_ex(cfg, "mlp_only_layers", &only) && only &&
        !json_object_is_type(only, json_type_array))
        return llep__errf(err, errlen, -EINVAL, "%s: mlp_only_layers is %s, not a list", label,
                          json_object_to_json_string(only));
    r = alloc_layers(c, label, err, errlen);
    for (uint32_t i = 0; r == 0 && i < c->num_layers; i++)
        if (!array_has(only, i) && (i + 1) % step == 0)
            c->layer_of[c->num_moe_layers++] = i;
    return r;
}

/* DeepseekV2DecoderLayer / DeepseekV3DecoderLayer: MoE where i >= first_k_dense_replace.
 * transformers ignores moe_layer_freq, which DeepSeek's own modelling code applies
 * (i % moe_layer_freq == 0); every released checkpoint has 1, where the two agree, and any
 * other value is refused rather than guessed. */
static int deepseek_layers(json_object *cfg, const char *label, const family *f,
                           llep_family_config *c, char *err, size_t errlen) {
    uint32_t first_k, freq;
    int r = llep__json_u32(cfg, "first_k_dense_replace", true, f->first_k_default, 0,
                           MAX_LAYERS, &first_k, label, err, errlen);

    if (r == 0)
        r = llep__json_u32(cfg, "moe_layer_freq", true, 1, 0, MAX_LAYERS, &freq, label, err,
                           errlen);
    if (r < 0)
        return r;
    if (freq != 1)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: moe_layer_freq is %u: transformers ignores it and DeepSeek's "
                          "code skips layers by it, so which layers are MoE is unclear",
                          label, freq);
    r = alloc_layers(c, label, err, errlen);
    for (uint32_t i = first_k; r == 0 && i < c->num_layers; i++)
        c->layer_of[c->num_moe_layers++] = i;
    return r;
}

static int all_layers(const char *label, llep_family_config *c, char *err, size_t errlen) {
    int r = alloc_layers(c, label, err, errlen);

    for (uint32_t i = 0; r == 0 && i < c->num_layers; i++)
        c->layer_of[c->num_moe_layers++] = i;
    return r;
}

/* ---- config.json ---------------------------------------------------------------------- */

/* gpt-oss names top-k both ways (num_experts_per_tok and experts_per_token). */
static int read_top_k(json_object *cfg, const family *f, const char *label,
                      llep_family_config *c, char *err, size_t errlen) {
    uint32_t alt;
    int r = llep__json_u32(cfg, "num_experts_per_tok", f->names == NAMES_GPT_OSS, 0, 1,
                           MAX_DIM, &c->top_k, label, err, errlen);

    if (r < 0 || f->names != NAMES_GPT_OSS)
        return r;
    r = llep__json_u32(cfg, "experts_per_token", c->top_k != 0, c->top_k, 1, MAX_DIM, &alt,
                       label, err, errlen);
    if (r < 0)
        return c->top_k ? r : llep__errf(err, errlen, -EINVAL,
                                         "%s: no num_experts_per_tok or experts_per_token",
                                         label);
    if (c->top_k && alt != c->top_k)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: num_experts_per_tok %u and experts_per_token %u disagree",
                          label, c->top_k, alt);
    c->top_k = alt;
    return 0;
}

/* The experts of Mixtral, Qwen and DeepSeek are SwiGLU with config.hidden_act (ACT2FN); llep
 * runs SiLU there, so anything else is refused. gpt-oss hard-codes its own activation. */
static int read_act(json_object *cfg, const family *f, const char *label, llep_family_config *c,
                    char *err, size_t errlen) {
    const char *act;
    int r;

    if (f->names == NAMES_GPT_OSS) {
        c->act = LLEP_ACT_SWIGLU_OAI;
        c->act_alpha = OAI_ALPHA;
        c->bias = true;
        return llep__json_float(cfg, "swiglu_limit", OAI_LIMIT, &c->act_limit, label, err,
                                errlen);
    }
    r = llep__json_str(cfg, "hidden_act", &act, label, err, errlen);
    if (r < 0)
        return r;
    if (act && strcmp(act, "silu") != 0)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: hidden_act is '%s'; llep's experts run SwiGLU with silu", label,
                          act);
    c->act = LLEP_ACT_SWIGLU;
    return 0;
}

static int read_shape(json_object *cfg, const family *f, const char *label,
                      llep_family_config *c, char *err, size_t errlen) {
    int r = llep__json_u32(cfg, "num_hidden_layers", false, 0, 1, MAX_LAYERS, &c->num_layers,
                           label, err, errlen);

    if (r == 0 && f->experts_alt && !json_object_object_get_ex(cfg, f->experts_key, NULL))
        c->experts_key = f->experts_alt;
    if (r == 0)
        r = llep__json_u32(cfg, c->experts_key, false, 0, 1, MAX_DIM, &c->num_experts, label,
                           err, errlen);
    if (r == 0)
        r = read_top_k(cfg, f, label, c, err, errlen);
    if (r == 0)
        r = llep__json_u32(cfg, "hidden_size", false, 0, 1, MAX_DIM, &c->hidden, label, err,
                           errlen);
    if (r == 0)
        r = llep__json_u32(cfg, f->inter_key, false, 0, 1, MAX_DIM, &c->inter, label, err,
                           errlen);
    if (r == 0 && c->top_k > c->num_experts)
        r = llep__errf(err, errlen, -EINVAL, "%s: %u experts per token, but %s is %u", label,
                       c->top_k, c->experts_key, c->num_experts);
    return r;
}

static int read_layers(json_object *cfg, const family *f, const char *label,
                       llep_family_config *c, char *err, size_t errlen) {
    int r;

    if (f->rule == RULE_QWEN)
        r = qwen_layers(cfg, label, c, err, errlen);
    else if (f->rule == RULE_DEEPSEEK)
        r = deepseek_layers(cfg, label, f, c, err, errlen);
    else
        r = all_layers(label, c, err, errlen);
    if (r == 0 && c->num_moe_layers == 0)
        r = llep__errf(err, errlen, -EINVAL, "%s: none of the %u layers is an MoE layer", label,
                       c->num_layers);
    return r;
}

int llep__family_config(json_object *cfg, const char *label, llep_family_config *c, char *err,
                        size_t errlen) {
    const char *type;
    const family *f;
    int r;

    memset(c, 0, sizeof(*c));
    r = llep__json_str(cfg, "model_type", &type, label, err, errlen);
    if (r < 0)
        return r;
    f = family_of(type);
    if (!f)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: model_type '%s' is not an MoE family llep reads (mixtral, "
                          "qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3, gpt_oss)", label,
                          type ? type : "(none)");
    c->model_type = f->model_type;
    c->experts_key = f->experts_key;
    c->inter_key = f->inter_key;
    r = read_shape(cfg, f, label, c, err, errlen);
    if (r == 0)
        r = read_act(cfg, f, label, c, err, errlen);
    if (r == 0)
        r = read_layers(cfg, f, label, c, err, errlen);
    if (r < 0)
        llep__family_config_fini(c);
    return r;
}

void llep__family_config_fini(llep_family_config *c) {
    free(c->layer_of);
    c->layer_of = NULL;
    c->num_moe_layers = 0;
}

/* ---- tensors of a layer --------------------------------------------------------------- */

static const enum llep_storage per_expert_first[] = { LLEP_STORE_FUSED_T,
                                                      LLEP_STORE_PER_EXPERT };
static const enum llep_storage gpt_oss_storages[] = { LLEP_STORE_MXFP4,
                                                      LLEP_STORE_INTERLEAVED };

size_t llep__family_storages(const llep_family_config *c, const enum llep_storage **ret) {
    if (strcmp(c->model_type, "gpt_oss") == 0) {
        *ret = gpt_oss_storages;
        return 2;
    }
    *ret = per_expert_first;
    return 2;
}

void llep__src_name(const llep_src *src, uint32_t e, char *buf, size_t len) {
    if (src->per_expert)
        snprintf(buf, len, "%s%u%s", src->name, e, src->suffix);
    else
        snprintf(buf, len, "%s", src->name);
}

static llep_src *add_src(llep_layer_plan *p, size_t expert_elems, uint32_t ndim, const uint64_t *shape) {
    llep_src *s = &p->src[p->nsrc++];

    memset(s, 0, sizeof(*s));
    s->suffix = "";
    s->ndim = ndim;
    memcpy(s->shape, shape, ndim * sizeof(*shape));
    s->expert_elems = expert_elems;
    return s;
}

/* model.layers.{layer}.mlp.experts.{leaf}: a tensor stacked over the experts. */
static llep_src *add_stacked(llep_layer_plan *p, uint32_t layer, const char *leaf, size_t expert_elems,
                             uint32_t ndim, const uint64_t *shape) {
    llep_src *s = add_src(p, expert_elems, ndim, shape);

    snprintf(s->name, sizeof(s->name), "model.layers.%u.mlp.experts.%s", layer, leaf);
    return s;
}

/* model.layers.{layer}.{block}.experts.{e}.{proj}.weight: one nn.Linear weight per expert. */
static void add_linear(llep_layer_plan *p, uint32_t layer, const char *block, const char *suffix,
                       uint64_t out_features, uint64_t in_features) {
    const uint64_t shape[2] = { out_features, in_features };
    llep_src *s = add_src(p, (size_t)(out_features * in_features), 2, shape);

    snprintf(s->name, sizeof(s->name), "model.layers.%u.%s.experts.", layer, block);
    s->suffix = suffix;
    s->per_expert = true;
}

static void add_copy(llep_layer_plan *p, unsigned src, enum llep_out out, size_t offset, size_t rows,
                     size_t cols, size_t row_stride, size_t col_stride) {
    p->copy[p->ncopy++] = (llep_copy){ src, out, offset, rows, cols, row_stride, col_stride };
}

/* Gate and up weights [H][D] and down [D][H] as x W^T: each transposed into place. */
static void plan_per_expert(llep_layer_plan *p, const llep_family_config *c, uint32_t layer) {
    bool mixtral = strcmp(c->model_type, "mixtral") == 0;
    const char *block = mixtral ? "block_sparse_moe" : "mlp";
    size_t d = c->hidden, h = c->inter;

    add_linear(p, layer, block, mixtral ? ".w1.weight" : ".gate_proj.weight", h, d);
    add_linear(p, layer, block, mixtral ? ".w3.weight" : ".up_proj.weight", h, d);
    add_linear(p, layer, block, mixtral ? ".w2.weight" : ".down_proj.weight", d, h);
    add_copy(p, 0, LLEP_OUT_W_GATE, 0, d, h, 1, d);
    add_copy(p, 1, LLEP_OUT_W_UP, 0, d, h, 1, d);
    add_copy(p, 2, LLEP_OUT_W_DOWN, 0, h, d, 1, h);
}

/* transformers 5: gate_up_proj [N][2H][D], gate the first H rows; down_proj [N][D][H]. */
static void plan_fused_t(llep_layer_plan *p, const llep_family_config *c, uint32_t layer) {
    size_t n = c->num_experts, d = c->hidden, h = c->inter;
    const uint64_t gu[3] = { n, 2 * h, d }, dn[3] = { n, d, h };

    add_stacked(p, layer, "gate_up_proj", 2 * h * d, 3, gu);
    add_stacked(p, layer, "down_proj", d * h, 3, dn);
    add_copy(p, 0, LLEP_OUT_W_GATE, 0, d, h, 1, d);
    add_copy(p, 0, LLEP_OUT_W_UP, h * d, d, h, 1, d);
    add_copy(p, 1, LLEP_OUT_W_DOWN, 0, h, d, 1, h);
}

/* gpt-oss's biases: gate_up_proj_bias [N][2H] interleaved like the columns; down [N][D]. */
static void plan_biases(llep_layer_plan *p, const llep_family_config *c, uint32_t layer) {
    size_t n = c->num_experts, d = c->hidden, h = c->inter;
    const uint64_t gu[2] = { n, 2 * h }, dn[2] = { n, d };
    unsigned at = p->nsrc;

    add_stacked(p, layer, "gate_up_proj_bias", 2 * h, 2, gu)->bias = true;
    add_stacked(p, layer, "down_proj_bias", d, 2, dn)->bias = true;
    add_copy(p, at, LLEP_OUT_B_GATE, 0, 1, h, 2 * h, 2);
    add_copy(p, at, LLEP_OUT_B_UP, 1, 1, h, 2 * h, 2);
    add_copy(p, at + 1, LLEP_OUT_B_DOWN, 0, 1, d, d, 1);
}

/* gpt-oss: gate_up_proj [N][D][2H], column 2j gate j and 2j+1 up j; down_proj [N][H][D]. */
static void plan_interleaved(llep_layer_plan *p, const llep_family_config *c, uint32_t layer) {
    size_t n = c->num_experts, d = c->hidden, h = c->inter;
    const uint64_t gu[3] = { n, d, 2 * h }, dn[3] = { n, h, d };

    add_stacked(p, layer, "gate_up_proj", d * 2 * h, 3, gu);
    add_stacked(p, layer, "down_proj", h * d, 3, dn);
    add_copy(p, 0, LLEP_OUT_W_GATE, 0, d, h, 2 * h, 2);
    add_copy(p, 0, LLEP_OUT_W_UP, 1, d, h, 2 * h, 2);
    add_copy(p, 1, LLEP_OUT_W_DOWN, 0, h, d, d, 1);
    plan_biases(p, c, layer);
}

/* An MXFP4 pair for rows x cols weights: blocks [N][rows][cols/32][16], scales
 * [N][rows][cols/32] (Mxfp4GptOssExperts), dequantised to [rows][cols] per expert. */
static void add_mxfp4(llep_layer_plan *p, uint32_t layer, const char *proj, size_t rows, size_t cols,
                      size_t n) {
    const uint64_t blocks[4] = { n, rows, cols / MX_BLOCK, MX_BLOCK / 2 };
    char leaf[64];
    llep_src *s;

    snprintf(leaf, sizeof(leaf), "%s_blocks", proj);
    s = add_stacked(p, layer, leaf, rows * cols, 4, blocks);
    s->mxfp4 = true;
    snprintf(s->scales, sizeof(s->scales), "model.layers.%u.mlp.experts.%s_scales", layer, proj);
    s->scales_ndim = 3;
    memcpy(s->scales_shape, blocks, 3 * sizeof(*blocks));
}

/* convert_moe_packed_tensors dequantises gate_up to [N][2H][D] and transposes it to gpt-oss's
 * [N][D][2H]; read untransposed, gate j is row 2j and up j row 2j + 1 of the [2H][D] matrix.
 * down dequantises to [N][D][H], transposed to [N][H][D]. */
static int plan_mxfp4(llep_layer_plan *p, const llep_family_config *c, uint32_t layer, char *err,
                      size_t errlen) {
    size_t n = c->num_experts, d = c->hidden, h = c->inter;

    add_mxfp4(p, layer, "gate_up_proj", 2 * h, d, n);
    add_mxfp4(p, layer, "down_proj", d, h, n);
    add_copy(p, 0, LLEP_OUT_W_GATE, 0, d, h, 1, 2 * d);
    add_copy(p, 0, LLEP_OUT_W_UP, d, d, h, 1, 2 * d);
    add_copy(p, 1, LLEP_OUT_W_DOWN, 0, h, d, 1, h);
    plan_biases(p, c, layer);
    /* The plan stands (its names serve messages), but its shapes cannot be met. */
    if (d % MX_BLOCK || h % MX_BLOCK)
        return llep__errf(err, errlen, -EINVAL,
                          "MXFP4 weights need hidden_size (%zu) and %s (%zu) to be multiples "
                          "of %u", d, c->inter_key, h, MX_BLOCK);
    return 0;
}

int llep__family_plan(const llep_family_config *c, uint32_t layer, enum llep_storage s,
                      llep_layer_plan *p, char *err, size_t errlen) {
    memset(p, 0, sizeof(*p));
    p->storage = s;
    switch (s) {
    case LLEP_STORE_PER_EXPERT:
        plan_per_expert(p, c, layer);
        return 0;
    case LLEP_STORE_FUSED_T:
        plan_fused_t(p, c, layer);
        return 0;
    case LLEP_STORE_INTERLEAVED:
        plan_interleaved(p, c, layer);
        return 0;
    case LLEP_STORE_MXFP4:
        return plan_mxfp4(p, c, layer, err, errlen);
    }
    return llep__errf(err, errlen, -EINVAL, "unknown storage %d", (int)s);
}
