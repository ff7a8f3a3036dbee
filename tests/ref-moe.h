/* The MoE layer of DESIGN.md section 4 in float64, written out plainly: the reference every
 * compute path is checked against (ref-moe.c). */
#ifndef LLEP_TEST_REF_MOE_H
#define LLEP_TEST_REF_MOE_H

#include <stddef.h>
#include <stdint.h>

#include "llep/types.h"

typedef struct llep_ref {
    uint32_t d, h;                 /* D, H */
    enum llep_act act;
    double alpha, limit;           /* SWIGLU_OAI; 0: 1.702 and 7.0 */
    const double *wg, *wu, *wd;    /* [N][D][H], [N][D][H], [N][H][D] */
    const double *bg, *bu, *bd;    /* [N][H], [N][H], [N][D]; NULL: no bias */
} llep_ref;

/* out[0..D) = FFN_e(x): act(x Wg + bg, x Wu + bu) Wd + bd. */
void llep_ref_ffn(const llep_ref *r, uint32_t e, const double *x, double *out);

/* y[t] = sum over k = 0..K-1 of w[t][k] * FFN_{idx[t][k]}(x[t]), for t < tokens; x as doubles. */
void llep_ref_moe(const llep_ref *r, uint32_t tokens, uint32_t k, const double *x,
                  const int32_t *idx, const float *w, double *y);

/* The same with x in float32. */
void llep_ref_moe_f32(const llep_ref *r, uint32_t tokens, uint32_t k, const float *x,
                      const int32_t *idx, const float *w, double *y);

/* A float64 copy of v[0..n) (malloc'd; NULL for v NULL). */
double *llep_ref_f64(const float *v, size_t n);

/* A layer of N experts with float32 weights, as a client hands them over. */
typedef struct llep_ref_f32 {
    uint32_t n, d, h;              /* N, D, H */
    enum llep_act act;
    double alpha, limit;           /* SWIGLU_OAI; 0: 1.702 and 7.0 */
    const float *wg, *wu, *wd;     /* [N][D][H], [N][D][H], [N][H][D] */
    const float *bg, *bu, *bd;     /* [N][H], [N][H], [N][D]; NULL: no bias */
} llep_ref_f32;

/* llep_ref_moe_f32 of that layer: y[t] for t < tokens, from x, idx and w in float32. */
void llep_ref_moe_f32_layer(const llep_ref_f32 *l, uint32_t tokens, uint32_t k, const float *x,
                            const int32_t *idx, const float *w, double *y);

#endif
