/* The devices every engine of a process shares (devices.h): the backend instance, the turn on
 * it and each device's memory account, all under one mutex. */
#include "devices.h"
#include "errbuf.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grow.h"

/* A spilled expert's weights kept on a helper device (the replica cache, devices.h). */
typedef struct cache_entry {
    uint64_t owner;
    uint32_t expert;
    bool pinned;
    void *ptr;
    uint64_t bytes;
    double score;        /* tokens served, decayed to `tick` */
    uint64_t tick;
} cache_entry;

typedef struct account {
    uint64_t budget;     /* 0: held + token_budget */
    uint64_t used, held, peak;
    uint64_t cache;      /* cache charges (part of used) */
    uint64_t largest_step;
    uint64_t hits, saved, evictions;
    cache_entry *ents;
    size_t nents, cap_ents;
} account;

/* A place in the queue for the turn: a thread waiting (arrived), or a place reserved for a
 * thread still to come. */
typedef struct queue_place {
    uint64_t seq;
    bool reserved, arrived;
} queue_place;

/* A block given back while another thread held the turn: freed when that turn ends. */
typedef struct pending_free {
    uint32_t dev;
    void *ptr;
} pending_free;

/* The cost model of one layer shape (devices.h). */
typedef struct shape_cost {
    uint32_t hidden, inter;
    enum llep_dtype dtype;
    llep_cost_model model;
} shape_cost;

struct llep_devices {
    llep_backend *be;
    uint32_t p;
    uint64_t token_budget;

    pthread_mutex_t lock;
    pthread_cond_t turn_cv;
    /* The turn: held (owned) by owner, or granted to the waiting thread of place grant_seq
     * until it wakes (owner_set false); depth counts its reentries. */
    bool owned, owner_set;
    pthread_t owner;
    uint64_t grant_seq;
    uint32_t depth;
    uint64_t granted;
    queue_place *places;       /* waiting or reserved, in the order taken */
    size_t nplaces, cap_places;
    uint64_t next_seq;

    account *acct;       /* [P] */
    uint64_t cache_limit;      /* 0: off; LLEP_DEVICES_CACHE_AUTO */
    bool has_cost;
    llep_cost_model cost;      /* under lock */
    shape_cost shapes[LLEP_DEVICES_COST_SHAPES]; /* under lock; nshapes in use, unordered */
    uint32_t nshapes;
    uint64_t cache_clock, next_owner;
    pending_free *pending;
    size_t npending, cap_pending;

    /* Failed devices: serve[d] runs logical device d's work and holds its charges (d itself
     * until d fails; LLEP_DEVICES_NONE when no device is left), failed[d] and why[d] the
     * physical device's state, failures the count since start. Written under the lock by the
     * turn's holder, so the turn's holder may read serve[] without the lock. */
    uint32_t *serve;
    bool *failed;
    char (*why)[LLEP_DEVICES_WHY_MAX];
    uint64_t failures;
    /* The backend as engines see it (llep__devices_view()): each call on logical device d
     * goes to serve[d]. */
    llep_backend view;
    llep_backend_ops view_ops;
};

static void view_init(llep_devices *dv);

static uint64_t limit_of(const llep_devices *dv, const account *a) {
    if (a->budget)
        return a->budget;
    uint64_t lim = a->held + dv->token_budget;
    return lim < a->held ? UINT64_MAX : lim;
}

int llep__devices_new(const llep_devices_config *cfg, llep_devices **ret, char *err,
                      size_t errlen) {
    llep_devices *dv;
    int r;

    if (!ret)
        return -EINVAL;
    *ret = NULL;
    if (!cfg || cfg->num_devices == 0)
        return llep__errf(err, errlen, -EINVAL, "no devices");
    dv = calloc(1, sizeof(*dv));
    if (!dv)
        return llep__errf(err, errlen, -ENOMEM, "out of host memory");
    dv->p = cfg->num_devices;
    dv->token_budget = cfg->token_budget ? cfg->token_budget : LLEP_DEVICES_DEFAULT_TOKEN_BUDGET;
    pthread_mutex_init(&dv->lock, NULL);
    pthread_cond_init(&dv->turn_cv, NULL);
    dv->acct = calloc(dv->p, sizeof(*dv->acct));
    dv->serve = calloc(dv->p, sizeof(*dv->serve));
    dv->failed = calloc(dv->p, sizeof(*dv->failed));
    dv->why = calloc(dv->p, sizeof(*dv->why));
    if (!dv->acct || !dv->serve || !dv->failed || !dv->why) {
        llep__devices_free(dv);
        return llep__errf(err, errlen, -ENOMEM, "out of host memory");
    }
    for (uint32_t d = 0; d < dv->p; d++) {
        dv->acct[d].budget = cfg->budget;
        dv->serve[d] = d;
    }
    dv->cache_limit = cfg->replica_cache;
    const llep_backend_ops *ops = cfg->backend ? cfg->backend : &llep__backend_cpu;
    llep_backend_options bo = { .num_devices = dv->p, .threads = cfg->threads,
                                .devices = cfg->backend_devices };
    r = ops->create(&bo, &dv->be);
    if (r < 0) {
        dv->be = NULL;
        llep__devices_free(dv);
        return llep__errf(err, errlen, r, "%s backend: %s", ops->name, strerror(-r));
    }
    view_init(dv);
    *ret = dv;
    return 0;
}

