/* The cost-aware planner (plan-cost.h).
 *
 * The refinement is LLA's idea with time in place of tokens. For a target makespan tau, every
 * device whose EP time exceeds tau is relieved, the most loaded first: taking its experts
 * largest first, each keeps on the device the rows that still fit under tau and sheds the
 * rest, until the device fits. Shed rows go each time to the device that can start soonest
 * (its time so far plus the copy of the expert's weights, free where it holds a copy), which
 * takes the rows that fit under tau; a helper whose room does not cover one row's chunk plus
 * the copy takes nothing. The native device's outgoing copies (those that leave its physical
 * device) must fit under tau as well. If every overloaded device can be relieved, tau is
 * reachable. A bisection on tau between the ideal bound and EP's makespan (or LLA's, when
 * reachable) finds about the least reachable one, within 1/64: each halving is one pass over
 * the overloaded devices, and the plan must stay within 10 us at N 128. The plan for it is the
 * refinement. Only overloaded devices are visited, so a balanced step costs little beyond
 * EP's N chunk times.
 *
 * Chunk sizes follow from the model: a spill is made only where the rows it moves save more
 * than the copy and the extra chunk cost, which is how the fixed cost per chunk and the
 * falloff of the rate at few rows enter the plan. */
#include "plan-cost.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan-internal.h"

typedef struct cost_ctx {
    llep_plan *p;
    llep_plan_cost_ws *ws;
    llep_cost_model m;          /* the model, with the plan's devices_per_node */
    llep_cost_curve curve;      /* its chunk times for the layer */
    const llep_cost_layer *l;
    const uint8_t *held;
    double copy_kind[LLEP_LINK_KINDS]; /* one expert's copy over each kind of link */
    double send_kind[LLEP_LINK_KINDS]; /* what it weighs on the sender: copy_kind or 0 */
    double point_ns[LLEP_COST_MAX_POINTS]; /* chunk time at each point of the curve */
    uint32_t np, max_raw, nraw;
    uint32_t per_gpu, per_node;  /* devices per physical device and per node; P for "all" */
    uint32_t leaves;             /* of the tournament tree */
    uint32_t skip;               /* the device being relieved, or UINT32_MAX */
    uint32_t ndorder;
    int have_chunk0;             /* ws->chunk0 holds this plan's whole-chunk times */
    int repeat;                  /* the refinement put two pieces of an expert on a helper */
    int best_repeat;
    uint32_t best_nraw;
} cost_ctx;

static void ctx_init(cost_ctx *c, llep_plan *p, const llep_cost_model *m,
                     const llep_cost_layer *l, const uint8_t *held, uint32_t per_node) {
    c->p = p;
    c->ws = llep__plan_cost_ws(p);
    c->m = *m;
    if (per_node)
        c->m.devices_per_node = per_node;
    c->l = l;
    llep__cost_curve_init(&c->curve, &c->m, l);
    c->held = held;
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        const llep_cost_link *lk = &c->m.link[k];
        c->copy_kind[k] =
            k == LLEP_LINK_SAME ? 0 : lk->latency_ns + (double)l->weight_bytes * lk->ns_per_byte;
        c->send_kind[k] = llep__cost_link_sends(k) ? c->copy_kind[k] : 0;
    }
    c->np = p->num_devices;
    c->max_raw = llep__plan_max_ranges(p);
    c->nraw = 0;
    c->per_node = c->m.devices_per_node ? c->m.devices_per_node : c->np;
    c->per_gpu = c->m.devices_per_gpu ? c->m.devices_per_gpu : c->np;
    if (c->per_gpu > c->per_node)
        c->per_gpu = c->per_node;
    c->leaves = llep__plan_tree_size(c->np);
    c->skip = UINT32_MAX;
    c->ndorder = 0;
    c->have_chunk0 = 0;
}

static inline double chunk(const cost_ctx *c, uint64_t rows) {
    return llep__cost_curve_ns(&c->curve, rows);
}

/* Time to copy expert x's weights from its native device to d: none on the native device
 * itself or where d holds a copy. */
static inline double copy_ns(const cost_ctx *c, uint32_t x, uint32_t native, uint32_t d) {
    if (d == native || (c->held && c->held[(size_t)x * c->np + d]))
        return 0;
    return c->copy_kind[llep__cost_link_kind(&c->m, native, d)];
}

