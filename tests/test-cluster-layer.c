/* Cluster-scope layers end to end: three llepd processes ($LLEPD, CPU backend, two devices
 * each) on loopback, a client on every node, one layer over all six devices.
 *
 *   exact           skewed routing, every node's output equals the float64 reference; a spill
 *                   that fits on the hot device's own node stays there (no expert weights cross
 *                   nodes, while a flat plan of the same loads would send them across), a
 *                   heavier skew sends weights across nodes and stays exact; a node-scope layer
 *                   runs beside it.
 *   cost_planner_steps  nodes with llepd's default planner (cost), each calibrated on its own:
 *                   every node plans with the origin's model (sent with the layer), so every
 *                   node shows the same plan, the steps are exact and none fails with a plan
 *                   mismatch; the loads LLA spills in `exact` are not spilled (a layer this
 *                   small gains nothing from it) until planner=lla is set on the origin.
 *   collective      a node whose client does not submit fails the step on every node with
 *                   -ETIMEDOUT and a message naming that node; the next step works.
 *   node_killed     SIGKILL one node mid-run: the others' steps fail naming it, a node-scope
 *                   layer keeps working; restarted, it gets its share back from the origin and
 *                   the cluster layer is exact again.
 *   node_stopped    SIGSTOP one node: steps fail naming it; SIGCONT: it keeps its share (same
 *                   layer uid) and steps are exact again. Run twice: the second time with the
 *                   communicator between nodes (below) up when the node stops, and a new one
 *                   carrying the steps after.
 *   origin_killed   SIGKILL the origin: the others' copies are orphaned, their steps say so;
 *                   created again from the restarted origin, the layer is exact again. Run
 *                   twice, as node_stopped.
 *   two_layers      two cluster layers of different origins step at the same time, exact.
 *   plan_mismatch   a node started with LLEPD_TEST_PLAN_MISMATCH=1 plans from skewed loads: the
 *                   hash exchange catches it, every node fails the step saying so, no output is
 *                   written, and every node's metrics endpoint (scraped with curl) counts it in
 *                   llep_errors_total{kind="failed_step"}.
 *   device_failed   device 1 of one node fails (LLEP_TEST_FAIL_DEVICE): the step fails on every
 *                   node naming it, no output written; with keep-host-weights the node puts its
 *                   experts back from its host copy of its share and later steps are exact
 *                   (node 2, the origin, node 1 over the communicator); without, a node asks
 *                   the origin for its share again and is exact once it is here, while the
 *                   origin's own experts are lost: every later step says which. Run five
 *                   times.
 *   communicator    every node started with LLEPD_TEST_XNODE=1: the origin starts the layer's
 *                   communicator between nodes (the CPU backend's socket transport, in place of
 *                   NCCL on GPUs), steps move to it once it is up and stay exact with weights
 *                   crossing nodes; a killed node's steps fail naming it, and once it is back a
 *                   new communicator carries the steps again.
 *   communicator_lost  node 2 drops its communicator after 3 steps without telling the others
 *                   (LLEPD_TEST_XNODE_DROP): they learn it from its next plan hash, close theirs
 *                   and run that step over the peer links, exact and without a failure; then a
 *                   new communicator (epoch 2) carries the steps.
 *   communicator_refused  node 1 has no transport (started with --cluster-communicator off):
 *                   it refuses to join, every node says why, and the steps stay on the peer
 *                   links, exact.
 *   communicator_shared  two layers of different origins on the same nodes share one
 *                   communicator (one transport opened per node and epoch, both layers showing
 *                   "socket (up, epoch E, set 0,1,2)"), step at once from clients on every
 *                   node with every step over it, exact; node 2 killed fails both layers'
 *                   steps naming it, and once back one new epoch carries both.
 *
 * Heartbeats every 100 ms and a 1 s peer timeout keep it to seconds. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fixtures.h"
#include "llep/client.h"
#include "plan.h"
#include "ref-moe.h"
#include "test-nodes.h"

#define NODES 3
#define PPN 2
#define N 12
#define K 2
#define D 16
#define H 8
#define TOKENS 50

static char tmpdir[64];
static char llepctl[PATH_MAX];
static char peers[256];
static uint16_t ports[NODES];
static pid_t pids[NODES];
static const llep_test_nodes nodes = { NODES, tmpdir, sizeof(tmpdir), llepctl, sizeof(llepctl),
                                       peers, sizeof(peers), ports, pids };
/* Nodes started with the test hook LLEPD_TEST_XNODE=1 (a communicator between nodes), and
 * nodes started with --cluster-communicator off. */
static unsigned xnode_nodes, comm_off_nodes;
/* Nodes that drop their communicator unannounced after 3 steps (LLEPD_TEST_XNODE_DROP). */
static unsigned drop_nodes;

/* Nodes started with --metrics-listen on 127.0.0.1 at these ports (0: none). */
static uint16_t metrics_ports[NODES];
/* Nodes started with llepd's default planner (cost) rather than --planner lla; with
 * shape_models, and calibrate-shapes on (llepd's default; else off with the cost planner). */
static bool cost_planner, shape_models;
/* A node started with LLEP_TEST_FAIL_DEVICE=fail_at (-1: none), and nodes started with
 * --keep-host-weights yes. */
static int fail_node = -1;
static const char *fail_at;
static unsigned keep_nodes;

static void setup(void) {
    llep_test_nodes_setup(&nodes, "test-clayer");
}

static void teardown(void) {
    llep_test_nodes_teardown(&nodes);
    cost_planner = false;
    shape_models = false;
    fail_node = -1;
    keep_nodes = 0;
    xnode_nodes = 0;
}

static void start_node(int node, bool mismatch) {
    char sock[128], maddr[32];
    const char *env[5], *args[] = { "--peer-heartbeat-ms", "100", "--peer-timeout-ms", "1000",
                                    "--cluster-communicator",
                                    comm_off_nodes & (1u << node) ? "off" : "auto", NULL, NULL,
                                    NULL, NULL, NULL, NULL, NULL };
    char fail_env[64];
    int a = 6, e = 0;

    if (metrics_ports[node]) {
        snprintf(maddr, sizeof(maddr), "127.0.0.1:%u", metrics_ports[node]);
        args[a++] = "--metrics-listen";
        args[a++] = maddr;
    }
    /* The tests of spills across nodes check LLA's plans; cost_planner, llepd's default, with
     * the reference model only: a model measured at this tiny layer's own shape (loaded from
     * the suites' shared state directory when an earlier run stored it) prices its chunks so
     * that spilling pays, and the test needs a plan that is not LLA's. */
    if (!cost_planner) {
        args[a++] = "--planner";
        args[a++] = "lla";
    } else if (!shape_models) {
        args[a++] = "--calibrate-shapes";
        args[a++] = "no";
    }

    if (keep_nodes & (1u << node)) {
        args[a++] = "--keep-host-weights";
        args[a++] = "yes";
    }

    if (mismatch)
        env[e++] = "LLEPD_TEST_PLAN_MISMATCH=1";
    if (node == fail_node) {
        snprintf(fail_env, sizeof(fail_env), "LLEP_TEST_FAIL_DEVICE=%s", fail_at);
        env[e++] = fail_env;
    }
    if (xnode_nodes & (1u << node))
        env[e++] = "LLEPD_TEST_XNODE=1";
    if (drop_nodes & (1u << node))
        env[e++] = "LLEPD_TEST_XNODE_DROP=3";
    env[e] = NULL;
    llep_test_node_sock(&nodes, node, sock, sizeof(sock));
    unlink(sock);
    llep_test_node_spawn(&nodes, node, "2", peers, args, env);
}