void llep__devices_free(llep_devices *dv) {
    if (!dv)
        return;
    if (dv->be) {
        llep__devices_turn_wait(dv);
        dv->be->ops->sync(dv->be);
        llep__devices_turn_end(dv); /* frees what waits */
        dv->be->ops->destroy(dv->be);
    }
    free(dv->pending);
    free(dv->places);
    if (dv->acct)
        for (uint32_t d = 0; d < dv->p; d++)
            free(dv->acct[d].ents);
    free(dv->acct);
    free(dv->serve);
    free(dv->failed);
    free(dv->why);
    pthread_cond_destroy(&dv->turn_cv);
    pthread_mutex_destroy(&dv->lock);
    free(dv);
}

uint32_t llep__devices_count(const llep_devices *dv) {
    return dv ? dv->p : 0;
}

void llep__devices_set_cost(llep_devices *dv, const llep_cost_model *m) {
    pthread_mutex_lock(&dv->lock);
    dv->has_cost = m != NULL;
    if (m)
        dv->cost = *m;
    pthread_mutex_unlock(&dv->lock);
}

static shape_cost *find_shape(llep_devices *dv, uint32_t hidden, uint32_t inter,
                              enum llep_dtype dtype) {
    for (uint32_t i = 0; i < dv->nshapes; i++) {
        shape_cost *s = &dv->shapes[i];
        if (s->hidden == hidden && s->inter == inter && s->dtype == dtype)
            return s;
    }
    return NULL;
}

int llep__devices_set_shape_cost(llep_devices *dv, uint32_t hidden, uint32_t inter,
                                 enum llep_dtype dtype, const llep_cost_model *m) {
    int r = 0;

    pthread_mutex_lock(&dv->lock);
    shape_cost *s = find_shape(dv, hidden, inter, dtype);
    if (!m) {
        if (s)  /* the last entry takes its place: the table has no order */
            *s = dv->shapes[--dv->nshapes];
    } else if (s) {
        s->model = *m;
    } else if (dv->nshapes == LLEP_DEVICES_COST_SHAPES) {
        r = -ENOSPC;
    } else {
        dv->shapes[dv->nshapes++] = (shape_cost){ .hidden = hidden, .inter = inter,
                                                  .dtype = dtype, .model = *m };
    }
    pthread_mutex_unlock(&dv->lock);
    return r;
}

bool llep__devices_cost_for(const llep_devices *dv, uint32_t hidden, uint32_t inter,
                            enum llep_dtype dtype, llep_cost_model *ret, bool *shape) {
    llep_devices *w = (llep_devices *)dv;  /* the lock only */
    pthread_mutex_lock(&w->lock);
    const shape_cost *s = find_shape(w, hidden, inter, dtype);
    bool has = s || dv->has_cost;
    if (ret && has)
        *ret = s ? s->model : dv->cost;
    if (shape)
        *shape = s != NULL;
    pthread_mutex_unlock(&w->lock);
    return has;
}

uint32_t llep__devices_shape_costs(const llep_devices *dv) {
    llep_devices *w = (llep_devices *)dv;
    pthread_mutex_lock(&w->lock);
    uint32_t n = dv->nshapes;
    pthread_mutex_unlock(&w->lock);
    return n;
}

bool llep__devices_cost_get(const llep_devices *dv, llep_cost_model *ret) {
    llep_devices *w = (llep_devices *)dv;  /* the lock only; the figures are not changed */
    pthread_mutex_lock(&w->lock);
    bool has = dv->has_cost;
    if (has && ret)
        *ret = dv->cost;
    pthread_mutex_unlock(&w->lock);
    return has;
}

llep_backend *llep__devices_backend(const llep_devices *dv) {
    return dv ? dv->be : NULL;
}

/* ---- the turn ----------------------------------------------------------------------------

 * Places in the queue, in the order they were taken (seq ascending). The turn goes to the
 * first place whose thread waits and that is either a walk-in or the first reserved place:
 * reserved places are served in their order, and a walk-in never waits for a reserved place
 * whose thread has not come yet (see devices.h). */

static bool held_by_me(const llep_devices *dv) {
    return dv->owned && dv->owner_set && pthread_equal(dv->owner, pthread_self());
}

static void own(llep_devices *dv) {
    dv->owned = true;
    dv->owner_set = true;
    dv->owner = pthread_self();
    dv->depth = 1;
}

static long find_place(const llep_devices *dv, uint64_t seq) {
    for (size_t i = 0; i < dv->nplaces; i++)
        if (dv->places[i].seq == seq)
            return (long)i;
    return -1;
}

static void remove_place(llep_devices *dv, size_t i) {
    memmove(&dv->places[i], &dv->places[i + 1], (dv->nplaces - i - 1) * sizeof(*dv->places));
    dv->nplaces--;
}

