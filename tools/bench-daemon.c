/* llep-bench-daemon: what going through llepd costs.
 *
 *   llep-bench-daemon --socket PATH [--devices P] [--iterations N] [--tokens T] [--json]
 *
 * 1. Round trip: median, p99 and minimum wall time of a 1-token llep_forward() on a small
 *    layer (N 8, K 2, D 64, H 64), after a warm-up.
 * 2. Overhead: the same T-token forward (default 8192; N 32, K 4, D 512, H 512, mild skew)
 *    through llepd and on an in-process engine with the same P devices, alternating, and the
 *    median of each; the overhead is daemon / in-process - 1.
 * The daemon must run with --devices P and the CPU backend, on an otherwise idle machine. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "json-out.h"
#include "llep/client.h"
#include "parse-number.h"
#include "tool-random.h"

static uint64_t rng = 99;

static float frand(void) {
    return llep__tool_frand(&rng);
}

static float *rand_vec(size_t n, float scale) {
    return llep__tool_rand_vec(&rng, n, scale);
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct shape {
    uint32_t n, k, d, h;
    float *wg, *wu, *wd;
} shape;

static int shape_make(shape *s, uint32_t n, uint32_t k, uint32_t d, uint32_t h) {
    size_t ndh = (size_t)n * d * h;
    *s = (shape){ n, k, d, h, rand_vec(ndh, 0.05f), rand_vec(ndh, 0.05f), rand_vec(ndh, 0.05f) };
    return s->wg && s->wu && s->wd ? 0 : -ENOMEM;
}

static void shape_free(shape *s) {
    free(s->wg);
    free(s->wu);
    free(s->wd);
}

/* An in-process engine with the layer's weights on the CPU backend, for comparison. */
static int engine_for(const shape *s, uint32_t devices, llep_engine **ret) {
    llep_engine_config cfg;
    char err[256];

    llep__engine_config_default(&cfg);
    cfg.num_experts = s->n;
    cfg.top_k = s->k;
    cfg.hidden = s->d;
    cfg.inter = s->h;
    cfg.w_gate = s->wg;
    cfg.w_up = s->wu;
    cfg.w_down = s->wd;
    cfg.num_devices = devices;
    int r = llep__engine_new(&cfg, ret, err, sizeof(err));
    if (r < 0)
        fprintf(stderr, "llep-bench-daemon: engine: %s\n", err);
    return r;
}

static int create_layer(llep_client *c, const char *name, const shape *s, llep_layer **ret) {
    llep_layer_desc d = { .num_experts = s->n, .top_k = s->k, .hidden = s->d, .inter = s->h,
                          .w_gate = s->wg, .w_up = s->wu, .w_down = s->wd };
    return llep_layer_create(c, name, &d, ret);
}

typedef struct inputs {
    uint32_t t;
    float *x, *w, *y;
    int32_t *idx;
} inputs;

/* Routing with a quarter of the slots on expert 0, the rest uniform. */
static int inputs_make(inputs *in, const shape *s, uint32_t t) {
    in->t = t;
    in->x = rand_vec((size_t)t * s->d, 1.0f);
    in->y = malloc((size_t)t * s->d * sizeof(float));
    in->w = malloc((size_t)t * s->k * sizeof(float));
    in->idx = malloc((size_t)t * s->k * sizeof(int32_t));
    if (!in->x || !in->y || !in->w || !in->idx)
        return -ENOMEM;
    for (size_t i = 0; i < (size_t)t * s->k; i++) {
        double u = (frand() + 1) / 2;
        in->idx[i] = u < 0.25 ? 0 : (int32_t)((rng >> 24) % s->n);
        in->w[i] = 1.0f / (float)s->k;
    }
    return 0;
}

static void inputs_free(inputs *in) {
    free(in->x);
    free(in->y);
    free(in->w);
    free(in->idx);
}

typedef struct figures {
    double rtt_median, rtt_p99, rtt_min;
    double step_median;          /* the same 1-token step on an in-process engine */
    double daemon_ms, engine_ms, overhead;
    uint32_t iterations, tokens, devices;
} figures;

