/* Cluster-scope layers: their state, creation at the origin and on the other nodes, peers
 * coming and going, the peer frames they serve, teardown, and the ops the server sees (see
 * cluster-layer.h). A node's share of the experts (its layout, packing, and the engine made
 * from it) is cluster-share.c's; steps are cluster-step*.c's; the communicator between nodes
 * is cluster-xnode.c's. */
#include "cluster-layer-internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cluster-cost.h"
#include "log.h"
#include "session.h"
#include "validate.h"

/* How long the origin's create waits for the other nodes to load their shares. */
#define CREATE_TIMEOUT_MS 60000u

static const llepd_layer_ops clayer_ops;

static llepd_clayer *clayer_of(llepd_server *srv, const char *name, bool include_dead) {
    for (uint32_t i = 0; i < srv->nlayers; i++) {
        llepd_layer *l = srv->layers[i];
        if (l->cluster && (include_dead || !l->dead) && strcmp(l->name, name) == 0)
            return l->cluster;
    }
    return NULL;
}

/* ---- state ------------------------------------------------------------------------------- */

static void timer_closed(uv_handle_t *h) {
    free(h);
}

static uv_timer_t *timer_new(llepd_clayer *c) {
    uv_timer_t *t = malloc(sizeof(*t));

    if (t && uv_timer_init(c->layer->srv->loop, t) == 0) {
        t->data = c;
        return t;
    }
    free(t);
    return NULL;
}

static void timer_close(uv_timer_t **t) {
    if (*t)
        uv_close((uv_handle_t *)*t, timer_closed);
    *t = NULL;
}

/* Names the node of a rank for messages: "node 3". */
static const char *node_name(const llepd_clayer *c, uint32_t rank, char *buf, size_t len) {
    snprintf(buf, len, "node %u", c->ids[rank]);
    return buf;
}

static void set_state(llepd_clayer *c) {
    llepd_cluster *cl = c->layer->srv->cluster;
    char nm[32];

    if (c->orphaned) {
        snprintf(c->state, sizeof(c->state), "orphaned: its origin %s went away; create it "
                 "again", node_name(c, c->origin, nm, sizeof(nm)));
        return;
    }
    for (uint32_t r = 0; r < c->nodes; r++)
        if (r != c->rank && !llepd_cluster_peer_up(cl, c->ids[r])) {
            snprintf(c->state, sizeof(c->state), "%s is down", node_name(c, r, nm, sizeof(nm)));
            return;
        }
    snprintf(c->state, sizeof(c->state), "ready");
}

static llepd_clayer *clayer_alloc(llepd_layer *l, uint32_t origin_rank) {
    llepd_server *srv = l->srv;
    llepd_cluster *cl = srv->cluster;
    llepd_clayer *c = calloc(1, sizeof(*c));
    uint32_t n = llepd_cluster_nodes(cl);

    if (!c)
        return NULL;
    c->layer = l;
    c->nodes = n;
    c->rank = (uint32_t)llepd_cluster_rank_of(cl, llepd_cluster_node_id(cl));
    c->origin = origin_rank;
    c->ppn = srv->devices;
    c->local_experts = l->desc.num_experts / n;
    c->ids = calloc(n, sizeof(*c->ids));
    c->shares = calloc(n, sizeof(*c->shares));
    c->deadline = timer_new(c);
    for (uint32_t r = 0; c->ids && r < n; r++)
        c->ids[r] = llepd_cluster_node_at(cl, r);
    /* The communicator of the layer's set of nodes is found by its ids. */
    if (!c->ids || !c->shares || !c->deadline ||
        llepd_cstep_init(c) < 0 || llepd_cxnode_init(c) < 0) {
        timer_close(&c->deadline);
        llepd_cstep_fini(c);
        llepd_cxnode_fini(c);
        free(c->ids);
        free(c->shares);
        free(c);
        return NULL;
    }
    c->inject_mismatch = getenv("LLEPD_TEST_PLAN_MISMATCH") &&
                         getenv("LLEPD_TEST_PLAN_MISMATCH")[0] == '1';
    l->cluster = c;
    l->ops = &clayer_ops;
    set_state(c);
    return c;
}

