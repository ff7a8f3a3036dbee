/* libllep-client: run MoE layers in llepd from an inference process (DESIGN.md section 5).
 *
 * A client is one connection to llepd with its own shared-memory arena. Layers are created
 * (with weights) or attached (by name) through the client; forwards go through the arena's
 * submission ring and never touch the socket on the way. Link with `pkg-config llep-client`.
 *
 * Conventions:
 *   - Every int-returning call returns 0 (or a count where stated) or a negative errno-style
 *     code; llep_strerror() names it and llep_client_error() gives the sentence that says
 *     what was wrong (the daemon's message when the daemon refused).
 *   - Arguments are checked before anything is sent: a bad one gives -EINVAL.
 *   - A client handle is thread-safe: several threads may create layers, submit, wait and
 *     forward on one client (and its layers) at once. llep_disconnect() and
 *     llep_layer_release() must not race with other calls on the handle they free.
 *   - When llepd goes away (it stops, it is drained, the connection breaks), submissions in
 *     flight complete with -ECONNRESET (their y untouched) and every later call on that client
 *     returns -ECONNRESET; unless the client reconnects (llep_connect_ex() below).
 *   - The caller's buffers are ordinary memory: the library copies inputs into the arena and
 *     outputs back out, so nothing has to be allocated specially. */
#ifndef LLEP_CLIENT_H
#define LLEP_CLIENT_H

#include <stdint.h>

#include "llep/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llep_client llep_client; /* opaque */
typedef struct llep_layer llep_layer;   /* opaque */

/* A layer's shape and policy (DESIGN.md sections 4 and 5). Weights and biases are in `dtype`
 * (bf16 as raw 16-bit words), row-major with experts contiguous. By default (layouts 0) they
 * are llep's own layout: w_gate and w_up [N][D][H], w_down [N][H][D], b_gate and b_up [N][H],
 * b_down [N][D]. gate_up_layout and down_layout take the layouts frameworks keep in memory
 * (enum llep_gate_up_layout and llep_down_layout in llep/types.h), converted while the library
 * copies the weights anyway:
 *   SEPARATE, SEPARATE_T   w_gate and w_up; biases b_gate and b_up
 *   FUSED, FUSED_T         w_gate_up [N][D][2H] or [N][2H][D]; bias b_gate_up [N][2H],
 *                          gate then up (w_gate, w_up, b_gate and b_up must be NULL)
 *   INTERLEAVED            w_gate_up [N][D][2H] and b_gate_up [N][2H], gate j at 2j, up j at
 *                          2j + 1 (w_gate, w_up, b_gate and b_up must be NULL)
 *   down HD, DH            w_down [N][H][D] or [N][D][H]; b_down [N][D] either way
 * The daemon holds the layer in llep's layout whatever the caller's was: llep_layer_get_desc()
 * gives layouts 0. */
typedef struct llep_layer_desc {
    uint32_t num_experts, top_k, hidden, inter;   /* N, K, D, H */
    enum llep_dtype dtype;
    enum llep_act act;
    float act_alpha, act_limit;                   /* 0: 1.702 and 7.0 */
    const void *w_gate, *w_up, *w_down;           /* NULL: attach to an existing layer */
    const void *b_gate, *b_up, *b_down;           /* may be NULL */
    enum llep_policy policy;                      /* AUTO: LLEP when imbalance >= lambda */
    float alpha, lambda;                          /* 0: daemon defaults */
    uint32_t min_tokens;                          /* 0: daemon default */
    uint32_t group;                               /* 0: opportunistic batching */
    enum llep_scope scope;                        /* NODE: this daemon's devices; CLUSTER: all */
    /* How long a collective step (group > 0) waits for its clients, and a cluster step for
     * the other nodes' loads, before failing with -ETIMEDOUT; 0: the daemon default (5 s).
     * Zero-initialise the desc (memset or = {0}) as the examples do: fields are appended
     * over versions, and 0 in each keeps the behaviour of the versions before it. */
    uint32_t group_timeout_ms;
    /* Since 0.3.0 (symbol version LLEP_CLIENT_0.2): the weights' layouts, see above. */
    enum llep_gate_up_layout gate_up_layout;      /* SEPARATE: w_gate, w_up [N][D][H] */
    enum llep_down_layout down_layout;            /* HD: w_down [N][H][D] */
    const void *w_gate_up, *b_gate_up;            /* fused and interleaved layouts only */
} llep_layer_desc;

