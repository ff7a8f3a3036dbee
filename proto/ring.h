/* The per-client shared-memory arena: the one definition of its layout (DESIGN.md section 3).
 *
 * llepd creates one arena per client in a memfd, sealed against shrinking, and passes it with
 * SCM_RIGHTS; both sides map it whole. It holds, at fixed offsets recorded in its header:
 *
 *   0              llep_arena_header
 *   sq_offset      llep_ring_ctl, then sq_entries x llep_sqe   (client -> daemon)
 *   cq_offset      llep_ring_ctl, then cq_entries x llep_cqe   (daemon -> client)
 *   tensor_offset  tensor space up to arena_size (x, topk_idx, topk_w, y, weights to upload)
 *
 * Both rings are single-producer/single-consumer with free-running 32-bit indices: the
 * producer alone writes head, the consumer alone writes tail, each on its own cache line.
 *
 * Trust: the peer can write anything into the arena at any time. So each side keeps its own
 * index and the geometry in private memory (llep_ring, llep_arena), reads the peer's index
 * once per operation and checks it, copies entries out before looking at them, and indexes
 * slots through a mask, so no value in shared memory can send it out of bounds. A corrupt
 * ring is reported as -EPROTO; what to do with such a peer is the caller's choice. */
#ifndef LLEP_RING_H
#define LLEP_RING_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LLEP_ARENA_MAGIC UINT64_C(0x414e524150454c4c)   /* "LLEPARNA" in memory order */
#define LLEP_RING_VERSION 1u

#define LLEP_CACHELINE 64u
/* Tensor space starts on a page so the CUDA backend can register it as pinned memory. */
#define LLEP_ARENA_TENSOR_ALIGN 4096u
#define LLEP_ARENA_MAX_SIZE (UINT64_C(1) << 40)
#define LLEP_RING_MAX_ENTRIES 65536u
#define LLEP_RING_DEFAULT_ENTRIES 256u

/* The arena header, written once by its creator. Readers validate it (llep__arena_map) and
 * then use their private copy, never the shared one. */
typedef struct llep_arena_header {
    uint64_t magic;           /* LLEP_ARENA_MAGIC */
    uint32_t version;         /* LLEP_RING_VERSION */
    uint32_t header_size;     /* sizeof(llep_arena_header) */
    uint64_t arena_size;      /* bytes of the whole memfd */
    uint64_t sq_offset;
    uint64_t cq_offset;
    uint64_t tensor_offset;
    uint64_t tensor_size;     /* arena_size - tensor_offset */
    uint32_t sq_entries;      /* power of two, 1 .. LLEP_RING_MAX_ENTRIES */
    uint32_t cq_entries;
    uint32_t sqe_size;        /* sizeof(llep_sqe) */
    uint32_t cqe_size;        /* sizeof(llep_cqe) */
} llep_arena_header;

_Static_assert(offsetof(llep_arena_header, magic) == 0, "abi");
_Static_assert(offsetof(llep_arena_header, version) == 8, "abi");
_Static_assert(offsetof(llep_arena_header, header_size) == 12, "abi");
_Static_assert(offsetof(llep_arena_header, arena_size) == 16, "abi");
_Static_assert(offsetof(llep_arena_header, sq_offset) == 24, "abi");
_Static_assert(offsetof(llep_arena_header, cq_offset) == 32, "abi");
_Static_assert(offsetof(llep_arena_header, tensor_offset) == 40, "abi");
_Static_assert(offsetof(llep_arena_header, tensor_size) == 48, "abi");
_Static_assert(offsetof(llep_arena_header, sq_entries) == 56, "abi");
_Static_assert(offsetof(llep_arena_header, cq_entries) == 60, "abi");
_Static_assert(offsetof(llep_arena_header, sqe_size) == 64, "abi");
_Static_assert(offsetof(llep_arena_header, cqe_size) == 68, "abi");
_Static_assert(sizeof(llep_arena_header) == 72, "abi");

/* Control block of one ring. head and tail on separate cache lines so the producer and the
 * consumer do not invalidate each other's line on every operation. */
typedef struct llep_ring_ctl {
    alignas(LLEP_CACHELINE) _Atomic uint32_t head;  /* next slot to fill; producer writes */
    alignas(LLEP_CACHELINE) _Atomic uint32_t tail;  /* next slot to take; consumer writes */
    /* Non-zero while the consumer is (about to be) blocked on the ring's eventfd, so the
     * producer knows a wake-up is needed; consumer writes, producer reads. */
    alignas(LLEP_CACHELINE) _Atomic uint32_t sleeping;
} llep_ring_ctl;

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "ring indices must be lock-free to be shared");
_Static_assert(sizeof(_Atomic uint32_t) == sizeof(uint32_t), "abi");
_Static_assert(offsetof(llep_ring_ctl, head) == 0, "abi");
_Static_assert(offsetof(llep_ring_ctl, tail) == LLEP_CACHELINE, "abi");
_Static_assert(offsetof(llep_ring_ctl, sleeping) == 2 * LLEP_CACHELINE, "abi");
_Static_assert(sizeof(llep_ring_ctl) == 3 * LLEP_CACHELINE, "abi");