/* llepctl --json VERB [ARG]; the parsed output (caller puts it). Its stderr is dropped: polled
 * before the daemon listens, "cannot connect" is expected. */
static json_object *llepctl_json(int node, const char *verb, const char *arg) {
    const char *args[] = { "--json", verb, arg, NULL };
    llep_test_output o = llep_test_node_llepctl(&nodes, node, args);
    json_object *j = o.status == 0 ? json_tokener_parse(o.out) : NULL;

    llep_test_output_free(&o);
    return j;
}

/* The exit status of `llepctl set LAYER KEY=VALUE` on node. */
static int llepctl_set(int node, const char *layer, const char *kv) {
    const char *args[] = { "set", layer, kv, NULL };
    llep_test_output o = llep_test_node_llepctl(&nodes, node, args);

    fputs(o.err, stderr);
    llep_test_output_free(&o);
    return o.status;
}

static bool all_peers_up(int node) {
    json_object *o = llepctl_json(node, "peers", NULL), *list, *st;
    bool up = o && json_object_object_get_ex(o, "peers", &list);

    for (size_t i = 0; up && i < json_object_array_length(list); i++)
        up = json_object_object_get_ex(json_object_array_get_idx(list, i), "state", &st) &&
             strcmp(json_object_get_string(st), "up") == 0;
    json_object_put(o);
    return up;
}

static void wait_cluster_up(void) {
    uint64_t t0 = now_ms();

    for (int i = 0; i < NODES; i++)
        while (!all_peers_up(i)) {
            ck_assert_msg(now_ms() - t0 < 20000, "node %d: peers not up within 20 s", i);
            sleep_ms(50);
        }
}

/* A field of layer `name` in `llepctl --json layers` on node; -1 when the layer is not there. */
static int64_t layer_field(int node, const char *name, const char *field) {
    json_object *o = llepctl_json(node, "layers", NULL), *list, *v;
    int64_t r = -1;

    if (o && json_object_object_get_ex(o, "layers", &list))
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            json_object *l = json_object_array_get_idx(list, i);
            if (json_object_object_get_ex(l, "name", &v) &&
                strcmp(json_object_get_string(v), name) == 0 &&
                json_object_object_get_ex(l, field, &v))
                r = json_object_get_int64(v);
        }
    json_object_put(o);
    return r;
}

/* A string field of layer `name` in `llepctl --json layers` on node, into buf ("" if none). */
static const char *layer_string(int node, const char *name, const char *field, char *buf,
                                size_t len) {
    json_object *o = llepctl_json(node, "layers", NULL), *list, *v;

    buf[0] = '\0';
    if (o && json_object_object_get_ex(o, "layers", &list))
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            json_object *l = json_object_array_get_idx(list, i);
            if (json_object_object_get_ex(l, "name", &v) &&
                strcmp(json_object_get_string(v), name) == 0 &&
                json_object_object_get_ex(l, field, &v))
                snprintf(buf, len, "%s", json_object_get_string(v));
        }
    json_object_put(o);
    return buf;
}

/* ---- the layer and its reference ---------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15u; /* xorshift64 */
static llep_test_f32_weights wts;

static void weights_init(void) {
    llep_test_f32_weights_init(&wts, xorshift_sym, &rng, N, D, H, 0.25f, 0.35f, 0.1f);
}

static void weights_fini(void) {
    llep_test_f32_weights_fini(&wts);
}

static llep_layer_desc layer_desc(bool with_weights, uint32_t group) {
    llep_layer_desc d;

    memset(&d, 0, sizeof(d));
    d.num_experts = N;
    d.top_k = K;
    d.hidden = D;
    d.inter = H;
    d.dtype = LLEP_DTYPE_F32;
    d.act = LLEP_ACT_SWIGLU;
    d.policy = LLEP_POLICY_LLEP;
    d.alpha = 1.2f;
    d.min_tokens = 1;
    d.group = group;
    d.group_timeout_ms = 1500;
    d.scope = LLEP_SCOPE_CLUSTER;
    if (with_weights) {
        d.w_gate = wts.wg;
        d.w_up = wts.wu;
        d.w_down = wts.wd;
        d.b_gate = wts.bg;
        d.b_up = wts.bu;
        d.b_down = wts.bd;
    }
    return d;
}

typedef struct batch {
    float x[TOKENS * D], w[TOKENS * K], y[TOKENS * D];
    int32_t idx[TOKENS * K];
} batch;

static void assert_exact(const batch *b, int node) {
    double ref[TOKENS * D], err;
    llep_ref_f32 l = { .n = N, .d = D, .h = H, .act = LLEP_ACT_SWIGLU, .wg = wts.wg,
                       .wu = wts.wu, .wd = wts.wd, .bg = wts.bg, .bu = wts.bu, .bd = wts.bd };

    llep_ref_moe_f32_layer(&l, TOKENS, K, b->x, b->idx, b->w, ref);
    err = llep_test_rel_l2(b->y, ref, TOKENS * D);
    ck_assert_msg(err <= 1e-5, "node %d: relative L2 error %g over 1e-5", node, err);
}

/* Tokens with random inputs; the experts come from `slots` (TOKENS * K of them). */
static void batch_fill(batch *b, const int32_t *slots) {
    for (size_t i = 0; i < TOKENS * D; i++)
        b->x[i] = xorshift_sym(&rng);
    for (size_t i = 0; i < TOKENS * K; i++) {
        b->w[i] = 0.5f + 0.5f * xorshift_sym(&rng);
        b->idx[i] = slots[i];
    }
    memset(b->y, 0xff, sizeof(b->y)); /* NaN: an unwritten output cannot pass */
}

/* Slots over the three nodes with these global loads per expert, in a shuffled order. */
static void designed_slots(const uint32_t *loads, int32_t *slots) {
    size_t n = 0;

    for (int32_t x = 0; x < N; x++)
        for (uint32_t i = 0; i < loads[x]; i++)
            slots[n++] = x;
    ck_assert_uint_eq(n, (size_t)NODES * TOKENS * K);
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = xorshift_next(&rng) % (i + 1);
        int32_t t = slots[i];
        slots[i] = slots[j];
        slots[j] = t;
    }
}

static void skewed_slots(double skew, int32_t *slots) {
    for (size_t i = 0; i < (size_t)NODES * TOKENS * K; i++)
        slots[i] = xorshift_skewed(&rng, skew, N);
}

/* ---- clients ------------------------------------------------------------------------------ */

typedef struct node_client {
    int node;
    llep_client *c;
    llep_layer *l;
    batch b;
    int r;
    char err[256];
} node_client;

static void client_open_named(node_client *nc, int node, const char *name, bool create,
                              uint32_t group) {
    char sock[128];
    llep_layer_desc d = layer_desc(create, group);

    nc->node = node;
    llep_test_node_sock(&nodes, node, sock, sizeof(sock));
    int r = llep_connect(sock, &nc->c);
    ck_assert_msg(r == 0, "node %d: connect: %s", node, llep_strerror(r));
    r = llep_layer_create(nc->c, name, &d, &nc->l);
    ck_assert_msg(r == 0, "node %d: %s the cluster layer: %s: %s", node,
                  create ? "creating" : "attaching", llep_strerror(r),
                  llep_client_error(nc->c));
}

