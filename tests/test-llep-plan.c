/* Tests of the llep-plan command: its JSON must parse and equal the in-library plan, its
 * readable report must say what it computed, and every kind of bad input must exit 2 with a
 * message naming the problem. The binary's path comes from $LLEP_PLAN (set by meson). */
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "calib-file.h"
#include "cost-table.h"
#include "fixtures.h"
#include "loads.h"
#include "plan.h"

typedef llep_test_output result;

/* Runs llep-plan with args (NULL-terminated, without argv[0]); stdin_text may be NULL. */
static result run_plan(const char *stdin_text, const char *const *args) {
    const char *exe = getenv("LLEP_PLAN");
    const char *argv[64];
    int n = 0;

    ck_assert_msg(exe != NULL, "LLEP_PLAN is not set");
    argv[n++] = exe;
    while (*args && n < 63)
        argv[n++] = *args++;
    argv[n] = NULL;
    return llep_test_run(argv, stdin_text);
}

static void result_free(result *r) {
    llep_test_output_free(r);
}

/* ---- JSON equals the library's plan ---------------------------------------------------- */

static int64_t jint(json_object *o, const char *key) {
    json_object *v;
    ck_assert_msg(json_object_object_get_ex(o, key, &v), "JSON lacks '%s'", key);
    ck_assert_msg(json_object_is_type(v, json_type_int), "'%s' is not an integer", key);
    return json_object_get_int64(v);
}

static json_object *jarr(json_object *o, const char *key) {
    json_object *v;
    ck_assert_msg(json_object_object_get_ex(o, key, &v), "JSON lacks '%s'", key);
    ck_assert_msg(json_object_is_type(v, json_type_array), "'%s' is not an array", key);
    return v;
}

static void compare_json(const char *text, const llep_plan *p) {
    json_object *root = json_tokener_parse(text), *v;

    ck_assert_msg(root != NULL, "output is not JSON: %s", text);
    ck_assert(json_object_object_get_ex(root, "mode", &v));
    ck_assert_str_eq(json_object_get_string(v), p->mode == LLEP_PLAN_LLEP ? "llep" : "ep");
    ck_assert(json_object_object_get_ex(root, "imbalance", &v));
    ck_assert_double_eq_tol(json_object_get_double(v), p->imbalance, 1e-5 * p->imbalance);
    ck_assert_int_eq(jint(root, "capacity"), (int64_t)p->capacity);
    ck_assert_int_eq(jint(root, "devices"), p->num_devices);

    json_object *dl = jarr(root, "device_loads");
    ck_assert_uint_eq(json_object_array_length(dl), p->num_devices);
    for (uint32_t d = 0; d < p->num_devices; d++)
        ck_assert_int_eq(json_object_get_int64(json_object_array_get_idx(dl, d)),
                         (int64_t)p->device_loads[d]);

    json_object *as = jarr(root, "assignments");
    ck_assert_uint_eq(json_object_array_length(as), p->num_ranges);
    size_t k = 0;
    for (uint32_t e = 0; e < p->num_experts; e++)
        for (uint32_t i = p->range_off[e]; i < p->range_off[e + 1]; i++, k++) {
            json_object *a = json_object_array_get_idx(as, k);
            ck_assert_int_eq(jint(a, "expert"), e);
            ck_assert_int_eq(jint(a, "device"), p->ranges[i].device);
            ck_assert_int_eq(jint(a, "start"), (int64_t)p->ranges[i].start);
            ck_assert_int_eq(jint(a, "end"), (int64_t)p->ranges[i].end);
        }

    json_object *ts = jarr(root, "transfers");
    ck_assert_uint_eq(json_object_array_length(ts), p->num_transfers);
    for (uint32_t t = 0; t < p->num_transfers; t++) {
        json_object *x = json_object_array_get_idx(ts, t);
        ck_assert_int_eq(jint(x, "expert"), p->transfers[t].expert);
        ck_assert_int_eq(jint(x, "src"), p->transfers[t].src);
        ck_assert_int_eq(jint(x, "dst"), p->transfers[t].dst);
    }
    json_object_put(root);
}

/* run_plan, which must exit 0 with the JSON of plan p; the caller frees the result. */
static result run_plan_json(const char *stdin_text, const char *const *args, const llep_plan *p) {
    result r = run_plan(stdin_text, args);

    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    compare_json(r.out, p);
    return r;
}

