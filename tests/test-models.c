/* Models served by llepd from checkpoints: checkpoints written at test time by the real
 * safetensors package (tests/make-checkpoints.py, with $LLEP_PYTHON), loaded by llepd from its
 * configuration, from llepctl and from the client API; clients attach by model name and
 * layer index. A loaded layer's outputs must equal, bit for bit, those of a layer created
 * through llep_layer_create with the same weights (expected.bin, computed independently by
 * the script), and both must match the float64 reference. Bad checkpoints fail the load with
 * a message naming file and tensor while llepd keeps serving; unload is refused while clients
 * hold a model's layers; SIGHUP follows the configuration file. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client-fixtures.h"
#include "fixtures.h"
#include "json-fixtures.h"
#include "layout.h"
#include "llep/bf16.h"
#include "llep/client.h"
#include "ref-moe.h"
#include "test-nodes.h"

#define DEVICES "2"
#define TOKENS 24u

/* ---- one llepd per test ------------------------------------------------------------------ */

typedef struct llepd_proc {
    char dir[256], sock[320], log[320];
    pid_t pid;
} llepd_proc;

static void daemon_start(llepd_proc *d, const char *const *args) {
    llep_test_tmpdir(d->dir, sizeof(d->dir), "llep-models-d");
    snprintf(d->sock, sizeof(d->sock), "%s/llepd.sock", d->dir);
    snprintf(d->log, sizeof(d->log), "%s/llepd.log", d->dir);
    llep_test_llepd o = { .sock = d->sock, .devices = DEVICES, .log_level = "info",
                          .log = d->log, .args = args };
    d->pid = llep_test_llepd_start(&o);
}

static void daemon_stop(llepd_proc *d) {
    int st = llep_test_stop(&d->pid, 10000);

    ck_assert_msg(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "llepd did not stop cleanly (status %d)", st);
    llep_test_rm_rf(d->dir);
}

/* Polls until model `name` is (want) or is not (!want) listed, up to 10 s. */
static bool wait_model(const llepd_proc *d, const char *name, bool want) {
    for (int i = 0; i < 1000; i++) {
        llep_client *c = NULL;
        llep_model_info mi;
        bool have = llep_connect(d->sock, &c) == 0 && llep_model_get(c, name, &mi) == 0;
        llep_disconnect(c);
        if (have == want)
            return true;
        sleep_ms(10);
    }
    return false;
}

/* ---- what a layer should compute --------------------------------------------------------- */

/* n values in the layer's dtype (bf16 words when bf16; the float32 values are then rounded to
 * what the words hold, so the reference sees exactly what llepd does). */
static void *in_dtype(float *v, size_t n, enum llep_dtype t) {
    if (t == LLEP_DTYPE_F32) {
        float *c = malloc(n * sizeof(float) + 1);
        ck_assert_ptr_nonnull(c);
        memcpy(c, v, n * sizeof(float));
        return c;
    }
    uint16_t *b = malloc(n * sizeof(uint16_t) + 1);
    ck_assert_ptr_nonnull(b);
    for (size_t i = 0; i < n; i++) {
        b[i] = llep_f32_to_bf16(v[i]);
        v[i] = llep_bf16_to_f32(b[i]);
    }
    return b;
}

static double rel_error_vs_ref(const llep_model_info *mi, const llep_test_f32_weights *w,
                               const float *x, const int32_t *idx, const float *gw,
                               const void *y) {
    size_t n = (size_t)TOKENS * mi->desc.hidden;
    double *ref = malloc(n * sizeof(double));
    float *yf = malloc(n * sizeof(float));
    llep_ref_f32 l = { .n = mi->desc.num_experts, .d = mi->desc.hidden, .h = mi->desc.inter,
                       .act = mi->desc.act, .alpha = mi->desc.act_alpha,
                       .limit = mi->desc.act_limit, .wg = w->wg, .wu = w->wu, .wd = w->wd,
                       .bg = w->bg, .bu = w->bu, .bd = w->bd };

    ck_assert(ref && yf);
    for (size_t i = 0; i < n; i++)
        yf[i] = mi->desc.dtype == LLEP_DTYPE_BF16 ? llep_bf16_to_f32(((const uint16_t *)y)[i])
                                                  : ((const float *)y)[i];
    llep_ref_moe_f32_layer(&l, TOKENS, mi->desc.top_k, x, idx, gw, ref);
    double err = llep_test_rel_l2(yf, ref, n);
    free(ref);
    free(yf);
    return err;
}