static void client_open(node_client *nc, int node, bool create, uint32_t group) {
    client_open_named(nc, node, "moe", create, group);
}

static void client_close(node_client *nc) {
    llep_layer_release(nc->l);
    llep_disconnect(nc->c);
}

static void *forward_thread(void *arg) {
    node_client *nc = arg;

    nc->r = llep_forward(nc->l, TOKENS, nc->b.x, nc->b.idx, nc->b.w, nc->b.y);
    snprintf(nc->err, sizeof(nc->err), "%s", nc->r ? llep_client_error(nc->c) : "");
    return NULL;
}

/* Fresh batches for the nodes in `which`, node i's slots at slots + i * TOKENS * K. */
static void fill_batches(node_client *nc, const int32_t *slots, unsigned which) {
    for (int i = 0; i < NODES; i++)
        if (which & (1u << i))
            batch_fill(&nc[i].b, slots + (size_t)i * TOKENS * K);
}

/* One forward on each of the nodes in `which` at once (a bit mask). */
static void forward_all(node_client *nc, unsigned which) {
    pthread_t th[NODES];

    for (int i = 0; i < NODES; i++)
        if (which & (1u << i))
            ck_assert_int_eq(pthread_create(&th[i], NULL, forward_thread, &nc[i]), 0);
    for (int i = 0; i < NODES; i++)
        if (which & (1u << i))
            pthread_join(th[i], NULL);
}

/* The forwards of the nodes in `which` failed with a message containing `text`, and wrote
 * nothing (batch_fill leaves NaN in y). */
static void expect_failed(const node_client *nc, unsigned which, const char *text) {
    for (int i = 0; i < NODES; i++) {
        if (!(which & (1u << i)))
            continue;
        ck_assert_msg(nc[i].r < 0, "node %d: the step ran", i);
        ck_assert_msg(strstr(nc[i].err, text), "node %d: '%s' does not say '%s'", i, nc[i].err,
                      text);
        ck_assert(isnan(nc[i].b.y[0]));
    }
}

static void start_cluster(node_client *nc, uint32_t group, bool mismatch_on_1) {
    for (int i = 0; i < NODES; i++)
        start_node(i, mismatch_on_1 && i == 1);
    wait_cluster_up();
    client_open(&nc[0], 0, true, group);
    for (int i = 1; i < NODES; i++)
        client_open(&nc[i], i, false, group);
}

static void run_exact(node_client *nc, const int32_t *slots);
static void wait_communicator(node_client *nc, int32_t *slots);

static void end_cluster(node_client *nc) {
    for (int i = 0; i < NODES; i++)
        client_close(&nc[i]);
    weights_fini();
}

/* The three nodes up, the layer on every node, and one exact step under skew. */
static void begin_cluster(node_client *nc, int32_t *slots) {
    weights_init();
    start_cluster(nc, 0, false);
    skewed_slots(0.6, slots);
    run_exact(nc, slots);
}

static void run_exact(node_client *nc, const int32_t *slots) {
    fill_batches(nc, slots, 7);
    forward_all(nc, 7);
    for (int i = 0; i < NODES; i++) {
        ck_assert_msg(nc[i].r == 0, "node %d: forward: %s: %s", i, llep_strerror(nc[i].r),
                      nc[i].err);
        assert_exact(&nc[i].b, i);
    }
}

/* SIGKILLs a node and drops its client: the other nodes' steps fail within 5 s, naming it. */
static void kill_node(node_client *nc, int32_t *slots, int node) {
    unsigned others = ((1u << NODES) - 1) & ~(1u << node);
    char name[16];

    llep_test_kill(&pids[node]);
    client_close(&nc[node]);
    uint64_t t0 = now_ms();
    for (;;) {
        fill_batches(nc, slots, others);
        forward_all(nc, others);
        bool all_failed = true;
        for (int i = 0; i < NODES; i++)
            all_failed = all_failed && (!(others & (1u << i)) || nc[i].r < 0);
        if (all_failed)
            break;
        ck_assert_msg(now_ms() - t0 < 5000, "steps still run 5 s after node %d died", node);
    }
    snprintf(name, sizeof(name), "node %d", node);
    expect_failed(nc, others, name);
}

/* Starts node 2 again, waits until the origin has given it its share, attaches its client. */
static void restart_node2(node_client *nc) {
    start_node(2, false);
    wait_cluster_up();
    uint64_t t0 = now_ms();
    while (layer_field(2, "moe", "nodes") != NODES) {
        ck_assert_msg(now_ms() - t0 < 10000, "node 2 did not get the layer back");
        sleep_ms(50);
    }
    client_open(&nc[2], 2, false, 0);
}

/* Transfers of a plan of these slots whose devices are on different nodes. */
static uint32_t cross_node_transfers(const int32_t *slots, uint32_t devices_per_node,
                                     uint32_t *ret_all) {
    uint64_t loads[N] = { 0 }, node_loads[NODES][N];
    const uint64_t *nl[NODES];
    llep_plan p;
    llep_plan_params pp;
    uint32_t cross = 0;

    memset(node_loads, 0, sizeof(node_loads));
    for (size_t i = 0; i < (size_t)NODES * TOKENS * K; i++) {
        loads[slots[i]]++;
        node_loads[i / (TOKENS * K)][slots[i]]++;
    }
    for (int j = 0; j < NODES; j++)
        nl[j] = node_loads[j];
    llep__plan_params_default(&pp);
    pp.policy = LLEP_POLICY_LLEP;
    pp.alpha = 1.2f; /* as the layer's desc (a float there) */
    pp.min_tokens = 1;
    pp.devices_per_node = devices_per_node;
    ck_assert_int_eq(llep__plan_init(&p, N, NODES * PPN), 0);
    ck_assert_int_eq(llep__plan_compute(&p, loads, &pp), 0);
    ck_assert_int_eq(llep__plan_node_traffic(&p, PPN, nl, NODES, NULL, &cross), 0);
    *ret_all = p.num_transfers;
    llep__plan_fini(&p);
    return cross;
}

/* ---- tests -------------------------------------------------------------------------------- */

/* Global loads: device 0 (experts 0, 1) is hot and its own node's device 1 has room for the
 * spill, while device 5 on node 2 is the least loaded of all. */
static const uint32_t on_node_loads[N] = { 90, 0, 15, 0, 30, 30, 30, 30, 36, 36, 3, 0 };

