/* Cluster membership end to end: llepd processes ($LLEPD) on loopback link up, show each other
 * in `llepctl peers` with round-trip times, see a SIGKILLed node go down within the peer
 * timeout and come back when it restarts; bad peer input (wrong version, unknown node, a node
 * that should be dialled, a different peers list, garbage, a client request, silence) gets a
 * reply naming the problem and a close, is logged, and the daemon keeps serving its unix
 * socket throughout.
 *
 * Ports are picked free on 127.0.0.1 below the ephemeral range; only loopback is used. Heartbeats
 * every 100 ms and a 1 s peer timeout keep the whole suite to a few seconds, with room for a
 * loaded machine (a SIGKILLed node's links drop at once; the timeout matters for silence). */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "fixtures.h"
#include "frame.h"
#include "test-nodes.h"

#define NODES 3
#define HEARTBEAT_MS "100"
#define TIMEOUT_MS 1000
#define TIMEOUT_MS_TEXT "1000"

static char tmpdir[64];
static char llepctl[PATH_MAX];
static char peers[256];
static uint16_t ports[NODES];
static pid_t pids[NODES];
static const llep_test_nodes nodes = { NODES, tmpdir, sizeof(tmpdir), llepctl, sizeof(llepctl),
                                       peers, sizeof(peers), ports, pids };

static void setup(void) {
    llep_test_nodes_setup(&nodes, "test-cluster");
}

static void teardown(void) {
    llep_test_nodes_teardown(&nodes);
}

/* ---- the unix socket: raw frames ---------------------------------------------------------- */

static void send_frame(int fd, const LlepPb__Frame *f) {
    uint8_t *buf;
    size_t len;

    ck_assert_int_eq(llep__frame_encode_alloc(f, &buf, &len), 0);
    ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
    free(buf);
}

/* The next frame, or NULL when the other end closed. Fails the test after 3 s. */
static LlepPb__Frame *recv_frame(int fd, llep_frame_decoder *dec) {
    LlepPb__Frame *f = NULL;
    uint8_t buf[4096];
    uint64_t deadline = now_ms() + 3000;

    for (;;) {
        int r = llep__frame_decoder_next(dec, &f);
        ck_assert_msg(r >= 0, "decoding: %s", llep__frame_decoder_error(dec));
        if (r == 1)
            return f;
        struct pollfd p = { .fd = fd, .events = POLLIN };
        uint64_t now = now_ms();
        ck_assert_msg(now < deadline, "no frame within 3 s");
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            return NULL;
        ck_assert_int_eq(llep__frame_decoder_feed(dec, buf, (size_t)n), 0);
    }
}

static int connect_unix(int node) {
    char sock[128];

    llep_test_node_sock(&nodes, node, sock, sizeof(sock));
    return llep_test_unix_connect(sock);
}

/* PeersRequest on node's unix socket, as llepctl would send it. The caller frees the frame. */
static LlepPb__Frame *query_peers(int node) {
    LlepPb__Hello h = LLEP_PB__HELLO__INIT;
    LlepPb__PeersRequest pr = LLEP_PB__PEERS_REQUEST__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT, *reply;
    llep_frame_decoder dec;
    int fd = connect_unix(node);

    ck_assert_msg(fd >= 0, "node %d does not answer on its unix socket", node);
    llep__frame_decoder_init(&dec, 0);
    h.version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    h.program = (char *)"test-cluster";
    h.kind = LLEP_PB__PEER_KIND__PEER_KIND_CTL;
    f.id = 1;
    f.body_case = LLEP_PB__FRAME__BODY_HELLO;
    f.hello = &h;
    send_frame(fd, &f);
    reply = recv_frame(fd, &dec);
    ck_assert_ptr_nonnull(reply);
    ck_assert_int_eq(reply->body_case, LLEP_PB__FRAME__BODY_HELLO_REPLY);
    ck_assert_int_eq(reply->hello_reply->status, LLEP_PB__STATUS__STATUS_OK);
    llep__frame_free(reply);
    f.id = 2;
    f.body_case = LLEP_PB__FRAME__BODY_PEERS;
    f.peers = &pr;
    send_frame(fd, &f);
    reply = recv_frame(fd, &dec);
    ck_assert_ptr_nonnull(reply);
    ck_assert_int_eq(reply->body_case, LLEP_PB__FRAME__BODY_PEERS_REPLY);
    ck_assert_int_eq(reply->peers_reply->status, LLEP_PB__STATUS__STATUS_OK);
    llep__frame_decoder_fini(&dec);
    close(fd);
    return reply;
}

static const LlepPb__PeerInfo *find_peer(const LlepPb__PeersReply *r, uint32_t id) {
    for (size_t i = 0; i < r->n_peers; i++)
        if (r->peers[i]->node_id == id)
            return r->peers[i];
    return NULL;
}

/* Waits until node sees peer in state (with an RTT when up); returns the milliseconds it took.
 * Fails after limit_ms. */
