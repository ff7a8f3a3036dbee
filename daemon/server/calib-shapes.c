/* llepd's calibrations at the layers' shapes (calib-shapes.h). */
#include "calib-shapes.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib-file.h"
#include "calib.h"
#include "log.h"

/* The smallest copy measured: a copy of a few KiB is all latency, and the slope between it and
 * the 4 KiB copy calibrate.c also times would be noise. */
#define MIN_TRANSFER (64u << 10)

static const char *dtype_name(enum llep_dtype dtype) {
    return dtype == LLEP_DTYPE_BF16 ? "bf16" : "f32";
}

void llepd_calib_shape_path(const llepd_server *srv, uint32_t hidden, uint32_t inter,
                            enum llep_dtype dtype, char *buf, size_t len) {
    if (!srv->cfg.state_dir[0])
        buf[0] = '\0';
    else
        snprintf(buf, len, "%s/calibration-%ux%u-%s.json", srv->cfg.state_dir, hidden, inter,
                 dtype_name(dtype));
}

void llepd_calib_shape_options(const char *backend, uint32_t hidden, uint32_t inter,
                               enum llep_dtype dtype, llep_calibrate_options *ret) {
    llep__calibrate_defaults(backend, ret);
    ret->hidden = hidden;
    ret->inter = inter;
    ret->dtype = dtype;
    /* What a spill copies: one expert's gate, up and down matrices (biases are a rounding
     * error beside them), as llep-bench calibrates its layer. */
    ret->transfer_bytes = 3ull * hidden * inter * (dtype == LLEP_DTYPE_BF16 ? 2u : 4u);
    if (ret->transfer_bytes < MIN_TRANSFER)
        ret->transfer_bytes = MIN_TRANSFER;
}

const char *llepd_calib_shape_source(const llepd_calib_shape *e) {
    switch (e->state) {
    case LLEPD_SHAPE_MEASURING:
        return "measuring";
    case LLEPD_SHAPE_FAILED:
        return "failed";
    default:
        return e->loaded ? "loaded" : "measured";
    }
}

llepd_calib_shape *llepd_calib_shape_find(llepd_server *srv, uint32_t hidden, uint32_t inter,
                                          enum llep_dtype dtype) {
    for (uint32_t i = 0; i < srv->nshapes; i++) {
        llepd_calib_shape *e = &srv->shapes[i];
        if (e->hidden == hidden && e->inter == inter && e->dtype == dtype)
            return e;
    }
    return NULL;
}

/* A new entry for the shape (state MEASURING), or NULL when the table is full (said once). */
static llepd_calib_shape *add(llepd_server *srv, uint32_t hidden, uint32_t inter,
                              enum llep_dtype dtype) {
    if (srv->nshapes == LLEP_DEVICES_COST_SHAPES) {
        if (!srv->shapes_full_told)
            log_notice("%u layer shapes have their own device cost model already: layers of "
                       "shape %u x %u %s and any other new shape plan with the reference "
                       "model", LLEP_DEVICES_COST_SHAPES, hidden, inter, dtype_name(dtype));
        srv->shapes_full_told = true;
        return NULL;
    }
    llepd_calib_shape *e = &srv->shapes[srv->nshapes++];
    *e = (llepd_calib_shape){ .hidden = hidden, .inter = inter, .dtype = dtype,
                              .state = LLEPD_SHAPE_MEASURING };
    return e;
}

/* Puts cal in force for e: the entry and the devices' table (whose size is the entry
 * table's, so it has room). */
static void set_ready(llepd_server *srv, llepd_calib_shape *e, const llep_calibration *cal,
                      bool loaded, bool stored) {
    e->state = LLEPD_SHAPE_READY;
    e->cal = *cal;
    e->loaded = loaded;
    e->stored = stored;
    if (llep__devices_set_shape_cost(srv->devs, e->hidden, e->inter, e->dtype, &cal->model) < 0)
        log_warning("the devices have no room for the cost model of shape %u x %u %s",
                    e->hidden, e->inter, dtype_name(e->dtype));
}

void llepd_calib_shape_done(llepd_server *srv, llepd_calib_shape *e, int r,
                            const llep_calibration *cal, bool stored, const char *err,
                            const char *note) {
    char how[128];

    if (r < 0) {
        log_warning("calibrating the devices at shape %u x %u %s: %s; its layers plan with %s",
                    e->hidden, e->inter, dtype_name(e->dtype), err,
                    e->state == LLEPD_SHAPE_READY ? "the model in force" : "the reference model");
        if (e->state != LLEPD_SHAPE_READY)
            e->state = LLEPD_SHAPE_FAILED;
        return;
    }
    set_ready(srv, e, cal, false, stored);
    snprintf(how, sizeof(how), "of layer shape %u x %u %s, measured%s", e->hidden, e->inter,
             dtype_name(e->dtype), stored ? " and stored" : "");
    llepd_calib_log(cal, how);
    if (!stored && note[0])
        log_warning("calibration of shape %u x %u %s %s", e->hidden, e->inter,
                    dtype_name(e->dtype), note);
}

static bool load_stored(llepd_server *srv, llepd_calib_shape *e, const char *path);

/* ---- measuring a new shape --------------------------------------------------------------- */

