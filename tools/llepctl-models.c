/* llepctl's model verbs: load NAME DIR, unload NAME, models (llepctl.h). */
#include "llepctl.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    if (!x->json)
        fprintf(stderr, "%s: loading model '%s' from %s ...\n", LLEPCTL_PROG, argv[0], path);
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_MODEL_LOAD_REPLY, &reply);
    if (r)
        return r;
    const LlepPb__ModelInfo *m = reply->model_load_reply->model;
    if (!m)
        return daemon_error("llepd answered the load without the model");
    if (x->json) {
        printf("{\"name\": ");
        ctl_json_str(m->name);
        printf(", \"layers\": %" PRIu32 ", \"weight_bytes\": %" PRIu64 ", \"load_us\": %" PRIu64
               "}\n", m->layers, m->weight_bytes, m->load_us);
    } else {
        printf("model '%s' (%s): %" PRIu32 " MoE layers %s/0 .. %s/%" PRIu32 ", %s of experts, "
               "loaded in %.2f s\n", m->name, m->model_type, m->layers, m->name, m->name,
               m->layers ? m->layers - 1 : 0, ctl_fmt_bytes(m->weight_bytes, b1, sizeof(b1)),
               (double)m->load_us / 1e6);
    }
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
        printf("{\"unloaded\": ");
        ctl_json_str(argv[0]);
        printf("}\n");
    } else {
        printf("model '%s' unloaded\n", argv[0]);
    }
    return 0;
}

static void model_json(const LlepPb__ModelInfo *m) {
    const LlepPb__LayerDesc *d = m->desc;

    printf("{\"name\": ");
    ctl_json_str(m->name);
    printf(", \"path\": ");
    ctl_json_str(m->path);
    printf(", \"model_type\": ");
    ctl_json_str(m->model_type);
    printf(", \"state\": ");
    ctl_json_str(m->state);
    printf(", \"layers\": %" PRIu32, m->layers);
    if (d)
        printf(", \"num_experts\": %" PRIu32 ", \"top_k\": %" PRIu32 ", \"hidden\": %" PRIu32
               ", \"inter\": %" PRIu32 ", \"dtype\": \"%s\", \"act\": \"%s\"", d->num_experts,
               d->top_k, d->hidden, d->inter, ctl_dtype_name(d->dtype), ctl_act_name(d->act));
    printf(", \"bias\": %s, \"refs\": %" PRIu32 ", \"weight_bytes\": %" PRIu64
           ", \"load_us\": %" PRIu64 ", \"source_layers\": [", m->bias ? "true" : "false",
           m->refs, m->weight_bytes, m->load_us);
    for (size_t i = 0; i < m->n_source_layers; i++)
        printf("%s%" PRIu32, i ? ", " : "", m->source_layers[i]);
    printf("], \"layer_ids\": [");
    for (size_t i = 0; i < m->n_layer_ids; i++)
        printf("%s%" PRIu32, i ? ", " : "", m->layer_ids[i]);
    printf("]}");
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
        printf("{\"models\": [");
        for (size_t i = 0; i < ms->n_models; i++) {
            printf("%s", i ? ", " : "");
            model_json(ms->models[i]);
        }
        printf("]}\n");
        return 0;
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
