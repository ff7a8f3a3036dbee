/* Cluster-scope layers: a node's share of the experts (cluster-layer-internal.h). Node r holds
 * experts [r * N/nodes, (r + 1) * N/nodes); the origin cuts its own share out of the client's
 * weights and packs every other node's into one blob (gate, up, down, then the biases
 * present), which it sends as LAYER_WEIGHTS. A node that receives its share makes its engine
 * from it on the thread pool and answers the origin (ClusterLayerReply). After a failed device
 * the share is where the engine puts the device's experts back from: kept on the host
 * (keep-host-weights), or sent again by the origin on request. Below cluster-layer.c: it calls
 * nothing there. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-layer-internal.h"
#include "log.h"

enum { FLAG_B_GATE = 1, FLAG_B_UP = 2, FLAG_B_DOWN = 4 };

static size_t esize(const llepd_layer *l) {
    return l->desc.dtype == LLEP_PB__DTYPE__DTYPE_BF16 ? 2 : 4;
}

/* ---- the layout -------------------------------------------------------------------------- */

/* Byte offsets of the tensors inside one node's share: gate, up, down [E][D][H] / [E][H][D],
 * then the biases present. */
typedef struct share_layout {
    uint64_t up, down, bg, bu, bd, total;
} share_layout;

static share_layout layout_of(const llepd_layer *l, uint32_t experts, uint32_t flags) {
    uint64_t es = esize(l), dh = (uint64_t)l->desc.hidden * l->desc.inter * es * experts;
    uint64_t h = (uint64_t)l->desc.inter * es * experts, d = (uint64_t)l->desc.hidden * es * experts;
    share_layout s;

    s.up = dh;
    s.down = 2 * dh;
    s.bg = 3 * dh;
    s.bu = s.bg + (flags & FLAG_B_GATE ? h : 0);
    s.bd = s.bu + (flags & FLAG_B_UP ? h : 0);
    s.total = s.bd + (flags & FLAG_B_DOWN ? d : 0);
    return s;
}

uint64_t llepd_clayer_share_bytes(const llepd_clayer *c) {
    return layout_of(c->layer, c->local_experts, c->flags).total;
}

/* Points cfg's weights into a share blob laid out by layout_of. */
static void config_from_share(const llepd_layer *l, const llepd_clayer *c, const uint8_t *blob,
                              llep_engine_config *cfg) {
    share_layout s = layout_of(l, c->local_experts, c->flags);

    cfg->num_experts = c->local_experts;
    cfg->first_expert = c->rank * c->local_experts;
    cfg->w_gate = blob;
    cfg->w_up = blob + s.up;
    cfg->w_down = blob + s.down;
    cfg->b_gate = c->flags & FLAG_B_GATE ? blob + s.bg : NULL;
    cfg->b_up = c->flags & FLAG_B_UP ? blob + s.bu : NULL;
    cfg->b_down = c->flags & FLAG_B_DOWN ? blob + s.bd : NULL;
}

/* ---- at the origin ----------------------------------------------------------------------- */

void llepd_clayer_cut_share_config(llepd_layer *l, llep_engine_config *cfg) {
    llepd_clayer *c = l->cluster;
    uint64_t es = esize(l), e0 = (uint64_t)c->rank * c->local_experts;
    uint64_t dh = (uint64_t)l->desc.hidden * l->desc.inter * es;

    c->flags = (cfg->b_gate ? FLAG_B_GATE : 0) | (cfg->b_up ? FLAG_B_UP : 0) |
               (cfg->b_down ? FLAG_B_DOWN : 0);
    c->share_bytes = llepd_clayer_share_bytes(c);
    cfg->num_experts = c->local_experts;
    cfg->first_expert = (uint32_t)e0;
    cfg->w_gate = (const char *)cfg->w_gate + e0 * dh;
    cfg->w_up = (const char *)cfg->w_up + e0 * dh;
    cfg->w_down = (const char *)cfg->w_down + e0 * dh;
    if (cfg->b_gate)
        cfg->b_gate = (const char *)cfg->b_gate + e0 * l->desc.inter * es;
    if (cfg->b_up)
        cfg->b_up = (const char *)cfg->b_up + e0 * l->desc.inter * es;
    if (cfg->b_down)
        cfg->b_down = (const char *)cfg->b_down + e0 * l->desc.hidden * es;
}

int llepd_clayer_pack_shares(llepd_layer *l, const llep_engine_config *full) {
    llepd_clayer *c = l->cluster;
    uint64_t es = esize(l), e = c->local_experts;
    uint64_t dh = (uint64_t)l->desc.hidden * l->desc.inter * es * e;
    uint64_t h = (uint64_t)l->desc.inter * es * e, d = (uint64_t)l->desc.hidden * es * e;
    share_layout s = layout_of(l, c->local_experts, c->flags);

    for (uint32_t r = 0; r < c->nodes; r++) {
        if (r == c->rank)
            continue;
        uint8_t *b = malloc(s.total ? s.total : 1);
        if (!b)
            return -ENOMEM;
        c->shares[r] = b;
        memcpy(b, (const char *)full->w_gate + r * dh, dh);
        memcpy(b + s.up, (const char *)full->w_up + r * dh, dh);
        memcpy(b + s.down, (const char *)full->w_down + r * dh, dh);
        if (full->b_gate)
            memcpy(b + s.bg, (const char *)full->b_gate + r * h, h);
        if (full->b_up)
            memcpy(b + s.bu, (const char *)full->b_up + r * h, h);
        if (full->b_down)
            memcpy(b + s.bd, (const char *)full->b_down + r * d, d);
    }
    return 0;
}

