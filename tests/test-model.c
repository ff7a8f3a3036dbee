/* daemon/model: checkpoints written at test time by the real safetensors package
 * (tests/make-checkpoints.py, run with $LLEP_PYTHON), one per family and storage dtype, read
 * into llep's layout and compared bit for bit with what the script computed in numpy; every
 * broken checkpoint refused with a message naming the file and the tensor; and the parsers
 * and conversions on their own, on bytes made here. */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "fixtures.h"
#include "index.h"
#include "layout.h"
#include "model.h"
#include "safetensors.h"

/* ---- good checkpoints ------------------------------------------------------------------ */

typedef struct good_ckpt {
    const char *name, *model_type;
    uint32_t num_moe_layers, layer_of[4];
    uint32_t n, k, d, h;
    enum llep_dtype dtype;
    enum llep_act act;
    float limit;
    bool bias;
} good_ckpt;

#define BF16 LLEP_DTYPE_BF16
#define F32 LLEP_DTYPE_F32
#define SWIGLU LLEP_ACT_SWIGLU
#define OAI LLEP_ACT_SWIGLU_OAI

/* What each checkpoint must give, stated here rather than read from the script. */
static const good_ckpt goods[] = {
    { "mixtral-bf16", "mixtral", 2, { 0, 1 }, 4, 2, 8, 6, BF16, SWIGLU, 0, false },
    { "mixtral-f32", "mixtral", 2, { 0, 1 }, 4, 2, 8, 6, F32, SWIGLU, 0, false },
    { "mixtral-fused-bf16", "mixtral", 2, { 0, 1 }, 4, 2, 8, 6, BF16, SWIGLU, 0, false },
    { "mixtral-f32-unaligned", "mixtral", 2, { 0, 1 }, 4, 2, 8, 6, F32, SWIGLU, 0, false },
    /* 6 layers, decoder_sparse_step 2 (layers 1, 3, 5), mlp_only_layers [3]. */
    { "qwen3-moe-f16", "qwen3_moe", 2, { 1, 5 }, 4, 2, 8, 6, F32, SWIGLU, 0, false },
    /* 3 layers and an MTP layer 3, first_k_dense_replace 1. */
    { "deepseek-v3-bf16", "deepseek_v3", 2, { 1, 2 }, 4, 2, 8, 6, BF16, SWIGLU, 0, false },
    /* No first_k_dense_replace: DeepseekV2Config's default, 0. */
    { "deepseek-v2-f16", "deepseek_v2", 3, { 0, 1, 2 }, 4, 2, 8, 6, F32, SWIGLU, 0, false },
    { "gpt-oss-bf16", "gpt_oss", 2, { 0, 1 }, 4, 2, 8, 6, BF16, OAI, 5.5f, true },
    { "gpt-oss-mxfp4", "gpt_oss", 2, { 0, 1 }, 4, 2, 64, 32, BF16, OAI, 5.5f, true },
    { "qwen2-moe-sharded", "qwen2_moe", 2, { 0, 1 }, 4, 2, 8, 6, F32, SWIGLU, 0, false },
};

#define NUM_GOODS ((int)(sizeof(goods) / sizeof(goods[0])))

static float *read_expected(const char *dir, size_t *ret_n) {
    char path[PATH_MAX + 32];
    FILE *f;
    long len;
    float *buf;

    snprintf(path, sizeof(path), "%s/expected.bin", dir);
    f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    len = ftell(f);
    rewind(f);
    ck_assert_int_eq(len % 4, 0);
    buf = malloc((size_t)len);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *ret_n = (size_t)len / 4;
    return buf;
}

static void check_info(const llep_model_config *info, const good_ckpt *g) {
    ck_assert_str_eq(info->model_type, g->model_type);
    ck_assert_uint_eq(info->num_moe_layers, g->num_moe_layers);
    for (uint32_t i = 0; i < g->num_moe_layers; i++)
        ck_assert_uint_eq(info->layer_of[i], g->layer_of[i]);
    ck_assert_uint_eq(info->num_experts, g->n);
    ck_assert_uint_eq(info->top_k, g->k);
    ck_assert_uint_eq(info->hidden, g->d);
    ck_assert_uint_eq(info->inter, g->h);
    ck_assert_int_eq(info->dtype, g->dtype);
    ck_assert_int_eq(info->act, g->act);
    ck_assert(info->bias == g->bias);
    if (g->act == OAI) {
        ck_assert_float_eq(info->act_alpha, 1.702f);
        ck_assert_float_eq(info->act_limit, g->limit);
    }
}

