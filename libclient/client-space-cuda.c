/* A device space in CUDA memory (llep/space.h), through the CUDA driver API loaded at run
 * time: VMM memory (cuMemCreate) exportable as a POSIX descriptor, mapped read-write on its
 * GPU, and the two interprocess events of the ordering (docs/ARCHITECTURE.md section 5.3):
 * the client's ready event, recorded on the legacy default stream before each submission,
 * and llepd's done event, which the default stream waits for when a forward completes. */
#include "client-internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda-abi.h"

/* The driver entry points, by the names the driver exports (cuda.h maps some API names to
 * versioned ones: cuEventDestroy is cuEventDestroy_v2). */
static struct {
    void *lib;
    int status;               /* 0 loaded, < 0 why not */
    llep_cu_result (*init)(unsigned);
    llep_cu_result (*device_get)(llep_cu_device *, int);
    llep_cu_result (*primary_retain)(llep_cu_context *, llep_cu_device);
    llep_cu_result (*primary_release)(llep_cu_device);
    llep_cu_result (*ctx_get)(llep_cu_context *);
    llep_cu_result (*ctx_set)(llep_cu_context);
    llep_cu_result (*granularity)(size_t *, const llep_cu_mem_prop *, int);
    llep_cu_result (*create)(llep_cu_mem_handle *, size_t, const llep_cu_mem_prop *,
                             unsigned long long);
    llep_cu_result (*export_handle)(void *, llep_cu_mem_handle, int, unsigned long long);
    llep_cu_result (*reserve)(llep_cu_deviceptr *, size_t, size_t, llep_cu_deviceptr,
                              unsigned long long);
    llep_cu_result (*map)(llep_cu_deviceptr, size_t, size_t, llep_cu_mem_handle,
                          unsigned long long);
    llep_cu_result (*set_access)(llep_cu_deviceptr, size_t, const llep_cu_mem_access_desc *,
                                 size_t);
    llep_cu_result (*unmap)(llep_cu_deviceptr, size_t);
    llep_cu_result (*address_free)(llep_cu_deviceptr, size_t);
    llep_cu_result (*release)(llep_cu_mem_handle);
    llep_cu_result (*event_create)(llep_cu_event *, unsigned);
    llep_cu_result (*event_destroy)(llep_cu_event);
    llep_cu_result (*event_record)(llep_cu_event, llep_cu_stream);
    llep_cu_result (*ipc_get_event)(llep_cu_ipc_event_handle *, llep_cu_event);
    llep_cu_result (*ipc_open_event)(llep_cu_event *, llep_cu_ipc_event_handle);
    llep_cu_result (*stream_wait_event)(llep_cu_stream, llep_cu_event, unsigned);
} cu;

static pthread_once_t cu_once = PTHREAD_ONCE_INIT;

#define SYM(field, name) \
    ((*(void **)&cu.field = dlsym(cu.lib, name)) != NULL)

static void cu_load(void) {
    cu.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cu.lib) {
        cu.status = -ENOSYS;
        return;
    }
    bool ok = SYM(init, "cuInit") && SYM(device_get, "cuDeviceGet") &&
              SYM(primary_retain, "cuDevicePrimaryCtxRetain") &&
              SYM(primary_release, "cuDevicePrimaryCtxRelease_v2") &&
              SYM(ctx_get, "cuCtxGetCurrent") && SYM(ctx_set, "cuCtxSetCurrent") &&
              SYM(granularity, "cuMemGetAllocationGranularity") &&
              SYM(create, "cuMemCreate") &&
              SYM(export_handle, "cuMemExportToShareableHandle") &&
              SYM(reserve, "cuMemAddressReserve") && SYM(map, "cuMemMap") &&
              SYM(set_access, "cuMemSetAccess") && SYM(unmap, "cuMemUnmap") &&
              SYM(address_free, "cuMemAddressFree") && SYM(release, "cuMemRelease") &&
              SYM(event_create, "cuEventCreate") && SYM(event_destroy, "cuEventDestroy_v2") &&
              SYM(event_record, "cuEventRecord") &&
              SYM(ipc_get_event, "cuIpcGetEventHandle") &&
              SYM(ipc_open_event, "cuIpcOpenEventHandle") &&
              SYM(stream_wait_event, "cuStreamWaitEvent");
    cu.status = ok && cu.init(0) == 0 ? 0 : -ENOSYS;
}

struct llep_cuda_space {
    int gpu;
    llep_cu_device dev;
    llep_cu_context ctx;      /* the GPU's primary context, the one torch and cudart use */
    llep_cu_mem_handle handle;
    llep_cu_deviceptr base;
    size_t size;
    llep_cu_event ready, done;
};

/* Runs with s's context current and puts the caller's back. */
static llep_cu_context enter(const struct llep_cuda_space *s) {
    llep_cu_context old = NULL;

    cu.ctx_get(&old);
    cu.ctx_set(s->ctx);
    return old;
}

static int cu_fail(char *err, size_t errlen, const char *what, llep_cu_result r) {
    snprintf(err, errlen, "%s failed (CUresult %d)", what, r);
    return r == 2 ? -ENOMEM : -EIO; /* 2: CUDA_ERROR_OUT_OF_MEMORY */
}

