/* Cluster-scope layers (LLEP_SCOPE_CLUSTER, DESIGN.md section 5): one layer over every node's
 * devices, stepped together by the daemons over their peer links (cluster.h).
 *
 * Creation (cluster-layer.c; the shares in cluster-share.c). The node whose client creates
 * the layer is its origin. It keeps its own share of the experts in its engine and a host copy
 * of every other node's share, and sends each node its share (ClusterLayer + ClusterData
 * LAYER_WEIGHTS). A node answers once its engine holds the share; the client's create returns
 * when every node has answered. When a node comes back (restarted, or its link was lost), the
 * origin sends it the share again; the layer's uid tells it whether what it may still hold is
 * the same layer. If the origin itself goes away, the other nodes' copies are orphaned: their
 * clients' steps fail, telling them to create the layer again. When a device of a node fails,
 * the node puts that device's experts back from its own host copy of its share
 * (keep-host-weights) or, lacking one, from the share the origin sends again on request
 * (ClusterShareRequest; docs/ARCHITECTURE.md 3.4).
 *
 * Steps (cluster-step*.c; cluster-step-internal.h says which file holds what). Every node
 * takes its own clients' submissions (the layer's batching rule per node), and the nodes go
 * through step s together: loads, plan and plan hash, rows and spilled weights, results,
 * combine (engine-part.h). Each node answers its own clients. A step fails on every node, with
 * an error naming the cause, when a node is down or goes down, a node's plan hash differs, a
 * node cannot run it, or the deadline passes; no client's y is written by a failed step. Rows,
 * weights and results go over the peer links, or over the layer's communicator between nodes
 * (cluster-xnode.c; one per set of nodes, shared by the set's layers) in steps where every
 * node has it up.
 *
 * Everything here runs on the event-loop thread except the engine work queued on the pool. */
#ifndef LLEPD_CLUSTER_LAYER_H
#define LLEPD_CLUSTER_LAYER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cbuf.h"
#include "cost.h"
#include "cluster.h"
#include "engine-part.h"
#include "layer.h"
#include "scheduler.h"
#include "server.h"
#include "xnode.h"

/* Largest step buffer a peer may announce (rows or results of one step): a bad total must not
 * make this node allocate without bound. A share may be exactly as large as its shape says. */
#define LLEPD_CLUSTER_MAX_BUFFER (64ull << 30)

/* A spilled expert's weights that arrived for the current step. */
typedef struct llepd_cweights {
    uint32_t expert, from;          /* from: rank */
    llepd_cbuf buf;
} llepd_cweights;

enum llepd_cstep_phase {
    CSTEP_WAIT_LOCAL,   /* joined for a peer; this node's collective group is not complete */
    CSTEP_LOADS,        /* loads sent; waiting for every node's */
    CSTEP_HASH,         /* plan made, hash sent (rows and weights follow at once) */
    CSTEP_PREPARE,      /* this node's part prepared on the thread pool (the devices were busy) */
    CSTEP_DATA,         /* rows and weights sent; waiting for every hash and the data here */
    CSTEP_COMPUTE,      /* expert chunks on the thread pool */
    CSTEP_XROWS,        /* rows and weights moving over the communicator */
    CSTEP_RESULTS,      /* results sent; waiting for this node's tokens' results */
    CSTEP_XRESULTS,     /* results moving over the communicator */
    CSTEP_COMBINE,      /* combine on the thread pool */
    CSTEP_ENDING,       /* failing: answering its clients */
};

