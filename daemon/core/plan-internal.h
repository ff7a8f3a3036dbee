/* What plan.c shares with the cost-aware planner (plan-cost.c) and nothing else: the raw
 * ranges a planner produces before they are grouped by expert, the cost planner's workspace
 * (allocated with the plan by llep__plan_init(), so no plan allocates), and the step that
 * turns raw ranges into a plan's result. */
#ifndef LLEP_PLAN_INTERNAL_H
#define LLEP_PLAN_INTERNAL_H

#include "plan.h"

/* A range as a planner makes it, in visiting order, before it is grouped by expert. */
typedef struct llep_plan_raw {
    uint32_t expert, device;
    uint64_t start, end;
} llep_plan_raw;

/* The cost planner's scratch, sized for the plan's N and P. */
typedef struct llep_plan_cost_ws {
    double *t0;             /* [P] modelled time of each device under EP */
    double *t;              /* [P] modelled time (copies in + chunks) of the plan being built */
    double *s;              /* [P] modelled time of the copies each device sends */
    uint64_t *acc;          /* [P] rows of one expert per device, while a plan is modelled */
    uint32_t *touched;      /* [P] devices with acc != 0 */
    uint32_t *mark;         /* [P] expert + 1 that last used the device as a helper */
    uint8_t *done;          /* [P] overloaded devices already relieved */
    uint8_t *shed;          /* [N] experts the refinement has placed */
    double *chunk0;         /* [N] each expert's whole-chunk time */
    uint32_t *dorder;       /* [P] devices over the ideal bound, most time under EP first */
    uint32_t *xorder;       /* [N] each such device's experts, most rows first */
    uint32_t *tree;         /* [2 * llep__plan_tree_size(P)] tournament tree of device times */
    llep_plan_raw *raw;     /* [llep__plan_max_ranges()] the refined plan */
    llep_plan_raw *best_raw; /* [llep__plan_max_ranges()] the last reachable tau's plan */
    double *best_t, *best_s; /* [P] its device times */
    uint8_t *best_shed;     /* [N] its placed experts */
} llep_plan_cost_ws;

/* The most raw ranges any plan of p may have: the size of p->ranges and p->transfers. */
uint32_t llep__plan_max_ranges(const llep_plan *p);

/* Leaves of the cost planner's tournament tree: the least power of two >= P. */
static inline uint32_t llep__plan_tree_size(uint32_t np) {
    uint32_t s = 1;
    while (s < np)
        s *= 2;
    return s;
}

/* The cost planner's workspace of p. */
llep_plan_cost_ws *llep__plan_cost_ws(llep_plan *p);

/* Makes raw[0..nraw) the plan's result in mode `mode`: groups the ranges by expert (keeping
 * each expert's ranges in the order given, which must be offset order), derives device loads
 * and lists one transfer per (expert, helper). The loads, totals and capacity stay those of
 * the last llep__plan_compute(). */
void llep__plan_set_result(llep_plan *p, const llep_plan_raw *raw, uint32_t nraw,
                           enum llep_plan_mode mode);

/* Puts the EP plan of the last llep__plan_compute()'s loads in the result. */
void llep__plan_set_ep(llep_plan *p);

#endif
