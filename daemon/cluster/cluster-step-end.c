/* Steps of cluster-scope layers: a step's memory and its end (cluster-step-internal.h). A
 * step's arrays are kept for the next one; a step ends here, done or failed (a peer's word, a
 * node down, the deadline), answering this node's clients and telling the other nodes of a
 * failure. The bottom of the step files: what comes next after a step goes through the
 * scheduler (llepd_sched_kick, which reaches llepd_cstep_kick through the layer's ops). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-step-internal.h"
#include "log.h"
#include "session.h"
#include "submit.h"

/* ---- a step's memory --------------------------------------------------------------------- */

/* What a finished step holds only for itself; the arrays sized by the layer stay. */
static void step_clear(llepd_cstep *st, uint32_t nodes) {
    llepd_homes_free(&st->homes);
    /* Either array is NULL in a step whose allocation failed part way (llepd_cstep_new). */
    for (uint32_t j = 0; j < nodes; j++) {
        if (st->rows_in)
            llepd_cbuf_free(&st->rows_in[j]);
        if (st->results_in)
            llepd_cbuf_free(&st->results_in[j]);
    }
    for (uint32_t i = 0; i < st->nweights; i++)
        llepd_cbuf_free(&st->weights[i].buf);
    st->nweights = 0;
    free(st->subs);
    st->subs = NULL;
    st->nsubs = 0;
}

void llepd_cstep_free(llepd_cstep *st, uint32_t nodes) {
    if (!st)
        return;
    step_clear(st, nodes);
    if (st->plan.loads)
        llep__plan_fini(&st->plan);
    free(st->weights);
    free(st->rows_in);
    free(st->results_in);
    free(st->loads);
    free(st->have_loads);
    free(st->hashes);
    free(st->have_hash);
    free(st->epochs);
    free(st->comm_up);
    free(st->dev);
    free(st->subs);
    free(st);
}

/* Keeps a finished step's arrays for the next one: a step then allocates only what its
 * tokens need. */
void llepd_cstep_release(llepd_clayer *c, llepd_cstep *st) {
    step_clear(st, c->nodes);
    if (c->spare)
        llepd_cstep_free(st, c->nodes);
    else
        c->spare = st;
}

static llepd_cstep *step_reuse(llepd_clayer *c, uint64_t id) {
    llepd_cstep *st = c->spare;
    uint32_t n = c->nodes;

    c->spare = NULL;
    memset(st->loads, 0, (size_t)n * num_experts(c) * sizeof(*st->loads));
    memset(st->have_loads, 0, n * sizeof(*st->have_loads));
    memset(st->hashes, 0, n * sizeof(*st->hashes));
    memset(st->have_hash, 0, n * sizeof(*st->have_hash));
    memset(st->epochs, 0, n * sizeof(*st->epochs));
    memset(st->comm_up, 0, n * sizeof(*st->comm_up));
    st->xnode = false;
    st->ticket = 0;
    st->decided = false;
    memset(&st->origin_params, 0, sizeof(st->origin_params));
    memset(&st->stats, 0, sizeof(st->stats));
    memset(&st->traffic, 0, sizeof(st->traffic));
    st->work_queued = false;
    st->place = 0;
    st->hash = 0;
    st->r = 0;
    st->err[0] = '\0';
    st->fail_r = 0;
    st->fail_why[0] = '\0';
    st->id = id;
    st->t0 = llepd_now_ns();
    return st;
}

llepd_cstep *llepd_cstep_new(llepd_clayer *c, uint64_t id) {
    if (c->spare)
        return step_reuse(c, id);
    llepd_cstep *st = calloc(1, sizeof(*st));
    uint32_t n = c->nodes;

    if (!st)
        return NULL;
    st->id = id;
    st->t0 = llepd_now_ns();
    st->loads = calloc((size_t)n * num_experts(c), sizeof(*st->loads));
    st->have_loads = calloc(n, sizeof(*st->have_loads));
    st->hashes = calloc(n, sizeof(*st->hashes));
    st->have_hash = calloc(n, sizeof(*st->have_hash));
    st->epochs = calloc(n, sizeof(*st->epochs));
    st->comm_up = calloc(n, sizeof(*st->comm_up));
    st->rows_in = calloc(n, sizeof(*st->rows_in));
    st->results_in = calloc(n, sizeof(*st->results_in));
    st->dev = calloc(c->ppn, sizeof(*st->dev));
    if (!st->loads || !st->have_loads || !st->hashes || !st->have_hash || !st->epochs ||
        !st->comm_up || !st->rows_in ||
        !st->results_in || !st->dev ||
        llep__plan_init(&st->plan, num_experts(c), c->nodes * c->ppn) < 0) {
        llepd_cstep_free(st, n);
        return NULL;
    }
    return st;
}

