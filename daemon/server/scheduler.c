/* Scheduling steps: which queued submissions form a layer's next step, running it on the
 * thread pool, and reporting the results.
 *
 * A layer runs one step at a time. Opportunistic batching (group 0) takes everything queued
 * when the previous step ends; collective batching (group n) waits for one submission from each
 * of n clients and fails the waiting ones with -ETIMEDOUT when they do not all come in time.
 *
 * Steps of different layers run on the same devices (devices.h), one at a time, in the order
 * the loop thread started them: a step for the pool reserves its place in the devices' queue
 * here and waits for its turn there, and the loop thread runs a small step itself only when
 * nobody holds, waits for or has reserved the turn (llep__devices_turn_try), so it never waits
 * behind another layer's step and never overtakes one. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"

#include "layer.h"
#include "log.h"
#include "space.h"
#include "submit.h"

#define DEFAULT_GROUP_TIMEOUT_MS 5000u
/* Steps up to this many tokens run on the loop thread (see llepd_sched_kick). */
#define INLINE_STEP_TOKENS 16u

/* Where one home device's tokens come from: a slice of one submission, or (when several
 * submissions share the home) a staging copy that is scattered back after the step. */
struct llepd_home {
    llepd_sub **subs;
    uint32_t nsubs, first_token, tokens;   /* first_token: slice start when nsubs == 1 */
    void *x, *y;
    int32_t *idx;
    float *w;
};
typedef llepd_home home;

typedef struct step_work {
    uv_work_t req;
    llepd_layer *layer;
    llepd_sub **subs;
    uint32_t nsubs;
    llepd_homes homes;            /* made on the pool by step_run */
    llep_plan_params params;
    uint64_t place;               /* reserved in the devices' queue; 0: none (inline) */
    llep_engine_stats stats;
    llep_engine_device_stats *dev;  /* [P] copied out of the engine */
    uint64_t t0;
    int r;
    char err[256];
} step_work;

static size_t elem_size(const llepd_layer *l) {
    return l->desc.dtype == LLEP_PB__DTYPE__DTYPE_BF16 ? 2 : 4;
}

/* Splits the step's tokens over the P home devices. With no more submissions than devices,
 * each submission gets homes in proportion to its tokens and is cut into contiguous slices,
 * which need no copy. With more, whole submissions go to the home with the fewest tokens,
 * and a home with several gets a staging copy. */
static int assign_homes(home *homes, llepd_sub **subs, uint32_t m, uint32_t np) {
    for (uint32_t i = 0; i < m; i++) {
        uint32_t h;
        if (m <= np) {
            h = i;
        } else {
            h = 0;
            for (uint32_t d = 1; d < np; d++)
                if (homes[d].tokens < homes[h].tokens)
                    h = d;
        }
        home *hm = &homes[h];
        llepd_sub **v = realloc(hm->subs, (hm->nsubs + 1) * sizeof(*v));
        if (!v)
            return -ENOMEM;
        hm->subs = v;
        hm->subs[hm->nsubs++] = subs[i];
        hm->tokens += subs[i]->sqe.tokens;
    }
    if (m >= np || m == 0)
        return 0;
    /* Fewer submissions than devices: hand the idle homes to the largest slices. */
    uint32_t used = m;
    while (used < np) {
        uint32_t best = UINT32_MAX;
        for (uint32_t d = 0; d < used; d++)
            if (homes[d].tokens > 1 &&
                (best == UINT32_MAX || homes[d].tokens > homes[best].tokens))
                best = d;
        if (best == UINT32_MAX)
            break;
        home *a = &homes[best], *b = &homes[used];
        b->subs = malloc(sizeof(*b->subs));
        if (!b->subs)
            return -ENOMEM;
        b->subs[0] = a->subs[0];
        b->nsubs = 1;
        b->tokens = a->tokens / 2;
        a->tokens -= b->tokens;
        b->first_token = a->first_token + a->tokens;
        used++;
    }
    return 0;
}