/* Loads of n experts below spread, expert hot extra more (seed: lcg_next), as numbers and as
 * command-line words. */
static void random_loads(uint64_t *seed, uint32_t n, uint32_t hot, uint64_t spread,
                         uint64_t extra, uint64_t *loads, char (*words)[24]) {
    for (uint32_t e = 0; e < n; e++) {
        loads[e] = (lcg_next(seed) >> 40) % spread + (e == hot ? extra : 0);
        snprintf(words[e], sizeof(words[e]), "%llu", (unsigned long long)loads[e]);
    }
}

/* Random skewed loads through the command line and through a file on stdin. */
START_TEST(json_matches_library)
{
    static const uint32_t devs[] = { 1, 2, 4, 8 };
    uint64_t seed = 1234 + (uint64_t)_i;

    for (int iter = 0; iter < 10; iter++) {
        uint32_t np = devs[iter % 4], n = np * (1 + iter % 5);
        uint64_t loads[64];
        char words[64][24], text[64 * 24] = "", devarg[16];
        const char *args[80];
        int na = 0;

        random_loads(&seed, n, (uint32_t)iter % n, 5000, 40000, loads, words);
        for (uint32_t e = 0; e < n; e++) {
            strcat(text, words[e]);
            strcat(text, e % 7 == 6 ? "\n" : " \t");
        }
        snprintf(devarg, sizeof(devarg), "%u", np);
        llep_plan p;
        llep_plan_params pp;
        llep__plan_params_default(&pp);
        pp.min_tokens = 100;
        ck_assert_int_eq(llep__plan_init(&p, n, np), 0);
        ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), 0);

        args[na++] = "--json";
        args[na++] = "--devices";
        args[na++] = devarg;
        args[na++] = "--min-tokens=100";
        for (uint32_t e = 0; e < n; e++)
            args[na++] = words[e];
        args[na] = NULL;
        result r = run_plan_json(NULL, args, &p);
        result_free(&r);

        const char *fargs[] = { "--json", "-d", devarg, "-m", "100", "--loads-file", "-", NULL };
        r = run_plan_json(text, fargs, &p);
        result_free(&r);
        llep__plan_fini(&p);
    }
}
END_TEST

/* Slots of expert x computed off their home node, rank by rank, each expert's slots split
 * over the k home nodes as llep-plan says: load / k each, one more for the first load % k. */
static uint64_t plain_inter_node_rows(const llep_plan *p, uint32_t per_node) {
    uint32_t k = p->num_devices / per_node;
    uint64_t rows = 0;

    for (uint32_t x = 0; x < p->num_experts; x++)
        for (uint64_t t = 0; t < p->loads[x]; t++) {
            uint32_t home = 0;
            uint64_t upto = p->loads[x] / k + (p->loads[x] % k > 0);
            while (t >= upto) {
                home++;
                upto += p->loads[x] / k + (home < p->loads[x] % k);
            }
            uint32_t i = p->range_off[x];
            while (t >= p->ranges[i].end)
                i++;
            rows += p->ranges[i].device / per_node != home;
        }
    return rows;
}

/* --devices-per-node: the plan equals the library's hierarchical plan, and the node figures
 * equal a plain count; without the option there are no node keys. */
