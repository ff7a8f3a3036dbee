/* Steps of cluster-scope layers: moving a step on (cluster-step-internal.h).
 * llepd_cstep_check_progress is called whenever something a step waits for has come (loads,
 * a plan hash, a buffer complete, the communicator's exchange) and takes it to its next phase.
 * The phases that use the devices (prepare, compute, combine) take the devices' turn, which
 * every layer's steps share (devices.h): here on the loop thread only when the turn is free at
 * once (prepare always, compute and combine when the step is tiny), else on the thread pool,
 * where the work waits for its turn; the loop thread never waits for one. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cluster-step-internal.h"

/* Compute and combine of steps up to this many token-slots here run on the loop thread. */
#define INLINE_SLOTS 64u

/* ---- the work on the pool ---------------------------------------------------------------- */

/* On the pool (or the loop thread, which then holds the turn already): one phase in the turn
 * of its place in the devices' queue. */
static void work_run(uv_work_t *req) {
    llepd_clayer *c = req->data;
    llepd_cstep *st = c->st;
    llep_devices *devs = llep__engine_devices(c->layer->engine);

    llep__devices_turn_wait_reserved(devs, st->place);
    st->place = 0;
    if (st->phase == CSTEP_PREPARE) {
        st->r = llepd_cstep_prepare_part(c, st->prep_wire);
    } else if (st->phase == CSTEP_COMPUTE) {
        st->r = llep__part_compute(c->part);
    } else {
        st->r = llep__part_combine(c->part, &st->stats);
        if (st->r == 0) {
            llepd_homes_unstage(&st->homes, c->layer);
            memcpy(st->dev, st->stats.devices, c->ppn * sizeof(*st->dev));
            llep__part_traffic(c->part, &st->traffic);
        }
    }
    llep__devices_turn_end(devs);
    if (st->r < 0)
        snprintf(st->err, sizeof(st->err), "%s", llep__part_error(c->part)[0]
                 ? llep__part_error(c->part) : strerror(-st->r));
}

static void work_done(uv_work_t *req, int status) {
    llepd_clayer *c = req->data;
    llepd_cstep *st = c->st;
    int r = status < 0 ? -ECANCELED : st->r;
    char why[256];

    st->work_queued = false;
    llep__devices_unreserve(llep__engine_devices(c->layer->engine), st->place); /* never ran */
    st->place = 0;
    snprintf(why, sizeof(why), "%s", r < 0 && st->err[0] ? st->err : "step cancelled");
    /* A failure that came while the work was on the pool (a node down, the deadline). */
    if (r == 0 && st->fail_r < 0) {
        r = st->fail_r;
        snprintf(why, sizeof(why), "%s", st->fail_why);
    }
    st->r = st->fail_r = 0;
    if (r < 0) {
        llepd_cstep_fail(c, r, why);
        return;
    }
    if (st->phase == CSTEP_PREPARE) {
        llepd_cstep_prepared(c, st->prep_wire);
        llepd_cstep_check_progress(c);
        return;
    }
    if (st->phase == CSTEP_COMBINE) {
        llepd_cstep_end(c, 0, NULL);
        return;
    }
    if (st->xnode) {
        llepd_cstep_start_exchange(c, true);
        return;
    }
    llepd_cstep_send_results(c);
    st->phase = CSTEP_RESULTS;
    llepd_cstep_check_progress(c);
}

/* Token-slots this node computes in the step: its own and those other nodes sent. */
static uint64_t slots_here(llepd_clayer *c) {
    const llepd_cstep *st = c->st;
    uint64_t rows = 0, row_bytes = (uint64_t)c->layer->desc.hidden *
                                   (c->layer->desc.dtype == LLEP_PB__DTYPE__DTYPE_BF16 ? 2 : 4);

    for (uint32_t h = 0; h < c->ppn; h++)
        rows += (uint64_t)st->homes.batches[h].tokens * c->layer->desc.top_k;
    for (uint32_t j = 0; j < c->nodes; j++) {
        void *p;
        uint64_t n;
        if (j != c->rank && llep__part_buffer(c->part, LLEP_PART_ROWS_IN, j, &p, &n) == 0)
            rows += n / row_bytes;
    }
    return rows;
}

static void queue_work(llepd_clayer *c, enum llepd_cstep_phase phase) {
    llepd_cstep *st = c->st;
    llep_devices *devs = llep__engine_devices(c->layer->engine);

    st->phase = phase;
    st->work.data = c;
    st->work_queued = true;
    /* A tiny step costs less than the thread hand-offs of the pool: run it here when the
     * devices are free at once. */
    if (phase != CSTEP_PREPARE && slots_here(c) <= INLINE_SLOTS &&
        llep__devices_turn_try(devs)) {
        work_run(&st->work);
        llep__devices_turn_end(devs);
        work_done(&st->work, 0);
        return;
    }
    st->place = llep__devices_reserve(devs);
    int r = uv_queue_work(c->layer->srv->loop, &st->work, work_run, work_done);
    if (r < 0) {
        llep__devices_unreserve(devs, st->place);
        st->place = 0;
        st->work_queued = false;
        llepd_cstep_fail(c, r, "cannot queue the step's work");
    }
}

