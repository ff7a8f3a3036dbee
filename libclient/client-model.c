/* Models llepd loads from checkpoints: load, unload, their shape, and attaching to one of
 * their layers (include/llep/client.h, "models"). */
#include "client-internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "validate.h"

/* Sends one model request (body and its message) and waits for the reply of body expected,
 * under the client's lock. *ret gets the reply, or with ret NULL it is freed. */
static int model_request(llep_client *c, LlepPb__Frame__BodyCase body, void *msg,
                         LlepPb__Frame__BodyCase expected, LlepPb__Frame **ret) {
    LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
    int r;

    req.body_case = body;
    if (body == LLEP_PB__FRAME__BODY_MODEL_LOAD)
        req.model_load = msg;
    else if (body == LLEP_PB__FRAME__BODY_MODEL_UNLOAD)
        req.model_unload = msg;
    else
        req.models = msg;
    pthread_mutex_lock(&c->lock);
    r = llep__client_usable(c);
    if (r == 0)
        r = llep__client_request(c, &req, expected, &reply);
    pthread_mutex_unlock(&c->lock);
    if (ret)
        *ret = reply;
    else
        llep__frame_free(reply);
    return r;
}

static int check_model_name(llep_client *c, const char *call, const char *name) {
    char err[LLEP_CLIENT_ERROR_MAX];

    if (!name)
        return llep__client_fail(c, -EINVAL, "%s: name is NULL", call);
    if (llep__frame_check_model_name(name, err, sizeof(err)) < 0)
        return llep__client_fail(c, -EINVAL, "%s: %s", call, err);
    return 0;
}

LLEP_EXTERN int llep_model_load(llep_client *c, const char *name, const char *path) {
    LlepPb__ModelLoad ml = LLEP_PB__MODEL_LOAD__INIT;
    char abs[PATH_MAX];
    int r = c ? check_model_name(c, "llep_model_load", name) : -EINVAL;

    if (r < 0)
        return r;
    if (!path || !path[0])
        return llep__client_fail(c, -EINVAL, "llep_model_load: no checkpoint path");
    /* The daemon runs in another directory: a relative path is made absolute here. */
    if (path[0] != '/' && !realpath(path, abs))
        return llep__client_fail(c, -errno, "llep_model_load: %s: %s", path, strerror(errno));
    ml.name = (char *)name;
    ml.path = (char *)(path[0] == '/' ? path : abs);
    return model_request(c, LLEP_PB__FRAME__BODY_MODEL_LOAD, &ml,
                         LLEP_PB__FRAME__BODY_MODEL_LOAD_REPLY, NULL);
}

LLEP_EXTERN int llep_model_unload(llep_client *c, const char *name) {
    LlepPb__ModelUnload mu = LLEP_PB__MODEL_UNLOAD__INIT;
    int r = c ? check_model_name(c, "llep_model_unload", name) : -EINVAL;

    if (r < 0)
        return r;
    mu.name = (char *)name;
    return model_request(c, LLEP_PB__FRAME__BODY_MODEL_UNLOAD, &mu,
                         LLEP_PB__FRAME__BODY_MODEL_UNLOAD_REPLY, NULL);
}

LLEP_EXTERN int llep_model_get(llep_client *c, const char *name, llep_model_info *ret) {
    LlepPb__ModelsRequest mr = LLEP_PB__MODELS_REQUEST__INIT;
    LlepPb__Frame *reply = NULL;
    char err[LLEP_CLIENT_ERROR_MAX];
    int r;

    if (!c)
        return -EINVAL;
    if (!ret)
        return llep__client_fail(c, -EINVAL, "llep_model_get: ret is NULL");
    if ((r = check_model_name(c, "llep_model_get", name)) < 0)
        return r;
    mr.name = (char *)name;
    r = model_request(c, LLEP_PB__FRAME__BODY_MODELS, &mr, LLEP_PB__FRAME__BODY_MODELS_REPLY,
                      &reply);
    if (r < 0)
        return r;
    const LlepPb__ModelsReply *ms = reply->models_reply;
    const LlepPb__ModelInfo *m = ms->n_models == 1 ? ms->models[0] : NULL;
    if (m && strcmp(m->state, "loading") == 0)
        r = llep__client_fail(c, -EBUSY, "model '%s' is still loading", name);
    else if (!m || !m->desc || llep__layer_desc_check(m->desc, err, sizeof(err)) < 0)
        r = llep__client_fail(c, -EPROTO, "llepd described model '%s' badly", name);
    if (r == 0) {
        memset(ret, 0, sizeof(*ret));
        ret->num_layers = m->layers;
        llep__desc_from_proto(m->desc, &ret->desc);
        ret->bias = m->bias;
        snprintf(ret->model_type, sizeof(ret->model_type), "%s", m->model_type);
    }
    llep__frame_free(reply);
    return r;
}

LLEP_EXTERN int llep_model_layer(llep_client *c, const char *model, uint32_t index,
                                 llep_layer **ret) {
    char name[LLEP_NAME_MAX + 1];
    int r;

    if (ret)
        *ret = NULL;
    if (!c)
        return -EINVAL;
    if ((r = check_model_name(c, "llep_model_layer", model)) < 0)
        return r;
    snprintf(name, sizeof(name), "%s/%u", model, index);
    return llep_layer_create(c, name, NULL, ret);
}