/* What a cluster layer needs of this node and of the desc; 0 or -errno with err. */
static int check_fit(llepd_server *srv, const LlepPb__LayerDesc *d, uint32_t ppn, char *err,
                     size_t errlen) {
    uint32_t nodes = llepd_cluster_nodes(srv->cluster);

    if (nodes == 0) {
        snprintf(err, errlen, "scope cluster needs a clustered llepd (--node-id and --peers)");
        return -EINVAL;
    }
    if (ppn != srv->devices) {
        snprintf(err, errlen, "the layer's nodes have %u devices each, this node has %u", ppn,
                 srv->devices);
        return -EINVAL;
    }
    if (d->num_experts % (nodes * srv->devices) != 0) {
        snprintf(err, errlen, "num_experts %u is not a multiple of the cluster's %u devices "
                 "(%u nodes x %u)", d->num_experts, nodes * srv->devices, nodes, srv->devices);
        return -EINVAL;
    }
    if (!srv->backend_ops->download) {
        snprintf(err, errlen, "the %s backend cannot run cluster layers (no copies from device "
                 "to host memory)", srv->backend_ops->name);
        return -EOPNOTSUPP;
    }
    return 0;
}

static int new_origin(llepd_layer *l, char *err, size_t errlen) {
    llepd_server *srv = l->srv;
    llepd_cluster *cl = srv->cluster;
    int r = check_fit(srv, &l->desc, srv->devices, err, errlen);

    if (r < 0)
        return r;
    for (uint32_t i = 0; i < llepd_cluster_nodes(cl); i++) {
        uint32_t id = llepd_cluster_node_at(cl, i);
        if (id != llepd_cluster_node_id(cl) && !llepd_cluster_peer_up(cl, id)) {
            snprintf(err, errlen, "node %u is down; a cluster layer needs every node", id);
            return -EHOSTDOWN;
        }
    }
    llepd_clayer *c = clayer_alloc(l, (uint32_t)llepd_cluster_rank_of(cl,
                                                                      llepd_cluster_node_id(cl)));
    if (!c) {
        snprintf(err, errlen, "llepd is out of memory");
        return -ENOMEM;
    }
    if (getrandom(&c->uid, sizeof(c->uid), 0) != (ssize_t)sizeof(c->uid))
        c->uid = llepd_now_ns() ^ ((uint64_t)getpid() << 32);
    /* The model the layer's steps plan with on every node: this node's at the layer's shape
     * when it has one (server/calib-shapes.h), else the reference. A copy, fixed for the
     * layer's life, so that `llepctl tune` or a shape's measurement finishing here later
     * changes node-scope layers only, never what the nodes agreed on. Copies between nodes
     * are priced as NODE links. */
    bool shape = false;
    if (srv->devs && llep__devices_cost_for(srv->devs, l->desc.hidden, l->desc.inter,
                                            (enum llep_dtype)l->desc.dtype, &c->cost, &shape)) {
        c->cost.devices_per_node = c->ppn;
        c->have_cost = true;
        log_info("cluster layer '%s' plans with the device cost model of %s", l->name,
                 shape ? "its shape" : "the reference shape");
    }
    return 0;
}

/* ---- creation: the origin ---------------------------------------------------------------- */

/* Returns false when the link to r broke (its down callback takes it from there). */
static bool send_layer_to(llepd_clayer *c, uint32_t r) {
    llepd_cluster *cl = c->layer->srv->cluster;
    LlepPb__ClusterLayer m = LLEP_PB__CLUSTER_LAYER__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    llepd_ccost_buf cost;

    m.name = c->layer->name;
    m.desc = &c->layer->desc;
    m.origin = c->ids[c->origin];
    m.cost = c->have_cost ? llepd_ccost_pack(&cost, &c->cost) : NULL;
    m.devices_per_node = c->ppn;
    m.next_step = c->next_step;
    m.share_bytes = c->share_bytes;
    m.flags = c->flags;
    m.uid = c->uid;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_LAYER;
    f.cluster_layer = &m;
    return llepd_cluster_send(cl, c->ids[r], &f) == 0 &&
           llepd_clayer_send_data(c, r, 0, LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_LAYER_WEIGHTS,
                                  0, c->shares[r], c->share_bytes) == 0;
}

