/* llep-demo: several inference processes sharing one MoE layer in llepd under skewed routing.
 *
 *   llep-demo [--socket PATH] [--layer NAME] [--policy auto|ep|llep | --compare]
 *             [--clients C] [--forwards F] [--tokens T] [--hot-share X] [--experts N]
 *             [--top-k K] [--hidden D] [--inter H] [--min-tokens M] [--check]
 *             [--scope node|cluster] [--client-socket PATH]... [--then CMD] [--json]
 *
 * The parent creates the layer with random (seeded) weights, then C client processes attach
 * to it by name and each runs F forwards of T tokens, routing X of the token-slots to expert 0
 * and the rest uniformly. With --check each client compares its first and last forwards with a
 * float64 reference of DESIGN.md section 4 (a cluster layer's later steps may take another
 * path between nodes than its first). --compare creates two layers with the same weights,
 * NAME-ep (policy ep) and NAME-llep (policy llep), and runs the same clients on each in turn.
 * --then runs a shell command once the clients are done, while the layers still exist (to
 * show `llepctl stats` for them). Prints each client's latency and throughput.
 *
 * --scope cluster creates cluster-scope layers (one layer over every node of a llepd cluster);
 * --client-socket, given once per node, spreads the clients over those daemons in turn, so
 * clients on every node share the layer. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "json-out.h"
#include "llep/client.h"
#include "parse-number.h"
#include "tool-random.h"

typedef struct opts {
    const char *socket, *layer;
    enum llep_policy policy;
    uint32_t clients, forwards, tokens, n, k, d, h, min_tokens;
    double hot;
    int check, json, compare;
    const char *then;
    enum llep_scope scope;
    const char *client_sockets[16];
    uint32_t nclient_sockets;
} opts;

static uint64_t rng = 12345;

static float frand(void) {
    return llep__tool_frand(&rng);
}

static float *rand_vec(size_t n, float scale) {
    return llep__tool_rand_vec(&rng, n, scale);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int usage(const char *msg) {
    if (msg)
        fprintf(stderr, "llep-demo: %s\nTry 'llep-demo --help'.\n", msg);
    else
        printf("Usage: llep-demo [--socket PATH] [--layer NAME] [--policy auto|ep|llep]\n"
               "                 [--clients C] [--forwards F] [--tokens T] [--hot-share X]\n"
               "                 [--experts N] [--top-k K] [--hidden D] [--inter H] [--min-tokens M]\n"
               "                 [--compare] [--check] [--scope node|cluster]\n"
               "                 [--client-socket PATH]... [--then CMD] [--json]\n"
               "Runs C client processes that share one layer in llepd under skewed routing.\n");
    return msg ? 2 : 0;
}

static int parse_u32_opt(const char *name, const char *arg, uint32_t *ret) {
    if (llep__parse_u32(arg, ret) < 0 || *ret == 0) {
        fprintf(stderr, "llep-demo: --%s: '%s' is not a positive integer\n", name, arg);
        return -1;
    }
    return 0;
}

static int parse_opts(int argc, char **argv, opts *o) {
    static const struct option lo[] = {
        { "socket", 1, NULL, 's' }, { "layer", 1, NULL, 'L' }, { "policy", 1, NULL, 'p' },
        { "clients", 1, NULL, 'c' }, { "forwards", 1, NULL, 'f' }, { "tokens", 1, NULL, 't' },
        { "hot-share", 1, NULL, 'x' }, { "experts", 1, NULL, 'n' }, { "top-k", 1, NULL, 'k' },
        { "hidden", 1, NULL, 'd' }, { "inter", 1, NULL, 'i' }, { "check", 0, NULL, 'C' },
        { "min-tokens", 1, NULL, 'm' },
        { "json", 0, NULL, 'j' }, { "compare", 0, NULL, 'P' }, { "then", 1, NULL, 'T' },
        { "scope", 1, NULL, 'S' }, { "client-socket", 1, NULL, 'A' },
        { "help", 0, NULL, 'h' }, { NULL, 0, NULL, 0 },
    };
    int c, r = 0;

    *o = (opts){ .layer = "demo", .policy = LLEP_POLICY_AUTO, .clients = 4, .forwards = 50,
                 .tokens = 256, .n = 32, .k = 4, .d = 256, .h = 256, .hot = 0.8 };
    opterr = 0;
    while (r == 0 && (c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 's': o->socket = optarg; break;
        case 'L': o->layer = optarg; break;
        case 'p':
            if (strcmp(optarg, "auto") == 0)
                o->policy = LLEP_POLICY_AUTO;
            else if (strcmp(optarg, "ep") == 0)
                o->policy = LLEP_POLICY_EP;
            else if (strcmp(optarg, "llep") == 0)
                o->policy = LLEP_POLICY_LLEP;
            else
                return usage("--policy must be auto, ep or llep");
            break;
        case 'c': r = parse_u32_opt("clients", optarg, &o->clients); break;
        case 'f': r = parse_u32_opt("forwards", optarg, &o->forwards); break;
        case 't': r = parse_u32_opt("tokens", optarg, &o->tokens); break;
        case 'n': r = parse_u32_opt("experts", optarg, &o->n); break;
        case 'k': r = parse_u32_opt("top-k", optarg, &o->k); break;
        case 'd': r = parse_u32_opt("hidden", optarg, &o->d); break;
        case 'i': r = parse_u32_opt("inter", optarg, &o->h); break;
        case 'm': r = parse_u32_opt("min-tokens", optarg, &o->min_tokens); break;
        case 'x':
            if (llep__parse_double(optarg, &o->hot) < 0 || o->hot < 0 || o->hot > 1)
                return usage("--hot-share must be a number in [0, 1]");
            break;
        case 'S':
            if (strcmp(optarg, "node") == 0)
                o->scope = LLEP_SCOPE_NODE;
            else if (strcmp(optarg, "cluster") == 0)
                o->scope = LLEP_SCOPE_CLUSTER;
            else
                return usage("--scope must be node or cluster");
            break;
        case 'A':
            if (o->nclient_sockets == 16)
                return usage("at most 16 --client-socket");
            o->client_sockets[o->nclient_sockets++] = optarg;
            break;
        case 'C': o->check = 1; break;
        case 'P': o->compare = 1; break;
        case 'T': o->then = optarg; break;
        case 'j': o->json = 1; break;
        case 'h': usage(NULL); return 1;
        default: return usage("unknown option or missing value");
        }
    }
    if (r < 0)
        return 2;
    if (optind < argc)
        return usage("unexpected argument");
    if (o->k > o->n)
        return usage("--top-k must not exceed --experts");
    return 0;
}

typedef struct weights {
    float *wg, *wu, *wd;
} weights;

static int make_weights(const opts *o, weights *w) {
    size_t ndh = (size_t)o->n * o->d * o->h;
    float s = 1.0f / sqrtf((float)o->d);

    rng = 2026;
    w->wg = rand_vec(ndh, s);
    w->wu = rand_vec(ndh, s);
    w->wd = rand_vec(ndh, 1.0f / sqrtf((float)o->h));
    return w->wg && w->wu && w->wd ? 0 : -ENOMEM;
}

/* float64 reference of DESIGN.md section 4 (SWIGLU, no biases) for one forward. */
static double check_output(const opts *o, const weights *w, uint32_t t, const float *x,
                           const int32_t *idx, const float *g, const float *y) {
    double num = 0, den = 0, *a = malloc(o->h * sizeof(*a)), *ref = calloc(o->d, sizeof(*ref));

    for (uint32_t i = 0; i < t; i++) {
        memset(ref, 0, o->d * sizeof(*ref));
        for (uint32_t k = 0; k < o->k; k++) {
            size_t e = (size_t)idx[i * o->k + k];
            for (uint32_t j = 0; j < o->h; j++) {
                double gg = 0, uu = 0;
                for (uint32_t q = 0; q < o->d; q++) {
                    gg += (double)x[(size_t)i * o->d + q] * w->wg[(e * o->d + q) * o->h + j];
                    uu += (double)x[(size_t)i * o->d + q] * w->wu[(e * o->d + q) * o->h + j];
                }
                a[j] = gg / (1 + exp(-gg)) * uu;
            }
            for (uint32_t q = 0; q < o->d; q++) {
                double s = 0;
                for (uint32_t j = 0; j < o->h; j++)
                    s += a[j] * w->wd[(e * o->h + j) * o->d + q];
                ref[q] += g[i * o->k + k] * s;
            }
        }
        for (uint32_t q = 0; q < o->d; q++) {
            double dlt = y[(size_t)i * o->d + q] - ref[q];
            num += dlt * dlt;
            den += ref[q] * ref[q];
        }
    }
    free(a);
    free(ref);
    return sqrt(num / (den > 0 ? den : 1));
}