/* ---- the phases -------------------------------------------------------------------------- */

/* This node's part for the plan, here when the devices are free at once (as the other nodes
 * wait for its rows, it goes first), else on the pool. Returns whether it is prepared now. */
static bool prepare(llepd_clayer *c, bool wire_device) {
    llepd_cstep *st = c->st;
    llep_devices *devs = llep__engine_devices(c->layer->engine);

    st->prep_wire = wire_device;
    if (!llep__devices_turn_try(devs)) {
        /* The plan is agreed here: the step now waits for data, not for the other nodes. */
        llepd_cstep_arm_deadline(c, DATA_DEADLINE_MS);
        queue_work(c, CSTEP_PREPARE);
        return false;
    }
    int r = llepd_cstep_prepare_part(c, wire_device);
    llep__devices_turn_end(devs);
    if (r < 0) {
        const char *msg = llep__part_error(c->part);
        llepd_cstep_fail(c, r, msg[0] ? msg : "out of memory preparing the step");
        return false;
    }
    llepd_cstep_prepared(c, wire_device);
    return true;
}

void llepd_cstep_exchanged(llepd_clayer *c, int r, const char *why) {
    llepd_cstep *st = c->st;
    char msg[300];

    if (!st || !st->xnode)
        return;
    if (r < 0) {
        /* Most often another node's step failed (a failed device, say) and its close reached
         * this exchange before its word over the peer links: that word, naming the cause,
         * fails the step if it comes within EXCHANGE_GRACE_MS, else this error does
         * (on_deadline). Nothing else moves a step waiting in its exchange. */
        snprintf(msg, sizeof(msg), "%s exchange failed: %s", llepd_cxnode_name(c), why);
        if (st->work_queued) {
            llepd_cstep_fail(c, r, msg); /* the work's end fails it */
        } else if (st->fail_r == 0) {
            st->fail_r = r;
            snprintf(st->fail_why, sizeof(st->fail_why), "%.255s", msg);
            llepd_cstep_arm_deadline(c, EXCHANGE_GRACE_MS);
        }
    } else if (st->phase == CSTEP_XROWS) {
        queue_work(c, CSTEP_COMPUTE);
    } else if (st->phase == CSTEP_XRESULTS) {
        queue_work(c, CSTEP_COMBINE);
    }
}

static bool all(const bool *v, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (!v[i])
            return false;
    return true;
}

void llepd_cstep_check_progress(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    int r;

    if (st && st->phase == CSTEP_LOADS && all(st->have_loads, c->nodes))
        llepd_cstep_make_plan(c);
    st = c->st;
    /* Rows and weights go out with the hash rather than after every hash is in: one round
     * trip less. Nothing computes until every hash is in and agrees; data of a plan that
     * differs is only buffered, then dropped with the step. */
    if (st && st->phase == CSTEP_HASH && !prepare(c, st->comm_up[c->rank]))
        return;
    st = c->st;
    if (st && st->phase == CSTEP_DATA) {
        if (!all(st->have_hash, c->nodes) || !llepd_cstep_hashes_agree(c))
            return;
        if (!st->decided) {
            /* Prepared for a communicator the others do not use: again for the peer links. */
            if (llepd_cstep_decide(c) == 1 && !prepare(c, false))
                return;
            st = c->st;
            if (!st || st->xnode)
                return;
        }
        r = llepd_cstep_take_buffers(c, LLEP_PART_ROWS_IN, st->rows_in);
        if (r == 1 && (r = llepd_cstep_take_weights(c)) == 1) {
            r = 0;
            for (uint32_t j = 0; j < c->nodes; j++)
                llepd_cbuf_free(&st->rows_in[j]);
            queue_work(c, CSTEP_COMPUTE);
            return;
        }
        if (r < 0)
            llepd_cstep_fail(c, r, "a node sent rows or weights of another size than the plan "
                                   "gives");
        return;
    }
    if (st && st->phase == CSTEP_RESULTS) {
        r = llepd_cstep_take_buffers(c, LLEP_PART_RESULTS_IN, st->results_in);
        if (r == 1)
            queue_work(c, CSTEP_COMBINE);
        else if (r < 0)
            llepd_cstep_fail(c, r, "a node sent results of another size than the plan gives");
    }
}
