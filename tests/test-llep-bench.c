/* Tests of llep-bench's modes (tools/bench-modes.h): every bad command line exits 2 naming the
 * problem; --planners, --trace and --tune print JSON with what they say they measure; and
 * --tune --write-config changes only its four keys of an llepd config file, which llepd's
 * parser then accepts with the values of the best point; --tune measures only the plans the
 * cost model ranks best (--tune-top) and the defaults', and says how good that ranking was. Tiny shapes (gpt-oss-20b scaled by
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
#include "json-fixtures.h"

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
    { { "--tune", "--tune-top", "-1", NULL }, "--tune-top: '-1' is not an integer >= 0" },
    { { "--tune", "--tune-top", "many", NULL }, "--tune-top: 'many' is not an integer >= 0" },
    { { "--tune", "--tune-top", "2.5", NULL }, "--tune-top: '2.5'" },
    { { "--tune", "--tune-top", "", NULL }, "--tune-top: ''" },
    { { "--tune-top", "3", NULL }, "--tune-top needs --tune" },
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
    ck_assert_int_eq(json_object_get_int(llep_test_jget(root, "min_tokens")), 1024);
    json_object *sc = json_object_array_get_idx(llep_test_jget(root, "scenarios"), 0);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(sc, "scenario")), "95%-1");
    json_object *runs = llep_test_jget(sc, "runs");
    json_object *ep = llep_test_jget(runs, "ep"), *lla = llep_test_jget(runs, "lla"), *scaled = llep_test_jget(runs, "lla-scaled");
    ck_assert_str_eq(json_object_get_string(llep_test_jget(ep, "mode")), "ep");
    ck_assert_int_eq(json_object_get_int64(llep_test_jget(ep, "weight_bytes_moved")), 0);
    ck_assert_double_eq_tol(json_object_get_double(llep_test_jget(ep, "speedup")), 1.0, 1e-9);
    /* The measured bound is EP's mean device busy time: above zero, and EP's own makespan
     * (its largest device) reaches at most all of it, here far less (one hot device). */
    int64_t work = json_object_get_int64(llep_test_jget(sc, "work_bound_ns"));
    double ep_work = json_object_get_double(llep_test_jget(ep, "fraction_of_work"));
    ck_assert_int_gt(work, 0);
    ck_assert_double_eq_tol(ep_work, (double)work /
                            (double)json_object_get_int64(llep_test_jget(ep, "makespan_ns")), 1e-9);
    ck_assert_msg(ep_work > 0 && ep_work < 0.9, "ep's fraction of the work bound %g", ep_work);
    /* 95 % into one expert is far over lambda: both LLA planners spill it, and copy weights. */
    ck_assert_str_eq(json_object_get_string(llep_test_jget(lla, "mode")), "llep");
    ck_assert_str_eq(json_object_get_string(llep_test_jget(scaled, "mode")), "llep");
    ck_assert_int_gt(json_object_get_int64(llep_test_jget(scaled, "weight_bytes_moved")), 0);
    /* m 1024 over 16 tokens per device forces the remainder onto one helper; the scaled m
     * spreads it, so it moves the expert to more helpers. */
    ck_assert_int_gt(json_object_get_int(llep_test_jget(scaled, "transfers")),
                     json_object_get_int(llep_test_jget(lla, "transfers")));
    const char *v = json_object_get_string(llep_test_jget(scaled, "verdict"));
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
    json_object *sc = json_object_array_get_idx(llep_test_jget(root, "scenarios"), 0);
    json_object *cost = llep_test_jget(llep_test_jget(sc, "runs"), "cost");
    const char *mode = json_object_get_string(llep_test_jget(cost, "mode"));
    ck_assert_msg(strcmp(mode, "ep") == 0 || strcmp(mode, "llep") == 0, "mode '%s'", mode);
    ck_assert_int_gt(json_object_get_int64(llep_test_jget(cost, "makespan_ns")), 0);
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
    json_object *off = llep_test_jget(root, "cache_off"), *on = llep_test_jget(root, "cache_on");
    double w_off = json_object_get_double(llep_test_jget(off, "mean_weight_bytes"));
    double w_on = json_object_get_double(llep_test_jget(on, "mean_weight_bytes"));
    /* One hot expert replaced at step 0 only within 30 steps of drift: the cache moves it once
     * per helper, without the cache every step moves it. */
    ck_assert_msg(w_off > 0 && w_on < w_off / 5, "weight bytes off %g, on %g", w_off, w_on);
    ck_assert_int_eq(json_object_get_int64(llep_test_jget(off, "cache_hits")), 0);
    ck_assert_int_gt(json_object_get_int64(llep_test_jget(on, "cache_hits")), 0);
    for (int i = 0; i < 2; i++) {
        json_object *s = i ? on : off;
        ck_assert_int_le(json_object_get_int64(llep_test_jget(s, "peak_bytes")),
                         json_object_get_int64(llep_test_jget(s, "budget_bytes")));
    }
    json_object *ps = llep_test_jget(root, "per_step");
    ck_assert_uint_eq(json_object_array_length(llep_test_jget(ps, "weight_bytes_on")), 30);
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
    json_object *on = llep_test_jget(root, "cache_on");
    ck_assert_int_eq(json_object_get_int64(llep_test_jget(on, "budget_bytes")), 320 * 1024);
    ck_assert_int_le(json_object_get_int64(llep_test_jget(on, "peak_bytes")), 320 * 1024);
    /* Copies were kept while they fitted, and the hot set's jumps made the cache evict. */
    ck_assert_int_gt(json_object_get_int64(llep_test_jget(on, "cache_hits")), 0);
    ck_assert_int_gt(json_object_get_int64(llep_test_jget(llep_test_jget(root, "cache_end"), "evictions")), 0);
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
    json_object *best = llep_test_jget(root, "best"), *def = llep_test_jget(root, "defaults");
    ck_assert_double_eq_tol(json_object_get_double(llep_test_jget(best, "vs_best")), 1.0, 1e-9);
    ck_assert(json_object_get_double(llep_test_jget(def, "vs_best")) >= 1.0);
    ck_assert_int_eq(json_object_get_int(llep_test_jget(def, "min_tokens")), 1024);
    ck_assert_int_gt(json_object_get_int(llep_test_jget(root, "plans_measured")), 1);
    /* --tune-top's default, 8, and the defaults' plan. */
    ck_assert_int_eq(json_object_get_int(llep_test_jget(root, "tune_top")), 8);
    ck_assert_int_le(json_object_get_int(llep_test_jget(root, "plans_measured")), 9);

    /* llepd's parser takes the file, with the best point's values. */
    llep_config c;
    llep__config_init(&c);
    int rc = llep__config_load_file(&c, path, err, sizeof(err));
    ck_assert_msg(rc == 0, "llepd refuses the written config: %s", err);
    ck_assert_double_eq_tol(c.alpha, json_object_get_double(llep_test_jget(best, "alpha")), 1e-12);
    ck_assert_double_eq_tol(c.lambda, json_object_get_double(llep_test_jget(best, "lambda")), 1e-12);
    ck_assert_uint_eq(c.min_tokens, (uint32_t)json_object_get_int(llep_test_jget(best, "min_tokens")));
    const char *cache = json_object_get_string(llep_test_jget(best, "replica_cache"));
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

