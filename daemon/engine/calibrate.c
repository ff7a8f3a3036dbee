/* Calibration of the device cost model (calibrate.h): chunk times at 1, 2, 4, ... rows and
 * transfer times, measured on the devices' backend under one turn. */
#include "calibrate.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe-cpu.h"

/* The expert whose one-row chunk stands for the fixed cost of any chunk. */
#define TINY_DIM 64u
/* The smaller transfer: its time is nearly all latency. */
#define SMALL_TRANSFER 4096u
/* Transfers measured per size (median). */
#define TRANSFER_REPS 5u

void llep__calibrate_defaults(const char *backend, llep_calibrate_options *ret) {
    memset(ret, 0, sizeof(*ret));
    ret->reps = 5;
    if (!backend || strcmp(backend, "cpu") == 0) {
        /* A few hundred ms on one core: every test llepd without a stored file pays it. Past
         * 256 rows (LLEP_FFN_TILE_ROWS) the CPU's rate no longer changes. */
        ret->hidden = ret->inter = 512;
        ret->dtype = LLEP_DTYPE_F32;
        ret->max_rows = 512;
        ret->transfer_bytes = 16u << 20;
        return;
    }
    /* A GPU: gpt-oss's expert shape in bf16, up to the prefill sizes where cuBLAS peaks. */
    ret->hidden = ret->inter = 2880;
    ret->dtype = LLEP_DTYPE_BF16;
    ret->max_rows = 32768;
    ret->transfer_bytes = 256u << 20;
}

static uint64_t wall_ns(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, uint32_t n) {
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- buffers ----------------------------------------------------------------------------- */

/* One block of device memory from the backend itself, not charged to the devices' account:
 * it lives only inside the calibration's one turn, when no step runs and no layer allocates,
 * and the account's figures (peak, largest step, the replica cache's auto limit) are the
 * layers', which calibration must not change. */
typedef struct block {
    uint32_t dev;
    uint64_t bytes;
    void *ptr;
} block;

#define MAX_BLOCKS 12u

typedef struct calib {
    llep_devices *dv;
    /* The devices' view of the backend (devices.h): a failed logical device's calls go to the
     * device serving it, as a step's do. raw: the backend itself, for describe. */
    const llep_backend_ops *ops;
    llep_backend *be, *raw;
    block blocks[MAX_BLOCKS];
    uint32_t nblocks;
    char *err;
    size_t errlen;
} calib;

static int fail(calib *c, int r, const char *what) {
    snprintf(c->err, c->errlen, "calibration: %s: %s", what, strerror(-r));
    return r;
}

/* Allocates bytes on dev and fills them from host memory (NULL: left as they are). */
static int get_block(calib *c, uint32_t dev, uint64_t bytes, const void *fill, void **ret) {
    block *b = &c->blocks[c->nblocks];
    int r = bytes > SIZE_MAX ? -ENOMEM : c->ops->alloc(c->be, dev, (size_t)bytes, &b->ptr);

    if (r < 0) {
        char what[96];
        snprintf(what, sizeof(what), "%llu bytes on device %u",
                 (unsigned long long)bytes, dev);
        return fail(c, r, what);
    }
    b->dev = dev;
    b->bytes = bytes;
    c->nblocks++;
    *ret = b->ptr;
    if (fill && (r = c->ops->copy(c->be, dev, b->ptr, fill, bytes)) == 0)
        r = c->ops->sync(c->be);
    return r < 0 ? fail(c, r, "copying to the device") : 0;
}

static void put_blocks(calib *c) {
    for (uint32_t i = 0; i < c->nblocks; i++)
        c->ops->free(c->be, c->blocks[i].dev, c->blocks[i].ptr);
    c->nblocks = 0;
}

/* Host memory of n elements of dtype with small values in [-1/16, 1/16]: well inside every
 * activation's range, and no zeros or denormals that a GEMM could treat differently. */
static void *host_values(size_t n, enum llep_dtype dtype) {
    size_t es = llep__dtype_size(dtype);
    void *h = malloc(n > 0 ? n * es : 1);

    if (!h)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        float v = (float)((int)((i * 2654435761u) % 255u) - 127) / 2032.0f + 1.0f / 4096.0f;
        if (dtype == LLEP_DTYPE_BF16)
            ((uint16_t *)h)[i] = llep_f32_to_bf16(v);
        else
            ((float *)h)[i] = v;
    }
    return h;
}

