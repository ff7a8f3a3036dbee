/* The device cost model's arithmetic (cost.h): chunk times from the rate curve, transfer
 * times from the link table, nominal models from datasheet figures, checks and the hash. */
#include "cost.h"
#include "fnv.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

void llep__cost_layer(llep_cost_layer *ret, uint32_t hidden, uint32_t inter, size_t elem,
                      bool with_bias) {
    uint64_t d = hidden, h = inter;

    /* SwiGLU: gate and up (D x H each) then down (H x D), 2 flops per multiply-add. */
    ret->flops_per_row = 6.0 * (double)d * (double)h;
    ret->weight_bytes = 3 * d * h * elem + (with_bias ? (2 * h + d) * elem : 0);
    ret->row_bytes = d * elem;
}

/* log2 of rows >= 1, to about 1e-9: the exponent from the bits of the double, and the
 * mantissa m in [1, 2) through the series of atanh, log2(m) = 2/ln 2 * atanh((m-1)/(m+1)),
 * |z| <= 1/3, to z^17. Plain arithmetic rather than libm's log2(): the planner evaluates
 * thousands of chunk times per plan, and every host gets the same bits from it. */
static double log2_rows(uint64_t rows) {
    double d = (double)rows;
    uint64_t bits;

    memcpy(&bits, &d, sizeof(bits));
    int e = (int)((bits >> 52) & 0x7ff) - 1023;
    bits = (bits & UINT64_C(0x000fffffffffffff)) | UINT64_C(0x3ff0000000000000);
    double m;
    memcpy(&m, &bits, sizeof(m));
    if (m == 1.0)
        return (double)e;
    double z = (m - 1) / (m + 1), z2 = z * z;
    double series = 1.0 / 17;
    series = 1.0 / 15 + z2 * series;
    series = 1.0 / 13 + z2 * series;
    series = 1.0 / 11 + z2 * series;
    series = 1.0 / 9 + z2 * series;
    series = 1.0 / 7 + z2 * series;
    series = 1.0 / 5 + z2 * series;
    series = 1.0 / 3 + z2 * series;
    series = 1.0 + z2 * series;
    return (double)e + 2.8853900817779268 * z * series; /* 2 / ln 2 */
}

void llep__cost_curve_init(llep_cost_curve *c, const llep_cost_model *m, const llep_cost_layer *l) {
    uint32_t n = m->num_points <= LLEP_COST_MAX_POINTS ? m->num_points : LLEP_COST_MAX_POINTS;

    c->num_points = n;
    c->pow2 = true;
    for (uint32_t i = 0; i < n; i++) {
        c->rows[i] = m->rows[i];
        c->rate[i] = m->rate[i];
        c->lg[i] = log2_rows(m->rows[i]);
        c->pow2 = c->pow2 && m->rows[i] == 1u << i;
    }
    c->chunk_fixed_ns = m->chunk_fixed_ns;
    c->flops_per_row = l->flops_per_row;
}

/* The i with rows[i - 1] < rows <= rows[i], for rows[0] < rows < rows[n - 1]. */
static inline uint32_t segment(const llep_cost_curve *c, uint64_t rows) {
    if (c->pow2)
        return 64 - (uint32_t)__builtin_clzll(rows - 1);
    uint32_t lo = 0, i = c->num_points - 1; /* rows[lo] < rows <= rows[i] */
    while (i - lo > 1) {
        uint32_t mid = (lo + i) / 2;
        if (c->rows[mid] < rows)
            lo = mid;
        else
            i = mid;
    }
    return i;
}

/* Time in ns of a chunk of `rows` rows: the fixed cost plus rows * flops / rate, the rate
 * linear in log2(rows) between the curve's points, the first point's rate below it and the
 * last point's beyond it.
 *
 * The work time is never less than at the point below: a rate that grows in proportion to
 * rows (a memory-bound kernel, which takes as long for 5 rows as for 4) interpolated linearly
 * in log2 overshoots between points, and the chunk time would dip by a few per cent, so that
 * a planner would see more rows as cheaper. */
double llep__cost_curve_ns(const llep_cost_curve *c, uint64_t rows) {
    uint32_t n = c->num_points;
    double fpr = c->flops_per_row;

    if (rows == 0)
        return 0;
    if (rows <= c->rows[0])
        return c->chunk_fixed_ns + (double)rows * fpr / c->rate[0];
    if (rows >= c->rows[n - 1])
        return c->chunk_fixed_ns + (double)rows * fpr / c->rate[n - 1];
    uint32_t i = segment(c, rows);
    double dx = c->lg[i] - c->lg[i - 1];
    double t = log2_rows(rows) - c->lg[i - 1];
    if (dx != 1.0) /* points at powers of two are one apart: no division */
        t /= dx;
    double rate = c->rate[i - 1] + t * (c->rate[i] - c->rate[i - 1]);
    /* rows / rate >= rows[i-1] / rate[i-1], multiplied out: one division instead of two. */
    if ((double)rows * c->rate[i - 1] >= (double)c->rows[i - 1] * rate)
        return c->chunk_fixed_ns + (double)rows * fpr / rate;
    return c->chunk_fixed_ns + (double)c->rows[i - 1] * fpr / c->rate[i - 1];
}

