/* Forwards: submit through the ring, wait for completions, and the blocking forward. */
#include "client-internal.h"
#include "grow.h"
#include "layout.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Where one submission's tensors lie in its arena block. */
typedef struct batch_layout {
    uint64_t x, idx, w, y;    /* offsets inside the block */
    uint64_t x_bytes, idx_bytes, total;
} batch_layout;

/* x and y flagged to lie in the client's space (LLEP_SQE_*_SPACE) take no arena room. */
static void batch_layout_of(const llep_layer *l, uint32_t tokens, uint32_t in_space,
                            batch_layout *b) {
    /* tokens < 2^32, D <= 2^20, K <= 2^16 and 4-byte elements: every product fits. */
    b->x_bytes = (uint64_t)tokens * l->desc.hidden * l->elem_size;
    b->idx_bytes = (uint64_t)tokens * l->desc.top_k * 4;
    b->x = 0;
    b->idx = llep__align_up(in_space & LLEP_SQE_X_SPACE ? 0 : b->x_bytes, LLEP_CLIENT_ALIGN);
    b->w = llep__align_up(b->idx + b->idx_bytes, LLEP_CLIENT_ALIGN);
    b->y = llep__align_up(b->w + b->idx_bytes, LLEP_CLIENT_ALIGN);
    b->total = b->y + (in_space & LLEP_SQE_Y_SPACE ? 0 : b->x_bytes);
}

/* A new ticket; NULL when out of memory. The table may move: re-find tickets after this. */
static llep_ticket *ticket_new(llep_client *c) {
    llep_ticket *t;

    if (llep__grow(&c->tickets, &c->tickets_cap, c->ntickets + 1, sizeof(*c->tickets), 16) < 0)
        return NULL;
    t = &c->tickets[c->ntickets++];
    memset(t, 0, sizeof(*t));
    t->id = ++c->last_ticket;
    return t;
}

static void ticket_remove(llep_client *c, llep_ticket *t) {
    free(t->message);
    *t = c->tickets[--c->ntickets];
}

/* The element types of a forward's tensors, resolved from llep_io against the layer. */
typedef struct io_types {
    enum llep_dtype x, w, y;
    enum llep_index_type idx;
} io_types;

static int io_dtype(const llep_layer *l, enum llep_io_dtype t, enum llep_dtype def,
                    const char *field, enum llep_dtype *ret) {
    switch (t) {
    case LLEP_IO_DEFAULT:
        *ret = def;
        return 0;
    case LLEP_IO_F32:
        *ret = LLEP_DTYPE_F32;
        return 0;
    case LLEP_IO_BF16:
        *ret = LLEP_DTYPE_BF16;
        return 0;
    }
    return llep__client_fail(l->client, -EINVAL, "forward on layer '%s': %s %d is not an "
                             "llep_io_dtype", l->name, field, (int)t);
}

static int io_types_of(const llep_layer *l, const llep_io *io, io_types *ret) {
    int r;

    if ((r = io_dtype(l, io->x_dtype, l->desc.dtype, "x_dtype", &ret->x)) < 0 ||
        (r = io_dtype(l, io->w_dtype, LLEP_DTYPE_F32, "w_dtype", &ret->w)) < 0 ||
        (r = io_dtype(l, io->y_dtype, l->desc.dtype, "y_dtype", &ret->y)) < 0)
        return r;
    if (io->idx_type != LLEP_INDEX_I32 && io->idx_type != LLEP_INDEX_I64)
        return llep__client_fail(l->client, -EINVAL, "forward on layer '%s': idx_type %d is "
                                 "not an llep_index_type", l->name, (int)io->idx_type);
    ret->idx = io->idx_type;
    return 0;
}

/* Copies the expert ids into the arena as int32, each checked to name one of the layer's
 * experts. Returns 0 or -EINVAL naming the token and slot of the first bad id. */
