/* The engine on the CUDA backend against the CPU backend on the same inputs (DESIGN.md
 * section 4): every output within 1e-5 relative L2 error of a float64 reference for float32
 * storage and 1e-2 for bf16, CUDA and CPU within the same bounds of each other, EP and LLEP
 * within 1e-6 of each other (float32), no NaN; device budgets still fail a step cleanly with
 * -ENOMEM; busy times are positive where devices worked.
 *
 * Logical devices share one GPU (cuda:0xP), so this runs on a single GPU; with several GPUs,
 * --spec cuda:0,1,... runs the same checks across them (NCCL weight transfers).
 *
 * The backend's row exchange on its own: gathers and combines reading rows of every logical
 * device (and of the host) against the same operations on the host, byte for byte for
 * gathers, and a gather still ordered before a later copy on its device. One line per run
 * starts with "path " and says how rows moved between logical devices: "local"
 * (device-to-device on one GPU), "nccl" (grouped ncclSend/ncclRecv between GPUs) or "peer"
 * (peer access). With several GPUs both NCCL and peer access run, and must give the same
 * bytes; with one GPU NCCL cannot run, and the line says so.
 * Exits 77 (skipped, for meson) when no GPU is visible, 1 on any failure.
 * --self-test-cpu puts the CPU backend where the CUDA backend goes, so that the harness itself
 * (reference, tolerances, budget case) is tested on machines without a GPU. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "backend-cuda.h"
#include "backend-select.h"
#include "engine.h"
#include "fixtures.h"
#include "gpu-check.h"
#include "moe-cpu.h"

/* The backend under test: CUDA, or the CPU backend for --self-test-cpu. */
static const llep_backend_ops *under_test = &llep__backend_cuda;


static uint64_t rng_state = 99; /* splitmix64: rng_next, rng_sym (fixtures.h) */

typedef struct tcase {
    uint32_t n, k, d, h, p;
    enum llep_dtype dtype;
    enum llep_act act;
    int biases;
    double hot_share;      /* share of slots into expert 0 */
    /* Values as float32 after rounding to the storage type, and their stored form. */
    float *w[3], *b[3];
    void *sw[3], *sb[3];
    uint32_t *tokens;
    float **x;
    void **sx;
    int32_t **idx;
    float **tw;
    double **ref;
} tcase;

static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        printf("FAIL: out of memory\n");
        exit(1);
    }
    return p;
}

/* Fills v with values, rounds them to the storage type and writes the stored form. */
static void *stored(float *v, size_t n, enum llep_dtype t) {
    void *s = xmalloc(n * llep__dtype_size(t));
    if (t == LLEP_DTYPE_BF16) {
        llep__f32_to_bf16_n(s, v, n);
        llep__bf16_to_f32_n(v, s, n);
    } else {
        memcpy(s, v, n * sizeof(float));
    }
    return s;
}

static double act_ref(double g, double u, enum llep_act act) {
    if (act == LLEP_ACT_SWIGLU)
        return g / (1 + exp(-g)) * u;
    double lim = LLEP_ACT_DEFAULT_LIMIT, al = LLEP_ACT_DEFAULT_ALPHA;
    double gc = g < lim ? g : lim, uc = u < -lim ? -lim : (u > lim ? lim : u);
    return (uc + 1) * gc / (1 + exp(-al * gc));
}