double llep__cost_chunk_ns(const llep_cost_model *m, const llep_cost_layer *l, uint64_t rows) {
    llep_cost_curve c;

    if (rows == 0)
        return 0;
    llep__cost_curve_init(&c, m, l);
    return llep__cost_curve_ns(&c, rows);
}

enum llep_link llep__cost_link_kind(const llep_cost_model *m, uint32_t a, uint32_t b) {
    if (a == b)
        return LLEP_LINK_SAME;
    if (m->devices_per_node && a / m->devices_per_node != b / m->devices_per_node)
        return LLEP_LINK_NODE;
    if (!m->devices_per_gpu || a / m->devices_per_gpu == b / m->devices_per_gpu)
        return LLEP_LINK_GPU;
    return LLEP_LINK_PEER;
}

double llep__cost_transfer_ns(const llep_cost_model *m, uint32_t src, uint32_t dst,
                              uint64_t bytes) {
    if (src == dst)
        return 0;
    const llep_cost_link *k = &m->link[llep__cost_link_kind(m, src, dst)];
    return k->latency_ns + (double)bytes * k->ns_per_byte;
}

/* ---- nominal models --------------------------------------------------------------------- */

/* A roofline curve: a chunk of r rows streams the expert's weights once and does r rows of
 * work, so at few rows its rate is r times the flops per weight byte times the memory
 * bandwidth, and at many rows the compute peak caps it. The knee is rounded
 * (rate = 1 / (1/mem + 1/peak)) because real kernels reach neither bound near it. */
static void roofline(llep_cost_model *m, double flops_per_byte_at_1, double bw_bytes_per_ns,
                     double peak_flops_per_ns, uint32_t points) {
    m->num_points = points;
    for (uint32_t i = 0; i < points; i++) {
        uint32_t r = 1u << i;
        double mem = (double)r * flops_per_byte_at_1 * bw_bytes_per_ns;
        m->rows[i] = r;
        m->rate[i] = 1.0 / (1.0 / mem + 1.0 / peak_flops_per_ns);
    }
}

/* 8 x H200 SXM on one HGX board. Datasheet figures, not measurements:
 *   - bf16 dense peak 989 TFLOP/s (NVIDIA H200 datasheet, without sparsity); large grouped
 *     GEMMs reach about 70 % of it, so the curve tops at 700 TFLOP/s = 700000 flops/ns;
 *   - HBM3e 4.8 TB/s (datasheet); small GEMMs stream weights at about 80 % of it, 3.8 TB/s.
 *     With bf16 weights a row costs 2 flops per weight element = 1 flop per weight byte, so
 *     a chunk of r rows runs at about r * 3800 flops/ns until the compute peak (r near 180);
 *   - chunk_fixed 6 us: the SwiGLU chunk is about four kernel launches (gate/up GEMM,
 *     activation, down GEMM, scatter) at about 1.5 us each;
 *   - NVLink 4 through NVSwitch: 900 GB/s bidirectional per GPU, 450 GB/s per direction
 *     (datasheet), 10 us per transfer (cudaMemcpyPeerAsync set-up and synchronisation);
 *   - between nodes: one 400 Gb/s InfiniBand NDR port per GPU = 50 GB/s, 20 us latency
 *     (NCCL's per-message cost across the fabric);
 *   - same GPU (two logical devices on one physical GPU): a device-to-device memcpy, read
 *     plus write of HBM at 4.8 TB/s = about 2.4 TB/s of copy, counted as 3 TB/s nominal with
 *     a 5 us launch. */
static void nominal_h200(llep_cost_model *m) {
    roofline(m, 1.0, 3800.0, 700000.0, 16);
    m->chunk_fixed_ns = 6000;
    m->link[LLEP_LINK_SAME] = (llep_cost_link){ 0, 0 };
    m->link[LLEP_LINK_GPU] = (llep_cost_link){ 5000, 1.0 / 3000.0 };
    m->link[LLEP_LINK_PEER] = (llep_cost_link){ 10000, 1.0 / 450.0 };
    m->link[LLEP_LINK_NODE] = (llep_cost_link){ 20000, 1.0 / 50.0 };
    m->devices_per_gpu = 1;
    m->devices_per_node = 0;
    snprintf(m->backend, sizeof(m->backend), "cuda");
    snprintf(m->device_name, sizeof(m->device_name), "NVIDIA H200 (nominal)");
}

