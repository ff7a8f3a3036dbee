/* Cluster membership: peer links, their hello, heartbeats and states (see cluster.h). */
#include "cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llep-config.h"
#include "log.h"
#include "peer-auth.h"
#include "session.h"

/* Connections that have not said hello yet; more than this at once are closed unread. */
#define MAX_UNIDENTIFIED 16u
#define ADDR_MAX (LLEP_PEER_HOST_MAX + 16)
#define MSG_MAX 256
/* Bytes queued on a link; past this it is closed (the peer does not read). Bulk data (shares,
 * step buffers) is paced below BULK_QUEUE, so only a stuck peer gets here. */
#define MAX_WRITE_QUEUE ((size_t)64 << 20)
/* Bulk data goes out in chunks of BULK_CHUNK while less than BULK_QUEUE waits on the link, so
 * heartbeats and step messages never queue behind gigabytes of weights. */
#define BULK_CHUNK ((size_t)1 << 20)
#define BULK_QUEUE ((size_t)4 << 20)

enum link_state {
    LINK_CONNECTING,   /* dialling: TCP connect in progress */
    LINK_HELLO,        /* connected, hello not yet done */
    LINK_AUTH,         /* answered a hello; waiting for the dialling node's PeerAuth */
    LINK_UP,
    LINK_CLOSING,      /* shutting down after a last message, or its handle is closing */
};

typedef struct cluster_peer cluster_peer;

/* A buffer going out as ClusterData chunks, a few at a time (llepd_cluster_send_bulk). */
typedef struct bulk {
    llepd_list node;                /* in its link's bulks */
    char layer[LLEP_NAME_MAX + 1];
    uint64_t step, total, off;
    int kind;
    uint32_t index;
    const uint8_t *data;
    uint8_t *owned;                 /* a copy the bulk frees, or NULL for borrowed data */
    const void *tag;
} bulk;

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
    llepd_list bulks;           /* bulk data waiting to go out, in order */
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
};

static void link_send(cluster_link *l, const LlepPb__Frame *f);

/* ---- peers ------------------------------------------------------------------------------- */

static cluster_peer *peer_by_id(llepd_cluster *cl, uint32_t id) {
    for (uint32_t i = 0; i < cl->npeers; i++)
        if (cl->peers[i].addr.id == id)
            return &cl->peers[i];
    return NULL;
}

static void peer_set_state(cluster_peer *p, LlepPb__PeerState state) {
    if (p->state == state)
        return;
    p->state = state;
    p->state_since_ns = llepd_now_ns();
}

/* The next dial after a failed or lost link: soon after a link that was up, then doubling
 * up to the peer timeout, so a node that comes back is found within about one timeout. */
static void peer_schedule_dial(llepd_cluster *cl, cluster_peer *p, bool was_up) {
    uint32_t first = (uint32_t)(cl->heartbeat_ns / 1000000u);
    uint32_t cap = (uint32_t)(cl->timeout_ns / 1000000u);

    if (was_up || p->backoff_ms == 0)
        p->backoff_ms = first;
    p->next_dial_ns = llepd_now_ns() + (uint64_t)p->backoff_ms * 1000000u;
    p->backoff_ms = p->backoff_ms > cap / 2 ? cap : 2 * p->backoff_ms;
}

/* ---- links: closing ---------------------------------------------------------------------- */

static void bulk_free(bulk *b) {
    llepd_list_remove(&b->node);
    free(b->owned);
    free(b);
}

static void drop_bulks(cluster_link *l) {
    while (!llepd_list_empty(&l->bulks))
        bulk_free(llepd_container_of(l->bulks.next, bulk, node));
}

static void on_link_closed(uv_handle_t *h) {
    cluster_link *l = h->data;

    drop_bulks(l);
    llepd_list_remove(&l->node);
    llep__frame_decoder_fini(&l->dec);
    free(l);
}

