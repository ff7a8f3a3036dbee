/* Framing codec: round trips, arbitrary splits, oversize, garbage, the protocol version; and
 * the checks of decoded messages (validate.c). */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "frame.h"
#include "validate.h"

/* Encodes f into a new buffer, failing the test on error. */
static uint8_t *encode(const LlepPb__Frame *f, size_t *ret_len) {
    uint8_t *buf = NULL;

    ck_assert_int_eq(llep__frame_encode_alloc(f, &buf, ret_len), 0);
    ck_assert_uint_eq(*ret_len, llep__frame_encoded_size(f));
    return buf;
}

static void make_hello(LlepPb__Frame *f, LlepPb__Hello *h, uint64_t id, uint32_t version) {
    llep_pb__frame__init(f);
    llep_pb__hello__init(h);
    h->version = version;
    h->program = (char *)"test-frame";
    h->kind = LLEP_PB__PEER_KIND__PEER_KIND_CLIENT;
    f->id = id;
    f->body_case = LLEP_PB__FRAME__BODY_HELLO;
    f->hello = h;
}

/* A raw frame: prefix n, then the given payload bytes. */
static size_t raw_frame(uint8_t *buf, uint32_t n, const void *payload, size_t len) {
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = (uint8_t)(n >> 16);
    buf[3] = (uint8_t)(n >> 24);
    if (len)
        memcpy(buf + 4, payload, len);
    return 4 + len;
}

START_TEST(test_round_trip_hello) {
    llep_frame_decoder d;
    LlepPb__Frame f, *out = NULL;
    LlepPb__Hello h;
    size_t len;
    uint8_t *buf;

    make_hello(&f, &h, 7, LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION);
    buf = encode(&f, &len);
    /* The prefix is little-endian, whatever the host. */
    ck_assert_uint_eq(buf[0] | buf[1] << 8 | buf[2] << 16 | (uint32_t)buf[3] << 24, len - 4);

    llep__frame_decoder_init(&d, 0);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, len), 0);
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), 1);
    ck_assert_uint_eq(out->id, 7);
    ck_assert_int_eq(out->body_case, LLEP_PB__FRAME__BODY_HELLO);
    ck_assert_uint_eq(out->hello->version, 1);
    ck_assert_str_eq(out->hello->program, "test-frame");
    ck_assert_int_eq(out->hello->kind, LLEP_PB__PEER_KIND__PEER_KIND_CLIENT);
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), 0);
    ck_assert_uint_eq(llep__frame_decoder_pending(&d), 0);
    llep__frame_free(out);
    llep__frame_decoder_fini(&d);
    free(buf);
}
END_TEST

/* The biggest messages: a layer with weights and biases, and a plan reply. */
START_TEST(test_round_trip_nested) {
    LlepPb__Frame f, *out = NULL;
    LlepPb__LayerCreate lc;
    LlepPb__LayerDesc desc;
    LlepPb__TensorRef w[4];
    uint8_t *buf;
    size_t len;

    llep_pb__frame__init(&f);
    llep_pb__layer_create__init(&lc);
    llep_pb__layer_desc__init(&desc);
    for (int i = 0; i < 4; i++) {
        llep_pb__tensor_ref__init(&w[i]);
        w[i].offset = 4096u * (uint64_t)(i + 1);
        w[i].bytes = UINT64_C(1) << (33 + i);
    }
    desc.num_experts = 128;
    desc.top_k = 4;
    desc.hidden = 2880;
    desc.inter = 2880;
    desc.dtype = LLEP_PB__DTYPE__DTYPE_BF16;
    desc.act = LLEP_PB__ACTIVATION__ACT_SWIGLU_OAI;
    desc.act_alpha = 1.702f;
    desc.act_limit = 7.0f;
    desc.policy = LLEP_PB__POLICY__POLICY_LLEP;
    desc.alpha = 1.0f;
    desc.lambda = 1.3f;
    desc.min_tokens = 1024;
    desc.group = 8;
    desc.scope = LLEP_PB__SCOPE__SCOPE_CLUSTER;
    desc.group_timeout_ms = 5000;
    lc.name = (char *)"gpt-oss.layer3";
    lc.desc = &desc;
    lc.w_gate = &w[0];
    lc.w_up = &w[1];
    lc.w_down = &w[2];
    lc.b_down = &w[3];
    f.id = UINT64_MAX;
    f.body_case = LLEP_PB__FRAME__BODY_LAYER_CREATE;
    f.layer_create = &lc;

    buf = encode(&f, &len);
    ck_assert_int_eq(llep__frame_unpack(buf + 4, len - 4, &out), 0);
    ck_assert_uint_eq(out->id, UINT64_MAX);
    ck_assert_int_eq(out->body_case, LLEP_PB__FRAME__BODY_LAYER_CREATE);
    ck_assert_str_eq(out->layer_create->name, "gpt-oss.layer3");
    ck_assert_uint_eq(out->layer_create->desc->hidden, 2880);
    ck_assert_int_eq(out->layer_create->desc->scope, LLEP_PB__SCOPE__SCOPE_CLUSTER);
    ck_assert(out->layer_create->desc->act_alpha == 1.702f);
    ck_assert_uint_eq(out->layer_create->desc->group_timeout_ms, 5000);
    ck_assert_uint_eq(out->layer_create->w_down->bytes, UINT64_C(1) << 35);
    /* Absent biases stay absent: that is how "no bias" travels. */
    ck_assert_ptr_null(out->layer_create->b_gate);
    ck_assert_ptr_null(out->layer_create->b_up);
    ck_assert_ptr_nonnull(out->layer_create->b_down);
    llep__frame_free(out);
    free(buf);
}
END_TEST

