/* Cluster membership: TCP links between the llepd daemons of --peers (DESIGN.md section 3).
 *
 * Every node knows the whole list of nodes (--node-id, --peers) and accepts peer links on its
 * own entry's address (or --listen-peers). For each pair of nodes the one with the lower id
 * dials the higher one, so a pair has exactly one link and neither side has to pick between
 * two; a node that dials again (it restarted, or its old link has not timed out yet here)
 * replaces its old link. A link carries the control socket's framing (proto/frame.h) and only
 * the peer messages of proto/llep.proto: PeerHello / PeerHelloReply first (protocol version,
 * node ids, a hash of the peers list, so two daemons configured differently refuse each
 * other), then Heartbeat / HeartbeatReply from both ends every --peer-heartbeat-ms. A peer from
 * which nothing has arrived for --peer-timeout-ms is down and its link is closed; the dialling
 * side dials again with a backoff that doubles from the heartbeat interval up to the peer
 * timeout.
 *
 * Nothing a peer sends may crash the daemon or disturb its clients: a bad hello gets a reply
 * naming the problem and the link is closed, garbage gets an ErrorReply and a close, and the
 * unix socket's sessions never see any of it.
 *
 * Everything here runs on the event-loop thread. The files: cluster.c (set-up, the heartbeat
 * tick), cluster-peers.c (membership), peer-dial.c, peer-proto.c and peer-link.c (the links);
 * cluster-internal.h says what each holds and in which order they call each other. */
#ifndef LLEPD_CLUSTER_H
#define LLEPD_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server.h"

typedef struct llepd_cluster llepd_cluster;

/* Sets up membership from srv->cfg and stores it in srv->cluster (and `llepctl peers` in
 * srv->hooks): listens for peer links and starts dialling the peers with higher ids. A daemon without --node-id gets a cluster that
 * does nothing (llepctl peers says so). Returns 0, or a negative errno with a sentence in err
 * (the peer address cannot be bound, ...); on error srv->cluster is still set, for
 * llepd_cluster_fini(). */
int llepd_cluster_init(llepd_server *srv, char *err, size_t errlen);

/* Closes the listener, every link and the heartbeat timer, so the loop can run dry (called
 * once the server has stopped and is idle). Safe to call twice and with NULL. */
void llepd_cluster_close(llepd_cluster *cl);

/* Frees what is left after the loop has ended; NULL is fine. */
void llepd_cluster_fini(llepd_cluster *cl);

/* Nodes in the cluster, this one included; 0 without --node-id. */
uint32_t llepd_cluster_nodes(const llepd_cluster *cl);
uint32_t llepd_cluster_node_id(const llepd_cluster *cl);
/* Node ids in ascending order give the nodes' ranks 0..nodes-1 (a cluster layer's node order);
 * node_at returns UINT32_MAX and rank_of -1 for what is not there. */
uint32_t llepd_cluster_node_at(const llepd_cluster *cl, uint32_t rank);
int llepd_cluster_rank_of(const llepd_cluster *cl, uint32_t node_id);
/* Whether the link to the peer is up (hello done, not timed out). */
bool llepd_cluster_peer_up(llepd_cluster *cl, uint32_t node_id);
/* Queues a frame to a peer (copied). Returns 0, or -ENOTCONN when its link is not up or broke
 * while queueing. */
int llepd_cluster_send(llepd_cluster *cl, uint32_t node_id, const LlepPb__Frame *f);

/* Queues `total` bytes of data to a peer as ClusterData chunks of the given layer, step, kind
 * and index, paced so that little waits on the link at a time (heartbeats and step messages
 * pass in between; they may overtake the chunks). copy: the data is copied now; else it must
 * stay valid until sent, or until llepd_cluster_cancel_bulk(tag) or the link goes down drops
 * it. Returns 0, -ENOTCONN or -ENOMEM. */
int llepd_cluster_send_bulk(llepd_cluster *cl, uint32_t node_id, const char *layer,
                            uint64_t step, int kind, uint32_t index, const void *data,
                            uint64_t total, bool copy, const void *tag);
/* Drops the bulk data queued with tag that has not gone out yet (on every link). */
void llepd_cluster_cancel_bulk(llepd_cluster *cl, const void *tag);

/* Cluster layers register what they serve (cluster-layer.c, at set-up): the peer frames for
 * which serves(body) is true go to frame(), and peer links coming up or going down to
 * peer_changed(). */
void llepd_cluster_set_layer_hooks(llepd_cluster *cl, bool (*serves)(int body),
                                   void (*frame)(llepd_server *srv, uint32_t from_id,
                                                 const LlepPb__Frame *f),
                                   void (*peer_changed)(llepd_server *srv, uint32_t node_id,
                                                        bool up));

/* Where the cluster layers keep their communicators between nodes, one per set of nodes
 * (cluster-xnode.c): NULL until the first, and they free them before the cluster goes. */
void **llepd_cluster_comms(llepd_cluster *cl);

#endif