/* When nobody holds the turn, grants it to the next place that may have it; its thread takes
 * it when it wakes (the turn counts as held meanwhile). */
static void grant_locked(llep_devices *dv) {
    bool seen_reserved = false;

    if (dv->owned)
        return;
    for (size_t i = 0; i < dv->nplaces; i++) {
        queue_place *p = &dv->places[i];
        bool first_reserved = p->reserved && !seen_reserved;
        seen_reserved |= p->reserved;
        if (!p->arrived || (p->reserved && !first_reserved))
            continue;
        dv->owned = true;
        dv->owner_set = false;
        dv->grant_seq = p->seq;
        dv->granted++;
        remove_place(dv, i);
        pthread_cond_broadcast(&dv->turn_cv);
        return;
    }
}

/* Waits until the turn is granted to place seq, then takes it. */
static void wait_granted_locked(llep_devices *dv, uint64_t seq) {
    grant_locked(dv);
    while (!(dv->owned && !dv->owner_set && dv->grant_seq == seq))
        pthread_cond_wait(&dv->turn_cv, &dv->lock);
    dv->grant_seq = 0;
    own(dv);
}

static uint64_t add_place(llep_devices *dv, bool reserved) {
    if (llep__grow(&dv->places, &dv->cap_places, dv->nplaces + 1, sizeof(*dv->places), 8) < 0)
        return 0;
    uint64_t seq = ++dv->next_seq;
    dv->places[dv->nplaces++] = (queue_place){ seq, reserved, !reserved };
    return seq;
}

/* Lock held: the turn at once, when this thread holds it already (one level deeper) or
 * nobody holds, waits for or has reserved it. */
static bool take_at_once(llep_devices *dv) {
    if (held_by_me(dv)) {
        dv->depth++;
        return true;
    }
    if (!dv->owned && dv->nplaces == 0) {
        dv->granted++;
        own(dv);
        return true;
    }
    return false;
}

void llep__devices_turn_wait(llep_devices *dv) {
    pthread_mutex_lock(&dv->lock);
    if (!take_at_once(dv)) {
        uint64_t seq;
        /* Without memory for a place, wait for the turn to be free and nobody waiting. */
        while ((seq = add_place(dv, false)) == 0 && (dv->owned || dv->nplaces > 0))
            pthread_cond_wait(&dv->turn_cv, &dv->lock);
        if (seq) {
            wait_granted_locked(dv, seq);
        } else {
            dv->granted++;
            own(dv);
        }
    }
    pthread_mutex_unlock(&dv->lock);
}

uint64_t llep__devices_reserve(llep_devices *dv) {
    pthread_mutex_lock(&dv->lock);
    uint64_t seq = add_place(dv, true);
    pthread_mutex_unlock(&dv->lock);
    return seq;
}

void llep__devices_turn_wait_reserved(llep_devices *dv, uint64_t place) {
    pthread_mutex_lock(&dv->lock);
    long i = place ? find_place(dv, place) : -1;
    if (i < 0 || held_by_me(dv)) {
        if (i >= 0)
            remove_place(dv, (size_t)i);
        pthread_mutex_unlock(&dv->lock);
        llep__devices_turn_wait(dv);
        return;
    }
    dv->places[i].arrived = true;
    wait_granted_locked(dv, place);
    pthread_mutex_unlock(&dv->lock);
}

void llep__devices_unreserve(llep_devices *dv, uint64_t place) {
    if (!place)
        return;
    pthread_mutex_lock(&dv->lock);
    long i = find_place(dv, place);
    if (i >= 0) {
        remove_place(dv, (size_t)i);
        grant_locked(dv); /* a place behind it may go now */
    }
    pthread_cond_broadcast(&dv->turn_cv);
    pthread_mutex_unlock(&dv->lock);
}

bool llep__devices_turn_try(llep_devices *dv) {
    bool got;

    pthread_mutex_lock(&dv->lock);
    got = take_at_once(dv);
    pthread_mutex_unlock(&dv->lock);
    return got;
}

void llep__devices_turn_end(llep_devices *dv) {
    pthread_mutex_lock(&dv->lock);
    assert(held_by_me(dv));
    if (--dv->depth > 0) {
        pthread_mutex_unlock(&dv->lock);
        return;
    }
    /* Blocks given back during the turn, freed outside the mutex: the turn is still ours, so
     * the backend is too, and the loop thread's figures never wait for a free. */
    while (dv->npending > 0) {
        pending_free *v = dv->pending;
        size_t n = dv->npending;
        dv->pending = NULL;
        dv->npending = dv->cap_pending = 0;
        pthread_mutex_unlock(&dv->lock);
        for (size_t i = 0; i < n; i++)
            dv->be->ops->free(dv->be, v[i].dev, v[i].ptr);
        free(v);
        pthread_mutex_lock(&dv->lock);
    }
    dv->owned = false;
    dv->owner_set = false;
    grant_locked(dv);
    pthread_cond_broadcast(&dv->turn_cv);
    pthread_mutex_unlock(&dv->lock);
}

