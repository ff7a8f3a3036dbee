/* What the CUDA backend's files share (backend-cuda.c: the overview, chunks, combines, sync,
 * create and the ops table; cuda-memory.c: staging, device memory and timing; cuda-rows.c:
 * weight transfers, rows between GPUs, copies and gathers). Only backends/ includes it. */
#ifndef LLEP_CUDA_INTERNAL_H
#define LLEP_CUDA_INTERNAL_H

#include "backend.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
/* nccl.h declares ncclGroupStart() and friends without (void). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop

#include "backend-cuda.h"
#include "device-spec.h"
#include "moe-cuda.h"
#include "xnode.h"
#include "grow.h"

/* Freed blocks a GPU keeps for reuse; beyond either limit the oldest are released. A step
 * frees the engine's buffers and the backend's row staging, several per logical device. */
#define CACHE_BLOCKS 64u
#define CACHE_BYTES (UINT64_C(8) << 30)
/* Staging blocks start at this size and double. */
#define STAGE_MIN (UINT64_C(1) << 20)
#define STAGE_ALIGN 256u
/* Rows per GEMM when the GPU's own tile buffer is available: large enough that cuBLAS runs
 * near its peak (at D = H = 2880, 4096 rows take 2 x 47 MB of float32 intermediates and 24 MB
 * of bf16 activations per GPU). */
#define GPU_TILE_ROWS 4096u

/* How rows of another GPU reach a gather or combine. */
enum row_path {
    PATH_LOCAL,              /* one GPU: no other GPU's rows */
    PATH_PEER,               /* read by the kernels through peer access */
    PATH_NCCL,               /* packed on their GPU, sent over NCCL, deferred (see above) */
};

/* A bump allocator over pinned host or device memory, reset by sync(). Blocks outgrown during
 * a step stay alive until then, since queued operations may still read them. */
typedef struct stage {
    char *base;
    size_t cap, used;
    char **old;
    size_t nold, capold;
    int pinned;
    int gpu;
} stage;

typedef struct gpu_ctx {
    int id;                  /* CUDA device ordinal */
    cudaStream_t compute, xfer;
    cublasHandle_t blas;
    cudaEvent_t xfer_done;   /* recorded on xfer after each batch of transfers */
    cudaEvent_t compute_mark;/* what transfers reading this GPU's memory wait for */
    int xfer_dirty;          /* transfers issued since xfer_done was last recorded */
    ncclComm_t comm;         /* weight transfers between GPUs; NULL with one GPU */
    /* Token rows between GPUs: their own stream and communicator, so that they never wait
     * for weight transfers. NULL without NCCL. */
    cudaStream_t a2a;
    ncclComm_t acomm;
    cudaEvent_t packed;      /* recorded on compute after this GPU's packs of a flush */
    cudaEvent_t arrived;     /* recorded on a2a after the group of a flush */
    int has_packs, has_recv; /* during a flush */
    stage dstage;            /* device staging */
    /* Intermediates of GPU_TILE_ROWS-row tiles, shared by the GPU's logical devices (their
     * chunks run one at a time on the compute stream); NULL until a chunk needs it. */
    void *tile;
    size_t tile_bytes;
    /* A sticky error took the GPU's context (cu_check()): its memory and work are lost, and
     * nothing is queued or synchronised there any more (devices.h, "failed devices"). */
    int failed;
    char why[64];
} gpu_ctx;

typedef struct op_time {
    cudaEvent_t start, end;
} op_time;

typedef struct cuda_device {
    uint32_t gpu;            /* index into gpus */
    int wait_xfer;           /* next chunk or combine waits for the GPU's transfers */
    op_time *times;
    size_t ntimes, captimes, live;
    uint64_t busy_ns;
    stage hstage;            /* pinned host staging */
    uint32_t deferred;       /* its deferred gathers and combines */
} cuda_device;

/* Every live cudaMalloc block, sorted by address, so a pointer can be told to be device
 * memory (and whose) or host memory. */
typedef struct dev_block {
    char *base;
    size_t cap;
    uint32_t gpu;
    uint64_t cached;         /* 0: in use; else the order it was freed in */
} dev_block;

/* A client's device space mapped here (cuda-space.c): device memory of GPU `gpu` that is
 * not a block of ours. */
typedef struct space_ent {
    char *base;
    size_t size;
    uint32_t gpu;
} space_ent;

typedef struct host_copy {
    void *dst;
    const void *src;
    size_t bytes;
} host_copy;

/* A combine's output on its device, copied to y in a client's device space by sync() once
 * every queued operation succeeded (on logical device dev's compute stream). */
typedef struct space_copy {
    void *dst;
    const void *src;
    size_t bytes;
    uint32_t dev;
} space_copy;

typedef struct xfer {
    const void *src;
    void *dst;
    size_t bytes;
    uint32_t src_gpu, dst_gpu;
} xfer;

/* Rows of one source GPU that one deferred operation reads: packed there through a pointer
 * table into `send`, received into `recv` on the operation's GPU. */
typedef struct pack {
    uint32_t src_gpu, dst_gpu;
    size_t n, row_bytes;
    const void **htable;     /* pinned: the rows on src_gpu */
    void *dtable;            /* its copy on src_gpu */
    void *send;              /* on src_gpu */
    void *recv;              /* on dst_gpu */
} pack;

/* A gather or combine waiting for its packs. Its pointer table (pinned, remote rows already
 * pointing into the receive buffers) goes to dtable, then the kernel runs. */