static int stage_home(home *h, const llepd_layer *l, llep_engine_batch *b) {
    size_t es = elem_size(l), d = l->desc.hidden, k = l->desc.top_k;

    b->tokens = h->tokens;
    if (h->tokens == 0)
        return 0;
    if (h->nsubs == 1) {
        const llepd_sub *s = h->subs[0];
        size_t t0 = h->first_token;
        b->x = (const char *)s->x + t0 * d * es;
        b->topk_idx = s->topk_idx + t0 * k;
        b->topk_w = s->topk_w + t0 * k;
        b->y = (char *)s->y + t0 * d * es;
        return 0;
    }
    h->x = malloc(h->tokens * d * es);
    h->y = malloc(h->tokens * d * es);
    h->idx = malloc(h->tokens * k * sizeof(*h->idx));
    h->w = malloc(h->tokens * k * sizeof(*h->w));
    if (!h->x || !h->y || !h->idx || !h->w)
        return -ENOMEM;
    size_t t = 0;
    for (uint32_t i = 0; i < h->nsubs; i++) {
        const llepd_sub *s = h->subs[i];
        size_t n = s->sqe.tokens;
        if (s->space && (s->sqe.flags & LLEP_SQE_X_SPACE)) {
            int r = llepd_space_copy(s->space, (char *)h->x + t * d * es, s->x, n * d * es);
            if (r < 0)
                return r;
        } else {
            memcpy((char *)h->x + t * d * es, s->x, n * d * es);
        }
        memcpy(h->idx + t * k, s->topk_idx, n * k * sizeof(*h->idx));
        memcpy(h->w + t * k, s->topk_w, n * k * sizeof(*h->w));
        t += n;
    }
    b->x = h->x;
    b->y = h->y;
    b->topk_idx = h->idx;
    b->topk_w = h->w;
    return 0;
}

static int unstage_home(const home *h, const llepd_layer *l) {
    size_t es = elem_size(l), d = l->desc.hidden, t = 0;
    int r = 0;

    if (h->nsubs < 2 || !h->y)
        return 0;
    for (uint32_t i = 0; i < h->nsubs; i++) {
        const llepd_sub *s = h->subs[i];
        size_t n = s->sqe.tokens;
        if (s->space && (s->sqe.flags & LLEP_SQE_Y_SPACE)) {
            int rr = llepd_space_copy(s->space, s->y, (const char *)h->y + t * d * es,
                                      n * d * es);
            r = r < 0 ? r : rr;
        } else {
            memcpy(s->y, (const char *)h->y + t * d * es, n * d * es);
        }
        t += n;
    }
    return r;
}

int llepd_homes_build(llepd_homes *hs, const llepd_layer *l, llepd_sub **subs, uint32_t n,
                      uint32_t np) {
    hs->np = np;
    hs->homes = calloc(np, sizeof(*hs->homes));
    hs->batches = calloc(np, sizeof(*hs->batches));
    if (!hs->homes || !hs->batches)
        return -ENOMEM;
    int r = assign_homes(hs->homes, subs, n, np);
    for (uint32_t h = 0; h < np && r == 0; h++)
        r = stage_home(&hs->homes[h], l, &hs->batches[h]);
    return r;
}

int llepd_homes_unstage(const llepd_homes *hs, const llepd_layer *l) {
    int r = 0;

    for (uint32_t h = 0; h < hs->np; h++) {
        int rr = unstage_home(&hs->homes[h], l);
        r = r < 0 ? r : rr;
    }
    return r;
}

/* The step's device spaces (space.h) in the backend's order of work: before the step, its
 * streams wait for each client's ready event (x written); after, the done events. Each space
 * once; host spaces need neither. Under the turn. */
static int device_spaces(const step_work *w, bool after) {
    for (uint32_t i = 0; i < w->nsubs; i++) {
        const llepd_space *sp = w->subs[i]->space;
        bool seen = false;

        if (!sp || sp->host)
            continue;
        for (uint32_t j = 0; j < i && !seen; j++)
            seen = w->subs[j]->space == sp;
        int (*fn)(llep_backend *, void *) = after ? sp->ops->space_signal : sp->ops->space_wait;
        int r = !seen && fn ? fn(sp->backend, sp->handle) : 0;
        if (r < 0)
            return r;
    }
    return 0;
}

void llepd_homes_free(llepd_homes *hs) {
    for (uint32_t h = 0; hs->homes && h < hs->np; h++) {
        home *hm = &hs->homes[h];
        free(hm->subs);
        free(hm->x);
        free(hm->y);
        free(hm->idx);
        free(hm->w);
    }
    free(hs->homes);
    free(hs->batches);
    hs->homes = NULL;
    hs->batches = NULL;
}