static int copy_ids(const llep_layer *l, int32_t *dst, const void *src,
                    enum llep_index_type type, size_t n) {
    int64_t bad_id = 0;
    size_t bad = n;

    if (type == LLEP_INDEX_I64) {
        if (llep__layout_idx_from_i64(dst, src, n, l->desc.num_experts, &bad) == 0)
            return 0;
        bad_id = ((const int64_t *)src)[bad];
    } else {
        const int32_t *s = src;

        for (size_t i = 0; i < n; i++) {
            if (s[i] < 0 || (uint32_t)s[i] >= l->desc.num_experts) {
                bad = i;
                bad_id = s[i];
                break;
            }
            dst[i] = s[i];
        }
        if (bad == n)
            return 0;
    }
    return llep__client_fail(l->client, -EINVAL, "forward on layer '%s': topk_idx[%zu][%zu] "
                             "= %" PRId64 " is not one of its experts (0 to %u)", l->name,
                             bad / l->desc.top_k, bad % l->desc.top_k, bad_id,
                             l->desc.num_experts - 1);
}

static int submit_locked(llep_layer *l, const llep_io *io, uint64_t *ret_ticket) {
    llep_client *c = l->client;
    uint32_t tokens = io->tokens;
    batch_layout b;
    io_types ty = { 0 };   /* set by check_io before use; zeroed for -Wmaybe-uninitialized */
    llep_ticket *t;
    llep_sqe e;
    uint64_t block, space_x = 0, space_y = 0;
    uint32_t in_space = 0;
    size_t nx, nk;
    int r;

    if (tokens > 0 && (!io->x || !io->topk_idx || !io->topk_w || !io->y))
        return llep__client_fail(c, -EINVAL, "llep_submit on layer '%s': %s is NULL", l->name,
                                 !io->x ? "x" : !io->topk_idx ? "topk_idx" :
                                 !io->topk_w ? "topk_w" : "y");
    if ((r = io_types_of(l, io, &ty)) < 0)
        return r;
    if ((r = llep__client_usable(c)) < 0 || (r = llep__layer_restore(l)) < 0)
        return r;
    if (tokens == 0) {
        t = ticket_new(c);
        if (!t)
            return llep__client_fail(c, -ENOMEM, "out of memory");
        t->done = true;
        *ret_ticket = t->id;
        return 0;
    }
    nx = (size_t)tokens * l->desc.hidden;
    nk = (size_t)tokens * l->desc.top_k;
    r = llep__space_locate(c, l, io->x, ty.x, io->y, ty.y, (uint64_t)nx * l->elem_size,
                           &in_space, &space_x, &space_y);
    if (r < 0)
        return r;
    batch_layout_of(l, tokens, in_space, &b);
    r = llep__arena_reserve(c, b.total, true, &block);
    if (r < 0)
        return r;
    r = copy_ids(l, llep__arena_ptr(&c->arena, block + b.idx), io->topk_idx, ty.idx, nk);
    if (r < 0) {
        llep__arena_release(c, block);
        return r;
    }
    if (!(in_space & LLEP_SQE_X_SPACE))
        llep__layout_convert(llep__arena_ptr(&c->arena, block + b.x), l->desc.dtype, io->x,
                             ty.x, nx);
    llep__layout_convert(llep__arena_ptr(&c->arena, block + b.w), LLEP_DTYPE_F32, io->topk_w,
                         ty.w, nk);
    t = ticket_new(c);
    if (!t) {
        llep__arena_release(c, block);
        return llep__client_fail(c, -ENOMEM, "out of memory");
    }
    t->in_flight = true;
    t->in_space = in_space != 0;
    t->y = in_space & LLEP_SQE_Y_SPACE ? NULL : io->y;
    t->y_offset = block + b.y;
    t->y_arena = l->desc.dtype;
    t->y_type = ty.y;
    t->y_elems = nx;
    t->block = block;
    e = (llep_sqe){
        .tag = t->id,
        .layer_id = l->id,
        .tokens = tokens,
        .x_offset = in_space & LLEP_SQE_X_SPACE ? space_x : block + b.x,
        .topk_idx_offset = block + b.idx,
        .topk_w_offset = block + b.w,
        .y_offset = in_space & LLEP_SQE_Y_SPACE ? space_y : block + b.y,
        .flags = in_space,
    };
    /* x may still be being written by the client's GPU work: the step waits for this. */
    if (in_space && (r = llep__space_before_submit(c)) < 0) {
        llep__arena_release(c, block);
        ticket_remove(c, t);
        return llep__client_fail(c, r, "cannot record the space's ready event");
    }
    /* At most ring_limit submissions are in flight, so the ring has room unless the daemon
     * corrupted it. */
    r = llep__sq_push(&c->arena, &e);
    if (r < 0) {
        llep__arena_release(c, block);
        ticket_remove(c, t);
        return llep__client_fail(c, -EPROTO, "llepd's submission ring is %s",
                                 r == -EAGAIN ? "full" : "corrupt");
    }
    c->in_flight++;
    c->space_inflight += in_space != 0;
    if (llep__ring_need_wake(&c->arena.sq))
        llep__eventfd_signal(c->sq_efd);
    *ret_ticket = t->id;
    return 0;
}

