/* The routing scenarios of DESIGN.md section 7 (scenarios.h). */
#include "scenarios.h"

#include <string.h>

const llep_scenario llep__scenarios[] = {
    { "balanced", 0, 0 },
    { "30%-16", 0.30, 16 }, { "30%-4", 0.30, 4 }, { "30%-1", 0.30, 1 },
    { "50%-16", 0.50, 16 }, { "50%-4", 0.50, 4 }, { "50%-1", 0.50, 1 },
    { "80%-16", 0.80, 16 }, { "80%-4", 0.80, 4 }, { "80%-1", 0.80, 1 },
    { "95%-16", 0.95, 16 }, { "95%-4", 0.95, 4 }, { "95%-1", 0.95, 1 },
};
const size_t llep__num_scenarios = sizeof(llep__scenarios) / sizeof(llep__scenarios[0]);

const llep_scenario *llep__scenario_find(const char *name) {
    for (size_t i = 0; i < llep__num_scenarios; i++)
        if (strcmp(llep__scenarios[i].name, name) == 0)
            return &llep__scenarios[i];
    return NULL;
}