/* Inputs for one forward: x in the layer's dtype (and as float32), skewed routing. */
typedef struct inputs {
    float *xf, *gw;
    void *x;
    int32_t *idx;
} inputs;

static void inputs_make(inputs *in, const llep_model_info *mi, uint64_t seed) {
    uint64_t s = seed;
    size_t k = mi->desc.top_k;

    in->xf = llep_test_random_floats(rng_sym, &s, (size_t)TOKENS * mi->desc.hidden, 1.0f);
    in->gw = llep_test_random_floats(rng_sym, &s, (size_t)TOKENS * k, 0.5f);
    in->idx = malloc(TOKENS * k * sizeof(int32_t));
    ck_assert_ptr_nonnull(in->idx);
    /* Distinct experts per token, most tokens on expert 0 first. */
    for (uint32_t t = 0; t < TOKENS; t++)
        for (uint32_t j = 0; j < k; j++)
            in->idx[t * k + j] = (int32_t)((j + (rng_unit(&s) < 0.6 ? 0 : t)) %
                                           mi->desc.num_experts);
    for (uint32_t t = 0; t < TOKENS; t++)   /* make the k ids of a token distinct */
        for (uint32_t j = 1; j < k; j++)
            if (in->idx[t * k + j] == in->idx[t * k])
                in->idx[t * k + j] = (in->idx[t * k] + (int32_t)j) % (int32_t)mi->desc.num_experts;
    in->x = in_dtype(in->xf, (size_t)TOKENS * mi->desc.hidden, mi->desc.dtype);
}

static void inputs_free(inputs *in) {
    free(in->xf);
    free(in->gw);
    free(in->x);
    free(in->idx);
}

/* ---- loaded layers equal created ones ---------------------------------------------------- */

static const char *const families[] = {
    "mixtral-bf16", "mixtral-f32", "mixtral-fused-bf16", "qwen3-moe-f16", "qwen2-moe-sharded",
    "deepseek-v3-bf16", "deepseek-v2-f16", "gpt-oss-bf16", "gpt-oss-mxfp4",
};
#define NUM_FAMILIES (sizeof(families) / sizeof(families[0]))

/* The layer created from expected.bin with the loaded layer's shape and activation. */
static llep_layer *create_twin(llep_client *c, const char *name, const llep_model_info *mi,
                               const llep_test_f32_weights *w) {
    size_t n = mi->desc.num_experts, d = mi->desc.hidden, h = mi->desc.inter;
    llep_layer_desc desc = mi->desc;
    llep_layer *l = NULL;
    float *copy[6] = { w->wg, w->wu, w->wd, w->bg, w->bu, w->bd };
    size_t sizes[6] = { n * d * h, n * d * h, n * d * h, n * h, n * h, n * d };
    void *t[6] = { 0 };

    for (int i = 0; i < 6; i++)
        if (copy[i]) {
            /* expected.bin holds what the loader makes, exactly representable in the dtype */
            float *tmp = malloc(sizes[i] * sizeof(float));
            ck_assert_ptr_nonnull(tmp);
            memcpy(tmp, copy[i], sizes[i] * sizeof(float));
            t[i] = in_dtype(tmp, sizes[i], mi->desc.dtype);
            ck_assert_msg(memcmp(tmp, copy[i], sizes[i] * sizeof(float)) == 0,
                          "expected.bin of %s is not exact in the layer's dtype", name);
            free(tmp);
        }
    desc.w_gate = t[0];
    desc.w_up = t[1];
    desc.w_down = t[2];
    desc.b_gate = t[3];
    desc.b_up = t[4];
    desc.b_down = t[5];
    int r = llep_layer_create(c, name, &desc, &l);
    ck_assert_msg(r == 0, "creating %s: %s", name, llep_client_error(c));
    for (int i = 0; i < 6; i++)
        free(t[i]);
    return l;
}

