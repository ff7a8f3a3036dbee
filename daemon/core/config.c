/* llepd's options and config file (see config.h for the syntax). One table describes every
 * key, so the command line, the config file and --help cannot drift apart. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "llep/types.h"
#include "parse-number.h"
#include "plan.h"
#include "errbuf.h"

/* A setter parses value into c; on a bad value it returns -EINVAL (or -ERANGE) and leaves c
 * alone, and the table's `expect` text tells the user what would have been right. */
typedef int (*config_setter)(llep_config *c, const char *value);

typedef struct config_key {
    const char *name;
    const char *arg;      /* for --help */
    const char *expect;   /* completes "expected ..." in errors */
    const char *help;
    config_setter set;
} config_key;

static int set_socket(llep_config *c, const char *value) {
    char *s;

    if (!value[0] || strlen(value) > LLEP_SOCKET_PATH_MAX)
        return -EINVAL;
    s = strdup(value);
    if (!s)
        return -ENOMEM;
    free(c->socket_path);
    c->socket_path = s;
    return 0;
}

static int set_backend(llep_config *c, const char *value) {
    if (strcmp(value, "cpu") == 0)
        c->backend = LLEP_BACKEND_CPU;
    else if (strcmp(value, "cuda") == 0)
        c->backend = LLEP_BACKEND_CUDA;
    else if (strcmp(value, "auto") == 0)
        c->backend = LLEP_BACKEND_AUTO;
    else
        return -EINVAL;
    return 0;
}

/* A count, "auto", or a device spec naming GPUs ("cuda:0x4", "cuda:0,1", "cpu:8"), which
 * llepd checks against the machine when it picks the backend (backend-select.h). */
static int set_devices(llep_config *c, const char *value) {
    uint32_t v;
    int r;

    c->devices_spec[0] = '\0';
    if (strcmp(value, "auto") == 0) {
        c->devices = 0;
        return 0;
    }
    if (strncmp(value, "cpu:", 4) == 0 || strncmp(value, "cuda", 4) == 0) {
        if (strlen(value) >= sizeof(c->devices_spec) ||
            strspn(value, "abcdefghijklmnopqrstuvwxyz0123456789:,") != strlen(value))
            return -EINVAL;
        snprintf(c->devices_spec, sizeof(c->devices_spec), "%s", value);
        c->devices = 0;
        return 0;
    }
    r = llep__parse_u32(value, &v);
    if (r < 0)
        return r;
    if (v < 1 || v > LLEP_MAX_DEVICES)
        return -ERANGE;
    c->devices = v;
    return 0;
}

static int set_device_memory(llep_config *c, const char *value) {
    uint64_t v;
    int r;

    if (strcmp(value, "auto") == 0) {
        c->device_memory = 0;
        return 0;
    }
    r = llep__parse_size(value, &v);
    if (r < 0)
        return r;
    if (v == 0)
        return -ERANGE;
    c->device_memory = v;
    return 0;
}

/* alpha and lambda: the planner accepts any finite number > 0 (llep__plan_params_check). */
static int parse_positive(const char *value, double *ret) {
    double v;
    int r = llep__parse_double(value, &v);

    if (r < 0)
        return r;
    if (!(v > 0))
        return -ERANGE;
    *ret = v;
    return 0;
}

static int set_alpha(llep_config *c, const char *value) {
    return parse_positive(value, &c->alpha);
}

static int set_lambda(llep_config *c, const char *value) {
    return parse_positive(value, &c->lambda);
}

static int parse_yes_no(const char *value, bool *ret) {
    if (strcmp(value, "yes") == 0 || strcmp(value, "true") == 0 || strcmp(value, "1") == 0)
        *ret = true;
    else if (strcmp(value, "no") == 0 || strcmp(value, "false") == 0 || strcmp(value, "0") == 0)
        *ret = false;
    else
        return -EINVAL;
    return 0;
}

static int set_scale_min_tokens(llep_config *c, const char *value) {
    return parse_yes_no(value, &c->scale_min_tokens);
}

static int set_min_tokens(llep_config *c, const char *value) {
    return llep__parse_u32(value, &c->min_tokens);
}

static const char *const log_level_names[] = {
    [LLEP_LOG_ERR] = "err",
    [LLEP_LOG_WARNING] = "warning",
    [LLEP_LOG_NOTICE] = "notice",
    [LLEP_LOG_INFO] = "info",
    [LLEP_LOG_DEBUG] = "debug",
};

