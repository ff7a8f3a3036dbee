/* llepd: the per-node daemon that owns the devices and runs MoE layer steps for its clients.
 *
 * main() only wires the subsystems together in order (options, log, server, signals, systemd
 * notifications) and tears them down in reverse; the work is in server.c, session.c,
 * handlers*.c, scheduler.c and notify.c. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <uv.h>

#include "backend-select.h"
#include "calib-shapes.h"
#include "calib.h"
#include "cluster-layer.h"
#include "cluster.h"
#include "config.h"
#include "handlers.h"
#include "llep-config.h"
#include "log.h"
#include "metrics.h"
#include "models-config.h"
#include "models.h"
#include "notify.h"
#include "server.h"

/* Logical devices of the CPU backend when --devices is not given. */
#define CPU_DEFAULT_DEVICES 4u

typedef struct daemon_state {
    llepd_server srv;
    uv_signal_t sigterm, sigint, sighup;
    llepd_notify notify;
    const char *config_file;
    int argc;                       /* the command line, re-applied over the file on SIGHUP */
    char **argv;
    bool activated;                 /* the socket came from systemd (llepd.socket) */
    int exit_code;
} daemon_state;

static daemon_state *state_of(llepd_server *srv) {
    return llepd_container_of(srv, daemon_state, srv);
}

static volatile sig_atomic_t early_signal;

static void on_early_signal(int signum) {
    early_signal = signum;
}

/* Until start_signals() runs, SIGTERM, SIGINT and SIGHUP are only noted (the last one wins;
 * they all come to one stop or reload). uv_signal_start() puts libuv's own handler in place of
 * this one; closing the handles puts back the default action, so close_handles() notes them
 * again: a second SIGTERM while llepd tears down must not kill it half way. */
static void note_early_signals(void) {
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_early_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

/* Once stopped and idle, the handles main() opened are closed so the loop runs dry. */
static void close_handles(llepd_server *srv) {
    daemon_state *d = state_of(srv);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sighup, NULL);
    note_early_signals();  /* stopping already: later ones change nothing */
    llepd_notify_close(&d->notify);
    llepd_metrics_close(srv);
    llepd_cluster_close(srv->cluster);
}

static void on_stop_signal(uv_signal_t *h, int signum) {
    daemon_state *d = h->data;
    const char *why = signum == SIGTERM ? "SIGTERM" : "SIGINT";

    llepd_notify_stopping(&d->notify, why);
    llepd_server_stop(&d->srv, why);
}

/* The settings that only a restart changes: say so rather than ignore an edit silently. */
static void note_restart_only(const daemon_state *d, const llep_config *next) {
    const llepd_server *srv = &d->srv;

    if (!d->activated && next->socket_path && strcmp(next->socket_path, srv->socket_path) != 0)
        log_notice("reload: a new 'socket' takes effect at the next start");
    if (next->backend != LLEP_BACKEND_AUTO && next->backend != srv->backend)
        log_notice("reload: a new 'backend' takes effect at the next start");
    if (next->devices && next->devices != srv->devices)
        log_notice("reload: a new 'devices' takes effect at the next start");
    if (next->device_memory && next->device_memory != srv->device_memory)
        log_notice("reload: a new 'device-memory' takes effect at the next start");
    if (next->have_node_id != srv->cfg.have_node_id || next->node_id != srv->cfg.node_id ||
        llep__peers_hash(next) != llep__peers_hash(&srv->cfg) ||
        next->peer_heartbeat_ms != srv->cfg.peer_heartbeat_ms ||
        next->peer_timeout_ms != srv->cfg.peer_timeout_ms)
        log_notice("reload: new cluster settings take effect at the next start");
    if (strcmp(next->state_dir, srv->cfg.state_dir) != 0)
        log_notice("reload: a new 'state-dir' takes effect at the next start");
    const llep_peer_addr *ma = &next->metrics_listen, *mb = &srv->cfg.metrics_listen;
    if (next->have_metrics_listen != srv->cfg.have_metrics_listen ||
        (next->have_metrics_listen &&
         (ma->port != mb->port || strcmp(ma->host, mb->host) != 0)))
        log_notice("reload: a new 'metrics-listen' takes effect at the next start");
}

