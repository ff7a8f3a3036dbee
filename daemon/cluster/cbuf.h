/* A buffer another node sends as ClusterData chunks (cluster-layer.h), reassembled here. Pure
 * bookkeeping on what a peer sends: no I/O, so the fuzz target (tests/fuzz-cbuf.c) runs it
 * on arbitrary frames. */
#ifndef LLEPD_CBUF_H
#define LLEPD_CBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llep.pb-c.h"

typedef struct llepd_cbuf {
    uint8_t *data;
    uint64_t total, got;
    bool started;
} llepd_cbuf;

/* Adds one chunk to b: the first fixes the total (at most max_total bytes) and must start at
 * offset 0; each next one must carry the same total and start where the last ended (a link
 * delivers a buffer's chunks in order). Returns 1 when b is complete, 0 when more is to come,
 * or -EPROTO / -ENOMEM with a sentence in err (then b is of no more use: free it). */
int llepd_cbuf_add(llepd_cbuf *b, const LlepPb__ClusterData *d, uint64_t max_total, char *err,
                   size_t errlen);
void llepd_cbuf_free(llepd_cbuf *b);

#endif
