/* The CUDA backend: P logical devices on one or more GPUs (backend.h).
 *
 * Each GPU has one compute stream, shared by the logical devices placed on it, a transfer
 * stream for weights and an exchange stream for token rows. Sharing the compute stream
 * serialises the logical devices of a GPU, so the CUDA events around each operation measure
 * that device's own work: with --devices cuda:0x8 the busy times (and the makespan) are those
 * eight devices would have, one GPU each, which is what the benchmarks compare (DESIGN.md
 * section 7).
 *
 * Operations are issued when they are queued (the engine's pointer arrays are read then, and
 * staged in pinned memory until sync()), except gathers and combines that read rows of other
 * GPUs over NCCL, which wait for the next operation that depends on them (see below):
 *   copy      from the host: on the compute stream. From device memory: a weight transfer on
 *             the transfer streams, overlapped with the dispatch: device-to-device on one GPU,
 *             grouped ncclSend/ncclRecv between GPUs on the weight communicator
 *             (cudaMemcpyPeerAsync where NCCL could not start). The destination's next chunk
 *             or combine waits for it; gathers do not, since they never read weights.
 *   gather    rows in host memory are packed into pinned memory and copied in one transfer;
 *             rows in device memory of the same GPU are read by the gather kernel of
 *             moe-cuda.h; rows on other GPUs travel over NCCL (the dispatch paths below).
 *   chunk     gate and up projections in one strided-batched cuBLAS GEMM, the fused bias and
 *             activation kernel, the down projection, the down bias; bf16 inputs with float32
 *             accumulation, or float32 throughout (no TF32). Tiles of GPU_TILE_ROWS rows in a
 *             per-GPU buffer of the backend's own (small tiles leave cuBLAS far from its
 *             peak); where that buffer cannot be had, tiles of LLEP_FFN_TILE_ROWS rows inside
 *             the scratch the engine sized with llep__ffn_scratch_bytes().
 *   combine   the combine kernel into device staging, copied back to pinned memory and into
 *             the caller's output by sync(); result rows on other GPUs travel like a gather's.
 *
 * Rows between GPUs (LLEP_CUDA_DISPATCH=nccl, the default where the communicators started):
 * the rows a gather or combine needs from each other GPU are packed there (the gather kernel,
 * on that GPU's compute stream, into a send buffer), and the operation is deferred. The first
 * later operation that may depend on it (a chunk, a copy, a gather or combine without remote
 * rows on the same device, sync) issues every deferred pack of every device as one
 * ncclGroupStart/End of ncclSend/ncclRecv on the exchange communicator and streams, then the
 * deferred operations in the order they were queued, each reading its remote rows from its
 * receive buffer. So the engine's dispatch (or combine) of all devices is one group, and it
 * never queues behind weight transfers, which have their own communicator and streams. Each
 * send is issued in the same loop iteration as its receive, so the group is matched by
 * construction. (The engine's dispatch reads the clients' rows from host memory today: only
 * its combine crosses GPUs.)
 * LLEP_CUDA_DISPATCH=peer (and the fallback where NCCL could not start) reads remote rows
 * through peer access in the kernels instead. Logical devices on one GPU never use NCCL.
 *
 * Device memory comes from cudaMalloc through a per-GPU cache of freed blocks (the engine's
 * budgets count requested bytes, as with the CPU backend); when cudaMalloc fails the cache is
 * released and the allocation retried. Staging (pointer arrays, packed and received rows,
 * combine output) and the per-GPU tile buffer are the backend's own; step_overhead() tells
 * the engine how much of it a step may need, so that it can charge it to the budgets. */
#include "backend.h"

#include <errno.h>
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

#include "backend-select.h"
#include "moe-cuda.h"
#include "xnode.h"

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

int llep__cuda_visible_gpus(char *why, size_t whylen);
uint64_t llep__cuda_free_bytes(uint32_t gpu);
/* How this backend moves token rows between its logical devices: "nccl", "peer" (peer
 * access in the kernels) or "local" (one GPU: device-to-device). For tests and tools. */
const char *llep__cuda_dispatch_path(const llep_backend *b);
/* The CUDA ordinal of logical device dev, or -EINVAL (xnode-nccl.c). */
int llep__cuda_device_ordinal(const llep_backend *b, uint32_t dev);

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

typedef struct host_copy {
    void *dst;
    const void *src;
    size_t bytes;
} host_copy;

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
    void *hy;                /* combine: pinned copy of the output */
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
} cuda_backend;

static int grow(void **arr, size_t *cap, size_t need, size_t size) {
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *p = realloc(*arr, n * size);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = n;
    return 0;
}

/* Records the first failure; later calls see it through sync(). */
static int cu_fail(cuda_backend *b, int r) {
    if (r < 0 && b->error == 0)
        b->error = r;
    return r;
}

static int cu_check(cuda_backend *b, cudaError_t e) {
    return e == cudaSuccess ? 0 : cu_fail(b, e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO);
}

static int blas_check(cuda_backend *b, cublasStatus_t s) {
    return s == CUBLAS_STATUS_SUCCESS ? 0 : cu_fail(b, -EIO);
}

/* ---- probes for backend-select.c ---- */

int llep__cuda_visible_gpus(char *why, size_t whylen) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);

    if (e != cudaSuccess) {
        if (why && whylen)
            snprintf(why, whylen, "CUDA: %s", cudaGetErrorString(e));
        return -1;
    }
    if (n == 0) {
        if (why && whylen)
            snprintf(why, whylen, "CUDA: no device found");
        return -1;
    }
    return n;
}

uint64_t llep__cuda_free_bytes(uint32_t gpu) {
    size_t free_b = 0, total = 0;

    if (cudaSetDevice((int)gpu) != cudaSuccess || cudaMemGetInfo(&free_b, &total) != cudaSuccess)
        return 0;
    return free_b;
}

/* ---- staging ---- */

static void stage_release(stage *s, int all) {
    for (size_t i = 0; i < s->nold; i++) {
        if (s->pinned)
            cudaFreeHost(s->old[i]);
        else
            cudaFree(s->old[i]);
    }
    s->nold = 0;
    s->used = 0;
    if (all) {
        if (s->base)
            s->pinned ? (void)cudaFreeHost(s->base) : (void)cudaFree(s->base);
        s->base = NULL;
        s->cap = 0;
        free(s->old);
        s->old = NULL;
        s->capold = 0;
    }
}

