/* llepd's calibration of its devices (issue 15 item 1; engine/calibrate.h): at start the
 * stored one (calib-file.h) when it was measured on these devices, else a new measurement,
 * stored for the next start; `llepctl tune` (handlers-tune.c) measures again. Whichever is in
 * force is set on the devices (llep__devices_set_cost), where the planner finds it, and kept
 * in the server (srv->calibration) for `llepctl tune --show`. */
#ifndef LLEPD_CALIB_H
#define LLEPD_CALIB_H

#include <stdbool.h>
#include <stddef.h>

#include "calibrate.h"
#include "server.h"

/* STATE_DIR/calibration.json, or "" with state-dir = off. */
void llepd_calib_path(const llepd_server *srv, char *buf, size_t len);

/* Measures the devices, sets the model on them and stores it at path (not when path is
 * ""; the state directory is made when missing). Any thread: it takes the devices' turn and
 * touches nothing of the server. Returns 0 or the calibration's error (err); a calibration
 * that could not be stored still returns 0, with *stored false and the reason in note. */
int llepd_calib_measure(llep_devices *dv, const char *path, llep_calibration *ret,
                        bool *stored, char *err, size_t errlen, char *note, size_t notelen);

/* As llepd_calib_measure with opt (NULL: the backend's reference shape), but sets nothing
 * on the devices: the caller puts the model where it belongs. */
int llepd_calib_measure_at(llep_devices *dv, const llep_calibrate_options *opt,
                           const char *path, llep_calibration *ret, bool *stored, char *err,
                           size_t errlen, char *note, size_t notelen);

/* At start, on the loop thread before it runs: loads or measures (logging which and why)
 * and records the result in srv. A calibration that fails is logged and llepd serves
 * without one (the planner then balances token counts only). */
void llepd_calib_start(llepd_server *srv);

/* Logs a calibration in force in one line: where it came from and its main figures. */
void llepd_calib_log(const llep_calibration *cal, const char *how);

#endif
