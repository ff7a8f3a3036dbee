/* What the files of cluster steps share (only daemon/cluster includes it; the public side is
 * the steps section of cluster-layer.h). They call each other downwards only, in this order:
 *
 *   cluster-step.c       starting or joining a step, the peers' step messages, set-up
 *   cluster-step-run.c   moving a step on through its phases; compute and combine on the pool
 *   cluster-step-plan.c  the loads and the plan hash
 *   cluster-step-data.c  rows, spilled weights and results: over the peer links or the
 *                        communicator
 *   cluster-step-end.c   a step's memory, its deadline, its failure and its end
 *
 * The end of a step starts the next through the scheduler (llepd_sched_kick, up by the
 * layer's ops), and the communicator reports an exchange through c->xn.exchanged. Everything
 * runs on the event-loop thread except work_run (cluster-step-run.c) on the pool. */
#ifndef LLEPD_CLUSTER_STEP_INTERNAL_H
#define LLEPD_CLUSTER_STEP_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "cluster-layer.h"

/* Once the plan is agreed, only data is awaited: allow for big steps on slow links. */
#define DATA_DEADLINE_MS 60000u
/* A step's own exchange failed: how long it waits for the ClusterStepFail that says why (the
 * node whose step failed closes the communicator and sends it, and the close may come first)
 * before failing with the exchange's error. */
#define EXCHANGE_GRACE_MS 500u

static inline uint32_t num_experts(const llepd_clayer *c) {
    return c->layer->desc.num_experts;
}

/* ---- moving a step on (cluster-step-run.c) ----------------------------------------------- */

/* Takes the step as far as what has arrived allows. */
void llepd_cstep_check_progress(llepd_clayer *c);
/* c->xn.exchanged: the communicator's exchange for the step ended (r == 0) or failed. */
void llepd_cstep_exchanged(llepd_clayer *c, int r, const char *why);

/* ---- the loads and the plan hash (cluster-step-plan.c) ----------------------------------- */

/* This node's loads (and, from the origin, the plan parameters) to every other node. */
void llepd_cstep_send_loads(llepd_clayer *c);
/* Every node's loads are in: the plan, and its hash to every other node. */
void llepd_cstep_make_plan(llepd_clayer *c);
/* Whether every node's plan hash is this node's; else the step fails. */
bool llepd_cstep_hashes_agree(llepd_clayer *c);

/* ---- rows, weights and results (cluster-step-data.c) ------------------------------------- */

/* This node's part prepared for the plan, its buffers in device memory for the communicator
 * (wire_device) or in host memory for the peer links. Under the devices' turn, on the loop
 * thread or the pool: touches nothing but the part and what the step gave it. Returns 0 or
 * the part's error (llep__part_error). */
int llepd_cstep_prepare_part(llepd_clayer *c, bool wire_device);
/* The part is prepared: the step waits for its data, and its rows and weights go out over the
 * peer links unless they are for the communicator. */
void llepd_cstep_prepared(llepd_clayer *c, bool wire_device);
/* Every hash is in and agrees: over the communicator or the peer links. Returns 1 when this
 * node prepared for a communicator the others do not use: the part is then freed and must be
 * prepared again for the peer links; else 0. */
int llepd_cstep_decide(llepd_clayer *c);
/* 1 when every buffer of `kind` (or every spilled weight) from the other nodes is in and
 * copied into the part, 0 while some is missing, -EPROTO for a size the plan does not give. */
int llepd_cstep_take_buffers(llepd_clayer *c, enum llep_part_buf kind, llepd_cbuf *in);
int llepd_cstep_take_weights(llepd_clayer *c);
/* A ClusterData chunk of the step: 1 when it completed a buffer, else 0 (the step may have
 * failed). */
int llepd_cstep_on_data(llepd_clayer *c, uint32_t from, const LlepPb__ClusterData *d);
void llepd_cstep_send_results(llepd_clayer *c);
/* The step's rows and weights (or results) over the communicator. */
void llepd_cstep_start_exchange(llepd_clayer *c, bool results);

/* ---- a step's memory and its end (cluster-step-end.c) ------------------------------------ */

/* A step with id, its arrays reused from the last one when there is one; NULL: no memory. */
llepd_cstep *llepd_cstep_new(llepd_clayer *c, uint64_t id);
/* Keeps a finished step's arrays for the next one. */
void llepd_cstep_release(llepd_clayer *c, llepd_cstep *st);
void llepd_cstep_free(llepd_cstep *st, uint32_t nodes);
void llepd_cstep_arm_deadline(llepd_clayer *c, uint32_t ms);
/* Finishes the step with status r, answering this node's clients. */
void llepd_cstep_end(llepd_clayer *c, int r, const char *why);

#endif