static void *stage_get(cuda_backend *b, stage *s, size_t bytes) {
    size_t need = (bytes + STAGE_ALIGN - 1) & ~(size_t)(STAGE_ALIGN - 1);

    if (s->used + need > s->cap) {
        size_t cap = s->cap ? 2 * s->cap : STAGE_MIN;
        while (cap < need)
            cap *= 2;
        if (s->base) {
            if (grow((void **)&s->old, &s->capold, s->nold + 1, sizeof(*s->old)) < 0) {
                cu_fail(b, -ENOMEM);
                return NULL;
            }
            s->old[s->nold++] = s->base;
            s->base = NULL;
        }
        void *p = NULL;
        cudaError_t e = s->pinned ? cudaHostAlloc(&p, cap, cudaHostAllocPortable |
                                                  cudaHostAllocMapped)
                                  : (cudaSetDevice(s->gpu), cudaMalloc(&p, cap));
        if (e != cudaSuccess) {
            s->cap = 0;
            s->used = 0;
            cu_fail(b, -ENOMEM);
            return NULL;
        }
        s->base = p;
        s->cap = cap;
        s->used = 0;
    }
    void *r = s->base + s->used;
    s->used += need;
    return r;
}

/* ---- device memory ---- */

/* Index of the block holding p, or -1 for memory that is not ours (the host's). */
static long find_block(const cuda_backend *b, const void *p) {
    size_t lo = 0, hi = b->nblocks;
    const char *c = p;

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < b->blocks[mid].base)
            hi = mid;
        else if (c >= b->blocks[mid].base + b->blocks[mid].cap)
            lo = mid + 1;
        else
            return (long)mid;
    }
    return -1;
}

static int add_block(cuda_backend *b, char *base, size_t cap, uint32_t gpu) {
    size_t i = 0;

    if (grow((void **)&b->blocks, &b->capblocks, b->nblocks + 1, sizeof(*b->blocks)) < 0)
        return -ENOMEM;
    while (i < b->nblocks && b->blocks[i].base < base)
        i++;
    memmove(&b->blocks[i + 1], &b->blocks[i], (b->nblocks - i) * sizeof(*b->blocks));
    b->blocks[i] = (dev_block){ base, cap, gpu, 0 };
    b->nblocks++;
    return 0;
}

static void drop_block(cuda_backend *b, size_t i) {
    cudaSetDevice(b->gpus[b->blocks[i].gpu].id);
    cudaFree(b->blocks[i].base);
    memmove(&b->blocks[i], &b->blocks[i + 1], (b->nblocks - i - 1) * sizeof(*b->blocks));
    b->nblocks--;
}

/* Releases the oldest cached blocks of a GPU until it keeps at most `blocks` of them and
 * `bytes` in all (0, 0: all of them). */
static void trim_cache(cuda_backend *b, uint32_t gpu, uint32_t blocks, uint64_t bytes) {
    for (;;) {
        uint32_t n = 0;
        uint64_t total = 0;
        long oldest = -1;
        for (size_t i = 0; i < b->nblocks; i++) {
            const dev_block *k = &b->blocks[i];
            if (k->gpu != gpu || !k->cached)
                continue;
            n++;
            total += k->cap;
            if (oldest < 0 || k->cached < b->blocks[oldest].cached)
                oldest = (long)i;
        }
        if (oldest < 0 || (n <= blocks && total <= bytes))
            return;
        drop_block(b, (size_t)oldest);
    }
}

/* A block of device memory on a GPU, from the cache or cudaMalloc. */
static int gpu_alloc(cuda_backend *b, uint32_t gpu, size_t bytes, void **ret) {
    size_t cap = (bytes + 255) & ~(size_t)255;

    if (cap < bytes)
        return -EINVAL;
    if (cap == 0)
        cap = 256;
    /* The smallest cached block that fits without wasting more than half of it. */
    long best = -1;
    for (size_t i = 0; i < b->nblocks; i++) {
        const dev_block *k = &b->blocks[i];
        if (k->gpu == gpu && k->cached && k->cap >= cap && k->cap / 2 <= cap &&
            (best < 0 || k->cap < b->blocks[best].cap))
            best = (long)i;
    }
    if (best >= 0) {
        b->blocks[best].cached = 0;
        *ret = b->blocks[best].base;
        return 0;
    }
    void *p = NULL;
    cudaSetDevice(b->gpus[gpu].id);
    if (cudaMalloc(&p, cap) != cudaSuccess) {
        cudaGetLastError();
        trim_cache(b, gpu, 0, 0);
        if (cudaMalloc(&p, cap) != cudaSuccess) {
            cudaGetLastError();
            return -ENOMEM;
        }
    }
    if (add_block(b, p, cap, gpu) < 0) {
        cudaFree(p);
        return -ENOMEM;
    }
    *ret = p;
    return 0;
}

/* Returns a block to its GPU's cache. */
static void gpu_release(cuda_backend *b, void *ptr) {
    long i;

    if (!ptr || (i = find_block(b, ptr)) < 0 || b->blocks[i].base != ptr)
        return;
    b->blocks[i].cached = ++b->free_seq;
    trim_cache(b, b->blocks[i].gpu, CACHE_BLOCKS, CACHE_BYTES);
}

static int cu_alloc(llep_backend *base, uint32_t dev, size_t bytes, void **ret) {
    cuda_backend *b = (cuda_backend *)base;

    if (dev >= base->num_devices)
        return -EINVAL;
    return gpu_alloc(b, b->dev[dev].gpu, bytes, ret);
}

static void cu_free(llep_backend *base, uint32_t dev, void *ptr) {
    (void)dev;
    gpu_release((cuda_backend *)base, ptr);
}

/* Row staging on a GPU for the current step, exactly sized (it is what step_overhead()
 * counts) and handed back to the cache by sync(). */
static void *step_block(cuda_backend *b, uint32_t gpu, size_t bytes) {
    void *p = NULL;

    if (grow((void **)&b->stepblk, &b->capstepblk, b->nstepblk + 1, sizeof(*b->stepblk)) < 0 ||
        gpu_alloc(b, gpu, bytes, &p) < 0) {
        cu_fail(b, -ENOMEM);
        return NULL;
    }
    b->stepblk[b->nstepblk++] = p;
    return p;
}

