/* Checks of decoded control messages that llepd runs before acting on them.
 *
 * protobuf-c guarantees only that a message parsed: numbers can be anything, enums can hold
 * values no .proto names, sub-messages can be missing. These functions turn that into "valid
 * or an error sentence naming the field", so each handler in llepd starts with one call and
 * every bad input gets a reply that says what was wrong (issue 4, "Bad input and faults"). */
#ifndef LLEP_VALIDATE_H
#define LLEP_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llep.pb-c.h"
#include "ring.h"

/* Largest shapes a layer may have. LLEP_LAYER_MAX_EXPERTS equals LLEP_MAX_EXPERTS of the
 * planner (daemon/core/plan.h); D and H are bounded so that every size computed from them fits in
 * 64 bits with room to spare. */
#define LLEP_LAYER_MAX_EXPERTS 65536u
#define LLEP_LAYER_MAX_DIM (1u << 20)
#define LLEP_LAYER_MAX_GROUP 65536u

/* Byte sizes of a layer's tensors (DESIGN.md section 4), from its shape and dtype. */
typedef struct llep_layer_bytes {
    uint64_t w_gate, w_up, w_down;    /* [N][D][H], [N][D][H], [N][H][D] */
    uint64_t b_gate, b_up, b_down;    /* [N][H], [N][H], [N][D] */
    uint32_t elem_size;               /* 4 (f32) or 2 (bf16) */
} llep_layer_bytes;

/* Checks a full layer description: 1 <= N <= LLEP_LAYER_MAX_EXPERTS, 1 <= K <= N,
 * 1 <= D, H <= LLEP_LAYER_MAX_DIM, known dtype, activation, policy and scope, finite and
 * non-negative act_alpha, act_limit, alpha and lambda (0 means the default), group up to
 * LLEP_LAYER_MAX_GROUP. Returns 0 or -EINVAL. */
int llep__layer_desc_check(const LlepPb__LayerDesc *d, char *err, size_t errlen);

/* Tensor sizes for a checked desc. */
void llep__layer_bytes_of(const LlepPb__LayerDesc *d, llep_layer_bytes *ret);

/* "N=64 K=4 D=2048 H=1024 bf16 swiglu": the parts of a desc that attaching must match. */
void llep__layer_desc_format_shape(const LlepPb__LayerDesc *d, char *buf, size_t len);

/* True when N, K, D, H, dtype and activation (with its parameters) are equal. */
bool llep__layer_desc_same_shape(const LlepPb__LayerDesc *a, const LlepPb__LayerDesc *b);

/* Checks LayerCreate against the client's arena: a valid name and desc, w_gate, w_up and
 * w_down present, every tensor given exactly the size its shape implies, aligned to its
 * element size and inside the tensor space. arena may be NULL (no ArenaSetup yet), which is
 * an error. Returns 0 or -EINVAL. */
int llep__layer_create_check(const LlepPb__LayerCreate *lc, const llep_arena *arena,
                             char *err, size_t errlen);

/* Checks LayerAttach: a valid name, and a valid desc when one is given. The shape comparison
 * with the existing layer is the caller's (llep__layer_desc_same_shape). */
int llep__layer_attach_check(const LlepPb__LayerAttach *la, char *err, size_t errlen);

/* Checks ArenaSetup against the daemon's limit on tensor space and computes the layout.
 * Returns 0, -EINVAL (ring sizes) or -ENOMEM (over max_tensor_bytes). */
int llep__arena_setup_check(const LlepPb__ArenaSetup *s, uint64_t max_tensor_bytes,
                            llep_arena_geom *ret, char *err, size_t errlen);

/* Fills an ArenaReply's geometry fields (status, message and fd_count are the caller's). */
void llep__arena_reply_set_geom(LlepPb__ArenaReply *r, const llep_arena_geom *g);

/* Client side: reads the geometry out of an ArenaReply for llep__arena_map(). */
void llep__arena_reply_get_geom(const LlepPb__ArenaReply *r, llep_arena_geom *ret);

#endif
