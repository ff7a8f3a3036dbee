/* Cluster membership: set-up and teardown, and the heartbeat tick that drives it (see
 * cluster.h for what it does, cluster-internal.h for the files it is made of). The top of
 * those files: it calls each of them, none of them calls it. */
#include "cluster-internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* ---- the heartbeat tick ------------------------------------------------------------------ */

/* Why a link that is neither up nor closing ends at the peer timeout. */
static const char *stuck_why(enum link_state state) {
    return state == LINK_CONNECTING ? "no connection within the peer timeout"
           : state == LINK_AUTH     ? "no authentication within the peer timeout"
                                    : "no hello within the peer timeout";
}

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
            llepd_link_close_handle(l); /* the other end does not read our last message */
        else if (l->state != LINK_UP)
            llepd_link_end(l, stuck_why(l->state), false);
    }
    for (uint32_t i = 0; i < cl->npeers; i++) {
        cluster_peer *p = &cl->peers[i];

        if (p->link && p->link->state == LINK_UP) {
            if (now - p->last_seen_ns > cl->timeout_ns) {
                snprintf(msg, sizeof(msg), "nothing heard for %" PRIu64 " ms (peer timeout %"
                         PRIu64 " ms)", (now - p->last_seen_ns) / 1000000u,
                         cl->timeout_ns / 1000000u);
                llepd_link_end(p->link, msg, false);
            } else {
                llepd_link_send_heartbeat(p->link, now);
            }
        }
        if (p->state == LLEP_PB__PEER_STATE__PEER_STATE_CONNECTING &&
            now - p->state_since_ns > cl->timeout_ns) {
            log_warning("peer node %u (%s) down: not up within the peer timeout%s%s",
                        p->addr.id, p->address, p->last_error[0] ? ": " : "", p->last_error);
            llepd_peer_set_state(p, LLEP_PB__PEER_STATE__PEER_STATE_DOWN);
        }
        if (p->outgoing && !p->link && now >= p->next_dial_ns)
            llepd_peer_dial(cl, p);
    }
}

static void on_tick(uv_timer_t *t) {
    tick(t->data);
}

/* ---- set-up and teardown ----------------------------------------------------------------- */

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
    srv->hooks.peers_count = llepd_peers_count;
    srv->hooks.peers_fill = llepd_peers_fill;
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
    r = llepd_peers_init(cl, cfg, err, errlen);
    if (r < 0)
        return r;
    r = llepd_peers_listen(cl, listen_addr, err, errlen);
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
        llepd_link_close_handle(l);
    }
}

void llepd_cluster_fini(llepd_cluster *cl) {
    if (!cl)
        return;
    /* Links whose handles never finished closing (an error path that did not run the loop)
     * are freed here; after a normal stop the list is empty. */
    while (!llepd_list_empty(&cl->links))
        llepd_link_free(llepd_container_of(cl->links.next, cluster_link, node));
    explicit_bzero(&cl->secret, sizeof(cl->secret));
    free(cl->peers);
    free(cl);
}

/* ---- what cluster layers register -------------------------------------------------------- */

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

void **llepd_cluster_comms(llepd_cluster *cl) {
    return &cl->comms;
}
