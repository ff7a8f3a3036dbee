/* The client's device space (llep/space.h): allocating it, registering it with llepd, and
 * locating a forward's x and y in it. The CUDA allocation itself is in client-space-cuda.c,
 * built only with CUDA. */
#include "client-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "llep-config.h"

struct llep_space {
    llep_client *client;
    enum llep_space_kind kind;
    int gpu;
    uint64_t size;
    char *base;
    int fd;                        /* the host memfd, kept to register it again; else -1 */
    uint8_t ready[LLEP_SPACE_EVENT_BYTES];  /* the CUDA ready event's handle */
    size_t ready_len;
    uint64_t gen;                  /* the connection it is registered on (c->gen) */
    struct llep_cuda_space *cuda;  /* LLEP_SPACE_CUDA: client-space-cuda.c's */
};

/* A sealed memfd of `bytes`, mapped here: llepd refuses one it could see shrink. */
static int host_alloc(llep_client *c, llep_space *s, int *ret_fd) {
    int fd = memfd_create("llep-space", MFD_CLOEXEC | MFD_ALLOW_SEALING);

    if (fd < 0)
        return llep__client_fail(c, -errno, "memfd_create: %s", strerror(errno));
    if (ftruncate(fd, (off_t)s->size) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        int r = -errno;
        close(fd);
        return llep__client_fail(c, r, "cannot size and seal a memfd of %" PRIu64 " bytes: "
                                 "%s", s->size, strerror(-r));
    }
    void *p = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int r = -errno;
        close(fd);
        return llep__client_fail(c, r, "cannot map the space: %s", strerror(-r));
    }
    s->base = p;
    *ret_fd = fd;
    return 0;
}

static void space_unmap(llep_space *s) {
    if (s->kind == LLEP_SPACE_HOST && s->base)
        munmap(s->base, s->size);
    if (s->fd >= 0)
        close(s->fd);
#if LLEP_HAVE_CUDA
    if (s->cuda)
        llep__cuda_space_free(s->cuda);
#endif
    free(s);
}

/* c->space_y_done: a submission whose y lies in the space completed. llepd synchronised
 * its streams before it completed the step; the default stream also waits for its done event
 * (CUDA), so work queued after llep_wait() is ordered after the step on the GPU too. */
static void space_y_done(llep_client *c) {
#if LLEP_HAVE_CUDA
    if (c->space && c->space->cuda)
        llep__cuda_space_wait_done(c->space->cuda);
#endif
    (void)c;
}

static void space_drop(llep_client *c);

/* Whether llepd runs the CUDA backend (StatusReply.backend). */
static bool daemon_has_cuda(llep_client *c) {
    LlepPb__StatusRequest sr = LLEP_PB__STATUS_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
    bool cuda;

    req.body_case = LLEP_PB__FRAME__BODY_STATUS;
    req.status = &sr;
    if (llep__client_request(c, &req, LLEP_PB__FRAME__BODY_STATUS_REPLY, &reply) < 0)
        return false;
    cuda = reply->status_reply->backend == LLEP_PB__BACKEND__BACKEND_CUDA;
    llep__frame_free(reply);
    return cuda;
}

/* SpaceRegister with fd attached. */
static int register_space(llep_client *c, llep_space *s, int fd, const void *ready,
                          size_t ready_len, LlepPb__Frame **ret) {
    LlepPb__SpaceRegister m = LLEP_PB__SPACE_REGISTER__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    int r;

    m.kind = s->kind == LLEP_SPACE_CUDA ? LLEP_PB__SPACE_KIND__SPACE_CUDA
                                        : LLEP_PB__SPACE_KIND__SPACE_HOST;
    m.size = s->size;
    m.gpu = s->gpu;
    m.fd_count = 1;
    m.ready_event.data = (uint8_t *)ready;
    m.ready_event.len = ready_len;
    req.body_case = LLEP_PB__FRAME__BODY_SPACE_REGISTER;
    req.space_register = &m;
    c->conn.out_fds = &fd;
    c->conn.out_nfds = 1;
    r = llep__client_request(c, &req, LLEP_PB__FRAME__BODY_SPACE_REPLY, ret);
    c->conn.out_nfds = 0;
    c->conn.out_fds = NULL;
    return r;
}

