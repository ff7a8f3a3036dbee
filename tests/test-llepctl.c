/* llepctl end to end: usage errors without a daemon, then every verb, as text and as JSON,
 * against a private llepd ($LLEPD) that a libllep-client process has given a layer and some
 * skewed steps. `plan --json` is compared byte for byte with llep-plan ($LLEP_PLAN) run on the
 * loads of the same step. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fixtures.h"
#include "json-fixtures.h"
#include "llep/client.h"
#include "test-nodes.h"

#define OUT_MAX (256u << 10)

static char llepctl[PATH_MAX];
static char tmpdir[32];
static char sock_path[64];
static pid_t llepd_pid = -1;

/* Output of one command. */
typedef struct run {
    int status;               /* exit status, or -1 when it did not exit normally */
    char out[OUT_MAX], err[8192];
} run;

/* Runs argv[0] with the arguments, collecting stdout and stderr. */
static void run_argv(run *r, char *const *argv) {
    llep_test_output o = llep_test_run((const char *const *)argv, NULL);

    r->status = o.status;
    snprintf(r->out, sizeof(r->out), "%s", o.out);
    snprintf(r->err, sizeof(r->err), "%s", o.err);
    llep_test_output_free(&o);
}

/* llepctl with the given arguments (NULL-terminated); --socket goes first when there is a
 * daemon. */
static void ctl(run *r, const char *arg, ...) {
    char *argv[16];
    int n = 0;
    va_list ap;

    argv[n++] = llepctl;
    if (llepd_pid > 0) {
        argv[n++] = "--socket";
        argv[n++] = sock_path;
    }
    va_start(ap, arg);
    for (const char *a = arg; a && n < 15; a = va_arg(ap, const char *))
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    run_argv(r, argv);
}

static json_object *parse_json(const char *text) {
    json_object *o = json_tokener_parse(text);

    ck_assert_msg(o != NULL, "not JSON: %s", text);
    ck_assert_msg(json_object_is_type(o, json_type_object), "not a JSON object: %s", text);
    return o;
}

static int64_t jint(json_object *o, const char *key) {
    json_object *v = llep_test_jget(o, key);

    ck_assert_msg(json_object_is_type(v, json_type_int), "'%s' is not an integer", key);
    return json_object_get_int64(v);
}

static void setup(void) {
    llep_test_llepctl(llepctl, sizeof(llepctl));
    llep_test_tmpdir(tmpdir, sizeof(tmpdir), "test-llepctl");
    snprintf(sock_path, sizeof(sock_path), "%s/llepd.sock", tmpdir);
}

static void teardown(void) {
    llep_test_stop(&llepd_pid, 10000);
    llep_test_rm_rf(tmpdir);
}

/* ---------------------------------------------------------------------------------------- */
/* A daemon with one layer that has run some skewed steps. */

#define N 8
#define K 2
#define D 8
#define H 8
#define TOKENS 64
#define STEPS 5

static llep_client *client;
static llep_layer *layer;

/* The paper's planner: these tests check that llepctl shows the plans and transfers llepd
 * made, and that they equal llep-plan's for the same loads; with planner cost (the default)
 * the calibrated model would rightly keep this tiny layer's experts at home. */
static void start_llepd(void) {
    static const char *const args[] = { "--planner", "lla", NULL };
    llep_test_llepd o = { .sock = sock_path, .devices = "4", .args = args };
    int r;

    llepd_pid = llep_test_llepd_start(&o);
    r = llep_connect(sock_path, &client);
    ck_assert_msg(r == 0, "llep_connect: %s: %s", llep_strerror(r), llep_client_error(NULL));
}

/* Layer "moe", policy LLEP, min_tokens 1 so small batches spill; 70 % of the slots go to
 * expert 0, so device 0 is overloaded and the plan has transfers. */
static void setup_daemon(void) {
    static float w[N * D * H], x[TOKENS * D], y[TOKENS * D], gw[TOKENS * K];
    static int32_t idx[TOKENS * K];
    llep_layer_desc d = {
        .num_experts = N, .top_k = K, .hidden = D, .inter = H, .policy = LLEP_POLICY_LLEP,
        .min_tokens = 1, .w_gate = w, .w_up = w, .w_down = w,
    };
    int r;

    setup();
    start_llepd();
    for (int i = 0; i < N * D * H; i++)
        w[i] = 0.01f * (float)(i % 13);
    for (int i = 0; i < TOKENS * D; i++)
        x[i] = 0.1f * (float)(i % 5);
    for (int i = 0; i < TOKENS * K; i++) {
        idx[i] = i % 10 < 7 ? 0 : 1 + i % 7;
        if (i % K == 1 && idx[i] == idx[i - 1])
            idx[i] = 5;
        gw[i] = 0.5f;
    }
    r = llep_layer_create(client, "moe", &d, &layer);
    ck_assert_msg(r == 0, "create: %s", llep_client_error(client));
    for (int s = 0; s < STEPS; s++) {
        r = llep_forward(layer, TOKENS, x, idx, gw, y);
        ck_assert_msg(r == 0, "forward: %s", llep_client_error(client));
    }
}

