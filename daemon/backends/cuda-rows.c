/* The CUDA backend's data movement: weight transfers between GPUs (NCCL or peer copies),
 * rows between GPUs for gathers and combines (deferred NCCL groups, see backend-cuda.c), copies
 * from the host and downloads, and gathers. */
#include "cuda-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- transfers ---- */

/* Issues the NCCL transfers gathered so far as one group and records, on every GPU that
 * received or sent anything, the event later chunks wait for. */
int llep__cuda_flush_xfers(cuda_backend *b) {
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
        r = llep__cuda_flush_xfers(b);
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
    op_time *t = llep__cuda_time_begin(b, op->dev);
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
        if (r == 0 && op->hy)
            r = cu_check(b, cudaMemcpyAsync(op->hy, op->dst, op->ybytes, cudaMemcpyDeviceToHost,
                                            g->compute));
    }
    llep__cuda_time_end(b, op->dev, t);
    return r;
}

/* Whether a row in device memory lives on another GPU than `gpu`. */
int llep__cuda_remote_row(const cuda_backend *b, const void *row, uint32_t gpu) {
    int g = llep__cuda_where(b, row);
    return g >= 0 && (uint32_t)g != gpu;
}

/* Moves the rows of table[0..n) that live on other GPUs than dev's into packs, one per
 * source GPU: a pointer table and a send buffer there, a receive buffer on dev's GPU. Their
 * entries in table are rewritten to their places in the receive buffers. Returns 0 or a
 * negative errno. */