/* What that copy weighs on the native device's outgoing link: the copy where it leaves the
 * physical device, else nothing (llep__cost_link_sends()). */
static inline double send_ns(const cost_ctx *c, uint32_t x, uint32_t native, uint32_t d) {
    if (d == native || (c->held && c->held[(size_t)x * c->np + d]))
        return 0;
    return c->send_kind[llep__cost_link_kind(&c->m, native, d)];
}

/* ---- the model of a plan ---------------------------------------------------------------- */

/* Adds one expert's pieces (acc[d] rows on each touched device) to the device times. */
static void flush_expert(cost_ctx *c, uint32_t x, uint32_t ntouched) {
    llep_plan_cost_ws *ws = c->ws;
    uint32_t native = llep__plan_native(c->p, x);

    for (uint32_t i = 0; i < ntouched; i++) {
        uint32_t d = ws->touched[i];
        double cp = copy_ns(c, x, native, d);
        /* An expert left whole on its native device costs what EP's times already worked
         * out. */
        int whole = c->have_chunk0 && ntouched == 1 && d == native;
        ws->t[d] += cp + (whole ? ws->chunk0[x] : chunk(c, ws->acc[d]));
        ws->s[native] += send_ns(c, x, native, d);
        ws->acc[d] = 0;
    }
}

static inline uint32_t add_rows(cost_ctx *c, uint32_t d, uint64_t rows, uint32_t ntouched) {
    if (c->ws->acc[d] == 0)
        c->ws->touched[ntouched++] = d;
    c->ws->acc[d] += rows;
    return ntouched;
}

static double makespan(const cost_ctx *c) {
    double max = 0;

    for (uint32_t d = 0; d < c->np; d++) {
        if (c->ws->t[d] > max)
            max = c->ws->t[d];
        if (c->ws->s[d] > max)
            max = c->ws->s[d];
    }
    return max;
}

static void times_reset(cost_ctx *c) {
    memset(c->ws->t, 0, c->np * sizeof(*c->ws->t));
    memset(c->ws->s, 0, c->np * sizeof(*c->ws->s));
}

/* Modelled makespan of p's result. Two ranges of one expert on one device run as one chunk,
 * as the engine runs them. */
static double model_of_plan(cost_ctx *c) {
    const llep_plan *p = c->p;

    times_reset(c);
    for (uint32_t x = 0; x < p->num_experts; x++) {
        uint32_t nt = 0;
        for (uint32_t i = p->range_off[x]; i < p->range_off[x + 1]; i++)
            nt = add_rows(c, p->ranges[i].device, p->ranges[i].end - p->ranges[i].start, nt);
        flush_expert(c, x, nt);
    }
    return makespan(c);
}

/* Modelled makespan of raw[0..nraw), whose ranges of one expert are consecutive. */
static double model_of_raw(cost_ctx *c, const llep_plan_raw *raw, uint32_t nraw) {
    times_reset(c);
    for (uint32_t i = 0; i < nraw;) {
        uint32_t x = raw[i].expert, nt = 0;
        for (; i < nraw && raw[i].expert == x; i++)
            nt = add_rows(c, raw[i].device, raw[i].end - raw[i].start, nt);
        flush_expert(c, x, nt);
    }
    return makespan(c);
}

/* ---- the refinement --------------------------------------------------------------------- */

/* EP's device times into t0 and each expert's whole-chunk time into chunk0; returns the sum
 * of the chunk times. */
static double ep_times(cost_ctx *c) {
    const llep_plan *p = c->p;
    double sum = 0;

    for (uint32_t d = 0; d < c->np; d++) {
        double t = 0;
        for (uint32_t x = d * p->experts_per_device; x < (d + 1) * p->experts_per_device; x++) {
            c->ws->chunk0[x] = chunk(c, p->loads[x]);
            t += c->ws->chunk0[x];
        }
        c->ws->t0[d] = t;
        sum += t;
    }
    c->have_chunk0 = 1;
    return sum;
}

/* The devices over the ideal bound under EP, most time first (ties to the lower index), into
 * dorder[0..ndorder); each one's experts, most rows first (ties to the lower id), into its
 * span of xorder. Only they can be over any tau the bisection tries. */
