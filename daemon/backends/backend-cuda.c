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
 *             y in a client's device space is copied there from the staging by sync() too,
 *             device to device, after every stream finished without an error: a GPU failing
 *             during the combines leaves such y as it was, as it does host y.
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
#include "cuda-internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    int r = llep__cuda_enter(b, dev);
    if (r < 0)
        return r;
    gpu_ctx *g = &b->gpus[b->dev[dev].gpu];
    size_t tile;
    float *buf = chunk_tiles(g, c, &tile);
    op_time *t = llep__cuda_time_begin(b, dev);
    for (size_t r0 = 0; r0 < c->rows && r == 0; r0 += tile) {
        size_t m = c->rows - r0 < tile ? c->rows - r0 : tile;
        r = ffn_tile(b, g, c, buf, r0, m, tile);
    }
    llep__cuda_time_end(b, dev, t);
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
        remote = llep__cuda_remote_row(b, c->src[i], dv->gpu);
    if (!remote && dv->deferred)
        llep__cuda_flush_rows(b);
    if (b->error)
        return b->error;
    cudaSetDevice(g->id);
    /* y in device memory (a client's space) gets the output by a device copy, not through
     * pinned memory; both are issued or done by sync() only when everything succeeded. */
    void *ydev = llep__cuda_where(b, c->y) >= 0 ? c->y : NULL;
    char *h = llep__cuda_stage_get(b, &dv->hstage, tbytes + wbytes);
    void *hy = ydev ? h : llep__cuda_stage_get(b, &dv->hstage, ybytes);
    char *dvm = llep__cuda_stage_get(b, &g->dstage, tbytes + wbytes);
    void *dy = llep__cuda_step_block(b, dv->gpu, ybytes);
    if (!h || !hy || !dvm || !dy ||
        grow(&b->copies, &b->capcopies, b->ncopies + 1, sizeof(*b->copies)) < 0 ||
        grow(&b->ycopies, &b->capycopies, b->nycopies + 1, sizeof(*b->ycopies)) < 0)
        return cu_fail(b, -ENOMEM);
    memcpy(h, c->src, tbytes);
    memcpy(h + tbytes, c->topk_w, wbytes);
    if (remote && llep__cuda_collect_remote(b, dev, (const void **)h, slots, c->hidden * sizeof(float)) < 0)
        return b->error;
    /* sync() copies the output only when every queued operation succeeded. */
    if (ydev)
        b->ycopies[b->nycopies++] = (space_copy){ ydev, dy, ybytes, dev };
    else
        b->copies[b->ncopies++] = (host_copy){ c->y, hy, ybytes };
    deferred op = { .dev = dev, .combine = 1, .htable = h, .dtable = dvm,
                    .table_bytes = tbytes + wbytes, .dst = dy, .tokens = c->tokens,
                    .top_k = c->top_k, .hidden = c->hidden, .dtype = c->dtype,
                    .hy = ydev ? NULL : hy, .ybytes = ybytes };
    return llep__cuda_queue_op(b, &op, remote);
}

/* ---- sync, busy time ---- */

/* The combines' outputs into clients' device spaces, once every stream finished without an
 * error: a GPU failing during the combines leaves y there as it was (only an error in these
 * copies themselves could still leave it partly written). Each copy is timed as its device's
 * work, on its compute stream; returns 0 or -EIO. */
static int space_copies(cuda_backend *b) {
    int r = 0;
    uint8_t used[LLEP_SPEC_MAX_GPUS] = { 0 };

    for (size_t i = 0; i < b->nycopies && r == 0; i++) {
        const space_copy *c = &b->ycopies[i];
        gpu_ctx *g = &b->gpus[b->dev[c->dev].gpu];
        cudaSetDevice(g->id);
        op_time *t = llep__cuda_time_begin(b, c->dev);
        r = cu_check(b, cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDefault,
                                        g->compute));
        llep__cuda_time_end(b, c->dev, t);
        used[b->dev[c->dev].gpu] = 1;
    }
    for (uint32_t g = 0; g < b->ngpus; g++)
        if (used[g] && !b->gpus[g].failed) {
            cudaSetDevice(b->gpus[g].id);
            if (cu_check(b, cudaStreamSynchronize(b->gpus[g].compute)) < 0)
                r = -EIO;
        }
    return r < 0 ? -EIO : 0;
}

