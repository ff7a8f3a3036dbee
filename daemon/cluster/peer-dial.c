/* Peer links: making them. This node listens on its own entry's address (or --listen-peers)
 * and accepts links, a few at a time before they have said hello; it dials the peers with
 * higher ids (for each pair the lower id dials, so a pair has exactly one link). A connected
 * link starts reading (peer-proto.c) and, when dialled, says hello. */
#include <stdio.h>
#include <string.h>

#include "cluster-internal.h"
#include "log.h"

/* Connections that have not said hello yet; more than this at once are closed unread. */
#define MAX_UNIDENTIFIED 16u

/* ---- dialling ---------------------------------------------------------------------------- */

static void on_connect(uv_connect_t *req, int status) {
    cluster_link *l = req->data;
    char msg[MSG_MAX];

    if (l->state == LINK_CLOSING)
        return;
    if (status < 0) {
        snprintf(msg, sizeof(msg), "dialling %s: %s", l->remote, uv_strerror(status));
        llepd_link_end(l, msg, false);
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
        llepd_link_end(l, msg, false);
        return;
    }
    l->state = LINK_HELLO;
    uv_tcp_nodelay(&l->tcp, 1);
    int r = uv_read_start((uv_stream_t *)&l->tcp, llepd_link_on_alloc, llepd_link_on_read);
    if (r < 0) {
        llepd_link_end(l, uv_strerror(r), false);
        return;
    }
    llepd_link_send_hello(l);
}

void llepd_peer_dial(llepd_cluster *cl, cluster_peer *p) {
    cluster_link *l = llepd_link_new(cl, true);

    if (!l) {
        snprintf(p->last_error, sizeof(p->last_error), "out of memory");
        llepd_peer_schedule_dial(cl, p, false);
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
        llepd_link_end(l, msg, false);
    }
}

/* ---- listening and accepting ------------------------------------------------------------- */

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
    cluster_link *l = llepd_link_new(cl, false);
    if (!l)
        return; /* the connection stays in the backlog; the next one tries again */
    l->state = LINK_HELLO;
    if (uv_accept(listener, (uv_stream_t *)&l->tcp) < 0) {
        llepd_link_end(l, "accept failed", false);
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
        llepd_link_end(l, "too many links", false);
        return;
    }
    uv_tcp_nodelay(&l->tcp, 1);
    if (uv_read_start((uv_stream_t *)&l->tcp, llepd_link_on_alloc, llepd_link_on_read) < 0)
        llepd_link_end(l, "cannot read", false);
}

int llepd_peers_listen(llepd_cluster *cl, const llep_peer_addr *a, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    int r = llepd_peer_sockaddr(a, &ss);

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