START_TEST(exact) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];
    uint32_t all;

    weights_init();
    start_cluster(nc, 1, false);

    /* The scenario means something: flat LLEP would send expert 0 to another node. */
    designed_slots(on_node_loads, slots);
    ck_assert_uint_gt(cross_node_transfers(slots, 0, &all), 0);
    ck_assert_uint_eq(cross_node_transfers(slots, PPN, &all), 0);
    ck_assert_uint_gt(all, 0);
    run_exact(nc, slots);
    for (int i = 0; i < NODES; i++) {
        ck_assert_int_eq(layer_field(i, "moe", "steps"), 1);
        ck_assert_int_eq(layer_field(i, "moe", "internode_weights"), 0);
        ck_assert_int_eq(layer_field(i, "moe", "nodes"), NODES);
    }
    /* The plan llepd ran: spills, each within a node. */
    json_object *plan = llepctl_json(0, "plan", "moe"), *tr, *v;
    ck_assert_ptr_nonnull(plan);
    ck_assert(json_object_object_get_ex(plan, "transfers", &tr));
    ck_assert_uint_gt(json_object_array_length(tr), 0);
    for (size_t i = 0; i < json_object_array_length(tr); i++) {
        json_object *t = json_object_array_get_idx(tr, i);
        ck_assert(json_object_object_get_ex(t, "src", &v));
        int src = json_object_get_int(v);
        ck_assert(json_object_object_get_ex(t, "dst", &v));
        ck_assert_int_eq(src / PPN, json_object_get_int(v) / PPN);
    }
    json_object_put(plan);

    /* Heavier skew: expert 0's remainder must cross nodes, and stays exact. */
    for (int round = 0; round < 3; round++) {
        skewed_slots(0.7, slots);
        run_exact(nc, slots);
    }
    ck_assert_int_gt(layer_field(0, "moe", "internode_weights"), 0);
    ck_assert_int_gt(layer_field(1, "moe", "internode_rows"), 0);

    /* Parameters come from the origin: set there, they hold on every node; elsewhere, refused. */
    ck_assert_int_ne(llepctl_set(1, "moe", "alpha=2"), 0);
    ck_assert_int_eq(llepctl_set(0, "moe", "alpha=2"), 0);
    skewed_slots(0.7, slots);
    run_exact(nc, slots);
    json_object *p0 = llepctl_json(0, "plan", "moe"), *p2 = llepctl_json(2, "plan", "moe"), *c0, *c2;
    ck_assert(p0 && p2 && json_object_object_get_ex(p0, "capacity", &c0) &&
              json_object_object_get_ex(p2, "capacity", &c2));
    ck_assert_int_eq(json_object_get_int64(c0), json_object_get_int64(c2));
    /* capacity = floor(alpha * floor(slots / P)) with alpha 2 */
    ck_assert_int_eq(json_object_get_int64(c0), 2 * ((NODES * TOKENS * K) / (NODES * PPN)));
    json_object_put(p0);
    json_object_put(p2);

    /* A node-scope layer beside it. */
    llep_layer_desc d = layer_desc(true, 0);
    llep_layer *local = NULL;
    d.scope = LLEP_SCOPE_NODE;
    ck_assert_int_eq(llep_layer_create(nc[0].c, "local", &d, &local), 0);
    skewed_slots(0.5, slots);
    batch_fill(&nc[0].b, slots);
    ck_assert_int_eq(llep_forward(local, TOKENS, nc[0].b.x, nc[0].b.idx, nc[0].b.w, nc[0].b.y),
                     0);
    assert_exact(&nc[0].b, 0);
    llep_layer_release(local);
    end_cluster(nc);
}
END_TEST

/* The transfers of the plan node ran last (llepctl plan), and the plan as a JSON string in
 * buf, less what differs per node. */
static size_t plan_transfers(int node, char *buf, size_t len) {
    json_object *plan = llepctl_json(node, "plan", "moe"), *tr;
    size_t n;

    ck_assert_ptr_nonnull(plan);
    ck_assert(json_object_object_get_ex(plan, "transfers", &tr));
    n = json_object_array_length(tr);
    json_object_object_del(plan, "layer_stats");
    snprintf(buf, len, "%s", json_object_to_json_string(plan));
    json_object_put(plan);
    return n;
}

/* The nodes' own calibrations differ; under the cost planner they all plan with the origin's
 * model (ClusterLayer.cost): the same plan on every node, exact, and a plan that is not LLA's
 * (switched to lla on the origin, the same loads spill). */
START_TEST(cost_planner_steps) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];
    char p0[8192], pi[8192];
    uint32_t all;
    size_t cost_tr;

    cost_planner = true;
    weights_init();
    start_cluster(nc, 1, false);

    /* LLA spills these loads (exact, above); a layer this small gains nothing from it. */
    designed_slots(on_node_loads, slots);
    ck_assert_uint_eq(cross_node_transfers(slots, PPN, &all), 0);
    ck_assert_uint_gt(all, 0);
    run_exact(nc, slots);
    cost_tr = plan_transfers(0, p0, sizeof(p0));
    for (int i = 1; i < NODES; i++) {
        ck_assert_uint_eq(plan_transfers(i, pi, sizeof(pi)), cost_tr);
        ck_assert_str_eq(pi, p0);
    }
    ck_assert_uint_lt(cost_tr, all);

    /* Skewed steps: exact on every node, no plan mismatch (the steps all ran). */
    for (int round = 0; round < 4; round++) {
        skewed_slots(0.7, slots);
        run_exact(nc, slots);
        plan_transfers(0, p0, sizeof(p0));
        for (int i = 1; i < NODES; i++) {
            plan_transfers(i, pi, sizeof(pi));
            ck_assert_str_eq(pi, p0);
        }
    }
    for (int i = 0; i < NODES; i++) {
        ck_assert_int_eq(layer_field(i, "moe", "steps"), 5);
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), 0);
    }

    /* The planner is the origin's: lla there, and the first loads spill as LLA spills them. */
    ck_assert_int_eq(llepctl_set(0, "moe", "planner=lla"), 0);
    designed_slots(on_node_loads, slots);
    run_exact(nc, slots);
    for (int i = 0; i < NODES; i++)
        ck_assert_uint_eq(plan_transfers(i, pi, sizeof(pi)), all);
    end_cluster(nc);
}
END_TEST

/* The origin has a model of the layer's shape (a node-scope layer of that shape made it
 * calibrate, or it loaded the stored one): the cluster layer plans with that model on every
 * node, sent with ClusterLayer, and the nodes' plans agree and stay exact. */
START_TEST(shape_model_sent) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];
    char sock[128], p0[8192], pi[8192];
    llep_client *c;
    llep_layer *local;

    cost_planner = shape_models = true;
    weights_init();
    for (int i = 0; i < NODES; i++)
        start_node(i, false);
    wait_cluster_up();
    llep_test_node_sock(&nodes, 0, sock, sizeof(sock));
    ck_assert_int_eq(llep_connect(sock, &c), 0);
    llep_layer_desc d = layer_desc(true, 0);
    d.scope = LLEP_SCOPE_NODE;
    ck_assert_msg(llep_layer_create(c, "local", &d, &local) == 0, "%s", llep_client_error(c));
    /* Not a timing check: up to 60 s for the measurement under ASan on a busy machine. */
    const char *ready = "of layer shape 16 x 8 f32";
    for (int i = 0; i < 6000 && !llep_test_node_log_has(&nodes, 0, ready); i++)
        usleep(10000);
    ck_assert(llep_test_node_log_has(&nodes, 0, ready));
    client_open(&nc[0], 0, true, 1);
    for (int i = 1; i < NODES; i++)
        client_open(&nc[i], i, false, 1);
    ck_assert(llep_test_node_log_has(&nodes, 0, "cluster layer 'moe' plans with the device cost "
                                                "model of its shape"));
    for (int round = 0; round < 4; round++) {
        skewed_slots(round == 3 ? 0.9 : 0.7, slots);
        run_exact(nc, slots);
        plan_transfers(0, p0, sizeof(p0));
        for (int i = 1; i < NODES; i++) {
            plan_transfers(i, pi, sizeof(pi));
            ck_assert_str_eq(pi, p0);
        }
    }
    for (int i = 0; i < NODES; i++)
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), 0);
    llep_layer_release(local);
    llep_disconnect(c);
    end_cluster(nc);
}
END_TEST

