/* The per-client shared-memory arena and its two SPSC rings (layout in ring.h). */
#include "ring.h"
#include "errbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Seals every arena carries. SHRINK is the one a mapper insists on: without it the peer could
 * truncate the memfd and turn our next access into SIGBUS. */
#define ARENA_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

static bool is_pow2(uint32_t v) {
    return v && !(v & (v - 1));
}

/* Rounds v up to a multiple of the power of two a; false on overflow. */
static bool align_up(uint64_t v, uint64_t a, uint64_t *ret) {
    if (v > UINT64_MAX - (a - 1))
        return false;
    *ret = (v + a - 1) & ~(a - 1);
    return true;
}

int llep__arena_layout(uint64_t tensor_bytes, uint32_t sq_entries, uint32_t cq_entries,
                       llep_arena_geom *ret) {
    llep_arena_geom g = { 0 };
    uint64_t end, tensor;

    if (sq_entries == 0)
        sq_entries = LLEP_RING_DEFAULT_ENTRIES;
    if (cq_entries == 0)
        cq_entries = LLEP_RING_DEFAULT_ENTRIES;
    if (!is_pow2(sq_entries) || sq_entries > LLEP_RING_MAX_ENTRIES ||
        !is_pow2(cq_entries) || cq_entries > LLEP_RING_MAX_ENTRIES)
        return -EINVAL;
    if (tensor_bytes > LLEP_ARENA_MAX_SIZE)
        return -EINVAL;

    /* The ring parts are bounded by LLEP_RING_MAX_ENTRIES, so only the tensor space can
     * overflow, and it was bounded just above. */
    g.sq_entries = sq_entries;
    g.cq_entries = cq_entries;
    g.sq_offset = 2 * LLEP_CACHELINE;
    end = g.sq_offset + sizeof(llep_ring_ctl) + (uint64_t)sq_entries * sizeof(llep_sqe);
    (void)align_up(end, LLEP_CACHELINE, &g.cq_offset);
    end = g.cq_offset + sizeof(llep_ring_ctl) + (uint64_t)cq_entries * sizeof(llep_cqe);
    (void)align_up(end, LLEP_ARENA_TENSOR_ALIGN, &g.tensor_offset);
    (void)align_up(tensor_bytes, LLEP_ARENA_TENSOR_ALIGN, &tensor);
    g.tensor_size = tensor;
    g.arena_size = g.tensor_offset + tensor;
    if (g.arena_size > LLEP_ARENA_MAX_SIZE)
        return -EINVAL;
    *ret = g;
    return 0;
}

static bool geom_equal(const llep_arena_geom *a, const llep_arena_geom *b) {
    return a->arena_size == b->arena_size && a->sq_offset == b->sq_offset &&
           a->cq_offset == b->cq_offset && a->tensor_offset == b->tensor_offset &&
           a->tensor_size == b->tensor_size && a->sq_entries == b->sq_entries &&
           a->cq_entries == b->cq_entries;
}

static void ring_setup(llep_ring *r, uint8_t *base, uint64_t offset, uint32_t entries,
                       uint32_t entry_size) {
    r->ctl = (llep_ring_ctl *)(base + offset);
    r->slots = base + offset + sizeof(llep_ring_ctl);
    r->entries = entries;
    r->mask = entries - 1;
    r->entry_size = entry_size;
    /* A fresh arena has both indices at 0; a mapped one continues where it stands, and the
     * consistency of the two is checked on every operation anyway. */
    r->prod = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
    r->cons = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
}

static void arena_setup(llep_arena *a, uint8_t *base, int fd, const llep_arena_geom *g) {
    a->base = base;
    a->fd = fd;
    a->geom = *g;
    ring_setup(&a->sq, base, g->sq_offset, g->sq_entries, sizeof(llep_sqe));
    ring_setup(&a->cq, base, g->cq_offset, g->cq_entries, sizeof(llep_cqe));
}

