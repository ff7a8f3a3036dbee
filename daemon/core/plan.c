/* Least-Loaded Assignment (DESIGN.md section 2).
 *
 * The planner runs once per step on the daemon's critical path, so it allocates nothing after
 * llep__plan_init() and works in O(N log N + (N + P) * P) for N experts on P devices. */
#include "plan.h"
#include "fnv.h"
#include "plan-internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef llep_plan_raw raw_range;

struct llep_plan_ws {
    uint32_t *order;      /* [N] experts sorted by load, largest first */
    uint32_t *tmp;        /* [N] merge-sort scratch */
    uint64_t *pending;    /* [P] native load not yet visited */
    uint64_t *assigned;   /* [P] tokens given so far */
    raw_range *raw;       /* [max ranges] */
    raw_range *raw2;      /* [max ranges] the other candidate of llep__plan_compute_cached() */
    uint32_t *helper_of;  /* [P] last expert that made a transfer to this device, + 1 */
    llep_plan_cost_ws cost; /* the cost planner's (plan-internal.h) */
};

/* Each expert gets at most one native range and one range that ends its spill; every other
 * range fills a device to capacity, which happens at most once per device. */
static uint32_t max_ranges(uint32_t n, uint32_t p) {
    return 2 * n + p;
}

void llep__plan_params_default(llep_plan_params *ret) {
    ret->alpha = LLEP_DEFAULT_ALPHA;
    ret->lambda = LLEP_DEFAULT_LAMBDA;
    ret->min_tokens = LLEP_DEFAULT_MIN_TOKENS;
    ret->policy = LLEP_POLICY_AUTO;
    ret->scale_min_tokens = false;
    ret->devices_per_node = 0;
    ret->planner = LLEP_PLANNER_LLA;
    ret->cost = NULL;
    ret->cost_layer = NULL;
}

int llep__plan_params_check(const llep_plan_params *params, char *err, size_t errlen) {
    const char *what = NULL;

    if (!params)
        what = "no parameters";
    else if (!(params->alpha > 0) || !isfinite(params->alpha))
        what = "alpha must be a finite number > 0";
    else if (!(params->lambda > 0) || !isfinite(params->lambda))
        what = "lambda must be a finite number > 0";
    else if (params->policy != LLEP_POLICY_AUTO && params->policy != LLEP_POLICY_EP &&
             params->policy != LLEP_POLICY_LLEP)
        what = "unknown policy";
    else if (params->planner != LLEP_PLANNER_LLA && params->planner != LLEP_PLANNER_COST)
        what = "unknown planner";
    if (!what)
        return 0;
    if (err && errlen)
        snprintf(err, errlen, "%s", what);
    return -EINVAL;
}

static int cost_ws_init(llep_plan_cost_ws *c, uint32_t n, uint32_t np) {
    c->t0 = calloc(np, sizeof(*c->t0));
    c->t = calloc(np, sizeof(*c->t));
    c->s = calloc(np, sizeof(*c->s));
    c->acc = calloc(np, sizeof(*c->acc));
    c->touched = calloc(np, sizeof(*c->touched));
    c->mark = calloc(np, sizeof(*c->mark));
    c->done = calloc(np, sizeof(*c->done));
    c->shed = calloc(n, sizeof(*c->shed));
    c->raw = calloc(max_ranges(n, np), sizeof(*c->raw));
    c->chunk0 = calloc(n, sizeof(*c->chunk0));
    c->best_raw = calloc(max_ranges(n, np), sizeof(*c->best_raw));
    c->best_t = calloc(np, sizeof(*c->best_t));
    c->best_s = calloc(np, sizeof(*c->best_s));
    c->best_shed = calloc(n, sizeof(*c->best_shed));
    c->dorder = calloc(np, sizeof(*c->dorder));
    c->xorder = calloc(n, sizeof(*c->xorder));
    c->tree = calloc(2 * (size_t)llep__plan_tree_size(np), sizeof(*c->tree));
    if (!c->t0 || !c->t || !c->s || !c->acc || !c->touched || !c->mark || !c->done ||
        !c->shed || !c->raw || !c->chunk0 || !c->dorder || !c->xorder || !c->tree ||
        !c->best_raw || !c->best_t || !c->best_s || !c->best_shed)
        return -ENOMEM;
    return 0;
}

static void cost_ws_fini(llep_plan_cost_ws *c) {
    free(c->t0);
    free(c->t);
    free(c->s);
    free(c->acc);
    free(c->touched);
    free(c->mark);
    free(c->done);
    free(c->shed);
    free(c->raw);
    free(c->chunk0);
    free(c->best_raw);
    free(c->best_t);
    free(c->best_s);
    free(c->best_shed);
    free(c->dorder);
    free(c->xorder);
    free(c->tree);
}

