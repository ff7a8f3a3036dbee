/* llepd's options: command line and --config FILE, with the same keys.
 *
 *   --socket PATH          unix socket (default: $LLEP_SOCKET, else /run/llep/llepd.sock for
 *                          root, else $XDG_RUNTIME_DIR/llep/llepd.sock)
 *   --backend cpu|cuda|auto
 *   --devices N|auto       logical devices (cpu) or GPUs to use (cuda)
 *   --device-memory SIZE|auto   memory budget per device, K/M/G/T suffixes (1024-based)
 *   --alpha X              LLA capacity factor, default for layers that set none
 *   --lambda X             imbalance threshold, likewise
 *   --min-tokens N         smallest chunk worth a GEMM, likewise
 *   --log-level err|warning|notice|info|debug
 *   --node-id ID           this daemon's node id in the cluster (0 to 65535)
 *   --peers ID=HOST:PORT,...   every node of the cluster, this one included; HOST is a
 *                          numeric IPv4 address or an IPv6 address in brackets
 *   --listen-peers HOST:PORT   where to accept peer links (default: this node's own entry
 *                          in --peers, e.g. 0.0.0.0:PORT to accept on every interface)
 *   --peer-heartbeat-ms N  heartbeat interval on peer links (default 1000)
 *   --peer-timeout-ms N    silence after which a peer shows as down (default 5000)
 *   --peer-secret-file PATH   a secret every node shares: peer links authenticate with it
 *   --cluster-communicator auto|off   cluster layers' data between nodes over the backend's
 *                          communicator (NCCL on CUDA) when it has one (auto, the default),
 *                          or always over the peer links (off)
 *   --metrics-listen HOST:PORT   serve Prometheus metrics at http://HOST:PORT/metrics (off
 *                          unless given; HOST numeric, [ADDR] for IPv6)
 *   --metrics-expert-loads yes|no   export every expert's load too (default no: cardinality)
 *   --state-dir PATH|off   where llepd keeps what it learns about this machine (its
 *                          calibration of the devices); default $LLEP_STATE_DIR, else
 *                          /var/lib/llep
 *   --config FILE          read `key = value` lines first; the command line overrides them
 *
 * A config file has one `key = value` per line, keys as the long options without "--" ('_'
 * may stand for '-'); lines whose first non-blank character is '#' are comments, blank lines
 * are ignored, and there are no trailing comments (a '#' after a value is part of it, so the
 * value is rejected rather than silently cut). Unknown keys and bad values are errors naming
 * FILE:LINE and the key.
 *
 * Nothing here prints or exits: every function returns 0 or a negative errno and puts a
 * sentence for the user in err, so llepd's main() decides how to report it and tests can
 * check it. */
#ifndef LLEP_CONFIG_H
#define LLEP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Same values as the protocol's Backend enum. */
enum llep_backend_kind { LLEP_BACKEND_AUTO = 0, LLEP_BACKEND_CPU = 1, LLEP_BACKEND_CUDA = 2 };

/* syslog priorities, so they can go to sd_journal_print() and the "<N>" stderr prefix as
 * they are. */
enum llep_log_level {
    LLEP_LOG_ERR = 3,
    LLEP_LOG_WARNING = 4,
    LLEP_LOG_NOTICE = 5,
    LLEP_LOG_INFO = 6,
    LLEP_LOG_DEBUG = 7,
};

#define LLEP_SOCKET_SYSTEM "/run/llep/llepd.sock"
/* sun_path holds 108 bytes including the terminating NUL. */
#define LLEP_SOCKET_PATH_MAX 107u
/* Cluster membership (daemon/cluster.h): node ids, entries in --peers, addresses. */
#define LLEP_NODE_ID_MAX 65535u
#define LLEP_MAX_NODES 64u
#define LLEP_PEER_HOST_MAX 46u          /* INET6_ADDRSTRLEN, without brackets */
#define LLEP_PEER_HEARTBEAT_MS_DEFAULT 1000u
#define LLEP_PEER_TIMEOUT_MS_DEFAULT 5000u

/* One node of --peers, or the --listen-peers address (id unused). host is the address as
 * inet_ntop() writes it, so two spellings of one address compare equal. */
typedef struct llep_peer_addr {
    uint32_t id;
    bool ipv6;
    char host[LLEP_PEER_HOST_MAX];
    uint16_t port;
} llep_peer_addr;

