/* The device cost model a cluster layer's steps plan with (ClusterLayer.cost, llep.proto).
 *
 * Every node plans each step of a cluster layer independently, and the plan hashes must agree;
 * the nodes' own calibrations differ (each measured its devices), so under the cost planner
 * they all plan with the origin's one model, taken when the layer is created and sent with
 * ClusterLayer. Doubles travel as protobuf doubles, bit for bit, and the model's
 * llep__cost_hash travels with them, so a receiver knows it holds the very figures. */
#ifndef LLEPD_CLUSTER_COST_H
#define LLEPD_CLUSTER_COST_H

#include <stddef.h>

#include "cost.h"
#include "llep.pb-c.h"

/* The storage a ClusterCost points into while it is sent. */
typedef struct llepd_ccost_buf {
    LlepPb__ClusterCost pb;
    uint32_t rows[LLEP_COST_MAX_POINTS];
    double rate[LLEP_COST_MAX_POINTS];
    double latency[LLEP_LINK_KINDS], per_byte[LLEP_LINK_KINDS];
} llepd_ccost_buf;

/* Fills b from m (borrowing nothing of m); returns &b->pb. */
LlepPb__ClusterCost *llepd_ccost_pack(llepd_ccost_buf *b, const llep_cost_model *m);

/* The model in pb, checked: the counts, llep__cost_check, and the hash it names. 0, or
 * -EINVAL (-EPROTO for a wrong hash) with the problem in err. backend and device_name are
 * left empty (they do not travel: only the figures plan). */
int llepd_ccost_unpack(const LlepPb__ClusterCost *pb, llep_cost_model *ret, char *err,
                       size_t errlen);

#endif