static void link_close_handle(cluster_link *l) {
    if (!uv_is_closing((uv_handle_t *)&l->tcp))
        uv_close((uv_handle_t *)&l->tcp, on_link_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    (void)status;
    link_close_handle(req->data);
}

/* Detaches the link from its peer (the peer is down when the link was up) and closes it:
 * after what was queued has been written when flush is set (a refusal or error reply the
 * other end should read), else at once. */
static void link_end(cluster_link *l, const char *why, bool flush) {
    llepd_cluster *cl = l->cl;
    cluster_peer *p = l->peer;
    bool was_up = l->state == LINK_UP, connected = l->state != LINK_CONNECTING;

    if (l->state == LINK_CLOSING)
        return;
    l->state = LINK_CLOSING;
    l->started_ns = llepd_now_ns();
    drop_bulks(l);
    if (p && p->link == l) {
        p->link = NULL;
        snprintf(p->last_error, sizeof(p->last_error), "%s", why);
        if (was_up) {
            log_warning("peer node %u (%s) down: %s", p->addr.id, p->address, why);
            peer_set_state(p, LLEP_PB__PEER_STATE__PEER_STATE_DOWN);
            if (!cl->closed)
                if (cl->peer_changed)
                    cl->peer_changed(cl->srv, p->addr.id, false);
        } else {
            log_info("peer node %u (%s): link not up: %s", p->addr.id, p->address, why);
        }
        if (p->outgoing && !cl->closed)
            peer_schedule_dial(cl, p, was_up);
    }
    if (connected)
        uv_read_stop((uv_stream_t *)&l->tcp);
    if (flush && connected) {
        l->shutdown_req.data = l;
        if (uv_shutdown(&l->shutdown_req, (uv_stream_t *)&l->tcp, on_shutdown) == 0)
            return;
    }
    link_close_handle(l);
}

/* Answers a frame that cannot be served with an ErrorReply, logs it and closes the link. */
static void link_fail(cluster_link *l, uint64_t id, int err, const char *msg) {
    LlepPb__ErrorReply er = LLEP_PB__ERROR_REPLY__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    log_warning("peer link %s: %s", l->remote, msg);
    er.status = llep__status_from_errno(err);
    er.message = (char *)msg;
    f.id = id;
    f.body_case = LLEP_PB__FRAME__BODY_ERROR;
    f.error = &er;
    link_send(l, &f);
    link_end(l, msg, true);
}

/* ---- links: sending ---------------------------------------------------------------------- */

static void pump(cluster_link *l);

static void on_write(uv_write_t *req, int status) {
    cluster_link *l = req->data;

    free(req);
    if (status < 0 && l->state != LINK_CLOSING)
        link_end(l, uv_strerror(status), false);
    else if (status == 0)
        pump(l);
}

static void link_send(cluster_link *l, const LlepPb__Frame *f) {
    uint8_t *buf;
    size_t len;
    uv_write_t *req;

    if (l->state == LINK_CLOSING || l->state == LINK_CONNECTING)
        return;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&l->tcp) > MAX_WRITE_QUEUE) {
        link_end(l, "the peer does not read what this node sends", false);
        return;
    }
    int r = llep__frame_encode_alloc(f, &buf, &len);
    if (r < 0) {
        log_error("peer link %s: cannot encode a %s frame: %s", l->remote,
                  llep__frame_body_name(f->body_case), strerror(-r));
        link_end(l, "a frame could not be encoded", false);
        return;
    }
    /* The request carries the frame, so on_write frees both at once. */
    req = malloc(sizeof(*req) + len);
    if (!req) {
        free(buf);
        link_end(l, "out of memory", false);
        return;
    }
    memcpy(req + 1, buf, len);
    free(buf);
    req->data = l;
    uv_buf_t b = uv_buf_init((char *)(req + 1), (unsigned)len);
    r = uv_write(req, (uv_stream_t *)&l->tcp, &b, 1, on_write);
    if (r < 0) {
        free(req);
        link_end(l, uv_strerror(r), false);
        return;
    }
    if (l->peer)
        l->peer->bytes_sent += len;
}

/* ---- links: hello ------------------------------------------------------------------------ */

static void link_up(cluster_link *l, cluster_peer *p) {
    l->state = LINK_UP;
    l->peer = p;
    p->link = l;
    p->links_up++;
    p->backoff_ms = 0;
    p->last_seen_ns = llepd_now_ns();
    p->seen = true;
    p->last_error[0] = '\0';
    peer_set_state(p, LLEP_PB__PEER_STATE__PEER_STATE_UP);
    log_notice("peer node %u (%s) up (%s %s)", p->addr.id, p->address,
               l->outgoing ? "dialled" : "incoming from", l->remote);
    if (l->cl->peer_changed)
        l->cl->peer_changed(l->cl->srv, p->addr.id, true);
}

static void send_hello(cluster_link *l) {
    LlepPb__PeerHello h = LLEP_PB__PEER_HELLO__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    h.version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    h.node_id = l->cl->node_id;
    h.peer_id = l->peer->addr.id;
    h.peers_hash = l->cl->peers_hash;
    h.daemon_version = (char *)LLEP_VERSION;
    if (l->cl->auth && llep__peer_nonce(l->nonce_dial) == 0) {
        h.nonce.data = l->nonce_dial;
        h.nonce.len = LLEP_PEER_NONCE_BYTES;
    }
    f.id = 1;
    f.body_case = LLEP_PB__FRAME__BODY_PEER_HELLO;
    f.peer_hello = &h;
    link_send(l, &f);
}

/* Why an incoming PeerHello is refused, or 0 with *ret_peer. */
static int check_hello(llepd_cluster *cl, const LlepPb__PeerHello *h, cluster_peer **ret_peer,
                       char *msg, size_t len) {
    uint32_t want = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    cluster_peer *p;

    if (h->version != want) {
        snprintf(msg, len, "protocol version mismatch: node %" PRIu32 " speaks version %" PRIu32
                 ", node %u speaks version %u", h->node_id, h->version, cl->node_id, want);
        return -EPROTONOSUPPORT;
    }
    if (h->node_id == cl->node_id) {
        snprintf(msg, len, "node id %u is this node's own id", cl->node_id);
        return -EINVAL;
    }
    p = peer_by_id(cl, h->node_id);
    if (!p) {
        snprintf(msg, len, "unknown node id %" PRIu32 ": not in node %u's peers list",
                 h->node_id, cl->node_id);
        return -ENOENT;
    }
    if (h->peer_id != cl->node_id) {
        snprintf(msg, len, "node %" PRIu32 " dialled node %" PRIu32 " but reached node %u at "
                 "%s: the peers lists differ", h->node_id, h->peer_id, cl->node_id,
                 cl->listen_address);
        return -EINVAL;
    }
    if (p->outgoing) {
        snprintf(msg, len, "node %" PRIu32 " dialled node %u, but the lower id dials the "
                 "higher: node %u dials node %" PRIu32, h->node_id, cl->node_id, cl->node_id,
                 h->node_id);
        return -EINVAL;
    }
    if (h->peers_hash != cl->peers_hash) {
        snprintf(msg, len, "node %" PRIu32 " has a different peers list (hash %016" PRIx64
                 ", node %u has %016" PRIx64 "): every node needs the same --peers",
                 h->node_id, h->peers_hash, cl->node_id, cl->peers_hash);
        return -EINVAL;
    }
    *ret_peer = p;
    return 0;
}