/* ---- ending a step ----------------------------------------------------------------------- */

static void send_fail(llepd_clayer *c, int to_rank, uint64_t step, int r, const char *msg,
                      uint64_t next) {
    LlepPb__ClusterStepFail m = LLEP_PB__CLUSTER_STEP_FAIL__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    m.status = llep__status_from_errno(r);
    m.layer = c->layer->name;
    m.step = step;
    m.message = (char *)msg;
    m.next_step = next;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_STEP_FAIL;
    f.cluster_step_fail = &m;
    if (to_rank < 0)
        llepd_clayer_send_all(c, &f);
    else
        (void)llepd_cluster_send(c->layer->srv->cluster, c->ids[to_rank], &f);
}

static void record(llepd_clayer *c, llepd_cstep *st) {
    llepd_sched_record(c->layer, &st->stats, st->dev, &st->plan,
                       (llepd_now_ns() - st->t0) / 1000);
    c->internode_rows += st->traffic.rows_out;
    c->internode_bytes += st->traffic.bytes_out;
    c->internode_weights += st->traffic.weights_out;
    if (st->xnode && ++c->xn.steps == c->xn.drop_after)
        /* Test hook: as if this node lost its communicator and its word of it did not reach
         * the others: they learn from its next plan hash and fall back to the peer links. */
        llepd_cxnode_close(c, "LLEPD_TEST_XNODE_DROP", false);
}

/* Finishes the step with status r: answers this node's clients, then goes on with whatever
 * waits (a peer's loads for the next step, this node's queue). */
void llepd_cstep_end(llepd_clayer *c, int r, const char *why) {
    llepd_layer *l = c->layer;
    llepd_server *srv = l->srv;
    llepd_cstep *st = c->st;

    if (r == 0) {
        llepd_cxnode_step_over(c); /* its tickets are all exchanged or skipped */
        record(c, st);
    } else {
        c->failed_steps++;
        srv->failed_steps++; /* llep_errors_total{kind="failed_step"} (metrics.c) */
        log_warning("cluster layer '%s': step %" PRIu64 " of %u submissions failed: %s",
                    l->name, st->id, st->nsubs, why);
    }
    /* The layer is free again before any client hears back: completing a submission drains
     * that client's ring, which may start the next step at once. */
    c->st = NULL;
    if (c->next_step <= st->id)
        c->next_step = st->id + 1;
    uv_timer_stop(c->deadline);
    l->running = false;
    srv->running_steps--;
    for (uint32_t i = 0; i < st->nsubs; i++) {
        llepd_sub *sub = st->subs[i];
        if (r == 0)
            l->tokens += sub->sqe.tokens;
        sub->status = r;
        snprintf(sub->error, sizeof(sub->error), "%.255s", r ? why : "");
        llepd_sub_complete(sub, r == 0 ? l->steps : 0);
    }
    llepd_clayer_refill_step_end(c, r);
    llepd_cstep_release(c, st);
    /* Through the scheduler: it reaches llepd_cstep_kick by the layer's ops, so the end of a
     * step does not call back up into the files that start one. */
    llepd_sched_kick(l);
    llepd_layer_maybe_destroy(l);
    srv->hooks.work_done(srv);
}