static void send_drop(llepd_clayer *c) {
    LlepPb__ClusterLayerDrop m = LLEP_PB__CLUSTER_LAYER_DROP__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    m.name = c->layer->name;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_LAYER_DROP;
    f.cluster_layer_drop = &m;
    llepd_clayer_send_all(c, &f);
}

/* Answers the client's create once nothing more is awaited. */
static void finish_create(llepd_clayer *c) {
    llepd_layer *l = c->layer;
    llepd_server *srv = l->srv;
    llepd_session *s = c->creator;

    if (!s)
        return;
    c->creator = NULL;
    timer_close(&c->create_timer);
    l->creating = false;
    if (c->create_status < 0) {
        log_warning("cluster layer '%s': creation failed: %s", l->name, c->create_err);
        send_drop(c);
    } else {
        log_info("cluster layer '%s' created over %u nodes (N=%u, %u per node)", l->name,
                 c->nodes, l->desc.num_experts, c->local_experts);
    }
    l->srv->hooks.layer_created(l, s, c->create_frame, c->create_status,
                        c->create_status < 0 ? c->create_err : NULL);
    llepd_session_unref(s);
    srv->hooks.work_done(srv); /* l may be gone */
}

static void create_fail(llepd_clayer *c, int r, const char *why) {
    if (c->create_status == 0) {
        c->create_status = r;
        snprintf(c->create_err, sizeof(c->create_err), "%s", why);
    }
    finish_create(c);
}

static void on_create_timeout(uv_timer_t *t) {
    llepd_clayer *c = t->data;
    char why[256];

    snprintf(why, sizeof(why), "%u node(s) did not load their share within %u ms",
             c->create_waiting, CREATE_TIMEOUT_MS);
    create_fail(c, -ETIMEDOUT, why);
}

static void origin_created(llepd_layer *l, llepd_session *creator, uint64_t frame_id) {
    llepd_clayer *c = l->cluster;
    char err[256];
    int r = llep__part_new(l->engine, c->nodes, c->rank, &c->part, err, sizeof(err));

    llepd_session_ref(creator);
    c->creator = creator;
    c->create_frame = frame_id;
    l->creating = true; /* until every node has answered */
    if (r < 0) {
        create_fail(c, r, err);
        return;
    }
    c->create_timer = timer_new(c);
    if (c->create_timer)
        uv_timer_start(c->create_timer, on_create_timeout, CREATE_TIMEOUT_MS, 0);
    for (uint32_t i = 0; i < c->nodes; i++) {
        if (i == c->rank)
            continue;
        c->create_waiting++;
        if (!send_layer_to(c, i)) {
            snprintf(err, sizeof(err), "node %u went down while the layer was created",
                     c->ids[i]);
            create_fail(c, -EHOSTDOWN, err);
            return;
        }
    }
    if (c->create_waiting == 0)
        finish_create(c);
}

static void handle_layer_reply(llepd_clayer *c, uint32_t from, const LlepPb__ClusterLayerReply *m) {
    int r = llep__status_to_errno(m->status);
    char why[256];

    if (r < 0)
        log_warning("cluster layer '%s': node %u could not load its share: %s", c->layer->name,
                    c->ids[from], m->message);
    if (!c->creator)
        return;
    if (r < 0) {
        snprintf(why, sizeof(why), "node %u: %s", c->ids[from], m->message);
        create_fail(c, r, why);
        return;
    }
    if (--c->create_waiting == 0)
        finish_create(c);
}

/* ---- creation: the other nodes ----------------------------------------------------------- */

/* Gives up the node's own reference: the layer goes once its clients have released it. */
static void release_hold(llepd_clayer *c) {
    llepd_layer *l = c->layer;

    if (!c->held)
        return;
    c->held = false;
    l->dead = true;
    llepd_layer_unref(l);
}

static void orphan(llepd_clayer *c, const char *why) {
    if (c->st)
        llepd_cstep_fail(c, -EHOSTDOWN, why);
    llepd_cxnode_close(c, why, false);
    c->orphaned = true;
    set_state(c);
    release_hold(c);
}

/* This node cannot take the share the origin announced or sent: the origin hears why (its
 * client's create fails) and the creation ends here. */