static uint64_t wait_state(int node, uint32_t peer, LlepPb__PeerState state, uint64_t limit_ms) {
    uint64_t start = now_ms();

    for (;;) {
        LlepPb__Frame *f = query_peers(node);
        const LlepPb__PeerInfo *p = find_peer(f->peers_reply, peer);
        ck_assert_ptr_nonnull(p);
        bool ok = p->state == state &&
                  (state != LLEP_PB__PEER_STATE__PEER_STATE_UP || p->rtt_last_ns > 0);
        LlepPb__PeerState seen = p->state;
        llep__frame_free(f);
        uint64_t took = now_ms() - start;
        if (ok)
            return took;
        ck_assert_msg(took < limit_ms, "node %d: peer %u still in state %d after %llu ms, "
                      "waiting for %d", node, peer, seen, (unsigned long long)took, state);
        sleep_ms(20);
    }
}

/* ---- daemons ------------------------------------------------------------------------------ */

/* With secret set, the node authenticates its peer links with that file. */
static void start_node_secret(int node, const char *peer_list, const char *secret) {
    char sock[128];
    const char *args[] = { "--peer-heartbeat-ms", HEARTBEAT_MS, "--peer-timeout-ms",
                           TIMEOUT_MS_TEXT, secret ? "--peer-secret-file" : NULL, secret, NULL };

    llep_test_node_spawn(&nodes, node, "1", peer_list, args, NULL);
    llep_test_node_sock(&nodes, node, sock, sizeof(sock));
    llep_test_llepd_wait(sock, pids[node]);
}

static void start_node(int node, const char *peer_list) {
    start_node_secret(node, peer_list, NULL);
}

/* SIGTERM: the peer links are closed with everything else and llepd exits 0. */
static void stop_node(int node) {
    int status = llep_test_stop(&pids[node], 30000);

    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "llepd node %d: status 0x%x after SIGTERM", node, status);
}

static bool log_has(int node, const char *text) {
    return llep_test_node_log_has(&nodes, node, text);
}

/* llepctl with the given arguments; stdout into out. Returns the exit status. */
static int run_llepctl(int node, const char *a1, const char *a2, char *out, size_t cap) {
    const char *args[] = { a1, a2, NULL };
    llep_test_output o = llep_test_node_llepctl(&nodes, node, args);
    int status = o.status;

    snprintf(out, cap, "%s", o.out);
    fputs(o.err, stderr);
    llep_test_output_free(&o);
    return status;
}

/* ---- three nodes -------------------------------------------------------------------------- */

static void check_peers_json(int node) {
    char out[8192];
    json_object *o, *v, *list;

    ck_assert_int_eq(run_llepctl(node, "--json", "peers", out, sizeof(out)), 0);
    o = json_tokener_parse(out);
    ck_assert_msg(o != NULL, "not JSON: %s", out);
    ck_assert(json_object_object_get_ex(o, "clustered", &v) && json_object_get_boolean(v));
    ck_assert(json_object_object_get_ex(o, "node_id", &v));
    ck_assert_int_eq(json_object_get_int(v), node);
    ck_assert(json_object_object_get_ex(o, "timeout_ms", &v));
    ck_assert_int_eq(json_object_get_int(v), TIMEOUT_MS);
    ck_assert(json_object_object_get_ex(o, "authenticated", &v) && !json_object_get_boolean(v));
    ck_assert(json_object_object_get_ex(o, "peers", &list));
    ck_assert_uint_eq(json_object_array_length(list), NODES - 1);
    for (size_t i = 0; i < NODES - 1; i++) {
        json_object *p = json_object_array_get_idx(list, i);
        int id;
        char addr[64];

        ck_assert(json_object_object_get_ex(p, "node_id", &v));
        id = json_object_get_int(v);
        ck_assert_int_ne(id, node);
        ck_assert(json_object_object_get_ex(p, "address", &v));
        snprintf(addr, sizeof(addr), "127.0.0.1:%u", ports[id]);
        ck_assert_str_eq(json_object_get_string(v), addr);
        ck_assert(json_object_object_get_ex(p, "state", &v));
        ck_assert_str_eq(json_object_get_string(v), "up");
        ck_assert(json_object_object_get_ex(p, "outgoing", &v));
        ck_assert(json_object_get_boolean(v) == (node < id));
        ck_assert(json_object_object_get_ex(p, "rtt_last_ns", &v));
        ck_assert_int_gt(json_object_get_int64(v), 0);
        ck_assert(json_object_object_get_ex(p, "rtt_smoothed_ns", &v));
        ck_assert_int_gt(json_object_get_int64(v), 0);
        ck_assert(json_object_object_get_ex(p, "bytes_sent", &v));
        ck_assert_int_gt(json_object_get_int64(v), 0);
        ck_assert(json_object_object_get_ex(p, "bytes_received", &v));
        ck_assert_int_gt(json_object_get_int64(v), 0);
        ck_assert(json_object_object_get_ex(p, "last_seen_us", &v));
        ck_assert(json_object_is_type(v, json_type_int));
        ck_assert_int_lt(json_object_get_int64(v), TIMEOUT_MS * 1000);
    }
    json_object_put(o);

    ck_assert_int_eq(run_llepctl(node, "peers", NULL, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "STATE") && strstr(out, " up "), "%s", out);
}