static void teardown_daemon(void) {
    llep_layer_release(layer);
    llep_disconnect(client);
    teardown();
}

/* ---------------------------------------------------------------------------------------- */
/* Without a daemon. */

START_TEST(test_usage_errors) {
    static const char *const bad[][4] = {
        { NULL }, { "nosuchverb", NULL }, { "experts", NULL }, { "plan", NULL },
        { "status", "extra", NULL }, { "set", NULL }, { "set", "alpha", NULL },
        { "set", "=1", NULL }, { "set", "alpha=", NULL }, { "set", "a", "b", "c" },
        { "--bogus", "status", NULL }, { "--socket", NULL },
    };
    run *r = malloc(sizeof(*r));

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ctl(r, bad[i][0], bad[i][1], bad[i][2], bad[i][3], NULL);
        ck_assert_msg(r->status == 2, "case %zu exits %d: %s", i, r->status, r->err);
        ck_assert_msg(strstr(r->err, "llepctl") && strstr(r->err, "--help"),
                      "case %zu says: %s", i, r->err);
        ck_assert_str_eq(r->out, "");
    }
    free(r);
}
END_TEST

START_TEST(test_help_version) {
    run *r = malloc(sizeof(*r));
    static const char *const verbs[] = { "status", "devices", "layers", "experts", "plan",
                                         "stats", "set", "drain" };

    ctl(r, "--help", NULL);
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "Usage: llepctl"));
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        ck_assert_msg(strstr(r->out, verbs[i]), "--help does not list %s", verbs[i]);
    ctl(r, "--version", NULL);
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "llepctl 0."));
    free(r);
}
END_TEST

START_TEST(test_no_daemon) {
    run *r = malloc(sizeof(*r));

    ctl(r, "--socket", "/nonexistent/llepd.sock", "status", NULL);
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, "/nonexistent/llepd.sock"));
    ck_assert_str_eq(r->out, "");
    free(r);
}
END_TEST

/* ---------------------------------------------------------------------------------------- */
/* Every verb against llepd. */

START_TEST(test_status) {
    run *r = malloc(sizeof(*r));
    json_object *o;

    ctl(r, "status", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "llepd 0."));
    ck_assert_ptr_nonnull(strstr(r->out, "backend   cpu"));
    ck_assert_ptr_nonnull(strstr(r->out, "devices   4"));
    ctl(r, "--json", "status", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    o = parse_json(r->out);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(o, "backend")), "cpu");
    ck_assert_int_eq(jint(o, "devices"), 4);
    ck_assert_int_eq(jint(o, "layers"), 1);
    ck_assert_int_ge(jint(o, "clients"), 1);
    ck_assert_int_eq(jint(o, "protocol_version"), 1);
    ck_assert_int_eq(jint(o, "pid"), llepd_pid);
    ck_assert(!json_object_get_boolean(llep_test_jget(o, "draining")));
    json_object_put(o);
    free(r);
}
END_TEST

START_TEST(test_devices) {
    run *r = malloc(sizeof(*r));
    json_object *o, *devs;

    ctl(r, "devices", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "DEVICE"));
    ck_assert_ptr_nonnull(strstr(r->out, "cpu3"));
    ctl(r, "devices", "--json", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    o = parse_json(r->out);
    devs = llep_test_jget(o, "devices");
    ck_assert_int_eq(json_object_array_length(devs), 4);
    for (size_t i = 0; i < 4; i++) {
        json_object *d = json_object_array_get_idx(devs, i);

        ck_assert_int_eq(jint(d, "index"), (int64_t)i);
        ck_assert_int_ge(jint(d, "memory_peak"), jint(d, "memory_used"));
        ck_assert(json_object_is_type(llep_test_jget(d, "foreign_experts"), json_type_array));
    }
    json_object_put(o);
    free(r);
}
END_TEST

