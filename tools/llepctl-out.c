/* llepctl's requests and output helpers (llepctl.h): one request and its reply, JSON output,
 * sizes and durations for people, load bars, and the names of protocol enums. */
#include "llepctl.h"

#include <inttypes.h>
#include <stdio.h>

int ctl_request(ctl *x, LlepPb__Frame *req, LlepPb__Frame__BodyCase expected,
                LlepPb__Frame **ret) {
    LlepPb__Frame *reply = NULL;
    int r;

    if (!x->connected) {
        r = llep__conn_open(&x->conn, x->socket_path, LLEP_PB__PEER_KIND__PEER_KIND_CTL,
                            LLEPCTL_PROG, 10000, x->err, sizeof(x->err));
        if (r < 0)
            return daemon_error("%s", x->err);
        x->connected = true;
    }
    r = llep__conn_request(&x->conn, req, -1, NULL, NULL, &reply, x->err, sizeof(x->err));
    if (r < 0)
        return daemon_error("%s", x->err);
    r = llep__conn_reply_check(reply, expected, x->err, sizeof(x->err));
    if (r < 0) {
        llep__frame_free(reply);
        return daemon_error("%s", x->err);
    }
    *ret = reply;
    return 0;
}

/* --json: every verb's reply as one object on one line, built with json-c (json-out.h). */
int ctl_json_print(json_object *o) {
    if (llep__jout_write(stdout, o, LLEP_JOUT_LINE, "\n") < 0)
        return daemon_error("cannot write the output");
    return 0;
}

/* 1536 -> "1.5 KiB". */
const char *ctl_fmt_bytes(uint64_t v, char *buf, size_t len) {
    static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
    double d = (double)v;
    int u = 0;

    while (d >= 1024 && u < 5) {
        d /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%" PRIu64 " B", v);
    else
        snprintf(buf, len, "%.1f %s", d, unit[u]);
    return buf;
}

/* Microseconds as "850 us", "12.3 ms", "4.2 s". */
const char *ctl_fmt_us(uint64_t us, char *buf, size_t len) {
    if (us < 1000)
        snprintf(buf, len, "%" PRIu64 " us", us);
    else if (us < 1000000)
        snprintf(buf, len, "%.1f ms", us / 1e3);
    else
        snprintf(buf, len, "%.1f s", us / 1e6);
    return buf;
}

const char *ctl_fmt_uptime(uint64_t us, char *buf, size_t len) {
    uint64_t s = us / 1000000;

    if (s >= 86400)
        snprintf(buf, len, "%" PRIu64 "d %02" PRIu64 "h %02" PRIu64 "m", s / 86400,
                 s % 86400 / 3600, s % 3600 / 60);
    else if (s >= 3600)
        snprintf(buf, len, "%" PRIu64 "h %02" PRIu64 "m %02" PRIu64 "s", s / 3600,
                 s % 3600 / 60, s % 60);
    else
        snprintf(buf, len, "%" PRIu64 "m %02" PRIu64 "s", s / 60, s % 60);
    return buf;
}

void ctl_bar(uint64_t v, uint64_t max) {
    int n = max ? (int)((long double)v * BAR_WIDTH / max + 0.5L) : 0;

    if (v > 0 && n == 0)
        n = 1; /* any load shows at least a sliver */
    for (int i = 0; i < n; i++)
        putchar('#');
}

const char *ctl_backend_name(LlepPb__Backend b) {
    return b == LLEP_PB__BACKEND__BACKEND_CPU ? "cpu" : b == LLEP_PB__BACKEND__BACKEND_CUDA ? "cuda"
                                                                                       : "auto";
}

const char *ctl_dtype_name(LlepPb__DType d) {
    return d == LLEP_PB__DTYPE__DTYPE_BF16 ? "bf16" : "f32";
}

const char *ctl_act_name(LlepPb__Activation a) {
    return a == LLEP_PB__ACTIVATION__ACT_SWIGLU_OAI ? "swiglu_oai" : "swiglu";
}

const char *ctl_scope_name(LlepPb__Scope s) {
    return s == LLEP_PB__SCOPE__SCOPE_CLUSTER ? "cluster" : "node";
}