START_TEST(json_with_nodes)
{
    static const uint32_t devs[][2] = { { 2, 1 }, { 4, 2 }, { 8, 2 }, { 8, 4 }, { 6, 3 } };
    uint64_t seed = 99;

    for (int iter = 0; iter < 10; iter++) {
        uint32_t np = devs[iter % 5][0], per = devs[iter % 5][1], n = np * (1 + iter % 3);
        uint64_t loads[32];
        char words[32][24], devarg[16], perarg[16];
        const char *args[48];
        int na = 0;

        random_loads(&seed, n, (uint32_t)iter % n, 3000, 30000, loads, words);
        snprintf(devarg, sizeof(devarg), "%u", np);
        snprintf(perarg, sizeof(perarg), "%u", per);
        llep_plan p;
        llep_plan_params pp;
        llep__plan_params_default(&pp);
        pp.min_tokens = 100;
        pp.devices_per_node = per;
        ck_assert_int_eq(llep__plan_init(&p, n, np), 0);
        ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), 0);
        uint32_t cross = 0;
        for (uint32_t t = 0; t < p.num_transfers; t++)
            cross += p.transfers[t].src / per != p.transfers[t].dst / per;

        args[na++] = "--json";
        args[na++] = "-d";
        args[na++] = devarg;
        args[na++] = "-m";
        args[na++] = "100";
        args[na++] = "--devices-per-node";
        args[na++] = perarg;
        for (uint32_t e = 0; e < n; e++)
            args[na++] = words[e];
        args[na] = NULL;
        result r = run_plan_json(NULL, args, &p);
        json_object *root = json_tokener_parse(r.out);
        ck_assert_int_eq(jint(root, "nodes"), np / per);
        ck_assert_int_eq(jint(root, "devices_per_node"), per);
        ck_assert_int_eq(jint(root, "inter_node_rows"), (int64_t)plain_inter_node_rows(&p, per));
        ck_assert_int_eq(jint(root, "inter_node_transfers"), cross);
        json_object_put(root);
        result_free(&r);

        /* The same loads without the option: the flat plan, no node keys. */
        args[5] = words[0];
        for (uint32_t e = 1; e < n; e++)
            args[5 + e] = words[e];
        args[5 + n] = NULL;
        pp.devices_per_node = 0;
        ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), 0);
        r = run_plan_json(NULL, args, &p);
        ck_assert_ptr_null(strstr(r.out, "nodes"));
        result_free(&r);
        llep__plan_fini(&p);
    }
}
END_TEST

START_TEST(report_is_readable)
{
    const char *args[] = { "-d", "2", "--min-tokens", "1", "60", "20", "10", "10", NULL };
    result r = run_plan(NULL, args);

    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "mode       llep"));
    ck_assert_ptr_nonnull(strstr(r.out, "capacity   50 token-slots"));
    ck_assert_ptr_nonnull(strstr(r.out, "LLEP load"));
    ck_assert_ptr_nonnull(strstr(r.out, "expert     0  device 0 -> 1"));
    ck_assert_str_eq(r.err, "");
    result_free(&r);

    const char *scaled[] = { "-d", "4", "-m", "30", "--scale-min-tokens", "100", "0", "0", "0",
                             NULL };
    r = run_plan(NULL, scaled);
    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "min-tokens 6 used"));
    ck_assert_ptr_nonnull(strstr(r.out, "expert     0  device 0 -> 1 2 3"));
    result_free(&r);

    /* Two nodes of two (test-plan.c, hierarchical_prefers_own_node and node_traffic_by_hand):
     * e0's spill goes to device 1 on its own node, then device 2; 25 slots and one transfer
     * cross nodes. */
    const char *nodes[] = { "-d", "4", "-a", "1.5", "-m", "1", "--devices-per-node", "2", "100",
                            "10", "0", "0", NULL };
    r = run_plan(NULL, nodes);
    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "expert     0  device 0 -> 1 2"));
    ck_assert_ptr_nonnull(strstr(r.out, "nodes: 2 of 2 devices each"));
    ck_assert_ptr_nonnull(strstr(r.out, "inter-node rows: 25 of 110 token-slots"));
    ck_assert_ptr_nonnull(strstr(r.out, "inter-node transfers: 1 of 2"));
    ck_assert_ptr_nonnull(strstr(r.out, "spread evenly over the home nodes"));
    result_free(&r);

    const char *balanced[] = { "-d", "2", "10", "10", "10", "10", NULL };
    r = run_plan(NULL, balanced);
    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "mode       ep (imbalance < lambda)"));
    ck_assert_ptr_nonnull(strstr(r.out, "weight transfers: 0"));
    result_free(&r);
}
END_TEST

/* The cost planner (plan-cost.h) under the nominal H200 model: at decode (one hot expert with
 * 30 rows) copying weights costs more than it saves and the plan is EP, where LLA spills; a
 * hot expert of 60000 rows is split; two processes print the same plan. */
