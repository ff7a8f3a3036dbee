/* Steps of cluster-scope layers: every node through the same step together (cluster-layer.h).
 *
 * Step ids keep the nodes in step: a node starts step next_step when its own clients have
 * submitted, or joins it when a peer's loads for it arrive. Loads for a later step than the
 * one in progress wait in the layer's stash (a peer that finished first may be one step
 * ahead). Nodes that disagree on the id (one missed a failed step, one restarted) meet at the
 * highest: a step that has exchanged nothing but loads takes a higher id a peer sends, and a
 * node that is behind catches up from the loads it receives, so no step fails for it.
 *
 * This file starts or joins a step and takes the peers' step messages; the rest is in
 * cluster-step-run.c (moving a step on), cluster-step-plan.c (loads and the plan hash),
 * cluster-step-data.c (rows, weights and results) and cluster-step-end.c (a step's memory, its
 * deadline and its end), which call each other in that order (cluster-step-internal.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-step-internal.h"
#include "log.h"

#define DEFAULT_DEADLINE_MS 5000u

/* ---- set-up and teardown ----------------------------------------------------------------- */

int llepd_cstep_init(llepd_clayer *c) {
    c->xn.exchanged = llepd_cstep_exchanged;
    c->future_loads = calloc((size_t)c->nodes * num_experts(c), sizeof(*c->future_loads));
    c->future_step = calloc(c->nodes, sizeof(*c->future_step));
    c->have_future = calloc(c->nodes, sizeof(*c->have_future));
    return c->future_loads && c->future_step && c->have_future ? 0 : -ENOMEM;
}

void llepd_cstep_fini(llepd_clayer *c) {
    if (c->st) {
        llep__part_abort(c->part);
        llepd_cstep_free(c->st, c->nodes);
        c->st = NULL;
    }
    llepd_cstep_free(c->spare, c->nodes);
    c->spare = NULL;
    free(c->future_loads);
    free(c->future_step);
    free(c->have_future);
    c->future_loads = NULL;
    c->future_step = NULL;
    c->have_future = NULL;
}

/* ---- starting a step --------------------------------------------------------------------- */

static uint32_t first_deadline_ms(const llepd_clayer *c) {
    uint32_t g = c->layer->desc.group_timeout_ms;
    return g ? g : DEFAULT_DEADLINE_MS;
}

/* This node's part of the step: its submissions, their loads out to every node. */
static void begin_local(llepd_clayer *c, llepd_sub **subs, uint32_t n) {
    llepd_layer *l = c->layer;
    llepd_cstep *st = c->st;
    uint64_t *mine = &st->loads[(size_t)c->rank * num_experts(c)];

    free(st->subs);
    st->subs = subs;
    st->nsubs = n;
    int r = llepd_homes_build(&st->homes, l, subs, n, c->ppn);
    if (r < 0) {
        llepd_cstep_fail(c, r, "llepd is out of memory staging the step");
        return;
    }
    r = llep__part_count(c->part, st->homes.batches, mine);
    if (r < 0) {
        llepd_cstep_fail(c, r, llep__part_error(c->part));
        return;
    }
    st->have_loads[c->rank] = true;
    st->phase = CSTEP_LOADS;
    llepd_cstep_send_loads(c);
    llepd_cstep_check_progress(c);
}

/* Takes this node's submissions for the step, if its batching rule lets it. */
static bool take_local(llepd_clayer *c, bool joining) {
    llepd_layer *l = c->layer;
    llepd_sub **subs = malloc((l->queued ? l->queued : 1) * sizeof(*subs));

    if (!subs) {
        llepd_cstep_fail(c, -ENOMEM, "llepd is out of memory starting a step");
        return false;
    }
    uint32_t n = l->queued ? llepd_sched_take(l, subs) : 0;
    /* Opportunistic layers join with whatever is queued, even nothing. */
    if (n == 0 && !(joining && l->desc.group == 0)) {
        free(subs);
        return false;
    }
    begin_local(c, subs, n);
    return true;
}