/* The step a cluster layer is in. */
typedef struct llepd_cstep {
    uint64_t id;
    enum llepd_cstep_phase phase;
    uint64_t t0;
    llepd_sub **subs;               /* this node's submissions in the step */
    uint32_t nsubs;
    llepd_homes homes;
    uint64_t *loads;                /* [nodes][N] */
    bool *have_loads;               /* [nodes] */
    llep_plan_params origin_params; /* from the origin's loads (this node's own on the origin) */
    llep_plan plan;
    uint64_t hash;
    uint64_t *hashes;               /* [nodes] */
    bool *have_hash;                /* [nodes] */
    uint64_t *epochs;               /* [nodes] each node's communicator epoch, 0: none */
    bool *comm_up;                  /* [nodes] and whether it is up */
    bool decided;                   /* every hash is in: xnode says how the data goes */
    bool xnode;                     /* the step's data goes over the communicator */
    uint64_t ticket;                /* from the coordinator's plan hash: the rows exchange's
                                     * ticket (results: ticket + 1); 0: none */
    llepd_cbuf *rows_in;            /* [nodes] */
    llepd_cbuf *results_in;         /* [nodes] */
    llepd_cweights *weights;        /* received so far */
    uint32_t nweights, cap_weights;
    uv_work_t work;
    bool work_queued;
    uint64_t place;                 /* the work's place in the devices' queue (devices.h) */
    bool prep_wire;                 /* CSTEP_PREPARE: buffers for the communicator */
    int r;                          /* the pool work's result, err its message */
    char err[256];
    int fail_r;                     /* a failure while the work was on the pool, fail_why */
    char fail_why[256];
    llep_engine_stats stats;
    llep_engine_device_stats *dev;  /* [P_l] copied out of the engine */
    llep_part_traffic traffic;
} llepd_cstep;

/* The communicator between nodes of a set of nodes (xnode.h; cluster-xnode.c), shared by
 * every cluster layer on the set: one transport instance (one NCCL communicator) however many
 * layers. Opaque; layers hold references. */
typedef struct llepd_ccomm llepd_ccomm;

/* A layer's view of its set's communicator. The set's coordinator (its lowest node id)
 * starts it (ClusterComm) and any failure closes it on every node for every layer on the set
 * (ClusterCommFail, or a failed step over it); the coordinator starts another after a pause.
 * Steps use it only when every node has the same epoch up and the coordinator's plan hash gave
 * the step an exchange ticket: every node issues the exchanges of all the set's layers in
 * ticket order. */
typedef struct llepd_cxnode {
    llepd_ccomm *comm;              /* the set's; NULL before init and after fini */
    uint64_t steps;                 /* this layer's steps whose data went over it */
    /* The step's exchange ended (r == 0) or failed; set by cluster-step.c, which is above. */
    void (*exchanged)(struct llepd_clayer *c, int r, const char *why);
    uint64_t drop_after;            /* LLEPD_TEST_XNODE_DROP: close it unannounced after this
                                     * many steps of this layer over it (0: never) */
} llepd_cxnode;