/* ---- timing ---- */

/* Starts timing one operation of device d on its GPU's compute stream; returns the slot. */
static op_time *time_begin(cuda_backend *b, uint32_t d) {
    cuda_device *dv = &b->dev[d];

    if (dv->ntimes == dv->live) {
        if (grow((void **)&dv->times, &dv->captimes, dv->live + 1, sizeof(*dv->times)) < 0)
            return NULL;
        op_time *t = &dv->times[dv->live];
        if (cudaEventCreate(&t->start) != cudaSuccess)
            return NULL;
        if (cudaEventCreate(&t->end) != cudaSuccess) {
            cudaEventDestroy(t->start);
            return NULL;
        }
        dv->live++;
    }
    op_time *t = &dv->times[dv->ntimes++];
    cudaEventRecord(t->start, b->gpus[dv->gpu].compute);
    return t;
}

static void time_end(cuda_backend *b, uint32_t d, op_time *t) {
    if (t)
        cudaEventRecord(t->end, b->gpus[b->dev[d].gpu].compute);
}

/* ---- transfers ---- */

/* Issues the NCCL transfers gathered so far as one group and records, on every GPU that
 * received or sent anything, the event later chunks wait for. */
static int flush_xfers(cuda_backend *b) {
    int r = 0;

    if (b->nxfers) {
        ncclResult_t nr = ncclGroupStart();
        for (size_t i = 0; i < b->nxfers && nr == ncclSuccess; i++) {
            const xfer *x = &b->xfers[i];
            gpu_ctx *s = &b->gpus[x->src_gpu], *t = &b->gpus[x->dst_gpu];
            nr = ncclSend(x->src, x->bytes, ncclChar, (int)x->dst_gpu, s->comm, s->xfer);
            if (nr == ncclSuccess)
                nr = ncclRecv(x->dst, x->bytes, ncclChar, (int)x->src_gpu, t->comm, t->xfer);
            s->xfer_dirty = t->xfer_dirty = 1;
        }
        ncclResult_t ne = ncclGroupEnd();
        if (nr != ncclSuccess || ne != ncclSuccess)
            r = cu_fail(b, -EIO);
        b->nxfers = 0;
    }
    for (uint32_t g = 0; g < b->ngpus; g++) {
        if (!b->gpus[g].xfer_dirty)
            continue;
        cudaSetDevice(b->gpus[g].id);
        if (cu_check(b, cudaEventRecord(b->gpus[g].xfer_done, b->gpus[g].xfer)) < 0)
            r = -EIO;
        b->gpus[g].xfer_dirty = 0;
    }
    return r;
}

/* Device d's next chunk or combine runs after the weight transfers to it. */
static int wait_xfers(cuda_backend *b, uint32_t d) {
    cuda_device *dv = &b->dev[d];
    gpu_ctx *g = &b->gpus[dv->gpu];
    int r = 0;

    if (dv->wait_xfer) {
        r = flush_xfers(b);
        cudaSetDevice(g->id);
        if (r == 0)
            r = cu_check(b, cudaStreamWaitEvent(g->compute, g->xfer_done, 0));
        dv->wait_xfer = 0;
    }
    return r;
}

/* ---- rows between GPUs ---- */

/* The first operation a flush issues on a GPU that received rows waits for them; those after
 * it on the same compute stream follow it anyway. */
static int arrive(cuda_backend *b, gpu_ctx *g) {
    if (!g->has_recv)
        return 0;
    g->has_recv = 0;
    return cu_check(b, cudaStreamWaitEvent(g->compute, g->arrived, 0));
}

/* A gather through its pointer table, or a combine through its table and weights, on the
 * device's compute stream. The timed span starts before the wait for received rows, so a
 * device's busy time includes the arrival of the rows it reads from other GPUs, as it does
 * when the kernel reads them through peer access. */
static int issue_op(cuda_backend *b, const deferred *op) {
    gpu_ctx *g = &b->gpus[b->dev[op->dev].gpu];
    int r = op->combine ? wait_xfers(b, op->dev) : 0;

    if (r < 0)
        return r;
    cudaSetDevice(g->id);
    op_time *t = time_begin(b, op->dev);
    r = arrive(b, g);
    if (r == 0)
        r = cu_check(b, cudaMemcpyAsync(op->dtable, op->htable, op->table_bytes,
                                        cudaMemcpyHostToDevice, g->compute));
    if (r == 0 && !op->combine)
        r = cu_fail(b, llep__cu_gather_rows(op->dst, (const void *const *)op->dtable, op->n,
                                            op->row_bytes, g->compute));
    if (r == 0 && op->combine) {
        size_t slots = (size_t)op->tokens * op->top_k;
        const float *w = (const float *)((const char *)op->dtable + slots * sizeof(float *));
        r = cu_fail(b, llep__cu_combine((const float *const *)op->dtable, w, op->tokens,
                                        op->top_k, op->hidden, op->dst, op->dtype, g->compute));
        if (r == 0)
            r = cu_check(b, cudaMemcpyAsync(op->hy, op->dst, op->ybytes, cudaMemcpyDeviceToHost,
                                            g->compute));
    }
    time_end(b, op->dev, t);
    return r;
}

/* Whether a row in device memory lives on another GPU than `gpu`. */
static int remote_row(const cuda_backend *b, const void *row, uint32_t gpu) {
    long k = find_block(b, row);
    return k >= 0 && b->blocks[k].gpu != gpu;
}

/* Moves the rows of table[0..n) that live on other GPUs than dev's into packs, one per
 * source GPU: a pointer table and a send buffer there, a receive buffer on dev's GPU. Their
 * entries in table are rewritten to their places in the receive buffers. Returns 0 or a
 * negative errno. */