START_TEST(three_nodes_down_and_back) {
    for (int i = 0; i < NODES; i++)
        start_node(i, peers);
    for (int i = 0; i < NODES; i++)
        for (int j = 0; j < NODES; j++)
            if (i != j)
                wait_state(i, (uint32_t)j, LLEP_PB__PEER_STATE__PEER_STATE_UP, 5000);
    for (int i = 0; i < NODES; i++)
        check_peers_json(i);

    /* SIGKILL: no goodbye. The others see the link drop (or hear nothing for the timeout). */
    ck_assert_int_eq(kill(pids[2], SIGKILL), 0);
    ck_assert_int_eq(waitpid(pids[2], NULL, 0), pids[2]);
    pids[2] = -1;
    for (int i = 0; i < 2; i++) {
        uint64_t took = wait_state(i, 2, LLEP_PB__PEER_STATE__PEER_STATE_DOWN, 3 * TIMEOUT_MS);
        ck_assert_msg(took <= TIMEOUT_MS + 200, "node %d saw node 2 down after %llu ms", i,
                      (unsigned long long)took);
    }
    /* Nodes 0 and 1 keep their own link and serve their clients. */
    wait_state(0, 1, LLEP_PB__PEER_STATE__PEER_STATE_UP, 1000);
    LlepPb__Frame *f = query_peers(0);
    const LlepPb__PeerInfo *p2 = find_peer(f->peers_reply, 2);
    ck_assert_uint_eq(p2->links_up, 1);
    ck_assert_str_ne(p2->last_error, "");
    llep__frame_free(f);

    /* Restarted, it is dialled by node 0 (backoff at most the peer timeout) and dials node 1. */
    start_node(2, peers);
    for (int i = 0; i < 2; i++) {
        wait_state(i, 2, LLEP_PB__PEER_STATE__PEER_STATE_UP, 4 * TIMEOUT_MS);
        wait_state(2, (uint32_t)i, LLEP_PB__PEER_STATE__PEER_STATE_UP, 4 * TIMEOUT_MS);
    }
    f = query_peers(0);
    p2 = find_peer(f->peers_reply, 2);
    ck_assert_uint_ge(p2->links_up, 2);
    if (p2->state == LLEP_PB__PEER_STATE__PEER_STATE_UP)
        ck_assert_str_eq(p2->last_error, "");
    llep__frame_free(f);
    ck_assert(log_has(0, "peer node 2 (127.0.0.1:"));
    ck_assert(log_has(1, "down"));

    for (int i = 0; i < NODES; i++)
        stop_node(i);
}
END_TEST

/* ---- bad peer input ----------------------------------------------------------------------- */

