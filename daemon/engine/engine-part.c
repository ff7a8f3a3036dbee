/* One node's part of a cluster step (engine-part.h): the engine's devices, memory accounting
 * and backend operations, driven by a global plan over every node's devices, with the rows,
 * results and weights that cross nodes packed into buffers the caller moves: host memory, or
 * in device-wire mode memory of this node's device 0. */
#include "engine-part.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine-internal.h"
#include "errbuf.h"

enum part_state { PART_IDLE, PART_PREPARED, PART_COMPUTED };

#define PART_NUM_BUFS 4

/* A buffer crossing nodes: its host memory is kept between steps and grown when a step needs
 * more; in device-wire mode the step also allocates `bytes` on device 0 (dev), freed with the
 * step. */
typedef struct part_buf {
    void *data;
    uint64_t bytes, cap;
    void *dev;
} part_buf;

struct llep_part {
    llep_engine *e;
    uint32_t nodes, node;
    uint32_t pl;               /* devices per node (the engine's P) */
    uint32_t np, nx;           /* P and N of the cluster layer */
    uint32_t dev0;             /* this node's first global device */
    int device_wire;           /* buffers crossing nodes on device 0 instead of the host */
    char err[256];

    enum part_state state;
    llep_plan plan;            /* copy of the step's global plan */
    const llep_engine_batch *batches;
    uint64_t slots;            /* this node's token-slots */
    uint64_t crossing;         /* of those, computed on another device */
    uint64_t t0;

    uint64_t *loads;           /* [N] this node's loads, recounted by prepare */
    uint64_t *base;            /* [(nodes + 1) * N] base[j * N + x]: node j's first rank of x */
    uint64_t *rank;            /* [N] next rank of this node's slots of each expert */
    uint32_t *cur_range;       /* [N] range holding that rank */
    uint64_t *chunk_row;       /* [max ranges] first row of ranges on this node's devices */
    uint64_t *out_off;         /* [max ranges] first ROWS_OUT row of ranges on other nodes */
    void **recv;               /* [max ranges] received blocks of transfers into this node */
    uint32_t *win_of;          /* [N] WEIGHTS_IN entry of an expert received from another node */
    uint64_t *cursor;          /* [nodes] running row count per node */
    size_t *home_base;         /* [P_l] each home device's first entry in combine_src */
    size_t *count_base;        /* [P_l] the same for llep__part_count() */
    llep_part_weights *wout, *win;  /* [max ranges] */
    uint32_t num_wout, num_win;

    part_buf *bufs;            /* [PART_NUM_BUFS][nodes], by enum llep_part_buf */
    part_buf wbuf;             /* the WEIGHTS_IN blocks */
    part_buf woutbuf;          /* the WEIGHTS_OUT blocks, copied out of their devices */
    void **resdev;             /* [nodes] RESULTS_IN on device 0 for the combines (in
                                * device-wire mode RESULTS_IN itself) */
    uint64_t *resdev_bytes;    /* [nodes] */
    const void **gather_src;   /* [rows computed on this node] */
    const float **combine_src; /* [this node's slots] */
    size_t gather_cap, combine_cap;

    llep_part_traffic traffic;
};

static part_buf *buf_of(llep_part *pt, enum llep_part_buf kind, uint32_t j) {
    return &pt->bufs[(size_t)kind * pt->nodes + j];
}

/* Sizes b to `bytes` bytes and, when host is set, makes its host memory hold them; the
 * contents are not kept when it grows. */
static int buf_reserve(part_buf *b, uint64_t bytes, int host) {
    b->bytes = 0;
    if (host && bytes > b->cap) {
        uint64_t cap = (bytes + 63) & ~(uint64_t)63;
        if (cap < bytes || cap > SIZE_MAX)
            return -ENOMEM;
        void *p = aligned_alloc(64, (size_t)cap);
        if (!p)
            return -ENOMEM;
        free(b->data);
        b->data = p;
        b->cap = cap;
    }
    b->bytes = bytes;
    return 0;
}

static int reserve_ptrs(void *arr, size_t *cap, uint64_t n) {
    void **a = arr;

    if (n <= *cap)
        return 0;
    if (n > SIZE_MAX / sizeof(void *))
        return -ENOMEM;
    void *p = realloc(*a, (size_t)n * sizeof(void *));
    if (!p)
        return -ENOMEM;
    *a = p;
    *cap = (size_t)n;
    return 0;
}

/* The memory of buffer `kind` for node j that the caller moves: the host buffer, or in
 * device-wire mode its device-0 twin (RESULTS_IN being the combines' own copy there). */
static void *wire_data(llep_part *pt, enum llep_part_buf kind, uint32_t j) {
    if (!pt->device_wire)
        return buf_of(pt, kind, j)->data;
    return kind == LLEP_PART_RESULTS_IN ? pt->resdev[j] : buf_of(pt, kind, j)->dev;
}

static uint32_t node_of(const llep_part *pt, uint32_t g) {
    return g / pt->pl;
}

static int on_this_node(const llep_part *pt, uint32_t g) {
    return node_of(pt, g) == pt->node;
}

/* Walks this node's ranges in plan order, expert by expert: start with *i = *x = 0 and step
 * *i after each range; returns false past the last. *x is the range's expert. */
static bool next_local_range(const llep_part *pt, uint32_t *i, uint32_t *x) {
    const llep_plan *pl = &pt->plan;

    for (; *x < pt->nx; (*x)++)
        for (; *i < pl->range_off[*x + 1]; (*i)++)
            if (on_this_node(pt, pl->ranges[*i].device))
                return true;
    return false;
}