static void accept_link(cluster_link *l, cluster_peer *p);
static int check_auth_offer(llepd_cluster *cl, const LlepPb__PeerHello *h, char *msg,
                            size_t len);

static void handle_peer_hello(cluster_link *l, const LlepPb__Frame *f) {
    llepd_cluster *cl = l->cl;
    LlepPb__PeerHelloReply hr = LLEP_PB__PEER_HELLO_REPLY__INIT;
    LlepPb__Frame out = LLEP_PB__FRAME__INIT;
    cluster_peer *p = NULL;
    char msg[MSG_MAX] = "";
    uint8_t mac[LLEP_PEER_MAC_BYTES];
    int r = check_hello(cl, f->peer_hello, &p, msg, sizeof(msg));

    if (r == 0)
        r = check_auth_offer(cl, f->peer_hello, msg, sizeof(msg));
    hr.status = llep__status_from_errno(r);
    hr.message = msg;
    hr.version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    hr.node_id = cl->node_id;
    hr.peers_hash = cl->peers_hash;
    out.id = f->id;
    out.body_case = LLEP_PB__FRAME__BODY_PEER_HELLO_REPLY;
    out.peer_hello_reply = &hr;
    if (r == 0 && cl->auth) {
        memcpy(l->nonce_dial, f->peer_hello->nonce.data, LLEP_PEER_NONCE_BYTES);
        r = llep__peer_nonce(l->nonce_reply);
        if (r < 0)
            snprintf(msg, sizeof(msg), "node %u cannot make a nonce", cl->node_id);
        llep__peer_mac(&cl->secret, false, l->nonce_dial, l->nonce_reply, p->addr.id,
                       cl->node_id, mac);
        hr.status = llep__status_from_errno(r);
        hr.nonce.data = l->nonce_reply;
        hr.nonce.len = LLEP_PEER_NONCE_BYTES;
        hr.mac.data = mac;
        hr.mac.len = sizeof(mac);
    }
    if (r < 0) {
        log_warning("refused a peer link from %s: %s", l->remote, msg);
        link_send(l, &out);
        link_end(l, msg, true);
        return;
    }
    link_send(l, &out);
    if (cl->auth) {
        /* Up only once the dialling node has shown it holds the secret too (PeerAuth). */
        l->state = LINK_AUTH;
        l->pending = p;
        return;
    }
    accept_link(l, p);
}

/* An answered (and, with a secret, authenticated) incoming link becomes p's link. */
static void accept_link(cluster_link *l, cluster_peer *p) {
    /* A node dialling again has restarted or lost its link: the new link wins. */
    if (p->link) {
        char why[MSG_MAX];
        snprintf(why, sizeof(why), "replaced by a new link from %s", l->remote);
        link_end(p->link, why, false);
    }
    p->bytes_received += l->rx_unattributed;
    l->rx_unattributed = 0;
    link_up(l, p);
}

/* Both ends must agree on authenticating: say which one lacks the secret. */
static int check_auth_offer(llepd_cluster *cl, const LlepPb__PeerHello *h, char *msg,
                            size_t len) {
    if (cl->auth && h->nonce.len != LLEP_PEER_NONCE_BYTES) {
        snprintf(msg, len, "node %u authenticates its peer links (peer-secret-file) and node %"
                 PRIu32 " does not: give every node the same peer secret", cl->node_id,
                 h->node_id);
        return -EACCES;
    }
    if (!cl->auth && h->nonce.len) {
        snprintf(msg, len, "node %" PRIu32 " authenticates its peer links (peer-secret-file) "
                 "and node %u does not: give every node the same peer secret", h->node_id,
                 cl->node_id);
        return -EACCES;
    }
    return 0;
}

/* LINK_AUTH: the dialling node's PeerAuth. */
static void handle_peer_auth(cluster_link *l, const LlepPb__Frame *f) {
    llepd_cluster *cl = l->cl;
    cluster_peer *p = l->pending;
    const LlepPb__PeerAuth *a = f->peer_auth;
    char msg[MSG_MAX];

    if (!llep__peer_mac_ok(&cl->secret, true, l->nonce_dial, l->nonce_reply, p->addr.id,
                           cl->node_id, a->mac.data, a->mac.len)) {
        snprintf(msg, sizeof(msg), "node %u failed authentication: its HMAC does not match "
                 "(a different peer secret?)", p->addr.id);
        link_fail(l, f->id, -EACCES, msg);
        return;
    }
    l->pending = NULL;
    accept_link(l, p);
}

/* With a secret: whether the answering node's HMAC shows it holds the same one. */
static bool reply_authentic(cluster_link *l, const LlepPb__PeerHelloReply *h, char *msg,
                            size_t len) {
    uint32_t id = l->peer->addr.id;

    if (h->nonce.len != LLEP_PEER_NONCE_BYTES) {
        snprintf(msg, len, "node %u did not authenticate (no peer-secret-file there?)", id);
        return false;
    }
    memcpy(l->nonce_reply, h->nonce.data, LLEP_PEER_NONCE_BYTES);
    if (!llep__peer_mac_ok(&l->cl->secret, false, l->nonce_dial, l->nonce_reply,
                           l->cl->node_id, id, h->mac.data, h->mac.len)) {
        snprintf(msg, len, "node %u failed authentication: its HMAC does not match (a different "
                 "peer secret?)", id);
        return false;
    }
    return true;
}