static void route(const opts *o, uint32_t t, int32_t *idx, float *g) {
    for (uint32_t i = 0; i < t * o->k; i++) {
        double u = (frand() + 1) / 2;
        idx[i] = u < o->hot ? 0 : (int32_t)(1 + (rng >> 24) % (o->n - 1));
        g[i] = 1.0f / (float)o->k;
    }
}

/* One client process: attach, run the forwards, print one line. Returns the exit code. */
static int run_client(const opts *o, const weights *w, const char *name, uint32_t id) {
    llep_client *c;
    llep_layer *l;
    uint32_t t = o->tokens;
    const char *sock = o->nclient_sockets ? o->client_sockets[id % o->nclient_sockets] : o->socket;
    int r = llep_connect(sock, &c);

    if (r < 0) {
        fprintf(stderr, "client %u: connect: %s: %s\n", id, llep_strerror(r),
                llep_client_error(NULL));
        return 1;
    }
    r = llep_layer_create(c, name, NULL, &l);
    if (r < 0) {
        fprintf(stderr, "client %u: attach '%s': %s\n", id, name, llep_client_error(c));
        llep_disconnect(c);
        return 1;
    }
    rng = 7777 + id;
    float *x = rand_vec((size_t)t * o->d, 1.0f), *g = malloc((size_t)t * o->k * 4);
    float *y = malloc((size_t)t * o->d * 4);
    int32_t *idx = malloc((size_t)t * o->k * 4);
    /* el sums the forwards' latencies: the float64 checks are not in it. */
    double err = -1, el = 0, worst = 0;
    for (uint32_t f = 0; f < o->forwards && r == 0; f++) {
        route(o, t, idx, g);
        double s = now_s();
        r = llep_forward(l, t, x, idx, g, y);
        double lat = now_s() - s;
        el += lat;
        worst = lat > worst ? lat : worst;
        if (r == 0 && (f == 0 || f + 1 == o->forwards) && o->check) {
            double e = check_output(o, w, t, x, idx, g, y);
            err = e > err ? e : err;
        }
    }
    if (r < 0)
        fprintf(stderr, "client %u: forward: %s: %s\n", id, llep_strerror(r),
                llep_client_error(c));
    else if (o->json) {
        /* One line per client process (JSON Lines), written whole by the fflush below. */
        json_object *j = llep__jout_object();
        llep__jout_u64(j, "client", id);
        llep__jout_u64(j, "forwards", o->forwards);
        llep__jout_f64(j, "tokens_per_s", (double)t * o->forwards / el);
        llep__jout_f64(j, "mean_ms", el / o->forwards * 1e3);
        llep__jout_f64(j, "max_ms", worst * 1e3);
        llep__jout_f64(j, "check_rel_l2", err);
        r = llep__jout_write(stdout, j, LLEP_JOUT_LINE, "\n");
    } else
        printf("  client %u  %4u forwards of %u tokens  %9.0f tokens/s  mean %7.3f ms  max "
               "%7.3f ms%s\n", id, o->forwards, t, (double)t * o->forwards / el,
               el / o->forwards * 1e3, worst * 1e3,
               err < 0 ? "" : err < 1e-5 ? "  (matches float64 reference)" : "  (MISMATCH)");
    if (fflush(stdout) != 0 || ferror(stdout))
        r = -EIO;
    free(x);
    free(g);
    free(y);
    free(idx);
    llep_layer_release(l);
    llep_disconnect(c);
    return r < 0 || (err >= 1e-5) ? 1 : 0;
}

