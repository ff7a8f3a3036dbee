/* llepd's server: the daemon-wide state (listening socket, sessions, layers, figures), the
 * calls up from lower files (hooks), an orderly stop and the idle check.
 *
 * The files of this folder call each other only downwards, in this order (docs/
 * ARCHITECTURE.md): handlers*.c -> server.c -> scheduler.c -> submit.c -> layer.c -> session.c ->
 * latency.c, log.c. Where a lower file must reach an upper one (a frame arrived, a step
 * finished) it calls a hook that the upper file registered at set-up.
 *
 * Everything here lives on the event-loop thread. Steps run on libuv's thread pool and touch
 * only their layer's engine and the submissions handed to them (scheduler.c); results come back to
 * the loop thread in the work's completion callback. Every layer's engine runs on the one
 * llep_devices opened here (devices.h): steps of all layers take turns on it, and the loop
 * thread only ever tries for a turn, never waits for one. */
#ifndef LLEPD_SERVER_H
#define LLEPD_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "admit.h"
#include "calibration.h"
#include "config.h"
#include "engine.h"
#include "frame.h"
#include "latency.h"
#include "list.h"

typedef struct llepd_server llepd_server;

/* A calibration at one layer shape (calib-shapes.h): measuring, in force or failed. */
enum llepd_shape_state { LLEPD_SHAPE_MEASURING, LLEPD_SHAPE_READY, LLEPD_SHAPE_FAILED };
typedef struct llepd_calib_shape {
    uint32_t hidden, inter;
    enum llep_dtype dtype;
    enum llepd_shape_state state;
    bool loaded;                    /* READY: read from its file at start, not measured */
    bool stored;                    /* READY: the one in its file */
    llep_calibration cal;           /* READY */
} llepd_calib_shape;
typedef struct llepd_session llepd_session;
typedef struct llepd_layer llepd_layer;
typedef struct llepd_sub llepd_sub;

/* Calls up from the lower files, registered at set-up by the file that serves them (its
 * init function names which); the caller knows only the pointer. */
typedef struct llepd_hooks {
    /* session.c: a decoded frame from a client or llepctl (handlers.c). */
    void (*frame)(llepd_session *s, const LlepPb__Frame *f);
    /* session.c: the submission eventfd fired, or a retry of a full ring is due (submit.c). */
    void (*ring)(llepd_session *s);
    /* session.c: a session starts closing: drop its queued work and layers (server.c). */
    void (*session_closing)(llepd_session *s);
    /* submit.c: a checked submission to queue on its layer (scheduler.c). */
    void (*submit)(llepd_sub *sub);
    /* layer.c, scheduler.c, cluster/: a step, a creation or queued work ended (server.c: answers
     * drains once nothing runs, stops the daemon when stopping and idle). */
    void (*work_done)(llepd_server *srv);
    /* layer.c, cluster/: a layer's creation ended; creator is NULL for a cluster layer's share
     * made here for a peer (handlers.c: replies to the creator and to waiting attaches). */
    void (*layer_created)(llepd_layer *l, llepd_session *creator, uint64_t frame_id, int status,
                          const char *msg);
    /* handlers.c: makes l a cluster-scope layer of this node (cluster/; NULL without one, then
     * scope CLUSTER is refused). Returns 0 or a negative errno with a sentence in err. */
    int (*cluster_layer_new)(llepd_layer *l, char *err, size_t errlen);
    /* handlers-ctl.c: `llepctl peers` (cluster/). count: entries peers_fill will write. */
    uint32_t (*peers_count)(const llepd_server *srv);
    void (*peers_fill)(const llepd_server *srv, LlepPb__PeersReply *pr, LlepPb__PeerInfo *info);
} llepd_hooks;

struct llepd_server {
    uv_loop_t *loop;
    llep_config cfg;
    char *socket_path;
    bool socket_owned;              /* we created the socket file and remove it at exit */
    uv_pipe_t listener;
    bool listening;
    llepd_hooks hooks;