static void send_auth(cluster_link *l) {
    LlepPb__PeerAuth a = LLEP_PB__PEER_AUTH__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    uint8_t mac[LLEP_PEER_MAC_BYTES];

    llep__peer_mac(&l->cl->secret, true, l->nonce_dial, l->nonce_reply, l->cl->node_id,
                   l->peer->addr.id, mac);
    a.mac.data = mac;
    a.mac.len = sizeof(mac);
    f.id = 3;
    f.body_case = LLEP_PB__FRAME__BODY_PEER_AUTH;
    f.peer_auth = &a;
    link_send(l, &f);
}

static void handle_peer_hello_reply(cluster_link *l, const LlepPb__Frame *f) {
    const LlepPb__PeerHelloReply *h = f->peer_hello_reply;
    uint32_t want = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    cluster_peer *p = l->peer;
    char msg[MSG_MAX];

    if (h->status != LLEP_PB__STATUS__STATUS_OK)
        snprintf(msg, sizeof(msg), "node %u refused the link: %s", p->addr.id,
                 h->message && h->message[0] ? h->message : "no reason given");
    else if (h->version != want)
        snprintf(msg, sizeof(msg), "protocol version mismatch: node %u speaks version %" PRIu32
                 ", this node speaks version %u", p->addr.id, h->version, want);
    else if (h->node_id != p->addr.id)
        snprintf(msg, sizeof(msg), "%s answered as node %" PRIu32 ", expected node %u",
                 p->address, h->node_id, p->addr.id);
    else if (h->peers_hash != l->cl->peers_hash)
        snprintf(msg, sizeof(msg), "node %u has a different peers list", p->addr.id);
    else if (l->cl->auth && !reply_authentic(l, h, msg, sizeof(msg)))
        ;
    else {
        if (l->cl->auth)
            send_auth(l);
        link_up(l, p);
        return;
    }
    log_error("peer link to %s: %s", p->address, msg);
    link_end(l, msg, false);
}

/* ---- links: heartbeats and dispatch ------------------------------------------------------ */

static void send_heartbeat(cluster_link *l, uint64_t now) {
    LlepPb__Heartbeat hb = LLEP_PB__HEARTBEAT__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    hb.seq = ++l->peer->hb_seq;
    hb.sent_ns = now;
    f.id = hb.seq;
    f.body_case = LLEP_PB__FRAME__BODY_HEARTBEAT;
    f.heartbeat = &hb;
    link_send(l, &f);
}

static void handle_heartbeat(cluster_link *l, const LlepPb__Frame *f) {
    LlepPb__HeartbeatReply ack = LLEP_PB__HEARTBEAT_REPLY__INIT;
    LlepPb__Frame out = LLEP_PB__FRAME__INIT;

    ack.seq = f->heartbeat->seq;
    ack.sent_ns = f->heartbeat->sent_ns;
    out.id = f->id;
    out.body_case = LLEP_PB__FRAME__BODY_HEARTBEAT_REPLY;
    out.heartbeat_reply = &ack;
    link_send(l, &out);
}

static void handle_heartbeat_reply(cluster_link *l, const LlepPb__Frame *f) {
    cluster_peer *p = l->peer;
    uint64_t now = llepd_now_ns(), sent = f->heartbeat_reply->sent_ns;

    /* Only our own clock's values are meaningful; anything else is ignored, not trusted. */
    if (sent == 0 || sent > now || f->heartbeat_reply->seq > p->hb_seq)
        return;
    p->rtt_last_ns = now - sent;
    p->rtt_srtt_ns = p->rtt_srtt_ns ? (7 * p->rtt_srtt_ns + p->rtt_last_ns) / 8 : p->rtt_last_ns;
}

/* Peer frames go through this dispatch only: a peer can never reach the unix socket's
 * handlers (client and llepctl requests). */
