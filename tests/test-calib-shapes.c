/* Device cost models at the layers' own shapes (issue 15 item 1; devices.h's shape table,
 * daemon/server/calib-shapes.h).
 *
 * In-process: the devices' shape table finds a shape's model by its key alone (hidden, inter
 * and dtype), falls back to the reference model for any other shape (and says which it gave),
 * holds at most LLEP_DEVICES_COST_SHAPES shapes (one more is refused, replacing or removing
 * one is not), and has nothing without either model.
 *
 * Against llepd on 2 CPU devices with its own state directory: a client layer of a shape other
 * than the reference gets a calibration of its shape, stored as calibration-DxH-f32.json
 * (measured at that shape) and listed by `llepctl tune --show --json` as measured and stored;
 * a restarted llepd lists nothing until a layer of that shape comes, then loads it (log and
 * "source": "loaded") and measures nothing; `llepctl tune` measures it again; forwards are exact against float64 before and
 * after the model switches. With calibrate-shapes = no, no such file appears, tune lists no
 * shape and nothing is measured at a layer's creation. */
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "calib-file.h"
#include "client-fixtures.h"
#include "devices.h"
#include "engine-fixtures.h"
#include "fixtures.h"
#include "json-fixtures.h"
#include "llep/client.h"
#include "test-nodes.h"

/* ---- the devices' shape table ------------------------------------------------------------ */

/* A valid model told apart from others by its fixed cost. */
static llep_cost_model model(double fixed_ns) {
    llep_cost_model m;

    ck_assert_int_eq(llep__cost_nominal("cpu", &m), 0);
    m.chunk_fixed_ns = fixed_ns;
    return m;
}

/* What cost_for gives for the shape: its fixed cost, or -1 when nothing; *shape as it says. */
static double lookup(llep_devices *dv, uint32_t d, uint32_t h, enum llep_dtype t, bool *shape) {
    llep_cost_model got;

    if (!llep__devices_cost_for(dv, d, h, t, &got, shape))
        return -1;
    return got.chunk_fixed_ns;
}

