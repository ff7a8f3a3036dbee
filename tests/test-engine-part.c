/* Tests of the cluster part (daemon/engine/engine-part.c): 2 and 3 nodes played in one process,
 * each with its own engine on the CPU backend, the buffers moved between them with memcpy in phase
 * order. Every output is checked against a float64 reference of DESIGN.md section 4 and must be
 * bit-identical to one engine's step with all N experts on the P devices of the cluster. The CPU
 * backend's device memory is host memory, so the same memcpy moves the buffers of device-wire mode
 * too. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "engine-part.h"
#include "engine.h"
#include "moe-cpu.h"
#include "plan.h"
#include "ref-moe.h"
#include "test-data.h"

#define TOL_F32 1e-5
#define TOL_BF16 1e-2
#define MAX_NODES 4
#define MAX_PL 4
#define SENTINEL 0xa5

/* ---- a cluster layer: shapes, weights, one engine per node and one for the whole ---- */

typedef struct spec {
    uint32_t nodes, pl, m;     /* nodes, devices per node, experts per device */
    uint32_t k, d, h;
    enum llep_dtype dtype;
    enum llep_act act;
    int biases;
    double hot_share;          /* share of slots into the hot experts 0 .. hot-1 */
    uint32_t hot;
    uint32_t max_tokens;       /* tokens per home device drawn in [0, max_tokens] */
    uint64_t seed;
} spec;

typedef struct cluster {
    spec s;
    uint32_t n, p;             /* N and P of the whole layer */
    size_t esz;
    uint64_t rng;
    test_weights wt;           /* as float64 (already rounded to the storage type) and stored */

    llep_engine *whole;        /* N experts on P devices */
    llep_engine *eng[MAX_NODES];
    llep_part *part[MAX_NODES];
    llep_plan plan;

    /* Tokens of each global home device g = node * P_l + local device; y are the outputs of
     * the parts. */
    test_tokens tk;
    void **yw;                 /* outputs of the whole engine */
    llep_engine_batch *b;      /* [P]: node j's batches are b + j * P_l */
    llep_engine_batch *bw;     /* [P] for the whole engine */
    uint64_t *loads[MAX_NODES];

    unsigned wire;             /* bit j: node j's part is in device-wire mode */

    llep_engine_stats st[MAX_NODES];
    llep_engine_stats stw;
    llep_part_traffic tr[MAX_NODES];
} cluster;

/* The float64 reference (ref-moe.c) over each home device's tokens. */
static void make_reference(cluster *c) {
    const spec *s = &c->s;
    llep_ref r = weights_ref(&c->wt, s->d, s->h, s->act);

    tokens_reference(&c->tk, &r, s->k);
}

static llep_engine *make_engine(const cluster *c, uint32_t first, uint32_t n, uint32_t p) {
    const spec *s = &c->s;
    llep_engine_config cfg;
    llep_engine *e = NULL;
    char err[256] = "";

    llep__engine_config_default(&cfg);
    weights_config(&c->wt, &cfg, first, n, s->k, s->d, s->h, s->dtype, s->act, p);
    int r = llep__engine_new(&cfg, &e, err, sizeof(err));
    ck_assert_msg(r == 0, "engine_new: %d %s", r, err);
    return e;
}

/* The expert a slot goes to: skewed onto experts 0 .. hot-1, all native on node 0. */
static int32_t route(void *arg, uint64_t *rng) {
    const cluster *c = arg;
    const spec *s = &c->s;
    if (s->hot < c->n && rng_unit(rng) < s->hot_share)
        return (int32_t)rng_below(rng, s->hot);
    return (int32_t)rng_below(rng, c->n);
}

static void set_batches(cluster *c) {
    for (uint32_t g = 0; g < c->p; g++) {
        c->b[g] = tokens_batch(&c->tk, g, c->tk.y[g]);
        c->bw[g] = tokens_batch(&c->tk, g, c->yw[g]);
    }
}

/* New tokens for every home device (tokens[g] given, or drawn when -1), and their reference. */
static void draw_tokens(cluster *c, const int64_t *want) {
    const spec *s = &c->s;
    for (uint32_t g = 0; g < c->p; g++) {
        uint32_t tk = want && want[g] >= 0 ? (uint32_t)want[g]
                                           : rng_below(&c->rng, s->max_tokens + 1);
        tokens_draw(&c->tk, g, tk, &c->rng, s->k, s->d, s->dtype, route, c);
        free(c->yw[g]);
        c->yw[g] = malloc((size_t)tk * s->d * c->esz + 1);
        ck_assert(c->yw[g]);
        memset(c->tk.y[g], SENTINEL, (size_t)tk * s->d * c->esz);
    }
    set_batches(c);
    make_reference(c);
}

static cluster *cluster_new(const spec *sp) {
    cluster *c = calloc(1, sizeof(*c));
    ck_assert(c);
    c->s = *sp;
    const spec *s = &c->s;
    ck_assert(s->nodes <= MAX_NODES);
    c->rng = s->seed;
    c->p = s->nodes * s->pl;
    c->n = c->p * s->m;
    c->esz = llep__dtype_size(s->dtype);
    size_t n = c->n, d = s->d, h = s->h;

    weights_fill(&c->wt, &c->rng, n, d, h, s->dtype, s->biases);
    c->whole = make_engine(c, 0, c->n, c->p);
    for (uint32_t j = 0; j < s->nodes; j++) {
        char err[256] = "";
        uint32_t per_node = s->pl * s->m;
        c->eng[j] = make_engine(c, j * per_node, per_node, s->pl);
        int r = llep__part_new(c->eng[j], s->nodes, j, &c->part[j], err, sizeof(err));
        ck_assert_msg(r == 0, "part_new: %d %s", r, err);
        ck_assert_ptr_nonnull(c->loads[j] = calloc(n, sizeof(uint64_t)));
    }
    ck_assert_int_eq(llep__plan_init(&c->plan, c->n, c->p), 0);
    tokens_new(&c->tk, c->p);
    c->yw = calloc(c->p, sizeof(*c->yw));
    c->b = calloc(c->p, sizeof(*c->b));
    c->bw = calloc(c->p, sizeof(*c->bw));
    ck_assert(c->yw && c->b && c->bw);
    draw_tokens(c, NULL);
    return c;
}

