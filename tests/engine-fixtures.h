/* Fixtures for suites that run steps on engines in-process (test-devices, test-failover): a
 * float32 layer with its weights, a batch of routed tokens, the float64 check, an engine's
 * config for the layer, and one step with the batch split over the home devices. */
#ifndef LLEP_TEST_ENGINE_FIXTURES_H
#define LLEP_TEST_ENGINE_FIXTURES_H

#include <stdbool.h>
#include <stdint.h>

#include "devices.h"
#include "engine.h"
#include "fixtures.h"

typedef struct llep_test_shape {
    uint32_t n, k, d, h;   /* experts, top-k, hidden, inter */
} llep_test_shape;

typedef struct llep_test_layer {
    llep_test_shape s;
    llep_test_f32_weights w;   /* with biases */
} llep_test_layer;

void llep_test_layer_init(llep_test_layer *l, llep_test_shape s, uint64_t seed);
void llep_test_layer_fini(llep_test_layer *l);

typedef struct llep_test_batch {
    uint32_t tokens;
    float *x, *w, *y;          /* [tokens][D], [tokens][K], [tokens][D] (y zeroed) */
    int32_t *idx;              /* [tokens][K] */
} llep_test_batch;

/* tokens routed with `skew` of the slots on expert 0, the rest uniform. */
void llep_test_batch_init(llep_test_batch *b, const llep_test_layer *l, uint32_t tokens,
                          double skew, uint64_t seed);
/* As llep_test_batch_init(), but every expert gets slots (token t's j-th slot on expert
 * (t + j) mod N, so every device computes), `skew` of the first slots moved onto expert 0,
 * and a token's K experts stay distinct. */
void llep_test_batch_spread(llep_test_batch *b, const llep_test_layer *l, uint32_t tokens,
                            double skew, uint64_t seed);
void llep_test_batch_fini(llep_test_batch *b);

/* Relative L2 error of b's y against the float64 reference of the layer of shape s with
 * weights w (those of the layer that ran, or of the checkpoint a model layer was read from). */
double llep_test_batch_error_w(const llep_test_f32_weights *w, llep_test_shape s,
                               const llep_test_batch *b);
double llep_test_batch_error(const llep_test_layer *l, const llep_test_batch *b);
/* Fails the test when the error is over DESIGN.md section 4's 1e-5 for float32. */
void llep_test_assert_exact(const llep_test_layer *l, const llep_test_batch *b, const char *what);

/* The engine config for l: defaults, l's shape and weights, m = 1 (so small test batches
 * spill), on dv (NULL: p devices of its own). */
void llep_test_engine_config(llep_engine_config *cfg, const llep_test_layer *l,
                             llep_devices *dv, uint32_t p);
/* One step of b on e, its tokens split over p (at most 8) home devices in order. */
int llep_test_engine_step(llep_engine *e, uint32_t p, const llep_test_layer *l,
                          llep_test_batch *b, llep_engine_stats *st);

#endif