uint32_t llep__plan_max_ranges(const llep_plan *p) {
    return max_ranges(p->num_experts, p->num_devices);
}

llep_plan_cost_ws *llep__plan_cost_ws(llep_plan *p) {
    return &p->ws->cost;
}

int llep__plan_init(llep_plan *p, uint32_t n, uint32_t np) {
    memset(p, 0, sizeof(*p));
    if (np == 0 || n == 0 || n % np != 0 || n > LLEP_MAX_EXPERTS || np > LLEP_MAX_DEVICES)
        return -EINVAL;

    p->num_experts = n;
    p->num_devices = np;
    p->experts_per_device = n / np;
    p->ws = calloc(1, sizeof(*p->ws));
    p->loads = calloc(n, sizeof(*p->loads));
    p->native_loads = calloc(np, sizeof(*p->native_loads));
    p->device_loads = calloc(np, sizeof(*p->device_loads));
    p->range_off = calloc((size_t)n + 1, sizeof(*p->range_off));
    p->ranges = calloc(max_ranges(n, np), sizeof(*p->ranges));
    p->transfers = calloc(max_ranges(n, np), sizeof(*p->transfers));
    if (!p->ws || !p->loads || !p->native_loads || !p->device_loads || !p->range_off ||
        !p->ranges || !p->transfers)
        goto fail;
    p->ws->order = calloc(n, sizeof(*p->ws->order));
    p->ws->tmp = calloc(n, sizeof(*p->ws->tmp));
    p->ws->pending = calloc(np, sizeof(*p->ws->pending));
    p->ws->assigned = calloc(np, sizeof(*p->ws->assigned));
    p->ws->raw = calloc(max_ranges(n, np), sizeof(*p->ws->raw));
    p->ws->raw2 = calloc(max_ranges(n, np), sizeof(*p->ws->raw2));
    p->ws->helper_of = calloc(np, sizeof(*p->ws->helper_of));
    if (!p->ws->order || !p->ws->tmp || !p->ws->pending || !p->ws->assigned || !p->ws->raw ||
        !p->ws->raw2 || !p->ws->helper_of || cost_ws_init(&p->ws->cost, n, np) < 0)
        goto fail;
    p->imbalance = 1.0;
    p->capacity = 1;
    return 0;

fail:
    llep__plan_fini(p);
    return -ENOMEM;
}

void llep__plan_fini(llep_plan *p) {
    if (p->ws) {
        free(p->ws->order);
        free(p->ws->tmp);
        free(p->ws->pending);
        free(p->ws->assigned);
        free(p->ws->raw);
        free(p->ws->raw2);
        free(p->ws->helper_of);
        cost_ws_fini(&p->ws->cost);
        free(p->ws);
    }
    free(p->loads);
    free(p->native_loads);
    free(p->device_loads);
    free(p->range_off);
    free(p->ranges);
    free(p->transfers);
    memset(p, 0, sizeof(*p));
}

/* Larger load first; equal loads by lower expert id, so the order is total and every
 * participant visits experts identically. */
static inline int visits_before(const uint64_t *loads, uint32_t a, uint32_t b) {
    return loads[a] > loads[b] || (loads[a] == loads[b] && a < b);
}

/* Bottom-up merge sort: stable, no recursion, no allocation, and a comparison the compiler can
 * inline (qsort's callback costs more than the whole plan at N = 128). */
static void sort_experts(const uint64_t *loads, uint32_t *order, uint32_t *tmp, uint32_t n) {
    uint32_t *src = order, *dst = tmp;

    /* Insertion-sort runs of 8 first: cheaper than merging tiny runs. */
    const uint32_t run = 8;
    for (uint32_t lo = 0; lo < n; lo += run) {
        uint32_t hi = lo + run < n ? lo + run : n;
        for (uint32_t i = lo + 1; i < hi; i++) {
            uint32_t v = order[i], j = i;
            while (j > lo && visits_before(loads, v, order[j - 1])) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = v;
        }
    }
    for (uint32_t width = run; width < n; width *= 2) {
        for (uint32_t lo = 0; lo < n; lo += 2 * width) {
            uint32_t mid = lo + width < n ? lo + width : n;
            uint32_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            uint32_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                dst[k++] = visits_before(loads, src[j], src[i]) ? src[j++] : src[i++];
            while (i < mid)
                dst[k++] = src[i++];
            while (j < hi)
                dst[k++] = src[j++];
        }
        uint32_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != order)
        memcpy(order, src, n * sizeof(*order));
}