static void cluster_free(cluster *c) {
    weights_free(&c->wt);
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        llep__part_free(c->part[j]);
        llep__engine_free(c->eng[j]);
        free(c->loads[j]);
    }
    llep__engine_free(c->whole);
    llep__plan_fini(&c->plan);
    tokens_free(&c->tk);
    for (uint32_t g = 0; g < c->p; g++)
        free(c->yw[g]);
    free(c->yw);
    free(c->b);
    free(c->bw);
    free(c);
}

/* ---- one cluster step, phase by phase ---- */

static const llep_engine_batch *node_batches(const cluster *c, uint32_t j) {
    return c->b + (size_t)j * c->s.pl;
}

/* Counts every node's loads and plans their sum on P devices. */
static void count_and_plan(cluster *c, const llep_plan_params *pp) {
    uint64_t *sum = calloc(c->n, sizeof(*sum));
    ck_assert_ptr_nonnull(sum);
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        int r = llep__part_count(c->part[j], node_batches(c, j), c->loads[j]);
        ck_assert_msg(r == 0, "count on node %u: %d %s", j, r, llep__part_error(c->part[j]));
        for (uint32_t x = 0; x < c->n; x++)
            sum[x] += c->loads[j][x];
    }
    ck_assert_int_eq(llep__plan_compute(&c->plan, sum, pp), 0);
    free(sum);
}

static void prepare_all(cluster *c) {
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        int r = llep__part_prepare(c->part[j], &c->plan, (const uint64_t *const *)c->loads,
                                   node_batches(c, j));
        ck_assert_msg(r == 0, "prepare on node %u: %d %s", j, r, llep__part_error(c->part[j]));
    }
}

/* Moves buffer `out` of every node a for node b into buffer `in` of node b for node a. */
static void move_buffers(cluster *c, enum llep_part_buf out, enum llep_part_buf in) {
    for (uint32_t a = 0; a < c->s.nodes; a++)
        for (uint32_t b = 0; b < c->s.nodes; b++) {
            if (a == b)
                continue;
            void *po, *pi;
            uint64_t bo, bi;
            ck_assert_int_eq(llep__part_buffer(c->part[a], out, b, &po, &bo), 0);
            ck_assert_int_eq(llep__part_buffer(c->part[b], in, a, &pi, &bi), 0);
            ck_assert_uint_eq(bo, bi);
            if (bo)
                memcpy(pi, po, bo);
        }
}

/* Each weight block a node receives comes from the node it names, which lists it to send. */
static void move_weights(cluster *c) {
    for (uint32_t b = 0; b < c->s.nodes; b++) {
        uint32_t nin = llep__part_num_weights(c->part[b], 0), nout_to_b = 0;
        for (uint32_t a = 0; a < c->s.nodes; a++)
            for (uint32_t i = 0; i < llep__part_num_weights(c->part[a], 1); i++)
                nout_to_b += llep__part_weights(c->part[a], 1, i)->node == b;
        ck_assert_uint_eq(nin, nout_to_b);
        for (uint32_t i = 0; i < nin; i++) {
            const llep_part_weights *wi = llep__part_weights(c->part[b], 0, i), *wo = NULL;
            ck_assert_uint_lt(wi->node, c->s.nodes);
            ck_assert_uint_ne(wi->node, b);
            llep_part *src = c->part[wi->node];
            for (uint32_t o = 0; o < llep__part_num_weights(src, 1) && !wo; o++) {
                const llep_part_weights *cand = llep__part_weights(src, 1, o);
                if (cand->expert == wi->expert && cand->node == b)
                    wo = cand;
            }
            ck_assert_msg(wo != NULL, "node %u expects expert %u from node %u, which does not "
                          "send it", b, wi->expert, wi->node);
            ck_assert_uint_eq(wo->bytes, wi->bytes);
            ck_assert_uint_eq(wo->bytes, llep__engine_expert_bytes(c->eng[b]));
            memcpy(wi->data, wo->data, wi->bytes);
        }
    }
}

static void compute_all(cluster *c) {
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        int r = llep__part_compute(c->part[j]);
        ck_assert_msg(r == 0, "compute on node %u: %d %s", j, r, llep__part_error(c->part[j]));
    }
}

static void combine_all(cluster *c) {
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        int r = llep__part_combine(c->part[j], &c->st[j]);
        ck_assert_msg(r == 0, "combine on node %u: %d %s", j, r, llep__part_error(c->part[j]));
        llep__part_traffic(c->part[j], &c->tr[j]);
    }
}

/* Plan parameters of policy pol and min_tokens, the others the defaults. */
static llep_plan_params plan_params(enum llep_policy pol, uint64_t min_tokens) {
    llep_plan_params pp;

    llep__plan_params_default(&pp);
    pp.policy = pol;
    pp.min_tokens = min_tokens;
    return pp;
}

/* The phases of a step up to prepare (computed false) or up to compute (true). */
static void step_until(cluster *c, const llep_plan_params *pp, bool computed) {
    count_and_plan(c, pp);
    prepare_all(c);
    if (computed) {
        move_buffers(c, LLEP_PART_ROWS_OUT, LLEP_PART_ROWS_IN);
        move_weights(c);
        compute_all(c);
    }
}

static void cluster_step(cluster *c, const llep_plan_params *pp) {
    step_until(c, pp, true);
    move_buffers(c, LLEP_PART_RESULTS_OUT, LLEP_PART_RESULTS_IN);
    combine_all(c);
}

static void abort_all(cluster *c) {
    for (uint32_t j = 0; j < c->s.nodes; j++)
        llep__part_abort(c->part[j]);
}

/* Device-wire mode for the nodes in mask (bit j: node j), host mode for the others. */
static void set_wire(cluster *c, unsigned mask) {
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        int r = llep__part_set_device_wire(c->part[j], (int)(mask >> j & 1));
        ck_assert_msg(r == 0, "set_device_wire on node %u: %d %s", j, r,
                      llep__part_error(c->part[j]));
    }
    c->wire = mask;
}

/* Device-0 bytes that node j's device-wire mode adds to host mode's: every buffer crossing
 * nodes but RESULTS_IN, which host mode holds on device 0 too. */
