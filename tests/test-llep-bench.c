/* Tests of llep-bench's modes (tools/bench-modes.h): every bad command line exits 2 naming the
 * problem; --planners, --trace and --tune print JSON with what they say they measure; and
 * --tune --write-config changes only its four keys of an llepd config file, which llepd's
 * parser then accepts with the values of the best point. Tiny shapes (gpt-oss-20b scaled by
 * 64: N 32, D = H = 45), so each run takes well under a second without sanitizers. The
 * binary's path comes from $LLEP_BENCH (set by meson). These check behaviour, not speed:
 * the figures are in docs/PERFORMANCE.md. */
#include <check.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "fixtures.h"

#define TINY "--preset", "gpt-oss-20b", "--scale", "64", "--tokens", "16", "--repeat", "1"

static llep_test_output run_bench(const char *const *args) {
    const char *exe = getenv("LLEP_BENCH");
    const char *argv[64];
    int n = 0;

    ck_assert_msg(exe != NULL, "LLEP_BENCH is not set");
    argv[n++] = exe;
    while (*args && n < 63)
        argv[n++] = *args++;
    argv[n] = NULL;
    return llep_test_run(argv, NULL);
}

static json_object *get(json_object *o, const char *key) {
    json_object *v;
    ck_assert_msg(json_object_object_get_ex(o, key, &v), "JSON lacks '%s'", key);
    return v;
}

/* ---- usage errors ----------------------------------------------------------------------- */

typedef struct bad_case {
    const char *args[16];
    const char *says;
} bad_case;

static const bad_case bad_cases[] = {
    { { "--planners", "ep,fast", NULL }, "unknown planner 'fast'" },
    { { "--planners", "ep,ep", NULL }, "'ep' is given twice" },
    { { "--planners", ",", NULL }, "no planner named" },
    { { "--trace", "sideways", NULL }, "'sideways' is not drift or jump" },
    { { "--steps", "10", NULL }, "--steps needs --trace" },
    { { "--trace", "drift", "--steps", "0", NULL }, "--steps: '0'" },
    { { "--trace", "drift", "--tune", NULL }, "--trace and --tune exclude each other" },
    { { "--trace", "drift", "--replica-cache", "off", NULL }, "must be a size > 0 or auto" },
    { { "--tune", "--planners", "ep,lla", NULL }, "take one planner" },
    { { "--write-config", "/tmp/x.conf", NULL }, "--write-config needs --tune" },
    { { "--tune", "--write-config", "", NULL }, "the file name is empty" },
    { { "--tune", "--csv", NULL }, "--csv go with the EP against LLEP run only" },
    { { "--planners", "ep", "--nodes", "2", NULL }, "--nodes, --plot and --csv" },
    { { "--device-memory", "0", NULL }, "--device-memory: '0' is not a size > 0" },
    { { "--device-memory", "lots", NULL }, "--device-memory: 'lots'" },
    { { "--tune", "stray", NULL }, "unexpected argument 'stray'" },
};

START_TEST(bad_args_exit_2)
{
    llep_test_output r = run_bench(bad_cases[_i].args);

    ck_assert_msg(r.status == 2, "case %d: exit %d, stderr: %s", _i, r.status, r.err);
    ck_assert_msg(strstr(r.err, bad_cases[_i].says) != NULL, "case %d: stderr '%s' lacks '%s'",
                  _i, r.err, bad_cases[_i].says);
    ck_assert_msg(strstr(r.err, "--help") != NULL, "case %d: no hint to --help", _i);
    ck_assert_str_eq(r.out, "");
    llep_test_output_free(&r);
}
END_TEST

/* ---- the modes' JSON -------------------------------------------------------------------- */

START_TEST(planners_json)
{
    const char *args[] = { TINY, "--scenario", "95%-1", "--min-tokens", "1024", "--planners",
                           "ep,lla,lla-scaled", "--json", NULL };
    llep_test_output r = run_bench(args);

    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    json_object *root = json_tokener_parse(r.out);
    ck_assert_msg(root != NULL, "not JSON: %.300s", r.out);
    ck_assert_int_eq(json_object_get_int(get(root, "min_tokens")), 1024);
    json_object *sc = json_object_array_get_idx(get(root, "scenarios"), 0);
    ck_assert_str_eq(json_object_get_string(get(sc, "scenario")), "95%-1");
    json_object *runs = get(sc, "runs");
    json_object *ep = get(runs, "ep"), *lla = get(runs, "lla"), *scaled = get(runs, "lla-scaled");
    ck_assert_str_eq(json_object_get_string(get(ep, "mode")), "ep");
    ck_assert_int_eq(json_object_get_int64(get(ep, "weight_bytes_moved")), 0);
    ck_assert_double_eq_tol(json_object_get_double(get(ep, "speedup")), 1.0, 1e-9);
    /* 95 % into one expert is far over lambda: both LLA planners spill it, and copy weights. */
    ck_assert_str_eq(json_object_get_string(get(lla, "mode")), "llep");
    ck_assert_str_eq(json_object_get_string(get(scaled, "mode")), "llep");
    ck_assert_int_gt(json_object_get_int64(get(scaled, "weight_bytes_moved")), 0);
    /* m 1024 over 16 tokens per device forces the remainder onto one helper; the scaled m
     * spreads it, so it moves the expert to more helpers. */
    ck_assert_int_gt(json_object_get_int(get(scaled, "transfers")),
                     json_object_get_int(get(lla, "transfers")));
    const char *v = json_object_get_string(get(scaled, "verdict"));
    ck_assert_msg(strcmp(v, "ok") == 0 || strcmp(v, "SLOWER") == 0, "verdict '%s'", v);
    json_object_put(root);
    llep_test_output_free(&r);
}
END_TEST

