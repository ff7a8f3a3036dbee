/* `llepctl tune` and `llepctl tune --show` (TuneRequest): the devices' calibrations, at the
 * reference shape (calib.h) and at the layers' shapes (calib-shapes.h).
 * A new measurement runs on libuv's thread pool like a step, taking the devices' turn, so the
 * loop keeps serving while the steps of every layer wait for it; its end, on the loop thread,
 * puts it in force in the server's record and answers. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"

#include "calib-shapes.h"
#include "calib.h"
#include "log.h"
#include "session.h"

#define MSG_MAX 512

typedef struct tune_work {
    uv_work_t req;
    llepd_server *srv;
    llepd_session *s;
    uint64_t frame_id;
    char path[512];
    llep_calibration cal;
    bool stored;
    int r;
    char err[MSG_MAX], note[MSG_MAX];
    llepd_shape_job shapes[LLEP_DEVICES_COST_SHAPES];
    uint32_t nshapes;
} tune_work;

static const char *const link_names[LLEP_LINK_KINDS] = { "same", "gpu", "peer", "node" };

/* A calibration as a protobuf message, with the storage its arrays point into. */
typedef struct cal_pb {
    LlepPb__Calibration c;
    LlepPb__LinkCost lk[LLEP_LINK_KINDS], *lkp[LLEP_LINK_KINDS];
    uint32_t rows[LLEP_COST_MAX_POINTS];
    double rate[LLEP_COST_MAX_POINTS];
} cal_pb;

static LlepPb__Calibration *pack_cal(cal_pb *b, const llep_calibration *cal) {
    const llep_cost_model *m = &cal->model;
    LlepPb__Calibration *c = &b->c;

    llep_pb__calibration__init(c);
    c->backend = (char *)m->backend;
    c->device_name = (char *)m->device_name;
    c->devices = cal->devices;
    c->hidden = cal->hidden;
    c->inter = cal->inter;
    c->dtype = (LlepPb__DType)cal->dtype;
    c->n_rows = c->n_rate = m->num_points;
    for (uint32_t i = 0; i < m->num_points && i < LLEP_COST_MAX_POINTS; i++) {
        b->rows[i] = m->rows[i];
        b->rate[i] = m->rate[i];
    }
    c->rows = b->rows;
    c->rate = b->rate;
    c->chunk_fixed_ns = m->chunk_fixed_ns;
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        llep_pb__link_cost__init(&b->lk[k]);
        b->lk[k].kind = (char *)link_names[k];
        b->lk[k].latency_ns = m->link[k].latency_ns;
        b->lk[k].ns_per_byte = m->link[k].ns_per_byte;
        b->lk[k].measured = cal->measured[k];
        b->lkp[k] = &b->lk[k];
    }
    c->n_links = LLEP_LINK_KINDS;
    c->links = b->lkp;
    c->devices_per_gpu = m->devices_per_gpu;
    c->devices_per_node = m->devices_per_node;
    c->elapsed_ms = cal->elapsed_ms;
    c->time = cal->time;
    c->hash = llep__cost_hash(m);
    return c;
}

/* The shape calibrations of the server as TuneShape messages (shapes NULL: none). */
typedef struct shapes_pb {
    LlepPb__TuneShape ts[LLEP_DEVICES_COST_SHAPES], *tsp[LLEP_DEVICES_COST_SHAPES];
    cal_pb cal[LLEP_DEVICES_COST_SHAPES];
    char path[LLEP_DEVICES_COST_SHAPES][512];
} shapes_pb;

static void pack_shapes(llepd_server *srv, shapes_pb *b, LlepPb__TuneReply *tr) {
    for (uint32_t i = 0; i < srv->nshapes; i++) {
        const llepd_calib_shape *e = &srv->shapes[i];
        LlepPb__TuneShape *t = &b->ts[i];
        llep_pb__tune_shape__init(t);
        t->hidden = e->hidden;
        t->inter = e->inter;
        t->dtype = (LlepPb__DType)e->dtype;
        t->source = (char *)llepd_calib_shape_source(e);
        if (e->state == LLEPD_SHAPE_READY)
            t->calibration = pack_cal(&b->cal[i], &e->cal);
        llepd_calib_shape_path(srv, e->hidden, e->inter, e->dtype, b->path[i],
                               sizeof(b->path[i]));
        t->path = b->path[i];
        t->stored = e->state == LLEPD_SHAPE_READY && e->stored;
        b->tsp[i] = t;
    }
    tr->n_shapes = srv->nshapes;
    tr->shapes = b->tsp;
}

/* Sends a TuneReply with cal (NULL: none), the server's shape calibrations and status st. */
static void reply(llepd_session *s, uint64_t id, LlepPb__Status st, const char *msg,
                  const llep_calibration *cal, const char *path, bool stored) {
    LlepPb__TuneReply tr = LLEP_PB__TUNE_REPLY__INIT;
    cal_pb c;
    shapes_pb *sb = calloc(1, sizeof(*sb));

    tr.status = st;
    tr.message = (char *)msg;
    tr.path = (char *)path;
    tr.stored = stored;
    if (cal)
        tr.calibration = pack_cal(&c, cal);
    if (sb)  /* out of memory: the reference alone */
        pack_shapes(s->srv, sb, &tr);
    llepd_session_reply(s, id, LLEP_PB__FRAME__BODY_TUNE_REPLY, &tr);
    free(sb);
}