static uint64_t wire_extra(const cluster *c, uint32_t j) {
    const llep_part_traffic *tr = &c->tr[j];
    uint64_t rb = (uint64_t)c->s.d * c->esz, fb = (uint64_t)c->s.d * sizeof(float);

    if (!(c->wire >> j & 1))
        return 0;
    return tr->rows_out * rb + tr->rows_in * (rb + fb) +
           ((uint64_t)tr->weights_in + tr->weights_out) * llep__engine_expert_bytes(c->eng[j]);
}

/* ---- checks ---- */

static double rel_err_ref(const cluster *c) {
    double num = 0, den = 0;
    for (uint32_t g = 0; g < c->p; g++)
        for (size_t i = 0; i < (size_t)c->tk.tokens[g] * c->s.d; i++) {
            double y = load(c->tk.y[g], i, c->s.dtype), r = c->tk.ref[g][i];
            if (!isfinite(y))
                return INFINITY;
            num += (y - r) * (y - r);
            den += r * r;
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void fill_sentinel(cluster *c) {
    for (uint32_t g = 0; g < c->p; g++)
        memset(c->tk.y[g], SENTINEL, (size_t)c->tk.tokens[g] * c->s.d * c->esz);
}

static int all_sentinel(const cluster *c) {
    for (uint32_t g = 0; g < c->p; g++) {
        const unsigned char *y = c->tk.y[g];
        for (size_t i = 0; i < (size_t)c->tk.tokens[g] * c->s.d * c->esz; i++)
            if (y[i] != SENTINEL)
                return 0;
    }
    return 1;
}

/* Rows and weight blocks crossing nodes, counted from the plan and the tokens in the global
 * order, without the part's bookkeeping. */
static void brute_traffic(const cluster *c, llep_part_traffic *ret) {
    const llep_plan *pl = &c->plan;
    uint32_t pln = c->s.pl;
    uint64_t *rank = calloc(c->n, sizeof(*rank));
    ck_assert_ptr_nonnull(rank);
    memset(ret, 0, c->s.nodes * sizeof(*ret));
    for (uint32_t g = 0; g < c->p; g++)
        for (size_t s = 0; s < (size_t)c->tk.tokens[g] * c->s.k; s++) {
            uint32_t x = (uint32_t)c->tk.idx[g][s];
            uint64_t r = rank[x]++;
            uint32_t dev = UINT32_MAX;
            for (uint32_t i = pl->range_off[x]; i < pl->range_off[x + 1]; i++)
                if (r >= pl->ranges[i].start && r < pl->ranges[i].end)
                    dev = pl->ranges[i].device;
            ck_assert_uint_ne(dev, UINT32_MAX);
            if (dev / pln != g / pln) {
                ret[g / pln].rows_out++;
                ret[dev / pln].rows_in++;
            }
        }
    for (uint32_t t = 0; t < pl->num_transfers; t++) {
        const llep_transfer *tr = &pl->transfers[t];
        int first = 1;
        for (uint32_t u = 0; u < t; u++)
            if (pl->transfers[u].expert == tr->expert &&
                pl->transfers[u].dst / pln == tr->dst / pln)
                first = 0;
        if (first && tr->src / pln != tr->dst / pln) {
            ret[tr->src / pln].weights_out++;
            ret[tr->dst / pln].weights_in++;
        }
    }
    uint64_t eb = llep__engine_expert_bytes(c->whole), rb = (uint64_t)c->s.d * c->esz,
             fb = (uint64_t)c->s.d * sizeof(float);
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        ret[j].bytes_out = ret[j].rows_out * rb + ret[j].rows_in * fb + ret[j].weights_out * eb;
        ret[j].bytes_in = ret[j].rows_in * rb + ret[j].rows_out * fb + ret[j].weights_in * eb;
    }
    free(rank);
}

/* The whole engine on the same tokens and parameters: the same plan, identical outputs, and
 * the nodes' statistics add up to its own. */
static void check_against_whole(cluster *c, const llep_plan_params *pp) {
    int r = llep__engine_step(c->whole, c->bw, pp, &c->stw);
    ck_assert_msg(r == 0, "whole step: %d %s", r, llep__engine_error(c->whole));
    const llep_plan *pw = llep__engine_plan(c->whole);
    ck_assert_uint_eq(llep__plan_hash(pw), llep__plan_hash(&c->plan));
    for (uint32_t g = 0; g < c->p; g++)
        ck_assert_msg(memcmp(c->tk.y[g], c->yw[g], (size_t)c->tk.tokens[g] * c->s.d * c->esz) == 0,
                      "home device %u: the cluster's output differs from the engine's", g);

    uint64_t slots = 0, transfers = 0, wbytes = 0, tbytes = 0;
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        const llep_engine_stats *st = &c->st[j];
        ck_assert_int_eq(st->mode, c->stw.mode);
        ck_assert(st->imbalance == c->stw.imbalance);
        ck_assert_uint_eq(st->capacity, c->stw.capacity);
        ck_assert_uint_eq(st->num_devices, c->s.pl);
        slots += st->slots;
        transfers += st->transfers;
        wbytes += st->weight_bytes_moved;
        tbytes += st->token_bytes_moved;
        uint64_t max_busy = 0;
        for (uint32_t d = 0; d < c->s.pl; d++) {
            const llep_engine_device_stats *a = &st->devices[d];
            const llep_engine_device_stats *b = &c->stw.devices[j * c->s.pl + d];
            ck_assert_uint_eq(a->rows, b->rows);
            ck_assert_uint_eq(a->chunks, b->chunks);
            ck_assert_uint_eq(a->experts_received, b->experts_received);
            ck_assert_uint_eq(a->weight_bytes_in, b->weight_bytes_in);
            ck_assert_uint_eq(a->token_bytes_in, b->token_bytes_in);
            ck_assert_uint_eq(a->held_bytes, b->held_bytes);
            /* Device 0 of a node also holds the results its rows bring back, and in
             * device-wire mode the other buffers crossing nodes. */
            uint64_t back = d == 0 ? c->tr[j].rows_out * c->s.d * sizeof(float) +
                                     wire_extra(c, j)
                                   : 0;
            ck_assert_uint_eq(a->peak_bytes, b->peak_bytes + back);
            ck_assert_uint_eq(a->budget_bytes, b->budget_bytes);
            if (a->busy_ns > max_busy)
                max_busy = a->busy_ns;
        }
        ck_assert_uint_eq(st->makespan_ns, max_busy);
    }
    ck_assert_uint_eq(slots, c->stw.slots);
    ck_assert_uint_eq(transfers, c->stw.transfers);
    ck_assert_uint_eq(wbytes, c->stw.weight_bytes_moved);
    ck_assert_uint_eq(tbytes, c->stw.token_bytes_moved);
}

