/* Steps of cluster-scope layers: every node through the same step together (cluster-layer.h).
 *
 * Step ids keep the nodes in step: a node starts step next_step when its own clients have
 * submitted, or joins it when a peer's loads for it arrive. Loads for a later step than the
 * one in progress wait in the layer's stash (a peer that finished first may be one step
 * ahead). Nodes that disagree on the id (one missed a failed step, one restarted) meet at the
 * highest: a step that has exchanged nothing but loads takes a higher id a peer sends, and a
 * node that is behind catches up from the loads it receives, so no step fails for it. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-layer.h"
#include "log.h"
#include "session.h"
#include "submit.h"

static void exchanged(llepd_clayer *c, int r, const char *why);

#define DEFAULT_DEADLINE_MS 5000u
/* Once the plan is agreed, only data is awaited: allow for big steps on slow links. */
#define DATA_DEADLINE_MS 60000u
/* Compute and combine of steps up to this many token-slots here run on the loop thread. */
#define INLINE_SLOTS 64u

static uint32_t num_experts(const llepd_clayer *c) {
    return c->layer->desc.num_experts;
}

static void check_progress(llepd_clayer *c);
static void start_exchange(llepd_clayer *c, bool results);

/* ---- step state -------------------------------------------------------------------------- */

static void step_free(llepd_cstep *st, uint32_t nodes) {
    if (!st)
        return;
    llepd_homes_free(&st->homes);
    for (uint32_t j = 0; st->rows_in && j < nodes; j++) {
        llepd_cbuf_free(&st->rows_in[j]);
        llepd_cbuf_free(&st->results_in[j]);
    }
    for (uint32_t i = 0; i < st->nweights; i++)
        llepd_cbuf_free(&st->weights[i].buf);
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

/* What a finished step holds only for itself; the arrays sized by the layer stay. */
static void step_clear(llepd_cstep *st, uint32_t nodes) {
    llepd_homes_free(&st->homes);
    for (uint32_t j = 0; j < nodes; j++) {
        llepd_cbuf_free(&st->rows_in[j]);
        llepd_cbuf_free(&st->results_in[j]);
    }
    for (uint32_t i = 0; i < st->nweights; i++)
        llepd_cbuf_free(&st->weights[i].buf);
    st->nweights = 0;
    free(st->subs);
    st->subs = NULL;
    st->nsubs = 0;
}

/* Keeps a finished step's arrays for the next one: a step then allocates only what its
 * tokens need. */
static void step_release(llepd_clayer *c, llepd_cstep *st) {
    step_clear(st, c->nodes);
    if (c->spare)
        step_free(st, c->nodes);
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
    st->decided = false;
    memset(&st->origin_params, 0, sizeof(st->origin_params));
    memset(&st->stats, 0, sizeof(st->stats));
    memset(&st->traffic, 0, sizeof(st->traffic));
    st->work_queued = false;
    st->hash = 0;
    st->r = 0;
    st->err[0] = '\0';
    st->id = id;
    st->t0 = llepd_now_ns();
    return st;
}

static llepd_cstep *step_new(llepd_clayer *c, uint64_t id) {
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
        step_free(st, n);
        return NULL;
    }
    return st;
}

int llepd_cstep_init(llepd_clayer *c) {
    c->xn.exchanged = exchanged;
    c->future_loads = calloc((size_t)c->nodes * num_experts(c), sizeof(*c->future_loads));
    c->future_step = calloc(c->nodes, sizeof(*c->future_step));
    c->have_future = calloc(c->nodes, sizeof(*c->have_future));
    return c->future_loads && c->future_step && c->have_future ? 0 : -ENOMEM;
}

void llepd_cstep_fini(llepd_clayer *c) {
    if (c->st) {
        llep__part_abort(c->part);
        step_free(c->st, c->nodes);
        c->st = NULL;
    }
    step_free(c->spare, c->nodes);
    c->spare = NULL;
    free(c->future_loads);
    free(c->future_step);
    free(c->have_future);
    c->future_loads = NULL;
    c->future_step = NULL;
    c->have_future = NULL;
}