START_TEST(test_loaded_equals_created) {
    const char *fam = families[_i];
    char dir[512], arg[600];
    llepd_proc d;
    llep_model_info mi;

    llep_test_checkpoint(dir, sizeof(dir), fam);
    snprintf(arg, sizeof(arg), "m=%s", dir);
    daemon_start(&d, (const char *const[]){ "--model", arg, "--min-tokens", "4", NULL });
    ck_assert(wait_model(&d, "m", true));
    llep_client *c = llep_test_connect(d.sock);
    ck_assert_msg(llep_model_get(c, "m", &mi) == 0, "%s", llep_client_error(c));
    ck_assert_uint_gt(mi.num_layers, 0);
    double tol = mi.desc.dtype == LLEP_DTYPE_BF16 ? 1e-2 : 1e-5;
    size_t ybytes = (size_t)TOKENS * mi.desc.hidden * (mi.desc.dtype == LLEP_DTYPE_BF16 ? 2 : 4);
    for (uint32_t i = 0; i < mi.num_layers; i++) {
        llep_test_f32_weights w;
        inputs in;
        char twin_name[64];
        llep_layer *loaded = NULL;

        ck_assert_msg(llep_model_layer(c, "m", i, &loaded) == 0, "%s", llep_client_error(c));
        llep_test_read_expected(dir, &mi, i, &w);
        snprintf(twin_name, sizeof(twin_name), "twin-%u", i);
        llep_layer *twin = create_twin(c, twin_name, &mi, &w);
        inputs_make(&in, &mi, 100 + i);
        void *y1 = calloc(1, ybytes), *y2 = calloc(1, ybytes);
        ck_assert(y1 && y2);
        ck_assert_int_eq(llep_forward(loaded, TOKENS, in.x, in.idx, in.gw, y1), 0);
        ck_assert_int_eq(llep_forward(twin, TOKENS, in.x, in.idx, in.gw, y2), 0);
        ck_assert_msg(memcmp(y1, y2, ybytes) == 0, "%s layer %u: the loaded layer's output "
                      "differs from the created one's", fam, i);
        double err = rel_error_vs_ref(&mi, &w, in.xf, in.idx, in.gw, y1);
        ck_assert_msg(err <= tol, "%s layer %u: relative L2 error %g over %g", fam, i, err, tol);
        free(y1);
        free(y2);
        inputs_free(&in);
        free(w.wg);
        llep_layer_release(twin);
        llep_layer_release(loaded);
    }
    ck_assert_int_eq(llep_model_layer(c, "m", mi.num_layers, &(llep_layer *){ NULL }),
                     -ENOENT);
    llep_disconnect(c);
    daemon_stop(&d);
}
END_TEST

/* Several client processes use every layer of one model, in order, as a model's forward
 * does: each layer's output (float32 model) is the next one's input. */
START_TEST(test_processes_attach_by_name) {
    char dir[512], arg[600];
    llepd_proc d;
    pid_t kids[4];

    llep_test_checkpoint(dir, sizeof(dir), "qwen3-moe-f16");
    snprintf(arg, sizeof(arg), "q=%s", dir);
    daemon_start(&d, (const char *const[]){ "--model", arg, NULL });
    ck_assert(wait_model(&d, "q", true));
    for (int p = 0; p < 4; p++) {
        kids[p] = fork();
        ck_assert_int_ge(kids[p], 0);
        if (kids[p] > 0)
            continue;
        llep_client *c = NULL;
        llep_model_info mi;
        int bad = llep_connect(d.sock, &c) != 0 || llep_model_get(c, "q", &mi) != 0;
        inputs in;
        if (!bad)
            inputs_make(&in, &mi, 7 + (uint64_t)p);
        for (uint32_t i = 0; !bad && i < mi.num_layers; i++) {
            llep_layer *l = NULL;
            llep_test_f32_weights w;
            size_t n = (size_t)TOKENS * mi.desc.hidden;
            float *y = calloc(n, sizeof(float));
            bad = !y || llep_model_layer(c, "q", i, &l) != 0 ||
                  llep_forward(l, TOKENS, in.x, in.idx, in.gw, y) != 0;
            if (!bad) {
                llep_test_read_expected(dir, &mi, i, &w);
                bad = rel_error_vs_ref(&mi, &w, in.xf, in.idx, in.gw, y) > 1e-5;
                free(w.wg);
                memcpy(in.x, y, n * sizeof(float));   /* the next layer's input */
                memcpy(in.xf, y, n * sizeof(float));
            }
            free(y);
            llep_layer_release(l);
        }
        if (c)
            inputs_free(&in);
        llep_disconnect(c);
        _exit(bad ? 1 : 0);
    }
    for (int p = 0; p < 4; p++) {
        int st = 0;
        ck_assert_int_eq(waitpid(kids[p], &st, 0), kids[p]);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client process %d failed", p);
    }
    daemon_stop(&d);
}
END_TEST

