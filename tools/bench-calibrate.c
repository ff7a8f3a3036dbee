/* llep-bench --calibrate (bench-calibrate.h). */
#include "bench-calibrate.h"

#include <stdio.h>
#include <stdlib.h>

#include "backend-select.h"
#include "calibrate.h"
#include "cost-table.h"
#include "devices.h"

int llep__bench_calibrate(enum llep_backend_kind backend, uint32_t devices, bool json) {
    const llep_backend_ops *ops;
    llep_backend_options bo;
    llep_calibration cal;
    llep_devices *dv = NULL;
    char spec[16], msg[256];

    snprintf(spec, sizeof(spec), "%u", devices);
    if (llep__backend_select(backend, spec, &ops, &bo, msg, sizeof(msg)) < 0) {
        fprintf(stderr, "llep-bench: %s\n", msg);
        return EXIT_FAILURE;
    }
    fprintf(stderr, "llep-bench: %s\n", msg);
    /* One host thread, as the benchmark runs its devices: calibration uses device 0 alone. */
    llep_devices_config dc = { .backend = ops, .num_devices = devices, .threads = 1,
                               .backend_devices = spec };
    if (llep__devices_new(&dc, &dv, msg, sizeof(msg)) < 0) {
        fprintf(stderr, "llep-bench: cannot open the devices: %s\n", msg);
        return EXIT_FAILURE;
    }
    int r = llep__calibrate(dv, NULL, &cal, msg, sizeof(msg));
    llep__devices_free(dv);
    if (r < 0) {
        fprintf(stderr, "llep-bench: %s\n", msg);
        return EXIT_FAILURE;
    }
    if (json) {
        if (llep__jout_write(stdout, llep__cost_table_object(&cal), LLEP_JOUT_LINE, "\n") < 0) {
            fprintf(stderr, "llep-bench: cannot write the calibration\n");
            return EXIT_FAILURE;
        }
    } else
        llep__cost_table_print(stdout, &cal);
    return EXIT_SUCCESS;
}