typedef struct llepd_clayer {
    llepd_layer *layer;
    uint32_t nodes, rank;           /* this node's rank */
    uint32_t *ids;                  /* [nodes] node id of each rank */
    uint32_t origin;                /* rank of the origin */
    uint32_t ppn;                   /* devices per node */
    uint32_t local_experts;         /* N / nodes */
    uint64_t uid;
    uint32_t flags;                 /* biases present (ClusterLayer.flags) */
    uint64_t share_bytes;           /* bytes of one node's share */
    bool orphaned;                  /* the origin went away: steps fail until created again */
    bool held;                      /* a non-origin node's own reference on the layer */
    /* The origin's device cost model, taken at creation (devices_per_node = ppn) and sent with
     * ClusterLayer: every node plans the steps with it under the cost planner, since the
     * nodes' own calibrations differ. have_cost false: the origin had none; steps plan LLA. */
    bool have_cost;
    llep_cost_model cost;

    /* Origin only: every node's share (this node's slot unused), to send and send again. */
    uint8_t **shares;               /* [nodes] */
    /* Origin, while the client's create waits for the other nodes. */
    llepd_session *creator;
    uint64_t create_frame;
    uint32_t create_waiting;
    int create_status;
    char create_err[256];
    uv_timer_t *create_timer;       /* allocated: its close outlives the layer */

    /* Non-origin, while the share arrives and the engine is made from it. */
    llepd_cbuf share_in;
    bool engine_pending;
    /* Non-origin keeping no host copy of its share (keep-host-weights off), after a device
     * failed (cluster-share.c): the engine's reload, on the step's thread, sets refill_wanted
     * when it finds no share here; the loop asks the origin (refill_asked), receives the share
     * into refill and sets refill_ready, and frees it once a step has put the experts back. */
    atomic_bool refill_wanted, refill_ready;
    bool refill_asked;
    llepd_cbuf refill;

    llep_part *part;
    uint64_t next_step;             /* the id of the next step */
    llepd_cstep *st;                /* the step in progress, or NULL */
    llepd_cstep *spare;             /* the last step's arrays, kept for the next */
    uint64_t *future_loads;         /* [nodes][N] loads that came for a later step */
    llep_plan_params future_origin_params; /* with the origin's early loads */
    uint64_t *future_step;          /* [nodes] */
    bool *have_future;              /* [nodes] */
    uv_timer_t *deadline;           /* allocated, as create_timer */
    bool inject_mismatch;           /* LLEPD_TEST_PLAN_MISMATCH: this node skews its plan */
    llepd_cxnode xn;

    /* Figures (llepctl layers). */
    uint64_t internode_rows, internode_bytes, failed_steps;
    uint32_t internode_weights;
    char state[160];                /* "ready" or why steps cannot run */
} llepd_clayer;

/* ---- creation (cluster-layer.c) ---------------------------------------------------------- */

/* Registers cluster layers with the server (hooks.cluster_layer_new: a LayerCreate of scope
 * CLUSTER makes this node the origin) and with the peer links (their frames 68 and up, and
 * peers coming and going). Call after llepd_cluster_init(). */
void llepd_clayers_init(llepd_server *srv);

/* Queues `total` bytes to a peer as ClusterData chunks (llepd_cluster_send_bulk: a share is
 * sent from c's copy, which stays until c is freed; step buffers are reused by the next step,
 * so they are copied). Returns 0, -ENOTCONN or -ENOMEM. */
static inline int llepd_clayer_send_data(llepd_clayer *c, uint32_t rank, uint64_t step,
                                         int kind, uint32_t index, const void *data,
                                         uint64_t total) {
    bool share = kind == LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_LAYER_WEIGHTS;

    return llepd_cluster_send_bulk(c->layer->srv->cluster, c->ids[rank], c->layer->name, step,
                                   kind, index, data, total, !share, c);
}

/* Sends f to every other node of the layer; a node whose link is down misses it (its link's
 * down callback deals with that node). */
static inline void llepd_clayer_send_all(llepd_clayer *c, const LlepPb__Frame *f) {
    for (uint32_t r = 0; r < c->nodes; r++)
        if (r != c->rank)
            (void)llepd_cluster_send(c->layer->srv->cluster, c->ids[r], f);
}

/* ---- a failed device's experts from the origin (cluster-share.c) ------------------------- */

/* The end of a step on this node (r its status): a share the engine waits for is asked of the
 * origin; a share received is freed once a step succeeded (its experts are back). */
void llepd_clayer_refill_step_end(llepd_clayer *c, int r);
/* The origin: node `rank` asks for its share again (ClusterShareRequest). */
void llepd_clayer_refill_send(llepd_clayer *c, uint32_t rank, uint64_t uid);
/* A non-origin node: a LAYER_WEIGHTS chunk of its share, sent again for a failed device. */
void llepd_clayer_refill_chunk(llepd_clayer *c, const LlepPb__ClusterData *d);

/* ---- steps (cluster-step.c; llepd_cstep_fail in cluster-step-end.c) ---------------------- */

/* Starts or joins a step when this node's submissions allow (scheduler.c's kick for cluster
 * layers). */
void llepd_cstep_kick(llepd_layer *l);
/* Peer step messages: ClusterLoads, ClusterPlanHash, ClusterData (not LAYER_WEIGHTS),
 * ClusterStepFail, from the node of rank `from`. */