static void make_case(tcase *c) {
    size_t dh = (size_t)c->d * c->h;
    for (int i = 0; i < 3; i++) {
        size_t n = (size_t)c->n * dh;
        c->w[i] = xmalloc(n * sizeof(float));
        for (size_t j = 0; j < n; j++)
            c->w[i][j] = rng_sym(&rng_state) / sqrtf((float)(i == 2 ? c->h : c->d));
        c->sw[i] = stored(c->w[i], n, c->dtype);
        size_t bn = (size_t)c->n * (i == 2 ? c->d : c->h);
        c->b[i] = xmalloc(bn * sizeof(float));
        for (size_t j = 0; j < bn; j++)
            c->b[i][j] = c->biases ? rng_sym(&rng_state) * 0.3f : 0.0f;
        c->sb[i] = c->biases ? stored(c->b[i], bn, c->dtype) : NULL;
    }
    c->tokens = xmalloc(c->p * sizeof(*c->tokens));
    c->x = xmalloc(c->p * sizeof(*c->x));
    c->sx = xmalloc(c->p * sizeof(*c->sx));
    c->idx = xmalloc(c->p * sizeof(*c->idx));
    c->tw = xmalloc(c->p * sizeof(*c->tw));
    c->ref = xmalloc(c->p * sizeof(*c->ref));
    for (uint32_t p = 0; p < c->p; p++) {
        /* Uneven batches, one of them empty. */
        uint32_t t = p == 1 ? 0 : 100 + (uint32_t)(rng_next(&rng_state) % 400);
        c->tokens[p] = t;
        c->x[p] = xmalloc((size_t)t * c->d * sizeof(float));
        for (size_t i = 0; i < (size_t)t * c->d; i++)
            c->x[p][i] = rng_sym(&rng_state) * 2;
        c->sx[p] = stored(c->x[p], (size_t)t * c->d, c->dtype);
        c->idx[p] = xmalloc((size_t)t * c->k * sizeof(int32_t));
        c->tw[p] = xmalloc((size_t)t * c->k * sizeof(float));
        for (size_t s = 0; s < (size_t)t * c->k; s++) {
            int hot = (double)(rng_next(&rng_state) % 1000) < c->hot_share * 1000;
            c->idx[p][s] = hot ? 0 : (int32_t)(rng_next(&rng_state) % c->n);
            c->tw[p][s] = (rng_sym(&rng_state) + 1) / 2;
        }
        /* A token that picks the same expert twice. */
        if (t > 0 && c->k > 1)
            c->idx[p][1] = c->idx[p][0];
    }
}

/* y[t] = sum_k w[t][k] FFN_{idx[t][k]}(x[t]) in float64 (DESIGN.md section 4), with loops
 * that read every weight matrix row by row. */
static void make_reference(tcase *c) {
    size_t dh = (size_t)c->d * c->h;
    double *g = xmalloc(c->h * sizeof(double)), *u = xmalloc(c->h * sizeof(double));
    double *v = xmalloc(c->d * sizeof(double));
    for (uint32_t p = 0; p < c->p; p++) {
        c->ref[p] = xmalloc((size_t)c->tokens[p] * c->d * sizeof(double));
        for (uint32_t t = 0; t < c->tokens[p]; t++) {
            const float *x = c->x[p] + (size_t)t * c->d;
            double *y = c->ref[p] + (size_t)t * c->d;
            for (uint32_t k = 0; k < c->k; k++) {
                uint32_t e = (uint32_t)c->idx[p][(size_t)t * c->k + k];
                double w = c->tw[p][(size_t)t * c->k + k];
                const float *wg = c->w[0] + e * dh, *wu = c->w[1] + e * dh;
                const float *wd = c->w[2] + e * dh;
                for (uint32_t j = 0; j < c->h; j++) {
                    g[j] = c->b[0][(size_t)e * c->h + j];
                    u[j] = c->b[1][(size_t)e * c->h + j];
                }
                for (uint32_t i = 0; i < c->d; i++)
                    for (uint32_t j = 0; j < c->h; j++) {
                        g[j] += (double)x[i] * wg[(size_t)i * c->h + j];
                        u[j] += (double)x[i] * wu[(size_t)i * c->h + j];
                    }
                for (uint32_t i = 0; i < c->d; i++)
                    v[i] = c->b[2][(size_t)e * c->d + i];
                for (uint32_t j = 0; j < c->h; j++) {
                    double a = act_ref(g[j], u[j], c->act);
                    for (uint32_t i = 0; i < c->d; i++)
                        v[i] += a * wd[(size_t)j * c->d + i];
                }
                for (uint32_t i = 0; i < c->d; i++)
                    y[i] += w * v[i];
            }
        }
    }
    free(g);
    free(u);
    free(v);
}