/* The cost planner calibrates the devices first and plans every step with that model. */
START_TEST(planners_cost)
{
    const char *args[] = { TINY, "--scenario", "95%-1", "--planners", "ep,cost", "--json",
                           NULL };
    llep_test_output r = run_bench(args);

    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    ck_assert_msg(strstr(r.err, "cost planner: calibrated") != NULL, "stderr: %s", r.err);
    json_object *root = json_tokener_parse(r.out);
    ck_assert_msg(root != NULL, "not JSON: %.300s", r.out);
    json_object *sc = json_object_array_get_idx(get(root, "scenarios"), 0);
    json_object *cost = get(get(sc, "runs"), "cost");
    const char *mode = json_object_get_string(get(cost, "mode"));
    ck_assert_msg(strcmp(mode, "ep") == 0 || strcmp(mode, "llep") == 0, "mode '%s'", mode);
    ck_assert_int_gt(json_object_get_int64(get(cost, "makespan_ns")), 0);
    json_object_put(root);
    llep_test_output_free(&r);
}
END_TEST

START_TEST(trace_json)
{
    const char *args[] = { TINY, "--scenario", "95%-1", "--trace", "drift", "--steps", "30",
                           "--json", NULL };
    llep_test_output r = run_bench(args);

    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    json_object *root = json_tokener_parse(r.out);
    ck_assert_msg(root != NULL, "not JSON: %.300s", r.out);
    json_object *off = get(root, "cache_off"), *on = get(root, "cache_on");
    double w_off = json_object_get_double(get(off, "mean_weight_bytes"));
    double w_on = json_object_get_double(get(on, "mean_weight_bytes"));
    /* One hot expert replaced at step 0 only within 30 steps of drift: the cache moves it once
     * per helper, without the cache every step moves it. */
    ck_assert_msg(w_off > 0 && w_on < w_off / 5, "weight bytes off %g, on %g", w_off, w_on);
    ck_assert_int_eq(json_object_get_int64(get(off, "cache_hits")), 0);
    ck_assert_int_gt(json_object_get_int64(get(on, "cache_hits")), 0);
    for (int i = 0; i < 2; i++) {
        json_object *s = i ? on : off;
        ck_assert_int_le(json_object_get_int64(get(s, "peak_bytes")),
                         json_object_get_int64(get(s, "budget_bytes")));
    }
    json_object *ps = get(root, "per_step");
    ck_assert_uint_eq(json_object_array_length(get(ps, "weight_bytes_on")), 30);
    json_object_put(root);
    llep_test_output_free(&r);
}
END_TEST

/* A tight budget (native weights 95 KiB, the largest step 111 KiB, room for five copies):
 * the cache must give way, and no step may fail or go over it. */
START_TEST(trace_tight_budget)
{
    const char *args[] = { TINY, "--scenario", "80%-4", "--trace", "jump", "--steps", "210",
                           "--device-memory", "320K", "--json", NULL };
    llep_test_output r = run_bench(args);

    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    json_object *root = json_tokener_parse(r.out);
    ck_assert_msg(root != NULL, "not JSON: %.300s", r.out);
    json_object *on = get(root, "cache_on");
    ck_assert_int_eq(json_object_get_int64(get(on, "budget_bytes")), 320 * 1024);
    ck_assert_int_le(json_object_get_int64(get(on, "peak_bytes")), 320 * 1024);
    /* Copies were kept while they fitted, and the hot set's jumps made the cache evict. */
    ck_assert_int_gt(json_object_get_int64(get(on, "cache_hits")), 0);
    ck_assert_int_gt(json_object_get_int64(get(get(root, "cache_end"), "evictions")), 0);
    json_object_put(root);
    llep_test_output_free(&r);
}
END_TEST

/* ---- --tune and --write-config ---------------------------------------------------------- */

static const char *const old_conf =
    "# llepd for the tests\n"
    "socket = /tmp/llep-bench-test.sock\n"
    "alpha = 9\n"
    "  min_tokens = 5\n"
    "log-level = info\n"
    "alpha = 3\n";

