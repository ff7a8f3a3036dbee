/* Models loaded by llepd from checkpoints (models.h). */
#include "models.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "layer.h"
#include "latency.h"
#include "log.h"
#include "model.h"

#define MSG_MAX 512

/* One load on the thread pool: the checkpoint, then each layer's engine. */
typedef struct load_work {
    uv_work_t req;
    llepd_model *m;
    llep_model *ckpt;                 /* the opened checkpoint (daemon/model) */
    llep_engine_config *cfg;          /* [nlayers] made on the loop thread */
    llep_engine **engines;            /* [nlayers] */
    int r;
    char err[MSG_MAX];
} load_work;

static void model_free(llepd_model *m) {
    free(m->path);
    free(m->layers);
    free(m->source_layers);
    free(m);
}

static void work_free(load_work *w) {
    if (w->ckpt)
        llep__model_close(w->ckpt);
    free(w->cfg);
    free(w->engines);
    free(w);
}

/* ---- the end of a load ------------------------------------------------------------------- */

/* Gives up the model's layers: attaches waiting on them hear why, and each layer goes once
 * nothing uses it. */
static void drop_layers(llepd_model *m, int status, const char *msg) {
    llepd_server *srv = m->srv;

    for (uint32_t i = 0; m->layers && i < m->nlayers; i++) {
        llepd_layer *l = m->layers[i];
        if (!l)
            continue;
        l->refs = 0;
        l->creating = false;
        srv->hooks.layer_created(l, NULL, 0, status, msg);  /* marks it dead and frees it */
    }
}

static void finish(llepd_model *m, int status, const char *msg) {
    llepd_server *srv = m->srv;
    llepd_model_done_cb done = m->done;
    void *data = m->done_data;

    m->done = NULL;
    if (status < 0) {
        log_warning("model '%s': load from %s failed: %s", m->name, m->path, msg);
        drop_layers(m, status, msg);
        llepd_list_remove(&m->link);
    } else {
        m->state = LLEPD_MODEL_READY;
        m->load_ns = llepd_now_ns() - m->start_ns;
        log_notice("model '%s' (%s) loaded from %s: %u MoE layers, N=%u K=%u D=%u H=%u, "
                   "%.1f MiB of experts in %.2f s", m->name, m->model_type, m->path,
                   m->nlayers, m->desc.num_experts, m->desc.top_k, m->desc.hidden,
                   m->desc.inter, (double)m->weight_bytes / (1 << 20), (double)m->load_ns / 1e9);
    }
    if (done)
        done(m, status, msg, data);
    if (status < 0)
        model_free(m);
    srv->hooks.work_done(srv);
}

/* ---- a failed device: the weights again -------------------------------------------------- */

/* Where a model layer's weights can be had again after a device failed (engine.h: reload): its
 * checkpoint, read again, provided it still has the shape the layer was loaded with. */
typedef struct reload_src {
    char *path;
    uint32_t index;
    LlepPb__LayerDesc desc;
    bool bias;
} reload_src;

static int reload_get(void *arg, llep_engine_weights *w, char *err, size_t errlen) {
    const reload_src *src = arg;
    llep_model *ck = NULL;
    llep_model_weights *lw = calloc(1, sizeof(*lw));

    if (!lw)
        return llep__errf(err, errlen, -ENOMEM, "out of memory");
    int r = llep__model_open(src->path, &ck, err, errlen);
    if (r == 0) {
        const llep_model_config *mi = llep__model_info(ck);
        if (mi->num_moe_layers <= src->index || mi->num_experts != src->desc.num_experts ||
            mi->hidden != src->desc.hidden || mi->inter != src->desc.inter ||
            (uint32_t)mi->dtype != (uint32_t)src->desc.dtype || mi->bias != src->bias)
            r = llep__errf(err, errlen, -ESTALE, "the checkpoint at %s changed since it was "
                           "loaded", src->path);
    }
    if (r == 0)
        r = llep__model_layer_weights(ck, src->index, lw, err, errlen);
    llep__model_close(ck);
    if (r < 0) {
        free(lw);
        return r;
    }
    *w = (llep_engine_weights){ lw->w_gate, lw->w_up, lw->w_down, lw->b_gate, lw->b_up,
                                lw->b_down, lw };
    return 0;
}

static void reload_put(void *arg, llep_engine_weights *w) {
    (void)arg;
    llep__model_weights_free(w->priv);
    free(w->priv);
    w->priv = NULL;
}

