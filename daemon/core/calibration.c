/* What a calibration's curve means at its own reference shape (calibration.h). */
#include "calibration.h"

double llep__calibration_flops_per_row(const llep_calibration *cal) {
    return 6.0 * (double)cal->hidden * (double)cal->inter;
}

double llep__calibration_chunk_ns(const llep_calibration *cal, uint64_t rows) {
    llep_cost_layer l = { .flops_per_row = llep__calibration_flops_per_row(cal) };

    return llep__cost_chunk_ns(&cal->model, &l, rows);
}