/* The distinct plans in the model's order: ranks 1, 2, ... with modelled makespans that never
 * fall; returns how many of them were measured, and checks each measured one's figures. */
static int check_by_model(json_object *root) {
    json_object *by_model = llep_test_jget(root, "by_model");
    int n = (int)json_object_array_length(by_model), measured = 0;
    double last = 0;

    ck_assert_int_eq(n, json_object_get_int(llep_test_jget(root, "distinct_plans")));
    for (int i = 0; i < n; i++) {
        json_object *pl = json_object_array_get_idx(by_model, (size_t)i);
        double model = json_object_get_double(llep_test_jget(pl, "model_ns"));
        ck_assert_int_eq(json_object_get_int(llep_test_jget(pl, "model_rank")), i + 1);
        ck_assert_msg(model > 0 && model >= last, "plan %d: model %g after %g", i, model, last);
        last = model;
        if (!json_object_get_boolean(llep_test_jget(pl, "measured")))
            continue;
        measured++;
        ck_assert_int_gt(json_object_get_int64(llep_test_jget(pl, "makespan_ns")), 0);
        ck_assert(json_object_get_double(llep_test_jget(pl, "vs_best")) >= 1.0);
    }
    ck_assert_int_eq(measured, json_object_get_int(llep_test_jget(root, "plans_measured")));
    ck_assert_int_eq((int)json_object_array_length(llep_test_jget(root, "ranked")), measured);
    return measured;
}

/* --tune-top 2 measures the 2 best plans by the model and the defaults': at most 3 of the
 * scenario's distinct plans (95%-1 at 16 tokens makes more than 3). */