static void order_overloaded(cost_ctx *c, double ideal) {
    llep_plan_cost_ws *ws = c->ws;
    const llep_plan *p = c->p;
    uint32_t m = p->experts_per_device;

    c->ndorder = 0;
    for (uint32_t d = 0; d < c->np; d++) {
        if (!(ws->t0[d] > ideal))
            continue;
        uint32_t j = c->ndorder++;
        while (j > 0 && ws->t0[ws->dorder[j - 1]] < ws->t0[d])
            ws->dorder[j] = ws->dorder[j - 1], j--;
        ws->dorder[j] = d;
        uint32_t *xo = ws->xorder + (size_t)d * m;
        for (uint32_t i = 0; i < m; i++) {
            uint32_t x = d * m + i, k = i;
            while (k > 0 && p->loads[xo[k - 1]] < p->loads[x])
                xo[k] = xo[k - 1], k--;
            xo[k] = x;
        }
    }
}

/* A tournament tree over the devices' times: each inner node holds the device of least time
 * below it (ties to the lower index), so the least loaded device of a span costs O(log P).
 * The device being relieved (skip) counts as infinitely loaded. */
static inline uint32_t less_time(const cost_ctx *c, uint32_t a, uint32_t b) {
    if (a == c->skip)
        a = UINT32_MAX;
    if (b == c->skip)
        b = UINT32_MAX;
    if (a == UINT32_MAX)
        return b;
    if (b == UINT32_MAX)
        return a;
    double ta = c->ws->t[a], tb = c->ws->t[b];
    return tb < ta || (tb == ta && b < a) ? b : a;
}

static void tree_build(cost_ctx *c) {
    uint32_t *tree = c->ws->tree, s = c->leaves;

    for (uint32_t i = 0; i < s; i++)
        tree[s + i] = i < c->np ? i : UINT32_MAX;
    for (uint32_t i = s - 1; i >= 1; i--)
        tree[i] = less_time(c, tree[2 * i], tree[2 * i + 1]);
}

static void tree_update(cost_ctx *c, uint32_t d) {
    uint32_t *tree = c->ws->tree;

    for (uint32_t i = (c->leaves + d) / 2; i >= 1; i /= 2)
        tree[i] = less_time(c, tree[2 * i], tree[2 * i + 1]);
}

/* The device of least time in [lo, hi) other than skip; UINT32_MAX when none. */
static uint32_t tree_min(const cost_ctx *c, uint32_t lo, uint32_t hi) {
    const uint32_t *tree = c->ws->tree;
    uint32_t best = UINT32_MAX;

    for (uint32_t l = lo + c->leaves, r = hi + c->leaves; l < r; l /= 2, r /= 2) {
        if (l & 1)
            best = less_time(c, best, tree[l++]);
        if (r & 1)
            best = less_time(c, best, tree[--r]);
    }
    return best;
}

/* The most rows, at most r, whose chunk fits in budget ns. Chunk time grows with rows
 * (cost.c), so the answer is bracketed first by the curve's points, then found by
 * alternating interpolation (with a probe of the neighbour, which usually closes the bracket)
 * and halving; every step evaluates the model itself, so the answer is exact. *ret_ns is
 * its chunk time (0 for no rows). */
