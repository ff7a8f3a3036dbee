/* Layers: created by name with weights, attached by name, reference-counted, freed with the
 * last reference. Creating one copies the weights into every device, which can take seconds
 * for a real model, so it runs on the thread pool while the loop keeps serving others. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

#include "calib-shapes.h"
#include "log.h"
#include "session.h"
#include "validate.h"
#include "grow.h"

llepd_layer *llepd_layer_find(llepd_server *srv, const char *name) {
    for (uint32_t i = 0; i < srv->nlayers; i++)
        if (!srv->layers[i]->dead && strcmp(srv->layers[i]->name, name) == 0)
            return srv->layers[i];
    return NULL;
}

llepd_layer *llepd_layer_by_id(llepd_server *srv, uint32_t id) {
    for (uint32_t i = 0; i < srv->nlayers; i++)
        if (srv->layers[i]->id == id)
            return srv->layers[i];
    return NULL;
}

static void on_timer_closed(uv_handle_t *h) {
    llepd_layer *l = h->data;

    if (l->ops)
        l->ops->free(l); /* before the engine its scope may borrow */
    llep__engine_free(l->engine);
    if (l->have_plan)
        llep__plan_fini(&l->last_plan);
    free(l->load_hist);
    free(l->last_loads);
    free(l->last_dev);
    free(l->peak);
    free(l);
}

static void layer_destroy(llepd_layer *l) {
    llepd_server *srv = l->srv;

    for (uint32_t i = 0; i < srv->nlayers; i++)
        if (srv->layers[i] == l) {
            memmove(&srv->layers[i], &srv->layers[i + 1],
                    (srv->nlayers - i - 1) * sizeof(*srv->layers));
            srv->nlayers--;
            break;
        }
    log_info("layer '%s' freed", l->name);
    if (uv_is_closing((uv_handle_t *)&l->group_timer))
        on_timer_closed((uv_handle_t *)&l->group_timer); /* closed by a stop already */
    else
        uv_close((uv_handle_t *)&l->group_timer, on_timer_closed);
}

/* A layer without references goes once no step or creation uses it. */
void llepd_layer_maybe_destroy(llepd_layer *l) {
    if (l->refs > 0 || l->running || l->creating || l->queued)
        return;
    layer_destroy(l);
}

void llepd_layer_unref(llepd_layer *l) {
    if (l->refs > 0)
        l->refs--;
    if (l->refs == 0)
        l->dead = true; /* no new attaches; a new layer may take the name */
    llepd_layer_maybe_destroy(l);
}

void llepd_layer_close_all(llepd_server *srv) {
    for (uint32_t i = 0; i < srv->nlayers; i++) {
        llepd_layer *l = srv->layers[i];
        if (!uv_is_closing((uv_handle_t *)&l->group_timer))
            uv_close((uv_handle_t *)&l->group_timer, NULL);
        if (l->ops)
            l->ops->close(l);
    }
}

void llepd_layer_free_all(llepd_server *srv) {
    while (srv->nlayers > 0) {
        llepd_layer *l = srv->layers[srv->nlayers - 1];
        srv->nlayers--;
        uv_handle_t *t = (uv_handle_t *)&l->group_timer;
        if (uv_is_closing(t) || !uv_is_active(t))
            on_timer_closed(t); /* the loop has ended: no callback will come */
    }
    free(srv->layers);
    srv->layers = NULL;
}

/* Effective plan parameters of a step: the layer's own values, else the daemon's. */
void llepd_layer_params(const llepd_layer *l, llep_plan_params *ret) {
    const llep_config *c = &l->srv->cfg;

    ret->alpha = l->tun.own_alpha ? l->tun.params.alpha : c->alpha;
    ret->lambda = l->tun.own_lambda ? l->tun.params.lambda : c->lambda;
    ret->min_tokens = l->tun.own_min_tokens ? l->tun.params.min_tokens : c->min_tokens;
    ret->policy = l->tun.own_policy ? l->tun.params.policy : l->srv->default_policy;
    ret->scale_min_tokens = l->tun.own_scale_min_tokens ? l->tun.params.scale_min_tokens
                                                        : c->scale_min_tokens;
    ret->devices_per_node = 0; /* flat: cluster steps set their own (cluster-step-plan.c) */
    /* Node-scope steps plan with the cost planner where the devices have a cost model
     * (engine.c); cluster steps with the origin's model sent at creation, else LLA
     * (cluster-step-plan.c). */
    ret->planner = (enum llep_planner)(l->tun.own_planner ? l->tun.params.planner
                                                          : (enum llep_planner)c->planner);
    ret->cost = NULL;
    ret->cost_layer = NULL;
}

void llepd_layer_effective_desc(const llepd_layer *l, LlepPb__LayerDesc *ret) {
    llep_plan_params pp;

    *ret = l->desc;
    llepd_layer_params(l, &pp);
    ret->alpha = (float)pp.alpha;
    ret->lambda = (float)pp.lambda;
    ret->min_tokens = (uint32_t)pp.min_tokens;
    ret->policy = (LlepPb__Policy)pp.policy;
}

