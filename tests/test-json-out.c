/* The tools' JSON output (tools/json-out.c, over json-c): strings with quotes, backslashes,
 * control characters and non-ASCII bytes come out as valid JSON that reads back the same;
 * integers stay integers (up to 2^64 - 1), doubles stay doubles and read back exactly, NaN and
 * infinities become null; keys keep their order; one line, or indented; write errors are
 * reported. */
#include <check.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json-fixtures.h"
#include "json-out.h"

/* Control characters (all of them, DEL too), a quote, a backslash, a slash and UTF-8. */
static const char odd[] = "q\"uote\\back/slash\nnew\ttab\r\x01\x02\x1f\x7f caf\xc3\xa9";

static json_object *document(void) {
    static const uint64_t u64s[] = { 0, 1, UINT64_MAX };
    static const uint32_t u32s[] = { 7, UINT32_MAX };
    json_object *o = llep__jout_object(), *a = llep__jout_array(), *inner;

    llep__jout_str(o, "odd", odd);
    llep__jout_str(o, "none", NULL);
    llep__jout_u64(o, "u64_max", UINT64_MAX);
    llep__jout_i64(o, "i64_min", INT64_MIN);
    llep__jout_f64(o, "two", 2.0);
    llep__jout_f64(o, "tenth", 0.1);
    llep__jout_f64(o, "tiny", 1e-300);
    llep__jout_f64(o, "nan", NAN);
    llep__jout_f64(o, "inf", INFINITY);
    llep__jout_f64(o, "minus_inf", -INFINITY);
    llep__jout_f32(o, "f32_1.3", 1.3f);
    llep__jout_f32(o, "f32_2", 2.0f);
    llep__jout_f32(o, "f32_tiny", 1e-30f);
    llep__jout_f32(o, "f32_max", FLT_MAX);
    llep__jout_f32(o, "f32_nan", NAN);
    llep__jout_bool(o, "flag", true);
    llep__jout_add(o, "null", NULL);
    llep__jout_add(o, "u64s", llep__jout_u64s(u64s, 3));
    llep__jout_add(o, "u32s", llep__jout_u32s(u32s, 2));
    inner = llep__jout_object();
    llep__jout_str(inner, odd, "a key may be odd too");
    llep__jout_push(a, inner);
    llep__jout_push_u64(a, 42);
    llep__jout_add(o, "array", a);
    return o;
}

/* Writes the document with flags into a string (caller frees). */
static char *write_doc(int flags) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(llep__jout_write(f, document(), flags, "\n"), 0);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_uint_eq(strlen(text), len);
    return text;
}

/* Strict parse of the whole text (one value, then only the newline). */
static json_object *parse_strict(const char *text) {
    json_tokener *tok = json_tokener_new();
    size_t len = strlen(text);
    json_object *o;

    ck_assert_ptr_nonnull(tok);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    o = json_tokener_parse_ex(tok, text, (int)len);
    ck_assert_msg(o != NULL, "not JSON (%s): %s",
                  json_tokener_error_desc(json_tokener_get_error(tok)), text);
    ck_assert_msg(text[len - 1] == '\n', "no newline at the end: %s", text);
    for (size_t i = json_tokener_get_parse_end(tok); i < len; i++)
        ck_assert_msg(text[i] == '\n', "more after the value: %s", text + i);
    json_tokener_free(tok);
    return o;
}