START_TEST(test_round_trip_plan_reply) {
    LlepPb__Frame f, *out = NULL;
    LlepPb__PlanReply pr;
    LlepPb__Plan plan;
    LlepPb__PlanRange r[3], *rp[3];
    uint64_t loads[2] = { 300, 200 };
    uint8_t *buf;
    size_t len;

    llep_pb__frame__init(&f);
    llep_pb__plan_reply__init(&pr);
    llep_pb__plan__init(&plan);
    for (int i = 0; i < 3; i++) {
        llep_pb__plan_range__init(&r[i]);
        r[i].expert = (uint32_t)i;
        r[i].device = (uint32_t)i % 2;
        r[i].end = 100;
        rp[i] = &r[i];
    }
    plan.mode = LLEP_PB__PLAN_MODE__PLAN_MODE_LLEP;
    plan.imbalance = 3.91;
    plan.capacity = 250;
    plan.devices = 2;
    plan.n_device_loads = 2;
    plan.device_loads = loads;
    plan.n_assignments = 3;
    plan.assignments = rp;
    pr.status = LLEP_PB__STATUS__STATUS_OK;
    pr.layer = (char *)"moe";
    pr.step = 42;
    pr.plan = &plan;
    f.id = 3;
    f.body_case = LLEP_PB__FRAME__BODY_PLAN_REPLY;
    f.plan_reply = &pr;

    buf = encode(&f, &len);
    ck_assert_int_eq(llep__frame_unpack(buf + 4, len - 4, &out), 0);
    ck_assert_int_eq(out->body_case, LLEP_PB__FRAME__BODY_PLAN_REPLY);
    ck_assert_uint_eq(out->plan_reply->step, 42);
    ck_assert_uint_eq(out->plan_reply->plan->n_assignments, 3);
    ck_assert_uint_eq(out->plan_reply->plan->assignments[2]->expert, 2);
    ck_assert_uint_eq(out->plan_reply->plan->device_loads[1], 200);
    ck_assert(out->plan_reply->plan->imbalance == 3.91);
    llep__frame_free(out);
    free(buf);
}
END_TEST

/* Three frames fed one byte at a time come out whole, each as soon as its last byte is in. */
START_TEST(test_split_byte_by_byte) {
    LlepPb__Frame f[3];
    LlepPb__Hello h[3];
    uint8_t *bufs[3], *all;
    size_t lens[3], total = 0, off = 0, got = 0;
    llep_frame_decoder d;

    for (int i = 0; i < 3; i++) {
        make_hello(&f[i], &h[i], (uint64_t)i + 1, 1);
        bufs[i] = encode(&f[i], &lens[i]);
        total += lens[i];
    }
    all = malloc(total);
    for (int i = 0; i < 3; i++) {
        memcpy(all + off, bufs[i], lens[i]);
        off += lens[i];
        free(bufs[i]);
    }

    llep__frame_decoder_init(&d, 0);
    off = 0;
    for (size_t i = 0; i < total; i++) {
        LlepPb__Frame *out = NULL;
        int r;

        ck_assert_int_eq(llep__frame_decoder_feed(&d, all + i, 1), 0);
        r = llep__frame_decoder_next(&d, &out);
        ck_assert_int_ge(r, 0);
        if (r == 1) {
            off += lens[got];
            ck_assert_uint_eq(i + 1, off);  /* exactly at the frame's last byte */
            ck_assert_uint_eq(out->id, got + 1);
            got++;
            llep__frame_free(out);
        }
    }
    ck_assert_uint_eq(got, 3);
    ck_assert_uint_eq(llep__frame_decoder_pending(&d), 0);
    llep__frame_decoder_fini(&d);
    free(all);
}
END_TEST

