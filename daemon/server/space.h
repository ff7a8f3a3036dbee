/* A client's device space (issue 17; docs/ARCHITECTURE.md section 5.3): memory of the
 * client's own, registered beside its arena, that its submissions name for x and y so that a
 * GPU-resident client's activations are read and written where they are (space.c).
 *
 * Two kinds: a host memfd, which llepd maps itself (the stand-in that runs on every backend),
 * and CUDA VMM memory, which the backend imports through its optional space ops (backend.h);
 * the server never knows more of CUDA than that the base is not host memory. */
#ifndef LLEPD_SPACE_H
#define LLEPD_SPACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "frame.h"

/* Spaces above this are refused, as arenas are (handlers.c). */
#define LLEPD_SPACE_MAX_BYTES (UINT64_C(64) << 30)
/* Bytes of a CUDA IPC event handle (cudaIpcEventHandle_t), the largest event llepd passes. */
#define LLEPD_SPACE_EVENT_MAX 64u

typedef struct llepd_space {
    int kind;                 /* LLEP_PB__SPACE_KIND__SPACE_* */
    int gpu;                  /* CUDA device ordinal; -1 for a host space */
    uint64_t size;
    /* What x is read from and y written to: llepd's mapping of the memfd, or the device
     * address the backend mapped. host tells which: only host memory may be memcpy'd. */
    char *base;
    bool host;
    const llep_backend_ops *ops;  /* the backend that imported it (device spaces) */
    llep_backend *backend;
    void *handle;             /* the backend's */
    uint8_t done_event[LLEPD_SPACE_EVENT_MAX];
    size_t done_len;
} llepd_space;

/* Opens the space a SpaceRegister describes, from the descriptor that came with it (fd is the
 * caller's to close). A host space must be a memfd of exactly m->size bytes sealed against
 * shrinking (a client could otherwise truncate it under a step and make llepd fault); a CUDA
 * space needs a backend with space_import, which refuses a GPU it does not run on. Returns 0,
 * or -EINVAL / -ENOMEM / -ENODEV with a sentence naming the problem in err. */
int llepd_space_open(const LlepPb__SpaceRegister *m, int fd, const llep_backend_ops *ops,
                     llep_backend *backend, llepd_space **ret, char *err, size_t errlen);

/* Unmaps (or has the backend release) and frees the space; NULL is fine. Nothing may use it. */
void llepd_space_close(llepd_space *sp);

/* Where offset lies: base + offset (the submission check has bounded it). */
static inline void *llepd_space_ptr(const llepd_space *sp, uint64_t offset) {
    return sp->base + offset;
}

/* Copies bytes between host memory and the space, either way, by memcpy for a host space,
 * else through the backend (which waits for the client's ready event first). */
int llepd_space_copy(const llepd_space *sp, void *dst, const void *src, size_t bytes);

#endif
