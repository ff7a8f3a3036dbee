/* The P logical devices every engine of a process runs on (issue 13, docs/ARCHITECTURE.md
 * sections 2 and 3): one backend instance, one memory account per device, and one turn on
 * the backend at a time.
 *
 * llepd opens one llep_devices at start and creates every layer's engine on it, so its thread
 * count does not grow with the number of layers (the CPU backend's worker threads, the CUDA
 * backend's streams, cuBLAS handles and communicators exist once), and every byte any layer
 * holds or a step uses on device d is charged to device d's one account. An engine created
 * without one (llep-bench, the engine tests) opens a private one with the same rules.
 *
 * The turn. A backend's per-device queues and its sync() are not safe for two callers at once,
 * so whoever calls into the backend (queues work, syncs, allocates or frees device memory,
 * reads busy times) holds the turn. It is granted first come, first served, by places in a
 * queue: a thread that asks with llep__devices_turn_wait() takes its place when it asks; work
 * that is decided in one thread and runs in another (llepd's loop thread hands steps to libuv's
 * pool) reserves its place where it is decided (llep__devices_reserve(), which never waits),
 * so that how soon the pool thread gets a CPU does not change its order. Reserved places are
 * served in the order they were taken; a thread that asked without one never waits for a
 * reserved place whose thread has not come yet (a pool whose threads all wait in
 * turn_wait could otherwise keep the reserving work from ever starting). The turn is reentrant
 * for the thread that holds it. llep__devices_turn_try() never waits and never jumps the
 * queue: it succeeds only when nobody holds, waits for or has reserved the turn, which is what
 * an event loop may call.
 *
 * The account. Charges are checked against the device's budget and counted under a mutex, so
 * any thread may read the figures; a device's `used` is what every engine holds there (native
 * weights: held charges) plus what the running turn's step has allocated (step charges), and
 * its `peak` the most that ever was, with the backend's staging (llep__devices_note_peak()).
 * Memory may be given back from any thread: at once when the caller holds the turn or nobody
 * does, else by the holder when its turn ends; the bytes are uncharged at once either way. */
#ifndef LLEP_DEVICES_H
#define LLEP_DEVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "cost.h"

typedef struct llep_devices llep_devices;

/* Bytes each device may use beyond what is held on it when no budget is given. */
#define LLEP_DEVICES_DEFAULT_TOKEN_BUDGET (1ull << 30)

typedef struct llep_devices_config {
    const llep_backend_ops *backend;   /* NULL: the CPU backend */
    uint32_t num_devices;              /* P > 0 */
    uint32_t threads;                  /* CPU backend threads; 0: min(P, online CPUs) */
    const char *backend_devices;       /* device spec ("cuda:0x4"); NULL: the default */
    /* Bytes each device may use, held and step charges of every engine together; 0: what is
     * held there plus token_budget (a budget that grows with the weights held). */
    uint64_t budget;
    uint64_t token_budget;             /* 0: LLEP_DEVICES_DEFAULT_TOKEN_BUDGET */
    /* Bytes per device of the replica cache (spilled experts' weights kept across steps, see
     * "the replica cache" below): 0: no cache; LLEP_DEVICES_CACHE_AUTO: what the budget leaves
     * after the held bytes and the largest step the device has run. */
    uint64_t replica_cache;
} llep_devices_config;

#define LLEP_DEVICES_CACHE_AUTO UINT64_MAX

/* Creates the backend instance. Returns 0, -EINVAL or the backend's error (message in err). */
int llep__devices_new(const llep_devices_config *cfg, llep_devices **ret, char *err,
                      size_t errlen);
/* Destroys the backend, after every engine on the devices was freed. */
void llep__devices_free(llep_devices *dv);

uint32_t llep__devices_count(const llep_devices *dv);
llep_backend *llep__devices_backend(const llep_devices *dv);

/* The cost model of these devices (cost.h), as calibrated on their backend or loaded from
 * llepd's state directory; NULL until one is set. set copies it (NULL clears it) under the
 * devices' lock, so a step reading it while llepctl tune replaces it sees the old or the new
 * model whole: cost_get copies it into ret and returns false when there is none. */
void llep__devices_set_cost(llep_devices *dv, const llep_cost_model *m);
bool llep__devices_cost_get(const llep_devices *dv, llep_cost_model *ret);

/* Models of one layer shape each (issue 15 item 1: a chunk's rate at few rows and a copy's
 * time depend on the layer's shape, where its weights live and how many bytes move), measured
 * at that shape by whoever opened the devices (llepd's server/calib-shapes.c) and looked up
 * by each step. At most LLEP_DEVICES_COST_SHAPES shapes: a bound on the copies kept, not on
 * layers (layers of one shape share one). set_shape copies m for the shape (NULL removes it);
 * -ENOSPC when the table is full and the shape is not in it. cost_for copies the shape's
 * model into ret when there is one (*shape true), else the reference model of set_cost
 * (*shape false); false when there is neither. Under the devices' lock, as set_cost. */
