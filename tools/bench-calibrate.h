/* llep-bench --calibrate: measures the device cost model (issue 15 item 1) of the backend
 * and prints it as `llepctl tune` does, without llepd: how a lent GPU is calibrated
 * (tests/gpu/run.sh) and where docs/PERFORMANCE.md's figures come from. */
#ifndef LLEP_TOOLS_BENCH_CALIBRATE_H
#define LLEP_TOOLS_BENCH_CALIBRATE_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

/* Opens `devices` logical devices of backend (a spec of that count, as llep-bench's
 * engine), calibrates them with the backend's defaults and prints the table, or JSON.
 * Returns the exit code. */
int llep__bench_calibrate(enum llep_backend_kind backend, uint32_t devices, bool json);

#endif