/* Models llepd loads at start (the `model` key, repeated: NAME=DIR). */
#define LLEP_CONFIG_MAX_MODELS 32u
#define LLEP_CONFIG_MODEL_NAME_MAX 64u     /* LLEP_MODEL_NAME_MAX of proto/frame.h */
#define LLEP_CONFIG_MODEL_PATH_MAX 1024u

typedef struct llep_model_spec {
    char name[LLEP_CONFIG_MODEL_NAME_MAX + 1];
    char path[LLEP_CONFIG_MODEL_PATH_MAX];   /* absolute */
} llep_model_spec;

/* llepd's state directory (StateDirectory=llep in llepd.service): the devices' calibration
 * (daemon/server/calib-file.c) lives there. */
#define LLEP_STATE_DIR_DEFAULT "/var/lib/llep"

/* Config files are a few lines; anything bigger is not one. */
#define LLEP_CONFIG_FILE_MAX (1u << 20)

/* replica-cache = auto: what each device's budget leaves after the weights and the largest
 * step (the devices' LLEP_DEVICES_CACHE_AUTO, which core does not include). */
#define LLEP_CONFIG_CACHE_AUTO UINT64_MAX

typedef struct llep_config {
    char *socket_path;            /* NULL until set or llep__config_finish() picks the default */
    char *config_file;            /* --config FILE, or NULL */
    enum llep_backend_kind backend;
    uint32_t devices;             /* 0: the backend decides */
    char devices_spec[128];       /* "cuda:0x4", "cpu:8", ...; "" when a count or auto */
    uint64_t device_memory;       /* bytes per device; 0: the backend decides */
    /* Replica cache per device (devices.h): bytes, 0 off, LLEP_CONFIG_CACHE_AUTO (default). */
    uint64_t replica_cache;
    double alpha;                 /* LLEP_DEFAULT_ALPHA unless set */
    double lambda;                /* LLEP_DEFAULT_LAMBDA unless set */
    uint32_t min_tokens;          /* LLEP_DEFAULT_MIN_TOKENS unless set */
    bool scale_min_tokens;        /* cap m at capacity / P (plan.h); false unless set */
    /* planner = cost|lla: LLEP_PLANNER_COST unless set (plan.h: node-scope steps plan with it
     * when their devices have a cost model, with LLA otherwise). */
    int planner;
    enum llep_log_level log_level; /* LLEP_LOG_NOTICE unless set */
    /* Cluster membership: none of it set means a single-node daemon. Fixed arrays, so the
     * server's by-value copy of the config owns nothing. */
    bool have_node_id;
    uint32_t node_id;
    llep_peer_addr peers[LLEP_MAX_NODES];  /* sorted by id, ids and addresses unique */
    uint32_t npeers;
    bool have_listen_peers;
    llep_peer_addr listen_peers;
    uint32_t peer_heartbeat_ms, peer_timeout_ms;
    char peer_secret_file[256];   /* "" : peer links unauthenticated */
    bool cluster_communicator_off; /* --cluster-communicator off */
    /* The metrics endpoint (daemon/server/metrics.h): off unless have_metrics_listen. */
    bool have_metrics_listen;
    llep_peer_addr metrics_listen;
    bool metrics_expert_loads;    /* per-expert load series too; false unless set */
    /* Keep a host copy of each client-created layer's weights, from which a failed device's
     * experts are put back (devices.h, "failed devices"); false unless set. */
    bool keep_host_weights;
    /* The state directory, absolute; "" (state-dir = off): nothing is stored, llepd
     * calibrates the devices at every start. Until llep__config_finish() only what was set
     * (state_dir_set); it fills in $LLEP_STATE_DIR or LLEP_STATE_DIR_DEFAULT. */
    char state_dir[256];
    bool state_dir_set;
    /* Calibrate the devices at each layer shape too (daemon/server/calib-shapes.c), kept in
     * the state directory beside the reference; true unless set. */
    bool calibrate_shapes;
    llep_model_spec models[LLEP_CONFIG_MAX_MODELS];  /* in the order given */
    uint32_t nmodels;
    char detail[160];             /* why the last value was bad, when "expected" is not enough */
    bool help, version;           /* --help / --version given: main() prints and exits */
} llep_config;

/* Defaults of DESIGN.md and llep/types.h; no socket path yet. */
void llep__config_init(llep_config *c);
void llep__config_fini(llep_config *c);

/* Sets one key (as in a config file: "alpha", "device-memory", ...) from text. Returns 0,
 * -ENOENT for an unknown key, -EINVAL for a bad value, -ENOMEM; err says which and why, e.g.
 * "bad value 'x' for key 'alpha': expected a finite number > 0". "config" is not a key. */
