/* libllep-client internals shared by its files: the client and layer handles, the lock
 * discipline, the arena allocator and the progress loop.
 *
 * Locking: one mutex per client guards everything in it. The only things done without it
 * are the copies a caller makes of its own arguments and the sleep in poll(): one waiting
 * thread at a time (the "poller") sleeps on the socket, the completion eventfd and an
 * internal wake-up eventfd; the other waiters sleep on the condition variable and are woken
 * when the poller comes back. Whoever reaps completions copies each output to its owner's
 * buffer, so a thread's result may arrive through another thread's wait. */
#ifndef LLEP_CLIENT_INTERNAL_H
#define LLEP_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "llep/client.h"
#include "llep/space.h"
#include "ring.h"

#define LLEP_CLIENT_ERROR_MAX 512u
/* Arena blocks start on a cache line, so no two submissions share one. */
#define LLEP_CLIENT_ALIGN 64u
/* Smallest tensor space asked for, so small layers and batches do not regrow it often. */
#define LLEP_CLIENT_MIN_ARENA (1u << 20)
/* How long a failed completion waits for the SubmissionError frame explaining it; the
 * daemon sends that frame before it completes, so it is normally there already. */
#define LLEP_CLIENT_ERROR_FRAME_WAIT_MS 200

/* A thread about to sleep for a completion first watches the ring this long: a small step
 * completes in tens of microseconds, and sleeping adds an eventfd wake-up to that. Longer
 * spins took the 1-token round trip from ~65 us (no spin to speak of) to ~30-45 us on a busy
 * 2-core machine, but there they also take a core from llepd's device threads. */
#define LLEP_CLIENT_SPIN_NS 50000

/* Reconnecting (client-reconnect.c, the policy in include/llep/client.h): the tries after
 * the first immediate one are this far apart, doubling up to the most, which is also the
 * longest a call waits for a try; the Hello of a try is bounded too. */
#define LLEP_CLIENT_RETRY_FIRST_MS 10
#define LLEP_CLIENT_RETRY_MAX_MS 200
#define LLEP_CLIENT_RETRY_HELLO_MS 1000

/* When to try something again: the next try at next_ms (0: at once), backoff_ms after the
 * last failure (0: none yet). */
typedef struct llep_retry {
    int64_t next_ms;
    int backoff_ms;
} llep_retry;

/* The weights of a layer created with LLEP_LAYER_KEEP_WEIGHTS, as they went into the arena:
 * the tensors given (present) one after another in llep's layout, each starting on
 * LLEP_CLIENT_ALIGN; and the desc it was created with, pointers NULL. */
typedef struct llep_kept_weights {
    llep_layer_desc desc;
    bool present[6];          /* by enum llep_weight */
    uint64_t total;
    void *bytes;
} llep_kept_weights;

/* A span of the tensor space in use, by absolute arena offset. */
typedef struct llep_block {
    uint64_t offset, size;
} llep_block;

/* One submission from llep_submit() until llep_wait() collects it. */
typedef struct llep_ticket {
    uint64_t id;
    bool done;                /* status is final (y written when it is 0) */
    bool in_flight;           /* in the rings: its block is in use, a completion will come */
    int status;
    char *message;            /* the daemon's SubmissionError, or NULL */
    void *y;                  /* the caller's output */
    uint64_t y_offset;        /* in the arena, in the layer's dtype */
    enum llep_dtype y_arena, y_type;  /* the layer's dtype and the caller's */
    uint64_t y_elems;
    uint64_t block;           /* arena offset of its block */
    bool in_space;            /* x or y lies in the client's space (llepd reads it in place) */
} llep_ticket;

struct llep_layer {
    llep_client *client;
    llep_layer *prev, *next;
    uint32_t id;              /* the daemon's layer_id */
    char *name;
    llep_layer_desc desc;     /* as the daemon holds it; no pointers */
    uint32_t elem_size;       /* of x and y */
    uint64_t gen;             /* the connection (llep_client.gen) id belongs to */
    bool created;             /* with weights, by this client */
    llep_kept_weights *kept;  /* LLEP_LAYER_KEEP_WEIGHTS, or NULL */
    llep_retry retry;         /* restoring it after a reconnect */
};

struct llep_client {
    pthread_mutex_t lock;
    pthread_cond_t cond;      /* waiters other than the poller; CLOCK_MONOTONIC */
    llep_conn conn;
    int dead;                 /* 0, or -ECONNRESET once the connection is lost (sticky) */
    char error[LLEP_CLIENT_ERROR_MAX];
    char notice[256];         /* the last Notice from the daemon */

