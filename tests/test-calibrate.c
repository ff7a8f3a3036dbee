/* Calibration of the device cost model on the CPU backend (daemon/engine/calibrate.h, issue
 * 15 item 1): the figures it measures are sane (rates positive and never falling, chunk time
 * growing with rows, fixed cost and transfers positive), the model passes its check, the
 * memory it used is given back, and bad options are refused. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "calibrate.h"
#include "devices.h"

static llep_devices *open_devices(uint32_t p) {
    llep_devices_config dc = { .num_devices = p, .threads = 1 };
    llep_devices *dv = NULL;
    char err[256] = "";

    ck_assert_msg(llep__devices_new(&dc, &dv, err, sizeof(err)) == 0, "%s", err);
    return dv;
}

/* Small and quick: the sanity checks do not need the default's size. */
static void small_options(llep_calibrate_options *o) {
    llep__calibrate_defaults("cpu", o);
    o->hidden = o->inter = 128;
    o->max_rows = 64;
    o->reps = 3;
    o->transfer_bytes = 1u << 20;
}

static void check_sane(const llep_calibration *cal, uint32_t npoints) {
    const llep_cost_model *m = &cal->model;
    char err[200] = "";

    ck_assert_msg(llep__cost_check(m, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(m->num_points, npoints);
    ck_assert_str_eq(m->backend, "cpu");
    ck_assert(m->device_name[0] != '\0');
    ck_assert(m->chunk_fixed_ns >= 0 && isfinite(m->chunk_fixed_ns));
    double prev_ns = 0;
    for (uint32_t i = 0; i < m->num_points; i++) {
        ck_assert_uint_eq(m->rows[i], 1u << i);
        ck_assert_msg(m->rate[i] > 0 && isfinite(m->rate[i]), "rate %u = %g", i, m->rate[i]);
        if (i > 0)
            ck_assert_msg(m->rate[i] >= m->rate[i - 1], "rate falls at %u rows", m->rows[i]);
        double ns = llep__calibration_chunk_ns(cal, m->rows[i]);
        ck_assert_msg(ns > m->chunk_fixed_ns, "a chunk of %u rows takes only the fixed cost",
                      m->rows[i]);
        ck_assert_msg(ns >= prev_ns, "%u rows take %g ns, fewer than half as many %g ns",
                      m->rows[i], ns, prev_ns);
        prev_ns = ns;
    }
    /* The biggest chunk does more work than the smallest: strictly more time. */
    ck_assert(llep__calibration_chunk_ns(cal, m->rows[npoints - 1]) >
              llep__calibration_chunk_ns(cal, 1));
    for (int k = LLEP_LINK_GPU; k < LLEP_LINK_KINDS; k++) {
        ck_assert_msg(m->link[k].ns_per_byte > 0, "link %d", k);
        ck_assert(m->link[k].latency_ns >= 0);
    }
    ck_assert(m->link[LLEP_LINK_SAME].ns_per_byte == 0);
}

START_TEST(test_cpu_sane) {
    llep_devices *dv = open_devices(2);
    llep_calibrate_options o;
    llep_calibration cal;
    char err[256] = "";

    small_options(&o);
    ck_assert_msg(llep__calibrate(dv, &o, &cal, err, sizeof(err)) == 0, "%s", err);
    check_sane(&cal, 7);
    ck_assert_uint_eq(cal.hidden, 128);
    ck_assert_uint_eq(cal.devices, 2);
    /* Two logical devices of one host: the copy between them was measured, the rest not. */
    ck_assert(cal.measured[LLEP_LINK_GPU]);
    ck_assert(!cal.measured[LLEP_LINK_PEER] && !cal.measured[LLEP_LINK_NODE]);
    ck_assert_uint_eq(cal.model.devices_per_gpu, 0);
    /* Everything it allocated is given back. */
    for (uint32_t d = 0; d < 2; d++) {
        llep_device_figures f;
        llep__devices_figures(dv, d, &f);
        ck_assert_uint_eq(f.used, 0);
        ck_assert_uint_eq(f.largest_step, 0);
    }
    llep__devices_free(dv);
}
END_TEST

/* The defaults llepd uses, on one device: no copy within the host to time. */
START_TEST(test_cpu_defaults_one_device) {
    llep_devices *dv = open_devices(1);
    llep_calibration cal;
    char err[256] = "";

    ck_assert_msg(llep__calibrate(dv, NULL, &cal, err, sizeof(err)) == 0, "%s", err);
    check_sane(&cal, 10);
    ck_assert_uint_eq(cal.hidden, 512);
    ck_assert(!cal.measured[LLEP_LINK_GPU]);
    ck_assert(cal.elapsed_ms > 0);
    llep__devices_free(dv);
}
END_TEST

START_TEST(test_bad_options) {
    llep_devices *dv = open_devices(1);
    llep_calibrate_options o;
    llep_calibration cal;
    char err[256] = "";

    small_options(&o);
    o.max_rows = 48;
    ck_assert_int_eq(llep__calibrate(dv, &o, &cal, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "power of two"));
    small_options(&o);
    o.hidden = 0;
    ck_assert_int_eq(llep__calibrate(dv, &o, &cal, err, sizeof(err)), -EINVAL);
    small_options(&o);
    o.reps = 0;
    ck_assert_int_eq(llep__calibrate(dv, &o, &cal, err, sizeof(err)), -EINVAL);
    llep__devices_free(dv);
}
END_TEST

/* The devices' account is the layers': a budget smaller than calibration's buffers does not
 * stop it, and used, peak and largest step stay as they were (a layer's weights held). */
START_TEST(test_account_untouched) {
    llep_devices_config dc = { .num_devices = 2, .threads = 1, .budget = 64 * 1024 };
    llep_devices *dv = NULL;
    llep_calibrate_options o;
    llep_calibration cal;
    void *held = NULL;
    char err[256] = "";

    ck_assert(llep__devices_new(&dc, &dv, err, sizeof(err)) == 0);
    llep__devices_turn_wait(dv);
    ck_assert_int_eq(llep__devices_alloc(dv, 0, 4096, LLEP_CHARGE_HELD, &held), 0);
    llep__devices_turn_end(dv);
    small_options(&o);
    ck_assert_msg(llep__calibrate(dv, &o, &cal, err, sizeof(err)) == 0, "%s", err);
    for (uint32_t d = 0; d < 2; d++) {
        llep_device_figures f;
        llep__devices_figures(dv, d, &f);
        ck_assert_uint_eq(f.used, d == 0 ? 4096 : 0);
        ck_assert_uint_eq(f.peak, d == 0 ? 4096 : 0);
        ck_assert_uint_eq(f.largest_step, 0);
    }
    llep__devices_release(dv, 0, held, 4096, LLEP_CHARGE_HELD);
    llep__devices_free(dv);
}
END_TEST

static Suite *calibrate_suite(void) {
    Suite *s = suite_create("calibrate");
    TCase *tc = tcase_create("cpu");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_cpu_sane);
    tcase_add_test(tc, test_cpu_defaults_one_device);
    tcase_add_test(tc, test_bad_options);
    tcase_add_test(tc, test_account_untouched);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(calibrate_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
