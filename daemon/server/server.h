/* llepd's state: the server (listening socket, sessions, layers, figures), one session per
 * connection, and the layers clients share.
 *
 * Everything here lives on the event-loop thread. Steps run on libuv's thread pool and touch
 * only their layer's engine and the submissions handed to them (sched.c); results come back to
 * the loop thread in the work's completion callback. */
#ifndef LLEPD_SERVER_H
#define LLEPD_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "config.h"
#include "engine.h"
#include "frame.h"
#include "plan.h"
#include "ring.h"

typedef struct llepd_server llepd_server;
typedef struct llepd_session llepd_session;
typedef struct llepd_layer llepd_layer;
typedef struct llepd_sub llepd_sub;

/* Intrusive doubly linked list. */
typedef struct llepd_list {
    struct llepd_list *prev, *next;
} llepd_list;

static inline void llepd_list_init(llepd_list *l) {
    l->prev = l->next = l;
}
static inline bool llepd_list_empty(const llepd_list *l) {
    return l->next == l;
}
static inline void llepd_list_append(llepd_list *head, llepd_list *n) {
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}
static inline void llepd_list_remove(llepd_list *n) {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
#define llepd_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Steps whose per-expert loads `llepctl experts` sums. */
#define LLEPD_LOAD_WINDOW 16u

/* Step latencies kept for percentiles: the most recent LLEPD_LAT_SAMPLES. */
#define LLEPD_LAT_SAMPLES 4096u

typedef struct llepd_latency {
    uint64_t us[LLEPD_LAT_SAMPLES];
    uint64_t count;
} llepd_latency;

void llepd_latency_add(llepd_latency *l, uint64_t us);
/* p in [0, 100]; 0 when empty. */
uint64_t llepd_latency_percentile(const llepd_latency *l, double p);

/* ---- sessions ---------------------------------------------------------------------------- */

enum llepd_session_state { SESSION_HELLO, SESSION_READY, SESSION_CLOSING };

struct llepd_session {
    llepd_server *srv;
    llepd_list link;                /* in srv->sessions */
    uv_pipe_t pipe;
    struct llepd_sq_watch *sq_watch; /* polls the submission eventfd, once an arena exists */
    uv_timer_t retry;               /* drains the ring again when completions were full */
    llep_frame_decoder dec;
    uint64_t id;
    enum llepd_session_state state;
    int kind;                       /* LLEP__PEER_KIND__* */
    char program[64];
    struct ucred cred;
    bool admin;                     /* root or a member of the daemon's group */
    bool refused;                   /* may not connect: answered with a refusal, then closed */

    llep_arena arena;
    bool have_arena;
    int cq_efd;                     /* completion eventfd (the client waits on it) */

    uint32_t *layers;               /* ids of the layers this client holds */
    uint32_t nlayers, cap_layers;

    uint32_t inflight;              /* submissions queued or in a running step */
    bool in_drain, drain_again;     /* llepd_session_drain() is running / must run once more */
    uint32_t creating;              /* layer creations reading this arena */
    int refs;                       /* the session itself, handles, in-flight work */
    int open_handles;
};

/* Takes and drops a reference; the last drop frees the session. */
void llepd_session_ref(llepd_session *s);
void llepd_session_unref(llepd_session *s);

/* Starts closing: stops reading, drops queued submissions and layer references; in-flight
 * steps keep the arena mapped until they finish. Safe to call twice. */
void llepd_session_close(llepd_session *s, const char *why);

/* Sends a frame (copied); errors close the session. */
void llepd_session_send(llepd_session *s, const Llep__Frame *f);

/* Sends the one frame that carries descriptors (ArenaReply). -EAGAIN when replies are still
 * queued on the socket (the descriptors would overtake them). */
int llepd_session_send_fds(llepd_session *s, const Llep__Frame *f, const int *fds, size_t nfds);

/* Replaces the session's arena with a new one of geometry g (submit.c); the caller has made
 * sure nothing is in flight. Returns 0 or a negative errno. */
int llepd_session_set_arena(llepd_session *s, const llep_arena_geom *g);

/* Accepts a new connection on the listener. */
void llepd_session_accept(llepd_server *srv);

/* Reads and queues the ring's submissions (called when the eventfd fires). */
void llepd_session_drain(llepd_session *s);
/* The submission eventfd (to pass to the client); -1 without an arena. */
int llepd_session_sq_fd(const llepd_session *s);
/* Stops polling the submission eventfd and closes it (when the handle has closed). */
void llepd_session_unwatch(llepd_session *s);

/* ---- layers ------------------------------------------------------------------------------ */

/* A layer's tunables: the daemon default unless the layer or `llepctl set LAYER` set one. */
typedef struct llepd_tunables {
    llep_plan_params params;
    bool own_alpha, own_lambda, own_min_tokens, own_policy, own_scale_min_tokens;
} llepd_tunables;

struct llepd_layer {
    llepd_server *srv;
    uint32_t id;
    char name[LLEP_NAME_MAX + 1];
    Llep__LayerDesc desc;           /* as created; no pointers inside */
    llepd_tunables tun;
    llep_engine *engine;            /* NULL while being created */
    bool creating, dead;
    int refs;                       /* clients holding it */

    llepd_list queue;               /* llepd_sub waiting for a step */
    uint32_t queued;
    bool running;                   /* a step is on the thread pool */
    uv_timer_t group_timer;         /* collective batching deadline */
    bool group_timer_armed;
    llepd_list attach_waiters;      /* attaches that arrived while creating */

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

    struct llepd_clayer *cluster;   /* scope CLUSTER (cluster-layer.h); NULL for node scope */
};

llepd_layer *llepd_layer_find(llepd_server *srv, const char *name);
llepd_layer *llepd_layer_by_id(llepd_server *srv, uint32_t id);
void llepd_layer_unref(llepd_layer *l);

/* ---- submissions ------------------------------------------------------------------------- */

struct llepd_sub {
    llepd_list link;                /* in layer->queue, then in the running step */
    llepd_session *session;         /* holds a reference */
    llepd_layer *layer;
    llep_sqe sqe;
    int32_t *topk_idx;              /* copied out of the arena and checked */
    float *topk_w;
    const void *x;                  /* in the arena */
    void *y;
    uint64_t enqueued_ns;
    int status;
    char error[256];
};

/* Queues a checked submission on its layer and starts a step when the batching rule allows. */
void llepd_sched_submit(llepd_sub *sub);
/* Fails every queued submission of a layer (daemon stopping, layer gone). */
void llepd_sched_fail_queued(llepd_layer *l, int status, const char *why);
/* Removes a closing session's queued submissions (completing nothing: nobody is listening). */
void llepd_sched_drop_session(llepd_server *srv, llepd_session *s);
/* Reports the result of one submission to its client: SubmissionError frame first on error,
 * then the completion entry. Consumes the submission. */
void llepd_sub_complete(llepd_sub *sub, uint64_t step);
/* Tries to start a step on the layer. */
void llepd_sched_kick(llepd_layer *l);

/* ---- the server -------------------------------------------------------------------------- */

struct llepd_server {
    uv_loop_t *loop;
    llep_config cfg;
    char *socket_path;
    bool socket_owned;              /* we created the socket file and remove it at exit */
    uv_pipe_t listener;
    bool listening;

    llepd_list sessions;
    uint32_t nsessions;
    uint64_t next_session_id;

    llepd_layer **layers;           /* in creation order */
    uint32_t nlayers, cap_layers;
    uint32_t next_layer_id;
    uint32_t running_steps;         /* on the thread pool, all layers */
    uint32_t running_creates;

    /* Devices: every layer's engine has these P logical devices. */
    enum llep_backend_kind backend;
    const llep_backend_ops *backend_ops;  /* every layer's engine runs on this backend */
    uint32_t devices;
    uint64_t device_memory;         /* per device, all layers together */

    uint64_t start_ns;
    bool draining, stopping;
    enum llep_policy default_policy;  /* `llepctl set policy=...` without a layer */
    gid_t admin_gid;                /* group whose members may set and drain; (gid_t)-1: none */

    /* Daemon-wide figures. */
    uint64_t steps, ep_steps, llep_steps;
    uint64_t weight_bytes_moved, token_bytes_moved;
    uint32_t refused;               /* submissions refused while draining */
    uint64_t *device_peak;          /* [P] */
    llepd_latency latency;
    uint64_t *last_dev_tokens;      /* [P] of the most recent step of any layer */
    uint64_t *last_dev_busy_ns;     /* [P] */

    /* llepctl drain requests waiting for the running steps to finish. */
    struct llepd_drain_waiter *drain_waiters;
    uint32_t ndrain_waiters;

    void (*on_idle_after_stop)(llepd_server *srv);  /* called when stopping and nothing runs */

    struct llepd_cluster *cluster;  /* peer links (cluster.h); set up and closed by llepd.c */
};

uint64_t llepd_now_ns(void);

int llepd_server_init(llepd_server *srv, uv_loop_t *loop, const llep_config *cfg,
                      char *err, size_t errlen);
/* Listens on srv->socket_path, or on an inherited descriptor when fd >= 0. */
int llepd_server_listen(llepd_server *srv, int fd, char *err, size_t errlen);
/* Stops accepting, refuses new work, tells clients; the loop ends once steps have finished. */
void llepd_server_stop(llepd_server *srv, const char *why);
void llepd_server_fini(llepd_server *srv);
/* Called whenever a step or creation finishes: ends the loop if stopping and idle. */
void llepd_server_check_idle(llepd_server *srv);

/* Answers pending `llepctl drain` requests once nothing runs or waits (handlers-ctl.c). */
void llepd_drain_check(llepd_server *srv);

/* Request handlers (handlers.c): one per request body, dispatched from a table. */
void llepd_handle_frame(llepd_session *s, const Llep__Frame *f);

#endif