/* ---- bad checkpoints, names, unload ------------------------------------------------------ */

/* Each broken checkpoint: the load fails naming the file and what is wrong in it, nothing of
 * the model stays, and the model loaded before keeps serving exactly. */
static const struct bad_case {
    const char *dir, *needle;
} bad_cases[] = {
    { "err-missing-tensor", "no tensor 'model.layers.0.block_sparse_moe.experts.2.w3.weight'" },
    { "err-wrong-shape", "has shape" },
    { "err-wrong-dtype", "dtype" },
    { "err-header-past-eof", "model.safetensors" },
    { "err-offsets-outside", "model.safetensors" },
    { "err-offsets-overlap", "model.safetensors" },
    { "err-truncated", "model.safetensors" },
    { "err-config-fewer-experts", "config.json" },
    { "err-index-missing-file", "index.json" },
    { "err-index-slash", "index.json" },
};
#define NUM_BAD (sizeof(bad_cases) / sizeof(bad_cases[0]))

START_TEST(test_bad_checkpoints) {
    char good[512], arg[600], bad[512];
    llepd_proc d;
    llep_model_info mi;
    llep_layer *l = NULL;

    llep_test_checkpoint(good, sizeof(good), "mixtral-f32");
    snprintf(arg, sizeof(arg), "good=%s", good);
    daemon_start(&d, (const char *const[]){ "--model", arg, NULL });
    ck_assert(wait_model(&d, "good", true));
    llep_client *c = llep_test_connect(d.sock);
    ck_assert_int_eq(llep_model_get(c, "good", &mi), 0);
    ck_assert_int_eq(llep_model_layer(c, "good", 0, &l), 0);
    for (size_t i = 0; i < NUM_BAD; i++) {
        llep_test_checkpoint(bad, sizeof(bad), bad_cases[i].dir);
        int r = llep_model_load(c, "bad", bad);
        const char *msg = llep_client_error(c);
        ck_assert_msg(r < 0, "%s loaded", bad_cases[i].dir);
        ck_assert_msg(strstr(msg, bad_cases[i].dir) && strstr(msg, bad_cases[i].needle),
                      "%s: the message does not name the file and '%s': %s", bad_cases[i].dir,
                      bad_cases[i].needle, msg);
        ck_assert_int_eq(llep_model_get(c, "bad", &(llep_model_info){ 0 }), -ENOENT);
        /* still serving, exactly */
        llep_test_f32_weights w;
        inputs in;
        float *y = calloc((size_t)TOKENS * mi.desc.hidden, sizeof(float));
        inputs_make(&in, &mi, 3 + i);
        ck_assert_int_eq(llep_forward(l, TOKENS, in.x, in.idx, in.gw, y), 0);
        llep_test_read_expected(good, &mi, 0, &w);
        ck_assert(rel_error_vs_ref(&mi, &w, in.xf, in.idx, in.gw, y) <= 1e-5);
        free(w.wg);
        free(y);
        inputs_free(&in);
    }
    ck_assert_int_eq(llep_model_load(c, "nope", "/nonexistent/checkpoint"), -ENOENT);
    llep_layer_release(l);
    llep_disconnect(c);
    daemon_stop(&d);
}
END_TEST