/* ---- on the other nodes ------------------------------------------------------------------ */

void llepd_clayer_reply_layer(llepd_server *srv, uint32_t to_id, const char *name, int r,
                        const char *msg) {
    LlepPb__ClusterLayerReply m = LLEP_PB__CLUSTER_LAYER_REPLY__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    m.status = llep__status_from_errno(r);
    m.message = (char *)(msg ? msg : "");
    m.name = (char *)name;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_LAYER_REPLY;
    f.cluster_layer_reply = &m;
    (void)llepd_cluster_send(srv->cluster, to_id, &f);
}

/* keep-host-weights: the share as it arrived stays on the host, where the engine puts a
 * failed device's experts back from (engine.h: reload); the origin keeps its own share the
 * same way (layer.c). Without it the share is freed once the engine holds it. */
typedef struct kept_share {
    llep_engine_weights w;
    uint8_t *blob;
} kept_share;

static int kept_get(void *arg, llep_engine_weights *w, char *err, size_t errlen) {
    (void)err;
    (void)errlen;
    *w = ((const kept_share *)arg)->w;
    return 0;
}

static void kept_free(void *arg) {
    kept_share *k = arg;

    free(k->blob);
    free(k);
}

/* Without a kept share: the origin holds every other node's share, so the engine waits for
 * it to be sent again (-EAGAIN: its step fails, the next asks again) and the loop asks for it
 * (llepd_clayer_refill_step_end). On the step's thread, under the turn: c->refill is the
 * loop's until refill_ready is set, then read-only until a step has succeeded. */
static int refill_get(void *arg, llep_engine_weights *w, char *err, size_t errlen) {
    llepd_clayer *c = arg;
    llep_engine_config cfg;

    if (!atomic_load(&c->refill_ready)) {
        atomic_store(&c->refill_wanted, true);
        snprintf(err, errlen, "this node's share of the layer is being sent again by its "
                 "origin, node %u", c->ids[c->origin]);
        return -EAGAIN;
    }
    memset(&cfg, 0, sizeof(cfg));
    config_from_share(c->layer, c, c->refill.data, &cfg);
    *w = (llep_engine_weights){ cfg.w_gate, cfg.w_up, cfg.w_down,
                                cfg.b_gate, cfg.b_up, cfg.b_down, NULL };
    return 0;
}

/* Points cfg at the share and, when the node keeps it, hands the blob from c->share_in over
 * to the engine's reload (so share_in no longer owns it); else the reload waits for the
 * origin. -ENOMEM: nothing changed. */
static int share_config(llepd_clayer *c, llep_engine_config *cfg) {
    llepd_layer *l = c->layer;
    kept_share *k;

    if (!l->srv->cfg.keep_host_weights) {
        config_from_share(l, c, c->share_in.data, cfg);
        /* No free_arg: get runs only in the layer's steps, which all end before c goes. */
        cfg->reload = (llep_engine_reload){ .get = refill_get, .arg = c };
        return 0;
    }
    k = calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->blob = c->share_in.data;
    c->share_in.data = NULL;
    config_from_share(l, c, k->blob, cfg);
    k->w = (llep_engine_weights){ cfg->w_gate, cfg->w_up, cfg->w_down,
                                  cfg->b_gate, cfg->b_up, cfg->b_down, NULL };
    cfg->reload = (llep_engine_reload){ .get = kept_get, .free_arg = kept_free, .arg = k };
    return 0;
}

/* Making this node's engine from its share, on the thread pool. */
typedef struct share_work {
    uv_work_t req;
    llepd_clayer *c;
    llep_engine_config cfg;
    llep_engine *engine;
    int r;
    char err[256];
} share_work;

static void share_run(uv_work_t *req) {
    share_work *w = req->data;
    w->r = llep__engine_new(&w->cfg, &w->engine, w->err, sizeof(w->err));
}