static void link_dispatch(cluster_link *l, const LlepPb__Frame *f) {
    LlepPb__Frame__BodyCase body = f->body_case;
    char msg[MSG_MAX];

    if (l->peer && l->state == LINK_UP) {
        l->peer->last_seen_ns = llepd_now_ns();
        l->peer->seen = true;
    }
    if (body == LLEP_PB__FRAME__BODY_ERROR || body == LLEP_PB__FRAME__BODY_NOTICE) {
        const char *m = body == LLEP_PB__FRAME__BODY_ERROR ? f->error->message : f->notice->message;
        snprintf(msg, sizeof(msg), "the peer sent %s: %s", llep__frame_body_name(body),
                 m && m[0] ? m : "no message");
        log_warning("peer link %s: %s", l->remote, msg);
        link_end(l, msg, false);
        return;
    }
    if (l->state == LINK_AUTH) {
        if (body != LLEP_PB__FRAME__BODY_PEER_AUTH) {
            snprintf(msg, sizeof(msg), "after PeerHelloReply a peer link must send peer_auth, "
                     "got %s", llep__frame_body_name(body));
            link_fail(l, f->id, -EACCES, msg);
        } else {
            handle_peer_auth(l, f);
        }
        return;
    }
    if (l->state == LINK_HELLO) {
        LlepPb__Frame__BodyCase want = l->outgoing ? LLEP_PB__FRAME__BODY_PEER_HELLO_REPLY
                                                 : LLEP_PB__FRAME__BODY_PEER_HELLO;
        if (body != want) {
            snprintf(msg, sizeof(msg), "the first message on a peer link must be %s, got %s",
                     llep__frame_body_name(want), llep__frame_body_name(body));
            link_fail(l, f->id, -EPROTO, msg);
        } else if (l->outgoing) {
            handle_peer_hello_reply(l, f);
        } else {
            handle_peer_hello(l, f);
        }
        return;
    }
    if (body == LLEP_PB__FRAME__BODY_HEARTBEAT)
        handle_heartbeat(l, f);
    else if (body == LLEP_PB__FRAME__BODY_HEARTBEAT_REPLY)
        handle_heartbeat_reply(l, f);
    else if (l->cl->layer_serves && l->cl->layer_serves(body))
        l->cl->layer_frame(l->cl->srv, l->peer->addr.id, f);
    else {
        snprintf(msg, sizeof(msg), "%s %s", llep__frame_body_name(body),
                 body == LLEP_PB__FRAME__BODY_PEER_HELLO ? "sent twice"
                                                      : "is not served on a peer link");
        link_fail(l, f->id, -EPROTO, msg);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    if (suggested > LLEP_FRAME_READ_MAX)
        suggested = LLEP_FRAME_READ_MAX;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    cluster_link *l = stream->data;
    LlepPb__Frame *f;
    char msg[MSG_MAX];
    int r = 0;

    if (nread < 0) {
        free(buf->base);
        link_end(l, nread == UV_EOF ? "the peer closed the link" : uv_strerror((int)nread),
                 false);
        return;
    }
    if (l->peer)
        l->peer->bytes_received += (uint64_t)nread;
    else
        l->rx_unattributed += (uint64_t)nread;
    if (nread > 0)
        r = llep__frame_decoder_feed(&l->dec, buf->base, (size_t)nread);
    free(buf->base);
    while (r >= 0 && l->state != LINK_CLOSING) {
        r = llep__frame_decoder_next(&l->dec, &f);
        if (r <= 0)
            break;
        link_dispatch(l, f);
        llep__frame_free(f);
    }
    if (r < 0 && l->state != LINK_CLOSING) {
        snprintf(msg, sizeof(msg), "bad frame: %s", llep__frame_decoder_error(&l->dec));
        link_fail(l, 0, -EPROTO, msg);
    }
}

/* ---- links: making them ------------------------------------------------------------------ */

static cluster_link *link_new(llepd_cluster *cl, bool outgoing) {
    cluster_link *l = calloc(1, sizeof(*l));

    if (!l)
        return NULL;
    if (uv_tcp_init(cl->loop, &l->tcp) < 0) {
        free(l);
        return NULL;
    }
    l->cl = cl;
    l->tcp.data = l;
    l->outgoing = outgoing;
    l->started_ns = llepd_now_ns();
    llep__frame_decoder_init(&l->dec, 0);
    llepd_list_init(&l->bulks);
    llepd_list_append(&cl->links, &l->node);
    return l;
}

static void on_connect(uv_connect_t *req, int status) {
    cluster_link *l = req->data;
    char msg[MSG_MAX];

    if (l->state == LINK_CLOSING)
        return;
    if (status < 0) {
        snprintf(msg, sizeof(msg), "dialling %s: %s", l->remote, uv_strerror(status));
        link_end(l, msg, false);
        return;
    }
    /* Dialling a local port nobody listens on can connect the socket to itself (TCP
     * simultaneous open, when the kernel picks that port as the source). */
    struct sockaddr_storage self, other;
    int n1 = sizeof(self), n2 = sizeof(other);
    memset(&self, 0, sizeof(self));
    memset(&other, 0, sizeof(other));
    if (uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&self, &n1) == 0 &&
        uv_tcp_getpeername(&l->tcp, (struct sockaddr *)&other, &n2) == 0 && n1 == n2 &&
        memcmp(&self, &other, (size_t)n1) == 0) {
        snprintf(msg, sizeof(msg), "dialling %s: connected to itself", l->remote);
        link_end(l, msg, false);
        return;
    }
    l->state = LINK_HELLO;
    uv_tcp_nodelay(&l->tcp, 1);
    int r = uv_read_start((uv_stream_t *)&l->tcp, on_alloc, on_read);
    if (r < 0) {
        link_end(l, uv_strerror(r), false);
        return;
    }
    send_hello(l);
}

static void peer_dial(llepd_cluster *cl, cluster_peer *p) {
    cluster_link *l = link_new(cl, true);

    if (!l) {
        snprintf(p->last_error, sizeof(p->last_error), "out of memory");
        peer_schedule_dial(cl, p, false);
        return;
    }
    l->peer = p;
    l->state = LINK_CONNECTING;
    snprintf(l->remote, sizeof(l->remote), "%s", p->address);
    p->link = l;
    l->connect_req.data = l;
    int r = uv_tcp_connect(&l->connect_req, &l->tcp, (const struct sockaddr *)&p->sa,
                           on_connect);
    if (r < 0) {
        char msg[MSG_MAX];
        snprintf(msg, sizeof(msg), "dialling %s: %s", p->address, uv_strerror(r));
        link_end(l, msg, false);
    }
}

static uint32_t count_unidentified(llepd_cluster *cl) {
    uint32_t n = 0;

    for (llepd_list *i = cl->links.next; i != &cl->links; i = i->next) {
        cluster_link *l = llepd_container_of(i, cluster_link, node);
        n += !l->outgoing && !l->peer && l->state != LINK_CLOSING;
    }
    return n;
}

