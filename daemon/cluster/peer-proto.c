/* Peer links: what arrives on a link. Frames are read and decoded here and go through one
 * dispatch, so a peer never reaches the unix socket's handlers: first the hello (PeerHello /
 * PeerHelloReply: protocol version, node ids, the peers list's hash) and, with a peer secret,
 * the authentication hand-off (peer-auth.h); then heartbeats both ways, and the frames the
 * cluster layers serve, handed to them through their hook. A frame that does not belong gets
 * an ErrorReply and the link ends (peer-link.c). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-internal.h"
#include "log.h"

/* ---- the hello and its authentication ---------------------------------------------------- */

static void link_up(cluster_link *l, cluster_peer *p) {
    l->state = LINK_UP;
    l->peer = p;
    p->link = l;
    llepd_peer_link_up(l->cl, p, l->outgoing, l->remote);
}

void llepd_link_send_hello(cluster_link *l) {
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
    llepd_link_send(l, &f);
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
    p = llepd_peer_by_id(cl, h->node_id);
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
        llepd_link_send(l, &out);
        llepd_link_end(l, msg, true);
        return;
    }
    llepd_link_send(l, &out);
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
        llepd_link_end(p->link, why, false);
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

/* Whether node `other` sent the right MAC for this link's nonces (as the dialling node when
 * dialler is set, else as the answering one); else a sentence naming it in msg. */
static bool mac_ok(cluster_link *l, bool dialler, uint32_t other, const ProtobufCBinaryData *mac,
                   char *msg, size_t len) {
    llepd_cluster *cl = l->cl;
    uint32_t dial_id = dialler ? other : cl->node_id, reply_id = dialler ? cl->node_id : other;

    if (llep__peer_mac_ok(&cl->secret, dialler, l->nonce_dial, l->nonce_reply, dial_id,
                          reply_id, mac->data, mac->len))
        return true;
    snprintf(msg, len, "node %u failed authentication: its HMAC does not match (a different "
             "peer secret?)", other);
    return false;
}

/* LINK_AUTH: the dialling node's PeerAuth. */
static void handle_peer_auth(cluster_link *l, const LlepPb__Frame *f) {
    cluster_peer *p = l->pending;
    const LlepPb__PeerAuth *a = f->peer_auth;
    char msg[MSG_MAX];

    if (!mac_ok(l, true, p->addr.id, &a->mac, msg, sizeof(msg))) {
        llepd_link_fail(l, f->id, -EACCES, msg);
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
    return mac_ok(l, false, id, &h->mac, msg, len);
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
    llepd_link_send(l, &f);
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
    llepd_link_end(l, msg, false);
}

/* ---- heartbeats and dispatch ------------------------------------------------------------- */

void llepd_link_send_heartbeat(cluster_link *l, uint64_t now) {
    LlepPb__Heartbeat hb = LLEP_PB__HEARTBEAT__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    hb.seq = ++l->peer->hb_seq;
    hb.sent_ns = now;
    f.id = hb.seq;
    f.body_case = LLEP_PB__FRAME__BODY_HEARTBEAT;
    f.heartbeat = &hb;
    llepd_link_send(l, &f);
}

static void handle_heartbeat(cluster_link *l, const LlepPb__Frame *f) {
    LlepPb__HeartbeatReply ack = LLEP_PB__HEARTBEAT_REPLY__INIT;
    LlepPb__Frame out = LLEP_PB__FRAME__INIT;

    ack.seq = f->heartbeat->seq;
    ack.sent_ns = f->heartbeat->sent_ns;
    out.id = f->id;
    out.body_case = LLEP_PB__FRAME__BODY_HEARTBEAT_REPLY;
    out.heartbeat_reply = &ack;
    llepd_link_send(l, &out);
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
        llepd_link_end(l, msg, false);
        return;
    }
    if (l->state == LINK_AUTH) {
        if (body != LLEP_PB__FRAME__BODY_PEER_AUTH) {
            snprintf(msg, sizeof(msg), "after PeerHelloReply a peer link must send peer_auth, "
                     "got %s", llep__frame_body_name(body));
            llepd_link_fail(l, f->id, -EACCES, msg);
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
            llepd_link_fail(l, f->id, -EPROTO, msg);
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
        llepd_link_fail(l, f->id, -EPROTO, msg);
    }
}

void llepd_link_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    if (suggested > LLEP_FRAME_READ_MAX)
        suggested = LLEP_FRAME_READ_MAX;
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

void llepd_link_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    cluster_link *l = stream->data;
    LlepPb__Frame *f;
    char msg[MSG_MAX];
    int r = 0;

    if (nread < 0) {
        free(buf->base);
        llepd_link_end(l, nread == UV_EOF ? "the peer closed the link" : uv_strerror((int)nread),
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
        llepd_link_fail(l, 0, -EPROTO, msg);
    }
}
