/* llepctl's model verbs: load NAME DIR, unload NAME, models (llepctl.h). */
#include "llepctl.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- load progress ----------------------------------------------------------------------
 * A load answers only when it ends, which takes seconds to minutes for a big checkpoint. While
 * the request waits, a thread asks llepd on a second connection how many layers are on the
 * devices and says so on stderr: in place on a terminal, a line every 5 s otherwise. */

typedef struct progress {
    const char *socket_path, *name;
    atomic_bool done;
    pthread_t thread;
    bool started, printed;
} progress;

/* The model's layers loaded so far and in all; -1 when it is not (or no longer) loading. */
static int loaded_so_far(llep_conn *conn, const char *name, uint32_t *ret_n, uint32_t *ret_of) {
    LlepPb__ModelsRequest mr = LLEP_PB__MODELS_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
    char err[256];
    int r = -1;

    mr.name = (char *)name;
    req.body_case = LLEP_PB__FRAME__BODY_MODELS;
    req.models = &mr;
    if (llep__conn_request(conn, &req, 5000, NULL, NULL, &reply, err, sizeof(err)) == 0 &&
        llep__conn_reply_check(reply, LLEP_PB__FRAME__BODY_MODELS_REPLY, err, sizeof(err)) == 0 &&
        reply->models_reply->n_models == 1 &&
        strcmp(reply->models_reply->models[0]->state, "loading") == 0) {
        *ret_n = reply->models_reply->models[0]->layers_loaded;
        *ret_of = reply->models_reply->models[0]->layers;
        r = 0;
    }
    llep__frame_free(reply);
    return r;
}

static void *progress_main(void *arg) {
    progress *p = arg;
    llep_conn conn;
    char err[256];
    bool tty = isatty(STDERR_FILENO);
    struct timespec tick = { 0, 250 * 1000 * 1000 };
    unsigned n = 0;

    if (llep__conn_open(&conn, p->socket_path, LLEP_PB__PEER_KIND__PEER_KIND_CTL, LLEPCTL_PROG,
                        5000, err, sizeof(err)) < 0)
        return NULL;
    while (!atomic_load(&p->done)) {
        uint32_t k = 0, of = 0;
        nanosleep(&tick, NULL);
        if (++n % (tty ? 2 : 20) != 0 || atomic_load(&p->done) ||
            loaded_so_far(&conn, p->name, &k, &of) < 0 || of == 0)
            continue;
        fprintf(stderr, tty ? "\r%s: loading '%s': %u of %u layers on the devices "
                            : "%s: loading '%s': %u of %u layers on the devices\n",
                LLEPCTL_PROG, p->name, k, of);
        p->printed = tty;
    }
    llep__conn_close(&conn);
    return NULL;
}

static void progress_start(progress *p, const ctl *x, const char *name) {
    *p = (progress){ .socket_path = x->socket_path, .name = name };
    atomic_init(&p->done, false);
    p->started = pthread_create(&p->thread, NULL, progress_main, p) == 0;
}

static void progress_stop(progress *p) {
    atomic_store(&p->done, true);
    if (p->started)
        pthread_join(p->thread, NULL);
    if (p->printed)
        fputc('\n', stderr);
}

int ctl_verb_load(ctl *x, char **argv) {
    LlepPb__ModelLoad ml = LLEP_PB__MODEL_LOAD__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    char path[PATH_MAX], b1[32];
    int r;

    /* llepd runs elsewhere in the file system (systemd starts it in /): send an absolute
     * path, and say now when the directory is not there. */
    if (!realpath(argv[1], path))
        return usage_error("load: %s: %s", argv[1], strerror(errno));
    ml.name = argv[0];
    ml.path = path;
    req.body_case = LLEP_PB__FRAME__BODY_MODEL_LOAD;
    req.model_load = &ml;
    progress p;
    if (!x->json)
        fprintf(stderr, "%s: loading model '%s' from %s ...\n", LLEPCTL_PROG, argv[0], path);
    progress_start(&p, x, argv[0]);
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_MODEL_LOAD_REPLY, &reply);
    progress_stop(&p);
    if (r)
        return r;
    const LlepPb__ModelInfo *m = reply->model_load_reply->model;
    if (!m)
        return daemon_error("llepd answered the load without the model");
    if (x->json) {
        json_object *o = llep__jout_object();
        llep__jout_str(o, "name", m->name);
        llep__jout_u64(o, "layers", m->layers);
        llep__jout_u64(o, "weight_bytes", m->weight_bytes);
        llep__jout_u64(o, "load_us", m->load_us);
        return ctl_json_print(o);
    }
    printf("model '%s' (%s): %" PRIu32 " MoE layers %s/0 .. %s/%" PRIu32 ", %s of experts, "
           "loaded in %.2f s\n", m->name, m->model_type, m->layers, m->name, m->name,
           m->layers ? m->layers - 1 : 0, ctl_fmt_bytes(m->weight_bytes, b1, sizeof(b1)),
           (double)m->load_us / 1e6);
    return 0;
}

