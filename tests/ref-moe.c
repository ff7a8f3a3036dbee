/* The float64 reference of DESIGN.md section 4 (ref-moe.h). */
#include "ref-moe.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>

void llep_ref_ffn(const llep_ref *r, uint32_t e, const double *x, double *out) {
    uint32_t d = r->d, h = r->h;
    double alpha = r->alpha > 0 ? r->alpha : 1.702, limit = r->limit > 0 ? r->limit : 7.0;
    double *a = malloc(h * sizeof(*a));

    ck_assert_ptr_nonnull(a);
    for (uint32_t j = 0; j < h; j++) {
        double g = r->bg ? r->bg[(size_t)e * h + j] : 0, u = r->bu ? r->bu[(size_t)e * h + j] : 0;
        for (uint32_t i = 0; i < d; i++) {
            g += x[i] * r->wg[((size_t)e * d + i) * h + j];
            u += x[i] * r->wu[((size_t)e * d + i) * h + j];
        }
        if (r->act == LLEP_ACT_SWIGLU) {
            a[j] = g / (1 + exp(-g)) * u;
        } else {
            double gc = g < limit ? g : limit;
            double uc = u < -limit ? -limit : (u > limit ? limit : u);
            a[j] = (uc + 1) * gc / (1 + exp(-alpha * gc));
        }
    }
    for (uint32_t i = 0; i < d; i++) {
        double v = r->bd ? r->bd[(size_t)e * d + i] : 0;
        for (uint32_t j = 0; j < h; j++)
            v += a[j] * r->wd[((size_t)e * h + j) * d + i];
        out[i] = v;
    }
    free(a);
}

void llep_ref_moe(const llep_ref *r, uint32_t tokens, uint32_t k, const double *x,
                  const int32_t *idx, const float *w, double *y) {
    double *f = malloc(r->d * sizeof(*f));

    ck_assert_ptr_nonnull(f);
    for (uint32_t t = 0; t < tokens; t++) {
        double *out = y + (size_t)t * r->d;
        for (uint32_t i = 0; i < r->d; i++)
            out[i] = 0;
        for (uint32_t s = 0; s < k; s++) {
            size_t sl = (size_t)t * k + s;
            llep_ref_ffn(r, (uint32_t)idx[sl], x + (size_t)t * r->d, f);
            for (uint32_t i = 0; i < r->d; i++)
                out[i] += w[sl] * f[i];
        }
    }
    free(f);
}

void llep_ref_moe_f32(const llep_ref *r, uint32_t tokens, uint32_t k, const float *x,
                      const int32_t *idx, const float *w, double *y) {
    double *xd = llep_ref_f64(x, (size_t)tokens * r->d);

    llep_ref_moe(r, tokens, k, xd, idx, w, y);
    free(xd);
}

double *llep_ref_f64(const float *v, size_t n) {
    double *d;

    if (!v)
        return NULL;
    d = malloc((n ? n : 1) * sizeof(*d));
    ck_assert_ptr_nonnull(d);
    for (size_t i = 0; i < n; i++)
        d[i] = v[i];
    return d;
}

void llep_ref_moe_f32_layer(const llep_ref_f32 *l, uint32_t tokens, uint32_t k, const float *x,
                            const int32_t *idx, const float *w, double *y) {
    size_t dh = (size_t)l->n * l->d * l->h;
    double *wg = llep_ref_f64(l->wg, dh), *wu = llep_ref_f64(l->wu, dh);
    double *wd = llep_ref_f64(l->wd, dh), *bg = llep_ref_f64(l->bg, (size_t)l->n * l->h);
    double *bu = llep_ref_f64(l->bu, (size_t)l->n * l->h);
    double *bd = llep_ref_f64(l->bd, (size_t)l->n * l->d);
    llep_ref r = { .d = l->d, .h = l->h, .act = l->act, .alpha = l->alpha, .limit = l->limit,
                   .wg = wg, .wu = wu, .wd = wd, .bg = bg, .bu = bu, .bd = bd };

    llep_ref_moe_f32(&r, tokens, k, x, idx, w, y);
    free(wg);
    free(wu);
    free(wd);
    free(bg);
    free(bu);
    free(bd);
}
