/* Plans for people: the readable report of llep-plan and `llepctl plan`. (The JSON of
 * DESIGN.md section 6 is tools/plan-json.c's, built with json-c.) */
#ifndef LLEP_PLAN_PRINT_H
#define LLEP_PLAN_PRINT_H

#include <stdio.h>

#include "plan.h"

/* Figures for a plan over nodes (llep_plan_params.devices_per_node), which the plan alone
 * cannot give: the traffic depends on which node each token comes from. */
typedef struct llep_plan_nodes {
    uint32_t num_nodes, devices_per_node;
    uint64_t rows;        /* token-slots computed on a node other than their home node */
    uint32_t transfers;   /* weight transfers between devices of different nodes */
} llep_plan_nodes;

/* Writes the node figures as one more section of the readable report. */
int llep__plan_print_nodes(const llep_plan *p, const llep_plan_nodes *nodes, FILE *f);

/* Writes a readable report: mode and why, capacity, a per-device table of the EP load beside
 * this plan's with bars, balance figures, and the weight transfers grouped by expert. */
int llep__plan_print_report(const llep_plan *p, const llep_plan_params *params, FILE *f);

#endif