static void share_refused(llepd_clayer *c, int r, const char *err) {
    llepd_layer *l = c->layer;

    llepd_clayer_reply_layer(l->srv, c->ids[c->origin], l->name, r, err);
    l->creating = false;
    l->srv->hooks.layer_created(l, NULL, 0, r, err);
}

static int check_layer_msg(llepd_server *srv, const LlepPb__ClusterLayer *m, uint32_t from_id,
                           char *err, size_t errlen) {
    int r = llep__frame_check_name(m->name, err, errlen);

    if (r == 0 && !m->desc) {
        snprintf(err, errlen, "ClusterLayer without a desc");
        r = -EINVAL;
    }
    if (r == 0)
        r = llep__layer_desc_check(m->desc, err, errlen);
    if (r == 0 && m->origin != from_id) {
        snprintf(err, errlen, "node %u sent a layer of origin %u", from_id, m->origin);
        r = -EPROTO;
    }
    if (r == 0)
        r = check_fit(srv, m->desc, m->devices_per_node, err, errlen);
    if (r == 0 && m->cost) {
        llep_cost_model cost;
        r = llepd_ccost_unpack(m->cost, &cost, err, errlen);
        if (r == 0 && cost.devices_per_node != m->devices_per_node) {
            snprintf(err, errlen, "cost model of %u devices per node for a layer of %u",
                     cost.devices_per_node, m->devices_per_node);
            r = -EINVAL;
        }
    }
    return r;
}

static void handle_layer(llepd_server *srv, uint32_t from, uint32_t from_id,
                         const LlepPb__ClusterLayer *m) {
    char err[256];
    int r = check_layer_msg(srv, m, from_id, err, sizeof(err));

    if (r < 0) {
        log_warning("node %u: cluster layer refused: %s", from_id, err);
        llepd_clayer_reply_layer(srv, from_id, m->name ? m->name : "", r, err);
        return;
    }
    llepd_clayer *old = clayer_of(srv, m->name, true);
    if (old && old->uid == m->uid && old->layer->creating) {
        /* Sent again while the share was on its way (the link was lost and is back): the
         * share starts over; once the engine is being made, its answer is on the way. */
        if (!old->engine_pending)
            llepd_cbuf_free(&old->share_in);
        return;
    }
    if (old && old->uid == m->uid && old->layer->engine && !old->engine_pending) {
        /* The same layer, back after a lost link: it keeps its share and its clients. */
        if (old->next_step < m->next_step && !old->st)
            old->next_step = m->next_step;
        if (old->orphaned && !llepd_layer_find(srv, m->name)) {
            old->orphaned = false;
            old->held = true;
            old->layer->refs++;
            old->layer->dead = false;
        }
        set_state(old);
        llepd_clayer_reply_layer(srv, from_id, m->name, 0, NULL);
        return;
    }
    if (old && !old->orphaned)
        orphan(old, "replaced by a new layer of the same name from its origin");
    if (llepd_layer_find(srv, m->name)) {
        snprintf(err, sizeof(err), "node %u has a node-scope layer named '%s'",
                 llepd_cluster_node_id(srv->cluster), m->name);
        llepd_clayer_reply_layer(srv, from_id, m->name, -EEXIST, err);
        return;
    }
    llepd_layer *l = llepd_layer_new(srv, m->name, m->desc);
    llepd_clayer *c = l ? clayer_alloc(l, from) : NULL;
    if (!c) {
        if (l) {
            l->creating = false;
            l->dead = true;
            llepd_layer_maybe_destroy(l);
        }
        llepd_clayer_reply_layer(srv, from_id, m->name, -ENOMEM, "out of memory");
        return;
    }
    c->uid = m->uid;
    c->flags = m->flags;
    /* Checked in check_layer_msg. */
    c->have_cost = m->cost && llepd_ccost_unpack(m->cost, &c->cost, err, sizeof(err)) == 0;
    c->next_step = m->next_step;
    c->share_bytes = llepd_clayer_share_bytes(c);
    if (m->share_bytes != c->share_bytes) {
        snprintf(err, sizeof(err), "share of %" PRIu64 " bytes announced, the shape needs %"
                 PRIu64, m->share_bytes, c->share_bytes);
        share_refused(c, -EPROTO, err);
        return;
    }
    c->share_in.started = false;
    c->engine_pending = false;
    if (c->share_bytes == 0 && llepd_clayer_start_share_engine(c, err, sizeof(err)) < 0)
        share_refused(c, -ENOMEM, err);
}