/* Connects to llepd at socket_path (NULL: $LLEP_SOCKET, else /run/llep/llepd.sock as root,
 * else $XDG_RUNTIME_DIR/llep/llepd.sock); $LLEP_RECONNECT=1 makes the client reconnect (see
 * llep_connect_ex()). Returns 0 with a client in *ret, or -ENOENT /
 * -ECONNREFUSED (no daemon there), -EACCES, -EPROTONOSUPPORT (the daemon speaks another
 * protocol version), -ENOMEM, ... and *ret set to NULL. Why a connect failed is in
 * llep_client_error(NULL), per thread. */
LLEP_EXTERN int llep_connect(const char *socket_path, llep_client **ret);

/* ---- reconnecting (since LLEP_CLIENT_0.3) -------------------------------------------------
 * llep_connect_ex() with LLEP_CONNECT_RECONNECT (llep_connect() with $LLEP_RECONNECT=1) gives a
 * client that rides out a restart of llepd. When the connection is lost, submissions in flight
 * complete with -ECONNRESET and their y is not written (y is only ever copied for a completion
 * llepd posted). A later call reconnects first: the first try comes at once, then the tries
 * are 10 ms apart, doubling up to 200 ms; a call made before the next try is due waits for it,
 * so a call blocks at most 200 ms plus one connect (connect() and Hello each bounded by 1 s)
 * plus restoring the layers, and fails with -ECONNRESET while llepd is not back (the reason
 * in llep_client_error()). Once connected, every layer handle is restored under its name, and
 * the handles (llep_layer *) the program holds stay the same, valid pointers; the arena is
 * the library's own (the program never holds pointers into it) and is set up anew:
 *   - a layer attached by name (a model's layer, one another client created) is attached
 *     again, shape checked;
 *   - a layer this client created with LLEP_LAYER_KEEP_WEIGHTS is created again from the copy
 *     the library kept (attached instead when another client re-created it first: -EEXIST);
 *   - a layer this client created without it is lost: calls on it return -ENOENT saying so.
 * A layer not there yet (a model still loading, a creator not back yet) gives its error
 * (-ENOENT, -EBUSY) and is tried again on later calls, with the same backoff. Tickets of the
 * old connection stay valid until collected (they hold -ECONNRESET). */
enum llep_connect_flags {
    LLEP_CONNECT_RECONNECT = 1u << 0,
};

/* llep_connect() with flags (llep_connect_flags); ignores $LLEP_RECONNECT. -EINVAL for an
 * unknown flag. */
LLEP_EXTERN int llep_connect_ex(const char *socket_path, unsigned flags, llep_client **ret);

enum llep_layer_flags {
    /* Keep a host copy of the weights (llep's layout, the layer's dtype) for as long as the
     * handle lives, to create the layer again after llepd restarts. */
    LLEP_LAYER_KEEP_WEIGHTS = 1u << 0,
};

/* llep_layer_create() with flags (llep_layer_flags); -EINVAL for an unknown flag, or
 * KEEP_WEIGHTS without weights. */
LLEP_EXTERN int llep_layer_create_ex(llep_client *c, const char *name,
                                     const llep_layer_desc *d, unsigned flags,
                                     llep_layer **ret);

/* Closes the connection and frees the client, and every layer handle of it not yet released
 * (the daemon drops their references). Submissions still in flight are abandoned. NULL is
 * fine. */
LLEP_EXTERN void llep_disconnect(llep_client *c);

/* With weights (d->w_gate, w_up and w_down all set): creates the layer `name` in the daemon,
 * which copies the weights before this returns (the caller may free them then); -EEXIST when
 * the name is taken. Without weights (all three NULL): attaches to the existing layer `name`;
 * its shape (N, K, D, H, dtype, activation) must equal d's, else -EINVAL with both shapes in
 * the message; -ENOENT when there is no such layer. d may be NULL to attach to whatever shape
 * the layer has (see llep_layer_get_desc()). The policy fields of d apply only on creation.
 * Returns 0 with a handle in *ret, or a negative errno (-ENOMEM when the devices cannot hold
 * the weights). */