static int connect_peer_port(int node) {
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(ports[node]),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* Sends bytes on a new peer link to node 1; expects one reply of body want with status and a
 * message containing text, then the close. */
static void expect_refusal(const void *bytes, size_t len, LlepPb__Frame__BodyCase want,
                           LlepPb__Status status, const char *text) {
    llep_frame_decoder dec;
    int fd = connect_peer_port(1);
    LlepPb__Frame *f;

    llep__frame_decoder_init(&dec, 0);
    ck_assert_int_eq(write(fd, bytes, len), (ssize_t)len);
    f = recv_frame(fd, &dec);
    ck_assert_msg(f != NULL, "no reply to a refused peer link (%s)", text);
    ck_assert_int_eq(f->body_case, want);
    const char *msg = want == LLEP_PB__FRAME__BODY_ERROR ? f->error->message
                                                      : f->peer_hello_reply->message;
    LlepPb__Status st = want == LLEP_PB__FRAME__BODY_ERROR ? f->error->status
                                                      : f->peer_hello_reply->status;
    ck_assert_int_eq(st, status);
    ck_assert_msg(strstr(msg, text), "'%s' lacks '%s'", msg, text);
    llep__frame_free(f);
    ck_assert_ptr_null(recv_frame(fd, &dec)); /* closed */
    llep__frame_decoder_fini(&dec);
    close(fd);

    /* The daemon serves its unix socket all along. */
    f = query_peers(1);
    ck_assert(f->peers_reply->clustered);
    llep__frame_free(f);
}

static void expect_hello_refused(uint32_t version, uint32_t node_id, uint32_t peer_id,
                                 uint64_t hash, LlepPb__Status status, const char *text) {
    LlepPb__PeerHello h = LLEP_PB__PEER_HELLO__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    uint8_t *buf;
    size_t len;

    h.version = version;
    h.node_id = node_id;
    h.peer_id = peer_id;
    h.peers_hash = hash;
    f.id = 1;
    f.body_case = LLEP_PB__FRAME__BODY_PEER_HELLO;
    f.peer_hello = &h;
    ck_assert_int_eq(llep__frame_encode_alloc(&f, &buf, &len), 0);
    expect_refusal(buf, len, LLEP_PB__FRAME__BODY_PEER_HELLO_REPLY, status, text);
    free(buf);
}

START_TEST(bad_peer_input) {
    static const uint8_t garbage[] = { 5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff };
    static const uint8_t oversize[] = { 0xff, 0xff, 0xff, 0x7f };
    const uint32_t v = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;

    /* Node 1 alone: its peers are down, its peer port is open. */
    start_node(1, peers);
    expect_hello_refused(v + 41, 0, 1, 0, LLEP_PB__STATUS__STATUS_VERSION_MISMATCH,
                         "protocol version mismatch: node 0 speaks version 42");
    expect_hello_refused(v, 7, 1, 0, LLEP_PB__STATUS__STATUS_NOT_FOUND, "unknown node id 7");
    expect_hello_refused(v, 1, 1, 0, LLEP_PB__STATUS__STATUS_INVALID, "this node's own id");
    expect_hello_refused(v, 2, 1, 0, LLEP_PB__STATUS__STATUS_INVALID,
                         "the lower id dials the higher: node 1 dials node 2");
    expect_hello_refused(v, 0, 2, 0, LLEP_PB__STATUS__STATUS_INVALID,
                         "node 0 dialled node 2 but reached node 1");
    expect_hello_refused(v, 0, 1, 0, LLEP_PB__STATUS__STATUS_INVALID, "different peers list");
    expect_refusal(garbage, sizeof(garbage), LLEP_PB__FRAME__BODY_ERROR,
                   LLEP_PB__STATUS__STATUS_PROTOCOL, "bad frame");
    expect_refusal(oversize, sizeof(oversize), LLEP_PB__FRAME__BODY_ERROR,
                   LLEP_PB__STATUS__STATUS_PROTOCOL, "bad frame");

    /* A client's request is not served on a peer link, before or instead of a hello. */
    LlepPb__StatusRequest sr = LLEP_PB__STATUS_REQUEST__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    uint8_t *buf;
    size_t len;
    f.id = 9;
    f.body_case = LLEP_PB__FRAME__BODY_STATUS;
    f.status = &sr;
    ck_assert_int_eq(llep__frame_encode_alloc(&f, &buf, &len), 0);
    expect_refusal(buf, len, LLEP_PB__FRAME__BODY_ERROR, LLEP_PB__STATUS__STATUS_PROTOCOL,
                   "the first message on a peer link must be peer_hello, got status");
    free(buf);

    /* Silence: closed after the peer timeout. */
    int fd = connect_peer_port(1);
    llep_frame_decoder dec;
    llep__frame_decoder_init(&dec, 0);
    uint64_t start = now_ms();
    ck_assert_ptr_null(recv_frame(fd, &dec));
    ck_assert_uint_le(now_ms() - start, 3 * TIMEOUT_MS);
    llep__frame_decoder_fini(&dec);
    close(fd);

    ck_assert(log_has(1, "refused a peer link from 127.0.0.1:"));
    ck_assert(log_has(1, "unknown node id 7"));
    ck_assert(log_has(1, "protocol version mismatch"));
    ck_assert(log_has(1, "bad frame"));
    stop_node(1);
}
END_TEST

/* The test plays node 0 towards node 1 with a correct hello: the link is up in llepctl peers,
 * heartbeats are answered, and then a second hello and a client request are refused. */
static uint64_t peers_hash_of(const char *list) {
    llep_config c;
    char err[256];

    llep__config_init(&c);
    ck_assert_int_eq(llep__config_set(&c, "peers", list, err, sizeof(err)), 0);
    uint64_t h = llep__peers_hash(&c);
    llep__config_fini(&c);
    return h;
}

static void send_peer_hello(int fd, uint64_t hash) {
    LlepPb__PeerHello h = LLEP_PB__PEER_HELLO__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    h.version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    h.node_id = 0;
    h.peer_id = 1;
    h.peers_hash = hash;
    f.id = 1;
    f.body_case = LLEP_PB__FRAME__BODY_PEER_HELLO;
    f.peer_hello = &h;
    send_frame(fd, &f);
}

START_TEST(fake_peer) {
    uint64_t hash = peers_hash_of(peers);
    llep_frame_decoder dec;
    LlepPb__Frame *r;

    start_node(1, peers);
    for (int round = 0; round < 2; round++) {
        int fd = connect_peer_port(1);

        llep__frame_decoder_init(&dec, 0);
        send_peer_hello(fd, hash);
        r = recv_frame(fd, &dec);
        ck_assert_ptr_nonnull(r);
        ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_PEER_HELLO_REPLY);
        ck_assert_int_eq(r->peer_hello_reply->status, LLEP_PB__STATUS__STATUS_OK);
        ck_assert_uint_eq(r->peer_hello_reply->node_id, 1);
        ck_assert_uint_eq(r->peer_hello_reply->peers_hash, hash);
        llep__frame_free(r);
        /* Up as soon as node 1 has answered (no RTT: we answer none of its heartbeats). */
        LlepPb__Frame *q = query_peers(1);
        ck_assert_int_eq(find_peer(q->peers_reply, 0)->state, LLEP_PB__PEER_STATE__PEER_STATE_UP);
        llep__frame_free(q);

        /* Node 1 heartbeats us and answers ours with the same seq and time. */
        LlepPb__Heartbeat hb = LLEP_PB__HEARTBEAT__INIT;
        LlepPb__Frame f = LLEP_PB__FRAME__INIT;
        hb.seq = 77;
        hb.sent_ns = 123456789;
        f.id = 77;
        f.body_case = LLEP_PB__FRAME__BODY_HEARTBEAT;
        f.heartbeat = &hb;
        send_frame(fd, &f);
        bool got_reply = false, got_heartbeat = false;
        for (int i = 0; i < 50 && !(got_reply && got_heartbeat); i++) {
            r = recv_frame(fd, &dec);
            ck_assert_ptr_nonnull(r);
            if (r->body_case == LLEP_PB__FRAME__BODY_HEARTBEAT_REPLY) {
                ck_assert_uint_eq(r->heartbeat_reply->seq, 77);
                ck_assert_uint_eq(r->heartbeat_reply->sent_ns, 123456789);
                got_reply = true;
            } else {
                ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_HEARTBEAT);
                got_heartbeat = true;
            }
            llep__frame_free(r);
        }
        ck_assert(got_reply && got_heartbeat);

        if (round == 0) {
            send_peer_hello(fd, hash);
        } else {
            LlepPb__LayersRequest lr = LLEP_PB__LAYERS_REQUEST__INIT;
            f.id = 5;
            f.body_case = LLEP_PB__FRAME__BODY_LAYERS;
            f.layers = &lr;
            send_frame(fd, &f);
        }
        /* Heartbeats may still come first; then the error and the close. */
        for (;;) {
            r = recv_frame(fd, &dec);
            ck_assert_ptr_nonnull(r);
            if (r->body_case != LLEP_PB__FRAME__BODY_HEARTBEAT)
                break;
            llep__frame_free(r);
        }
        ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_ERROR);
        ck_assert_int_eq(r->error->status, LLEP_PB__STATUS__STATUS_PROTOCOL);
        ck_assert_str_eq(r->error->message, round == 0 ? "peer_hello sent twice"
                                                       : "layers is not served on a peer link");
        llep__frame_free(r);
        ck_assert_ptr_null(recv_frame(fd, &dec));
        llep__frame_decoder_fini(&dec);
        close(fd);
        wait_state(1, 0, LLEP_PB__PEER_STATE__PEER_STATE_DOWN, TIMEOUT_MS);
    }
    LlepPb__Frame *f = query_peers(1);
    const LlepPb__PeerInfo *p = find_peer(f->peers_reply, 0);
    ck_assert_uint_eq(p->links_up, 2);
    ck_assert_str_eq(p->last_error, "layers is not served on a peer link");
    ck_assert_uint_gt(p->bytes_received, 0);
    llep__frame_free(f);
    stop_node(1);
}
END_TEST