static int collect_remote(cuda_backend *b, uint32_t dev, const void **table, size_t n,
                          size_t row_bytes) {
    cuda_device *dv = &b->dev[dev];
    size_t count[LLEP_SPEC_MAX_GPUS] = { 0 }, slot[LLEP_SPEC_MAX_GPUS] = { 0 };

    for (size_t i = 0; i < n; i++)
        if (remote_row(b, table[i], dv->gpu))
            count[b->blocks[find_block(b, table[i])].gpu]++;
    for (uint32_t s = 0; s < b->ngpus; s++) {
        if (count[s] == 0)
            continue;
        if (grow((void **)&b->packs, &b->cappacks, b->npacks + 1, sizeof(*b->packs)) < 0)
            return cu_fail(b, -ENOMEM);
        pack *p = &b->packs[b->npacks];
        *p = (pack){ .src_gpu = s, .dst_gpu = dv->gpu, .row_bytes = row_bytes };
        p->htable = stage_get(b, &dv->hstage, count[s] * sizeof(*p->htable));
        p->dtable = stage_get(b, &b->gpus[s].dstage, count[s] * sizeof(*p->htable));
        p->send = step_block(b, s, count[s] * row_bytes);
        p->recv = step_block(b, dv->gpu, count[s] * row_bytes);
        if (!p->htable || !p->dtable || !p->send || !p->recv)
            return cu_fail(b, -ENOMEM);
        slot[s] = b->npacks++;
    }
    for (size_t i = 0; i < n; i++) {
        if (!remote_row(b, table[i], dv->gpu))
            continue;
        pack *p = &b->packs[slot[b->blocks[find_block(b, table[i])].gpu]];
        p->htable[p->n] = table[i];
        table[i] = (const char *)p->recv + p->n * row_bytes;
        p->n++;
    }
    return 0;
}

/* Issues the deferred operations: the packs on their source GPUs, every send and receive of
 * all of them in one NCCL group, then the operations in the order they were queued. Each
 * pack's send and its receive are issued in the same iteration, so every send in the group
 * has its receive, on the peer's communicator, in the same order between the same pair of
 * GPUs: the group is matched by construction. */
static int flush_rows(cuda_backend *b) {
    int r = b->error;

    /* Packs run after what their GPU has queued (the rows they read come from it), and each
     * GPU's exchange stream sends once its packs are done. */
    for (size_t i = 0; i < b->npacks && r == 0; i++) {
        const pack *p = &b->packs[i];
        gpu_ctx *s = &b->gpus[p->src_gpu];
        cudaSetDevice(s->id);
        r = cu_check(b, cudaMemcpyAsync(p->dtable, p->htable, p->n * sizeof(*p->htable),
                                        cudaMemcpyHostToDevice, s->compute));
        if (r == 0)
            r = cu_fail(b, llep__cu_gather_rows(p->send, (const void *const *)p->dtable, p->n,
                                                p->row_bytes, s->compute));
        s->has_packs = 1;
    }
    for (uint32_t k = 0; k < b->ngpus && r == 0; k++) {
        gpu_ctx *s = &b->gpus[k];
        if (!s->has_packs)
            continue;
        cudaSetDevice(s->id);
        r = cu_check(b, cudaEventRecord(s->packed, s->compute));
        if (r == 0)
            r = cu_check(b, cudaStreamWaitEvent(s->a2a, s->packed, 0));
    }
    if (r == 0 && b->npacks) {
        ncclResult_t nr = ncclGroupStart();
        for (size_t i = 0; i < b->npacks && nr == ncclSuccess; i++) {
            const pack *p = &b->packs[i];
            gpu_ctx *s = &b->gpus[p->src_gpu], *t = &b->gpus[p->dst_gpu];
            size_t bytes = p->n * p->row_bytes;
            nr = ncclSend(p->send, bytes, ncclChar, (int)p->dst_gpu, s->acomm, s->a2a);
            if (nr == ncclSuccess)
                nr = ncclRecv(p->recv, bytes, ncclChar, (int)p->src_gpu, t->acomm, t->a2a);
            t->has_recv = 1;
        }
        ncclResult_t ne = ncclGroupEnd();
        if (nr != ncclSuccess || ne != ncclSuccess)
            r = cu_fail(b, -EIO);
    }
    for (uint32_t k = 0; k < b->ngpus && r == 0; k++) {
        gpu_ctx *t = &b->gpus[k];
        if (!t->has_recv)
            continue;
        cudaSetDevice(t->id);
        r = cu_check(b, cudaEventRecord(t->arrived, t->a2a));
    }
    for (size_t i = 0; i < b->ndefer && r == 0; i++)
        r = issue_op(b, &b->defer[i]);
    for (uint32_t k = 0; k < b->ngpus; k++)
        b->gpus[k].has_packs = b->gpus[k].has_recv = 0;
    for (uint32_t d = 0; d < b->base.num_devices; d++)
        b->dev[d].deferred = 0;
    b->npacks = 0;
    b->ndefer = 0;
    return r;
}

/* Queues a gather or combine: now, or deferred when it reads rows over NCCL. An operation
 * issued now on a device with deferred ones first issues them, so that it does not overtake
 * them; other devices' deferred operations stay deferred (nothing orders operations of
 * different devices before sync()), so the dispatch of every device still goes in one
 * group when some devices gather only host rows. */
static int queue_op(cuda_backend *b, const deferred *op, int remote) {
    if (!remote) {
        if (b->dev[op->dev].deferred && flush_rows(b) < 0)
            return b->error;
        return issue_op(b, op);
    }
    if (grow((void **)&b->defer, &b->capdefer, b->ndefer + 1, sizeof(*b->defer)) < 0)
        return cu_fail(b, -ENOMEM);
    b->defer[b->ndefer++] = *op;
    b->dev[op->dev].deferred++;
    return 0;
}

/* Makes device d's compute stream current, after the deferred operations and the transfers
 * it waits for. */
static int enter(cuda_backend *b, uint32_t d) {
    int r;

    if (b->ndefer)
        flush_rows(b);
    if (b->error)
        return b->error;
    r = wait_xfers(b, d);
    cudaSetDevice(b->gpus[b->dev[d].gpu].id);
    return r;
}

