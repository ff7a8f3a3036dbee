/* The client's side of its shared-memory arena: setting it up (and growing it) with
 * ArenaSetup, and reserving tensor space in it, waiting for completions when it is full. The
 * block allocator itself is in client-blocks.c, below the progress loop that frees blocks. */
#include "client-internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "validate.h"

/* Asks llepd for an arena with tensor_bytes of tensor space and maps it in place of the old
 * one. Nothing may be in flight and no thread may be sleeping on the old eventfds. */
static int arena_setup(llep_client *c, uint64_t tensor_bytes) {
    LlepPb__ArenaSetup setup = LLEP_PB__ARENA_SETUP__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
    char err[LLEP_CLIENT_ERROR_MAX];
    llep_arena_geom geom;
    llep_arena a;
    int fds[LLEP_CONN_MAX_FDS];
    size_t nfds;
    int r;

    setup.tensor_bytes = tensor_bytes;
    req.body_case = LLEP_PB__FRAME__BODY_ARENA_SETUP;
    req.arena_setup = &setup;
    llep__conn_drop_fds(&c->conn);
    r = llep__client_request(c, &req, LLEP_PB__FRAME__BODY_ARENA_REPLY, &reply);
    if (r < 0) {
        llep__conn_drop_fds(&c->conn);
        return r;
    }
    nfds = llep__conn_take_fds(&c->conn, fds, LLEP_CONN_MAX_FDS);
    if (nfds != 3 || reply->arena_reply->fd_count != 3) {
        r = llep__client_fail(c, -EPROTO, "llepd's arena reply came with %zu descriptors, "
                              "not 3", nfds);
        goto out;
    }
    llep__arena_reply_get_geom(reply->arena_reply, &geom);
    r = llep__arena_map(fds[0], &geom, &a, err, sizeof(err));
    if (r < 0) {
        llep__client_fail(c, r, "llepd's arena is unusable: %s", err);
        goto out;
    }
    if (geom.tensor_size < tensor_bytes) {
        llep__arena_unmap(&a);
        r = llep__client_fail(c, -EPROTO, "llepd's arena has %" PRIu64 " bytes of tensor "
                              "space, %" PRIu64 " were asked for", geom.tensor_size,
                              tensor_bytes);
        goto out;
    }
    llep__arena_drop(c);
    c->arena = a;
    c->have_arena = true;
    c->sq_efd = fds[1];
    c->cq_efd = fds[2];
    fds[1] = fds[2] = -1;
    c->ring_limit = geom.sq_entries < geom.cq_entries ? geom.sq_entries : geom.cq_entries;

out:
    /* The mapping keeps the memfd's memory; the descriptor itself is not needed. */
    for (size_t i = 0; i < nfds; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    llep__frame_free(reply);
    return r;
}

/* Grows the arena to hold `size` bytes (and, for submissions, several more like it). */
static int arena_grow(llep_client *c, uint64_t size, bool submission) {
    uint64_t cur = c->have_arena ? c->arena.geom.tensor_size : 0;
    uint64_t want = size;
    int r;

    if (submission && size <= LLEP_ARENA_MAX_SIZE / 4)
        want = 4 * size;
    if (cur <= LLEP_ARENA_MAX_SIZE / 2 && want < 2 * cur)
        want = 2 * cur;
    if (want < LLEP_CLIENT_MIN_ARENA)
        want = LLEP_CLIENT_MIN_ARENA;
    if (want > LLEP_ARENA_MAX_SIZE / 2)
        want = size;
    r = arena_setup(c, want);
    /* The daemon may cap tensor space below what generosity asked for: ask for just enough. */
    if (r == -ENOMEM && want > size && !c->dead)
        r = arena_setup(c, size);
    return r;
}

int llep__arena_reserve(llep_client *c, uint64_t size, bool submission, uint64_t *ret_offset) {
    int r;

    size = llep__align_up(size ? size : 1, LLEP_CLIENT_ALIGN);
    if (size > LLEP_ARENA_MAX_SIZE)
        return llep__client_fail(c, -ENOMEM, "%" PRIu64 " bytes do not fit in an arena "
                                 "(at most %" PRIu64 ")", size, LLEP_ARENA_MAX_SIZE);
    for (;;) {
        bool fits_ever;

        if (c->dead)
            return llep__client_fail(c, c->dead, "the connection to llepd is lost%s%s",
                                     c->notice[0] ? ": " : "", c->notice);
        fits_ever = c->have_arena && size <= c->arena.geom.tensor_size;
        if (fits_ever && (!submission || c->in_flight < c->ring_limit)) {
            r = llep__arena_block_alloc(c, size, ret_offset);
            if (r != -ENOSPC)
                return r == -ENOMEM ? llep__client_fail(c, r, "out of memory") : r;
        }
        if (!fits_ever && c->in_flight == 0 && !c->poller) {
            r = arena_grow(c, size, submission);
            if (r < 0)
                return r;
            continue;
        }
        /* Wait for submissions to complete: they free room, or let the arena be replaced.
         * A sleeping poller with nothing in flight is woken so it leaves. */
        if (c->in_flight == 0 && c->poller)
            llep__eventfd_signal(c->wake_efd);
        r = llep__client_progress(c, -1);
        if (r < 0 && r != -EAGAIN)
            return llep__client_fail(c, r, "the connection to llepd is lost%s%s",
                                     c->notice[0] ? ": " : "", c->notice);
    }
}
