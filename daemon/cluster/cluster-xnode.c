/* A cluster layer's communicator between nodes (cluster-layer.h, xnode.h): bootstrap over the
 * peer links, polling, failures.
 *
 * The origin makes the transport's id and sends it to every node in a ClusterComm with a new
 * epoch; each node (the origin too) joins as its rank. Nothing waits for the communicator: the
 * layer's steps go over the peer links until every node reports the same epoch up in its plan
 * hash. Whatever fails (joining, an exchange, a node going down, a step over it) closes it on
 * every node; the origin then starts another epoch after a pause that doubles up to a limit
 * (and at once when a node comes back), so a transport that cannot work here costs one failed
 * attempt per pause, never a step. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-layer.h"
#include "log.h"

/* How long joining may take (NCCL connects every rank) before this node gives up. */
#define OPEN_DEADLINE_MS 60000u
#define BACKOFF_MIN_MS 1000u
#define BACKOFF_MAX_MS 60000u
/* Polling while opening or exchanging, besides the transport's notify. */
#define POLL_MS 1u

static const llep_xnode_ops *pick_ops(const llepd_server *srv) {
    const llep_xnode_ops *x = srv->backend_ops->xnode;
    const char *hook = getenv("LLEPD_TEST_XNODE");

    if (srv->cfg.cluster_communicator_off)
        return NULL;

    /* A same-host transport (the CPU backend's) only under the test hook: real nodes are
     * other hosts. */
    if (x && (x->flags & LLEP_XNODE_SAME_HOST) && !(hook && hook[0] == '1'))
        return NULL;
    return x;
}

static void handle_closed(uv_handle_t *h) {
    free(h);
}

static void on_poll(llepd_clayer *c);

static void on_timer(uv_timer_t *t) {
    on_poll(t->data);
}

static void on_async(uv_async_t *a) {
    on_poll(a->data);
}

/* From the transport's threads. */
static void notify(void *arg) {
    llepd_clayer *c = arg;

    uv_async_send(c->xn.async);
}

int llepd_cxnode_init(llepd_clayer *c) {
    llepd_cxnode *xn = &c->xn;
    uv_loop_t *loop = c->layer->srv->loop;

    xn->ops = pick_ops(c->layer->srv);
    if (!xn->ops)
        return 0;
    const char *drop = getenv("LLEPD_TEST_XNODE_DROP");
    xn->drop_after = drop ? strtoull(drop, NULL, 10) : 0;
    xn->backoff_ms = BACKOFF_MIN_MS;
    xn->timer = malloc(sizeof(*xn->timer));
    xn->async = malloc(sizeof(*xn->async));
    if (!xn->timer || !xn->async || uv_timer_init(loop, xn->timer) < 0) {
        free(xn->timer);
        free(xn->async);
        xn->timer = NULL;
        xn->async = NULL;
        return -ENOMEM;
    }
    if (uv_async_init(loop, xn->async, on_async) < 0) {
        uv_close((uv_handle_t *)xn->timer, handle_closed);
        free(xn->async);
        xn->timer = NULL;
        xn->async = NULL;
        return -ENOMEM;
    }
    xn->timer->data = c;
    xn->async->data = c;
    return 0;
}

static void close_x(llepd_cxnode *xn) {
    if (xn->x)
        xn->ops->close(xn->x);
    xn->x = NULL;
    xn->up = false;
    xn->pending = false;
    if (xn->timer)
        uv_timer_stop(xn->timer);
}

void llepd_cxnode_fini(llepd_clayer *c) {
    llepd_cxnode *xn = &c->xn;

    close_x(xn); /* first: no notify may come after the async handle closes */
    if (xn->timer)
        uv_close((uv_handle_t *)xn->timer, handle_closed);
    if (xn->async)
        uv_close((uv_handle_t *)xn->async, handle_closed);
    xn->timer = NULL;
    xn->async = NULL;
    xn->ops = NULL;
}

static void send_fail(llepd_clayer *c, uint64_t epoch, const char *why) {
    LlepPb__ClusterCommFail m = LLEP_PB__CLUSTER_COMM_FAIL__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    m.layer = c->layer->name;
    m.epoch = epoch;
    m.message = (char *)why;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_COMM_FAIL;
    f.cluster_comm_fail = &m;
    llepd_clayer_send_all(c, &f);
}