int llep__arena_create(const llep_arena_geom *g, llep_arena *ret) {
    llep_arena_geom check;
    llep_arena_header *h;
    void *base;
    int fd, r;

    /* Only canonical layouts exist, so a mapper can recompute and compare them. */
    r = llep__arena_layout(g->tensor_size, g->sq_entries, g->cq_entries, &check);
    if (r < 0)
        return r;
    if (!geom_equal(&check, g))
        return -EINVAL;

    fd = memfd_create("llep-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)g->arena_size) < 0 || fcntl(fd, F_ADD_SEALS, ARENA_SEALS) < 0) {
        r = -errno;
        goto fail_fd;
    }
    base = mmap(NULL, g->arena_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        r = -errno;
        goto fail_fd;
    }

    /* ftruncate gave zeroed pages, so the ring control blocks start empty. */
    h = base;
    *h = (llep_arena_header){
        .magic = LLEP_ARENA_MAGIC,
        .version = LLEP_RING_VERSION,
        .header_size = sizeof(llep_arena_header),
        .arena_size = g->arena_size,
        .sq_offset = g->sq_offset,
        .cq_offset = g->cq_offset,
        .tensor_offset = g->tensor_offset,
        .tensor_size = g->tensor_size,
        .sq_entries = g->sq_entries,
        .cq_entries = g->cq_entries,
        .sqe_size = sizeof(llep_sqe),
        .cqe_size = sizeof(llep_cqe),
    };
    arena_setup(ret, base, fd, g);
    return 0;

fail_fd:
    close(fd);
    return r;
}

/* Validates a private copy of a header against the canonical layout for its own sizes. */
static int header_check(const llep_arena_header *h, uint64_t file_size, llep_arena_geom *ret,
                        char *err, size_t errlen) {
    llep_arena_geom g;

    if (h->magic != LLEP_ARENA_MAGIC) {
        llep__errf(err, errlen, 0, "arena header has bad magic 0x%016" PRIx64, h->magic);
        return -EPROTO;
    }
    if (h->version != LLEP_RING_VERSION) {
        llep__errf(err, errlen, 0, "arena ring version %" PRIu32 ", this build speaks %u",
                  h->version, LLEP_RING_VERSION);
        return -EPROTO;
    }
    if (h->header_size != sizeof(*h) || h->sqe_size != sizeof(llep_sqe) ||
        h->cqe_size != sizeof(llep_cqe)) {
        llep__errf(err, errlen, 0, "arena header/entry sizes %" PRIu32 "/%" PRIu32 "/%" PRIu32
                  ", expected %zu/%zu/%zu", h->header_size, h->sqe_size, h->cqe_size,
                  sizeof(*h), sizeof(llep_sqe), sizeof(llep_cqe));
        return -EPROTO;
    }
    if (h->arena_size != file_size) {
        llep__errf(err, errlen, 0, "arena header says %" PRIu64 " bytes, the memfd has %" PRIu64,
                  h->arena_size, file_size);
        return -EPROTO;
    }
    if (llep__arena_layout(h->tensor_size, h->sq_entries, h->cq_entries, &g) < 0 ||
        g.arena_size != h->arena_size || g.sq_offset != h->sq_offset ||
        g.cq_offset != h->cq_offset || g.tensor_offset != h->tensor_offset ||
        g.tensor_size != h->tensor_size) {
        llep__errf(err, errlen, 0, "arena layout is inconsistent (size %" PRIu64 ", rings %" PRIu32 "/%" PRIu32
                  " at %" PRIu64 "/%" PRIu64 ", tensors %" PRIu64 "+%" PRIu64 ")",
                  h->arena_size, h->sq_entries, h->cq_entries, h->sq_offset, h->cq_offset,
                  h->tensor_offset, h->tensor_size);
        return -EPROTO;
    }
    *ret = g;
    return 0;
}

