/* libllep-client's layouts and types (include/llep/client.h): weights as frameworks keep them
 * (gate_up_layout, down_layout), forwards with int64 ids, bf16 or f32 x, topk_w and y
 * (llep_io), the checks of each, and the calls of earlier versions (client-compat.c), all
 * through a private llepd and against the float64 reference of DESIGN.md section 4.
 *
 * Each framework layout is written here from llep's own by its definition, element by
 * element; a layer created from it must give exactly what the same weights in llep's layout
 * give, and that within tolerance of float64. */
#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client-fixtures.h"
#include "fixtures.h"
#include "llep/client.h"
#include "ref-moe.h"

static char tmpdir[32];
static char sock_path[64];
static pid_t llepd_pid = -1;
static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static void setup_daemon(void) {
    llep_test_llepd o = { .sock = sock_path, .devices = "2" };

    llep_test_tmpdir(tmpdir, sizeof(tmpdir), "test-client-layout");
    snprintf(sock_path, sizeof(sock_path), "%s/llepd.sock", tmpdir);
    llepd_pid = llep_test_llepd_start(&o);
}

static void teardown_daemon(void) {
    llep_test_stop(&llepd_pid, 5000);
    llep_test_rm_rf(tmpdir);
}

/* ---- bf16, element access --------------------------------------------------------------- */

static uint16_t to_bf16(float f) {
    uint32_t u;

    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);    /* round to nearest even; no NaN here */
    return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;

    memcpy(&f, &u, 4);
    return f;
}

static size_t dsize(enum llep_dtype t) {
    return t == LLEP_DTYPE_BF16 ? 2 : 4;
}

static void put(void *buf, enum llep_dtype t, size_t i, float v) {
    if (t == LLEP_DTYPE_BF16)
        ((uint16_t *)buf)[i] = to_bf16(v);
    else
        ((float *)buf)[i] = v;
}

static float get(const void *buf, enum llep_dtype t, size_t i) {
    return t == LLEP_DTYPE_BF16 ? from_bf16(((const uint16_t *)buf)[i]) : ((const float *)buf)[i];
}

static void *alloc_elems(size_t n, enum llep_dtype t) {
    void *p = calloc(n ? n : 1, dsize(t));

    ck_assert_ptr_nonnull(p);
    return p;
}

/* n floats as type t (bf16 rounded). */
static void *as_type(const float *v, size_t n, enum llep_dtype t) {
    void *p = alloc_elems(n, t);

    for (size_t i = 0; i < n; i++)
        put(p, t, i, v[i]);
    return p;
}

/* Rounds v to bf16 in place when t is bf16, so it holds exactly what the daemon sees. */
static void round_to(float *v, size_t n, enum llep_dtype t) {
    if (t == LLEP_DTYPE_BF16)
        for (size_t i = 0; i < n; i++)
            v[i] = from_bf16(to_bf16(v[i]));
}

/* ---- a layer in llep's layout and in the frameworks' -------------------------------------- */

#define N 6u
#define K 2u
#define D 40u     /* D and H above the 32-element tiles of the transposes, and not multiples */
#define H 36u

/* The weights in llep's layout as floats (exact in the layer's dtype), with biases. */
typedef struct canon {
    enum llep_dtype dtype;
    llep_test_f32_weights w;
} canon;

static void canon_init(canon *c, enum llep_dtype t) {
    c->dtype = t;
    llep_test_f32_weights_init(&c->w, xorshift_sym, &rng_state, N, D, H, 1.0f / sqrtf(D),
                               1.0f / sqrtf(H), 0.1f);
    round_to(c->w.wg, (size_t)N * D * H, t);
    round_to(c->w.wu, (size_t)N * D * H, t);
    round_to(c->w.wd, (size_t)N * H * D, t);
    round_to(c->w.bg, (size_t)N * H, t);
    round_to(c->w.bu, (size_t)N * H, t);
    round_to(c->w.bd, (size_t)N * D, t);
}

static float wg(const canon *c, uint32_t e, uint32_t i, uint32_t j) {
    return c->w.wg[((size_t)e * D + i) * H + j];
}

static float wu(const canon *c, uint32_t e, uint32_t i, uint32_t j) {
    return c->w.wu[((size_t)e * D + i) * H + j];
}

static float wd(const canon *c, uint32_t e, uint32_t j, uint32_t i) {  /* Wd[e][j][i] */
    return c->w.wd[((size_t)e * H + j) * D + i];
}