void llepd_cstep_handle(llepd_clayer *c, uint32_t from, const LlepPb__Frame *f);
/* Fails the step in progress (a peer went down, the layer is going): every node is told. */
void llepd_cstep_fail(llepd_clayer *c, int r, const char *why);
/* Sets up (registering c->xn.exchanged) and tears down the step state of a layer. */
int llepd_cstep_init(llepd_clayer *c);
void llepd_cstep_fini(llepd_clayer *c);

/* ---- the communicator between nodes (cluster-xnode.c) ------------------------------------- */

/* Takes a reference on the communicator of the layer's set of nodes, making it (with the
 * transport llepd may use, if any) when it is the set's first layer here. 0 or -ENOMEM. */
int llepd_cxnode_init(llepd_clayer *c);
/* Gives the reference back (idempotent); the last layer's closes the communicator. */
void llepd_cxnode_fini(llepd_clayer *c);
/* Coordinator: starts the set's communicator when none is up or opening, every node is up and
 * a layer of the set has stepped (so every node holds it). */
void llepd_cxnode_maybe_start(llepd_clayer *c);
/* Closes the set's communicator for every layer on it (a step over it failed, the layer's
 * steps saw another epoch); the coordinator starts another after a pause, or at once when
 * fast is set. Steps of the set's other layers waiting for an exchange fail with why. */
void llepd_cxnode_close(llepd_clayer *c, const char *why, bool fast);
/* Node node_id went down (or came back: up): the same, and when the coordinator went down the
 * epochs start again from its next. */
void llepd_cxnode_peer(llepd_clayer *c, uint32_t node_id, bool up, const char *why);
/* What this node reports in its plan hash: the epoch (0: none) and whether it is up. */
uint64_t llepd_cxnode_epoch(llepd_clayer *c, bool *up);
/* The layer rank of the set's coordinator. */
uint32_t llepd_cxnode_coordinator(const llepd_clayer *c);
/* Coordinator, making the plan of c's step: the step's exchange ticket when the communicator
 * is up (the results exchange takes ticket + 1), else 0. */
uint64_t llepd_cxnode_ticket(llepd_clayer *c);
/* Another node: the coordinator's plan hash for c's step gave it `ticket` on `epoch`; mine:
 * the step is in progress here. A ticket this node cannot take (its step is gone) closes the
 * communicator: another node may have issued it. */
void llepd_cxnode_announce(llepd_clayer *c, uint64_t epoch, uint64_t ticket, bool mine);
/* The step goes over the peer links (every node decides so from the same hashes): its
 * tickets are skipped. */
void llepd_cxnode_skip(llepd_clayer *c);
/* The step ends or fails: a ticket of it not exchanged yet closes the communicator (the other
 * nodes may be waiting in it); call before the step's buffers go. */
void llepd_cxnode_step_over(llepd_clayer *c);
/* Queues the step's exchange of `ticket` (copied); it starts once every earlier ticket has
 * been exchanged or skipped, and c->xn.exchanged() follows. 0 or -errno, why set. */
int llepd_cxnode_exchange(llepd_clayer *c, uint64_t ticket, const llep_xnode_op *ops,
                          uint32_t n, char *why, size_t whylen);
/* ClusterComm and ClusterCommFail from node from_id; c: the layer they name (older senders),
 * else NULL and they name the set. */
void llepd_cxnode_handle(llepd_server *srv, llepd_clayer *c, uint32_t from_id,
                         const LlepPb__Frame *f);
/* The transport's name ("nccl", "socket"), "?" without one. */
const char *llepd_cxnode_name(const llepd_clayer *c);
/* "nccl (up, epoch 2, set 0,1,2)", "peer links", "peer links (nccl: ...)" for llepctl. */
const char *llepd_cxnode_describe(const llepd_clayer *c, char *buf, size_t len);

#endif
