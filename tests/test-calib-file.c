/* The stored calibration (daemon/server/calib-file.h) and llepd's use of it (calib.c,
 * handlers-tune.c; issue 15 item 1).
 *
 * In-process: a calibration measured on the CPU backend survives the file bit for bit (same
 * llep__cost_hash, same figures); files that are truncated, of wrong types, with negative or
 * out-of-order figures, of another version or missing a key are refused with a sentence naming
 * the problem; a calibration of another backend, device count or device does not match.
 * Against a private llepd ($LLEPD): without a stored file it measures and stores one; with it,
 * it loads it (the file unchanged); a bad file is refused in the log and replaced by a new
 * measurement; `llepctl tune` measures again and stores it, `--json` parses and agrees with
 * the file, `tune --show` shows the one in force without measuring. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "calib-file.h"
#include "calibrate.h"
#include "devices.h"
#include "fixtures.h"
#include "json-fixtures.h"
#include "test-nodes.h"

static char tmpdir[64];

static void setup(void) {
    llep_test_tmpdir(tmpdir, sizeof(tmpdir), "test-calib-file");
}

static void teardown(void) {
    llep_test_rm_rf(tmpdir);
}

/* A real calibration of two CPU devices, small enough to be quick. */
static void measure(llep_calibration *cal) {
    llep_devices_config dc = { .num_devices = 2, .threads = 1 };
    llep_devices *dv = NULL;
    llep_calibrate_options o;
    char err[256] = "";

    ck_assert(llep__devices_new(&dc, &dv, err, sizeof(err)) == 0);
    llep__calibrate_defaults("cpu", &o);
    o.hidden = o.inter = 64;
    o.max_rows = 16;
    o.reps = 3;
    o.transfer_bytes = 1u << 18;
    ck_assert_msg(llep__calibrate(dv, &o, cal, err, sizeof(err)) == 0, "%s", err);
    llep__devices_free(dv);
}

static void assert_same(const llep_calibration *a, const llep_calibration *b) {
    const llep_cost_model *x = &a->model, *y = &b->model;

    ck_assert_uint_eq(llep__cost_hash(x), llep__cost_hash(y));
    ck_assert_str_eq(x->backend, y->backend);
    ck_assert_str_eq(x->device_name, y->device_name);
    ck_assert_uint_eq(x->num_points, y->num_points);
    for (uint32_t i = 0; i < x->num_points; i++) {
        ck_assert_uint_eq(x->rows[i], y->rows[i]);
        ck_assert(x->rate[i] == y->rate[i]);
    }
    ck_assert(x->chunk_fixed_ns == y->chunk_fixed_ns);
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        ck_assert(x->link[k].latency_ns == y->link[k].latency_ns);
        ck_assert(x->link[k].ns_per_byte == y->link[k].ns_per_byte);
        ck_assert(a->measured[k] == b->measured[k]);
    }
    ck_assert_uint_eq(a->devices, b->devices);
    ck_assert_uint_eq(a->hidden, b->hidden);
    ck_assert_uint_eq(a->inter, b->inter);
    ck_assert_int_eq(a->dtype, b->dtype);
    ck_assert(a->elapsed_ms == b->elapsed_ms);
    ck_assert_int_eq(a->time, b->time);
}

