/* The metrics endpoint (metrics.h): libmicrohttpd driven by llepd's loop, and the exposition
 * text written from the figures llepctl stats, devices and peers read. */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "layer.h"
#include "llep-config.h"
#include "log.h"
#include "scheduler.h"

/* Connections at once, and seconds an idle one is kept: a scraper needs one. */
#define METRICS_CONNECTIONS 32u
#define METRICS_IDLE_S 10u

struct llepd_metrics {
    llepd_server *srv;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;         /* libmicrohttpd's epoll descriptor */
    uv_timer_t timer;       /* its next timeout */
    int open_handles;       /* closed ones free the struct when this reaches 0 */
};

/* ---- the exposition text ---------------------------------------------------------------- */

/* HELP and TYPE lines of one metric family. */
static void family(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with backslash, double quote and newline escaped, as the format asks. */
static void label_value(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fputc('\\', f);
        if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

static void layer_sample(FILE *f, const char *name, const llepd_layer *l, const char *extra,
                         const char *fmt, ...) {
    va_list ap;

    fprintf(f, "%s{layer=\"", name);
    label_value(f, l->name);
    fprintf(f, "\"%s} ", extra ? extra : "");
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
}

static bool layer_live(const llepd_layer *l) {
    return !l->dead && !l->creating;
}

static void write_node(FILE *f, const llepd_server *srv) {
    uint32_t live = 0;

    for (uint32_t i = 0; i < srv->nlayers; i++)
        live += layer_live(srv->layers[i]);
    family(f, "llep_build_info", "gauge", "llepd's version and backend.");
    fprintf(f, "llep_build_info{version=\"%s\",backend=\"%s\"} 1\n", LLEP_VERSION,
            srv->backend_ops ? srv->backend_ops->name : "none");
    family(f, "llep_uptime_seconds", "gauge", "Seconds since llepd started.");
    fprintf(f, "llep_uptime_seconds %.3f\n", (double)(llepd_now_ns() - srv->start_ns) / 1e9);
    family(f, "llep_clients_connected", "gauge",
           "Connections to llepd's socket: clients and llepctl.");
    fprintf(f, "llep_clients_connected %u\n", srv->nsessions);
    family(f, "llep_layers", "gauge", "Layers served.");
    fprintf(f, "llep_layers %u\n", live);
    family(f, "llep_draining", "gauge", "1 while llepd drains or stops, else 0.");
    fprintf(f, "llep_draining %d\n", srv->draining || srv->stopping);
    family(f, "llep_node_steps_total", "counter",
           "Steps of every layer since start, removed layers included, by plan mode.");
    fprintf(f, "llep_node_steps_total{mode=\"ep\"} %llu\n", (unsigned long long)srv->ep_steps);
    fprintf(f, "llep_node_steps_total{mode=\"llep\"} %llu\n",
            (unsigned long long)srv->llep_steps);
    family(f, "llep_weight_bytes_moved_total", "counter",
           "Expert weight bytes copied between devices for LLEP plans since start.");
    fprintf(f, "llep_weight_bytes_moved_total %llu\n",
            (unsigned long long)srv->weight_bytes_moved);
    family(f, "llep_token_bytes_moved_total", "counter",
           "Token activation bytes moved between devices since start.");
    fprintf(f, "llep_token_bytes_moved_total %llu\n", (unsigned long long)srv->token_bytes_moved);
    family(f, "llep_errors_total", "counter", "Errors since start, by kind.");
    fprintf(f, "llep_errors_total{kind=\"refused_submission\"} %u\n", srv->refused);
    fprintf(f, "llep_errors_total{kind=\"failed_step\"} %llu\n",
            (unsigned long long)srv->failed_steps);
    fprintf(f, "llep_errors_total{kind=\"failed_submission\"} %llu\n",
            (unsigned long long)srv->failed_submissions);
    fprintf(f, "llep_errors_total{kind=\"refused_connection\"} %llu\n",
            (unsigned long long)srv->refused_connections);
}

/* The step latency histogram of every layer together (latency.h's buckets, in seconds). */
static void write_latency(FILE *f, const llepd_latency *lat) {
    uint64_t cum = 0;

    family(f, "llep_step_duration_seconds", "histogram",
           "Step latency from start to completion, every layer.");
    for (uint32_t b = 0; b < LLEPD_LAT_BUCKETS; b++) {
        cum += lat->buckets[b];
        fprintf(f, "llep_step_duration_seconds_bucket{le=\"%g\"} %llu\n",
                (double)llepd_latency_bounds_us[b] / 1e6, (unsigned long long)cum);
    }
    cum += lat->buckets[LLEPD_LAT_BUCKETS];
    fprintf(f, "llep_step_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    fprintf(f, "llep_step_duration_seconds_sum %.6f\n", (double)lat->sum_us / 1e6);
    fprintf(f, "llep_step_duration_seconds_count %llu\n", (unsigned long long)cum);
}

static void write_layers(FILE *f, const llepd_server *srv, bool expert_loads) {
    family(f, "llep_layer_steps_total", "counter", "Steps of the layer, by plan mode.");
    for (uint32_t i = 0; i < srv->nlayers; i++) {
        const llepd_layer *l = srv->layers[i];
        if (!layer_live(l))
            continue;
        layer_sample(f, "llep_layer_steps_total", l, ",mode=\"ep\"", "%llu",
                     (unsigned long long)l->ep_steps);
        layer_sample(f, "llep_layer_steps_total", l, ",mode=\"llep\"", "%llu",
                     (unsigned long long)l->llep_steps);
    }
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        { "llep_layer_tokens_total", "counter", "Tokens the layer's steps computed." },
        { "llep_layer_imbalance", "gauge",
          "Imbalance of the layer's last step: the busiest device's load over the mean." },
        { "llep_layer_imbalance_max", "gauge", "The highest imbalance of any step." },
        { "llep_layer_weight_bytes_moved_total", "counter",
          "Expert weight bytes the layer's LLEP plans copied between devices." },
        { "llep_layer_token_bytes_moved_total", "counter",
          "Token bytes the layer's steps moved between devices." },
    };
    for (size_t k = 0; k < sizeof(fam) / sizeof(fam[0]); k++) {
        family(f, fam[k].name, fam[k].type, fam[k].help);
        for (uint32_t i = 0; i < srv->nlayers; i++) {
            const llepd_layer *l = srv->layers[i];
            if (!layer_live(l))
                continue;
            switch (k) {
            case 0:
                layer_sample(f, fam[k].name, l, NULL, "%llu", (unsigned long long)l->tokens);
                break;
            case 1:
                layer_sample(f, fam[k].name, l, NULL, "%.6g", l->imbalance_last);
                break;
            case 2:
                layer_sample(f, fam[k].name, l, NULL, "%.6g", l->imbalance_max);
                break;
            case 3:
                layer_sample(f, fam[k].name, l, NULL, "%llu",
                             (unsigned long long)l->weight_bytes_moved);
                break;
            default:
                layer_sample(f, fam[k].name, l, NULL, "%llu",
                             (unsigned long long)l->token_bytes_moved);
                break;
            }
        }
    }
    if (!expert_loads)
        return;
    family(f, "llep_expert_load_tokens", "gauge",
           "Tokens routed to the expert in the layer's last step (--metrics-expert-loads).");
    for (uint32_t i = 0; i < srv->nlayers; i++) {
        const llepd_layer *l = srv->layers[i];
        if (!layer_live(l) || !l->steps || !l->last_loads)
            continue;
        for (uint32_t e = 0; e < l->desc.num_experts; e++) {
            char extra[32];
            snprintf(extra, sizeof(extra), ",expert=\"%u\"", e);
            layer_sample(f, "llep_expert_load_tokens", l, extra, "%llu",
                         (unsigned long long)l->last_loads[e]);
        }
    }
}

/* The devices' account (devices.h) as llepctl devices reads it, plus the busy time. */
static void write_devices(FILE *f, const llepd_server *srv) {
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        { "llep_device_busy_seconds_total", "counter",
          "Time the device computed for steps since start." },
        { "llep_device_memory_used_bytes", "gauge",
          "Device memory charged now: weights, replica cache and running steps." },
        { "llep_device_memory_peak_bytes", "gauge", "The most device memory ever charged." },
        { "llep_device_memory_budget_bytes", "gauge", "The device's memory budget in force." },
        { "llep_device_cache_bytes", "gauge", "Bytes the replica cache holds on the device." },
        { "llep_device_cache_limit_bytes", "gauge", "The replica cache's limit (0: off)." },
        { "llep_device_cache_hits_total", "counter",
          "Spilled experts found in the replica cache instead of copied." },
        { "llep_device_cache_saved_bytes_total", "counter",
          "Weight bytes the replica cache's hits saved copying." },
        { "llep_device_cache_evictions_total", "counter", "Copies the replica cache evicted." },
    };
    const char *kind = srv->backend == LLEP_BACKEND_CUDA ? "cuda" : "cpu";

    for (size_t k = 0; k < sizeof(fam) / sizeof(fam[0]); k++) {
        family(f, fam[k].name, fam[k].type, fam[k].help);
        for (uint32_t d = 0; d < srv->devices; d++) {
            llep_device_figures fig = { 0 };
            if (srv->devs)
                llep__devices_figures(srv->devs, d, &fig);
            const uint64_t v[] = { 0, fig.used, fig.peak, fig.budget, fig.cache_bytes,
                                   fig.cache_limit, fig.cache_hits, fig.cache_saved,
                                   fig.cache_evictions };
            fprintf(f, "%s{device=\"%s%u\"} ", fam[k].name, kind, d);
            if (k == 0)
                fprintf(f, "%.9f\n", (double)srv->dev_busy_ns[d] / 1e9);
            else
                fprintf(f, "%llu\n", (unsigned long long)v[k]);
        }
    }
    /* Failed devices (devices.h): which work, and how many failed since start. */
    family(f, "llep_device_up", "gauge",
           "1 while the device works, 0 once it failed (its work then runs on another).");
    for (uint32_t d = 0; d < srv->devices; d++) {
        llep_device_status st = { 0 };
        if (srv->devs)
            llep__devices_status(srv->devs, d, &st);
        fprintf(f, "llep_device_up{device=\"%s%u\"} %d\n", kind, d, st.failed ? 0 : 1);
    }
    family(f, "llep_device_failures_total", "counter", "Devices that failed since start.");
    fprintf(f, "llep_device_failures_total %llu\n",
            (unsigned long long)(srv->devs ? llep__devices_failures(srv->devs) : 0));
}

/* The peer links (llepctl peers' hooks), when clustered. */
static int write_peers(FILE *f, const llepd_server *srv) {
    uint32_t n = srv->hooks.peers_count ? srv->hooks.peers_count(srv) : 0;
    LlepPb__PeersReply pr = LLEP_PB__PEERS_REPLY__INIT;

    if (n == 0 || !srv->hooks.peers_fill)
        return 0;
    LlepPb__PeerInfo *info = calloc(n, sizeof(*info));
    if (!info)
        return -ENOMEM;
    srv->hooks.peers_fill(srv, &pr, info);
    family(f, "llep_peer_up", "gauge", "1 while the link to the peer is up, else 0.");
    for (uint32_t i = 0; i < n; i++)
        fprintf(f, "llep_peer_up{peer=\"%u\"} %d\n", info[i].node_id,
                info[i].state == LLEP_PB__PEER_STATE__PEER_STATE_UP);
    family(f, "llep_peer_rtt_seconds", "gauge",
           "Smoothed heartbeat round trip to the peer (0 before the first).");
    for (uint32_t i = 0; i < n; i++)
        fprintf(f, "llep_peer_rtt_seconds{peer=\"%u\"} %.9f\n", info[i].node_id,
                (double)info[i].rtt_smoothed_ns / 1e9);
    family(f, "llep_peer_sent_bytes_total", "counter", "Bytes sent on links to the peer.");
    for (uint32_t i = 0; i < n; i++)
        fprintf(f, "llep_peer_sent_bytes_total{peer=\"%u\"} %llu\n", info[i].node_id,
                (unsigned long long)info[i].bytes_sent);
    family(f, "llep_peer_received_bytes_total", "counter",
           "Bytes received on links from the peer.");
    for (uint32_t i = 0; i < n; i++)
        fprintf(f, "llep_peer_received_bytes_total{peer=\"%u\"} %llu\n", info[i].node_id,
                (unsigned long long)info[i].bytes_received);
    family(f, "llep_peer_links_up_total", "counter", "Times a link to the peer came up.");
    for (uint32_t i = 0; i < n; i++)
        fprintf(f, "llep_peer_links_up_total{peer=\"%u\"} %u\n", info[i].node_id,
                info[i].links_up);
    free(info);
    return 0;
}

int llepd_metrics_render(llepd_server *srv, char **ret, size_t *ret_len) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    int r = 0;

    if (!f)
        return -ENOMEM;
    llepd_sched_device_peaks(srv);
    write_node(f, srv);
    write_latency(f, &srv->latency);
    write_layers(f, srv, srv->cfg.metrics_expert_loads);
    write_devices(f, srv);
    r = write_peers(f, srv);
    if (ferror(f))
        r = -ENOMEM;
    if (fclose(f) != 0)
        r = -ENOMEM;
    if (r < 0) {
        free(buf);
        return r;
    }
    *ret = buf;
    *ret_len = len;
    return 0;
}