/* The tensors of one layout, and the desc that creates a layer from them. */
typedef struct framed {
    llep_layer_desc d;
    void *g, *u, *gu, *dn, *bg, *bu, *bgu, *bd;
} framed;

/* Writes c's weights in the layouts (gl, dl), each element placed by the layout's
 * definition in include/llep/types.h. */
static void framed_init(framed *f, const canon *c, enum llep_gate_up_layout gl,
                        enum llep_down_layout dl) {
    enum llep_dtype t = c->dtype;
    size_t dh = (size_t)D * H;

    memset(f, 0, sizeof(*f));
    f->d = (llep_layer_desc){ .num_experts = N, .top_k = K, .hidden = D, .inter = H,
                              .dtype = t, .act = LLEP_ACT_SWIGLU, .gate_up_layout = gl,
                              .down_layout = dl };
    if (gl == LLEP_GATE_UP_SEPARATE || gl == LLEP_GATE_UP_SEPARATE_T) {
        f->g = alloc_elems(N * dh, t);
        f->u = alloc_elems(N * dh, t);
        f->bg = as_type(c->w.bg, (size_t)N * H, t);
        f->bu = as_type(c->w.bu, (size_t)N * H, t);
    } else {
        f->gu = alloc_elems(2 * N * dh, t);
        f->bgu = alloc_elems((size_t)2 * N * H, t);
    }
    for (uint32_t e = 0; e < N; e++) {
        for (uint32_t i = 0; i < D; i++) {
            for (uint32_t j = 0; j < H; j++) {
                size_t ex = e * dh, ex2 = 2 * e * dh;

                switch (gl) {
                case LLEP_GATE_UP_SEPARATE:     /* [D][H] */
                    put(f->g, t, ex + (size_t)i * H + j, wg(c, e, i, j));
                    put(f->u, t, ex + (size_t)i * H + j, wu(c, e, i, j));
                    break;
                case LLEP_GATE_UP_SEPARATE_T:   /* [H][D] */
                    put(f->g, t, ex + (size_t)j * D + i, wg(c, e, i, j));
                    put(f->u, t, ex + (size_t)j * D + i, wu(c, e, i, j));
                    break;
                case LLEP_GATE_UP_FUSED:        /* [D][2H]: gate columns, then up */
                    put(f->gu, t, ex2 + (size_t)i * 2 * H + j, wg(c, e, i, j));
                    put(f->gu, t, ex2 + (size_t)i * 2 * H + H + j, wu(c, e, i, j));
                    break;
                case LLEP_GATE_UP_FUSED_T:      /* [2H][D]: gate rows, then up */
                    put(f->gu, t, ex2 + (size_t)j * D + i, wg(c, e, i, j));
                    put(f->gu, t, ex2 + (size_t)(H + j) * D + i, wu(c, e, i, j));
                    break;
                case LLEP_GATE_UP_INTERLEAVED:  /* [D][2H]: gate 2j, up 2j + 1 */
                    put(f->gu, t, ex2 + (size_t)i * 2 * H + 2 * j, wg(c, e, i, j));
                    put(f->gu, t, ex2 + (size_t)i * 2 * H + 2 * j + 1, wu(c, e, i, j));
                    break;
                }
            }
        }
        for (uint32_t j = 0; j < H && f->bgu; j++) {
            size_t gate = gl == LLEP_GATE_UP_INTERLEAVED ? 2 * j : j;
            size_t up = gl == LLEP_GATE_UP_INTERLEAVED ? 2 * j + 1 : H + j;

            put(f->bgu, t, (size_t)e * 2 * H + gate, c->w.bg[(size_t)e * H + j]);
            put(f->bgu, t, (size_t)e * 2 * H + up, c->w.bu[(size_t)e * H + j]);
        }
    }
    f->dn = alloc_elems(N * dh, t);
    for (uint32_t e = 0; e < N; e++)
        for (uint32_t j = 0; j < H; j++)
            for (uint32_t i = 0; i < D; i++)
                put(f->dn, t, e * dh + (dl == LLEP_DOWN_HD ? (size_t)j * D + i : (size_t)i * H + j),
                    wd(c, e, j, i));
    f->bd = as_type(c->w.bd, (size_t)N * D, t);
    f->d.w_gate = f->g;
    f->d.w_up = f->u;
    f->d.w_gate_up = f->gu;
    f->d.w_down = f->dn;
    f->d.b_gate = f->bg;
    f->d.b_up = f->bu;
    f->d.b_gate_up = f->bgu;
    f->d.b_down = f->bd;
}

