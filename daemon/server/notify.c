/* sd_notify(3) for llepd (see notify.h). */
#include "notify.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "layer.h"
#include "log.h"
#include "session.h"

/* The figures `llepctl status` shows, counted the same way: sessions that said Hello as
 * clients (not llepctl), and layers not already released by their last holder. */
static void format_status(const llepd_notify *n, char *buf, size_t len) {
    const llepd_server *srv = n->srv;
    uint32_t clients = 0, layers = 0;
    int w;

    for (const llepd_list *i = srv->sessions.next; i != &srv->sessions; i = i->next)
        clients += llepd_container_of(i, llepd_session, link)->kind ==
                   LLEP_PB__PEER_KIND__PEER_KIND_CLIENT;
    for (uint32_t i = 0; i < srv->nlayers; i++)
        layers += !srv->layers[i]->dead;
    w = snprintf(buf, len, "%" PRIu32 " client%s, %" PRIu32 " layer%s, %" PRIu64 " step%s",
                 clients, clients == 1 ? "" : "s", layers, layers == 1 ? "" : "s",
                 srv->steps, srv->steps == 1 ? "" : "s");
    if (w < 0 || (size_t)w >= len)
        return;
    if (n->stopping)
        w += snprintf(buf + w, len - (size_t)w, "; stopping (%s), %" PRIu32 " step%s running",
                      n->stop_reason, srv->running_steps, srv->running_steps == 1 ? "" : "s");
    else if (srv->draining)
        w += snprintf(buf + w, len - (size_t)w, "; draining");
    if (w < 0 || (size_t)w >= len)
        return;
    if (n->reload_error[0])
        snprintf(buf + w, len - (size_t)w, "; last reload refused: %s", n->reload_error);
}

/* A notification socket that stops working would otherwise fill the log once a second. */
static void warn_once(llepd_notify *n, int r) {
    if (r >= 0 || n->warned)
        return;
    n->warned = true;
    log_warning("sd_notify to $NOTIFY_SOCKET failed: %s (not logged again)", strerror(-r));
}

/* Sends `state` (may be NULL) together with the STATUS= line when that changed or `state` is
 * given; the status rides in the same datagram so systemd shows both at once. */
static void send_status(llepd_notify *n, const char *state) {
    char status[sizeof(n->last_status)];
    int r;

    if (!n->enabled)
        return;
    format_status(n, status, sizeof(status));
    if (!state && strcmp(status, n->last_status) == 0)
        return;
    r = sd_notifyf(0, "%s%sSTATUS=%s", state ? state : "", state ? "\n" : "", status);
    if (r >= 0)
        memcpy(n->last_status, status, sizeof(status));
    warn_once(n, r);
}

static void on_status_timer(uv_timer_t *t) {
    send_status(t->data, NULL);
}

static void on_watchdog_timer(uv_timer_t *t) {
    warn_once(t->data, sd_notify(0, "WATCHDOG=1"));
}

int llepd_notify_init(llepd_notify *n, llepd_server *srv) {
    uint64_t usec = 0;
    const char *sock = getenv("NOTIFY_SOCKET");
    int r;

    memset(n, 0, sizeof(*n));
    n->srv = srv;
    n->enabled = sock && sock[0];
    if (!n->enabled)
        return 0;
    /* > 0 only when $WATCHDOG_USEC is set and $WATCHDOG_PID, if set, is this process. */
    r = sd_watchdog_enabled(0, &usec);
    if (r < 0)
        log_warning("ignoring the watchdog settings: %s", strerror(-r));
    else if (r > 0)
        n->watchdog_usec = usec;

    uv_timer_init(srv->loop, &n->watchdog);
    uv_timer_init(srv->loop, &n->status);
    n->watchdog.data = n->status.data = n;
    n->timers_open = true;
    r = uv_timer_start(&n->status, on_status_timer, LLEPD_NOTIFY_STATUS_MS,
                       LLEPD_NOTIFY_STATUS_MS);
    if (r == 0 && n->watchdog_usec) {
        /* Half the timeout, as sd_watchdog_enabled(3) recommends; at least 1 ms. */
        uint64_t ms = n->watchdog_usec / 2000u;

        if (ms == 0)
            ms = 1;
        r = uv_timer_start(&n->watchdog, on_watchdog_timer, ms, ms);
        if (r == 0)
            log_info("watchdog: WATCHDOG=1 every %" PRIu64 " ms", ms);
    }
    if (r < 0) {
        llepd_notify_close(n);
        return r;
    }
    return 0;
}

void llepd_notify_ready(llepd_notify *n) {
    send_status(n, "READY=1");
}

static uint64_t monotonic_usec(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void llepd_notify_reloading(llepd_notify *n) {
    char state[64];

    snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, monotonic_usec());
    send_status(n, state);
}

void llepd_notify_reloaded(llepd_notify *n, const char *error) {
    snprintf(n->reload_error, sizeof(n->reload_error), "%s", error ? error : "");
    send_status(n, "READY=1");
}

void llepd_notify_stopping(llepd_notify *n, const char *why) {
    n->stopping = true;
    snprintf(n->stop_reason, sizeof(n->stop_reason), "%s", why);
    send_status(n, "STOPPING=1");
}

void llepd_notify_close(llepd_notify *n) {
    if (!n->timers_open)
        return;
    n->timers_open = false;
    uv_close((uv_handle_t *)&n->watchdog, NULL);
    uv_close((uv_handle_t *)&n->status, NULL);
}
