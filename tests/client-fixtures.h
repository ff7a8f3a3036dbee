/* What the suites that talk to llepd through libllep-client share (client-fixtures.c): a
 * connection and a layer that must come, failing the test with the library's reason when
 * they do not. Built only into those suites, which link the client library. */
#ifndef LLEP_TEST_CLIENT_FIXTURES_H
#define LLEP_TEST_CLIENT_FIXTURES_H

#include <stdint.h>

#include "llep/client.h"
#include "fixtures.h"

/* llep_connect(path); fails the test naming why it could not connect. */
llep_client *llep_test_connect(const char *path);

/* llep_layer_create(c, name, d) (d with weights creates, without attaches); fails the test
 * naming the layer and why. */
llep_layer *llep_test_layer_create(llep_client *c, const char *name, const llep_layer_desc *d);

/* A float32 layer of n experts (top-k, hidden dd, inter h, activation act) with biases,
 * drawn from s, and the desc that creates it (its weights point into w). */
typedef struct llep_test_client_layer {
    llep_layer_desc d;
    llep_test_f32_weights w;
} llep_test_client_layer;

void llep_test_client_layer_init(llep_test_client_layer *t, uint64_t *s, uint32_t n, uint32_t k,
                                 uint32_t dd, uint32_t h, enum llep_act act);
void llep_test_client_layer_fini(llep_test_client_layer *t);

/* Layer `index` of a test checkpoint's expected.bin (tests/make-checkpoints.py), the model mi
 * describes, as float32 in llep's layout: w_gate, w_up [N][D][H], w_down [N][H][D], then with
 * mi->bias b_gate, b_up [N][H], b_down [N][D], layer after layer. One allocation, at w->wg
 * (free it with free(w->wg)). */
void llep_test_read_expected(const char *dir, const llep_model_info *mi, uint32_t index,
                             llep_test_f32_weights *w);

#endif