bool llep__devices_turn_held(const llep_devices *dv) {
    llep_devices *m = (llep_devices *)dv;

    pthread_mutex_lock(&m->lock);
    bool mine = held_by_me(dv);
    pthread_mutex_unlock(&m->lock);
    return mine;
}

void llep__devices_turn_figures(const llep_devices *dv, llep_devices_turns *ret) {
    llep_devices *m = (llep_devices *)dv;

    pthread_mutex_lock(&m->lock);
    ret->granted = dv->granted;
    ret->waiting = 0;
    ret->reserved = 0;
    for (size_t i = 0; i < dv->nplaces; i++) {
        ret->waiting += dv->places[i].arrived;
        ret->reserved += !dv->places[i].arrived;
    }
    pthread_mutex_unlock(&m->lock);
}

/* ---- the account ------------------------------------------------------------------------- */

/* Cache bytes that may be evicted now (not pinned by the running step). */
static uint64_t unpinned_locked(const account *a) {
    uint64_t n = 0;

    for (size_t i = 0; i < a->nents; i++)
        if (!a->ents[i].pinned)
            n += a->ents[i].bytes;
    return n;
}

/* Whether need fits with the cache as it is (strict) or once its unpinned entries go. */
static bool fits_with_locked(const llep_devices *dv, const account *a, uint64_t need,
                             enum llep_charge kind, bool strict) {
    uint64_t used = a->used - (strict ? 0 : unpinned_locked(a));

    if (used + need < used)
        return false;
    /* Without a budget the weights always fit: the budget grows with them. */
    if (kind == LLEP_CHARGE_HELD && a->budget == 0)
        return true;
    return used + need <= limit_of(dv, a);
}

static bool fits_locked(const llep_devices *dv, const account *a, uint64_t need,
                        enum llep_charge kind) {
    return fits_with_locked(dv, a, need, kind, false);
}

static double decayed(const llep_devices *dv, const cache_entry *c) {
    return c->score * exp2(-(double)(dv->cache_clock - c->tick) / LLEP_DEVICES_CACHE_HALF_LIFE);
}

/* Gives a block back to the backend: at once when this thread holds the turn or nobody does,
 * else by the holder when its turn ends (its bytes are uncharged already). */
static void free_block_locked(llep_devices *dv, uint32_t d, void *ptr) {
    if (dv->owned && !held_by_me(dv)) {
        /* If there is no memory to note it, the block leaks, which is better than racing. */
        if (llep__grow(&dv->pending, &dv->cap_pending, dv->npending + 1, sizeof(*dv->pending),
                       16) == 0)
            dv->pending[dv->npending++] = (pending_free){ d, ptr };
    } else {
        dv->be->ops->free(dv->be, d, ptr);
    }
}

static void remove_entry_locked(llep_devices *dv, uint32_t d, size_t i) {
    account *a = &dv->acct[d];
    cache_entry c = a->ents[i];

    a->ents[i] = a->ents[--a->nents];
    a->used -= c.bytes;
    a->cache -= c.bytes;
    free_block_locked(dv, d, c.ptr);
}

/* The unpinned entry of lowest decayed score (ties: the older owner, then the lower expert,
 * so that eviction does not depend on the order entries were stored); -1 when none. */
static long victim_locked(const llep_devices *dv, const account *a) {
    long best = -1;
    double best_s = 0;

    for (size_t i = 0; i < a->nents; i++) {
        const cache_entry *c = &a->ents[i];
        if (c->pinned)
            continue;
        double sc = decayed(dv, c);
        const cache_entry *b = best >= 0 ? &a->ents[best] : NULL;
        if (!b || sc < best_s ||
            (sc == best_s && (c->owner < b->owner ||
                              (c->owner == b->owner && c->expert < b->expert)))) {
            best = (long)i;
            best_s = sc;
        }
    }
    return best;
}

/* Evicts unpinned entries, lowest score first, until need of kind fits as things are. */
static void make_room_locked(llep_devices *dv, uint32_t d, uint64_t need, enum llep_charge kind) {
    account *a = &dv->acct[d];

    while (!fits_with_locked(dv, a, need, kind, true)) {
        long v = victim_locked(dv, a);
        if (v < 0)
            return;
        remove_entry_locked(dv, d, (size_t)v);
        a->evictions++;
    }
}

/* The cache's limit on a device now: the configured size, or under auto what the budget
 * leaves after the held bytes and the largest step the device has run. */
static uint64_t cache_limit_locked(const llep_devices *dv, const account *a) {
    if (dv->cache_limit != LLEP_DEVICES_CACHE_AUTO)
        return dv->cache_limit;
    uint64_t lim = limit_of(dv, a), taken = a->held + a->largest_step;
    return lim > taken ? lim - taken : 0;
}

/* Evicts unpinned entries, lowest score first, while the cache is over its limit or the
 * device over its budget (after the limit or the budget changed). */
