/* llep public types shared by every llep header.
 *
 * These enums are part of the client ABI (DESIGN.md section 5): values never change meaning,
 * new ones are only appended. */
#ifndef LLEP_TYPES_H
#define LLEP_TYPES_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LLEP_EXTERN __attribute__((visibility("default")))
#else
#define LLEP_EXTERN
#endif

/* Storage type of weights and activations; compute is always float32. */
enum llep_dtype { LLEP_DTYPE_F32 = 0, LLEP_DTYPE_BF16 = 1 };

/* Expert activation (DESIGN.md section 4). */
enum llep_act { LLEP_ACT_SWIGLU = 0, LLEP_ACT_SWIGLU_OAI = 1 };

/* AUTO runs LLEP only when the imbalance ratio reaches lambda; EP and LLEP force one mode. */
enum llep_policy { LLEP_POLICY_AUTO = 0, LLEP_POLICY_EP = 1, LLEP_POLICY_LLEP = 2 };

/* NODE: this daemon's devices; CLUSTER: every node's devices. */
enum llep_scope { LLEP_SCOPE_NODE = 0, LLEP_SCOPE_CLUSTER = 1 };

/* How the gate and up projections of a layer's experts lie in memory (llep_layer_desc's
 * gate_up_layout); N experts, D = hidden, H = inter, row-major, experts contiguous. "x W"
 * layouts are used as they are, "x W^T" ones (a torch nn.Linear's weight) are transposed while
 * the client library copies them into its arena.
 *   SEPARATE     w_gate, w_up [N][D][H] each, g = x W_gate (llep's own layout)
 *   SEPARATE_T   w_gate, w_up [N][H][D] each, g = x W_gate^T (stacked nn.Linear weights)
 *   FUSED        w_gate_up [N][D][2H]: columns 0..H-1 gate, H..2H-1 up
 *   FUSED_T      w_gate_up [N][2H][D]: rows 0..H-1 gate, H..2H-1 up, applied as x W^T
 *                (transformers 5 Mixtral, Qwen2/3-MoE experts' gate_up_proj)
 *   INTERLEAVED  w_gate_up [N][D][2H]: column 2j is gate j, column 2j+1 up j (gpt-oss) */
enum llep_gate_up_layout {
    LLEP_GATE_UP_SEPARATE = 0,
    LLEP_GATE_UP_SEPARATE_T = 1,
    LLEP_GATE_UP_FUSED = 2,
    LLEP_GATE_UP_FUSED_T = 3,
    LLEP_GATE_UP_INTERLEAVED = 4,
};

/* How w_down lies in memory: HD is [N][H][D] used as a W (llep's own, gpt-oss); DH is
 * [N][D][H] applied as a W^T (nn.Linear weights, transformers 5 Mixtral/Qwen down_proj). */
enum llep_down_layout { LLEP_DOWN_HD = 0, LLEP_DOWN_DH = 1 };

/* Element type of topk_idx in llep_io. */
enum llep_index_type { LLEP_INDEX_I32 = 0, LLEP_INDEX_I64 = 1 };

/* Element type of x, topk_w or y in llep_io. DEFAULT (0) is what llep_forward() takes: x and y
 * in the layer's storage dtype, topk_w float32. */
enum llep_io_dtype { LLEP_IO_DEFAULT = 0, LLEP_IO_F32 = 1, LLEP_IO_BF16 = 2 };

/* Defaults of the Least-Loaded Assignment parameters (DESIGN.md section 2). */
#define LLEP_DEFAULT_ALPHA 1.0
#define LLEP_DEFAULT_LAMBDA 1.3
#define LLEP_DEFAULT_MIN_TOKENS 1024u

#ifdef __cplusplus
}
#endif

#endif