static void format_sockaddr(const struct sockaddr_storage *ss, char *buf, size_t len) {
    char host[LLEP_PEER_HOST_MAX] = "?";

    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, (unsigned)ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, (unsigned)ntohs(a->sin_port));
    }
}

static void on_peer_connection(uv_stream_t *listener, int status) {
    llepd_cluster *cl = listener->data;
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);

    if (status < 0) {
        log_warning("accepting a peer link failed: %s", uv_strerror(status));
        return;
    }
    cluster_link *l = link_new(cl, false);
    if (!l)
        return; /* the connection stays in the backlog; the next one tries again */
    l->state = LINK_HELLO;
    if (uv_accept(listener, (uv_stream_t *)&l->tcp) < 0) {
        link_end(l, "accept failed", false);
        return;
    }
    memset(&ss, 0, sizeof(ss));
    if (uv_tcp_getpeername(&l->tcp, (struct sockaddr *)&ss, &sslen) == 0)
        format_sockaddr(&ss, l->remote, sizeof(l->remote));
    else
        snprintf(l->remote, sizeof(l->remote), "?");
    if (cl->closed || count_unidentified(cl) > MAX_UNIDENTIFIED) {
        log_warning("peer link from %s closed unread: %s", l->remote,
                    cl->closed ? "stopping" : "too many links without a hello");
        link_end(l, "too many links", false);
        return;
    }
    uv_tcp_nodelay(&l->tcp, 1);
    if (uv_read_start((uv_stream_t *)&l->tcp, on_alloc, on_read) < 0)
        link_end(l, "cannot read", false);
}

/* ---- the heartbeat tick ------------------------------------------------------------------ */

/* Every heartbeat interval: heartbeats on the links that are up, the peer timeout, links stuck
 * in dialling, hello or shutdown, and the dials that are due. */
static void tick(llepd_cluster *cl) {
    uint64_t now = llepd_now_ns();
    char msg[MSG_MAX];

    for (llepd_list *i = cl->links.next, *next; i != &cl->links; i = next) {
        cluster_link *l = llepd_container_of(i, cluster_link, node);
        next = i->next;
        if (now - l->started_ns <= cl->timeout_ns)
            continue;
        if (l->state == LINK_CLOSING)
            link_close_handle(l); /* the other end does not read our last message */
        else if (l->state != LINK_UP)
            link_end(l, l->state == LINK_CONNECTING ? "no connection within the peer timeout"
                        : l->state == LINK_AUTH     ? "no authentication within the peer timeout"
                                                    : "no hello within the peer timeout",
                     false);
    }
    for (uint32_t i = 0; i < cl->npeers; i++) {
        cluster_peer *p = &cl->peers[i];

        if (p->link && p->link->state == LINK_UP) {
            if (now - p->last_seen_ns > cl->timeout_ns) {
                snprintf(msg, sizeof(msg), "nothing heard for %" PRIu64 " ms (peer timeout %"
                         PRIu64 " ms)", (now - p->last_seen_ns) / 1000000u,
                         cl->timeout_ns / 1000000u);
                link_end(p->link, msg, false);
            } else {
                send_heartbeat(p->link, now);
            }
        }
        if (p->state == LLEP_PB__PEER_STATE__PEER_STATE_CONNECTING &&
            now - p->state_since_ns > cl->timeout_ns) {
            log_warning("peer node %u (%s) down: not up within the peer timeout%s%s",
                        p->addr.id, p->address, p->last_error[0] ? ": " : "", p->last_error);
            peer_set_state(p, LLEP_PB__PEER_STATE__PEER_STATE_DOWN);
        }
        if (p->outgoing && !p->link && now >= p->next_dial_ns)
            peer_dial(cl, p);
    }
}

static void on_tick(uv_timer_t *t) {
    tick(t->data);
}

/* ---- set-up and teardown ----------------------------------------------------------------- */

static int peer_sockaddr(const llep_peer_addr *a, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof(*ss));
    if (a->ipv6)
        return uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *)ss);
    return uv_ip4_addr(a->host, a->port, (struct sockaddr_in *)ss);
}

static int start_listening(llepd_cluster *cl, const llep_peer_addr *a, char *err,
                           size_t errlen) {
    struct sockaddr_storage ss;
    int r = peer_sockaddr(a, &ss);

    if (r == 0)
        r = uv_tcp_init(cl->loop, &cl->listener);
    if (r < 0)
        goto fail;
    cl->listener.data = cl;
    cl->listening = true;
    r = uv_tcp_bind(&cl->listener, (const struct sockaddr *)&ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&cl->listener, 64, on_peer_connection);
    if (r == 0)
        return 0;
fail:
    snprintf(err, errlen, "listening for peers on %s: %s", cl->listen_address,
             uv_strerror(r));
    return r;
}

static uint32_t peers_count(const llepd_server *srv) {
    const llepd_cluster *cl = srv->cluster;
    return cl && cl->enabled ? cl->npeers : 0;
}