static int cu_copy(llep_backend *base, uint32_t dev, void *dst, const void *src, size_t bytes) {
    cuda_backend *b = (cuda_backend *)base;

    if (dev >= base->num_devices)
        return -EINVAL;
    if (bytes == 0)
        return b->error;
    /* A copy may read what a deferred operation writes. */
    if (b->ndefer)
        flush_rows(b);
    if (b->error)
        return b->error;
    long sb = find_block(b, src);
    cuda_device *dv = &b->dev[dev];
    gpu_ctx *g = &b->gpus[dv->gpu];
    if (sb < 0) {
        /* From the host: part of the device's own work, in order on its stream. */
        int r = enter(b, dev);
        if (r < 0)
            return r;
        op_time *t = time_begin(b, dev);
        r = cu_check(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, g->compute));
        time_end(b, dev, t);
        return r;
    }
    /* A weight transfer: after what the source GPU has queued, on the transfer streams. */
    uint32_t sg = b->blocks[sb].gpu;
    gpu_ctx *s = &b->gpus[sg];
    int r;
    cudaSetDevice(s->id);
    r = cu_check(b, cudaEventRecord(s->compute_mark, s->compute));
    if (r == 0)
        r = cu_check(b, cudaStreamWaitEvent(s->xfer, s->compute_mark, 0));
    if (r == 0 && sg != dv->gpu) {
        cudaSetDevice(g->id);
        r = cu_check(b, cudaStreamWaitEvent(g->xfer, s->compute_mark, 0));
    }
    if (r < 0)
        return r;
    dv->wait_xfer = 1;
    if (sg == dv->gpu) {
        g->xfer_dirty = 1;
        return cu_check(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g->xfer));
    }
    if (!g->comm || !s->comm) {
        g->xfer_dirty = 1;
        return cu_check(b, cudaMemcpyPeerAsync(dst, g->id, src, s->id, bytes, g->xfer));
    }
    if (grow((void **)&b->xfers, &b->capxfers, b->nxfers + 1, sizeof(*b->xfers)) < 0)
        return cu_fail(b, -ENOMEM);
    b->xfers[b->nxfers++] = (xfer){ src, dst, bytes, sg, dv->gpu };
    return 0;
}

/* Device to host, on the device's compute stream after what it has queued (its chunk results,
 * its weights); the host memory may be pageable, so the copy completes by sync(). */
static int cu_download(llep_backend *base, uint32_t dev, void *dst, const void *src,
                       size_t bytes) {
    cuda_backend *b = (cuda_backend *)base;

    if (dev >= base->num_devices)
        return -EINVAL;
    if (bytes == 0)
        return b->error;
    int r = enter(b, dev);
    if (r < 0)
        return r;
    gpu_ctx *g = &b->gpus[b->dev[dev].gpu];
    op_time *t = time_begin(b, dev);
    r = cu_check(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g->compute));
    time_end(b, dev, t);
    return r;
}

/* ---- gather ---- */

static int cu_gather(llep_backend *base, uint32_t dev, void *dst, const void *const *src,
                     size_t n, size_t row_bytes) {
    cuda_backend *b = (cuda_backend *)base;

    if (dev >= base->num_devices)
        return -EINVAL;
    if (n == 0 || row_bytes == 0)
        return b->error;
    cuda_device *dv = &b->dev[dev];
    gpu_ctx *g = &b->gpus[dv->gpu];
    size_t host_rows = 0;
    int remote = 0;
    /* Weight transfers start now, so they run while the host packs rows. */
    if (b->nxfers)
        flush_xfers(b);
    for (size_t i = 0; i < n; i++) {
        host_rows += find_block(b, src[i]) < 0;
        remote |= b->path == PATH_NCCL && remote_row(b, src[i], dv->gpu);
    }
    if (!remote && dv->deferred)
        flush_rows(b);
    if (b->error)
        return b->error;
    cudaSetDevice(g->id);
    char *packed = host_rows ? stage_get(b, &dv->hstage, host_rows * row_bytes) : NULL;
    if (host_rows && !packed)
        return b->error;
    if (host_rows == n) {
        for (size_t i = 0; i < n; i++)
            memcpy(packed + i * row_bytes, src[i], row_bytes);
        op_time *t = time_begin(b, dev);
        int r = cu_check(b, cudaMemcpyAsync(dst, packed, n * row_bytes,
                                            cudaMemcpyHostToDevice, g->compute));
        time_end(b, dev, t);
        return r;
    }
    /* Mixed or device rows: a pointer table (host rows pointing at their packed copies in
     * mapped pinned memory) for the gather kernel. */
    const void **table = stage_get(b, &dv->hstage, n * sizeof(*table));
    void *dtable = stage_get(b, &g->dstage, n * sizeof(*table));
    if (!table || !dtable)
        return b->error;
    for (size_t i = 0, h = 0; i < n; i++) {
        if (find_block(b, src[i]) >= 0) {
            table[i] = src[i];
            continue;
        }
        char *row = packed + h++ * row_bytes;
        memcpy(row, src[i], row_bytes);
        void *mapped = NULL;
        if (cu_check(b, cudaHostGetDevicePointer(&mapped, row, 0)) < 0)
            return b->error;
        table[i] = mapped;
    }
    if (remote && collect_remote(b, dev, table, n, row_bytes) < 0)
        return b->error;
    deferred op = { .dev = dev, .htable = table, .dtable = dtable,
                    .table_bytes = n * sizeof(*table), .dst = dst, .n = n,
                    .row_bytes = row_bytes };
    return queue_op(b, &op, remote);
}

/* ---- expert chunk ---- */

static size_t floats_padded(size_t n) {
    return (n + 15) & ~(size_t)15;
}

/* Bytes of intermediates for tiles of `tile` rows: g and u (float32, [tile][H]) and, for
 * bf16, the activation in bf16. Within llep__ffn_scratch_bytes() of the same rows, so the
 * engine's scratch holds the LLEP_FFN_TILE_ROWS-row layout. */
static size_t tile_bytes(const llep_ffn_shape *s, size_t tile) {
    size_t h = s->inter;
    return (2 * floats_padded(tile * h) + (s->dtype == LLEP_DTYPE_BF16 ? tile * h / 2 + 1 : 0)) *
           sizeof(float);
}

/* The intermediates for a chunk and their tile size: the GPU's tile buffer (grown on first
 * need), or the engine's scratch. */
static float *chunk_tiles(gpu_ctx *g, const llep_expert_chunk *c, size_t *ret_tile) {
    size_t tile = c->rows < GPU_TILE_ROWS ? c->rows : GPU_TILE_ROWS;
    /* Sized for full tiles at once: each regrowth would wait for the whole GPU. */
    size_t need = tile_bytes(&c->shape, GPU_TILE_ROWS);

    if (tile > LLEP_FFN_TILE_ROWS && need > g->tile_bytes) {
        /* cudaFree waits for the GPU, so nothing still reads the old buffer. */
        cudaFree(g->tile);
        g->tile = NULL;
        g->tile_bytes = 0;
        if (cudaMalloc(&g->tile, need) == cudaSuccess) {
            g->tile_bytes = need;
        } else {
            cudaGetLastError();
            g->tile = NULL;
        }
    }
    if (tile > LLEP_FFN_TILE_ROWS && g->tile) {
        *ret_tile = tile;
        return g->tile;
    }
    *ret_tile = tile < LLEP_FFN_TILE_ROWS ? tile : LLEP_FFN_TILE_ROWS;
    return c->scratch;
}