/* The ranks of range r that come from node j: [*ret_lo, *ret_lo + count). */
static uint64_t node_share(const llep_part *pt, const llep_range *r, uint32_t x, uint32_t j,
                           uint64_t *ret_lo) {
    uint64_t lo = pt->base[(size_t)j * pt->nx + x], hi = pt->base[(size_t)(j + 1) * pt->nx + x];

    if (lo < r->start)
        lo = r->start;
    if (hi > r->end)
        hi = r->end;
    *ret_lo = lo;
    return hi > lo ? hi - lo : 0;
}

int llep__part_new(llep_engine *e, uint32_t num_nodes, uint32_t node, llep_part **ret,
                   char *err, size_t errlen) {
    llep_part *pt;

    if (!ret)
        return -EINVAL;
    *ret = NULL;
    if (!e)
        return llep__errf(err, errlen, -EINVAL, "no engine");
    if (num_nodes == 0 || node >= num_nodes)
        return llep__errf(err, errlen, -EINVAL, "node %u of %u nodes", node,
                                         num_nodes);
    if ((uint64_t)num_nodes * e->n > LLEP_MAX_EXPERTS ||
        (uint64_t)num_nodes * e->p > LLEP_MAX_DEVICES)
        return llep__errf(err, errlen, -EINVAL, "%u nodes of %u experts on %u "
                                         "devices: too many experts or devices", num_nodes,
                                         e->n, e->p);
    /* In host mode (the default, and what a cluster step falls back to) results and weights
     * leave the node through host memory. */
    if (!e->cfg.backend->download)
        return llep__errf(err, errlen, -EOPNOTSUPP, "the %s backend cannot run "
                                         "a cluster part (it cannot copy device memory to the "
                                         "host)", e->cfg.backend->name);
    pt = calloc(1, sizeof(*pt));
    if (!pt)
        goto nomem;
    pt->e = e;
    pt->nodes = num_nodes;
    pt->node = node;
    pt->pl = e->p;
    pt->np = num_nodes * e->p;
    pt->nx = num_nodes * e->n;
    pt->dev0 = node * e->p;
    if (llep__plan_init(&pt->plan, pt->nx, pt->np) < 0)
        goto nomem;
    size_t n = pt->nx, maxr = 2 * (size_t)pt->nx + pt->np;
    pt->loads = calloc(n, sizeof(*pt->loads));
    pt->base = calloc((num_nodes + 1) * n, sizeof(*pt->base));
    pt->rank = calloc(n, sizeof(*pt->rank));
    pt->cur_range = calloc(n, sizeof(*pt->cur_range));
    pt->chunk_row = calloc(maxr, sizeof(*pt->chunk_row));
    pt->out_off = calloc(maxr, sizeof(*pt->out_off));
    pt->recv = calloc(maxr, sizeof(*pt->recv));
    pt->win_of = calloc(n, sizeof(*pt->win_of));
    pt->cursor = calloc(num_nodes, sizeof(*pt->cursor));
    pt->home_base = calloc(pt->pl, sizeof(*pt->home_base));
    pt->count_base = calloc(pt->pl, sizeof(*pt->count_base));
    pt->wout = calloc(maxr, sizeof(*pt->wout));
    pt->win = calloc(maxr, sizeof(*pt->win));
    pt->bufs = calloc((size_t)PART_NUM_BUFS * num_nodes, sizeof(*pt->bufs));
    pt->resdev = calloc(num_nodes, sizeof(*pt->resdev));
    pt->resdev_bytes = calloc(num_nodes, sizeof(*pt->resdev_bytes));
    if (!pt->loads || !pt->base || !pt->rank || !pt->cur_range || !pt->chunk_row ||
        !pt->out_off || !pt->recv || !pt->win_of || !pt->cursor || !pt->home_base ||
        !pt->count_base || !pt->wout || !pt->win || !pt->bufs || !pt->resdev ||
        !pt->resdev_bytes)
        goto nomem;
    *ret = pt;
    return 0;

nomem:
    llep__part_free(pt);
    return llep__errf(err, errlen, -ENOMEM, "out of host memory");
}

void llep__part_free(llep_part *pt) {
    if (!pt)
        return;
    llep__part_abort(pt);
    llep__plan_fini(&pt->plan);
    if (pt->bufs)
        for (size_t i = 0; i < (size_t)PART_NUM_BUFS * pt->nodes; i++)
            free(pt->bufs[i].data);
    free(pt->bufs);
    free(pt->wbuf.data);
    free(pt->woutbuf.data);
    free(pt->resdev);
    free(pt->resdev_bytes);
    free(pt->loads);
    free(pt->base);
    free(pt->rank);
    free(pt->cur_range);
    free(pt->chunk_row);
    free(pt->out_off);
    free(pt->recv);
    free(pt->win_of);
    free(pt->cursor);
    free(pt->home_base);
    free(pt->count_base);
    free(pt->wout);
    free(pt->win);
    free(pt->gather_src);
    free(pt->combine_src);
    free(pt);
}

const char *llep__part_error(const llep_part *pt) {
    return pt ? pt->err : "no part";
}

int llep__part_set_device_wire(llep_part *pt, int on) {
    if (!pt)
        return -EINVAL;
    pt->err[0] = '\0';
    /* The prepared step's buffers were placed for the mode it was prepared in. */
    if (pt->state != PART_IDLE)
        return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "cannot change the wire mode while a step is prepared "
                         "(combine or abort it first)");
    pt->device_wire = on != 0;
    return 0;
}