/* ---- chunks ------------------------------------------------------------------------------ */

typedef struct expert {
    llep_expert_chunk chunk;   /* weights, x, y and scratch set; rows per run */
    uint32_t max_rows;
} expert;

/* An expert of shape D x H on device 0 with room for max_rows rows. */
static int make_expert(calib *c, uint32_t hidden, uint32_t inter, enum llep_dtype dtype,
                       uint32_t max_rows, expert *ret) {
    size_t es = llep__dtype_size(dtype), w = (size_t)hidden * inter;
    size_t xn = (size_t)max_rows * hidden;
    void *h = host_values(w > xn ? w : xn, dtype);
    void *p[5];
    int r = h ? 0 : fail(c, -ENOMEM, "host buffer");

    memset(ret, 0, sizeof(*ret));
    ret->chunk.shape = (llep_ffn_shape){ .hidden = hidden, .inter = inter, .dtype = dtype,
                                        .act = LLEP_ACT_SWIGLU };
    ret->max_rows = max_rows;
    for (int i = 0; i < 3 && r == 0; i++)
        r = get_block(c, 0, w * es, h, &p[i]);
    if (r == 0)
        r = get_block(c, 0, xn * es, h, &p[3]);
    if (r == 0)
        r = get_block(c, 0, (uint64_t)max_rows * hidden * sizeof(float), NULL, &p[4]);
    uint64_t sb = llep__ffn_scratch_bytes(&ret->chunk.shape, max_rows);
    void *scratch = NULL;
    if (r == 0)
        r = get_block(c, 0, sb, NULL, &scratch);
    free(h);
    if (r < 0)
        return r;
    ret->chunk.w_gate = p[0];
    ret->chunk.w_up = p[1];
    ret->chunk.w_down = p[2];
    ret->chunk.x = p[3];
    ret->chunk.y = p[4];
    ret->chunk.scratch = scratch;
    return 0;
}

/* Device time in ns of one chunk of rows rows on device 0. */
static int time_chunk(calib *c, expert *e, uint32_t rows, double *ret) {
    uint64_t b0 = c->ops->busy_ns(c->be, 0);
    uint64_t w0 = wall_ns();

    e->chunk.rows = rows;
    int r = c->ops->run_chunk(c->be, 0, &e->chunk);
    if (r == 0)
        r = c->ops->sync(c->be);
    if (r < 0)
        return fail(c, r, "running a chunk");
    uint64_t busy = c->ops->busy_ns(c->be, 0) - b0;
    /* A backend that counts no busy time for it: the wall clock, which then includes the
     * sync. */
    *ret = busy ? (double)busy : (double)(wall_ns() - w0);
    return 0;
}

/* The curve: t[i] the median device time of a chunk of 1 << i rows, i < npoints, after one
 * warm-up pass. Passes go over every size in turn, so that a slow moment of the machine
 * spreads over all sizes instead of bending the curve at one. */
static int measure_curve(calib *c, expert *e, uint32_t npoints, uint32_t reps, double *t) {
    double *v = calloc((size_t)npoints * reps, sizeof(*v));
    int r = v ? 0 : fail(c, -ENOMEM, "host buffer");
    double ignored;

    for (uint32_t i = 0; i < npoints && r == 0; i++)
        r = time_chunk(c, e, 1u << i, &ignored);
    for (uint32_t k = 0; k < reps && r == 0; k++)
        for (uint32_t i = 0; i < npoints && r == 0; i++)
            r = time_chunk(c, e, 1u << i, &v[(size_t)i * reps + k]);
    for (uint32_t i = 0; i < npoints && r == 0; i++)
        t[i] = median(&v[(size_t)i * reps], reps);
    free(v);
    return r;
}

static int measure_fixed(calib *c, uint32_t reps, enum llep_dtype dtype, double *ret) {
    expert tiny;
    double *v = calloc(reps + 1, sizeof(*v));
    int r = v ? make_expert(c, TINY_DIM, TINY_DIM, dtype, 1, &tiny)
              : fail(c, -ENOMEM, "host buffer");

    for (uint32_t k = 0; k <= reps && r == 0; k++)
        r = time_chunk(c, &tiny, 1, &v[k]);
    if (r == 0)
        *ret = median(v + 1, reps); /* v[0]: the warm-up */
    free(v);
    return r;
}

