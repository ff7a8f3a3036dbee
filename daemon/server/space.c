/* A client's device space: checking and mapping what the client registered (space.h). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errbuf.h"
#include "space.h"

/* A memfd the client cannot shrink under us: regular, exactly `size` bytes, sealed with
 * F_SEAL_SHRINK. Without the seal a client's ftruncate would turn llepd's next read of x
 * into SIGBUS; with it, the size checked here is the size for the space's life. */
static int host_check(int fd, uint64_t size, char *err, size_t errlen) {
    struct stat st;
    int seals;

    if (fstat(fd, &st) < 0)
        return llep__errf(err, errlen, -EINVAL, "cannot stat the space's descriptor: %s",
                    strerror(errno));
    if (!S_ISREG(st.st_mode))
        return llep__errf(err, errlen, -EINVAL, "the space's descriptor is not a memfd");
    seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return llep__errf(err, errlen, -EINVAL, "the space's memfd is not sealed against shrinking "
                    "(F_SEAL_SHRINK): llepd refuses memory that can vanish under a step");
    if ((uint64_t)st.st_size != size)
        return llep__errf(err, errlen, -EINVAL, "the space's memfd has %" PRIu64 " bytes, the "
                    "registration says %" PRIu64, (uint64_t)st.st_size, size);
    return 0;
}

static int open_host(llepd_space *sp, int fd, char *err, size_t errlen) {
    int r = host_check(fd, sp->size, err, errlen);

    if (r < 0)
        return r;
    /* Back every page now: a page the kernel cannot give when a step first writes y would
     * be SIGBUS in llepd instead of a refusal here. */
    r = posix_fallocate(fd, 0, (off_t)sp->size);
    if (r != 0 && r != EOPNOTSUPP && r != EINVAL)
        return llep__errf(err, errlen, -ENOMEM, "cannot back the space's %" PRIu64 " bytes: %s",
                    sp->size, strerror(r));
    void *p = mmap(NULL, sp->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return llep__errf(err, errlen, errno == ENOMEM ? -ENOMEM : -EINVAL,
                    "cannot map the space: %s", strerror(errno));
    sp->base = p;
    sp->host = true;
    return 0;
}

int llepd_space_open(const LlepPb__SpaceRegister *m, int fd, const llep_backend_ops *ops,
                     llep_backend *backend, llepd_space **ret, char *err, size_t errlen) {
    llepd_space *sp;
    int r;

    if (m->size == 0 || m->size > LLEPD_SPACE_MAX_BYTES)
        return llep__errf(err, errlen, m->size ? -ENOMEM : -EINVAL, "a space of %" PRIu64 " bytes: "
                    "it must hold 1 to %" PRIu64, m->size, LLEPD_SPACE_MAX_BYTES);
    if (m->kind != LLEP_PB__SPACE_KIND__SPACE_HOST && m->kind != LLEP_PB__SPACE_KIND__SPACE_CUDA)
        return llep__errf(err, errlen, -EINVAL, "unknown space kind %d", (int)m->kind);
    if (m->kind == LLEP_PB__SPACE_KIND__SPACE_HOST && m->gpu != -1)
        return llep__errf(err, errlen, -EINVAL, "a host space lives on no GPU: gpu must be -1, "
                    "not %" PRId32, m->gpu);
    if (m->kind == LLEP_PB__SPACE_KIND__SPACE_CUDA && !ops->space_import)
        return llep__errf(err, errlen, -EINVAL, "a space on GPU %" PRId32 ": llepd runs the %s "
                    "backend and owns no GPU; register a host space", m->gpu, ops->name);
    if (m->ready_event.len > LLEPD_SPACE_EVENT_MAX)
        return llep__errf(err, errlen, -EINVAL, "ready_event has %zu bytes, at most %u",
                    m->ready_event.len, LLEPD_SPACE_EVENT_MAX);
    sp = calloc(1, sizeof(*sp));
    if (!sp)
        return llep__errf(err, errlen, -ENOMEM, "llepd is out of memory");
    sp->kind = m->kind;
    sp->gpu = m->gpu;
    sp->size = m->size;
    if (m->kind == LLEP_PB__SPACE_KIND__SPACE_HOST) {
        r = open_host(sp, fd, err, errlen);
    } else {
        void *base = NULL;
        r = ops->space_import(backend, fd, m->gpu, m->size, m->ready_event.data,
                              m->ready_event.len, &base, &sp->handle, sp->done_event,
                              &sp->done_len, err, errlen);
        sp->base = base;
        sp->ops = ops;
        sp->backend = backend;
    }
    if (r < 0) {
        free(sp);
        return r;
    }
    *ret = sp;
    return 0;
}

void llepd_space_close(llepd_space *sp) {
    if (!sp)
        return;
    if (sp->host)
        munmap(sp->base, sp->size);
    else if (sp->ops && sp->ops->space_release)
        sp->ops->space_release(sp->backend, sp->handle);
    free(sp);
}

int llepd_space_copy(const llepd_space *sp, void *dst, const void *src, size_t bytes) {
    if (sp->host) {
        memcpy(dst, src, bytes);
        return 0;
    }
    if (!sp->ops->space_copy)
        return -EINVAL;
    return sp->ops->space_copy(sp->backend, sp->handle, dst, src, bytes);
}
