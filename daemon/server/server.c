/* The server: the listening socket, the daemon-wide state and an orderly stop. */
#include "server.h"

#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cluster-layer.h"
#include "layer.h"
#include "log.h"

uint64_t llepd_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void llepd_latency_add(llepd_latency *l, uint64_t us) {
    l->us[l->count % LLEPD_LAT_SAMPLES] = us;
    l->count++;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sorting a copy of at most 4096 samples per llepctl request costs far less than the request. */
uint64_t llepd_latency_percentile(const llepd_latency *l, double p) {
    uint64_t n = l->count < LLEPD_LAT_SAMPLES ? l->count : LLEPD_LAT_SAMPLES;
    uint64_t tmp[LLEPD_LAT_SAMPLES];

    if (n == 0)
        return 0;
    memcpy(tmp, l->us, n * sizeof(*tmp));
    qsort(tmp, n, sizeof(*tmp), cmp_u64);
    uint64_t i = (uint64_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return tmp[i < n ? i : n - 1];
}

int llepd_server_init(llepd_server *srv, uv_loop_t *loop, const llep_config *cfg, char *err,
                      size_t errlen) {
    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->cfg = *cfg;
    srv->cfg.socket_path = NULL;   /* owned by the caller's config; we keep our own copy */
    srv->cfg.config_file = NULL;
    srv->socket_path = strdup(cfg->socket_path);
    llepd_list_init(&srv->sessions);
    srv->next_session_id = 1;
    srv->next_layer_id = 1;
    srv->start_ns = llepd_now_ns();
    srv->backend = cfg->backend;
    srv->devices = cfg->devices;
    srv->device_memory = cfg->device_memory;
    struct group *g = getgrnam("llep");
    srv->admin_gid = g ? g->gr_gid : (gid_t)-1;
    size_t p = srv->devices ? srv->devices : 1;
    srv->device_peak = calloc(p, sizeof(*srv->device_peak));
    srv->last_dev_tokens = calloc(p, sizeof(*srv->last_dev_tokens));
    srv->last_dev_busy_ns = calloc(p, sizeof(*srv->last_dev_busy_ns));
    if (!srv->socket_path || !srv->device_peak || !srv->last_dev_tokens ||
        !srv->last_dev_busy_ns) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return 0;
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

static void close_layer_timers(llepd_server *srv) {
    for (uint32_t i = 0; i < srv->nlayers; i++) {
        llepd_layer *l = srv->layers[i];
        if (!uv_is_closing((uv_handle_t *)&l->group_timer))
            uv_close((uv_handle_t *)&l->group_timer, NULL);
        llepd_clayer_close_timers(l);
    }
}

void llepd_server_check_idle(llepd_server *srv) {
    if (!srv->stopping || srv->running_steps || srv->running_creates)
        return;
    for (uint32_t i = 0; i < srv->nlayers; i++)
        if (srv->layers[i]->queued)
            return; /* accepted work still runs before the daemon goes */
    llepd_drain_check(srv);
    close_all_sessions(srv, "daemon stopped");
    close_layer_timers(srv);
    if (srv->on_idle_after_stop) {
        void (*cb)(llepd_server *) = srv->on_idle_after_stop;
        srv->on_idle_after_stop = NULL;
        cb(srv);
    }
}

/* Tells every client, stops taking connections and new work; steps already accepted finish,
 * then llepd_server_check_idle() closes the rest and the loop runs dry. */
void llepd_server_stop(llepd_server *srv, const char *why) {
    if (srv->stopping)
        return;
    log_notice("stopping: %s", why);
    srv->stopping = srv->draining = true;
    stop_listening(srv);

    Llep__Notice notice = LLEP__NOTICE__INIT;
    Llep__Frame f = LLEP__FRAME__INIT;
    char msg[160];
    snprintf(msg, sizeof(msg), "llepd is stopping (%s): running steps finish, no new work",
             why);
    notice.status = LLEP__STATUS__STATUS_SHUTTING_DOWN;
    notice.message = msg;
    f.body_case = LLEP__FRAME__BODY_NOTICE;
    f.notice = &notice;
    for (llepd_list *i = srv->sessions.next; i != &srv->sessions; i = i->next)
        llepd_session_send(llepd_container_of(i, llepd_session, link), &f);
    llepd_server_check_idle(srv);
}

void llepd_server_fini(llepd_server *srv) {
    stop_listening(srv);
    llepd_layer_free_all(srv);
    free(srv->device_peak);
    free(srv->last_dev_tokens);
    free(srv->last_dev_busy_ns);
    free(srv->drain_waiters);
    free(srv->socket_path);
}