static void check_traffic(const cluster *c) {
    llep_part_traffic want[MAX_NODES];
    uint64_t rows = 0;
    uint32_t weights = 0;
    brute_traffic(c, want);
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        ck_assert_uint_eq(c->tr[j].rows_out, want[j].rows_out);
        ck_assert_uint_eq(c->tr[j].rows_in, want[j].rows_in);
        ck_assert_uint_eq(c->tr[j].weights_out, want[j].weights_out);
        ck_assert_uint_eq(c->tr[j].weights_in, want[j].weights_in);
        ck_assert_uint_eq(c->tr[j].bytes_out, want[j].bytes_out);
        ck_assert_uint_eq(c->tr[j].bytes_in, want[j].bytes_in);
        rows += want[j].rows_out;
        weights += want[j].weights_out;
    }
    /* The planner's own count agrees: the same rows; its transfers, one per helper device,
     * are at least the blocks sent once per node. */
    uint64_t prows = 0;
    uint32_t ptransfers = 0;
    ck_assert_int_eq(llep__plan_node_traffic(&c->plan, c->s.pl, (const uint64_t *const *)c->loads,
                                             c->s.nodes, &prows, &ptransfers), 0);
    ck_assert_uint_eq(prows, rows);
    ck_assert_uint_le(weights, ptransfers);
    if (ptransfers > 0)
        ck_assert_uint_gt(weights, 0);
}

/* Counts of every node's loads from the tokens, for llep__part_count(). */
static void check_counts(const cluster *c) {
    for (uint32_t j = 0; j < c->s.nodes; j++)
        for (uint32_t x = 0; x < c->n; x++) {
            uint64_t want = 0;
            for (uint32_t d = 0; d < c->s.pl; d++) {
                uint32_t g = j * c->s.pl + d;
                for (size_t s = 0; s < (size_t)c->tk.tokens[g] * c->s.k; s++)
                    want += (uint32_t)c->tk.idx[g][s] == x;
            }
            ck_assert_uint_eq(c->loads[j][x], want);
        }
}

static uint32_t cross_node_weights; /* seen in this test's process */

/* A full step with every check; devices_per_node for the planner's hierarchical placement. */
static void step_and_check_hier(cluster *c, enum llep_policy pol, uint64_t min_tokens,
                                uint32_t devices_per_node) {
    llep_plan_params pp = plan_params(pol, min_tokens);
    pp.devices_per_node = devices_per_node;
    fill_sentinel(c);
    cluster_step(c, &pp);
    check_counts(c);
    double err = rel_err_ref(c), tol = c->s.dtype == LLEP_DTYPE_F32 ? TOL_F32 : TOL_BF16;
    ck_assert_msg(err <= tol, "policy %d: relative L2 error %g > %g (%u nodes x %u devices, M %u "
                  "K %u D %u H %u dtype %d act %d biases %d)", pol, err, tol, c->s.nodes,
                  c->s.pl, c->s.m, c->s.k, c->s.d, c->s.h, c->s.dtype, c->s.act, c->s.biases);
    check_traffic(c);
    check_against_whole(c, &pp);
    if (pol == LLEP_POLICY_EP)
        ck_assert_int_eq(c->plan.mode, LLEP_PLAN_EP);
    for (uint32_t j = 0; j < c->s.nodes; j++)
        cross_node_weights += c->tr[j].weights_in;
}

static void step_and_check(cluster *c, enum llep_policy pol, uint64_t min_tokens) {
    step_and_check_hier(c, pol, min_tokens, 0);
}

/* ---- the tests ---- */

static spec matrix_spec(int i) {
    spec s = { .nodes = i & 1 ? 3 : 2, .pl = 2, .m = 2, .k = 3, .d = 24, .h = 40,
               .hot_share = 0.7, .hot = 1, .max_tokens = 24 };
    s.dtype = i >> 1 & 1 ? LLEP_DTYPE_BF16 : LLEP_DTYPE_F32;
    s.biases = i >> 2 & 1;
    s.act = i >> 3 & 1 ? LLEP_ACT_SWIGLU_OAI : LLEP_ACT_SWIGLU;
    s.seed = 0xc1u + (uint64_t)i * 7919;
    return s;
}

/* 2 and 3 nodes, both storage types, with and without biases, both activations; EP, LLEP
 * and AUTO over several steps (the host buffers grow and are reused). */
START_TEST(test_matrix) {
    spec s = matrix_spec(_i);
    cluster *c = cluster_new(&s);
    cross_node_weights = 0;
    for (int step = 0; step < 3; step++) {
        if (step)
            draw_tokens(c, NULL);
        step_and_check(c, LLEP_POLICY_EP, 1024);
        step_and_check(c, LLEP_POLICY_LLEP, 1 + (uint64_t)step);
        step_and_check(c, LLEP_POLICY_AUTO, 4);
    }
    ck_assert_msg(cross_node_weights > 0, "no expert crossed nodes: the test proves little");
    fprintf(stderr, "test_matrix %d: %u nodes, %u weight blocks crossed nodes\n", _i, s.nodes,
            cross_node_weights);
    cluster_free(c);
}
END_TEST

/* Random shapes: 1 to 3 devices per node, up to 4 experts each, top-k up to 4; flat and
 * hierarchical (spill within the node first) plans. */