/* Experts of the layer on this node: all of them, or its scope's share. */
static uint32_t local_experts(const llepd_layer *l) {
    return l->ops ? l->ops->local_experts(l) : l->desc.num_experts;
}

uint64_t llepd_layer_held(const llepd_layer *l) {
    if (!l->engine)
        return 0;
    return llep__engine_expert_bytes(l->engine) * (local_experts(l) / l->srv->devices);
}

llepd_layer *llepd_layer_new(llepd_server *srv, const char *name, const LlepPb__LayerDesc *d) {
    llepd_layer *l = calloc(1, sizeof(*l));
    uint32_t n = d->num_experts;

    if (!l)
        return NULL;
    l->load_hist = calloc((size_t)n * LLEPD_LOAD_WINDOW, sizeof(*l->load_hist));
    l->last_loads = calloc(n, sizeof(*l->last_loads));
    l->last_dev = calloc(srv->devices, sizeof(*l->last_dev));
    l->peak = calloc(srv->devices, sizeof(*l->peak));
    if (!l->load_hist || !l->last_loads || !l->last_dev || !l->peak ||
        llep__grow(&srv->layers, &srv->cap_layers, srv->nlayers + 1, sizeof(*srv->layers),
                   8) < 0) {
        free(l->load_hist);
        free(l->last_loads);
        free(l->last_dev);
        free(l->peak);
        free(l);
        return NULL;
    }
    l->srv = srv;
    l->id = srv->next_layer_id++;
    snprintf(l->name, sizeof(l->name), "%s", name);
    l->desc = *d;
    l->desc.base.descriptor = &llep_pb__layer_desc__descriptor;
    l->tun.params.alpha = d->alpha;
    l->tun.params.lambda = d->lambda;
    l->tun.params.min_tokens = d->min_tokens;
    l->tun.params.policy = (enum llep_policy)d->policy;
    l->tun.own_alpha = d->alpha > 0;
    l->tun.own_lambda = d->lambda > 0;
    l->tun.own_min_tokens = d->min_tokens > 0;
    l->tun.own_policy = d->policy != LLEP_PB__POLICY__POLICY_AUTO;
    l->creating = true;
    llepd_list_init(&l->queue);
    /* Its steps plan with a model measured at its shape once there is one (calib-shapes.h). */
    llepd_calib_shape_want(srv, d->hidden, d->inter, (enum llep_dtype)d->dtype);
    llepd_list_init(&l->attach_waiters);
    uv_timer_init(srv->loop, &l->group_timer);
    l->group_timer.data = l;
    srv->layers[srv->nlayers++] = l;
    return l;
}

/* ---- creation on the thread pool --------------------------------------------------------- */

typedef struct create_work {
    uv_work_t req;
    llepd_layer *layer;
    llepd_session *session;
    uint64_t frame_id;
    llep_engine_config cfg;
    llep_engine_config full;    /* a cluster layer's whole weights, cfg being this node's share */
    llep_engine *engine;
    bool keep;                  /* keep-host-weights: the engine keeps a host copy */
    int r;
    char err[256];
} create_work;

/* ---- kept host weights (keep-host-weights) ----------------------------------------------- */

/* A client-created layer's weights kept on the host, in one allocation: where the engine puts
 * a failed device's experts back from (engine.h: reload). */
typedef struct host_copy {
    llep_engine_weights w;
    char *buf;
} host_copy;

static int kept_get(void *arg, llep_engine_weights *w, char *err, size_t errlen) {
    (void)err;
    (void)errlen;
    *w = ((const host_copy *)arg)->w;
    return 0;
}

static void kept_free(void *arg) {
    host_copy *h = arg;

    free(h->buf);
    free(h);
}

/* Copies the weights cfg names (still in the creator's arena) for the engine to keep. */
static int keep_weights(llep_engine_config *cfg) {
    uint64_t esz = llep__dtype_size(cfg->dtype), n = cfg->num_experts;
    uint64_t dh = n * cfg->hidden * cfg->inter * esz;
    uint64_t size[6] = { dh, dh, dh, cfg->b_gate ? n * cfg->inter * esz : 0,
                         cfg->b_up ? n * cfg->inter * esz : 0,
                         cfg->b_down ? n * cfg->hidden * esz : 0 };
    const void *src[6] = { cfg->w_gate, cfg->w_up, cfg->w_down, cfg->b_gate, cfg->b_up,
                           cfg->b_down };
    const void **dst[6];
    host_copy *h = calloc(1, sizeof(*h));
    uint64_t total = 0, off = 0;

    for (int i = 0; i < 6; i++)
        total += size[i];
    if (!h || total > SIZE_MAX || !(h->buf = malloc(total ? (size_t)total : 1))) {
        free(h);
        return -ENOMEM;
    }
    dst[0] = &h->w.w_gate, dst[1] = &h->w.w_up, dst[2] = &h->w.w_down;
    dst[3] = &h->w.b_gate, dst[4] = &h->w.b_up, dst[5] = &h->w.b_down;
    for (int i = 0; i < 6; i++) {
        if (!src[i])
            continue;
        memcpy(h->buf + off, src[i], (size_t)size[i]);
        *dst[i] = h->buf + off;
        off += size[i];
    }
    cfg->reload = (llep_engine_reload){ .get = kept_get, .free_arg = kept_free, .arg = h };
    return 0;
}

