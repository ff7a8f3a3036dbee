/* The communicator between nodes of a set of nodes (cluster-layer.h, xnode.h), shared by every
 * cluster layer on the set: bootstrap over the peer links, polling, the order of exchanges,
 * failures.
 *
 * Ownership. One llepd_ccomm per sorted set of node ids, kept in the cluster's list
 * (llepd_cluster_comms); every cluster layer on the set holds a reference (llepd_cxnode_init)
 * and the last one's fini closes and frees it. One transport instance, so NCCL's buffers and
 * proxy threads are paid once per set, not once per layer.
 *
 * Bootstrap. The set's coordinator is its lowest node id (rank 0): every node knows it without
 * a message, and it outlives any one layer (the origin of the first layer may release it or
 * go while the set's other layers go on). It makes the transport's id and sends it to every
 * node of the set in a ClusterComm with a new epoch; each node (the coordinator too) joins as
 * its rank. Nothing waits for the communicator: steps go over the peer links until every node
 * reports the same epoch up in its plan hash. Whatever fails (joining, an exchange, a node
 * going down, a step over it) closes it on every node for every layer on the set; the
 * coordinator then starts another epoch after a pause that doubles up to a limit (and at once
 * when a node comes back), so a transport that cannot work here costs one failed attempt per
 * pause, never a step.
 *
 * Order. The transports match a peer's sends and receives in order, one exchange at a time,
 * so every node must issue the exchanges of all the set's layers in one order. The
 * coordinator's plan hash gives each step that may go over the communicator a ticket t
 * (rows, and t + 1 for its results) from one counter per epoch; as the peer link from the
 * coordinator delivers in order, every node learns the tickets in ascending order, queues them
 * as they come (announce) and issues the exchange of the lowest ticket it holds only when the
 * step that owns it asks for it, never a later one first. A step that goes over the peer links
 * after all skips its tickets on every node alike (the decision comes from the same hashes);
 * a ticket that a node drops for any other reason (its step failed) closes the communicator,
 * as another node may already have issued it. Two layers stepping at once thus never
 * cross-match (each exchange is the same ticket on every node) nor deadlock (ticket t + 2
 * waits only for exchanges whose steps have every input they need: t's rows, or t + 1's
 * results once t's compute is done, which waits for no exchange). */
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
/* The coordinator's rank in the set: its lowest node id. */
#define COORDINATOR 0u

enum ticket_state { T_WAIT, T_QUEUED, T_FLIGHT, T_DONE };

/* An exchange ticket this node holds for the current epoch, in ascending order. */
typedef struct ticket {
    uint64_t t;
    llepd_clayer *c;                /* whose step; NULL once done */
    enum ticket_state state;
    llep_xnode_op *ops;             /* T_QUEUED: the exchange to issue */
    uint32_t n;
} ticket;

struct llepd_ccomm {
    llepd_server *srv;
    llepd_ccomm *next;              /* in llepd_cluster_comms */
    uint32_t nodes, rank;           /* this node's rank in the set */
    uint32_t *ids;                  /* [nodes] ascending */
    char *set;                      /* "0,1,2" */
    const llep_xnode_ops *ops;      /* NULL: the set's data always goes over the peer links */
    llep_xnode *x;                  /* opening or up; NULL: none */
    uint64_t epoch;                 /* of x; the highest seen when x is NULL */
    bool up;
    uint64_t opened_ns;             /* when x began opening (its deadline) */
    uint64_t retry_ns;              /* coordinator: no new communicator before this */
    uint32_t backoff_ms;
    uv_timer_t *timer;              /* polls while opening or exchanging */
    uv_async_t *async;              /* the transport's notify */
    char why[200];                  /* why none is up, for llepctl; "" when it never failed */
    llepd_clayer **members;         /* the layers holding it */
    uint32_t nmembers, cap_members;
    uint64_t next_ticket;           /* coordinator: the next to give out in this epoch */
    ticket *q;                      /* the tickets held, ascending */
    uint32_t nq, cap_q;
    uint32_t holds;                 /* calls up in progress: freeing waits */
    bool dead;                      /* no member left: freed when the last hold goes */
    bool pumping, again;
    uint64_t opens;                 /* transports opened here (for the log) */
};

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