static void handle_share_chunk(llepd_clayer *c, const LlepPb__ClusterData *d) {
    llepd_layer *l = c->layer;
    char err[256];

    /* Chunks for a layer that already has its share (a revived one) are not needed. */
    if (!l->creating || c->engine_pending || l->engine)
        return;
    int r = llepd_cbuf_add(&c->share_in, d, c->share_bytes, err, sizeof(err));
    if (r == 1 && c->share_in.total != c->share_bytes) {
        r = -EPROTO;
        snprintf(err, sizeof(err), "share of %" PRIu64 " bytes, expected %" PRIu64,
                 c->share_in.total, c->share_bytes);
    }
    if (r == 1)
        r = llepd_clayer_start_share_engine(c, err, sizeof(err));
    if (r < 0) {
        llepd_cbuf_free(&c->share_in);
        share_refused(c, r, err);
    }
}

/* The origin went away while this node received its share: the creation fails here (the
 * origin fails the client's create on its side). */
static void share_lost(llepd_clayer *c, const char *why) {
    llepd_layer *l = c->layer;
    char err[200];

    snprintf(err, sizeof(err), "the share did not arrive: %s", why);
    llepd_cbuf_free(&c->share_in);
    c->orphaned = true;
    l->creating = false;
    l->srv->hooks.layer_created(l, NULL, 0, -EHOSTDOWN, err);
}

static void handle_drop(llepd_server *srv, uint32_t from, const LlepPb__ClusterLayerDrop *m) {
    llepd_clayer *c = m->name ? clayer_of(srv, m->name, false) : NULL;

    if (c && c->origin == from && c->rank != from && !c->layer->creating) {
        log_info("cluster layer '%s': dropped by its origin node %u", c->layer->name,
                 c->ids[from]);
        orphan(c, "its origin released the layer");
    }
}

/* ---- peers ------------------------------------------------------------------------------- */

static void peer_changed(llepd_server *srv, uint32_t node_id, bool up) {
    int rank = llepd_cluster_rank_of(srv->cluster, node_id);
    char why[160];

    if (rank < 0)
        return;
    snprintf(why, sizeof(why), "node %u %s", node_id, up ? "came back" : "went down");
    /* Backwards: what follows may free a layer, which takes it out of srv->layers. */
    for (uint32_t i = srv->nlayers; i-- > 0;) {
        llepd_layer *l = srv->layers[i];
        llepd_clayer *c = l->cluster;
        uint32_t r = (uint32_t)rank;
        if (!c || l->dead)
            continue;
        set_state(c);
        if (up) {
            /* The origin gives a node that comes back its share (again), and a communicator
             * as soon as the next step begins. */
            if (c->rank == c->origin && !c->creator && l->engine)
                (void)send_layer_to(c, r);
            if (r == c->origin)
                c->refill_asked = false; /* a request may have been lost with the link */
            llepd_cxnode_peer(c, node_id, true, why);
            continue;
        }
        /* Whatever the set's communicator was doing, that node's rank is gone from it: the
         * other layers' exchanges in it fail now, this one's step just below. */
        llepd_cxnode_peer(c, node_id, false, why);
        if (c->creator)
            create_fail(c, -EHOSTDOWN, why);
        else if (r == c->origin && l->creating && !c->engine_pending)
            share_lost(c, why);
        else if (r == c->origin)
            orphan(c, why);
        else if (c->st)
            llepd_cstep_fail(c, -EHOSTDOWN, why);
    }
}

/* ---- messages ---------------------------------------------------------------------------- */