START_TEST(collective) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];
    uint64_t t0;

    weights_init();
    start_cluster(nc, 1, false);
    skewed_slots(0.5, slots);
    fill_batches(nc, slots, 7);
    t0 = now_ms();
    forward_all(nc, 3); /* node 2's client stays away */
    expect_failed(nc, 3, "node 2");
    for (int i = 0; i < 2; i++)
        ck_assert_msg(nc[i].r == -ETIMEDOUT, "node %d: %s", i, llep_strerror(nc[i].r));
    ck_assert_uint_lt(now_ms() - t0, 10000);
    run_exact(nc, slots);
    end_cluster(nc);
}
END_TEST

START_TEST(node_killed) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];

    begin_cluster(nc, slots);

    /* A node-scope layer on node 0, to show it keeps working. */
    llep_layer_desc d = layer_desc(true, 0);
    llep_layer *local = NULL;
    d.scope = LLEP_SCOPE_NODE;
    ck_assert_int_eq(llep_layer_create(nc[0].c, "local", &d, &local), 0);

    kill_node(nc, slots, 2);
    batch_fill(&nc[0].b, slots);
    ck_assert_int_eq(llep_forward(local, TOKENS, nc[0].b.x, nc[0].b.idx, nc[0].b.w, nc[0].b.y),
                     0);
    assert_exact(&nc[0].b, 0);

    /* Back: the origin sends node 2 its share again. */
    restart_node2(nc);
    for (int round = 0; round < 2; round++) {
        skewed_slots(0.6, slots);
        run_exact(nc, slots);
    }
    llep_layer_release(local);
    end_cluster(nc);
}
END_TEST

/* A node that stops answering (SIGSTOP) is found by the deadline or the peer timeout; when
 * it answers again its links come back, it keeps the layer it holds (same uid), and its
 * client's steps are exact again. */
START_TEST(node_stopped) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];

    xnode_nodes = _i ? 7u : 0u; /* the second run: over the communicator */
    begin_cluster(nc, slots);
    if (_i)
        wait_communicator(nc, slots);

    ck_assert_int_eq(kill(pids[2], SIGSTOP), 0);
    uint64_t t0 = now_ms();
    fill_batches(nc, slots, 3);
    forward_all(nc, 3);
    expect_failed(nc, 3, "node 2");
    ck_assert_uint_lt(now_ms() - t0, 5000);

    ck_assert_int_eq(kill(pids[2], SIGCONT), 0);
    wait_cluster_up();
    for (int round = 0; round < 20; round++) {
        skewed_slots(0.6, slots);
        fill_batches(nc, slots, 7);
        forward_all(nc, 7);
        if (nc[0].r == 0 && nc[1].r == 0 && nc[2].r == 0)
            break;
        /* Links may still be settling (node 2 learns late that its old ones died). */
        sleep_ms(200);
    }
    for (int i = 0; i < NODES; i++) {
        ck_assert_msg(nc[i].r == 0, "node %d after SIGCONT: %s: %s", i, llep_strerror(nc[i].r),
                      nc[i].err);
        assert_exact(&nc[i].b, i);
    }
    run_exact(nc, slots);
    if (_i)
        wait_communicator(nc, slots); /* a new one: node 2's link went down with the old */
    end_cluster(nc);
}
END_TEST

/* The origin goes away: the other nodes' copies are orphaned and their clients' steps say
 * so; once the origin is back and a client creates the layer again, clients that attach
 * again get exact results. */
START_TEST(origin_killed) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];

    xnode_nodes = _i ? 7u : 0u;
    begin_cluster(nc, slots);
    if (_i)
        wait_communicator(nc, slots);

    kill_node(nc, slots, 0);
    for (int i = 1; i < NODES; i++)
        ck_assert_int_eq(layer_field(i, "moe", "nodes"), -1); /* no longer listed */

    start_node(0, false);
    wait_cluster_up();
    for (int i = 1; i < NODES; i++)
        client_close(&nc[i]);
    client_open(&nc[0], 0, true, 0);
    for (int i = 1; i < NODES; i++)
        client_open(&nc[i], i, false, 0);
    skewed_slots(0.6, slots);
    run_exact(nc, slots);
    if (_i)
        wait_communicator(nc, slots); /* the new layer's own */
    end_cluster(nc);
}
END_TEST

/* Layer "moe" created on node 0 and "moe2" on node 1, each attached by a client on every other
 * node: a[i] and b[i] are node i's clients of them. */
static void open_two_layers(node_client *a, node_client *b) {
    client_open_named(&a[0], 0, "moe", true, 0);
    client_open_named(&b[1], 1, "moe2", true, 0);
    for (int i = 0; i < NODES; i++) {
        if (i != 0)
            client_open_named(&a[i], i, "moe", false, 0);
        if (i != 1)
            client_open_named(&b[i], i, "moe2", false, 0);
    }
}

/* One forward of both layers on every node at once (six clients), share_a and share_b of
 * their slots on the hot expert, each exact. */
static void run_both_exact(node_client *a, node_client *b, double share_a,
                           double share_b) {
    int32_t sa[NODES * TOKENS * K], sb[NODES * TOKENS * K];
    pthread_t th[2 * NODES];

    skewed_slots(share_a, sa);
    skewed_slots(share_b, sb);
    fill_batches(a, sa, 7);
    fill_batches(b, sb, 7);
    for (int i = 0; i < NODES; i++) {
        ck_assert_int_eq(pthread_create(&th[i], NULL, forward_thread, &a[i]), 0);
        ck_assert_int_eq(pthread_create(&th[NODES + i], NULL, forward_thread, &b[i]), 0);
    }
    for (int i = 0; i < 2 * NODES; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < NODES; i++) {
        ck_assert_msg(a[i].r == 0 && b[i].r == 0, "node %d: %s / %s", i, a[i].err, b[i].err);
        assert_exact(&a[i].b, i);
        assert_exact(&b[i].b, i);
    }
}

/* Two cluster layers stepping at the same time, one created on node 0 and one on node 1:
 * their messages keep apart and every output is exact. */
START_TEST(two_layers) {
    node_client a[NODES], b[NODES];

    weights_init();
    for (int i = 0; i < NODES; i++)
        start_node(i, false);
    wait_cluster_up();
    open_two_layers(a, b);
    ck_assert_int_eq(layer_field(2, "moe2", "origin"), 1);
    for (int round = 0; round < 3; round++)
        run_both_exact(a, b, 0.7, 0.5);
    for (int i = 0; i < NODES; i++) {
        client_close(&a[i]);
        client_close(&b[i]);
    }
    weights_fini();
}
END_TEST

/* Metrics ports for every node, none of them a peer port. */
static void pick_metrics_ports(void) {
    for (int i = 0; i < NODES; i++) {
        bool taken;
        do {
            metrics_ports[i] = llep_test_free_port();
            taken = false;
            for (int j = 0; j < NODES; j++)
                taken |= ports[j] == metrics_ports[i] || (j < i && metrics_ports[j] ==
                                                                      metrics_ports[i]);
        } while (taken);
    }
}

/* The value of the sample `series` (name and labels as written) in node's /metrics, scraped
 * with curl; -1 when the scrape fails or the sample is not there. */
