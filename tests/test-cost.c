/* Tests of the device cost model's arithmetic (daemon/core/cost.c): chunk times against the
 * formula written out by hand, link kinds and transfer times, the nominal models, the checks
 * and the hash. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cost.h"
#include "fixtures.h"

/* A two-point curve that is easy to work by hand: 10 flops/ns at 1 row, 30 at 4 rows. */
static llep_cost_model small_model(void) {
    llep_cost_model m;

    memset(&m, 0, sizeof(m));
    m.num_points = 2;
    m.rows[0] = 1;
    m.rows[1] = 4;
    m.rate[0] = 10;
    m.rate[1] = 30;
    m.chunk_fixed_ns = 100;
    m.link[LLEP_LINK_GPU] = (llep_cost_link){ 1, 0.5 };
    m.link[LLEP_LINK_PEER] = (llep_cost_link){ 10, 1 };
    m.link[LLEP_LINK_NODE] = (llep_cost_link){ 100, 2 };
    return m;
}

static void assert_near(double got, double want) {
    ck_assert_msg(fabs(got - want) <= 1e-9 * fmax(1.0, fabs(want)), "got %.17g, want %.17g", got,
                  want);
}

START_TEST(layer_figures) {
    llep_cost_layer l;

    /* gpt-oss-120b: D = H = 2880, bf16, biases on gate, up and down. */
    llep__cost_layer(&l, 2880, 2880, 2, true);
    assert_near(l.flops_per_row, 6.0 * 2880 * 2880);
    ck_assert_uint_eq(l.weight_bytes, 3ull * 2880 * 2880 * 2 + (2 * 2880 + 2880) * 2);
    ck_assert_uint_eq(l.row_bytes, 2880 * 2);
    llep__cost_layer(&l, 7168, 2048, 2, false);
    ck_assert_uint_eq(l.weight_bytes, 3ull * 7168 * 2048 * 2);
    ck_assert_uint_eq(l.row_bytes, 7168 * 2);
}
END_TEST

START_TEST(chunk_time_by_hand) {
    llep_cost_model m = small_model();
    llep_cost_layer l = { .flops_per_row = 60, .weight_bytes = 0, .row_bytes = 0 };

    assert_near(llep__cost_chunk_ns(&m, &l, 0), 0);
    /* At the points: fixed + rows * flops / rate. */
    assert_near(llep__cost_chunk_ns(&m, &l, 1), 100 + 60.0 / 10);
    assert_near(llep__cost_chunk_ns(&m, &l, 4), 100 + 4 * 60.0 / 30);
    /* 2 rows lie halfway between 1 and 4 in log2: rate 20 (and 0.1 ns a flop, as at 1 row). */
    assert_near(llep__cost_chunk_ns(&m, &l, 2), 100 + 2 * 60.0 / 20);
    /* 3 rows: log2(3) / 2 of the way. */
    double t = log2(3.0) / 2;
    assert_near(llep__cost_chunk_ns(&m, &l, 3), 100 + 3 * 60.0 / (10 + t * 20));
    /* A curve whose rate grows faster than rows between points would make 2 rows cheaper
     * than 1: the work time stays at the point below instead. */
    llep_cost_model steep = m;
    steep.rate[1] = 80;
    assert_near(llep__cost_chunk_ns(&steep, &l, 2), 100 + 60.0 / 10);
    assert_near(llep__cost_chunk_ns(&steep, &l, 4), 100 + 4 * 60.0 / 80);
    /* Beyond the last point the rate stays at the last. */
    assert_near(llep__cost_chunk_ns(&m, &l, 1000), 100 + 1000 * 60.0 / 30);
}
END_TEST

START_TEST(link_kinds_and_transfers) {
    llep_cost_model m = small_model();

    /* All zero: every device on one GPU of one node. */
    ck_assert_int_eq(llep__cost_link_kind(&m, 3, 3), LLEP_LINK_SAME);
    ck_assert_int_eq(llep__cost_link_kind(&m, 0, 7), LLEP_LINK_GPU);
    /* Two logical devices per GPU, four per node. */
    m.devices_per_gpu = 2;
    m.devices_per_node = 4;
    ck_assert_int_eq(llep__cost_link_kind(&m, 0, 1), LLEP_LINK_GPU);
    ck_assert_int_eq(llep__cost_link_kind(&m, 1, 2), LLEP_LINK_PEER);
    ck_assert_int_eq(llep__cost_link_kind(&m, 2, 3), LLEP_LINK_GPU);
    ck_assert_int_eq(llep__cost_link_kind(&m, 3, 4), LLEP_LINK_NODE);
    ck_assert_int_eq(llep__cost_link_kind(&m, 7, 0), LLEP_LINK_NODE);
    assert_near(llep__cost_transfer_ns(&m, 5, 5, 1000), 0);
    assert_near(llep__cost_transfer_ns(&m, 0, 1, 1000), 1 + 0.5 * 1000);
    assert_near(llep__cost_transfer_ns(&m, 0, 2, 1000), 10 + 1000);
    assert_near(llep__cost_transfer_ns(&m, 0, 4, 1000), 100 + 2 * 1000);
}
END_TEST

/* The nominal models pass the check, their chunk time never falls as rows grow and their
 * rate never falls, and the figures the issue quotes come out: one bf16 gpt-oss-120b expert (about
 * 50 MB) moves between two H200 in about 0.1 ms. */