/* Node j's loads that came early, when they are for step id: into the step. */
static bool take_future(llepd_clayer *c, uint32_t j, uint64_t id) {
    llepd_cstep *st = c->st;
    uint32_t nx = num_experts(c);

    if (!c->have_future[j] || c->future_step[j] != id)
        return false;
    memcpy(&st->loads[(size_t)j * nx], &c->future_loads[(size_t)j * nx], nx * sizeof(uint64_t));
    st->have_loads[j] = true;
    c->have_future[j] = false;
    if (j == c->origin)
        st->origin_params = c->future_origin_params;
    return true;
}

static int start_step(llepd_clayer *c, uint64_t id) {
    llepd_layer *l = c->layer;
    llepd_cstep *st = llepd_cstep_new(c, id);

    if (!st)
        return -ENOMEM;
    c->st = st;
    c->next_step = id;
    l->running = true;
    l->srv->running_steps++;
    st->phase = CSTEP_WAIT_LOCAL;
    llepd_cstep_arm_deadline(c, first_deadline_ms(c));
    /* Loads that came early for this step. */
    for (uint32_t j = 0; j < c->nodes; j++)
        (void)take_future(c, j, id);
    return 0;
}

/* Why a step cannot start now, or NULL. */
static const char *not_runnable(llepd_clayer *c) {
    llepd_cluster *cl = c->layer->srv->cluster;

    for (uint32_t r = 0; r < c->nodes && !c->orphaned; r++)
        if (r != c->rank && !llepd_cluster_peer_up(cl, c->ids[r])) {
            snprintf(c->state, sizeof(c->state), "node %u is down", c->ids[r]);
            return c->state;
        }
    return c->orphaned ? c->state : NULL;
}

void llepd_cstep_kick(llepd_layer *l) {
    llepd_clayer *c = l->cluster;
    char why[320];

    if (!c || !c->part || l->creating)
        return;
    if (c->st) {
        if (c->st->phase == CSTEP_WAIT_LOCAL)
            take_local(c, false);
        return;
    }
    llepd_cxnode_maybe_start(c);
    bool future = false;
    for (uint32_t j = 0; j < c->nodes; j++)
        future |= c->have_future[j] && c->future_step[j] >= c->next_step;
    if (l->queued == 0 && !future)
        return;
    const char *bad = not_runnable(c);
    if (bad) {
        snprintf(why, sizeof(why), "cluster layer '%s' cannot step: %s", l->name, bad);
        llepd_sched_fail_queued(l, -EHOSTDOWN, why);
        return;
    }
    uint64_t id = c->next_step;
    for (uint32_t j = 0; j < c->nodes; j++)
        if (c->have_future[j] && c->future_step[j] > id)
            id = c->future_step[j]; /* the others went on: catch up */
    if (start_step(c, id) < 0) {
        llepd_sched_fail_queued(l, -ENOMEM, "llepd is out of memory starting a step");
        return;
    }
    if (!take_local(c, future)) {
        if (c->st && c->st->phase == CSTEP_WAIT_LOCAL && !future) {
            /* Nothing to run after all (a collective group not complete). */
            llepd_cstep *st = c->st;
            c->st = NULL;
            uv_timer_stop(c->deadline);
            llepd_cstep_release(c, st);
            l->running = false;
            l->srv->running_steps--;
            llepd_sched_arm_group_timer(l);
        }
    }
}

/* ---- messages in ------------------------------------------------------------------------- */

/* Moves a step that has exchanged nothing but loads to a later id a peer is at: nodes that
 * disagree on the id (one missed a failed step, one restarted) meet at the highest. */
static void renumber(llepd_clayer *c, uint64_t id) {
    llepd_cstep *st = c->st;
    bool sent = st->phase == CSTEP_LOADS;

    log_info("cluster layer '%s': step %" PRIu64 " goes on as step %" PRIu64 " with the other "
             "nodes", c->layer->name, st->id, id);
    st->id = id;
    c->next_step = id;
    for (uint32_t j = 0; j < c->nodes; j++)
        if (j != c->rank)
            st->have_loads[j] = take_future(c, j, id);
    if (sent)
        llepd_cstep_send_loads(c);
}