START_TEST(test_layers) {
    run *r = malloc(sizeof(*r));
    json_object *o, *ls, *l;

    ctl(r, "layers", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "moe"));
    ck_assert_ptr_nonnull(strstr(r->out, "llep"));
    ctl(r, "--json", "layers", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    o = parse_json(r->out);
    ls = llep_test_jget(o, "layers");
    ck_assert_int_eq(json_object_array_length(ls), 1);
    l = json_object_array_get_idx(ls, 0);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(l, "name")), "moe");
    ck_assert_int_eq(jint(l, "num_experts"), N);
    ck_assert_int_eq(jint(l, "top_k"), K);
    ck_assert_int_eq(jint(l, "hidden"), D);
    ck_assert_int_eq(jint(l, "inter"), H);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(l, "policy")), "llep");
    ck_assert_str_eq(json_object_get_string(llep_test_jget(l, "dtype")), "f32");
    ck_assert_int_eq(jint(l, "refs"), 1);
    ck_assert_int_eq(jint(l, "steps"), STEPS);
    ck_assert_int_eq(jint(l, "min_tokens"), 1);
    json_object_put(o);
    free(r);
}
END_TEST

START_TEST(test_experts) {
    run *r = malloc(sizeof(*r));
    json_object *o, *loads, *last;
    int64_t sum = 0, last_sum = 0;

    ctl(r, "experts", "moe", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "#"));
    ck_assert_ptr_nonnull(strstr(r->out, "EXPERT"));
    ctl(r, "--json", "experts", "moe", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    o = parse_json(r->out);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(o, "layer")), "moe");
    loads = llep_test_jget(o, "loads");
    last = llep_test_jget(o, "last_loads");
    ck_assert_int_eq(json_object_array_length(loads), N);
    ck_assert_int_eq(json_object_array_length(last), N);
    for (size_t i = 0; i < N; i++) {
        sum += json_object_get_int64(json_object_array_get_idx(loads, i));
        last_sum += json_object_get_int64(json_object_array_get_idx(last, i));
    }
    ck_assert_int_eq(last_sum, TOKENS * K);
    ck_assert_int_eq(sum, jint(o, "steps") * TOKENS * K);
    json_object_put(o);

    ctl(r, "experts", "nosuch", NULL);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "nosuch"), "%s", r->err);
    free(r);
}
END_TEST

/* `plan --json` is DESIGN.md section 6, and equals llep-plan's plan for the same loads. */
START_TEST(test_plan) {
    static const char *const keys[] = { "mode", "imbalance", "capacity", "devices",
                                        "device_loads", "assignments", "transfers" };
    char *argv[32], loads[N][24];
    run *r = malloc(sizeof(*r)), *ref = malloc(sizeof(*ref));
    json_object *o, *ex, *last;
    const char *llep_plan = getenv("LLEP_PLAN");
    int n = 0, nkeys = 0;

    ctl(r, "plan", "moe", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "mode       llep"));
    ck_assert_ptr_nonnull(strstr(r->out, "weight transfers"));

    ctl(r, "plan", "moe", "--json", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    o = parse_json(r->out);
    json_object_object_foreach(o, key, val) {
        (void)val;
        nkeys++;
        ck_assert_msg(strcmp(key, keys[nkeys - 1]) == 0, "key %d is '%s'", nkeys, key);
    }
    ck_assert_int_eq(nkeys, 7);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(o, "mode")), "llep");
    ck_assert_int_eq(jint(o, "devices"), 4);
    ck_assert_int_gt(json_object_array_length(llep_test_jget(o, "transfers")), 0);
    json_object_put(o);

    /* The same loads through llep-plan: the same bytes. */
    if (llep_plan && llep_plan[0]) {
        ctl(ref, "--json", "experts", "moe", NULL);
        ck_assert_msg(ref->status == 0, "%s", ref->err);
        ex = parse_json(ref->out);
        last = llep_test_jget(ex, "last_loads");
        argv[n++] = (char *)llep_plan;
        argv[n++] = "--json";
        argv[n++] = "--devices=4";
        argv[n++] = "--policy=llep";
        argv[n++] = "--min-tokens=1";
        for (size_t i = 0; i < N; i++) {
            snprintf(loads[i], sizeof(loads[i]), "%" PRId64,
                     json_object_get_int64(json_object_array_get_idx(last, i)));
            argv[n++] = loads[i];
        }
        argv[n] = NULL;
        json_object_put(ex);
        run_argv(ref, argv);
        ck_assert_msg(ref->status == 0, "llep-plan: %s", ref->err);
        ck_assert_str_eq(r->out, ref->out);
    }

    ctl(r, "plan", "nosuch", NULL);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "nosuch"), "%s", r->err);
    free(r);
    free(ref);
}
END_TEST