static int set_log_level(llep_config *c, const char *value) {
    for (int l = LLEP_LOG_ERR; l <= LLEP_LOG_DEBUG; l++)
        if (strcmp(value, log_level_names[l]) == 0) {
            c->log_level = (enum llep_log_level)l;
            return 0;
        }
    return -EINVAL;
}

/* ---- cluster membership ----------------------------------------------------------------- */

static int set_node_id(llep_config *c, const char *value) {
    uint32_t v;
    int r = llep__parse_u32(value, &v);

    if (r < 0)
        return r;
    if (v > LLEP_NODE_ID_MAX)
        return -ERANGE;
    c->node_id = v;
    c->have_node_id = true;
    return 0;
}

/* HOST:PORT with HOST a numeric IPv4 address or [IPv6]. Names are not resolved: a daemon
 * must not block on DNS at start, and peers compare addresses as written. The reason for a
 * refusal goes into detail. */
static int parse_host_port(const char *s, size_t len, llep_peer_addr *ret, char *detail,
                           size_t detail_len) {
    char host[LLEP_PEER_HOST_MAX + 2], port[8];
    const char *colon;
    size_t hlen;
    uint32_t p;
    unsigned char bin[16];

    memset(ret, 0, sizeof(*ret));
    if (len && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close || close + 1 >= s + len || close[1] != ':') {
            snprintf(detail, detail_len, "an IPv6 address needs the form [ADDR]:PORT");
            return -EINVAL;
        }
        hlen = (size_t)(close - s - 1);
        colon = close + 1;
        ret->ipv6 = true;
        if (hlen == 0 || hlen >= sizeof(host)) {
            snprintf(detail, detail_len, "bad IPv6 address");
            return -EINVAL;
        }
        memcpy(host, s + 1, hlen);
    } else {
        colon = NULL;
        for (size_t i = len; i > 0; i--)
            if (s[i - 1] == ':') {
                colon = s + i - 1;
                break;
            }
        if (!colon) {
            snprintf(detail, detail_len, "missing ':PORT'");
            return -EINVAL;
        }
        hlen = (size_t)(colon - s);
        if (hlen == 0 || hlen >= sizeof(host)) {
            snprintf(detail, detail_len, "missing or overlong host");
            return -EINVAL;
        }
        memcpy(host, s, hlen);
    }
    host[hlen] = '\0';
    if (inet_pton(ret->ipv6 ? AF_INET6 : AF_INET, host, bin) != 1) {
        snprintf(detail, detail_len, "'%.*s' is not a numeric %s address", (int)hlen, host,
                 ret->ipv6 ? "IPv6" : "IPv4");
        return -EINVAL;
    }
    inet_ntop(ret->ipv6 ? AF_INET6 : AF_INET, bin, ret->host, sizeof(ret->host));
    size_t plen = len - (size_t)(colon + 1 - s);
    if (plen == 0 || plen >= sizeof(port)) {
        snprintf(detail, detail_len, "missing or overlong port");
        return -EINVAL;
    }
    memcpy(port, colon + 1, plen);
    port[plen] = '\0';
    if (llep__parse_u32(port, &p) < 0 || p < 1 || p > 65535) {
        snprintf(detail, detail_len, "port '%s' is not an integer from 1 to 65535", port);
        return -EINVAL;
    }
    ret->port = (uint16_t)p;
    return 0;
}