/* One tile of m rows starting at row r0: g and u (float32, [m][H]) and the activation a (in
 * g for float32, bf16 after u) in the intermediates buf laid out for `tile` rows. */
static int ffn_tile(cuda_backend *b, gpu_ctx *g, const llep_expert_chunk *c, float *buf,
                    size_t r0, size_t m, size_t tile) {
    const llep_ffn_shape *s = &c->shape;
    int bf = s->dtype == LLEP_DTYPE_BF16;
    cudaDataType_t wt = bf ? CUDA_R_16BF : CUDA_R_32F;
    size_t d = s->hidden, h = s->inter, esz = bf ? 2 : 4;
    float *gb = buf, *ub = gb + floats_padded(tile * h);
    void *ab = bf ? (void *)(ub + floats_padded(tile * h)) : (void *)gb;
    const char *x = (const char *)c->x + r0 * d * esz;
    float *y = c->y + r0 * d;
    const float one = 1.0f, zero = 0.0f;
    long long wstride = (const char *)c->w_up - (const char *)c->w_gate;
    int r;

    /* Row-major C[m][n] = A[m][k] W[k][n] is column-major C^T = W^T A^T: W comes first. */
    if (wstride > 0 && wstride % (long long)esz == 0) {
        r = blas_check(b, cublasGemmStridedBatchedEx(
            g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)h, (int)m, (int)d, &one, c->w_gate, wt,
            (int)h, wstride / (long long)esz, x, wt, (int)d, 0, &zero, gb, CUDA_R_32F, (int)h,
            (long long)(ub - gb), 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
        r = blas_check(b, cublasGemmEx(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)h, (int)m,
                                       (int)d, &one, c->w_gate, wt, (int)h, x, wt, (int)d,
                                       &zero, gb, CUDA_R_32F, (int)h, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT));
        if (r == 0)
            r = blas_check(b, cublasGemmEx(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)h, (int)m,
                                           (int)d, &one, c->w_up, wt, (int)h, x, wt, (int)d,
                                           &zero, ub, CUDA_R_32F, (int)h, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT));
    }
    if (r == 0)
        r = cu_fail(b, llep__cu_bias_act(gb, ub, c->b_gate, c->b_up, s->dtype, m, h, s->act,
                                         s->act_alpha, s->act_limit, ab, s->dtype, g->compute));
    if (r == 0)
        r = blas_check(b, cublasGemmEx(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)d, (int)m,
                                       (int)h, &one, c->w_down, wt, (int)d, ab, wt, (int)h,
                                       &zero, y, CUDA_R_32F, (int)d, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT));
    if (r == 0 && c->b_down)
        r = cu_fail(b, llep__cu_add_bias(y, c->b_down, s->dtype, m, d, g->compute));
    return r;
}

static int cu_run_chunk(llep_backend *base, uint32_t dev, const llep_expert_chunk *c) {
    cuda_backend *b = (cuda_backend *)base;

    if (dev >= base->num_devices || !c)
        return -EINVAL;
    if (c->rows == 0)
        return b->error;
    int r = enter(b, dev);
    if (r < 0)
        return r;
    gpu_ctx *g = &b->gpus[b->dev[dev].gpu];
    size_t tile;
    float *buf = chunk_tiles(g, c, &tile);
    op_time *t = time_begin(b, dev);
    for (size_t r0 = 0; r0 < c->rows && r == 0; r0 += tile) {
        size_t m = c->rows - r0 < tile ? c->rows - r0 : tile;
        r = ffn_tile(b, g, c, buf, r0, m, tile);
    }
    time_end(b, dev, t);
    return r;
}

/* ---- combine ---- */

static int cu_combine(llep_backend *base, uint32_t dev, const llep_combine *c) {
    cuda_backend *b = (cuda_backend *)base;

    if (dev >= base->num_devices || !c)
        return -EINVAL;
    if (c->tokens == 0)
        return b->error;
    cuda_device *dv = &b->dev[dev];
    gpu_ctx *g = &b->gpus[dv->gpu];
    size_t slots = (size_t)c->tokens * c->top_k;
    size_t ybytes = (size_t)c->tokens * c->hidden * (c->dtype == LLEP_DTYPE_BF16 ? 2 : 4);
    size_t tbytes = slots * sizeof(float *), wbytes = slots * sizeof(float);
    int remote = 0;
    for (size_t i = 0; i < slots && b->path == PATH_NCCL && !remote; i++)
        remote = remote_row(b, c->src[i], dv->gpu);
    if (!remote && dv->deferred)
        flush_rows(b);
    if (b->error)
        return b->error;
    cudaSetDevice(g->id);
    char *h = stage_get(b, &dv->hstage, tbytes + wbytes);
    void *hy = stage_get(b, &dv->hstage, ybytes);
    char *dvm = stage_get(b, &g->dstage, tbytes + wbytes);
    void *dy = step_block(b, dv->gpu, ybytes);
    if (!h || !hy || !dvm || !dy ||
        grow((void **)&b->copies, &b->capcopies, b->ncopies + 1, sizeof(*b->copies)) < 0)
        return cu_fail(b, -ENOMEM);
    memcpy(h, c->src, tbytes);
    memcpy(h + tbytes, c->topk_w, wbytes);
    if (remote && collect_remote(b, dev, (const void **)h, slots, c->hidden * sizeof(float)) < 0)
        return b->error;
    /* sync() copies the output only when every queued operation succeeded. */
    b->copies[b->ncopies++] = (host_copy){ c->y, hy, ybytes };
    deferred op = { .dev = dev, .combine = 1, .htable = h, .dtable = dvm,
                    .table_bytes = tbytes + wbytes, .dst = dy, .tokens = c->tokens,
                    .top_k = c->top_k, .hidden = c->hidden, .dtype = c->dtype, .hy = hy,
                    .ybytes = ybytes };
    return queue_op(b, &op, remote);
}