/* ---- messages out ------------------------------------------------------------------------ */

static void send_all(llepd_clayer *c, const LlepPb__Frame *f) {
    llepd_cluster *cl = c->layer->srv->cluster;

    for (uint32_t r = 0; r < c->nodes; r++)
        if (r != c->rank)
            (void)llepd_cluster_send(cl, c->ids[r], f);
}

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
        send_all(c, &f);
    else
        (void)llepd_cluster_send(c->layer->srv->cluster, c->ids[to_rank], &f);
}

/* ---- ending a step ----------------------------------------------------------------------- */

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
static void step_end(llepd_clayer *c, int r, const char *why) {
    llepd_layer *l = c->layer;
    llepd_server *srv = l->srv;
    llepd_cstep *st = c->st;

    if (r == 0) {
        record(c, st);
    } else {
        c->failed_steps++;
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
    step_release(c, st);
    llepd_cstep_kick(l);
    llepd_layer_maybe_destroy(l);
    srv->hooks.work_done(srv);
}

void llepd_cstep_fail(llepd_clayer *c, int r, const char *why) {
    llepd_cstep *st = c->st;
    char msg[256];

    if (!st)
        return;
    if (st->work_queued) {
        /* The pool has the part; a combine has every input already and may finish. */
        if (st->phase != CSTEP_COMBINE && st->r == 0) {
            st->r = r;
            snprintf(st->err, sizeof(st->err), "%s", why);
        }
        return;
    }
    snprintf(msg, sizeof(msg), "cluster step %" PRIu64 " of layer '%s': %s", st->id,
             c->layer->name, why);
    send_fail(c, -1, st->id, r, why, st->id + 1);
    /* Transfers of the step may be in flight into its buffers, and the other nodes' part of
     * the exchange is gone with the step: the communicator goes before the buffers do. */
    if (st->xnode)
        llepd_cxnode_close(c, "a step over it failed", false);
    llep__part_abort(c->part);
    /* A collective node still waiting for its own clients fails them with the step. */
    bool waiting = st->phase == CSTEP_WAIT_LOCAL;
    st->phase = CSTEP_ENDING;
    if (waiting && c->layer->queued)
        llepd_sched_fail_queued(c->layer, r, msg);
    step_end(c, r, msg);
}

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
    for (uint32_t j = 0; j < c->nodes && !why[0]; j++) {
        bool missing = (st->phase == CSTEP_LOADS && !st->have_loads[j]) ||
                       ((st->phase == CSTEP_HASH || st->phase == CSTEP_DATA) &&
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
                 c->xn.ops ? c->xn.ops->name : "?", DATA_DEADLINE_MS);
    if (!why[0])
        snprintf(why, sizeof(why), "the step's data did not arrive within %u ms",
                 DATA_DEADLINE_MS);
    llepd_cstep_fail(c, -ETIMEDOUT, why);
}

static void arm_deadline(llepd_clayer *c, uint32_t ms) {
    uv_timer_start(c->deadline, on_deadline, ms, 0);
}

/* ---- starting a step --------------------------------------------------------------------- */

static uint32_t first_deadline_ms(const llepd_clayer *c) {
    uint32_t g = c->layer->desc.group_timeout_ms;
    return g ? g : DEFAULT_DEADLINE_MS;
}

static void send_loads(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    uint32_t nx = num_experts(c);
    llep_plan_params p;
    LlepPb__ClusterLoads m = LLEP_PB__CLUSTER_LOADS__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    m.layer = c->layer->name;
    m.step = st->id;
    m.loads = &st->loads[(size_t)c->rank * nx];
    m.n_loads = nx;
    llepd_layer_params(c->layer, &p);
    m.alpha = p.alpha;
    m.lambda = p.lambda;
    m.min_tokens = p.min_tokens;
    m.policy = (LlepPb__Policy)p.policy;
    m.scale_min_tokens = p.scale_min_tokens;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_LOADS;
    f.cluster_loads = &m;
    send_all(c, &f);
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
    send_loads(c);
    check_progress(c);
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

static int start_step(llepd_clayer *c, uint64_t id) {
    llepd_layer *l = c->layer;
    llepd_cstep *st = step_new(c, id);
    uint32_t nx = num_experts(c);

    if (!st)
        return -ENOMEM;
    c->st = st;
    c->next_step = id;
    l->running = true;
    l->srv->running_steps++;
    st->phase = CSTEP_WAIT_LOCAL;
    arm_deadline(c, first_deadline_ms(c));
    /* Loads that came early for this step. */
    for (uint32_t j = 0; j < c->nodes; j++)
        if (c->have_future[j] && c->future_step[j] == id) {
            memcpy(&st->loads[(size_t)j * nx], &c->future_loads[(size_t)j * nx],
                   nx * sizeof(uint64_t));
            st->have_loads[j] = true;
            c->have_future[j] = false;
            if (j == c->origin)
                st->origin_params = c->future_origin_params;
        }
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
            step_release(c, st);
            l->running = false;
            l->srv->running_steps--;
            llepd_sched_arm_group_timer(l);
        }
    }
}

