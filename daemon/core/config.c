/* llepd's options and config file (see config.h for the syntax): reading files and command
 * lines into the settings of config-keys.c, the checks across keys, and the names of values. */
#include "config.h"
#include "config-keys.h"

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

void llep__config_init(llep_config *c) {
    *c = (llep_config){
        .backend = LLEP_BACKEND_AUTO,
        .alpha = LLEP_DEFAULT_ALPHA,
        .lambda = LLEP_DEFAULT_LAMBDA,
        .min_tokens = LLEP_DEFAULT_MIN_TOKENS,
        .planner = LLEP_PLANNER_COST,
        .replica_cache = LLEP_CONFIG_CACHE_AUTO,
        .log_level = LLEP_LOG_NOTICE,
        .peer_heartbeat_ms = LLEP_PEER_HEARTBEAT_MS_DEFAULT,
        .peer_timeout_ms = LLEP_PEER_TIMEOUT_MS_DEFAULT,
        .calibrate_shapes = true,
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
        llep__config_quote(q, sizeof(q), value, strlen(value));
        llep__errf(err, errlen, 0, "bad value %s for %s: expected %s%s%s", q, what, k->expect,
                  c->detail[0] ? ": " : "", c->detail);
        return -EINVAL;
    }
    return 0;
}

int llep__config_set(llep_config *c, const char *key, const char *value,
                     char *err, size_t errlen) {
    const config_key *k = llep__config_find_key(key, strlen(key));
    char q[300], what[128];

    if (!k) {
        llep__config_quote(q, sizeof(q), key, strlen(key));
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
        llep__config_quote(q, sizeof(q), line, len);
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
    llep__config_quote(q, sizeof(q), key, key_len);
    if (key_len == 6 && memcmp(key, "config", 6) == 0) {
        llep__errf(err, errlen, 0, "%s:%u: key 'config' cannot be used in a config file", name,
                  lineno);
        return -EINVAL;
    }
    k = llep__config_find_key(key, key_len);
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
            llep__config_quote(q, sizeof(q), a, strlen(a));
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
        if (!arg_is(o, "config") && !llep__config_find_key(o->name, o->name_len)) {
            llep__config_quote(q, sizeof(q), a, strlen(a));
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
        const config_key *k = llep__config_find_key(opts[i].name, opts[i].name_len);
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

/* state-dir when none was given: $LLEP_STATE_DIR (an absolute path or off; how tests and
 * hand-started daemons keep out of /var/lib), else LLEP_STATE_DIR_DEFAULT. */
static int default_state_dir(llep_config *c, char *err, size_t errlen) {
    const char *env = getenv("LLEP_STATE_DIR");

    if (c->state_dir_set)
        return 0;
    if (!env || !env[0])
        env = LLEP_STATE_DIR_DEFAULT;
    if (strcmp(env, "off") == 0) {
        c->state_dir[0] = '\0';
        return 0;
    }
    if (env[0] != '/' || strlen(env) >= sizeof(c->state_dir))
        return llep__errf(err, errlen, -EINVAL, "$LLEP_STATE_DIR must be off or an absolute "
                          "path of at most %zu bytes", sizeof(c->state_dir) - 1);
    snprintf(c->state_dir, sizeof(c->state_dir), "%s", env);
    return 0;
}

int llep__config_finish(llep_config *c, char *err, size_t errlen) {
    int r = check_cluster(c, err, errlen);

    if (r == 0)
        r = default_state_dir(c, err, errlen);
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
    for (size_t i = 0; i < llep__config_num_keys; i++)
        fprintf(f, "  --%s %-*s %s\n", llep__config_keys[i].name,
                (int)(28 - strlen(llep__config_keys[i].name)), llep__config_keys[i].arg,
                llep__config_keys[i].help);
    fprintf(f, "  --config %-*s %s\n", 22, "FILE",
            "read `key = value` lines with the keys above first");
    fprintf(f, "  -h, --help %-*s %s\n", 20, "", "show this help");
    fprintf(f, "      --version %-*s %s\n", 16, "", "show the version");
}
