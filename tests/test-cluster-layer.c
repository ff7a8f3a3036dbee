/* Cluster-scope layers end to end: three llepd processes ($LLEPD, CPU backend, two devices
 * each) on loopback, a client on every node, one layer over all six devices.
 *
 *   exact           skewed routing, every node's output equals the float64 reference; a spill
 *                   that fits on the hot device's own node stays there (no expert weights cross
 *                   nodes, while a flat plan of the same loads would send them across), a
 *                   heavier skew sends weights across nodes and stays exact; a node-scope layer
 *                   runs beside it.
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
 *                   written.
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
/* Nodes started with the test hook LLEPD_TEST_XNODE=1 (a communicator between nodes), and
 * nodes started with --cluster-communicator off. */
static unsigned xnode_nodes, comm_off_nodes;
/* Nodes that drop their communicator unannounced after 3 steps (LLEPD_TEST_XNODE_DROP). */
static unsigned drop_nodes;

static void sleep_ms(int ms) {
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sock_path(int node, char *buf, size_t len) {
    snprintf(buf, len, "%s/s%d.sock", tmpdir, node);
}

static void setup(void) {
    llep_test_llepctl(llepctl, sizeof(llepctl));
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-clayer-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    llep_test_peers(NODES, ports, peers, sizeof(peers));
    for (int i = 0; i < NODES; i++)
        pids[i] = -1;
}

static void teardown(void) {
    llep_test_kill_nodes(pids, NODES, tmpdir);
}

static void start_node(int node, bool mismatch) {
    char sock[128], logf[128], id[16];
    const char *bin = getenv("LLEPD");

    ck_assert_ptr_nonnull(bin);
    sock_path(node, sock, sizeof(sock));
    snprintf(logf, sizeof(logf), "%s/log%d", tmpdir, node);
    snprintf(id, sizeof(id), "%d", node);
    unlink(sock);
    pids[node] = fork();
    ck_assert_int_ge(pids[node], 0);
    if (pids[node] == 0) {
        int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 2);
        if (mismatch)
            setenv("LLEPD_TEST_PLAN_MISMATCH", "1", 1);
        if (xnode_nodes & (1u << node))
            setenv("LLEPD_TEST_XNODE", "1", 1);
        if (drop_nodes & (1u << node))
            setenv("LLEPD_TEST_XNODE_DROP", "3", 1);
        const char *off = comm_off_nodes & (1u << node) ? "off" : "auto";
        execl(bin, bin, "--socket", sock, "--backend", "cpu", "--devices", "2", "--node-id", id,
              "--peers", peers, "--peer-heartbeat-ms", "100", "--peer-timeout-ms", "1000",
              "--log-level", "info", "--cluster-communicator", off, (char *)NULL);
        _exit(127);
    }
}