void llepd_cxnode_close(llepd_clayer *c, const char *why, bool fast) {
    llepd_cxnode *xn = &c->xn;

    if (!xn->ops)
        return;
    if (xn->x || xn->pending) {
        log_info("cluster layer '%s': %s communicator (epoch %" PRIu64 ") closed: %s",
                 c->layer->name, xn->ops->name, xn->epoch, why);
        snprintf(xn->why, sizeof(xn->why), "%s", why);
    }
    close_x(xn);
    if (c->rank != c->origin)
        return;
    if (fast) {
        xn->backoff_ms = BACKOFF_MIN_MS;
        xn->retry_ns = 0;
        return;
    }
    xn->retry_ns = llepd_now_ns() + (uint64_t)xn->backoff_ms * 1000000u;
    xn->backoff_ms = xn->backoff_ms >= BACKOFF_MAX_MS / 2 ? BACKOFF_MAX_MS : 2 * xn->backoff_ms;
}

/* This node cannot join or keep epoch's communicator: every node closes it. */
static void fail_comm(llepd_clayer *c, const char *why) {
    uint64_t epoch = c->xn.epoch;
    char msg[200];

    log_warning("cluster layer '%s': %s communicator (epoch %" PRIu64 "): %s", c->layer->name,
                c->xn.ops->name, epoch, why);
    snprintf(msg, sizeof(msg), "node %u: %s", c->ids[c->rank], why);
    send_fail(c, epoch, msg);
    llepd_cxnode_close(c, msg, false);
    snprintf(c->xn.why, sizeof(c->xn.why), "%s", msg); /* also when nothing was open yet */
}

static int join(llepd_clayer *c, const uint8_t *id) {
    llepd_cxnode *xn = &c->xn;
    llep_backend *be = llep__engine_backend(c->layer->engine);
    char err[256] = "";

    int r = xn->ops->open(be, 0, id, c->nodes, c->rank, notify, c, &xn->x, err, sizeof(err));
    if (r < 0) {
        xn->x = NULL;
        fail_comm(c, err[0] ? err : "cannot join the communicator");
        return r;
    }
    xn->opened_ns = llepd_now_ns();
    uv_timer_start(xn->timer, on_timer, POLL_MS, POLL_MS);
    return 0;
}

static bool all_peers_up(llepd_clayer *c) {
    for (uint32_t r = 0; r < c->nodes; r++)
        if (r != c->rank && !llepd_cluster_peer_up(c->layer->srv->cluster, c->ids[r]))
            return false;
    return true;
}

void llepd_cxnode_maybe_start(llepd_clayer *c) {
    llepd_cxnode *xn = &c->xn;
    uint8_t id[LLEP_XNODE_ID_BYTES];
    LlepPb__ClusterComm m = LLEP_PB__CLUSTER_COMM__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    if (!xn->ops || xn->x || c->rank != c->origin || !c->part || c->creator || c->orphaned ||
        c->st || llepd_now_ns() < xn->retry_ns || !all_peers_up(c))
        return;
    int r = xn->ops->unique_id(llep__engine_backend(c->layer->engine), id);
    xn->epoch++;
    if (r < 0) {
        fail_comm(c, "cannot make a communicator id");
        return;
    }
    m.layer = c->layer->name;
    m.uid = c->uid;
    m.epoch = xn->epoch;
    m.transport = (char *)xn->ops->name;
    m.id.data = id;
    m.id.len = sizeof(id);
    m.nranks = c->nodes;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_COMM;
    f.cluster_comm = &m;
    llepd_clayer_send_all(c, &f);
    log_info("cluster layer '%s': starting the %s communicator, epoch %" PRIu64 ", %u nodes",
             c->layer->name, xn->ops->name, xn->epoch, c->nodes);
    (void)join(c, id);
}

void llepd_cxnode_engine_ready(llepd_clayer *c) {
    if (c->xn.pending && c->part) {
        c->xn.pending = false;
        (void)join(c, c->xn.pending_id);
    }
}

uint64_t llepd_cxnode_epoch(llepd_clayer *c, bool *up) {
    *up = c->xn.x && c->xn.up;
    return c->xn.x || c->xn.pending ? c->xn.epoch : 0;
}

int llepd_cxnode_exchange(llepd_clayer *c, const llep_xnode_op *ops, uint32_t n, char *why,
                          size_t whylen) {
    llepd_cxnode *xn = &c->xn;

    if (!xn->x || !xn->up) {
        snprintf(why, whylen, "the communicator is not up");
        return -ENOTCONN;
    }
    int r = xn->ops->exchange(xn->x, ops, n);
    if (r < 0) {
        snprintf(why, whylen, "%s", xn->ops->error(xn->x));
        return r;
    }
    uv_timer_start(xn->timer, on_timer, POLL_MS, POLL_MS);
    return 0;
}

static bool exchanging(const llepd_clayer *c) {
    return c->st && c->st->xnode &&
           (c->st->phase == CSTEP_XROWS || c->st->phase == CSTEP_XRESULTS);
}

