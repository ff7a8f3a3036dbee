/* Framing of control messages: 4-byte little-endian length + encoded LlepPb__Frame. */
#include "frame.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llep/types.h"
#include "errbuf.h"

/* The wire enums carry the client ABI's values, so converting is a cast. */
_Static_assert((int)LLEP_PB__DTYPE__DTYPE_F32 == LLEP_DTYPE_F32, "dtype");
_Static_assert((int)LLEP_PB__DTYPE__DTYPE_BF16 == LLEP_DTYPE_BF16, "dtype");
_Static_assert((int)LLEP_PB__ACTIVATION__ACT_SWIGLU == LLEP_ACT_SWIGLU, "act");
_Static_assert((int)LLEP_PB__ACTIVATION__ACT_SWIGLU_OAI == LLEP_ACT_SWIGLU_OAI, "act");
_Static_assert((int)LLEP_PB__POLICY__POLICY_AUTO == LLEP_POLICY_AUTO, "policy");
_Static_assert((int)LLEP_PB__POLICY__POLICY_EP == LLEP_POLICY_EP, "policy");
_Static_assert((int)LLEP_PB__POLICY__POLICY_LLEP == LLEP_POLICY_LLEP, "policy");
_Static_assert((int)LLEP_PB__SCOPE__SCOPE_NODE == LLEP_SCOPE_NODE, "scope");
_Static_assert((int)LLEP_PB__SCOPE__SCOPE_CLUSTER == LLEP_SCOPE_CLUSTER, "scope");
/* The length prefix is a uint32, so the limit must fit in one. */
_Static_assert(LLEP_FRAME_MAX_SIZE <= UINT32_MAX, "frame limit");

/* An emptied buffer larger than this is given back, so one big llepctl reply does not pin
 * megabytes for the rest of a connection. */
#define KEEP_BUFFER_SIZE (256u << 10)

static uint32_t read_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void write_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

void llep__frame_decoder_init(llep_frame_decoder *d, size_t max_size) {
    memset(d, 0, sizeof(*d));
    d->max_size = max_size && max_size < LLEP_FRAME_MAX_SIZE ? max_size : LLEP_FRAME_MAX_SIZE;
}

void llep__frame_decoder_fini(llep_frame_decoder *d) {
    free(d->buf);
    d->buf = NULL;
    d->start = d->len = d->cap = 0;
}

const char *llep__frame_decoder_error(const llep_frame_decoder *d) {
    return d->message;
}

size_t llep__frame_decoder_pending(const llep_frame_decoder *d) {
    return d->len - d->start;
}

/* Records an error for llep__frame_decoder_error(); sticky ones poison the decoder. */
static int decoder_fail(llep_frame_decoder *d, int r, bool sticky, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int decoder_fail(llep_frame_decoder *d, int r, bool sticky, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(d->message, sizeof(d->message), fmt, ap);
    va_end(ap);
    if (sticky)
        d->error = r;
    return r;
}

int llep__frame_decoder_feed(llep_frame_decoder *d, const void *data, size_t len) {
    size_t buffered, limit, need;

    if (d->error)
        return d->error;
    if (len == 0)
        return 0;

    buffered = d->len - d->start;
    limit = d->max_size + LLEP_FRAME_HEADER_SIZE + LLEP_FRAME_READ_MAX;
    if (buffered > limit || len > limit - buffered)
        return decoder_fail(d, -ENOBUFS, false,
                            "%zu bytes fed on top of %zu buffered exceed %zu: drain messages "
                            "between reads", len, buffered, limit);

    /* Move the partial frame to the front so the buffer never grows past one frame + read. */
    if (d->start > 0) {
        memmove(d->buf, d->buf + d->start, buffered);
        d->start = 0;
        d->len = buffered;
    }
    need = d->len + len;
    if (need > d->cap) {
        size_t cap = d->cap ? d->cap : 4096;
        uint8_t *buf;

        while (cap < need)
            cap *= 2;
        if (cap > limit)
            cap = limit;
        buf = realloc(d->buf, cap);
        if (!buf)
            return decoder_fail(d, -ENOMEM, true, "out of memory buffering %zu bytes", need);
        d->buf = buf;
        d->cap = cap;
    }
    memcpy(d->buf + d->len, data, len);
    d->len += len;
    return 0;
}

/* ---- strings with a NUL byte ------------------------------------------------------------ *
 *
 * protobuf-c decodes a string field into a NUL-terminated C string, so one whose bytes hold a
 * NUL arrives cut at it: "ab\0cd" would pass every later check as "ab" and name another
 * layer than the client sent. The string's wire length is seen only here, so the payload is
 * walked once more with the message's descriptors and any string field holding a NUL byte
 * refuses the frame. protobuf-c has unpacked it already, so the walk meets well-formed
 * fields only; it reads no more than the payload either way. */

/* Nested messages deeper than this are not walked (llep's go three deep). */
#define STRING_CHECK_DEPTH 16

static int wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *ret) {
    uint64_t v = 0;

    for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *ret = v;
            return 0;
        }
    }
    return -EBADMSG;
}

