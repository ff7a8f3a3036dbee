/* Steps of cluster-scope layers: the loads and the plan hash (cluster-step-internal.h). Each
 * node sends its tokens' loads per expert to every node; once all are in, every node makes
 * the same plan from their sum with the origin's parameters and sends its hash; a hash that
 * differs from this node's fails the step on every node before any data is used. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-step-internal.h"
#include "log.h"
#include "plan-cost.h"

void llepd_cstep_send_loads(llepd_clayer *c) {
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
    m.cost_planner = p.planner == LLEP_PLANNER_COST;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_LOADS;
    f.cluster_loads = &m;
    llepd_clayer_send_all(c, &f);
}

/* The layer's figures for the cost model: the same on every node (desc and share layout). */
static void cost_layer_of(const llepd_clayer *c, llep_cost_layer *ret) {
    const LlepPb__LayerDesc *d = &c->layer->desc;

    llep__cost_layer(ret, d->hidden, d->inter, d->dtype == LLEP_PB__DTYPE__DTYPE_BF16 ? 2 : 4,
                     c->flags != 0);
    if (c->local_experts)
        ret->weight_bytes = c->share_bytes / c->local_experts;
}

void llepd_cstep_make_plan(llepd_clayer *c) {
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
    /* The nodes' devices are calibrated differently, and every node must make the same plan
     * from the same loads and parameters: under the cost planner every node plans with the
     * origin's model (ClusterLayer.cost), and the layer's figures come from its desc alone.
     * Without a model, the paper's LLA. No cached copies (held): caches differ per node. */
    llep_cost_layer cl;
    if (p.planner == LLEP_PLANNER_COST && c->have_cost) {
        cost_layer_of(c, &cl);
        p.cost = &c->cost;
        p.cost_layer = &cl;
    } else {
        p.planner = LLEP_PLANNER_LLA;
        p.cost = NULL;
        p.cost_layer = NULL;
    }
    int r = llep__plan_run(&st->plan, sum, &p, NULL);
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
    if (c->rank == llepd_cxnode_coordinator(c))
        st->ticket = llepd_cxnode_ticket(c);
    st->phase = CSTEP_HASH;
    m.layer = c->layer->name;
    m.step = st->id;
    m.hash = st->hash;
    m.comm_epoch = st->epochs[c->rank];
    m.comm_up = st->comm_up[c->rank];
    m.comm_ticket = st->ticket;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_PLAN_HASH;
    f.cluster_plan_hash = &m;
    llepd_clayer_send_all(c, &f);
}

/* Every node must have made the same plan; the first that differs from this node's fails the
 * step (each node checks, so every node reports it). */
bool llepd_cstep_hashes_agree(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    char why[200];

    for (uint32_t j = 0; j < c->nodes; j++)
        if (st->hashes[j] != st->hash) {
            snprintf(why, sizeof(why), "plan hash mismatch: node %u made plan %016" PRIx64
                     ", node %u made plan %016" PRIx64, c->ids[c->rank], st->hash, c->ids[j],
                     st->hashes[j]);
            log_error("cluster layer '%s' step %" PRIu64 ": %s", c->layer->name, st->id, why);
            /* Every node has these same hashes and fails the step here, before any exchange:
             * its tickets are skipped alike, and the communicator stays up. */
            llepd_cxnode_skip(c);
            llepd_cstep_fail(c, -EPROTO, why);
            return false;
        }
    return true;
}