/* Every split of two frames into two feeds decodes the same two frames. */
START_TEST(test_split_everywhere) {
    LlepPb__Frame f[2];
    LlepPb__Hello h[2];
    uint8_t buf[256];
    size_t len0, len1;

    make_hello(&f[0], &h[0], 1, 1);
    make_hello(&f[1], &h[1], 2, 1);
    ck_assert_int_eq(llep__frame_encode(&f[0], buf, sizeof(buf), &len0), 0);
    ck_assert_int_eq(llep__frame_encode(&f[1], buf + len0, sizeof(buf) - len0, &len1), 0);
    for (size_t cut = 0; cut <= len0 + len1; cut++) {
        llep_frame_decoder d;
        LlepPb__Frame *out;
        uint64_t next_id = 1;
        int r;

        llep__frame_decoder_init(&d, 0);
        ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, cut), 0);
        while ((r = llep__frame_decoder_next(&d, &out)) == 1) {
            ck_assert_uint_eq(out->id, next_id++);
            llep__frame_free(out);
        }
        ck_assert_int_eq(r, 0);
        ck_assert_int_eq(llep__frame_decoder_feed(&d, buf + cut, len0 + len1 - cut), 0);
        while ((r = llep__frame_decoder_next(&d, &out)) == 1) {
            ck_assert_uint_eq(out->id, next_id++);
            llep__frame_free(out);
        }
        ck_assert_int_eq(r, 0);
        ck_assert_uint_eq(next_id, 3);
        llep__frame_decoder_fini(&d);
    }
}
END_TEST

/* An oversized length is refused as soon as the prefix is in, before any payload, and the
 * decoder stays refused since the stream cannot be resynchronised. */
START_TEST(test_oversize) {
    llep_frame_decoder d;
    LlepPb__Frame *out = NULL;
    uint8_t buf[8];

    llep__frame_decoder_init(&d, 0);
    raw_frame(buf, LLEP_FRAME_MAX_SIZE + 1, NULL, 0);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, 4), 0);
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), -EMSGSIZE);
    ck_assert_ptr_nonnull(strstr(llep__frame_decoder_error(&d), "over the limit"));
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), -EMSGSIZE);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, 4), -EMSGSIZE);
    ck_assert_ptr_null(out);
    llep__frame_decoder_fini(&d);

    /* 0xffffffff too, and a decoder with a smaller limit. */
    llep__frame_decoder_init(&d, 0);
    memset(buf, 0xff, 4);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, 4), 0);
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), -EMSGSIZE);
    llep__frame_decoder_fini(&d);

    llep__frame_decoder_init(&d, 16);
    raw_frame(buf, 17, NULL, 0);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, 4), 0);
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), -EMSGSIZE);
    llep__frame_decoder_fini(&d);
}
END_TEST

/* A frame exactly at the limit is fine; one byte more is refused by the encoder, which
 * writes nothing. */
START_TEST(test_encode_limits) {
    LlepPb__Frame f, *out = NULL;
    LlepPb__Hello h;
    llep_frame_decoder d;
    uint8_t small[8], *buf;
    size_t len, n, overhead;
    char *program;
    int r;

    make_hello(&f, &h, 1, 1);
    ck_assert_int_eq(llep__frame_encode(&f, small, sizeof(small), &len), -ENOBUFS);

    /* Find the program length that makes the payload exactly LLEP_FRAME_MAX_SIZE. */
    program = malloc(LLEP_FRAME_MAX_SIZE + 2);
    memset(program, 'a', LLEP_FRAME_MAX_SIZE + 1);
    program[LLEP_FRAME_MAX_SIZE + 1] = '\0';
    h.program = program;
    ck_assert_int_eq(llep__frame_encode_alloc(&f, &buf, &len), -EMSGSIZE);
    overhead = llep_pb__frame__get_packed_size(&f) - (LLEP_FRAME_MAX_SIZE + 1);
    n = LLEP_FRAME_MAX_SIZE - overhead;
    program[n] = '\0';
    ck_assert_uint_eq(llep_pb__frame__get_packed_size(&f), LLEP_FRAME_MAX_SIZE);
    ck_assert_int_eq(llep__frame_encode_alloc(&f, &buf, &len), 0);

    llep__frame_decoder_init(&d, 0);
    for (size_t off = 0; off < len; off += LLEP_FRAME_READ_MAX) {
        size_t piece = len - off < LLEP_FRAME_READ_MAX ? len - off : LLEP_FRAME_READ_MAX;

        ck_assert_int_eq(llep__frame_decoder_feed(&d, buf + off, piece), 0);
        r = llep__frame_decoder_next(&d, &out);
        ck_assert_int_eq(r, off + piece == len ? 1 : 0);
    }
    ck_assert_uint_eq(strlen(out->hello->program), n);
    llep__frame_free(out);
    /* The big buffer is let go once drained. */
    ck_assert_ptr_null(d.buf);
    llep__frame_decoder_fini(&d);
    free(buf);
    free(program);
}
END_TEST