/* The reference, then every shape known when tune was asked, each under its own turn (steps
 * may run between them). */
static void tune_run(uv_work_t *req) {
    tune_work *w = req->data;

    w->r = llepd_calib_measure(w->srv->devs, w->path, &w->cal, &w->stored, w->err,
                               sizeof(w->err), w->note, sizeof(w->note));
    for (uint32_t i = 0; i < w->nshapes; i++)
        llepd_shape_job_run(w->srv->devs, &w->shapes[i]);
}

/* Every shape measured again put in force (or its failure logged). */
static void tune_shapes_done(tune_work *w, int status) {
    for (uint32_t i = 0; i < w->nshapes; i++)
        llepd_shape_job_finish(w->srv, &w->shapes[i], status);
}

/* The shapes tune measures again: those in force or failed (one measuring finishes on its
 * own). */
static void tune_shapes_take(tune_work *w) {
    llepd_server *srv = w->srv;

    for (uint32_t i = 0; i < srv->nshapes; i++) {
        const llepd_calib_shape *e = &srv->shapes[i];
        if (e->state == LLEPD_SHAPE_MEASURING)
            continue;
        llepd_shape_job_init(srv, e->hidden, e->inter, e->dtype, &w->shapes[w->nshapes++]);
    }
}

static void tune_done(uv_work_t *req, int status) {
    tune_work *w = req->data;
    llepd_server *srv = w->srv;

    srv->running_tunes--;
    tune_shapes_done(w, status);
    if (status < 0 && w->r == 0) {
        w->r = status;
        snprintf(w->err, sizeof(w->err), "the calibration did not run: %s",
                 uv_strerror(status));
    }
    if (w->r < 0) {
        log_error("llepctl tune: %s", w->err);
        reply(w->s, w->frame_id, llep__status_from_errno(w->r), w->err, NULL, w->path, false);
    } else {
        srv->calibration = w->cal;
        srv->have_calibration = true;
        srv->calibration_stored = w->stored;
        llepd_calib_log(&w->cal, w->stored ? "measured again and stored (llepctl tune)"
                                           : "measured again (llepctl tune)");
        if (!w->stored && w->path[0])
            log_warning("calibration %s", w->note);
        reply(w->s, w->frame_id, LLEP_PB__STATUS__STATUS_OK, w->note, &w->cal, w->path,
              w->stored);
    }
    llepd_session_unref(w->s);
    free(w);
    srv->hooks.work_done(srv);
}

void llepd_handle_tune(llepd_session *s, const LlepPb__Frame *f) {
    llepd_server *srv = s->srv;
    char path[512], err[MSG_MAX];

    llepd_calib_path(srv, path, sizeof(path));
    if (f->tune->show) {
        reply(s, f->id, srv->have_calibration ? LLEP_PB__STATUS__STATUS_OK
                                              : LLEP_PB__STATUS__STATUS_NOT_FOUND,
              srv->have_calibration ? "" : "llepd has no calibration of its devices",
              srv->have_calibration ? &srv->calibration : NULL, path,
              srv->calibration_stored);
        return;
    }
    /* Measuring holds every layer's steps back: for those who may administer llepd. */
    if (!s->admin) {
        snprintf(err, sizeof(err), "tune needs root or membership of group llep (uid %u); "
                 "tune --show does not", (unsigned)s->cred.uid);
        llepd_session_reply_error(s, f->id, -EPERM, err);
        return;
    }
    if (!srv->devs || srv->stopping || srv->running_tunes) {
        snprintf(err, sizeof(err), "%s", !srv->devs ? "llepd has no devices to calibrate"
                 : srv->stopping ? "llepd is stopping" : "a calibration is running already");
        reply(s, f->id, !srv->devs ? LLEP_PB__STATUS__STATUS_INVALID
                        : srv->stopping ? LLEP_PB__STATUS__STATUS_SHUTTING_DOWN
                                        : LLEP_PB__STATUS__STATUS_BUSY,
              err, NULL, path, false);
        return;
    }
    tune_work *w = calloc(1, sizeof(*w));
    int r = w ? 0 : -ENOMEM;
    if (w) {
        w->srv = srv;
        w->s = s;
        w->frame_id = f->id;
        snprintf(w->path, sizeof(w->path), "%s", path);
        tune_shapes_take(w);
        w->req.data = w;
        r = uv_queue_work(srv->loop, &w->req, tune_run, tune_done);
    }
    if (r < 0) {
        free(w);
        reply(s, f->id, LLEP_PB__STATUS__STATUS_NO_MEMORY, "cannot start the calibration",
              NULL, path, false);
        return;
    }
    llepd_session_ref(s);
    srv->running_tunes++;
    log_notice("llepctl tune: measuring the devices at the reference shape and %u layer "
               "shapes (client %llu, uid %u)", w->nshapes, (unsigned long long)s->id,
               (unsigned)s->cred.uid);
}