/* Sums loads per native device; returns -EOVERFLOW when the total leaves 64 bits. */
static int native_loads(llep_plan *p, const uint64_t *loads) {
    uint64_t total = 0;

    for (uint32_t d = 0; d < p->num_devices; d++) {
        uint64_t sum = 0;
        for (uint32_t i = 0; i < p->experts_per_device; i++) {
            uint64_t l = loads[d * p->experts_per_device + i];
            if (__builtin_add_overflow(sum, l, &sum))
                return -EOVERFLOW;
        }
        p->native_loads[d] = sum;
        if (__builtin_add_overflow(total, sum, &total))
            return -EOVERFLOW;
    }
    p->total = total;
    return 0;
}

static double imbalance_of(const llep_plan *p) {
    uint64_t max = 0;

    if (p->total == 0)
        return 1.0;
    for (uint32_t d = 0; d < p->num_devices; d++)
        if (p->native_loads[d] > max)
            max = p->native_loads[d];
    return (double)max * p->num_devices / (double)p->total;
}

/* cap = alpha * floor(total / P), at least 1 and clamped to 64 bits. */
static uint64_t capacity_of(const llep_plan *p, double alpha) {
    double cap = floor(alpha * (double)(p->total / p->num_devices));

    if (cap < 1)
        return 1;
    if (cap >= 18446744073709551615.0)
        return UINT64_MAX;
    return (uint64_t)cap;
}

typedef struct lla_state {
    llep_plan *p;
    struct llep_plan_ws *ws;
    uint64_t cap, min_tokens;
    uint32_t per_node;     /* devices per node; P when the plan is flat */
    uint32_t nraw;
    const uint8_t *held;   /* [N * P] helpers holding a copy to prefer; NULL: none */
} lla_state;

static inline uint64_t eff(const lla_state *s, uint32_t d) {
    return s->ws->assigned[d] + s->ws->pending[d];
}

/* Room under the capacity; 0 when the device is at or over it. */
static inline uint64_t room(const lla_state *s, uint32_t d) {
    uint64_t e = eff(s, d);
    return e < s->cap ? s->cap - e : 0;
}

static void give(lla_state *s, uint32_t expert, uint32_t device, uint64_t start, uint64_t n) {
    raw_range *r = &s->ws->raw[s->nraw++];

    r->expert = expert;
    r->device = device;
    r->start = start;
    r->end = start + n;
    s->ws->assigned[device] += n;
}

/* Least effective load among devices [lo, hi) other than `skip`; ties to the lower index.
 * UINT32_MAX when the span holds no other device. */
static uint32_t least_loaded_in(const lla_state *s, uint32_t lo, uint32_t hi, uint32_t skip) {
    uint32_t best = UINT32_MAX;
    uint64_t best_eff = 0;

    for (uint32_t d = lo; d < hi; d++) {
        if (d == skip)
            continue;
        uint64_t e = eff(s, d);
        if (best == UINT32_MAX || e < best_eff) {
            best = d;
            best_eff = e;
        }
    }
    return best;
}

/* Of two candidates (either may be UINT32_MAX), the one with less effective load; ties to the
 * lower index. */
static uint32_t less_loaded(const lla_state *s, uint32_t a, uint32_t b) {
    if (a == UINT32_MAX)
        return b;
    if (b == UINT32_MAX)
        return a;
    if (eff(s, b) < eff(s, a) || (eff(s, b) == eff(s, a) && b < a))
        return b;
    return a;
}

/* The chunk of r tokens device d may take under the capacity rule of section 2, step 5: its
 * room capped at r, and 0 when that is nothing or a small chunk (< m while r > c). */
static uint64_t chunk_for(const lla_state *s, uint32_t d, uint64_t r) {
    uint64_t c = room(s, d);

    if (c > r)
        c = r;
    if (c < s->min_tokens && c < r)
        return 0;
    return c;
}

/* Picks the next helper for r spilled tokens of an expert native to `native` and sets
 * *ret_c to its chunk, or to 0 when nobody qualifies (a forced assignment).
 *
 * Section 2 orders the other devices by effective load and takes the first whose chunk
 * qualifies. Room shrinks as effective load grows, so a device qualifies only if the
 * least-loaded one does: the first qualifying device is always the least-loaded, and the
 * forced assignment goes to the same device, which makes the scan a single argmin.
 * Hierarchically the native device's own node is tried first and the other nodes after, each
 * by the same argmin; when neither qualifies, the forced assignment still goes to the
 * least-loaded device of all. With one node (or one device per node) one of the two spans is
 * empty and this is exactly the flat choice. */