static int check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len,
                         int depth, char *err, size_t errlen) {
    const uint8_t *end = p + len;
    uint64_t tag, v;

    while (p < end) {
        if (wire_varint(&p, end, &tag) < 0)
            return -EBADMSG;
        switch (tag & 7) {
        case 0:
            if (wire_varint(&p, end, &v) < 0)
                return -EBADMSG;
            break;
        case 1:
        case 5: {
            size_t n = (tag & 7) == 1 ? 8 : 4;
            if ((size_t)(end - p) < n)
                return -EBADMSG;
            p += n;
            break;
        }
        case 2: {
            if (wire_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p))
                return -EBADMSG;
            const ProtobufCFieldDescriptor *fd =
                protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3));
            const uint8_t *nul = fd && fd->type == PROTOBUF_C_TYPE_STRING ?
                                 memchr(p, 0, (size_t)v) : NULL;
            if (nul)
                return llep__errf(err, errlen, -EBADMSG, "string field '%s' of %s has a NUL "
                                  "byte at offset %zu of its %" PRIu64 " bytes", fd->name,
                                  desc->short_name, (size_t)(nul - p), v);
            if (fd && fd->type == PROTOBUF_C_TYPE_MESSAGE && depth < STRING_CHECK_DEPTH) {
                int r = check_strings(fd->descriptor, p, (size_t)v, depth + 1, err, errlen);
                if (r < 0)
                    return r;
            }
            p += v;
            break;
        }
        default:
            return -EBADMSG;    /* groups: protobuf-c refuses them already */
        }
    }
    return 0;
}

/* Unpacks and checks a payload; err says why not (may be NULL). */
static int unpack(const void *payload, size_t len, LlepPb__Frame **ret, char *err,
                  size_t errlen) {
    LlepPb__Frame *f;

    if (len == 0)
        return llep__errf(err, errlen, -EBADMSG, "empty frame (length 0)");
    if (len > LLEP_FRAME_MAX_SIZE)
        return -EMSGSIZE;
    f = llep_pb__frame__unpack(NULL, len, payload);
    if (!f)
        return llep__errf(err, errlen, -EBADMSG, "undecodable frame of %zu bytes (not an "
                          "llep.Frame)", len);
    if (check_strings(&llep_pb__frame__descriptor, payload, len, 0, err, errlen) < 0) {
        llep_pb__frame__free_unpacked(f, NULL);
        return -EBADMSG;
    }
    *ret = f;
    return 0;
}

int llep__frame_unpack(const void *payload, size_t len, LlepPb__Frame **ret) {
    return unpack(payload, len, ret, NULL, 0);
}

int llep__frame_decoder_next(llep_frame_decoder *d, LlepPb__Frame **ret) {
    char why[sizeof(d->message)];
    size_t avail = d->len - d->start;
    const uint8_t *p;
    uint32_t n;
    int r;

    if (d->error)
        return d->error;
    if (avail < LLEP_FRAME_HEADER_SIZE)
        return 0;
    p = d->buf + d->start;

    /* Judge the length before waiting for the payload, so an oversized frame is refused
     * without buffering it. */
    n = read_le32(p);
    if (n > d->max_size)
        return decoder_fail(d, -EMSGSIZE, true,
                            "frame of %" PRIu32 " bytes is over the limit of %zu bytes",
                            n, d->max_size);
    if (avail - LLEP_FRAME_HEADER_SIZE < n)
        return 0;

    d->start += LLEP_FRAME_HEADER_SIZE + (size_t)n;
    r = unpack(p + LLEP_FRAME_HEADER_SIZE, n, ret, why, sizeof(why));
    r = r < 0 ? decoder_fail(d, -EBADMSG, false, "%s", why) : 1;

    if (d->start == d->len) {
        d->start = d->len = 0;
        if (d->cap > KEEP_BUFFER_SIZE)
            llep__frame_decoder_fini(d);
    }
    return r;
}