int llep__part_count(llep_part *pt, const llep_engine_batch *batches, uint64_t *loads) {
    uint64_t slots;

    if (!pt)
        return -EINVAL;
    pt->err[0] = '\0';
    if (!batches || !loads)
        return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "no batches or no loads");
    return llep__engine_count_batches(pt->e, batches, pt->pl, pt->nx, loads, pt->count_base,
                                      &slots, pt->err, sizeof(pt->err));
}

/* Frees the device buffers of the step; the host buffers stay for the next one. */
static void free_step(llep_part *pt) {
    llep_engine *e = pt->e;

    for (uint32_t t = 0; t < pt->plan.num_transfers; t++)
        if (pt->recv[t])
            llep__engine_dev_free(e, pt->plan.transfers[t].dst - pt->dev0, &pt->recv[t],
                                  e->expert_bytes);
    for (uint32_t d = 0; d < pt->pl; d++)
        llep__engine_device_free(e, d);
    for (uint32_t j = 0; pt->resdev && j < pt->nodes; j++)
        llep__engine_dev_free(e, 0, &pt->resdev[j], pt->resdev_bytes[j]);
    for (size_t i = 0; pt->bufs && i < (size_t)PART_NUM_BUFS * pt->nodes; i++)
        llep__engine_dev_free(e, 0, &pt->bufs[i].dev, pt->bufs[i].bytes);
    llep__engine_dev_free(e, 0, &pt->wbuf.dev, pt->wbuf.bytes);
    llep__engine_dev_free(e, 0, &pt->woutbuf.dev, pt->woutbuf.bytes);
    pt->state = PART_IDLE;
}

void llep__part_abort(llep_part *pt) {
    if (pt && pt->state != PART_IDLE)
        free_step(pt);
}

/* Node j's first rank of each expert, from the per-node loads, checked against the plan. */
static int check_loads(llep_part *pt, const llep_plan *plan, const uint64_t *const *node_loads) {
    uint32_t n = pt->nx;

    for (uint32_t j = 0; j < pt->nodes; j++) {
        if (!node_loads[j])
            return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "no loads for node %u", j);
        for (uint32_t x = 0; x < n; x++) {
            uint64_t b = pt->base[(size_t)j * n + x], v = b + node_loads[j][x];
            if (v < b)
                return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "expert %u: the nodes' loads overflow", x);
            pt->base[(size_t)(j + 1) * n + x] = v;
        }
    }
    for (uint32_t x = 0; x < n; x++) {
        uint64_t sum = pt->base[(size_t)pt->nodes * n + x];
        if (sum != plan->loads[x])
            return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "expert %u: the plan has %" PRIu64 " slots, the "
                             "nodes' loads sum to %" PRIu64, x, plan->loads[x], sum);
        if (node_loads[pt->node][x] != pt->loads[x])
            return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "expert %u: node %u's loads say %" PRIu64 " slots, "
                             "its batches have %" PRIu64, x, pt->node,
                             node_loads[pt->node][x], pt->loads[x]);
    }
    return 0;
}

/* Plan, node loads and batches, all checked before anything is placed. */
static int check_step(llep_part *pt, const llep_plan *plan, const uint64_t *const *node_loads,
                      const llep_engine_batch *batches) {
    char msg[160];
    int r;

    if (!plan || !node_loads || !batches)
        return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "no plan, node loads or batches");
    if (plan->num_experts != pt->nx || plan->num_devices != pt->np)
        return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "the plan is for %u experts on %u devices, the cluster "
                         "layer has %u on %u", plan->num_experts, plan->num_devices, pt->nx,
                         pt->np);
    r = llep__plan_validate(plan, msg, sizeof(msg));
    if (r < 0)
        return llep__errf(pt->err, sizeof(pt->err), r, "bad plan: %s", msg);
    r = llep__engine_count_batches(pt->e, batches, pt->pl, pt->nx, pt->loads, pt->home_base,
                                   &pt->slots, pt->err, sizeof(pt->err));
    if (r < 0)
        return r;
    r = check_loads(pt, plan, node_loads);
    if (r < 0)
        return r;
    for (uint32_t i = 0; i < plan->num_ranges; i++)
        if (plan->ranges[i].end - plan->ranges[i].start > UINT32_MAX)
            return llep__errf(pt->err, sizeof(pt->err), -E2BIG, "expert chunk of %" PRIu64 " rows exceeds 2^32 - 1",
                             plan->ranges[i].end - plan->ranges[i].start);
    return 0;
}

/* The weight blocks crossing nodes: one per (expert, node it is not native on but has a range
 * on), in expert order, then the order of the expert's ranges. Both ends list them alike. */
static void list_weights(llep_part *pt) {
    const llep_plan *pl = &pt->plan;
    llep_engine *e = pt->e;

    pt->num_wout = pt->num_win = 0;
    for (uint32_t x = 0; x < pt->nx; x++) {
        uint32_t native = llep__plan_native(pl, x), from = node_of(pt, native);
        for (uint32_t i = pl->range_off[x]; i < pl->range_off[x + 1]; i++) {
            uint32_t to = node_of(pt, pl->ranges[i].device), seen = 0;
            for (uint32_t i2 = pl->range_off[x]; i2 < i && !seen; i2++)
                seen = node_of(pt, pl->ranges[i2].device) == to;
            if (to == from || seen)
                continue;
            if (from == pt->node) {
                pt->wout[pt->num_wout++] = (llep_part_weights){
                    .expert = x, .node = to, .bytes = e->expert_bytes,
                };
            } else if (to == pt->node) {
                pt->win_of[x] = pt->num_win;
                pt->win[pt->num_win++] = (llep_part_weights){
                    .expert = x, .node = from, .bytes = e->expert_bytes,
                };
            }
        }
    }
}

