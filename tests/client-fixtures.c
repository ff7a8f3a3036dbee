/* Connections and layers for the client suites (client-fixtures.h). */
#include "client-fixtures.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

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

void llep_test_client_layer_init(llep_test_client_layer *t, uint64_t *s, uint32_t n, uint32_t k,
                                 uint32_t dd, uint32_t h, enum llep_act act) {
    memset(t, 0, sizeof(*t));
    t->d = (llep_layer_desc){ .num_experts = n, .top_k = k, .hidden = dd, .inter = h,
                              .dtype = LLEP_DTYPE_F32, .act = act };
    llep_test_f32_weights_init(&t->w, xorshift_sym, s, n, dd, h, 1.0f / sqrtf((float)dd),
                               1.0f / sqrtf((float)h), 0.1f);
    t->d.w_gate = t->w.wg;
    t->d.w_up = t->w.wu;
    t->d.w_down = t->w.wd;
    t->d.b_gate = t->w.bg;
    t->d.b_up = t->w.bu;
    t->d.b_down = t->w.bd;
}

void llep_test_client_layer_fini(llep_test_client_layer *t) {
    llep_test_f32_weights_fini(&t->w);
}

void llep_test_read_expected(const char *dir, const llep_model_info *mi, uint32_t index,
                             llep_test_f32_weights *w) {
    size_t n = mi->desc.num_experts, d = mi->desc.hidden, h = mi->desc.inter;
    size_t per = 3 * n * d * h + (mi->bias ? 2 * n * h + n * d : 0);
    char path[4200];

    snprintf(path, sizeof(path), "%s/expected.bin", dir);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    float *all = malloc(per * sizeof(float));
    ck_assert_ptr_nonnull(all);
    ck_assert_int_eq(fseek(f, (long)(per * index * sizeof(float)), SEEK_SET), 0);
    ck_assert_uint_eq(fread(all, sizeof(float), per, f), per);
    fclose(f);
    *w = (llep_test_f32_weights){ .wg = all, .wu = all + n * d * h, .wd = all + 2 * n * d * h };
    if (mi->bias) {
        w->bg = all + 3 * n * d * h;
        w->bu = w->bg + n * h;
        w->bd = w->bu + n * h;
    }
}
