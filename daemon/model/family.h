/* The MoE families llep reads, by config.json's model_type, as transformers builds them:
 * which config keys give N, K, D and H, which decoder layers are MoE, the activation, and
 * how each layer's expert tensors are named and laid out.
 *
 *   mixtral                  model.layers.{i}.block_sparse_moe.experts.{e}.w1/w3/w2.weight
 *                            (gate, up [H][D]; down [D][H]: nn.Linear weights); every layer
 *   qwen2_moe, qwen3_moe     model.layers.{i}.mlp.experts.{e}.gate_proj/up_proj/down_proj
 *                            .weight; MoE where i is not in mlp_only_layers and
 *                            (i + 1) % decoder_sparse_step == 0; shared_expert skipped
 *   deepseek_v2, deepseek_v3 the same names; MoE where i >= first_k_dense_replace; dense
 *                            layers and shared_experts skipped
 *   gpt_oss                  model.layers.{i}.mlp.experts.gate_up_proj [N][D][2H]
 *                            (column 2j gate j, 2j+1 up j) with gate_up_proj_bias [N][2H],
 *                            down_proj [N][H][D] with down_proj_bias [N][D]; or the MXFP4
 *                            gate_up_proj_blocks/_scales, down_proj_blocks/_scales; every layer
 *
 * Mixtral, Qwen and DeepSeek checkpoints may also hold transformers 5's fused names,
 * model.layers.{i}.mlp.experts.gate_up_proj [N][2H][D] (rows 0..H-1 gate, applied as x W^T)
 * and mlp.experts.down_proj [N][D][H] (conversion_mapping.py: MergeModulelist then
 * Concatenate(dim=1) of the per-expert gate and up weights). */
#ifndef LLEP_MODEL_FAMILY_H
#define LLEP_MODEL_FAMILY_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llep/types.h"

/* How a layer's expert weights are stored; a family tries its storages in order. */
enum llep_storage {
    LLEP_STORE_PER_EXPERT,   /* one nn.Linear weight per expert and projection */
    LLEP_STORE_FUSED_T,      /* transformers 5: gate_up_proj [N][2H][D], down_proj [N][D][H] */
    LLEP_STORE_INTERLEAVED,  /* gpt-oss: gate_up_proj [N][D][2H] interleaved, down [N][H][D] */
    LLEP_STORE_MXFP4,        /* gpt-oss packed: *_blocks [N][R][C/32][16], *_scales [N][R][C/32] */
};

/* The six arrays of a layer in llep's layout (include/llep/client.h). */
enum llep_out { LLEP_OUT_W_GATE, LLEP_OUT_W_UP, LLEP_OUT_W_DOWN, LLEP_OUT_B_GATE,
                LLEP_OUT_B_UP, LLEP_OUT_B_DOWN, LLEP_OUT_COUNT };

#define LLEP_SRC_NAME_MAX 160u
#define LLEP_SRC_MAX_DIMS 4u

/* One source of a layer: a tensor stacked over the experts ([N][...]), or N tensors, one per
 * expert, named prefix + e + suffix. With mxfp4 the name is the *_blocks tensor and scales
 * the *_scales one; the expert's matrix is then the dequantised [R][C] floats. */
typedef struct llep_src {
    char name[LLEP_SRC_NAME_MAX];
    char scales[LLEP_SRC_NAME_MAX];
    const char *suffix;
    bool per_expert, mxfp4, bias;
    uint32_t ndim, scales_ndim;
    uint64_t shape[LLEP_SRC_MAX_DIMS];          /* of each tensor (per expert, or stacked) */
    uint64_t scales_shape[LLEP_SRC_MAX_DIMS];
    size_t expert_elems;                        /* elements of one expert's matrix */
} llep_src;

/* out[e] = a rows x cols gather from source src's matrix of expert e:
 *     out[e][i][j] = matrix[offset + i * row_stride + j * col_stride] */
typedef struct llep_copy {
    unsigned src;
    enum llep_out out;
    size_t offset, rows, cols, row_stride, col_stride;
} llep_copy;

typedef struct llep_layer_plan {
    enum llep_storage storage;
    unsigned nsrc, ncopy;
    llep_src src[6];
    llep_copy copy[LLEP_OUT_COUNT];
} llep_layer_plan;

/* What config.json says, for the model's info (model.h) and the plans. */
typedef struct llep_family_config {
    const char *model_type;          /* the family's own (static) name */
    uint32_t num_layers;             /* num_hidden_layers */
    uint32_t num_moe_layers;
    uint32_t *layer_of;              /* malloc'd: the decoder layer of each MoE layer */
    uint32_t num_experts, top_k, hidden, inter;
    enum llep_act act;
    float act_alpha, act_limit;
    bool bias;
    const char *experts_key, *inter_key;   /* config keys, for messages */
} llep_family_config;

/* Reads config (label: its path, for messages) into *ret. Returns 0, or -EINVAL naming the
 * key that is missing or wrong (or an unknown model_type), -ENOMEM. */
int llep__family_config(json_object *config, const char *label, llep_family_config *ret,
                        char *err, size_t errlen);
void llep__family_config_fini(llep_family_config *c);

/* The storages the family may use, in the order to try them (the last is its usual one). */
size_t llep__family_storages(const llep_family_config *c, const enum llep_storage **ret);

/* The plan of decoder layer `layer` stored as s. Returns 0, or -EINVAL when the shapes
 * cannot be stored that way (MXFP4 needs D and H multiples of 32); the plan's names are
 * filled in either way. */
int llep__family_plan(const llep_family_config *c, uint32_t layer, enum llep_storage s,
                      llep_layer_plan *ret, char *err, size_t errlen);

/* The name of source src's tensor for expert e (ignored when stacked) into buf. */
void llep__src_name(const llep_src *src, uint32_t e, char *buf, size_t len);

#endif