static const char *policy_name(enum llep_policy p) {
    return p == LLEP_POLICY_EP ? "ep" : p == LLEP_POLICY_LLEP ? "llep" : "auto";
}

/* Creates one layer and runs the client processes on it; returns failures. The layer handle
 * stays open (in *ret) so the layer outlives its clients until --then has run. */
static int run_layer(const opts *o, const weights *w, llep_client *c, const char *name,
                     enum llep_policy policy, llep_layer **ret) {
    llep_layer_desc d = { .num_experts = o->n, .top_k = o->k, .hidden = o->d, .inter = o->h,
                          .dtype = LLEP_DTYPE_F32, .act = LLEP_ACT_SWIGLU, .w_gate = w->wg,
                          .w_up = w->wu, .w_down = w->wd, .policy = policy,
                          .min_tokens = o->min_tokens, .scope = o->scope };
    int r = llep_layer_create(c, name, &d, ret);

    if (r < 0) {
        fprintf(stderr, "llep-demo: create layer '%s': %s\n", name, llep_client_error(c));
        return 1;
    }
    if (!o->json)
        printf("%slayer '%s': N=%u K=%u D=%u H=%u, policy %s; %u clients%s, %.0f%% of "
               "token-slots to expert 0\n", o->scope == LLEP_SCOPE_CLUSTER ? "cluster " : "",
               name, o->n, o->k, o->d, o->h, policy_name(policy), o->clients,
               o->nclient_sockets > 1 ? " spread over the nodes" : "", o->hot * 100);
    fflush(stdout);
    int failed = 0, st;
    for (uint32_t i = 0; i < o->clients; i++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(run_client(o, w, name, i));
        failed += pid < 0;
    }
    while (wait(&st) > 0)
        failed += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    return failed;
}

