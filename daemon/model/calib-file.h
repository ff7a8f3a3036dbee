/* The devices' calibration as a JSON file. Here in model/ (beside jsonfile.h, the other
 * json-c reader) so that llepd and the tools both read it: llepd keeps its calibration in
 * its state directory, `llep-plan --cost FILE` and `llep-plan-sweep --model FILE` plan with
 * one.
 *
 * llepd's file: a JSON file in its state directory
 * (STATE_DIR/calibration.json), written atomically (a temporary file renamed over it), read
 * at start and used when it was measured on the same hardware (llep__calib_matches), so that
 * a restart does not measure again. The file is outside input: everything in it is checked
 * (types, ranges, the model's own check), and a file that fails is refused whole with a
 * sentence naming what is wrong, never half used.
 *
 *   {"version": 1, "backend": "cpu", "device_name": "...", "devices": 4,
 *    "devices_per_gpu": 0, "devices_per_node": 0, "hidden": 512, "inter": 512,
 *    "dtype": "f32", "chunk_fixed_ns": 1450.0,
 *    "curve": [{"rows": 1, "rate": 14.7}, ...],
 *    "links": [{"kind": "same", "latency_ns": 0, "ns_per_byte": 0, "measured": true}, ...
 *              one per kind, in cost.h's order],
 *    "elapsed_ms": 286.0, "time": 1796000000}
 *
 * Numbers are written with 17 significant digits, so a model read back is the one written,
 * bit for bit (the same llep__cost_hash). No logging here.
 *
 * The printed form (llep__calib_load_any only): the one object `llep-bench --calibrate
 * --json` prints and `llepctl tune --json` prints under "calibration" (either is read;
 * tools/cost-table.h): no "version", a "hash", and
 * each curve point's rate as "rate_flops_per_ns" (its "chunk_ns" and "efficiency" are
 * derived and ignored). Its numbers have 9 significant digits, so the model read from it is
 * the measured one to about 1e-9, not bit for bit, and its hash is not checked. */
#ifndef LLEP_CALIB_FILE_H
#define LLEP_CALIB_FILE_H

#include <stdbool.h>
#include <stddef.h>

#include "calibration.h"

#define LLEP_CALIB_FILE "calibration.json"
#define LLEP_CALIB_VERSION 1

/* Parses the text of a calibration file; label (the path) starts every error. Returns 0 or
 * -EINVAL / -ENOMEM with the reason in err. */
int llep__calib_parse(const char *text, size_t len, const char *label, llep_calibration *ret,
                      char *err, size_t errlen);

/* The text of cal's file (malloc()ed, NUL-terminated); NULL when out of memory. */
char *llep__calib_format(const llep_calibration *cal);

/* Reads and parses the file at path: 0, -ENOENT when there is none, else as parse. */
int llep__calib_load(const char *path, llep_calibration *ret, char *err, size_t errlen);

/* As llep__calib_load, but the file may be in either form: llepd's file, or the printed
 * object saved to a file (`llep-bench --calibrate --json > f.json`). For the tools. */
int llep__calib_load_any(const char *path, llep_calibration *ret, char *err, size_t errlen);

/* Writes the file at path through a temporary file in the same directory and rename(), so a
 * reader sees the old file or the new one whole. Returns 0 or a negative errno with err. */
int llep__calib_save(const char *path, const llep_calibration *cal, char *err, size_t errlen);

/* Whether a stored calibration was measured on these devices: the same backend, P, hardware
 * name and logical devices per physical device. When not, why says what differs. */
bool llep__calib_matches(const llep_calibration *stored, const llep_calibration *now,
                         char *why, size_t whylen);

#endif