/* Zero-length and undecodable frames are reported and consumed; the next frame still
 * decodes. */
START_TEST(test_garbage) {
    static const uint8_t garbage[][6] = {
        { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff },   /* endless varint */
        { 0x08 },                                  /* field 1 without its value */
        { 0x82, 0x01, 0x05, 0x01 },                /* hello with length past the end */
        { 0x0f, 0x00 },                            /* wire type 7 */
        { 0x83, 0x01 },                            /* start group */
    };
    static const size_t garbage_len[] = { 6, 1, 4, 2, 2 };
    llep_frame_decoder d;
    LlepPb__Frame f, *out = NULL;
    LlepPb__Hello h;
    uint8_t buf[64];
    size_t len;

    make_hello(&f, &h, 9, 1);
    llep__frame_decoder_init(&d, 0);

    len = raw_frame(buf, 0, NULL, 0);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, len), 0);
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), -EBADMSG);
    ck_assert_str_eq(llep__frame_decoder_error(&d), "empty frame (length 0)");

    for (size_t i = 0; i < sizeof(garbage_len) / sizeof(garbage_len[0]); i++) {
        len = raw_frame(buf, (uint32_t)garbage_len[i], garbage[i], garbage_len[i]);
        ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, len), 0);
        ck_assert_msg(llep__frame_decoder_next(&d, &out) == -EBADMSG, "garbage %zu", i);
        ck_assert_ptr_nonnull(strstr(llep__frame_decoder_error(&d), "undecodable"));
        ck_assert_ptr_null(out);
    }

    ck_assert_int_eq(llep__frame_encode(&f, buf, sizeof(buf), &len), 0);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, len), 0);
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), 1);
    ck_assert_uint_eq(out->id, 9);
    llep__frame_free(out);
    llep__frame_decoder_fini(&d);

    ck_assert_int_eq(llep__frame_unpack(buf, 0, &out), -EBADMSG);
    ck_assert_int_eq(llep__frame_unpack(garbage[0], 6, &out), -EBADMSG);
}
END_TEST

/* A frame from a newer peer with a body this build does not know decodes with no body; the
 * daemon answers it with an error reply instead of dropping the connection. */
START_TEST(test_unknown_body) {
    /* id = 5, then field 1000 as a varint: tag (1000 << 3) = 8000 = 0xc0 0x3e. */
    static const uint8_t payload[] = { 0x08, 0x05, 0xc0, 0x3e, 0x01 };
    LlepPb__Frame *out = NULL;

    ck_assert_int_eq(llep__frame_unpack(payload, sizeof(payload), &out), 0);
    ck_assert_uint_eq(out->id, 5);
    ck_assert_int_eq(out->body_case, LLEP_PB__FRAME__BODY__NOT_SET);
    ck_assert_str_eq(llep__frame_body_name(out->body_case), "none");
    llep__frame_free(out);
}
END_TEST

START_TEST(test_feed_limit) {
    llep_frame_decoder d;
    uint8_t *big = calloc(1, LLEP_FRAME_MAX_SIZE + LLEP_FRAME_READ_MAX + 8);
    LlepPb__Frame *out;

    llep__frame_decoder_init(&d, 0);
    /* A whole maximal frame plus a read's worth is the most that may be buffered. */
    raw_frame(big, LLEP_FRAME_MAX_SIZE, NULL, 0);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, big,
                                              LLEP_FRAME_MAX_SIZE + LLEP_FRAME_READ_MAX + 5),
                     -ENOBUFS);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, big, LLEP_FRAME_MAX_SIZE + 3), 0);
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), 0);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, big, LLEP_FRAME_READ_MAX + 2), -ENOBUFS);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, big, LLEP_FRAME_READ_MAX + 1), 0);
    /* The frame is now whole; all zeros is not a Frame (field number 0). */
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), -EBADMSG);
    llep__frame_decoder_fini(&d);
    free(big);
}
END_TEST

