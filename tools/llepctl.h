/* llepctl's pieces (llepctl.c: options and verbs; llepctl-out.c: requests and output helpers;
 * llepctl-models.c: the model verbs). */
#ifndef LLEP_TOOLS_LLEPCTL_H
#define LLEP_TOOLS_LLEPCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cli.h"
#include "conn.h"
#include "json-out.h"

#define EXIT_DAEMON 1
#define EXIT_USAGE 2
#define BAR_WIDTH 40

#define LLEPCTL_PROG "llepctl"

typedef struct ctl {
    llep_conn conn;
    bool connected;
    const char *socket_path;      /* NULL: the default */
    bool json;
    bool show;                    /* tune --show */
    char err[512];
} ctl;

static inline void frame_freep(LlepPb__Frame **f) {
    llep__frame_free(*f);
}
#define _cleanup_frame_ __attribute__((cleanup(frame_freep)))

/* A bad command line: the message, the hint to --help, and EXIT_USAGE. */
#define usage_error(...) llep__cli_fail(LLEPCTL_PROG, 1, EXIT_USAGE, __VA_ARGS__)

/* llepd refused or could not be reached: the message and EXIT_DAEMON. */
#define daemon_error(...) llep__cli_fail(LLEPCTL_PROG, 0, EXIT_DAEMON, __VA_ARGS__)

/* Sends one request and checks its reply. Returns 0 with the reply, or prints llepd's message
 * and returns EXIT_DAEMON. */
int ctl_request(ctl *x, LlepPb__Frame *req, LlepPb__Frame__BodyCase expected,
                LlepPb__Frame **ret);

/* --json: writes o (json-out.h) on stdout on one line and drops it. Returns 0, or says the
 * output could not be written and returns EXIT_DAEMON. */
int ctl_json_print(json_object *o);

/* For people: 1536 -> "1.5 KiB"; microseconds as "850 us", "12.3 ms", "4.2 s"; an uptime. */
const char *ctl_fmt_bytes(uint64_t v, char *buf, size_t len);
const char *ctl_fmt_us(uint64_t us, char *buf, size_t len);
const char *ctl_fmt_uptime(uint64_t us, char *buf, size_t len);

/* A bar of '#' for v out of max, BAR_WIDTH wide at max. */
void ctl_bar(uint64_t v, uint64_t max);

const char *ctl_backend_name(LlepPb__Backend b);
const char *ctl_dtype_name(LlepPb__DType d);
const char *ctl_act_name(LlepPb__Activation a);
const char *ctl_scope_name(LlepPb__Scope s);

/* The model verbs (llepctl-models.c): load NAME DIR, unload NAME, models. */
int ctl_verb_load(ctl *x, char **argv);
int ctl_verb_unload(ctl *x, char **argv);
int ctl_verb_models(ctl *x, char **argv);

#endif
