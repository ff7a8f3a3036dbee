/* What the files of cluster membership and peer links share (only daemon/cluster includes it;
 * the public side is cluster.h). They call each other downwards only, in this order:
 *
 *   cluster.c      set-up and teardown, the heartbeat tick, the cluster layers' hooks
 *   peer-dial.c    listening, accepting and dialling: making links
 *   peer-proto.c   what arrives on a link: frames read and dispatched, the hello and its
 *                  authentication hand-off, heartbeats
 *   peer-link.c    a link's life and what leaves on it: writing frames, pacing bulk data,
 *                  ending and closing links
 *   cluster-peers.c  membership: the node set, ranks, peers up and down, `llepctl peers`
 *
 * A lower file reaches an upper one only through the pointers in llepd_cluster, registered at
 * set-up (the cluster layers' hooks). Everything here runs on the event-loop thread. */
#ifndef LLEPD_CLUSTER_INTERNAL_H
#define LLEPD_CLUSTER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster.h"
#include "llep-config.h"
#include "peer-auth.h"

#define ADDR_MAX (LLEP_PEER_HOST_MAX + 16)
#define MSG_MAX 256

enum link_state {
    LINK_CONNECTING,   /* dialling: TCP connect in progress */
    LINK_HELLO,        /* connected, hello not yet done */
    LINK_AUTH,         /* answered a hello; waiting for the dialling node's PeerAuth */
    LINK_UP,
    LINK_CLOSING,      /* shutting down after a last message, or its handle is closing */
};

typedef struct cluster_peer cluster_peer;

typedef struct cluster_link {
    llepd_cluster *cl;
    llepd_list node;            /* in cl->links until its handle has closed */
    cluster_peer *peer;         /* the dialled peer, or the one an incoming hello named */
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;
    llep_frame_decoder dec;
    enum link_state state;
    bool outgoing;
    uint64_t started_ns;        /* when it was made, then when it began closing */
    uint64_t rx_unattributed;   /* bytes received before the hello named the peer */
    uint8_t nonce_dial[LLEP_PEER_NONCE_BYTES];   /* authentication (peer-auth.h) */
    uint8_t nonce_reply[LLEP_PEER_NONCE_BYTES];
    cluster_peer *pending;      /* LINK_AUTH: the node the hello named */
    llepd_list bulks;           /* bulk data waiting to go out, in order (peer-link.c) */
    char remote[ADDR_MAX];      /* for logs */
} cluster_link;

struct cluster_peer {
    llep_peer_addr addr;
    char address[ADDR_MAX];
    struct sockaddr_storage sa;
    bool outgoing;              /* this node has the lower id and dials */
    LlepPb__PeerState state;
    uint64_t state_since_ns;
    cluster_link *link;         /* dialling, in hello or up; NULL when there is none */
    uint64_t next_dial_ns;
    uint32_t backoff_ms;
    uint64_t hb_seq;
    uint64_t rtt_last_ns, rtt_srtt_ns;
    uint64_t bytes_sent, bytes_received;
    uint64_t last_seen_ns;
    bool seen;
    uint32_t links_up;
    char last_error[MSG_MAX];
};

struct llepd_cluster {
    llepd_server *srv;
    uv_loop_t *loop;
    bool enabled, closed;
    uint32_t node_id;
    uint64_t peers_hash;
    uint64_t heartbeat_ns, timeout_ns;
    char listen_address[ADDR_MAX];
    bool auth;                  /* --peer-secret-file: links authenticate */
    llep_peer_secret secret;
    cluster_peer *peers;        /* every node but this one, by id */
    uint32_t npeers;
    uv_tcp_t listener;
    bool listening;
    uv_timer_t tick;
    bool ticking;
    llepd_list links;
    /* Cluster layers (llepd_cluster_set_layer_hooks): the frames they serve, and peers coming
     * and going. NULL until registered: such frames are then refused. */
    bool (*layer_serves)(int body);
    void (*layer_frame)(llepd_server *srv, uint32_t from_id, const LlepPb__Frame *f);
    void (*peer_changed)(llepd_server *srv, uint32_t node_id, bool up);
    void *comms;                /* the cluster layers' communicators (llepd_cluster_comms) */
};

/* ---- membership (cluster-peers.c) -------------------------------------------------------- */

/* The node set from --peers: every node but this one, with its address; each starts out
 * connecting. 0, or a negative errno with a sentence in err. */
int llepd_peers_init(llepd_cluster *cl, const llep_config *cfg, char *err, size_t errlen);
int llepd_peer_sockaddr(const llep_peer_addr *a, struct sockaddr_storage *ss);
cluster_peer *llepd_peer_by_id(llepd_cluster *cl, uint32_t id);
void llepd_peer_set_state(cluster_peer *p, LlepPb__PeerState state);
/* The next dial after a failed or lost link (was_up: the link had been up). */
void llepd_peer_schedule_dial(llepd_cluster *cl, cluster_peer *p, bool was_up);
/* p's link l (p->link already) came up, dialled or incoming from remote: p is up. */
void llepd_peer_link_up(llepd_cluster *cl, cluster_peer *p, bool dialled, const char *remote);
/* p's link has ended for why: p has none now, is down when the link was up, and is dialled
 * again later when this node dials it. */
void llepd_peer_link_gone(llepd_cluster *cl, cluster_peer *p, const char *why, bool was_up);
/* `llepctl peers` (srv->hooks.peers_count and peers_fill, answered by handlers-ctl.c). */
uint32_t llepd_peers_count(const llepd_server *srv);
void llepd_peers_fill(const llepd_server *srv, LlepPb__PeersReply *pr, LlepPb__PeerInfo *info);

/* ---- a link's life and what leaves on it (peer-link.c) ----------------------------------- */

/* A new link in cl->links with its TCP handle, not yet connected; NULL when out of memory. */
cluster_link *llepd_link_new(llepd_cluster *cl, bool outgoing);
/* Queues a frame on the link (a no-op while connecting or closing); a failure ends it. */
void llepd_link_send(cluster_link *l, const LlepPb__Frame *f);
/* Detaches the link from its peer and closes it, after what was queued has been written when
 * flush is set (a refusal the other end should read), else at once. */
void llepd_link_end(cluster_link *l, const char *why, bool flush);
/* Answers a frame that cannot be served with an ErrorReply, logs it and ends the link. */
void llepd_link_fail(cluster_link *l, uint64_t id, int err, const char *msg);
/* Closes the handle; the link is freed once it has closed. */
void llepd_link_close_handle(cluster_link *l);
/* Frees a link whose handle has closed (or never will: llepd_cluster_fini). */
void llepd_link_free(cluster_link *l);

/* ---- what arrives on a link (peer-proto.c) ----------------------------------------------- */

/* The read callbacks of a connected link (uv_read_start). */
void llepd_link_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
void llepd_link_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
/* The dialling side's first message. */
void llepd_link_send_hello(cluster_link *l);
void llepd_link_send_heartbeat(cluster_link *l, uint64_t now);

/* ---- making links (peer-dial.c) ---------------------------------------------------------- */

/* Listens for peer links on a (cl->listen_address names it). 0, or a negative errno with a
 * sentence in err. */
int llepd_peers_listen(llepd_cluster *cl, const llep_peer_addr *a, char *err, size_t errlen);
/* Dials p (this node has the lower id); a failure schedules the next try. */
void llepd_peer_dial(llepd_cluster *cl, cluster_peer *p);

#endif