START_TEST(cost_planner_report)
{
    const char *decode[] = { "-d", "4", "--planner", "cost", "30", "1", "1", "1", "1", "1", "0",
                             "1", NULL };
    result r = run_plan(NULL, decode);
    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "mode       ep (imbalance >= lambda, but EP is fastest"));
    ck_assert_ptr_nonnull(strstr(r.out, "cost planner: picked EP"));
    ck_assert_ptr_nonnull(strstr(r.out, "under nominal:h200, D 2880, H 2880"));
    result_free(&r);

    const char *big_json[] = { "--json", "-d", "4", "--planner", "cost", "--cost",
                               "nominal:h200", "60000", "100", "100", "100", "100", "100", "100",
                               "100", NULL };
    result a = run_plan(NULL, big_json), b = run_plan(NULL, big_json);
    ck_assert_int_eq(a.status, 0);
    ck_assert_int_eq(b.status, 0);
    ck_assert_str_eq(a.out, b.out);
    ck_assert_ptr_nonnull(strstr(a.out, "\"mode\": \"llep\""));
    result_free(&a);
    result_free(&b);

    const char *big_text[] = { "-d", "4", "--planner", "cost", "60000", "100", "100", "100",
                               "100", "100", "100", "100", NULL };
    r = run_plan(NULL, big_text);
    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "cost planner: picked the refinement"));
    ck_assert_ptr_nonnull(strstr(r.out, "expert     0  device 0 -> 1 2 3"));
    result_free(&r);
}
END_TEST

/* ---- --cost FILE: a calibration file ------------------------------------------------------ */

/* A calibration of the nominal model name (as a GPU run's would be, with these figures). */
static llep_calibration nominal_calibration(const char *name) {
    llep_calibration cal;

    memset(&cal, 0, sizeof(cal));
    ck_assert_int_eq(llep__cost_nominal(name, &cal.model), 0);
    cal.devices = 2;
    cal.hidden = cal.inter = 2880;
    cal.dtype = LLEP_DTYPE_BF16;
    cal.elapsed_ms = 12.5;
    cal.time = 1796000000;
    return cal;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");

    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(fputs(text, f), 0);
    ck_assert_int_eq(fclose(f), 0);
}

/* The line "cost planner: picked ..., modelled makespan ... (EP ..., LLA ...)" of out. */
static char *makespan_line(const char *out) {
    const char *p = strstr(out, "cost planner: picked");

    ck_assert_msg(p != NULL, "no cost line in '%s'", out);
    return strndup(p, strcspn(p, "\n"));
}

/* Plans the loads with --cost MODEL and with --cost FILE; the two must give the same plan
 * (JSON) and the same modelled makespans (the report). */
static void same_as_nominal(const char *model, const char *file) {
    const char *loads[] = { "60000", "100", "100", "100", "100", "100", "100", "100", "30",
                            "1", "1", "1", "1", "1", "0", "1" };
    const char *args[32] = { "-d", "4", "--planner", "cost", "--cost", NULL };
    int n = 5;

    for (int json = 0; json < 2; json++) {
        args[n = 5] = model;
        n++;
        if (json)
            args[n++] = "--json";
        for (size_t i = 0; i < sizeof(loads) / sizeof(loads[0]); i++)
            args[n++] = loads[i];
        args[n] = NULL;
        result a = run_plan(NULL, args);
        args[5] = file;
        result b = run_plan(NULL, args);
        ck_assert_msg(a.status == 0 && b.status == 0, "exit %d, %d: %s", a.status, b.status,
                      b.err);
        if (json) {
            ck_assert_str_eq(a.out, b.out);
        } else {
            char *la = makespan_line(a.out), *lb = makespan_line(b.out);
            ck_assert_str_eq(la, lb);
            ck_assert_ptr_nonnull(strstr(b.out, "calibration of"));
            free(la);
            free(lb);
        }
        result_free(&a);
        result_free(&b);
    }
}

/* llepd's file of the nominal H200 model plans as --cost nominal:h200 does, and the printed
 * form (`llep-bench --calibrate --json > f`, and `llepctl tune --json`'s wrapping of it) of
 * the nominal CPU model as nominal:cpu. */