#define LLEP_DEVICES_COST_SHAPES 32u
int llep__devices_set_shape_cost(llep_devices *dv, uint32_t hidden, uint32_t inter,
                                 enum llep_dtype dtype, const llep_cost_model *m);
bool llep__devices_cost_for(const llep_devices *dv, uint32_t hidden, uint32_t inter,
                            enum llep_dtype dtype, llep_cost_model *ret, bool *shape);
/* Shapes in the table now. */
uint32_t llep__devices_shape_costs(const llep_devices *dv);

/* ---- the turn ---------------------------------------------------------------------------- */

/* Waits for the turn, in order of asking; returns at once, one level deeper, when this thread
 * holds it. */
void llep__devices_turn_wait(llep_devices *dv);
/* A place in the queue, taken now for a thread that will wait for it with
 * llep__devices_turn_wait_reserved(), or give it up with llep__devices_unreserve(): exactly
 * one of them, once. Never waits. 0 when out of memory (then turn_wait_reserved(0) waits as
 * turn_wait does). */
uint64_t llep__devices_reserve(llep_devices *dv);
void llep__devices_turn_wait_reserved(llep_devices *dv, uint64_t place);
void llep__devices_unreserve(llep_devices *dv, uint64_t place);
/* Takes the turn only when this thread holds it or nobody holds, waits for or has reserved
 * it; never waits. */
bool llep__devices_turn_try(llep_devices *dv);
/* Ends one level of the turn; the last frees what was given back meanwhile and hands the turn
 * to the next place. */
void llep__devices_turn_end(llep_devices *dv);
/* Whether the calling thread holds the turn. */
bool llep__devices_turn_held(const llep_devices *dv);

/* Turns granted so far; threads waiting for one now, and places reserved whose thread has not
 * come yet (for tests and figures). */
typedef struct llep_devices_turns {
    uint64_t granted;
    uint32_t waiting, reserved;
} llep_devices_turns;
void llep__devices_turn_figures(const llep_devices *dv, llep_devices_turns *ret);

/* ---- the account ------------------------------------------------------------------------- */

enum llep_charge {
    LLEP_CHARGE_STEP,   /* a step's buffer: must fit in the budget */
    LLEP_CHARGE_HELD,   /* held between steps (native weights) */
};

/* Under the turn: charges bytes to device d and allocates them from the backend (64-byte
 * aligned), evicting unpinned replica-cache entries first when they stand in the way.
 * Returns 0, -ENOMEM over the budget (nothing charged) or the backend's error. */
int llep__devices_alloc(llep_devices *dv, uint32_t d, uint64_t bytes, enum llep_charge kind,
                        void **ret);
/* Any thread: uncharges bytes from device d and frees ptr (NULL: nothing). d is the device
 * that served the allocation (llep__devices_serving() of the logical device when it was made:
 * the same device unless one failed, see "failed devices" below). */
void llep__devices_release(llep_devices *dv, uint32_t d, void *ptr, uint64_t bytes,
                           enum llep_charge kind);
/* A step's transient use beyond its charges (the backend's staging) on device d: counted in
 * the peak, not in used. */
void llep__devices_note_peak(llep_devices *dv, uint32_t d, uint64_t extra);

typedef struct llep_device_figures {
    uint64_t budget;    /* in force now (the held bytes plus the token budget without one) */
    uint64_t used;      /* held, cache and step charges */
    uint64_t held;      /* held charges */
    uint64_t peak;      /* the most used ever was, with staging */
    uint64_t free;      /* budget - used for a step charge, 0 when over */
    /* The replica cache: bytes and experts it holds now, its limit now (0: off), the step
     * lookups it answered since start, the weight bytes those saved, and copies it evicted. */
    uint64_t cache_bytes, cache_limit, cache_hits, cache_saved, cache_evictions;
    uint32_t cache_experts;
    uint64_t largest_step;  /* the most step charges the device ever held at once */
} llep_device_figures;
void llep__devices_figures(const llep_devices *dv, uint32_t d, llep_device_figures *ret);

/* Whether need more bytes of kind fit on device d now, counting the unpinned replica-cache
 * entries as room (llep__devices_alloc() evicts them when it needs to). */
bool llep__devices_fits(const llep_devices *dv, uint32_t d, uint64_t need,
                        enum llep_charge kind);

/* Sets device d's budget (0: held + token budget). -EINVAL for a bad device, -ENOMEM when it
 * already uses more (message in err). */
int llep__devices_set_budget(llep_devices *dv, uint32_t d, uint64_t bytes, char *err,
                             size_t errlen);