static void framed_fini(framed *f) {
    free(f->g);
    free(f->u);
    free(f->gu);
    free(f->dn);
    free(f->bg);
    free(f->bu);
    free(f->bgu);
    free(f->bd);
}

/* ---- routed tokens and the reference ------------------------------------------------------ */

typedef struct batch {
    uint32_t tokens;
    float *x, *w;              /* as drawn */
    int32_t *idx;
    int64_t *idx64;
} batch;

static void batch_init(batch *b, uint32_t tokens) {
    b->tokens = tokens;
    b->x = llep_test_random_floats(xorshift_sym, &rng_state, (size_t)tokens * D, 1.0f);
    b->w = llep_test_random_floats(xorshift_sym, &rng_state, (size_t)tokens * K, 1.0f);
    b->idx = malloc((size_t)tokens * K * sizeof(*b->idx));
    b->idx64 = malloc((size_t)tokens * K * sizeof(*b->idx64));
    ck_assert_ptr_nonnull(b->idx);
    ck_assert_ptr_nonnull(b->idx64);
    for (size_t i = 0; i < (size_t)tokens * K; i++) {
        b->idx[i] = xorshift_skewed(&rng_state, 0.4, N);
        b->idx64[i] = b->idx[i];
    }
}

static void batch_fini(batch *b) {
    free(b->x);
    free(b->w);
    free(b->idx);
    free(b->idx64);
}

/* Relative L2 error of y (type yt) against the float64 reference of c's layer for x and w
 * exactly as given. */
static double ref_error(const canon *c, const batch *b, const float *x, const float *w,
                        const void *y, enum llep_dtype yt) {
    size_t n = (size_t)b->tokens * D;
    double *ref = malloc(n * sizeof(double)), err;
    float *yf = malloc(n * sizeof(float));
    llep_ref_f32 l = { .n = N, .d = D, .h = H, .act = LLEP_ACT_SWIGLU, .wg = c->w.wg,
                       .wu = c->w.wu, .wd = c->w.wd, .bg = c->w.bg, .bu = c->w.bu,
                       .bd = c->w.bd };

    ck_assert_ptr_nonnull(ref);
    ck_assert_ptr_nonnull(yf);
    for (size_t i = 0; i < n; i++)
        yf[i] = get(y, yt, i);
    llep_ref_moe_f32_layer(&l, b->tokens, K, x, b->idx, w, ref);
    err = llep_test_rel_l2(yf, ref, n);
    free(ref);
    free(yf);
    return err;
}

static double tolerance(enum llep_dtype layer, enum llep_dtype y) {
    return layer == LLEP_DTYPE_BF16 || y == LLEP_DTYPE_BF16 ? 1e-2 : 1e-5;
}

static const char *const gate_up_names[] = { "separate", "separate_t", "fused", "fused_t",
                                             "interleaved" };

/* ---- weight layouts ------------------------------------------------------------------------ */

/* Every gate/up layout with every down layout, in f32 and bf16 storage: the same outputs bit
 * for bit as llep's own layout, and within tolerance of float64. */
START_TEST(test_weight_layouts) {
    llep_client *c = llep_test_connect(sock_path);

    for (int ti = 0; ti < 2; ti++) {
        enum llep_dtype t = ti ? LLEP_DTYPE_BF16 : LLEP_DTYPE_F32;
        size_t ny = (size_t)37 * D;
        void *x, *y0 = NULL;
        float *xr;
        canon cn;
        batch b;

        canon_init(&cn, t);
        batch_init(&b, 37);
        x = as_type(b.x, ny, t);
        xr = malloc(ny * sizeof(float));
        ck_assert_ptr_nonnull(xr);
        for (size_t i = 0; i < ny; i++)
            xr[i] = get(x, t, i);
        for (int gl = 0; gl <= LLEP_GATE_UP_INTERLEAVED; gl++) {
            for (int dl = 0; dl <= LLEP_DOWN_DH; dl++) {
                char name[64];
                void *y = alloc_elems(ny, t);
                llep_layer *l;
                framed f;
                double err;
                int r;

                snprintf(name, sizeof(name), "%s-%s-%s", ti ? "bf16" : "f32", gate_up_names[gl],
                         dl ? "dh" : "hd");
                framed_init(&f, &cn, (enum llep_gate_up_layout)gl, (enum llep_down_layout)dl);
                l = llep_test_layer_create(c, name, &f.d);
                r = llep_forward(l, b.tokens, x, b.idx, b.w, y);
                ck_assert_msg(r == 0, "%s: %s", name, llep_client_error(c));
                err = ref_error(&cn, &b, xr, b.w, y, t);
                ck_assert_msg(err <= tolerance(t, t), "%s: relative L2 error %g", name, err);
                if (!y0)
                    y0 = y;
                else
                    ck_assert_msg(memcmp(y, y0, ny * dsize(t)) == 0,
                                  "%s: not the output of llep's own layout", name);
                if (y != y0)
                    free(y);
                llep_layer_release(l);
                framed_fini(&f);
            }
        }
        free(y0);
        free(x);
        free(xr);
        batch_fini(&b);
        llep_test_f32_weights_fini(&cn.w);
    }
    llep_disconnect(c);
}
END_TEST

