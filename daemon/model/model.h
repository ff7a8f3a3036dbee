/* An MoE model read from a Hugging Face style checkpoint directory (checkpoint.h) of one of
 * the families of family.h: its shape, which decoder layers are MoE, and each MoE layer's
 * expert weights converted to llep's own layout (include/llep/client.h):
 *
 *     w_gate, w_up [N][D][H]    w_down [N][H][D]    b_gate, b_up [N][H]    b_down [N][D]
 *
 * in the model's dtype, which keeps every value exact: BF16 when every expert tensor is
 * stored as bf16 or MXFP4 (whose values are all bf16 values), else F32 (f32 and f16 storage:
 * f16 -> f32 is exact, f16 -> bf16 is not).
 *
 * Opening checks every MoE layer's tensors against config.json (present, dtype, shape), so
 * that a checkpoint that does not match its config fails then, with a message naming the
 * file, the tensor, and the expected and actual shapes. Nothing here logs: every error is a
 * negative errno with its sentence in the caller's buffer. */
#ifndef LLEP_MODEL_MODEL_H
#define LLEP_MODEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llep/types.h"

typedef struct llep_model llep_model;   /* opaque */

typedef struct llep_model_config {
    char model_type[32];            /* config.json's model_type */
    uint32_t num_moe_layers;
    const uint32_t *layer_of;       /* the decoder layer of each MoE layer, ascending */
    uint32_t num_experts, top_k, hidden, inter;   /* N, K, D, H */
    enum llep_act act;
    float act_alpha, act_limit;     /* SWIGLU_OAI: 1.702 and swiglu_limit; SWIGLU: 0 */
    bool bias;                      /* gpt-oss: b_gate, b_up, b_down */
    enum llep_dtype dtype;          /* of the weights llep__model_layer_weights returns */
} llep_model_config;

/* One MoE layer's weights in llep's layout and the model's dtype (bf16 as raw 16-bit words),
 * all in one allocation that llep__model_weights_free releases; biases NULL without bias. */
typedef struct llep_model_weights {
    enum llep_dtype dtype;
    void *w_gate, *w_up, *w_down;
    void *b_gate, *b_up, *b_down;
} llep_model_weights;

/* Opens the checkpoint in dir and checks it against its config. Returns 0 with the model in
 * *ret, or a negative errno (-ENOENT a file or tensor missing, -EINVAL malformed or not
 * matching config.json, -ENOMEM, open/mmap's errno) with the message in err. */
int llep__model_open(const char *dir, llep_model **ret, char *err, size_t errlen);

const llep_model_config *llep__model_info(const llep_model *m);

/* MoE layer `index` (0-based among the MoE layers) into *ret. Returns 0, or -ERANGE (no such
 * layer), -EOVERFLOW (its bytes do not fit a size_t), -ENOMEM, -EDOM (an MXFP4 scale of 255,
 * the format's NaN), each with its message. */
int llep__model_layer_weights(llep_model *m, uint32_t index, llep_model_weights *ret,
                              char *err, size_t errlen);

/* Frees what llep__model_layer_weights allocated and zeroes *w; a zeroed *w is fine. */
void llep__model_weights_free(llep_model_weights *w);

/* Unmaps the checkpoint and frees the model; NULL is fine. Weights already returned stay
 * valid. */
void llep__model_close(llep_model *m);

#endif