START_TEST(cost_file_plans)
{
    char dir[256], stored[300], printed[300];
    llep_test_tmpdir(dir, sizeof(dir), "test-llep-plan");
    snprintf(stored, sizeof(stored), "%s/calibration.json", dir);
    snprintf(printed, sizeof(printed), "%s/calibrate.json", dir);

    llep_calibration cal = nominal_calibration("h200");
    char *text = llep__calib_format(&cal);
    ck_assert_ptr_nonnull(text);
    write_text(stored, text);
    free(text);
    same_as_nominal("nominal:h200", stored);

    cal = nominal_calibration("cpu");
    FILE *f = fopen(printed, "w");
    ck_assert_ptr_nonnull(f);
    llep__cost_table_json(f, &cal);
    fputc('\n', f);
    ck_assert_int_eq(fclose(f), 0);
    same_as_nominal("nominal:cpu", printed);

    /* `llepctl tune --json > f`: the printed object under "calibration". */
    f = fopen(printed, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"path\": \"/var/lib/llep/calibration.json\", \"stored\": true, "
          "\"calibration\": ", f);
    llep__cost_table_json(f, &cal);
    fputs("}\n", f);
    ck_assert_int_eq(fclose(f), 0);
    same_as_nominal("nominal:cpu", printed);
    llep_test_rm_rf(dir);
}
END_TEST

/* tests/gpu/probe-calib.py turns the figures the PyTorch probe measured on an H200
 * (docs/data/h200-probe-2026-12-04.json) into a calibration llep-plan reads: at every measured
 * size the model's chunk time is within 10 % of the measured one, or of the largest measured
 * at fewer rows where the measurement dips (a chunk's time never falls as rows grow); and it
 * plans. */
START_TEST(probe_calibration)
{
    static const struct { uint32_t rows; double ms; } measured[] = {
        { 1, 0.117 }, { 16, 0.104 }, { 64, 0.102 }, { 256, 0.103 }, { 1024, 0.109 },
        { 2048, 0.186 }, { 4096, 0.345 }, { 8192, 0.626 }, { 32768, 2.638 },
    };
    const char *script = getenv("LLEP_PROBE_CALIB"), *data = getenv("LLEP_PROBE_DATA");
    char dir[256], path[300], cmd[1200], err[256];
    llep_calibration cal;
    llep_cost_layer layer;

    ck_assert_msg(script && data, "LLEP_PROBE_CALIB and LLEP_PROBE_DATA must be set");
    llep_test_tmpdir(dir, sizeof(dir), "test-llep-plan");
    snprintf(path, sizeof(path), "%s/h200-probe.json", dir);
    snprintf(cmd, sizeof(cmd), "python3 '%s' '%s' > '%s'", script, data, path);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_msg(llep__calib_load_any(path, &cal, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(cal.model.backend, "cuda");
    ck_assert_double_eq_tol(cal.model.chunk_fixed_ns, 6000, 1e-9);
    llep__cost_layer(&layer, 2880, 2880, 2, false);
    double prev = 0, top = 0;
    for (size_t i = 0; i < sizeof(measured) / sizeof(measured[0]); i++) {
        double ns = llep__cost_chunk_ns(&cal.model, &layer, measured[i].rows);
        double got = measured[i].ms * 1e6;
        top = fmax(top, got);
        ck_assert_msg(ns >= 0.9 * got && ns <= 1.1 * top, "%u rows: %.0f ns, measured %.0f "
                      "(largest so far %.0f)", measured[i].rows, ns, got, top);
        ck_assert_msg(ns >= prev, "%u rows: %.0f ns below %.0f", measured[i].rows, ns, prev);
        prev = ns;
    }
    const char *args[] = { "-d", "8", "--planner", "cost", "--cost", path, "400", "10", "10",
                           "10", "10", "10", "10", "10", NULL };
    result r = run_plan(NULL, args);
    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "cost planner: picked"));
    result_free(&r);
    llep_test_rm_rf(dir);
}
END_TEST