/* Places the rows of each range on this node's devices as the engine does (experts in id
 * order, each expert's ranges in token order), sizes the device buffers, and counts the rows
 * each other node sends and receives, placing this node's rows in each ROWS_OUT. */
static void layout(llep_part *pt, uint64_t *rows_out, uint64_t *rows_in) {
    const llep_plan *pl = &pt->plan;
    llep_engine *e = pt->e;
    size_t base = 0;

    llep__engine_clear_rows(e, pt->pl);
    for (uint32_t j = 0; j < pt->nodes; j++)
        rows_out[j] = rows_in[j] = 0;
    for (uint32_t x = 0; x < pt->nx; x++) {
        for (uint32_t i = pl->range_off[x]; i < pl->range_off[x + 1]; i++) {
            const llep_range *r = &pl->ranges[i];
            uint64_t len = r->end - r->start, lo;
            if (!on_this_node(pt, r->device)) {
                uint32_t j = node_of(pt, r->device);
                pt->out_off[i] = rows_out[j];
                rows_out[j] += node_share(pt, r, x, pt->node, &lo);
                continue;
            }
            engine_device *dv = &e->dev[r->device - pt->dev0];
            pt->chunk_row[i] = dv->rows;
            dv->rows += len;
            if (len > dv->max_chunk)
                dv->max_chunk = (uint32_t)len; /* check_step() bounds len */
            for (uint32_t j = 0; j < pt->nodes; j++)
                if (j != pt->node)
                    rows_in[j] += node_share(pt, r, x, j, &lo);
        }
    }
    for (uint32_t t = 0; t < pl->num_transfers; t++)
        if (on_this_node(pt, pl->transfers[t].dst))
            e->dev[pl->transfers[t].dst - pt->dev0].received++;
    for (uint32_t d = 0; d < pt->pl; d++) {
        e->dev[d].row_base = base;
        base += e->dev[d].rows;
        llep__engine_device_sizes(e, d);
    }
}

/* Bytes of the device-wire buffers on device 0 besides RESULTS_IN (which the combines need in
 * either mode): ROWS_OUT, ROWS_IN, RESULTS_OUT and the weight blocks. 0 in host mode. */
static uint64_t wire_bytes(const llep_part *pt, const uint64_t *rows_out,
                           const uint64_t *rows_in) {
    const llep_engine *e = pt->e;
    uint64_t row_bytes = (uint64_t)e->d * e->esz, res_bytes = (uint64_t)e->d * sizeof(float);
    uint64_t sum = ((uint64_t)pt->num_win + pt->num_wout) * e->expert_bytes;

    if (!pt->device_wire)
        return 0;
    for (uint32_t j = 0; j < pt->nodes; j++)
        sum += rows_out[j] * row_bytes + rows_in[j] * (row_bytes + res_bytes);
    return sum;
}

/* Fails before anything is allocated when a device's step buffers do not fit in its budget
 * beside what every engine holds there (the part holds the turn: nobody else allocates). */
static int check_budgets(llep_part *pt, uint64_t results_in, uint64_t wire) {
    llep_engine *e = pt->e;
    char extra[80] = "";

    if (pt->device_wire)
        snprintf(extra, sizeof(extra), ", other buffers crossing nodes %" PRIu64, wire);
    for (uint32_t d = 0; d < pt->pl; d++) {
        engine_device *dv = &e->dev[d];
        uint64_t w = (uint64_t)dv->received * e->expert_bytes;
        /* Device 0 also holds the results other nodes send back, for the combines, and in
         * device-wire mode everything else that crosses nodes. */
        uint64_t need = llep__engine_device_need(e, d) + (d == 0 ? results_in + wire : 0);
        if (llep__devices_fits(e->devs, d, need, LLEP_CHARGE_STEP))
            continue;
        llep_device_figures f;
        llep__devices_figures(e->devs, d, &f);
        return llep__errf(pt->err, sizeof(pt->err), -ENOMEM,
                          "node %u device %u (global %u): the %s step needs %" PRIu64
                          " bytes (received weights %" PRIu64 ", token rows %" PRIu64
                          ", results %" PRIu64 ", intermediates %" PRIu64 ", results from "
                          "other nodes %" PRIu64 "%s), %" PRIu64 " of its budget of %" PRIu64
                          " bytes are free (%" PRIu64 " in use, %" PRIu64 " by this layer)",
                          pt->node, d, pt->dev0 + d,
                          pt->plan.mode == LLEP_PLAN_LLEP ? "LLEP" : "EP", need, w,
                          dv->x_bytes, dv->y_bytes, dv->scratch_bytes,
                          d == 0 ? results_in : 0, d == 0 ? extra : "", f.free, f.budget,
                          f.used, dv->used);
    }
    return 0;
}

/* The host buffers of the step: rows and results to and from every other node, the weight
 * blocks received, and the row pointers of the gathers and combines. In device-wire mode only
 * ROWS_OUT keeps host memory, where route_slots() packs the rows; the others are sized for
 * their device-0 buffers. */
