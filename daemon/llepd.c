/* llepd: the per-node daemon that owns the devices and runs MoE layer steps for its clients.
 *
 * main() only wires the subsystems together in order (options, log, server, signals) and
 * tears them down in reverse; the work is in server.c, session.c, handlers*.c and sched.c. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "llep-config.h"
#include "log.h"
#include "server.h"

/* Logical devices of the CPU backend when --devices is not given. */
#define CPU_DEFAULT_DEVICES 4u

typedef struct daemon_state {
    llepd_server srv;
    uv_signal_t sigterm, sigint, sighup;
    const char *config_file;
    int exit_code;
} daemon_state;

static daemon_state *state_of(llepd_server *srv) {
    return llepd_container_of(srv, daemon_state, srv);
}

static void close_signals(llepd_server *srv) {
    daemon_state *d = state_of(srv);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sighup, NULL);
}

static void on_stop_signal(uv_signal_t *h, int signum) {
    daemon_state *d = h->data;
    sd_notify(0, "STOPPING=1");
    llepd_server_stop(&d->srv, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* SIGHUP re-reads the config file and applies what can change while clients are connected:
 * alpha, lambda, min_tokens and the log level. A file with any error is refused whole and the
 * settings in force stay. */
static void on_reload(uv_signal_t *h, int signum) {
    daemon_state *d = h->data;
    llep_config c;
    char err[512] = "";

    (void)signum;
    if (!d->config_file) {
        log_notice("SIGHUP: no --config file to reload");
        return;
    }
    sd_notify(0, "RELOADING=1");
    llep__config_init(&c);
    int r = llep__config_load_file(&c, d->config_file, err, sizeof(err));
    if (r < 0) {
        log_error("reload refused, keeping the settings in force: %s", err);
    } else {
        d->srv.cfg.alpha = c.alpha;
        d->srv.cfg.lambda = c.lambda;
        d->srv.cfg.min_tokens = c.min_tokens;
        d->srv.cfg.log_level = c.log_level;
        llep__log_set_level(c.log_level);
        log_notice("reloaded %s: alpha %g, lambda %g, min-tokens %u, log-level %s",
                   d->config_file, c.alpha, c.lambda, c.min_tokens,
                   llep__log_level_name(c.log_level));
    }
    llep__config_fini(&c);
    sd_notify(0, "READY=1");
}

static int choose_backend(llep_config *cfg) {
    if (cfg->backend == LLEP_BACKEND_CUDA) {
        log_error("--backend cuda: this llepd has no CUDA backend yet; use --backend cpu");
        return -ENODEV;
    }
    if (cfg->backend == LLEP_BACKEND_AUTO)
        log_notice("backend auto: no CUDA backend in this build, using the CPU backend");
    cfg->backend = LLEP_BACKEND_CPU;
    if (cfg->devices == 0)
        cfg->devices = CPU_DEFAULT_DEVICES;
    return 0;
}

/* systemd socket activation hands over the listening socket as fd 3. */
static int inherited_socket(void) {
    int n = sd_listen_fds(1);
    if (n < 0) {
        log_error("LISTEN_FDS: %s", strerror(-n));
        return n;
    }
    if (n > 1) {
        log_error("socket activation passed %d sockets; llepd uses exactly one", n);
        return -EINVAL;
    }
    return n == 1 ? SD_LISTEN_FDS_START : -1;
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

static int run(llep_config *cfg, const char *config_file) {
    daemon_state *d = calloc(1, sizeof(*d));
    uv_loop_t *loop = uv_default_loop();
    char err[512] = "";
    int r, fd = -1;

    if (!d)
        return 1;
    d->config_file = config_file;
    r = llepd_server_init(&d->srv, loop, cfg, err, sizeof(err));
    if (r == 0)
        r = fd = inherited_socket();
    if (r >= -1)
        r = llepd_server_listen(&d->srv, fd, err, sizeof(err));
    if (r < 0) {
        log_error("%s", err[0] ? err : strerror(-r));
        llepd_server_fini(&d->srv);
        free(d);
        return 1;
    }
    r = start_signals(d, loop);
    if (r < 0) {
        log_error("signals: %s", uv_strerror(r));
        llepd_server_fini(&d->srv);
        free(d);
        return 1;
    }
    d->srv.on_idle_after_stop = close_signals;
    log_notice("llepd %s listening on %s: backend cpu, %u devices%s", LLEP_VERSION,
               d->srv.socket_path, d->srv.devices, fd >= 0 ? " (socket activation)" : "");
    sd_notify(0, "READY=1");
    uv_run(loop, UV_RUN_DEFAULT);
    llepd_server_fini(&d->srv);
    uv_loop_close(loop);
    free(d);
    log_notice("stopped");
    return 0;
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
    r = choose_backend(&cfg);
    if (r == 0)
        r = run(&cfg, cfg.config_file);
    else
        r = 1;
    llep__config_fini(&cfg);
    return r;
}