/* ---- the phases -------------------------------------------------------------------------- */

static bool all(const bool *v, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (!v[i])
            return false;
    return true;
}

static void make_plan(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    uint32_t nx = num_experts(c);
    uint64_t *sum = calloc(nx, sizeof(*sum));
    llep_plan_params p;
    LlepPb__ClusterPlanHash m = LLEP_PB__CLUSTER_PLAN_HASH__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    char why[160];

    if (!sum) {
        llepd_cstep_fail(c, -ENOMEM, "out of memory planning");
        return;
    }
    for (uint32_t j = 0; j < c->nodes; j++)
        for (uint32_t x = 0; x < nx; x++)
            sum[x] += st->loads[(size_t)j * nx + x];
    /* Every node plans with the origin's parameters (its own, on the origin). */
    if (c->rank == c->origin)
        llepd_layer_params(c->layer, &p);
    else
        p = st->origin_params;
    if (c->inject_mismatch)
        p.alpha *= 2; /* LLEPD_TEST_PLAN_MISMATCH: a plan of its own, consistent with the loads */
    p.devices_per_node = c->ppn; /* hierarchical: spill on the node first */
    int r = llep__plan_compute(&st->plan, sum, &p);
    free(sum);
    if (r < 0) {
        snprintf(why, sizeof(why), "planning failed: %s", strerror(-r));
        llepd_cstep_fail(c, r, why);
        return;
    }
    st->hash = llep__plan_hash(&st->plan);
    st->hashes[c->rank] = st->hash;
    st->have_hash[c->rank] = true;
    st->epochs[c->rank] = llepd_cxnode_epoch(c, &st->comm_up[c->rank]);
    st->phase = CSTEP_HASH;
    m.layer = c->layer->name;
    m.step = st->id;
    m.hash = st->hash;
    m.comm_epoch = st->epochs[c->rank];
    m.comm_up = st->comm_up[c->rank];
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_PLAN_HASH;
    f.cluster_plan_hash = &m;
    send_all(c, &f);
}

/* Every node must have made the same plan; the first that differs from this node's fails the
 * step (each node checks, so every node reports it). */
static bool hashes_agree(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    char why[200];

    for (uint32_t j = 0; j < c->nodes; j++)
        if (st->hashes[j] != st->hash) {
            snprintf(why, sizeof(why), "plan hash mismatch: node %u made plan %016" PRIx64
                     ", node %u made plan %016" PRIx64, c->ids[c->rank], st->hash, c->ids[j],
                     st->hashes[j]);
            log_error("cluster layer '%s' step %" PRIu64 ": %s", c->layer->name, st->id, why);
            llepd_cstep_fail(c, -EPROTO, why);
            return false;
        }
    return true;
}