/* The next frame that is not a heartbeat (node 1 keeps sending those). */
static LlepPb__Frame *recv_skip_heartbeats(int fd, llep_frame_decoder *dec) {
    for (;;) {
        LlepPb__Frame *r = recv_frame(fd, dec);
        if (!r || r->body_case != LLEP_PB__FRAME__BODY_HEARTBEAT)
            return r;
        llep__frame_free(r);
    }
}

static void send_cluster_layer(int fd, uint32_t n, uint64_t share_bytes, uint64_t uid) {
    LlepPb__LayerDesc d = LLEP_PB__LAYER_DESC__INIT;
    LlepPb__ClusterLayer m = LLEP_PB__CLUSTER_LAYER__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    d.num_experts = n;
    d.top_k = 1;
    d.hidden = 4;
    d.inter = 4;
    d.scope = LLEP_PB__SCOPE__SCOPE_CLUSTER;
    m.name = (char *)"fake";
    m.desc = &d;
    m.origin = 0;
    m.devices_per_node = 1;
    m.share_bytes = share_bytes;
    m.uid = uid;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_LAYER;
    f.cluster_layer = &m;
    send_frame(fd, &f);
}

static void send_share(int fd, uint64_t offset, const void *data, size_t len, uint64_t total) {
    LlepPb__ClusterData m = LLEP_PB__CLUSTER_DATA__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    m.layer = (char *)"fake";
    m.kind = LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_LAYER_WEIGHTS;
    m.offset = offset;
    m.total = total;
    m.data.data = (uint8_t *)data;
    m.data.len = len;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_DATA;
    f.cluster_data = &m;
    send_frame(fd, &f);
}

static void expect_layer_reply(int fd, llep_frame_decoder *dec, bool ok, const char *text) {
    LlepPb__Frame *r = recv_skip_heartbeats(fd, dec);

    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_CLUSTER_LAYER_REPLY);
    ck_assert_int_eq(r->cluster_layer_reply->status == LLEP_PB__STATUS__STATUS_OK, ok);
    ck_assert_msg(strstr(r->cluster_layer_reply->message, text), "reply '%s' lacks '%s'",
                  r->cluster_layer_reply->message, text);
    llep__frame_free(r);
}

/* A fake node 0, as origin of a cluster layer and as a stepping peer, sends node 1 what a
 * buggy or hostile daemon could: steps of a layer node 1 does not have, layers it cannot
 * take, shares that do not add up. Each gets a reply naming the problem; a correct share
 * then makes the layer, a drop removes it, and node 1 serves its socket throughout. */
