/* daemon/core/layout.c: bf16 rounding, strided gathers (copy, transpose, de-interleave) in
 * every dtype pair, and the range-checked int64 index conversion. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "layout.h"
#include "llep/bf16.h"

static uint32_t bits_of(float f) {
    uint32_t u;

    memcpy(&u, &f, sizeof(u));
    return u;
}

static float float_of(uint32_t u) {
    float f;

    memcpy(&f, &u, sizeof(f));
    return f;
}

START_TEST(test_bf16_rounding) {
    /* Exact values stay; halfway cases go to the even neighbour; above half rounds up. */
    ck_assert_uint_eq(llep_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(llep_f32_to_bf16(-2.0f), 0xc000);
    ck_assert_uint_eq(llep_f32_to_bf16(float_of(0x3f808000u)), 0x3f80);
    ck_assert_uint_eq(llep_f32_to_bf16(float_of(0x3f818000u)), 0x3f82);
    ck_assert_uint_eq(llep_f32_to_bf16(float_of(0x3f808001u)), 0x3f81);
    ck_assert_uint_eq(llep_f32_to_bf16(float_of(0x3f807fffu)), 0x3f80);
    ck_assert_uint_eq(llep_f32_to_bf16(INFINITY), 0x7f80);
    ck_assert_uint_eq(llep_f32_to_bf16(-INFINITY), 0xff80);
    /* The largest finite float32 is beyond bf16's largest finite value: it rounds to inf. */
    ck_assert_uint_eq(llep_f32_to_bf16(float_of(0x7f7fffffu)), 0x7f80);
    /* A NaN whose payload lies only in the low half must not become infinity. */
    ck_assert(isnan(llep_bf16_to_f32(llep_f32_to_bf16(float_of(0x7f800001u)))));
    ck_assert(isnan(llep_bf16_to_f32(llep_f32_to_bf16(NAN))));
    ck_assert(llep_bf16_to_f32(0x3f80) == 1.0f);
    ck_assert(llep_bf16_to_f32(0x0001) == float_of(0x00010000u));
}
END_TEST

/* Every bf16 value survives widening and narrowing (NaNs stay NaNs). */
START_TEST(test_bf16_round_trip) {
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float f = llep_bf16_to_f32((uint16_t)h);

        ck_assert_uint_eq(bits_of(f), h << 16);
        if (isnan(f))
            ck_assert(isnan(llep_bf16_to_f32(llep_f32_to_bf16(f))));
        else
            ck_assert_uint_eq(llep_f32_to_bf16(f), h);
    }
}
END_TEST

/* Nearest-even against a plain float64 definition: of the two bf16 neighbours of v, the
 * nearer one, the one with an even last bit on a tie. */
START_TEST(test_bf16_nearest) {
    uint64_t s = 12345;

    for (int i = 0; i < 200000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t u = (uint32_t)(s >> 32) & 0xbfffffffu; /* finite, exponent below 2^64 */
        double v = float_of(u), lo = float_of(u & 0xffff0000u);
        double hi = float_of((u & 0xffff0000u) + 0x10000u);
        uint16_t want = (uint16_t)(u >> 16), got = llep_f32_to_bf16((float)v);
        double dlo = fabs(v - lo), dhi = fabs(hi - v);

        if (dhi < dlo || (dhi == dlo && (want & 1)))
            want++;
        ck_assert_msg(got == want, "%a: got 0x%04x, want 0x%04x", v, got, want);
    }
}
END_TEST

/* A source of rows_s x cols_s values, each also kept as float64 (what it is in its type). */
static void *source(enum llep_dtype t, size_t n, double **ret_v) {
    size_t es = llep__layout_dtype_size(t);
    char *s = malloc(n * es + 1);
    double *v = malloc(n * sizeof(double) + 1);

    ck_assert(s && v);
    for (size_t i = 0; i < n; i++) {
        float f = (float)sin((double)i * 0.731) * 3.0f + (float)i * 1e-3f;

        if (t == LLEP_DTYPE_F32) {
            ((float *)(void *)s)[i] = f;
            v[i] = f;
        } else {
            uint16_t h = llep_f32_to_bf16(f);

            ((uint16_t *)(void *)s)[i] = h;
            v[i] = llep_bf16_to_f32(h);
        }
    }
    *ret_v = v;
    return s;
}

/* What dst element i must be: src's value in dst's type. */
static double expected(double v, enum llep_dtype dt) {
    return dt == LLEP_DTYPE_F32 ? (double)(float)v
                                : llep_bf16_to_f32(llep_f32_to_bf16((float)v));
}

static double read_elem(const void *p, enum llep_dtype t, size_t i) {
    return t == LLEP_DTYPE_F32 ? ((const float *)p)[i]
                               : llep_bf16_to_f32(((const uint16_t *)p)[i]);
}

