/* A GPU-resident client (run.sh step 7, tests/gpu/space.sh; issue 17): one process allocates a
 * device space on a GPU (llep_space_alloc), writes x into it on the GPU, runs forwards of a
 * bf16 layer reading x and writing y in place, checks y against float64 (and against the host
 * arena path, which must give the same bits), and times one forward per token count both ways:
 *   host   x on the GPU copied to the host, llep_forward through the arena, y copied back
 *          (what a GPU client pays without a space)
 *   space  llep_forward with x and y in the space (llepd reads and writes the GPU memory)
 * One JSON line per token count on stdout.
 *
 *   test-gpu-space --socket PATH [--gpu G] [--tokens 1,256,4096,32768] [--repeat R]
 *                  [--check-tokens T] [--self-test-cpu]
 *
 * --self-test-cpu: against a CPU llepd, where the space is the host stand-in and the "GPU"
 * copies are memcpy, so that the harness itself is checked where there is no GPU. Exit status:
 * 0 every check passed, 1 a check failed, 2 usage, 77 no GPU (or no CUDA space). */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llep/bf16.h"
#include "llep/client.h"

/* gpt-oss-120b's hidden size, fewer and narrower experts so that the weights upload quickly. */
enum { N = 16, K = 4, D = 2880, H = 1024 };

static bool cpu_mode;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x9e3779b97f4a7c15u;
static float rnd(void) {   /* [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* Device (or, in --self-test-cpu, host) copies. */
static int copy(void *dst, const void *src, size_t n) {
    if (cpu_mode) {
        memcpy(dst, src, n);
        return 0;
    }
    return cudaMemcpy(dst, src, n, cudaMemcpyDefault) == cudaSuccess ? 0 : -1;
}

static void *dev_alloc(size_t n) {
    void *p = NULL;
    if (cpu_mode)
        return malloc(n);
    return cudaMalloc(&p, n) == cudaSuccess ? p : NULL;
}

static void fill_bf16(uint16_t *v, size_t n, float scale) {
    for (size_t i = 0; i < n; i++)
        v[i] = llep_f32_to_bf16(rnd() * scale);
}

static double *widen(const uint16_t *v, size_t n) {
    double *d = malloc(n * sizeof(double));
    for (size_t i = 0; d && i < n; i++)
        d[i] = llep_bf16_to_f32(v[i]);
    return d;
}

/* The MoE layer of DESIGN.md section 4 in float64, written out plainly (swiglu, no biases):
 * y[t] = sum over k of w[t][k] * (silu(x Wg) * (x Wu)) Wd of expert idx[t][k]. */
static void reference(const double *x, const int32_t *idx, const float *w, uint32_t tokens,
                      const double *wg, const double *wu, const double *wd, double *y) {
    static double a[H];

    for (uint32_t t = 0; t < tokens; t++) {
        double *yt = y + (size_t)t * D;
        const double *xt = x + (size_t)t * D;
        for (uint32_t i = 0; i < D; i++)
            yt[i] = 0;
        for (uint32_t k = 0; k < K; k++) {
            size_t e = (size_t)idx[t * K + k];
            for (uint32_t j = 0; j < H; j++) {
                double g = 0, u = 0;
                for (uint32_t i = 0; i < D; i++) {
                    g += xt[i] * wg[(e * D + i) * H + j];
                    u += xt[i] * wu[(e * D + i) * H + j];
                }
                a[j] = g / (1 + exp(-g)) * u;
            }
            for (uint32_t i = 0; i < D; i++) {
                double v = 0;
                for (uint32_t j = 0; j < H; j++)
                    v += a[j] * wd[(e * H + j) * D + i];
                yt[i] += w[t * K + k] * v;
            }
        }
    }
}

static int parse_list(const char *s, uint32_t *out, int max) {
    int n = 0;
    for (char *end; *s && n < max; s = *end ? end + 1 : end) {
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || v == 0 || v > (1u << 20))
            return -1;
        out[n++] = (uint32_t)v;
    }
    return n;
}