static int cmp_peer_id(const void *a, const void *b) {
    const llep_peer_addr *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

/* ID=HOST:PORT,... : every node, sorted by id; ids and addresses unique. All or nothing: a bad
 * entry leaves the list in force alone. */
static int set_peers(llep_config *c, const char *value) {
    llep_peer_addr list[LLEP_MAX_NODES];
    uint32_t n = 0;
    const char *p = value;

    for (;;) {
        const char *end = strchr(p, ','), *eq;
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char idtext[16];
        uint32_t id;

        if (n == LLEP_MAX_NODES) {
            snprintf(c->detail, sizeof(c->detail), "more than %u nodes", LLEP_MAX_NODES);
            return -EINVAL;
        }
        eq = memchr(p, '=', len);
        if (len == 0 || !eq) {
            snprintf(c->detail, sizeof(c->detail), "node %u: expected ID=HOST:PORT", n + 1);
            return -EINVAL;
        }
        size_t idlen = (size_t)(eq - p);
        if (idlen == 0 || idlen >= sizeof(idtext)) {
            snprintf(c->detail, sizeof(c->detail), "node %u: missing or overlong ID", n + 1);
            return -EINVAL;
        }
        memcpy(idtext, p, idlen);
        idtext[idlen] = '\0';
        if (llep__parse_u32(idtext, &id) < 0 || id > LLEP_NODE_ID_MAX) {
            snprintf(c->detail, sizeof(c->detail), "node %u: ID '%s' is not an integer from 0 "
                     "to %u", n + 1, idtext, LLEP_NODE_ID_MAX);
            return -EINVAL;
        }
        char why[120] = "";
        if (parse_host_port(eq + 1, len - idlen - 1, &list[n], why, sizeof(why)) < 0) {
            snprintf(c->detail, sizeof(c->detail), "node %u: %s", id, why);
            return -EINVAL;
        }
        list[n++].id = id;
        if (!end)
            break;
        p = end + 1;
    }
    qsort(list, n, sizeof(list[0]), cmp_peer_id);
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = i + 1; j < n; j++) {
            if (list[i].id == list[j].id) {
                snprintf(c->detail, sizeof(c->detail), "node id %u appears twice", list[i].id);
                return -EINVAL;
            }
            if (list[i].port == list[j].port && strcmp(list[i].host, list[j].host) == 0) {
                snprintf(c->detail, sizeof(c->detail), "nodes %u and %u have the same address",
                         list[i].id, list[j].id);
                return -EINVAL;
            }
        }
    memcpy(c->peers, list, n * sizeof(list[0]));
    c->npeers = n;
    return 0;
}

static int set_listen_peers(llep_config *c, const char *value) {
    llep_peer_addr a;
    int r = parse_host_port(value, strlen(value), &a, c->detail, sizeof(c->detail));

    if (r < 0)
        return r;
    c->listen_peers = a;
    c->have_listen_peers = true;
    return 0;
}

static int parse_ms(const char *value, uint32_t lo, uint32_t hi, uint32_t *ret) {
    uint32_t v;
    int r = llep__parse_u32(value, &v);

    if (r < 0)
        return r;
    if (v < lo || v > hi)
        return -ERANGE;
    *ret = v;
    return 0;
}

static int set_peer_heartbeat_ms(llep_config *c, const char *value) {
    return parse_ms(value, 10, 600000, &c->peer_heartbeat_ms);
}

static int set_peer_timeout_ms(llep_config *c, const char *value) {
    return parse_ms(value, 20, 3600000, &c->peer_timeout_ms);
}

static int set_peer_secret_file(llep_config *c, const char *value) {
    size_t n = strlen(value);

    if (n == 0 || n >= sizeof(c->peer_secret_file))
        return -EINVAL;
    memcpy(c->peer_secret_file, value, n + 1);
    return 0;
}

static int set_cluster_communicator(llep_config *c, const char *value) {
    if (strcmp(value, "auto") == 0)
        c->cluster_communicator_off = false;
    else if (strcmp(value, "off") == 0)
        c->cluster_communicator_off = true;
    else
        return -EINVAL;
    return 0;
}

static const config_key keys[] = {
    { "socket", "PATH", "a path of 1 to 107 bytes",
      "unix socket to listen on", set_socket },
    { "backend", "cpu|cuda|auto", "cpu, cuda or auto",
      "device backend (auto: cuda when GPUs are present)", set_backend },
    { "devices", "N|auto|SPEC", "auto, an integer from 1 to 4096, or a spec like cuda:0x4",
      "logical devices; SPEC: cpu:N, cuda, cuda:0,1, cuda:0x4", set_devices },
    { "device-memory", "SIZE|auto", "auto or a size > 0 like 512M, 16G or 1T",
      "memory budget per device", set_device_memory },
    { "alpha", "X", "a finite number > 0",
      "capacity factor of Least-Loaded Assignment (default 1.0)", set_alpha },
    { "lambda", "X", "a finite number > 0",
      "imbalance that switches a step from EP to LLEP (default 1.3)", set_lambda },
    { "min-tokens", "N", "an integer from 0 to 4294967295",
      "smallest token chunk worth a separate GEMM (default 1024)", set_min_tokens },
    { "scale-min-tokens", "yes|no", "yes or no",
      "use at most capacity / devices as min-tokens (small batches; default no)",
      set_scale_min_tokens },
    { "log-level", "LEVEL", "err, warning, notice, info or debug",
      "most verbose messages to log (default notice)", set_log_level },
    { "node-id", "ID", "an integer from 0 to 65535",
      "this node's id in the cluster (with --peers)", set_node_id },
    { "peers", "ID=HOST:PORT,...", "ID=HOST:PORT,... with numeric addresses",
      "every node of the cluster, this one included", set_peers },
    { "listen-peers", "HOST:PORT", "HOST:PORT with a numeric address ([ADDR] for IPv6)",
      "accept peer links here (default: this node's entry in --peers)", set_listen_peers },
    { "peer-heartbeat-ms", "N", "an integer from 10 to 600000",
      "heartbeat interval on peer links (default 1000)", set_peer_heartbeat_ms },
    { "peer-timeout-ms", "N", "an integer from 20 to 3600000",
      "silence after which a peer is down (default 5000)", set_peer_timeout_ms },
    { "peer-secret-file", "PATH", "a path of 1 to 255 bytes",
      "file with a secret all nodes share; peer links authenticate with it", set_peer_secret_file },
    { "cluster-communicator", "auto|off", "auto or off",
      "cluster layers' data between nodes over NCCL on GPUs (auto) or the peer links (off)",
      set_cluster_communicator },
};