static void on_poll(llepd_ccomm *m);

static void on_timer(uv_timer_t *t) {
    on_poll(t->data);
}

static void on_async(uv_async_t *a) {
    on_poll(a->data);
}

/* From the transport's threads. */
static void notify(void *arg) {
    llepd_ccomm *m = arg;

    uv_async_send(m->async);
}

/* ---- the tickets ------------------------------------------------------------------------- */

static void tickets_clear(llepd_ccomm *m) {
    for (uint32_t i = 0; i < m->nq; i++)
        free(m->q[i].ops);
    m->nq = 0;
    m->next_ticket = 1;
}

static void ticket_done(ticket *k) {
    free(k->ops);
    k->ops = NULL;
    k->n = 0;
    k->c = NULL;
    k->state = T_DONE;
}

static int ticket_add(llepd_ccomm *m, uint64_t t, llepd_clayer *c) {
    if (m->nq > 0 && m->q[m->nq - 1].t >= t)
        return -EPROTO; /* not ascending: not a ticket of this epoch's counter */
    if (m->nq == m->cap_q) {
        uint32_t cap = m->cap_q ? 2 * m->cap_q : 8;
        ticket *v = realloc(m->q, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        m->q = v;
        m->cap_q = cap;
    }
    m->q[m->nq++] = (ticket){ .t = t, .c = c, .state = T_WAIT };
    return 0;
}

static ticket *ticket_of(llepd_ccomm *m, const llepd_clayer *c, uint64_t t) {
    for (uint32_t i = 0; i < m->nq; i++)
        if (m->q[i].t == t && m->q[i].c == c)
            return &m->q[i];
    return NULL;
}

/* Whether c holds a ticket not exchanged yet. */
static bool holds_live(const llepd_ccomm *m, const llepd_clayer *c) {
    for (uint32_t i = 0; i < m->nq; i++)
        if (m->q[i].c == c && m->q[i].state != T_DONE)
            return true;
    return false;
}

static bool is_member(const llepd_ccomm *m, const llepd_clayer *c) {
    for (uint32_t i = 0; i < m->nmembers; i++)
        if (m->members[i] == c)
            return true;
    return false;
}

/* ---- the object -------------------------------------------------------------------------- */

static void comm_free(llepd_ccomm *m);

static void hold(llepd_ccomm *m) {
    m->holds++;
}

static void release(llepd_ccomm *m) {
    if (--m->holds == 0 && m->dead)
        comm_free(m);
}

static void close_x(llepd_ccomm *m) {
    if (m->x)
        m->ops->close(m->x);
    m->x = NULL;
    m->up = false;
    if (m->timer)
        uv_timer_stop(m->timer);
    tickets_clear(m);
}

/* Calls c->xn.exchanged(r, why) for each layer in v that is still a member. */
static void tell(llepd_ccomm *m, llepd_clayer **v, uint32_t n, int r, const char *why) {
    hold(m);
    for (uint32_t i = 0; i < n; i++)
        if (is_member(m, v[i]) && v[i]->xn.exchanged)
            v[i]->xn.exchanged(v[i], r, why);
    release(m);
}

/* Closes the communicator for every layer on the set; the steps that wait for an exchange in
 * it (but except's) fail with why. */
static void comm_close(llepd_ccomm *m, const char *why, bool fast, const llepd_clayer *except) {
    llepd_clayer *few[16], **waiting = few;
    uint32_t nw = 0, cap = 16;
    bool was_open = m->x != NULL;
    char msg[200];

    if (!m->ops)
        return;
    snprintf(msg, sizeof(msg), "%s", why); /* why may be m->why */
    if (m->nq > cap) {
        llepd_clayer **v = malloc(m->nq * sizeof(*v));
        if (v) {
            waiting = v;
            cap = m->nq;
        }
    }
    for (uint32_t i = 0; i < m->nq && nw < cap; i++) {
        llepd_clayer *c = m->q[i].c;
        bool dup = false;
        for (uint32_t j = 0; j < nw; j++)
            dup = dup || waiting[j] == c;
        if (c && c != except && !dup &&
            (m->q[i].state == T_QUEUED || m->q[i].state == T_FLIGHT))
            waiting[nw++] = c;
    }
    if (was_open) {
        log_info("nodes %s: %s communicator (epoch %" PRIu64 ") closed: %s", m->set,
                 m->ops->name, m->epoch, msg);
        snprintf(m->why, sizeof(m->why), "%s", msg);
    }
    close_x(m);
    if (m->rank == COORDINATOR) {
        if (fast) {
            m->backoff_ms = BACKOFF_MIN_MS;
            m->retry_ns = 0;
        } else if (was_open) {
            m->retry_ns = llepd_now_ns() + (uint64_t)m->backoff_ms * 1000000u;
            m->backoff_ms = m->backoff_ms >= BACKOFF_MAX_MS / 2 ? BACKOFF_MAX_MS
                                                                : 2 * m->backoff_ms;
        }
    }
    tell(m, waiting, nw, -ECONNRESET, msg);
    if (waiting != few)
        free(waiting);
}

static void comm_free(llepd_ccomm *m) {
    void **head = llepd_cluster_comms(m->srv->cluster);

    for (llepd_ccomm **p = (llepd_ccomm **)head; *p; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            break;
        }
    close_x(m); /* first: no notify may come after the async handle closes */
    if (m->timer)
        uv_close((uv_handle_t *)m->timer, handle_closed);
    if (m->async)
        uv_close((uv_handle_t *)m->async, handle_closed);
    free(m->q);
    free(m->members);
    free(m->ids);
    free(m->set);
    free(m);
}

static llepd_ccomm *comm_find(llepd_server *srv, const uint32_t *ids, uint32_t n) {
    for (llepd_ccomm *m = *llepd_cluster_comms(srv->cluster); m; m = m->next)
        if (m->nodes == n && memcmp(m->ids, ids, n * sizeof(*ids)) == 0)
            return m;
    return NULL;
}

static llepd_ccomm *comm_new(llepd_server *srv, const uint32_t *ids, uint32_t n) {
    llepd_ccomm *m = calloc(1, sizeof(*m));
    uint32_t me = llepd_cluster_node_id(srv->cluster);

    if (!m)
        return NULL;
    m->srv = srv;
    m->nodes = n;
    m->ids = malloc(n * sizeof(*ids));
    m->set = malloc((size_t)n * 11 + 1);
    m->timer = malloc(sizeof(*m->timer));
    m->async = malloc(sizeof(*m->async));
    if (!m->ids || !m->set || !m->timer || !m->async) {
        free(m->ids);
        free(m->set);
        free(m->timer);
        free(m->async);
        free(m);
        return NULL;
    }
    memcpy(m->ids, ids, n * sizeof(*ids));
    size_t o = 0;
    m->set[0] = '\0';
    for (uint32_t r = 0; r < n; r++) {
        o += (size_t)sprintf(m->set + o, "%s%u", r ? "," : "", ids[r]);
        if (ids[r] == me)
            m->rank = r;
    }
    m->ops = pick_ops(srv);
    m->backoff_ms = BACKOFF_MIN_MS;
    m->next_ticket = 1;
    if (uv_timer_init(srv->loop, m->timer) < 0) {
        free(m->timer);
        free(m->async);
        free(m->ids);
        free(m->set);
        free(m);
        return NULL;
    }
    if (uv_async_init(srv->loop, m->async, on_async) < 0) {
        uv_close((uv_handle_t *)m->timer, handle_closed);
        free(m->async);
        free(m->ids);
        free(m->set);
        free(m);
        return NULL;
    }
    m->timer->data = m;
    m->async->data = m;
    void **head = llepd_cluster_comms(srv->cluster);
    m->next = *head;
    *head = m;
    return m;
}

int llepd_cxnode_init(llepd_clayer *c) {
    llepd_server *srv = c->layer->srv;
    llepd_ccomm *m = comm_find(srv, c->ids, c->nodes);
    const char *drop = getenv("LLEPD_TEST_XNODE_DROP");

    if (!m && !(m = comm_new(srv, c->ids, c->nodes)))
        return -ENOMEM;
    if (m->nmembers == m->cap_members) {
        uint32_t cap = m->cap_members ? 2 * m->cap_members : 4;
        llepd_clayer **v = realloc(m->members, cap * sizeof(*v));
        if (!v) {
            if (m->nmembers == 0)
                comm_free(m);
            return -ENOMEM;
        }
        m->members = v;
        m->cap_members = cap;
    }
    m->members[m->nmembers++] = c;
    c->xn.comm = m;
    c->xn.drop_after = drop ? strtoull(drop, NULL, 10) : 0;
    return 0;
}

void llepd_cxnode_fini(llepd_clayer *c) {
    llepd_ccomm *m = c->xn.comm;

    if (!m)
        return;
    /* Its tickets may be in flight into its buffers, or awaited by the other nodes. */
    if (holds_live(m, c))
        comm_close(m, "a layer with an exchange to come went away", false, c);
    for (uint32_t i = 0; i < m->nq; i++)
        if (m->q[i].c == c)
            ticket_done(&m->q[i]);
    for (uint32_t i = 0; i < m->nmembers; i++)
        if (m->members[i] == c) {
            m->members[i] = m->members[--m->nmembers];
            break;
        }
    c->xn.comm = NULL;
    if (m->nmembers == 0) {
        m->dead = true;
        if (m->holds == 0)
            comm_free(m);
    }
}

/* ---- bootstrap --------------------------------------------------------------------------- */

static void send_fail(llepd_ccomm *m, uint64_t epoch, const char *why, const char *layer) {
    LlepPb__ClusterCommFail msg = LLEP_PB__CLUSTER_COMM_FAIL__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    msg.layer = (char *)(layer ? layer : "");
    msg.epoch = epoch;
    msg.message = (char *)why;
    msg.n_set = m->nodes;
    msg.set = m->ids;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_COMM_FAIL;
    f.cluster_comm_fail = &msg;
    for (uint32_t r = 0; r < m->nodes; r++)
        if (r != m->rank)
            (void)llepd_cluster_send(m->srv->cluster, m->ids[r], &f);
}

/* This node cannot join or keep epoch's communicator: every node closes it. */
static void fail_comm(llepd_ccomm *m, const char *why) {
    uint64_t epoch = m->epoch;
    char msg[200];

    log_warning("nodes %s: %s communicator (epoch %" PRIu64 "): %s", m->set, m->ops->name,
                epoch, why);
    snprintf(msg, sizeof(msg), "node %u: %s", m->ids[m->rank], why);
    send_fail(m, epoch, msg, NULL);
    comm_close(m, msg, false, NULL);
    snprintf(m->why, sizeof(m->why), "%s", msg); /* also when nothing was open yet */
}

static int join(llepd_ccomm *m, const uint8_t *id) {
    llep_backend *be = llep__devices_backend(m->srv->devs);
    char err[256] = "";

    int r = m->ops->open(be, 0, id, m->nodes, m->rank, notify, m, &m->x, err, sizeof(err));
    if (r < 0) {
        m->x = NULL;
        fail_comm(m, err[0] ? err : "cannot join the communicator");
        return r;
    }
    m->opens++;
    m->opened_ns = llepd_now_ns();
    m->next_ticket = 1;
    uv_timer_start(m->timer, on_timer, POLL_MS, POLL_MS);
    return 0;
}

static bool all_peers_up(llepd_ccomm *m) {
    for (uint32_t r = 0; r < m->nodes; r++)
        if (r != m->rank && !llepd_cluster_peer_up(m->srv->cluster, m->ids[r]))
            return false;
    return true;
}

/* A layer of the set that has stepped, so that every node holds it (and a communicator for
 * its set). Steps in progress need not end first: with none up here they go over the peer
 * links, and the epoch their plan hashes name tells every node alike. */
static bool ready_to_start(llepd_ccomm *m) {
    for (uint32_t i = 0; i < m->nmembers; i++) {
        llepd_clayer *c = m->members[i];
        if (c->part && !c->creator && !c->orphaned && c->layer->steps > 0)
            return true;
    }
    return false;
}

void llepd_cxnode_maybe_start(llepd_clayer *c) {
    llepd_ccomm *m = c->xn.comm;
    uint8_t id[LLEP_XNODE_ID_BYTES];
    LlepPb__ClusterComm msg = LLEP_PB__CLUSTER_COMM__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    if (!m || !m->ops || m->x || m->rank != COORDINATOR || llepd_now_ns() < m->retry_ns ||
        !all_peers_up(m) || !ready_to_start(m))
        return;
    int r = m->ops->unique_id(llep__devices_backend(m->srv->devs), id);
    m->epoch++;
    if (r < 0) {
        fail_comm(m, "cannot make a communicator id");
        return;
    }
    msg.layer = (char *)"";
    msg.epoch = m->epoch;
    msg.transport = (char *)m->ops->name;
    msg.id.data = id;
    msg.id.len = sizeof(id);
    msg.nranks = m->nodes;
    msg.n_set = m->nodes;
    msg.set = m->ids;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_COMM;
    f.cluster_comm = &msg;
    for (uint32_t j = 0; j < m->nodes; j++)
        if (j != m->rank)
            (void)llepd_cluster_send(m->srv->cluster, m->ids[j], &f);
    log_info("nodes %s: starting the %s communicator, epoch %" PRIu64 ", %u nodes, %u layers",
             m->set, m->ops->name, m->epoch, m->nodes, m->nmembers);
    (void)join(m, id);
}

/* ---- exchanges --------------------------------------------------------------------------- */

/* Issues the lowest ticket when its step has asked for it and nothing is in flight; drops the
 * tickets done before it. Re-entered from a failure's call up: the outer call goes on. */
static void pump(llepd_ccomm *m) {
    if (m->pumping) {
        m->again = true;
        return;
    }
    m->pumping = true;
    hold(m);
    do {
        m->again = false;
        uint32_t k = 0;
        while (k < m->nq && m->q[k].state == T_DONE)
            k++;
        if (k > 0) {
            memmove(m->q, m->q + k, (m->nq - k) * sizeof(*m->q));
            m->nq -= k;
        }
        if (!m->x || !m->up || m->nq == 0 || m->q[0].state != T_QUEUED)
            continue;
        ticket *t = &m->q[0];
        int r = m->ops->exchange(m->x, t->ops, t->n);
        free(t->ops);
        t->ops = NULL;
        if (r == 0) {
            t->state = T_FLIGHT;
            uv_timer_start(m->timer, on_timer, POLL_MS, POLL_MS);
            continue;
        }
        llepd_clayer *c = t->c;
        char why[256];
        snprintf(why, sizeof(why), "%s", m->ops->error(m->x));
        ticket_done(t);
        tell(m, &c, 1, r, why); /* fails the step, which closes the communicator */
        m->again = true;
    } while (m->again);
    m->pumping = false;
    release(m);
}

int llepd_cxnode_exchange(llepd_clayer *c, uint64_t ticket_no, const llep_xnode_op *ops,
                          uint32_t n, char *why, size_t whylen) {
    llepd_ccomm *m = c->xn.comm;

    if (!m || !m->x || !m->up) {
        snprintf(why, whylen, "the communicator is not up%s%s", m && m->why[0] ? ": " : "",
                 m && m->why[0] ? m->why : "");
        return -ENOTCONN;
    }
    ticket *t = ticket_of(m, c, ticket_no);
    if (!t || t->state != T_WAIT) {
        snprintf(why, whylen, "no exchange ticket %" PRIu64 " for the step in epoch %" PRIu64
                 " (the communicator changed since the plan)", ticket_no, m->epoch);
        return -ENOTCONN;
    }
    t->ops = malloc((n ? n : 1) * sizeof(*ops));
    if (!t->ops) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    memcpy(t->ops, ops, n * sizeof(*ops));
    t->n = n;
    t->state = T_QUEUED;
    /* Its turn now (nothing before it): issued here, so that a failure is this caller's. */
    uint32_t k = 0;
    while (k < m->nq && m->q[k].state == T_DONE)
        k++;
    if (&m->q[k] == t && !m->pumping) {
        int r = m->ops->exchange(m->x, t->ops, t->n);
        free(t->ops);
        t->ops = NULL;
        if (r < 0) {
            snprintf(why, whylen, "%s", m->ops->error(m->x));
            ticket_done(t);
            return r;
        }
        t->state = T_FLIGHT;
        uv_timer_start(m->timer, on_timer, POLL_MS, POLL_MS);
        return 0;
    }
    pump(m);
    return 0;
}

uint32_t llepd_cxnode_coordinator(const llepd_clayer *c) {
    const llepd_ccomm *m = c->xn.comm;

    for (uint32_t r = 0; m && r < c->nodes; r++)
        if (c->ids[r] == m->ids[COORDINATOR])
            return r;
    return 0;
}

uint64_t llepd_cxnode_ticket(llepd_clayer *c) {
    llepd_ccomm *m = c->xn.comm;

    if (!m || m->rank != COORDINATOR || !m->x || !m->up)
        return 0;
    uint64_t t = m->next_ticket;
    if (ticket_add(m, t, c) < 0 || ticket_add(m, t + 1, c) < 0) {
        for (uint32_t i = 0; i < m->nq; i++)
            if (m->q[i].c == c && m->q[i].t >= t)
                ticket_done(&m->q[i]);
        return 0; /* out of memory: this step goes over the peer links */
    }
    m->next_ticket += 2;
    return t;
}

void llepd_cxnode_announce(llepd_clayer *c, uint64_t epoch, uint64_t t, bool mine) {
    llepd_ccomm *m = c->xn.comm;
    char why[320];

    if (!m || !m->x || epoch != m->epoch || t == 0)
        return; /* another epoch: every node's step goes over the peer links */
    if (!mine) {
        snprintf(why, sizeof(why), "layer '%s' cannot take exchange ticket %" PRIu64 " (its step "
                 "is gone here)", c->layer->name, t);
        comm_close(m, why, false, NULL);
        return;
    }
    if (ticket_add(m, t, c) < 0 || ticket_add(m, t + 1, c) < 0) {
        snprintf(why, sizeof(why), "cannot take exchange ticket %" PRIu64, t);
        comm_close(m, why, false, NULL);
    }
}

void llepd_cxnode_skip(llepd_clayer *c) {
    llepd_ccomm *m = c->xn.comm;

    if (!m)
        return;
    for (uint32_t i = 0; i < m->nq; i++)
        if (m->q[i].c == c && m->q[i].state == T_WAIT)
            ticket_done(&m->q[i]);
    pump(m);
}

void llepd_cxnode_step_over(llepd_clayer *c) {
    llepd_ccomm *m = c->xn.comm;

    if (!m)
        return;
    if (holds_live(m, c))
        comm_close(m, "a step over it failed", false, c);
    for (uint32_t i = 0; i < m->nq; i++)
        if (m->q[i].c == c)
            ticket_done(&m->q[i]);
    pump(m);
}

static void on_poll(llepd_ccomm *m) {
    char why[256];

    if (!m->x)
        return;
    int r = m->ops->poll(m->x);
    if (r == -EINPROGRESS) {
        if (!m->up && llepd_now_ns() - m->opened_ns > OPEN_DEADLINE_MS * 1000000ull) {
            snprintf(why, sizeof(why), "not every node joined within %u ms", OPEN_DEADLINE_MS);
            fail_comm(m, why);
        }
        return;
    }
    if (r < 0) {
        snprintf(why, sizeof(why), "%s", m->ops->error(m->x));
        if (m->nq > 0 && m->q[0].state == T_FLIGHT)
            comm_close(m, why, false, NULL); /* fails the steps, which tell the others */
        else
            fail_comm(m, why);
        return;
    }
    uv_timer_stop(m->timer);
    if (!m->up) {
        m->up = true;
        m->backoff_ms = BACKOFF_MIN_MS;
        m->why[0] = '\0';
        log_info("nodes %s: %s communicator up (epoch %" PRIu64 ", rank %u of %u, shared by %u "
                 "layers, %" PRIu64 " opened here)", m->set, m->ops->name, m->epoch, m->rank,
                 m->nodes, m->nmembers, m->opens);
        pump(m);
        return;
    }
    if (m->nq > 0 && m->q[0].state == T_FLIGHT) {
        llepd_clayer *c = m->q[0].c;
        ticket_done(&m->q[0]);
        hold(m);
        pump(m); /* the next ticket first: the transport is free */
        tell(m, &c, 1, 0, NULL);
        release(m);
    }
}

void llepd_cxnode_close(llepd_clayer *c, const char *why, bool fast) {
    if (c->xn.comm)
        comm_close(c->xn.comm, why, fast, c);
}

void llepd_cxnode_peer(llepd_clayer *c, uint32_t node_id, bool up, const char *why) {
    llepd_ccomm *m = c->xn.comm;

    if (!m)
        return;
    comm_close(m, why, up, c);
    /* A coordinator that comes back counts its epochs from 1 again. */
    if (!up && node_id == m->ids[COORDINATOR])
        m->epoch = 0;
}

uint64_t llepd_cxnode_epoch(llepd_clayer *c, bool *up) {
    llepd_ccomm *m = c->xn.comm;

    *up = m && m->x && m->up;
    return m && m->x ? m->epoch : 0;
}

/* ---- messages ---------------------------------------------------------------------------- */

static int rank_in(const llepd_ccomm *m, uint32_t node_id) {
    for (uint32_t r = 0; r < m->nodes; r++)
        if (m->ids[r] == node_id)
            return (int)r;
    return -1;
}

static void on_comm(llepd_ccomm *m, uint32_t from_id, const LlepPb__ClusterComm *msg,
                    const char *layer) {
    char why[200];

    if (rank_in(m, from_id) != (int)COORDINATOR || msg->epoch <= m->epoch ||
        msg->nranks != m->nodes)
        return; /* stale, or not from the set's coordinator */
    /* The coordinator has given the old one up: an exchange over it cannot finish. */
    comm_close(m, "the coordinator started a new communicator", false, NULL);
    m->epoch = msg->epoch;
    if (!m->ops || strcmp(msg->transport ? msg->transport : "", m->ops->name) != 0 ||
        msg->id.len != LLEP_XNODE_ID_BYTES) {
        snprintf(why, sizeof(why), "cannot join a %s communicator (this node has %s)",
                 msg->transport ? msg->transport : "?", m->ops ? m->ops->name : "none");
        log_warning("nodes %s: %s", m->set, why);
        char text[256];
        snprintf(text, sizeof(text), "node %u: %s", m->ids[m->rank], why);
        send_fail(m, msg->epoch, text, layer); /* every node: the others wait for this rank */
        return;
    }
    (void)join(m, msg->id.data);
}

static void on_comm_fail(llepd_ccomm *m, const LlepPb__ClusterCommFail *msg) {
    if (!m->ops || msg->epoch != m->epoch || !m->x)
        return; /* not this node's communicator, or closed already */
    log_warning("nodes %s: communicator epoch %" PRIu64 " failed: %s", m->set, msg->epoch,
                msg->message ? msg->message : "?");
    comm_close(m, msg->message ? msg->message : "a node failed", false, NULL);
}

/* The set a message names: ascending node ids, this node among them. */
static llepd_ccomm *comm_of_set(llepd_server *srv, const uint32_t *ids, size_t n) {
    uint32_t me = llepd_cluster_node_id(srv->cluster);
    bool in = false;

    if (n < 2 || n > LLEP_MAX_NODES)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && ids[i] <= ids[i - 1])
            return NULL;
        in = in || ids[i] == me;
    }
    return in ? comm_find(srv, ids, (uint32_t)n) : NULL;
}

