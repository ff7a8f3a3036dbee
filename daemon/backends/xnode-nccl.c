/* The NCCL communicator between nodes (xnode.h): one rank per node, on the GPU of the node's
 * logical device 0, created and used in NCCL's non-blocking mode so that llepd's loop thread
 * never waits on another node.
 *
 * open() starts ncclCommInitRankConfig with blocking = 0; NCCL finishes the bootstrap (it
 * connects to the address inside the id, which rank 0's ncclGetUniqueId put there) on its own
 * threads, and poll() asks ncclCommGetAsyncError until it says done. An exchange is one
 * ncclGroupStart/End of ncclSend/ncclRecv on the communicator's own stream: a stream of its
 * own, so that no other work of the backend (or another layer's exchange) queues behind
 * transfers that wait for other nodes. In non-blocking mode ncclGroupEnd may return before the
 * transfers are on the stream (first contact with a peer connects it); poll() then waits for
 * the communicator before it records the completion event and the host callback that wakes
 * the caller. close() aborts the communicator, which makes its kernels give up on peers that
 * are gone, then waits for the stream (now short) before freeing what the callback uses. */
#include "xnode.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop

#include "backend-cuda.h"

_Static_assert(sizeof(ncclUniqueId) == LLEP_XNODE_ID_BYTES, "ncclUniqueId is 128 bytes");

enum xn_state {
    XN_OPENING,     /* ncclCommInitRankConfig in progress */
    XN_UP,          /* idle */
    XN_ENQUEUING,   /* ncclGroupEnd returned ncclInProgress: transfers not yet on the stream */
    XN_EXCHANGING,  /* on the stream: done when `done` is */
    XN_FAILED,
};

struct llep_xnode {
    int gpu;
    uint32_t nranks, rank;
    ncclComm_t comm;
    cudaStream_t stream;
    cudaEvent_t done;
    enum xn_state state;
    int failure;                    /* negative errno once failed */
    llep_xnode_notify notify;
    void *arg;
    char err[256];
};

static int fail(llep_xnode *x, int r, const char *what, const char *detail) {
    x->state = XN_FAILED;
    x->failure = r;
    snprintf(x->err, sizeof(x->err), "NCCL rank %u of %u on GPU %d: %s%s%s", x->rank,
             x->nranks, x->gpu, what, detail && detail[0] ? ": " : "", detail ? detail : "");
    return r;
}

static int nccl_fail(llep_xnode *x, ncclResult_t nr, const char *what) {
    char detail[200];
    const char *last = x->comm ? ncclGetLastError(x->comm) : NULL;

    snprintf(detail, sizeof(detail), "%s%s%s", ncclGetErrorString(nr),
             last && last[0] ? " - " : "", last ? last : "");
    return fail(x, nr == ncclRemoteError || nr == ncclSystemError ? -ECONNRESET : -EIO, what,
                detail);
}

static int cuda_fail(llep_xnode *x, cudaError_t ce, const char *what) {
    return fail(x, ce == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, what,
                cudaGetErrorString(ce));
}

static int xn_unique_id(llep_backend *b, uint8_t id[LLEP_XNODE_ID_BYTES]) {
    ncclUniqueId u;

    (void)b;
    if (ncclGetUniqueId(&u) != ncclSuccess)
        return -EIO;
    memcpy(id, &u, sizeof(u));
    return 0;
}

static void free_xnode(llep_xnode *x) {
    if (x->done)
        cudaEventDestroy(x->done);
    if (x->stream)
        cudaStreamDestroy(x->stream);
    free(x);
}

static int xn_open(llep_backend *b, uint32_t dev, const uint8_t id[LLEP_XNODE_ID_BYTES],
                   uint32_t nranks, uint32_t rank, llep_xnode_notify notify, void *arg,
                   llep_xnode **ret, char *err, size_t errlen) {
    int gpu = llep__cuda_device_ordinal(b, dev);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    ncclUniqueId u;
    llep_xnode *x;

    *ret = NULL;
    if (gpu < 0 || nranks < 2 || rank >= nranks || nranks > (uint32_t)INT32_MAX) {
        snprintf(err, errlen, "NCCL communicator: rank %u of %u on logical device %u: bad "
                 "arguments", rank, nranks, dev);
        return -EINVAL;
    }
    x = calloc(1, sizeof(*x));
    if (!x) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    x->gpu = gpu;
    x->nranks = nranks;
    x->rank = rank;
    x->notify = notify;
    x->arg = arg;
    cudaError_t ce = cudaSetDevice(gpu);
    if (ce == cudaSuccess)
        ce = cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking);
    if (ce == cudaSuccess)
        ce = cudaEventCreateWithFlags(&x->done, cudaEventDisableTiming);
    if (ce != cudaSuccess) {
        cuda_fail(x, ce, "cannot create its stream");
        goto out;
    }
    memcpy(&u, id, sizeof(u));
    cfg.blocking = 0;
    ncclResult_t nr = ncclCommInitRankConfig(&x->comm, (int)nranks, u, (int)rank, &cfg);
    if (nr != ncclSuccess && nr != ncclInProgress) {
        nccl_fail(x, nr, "ncclCommInitRankConfig failed");
        goto out;
    }
    x->state = XN_OPENING;
    *ret = x;
    return 0;