/* gather(rows, cols, rs, cs) from a source of n elements, checked element by element. */
static void check_gather(enum llep_dtype dt, enum llep_dtype st, size_t n, size_t rows,
                         size_t cols, size_t offset, size_t rs, size_t cs) {
    double *v;
    char *src = source(st, n, &v);
    void *dst = malloc(rows * cols * 4 + 1);
    size_t es = llep__layout_dtype_size(st);

    ck_assert_ptr_nonnull(dst);
    llep__layout_gather(dst, dt, src + offset * es, st, rows, cols, rs, cs);
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++) {
            double want = expected(v[offset + i * rs + j * cs], dt);
            double got = read_elem(dst, dt, i * cols + j);

            ck_assert_msg(got == want, "dt %d st %d [%zu][%zu]: %g, want %g", dt, st, i, j,
                          got, want);
        }
    free(dst);
    free(src);
    free(v);
}

START_TEST(test_gather_layouts) {
    for (int d = 0; d < 2; d++)
        for (int s = 0; s < 2; s++) {
            enum llep_dtype dt = (enum llep_dtype)d, st = (enum llep_dtype)s;
            size_t r = 45, c = 70; /* not multiples of the tile */

            /* Copy with a row stride wider than the row. */
            check_gather(dt, st, r * (c + 3), r, c, 0, c + 3, 1);
            /* Transpose of a [c][r] matrix: dst[i][j] = src[j][i]. */
            check_gather(dt, st, r * c, r, c, 0, 1, r);
            /* The second half of the rows of a fused [2c][r] matrix, transposed. */
            check_gather(dt, st, 2 * r * c, r, c, c * r, 1, r);
            /* De-interleave: even and odd columns of [r][2c]. */
            check_gather(dt, st, r * 2 * c, r, c, 0, 2 * c, 2);
            check_gather(dt, st, r * 2 * c, r, c, 1, 2 * c, 2);
            /* Contiguous conversion, and degenerate shapes. */
            check_gather(dt, st, 1000, 1, 1000, 0, 1000, 1);
            check_gather(dt, st, 33, 33, 1, 0, 1, 1);
            check_gather(dt, st, 1, 1, 1, 0, 1, 1);
        }
}
END_TEST

START_TEST(test_convert) {
    float f[5] = { 1.0f, -0.5f, 3.14159f, 1e-20f, 65504.0f };
    uint16_t h[5], back[5];
    float g[5];

    llep__layout_convert(h, LLEP_DTYPE_BF16, f, LLEP_DTYPE_F32, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_uint_eq(h[i], llep_f32_to_bf16(f[i]));
    llep__layout_convert(g, LLEP_DTYPE_F32, h, LLEP_DTYPE_BF16, 5);
    llep__layout_convert(back, LLEP_DTYPE_BF16, h, LLEP_DTYPE_BF16, 5);
    for (int i = 0; i < 5; i++) {
        ck_assert(g[i] == llep_bf16_to_f32(h[i]));
        ck_assert_uint_eq(back[i], h[i]);
    }
    llep__layout_convert(g, LLEP_DTYPE_F32, f, LLEP_DTYPE_F32, 5);
    ck_assert(memcmp(g, f, sizeof(f)) == 0);
}
END_TEST

START_TEST(test_idx_from_i64) {
    int64_t good[6] = { 0, 7, 3, 3, 1, 6 };
    int64_t bad_neg[3] = { 1, -1, 2 }, bad_hi[3] = { 1, 2, 8 };
    int64_t bad_wide[2] = { 0, (int64_t)1 << 32 }, bad_min[1] = { INT64_MIN };
    int32_t out[6];
    size_t pos = 99;

    ck_assert_int_eq(llep__layout_idx_from_i64(out, good, 6, 8, &pos), 0);
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(out[i], good[i]);
    ck_assert_int_eq(llep__layout_idx_from_i64(out, bad_neg, 3, 8, &pos), -ERANGE);
    ck_assert_uint_eq(pos, 1);
    ck_assert_int_eq(llep__layout_idx_from_i64(out, bad_hi, 3, 8, &pos), -ERANGE);
    ck_assert_uint_eq(pos, 2);
    /* 2^32 would wrap to 0 in a plain cast: it must be refused even with a huge limit. */
    ck_assert_int_eq(llep__layout_idx_from_i64(out, bad_wide, 2, INT64_MAX, &pos), -ERANGE);
    ck_assert_uint_eq(pos, 1);
    ck_assert_int_eq(llep__layout_idx_from_i64(out, bad_min, 1, 8, NULL), -ERANGE);
    ck_assert_int_eq(llep__layout_idx_from_i64(out, good, 0, 8, &pos), 0);
}
END_TEST

static Suite *layout_suite(void) {
    Suite *s = suite_create("layout");
    TCase *tc = tcase_create("layout");

    tcase_add_test(tc, test_bf16_rounding);
    tcase_add_test(tc, test_bf16_round_trip);
    tcase_add_test(tc, test_bf16_nearest);
    tcase_add_test(tc, test_gather_layouts);
    tcase_add_test(tc, test_convert);
    tcase_add_test(tc, test_idx_from_i64);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(layout_suite(), CK_NORMAL);
}