/* llep_forward()'s arguments as an llep_io of default types. */
static llep_io io_of(uint32_t tokens, const void *x, const int32_t *topk_idx,
                     const float *topk_w, void *y) {
    return (llep_io){ .tokens = tokens, .x = x, .topk_idx = topk_idx, .topk_w = topk_w, .y = y };
}

static int submit(llep_layer *l, const llep_io *io, uint64_t *ret_ticket) {
    llep_client *c;
    int r;

    if (!l)
        return -EINVAL;
    c = l->client;
    pthread_mutex_lock(&c->lock);
    if (!ret_ticket)
        r = llep__client_fail(c, -EINVAL, "llep_submit: ret_ticket is NULL");
    else if (!io)
        r = llep__client_fail(c, -EINVAL, "llep_submit_ex: io is NULL");
    else
        r = submit_locked(l, io, ret_ticket);
    pthread_mutex_unlock(&c->lock);
    return r;
}

LLEP_EXTERN int llep_submit(llep_layer *l, uint32_t tokens, const void *x,
                            const int32_t *topk_idx, const float *topk_w, void *y,
                            uint64_t *ret_ticket) {
    llep_io io = io_of(tokens, x, topk_idx, topk_w, y);

    return submit(l, &io, ret_ticket);
}

LLEP_EXTERN int llep_submit_ex(llep_layer *l, const llep_io *io, uint64_t *ret_ticket) {
    return submit(l, io, ret_ticket);
}

static int wait_locked(llep_client *c, uint64_t ticket, int timeout_ms) {
    int64_t deadline = timeout_ms < 0 ? -1 : llep__client_now_ms() + timeout_ms;
    llep_ticket *t;
    int r;

    for (;;) {
        t = llep__ticket_find(c, ticket);
        if (!t)
            return llep__client_fail(c, -EINVAL, "no submission with ticket %" PRIu64
                                     " is waiting to be collected", ticket);
        if (t->done) {
            r = t->status;
            if (r < 0 && r != -ECONNRESET)
                llep__client_fail(c, r, "%s", t->message ? t->message : llep_strerror(r));
            else if (r < 0 && t->message)
                llep__client_fail(c, r, "%s", t->message);
            ticket_remove(c, t);
            return r;
        }
        r = llep__client_progress(c, deadline);
        if (r == -EAGAIN)
            return -EAGAIN;
    }
}

LLEP_EXTERN int llep_wait(llep_client *c, uint64_t ticket, int timeout_ms) {
    int r;

    if (!c)
        return -EINVAL;
    pthread_mutex_lock(&c->lock);
    r = wait_locked(c, ticket, timeout_ms);
    pthread_mutex_unlock(&c->lock);
    return r;
}

static int forward(llep_layer *l, const llep_io *io) {
    llep_client *c;
    uint64_t ticket;
    int r;

    if (!l)
        return -EINVAL;
    c = l->client;
    if (!io) {
        pthread_mutex_lock(&c->lock);
        r = llep__client_fail(c, -EINVAL, "llep_forward_ex: io is NULL");
        pthread_mutex_unlock(&c->lock);
        return r;
    }
    if (io->tokens == 0)
        return 0;
    pthread_mutex_lock(&c->lock);
    r = submit_locked(l, io, &ticket);
    if (r == 0)
        r = wait_locked(c, ticket, -1);
    pthread_mutex_unlock(&c->lock);
    return r;
}

LLEP_EXTERN int llep_forward(llep_layer *l, uint32_t tokens, const void *x,
                             const int32_t *topk_idx, const float *topk_w, void *y) {
    llep_io io = io_of(tokens, x, topk_idx, topk_w, y);

    return forward(l, &io);
}

LLEP_EXTERN int llep_forward_ex(llep_layer *l, const llep_io *io) {
    return forward(l, io);
}
