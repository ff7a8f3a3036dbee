/* Plans for people and for programs: the readable report of llep-plan and `llepctl plan`, and
 * the JSON of DESIGN.md section 6. */
#ifndef LLEP_PLAN_PRINT_H
#define LLEP_PLAN_PRINT_H

#include <stdio.h>

#include "plan.h"

/* Writes the plan as one JSON object (DESIGN.md section 6) followed by a newline. Returns 0 or
 * -EIO when the stream reports an error. */
int llep__plan_print_json(const llep_plan *p, FILE *f);

/* Writes a readable report: mode and why, capacity, a per-device table of the EP load beside
 * this plan's with bars, balance figures, and the weight transfers grouped by expert. */
int llep__plan_print_report(const llep_plan *p, const llep_plan_params *params, FILE *f);

#endif