START_TEST(test_random_shapes) {
    uint64_t rng = 0x5eed0000u + (uint64_t)_i;
    spec s = { 0 };
    s.nodes = 2 + rng_below(&rng, 2);
    s.pl = 1 + rng_below(&rng, 3);
    s.m = 1 + rng_below(&rng, 4);
    s.k = 1 + rng_below(&rng, 4);
    s.d = 1 + rng_below(&rng, 48);
    s.h = 1 + rng_below(&rng, 64);
    s.dtype = rng_below(&rng, 2) ? LLEP_DTYPE_BF16 : LLEP_DTYPE_F32;
    s.act = rng_below(&rng, 2) ? LLEP_ACT_SWIGLU_OAI : LLEP_ACT_SWIGLU;
    s.biases = (int)rng_below(&rng, 2);
    s.hot_share = 0.5 + 0.45 * rng_unit(&rng);
    s.hot = 1 + rng_below(&rng, 2);
    s.max_tokens = 1 + rng_below(&rng, 30);
    s.seed = rng_next(&rng);
    cluster *c = cluster_new(&s);
    for (int step = 0; step < 2; step++) {
        if (step)
            draw_tokens(c, NULL);
        step_and_check(c, LLEP_POLICY_LLEP, 1 + rng_below(&rng, 4));
        step_and_check(c, LLEP_POLICY_EP, 1024);
        step_and_check_hier(c, LLEP_POLICY_LLEP, 1 + rng_below(&rng, 4), s.pl);
    }
    cluster_free(c);
}
END_TEST

/* A node whose devices have no tokens still computes what the others send it; a step with no
 * tokens anywhere works too. */
START_TEST(test_node_without_tokens) {
    spec s = { .nodes = 3, .pl = 2, .m = 2, .k = 2, .d = 16, .h = 24, .dtype = LLEP_DTYPE_F32,
               .hot_share = 0.9, .hot = 1, .max_tokens = 30, .seed = 0x70 };
    cluster *c = cluster_new(&s);
    int64_t want[6] = { 30, 25, -1, -1, 0, 0 };
    draw_tokens(c, want);
    step_and_check(c, LLEP_POLICY_LLEP, 1);
    ck_assert_uint_eq(c->st[2].slots, 0);
    ck_assert_uint_gt(c->st[2].devices[0].rows + c->st[2].devices[1].rows, 0);
    ck_assert_uint_gt(c->tr[2].rows_in, 0);
    ck_assert_uint_eq(c->tr[2].rows_out, 0);
    step_and_check(c, LLEP_POLICY_EP, 1024);

    int64_t none[6] = { 0, 0, 0, 0, 0, 0 };
    draw_tokens(c, none);
    step_and_check(c, LLEP_POLICY_LLEP, 1);
    for (uint32_t j = 0; j < s.nodes; j++) {
        ck_assert_uint_eq(c->st[j].slots, 0);
        ck_assert_uint_eq(c->tr[j].bytes_in + c->tr[j].bytes_out, 0);
        for (uint32_t d = 0; d < s.pl; d++)
            ck_assert_uint_eq(c->st[j].devices[d].peak_bytes, c->st[j].devices[d].held_bytes);
    }
    cluster_free(c);
}
END_TEST