/* ---- HTTP ------------------------------------------------------------------------------- */

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned int code, const char *text) {
    struct MHD_Response *rsp =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);

    if (!rsp)
        return MHD_NO;
    MHD_add_response_header(rsp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(rsp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result r = MHD_queue_response(c, code, rsp);
    MHD_destroy_response(rsp);
    return r;
}

/* Called by MHD_run(), so on the loop thread: the server's figures are read as they are. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    llepd_metrics *m = cls;
    char *text;
    size_t len;

    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    if (strcmp(url, "/metrics") != 0)
        return reply_text(c, MHD_HTTP_NOT_FOUND, "not found; llepd serves /metrics\n");
    if (llepd_metrics_render(m->srv, &text, &len) < 0)
        return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "llepd is out of memory\n");
    struct MHD_Response *rsp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!rsp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(rsp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_OK, rsp);
    MHD_destroy_response(rsp);
    return r;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    char msg[256];

    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_info("metrics endpoint: %s", msg);
}

static void on_timer(uv_timer_t *t);

/* After every MHD_run(): the timer follows libmicrohttpd's next timeout (0 when it has
 * buffered work left, e.g. a response it could not send whole). */
static void run_mhd(llepd_metrics *m) {
    MHD_UNSIGNED_LONG_LONG ms;

    MHD_run(m->mhd);
    if (MHD_get_timeout(m->mhd, &ms) == MHD_YES)
        uv_timer_start(&m->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&m->timer);
}

static void on_timer(uv_timer_t *t) {
    run_mhd(t->data);
}

static void on_poll(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    run_mhd(p->data);
}

/* The listening socket is made here rather than by libmicrohttpd, so that a port in use is
 * reported with the address and errno's words. */
static int bind_socket(const llep_peer_addr *a, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t len;
    int one = 1;

    memset(&ss, 0, sizeof(ss));
    if (a->ipv6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(a->port);
        inet_pton(AF_INET6, a->host, &s6->sin6_addr);
        len = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(a->port);
        inet_pton(AF_INET, a->host, &s4->sin_addr);
        len = sizeof(*s4);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 64) < 0) {
        int e = errno;
        snprintf(err, errlen, "metrics-listen %s%s%s:%u: %s", a->ipv6 ? "[" : "", a->host,
                 a->ipv6 ? "]" : "", a->port, strerror(e));
        if (fd >= 0)
            close(fd);
        return -e;
    }
    return fd;
}

