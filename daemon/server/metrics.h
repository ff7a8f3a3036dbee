/* The metrics endpoint: `--metrics-listen HOST:PORT` serves GET /metrics in the Prometheus
 * text exposition format (version 0.0.4), through libmicrohttpd.
 *
 * libmicrohttpd runs without a thread of its own (external polling with its epoll set): its
 * epoll descriptor is a uv_poll_t of llepd's loop and its timeouts a uv_timer_t, so every
 * request is answered on the loop thread and reads the server's figures as llepctl's
 * handlers do (handlers-ctl.c), with no copy, lock or hand-over. A scrape costs one pass over
 * the layers and devices, far less than a step.
 *
 * Other paths answer 404, methods other than GET and HEAD 405. The series and their units
 * are listed in llepd(8), METRICS. */
#ifndef LLEPD_METRICS_H
#define LLEPD_METRICS_H

#include <stddef.h>

#include "server.h"

typedef struct llepd_metrics llepd_metrics;

/* Binds srv->cfg.metrics_listen and starts serving (srv->metrics); does nothing when the key
 * is not set. On failure err names the address and why (e.g. the port is in use). */
int llepd_metrics_start(llepd_server *srv, char *err, size_t errlen);

/* Stops serving: the loop's handles are closed and, once closed, libmicrohttpd is stopped and
 * everything freed (srv->metrics becomes NULL). Safe when the endpoint is off. */
void llepd_metrics_close(llepd_server *srv);

/* Writes the exposition text into a malloc'ed buffer (*ret, *ret_len); -ENOMEM. Exposed for
 * tests, which check the text without HTTP. */
int llepd_metrics_render(llepd_server *srv, char **ret, size_t *ret_len);

#endif