    llepd_list sessions;
    uint32_t nsessions;
    llepd_admit_queue admit;        /* group lookups of connecting peers (admit.h) */
    uint64_t next_session_id;
    uint64_t broadcast_seq;         /* the last broadcast (server.c) */

    llepd_list models;              /* llepd_model (models.c), in load order */
    llepd_layer **layers;           /* in creation order */
    uint32_t nlayers;
    size_t cap_layers;
    uint32_t next_layer_id;
    uint32_t running_steps;         /* on the thread pool, all layers */
    uint32_t running_creates;

    /* Devices: every layer's engine runs on these P logical devices, one backend instance and
     * one memory account per device for all layers (opened by llepd_server_init). */
    enum llep_backend_kind backend;
    const llep_backend_ops *backend_ops;
    uint32_t devices;
    uint64_t device_memory;         /* per device, all layers together; 0: held + 1 GiB */
    llep_devices *devs;
    /* The devices' calibration in force (calib.c): measured or loaded at start, replaced by
     * `llepctl tune`; whether it is the one stored in the state directory; tunes running. */
    llep_calibration calibration;
    bool have_calibration, calibration_stored;
    uint32_t running_tunes;
    /* The calibrations at the layers' shapes (calib-shapes.c), in the order first wanted;
     * their models are in the devices' table too, where steps find them. */
    llepd_calib_shape shapes[LLEP_DEVICES_COST_SHAPES];
    uint32_t nshapes;
    bool shapes_full_told;          /* "no room for another shape" logged once */
    llep_calibration shapes_now;    /* what the devices are, for the stored files */
    bool have_shapes_now;
    uint32_t running_shape_calibs;

    uint64_t start_ns;
    bool draining, stopping;
    enum llep_policy default_policy;  /* `llepctl set policy=...` without a layer */

    /* Daemon-wide figures. */
    uint64_t steps, ep_steps, llep_steps;
    uint64_t weight_bytes_moved, token_bytes_moved;
    uint32_t refused;               /* submissions refused while draining */
    /* Errors by kind since start, for the metrics endpoint (metrics.c): node- and
     * cluster-scope steps that failed, queued submissions failed without a step
     * (timeouts, no memory), connections refused. */
    uint64_t failed_steps, failed_submissions, refused_connections;
    uint64_t *device_peak;          /* [P] */
    llepd_latency latency;
    uint64_t *last_dev_tokens;      /* [P] of the most recent step of any layer */
    uint64_t *last_dev_busy_ns;     /* [P] */
    uint64_t *dev_busy_ns;          /* [P] every step's busy time on the device since start */

    /* llepctl drain requests waiting for the running steps to finish. */
    struct llepd_drain_waiter *drain_waiters;
    uint32_t ndrain_waiters;

    void (*on_idle_after_stop)(llepd_server *srv);  /* called when stopping and nothing runs */

    struct llepd_cluster *cluster;  /* peer links, set up by cluster/ (opaque here) */
    struct llepd_metrics *metrics;  /* the metrics endpoint (metrics.h), NULL when off */
};

/* Sets up the state, opens the devices (cfg's backend, devices and device memory) and
 * registers the hooks of server.c, scheduler.c and submit.c. */
int llepd_server_init(llepd_server *srv, uv_loop_t *loop, const llep_config *cfg,
                      char *err, size_t errlen);
/* Listens on srv->socket_path, or on an inherited descriptor when fd >= 0. */
int llepd_server_listen(llepd_server *srv, int fd, char *err, size_t errlen);
/* Stops accepting, refuses new work, tells clients; the loop ends once steps have finished. */
void llepd_server_stop(llepd_server *srv, const char *why);
void llepd_server_fini(llepd_server *srv);

/* `llepctl drain`: starts draining (telling the clients) and answers the request, with the
 * steps that finished meanwhile, once nothing runs or waits. */
int llepd_server_drain(llepd_server *srv, llepd_session *s, uint64_t frame_id);

#endif