int llep__arena_map(int fd, const llep_arena_geom *expected, llep_arena *ret,
                    char *err, size_t errlen) {
    llep_arena_header h;
    llep_arena_geom g;
    struct stat st;
    uint64_t size;
    void *base;
    int seals, r;

    if (fd < 0 || !ret) {
        llep__errf(err, errlen, 0, "no arena descriptor");
        return -EINVAL;
    }
    if (fstat(fd, &st) < 0) {
        r = -errno;
        llep__errf(err, errlen, 0, "cannot stat arena: %s", strerror(-r));
        return r;
    }
    if (!S_ISREG(st.st_mode)) {
        llep__errf(err, errlen, 0, "arena descriptor is not a memfd");
        return -EINVAL;
    }
    if (st.st_size < (off_t)sizeof(h) || (uint64_t)st.st_size > LLEP_ARENA_MAX_SIZE) {
        llep__errf(err, errlen, 0, "arena of %jd bytes is outside [%zu, %" PRIu64 "]",
                  (intmax_t)st.st_size, sizeof(h), LLEP_ARENA_MAX_SIZE);
        return -EINVAL;
    }
    size = (uint64_t)st.st_size;
    seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        llep__errf(err, errlen, 0, "arena is not sealed against shrinking");
        return -EINVAL;
    }
    if (expected && expected->arena_size != size) {
        llep__errf(err, errlen, 0, "arena memfd has %" PRIu64 " bytes, expected %" PRIu64, size,
                  expected->arena_size);
        return -EPROTO;
    }

    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        r = -errno;
        llep__errf(err, errlen, 0, "cannot map arena: %s", strerror(-r));
        return r;
    }
    /* Judge a snapshot: the peer may be rewriting the shared header while we look. */
    memcpy(&h, base, sizeof(h));
    r = header_check(&h, size, &g, err, errlen);
    if (r == 0 && expected && !geom_equal(expected, &g)) {
        llep__errf(err, errlen, 0, "arena layout differs from the one announced in ArenaReply");
        r = -EPROTO;
    }
    if (r < 0) {
        munmap(base, size);
        return r;
    }
    arena_setup(ret, base, -1, &g);
    return 0;
}

void llep__arena_unmap(llep_arena *a) {
    if (a->base)
        munmap(a->base, a->geom.arena_size);
    if (a->fd >= 0)
        close(a->fd);
    memset(a, 0, sizeof(*a));
    a->fd = -1;
}

static int ring_push(llep_ring *r, const void *e) {
    uint32_t head = r->prod;
    uint32_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
    uint32_t used = head - tail;

    if (used > r->entries)
        return -EPROTO;
    if (used == r->entries)
        return -EAGAIN;
    memcpy(r->slots + (size_t)(head & r->mask) * r->entry_size, e, r->entry_size);
    r->prod = head + 1;
    atomic_store_explicit(&r->ctl->head, head + 1, memory_order_release);
    return 0;
}

static int ring_pop(llep_ring *r, void *ret) {
    uint32_t tail = r->cons;
    uint32_t head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
    uint32_t used = head - tail;

    if (used == 0)
        return -EAGAIN;
    if (used > r->entries)
        return -EPROTO;
    memcpy(ret, r->slots + (size_t)(tail & r->mask) * r->entry_size, r->entry_size);
    r->cons = tail + 1;
    atomic_store_explicit(&r->ctl->tail, tail + 1, memory_order_release);
    return 0;
}

int llep__sq_push(llep_arena *a, const llep_sqe *e) {
    return ring_push(&a->sq, e);
}

int llep__sq_pop(llep_arena *a, llep_sqe *ret) {
    return ring_pop(&a->sq, ret);
}

int llep__cq_push(llep_arena *a, const llep_cqe *e) {
    return ring_push(&a->cq, e);
}

int llep__cq_pop(llep_arena *a, llep_cqe *ret) {
    return ring_pop(&a->cq, ret);
}