static int bench_rtt(llep_client *c, uint32_t iterations, figures *f) {
    /* f->devices must be set: the in-process comparison uses as many devices. */
    shape s;
    inputs in;
    llep_layer *l;
    double *t = malloc(iterations * sizeof(*t));
    int r = shape_make(&s, 8, 2, 64, 64);

    if (r == 0)
        r = inputs_make(&in, &s, 1);
    if (r == 0)
        r = create_layer(c, "bench-rtt", &s, &l);
    for (uint32_t i = 0; r == 0 && i < iterations / 10 + 10; i++) /* warm-up */
        r = llep_forward(l, 1, in.x, in.idx, in.w, in.y);
    for (uint32_t i = 0; r == 0 && i < iterations; i++) {
        double t0 = now_us();
        r = llep_forward(l, 1, in.x, in.idx, in.w, in.y);
        t[i] = now_us() - t0;
    }
    if (r == 0) {
        qsort(t, iterations, sizeof(*t), cmp_double);
        f->rtt_median = t[iterations / 2];
        f->rtt_p99 = t[(size_t)(iterations * 0.99)];
        f->rtt_min = t[0];
        llep_layer_release(l);
    }
    /* The step alone, in process, tells the engine's share of the round trip apart. */
    llep_engine *e = NULL;
    if (r == 0)
        r = engine_for(&s, f->devices, &e);
    llep_engine_batch *b = calloc(f->devices, sizeof(*b));
    if (r == 0 && b) {
        b[0] = (llep_engine_batch){ 1, in.x, in.idx, in.w, in.y };
        for (uint32_t i = 0; r == 0 && i < iterations; i++) {
            double t0 = now_us();
            r = llep__engine_step(e, b, NULL, NULL);
            t[i] = now_us() - t0;
        }
        qsort(t, iterations, sizeof(*t), cmp_double);
        f->step_median = t[iterations / 2];
    }
    free(b);
    llep__engine_free(e);
    free(t);
    inputs_free(&in);
    shape_free(&s);
    return r;
}

static double median(double *v, size_t n) {
    qsort(v, n, sizeof(*v), cmp_double);
    return v[n / 2];
}

static int bench_overhead(llep_client *c, uint32_t devices, uint32_t tokens, uint32_t reps,
                          figures *f) {
    shape s;
    inputs in;
    llep_layer *l = NULL;
    llep_engine *e = NULL;
    double *td = calloc(reps, sizeof(*td)), *te = calloc(reps, sizeof(*te));
    int r = shape_make(&s, 32, 4, 512, 512);

    if (r == 0)
        r = inputs_make(&in, &s, tokens);
    if (r == 0)
        r = create_layer(c, "bench-overhead", &s, &l);
    if (r == 0)
        r = engine_for(&s, devices, &e);
    /* The in-process engine gets the tokens split evenly over its home devices, as llepd
     * splits one submission. */
    llep_engine_batch *b = calloc(devices, sizeof(*b));
    for (uint32_t d = 0, t0 = 0; r == 0 && d < devices; d++) {
        uint32_t n = tokens / devices + (d < tokens % devices);
        b[d] = (llep_engine_batch){ n, in.x + (size_t)t0 * s.d, in.idx + (size_t)t0 * s.k,
                                    in.w + (size_t)t0 * s.k, in.y + (size_t)t0 * s.d };
        t0 += n;
    }
    for (uint32_t i = 0; r == 0 && i < reps + 1; i++) {
        double t0 = now_us();
        r = llep_forward(l, tokens, in.x, in.idx, in.w, in.y);
        double t1 = now_us();
        if (r == 0)
            r = llep__engine_step(e, b, NULL, NULL);
        double t2 = now_us();
        if (i > 0) { /* the first round warms both up */
            td[i - 1] = t1 - t0;
            te[i - 1] = t2 - t1;
        }
        fprintf(stderr, "\roverhead: %u/%u", i, reps);
    }
    fprintf(stderr, "\n");
    if (r == 0) {
        f->daemon_ms = median(td, reps) / 1e3;
        f->engine_ms = median(te, reps) / 1e3;
        f->overhead = f->daemon_ms / f->engine_ms - 1;
    }
    free(b);
    free(td);
    free(te);
    llep__engine_free(e);
    llep_layer_release(l);
    inputs_free(&in);
    shape_free(&s);
    return r;
}