START_TEST(test_version) {
    LlepPb__Frame f, reply;
    LlepPb__Hello h;
    LlepPb__HelloReply hr;
    LlepPb__StatusRequest sr;
    char err[256];

    make_hello(&f, &h, 1, LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION);
    ck_assert_int_eq(llep__frame_check_hello(&f, err, sizeof(err)), 0);

    h.version = 2;
    ck_assert_int_eq(llep__frame_check_hello(&f, err, sizeof(err)), -EPROTONOSUPPORT);
    ck_assert_str_eq(err, "protocol version mismatch: client speaks version 2, llepd speaks "
                          "version 1");
    h.version = 0;
    ck_assert_int_eq(llep__frame_check_hello(&f, err, sizeof(err)), -EPROTONOSUPPORT);

    llep_pb__status_request__init(&sr);
    f.body_case = LLEP_PB__FRAME__BODY_STATUS;
    f.status = &sr;
    ck_assert_int_eq(llep__frame_check_hello(&f, err, sizeof(err)), -EPROTO);
    ck_assert_str_eq(err, "the first message must be hello, got status");
    ck_assert_int_eq(llep__frame_check_hello(NULL, NULL, 0), -EPROTO);

    llep_pb__frame__init(&reply);
    llep_pb__hello_reply__init(&hr);
    reply.body_case = LLEP_PB__FRAME__BODY_HELLO_REPLY;
    reply.hello_reply = &hr;
    hr.version = 1;
    ck_assert_int_eq(llep__frame_check_hello_reply(&reply, err, sizeof(err)), 0);
    hr.version = 3;
    hr.status = LLEP_PB__STATUS__STATUS_VERSION_MISMATCH;
    ck_assert_int_eq(llep__frame_check_hello_reply(&reply, err, sizeof(err)),
                     -EPROTONOSUPPORT);
    ck_assert_str_eq(err, "protocol version mismatch: llepd speaks version 3, this client "
                          "speaks version 1");
    hr.version = 1;
    hr.status = LLEP_PB__STATUS__STATUS_SHUTTING_DOWN;
    hr.message = (char *)"draining";
    ck_assert_int_eq(llep__frame_check_hello_reply(&reply, err, sizeof(err)), -ESHUTDOWN);
    ck_assert_str_eq(err, "llepd refused the connection: draining");
    ck_assert_int_eq(llep__frame_check_hello_reply(&f, err, sizeof(err)), -EPROTO);
}
END_TEST

START_TEST(test_status_errno) {
    for (int s = 0; s <= LLEP_PB__STATUS__STATUS_INTERNAL; s++) {
        int e = llep__status_to_errno((LlepPb__Status)s);

        ck_assert_int_le(e, 0);
        ck_assert_int_eq(llep__status_from_errno(e), s);
    }
    ck_assert_int_eq(llep__status_to_errno((LlepPb__Status)99), -EPROTO);
    ck_assert_int_eq(llep__status_from_errno(-EACCES), LLEP_PB__STATUS__STATUS_PERMISSION);
    ck_assert_int_eq(llep__status_from_errno(EINVAL), LLEP_PB__STATUS__STATUS_INVALID);
    ck_assert_int_eq(llep__status_from_errno(-EMSGSIZE), LLEP_PB__STATUS__STATUS_PROTOCOL);
    ck_assert_int_eq(llep__status_from_errno(-EXDEV), LLEP_PB__STATUS__STATUS_INTERNAL);
}
END_TEST

/* Every body case has a name, requests are even and their replies the next odd number. */
START_TEST(test_body_names) {
    const ProtobufCMessageDescriptor *desc = &llep_pb__frame__descriptor;

    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *field = &desc->fields[i];

        if (field->id == 1)
            continue;
        ck_assert_str_eq(llep__frame_body_name((LlepPb__Frame__BodyCase)field->id), field->name);
        ck_assert(field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF);
        if (field->id >= 16 && field->id % 2 == 1) {
            const ProtobufCFieldDescriptor *req =
                protobuf_c_message_descriptor_get_field(desc, field->id - 1);

            ck_assert_ptr_nonnull(req);
            ck_assert_ptr_nonnull(strstr(field->name, "reply"));
            ck_assert_ptr_null(strstr(req->name, "reply"));
        }
    }
    ck_assert_str_eq(llep__frame_body_name(LLEP_PB__FRAME__BODY_HELLO), "hello");
    ck_assert_str_eq(llep__frame_body_name(LLEP_PB__FRAME__BODY_DRAIN_REPLY), "drain_reply");
    ck_assert_str_eq(llep__frame_body_name((LlepPb__Frame__BodyCase)1), "unknown");
    ck_assert_str_eq(llep__frame_body_name((LlepPb__Frame__BodyCase)12345), "unknown");
}
END_TEST

