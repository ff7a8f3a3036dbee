/* The server: the listening socket, the daemon-wide state, drains and an orderly stop
 * (server.h). */
#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "backend-select.h"
#include "errbuf.h"
#include "layer.h"
#include "log.h"
#include "scheduler.h"
#include "session.h"
#include "submit.h"

static void session_closing(llepd_session *s);
static void work_done(llepd_server *srv);

/* The devices every layer's engine runs on: one instance of the backend chosen at start (its
 * worker threads, streams and handles exist once however many layers there are), and one
 * memory account per device with --device-memory as the budget of all layers together. */
static int open_devices(llepd_server *srv, char *err, size_t errlen) {
    const llep_backend_ops *ops = llep__backend_ops_of(srv->backend);
    char msg[256] = "";

    if (!ops)
        return llep__errf(err, errlen, -ENODEV, "this llepd was built without the CUDA backend");
    srv->backend_ops = ops;
    if (srv->devices == 0)
        return 0; /* no devices: every layer is refused */
    llep_devices_config dc = {
        .backend = ops, .num_devices = srv->devices,
        .backend_devices = srv->cfg.devices_spec[0] ? srv->cfg.devices_spec : NULL,
        .budget = srv->device_memory,
        .replica_cache = srv->cfg.replica_cache == LLEP_CONFIG_CACHE_AUTO
                             ? LLEP_DEVICES_CACHE_AUTO : srv->cfg.replica_cache,
    };
    int r = llep__devices_new(&dc, &srv->devs, msg, sizeof(msg));
    if (r < 0)
        return llep__errf(err, errlen, r, "cannot open the devices: %s", msg);
    return 0;
}

int llepd_server_init(llepd_server *srv, uv_loop_t *loop, const llep_config *cfg, char *err,
                      size_t errlen) {
    memset(srv, 0, sizeof(*srv));
    srv->hooks.session_closing = session_closing;
    srv->hooks.work_done = work_done;
    llepd_sched_init(srv);
    llepd_submit_init(srv);
    srv->loop = loop;
    srv->cfg = *cfg;
    srv->cfg.socket_path = NULL;   /* owned by the caller's config; we keep our own copy */
    srv->cfg.config_file = NULL;
    srv->socket_path = strdup(cfg->socket_path);
    llepd_list_init(&srv->sessions);
    llepd_admit_init(&srv->admit, loop);
    llepd_list_init(&srv->models);
    srv->next_session_id = 1;
    srv->next_layer_id = 1;
    srv->start_ns = llepd_now_ns();
    srv->backend = cfg->backend;
    srv->devices = cfg->devices;
    srv->device_memory = cfg->device_memory;
    size_t p = srv->devices ? srv->devices : 1;
    srv->device_peak = calloc(p, sizeof(*srv->device_peak));
    srv->last_dev_tokens = calloc(p, sizeof(*srv->last_dev_tokens));
    srv->last_dev_busy_ns = calloc(p, sizeof(*srv->last_dev_busy_ns));
    srv->dev_busy_ns = calloc(p, sizeof(*srv->dev_busy_ns));
    if (!srv->socket_path || !srv->device_peak || !srv->last_dev_tokens ||
        !srv->last_dev_busy_ns || !srv->dev_busy_ns) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return open_devices(srv, err, errlen);
}

static void on_connection(uv_stream_t *listener, int status) {
    llepd_server *srv = listener->data;

    if (status < 0) {
        log_warning("accepting a connection failed: %s", uv_strerror(status));
        return;
    }
    llepd_session_accept(srv);
}

/* A socket file left by a daemon that died is removed; one that still answers belongs to a
 * running daemon, and anything that is not a socket is not ours to delete. */
