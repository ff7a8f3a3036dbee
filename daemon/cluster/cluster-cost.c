/* A cluster layer's device cost model on the wire (cluster-cost.h). */
#include "cluster-cost.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

LlepPb__ClusterCost *llepd_ccost_pack(llepd_ccost_buf *b, const llep_cost_model *m) {
    uint32_t n = m->num_points <= LLEP_COST_MAX_POINTS ? m->num_points : LLEP_COST_MAX_POINTS;

    llep_pb__cluster_cost__init(&b->pb);
    memcpy(b->rows, m->rows, n * sizeof(*b->rows));
    memcpy(b->rate, m->rate, n * sizeof(*b->rate));
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        b->latency[k] = m->link[k].latency_ns;
        b->per_byte[k] = m->link[k].ns_per_byte;
    }
    b->pb.rows = b->rows;
    b->pb.n_rows = n;
    b->pb.rate = b->rate;
    b->pb.n_rate = n;
    b->pb.chunk_fixed_ns = m->chunk_fixed_ns;
    b->pb.latency_ns = b->latency;
    b->pb.n_latency_ns = LLEP_LINK_KINDS;
    b->pb.ns_per_byte = b->per_byte;
    b->pb.n_ns_per_byte = LLEP_LINK_KINDS;
    b->pb.devices_per_gpu = m->devices_per_gpu;
    b->pb.devices_per_node = m->devices_per_node;
    b->pb.hash = llep__cost_hash(m);
    return &b->pb;
}

int llepd_ccost_unpack(const LlepPb__ClusterCost *pb, llep_cost_model *ret, char *err,
                       size_t errlen) {
    char why[200];

    memset(ret, 0, sizeof(*ret));
    if (pb->n_rows == 0 || pb->n_rows > LLEP_COST_MAX_POINTS || pb->n_rate != pb->n_rows) {
        snprintf(err, errlen, "cost model with %zu curve points and %zu rates (1 to %d, as "
                 "many of each)", pb->n_rows, pb->n_rate, LLEP_COST_MAX_POINTS);
        return -EINVAL;
    }
    if (pb->n_latency_ns != LLEP_LINK_KINDS || pb->n_ns_per_byte != LLEP_LINK_KINDS) {
        snprintf(err, errlen, "cost model with %zu link latencies and %zu link rates (%d of "
                 "each)", pb->n_latency_ns, pb->n_ns_per_byte, LLEP_LINK_KINDS);
        return -EINVAL;
    }
    ret->num_points = (uint32_t)pb->n_rows;
    memcpy(ret->rows, pb->rows, pb->n_rows * sizeof(*ret->rows));
    memcpy(ret->rate, pb->rate, pb->n_rate * sizeof(*ret->rate));
    ret->chunk_fixed_ns = pb->chunk_fixed_ns;
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        ret->link[k].latency_ns = pb->latency_ns[k];
        ret->link[k].ns_per_byte = pb->ns_per_byte[k];
    }
    ret->devices_per_gpu = pb->devices_per_gpu;
    ret->devices_per_node = pb->devices_per_node;
    int r = llep__cost_check(ret, why, sizeof(why));
    if (r < 0) {
        snprintf(err, errlen, "bad cost model: %s", why);
        return r;
    }
    uint64_t h = llep__cost_hash(ret);
    if (h != pb->hash) {
        snprintf(err, errlen, "cost model hash %016" PRIx64 " announced, its figures hash to %016"
                 PRIx64, pb->hash, h);
        return -EPROTO;
    }
    return 0;
}