static uint32_t pick_helper_lla(const lla_state *s, uint32_t native, uint64_t r,
                               uint64_t *ret_c) {
    uint32_t lo = native / s->per_node * s->per_node, hi = lo + s->per_node;
    uint32_t near = least_loaded_in(s, lo, hi, native);

    *ret_c = near != UINT32_MAX ? chunk_for(s, near, r) : 0;
    if (*ret_c > 0)
        return near;
    /* Other nodes: below lo first, so that ties still go to the lower index. */
    uint32_t far = less_loaded(s, least_loaded_in(s, 0, lo, native),
                               least_loaded_in(s, hi, s->p->num_devices, native));
    *ret_c = far != UINT32_MAX ? chunk_for(s, far, r) : 0;
    if (*ret_c > 0)
        return far;
    return less_loaded(s, near, far);
}

/* With copies held (llep__plan_compute_cached()), the least-loaded device holding a copy of
 * the expert whose chunk qualifies under section 2's rule comes first; otherwise, and without
 * copies, section 2's choice. */
static uint32_t pick_helper(const lla_state *s, uint32_t expert, uint32_t native, uint64_t r,
                            uint64_t *ret_c) {
    if (s->held) {
        uint32_t np = s->p->num_devices, best = UINT32_MAX;
        const uint8_t *h = s->held + (size_t)expert * np;
        for (uint32_t d = 0; d < np; d++)
            if (d != native && h[d] && chunk_for(s, d, r) > 0)
                best = less_loaded(s, best, d);
        if (best != UINT32_MAX) {
            *ret_c = chunk_for(s, best, r);
            return best;
        }
    }
    return pick_helper_lla(s, native, r, ret_c);
}

/* Spills r tokens of `expert` starting at offset o (DESIGN.md section 2, step 5). Returns
 * the number of forced assignments made (0 or 1). */
static int spill(lla_state *s, uint32_t expert, uint32_t native, uint64_t o, uint64_t r) {
    int forced = 0;

    while (r > 0) {
        uint64_t c;
        uint32_t g = pick_helper(s, expert, native, r, &c);
        if (c == 0) {
            c = r; /* nobody qualifies: force all of r onto the least-loaded device */
            forced = 1;
        }
        give(s, expert, g, o, c);
        o += c;
        r -= c;
    }
    return forced;
}

static void lla_reset(llep_plan *p, uint64_t min_tokens, uint32_t per_node, lla_state *s) {
    s->p = p;
    s->ws = p->ws;
    s->cap = p->capacity;
    s->min_tokens = min_tokens;
    s->per_node = per_node ? per_node : p->num_devices;
    s->nraw = 0;
    s->held = NULL;
    memcpy(s->ws->pending, p->native_loads, p->num_devices * sizeof(*s->ws->pending));
    memset(s->ws->assigned, 0, p->num_devices * sizeof(*s->ws->assigned));
}

/* Visits the experts of order[0..n) (sorted, loaded) as step 4 says. With stop_on_force, gives
 * up at the first forced assignment and returns -EAGAIN. */
static int visit(lla_state *s, const uint32_t *order, uint32_t n, int stop_on_force) {
    llep_plan *p = s->p;

    for (uint32_t i = 0; i < n; i++) {
        uint32_t e = order[i];
        uint64_t l = p->loads[e];
        uint32_t nat = llep__plan_native(p, e);
        s->ws->pending[nat] -= l;
        uint64_t avail = p->num_devices == 1 ? l : room(s, nat);
        int forced = 0;
        if (avail >= l) {
            give(s, e, nat, 0, l);
        } else if (avail > 0) {
            give(s, e, nat, 0, avail);
            forced = spill(s, e, nat, avail, l - avail);
        } else {
            forced = spill(s, e, nat, 0, l);
        }
        if (forced && stop_on_force)
            return -EAGAIN;
    }
    return 0;
}

/* Least-Loaded Assignment, with a shortcut that gives exactly the same plan.
 *
 * An expert whose native device is at or under capacity when visited keeps all its tokens and
 * leaves every effective load as it was (pending falls by l, assigned rises by l). Helpers
 * are only ever filled up to the capacity, except by a forced assignment. So as long as no
 * assignment is forced, only the experts of devices that start over capacity change anything,
 * and only they need sorting and visiting; the rest simply stay native. If an assignment is
 * forced, a device may go over capacity later, and the full visit runs instead. Under skew
 * this sorts a handful of experts rather than all N. Hierarchical placement changes which
 * helper gets a chunk, but still fills helpers no further than the capacity except by a
 * forced assignment, so the argument holds for it too. */