/* Finds a key; '_' matches '-' so `min_tokens` works as well as `min-tokens`. len lets the
 * caller pass the name part of "--name=value" without copying it. */
static const config_key *find_key(const char *name, size_t len) {
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *k = keys[i].name;
        size_t j = 0;

        for (; j < len && k[j]; j++)
            if (k[j] != name[j] && !(k[j] == '-' && name[j] == '_'))
                break;
        if (j == len && !k[j])
            return &keys[i];
    }
    return NULL;
}

/* Writes s into out as a quoted, printable, bounded excerpt, so whatever bytes a file holds,
 * error messages stay one readable line. */
static void quote(char *out, size_t outlen, const char *s, size_t len) {
    static const size_t shown = 64;
    size_t o = 0;

    if (outlen < 8) {
        if (outlen)
            out[0] = '\0';
        return;
    }
    out[o++] = '\'';
    for (size_t i = 0; i < len && i < shown && o + 6 < outlen; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (ch >= 0x20 && ch < 0x7f && ch != '\\' && ch != '\'')
            out[o++] = (char)ch;
        else
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", ch);
    }
    if (len > shown && o + 4 < outlen) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '\'';
    out[o] = '\0';
}

void llep__config_init(llep_config *c) {
    *c = (llep_config){
        .backend = LLEP_BACKEND_AUTO,
        .alpha = LLEP_DEFAULT_ALPHA,
        .lambda = LLEP_DEFAULT_LAMBDA,
        .min_tokens = LLEP_DEFAULT_MIN_TOKENS,
        .log_level = LLEP_LOG_NOTICE,
        .peer_heartbeat_ms = LLEP_PEER_HEARTBEAT_MS_DEFAULT,
        .peer_timeout_ms = LLEP_PEER_TIMEOUT_MS_DEFAULT,
    };
}

void llep__config_fini(llep_config *c) {
    free(c->socket_path);
    free(c->config_file);
    c->socket_path = c->config_file = NULL;
}

/* Applies value to key k; on failure writes "bad value ... for <what>: expected ...". */
static int apply(llep_config *c, const config_key *k, const char *value, const char *what,
                 char *err, size_t errlen) {
    char q[300];
    int r;

    c->detail[0] = '\0';
    r = k->set(c, value);
    if (r == -ENOMEM) {
        llep__errf(err, errlen, 0, "out of memory setting %s", what);
        return r;
    }
    if (r < 0) {
        quote(q, sizeof(q), value, strlen(value));
        llep__errf(err, errlen, 0, "bad value %s for %s: expected %s%s%s", q, what, k->expect,
                  c->detail[0] ? ": " : "", c->detail);
        return -EINVAL;
    }
    return 0;
}

int llep__config_set(llep_config *c, const char *key, const char *value,
                     char *err, size_t errlen) {
    const config_key *k = find_key(key, strlen(key));
    char q[300], what[128];

    if (!k) {
        quote(q, sizeof(q), key, strlen(key));
        llep__errf(err, errlen, 0, "unknown key %s", q);
        return -ENOENT;
    }
    snprintf(what, sizeof(what), "key '%s'", k->name);
    return apply(c, k, value, what, err, errlen);
}

static bool is_blank(char ch) {
    return ch == ' ' || ch == '\t';
}