START_TEST(test_stats) {
    run *r = malloc(sizeof(*r));
    json_object *o, *layers, *l;

    ctl(r, "stats", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "p50"));
    ck_assert_ptr_nonnull(strstr(r->out, "p99"));
    ck_assert_ptr_nonnull(strstr(r->out, "peak memory"));
    ck_assert_ptr_nonnull(strstr(r->out, "moe"));
    ctl(r, "--json", "stats", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    o = parse_json(r->out);
    ck_assert_int_eq(jint(o, "steps"), STEPS);
    ck_assert_int_eq(jint(o, "ep_steps") + jint(o, "llep_steps"), STEPS);
    ck_assert_int_eq(jint(o, "llep_steps"), STEPS);
    ck_assert_int_le(jint(o, "latency_p50_us"), jint(o, "latency_p99_us"));
    ck_assert_int_eq(json_object_array_length(llep_test_jget(o, "device_peak_memory")), 4);
    ck_assert_int_gt(jint(o, "weight_bytes_moved"), 0);
    layers = llep_test_jget(o, "layers");
    ck_assert_int_eq(json_object_array_length(layers), 1);
    l = json_object_array_get_idx(layers, 0);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(l, "name")), "moe");
    ck_assert_int_eq(jint(l, "tokens"), STEPS * TOKENS);
    json_object_put(o);
    free(r);
}
END_TEST

START_TEST(test_set) {
    run *r = malloc(sizeof(*r));
    json_object *o;

    ctl(r, "set", "moe", "lambda=2.5", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "lambda of layer moe is now 2.5"));
    ctl(r, "--json", "set", "alpha=1.25", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    o = parse_json(r->out);
    ck_assert(json_object_is_type(llep_test_jget(o, "layer"), json_type_null));
    ck_assert_str_eq(json_object_get_string(llep_test_jget(o, "key")), "alpha");
    ck_assert_str_eq(json_object_get_string(llep_test_jget(o, "value")), "1.25");
    json_object_put(o);
    ctl(r, "--json", "set", "moe", "policy=ep", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    o = parse_json(r->out);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(o, "layer")), "moe");
    ck_assert_str_eq(json_object_get_string(llep_test_jget(o, "value")), "ep");
    json_object_put(o);
    ctl(r, "--json", "layers", NULL);
    ck_assert_ptr_nonnull(strstr(r->out, "\"policy\": \"ep\""));

    /* The daemon judges values and keys: exit 1 with its message. */
    ctl(r, "set", "lambda=abc", NULL);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "abc"), "%s", r->err);
    ctl(r, "set", "nosuchkey=1", NULL);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "nosuchkey"), "%s", r->err);
    ctl(r, "set", "nosuch", "alpha=1", NULL);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "nosuch"), "%s", r->err);
    free(r);
}
END_TEST

/* Drain: the reply comes, then the daemon says it is draining (or has gone). */
START_TEST(test_drain) {
    run *r = malloc(sizeof(*r));
    json_object *o;

    ctl(r, "--json", "drain", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    o = parse_json(r->out);
    ck_assert_int_ge(jint(o, "steps_finished"), 0);
    ck_assert_int_ge(jint(o, "submissions_refused"), 0);
    json_object_put(o);
    ctl(r, "--json", "status", NULL);
    if (r->status == 0) {
        o = parse_json(r->out);
        ck_assert(json_object_get_boolean(llep_test_jget(o, "draining")));
        json_object_put(o);
    } else
        ck_assert_int_eq(r->status, 1);
    free(r);
}
END_TEST

START_TEST(test_drain_text) {
    run *r = malloc(sizeof(*r));

    ctl(r, "drain", NULL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "drained:"));
    free(r);
}
END_TEST

static Suite *llepctl_suite(void) {
    Suite *s = suite_create("llepctl");
    TCase *tc = tcase_create("usage");
    TCase *td = tcase_create("llepd");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_usage_errors);
    tcase_add_test(tc, test_help_version);
    tcase_add_test(tc, test_no_daemon);
    suite_add_tcase(s, tc);

    if (getenv("LLEPD") && getenv("LLEPD")[0]) {
        tcase_add_checked_fixture(td, setup_daemon, teardown_daemon);
        tcase_set_timeout(td, 60);
        tcase_add_test(td, test_status);
        tcase_add_test(td, test_devices);
        tcase_add_test(td, test_layers);
        tcase_add_test(td, test_experts);
        tcase_add_test(td, test_plan);
        tcase_add_test(td, test_stats);
        tcase_add_test(td, test_set);
        tcase_add_test(td, test_drain);
        tcase_add_test(td, test_drain_text);
        suite_add_tcase(s, td);
    } else {
        fprintf(stderr, "LLEPD is not set: skipping the verbs against a running llepd\n");
    }
    return s;
}

int main(void) {
    return llep_test_run_suite(llepctl_suite(), CK_ENV);
}
