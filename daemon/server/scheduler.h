/* The scheduler (scheduler.c): which queued submissions form a layer's next step, running it on
 * the thread pool, and the figures of finished steps. Cluster steps (cluster/cluster-step*.c)
 * share the home assignment, the batching rule and the figures. */
#ifndef LLEPD_SCHEDULER_H
#define LLEPD_SCHEDULER_H

#include <stdint.h>

#include "engine.h"
#include "plan.h"
#include "server.h"

typedef struct llepd_home llepd_home;

/* A step's submissions spread over np home devices, as engine batches. */
typedef struct llepd_homes {
    llepd_home *homes;              /* [np] */
    llep_engine_batch *batches;     /* [np] */
    uint32_t np;
} llepd_homes;

/* Registers hooks.submit. */
void llepd_sched_init(llepd_server *srv);

/* Queues a checked submission on its layer and starts a step when the batching rule allows
 * (hooks.submit). */
void llepd_sched_submit(llepd_sub *sub);
/* Tries to start a step on the layer. */
void llepd_sched_kick(llepd_layer *l);
/* Fails every queued submission of a layer (daemon stopping, layer gone). */
void llepd_sched_fail_queued(llepd_layer *l, int status, const char *why);
/* Removes a closing session's queued submissions (completing nothing: nobody is listening). */
void llepd_sched_drop_session(llepd_server *srv, llepd_session *s);

/* Assigns subs[0..n) to np homes and stages them (copies only where a home gets several
 * submissions; x in a device space through the space's copy). Returns 0, -ENOMEM or the
 * space copy's error; llepd_homes_free() either way. */
int llepd_homes_build(llepd_homes *hs, const llepd_layer *l, llepd_sub **subs, uint32_t n,
                      uint32_t np);
/* After a successful step: copies staged outputs back into the submissions' y. Returns 0 or
 * the first error of a device space's copy (the other outputs are copied all the same). */
int llepd_homes_unstage(const llepd_homes *hs, const llepd_layer *l);
void llepd_homes_free(llepd_homes *hs);

/* Moves the submissions of the layer's next step out of its queue into out (room for
 * l->queued); 0 when the batching rule says wait. */
uint32_t llepd_sched_take(llepd_layer *l, llepd_sub **out);
/* Adds a successful step to the layer's and the daemon's figures: its stats, this node's
 * devices' figures dev[P] and the plan it ran (node scope: P devices; cluster: every node's). */
void llepd_sched_record(llepd_layer *l, const llep_engine_stats *st,
                        const llep_engine_device_stats *dev, const llep_plan *p, uint64_t lat_us);
/* Refreshes the daemon's device peaks from the devices' account. */
void llepd_sched_device_peaks(llepd_server *srv);
/* Arms the collective-batching deadline when submissions wait. */
void llepd_sched_arm_group_timer(llepd_layer *l);

#endif
