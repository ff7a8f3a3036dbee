/* Fuzz target: an arena as a hostile peer could hand it over. The input becomes the contents
 * of a sealed memfd, which llep__arena_map() must refuse or map safely; a mapped arena's rings
 * are then drained both ways and every submission checked, as llepd would. Inputs shorter than
 * a header get a valid header built from their first bytes, so the ring and submission code
 * is reached too, not only the header checks. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ring.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Writes the bytes of the arena: either the input as it is, or a canonical small arena with
 * the input poured over its rings and tensor space. */
static int make_fd(const uint8_t *data, size_t size) {
    int fd = memfd_create("fuzz-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    llep_arena_geom g;
    uint8_t *buf = NULL;
    size_t len = size;

    if (fd < 0)
        return -1;
    if (size > 0 && (data[0] & 1)) {
        /* Canonical header, rings of 1..8 slots, input bytes after the header. */
        if (llep__arena_layout(4096, 1u << (data[0] >> 1 & 3), 1u << (data[0] >> 3 & 3), &g) < 0)
            abort();
        len = g.arena_size;
        buf = calloc(1, len);
        if (!buf)
            abort();
        *(llep_arena_header *)buf = (llep_arena_header){
            .magic = LLEP_ARENA_MAGIC, .version = LLEP_RING_VERSION,
            .header_size = sizeof(llep_arena_header), .arena_size = g.arena_size,
            .sq_offset = g.sq_offset, .cq_offset = g.cq_offset,
            .tensor_offset = g.tensor_offset, .tensor_size = g.tensor_size,
            .sq_entries = g.sq_entries, .cq_entries = g.cq_entries,
            .sqe_size = sizeof(llep_sqe), .cqe_size = sizeof(llep_cqe),
        };
        /* Spread the input over the ring control blocks and slots. */
        for (size_t i = 1; i < size; i++)
            buf[g.sq_offset + (i - 1) % (len - g.sq_offset)] = data[i];
    }
    if (ftruncate(fd, (off_t)len) < 0 ||
        (len && pwrite(fd, buf ? buf : data, len, 0) != (ssize_t)len) ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
        free(buf);
        close(fd);
        return -1;
    }
    free(buf);
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const llep_sqe_shape shapes[2] = { { 2, 16, 4, 0 }, { 8, 7, 2, 4096 } }; /* the second with a space */
    char err[512];
    llep_arena a;
    llep_sqe e;
    llep_cqe c;
    int fd = make_fd(data, size), r;

    if (fd < 0)
        return 0;
    r = llep__arena_map(fd, NULL, &a, err, sizeof(err));
    close(fd);
    if (r < 0) {
        if (!err[0])
            abort();
        return 0;
    }
    /* More pops than slots: a corrupt ring must stop with -EPROTO or run dry, never loop. */
    for (uint32_t i = 0; i <= a.geom.sq_entries; i++) {
        r = llep__sq_pop(&a, &e);
        if (r < 0)
            break;
        for (int s = 0; s < 2; s++)
            if (llep__sqe_check(&a, &e, &shapes[s], err, sizeof(err)) == 0) {
                /* Accepted spans really are inside the mapping. */
                volatile uint8_t *x = llep__arena_ptr(&a, e.x_offset);
                uint64_t xb = (uint64_t)e.tokens * shapes[s].hidden * shapes[s].elem_size;

                if (xb)
                    (void)x[xb - 1];
            }
    }
    for (uint32_t i = 0; i <= a.geom.cq_entries; i++)
        if (llep__cq_pop(&a, &c) < 0)
            break;
    (void)llep__ring_pending(&a.sq);
    c = (llep_cqe){ .tag = 1 };
    for (uint32_t i = 0; i <= a.geom.cq_entries; i++)
        if (llep__cq_push(&a, &c) < 0)
            break;
    llep__arena_unmap(&a);
    return 0;
}