static void free_case(tcase *c) {
    for (int i = 0; i < 3; i++) {
        free(c->w[i]);
        free(c->sw[i]);
        free(c->b[i]);
        free(c->sb[i]);
    }
    for (uint32_t p = 0; p < c->p; p++) {
        free(c->x[p]);
        free(c->sx[p]);
        free(c->idx[p]);
        free(c->tw[p]);
        free(c->ref[p]);
    }
    free(c->tokens);
    free(c->x);
    free(c->sx);
    free(c->idx);
    free(c->tw);
    free(c->ref);
}

static llep_engine *make_engine(const tcase *c, const llep_backend_ops *ops, const char *spec,
                                uint64_t budget) {
    llep_engine_config cfg;
    llep_engine *e = NULL;
    char err[256];

    llep__engine_config_default(&cfg);
    cfg.num_experts = c->n;
    cfg.top_k = c->k;
    cfg.hidden = c->d;
    cfg.inter = c->h;
    cfg.dtype = c->dtype;
    cfg.act = c->act;
    cfg.w_gate = c->sw[0];
    cfg.w_up = c->sw[1];
    cfg.w_down = c->sw[2];
    cfg.b_gate = c->sb[0];
    cfg.b_up = c->sb[1];
    cfg.b_down = c->sb[2];
    cfg.num_devices = c->p;
    cfg.mem_budget = budget;
    cfg.backend = ops;
    cfg.backend_devices = spec;
    if (llep__engine_new(&cfg, &e, err, sizeof(err)) < 0) {
        fail("%s engine (%s): %s", ops->name, spec ? spec : "default", err);
        return NULL;
    }
    return e;
}

/* Runs one step; outputs as float32 in y[p]. */
static int step(const tcase *c, llep_engine *e, enum llep_policy pol, float **y,
                llep_engine_stats *st) {
    llep_engine_batch *b = xmalloc(c->p * sizeof(*b));
    void **raw = xmalloc(c->p * sizeof(*raw));
    llep_plan_params pp;

    llep__plan_params_default(&pp);
    pp.policy = pol;
    pp.min_tokens = 16;
    for (uint32_t p = 0; p < c->p; p++) {
        raw[p] = xmalloc((size_t)c->tokens[p] * c->d * llep__dtype_size(c->dtype));
        b[p] = (llep_engine_batch){ c->tokens[p], c->sx[p], c->idx[p], c->tw[p], raw[p] };
    }
    int r = llep__engine_step(e, b, &pp, st);
    for (uint32_t p = 0; p < c->p; p++) {
        size_t n = (size_t)c->tokens[p] * c->d;
        if (c->dtype == LLEP_DTYPE_BF16)
            llep__bf16_to_f32_n(y[p], raw[p], n);
        else
            memcpy(y[p], raw[p], n * sizeof(float));
        free(raw[p]);
    }
    free(raw);
    free(b);
    return r;
}