/* ---- transfers --------------------------------------------------------------------------- */

/* Wall time in ns of copying bytes from src (on device 0) to dst on device dev. */
static int time_copy(calib *c, uint32_t dev, void *dst, const void *src, uint64_t bytes,
                     double *ret) {
    double v[TRANSFER_REPS + 1];
    int r = 0;

    for (uint32_t k = 0; k <= TRANSFER_REPS && r == 0; k++) {
        uint64_t t0 = wall_ns();
        r = c->ops->copy(c->be, dev, dst, src, (size_t)bytes);
        if (r == 0)
            r = c->ops->sync(c->be);
        v[k] = (double)(wall_ns() - t0);
    }
    if (r < 0)
        return fail(c, r, "timing a transfer");
    *ret = median(v + 1, TRANSFER_REPS);
    return 0;
}

/* Latency and ns per byte of copies from device 0 to device dev: the line through a small
 * and a large transfer. */
static int measure_link(calib *c, uint32_t dev, uint64_t bytes, llep_cost_link *ret) {
    void *src, *dst;
    double small, large;
    int r = get_block(c, 0, bytes, NULL, &src);

    if (r == 0)
        r = get_block(c, dev, bytes, NULL, &dst);
    /* Contents do not matter to a copy, but reading memory never written would upset
     * memory checkers: clear the source once from the host. */
    void *zero = r == 0 ? calloc(1, (size_t)bytes) : NULL;
    if (r == 0 && !zero)
        r = fail(c, -ENOMEM, "host buffer");
    if (r == 0 && (r = c->ops->copy(c->be, 0, src, zero, (size_t)bytes)) == 0)
        r = c->ops->sync(c->be);
    free(zero);
    if (r == 0)
        r = time_copy(c, dev, dst, src, SMALL_TRANSFER, &small);
    if (r == 0)
        r = time_copy(c, dev, dst, src, bytes, &large);
    if (r < 0)
        return r;
    /* Noise can make the large copy look no slower than the small one per byte: keep the
     * slope positive (the model needs a bandwidth) and the latency non-negative. */
    double slope = (large - small) / (double)(bytes - SMALL_TRANSFER);
    if (!(slope > 0))
        slope = large / (double)bytes;
    ret->ns_per_byte = slope;
    ret->latency_ns = fmax(0.0, small - slope * SMALL_TRANSFER);
    return 0;
}

/* The physical device of each logical one, 0 for all when the backend does not say. */
static void physical_map(calib *c, uint32_t p, uint32_t *phys, char *name, size_t namelen) {
    snprintf(name, namelen, "%s", c->ops->name);
    for (uint32_t d = 0; d < p; d++) {
        phys[d] = 0;
        if (c->raw->ops->describe) {
            char other[64];
            c->raw->ops->describe(c->raw, d, d == 0 ? name : other,
                                  d == 0 ? namelen : sizeof(other), &phys[d]);
        }
    }
}

/* devices_per_gpu: how many consecutive logical devices share one physical device, when
 * they are grouped evenly in order (the device specs make them so); 0 when all share one.
 * A layout that is not even (cuda:0x2,1x3) gets 1: every pair counts as between GPUs, the
 * dearer guess. */
static uint32_t per_physical(const uint32_t *phys, uint32_t p) {
    uint32_t run = 1;

    while (run < p && phys[run] == phys[0])
        run++;
    if (run == p)
        return 0;
    for (uint32_t d = 0; d < p; d++)
        if (phys[d] != phys[(d / run) * run])
            return 1;
    return p % run == 0 ? run : 1;
}

/* Measures the links the devices have and takes the others from the nominal model, so that
 * the kinds stay ordered from the cheapest (same device) to the dearest (another node). */
