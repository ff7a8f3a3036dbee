/* Fixtures for in-process engine suites (engine-fixtures.h). */
#include "engine-fixtures.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "ref-moe.h"

void llep_test_layer_init(llep_test_layer *l, llep_test_shape s, uint64_t seed) {
    uint64_t st = seed;

    l->s = s;
    llep_test_f32_weights_init(&l->w, xorshift_sym, &st, s.n, s.d, s.h,
                               1.0f / sqrtf((float)s.d), 1.0f / sqrtf((float)s.h), 0.1f);
}

void llep_test_layer_fini(llep_test_layer *l) {
    llep_test_f32_weights_fini(&l->w);
}

/* x, w and y of b; the routing is the caller's. */
static void batch_alloc(llep_test_batch *b, const llep_test_layer *l, uint32_t tokens,
                        uint64_t *st) {
    size_t slots = (size_t)tokens * l->s.k;

    b->tokens = tokens;
    b->x = llep_test_random_floats(xorshift_sym, st, (size_t)tokens * l->s.d, 1.0f);
    b->w = llep_test_random_floats(xorshift_sym, st, slots, 1.0f);
    b->y = calloc((size_t)tokens * l->s.d + 1, sizeof(float));
    b->idx = malloc((slots + 1) * sizeof(*b->idx));
    ck_assert_ptr_nonnull(b->y);
    ck_assert_ptr_nonnull(b->idx);
}

void llep_test_batch_init(llep_test_batch *b, const llep_test_layer *l, uint32_t tokens,
                          double skew, uint64_t seed) {
    uint64_t st = seed;

    batch_alloc(b, l, tokens, &st);
    for (size_t i = 0; i < (size_t)tokens * l->s.k; i++)
        b->idx[i] = xorshift_skewed(&st, skew, l->s.n);
}

void llep_test_batch_spread(llep_test_batch *b, const llep_test_layer *l, uint32_t tokens,
                            double skew, uint64_t seed) {
    uint64_t st = seed;
    uint32_t k = l->s.k;

    batch_alloc(b, l, tokens, &st);
    for (uint32_t t = 0; t < tokens; t++)
        for (uint32_t j = 0; j < k; j++) {
            uint32_t x = rng_unit(&st) < skew && j == 0 ? 0 : (t + j) % l->s.n;
            b->idx[t * k + j] = (int32_t)x;
        }
    for (uint32_t t = 0; t < tokens; t++)
        for (uint32_t j = 1; j < k; j++)
            if (b->idx[t * k + j] == b->idx[t * k])
                b->idx[t * k + j] = (b->idx[t * k] + (int32_t)j) % (int32_t)l->s.n;
}

void llep_test_batch_fini(llep_test_batch *b) {
    free(b->x);
    free(b->w);
    free(b->y);
    free(b->idx);
}

double llep_test_batch_error_w(const llep_test_f32_weights *w, llep_test_shape s,
                               const llep_test_batch *b) {
    size_t n = (size_t)b->tokens * s.d;
    double *ref = malloc(n * sizeof(*ref) + 1);
    llep_ref_f32 r = { .n = s.n, .d = s.d, .h = s.h, .act = LLEP_ACT_SWIGLU, .wg = w->wg,
                       .wu = w->wu, .wd = w->wd, .bg = w->bg, .bu = w->bu, .bd = w->bd };

    ck_assert_ptr_nonnull(ref);
    llep_ref_moe_f32_layer(&r, b->tokens, s.k, b->x, b->idx, b->w, ref);
    double err = llep_test_rel_l2(b->y, ref, n);
    free(ref);
    return err;
}

double llep_test_batch_error(const llep_test_layer *l, const llep_test_batch *b) {
    return llep_test_batch_error_w(&l->w, l->s, b);
}

void llep_test_assert_exact(const llep_test_layer *l, const llep_test_batch *b,
                            const char *what) {
    double err = llep_test_batch_error(l, b);

    ck_assert_msg(err <= 1e-5, "%s: relative L2 error %g over 1e-5", what, err);
}

void llep_test_engine_config(llep_engine_config *cfg, const llep_test_layer *l,
                             llep_devices *dv, uint32_t p) {
    llep__engine_config_default(cfg);
    cfg->num_experts = l->s.n;
    cfg->top_k = l->s.k;
    cfg->hidden = l->s.d;
    cfg->inter = l->s.h;
    cfg->devices = dv;
    cfg->num_devices = dv ? 0 : p;
    cfg->plan.min_tokens = 1;
    cfg->w_gate = l->w.wg;
    cfg->w_up = l->w.wu;
    cfg->w_down = l->w.wd;
    cfg->b_gate = l->w.bg;
    cfg->b_up = l->w.bu;
    cfg->b_down = l->w.bd;
}

int llep_test_engine_step(llep_engine *e, uint32_t p, const llep_test_layer *l,
                          llep_test_batch *b, llep_engine_stats *st) {
    llep_engine_batch hb[8];
    uint32_t per = b->tokens / p, t0 = 0;

    ck_assert_uint_le(p, 8);
    for (uint32_t h = 0; h < p; h++) {
        uint32_t n = h + 1 == p ? b->tokens - t0 : per;
        hb[h] = (llep_engine_batch){ .tokens = n, .x = b->x + (size_t)t0 * l->s.d,
                                     .topk_idx = b->idx + (size_t)t0 * l->s.k,
                                     .topk_w = b->w + (size_t)t0 * l->s.k,
                                     .y = b->y + (size_t)t0 * l->s.d };
        t0 += n;
    }
    return llep__engine_step(e, hb, NULL, st);
}