START_TEST(fake_peer_cluster_layers) {
    uint64_t hash = peers_hash_of(peers);
    llep_frame_decoder dec;
    LlepPb__Frame *r, f = LLEP_PB__FRAME__INIT;
    char out[8192];

    start_node(1, peers);
    int fd = connect_peer_port(1);
    llep__frame_decoder_init(&dec, 0);
    send_peer_hello(fd, hash);
    r = recv_frame(fd, &dec);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->peer_hello_reply->status, LLEP_PB__STATUS__STATUS_OK);
    llep__frame_free(r);

    /* Loads of a layer node 1 does not have: the step is refused, naming it. */
    LlepPb__ClusterLoads lm = LLEP_PB__CLUSTER_LOADS__INIT;
    uint64_t loads[3] = { 1, 2, 3 };
    lm.layer = (char *)"nope";
    lm.step = 5;
    lm.loads = loads;
    lm.n_loads = 3;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_LOADS;
    f.cluster_loads = &lm;
    send_frame(fd, &f);
    r = recv_skip_heartbeats(fd, &dec);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_CLUSTER_STEP_FAIL);
    ck_assert_str_eq(r->cluster_step_fail->layer, "nope");
    ck_assert_uint_eq(r->cluster_step_fail->step, 5);
    ck_assert_int_eq(r->cluster_step_fail->status, LLEP_PB__STATUS__STATUS_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(r->cluster_step_fail->message, "no cluster layer 'nope'"));
    llep__frame_free(r);

    /* Layers node 1 cannot take. */
    send_cluster_layer(fd, 0, 0, 1);
    expect_layer_reply(fd, &dec, false, "num_experts");
    send_cluster_layer(fd, 4, 0, 1);
    expect_layer_reply(fd, &dec, false, "not a multiple of the cluster's 3 devices");
    send_cluster_layer(fd, 3, 100, 1);
    expect_layer_reply(fd, &dec, false, "share of 100 bytes announced, the shape needs 192");

    /* A share whose chunks do not add up, then one that does. */
    float w[48];
    for (int i = 0; i < 48; i++)
        w[i] = (float)i / 48.0f;
    send_cluster_layer(fd, 3, sizeof(w), 2);
    send_share(fd, 10, w, 16, sizeof(w));
    expect_layer_reply(fd, &dec, false, "cannot be taken");
    send_cluster_layer(fd, 3, sizeof(w), 3);
    send_share(fd, 0, w, 100, sizeof(w));
    send_share(fd, 100, (const char *)w + 100, sizeof(w) - 100, sizeof(w));
    expect_layer_reply(fd, &dec, true, "");
    ck_assert_int_eq(run_llepctl(1, "--json", "layers", out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "\"name\": \"fake\"") && strstr(out, "\"nodes\": 3"), "%s", out);

    /* A communicator between nodes this node cannot join (the CPU backend has none outside
     * llepd's test hook): it tells every node why, and the layer stays on the peer links. A
     * ClusterComm for another uid (another layer of that name) is ignored. */
    uint8_t id[128] = { 1, 2, 3 };
    LlepPb__ClusterComm cm = LLEP_PB__CLUSTER_COMM__INIT;
    cm.layer = (char *)"fake";
    cm.uid = 99;
    cm.epoch = 1;
    cm.transport = (char *)"nccl";
    cm.id.data = id;
    cm.id.len = sizeof(id);
    cm.nranks = 3;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_COMM;
    f.cluster_comm = &cm;
    send_frame(fd, &f);
    cm.uid = 3;
    cm.epoch = 2;
    send_frame(fd, &f);
    r = recv_skip_heartbeats(fd, &dec);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_CLUSTER_COMM_FAIL);
    ck_assert_str_eq(r->cluster_comm_fail->layer, "fake");
    ck_assert_uint_eq(r->cluster_comm_fail->epoch, 2);
    ck_assert_msg(strstr(r->cluster_comm_fail->message,
                         "node 1: cannot join a nccl communicator (this node has none)"),
                  "%s", r->cluster_comm_fail->message);
    llep__frame_free(r);
    ck_assert_int_eq(run_llepctl(1, "--json", "layers", out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "\"internode_transport\": \"peer links\""), "%s", out);

    /* Garbage step data for it is dropped; a drop from its origin removes it. */
    LlepPb__ClusterData dm = LLEP_PB__CLUSTER_DATA__INIT;
    dm.layer = (char *)"fake";
    dm.step = 99;
    dm.total = 1ull << 62;
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_DATA;
    f.cluster_data = &dm;
    send_frame(fd, &f);
    LlepPb__ClusterLayerDrop drop = LLEP_PB__CLUSTER_LAYER_DROP__INIT;
    drop.name = (char *)"fake";
    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_LAYER_DROP;
    f.cluster_layer_drop = &drop;
    send_frame(fd, &f);
    for (uint64_t start = now_ms();; sleep_ms(20)) {
        ck_assert_int_eq(run_llepctl(1, "--json", "layers", out, sizeof(out)), 0);
        if (!strstr(out, "\"fake\""))
            break;
        ck_assert_msg(now_ms() - start < 3000, "layer not dropped: %s", out);
    }
    LlepPb__Frame *q = query_peers(1);
    ck_assert_int_eq(find_peer(q->peers_reply, 0)->state, LLEP_PB__PEER_STATE__PEER_STATE_UP);
    llep__frame_free(q);
    llep__frame_decoder_fini(&dec);
    close(fd);
    stop_node(1);
}
END_TEST