static void send_step_data(llepd_clayer *c) {
    llepd_cstep *st = c->st;

    for (uint32_t j = 0; j < c->nodes; j++) {
        void *p;
        uint64_t n;
        if (j == c->rank || llep__part_buffer(c->part, LLEP_PART_ROWS_OUT, j, &p, &n) < 0)
            continue;
        (void)llepd_clayer_send_data(c, j, st->id, LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_ROWS, 0,
                                     p, n);
    }
    for (uint32_t i = 0; i < llep__part_num_weights(c->part, 1); i++) {
        const llep_part_weights *w = llep__part_weights(c->part, 1, i);
        (void)llepd_clayer_send_data(c, w->node, st->id,
                                     LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_WEIGHTS, w->expert,
                                     w->data, w->bytes);
    }
}

/* Prepares this node's part: its buffers in device memory when the data is to go over the
 * communicator (wire_device), else in host memory for the peer links. */
static int prepare_part(llepd_clayer *c, bool wire_device) {
    llepd_cstep *st = c->st;
    uint32_t nx = num_experts(c);
    const uint64_t **nl = malloc(c->nodes * sizeof(*nl));

    if (!nl) {
        llepd_cstep_fail(c, -ENOMEM, "out of memory preparing the step");
        return -ENOMEM;
    }
    for (uint32_t j = 0; j < c->nodes; j++)
        nl[j] = &st->loads[(size_t)j * nx];
    int r = llep__part_set_device_wire(c->part, wire_device);
    if (r == 0)
        r = llep__part_prepare(c->part, &st->plan, nl, st->homes.batches);
    free(nl);
    if (r < 0)
        llepd_cstep_fail(c, r, llep__part_error(c->part));
    return r;
}

/* With its communicator up this node expects to use it, so it waits for every hash before
 * anything goes out; otherwise rows and weights go over the peer links with the hash. */
static void prepare(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    bool wire_device = st->comm_up[c->rank];

    if (prepare_part(c, wire_device) < 0)
        return;
    st->phase = CSTEP_DATA;
    arm_deadline(c, DATA_DEADLINE_MS);
    if (!wire_device)
        send_step_data(c);
}

/* Whether every buffer of `kind` from the other nodes is complete; copies them into the part
 * when they all are. A size that differs from what the plan says fails the step. */
static int take_buffers(llepd_clayer *c, enum llep_part_buf kind, llepd_cbuf *in) {
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t j = 0; j < c->nodes; j++) {
            void *p;
            uint64_t n;
            if (j == c->rank || llep__part_buffer(c->part, kind, j, &p, &n) < 0 || n == 0)
                continue;
            if (pass == 0 && (!in[j].started || in[j].got < in[j].total))
                return 0;
            if (pass == 0 && in[j].total != n)
                return -EPROTO;
            if (pass == 1)
                memcpy(p, in[j].data, n);
        }
    return 1;
}

static int take_weights(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    uint32_t nw = llep__part_num_weights(c->part, 0);

    for (int pass = 0; pass < 2; pass++)
        for (uint32_t i = 0; i < nw; i++) {
            const llep_part_weights *w = llep__part_weights(c->part, 0, i);
            llepd_cweights *got = NULL;
            for (uint32_t k = 0; k < st->nweights && !got; k++)
                if (st->weights[k].expert == w->expert && st->weights[k].from == w->node)
                    got = &st->weights[k];
            if (pass == 0 && (!got || !got->buf.started || got->buf.got < got->buf.total))
                return 0;
            if (pass == 0 && got->buf.total != w->bytes)
                return -EPROTO;
            if (pass == 1)
                memcpy(w->data, got->buf.data, w->bytes);
        }
    return 1;
}

static void work_run(uv_work_t *req) {
    llepd_clayer *c = req->data;
    llepd_cstep *st = c->st;

    if (st->phase == CSTEP_COMPUTE) {
        st->r = llep__part_compute(c->part);
    } else {
        st->r = llep__part_combine(c->part, &st->stats);
        if (st->r == 0) {
            llepd_homes_unstage(&st->homes, c->layer);
            memcpy(st->dev, st->stats.devices, c->ppn * sizeof(*st->dev));
            llep__part_traffic(c->part, &st->traffic);
        }
    }
    if (st->r < 0)
        snprintf(st->err, sizeof(st->err), "%s", llep__part_error(c->part));
}