static uint64_t rows_within(const cost_ctx *c, double budget, uint64_t r, double *ret_ns) {
    *ret_ns = 0;
    if (r == 0 || c->point_ns[0] > budget)
        return 0;
    double fhi = chunk(c, r);
    if (fhi <= budget) {
        *ret_ns = fhi;
        return r;
    }
    uint64_t lo = 1, hi = r; /* chunk(lo) fits, chunk(hi) does not */
    double flo = c->point_ns[0];
    for (uint32_t i = 1; i < c->m.num_points && c->m.rows[i] < hi; i++) {
        if (c->point_ns[i] <= budget) {
            lo = c->m.rows[i];
            flo = c->point_ns[i];
        } else {
            hi = c->m.rows[i];
            fhi = c->point_ns[i];
            break;
        }
    }
    for (int k = 0; hi - lo > 1; k++) {
        uint64_t g = lo + (hi - lo) / 2;
        if (k % 2 == 0 && fhi > flo) {
            double f = (budget - flo) / (fhi - flo);
            g = lo + (uint64_t)(f * (double)(hi - lo));
            g = g <= lo ? lo + 1 : g >= hi ? hi - 1 : g;
        }
        double fg = chunk(c, g);
        if (fg <= budget) {
            lo = g, flo = fg;
            if (k % 2 == 0 && g + 1 < hi) {
                double f1 = chunk(c, g + 1);
                if (f1 <= budget)
                    lo = g + 1, flo = f1;
                else
                    hi = g + 1, fhi = f1;
            }
        } else {
            hi = g, fhi = fg;
            if (k % 2 == 0 && g - 1 > lo) {
                double f1 = chunk(c, g - 1);
                if (f1 <= budget)
                    lo = g - 1, flo = f1;
                else
                    hi = g - 1, fhi = f1;
            }
        }
    }
    *ret_ns = flo;
    return lo;
}

static int emit(cost_ctx *c, uint32_t x, uint32_t d, uint64_t start, uint64_t n) {
    if (c->nraw >= c->max_raw)
        return -ENOSPC;
    c->ws->raw[c->nraw++] = (llep_plan_raw){ x, d, start, start + n };
    return 0;
}

/* Of candidate helper d (UINT32_MAX: none) for expert x of `native`, keeps it in *best when
 * it can start sooner than the best so far; its copy, where it leaves the native's physical
 * device, must fit the native's outgoing room. */
static void consider(const cost_ctx *c, uint32_t x, uint32_t native, uint32_t d, double tau,
                     uint32_t *best, double *best_start) {
    if (d == UINT32_MAX)
        return;
    double snd = send_ns(c, x, native, d);
    if (snd > 0 && c->ws->s[native] + snd > tau)
        return;
    double start = c->ws->t[d] + copy_ns(c, x, native, d);
    if (*best == UINT32_MAX || start < *best_start || (start == *best_start && d < *best)) {
        *best = d;
        *best_start = start;
    }
}

/* The helper for expert x (native `native`) that can start soonest under tau: least time so
 * far plus the copy, with its copy within the native's outgoing room; ties to the lower
 * index. Devices of one span (the native's physical device, the rest of its node, the other
 * nodes) all pay the same copy, so the least loaded of each span is the only candidate there,
 * besides the helpers that hold a copy. UINT32_MAX when none. */
static uint32_t soonest_helper(const cost_ctx *c, uint32_t x, uint32_t native, double tau,
                               double *ret_start) {
    uint32_t best = UINT32_MAX, gpu = c->per_gpu, node = c->per_node;
    uint32_t g_lo = native / gpu * gpu, g_hi = g_lo + gpu;
    uint32_t n_lo = native / node * node, n_hi = n_lo + node;
    double best_start = 0;

    consider(c, x, native, tree_min(c, g_lo, g_hi), tau, &best, &best_start);
    consider(c, x, native, tree_min(c, n_lo, g_lo), tau, &best, &best_start);
    consider(c, x, native, tree_min(c, g_hi, n_hi), tau, &best, &best_start);
    consider(c, x, native, tree_min(c, 0, n_lo), tau, &best, &best_start);
    consider(c, x, native, tree_min(c, n_hi, c->np), tau, &best, &best_start);
    if (c->held) {
        const uint8_t *h = c->held + (size_t)x * c->np;
        for (uint32_t d = 0; d < c->np; d++)
            if (h[d] && d != native)
                consider(c, x, native, d, tau, &best, &best_start);
    }
    *ret_start = best_start;
    return best;
}

/* Expert x of overloaded device d keeps what fits under tau and sheds the rest. Returns 0,
 * or -EAGAIN when the rest does not fit anywhere. */
