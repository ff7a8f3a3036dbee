/* Framing of control messages on the llepd unix socket (DESIGN.md section 3).
 *
 * A frame is a 4-byte little-endian length followed by that many bytes of a protobuf-c
 * encoded LlepPb__Frame (proto/llep.proto). llepd, libllep-client and llepctl all use this file,
 * so the three cannot disagree about the wire format.
 *
 * The decoder reads bytes in whatever pieces the socket delivers them (a libuv read callback
 * may hand over half a length word, or three frames at once) and returns whole messages. It
 * never trusts the peer: an advertised length over the limit is refused before any memory is
 * reserved for it, and a payload protobuf-c cannot unpack is reported, not passed on. */
#ifndef LLEP_FRAME_H
#define LLEP_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "llep.pb-c.h"

/* Bytes of the length prefix. */
#define LLEP_FRAME_HEADER_SIZE 4u

/* Largest encoded Frame (without the prefix) either side sends or accepts. Control messages
 * are small; the largest are llepctl replies listing every expert, which stay well under this
 * even at LLEP_MAX_EXPERTS. Tensors never travel on the socket. */
#define LLEP_FRAME_MAX_SIZE (4u << 20)

/* How much a caller may feed at once beyond one partial frame; the daemon's read buffers are
 * no larger (libuv's suggested size is 64 KiB). */
#define LLEP_FRAME_READ_MAX (64u << 10)

typedef struct llep_frame_decoder {
    uint8_t *buf;     /* bytes received and not yet returned as messages */
    size_t start;     /* first unconsumed byte of buf */
    size_t len;       /* end of the received bytes in buf */
    size_t cap;
    size_t max_size;  /* largest payload accepted */
    int error;        /* sticky: once the stream is unusable, every call returns it */
    char message[160];
} llep_frame_decoder;

/* Prepares a decoder for payloads of at most max_size bytes (0: LLEP_FRAME_MAX_SIZE). */
void llep__frame_decoder_init(llep_frame_decoder *d, size_t max_size);

/* Frees the decoder's buffer; the decoder can be initialised again afterwards. */
void llep__frame_decoder_fini(llep_frame_decoder *d);

/* Appends received bytes. Call llep__frame_decoder_next() until it returns 0 after each feed,
 * so at most one partial frame plus one read stays buffered. Returns 0, -ENOMEM, -ENOBUFS when
 * the caller fed more than LLEP_FRAME_READ_MAX beyond a partial frame without draining, or the
 * sticky error of an earlier call. */
int llep__frame_decoder_feed(llep_frame_decoder *d, const void *data, size_t len);

/* Takes the next complete message. Returns 1 and a message in *ret (free it with
 * llep__frame_free()), 0 when more bytes are needed, or a negative errno with a description in
 * llep__frame_decoder_error():
 *   -EMSGSIZE  the advertised length is over the limit. The stream cannot be resynchronised,
 *              so this error is sticky: reply with an error and close the connection.
 *   -EBADMSG   a zero-length frame, one protobuf-c cannot unpack (garbage, truncated
 *              fields, bad wire types), or one with a NUL byte inside a string field (which
 *              protobuf-c would cut there). The frame has been consumed and the decoder stays
 *              usable; whether to go on serving such a peer is the caller's choice.
 *   -ENOMEM    out of memory (sticky). */
int llep__frame_decoder_next(llep_frame_decoder *d, LlepPb__Frame **ret);

/* Description of the last error ("" when there was none). */
const char *llep__frame_decoder_error(const llep_frame_decoder *d);

/* Bytes buffered and not yet returned (a peer that closes with this non-zero sent a partial
 * frame). */
size_t llep__frame_decoder_pending(const llep_frame_decoder *d);

/* Frees a message from llep__frame_decoder_next() or llep__frame_unpack(); NULL is fine. */
void llep__frame_free(LlepPb__Frame *f);

/* Unpacks one payload (no length prefix). Returns 0, -EMSGSIZE over LLEP_FRAME_MAX_SIZE, or
 * -EBADMSG for an empty or undecodable payload or a string field holding a NUL byte. */
int llep__frame_unpack(const void *payload, size_t len, LlepPb__Frame **ret);

/* Size of f once framed: prefix plus payload. */
size_t llep__frame_encoded_size(const LlepPb__Frame *f);

/* Writes f, framed, into buf. Returns 0 and the byte count in *ret_len, -EMSGSIZE when the
 * payload is over LLEP_FRAME_MAX_SIZE (nothing is written), or -ENOBUFS when buf is smaller
 * than llep__frame_encoded_size(f). */
int llep__frame_encode(const LlepPb__Frame *f, void *buf, size_t buflen, size_t *ret_len);

/* Like llep__frame_encode() into a new malloc()ed buffer (free() it). -ENOMEM when that
 * fails. */
int llep__frame_encode_alloc(const LlepPb__Frame *f, uint8_t **ret_buf, size_t *ret_len);

/* Checks the first frame of a connection: it must be a Hello (else -EPROTO) with our
 * PROTOCOL_VERSION (else -EPROTONOSUPPORT). err gets a sentence for the reply, naming both
 * versions on a mismatch. */
int llep__frame_check_hello(const LlepPb__Frame *f, char *err, size_t errlen);

/* Same check for the HelloReply a client gets back: its status, then its version. Returns 0,
 * -EPROTO when f is not a HelloReply, -EPROTONOSUPPORT on a version mismatch, or the status
 * mapped to an errno. */
int llep__frame_check_hello_reply(const LlepPb__Frame *f, char *err, size_t errlen);

/* Name of the body case ("hello", "plan_reply", ...), "none" when unset, "unknown" for a
 * value this build does not know. For logs and error replies. */
const char *llep__frame_body_name(LlepPb__Frame__BodyCase body);

/* Status codes to and from the negative errno values of the client API. Errnos without a
 * status of their own become STATUS_INTERNAL; an unknown status becomes -EPROTO. */
int llep__status_to_errno(LlepPb__Status status);
LlepPb__Status llep__status_from_errno(int err);

/* Checks a layer name from the wire: 1 to LLEP_NAME_MAX bytes of printable ASCII without
 * blanks, so names can be logged and shown by llepctl as they are. Returns 0 or -EINVAL. */
#define LLEP_NAME_MAX 128u
int llep__frame_check_name(const char *name, char *err, size_t errlen);

/* A model name: a layer name of at most LLEP_MODEL_NAME_MAX bytes without '/', since model
 * NAME's layers are named NAME/0, NAME/1, ... Returns 0 or -EINVAL. */
#define LLEP_MODEL_NAME_MAX 64u
int llep__frame_check_model_name(const char *name, char *err, size_t errlen);

#endif