static int reserve_host(llep_part *pt, const uint64_t *rows_out, const uint64_t *rows_in) {
    llep_engine *e = pt->e;
    uint64_t row_bytes = (uint64_t)e->d * e->esz, res_bytes = (uint64_t)e->d * sizeof(float);
    uint64_t computed = 0;
    int host = !pt->device_wire, r = 0;

    for (uint32_t j = 0; j < pt->nodes && r == 0; j++) {
        r = buf_reserve(buf_of(pt, LLEP_PART_ROWS_OUT, j), rows_out[j] * row_bytes, 1);
        if (r == 0)
            r = buf_reserve(buf_of(pt, LLEP_PART_RESULTS_IN, j), rows_out[j] * res_bytes, host);
        if (r == 0)
            r = buf_reserve(buf_of(pt, LLEP_PART_ROWS_IN, j), rows_in[j] * row_bytes, host);
        if (r == 0)
            r = buf_reserve(buf_of(pt, LLEP_PART_RESULTS_OUT, j), rows_in[j] * res_bytes, host);
    }
    if (r == 0)
        r = buf_reserve(&pt->wbuf, (uint64_t)pt->num_win * e->expert_bytes, host);
    if (r == 0)
        r = buf_reserve(&pt->woutbuf, (uint64_t)pt->num_wout * e->expert_bytes, host);
    for (uint32_t d = 0; d < pt->pl; d++)
        computed += e->dev[d].rows;
    if (r == 0)
        r = reserve_ptrs(&pt->gather_src, &pt->gather_cap, computed);
    if (r == 0)
        r = reserve_ptrs(&pt->combine_src, &pt->combine_cap, pt->slots);
    if (r < 0)
        return llep__errf(pt->err, sizeof(pt->err), r, "out of host memory for the step's buffers");
    return 0;
}

/* The device-0 buffers of device-wire mode: every one crossing nodes but RESULTS_IN, which
 * alloc_step() places on device 0 in either mode. */
static int alloc_wire(llep_part *pt) {
    llep_engine *e = pt->e;
    int r = 0;

    for (uint32_t j = 0; j < pt->nodes && r == 0; j++) {
        r = llep__engine_dev_alloc(e, 0, buf_of(pt, LLEP_PART_ROWS_OUT, j)->bytes,
                                   &buf_of(pt, LLEP_PART_ROWS_OUT, j)->dev);
        if (r == 0)
            r = llep__engine_dev_alloc(e, 0, buf_of(pt, LLEP_PART_ROWS_IN, j)->bytes,
                                       &buf_of(pt, LLEP_PART_ROWS_IN, j)->dev);
        if (r == 0)
            r = llep__engine_dev_alloc(e, 0, buf_of(pt, LLEP_PART_RESULTS_OUT, j)->bytes,
                                       &buf_of(pt, LLEP_PART_RESULTS_OUT, j)->dev);
    }
    if (r == 0)
        r = llep__engine_dev_alloc(e, 0, pt->wbuf.bytes, &pt->wbuf.dev);
    if (r == 0)
        r = llep__engine_dev_alloc(e, 0, pt->woutbuf.bytes, &pt->woutbuf.dev);
    return r;
}

/* Points the weight entries at their blocks in the buffer the caller moves. */
static void point_weights(llep_part *pt) {
    uint64_t eb = pt->e->expert_bytes;
    char *in = pt->device_wire ? pt->wbuf.dev : pt->wbuf.data;
    char *out = pt->device_wire ? pt->woutbuf.dev : pt->woutbuf.data;

    for (uint32_t i = 0; i < pt->num_win; i++)
        pt->win[i].data = in + (uint64_t)i * eb;
    for (uint32_t i = 0; i < pt->num_wout; i++)
        pt->wout[i].data = out + (uint64_t)i * eb;
}

static int alloc_step(llep_part *pt) {
    const llep_plan *pl = &pt->plan;
    llep_engine *e = pt->e;
    int r = 0;

    for (uint32_t t = 0; t < pl->num_transfers && r == 0; t++)
        if (on_this_node(pt, pl->transfers[t].dst))
            r = llep__engine_dev_alloc(e, pl->transfers[t].dst - pt->dev0, e->expert_bytes,
                                       &pt->recv[t]);
    for (uint32_t d = 0; d < pt->pl && r == 0; d++)
        r = llep__engine_device_alloc(e, d);
    for (uint32_t j = 0; j < pt->nodes && r == 0; j++) {
        pt->resdev_bytes[j] = buf_of(pt, LLEP_PART_RESULTS_IN, j)->bytes;
        r = llep__engine_dev_alloc(e, 0, pt->resdev_bytes[j], &pt->resdev[j]);
    }
    if (r == 0 && pt->device_wire)
        r = alloc_wire(pt);
    if (r < 0)
        return llep__errf(pt->err, sizeof(pt->err), r, "out of device memory while allocating the step's buffers");
    point_weights(pt);
    return 0;
}

/* Sends each of this node's token-slots to its row: on this node, a gather source on the
 * computing device; elsewhere, a row of ROWS_OUT to that node, whose result comes back in the
 * same row of RESULTS_IN. Ranks run on from this node's base in the global order. */
static void route_slots(llep_part *pt) {
    const llep_plan *pl = &pt->plan;
    llep_engine *e = pt->e;
    size_t row_bytes = (size_t)e->d * e->esz;

    pt->crossing = 0;
    for (uint32_t x = 0; x < pt->nx; x++) {
        pt->rank[x] = pt->base[(size_t)pt->node * pt->nx + x];
        pt->cur_range[x] = pl->range_off[x];
    }
    for (uint32_t p = 0; p < pt->pl; p++) {
        const llep_engine_batch *b = &pt->batches[p];
        size_t n = (size_t)b->tokens * e->k;
        const float **csrc = pt->combine_src + pt->home_base[p];
        for (size_t s = 0; s < n; s++) {
            uint32_t x = (uint32_t)b->topk_idx[s];
            uint64_t r = pt->rank[x]++, lo;
            uint32_t i = pt->cur_range[x];
            while (r >= pl->ranges[i].end)
                i++;
            pt->cur_range[x] = i;
            const llep_range *rg = &pl->ranges[i];
            const char *xrow = (const char *)b->x + (s / e->k) * row_bytes;
            if (!on_this_node(pt, rg->device)) {
                uint32_t j = node_of(pt, rg->device);
                node_share(pt, rg, x, pt->node, &lo);
                uint64_t pos = pt->out_off[i] + (r - lo);
                memcpy((char *)buf_of(pt, LLEP_PART_ROWS_OUT, j)->data + pos * row_bytes, xrow,
                       row_bytes);
                csrc[s] = (const float *)pt->resdev[j] + pos * e->d;
                pt->crossing++;
                continue;
            }
            uint32_t d = rg->device - pt->dev0;
            uint64_t row = pt->chunk_row[i] + (r - rg->start);
            pt->gather_src[e->dev[d].row_base + row] = xrow;
            csrc[s] = e->dev[d].y + row * e->d;
            if (d != p) {
                pt->crossing++;
                e->dstats[d].token_bytes_in += row_bytes;
            }
        }
    }
}

