/* llepd's side of the systemd notification protocol (sd_notify(3)), for a Type=notify unit:
 *
 *   READY=1      once the listening socket accepts connections, and again after a reload
 *   STATUS=...   "N clients, M layers, S steps" (plus what is going on: stopping, a refused
 *                reload), sent whenever it changes, checked once a second
 *   WATCHDOG=1   every half of WatchdogSec when the unit sets one ($WATCHDOG_USEC)
 *   RELOADING=1  when SIGHUP starts re-reading the config file
 *   STOPPING=1   when SIGTERM or SIGINT starts the orderly stop
 *
 * The pings and the status check run on the event loop, so they stop when the loop hangs and
 * systemd's watchdog then restarts the service. Without $NOTIFY_SOCKET (llepd started by
 * hand, or by a test) every call here is a no-op and no timer runs. */
#ifndef LLEPD_NOTIFY_H
#define LLEPD_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "server.h"

/* How often the STATUS= line is recomputed (and sent when it differs from the last one). */
#define LLEPD_NOTIFY_STATUS_MS 1000u

typedef struct llepd_notify {
    llepd_server *srv;
    bool enabled;               /* $NOTIFY_SOCKET is set */
    bool stopping;
    uint64_t watchdog_usec;     /* 0: no watchdog */
    uv_timer_t watchdog;        /* WATCHDOG=1 every watchdog_usec / 2 */
    uv_timer_t status;          /* STATUS= when the figures change */
    bool timers_open;
    bool warned;                /* a failed sd_notify() was logged */
    char stop_reason[64];
    char reload_error[256];     /* why the last reload was refused; "" when it was applied */
    char last_status[512];      /* the last STATUS= text sent */
} llepd_notify;

/* Reads $NOTIFY_SOCKET and $WATCHDOG_USEC/$WATCHDOG_PID (sd_watchdog_enabled(3)) and starts
 * the timers that apply. Returns 0 or a negative errno. */
int llepd_notify_init(llepd_notify *n, llepd_server *srv);

/* READY=1 with the first STATUS= line; call once the socket listens. */
void llepd_notify_ready(llepd_notify *n);

/* RELOADING=1 (with MONOTONIC_USEC, as Type=notify-reload wants) when a reload begins. */
void llepd_notify_reloading(llepd_notify *n);

/* READY=1 when the reload is over. error is NULL when the new settings were applied, else the
 * reason they were refused, which stays in the STATUS= line until a reload succeeds. */
void llepd_notify_reloaded(llepd_notify *n, const char *error);

/* STOPPING=1 and a STATUS= line saying why. */
void llepd_notify_stopping(llepd_notify *n, const char *why);

/* Closes the timers, so the loop can end (call when the server has stopped and is idle). */
void llepd_notify_close(llepd_notify *n);

#endif