static void lla(llep_plan *p, uint64_t min_tokens, uint32_t per_node, const uint8_t *held,
                lla_state *s) {
    struct llep_plan_ws *ws = p->ws;
    uint32_t n = 0;

    lla_reset(p, min_tokens, per_node, s);
    s->held = held;
    for (uint32_t e = 0; e < p->num_experts; e++)
        if (p->loads[e] > 0 && p->native_loads[llep__plan_native(p, e)] > s->cap)
            ws->order[n++] = e;
    sort_experts(p->loads, ws->order, ws->tmp, n);
    if (visit(s, ws->order, n, 1) == 0) {
        for (uint32_t e = 0; e < p->num_experts; e++) {
            uint32_t nat = llep__plan_native(p, e);
            if (p->loads[e] > 0 && p->native_loads[nat] <= s->cap)
                give(s, e, nat, 0, p->loads[e]);
        }
        return;
    }

    lla_reset(p, min_tokens, per_node, s);
    s->held = held;
    n = 0;
    for (uint32_t e = 0; e < p->num_experts; e++)
        if (p->loads[e] > 0)
            ws->order[n++] = e;
    sort_experts(p->loads, ws->order, ws->tmp, n);
    visit(s, ws->order, n, 0);
}

/* The plan for EP: each loaded expert entirely on its native device. */
static uint32_t ep_ranges(llep_plan *p) {
    raw_range *raw = p->ws->raw;
    uint32_t nraw = 0;

    for (uint32_t e = 0; e < p->num_experts; e++)
        if (p->loads[e] > 0)
            raw[nraw++] = (raw_range){ e, llep__plan_native(p, e), 0, p->loads[e] };
    return nraw;
}

/* Groups the raw ranges by expert (counting sort; stable, so each expert's ranges stay in
 * offset order), derives device loads, and lists one transfer per (expert, helper). */
static void finish(llep_plan *p, const raw_range *raw, uint32_t nraw) {
    uint32_t *off = p->range_off;
    uint32_t *helper_of = p->ws->helper_of;

    memset(off, 0, ((size_t)p->num_experts + 1) * sizeof(*off));
    for (uint32_t i = 0; i < nraw; i++)
        off[raw[i].expert + 1]++;
    for (uint32_t e = 0; e < p->num_experts; e++)
        off[e + 1] += off[e];

    memset(p->device_loads, 0, p->num_devices * sizeof(*p->device_loads));
    memset(helper_of, 0, p->num_devices * sizeof(*helper_of));
    p->num_transfers = 0;
    /* off[e] is used as the fill cursor and restored afterwards by shifting. */
    for (uint32_t i = 0; i < nraw; i++) {
        const raw_range *r = &raw[i];
        uint32_t native = llep__plan_native(p, r->expert);
        p->ranges[off[r->expert]++] = (llep_range){ r->device, r->start, r->end };
        p->device_loads[r->device] += r->end - r->start;
        if (r->device != native && helper_of[r->device] != r->expert + 1) {
            helper_of[r->device] = r->expert + 1;
            p->transfers[p->num_transfers++] = (llep_transfer){ r->expert, native, r->device };
        }
    }
    for (uint32_t e = p->num_experts; e > 0; e--)
        off[e] = off[e - 1];
    off[0] = 0;
    p->num_ranges = nraw;
}

/* The largest device load of raw[0..nraw) (uses pending as scratch) and, in *ret_moves, the
 * (expert, helper) pairs whose helper holds no copy. */
static uint64_t raw_cost(llep_plan *p, const raw_range *raw, uint32_t nraw, const uint8_t *held,
                         uint32_t *ret_moves) {
    uint64_t *load = p->ws->pending, max = 0;
    uint32_t *helper_of = p->ws->helper_of, moves = 0;

    memset(load, 0, p->num_devices * sizeof(*load));
    memset(helper_of, 0, p->num_devices * sizeof(*helper_of));
    for (uint32_t i = 0; i < nraw; i++) {
        const raw_range *r = &raw[i];
        load[r->device] += r->end - r->start;
        if (r->device != llep__plan_native(p, r->expert) && helper_of[r->device] != r->expert + 1) {
            helper_of[r->device] = r->expert + 1;
            moves += !held[(size_t)r->expert * p->num_devices + r->device];
        }
    }
    for (uint32_t d = 0; d < p->num_devices; d++)
        if (load[d] > max)
            max = load[d];
    *ret_moves = moves;
    return max;
}

/* LLA with and without the preference for helpers that hold a copy; the preferred plan only
 * when it moves fewer weights and its largest device load is no larger. */
