/* The requests about models (models.h): `llepctl load`, `unload` and `models`, and a client
 * asking for one model's shape. A load is answered when it ends, which may be long after the
 * request: the session is held until then, and a session that closed meanwhile gets nothing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "models.h"
#include "session.h"

#define MSG_MAX 512

typedef struct load_reply {
    llepd_session *s;
    uint64_t frame_id;
} load_reply;

static void reply_model(llepd_session *s, uint64_t id, LlepPb__Frame__BodyCase body,
                        const llepd_model *m, int status, const char *msg) {
    LlepPb__ModelReply mr = LLEP_PB__MODEL_REPLY__INIT;
    LlepPb__ModelInfo info;
    bool have_info = m && status == 0 && llepd_model_info(m, &info) == 0;

    mr.status = llep__status_from_errno(status);
    mr.message = (char *)(msg ? msg : "");
    if (have_info)
        mr.model = &info;
    llepd_session_reply(s, id, body, &mr);
    if (have_info)
        llepd_model_info_fini(&info);
}

static void load_done(llepd_model *m, int status, const char *msg, void *data) {
    load_reply *lr = data;

    if (lr->s->state != SESSION_CLOSING)
        reply_model(lr->s, lr->frame_id, LLEP_PB__FRAME__BODY_MODEL_LOAD_REPLY,
                    status == 0 ? m : NULL, status, msg);
    llepd_session_unref(lr->s);
    free(lr);
}

void llepd_handle_model_load(llepd_session *s, const LlepPb__Frame *f) {
    const LlepPb__ModelLoad *ml = f->model_load;
    load_reply *lr = calloc(1, sizeof(*lr));
    char err[MSG_MAX] = "";
    int r;

    if (!lr) {
        reply_model(s, f->id, LLEP_PB__FRAME__BODY_MODEL_LOAD_REPLY, NULL, -ENOMEM,
                    "llepd is out of memory");
        return;
    }
    lr->s = s;
    lr->frame_id = f->id;
    llepd_session_ref(s);
    r = llepd_model_load(s->srv, ml->name, ml->path, load_done, lr, err, sizeof(err));
    if (r < 0) {
        reply_model(s, f->id, LLEP_PB__FRAME__BODY_MODEL_LOAD_REPLY, NULL, r, err);
        llepd_session_unref(s);
        free(lr);
    }
}

void llepd_handle_model_unload(llepd_session *s, const LlepPb__Frame *f) {
    char err[MSG_MAX] = "";
    int r = llepd_model_unload(s->srv, f->model_unload->name, err, sizeof(err));

    reply_model(s, f->id, LLEP_PB__FRAME__BODY_MODEL_UNLOAD_REPLY, NULL, r, err);
}

void llepd_handle_models(llepd_session *s, const LlepPb__Frame *f) {
    LlepPb__ModelsReply mr = LLEP_PB__MODELS_REPLY__INIT;
    llepd_server *srv = s->srv;
    const char *want = f->models->name;
    char err[MSG_MAX] = "";
    size_t n = 0, k = 0;

    for (llepd_list *i = srv->models.next; i != &srv->models; i = i->next)
        n++;
    LlepPb__ModelInfo *infos = calloc(n + 1, sizeof(*infos));
    LlepPb__ModelInfo **ptrs = calloc(n + 1, sizeof(*ptrs));
    mr.message = err;
    if (!infos || !ptrs) {
        mr.status = LLEP_PB__STATUS__STATUS_NO_MEMORY;
        snprintf(err, sizeof(err), "llepd is out of memory");
        n = 0;
    }
    for (llepd_list *i = srv->models.next; k < n && i != &srv->models; i = i->next) {
        const llepd_model *m = llepd_container_of(i, llepd_model, link);
        if (want[0] && strcmp(want, m->name) != 0)
            continue;
        if (llepd_model_info(m, &infos[k]) < 0) {
            mr.status = LLEP_PB__STATUS__STATUS_NO_MEMORY;
            snprintf(err, sizeof(err), "llepd is out of memory");
            break;
        }
        ptrs[k] = &infos[k];
        k++;
    }
    if (mr.status == LLEP_PB__STATUS__STATUS_OK && want[0] && k == 0) {
        mr.status = LLEP_PB__STATUS__STATUS_NOT_FOUND;
        snprintf(err, sizeof(err), "no model '%s'", want);
    }
    mr.n_models = mr.status == LLEP_PB__STATUS__STATUS_OK ? k : 0;
    mr.models = ptrs;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_MODELS_REPLY, &mr);
    for (size_t j = 0; j < k; j++)
        llepd_model_info_fini(&infos[j]);
    free(infos);
    free(ptrs);
}
