/* The devices every engine of a process shares (devices.h): the backend instance, the turn on
 * it and each device's memory account, all under one mutex. */
#include "devices.h"
#include "errbuf.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grow.h"

typedef struct account {
    uint64_t budget;     /* 0: held + token_budget */
    uint64_t used, held, peak;
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
    pending_free *pending;
    size_t npending, cap_pending;
};

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
    if (!dv->acct) {
        llep__devices_free(dv);
        return llep__errf(err, errlen, -ENOMEM, "out of host memory");
    }
    for (uint32_t d = 0; d < dv->p; d++)
        dv->acct[d].budget = cfg->budget;
    const llep_backend_ops *ops = cfg->backend ? cfg->backend : &llep__backend_cpu;
    llep_backend_options bo = { .num_devices = dv->p, .threads = cfg->threads,
                                .devices = cfg->backend_devices };
    r = ops->create(&bo, &dv->be);
    if (r < 0) {
        dv->be = NULL;
        llep__devices_free(dv);
        return llep__errf(err, errlen, r, "%s backend: %s", ops->name, strerror(-r));
    }
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
    free(dv->acct);
    pthread_cond_destroy(&dv->turn_cv);
    pthread_mutex_destroy(&dv->lock);
    free(dv);
}

uint32_t llep__devices_count(const llep_devices *dv) {
    return dv ? dv->p : 0;
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

void llep__devices_turn_wait(llep_devices *dv) {
    pthread_mutex_lock(&dv->lock);
    if (held_by_me(dv)) {
        dv->depth++;
    } else if (!dv->owned && dv->nplaces == 0) {
        dv->granted++;
        own(dv);
    } else {
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
    bool got = true;

    pthread_mutex_lock(&dv->lock);
    if (held_by_me(dv)) {
        dv->depth++;
    } else if (!dv->owned && dv->nplaces == 0) {
        dv->granted++;
        own(dv);
    } else {
        got = false;
    }
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

static bool fits_locked(const llep_devices *dv, const account *a, uint64_t need,
                        enum llep_charge kind) {
    if (a->used + need < a->used)
        return false;
    /* Without a budget the weights always fit: the budget grows with them. */
    if (kind == LLEP_CHARGE_HELD && a->budget == 0)
        return true;
    return a->used + need <= limit_of(dv, a);
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
    account *a = &dv->acct[d];
    if (!fits_locked(dv, a, bytes, kind)) {
        pthread_mutex_unlock(&dv->lock);
        return -ENOMEM;
    }
    /* Charged before the backend is asked, so that a concurrent figure never shows memory
     * in use that is not counted; only this turn allocates, so the check still holds. */
    charge_locked(a, bytes, kind);
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
    if (dv->owned && !held_by_me(dv)) {
        /* Another thread's step has the backend: it frees the block when its turn ends. If
         * there is no memory to note it, the block leaks, which is better than racing. */
        if (llep__grow(&dv->pending, &dv->cap_pending, dv->npending + 1, sizeof(*dv->pending),
                       16) == 0)
            dv->pending[dv->npending++] = (pending_free){ d, ptr };
    } else {
        /* This thread's turn, or nobody's: nobody can take it while we hold the mutex. */
        dv->be->ops->free(dv->be, d, ptr);
    }
    pthread_mutex_unlock(&dv->lock);
}

void llep__devices_note_peak(llep_devices *dv, uint32_t d, uint64_t extra) {
    if (d >= dv->p)
        return;
    pthread_mutex_lock(&dv->lock);
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
    pthread_mutex_unlock(&m->lock);
}

bool llep__devices_fits(const llep_devices *dv, uint32_t d, uint64_t need,
                        enum llep_charge kind) {
    llep_devices *m = (llep_devices *)dv;

    if (d >= dv->p)
        return false;
    pthread_mutex_lock(&m->lock);
    bool ok = fits_locked(dv, &dv->acct[d], need, kind);
    pthread_mutex_unlock(&m->lock);
    return ok;
}

int llep__devices_set_budget(llep_devices *dv, uint32_t d, uint64_t bytes, char *err,
                             size_t errlen) {
    if (!dv || d >= dv->p)
        return llep__errf(err, errlen, -EINVAL, "no device %u", d);
    pthread_mutex_lock(&dv->lock);
    uint64_t used = dv->acct[d].used;
    if (bytes && bytes < used) {
        pthread_mutex_unlock(&dv->lock);
        return llep__errf(err, errlen, -ENOMEM, "device %u already holds %" PRIu64 " bytes", d,
                          used);
    }
    dv->acct[d].budget = bytes;
    pthread_mutex_unlock(&dv->lock);
    return 0;
}
