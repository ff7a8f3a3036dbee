/* The engine's insides, shared by engine.c and the cluster part (engine-part.c), which runs a
 * node's share of a step on the same devices, with the same memory accounting and the same
 * backend operations. Nothing outside those two files includes this header. */
#ifndef LLEP_ENGINE_INTERNAL_H
#define LLEP_ENGINE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"

/* A device as the engine sees it: its native experts and what this engine has charged to it
 * (the device's whole account, every engine's, is the devices', devices.h). */
typedef struct engine_device {
    void *native;          /* [M] expert blocks */
    uint64_t native_bytes;
    /* The devices that served the native blocks' and the step buffers' allocations (the
     * device itself unless one failed, devices.h): where they are given back. */
    uint32_t native_on, step_on;
    bool lost;             /* its device failed and its experts could not be put back */
    uint64_t used, peak;   /* this engine's */
    /* Buffers of the current step. */
    void *x;               /* [rows][D], layer dtype: rows dispatched here */
    float *y;              /* [rows][D]: results of those rows */
    void *scratch;
    uint64_t x_bytes, y_bytes, scratch_bytes;
    uint64_t rows;         /* rows in the current step */
    uint32_t max_chunk;    /* largest chunk in the current step */
    uint32_t received;     /* transfers to this device in the current step */
    size_t row_base;       /* this device's first entry in gather_src */
} engine_device;

struct llep_engine {
    llep_engine_config cfg;   /* weight pointers cleared after creation */
    llep_ffn_shape shape;
    uint32_t n, k, d, h, p, m;
    size_t esz;
    int has_bg, has_bu, has_bd;
    uint64_t expert_bytes;
    uint64_t off_up, off_down, off_bg, off_bu, off_bd;

    llep_devices *devs;
    int own_devs;             /* opened by the engine (no shared devices in its config) */
    llep_backend *be;         /* the devices' */
    engine_device *dev;
    llep_engine_device_stats *dstats;
    llep_plan plan;
    int planned;
    char err[256];
    uint64_t failures_seen;   /* llep__devices_failures() when the natives were last checked */
    char lost_why[200];       /* why the lost devices' experts could not be put back */
    char wait_why[200];       /* reload.get said -EAGAIN: why (the weights are on their way) */

    /* Step workspace on the host, sized for N experts and grown with the slot count. */
    uint64_t *loads;          /* [N] */
    uint64_t *rank;           /* [N] next rank within each expert */
    uint32_t *cur_range;      /* [N] range holding that rank */
    uint64_t *chunk_row;      /* [max ranges] first row of each range on its device */
    void **recv;              /* [max ranges] received weight blocks, by transfer */
    uint8_t *hit;             /* [max ranges] the transfer's block came from the cache */
    uint8_t *held;            /* [N * P] the replica cache's copies, as a hint for the plan */
    uint64_t cache_owner;     /* this engine's id in the replica cache */
    uint64_t *busy0;          /* [P] backend busy time at the start of the turn */
    uint64_t *busy_step;      /* [P] busy time of the step's turns so far */
    size_t *home_base;        /* [P] each home device's first entry in combine_src */
    const void **gather_src;  /* [slots] source row of each dispatched row */
    const float **combine_src;/* [slots] result row of each (token, k) */
    size_t slot_cap;
};

uint64_t llep__engine_monotonic_ns(void);

/* The devices' turn for a phase of a step (devices.h): every backend call of the step lies
 * between begin and end. The busy time of the devices between them counts as the step's
 * (turns of other engines may come between two phases of a cluster part). */
void llep__engine_turn_begin(llep_engine *e);
void llep__engine_turn_end(llep_engine *e);

/* Before a step: when a device failed since the last check, puts this engine's experts of the
 * failed device back on the device serving it, from the weights cfg.reload gives. Returns 0,
 * or -EIO with a message in err when some of its experts are lost. */
int llep__engine_check_devices(llep_engine *e, char *err, size_t errlen);
/* After a sync() that returned r < 0, under the turn: r, with a message in err naming the
 * device that failed (devices.h) or the backend's error. */
int llep__engine_sync_failed(llep_engine *e, int r, char *err, size_t errlen);

/* Under the turn: charges bytes of a step to device d and allocates them; -ENOMEM when they do
 * not fit in its budget beside what every engine holds there. */
int llep__engine_dev_alloc(llep_engine *e, uint32_t d, uint64_t bytes, void **ret);
/* Frees *ptr (if set) on device d, uncharges bytes and clears *ptr; any thread. */
void llep__engine_dev_free(llep_engine *e, uint32_t d, void **ptr, uint64_t bytes);


/* Checks batches[0..nb) for a top-k of K over num_experts experts and counts their
 * per-expert loads into loads[num_experts] (zeroed first); home_base[p] gets batch p's first
 * slot. Returns 0 with the slot count in *ret_slots, or -EINVAL with a message in err. */
int llep__engine_count_batches(const llep_engine *e, const llep_engine_batch *b, uint32_t nb,
                               uint32_t num_experts, uint64_t *loads, size_t *home_base,
                               uint64_t *ret_slots, char *err, size_t errlen);

/* Devices 0..ndev-1 start a step's layout: no rows, chunks or received experts yet. */
void llep__engine_clear_rows(llep_engine *e, uint32_t ndev);

/* Sets device d's step buffer sizes (x, y, scratch) from its rows and max_chunk. */
void llep__engine_device_sizes(llep_engine *e, uint32_t d);
/* Bytes device d's step needs on top of what it holds: received weights and its buffers. */
uint64_t llep__engine_device_need(const llep_engine *e, uint32_t d);
/* Allocates device d's x, y and scratch (charged); frees them. */
int llep__engine_device_alloc(llep_engine *e, uint32_t d);
void llep__engine_device_free(llep_engine *e, uint32_t d);

/* The native block of local expert i (0 .. M) on device d. */
static inline const char *llep__engine_native_block(const llep_engine *e, uint32_t d,
                                                    uint32_t i) {
    return (const char *)e->dev[d].native + (uint64_t)i * e->expert_bytes;
}

/* Queues on device d one expert chunk of `rows` rows starting at row `row` of its step
 * buffers, with the weight block w. */
int llep__engine_queue_chunk(llep_engine *e, uint32_t d, const char *w, uint64_t row,
                             uint32_t rows);
/* Queues on device p the combine of batch b from the result rows src[tokens * K]. */
int llep__engine_queue_combine(llep_engine *e, uint32_t p, const llep_engine_batch *b,
                               const float *const *src);

/* Step statistics: begin resets the device figures and peaks; end (after the step's last
 * turn) fills device d's figures (rows computed there) and returns its busy time in the step.
 * Backend staging is noted in this engine's and the device's peak by note_stage. */
void llep__engine_note_stage(llep_engine *e, uint32_t d, uint64_t bytes);
void llep__engine_begin_stats(llep_engine *e);
uint64_t llep__engine_end_device_stats(llep_engine *e, uint32_t d, uint64_t rows);

#endif