/* The rows other nodes send for the ranges on this node's devices: gather sources in their
 * ROWS_IN buffers (host or device 0 memory; the gathers read either), in wire order. */
static void route_rows_in(llep_part *pt) {
    const llep_plan *pl = &pt->plan;
    llep_engine *e = pt->e;
    size_t row_bytes = (size_t)e->d * e->esz;

    memset(pt->cursor, 0, pt->nodes * sizeof(*pt->cursor));
    for (uint32_t i = 0, x = 0; next_local_range(pt, &i, &x); i++) {
        const llep_range *rg = &pl->ranges[i];
        uint32_t d = rg->device - pt->dev0;
        for (uint32_t j = 0; j < pt->nodes; j++) {
            uint64_t lo, cnt = j == pt->node ? 0 : node_share(pt, rg, x, j, &lo);
            if (cnt == 0)
                continue;
            const char *src = (const char *)wire_data(pt, LLEP_PART_ROWS_IN, j) +
                              pt->cursor[j] * row_bytes;
            const void **dst = pt->gather_src + e->dev[d].row_base + pt->chunk_row[i] +
                               (lo - rg->start);
            for (uint64_t q = 0; q < cnt; q++)
                dst[q] = src + q * row_bytes;
            pt->cursor[j] += cnt;
            e->dstats[d].token_bytes_in += cnt * row_bytes;
        }
    }
}

static void count_traffic(llep_part *pt, const uint64_t *rows_out, const uint64_t *rows_in) {
    llep_engine *e = pt->e;
    uint64_t row_bytes = (uint64_t)e->d * e->esz, res_bytes = (uint64_t)e->d * sizeof(float);
    llep_part_traffic *tr = &pt->traffic;

    memset(tr, 0, sizeof(*tr));
    for (uint32_t j = 0; j < pt->nodes; j++) {
        tr->rows_out += rows_out[j];
        tr->rows_in += rows_in[j];
    }
    tr->weights_out = pt->num_wout;
    tr->weights_in = pt->num_win;
    tr->bytes_out = tr->rows_out * row_bytes + tr->rows_in * res_bytes +
                    (uint64_t)tr->weights_out * e->expert_bytes;
    tr->bytes_in = tr->rows_in * row_bytes + tr->rows_out * res_bytes +
                   (uint64_t)tr->weights_in * e->expert_bytes;
}

/* The native blocks of WEIGHTS_OUT into the buffers the caller sends: downloaded to the host
 * by their devices, or copied by device 0 (copy's destination is on the queuing device). */
static int queue_weights_out(llep_part *pt) {
    const llep_plan *pl = &pt->plan;
    llep_engine *e = pt->e;
    const llep_backend_ops *ops = e->be->ops;
    int r = 0;

    for (uint32_t i = 0; i < pt->num_wout && r == 0; i++) {
        uint32_t x = pt->wout[i].expert, native = llep__plan_native(pl, x) - pt->dev0;
        const void *blk = llep__engine_native_block(e, native, x - (native + pt->dev0) *
                                                                   pl->experts_per_device);
        r = pt->device_wire ? ops->copy(e->be, 0, pt->wout[i].data, blk, e->expert_bytes)
                            : ops->download(e->be, native, pt->wout[i].data, blk,
                                            e->expert_bytes);
    }
    return r;
}

/* What prepare hands the caller to send, ready when it returns: the WEIGHTS_OUT blocks and,
 * in device-wire mode, the rows route_slots() packed on the host copied up to device 0. */
static int stage_out(llep_part *pt) {
    llep_engine *e = pt->e;
    int r = 0, queued = pt->num_wout > 0;

    for (uint32_t j = 0; pt->device_wire && j < pt->nodes && r == 0; j++) {
        part_buf *b = buf_of(pt, LLEP_PART_ROWS_OUT, j);
        if (b->bytes) {
            r = e->be->ops->copy(e->be, 0, b->dev, b->data, b->bytes);
            queued = 1;
        }
    }
    if (r == 0)
        r = queue_weights_out(pt);
    if (!queued)
        return 0;
    int rs = e->be->ops->sync(e->be);
    if (r == 0)
        r = rs;
    if (r < 0) {
        free_step(pt);
        char why[160];
        if (llep__devices_check_failed(e->devs, why, sizeof(why)) > 0)
            return llep__errf(pt->err, sizeof(pt->err), -EIO, "%s while copying out", why);
        return llep__errf(pt->err, sizeof(pt->err), r, "%s backend failed copying %s out: %s", e->be->ops->name,
                         pt->device_wire ? "rows and weights" : "weights", strerror(-r));
    }
    return 0;
}