/* On the pool (or the loop thread, which then holds the turn already): the step, in the turn
 * of its place in the devices' queue. */
static void step_run(uv_work_t *req) {
    step_work *w = req->data;
    llepd_layer *l = w->layer;
    uint32_t np = l->srv->devices;
    llep_devices *devs = llep__engine_devices(l->engine);

    w->r = llepd_homes_build(&w->homes, l, w->subs, w->nsubs, np);
    if (w->r < 0) {
        llep__devices_unreserve(devs, w->place);
        w->place = 0;
        snprintf(w->err, sizeof(w->err), "llepd is out of memory staging the step");
        return;
    }
    llep__devices_turn_wait_reserved(devs, w->place);
    w->place = 0;
    w->r = device_spaces(w, false);
    if (w->r < 0) {
        llep__devices_turn_end(devs);
        snprintf(w->err, sizeof(w->err), "cannot order the step after the client's ready "
                 "event: %s", strerror(-w->r));
        return;
    }
    w->r = llep__engine_step(l->engine, w->homes.batches, &w->params, &w->stats);
    if (w->r == 0)
        w->r = device_spaces(w, true);
    llep__devices_turn_end(devs);
    if (w->r < 0) {
        snprintf(w->err, sizeof(w->err), "%s", *llep__engine_error(l->engine) ?
                 llep__engine_error(l->engine) : "recording the step's done event failed");
        return;
    }
    w->r = llepd_homes_unstage(&w->homes, l);
    if (w->r < 0) {
        snprintf(w->err, sizeof(w->err), "cannot copy y into the client's space: %s",
                 strerror(-w->r));
        return;
    }
    memcpy(w->dev, w->stats.devices, np * sizeof(*w->dev));
}

void llepd_sched_record(llepd_layer *l, const llep_engine_stats *st,
                        const llep_engine_device_stats *dev, const llep_plan *p, uint64_t lat_us) {
    llepd_server *srv = l->srv;
    uint32_t np = srv->devices, n = l->desc.num_experts;

    l->steps++;
    srv->steps++;
    if (st->mode == LLEP_PLAN_LLEP) {
        l->llep_steps++;
        srv->llep_steps++;
    } else {
        l->ep_steps++;
        srv->ep_steps++;
    }
    l->imbalance_last = st->imbalance;
    l->imbalance_sum += st->imbalance;
    if (st->imbalance > l->imbalance_max)
        l->imbalance_max = st->imbalance;
    l->weight_bytes_moved += st->weight_bytes_moved;
    l->token_bytes_moved += st->token_bytes_moved;
    srv->weight_bytes_moved += st->weight_bytes_moved;
    srv->token_bytes_moved += st->token_bytes_moved;
    l->makespan_ns_sum += st->makespan_ns;
    uint64_t busy_sum = 0;
    for (uint32_t d = 0; d < np; d++) {
        busy_sum += dev[d].busy_ns;
        if (dev[d].peak_bytes > l->peak[d])
            l->peak[d] = dev[d].peak_bytes;
    }
    l->balance_sum += st->makespan_ns ? (double)busy_sum / np / st->makespan_ns : 1;
    llepd_latency_add(&l->latency, lat_us);
    llepd_latency_add(&srv->latency, lat_us);
    memcpy(l->last_dev, dev, np * sizeof(*l->last_dev));

    uint64_t *row = &l->load_hist[(size_t)((l->steps - 1) % LLEPD_LOAD_WINDOW) * n];
    memcpy(row, p->loads, n * sizeof(*row));
    memcpy(l->last_loads, p->loads, n * sizeof(*row));
    if (!l->have_plan && llep__plan_init(&l->last_plan, n, p->num_devices) == 0)
        l->have_plan = true;
    if (l->have_plan && llep__plan_copy(&l->last_plan, p) == 0)
        l->last_plan_step = l->steps;

    /* Device figures: the peak of the devices' account, every layer's use together. */
    llepd_sched_device_peaks(srv);
    for (uint32_t d = 0; d < np; d++) {
        srv->last_dev_tokens[d] = dev[d].rows;
        srv->last_dev_busy_ns[d] = dev[d].busy_ns;
        srv->dev_busy_ns[d] += dev[d].busy_ns;
    }
}