/* llepctl --json VERB [ARG]; the parsed output (caller puts it). */
static json_object *llepctl_json(int node, const char *verb, const char *arg) {
    char sock[128], out[65536];
    int pipefd[2], status;
    size_t len = 0;
    ssize_t n;

    sock_path(node, sock, sizeof(sock));
    ck_assert_int_eq(pipe(pipefd), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(pipefd[1], 1);
        dup2(null, 2); /* polled before the daemon listens: "cannot connect" is expected */
        close(pipefd[0]);
        execl(llepctl, llepctl, "--socket", sock, "--json", verb, arg, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    while (len + 1 < sizeof(out) && (n = read(pipefd[0], out + len, sizeof(out) - 1 - len)) > 0)
        len += (size_t)n;
    out[len] = '\0';
    close(pipefd[0]);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return NULL;
    return json_tokener_parse(out);
}

/* The exit status of `llepctl set LAYER KEY=VALUE` on node. */
static int llepctl_set(int node, const char *layer, const char *kv) {
    char sock[128];
    int status;

    sock_path(node, sock, sizeof(sock));
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        execl(llepctl, llepctl, "--socket", sock, "set", layer, kv, (char *)NULL);
        _exit(127);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
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

/* Whether node's log (its stderr) says text. */
static bool log_says(int node, const char *text) {
    char path[128], buf[1 << 16];
    size_t n;

    snprintf(path, sizeof(path), "%s/log%d", tmpdir, node);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, text) != NULL;
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

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t rng_next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static float rng_float(void) {
    return (float)((double)(rng_next() >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static float *random_floats(size_t n, float scale) {
    float *v = malloc(n * sizeof(float));

    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < n; i++)
        v[i] = rng_float() * scale;
    return v;
}

static float *wg, *wu, *wd, *bg, *bu, *bd;

static void weights_init(void) {
    wg = random_floats((size_t)N * D * H, 0.25f);
    wu = random_floats((size_t)N * D * H, 0.25f);
    wd = random_floats((size_t)N * H * D, 0.35f);
    bg = random_floats((size_t)N * H, 0.1f);
    bu = random_floats((size_t)N * H, 0.1f);
    bd = random_floats((size_t)N * D, 0.1f);
}

static void weights_fini(void) {
    free(wg);
    free(wu);
    free(wd);
    free(bg);
    free(bu);
    free(bd);
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
        d.w_gate = wg;
        d.w_up = wu;
        d.w_down = wd;
        d.b_gate = bg;
        d.b_up = bu;
        d.b_down = bd;
    }
    return d;
}

typedef struct batch {
    float x[TOKENS * D], w[TOKENS * K], y[TOKENS * D];
    int32_t idx[TOKENS * K];
} batch;

static void reference(const batch *b, double *out) {
    size_t dh = (size_t)N * D * H;
    double *w[6] = { llep_ref_f64(wg, dh), llep_ref_f64(wu, dh), llep_ref_f64(wd, dh),
                     llep_ref_f64(bg, (size_t)N * H), llep_ref_f64(bu, (size_t)N * H),
                     llep_ref_f64(bd, (size_t)N * D) };
    llep_ref r = { .d = D, .h = H, .act = LLEP_ACT_SWIGLU, .wg = w[0], .wu = w[1], .wd = w[2],
                   .bg = w[3], .bu = w[4], .bd = w[5] };

    llep_ref_moe_f32(&r, TOKENS, K, b->x, b->idx, b->w, out);
    for (int i = 0; i < 6; i++)
        free(w[i]);
}

static void assert_exact(const batch *b, int node) {
    double ref[TOKENS * D], num = 0, den = 0;

    reference(b, ref);
    for (size_t i = 0; i < TOKENS * D; i++) {
        num += (b->y[i] - ref[i]) * (b->y[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    ck_assert_msg(sqrt(num / den) <= 1e-5, "node %d: relative L2 error %g over 1e-5", node,
                  sqrt(num / den));
}

/* Tokens with random inputs; the experts come from `slots` (TOKENS * K of them). */
static void batch_fill(batch *b, const int32_t *slots) {
    for (size_t i = 0; i < TOKENS * D; i++)
        b->x[i] = rng_float();
    for (size_t i = 0; i < TOKENS * K; i++) {
        b->w[i] = 0.5f + 0.5f * rng_float();
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
        size_t j = rng_next() % (i + 1);
        int32_t t = slots[i];
        slots[i] = slots[j];
        slots[j] = t;
    }
}

static void skewed_slots(double skew, int32_t *slots) {
    for (size_t i = 0; i < (size_t)NODES * TOKENS * K; i++) {
        double u = (double)(rng_next() >> 11) / (double)(1ull << 53);
        slots[i] = u < skew ? 0 : (int32_t)(rng_next() % N);
    }
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
    sock_path(node, sock, sizeof(sock));
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

    kill(pids[node], SIGKILL);
    waitpid(pids[node], NULL, 0);
    pids[node] = -1;
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

/* Two cluster layers stepping at the same time, one created on node 0 and one on node 1:
 * their messages keep apart and every output is exact. */
START_TEST(two_layers) {
    node_client a[NODES], b[NODES];
    int32_t sa[NODES * TOKENS * K], sb[NODES * TOKENS * K];
    pthread_t th[2 * NODES];

    weights_init();
    for (int i = 0; i < NODES; i++)
        start_node(i, false);
    wait_cluster_up();
    client_open_named(&a[0], 0, "moe", true, 0);
    client_open_named(&b[1], 1, "moe2", true, 0);
    for (int i = 0; i < NODES; i++) {
        if (i != 0)
            client_open_named(&a[i], i, "moe", false, 0);
        if (i != 1)
            client_open_named(&b[i], i, "moe2", false, 0);
    }
    ck_assert_int_eq(layer_field(2, "moe2", "origin"), 1);
    for (int round = 0; round < 3; round++) {
        skewed_slots(0.7, sa);
        skewed_slots(0.5, sb);
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
    for (int i = 0; i < NODES; i++) {
        client_close(&a[i]);
        client_close(&b[i]);
    }
    weights_fini();
}
END_TEST

START_TEST(plan_mismatch) {
    node_client nc[NODES];
    int32_t slots[NODES * TOKENS * K];

    weights_init();
    start_cluster(nc, 1, true);
    skewed_slots(0.5, slots);
    fill_batches(nc, slots, 7);
    forward_all(nc, 7);
    expect_failed(nc, 7, "plan hash mismatch");
    for (int i = 0; i < NODES; i++)
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), 1);
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
        if (strcmp(tr, "socket (up, epoch 2)") == 0 &&
            layer_field(2, "moe", "communicator_steps") > 3)
            break;
        ck_assert_msg(now_ms() - t0 < 15000, "no second communicator carried steps: '%s'", tr);
        sleep_ms(20);
    }
    for (int i = 0; i < NODES; i++)
        ck_assert_int_eq(layer_field(i, "moe", "failed_steps"), 0);
    /* Node 0 learnt it from node 2's plan hash, and ran that step over the peer links. */
    ck_assert(log_says(0, "closed: node 2 has communicator epoch 0, this node 1"));
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

static Suite *cluster_layer_suite(void) {
    Suite *s = suite_create("cluster-layer");
    TCase *tc = tcase_create("three nodes");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, exact);
    tcase_add_test(tc, collective);
    tcase_add_test(tc, node_killed);
    tcase_add_loop_test(tc, node_stopped, 0, 2);
    tcase_add_loop_test(tc, origin_killed, 0, 2);
    tcase_add_test(tc, two_layers);
    tcase_add_test(tc, plan_mismatch);
    tcase_add_test(tc, communicator);
    tcase_add_test(tc, communicator_lost);
    tcase_add_test(tc, communicator_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(cluster_layer_suite());
    int failed;

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