/* `llepctl peers` (handlers-ctl.c): this node's settings and every peer's link. */
static void peers_fill(const llepd_server *srv, LlepPb__PeersReply *pr, LlepPb__PeerInfo *info) {
    const llepd_cluster *cl = srv->cluster;
    uint64_t now = llepd_now_ns();

    if (!cl || !cl->enabled)
        return;
    pr->clustered = true;
    pr->node_id = cl->node_id;
    pr->listen_address = (char *)cl->listen_address;
    pr->heartbeat_ms = (uint32_t)(cl->heartbeat_ns / 1000000u);
    pr->timeout_ms = (uint32_t)(cl->timeout_ns / 1000000u);
    pr->authenticated = cl->auth;
    for (uint32_t i = 0; i < cl->npeers; i++) {
        const cluster_peer *p = &cl->peers[i];
        LlepPb__PeerInfo *pi = &info[i];

        llep_pb__peer_info__init(pi);
        pi->node_id = p->addr.id;
        pi->address = (char *)p->address;
        pi->state = p->state;
        pi->outgoing = p->outgoing;
        pi->rtt_last_ns = p->rtt_last_ns;
        pi->rtt_smoothed_ns = p->rtt_srtt_ns;
        pi->bytes_sent = p->bytes_sent;
        pi->bytes_received = p->bytes_received;
        pi->seen = p->seen;
        pi->last_seen_us = p->seen ? (now - p->last_seen_ns) / 1000u : 0;
        pi->state_us = (now - p->state_since_ns) / 1000u;
        pi->links_up = p->links_up;
        pi->last_error = (char *)p->last_error;
    }
}

int llepd_cluster_init(llepd_server *srv, char *err, size_t errlen) {
    const llep_config *cfg = &srv->cfg;
    const llep_peer_addr *listen_addr = llep__config_listen_addr(cfg);
    llepd_cluster *cl = calloc(1, sizeof(*cl));
    int r;

    srv->cluster = cl;
    if (!cl) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    srv->hooks.peers_count = peers_count;
    srv->hooks.peers_fill = peers_fill;
    cl->srv = srv;
    cl->loop = srv->loop;
    llepd_list_init(&cl->links);
    if (!cfg->have_node_id || !listen_addr)
        return 0;
    cl->enabled = true;
    cl->node_id = cfg->node_id;
    cl->peers_hash = llep__peers_hash(cfg);
    cl->heartbeat_ns = (uint64_t)cfg->peer_heartbeat_ms * 1000000u;
    cl->timeout_ns = (uint64_t)cfg->peer_timeout_ms * 1000000u;
    llep__peer_addr_format(listen_addr, cl->listen_address, sizeof(cl->listen_address));
    if (cfg->peer_secret_file[0]) {
        r = llep__peer_secret_load(cfg->peer_secret_file, &cl->secret, err, errlen);
        if (r < 0)
            return r;
        cl->auth = true;
    }
    cl->peers = calloc(cfg->npeers ? cfg->npeers : 1, sizeof(*cl->peers));
    if (!cl->peers) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    uint64_t now = llepd_now_ns();
    for (uint32_t i = 0; i < cfg->npeers; i++) {
        if (cfg->peers[i].id == cl->node_id)
            continue;
        cluster_peer *p = &cl->peers[cl->npeers++];
        p->addr = cfg->peers[i];
        llep__peer_addr_format(&p->addr, p->address, sizeof(p->address));
        r = peer_sockaddr(&p->addr, &p->sa);
        if (r < 0) {
            snprintf(err, errlen, "peer node %u: bad address %s", p->addr.id, p->address);
            return r;
        }
        p->outgoing = cl->node_id < p->addr.id;
        p->state = LLEP_PB__PEER_STATE__PEER_STATE_CONNECTING;
        p->state_since_ns = now;
    }
    r = start_listening(cl, listen_addr, err, errlen);
    if (r < 0)
        return r;
    r = uv_timer_init(cl->loop, &cl->tick);
    if (r == 0) {
        cl->tick.data = cl;
        cl->ticking = true;
        uint64_t ms = cfg->peer_heartbeat_ms;
        r = uv_timer_start(&cl->tick, on_tick, ms, ms);
    }
    if (r < 0) {
        snprintf(err, errlen, "peer heartbeat timer: %s", uv_strerror(r));
        return r;
    }
    log_notice("cluster: node %u of %u, peer links on %s, heartbeat %u ms, peer timeout %u ms, "
               "%s", cl->node_id, cl->npeers + 1, cl->listen_address, cfg->peer_heartbeat_ms,
               cfg->peer_timeout_ms, cl->auth ? "authenticated with the peer secret"
                                              : "not authenticated (no peer-secret-file)");
    tick(cl); /* dial the higher ids now rather than one interval later */
    return 0;
}

void llepd_cluster_close(llepd_cluster *cl) {
    if (!cl || cl->closed)
        return;
    cl->closed = true;
    if (cl->ticking)
        uv_close((uv_handle_t *)&cl->tick, NULL);
    if (cl->listening)
        uv_close((uv_handle_t *)&cl->listener, NULL);
    cl->ticking = cl->listening = false;
    for (llepd_list *i = cl->links.next; i != &cl->links; i = i->next) {
        cluster_link *l = llepd_container_of(i, cluster_link, node);
        l->state = LINK_CLOSING;
        if (l->peer && l->peer->link == l)
            l->peer->link = NULL;
        link_close_handle(l);
    }
}

void llepd_cluster_fini(llepd_cluster *cl) {
    if (!cl)
        return;
    /* Links whose handles never finished closing (an error path that did not run the loop)
     * are freed here; after a normal stop the list is empty. */
    while (!llepd_list_empty(&cl->links)) {
        cluster_link *l = llepd_container_of(cl->links.next, cluster_link, node);
        llepd_list_remove(&l->node);
        drop_bulks(l);
        llep__frame_decoder_fini(&l->dec);
        free(l);
    }
    explicit_bzero(&cl->secret, sizeof(cl->secret));
    free(cl->peers);
    free(cl);
}

