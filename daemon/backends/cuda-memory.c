/* The CUDA backend's memory: pinned and device staging for a step, device memory through a
 * per-GPU cache of freed blocks, and the CUDA events that time each operation. */
#include "cuda-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- staging ---- */

void llep__cuda_stage_release(stage *s, int all) {
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

void *llep__cuda_stage_get(cuda_backend *b, stage *s, size_t bytes) {
    size_t need = (bytes + STAGE_ALIGN - 1) & ~(size_t)(STAGE_ALIGN - 1);

    if (s->used + need > s->cap) {
        size_t cap = s->cap ? 2 * s->cap : STAGE_MIN;
        while (cap < need)
            cap *= 2;
        if (s->base) {
            if (grow(&s->old, &s->capold, s->nold + 1, sizeof(*s->old)) < 0) {
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
long llep__cuda_find_block(const cuda_backend *b, const void *p) {
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

    if (grow(&b->blocks, &b->capblocks, b->nblocks + 1, sizeof(*b->blocks)) < 0)
        return -ENOMEM;
    while (i < b->nblocks && b->blocks[i].base < base)
        i++;
    memmove(&b->blocks[i + 1], &b->blocks[i], (b->nblocks - i) * sizeof(*b->blocks));
    b->blocks[i] = (dev_block){ base, cap, gpu, 0 };
    b->nblocks++;
    return 0;
}

void llep__cuda_drop_block(cuda_backend *b, size_t i) {
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
        llep__cuda_drop_block(b, (size_t)oldest);
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
void llep__cuda_gpu_release(cuda_backend *b, void *ptr) {
    long i;

    if (!ptr || (i = llep__cuda_find_block(b, ptr)) < 0 || b->blocks[i].base != ptr)
        return;
    b->blocks[i].cached = ++b->free_seq;
    trim_cache(b, b->blocks[i].gpu, CACHE_BLOCKS, CACHE_BYTES);
}

int llep__cuda_alloc(llep_backend *base, uint32_t dev, size_t bytes, void **ret) {
    cuda_backend *b = (cuda_backend *)base;

    if (dev >= base->num_devices)
        return -EINVAL;
    if (b->gpus[b->dev[dev].gpu].failed)
        return -EIO;
    return gpu_alloc(b, b->dev[dev].gpu, bytes, ret);
}

void llep__cuda_free(llep_backend *base, uint32_t dev, void *ptr) {
    (void)dev;
    llep__cuda_gpu_release((cuda_backend *)base, ptr);
}

/* Row staging on a GPU for the current step, exactly sized (it is what step_overhead()
 * counts) and handed back to the cache by sync(). */
void *llep__cuda_step_block(cuda_backend *b, uint32_t gpu, size_t bytes) {
    void *p = NULL;

    if (grow(&b->stepblk, &b->capstepblk, b->nstepblk + 1, sizeof(*b->stepblk)) < 0 ||
        gpu_alloc(b, gpu, bytes, &p) < 0) {
        cu_fail(b, -ENOMEM);
        return NULL;
    }
    b->stepblk[b->nstepblk++] = p;
    return p;
}

/* ---- timing ---- */

/* Starts timing one operation of device d on its GPU's compute stream; returns the slot. */
op_time *llep__cuda_time_begin(cuda_backend *b, uint32_t d) {
    cuda_device *dv = &b->dev[d];

    if (dv->ntimes == dv->live) {
        if (grow(&dv->times, &dv->captimes, dv->live + 1, sizeof(*dv->times)) < 0)
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

void llep__cuda_time_end(cuda_backend *b, uint32_t d, op_time *t) {
    if (t)
        cudaEventRecord(t->end, b->gpus[b->dev[d].gpu].compute);
}