static void trim_locked(llep_devices *dv, uint32_t d) {
    account *a = &dv->acct[d];
    long v;

    while ((a->cache > cache_limit_locked(dv, a) || a->used > limit_of(dv, a)) &&
           (v = victim_locked(dv, a)) >= 0) {
        remove_entry_locked(dv, d, (size_t)v);
        a->evictions++;
    }
}

static void charge_locked(account *a, uint64_t bytes, enum llep_charge kind) {
    a->used += bytes;
    if (kind == LLEP_CHARGE_HELD)
        a->held += bytes;
    if (a->used > a->peak)
        a->peak = a->used;
}

static void uncharge_locked(account *a, uint64_t bytes, enum llep_charge kind) {
    a->used -= bytes;
    if (kind == LLEP_CHARGE_HELD)
        a->held -= bytes;
}

int llep__devices_alloc(llep_devices *dv, uint32_t d, uint64_t bytes, enum llep_charge kind,
                        void **ret) {
    *ret = NULL;
    if (d >= dv->p)
        return -EINVAL;
    if (bytes == 0)
        return 0;
    if (bytes > SIZE_MAX)
        return -ENOMEM;
    pthread_mutex_lock(&dv->lock);
    assert(held_by_me(dv));
    /* A failed device's work and charges go to the device serving it. */
    d = dv->serve[d];
    if (d == LLEP_DEVICES_NONE) {
        pthread_mutex_unlock(&dv->lock);
        return -ENODEV;
    }
    account *a = &dv->acct[d];
    if (!fits_locked(dv, a, bytes, kind)) {
        pthread_mutex_unlock(&dv->lock);
        return -ENOMEM;
    }
    /* The cache gives way to every other charge. */
    make_room_locked(dv, d, bytes, kind);
    /* Charged before the backend is asked, so that a concurrent figure never shows memory
     * in use that is not counted; only this turn allocates, so the check still holds. */
    charge_locked(a, bytes, kind);
    if (kind == LLEP_CHARGE_STEP && a->used - a->held - a->cache > a->largest_step)
        a->largest_step = a->used - a->held - a->cache;
    pthread_mutex_unlock(&dv->lock);
    int r = dv->be->ops->alloc(dv->be, d, (size_t)bytes, ret);
    if (r < 0) {
        *ret = NULL;
        pthread_mutex_lock(&dv->lock);
        uncharge_locked(a, bytes, kind);
        pthread_mutex_unlock(&dv->lock);
    }
    return r;
}

void llep__devices_release(llep_devices *dv, uint32_t d, void *ptr, uint64_t bytes,
                           enum llep_charge kind) {
    if (!ptr || d >= dv->p)
        return;
    pthread_mutex_lock(&dv->lock);
    uncharge_locked(&dv->acct[d], bytes, kind);
    /* Another thread's step has the backend: it frees the block when its turn ends; this
     * thread's turn, or nobody's: nobody can take it while we hold the mutex. */
    free_block_locked(dv, d, ptr);
    pthread_mutex_unlock(&dv->lock);
}

void llep__devices_note_peak(llep_devices *dv, uint32_t d, uint64_t extra) {
    if (d >= dv->p)
        return;
    pthread_mutex_lock(&dv->lock);
    d = dv->serve[d];
    if (d == LLEP_DEVICES_NONE) {
        pthread_mutex_unlock(&dv->lock);
        return;
    }
    account *a = &dv->acct[d];
    if (a->used + extra > a->peak)
        a->peak = a->used + extra;
    pthread_mutex_unlock(&dv->lock);
}

void llep__devices_figures(const llep_devices *dv, uint32_t d, llep_device_figures *ret) {
    llep_devices *m = (llep_devices *)dv;

    memset(ret, 0, sizeof(*ret));
    if (d >= dv->p)
        return;
    pthread_mutex_lock(&m->lock);
    const account *a = &dv->acct[d];
    ret->budget = limit_of(dv, a);
    ret->used = a->used;
    ret->held = a->held;
    ret->peak = a->peak;
    ret->free = ret->budget > a->used ? ret->budget - a->used : 0;
    ret->cache_bytes = a->cache;
    ret->cache_limit = cache_limit_locked(dv, a);
    ret->cache_hits = a->hits;
    ret->cache_saved = a->saved;
    ret->cache_evictions = a->evictions;
    ret->cache_experts = (uint32_t)a->nents;
    ret->largest_step = a->largest_step;
    pthread_mutex_unlock(&m->lock);
}

bool llep__devices_fits(const llep_devices *dv, uint32_t d, uint64_t need,
                        enum llep_charge kind) {
    llep_devices *m = (llep_devices *)dv;

    if (d >= dv->p)
        return false;
    pthread_mutex_lock(&m->lock);
    d = dv->serve[d];
    bool ok = d != LLEP_DEVICES_NONE && fits_locked(dv, &dv->acct[d], need, kind);
    pthread_mutex_unlock(&m->lock);
    return ok;
}