static uint32_t lla_cached(llep_plan *p, uint64_t min_tokens, uint32_t per_node,
                           const uint8_t *held) {
    lla_state s;
    uint32_t moves_c, moves_b;

    lla(p, min_tokens, per_node, held, &s);
    uint32_t nc = s.nraw;
    memcpy(p->ws->raw2, p->ws->raw, nc * sizeof(*p->ws->raw));
    uint64_t max_c = raw_cost(p, p->ws->raw2, nc, held, &moves_c);
    lla(p, min_tokens, per_node, NULL, &s);
    uint64_t max_b = raw_cost(p, p->ws->raw, s.nraw, held, &moves_b);
    if (moves_c < moves_b && max_c <= max_b) {
        memcpy(p->ws->raw, p->ws->raw2, nc * sizeof(*p->ws->raw));
        return nc;
    }
    return s.nraw;
}

void llep__plan_set_result(llep_plan *p, const llep_plan_raw *raw, uint32_t nraw,
                           enum llep_plan_mode mode) {
    p->mode = mode;
    finish(p, raw, nraw);
}

void llep__plan_set_ep(llep_plan *p) {
    p->mode = LLEP_PLAN_EP;
    finish(p, p->ws->raw, ep_ranges(p));
}

int llep__plan_compute(llep_plan *p, const uint64_t *loads, const llep_plan_params *params) {
    return llep__plan_compute_cached(p, loads, params, NULL);
}

int llep__plan_compute_cached(llep_plan *p, const uint64_t *loads, const llep_plan_params *params,
                              const uint8_t *held) {
    llep_plan_params defaults;
    int r;

    if (!p || !p->ws || !loads)
        return -EINVAL;
    if (!params) {
        llep__plan_params_default(&defaults);
        params = &defaults;
    }
    r = llep__plan_params_check(params, NULL, 0);
    if (r < 0)
        return r;
    if (params->devices_per_node && p->num_devices % params->devices_per_node != 0)
        return -EINVAL;

    /* Check the total before touching the previous result. */
    uint64_t total = 0;
    for (uint32_t e = 0; e < p->num_experts; e++)
        if (__builtin_add_overflow(total, loads[e], &total))
            return -EOVERFLOW;

    memcpy(p->loads, loads, p->num_experts * sizeof(*loads));
    r = native_loads(p, loads);
    if (r < 0)
        return r; /* unreachable once the total fits, kept for safety of the sums */
    p->imbalance = imbalance_of(p);
    p->capacity = capacity_of(p, params->alpha);

    int use_llep = params->policy == LLEP_POLICY_LLEP ||
                   (params->policy == LLEP_POLICY_AUTO && p->imbalance >= params->lambda);
    if (p->total == 0)
        use_llep = 0;

    uint32_t nraw;
    if (use_llep && held) {
        nraw = lla_cached(p, llep__plan_min_tokens(p, params), params->devices_per_node, held);
        p->mode = LLEP_PLAN_LLEP;
    } else if (use_llep) {
        lla_state s;
        lla(p, llep__plan_min_tokens(p, params), params->devices_per_node, NULL, &s);
        nraw = s.nraw;
        p->mode = LLEP_PLAN_LLEP;
    } else {
        nraw = ep_ranges(p);
        p->mode = LLEP_PLAN_EP;
    }
    finish(p, p->ws->raw, nraw);
    p->pick = p->mode == LLEP_PLAN_LLEP ? LLEP_PICK_LLA : LLEP_PICK_EP;
    p->model_ns = 0;
#ifndef NDEBUG
    /* Debug builds (and so every test run) check each plan; an invalid one is a planner bug. */
    char err[256];
    if (llep__plan_validate(p, err, sizeof(err)) < 0) {
        fprintf(stderr, "llep: planner bug: invalid plan: %s\n", err);
        abort();
    }
#endif
    return 0;
}

uint64_t llep__plan_min_tokens(const llep_plan *p, const llep_plan_params *params) {
    uint64_t m = params->min_tokens;

    if (params->scale_min_tokens && m > p->capacity / p->num_devices)
        m = p->capacity / p->num_devices;
    return m;
}