static void work_done(uv_work_t *req, int status) {
    llepd_clayer *c = req->data;
    llepd_cstep *st = c->st;
    int r = status < 0 ? -ECANCELED : st->r;

    st->work_queued = false;
    if (r < 0) {
        char why[256];
        snprintf(why, sizeof(why), "%s", st->err[0] ? st->err : "step cancelled");
        st->r = 0;
        llepd_cstep_fail(c, r, why);
        return;
    }
    if (st->phase == CSTEP_COMBINE) {
        step_end(c, 0, NULL);
        return;
    }
    if (st->xnode) {
        start_exchange(c, true);
        return;
    }
    for (uint32_t j = 0; j < c->nodes; j++) {
        void *p;
        uint64_t n;
        if (j != c->rank && llep__part_buffer(c->part, LLEP_PART_RESULTS_OUT, j, &p, &n) == 0)
            (void)llepd_clayer_send_data(c, j, st->id,
                                         LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_RESULTS, 0, p, n);
    }
    st->phase = CSTEP_RESULTS;
    check_progress(c);
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

    st->phase = phase;
    st->work.data = c;
    st->work_queued = true;
    /* A tiny step costs less than the thread hand-offs of the pool: run it here. */
    if (slots_here(c) <= INLINE_SLOTS) {
        work_run(&st->work);
        work_done(&st->work, 0);
        return;
    }
    int r = uv_queue_work(c->layer->srv->loop, &st->work, work_run, work_done);
    if (r < 0) {
        st->work_queued = false;
        llepd_cstep_fail(c, r, "cannot queue the step's work");
    }
}

/* ---- the communicator path ----------------------------------------------------------------- */

static void add_op(llep_xnode_op *ops, uint32_t *n, uint32_t peer, int recv, void *buf,
                   uint64_t bytes) {
    if (bytes == 0)
        return;
    ops[*n].peer = peer;
    ops[*n].recv = recv;
    ops[*n].buf = buf;
    ops[*n].bytes = bytes;
    (*n)++;
}

/* The step's transfers: per peer, rows (or results) out and in, then the weight blocks in the
 * order both ends list them (engine-part.h), so that each pair matches in order. */
static uint32_t build_ops(llepd_clayer *c, bool results, llep_xnode_op *ops) {
    enum llep_part_buf out = results ? LLEP_PART_RESULTS_OUT : LLEP_PART_ROWS_OUT;
    enum llep_part_buf in = results ? LLEP_PART_RESULTS_IN : LLEP_PART_ROWS_IN;
    uint32_t n = 0, nwo = llep__part_num_weights(c->part, 1);
    uint32_t nwi = llep__part_num_weights(c->part, 0);

    for (uint32_t j = 0; j < c->nodes; j++) {
        void *p;
        uint64_t b;
        if (j == c->rank)
            continue;
        if (llep__part_buffer(c->part, out, j, &p, &b) == 0)
            add_op(ops, &n, j, 0, p, b);
        if (llep__part_buffer(c->part, in, j, &p, &b) == 0)
            add_op(ops, &n, j, 1, p, b);
        for (uint32_t i = 0; !results && i < nwo; i++) {
            const llep_part_weights *w = llep__part_weights(c->part, 1, i);
            if (w->node == j)
                add_op(ops, &n, j, 0, w->data, w->bytes);
        }
        for (uint32_t i = 0; !results && i < nwi; i++) {
            const llep_part_weights *w = llep__part_weights(c->part, 0, i);
            if (w->node == j)
                add_op(ops, &n, j, 1, w->data, w->bytes);
        }
    }
    return n;
}