START_TEST(test_shape_table) {
    llep_devices_config dc = { .num_devices = 1, .threads = 1 };
    llep_devices *dv = NULL;
    char err[256] = "";
    bool shape = true;

    ck_assert_msg(llep__devices_new(&dc, &dv, err, sizeof(err)) == 0, "%s", err);
    /* Nothing at all: no model. */
    ck_assert(lookup(dv, 8, 16, LLEP_DTYPE_F32, &shape) == -1);
    ck_assert(!shape);
    /* A shape's model without a reference: that shape only. */
    llep_cost_model a = model(111);
    ck_assert_int_eq(llep__devices_set_shape_cost(dv, 8, 16, LLEP_DTYPE_F32, &a), 0);
    ck_assert(lookup(dv, 8, 16, LLEP_DTYPE_F32, &shape) == 111 && shape);
    ck_assert(lookup(dv, 8, 16, LLEP_DTYPE_BF16, &shape) == -1 && !shape);
    /* With the reference: every other shape gets it, told apart by each part of the key. */
    llep_cost_model ref = model(999);
    llep__devices_set_cost(dv, &ref);
    ck_assert(lookup(dv, 8, 16, LLEP_DTYPE_F32, &shape) == 111 && shape);
    ck_assert(lookup(dv, 8, 16, LLEP_DTYPE_BF16, &shape) == 999 && !shape);
    ck_assert(lookup(dv, 16, 8, LLEP_DTYPE_F32, &shape) == 999 && !shape);
    ck_assert(lookup(dv, 8, 17, LLEP_DTYPE_F32, &shape) == 999 && !shape);
    ck_assert(llep__devices_cost_get(dv, NULL));
    /* Replacing a shape's model keeps one entry. */
    llep_cost_model a2 = model(112);
    ck_assert_int_eq(llep__devices_set_shape_cost(dv, 8, 16, LLEP_DTYPE_F32, &a2), 0);
    ck_assert_uint_eq(llep__devices_shape_costs(dv), 1);
    ck_assert(lookup(dv, 8, 16, LLEP_DTYPE_F32, &shape) == 112 && shape);
    /* The cap: LLEP_DEVICES_COST_SHAPES shapes, then the next is refused and gets the
     * reference; a shape in the table may still change. */
    for (uint32_t i = 1; i < LLEP_DEVICES_COST_SHAPES; i++) {
        llep_cost_model m = model(1000 + i);
        ck_assert_int_eq(llep__devices_set_shape_cost(dv, 100 + i, 64, LLEP_DTYPE_BF16, &m), 0);
    }
    ck_assert_uint_eq(llep__devices_shape_costs(dv), LLEP_DEVICES_COST_SHAPES);
    llep_cost_model over = model(5);
    ck_assert_int_eq(llep__devices_set_shape_cost(dv, 7, 7, LLEP_DTYPE_F32, &over), -ENOSPC);
    ck_assert(lookup(dv, 7, 7, LLEP_DTYPE_F32, &shape) == 999 && !shape);
    ck_assert_int_eq(llep__devices_set_shape_cost(dv, 8, 16, LLEP_DTYPE_F32, &a), 0);
    for (uint32_t i = 1; i < LLEP_DEVICES_COST_SHAPES; i++)
        ck_assert(lookup(dv, 100 + i, 64, LLEP_DTYPE_BF16, &shape) == 1000 + i && shape);
    /* Removing one makes room; the others stay found. */
    ck_assert_int_eq(llep__devices_set_shape_cost(dv, 105, 64, LLEP_DTYPE_BF16, NULL), 0);
    ck_assert(lookup(dv, 105, 64, LLEP_DTYPE_BF16, &shape) == 999 && !shape);
    ck_assert_int_eq(llep__devices_set_shape_cost(dv, 7, 7, LLEP_DTYPE_F32, &over), 0);
    ck_assert(lookup(dv, 7, 7, LLEP_DTYPE_F32, &shape) == 5 && shape);
    ck_assert(lookup(dv, 8, 16, LLEP_DTYPE_F32, &shape) == 111 && shape);
    ck_assert(lookup(dv, 100 + LLEP_DEVICES_COST_SHAPES - 1, 64, LLEP_DTYPE_BF16, &shape) ==
              1000 + LLEP_DEVICES_COST_SHAPES - 1 && shape);
    /* Without the reference again: other shapes have nothing. */
    llep__devices_set_cost(dv, NULL);
    ck_assert(lookup(dv, 9, 9, LLEP_DTYPE_F32, &shape) == -1 && !shape);
    ck_assert(lookup(dv, 7, 7, LLEP_DTYPE_F32, &shape) == 5 && shape);
    llep__devices_free(dv);
}
END_TEST

/* ---- against llepd ----------------------------------------------------------------------- */

#define D 24u
#define H 40u
#define TOKENS 48u

static char tmpdir[64], sock[128], state[128], shape_file[192], log_path[128];
static char llepctl[PATH_MAX];

static void setup(void) {
    llep_test_tmpdir(tmpdir, sizeof(tmpdir), "test-calib-shapes");
    snprintf(sock, sizeof(sock), "%s/s.sock", tmpdir);
    snprintf(state, sizeof(state), "%s/state", tmpdir);
    snprintf(shape_file, sizeof(shape_file), "%s/calibration-%ux%u-f32.json", state, D, H);
    snprintf(log_path, sizeof(log_path), "%s/log", tmpdir);
    llep_test_llepctl(llepctl, sizeof(llepctl));
}

static void teardown(void) {
    llep_test_rm_rf(tmpdir);
}

static pid_t start(bool shapes) {
    const char *args[] = { "--state-dir", state, "--min-tokens", "1", "--calibrate-shapes",
                           shapes ? "yes" : "no", NULL };
    llep_test_llepd o = { .sock = sock, .devices = "2", .log_level = "info", .log = log_path,
                          .args = args };

    return llep_test_llepd_start(&o);
}

static void stop(pid_t *pid) {
    int st = llep_test_stop(pid, 20000);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "llepd exited with %d", st);
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* `llepctl --json tune [--show]`, parsed. */
static json_object *tune_json(bool show) {
    const char *argv[] = { llepctl, "--socket", sock, "--json", "tune", show ? "--show" : NULL,
                           NULL };
    return llep_test_run_json(argv);
}