int llep__devices_set_budget(llep_devices *dv, uint32_t d, uint64_t bytes, char *err,
                             size_t errlen) {
    if (!dv || d >= dv->p)
        return llep__errf(err, errlen, -EINVAL, "no device %u", d);
    pthread_mutex_lock(&dv->lock);
    if (dv->failed[d]) {
        pthread_mutex_unlock(&dv->lock);
        return llep__errf(err, errlen, -ENODEV, "device %u failed", d);
    }
    account *a = &dv->acct[d];
    /* The replica cache gives way: only what it cannot give back counts. */
    uint64_t used = a->used - unpinned_locked(a);
    if (bytes && bytes < used) {
        pthread_mutex_unlock(&dv->lock);
        return llep__errf(err, errlen, -ENOMEM, "device %u already holds %" PRIu64 " bytes", d,
                          used);
    }
    a->budget = bytes;
    trim_locked(dv, d);
    pthread_mutex_unlock(&dv->lock);
    return 0;
}

/* ---- the replica cache ------------------------------------------------------------------- */

bool llep__devices_cache_on(const llep_devices *dv) {
    llep_devices *m = (llep_devices *)dv;

    pthread_mutex_lock(&m->lock);
    bool on = dv->cache_limit != 0;
    pthread_mutex_unlock(&m->lock);
    return on;
}

uint64_t llep__devices_cache_owner(llep_devices *dv) {
    pthread_mutex_lock(&dv->lock);
    uint64_t o = ++dv->next_owner;
    pthread_mutex_unlock(&dv->lock);
    return o;
}

void llep__devices_cache_tick(llep_devices *dv) {
    pthread_mutex_lock(&dv->lock);
    dv->cache_clock++;
    pthread_mutex_unlock(&dv->lock);
}

void llep__devices_cache_holds(const llep_devices *dv, uint64_t owner, uint32_t num_experts,
                               uint8_t *held) {
    llep_devices *m = (llep_devices *)dv;

    memset(held, 0, (size_t)num_experts * dv->p);
    pthread_mutex_lock(&m->lock);
    for (uint32_t d = 0; d < dv->p; d++) {
        if (dv->serve[d] == LLEP_DEVICES_NONE)
            continue;
        const account *a = &dv->acct[dv->serve[d]];
        for (size_t i = 0; i < a->nents; i++)
            if (a->ents[i].owner == owner && a->ents[i].expert < num_experts)
                held[(size_t)a->ents[i].expert * dv->p + d] = 1;
    }
    pthread_mutex_unlock(&m->lock);
}

static void touch_locked(const llep_devices *dv, cache_entry *c, uint64_t tokens) {
    c->score = decayed(dv, c) + (double)tokens;
    c->tick = dv->cache_clock;
    c->pinned = true;
}

void *llep__devices_cache_get(llep_devices *dv, uint32_t d, uint64_t owner, uint32_t expert,
                              uint64_t tokens) {
    void *ptr = NULL;

    if (d >= dv->p)
        return NULL;
    pthread_mutex_lock(&dv->lock);
    assert(held_by_me(dv));
    d = dv->serve[d];
    if (d == LLEP_DEVICES_NONE) {
        pthread_mutex_unlock(&dv->lock);
        return NULL;
    }
    account *a = &dv->acct[d];
    for (size_t i = 0; i < a->nents; i++) {
        cache_entry *c = &a->ents[i];
        if (c->owner != owner || c->expert != expert)
            continue;
        touch_locked(dv, c, tokens);
        a->hits++;
        a->saved += c->bytes;
        ptr = c->ptr;
        break;
    }
    pthread_mutex_unlock(&dv->lock);
    return ptr;
}

bool llep__devices_cache_put(llep_devices *dv, uint32_t d, uint64_t owner, uint32_t expert,
                             void *ptr, uint64_t bytes, uint64_t tokens) {
    bool kept = false;

    if (d >= dv->p || !ptr)
        return false;
    pthread_mutex_lock(&dv->lock);
    assert(held_by_me(dv));
    d = dv->serve[d];
    if (d == LLEP_DEVICES_NONE)
        goto out;
    account *a = &dv->acct[d];
    uint64_t lim = cache_limit_locked(dv, a);
    if (bytes > lim)
        goto out;
    /* Make room under the limit from entries that served fewer tokens than this one will. */
    while (a->cache + bytes > lim) {
        long v = victim_locked(dv, a);
        if (v < 0 || decayed(dv, &a->ents[v]) >= (double)tokens)
            goto out;
        remove_entry_locked(dv, d, (size_t)v);
        a->evictions++;
    }
    if (llep__grow(&a->ents, &a->cap_ents, a->nents + 1, sizeof(*a->ents), 8) < 0)
        goto out;
    cache_entry *c = &a->ents[a->nents++];
    *c = (cache_entry){ .owner = owner, .expert = expert, .ptr = ptr, .bytes = bytes };
    touch_locked(dv, c, tokens);
    /* The step charge becomes a cache charge: used does not change. */
    a->cache += bytes;
    kept = true;
out:
    pthread_mutex_unlock(&dv->lock);
    return kept;
}

