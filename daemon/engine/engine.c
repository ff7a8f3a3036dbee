/* The MoE step engine (engine.h): counting, planning, dispatch, weight transfers, expert
 * chunks and combine, with every device buffer charged to a budget. */
#include "engine.h"
#include "engine-internal.h"
#include "errbuf.h"
#include "plan-cost.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ALIGN 64u

uint64_t llep__engine_monotonic_ns(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t align_up(uint64_t v) {
    return (v + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
}

void llep__engine_config_default(llep_engine_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->dtype = LLEP_DTYPE_F32;
    cfg->act = LLEP_ACT_SWIGLU;
    cfg->act_alpha = LLEP_ACT_DEFAULT_ALPHA;
    cfg->act_limit = LLEP_ACT_DEFAULT_LIMIT;
    llep__plan_params_default(&cfg->plan);
}

int llep__engine_dev_alloc(llep_engine *e, uint32_t d, uint64_t bytes, void **ret) {
    engine_device *dv = &e->dev[d];

    *ret = NULL;
    if (bytes == 0)
        return 0;
    /* The step's buffers of a device are all made in one turn, so one serving device each. */
    dv->step_on = llep__devices_serving(e->devs, d);
    int r = llep__devices_alloc(e->devs, d, bytes, LLEP_CHARGE_STEP, ret);
    if (r < 0)
        return r;
    dv->used += bytes;
    if (dv->used > dv->peak)
        dv->peak = dv->used;
    return 0;
}

void llep__engine_dev_free(llep_engine *e, uint32_t d, void **ptr, uint64_t bytes) {
    if (!*ptr)
        return;
    llep__devices_release(e->devs, e->dev[d].step_on, *ptr, bytes, LLEP_CHARGE_STEP);
    e->dev[d].used -= bytes;
    *ptr = NULL;
}

void llep__engine_turn_begin(llep_engine *e) {
    llep__devices_turn_wait(e->devs);
    for (uint32_t d = 0; d < e->p; d++)
        e->busy0[d] = e->be->ops->busy_ns(e->be, d);
}

void llep__engine_turn_end(llep_engine *e) {
    for (uint32_t d = 0; d < e->p; d++)
        e->busy_step[d] += e->be->ops->busy_ns(e->be, d) - e->busy0[d];
    llep__devices_turn_end(e->devs);
}

static int check_config(const llep_engine_config *c, char *err, size_t errlen) {
    const char *what = NULL;

    if (!c)
        what = "no configuration";
    else if (c->num_experts == 0 || c->top_k == 0 || c->hidden == 0 || c->inter == 0)
        what = "num_experts, top_k, hidden and inter must be > 0";
    else if (c->top_k > 4096 || c->hidden > (1u << 24) || c->inter > (1u << 24))
        what = "top_k, hidden or inter is too large";
    else if (c->num_devices == 0 || c->num_experts % c->num_devices != 0)
        what = "num_experts must be a multiple of num_devices (> 0)";
    else if (c->num_experts > LLEP_MAX_EXPERTS || c->num_devices > LLEP_MAX_DEVICES)
        what = "too many experts or devices";
    else if (c->dtype != LLEP_DTYPE_F32 && c->dtype != LLEP_DTYPE_BF16)
        what = "unknown dtype";
    else if (c->act != LLEP_ACT_SWIGLU && c->act != LLEP_ACT_SWIGLU_OAI)
        what = "unknown activation";
    else if (!(c->act_alpha >= 0) || !isfinite(c->act_alpha) || !(c->act_limit >= 0) ||
             !isfinite(c->act_limit))
        what = "act_alpha and act_limit must be finite and >= 0";
    else if (!c->w_gate || !c->w_up || !c->w_down)
        what = "weights missing";
    if (what) {
        if (err && errlen)
            snprintf(err, errlen, "%s", what);
        return -EINVAL;
    }
    return llep__plan_params_check(&c->plan, err, errlen);
}

/* Lays out one expert block: gate, up, down, then the biases present, each 64-aligned. */
static void expert_layout(llep_engine *e) {
    uint64_t dh = (uint64_t)e->d * e->h * e->esz, off = align_up(dh);

    e->off_up = off;
    off += align_up(dh);
    e->off_down = off;
    off += align_up(dh);
    e->off_bg = off;
    off += e->has_bg ? align_up((uint64_t)e->h * e->esz) : 0;
    e->off_bu = off;
    off += e->has_bu ? align_up((uint64_t)e->h * e->esz) : 0;
    e->off_bd = off;
    off += e->has_bd ? align_up((uint64_t)e->d * e->esz) : 0;
    e->expert_bytes = off;
}

static int alloc_host(llep_engine *e) {
    uint32_t maxr = 2 * e->n + e->p;

    e->dev = calloc(e->p, sizeof(*e->dev));
    e->dstats = calloc(e->p, sizeof(*e->dstats));
    e->loads = calloc(e->n, sizeof(*e->loads));
    e->rank = calloc(e->n, sizeof(*e->rank));
    e->cur_range = calloc(e->n, sizeof(*e->cur_range));
    e->chunk_row = calloc(maxr, sizeof(*e->chunk_row));
    e->recv = calloc(maxr, sizeof(*e->recv));
    e->hit = calloc(maxr, sizeof(*e->hit));
    e->held = calloc((size_t)e->n * e->p, sizeof(*e->held));
    e->busy0 = calloc(e->p, sizeof(*e->busy0));
    e->busy_step = calloc(e->p, sizeof(*e->busy_step));
    e->home_base = calloc(e->p, sizeof(*e->home_base));
    if (!e->dev || !e->dstats || !e->loads || !e->rank || !e->cur_range || !e->chunk_row ||
        !e->recv || !e->hit || !e->held || !e->busy0 || !e->busy_step || !e->home_base)
        return -ENOMEM;
    return 0;
}

/* Copies device d's native experts from the host configuration into its memory. */
static int upload_native(llep_engine *e, const llep_engine_config *c, uint32_t d) {
    const llep_backend_ops *ops = e->be->ops;
    uint64_t dh = (uint64_t)e->d * e->h * e->esz;
    int r = 0;

    for (uint32_t i = 0; i < e->m && r == 0; i++) {
        uint64_t x = (uint64_t)d * e->m + i;
        char *blk = (char *)e->dev[d].native + i * e->expert_bytes;
        r = ops->copy(e->be, d, blk, (const char *)c->w_gate + x * dh, dh);
        if (r == 0)
            r = ops->copy(e->be, d, blk + e->off_up, (const char *)c->w_up + x * dh, dh);
        if (r == 0)
            r = ops->copy(e->be, d, blk + e->off_down, (const char *)c->w_down + x * dh, dh);
        if (r == 0 && e->has_bg)
            r = ops->copy(e->be, d, blk + e->off_bg, (const char *)c->b_gate + x * e->h * e->esz,
                          e->h * e->esz);
        if (r == 0 && e->has_bu)
            r = ops->copy(e->be, d, blk + e->off_bu, (const char *)c->b_up + x * e->h * e->esz,
                          e->h * e->esz);
        if (r == 0 && e->has_bd)
            r = ops->copy(e->be, d, blk + e->off_bd, (const char *)c->b_down + x * e->d * e->esz,
                          e->d * e->esz);
    }
    return r;
}

/* The devices the engine runs on: the configuration's, or its own from the other fields. */
static int open_devices(llep_engine *e, const llep_engine_config *cfg, char *err,
                        size_t errlen) {
    if (cfg->devices) {
        e->devs = cfg->devices;
        e->be = llep__devices_view(e->devs);
        return 0;
    }
    llep_devices_config dc = {
        .backend = cfg->backend, .num_devices = cfg->num_devices, .threads = cfg->threads,
        .backend_devices = cfg->backend_devices, .budget = cfg->mem_budget,
        .token_budget = cfg->token_budget, .replica_cache = cfg->replica_cache,
    };
    int r = llep__devices_new(&dc, &e->devs, err, errlen);
    if (r < 0)
        return r;
    e->own_devs = 1;
    e->be = llep__devices_view(e->devs);
    return 0;
}

/* Charges and allocates every device's native experts in one turn, all or none: a layer that
 * does not fit somewhere takes nothing from the others meanwhile. */
static int alloc_native(llep_engine *e, char *err, size_t errlen) {
    int r = 0;
    uint32_t d;

    llep__devices_turn_wait(e->devs);
    e->failures_seen = llep__devices_failures(e->devs);
    for (d = 0; d < e->p && r == 0; d++) {
        engine_device *dv = &e->dev[d];
        dv->native_on = llep__devices_serving(e->devs, d);
        r = llep__devices_alloc(e->devs, d, dv->native_bytes, LLEP_CHARGE_HELD, &dv->native);
        if (r == 0) {
            dv->used = dv->peak = dv->native_bytes;
            continue;
        }
        llep_device_figures f;
        llep__devices_figures(e->devs, d, &f);
        if (r == -ENODEV)
            llep__errf(err, errlen, r, "device %u failed and no device is left to serve it", d);
        else if (r == -ENOMEM)
            llep__errf(err, errlen, r, "device %u: the native weights need %" PRIu64 " bytes, "
                       "%" PRIu64 " of its budget of %" PRIu64 " bytes are free (%" PRIu64
                       " in use)", d, dv->native_bytes, f.free, f.budget, f.used);
        else
            llep__errf(err, errlen, r, "device %u: %s allocating the native weights", d,
                       strerror(-r));
    }
    if (r < 0)
        for (uint32_t i = 0; i < e->p; i++) {
            engine_device *dv = &e->dev[i];
            llep__devices_release(e->devs, dv->native_on, dv->native, dv->native_bytes,
                                  LLEP_CHARGE_HELD);
            dv->native = NULL;
            dv->used = dv->peak = 0;
        }
    llep__devices_turn_end(e->devs);
    return r;
}

/* Copies the native experts onto their devices, one device per turn, so that steps of other
 * layers run between the devices of a large upload. */
static int upload_all(llep_engine *e, const llep_engine_config *cfg, char *err,
                      size_t errlen) {
    for (uint32_t d = 0; d < e->p; d++) {
        llep__devices_turn_wait(e->devs);
        int r = upload_native(e, cfg, d);
        int rs = e->be->ops->sync(e->be);
        llep__devices_turn_end(e->devs);
        if (r < 0)
            return llep__errf(err, errlen, r, "device %u: cannot queue the weight upload", d);
        if (rs < 0)
            return llep__errf(err, errlen, rs, "weight upload failed: %s", strerror(-rs));
    }
    return 0;
}

/* ---- failed devices (devices.h) ------------------------------------------------------------ */

/* Device d's experts are gone for good: its block on the failed device is given back, and every
 * later step fails saying why. */
static void lose_device(llep_engine *e, uint32_t d, const char *why) {
    engine_device *dv = &e->dev[d];

    if (dv->native)
        llep__devices_release(e->devs, dv->native_on, dv->native, dv->native_bytes,
                              LLEP_CHARGE_HELD);
    if (dv->native)
        dv->used -= dv->native_bytes;
    dv->native = NULL;
    dv->lost = true;
    if (!e->lost_why[0])
        snprintf(e->lost_why, sizeof(e->lost_why), "%s", why);
}

/* Under the turn: puts device d's experts on the device now serving it, from w. */
static int rehome_device(llep_engine *e, uint32_t d, const llep_engine_weights *w) {
    engine_device *dv = &e->dev[d];
    llep_engine_config c = e->cfg;
    void *blk = NULL;
    uint32_t on = llep__devices_serving(e->devs, d);

    int r = llep__devices_alloc(e->devs, d, dv->native_bytes, LLEP_CHARGE_HELD, &blk);
    if (r < 0)
        return r;
    llep__devices_release(e->devs, dv->native_on, dv->native, dv->native_bytes,
                          LLEP_CHARGE_HELD);
    dv->native = blk;
    dv->native_on = on;
    c.w_gate = w->w_gate;
    c.w_up = w->w_up;
    c.w_down = w->w_down;
    c.b_gate = w->b_gate;
    c.b_up = w->b_up;
    c.b_down = w->b_down;
    r = upload_native(e, &c, d);
    int rs = e->be->ops->sync(e->be);
    return r < 0 ? r : rs;
}

/* Under the turn: every device of this engine whose native blocks are on a failed device gets
 * them back where the weights can be had (cfg.reload), or is lost. Returns true when the
 * weights are not here yet (reload.get said -EAGAIN, e->wait_why says why): those devices are
 * neither back nor lost, and the next check asks again. */
static bool rehome_all(llep_engine *e) {
    llep_engine_weights w = { 0 };
    char why[160] = "";
    int got = 0;
    bool waiting = false;

    for (uint32_t d = 0; d < e->p; d++) {
        engine_device *dv = &e->dev[d];
        uint32_t on = llep__devices_serving(e->devs, d);
        if (dv->lost || on == dv->native_on)
            continue;
        if (on == LLEP_DEVICES_NONE) {
            snprintf(why, sizeof(why), "device %u failed and no device is left to serve it", d);
            lose_device(e, d, why);
            continue;
        }
        if (!e->cfg.reload.get) {
            snprintf(why, sizeof(why), "device %u failed and the weights of this layer's "
                     "experts %u..%u were only there (no copy is kept elsewhere)", d,
                     e->cfg.first_expert + d * e->m, e->cfg.first_expert + (d + 1) * e->m - 1);
            lose_device(e, d, why);
            continue;
        }
        char gerr[120] = "";
        int r = got ? 0 : e->cfg.reload.get(e->cfg.reload.arg, &w, gerr, sizeof(gerr));
        got |= r == 0;
        if (r == -EAGAIN) {
            waiting = true;
            snprintf(e->wait_why, sizeof(e->wait_why), "device %u failed and %s", d,
                     gerr[0] ? gerr : "its experts' weights are not here yet");
            continue;
        }
        if (r == 0)
            r = rehome_device(e, d, &w);
        if (r < 0) {
            snprintf(why, sizeof(why), "device %u failed and its experts could not be put on "
                     "device %u: %s", d, on, gerr[0] ? gerr : strerror(-r));
            lose_device(e, d, why);
        }
    }
    if (got && e->cfg.reload.put)
        e->cfg.reload.put(e->cfg.reload.arg, &w);
    return waiting;
}

int llep__engine_check_devices(llep_engine *e, char *err, size_t errlen) {
    uint64_t f = llep__devices_failures(e->devs);

    if (f != e->failures_seen) {
        llep__devices_turn_wait(e->devs);
        bool waiting = rehome_all(e);
        if (!waiting)
            e->failures_seen = f;
        llep__devices_turn_end(e->devs);
        if (waiting)
            return llep__errf(err, errlen, -EAGAIN, "%s", e->wait_why);
    }
    for (uint32_t d = 0; d < e->p; d++)
        if (e->dev[d].lost)
            return llep__errf(err, errlen, -EIO, "%s", e->lost_why);
    return 0;
}

int llep__engine_sync_failed(llep_engine *e, int r, char *err, size_t errlen) {
    char why[LLEP_DEVICES_WHY_MAX + 48];

    if (llep__devices_check_failed(e->devs, why, sizeof(why)) > 0)
        return llep__errf(err, errlen, -EIO, "%s: the step's work there is lost", why);
    return llep__errf(err, errlen, r, "%s backend failed: %s", e->be->ops->name, strerror(-r));
}

int llep__engine_new(const llep_engine_config *cfg, llep_engine **ret, char *err, size_t errlen) {
    llep_engine_config c;
    llep_engine *e;
    int r;

    if (!ret || !cfg) {
        r = ret ? check_config(NULL, err, errlen) : -EINVAL;
        goto fail_early;
    }
    *ret = NULL;
    c = *cfg;
    if (c.devices && c.num_devices == 0)
        c.num_devices = llep__devices_count(c.devices);
    r = check_config(&c, err, errlen);
    if (r < 0)
        goto fail_early;
    if (c.devices && c.num_devices != llep__devices_count(c.devices)) {
        r = llep__errf(err, errlen, -EINVAL, "num_devices is %u, the shared devices are %u",
                       c.num_devices, llep__devices_count(c.devices));
        goto fail_early;
    }
    cfg = &c;
    e = calloc(1, sizeof(*e));
    if (!e) {
        r = -ENOMEM;
        goto fail_early;
    }
    e->cfg = *cfg;
    e->n = cfg->num_experts;
    e->k = cfg->top_k;
    e->d = cfg->hidden;
    e->h = cfg->inter;
    e->p = cfg->num_devices;
    e->m = e->n / e->p;
    e->esz = llep__dtype_size(cfg->dtype);
    e->has_bg = cfg->b_gate != NULL;
    e->has_bu = cfg->b_up != NULL;
    e->has_bd = cfg->b_down != NULL;
    e->shape = (llep_ffn_shape){
        .hidden = e->d, .inter = e->h, .dtype = cfg->dtype, .act = cfg->act,
        .act_alpha = cfg->act_alpha > 0 ? cfg->act_alpha : LLEP_ACT_DEFAULT_ALPHA,
        .act_limit = cfg->act_limit > 0 ? cfg->act_limit : LLEP_ACT_DEFAULT_LIMIT,
    };
    expert_layout(e);

    r = alloc_host(e);
    if (r == 0)
        r = llep__plan_init(&e->plan, e->n, e->p);
    if (r < 0) {
        snprintf(err, errlen, "out of host memory");
        goto fail;
    }
    r = open_devices(e, cfg, err, errlen);
    if (r < 0)
        goto fail;
    e->cache_owner = llep__devices_cache_owner(e->devs);
    /* What the engine reports as its backend: the caller's table when it named one. */
    if (!e->cfg.backend)
        e->cfg.backend = e->be->ops;
    for (uint32_t d = 0; d < e->p; d++)
        e->dev[d].native_bytes = (uint64_t)e->m * e->expert_bytes;
    r = alloc_native(e, err, errlen);
    if (r == 0)
        r = upload_all(e, cfg, err, errlen);
    if (r < 0)
        goto fail;
    /* The layer no longer needs the caller's host copies. */
    e->cfg.w_gate = e->cfg.w_up = e->cfg.w_down = NULL;
    e->cfg.b_gate = e->cfg.b_up = e->cfg.b_down = NULL;
    *ret = e;
    return 0;

fail:
    llep__engine_free(e);  /* releases the reload's arg */
    return r;

fail_early:
    if (ret)
        *ret = NULL;
    if (cfg && cfg->reload.free_arg)
        cfg->reload.free_arg(cfg->reload.arg);
    return r;
}

void llep__engine_free(llep_engine *e) {
    if (!e)
        return;
    /* Nothing of this engine is queued outside its turns: its weights and its copies in the
     * replica cache go back to the devices, at once or when the turn in progress ends. */
    if (e->devs && e->cache_owner)
        llep__devices_cache_drop(e->devs, e->cache_owner);
    if (e->devs && e->dev)
        for (uint32_t d = 0; d < e->p; d++)
            llep__devices_release(e->devs, e->dev[d].native_on, e->dev[d].native,
                                  e->dev[d].native_bytes, LLEP_CHARGE_HELD);
    if (e->own_devs)
        llep__devices_free(e->devs);
    if (e->cfg.reload.free_arg)
        e->cfg.reload.free_arg(e->cfg.reload.arg);
    llep__plan_fini(&e->plan);
    free(e->dev);
    free(e->dstats);
    free(e->loads);
    free(e->rank);
    free(e->cur_range);
    free(e->chunk_row);
    free(e->recv);
    free(e->hit);
    free(e->held);
    free(e->busy0);
    free(e->busy_step);
    free(e->home_base);
    free(e->gather_src);
    free(e->combine_src);
    free(e);
}

llep_backend *llep__engine_backend(const llep_engine *e) {
    return e ? e->be : NULL;
}

llep_devices *llep__engine_devices(const llep_engine *e) {
    return e ? e->devs : NULL;
}

const char *llep__engine_error(const llep_engine *e) {
    return e ? e->err : "no engine";
}

const llep_plan *llep__engine_plan(const llep_engine *e) {
    return e && e->planned ? &e->plan : NULL;
}

uint64_t llep__engine_cache_owner(const llep_engine *e) {
    return e ? e->cache_owner : 0;
}

uint64_t llep__engine_expert_bytes(const llep_engine *e) {
    return e->expert_bytes;
}

int llep__engine_set_budget(llep_engine *e, uint32_t dev, uint64_t bytes) {
    if (!e || dev >= e->p)
        return -EINVAL;
    return llep__devices_set_budget(e->devs, dev, bytes, e->err, sizeof(e->err));
}

int llep__engine_count_batches(const llep_engine *e, const llep_engine_batch *b, uint32_t nb,
                               uint32_t num_experts, uint64_t *loads, size_t *home_base,
                               uint64_t *ret_slots, char *err, size_t errlen) {
    uint64_t slots = 0;

    memset(loads, 0, num_experts * sizeof(*loads));
    for (uint32_t p = 0; p < nb; p++) {
        home_base[p] = slots;
        if (b[p].tokens == 0)
            continue;
        if (!b[p].x || !b[p].topk_idx || !b[p].topk_w || !b[p].y)
            return llep__errf(err, errlen, -EINVAL,
                                             "batch %u: %u tokens but a NULL buffer", p,
                                             b[p].tokens);
        size_t n = (size_t)b[p].tokens * e->k;
        if (llep__k_count_loads(b[p].topk_idx, n, num_experts, loads) < 0) {
            for (size_t i = 0; i < n; i++)
                if (b[p].topk_idx[i] < 0 || (uint32_t)b[p].topk_idx[i] >= num_experts)
                    return llep__errf(err, errlen, -EINVAL,
                                                     "batch %u: topk_idx[%zu] = %d is not an "
                                                     "expert (N = %u)", p, i, b[p].topk_idx[i],
                                                     num_experts);
        }
        slots += n;
    }
    *ret_slots = slots;
    return 0;
}

/* Checks the batches and counts the per-expert loads; returns the slot count in *ret. */
static int count_loads(llep_engine *e, const llep_engine_batch *b, uint64_t *ret) {
    return llep__engine_count_batches(e, b, e->p, e->n, e->loads, e->home_base, ret, e->err,
                                      sizeof(e->err));
}

static int reserve_slots(llep_engine *e, uint64_t slots) {
    if (slots <= e->slot_cap)
        return 0;
    if (slots > SIZE_MAX / sizeof(void *))
        return -ENOMEM;
    const void **g = realloc(e->gather_src, slots * sizeof(*g));
    if (!g)
        return -ENOMEM;
    e->gather_src = g;
    const float **c = realloc(e->combine_src, slots * sizeof(*c));
    if (!c)
        return -ENOMEM;
    e->combine_src = c;
    e->slot_cap = slots;
    return 0;
}

/* Places each range's rows on its device (experts in id order, each expert's ranges in token
 * order) and derives every device's step buffers from the plan. */
void llep__engine_clear_rows(llep_engine *e, uint32_t ndev) {
    for (uint32_t d = 0; d < ndev; d++) {
        engine_device *dv = &e->dev[d];
        dv->rows = 0;
        dv->max_chunk = 0;
        dv->received = 0;
    }
}

static void layout(llep_engine *e) {
    const llep_plan *pl = &e->plan;
    size_t base = 0;

    llep__engine_clear_rows(e, e->p);
    for (uint32_t i = 0; i < pl->num_ranges; i++) {
        const llep_range *r = &pl->ranges[i];
        engine_device *dv = &e->dev[r->device];
        uint64_t len = r->end - r->start;
        e->chunk_row[i] = dv->rows;
        dv->rows += len;
        if (len > dv->max_chunk)
            dv->max_chunk = (uint32_t)len; /* check_sizes() bounds len */
    }
    for (uint32_t t = 0; t < pl->num_transfers; t++)
        e->dev[pl->transfers[t].dst].received++;
    for (uint32_t d = 0; d < e->p; d++) {
        engine_device *dv = &e->dev[d];
        dv->row_base = base;
        base += dv->rows;
        llep__engine_device_sizes(e, d);
    }
}

void llep__engine_device_sizes(llep_engine *e, uint32_t d) {
    engine_device *dv = &e->dev[d];

    dv->x_bytes = dv->rows * e->d * e->esz;
    dv->y_bytes = dv->rows * e->d * sizeof(float);
    dv->scratch_bytes = llep__ffn_scratch_bytes(&e->shape, dv->max_chunk);
}

uint64_t llep__engine_device_need(const llep_engine *e, uint32_t d) {
    const engine_device *dv = &e->dev[d];

    return (uint64_t)dv->received * e->expert_bytes + dv->x_bytes + dv->y_bytes +
           dv->scratch_bytes;
}

/* A chunk's rows are counted in 32 bits by the kernels; a plan range over that cannot run. */
static int check_sizes(llep_engine *e) {
    const llep_plan *pl = &e->plan;

    for (uint32_t i = 0; i < pl->num_ranges; i++)
        if (pl->ranges[i].end - pl->ranges[i].start > UINT32_MAX)
            return llep__errf(e->err, sizeof(e->err), -E2BIG, "expert chunk of %" PRIu64 " rows exceeds 2^32 - 1",
                             pl->ranges[i].end - pl->ranges[i].start);
    return 0;
}

/* Bytes the backend itself allocates on device d for the step (staging for dispatch and
 * combine, GEMM tiles): charged with the engine's own buffers. 0 for the CPU backend. */
static uint64_t backend_stage(const llep_engine *e, uint32_t d, const llep_engine_batch *b) {
    const llep_backend_ops *ops = e->be->ops;
    const engine_device *dv = &e->dev[d];

    return ops->step_overhead ? ops->step_overhead(e->be, d, &e->shape, dv->rows, b[d].tokens,
                                                   e->k, dv->max_chunk)
                              : 0;
}

/* Fails before anything is allocated when some device's step buffers do not fit in its budget
 * beside what every engine holds there (the step holds the turn: nobody else allocates). */
static int check_budgets(llep_engine *e, const llep_engine_batch *b) {
    bool failed = llep__devices_failures(e->devs) > 0;

    for (uint32_t d = 0; d < e->p; d++) {
        engine_device *dv = &e->dev[d];
        uint64_t w = (uint64_t)dv->received * e->expert_bytes, stage = backend_stage(e, d, b);
        uint64_t need = llep__engine_device_need(e, d) + stage, all = need;
        /* A device serving a failed one holds both logical devices' buffers. */
        uint32_t on = failed ? llep__devices_serving(e->devs, d) : d;
        for (uint32_t o = 0; failed && o < e->p; o++)
            if (o != d && llep__devices_serving(e->devs, o) == on)
                all += llep__engine_device_need(e, o) + backend_stage(e, o, b);
        if (llep__devices_fits(e->devs, d, all, LLEP_CHARGE_STEP))
            continue;
        llep_device_figures f;
        llep__devices_figures(e->devs, d, &f);
        return llep__errf(e->err, sizeof(e->err), -ENOMEM,
                          "device %u: the %s step needs %" PRIu64 " bytes (received weights "
                          "%" PRIu64 ", token rows %" PRIu64 ", results %" PRIu64
                          ", intermediates %" PRIu64 ", backend staging %" PRIu64 "), %" PRIu64
                          " of its budget of %" PRIu64 " bytes are free (%" PRIu64 " in use, %"
                          PRIu64 " by this layer)", d,
                          e->plan.mode == LLEP_PLAN_LLEP ? "LLEP" : "EP", need, w, dv->x_bytes,
                          dv->y_bytes, dv->scratch_bytes, stage, f.free, f.budget, f.used,
                          dv->used);
    }
    return 0;
}

void llep__engine_note_stage(llep_engine *e, uint32_t d, uint64_t bytes) {
    uint64_t peak = e->dev[d].used + bytes;

    if (peak > e->dev[d].peak)
        e->dev[d].peak = peak;
    llep__devices_note_peak(e->devs, d, bytes);
}

/* The backend's staging counts in each device's peak (it is not in `used`: the backend
 * allocates and frees it within the step). */
static void charge_stage_peaks(llep_engine *e, const llep_engine_batch *b) {
    for (uint32_t d = 0; d < e->p; d++)
        llep__engine_note_stage(e, d, backend_stage(e, d, b));
}

/* Tokens of expert x the plan gives device d. */
static uint64_t tokens_on(const llep_engine *e, uint32_t x, uint32_t d) {
    const llep_plan *pl = &e->plan;
    uint64_t n = 0;

    for (uint32_t i = pl->range_off[x]; i < pl->range_off[x + 1]; i++)
        if (pl->ranges[i].device == d)
            n += pl->ranges[i].end - pl->ranges[i].start;
    return n;
}

/* Under the turn, before the budgets are checked: every transfer whose helper holds a copy in
 * the replica cache takes it (pinned for the step) and needs no block or copy of its own. */
static void cache_lookup(llep_engine *e) {
    const llep_plan *pl = &e->plan;

    for (uint32_t t = 0; t < pl->num_transfers; t++) {
        const llep_transfer *tr = &pl->transfers[t];
        e->hit[t] = 0;
        void *c = llep__devices_cache_get(e->devs, tr->dst, e->cache_owner, tr->expert,
                                          tokens_on(e, tr->expert, tr->dst));
        if (!c)
            continue;
        e->hit[t] = 1;
        e->recv[t] = c;
        e->dev[tr->dst].received--;
        /* The copy serves this layer's step: it counts in the layer's use until the step ends,
         * so the layer's peak does not depend on the cache. */
        e->dev[tr->dst].used += e->expert_bytes;
        if (e->dev[tr->dst].used > e->dev[tr->dst].peak)
            e->dev[tr->dst].peak = e->dev[tr->dst].used;
        e->dstats[tr->dst].cache_hits++;
        e->dstats[tr->dst].weight_bytes_saved += e->expert_bytes;
    }
}

/* Frees the step's buffers. After a step whose copies all arrived (keep), each received block
 * is offered to the replica cache first; blocks from the cache stay there. */
static void free_step(llep_engine *e, int keep) {
    for (uint32_t t = 0; t < e->plan.num_transfers; t++) {
        const llep_transfer *tr = &e->plan.transfers[t];
        if (e->hit[t]) {
            e->dev[tr->dst].used -= e->expert_bytes;
            e->recv[t] = NULL;
            e->hit[t] = 0;
            continue;
        }
        if (keep && e->recv[t] &&
            llep__devices_cache_put(e->devs, tr->dst, e->cache_owner, tr->expert, e->recv[t],
                                    e->expert_bytes, tokens_on(e, tr->expert, tr->dst))) {
            /* The block is the device's cache now, not this layer's step. */
            e->dev[tr->dst].used -= e->expert_bytes;
            e->recv[t] = NULL;
            continue;
        }
        llep__engine_dev_free(e, tr->dst, &e->recv[t], e->expert_bytes);
    }
    for (uint32_t d = 0; d < e->p; d++)
        llep__engine_device_free(e, d);
    llep__devices_cache_unpin(e->devs, e->cache_owner);
}

void llep__engine_device_free(llep_engine *e, uint32_t d) {
    engine_device *dv = &e->dev[d];

    llep__engine_dev_free(e, d, &dv->x, dv->x_bytes);
    llep__engine_dev_free(e, d, (void **)&dv->y, dv->y_bytes);
    llep__engine_dev_free(e, d, &dv->scratch, dv->scratch_bytes);
}

int llep__engine_device_alloc(llep_engine *e, uint32_t d) {
    engine_device *dv = &e->dev[d];
    int r;

    r = llep__engine_dev_alloc(e, d, dv->x_bytes, &dv->x);
    if (r == 0)
        r = llep__engine_dev_alloc(e, d, dv->y_bytes, (void **)&dv->y);
    if (r == 0)
        r = llep__engine_dev_alloc(e, d, dv->scratch_bytes, &dv->scratch);
    return r;
}

static int alloc_step(llep_engine *e) {
    int r = 0;

    for (uint32_t t = 0; t < e->plan.num_transfers && r == 0; t++)
        if (!e->hit[t])
            r = llep__engine_dev_alloc(e, e->plan.transfers[t].dst, e->expert_bytes,
                                       &e->recv[t]);
    for (uint32_t d = 0; d < e->p && r == 0; d++)
        r = llep__engine_device_alloc(e, d);
    return r;
}

/* Sends every token-slot to the row its plan range gives it, in the global token order:
 * home devices in order, then tokens, then k (DESIGN.md section 2). Fills the sources the
 * gathers read and the result rows the combines read; counts rows crossing devices. */
static uint64_t route_slots(llep_engine *e, const llep_engine_batch *b) {
    const llep_plan *pl = &e->plan;
    uint64_t crossing = 0;

    memset(e->rank, 0, e->n * sizeof(*e->rank));
    for (uint32_t x = 0; x < e->n; x++)
        e->cur_range[x] = pl->range_off[x];
    for (uint32_t p = 0; p < e->p; p++) {
        size_t n = (size_t)b[p].tokens * e->k;
        const char *xs = b[p].x;
        const float **csrc = e->combine_src + e->home_base[p];
        for (size_t s = 0; s < n; s++) {
            uint32_t x = (uint32_t)b[p].topk_idx[s];
            uint64_t r = e->rank[x]++;
            uint32_t i = e->cur_range[x];
            while (r >= pl->ranges[i].end)
                i++;
            e->cur_range[x] = i;
            uint32_t d = pl->ranges[i].device;
            uint64_t row = e->chunk_row[i] + (r - pl->ranges[i].start);
            e->gather_src[e->dev[d].row_base + row] = xs + (s / e->k) * e->d * e->esz;
            csrc[s] = e->dev[d].y + row * e->d;
            if (d != p) {
                crossing++;
                e->dstats[d].token_bytes_in += (uint64_t)e->d * e->esz;
            }
        }
    }
    return crossing;
}

/* The weight block range i of expert x runs with: native, or the copy on its helper. */
static const char *range_weights(llep_engine *e, uint32_t x, uint32_t d) {
    uint32_t native = llep__plan_native(&e->plan, x);

    if (d == native)
        return llep__engine_native_block(e, d, x - native * e->m);
    for (uint32_t t = 0; t < e->plan.num_transfers; t++)
        if (e->plan.transfers[t].expert == x && e->plan.transfers[t].dst == d)
            return e->recv[t];
    return NULL; /* the plan validator rules this out */
}

/* Queues each device's work: weights received, rows gathered, then its expert chunks. */
static int queue_compute(llep_engine *e) {
    const llep_backend_ops *ops = e->be->ops;
    const llep_plan *pl = &e->plan;
    int r = 0;

    for (uint32_t t = 0; t < pl->num_transfers && r == 0; t++) {
        const llep_transfer *tr = &pl->transfers[t];
        if (e->hit[t])
            continue;
        r = ops->copy(e->be, tr->dst, e->recv[t], range_weights(e, tr->expert, tr->src),
                      e->expert_bytes);
        e->dstats[tr->dst].experts_received++;
        e->dstats[tr->dst].weight_bytes_in += e->expert_bytes;
    }
    for (uint32_t d = 0; d < e->p && r == 0; d++)
        if (e->dev[d].rows)
            r = ops->gather(e->be, d, e->dev[d].x, e->gather_src + e->dev[d].row_base,
                            e->dev[d].rows, e->d * e->esz);
    for (uint32_t x = 0; x < e->n && r == 0; x++) {
        for (uint32_t i = pl->range_off[x]; i < pl->range_off[x + 1] && r == 0; i++) {
            uint32_t d = pl->ranges[i].device;
            r = llep__engine_queue_chunk(e, d, range_weights(e, x, d), e->chunk_row[i],
                                         (uint32_t)(pl->ranges[i].end - pl->ranges[i].start));
        }
    }
    return r;
}

int llep__engine_queue_chunk(llep_engine *e, uint32_t d, const char *w, uint64_t row,
                             uint32_t rows) {
    engine_device *dv = &e->dev[d];
    llep_expert_chunk c = {
        .shape = e->shape,
        .rows = rows,
        .w_gate = w, .w_up = w + e->off_up, .w_down = w + e->off_down,
        .b_gate = e->has_bg ? w + e->off_bg : NULL,
        .b_up = e->has_bu ? w + e->off_bu : NULL,
        .b_down = e->has_bd ? w + e->off_bd : NULL,
        .x = (const char *)dv->x + row * e->d * e->esz,
        .y = dv->y + row * e->d,
        .scratch = dv->scratch,
    };

    e->dstats[d].chunks++;
    return e->be->ops->run_chunk(e->be, d, &c);
}

int llep__engine_queue_combine(llep_engine *e, uint32_t p, const llep_engine_batch *b,
                               const float *const *src) {
    llep_combine c = {
        .tokens = b->tokens, .top_k = e->k, .hidden = e->d, .dtype = e->cfg.dtype,
        .topk_w = b->topk_w, .src = src, .y = b->y,
    };

    return e->be->ops->combine(e->be, p, &c);
}

static int queue_combine(llep_engine *e, const llep_engine_batch *b) {
    for (uint32_t p = 0; p < e->p; p++) {
        if (b[p].tokens == 0)
            continue;
        int r = llep__engine_queue_combine(e, p, &b[p], e->combine_src + e->home_base[p]);
        if (r < 0)
            return r;
    }
    return 0;
}

void llep__engine_begin_stats(llep_engine *e) {
    memset(e->dstats, 0, e->p * sizeof(*e->dstats));
    for (uint32_t d = 0; d < e->p; d++) {
        e->busy_step[d] = 0;
        e->dev[d].peak = e->dev[d].used;
    }
}

uint64_t llep__engine_end_device_stats(llep_engine *e, uint32_t d, uint64_t rows) {
    llep_engine_device_stats *ds = &e->dstats[d];
    llep_device_figures f;

    llep__devices_figures(e->devs, d, &f);
    ds->rows = rows;
    ds->busy_ns = e->busy_step[d];
    ds->held_bytes = e->dev[d].native_bytes;
    ds->peak_bytes = e->dev[d].peak;
    ds->budget_bytes = f.budget;
    return ds->busy_ns;
}

static void end_stats(llep_engine *e, uint64_t slots, uint64_t crossing, uint64_t t0,
                      llep_engine_stats *s) {
    const llep_plan *pl = &e->plan;

    memset(s, 0, sizeof(*s));
    s->mode = pl->mode;
    s->imbalance = pl->imbalance;
    s->capacity = pl->capacity;
    s->slots = slots;
    s->transfers = pl->num_transfers;
    for (uint32_t d = 0; d < e->p; d++)
        s->cache_hits += e->dstats[d].cache_hits;
    s->weight_bytes_moved = (uint64_t)(pl->num_transfers - s->cache_hits) * e->expert_bytes;
    s->weight_bytes_saved = (uint64_t)s->cache_hits * e->expert_bytes;
    /* A crossing row goes out in the layer's dtype and its result comes back in float32. */
    s->token_bytes_moved = crossing * e->d * (e->esz + sizeof(float));
    for (uint32_t d = 0; d < e->p; d++) {
        uint64_t busy = llep__engine_end_device_stats(e, d, pl->device_loads[d]);
        if (busy > s->makespan_ns)
            s->makespan_ns = busy;
    }
    s->num_devices = e->p;
    s->devices = e->dstats;
    s->wall_ns = llep__engine_monotonic_ns() - t0;
}

int llep__engine_step(llep_engine *e, const llep_engine_batch *batches,
                      const llep_plan_params *params, llep_engine_stats *ret_stats) {
    uint64_t t0 = llep__engine_monotonic_ns(), slots = 0, crossing;
    char msg[160];
    int r;

    if (!e)
        return -EINVAL;
    e->err[0] = '\0';
    if (!batches)
        return llep__errf(e->err, sizeof(e->err), -EINVAL, "no batches");
    if (!params)
        params = &e->cfg.plan;
    r = llep__engine_check_devices(e, e->err, sizeof(e->err));
    if (r < 0)
        return r;
    r = llep__plan_params_check(params, msg, sizeof(msg));
    if (r < 0)
        return llep__errf(e->err, sizeof(e->err), r, "plan parameters: %s", msg);
    r = count_loads(e, batches, &slots);
    if (r < 0)
        return r;
    if (reserve_slots(e, slots) < 0)
        return llep__errf(e->err, sizeof(e->err), -ENOMEM, "out of host memory for %" PRIu64 " token-slots", slots);
    /* Node-scope steps may prefer helpers that hold a copy already; cluster steps
     * (engine-part.c) plan without the cache, identically on every node. */
    const uint8_t *held = NULL;
    if (llep__devices_cache_on(e->devs) && e->p > 1) {
        llep__devices_cache_holds(e->devs, e->cache_owner, e->n, e->held);
        held = e->held;
    }
    llep__devices_cache_tick(e->devs);
    /* The cost-aware planner (plan-cost.h) when the parameters ask for it and there is a
     * model: the caller's, else the devices' model of this layer's shape (devices.h), else
     * the one they were calibrated to at the reference shape. Without one, LLA. */
    llep_plan_params run = *params;
    llep_cost_model model;
    llep_cost_layer layer;
    if (run.planner == LLEP_PLANNER_COST) {
        if (!run.cost && llep__devices_cost_for(e->devs, e->d, e->h, e->cfg.dtype, &model, NULL))
            run.cost = &model;
        if (run.cost && !run.cost_layer) {
            llep__cost_layer(&layer, e->d, e->h, e->esz, e->has_bg || e->has_bu || e->has_bd);
            layer.weight_bytes = e->expert_bytes;
            run.cost_layer = &layer;
        }
    }
    r = llep__plan_run(&e->plan, e->loads, &run, held);
    if (r < 0)
        return llep__errf(e->err, sizeof(e->err), r, "planning failed: %s", strerror(-r));
    e->planned = 1;

    r = check_sizes(e);
    if (r < 0)
        return r;
    llep__engine_begin_stats(e);
    layout(e);
    /* From the budget check to the last sync the devices are this step's alone. */
    llep__engine_turn_begin(e);
    cache_lookup(e);
    r = check_budgets(e, batches);
    if (r < 0) {
        free_step(e, 0);
        llep__engine_turn_end(e);
        return r;
    }
    r = alloc_step(e);
    if (r < 0) {
        free_step(e, 0);
        llep__engine_turn_end(e);
        return llep__errf(e->err, sizeof(e->err), r, "out of device memory while allocating the step's buffers");
    }
    charge_stage_peaks(e, batches);
    crossing = route_slots(e, batches);
    r = queue_compute(e);
    /* Whatever was queued reads buffers freed below, so it must finish first. */
    int rs = e->be->ops->sync(e->be);
    if (r == 0)
        r = rs;
    if (r == 0)
        r = queue_combine(e, batches);
    rs = e->be->ops->sync(e->be);
    if (r == 0)
        r = rs;
    free_step(e, r == 0);
    if (r < 0)
        r = llep__engine_sync_failed(e, r, e->err, sizeof(e->err));
    llep__engine_turn_end(e);
    if (r < 0)
        return r;
    if (ret_stats)
        end_stats(e, slots, crossing, t0, ret_stats);
    return 0;
}
