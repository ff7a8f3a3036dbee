/* llep-model-run: client processes running a model that llepd loaded from a checkpoint, every
 * MoE layer in order as a model's forward does (each layer's output is the next one's input).
 *
 *   llep-model-run [--socket PATH] --model NAME [--clients C] [--forwards F] [--tokens T]
 *                  [--hot-share X] [--check DIR] [--json]
 *
 * Each of C processes attaches to the layers NAME/0 .. NAME/(L-1) by name (no weights sent)
 * and runs F forwards of T tokens through all of them, routing X of each token's first slot
 * to expert 0. It prints its throughput and the mean latency of the first and the last layer.
 * --check DIR reads the same checkpoint here (daemon/model, as llepd does), creates each layer
 * again from those weights through llep_layer_create, and checks that the first forward's
 * outputs of every loaded layer match that layer's within the tolerance of DESIGN.md section 4
 * (the loaded layers are shared with the other clients, so their steps batch other tokens). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "json-out.h"
#include "llep/bf16.h"
#include "llep/client.h"
#include "model.h"
#include "parse-number.h"
#include "tool-random.h"

#define PROG "llep-model-run"

typedef struct opts {
    const char *socket, *model, *check_dir;
    uint32_t clients, forwards, tokens;
    double hot;
    int json;
} opts;

/* One client's view of the model. */
typedef struct run {
    const opts *o;
    llep_client *c;
    llep_model_info mi;
    llep_layer **layers, **twins;
    size_t esz;                       /* bytes of one activation element */
} run;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage(FILE *f) {
    fprintf(f, "Usage: %s [--socket PATH] --model NAME [--clients C] [--forwards F] [--tokens T]\n"
               "          [--hot-share X] [--check DIR] [--json]\n"
               "Runs C client processes through every MoE layer of a model llepd loaded\n"
               "(llepctl load NAME DIR), in order, F forwards of T tokens each.\n"
               "  --check DIR  compare every loaded layer with the same weights read from DIR\n"
               "               and created by this client (tolerance of DESIGN.md section 4)\n",
            PROG);
}