void llep__frame_free(LlepPb__Frame *f) {
    if (f)
        llep_pb__frame__free_unpacked(f, NULL);
}

size_t llep__frame_encoded_size(const LlepPb__Frame *f) {
    return LLEP_FRAME_HEADER_SIZE + llep_pb__frame__get_packed_size(f);
}

int llep__frame_encode(const LlepPb__Frame *f, void *buf, size_t buflen, size_t *ret_len) {
    size_t n = llep_pb__frame__get_packed_size(f);
    uint8_t *p = buf;

    if (n > LLEP_FRAME_MAX_SIZE)
        return -EMSGSIZE;
    if (buflen < LLEP_FRAME_HEADER_SIZE + n)
        return -ENOBUFS;
    write_le32(p, (uint32_t)n);
    llep_pb__frame__pack(f, p + LLEP_FRAME_HEADER_SIZE);
    *ret_len = LLEP_FRAME_HEADER_SIZE + n;
    return 0;
}

int llep__frame_encode_alloc(const LlepPb__Frame *f, uint8_t **ret_buf, size_t *ret_len) {
    size_t n = llep_pb__frame__get_packed_size(f), len;
    uint8_t *buf;
    int r;

    if (n > LLEP_FRAME_MAX_SIZE)
        return -EMSGSIZE;
    buf = malloc(LLEP_FRAME_HEADER_SIZE + n);
    if (!buf)
        return -ENOMEM;
    r = llep__frame_encode(f, buf, LLEP_FRAME_HEADER_SIZE + n, &len);
    if (r < 0) {
        free(buf);
        return r;
    }
    *ret_buf = buf;
    *ret_len = len;
    return 0;
}

const char *llep__frame_body_name(LlepPb__Frame__BodyCase body) {
    const ProtobufCFieldDescriptor *field;

    if (body == LLEP_PB__FRAME__BODY__NOT_SET)
        return "none";
    /* The generated descriptor knows every case, so there is no table here to keep in step
     * with proto/llep.proto. The id field is not a body. */
    field = protobuf_c_message_descriptor_get_field(&llep_pb__frame__descriptor, (unsigned)body);
    if (!field || field->id == 1)
        return "unknown";
    return field->name;
}

int llep__frame_check_hello(const LlepPb__Frame *f, char *err, size_t errlen) {
    uint32_t want = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;

    if (!f || f->body_case != LLEP_PB__FRAME__BODY_HELLO || !f->hello) {
        llep__errf(err, errlen, 0, "the first message must be hello, got %s",
                  f ? llep__frame_body_name(f->body_case) : "nothing");
        return -EPROTO;
    }
    if (f->hello->version != want) {
        llep__errf(err, errlen, 0, "protocol version mismatch: client speaks version %" PRIu32
                  ", llepd speaks version %" PRIu32, f->hello->version, want);
        return -EPROTONOSUPPORT;
    }
    return 0;
}

int llep__frame_check_hello_reply(const LlepPb__Frame *f, char *err, size_t errlen) {
    uint32_t want = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    const LlepPb__HelloReply *h;

    if (!f || f->body_case != LLEP_PB__FRAME__BODY_HELLO_REPLY || !f->hello_reply) {
        llep__errf(err, errlen, 0, "expected hello_reply from llepd, got %s",
                  f ? llep__frame_body_name(f->body_case) : "nothing");
        return -EPROTO;
    }
    h = f->hello_reply;
    if (h->status == LLEP_PB__STATUS__STATUS_VERSION_MISMATCH || h->version != want) {
        llep__errf(err, errlen, 0, "protocol version mismatch: llepd speaks version %" PRIu32
                  ", this client speaks version %" PRIu32, h->version, want);
        return -EPROTONOSUPPORT;
    }
    if (h->status != LLEP_PB__STATUS__STATUS_OK) {
        llep__errf(err, errlen, 0, "llepd refused the connection: %s",
                  h->message && h->message[0] ? h->message : "no reason given");
        return llep__status_to_errno(h->status);
    }
    return 0;
}