/* Registers s on the current connection, with llepd's done event opened here (CUDA). */
static int space_register(llep_client *c, llep_space *s) {
    LlepPb__Frame *reply = NULL;
    int fd = s->fd, r = 0;

#if LLEP_HAVE_CUDA
    if (s->cuda && (r = llep__cuda_space_export(s->cuda, &fd)) < 0)
        return llep__client_fail(c, r, "cannot export the space's CUDA memory again");
#endif
    r = register_space(c, s, fd, s->ready, s->ready_len, &reply);
    if (fd != s->fd)
        close(fd); /* an exported CUDA handle: llepd has its own */
    if (r == 0 && reply->space_reply->size != s->size)
        r = llep__client_fail(c, -EPROTO, "llepd registered %" PRIu64 " bytes, not %" PRIu64,
                              reply->space_reply->size, s->size);
#if LLEP_HAVE_CUDA
    if (r == 0 && s->cuda &&
        (r = llep__cuda_space_done_event(s->cuda, reply->space_reply->done_event.data,
                                         reply->space_reply->done_event.len)) < 0)
        llep__client_fail(c, r, "cannot open llepd's done event");
#endif
    llep__frame_free(reply);
    if (r == 0)
        s->gen = c->gen;
    return r;
}

/* c->space_restore: after a reconnect, the space is registered with the new llepd (a failure
 * is tried again at the next call; meanwhile forwards naming the space are refused by llepd
 * with a message that says it has none). */
static void space_restore(llep_client *c) {
    if (c->space && c->space->gen != c->gen)
        space_register(c, c->space);
}

static int space_alloc_locked(llep_client *c, uint64_t bytes, int gpu, llep_space **ret) {
    llep_space *s;
    int r;

    if (c->space)
        return llep__client_fail(c, -EEXIST, "this client has a space of %" PRIu64 " bytes "
                                 "already", c->space->size);
    if (bytes == 0 || gpu < -1)
        return llep__client_fail(c, -EINVAL, "llep_space_alloc: %s",
                                 bytes ? "gpu must be -1 or a CUDA device" : "bytes is 0");
    if ((r = llep__client_usable(c)) < 0)
        return r;
    s = calloc(1, sizeof(*s));
    if (!s)
        return llep__client_fail(c, -ENOMEM, "out of memory");
    s->client = c;
    s->size = bytes;
    s->gpu = -1;
    s->fd = -1;
    s->kind = LLEP_SPACE_HOST;
#if LLEP_HAVE_CUDA
    if (gpu >= 0 && daemon_has_cuda(c)) {
        char err[LLEP_CLIENT_ERROR_MAX];
        void *base = NULL;
        r = llep__cuda_space_alloc(bytes, gpu, &s->cuda, &base, &s->size, s->ready,
                                   &s->ready_len, err, sizeof(err));
        if (r < 0) {
            free(s);
            return llep__client_fail(c, r, "cannot allocate %" PRIu64 " bytes on GPU %d: %s",
                                     bytes, gpu, err);
        }
        s->base = base;
        s->kind = LLEP_SPACE_CUDA;
        s->gpu = gpu;
    }
#else
    (void)daemon_has_cuda;
#endif
    if (s->kind == LLEP_SPACE_HOST && (r = host_alloc(c, s, &s->fd)) < 0) {
        free(s);
        return r;
    }
    r = space_register(c, s);
    if (r < 0) {
        space_unmap(s);
        return r;
    }
    c->space = s;
    c->space_y_done = space_y_done;
    c->space_drop = space_drop;
    c->space_restore = space_restore;
    *ret = s;
    return 0;
}

LLEP_EXTERN int llep_space_alloc(llep_client *c, uint64_t bytes, int gpu, llep_space **ret) {
    int r;

    if (!c || !ret)
        return -EINVAL;
    *ret = NULL;
    pthread_mutex_lock(&c->lock);
    r = space_alloc_locked(c, bytes, gpu, ret);
    pthread_mutex_unlock(&c->lock);
    return r;
}