START_TEST(test_names) {
    char err[128], long_name[LLEP_NAME_MAX + 2];

    ck_assert_int_eq(llep__frame_check_name("layer.3/moe-ffn_x", err, sizeof(err)), 0);
    ck_assert_int_eq(llep__frame_check_name("", err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__frame_check_name(NULL, err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__frame_check_name("a b", err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "layer name has byte 0x20 at offset 1: only printable ASCII without "
                          "blanks is allowed");
    ck_assert_int_eq(llep__frame_check_name("caf\xc3\xa9", err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__frame_check_name("a\x1b[2J", err, sizeof(err)), -EINVAL);
    memset(long_name, 'x', sizeof(long_name) - 1);
    long_name[LLEP_NAME_MAX] = '\0';
    ck_assert_int_eq(llep__frame_check_name(long_name, err, sizeof(err)), 0);
    long_name[LLEP_NAME_MAX] = 'x';
    long_name[LLEP_NAME_MAX + 1] = '\0';
    ck_assert_int_eq(llep__frame_check_name(long_name, err, sizeof(err)), -EINVAL);
}
END_TEST

/* A small valid desc: N=8 K=2 D=16 H=32 f32. */
static void make_desc(LlepPb__LayerDesc *d) {
    llep_pb__layer_desc__init(d);
    d->num_experts = 8;
    d->top_k = 2;
    d->hidden = 16;
    d->inter = 32;
}

START_TEST(test_desc_check) {
    LlepPb__LayerDesc d;
    char err[256];

    make_desc(&d);
    ck_assert_int_eq(llep__layer_desc_check(&d, err, sizeof(err)), 0);
    d.top_k = 8;
    ck_assert_int_eq(llep__layer_desc_check(&d, err, sizeof(err)), 0);
    d.top_k = 9;
    ck_assert_int_eq(llep__layer_desc_check(&d, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "top_k 9 is outside [1, num_experts = 8]");

    /* Each field out of range in turn. */
    for (int field = 0; field < 16; field++) {
        make_desc(&d);
        switch (field) {
        case 0: d.num_experts = 0; break;
        case 1: d.num_experts = LLEP_LAYER_MAX_EXPERTS + 1; break;
        case 2: d.top_k = 0; break;
        case 3: d.hidden = 0; break;
        case 4: d.inter = LLEP_LAYER_MAX_DIM + 1; break;
        case 5: d.dtype = (LlepPb__DType)2; break;
        case 6: d.act = (LlepPb__Activation)-1; break;
        case 7: d.policy = (LlepPb__Policy)3; break;
        case 8: d.scope = (LlepPb__Scope)7; break;
        case 9: d.act_alpha = NAN; break;
        case 10: d.act_limit = -1.0f; break;
        case 11: d.alpha = INFINITY; break;
        case 12: d.lambda = -0.5f; break;
        case 13: d.group = LLEP_LAYER_MAX_GROUP + 1; break;
        case 14: d.inter = 0; break;
        case 15: d.hidden = LLEP_LAYER_MAX_DIM + 1; break;
        }
        ck_assert_msg(llep__layer_desc_check(&d, err, sizeof(err)) == -EINVAL, "field %d",
                      field);
    }
    ck_assert_int_eq(llep__layer_desc_check(NULL, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "missing layer description");

    /* The largest accepted shape has sizes that fit comfortably in 64 bits. */
    make_desc(&d);
    d.num_experts = d.top_k = LLEP_LAYER_MAX_EXPERTS;
    d.hidden = d.inter = LLEP_LAYER_MAX_DIM;
    ck_assert_int_eq(llep__layer_desc_check(&d, err, sizeof(err)), 0);
    {
        llep_layer_bytes b;

        llep__layer_bytes_of(&d, &b);
        ck_assert_uint_eq(b.w_gate, UINT64_C(1) << 58);
        ck_assert_uint_eq(b.b_down, UINT64_C(1) << 38);
    }
}
END_TEST

START_TEST(test_desc_shape) {
    LlepPb__LayerDesc a, b;
    char buf[128];

    make_desc(&a);
    make_desc(&b);
    b.policy = LLEP_PB__POLICY__POLICY_EP;   /* not part of the shape */
    b.alpha = 2.0f;
    ck_assert(llep__layer_desc_same_shape(&a, &b));
    b.top_k = 4;
    ck_assert(!llep__layer_desc_same_shape(&a, &b));
    ck_assert(!llep__layer_desc_same_shape(&a, NULL));
    llep__layer_desc_format_shape(&a, buf, sizeof(buf));
    ck_assert_str_eq(buf, "N=8 K=2 D=16 H=32 f32 swiglu");

    make_desc(&b);
    a.act = b.act = LLEP_PB__ACTIVATION__ACT_SWIGLU_OAI;
    b.act_alpha = 1.702f;   /* the default spelled out equals 0 */
    ck_assert(llep__layer_desc_same_shape(&a, &b));
    b.act_limit = 5.0f;
    ck_assert(!llep__layer_desc_same_shape(&a, &b));
    b.dtype = LLEP_PB__DTYPE__DTYPE_BF16;
    llep__layer_desc_format_shape(&b, buf, sizeof(buf));
    ck_assert_str_eq(buf, "N=8 K=2 D=16 H=32 bf16 swiglu_oai (alpha 1.702, limit 5)");
    llep__layer_desc_format_shape(NULL, buf, sizeof(buf));
    ck_assert_str_eq(buf, "(no shape)");
}
END_TEST

START_TEST(test_layer_create_check) {
    /* f32 N=8 D=16 H=32: weights 16 KiB each, biases 1 KiB (gate, up) and 512 B (down). */
    LlepPb__LayerCreate lc;
    LlepPb__LayerDesc d;
    LlepPb__TensorRef w[6];
    llep_arena_geom g;
    llep_arena a;
    uint64_t t;
    char err[256];

    ck_assert_int_eq(llep__arena_layout(64 << 10, 0, 0, &g), 0);
    ck_assert_int_eq(llep__arena_create(&g, &a), 0);
    t = g.tensor_offset;
    make_desc(&d);
    llep_pb__layer_create__init(&lc);
    lc.name = (char *)"moe0";
    lc.desc = &d;
    for (int i = 0; i < 6; i++)
        llep_pb__tensor_ref__init(&w[i]);
    w[0].offset = t;            w[0].bytes = 16384;
    w[1].offset = t + 16384;    w[1].bytes = 16384;
    w[2].offset = t + 32768;    w[2].bytes = 16384;
    w[3].offset = t + 49152;    w[3].bytes = 1024;
    w[4].offset = t + 50176;    w[4].bytes = 1024;
    w[5].offset = t + 51200;    w[5].bytes = 512;
    lc.w_gate = &w[0];
    lc.w_up = &w[1];
    lc.w_down = &w[2];
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), 0);
    lc.b_gate = &w[3];
    lc.b_up = &w[4];
    lc.b_down = &w[5];
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), 0);

    ck_assert_int_eq(llep__layer_create_check(&lc, NULL, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "no arena to read the weights from: send arena_setup first");
    lc.w_up = NULL;
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "w_up is missing");
    lc.w_up = &w[1];
    w[5].bytes = 511;
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "b_down has 511 bytes, the shape needs 512");
    w[5].bytes = 512;
    w[2].offset = t + 2;
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "w_down offset"));
    w[2].offset = g.arena_size - 16000;
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "outside the tensor space"));
    w[2].offset = 0;
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), -EINVAL);
    w[2].offset = UINT64_MAX - 8;
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), -EINVAL);
    w[2].offset = t + 32768;
    d.dtype = LLEP_PB__DTYPE__DTYPE_BF16;   /* now every size is twice what bf16 needs */
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "w_gate has 16384 bytes, the shape needs 8192");
    d.dtype = LLEP_PB__DTYPE__DTYPE_F32;
    lc.name = (char *)"bad name";
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), -EINVAL);
    lc.name = (char *)"moe0";
    lc.desc = NULL;
    ck_assert_int_eq(llep__layer_create_check(&lc, &a, err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__layer_create_check(NULL, &a, err, sizeof(err)), -EINVAL);
    llep__arena_unmap(&a);
}
END_TEST