int llep__plan_copy(llep_plan *dst, const llep_plan *src) {
    uint32_t n = src->num_experts, np = src->num_devices;

    if (!dst->ws || dst->num_experts != n || dst->num_devices != np)
        return -EINVAL;
    dst->mode = src->mode;
    dst->imbalance = src->imbalance;
    dst->capacity = src->capacity;
    dst->total = src->total;
    memcpy(dst->loads, src->loads, n * sizeof(*dst->loads));
    memcpy(dst->native_loads, src->native_loads, np * sizeof(*dst->native_loads));
    memcpy(dst->device_loads, src->device_loads, np * sizeof(*dst->device_loads));
    memcpy(dst->range_off, src->range_off, ((size_t)n + 1) * sizeof(*dst->range_off));
    memcpy(dst->ranges, src->ranges, src->num_ranges * sizeof(*dst->ranges));
    memcpy(dst->transfers, src->transfers, src->num_transfers * sizeof(*dst->transfers));
    dst->num_ranges = src->num_ranges;
    dst->num_transfers = src->num_transfers;
    dst->pick = src->pick;
    dst->model_ns = src->model_ns;
    return 0;
}

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static int validate_ranges(const llep_plan *p, uint64_t *sums, char *err, size_t errlen) {
    if (p->range_off[0] != 0 || p->range_off[p->num_experts] != p->num_ranges)
        return fail(err, errlen, "range offsets do not span %u ranges", p->num_ranges);
    for (uint32_t e = 0; e < p->num_experts; e++) {
        uint64_t next = 0;
        uint32_t native = llep__plan_native(p, e);
        if (p->range_off[e] > p->range_off[e + 1])
            return fail(err, errlen, "expert %u: range offsets decrease", e);
        for (uint32_t i = p->range_off[e]; i < p->range_off[e + 1]; i++) {
            const llep_range *r = &p->ranges[i];
            if (r->device >= p->num_devices)
                return fail(err, errlen, "expert %u: device %u out of range", e, r->device);
            if (r->start != next || r->end <= r->start)
                return fail(err, errlen, "expert %u: range [%llu, %llu) does not continue at %llu",
                            e, (unsigned long long)r->start, (unsigned long long)r->end,
                            (unsigned long long)next);
            if (p->mode == LLEP_PLAN_EP && r->device != native)
                return fail(err, errlen, "expert %u: EP plan places it on device %u, not %u", e,
                            r->device, native);
            sums[r->device] += r->end - r->start;
            next = r->end;
        }
        if (next != p->loads[e])
            return fail(err, errlen, "expert %u: ranges cover %llu of %llu tokens", e,
                        (unsigned long long)next, (unsigned long long)p->loads[e]);
    }
    return 0;
}

/* A transfer must exist for a pair exactly when some range of the expert runs on a device
 * other than its native one. */
static int range_on(const llep_plan *p, uint32_t e, uint32_t d) {
    for (uint32_t i = p->range_off[e]; i < p->range_off[e + 1]; i++)
        if (p->ranges[i].device == d)
            return 1;
    return 0;
}

static int transfer_listed(const llep_plan *p, uint32_t e, uint32_t d) {
    int n = 0;

    for (uint32_t t = 0; t < p->num_transfers; t++)
        n += p->transfers[t].expert == e && p->transfers[t].dst == d;
    return n;
}

static int validate_transfers(const llep_plan *p, char *err, size_t errlen) {
    for (uint32_t t = 0; t < p->num_transfers; t++) {
        const llep_transfer *x = &p->transfers[t];
        if (x->expert >= p->num_experts || x->dst >= p->num_devices)
            return fail(err, errlen, "transfer %u out of range", t);
        if (x->src != llep__plan_native(p, x->expert) || x->dst == x->src)
            return fail(err, errlen, "transfer %u: expert %u %u -> %u is not native -> helper", t,
                        x->expert, x->src, x->dst);
        if (!range_on(p, x->expert, x->dst))
            return fail(err, errlen, "transfer of expert %u to device %u has no range there",
                        x->expert, x->dst);
    }
    for (uint32_t i = 0; i < p->num_ranges; i++) {
        /* Find the expert of range i through the offsets. */
        uint32_t lo = 0, hi = p->num_experts;
        while (hi - lo > 1) {
            uint32_t mid = (lo + hi) / 2;
            if (p->range_off[mid] <= i)
                lo = mid;
            else
                hi = mid;
        }
        uint32_t d = p->ranges[i].device;
        if (d != llep__plan_native(p, lo) && transfer_listed(p, lo, d) != 1)
            return fail(err, errlen, "expert %u on helper %u needs exactly one transfer, has %d",
                        lo, d, transfer_listed(p, lo, d));
    }
    return 0;
}