LLEP_EXTERN void *llep_space_base(const llep_space *s) {
    return s ? s->base : NULL;
}

LLEP_EXTERN uint64_t llep_space_size(const llep_space *s) {
    return s ? s->size : 0;
}

LLEP_EXTERN enum llep_space_kind llep_space_kind(const llep_space *s) {
    return s ? s->kind : LLEP_SPACE_HOST;
}

LLEP_EXTERN int llep_space_gpu(const llep_space *s) {
    return s ? s->gpu : -1;
}

LLEP_EXTERN llep_space *llep_client_space(const llep_client *c) {
    return c ? c->space : NULL;
}

LLEP_EXTERN int llep_space_free(llep_space *s) {
    LlepPb__SpaceRelease m = LLEP_PB__SPACE_RELEASE__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
    llep_client *c;
    int r = 0;

    if (!s)
        return -EINVAL;
    c = s->client;
    pthread_mutex_lock(&c->lock);
    if (c->space_inflight) {
        r = llep__client_fail(c, -EBUSY, "%u forwards naming the space are in flight",
                              c->space_inflight);
    } else if (!c->dead && s->gen == c->gen) {
        /* A lost connection took llepd's side of the space with it. */
        req.body_case = LLEP_PB__FRAME__BODY_SPACE_RELEASE;
        req.space_release = &m;
        r = llep__client_request(c, &req, LLEP_PB__FRAME__BODY_SPACE_RELEASE_REPLY, &reply);
        llep__frame_free(reply);
        if (r == -ECONNRESET)
            r = 0;
    }
    if (r == 0) {
        c->space = NULL;
        space_unmap(s);
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* c->space_drop: the client is being freed. */
static void space_drop(llep_client *c) {
    if (c->space)
        space_unmap(c->space);
    c->space = NULL;
}

/* Whether [p, p + bytes) lies in the space: 1 wholly, 0 not at all, -1 partly. */
static int inside(const llep_space *s, const void *p, uint64_t bytes, uint64_t *ret_off) {
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)s->base;

    if (a + bytes <= b || a >= b + s->size)
        return 0;
    if (a < b || a - b > s->size - bytes)
        return -1;
    *ret_off = a - b;
    return 1;
}

int llep__space_locate(llep_client *c, const llep_layer *l, const void *x,
                       enum llep_dtype x_type, const void *y, enum llep_dtype y_type,
                       uint64_t bytes, uint32_t *ret_flags, uint64_t *ret_x, uint64_t *ret_y) {
    llep_space *s = c->space;
    int in_x, in_y;

    *ret_flags = 0;
    if (!s)
        return 0;
    in_x = inside(s, x, bytes, ret_x);
    in_y = inside(s, y, bytes, ret_y);
    if (in_x < 0 || in_y < 0)
        return llep__client_fail(c, -EINVAL, "forward on layer '%s': %s lies partly outside "
                                 "the client's space", l->name, in_x < 0 ? "x" : "y");
    if ((in_x && x_type != l->desc.dtype) || (in_y && y_type != l->desc.dtype))
        return llep__client_fail(c, -EINVAL, "forward on layer '%s': %s in the space must be "
                                 "in the layer's dtype (llepd reads it in place)", l->name,
                                 in_x && x_type != l->desc.dtype ? "x" : "y");
    *ret_flags = (in_x ? LLEP_SQE_X_SPACE : 0) | (in_y ? LLEP_SQE_Y_SPACE : 0);
    /* Not registered on this connection yet (its registration after a reconnect failed). */
    if (*ret_flags && s->gen != c->gen)
        return space_register(c, c->space);
    return 0;
}

int llep__space_before_submit(llep_client *c) {
#if LLEP_HAVE_CUDA
    if (c->space && c->space->cuda)
        return llep__cuda_space_ready(c->space->cuda);
#endif
    (void)c;
    return 0;
}