static llep_plan_params params_of(const LlepPb__ClusterLoads *m) {
    llep_plan_params p;

    llep__plan_params_default(&p);
    p.alpha = m->alpha;
    p.lambda = m->lambda;
    p.min_tokens = m->min_tokens;
    p.policy = (enum llep_policy)m->policy;
    p.scale_min_tokens = m->scale_min_tokens;
    p.planner = m->cost_planner ? LLEP_PLANNER_COST : LLEP_PLANNER_LLA;
    return p;
}

static void on_loads(llepd_clayer *c, uint32_t from, const LlepPb__ClusterLoads *m) {
    uint32_t nx = num_experts(c);
    llepd_cstep *st = c->st;

    if (m->n_loads != nx) {
        log_warning("cluster layer '%s': node %u sent %zu loads, the layer has %u experts",
                    c->layer->name, c->ids[from], m->n_loads, nx);
        return;
    }
    if (st && m->step > st->id &&
        (st->phase == CSTEP_WAIT_LOCAL || st->phase == CSTEP_LOADS))
        renumber(c, m->step);
    if (st && m->step == st->id) {
        memcpy(&st->loads[(size_t)from * nx], m->loads, nx * sizeof(uint64_t));
        st->have_loads[from] = true;
        if (from == c->origin)
            st->origin_params = params_of(m);
        llepd_cstep_check_progress(c);
        return;
    }
    if (st && m->step < st->id)
        return; /* the sender is behind: our loads for st->id make it catch up */
    /* A later step (the sender finished this one first), or one to join. */
    memcpy(&c->future_loads[(size_t)from * nx], m->loads, nx * sizeof(uint64_t));
    c->future_step[from] = m->step;
    c->have_future[from] = true;
    if (from == c->origin)
        c->future_origin_params = params_of(m);
    if (!st)
        llepd_cstep_kick(c->layer);
}

void llepd_cstep_handle(llepd_clayer *c, uint32_t from, const LlepPb__Frame *f) {
    llepd_cstep *st = c->st;
    char why[320];

    switch (f->body_case) {
    case LLEP_PB__FRAME__BODY_CLUSTER_LOADS:
        on_loads(c, from, f->cluster_loads);
        break;
    case LLEP_PB__FRAME__BODY_CLUSTER_PLAN_HASH: {
        const LlepPb__ClusterPlanHash *h = f->cluster_plan_hash;
        bool mine = st && h->step == st->id;
        /* The coordinator's exchange ticket: queued before the step may decide to use it. */
        if (h->comm_ticket && from == llepd_cxnode_coordinator(c)) {
            if (mine)
                st->ticket = h->comm_ticket;
            llepd_cxnode_announce(c, h->comm_epoch, h->comm_ticket, mine);
            st = c->st; /* closing the communicator may have failed it */
            mine = st && h->step == st->id;
        }
        if (mine) {
            st->hashes[from] = f->cluster_plan_hash->hash;
            st->have_hash[from] = true;
            st->epochs[from] = f->cluster_plan_hash->comm_epoch;
            st->comm_up[from] = f->cluster_plan_hash->comm_up;
            llepd_cstep_check_progress(c);
        }
        break;
    }
    case LLEP_PB__FRAME__BODY_CLUSTER_DATA:
        if (llepd_cstep_on_data(c, from, f->cluster_data) == 1)
            llepd_cstep_check_progress(c); /* a buffer is complete */
        break;
    case LLEP_PB__FRAME__BODY_CLUSTER_STEP_FAIL: {
        const LlepPb__ClusterStepFail *m = f->cluster_step_fail;
        if (m->next_step > c->next_step && !st)
            c->next_step = m->next_step;
        if (m->step >= c->next_step && !st)
            c->next_step = m->step + 1;
        if (st && m->step == st->id) {
            snprintf(why, sizeof(why), "node %u reports: %s", c->ids[from],
                     m->message && m->message[0] ? m->message : "step failed");
            if (m->next_step > c->next_step)
                c->next_step = m->next_step;
            llepd_cstep_fail(c, m->status == LLEP_PB__STATUS__STATUS_TIMED_OUT ? -ETIMEDOUT
                                                                           : -EREMOTEIO, why);
        }
        if (c->have_future[from] && c->future_step[from] <= m->step)
            c->have_future[from] = false;
        break;
    }
    default:
        break;
    }
}
