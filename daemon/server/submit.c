/* The hot path of a session: its submission ring, the checked submissions and completions.
 *
 * A client pushes a submission and signals the eventfd only when the daemon said it was going
 * to sleep (proto/ring.h), so a busy client costs no syscalls per submission. Every entry is
 * copied out of shared memory and checked before use: the client can rewrite the arena at any
 * moment, so nothing in it is trusted twice. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "submit.h"

#include "layer.h"
#include "log.h"
#include "session.h"
#include "space.h"

/* After serving a submission the client's next one often follows within microseconds (a
 * decode loop: completion, a little work, submit). Waiting for it briefly here costs less
 * than going to sleep and being woken through the eventfd, which on an idle machine takes
 * tens of microseconds. Returns true when an entry arrived. */
#define SPIN_NS 20000u

static bool spin_for_next(llep_ring *sq) {
    uint64_t until = llepd_now_ns() + SPIN_NS;

    do {
        if (llep__ring_pending(sq) != 0)
            return true;
    } while (llepd_now_ns() < until);
    return false;
}

/* Completions the client has not taken yet, as the producer sees them; UINT32_MAX when the
 * client's index is impossible. */
static uint32_t cq_backlog(const llepd_session *s) {
    const llep_ring *cq = &s->arena.cq;
    uint32_t used = cq->prod - atomic_load_explicit(&cq->ctl->tail, memory_order_acquire);
    return used > cq->entries ? UINT32_MAX : used;
}

static void send_submission_error(llepd_session *s, const llep_sqe *e, int status,
                                  const char *msg) {
    LlepPb__SubmissionError se = LLEP_PB__SUBMISSION_ERROR__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    se.tag = e->tag;
    se.layer_id = e->layer_id;
    se.status = llep__status_from_errno(status);
    se.message = (char *)msg;
    f.body_case = LLEP_PB__FRAME__BODY_SUBMISSION_ERROR;
    f.submission_error = &se;
    llepd_session_send(s, &f);
}

/* Completes one submission of session s. The error frame goes first, so it is on the socket
 * by the time the client sees the failed completion. */
static void complete(llepd_session *s, const llep_sqe *e, int status, const char *msg,
                     uint64_t step) {
    llep_cqe c = { .tag = e->tag, .status = status, .layer_id = e->layer_id, .step = step };

    if (s->state == SESSION_CLOSING || !s->have_arena)
        return;
    if (status < 0)
        send_submission_error(s, e, status, msg);
    int r = llep__cq_push(&s->arena, &c);
    if (r < 0) {
        /* Admission control keeps room for every completion, so a full or corrupt ring means
         * the client broke the protocol. */
        llepd_session_close(s, "completion ring corrupt or overrun");
        return;
    }
    if (llep__ring_need_wake(&s->arena.cq))
        llep__eventfd_signal(s->cq_efd);
}

void llepd_sub_complete(llepd_sub *sub, uint64_t step) {
    llepd_session *s = sub->session;

    complete(s, &sub->sqe, sub->status, sub->error, step);
    s->inflight--;
    free(sub->topk_idx);
    free(sub->topk_w);
    free(sub);
    /* Room in the completion ring may let in submissions held back for it (the ring was
     * left awake then). A ring whose consumer announced sleep held none back: its next
     * submission wakes the loop through the eventfd like any other session's, in the order the
     * loop sees them, so a client that just got a completion does not go ahead of sessions
     * whose submissions wait already (the client may write the flag: it can only delay itself
     * until the retry timer). */
    if (s->state != SESSION_CLOSING && s->have_arena &&
        !atomic_load_explicit(&s->arena.sq.ctl->sleeping, memory_order_acquire))
        llepd_submit_drain(s);
    llepd_session_unref(s); /* the submission's reference, after the last use of s */
}

static bool holds_layer(const llepd_session *s, uint32_t id) {
    for (uint32_t i = 0; i < s->nlayers; i++)
        if (s->layers[i] == id)
            return true;
    return false;
}

/* Copies the routing out of the arena and checks it; returns the new submission or NULL after
 * completing the entry with an error. */