static void on_poll(llepd_clayer *c) {
    llepd_cxnode *xn = &c->xn;
    char why[256];

    if (!xn->x)
        return;
    int r = xn->ops->poll(xn->x);
    if (r == -EINPROGRESS) {
        if (!xn->up && llepd_now_ns() - xn->opened_ns > OPEN_DEADLINE_MS * 1000000ull) {
            snprintf(why, sizeof(why), "not every node joined within %u ms", OPEN_DEADLINE_MS);
            fail_comm(c, why);
        }
        return;
    }
    if (r < 0) {
        snprintf(why, sizeof(why), "%s", xn->ops->error(xn->x));
        if (exchanging(c))
            c->xn.exchanged(c, r, why); /* fails the step, which closes the comm */
        else
            fail_comm(c, why);
        return;
    }
    uv_timer_stop(xn->timer);
    if (!xn->up) {
        xn->up = true;
        xn->backoff_ms = BACKOFF_MIN_MS;
        xn->why[0] = '\0';
        log_info("cluster layer '%s': %s communicator up (epoch %" PRIu64 ", rank %u of %u)",
                 c->layer->name, xn->ops->name, xn->epoch, c->rank, c->nodes);
        return;
    }
    if (exchanging(c))
        c->xn.exchanged(c, 0, NULL);
}

/* ---- messages ---------------------------------------------------------------------------- */

static void on_comm(llepd_clayer *c, uint32_t from, const LlepPb__ClusterComm *m) {
    llepd_cxnode *xn = &c->xn;
    char why[200];

    if (from != c->origin || m->uid != c->uid || m->epoch <= xn->epoch ||
        m->nranks != c->nodes)
        return; /* stale, or not from this layer's origin */
    /* The origin has given the old one up: a step over it cannot finish. */
    if (exchanging(c))
        c->xn.exchanged(c, -ECONNRESET, "the origin started a new communicator");
    if (xn->x || xn->pending)
        llepd_cxnode_close(c, "the origin started a new communicator", false);
    xn->epoch = m->epoch;
    if (!xn->ops || strcmp(m->transport ? m->transport : "", xn->ops->name) != 0 ||
        m->id.len != LLEP_XNODE_ID_BYTES) {
        snprintf(why, sizeof(why), "cannot join a %s communicator (this node has %s)",
                 m->transport ? m->transport : "?", xn->ops ? xn->ops->name : "none");
        log_warning("cluster layer '%s': %s", c->layer->name, why);
        char msg[256];
        snprintf(msg, sizeof(msg), "node %u: %s", c->ids[c->rank], why);
        send_fail(c, m->epoch, msg); /* every node: the others wait for this rank */
        return;
    }
    if (!c->part) { /* the share is still loading */
        memcpy(xn->pending_id, m->id.data, LLEP_XNODE_ID_BYTES);
        xn->pending = true;
        return;
    }
    (void)join(c, m->id.data);
}

static void on_comm_fail(llepd_clayer *c, const LlepPb__ClusterCommFail *m) {
    if (!c->xn.ops || m->epoch != c->xn.epoch || (!c->xn.x && !c->xn.pending))
        return; /* not this node's communicator, or closed already */
    log_warning("cluster layer '%s': communicator epoch %" PRIu64 " failed: %s",
                c->layer->name, m->epoch, m->message ? m->message : "?");
    if (exchanging(c))
        c->xn.exchanged(c, -ECONNRESET, m->message ? m->message : "a node failed");
    else
        llepd_cxnode_close(c, m->message ? m->message : "a node failed", false);
}

void llepd_cxnode_handle(llepd_clayer *c, uint32_t from, const LlepPb__Frame *f) {
    if (f->body_case == LLEP_PB__FRAME__BODY_CLUSTER_COMM)
        on_comm(c, from, f->cluster_comm);
    else if (f->body_case == LLEP_PB__FRAME__BODY_CLUSTER_COMM_FAIL)
        on_comm_fail(c, f->cluster_comm_fail);
}

const char *llepd_cxnode_describe(const llepd_clayer *c, char *buf, size_t len) {
    const llepd_cxnode *xn = &c->xn;

    if (!xn->ops && c->layer->srv->cfg.cluster_communicator_off)
        snprintf(buf, len, "peer links (cluster-communicator off)");
    else if (!xn->ops)
        snprintf(buf, len, "peer links");
    else if (xn->x && xn->up)
        snprintf(buf, len, "%s (up, epoch %" PRIu64 ")", xn->ops->name, xn->epoch);
    else if (xn->x || xn->pending)
        snprintf(buf, len, "peer links (%s epoch %" PRIu64 " opening)", xn->ops->name,
                 xn->epoch);
    else if (xn->why[0])
        snprintf(buf, len, "peer links (%s: %s)", xn->ops->name, xn->why);
    else
        snprintf(buf, len, "peer links (%s not started)", xn->ops->name);
    return buf;
}
