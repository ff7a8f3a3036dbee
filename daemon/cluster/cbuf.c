/* Reassembly of ClusterData chunks (cbuf.h). */
#include "cbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int llepd_cbuf_add(llepd_cbuf *b, const LlepPb__ClusterData *d, uint64_t max_total, char *err,
                   size_t errlen) {
    if (!b->started) {
        if (d->total > max_total || d->offset != 0) {
            snprintf(err, errlen, "a buffer of %" PRIu64 " bytes starting at %" PRIu64
                     " cannot be taken", d->total, d->offset);
            return -EPROTO;
        }
        b->data = malloc(d->total ? d->total : 1);
        if (!b->data) {
            snprintf(err, errlen, "out of memory for %" PRIu64 " bytes", d->total);
            return -ENOMEM;
        }
        b->total = d->total;
        b->got = 0;
        b->started = true;
    }
    /* A link delivers a buffer's chunks in order, so each must start where the last ended. */
    if (d->total != b->total || d->offset != b->got || d->data.len > b->total - b->got) {
        snprintf(err, errlen, "chunk at %" PRIu64 " (+%zu of %" PRIu64 ") does not follow %"
                 PRIu64 " of %" PRIu64 " bytes", d->offset, d->data.len, d->total, b->got,
                 b->total);
        return -EPROTO;
    }
    if (d->data.len)
        memcpy(b->data + b->got, d->data.data, d->data.len);
    b->got += d->data.len;
    return b->got == b->total ? 1 : 0;
}

void llepd_cbuf_free(llepd_cbuf *b) {
    free(b->data);
    memset(b, 0, sizeof(*b));
}
