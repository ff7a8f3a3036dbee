/* Growing arrays (daemon/core/grow.c): first capacity, doubling, no-op when there is room,
 * and a failure that leaves the array as it was. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "grow.h"

START_TEST(test_first_and_doubling) {
    uint32_t *v = NULL;
    size_t cap = 0;

    ck_assert_int_eq(llep__grow(&v, &cap, 1, sizeof(*v), 4), 0);
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(cap, 4);
    for (uint32_t i = 0; i < 4; i++)
        v[i] = i;
    ck_assert_int_eq(llep__grow(&v, &cap, 5, sizeof(*v), 4), 0);
    ck_assert_uint_eq(cap, 8);
    ck_assert_int_eq(llep__grow(&v, &cap, 33, sizeof(*v), 4), 0);
    ck_assert_uint_eq(cap, 64);
    for (uint32_t i = 0; i < 4; i++)
        ck_assert_uint_eq(v[i], i);   /* what was there survives the moves */
    v[63] = 7;                       /* and the whole capacity is writable (ASan) */
    free(v);
}
END_TEST

START_TEST(test_room_is_noop) {
    double *v = malloc(8 * sizeof(*v)), *before = v;
    size_t cap = 8;

    ck_assert_int_eq(llep__grow(&v, &cap, 8, sizeof(*v), 2), 0);
    ck_assert_ptr_eq(v, before);
    ck_assert_uint_eq(cap, 8);
    ck_assert_int_eq(llep__grow(&v, &cap, 0, sizeof(*v), 2), 0);
    ck_assert_uint_eq(cap, 8);
    free(v);
}
END_TEST

START_TEST(test_failure_keeps_array) {
    char *v = malloc(16), *before = v;
    size_t cap = 16;

    ck_assert_int_eq(llep__grow(&v, &cap, SIZE_MAX, 1, 16), -EOVERFLOW);
    ck_assert_int_eq(llep__grow(&v, &cap, SIZE_MAX / 4, 64, 16), -EOVERFLOW);
    ck_assert_ptr_eq(v, before);
    ck_assert_uint_eq(cap, 16);
    free(v);
}
END_TEST

static Suite *grow_suite(void) {
    Suite *s = suite_create("grow");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_first_and_doubling);
    tcase_add_test(tc, test_room_is_noop);
    tcase_add_test(tc, test_failure_keeps_array);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(grow_suite());
    int failed;

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