int llep__cuda_collect_remote(cuda_backend *b, uint32_t dev, const void **table, size_t n,
                          size_t row_bytes) {
    cuda_device *dv = &b->dev[dev];
    size_t count[LLEP_SPEC_MAX_GPUS] = { 0 }, slot[LLEP_SPEC_MAX_GPUS] = { 0 };

    for (size_t i = 0; i < n; i++)
        if (llep__cuda_remote_row(b, table[i], dv->gpu))
            count[llep__cuda_where(b, table[i])]++;
    for (uint32_t s = 0; s < b->ngpus; s++) {
        if (count[s] == 0)
            continue;
        if (grow(&b->packs, &b->cappacks, b->npacks + 1, sizeof(*b->packs)) < 0)
            return cu_fail(b, -ENOMEM);
        pack *p = &b->packs[b->npacks];
        *p = (pack){ .src_gpu = s, .dst_gpu = dv->gpu, .row_bytes = row_bytes };
        p->htable = llep__cuda_stage_get(b, &dv->hstage, count[s] * sizeof(*p->htable));
        p->dtable = llep__cuda_stage_get(b, &b->gpus[s].dstage, count[s] * sizeof(*p->htable));
        p->send = llep__cuda_step_block(b, s, count[s] * row_bytes);
        p->recv = llep__cuda_step_block(b, dv->gpu, count[s] * row_bytes);
        if (!p->htable || !p->dtable || !p->send || !p->recv)
            return cu_fail(b, -ENOMEM);
        slot[s] = b->npacks++;
    }
    for (size_t i = 0; i < n; i++) {
        if (!llep__cuda_remote_row(b, table[i], dv->gpu))
            continue;
        pack *p = &b->packs[slot[llep__cuda_where(b, table[i])]];
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
int llep__cuda_flush_rows(cuda_backend *b) {
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
int llep__cuda_queue_op(cuda_backend *b, const deferred *op, int remote) {
    if (!remote) {
        if (b->dev[op->dev].deferred && llep__cuda_flush_rows(b) < 0)
            return b->error;
        return issue_op(b, op);
    }
    if (grow(&b->defer, &b->capdefer, b->ndefer + 1, sizeof(*b->defer)) < 0)
        return cu_fail(b, -ENOMEM);
    b->defer[b->ndefer++] = *op;
    b->dev[op->dev].deferred++;
    return 0;
}

/* Makes device d's compute stream current, after the deferred operations and the transfers
 * it waits for. */
int llep__cuda_enter(cuda_backend *b, uint32_t d) {
    int r;

    if (b->ndefer)
        llep__cuda_flush_rows(b);
    if (b->error)
        return b->error;
    if (b->gpus[b->dev[d].gpu].failed)
        return cu_fail(b, -EIO);
    r = wait_xfers(b, d);
    cudaSetDevice(b->gpus[b->dev[d].gpu].id);
    return r;
}

int llep__cuda_copy(llep_backend *base, uint32_t dev, void *dst, const void *src, size_t bytes) {
    cuda_backend *b = (cuda_backend *)base;

    if (dev >= base->num_devices)
        return -EINVAL;
    if (bytes == 0)
        return b->error;
    /* A copy may read what a deferred operation writes. */
    if (b->ndefer)
        llep__cuda_flush_rows(b);
    if (b->error)
        return b->error;
    long sb = llep__cuda_find_block(b, src);
    cuda_device *dv = &b->dev[dev];
    gpu_ctx *g = &b->gpus[dv->gpu];
    if (sb < 0) {
        /* From the host: part of the device's own work, in order on its stream. */
        int r = llep__cuda_enter(b, dev);
        if (r < 0)
            return r;
        op_time *t = llep__cuda_time_begin(b, dev);
        r = cu_check(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, g->compute));
        llep__cuda_time_end(b, dev, t);
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
    if (grow(&b->xfers, &b->capxfers, b->nxfers + 1, sizeof(*b->xfers)) < 0)
        return cu_fail(b, -ENOMEM);
    b->xfers[b->nxfers++] = (xfer){ src, dst, bytes, sg, dv->gpu };
    return 0;
}

/* Device to host, on the device's compute stream after what it has queued (its chunk results,
 * its weights); the host memory may be pageable, so the copy completes by sync(). */
int llep__cuda_download(llep_backend *base, uint32_t dev, void *dst, const void *src,
                       size_t bytes) {
    cuda_backend *b = (cuda_backend *)base;

    if (dev >= base->num_devices)
        return -EINVAL;
    if (bytes == 0)
        return b->error;
    int r = llep__cuda_enter(b, dev);
    if (r < 0)
        return r;
    gpu_ctx *g = &b->gpus[b->dev[dev].gpu];
    op_time *t = llep__cuda_time_begin(b, dev);
    r = cu_check(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g->compute));
    llep__cuda_time_end(b, dev, t);
    return r;
}

/* ---- gather ---- */

int llep__cuda_gather(llep_backend *base, uint32_t dev, void *dst, const void *const *src,
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
        llep__cuda_flush_xfers(b);
    for (size_t i = 0; i < n; i++) {
        host_rows += llep__cuda_where(b, src[i]) < 0;
        remote |= b->path == PATH_NCCL && llep__cuda_remote_row(b, src[i], dv->gpu);
    }
    if (!remote && dv->deferred)
        llep__cuda_flush_rows(b);
    if (b->error)
        return b->error;
    cudaSetDevice(g->id);
    char *packed = host_rows ? llep__cuda_stage_get(b, &dv->hstage, host_rows * row_bytes) : NULL;
    if (host_rows && !packed)
        return b->error;
    if (host_rows == n) {
        for (size_t i = 0; i < n; i++)
            memcpy(packed + i * row_bytes, src[i], row_bytes);
        op_time *t = llep__cuda_time_begin(b, dev);
        int r = cu_check(b, cudaMemcpyAsync(dst, packed, n * row_bytes,
                                            cudaMemcpyHostToDevice, g->compute));
        llep__cuda_time_end(b, dev, t);
        return r;
    }
    /* Mixed or device rows: a pointer table (host rows pointing at their packed copies in
     * mapped pinned memory) for the gather kernel. */
    const void **table = llep__cuda_stage_get(b, &dv->hstage, n * sizeof(*table));
    void *dtable = llep__cuda_stage_get(b, &g->dstage, n * sizeof(*table));
    if (!table || !dtable)
        return b->error;
    for (size_t i = 0, h = 0; i < n; i++) {
        if (llep__cuda_where(b, src[i]) >= 0) {
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
    if (remote && llep__cuda_collect_remote(b, dev, table, n, row_bytes) < 0)
        return b->error;
    deferred op = { .dev = dev, .htable = table, .dtable = dtable,
                    .table_bytes = n * sizeof(*table), .dst = dst, .n = n,
                    .row_bytes = row_bytes };
    return llep__cuda_queue_op(b, &op, remote);
}