/* SIGHUP re-reads the config file and applies what can change while clients are connected:
 * alpha, lambda, min_tokens, scale_min_tokens, planner, the log level, metrics-expert-loads,
 * keep-host-weights (for layers created later), calibrate-shapes (for shapes new after it)
 * and the models (loaded and unloaded as the file now lists them). The settings are rebuilt as at
 * start, the file first and the command line over it, so an option given to llepd keeps
 * winning. A file with any error is refused whole and the settings in force stay. */
static void on_reload(uv_signal_t *h, int signum) {
    daemon_state *d = h->data;
    llep_config c;
    char err[512] = "";

    (void)signum;
    if (!d->config_file) {
        log_notice("SIGHUP: no --config file to reload");
        return;
    }
    llepd_notify_reloading(&d->notify);
    llep__config_init(&c);
    int r = llep__config_parse_args(&c, d->argc, d->argv, err, sizeof(err));
    if (r < 0) {
        log_error("reload refused, keeping the settings in force: %s", err);
    } else {
        note_restart_only(d, &c);
        d->srv.cfg.alpha = c.alpha;
        d->srv.cfg.lambda = c.lambda;
        d->srv.cfg.min_tokens = c.min_tokens;
        d->srv.cfg.scale_min_tokens = c.scale_min_tokens;
        d->srv.cfg.planner = c.planner;
        d->srv.cfg.log_level = c.log_level;
        d->srv.cfg.metrics_expert_loads = c.metrics_expert_loads;
        d->srv.cfg.keep_host_weights = c.keep_host_weights;   /* for layers created later */
        d->srv.cfg.calibrate_shapes = c.calibrate_shapes;     /* for shapes new after it */
        llep__log_set_level(c.log_level);
        llepd_models_reload(&d->srv, &d->srv.cfg, &c);
        memcpy(d->srv.cfg.models, c.models, sizeof(c.models));
        d->srv.cfg.nmodels = c.nmodels;
        log_notice("reloaded %s: alpha %g, lambda %g, min-tokens %u, log-level %s",
                   d->config_file, c.alpha, c.lambda, c.min_tokens,
                   llep__log_level_name(c.log_level));
    }
    llep__config_fini(&c);
    llepd_notify_reloaded(&d->notify, r < 0 ? err : NULL);
}

/* OpenBLAS falls back to its oldest x86 kernels (Prescott, SSE3) on CPUs newer than it knows,
 * about 5x slower than what the CPU can do (docs/PERFORMANCE.md); say how to fix that. */
static void check_blas_core(void) {
    const char *core = llep__backend_cpu_blas_core();

    if (!core)
        return;
    log_info("CPU backend: OpenBLAS uses its %s kernels", core);
#if defined(__x86_64__)
    if (strcasecmp(core, "Prescott") == 0 && __builtin_cpu_supports("avx2"))
        log_notice("OpenBLAS did not recognise this CPU and uses its slow Prescott kernels; "
                   "start llepd with OPENBLAS_CORETYPE=%s for about 5x faster expert GEMMs",
                   __builtin_cpu_supports("avx512f") ? "SkylakeX" : "Haswell");
#endif
}

/* Picks the backend and its devices (backend-select.h): --backend cuda without a usable GPU
 * is an error, auto falls back to the CPU and says so. The choice goes into cfg for the
 * server; the spec text stays in cfg->devices_spec for every engine the layers create. */
static int choose_backend(llep_config *cfg, const llep_backend_ops **ret_ops) {
    llep_backend_options bo;
    char count[16] = "", msg[256] = "";
    const char *spec = cfg->devices_spec[0] ? cfg->devices_spec : NULL;

    if (!spec && cfg->devices) {
        snprintf(count, sizeof(count), "%u", cfg->devices);
        spec = count;
    }
    int r = llep__backend_select(cfg->backend, spec, ret_ops, &bo, msg, sizeof(msg));
    if (r < 0) {
        log_error("%s", msg);
        return r;
    }
    log_notice("%s", msg);
    cfg->backend = strcmp((*ret_ops)->name, "cuda") == 0 ? LLEP_BACKEND_CUDA : LLEP_BACKEND_CPU;
    if (cfg->backend == LLEP_BACKEND_CPU)
        check_blas_core();
    cfg->devices = bo.num_devices ? bo.num_devices : CPU_DEFAULT_DEVICES;
    if (bo.mem_per_device && (!cfg->device_memory || cfg->device_memory > bo.mem_per_device))
        cfg->device_memory = bo.mem_per_device;
    return 0;
}