static double rel_l2(const tcase *c, float **y, double **ref_d, float **ref_f, int *nan) {
    double num = 0, den = 0;
    for (uint32_t p = 0; p < c->p; p++)
        for (size_t i = 0; i < (size_t)c->tokens[p] * c->d; i++) {
            double r = ref_d ? ref_d[p][i] : ref_f[p][i];
            if (!isfinite(y[p][i]))
                *nan = 1;
            num += (y[p][i] - r) * (y[p][i] - r);
            den += r * r;
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static float **alloc_y(const tcase *c) {
    float **y = xmalloc(c->p * sizeof(*y));
    for (uint32_t p = 0; p < c->p; p++)
        y[p] = xmalloc((size_t)c->tokens[p] * c->d * sizeof(float) + 1);
    return y;
}

static void free_y(const tcase *c, float **y) {
    for (uint32_t p = 0; p < c->p; p++)
        free(y[p]);
    free(y);
}

static void run_case(tcase *c, const char *spec) {
    char name[160];
    double tol = c->dtype == LLEP_DTYPE_BF16 ? 1e-2 : 1e-5;

    snprintf(name, sizeof(name), "P=%u %s %s %s biases=%d hot=%.2f", c->p, spec,
             c->dtype ? "bf16" : "f32", c->act ? "swiglu_oai" : "swiglu", c->biases,
             c->hot_share);
    make_case(c);
    make_reference(c);
    llep_engine *cpu = make_engine(c, &llep__backend_cpu, NULL, 0);
    llep_engine *gpu = make_engine(c, under_test, spec, 0);
    if (!cpu || !gpu)
        goto out;
    float **y_cpu = alloc_y(c), **y_ep = alloc_y(c), **y_ll = alloc_y(c);
    llep_engine_stats st;
    int nan = 0;
    if (step(c, cpu, LLEP_POLICY_LLEP, y_cpu, NULL) < 0)
        fail("%s: CPU step: %s", name, llep__engine_error(cpu));
    if (step(c, gpu, LLEP_POLICY_EP, y_ep, &st) < 0)
        fail("%s: CUDA EP step: %s", name, llep__engine_error(gpu));
    if (step(c, gpu, LLEP_POLICY_LLEP, y_ll, &st) < 0)
        fail("%s: CUDA LLEP step: %s", name, llep__engine_error(gpu));
    double e_cpu = rel_l2(c, y_cpu, c->ref, NULL, &nan);
    double e_ep = rel_l2(c, y_ep, c->ref, NULL, &nan);
    double e_ll = rel_l2(c, y_ll, c->ref, NULL, &nan);
    double e_x = rel_l2(c, y_ll, NULL, y_cpu, &nan);
    double e_pl = rel_l2(c, y_ll, NULL, y_ep, &nan);
    uint64_t busy_rows = 0;
    for (uint32_t d = 0; d < st.num_devices; d++)
        busy_rows += st.devices[d].rows && st.devices[d].busy_ns > 0;
    if (nan)
        fail("%s: NaN or infinity in an output", name);
    if (!(e_ep <= tol) || !(e_ll <= tol))
        fail("%s: CUDA vs float64: EP %.3g, LLEP %.3g > %.0e", name, e_ep, e_ll, tol);
    if (!(e_x <= 2 * tol))
        fail("%s: CUDA vs CPU backend %.3g > %.0e", name, e_x, 2 * tol);
    if (c->dtype == LLEP_DTYPE_F32 && !(e_pl <= 1e-6))
        fail("%s: EP vs LLEP on CUDA %.3g > 1e-6", name, e_pl);
    if (c->hot_share > 0.5 && st.transfers == 0)
        fail("%s: a skewed LLEP step moved no weights", name);
    if (busy_rows == 0)
        fail("%s: no device reported busy time", name);
    printf("engine    %-52s vs f64: CPU %.2e CUDA-EP %.2e CUDA-LLEP %.2e; CUDA-CPU %.2e; "
           "EP-LLEP %.2e; %u transfers, makespan %.3f ms\n", name, e_cpu, e_ep, e_ll, e_x,
           e_pl, st.transfers, (double)st.makespan_ns / 1e6);
    free_y(c, y_cpu);
    free_y(c, y_ep);
    free_y(c, y_ll);
out:
    llep__engine_free(cpu);
    llep__engine_free(gpu);
    free_case(c);
}

/* A budget too small for the skewed step's token buffers fails it with -ENOMEM, writes no
 * output, and the engine works again once the budget is raised. */
static void budget_case(const char *spec, uint32_t p) {
    tcase c = { .n = 16, .k = 4, .d = 128, .h = 256, .p = p, .dtype = LLEP_DTYPE_F32,
                .act = LLEP_ACT_SWIGLU_OAI, .biases = 1, .hot_share = 0.9 };
    make_case(&c);
    make_reference(&c);
    llep_engine *gpu = make_engine(&c, under_test, spec, 0);
    if (!gpu) {
        free_case(&c);
        return;
    }
    uint64_t native = llep__engine_expert_bytes(gpu) * (c.n / c.p);
    for (uint32_t d = 0; d < c.p; d++)
        llep__engine_set_budget(gpu, d, native + 4096);
    float **y = alloc_y(&c);
    int r = step(&c, gpu, LLEP_POLICY_EP, y, NULL);
    if (r != -ENOMEM)
        fail("budget %s: step returned %d, not -ENOMEM", spec, r);
    for (uint32_t d = 0; d < c.p; d++)
        llep__engine_set_budget(gpu, d, UINT64_C(1) << 34);
    int nan = 0;
    r = step(&c, gpu, LLEP_POLICY_LLEP, y, NULL);
    if (r < 0 || !(rel_l2(&c, y, c.ref, NULL, &nan) <= 1e-5) || nan)
        fail("budget %s: step after raising the budget: %d (%s)", spec, r,
             llep__engine_error(gpu));
    else
        printf("budget    %s: -ENOMEM over budget, then a correct step ok\n", spec);
    free_y(&c, y);
    llep__engine_free(gpu);
    free_case(&c);
}

/* ---- the backend's row exchange ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 0x100000001b3ull;
    return h;
}

static void to_host(void *dst, const void *src, size_t bytes) {
    if (under_test == &llep__backend_cpu) {
        memcpy(dst, src, bytes);
    } else if (cudaMemcpy(dst, src, bytes, cudaMemcpyDefault) != cudaSuccess) {
        fail("cudaMemcpy back to the host failed");
        memset(dst, 0, bytes);
    }
}

#define ROWS_D 520u      /* floats per row: 2080 bytes */
#define ROWS_PER_DEV 300u
#define ROWS_K 3u

/* Every device gathers rows from every device (and a few from the host) and combines result
 * rows of every device, under the dispatch path `want` (LLEP_CUDA_DISPATCH; NULL: the
 * default). Returns a digest of every output, so that two paths can be compared; 0 when the
 * backend could not be made. */
static uint64_t rows_case(const char *spec, uint32_t p, const char *want) {
    const llep_backend_ops *ops = under_test;
    const size_t rb = ROWS_D * sizeof(float);
    llep_backend_options o = { .num_devices = p, .devices = spec };
    llep_backend *be = NULL;
    uint64_t digest = 0xcbf29ce484222325ull;
    char name[96];

    if (want)
        setenv("LLEP_CUDA_DISPATCH", want, 1);
    else
        unsetenv("LLEP_CUDA_DISPATCH");
    int r = ops->create(&o, &be);
    unsetenv("LLEP_CUDA_DISPATCH");
    if (r < 0) {
        fail("rows %s: backend create: %d", spec, r);
        return 0;
    }
    const char *path = ops == &llep__backend_cuda ? llep__cuda_dispatch_path(be) : "cpu";
    snprintf(name, sizeof(name), "rows %s (%s%s)", spec, path,
             want ? (strcmp(want, path) == 0 ? ", asked" : ", asked otherwise") : "");
    rng_state = 4242;

    float **hsrc = xmalloc(p * sizeof(*hsrc));
    void **dsrc = xmalloc(p * sizeof(*dsrc)), **dst = xmalloc(p * sizeof(*dst));
    float **want_g = xmalloc(p * sizeof(*want_g)), **got = xmalloc(p * sizeof(*got));
    const void ***srcs = xmalloc(p * sizeof(*srcs));
    size_t *n = xmalloc(p * sizeof(*n));
    float *marker = xmalloc(rb);
    for (size_t j = 0; j < ROWS_D; j++)
        marker[j] = -1.5f - (float)j;
    for (uint32_t d = 0; d < p; d++) {
        hsrc[d] = xmalloc(ROWS_PER_DEV * rb);
        for (size_t j = 0; j < ROWS_PER_DEV * ROWS_D; j++)
            hsrc[d][j] = rng_sym(&rng_state);
        if (ops->alloc(be, d, ROWS_PER_DEV * rb, &dsrc[d]) < 0 ||
            ops->copy(be, d, dsrc[d], hsrc[d], ROWS_PER_DEV * rb) < 0)
            fail("%s: device %u: source rows", name, d);
    }
    if (ops->sync(be) < 0)
        fail("%s: uploading the source rows failed", name);

    /* Gathers of every device, queued back to back as the engine does; then a copy on device
     * 0 over its first row, which must land after the gather. */
    for (uint32_t d = 0; d < p; d++) {
        n[d] = 257 + 31 * (size_t)d;
        srcs[d] = xmalloc(n[d] * sizeof(**srcs));
        want_g[d] = xmalloc(n[d] * rb);
        got[d] = xmalloc(n[d] * rb);
        for (size_t i = 0; i < n[d]; i++) {
            uint32_t s = (uint32_t)(rng_next(&rng_state) % p), row = (uint32_t)(rng_next(&rng_state) % ROWS_PER_DEV);
            int host = rng_next(&rng_state) % 8 == 0;
            srcs[d][i] = host ? (const void *)(hsrc[s] + (size_t)row * ROWS_D)
                              : (const void *)((const char *)dsrc[s] + row * rb);
            memcpy(want_g[d] + i * ROWS_D, hsrc[s] + (size_t)row * ROWS_D, rb);
        }
        if (ops->alloc(be, d, n[d] * rb, &dst[d]) < 0 ||
            ops->gather(be, d, dst[d], srcs[d], n[d], rb) < 0)
            fail("%s: device %u: gather", name, d);
    }
    memcpy(want_g[0], marker, rb);
    if (ops->copy(be, 0, dst[0], marker, rb) < 0)
        fail("%s: copy after the gather", name);
    if (ops->sync(be) < 0)
        fail("%s: sync after the gathers failed", name);
    for (uint32_t d = 0; d < p; d++) {
        to_host(got[d], dst[d], n[d] * rb);
        if (memcmp(got[d], want_g[d], n[d] * rb) != 0)
            fail("%s: device %u: gathered rows differ%s", name, d,
                 d == 0 && memcmp(got[0], marker, rb) != 0 ? " (the later copy was overtaken)"
                                                           : "");
        digest = fnv(digest, got[d], n[d] * rb);
        if (ops->busy_ns(be, d) == 0)
            fail("%s: device %u gathered but reports no busy time", name, d);
    }

    /* Combines of every home device over result rows of every device, queued back to back
     * as the engine does, against the CPU twin on the same values. */
    const float ***dsl = xmalloc(p * sizeof(*dsl));
    float **w = xmalloc(p * sizeof(*w)), **y = xmalloc(p * sizeof(*y));
    float **ref = xmalloc(p * sizeof(*ref));
    for (uint32_t d = 0; d < p; d++) {
        uint32_t tokens = 50 + 7 * d;
        size_t slots = (size_t)tokens * ROWS_K;
        const float **hsl = xmalloc(slots * sizeof(*hsl));
        dsl[d] = xmalloc(slots * sizeof(**dsl));
        w[d] = xmalloc(slots * sizeof(float));
        y[d] = xmalloc((size_t)tokens * rb);
        ref[d] = xmalloc((size_t)tokens * rb);
        for (size_t i = 0; i < slots; i++) {
            uint32_t s = (uint32_t)(rng_next(&rng_state) % p), row = (uint32_t)(rng_next(&rng_state) % ROWS_PER_DEV);
            dsl[d][i] = (const float *)dsrc[s] + (size_t)row * ROWS_D;
            hsl[i] = hsrc[s] + (size_t)row * ROWS_D;
            w[d][i] = (rng_sym(&rng_state) + 1) / 2;
        }
        llep_combine c = { .tokens = tokens, .top_k = ROWS_K, .hidden = ROWS_D,
                           .dtype = LLEP_DTYPE_F32, .topk_w = w[d], .src = dsl[d], .y = y[d] };
        llep_combine hc = c;
        hc.src = hsl;
        hc.y = ref[d];
        llep__k_combine(&hc);
        free(hsl);
        if (ops->combine(be, d, &c) < 0)
            fail("%s: device %u: combine", name, d);
    }
    if (ops->sync(be) < 0)
        fail("%s: sync after the combines failed", name);
    double num = 0, den = 0;
    for (uint32_t d = 0; d < p; d++) {
        size_t vals = (size_t)(50 + 7 * d) * ROWS_D;
        for (size_t i = 0; i < vals; i++) {
            num += ((double)y[d][i] - ref[d][i]) * ((double)y[d][i] - ref[d][i]);
            den += (double)ref[d][i] * ref[d][i];
        }
        digest = fnv(digest, y[d], vals * sizeof(float));
        free(dsl[d]);
        free(w[d]);
        free(y[d]);
        free(ref[d]);
    }
    free(dsl);
    free(w);
    free(y);
    free(ref);
    double err = den > 0 ? sqrt(num / den) : sqrt(num);
    if (!(err <= 1e-6))
        fail("%s: combines differ from the CPU twin: %.3g > 1e-6", name, err);

    /* download (what leaves a node in a cluster step): each device's rows back to the host,
     * queued after its other work, must be the rows it was given. */
    if (!ops->download) {
        fail("%s: the backend has no download op (cluster layers need it)", name);
    } else {
        char **back = xmalloc(p * sizeof(*back));
        for (uint32_t d = 0; d < p; d++) {
            back[d] = xmalloc(ROWS_PER_DEV * rb);
            memset(back[d], 0, ROWS_PER_DEV * rb);
            if (ops->download(be, d, back[d], dsrc[d], ROWS_PER_DEV * rb) < 0)
                fail("%s: device %u: download", name, d);
        }
        if (ops->sync(be) < 0)
            fail("%s: sync after the downloads failed", name);
        for (uint32_t d = 0; d < p; d++) {
            if (memcmp(back[d], hsrc[d], ROWS_PER_DEV * rb) != 0)
                fail("%s: device %u: downloaded rows differ from the uploaded ones", name, d);
            free(back[d]);
        }
        free(back);
    }

    uint64_t over = 0;
    if (ops->step_overhead) {
        llep_ffn_shape sh = { .hidden = 2880, .inter = 2880, .dtype = LLEP_DTYPE_BF16,
                              .act = LLEP_ACT_SWIGLU_OAI };
        over = ops->step_overhead(be, 0, &sh, 16384, 4096, 4, 4096);
        /* At least the combine's output for 4096 tokens of 2880 bf16 values. */
        if (over < 4096ull * 2880 * 2)
            fail("%s: step_overhead %llu is below the combine output alone", name,
                 (unsigned long long)over);
    }
    printf("path      %-44s %u devices: gathers exact, combines %.1e; step overhead (gpt-oss "
           "shape, 16K rows) %.1f MiB\n", name, p, err, (double)over / 1048576);

    for (uint32_t d = 0; d < p; d++) {
        ops->free(be, d, dsrc[d]);
        ops->free(be, d, dst[d]);
        free(hsrc[d]);
        free(srcs[d]);
        free(want_g[d]);
        free(got[d]);
    }
    ops->destroy(be);
    free(hsrc);
    free(dsrc);
    free(dst);
    free(want_g);
    free(got);
    free(srcs);
    free(n);
    free(marker);
    return digest;
}

/* The row exchange on `spec`: over NCCL and through peer access where the spec spans GPUs
 * (both must give the same bytes), else the one path there is. */
static void rows_cases(const char *spec, uint32_t p, int gpus) {
    if (under_test == &llep__backend_cpu || gpus < 2) {
        rows_case(spec, p, NULL);
        return;
    }
    uint64_t a = rows_case(spec, p, "nccl"), b = rows_case(spec, p, "peer");
    if (a && b && a != b)
        fail("rows %s: NCCL and peer access give different bytes", spec);
}

int main(int argc, char **argv) {
    const char *multi = NULL;
    char spec4[32], spec8[32];
    int n = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--spec") == 0 && i + 1 < argc) {
            multi = argv[++i];
        } else if (strcmp(argv[i], "--self-test-cpu") == 0) {
            under_test = &llep__backend_cpu;
        } else {
            fprintf(stderr, "usage: test-gpu-engine [--spec cuda:0,1,...] [--self-test-cpu]\n");
            return 2;
        }
    }
    if (under_test == &llep__backend_cpu) {
        n = 1;
        printf("self-test: the CPU backend stands in for CUDA\n");
    } else if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("SKIP: no GPU visible\n");
        return 77;
    }
    snprintf(spec4, sizeof(spec4), "cuda:0x4");
    snprintf(spec8, sizeof(spec8), "cuda:0x8");
    static const double shares[] = { 0.0, 0.9 };
    for (int t = 0; t < 2; t++)
        for (int a = 0; a < 2; a++)
            for (int s = 0; s < 2; s++) {
                tcase c = { .n = 16, .k = 4, .d = 256, .h = 384, .p = 4,
                            .dtype = (enum llep_dtype)t, .act = (enum llep_act)a,
                            .biases = a == 1, .hot_share = shares[s] };
                run_case(&c, spec4);
            }
    tcase c8 = { .n = 32, .k = 4, .d = 256, .h = 512, .p = 8, .dtype = LLEP_DTYPE_BF16,
                 .act = LLEP_ACT_SWIGLU_OAI, .biases = 1, .hot_share = 0.95 };
    run_case(&c8, spec8);
    tcase c8f = { .n = 32, .k = 4, .d = 256, .h = 512, .p = 8, .dtype = LLEP_DTYPE_F32,
                  .act = LLEP_ACT_SWIGLU, .biases = 0, .hot_share = 0.8 };
    run_case(&c8f, spec8);
    budget_case(spec4, 4);
    rows_cases(spec4, 4, 1);
    if (!multi && under_test == &llep__backend_cuda)
        printf("path      one GPU: logical devices exchange rows device-to-device; the NCCL "
               "path needs --spec over two or more GPUs and did not run\n");
    if (multi) {
        llep_device_spec ds;
        char msg[160];
        uint32_t gpu_of[64], nd = 0;
        if (llep__device_spec_parse(multi, &ds, msg, sizeof(msg)) < 0 ||
            llep__device_spec_map(&ds, (uint32_t)n, 0, gpu_of, 64, &nd, msg, sizeof(msg)) < 0) {
            fail("--spec %s: %s", multi, msg);
        } else {
            tcase cm = { .n = 8 * nd, .k = 4, .d = 256, .h = 384, .p = nd,
                         .dtype = LLEP_DTYPE_F32, .act = LLEP_ACT_SWIGLU_OAI, .biases = 1,
                         .hot_share = 0.9 };
            rows_cases(multi, nd, n);
            run_case(&cm, multi);
            /* The same engine step with rows through peer access instead of NCCL. */
            setenv("LLEP_CUDA_DISPATCH", "peer", 1);
            printf("engine    (next: LLEP_CUDA_DISPATCH=peer)\n");
            tcase cp = cm;
            run_case(&cp, multi);
            unsetenv("LLEP_CUDA_DISPATCH");
        }
        /* Two logical devices on each of the first two GPUs: NCCL between the GPUs and
         * device-to-device copies within each, in the same step. */
        if (n >= 2) {
            const char *mixed = "cuda:0x2,1x2";
            rows_cases(mixed, 4, n);
            tcase cx = { .n = 16, .k = 4, .d = 256, .h = 384, .p = 4, .dtype = LLEP_DTYPE_BF16,
                         .act = LLEP_ACT_SWIGLU, .biases = 0, .hot_share = 0.9 };
            run_case(&cx, mixed);
        }
    }
    return finish();
}