/* Trims blanks at both ends of [*s, *s + *len). */
static void trim(const char **s, size_t *len) {
    while (*len && is_blank(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len && is_blank((*s)[*len - 1]))
        (*len)--;
}

/* One `key = value` line (already known not to be blank or a comment). */
static int parse_line(llep_config *c, const char *name, unsigned lineno, const char *line,
                      size_t len, char *err, size_t errlen) {
    const char *eq = memchr(line, '=', len), *key = line, *value;
    size_t key_len, value_len;
    const config_key *k;
    char q[300], what[128], *v;
    int r;

    if (!eq) {
        quote(q, sizeof(q), line, len);
        llep__errf(err, errlen, 0, "%s:%u: expected 'key = value', got %s", name, lineno, q);
        return -EINVAL;
    }
    key_len = (size_t)(eq - line);
    value = eq + 1;
    value_len = len - key_len - 1;
    trim(&key, &key_len);
    trim(&value, &value_len);
    if (key_len == 0) {
        llep__errf(err, errlen, 0, "%s:%u: missing key before '='", name, lineno);
        return -EINVAL;
    }
    quote(q, sizeof(q), key, key_len);
    if (key_len == 6 && memcmp(key, "config", 6) == 0) {
        llep__errf(err, errlen, 0, "%s:%u: key 'config' cannot be used in a config file", name,
                  lineno);
        return -EINVAL;
    }
    k = find_key(key, key_len);
    if (!k) {
        llep__errf(err, errlen, 0, "%s:%u: unknown key %s", name, lineno, q);
        return -ENOENT;
    }
    if (value_len == 0) {
        llep__errf(err, errlen, 0, "%s:%u: missing value for key '%s'", name, lineno, k->name);
        return -EINVAL;
    }
    v = strndup(value, value_len);
    if (!v) {
        llep__errf(err, errlen, 0, "%s:%u: out of memory", name, lineno);
        return -ENOMEM;
    }
    snprintf(what, sizeof(what), "key '%s'", k->name);
    r = apply(c, k, v, what, err, errlen);
    free(v);
    if (r < 0 && err && errlen) {
        /* Put the location in front of the message apply() wrote. */
        char *tail = strdup(err);

        if (tail) {
            llep__errf(err, errlen, 0, "%s:%u: %s", name, lineno, tail);
            free(tail);
        }
    }
    return r;
}

int llep__config_parse_text(llep_config *c, const char *name, const char *text, size_t len,
                            char *err, size_t errlen) {
    unsigned lineno = 0;
    size_t pos = 0;

    while (pos < len) {
        const char *line = text + pos, *nl = memchr(line, '\n', len - pos);
        size_t line_len = nl ? (size_t)(nl - line) : len - pos;
        const char *s = line;
        size_t n = line_len;
        int r;

        pos += line_len + (nl ? 1 : 0);
        lineno++;
        if (memchr(line, '\0', line_len)) {
            llep__errf(err, errlen, 0, "%s:%u: line contains a NUL byte", name, lineno);
            return -EINVAL;
        }
        if (n && s[n - 1] == '\r')  /* files written on Windows */
            n--;
        trim(&s, &n);
        if (n == 0 || s[0] == '#')
            continue;
        r = parse_line(c, name, lineno, s, n, err, errlen);
        if (r < 0)
            return r;
    }
    return 0;
}

int llep__config_load_file(llep_config *c, const char *path, char *err, size_t errlen) {
    char *text = NULL;
    size_t len = 0;
    int fd, r;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        r = -errno;
        llep__errf(err, errlen, 0, "%s: cannot open: %s", path, strerror(-r));
        return r;
    }
    /* Read up to one byte past the limit to tell a full-size file from a bigger one, and do
     * not trust st_size: /proc files and pipes report 0. */
    text = malloc(LLEP_CONFIG_FILE_MAX + 1);
    if (!text) {
        r = -ENOMEM;
        llep__errf(err, errlen, 0, "%s: out of memory", path);
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, text + len, LLEP_CONFIG_FILE_MAX + 1 - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            llep__errf(err, errlen, 0, "%s: cannot read: %s", path, strerror(-r));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > LLEP_CONFIG_FILE_MAX) {
            r = -EFBIG;
            llep__errf(err, errlen, 0, "%s: larger than %u bytes, not a config file", path,
                      LLEP_CONFIG_FILE_MAX);
            goto out;
        }
    }
    r = llep__config_parse_text(c, path, text, len, err, errlen);
out:
    free(text);
    close(fd);
    return r;
}