int llep__config_set(llep_config *c, const char *key, const char *value,
                     char *err, size_t errlen);

/* Parses the text of a config file; name (the path) prefixes every error as "name:LINE: ".
 * Stops at the first error. */
int llep__config_parse_text(llep_config *c, const char *name, const char *text, size_t len,
                            char *err, size_t errlen);

/* Reads and parses a config file (at most LLEP_CONFIG_FILE_MAX bytes). */
int llep__config_load_file(llep_config *c, const char *path, char *err, size_t errlen);

/* Parses llepd's command line: loads --config FILE first, then applies the other options in
 * order, so the command line wins whatever the order; then llep__config_finish(). With
 * --help or --version it only records them and returns 0 (without reading any file). */
int llep__config_parse_args(llep_config *c, int argc, char *const *argv,
                            char *err, size_t errlen);

/* Fills in what depends on the environment: the default socket path when none was set.
 * Also checks the options that only make sense together: node-id and peers go together, this
 * node must have an entry in peers unless listen-peers is given, and peer-timeout-ms must
 * exceed peer-heartbeat-ms (-EINVAL naming them). */
int llep__config_finish(llep_config *c, char *err, size_t errlen);

/* The default socket path: $LLEP_SOCKET when set and not empty, else LLEP_SOCKET_SYSTEM when
 * running as root, else $XDG_RUNTIME_DIR/llep/llepd.sock (XDG_RUNTIME_DIR must be absolute).
 * Returns 0 with a malloc()ed path, -ENXIO when none applies, -ENAMETOOLONG over
 * LLEP_SOCKET_PATH_MAX, -ENOMEM. Also what llep_connect(NULL) uses. */
int llep__socket_path_default(char **ret);

/* Where a client connects by default: as llep__socket_path_default(), except that a user
 * without a socket at the per-user path, where LLEP_SOCKET_SYSTEM exists, gets that one. */
int llep__socket_path_connect_default(char **ret);

/* The address this node accepts peer links on: --listen-peers, else its own --peers entry;
 * NULL when the daemon is not in a cluster. */
const llep_peer_addr *llep__config_listen_addr(const llep_config *c);

/* "127.0.0.1:7000" or "[::1]:7000". */
void llep__peer_addr_format(const llep_peer_addr *a, char *buf, size_t len);

/* FNV-1a 64 of the canonical peers list ("ID=HOST:PORT," sorted by id). Peers exchange it in
 * their hello, so two daemons started with different lists refuse each other. */
uint64_t llep__peers_hash(const llep_config *c);

/* `llepctl set [LAYER] KEY=VALUE` (SetRequest): the settings a running daemon accepts, for
 * one layer or as the default of all layers. Parsed here, with the same rules as the config
 * file, so llepctl's values and llepd's options cannot disagree. */
enum llep_setting_key {
    LLEP_SETTING_ALPHA,
    LLEP_SETTING_LAMBDA,
    LLEP_SETTING_MIN_TOKENS,
    LLEP_SETTING_POLICY,
    LLEP_SETTING_SCALE_MIN_TOKENS,
    LLEP_SETTING_PLANNER,
};

typedef struct llep_setting {
    enum llep_setting_key key;
    double value;                 /* alpha, lambda: finite and > 0 */
    uint32_t min_tokens;
    int policy;                   /* enum llep_policy */
    bool flag;                    /* scale_min_tokens */
    int planner;                  /* enum llep_planner */
} llep_setting;

/* Parses KEY (alpha, lambda, min_tokens or min-tokens, policy, scale_min_tokens, planner)
 * and VALUE (policy: auto, ep or llep; scale_min_tokens: yes or no; planner: cost or lla).
 * Returns 0, -ENOENT for an unknown key or -EINVAL for a bad value, with a sentence in err. */
int llep__setting_parse(const char *key, const char *value, llep_setting *ret,
                        char *err, size_t errlen);

/* Writes the setting's value as llepctl shows it (SetReply.value): "1.5", "1024", "llep". */
void llep__setting_format(const llep_setting *s, char *buf, size_t len);

const char *llep__policy_name(int policy);
/* "cost" or "lla" (enum llep_planner), "unknown" otherwise. */
const char *llep__planner_name(int planner);

/* Usage text for --help. */
void llep__config_usage(FILE *f, const char *program);

const char *llep__backend_name(enum llep_backend_kind backend);
const char *llep__log_level_name(enum llep_log_level level);

#endif