/* A secret file under the test's directory with the given mode. */
static void write_secret(const char *name, const char *text, mode_t mode, char *path,
                         size_t len) {
    snprintf(path, len, "%s/%s", tmpdir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    ck_assert_int_eq(fchmod(fd, mode), 0);
    close(fd);
}

/* Waits until node's view of peer has a last_error containing text. */
static void wait_error(int node, uint32_t peer, const char *text, uint64_t limit_ms) {
    for (uint64_t start = now_ms();; sleep_ms(20)) {
        LlepPb__Frame *f = query_peers(node);
        const LlepPb__PeerInfo *p = find_peer(f->peers_reply, peer);
        bool found = strstr(p->last_error, text) != NULL;
        char last[256];
        snprintf(last, sizeof(last), "%s", p->last_error);
        ck_assert_int_ne(p->state, LLEP_PB__PEER_STATE__PEER_STATE_UP);
        llep__frame_free(f);
        if (found)
            return;
        ck_assert_msg(now_ms() - start < limit_ms, "node %d: peer %u's last error is '%s', "
                      "not '%s'", node, peer, last, text);
    }
}

/* With --peer-secret-file, nodes holding the same secret link up; a node with another secret
 * or none is refused with the reason; a fake peer without the secret gets nowhere. */
START_TEST(peer_secret) {
    char a[PATH_MAX], b[PATH_MAX], open_file[PATH_MAX], short_file[PATH_MAX];
    write_secret("a", "correct horse battery staple 42\n", 0600, a, sizeof(a));
    write_secret("b", "another secret, also long enough\n", 0600, b, sizeof(b));
    write_secret("open", "correct horse battery staple 42\n", 0644, open_file,
                 sizeof(open_file));
    write_secret("short", "too short\n", 0600, short_file, sizeof(short_file));

    start_node_secret(0, peers, a);
    start_node_secret(1, peers, a);
    wait_state(0, 1, LLEP_PB__PEER_STATE__PEER_STATE_UP, 5000);
    wait_state(1, 0, LLEP_PB__PEER_STATE__PEER_STATE_UP, 5000);
    ck_assert(log_has(0, "authenticated with the peer secret"));
    char out[4096];
    ck_assert_int_eq(run_llepctl(1, "peers", NULL, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "authenticated with the peer secret"), "%s", out);

    /* Another secret: node 0 dials node 2 and finds its answer does not check. */
    start_node_secret(2, peers, b);
    wait_error(0, 2, "node 2 failed authentication", 3000);
    stop_node(2);
    /* No secret: node 2 refuses the authenticating hello, saying why. */
    start_node(2, peers);
    wait_error(0, 2, "give every node the same peer secret", 3000);
    stop_node(2);

    /* Play node 0 towards node 1 without the secret: a hello without a nonce is refused; one
     * with a nonce is answered, but a PeerAuth that does not check closes the link. */
    stop_node(0);
    uint64_t hash = peers_hash_of(peers);
    llep_frame_decoder dec;
    int fd = connect_peer_port(1);
    llep__frame_decoder_init(&dec, 0);
    send_peer_hello(fd, hash);
    LlepPb__Frame *r = recv_frame(fd, &dec);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_PEER_HELLO_REPLY);
    ck_assert_int_ne(r->peer_hello_reply->status, LLEP_PB__STATUS__STATUS_OK);
    ck_assert_ptr_nonnull(strstr(r->peer_hello_reply->message, "node 0 does not"));
    llep__frame_free(r);
    llep__frame_decoder_fini(&dec);
    close(fd);

    fd = connect_peer_port(1);
    llep__frame_decoder_init(&dec, 0);
    LlepPb__PeerHello h = LLEP_PB__PEER_HELLO__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    uint8_t nonce[32] = { 1, 2, 3 }, mac[32] = { 0 };
    h.version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    h.node_id = 0;
    h.peer_id = 1;
    h.peers_hash = hash;
    h.nonce.data = nonce;
    h.nonce.len = sizeof(nonce);
    f.id = 1;
    f.body_case = LLEP_PB__FRAME__BODY_PEER_HELLO;
    f.peer_hello = &h;
    send_frame(fd, &f);
    r = recv_frame(fd, &dec);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->peer_hello_reply->status, LLEP_PB__STATUS__STATUS_OK);
    ck_assert_uint_eq(r->peer_hello_reply->nonce.len, 32);
    ck_assert_uint_eq(r->peer_hello_reply->mac.len, 32);
    llep__frame_free(r);
    /* Not up before it authenticates. */
    LlepPb__Frame *q = query_peers(1);
    ck_assert_int_ne(find_peer(q->peers_reply, 0)->state, LLEP_PB__PEER_STATE__PEER_STATE_UP);
    llep__frame_free(q);
    LlepPb__PeerAuth pa = LLEP_PB__PEER_AUTH__INIT;
    pa.mac.data = mac;
    pa.mac.len = sizeof(mac);
    f.id = 3;
    f.body_case = LLEP_PB__FRAME__BODY_PEER_AUTH;
    f.peer_auth = &pa;
    send_frame(fd, &f);
    r = recv_frame(fd, &dec);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->body_case, LLEP_PB__FRAME__BODY_ERROR);
    ck_assert_ptr_nonnull(strstr(r->error->message, "node 0 failed authentication"));
    llep__frame_free(r);
    ck_assert_ptr_null(recv_frame(fd, &dec));
    llep__frame_decoder_fini(&dec);
    close(fd);
    q = query_peers(1);
    ck_assert_int_ne(find_peer(q->peers_reply, 0)->state, LLEP_PB__PEER_STATE__PEER_STATE_UP);
    ck_assert_uint_eq(find_peer(q->peers_reply, 0)->links_up, 1); /* the real node 0, earlier */
    llep__frame_free(q);
    stop_node(1);

    /* Secret files llepd will not use. */
    const char *bad[2] = { open_file, short_file };
    const char *why[2] = { "chmod 600", "needs at least 16" };
    for (int i = 0; i < 2; i++) {
        char logf[128];
        const char *args[] = { "--peer-secret-file", bad[i], NULL };
        int status;
        llep_test_node_log(&nodes, 0, logf, sizeof(logf));
        unlink(logf); /* this run's log alone */
        llep_test_node_spawn(&nodes, 0, "1", peers, args, NULL);
        ck_assert_int_eq(waitpid(pids[0], &status, 0), pids[0]);
        pids[0] = -1;
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) != 0);
        ck_assert_msg(log_has(0, why[i]), "llepd's log does not say '%s'", why[i]);
    }
}
END_TEST