int llep__ring_pending(const llep_ring *r) {
    uint32_t used = atomic_load_explicit(&r->ctl->head, memory_order_acquire) - r->cons;

    return used > r->entries ? -EPROTO : (int)used;
}

bool llep__ring_prepare_sleep(llep_ring *r) {
    atomic_store_explicit(&r->ctl->sleeping, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&r->ctl->head, memory_order_seq_cst) != r->cons) {
        atomic_store_explicit(&r->ctl->sleeping, 0, memory_order_relaxed);
        return false;
    }
    return true;
}

void llep__ring_finish_sleep(llep_ring *r) {
    atomic_store_explicit(&r->ctl->sleeping, 0, memory_order_relaxed);
}

bool llep__ring_need_wake(llep_ring *r) {
    /* Orders the head store of the push before this load; pairs with prepare_sleep. */
    atomic_thread_fence(memory_order_seq_cst);
    return atomic_load_explicit(&r->ctl->sleeping, memory_order_seq_cst) != 0;
}

int llep__eventfd_open(bool nonblock) {
    int fd = eventfd(0, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0));

    return fd < 0 ? -errno : fd;
}

int llep__eventfd_signal(int fd) {
    uint64_t one = 1;

    for (;;) {
        if (write(fd, &one, sizeof(one)) == (ssize_t)sizeof(one))
            return 0;
        if (errno == EINTR)
            continue;
        /* The counter is saturated: the consumer has plenty of wake-ups pending already. */
        if (errno == EAGAIN)
            return 0;
        return -errno;
    }
}

int llep__eventfd_wait(int fd, uint64_t *ret_count) {
    uint64_t count;

    for (;;) {
        if (read(fd, &count, sizeof(count)) == (ssize_t)sizeof(count)) {
            if (ret_count)
                *ret_count = count;
            return 0;
        }
        if (errno != EINTR)
            return -errno;
    }
}

int llep__arena_check_span(const llep_arena *a, uint64_t offset, uint64_t bytes) {
    uint64_t lo = a->geom.tensor_offset, hi = a->geom.arena_size;

    /* Written as subtractions so no sum can wrap around. */
    if (offset < lo || offset > hi || bytes > hi - offset)
        return -EINVAL;
    return 0;
}

/* bytes = tokens * per_token * elem, or false on overflow. */
static bool span_bytes(uint32_t tokens, uint32_t per_token, uint32_t elem, uint64_t *ret) {
    uint64_t v;

    if (__builtin_mul_overflow((uint64_t)tokens, (uint64_t)per_token, &v) ||
        __builtin_mul_overflow(v, (uint64_t)elem, &v))
        return false;
    *ret = v;
    return true;
}

static bool spans_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
    /* Both spans are inside the arena already, so these sums cannot wrap. */
    return alen && blen && a < b + blen && b < a + alen;
}

