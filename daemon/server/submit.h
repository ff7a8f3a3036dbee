/* Submissions: the ring of a client's arena drained into checked submissions, and their
 * completions (submit.c). */
#ifndef LLEPD_SUBMIT_H
#define LLEPD_SUBMIT_H

#include <stdint.h>

#include "list.h"
#include "ring.h"
#include "server.h"

struct llepd_sub {
    llepd_list link;                /* in layer->queue, then in the running step */
    llepd_session *session;         /* holds a reference */
    llepd_layer *layer;
    llep_sqe sqe;
    int32_t *topk_idx;              /* copied out of the arena and checked */
    float *topk_w;
    const void *x;                  /* in the arena, or in the session's space (flags) */
    void *y;
    /* The session's device space when x or y lies in it (released only with nothing in
     * flight, so it outlives the submission). */
    struct llepd_space *space;
    uint64_t enqueued_ns;
    int status;
    char error[256];
};

/* Registers hooks.ring (the eventfd of a session's ring fired). */
void llepd_submit_init(llepd_server *srv);

/* Reads and queues the ring's submissions (hooks.submit takes each). */
void llepd_submit_drain(llepd_session *s);

/* Reports the result of one submission to its client: SubmissionError frame first on error,
 * then the completion entry. Consumes the submission. */
void llepd_sub_complete(llepd_sub *sub, uint64_t step);

#endif
