/* Strict number parsers: every accepted form, and every way a number can be wrong. */
#include <check.h>
#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "fixtures.h"
#include "parse-number.h"

/* A 64-bit parser (llep__parse_u64, llep__parse_size) and what it must make of some texts. */
typedef int parse_fn(const char *s, uint64_t *ret);
typedef struct valid_case {
    const char *s;
    uint64_t v;
} valid_case;

/* Each text parses to its value. */
static void expect_valid(parse_fn *parse, const valid_case *cases, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 42;
        ck_assert_msg(parse(cases[i].s, &v) == 0, "%s", cases[i].s);
        ck_assert_uint_eq(v, cases[i].v);
    }
}

/* Each text, and NULL text or result, is refused with -EINVAL, the result untouched. */
static void expect_invalid(parse_fn *parse, const char *const *bad, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 42;
        ck_assert_msg(parse(bad[i], &v) == -EINVAL, "'%s'", bad[i]);
        ck_assert_uint_eq(v, 42);
    }
    ck_assert_int_eq(parse(NULL, &(uint64_t){0}), -EINVAL);
    ck_assert_int_eq(parse("1", NULL), -EINVAL);
}

START_TEST(test_u64_valid) {
    static const valid_case cases[] = {
        { "0", 0 }, { "1", 1 }, { "007", 7 }, { "1024", 1024 },
        { "4294967296", 4294967296ull },
        { "18446744073709551615", UINT64_MAX },
        { "000000000000000000000000018446744073709551615", UINT64_MAX },
    };
    expect_valid(llep__parse_u64, cases, sizeof(cases) / sizeof(cases[0]));
}
END_TEST

START_TEST(test_u64_invalid) {
    static const char *const bad[] = {
        "", " 1", "1 ", "+1", "-1", "-0", "1x", "x1", "0x10", "1.0", "1e3", "1,000",
        "1\n", "\t1", "one", "18446744073709551615x", "99999999999999999999999y",
    };
    expect_invalid(llep__parse_u64, bad, sizeof(bad) / sizeof(bad[0]));
}
END_TEST

START_TEST(test_u64_overflow) {
    uint64_t v = 42;

    ck_assert_int_eq(llep__parse_u64("18446744073709551616", &v), -ERANGE);
    ck_assert_int_eq(llep__parse_u64("18446744073709551620", &v), -ERANGE);
    ck_assert_int_eq(llep__parse_u64("99999999999999999999999999999999", &v), -ERANGE);
    ck_assert_uint_eq(v, 42);
}
END_TEST

START_TEST(test_u32) {
    uint32_t v = 42;

    ck_assert_int_eq(llep__parse_u32("4294967295", &v), 0);
    ck_assert_uint_eq(v, UINT32_MAX);
    ck_assert_int_eq(llep__parse_u32("0", &v), 0);
    ck_assert_uint_eq(v, 0);
    v = 42;
    ck_assert_int_eq(llep__parse_u32("4294967296", &v), -ERANGE);
    ck_assert_int_eq(llep__parse_u32("18446744073709551616", &v), -ERANGE);
    ck_assert_int_eq(llep__parse_u32("-1", &v), -EINVAL);
    ck_assert_int_eq(llep__parse_u32("8x", &v), -EINVAL);
    ck_assert_int_eq(llep__parse_u32("", &v), -EINVAL);
    ck_assert_int_eq(llep__parse_u32(NULL, &v), -EINVAL);
    ck_assert_int_eq(llep__parse_u32("1", NULL), -EINVAL);
    ck_assert_uint_eq(v, 42);
}
END_TEST

