/* A cluster layer's device cost model on the wire (daemon/cluster/cluster-cost.c): packed,
 * encoded as a ClusterLayer frame, decoded and unpacked, it is the same model bit for bit (the
 * same llep__cost_hash, the same figures); a bad model, or one whose hash does not match its
 * figures, is refused with a message naming the problem. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-cost.h"
#include "fixtures.h"

/* Encodes m as ClusterLayer.cost, decodes the bytes and unpacks the model; returns unpack's
 * result. */
static int round_trip(const llep_cost_model *m, llep_cost_model *ret, char *err, size_t len) {
    llepd_ccost_buf b;
    LlepPb__ClusterLayer out = LLEP_PB__CLUSTER_LAYER__INIT, *in;
    uint8_t *buf;
    size_t n;
    int r;

    out.name = "moe";
    out.cost = llepd_ccost_pack(&b, m);
    n = llep_pb__cluster_layer__get_packed_size(&out);
    buf = malloc(n);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(llep_pb__cluster_layer__pack(&out, buf), n);
    in = llep_pb__cluster_layer__unpack(NULL, n, buf);
    ck_assert_ptr_nonnull(in);
    ck_assert_ptr_nonnull(in->cost);
    r = llepd_ccost_unpack(in->cost, ret, err, len);
    llep_pb__cluster_layer__free_unpacked(in, NULL);
    free(buf);
    return r;
}

START_TEST(same_model_after_the_wire) {
    const char *names[] = { "cpu", "h200" };
    llep_cost_model m, got;
    char err[256] = "";

    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(llep__cost_nominal(names[i], &m), 0);
        /* Figures no decimal prints exactly: they must travel by their bits. */
        m.rate[0] *= 1.0 + 1.0 / 3.0;
        m.chunk_fixed_ns = 1.0 / 7.0;
        m.devices_per_gpu = 1;
        m.devices_per_node = 2;
        ck_assert_int_eq(round_trip(&m, &got, err, sizeof(err)), 0);
        ck_assert_msg(llep__cost_hash(&got) == llep__cost_hash(&m), "%s: hash changed", names[i]);
        ck_assert_uint_eq(got.num_points, m.num_points);
        ck_assert(memcmp(got.rows, m.rows, sizeof(m.rows)) == 0);
        ck_assert(memcmp(got.rate, m.rate, m.num_points * sizeof(double)) == 0);
        ck_assert(memcmp(got.link, m.link, sizeof(m.link)) == 0);
        ck_assert(memcmp(&got.chunk_fixed_ns, &m.chunk_fixed_ns, sizeof(double)) == 0);
        ck_assert_uint_eq(got.devices_per_gpu, 1);
        ck_assert_uint_eq(got.devices_per_node, 2);
    }
}
END_TEST

START_TEST(bad_model_refused) {
    llep_cost_model m, got;
    llepd_ccost_buf b;
    LlepPb__ClusterCost *pb;
    char err[256];

    /* A negative rate fails llep__cost_check, and the message says it is the cost model. */
    ck_assert_int_eq(llep__cost_nominal("cpu", &m), 0);
    m.rate[0] = -1;
    err[0] = 0;
    ck_assert_int_eq(round_trip(&m, &got, err, sizeof(err)), -EINVAL);
    ck_assert_msg(strstr(err, "bad cost model") != NULL, "message: %s", err);

    /* Rows not increasing. */
    ck_assert_int_eq(llep__cost_nominal("cpu", &m), 0);
    m.rows[1] = m.rows[0];
    ck_assert_int_eq(round_trip(&m, &got, err, sizeof(err)), -EINVAL);

    /* A figure changed on the way: the hash names the difference. */
    ck_assert_int_eq(llep__cost_nominal("cpu", &m), 0);
    pb = llepd_ccost_pack(&b, &m);
    b.latency[LLEP_LINK_NODE] += 1;
    err[0] = 0;
    ck_assert_int_eq(llepd_ccost_unpack(pb, &got, err, sizeof(err)), -EPROTO);
    ck_assert_msg(strstr(err, "hash") != NULL, "message: %s", err);

    /* Counts that do not fit the model. */
    pb = llepd_ccost_pack(&b, &m);
    pb->n_latency_ns = 3;
    ck_assert_int_eq(llepd_ccost_unpack(pb, &got, err, sizeof(err)), -EINVAL);
    ck_assert_msg(strstr(err, "link") != NULL, "message: %s", err);
    pb = llepd_ccost_pack(&b, &m);
    pb->n_rate = pb->n_rows - 1;
    ck_assert_int_eq(llepd_ccost_unpack(pb, &got, err, sizeof(err)), -EINVAL);
    pb->n_rows = pb->n_rate = 0;
    ck_assert_int_eq(llepd_ccost_unpack(pb, &got, err, sizeof(err)), -EINVAL);
}
END_TEST

static Suite *ccost_suite(void) {
    Suite *s = suite_create("cluster-cost");
    TCase *tc = tcase_create("wire");

    tcase_add_test(tc, same_model_after_the_wire);
    tcase_add_test(tc, bad_model_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(ccost_suite(), CK_NORMAL);
}