static llepd_sub *accept_entry(llepd_session *s, const llep_sqe *e) {
    char err[200];
    llepd_layer *l = holds_layer(s, e->layer_id) ? llepd_layer_by_id(s->srv, e->layer_id) : NULL;
    int r;

    if (s->srv->draining) {
        s->srv->refused++;
        complete(s, e, -ESHUTDOWN, "llepd is shutting down and takes no new work", 0);
        return NULL;
    }
    if (!l || !l->engine) {
        snprintf(err, sizeof(err), "layer id %u is not held by this client", e->layer_id);
        complete(s, e, -ENOENT, err, 0);
        return NULL;
    }
    llep_sqe_shape shape = { .top_k = l->desc.top_k, .hidden = l->desc.hidden,
                             .elem_size = l->desc.dtype == LLEP_PB__DTYPE__DTYPE_BF16 ? 2 : 4,
                             .space_size = s->space ? s->space->size : 0 };
    r = llep__sqe_check(&s->arena, e, &shape, err, sizeof(err));
    if (r < 0) {
        complete(s, e, r, err, 0);
        return NULL;
    }
    if (e->flags && !s->space->host && l->ops) {
        /* A cluster step packs rows for other nodes with the host's memcpy. */
        snprintf(err, sizeof(err), "layer %u spans nodes: its submissions take x and y from "
                 "the arena or a host space, not from GPU memory", l->id);
        complete(s, e, -EINVAL, err, 0);
        return NULL;
    }
    llepd_sub *sub = calloc(1, sizeof(*sub));
    size_t slots = (size_t)e->tokens * l->desc.top_k;
    if (!sub || (slots && (!(sub->topk_idx = malloc(slots * sizeof(int32_t))) ||
                           !(sub->topk_w = malloc(slots * sizeof(float)))))) {
        if (sub) {
            free(sub->topk_idx);
            free(sub);
        }
        complete(s, e, -ENOMEM, "llepd is out of memory", 0);
        return NULL;
    }
    if (slots) {
        memcpy(sub->topk_idx, llep__arena_ptr(&s->arena, e->topk_idx_offset), slots * 4);
        memcpy(sub->topk_w, llep__arena_ptr(&s->arena, e->topk_w_offset), slots * 4);
    }
    r = llep__routing_check(sub->topk_idx, sub->topk_w, e->tokens, l->desc.top_k,
                            l->desc.num_experts, err, sizeof(err));
    if (r < 0) {
        free(sub->topk_idx);
        free(sub->topk_w);
        free(sub);
        complete(s, e, r, err, 0);
        return NULL;
    }
    sub->sqe = *e;
    sub->session = s;
    sub->layer = l;
    sub->x = e->flags & LLEP_SQE_X_SPACE ? llepd_space_ptr(s->space, e->x_offset)
                                         : llep__arena_ptr(&s->arena, e->x_offset);
    sub->y = e->flags & LLEP_SQE_Y_SPACE ? llepd_space_ptr(s->space, e->y_offset)
                                         : llep__arena_ptr(&s->arena, e->y_offset);
    sub->space = e->flags ? s->space : NULL;
    sub->enqueued_ns = llepd_now_ns();
    return sub;
}

static void drain_once(llepd_session *s);

void llepd_submit_init(llepd_server *srv) {
    srv->hooks.ring = llepd_submit_drain;
}

/* Small steps complete inside hooks.submit (the scheduler), and a completion makes room for more
 * submissions; taking them there would nest drains as deep as the ring is long. So a drain
 * requested while one runs is only noted, and the running one goes round again. */
void llepd_submit_drain(llepd_session *s) {
    if (s->in_drain) {
        s->drain_again = true;
        return;
    }
    llepd_session_ref(s);
    s->in_drain = true;
    do {
        s->drain_again = false;
        drain_once(s);
    } while (s->drain_again);
    s->in_drain = false;
    llepd_session_unref(s);
}

static void drain_once(llepd_session *s) {
    llep_ring *sq = &s->arena.sq;
    llep_sqe e;
    bool took = false;

    if (!s->have_arena || s->state == SESSION_CLOSING)
        return;
    llep__ring_finish_sleep(sq);
    for (;;) {
        uint32_t backlog = cq_backlog(s);
        if (backlog == UINT32_MAX) {
            llepd_session_close(s, "completion ring corrupt");
            return;
        }
        /* Take a submission only when its completion is sure to fit. */
        if (s->inflight + backlog >= s->arena.geom.cq_entries) {
            llepd_session_retry_later(s);
            return;
        }
        int r = llep__sq_pop(&s->arena, &e);
        if (r == -EAGAIN && took && spin_for_next(sq))
            continue;
        if (r == -EAGAIN) {
            if (llep__ring_prepare_sleep(sq))
                return;
            continue;
        }
        if (r < 0) {
            llepd_session_close(s, "submission ring corrupt");
            return;
        }
        took = true;
        llepd_sub *sub = accept_entry(s, &e);
        if (!sub)
            continue;
        s->inflight++;
        llepd_session_ref(s);
        s->srv->hooks.submit(sub);
    }
}
