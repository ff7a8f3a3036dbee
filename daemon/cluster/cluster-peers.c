/* Cluster membership: the node set of --peers (every node but this one, with its address and
 * the state of its link), the nodes' ranks for cluster layers, peers coming up and going down,
 * the dial backoff, and what `llepctl peers` shows. The bottom of the cluster files
 * (cluster-internal.h): a peer's link is only looked at here, never driven; a peer going up or
 * down reaches the cluster layers through the hook they registered. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-internal.h"
#include "log.h"

/* ---- the node set ------------------------------------------------------------------------ */

int llepd_peer_sockaddr(const llep_peer_addr *a, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof(*ss));
    if (a->ipv6)
        return uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *)ss);
    return uv_ip4_addr(a->host, a->port, (struct sockaddr_in *)ss);
}

int llepd_peers_init(llepd_cluster *cl, const llep_config *cfg, char *err, size_t errlen) {
    int r;

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
        r = llepd_peer_sockaddr(&p->addr, &p->sa);
        if (r < 0) {
            snprintf(err, errlen, "peer node %u: bad address %s", p->addr.id, p->address);
            return r;
        }
        p->outgoing = cl->node_id < p->addr.id;
        p->state = LLEP_PB__PEER_STATE__PEER_STATE_CONNECTING;
        p->state_since_ns = now;
    }
    return 0;
}

cluster_peer *llepd_peer_by_id(llepd_cluster *cl, uint32_t id) {
    for (uint32_t i = 0; i < cl->npeers; i++)
        if (cl->peers[i].addr.id == id)
            return &cl->peers[i];
    return NULL;
}

/* ---- ranks ------------------------------------------------------------------------------- */

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
    cluster_peer *p = cl && cl->enabled ? llepd_peer_by_id(cl, node_id) : NULL;

    return p && p->link && p->link->state == LINK_UP;
}

/* ---- peers up and down ------------------------------------------------------------------- */

void llepd_peer_set_state(cluster_peer *p, LlepPb__PeerState state) {
    if (p->state == state)
        return;
    p->state = state;
    p->state_since_ns = llepd_now_ns();
}

/* The next dial after a failed or lost link: soon after a link that was up, then doubling
 * up to the peer timeout, so a node that comes back is found within about one timeout. */
void llepd_peer_schedule_dial(llepd_cluster *cl, cluster_peer *p, bool was_up) {
    uint32_t first = (uint32_t)(cl->heartbeat_ns / 1000000u);
    uint32_t cap = (uint32_t)(cl->timeout_ns / 1000000u);

    if (was_up || p->backoff_ms == 0)
        p->backoff_ms = first;
    p->next_dial_ns = llepd_now_ns() + (uint64_t)p->backoff_ms * 1000000u;
    p->backoff_ms = p->backoff_ms > cap / 2 ? cap : 2 * p->backoff_ms;
}

void llepd_peer_link_up(llepd_cluster *cl, cluster_peer *p, bool dialled, const char *remote) {
    p->links_up++;
    p->backoff_ms = 0;
    p->last_seen_ns = llepd_now_ns();
    p->seen = true;
    p->last_error[0] = '\0';
    llepd_peer_set_state(p, LLEP_PB__PEER_STATE__PEER_STATE_UP);
    log_notice("peer node %u (%s) up (%s %s)", p->addr.id, p->address,
               dialled ? "dialled" : "incoming from", remote);
    if (cl->peer_changed)
        cl->peer_changed(cl->srv, p->addr.id, true);
}

void llepd_peer_link_gone(llepd_cluster *cl, cluster_peer *p, const char *why, bool was_up) {
    p->link = NULL;
    snprintf(p->last_error, sizeof(p->last_error), "%s", why);
    if (was_up) {
        log_warning("peer node %u (%s) down: %s", p->addr.id, p->address, why);
        llepd_peer_set_state(p, LLEP_PB__PEER_STATE__PEER_STATE_DOWN);
        if (!cl->closed)
            if (cl->peer_changed)
                cl->peer_changed(cl->srv, p->addr.id, false);
    } else {
        log_info("peer node %u (%s): link not up: %s", p->addr.id, p->address, why);
    }
    if (p->outgoing && !cl->closed)
        llepd_peer_schedule_dial(cl, p, was_up);
}

/* ---- llepctl peers ----------------------------------------------------------------------- */

uint32_t llepd_peers_count(const llepd_server *srv) {
    const llepd_cluster *cl = srv->cluster;
    return cl && cl->enabled ? cl->npeers : 0;
}

/* `llepctl peers` (handlers-ctl.c): this node's settings and every peer's link. */
void llepd_peers_fill(const llepd_server *srv, LlepPb__PeersReply *pr, LlepPb__PeerInfo *info) {
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