static bool serves(int body) {
    switch (body) {
    case LLEP_PB__FRAME__BODY_CLUSTER_LAYER:
    case LLEP_PB__FRAME__BODY_CLUSTER_LAYER_REPLY:
    case LLEP_PB__FRAME__BODY_CLUSTER_LAYER_DROP:
    case LLEP_PB__FRAME__BODY_CLUSTER_SHARE_REQUEST:
    case LLEP_PB__FRAME__BODY_CLUSTER_LOADS:
    case LLEP_PB__FRAME__BODY_CLUSTER_PLAN_HASH:
    case LLEP_PB__FRAME__BODY_CLUSTER_DATA:
    case LLEP_PB__FRAME__BODY_CLUSTER_STEP_FAIL:
    case LLEP_PB__FRAME__BODY_CLUSTER_COMM:
    case LLEP_PB__FRAME__BODY_CLUSTER_COMM_FAIL:
        return true;
    default:
        return false;
    }
}

/* A step message for a layer this node does not have: the sender's step cannot run. */
static void refuse_step(llepd_server *srv, uint32_t from_id, const char *name, uint64_t step) {
    LlepPb__ClusterStepFail m = LLEP_PB__CLUSTER_STEP_FAIL__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    char msg[256];

    snprintf(msg, sizeof(msg), "node %u has no cluster layer '%.128s'",
             llepd_cluster_node_id(srv->cluster), name);
    m.layer = (char *)name;
    m.step = step;
    m.message = msg;
    m.status = LLEP_PB__STATUS__STATUS_NOT_FOUND;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_STEP_FAIL;
    f.cluster_step_fail = &m;
    (void)llepd_cluster_send(srv->cluster, from_id, &f);
}

static const char *step_layer_name(const LlepPb__Frame *f, uint64_t *step) {
    switch (f->body_case) {
    case LLEP_PB__FRAME__BODY_CLUSTER_LOADS:
        *step = f->cluster_loads->step;
        return f->cluster_loads->layer;
    case LLEP_PB__FRAME__BODY_CLUSTER_PLAN_HASH:
        *step = f->cluster_plan_hash->step;
        return f->cluster_plan_hash->layer;
    case LLEP_PB__FRAME__BODY_CLUSTER_DATA:
        *step = f->cluster_data->step;
        return f->cluster_data->layer;
    case LLEP_PB__FRAME__BODY_CLUSTER_STEP_FAIL:
        *step = f->cluster_step_fail->step;
        return f->cluster_step_fail->layer;
    default:
        return NULL;
    }
}

static void handle_frame(llepd_server *srv, uint32_t from_id, const LlepPb__Frame *f) {
    int rank = llepd_cluster_rank_of(srv->cluster, from_id);
    uint64_t step = 0;

    if (rank < 0)
        return;
    switch (f->body_case) {
    case LLEP_PB__FRAME__BODY_CLUSTER_LAYER:
        handle_layer(srv, (uint32_t)rank, from_id, f->cluster_layer);
        return;
    case LLEP_PB__FRAME__BODY_CLUSTER_LAYER_REPLY: {
        llepd_clayer *c = clayer_of(srv, f->cluster_layer_reply->name, false);
        if (c && c->rank == c->origin)
            handle_layer_reply(c, (uint32_t)rank, f->cluster_layer_reply);
        return;
    }
    case LLEP_PB__FRAME__BODY_CLUSTER_LAYER_DROP:
        handle_drop(srv, (uint32_t)rank, f->cluster_layer_drop);
        return;
    case LLEP_PB__FRAME__BODY_CLUSTER_SHARE_REQUEST: {
        const LlepPb__ClusterShareRequest *m = f->cluster_share_request;
        llepd_clayer *c = m->name ? clayer_of(srv, m->name, false) : NULL;
        if (c && !c->orphaned)
            llepd_clayer_refill_send(c, (uint32_t)rank, m->uid);
        return;
    }
    case LLEP_PB__FRAME__BODY_CLUSTER_COMM:
    case LLEP_PB__FRAME__BODY_CLUSTER_COMM_FAIL: {
        /* The communicator of a set of nodes; older senders name a layer on the set. */
        bool comm = f->body_case == LLEP_PB__FRAME__BODY_CLUSTER_COMM;
        size_t nset = comm ? f->cluster_comm->n_set : f->cluster_comm_fail->n_set;
        const char *n = comm ? f->cluster_comm->layer : f->cluster_comm_fail->layer;
        llepd_clayer *c = nset == 0 && n ? clayer_of(srv, n, false) : NULL;
        if (nset > 0 || (c && !c->orphaned))
            llepd_cxnode_handle(srv, c, from_id, f);
        return;
    }
    default:
        break;
    }
    const char *name = step_layer_name(f, &step);
    llepd_clayer *c = name ? clayer_of(srv, name, false) : NULL;
    if (f->body_case == LLEP_PB__FRAME__BODY_CLUSTER_DATA &&
        f->cluster_data->kind == LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_LAYER_WEIGHTS) {
        if (c && c->origin == (uint32_t)rank && c->layer->engine && !c->engine_pending)
            llepd_clayer_refill_chunk(c, f->cluster_data);
        else if (c && c->origin == (uint32_t)rank)
            handle_share_chunk(c, f->cluster_data);
        return;
    }
    if (!c || c->orphaned || !c->part) {
        if (f->body_case == LLEP_PB__FRAME__BODY_CLUSTER_LOADS && name)
            refuse_step(srv, from_id, name, step);
        return;
    }
    llepd_cstep_handle(c, (uint32_t)rank, f);
}

