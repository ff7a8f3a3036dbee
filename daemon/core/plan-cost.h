/* The cost-aware planner (issue 15, item 2): the plan of least modelled makespan among EP,
 * the paper's LLA and a refinement that counts what a spill costs.
 *
 * Under a device cost model (cost.h) a device's time in a step is the weight copies it
 * receives (one per expert it helps with, none where it holds a cached copy) plus its chunks
 * (a fixed cost each and rows at the rate the curve gives for that many); a device's
 * outgoing copies that leave its physical device (llep__cost_link_sends()) run on its copy
 * engines beside its compute and bound the step on their own. The makespan is the largest of
 * these. Token rows are moved under every plan alike, so
 * they are not counted.
 *
 * Pure computation like plan.h: no I/O, no allocation (the workspace comes with
 * llep__plan_init()), the same plan for the same loads, parameters, copies and model. */
#ifndef LLEP_PLAN_COST_H
#define LLEP_PLAN_COST_H

#include "cost.h"
#include "plan.h"

/* Plans loads[N] with the planner params->planner names: llep__plan_compute_cached() for
 * LLEP_PLANNER_LLA or when params->cost or params->cost_layer is NULL, else the cost-aware
 * planner. held is as for llep__plan_compute_cached() (NULL: no copies). Returns what
 * llep__plan_compute_cached() returns, or -EINVAL for a cost model that fails
 * llep__cost_check(). On success p->pick says which candidate the plan is and p->model_ns its
 * modelled makespan (0 for LLA without a model).
 *
 * The parameters, for the cost planner:
 *   - policy and lambda decide as for LLA whether the step is EP: AUTO under lambda, EP, or
 *     nothing routed give the EP plan without modelling anything;
 *   - otherwise the candidates are LLA's plan (with alpha, m, scale_min_tokens,
 *     devices_per_node and held, exactly as llep__plan_compute_cached() makes it), the
 *     refinement, and, under AUTO, EP; the least modelled makespan wins, ties to EP, then
 *     LLA. Under LLEP EP is no candidate (the refinement may still keep every expert native);
 *   - alpha and m shape only the LLA candidate: the refinement sizes chunks by the model
 *     (fixed cost per chunk, rate falloff, copy times) instead of by a capacity and m;
 *   - devices_per_node, when set, replaces the model's so that copies between the plan's
 *     nodes cost the NODE link. */
int llep__plan_run(llep_plan *p, const uint64_t *loads, const llep_plan_params *params,
                   const uint8_t *held);

/* The modelled makespan in ns of p's current result under model m (devices_per_node as the
 * model says) for a layer of figures l, with copies held (NULL: none). */
double llep__plan_model_ns(llep_plan *p, const llep_cost_model *m, const llep_cost_layer *l,
                           const uint8_t *held);

#endif