typedef struct deferred {
    uint32_t dev;
    int combine;             /* 0: a gather */
    const void *htable;      /* pinned: the table, for a combine followed by the weights */
    void *dtable;
    size_t table_bytes;
    void *dst;               /* gather: its rows; combine: the device output */
    size_t n, row_bytes;     /* gather */
    uint32_t tokens, top_k, hidden; /* combine */
    enum llep_dtype dtype;
    void *hy;                /* combine: pinned copy of the output; NULL: y is in a client's
                              * device space, which sync() fills from dst */
    size_t ybytes;
} deferred;

typedef struct cuda_backend {
    llep_backend base;
    cuda_device *dev;
    gpu_ctx *gpus;
    uint32_t ngpus;
    dev_block *blocks;
    size_t nblocks, capblocks;
    uint64_t free_seq;
    host_copy *copies;
    size_t ncopies, capcopies;
    space_copy *ycopies;     /* combines' outputs for clients' device spaces, until sync() */
    size_t nycopies, capycopies;
    xfer *xfers;             /* NCCL transfers waiting for the group to be issued */
    size_t nxfers, capxfers;
    enum row_path path;
    pack *packs;             /* of the deferred operations */
    size_t npacks, cappacks;
    deferred *defer;         /* in the order they were queued */
    size_t ndefer, capdefer;
    void **stepblk;          /* row staging from the block cache, released by sync() */
    size_t nstepblk, capstepblk;
    int error;               /* first error of a queued operation, until sync() */
    /* Clients' device spaces (cuda-space.c): the registry, changed on llepd's loop thread
     * under a mutex, and the turn holder's copy of it as of view_version. */
    space_ent *spaces, *view;
    size_t nspaces, capspaces, nview, capview;
    _Atomic uint64_t spaces_version;
    uint64_t view_version;
} cuda_backend;


/* Room for need elements in an array of the backend's (core's llep__grow). */
static inline int grow(void *arrp, size_t *cap, size_t need, size_t size) {
    return llep__grow(arrp, cap, need, size, 16);
}

/* Records the first failure; later calls see it through sync(). */
static inline int cu_fail(cuda_backend *b, int r) {
    if (r < 0 && b->error == 0)
        b->error = r;
    return r;
}

/* Errors after which a GPU's context is unusable until the process ends. */
static inline int cu_sticky(cudaError_t e) {
    switch (e) {
    case cudaErrorIllegalAddress: case cudaErrorLaunchFailure: case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable: case cudaErrorNvlinkUncorrectable: case cudaErrorContained:
    case cudaErrorHardwareStackError: case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress: case cudaErrorInvalidAddressSpace: case cudaErrorInvalidPc:
    case cudaErrorAssert: case cudaErrorExternalDevice:
        return 1;
    default:
        return 0;
    }
}

/* The current GPU took a sticky error: it is marked failed (backend-cuda.c). */
void llep__cuda_mark_failed(cuda_backend *b, cudaError_t e);

static inline int cu_check(cuda_backend *b, cudaError_t e) {
    if (e != cudaSuccess && cu_sticky(e))
        llep__cuda_mark_failed(b, e);
    return e == cudaSuccess ? 0 : cu_fail(b, e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO);
}

static inline int blas_check(cuda_backend *b, cublasStatus_t s) {
    return s == CUBLAS_STATUS_SUCCESS ? 0 : cu_fail(b, -EIO);
}

/* cuda-memory.c */
void llep__cuda_stage_release(stage *s, int all);
void *llep__cuda_stage_get(cuda_backend *b, stage *s, size_t bytes);
long llep__cuda_find_block(const cuda_backend *b, const void *p);
void llep__cuda_drop_block(cuda_backend *b, size_t i);
void llep__cuda_gpu_release(cuda_backend *b, void *ptr);
int llep__cuda_alloc(llep_backend *base, uint32_t dev, size_t bytes, void **ret);
void llep__cuda_free(llep_backend *base, uint32_t dev, void *ptr);
void *llep__cuda_step_block(cuda_backend *b, uint32_t gpu, size_t bytes);
op_time *llep__cuda_time_begin(cuda_backend *b, uint32_t d);
void llep__cuda_time_end(cuda_backend *b, uint32_t d, op_time *t);
/* cuda-space.c: the GPU (index into gpus) whose memory p is, a block of ours or a client's
 * space; -1 for host memory. Under the turn. And the space ops of backend.h. */
int llep__cuda_where(const cuda_backend *b, const void *p);
int llep__cuda_space_import(llep_backend *base, int fd, int gpu, uint64_t size,
                            const void *ready, size_t ready_len, void **ret_base,
                            void **ret_handle, void *done, size_t *done_len, char *err,
                            size_t errlen);
void llep__cuda_space_release(llep_backend *base, void *handle);
int llep__cuda_space_wait(llep_backend *base, void *handle);
int llep__cuda_space_signal(llep_backend *base, void *handle);
int llep__cuda_space_copy(llep_backend *base, void *handle, void *dst, const void *src,
                          size_t bytes);
/* cuda-rows.c */
int llep__cuda_flush_xfers(cuda_backend *b);
int llep__cuda_remote_row(const cuda_backend *b, const void *row, uint32_t gpu);
int llep__cuda_collect_remote(cuda_backend *b, uint32_t dev, const void **table, size_t n,
                          size_t row_bytes);
int llep__cuda_flush_rows(cuda_backend *b);
int llep__cuda_queue_op(cuda_backend *b, const deferred *op, int remote);
int llep__cuda_enter(cuda_backend *b, uint32_t d);
int llep__cuda_copy(llep_backend *base, uint32_t dev, void *dst, const void *src, size_t bytes);
int llep__cuda_download(llep_backend *base, uint32_t dev, void *dst, const void *src,
                       size_t bytes);
int llep__cuda_gather(llep_backend *base, uint32_t dev, void *dst, const void *const *src,
                     size_t n, size_t row_bytes);

#endif