void llep__devices_cache_unpin(llep_devices *dv, uint64_t owner) {
    pthread_mutex_lock(&dv->lock);
    for (uint32_t d = 0; d < dv->p; d++)
        for (size_t i = 0; i < dv->acct[d].nents; i++)
            if (dv->acct[d].ents[i].owner == owner)
                dv->acct[d].ents[i].pinned = false;
    pthread_mutex_unlock(&dv->lock);
}

void llep__devices_cache_drop(llep_devices *dv, uint64_t owner) {
    if (!dv)
        return;
    pthread_mutex_lock(&dv->lock);
    for (uint32_t d = 0; d < dv->p; d++) {
        account *a = &dv->acct[d];
        for (size_t i = a->nents; i > 0; i--)
            if (a->ents[i - 1].owner == owner)
                remove_entry_locked(dv, d, i - 1);
    }
    pthread_mutex_unlock(&dv->lock);
}

void llep__devices_cache_set_limit(llep_devices *dv, uint64_t bytes) {
    pthread_mutex_lock(&dv->lock);
    dv->cache_limit = bytes;
    for (uint32_t d = 0; d < dv->p; d++)
        trim_locked(dv, d);
    pthread_mutex_unlock(&dv->lock);
}

uint32_t llep__devices_cache_list(const llep_devices *dv, uint32_t d, uint64_t *owners,
                                  uint32_t *experts, uint32_t max) {
    llep_devices *m = (llep_devices *)dv;
    uint32_t n = 0;

    if (d >= dv->p)
        return 0;
    pthread_mutex_lock(&m->lock);
    const account *a = &dv->acct[d];
    n = (uint32_t)a->nents;
    /* Highest score first: a selection by repeated maximum, the lists are short. */
    for (uint32_t k = 0; k < max && k < n; k++) {
        long best = -1;
        double bs = 0;
        for (size_t i = 0; i < a->nents; i++) {
            bool taken = false;
            for (uint32_t j = 0; j < k && !taken; j++)
                taken = owners[j] == a->ents[i].owner && experts[j] == a->ents[i].expert;
            double sc = decayed(dv, &a->ents[i]);
            if (!taken && (best < 0 || sc > bs)) {
                best = (long)i;
                bs = sc;
            }
        }
        owners[k] = a->ents[best].owner;
        experts[k] = a->ents[best].expert;
    }
    pthread_mutex_unlock(&m->lock);
    return n;
}

/* ---- failed devices ---------------------------------------------------------------------- */

uint32_t llep__devices_serving(const llep_devices *dv, uint32_t d) {
    llep_devices *m = (llep_devices *)dv;

    if (d >= dv->p)
        return LLEP_DEVICES_NONE;
    pthread_mutex_lock(&m->lock);
    uint32_t s = dv->serve[d];
    pthread_mutex_unlock(&m->lock);
    return s;
}

uint64_t llep__devices_failures(const llep_devices *dv) {
    llep_devices *m = (llep_devices *)dv;

    pthread_mutex_lock(&m->lock);
    uint64_t n = dv->failures;
    pthread_mutex_unlock(&m->lock);
    return n;
}

void llep__devices_status(const llep_devices *dv, uint32_t d, llep_device_status *ret) {
    llep_devices *m = (llep_devices *)dv;

    memset(ret, 0, sizeof(*ret));
    ret->served_by = d;
    if (d >= dv->p)
        return;
    pthread_mutex_lock(&m->lock);
    ret->failed = dv->failed[d];
    ret->served_by = dv->serve[d];
    snprintf(ret->why, sizeof(ret->why), "%s", dv->why[d]);
    pthread_mutex_unlock(&m->lock);
}

/* The surviving device with the most free budget (the lowest index among equals), or
 * LLEP_DEVICES_NONE. */
static uint32_t survivor_locked(const llep_devices *dv) {
    uint32_t best = LLEP_DEVICES_NONE;
    uint64_t best_free = 0;

    for (uint32_t d = 0; d < dv->p; d++) {
        if (dv->failed[d])
            continue;
        const account *a = &dv->acct[d];
        uint64_t lim = limit_of(dv, a), free_b = lim > a->used ? lim - a->used : 0;
        if (best == LLEP_DEVICES_NONE || free_b > best_free) {
            best = d;
            best_free = free_b;
        }
    }
    return best;
}

/* Physical device f failed: its cached copies go (their memory is lost with it), and every
 * logical device it served is served by the survivor from now on. The blocks engines still
 * hold there stay charged to f until they give them back (llep__devices_release() with f). */
static void fail_locked(llep_devices *dv, uint32_t f, const char *why) {
    account *a = &dv->acct[f];

    dv->failed[f] = true;
    snprintf(dv->why[f], sizeof(dv->why[f]), "%s", why);
    dv->failures++;
    while (a->nents > 0)
        remove_entry_locked(dv, f, a->nents - 1);
    uint32_t s = survivor_locked(dv);
    for (uint32_t d = 0; d < dv->p; d++)
        if (dv->serve[d] == f)
            dv->serve[d] = s;
}