/* systemd socket activation hands over the listening socket as fd 3 (llepd.socket). Returns
 * the descriptor, -1 when there is none (llepd then binds --socket itself), or a negative
 * errno below -1. The socket's own address replaces the configured path, so the log and
 * `llepctl status` name the socket clients really use. */
static int inherited_socket(llep_config *cfg) {
    struct sockaddr_un sa;
    socklen_t len = sizeof(sa);
    int n = sd_listen_fds(1), fd = SD_LISTEN_FDS_START;

    if (n < 0) {
        log_error("LISTEN_FDS: %s", strerror(-n));
        return n;
    }
    if (n == 0)
        return -1;
    if (n > 1) {
        log_error("socket activation passed %d sockets; llepd uses exactly one", n);
        return -EINVAL;
    }
    if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
        log_error("socket activation: fd %d is not a listening unix stream socket", fd);
        return -ENOTSOCK;
    }
    memset(&sa, 0, sizeof(sa));
    if (getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && sa.sun_path[0] &&
        len > offsetof(struct sockaddr_un, sun_path)) {
        char *path = strndup(sa.sun_path, len - offsetof(struct sockaddr_un, sun_path));

        if (path) {
            free(cfg->socket_path);
            cfg->socket_path = path;
        }
    }
    return fd;
}

static int start_signals(daemon_state *d, uv_loop_t *loop) {
    uv_signal_init(loop, &d->sigterm);
    uv_signal_init(loop, &d->sigint);
    uv_signal_init(loop, &d->sighup);
    d->sigterm.data = d->sigint.data = d->sighup.data = d;
    int r = uv_signal_start(&d->sigterm, on_stop_signal, SIGTERM);
    if (r == 0)
        r = uv_signal_start(&d->sigint, on_stop_signal, SIGINT);
    if (r == 0)
        r = uv_signal_start(&d->sighup, on_reload, SIGHUP);
    return r;
}

/* Brings the subsystems up in order: server, handlers, peer links and cluster layers, the
 * listening socket, signals, systemd notifications, the metrics endpoint. On failure err
 * says why; teardown() undoes whatever was done. */
static int setup(daemon_state *d, uv_loop_t *loop, llep_config *cfg,
                 const llep_backend_ops *ops, int fd, char *err, size_t errlen) {
    int r = llepd_server_init(&d->srv, loop, cfg, err, errlen);

    d->srv.backend_ops = ops;
    if (r < 0)
        return r;
    /* The devices' cost model, stored or measured, before anything is served (and so before
     * READY=1): the first step plans with it. */
    llepd_calib_start(&d->srv);
    llepd_calib_shapes_init(&d->srv);  /* for the layers' shapes (calib-shapes.h) */
    llepd_handlers_init(&d->srv);
    /* Peer links first: once the unix socket accepts, the peer port accepts too. */
    r = llepd_cluster_init(&d->srv, err, errlen);
    if (r < 0)
        return r;
    llepd_clayers_init(&d->srv);
    r = llepd_server_listen(&d->srv, fd, err, errlen);
    if (r < 0)
        return r;
    r = start_signals(d, loop);
    if (r == 0)
        r = llepd_notify_init(&d->notify, &d->srv);
    if (r < 0) {
        snprintf(err, errlen, "signals and timers: %s", uv_strerror(r));
        return r;
    }
    /* Signal, notify and metrics handles close once the server is idle after a stop
     * (close_handles), so that the loop runs dry. */
    d->srv.on_idle_after_stop = close_handles;
    /* Last, so that nothing after it can fail and leave its handles open: metrics (off
     * unless --metrics-listen; a port in use stops llepd here, naming it). */
    return llepd_metrics_start(&d->srv, err, errlen);
}