static void create_run(uv_work_t *req) {
    create_work *w = req->data;
    if (w->keep && keep_weights(&w->cfg) < 0) {
        w->r = -ENOMEM;
        snprintf(w->err, sizeof(w->err), "out of host memory for the kept copy of the weights "
                 "(keep-host-weights)");
        return;
    }
    w->r = llep__engine_new(&w->cfg, &w->engine, w->err, sizeof(w->err));
    if (w->r == 0 && w->layer->ops && w->layer->ops->pack(w->layer, &w->full) < 0) {
        w->r = -ENOMEM;
        snprintf(w->err, sizeof(w->err), "out of host memory for the other nodes' shares");
        llep__engine_free(w->engine);
        w->engine = NULL;
    }
}

static const void *tensor(llepd_session *s, const LlepPb__TensorRef *t) {
    return t && t->bytes ? llep__arena_ptr(&s->arena, t->offset) : NULL;
}

static void create_done(uv_work_t *req, int status) {
    create_work *w = req->data;
    llepd_layer *l = w->layer;
    llepd_session *s = w->session;
    llepd_server *srv = l->srv;

    srv->running_creates--;
    s->creating--;
    l->creating = false;
    if (status == 0 && w->r == 0 && l->ops) {
        l->engine = w->engine;
        l->ops->created(l, s, w->frame_id); /* answers when its scope can */
    } else if (status == 0 && w->r == 0) {
        l->engine = w->engine;
        log_info("layer '%s' created (N=%u K=%u D=%u H=%u) by client %llu", l->name,
                 l->desc.num_experts, l->desc.top_k, l->desc.hidden, l->desc.inter,
                 (unsigned long long)s->id);
        srv->hooks.layer_created(l, s, w->frame_id, 0, NULL);
    } else {
        int r = status < 0 ? -ECANCELED : w->r;
        log_warning("layer '%s': creation failed: %s", l->name, w->err);
        srv->hooks.layer_created(l, s, w->frame_id, r, w->err);
    }
    llepd_session_unref(s);
    free(w);
    srv->hooks.work_done(srv);
}

void llepd_layer_engine_config(const llepd_layer *l, llep_engine_config *cfg) {
    const llepd_server *srv = l->srv;

    llep__engine_config_default(cfg);
    cfg->num_experts = l->desc.num_experts;
    cfg->top_k = l->desc.top_k;
    cfg->hidden = l->desc.hidden;
    cfg->inter = l->desc.inter;
    cfg->dtype = (enum llep_dtype)l->desc.dtype;
    cfg->act = (enum llep_act)l->desc.act;
    cfg->act_alpha = l->desc.act_alpha;
    cfg->act_limit = l->desc.act_limit;
    cfg->num_devices = srv->devices;
    cfg->backend = srv->backend_ops;
    /* The daemon's devices, shared by every layer: their one budget per device is
     * --device-memory for all layers together, charged as each layer's weights arrive. */
    cfg->devices = srv->devs;
    llepd_layer_params(l, &cfg->plan);
}

int llepd_layer_start_create(llepd_layer *l, llepd_session *s, uint64_t frame_id,
                             const LlepPb__LayerCreate *lc) {
    llepd_server *srv = l->srv;
    create_work *w = calloc(1, sizeof(*w));

    if (!w)
        return -ENOMEM;
    llepd_layer_engine_config(l, &w->cfg);
    w->cfg.w_gate = tensor(s, lc->w_gate);
    w->cfg.w_up = tensor(s, lc->w_up);
    w->cfg.w_down = tensor(s, lc->w_down);
    w->cfg.b_gate = tensor(s, lc->b_gate);
    w->cfg.b_up = tensor(s, lc->b_up);
    w->cfg.b_down = tensor(s, lc->b_down);
    if (l->ops) {
        w->full = w->cfg;
        l->ops->share_config(l, &w->cfg);
    }
    /* A cluster layer's origin keeps its own share (cfg, cut above); the other nodes keep
     * theirs as it arrives (cluster-share.c). */
    w->keep = srv->cfg.keep_host_weights;
    w->layer = l;
    w->session = s;
    w->frame_id = frame_id;
    w->req.data = w;
    int r = uv_queue_work(srv->loop, &w->req, create_run, create_done);
    if (r < 0) {
        free(w);
        return r;
    }
    llepd_session_ref(s);
    s->creating++;
    srv->running_creates++;
    return 0;
}