static void check_document(json_object *o) {
    static const char *const keys[] = { "odd", "none", "u64_max", "i64_min", "two", "tenth",
                                        "tiny", "nan", "inf", "minus_inf", "f32_1.3", "f32_2",
                                        "f32_tiny", "f32_max", "f32_nan", "flag", "null",
                                        "u64s", "u32s", "array" };
    size_t i = 0;
    json_object *v, *a;

    json_object_object_foreach(o, key, val) {
        (void)val;
        ck_assert_uint_lt(i, sizeof(keys) / sizeof(keys[0]));
        ck_assert_str_eq(key, keys[i]);
        i++;
    }
    ck_assert_uint_eq(i, sizeof(keys) / sizeof(keys[0]));
    ck_assert_str_eq(json_object_get_string(llep_test_jget(o, "odd")), odd);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(o, "none")), "");
    v = llep_test_jget(o, "u64_max");
    ck_assert(json_object_is_type(v, json_type_int));
    ck_assert_uint_eq(json_object_get_uint64(v), UINT64_MAX);
    v = llep_test_jget(o, "i64_min");
    ck_assert(json_object_is_type(v, json_type_int));
    ck_assert_int_eq(json_object_get_int64(v), INT64_MIN);
    /* 2.0 stays a double rather than becoming the integer 2, and doubles read back exactly. */
    v = llep_test_jget(o, "two");
    ck_assert(json_object_is_type(v, json_type_double));
    ck_assert(json_object_get_double(v) == 2.0);
    ck_assert(json_object_get_double(llep_test_jget(o, "tenth")) == 0.1);
    ck_assert(json_object_get_double(llep_test_jget(o, "tiny")) == 1e-300);
    ck_assert(json_object_is_type(llep_test_jget(o, "nan"), json_type_null));
    ck_assert(json_object_is_type(llep_test_jget(o, "inf"), json_type_null));
    ck_assert(json_object_is_type(llep_test_jget(o, "minus_inf"), json_type_null));
    /* Floats: the same float back, 2.0f still a real number. */
    v = llep_test_jget(o, "f32_1.3");
    ck_assert(json_object_is_type(v, json_type_double));
    ck_assert((float)json_object_get_double(v) == 1.3f);
    v = llep_test_jget(o, "f32_2");
    ck_assert(json_object_is_type(v, json_type_double));
    ck_assert((float)json_object_get_double(v) == 2.0f);
    ck_assert((float)json_object_get_double(llep_test_jget(o, "f32_tiny")) == 1e-30f);
    ck_assert((float)json_object_get_double(llep_test_jget(o, "f32_max")) == FLT_MAX);
    ck_assert(json_object_is_type(llep_test_jget(o, "f32_nan"), json_type_null));
    ck_assert(json_object_get_boolean(llep_test_jget(o, "flag")));
    ck_assert(json_object_is_type(llep_test_jget(o, "null"), json_type_null));
    a = llep_test_jget(o, "u64s");
    ck_assert_uint_eq(json_object_array_length(a), 3);
    ck_assert_uint_eq(json_object_get_uint64(json_object_array_get_idx(a, 2)), UINT64_MAX);
    a = llep_test_jget(o, "u32s");
    ck_assert_uint_eq(json_object_array_length(a), 2);
    ck_assert_int_eq(json_object_get_int64(json_object_array_get_idx(a, 1)), UINT32_MAX);
    a = llep_test_jget(o, "array");
    ck_assert_str_eq(json_object_get_string(llep_test_jget(json_object_array_get_idx(a, 0), odd)),
                     "a key may be odd too");
    ck_assert_int_eq(json_object_get_int64(json_object_array_get_idx(a, 1)), 42);
}

START_TEST(test_line) {
    char *text = write_doc(LLEP_JOUT_LINE);
    json_object *o;

    /* One line: no raw control character anywhere but the final newline. */
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        ck_assert_msg(*p >= 0x20 || (*p == '\n' && p[1] == '\0'), "raw byte 0x%02x in: %s",
                      *p, text);
    /* The spacing the hand-written output had ("key": value), and '/' as it is. */
    ck_assert_ptr_nonnull(strstr(text, "\"flag\": true, "));
    ck_assert_ptr_nonnull(strstr(text, "back/slash"));
    /* The shortest forms of floats. */
    ck_assert_ptr_nonnull(strstr(text, "\"f32_1.3\": 1.3, "));
    ck_assert_ptr_nonnull(strstr(text, "\"f32_2\": 2.0, "));
    o = parse_strict(text);
    check_document(o);
    json_object_put(o);
    free(text);
}
END_TEST

START_TEST(test_pretty) {
    char *text = write_doc(LLEP_JOUT_PRETTY);
    json_object *o;

    ck_assert_ptr_nonnull(strstr(text, "\n  \"odd\": "));
    o = parse_strict(text);
    check_document(o);
    json_object_put(o);
    free(text);
}
END_TEST

/* A stream that cannot be written: -EIO, and the document is freed all the same (ASan). */
START_TEST(test_write_error) {
    FILE *f = fopen("/dev/full", "w");

    ck_assert_ptr_nonnull(f);
    setvbuf(f, NULL, _IONBF, 0);
    ck_assert_int_eq(llep__jout_write(f, document(), LLEP_JOUT_LINE, "\n"), -EIO);
    fclose(f);
}
END_TEST

static Suite *json_out_suite(void) {
    Suite *s = suite_create("json-out");
    TCase *tc = tcase_create("json-out");

    tcase_add_test(tc, test_line);
    tcase_add_test(tc, test_pretty);
    tcase_add_test(tc, test_write_error);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(json_out_suite());
    int failed;

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
