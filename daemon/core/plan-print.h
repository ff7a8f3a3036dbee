/* Plans for people and for programs: the readable report of llep-plan and `llepctl plan`, and
 * the JSON of DESIGN.md section 6. */
#ifndef LLEP_PLAN_PRINT_H
#define LLEP_PLAN_PRINT_H

#include <stdio.h>

#include "plan.h"

/* Writes the plan as one JSON object (DESIGN.md section 6) followed by a newline. Returns 0 or
 * -EIO when the stream reports an error. */
int llep__plan_print_json(const llep_plan *p, FILE *f);

/* Figures for a plan over nodes (llep_plan_params.devices_per_node), which the plan alone
 * cannot give: the traffic depends on which node each token comes from. */
typedef struct llep_plan_nodes {
    uint32_t num_nodes, devices_per_node;
    uint64_t rows;        /* token-slots computed on a node other than their home node */
    uint32_t transfers;   /* weight transfers between devices of different nodes */
} llep_plan_nodes;

/* As llep__plan_print_json(), with "nodes", "devices_per_node", "inter_node_rows" and
 * "inter_node_transfers" after "devices" when nodes is not NULL. */
int llep__plan_print_json_nodes(const llep_plan *p, const llep_plan_nodes *nodes, FILE *f);

/* Writes the node figures as one more section of the readable report. */
int llep__plan_print_nodes(const llep_plan *p, const llep_plan_nodes *nodes, FILE *f);

/* Writes a readable report: mode and why, capacity, a per-device table of the EP load beside
 * this plan's with bars, balance figures, and the weight transfers grouped by expert. */
int llep__plan_print_report(const llep_plan *p, const llep_plan_params *params, FILE *f);

#endif