/* The entry of shape D x H f32 in tune's "shapes" (NULL: none), and how many there are. */
static json_object *shape_entry(json_object *j, size_t *count) {
    json_object *a = llep_test_jget(j, "shapes"), *found = NULL;

    *count = json_object_array_length(a);
    for (size_t i = 0; i < *count; i++) {
        json_object *e = json_object_array_get_idx(a, i);
        if (json_object_get_int(llep_test_jget(e, "hidden")) == (int)D &&
            json_object_get_int(llep_test_jget(e, "inter")) == (int)H &&
            strcmp(json_object_get_string(llep_test_jget(e, "dtype")), "f32") == 0)
            found = e;
    }
    return found;
}

/* The entry's source, after checking that it is in force with the stored file's model. */
static const char *check_entry(json_object *e) {
    llep_calibration cal;
    char err[512], hash[32];

    ck_assert_msg(llep__calib_load(shape_file, &cal, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(cal.hidden, D);
    ck_assert_uint_eq(cal.inter, H);
    ck_assert_int_eq(cal.dtype, LLEP_DTYPE_F32);
    ck_assert(json_object_get_boolean(llep_test_jget(e, "stored")));
    ck_assert_str_eq(json_object_get_string(llep_test_jget(e, "path")), shape_file);
    snprintf(hash, sizeof(hash), "%016llx", (unsigned long long)llep__cost_hash(&cal.model));
    json_object *c = llep_test_jget(e, "calibration");
    ck_assert_str_eq(json_object_get_string(llep_test_jget(c, "hash")), hash);
    ck_assert_int_eq(json_object_get_int(llep_test_jget(c, "hidden")), (int)D);
    ck_assert(json_object_get_double(llep_test_jget(e, "top_rate_flops_per_ns")) > 0);
    ck_assert(json_object_get_double(llep_test_jget(e, "chunk_1row_ns")) > 0);
    ck_assert(json_object_get_double(llep_test_jget(e, "expert_copy_ns")) > 0);
    return json_object_get_string(llep_test_jget(e, "source"));
}

static llep_layer *create(llep_client *c, const llep_test_layer *l) {
    llep_layer_desc d;

    memset(&d, 0, sizeof(d));
    d.num_experts = l->s.n;
    d.top_k = l->s.k;
    d.hidden = l->s.d;
    d.inter = l->s.h;
    d.dtype = LLEP_DTYPE_F32;
    d.act = LLEP_ACT_SWIGLU;
    d.w_gate = l->w.wg;
    d.w_up = l->w.wu;
    d.w_down = l->w.wd;
    d.b_gate = l->w.bg;
    d.b_up = l->w.bu;
    d.b_down = l->w.bd;
    return llep_test_layer_create(c, "shaped", &d);
}

/* A skewed forward (so that the cost planner spills) exact against float64. */
static void forward_exact(llep_layer *h, const llep_test_layer *l, uint64_t seed,
                          const char *what) {
    llep_test_batch b;

    llep_test_batch_spread(&b, l, TOKENS, 0.6, seed);
    int r = llep_forward(h, b.tokens, b.x, b.idx, b.w, b.y);
    ck_assert_msg(r == 0, "%s: %s: %s", what, llep_strerror(r),
                  llep_client_error(llep_layer_client(h)));
    llep_test_assert_exact(l, &b, what);
    llep_test_batch_fini(&b);
}

/* Waits (up to 60 s: the measurement runs under ASan on a busy machine) for the shape's file;
 * fails the test when it does not come. Not a timing check. */
static void wait_for_file(void) {
    for (int i = 0; i < 6000 && !exists(shape_file); i++)
        usleep(10000);
    ck_assert_msg(exists(shape_file), "%s did not appear", shape_file);
}

START_TEST(test_llepd_shape) {
    llep_test_layer l;
    size_t n;

    llep_test_layer_init(&l, (llep_test_shape){ 8, 2, D, H }, 7);
    pid_t pid = start(true);
    llep_client *c = llep_test_connect(sock);
    llep_layer *h = create(c, &l);
    /* Planned with the reference model or the shape's, whichever is in force: exact. */
    forward_exact(h, &l, 1, "first forward");
    wait_for_file();
    ck_assert(llep_test_file_contains(log_path, "calibrating the devices at layer shape 24 x "
                                                "40 f32"));
    for (int i = 0; i < 6000 && !llep_test_file_contains(log_path, "of layer shape 24 x 40 "
                                                         "f32, measured and stored"); i++)
        usleep(10000);
    ck_assert(llep_test_file_contains(log_path, "of layer shape 24 x 40 f32, measured and "
                                                "stored"));
    for (uint64_t s = 2; s < 5; s++)
        forward_exact(h, &l, s, "forward with the shape's model");
    json_object *j = tune_json(true);
    json_object *e = shape_entry(j, &n);
    ck_assert_msg(e, "tune --show lists no shape 24 x 40 f32");
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(check_entry(e), "measured");
    json_object_put(j);
    llep_layer_release(h);
    llep_disconnect(c);
    stop(&pid);

    /* Restarted: nothing read until a layer has the shape; then its file is loaded, not
     * measured again. */
    ck_assert_int_eq(truncate(log_path, 0), 0);
    pid = start(true);
    j = tune_json(true);
    ck_assert(shape_entry(j, &n) == NULL);
    ck_assert_uint_eq(n, 0);
    json_object_put(j);
    c = llep_test_connect(sock);
    h = create(c, &l);
    ck_assert(llep_test_file_contains(log_path, "of layer shape 24 x 40 f32, loaded from the "
                                                "state directory"));
    j = tune_json(true);
    e = shape_entry(j, &n);
    ck_assert_msg(e, "a restarted llepd lists no shape 24 x 40 f32");
    ck_assert_str_eq(check_entry(e), "loaded");
    json_object_put(j);
    forward_exact(h, &l, 5, "forward with the loaded model");
    ck_assert(!llep_test_file_contains(log_path, "calibrating the devices at layer shape"));
    /* tune measures the shape again, stores and lists it. */
    j = tune_json(false);
    e = shape_entry(j, &n);
    ck_assert_msg(e, "tune lists no shape 24 x 40 f32");
    ck_assert_str_eq(check_entry(e), "measured");
    json_object_put(j);
    ck_assert(llep_test_file_contains(log_path, "of layer shape 24 x 40 f32, measured and "
                                                "stored"));
    forward_exact(h, &l, 6, "forward after tune");
    llep_layer_release(h);
    llep_disconnect(c);
    stop(&pid);
    llep_test_layer_fini(&l);
}
END_TEST

START_TEST(test_llepd_shapes_off) {
    llep_test_layer l;
    size_t n;

    llep_test_layer_init(&l, (llep_test_shape){ 8, 2, D, H }, 9);
    pid_t pid = start(false);
    llep_client *c = llep_test_connect(sock);
    llep_layer *h = create(c, &l);
    forward_exact(h, &l, 1, "forward without shape calibration");
    /* A tune measures every shape llepd knows: none. */
    json_object *j = tune_json(false);
    ck_assert(shape_entry(j, &n) == NULL);
    ck_assert_uint_eq(n, 0);
    json_object_put(j);
    forward_exact(h, &l, 2, "forward after tune");
    llep_layer_release(h);
    llep_disconnect(c);
    stop(&pid);
    ck_assert(!exists(shape_file));
    ck_assert(!llep_test_file_contains(log_path, "calibrating the devices at layer shape"));
    ck_assert(!llep_test_file_contains(log_path, "of layer shape"));
    llep_test_layer_fini(&l);
}
END_TEST

static Suite *calib_shapes_suite(void) {
    Suite *s = suite_create("calib-shapes");
    TCase *tc = tcase_create("table");
    tcase_add_test(tc, test_shape_table);
    suite_add_tcase(s, tc);
    tc = tcase_create("llepd");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_llepd_shape);
    tcase_add_test(tc, test_llepd_shapes_off);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(calib_shapes_suite(), CK_ENV);
}
