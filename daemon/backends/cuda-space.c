/* Clients' device spaces on the CUDA backend (backend.h, the space ops; docs/ARCHITECTURE.md
 * section 5.3): VMM memory a client exported as a POSIX descriptor, imported and mapped into
 * the address space of llepd for every GPU of the devices, so that gathers read x and combines
 * write y there as device memory; and the two interprocess events of the ordering.
 *
 * The driver's VMM calls come through cudaGetDriverEntryPointByVersion(), so llepd links the
 * runtime only, as before. Spaces are registered and released on the loop thread, without the
 * devices' turn, while the turn's holder classifies row pointers: the registry is kept under a
 * mutex with a version counter, and the holder reads a private copy it refreshes when the
 * version moved (llep__cuda_where()). A space is released only when no step uses it, so a
 * stale entry in that copy is never asked about. */
#include "cuda-internal.h"

#include <cuda.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>

/* The driver entry points, with the ABI of CUDA 12.0. */
static struct {
    int status;
    CUresult (*import)(CUmemGenericAllocationHandle *, void *, CUmemAllocationHandleType);
    CUresult (*granularity)(size_t *, const CUmemAllocationProp *,
                            CUmemAllocationGranularity_flags);
    CUresult (*reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
    CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                    unsigned long long);
    CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
    CUresult (*unmap)(CUdeviceptr, size_t);
    CUresult (*address_free)(CUdeviceptr, size_t);
    CUresult (*release)(CUmemGenericAllocationHandle);
} drv;

static pthread_once_t drv_once = PTHREAD_ONCE_INIT;

static int entry(const char *name, void **fn) {
    enum cudaDriverEntryPointQueryResult q;

    return cudaGetDriverEntryPointByVersion(name, fn, 12000, cudaEnableDefault, &q) ==
                   cudaSuccess && q == cudaDriverEntryPointSuccess && *fn ? 0 : -1;
}

static void drv_load(void) {
    drv.status = entry("cuMemImportFromShareableHandle", (void **)&drv.import) |
                 entry("cuMemGetAllocationGranularity", (void **)&drv.granularity) |
                 entry("cuMemAddressReserve", (void **)&drv.reserve) |
                 entry("cuMemMap", (void **)&drv.map) |
                 entry("cuMemSetAccess", (void **)&drv.set_access) |
                 entry("cuMemUnmap", (void **)&drv.unmap) |
                 entry("cuMemAddressFree", (void **)&drv.address_free) |
                 entry("cuMemRelease", (void **)&drv.release);
}

typedef struct cuda_space {
    uint32_t gpu;             /* index into b->gpus */
    CUmemGenericAllocationHandle handle;
    CUdeviceptr base;
    size_t size;
    cudaEvent_t ready;        /* the client's, opened here; NULL: none */
    cudaEvent_t done;         /* ours, interprocess */
} cuda_space;

/* ---- the registry ------------------------------------------------------------------------ */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;

static int registry_add(cuda_backend *b, const cuda_space *s) {
    int r = 0;

    pthread_mutex_lock(&registry_lock);
    if (grow(&b->spaces, &b->capspaces, b->nspaces + 1, sizeof(*b->spaces)) < 0) {
        r = -ENOMEM;
    } else {
        b->spaces[b->nspaces++] = (space_ent){ (char *)(uintptr_t)s->base, s->size, s->gpu };
        atomic_fetch_add(&b->spaces_version, 1);
    }
    pthread_mutex_unlock(&registry_lock);
    return r;
}

static void registry_remove(cuda_backend *b, const cuda_space *s) {
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < b->nspaces; i++)
        if (b->spaces[i].base == (char *)(uintptr_t)s->base) {
            b->spaces[i] = b->spaces[--b->nspaces];
            atomic_fetch_add(&b->spaces_version, 1);
            break;
        }
    pthread_mutex_unlock(&registry_lock);
}

/* The turn holder's copy of the registry, refreshed when it moved. */
static void view_refresh(cuda_backend *b) {
    pthread_mutex_lock(&registry_lock);
    if (grow(&b->view, &b->capview, b->nspaces, sizeof(*b->view)) == 0) {
        memcpy(b->view, b->spaces, b->nspaces * sizeof(*b->view));
        b->nview = b->nspaces;
        b->view_version = atomic_load(&b->spaces_version);
    }
    pthread_mutex_unlock(&registry_lock);
}