static void start_exchange(llepd_clayer *c, bool results) {
    llepd_cstep *st = c->st;
    uint32_t cap = 2 * c->nodes + llep__part_num_weights(c->part, 1) +
                   llep__part_num_weights(c->part, 0);
    llep_xnode_op *ops = calloc(cap, sizeof(*ops));
    char err[200], why[260];

    if (!ops) {
        llepd_cstep_fail(c, -ENOMEM, "out of memory starting the exchange");
        return;
    }
    uint32_t n = build_ops(c, results, ops);
    st->phase = results ? CSTEP_XRESULTS : CSTEP_XROWS;
    int r = llepd_cxnode_exchange(c, ops, n, err, sizeof(err));
    free(ops);
    if (r < 0) {
        snprintf(why, sizeof(why), "%s exchange: %s", c->xn.ops->name, err);
        llepd_cstep_fail(c, r, why);
    }
}

static void exchanged(llepd_clayer *c, int r, const char *why) {
    llepd_cstep *st = c->st;
    char msg[300];

    if (!st || !st->xnode)
        return;
    if (r < 0) {
        snprintf(msg, sizeof(msg), "%s exchange failed: %s", c->xn.ops->name, why);
        llepd_cstep_fail(c, r, msg);
    } else if (st->phase == CSTEP_XROWS) {
        queue_work(c, CSTEP_COMPUTE);
    } else if (st->phase == CSTEP_XRESULTS) {
        queue_work(c, CSTEP_COMBINE);
    }
}

/* Every hash is in and agrees: the data goes over the communicator when every node has the
 * same epoch up. A node whose communicator is up while another names another epoch closes it
 * (that node closed or never joined it, or a newer one is starting), then prepares again with
 * host buffers for the peer links. */
static void decide(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    uint64_t mine = st->epochs[c->rank];
    bool all_up = st->comm_up[c->rank];
    int other = -1;
    char why[160];

    st->decided = true;
    for (uint32_t j = 0; j < c->nodes; j++) {
        all_up = all_up && st->comm_up[j] && st->epochs[j] == mine;
        if (st->epochs[j] != mine && other < 0)
            other = (int)j;
    }
    if (all_up) {
        st->xnode = true;
        start_exchange(c, false);
        return;
    }
    if (!st->comm_up[c->rank])
        return; /* rows and weights went out with the hash */
    if (other >= 0) {
        snprintf(why, sizeof(why), "node %u has communicator epoch %" PRIu64 ", this node %"
                 PRIu64, c->ids[other], st->epochs[other], mine);
        llepd_cxnode_close(c, why, false);
    }
    llep__part_abort(c->part);
    if (prepare_part(c, false) == 0)
        send_step_data(c);
}

