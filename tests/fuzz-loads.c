/* Fuzz target: the loads parser of llep-plan (outside input), and the planner on whatever
 * loads it accepts. Any crash, sanitizer report, or invalid plan is a bug. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "loads.h"
#include "plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The most devices up to 64 that divide n, so every accepted vector gets planned. */
static uint32_t devices_for(size_t n) {
    for (uint32_t p = 64; p > 1; p--)
        if (n % p == 0)
            return p;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    llep_loads l = { .max = 4096 };
    char err[256];

    if (llep__loads_parse(&l, (const char *)data, size, err, sizeof(err)) == 0 && l.n > 0) {
        llep_plan p;
        llep_plan_params pp;
        uint32_t np = devices_for(l.n);
        llep__plan_params_default(&pp);
        pp.policy = size % 2 ? LLEP_POLICY_LLEP : LLEP_POLICY_AUTO;
        pp.min_tokens = l.v[0] % 4096;
        if (llep__plan_init(&p, (uint32_t)l.n, np) == 0) {
            /* -EOVERFLOW is the only acceptable failure: loads from the input may not sum. */
            int r = llep__plan_compute(&p, l.v, &pp);
            if (r == 0 && llep__plan_validate(&p, err, sizeof(err)) < 0) {
                fprintf(stderr, "invalid plan: %s\n", err);
                abort();
            }
            if (r < 0 && r != -EOVERFLOW)
                abort();
            llep__plan_fini(&p);
        }
    }
    llep__loads_free(&l);
    return 0;
}
