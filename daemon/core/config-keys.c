/* The table of llepd's settings, the setter of each key, the settings llepctl changes at run
 * time, and the names of values (config-keys.h, config.h). One table describes every key, so
 * the command line, the config file and --help cannot drift apart. */
#include "config-keys.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llep/types.h"
#include "parse-number.h"
#include "plan.h"
#include "errbuf.h"

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

static int set_replica_cache(llep_config *c, const char *value) {
    if (strcmp(value, "auto") == 0) {
        c->replica_cache = LLEP_CONFIG_CACHE_AUTO;
        return 0;
    }
    if (strcmp(value, "off") == 0) {
        c->replica_cache = 0;
        return 0;
    }
    /* 0 is off too; a size is at most the largest device budget there is. */
    uint64_t v;
    int r = llep__parse_size(value, &v);
    if (r < 0)
        return r;
    if (v == LLEP_CONFIG_CACHE_AUTO)
        return -ERANGE;
    c->replica_cache = v;
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

static const char *const planner_names[] = {
    [LLEP_PLANNER_LLA] = "lla",
    [LLEP_PLANNER_COST] = "cost",
};

static int parse_planner(const char *value, int *ret) {
    for (int p = LLEP_PLANNER_LLA; p <= LLEP_PLANNER_COST; p++)
        if (strcmp(value, planner_names[p]) == 0) {
            *ret = p;
            return 0;
        }
    return -EINVAL;
}

const char *llep__planner_name(int planner) {
    if (planner < LLEP_PLANNER_LLA || planner > LLEP_PLANNER_COST)
        return "unknown";
    return planner_names[planner];
}

static int set_planner(llep_config *c, const char *value) {
    return parse_planner(value, &c->planner);
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

/* An absolute path (llepd may run with another working directory than the one it was started
 * from), or off. */
static int set_state_dir(llep_config *c, const char *value) {
    size_t n = strlen(value);

    if (strcmp(value, "off") == 0) {
        c->state_dir[0] = '\0';
        c->state_dir_set = true;
        return 0;
    }
    if (value[0] != '/' || n >= sizeof(c->state_dir))
        return -EINVAL;
    memcpy(c->state_dir, value, n + 1);
    c->state_dir_set = true;
    return 0;
}

/* NAME=DIR: one more model to load at start. The name as llepd's protocol takes model names
 * (printable ASCII without blanks or '/'); the directory absolute, since llepd's working
 * directory is nobody's business. Each occurrence adds a model; a name given twice is an
 * error. */
static int set_model(llep_config *c, const char *value) {
    const char *eq = strchr(value, '=');
    size_t n = eq ? (size_t)(eq - value) : 0;

    if (!eq || n == 0 || n > LLEP_CONFIG_MODEL_NAME_MAX)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)value[i] <= 0x20 || (unsigned char)value[i] >= 0x7f ||
            value[i] == '/')
            return -EINVAL;
    if (eq[1] != '/' || strlen(eq + 1) >= LLEP_CONFIG_MODEL_PATH_MAX) {
        snprintf(c->detail, sizeof(c->detail), "the directory must be an absolute path of at "
                 "most %u bytes", LLEP_CONFIG_MODEL_PATH_MAX - 1);
        return -EINVAL;
    }
    for (uint32_t i = 0; i < c->nmodels; i++)
        if (strlen(c->models[i].name) == n && strncmp(c->models[i].name, value, n) == 0) {
            snprintf(c->detail, sizeof(c->detail), "model '%.*s' is given twice", (int)n,
                     value);
            return -EINVAL;
        }
    if (c->nmodels == LLEP_CONFIG_MAX_MODELS) {
        snprintf(c->detail, sizeof(c->detail), "at most %u models", LLEP_CONFIG_MAX_MODELS);
        return -EINVAL;
    }
    llep_model_spec *m = &c->models[c->nmodels++];
    memcpy(m->name, value, n);
    m->name[n] = '\0';
    snprintf(m->path, sizeof(m->path), "%s", eq + 1);
    return 0;
}

static int set_metrics_expert_loads(llep_config *c, const char *value) {
    return parse_yes_no(value, &c->metrics_expert_loads);
}

static int set_keep_host_weights(llep_config *c, const char *value) {
    return parse_yes_no(value, &c->keep_host_weights);
}