static int measure_links(calib *c, const llep_calibrate_options *o, llep_calibration *cal,
                         const uint32_t *phys, uint32_t p) {
    llep_cost_model nom;
    llep_cost_link *l = cal->model.link;
    long same = -1, peer = -1;
    int r = 0;

    if (llep__cost_nominal(strcmp(c->ops->name, "cpu") == 0 ? "cpu" : "h200", &nom) < 0)
        return fail(c, -EIO, "no nominal model for the links it cannot measure");
    memcpy(l, nom.link, sizeof(nom.link));
    l[LLEP_LINK_SAME] = (llep_cost_link){ 0, 0 };
    cal->measured[LLEP_LINK_SAME] = true;
    for (uint32_t d = 1; d < p; d++) {
        if (phys[d] == phys[0] && same < 0)
            same = d;
        if (phys[d] != phys[0] && peer < 0)
            peer = d;
    }
    if (same > 0 && (r = measure_link(c, (uint32_t)same, o->transfer_bytes,
                                      &l[LLEP_LINK_GPU])) == 0)
        cal->measured[LLEP_LINK_GPU] = true;
    if (r == 0 && peer > 0 &&
        (r = measure_link(c, (uint32_t)peer, o->transfer_bytes, &l[LLEP_LINK_PEER])) == 0)
        cal->measured[LLEP_LINK_PEER] = true;
    if (r < 0)
        return r;
    /* P = 1, or one logical device per GPU: no copy within one physical device to time;
     * a copy between GPUs bounds it from above, the nominal figure from wherever it is. */
    if (!cal->measured[LLEP_LINK_GPU] && cal->measured[LLEP_LINK_PEER]) {
        l[LLEP_LINK_GPU].latency_ns = fmin(l[LLEP_LINK_GPU].latency_ns,
                                           l[LLEP_LINK_PEER].latency_ns);
        l[LLEP_LINK_GPU].ns_per_byte = fmin(l[LLEP_LINK_GPU].ns_per_byte,
                                            l[LLEP_LINK_PEER].ns_per_byte);
    }
    /* Unmeasured dearer kinds are at least as dear as the measured cheaper ones, figure by
     * figure, so the order holds at every size whatever the nominal figures say (the host's
     * "between GPUs" is the same memory: the nominal model's, raised to the measured copy). */
    for (int k = LLEP_LINK_GPU + 1; k < LLEP_LINK_KINDS; k++)
        if (!cal->measured[k]) {
            l[k].latency_ns = fmax(l[k].latency_ns, l[k - 1].latency_ns);
            l[k].ns_per_byte = fmax(l[k].ns_per_byte, l[k - 1].ns_per_byte);
        }
    return 0;
}

/* ---- the model --------------------------------------------------------------------------- */

/* Rates from the chunk times, less the fixed cost. Two corrections, both to what the planner
 * assumes of hardware rather than what one measurement happened to give:
 *  - the rate never falls as rows grow (running maximum): a bigger chunk runs at least as
 *    efficiently as a smaller one (a GEMM can always run it as smaller ones), so a dip is
 *    noise or a tile boundary, and a curve that dips would make the planner prefer odd chunk
 *    sizes for no real reason;
 *  - a chunk's time never falls as rows grow (the rate grows at most as fast as the rows):
 *    more work never takes less time, which noise between two points of equal time
 *    (small chunks are bound by reading the weights) could otherwise suggest. */
static int make_curve(calib *c, llep_calibration *cal, const double *t, uint32_t npoints,
                      double fixed) {
    llep_cost_model *m = &cal->model;
    double fpr = llep__calibration_flops_per_row(cal);

    /* The tiny chunk is all overhead only if it is well below the real one. */
    if (!(t[0] > 0))
        return fail(c, -EIO, "a chunk took no measurable time");
    m->chunk_fixed_ns = fmin(fixed, 0.5 * t[0]);
    m->num_points = npoints;
    for (uint32_t i = 0; i < npoints; i++) {
        uint32_t rows = 1u << i;
        double work = t[i] - m->chunk_fixed_ns;
        double rate = work > 0 ? (double)rows * fpr / work : 0;
        m->rows[i] = rows;
        if (i > 0) {
            rate = fmax(rate, m->rate[i - 1]);
            rate = fmin(rate, m->rate[i - 1] * 2.0);
        }
        if (!(rate > 0) || !isfinite(rate))
            return fail(c, -EIO, "a chunk's time gives no rate");
        m->rate[i] = rate;
    }
    return 0;
}

