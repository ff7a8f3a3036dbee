/* forward-check SOCKET: one forward through llepd at SOCKET, checked against a float64
 * reference of DESIGN.md section 4. Exit status 0 when the output matches (relative L2 error
 * under 1e-5), 1 otherwise, 2 on bad usage.
 *
 * It uses nothing but the public API (llep/client.h), so the install and packaging tests
 * compile this same file against the installed headers and `pkg-config llep-client`, and the
 * service tests run the in-tree build of it through a socket-activated daemon. */
#include <llep/client.h>

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { N = 8, K = 2, D = 16, H = 24, TOKENS = 37 };

static uint64_t rng = 0x2545f4914f6cdd1dull;

/* Uniform in [-1, 1). */
static float rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static void fill(float *v, size_t n, float scale) {
    for (size_t i = 0; i < n; i++)
        v[i] = rnd() * scale;
}

static float w_gate[N * D * H], w_up[N * D * H], w_down[N * H * D];
static float b_gate[N * H], b_up[N * H], b_down[N * D];
static float x[TOKENS * D], topk_w[TOKENS * K], y[TOKENS * D];
static int32_t topk_idx[TOKENS * K];

/* y[t] = sum over k of w[t][k] * FFN_e(x[t]), FFN_e(x) = (silu(x Wg + bg) * (x Wu + bu)) Wd + bd */
static double rel_error(void) {
    double num = 0, den = 0, a[H];

    for (int t = 0; t < TOKENS; t++) {
        double ref[D] = { 0 };

        for (int s = 0; s < K; s++) {
            int e = topk_idx[t * K + s];

            for (int i = 0; i < H; i++) {
                double g = b_gate[e * H + i], u = b_up[e * H + i];

                for (int j = 0; j < D; j++) {
                    g += (double)x[t * D + j] * w_gate[(e * D + j) * H + i];
                    u += (double)x[t * D + j] * w_up[(e * D + j) * H + i];
                }
                a[i] = g / (1 + exp(-g)) * u;
            }
            for (int j = 0; j < D; j++) {
                double v = b_down[e * D + j];

                for (int i = 0; i < H; i++)
                    v += a[i] * w_down[(e * H + i) * D + j];
                ref[j] += topk_w[t * K + s] * v;
            }
        }
        for (int j = 0; j < D; j++) {
            num += (y[t * D + j] - ref[j]) * (y[t * D + j] - ref[j]);
            den += ref[j] * ref[j];
        }
    }
    return sqrt(num / den);
}

int main(int argc, char **argv) {
    llep_layer_desc d = {
        .num_experts = N, .top_k = K, .hidden = D, .inter = H,
        .dtype = LLEP_DTYPE_F32, .act = LLEP_ACT_SWIGLU,
        .w_gate = w_gate, .w_up = w_up, .w_down = w_down,
        .b_gate = b_gate, .b_up = b_up, .b_down = b_down,
    };
    llep_client *c = NULL;
    llep_layer *l = NULL;
    char name[64];
    double err;
    int r;

    if (argc != 2) {
        fprintf(stderr, "usage: forward-check SOCKET\n");
        return 2;
    }
    fill(w_gate, N * D * H, 0.25f);
    fill(w_up, N * D * H, 0.25f);
    fill(w_down, N * H * D, 0.2f);
    fill(b_gate, N * H, 0.1f);
    fill(b_up, N * H, 0.1f);
    fill(b_down, N * D, 0.1f);
    fill(x, TOKENS * D, 1.0f);
    fill(topk_w, TOKENS * K, 1.0f);
    /* Skewed: half the slots go to expert 0, so LLEP has something to spread. */
    for (int i = 0; i < TOKENS * K; i++)
        topk_idx[i] = i % 2 == 0 ? 0 : (int32_t)((rnd() + 1.0f) * 0.5f * N) % N;

    r = llep_connect(argv[1], &c);
    if (r < 0) {
        fprintf(stderr, "forward-check: connect %s: %s: %s\n", argv[1], llep_strerror(r),
                llep_client_error(NULL));
        return 1;
    }
    snprintf(name, sizeof(name), "forward-check-%ld", (long)getpid());
    r = llep_layer_create(c, name, &d, &l);
    if (r == 0)
        r = llep_forward(l, TOKENS, x, topk_idx, topk_w, y);
    if (r < 0) {
        fprintf(stderr, "forward-check: %s: %s\n", llep_strerror(r), llep_client_error(c));
        llep_disconnect(c);
        return 1;
    }
    llep_layer_release(l);
    llep_disconnect(c);
    err = rel_error();
    printf("forward-check: %d tokens through %s, relative L2 error %.3g\n", TOKENS, argv[1],
           err);
    return err < 1e-5 ? 0 : 1;
}