int main(int argc, char **argv) {
    opts o;
    weights w = { 0 };
    llep_client *c;
    llep_layer *l[2] = { NULL, NULL };
    char names[2][160];
    int r = parse_opts(argc, argv, &o);

    if (r != 0)
        return r == 1 ? 0 : 2;
    if (make_weights(&o, &w) < 0) {
        fprintf(stderr, "llep-demo: out of memory\n");
        return 1;
    }
    r = llep_connect(o.socket, &c);
    if (r < 0) {
        fprintf(stderr, "llep-demo: connect: %s: %s\n", llep_strerror(r), llep_client_error(NULL));
        return 1;
    }
    int failed = 0;
    if (o.compare) {
        snprintf(names[0], sizeof(names[0]), "%s-ep", o.layer);
        snprintf(names[1], sizeof(names[1]), "%s-llep", o.layer);
        failed += run_layer(&o, &w, c, names[0], LLEP_POLICY_EP, &l[0]);
        failed += failed ? 0 : run_layer(&o, &w, c, names[1], LLEP_POLICY_LLEP, &l[1]);
    } else {
        failed += run_layer(&o, &w, c, o.layer, o.policy, &l[0]);
    }
    if (o.then && !failed) {
        fflush(stdout);
        int st = system(o.then);
        failed += st != 0;
    }
    llep_layer_release(l[0]);
    llep_layer_release(l[1]);
    llep_disconnect(c);
    free(w.wg);
    free(w.wu);
    free(w.wd);
    return failed ? 1 : 0;
}