/* Bad calibration files: exit 2, the message names the file and what is wrong in it. */
START_TEST(cost_file_bad)
{
    static const struct {
        const char *name, *text, *says;
    } cases[] = {
        { "notjson.json", "{\"version\": 1,", "is not JSON" },
        { "other.json", "{\"a\": 1}", "not a calibration" },
        { "wrapped.json", "{\"stored\": true, \"calibration\": {\"a\": 1}}",
          "not a calibration" },
        { "array.json", "[1, 2]", "not a JSON object" },
        { "version.json", "{\"version\": 2}", "version 2" },
        { "norate.json", NULL, "'rate_flops_per_ns' is missing" },
        { "negative.json", NULL, "'chunk_fixed_ns' must be a finite number >= 0" },
    };
    char dir[256], path[400];
    llep_test_tmpdir(dir, sizeof(dir), "test-llep-plan");

    llep_calibration cal = nominal_calibration("h200");
    char *good = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&good, &len);
    ck_assert_ptr_nonnull(mem);
    llep__cost_table_json(mem, &cal);
    ck_assert_int_eq(fclose(mem), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *text = strdup(cases[i].text ? cases[i].text : good);
        char *p;
        /* The printed form, spoilt: a point without its rate, a negative fixed cost. */
        if (!cases[i].text && strstr(cases[i].name, "norate")) {
            p = strstr(text, "\"rate_flops_per_ns\"");
            ck_assert_ptr_nonnull(p);
            memcpy(p + 1, "rite", 4);
        } else if (!cases[i].text) {
            p = strstr(text, "\"chunk_fixed_ns\": ");
            ck_assert_ptr_nonnull(p);
            memcpy(p + strlen("\"chunk_fixed_ns\": "), "-1,", 3);
            /* the rest of the old number: blanks */
            for (p += strlen("\"chunk_fixed_ns\": ") + 3; *p != ','; p++)
                *p = ' ';
            *p = ' ';
        }
        snprintf(path, sizeof(path), "%s/%s", dir, cases[i].name);
        write_text(path, text);
        free(text);
        const char *args[] = { "-d", "1", "--planner", "cost", "--cost", path, "1", NULL };
        result r = run_plan(NULL, args);
        ck_assert_msg(r.status == 2, "%s: exit %d", cases[i].name, r.status);
        ck_assert_msg(strstr(r.err, path) && strstr(r.err, cases[i].says),
                      "%s: stderr '%s' lacks the path or '%s'", cases[i].name, r.err,
                      cases[i].says);
        ck_assert_str_eq(r.out, "");
        result_free(&r);
    }
    free(good);
    llep_test_rm_rf(dir);
}
END_TEST

/* ---- bad input: exit 2 and a message naming the problem -------------------------------- */

typedef struct bad_case {
    const char *stdin_text;
    const char *args[8];
    const char *says;
} bad_case;

static const bad_case bad_cases[] = {
    { NULL, { "-d", "2", "1", "abc", NULL }, "'abc' is not a non-negative integer" },
    { NULL, { "-d", "2", "1", "2.5", NULL }, "'2.5' is not a non-negative integer" },
    { NULL, { "-d", "2", "1", "-3", NULL }, "'-3' is negative" },
    { NULL, { "-d", "2", "-3", "1", NULL }, "'-3' is negative" },
    { NULL, { "-d", "3", "1", "2", NULL }, "cannot be split evenly over 3 devices" },
    { NULL, { "-d", "0", "1", "2", NULL }, "--devices must be between 1" },
    { NULL, { "-d", "x", "1", NULL }, "--devices: 'x'" },
    { NULL, { "1", "2", NULL }, "--devices is required" },
    { NULL, { "-d", "1", "--alpha", "0", "1", NULL }, "--alpha must be > 0" },
    { NULL, { "-d", "1", "--alpha", "-1", "1", NULL }, "--alpha must be > 0" },
    { NULL, { "-d", "1", "--alpha", "nan", "1", NULL }, "--alpha: 'nan' is not a finite" },
    { NULL, { "-d", "1", "--lambda", "0", "1", NULL }, "--lambda must be > 0" },
    { NULL, { "-d", "1", "--min-tokens", "-5", "1", NULL }, "--min-tokens: '-5'" },
    { NULL, { "-d", "1", "--policy", "fast", "1", NULL }, "'fast' is not one of" },
    { NULL, { "-d", "1", "--planner", "fast", "1", NULL }, "--planner: 'fast' is not lla or cost" },
    { NULL, { "-d", "1", "--cost", "nominal:tpu", "1", NULL }, "'nominal:tpu' is not nominal" },
    { NULL, { "-d", "1", "--cost", "/nonexistent/model.json", "1", NULL },
      "--cost: /nonexistent/model.json: No such file" },
    { NULL, { "-d", "1", "--hidden", "0", "1", NULL }, "--hidden: '0' is not a size" },
    { NULL, { "-d", "4", "--devices-per-node", "3", "1", NULL },
      "--devices-per-node 3 does not divide --devices 4" },
    { NULL, { "-d", "4", "--devices-per-node", "8", "1", NULL },
      "--devices-per-node 8 does not divide --devices 4" },
    { NULL, { "-d", "4", "--devices-per-node", "0", "1", NULL },
      "--devices-per-node must be at least 1" },
    { NULL, { "-d", "4", "--devices-per-node", "two", "1", NULL },
      "--devices-per-node: 'two' is not a device count" },
    { NULL, { "-d", "2", "18446744073709551615", "1", NULL }, "add up to more than 2^64" },
    { NULL, { "-d", "1", "18446744073709551616", NULL }, "does not fit in 64 bits" },
    { NULL, { "-d", "1", NULL }, "no loads given" },
    { NULL, { "-d", "1", "--frobnicate", "1", NULL }, "unknown option '--frobnicate'" },
    { NULL, { "-d", NULL }, "needs a value" },
    { NULL, { "-d", "1", "-f", "/nonexistent/loads", NULL }, "No such file" },
    { NULL, { "-d", "1", "-f", "-", "7", NULL }, "not both" },
    { "1 2\n3 x4\n", { "-d", "1", "-f", "-", NULL }, "line 2: load 'x4'" },
    { "", { "-d", "1", "-f", "-", NULL }, "no loads given" },
};