START_TEST(nominal_models) {
    const char *names[] = { "cpu", "h200" };
    llep_cost_layer l;
    char err[128];

    llep__cost_layer(&l, 2880, 2880, 2, true);
    for (int i = 0; i < 2; i++) {
        llep_cost_model m;
        ck_assert_int_eq(llep__cost_nominal(names[i], &m), 0);
        ck_assert_msg(llep__cost_check(&m, err, sizeof(err)) == 0, "%s: %s", names[i], err);
        double prev = 0, prev_rate = 0;
        for (uint64_t r = 1; r <= 100000; r = r * 3 / 2 + 1) {
            double t = llep__cost_chunk_ns(&m, &l, r);
            double rate = (double)r * l.flops_per_row / (t - m.chunk_fixed_ns);
            ck_assert_msg(t >= prev, "%s: chunk time falls at %llu rows", names[i],
                          (unsigned long long)r);
            ck_assert_msg(rate >= prev_rate * (1 - 1e-12), "%s: rate falls at %llu rows",
                          names[i], (unsigned long long)r);
            prev = t;
            prev_rate = rate;
        }
        ck_assert(llep__cost_chunk_ns(&m, &l, 100000) > 2 * llep__cost_chunk_ns(&m, &l, 1000));
    }
    llep_cost_model h;
    ck_assert_int_eq(llep__cost_nominal("h200", &h), 0);
    double ms = llep__cost_transfer_ns(&h, 0, 1, l.weight_bytes) / 1e6;
    ck_assert_msg(ms > 0.08 && ms < 0.15, "NVLink expert copy %.3f ms", ms);
    ck_assert_int_eq(llep__cost_nominal("tpu", &h), -ENOENT);
    ck_assert_int_eq(llep__cost_nominal(NULL, &h), -EINVAL);
}
END_TEST

START_TEST(check_names_the_problem) {
    llep_cost_model m;
    char err[128];

    m = small_model();
    ck_assert_int_eq(llep__cost_check(&m, err, sizeof(err)), 0);
    m.num_points = 0;
    ck_assert_int_eq(llep__cost_check(&m, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "points"));
    m = small_model();
    m.rows[0] = 2;
    ck_assert_int_eq(llep__cost_check(&m, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "start at 1"));
    m = small_model();
    m.rows[1] = 1;
    ck_assert_int_eq(llep__cost_check(&m, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "increase"));
    m = small_model();
    m.rate[1] = 0;
    ck_assert_int_eq(llep__cost_check(&m, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "rates"));
    m = small_model();
    m.rate[0] = NAN;
    ck_assert_int_eq(llep__cost_check(&m, err, sizeof(err)), -EINVAL);
    m = small_model();
    m.chunk_fixed_ns = -1;
    ck_assert_int_eq(llep__cost_check(&m, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "fixed"));
    m = small_model();
    m.link[LLEP_LINK_PEER].ns_per_byte = INFINITY;
    ck_assert_int_eq(llep__cost_check(&m, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "link costs"));
    /* Between nodes cheaper than between GPUs of a node. */
    m = small_model();
    m.link[LLEP_LINK_NODE] = (llep_cost_link){ 0, 0.1 };
    ck_assert_int_eq(llep__cost_check(&m, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "cheaper"));
    ck_assert_int_eq(llep__cost_check(NULL, err, sizeof(err)), -EINVAL);
}
END_TEST

/* FNV-1a written out plainly over the stream cost.h describes. */
static uint64_t fnv_bytes(uint64_t h, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        h ^= (v >> (8 * i)) & 0xff;
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t bits(double x) {
    uint64_t b;
    memcpy(&b, &x, sizeof(b));
    return b;
}

START_TEST(hash_of_the_figures) {
    llep_cost_model m = small_model(), o;
    uint64_t want = 0xcbf29ce484222325ull;

    want = fnv_bytes(want, 2);
    want = fnv_bytes(want, 1);
    want = fnv_bytes(want, bits(10));
    want = fnv_bytes(want, 4);
    want = fnv_bytes(want, bits(30));
    want = fnv_bytes(want, bits(100));
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        want = fnv_bytes(want, bits(m.link[k].latency_ns));
        want = fnv_bytes(want, bits(m.link[k].ns_per_byte));
    }
    want = fnv_bytes(want, 0);
    want = fnv_bytes(want, 0);
    ck_assert_uint_eq(llep__cost_hash(&m), want);

    /* Names and unused points do not count; every figure does. */
    o = m;
    snprintf(o.device_name, sizeof(o.device_name), "other");
    o.rate[5] = 7;
    ck_assert_uint_eq(llep__cost_hash(&o), want);
    o = m;
    o.rate[1] = 30.000000001;
    ck_assert_uint_ne(llep__cost_hash(&o), want);
    o = m;
    o.link[LLEP_LINK_NODE].latency_ns = 101;
    ck_assert_uint_ne(llep__cost_hash(&o), want);
    o = m;
    o.devices_per_node = 4;
    ck_assert_uint_ne(llep__cost_hash(&o), want);
}
END_TEST

static Suite *cost_suite(void) {
    Suite *s = suite_create("cost");
    TCase *tc = tcase_create("model");

    tcase_add_test(tc, layer_figures);
    tcase_add_test(tc, chunk_time_by_hand);
    tcase_add_test(tc, link_kinds_and_transfers);
    tcase_add_test(tc, nominal_models);
    tcase_add_test(tc, check_names_the_problem);
    tcase_add_test(tc, hash_of_the_figures);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(cost_suite(), CK_NORMAL);
}