int llep__cuda_where(const cuda_backend *cb, const void *p) {
    cuda_backend *b = (cuda_backend *)cb; /* the view is the turn holder's cache */
    long k = llep__cuda_find_block(b, p);
    const char *c = p;

    if (k >= 0)
        return (int)b->blocks[k].gpu;
    if (atomic_load_explicit(&b->spaces_version, memory_order_acquire) != b->view_version)
        view_refresh(b);
    for (size_t i = 0; i < b->nview; i++)
        if (c >= b->view[i].base && c < b->view[i].base + b->view[i].size)
            return (int)b->view[i].gpu;
    return -1;
}

/* ---- the ops ------------------------------------------------------------------------------ */

static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int r, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return r;
}

static void space_free(cuda_space *s, const gpu_ctx *g) {
    cudaSetDevice(g->id);
    if (s->base) {
        drv.unmap(s->base, s->size);
        drv.address_free(s->base, s->size);
    }
    if (s->handle)
        drv.release(s->handle);
    if (s->ready)
        cudaEventDestroy(s->ready);
    if (s->done)
        cudaEventDestroy(s->done);
    free(s);
}

/* Read-write access for every GPU of the devices, so that kernels there may read x through
 * peer access; where a GPU cannot reach it, the owner's alone (rows then travel over NCCL or
 * peer copies from the owner, as any device memory of that GPU). */
static CUresult grant_access(const cuda_backend *b, const cuda_space *s) {
    CUmemAccessDesc acc[LLEP_SPEC_MAX_GPUS];
    uint32_t n = 0;

    for (uint32_t g = 0; g < b->ngpus && n < LLEP_SPEC_MAX_GPUS; g++)
        acc[n++] = (CUmemAccessDesc){ .location = { CU_MEM_LOCATION_TYPE_DEVICE, b->gpus[g].id },
                                      .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    if (drv.set_access(s->base, s->size, acc, n) == CUDA_SUCCESS)
        return CUDA_SUCCESS;
    acc[0].location.id = b->gpus[s->gpu].id;
    return drv.set_access(s->base, s->size, acc, 1);
}

int llep__cuda_space_import(llep_backend *base, int fd, int gpu, uint64_t size,
                           const void *ready, size_t ready_len, void **ret_base,
                           void **ret_handle, void *done, size_t *done_len, char *err,
                           size_t errlen) {
    cuda_backend *b = (cuda_backend *)base;
    uint32_t g = 0;
    cudaIpcEventHandle_t eh;
    size_t gran = 0;
    CUresult cr;
    int r;

    while (g < b->ngpus && b->gpus[g].id != gpu)
        g++;
    if (g == b->ngpus)
        return fail(err, errlen, -ENODEV, "a space on GPU %d: llepd's devices are on %u other "
                    "GPU(s) (the first is GPU %d)", gpu, b->ngpus, b->gpus[0].id);
    pthread_once(&drv_once, drv_load);
    if (drv.status)
        return fail(err, errlen, -EIO, "the CUDA driver has no VMM entry points here");
    if (ready_len && ready_len != sizeof(eh.reserved))
        return fail(err, errlen, -EINVAL, "ready_event has %zu bytes, a CUDA IPC event handle "
                    "%zu", ready_len, sizeof(eh.reserved));
    cuda_space *s = calloc(1, sizeof(*s));
    if (!s)
        return fail(err, errlen, -ENOMEM, "llepd is out of memory");
    s->gpu = g;
    s->size = size;
    cudaSetDevice(gpu);
    cudaFree(NULL); /* the runtime's primary context, current for the driver calls */
    CUmemAllocationProp prop = { .type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                 .requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                                 .location = { CU_MEM_LOCATION_TYPE_DEVICE, gpu } };
    if ((cr = drv.granularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM)) != CUDA_SUCCESS ||
        gran == 0) {
        r = fail(err, errlen, -EIO, "cuMemGetAllocationGranularity failed (%d)", (int)cr);
        goto out;
    }
    if (size % gran) {
        r = fail(err, errlen, -EINVAL, "a space of %" PRIu64 " bytes: CUDA maps multiples of "
                 "GPU %d's granularity, %zu bytes", size, gpu, gran);
        goto out;
    }
    if ((cr = drv.import(&s->handle, (void *)(uintptr_t)fd,
                         CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)) != CUDA_SUCCESS) {
        s->handle = 0;
        r = fail(err, errlen, -EINVAL, "the descriptor is not a CUDA allocation llepd can "
                 "import (%d)", (int)cr);
        goto out;
    }
    if ((cr = drv.reserve(&s->base, size, gran, 0, 0)) != CUDA_SUCCESS) {
        s->base = 0;
        r = fail(err, errlen, -ENOMEM, "cannot reserve %" PRIu64 " bytes of addresses (%d)",
                 size, (int)cr);
        goto out;
    }
    if ((cr = drv.map(s->base, size, 0, s->handle, 0)) != CUDA_SUCCESS) {
        drv.address_free(s->base, size);
        s->base = 0;
        r = fail(err, errlen, -EINVAL, "the allocation does not hold the %" PRIu64 " bytes "
                 "registered (%d)", size, (int)cr);
        goto out;
    }
    if ((cr = grant_access(b, s)) != CUDA_SUCCESS) {
        r = fail(err, errlen, -EIO, "cuMemSetAccess failed (%d)", (int)cr);
        goto out;
    }
    if (ready_len) {
        memcpy(eh.reserved, ready, sizeof(eh.reserved));
        if (cudaIpcOpenEventHandle(&s->ready, eh) != cudaSuccess) {
            s->ready = NULL;
            r = fail(err, errlen, -EINVAL, "cannot open the client's ready event");
            goto out;
        }
    }
    if (cudaEventCreateWithFlags(&s->done, cudaEventInterprocess | cudaEventDisableTiming) !=
            cudaSuccess ||
        cudaIpcGetEventHandle(&eh, s->done) != cudaSuccess) {
        r = fail(err, errlen, -EIO, "cannot create the done event");
        goto out;
    }
    r = registry_add(b, s);
    if (r < 0)
        fail(err, errlen, r, "llepd is out of memory");

out:
    if (r < 0) {
        space_free(s, &b->gpus[g]);
        return r;
    }
    memcpy(done, eh.reserved, sizeof(eh.reserved));
    *done_len = sizeof(eh.reserved);
    *ret_base = (void *)(uintptr_t)s->base;
    *ret_handle = s;
    return 0;
}

