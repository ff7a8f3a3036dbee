/* Forwards: submit through the ring, wait for completions, and the blocking forward. */
#include "client-internal.h"
#include "grow.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Where one submission's tensors lie in its arena block. */
typedef struct batch_layout {
    uint64_t x, idx, w, y;    /* offsets inside the block */
    uint64_t x_bytes, idx_bytes, total;
} batch_layout;

static void batch_layout_of(const llep_layer *l, uint32_t tokens, batch_layout *b) {
    /* tokens < 2^32, D <= 2^20, K <= 2^16 and 4-byte elements: every product fits. */
    b->x_bytes = (uint64_t)tokens * l->desc.hidden * l->elem_size;
    b->idx_bytes = (uint64_t)tokens * l->desc.top_k * 4;
    b->x = 0;
    b->idx = llep__align_up(b->x + b->x_bytes, LLEP_CLIENT_ALIGN);
    b->w = llep__align_up(b->idx + b->idx_bytes, LLEP_CLIENT_ALIGN);
    b->y = llep__align_up(b->w + b->idx_bytes, LLEP_CLIENT_ALIGN);
    b->total = b->y + b->x_bytes;
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

static int submit_locked(llep_layer *l, uint32_t tokens, const void *x,
                         const int32_t *topk_idx, const float *topk_w, void *y,
                         uint64_t *ret_ticket) {
    llep_client *c = l->client;
    batch_layout b;
    llep_ticket *t;
    llep_sqe e;
    uint64_t block;
    int r;

    if (tokens > 0 && (!x || !topk_idx || !topk_w || !y))
        return llep__client_fail(c, -EINVAL, "llep_submit on layer '%s': %s is NULL", l->name,
                                 !x ? "x" : !topk_idx ? "topk_idx" : !topk_w ? "topk_w" : "y");
    if (c->dead)
        return llep__client_fail(c, c->dead, "the connection to llepd is lost%s%s",
                                 c->notice[0] ? ": " : "", c->notice);
    if (tokens == 0) {
        t = ticket_new(c);
        if (!t)
            return llep__client_fail(c, -ENOMEM, "out of memory");
        t->done = true;
        *ret_ticket = t->id;
        return 0;
    }
    batch_layout_of(l, tokens, &b);
    r = llep__arena_reserve(c, b.total, true, &block);
    if (r < 0)
        return r;
    memcpy(llep__arena_ptr(&c->arena, block + b.x), x, b.x_bytes);
    memcpy(llep__arena_ptr(&c->arena, block + b.idx), topk_idx, b.idx_bytes);
    memcpy(llep__arena_ptr(&c->arena, block + b.w), topk_w, b.idx_bytes);
    t = ticket_new(c);
    if (!t) {
        llep__arena_release(c, block);
        return llep__client_fail(c, -ENOMEM, "out of memory");
    }
    t->in_flight = true;
    t->y = y;
    t->y_offset = block + b.y;
    t->y_bytes = b.x_bytes;
    t->block = block;
    e = (llep_sqe){
        .tag = t->id,
        .layer_id = l->id,
        .tokens = tokens,
        .x_offset = block + b.x,
        .topk_idx_offset = block + b.idx,
        .topk_w_offset = block + b.w,
        .y_offset = block + b.y,
    };
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
    if (llep__ring_need_wake(&c->arena.sq))
        llep__eventfd_signal(c->sq_efd);
    *ret_ticket = t->id;
    return 0;
}

LLEP_EXTERN int llep_submit(llep_layer *l, uint32_t tokens, const void *x,
                            const int32_t *topk_idx, const float *topk_w, void *y,
                            uint64_t *ret_ticket) {
    llep_client *c;
    int r;

    if (!l)
        return -EINVAL;
    c = l->client;
    pthread_mutex_lock(&c->lock);
    if (!ret_ticket)
        r = llep__client_fail(c, -EINVAL, "llep_submit: ret_ticket is NULL");
    else
        r = submit_locked(l, tokens, x, topk_idx, topk_w, y, ret_ticket);
    pthread_mutex_unlock(&c->lock);
    return r;
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

LLEP_EXTERN int llep_forward(llep_layer *l, uint32_t tokens, const void *x,
                             const int32_t *topk_idx, const float *topk_w, void *y) {
    llep_client *c;
    uint64_t ticket;
    int r;

    if (!l)
        return -EINVAL;
    if (tokens == 0)
        return 0;
    c = l->client;
    pthread_mutex_lock(&c->lock);
    r = submit_locked(l, tokens, x, topk_idx, topk_w, y, &ticket);
    if (r == 0)
        r = wait_locked(c, ticket, -1);
    pthread_mutex_unlock(&c->lock);
    return r;
}