/* One option of the command line: --name=value or --name value, split without copying. */
typedef struct arg_option {
    const char *name;     /* after "--" */
    size_t name_len;
    const char *value;    /* NULL for flags */
    const char *arg;      /* the argv element, for messages */
} arg_option;

static bool arg_is(const arg_option *o, const char *name) {
    return o->name_len == strlen(name) && memcmp(o->name, name, o->name_len) == 0;
}

/* Splits argv into options, checking the syntax only. */
static int split_args(int argc, char *const *argv, arg_option *opts, int *ret_n,
                      char *err, size_t errlen) {
    char q[300];
    int n = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq;
        arg_option *o = &opts[n];

        if (strcmp(a, "-h") == 0) {
            *o = (arg_option){ .name = "help", .name_len = 4, .arg = a };
            n++;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            quote(q, sizeof(q), a, strlen(a));
            llep__errf(err, errlen, 0, "unexpected argument %s (llepd takes only options)", q);
            return -EINVAL;
        }
        o->arg = a;
        o->name = a + 2;
        eq = strchr(o->name, '=');
        o->name_len = eq ? (size_t)(eq - o->name) : strlen(o->name);
        o->value = eq ? eq + 1 : NULL;
        n++;
        if (arg_is(o, "help") || arg_is(o, "version")) {
            if (eq) {
                llep__errf(err, errlen, 0, "option '--%.*s' takes no value", (int)o->name_len,
                          o->name);
                return -EINVAL;
            }
            continue;
        }
        if (!arg_is(o, "config") && !find_key(o->name, o->name_len)) {
            quote(q, sizeof(q), a, strlen(a));
            llep__errf(err, errlen, 0, "unknown option %s", q);
            return -ENOENT;
        }
        if (!o->value) {
            if (i + 1 >= argc) {
                llep__errf(err, errlen, 0, "option '--%.*s' needs a value", (int)o->name_len,
                          o->name);
                return -EINVAL;
            }
            o->value = argv[++i];
        }
    }
    *ret_n = n;
    return 0;
}

int llep__config_parse_args(llep_config *c, int argc, char *const *argv,
                            char *err, size_t errlen) {
    arg_option *opts;
    const char *config = NULL;
    int n = 0, r;

    if (argc < 1)
        return llep__config_finish(c, err, errlen);
    opts = calloc((size_t)argc, sizeof(*opts));
    if (!opts) {
        llep__errf(err, errlen, 0, "out of memory");
        return -ENOMEM;
    }
    r = split_args(argc, argv, opts, &n, err, errlen);
    if (r < 0)
        goto out;

    for (int i = 0; i < n; i++) {
        if (arg_is(&opts[i], "help"))
            c->help = true;
        else if (arg_is(&opts[i], "version"))
            c->version = true;
        else if (arg_is(&opts[i], "config")) {
            if (config) {
                llep__errf(err, errlen, 0, "option '--config' given more than once");
                r = -EINVAL;
                goto out;
            }
            config = opts[i].value;
        }
    }
    if (c->help || c->version)
        goto out;

    if (config) {
        if (!config[0]) {
            llep__errf(err, errlen, 0, "bad value '' for option '--config': expected a file");
            r = -EINVAL;
            goto out;
        }
        free(c->config_file);
        c->config_file = strdup(config);
        if (!c->config_file) {
            llep__errf(err, errlen, 0, "out of memory");
            r = -ENOMEM;
            goto out;
        }
        r = llep__config_load_file(c, config, err, errlen);
        if (r < 0)
            goto out;
    }
    for (int i = 0; i < n; i++) {
        const config_key *k = find_key(opts[i].name, opts[i].name_len);
        char what[128];

        if (!k)  /* --config, handled above */
            continue;
        snprintf(what, sizeof(what), "option '--%s'", k->name);
        r = apply(c, k, opts[i].value, what, err, errlen);
        if (r < 0)
            goto out;
    }
    r = llep__config_finish(c, err, errlen);
out:
    free(opts);
    return r;
}

int llep__socket_path_default(char **ret) {
    const char *env = getenv("LLEP_SOCKET"), *xdg;
    char *path;

    if (env && env[0])
        path = strdup(env);
    else if (geteuid() == 0)
        path = strdup(LLEP_SOCKET_SYSTEM);
    else {
        xdg = getenv("XDG_RUNTIME_DIR");
        if (!xdg || xdg[0] != '/')
            return -ENXIO;
        if (asprintf(&path, "%s/llep/llepd.sock", xdg) < 0)
            path = NULL;
    }
    if (!path)
        return -ENOMEM;
    if (strlen(path) > LLEP_SOCKET_PATH_MAX) {
        free(path);
        return -ENAMETOOLONG;
    }
    *ret = path;
    return 0;
}