static void reload_free(void *arg) {
    reload_src *src = arg;

    free(src->path);
    free(src);
}

/* Layer i's engine may read its weights from the checkpoint again; without memory for that it
 * goes without (a failed device then loses its experts). */
static void set_reload(const llepd_model *m, uint32_t i, llep_engine_config *c) {
    reload_src *src = calloc(1, sizeof(*src));

    if (!src || !(src->path = strdup(m->path))) {
        free(src);
        return;
    }
    src->index = i;
    src->desc = m->desc;
    src->bias = m->bias;
    c->reload = (llep_engine_reload){ reload_get, reload_put, reload_free, src };
}

/* ---- part 2: each layer's engine --------------------------------------------------------- */

static void engines_run(uv_work_t *req) {
    load_work *w = req->data;
    llepd_model *m = w->m;

    for (uint32_t i = 0; i < m->nlayers && w->r == 0; i++) {
        llep_model_weights lw;
        char why[MSG_MAX - 64];

        w->r = llep__model_layer_weights(w->ckpt, i, &lw, why, sizeof(why));
        if (w->r == 0) {
            llep_engine_config *c = &w->cfg[i];
            c->w_gate = lw.w_gate;
            c->w_up = lw.w_up;
            c->w_down = lw.w_down;
            c->b_gate = lw.b_gate;
            c->b_up = lw.b_up;
            c->b_down = lw.b_down;
            set_reload(m, i, c);
            w->r = llep__engine_new(c, &w->engines[i], why, sizeof(why));
            llep__model_weights_free(&lw);
            if (w->r == 0)
                atomic_fetch_add(&m->layers_loaded, 1);
        }
        if (w->r < 0)
            llep__errf(w->err, sizeof(w->err), 0, "layer %s/%u (transformer layer %u): %s",
                       m->name, i, m->source_layers[i], why);
    }
    /* Every expert is on the devices now: the checkpoint's mappings go. */
    llep__model_close(w->ckpt);
    w->ckpt = NULL;
}

static void engines_done(uv_work_t *req, int status) {
    load_work *w = req->data;
    llepd_model *m = w->m;
    llepd_server *srv = m->srv;
    int r = status < 0 ? -ECANCELED : w->r;

    srv->running_creates--;
    if (r == 0 && srv->stopping) {
        r = -ESHUTDOWN;
        llep__errf(w->err, sizeof(w->err), 0, "llepd is stopping");
    }
    for (uint32_t i = 0; i < m->nlayers; i++) {
        if (r < 0) {
            llep__engine_free(w->engines[i]);
            continue;
        }
        llepd_layer *l = m->layers[i];
        l->engine = w->engines[i];
        l->creating = false;
        m->weight_bytes += llep__engine_expert_bytes(l->engine) * m->desc.num_experts;
        srv->hooks.layer_created(l, NULL, 0, 0, NULL);  /* answers the attaches waiting */
    }
    finish(m, r, w->err);
    work_free(w);
}

/* ---- part 1: the checkpoint -------------------------------------------------------------- */

static void open_run(uv_work_t *req) {
    load_work *w = req->data;

    w->r = llep__model_open(w->m->path, &w->ckpt, w->err, sizeof(w->err));
}

static void desc_from_info(LlepPb__LayerDesc *d, const llep_model_config *mi) {
    llep_pb__layer_desc__init(d);
    d->num_experts = mi->num_experts;
    d->top_k = mi->top_k;
    d->hidden = mi->hidden;
    d->inter = mi->inter;
    d->dtype = (LlepPb__DType)mi->dtype;
    d->act = (LlepPb__Activation)mi->act;
    d->act_alpha = mi->act_alpha;
    d->act_limit = mi->act_limit;
}

/* On the loop thread: the layers "NAME/i" in state creating, held by the model, and the
 * engine config of each. */