/* A layer's desc as the daemon holds it has llep's own layouts; attaching with a framework
 * layout in the desc (and no weights) is fine, the layouts describe only weights. */
START_TEST(test_layouts_held_canonical) {
    llep_client *c = llep_test_connect(sock_path);
    llep_layer_desc got, att;
    llep_layer *l, *l2;
    canon cn;
    framed f;

    canon_init(&cn, LLEP_DTYPE_F32);
    framed_init(&f, &cn, LLEP_GATE_UP_FUSED_T, LLEP_DOWN_DH);
    l = llep_test_layer_create(c, "held", &f.d);
    ck_assert_int_eq(llep_layer_get_desc(l, &got), 0);
    ck_assert_int_eq(got.gate_up_layout, LLEP_GATE_UP_SEPARATE);
    ck_assert_int_eq(got.down_layout, LLEP_DOWN_HD);
    ck_assert_ptr_null(got.w_gate_up);
    ck_assert_ptr_null(got.b_gate_up);
    ck_assert_uint_eq(got.hidden, D);
    att = f.d;
    att.w_gate_up = att.w_down = att.b_gate_up = att.b_down = NULL;
    l2 = llep_test_layer_create(c, "held", &att);
    llep_layer_release(l2);
    llep_layer_release(l);
    framed_fini(&f);
    llep_test_f32_weights_fini(&cn.w);
    llep_disconnect(c);
}
END_TEST

/* A create refused by the library names what was wrong, and leaves no layer behind. */
static void assert_refused(llep_client *c, const llep_layer_desc *d, const char *what) {
    llep_layer *l = (llep_layer *)1;

    ck_assert_int_eq(llep_layer_create(c, "refused", d, &l), -EINVAL);
    ck_assert_ptr_null(l);
    ck_assert_msg(strstr(llep_client_error(c), what), "message '%s' does not say '%s'",
                  llep_client_error(c), what);
}

START_TEST(test_layout_checks) {
    llep_client *c = llep_test_connect(sock_path);
    llep_layer_desc d;
    canon cn;
    framed sep, fused;

    canon_init(&cn, LLEP_DTYPE_F32);
    framed_init(&sep, &cn, LLEP_GATE_UP_SEPARATE, LLEP_DOWN_HD);
    framed_init(&fused, &cn, LLEP_GATE_UP_INTERLEAVED, LLEP_DOWN_HD);

    d = sep.d;
    d.gate_up_layout = (enum llep_gate_up_layout)5;
    assert_refused(c, &d, "gate_up_layout 5");
    d = sep.d;
    d.down_layout = (enum llep_down_layout)2;
    assert_refused(c, &d, "down_layout 2");
    d = sep.d;
    d.w_gate_up = fused.gu;                 /* a fused tensor with a separate layout */
    assert_refused(c, &d, "w_gate_up and b_gate_up need");
    d = sep.d;
    d.b_gate_up = fused.bgu;
    assert_refused(c, &d, "SEPARATE");
    d = fused.d;
    d.w_gate = sep.g;                       /* separate tensors with a fused layout */
    assert_refused(c, &d, "INTERLEAVED takes w_gate_up");
    d = fused.d;
    d.b_up = sep.bu;
    assert_refused(c, &d, "not w_gate, w_up, b_gate or b_up");
    d = fused.d;
    d.w_down = NULL;                        /* half the weights */
    assert_refused(c, &d, "give w_gate_up and w_down");
    d = fused.d;
    d.w_gate_up = NULL;
    assert_refused(c, &d, "give w_gate_up and w_down");
    d = fused.d;
    d.w_gate_up = d.w_down = NULL;          /* biases, no weights */
    d.b_down = NULL;
    assert_refused(c, &d, "biases given without weights");
    d = sep.d;
    d.w_up = NULL;
    assert_refused(c, &d, "give w_gate, w_up and w_down");

    /* Nothing was created: the name is still free. */
    llep_layer_release(llep_test_layer_create(c, "refused", &fused.d));
    framed_fini(&sep);
    framed_fini(&fused);
    llep_test_f32_weights_fini(&cn.w);
    llep_disconnect(c);
}
END_TEST