int llep__socket_path_connect_default(char **ret) {
    struct stat st;
    int r = llep__socket_path_default(ret);

    /* A user in group llep talks to the system daemon; without a daemon of their own (no
     * socket at the per-user path) that is the one to reach. */
    if (getenv("LLEP_SOCKET") && getenv("LLEP_SOCKET")[0])
        return r;
    if (r == 0 && stat(*ret, &st) == 0)
        return 0;
    if (stat(LLEP_SOCKET_SYSTEM, &st) < 0 || !S_ISSOCK(st.st_mode))
        return r;
    if (r == 0)
        free(*ret);
    *ret = strdup(LLEP_SOCKET_SYSTEM);
    return *ret ? 0 : -ENOMEM;
}

const llep_peer_addr *llep__config_listen_addr(const llep_config *c) {
    if (!c->have_node_id)
        return NULL;
    if (c->have_listen_peers)
        return &c->listen_peers;
    for (uint32_t i = 0; i < c->npeers; i++)
        if (c->peers[i].id == c->node_id)
            return &c->peers[i];
    return NULL;
}

void llep__peer_addr_format(const llep_peer_addr *a, char *buf, size_t len) {
    snprintf(buf, len, a->ipv6 ? "[%s]:%u" : "%s:%u", a->host, (unsigned)a->port);
}

uint64_t llep__peers_hash(const llep_config *c) {
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    char entry[LLEP_PEER_HOST_MAX + 32], addr[LLEP_PEER_HOST_MAX + 16];

    for (uint32_t i = 0; i < c->npeers; i++) {
        llep__peer_addr_format(&c->peers[i], addr, sizeof(addr));
        snprintf(entry, sizeof(entry), "%u=%s,", c->peers[i].id, addr);
        for (const char *p = entry; *p; p++) {
            h ^= (unsigned char)*p;
            h *= UINT64_C(0x100000001b3);
        }
    }
    return h;
}

/* The cluster options that only make sense together. */
static int check_cluster(const llep_config *c, char *err, size_t errlen) {
    if (c->npeers && !c->have_node_id) {
        llep__errf(err, errlen, 0, "'peers' needs 'node-id': which of the nodes is this one?");
        return -EINVAL;
    }
    if (c->have_node_id && !c->npeers) {
        llep__errf(err, errlen, 0, "'node-id' needs 'peers', the list of the cluster's nodes");
        return -EINVAL;
    }
    if (c->have_listen_peers && !c->npeers) {
        llep__errf(err, errlen, 0, "'listen-peers' needs 'node-id' and 'peers'");
        return -EINVAL;
    }
    if (c->peer_secret_file[0] && !c->npeers) {
        llep__errf(err, errlen, 0, "'peer-secret-file' needs 'node-id' and 'peers'");
        return -EINVAL;
    }
    if (c->have_node_id && !llep__config_listen_addr(c)) {
        llep__errf(err, errlen, 0, "'peers' has no entry for this node (node-id %u): add "
                  "%u=HOST:PORT or give 'listen-peers'", c->node_id, c->node_id);
        return -EINVAL;
    }
    if (c->peer_timeout_ms <= c->peer_heartbeat_ms) {
        llep__errf(err, errlen, 0, "'peer-timeout-ms' (%u) must be larger than "
                  "'peer-heartbeat-ms' (%u)", c->peer_timeout_ms, c->peer_heartbeat_ms);
        return -EINVAL;
    }
    return 0;
}

int llep__config_finish(llep_config *c, char *err, size_t errlen) {
    int r = check_cluster(c, err, errlen);

    if (r < 0)
        return r;
    if (c->socket_path)
        return 0;
    r = llep__socket_path_default(&c->socket_path);
    if (r == -ENXIO)
        llep__errf(err, errlen, 0, "no socket path: give --socket, or set $LLEP_SOCKET or "
                               "$XDG_RUNTIME_DIR");
    else if (r == -ENAMETOOLONG)
        llep__errf(err, errlen, 0, "default socket path is longer than %u bytes: give --socket",
                  LLEP_SOCKET_PATH_MAX);
    else if (r < 0)
        llep__errf(err, errlen, 0, "out of memory");
    return r;
}