static long long scrape(int node, const char *series) {
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/metrics", metrics_ports[node]);
    const char *argv[] = { "/usr/bin/curl", "-sf", "--max-time", "10", url, NULL };
    ck_assert_msg(access(argv[0], X_OK) == 0, "no %s (scripts/install-deps.sh installs curl)",
                  argv[0]);
    llep_test_output o = llep_test_run(argv, NULL);
    long long v = -1;
    size_t n = strlen(series);

    for (const char *l = o.out; o.status == 0 && l && *l; l = strchr(l, '\n'), l = l ? l + 1 : l)
        if (strncmp(l, series, n) == 0 && l[n] == ' ')
            v = strtoll(l + n + 1, NULL, 10);
    llep_test_output_free(&o);
    return v;
}

START_TEST(plan_mismatch) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];
    const char *failed = "llep_errors_total{kind=\"failed_step\"}";

    weights_init();
    pick_metrics_ports();
    start_cluster(nc, 1, true);
    for (int i = 0; i < NODES; i++)
        ck_assert_int_eq(scrape(i, failed), 0);
    skewed_slots(0.5, slots);
    fill_batches(nc, slots, 7);
    forward_all(nc, 7);
    expect_failed(nc, 7, "plan hash mismatch");
    for (int i = 0; i < NODES; i++) {
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), 1);
        /* The failed cluster step counts among the node's errors by kind. */
        ck_assert_int_eq(scrape(i, failed), 1);
    }
    end_cluster(nc);
}
END_TEST

/* Every node's forward of one step: true when all ran (then each is exact), false when all
 * failed (then none wrote its y); a step that ran on some nodes only fails the test. */
static bool step_all(node_client *nc, double skew, int32_t *slots) {
    int ok = 0;

    skewed_slots(skew, slots);
    fill_batches(nc, slots, 7);
    forward_all(nc, 7);
    for (int i = 0; i < NODES; i++)
        ok += nc[i].r == 0;
    ck_assert_msg(ok == 0 || ok == NODES, "a cluster step ran on %d of %d nodes", ok, NODES);
    for (int i = 0; i < NODES && ok; i++)
        assert_exact(&nc[i].b, i);
    return ok == NODES;
}

/* The failed node's own clients read its error; the others read "node F reports: " before
 * it. Every message names the layer. */
static void expect_failed_from(const node_client *nc, int from, const char *text) {
    char theirs[256];

    snprintf(theirs, sizeof(theirs), "node %d reports: %s", from, text);
    for (int i = 0; i < NODES; i++) {
        expect_failed(nc, 1u << i, i == from ? text : theirs);
        expect_failed(nc, 1u << i, "layer 'moe'");
    }
}

/* The layer created by the client of node `origin`, the others attaching. */
static void start_cluster_at(node_client *nc, int origin) {
    for (int i = 0; i < NODES; i++)
        start_node(i, false);
    wait_cluster_up();
    client_open(&nc[origin], origin, true, 1);
    for (int i = 0; i < NODES; i++)
        if (i != origin)
            client_open(&nc[i], i, false, 1);
}

/* A device of one node fails under a cluster layer (LLEP_TEST_FAIL_DEVICE=1@2 on that node:
 * device 1 fails in the second step computing on it). The steps before are exact; the failing
 * step fails on every node, naming the device, and writes no output anywhere (no node waits
 * for the lost results); every node keeps serving. Then:
 *   0  node 2 (not the origin), every node with keep-host-weights: node 2 put its share's
 *      experts of device 1 back from the host copy of the share it received, and every later
 *      step is exact against float64;
 *   1  the same on the origin (node 0), from the host copy of its own share;
 *   2  the origin (node 2 this time) without keep-host-weights: nobody holds its share, so
 *      every later step fails on every node, saying that the layer's experts 10..11 (node 2's
 *      device 1, in the layer's numbering) were lost, while a node-scope layer on node 2
 *      still runs exact;
 *   3  as 0 on node 1, every node started with LLEPD_TEST_XNODE=1 and device 1 failing in its
 *      eighth step, once steps go over the communicator between nodes: the failing step's
 *      exchange is abandoned on every node, later steps are exact;
 *   4  node 2 without keep-host-weights: it asks the origin for its share again (the origin
 *      holds every other node's); the steps until it is here fail on every node saying so,
 *      then every step is exact.
 * The failed node counts the failure in llep_device_failures_total and every node each failed
 * step in llep_errors_total{kind="failed_step"}. */
START_TEST(device_failed) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];
    const char *failed = "llep_errors_total{kind=\"failed_step\"}";
    int steps = 0, origin = _i == 2 ? 2 : 0, failures = 1;

    fail_node = _i == 1 ? 0 : _i == 3 ? 1 : 2;
    fail_at = _i == 3 ? "1@8" : "1@2";
    keep_nodes = _i == 2 || _i == 4 ? 0 : (1u << NODES) - 1;
    xnode_nodes = _i == 3 ? 7 : 0;
    weights_init();
    pick_metrics_ports();
    start_cluster_at(nc, origin);
    bool comm_up = false;
    while (step_all(nc, 0.3, slots)) {
        steps++;
        ck_assert_msg(steps < 12, "device 1 of node %d did not fail in %d steps", fail_node,
                      steps);
        comm_up = true;
        for (int i = 0; i < NODES && xnode_nodes; i++)
            comm_up = comm_up && layer_field(i, "moe", "communicator_steps") > 0;
    }
    ck_assert_int_ge(steps, 1);
    /* 3: the failing step went over the communicator, and the other nodes' results exchange
     * waited for node 1's: they fail all the same, none waits on. */
    ck_assert_msg(comm_up, "no step went over the communicator before the failure");
    expect_failed_from(nc, fail_node, "device 1 failed");
    for (int i = 0; i < NODES; i++) {
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), 1);
        ck_assert_int_eq(scrape(i, failed), 1);
        ck_assert_int_eq(scrape(i, "llep_device_failures_total"), i == fail_node);
    }
    json_object *dj = llepctl_json(fail_node, "devices", NULL), *list, *v;
    ck_assert(dj && json_object_object_get_ex(dj, "devices", &list));
    ck_assert(json_object_object_get_ex(json_object_array_get_idx(list, 1), "state", &v));
    ck_assert_str_eq(json_object_get_string(v), "failed");
    json_object_put(dj);

    if (_i == 2) {
        for (int s = 0; s < 2; s++) {
            ck_assert(!step_all(nc, 0.3, slots));
            expect_failed_from(nc, 2, "device 1 failed and the weights of this layer's "
                               "experts 10..11 were only there");
        }
        for (int i = 0; i < NODES; i++)
            ck_assert_int_eq(scrape(i, failed), 3);
        llep_layer_desc d = layer_desc(true, 0);
        llep_layer *local = NULL;
        d.scope = LLEP_SCOPE_NODE;
        ck_assert_int_eq(llep_layer_create(nc[2].c, "local", &d, &local), 0);
        skewed_slots(0.5, slots);
        batch_fill(&nc[2].b, slots);
        ck_assert_int_eq(llep_forward(local, TOKENS, nc[2].b.x, nc[2].b.idx, nc[2].b.w,
                                      nc[2].b.y), 0);
        assert_exact(&nc[2].b, 2);
        llep_layer_release(local);
        end_cluster(nc);
        return;
    }
    if (_i == 4) {
        /* At least the next step waits for the share: it is asked for when a step found it
         * missing. */
        while (!step_all(nc, 0.3, slots)) {
            expect_failed_from(nc, 2, "device 1 failed and this node's share of the layer is "
                               "being sent again by its origin, node 0");
            ck_assert_int_lt(++failures, 20);
            sleep_ms(20);
        }
        ck_assert_int_ge(failures, 2);
    }
    for (int s = 0; s < 4; s++)
        ck_assert_msg(step_all(nc, s % 2 ? 0.7 : 0.3, slots), "step %d after the failure "
                      "failed: %s", s, nc[fail_node].err);
    for (int i = 0; i < NODES; i++) {
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), failures);
        ck_assert_int_eq(scrape(i, failed), failures);
    }
    end_cluster(nc);
}
END_TEST