static int cu_sync(llep_backend *base) {
    cuda_backend *b = (cuda_backend *)base;
    int r = b->ndefer ? llep__cuda_flush_rows(b) : 0;

    if (llep__cuda_flush_xfers(b) < 0)
        r = -EIO;
    for (uint32_t g = 0; g < b->ngpus; g++) {
        if (b->gpus[g].failed)
            continue;   /* its context would report the sticky error forever */
        cudaSetDevice(b->gpus[g].id);
        if (cu_check(b, cudaStreamSynchronize(b->gpus[g].xfer)) < 0 ||
            cu_check(b, cudaStreamSynchronize(b->gpus[g].a2a)) < 0 ||
            cu_check(b, cudaStreamSynchronize(b->gpus[g].compute)) < 0)
            r = -EIO;
    }
    if (r == 0 && b->error == 0 && b->nycopies && space_copies(b) < 0)
        r = -EIO;
    b->nycopies = 0;
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
        llep__cuda_stage_release(&b->dev[d].hstage, 0);
    for (uint32_t g = 0; g < b->ngpus; g++)
        llep__cuda_stage_release(&b->gpus[g].dstage, 0);
    for (size_t i = 0; i < b->nstepblk; i++)
        llep__cuda_gpu_release(b, b->stepblk[i]);
    b->nstepblk = 0;
    if (b->error)
        r = b->error;
    b->error = 0;
    return r;
}

void llep__cuda_mark_failed(cuda_backend *b, cudaError_t e) {
    int cur = -1;

    cudaGetDevice(&cur);   /* works without a usable context */
    for (uint32_t g = 0; g < b->ngpus; g++)
        if (b->gpus[g].id == cur && !b->gpus[g].failed) {
            b->gpus[g].failed = 1;
            snprintf(b->gpus[g].why, sizeof(b->gpus[g].why), "GPU %d: %s", cur,
                     cudaGetErrorName(e));
        }
}

/* Every logical device on a failed GPU has failed with it. */
static int cu_device_failed(const llep_backend *base, uint32_t dev, char *why, size_t whylen) {
    const cuda_backend *b = (const cuda_backend *)base;

    if (dev >= base->num_devices || !b->gpus[b->dev[dev].gpu].failed)
        return 0;
    snprintf(why, whylen, "%s", b->gpus[b->dev[dev].gpu].why);
    return 1;
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
 *     by the logical devices of the GPU and by every layer (one backend instance serves all
 *     of llepd's engines, devices.h), counted whole for each device, since each one's budget
 *     is its share of the GPU. */
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
    /* The tile buffer outlives the step and serves every layer: a larger layer's may be
     * there already, and this step then uses that one. */
    uint64_t tile = 0;
    if (max_chunk > LLEP_FFN_TILE_ROWS) {
        uint64_t have = b->gpus[b->dev[dev].gpu].tile_bytes;
        tile = tile_bytes(shape, GPU_TILE_ROWS);
        tile = have > tile ? have : tile;
    }
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
            llep__cuda_stage_release(&dv->hstage, 1);
        }
    while (b->nblocks)
        llep__cuda_drop_block(b, b->nblocks - 1);
    /* Every space was released before its session went (the server's order). */
    free(b->spaces);
    free(b->view);
    for (uint32_t g = 0; b->gpus && g < b->ngpus; g++) {
        gpu_ctx *x = &b->gpus[g];
        cudaSetDevice(x->id);
        llep__cuda_stage_release(&x->dstage, 1);
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
    free(b->ycopies);
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

/* The GPU's name as the driver gives it; logical devices on one GPU share its index. */
static void cu_describe(const llep_backend *base, uint32_t dev, char *name, size_t namelen,
                        uint32_t *physical) {
    const cuda_backend *b = (const cuda_backend *)base;
    struct cudaDeviceProp prop;
    uint32_t g = dev < base->num_devices ? b->dev[dev].gpu : 0;

    if (cudaGetDeviceProperties(&prop, b->gpus[g].id) == cudaSuccess)
        snprintf(name, namelen, "%s", prop.name);
    else
        snprintf(name, namelen, "CUDA device %d", b->gpus[g].id);
    *physical = g;
}

const llep_backend_ops llep__backend_cuda = {
    .name = "cuda",
    .create = cu_create,
    .destroy = cu_destroy,
    .alloc = llep__cuda_alloc,
    .free = llep__cuda_free,
    .copy = llep__cuda_copy,
    .gather = llep__cuda_gather,
    .run_chunk = cu_run_chunk,
    .combine = cu_combine,
    .sync = cu_sync,
    .busy_ns = cu_busy_ns,
    .step_overhead = cu_step_overhead,
    .download = llep__cuda_download,
    .describe = cu_describe,
    .xnode = &llep__xnode_nccl,
    .device_failed = cu_device_failed,
    .space_import = llep__cuda_space_import,
    .space_release = llep__cuda_space_release,
    .space_wait = llep__cuda_space_wait,
    .space_signal = llep__cuda_space_signal,
    .space_copy = llep__cuda_space_copy,
};