START_TEST(tune_writes_config)
{
    char dir[256], path[512], err[512];
    llep_test_tmpdir(dir, sizeof(dir), "llep-bench-tune");
    snprintf(path, sizeof(path), "%s/llepd.conf", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(old_conf, f);
    fclose(f);
    ck_assert_int_eq(chmod(path, 0640), 0);

    const char *args[] = { TINY, "--scenario", "95%-1", "--tune", "--json", "--write-config",
                           path, NULL };
    llep_test_output r = run_bench(args);
    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    json_object *root = json_tokener_parse(r.out);
    ck_assert_msg(root != NULL, "not JSON: %.300s", r.out);
    json_object *best = get(root, "best"), *def = get(root, "defaults");
    ck_assert_double_eq_tol(json_object_get_double(get(best, "vs_best")), 1.0, 1e-9);
    ck_assert(json_object_get_double(get(def, "vs_best")) >= 1.0);
    ck_assert_int_eq(json_object_get_int(get(def, "min_tokens")), 1024);
    ck_assert_int_gt(json_object_get_int(get(root, "plans_measured")), 1);

    /* llepd's parser takes the file, with the best point's values. */
    llep_config c;
    llep__config_init(&c);
    int rc = llep__config_load_file(&c, path, err, sizeof(err));
    ck_assert_msg(rc == 0, "llepd refuses the written config: %s", err);
    ck_assert_double_eq_tol(c.alpha, json_object_get_double(get(best, "alpha")), 1e-12);
    ck_assert_double_eq_tol(c.lambda, json_object_get_double(get(best, "lambda")), 1e-12);
    ck_assert_uint_eq(c.min_tokens, (uint32_t)json_object_get_int(get(best, "min_tokens")));
    const char *cache = json_object_get_string(get(best, "replica_cache"));
    ck_assert_uint_eq(c.replica_cache,
                      strcmp(cache, "auto") == 0 ? LLEP_CONFIG_CACHE_AUTO : 0);
    /* The other lines stay as they were. */
    ck_assert_str_eq(c.socket_path, "/tmp/llep-bench-test.sock");
    ck_assert_int_eq(c.log_level, LLEP_LOG_INFO);
    llep__config_fini(&c);
    ck_assert(llep_test_file_contains(path, "# llepd for the tests\n"
                                            "socket = /tmp/llep-bench-test.sock\nalpha = "));
    ck_assert(llep_test_file_contains(path, "log-level = info\n"));
    ck_assert(!llep_test_file_contains(path, "alpha = 9"));
    ck_assert(!llep_test_file_contains(path, "alpha = 3"));
    ck_assert(!llep_test_file_contains(path, "min_tokens = 5"));
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0640);
    json_object_put(root);
    llep_test_output_free(&r);
    llep_test_rm_rf(dir);
}
END_TEST

/* A config file llepd would refuse stays as it was: the new file is checked first. */
START_TEST(tune_keeps_bad_config)
{
    char dir[256], path[512];
    llep_test_tmpdir(dir, sizeof(dir), "llep-bench-tune");
    snprintf(path, sizeof(path), "%s/llepd.conf", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("frobnicate = yes\n", f);
    fclose(f);

    const char *args[] = { TINY, "--scenario", "95%-1", "--tune", "--write-config", path,
                           NULL };
    llep_test_output r = run_bench(args);
    ck_assert_msg(r.status == 1, "exit %d: %s", r.status, r.err);
    ck_assert_msg(strstr(r.err, "not changed") != NULL, "stderr: %s", r.err);
    ck_assert(llep_test_file_contains(path, "frobnicate = yes\n"));
    ck_assert(!llep_test_file_contains(path, "alpha"));
    llep_test_output_free(&r);
    llep_test_rm_rf(dir);
}
END_TEST

/* A new file is made when there is none. */
START_TEST(tune_new_config)
{
    char dir[256], path[512], err[512];
    llep_test_tmpdir(dir, sizeof(dir), "llep-bench-tune");
    snprintf(path, sizeof(path), "%s/new.conf", dir);

    const char *args[] = { TINY, "--scenario", "80%-4", "--tune", "--write-config", path, NULL };
    llep_test_output r = run_bench(args);
    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    ck_assert_msg(strstr(r.out, "best: alpha") != NULL, "stdout: %s", r.out);
    ck_assert_msg(strstr(r.out, "defaults") != NULL, "stdout: %s", r.out);
    llep_config c;
    llep__config_init(&c);
    ck_assert_msg(llep__config_load_file(&c, path, err, sizeof(err)) == 0, "%s", err);
    llep__config_fini(&c);
    ck_assert(llep_test_file_contains(path, "min-tokens = "));
    ck_assert(llep_test_file_contains(path, "replica-cache = "));
    llep_test_output_free(&r);
    llep_test_rm_rf(dir);
}
END_TEST

static Suite *bench_suite(void) {
    Suite *s = suite_create("llep-bench");
    TCase *tc = tcase_create("cli");

    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, bad_args_exit_2, 0, (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
    tcase_add_test(tc, planners_json);
    tcase_add_test(tc, planners_cost);
    tcase_add_test(tc, trace_json);
    tcase_add_test(tc, trace_tight_budget);
    tcase_add_test(tc, tune_writes_config);
    tcase_add_test(tc, tune_keeps_bad_config);
    tcase_add_test(tc, tune_new_config);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(bench_suite(), CK_NORMAL);
}