/* ---- sync, busy time ---- */

static int cu_sync(llep_backend *base) {
    cuda_backend *b = (cuda_backend *)base;
    int r = b->ndefer ? flush_rows(b) : 0;

    if (flush_xfers(b) < 0)
        r = -EIO;
    for (uint32_t g = 0; g < b->ngpus; g++) {
        cudaSetDevice(b->gpus[g].id);
        if (cu_check(b, cudaStreamSynchronize(b->gpus[g].xfer)) < 0 ||
            cu_check(b, cudaStreamSynchronize(b->gpus[g].a2a)) < 0 ||
            cu_check(b, cudaStreamSynchronize(b->gpus[g].compute)) < 0)
            r = -EIO;
    }
    for (uint32_t d = 0; d < base->num_devices; d++) {
        cuda_device *dv = &b->dev[d];
        for (size_t i = 0; i < dv->ntimes; i++) {
            float ms = 0;
            if (cudaEventElapsedTime(&ms, dv->times[i].start, dv->times[i].end) == cudaSuccess)
                dv->busy_ns += (uint64_t)((double)ms * 1e6);
        }
        dv->ntimes = 0;
        dv->wait_xfer = 0;
    }
    if (b->error == 0)
        for (size_t i = 0; i < b->ncopies; i++)
            memcpy(b->copies[i].dst, b->copies[i].src, b->copies[i].bytes);
    b->ncopies = 0;
    for (uint32_t d = 0; d < base->num_devices; d++)
        stage_release(&b->dev[d].hstage, 0);
    for (uint32_t g = 0; g < b->ngpus; g++)
        stage_release(&b->gpus[g].dstage, 0);
    for (size_t i = 0; i < b->nstepblk; i++)
        gpu_release(b, b->stepblk[i]);
    b->nstepblk = 0;
    if (b->error)
        r = b->error;
    b->error = 0;
    return r;
}

static uint64_t cu_busy_ns(const llep_backend *base, uint32_t dev) {
    const cuda_backend *b = (const cuda_backend *)base;

    return dev < base->num_devices ? b->dev[dev].busy_ns : 0;
}

static uint64_t round_block(uint64_t bytes) {
    return (bytes + 255) & ~(uint64_t)255;
}

/* What one engine step makes this backend take on dev's GPU (backend.h), an upper bound:
 *   - staging of its GPU (a bump allocator that may hold up to 4 times what a step asks of
 *     it while it grows): the gather's pointer table, the combine's table and weights, and
 *     the tables of the packs of rows sent to other GPUs;
 *   - the combine's output on the device;
 *   - over NCCL: the rows dev receives (dispatch), the results it sends back, and the results
 *     its home tokens receive; each pack rounds up to a 256-byte block. The engine's
 *     dispatch reads the clients' rows from host memory, which is staged in pinned host
 *     memory, not on the device;
 *   - the GPU's tile buffer when a chunk is larger than the engine's scratch tiles: shared
 *     by the logical devices of the GPU, counted whole for each, since each one's budget is
 *     its share of the GPU. */
static uint64_t cu_step_overhead(const llep_backend *base, uint32_t dev,
                                 const llep_ffn_shape *shape, uint64_t rows,
                                 uint64_t home_tokens, uint32_t top_k, uint32_t max_chunk) {
    const cuda_backend *b = (const cuda_backend *)base;

    if (dev >= base->num_devices || !shape)
        return 0;
    uint64_t xrow = (uint64_t)shape->hidden * (shape->dtype == LLEP_DTYPE_BF16 ? 2 : 4);
    uint64_t yrow = (uint64_t)shape->hidden * sizeof(float);
    uint64_t slots = home_tokens * top_k;
    uint64_t tables = rows * sizeof(void *) + slots * (sizeof(float *) + sizeof(float));
    uint64_t blocks = round_block(home_tokens * xrow);
    if (b->path == PATH_NCCL) {
        uint64_t packs = (uint64_t)b->ngpus * 256;
        tables += rows * sizeof(void *);
        blocks += rows * xrow + rows * yrow + slots * yrow + 3 * packs;
    }
    uint64_t tile = max_chunk > LLEP_FFN_TILE_ROWS ? tile_bytes(shape, GPU_TILE_ROWS) : 0;
    return 4 * tables + 2 * STAGE_MIN + blocks + tile;
}

const char *llep__cuda_dispatch_path(const llep_backend *base) {
    static const char *const names[] = { "local", "peer", "nccl" };

    if (!base || base->ops != &llep__backend_cuda)
        return "none";
    return names[((const cuda_backend *)base)->path];
}

int llep__cuda_device_ordinal(const llep_backend *base, uint32_t dev) {
    const cuda_backend *b = (const cuda_backend *)base;

    if (!base || base->ops != &llep__backend_cuda || dev >= base->num_devices)
        return -EINVAL;
    return b->gpus[b->dev[dev].gpu].id;
}

/* ---- create, destroy ---- */

static void cu_destroy(llep_backend *base) {
    cuda_backend *b = (cuda_backend *)base;

    if (!b)
        return;
    for (uint32_t g = 0; g < b->ngpus; g++) {
        cudaSetDevice(b->gpus[g].id);
        cudaDeviceSynchronize();
    }
    if (b->dev)
        for (uint32_t d = 0; d < base->num_devices; d++) {
            cuda_device *dv = &b->dev[d];
            if (b->gpus)
                cudaSetDevice(b->gpus[dv->gpu].id);
            for (size_t i = 0; i < dv->live; i++) {
                cudaEventDestroy(dv->times[i].start);
                cudaEventDestroy(dv->times[i].end);
            }
            free(dv->times);
            stage_release(&dv->hstage, 1);
        }
    while (b->nblocks)
        drop_block(b, b->nblocks - 1);
    for (uint32_t g = 0; b->gpus && g < b->ngpus; g++) {
        gpu_ctx *x = &b->gpus[g];
        cudaSetDevice(x->id);
        stage_release(&x->dstage, 1);
        cudaFree(x->tile);
        if (x->comm)
            ncclCommDestroy(x->comm);
        if (x->acomm)
            ncclCommDestroy(x->acomm);
        if (x->blas)
            cublasDestroy(x->blas);
        if (x->xfer_done)
            cudaEventDestroy(x->xfer_done);
        if (x->compute_mark)
            cudaEventDestroy(x->compute_mark);
        if (x->packed)
            cudaEventDestroy(x->packed);
        if (x->arrived)
            cudaEventDestroy(x->arrived);
        if (x->a2a)
            cudaStreamDestroy(x->a2a);
        if (x->compute)
            cudaStreamDestroy(x->compute);
        if (x->xfer)
            cudaStreamDestroy(x->xfer);
    }
    free(b->gpus);
    free(b->dev);
    free(b->blocks);
    free(b->copies);
    free(b->xfers);
    free(b->packs);
    free(b->defer);
    free(b->stepblk);
    free(b);
}