int llep__sqe_check(const llep_arena *a, const llep_sqe *e, const llep_sqe_shape *shape,
                    char *err, size_t errlen) {
    struct { const char *name; uint64_t offset, bytes; uint32_t align; bool space; } f[4];
    uint64_t xb, kb;

    if ((e->flags & ~(LLEP_SQE_X_SPACE | LLEP_SQE_Y_SPACE)) || e->reserved[0] ||
        e->reserved[1] || e->reserved[2]) {
        llep__errf(err, errlen, 0, "submission %" PRIu64 ": unknown flags or non-zero reserved "
                  "fields", e->tag);
        return -EINVAL;
    }
    if (e->flags && !shape->space_size) {
        llep__errf(err, errlen, 0, "submission %" PRIu64 ": names a device space, but this "
                  "client has registered none", e->tag);
        return -EINVAL;
    }
    if (shape->elem_size != 2 && shape->elem_size != 4) {
        llep__errf(err, errlen, 0, "submission %" PRIu64 ": element size %" PRIu32
                  " is neither 2 nor 4", e->tag, shape->elem_size);
        return -EINVAL;
    }
    if (!span_bytes(e->tokens, shape->hidden, shape->elem_size, &xb) ||
        !span_bytes(e->tokens, shape->top_k, 4, &kb)) {
        llep__errf(err, errlen, 0, "submission %" PRIu64 ": %" PRIu32 " tokens overflow the "
                  "tensor sizes", e->tag, e->tokens);
        return -EINVAL;
    }
    f[0].name = "x";        f[0].offset = e->x_offset;        f[0].bytes = xb;
    f[1].name = "topk_idx"; f[1].offset = e->topk_idx_offset; f[1].bytes = kb;
    f[2].name = "topk_w";   f[2].offset = e->topk_w_offset;   f[2].bytes = kb;
    f[3].name = "y";        f[3].offset = e->y_offset;        f[3].bytes = xb;
    f[0].align = f[3].align = shape->elem_size;
    f[1].align = f[2].align = 4;
    f[0].space = e->flags & LLEP_SQE_X_SPACE;
    f[3].space = e->flags & LLEP_SQE_Y_SPACE;
    f[1].space = f[2].space = false;

    for (int i = 0; i < 4; i++) {
        if (f[i].space) {
            if (f[i].offset > shape->space_size ||
                f[i].bytes > shape->space_size - f[i].offset) {
                llep__errf(err, errlen, 0, "submission %" PRIu64 ": %s [%" PRIu64 ", +%" PRIu64
                          ") is outside the device space [0, %" PRIu64 ")", e->tag, f[i].name,
                          f[i].offset, f[i].bytes, shape->space_size);
                return -EINVAL;
            }
        } else if (llep__arena_check_span(a, f[i].offset, f[i].bytes) < 0) {
            llep__errf(err, errlen, 0, "submission %" PRIu64 ": %s [%" PRIu64 ", +%" PRIu64 ") is outside "
                      "the tensor space [%" PRIu64 ", %" PRIu64 ")", e->tag, f[i].name,
                      f[i].offset, f[i].bytes, a->geom.tensor_offset, a->geom.arena_size);
            return -EINVAL;
        }
        if (f[i].offset % f[i].align) {
            llep__errf(err, errlen, 0, "submission %" PRIu64 ": %s offset %" PRIu64
                      " is not aligned to %" PRIu32 " bytes", e->tag, f[i].name,
                      f[i].offset, f[i].align);
            return -EINVAL;
        }
    }
    /* The daemon writes y while it may still be reading the inputs. */
    for (int i = 0; i < 3; i++)
        if (f[i].space == f[3].space &&
            spans_overlap(f[3].offset, f[3].bytes, f[i].offset, f[i].bytes)) {
            llep__errf(err, errlen, 0, "submission %" PRIu64 ": y overlaps %s", e->tag,
                      f[i].name);
            return -EINVAL;
        }
    return 0;
}

int llep__routing_check(const int32_t *topk_idx, const float *topk_w, uint32_t tokens,
                        uint32_t top_k, uint32_t num_experts, char *err, size_t errlen) {
    for (uint32_t t = 0; t < tokens; t++)
        for (uint32_t k = 0; k < top_k; k++) {
            size_t i = (size_t)t * top_k + k;

            if (topk_idx[i] < 0 || (uint32_t)topk_idx[i] >= num_experts) {
                llep__errf(err, errlen, 0, "topk_idx[%" PRIu32 "][%" PRIu32 "] = %" PRId32
                          " is not an expert of this layer (0..%" PRIu32 ")", t, k,
                          topk_idx[i], num_experts - 1);
                return -EINVAL;
            }
            if (!isfinite(topk_w[i])) {
                llep__errf(err, errlen, 0, "topk_w[%" PRIu32 "][%" PRIu32 "] is not finite", t,
                          k);
                return -EINVAL;
            }
        }
    return 0;
}