START_TEST(tune_top_prunes)
{
    const char *args[] = { TINY, "--scenario", "95%-1", "--tune", "--tune-top", "2", "--json",
                           NULL };
    llep_test_output r = run_bench(args);
    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    json_object *root = json_tokener_parse(r.out);
    ck_assert_msg(root != NULL, "not JSON: %.300s", r.out);
    ck_assert_int_eq(json_object_get_int(llep_test_jget(root, "tune_top")), 2);
    int measured = check_by_model(root);
    ck_assert_int_le(measured, 3);
    ck_assert_int_ge(measured, 2);
    ck_assert_int_gt(json_object_get_int(llep_test_jget(root, "distinct_plans")), 3);
    /* The model's two best are among the measured, and so are the defaults. */
    json_object *by_model = llep_test_jget(root, "by_model");
    for (size_t i = 0; i < 2; i++)
        ck_assert(json_object_get_boolean(llep_test_jget(json_object_array_get_idx(by_model, i),
                                              "measured")));
    ck_assert(json_object_get_boolean(llep_test_jget(llep_test_jget(root, "defaults"), "measured")));
    json_object *model = llep_test_jget(root, "model");
    ck_assert_str_eq(json_object_get_string(llep_test_jget(model, "backend")), "cpu");
    int pick = json_object_get_int(llep_test_jget(model, "top_pick_measured_rank"));
    ck_assert_int_ge(pick, 1);
    ck_assert_int_le(pick, measured);
    ck_assert_int_eq(json_object_get_int(llep_test_jget(llep_test_jget(model, "top_pick"), "model_rank")), 1);
    /* Whether pruning kept the best is only said when everything was measured. */
    json_object *v;
    ck_assert(!json_object_object_get_ex(model, "pruned_contains_best", &v));
    ck_assert_msg(strstr(r.err, "measuring 3") != NULL || strstr(r.err, "measuring 2") != NULL,
                  "stderr: %s", r.err);
    json_object_put(root);
    llep_test_output_free(&r);
}
END_TEST

/* --tune-top 0 measures every distinct plan and says whether the default top 8 by the model
 * (with the defaults' plan) held the measured best: checked here against the ranks. */
START_TEST(tune_top_all)
{
    const char *args[] = { TINY, "--scenario", "95%-1", "--tune", "--tune-top", "0", "--json",
                           NULL };
    llep_test_output r = run_bench(args);
    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    json_object *root = json_tokener_parse(r.out);
    ck_assert_msg(root != NULL, "not JSON: %.300s", r.out);
    ck_assert_int_eq(json_object_get_int(llep_test_jget(root, "tune_top")), 0);
    ck_assert_int_eq(check_by_model(root), json_object_get_int(llep_test_jget(root, "distinct_plans")));
    json_object *model = llep_test_jget(root, "model");
    int top = json_object_get_int(llep_test_jget(model, "pruned_top"));
    ck_assert_int_eq(top, 8);
    int best_rank = json_object_get_int(llep_test_jget(llep_test_jget(root, "best"), "model_rank"));
    int def_rank = json_object_get_int(llep_test_jget(llep_test_jget(root, "defaults"), "model_rank"));
    ck_assert_int_eq(json_object_get_int(llep_test_jget(model, "best_model_rank")), best_rank);
    ck_assert(json_object_get_boolean(llep_test_jget(model, "pruned_contains_best")) ==
              (best_rank <= top || best_rank == def_rank));
    /* The best the pruned run would have measured, against the best. */
    json_object *by_model = llep_test_jget(root, "by_model");
    double kept = 0;
    for (size_t i = 0; i < json_object_array_length(by_model); i++) {
        json_object *pl = json_object_array_get_idx(by_model, i);
        int rank = json_object_get_int(llep_test_jget(pl, "model_rank"));
        double vs = json_object_get_double(llep_test_jget(pl, "vs_best"));
        if ((rank <= top || rank == def_rank) && (kept == 0 || vs < kept))
            kept = vs;
    }
    ck_assert_double_eq_tol(json_object_get_double(llep_test_jget(model, "pruned_best_vs_best")), kept,
                            1e-4);
    json_object_put(root);
    llep_test_output_free(&r);
}
END_TEST

/* The table says the same in words. */
START_TEST(tune_top_table)
{
    const char *args[] = { TINY, "--scenario", "95%-1", "--tune", "--tune-top", "0", NULL };
    llep_test_output r = run_bench(args);
    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    ck_assert_msg(strstr(r.out, "model: its top pick") != NULL, "stdout: %s", r.out);
    ck_assert_msg(strstr(r.out, "model: its top 8 (--tune-top 8)") != NULL, "stdout: %s", r.out);
    llep_test_output_free(&r);
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
    tcase_add_test(tc, tune_top_prunes);
    tcase_add_test(tc, tune_top_all);
    tcase_add_test(tc, tune_top_table);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(bench_suite(), CK_NORMAL);
}