static void share_done(uv_work_t *req, int status) {
    share_work *w = req->data;
    llepd_clayer *c = w->c;
    llepd_layer *l = c->layer;
    llepd_server *srv = l->srv;
    int r = status < 0 ? -ECANCELED : w->r;

    srv->running_creates--;
    c->engine_pending = false;
    llepd_cbuf_free(&c->share_in);
    if (r == 0)
        r = llep__part_new(w->engine, c->nodes, c->rank, &c->part, w->err, sizeof(w->err));
    l->creating = false;
    if (r == 0) {
        l->engine = w->engine;
        c->held = true;
        l->refs++;
        log_info("cluster layer '%s': share of %u experts loaded for node %u", l->name,
                 c->local_experts, c->ids[c->origin]);
    } else {
        llep__engine_free(w->engine);
        log_warning("cluster layer '%s': share not loaded: %s", l->name, w->err);
    }
    llepd_clayer_reply_layer(srv, c->ids[c->origin], l->name, r, r ? w->err : NULL);
    l->srv->hooks.layer_created(l, NULL, 0, r, r ? w->err : NULL);
    free(w);
    srv->hooks.work_done(srv);
}

int llepd_clayer_start_share_engine(llepd_clayer *c, char *err, size_t errlen) {
    llepd_layer *l = c->layer;
    llepd_server *srv = l->srv;
    share_work *w = calloc(1, sizeof(*w));

    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    llepd_layer_engine_config(l, &w->cfg);
    if (share_config(c, &w->cfg) < 0) {
        free(w);
        snprintf(err, errlen, "out of host memory for the kept copy of the share "
                 "(keep-host-weights)");
        return -ENOMEM;
    }
    w->c = c;
    w->req.data = w;
    int r = uv_queue_work(srv->loop, &w->req, share_run, share_done);
    if (r < 0) {
        if (w->cfg.reload.free_arg)
            w->cfg.reload.free_arg(w->cfg.reload.arg);
        free(w);
        snprintf(err, errlen, "cannot queue the engine creation: %s", uv_strerror(r));
        return r;
    }
    c->engine_pending = true;
    srv->running_creates++;
    return 0;
}

/* ---- a failed device's experts, sent again by the origin --------------------------------- */

static bool ask_origin(llepd_clayer *c) {
    LlepPb__ClusterShareRequest m = LLEP_PB__CLUSTER_SHARE_REQUEST__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    m.name = c->layer->name;
    m.uid = c->uid;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_SHARE_REQUEST;
    f.cluster_share_request = &m;
    return llepd_cluster_send(c->layer->srv->cluster, c->ids[c->origin], &f) == 0;
}

void llepd_clayer_refill_step_end(llepd_clayer *c, int r) {
    if (c->rank == c->origin)
        return;
    if (r == 0) {
        /* A step ran, so the engine found no device to put back or put them back from
         * refill: it is of no more use. */
        if (atomic_load(&c->refill_ready)) {
            llepd_cbuf_free(&c->refill);
            atomic_store(&c->refill_ready, false);
            atomic_store(&c->refill_wanted, false);
            c->refill_asked = false;
            log_info("cluster layer '%s': a failed device's experts are back from the share "
                     "node %u sent again", c->layer->name, c->ids[c->origin]);
        }
        return;
    }
    if (atomic_load(&c->refill_wanted) && !atomic_load(&c->refill_ready) && !c->refill_asked) {
        c->refill_asked = ask_origin(c);
        log_notice("cluster layer '%s': a device failed and this node keeps no copy of its "
                   "share: %s origin node %u to send it again", c->layer->name,
                   c->refill_asked ? "asked" : "could not ask", c->ids[c->origin]);
    }
}

void llepd_clayer_refill_send(llepd_clayer *c, uint32_t rank, uint64_t uid) {
    llepd_layer *l = c->layer;

    if (c->rank != c->origin || rank == c->rank || rank >= c->nodes || uid != c->uid ||
        c->creator || !c->shares[rank]) {
        log_warning("cluster layer '%s': node %u asked for its share again, which this node "
                    "cannot send (%s)", l->name, c->ids[rank < c->nodes ? rank : c->rank],
                    c->rank != c->origin ? "not the origin"
                    : uid != c->uid      ? "another layer of that name"
                                         : "the layer is being created");
        return;
    }
    log_notice("cluster layer '%s': node %u lost a device; sending its share again", l->name,
               c->ids[rank]);
    (void)llepd_clayer_send_data(c, rank, 0, LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_LAYER_WEIGHTS,
                                 0, c->shares[rank], c->share_bytes);
}

void llepd_clayer_refill_chunk(llepd_clayer *c, const LlepPb__ClusterData *d) {
    char err[256];

    /* A share sent again while none is awaited (the origin's resend to a node back after a
     * lost link) is not needed. */
    if (!atomic_load(&c->refill_wanted) || atomic_load(&c->refill_ready))
        return;
    int r = llepd_cbuf_add(&c->refill, d, c->share_bytes, err, sizeof(err));
    if (r == 1 && c->refill.total != c->share_bytes) {
        r = -EPROTO;
        snprintf(err, sizeof(err), "share of %" PRIu64 " bytes, expected %" PRIu64,
                 c->refill.total, c->share_bytes);
    }
    if (r == 1)
        atomic_store(&c->refill_ready, true);
    if (r < 0) {
        log_warning("cluster layer '%s': the share sent again is refused: %s", c->layer->name,
                    err);
        llepd_cbuf_free(&c->refill);
        c->refill_asked = false; /* the next failing step asks again */
    }
}
