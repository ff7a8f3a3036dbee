/* What the suites that talk to llepd through libllep-client share (client-fixtures.c): a
 * connection and a layer that must come, failing the test with the library's reason when
 * they do not. Built only into those suites, which link the client library. */
#ifndef LLEP_TEST_CLIENT_FIXTURES_H
#define LLEP_TEST_CLIENT_FIXTURES_H

#include "llep/client.h"

/* llep_connect(path); fails the test naming why it could not connect. */
llep_client *llep_test_connect(const char *path);

/* llep_layer_create(c, name, d) (d with weights creates, without attaches); fails the test
 * naming the layer and why. */
llep_layer *llep_test_layer_create(llep_client *c, const char *name, const llep_layer_desc *d);

#endif