void llepd_sched_device_peaks(llepd_server *srv) {
    for (uint32_t d = 0; srv->devs && d < srv->devices; d++) {
        llep_device_figures f;
        llep__devices_figures(srv->devs, d, &f);
        srv->device_peak[d] = f.peak;
    }
}

static void step_free(step_work *w) {
    llepd_homes_free(&w->homes);
    free(w->dev);
    free(w->subs);
    free(w);
}

static void step_done(uv_work_t *req, int status) {
    step_work *w = req->data;
    llepd_layer *l = w->layer;
    llepd_server *srv = l->srv;
    uint64_t lat_us = (llepd_now_ns() - w->t0) / 1000;

    if (status < 0 && w->r == 0) {
        w->r = -ECANCELED;
        snprintf(w->err, sizeof(w->err), "step cancelled");
    }
    llep__devices_unreserve(llep__engine_devices(l->engine), w->place); /* never ran */
    if (w->r == 0)
        llepd_sched_record(l, &w->stats, w->dev, llep__engine_plan(l->engine), lat_us);
    else {
        srv->failed_steps++;
        log_warning("layer '%s': step of %u submissions failed: %s", l->name, w->nsubs, w->err);
    }
    for (uint32_t i = 0; i < w->nsubs; i++) {
        llepd_sub *sub = w->subs[i];
        if (w->r == 0)
            l->tokens += sub->sqe.tokens;
        sub->status = w->r;
        snprintf(sub->error, sizeof(sub->error), "%.255s", w->r ? w->err : "");
        llepd_sub_complete(sub, w->r == 0 ? l->steps : 0);
    }
    step_free(w);
    l->running = false;
    srv->running_steps--;
    llepd_sched_kick(l);
    llepd_layer_maybe_destroy(l);
    srv->hooks.work_done(srv);
}

/* ---- choosing a step --------------------------------------------------------------------- */

static uint32_t group_of(const llepd_layer *l) {
    return l->desc.group;
}

/* Moves the submissions of the next step out of the queue into w->subs. Returns how many,
 * 0 when the batching rule says wait. */
uint32_t llepd_sched_take(llepd_layer *l, llepd_sub **out) {
    uint32_t n = 0, group = group_of(l);

    if (group == 0) {
        while (!llepd_list_empty(&l->queue)) {
            llepd_sub *s = llepd_container_of(l->queue.next, llepd_sub, link);
            llepd_list_remove(&s->link);
            out[n++] = s;
        }
        l->queued = 0;
        return n;
    }
    /* Collective: the first submission of each of `group` distinct clients. */
    for (llepd_list *i = l->queue.next; i != &l->queue && n < group; i = i->next) {
        llepd_sub *s = llepd_container_of(i, llepd_sub, link);
        bool seen = false;
        for (uint32_t j = 0; j < n && !seen; j++)
            seen = out[j]->session == s->session;
        if (!seen)
            out[n++] = s;
    }
    if (n < group)
        return 0;
    for (uint32_t j = 0; j < n; j++)
        llepd_list_remove(&out[j]->link);
    l->queued -= n;
    return n;
}

static void on_group_timeout(uv_timer_t *t) {
    llepd_layer *l = t->data;
    char why[320];
    uint32_t timeout = l->desc.group_timeout_ms ? l->desc.group_timeout_ms
                                                : DEFAULT_GROUP_TIMEOUT_MS;

    l->group_timer_armed = false;
    snprintf(why, sizeof(why), "collective step of layer '%s' waited %u ms for %u clients and "
             "got fewer", l->name, timeout, l->desc.group);
    llepd_sched_fail_queued(l, -ETIMEDOUT, why);
}

void llepd_sched_arm_group_timer(llepd_layer *l) {
    uint32_t timeout = l->desc.group_timeout_ms ? l->desc.group_timeout_ms
                                                : DEFAULT_GROUP_TIMEOUT_MS;
    if (l->group_timer_armed || l->queued == 0 || uv_is_closing((uv_handle_t *)&l->group_timer))
        return;
    l->group_timer_armed = true;
    uv_timer_start(&l->group_timer, on_group_timeout, timeout, 0);
}