static int shed_expert(cost_ctx *c, uint32_t x, uint32_t d, double tau) {
    llep_plan_cost_ws *ws = c->ws;
    uint64_t l = c->p->loads[x];
    double base = ws->t[d] - ws->chunk0[x];
    double keep_ns = 0;
    uint64_t keep = base < tau ? rows_within(c, tau - base, l, &keep_ns) : 0;

    ws->shed[x] = 1;
    ws->t[d] = base + keep_ns;
    if (keep > 0 && emit(c, x, d, 0, keep) < 0)
        return -EAGAIN;
    for (uint64_t o = keep, r = l - keep; r > 0;) {
        double start;
        uint32_t h = soonest_helper(c, x, d, tau, &start);
        double y_ns = 0;
        uint64_t y = h != UINT32_MAX && start < tau ? rows_within(c, tau - start, r, &y_ns) : 0;
        if (y == 0 || emit(c, x, h, o, y) < 0)
            return -EAGAIN;
        ws->t[h] = start + y_ns;
        tree_update(c, h);
        /* A second piece on one helper runs as one chunk with one copy; the times above
         * counted two, so the final figure must come from the model. */
        c->repeat |= ws->mark[h] == x + 1;
        ws->mark[h] = x + 1;
        ws->s[d] += send_ns(c, x, d, h);
        o += y;
        r -= y;
    }
    return 0;
}

/* Relieves device d: its experts, most rows first, keep what fits under tau and shed the
 * rest, until d is under tau. */
static int relieve(cost_ctx *c, uint32_t d, double tau) {
    llep_plan_cost_ws *ws = c->ws;
    uint32_t m = c->p->experts_per_device;
    const uint32_t *xo = ws->xorder + (size_t)d * m;
    int r = 0;

    c->skip = d;
    tree_update(c, d);
    for (uint32_t i = 0; i < m && ws->t[d] > tau && r == 0; i++)
        if (c->p->loads[xo[i]] > 0)
            r = shed_expert(c, xo[i], d, tau);
    c->skip = UINT32_MAX;
    tree_update(c, d);
    return r == 0 && ws->t[d] <= tau ? 0 : -EAGAIN;
}

/* Builds the refinement for tau in ws->raw, without the experts that stay whole on their
 * native devices. Returns 0 when every device fits under tau, -EAGAIN when not. */
static int refine_for(cost_ctx *c, double tau) {
    llep_plan_cost_ws *ws = c->ws;
    const llep_plan *p = c->p;

    memcpy(ws->t, ws->t0, c->np * sizeof(*ws->t));
    memset(ws->s, 0, c->np * sizeof(*ws->s));
    memset(ws->shed, 0, p->num_experts * sizeof(*ws->shed));
    memset(ws->mark, 0, c->np * sizeof(*ws->mark));
    c->nraw = 0;
    c->repeat = 0;
    c->skip = UINT32_MAX;
    tree_build(c);
    /* Devices only ever receive up to tau, so the overloaded ones are those of EP, and
     * relieving them most loaded first is relieving the most loaded one left each time. */
    for (uint32_t i = 0; i < c->ndorder && ws->t0[ws->dorder[i]] > tau; i++)
        if (relieve(c, ws->dorder[i], tau) < 0)
            return -EAGAIN;
    return 0;
}

/* Keeps the refinement just built as the best so far. */
static void keep_best(cost_ctx *c) {
    llep_plan_cost_ws *ws = c->ws;

    memcpy(ws->best_raw, ws->raw, c->nraw * sizeof(*ws->raw));
    memcpy(ws->best_t, ws->t, c->np * sizeof(*ws->t));
    memcpy(ws->best_s, ws->s, c->np * sizeof(*ws->s));
    memcpy(ws->best_shed, ws->shed, c->p->num_experts * sizeof(*ws->shed));
    c->best_nraw = c->nraw;
    c->best_repeat = c->repeat;
}

/* The refinement: the least tau (within 1/64 of it, at most 40 halvings) for which
 * refine_for() succeeds, between the ideal bound and EP's makespan, which always succeeds
 * (nothing is over it), or LLA's where that succeeds. Leaves the plan in ws->raw (the
 * kept one, with the experts that stay whole added) and returns its modelled makespan. */