void llep__cuda_space_release(llep_backend *base, void *handle) {
    cuda_backend *b = (cuda_backend *)base;
    cuda_space *s = handle;

    registry_remove(b, s);
    space_free(s, &b->gpus[s->gpu]);
}

/* Every GPU's compute stream waits for the client's ready event: gathers reading x, and the
 * packs that send its rows to other GPUs, run on those streams. */
int llep__cuda_space_wait(llep_backend *base, void *handle) {
    cuda_backend *b = (cuda_backend *)base;
    cuda_space *s = handle;

    if (!s->ready)
        return 0;
    for (uint32_t g = 0; g < b->ngpus; g++) {
        cudaSetDevice(b->gpus[g].id);
        if (cudaStreamWaitEvent(b->gpus[g].compute, s->ready, 0) != cudaSuccess)
            return -EIO;
    }
    return 0;
}

/* After the step's sync(): everything is done, so the event on the owner's compute stream
 * completes at once; the client's stream waits for it all the same. */
int llep__cuda_space_signal(llep_backend *base, void *handle) {
    cuda_backend *b = (cuda_backend *)base;
    cuda_space *s = handle;
    gpu_ctx *g = &b->gpus[s->gpu];

    cudaSetDevice(g->id);
    return cudaEventRecord(s->done, g->compute) == cudaSuccess ? 0 : -EIO;
}

int llep__cuda_space_copy(llep_backend *base, void *handle, void *dst, const void *src,
                         size_t bytes) {
    cuda_backend *b = (cuda_backend *)base;
    cuda_space *s = handle;

    cudaSetDevice(b->gpus[s->gpu].id);
    if (s->ready && cudaEventSynchronize(s->ready) != cudaSuccess)
        return -EIO;
    return cudaMemcpy(dst, src, bytes, cudaMemcpyDefault) == cudaSuccess ? 0 : -EIO;
}

