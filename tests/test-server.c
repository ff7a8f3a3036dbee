/* llepd's server as a library (daemon/server/): the server runs on a libuv loop in a thread of
 * this test, without a llepd process and without the cluster; clients of libllep-client
 * connect to its socket, create a layer, and run forwards that are checked against the float64
 * reference. The server stops when the test asks it over a uv_async, as llepd stops on
 * SIGTERM: a client still connected then gets an error, never a wrong output. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "client-fixtures.h"
#include "backend.h"
#include "config.h"
#include "fixtures.h"
#include "handlers.h"
#include "llep/client.h"
#include "ref-moe.h"
#include "server.h"

#define N 8u
#define K 2u
#define D 32u
#define H 16u

/* A server on its own loop and thread. */
typedef struct in_proc {
    uv_loop_t loop;
    uv_async_t stop;
    llepd_server srv;
    llep_config cfg;
    pthread_t thread;
    char dir[128], sock[192];
} in_proc;

static void on_stop(uv_async_t *a) {
    in_proc *p = a->data;

    llepd_server_stop(&p->srv, "the test");
}

/* Stopped and idle: the last handle of ours closes and the loop runs dry. */
static void on_idle_after_stop(llepd_server *srv) {
    in_proc *p = llepd_container_of(srv, in_proc, srv);

    uv_close((uv_handle_t *)&p->stop, NULL);
}