START_TEST(test_names_and_unload) {
    char dir[512];
    llepd_proc d;
    llep_layer *l = NULL, *l2 = NULL;
    llep_model_info mi;

    llep_test_checkpoint(dir, sizeof(dir), "mixtral-bf16");
    daemon_start(&d, NULL);
    llep_client *c = llep_test_connect(d.sock), *c2 = llep_test_connect(d.sock);
    ck_assert_int_eq(llep_model_get(c, "mix", &mi), -ENOENT);
    ck_assert_int_eq(llep_model_load(c, "a/b", dir), -EINVAL);
    ck_assert_msg(llep_model_load(c, "mix", dir) == 0, "%s", llep_client_error(c));
    ck_assert_int_eq(llep_model_load(c, "mix", dir), -EEXIST);
    ck_assert_int_eq(llep_model_get(c, "mix", &mi), 0);
    ck_assert_str_eq(mi.model_type, "mixtral");
    ck_assert_int_eq(mi.desc.dtype, LLEP_DTYPE_BF16);

    /* A model's layer names are its own. */
    float *wts = calloc(3 * (size_t)mi.desc.num_experts * mi.desc.hidden * mi.desc.inter, 4);
    llep_layer_desc dd = { .num_experts = mi.desc.num_experts, .top_k = mi.desc.top_k,
                           .hidden = mi.desc.hidden, .inter = mi.desc.inter, .w_gate = wts,
                           .w_up = wts, .w_down = wts };
    ck_assert_int_eq(llep_layer_create(c, "mix/0", &dd, &l), -EEXIST);
    ck_assert_int_eq(llep_layer_create(c, "mix/7", &dd, &l), -EEXIST);
    free(wts);

    /* Unload is refused while any client holds one of its layers. */
    ck_assert_int_eq(llep_model_layer(c, "mix", 1, &l), 0);
    ck_assert_int_eq(llep_model_layer(c2, "mix", 1, &l2), 0);
    ck_assert_int_eq(llep_model_unload(c, "mix"), -EBUSY);
    ck_assert_msg(strstr(llep_client_error(c), "2 references"), "%s", llep_client_error(c));
    llep_layer_release(l);
    ck_assert_int_eq(llep_model_unload(c, "mix"), -EBUSY);
    llep_layer_release(l2);
    ck_assert_msg(llep_model_unload(c, "mix") == 0, "%s", llep_client_error(c));
    ck_assert_int_eq(llep_model_unload(c, "mix"), -ENOENT);
    ck_assert_int_eq(llep_model_layer(c, "mix", 0, &l), -ENOENT);
    /* The name is free again. */
    ck_assert_msg(llep_model_load(c2, "mix", dir) == 0, "%s", llep_client_error(c2));
    llep_disconnect(c);
    llep_disconnect(c2);
    daemon_stop(&d);
}
END_TEST

/* ---- the configuration ------------------------------------------------------------------- */

static void write_config(const char *path, const char *text) {
    FILE *f = fopen(path, "w");

    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}


START_TEST(test_config_and_reload) {
    char a[512], b[512], conf[600], text[1400];
    llepd_proc d;

    llep_test_checkpoint(a, sizeof(a), "mixtral-bf16");
    llep_test_checkpoint(b, sizeof(b), "gpt-oss-bf16");
    llep_test_tmpdir(d.dir, sizeof(d.dir), "llep-models-conf");
    snprintf(conf, sizeof(conf), "%s/llepd.conf", d.dir);
    snprintf(text, sizeof(text), "model = first=%s\nmodel = second=%s\n", a, b);
    write_config(conf, text);
    daemon_start(&d, (const char *const[]){ "--config", conf, NULL });
    /* Loaded before the socket is used: the configuration's models are there at once. */
    ck_assert(wait_model(&d, "first", true));
    ck_assert(wait_model(&d, "second", true));
    /* One removed, one added, one kept. */
    snprintf(text, sizeof(text), "model = second=%s\nmodel = third=%s\n", b, a);
    write_config(conf, text);
    ck_assert_int_eq(kill(d.pid, SIGHUP), 0);
    ck_assert_msg(wait_model(&d, "third", true), "SIGHUP did not load model 'third'");
    ck_assert_msg(wait_model(&d, "first", false), "SIGHUP did not unload model 'first'");
    ck_assert(wait_model(&d, "second", true));
    daemon_stop(&d);
}
END_TEST

/* A configured model that cannot be loaded stops llepd at start, with exit status 1 and the
 * reason in its log. */