/* ---- llep_io: ids, x, topk_w and y of either type -------------------------------------------- */

static const enum llep_io_dtype io_types[] = { LLEP_IO_DEFAULT, LLEP_IO_F32, LLEP_IO_BF16 };

static enum llep_dtype resolve(enum llep_io_dtype t, enum llep_dtype def) {
    return t == LLEP_IO_DEFAULT ? def : t == LLEP_IO_BF16 ? LLEP_DTYPE_BF16 : LLEP_DTYPE_F32;
}

/* Every combination of x, topk_idx, topk_w and y types on an f32 and a bf16 layer. Each
 * forward must give exactly what llep_forward() gives for the same values as the daemon sees
 * them (x in the layer's dtype, topk_w rounded when given in bf16), converted to y's type,
 * and that within tolerance of float64. */
START_TEST(test_io_types) {
    llep_client *c = llep_test_connect(sock_path);

    for (int ti = 0; ti < 2; ti++) {
        enum llep_dtype t = ti ? LLEP_DTYPE_BF16 : LLEP_DTYPE_F32;
        size_t nx = (size_t)29 * D, nk = (size_t)29 * K;
        llep_layer *l;
        canon cn;
        framed f;
        batch b;
        int combos = 0;

        canon_init(&cn, t);
        framed_init(&f, &cn, LLEP_GATE_UP_SEPARATE, LLEP_DOWN_HD);
        l = llep_test_layer_create(c, ti ? "io-bf16" : "io-f32", &f.d);
        batch_init(&b, 29);
        for (int xi = 0; xi < 3; xi++)
        for (int ii = 0; ii < 2; ii++)
        for (int wi = 0; wi < 3; wi++)
        for (int yi = 0; yi < 3; yi++) {
            enum llep_dtype xt = resolve(io_types[xi], t), wt = resolve(io_types[wi],
                                                                        LLEP_DTYPE_F32);
            enum llep_dtype yt = resolve(io_types[yi], t);
            void *x = as_type(b.x, nx, xt), *w = as_type(b.w, nk, wt), *y;
            float *xs = malloc(nx * sizeof(float)), *ws = malloc(nk * sizeof(float));
            void *xl, *ybase = alloc_elems(nx, t);
            llep_io io;
            double err;
            int r;

            /* What the daemon sees: x in the layer's dtype, topk_w widened from its type. */
            ck_assert_ptr_nonnull(xs);
            ck_assert_ptr_nonnull(ws);
            for (size_t i = 0; i < nx; i++)
                xs[i] = get(x, xt, i);
            round_to(xs, nx, t);
            for (size_t i = 0; i < nk; i++)
                ws[i] = get(w, wt, i);
            xl = as_type(xs, nx, t);
            r = llep_forward(l, b.tokens, xl, b.idx, ws, ybase);
            ck_assert_msg(r == 0, "forward: %s", llep_client_error(c));

            y = alloc_elems(nx, yt);
            io = (llep_io){ .tokens = b.tokens, .x = x, .topk_w = w, .y = y,
                            .topk_idx = ii ? (const void *)b.idx64 : (const void *)b.idx,
                            .idx_type = ii ? LLEP_INDEX_I64 : LLEP_INDEX_I32,
                            .x_dtype = io_types[xi], .w_dtype = io_types[wi],
                            .y_dtype = io_types[yi] };
            r = llep_forward_ex(l, &io);
            ck_assert_msg(r == 0, "forward_ex x %d idx %d w %d y %d: %s", xi, ii, wi, yi,
                          llep_client_error(c));
            for (size_t i = 0; i < nx; i++) {
                float want = get(ybase, t, i), gotv = get(y, yt, i);

                if (yt == LLEP_DTYPE_BF16)
                    want = from_bf16(to_bf16(want));
                ck_assert_msg(memcmp(&want, &gotv, 4) == 0, "layer %s, x %d idx %d w %d y %d: "
                              "y[%zu] = %g, llep_forward gave %g", ti ? "bf16" : "f32", xi, ii,
                              wi, yi, i, gotv, want);
            }
            err = ref_error(&cn, &b, xs, ws, y, yt);
            ck_assert_msg(err <= tolerance(t, yt), "relative L2 error %g", err);
            combos++;
            free(x);
            free(w);
            free(y);
            free(xs);
            free(ws);
            free(xl);
            free(ybase);
        }
        ck_assert_int_eq(combos, 54);
        batch_fini(&b);
        llep_layer_release(l);
        framed_fini(&f);
        llep_test_f32_weights_fini(&cn.w);
    }
    llep_disconnect(c);
}
END_TEST

