/* Communicators between nodes (DESIGN.md section 5): what carries a cluster step's token rows,
 * weights and results from the memory of one node's device straight into another's, when the
 * backend has one. On the CUDA backend it is an NCCL communicator spanning the nodes, one rank
 * per node on the GPU of the node's logical device 0 (xnode-nccl.c); on the CPU backend a
 * socket transport between processes of one host (xnode-cpu.c), which llepd uses only under
 * its test hook LLEPD_TEST_XNODE, so that the path the GPUs take is tested without them.
 * Without a communicator llepd's cluster steps send everything over the peer links (TCP).
 * llepd opens one per set of nodes and shares it between every cluster layer on the set,
 * issuing the layers' exchanges one at a time in an order every node agrees on
 * (daemon/cluster/cluster-xnode.c).
 *
 * Bootstrap, as NCCL's: one rank makes an id with unique_id(), the caller passes it to the
 * other ranks (llepd: over the peer links), and every rank calls open() with it. Open does not
 * block: the communicator is up when poll() returns 0 for the first time.
 *
 * An exchange is one group of sends and receives between ranks. Sends to one peer are matched
 * with that peer's receives from this rank in the order each side lists them, and sizes must
 * agree; the buffers must stay valid until poll() says the exchange is over. One exchange at a
 * time per communicator. All functions but notify are called from one thread (llepd's loop);
 * notify may be called from any thread. */
#ifndef LLEP_XNODE_H
#define LLEP_XNODE_H

#include <stddef.h>
#include <stdint.h>

typedef struct llep_backend llep_backend;
typedef struct llep_xnode llep_xnode;

/* An id is opaque bytes; ncclUniqueId has this size. */
#define LLEP_XNODE_ID_BYTES 128

/* Flags of a transport. */
#define LLEP_XNODE_SAME_HOST 1u /* every rank must be a process on the same host */

typedef struct llep_xnode_op {
    uint32_t peer;      /* the other rank */
    int recv;           /* 0: send buf to peer; 1: receive from peer into buf */
    void *buf;          /* memory of the logical device given to open() */
    uint64_t bytes;     /* 0: nothing to move (both sides may list it or not) */
} llep_xnode_op;

/* Called, from any thread, when an open or an exchange finishes or fails, so that the caller
 * polls without a timer. Spurious calls are allowed; a missing call is not, except where the
 * communicator itself hangs (a peer process stopped): callers keep a deadline. */
typedef void (*llep_xnode_notify)(void *arg);

typedef struct llep_xnode_ops {
    const char *name;   /* "nccl", "socket" */
    unsigned flags;     /* LLEP_XNODE_* */

    /* A fresh id for a new communicator. Returns 0 or a negative errno. */
    int (*unique_id)(llep_backend *b, uint8_t id[LLEP_XNODE_ID_BYTES]);

    /* Starts joining communicator `id` as `rank` of `nranks` (2 or more), on the memory of
     * logical device `dev`. Returns 0 with *ret set, or -EINVAL (bad rank, device or id),
     * -ENOMEM, or another negative errno with nothing allocated; the message is in err. */
    int (*open)(llep_backend *b, uint32_t dev, const uint8_t id[LLEP_XNODE_ID_BYTES],
                uint32_t nranks, uint32_t rank, llep_xnode_notify notify, void *arg,
                llep_xnode **ret, char *err, size_t errlen);

    /* 0: up, and no exchange in flight (the last one is complete in every buffer);
     * -EINPROGRESS: still opening or exchanging; another negative errno: failed, the
     * communicator is unusable (error() says why) and must be closed. */
    int (*poll)(llep_xnode *x);

    /* Starts one exchange; only when poll() returned 0. The op array may be freed on return.
     * Returns 0 or a negative errno (then nothing was started; error() says why). */
    int (*exchange)(llep_xnode *x, const llep_xnode_op *ops, uint32_t n);

    /* Why the last call failed; "" when nothing did. */
    const char *(*error)(const llep_xnode *x);

    /* Aborts whatever is in flight and frees the communicator without waiting for peers; the
     * other ranks' exchanges with it then fail (or hang until their callers' deadlines). */
    void (*close)(llep_xnode *x);
} llep_xnode_ops;

/* The socket transport of the CPU backend (same host only). */
extern const llep_xnode_ops llep__xnode_socket;

/* NCCL, in builds with CUDA (xnode-nccl.c). */
extern const llep_xnode_ops llep__xnode_nccl;

#endif