static int set_calibrate_shapes(llep_config *c, const char *value) {
    return parse_yes_no(value, &c->calibrate_shapes);
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

const config_key llep__config_keys[] = {
    { "socket", "PATH", "a path of 1 to 107 bytes",
      "unix socket to listen on", set_socket },
    { "backend", "cpu|cuda|auto", "cpu, cuda or auto",
      "device backend (auto: cuda when GPUs are present)", set_backend },
    { "devices", "N|auto|SPEC", "auto, an integer from 1 to 4096, or a spec like cuda:0x4",
      "logical devices; SPEC: cpu:N, cuda, cuda:0,1, cuda:0x4", set_devices },
    { "device-memory", "SIZE|auto", "auto or a size > 0 like 512M, 16G or 1T",
      "memory budget per device", set_device_memory },
    { "replica-cache", "SIZE|auto|off", "auto, off or a size like 0, 512M or 16G",
      "bytes per device kept of spilled experts' weights across steps (default auto)",
      set_replica_cache },
    { "keep-host-weights", "yes|no", "yes or no",
      "keep a host copy of client-created layers' weights (of a cluster layer, this node's "
      "share), to put a failed device's experts back (default no)", set_keep_host_weights },
    { "alpha", "X", "a finite number > 0",
      "capacity factor of Least-Loaded Assignment (default 1.0)", set_alpha },
    { "lambda", "X", "a finite number > 0",
      "imbalance that switches a step from EP to LLEP (default 1.3)", set_lambda },
    { "min-tokens", "N", "an integer from 0 to 4294967295",
      "smallest token chunk worth a separate GEMM (default 1024)", set_min_tokens },
    { "scale-min-tokens", "yes|no", "yes or no",
      "use at most capacity / devices as min-tokens (small batches; default no)",
      set_scale_min_tokens },
    { "planner", "cost|lla", "cost or lla",
      "cost: the cost-aware planner where the devices have a cost model; lla: the paper's "
      "(default cost)", set_planner },
    { "log-level", "LEVEL", "err, warning, notice, info or debug",
      "most verbose messages to log (default notice)", set_log_level },
    { "node-id", "ID", "an integer from 0 to 65535",
      "this node's id in the cluster (with --peers)", set_node_id },
    { "peers", "ID=HOST:PORT,...", "ID=HOST:PORT,... with numeric addresses",
      "every node of the cluster, this one included", llep__config_set_peers },
    { "listen-peers", "HOST:PORT", "HOST:PORT with a numeric address ([ADDR] for IPv6)",
      "accept peer links here (default: this node's entry in --peers)", llep__config_set_listen_peers },
    { "peer-heartbeat-ms", "N", "an integer from 10 to 600000",
      "heartbeat interval on peer links (default 1000)", set_peer_heartbeat_ms },
    { "peer-timeout-ms", "N", "an integer from 20 to 3600000",
      "silence after which a peer is down (default 5000)", set_peer_timeout_ms },
    { "peer-secret-file", "PATH", "a path of 1 to 255 bytes",
      "file with a secret all nodes share; peer links authenticate with it", set_peer_secret_file },
    { "cluster-communicator", "auto|off", "auto or off",
      "cluster layers' data between nodes over NCCL on GPUs (auto) or the peer links (off)",
      set_cluster_communicator },
    { "metrics-listen", "HOST:PORT", "HOST:PORT with a numeric address ([ADDR] for IPv6)",
      "serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
      llep__config_set_metrics_listen },
    { "metrics-expert-loads", "yes|no", "yes or no",
      "export each expert's load in the metrics too (default no)", set_metrics_expert_loads },
    { "state-dir", "PATH|off", "an absolute path of 1 to 255 bytes, or off",
      "keep the devices' calibration here (default $LLEP_STATE_DIR, else /var/lib/llep; off: "
      "calibrate at every start)", set_state_dir },
    { "calibrate-shapes", "yes|no", "yes or no",
      "measure the devices' cost model at each layer shape too, stored in the state directory "
      "(default yes; no: every layer plans with the reference shape's)", set_calibrate_shapes },
    { "model", "NAME=DIR", "NAME=DIR: a model name (printable ASCII, no blanks or '/', at most "
      "64 bytes) and its checkpoint directory",
      "load the checkpoint in DIR as model NAME at start (repeat for more models)", set_model },
};
const size_t llep__config_num_keys = sizeof(llep__config_keys) / sizeof(llep__config_keys[0]);

const config_key *llep__config_find_key(const char *name, size_t len) {
    for (size_t i = 0; i < llep__config_num_keys; i++) {
        const char *k = llep__config_keys[i].name;
        size_t j = 0;

        for (; j < len && k[j]; j++)
            if (k[j] != name[j] && !(k[j] == '-' && name[j] == '_'))
                break;
        if (j == len && !k[j])
            return &llep__config_keys[i];
    }
    return NULL;
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
    } else if (strcmp(key, "planner") == 0) {
        s.key = LLEP_SETTING_PLANNER;
        expect = "cost or lla";
        r = parse_planner(value, &s.planner);
    } else {
        llep__config_quote(q, sizeof(q), key, strlen(key));
        llep__errf(err, errlen, 0, "unknown setting %s: expected alpha, lambda, min_tokens, "
                               "policy, scale_min_tokens or planner", q);
        return -ENOENT;
    }
    if (r < 0) {
        llep__config_quote(q, sizeof(q), value, strlen(value));
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
    case LLEP_SETTING_PLANNER:
        snprintf(buf, len, "%s", llep__planner_name(s->planner));
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

void llep__config_quote(char *out, size_t outlen, const char *s, size_t len) {
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