static int clear_stale_socket(const char *path, char *err, size_t errlen) {
    struct stat st;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    close(fd);
    if (r == 0) {
        snprintf(err, errlen, "another llepd is listening on %s", path);
        return -EADDRINUSE;
    }
    if (e != ECONNREFUSED) {
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    return unlink(path) < 0 ? -errno : 0;
}

/* The socket's directory ($XDG_RUNTIME_DIR/llep, or /run/llep without systemd) is created
 * when missing, private to the daemon's user and group. */
static int make_socket_dir(const char *path) {
    char dir[LLEP_SOCKET_PATH_MAX + 1];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');

    if (!slash || slash == dir)
        return 0;
    *slash = '\0';
    if (mkdir(dir, 0750) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int llepd_server_listen(llepd_server *srv, int fd, char *err, size_t errlen) {
    int r = uv_pipe_init(srv->loop, &srv->listener, 0);

    if (r < 0)
        goto uv_fail;
    srv->listener.data = srv;
    srv->listening = true;
    if (fd >= 0) {
        r = uv_pipe_open(&srv->listener, fd);
        if (r < 0)
            goto uv_fail;
    } else {
        r = make_socket_dir(srv->socket_path);
        if (r < 0) {
            snprintf(err, errlen, "cannot create the directory of %s: %s", srv->socket_path,
                     strerror(-r));
            return r;
        }
        r = clear_stale_socket(srv->socket_path, err, errlen);
        if (r < 0) {
            if (!err[0])
                snprintf(err, errlen, "%s: %s", srv->socket_path, strerror(-r));
            return r;
        }
        r = uv_pipe_bind(&srv->listener, srv->socket_path);
        if (r < 0)
            goto uv_fail;
        srv->socket_owned = true;
        /* Only the daemon's user and group may connect (SO_PEERCRED checks admin rights). */
        if (chmod(srv->socket_path, 0660) < 0) {
            snprintf(err, errlen, "chmod %s: %s", srv->socket_path, strerror(errno));
            return -errno;
        }
    }
    r = uv_listen((uv_stream_t *)&srv->listener, 128, on_connection);
    if (r < 0)
        goto uv_fail;
    return 0;

uv_fail:
    snprintf(err, errlen, "listening on %s: %s", srv->socket_path, uv_strerror(r));
    return r;
}

static void stop_listening(llepd_server *srv) {
    if (!srv->listening)
        return;
    srv->listening = false;
    uv_close((uv_handle_t *)&srv->listener, NULL);
    if (srv->socket_owned) {
        unlink(srv->socket_path);
        srv->socket_owned = false;
    }
}

static void close_all_sessions(llepd_server *srv, const char *why) {
    while (!llepd_list_empty(&srv->sessions)) {
        llepd_session *s = llepd_container_of(srv->sessions.next, llepd_session, link);
        llepd_session_close(s, why);
    }
}

/* Queued submissions of a closing session are dropped and its layer references go. */
static void session_closing(llepd_session *s) {
    llepd_sched_drop_session(s->srv, s);
    for (uint32_t i = 0; i < s->nlayers; i++) {
        llepd_layer *l = llepd_layer_by_id(s->srv, s->layers[i]);
        if (l)
            llepd_layer_unref(l);
    }
    s->nlayers = 0;
}

/* ---- drains ------------------------------------------------------------------------------ */

typedef struct llepd_drain_waiter {
    llepd_session *s;
    uint64_t frame_id;
    uint64_t steps_at_start;
    uint32_t refused_at_start;
} llepd_drain_waiter;

static bool busy(const llepd_server *srv) {
    if (srv->running_steps || srv->running_creates || srv->running_tunes ||
        srv->running_shape_calibs)
        return true;
    for (uint32_t i = 0; i < srv->nlayers; i++)
        if (srv->layers[i]->queued)
            return true; /* accepted work still runs before a drain is answered */
    return false;
}

/* Answers the drain requests once no step runs or waits. */
static void answer_drains(llepd_server *srv) {
    for (uint32_t i = 0; i < srv->ndrain_waiters; i++) {
        llepd_drain_waiter *w = &srv->drain_waiters[i];
        LlepPb__DrainReply dr = LLEP_PB__DRAIN_REPLY__INIT;
        dr.message = (char *)"";
        dr.steps_finished = (uint32_t)(srv->steps - w->steps_at_start);
        dr.submissions_refused = srv->refused - w->refused_at_start;
        llepd_session_reply(w->s, w->frame_id, LLEP_PB__FRAME__BODY_DRAIN_REPLY, &dr);
        llepd_session_unref(w->s);
    }
    srv->ndrain_waiters = 0;
}

/* Sends f to every session (clients only, or llepctl sessions too), once each. A send that
 * fails closes its session, and closing one can close others (a stopping server closes all
 * of them once idle), so no pointer into the list is kept across a send: each round walks
 * from the head to the first session this broadcast has not reached. */
static void broadcast(llepd_server *srv, const LlepPb__Frame *f, bool clients_only) {
    uint64_t seq = ++srv->broadcast_seq;

    for (;;) {
        llepd_session *s = NULL;
        for (llepd_list *i = srv->sessions.next; i != &srv->sessions && !s; i = i->next) {
            llepd_session *o = llepd_container_of(i, llepd_session, link);
            if (o->broadcast_seq != seq)
                s = o;
        }
        if (!s)
            return;
        s->broadcast_seq = seq;
        if (!clients_only || s->kind == LLEP_PB__PEER_KIND__PEER_KIND_CLIENT)
            llepd_session_send(s, f);
    }
}

static void tell_clients_draining(llepd_server *srv) {
    LlepPb__Notice notice = LLEP_PB__NOTICE__INIT;
    LlepPb__Frame nf = LLEP_PB__FRAME__INIT;

    notice.status = LLEP_PB__STATUS__STATUS_SHUTTING_DOWN;
    notice.message = (char *)"llepd is draining: no new submissions or layers";
    nf.body_case = LLEP_PB__FRAME__BODY_NOTICE;
    nf.notice = &notice;
    broadcast(srv, &nf, true);
}

int llepd_server_drain(llepd_server *srv, llepd_session *s, uint64_t frame_id) {
    llepd_drain_waiter *v = realloc(srv->drain_waiters,
                                    (srv->ndrain_waiters + 1) * sizeof(*v));

    if (!v)
        return -ENOMEM;
    srv->drain_waiters = v;
    v[srv->ndrain_waiters++] = (llepd_drain_waiter){ s, frame_id, srv->steps, srv->refused };
    llepd_session_ref(s);
    if (!srv->draining) {
        srv->draining = true;
        log_notice("draining on request of client %llu (uid %u)", (unsigned long long)s->id,
                   (unsigned)s->cred.uid);
        tell_clients_draining(srv);
    }
    work_done(srv);
    return 0;
}

/* ---- stopping ---------------------------------------------------------------------------- */

/* Called whenever a step or creation finishes or work is dropped: answers drains once nothing
 * runs or waits, and when stopping and idle ends the loop. */
static void work_done(llepd_server *srv) {
    if (busy(srv))
        return;
    if (srv->ndrain_waiters)
        answer_drains(srv);
    if (!srv->stopping)
        return;
    close_all_sessions(srv, "daemon stopped");
    llepd_layer_close_all(srv);
    if (srv->on_idle_after_stop) {
        void (*cb)(llepd_server *) = srv->on_idle_after_stop;
        srv->on_idle_after_stop = NULL;
        cb(srv);
    }
}

/* Tells every client, stops taking connections and new work; steps already accepted finish,
 * then work_done() closes the rest and the loop runs dry. */
void llepd_server_stop(llepd_server *srv, const char *why) {
    if (srv->stopping)
        return;
    log_notice("stopping: %s", why);
    srv->stopping = srv->draining = true;
    stop_listening(srv);

    LlepPb__Notice notice = LLEP_PB__NOTICE__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    char msg[160];
    snprintf(msg, sizeof(msg), "llepd is stopping (%s): running steps finish, no new work",
             why);
    notice.status = LLEP_PB__STATUS__STATUS_SHUTTING_DOWN;
    notice.message = msg;
    f.body_case = LLEP_PB__FRAME__BODY_NOTICE;
    f.notice = &notice;
    broadcast(srv, &f, false);
    work_done(srv);
}

void llepd_server_fini(llepd_server *srv) {
    stop_listening(srv);
    llepd_layer_free_all(srv);
    llep__devices_free(srv->devs); /* after every engine on them */
    srv->devs = NULL;
    free(srv->device_peak);
    free(srv->last_dev_tokens);
    free(srv->last_dev_busy_ns);
    free(srv->dev_busy_ns);
    free(srv->drain_waiters);
    free(srv->socket_path);
}
