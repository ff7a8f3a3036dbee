/* llepd's calibration at start and its measurement (calib.h). */
#include "calib.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "calib-file.h"
#include "calibrate.h"
#include "log.h"

void llepd_calib_path(const llepd_server *srv, char *buf, size_t len) {
    if (!srv->cfg.state_dir[0])
        buf[0] = '\0';
    else
        snprintf(buf, len, "%s/%s", srv->cfg.state_dir, LLEP_CALIB_FILE);
}

/* The directory of path, made when missing (systemd's StateDirectory= makes it under the
 * service; a hand-started llepd may name a new one). Only the last component. */
static int make_dir_of(const char *path) {
    char dir[512];
    const char *slash = strrchr(path, '/');

    if (!slash || slash == path || (size_t)(slash - path) >= sizeof(dir))
        return 0;
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
    return mkdir(dir, 0700) == 0 || errno == EEXIST ? 0 : -errno;
}

int llepd_calib_measure(llep_devices *dv, const char *path, llep_calibration *ret,
                        bool *stored, char *err, size_t errlen, char *note, size_t notelen) {
    int r = llepd_calib_measure_at(dv, NULL, path, ret, stored, err, errlen, note, notelen);

    if (r == 0)
        llep__devices_set_cost(dv, &ret->model);
    return r;
}

int llepd_calib_measure_at(llep_devices *dv, const llep_calibrate_options *opt,
                           const char *path, llep_calibration *ret, bool *stored, char *err,
                           size_t errlen, char *note, size_t notelen) {
    int r = llep__calibrate(dv, opt, ret, err, errlen);

    *stored = false;
    note[0] = '\0';
    if (r < 0)
        return r;
    if (!path[0]) {
        snprintf(note, notelen, "not stored: state-dir is off");
        return 0;
    }
    int m = make_dir_of(path);
    if (m < 0)
        snprintf(note, notelen, "not stored: cannot make the directory of %s: %s", path,
                 strerror(-m));
    else if (llep__calib_save(path, ret, note, notelen) == 0)
        *stored = true;
    return 0;
}

void llepd_calib_log(const llep_calibration *cal, const char *how) {
    const llep_cost_model *m = &cal->model;
    double top = 0;
    uint32_t at = 0;

    for (uint32_t i = 0; i < m->num_points; i++)
        if (m->rate[i] > top) {
            top = m->rate[i];
            at = m->rows[i];
        }
    log_notice("device cost model %s: %s, %s; %.1f GFLOP/s from %u rows (%.1f at 1 row, "
               "D %u x H %u %s), %.1f us fixed per chunk; %.2f GB/s between devices of one "
               "%s", how, m->backend, m->device_name, top, at, m->rate[0], cal->hidden,
               cal->inter, cal->dtype == LLEP_DTYPE_BF16 ? "bf16" : "f32",
               m->chunk_fixed_ns / 1e3,
               m->link[LLEP_LINK_GPU].ns_per_byte > 0 ? 1.0 / m->link[LLEP_LINK_GPU].ns_per_byte
                                                      : 0.0,
               strcmp(m->backend, "cpu") == 0 ? "host" : "GPU");
}

/* The stored calibration when there is one for these devices; false (saying why) when not. */
static bool load_stored(llepd_server *srv, const char *path, llep_calibration *ret) {
    llep_calibration now;
    char err[512], why[256];

    int r = llep__calib_load(path, ret, err, sizeof(err));
    if (r == -ENOENT) {
        log_info("no stored calibration at %s: measuring the devices", path);
        return false;
    }
    if (r < 0) {
        log_warning("stored calibration refused: %s; measuring the devices again", err);
        return false;
    }
    llep__calibrate_describe(srv->devs, &now);
    if (!llep__calib_matches(ret, &now, why, sizeof(why))) {
        log_notice("stored calibration %s does not fit: %s; measuring the devices again",
                   path, why);
        return false;
    }
    return true;
}

void llepd_calib_start(llepd_server *srv) {
    llep_calibration cal;
    char path[512], err[512], note[512];
    bool stored;

    if (!srv->devs)
        return;
    llepd_calib_path(srv, path, sizeof(path));
    if (path[0] && load_stored(srv, path, &cal)) {
        llep__devices_set_cost(srv->devs, &cal.model);
        srv->calibration = cal;
        srv->have_calibration = srv->calibration_stored = true;
        llepd_calib_log(&cal, "loaded from the state directory");
        return;
    }
    if (llepd_calib_measure(srv->devs, path, &cal, &stored, err, sizeof(err), note,
                            sizeof(note)) < 0) {
        log_error("%s; serving without a device cost model", err);
        return;
    }
    srv->calibration = cal;
    srv->have_calibration = true;
    srv->calibration_stored = stored;
    llepd_calib_log(&cal, stored ? "measured and stored" : "measured");
    if (!stored && path[0])
        log_warning("calibration %s", note);
}