out:
    snprintf(err, errlen, "%s", x->err);
    int r = x->failure;
    if (x->comm)
        ncclCommAbort(x->comm);
    free_xnode(x);
    return r;
}

/* Host callback on the stream after an exchange: must not call CUDA. */
static void CUDART_CB exchanged(void *arg) {
    llep_xnode *x = arg;

    if (x->notify)
        x->notify(x->arg);
}

/* The transfers are on the stream: mark their end and have the caller woken there. */
static int enqueued(llep_xnode *x) {
    cudaError_t ce = cudaEventRecord(x->done, x->stream);

    if (ce == cudaSuccess)
        ce = cudaLaunchHostFunc(x->stream, exchanged, x);
    if (ce != cudaSuccess)
        return cuda_fail(x, ce, "cannot mark the end of an exchange");
    x->state = XN_EXCHANGING;
    return 0;
}

/* The communicator's own state: 0 (nothing pending), -EINPROGRESS or a failure. */
static int comm_state(llep_xnode *x, const char *what) {
    ncclResult_t ar;
    ncclResult_t nr = ncclCommGetAsyncError(x->comm, &ar);

    if (nr != ncclSuccess)
        return nccl_fail(x, nr, "ncclCommGetAsyncError failed");
    if (ar == ncclInProgress)
        return -EINPROGRESS;
    if (ar != ncclSuccess)
        return nccl_fail(x, ar, what);
    return 0;
}

static int xn_poll(llep_xnode *x) {
    int r;

    switch (x->state) {
    case XN_FAILED:
        return x->failure;
    case XN_UP:
        return comm_state(x, "the communicator failed");
    case XN_OPENING:
        r = comm_state(x, "joining the communicator failed");
        if (r == 0)
            x->state = XN_UP;
        return r;
    case XN_ENQUEUING:
        r = comm_state(x, "the exchange failed");
        if (r == 0)
            r = enqueued(x);
        return r < 0 ? r : -EINPROGRESS;
    case XN_EXCHANGING:
        r = comm_state(x, "the exchange failed");
        if (r < 0 && r != -EINPROGRESS)
            return r;
        cudaError_t ce = cudaEventQuery(x->done);
        if (ce == cudaErrorNotReady)
            return -EINPROGRESS;
        if (ce != cudaSuccess)
            return cuda_fail(x, ce, "the exchange failed");
        x->state = XN_UP;
        return 0;
    }
    return -EINVAL;
}

static int check_ops(llep_xnode *x, const llep_xnode_op *ops, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        if (ops[i].peer >= x->nranks || ops[i].peer == x->rank ||
            (ops[i].bytes && !ops[i].buf)) {
            snprintf(x->err, sizeof(x->err), "exchange op %u: bad peer %u or buffer", i,
                     ops[i].peer);
            return -EINVAL;
        }
    }
    return 0;
}

static int xn_exchange(llep_xnode *x, const llep_xnode_op *ops, uint32_t n) {
    if (x->state != XN_UP) {
        snprintf(x->err, sizeof(x->err), "an exchange needs an idle communicator that is up");
        return x->state == XN_FAILED ? x->failure : -EBUSY;
    }
    int r = check_ops(x, ops, n);
    if (r < 0)
        return r;
    cudaError_t ce = cudaSetDevice(x->gpu);
    if (ce != cudaSuccess)
        return cuda_fail(x, ce, "cudaSetDevice failed");
    /* One group: NCCL matches each peer's sends and receives in the order they are issued. */
    ncclResult_t nr = ncclGroupStart();
    for (uint32_t i = 0; i < n && nr == ncclSuccess; i++) {
        if (ops[i].bytes == 0)
            continue;
        nr = ops[i].recv
            ? ncclRecv(ops[i].buf, ops[i].bytes, ncclUint8, (int)ops[i].peer, x->comm, x->stream)
            : ncclSend(ops[i].buf, ops[i].bytes, ncclUint8, (int)ops[i].peer, x->comm,
                       x->stream);
        if (nr == ncclInProgress) /* non-blocking mode may say so inside a group, too */
            nr = ncclSuccess;
    }
    ncclResult_t er = ncclGroupEnd();
    if (nr == ncclSuccess)
        nr = er;
    if (nr == ncclInProgress) {
        x->state = XN_ENQUEUING;
        return 0;
    }
    if (nr != ncclSuccess)
        return nccl_fail(x, nr, "the exchange could not start");
    return enqueued(x);
}

static const char *xn_error(const llep_xnode *x) {
    return x ? x->err : "";
}

static void xn_close(llep_xnode *x) {
    if (!x)
        return;
    cudaSetDevice(x->gpu);
    /* Abort, not destroy: destroy would wait for peers that may be gone. */
    if (x->comm)
        ncclCommAbort(x->comm);
    /* The aborted kernels end; the host callback, if queued, runs before the stream drains. */
    cudaStreamSynchronize(x->stream);
    free_xnode(x);
}

const llep_xnode_ops llep__xnode_nccl = {
    .name = "nccl",
    .flags = 0,
    .unique_id = xn_unique_id,
    .open = xn_open,
    .poll = xn_poll,
    .exchange = xn_exchange,
    .error = xn_error,
    .close = xn_close,
};