static void check_progress(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    int r;

    if (st && st->phase == CSTEP_LOADS && all(st->have_loads, c->nodes))
        make_plan(c);
    st = c->st;
    /* Rows and weights go out with the hash rather than after every hash is in: one round
     * trip less. Nothing computes until every hash is in and agrees; data of a plan that
     * differs is only buffered, then dropped with the step. */
    if (st && st->phase == CSTEP_HASH)
        prepare(c);
    st = c->st;
    if (st && st->phase == CSTEP_DATA) {
        if (!all(st->have_hash, c->nodes) || !hashes_agree(c))
            return;
        if (!st->decided) {
            decide(c);
            st = c->st;
            if (!st || st->xnode)
                return;
        }
        r = take_buffers(c, LLEP_PART_ROWS_IN, st->rows_in);
        if (r == 1 && (r = take_weights(c)) == 1) {
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
        r = take_buffers(c, LLEP_PART_RESULTS_IN, st->results_in);
        if (r == 1)
            queue_work(c, CSTEP_COMBINE);
        else if (r < 0)
            llepd_cstep_fail(c, r, "a node sent results of another size than the plan gives");
    }
}

/* ---- messages in ------------------------------------------------------------------------- */

/* Moves a step that has exchanged nothing but loads to a later id a peer is at: nodes that
 * disagree on the id (one missed a failed step, one restarted) meet at the highest. */
static void renumber(llepd_clayer *c, uint64_t id) {
    llepd_cstep *st = c->st;
    uint32_t nx = num_experts(c);
    bool sent = st->phase == CSTEP_LOADS;

    log_info("cluster layer '%s': step %" PRIu64 " goes on as step %" PRIu64 " with the other "
             "nodes", c->layer->name, st->id, id);
    st->id = id;
    c->next_step = id;
    for (uint32_t j = 0; j < c->nodes; j++) {
        if (j == c->rank)
            continue;
        st->have_loads[j] = c->have_future[j] && c->future_step[j] == id;
        if (st->have_loads[j]) {
            memcpy(&st->loads[(size_t)j * nx], &c->future_loads[(size_t)j * nx],
                   nx * sizeof(uint64_t));
            c->have_future[j] = false;
            if (j == c->origin)
                st->origin_params = c->future_origin_params;
        }
    }
    if (sent)
        send_loads(c);
}

static llep_plan_params params_of(const LlepPb__ClusterLoads *m) {
    llep_plan_params p;

    llep__plan_params_default(&p);
    p.alpha = m->alpha;
    p.lambda = m->lambda;
    p.min_tokens = m->min_tokens;
    p.policy = (enum llep_policy)m->policy;
    p.scale_min_tokens = m->scale_min_tokens;
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
        check_progress(c);
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

static void on_data(llepd_clayer *c, uint32_t from, const LlepPb__ClusterData *d) {
    llepd_cstep *st = c->st;
    llepd_cbuf *b = NULL;
    char err[200], why[260];

    if (!st || d->step != st->id)
        return; /* a failed step's data still on its way */
    if (d->kind == LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_ROWS)
        b = &st->rows_in[from];
    else if (d->kind == LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_RESULTS)
        b = &st->results_in[from];
    else if (d->kind == LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_WEIGHTS) {
        for (uint32_t k = 0; k < st->nweights && !b; k++)
            if (st->weights[k].expert == d->index && st->weights[k].from == from)
                b = &st->weights[k].buf;
        if (!b) {
            if (st->nweights == st->cap_weights) {
                uint32_t cap = st->cap_weights ? 2 * st->cap_weights : 8;
                llepd_cweights *v = realloc(st->weights, cap * sizeof(*v));
                if (!v) {
                    llepd_cstep_fail(c, -ENOMEM, "out of memory receiving weights");
                    return;
                }
                st->weights = v;
                st->cap_weights = cap;
            }
            llepd_cweights *w = &st->weights[st->nweights++];
            memset(w, 0, sizeof(*w));
            w->expert = d->index;
            w->from = from;
            b = &w->buf;
        }
    }
    if (!b)
        return;
    int r = llepd_cbuf_add(b, d, LLEPD_CLUSTER_MAX_BUFFER, err, sizeof(err));
    if (r < 0) {
        snprintf(why, sizeof(why), "node %u: %s", c->ids[from], err);
        llepd_cstep_fail(c, r, why);
    } else if (r == 1) {
        check_progress(c);
    }
}

void llepd_cstep_handle(llepd_clayer *c, uint32_t from, const LlepPb__Frame *f) {
    llepd_cstep *st = c->st;
    char why[320];

    switch (f->body_case) {
    case LLEP_PB__FRAME__BODY_CLUSTER_LOADS:
        on_loads(c, from, f->cluster_loads);
        break;
    case LLEP_PB__FRAME__BODY_CLUSTER_PLAN_HASH:
        if (st && f->cluster_plan_hash->step == st->id) {
            st->hashes[from] = f->cluster_plan_hash->hash;
            st->have_hash[from] = true;
            st->epochs[from] = f->cluster_plan_hash->comm_epoch;
            st->comm_up[from] = f->cluster_plan_hash->comm_up;
            check_progress(c);
        }
        break;
    case LLEP_PB__FRAME__BODY_CLUSTER_DATA:
        on_data(c, from, f->cluster_data);
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