/* Submissions of different types in flight together, collected out of order. */
START_TEST(test_submit_ex) {
    llep_client *c = llep_test_connect(sock_path);
    enum { S = 4 };
    uint64_t tickets[S];
    void *ys[S];
    float *ybase;
    llep_layer *l;
    canon cn;
    framed f;
    batch b;

    canon_init(&cn, LLEP_DTYPE_BF16);
    framed_init(&f, &cn, LLEP_GATE_UP_FUSED_T, LLEP_DOWN_DH);
    l = llep_test_layer_create(c, "submit-ex", &f.d);
    batch_init(&b, 50);
    ybase = alloc_elems((size_t)50 * D, LLEP_DTYPE_F32);
    {
        llep_io io = { .tokens = 50, .x = b.x, .topk_idx = b.idx64, .topk_w = b.w, .y = ybase,
                       .idx_type = LLEP_INDEX_I64, .x_dtype = LLEP_IO_F32,
                       .y_dtype = LLEP_IO_F32 };

        ck_assert_int_eq(llep_forward_ex(l, &io), 0);
    }
    for (int s = 0; s < S; s++) {
        llep_io io = { .tokens = 50, .x = b.x, .topk_idx = s % 2 ? (void *)b.idx64 : b.idx,
                       .idx_type = s % 2 ? LLEP_INDEX_I64 : LLEP_INDEX_I32,
                       .topk_w = b.w, .x_dtype = LLEP_IO_F32,
                       .y_dtype = s < 2 ? LLEP_IO_F32 : LLEP_IO_BF16 };

        ys[s] = io.y = alloc_elems((size_t)50 * D, s < 2 ? LLEP_DTYPE_F32 : LLEP_DTYPE_BF16);
        ck_assert_int_eq(llep_submit_ex(l, &io, &tickets[s]), 0);
    }
    for (int s = S - 1; s >= 0; s--) {
        ck_assert_int_eq(llep_wait(c, tickets[s], -1), 0);
        for (size_t i = 0; i < (size_t)50 * D; i++)
            ck_assert(get(ys[s], s < 2 ? LLEP_DTYPE_F32 : LLEP_DTYPE_BF16, i) == ybase[i]);
        free(ys[s]);
    }
    free(ybase);
    batch_fini(&b);
    llep_layer_release(l);
    framed_fini(&f);
    llep_test_f32_weights_fini(&cn.w);
    llep_disconnect(c);
}
END_TEST

/* A refused forward_ex: -EINVAL with a message saying what, y untouched. */
static void assert_io_refused(llep_layer *l, const llep_io *io, const char *what) {
    llep_client *c = llep_layer_client(l);
    int r = llep_forward_ex(l, io);

    ck_assert_int_eq(r, -EINVAL);
    ck_assert_msg(strstr(llep_client_error(c), what), "message '%s' does not say '%s'",
                  llep_client_error(c), what);
}

