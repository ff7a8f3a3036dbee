/* A plan as the JSON object of DESIGN.md section 6, for llep-plan --json and `llepctl plan
 * --json` (which must print the same plan the same way). */
#ifndef LLEP_TOOLS_PLAN_JSON_H
#define LLEP_TOOLS_PLAN_JSON_H

#include "json-out.h"
#include "plan-print.h"
#include "plan.h"

/* {"mode", "imbalance", "capacity", "devices", "device_loads", "assignments": [{"expert",
 * "device", "start", "end"}], "transfers": [{"expert", "src", "dst"}]}, with "nodes",
 * "devices_per_node", "inter_node_rows" and "inter_node_transfers" after "devices" when nodes
 * is not NULL. Built whole: a plan has at most 2N + P ranges and transfers. */
json_object *llep__plan_json(const llep_plan *p, const llep_plan_nodes *nodes);

#endif
