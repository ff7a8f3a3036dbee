/* A calibration of the device cost model (cost.h): the model and what it was measured on.
 * engine/calibrate.c measures one, llepd keeps it in its state directory (server/
 * calib-file.c), `llepctl tune` and `llep-bench --calibrate` show it (tools/cost-table.c).
 * Pure data, so that the tools that only show one need neither the engine nor a backend. */
#ifndef LLEP_CALIBRATION_H
#define LLEP_CALIBRATION_H

#include <stdbool.h>
#include <stdint.h>

#include "cost.h"
#include "llep/types.h"

typedef struct llep_calibration {
    llep_cost_model model;
    uint32_t hidden, inter;     /* the reference shape of the curve */
    enum llep_dtype dtype;
    uint32_t devices;           /* P of the devices it was measured on */
    bool measured[LLEP_LINK_KINDS]; /* false: the link's figures are the nominal model's */
    double elapsed_ms;          /* wall time the measurement took */
    int64_t time;               /* when (seconds since the epoch) */
} llep_calibration;

/* The flops of one row of the reference shape (6 * D * H) and the device time in ns of a
 * chunk of rows rows at that shape, under cal's model. */
double llep__calibration_flops_per_row(const llep_calibration *cal);
double llep__calibration_chunk_ns(const llep_calibration *cal, uint64_t rows);

#endif
