/* Layers: the registry, reference counts, tunables, and creation on the thread pool
 * (layer.c). A layer of scope CLUSTER carries the ops of cluster/ (cluster-layer.h), through
 * which the server reaches its cluster state without knowing it. */
#ifndef LLEPD_LAYER_H
#define LLEPD_LAYER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "engine.h"
#include "frame.h"
#include "latency.h"
#include "list.h"
#include "plan.h"
#include "server.h"

/* Steps whose per-expert loads `llepctl experts` sums. */
#define LLEPD_LOAD_WINDOW 16u

/* A layer's tunables: the daemon default unless the layer or `llepctl set LAYER` set one. */
typedef struct llepd_tunables {
    llep_plan_params params;
    bool own_alpha, own_lambda, own_min_tokens, own_policy, own_scale_min_tokens, own_planner;
} llepd_tunables;

/* What a layer of another scope does instead of the node-scope default (NULL ops: node
 * scope). Every entry is required. */
typedef struct llepd_layer_ops {
    /* scheduler.c: submissions are queued; start or join a step when they allow. */
    void (*kick)(llepd_layer *l);
    /* server.c: the daemon stops: close the layer's timers. */
    void (*close)(llepd_layer *l);
    /* layer.c: the layer is being freed (before its engine, which the scope may borrow). */
    void (*free)(llepd_layer *l);
    /* Experts this node holds (all N for node scope). */
    uint32_t (*local_experts)(const llepd_layer *l);
    /* Before the engine is made: cut cfg (the client's full config) down to this node. */
    void (*share_config)(llepd_layer *l, llep_engine_config *cfg);
    /* On the thread pool, once the engine exists: keep what the scope needs of the client's
     * full weights. Returns 0 or -ENOMEM (the creation then fails). */
    int (*pack)(llepd_layer *l, const llep_engine_config *full);
    /* The engine exists: the scope answers the creator (hooks.layer_created) when it can. */
    void (*created)(llepd_layer *l, llepd_session *creator, uint64_t frame_id);
    /* `llepctl layers`: the scope's figures into info; buf holds its strings. */
    void (*describe)(const llepd_layer *l, LlepPb__LayerInfo *info, char *buf, size_t len);
    /* `llepctl set LAYER`: 0 when this node may change the layer's parameters. */
    int (*may_set)(const llepd_layer *l, char *err, size_t errlen);
} llepd_layer_ops;

struct llepd_layer {
    llepd_server *srv;
    uint32_t id;
    char name[LLEP_NAME_MAX + 1];
    LlepPb__LayerDesc desc;           /* as created; no pointers inside */
    llepd_tunables tun;
    llep_engine *engine;            /* NULL while being created */
    bool creating, dead;
    int refs;                       /* clients holding it */

    llepd_list queue;               /* llepd_sub waiting for a step */
    uint32_t queued;
    bool running;                   /* a step is on the thread pool */
    uv_timer_t group_timer;         /* collective batching deadline */
    bool group_timer_armed;
    llepd_list attach_waiters;      /* attaches that arrived while creating (handlers.c) */

    /* Figures (llepctl layers, experts, plan, stats). */
    uint64_t steps, ep_steps, llep_steps, tokens;
    double imbalance_last, imbalance_sum, imbalance_max;
    uint64_t weight_bytes_moved, token_bytes_moved;
    uint64_t makespan_ns_sum;
    double balance_sum;
    uint64_t *peak;                 /* [P] highest use of this layer's steps */
    llepd_latency latency;
    uint64_t *load_hist;            /* [LLEPD_LOAD_WINDOW][N] loads of the recent steps */
    uint64_t *last_loads;           /* [N] in the last step */
    llep_plan last_plan;            /* copy of the last step's plan */
    bool have_plan;
    uint64_t last_plan_step;
    llep_engine_device_stats *last_dev;  /* [P] of the last step */

    const llepd_layer_ops *ops;     /* NULL: node scope */
    struct llepd_clayer *cluster;   /* scope CLUSTER: cluster/'s state (opaque here) */
};

llepd_layer *llepd_layer_find(llepd_server *srv, const char *name);
llepd_layer *llepd_layer_by_id(llepd_server *srv, uint32_t id);
void llepd_layer_unref(llepd_layer *l);

/* Registers a new layer in state "creating". NULL when out of memory. */
llepd_layer *llepd_layer_new(llepd_server *srv, const char *name, const LlepPb__LayerDesc *d);

/* Copies the weights named by lc out of s's arena into a new engine, on the thread pool;
 * srv->hooks.layer_created is called on the loop thread when done (or the scope's created
 * op, which calls it later). Returns 0 or a negative errno (then nothing was started). */
int llepd_layer_start_create(llepd_layer *l, llepd_session *s, uint64_t frame_id,
                             const LlepPb__LayerCreate *lc);

/* The plan parameters a step of this layer uses now. */
void llepd_layer_params(const llepd_layer *l, llep_plan_params *ret);

/* The layer's desc with the tunables now in effect filled in (what clients and llepctl see). */
void llepd_layer_effective_desc(const llepd_layer *l, LlepPb__LayerDesc *ret);

/* Frees the layer when nothing references or uses it any more. */
void llepd_layer_maybe_destroy(llepd_layer *l);

/* The engine config of the layer on this node: shape, activation, the daemon's shared devices
 * and the plan parameters; no weights. */
void llepd_layer_engine_config(const llepd_layer *l, llep_engine_config *cfg);

/* Native weight bytes layer l holds on each device of this node. */
uint64_t llepd_layer_held(const llepd_layer *l);

/* The daemon stops: closes every layer's timers (and its scope's). */
void llepd_layer_close_all(llepd_server *srv);
/* After the loop has ended: frees whatever layers remain. */
void llepd_layer_free_all(llepd_server *srv);

#endif