/* A node whose peers list differs from the others' refuses them, with the reason in both
 * logs and in llepctl peers; it shows them down, and the others stay linked. */
START_TEST(different_peers_list) {
    char other[sizeof(peers) + 32];

    start_node(0, peers);
    start_node(1, peers);
    wait_state(0, 1, LLEP_PB__PEER_STATE__PEER_STATE_UP, 5000);
    /* Node 2's list names a fourth node: same ids and addresses for 0-2, different hash. */
    snprintf(other, sizeof(other), "%s,3=127.0.0.1:1", peers);
    start_node(2, other);
    /* Node 0 dials node 2 and is refused; the reason shows in llepctl peers. */
    for (uint64_t start = now_ms();; sleep_ms(20)) {
        LlepPb__Frame *f = query_peers(0);
        const LlepPb__PeerInfo *p = find_peer(f->peers_reply, 2);
        bool refused = strstr(p->last_error, "different peers list") != NULL;
        ck_assert_int_ne(p->state, LLEP_PB__PEER_STATE__PEER_STATE_UP);
        llep__frame_free(f);
        if (refused)
            break;
        ck_assert_msg(now_ms() - start < 3000, "node 0 was not refused by node 2");
    }
    wait_state(2, 0, LLEP_PB__PEER_STATE__PEER_STATE_DOWN, 3 * TIMEOUT_MS);
    wait_state(2, 1, LLEP_PB__PEER_STATE__PEER_STATE_DOWN, 3 * TIMEOUT_MS);
    ck_assert(log_has(2, "refused a peer link from 127.0.0.1:"));
    ck_assert(log_has(1, "different peers list"));
    wait_state(0, 1, LLEP_PB__PEER_STATE__PEER_STATE_UP, 1000);
    for (int i = 0; i < NODES; i++)
        stop_node(i);
}
END_TEST

/* Without --node-id the reply says so; llepctl prints it. */
START_TEST(not_clustered) {
    char sock[128], out[1024];
    llep_test_llepd o = { .sock = sock, .devices = "1" };

    llep_test_node_sock(&nodes, 0, sock, sizeof(sock));
    pids[0] = llep_test_llepd_start(&o);
    LlepPb__Frame *f = query_peers(0);
    ck_assert(!f->peers_reply->clustered);
    ck_assert_uint_eq(f->peers_reply->n_peers, 0);
    llep__frame_free(f);
    ck_assert_int_eq(run_llepctl(0, "peers", NULL, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "not in a cluster"), "%s", out);
    ck_assert_int_eq(run_llepctl(0, "--json", "peers", out, sizeof(out)), 0);
    /* Exactly {"clustered": false, "peers": []}: no node fields. */
    json_object *j = json_tokener_parse(out), *v;
    ck_assert_msg(j && json_object_is_type(j, json_type_object), "not JSON: %s", out);
    ck_assert_int_eq(json_object_object_length(j), 2);
    ck_assert(json_object_object_get_ex(j, "clustered", &v) &&
              json_object_is_type(v, json_type_boolean) && !json_object_get_boolean(v));
    ck_assert(json_object_object_get_ex(j, "peers", &v) &&
              json_object_is_type(v, json_type_array) && json_object_array_length(v) == 0);
    json_object_put(j);
    stop_node(0);
}
END_TEST

static Suite *cluster_suite(void) {
    Suite *s = suite_create("cluster");
    TCase *tc = tcase_create("membership");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, three_nodes_down_and_back);
    tcase_add_test(tc, bad_peer_input);
    tcase_add_test(tc, fake_peer);
    tcase_add_test(tc, fake_peer_cluster_layers);
    tcase_add_test(tc, peer_secret);
    tcase_add_test(tc, different_peers_list);
    tcase_add_test(tc, not_clustered);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(cluster_suite(), CK_ENV);
}