    bool have_arena;
    llep_arena arena;
    int sq_efd, cq_efd;       /* -1 without an arena */
    uint32_t ring_limit;      /* most submissions in flight: min(sq, cq entries) */
    llep_block *blocks;       /* sorted by offset */
    size_t nblocks, blocks_cap;

    llep_ticket *tickets;     /* unordered; few, so searched linearly */
    size_t ntickets, tickets_cap;
    uint64_t last_ticket;
    uint32_t in_flight;

    bool poller;              /* a thread sleeps in poll() without the lock */
    bool socket_ready;        /* poll() saw the socket readable: frames (or EOF) to read */
    int wake_efd;             /* makes the poller come back */

    llep_layer *layers;       /* handles not yet released */

    /* Reconnecting (client-reconnect.c). */
    bool reconnect;           /* LLEP_CONNECT_RECONNECT */
    char *socket_path;        /* as given to connect; NULL: the default, worked out anew */
    uint64_t gen;             /* connections made so far: 1 after llep_connect() */
    uint64_t restored_gen;    /* the connection the layers were last restored on */
    bool reviving;            /* a thread is reconnecting (may have dropped the lock) */
    uint64_t revive_tries;
    llep_retry retry;

    struct llep_space *space; /* the client's device space (client-space.c), or NULL */
    uint32_t space_inflight;  /* submissions in flight that name it */
    /* Set by client-space.c with the space, so client.c calls up without naming it: a
     * submission with y in the space completed; the client is being freed. */
    void (*space_y_done)(llep_client *c);
    void (*space_drop)(llep_client *c);
    void (*space_restore)(llep_client *c);   /* after a reconnect (llep__client_usable) */
};