static int parse_opts(int argc, char **argv, opts *o) {
    static const struct option lo[] = {
        { "socket", required_argument, NULL, 's' }, { "model", required_argument, NULL, 'm' },
        { "clients", required_argument, NULL, 'c' }, { "forwards", required_argument, NULL, 'f' },
        { "tokens", required_argument, NULL, 't' }, { "hot-share", required_argument, NULL, 'x' },
        { "check", required_argument, NULL, 'k' }, { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
    };
    int ch;

    *o = (opts){ .clients = 4, .forwards = 4, .tokens = 64, .hot = 0.7 };
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        uint32_t *u = ch == 'c' ? &o->clients : ch == 'f' ? &o->forwards : &o->tokens;
        switch (ch) {
        case 's': o->socket = optarg; break;
        case 'm': o->model = optarg; break;
        case 'k': o->check_dir = optarg; break;
        case 'j': o->json = 1; break;
        case 'h': usage(stdout); exit(0);
        case 'c': case 'f': case 't':
            if (llep__parse_u32(optarg, u) < 0 || *u == 0 || *u > 1u << 20)
                return llep__cli_fail(PROG, 1, 2, "--%s: '%s' is not an integer from 1 to "
                                      "1048576", lo[ch == 'c' ? 2 : ch == 'f' ? 3 : 4].name,
                                      optarg);
            break;
        case 'x':
            if (llep__parse_double(optarg, &o->hot) < 0 || o->hot < 0 || o->hot > 1)
                return llep__cli_fail(PROG, 1, 2, "--hot-share: '%s' is not a number from 0 "
                                      "to 1", optarg);
            break;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc)
        return llep__cli_fail(PROG, 1, 2, "unexpected argument '%s'", argv[optind]);
    if (!o->model)
        return llep__cli_fail(PROG, 1, 2, "--model NAME is required");
    return 0;
}

/* ---- the check against the checkpoint ---------------------------------------------------- */

/* Creates layer i again from the checkpoint's weights, under a name of this process's. */
static int make_twin(run *rn, llep_model *m, uint32_t i) {
    llep_model_weights w;
    char name[96], err[512];
    int r = llep__model_layer_weights(m, i, &w, err, sizeof(err));

    if (r < 0) {
        fprintf(stderr, "%s: %s: %s\n", PROG, rn->o->check_dir, err);
        return r;
    }
    llep_layer_desc d = rn->mi.desc;
    d.w_gate = w.w_gate;
    d.w_up = w.w_up;
    d.w_down = w.w_down;
    d.b_gate = w.b_gate;
    d.b_up = w.b_up;
    d.b_down = w.b_down;
    snprintf(name, sizeof(name), "model-run-check-%d-%u", (int)getpid(), i);
    r = llep_layer_create(rn->c, name, &d, &rn->twins[i]);
    if (r < 0)
        fprintf(stderr, "%s: creating %s: %s\n", PROG, name, llep_client_error(rn->c));
    llep__model_weights_free(&w);
    return r;
}

static int make_twins(run *rn) {
    llep_model *m = NULL;
    char err[512];
    int r = llep__model_open(rn->o->check_dir, &m, err, sizeof(err));

    if (r < 0) {
        fprintf(stderr, "%s: --check: %s\n", PROG, err);
        return r;
    }
    rn->twins = calloc(rn->mi.num_layers, sizeof(*rn->twins));
    r = rn->twins ? 0 : -ENOMEM;
    for (uint32_t i = 0; i < rn->mi.num_layers && r == 0; i++)
        r = make_twin(rn, m, i);
    llep__model_close(m);
    return r;
}

static double elem(const run *rn, const void *v, size_t i) {
    return rn->esz == 2 ? llep_bf16_to_f32(((const uint16_t *)v)[i]) : ((const float *)v)[i];
}

/* Relative L2 difference between the loaded layer's output and the twin's. */
static double rel_diff(const run *rn, const void *a, const void *b, size_t n) {
    double num = 0, den = 0;

    for (size_t i = 0; i < n; i++) {
        double x = elem(rn, a, i), y = elem(rn, b, i);
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ---- one client -------------------------------------------------------------------------- */

static void route(const run *rn, uint64_t *state, int32_t *idx, float *g) {
    uint32_t n = rn->mi.desc.num_experts, k = rn->mi.desc.top_k;

    for (uint32_t t = 0; t < rn->o->tokens; t++)
        for (uint32_t j = 0; j < k; j++) {
            /* k distinct experts: the first is 0 with probability hot, then its successors */
            uint32_t first = (llep__tool_frand(state) + 1) / 2 < rn->o->hot
                                 ? 0 : (uint32_t)(*state >> 33) % n;
            idx[t * k + j] = j == 0 ? (int32_t)first : (int32_t)((idx[t * k] + j) % n);
            g[t * k + j] = 1.0f / (float)k;
        }
}

static int attach_all(run *rn, uint32_t id) {
    int r = llep_model_get(rn->c, rn->o->model, &rn->mi);

    if (r < 0) {
        fprintf(stderr, "client %u: model '%s': %s\n", id, rn->o->model,
                llep_client_error(rn->c));
        return r;
    }
    rn->esz = rn->mi.desc.dtype == LLEP_DTYPE_BF16 ? 2 : 4;
    rn->layers = calloc(rn->mi.num_layers, sizeof(*rn->layers));
    if (!rn->layers)
        return -ENOMEM;
    for (uint32_t i = 0; i < rn->mi.num_layers; i++)
        if ((r = llep_model_layer(rn->c, rn->o->model, i, &rn->layers[i])) < 0) {
            fprintf(stderr, "client %u: layer %s/%u: %s\n", id, rn->o->model, i,
                    llep_client_error(rn->c));
            return r;
        }
    return rn->o->check_dir ? make_twins(rn) : 0;
}

/* x: a random batch in the model's dtype. */
static void *random_x(const run *rn, uint64_t *state) {
    size_t n = (size_t)rn->o->tokens * rn->mi.desc.hidden;
    void *x = malloc(n * rn->esz);

    for (size_t i = 0; x && i < n; i++) {
        float v = llep__tool_frand(state);
        if (rn->esz == 2)
            ((uint16_t *)x)[i] = llep_f32_to_bf16(v);
        else
            ((float *)x)[i] = v;
    }
    return x;
}

/* F forwards through every layer; per layer latency sums in lat[]; the worst check in *err. */
static int forwards(run *rn, uint32_t id, double *lat, double *err) {
    const opts *o = rn->o;
    uint64_t state = 7777 + id;
    size_t n = (size_t)o->tokens * rn->mi.desc.hidden;
    void *x = random_x(rn, &state), *y = malloc(n * rn->esz), *y2 = malloc(n * rn->esz);
    float *g = malloc((size_t)o->tokens * rn->mi.desc.top_k * sizeof(float));
    int32_t *idx = malloc((size_t)o->tokens * rn->mi.desc.top_k * sizeof(int32_t));
    int r = x && y && y2 && g && idx ? 0 : -ENOMEM;

    for (uint32_t f = 0; f < o->forwards && r == 0; f++)
        for (uint32_t i = 0; i < rn->mi.num_layers && r == 0; i++) {
            route(rn, &state, idx, g);
            double s = now_s();
            r = llep_forward(rn->layers[i], o->tokens, x, idx, g, y);
            lat[i] += now_s() - s;
            if (r == 0 && f == 0 && rn->twins) {
                r = llep_forward(rn->twins[i], o->tokens, x, idx, g, y2);
                double e = rel_diff(rn, y, y2, n);
                *err = e > *err ? e : *err;
            }
            void *t = x;   /* this layer's output is the next one's input */
            x = y;
            y = t;
        }
    if (r < 0)
        fprintf(stderr, "client %u: forward: %s: %s\n", id, llep_strerror(r),
                llep_client_error(rn->c));
    free(x);
    free(y);
    free(y2);
    free(g);
    free(idx);
    return r;
}

/* Prints one client's figures; -EIO when stdout cannot take them. */
static int report(const run *rn, uint32_t id, const double *lat, double total, double err) {
    const opts *o = rn->o;
    uint32_t L = rn->mi.num_layers;
    double tol = rn->esz == 2 ? 1e-2 : 1e-5;
    double tps = (double)o->tokens * o->forwards / total;
    int r = 0;

    if (o->json) {
        /* One line per client process (JSON Lines), written whole by the fflush below. */
        json_object *j = llep__jout_object();
        llep__jout_u64(j, "client", id);
        llep__jout_u64(j, "layers", L);
        llep__jout_u64(j, "forwards", o->forwards);
        llep__jout_u64(j, "tokens", o->tokens);
        llep__jout_f64(j, "tokens_per_s", tps);
        llep__jout_f64(j, "first_layer_ms", lat[0] / o->forwards * 1e3);
        llep__jout_f64(j, "last_layer_ms", lat[L - 1] / o->forwards * 1e3);
        llep__jout_f64(j, "mean_layer_ms", total / o->forwards / L * 1e3);
        llep__jout_f64(j, "check_rel_l2", rn->twins ? err : -1.0);
        r = llep__jout_write(stdout, j, LLEP_JOUT_LINE, "\n");
    } else {
        printf("  client %u  %u forwards x %u layers of %u tokens  %8.0f tokens/s  layer "
               "mean %.3f ms (first %.3f, last %.3f)%s\n", id, o->forwards, L, o->tokens, tps,
               total / o->forwards / L * 1e3, lat[0] / o->forwards * 1e3,
               lat[L - 1] / o->forwards * 1e3,
               !rn->twins ? "" : err <= tol ? "  (every layer matches the checkpoint)"
                                            : "  (MISMATCH)");
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        r = -EIO;
    return r;
}

static int run_client(const opts *o, uint32_t id) {
    run rn = { .o = o };
    double err = 0, total = 0, *lat = NULL;
    int r = llep_connect(o->socket, &rn.c);

    if (r < 0) {
        fprintf(stderr, "client %u: connect: %s\n", id, llep_client_error(NULL));
        return 1;
    }
    r = attach_all(&rn, id);
    if (r == 0 && !(lat = calloc(rn.mi.num_layers, sizeof(*lat))))
        r = -ENOMEM;
    if (r == 0)
        r = forwards(&rn, id, lat, &err);
    if (r == 0) {
        for (uint32_t i = 0; i < rn.mi.num_layers; i++)
            total += lat[i];
        r = report(&rn, id, lat, total, err);
    }
    free(lat);
    free(rn.layers);
    free(rn.twins);
    llep_disconnect(rn.c);   /* releases every layer handle */
    return r < 0 || (rn.twins && err > (rn.esz == 2 ? 1e-2 : 1e-5)) ? 1 : 0;
}

int main(int argc, char **argv) {
    opts o;
    int r = parse_opts(argc, argv, &o), failed = 0;

    if (r)
        return r;
    for (uint32_t i = 0; i < o.clients; i++) {
        pid_t p = fork();
        if (p < 0) {
            perror(PROG ": fork");
            return 1;
        }
        if (p == 0)
            _exit(run_client(&o, i));
    }
    for (uint32_t i = 0; i < o.clients; i++) {
        int st = 0;
        if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed++;
    }
    if (failed)
        fprintf(stderr, "%s: %d of %u clients failed\n", PROG, failed, o.clients);
    return failed ? 1 : 0;
}