static double refine(cost_ctx *c, double ideal, double ep_ns, double lla_ns) {
    llep_plan_cost_ws *ws = c->ws;
    double lo = ideal, hi = ep_ns;

    for (uint32_t i = 0; i < c->m.num_points; i++)
        c->point_ns[i] = chunk(c, c->m.rows[i]);
    order_overloaded(c, ideal);
    refine_for(c, ep_ns); /* nothing is over EP's makespan: the plan is EP's */
    keep_best(c);
    /* LLA's makespan is often close to the ideal at large batches: starting from it, when it
     * is reachable, saves half the halvings. */
    if (lla_ns < hi && refine_for(c, lla_ns) == 0) {
        hi = lla_ns;
        keep_best(c);
    }
    for (int i = 0; i < 40 && hi - lo > hi / 64; i++) {
        double mid = lo + (hi - lo) / 2;
        if (refine_for(c, mid) == 0) {
            hi = mid;
            keep_best(c);
        } else {
            lo = mid;
        }
    }
    memcpy(ws->raw, ws->best_raw, c->best_nraw * sizeof(*ws->raw));
    memcpy(ws->t, ws->best_t, c->np * sizeof(*ws->t));
    memcpy(ws->s, ws->best_s, c->np * sizeof(*ws->s));
    c->nraw = c->best_nraw;
    const llep_plan *p = c->p;
    for (uint32_t x = 0; x < p->num_experts; x++) {
        if (ws->best_shed[x] || p->loads[x] == 0)
            continue;
        if (emit(c, x, llep__plan_native(p, x), 0, p->loads[x]) < 0)
            return INFINITY; /* more ranges than the plan holds: not a candidate */
    }
    /* The device times kept are the plan's model, summed in another order. */
    return c->best_repeat ? model_of_raw(c, ws->raw, c->nraw) : makespan(c);
}

/* ---- choosing --------------------------------------------------------------------------- */

static int plan_cost(llep_plan *p, const llep_plan_params *params, const uint8_t *held) {
    cost_ctx c;
    double ep_ns, lla_ns, ref_ns;

    ctx_init(&c, p, params->cost, params->cost_layer, held, params->devices_per_node);
    double ideal = ep_times(&c) / c.np;
    ep_ns = 0;
    for (uint32_t d = 0; d < c.np; d++)
        if (c.ws->t0[d] > ep_ns)
            ep_ns = c.ws->t0[d];
    if (p->mode == LLEP_PLAN_EP) {
        p->pick = LLEP_PICK_EP;
        p->model_ns = ep_ns;
        return 0;
    }
    /* p holds LLA's plan; the refinement is built beside it, in the cost workspace. */
    lla_ns = model_of_plan(&c);
    ref_ns = refine(&c, ideal, ep_ns, lla_ns);
    int ep_ok = params->policy != LLEP_POLICY_LLEP;
    if (ep_ok && ep_ns <= lla_ns && ep_ns <= ref_ns) {
        llep__plan_set_ep(p);
        p->pick = LLEP_PICK_EP;
        p->model_ns = ep_ns;
    } else if (lla_ns <= ref_ns) {
        p->pick = LLEP_PICK_LLA;
        p->model_ns = lla_ns;
    } else {
        llep__plan_set_result(p, c.ws->raw, c.nraw, LLEP_PLAN_LLEP);
        p->pick = LLEP_PICK_REFINED;
        p->model_ns = ref_ns;
    }
    return 0;
}

int llep__plan_run(llep_plan *p, const uint64_t *loads, const llep_plan_params *params,
                   const uint8_t *held) {
    int r;

    int cost = params && params->planner == LLEP_PLANNER_COST && params->cost &&
               params->cost_layer;
    /* Check the model before touching the previous result. */
    if (cost && llep__cost_check(params->cost, NULL, 0) < 0)
        return -EINVAL;
    r = llep__plan_compute_cached(p, loads, params, held);
    if (r < 0 || !cost)
        return r;
    r = plan_cost(p, params, held);
#ifndef NDEBUG
    /* As llep__plan_compute(): debug builds check every plan. */
    char err[256];
    if (r == 0 && llep__plan_validate(p, err, sizeof(err)) < 0) {
        fprintf(stderr, "llep: cost planner bug: invalid plan: %s\n", err);
        abort();
    }
#endif
    return r;
}

double llep__plan_model_ns(llep_plan *p, const llep_cost_model *m, const llep_cost_layer *l,
                           const uint8_t *held) {
    cost_ctx c;

    ctx_init(&c, p, m, l, held, 0);
    return model_of_plan(&c);
}