void llepd_cxnode_handle(llepd_server *srv, llepd_clayer *c, uint32_t from_id,
                         const LlepPb__Frame *f) {
    llepd_ccomm *m = NULL;

    if (f->body_case == LLEP_PB__FRAME__BODY_CLUSTER_COMM) {
        const LlepPb__ClusterComm *msg = f->cluster_comm;
        if (c && msg->uid != c->uid)
            return; /* another layer of that name */
        m = c ? c->xn.comm : comm_of_set(srv, msg->set, msg->n_set);
        if (m) {
            on_comm(m, from_id, msg, c ? c->layer->name : NULL);
        } else if (msg->n_set > 0 && msg->epoch > 0) {
            /* No layer of the set here yet (its ClusterLayer is on its way from the origin):
             * the coordinator tries again after its pause. */
            LlepPb__ClusterCommFail fm = LLEP_PB__CLUSTER_COMM_FAIL__INIT;
            LlepPb__Frame out = LLEP_PB__FRAME__INIT;
            char text[200];
            snprintf(text, sizeof(text), "node %u holds no cluster layer on these nodes yet",
                     llepd_cluster_node_id(srv->cluster));
            fm.layer = (char *)"";
            fm.epoch = msg->epoch;
            fm.message = text;
            fm.n_set = msg->n_set;
            fm.set = msg->set;
            out.body_case = LLEP_PB__FRAME__BODY_CLUSTER_COMM_FAIL;
            out.cluster_comm_fail = &fm;
            (void)llepd_cluster_send(srv->cluster, from_id, &out);
        }
        return;
    }
    if (f->body_case == LLEP_PB__FRAME__BODY_CLUSTER_COMM_FAIL) {
        const LlepPb__ClusterCommFail *msg = f->cluster_comm_fail;
        m = c ? c->xn.comm : comm_of_set(srv, msg->set, msg->n_set);
        if (m && rank_in(m, from_id) >= 0)
            on_comm_fail(m, msg);
    }
}

const char *llepd_cxnode_name(const llepd_clayer *c) {
    return c->xn.comm && c->xn.comm->ops ? c->xn.comm->ops->name : "?";
}

const char *llepd_cxnode_describe(const llepd_clayer *c, char *buf, size_t len) {
    const llepd_ccomm *m = c->xn.comm;

    if ((!m || !m->ops) && c->layer->srv->cfg.cluster_communicator_off)
        snprintf(buf, len, "peer links (cluster-communicator off)");
    else if (!m || !m->ops)
        snprintf(buf, len, "peer links");
    else if (m->x && m->up)
        snprintf(buf, len, "%s (up, epoch %" PRIu64 ", set %s)", m->ops->name, m->epoch,
                 m->set);
    else if (m->x)
        snprintf(buf, len, "peer links (%s epoch %" PRIu64 " opening, set %s)", m->ops->name,
                 m->epoch, m->set);
    else if (m->why[0])
        snprintf(buf, len, "peer links (%s: %s)", m->ops->name, m->why);
    else
        snprintf(buf, len, "peer links (%s not started)", m->ops->name);
    return buf;
}