int llepd_metrics_start(llepd_server *srv, char *err, size_t errlen) {
    const llep_peer_addr *a = &srv->cfg.metrics_listen;

    if (!srv->cfg.have_metrics_listen)
        return 0;
    llepd_metrics *m = calloc(1, sizeof(*m));
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int fd = bind_socket(a, err, errlen);
    if (fd < 0) {
        free(m);
        return fd;
    }
    m->srv = srv;
    /* No thread of its own: MHD_run() on the loop thread when its epoll set is readable. */
    m->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, m,
                              MHD_OPTION_LISTEN_SOCKET, fd,
                              MHD_OPTION_CONNECTION_LIMIT, METRICS_CONNECTIONS,
                              MHD_OPTION_CONNECTION_TIMEOUT, METRICS_IDLE_S,
                              MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, m, MHD_OPTION_END);
    const union MHD_DaemonInfo *info =
        m->mhd ? MHD_get_daemon_info(m->mhd, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (!info || uv_poll_init(srv->loop, &m->poll, info->epoll_fd) < 0) {
        snprintf(err, errlen, "metrics-listen %s:%u: cannot start the HTTP server", a->host,
                 a->port);
        if (m->mhd)
            MHD_stop_daemon(m->mhd);    /* closes fd too */
        else
            close(fd);
        free(m);
        return -EIO;
    }
    uv_timer_init(srv->loop, &m->timer);
    m->poll.data = m->timer.data = m;
    m->open_handles = 2;
    uv_poll_start(&m->poll, UV_READABLE, on_poll);
    srv->metrics = m;
    log_notice("metrics at http://%s%s%s:%u/metrics", a->ipv6 ? "[" : "", a->host,
               a->ipv6 ? "]" : "", a->port);
    return 0;
}

static void on_closed(uv_handle_t *h) {
    llepd_metrics *m = h->data;

    if (--m->open_handles > 0)
        return;
    /* The loop no longer polls its descriptor: libmicrohttpd may close it now. */
    MHD_stop_daemon(m->mhd);
    free(m);
}

void llepd_metrics_close(llepd_server *srv) {
    llepd_metrics *m = srv->metrics;

    if (!m)
        return;
    srv->metrics = NULL;
    uv_close((uv_handle_t *)&m->poll, on_closed);
    uv_close((uv_handle_t *)&m->timer, on_closed);
}
