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

/* Defaults of the Least-Loaded Assignment parameters (DESIGN.md section 2). */
#define LLEP_DEFAULT_ALPHA 1.0
#define LLEP_DEFAULT_LAMBDA 1.3
#define LLEP_DEFAULT_MIN_TOKENS 1024u

#ifdef __cplusplus
}
#endif

#endif
