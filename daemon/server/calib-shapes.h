/* llepd's calibrations at the layers' own shapes (issue 15 item 1; calib.h has the reference).
 *
 * The reference calibration (D = H = 512 f32 on the CPU, 2880 bf16 on a GPU, copies of 16 or
 * 256 MiB) misprices other shapes: on the CPU a small layer's experts stay in cache, so its
 * small chunks run about 2x and its copies up to 5x faster than the reference says
 * (docs/PERFORMANCE.md). So each shape (hidden, inter, dtype) that a layer of llepd has gets its
 * own calibration, measured at that shape with copies of one expert's bytes (at least
 * 64 KiB), stored as STATE_DIR/calibration-<D>x<H>-<dtype>.json (calib-file.h's format) and
 * read back after a restart, when a layer of the shape comes, if it fits the devices. Its model goes into the devices'
 * shape table (devices.h), where a step of a layer of that shape finds it; until it is there
 * (measuring, failed, the table full, calibrate-shapes = no) the layer plans with the
 * reference. Everything here runs on the loop thread except the measurement, which runs on the
 * thread pool under the devices' turn, as `llepctl tune` does. */
#ifndef LLEPD_CALIB_SHAPES_H
#define LLEPD_CALIB_SHAPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calibrate.h"
#include "server.h"

/* STATE_DIR/calibration-<D>x<H>-<f32|bf16>.json, or "" with state-dir = off. */
void llepd_calib_shape_path(const llepd_server *srv, uint32_t hidden, uint32_t inter,
                            enum llep_dtype dtype, char *buf, size_t len);

/* What to measure for a shape on this backend: the backend's defaults at that shape, copies
 * of one expert's three matrices (at least 64 KiB). */
void llepd_calib_shape_options(const char *backend, uint32_t hidden, uint32_t inter,
                               enum llep_dtype dtype, llep_calibrate_options *ret);

/* At start (after llepd_calib_start, before anything is served): notes what the devices are,
 * for comparing with the stored files (llep__calib_matches). Nothing with calibrate-shapes =
 * no or without devices. */
void llepd_calib_shapes_init(llepd_server *srv);

/* A layer of this shape was made. Unless the shape has a calibration (or one measuring, or one
 * that failed: `llepctl tune` tries again): its stored file when there is one that fits the
 * devices, read here (a few KiB), else a measurement started on the thread pool. Files are
 * read when a layer wants them, not at start, so that the table holds the shapes in use, not
 * every shape a long-lived state directory has seen. Beyond LLEP_DEVICES_COST_SHAPES shapes,
 * logged once, the layer keeps the reference. */
void llepd_calib_shape_want(llepd_server *srv, uint32_t hidden, uint32_t inter,
                            enum llep_dtype dtype);

/* The entry of a shape, or NULL. */
llepd_calib_shape *llepd_calib_shape_find(llepd_server *srv, uint32_t hidden, uint32_t inter,
                                          enum llep_dtype dtype);

/* A new measurement of e's shape (`llepctl tune`), r its result: on success puts cal in force
 * (entry, devices' table) and logs it; on failure logs err and keeps what was in force. */
void llepd_calib_shape_done(llepd_server *srv, llepd_calib_shape *e, int r,
                            const llep_calibration *cal, bool stored, const char *err,
                            const char *note);

/* One measurement of a shape on the thread pool, for a new shape here and for every known one
 * in `llepctl tune` (handlers-tune.c): prepared on the loop thread (llepd_shape_job_init: the
 * backend's options and the file for the shape), run on the pool (llepd_shape_job_run, under
 * the devices' turn), put in force on the loop thread (llepd_shape_job_finish, status the
 * pool's: llepd_calib_shape_done() when the shape still has its entry). */
typedef struct llepd_shape_job {
    uint32_t hidden, inter;
    enum llep_dtype dtype;
    llep_calibrate_options opt;
    char path[512];
    llep_calibration cal;
    bool stored;
    int r;
    char err[512], note[512];
} llepd_shape_job;

void llepd_shape_job_init(llepd_server *srv, uint32_t hidden, uint32_t inter,
                          enum llep_dtype dtype, llepd_shape_job *j);
void llepd_shape_job_run(llep_devices *dv, llepd_shape_job *j);
void llepd_shape_job_finish(llepd_server *srv, llepd_shape_job *j, int status);

/* "measured", "loaded", "measuring" or "failed". */
const char *llepd_calib_shape_source(const llepd_calib_shape *e);

#endif