static int check_options(calib *c, const llep_calibrate_options *o) {
    if (o->hidden == 0 || o->inter == 0 || o->hidden > 65536 || o->inter > 65536)
        return fail(c, -EINVAL, "the reference shape must be 1 to 65536 in both dimensions");
    if (o->max_rows == 0 || (o->max_rows & (o->max_rows - 1)) ||
        o->max_rows > (1u << (LLEP_COST_MAX_POINTS - 1)))
        return fail(c, -EINVAL, "max_rows must be a power of two up to 32768");
    if (o->reps == 0 || o->reps > 101)
        return fail(c, -EINVAL, "repetitions must be 1 to 101");
    if (o->transfer_bytes <= 2 * SMALL_TRANSFER)
        return fail(c, -EINVAL, "the transfer must be larger than 8 KiB");
    return 0;
}

/* Everything under the turn: the backend is not safe for two callers. */
static int measure(calib *c, const llep_calibrate_options *o, llep_calibration *cal) {
    uint32_t p = llep__devices_count(c->dv);
    uint32_t *phys = calloc(p, sizeof(*phys));
    uint32_t npoints = 1;
    double t[LLEP_COST_MAX_POINTS], fixed = 0;
    expert e;
    int r = phys ? 0 : fail(c, -ENOMEM, "host buffer");

    while ((1u << (npoints - 1)) < o->max_rows)
        npoints++;
    if (r == 0) {
        physical_map(c, p, phys, cal->model.device_name, sizeof(cal->model.device_name));
        cal->model.devices_per_gpu = per_physical(phys, p);
        cal->model.devices_per_node = 0; /* this node's devices; clusters set their own */
        r = make_expert(c, o->hidden, o->inter, o->dtype, o->max_rows, &e);
    }
    if (r == 0)
        r = measure_curve(c, &e, npoints, o->reps, t);
    put_blocks(c);
    if (r == 0)
        r = measure_fixed(c, o->reps, o->dtype, &fixed);
    put_blocks(c);
    if (r == 0)
        r = make_curve(c, cal, t, npoints, fixed);
    if (r == 0)
        r = measure_links(c, o, cal, phys, p);
    put_blocks(c);
    free(phys);
    return r;
}

void llep__calibrate_describe(llep_devices *dv, llep_calibration *ret) {
    llep_backend *be = llep__devices_view(dv);
    calib c = { .dv = dv, .ops = be->ops, .be = be, .raw = llep__devices_backend(dv) };
    uint32_t p = llep__devices_count(dv);
    uint32_t *phys = calloc(p, sizeof(*phys));

    memset(ret, 0, sizeof(*ret));
    ret->devices = p;
    snprintf(ret->model.backend, sizeof(ret->model.backend), "%s", be->ops->name);
    if (!phys) {
        /* Out of memory: a name that matches no stored file, so llepd measures. */
        snprintf(ret->model.device_name, sizeof(ret->model.device_name), "?");
        return;
    }
    llep__devices_turn_wait(dv);
    physical_map(&c, p, phys, ret->model.device_name, sizeof(ret->model.device_name));
    llep__devices_turn_end(dv);
    ret->model.devices_per_gpu = per_physical(phys, p);
    free(phys);
}

int llep__calibrate(llep_devices *dv, const llep_calibrate_options *opt, llep_calibration *ret,
                    char *err, size_t errlen) {
    llep_backend *be = llep__devices_view(dv);
    calib c = { .dv = dv, .ops = be->ops, .be = be, .raw = llep__devices_backend(dv),
                .err = err, .errlen = errlen };
    llep_calibrate_options o;
    uint64_t t0 = wall_ns();

    if (opt)
        o = *opt;
    else
        llep__calibrate_defaults(be->ops->name, &o);
    memset(ret, 0, sizeof(*ret));
    int r = check_options(&c, &o);
    if (r < 0)
        return r;
    ret->hidden = o.hidden;
    ret->inter = o.inter;
    ret->dtype = o.dtype;
    ret->devices = llep__devices_count(dv);
    snprintf(ret->model.backend, sizeof(ret->model.backend), "%s", be->ops->name);
    llep__devices_turn_wait(dv);
    r = measure(&c, &o, ret);
    llep__devices_turn_end(dv);
    if (r < 0)
        return r;
    ret->elapsed_ms = (double)(wall_ns() - t0) / 1e6;
    ret->time = (int64_t)time(NULL);
    char why[200];
    if (llep__cost_check(&ret->model, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "calibration made a model that fails its check: %s", why);
        return -EIO;
    }
    return 0;
}