int llep__cuda_space_export(struct llep_cuda_space *s, int *ret_fd) {
    int fd = -1;
    llep_cu_context old = enter(s);
    llep_cu_result r = cu.export_handle(&fd, s->handle,
                                        LLEP_CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    cu.ctx_set(old);
    if (r != 0)
        return -EIO;
    *ret_fd = fd;
    return 0;
}

int llep__cuda_space_alloc(uint64_t bytes, int gpu, struct llep_cuda_space **ret,
                           void **ret_base, uint64_t *ret_size, uint8_t *ready_event,
                           size_t *ready_len, char *err, size_t errlen) {
    struct llep_cuda_space *s;
    llep_cu_mem_prop prop = { .type = LLEP_CU_MEM_ALLOCATION_TYPE_PINNED,
                              .requested_handle_types =
                                  LLEP_CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                              .location = { LLEP_CU_MEM_LOCATION_TYPE_DEVICE, gpu } };
    llep_cu_ipc_event_handle h;
    llep_cu_result r;
    size_t gran = 0;
    int rc;

    pthread_once(&cu_once, cu_load);
    if (cu.status < 0) {
        snprintf(err, errlen, "the CUDA driver (libcuda.so.1) cannot be loaded or started");
        return cu.status;
    }
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->gpu = gpu;
    if ((r = cu.device_get(&s->dev, gpu)) != 0) {
        free(s);
        snprintf(err, errlen, "there is no CUDA device %d here", gpu);
        return -EINVAL;
    }
    if ((r = cu.primary_retain(&s->ctx, s->dev)) != 0) {
        free(s);
        return cu_fail(err, errlen, "cuDevicePrimaryCtxRetain", r);
    }
    llep_cu_context old = enter(s);
    llep_cu_mem_access_desc access = { .location = prop.location,
                                       .flags = LLEP_CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    if ((r = cu.granularity(&gran, &prop, LLEP_CU_MEM_ALLOC_GRANULARITY_MINIMUM)) != 0) {
        rc = cu_fail(err, errlen, "cuMemGetAllocationGranularity", r);
        goto fail;
    }
    s->size = (size_t)((bytes + gran - 1) / gran * gran);
    if ((r = cu.create(&s->handle, s->size, &prop, 0)) != 0) {
        rc = cu_fail(err, errlen, "cuMemCreate", r);
        s->handle = 0;
        goto fail;
    }
    if ((r = cu.reserve(&s->base, s->size, gran, 0, 0)) != 0) {
        rc = cu_fail(err, errlen, "cuMemAddressReserve", r);
        s->base = 0;
        goto fail;
    }
    if ((r = cu.map(s->base, s->size, 0, s->handle, 0)) != 0 ||
        (r = cu.set_access(s->base, s->size, &access, 1)) != 0) {
        rc = cu_fail(err, errlen, "mapping the space", r);
        goto fail;
    }
    if ((r = cu.event_create(&s->ready, LLEP_CU_EVENT_DISABLE_TIMING |
                                        LLEP_CU_EVENT_INTERPROCESS)) != 0 ||
        (r = cu.ipc_get_event(&h, s->ready)) != 0) {
        rc = cu_fail(err, errlen, "creating the interprocess ready event", r);
        goto fail;
    }
    cu.ctx_set(old);
    memcpy(ready_event, h.reserved, sizeof(h.reserved));
    *ready_len = sizeof(h.reserved);
    *ret_base = (void *)(uintptr_t)s->base;
    *ret_size = s->size;
    *ret = s;
    return 0;

fail:
    cu.ctx_set(old);
    llep__cuda_space_free(s);
    return rc;
}

int llep__cuda_space_done_event(struct llep_cuda_space *s, const uint8_t *handle, size_t len) {
    llep_cu_ipc_event_handle h;

    if (len == 0)
        return 0; /* llepd records none: the completion alone orders y */
    if (len != sizeof(h.reserved))
        return -EPROTO;
    memcpy(h.reserved, handle, sizeof(h.reserved));
    llep_cu_context old = enter(s);
    if (s->done) { /* a new llepd's, after a reconnect */
        cu.event_destroy(s->done);
        s->done = NULL;
    }
    llep_cu_result r = cu.ipc_open_event(&s->done, h);
    cu.ctx_set(old);
    return r == 0 ? 0 : -EIO;
}

int llep__cuda_space_ready(struct llep_cuda_space *s) {
    llep_cu_context old = enter(s);
    /* The legacy default stream waits for every blocking stream's earlier work, so the event
     * follows whatever kernel wrote x, on whichever stream of the process. */
    llep_cu_result r = cu.event_record(s->ready, NULL);
    cu.ctx_set(old);
    return r == 0 ? 0 : -EIO;
}

void llep__cuda_space_wait_done(struct llep_cuda_space *s) {
    if (!s->done)
        return;
    llep_cu_context old = enter(s);
    cu.stream_wait_event(NULL, s->done, 0);
    cu.ctx_set(old);
}

void llep__cuda_space_free(struct llep_cuda_space *s) {
    if (!s)
        return;
    llep_cu_context old = enter(s);
    if (s->ready)
        cu.event_destroy(s->ready);
    if (s->done)
        cu.event_destroy(s->done);
    if (s->base) {
        cu.unmap(s->base, s->size);
        cu.address_free(s->base, s->size);
    }
    if (s->handle)
        cu.release(s->handle);
    cu.ctx_set(old);
    if (s->ctx)
        cu.primary_release(s->dev);
    free(s);
}