void llepd_shape_job_init(llepd_server *srv, uint32_t hidden, uint32_t inter,
                          enum llep_dtype dtype, llepd_shape_job *j) {
    memset(j, 0, sizeof(*j));
    j->hidden = hidden;
    j->inter = inter;
    j->dtype = dtype;
    llepd_calib_shape_options(srv->backend_ops->name, hidden, inter, dtype, &j->opt);
    llepd_calib_shape_path(srv, hidden, inter, dtype, j->path, sizeof(j->path));
}

void llepd_shape_job_run(llep_devices *dv, llepd_shape_job *j) {
    j->r = llepd_calib_measure_at(dv, &j->opt, j->path, &j->cal, &j->stored, j->err,
                                  sizeof(j->err), j->note, sizeof(j->note));
}

void llepd_shape_job_finish(llepd_server *srv, llepd_shape_job *j, int status) {
    llepd_calib_shape *e = llepd_calib_shape_find(srv, j->hidden, j->inter, j->dtype);

    if (status < 0 && j->r == 0) {
        j->r = status;
        snprintf(j->err, sizeof(j->err), "the calibration did not run: %s",
                 uv_strerror(status));
    }
    if (e)
        llepd_calib_shape_done(srv, e, j->r, &j->cal, j->stored, j->err, j->note);
}

typedef struct shape_work {
    uv_work_t req;
    llepd_server *srv;
    llepd_shape_job job;
} shape_work;

static void shape_run(uv_work_t *req) {
    shape_work *w = req->data;

    llepd_shape_job_run(w->srv->devs, &w->job);
}

static void shape_after(uv_work_t *req, int status) {
    shape_work *w = req->data;
    llepd_server *srv = w->srv;

    srv->running_shape_calibs--;
    llepd_shape_job_finish(srv, &w->job, status);
    free(w);
    srv->hooks.work_done(srv);
}

void llepd_calib_shape_want(llepd_server *srv, uint32_t hidden, uint32_t inter,
                            enum llep_dtype dtype) {
    if (!srv->cfg.calibrate_shapes || !srv->devs || !srv->backend_ops || srv->stopping ||
        llepd_calib_shape_find(srv, hidden, inter, dtype))
        return;
    llepd_calib_shape *e = add(srv, hidden, inter, dtype);
    if (!e)
        return;
    char path[512];
    llepd_calib_shape_path(srv, hidden, inter, dtype, path, sizeof(path));
    if (load_stored(srv, e, path))
        return;
    shape_work *w = calloc(1, sizeof(*w));
    if (!w) {
        e->state = LLEPD_SHAPE_FAILED;
        log_warning("out of memory for the calibration of shape %u x %u %s", hidden, inter,
                    dtype_name(dtype));
        return;
    }
    w->srv = srv;
    llepd_shape_job_init(srv, hidden, inter, dtype, &w->job);
    w->req.data = w;
    int r = uv_queue_work(srv->loop, &w->req, shape_run, shape_after);
    if (r < 0) {
        e->state = LLEPD_SHAPE_FAILED;
        log_warning("cannot start the calibration of shape %u x %u %s: %s", hidden, inter,
                    dtype_name(dtype), uv_strerror(r));
        free(w);
        return;
    }
    srv->running_shape_calibs++;
    log_info("calibrating the devices at layer shape %u x %u %s (copies of %llu bytes); its "
             "layers plan with the reference model until it is done", hidden, inter,
             dtype_name(dtype), (unsigned long long)w->job.opt.transfer_bytes);
}

/* ---- the stored ones ---------------------------------------------------------------------- */

void llepd_calib_shapes_init(llepd_server *srv) {
    if (!srv->cfg.calibrate_shapes || !srv->devs)
        return;
    llep__calibrate_describe(srv->devs, &srv->shapes_now);
    srv->have_shapes_now = true;
}

/* The shape's stored calibration put in force when its file fits these devices; false (said
 * why, unless there is no file) when not. */
static bool load_stored(llepd_server *srv, llepd_calib_shape *e, const char *path) {
    llep_calibration cal;
    char err[512], why[256], how[160];

    if (!path[0] || !srv->have_shapes_now)
        return false;
    int r = llep__calib_load(path, &cal, err, sizeof(err));
    if (r == -ENOENT)
        return false;
    if (r < 0) {
        log_warning("stored calibration refused: %s; measuring the shape again", err);
        return false;
    }
    if (cal.hidden != e->hidden || cal.inter != e->inter || cal.dtype != e->dtype) {
        log_warning("stored calibration %s is of shape %u x %u %s, not the one its name says; "
                    "measuring the shape again", path, cal.hidden, cal.inter,
                    dtype_name(cal.dtype));
        return false;
    }
    if (!llep__calib_matches(&cal, &srv->shapes_now, why, sizeof(why))) {
        log_notice("stored calibration %s does not fit: %s; measuring the shape again", path,
                   why);
        return false;
    }
    set_ready(srv, e, &cal, true, true);
    snprintf(how, sizeof(how), "of layer shape %u x %u %s, loaded from the state directory",
             e->hidden, e->inter, dtype_name(e->dtype));
    llepd_calib_log(&cal, how);
    return true;
}