/* One array of the layer against the expected floats at *at, bit for bit. */
static void check_array(const void *got, enum llep_dtype t, size_t n, const float *expected,
                        size_t *at, size_t total, const char *what, const char *ckpt,
                        uint32_t layer) {
    float *f32 = malloc(n * sizeof(float));

    ck_assert_ptr_nonnull(got);
    ck_assert_ptr_nonnull(f32);
    ck_assert_uint_le(*at + n, total);
    llep__layout_convert(f32, F32, got, t, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(memcmp(&f32[i], &expected[*at + i], sizeof(float)) == 0,
                      "%s layer %u %s[%zu]: %a, expected %a", ckpt, layer, what, i,
                      (double)f32[i], (double)expected[*at + i]);
    *at += n;
    free(f32);
}

START_TEST(test_good) {
    const good_ckpt *g = &goods[_i];
    char dir[PATH_MAX], err[512] = "";
    llep_model *m;
    size_t total, at = 0, n = g->n, d = g->d, h = g->h;
    float *expected;

    llep_test_checkpoint(dir, sizeof(dir), g->name);
    ck_assert_msg(llep__model_open(dir, &m, err, sizeof(err)) == 0, "%s: %s", g->name, err);
    check_info(llep__model_info(m), g);
    expected = read_expected(dir, &total);
    for (uint32_t i = 0; i < g->num_moe_layers; i++) {
        llep_model_weights w;

        ck_assert_msg(llep__model_layer_weights(m, i, &w, err, sizeof(err)) == 0, "%s: %s",
                      g->name, err);
        ck_assert_int_eq(w.dtype, g->dtype);
        check_array(w.w_gate, w.dtype, n * d * h, expected, &at, total, "w_gate", g->name, i);
        check_array(w.w_up, w.dtype, n * d * h, expected, &at, total, "w_up", g->name, i);
        check_array(w.w_down, w.dtype, n * h * d, expected, &at, total, "w_down", g->name, i);
        if (g->bias) {
            check_array(w.b_gate, w.dtype, n * h, expected, &at, total, "b_gate", g->name, i);
            check_array(w.b_up, w.dtype, n * h, expected, &at, total, "b_up", g->name, i);
            check_array(w.b_down, w.dtype, n * d, expected, &at, total, "b_down", g->name, i);
        } else {
            ck_assert_ptr_null(w.b_gate);
            ck_assert_ptr_null(w.b_up);
            ck_assert_ptr_null(w.b_down);
        }
        llep__model_weights_free(&w);
        ck_assert_ptr_null(w.w_gate);
    }
    ck_assert_uint_eq(at, total);
    free(expected);
    llep__model_close(m);
}
END_TEST

START_TEST(test_layer_out_of_range) {
    char dir[PATH_MAX], err[512] = "";
    llep_model_weights w;
    llep_model *m;

    llep_test_checkpoint(dir, sizeof(dir), "mixtral-f32");
    ck_assert_int_eq(llep__model_open(dir, &m, err, sizeof(err)), 0);
    ck_assert_int_eq(llep__model_layer_weights(m, 2, &w, err, sizeof(err)), -ERANGE);
    ck_assert_ptr_null(w.w_gate);
    ck_assert_ptr_nonnull(strstr(err, "MoE layer 2"));
    llep__model_close(m);
}
END_TEST

/* ---- broken checkpoints ---------------------------------------------------------------- */

typedef struct bad_ckpt {
    const char *name;
    int err;
    const char *says[3];     /* what the message must contain (NULL ends) */
} bad_ckpt;

#define EXPERT(e, w) "'model.layers.0.block_sparse_moe.experts." #e "." #w ".weight'"

static const bad_ckpt bads[] = {
    { "err-missing-tensor", -ENOENT, { "/model.safetensors: no tensor", EXPERT(2, w3) } },
    { "err-wrong-shape", -EINVAL,
      { "/model.safetensors: tensor", EXPERT(1, w2) " has shape [6, 8], expected [8, 6]" } },
    { "err-wrong-dtype", -EINVAL,
      { "/model.safetensors: tensor", EXPERT(0, w1) " has dtype I32" } },
    { "err-config-more-experts", -ENOENT,
      { "/model.safetensors: no tensor", EXPERT(4, w1), "num_local_experts is 8" } },
    { "err-config-fewer-experts", -EINVAL,
      { "/model.safetensors: tensor", EXPERT(2, w1) " is there", "num_local_experts is 2" } },
    { "err-config-hidden", -EINVAL,
      { "/model.safetensors: tensor", EXPERT(0, w1) " has shape [6, 8], expected [6, 16]" } },
    { "err-config-family", -EINVAL, { "/config.json: model_type 'llama'" } },
    { "err-config-act", -EINVAL, { "/config.json: hidden_act is 'gelu'" } },
    { "err-config-layer-freq", -EINVAL, { "/config.json: moe_layer_freq is 2" } },
    { "err-header-past-eof", -EINVAL,
      { "/model.safetensors: header length", "runs past the end of the file" } },
    { "err-header-absurd", -EINVAL,
      { "/model.safetensors: header length 200000000 is over the format's limit" } },
    { "err-header-not-json", -EINVAL, { "/model.safetensors: the header is not JSON" } },
    { "err-offsets-outside", -EINVAL,
      { "/model.safetensors: tensor", EXPERT(3, w2), "run past the end of the data" } },
    { "err-offsets-overlap", -EINVAL,
      { "/model.safetensors: tensor", "overlap tensor", "block_sparse_moe.experts.3.w2" } },
    { "err-truncated", -EINVAL,
      { "/model.safetensors: tensor 'model.layers.0.", "the file is truncated" } },
    { "err-index-missing-file", -ENOENT,
      { "/model.safetensors.index.json: weight_map puts tensor", EXPERT(0, w1),
        "/model-00003-of-00002.safetensors, which is not there" } },
    { "err-index-slash", -EINVAL,
      { "/model.safetensors.index.json: weight_map: tensor", EXPERT(0, w1),
        "'shards/model-00001-of-00002.safetensors', which is not a plain name" } },
    { "err-index-absent-tensor", -EINVAL,
      { "/model.safetensors.index.json: weight_map puts tensor", EXPERT(3, w2),
        "/model-00001-of-00002.safetensors, which has no such tensor" } },
};

#define NUM_BADS ((int)(sizeof(bads) / sizeof(bads[0])))

START_TEST(test_bad) {
    const bad_ckpt *b = &bads[_i];
    char dir[PATH_MAX], err[1024] = "";
    llep_model *m = (llep_model *)(uintptr_t)1;   /* must come back NULL */

    llep_test_checkpoint(dir, sizeof(dir), b->name);
    ck_assert_int_eq(llep__model_open(dir, &m, err, sizeof(err)), b->err);
    ck_assert_ptr_null(m);
    for (int k = 0; k < 3 && b->says[k]; k++)
        ck_assert_msg(strstr(err, b->says[k]), "%s: '%s' does not say \"%s\"", b->name, err,
                      b->says[k]);
}
END_TEST

/* An MXFP4 scale of 255 (NaN in the MX format) opens, but its layer is refused. */
START_TEST(test_mxfp4_nan_scale) {
    char dir[PATH_MAX], err[1024] = "";
    llep_model_weights w;
    llep_model *m;

    llep_test_checkpoint(dir, sizeof(dir), "err-mxfp4-nan-scale");
    ck_assert_msg(llep__model_open(dir, &m, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(llep__model_layer_weights(m, 0, &w, err, sizeof(err)), -EDOM);
    ck_assert_ptr_null(w.w_gate);
    ck_assert_msg(strstr(err, "/model.safetensors: tensor "
                              "'model.layers.0.mlp.experts.gate_up_proj_scales': expert 1, "
                              "row 3, block 0 has scale 255"), "%s", err);
    llep__model_close(m);
}
END_TEST

START_TEST(test_no_directory) {
    char err[512] = "";
    llep_model *m;

    ck_assert_int_eq(llep__model_open("/nonexistent/llep-model", &m, err, sizeof(err)),
                     -ENOENT);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/llep-model/config.json"));
}
END_TEST

/* ---- the safetensors parser on bytes made here ----------------------------------------- */

/* A file image: the 8-byte length, the header text, then `data` zero bytes. */
static uint8_t *image(const char *header, size_t data, size_t *ret_len) {
    size_t n = strlen(header), len = 8 + n + data;
    uint8_t *buf = calloc(1, len);

    ck_assert_ptr_nonnull(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    *ret_len = len;
    return buf;
}

static int parse(const char *header, size_t data, char *err, size_t errlen) {
    size_t len;
    uint8_t *buf = image(header, data, &len);
    llep_st_file *f;
    int r = llep__st_parse(buf, len, "t.safetensors", &f, err, errlen);

    llep__st_close(f);
    free(buf);
    return r;
}

START_TEST(test_st_valid) {
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[16,28]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                      "\"e\":{\"dtype\":\"I8\",\"shape\":[0,5],\"data_offsets\":[28,28]}}  ";
    char err[256] = "";
    size_t len;
    uint8_t *buf = image(hdr, 28, &len);
    llep_st_file *f;
    const llep_st_tensor *t;

    ck_assert_msg(llep__st_parse(buf, len, "t", &f, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(llep__st_count(f), 3);
    ck_assert_str_eq(llep__st_at(f, 0)->name, "a");
    t = llep__st_find(f, "b");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, LLEP_ST_BF16);
    ck_assert_uint_eq(t->ndim, 2);
    ck_assert_uint_eq(t->shape[1], 3);
    ck_assert_uint_eq(t->numel, 6);
    ck_assert_uint_eq(t->nbytes, 12);
    ck_assert_ptr_eq(t->data, buf + 8 + strlen(hdr) + 16);
    ck_assert_uint_eq(llep__st_find(f, "e")->numel, 0);
    ck_assert_ptr_null(llep__st_find(f, "__metadata__"));
    ck_assert_ptr_null(llep__st_find(f, "c"));
    llep__st_close(f);
    free(buf);
}
END_TEST

typedef struct st_case {
    const char *header;
    size_t data;
    const char *says;
} st_case;

static const st_case st_cases[] = {
    { "[1]", 0, "t.safetensors: the header is not a JSON object" },
    { "{\"a\":", 0, "the header is not JSON" },
    { "{\"a\":1}", 0, "tensor 'a': its entry is not an object" },
    { "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'a': no dtype string" },
    { "{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
      "tensor 'a': unknown dtype 'F128'" },
    { "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'a': no shape array" },
    { "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
      "tensor 'a': shape[0] is not an integer >= 0" },
    { "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
      4, "tensor 'a': the shape's element count overflows" },
    { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor 'a': no data_offsets" },
    { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
      "tensor 'a': data_offsets is not [begin, end]" },
    { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
      "tensor 'a': data_offsets [4, 0) end before they begin" },
    { "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
      "tensor 'a': data_offsets [0, 4) hold 4 bytes, but 2 elements of F32 are 8 bytes" },
    { "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2,
      "tensor 'a': 3 elements of F4 do not fill whole bytes" },
    { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
      "tensor 'a': data_offsets [4, 8) leave a gap after byte 0" },
    { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "overlap tensor" },
    { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 3,
      "tensor 'a': data_offsets [0, 4) run past the end of the data (3 bytes)" },
    { "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 6,
      "the tensors end at byte 4 of the data, but the file holds 6 data bytes" },
};

START_TEST(test_st_malformed) {
    const st_case *c = &st_cases[_i];
    char err[512] = "";

    ck_assert_int_eq(parse(c->header, c->data, err, sizeof(err)), -EINVAL);
    ck_assert_msg(strstr(err, c->says), "'%s' does not say \"%s\"", err, c->says);
}
END_TEST

START_TEST(test_st_short_files) {
    char err[256] = "";
    uint8_t buf[16] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    llep_st_file *f;

    ck_assert_int_eq(llep__st_parse(buf, 7, "t", &f, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "too short for the 8-byte header length"));
    ck_assert_int_eq(llep__st_parse(buf, 16, "t", &f, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "over the format's limit"));
    buf[0] = 9;
    memset(buf + 1, 0, 7);
    ck_assert_int_eq(llep__st_parse(buf, 16, "t", &f, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "header length 9 runs past the end of the file"));
    ck_assert_ptr_null(f);
}
END_TEST

/* ---- the index parser ------------------------------------------------------------------ */

START_TEST(test_index) {
    const char *text = "{\"metadata\":{\"total_size\":1},\"weight_map\":{"
                       "\"x\":\"b.safetensors\",\"y\":\"a.safetensors\",\"z\":\"b.safetensors\"}}";
    char err[256] = "";
    llep_index *ix;

    ck_assert_msg(llep__index_parse(text, strlen(text), "i", &ix, err, sizeof(err)) == 0, "%s",
                  err);
    ck_assert_uint_eq(ix->nfiles, 2);
    ck_assert_str_eq(ix->files[0], "a.safetensors");
    ck_assert_int_eq(llep__index_find(ix, "x"), 1);
    ck_assert_int_eq(llep__index_find(ix, "y"), 0);
    ck_assert_int_eq(llep__index_find(ix, "w"), -1);
    llep__index_free(ix);
}
END_TEST

static const char *const index_cases[][2] = {
    { "[]", "i: not a JSON object" },
    { "{}", "i: no weight_map object" },
    { "{\"weight_map\":{\"x\":1}}", "tensor 'x' maps to 1, not a file name" },
    { "{\"weight_map\":{\"x\":\"\"}}", "tensor 'x' is in file '', which is not a plain name" },
    { "{\"weight_map\":{\"x\":\"a/b\"}}", "tensor 'x' is in file 'a/b'" },
    { "{\"weight_map\":{\"x\":\"..\"}}", "tensor 'x' is in file '..'" },
    { "{\"weight_map\":{\"x\":\"a\\u0000b\"}}", "tensor 'x' is in file 'a'" },
    { "{\"weight_map\":{}} x", "i: the file is not JSON" },
};

START_TEST(test_index_malformed) {
    const char *text = index_cases[_i][0];
    char err[256] = "";
    llep_index *ix;

    ck_assert_int_eq(llep__index_parse(text, strlen(text), "i", &ix, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_null(ix);
    ck_assert_msg(strstr(err, index_cases[_i][1]), "'%s' does not say \"%s\"", err,
                  index_cases[_i][1]);
}
END_TEST

/* ---- conversions ------------------------------------------------------------------------ */

START_TEST(test_f16) {
    static const uint8_t src[] = {
        0x00, 0x3c,   /* 1.0 */
        0x00, 0x80,   /* -0.0 */
        0x01, 0x00,   /* the smallest subnormal, 2^-24 */
        0xff, 0x03,   /* the largest subnormal, 1023 2^-24 */
        0x00, 0x04,   /* the smallest normal, 2^-14 */
        0xff, 0x7b,   /* the largest finite, 65504 */
        0x00, 0xfc,   /* -inf */
        0x01, 0x7e,   /* a NaN */
    };
    float f[8];

    llep__f16_to_f32(f, src, 8);
    ck_assert_float_eq(f[0], 1.0f);
    ck_assert(f[1] == 0.0f && signbit(f[1]));
    ck_assert_float_eq(f[2], ldexpf(1.0f, -24));
    ck_assert_float_eq(f[3], ldexpf(1023.0f, -24));
    ck_assert_float_eq(f[4], ldexpf(1.0f, -14));
    ck_assert_float_eq(f[5], 65504.0f);
    ck_assert(isinf(f[6]) && f[6] < 0);
    ck_assert(isnan(f[7]));
}
END_TEST

START_TEST(test_mxfp4) {
    uint8_t blocks[16] = { 0x21, 0xf8, 0x7f };   /* then zeros */
    uint8_t scale = 128;                          /* 2^1 */
    float out[32];
    size_t at;

    ck_assert_int_eq(llep__mxfp4_to_f32(out, blocks, &scale, 1, 1, &at), 0);
    /* Low nibble first: 0x21 is 0.5 then 1.0; 0xf8 is -0.0 then -6; 0x7f is -6 then 6. */
    ck_assert_float_eq(out[0], 1.0f);
    ck_assert_float_eq(out[1], 2.0f);
    ck_assert(out[2] == 0.0f && signbit(out[2]));
    ck_assert_float_eq(out[3], -12.0f);
    ck_assert_float_eq(out[4], -12.0f);
    ck_assert_float_eq(out[5], 12.0f);
    ck_assert_float_eq(out[31], 0.0f);
    scale = 0;                                    /* 2^-127: subnormal, still exact */
    ck_assert_int_eq(llep__mxfp4_to_f32(out, blocks, &scale, 1, 1, &at), 0);
    ck_assert_float_eq(out[0], ldexpf(1.0f, -128));
    scale = 255;
    ck_assert_int_eq(llep__mxfp4_to_f32(out, blocks, &scale, 1, 1, &at), -EDOM);
    ck_assert_uint_eq(at, 0);
}
END_TEST

static Suite *model_suite(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("checkpoints");

    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, llep_test_checkpoints_make, llep_test_checkpoints_remove);
    tcase_add_loop_test(tc, test_good, 0, NUM_GOODS);
    tcase_add_test(tc, test_layer_out_of_range);
    tcase_add_loop_test(tc, test_bad, 0, NUM_BADS);
    tcase_add_test(tc, test_mxfp4_nan_scale);
    tcase_add_test(tc, test_no_directory);
    suite_add_tcase(s, tc);
    tc = tcase_create("parsers");
    tcase_add_test(tc, test_st_valid);
    tcase_add_loop_test(tc, test_st_malformed, 0, (int)(sizeof(st_cases) / sizeof(st_cases[0])));
    tcase_add_test(tc, test_st_short_files);
    tcase_add_test(tc, test_index);
    tcase_add_loop_test(tc, test_index_malformed, 0,
                        (int)(sizeof(index_cases) / sizeof(index_cases[0])));
    suite_add_tcase(s, tc);
    tc = tcase_create("conversions");
    tcase_add_test(tc, test_f16);
    tcase_add_test(tc, test_mxfp4);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(model_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
