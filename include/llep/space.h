/* Device spaces: x and y where a GPU-resident client already keeps them (issue 17).
 * Included by llep/client.h; see docs/ARCHITECTURE.md section 5.3.
 *
 * A client may register one space beside its arena. Forwards (llep_forward, llep_submit and
 * their _ex forms) whose x or y pointer lies inside the space pass its offset to llepd
 * instead of copying the tensor through the arena: llepd reads x and writes y in place. Such
 * a tensor must be in the layer's dtype (no conversion happens) and lie wholly inside the
 * space; the routing (topk_idx, topk_w) always travels through the arena. A pointer outside
 * the space takes the ordinary copying path, so spaces and ordinary buffers mix freely.
 *
 * Kinds. LLEP_SPACE_CUDA: memory on a GPU allocated with the CUDA driver's virtual memory
 * API (cuMemCreate with POSIX file-descriptor handles), exported to llepd, which maps it into
 * its devices' GPUs; the base is a CUDA device pointer of this process. Ordering: each
 * submission naming the space records an interprocess CUDA event on the legacy default
 * stream (which follows the work of every blocking stream of the process) and llepd's step
 * waits for it on its streams, so x may be written by kernels still in flight when the
 * forward is submitted; y is complete when the forward completes (llepd synchronises its
 * streams before it completes a step), and llep_wait() additionally makes the default stream
 * wait for llepd's done event. LLEP_SPACE_HOST: a sealed memfd both processes map, the
 * stand-in where either side has no CUDA (llepd's CPU backend, a library built without CUDA);
 * the base is ordinary host memory.
 *
 * The space's memory stays valid in llepd for as long as llepd uses it, even when this
 * process dies or unmaps it; llep_space_free() is refused with -EBUSY while forwards naming
 * it are in flight. A reconnecting client (LLEP_CONNECT_RECONNECT) registers its space again
 * with the restarted llepd. */
#ifndef LLEP_SPACE_H
#define LLEP_SPACE_H

#include <stdint.h>

#include "llep/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llep_client llep_client;
typedef struct llep_space llep_space;   /* opaque */

enum llep_space_kind {
    LLEP_SPACE_HOST = 0,    /* a sealed memfd: host memory */
    LLEP_SPACE_CUDA = 1,    /* CUDA VMM memory on one GPU: device memory */
};

/* Allocates a space of `bytes` and registers it with llepd. gpu >= 0 asks for CUDA memory on
 * that CUDA device when this library has CUDA and llepd runs the CUDA backend, and for the
 * host stand-in otherwise (llep_space_kind() says which was made); gpu -1 asks for the host
 * stand-in. Returns 0 with the space, -EEXIST when the client has one already, -EINVAL (bytes
 * 0, a GPU llepd does not run on: the daemon's message names it), -ENOMEM, or the daemon's
 * refusal, with the reason in llep_client_error(). */
LLEP_EXTERN int llep_space_alloc(llep_client *c, uint64_t bytes, int gpu, llep_space **ret);

/* The space's first byte: a CUDA device pointer (LLEP_SPACE_CUDA) or host memory. */
LLEP_EXTERN void *llep_space_base(const llep_space *s);
LLEP_EXTERN uint64_t llep_space_size(const llep_space *s);
LLEP_EXTERN enum llep_space_kind llep_space_kind(const llep_space *s);
/* The CUDA device it lives on; -1 for a host space. */
LLEP_EXTERN int llep_space_gpu(const llep_space *s);

/* The client's space, or NULL. */
LLEP_EXTERN llep_space *llep_client_space(const llep_client *c);

/* Releases the space in llepd and frees it here. -EBUSY (and nothing happens) while forwards
 * naming it are in flight. llep_disconnect() frees a space left over. */
LLEP_EXTERN int llep_space_free(llep_space *s);

#ifdef __cplusplus
}
#endif

#endif