static int print_json(const figures *f) {
    json_object *o = llep__jout_object(), *rtt = llep__jout_object();
    json_object *ov = llep__jout_object();

    llep__jout_f64(rtt, "median", f->rtt_median);
    llep__jout_f64(rtt, "p99", f->rtt_p99);
    llep__jout_f64(rtt, "min", f->rtt_min);
    llep__jout_u64(rtt, "iterations", f->iterations);
    llep__jout_f64(rtt, "engine_step_median", f->step_median);
    llep__jout_add(o, "rtt_1token_us", rtt);
    llep__jout_u64(ov, "tokens", f->tokens);
    llep__jout_u64(ov, "devices", f->devices);
    llep__jout_f64(ov, "daemon_ms", f->daemon_ms);
    llep__jout_f64(ov, "engine_ms", f->engine_ms);
    llep__jout_f64(ov, "overhead", f->overhead);
    llep__jout_add(o, "overhead", ov);
    if (llep__jout_write(stdout, o, LLEP_JOUT_LINE, "\n") < 0) {
        fprintf(stderr, "llep-bench-daemon: cannot write the JSON output\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    static const struct option lo[] = {
        { "socket", 1, NULL, 's' }, { "devices", 1, NULL, 'p' },
        { "iterations", 1, NULL, 'n' }, { "tokens", 1, NULL, 't' },
        { "repeat", 1, NULL, 'r' }, { "json", 0, NULL, 'j' }, { "help", 0, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *sock = NULL;
    figures f = { .iterations = 10000, .tokens = 8192, .devices = 4 };
    uint32_t reps = 15;
    int json = 0, c;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        uint32_t *dst = c == 'p' ? &f.devices : c == 'n' ? &f.iterations : c == 't' ? &f.tokens
                        : c == 'r' ? &reps : NULL;
        if (dst && (llep__parse_u32(optarg, dst) < 0 || *dst == 0)) {
            fprintf(stderr, "llep-bench-daemon: '%s' is not a positive integer\n", optarg);
            return 2;
        }
        if (c == 's')
            sock = optarg;
        else if (c == 'j')
            json = 1;
        else if (c == 'h') {
            printf("Usage: llep-bench-daemon --socket PATH [--devices P] [--iterations N] "
                   "[--tokens T] [--repeat R] [--json]\n");
            return 0;
        } else if (!dst) {
            fprintf(stderr, "llep-bench-daemon: unknown option; try --help\n");
            return 2;
        }
    }
    llep_client *cl;
    int r = llep_connect(sock, &cl);
    if (r < 0) {
        fprintf(stderr, "llep-bench-daemon: %s\n", llep_client_error(NULL));
        return 1;
    }
    r = bench_rtt(cl, f.iterations, &f);
    if (r == 0)
        r = bench_overhead(cl, f.devices, f.tokens, reps, &f);
    if (r < 0) {
        fprintf(stderr, "llep-bench-daemon: %s: %s\n", llep_strerror(r), llep_client_error(cl));
        llep_disconnect(cl);
        return 1;
    }
    llep_disconnect(cl);
    if (json)
        return print_json(&f);
    printf("1-token round trip through llepd (%u forwards): median %.1f us, p99 %.1f us, "
           "min %.1f us (the step alone, in process: median %.1f us)\n"
           "%u-token forward, %u devices: llepd %.3f ms, in-process engine "
           "%.3f ms (medians of %u): overhead %+.1f %%\n",
           f.iterations, f.rtt_median, f.rtt_p99, f.rtt_min, f.step_median, f.tokens,
           f.devices, f.daemon_ms, f.engine_ms, reps, f.overhead * 100);
    return 0;
}