int llep__part_prepare(llep_part *pt, const llep_plan *plan, const uint64_t *const *node_loads,
                       const llep_engine_batch *batches) {
    uint64_t *rows_out = NULL, *rows_in = NULL;
    int r;

    if (!pt)
        return -EINVAL;
    pt->err[0] = '\0';
    if (pt->state != PART_IDLE)
        return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "a step is already prepared (combine or abort it first)");
    pt->t0 = llep__engine_monotonic_ns();
    r = llep__engine_check_devices(pt->e, pt->err, sizeof(pt->err));
    if (r == 0)
        r = check_step(pt, plan, node_loads, batches);
    if (r < 0)
        return r;
    rows_out = calloc(pt->nodes, sizeof(*rows_out));
    rows_in = calloc(pt->nodes, sizeof(*rows_in));
    if (!rows_out || !rows_in) {
        r = llep__errf(pt->err, sizeof(pt->err), -ENOMEM, "out of host memory");
        goto out;
    }
    llep__plan_copy(&pt->plan, plan); /* sizes checked by check_step() */
    pt->batches = batches;
    list_weights(pt);
    layout(pt, rows_out, rows_in);
    uint64_t results_in = 0;
    for (uint32_t j = 0; j < pt->nodes; j++)
        results_in += rows_out[j] * pt->e->d * sizeof(float);
    llep__engine_begin_stats(pt->e);
    /* From the budget check to the copies out, the devices are this part's alone; between
     * phases other engines' steps may run (the part's buffers stay charged). */
    llep__engine_turn_begin(pt->e);
    r = check_budgets(pt, results_in, wire_bytes(pt, rows_out, rows_in));
    if (r == 0)
        r = reserve_host(pt, rows_out, rows_in);
    if (r < 0)
        goto out_turn;
    pt->state = PART_PREPARED;
    r = alloc_step(pt);
    if (r < 0) {
        free_step(pt);
        goto out_turn;
    }
    route_slots(pt);
    route_rows_in(pt);
    count_traffic(pt, rows_out, rows_in);
    r = stage_out(pt);
out_turn:
    llep__engine_turn_end(pt->e);
out:
    free(rows_out);
    free(rows_in);
    return r;
}

int llep__part_buffer(llep_part *pt, enum llep_part_buf kind, uint32_t node, void **ret,
                      uint64_t *ret_bytes) {
    if (!pt || !ret || !ret_bytes)
        return -EINVAL;
    if (pt->state == PART_IDLE)
        return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "no step is prepared");
    if (node >= pt->nodes || node == pt->node || (unsigned)kind >= PART_NUM_BUFS)
        return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "no buffer %d for node %u", (int)kind, node);
    *ret = wire_data(pt, kind, node);
    *ret_bytes = buf_of(pt, kind, node)->bytes;
    return 0;
}

uint32_t llep__part_num_weights(const llep_part *pt, int out) {
    if (!pt || pt->state == PART_IDLE)
        return 0;
    return out ? pt->num_wout : pt->num_win;
}

const llep_part_weights *llep__part_weights(const llep_part *pt, int out, uint32_t i) {
    if (i >= llep__part_num_weights(pt, out))
        return NULL;
    return out ? &pt->wout[i] : &pt->win[i];
}

/* The weight block expert x runs with on this node's device d: native, or the copy it got. */
static const char *range_weights(llep_part *pt, uint32_t x, uint32_t d) {
    const llep_plan *pl = &pt->plan;
    uint32_t g = pt->dev0 + d, native = llep__plan_native(pl, x);

    if (g == native)
        return llep__engine_native_block(pt->e, d, x - native * pl->experts_per_device);
    for (uint32_t t = 0; t < pl->num_transfers; t++)
        if (pl->transfers[t].expert == x && pl->transfers[t].dst == g)
            return pt->recv[t];
    return NULL; /* the plan validator rules this out */
}

/* Weights into this node's devices: from a native block on this node, or from WEIGHTS_IN. */
static int queue_weights(llep_part *pt) {
    const llep_plan *pl = &pt->plan;
    llep_engine *e = pt->e;
    int r = 0;

    for (uint32_t t = 0; t < pl->num_transfers && r == 0; t++) {
        const llep_transfer *tr = &pl->transfers[t];
        if (!on_this_node(pt, tr->dst))
            continue;
        uint32_t d = tr->dst - pt->dev0;
        const void *src = on_this_node(pt, tr->src)
            ? range_weights(pt, tr->expert, tr->src - pt->dev0)
            : pt->win[pt->win_of[tr->expert]].data;
        r = e->be->ops->copy(e->be, d, pt->recv[t], src, e->expert_bytes);
        e->dstats[d].experts_received++;
        e->dstats[d].weight_bytes_in += e->expert_bytes;
    }
    return r;
}

/* Each device's rows, then its expert chunks. */
static int queue_chunks(llep_part *pt) {
    const llep_plan *pl = &pt->plan;
    llep_engine *e = pt->e;
    const llep_backend_ops *ops = e->be->ops;
    int r = queue_weights(pt);

    for (uint32_t d = 0; d < pt->pl && r == 0; d++)
        if (e->dev[d].rows)
            r = ops->gather(e->be, d, e->dev[d].x, pt->gather_src + e->dev[d].row_base,
                            e->dev[d].rows, e->d * e->esz);
    for (uint32_t i = 0, x = 0; r == 0 && next_local_range(pt, &i, &x); i++) {
        const llep_range *rg = &pl->ranges[i];
        uint32_t d = rg->device - pt->dev0;
        r = llep__engine_queue_chunk(e, d, range_weights(pt, x, d), pt->chunk_row[i],
                                     (uint32_t)(rg->end - rg->start));
    }
    return r;
}