int llep__devices_check_failed(llep_devices *dv, char *err, size_t errlen) {
    const llep_backend_ops *ops = dv->be->ops;
    char why[LLEP_DEVICES_WHY_MAX];
    int n = 0;

    if (!ops->device_failed)
        return 0;
    pthread_mutex_lock(&dv->lock);
    assert(held_by_me(dv));
    for (uint32_t d = 0; d < dv->p; d++) {
        why[0] = '\0';
        if (dv->failed[d] || ops->device_failed(dv->be, d, why, sizeof(why)) != 1)
            continue;
        fail_locked(dv, d, why);
        /* The first names the failure; the message says how many more there were. */
        if (n++ == 0)
            llep__errf(err, errlen, 0, "device %u failed (%s)", d, why);
    }
    if (n > 1) {
        size_t len = err && errlen ? strlen(err) : 0;
        if (len < errlen)
            snprintf(err + len, errlen - len, " with %d more", n - 1);
    }
    pthread_mutex_unlock(&dv->lock);
    return n;
}

/* ---- the backend as engines see it ----------------------------------------------------------
 *
 * Every call names a logical device; it goes to the device serving it (the turn's holder
 * makes every call here, and serve[] changes only under the turn). The operations the view
 * does not know stay NULL, so a backend operation added later is never handed the view. */

static llep_devices *of_view(const llep_backend *b) {
    return (llep_devices *)((const char *)b - offsetof(llep_devices, view));
}

#define SERVED(b, dev, real, to)                                                              \
    llep_devices *dv_ = of_view(b);                                                           \
    llep_backend *real = dv_->be;                                                             \
    uint32_t to = (dev) < dv_->p ? dv_->serve[dev] : LLEP_DEVICES_NONE

static int v_alloc(llep_backend *b, uint32_t dev, size_t bytes, void **ret) {
    SERVED(b, dev, be, s);
    return s == LLEP_DEVICES_NONE ? -ENODEV : be->ops->alloc(be, s, bytes, ret);
}

static void v_free(llep_backend *b, uint32_t dev, void *ptr) {
    SERVED(b, dev, be, s);
    if (s != LLEP_DEVICES_NONE)
        be->ops->free(be, s, ptr);
}

static int v_copy(llep_backend *b, uint32_t dev, void *dst, const void *src, size_t bytes) {
    SERVED(b, dev, be, s);
    return s == LLEP_DEVICES_NONE ? -ENODEV : be->ops->copy(be, s, dst, src, bytes);
}

static int v_download(llep_backend *b, uint32_t dev, void *dst, const void *src, size_t bytes) {
    SERVED(b, dev, be, s);
    return s == LLEP_DEVICES_NONE ? -ENODEV : be->ops->download(be, s, dst, src, bytes);
}

static int v_gather(llep_backend *b, uint32_t dev, void *dst, const void *const *src, size_t n,
                    size_t row_bytes) {
    SERVED(b, dev, be, s);
    return s == LLEP_DEVICES_NONE ? -ENODEV : be->ops->gather(be, s, dst, src, n, row_bytes);
}

static int v_run_chunk(llep_backend *b, uint32_t dev, const llep_expert_chunk *c) {
    SERVED(b, dev, be, s);
    return s == LLEP_DEVICES_NONE ? -ENODEV : be->ops->run_chunk(be, s, c);
}

static int v_combine(llep_backend *b, uint32_t dev, const llep_combine *c) {
    SERVED(b, dev, be, s);
    return s == LLEP_DEVICES_NONE ? -ENODEV : be->ops->combine(be, s, c);
}

static int v_sync(llep_backend *b) {
    llep_backend *be = of_view(b)->be;
    return be->ops->sync(be);
}

static uint64_t v_busy_ns(const llep_backend *b, uint32_t dev) {
    SERVED(b, dev, be, s);
    return s == LLEP_DEVICES_NONE ? 0 : be->ops->busy_ns(be, s);
}

static uint64_t v_step_overhead(const llep_backend *b, uint32_t dev, const llep_ffn_shape *shape,
                                uint64_t rows, uint64_t home_tokens, uint32_t top_k,
                                uint32_t max_chunk) {
    SERVED(b, dev, be, s);
    return s == LLEP_DEVICES_NONE ? 0 : be->ops->step_overhead(be, s, shape, rows, home_tokens,
                                                               top_k, max_chunk);
}

static void view_init(llep_devices *dv) {
    const llep_backend_ops *o = dv->be->ops;

    dv->view_ops = (llep_backend_ops){
        .name = o->name, .alloc = v_alloc, .free = v_free, .copy = v_copy,
        .gather = v_gather, .run_chunk = v_run_chunk, .combine = v_combine, .sync = v_sync,
        .busy_ns = v_busy_ns, .step_overhead = o->step_overhead ? v_step_overhead : NULL,
        .download = o->download ? v_download : NULL, .xnode = o->xnode,
    };
    dv->view.ops = &dv->view_ops;
    dv->view.num_devices = dv->p;
}

llep_backend *llep__devices_view(llep_devices *dv) {
    return dv ? &dv->view : NULL;
}