/* ---- teardown ---------------------------------------------------------------------------- */

static void close_timers(llepd_layer *l) {
    if (l->cluster) {
        timer_close(&l->cluster->deadline);
        timer_close(&l->cluster->create_timer);
        llepd_cxnode_fini(l->cluster);
    }
}

static void clayer_free(llepd_layer *l) {
    llepd_clayer *c = l->cluster;

    if (!c)
        return;
    /* A stopping daemon's links are gone (or going): the peers see it go down instead. */
    if (c->rank == c->origin && !c->orphaned && l->engine && !l->srv->stopping)
        send_drop(c);
    llepd_cluster_cancel_bulk(l->srv->cluster, c);
    llepd_cxnode_fini(c); /* before the part: an exchange may be writing its buffers */
    llepd_cstep_fini(c);
    llep__part_free(c->part);
    for (uint32_t r = 0; r < c->nodes; r++)
        free(c->shares[r]);
    llepd_cbuf_free(&c->share_in);
    llepd_cbuf_free(&c->refill);
    timer_close(&c->deadline);
    timer_close(&c->create_timer);
    free(c->shares);
    free(c->ids);
    free(c);
    l->cluster = NULL;
}

/* ---- what the server sees of a cluster layer (llepd_layer_ops) --------------------------- */

static void kick(llepd_layer *l) {
    llepd_cstep_kick(l);
}

static uint32_t local_experts(const llepd_layer *l) {
    return l->cluster->local_experts;
}

static void describe(const llepd_layer *l, LlepPb__LayerInfo *info, char *buf, size_t len) {
    const llepd_clayer *c = l->cluster;

    info->nodes = c->nodes;
    info->origin = c->ids[c->origin];
    info->internode_rows = c->internode_rows;
    info->internode_bytes = c->internode_bytes;
    info->internode_weights = c->internode_weights;
    info->failed_steps = c->failed_steps;
    info->cluster_state = (char *)c->state;
    info->internode_transport = (char *)llepd_cxnode_describe(c, buf, len);
    info->communicator_steps = c->xn.steps;
}

/* Every node plans a cluster step with the origin's parameters. */
static int may_set(const llepd_layer *l, char *err, size_t errlen) {
    const llepd_clayer *c = l->cluster;

    if (c->rank == c->origin)
        return 0;
    snprintf(err, errlen, "cluster layer '%s' plans with the parameters of its origin, node %u: "
             "set them there", l->name, c->ids[c->origin]);
    return -EINVAL;
}

static const llepd_layer_ops clayer_ops = {
    .kick = kick,
    .close = close_timers,
    .free = clayer_free,
    .local_experts = local_experts,
    .share_config = llepd_clayer_cut_share_config,
    .pack = llepd_clayer_pack_shares,
    .created = origin_created,
    .describe = describe,
    .may_set = may_set,
};

void llepd_clayers_init(llepd_server *srv) {
    srv->hooks.cluster_layer_new = new_origin;
    llepd_cluster_set_layer_hooks(srv->cluster, serves, handle_frame,
                                  peer_changed);
}