START_TEST(bad_input_exits_2)
{
    const bad_case *c = &bad_cases[_i];
    result r = run_plan(c->stdin_text, c->args);

    ck_assert_msg(r.status == 2, "case %d: exit %d, stderr: %s", _i, r.status, r.err);
    ck_assert_msg(strstr(r.err, c->says) != NULL, "case %d: stderr '%s' lacks '%s'", _i, r.err,
                  c->says);
    ck_assert_str_eq(r.out, "");
    result_free(&r);
}
END_TEST

/* More experts than the planner supports. */
START_TEST(too_many_experts_exits_2)
{
    size_t n = LLEP_MAX_EXPERTS + 1;
    char *text = malloc(2 * n + 1);

    for (size_t i = 0; i < n; i++)
        memcpy(text + 2 * i, "1 ", 2);
    text[2 * n] = '\0';
    const char *args[] = { "-d", "1", "-f", "-", NULL };
    result r = run_plan(text, args);
    ck_assert_int_eq(r.status, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "too many experts"));
    result_free(&r);
    free(text);
}
END_TEST

/* The loads parser on its own: line numbers and limits. */
START_TEST(loads_parser)
{
    llep_loads l = { .max = 3 };
    char err[128];

    ck_assert_int_eq(llep__loads_parse(&l, "1\n 2\t\r\n3", 8, err, sizeof(err)), 0);
    ck_assert_uint_eq(l.n, 3);
    ck_assert_uint_eq(l.v[2], 3);
    ck_assert_int_eq(llep__loads_parse(&l, "4", 1, err, sizeof(err)), -E2BIG);
    llep__loads_free(&l);
    ck_assert_int_eq(llep__loads_parse(&l, "1\n\n2 3\0", 7, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "line 3"));
    llep__loads_free(&l);
    ck_assert_int_eq(llep__loads_parse(&l, "1 +2", 4, err, sizeof(err)), -EINVAL);
    llep__loads_free(&l);
}
END_TEST

static Suite *tool_suite(void) {
    Suite *s = suite_create("llep-plan");
    TCase *tc = tcase_create("cli");

    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, json_matches_library, 0, 2);
    tcase_add_test(tc, json_with_nodes);
    tcase_add_test(tc, report_is_readable);
    tcase_add_test(tc, cost_planner_report);
    tcase_add_test(tc, cost_file_plans);
    tcase_add_test(tc, cost_file_bad);
    tcase_add_test(tc, probe_calibration);
    tcase_add_loop_test(tc, bad_input_exits_2, 0, (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
    tcase_add_test(tc, too_many_experts_exits_2);
    tcase_add_test(tc, loads_parser);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(tool_suite(), CK_NORMAL);
}
