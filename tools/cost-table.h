/* A calibration (calibration.h) for people and for programs: `llepctl tune` and
 * `llep-bench --calibrate` print the same table and the same JSON object. */
#ifndef LLEP_TOOLS_COST_TABLE_H
#define LLEP_TOOLS_COST_TABLE_H

#include <stdio.h>

#include "calibration.h"
#include "json-out.h"

/* The reference shape, the fixed cost, the curve (rows, device time of one chunk at the
 * reference shape, rate, efficiency against the curve's top rate) and each kind of link
 * (latency, bandwidth, time of 1 MiB, measured or nominal). */
void llep__cost_table_print(FILE *f, const llep_calibration *cal);

/* The same as one JSON object (json-c, json-out.h), for a caller to print or nest:
 * {"backend", "device_name", "devices", "hidden", "inter", "dtype", "chunk_fixed_ns",
 *  "devices_per_gpu", "devices_per_node", "elapsed_ms", "time", "hash" (hex string),
 *  "curve": [{"rows", "chunk_ns", "rate_flops_per_ns", "efficiency"}],
 *  "links": [{"kind", "latency_ns", "ns_per_byte", "measured"}]} */
json_object *llep__cost_table_object(const llep_calibration *cal);

/* That object written on f on one line (no newline after it). Returns 0 or a negative errno
 * (json-out.h). */
int llep__cost_table_json(FILE *f, const llep_calibration *cal);

/* "same", "gpu", "peer", "node". */
const char *llep__cost_link_name(int kind);

#endif