static int make_layers(load_work *w, char *err, size_t errlen) {
    llepd_model *m = w->m;
    const llep_model_config *mi = llep__model_info(w->ckpt);
    char lname[LLEP_NAME_MAX + 1];

    m->nlayers = mi->num_moe_layers;
    snprintf(m->model_type, sizeof(m->model_type), "%s", mi->model_type);
    desc_from_info(&m->desc, mi);
    m->bias = mi->bias;
    m->layers = calloc(m->nlayers + 1, sizeof(*m->layers));
    m->source_layers = calloc(m->nlayers + 1, sizeof(*m->source_layers));
    w->cfg = calloc(m->nlayers + 1, sizeof(*w->cfg));
    w->engines = calloc(m->nlayers + 1, sizeof(*w->engines));
    if (!m->layers || !m->source_layers || !w->cfg || !w->engines)
        return llep__errf(err, errlen, -ENOMEM, "out of memory");
    for (uint32_t i = 0; i < m->nlayers; i++) {
        m->source_layers[i] = mi->layer_of[i];
        snprintf(lname, sizeof(lname), "%s/%u", m->name, i);
        const llepd_layer *taken = llepd_layer_find(m->srv, lname);
        if (taken && !taken->dead)
            return llep__errf(err, errlen, -EEXIST, "layer '%s' was created while the model "
                              "loaded", lname);
        llepd_layer *l = llepd_layer_new(m->srv, lname, &m->desc);
        if (!l)
            return llep__errf(err, errlen, -ENOMEM, "out of memory for layer %s", lname);
        l->refs = 1;   /* the model's */
        m->layers[i] = l;
        llepd_layer_engine_config(l, &w->cfg[i]);
    }
    return 0;
}

static void open_done(uv_work_t *req, int status) {
    load_work *w = req->data;
    llepd_model *m = w->m;
    llepd_server *srv = m->srv;
    int r = status < 0 ? -ECANCELED : w->r;

    srv->running_creates--;
    if (r == 0 && srv->stopping)
        r = llep__errf(w->err, sizeof(w->err), -ESHUTDOWN, "llepd is stopping");
    if (r == 0)
        r = make_layers(w, w->err, sizeof(w->err));
    if (r == 0) {
        r = uv_queue_work(srv->loop, &w->req, engines_run, engines_done);
        if (r == 0) {
            srv->running_creates++;
            return;
        }
        llep__errf(w->err, sizeof(w->err), 0, "cannot queue the load: %s", uv_strerror(r));
    }
    finish(m, r, w->err);
    work_free(w);
}

/* ---- requests ---------------------------------------------------------------------------- */

llepd_model *llepd_model_find(llepd_server *srv, const char *name) {
    for (llepd_list *i = srv->models.next; i != &srv->models; i = i->next) {
        llepd_model *m = llepd_container_of(i, llepd_model, link);
        if (strcmp(m->name, name) == 0)
            return m;
    }
    return NULL;
}

llepd_model *llepd_model_of_layer(llepd_server *srv, const char *layer_name) {
    const char *slash = strchr(layer_name, '/');

    for (llepd_list *i = srv->models.next; slash && i != &srv->models; i = i->next) {
        llepd_model *m = llepd_container_of(i, llepd_model, link);
        if (strlen(m->name) == (size_t)(slash - layer_name) &&
            strncmp(m->name, layer_name, (size_t)(slash - layer_name)) == 0)
            return m;
    }
    return NULL;
}

/* A live layer named NAME/... would clash with the model's layers. */
static const char *layer_with_prefix(llepd_server *srv, const char *name) {
    size_t n = strlen(name);

    for (uint32_t i = 0; i < srv->nlayers; i++) {
        const llepd_layer *l = srv->layers[i];
        if (!l->dead && strncmp(l->name, name, n) == 0 && l->name[n] == '/')
            return l->name;
    }
    return NULL;
}

static int check_load(llepd_server *srv, const char *name, const char *path, char *err,
                      size_t errlen) {
    const char *clash;
    int r = llep__frame_check_model_name(name, err, errlen);

    if (r < 0)
        return r;
    if (!path || path[0] != '/')
        return llep__errf(err, errlen, -EINVAL, "model '%s': the checkpoint path '%s' is not "
                          "absolute", name, path ? path : "");
    if (strlen(path) > 4095)
        return llep__errf(err, errlen, -EINVAL, "model '%s': the checkpoint path is longer "
                          "than 4095 bytes", name);
    if (srv->stopping || srv->draining)
        return llep__errf(err, errlen, -ESHUTDOWN, "llepd is %s: no new models",
                          srv->stopping ? "stopping" : "draining");
    if (llepd_model_find(srv, name))
        return llep__errf(err, errlen, -EEXIST, "model '%s' exists (llepctl unload it first)",
                          name);
    if ((clash = layer_with_prefix(srv, name)))
        return llep__errf(err, errlen, -EEXIST, "model '%s': layer '%s' already has one of "
                          "its layer names", name, clash);
    return 0;
}