/* Records why a call failed (printf-style) and returns r. Lock held. */
int llep__client_fail(llep_client *c, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Milliseconds on CLOCK_MONOTONIC; deadlines are in these, -1 meaning none. */
int64_t llep__client_now_ms(void);

/* One round of progress, lock held: reads the socket, reaps completions, and when neither
 * brought anything, sleeps until something may have happened or the deadline passes. Returns
 * 0 (look again), -EAGAIN (deadline passed) or c->dead. */
int llep__client_progress(llep_client *c, int64_t deadline_ms);

/* Sends a control request and waits for its reply, handling frames the daemon sends on its
 * own meanwhile; checks the reply's body and status. Returns 0 with the reply (free it with
 * llep__frame_free()) or a negative errno with the reason recorded in c->error. A broken
 * connection makes the client dead. Lock held throughout. */
int llep__client_request(llep_client *c, LlepPb__Frame *req, LlepPb__Frame__BodyCase expected,
                         LlepPb__Frame **ret);

/* Whether c may be used: 0 when connected; when the connection is lost, -ECONNRESET with
 * the reason recorded, after one reconnect try for a reconnecting client (which may drop the
 * lock meanwhile). llep__client_usable() below is what the calls use. */
int llep__client_ready(llep_client *c);

/* llep__client_ready(), and after a reconnect, every layer restored (client-layer.c). Every
 * call that needs llepd starts with this. */
int llep__client_usable(llep_client *c);

/* Makes layer l usable on the current connection (client-layer.c): nothing when it is, else
 * restores it as include/llep/client.h says, with l->retry's backoff. Lock held (may be
 * dropped while waiting for the next try). Returns 0 or a negative errno, reason recorded. */
int llep__layer_restore(llep_layer *l);

/* A failed try: the next one after twice the last wait, from LLEP_CLIENT_RETRY_FIRST_MS up to
 * LLEP_CLIENT_RETRY_MAX_MS; returns that wait. A success: the next try at once. */
int llep__retry_failed(llep_retry *t);
void llep__retry_reset(llep_retry *t);

/* The kept weights (client-kept.c): a copy of the arena block where create put the present
 * tensors of d's layer, total bytes from block on. NULL when out of memory. */
llep_kept_weights *llep__kept_new(const llep_client *c, const llep_layer_desc *d,
                                  const bool present[6], uint64_t block, uint64_t total);
void llep__kept_free(llep_kept_weights *k);

/* The program's short name, for Hello. */
const char *llep__program_name(void);

/* Unlocks, sleeps until ms on CLOCK_MONOTONIC (at most LLEP_CLIENT_RETRY_MAX_MS), locks. */
void llep__client_sleep_until(llep_client *c, int64_t ms);

/* A layer description from the wire into the API's struct (weight pointers NULL). */
void llep__desc_from_proto(const LlepPb__LayerDesc *p, llep_layer_desc *d);

/* The ticket with this id, or NULL. Pointers into the table last until a ticket is added or
 * removed. */
llep_ticket *llep__ticket_find(llep_client *c, uint64_t id);

/* Reserves `size` bytes of tensor space, growing the arena (which needs nothing in flight)
 * when they can never fit, or waiting for submissions to complete while they merely do not
 * fit now. `submission` asks for room for several such blocks when it grows. Lock held, may
 * be dropped while waiting. Returns 0 with the absolute offset, or a negative errno. */
int llep__arena_reserve(llep_client *c, uint64_t size, bool submission, uint64_t *ret_offset);
/* The block allocator (client-blocks.c): first fit over the tensor space, -ENOSPC when the
 * block does not fit now; release by the block's offset. */
int llep__arena_block_alloc(llep_client *c, uint64_t size, uint64_t *ret_offset);
void llep__arena_release(llep_client *c, uint64_t offset);

/* Unmaps the arena and closes its eventfds. */
void llep__arena_drop(llep_client *c);

/* The tensors of llep's layout, in the order of LayerCreate. */
enum llep_weight {
    LLEP_W_GATE, LLEP_W_UP, LLEP_W_DOWN, LLEP_B_GATE, LLEP_B_UP, LLEP_B_DOWN,
    LLEP_WEIGHT_COUNT
};

/* Where one tensor of llep's layout comes from in the caller's (client-weights.c): expert e's
 * matrix of rows x cols has element [i][j] at src[e * expert + offset + i * row_stride +
 * j * col_stride], counted in elements. src is NULL for a tensor not given. */
typedef struct llep_weight_src {
    const void *src;
    size_t expert, offset;
    size_t rows, cols, row_stride, col_stride;
} llep_weight_src;

/* Whether gate and up come in one tensor, w_gate_up. */
bool llep__gate_up_fused(enum llep_gate_up_layout g);

/* The sources of a desc's six tensors for its layouts (which must be valid). */
void llep__weight_sources(const llep_layer_desc *d, llep_weight_src ret[LLEP_WEIGHT_COUNT]);

/* Gathers n experts' matrices of s, in dtype t, into llep's layout at dst. */
void llep__weight_copy(void *dst, enum llep_dtype t, uint32_t n, const llep_weight_src *s);

/* ---- the device space (client-space.c) ---- */

/* Bytes of a CUDA IPC event handle (CU_IPC_HANDLE_SIZE). */
#define LLEP_SPACE_EVENT_BYTES 64u

/* Where a forward's x and y of `bytes` each lie: *ret_flags gets LLEP_SQE_X_SPACE and
 * LLEP_SQE_Y_SPACE for those inside the client's space, with their offsets in it. -EINVAL
 * for a tensor partly inside, or inside but not in the layer's dtype. Lock held. */
int llep__space_locate(llep_client *c, const llep_layer *l, const void *x,
                       enum llep_dtype x_type, const void *y, enum llep_dtype y_type,
                       uint64_t bytes, uint32_t *ret_flags, uint64_t *ret_x, uint64_t *ret_y);
/* Before pushing a submission that names the space: records its ready event (CUDA). */
int llep__space_before_submit(llep_client *c);

/* client-space-cuda.c (built with CUDA): VMM memory exported as a POSIX descriptor (its
 * size rounded up to the GPU's allocation granularity, in *ret_size), and the two
 * interprocess events. Each returns 0 or a negative errno with a sentence in err. */
struct llep_cuda_space;
int llep__cuda_space_alloc(uint64_t bytes, int gpu, struct llep_cuda_space **ret,
                           void **ret_base, uint64_t *ret_size, uint8_t *ready_event,
                           size_t *ready_len, char *err, size_t errlen);
/* A new POSIX descriptor of the space's allocation, for each registration. */
int llep__cuda_space_export(struct llep_cuda_space *s, int *ret_fd);
int llep__cuda_space_done_event(struct llep_cuda_space *s, const uint8_t *handle, size_t len);
int llep__cuda_space_ready(struct llep_cuda_space *s);
void llep__cuda_space_wait_done(struct llep_cuda_space *s);
void llep__cuda_space_free(struct llep_cuda_space *s);

static inline uint64_t llep__align_up(uint64_t v, uint64_t a) {
    return (v + a - 1) / a * a;
}

#endif