/* ---- what cluster layers use ---------------------------------------------------------- */

uint32_t llepd_cluster_nodes(const llepd_cluster *cl) {
    return cl && cl->enabled ? cl->npeers + 1 : 0;
}

uint32_t llepd_cluster_node_id(const llepd_cluster *cl) {
    return cl ? cl->node_id : 0;
}

/* Every node id, this one included, in ascending order: a cluster layer's node ranks. */
uint32_t llepd_cluster_node_at(const llepd_cluster *cl, uint32_t rank) {
    uint32_t below = rank, cand = UINT32_MAX;

    /* The rank-th smallest id: few nodes, so a plain count beats keeping a sorted copy. */
    for (uint32_t i = 0; i <= cl->npeers; i++) {
        uint32_t id = i < cl->npeers ? cl->peers[i].addr.id : cl->node_id, smaller = 0;
        for (uint32_t j = 0; j <= cl->npeers; j++) {
            uint32_t o = j < cl->npeers ? cl->peers[j].addr.id : cl->node_id;
            smaller += o < id;
        }
        if (smaller == below)
            cand = id;
    }
    return cand;
}

int llepd_cluster_rank_of(const llepd_cluster *cl, uint32_t node_id) {
    uint32_t n = llepd_cluster_nodes(cl);

    for (uint32_t r = 0; r < n; r++)
        if (llepd_cluster_node_at(cl, r) == node_id)
            return (int)r;
    return -1;
}

bool llepd_cluster_peer_up(llepd_cluster *cl, uint32_t node_id) {
    cluster_peer *p = cl && cl->enabled ? peer_by_id(cl, node_id) : NULL;

    return p && p->link && p->link->state == LINK_UP;
}

/* Queues chunks of the link's bulk data while little waits on the socket. */
static void pump(cluster_link *l) {
    LlepPb__ClusterData d = LLEP_PB__CLUSTER_DATA__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_DATA;
    f.cluster_data = &d;
    while (l->state == LINK_UP && !llepd_list_empty(&l->bulks) &&
           uv_stream_get_write_queue_size((uv_stream_t *)&l->tcp) < BULK_QUEUE) {
        bulk *b = llepd_container_of(l->bulks.next, bulk, node);
        uint64_t n = b->total - b->off < BULK_CHUNK ? b->total - b->off : BULK_CHUNK;
        d.layer = b->layer;
        d.step = b->step;
        d.kind = (LlepPb__ClusterDataKind)b->kind;
        d.index = b->index;
        d.offset = b->off;
        d.total = b->total;
        d.data.data = (uint8_t *)b->data + b->off;
        d.data.len = n;
        b->off += n;
        /* link_send may end the link, which frees the bulks still listed: a finished one is
         * taken off first and freed here, and nothing else of b is touched after. */
        bool done = b->off >= b->total;
        if (done)
            llepd_list_remove(&b->node);
        link_send(l, &f);
        if (done)
            bulk_free(b);
    }
}

int llepd_cluster_send_bulk(llepd_cluster *cl, uint32_t node_id, const char *layer,
                            uint64_t step, int kind, uint32_t index, const void *data,
                            uint64_t total, bool copy, const void *tag) {
    if (!llepd_cluster_peer_up(cl, node_id))
        return -ENOTCONN;
    if (total == 0)
        return 0;
    cluster_link *l = peer_by_id(cl, node_id)->link;
    bulk *b = calloc(1, sizeof(*b));
    if (!b || (copy && total > SIZE_MAX)) {
        free(b);
        return -ENOMEM;
    }
    if (copy) {
        b->owned = malloc((size_t)total);
        if (!b->owned) {
            free(b);
            return -ENOMEM;
        }
        memcpy(b->owned, data, (size_t)total);
    }
    snprintf(b->layer, sizeof(b->layer), "%s", layer);
    b->step = step;
    b->kind = kind;
    b->index = index;
    b->data = copy ? b->owned : data;
    b->total = total;
    b->tag = tag;
    llepd_list_append(&l->bulks, &b->node);
    pump(l);
    return 0;
}

void llepd_cluster_cancel_bulk(llepd_cluster *cl, const void *tag) {
    if (!cl)
        return;
    for (llepd_list *i = cl->links.next; i != &cl->links; i = i->next) {
        cluster_link *l = llepd_container_of(i, cluster_link, node);
        for (llepd_list *j = l->bulks.next, *next; j != &l->bulks; j = next) {
            next = j->next;
            bulk *b = llepd_container_of(j, bulk, node);
            if (b->tag == tag)
                bulk_free(b);
        }
    }
}

int llepd_cluster_send(llepd_cluster *cl, uint32_t node_id, const LlepPb__Frame *f) {
    if (!llepd_cluster_peer_up(cl, node_id))
        return -ENOTCONN;
    cluster_peer *p = peer_by_id(cl, node_id);
    link_send(p->link, f);
    return p->link && p->link->state == LINK_UP ? 0 : -ENOTCONN;
}

/* ---- llepctl peers ----------------------------------------------------------------------- */

void llepd_cluster_set_layer_hooks(llepd_cluster *cl, bool (*serves)(int body),
                                   void (*frame)(llepd_server *srv, uint32_t from_id,
                                                 const LlepPb__Frame *f),
                                   void (*peer_changed)(llepd_server *srv, uint32_t node_id,
                                                        bool up)) {
    if (!cl)
        return;
    cl->layer_serves = serves;
    cl->layer_frame = frame;
    cl->peer_changed = peer_changed;
}
