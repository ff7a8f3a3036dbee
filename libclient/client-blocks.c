/* The arena's mapping and the first-fit allocator over its tensor space: the bookkeeping that
 * both the progress loop (client.c, which frees a completed submission's block) and the
 * arena's set-up (client-arena.c) use. */
#include "client-internal.h"
#include "grow.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void llep__arena_drop(llep_client *c) {
    if (c->have_arena)
        llep__arena_unmap(&c->arena);
    if (c->sq_efd >= 0)
        close(c->sq_efd);
    if (c->cq_efd >= 0)
        close(c->cq_efd);
    c->sq_efd = c->cq_efd = -1;
    c->have_arena = false;
    c->nblocks = 0;
    c->ring_limit = 0;
}

/* First fit over the gaps between the blocks in use (sorted by offset). */
int llep__arena_block_alloc(llep_client *c, uint64_t size, uint64_t *ret) {
    uint64_t pos = c->arena.geom.tensor_offset;
    uint64_t end = pos + c->arena.geom.tensor_size;
    size_t i;

    for (i = 0; i <= c->nblocks; i++) {
        uint64_t limit = i < c->nblocks ? c->blocks[i].offset : end;

        if (limit >= pos && limit - pos >= size)
            break;
        if (i < c->nblocks)
            pos = llep__align_up(c->blocks[i].offset + c->blocks[i].size, LLEP_CLIENT_ALIGN);
    }
    if (i > c->nblocks)
        return -ENOSPC;
    if (llep__grow(&c->blocks, &c->blocks_cap, c->nblocks + 1, sizeof(*c->blocks), 16) < 0)
        return -ENOMEM;
    memmove(&c->blocks[i + 1], &c->blocks[i], (c->nblocks - i) * sizeof(*c->blocks));
    c->blocks[i] = (llep_block){ .offset = pos, .size = size };
    c->nblocks++;
    *ret = pos;
    return 0;
}

void llep__arena_release(llep_client *c, uint64_t offset) {
    for (size_t i = 0; i < c->nblocks; i++)
        if (c->blocks[i].offset == offset) {
            memmove(&c->blocks[i], &c->blocks[i + 1],
                    (c->nblocks - i - 1) * sizeof(*c->blocks));
            c->nblocks--;
            return;
        }
}