/* A submission: one llep_forward() of `tokens` tokens on a layer. Offsets count from the start
 * of the arena and must lie in the tensor space, except x_offset and y_offset when the flags
 * put them in the client's device space (SpaceRegister): they count from its start then and
 * must lie inside it. The routing always travels in the arena, as llepd copies it out:
 *   x, y      [tokens][D] in the layer's dtype
 *   topk_idx  [tokens][K] int32
 *   topk_w    [tokens][K] float32 */
typedef struct llep_sqe {
    uint64_t tag;             /* the client's, echoed in the completion */
    uint32_t layer_id;        /* from LayerReply */
    uint32_t tokens;
    uint64_t x_offset;
    uint64_t topk_idx_offset;
    uint64_t topk_w_offset;
    uint64_t y_offset;
    uint32_t flags;           /* LLEP_SQE_*_SPACE; other bits 0 */
    uint32_t reserved[3];     /* 0 */
} llep_sqe;

/* llep_sqe.flags: x (or y) lies in the client's device space instead of the arena. */
#define LLEP_SQE_X_SPACE 1u
#define LLEP_SQE_Y_SPACE 2u

_Static_assert(offsetof(llep_sqe, tag) == 0, "abi");
_Static_assert(offsetof(llep_sqe, layer_id) == 8, "abi");
_Static_assert(offsetof(llep_sqe, tokens) == 12, "abi");
_Static_assert(offsetof(llep_sqe, x_offset) == 16, "abi");
_Static_assert(offsetof(llep_sqe, topk_idx_offset) == 24, "abi");
_Static_assert(offsetof(llep_sqe, topk_w_offset) == 32, "abi");
_Static_assert(offsetof(llep_sqe, y_offset) == 40, "abi");
_Static_assert(offsetof(llep_sqe, flags) == 48, "abi");
_Static_assert(offsetof(llep_sqe, reserved) == 52, "abi");
_Static_assert(sizeof(llep_sqe) == 64, "abi");

/* A completion: y of the submission with this tag is written (status 0) or it failed. */
typedef struct llep_cqe {
    uint64_t tag;
    int32_t status;           /* 0 or a negative errno; a SubmissionError frame says why */
    uint32_t layer_id;
    uint64_t step;            /* the daemon step that computed it; 0 when none did */
    uint32_t flags;           /* 0 */
    uint32_t reserved;        /* 0 */
} llep_cqe;

_Static_assert(offsetof(llep_cqe, tag) == 0, "abi");
_Static_assert(offsetof(llep_cqe, status) == 8, "abi");
_Static_assert(offsetof(llep_cqe, layer_id) == 12, "abi");
_Static_assert(offsetof(llep_cqe, step) == 16, "abi");
_Static_assert(offsetof(llep_cqe, flags) == 24, "abi");
_Static_assert(offsetof(llep_cqe, reserved) == 28, "abi");
_Static_assert(sizeof(llep_cqe) == 32, "abi");

/* Where everything lies; the same numbers as the header and as ArenaReply. */
typedef struct llep_arena_geom {
    uint64_t arena_size;
    uint64_t sq_offset, cq_offset;
    uint64_t tensor_offset, tensor_size;
    uint32_t sq_entries, cq_entries;
} llep_arena_geom;

/* One ring as one side sees it; everything here is private to that side. */
typedef struct llep_ring {
    llep_ring_ctl *ctl;
    uint8_t *slots;
    uint32_t entries, mask, entry_size;
    uint32_t prod;            /* our head when we produce on this ring */
    uint32_t cons;            /* our tail when we consume from it */
} llep_ring;

typedef struct llep_arena {
    uint8_t *base;
    int fd;                   /* the memfd when we created it (we close it), else -1 */
    llep_arena_geom geom;
    llep_ring sq, cq;
} llep_arena;

/* Computes the layout for tensor_bytes of tensor space (rounded up to a page) and the given
 * ring sizes (0: LLEP_RING_DEFAULT_ENTRIES). Returns 0, or -EINVAL when a ring size is not a
 * power of two up to LLEP_RING_MAX_ENTRIES or the arena would exceed LLEP_ARENA_MAX_SIZE. */
int llep__arena_layout(uint64_t tensor_bytes, uint32_t sq_entries, uint32_t cq_entries,
                       llep_arena_geom *ret);