START_TEST(test_config_bad_model_stops_llepd) {
    char bad[512], arg[600], dir[256], sock[320], log[320];
    int st = 0;

    llep_test_checkpoint(bad, sizeof(bad), "err-wrong-shape");
    snprintf(arg, sizeof(arg), "broken=%s", bad);
    llep_test_tmpdir(dir, sizeof(dir), "llep-models-bad");
    snprintf(sock, sizeof(sock), "%s/llepd.sock", dir);
    snprintf(log, sizeof(log), "%s/llepd.log", dir);
    llep_test_llepd o = { .sock = sock, .devices = DEVICES, .log = log,
                          .args = (const char *const[]){ "--model", arg, NULL } };
    pid_t pid = llep_test_llepd_spawn(&o);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "llepd exited with status %d", st);
    ck_assert_msg(llep_test_file_contains(log, "model 'broken'") &&
                  llep_test_file_contains(log, "has shape"), "the log does not say why");
    llep_test_rm_rf(dir);
}
END_TEST

/* ---- llepctl ----------------------------------------------------------------------------- */

START_TEST(test_llepctl_verbs) {
    char dir[512], llepctl[512];
    llepd_proc d;
    llep_test_output o;

    llep_test_checkpoint(dir, sizeof(dir), "gpt-oss-mxfp4");
    llep_test_llepctl(llepctl, sizeof(llepctl));
    daemon_start(&d, NULL);
    o = llep_test_run((const char *const[]){ llepctl, "-s", d.sock, "load", "g", dir, NULL },
                      NULL);
    ck_assert_msg(o.status == 0, "llepctl load: %s", o.err);
    ck_assert_msg(strstr(o.out, "model 'g' (gpt_oss)"), "%s", o.out);
    llep_test_output_free(&o);
    o = llep_test_run((const char *const[]){ llepctl, "-s", d.sock, "--json", "models", NULL },
                      NULL);
    ck_assert_int_eq(o.status, 0);
    ck_assert_msg(strstr(o.out, "\"name\": \"g\"") && strstr(o.out, "\"act\": \"swiglu_oai\"") &&
                  strstr(o.out, "\"state\": \"ready\""), "%s", o.out);
    llep_test_output_free(&o);
    o = llep_test_run((const char *const[]){ llepctl, "-s", d.sock, "load", "g2", "/nonexistent",
                                             NULL }, NULL);
    ck_assert_int_eq(o.status, 2);   /* a directory that is not there is a usage error */
    llep_test_output_free(&o);
    o = llep_test_run((const char *const[]){ llepctl, "-s", d.sock, "unload", "g", NULL }, NULL);
    ck_assert_msg(o.status == 0, "llepctl unload: %s", o.err);
    llep_test_output_free(&o);
    o = llep_test_run((const char *const[]){ llepctl, "-s", d.sock, "unload", "g", NULL }, NULL);
    ck_assert_int_eq(o.status, 1);
    ck_assert_msg(strstr(o.err, "no model 'g'"), "%s", o.err);
    llep_test_output_free(&o);
    daemon_stop(&d);
}
END_TEST

/* One line of JSON, parsed strictly: one value, no raw control character inside it, then only
 * the newline (caller puts it). */
static json_object *parse_line(const char *text) {
    json_tokener *tok = json_tokener_new();
    size_t len = strlen(text);
    json_object *o;

    ck_assert_ptr_nonnull(tok);
    ck_assert_msg(len > 0 && text[len - 1] == '\n' && !strchr(text, '\n')[1],
                  "not one line: %s", text);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    o = json_tokener_parse_ex(tok, text, (int)len);
    ck_assert_msg(o && json_object_is_type(o, json_type_object), "not a JSON object (%s): %s",
                  json_tokener_error_desc(json_tokener_get_error(tok)), text);
    for (size_t i = json_tokener_get_parse_end(tok); i < len; i++)
        ck_assert_msg(text[i] == '\n', "more after the object: %s", text + i);
    json_tokener_free(tok);
    return o;
}

/* Names and paths JSON must escape: model q"b\s (a quote and a backslash, which names may
 * have) from a directory whose path has a quote, a backslash, a newline and a tab. load,
 * models, layers and unload --json each print one line json-c parses strictly, with the name
 * and the path as they were. */