void llep__config_usage(FILE *f, const char *program) {
    fprintf(f, "Usage: %s [OPTION...]\n\nThe llep daemon: runs MoE layers for its clients.\n\n",
            program);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        fprintf(f, "  --%s %-*s %s\n", keys[i].name, (int)(28 - strlen(keys[i].name)),
                keys[i].arg, keys[i].help);
    fprintf(f, "  --config %-*s %s\n", 22, "FILE",
            "read `key = value` lines with the keys above first");
    fprintf(f, "  -h, --help %-*s %s\n", 20, "", "show this help");
    fprintf(f, "      --version %-*s %s\n", 16, "", "show the version");
}

static const char *const policy_names[] = {
    [LLEP_POLICY_AUTO] = "auto",
    [LLEP_POLICY_EP] = "ep",
    [LLEP_POLICY_LLEP] = "llep",
};

const char *llep__policy_name(int policy) {
    if (policy < LLEP_POLICY_AUTO || policy > LLEP_POLICY_LLEP)
        return "unknown";
    return policy_names[policy];
}

int llep__setting_parse(const char *key, const char *value, llep_setting *ret,
                        char *err, size_t errlen) {
    llep_setting s = { 0 };
    const char *expect;
    char q[300];
    int r;

    if (strcmp(key, "alpha") == 0 || strcmp(key, "lambda") == 0) {
        s.key = key[0] == 'a' ? LLEP_SETTING_ALPHA : LLEP_SETTING_LAMBDA;
        expect = "a finite number > 0";
        r = parse_positive(value, &s.value);
    } else if (strcmp(key, "min_tokens") == 0 || strcmp(key, "min-tokens") == 0) {
        s.key = LLEP_SETTING_MIN_TOKENS;
        expect = "an integer from 0 to 4294967295";
        r = llep__parse_u32(value, &s.min_tokens);
    } else if (strcmp(key, "policy") == 0) {
        s.key = LLEP_SETTING_POLICY;
        expect = "auto, ep or llep";
        r = -EINVAL;
        for (int p = LLEP_POLICY_AUTO; p <= LLEP_POLICY_LLEP; p++)
            if (strcmp(value, policy_names[p]) == 0) {
                s.policy = p;
                r = 0;
            }
    } else if (strcmp(key, "scale_min_tokens") == 0 || strcmp(key, "scale-min-tokens") == 0) {
        s.key = LLEP_SETTING_SCALE_MIN_TOKENS;
        expect = "yes or no";
        r = parse_yes_no(value, &s.flag);
    } else {
        quote(q, sizeof(q), key, strlen(key));
        llep__errf(err, errlen, 0, "unknown setting %s: expected alpha, lambda, min_tokens, "
                               "policy or scale_min_tokens", q);
        return -ENOENT;
    }
    if (r < 0) {
        quote(q, sizeof(q), value, strlen(value));
        llep__errf(err, errlen, 0, "bad value %s for %s: expected %s", q, key, expect);
        return -EINVAL;
    }
    *ret = s;
    return 0;
}

void llep__setting_format(const llep_setting *s, char *buf, size_t len) {
    switch (s->key) {
    case LLEP_SETTING_ALPHA:
    case LLEP_SETTING_LAMBDA:
        /* Shortest form that reads back as the same double. */
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, len, "%.*g", prec, s->value);
            if (strtod(buf, NULL) == s->value)
                break;
        }
        break;
    case LLEP_SETTING_MIN_TOKENS:
        snprintf(buf, len, "%" PRIu32, s->min_tokens);
        break;
    case LLEP_SETTING_POLICY:
        snprintf(buf, len, "%s", llep__policy_name(s->policy));
        break;
    case LLEP_SETTING_SCALE_MIN_TOKENS:
        snprintf(buf, len, "%s", s->flag ? "yes" : "no");
        break;
    default:
        snprintf(buf, len, "?");
        break;
    }
}

const char *llep__backend_name(enum llep_backend_kind backend) {
    switch (backend) {
    case LLEP_BACKEND_AUTO: return "auto";
    case LLEP_BACKEND_CPU: return "cpu";
    case LLEP_BACKEND_CUDA: return "cuda";
    }
    return "unknown";
}

const char *llep__log_level_name(enum llep_log_level level) {
    if (level < LLEP_LOG_ERR || level > LLEP_LOG_DEBUG)
        return "unknown";
    return log_level_names[level];
}