void llepd_sched_kick(llepd_layer *l) {
    llepd_server *srv = l->srv;
    uint32_t np = srv->devices;

    if (l->ops) {
        l->ops->kick(l);
        return;
    }
    if (l->running || l->queued == 0 || !l->engine)
        return;
    llepd_sub **subs = malloc(l->queued * sizeof(*subs));
    step_work *w = calloc(1, sizeof(*w));
    if (w)
        w->dev = calloc(np, sizeof(*w->dev));
    if (!subs || !w || !w->dev) {
        free(subs);
        if (w)
            step_free(w);
        llepd_sched_fail_queued(l, -ENOMEM, "llepd is out of memory starting a step");
        return;
    }
    uint32_t n = llepd_sched_take(l, subs);
    if (n == 0) {
        free(subs);
        step_free(w);
        llepd_sched_arm_group_timer(l);
        return;
    }
    if (l->group_timer_armed) {
        uv_timer_stop(&l->group_timer);
        l->group_timer_armed = false;
    }
    w->layer = l;
    w->subs = subs;
    w->nsubs = n;
    w->t0 = llepd_now_ns();
    llepd_layer_params(l, &w->params);
    w->req.data = w;
    l->running = true;
    srv->running_steps++;
    /* A tiny step costs less than the two thread hand-offs of the pool: run it here, when the
     * devices are free at once. Otherwise it waits for its turn on the pool, not here. */
    uint64_t tokens = 0;
    for (uint32_t i = 0; i < n; i++)
        tokens += subs[i]->sqe.tokens;
    llep_devices *devs = llep__engine_devices(l->engine);
    if (tokens <= INLINE_STEP_TOKENS && llep__devices_turn_try(devs)) {
        step_run(&w->req);
        llep__devices_turn_end(devs);
        step_done(&w->req, 0);
        return;
    }
    w->place = llep__devices_reserve(devs);
    int r = uv_queue_work(srv->loop, &w->req, step_run, step_done);
    if (r < 0) {
        w->r = r;
        snprintf(w->err, sizeof(w->err), "cannot queue the step: %s", uv_strerror(r));
        step_done(&w->req, 0);
        return;
    }
    /* Collective layers may already hold the next group. */
    llepd_sched_arm_group_timer(l);
}

void llepd_sched_init(llepd_server *srv) {
    srv->hooks.submit = llepd_sched_submit;
}

void llepd_sched_submit(llepd_sub *sub) {
    llepd_layer *l = sub->layer;

    llepd_list_append(&l->queue, &sub->link);
    l->queued++;
    llepd_sched_kick(l);
}

void llepd_sched_fail_queued(llepd_layer *l, int status, const char *why) {
    llepd_list failing;

    /* Completing a submission drains its client's ring (llepd_sub_complete), which may queue
     * that client's next submission here: fail only those queued now, not the newcomers. */
    llepd_list_init(&failing);
    if (!llepd_list_empty(&l->queue)) {
        failing.next = l->queue.next;
        failing.prev = l->queue.prev;
        failing.next->prev = failing.prev->next = &failing;
        llepd_list_init(&l->queue);
        l->queued = 0;
    }
    while (!llepd_list_empty(&failing)) {
        llepd_sub *s = llepd_container_of(failing.next, llepd_sub, link);
        llepd_list_remove(&s->link);
        s->status = status;
        snprintf(s->error, sizeof(s->error), "%.255s", why);
        l->srv->failed_submissions++;
        llepd_sub_complete(s, 0);
    }
    llepd_server *srv = l->srv;
    llepd_layer_maybe_destroy(l);
    srv->hooks.work_done(srv);
}

void llepd_sched_drop_session(llepd_server *srv, llepd_session *sess) {
    for (uint32_t i = 0; i < srv->nlayers; i++) {
        llepd_layer *l = srv->layers[i];
        llepd_list *it = l->queue.next;
        while (it != &l->queue) {
            llepd_sub *s = llepd_container_of(it, llepd_sub, link);
            it = it->next;
            if (s->session != sess)
                continue;
            llepd_list_remove(&s->link);
            l->queued--;
            s->status = -ECONNRESET;
            llepd_sub_complete(s, 0); /* the session is closing: only frees */
        }
    }
}