START_TEST(test_llepctl_json_odd_names) {
    static const char name[] = "q\"b\\s";
    char src[512], llepctl[512], odd[600], real[PATH_MAX], from[1200], to[1200], layer0[64];
    llepd_proc d;
    llep_test_output o;
    json_object *j, *v;
    struct dirent *e;
    DIR *dp;

    llep_test_checkpoint(src, sizeof(src), "gpt-oss-mxfp4");
    llep_test_llepctl(llepctl, sizeof(llepctl));
    daemon_start(&d, NULL);
    /* The checkpoint's files, linked from the odd directory: llepctl sends its real path. */
    snprintf(odd, sizeof(odd), "%s/ckpt \"q\\b\n\tx", d.dir);
    ck_assert_int_eq(mkdir(odd, 0700), 0);
    dp = opendir(src);
    ck_assert_ptr_nonnull(dp);
    while ((e = readdir(dp)))
        if (e->d_name[0] != '.') {
            snprintf(from, sizeof(from), "%s/%s", src, e->d_name);
            snprintf(to, sizeof(to), "%s/%s", odd, e->d_name);
            ck_assert_int_eq(symlink(from, to), 0);
        }
    closedir(dp);
    ck_assert_ptr_nonnull(realpath(odd, real));

    o = llep_test_run((const char *const[]){ llepctl, "-s", d.sock, "--json", "load", name, odd,
                                             NULL }, NULL);
    ck_assert_msg(o.status == 0, "llepctl load: %s", o.err);
    j = parse_line(o.out);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(j, "name")), name);
    ck_assert(json_object_is_type(llep_test_jget(j, "layers"), json_type_int));
    json_object_put(j);
    llep_test_output_free(&o);

    o = llep_test_run((const char *const[]){ llepctl, "-s", d.sock, "--json", "models", NULL },
                      NULL);
    ck_assert_int_eq(o.status, 0);
    j = parse_line(o.out);
    v = llep_test_jget(j, "models");
    ck_assert_int_eq(json_object_array_length(v), 1);
    v = json_object_array_get_idx(v, 0);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(v, "name")), name);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(v, "path")), real);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(v, "state")), "ready");
    json_object_put(j);
    llep_test_output_free(&o);

    o = llep_test_run((const char *const[]){ llepctl, "-s", d.sock, "--json", "layers", NULL },
                      NULL);
    ck_assert_int_eq(o.status, 0);
    j = parse_line(o.out);
    v = json_object_array_get_idx(llep_test_jget(j, "layers"), 0);
    ck_assert_ptr_nonnull(v);
    snprintf(layer0, sizeof(layer0), "%s/0", name);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(v, "name")), layer0);
    json_object_put(j);
    llep_test_output_free(&o);

    o = llep_test_run((const char *const[]){ llepctl, "-s", d.sock, "--json", "unload", name,
                                             NULL }, NULL);
    ck_assert_msg(o.status == 0, "llepctl unload: %s", o.err);
    j = parse_line(o.out);
    ck_assert_str_eq(json_object_get_string(llep_test_jget(j, "unloaded")), name);
    json_object_put(j);
    llep_test_output_free(&o);
    daemon_stop(&d);
}
END_TEST

static Suite *models_suite(void) {
    Suite *s = suite_create("models");
    TCase *tc = tcase_create("models");

    tcase_set_timeout(tc, 120);
    tcase_add_unchecked_fixture(tc, llep_test_checkpoints_make, llep_test_checkpoints_remove);
    tcase_add_loop_test(tc, test_loaded_equals_created, 0, NUM_FAMILIES);
    tcase_add_test(tc, test_processes_attach_by_name);
    tcase_add_test(tc, test_bad_checkpoints);
    tcase_add_test(tc, test_names_and_unload);
    tcase_add_test(tc, test_config_and_reload);
    tcase_add_test(tc, test_config_bad_model_stops_llepd);
    tcase_add_test(tc, test_llepctl_verbs);
    tcase_add_test(tc, test_llepctl_json_odd_names);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(models_suite(), CK_ENV);
}