START_TEST(test_io_checks) {
    llep_client *c = llep_test_connect(sock_path);
    float *y = malloc((size_t)5 * D * sizeof(float));
    llep_layer *l;
    uint64_t ticket;
    canon cn;
    framed f;
    batch b;
    llep_io io, bad;

    canon_init(&cn, LLEP_DTYPE_F32);
    framed_init(&f, &cn, LLEP_GATE_UP_SEPARATE, LLEP_DOWN_HD);
    l = llep_test_layer_create(c, "checks", &f.d);
    batch_init(&b, 5);
    ck_assert_ptr_nonnull(y);
    for (size_t i = 0; i < (size_t)5 * D; i++)
        y[i] = 12345.0f;
    io = (llep_io){ .tokens = 5, .x = b.x, .topk_idx = b.idx64, .idx_type = LLEP_INDEX_I64,
                    .topk_w = b.w, .y = y };

    ck_assert_int_eq(llep_forward_ex(l, NULL), -EINVAL);
    ck_assert_ptr_nonnull(strstr(llep_client_error(c), "io is NULL"));
    ck_assert_int_eq(llep_submit_ex(l, NULL, &ticket), -EINVAL);
    ck_assert_int_eq(llep_forward_ex(NULL, &io), -EINVAL);
    /* int64 ids outside [0, N): named by token and slot. 2^32 + 1 would be 1 as int32. */
    b.idx64[7] = -1;
    assert_io_refused(l, &io, "topk_idx[3][1] = -1");
    b.idx64[7] = N;
    assert_io_refused(l, &io, "topk_idx[3][1] = 6 is not one of its experts (0 to 5)");
    b.idx64[7] = (1ll << 32) + 1;
    assert_io_refused(l, &io, "topk_idx[3][1] = 4294967297");
    b.idx64[7] = INT64_MIN;
    assert_io_refused(l, &io, "topk_idx[3][1]");
    b.idx64[7] = 1;
    /* int32 ids are checked here too. */
    bad = io;
    bad.topk_idx = b.idx;
    bad.idx_type = LLEP_INDEX_I32;
    b.idx[0] = 99;
    assert_io_refused(l, &bad, "topk_idx[0][0] = 99");
    b.idx[0] = 0;
    bad = io;
    bad.idx_type = (enum llep_index_type)2;
    assert_io_refused(l, &bad, "idx_type 2");
    bad = io;
    bad.x_dtype = (enum llep_io_dtype)3;
    assert_io_refused(l, &bad, "x_dtype 3");
    bad = io;
    bad.w_dtype = (enum llep_io_dtype)-1;
    assert_io_refused(l, &bad, "w_dtype -1");
    bad = io;
    bad.y_dtype = (enum llep_io_dtype)9;
    assert_io_refused(l, &bad, "y_dtype 9");
    bad = io;
    bad.topk_w = NULL;
    assert_io_refused(l, &bad, "topk_w is NULL");
    for (size_t i = 0; i < (size_t)5 * D; i++)
        ck_assert(y[i] == 12345.0f);
    /* Non-finite weights still reach the daemon's check, in bf16 too. */
    {
        uint16_t wb[5 * K];

        for (size_t i = 0; i < 5 * K; i++)
            wb[i] = to_bf16(b.w[i]);
        wb[3] = 0x7f80;     /* +inf */
        bad = io;
        bad.topk_w = wb;
        bad.w_dtype = LLEP_IO_BF16;
        ck_assert_int_eq(llep_forward_ex(l, &bad), -EINVAL);
    }
    /* tokens 0: nothing to check, nothing sent. */
    bad = (llep_io){ 0 };
    ck_assert_int_eq(llep_forward_ex(l, &bad), 0);
    ck_assert_int_eq(llep_submit_ex(l, &bad, &ticket), 0);
    ck_assert_int_eq(llep_wait(c, ticket, 0), 0);
    /* And the client goes on. */
    ck_assert_int_eq(llep_forward_ex(l, &io), 0);
    ck_assert_double_le(ref_error(&cn, &b, b.x, b.w, y, LLEP_DTYPE_F32), 1e-5);
    free(y);
    batch_fini(&b);
    llep_layer_release(l);
    framed_fini(&f);
    llep_test_f32_weights_fini(&cn.w);
    llep_disconnect(c);
}
END_TEST

/* ---- programs linked against earlier versions ------------------------------------------------ */

/* The desc of 0.1.0 and 0.2.0: up to group_timeout_ms, 112 bytes with its padding. */
typedef struct desc_0 {
    uint32_t num_experts, top_k, hidden, inter;
    enum llep_dtype dtype;
    enum llep_act act;
    float act_alpha, act_limit;
    const void *w_gate, *w_up, *w_down;
    const void *b_gate, *b_up, *b_down;
    enum llep_policy policy;
    float alpha, lambda;
    uint32_t min_tokens, group;
    enum llep_scope scope;
    uint32_t group_timeout_ms;
} desc_0;

typedef int (*create_0_fn)(llep_client *, const char *, const desc_0 *, llep_layer **);
typedef int (*get_desc_0_fn)(const llep_layer *, desc_0 *);
typedef int (*model_get_0_fn)(llep_client *, const char *, void *);

/* The calls of LLEP_CLIENT_0 and 0.1 read and write only the structs those versions had: a
 * desc_0 in a heap block of exactly its size (AddressSanitizer catches any access past it),
 * whose padding holds garbage the library must not take for the new fields. */