int main(int argc, char **argv) {
    const char *sock = NULL;
    uint32_t tokens[16] = { 1, 256, 4096, 32768 };
    int ntokens = 4, gpu = 0, repeat = 5;
    uint32_t check_tokens = 64;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--socket") && i + 1 < argc)
            sock = argv[++i];
        else if (!strcmp(argv[i], "--gpu") && i + 1 < argc)
            gpu = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
            repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--check-tokens") && i + 1 < argc)
            check_tokens = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc)
            ntokens = parse_list(argv[++i], tokens, 16);
        else if (!strcmp(argv[i], "--self-test-cpu"))
            cpu_mode = true;
        else {
            fprintf(stderr, "usage: %s --socket PATH [--gpu G] [--tokens LIST] [--repeat R] "
                    "[--check-tokens T] [--self-test-cpu]\n", argv[0]);
            return 2;
        }
    }
    if (!sock || ntokens <= 0 || repeat < 1 || check_tokens < 1) {
        fprintf(stderr, "test-gpu-space: --socket is required; lists and counts positive\n");
        return 2;
    }
    int ngpu = 0;
    if (!cpu_mode && (cudaGetDeviceCount(&ngpu) != cudaSuccess || gpu >= ngpu)) {
        fprintf(stderr, "test-gpu-space: no CUDA device %d\n", gpu);
        return 77;
    }
    if (!cpu_mode)
        cudaSetDevice(gpu);

    uint32_t max_t = check_tokens;
    for (int i = 0; i < ntokens; i++)
        max_t = tokens[i] > max_t ? tokens[i] : max_t;
    size_t wn = (size_t)N * D * H, xn_max = (size_t)max_t * D;
    uint16_t *wg = malloc(wn * 2), *wu = malloc(wn * 2), *wd = malloc(wn * 2);
    uint16_t *x = malloc(xn_max * 2), *y_host = malloc(xn_max * 2), *y_space = malloc(xn_max * 2);
    int32_t *idx = malloc((size_t)max_t * K * 4);
    float *w = malloc((size_t)max_t * K * 4);
    if (!wg || !wu || !wd || !x || !y_host || !y_space || !idx || !w) {
        fprintf(stderr, "test-gpu-space: out of host memory\n");
        return 1;
    }
    fill_bf16(wg, wn, 1.0f / sqrtf(D));
    fill_bf16(wu, wn, 1.0f / sqrtf(D));
    fill_bf16(wd, wn, 1.0f / sqrtf(H));
    fill_bf16(x, xn_max, 1.0f);
    for (size_t i = 0; i < (size_t)max_t * K; i++) {
        /* a quarter of the slots to expert 0, so that LLEP spills it */
        idx[i] = rnd() < -0.5f ? 0 : (int32_t)((rnd() + 1.0f) * 0.5f * N) % N;
        w[i] = (rnd() + 1.0f) * 0.5f;
    }

    llep_client *c = NULL;
    llep_layer *l = NULL;
    llep_space *s = NULL;
    int r = llep_connect(sock, &c);
    if (r < 0) {
        fprintf(stderr, "connect: %s\n", llep_client_error(NULL));
        return 1;
    }
    llep_layer_desc d = { .num_experts = N, .top_k = K, .hidden = D, .inter = H,
                          .dtype = LLEP_DTYPE_BF16, .act = LLEP_ACT_SWIGLU,
                          .w_gate = wg, .w_up = wu, .w_down = wd };
    if ((r = llep_layer_create(c, "gpu-space", &d, &l)) < 0 ||
        (r = llep_space_alloc(c, 2 * xn_max * 2 + 4096, cpu_mode ? -1 : gpu, &s)) < 0) {
        fprintf(stderr, "set-up: %s\n", llep_client_error(c));
        return 1;
    }
    if (!cpu_mode && llep_space_kind(s) != LLEP_SPACE_CUDA) {
        fprintf(stderr, "test-gpu-space: the space is host memory: the library or llepd has "
                "no CUDA spaces\n");
        return 77;
    }
    uint16_t *sx = llep_space_base(s);
    uint16_t *sy = (uint16_t *)((char *)sx + ((xn_max * 2 + 4095) & ~(size_t)4095));
    /* A GPU client's x where it keeps it, for the host path's copies. */
    void *gx = dev_alloc(xn_max * 2), *gy = dev_alloc(xn_max * 2);
    if (!gx || !gy || copy(gx, x, xn_max * 2) < 0) {
        fprintf(stderr, "test-gpu-space: cannot allocate or fill GPU buffers\n");
        return 1;
    }
    int failures = 0;

    /* Correctness: check_tokens tokens against float64, both paths. */
    {
        uint32_t t = check_tokens;
        size_t n = (size_t)t * D;
        copy(sx, x, n * 2);
        r = llep_forward(l, t, sx, idx, w, sy);
        int r2 = llep_forward(l, t, x, idx, w, y_host);
        if (r < 0 || r2 < 0) {
            fprintf(stderr, "forward: %s\n", llep_client_error(c));
            return 1;
        }
        copy(y_space, sy, n * 2);
        double *xd = widen(x, n), *wgd = widen(wg, wn), *wud = widen(wu, wn),
               *wdd = widen(wd, wn), *ref = malloc(n * sizeof(double));
        if (!xd || !wgd || !wud || !wdd || !ref) {
            fprintf(stderr, "test-gpu-space: out of host memory\n");
            return 1;
        }
        reference(xd, idx, w, t, wgd, wud, wdd, ref);
        double num = 0, den = 0;
        for (size_t i = 0; i < n; i++) {
            double e = llep_bf16_to_f32(y_space[i]) - ref[i];
            num += e * e;
            den += ref[i] * ref[i];
        }
        double rel = sqrt(num / (den > 0 ? den : 1));
        bool same = memcmp(y_space, y_host, n * 2) == 0;
        printf("{\"check\": \"float64\", \"tokens\": %u, \"rel_l2\": %.3g, \"ok\": %s, "
               "\"same_as_host_path\": %s}\n", t, rel, rel <= 1e-2 ? "true" : "false",
               same ? "true" : "false");
        failures += rel > 1e-2 || !same;
        free(xd), free(wgd), free(wud), free(wdd), free(ref);
    }

    /* Timing: per token count, the median of `repeat` forwards each way. */
    for (int i = 0; i < ntokens; i++) {
        uint32_t t = tokens[i];
        size_t n = (size_t)t * D;
        double host[64], space[64];
        int reps = repeat < 64 ? repeat : 64;
        copy(sx, gx, n * 2);
        for (int k = 0; k <= reps; k++) {   /* k = 0 warms up */
            double t0 = now_s();
            copy(x, gx, n * 2);
            r = llep_forward(l, t, x, idx, w, y_host);
            copy(gy, y_host, n * 2);
            double t1 = now_s();
            int r2 = llep_forward(l, t, sx, idx, w, sy);
            if (!cpu_mode)
                cudaDeviceSynchronize(); /* y complete on the GPU, as the client sees it */
            double t2 = now_s();
            if (r < 0 || r2 < 0) {
                fprintf(stderr, "forward of %u tokens: %s\n", t, llep_client_error(c));
                return 1;
            }
            if (k > 0) {
                host[k - 1] = (t1 - t0) * 1e3;
                space[k - 1] = (t2 - t1) * 1e3;
            }
        }
        copy(y_space, sy, n * 2);
        bool same = memcmp(y_space, y_host, n * 2) == 0;
        failures += !same;
        for (int a = 0; a < reps; a++)   /* sort for the medians */
            for (int b = a + 1; b < reps; b++) {
                if (host[b] < host[a]) { double v = host[a]; host[a] = host[b]; host[b] = v; }
                if (space[b] < space[a]) { double v = space[a]; space[a] = space[b]; space[b] = v; }
            }
        printf("{\"tokens\": %u, \"host_ms\": %.3f, \"space_ms\": %.3f, \"speedup\": %.2f, "
               "\"same_as_host_path\": %s, \"repeat\": %d}\n", t, host[reps / 2],
               space[reps / 2], space[reps / 2] > 0 ? host[reps / 2] / space[reps / 2] : 0.0,
               same ? "true" : "false", reps);
        fflush(stdout);
    }
    if ((r = llep_space_free(s)) < 0) {
        fprintf(stderr, "llep_space_free: %s\n", llep_client_error(c));
        failures++;
    }
    llep_layer_release(l);
    llep_disconnect(c);
    fprintf(stderr, "test-gpu-space: %s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