int llep__status_to_errno(LlepPb__Status status) {
    switch (status) {
    case LLEP_PB__STATUS__STATUS_OK: return 0;
    case LLEP_PB__STATUS__STATUS_INVALID: return -EINVAL;
    case LLEP_PB__STATUS__STATUS_NO_MEMORY: return -ENOMEM;
    case LLEP_PB__STATUS__STATUS_PROTOCOL: return -EPROTO;
    case LLEP_PB__STATUS__STATUS_VERSION_MISMATCH: return -EPROTONOSUPPORT;
    case LLEP_PB__STATUS__STATUS_NOT_FOUND: return -ENOENT;
    case LLEP_PB__STATUS__STATUS_EXISTS: return -EEXIST;
    case LLEP_PB__STATUS__STATUS_PERMISSION: return -EPERM;
    case LLEP_PB__STATUS__STATUS_TIMED_OUT: return -ETIMEDOUT;
    case LLEP_PB__STATUS__STATUS_SHUTTING_DOWN: return -ESHUTDOWN;
    case LLEP_PB__STATUS__STATUS_INTERNAL: return -EIO;
    case LLEP_PB__STATUS__STATUS_BUSY: return -EBUSY;
    default: return -EPROTO;  /* a status from a newer peer, or garbage */
    }
}

LlepPb__Status llep__status_from_errno(int err) {
    switch (err < 0 ? -err : err) {
    case 0: return LLEP_PB__STATUS__STATUS_OK;
    case EINVAL: case ERANGE: case E2BIG: case EOVERFLOW: case EDOM:
        return LLEP_PB__STATUS__STATUS_INVALID;
    case ENOMEM: case ENOBUFS: case ENOSPC:
        return LLEP_PB__STATUS__STATUS_NO_MEMORY;
    case EPROTO: case EBADMSG: case EMSGSIZE:
        return LLEP_PB__STATUS__STATUS_PROTOCOL;
    case EPROTONOSUPPORT: return LLEP_PB__STATUS__STATUS_VERSION_MISMATCH;
    case ENOENT: return LLEP_PB__STATUS__STATUS_NOT_FOUND;
    case EEXIST: return LLEP_PB__STATUS__STATUS_EXISTS;
    case EPERM: case EACCES: return LLEP_PB__STATUS__STATUS_PERMISSION;
    case ETIMEDOUT: return LLEP_PB__STATUS__STATUS_TIMED_OUT;
    case ESHUTDOWN: return LLEP_PB__STATUS__STATUS_SHUTTING_DOWN;
    case EBUSY: return LLEP_PB__STATUS__STATUS_BUSY;
    default: return LLEP_PB__STATUS__STATUS_INTERNAL;
    }
}

int llep__frame_check_model_name(const char *name, char *err, size_t errlen) {
    int r = llep__frame_check_name(name, err, errlen);

    if (r < 0)
        return r;
    if (strlen(name) > LLEP_MODEL_NAME_MAX)
        return llep__errf(err, errlen, -EINVAL, "model name longer than %u bytes",
                          LLEP_MODEL_NAME_MAX);
    if (strchr(name, '/'))
        return llep__errf(err, errlen, -EINVAL, "model name '%s' has a '/': its layers are "
                          "named MODEL/INDEX", name);
    return 0;
}

int llep__frame_check_name(const char *name, char *err, size_t errlen) {
    size_t len;

    if (!name || !name[0]) {
        llep__errf(err, errlen, 0, "empty layer name");
        return -EINVAL;
    }
    len = strnlen(name, LLEP_NAME_MAX + 1);
    if (len > LLEP_NAME_MAX) {
        llep__errf(err, errlen, 0, "layer name longer than %u bytes", LLEP_NAME_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];

        if (c <= 0x20 || c >= 0x7f) {
            llep__errf(err, errlen, 0, "layer name has byte 0x%02x at offset %zu: only printable ASCII "
                      "without blanks is allowed", c, i);
            return -EINVAL;
        }
    }
    return 0;
}