START_TEST(test_double_valid) {
    static const struct { const char *s; double v; } cases[] = {
        { "0", 0.0 }, { "1", 1.0 }, { "-0.5", -0.5 }, { "+2.25", 2.25 }, { ".5", 0.5 },
        { "2.", 2.0 }, { "1e3", 1000.0 }, { "1E-3", 1e-3 }, { "1.3", 1.3 },
        { "1.7976931348623157e308", 1.7976931348623157e308 },
        { "4.9e-324", 4.9e-324 }, { "1e-400", 0.0 }, { "007.5", 7.5 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        double v = 42;
        ck_assert_msg(llep__parse_double(cases[i].s, &v) == 0, "%s", cases[i].s);
        ck_assert_msg(v == cases[i].v, "%s -> %g", cases[i].s, v);
    }
}
END_TEST

START_TEST(test_double_invalid) {
    static const char *const bad[] = {
        "", ".", "-", "+", "e5", ".e5", "1e", "1e+", "1.5.0", "1..5", " 1", "1 ", "1,5",
        "nan", "NaN", "-nan", "inf", "-inf", "infinity", "0x1p4", "0x10", "1f", "--1",
        "1e5x", "1.3\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        double v = 42;
        ck_assert_msg(llep__parse_double(bad[i], &v) == -EINVAL, "'%s'", bad[i]);
        ck_assert(v == 42);
    }
    ck_assert_int_eq(llep__parse_double(NULL, &(double){0}), -EINVAL);
    ck_assert_int_eq(llep__parse_double("1", NULL), -EINVAL);
}
END_TEST

START_TEST(test_double_overflow) {
    double v = 42;

    ck_assert_int_eq(llep__parse_double("1e309", &v), -ERANGE);
    ck_assert_int_eq(llep__parse_double("-1e309", &v), -ERANGE);
    ck_assert_int_eq(llep__parse_double("1.8e308", &v), -ERANGE);
    ck_assert(v == 42);
}
END_TEST

/* A program that adopted a locale with ',' as the decimal point must still read "1.5". */
START_TEST(test_double_locale) {
    double v = 0;

    if (!setlocale(LC_NUMERIC, "de_DE.UTF-8") && !setlocale(LC_NUMERIC, "fr_FR.UTF-8"))
        return; /* no such locale installed: nothing to prove here */
    ck_assert_int_eq(llep__parse_double("1.5", &v), 0);
    ck_assert(v == 1.5);
    ck_assert_int_eq(llep__parse_double("1,5", &v), -EINVAL);
}
END_TEST

START_TEST(test_double_keeps_errno) {
    double v;

    errno = 1234;
    ck_assert_int_eq(llep__parse_double("1e-400", &v), 0);
    ck_assert_int_eq(errno, 1234);
}
END_TEST

START_TEST(test_size_valid) {
    static const valid_case cases[] = {
        { "0", 0 }, { "64", 64 }, { "100B", 100 }, { "100b", 100 },
        { "1K", 1024 }, { "1k", 1024 }, { "512K", 512ull << 10 }, { "2KB", 2048 },
        { "3KiB", 3072 }, { "3kib", 3072 }, { "16M", 16ull << 20 }, { "16MiB", 16ull << 20 },
        { "16G", 16ull << 30 }, { "16GiB", 16ull << 30 }, { "1tb", 1ull << 40 },
        { "1T", 1ull << 40 }, { "0G", 0 },
        { "16777215T", 16777215ull << 40 },
        { "18446744073709551615", UINT64_MAX },
        { "18446744073709551615B", UINT64_MAX },
    };
    expect_valid(llep__parse_size, cases, sizeof(cases) / sizeof(cases[0]));
}
END_TEST

START_TEST(test_size_invalid) {
    static const char *const bad[] = {
        "", "G", "B", "KiB", "1.5G", "16 G", " 16G", "16G ", "-1K", "+1K", "1P", "1E",
        "1KK", "1iB", "1Ki", "1KiBB", "1BB", "1GB2", "0x10", "1e3", "99999999999999999999999Q",
    };
    expect_invalid(llep__parse_size, bad, sizeof(bad) / sizeof(bad[0]));
}
END_TEST

START_TEST(test_size_overflow) {
    uint64_t v = 42;

    ck_assert_int_eq(llep__parse_size("16777216T", &v), -ERANGE);
    ck_assert_int_eq(llep__parse_size("17179869184G", &v), -ERANGE);
    ck_assert_int_eq(llep__parse_size("18014398509481984K", &v), -ERANGE);
    ck_assert_int_eq(llep__parse_size("18446744073709551616", &v), -ERANGE);
    ck_assert_int_eq(llep__parse_size("99999999999999999999999G", &v), -ERANGE);
    ck_assert_uint_eq(v, 42);
}
END_TEST

static Suite *parse_number_suite(void) {
    Suite *s = suite_create("parse-number");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_u64_valid);
    tcase_add_test(tc, test_u64_invalid);
    tcase_add_test(tc, test_u64_overflow);
    tcase_add_test(tc, test_u32);
    tcase_add_test(tc, test_double_valid);
    tcase_add_test(tc, test_double_invalid);
    tcase_add_test(tc, test_double_overflow);
    tcase_add_test(tc, test_double_locale);
    tcase_add_test(tc, test_double_keeps_errno);
    tcase_add_test(tc, test_size_valid);
    tcase_add_test(tc, test_size_invalid);
    tcase_add_test(tc, test_size_overflow);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(parse_number_suite(), CK_ENV);
}