/* The one place llepd is taken down, in reverse order of setup(): models, cluster, server,
 * loop. */
static void teardown(daemon_state *d, uv_loop_t *loop) {
    llepd_models_fini(&d->srv);
    llepd_cluster_fini(d->srv.cluster);
    d->srv.cluster = NULL;
    llepd_server_fini(&d->srv);
    uv_loop_close(loop);
    free(d);
}

/* The configured models are loaded (or one failed): only now is llepd ready for systemd, so
 * that units ordered after it find every model there. A model that cannot be loaded at start
 * stops llepd: its configuration is wrong, and saying so at once beats serving without it. */
static void on_models_started(llepd_server *srv, int status, const char *msg, void *data) {
    daemon_state *d = data;

    if (status < 0) {
        log_error("%s", msg);
        d->exit_code = 1;
        llepd_notify_stopping(&d->notify, "a configured model could not be loaded");
        llepd_server_stop(srv, "a configured model could not be loaded");
        return;
    }
    if (srv->cfg.nmodels)
        log_notice("%u configured model%s loaded", srv->cfg.nmodels,
                   srv->cfg.nmodels == 1 ? "" : "s");
    /* The socket listens already: a client connecting after READY=1 is accepted. */
    llepd_notify_ready(&d->notify);
}

static int run(llep_config *cfg, const llep_backend_ops *ops, int argc, char **argv) {
    daemon_state *d = calloc(1, sizeof(*d));
    uv_loop_t *loop = uv_default_loop();
    char err[512] = "";
    int r, fd;

    if (!d)
        return 1;
    d->config_file = cfg->config_file;
    d->argc = argc;
    d->argv = argv;
    fd = inherited_socket(cfg);
    if (fd < -1) {
        free(d);
        return 1;
    }
    d->activated = fd >= 0;
    /* The socket accepts before setup() has started the signal handles, and whoever connected
     * may send SIGTERM at once (a supervisor, a test): noted until the handles run, it stops
     * llepd cleanly instead of killing it. Blocking the signals would not do: threads that
     * exist before main() (OpenBLAS's) would take them with the default action. */
    note_early_signals();
    r = setup(d, loop, cfg, ops, fd, err, sizeof(err));
    if (r == 0 && early_signal)
        kill(getpid(), early_signal);  /* to the loop's handles, which replaced ours */
    if (r < 0) {
        log_error("%s", err[0] ? err : strerror(-r));
        teardown(d, loop);
        return 1;
    }
    log_notice("llepd %s listening on %s: backend %s, %u devices%s", LLEP_VERSION,
               d->srv.socket_path, ops->name, d->srv.devices,
               fd >= 0 ? " (socket activation)" : "");
    if (llepd_models_start(&d->srv, &d->srv.cfg, on_models_started, d) < 0) {
        log_error("out of memory loading the configured models");
        teardown(d, loop);
        return 1;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    r = d->exit_code;
    teardown(d, loop);
    log_notice("stopped");
    return r;
}

int main(int argc, char **argv) {
    llep_config cfg;
    char err[512] = "";
    int r;

    signal(SIGPIPE, SIG_IGN);
    llep__config_init(&cfg);
    r = llep__config_parse_args(&cfg, argc, argv, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "llepd: %s\nTry 'llepd --help'.\n", err);
        llep__config_fini(&cfg);
        return 2;
    }
    if (cfg.help || cfg.version) {
        if (cfg.help)
            llep__config_usage(stdout, "llepd");
        else
            printf("llepd %s\n", LLEP_VERSION);
        llep__config_fini(&cfg);
        return 0;
    }
    llep__log_init(cfg.log_level);
    const llep_backend_ops *ops;
    r = choose_backend(&cfg, &ops);
    if (r == 0)
        r = run(&cfg, ops, argc, argv);
    else
        r = r == -EINVAL ? 2 : 1;
    llep__config_fini(&cfg);
    return r;
}