int ctl_verb_unload(ctl *x, char **argv) {
    LlepPb__ModelUnload mu = LLEP_PB__MODEL_UNLOAD__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    int r;

    mu.name = argv[0];
    req.body_case = LLEP_PB__FRAME__BODY_MODEL_UNLOAD;
    req.model_unload = &mu;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_MODEL_UNLOAD_REPLY, &reply);
    if (r)
        return r;
    if (x->json) {
        json_object *o = llep__jout_object();
        llep__jout_str(o, "unloaded", argv[0]);
        return ctl_json_print(o);
    }
    printf("model '%s' unloaded\n", argv[0]);
    return 0;
}

static json_object *model_json(const LlepPb__ModelInfo *m) {
    const LlepPb__LayerDesc *d = m->desc;
    json_object *o = llep__jout_object();

    llep__jout_str(o, "name", m->name);
    llep__jout_str(o, "path", m->path);
    llep__jout_str(o, "model_type", m->model_type);
    llep__jout_str(o, "state", m->state);
    llep__jout_u64(o, "layers", m->layers);
    if (d) {
        llep__jout_u64(o, "num_experts", d->num_experts);
        llep__jout_u64(o, "top_k", d->top_k);
        llep__jout_u64(o, "hidden", d->hidden);
        llep__jout_u64(o, "inter", d->inter);
        llep__jout_str(o, "dtype", ctl_dtype_name(d->dtype));
        llep__jout_str(o, "act", ctl_act_name(d->act));
    }
    llep__jout_bool(o, "bias", m->bias);
    llep__jout_u64(o, "refs", m->refs);
    llep__jout_u64(o, "weight_bytes", m->weight_bytes);
    llep__jout_u64(o, "load_us", m->load_us);
    llep__jout_add(o, "source_layers", llep__jout_u32s(m->source_layers, m->n_source_layers));
    llep__jout_add(o, "layer_ids", llep__jout_u32s(m->layer_ids, m->n_layer_ids));
    return o;
}

int ctl_verb_models(ctl *x, char **argv) {
    LlepPb__ModelsRequest mr = LLEP_PB__MODELS_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    char b1[32], b2[32];
    int r;

    (void)argv;
    req.body_case = LLEP_PB__FRAME__BODY_MODELS;
    req.models = &mr;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_MODELS_REPLY, &reply);
    if (r)
        return r;
    const LlepPb__ModelsReply *ms = reply->models_reply;
    if (x->json) {
        json_object *o = llep__jout_object(), *a = llep__jout_array();
        for (size_t i = 0; i < ms->n_models; i++)
            llep__jout_push(a, model_json(ms->models[i]));
        llep__jout_add(o, "models", a);
        return ctl_json_print(o);
    }
    if (ms->n_models == 0) {
        printf("no models (llepctl load NAME DIR)\n");
        return 0;
    }
    printf("%-16s %-10s %-8s %6s %5s %3s %6s %6s %-5s %5s %10s %8s  %s\n", "NAME", "TYPE",
           "STATE", "LAYERS", "N", "K", "D", "H", "DTYPE", "REFS", "WEIGHTS", "LOAD", "PATH");
    for (size_t i = 0; i < ms->n_models; i++) {
        const LlepPb__ModelInfo *m = ms->models[i];
        const LlepPb__LayerDesc *d = m->desc;
        printf("%-16s %-10s %-8s %6" PRIu32 " %5" PRIu32 " %3" PRIu32 " %6" PRIu32 " %6" PRIu32
               " %-5s %5" PRIu32 " %10s %8s  %s\n", m->name, m->model_type, m->state,
               m->layers, d ? d->num_experts : 0, d ? d->top_k : 0, d ? d->hidden : 0,
               d ? d->inter : 0, d ? ctl_dtype_name(d->dtype) : "-", m->refs,
               ctl_fmt_bytes(m->weight_bytes, b1, sizeof(b1)),
               m->load_us ? ctl_fmt_us(m->load_us, b2, sizeof(b2)) : "-", m->path);
    }
    printf("(layer i of model NAME is the layer NAME/i: llepctl layers, stats, plan NAME/i)\n");
    return 0;
}