/* Plans and loads that do not agree with each other or with the node's batches. */
START_TEST(test_plan_mismatch) {
    spec s = { .nodes = 2, .pl = 2, .m = 2, .k = 2, .d = 8, .h = 8, .dtype = LLEP_DTYPE_F32,
               .hot_share = 0.8, .hot = 1, .max_tokens = 10, .seed = 0x80 };
    cluster *c = cluster_new(&s);
    int64_t want[4] = { 10, 10, 10, 10 };
    draw_tokens(c, want);
    llep_plan_params pp = plan_params(LLEP_POLICY_LLEP, 1);
    const uint64_t *const *nl = (const uint64_t *const *)c->loads;
    count_and_plan(c, &pp);

    /* The plan's loads are not the nodes' sum. */
    uint64_t *sum = calloc(c->n, sizeof(*sum));
    ck_assert_ptr_nonnull(sum);
    for (uint32_t x = 0; x < c->n; x++)
        sum[x] = c->loads[0][x] + c->loads[1][x];
    sum[3]++;
    llep_plan other;
    ck_assert_int_eq(llep__plan_init(&other, c->n, c->p), 0);
    ck_assert_int_eq(llep__plan_compute(&other, sum, &pp), 0);
    ck_assert_int_eq(llep__part_prepare(c->part[0], &other, nl, node_batches(c, 0)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(llep__part_error(c->part[0]), "expert 3"));
    llep__plan_fini(&other);

    /* A plan for another shape. */
    ck_assert_int_eq(llep__plan_init(&other, c->n, c->p / 2), 0);
    ck_assert_int_eq(llep__plan_compute(&other, sum, &pp), 0);
    ck_assert_int_eq(llep__part_prepare(c->part[1], &other, nl, node_batches(c, 1)), -EINVAL);
    llep__plan_fini(&other);

    /* Node 0's loads as sent do not match its batches, though the plan matches the sum. */
    uint32_t x0 = 0, x1 = 1;
    while (c->loads[0][x1] == 0)
        x1++;
    c->loads[0][x0]++;
    c->loads[0][x1]--;
    for (uint32_t x = 0; x < c->n; x++)
        sum[x] = c->loads[0][x] + c->loads[1][x];
    ck_assert_int_eq(llep__plan_compute(&c->plan, sum, &pp), 0);
    ck_assert_int_eq(llep__part_prepare(c->part[0], &c->plan, nl, node_batches(c, 0)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(llep__part_error(c->part[0]), "batches"));
    /* Node 1 cannot tell; the caller aborts it when node 0 fails. */
    ck_assert_int_eq(llep__part_prepare(c->part[1], &c->plan, nl, node_batches(c, 1)), 0);
    llep__part_abort(c->part[1]);
    free(sum);

    /* Missing loads, a bad expert index, phases out of order. */
    const uint64_t *holes[2] = { c->loads[0], NULL };
    ck_assert_int_eq(llep__part_prepare(c->part[0], &c->plan, holes, node_batches(c, 0)), -EINVAL);
    ck_assert_int_eq(llep__part_prepare(c->part[0], NULL, nl, node_batches(c, 0)), -EINVAL);
    int32_t saved = c->tk.idx[1][0];
    c->tk.idx[1][0] = (int32_t)c->n;
    ck_assert_int_eq(llep__part_count(c->part[0], node_batches(c, 0), c->loads[0]), -EINVAL);
    ck_assert_ptr_nonnull(strstr(llep__part_error(c->part[0]), "batch 1"));
    c->tk.idx[1][0] = saved;
    ck_assert_int_eq(llep__part_compute(c->part[0]), -EINVAL);
    ck_assert_int_eq(llep__part_combine(c->part[0], NULL), -EINVAL);
    void *p;
    uint64_t bytes;
    ck_assert_int_eq(llep__part_buffer(c->part[0], LLEP_PART_ROWS_OUT, 1, &p, &bytes), -EINVAL);
    ck_assert_uint_eq(llep__part_num_weights(c->part[0], 1), 0);
    ck_assert(all_sentinel(c));

    /* After all that, a good step. */
    step_and_check(c, LLEP_POLICY_LLEP, 1);
    count_and_plan(c, &pp);
    prepare_all(c);
    ck_assert_int_eq(llep__part_buffer(c->part[0], LLEP_PART_ROWS_OUT, 0, &p, &bytes), -EINVAL);
    ck_assert_int_eq(llep__part_buffer(c->part[0], LLEP_PART_ROWS_OUT, 2, &p, &bytes), -EINVAL);
    ck_assert_int_eq(llep__part_buffer(c->part[0], (enum llep_part_buf)4, 1, &p, &bytes), -EINVAL);
    ck_assert_ptr_null(llep__part_weights(c->part[0], 1, 1000));
    ck_assert_int_eq(llep__part_prepare(c->part[0], &c->plan, nl, node_batches(c, 0)), -EINVAL);
    ck_assert_int_eq(llep__part_combine(c->part[0], NULL), -EINVAL);
    abort_all(c);
    cluster_free(c);
}
END_TEST

/* A device budget too small for the step fails prepare with -ENOMEM, naming the device and
 * the budget, before any output is written; with the budget raised the next step works. */
/* The budget tests' layer: 2 nodes of 2 devices, 2 experts each, 20 tokens per home device,
 * 90 % of the slots to expert 0 (native on node 0's device 0); pp for policy pol. */
static cluster *budget_cluster(uint64_t seed, enum llep_policy pol, llep_plan_params *pp,
                               spec *s) {
    *s = (spec){ .nodes = 2, .pl = 2, .m = 2, .k = 2, .d = 16, .h = 32, .dtype = LLEP_DTYPE_F32,
                 .biases = 1, .hot_share = 0.9, .hot = 1, .max_tokens = 20, .seed = seed };
    cluster *c = cluster_new(s);
    int64_t want[4] = { 20, 20, 20, 20 };
    draw_tokens(c, want);
    llep__plan_params_default(pp);
    pp->policy = pol;
    return c;
}

START_TEST(test_budget) {
    spec s;
    llep_plan_params pp;
    cluster *c = budget_cluster(0x90, LLEP_POLICY_EP, &pp, &s);

    /* Expert 0 is hot and native on node 0's device 0. */
    uint64_t held = llep__engine_expert_bytes(c->eng[0]) * s.m;
    ck_assert_int_eq(llep__engine_set_budget(c->eng[0], 0, held + 64), 0);
    count_and_plan(c, &pp);
    int r = llep__part_prepare(c->part[0], &c->plan, (const uint64_t *const *)c->loads,
                               node_batches(c, 0));
    ck_assert_int_eq(r, -ENOMEM);
    const char *msg = llep__part_error(c->part[0]);
    char bytes[32];
    snprintf(bytes, sizeof(bytes), "%llu", (unsigned long long)(held + 64));
    ck_assert_msg(strstr(msg, "node 0 device 0") && strstr(msg, "budget") && strstr(msg, bytes),
                  "message: %s", msg);
    ck_assert_int_eq(llep__part_prepare(c->part[1], &c->plan, (const uint64_t *const *)c->loads,
                                        node_batches(c, 1)), 0);
    abort_all(c);
    ck_assert(all_sentinel(c));

    /* Nothing stayed charged: the budget goes back down to the native weights. */
    ck_assert_int_eq(llep__engine_set_budget(c->eng[0], 0, held), 0);
    ck_assert_int_eq(llep__engine_set_budget(c->eng[0], 0, held + (1ull << 30)), 0);
    step_and_check(c, LLEP_POLICY_EP, 1024);
    step_and_check(c, LLEP_POLICY_LLEP, 1);
    cluster_free(c);
}
END_TEST

/* Everything but the native weights is uncharged: a budget of exactly those holds on every
 * device. Leaves each budget at the default's size. */
static void check_uncharged(cluster *c, uint64_t held) {
    for (uint32_t j = 0; j < c->s.nodes; j++)
        for (uint32_t d = 0; d < c->s.pl; d++) {
            ck_assert_int_eq(llep__engine_set_budget(c->eng[j], d, held), 0);
            ck_assert_int_eq(llep__engine_set_budget(c->eng[j], d, held + (1ull << 30)), 0);
        }
}

/* Steps abandoned after prepare and after compute free what they took; the next steps work
 * and peak at what the whole engine's do. */
START_TEST(test_abort) {
    spec s = { .nodes = 2, .pl = 2, .m = 1, .k = 2, .d = 16, .h = 16, .dtype = LLEP_DTYPE_BF16,
               .act = LLEP_ACT_SWIGLU_OAI, .hot_share = 0.9, .hot = 1, .max_tokens = 20,
               .seed = 0xa0 };
    cluster *c = cluster_new(&s);
    llep_plan_params pp = plan_params(LLEP_POLICY_LLEP, 1);
    uint64_t held = llep__engine_expert_bytes(c->eng[0]) * s.m;

    abort_all(c); /* nothing prepared: harmless */
    for (int phase = 0; phase < 2; phase++) {
        step_until(c, &pp, phase == 1);
        abort_all(c);
        abort_all(c);
        ck_assert(all_sentinel(c));
        check_uncharged(c, held);
        step_and_check(c, LLEP_POLICY_LLEP, 1);
        draw_tokens(c, NULL);
    }
    /* The node engines still run steps of their own. */
    llep_engine_batch none[2] = { { 0 } };
    llep_engine_stats st;
    ck_assert_int_eq(llep__engine_step(c->eng[0], none, NULL, &st), 0);
    ck_assert_uint_eq(st.devices[0].peak_bytes, held);
    step_and_check(c, LLEP_POLICY_AUTO, 2);
    cluster_free(c);
}
END_TEST

/* Bad arguments to llep__part_new, and a backend whose memory is not the host's. */
START_TEST(test_new_errors) {
    spec s = { .nodes = 2, .pl = 1, .m = 2, .k = 1, .d = 4, .h = 4, .dtype = LLEP_DTYPE_F32,
               .max_tokens = 2, .seed = 0xb0 };
    cluster *c = cluster_new(&s);
    llep_part *pt = (llep_part *)c;
    char err[256];
    ck_assert_int_eq(llep__part_new(c->eng[0], 2, 2, &pt, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_null(pt);
    ck_assert_int_eq(llep__part_new(c->eng[0], 0, 0, &pt, err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__part_new(NULL, 2, 0, &pt, err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__part_new(c->eng[0], LLEP_MAX_EXPERTS, 0, &pt, err, sizeof(err)),
                     -EINVAL);
    ck_assert_int_eq(llep__part_new(c->eng[0], 2, 0, &pt, NULL, 0), 0);
    llep__part_free(pt);
    llep__part_free(NULL);

    /* A backend that cannot copy device memory to the host cannot run a part. */
    llep_backend_ops other = llep__backend_cpu;
    other.name = "other";
    other.download = NULL;
    llep_engine_config cfg;
    llep_engine *e = NULL;
    llep__engine_config_default(&cfg);
    cfg.num_experts = 2;
    cfg.top_k = 1;
    cfg.hidden = cfg.inter = 4;
    cfg.w_gate = c->wt.swg;
    cfg.w_up = c->wt.swu;
    cfg.w_down = c->wt.swd;
    cfg.num_devices = 1;
    cfg.backend = &other;
    ck_assert_int_eq(llep__engine_new(&cfg, &e, err, sizeof(err)), 0);
    ck_assert_int_eq(llep__part_new(e, 2, 0, &pt, err, sizeof(err)), -EOPNOTSUPP);
    ck_assert_ptr_nonnull(strstr(err, "other"));
    llep__engine_free(e);
    cluster_free(c);
}
END_TEST

/* ---- device-wire mode ---- */

/* A step's figures in host mode, kept to compare with the same step in device-wire mode. */
typedef struct figures {
    llep_engine_stats st[MAX_NODES];
    llep_engine_device_stats dev[MAX_NODES][MAX_PL];
    llep_part_traffic tr[MAX_NODES];
} figures;

static void save_figures(const cluster *c, figures *f) {
    ck_assert_uint_eq(c->wire, 0);
    ck_assert_uint_le(c->s.pl, MAX_PL);
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        f->st[j] = c->st[j];
        memcpy(f->dev[j], c->st[j].devices, c->s.pl * sizeof(f->dev[j][0]));
        f->tr[j] = c->tr[j];
    }
}

/* The last step's traffic and statistics are host mode's, but for device 0's peak, which
 * differs by exactly the device-wire buffers. Times are not compared. */
static void check_same_figures(const cluster *c, const figures *f) {
    for (uint32_t j = 0; j < c->s.nodes; j++) {
        const llep_part_traffic *ta = &c->tr[j], *tb = &f->tr[j];
        ck_assert_uint_eq(ta->rows_out, tb->rows_out);
        ck_assert_uint_eq(ta->rows_in, tb->rows_in);
        ck_assert_uint_eq(ta->bytes_out, tb->bytes_out);
        ck_assert_uint_eq(ta->bytes_in, tb->bytes_in);
        ck_assert_uint_eq(ta->weights_out, tb->weights_out);
        ck_assert_uint_eq(ta->weights_in, tb->weights_in);
        const llep_engine_stats *a = &c->st[j], *b = &f->st[j];
        ck_assert_int_eq(a->mode, b->mode);
        ck_assert(a->imbalance == b->imbalance);
        ck_assert_uint_eq(a->capacity, b->capacity);
        ck_assert_uint_eq(a->slots, b->slots);
        ck_assert_uint_eq(a->transfers, b->transfers);
        ck_assert_uint_eq(a->weight_bytes_moved, b->weight_bytes_moved);
        ck_assert_uint_eq(a->token_bytes_moved, b->token_bytes_moved);
        ck_assert_uint_eq(a->num_devices, b->num_devices);
        for (uint32_t d = 0; d < c->s.pl; d++) {
            const llep_engine_device_stats *da = &a->devices[d], *db = &f->dev[j][d];
            ck_assert_uint_eq(da->rows, db->rows);
            ck_assert_uint_eq(da->chunks, db->chunks);
            ck_assert_uint_eq(da->experts_received, db->experts_received);
            ck_assert_uint_eq(da->weight_bytes_in, db->weight_bytes_in);
            ck_assert_uint_eq(da->token_bytes_in, db->token_bytes_in);
            ck_assert_uint_eq(da->held_bytes, db->held_bytes);
            ck_assert_uint_eq(da->budget_bytes, db->budget_bytes);
            ck_assert_uint_eq(da->peak_bytes, db->peak_bytes + (d == 0 ? wire_extra(c, j) : 0));
        }
    }
}

/* Node 0's device 0, and the whole engine's, whose budget the checks compare with it. */
static void set_budget0(cluster *c, uint64_t bytes) {
    ck_assert_int_eq(llep__engine_set_budget(c->eng[0], 0, bytes), 0);
    ck_assert_int_eq(llep__engine_set_budget(c->whole, 0, bytes), 0);
}

/* The matrix's first shapes (2 and 3 nodes, float32 and bfloat16, with and without biases),
 * each step in host mode, then device-wire mode in every part, then in one part only (the
 * layouts do not depend on the mode): the outputs bit-identical to the whole engine's and
 * within the reference's tolerance, traffic and statistics those of host mode. */
START_TEST(test_device_wire) {
    static const struct {
        enum llep_policy pol;
        uint64_t min_tokens;
        int hier;
    } steps[] = {
        { LLEP_POLICY_LLEP, 1, 0 }, { LLEP_POLICY_EP, 1024, 0 },
        { LLEP_POLICY_AUTO, 4, 0 }, { LLEP_POLICY_LLEP, 2, 1 },
    };
    spec s = matrix_spec(_i);
    cluster *c = cluster_new(&s);
    uint64_t rows_crossed = 0;
    uint32_t weights_crossed = 0;

    for (int step = 0; step < 2; step++) {
        if (step)
            draw_tokens(c, NULL);
        for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
            uint32_t dpn = steps[i].hier ? s.pl : 0;
            unsigned masks[2] = { (1u << s.nodes) - 1, 1u << (i % s.nodes) };
            figures host;
            set_wire(c, 0);
            step_and_check_hier(c, steps[i].pol, steps[i].min_tokens, dpn);
            save_figures(c, &host);
            for (int m = 0; m < 2; m++) {
                set_wire(c, masks[m]);
                step_and_check_hier(c, steps[i].pol, steps[i].min_tokens, dpn);
                check_same_figures(c, &host);
            }
            for (uint32_t j = 0; j < s.nodes; j++) {
                rows_crossed += c->tr[j].rows_out;
                weights_crossed += c->tr[j].weights_out;
            }
        }
    }
    ck_assert_msg(rows_crossed > 0 && weights_crossed > 0, "rows %llu, weights %u crossed "
                  "nodes: the test proves little", (unsigned long long)rows_crossed,
                  weights_crossed);
    cluster_free(c);
}
END_TEST

/* Node 0's device 0 has a budget that holds host mode's step but not the device-wire
 * buffers: prepare fails with -ENOMEM naming the device, its budget and the buffers' bytes,
 * before any output is written, and leaves nothing charged. The same step then runs in host
 * mode under that budget, and in device-wire mode under one larger by exactly those bytes. */
START_TEST(test_device_wire_budget) {
    spec s;
    llep_plan_params pp;
    cluster *c = budget_cluster(0x91, LLEP_POLICY_LLEP, &pp, &s);
    pp.min_tokens = 1;
    const uint64_t *const *nl = (const uint64_t *const *)c->loads;
    uint64_t held = llep__engine_expert_bytes(c->eng[0]) * s.m;

    step_and_check(c, LLEP_POLICY_LLEP, 1);
    uint64_t host_peak = c->st[0].devices[0].peak_bytes;
    set_wire(c, 3);
    uint64_t extra = wire_extra(c, 0);  /* the same plan comes again: the same traffic */
    ck_assert_uint_gt(c->tr[0].weights_out, 0);
    ck_assert_uint_gt(c->tr[0].rows_out, 0);

    for (uint64_t budget = host_peak; budget <= host_peak + extra - 1; budget += extra - 1) {
        set_budget0(c, budget);
        fill_sentinel(c);
        count_and_plan(c, &pp);
        ck_assert_int_eq(llep__part_prepare(c->part[0], &c->plan, nl, node_batches(c, 0)),
                         -ENOMEM);
        const char *msg = llep__part_error(c->part[0]);
        char b[32], x[32];
        snprintf(b, sizeof(b), "budget of %llu", (unsigned long long)budget);
        snprintf(x, sizeof(x), "crossing nodes %llu", (unsigned long long)extra);
        ck_assert_msg(strstr(msg, "node 0 device 0") && strstr(msg, b) && strstr(msg, x),
                      "message: %s", msg);
        ck_assert_int_eq(llep__part_prepare(c->part[1], &c->plan, nl, node_batches(c, 1)), 0);
        abort_all(c);
        ck_assert(all_sentinel(c));
        check_uncharged(c, held);
    }

    set_budget0(c, host_peak);
    set_wire(c, 0);
    step_and_check(c, LLEP_POLICY_LLEP, 1);
    ck_assert_uint_eq(c->st[0].devices[0].peak_bytes, host_peak);
    set_budget0(c, host_peak + extra);
    set_wire(c, 3);
    step_and_check(c, LLEP_POLICY_LLEP, 1);
    ck_assert_uint_eq(c->st[0].devices[0].peak_bytes, host_peak + extra);
    cluster_free(c);
}
END_TEST

/* The mode changes only between steps: -EINVAL while a step is prepared or computed, the mode
 * kept. Device-wire steps abandoned after prepare and after compute free every buffer; then
 * the modes alternate from step to step. */
START_TEST(test_device_wire_phases) {
    spec s = { .nodes = 3, .pl = 2, .m = 1, .k = 2, .d = 16, .h = 16, .dtype = LLEP_DTYPE_BF16,
               .act = LLEP_ACT_SWIGLU_OAI, .hot_share = 0.9, .hot = 1, .max_tokens = 20,
               .seed = 0xd0 };
    cluster *c = cluster_new(&s);
    llep_plan_params pp = plan_params(LLEP_POLICY_LLEP, 1);
    uint64_t held = llep__engine_expert_bytes(c->eng[0]) * s.m;

    ck_assert_int_eq(llep__part_set_device_wire(NULL, 1), -EINVAL);
    set_wire(c, 7);
    for (int phase = 0; phase < 2; phase++) {
        step_until(c, &pp, phase == 1);
        for (uint32_t j = 0; j < s.nodes; j++) {
            ck_assert_int_eq(llep__part_set_device_wire(c->part[j], 0), -EINVAL);
            ck_assert_ptr_nonnull(strstr(llep__part_error(c->part[j]), "prepared"));
            ck_assert_int_eq(llep__part_set_device_wire(c->part[j], 1), -EINVAL);
        }
        abort_all(c);
        ck_assert(all_sentinel(c));
        check_uncharged(c, held);
        step_and_check(c, LLEP_POLICY_LLEP, 1); /* still device-wire: its peaks say so */
        draw_tokens(c, NULL);
    }
    for (int step = 0; step < 4; step++) {
        set_wire(c, step & 1 ? 0 : 7);
        step_and_check(c, LLEP_POLICY_AUTO, 2);
        check_uncharged(c, held);
    }
    cluster_free(c);
}
END_TEST

static Suite *part_suite(void) {
    Suite *s = suite_create("engine-part");
    TCase *tc = tcase_create("engine-part");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_matrix, 0, 16);
    tcase_add_loop_test(tc, test_random_shapes, 0, 12);
    tcase_add_test(tc, test_node_without_tokens);
    tcase_add_test(tc, test_plan_mismatch);
    tcase_add_test(tc, test_budget);
    tcase_add_test(tc, test_abort);
    tcase_add_test(tc, test_new_errors);
    tcase_add_loop_test(tc, test_device_wire, 0, 8);
    tcase_add_test(tc, test_device_wire_budget);
    tcase_add_test(tc, test_device_wire_phases);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(part_suite(), CK_ENV);
}
