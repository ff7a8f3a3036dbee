/* Connections and layers for the client suites (client-fixtures.h). */
#include "client-fixtures.h"

#include <check.h>

llep_client *llep_test_connect(const char *path) {
    llep_client *c = NULL;
    int r = llep_connect(path, &c);

    ck_assert_msg(r == 0, "llep_connect(%s): %s: %s", path, llep_strerror(r),
                  llep_client_error(NULL));
    return c;
}

llep_layer *llep_test_layer_create(llep_client *c, const char *name, const llep_layer_desc *d) {
    llep_layer *l = NULL;
    int r = llep_layer_create(c, name, d, &l);

    ck_assert_msg(r == 0, "llep_layer_create(%s): %s: %s", name, llep_strerror(r),
                  llep_client_error(c));
    return l;
}