/* Exact steps until every node has run one over the communicator (it starts with the first
 * step and is up a moment later). */
static void wait_communicator(node_client *nc, int32_t *slots) {
    uint64_t t0 = now_ms();

    for (;;) {
        skewed_slots(0.6, slots);
        run_exact(nc, slots);
        bool all = true;
        for (int i = 0; i < NODES; i++)
            all = all && layer_field(i, "moe", "communicator_steps") > 0;
        if (all)
            return;
        ck_assert_msg(now_ms() - t0 < 10000, "no step went over the communicator in 10 s");
        sleep_ms(20);
    }
}

START_TEST(communicator) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];
    int64_t before[NODES], steps[NODES];
    char tr[256];

    xnode_nodes = 7;
    weights_init();
    start_cluster(nc, 0, false);
    wait_communicator(nc, slots);
    for (int i = 0; i < NODES; i++) {
        before[i] = layer_field(i, "moe", "communicator_steps");
        steps[i] = layer_field(i, "moe", "steps");
    }
    /* Heavy skew: rows and expert weights cross nodes over it, every step. */
    for (int round = 0; round < 3; round++) {
        skewed_slots(0.7, slots);
        run_exact(nc, slots);
    }
    /* Every step since (opportunistic batching may add steps a node joins empty-handed). */
    for (int i = 0; i < NODES; i++) {
        int64_t ran = layer_field(i, "moe", "steps") - steps[i];
        ck_assert_int_ge(ran, 3);
        ck_assert_int_eq(layer_field(i, "moe", "communicator_steps"), before[i] + ran);
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), 0);
        layer_string(i, "moe", "internode_transport", tr, sizeof(tr));
        ck_assert_msg(strncmp(tr, "socket (up, epoch ", 18) == 0, "node %d: '%s'", i, tr);
    }
    ck_assert_int_gt(layer_field(0, "moe", "internode_weights"), 0);
    ck_assert_int_gt(layer_field(1, "moe", "internode_rows"), 0);

    /* A node dies: steps fail naming it, whatever the communicator was doing. */
    kill_node(nc, slots, 2);
    layer_string(0, "moe", "internode_transport", tr, sizeof(tr));
    ck_assert_msg(strncmp(tr, "peer links", 10) == 0, "node 0: '%s'", tr);

    /* Back: its share, then a new communicator, and exact steps over it. */
    restart_node2(nc);
    wait_communicator(nc, slots);
    for (int round = 0; round < 2; round++) {
        skewed_slots(0.7, slots);
        run_exact(nc, slots);
    }
    end_cluster(nc);
}
END_TEST

START_TEST(communicator_lost) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];
    char tr[256];

    xnode_nodes = 7;
    drop_nodes = 4;
    weights_init();
    start_cluster(nc, 0, false);
    uint64_t t0 = now_ms();
    for (;;) {
        skewed_slots(0.7, slots);
        run_exact(nc, slots);
        layer_string(0, "moe", "internode_transport", tr, sizeof(tr));
        if (strcmp(tr, "socket (up, epoch 2, set 0,1,2)") == 0 &&
            layer_field(2, "moe", "communicator_steps") > 3)
            break;
        ck_assert_msg(now_ms() - t0 < 15000, "no second communicator carried steps: '%s'", tr);
        sleep_ms(20);
    }
    for (int i = 0; i < NODES; i++)
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), 0);
    /* Node 0 learnt it from node 2's plan hash, and ran that step over the peer links. */
    ck_assert(llep_test_node_log_has(&nodes, 0,
                                     "closed: node 2 has communicator epoch 0, this node 1"));
    ck_assert_int_lt(layer_field(0, "moe", "communicator_steps"),
                     layer_field(0, "moe", "steps"));
    end_cluster(nc);
}
END_TEST

START_TEST(communicator_refused) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];
    char tr[256];

    xnode_nodes = 7;
    comm_off_nodes = 2; /* node 1 has no transport */
    weights_init();
    start_cluster(nc, 0, false);
    uint64_t t0 = now_ms();
    for (;;) {
        skewed_slots(0.7, slots);
        run_exact(nc, slots);
        layer_string(0, "moe", "internode_transport", tr, sizeof(tr));
        if (strstr(tr, "node 1: cannot join a socket communicator"))
            break;
        ck_assert_msg(now_ms() - t0 < 10000, "node 0 does not say node 1 refused: '%s'", tr);
        sleep_ms(20);
    }
    ck_assert_msg(strncmp(tr, "peer links (socket: ", 20) == 0, "node 0: '%s'", tr);
    layer_string(1, "moe", "internode_transport", tr, sizeof(tr));
    ck_assert_str_eq(tr, "peer links (cluster-communicator off)");
    for (int round = 0; round < 3; round++) {
        skewed_slots(0.7, slots);
        run_exact(nc, slots);
    }
    for (int i = 0; i < NODES; i++) {
        ck_assert_int_eq(layer_field(i, "moe", "communicator_steps"), 0);
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), 0);
    }
    end_cluster(nc);
}
END_TEST

/* ---- two layers on one communicator ------------------------------------------------------ */

/* Lines of node's log that contain text. */
static int log_count(int node, const char *text) {
    char path[PATH_MAX], line[1024];
    int n = 0;

    llep_test_node_log(&nodes, node, path, sizeof(path));
    FILE *f = fopen(path, "r");
    ck_assert_msg(f, "node %d has no log %s", node, path);
    while (fgets(line, sizeof(line), f))
        n += strstr(line, text) != NULL;
    fclose(f);
    return n;
}

/* Both layers stepping at once until each has run a step over the communicator on every
 * node; then every node shows both on the same communicator: "socket (up, epoch E, set
 * 0,1,2)". Returns E. */
static int64_t wait_shared(node_client *a, node_client *b) {
    char ta[256], tb[256], want[256];
    uint64_t t0 = now_ms();

    for (;;) {
        run_both_exact(a, b, 0.7, 0.6);
        bool all = true;
        for (int i = 0; i < NODES; i++)
            all = all && layer_field(i, "moe", "communicator_steps") > 0 &&
                  layer_field(i, "moe2", "communicator_steps") > 0;
        if (all)
            break;
        ck_assert_msg(now_ms() - t0 < 15000, "no step of both layers went over the "
                      "communicator in 15 s");
        sleep_ms(20);
    }
    layer_string(0, "moe", "internode_transport", ta, sizeof(ta));
    long long epoch = 0;
    ck_assert_msg(sscanf(ta, "socket (up, epoch %lld, set 0,1,2)", &epoch) == 1, "'%s'", ta);
    snprintf(want, sizeof(want), "socket (up, epoch %lld, set 0,1,2)", epoch);
    for (int i = 0; i < NODES; i++) {
        layer_string(i, "moe", "internode_transport", ta, sizeof(ta));
        layer_string(i, "moe2", "internode_transport", tb, sizeof(tb));
        ck_assert_msg(strcmp(ta, want) == 0 && strcmp(tb, want) == 0,
                      "node %d: '%s' / '%s', not both '%s'", i, ta, tb, want);
    }
    return epoch;
}