int llep__plan_validate(const llep_plan *p, char *err, size_t errlen) {
    uint64_t sums[LLEP_MAX_DEVICES] = { 0 };
    int r;

    if (!p || !p->ws)
        return fail(err, errlen, "plan not initialised");
    r = validate_ranges(p, sums, err, errlen);
    if (r < 0)
        return r;
    for (uint32_t d = 0; d < p->num_devices; d++)
        if (sums[d] != p->device_loads[d])
            return fail(err, errlen, "device %u: load %llu but its ranges sum to %llu", d,
                        (unsigned long long)p->device_loads[d], (unsigned long long)sums[d]);
    if (p->mode == LLEP_PLAN_EP && p->num_transfers != 0)
        return fail(err, errlen, "EP plan lists %u transfers", p->num_transfers);
    return validate_transfers(p, err, errlen);
}

/* ---- hashing and cross-node traffic ------------------------------------------------------ */

uint64_t llep__plan_hash(const llep_plan *p) {
    uint64_t h = LLEP_FNV_OFFSET;

    h = llep__fnv_u64(h, p->num_experts);
    h = llep__fnv_u64(h, p->num_devices);
    h = llep__fnv_u64(h, (uint64_t)p->mode);
    h = llep__fnv_u64(h, p->capacity);
    h = llep__fnv_u64(h, p->total);
    for (uint32_t e = 0; e < p->num_experts; e++)
        h = llep__fnv_u64(h, p->loads[e]);
    for (uint32_t e = 0; e <= p->num_experts; e++)
        h = llep__fnv_u64(h, p->range_off[e]);
    for (uint32_t i = 0; i < p->num_ranges; i++) {
        h = llep__fnv_u64(h, p->ranges[i].device);
        h = llep__fnv_u64(h, p->ranges[i].start);
        h = llep__fnv_u64(h, p->ranges[i].end);
    }
    /* The count separates the transfers from the ranges, so no two results share a stream. */
    h = llep__fnv_u64(h, p->num_transfers);
    for (uint32_t t = 0; t < p->num_transfers; t++) {
        h = llep__fnv_u64(h, p->transfers[t].expert);
        h = llep__fnv_u64(h, p->transfers[t].src);
        h = llep__fnv_u64(h, p->transfers[t].dst);
    }
    return h;
}

/* Checks that the node loads of every expert sum to its load, without overflow. */
static int node_loads_match(const llep_plan *p, const uint64_t *const *node_loads, uint32_t k) {
    for (uint32_t x = 0; x < p->num_experts; x++) {
        uint64_t sum = 0;
        for (uint32_t j = 0; j < k; j++)
            if (__builtin_add_overflow(sum, node_loads[j][x], &sum))
                return 0;
        if (sum != p->loads[x])
            return 0;
    }
    return 1;
}

/* Slots of expert x computed off their home node. Its ranges and its home nodes' segments
 * [base_j, base_j + node_loads[j][x]) both partition [0, loads[x]) in order, so one merge
 * walk over the two visits every overlap once. */
static uint64_t remote_rows_of(const llep_plan *p, uint32_t x, uint32_t per_node,
                               const uint64_t *const *node_loads, uint32_t k) {
    uint64_t remote = 0, seg_start = 0;
    uint32_t i = p->range_off[x], j = 0;

    while (i < p->range_off[x + 1] && j < k) {
        const llep_range *r = &p->ranges[i];
        uint64_t seg_end = seg_start + node_loads[j][x];
        uint64_t lo = r->start > seg_start ? r->start : seg_start;
        uint64_t hi = r->end < seg_end ? r->end : seg_end;
        if (hi > lo && r->device / per_node != j)
            remote += hi - lo;
        if (r->end <= seg_end) {
            i++;
        } else {
            seg_start = seg_end;
            j++;
        }
    }
    return remote;
}

int llep__plan_node_traffic(const llep_plan *p, uint32_t devices_per_node,
                            const uint64_t *const *node_loads, uint32_t num_nodes,
                            uint64_t *ret_rows, uint32_t *ret_transfers) {
    uint64_t rows = 0;
    uint32_t transfers = 0;

    if (!p || !p->ws || !node_loads || devices_per_node == 0 ||
        p->num_devices % devices_per_node != 0 || p->num_devices / devices_per_node != num_nodes)
        return -EINVAL;
    for (uint32_t j = 0; j < num_nodes; j++)
        if (!node_loads[j])
            return -EINVAL;
    if (!node_loads_match(p, node_loads, num_nodes))
        return -EINVAL;
    for (uint32_t x = 0; x < p->num_experts; x++)
        rows += remote_rows_of(p, x, devices_per_node, node_loads, num_nodes);
    for (uint32_t t = 0; t < p->num_transfers; t++)
        transfers += p->transfers[t].src / devices_per_node !=
                     p->transfers[t].dst / devices_per_node;
    if (ret_rows)
        *ret_rows = rows;
    if (ret_transfers)
        *ret_transfers = transfers;
    return 0;
}
