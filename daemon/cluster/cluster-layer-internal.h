/* What cluster-layer.c shares with cluster-share.c, which is below it (only daemon/cluster
 * includes it; the public side is cluster-layer.h). */
#ifndef LLEPD_CLUSTER_LAYER_INTERNAL_H
#define LLEPD_CLUSTER_LAYER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "cluster-layer.h"

/* ---- a node's share of the experts (cluster-share.c) ------------------------------------- */

/* Bytes of one node's share, from c->local_experts and the biases in c->flags. */
uint64_t llepd_clayer_share_bytes(const llepd_clayer *c);
/* The layer's ops at the origin: before the engine is made, cut the client's full config
 * down to this node's share (setting c->flags and c->share_bytes); once it exists, pack every
 * other node's share (0 or -ENOMEM). */
void llepd_clayer_cut_share_config(llepd_layer *l, llep_engine_config *cfg);
int llepd_clayer_pack_shares(llepd_layer *l, const llep_engine_config *full);
/* Another node: its share has arrived (c->share_in): the engine is made from it on the pool,
 * then the origin is answered. 0, or -errno with a sentence in err. */
int llepd_clayer_start_share_engine(llepd_clayer *c, char *err, size_t errlen);
/* A ClusterLayerReply to the origin to_id: status r, and why when it failed. */
void llepd_clayer_reply_layer(llepd_server *srv, uint32_t to_id, const char *name, int r,
                              const char *msg);

#endif