static int gpu_init(gpu_ctx *x, int id) {
    x->id = id;
    x->dstage.gpu = id;
    if (cudaSetDevice(id) != cudaSuccess ||
        cudaStreamCreateWithFlags(&x->compute, cudaStreamNonBlocking) != cudaSuccess ||
        cudaStreamCreateWithFlags(&x->xfer, cudaStreamNonBlocking) != cudaSuccess ||
        cudaStreamCreateWithFlags(&x->a2a, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&x->xfer_done, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&x->compute_mark, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&x->packed, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&x->arrived, cudaEventDisableTiming) != cudaSuccess)
        return -ENODEV;
    if (cublasCreate(&x->blas) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(x->blas, x->compute) != CUBLAS_STATUS_SUCCESS)
        return -ENODEV;
    return 0;
}

/* Peer access for the gathers and combines that read other GPUs' rows (the peer path), and
 * two NCCL communicators over the GPUs: one for weight transfers, one for token rows, so that
 * neither queues behind the other. Without NCCL, transfers fall back to cudaMemcpyPeerAsync
 * and rows to peer access. */
static void connect_gpus(cuda_backend *b) {
    int ids[LLEP_SPEC_MAX_GPUS];
    ncclComm_t comms[LLEP_SPEC_MAX_GPUS], acomms[LLEP_SPEC_MAX_GPUS];

    for (uint32_t i = 0; i < b->ngpus; i++) {
        ids[i] = b->gpus[i].id;
        cudaSetDevice(ids[i]);
        for (uint32_t j = 0; j < b->ngpus; j++) {
            int can = 0;
            if (i != j && cudaDeviceCanAccessPeer(&can, ids[i], b->gpus[j].id) == cudaSuccess &&
                can && cudaDeviceEnablePeerAccess(b->gpus[j].id, 0) != cudaSuccess)
                cudaGetLastError();
        }
    }
    if (b->ngpus < 2 || ncclCommInitAll(comms, (int)b->ngpus, ids) != ncclSuccess)
        return;
    for (uint32_t i = 0; i < b->ngpus; i++)
        b->gpus[i].comm = comms[i];
    if (ncclCommInitAll(acomms, (int)b->ngpus, ids) != ncclSuccess)
        return;
    for (uint32_t i = 0; i < b->ngpus; i++)
        b->gpus[i].acomm = acomms[i];
}

/* Rows between GPUs over NCCL where its communicator started, unless LLEP_CUDA_DISPATCH=peer
 * asks for peer access (to compare the two); any other value keeps the default. */
static enum row_path choose_path(const cuda_backend *b) {
    const char *want = getenv("LLEP_CUDA_DISPATCH");

    if (b->ngpus < 2)
        return PATH_LOCAL;
    if (!b->gpus[0].acomm || (want && strcmp(want, "peer") == 0))
        return PATH_PEER;
    return PATH_NCCL;
}

static int cu_create(const llep_backend_options *opt, llep_backend **ret) {
    llep_device_spec spec;
    uint32_t n = 0, *gpu_of;
    cuda_backend *b;
    int visible, r;

    if (!opt || opt->num_devices == 0 || !ret)
        return -EINVAL;
    visible = llep__cuda_visible_gpus(NULL, 0);
    if (visible <= 0)
        return -ENODEV;
    r = llep__device_spec_parse(opt->devices, &spec, NULL, 0);
    if (r < 0 || spec.kind == LLEP_BACKEND_CPU)
        return -EINVAL;
    gpu_of = calloc(opt->num_devices, sizeof(*gpu_of));
    if (!gpu_of)
        return -ENOMEM;
    r = llep__device_spec_map(&spec, (uint32_t)visible, opt->num_devices, gpu_of,
                              opt->num_devices, &n, NULL, 0);
    if (r < 0) {
        free(gpu_of);
        return r;
    }
    b = calloc(1, sizeof(*b));
    if (!b) {
        free(gpu_of);
        return -ENOMEM;
    }
    b->base.ops = &llep__backend_cuda;
    b->base.num_devices = n;
    b->dev = calloc(n, sizeof(*b->dev));
    b->gpus = calloc(LLEP_SPEC_MAX_GPUS, sizeof(*b->gpus));
    if (!b->dev || !b->gpus) {
        r = -ENOMEM;
        goto fail;
    }
    /* GPUs in order of first use; each logical device points at its GPU's context. */
    for (uint32_t d = 0; d < n; d++) {
        uint32_t g = 0;
        while (g < b->ngpus && b->gpus[g].id != (int)gpu_of[d])
            g++;
        if (g == b->ngpus) {
            r = gpu_init(&b->gpus[g], (int)gpu_of[d]);
            b->ngpus++;
            if (r < 0)
                goto fail;
        }
        b->dev[d].gpu = g;
        b->dev[d].hstage.pinned = 1;
    }
    connect_gpus(b);
    b->path = choose_path(b);
    free(gpu_of);
    *ret = &b->base;
    return 0;

fail:
    free(gpu_of);
    cu_destroy(&b->base);
    return r;
}

const llep_backend_ops llep__backend_cuda = {
    .name = "cuda",
    .create = cu_create,
    .destroy = cu_destroy,
    .alloc = cu_alloc,
    .free = cu_free,
    .copy = cu_copy,
    .gather = cu_gather,
    .run_chunk = cu_run_chunk,
    .combine = cu_combine,
    .sync = cu_sync,
    .busy_ns = cu_busy_ns,
    .step_overhead = cu_step_overhead,
    .download = cu_download,
    .xnode = &llep__xnode_nccl,
};
