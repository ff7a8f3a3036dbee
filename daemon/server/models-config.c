/* The models of llepd's configuration (the `model` key): loaded at start, before llepd tells
 * systemd it is ready, and brought in line with the file on SIGHUP (models-config.h). */
#include "models-config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "models.h"

#define MSG_MAX 512

/* The loads started together at start: how many are still running, the first failure. */
typedef struct start_batch {
    llepd_server *srv;
    uint32_t pending;
    int status;
    char msg[MSG_MAX + LLEP_MODEL_NAME_MAX + 16];
    llepd_models_started_cb done;
    void *data;
} start_batch;

static void batch_step(start_batch *b) {
    if (--b->pending > 0)
        return;
    b->done(b->srv, b->status, b->msg, b->data);
    free(b);
}

static void start_done(llepd_model *m, int status, const char *msg, void *data) {
    start_batch *b = data;

    if (status < 0 && b->status == 0) {
        b->status = status;
        snprintf(b->msg, sizeof(b->msg), "model '%s': %s", m->name, msg);
    }
    batch_step(b);
}

int llepd_models_start(llepd_server *srv, const llep_config *cfg, llepd_models_started_cb done,
                       void *data) {
    start_batch *b = calloc(1, sizeof(*b));
    char err[MSG_MAX];

    if (!b)
        return -ENOMEM;
    *b = (start_batch){ .srv = srv, .pending = 1, .done = done, .data = data };
    for (uint32_t i = 0; i < cfg->nmodels; i++) {
        const llep_model_spec *s = &cfg->models[i];
        b->pending++;
        int r = llepd_model_load(srv, s->name, s->path, start_done, b, err, sizeof(err));
        if (r < 0) {
            b->pending--;
            if (b->status == 0) {
                b->status = r;
                snprintf(b->msg, sizeof(b->msg), "model '%s': %s", s->name, err);
            }
            break;
        }
    }
    batch_step(b);   /* the count's own 1: done runs once every load above has ended */
    return 0;
}

static bool in_config(const llep_config *c, const char *name, const char **ret_path) {
    for (uint32_t i = 0; i < c->nmodels; i++)
        if (strcmp(c->models[i].name, name) == 0) {
            if (ret_path)
                *ret_path = c->models[i].path;
            return true;
        }
    return false;
}

static void reload_done(llepd_model *m, int status, const char *msg, void *data) {
    (void)data;
    if (status == 0)
        log_notice("reload: model '%s' loaded", m->name);
    else
        log_error("reload: model '%s' was not loaded: %s", m->name, msg);
}

void llepd_models_reload(llepd_server *srv, const llep_config *old, const llep_config *next) {
    char err[MSG_MAX];

    for (uint32_t i = 0; i < old->nmodels; i++) {
        const char *name = old->models[i].name, *path = NULL;
        if (in_config(next, name, &path) && strcmp(path, old->models[i].path) == 0)
            continue;
        if (in_config(next, name, NULL))
            log_notice("reload: model '%s' moved to %s: unloading the old one", name, path);
        if (llepd_model_unload(srv, name, err, sizeof(err)) < 0)
            log_error("reload: model '%s' stays: %s", name, err);
    }
    for (uint32_t i = 0; i < next->nmodels; i++) {
        const llep_model_spec *s = &next->models[i];
        if (llepd_model_find(srv, s->name))
            continue;   /* loaded already (or kept above because clients hold it) */
        if (llepd_model_load(srv, s->name, s->path, reload_done, NULL, err, sizeof(err)) < 0)
            log_error("reload: model '%s' was not loaded: %s", s->name, err);
    }
}