/* The CPU backend: every logical device is a share of one host. Nominal figures for a
 * current server core count, not measurements of this machine (the calibration measures
 * those):
 *   - f32 weights (4 bytes each, 0.5 flop per weight byte per row), streamed at 20 GB/s
 *     (a few DDR5 channels shared by the devices' threads) = 20 bytes/ns;
 *   - peak 200 GFLOP/s = 200 flops/ns (AVX-512 FMA on a handful of cores);
 *   - chunk_fixed 2 us: handing a chunk to the thread pool and waking it;
 *   - between logical devices of the host: memcpy at 10 GB/s with a 1 us call;
 *   - between nodes: 10 Gb/s Ethernet = 1.25 GB/s, 50 us per message over TCP. */
static void nominal_cpu(llep_cost_model *m) {
    roofline(m, 0.5, 20.0, 200.0, 16);
    m->chunk_fixed_ns = 2000;
    m->link[LLEP_LINK_SAME] = (llep_cost_link){ 0, 0 };
    m->link[LLEP_LINK_GPU] = (llep_cost_link){ 1000, 1.0 / 10.0 };
    m->link[LLEP_LINK_PEER] = (llep_cost_link){ 1000, 1.0 / 10.0 };
    m->link[LLEP_LINK_NODE] = (llep_cost_link){ 50000, 1.0 / 1.25 };
    m->devices_per_gpu = 0;
    m->devices_per_node = 0;
    snprintf(m->backend, sizeof(m->backend), "cpu");
    snprintf(m->device_name, sizeof(m->device_name), "host CPU (nominal)");
}

int llep__cost_nominal(const char *name, llep_cost_model *ret) {
    if (!name || !ret)
        return -EINVAL;
    memset(ret, 0, sizeof(*ret));
    if (strcmp(name, "h200") == 0)
        nominal_h200(ret);
    else if (strcmp(name, "cpu") == 0)
        nominal_cpu(ret);
    else
        return -ENOENT;
    return 0;
}

/* ---- checks and hash -------------------------------------------------------------------- */

static int bad(char *err, size_t errlen, const char *what, long i) {
    if (err && errlen) {
        if (i >= 0)
            snprintf(err, errlen, "%s (point or link %ld)", what, i);
        else
            snprintf(err, errlen, "%s", what);
    }
    return -EINVAL;
}

static bool cost_ok(double x) {
    return isfinite(x) && x >= 0;
}

int llep__cost_check(const llep_cost_model *m, char *err, size_t errlen) {
    if (!m)
        return bad(err, errlen, "no cost model", -1);
    if (m->num_points == 0 || m->num_points > LLEP_COST_MAX_POINTS)
        return bad(err, errlen, "the rate curve needs 1 to 16 points", -1);
    if (m->rows[0] != 1)
        return bad(err, errlen, "the rate curve must start at 1 row", 0);
    for (uint32_t i = 0; i < m->num_points; i++) {
        if (i > 0 && m->rows[i] <= m->rows[i - 1])
            return bad(err, errlen, "the curve's rows must increase strictly", i);
        if (!isfinite(m->rate[i]) || !(m->rate[i] > 0))
            return bad(err, errlen, "rates must be finite and > 0", i);
    }
    if (!cost_ok(m->chunk_fixed_ns))
        return bad(err, errlen, "the fixed cost per chunk must be finite and >= 0", -1);
    double prev = 0;
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        if (!cost_ok(m->link[k].latency_ns) || !cost_ok(m->link[k].ns_per_byte))
            return bad(err, errlen, "link costs must be finite and >= 0", k);
        double mib = m->link[k].latency_ns + 1048576.0 * m->link[k].ns_per_byte;
        if (mib < prev)
            return bad(err, errlen, "a link kind is cheaper than a nearer one at 1 MiB", k);
        prev = mib;
    }
    return 0;
}

static uint64_t fnv_double(uint64_t h, double x) {
    uint64_t bits;

    memcpy(&bits, &x, sizeof(bits));
    return llep__fnv_u64(h, bits);
}

/* The figures only, not the backend or device names: two nodes whose models agree in every
 * figure plan the same steps whatever their hardware is called. Points past num_points are
 * not part of the model and do not count. */
uint64_t llep__cost_hash(const llep_cost_model *m) {
    uint64_t h = LLEP_FNV_OFFSET;
    uint32_t n = m->num_points <= LLEP_COST_MAX_POINTS ? m->num_points : LLEP_COST_MAX_POINTS;

    h = llep__fnv_u64(h, m->num_points);
    for (uint32_t i = 0; i < n; i++) {
        h = llep__fnv_u64(h, m->rows[i]);
        h = fnv_double(h, m->rate[i]);
    }
    h = fnv_double(h, m->chunk_fixed_ns);
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        h = fnv_double(h, m->link[k].latency_ns);
        h = fnv_double(h, m->link[k].ns_per_byte);
    }
    h = llep__fnv_u64(h, m->devices_per_gpu);
    h = llep__fnv_u64(h, m->devices_per_node);
    return h;
}