LLEP_EXTERN int llep_layer_create(llep_client *c, const char *name, const llep_layer_desc *d,
                                  llep_layer **ret);

/* Drops this client's reference (the daemon frees the layer with the last one) and frees the
 * handle. Wait for the layer's submissions first. NULL is fine. */
LLEP_EXTERN void llep_layer_release(llep_layer *l);

/* Runs the layer on `tokens` tokens and blocks until y is written:
 *   x         [tokens][D] in the layer's dtype
 *   topk_idx  [tokens][K] expert ids in [0, N)
 *   topk_w    [tokens][K] finite gate weights
 *   y         [tokens][D] in the layer's dtype; written only on success
 * y[t] = sum over k of topk_w[t][k] * FFN_{topk_idx[t][k]}(x[t]) (DESIGN.md section 4).
 * tokens 0 returns 0 at once without contacting the daemon (the pointers may then be NULL).
 * The daemon checks the routing: an expert id out of range or a non-finite weight gives
 * -EINVAL with the daemon's message naming the entry. Equivalent to llep_submit() followed
 * by llep_wait(..., -1). */
LLEP_EXTERN int llep_forward(llep_layer *l, uint32_t tokens, const void *x,
                             const int32_t *topk_idx, const float *topk_w, void *y);

/* A forward's tensors and their element types (llep_forward_ex(), llep_submit_ex()), all
 * row-major and contiguous. Zero-initialise it and set what differs from llep_forward()'s
 * convention: each type field's 0 is what llep_forward() takes.
 *   x         [tokens][D]  x_dtype: DEFAULT (the layer's dtype), F32 or BF16
 *   topk_idx  [tokens][K]  idx_type: LLEP_INDEX_I32 (0) or LLEP_INDEX_I64 (torch.topk's)
 *   topk_w    [tokens][K]  w_dtype: DEFAULT (float32), F32 or BF16
 *   y         [tokens][D]  y_dtype: DEFAULT (the layer's dtype), F32 or BF16
 * The library converts while it copies x, topk_idx and topk_w into its arena and y out of it:
 * the daemon computes in float32 as always, so f32 x on a bf16 layer is rounded to bf16 first,
 * and f32 y of a bf16 layer holds the bf16 result widened. Expert ids are checked here, before
 * anything is sent. Fields are only ever appended, each with a new symbol version. */
typedef struct llep_io {
    uint32_t tokens;
    enum llep_index_type idx_type;
    const void *x;
    const void *topk_idx;
    const void *topk_w;
    void *y;
    enum llep_io_dtype x_dtype, w_dtype, y_dtype;
} llep_io;

/* llep_forward() with the tensors and types of io: blocks until io->y is written. -EINVAL
 * for a NULL io, an unknown type, a NULL pointer with tokens > 0, or an expert id outside
 * [0, N) (the message names the token and the slot: "topk_idx[3][1] = 70 ..."), and whatever
 * llep_forward() returns. io->tokens 0 returns 0 at once. Since 0.3.0. */
LLEP_EXTERN int llep_forward_ex(llep_layer *l, const llep_io *io);

/* llep_submit() with the tensors and types of io: io itself need not outlive the call, but
 * io->y must stay valid until llep_wait() has returned for the ticket. Since 0.3.0. */
LLEP_EXTERN int llep_submit_ex(llep_layer *l, const llep_io *io, uint64_t *ret_ticket);

/* Asynchronous forward on the same ring. llep_submit() copies x, topk_idx and topk_w into
 * the arena, queues the submission and returns a ticket in *ret_ticket without waiting for
 * the result; several submissions (of one or many layers, from one or many threads) may be in
 * flight, and the daemon may batch them into one step. y must stay valid and untouched until
 * llep_wait() has returned for the ticket: the library writes it when the completion arrives,
 * possibly from another thread's llep_wait().
 *
 * llep_submit() blocks only while the arena or the rings are full of earlier submissions
 * (until enough of them complete) or while it grows the arena. Every ticket must be waited
 * for once with llep_wait(), which frees it; tickets are unique per client. tokens 0 gives a
 * ticket that is already complete. Argument errors return -EINVAL and no ticket. */
