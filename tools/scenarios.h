/* The routing scenarios of DESIGN.md section 7 (the paper's 13): a share of the token-slots
 * routed evenly into the hot experts 0 .. hot-1, the rest spread over the other experts. One
 * table for every benchmark, so that llep-bench and llep-bench-plan measure the same cases. */
#ifndef LLEP_TOOLS_SCENARIOS_H
#define LLEP_TOOLS_SCENARIOS_H

#include <stddef.h>
#include <stdint.h>

typedef struct llep_scenario {
    const char *name;
    double share;     /* share of token-slots routed to the hot experts; 0: balanced */
    uint32_t hot;     /* experts 0 .. hot-1 */
} llep_scenario;

extern const llep_scenario llep__scenarios[];
extern const size_t llep__num_scenarios;

/* The scenario called name, or NULL. */
const llep_scenario *llep__scenario_find(const char *name);

#endif