/* Creates an arena with layout g in a new memfd (memfd_create, ftruncate, sealed against
 * shrinking, growing and further sealing, then mmap) and writes its header and empty rings.
 * Returns 0 or a negative errno; ret->fd is the memfd to send to the client. */
int llep__arena_create(const llep_arena_geom *g, llep_arena *ret);

/* Maps an arena received from a peer and validates it before anything uses it: a regular
 * file sealed against shrinking (or a peer could truncate it and make us fault), exactly the
 * size its header states, a header equal to the canonical layout for its own sizes, and, when
 * expected is not NULL, equal to that geometry (the one in ArenaReply). Does not take
 * ownership of fd. Returns 0, -EINVAL (not a suitable file), -EPROTO (bad contents) or another
 * negative errno, with a sentence in err. */
int llep__arena_map(int fd, const llep_arena_geom *expected, llep_arena *ret,
                    char *err, size_t errlen);

/* Unmaps the arena and closes its memfd when it owns one. Safe on a zeroed arena. */
void llep__arena_unmap(llep_arena *a);

/* Ring operations. Each returns 0, -EAGAIN when the ring is full (push) or empty (pop), or
 * -EPROTO when the peer's index is impossible (more entries than slots): a corrupt ring. */
int llep__sq_push(llep_arena *a, const llep_sqe *e);   /* client */
int llep__sq_pop(llep_arena *a, llep_sqe *ret);        /* daemon */
int llep__cq_push(llep_arena *a, const llep_cqe *e);   /* daemon */
int llep__cq_pop(llep_arena *a, llep_cqe *ret);        /* client */

/* Entries waiting in a ring as the consumer sees it; -EPROTO when corrupt. */
int llep__ring_pending(const llep_ring *r);

/* Sleep/wake protocol that keeps eventfd syscalls off the busy path:
 *   consumer: if (llep__ring_prepare_sleep(r)) { wait on the eventfd; }
 *             llep__ring_finish_sleep(r); then pop.
 *   producer: push; if (llep__ring_need_wake(r)) llep__eventfd_signal(fd);
 * prepare_sleep announces the sleep and then looks at the ring once more; need_wake looks at
 * the announcement after the push. Sequentially consistent ordering on both sides means at
 * least one of them sees the other, so no wake-up is lost. prepare_sleep returns false (and
 * withdraws the announcement) when entries are already waiting. */
bool llep__ring_prepare_sleep(llep_ring *r);
void llep__ring_finish_sleep(llep_ring *r);
bool llep__ring_need_wake(llep_ring *r);

/* eventfd helpers. open returns a close-on-exec eventfd or a negative errno. signal adds 1.
 * wait reads and resets the counter, blocking on a blocking fd; on a non-blocking one it
 * returns -EAGAIN when nothing was signalled. EINTR is retried. */
int llep__eventfd_open(bool nonblock);
int llep__eventfd_signal(int fd);
int llep__eventfd_wait(int fd, uint64_t *ret_count);

/* Checks that [offset, offset + bytes) lies in the tensor space, without overflow. Returns 0
 * or -EINVAL. */
int llep__arena_check_span(const llep_arena *a, uint64_t offset, uint64_t bytes);

/* Pointer to arena offset; only for offsets a check above has accepted. */
static inline void *llep__arena_ptr(const llep_arena *a, uint64_t offset) {
    return a->base + offset;
}

/* Shape of the layer a submission names, for llep__sqe_check(). */
typedef struct llep_sqe_shape {
    uint32_t top_k;           /* K */
    uint32_t hidden;          /* D */
    uint32_t elem_size;       /* bytes per x/y element: 4 (f32) or 2 (bf16) */
    uint64_t space_size;      /* bytes of the client's device space; 0: none (flags refused) */
} llep_sqe_shape;

/* Checks a submission (a private copy, as llep__sq_pop returns) against its layer's shape:
 * no flags but LLEP_SQE_*_SPACE (and those only with a space), reserved zero; x, topk_idx,
 * topk_w and y spans computed without overflow and inside the tensor space, or for x and y
 * flagged so inside [0, space_size); each aligned to its element size; y not overlapping the
 * inputs that lie in the same memory.
 * Returns 0 or -EINVAL with a sentence naming the field in err. The layer id is the caller's
 * to check. */
int llep__sqe_check(const llep_arena *a, const llep_sqe *e, const llep_sqe_shape *shape,
                    char *err, size_t errlen);

/* Checks routing [tokens][top_k] that the daemon has copied out of the arena (a copy, because
 * the client can change the arena while it is being read): every expert id in
 * [0, num_experts) and every gate weight finite. Returns 0 or -EINVAL naming the first bad
 * entry. */
int llep__routing_check(const int32_t *topk_idx, const float *topk_w, uint32_t tokens,
                        uint32_t top_k, uint32_t num_experts, char *err, size_t errlen);

#endif