static void *loop_main(void *arg) {
    in_proc *p = arg;

    uv_run(&p->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void config_ok(llep_config *c, const char *key, const char *value) {
    char err[256] = "";

    ck_assert_msg(llep__config_set(c, key, value, err, sizeof(err)) == 0, "%s: %s", key, err);
}

static void server_start(in_proc *p) {
    char err[512] = "";

    memset(p, 0, sizeof(*p));
    llep_test_tmpdir(p->dir, sizeof(p->dir), "llep-test-server");
    snprintf(p->sock, sizeof(p->sock), "%s/llepd.sock", p->dir);
    llep__config_init(&p->cfg);
    config_ok(&p->cfg, "socket", p->sock);
    config_ok(&p->cfg, "backend", "cpu");
    config_ok(&p->cfg, "devices", "4");
    config_ok(&p->cfg, "device-memory", "64M");
    config_ok(&p->cfg, "min-tokens", "4");
    ck_assert_int_eq(llep__config_finish(&p->cfg, err, sizeof(err)), 0);
    ck_assert_int_eq(uv_loop_init(&p->loop), 0);
    ck_assert_msg(llepd_server_init(&p->srv, &p->loop, &p->cfg, err, sizeof(err)) == 0, "%s",
                  err);
    p->srv.backend_ops = &llep__backend_cpu;
    p->srv.on_idle_after_stop = on_idle_after_stop;
    llepd_handlers_init(&p->srv);
    ck_assert_msg(llepd_server_listen(&p->srv, -1, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(uv_async_init(&p->loop, &p->stop, on_stop), 0);
    p->stop.data = p;
    ck_assert_int_eq(pthread_create(&p->thread, NULL, loop_main, p), 0);
}

/* Asks the loop to stop, waits for it to run dry, and frees the server. */
static void server_stop(in_proc *p) {
    ck_assert_int_eq(uv_async_send(&p->stop), 0);
    ck_assert_int_eq(pthread_join(p->thread, NULL), 0);
    llepd_server_fini(&p->srv);
    ck_assert_int_eq(uv_loop_close(&p->loop), 0);
    llep__config_fini(&p->cfg);
    llep_test_rm_rf(p->dir);
}

/* One layer's weights and a skewed batch (70 % of the slots on expert 0). */
typedef struct work {
    llep_test_f32_weights w;
    float *x, *gw, *y;
    int32_t idx[64 * K];
    uint32_t tokens;
} work;

static void work_init(work *wk, uint64_t seed, uint32_t tokens) {
    uint64_t s = seed;

    ck_assert_uint_le(tokens, 64);
    llep_test_f32_weights_init(&wk->w, rng_sym, &s, N, D, H, 0.2f, 0.2f, 0);
    wk->tokens = tokens;
    wk->x = llep_test_random_floats(rng_sym, &s, (size_t)tokens * D, 1.0f);
    wk->gw = llep_test_random_floats(rng_sym, &s, (size_t)tokens * K, 0.5f);
    wk->y = calloc((size_t)tokens * D, sizeof(float));
    ck_assert_ptr_nonnull(wk->y);
    for (uint32_t i = 0; i < tokens * K; i++)
        wk->idx[i] = rng_unit(&s) < 0.7 ? 0 : (int32_t)(1 + rng_below(&s, N - 1));
}

static void work_fini(work *wk) {
    llep_test_f32_weights_fini(&wk->w);
    free(wk->x);
    free(wk->gw);
    free(wk->y);
}

static llep_layer_desc desc_of(const work *wk, enum llep_policy policy) {
    return (llep_layer_desc){ .num_experts = N, .top_k = K, .hidden = D, .inter = H,
                              .w_gate = wk->w.wg, .w_up = wk->w.wu, .w_down = wk->w.wd,
                              .policy = policy };
}

static void assert_exact(const work *wk) {
    double *ref = malloc((size_t)wk->tokens * D * sizeof(double));
    llep_ref_f32 l = { .n = N, .d = D, .h = H, .wg = wk->w.wg, .wu = wk->w.wu, .wd = wk->w.wd };

    ck_assert_ptr_nonnull(ref);
    llep_ref_moe_f32_layer(&l, wk->tokens, K, wk->x, wk->idx, wk->gw, ref);
    double err = llep_test_rel_l2(wk->y, ref, (size_t)wk->tokens * D);
    free(ref);
    ck_assert_msg(err <= 1e-5, "relative L2 error %g over 1e-5", err);
}

/* Two clients, EP and LLEP layers of the same weights: both exact, and the server counted
 * the steps of each mode. */
START_TEST(test_forwards_exact) {
    in_proc p;
    work wk;
    llep_layer *ep = NULL, *llep = NULL, *again = NULL;

    server_start(&p);
    work_init(&wk, 11, 48);
    llep_client *a = llep_test_connect(p.sock), *b = llep_test_connect(p.sock);
    llep_layer_desc de = desc_of(&wk, LLEP_POLICY_EP), dl = desc_of(&wk, LLEP_POLICY_LLEP);
    ck_assert_int_eq(llep_layer_create(a, "ep", &de, &ep), 0);
    ck_assert_int_eq(llep_layer_create(a, "llep", &dl, &llep), 0);
    ck_assert_int_eq(llep_layer_create(b, "llep", NULL, &again), 0);   /* attach */
    llep_layer *const layers[] = { ep, llep, again };
    for (size_t i = 0; i < 3; i++) {
        memset(wk.y, 0, (size_t)wk.tokens * D * sizeof(float));
        ck_assert_int_eq(llep_forward(layers[i], wk.tokens, wk.x, wk.idx, wk.gw, wk.y), 0);
        assert_exact(&wk);
    }
    llep_disconnect(a);
    llep_disconnect(b);
    server_stop(&p);
    ck_assert_uint_eq(p.srv.steps, 3);
    ck_assert_uint_eq(p.srv.ep_steps, 1);
    ck_assert_uint_eq(p.srv.llep_steps, 2);
    work_fini(&wk);
}
END_TEST

/* A client still connected when the server stops: its next forward fails with an error and
 * leaves y as it was. */
START_TEST(test_stop_with_client) {
    in_proc p;
    work wk;
    llep_layer *l = NULL;

    server_start(&p);
    work_init(&wk, 12, 16);
    llep_client *c = llep_test_connect(p.sock);
    llep_layer_desc d = desc_of(&wk, LLEP_POLICY_AUTO);
    ck_assert_int_eq(llep_layer_create(c, "auto", &d, &l), 0);
    ck_assert_int_eq(llep_forward(l, wk.tokens, wk.x, wk.idx, wk.gw, wk.y), 0);
    assert_exact(&wk);
    server_stop(&p);
    for (size_t i = 0; i < (size_t)wk.tokens * D; i++)
        wk.y[i] = 42.0f;
    int r = llep_forward(l, wk.tokens, wk.x, wk.idx, wk.gw, wk.y);
    ck_assert_msg(r < 0, "a forward after the server stopped returned %d", r);
    for (size_t i = 0; i < (size_t)wk.tokens * D; i++)
        ck_assert_float_eq(wk.y[i], 42.0f);
    llep_disconnect(c);
    work_fini(&wk);
}
END_TEST

static Suite *server_suite(void) {
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("in-process");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_forwards_exact);
    tcase_add_test(tc, test_stop_with_client);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(server_suite());
    int failed;

    /* As llepd's main() does: a gone client is an error, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