/* Two cluster layers of different origins on the same three nodes share one communicator:
 * every node opens one transport per epoch (its log says "up" once per epoch, however many
 * layers) and both layers name the same epoch and set; both step at once from clients on
 * every node, every step over the one communicator and exact; a node killed fails both
 * layers' steps naming it, and once it is back one new epoch carries both. */
START_TEST(communicator_shared) {
    node_client a[NODES], b[NODES];
    int64_t sa[NODES], sb[NODES], ca[NODES], cb[NODES];
    char text[64];

    xnode_nodes = 7;
    weights_init();
    for (int i = 0; i < NODES; i++)
        start_node(i, false);
    wait_cluster_up();
    open_two_layers(a, b);
    int64_t e1 = wait_shared(a, b);
    for (int i = 0; i < NODES; i++) {
        /* One transport opened on this node, not one per layer. */
        ck_assert_int_eq(log_count(i, "socket communicator up (epoch"), 1);
        ck_assert_int_eq(log_count(i, "shared by 2 layers, 1 opened here"), 1);
        sa[i] = layer_field(i, "moe", "steps");
        sb[i] = layer_field(i, "moe2", "steps");
        ca[i] = layer_field(i, "moe", "communicator_steps");
        cb[i] = layer_field(i, "moe2", "communicator_steps");
    }
    ck_assert_int_eq(log_count(0, "starting the socket communicator"), 1);
    ck_assert_int_eq(log_count(1, "starting the socket communicator"), 0);

    /* Both layers' exchanges on the one communicator at once: every step over it, exact. */
    for (int round = 0; round < 6; round++)
        run_both_exact(a, b, 0.7, 0.6);
    for (int i = 0; i < NODES; i++) {
        int64_t ra = layer_field(i, "moe", "steps") - sa[i];
        int64_t rb = layer_field(i, "moe2", "steps") - sb[i];
        ck_assert_int_ge(ra, 6);
        ck_assert_int_ge(rb, 6);
        ck_assert_int_eq(layer_field(i, "moe", "communicator_steps"), ca[i] + ra);
        ck_assert_int_eq(layer_field(i, "moe2", "communicator_steps"), cb[i] + rb);
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), 0);
        ck_assert_int_eq(layer_field(i, "moe2", "failed_steps"), 0);
    }
    ck_assert_int_eq(log_count(0, "communicator up (epoch"), 1); /* still the first */

    /* Node 2 dies: both layers' steps fail naming it; the communicator is closed for both. */
    llep_test_kill(&pids[2]);
    client_close(&a[2]);
    client_close(&b[2]);
    uint64_t t0 = now_ms();
    for (;;) {
        int32_t sl[NODES * TOKENS * K];
        skewed_slots(0.6, sl);
        fill_batches(a, sl, 3);
        fill_batches(b, sl, 3);
        pthread_t th[4];
        for (int i = 0; i < 2; i++) {
            ck_assert_int_eq(pthread_create(&th[i], NULL, forward_thread, &a[i]), 0);
            ck_assert_int_eq(pthread_create(&th[2 + i], NULL, forward_thread, &b[i]), 0);
        }
        for (int i = 0; i < 4; i++)
            pthread_join(th[i], NULL);
        if (a[0].r < 0 && a[1].r < 0 && b[0].r < 0 && b[1].r < 0)
            break;
        ck_assert_msg(now_ms() - t0 < 5000, "steps still run 5 s after node 2 died");
    }
    expect_failed(a, 3, "node 2");
    expect_failed(b, 3, "node 2");
    for (int i = 0; i < 2; i++) {
        char ta[256], tb[256];
        layer_string(i, "moe", "internode_transport", ta, sizeof(ta));
        layer_string(i, "moe2", "internode_transport", tb, sizeof(tb));
        ck_assert_msg(strncmp(ta, "peer links", 10) == 0 && strcmp(ta, tb) == 0,
                      "node %d: '%s' / '%s'", i, ta, tb);
    }

    /* Back: both shares, then one new epoch that both layers use. */
    start_node(2, false);
    wait_cluster_up();
    t0 = now_ms();
    while (layer_field(2, "moe", "nodes") != NODES || layer_field(2, "moe2", "nodes") != NODES) {
        ck_assert_msg(now_ms() - t0 < 10000, "node 2 did not get both layers back");
        sleep_ms(50);
    }
    client_open_named(&a[2], 2, "moe", false, 0);
    client_open_named(&b[2], 2, "moe2", false, 0);
    for (int i = 0; i < NODES; i++) {
        ca[i] = layer_field(i, "moe", "communicator_steps");
        cb[i] = layer_field(i, "moe2", "communicator_steps");
    }
    t0 = now_ms();
    int64_t e2;
    for (;;) {
        e2 = wait_shared(a, b);
        bool again = true;
        for (int i = 0; i < 2; i++)
            again = again && layer_field(i, "moe", "communicator_steps") > ca[i] &&
                    layer_field(i, "moe2", "communicator_steps") > cb[i];
        if (again && e2 > e1)
            break;
        ck_assert_msg(now_ms() - t0 < 15000, "no new epoch carried both layers (epoch %lld)",
                      (long long)e2);
    }
    for (int round = 0; round < 3; round++)
        run_both_exact(a, b, 0.7, 0.6);
    /* One transport per epoch on the nodes that lived through both. */
    for (int i = 0; i < 2; i++) {
        snprintf(text, sizeof(text), "communicator up (epoch %lld,", (long long)e2);
        ck_assert_int_eq(log_count(i, text), 1);
        ck_assert_int_le(log_count(i, "socket communicator up (epoch"), (int)e2);
    }
    snprintf(text, sizeof(text), "communicator up (epoch %lld,", (long long)e2);
    ck_assert_int_eq(log_count(2, text), 1);
    for (int i = 0; i < NODES; i++) {
        client_close(&a[i]);
        client_close(&b[i]);
    }
    weights_fini();
}
END_TEST

static Suite *cluster_layer_suite(void) {
    Suite *s = suite_create("cluster-layer");
    TCase *tc = tcase_create("three nodes");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, exact);
    tcase_add_test(tc, cost_planner_steps);
    tcase_add_test(tc, shape_model_sent);
    tcase_add_test(tc, collective);
    tcase_add_test(tc, node_killed);
    tcase_add_loop_test(tc, node_stopped, 0, 2);
    tcase_add_loop_test(tc, origin_killed, 0, 2);
    tcase_add_test(tc, two_layers);
    tcase_add_test(tc, plan_mismatch);
    tcase_add_test(tc, communicator);
    tcase_add_test(tc, communicator_lost);
    tcase_add_test(tc, communicator_refused);
    tcase_add_test(tc, communicator_shared);
    suite_add_tcase(s, tc);
    tc = tcase_create("failed device");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, device_failed, 0, 5);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(cluster_layer_suite(), CK_ENV);
}