void llepd_cstep_fail(llepd_clayer *c, int r, const char *why) {
    llepd_cstep *st = c->st;
    char msg[256];

    if (!st)
        return;
    if (st->work_queued) {
        /* The pool has the part: the work's end fails the step (cluster-step-run.c). A combine
         * has every input already and may finish. */
        if (st->phase != CSTEP_COMBINE && st->fail_r == 0) {
            st->fail_r = r;
            snprintf(st->fail_why, sizeof(st->fail_why), "%s", why);
        }
        return;
    }
    snprintf(msg, sizeof(msg), "cluster step %" PRIu64 " of layer '%s': %s", st->id,
             c->layer->name, why);
    send_fail(c, -1, st->id, r, why, st->id + 1);
    /* Transfers of the step may be in flight into its buffers, and the other nodes may wait
     * in its exchanges: a step with tickets not exchanged yet closes the set's communicator
     * before its buffers go. */
    llepd_cxnode_step_over(c);
    llep__part_abort(c->part);
    /* A collective node still waiting for its own clients fails them with the step. */
    bool waiting = st->phase == CSTEP_WAIT_LOCAL;
    st->phase = CSTEP_ENDING;
    if (waiting && c->layer->queued)
        llepd_sched_fail_queued(c->layer, r, msg);
    llepd_cstep_end(c, r, msg);
}

/* ---- the deadline ------------------------------------------------------------------------ */

/* The first node whose buffer of `kind` for this step is expected and not complete; -1. */
static int data_missing_from(llepd_clayer *c, enum llep_part_buf kind, const llepd_cbuf *in) {
    for (uint32_t j = 0; j < c->nodes; j++) {
        void *p;
        uint64_t n;
        if (j != c->rank && llep__part_buffer(c->part, kind, j, &p, &n) == 0 && n > 0 &&
            (!in[j].started || in[j].got < in[j].total))
            return (int)j;
    }
    return -1;
}

static void on_deadline(uv_timer_t *t) {
    llepd_clayer *c = t->data;
    llepd_cstep *st = c->st;
    char why[200] = "";

    if (!st)
        return;
    /* The step's exchange failed and no node said why in time (llepd_cstep_exchanged). */
    if (st->fail_r < 0 && !st->work_queued) {
        char saved[sizeof(st->fail_why)];
        snprintf(saved, sizeof(saved), "%s", st->fail_why);
        llepd_cstep_fail(c, st->fail_r, saved);
        return;
    }
    for (uint32_t j = 0; j < c->nodes && !why[0]; j++) {
        bool missing = (st->phase == CSTEP_LOADS && !st->have_loads[j]) ||
                       ((st->phase == CSTEP_HASH || st->phase == CSTEP_PREPARE ||
                         st->phase == CSTEP_DATA) &&
                        !st->have_hash[j]) ||
                       (st->phase == CSTEP_WAIT_LOCAL && j == c->rank);
        if (missing)
            snprintf(why, sizeof(why), "node %u did not %s in time", c->ids[j],
                     st->phase == CSTEP_LOADS       ? "send its loads"
                     : st->phase == CSTEP_WAIT_LOCAL ? "get its collective group"
                                                     : "send its plan hash");
    }
    if (!why[0] && (st->phase == CSTEP_DATA || st->phase == CSTEP_RESULTS)) {
        bool rows = st->phase == CSTEP_DATA;
        int j = data_missing_from(c, rows ? LLEP_PART_ROWS_IN : LLEP_PART_RESULTS_IN,
                                  rows ? st->rows_in : st->results_in);
        if (j >= 0)
            snprintf(why, sizeof(why), "node %u did not send its %s within %u ms",
                     c->ids[j], rows ? "token rows" : "results", DATA_DEADLINE_MS);
    }
    if (!why[0] && (st->phase == CSTEP_XROWS || st->phase == CSTEP_XRESULTS))
        snprintf(why, sizeof(why), "the %s exchange over the %s communicator did not finish "
                 "within %u ms", st->phase == CSTEP_XROWS ? "rows" : "results",
                 llepd_cxnode_name(c), DATA_DEADLINE_MS);
    if (!why[0])
        snprintf(why, sizeof(why), "the step's data did not arrive within %u ms",
                 DATA_DEADLINE_MS);
    llepd_cstep_fail(c, -ETIMEDOUT, why);
}

void llepd_cstep_arm_deadline(llepd_clayer *c, uint32_t ms) {
    uv_timer_start(c->deadline, on_deadline, ms, 0);
}