START_TEST(test_round_trip) {
    llep_calibration cal, back;
    char path[PATH_MAX], err[512] = "";

    measure(&cal);
    snprintf(path, sizeof(path), "%s/%s", tmpdir, LLEP_CALIB_FILE);
    ck_assert_msg(llep__calib_save(path, &cal, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(llep__calib_load(path, &back, err, sizeof(err)) == 0, "%s", err);
    assert_same(&cal, &back);
    /* Saved again over itself: still one file, the same figures (no temporary left). */
    ck_assert(llep__calib_save(path, &back, err, sizeof(err)) == 0);
    ck_assert(llep__calib_load(path, &cal, err, sizeof(err)) == 0);
    assert_same(&cal, &back);
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof(cmd), "test $(ls %s | wc -l) -eq 1", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
    /* None there: -ENOENT. */
    snprintf(path, sizeof(path), "%s/none.json", tmpdir);
    ck_assert_int_eq(llep__calib_load(path, &back, err, sizeof(err)), -ENOENT);
    /* A directory that does not exist: an error naming the file, nothing written. */
    snprintf(path, sizeof(path), "%s/no/such/dir/c.json", tmpdir);
    ck_assert_int_lt(llep__calib_save(path, &cal, err, sizeof(err)), 0);
    ck_assert_ptr_nonnull(strstr(err, "cannot write"));
}
END_TEST

/* The text of cal's file with the first occurrence of from replaced by to. */
static char *edited(const llep_calibration *cal, const char *from, const char *to) {
    char *text = llep__calib_format(cal);
    ck_assert_ptr_nonnull(text);
    char *at = strstr(text, from);
    ck_assert_msg(at != NULL, "'%s' is not in the file", from);
    size_t n = strlen(text) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    free(text);
    return out;
}

/* text must be refused with an error that contains want. */
static void refused(const char *text, size_t len, const char *want) {
    llep_calibration back;
    char err[512] = "";

    ck_assert_int_eq(llep__calib_parse(text, len, "calibration.json", &back, err, sizeof(err)),
                     -EINVAL);
    ck_assert_msg(strstr(err, want) != NULL, "error '%s' does not say '%s'", err, want);
    ck_assert_uint_eq(back.model.num_points, 0); /* nothing half used */
}

static void refused_edit(const llep_calibration *cal, const char *from, const char *to,
                         const char *want) {
    char *t = edited(cal, from, to);
    refused(t, strlen(t), want);
    free(t);
}

START_TEST(test_bad_files) {
    llep_calibration cal, back;
    char err[512] = "";

    measure(&cal);
    char *good = llep__calib_format(&cal);
    ck_assert_ptr_nonnull(good);
    size_t len = strlen(good);
    ck_assert_int_eq(llep__calib_parse(good, len, "c", &back, err, sizeof(err)), 0);
    /* Truncated anywhere: not JSON. */
    for (size_t cut = 0; cut < len - 2; cut += len / 17 + 1)
        refused(good, cut, "not JSON");
    refused("[1, 2]", 6, "not a JSON object");
    /* Wrong types. */
    refused_edit(&cal, "\"devices\": 2", "\"devices\": \"2\"", "devices");
    refused_edit(&cal, "\"rows\": 1,", "\"rows\": 1.5,", "rows");
    refused_edit(&cal, "\"backend\": \"cpu\"", "\"backend\": 1", "'backend' must be a string");
    refused_edit(&cal, "\"measured\": true", "\"measured\": 1", "'measured' must be true");
    refused_edit(&cal, "\"curve\": [", "\"curve\": {\"x\": [", "not JSON");
    refused_edit(&cal, "\"dtype\": \"f32\"", "\"dtype\": \"f16\"", "'dtype' must be f32 or bf16");
    /* Negative and non-finite figures. */
    refused_edit(&cal, "\"rate\": ", "\"rate\": -", "'rate' must be a finite number >= 0");
    refused_edit(&cal, "\"chunk_fixed_ns\": ", "\"chunk_fixed_ns\": -",
                 "'chunk_fixed_ns' must be a finite number >= 0");
    refused_edit(&cal, "\"ns_per_byte\": ", "\"ns_per_byte\": -1", "'ns_per_byte' must be");
    refused_edit(&cal, "\"devices\": 2", "\"devices\": -2", "devices");
    /* Figures in range one by one, but no valid model. */
    refused_edit(&cal, "\"rows\": 2,", "\"rows\": 1,", "not a valid cost model");
    refused_edit(&cal, "\"rate\": ", "\"rate\": 0, \"was\": ", "rates must be finite and > 0");
    refused_edit(&cal, "\"ns_per_byte\": ", "\"ns_per_byte\": 9", "cheaper than a nearer one");
    /* Structure. */
    refused_edit(&cal, "\"version\": 1", "\"version\": 2", "version 2");
    refused_edit(&cal, "\"hidden\"", "\"hiddn\"", "no hidden");
    refused_edit(&cal, "\"chunk_fixed_ns\"", "\"fixed\"", "'chunk_fixed_ns' is missing");
    refused_edit(&cal, "\"kind\": \"gpu\"", "\"kind\": \"peer\"", "link 1 must be 'gpu'");
    refused_edit(&cal, "\"device_name\": \"", "\"device_name\": \"\\u0000", "device_name");
    free(good);
}
END_TEST

START_TEST(test_matches) {
    llep_calibration cal, now;
    char why[256];

    measure(&cal);
    now = cal;
    ck_assert(llep__calib_matches(&cal, &now, why, sizeof(why)));
    snprintf(now.model.backend, sizeof(now.model.backend), "cuda");
    ck_assert(!llep__calib_matches(&cal, &now, why, sizeof(why)));
    ck_assert_ptr_nonnull(strstr(why, "backend cpu"));
    now = cal;
    now.devices = 8;
    ck_assert(!llep__calib_matches(&cal, &now, why, sizeof(why)));
    ck_assert_ptr_nonnull(strstr(why, "2 devices"));
    now = cal;
    snprintf(now.model.device_name, sizeof(now.model.device_name), "another CPU");
    ck_assert(!llep__calib_matches(&cal, &now, why, sizeof(why)));
    ck_assert_ptr_nonnull(strstr(why, "another CPU"));
}
END_TEST

/* ---- against llepd ---------------------------------------------------------------------- */

static char sock[PATH_MAX], state[PATH_MAX], file[PATH_MAX], log_path[PATH_MAX];

static pid_t start(void) {
    const char *args[] = { "--state-dir", state, NULL };
    llep_test_llepd o = { .sock = sock, .devices = "2", .log_level = "info", .log = log_path,
                          .args = args };

    return llep_test_llepd_start(&o);
}

static void paths(void) {
    snprintf(sock, sizeof(sock), "%s/s.sock", tmpdir);
    snprintf(state, sizeof(state), "%s/state", tmpdir);
    snprintf(file, sizeof(file), "%s/state/%s", tmpdir, LLEP_CALIB_FILE);
    snprintf(log_path, sizeof(log_path), "%s/log", tmpdir);
}

static void stop(pid_t *pid) {
    int st = llep_test_stop(pid, 20000);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "llepd exited with %d", st);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

START_TEST(test_llepd_start) {
    llep_calibration first, back;
    char err[512];

    paths();
    /* No file: measured before the socket accepts, and stored. */
    pid_t pid = start();
    ck_assert(llep_test_file_contains(log_path, "measured and stored"));
    ck_assert_msg(llep__calib_load(file, &first, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(first.devices, 2);
    stop(&pid);
    char *before = slurp(file);
    /* With it: loaded, not measured again (the file is the same byte for byte). */
    ck_assert_int_eq(truncate(log_path, 0), 0);
    pid = start();
    ck_assert(llep_test_file_contains(log_path, "loaded from the state directory"));
    ck_assert(!llep_test_file_contains(log_path, "measured"));
    stop(&pid);
    char *after = slurp(file);
    ck_assert_str_eq(before, after);
    free(after);
    /* A bad file: refused, naming the problem, and replaced by a new measurement. */
    FILE *f = fopen(file, "w");
    fputs(before, f);
    fclose(f);
    ck_assert_int_eq(truncate(file, (off_t)(strlen(before) / 2)), 0);
    ck_assert_int_eq(truncate(log_path, 0), 0);
    pid = start();
    ck_assert(llep_test_file_contains(log_path, "stored calibration refused"));
    ck_assert(llep_test_file_contains(log_path, "is not JSON"));
    ck_assert(llep_test_file_contains(log_path, "measured and stored"));
    stop(&pid);
    ck_assert_msg(llep__calib_load(file, &back, err, sizeof(err)) == 0, "%s", err);
    /* Another backend's file: does not fit, measured again. */
    f = fopen(file, "w");
    char *cuda = strstr(before, "\"backend\": \"cpu\"");
    ck_assert_ptr_nonnull(cuda);
    fprintf(f, "%.*s\"backend\": \"cuda\"%s", (int)(cuda - before), before,
            cuda + strlen("\"backend\": \"cpu\""));
    fclose(f);
    ck_assert_int_eq(truncate(log_path, 0), 0);
    pid = start();
    ck_assert(llep_test_file_contains(log_path, "it is for backend cuda, llepd runs cpu"));
    ck_assert(llep_test_file_contains(log_path, "measured and stored"));
    stop(&pid);
    free(before);
}
END_TEST

/* `llepctl --json tune [--show]`, parsed. */
static json_object *ctl_json(const char *llepctl, bool show) {
    const char *argv[] = { llepctl, "--socket", sock, "--json", "tune", show ? "--show" : NULL,
                           NULL };
    return llep_test_run_json(argv);
}

START_TEST(test_llepctl_tune) {
    char llepctl[PATH_MAX], err[512];
    llep_calibration stored;

    llep_test_llepctl(llepctl, sizeof(llepctl));
    paths();
    pid_t pid = start();
    /* The table: the curve's header, one line per point and the transfers. */
    const char *argv[] = { llepctl, "--socket", sock, "tune", NULL };
    llep_test_output o = llep_test_run(argv, NULL);
    ck_assert_msg(o.status == 0, "%s", o.err);
    ck_assert_ptr_nonnull(strstr(o.out, "EFFICIENCY"));
    ck_assert_ptr_nonnull(strstr(o.out, "between nodes"));
    ck_assert_ptr_nonnull(strstr(o.out, "stored in"));
    llep_test_output_free(&o);
    ck_assert(llep_test_file_contains(log_path, "measured again and stored (llepctl tune)"));
    /* --json: the model as stored. */
    json_object *j = ctl_json(llepctl, false);
    ck_assert(json_object_get_boolean(llep_test_jget(j, "stored")));
    ck_assert_str_eq(json_object_get_string(llep_test_jget(j, "path")), file);
    json_object *c = llep_test_jget(j, "calibration");
    ck_assert_msg(llep__calib_load(file, &stored, err, sizeof(err)) == 0, "%s", err);
    char hash[32];
    snprintf(hash, sizeof(hash), "%016llx", (unsigned long long)llep__cost_hash(&stored.model));
    ck_assert_str_eq(json_object_get_string(llep_test_jget(c, "hash")), hash);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(c, "backend")), "cpu");
    ck_assert_int_eq(json_object_get_int(llep_test_jget(c, "devices")), 2);
    json_object *curve = llep_test_jget(c, "curve");
    ck_assert_uint_eq(json_object_array_length(curve), stored.model.num_points);
    double prev = 0;
    for (size_t i = 0; i < json_object_array_length(curve); i++) {
        json_object *pt = json_object_array_get_idx(curve, i);
        double rate = json_object_get_double(llep_test_jget(pt, "rate_flops_per_ns"));
        double eff = json_object_get_double(llep_test_jget(pt, "efficiency"));
        ck_assert(rate > 0 && rate >= prev);
        ck_assert(eff > 0 && eff <= 1.0);
        ck_assert(json_object_get_double(llep_test_jget(pt, "chunk_ns")) > 0);
        prev = rate;
    }
    ck_assert_uint_eq(json_object_array_length(llep_test_jget(c, "links")), LLEP_LINK_KINDS);
    json_object_put(j);
    /* --show: the same calibration, not measured again. */
    ck_assert_int_eq(truncate(log_path, 0), 0);
    j = ctl_json(llepctl, true);
    c = llep_test_jget(j, "calibration");
    ck_assert_str_eq(json_object_get_string(llep_test_jget(c, "hash")), hash);
    ck_assert(!llep_test_file_contains(log_path, "measuring"));
    json_object_put(j);
    /* --show with another verb is a usage error. */
    const char *bad[] = { llepctl, "--socket", sock, "devices", "--show", NULL };
    o = llep_test_run(bad, NULL);
    ck_assert_int_eq(o.status, 2);
    ck_assert_ptr_nonnull(strstr(o.err, "--show goes with tune only"));
    llep_test_output_free(&o);
    stop(&pid);
}
END_TEST

/* SIGTERM while `llepctl tune` measures: llepd finishes the measurement, answers it and exits
 * 0 (the tune counts as running work, like a step). */
START_TEST(test_stop_during_tune) {
    char llepctl[PATH_MAX];

    llep_test_llepctl(llepctl, sizeof(llepctl));
    paths();
    pid_t pid = start();
    pid_t ctl = fork();
    ck_assert_int_ge(ctl, 0);
    if (ctl == 0) {
        char errp[PATH_MAX];
        snprintf(errp, sizeof(errp), "%s/ctl.err", tmpdir);
        int fd = open("/dev/null", O_WRONLY), fe = open(errp, O_WRONLY | O_CREAT, 0600);
        dup2(fd, 1);
        dup2(fe, 2);
        execl(llepctl, llepctl, "--socket", sock, "tune", (char *)NULL);
        _exit(127);
    }
    const char *begun = "llepctl tune: measuring";
    for (int i = 0; i < 2000 && !llep_test_file_contains(log_path, begun); i++)
        sleep_ms(1);
    ck_assert(llep_test_file_contains(log_path, begun));
    stop(&pid);
    int st;
    ck_assert_int_eq(waitpid(ctl, &st, 0), ctl);
    char errp[PATH_MAX];
    snprintf(errp, sizeof(errp), "%s/ctl.err", tmpdir);
    char *ctl_err = slurp(errp);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "llepctl tune: status %d: %s", st,
                  ctl_err);
    free(ctl_err);
    ck_assert(llep_test_file_contains(log_path, "measured again and stored (llepctl tune)"));
}
END_TEST

/* state-dir = off: measured at start, nothing written, tune says it is not stored. */
START_TEST(test_state_dir_off) {
    char llepctl[PATH_MAX];
    const char *args[] = { "--state-dir", "off", NULL };

    llep_test_llepctl(llepctl, sizeof(llepctl));
    paths();
    llep_test_llepd o = { .sock = sock, .devices = "1", .log_level = "info", .log = log_path,
                          .args = args };
    pid_t pid = llep_test_llepd_start(&o);
    ck_assert(llep_test_file_contains(log_path, "device cost model measured:"));
    json_object *j = ctl_json(llepctl, true);
    ck_assert(!json_object_get_boolean(llep_test_jget(j, "stored")));
    ck_assert_str_eq(json_object_get_string(llep_test_jget(j, "path")), "");
    json_object_put(j);
    stop(&pid);
    struct stat st;
    ck_assert_int_ne(stat(state, &st), 0);
}
END_TEST

static Suite *calib_file_suite(void) {
    Suite *s = suite_create("calib-file");
    TCase *tc = tcase_create("file");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_matches);
    suite_add_tcase(s, tc);
    tc = tcase_create("llepd");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_llepd_start);
    tcase_add_test(tc, test_llepctl_tune);
    tcase_add_test(tc, test_state_dir_off);
    tcase_add_test(tc, test_stop_during_tune);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(calib_file_suite(), CK_ENV);
}
