/* Calibration of the device cost model (cost.h, issue 15 item 1): what this backend's devices
 * really take for an expert chunk and a weight transfer, measured on them.
 *
 * One pass runs, on logical device 0, chunks of one reference shape with 1, 2, 4, ... rows
 * and records each one's device time (the backend's busy_ns: thread CPU time on the CPU,
 * CUDA events on a GPU), the median of a few repetitions after a warm-up pass; the rate curve
 * is rows * flops per row over that time less the fixed cost per chunk. The fixed cost is the
 * time of a chunk that has almost no work (one row of a 64 x 64 expert): what any chunk pays
 * to be dispatched and launched. Transfers are timed on the wall clock around copy and sync
 * (a weight transfer is not a device's own work on every backend), at two sizes: the slope is
 * ns per byte, the intercept the latency. Link kinds the devices do not have are taken from
 * the backend's nominal model (cost.h): between nodes always (one llepd cannot measure it),
 * between physical devices where all P logical devices share one.
 *
 * Whoever calls it must not hold the devices' turn on another thread's behalf: it takes the
 * turn for the whole measurement (llep__devices_turn_wait): steps of every layer wait for it.
 * Its buffers come from the backend directly, outside the devices' account (they exist only
 * inside the turn, when nothing else allocates), and are freed before it returns. */
#ifndef LLEP_CALIBRATE_H
#define LLEP_CALIBRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calibration.h"
#include "cost.h"
#include "devices.h"
#include "llep/types.h"

/* What to measure. llep__calibrate_defaults() fills it for a backend. */
typedef struct llep_calibrate_options {
    uint32_t hidden, inter;     /* the reference shape */
    enum llep_dtype dtype;
    uint32_t max_rows;          /* the largest chunk: a power of two, at most 2^15 */
    uint32_t reps;              /* measured repetitions of each point (odd: a true median) */
    uint64_t transfer_bytes;    /* the larger transfer; the smaller is 4 KiB */
} llep_calibrate_options;

/* The CPU backend: D = H = 512 float32 to 512 rows, quick enough for every llepd start of
 * the test suite; others (CUDA): D = H = 2880 bf16 (gpt-oss's experts) to 32768 rows. */
void llep__calibrate_defaults(const char *backend, llep_calibrate_options *ret);

/* Measures the devices' backend (opt NULL: the defaults for it) into ret, which passes
 * llep__cost_check(). Returns 0, -ENOMEM (the backend has not the memory), its error, or
 * -EIO when the measurements make no model (message in err). */
int llep__calibrate(llep_devices *dv, const llep_calibrate_options *opt, llep_calibration *ret,
                    char *err, size_t errlen);

/* What a calibration of these devices would say of their hardware, without measuring:
 * backend, device name, P and logical devices per physical one, in ret (the rest zero), for
 * comparing with a stored calibration. Takes the turn. */
void llep__calibrate_describe(llep_devices *dv, llep_calibration *ret);

#endif
