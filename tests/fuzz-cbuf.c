/* Fuzz target: what a peer's ClusterData chunks do to the reassembly of a buffer (cbuf.c).
 *
 * Input: a byte stream of frames as it might arrive on a peer link. Every frame that decodes
 * and carries ClusterData goes into one buffer (capped at 1 MiB, as a share's exact size caps
 * a real one); a failed chunk starts a new buffer, as a failed step does. The buffer must never
 * claim more bytes than it holds, complete exactly when it is full, and hold the bytes of the
 * chunks it accepted; crashes, sanitizer reports and leaks are bugs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cbuf.h"
#include "frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void feed(llepd_cbuf *b, const LlepPb__ClusterData *d) {
    char err[256];
    uint64_t got = b->got;
    int r = llepd_cbuf_add(b, d, 1u << 20, err, sizeof(err));

    if (r < 0) {
        if (!err[0])
            abort(); /* every refusal names its reason */
        llepd_cbuf_free(b);
        return;
    }
    if (b->got > b->total || (r == 1) != (b->got == b->total))
        abort();
    if (d->data.len && memcmp(b->data + got, d->data.data, d->data.len) != 0)
        abort();
    if (r == 1)
        llepd_cbuf_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    llep_frame_decoder dec;
    llepd_cbuf b = { 0 };
    LlepPb__Frame *f;

    llep__frame_decoder_init(&dec, 0);
    if (llep__frame_decoder_feed(&dec, data, size) >= 0) {
        while (llep__frame_decoder_next(&dec, &f) > 0) {
            if (f->body_case == LLEP_PB__FRAME__BODY_CLUSTER_DATA)
                feed(&b, f->cluster_data);
            llep__frame_free(f);
        }
    }
    llepd_cbuf_free(&b);
    llep__frame_decoder_fini(&dec);
    return 0;
}