LLEP_EXTERN int llep_submit(llep_layer *l, uint32_t tokens, const void *x,
                            const int32_t *topk_idx, const float *topk_w, void *y,
                            uint64_t *ret_ticket);

/* Waits up to timeout_ms (-1: as long as it takes, 0: just look) for the submission with this
 * ticket. Returns its result, 0 or a negative errno (as llep_forward()), and frees the
 * ticket; or -EAGAIN when it has not completed in time, in which case the ticket stays valid
 * and may be waited for again. -EINVAL for a ticket this client does not know (never issued
 * or already waited for). -ETIMEDOUT is a result, not a wait timeout: the daemon gave up a
 * collective (group) step. */
LLEP_EXTERN int llep_wait(llep_client *c, uint64_t ticket, int timeout_ms);

/* The layer as the daemon holds it: shape, and the policy with the daemon's effective alpha,
 * lambda and min_tokens filled in. Weight and bias pointers are NULL. Returns 0 or -EINVAL. */
LLEP_EXTERN int llep_layer_get_desc(const llep_layer *l, llep_layer_desc *ret);

/* The client a layer handle belongs to (for llep_wait() and llep_client_error()). */
LLEP_EXTERN llep_client *llep_layer_client(const llep_layer *l);

/* ---- models ----------------------------------------------------------------------------
 * A model is a named, ordered set of MoE layers that llepd loads itself from a checkpoint
 * directory on its machine (Hugging Face layout: config.json and *.safetensors; the families
 * and dtypes are listed in llepd(8), MODELS). MoE layer i of model NAME is the layer
 * "NAME/i": clients attach to it without sending weights, and use it as any layer. */

/* What a loaded model is: num_layers MoE layers, each of the shape in desc (N, K, D, H, dtype,
 * activation; weight pointers NULL, policy fields as the daemon applies them), from a
 * checkpoint of model_type ("mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss", ...). */
typedef struct llep_model_info {
    uint32_t num_layers;
    llep_layer_desc desc;
    int bias;                      /* the layers have expert biases */
    char model_type[32];
} llep_model_info;

/* Asks llepd to load the checkpoint at path (as llepd sees it; a relative path is made
 * absolute here) as model `name` (1 to 64 bytes of printable ASCII without blanks or '/').
 * Blocks until every layer is ready. Needs llepd's admin rights (root or group llep).
 * Returns 0, or -EEXIST (the name is taken), -ENOENT / -EINVAL (no such checkpoint, a bad
 * one: the daemon's message names the file and tensor), -ENOMEM (the devices cannot hold
 * it), -EPERM, ... with the reason in llep_client_error(). */
LLEP_EXTERN int llep_model_load(llep_client *c, const char *name, const char *path);

/* Unloads model `name`. -EBUSY while any client holds one of its layers, -ENOENT when there
 * is no such model. */
LLEP_EXTERN int llep_model_unload(llep_client *c, const char *name);

/* Fills *ret with model `name`'s shape. -ENOENT when llepd has no such model, -EBUSY while
 * it is still loading (llepd loads its configured models before it tells systemd it is ready,
 * but its socket accepts connections meanwhile). */
LLEP_EXTERN int llep_model_get(llep_client *c, const char *name, llep_model_info *ret);

/* Attaches to MoE layer `index` of model `model` (the layer "MODEL/INDEX"), as
 * llep_layer_create(c, "MODEL/INDEX", NULL, ret) does. -ENOENT for a model or index llepd
 * does not have. */
LLEP_EXTERN int llep_model_layer(llep_client *c, const char *model, uint32_t index,
                                 llep_layer **ret);

/* Name of an error code returned by this library: llep_strerror(-EINVAL) is "invalid
 * argument". Codes it does not know give a generic text, never NULL. 0 is "success". */
LLEP_EXTERN const char *llep_strerror(int err);

/* The sentence explaining the last failed call on c: the daemon's message when the daemon
 * refused, else what the library found wrong. "" when nothing has failed. With NULL: why the
 * last llep_connect() of this thread failed. The text is valid until the next call on c;
 * with several threads it belongs to whichever call failed last. */
LLEP_EXTERN const char *llep_client_error(const llep_client *c);

#ifdef __cplusplus
}
#endif

#include "llep/space.h" /* device spaces: x and y read and written in place */

#endif
