/* Fuzz target: the frame decoder and protobuf-c unpacking of everything a peer can send.
 *
 * Input: one control byte, then a byte stream as it might arrive on the socket. The control
 * byte picks the piece size the stream is fed in (1..64 bytes, or all at once) and a small or
 * the default frame limit, so both splitting and the limit are exercised. Every message that
 * decodes is encoded again and must survive a second round trip byte for byte; crashes,
 * sanitizer reports, leaks and round-trip differences are bugs. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An arena for LayerCreate checks, made once per process and kept (still reachable, so not a
 * leak) because a memfd per input would dominate the run time. */
static const llep_arena *fuzz_arena(void) {
    static llep_arena a;
    static int made;
    llep_arena_geom g;

    if (!made) {
        if (llep__arena_layout(1 << 16, 4, 4, &g) < 0 || llep__arena_create(&g, &a) < 0)
            abort();
        made = 1;
    }
    return &a;
}

/* The checks llepd runs on a request before acting on it. */
static void validate(const LlepPb__Frame *f) {
    char err[256], shape[128];
    llep_arena_geom g;

    switch (f->body_case) {
    case LLEP_PB__FRAME__BODY_LAYER_CREATE:
        if (llep__layer_create_check(f->layer_create, fuzz_arena(), err, sizeof(err)) < 0 &&
            !err[0])
            abort();
        llep__layer_desc_format_shape(f->layer_create->desc, shape, sizeof(shape));
        break;
    case LLEP_PB__FRAME__BODY_LAYER_ATTACH:
        if (llep__layer_attach_check(f->layer_attach, err, sizeof(err)) == 0 &&
            f->layer_attach->desc)
            (void)llep__layer_desc_same_shape(f->layer_attach->desc, f->layer_attach->desc);
        break;
    case LLEP_PB__FRAME__BODY_LAYER_CREATE_REPLY:
    case LLEP_PB__FRAME__BODY_LAYER_ATTACH_REPLY:
        (void)llep__layer_desc_check(f->layer_create_reply->desc, err, sizeof(err));
        break;
    case LLEP_PB__FRAME__BODY_ARENA_SETUP:
        (void)llep__arena_setup_check(f->arena_setup, UINT64_C(1) << 40, &g, err, sizeof(err));
        break;
    case LLEP_PB__FRAME__BODY_ARENA_REPLY:
        llep__arena_reply_get_geom(f->arena_reply, &g);
        break;
    default:
        break;
    }
}

/* Whatever a handler would do with a decoded frame, minus side effects. */
static void inspect(const LlepPb__Frame *f) {
    char err[256];
    uint8_t *a = NULL, *b = NULL;
    size_t alen, blen;
    LlepPb__Frame *again = NULL;

    (void)llep__frame_body_name(f->body_case);
    (void)llep__frame_check_hello(f, err, sizeof(err));
    (void)llep__frame_check_hello_reply(f, err, sizeof(err));
    validate(f);
    if (f->body_case == LLEP_PB__FRAME__BODY_SUBMISSION_ERROR)
        (void)llep__status_to_errno(f->submission_error->status);

    /* encode(decode(x)) must decode to something that encodes the same again. */
    if (llep__frame_encode_alloc(f, &a, &alen) < 0)
        return;   /* unknown fields can push a re-encoding over the limit */
    if (llep__frame_unpack(a + LLEP_FRAME_HEADER_SIZE, alen - LLEP_FRAME_HEADER_SIZE,
                           &again) < 0) {
        /* Not every decodable input re-encodes to something decodable: an empty Frame encodes
         * to zero bytes, which the wire does not allow, and protobuf-c keeps an unknown field
         * numbered 0 when its tag is a padded varint but re-encodes it as the one-byte tag it
         * then rejects. Neither matters to llep, which never forwards frames it received. */
        free(a);
        return;
    }
    if (llep__frame_encode_alloc(again, &b, &blen) < 0 || alen != blen || memcmp(a, b, alen))
        abort();
    free(a);
    free(b);
    llep__frame_free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    llep_frame_decoder d;
    LlepPb__Frame *f;
    size_t piece, off = 0;
    int r = 0;

    if (size < 1)
        return 0;
    piece = data[0] & 0x3f;   /* 0: everything at once */
    llep__frame_decoder_init(&d, data[0] & 0x40 ? 64 : 0);
    data++;
    size--;

    while (off < size && r != -EMSGSIZE && r != -ENOMEM) {
        size_t n = piece && piece < size - off ? piece : size - off;

        if (llep__frame_decoder_feed(&d, data + off, n) < 0)
            break;
        off += n;
        while ((r = llep__frame_decoder_next(&d, &f)) != 0) {
            if (r == 1) {
                inspect(f);
                llep__frame_free(f);
            } else if (r != -EBADMSG) {
                break;   /* sticky: the stream is over */
            } else if (llep__frame_decoder_error(&d)[0] == '\0') {
                abort();  /* every error must say what it was */
            }
        }
    }
    (void)llep__frame_decoder_pending(&d);
    llep__frame_decoder_fini(&d);

    /* The same bytes as one bare payload, as llep__frame_unpack() sees them. */
    if (llep__frame_unpack(data, size, &f) == 0) {
        inspect(f);
        llep__frame_free(f);
    }
    return 0;
}