/* Bytes of device d's results at src into RESULTS_OUT at dst: downloaded by d in order after
 * its chunks, or in device-wire mode copied by device 0, whose buffer dst is. */
static int queue_result(llep_part *pt, uint32_t d, float *dst, const float *src, size_t bytes) {
    llep_backend *be = pt->e->be;

    return pt->device_wire ? be->ops->copy(be, 0, dst, src, bytes)
                           : be->ops->download(be, d, dst, src, bytes);
}

/* The results other nodes wait for, range by range in wire order. */
static int queue_results(llep_part *pt) {
    const llep_plan *pl = &pt->plan;
    llep_engine *e = pt->e;
    int r = 0;

    memset(pt->cursor, 0, pt->nodes * sizeof(*pt->cursor));
    for (uint32_t i = 0, x = 0; r == 0 && next_local_range(pt, &i, &x); i++) {
        const llep_range *rg = &pl->ranges[i];
        uint32_t d = rg->device - pt->dev0;
        for (uint32_t j = 0; j < pt->nodes && r == 0; j++) {
            uint64_t lo, cnt = j == pt->node ? 0 : node_share(pt, rg, x, j, &lo);
            if (cnt == 0)
                continue;
            float *dst = (float *)wire_data(pt, LLEP_PART_RESULTS_OUT, j) +
                         pt->cursor[j] * e->d;
            const float *src = e->dev[d].y + (pt->chunk_row[i] + (lo - rg->start)) * e->d;
            r = queue_result(pt, d, dst, src, cnt * e->d * sizeof(float));
            pt->cursor[j] += cnt;
        }
    }
    return r;
}

int llep__part_compute(llep_part *pt) {
    llep_engine *e;
    int r, rs;

    if (!pt)
        return -EINVAL;
    pt->err[0] = '\0';
    if (pt->state != PART_PREPARED)
        return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "compute needs a prepared step");
    e = pt->e;
    llep__engine_turn_begin(e);
    r = queue_chunks(pt);
    /* Device 0's copies are ordered only with device 0's own work, so in device-wire mode every
     * device's chunks must be done before they read the results. */
    if (r == 0 && pt->device_wire)
        r = e->be->ops->sync(e->be);
    if (r == 0)
        r = queue_results(pt);
    /* Whatever was queued reads the step's buffers, so it must finish before any is freed. */
    rs = e->be->ops->sync(e->be);
    if (r == 0)
        r = rs;
    if (r < 0) {
        free_step(pt);
        r = llep__engine_sync_failed(e, r, pt->err, sizeof(pt->err));
    }
    llep__engine_turn_end(e);
    if (r < 0)
        return r;
    pt->state = PART_COMPUTED;
    return 0;
}

static void fill_stats(llep_part *pt, llep_engine_stats *s) {
    const llep_plan *pl = &pt->plan;
    llep_engine *e = pt->e;

    memset(s, 0, sizeof(*s));
    s->mode = pl->mode;
    s->imbalance = pl->imbalance;
    s->capacity = pl->capacity;
    s->slots = pt->slots;
    for (uint32_t t = 0; t < pl->num_transfers; t++)
        s->transfers += on_this_node(pt, pl->transfers[t].dst);
    s->weight_bytes_moved = (uint64_t)s->transfers * e->expert_bytes;
    /* As in the engine: a row computed away from its home device goes out in the layer's
     * dtype and its result comes back in float32. */
    s->token_bytes_moved = pt->crossing * e->d * (e->esz + sizeof(float));
    for (uint32_t d = 0; d < pt->pl; d++) {
        uint64_t busy = llep__engine_end_device_stats(e, d, pl->device_loads[pt->dev0 + d]);
        if (busy > s->makespan_ns)
            s->makespan_ns = busy;
    }
    s->num_devices = pt->pl;
    s->devices = e->dstats;
    s->wall_ns = llep__engine_monotonic_ns() - pt->t0;
}

int llep__part_combine(llep_part *pt, llep_engine_stats *stats) {
    llep_engine *e;
    int r = 0, rs;

    if (!pt)
        return -EINVAL;
    pt->err[0] = '\0';
    if (pt->state != PART_COMPUTED)
        return llep__errf(pt->err, sizeof(pt->err), -EINVAL, "combine needs a computed step");
    e = pt->e;
    llep__engine_turn_begin(e);
    /* Results from other nodes onto device 0, where the combines read them; in device-wire
     * mode the caller put them there. */
    for (uint32_t j = 0; j < pt->nodes && r == 0 && !pt->device_wire; j++)
        if (pt->resdev_bytes[j])
            r = e->be->ops->copy(e->be, 0, pt->resdev[j], buf_of(pt, LLEP_PART_RESULTS_IN, j)->data,
                                 pt->resdev_bytes[j]);
    rs = e->be->ops->sync(e->be);
    if (r == 0)
        r = rs;
    for (uint32_t p = 0; p < pt->pl && r == 0; p++)
        if (pt->batches[p].tokens)
            r = llep__engine_queue_combine(e, p, &pt->batches[p],
                                           pt->combine_src + pt->home_base[p]);
    rs = e->be->ops->sync(e->be);
    if (r == 0)
        r = rs;
    free_step(pt);
    if (r < 0)
        r = llep__engine_sync_failed(e, r, pt->err, sizeof(pt->err));
    llep__engine_turn_end(e);
    if (r < 0)
        return r;
    if (stats)
        fill_stats(pt, stats);
    return 0;
}

void llep__part_traffic(const llep_part *pt, llep_part_traffic *ret) {
    if (pt && ret)
        *ret = pt->traffic;
}