START_TEST(test_attach_and_arena_setup) {
    LlepPb__LayerAttach la;
    LlepPb__LayerDesc d;
    LlepPb__ArenaSetup s;
    LlepPb__ArenaReply r;
    llep_arena_geom g, back;
    char err[256];

    llep_pb__layer_attach__init(&la);
    la.name = (char *)"moe0";
    ck_assert_int_eq(llep__layer_attach_check(&la, err, sizeof(err)), 0);
    make_desc(&d);
    d.top_k = 0;
    la.desc = &d;
    ck_assert_int_eq(llep__layer_attach_check(&la, err, sizeof(err)), -EINVAL);
    la.name = NULL;   /* proto3 strings decode as "", but a handler may pass NULL */
    ck_assert_int_eq(llep__layer_attach_check(&la, err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__layer_attach_check(NULL, err, sizeof(err)), -EINVAL);

    llep_pb__arena_setup__init(&s);
    s.tensor_bytes = 1 << 20;
    ck_assert_int_eq(llep__arena_setup_check(&s, 1 << 30, &g, err, sizeof(err)), 0);
    ck_assert_uint_eq(g.tensor_size, 1 << 20);
    ck_assert_uint_eq(g.sq_entries, LLEP_RING_DEFAULT_ENTRIES);
    ck_assert_int_eq(llep__arena_setup_check(&s, 1 << 19, &g, err, sizeof(err)), -ENOMEM);
    ck_assert_str_eq(err, "arena of 1048576 tensor bytes is over this daemon's limit of "
                          "524288");
    s.sq_entries = 100;
    ck_assert_int_eq(llep__arena_setup_check(&s, 1 << 30, &g, err, sizeof(err)), -EINVAL);
    s.sq_entries = 64;
    ck_assert_int_eq(llep__arena_setup_check(&s, 1 << 30, &g, err, sizeof(err)), 0);
    ck_assert_int_eq(llep__arena_setup_check(NULL, 1 << 30, &g, err, sizeof(err)), -EINVAL);

    /* The geometry survives a trip through ArenaReply. */
    llep_pb__arena_reply__init(&r);
    llep__arena_reply_set_geom(&r, &g);
    ck_assert_uint_eq(r.ring_version, LLEP_RING_VERSION);
    llep__arena_reply_get_geom(&r, &back);
    ck_assert_mem_eq(&g, &back, sizeof(g));
}
END_TEST

/* A name with a NUL byte inside ("ab\0cd"): protobuf-c would hand over "ab", so the frame is
 * refused whole, naming the field, whether the string is the frame's own or nested. The
 * frames are made by hand: encoded with "abXcd", then the X patched to 0 on the wire. */
START_TEST(test_name_with_nul) {
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    LlepPb__LayerAttach la = LLEP_PB__LAYER_ATTACH__INIT;
    LlepPb__Frame *out = NULL;
    llep_frame_decoder d;
    uint8_t *buf, *x;
    size_t len;

    la.name = (char *)"abXcd";
    f.id = 7;
    f.body_case = LLEP_PB__FRAME__BODY_LAYER_ATTACH;
    f.layer_attach = &la;
    buf = encode(&f, &len);
    ck_assert_int_eq(llep__frame_unpack(buf + 4, len - 4, &out), 0);   /* as sent: fine */
    llep__frame_free(out);
    out = NULL;
    x = memmem(buf, len, "abXcd", 5);
    ck_assert_ptr_nonnull(x);
    x[2] = '\0';
    ck_assert_int_eq(llep__frame_unpack(buf + 4, len - 4, &out), -EBADMSG);
    ck_assert_ptr_null(out);

    llep__frame_decoder_init(&d, 0);
    ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, len), 0);
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), -EBADMSG);
    ck_assert_str_eq(llep__frame_decoder_error(&d), "string field 'name' of LayerAttach "
                     "has a NUL byte at offset 2 of its 5 bytes");
    /* Not sticky: the next, clean frame decodes. */
    x[2] = 'X';
    ck_assert_int_eq(llep__frame_decoder_feed(&d, buf, len), 0);
    ck_assert_int_eq(llep__frame_decoder_next(&d, &out), 1);
    ck_assert_str_eq(out->layer_attach->name, "abXcd");
    llep__frame_free(out);
    llep__frame_decoder_fini(&d);
    free(buf);

    /* A NUL as the last byte of a string of another message (Hello's program). */
    LlepPb__Frame h = LLEP_PB__FRAME__INIT;
    LlepPb__Hello hello = LLEP_PB__HELLO__INIT;
    hello.program = (char *)"progX";
    h.body_case = LLEP_PB__FRAME__BODY_HELLO;
    h.hello = &hello;
    buf = encode(&h, &len);
    x = memmem(buf, len, "progX", 5);
    ck_assert_ptr_nonnull(x);
    x[4] = '\0';
    ck_assert_int_eq(llep__frame_unpack(buf + 4, len - 4, &out), -EBADMSG);
    free(buf);
}
END_TEST

static Suite *frame_suite(void) {
    Suite *s = suite_create("frame");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_round_trip_hello);
    tcase_add_test(tc, test_round_trip_nested);
    tcase_add_test(tc, test_round_trip_plan_reply);
    tcase_add_test(tc, test_split_byte_by_byte);
    tcase_add_test(tc, test_split_everywhere);
    tcase_add_test(tc, test_oversize);
    tcase_add_test(tc, test_encode_limits);
    tcase_add_test(tc, test_garbage);
    tcase_add_test(tc, test_unknown_body);
    tcase_add_test(tc, test_feed_limit);
    tcase_add_test(tc, test_version);
    tcase_add_test(tc, test_status_errno);
    tcase_add_test(tc, test_body_names);
    tcase_add_test(tc, test_names);
    suite_add_tcase(s, tc);

    tc = tcase_create("validate");
    tcase_add_test(tc, test_desc_check);
    tcase_add_test(tc, test_desc_shape);
    tcase_add_test(tc, test_layer_create_check);
    tcase_add_test(tc, test_name_with_nul);
    tcase_add_test(tc, test_attach_and_arena_setup);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(frame_suite(), CK_ENV);
}