int llepd_model_load(llepd_server *srv, const char *name, const char *path,
                     llepd_model_done_cb done, void *data, char *err, size_t errlen) {
    int r = check_load(srv, name, path, err, errlen);
    llepd_model *m;
    load_work *w;

    if (r < 0)
        return r;
    m = calloc(1, sizeof(*m));
    w = calloc(1, sizeof(*w));
    if (!m || !w || !(m->path = strdup(path))) {
        free(w);
        if (m)
            model_free(m);
        return llep__errf(err, errlen, -ENOMEM, "out of memory");
    }
    m->srv = srv;
    snprintf(m->name, sizeof(m->name), "%s", name);
    m->state = LLEPD_MODEL_LOADING;
    llep_pb__layer_desc__init(&m->desc);   /* the shape is known once the config is read */
    m->start_ns = llepd_now_ns();
    m->done = done;
    m->done_data = data;
    w->m = m;
    w->req.data = w;
    r = uv_queue_work(srv->loop, &w->req, open_run, open_done);
    if (r < 0) {
        free(w);
        model_free(m);
        return llep__errf(err, errlen, -ENOMEM, "cannot queue the load: %s", uv_strerror(r));
    }
    srv->running_creates++;
    llepd_list_append(&srv->models, &m->link);
    log_info("model '%s': loading %s", name, path);
    return 0;
}

uint32_t llepd_model_refs(const llepd_model *m) {
    uint32_t n = 0;

    for (uint32_t i = 0; m->layers && i < m->nlayers; i++)
        if (m->layers[i] && m->layers[i]->refs > 1)
            n += (uint32_t)m->layers[i]->refs - 1;
    return n;
}

int llepd_model_unload(llepd_server *srv, const char *name, char *err, size_t errlen) {
    llepd_model *m = llepd_model_find(srv, name);
    uint32_t refs;

    if (!m)
        return llep__errf(err, errlen, -ENOENT, "no model '%s'", name);
    if (m->state == LLEPD_MODEL_LOADING)
        return llep__errf(err, errlen, -EBUSY, "model '%s' is still loading", name);
    if ((refs = llepd_model_refs(m)) > 0)
        return llep__errf(err, errlen, -EBUSY, "model '%s': clients hold %u references to its "
                          "layers; it can be unloaded once they release them", name, refs);
    llepd_list_remove(&m->link);
    for (uint32_t i = 0; i < m->nlayers; i++)
        llepd_layer_unref(m->layers[i]);   /* the model's reference: the layer goes */
    log_notice("model '%s' unloaded", name);
    model_free(m);
    srv->hooks.work_done(srv);
    return 0;
}

/* ---- llepctl models ---------------------------------------------------------------------- */

int llepd_model_info(const llepd_model *m, LlepPb__ModelInfo *info) {
    llep_pb__model_info__init(info);
    info->name = (char *)m->name;
    info->path = m->path;
    info->model_type = (char *)m->model_type;
    info->state = (char *)(m->state == LLEPD_MODEL_READY ? "ready" : "loading");
    info->layers = m->layers ? m->nlayers : 0;
    info->bias = m->bias;
    info->refs = llepd_model_refs(m);
    info->weight_bytes = m->weight_bytes;
    info->load_us = m->load_ns / 1000;
    info->layers_loaded = atomic_load(&((llepd_model *)m)->layers_loaded);
    info->desc = malloc(sizeof(*info->desc));
    info->layer_ids = calloc(info->layers + 1, sizeof(*info->layer_ids));
    if (!info->desc || !info->layer_ids) {
        llepd_model_info_fini(info);
        return -ENOMEM;
    }
    *info->desc = m->desc;
    info->n_source_layers = info->layers;
    info->source_layers = m->source_layers;
    info->n_layer_ids = info->layers;
    for (uint32_t i = 0; i < info->layers; i++)
        info->layer_ids[i] = m->layers[i]->id;
    return 0;
}

void llepd_model_info_fini(LlepPb__ModelInfo *info) {
    free(info->desc);
    free(info->layer_ids);
    info->desc = NULL;
    info->layer_ids = NULL;
}

void llepd_models_fini(llepd_server *srv) {
    while (!llepd_list_empty(&srv->models)) {
        llepd_model *m = llepd_container_of(srv->models.next, llepd_model, link);
        llepd_list_remove(&m->link);
        model_free(m);
    }
}