/* ---- the replica cache ----------------------------------------------------------------- *
 *
 * A helper device keeps the spilled experts' weights it received (issue 15, item 3), so that
 * when the same expert spills to it again the step reuses the copy instead of moving the
 * weights again. Entries belong to an owner (one engine, one set of weights: a new owner id
 * per engine, so a layer freed and recreated never sees the old copies) and are charged to the
 * device's one account as cache bytes, bounded by the cache's limit. The cache gives way to
 * every other charge: an allocation that does not fit evicts unpinned entries first, so a
 * step never fails for lack of memory because of the cache. Eviction goes by decayed load:
 * each entry's score is the tokens it served, halved every LLEP_DEVICES_CACHE_HALF_LIFE steps
 * of any engine, and the lowest score goes first. An entry a running step uses is pinned
 * until llep__devices_cache_unpin(). Every call below except holds and figures needs the
 * turn; drop may come from any thread. */

#define LLEP_DEVICES_CACHE_HALF_LIFE 16.0

/* Whether the cache has a limit other than 0 (it may still be 0 bytes now under auto). */
bool llep__devices_cache_on(const llep_devices *dv);
/* A new owner id (never 0). */
uint64_t llep__devices_cache_owner(llep_devices *dv);
/* Advances the cache's clock: one call per step of an engine. */
void llep__devices_cache_tick(llep_devices *dv);
/* Marks held[x * P + d] = 1 for every copy of owner's expert x on device d, 0 elsewhere
 * (held has num_experts * P entries). A hint for the planner: a copy may be evicted before
 * the step looks it up. Any thread. */
void llep__devices_cache_holds(const llep_devices *dv, uint64_t owner, uint32_t num_experts,
                               uint8_t *held);
/* The copy of owner's expert on device d, pinned, with its score raised by tokens and the hit
 * counted (bytes saved included); NULL when the device has none. */
void *llep__devices_cache_get(llep_devices *dv, uint32_t d, uint64_t owner, uint32_t expert,
                              uint64_t tokens);
/* Offers a block of bytes on device d, allocated by llep__devices_alloc() as a step charge and
 * holding owner's expert, to the cache. Returns true when the cache keeps it (it is then a
 * cache charge, pinned until unpin; the caller must not release it), false when it does not
 * fit under the limit even after evicting entries of lower score (the caller releases it). */
bool llep__devices_cache_put(llep_devices *dv, uint32_t d, uint64_t owner, uint32_t expert,
                             void *ptr, uint64_t bytes, uint64_t tokens);
/* Unpins every entry of owner. */
void llep__devices_cache_unpin(llep_devices *dv, uint64_t owner);
/* Releases every entry of owner (its weights are going away). Any thread. */
void llep__devices_cache_drop(llep_devices *dv, uint64_t owner);
/* Sets the cache's limit per device (0: off, LLEP_DEVICES_CACHE_AUTO), evicting what no
 * longer fits. Under the turn. */
void llep__devices_cache_set_limit(llep_devices *dv, uint64_t bytes);
/* Up to max of device d's entries, as (owner, expert) pairs, highest score first; returns how
 * many it holds in all. Any thread. */
uint32_t llep__devices_cache_list(const llep_devices *dv, uint32_t d, uint64_t *owners,
                                  uint32_t *experts, uint32_t max);

/* ---- failed devices --------------------------------------------------------------------- *
 *
 * A device fails for good when its backend says so after a sync() failed
 * (backend.h: device_failed; a sticky CUDA error, or the CPU backend's test hook): the turn's
 * holder then calls llep__devices_check_failed(), which marks it failed, drops its replica
 * cache and has the surviving device with the most free budget serve it: from then on every
 * backend call on logical device d through llep__devices_view(), and every charge, fit and
 * cache lookup of d, goes to the device serving it, so the planner and the engines keep
 * seeing P logical devices. Blocks allocated on the failed device before stay charged to it
 * until their holders give them back (release with the failed device). Engines notice a
 * failure by llep__devices_failures() changing and put their experts of the failed device
 * back on the one serving it where their weights can be had again (engine.h: reload). */

#define LLEP_DEVICES_NONE UINT32_MAX
#define LLEP_DEVICES_WHY_MAX 96

/* The backend as engines see it: the same operations, each on the device serving the logical
 * device it names. llep__devices_backend() is the backend itself (its communicators). */
llep_backend *llep__devices_view(llep_devices *dv);
/* The device serving logical device d now: d while it works, LLEP_DEVICES_NONE when every
 * device failed. */
uint32_t llep__devices_serving(const llep_devices *dv, uint32_t d);
/* Devices failed since the devices were opened. */
uint64_t llep__devices_failures(const llep_devices *dv);

typedef struct llep_device_status {
    bool failed;                       /* the physical device d */
    uint32_t served_by;                /* d, another device, or LLEP_DEVICES_NONE */
    char why[LLEP_DEVICES_WHY_MAX];    /* the backend's reason, "" while it works */
} llep_device_status;
void llep__devices_status(const llep_devices *dv, uint32_t d, llep_device_status *ret);

/* Under the turn, after a sync() failed: asks the backend which devices failed and marks the
 * new ones (see above). Returns how many failed now, the first named in err ("device 2
 * failed (...)"); 0 when none did (err untouched). */
int llep__devices_check_failed(llep_devices *dv, char *err, size_t errlen);

#endif