START_TEST(test_earlier_versions) {
    create_0_fn create_0 = (create_0_fn)dlvsym(RTLD_DEFAULT, "llep_layer_create",
                                               "LLEP_CLIENT_0");
    get_desc_0_fn get_desc_0 = (get_desc_0_fn)dlvsym(RTLD_DEFAULT, "llep_layer_get_desc",
                                                     "LLEP_CLIENT_0");
    model_get_0_fn model_get_0 = (model_get_0_fn)dlvsym(RTLD_DEFAULT, "llep_model_get",
                                                        "LLEP_CLIENT_0.1");
    llep_client *c = llep_test_connect(sock_path);
    desc_0 *d = malloc(sizeof(*d)), *got = malloc(sizeof(*got));
    unsigned char info[160];
    size_t ny = (size_t)9 * D;
    float *y0 = malloc(ny * sizeof(float)), *y1 = malloc(ny * sizeof(float));
    llep_layer *l0, *l1;
    canon cn;
    framed f;
    batch b;

    ck_assert_ptr_nonnull(create_0);
    ck_assert_ptr_nonnull(get_desc_0);
    ck_assert_ptr_nonnull(model_get_0);
    ck_assert_ptr_ne((void *)create_0, (void *)llep_layer_create);
    ck_assert_uint_eq(sizeof(desc_0), 112);
    ck_assert_ptr_nonnull(d);
    ck_assert_ptr_nonnull(got);
    canon_init(&cn, LLEP_DTYPE_F32);
    framed_init(&f, &cn, LLEP_GATE_UP_SEPARATE, LLEP_DOWN_HD);
    memset(d, 0xa5, sizeof(*d));    /* garbage in the padding where gate_up_layout is now */
    *d = (desc_0){ .num_experts = N, .top_k = K, .hidden = D, .inter = H,
                   .w_gate = f.g, .w_up = f.u, .w_down = f.dn, .b_gate = f.bg, .b_up = f.bu,
                   .b_down = f.bd };
    memset((char *)d + offsetof(desc_0, group_timeout_ms) + 4, 0xa5, 4);
    ck_assert_int_eq(create_0(c, "old", d, &l0), 0);
    l1 = llep_test_layer_create(c, "new", &f.d);
    memset(got, 0xa5, sizeof(*got));
    ck_assert_int_eq(get_desc_0(l0, got), 0);
    ck_assert_uint_eq(got->hidden, D);
    ck_assert_uint_eq(got->inter, H);
    ck_assert_ptr_null(got->w_gate);
    ck_assert_uint_eq(((unsigned char *)got)[sizeof(*got) - 1], 0xa5);  /* padding untouched */

    batch_init(&b, 9);
    ck_assert_int_eq(llep_forward(l0, 9, b.x, b.idx, b.w, y0), 0);
    ck_assert_int_eq(llep_forward(l1, 9, b.x, b.idx, b.w, y1), 0);
    ck_assert_mem_eq(y0, y1, ny * sizeof(float));
    ck_assert_int_eq(model_get_0(c, "no-such-model", info), -ENOENT);
    ck_assert_int_eq(model_get_0(c, "no-such-model", NULL), -EINVAL);

    free(y0);
    free(y1);
    free(d);
    free(got);
    batch_fini(&b);
    llep_layer_release(l0);
    llep_layer_release(l1);
    framed_fini(&f);
    llep_test_f32_weights_fini(&cn.w);
    llep_disconnect(c);
}
END_TEST

static Suite *client_layout_suite(void) {
    Suite *s = suite_create("client-layout");
    TCase *tc = tcase_create("llepd");

    suite_add_tcase(s, tc);
    if (!getenv("LLEPD") || !getenv("LLEPD")[0]) {
        fprintf(stderr, "LLEPD is not set: skipping the tests against a running llepd\n");
        return s;
    }
    tcase_add_checked_fixture(tc, setup_daemon, teardown_daemon);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_weight_layouts);
    tcase_add_test(tc, test_layouts_held_canonical);
    tcase_add_test(tc, test_layout_checks);
    tcase_add_test(tc, test_io_types);
    tcase_add_test(tc, test_submit_ex);
    tcase_add_test(tc, test_io_checks);
    tcase_add_test(tc, test_earlier_versions);
    return s;
}

int main(void) {
    return llep_test_run_suite(client_layout_suite(), CK_ENV);
}
