/* Tests of the socket transport between nodes (daemon/engine/xnode-cpu.c), reached as llepd reaches
 * it: through the CPU backend's ops->xnode. The ranks of a communicator are played in one
 * process, all driven from the test's thread (open and exchange do not block), each with the
 * communicator's own thread behind it. Every wait is bounded, so a bug fails a test instead of
 * hanging it. */
#include <check.h>
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "fixtures.h"
#include "xnode.h"

#define MAX_RANKS 4
#define OPEN_S 5.0       /* bound on a communicator coming up */
#define EXCHANGE_S 60.0  /* bound on an exchange of some tens of MiB under sanitizers */
#define FAIL_S 5.0       /* bound on a failure reaching every rank */
#define SENTINEL 0xa5

/* ---- communicators of 2 to MAX_RANKS ranks in this process ---- */

typedef struct comm {
    llep_backend *b;
    const llep_xnode_ops *o;
    uint32_t n;
    uint8_t id[LLEP_XNODE_ID_BYTES];
    llep_xnode *x[MAX_RANKS];
    atomic_int notified[MAX_RANKS];
} comm;

static double now_s(void) {
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void nap(void) {
    struct timespec t = { 0, 1000000 };

    nanosleep(&t, NULL);
}

static void on_notify(void *arg) {
    atomic_fetch_add((atomic_int *)arg, 1);
}

static llep_backend *make_backend(void) {
    llep_backend_options opt = { .num_devices = 2, .threads = 1 };
    llep_backend *b = NULL;

    ck_assert_int_eq(llep__backend_cpu.create(&opt, &b), 0);
    ck_assert_ptr_nonnull(b->ops->xnode);
    return b;
}

/* Makes an id and opens ranks first .. first + count - 1 of n (the others stay closed). */
static void comm_open_some(comm *c, llep_backend *b, uint32_t n, uint32_t first,
                           uint32_t count) {
    char err[256];

    memset(c, 0, sizeof(*c));
    c->b = b;
    c->o = b->ops->xnode;
    c->n = n;
    ck_assert_int_eq(c->o->unique_id(b, c->id), 0);
    for (uint32_t r = first; r < first + count; r++) {
        atomic_init(&c->notified[r], 0);
        err[0] = '\0';
        ck_assert_msg(c->o->open(b, r % b->num_devices, c->id, n, r, on_notify, &c->notified[r],
                                 &c->x[r], err, sizeof(err)) == 0,
                      "open of rank %u of %u: %s", r, n, err);
        ck_assert_ptr_nonnull(c->x[r]);
    }
}

static void comm_open(comm *c, llep_backend *b, uint32_t n) {
    comm_open_some(c, b, n, 0, n);
}

static void comm_close(comm *c) {
    for (uint32_t r = 0; r < c->n; r++) {
        c->o->close(c->x[r]);
        c->x[r] = NULL;
    }
}

/* Waits until every rank polls 0 and has been notified at least `calls` times. */
static void wait_all_up(comm *c, int calls, double secs) {
    double deadline = now_s() + secs;

    for (;;) {
        uint32_t done = 0;

        for (uint32_t r = 0; r < c->n; r++) {
            int e = c->o->poll(c->x[r]);

            ck_assert_msg(e == 0 || e == -EINPROGRESS, "rank %u of %u failed (%d): %s", r,
                          c->n, e, c->o->error(c->x[r]));
            done += e == 0 && atomic_load(&c->notified[r]) >= calls;
        }
        if (done == c->n)
            return;
        ck_assert_msg(now_s() < deadline, "%u of %u ranks done after %.0f s", done, c->n, secs);
        nap();
    }
}

/* Waits until x stops being in progress; returns what poll() then says. */
static int wait_settled(const comm *c, llep_xnode *x, double secs) {
    double deadline = now_s() + secs;
    int e;

    while ((e = c->o->poll(x)) == -EINPROGRESS) {
        ck_assert_msg(now_s() < deadline, "still in progress after %.0f s", secs);
        nap();
    }
    return e;
}

/* ---- all-to-all exchanges with random content ---- */

static uint64_t rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

/* One message from one rank to another. Empty messages are listed by the sender and, for
 * half the pairs, by the receiver too: either is allowed. */
typedef struct msg {
    uint32_t from, to;
    uint64_t bytes;
    int receiver_lists;
    uint8_t *sbuf, *rbuf;
} msg;

typedef struct plan {
    comm *c;
    msg *m;
    uint32_t nm;
    llep_xnode_op *ops[MAX_RANKS];
    uint32_t nops[MAX_RANKS];
} plan;

/* Sizes of the k-th message of each pair; each pair adds its own offset, so that a message
 * matched with the wrong one has the wrong size. */
static const uint64_t sizes[] = { 0, 1, 100, 4096, 65536, 1u << 20, 3u << 20 };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

static void *dev_alloc(const comm *c, uint32_t rank, uint64_t bytes) {
    void *p = NULL;

    if (bytes == 0)
        return NULL;
    ck_assert_int_eq(c->b->ops->alloc(c->b, rank % c->b->num_devices, bytes, &p), 0);
    return p;
}

static void fill_random(uint8_t *p, uint64_t bytes, uint64_t *s) {
    for (uint64_t i = 0; i < bytes; i++)
        p[i] = (uint8_t)(rnd(s) >> 56);
    /* The first byte differs from the sentinel, so that even a 1-byte message that never
     * arrives is seen. */
    if (bytes > 0 && p[0] == SENTINEL)
        p[0] ^= 1;
}

/* The next message of queue (rank, peer, recv) from index *head on; nm when none is left. */
static uint32_t queue_next(const plan *p, uint32_t rank, uint32_t peer, int recv,
                           uint32_t *head) {
    for (uint32_t i = *head; i < p->nm; i++) {
        const msg *m = &p->m[i];
        int mine = recv ? m->to == rank && m->from == peer && (m->bytes || m->receiver_lists)
                        : m->from == rank && m->to == peer;

        if (mine) {
            *head = i + 1;
            return i;
        }
    }
    *head = p->nm;
    return p->nm;
}

/* Rank r's op list: its queues (one per peer and direction, each in message order) merged
 * in a random order, as the order between queues is free. */
static void plan_ops(plan *p, uint32_t r, uint64_t *s) {
    uint32_t head[2 * MAX_RANKS] = { 0 }, live[2 * MAX_RANKS], nlive;

    p->ops[r] = calloc(p->nm, sizeof(llep_xnode_op));
    ck_assert_ptr_nonnull(p->ops[r]);
    for (;;) {
        nlive = 0;
        for (uint32_t q = 0; q < 2 * p->c->n; q++) {
            uint32_t h = head[q];

            if (q / 2 != r && queue_next(p, r, q / 2, (int)(q % 2), &h) < p->nm)
                live[nlive++] = q;
        }
        if (nlive == 0)
            return;
        uint32_t q = live[rnd(s) % nlive];
        const msg *m = &p->m[queue_next(p, r, q / 2, (int)(q % 2), &head[q])];
        p->ops[r][p->nops[r]++] = (llep_xnode_op){
            .peer = q / 2, .recv = (int)(q % 2), .buf = q % 2 ? m->rbuf : m->sbuf,
            .bytes = m->bytes };
    }
}

static void plan_make(plan *p, comm *c, uint64_t seed) {
    uint64_t s = seed | 1;

    memset(p, 0, sizeof(*p));
    p->c = c;
    p->m = calloc((size_t)c->n * c->n * NSIZES, sizeof(msg));
    ck_assert_ptr_nonnull(p->m);
    for (uint32_t k = 0; k < NSIZES; k++)
        for (uint32_t i = 0; i < c->n; i++)
            for (uint32_t j = 0; j < c->n; j++) {
                if (i == j)
                    continue;
                msg *m = &p->m[p->nm++];
                m->from = i;
                m->to = j;
                m->bytes = sizes[k] ? sizes[k] + 7 * (i * c->n + j) + (seed & 63) : 0;
                m->receiver_lists = (i + j) % 2 == 0;
                m->sbuf = dev_alloc(c, i, m->bytes);
                m->rbuf = dev_alloc(c, j, m->bytes);
                fill_random(m->sbuf, m->bytes, &s);
                if (m->bytes)
                    memset(m->rbuf, SENTINEL, m->bytes);
            }
    for (uint32_t r = 0; r < c->n; r++)
        plan_ops(p, r, &s);
}

static void plan_start(plan *p) {
    const comm *c = p->c;

    for (uint32_t r = 0; r < c->n; r++)
        ck_assert_msg(c->o->exchange(c->x[r], p->ops[r], p->nops[r]) == 0,
                      "exchange on rank %u: %s", r, c->o->error(c->x[r]));
}

static void plan_check(const plan *p) {
    for (uint32_t i = 0; i < p->nm; i++) {
        const msg *m = &p->m[i];

        uint64_t b = 0;

        /* Byte by byte only where they differ: every check of Check's costs a write. */
        if (m->bytes == 0 || memcmp(m->rbuf, m->sbuf, m->bytes) == 0)
            continue;
        while (m->rbuf[b] == m->sbuf[b])
            b++;
        ck_abort_msg("message %u from rank %u to %u (%llu bytes): byte %llu is %#x, sent %#x", i,
                     m->from, m->to, (unsigned long long)m->bytes, (unsigned long long)b,
                     m->rbuf[b], m->sbuf[b]);
    }
}

static void plan_free(plan *p) {
    for (uint32_t i = 0; i < p->nm; i++) {
        if (p->m[i].sbuf)
            p->c->b->ops->free(p->c->b, p->m[i].from % p->c->b->num_devices, p->m[i].sbuf);
        if (p->m[i].rbuf)
            p->c->b->ops->free(p->c->b, p->m[i].to % p->c->b->num_devices, p->m[i].rbuf);
    }
    for (uint32_t r = 0; r < p->c->n; r++)
        free(p->ops[r]);
    free(p->m);
}

/* Up, two all-to-all exchanges and an empty one on one communicator of n ranks. */
static void all_to_all(uint32_t n) {
    llep_backend *b = make_backend();
    comm c;
    plan p;
    double t0;

    comm_open(&c, b, n);
    wait_all_up(&c, 1, OPEN_S);
    for (int round = 0; round < 2; round++) {
        plan_make(&p, &c, 0x5eed0000u + (uint64_t)round * 977 + n);
        plan_start(&p);
        wait_all_up(&c, 2 + round, EXCHANGE_S);
        plan_check(&p);
        plan_free(&p);
    }
    for (uint32_t r = 0; r < n; r++)
        ck_assert_int_eq(c.o->exchange(c.x[r], NULL, 0), 0);
    wait_all_up(&c, 4, OPEN_S);
    for (uint32_t r = 0; r < n; r++)
        ck_assert_str_eq(c.o->error(c.x[r]), "");
    t0 = now_s();
    comm_close(&c);
    ck_assert_msg(now_s() - t0 < 1.0, "closing %u idle ranks took %.2f s", n, now_s() - t0);
    b->ops->destroy(b);
}

/* ---- the tests ---- */

START_TEST(test_unique_id) {
    llep_backend *b = make_backend();
    const llep_xnode_ops *o = b->ops->xnode;
    uint8_t a[LLEP_XNODE_ID_BYTES], c[LLEP_XNODE_ID_BYTES];

    ck_assert_str_eq(o->name, "socket");
    ck_assert_uint_eq(o->flags & LLEP_XNODE_SAME_HOST, LLEP_XNODE_SAME_HOST);
    ck_assert_int_eq(o->unique_id(b, a), 0);
    ck_assert_int_eq(o->unique_id(b, c), 0);
    ck_assert_mem_eq(a, "LLEPXN1", 8);
    ck_assert_int_ne(memcmp(a, c, sizeof(a)), 0);
    b->ops->destroy(b);
}
END_TEST

START_TEST(test_all_to_all_2) {
    all_to_all(2);
}
END_TEST

START_TEST(test_all_to_all_4) {
    all_to_all(4);
}
END_TEST

/* Rank 0 finishes two exchanges before rank 1 starts its first: the bytes of rank 0's second
 * exchange wait on the link and go to rank 1's second, not its first. */
START_TEST(test_rank_ahead) {
    llep_backend *b = make_backend();
    uint8_t a[1000], a2[2000], got[1000], got2[2000];
    llep_xnode_op send1 = { .peer = 1, .recv = 0, .buf = a, .bytes = sizeof(a) };
    llep_xnode_op send2 = { .peer = 1, .recv = 0, .buf = a2, .bytes = sizeof(a2) };
    llep_xnode_op recv1 = { .peer = 0, .recv = 1, .buf = got, .bytes = sizeof(got) };
    llep_xnode_op recv2 = { .peer = 0, .recv = 1, .buf = got2, .bytes = sizeof(got2) };
    uint64_t s = 42;
    comm c;

    fill_random(a, sizeof(a), &s);
    fill_random(a2, sizeof(a2), &s);
    comm_open(&c, b, 2);
    wait_all_up(&c, 1, OPEN_S);
    ck_assert_int_eq(c.o->exchange(c.x[0], &send1, 1), 0);
    ck_assert_int_eq(wait_settled(&c, c.x[0], OPEN_S), 0);
    ck_assert_int_eq(c.o->exchange(c.x[0], &send2, 1), 0);
    ck_assert_int_eq(wait_settled(&c, c.x[0], OPEN_S), 0);

    ck_assert_int_eq(c.o->exchange(c.x[1], &recv1, 1), 0);
    ck_assert_int_eq(wait_settled(&c, c.x[1], OPEN_S), 0);
    ck_assert_mem_eq(got, a, sizeof(a));
    ck_assert_int_eq(c.o->exchange(c.x[1], &recv2, 1), 0);
    ck_assert_int_eq(wait_settled(&c, c.x[1], OPEN_S), 0);
    ck_assert_mem_eq(got2, a2, sizeof(a2));
    comm_close(&c);
    b->ops->destroy(b);
}
END_TEST

/* Rank 0 sends 100 bytes where rank 1 expects 200: rank 1 fails naming the sizes, and rank 0,
 * still waiting to receive from rank 1, fails because rank 1's links close. */
START_TEST(test_size_mismatch) {
    llep_backend *b = make_backend();
    uint8_t out[100], in[200], back[64];
    llep_xnode_op ops0[] = { { .peer = 1, .recv = 0, .buf = out, .bytes = sizeof(out) },
                             { .peer = 1, .recv = 1, .buf = back, .bytes = sizeof(back) } };
    llep_xnode_op ops1[] = { { .peer = 0, .recv = 1, .buf = in, .bytes = sizeof(in) } };
    comm c;
    int e;

    memset(out, 1, sizeof(out));
    comm_open(&c, b, 2);
    wait_all_up(&c, 1, OPEN_S);
    ck_assert_int_eq(c.o->exchange(c.x[0], ops0, 2), 0);
    ck_assert_int_eq(c.o->exchange(c.x[1], ops1, 1), 0);

    e = wait_settled(&c, c.x[1], FAIL_S);
    ck_assert_int_eq(e, -EPROTO);
    ck_assert_msg(strstr(c.o->error(c.x[1]), "rank 0 sent 100 bytes where 200 were expected"),
                  "rank 1's error: %s", c.o->error(c.x[1]));
    e = wait_settled(&c, c.x[0], FAIL_S);
    ck_assert_msg(e < 0, "rank 0's poll: %d", e);
    ck_assert_msg(strstr(c.o->error(c.x[0]), "rank 1"), "rank 0's error: %s",
                  c.o->error(c.x[0]));
    ck_assert_int_ge(atomic_load(&c.notified[0]), 2);
    ck_assert_int_ge(atomic_load(&c.notified[1]), 2);
    /* A failed communicator takes no more exchanges. */
    ck_assert_int_eq(c.o->exchange(c.x[0], NULL, 0), -EINVAL);
    ck_assert_str_ne(c.o->error(c.x[0]), "");
    comm_close(&c);
    b->ops->destroy(b);
}
END_TEST

/* Rank 1 closes while rank 0 sends it more than a socket holds and waits to receive from it. */
START_TEST(test_peer_closes) {
    llep_backend *b = make_backend();
    size_t big = 8u << 20;
    uint8_t *out = calloc(1, big), in[4096];
    llep_xnode_op ops[] = { { .peer = 1, .recv = 1, .buf = in, .bytes = sizeof(in) },
                            { .peer = 1, .recv = 0, .buf = out, .bytes = big } };
    comm c;
    double t0;
    int e;

    ck_assert_ptr_nonnull(out);
    comm_open(&c, b, 2);
    wait_all_up(&c, 1, OPEN_S);
    ck_assert_int_eq(c.o->exchange(c.x[0], ops, 2), 0);
    for (int i = 0; i < 50; i++)
        nap();
    ck_assert_int_eq(c.o->poll(c.x[0]), -EINPROGRESS);

    t0 = now_s();
    c.o->close(c.x[1]);
    c.x[1] = NULL;
    e = wait_settled(&c, c.x[0], FAIL_S);
    ck_assert_msg(e < 0, "rank 0's poll: %d", e);
    ck_assert_msg(strstr(c.o->error(c.x[0]), "rank 1 closed its link"), "rank 0's error: %s",
                  c.o->error(c.x[0]));
    ck_assert_msg(now_s() - t0 < 2.0, "the failure took %.2f s", now_s() - t0);
    comm_close(&c);
    free(out);
    b->ops->destroy(b);
}
END_TEST

/* Rank 1 of 3 alone can neither connect to rank 0 nor be reached by rank 2; rank 0 of 2
 * alone waits only to accept. close() must wait for neither. */
static void close_alone(uint32_t n, uint32_t rank) {
    llep_backend *b = make_backend();
    comm c;
    double t0;

    comm_open_some(&c, b, n, rank, 1);
    for (int i = 0; i < 50; i++)
        nap();
    ck_assert_int_eq(c.o->poll(c.x[rank]), -EINPROGRESS);
    ck_assert_int_eq(atomic_load(&c.notified[rank]), 0);
    t0 = now_s();
    c.o->close(c.x[rank]);
    ck_assert_msg(now_s() - t0 < 1.0, "close of rank %u of %u took %.2f s", rank, n,
                  now_s() - t0);
    b->ops->destroy(b);
}

START_TEST(test_close_while_connecting) {
    close_alone(3, 1);
    close_alone(2, 0);
}
END_TEST

static void expect_open_einval(comm *c, const uint8_t *id, uint32_t dev, uint32_t n,
                               uint32_t rank, const char *what) {
    llep_xnode *x = NULL;
    char err[256] = "";
    int e = c->o->open(c->b, dev, id, n, rank, on_notify, &c->notified[0], &x, err, sizeof(err));

    ck_assert_msg(e == -EINVAL, "%s: open returned %d", what, e);
    ck_assert_msg(x == NULL, "%s: a communicator came back", what);
    ck_assert_msg(err[0] != '\0', "%s: no message", what);
}

static void expect_exchange_einval(comm *c, uint32_t r, const llep_xnode_op *ops, uint32_t n,
                                   const char *what) {
    int e = c->o->exchange(c->x[r], ops, n);

    ck_assert_msg(e == -EINVAL, "%s: exchange returned %d", what, e);
    ck_assert_msg(c->o->error(c->x[r])[0] != '\0', "%s: no message", what);
}

START_TEST(test_bad_arguments) {
    llep_backend *b = make_backend();
    uint8_t none[LLEP_XNODE_ID_BYTES] = { 0 }, buf[64] = { 0 }, got[64];
    llep_xnode_op self = { .peer = 0, .recv = 0, .buf = buf, .bytes = sizeof(buf) };
    llep_xnode_op far = { .peer = 2, .recv = 0, .buf = buf, .bytes = sizeof(buf) };
    llep_xnode_op nobuf = { .peer = 1, .recv = 1, .buf = NULL, .bytes = 8 };
    llep_xnode_op send = { .peer = 0, .recv = 0, .buf = buf, .bytes = sizeof(buf) };
    llep_xnode_op recv = { .peer = 1, .recv = 1, .buf = got, .bytes = sizeof(got) };
    comm c;

    /* Rank 0 of 2 alone, so that it stays in the opening state. */
    comm_open_some(&c, b, 2, 0, 1);
    expect_open_einval(&c, none, 0, 2, 1, "an id without the magic");
    expect_open_einval(&c, c.id, 0, 2, 2, "rank == nranks");
    expect_open_einval(&c, c.id, 0, 1, 0, "one rank");
    expect_open_einval(&c, c.id, 0, 100000, 1, "too many ranks");
    expect_open_einval(&c, c.id, b->num_devices, 2, 1, "no such device");
    expect_exchange_einval(&c, 0, &recv, 1, "an exchange before the communicator is up");
    ck_assert_int_eq(c.o->poll(c.x[0]), -EINPROGRESS);

    /* Rank 1 joins: now the ops are what is wrong. */
    atomic_init(&c.notified[1], 0);
    ck_assert_int_eq(c.o->open(b, 1, c.id, 2, 1, on_notify, &c.notified[1], &c.x[1], NULL, 0),
                     0);
    wait_all_up(&c, 1, OPEN_S);
    expect_exchange_einval(&c, 0, &self, 1, "an op with its own rank");
    expect_exchange_einval(&c, 0, &far, 1, "an op with rank 2 of 2");
    expect_exchange_einval(&c, 0, &nobuf, 1, "bytes without a buffer");
    expect_exchange_einval(&c, 0, NULL, 1, "no op array");
    ck_assert_int_eq(c.o->poll(c.x[0]), 0);
    ck_assert_str_eq(c.o->error(c.x[0]), "");

    /* Rejected calls started nothing: a good exchange still works, and a second one while it
     * is in flight is refused. */
    memset(buf, 7, sizeof(buf));
    memset(got, 0, sizeof(got));
    ck_assert_int_eq(c.o->exchange(c.x[0], &recv, 1), 0);
    ck_assert_int_eq(c.o->exchange(c.x[0], &recv, 1), -EBUSY);
    ck_assert_str_ne(c.o->error(c.x[0]), "");
    ck_assert_int_eq(c.o->exchange(c.x[1], &send, 1), 0);
    wait_all_up(&c, 2, OPEN_S);
    ck_assert_mem_eq(got, buf, sizeof(got));
    comm_close(&c);
    b->ops->destroy(b);
}
END_TEST

/* A stranger connects to rank 0's socket and sends no hello: rank 0 fails rather than taking
 * it for rank 1. */
START_TEST(test_bad_hello) {
    static const char hex[] = "0123456789abcdef";
    llep_backend *b = make_backend();
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    char name[80] = "llep-xnode-";
    size_t len = strlen(name);
    comm c;
    int fd, e;

    comm_open_some(&c, b, 2, 0, 1);
    for (int i = 8; i < 24; i++) {
        name[len++] = hex[c.id[i] >> 4];
        name[len++] = hex[c.id[i] & 15];
    }
    len += (size_t)snprintf(name + len, sizeof(name) - len, "-0");
    memcpy(a.sun_path + 1, name, len);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_msg(connect(fd, (struct sockaddr *)&a,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)) == 0,
                  "cannot connect to rank 0's socket");
    ck_assert_int_eq(write(fd, "GET / HTTP/1.0\r\n", 16), 16);
    e = wait_settled(&c, c.x[0], FAIL_S);
    ck_assert_int_eq(e, -EPROTO);
    ck_assert_msg(strstr(c.o->error(c.x[0]), "hello"), "rank 0's error: %s",
                  c.o->error(c.x[0]));
    ck_assert_int_ge(atomic_load(&c.notified[0]), 1);
    close(fd);
    comm_close(&c);
    b->ops->destroy(b);
}
END_TEST

/* A communicator of 2 ranks and one of 3 at once, with the same rank numbers: each exchange
 * gets its own bytes. */
START_TEST(test_two_communicators) {
    llep_backend *b = make_backend();
    comm c2, c3;
    plan p2, p3;

    comm_open(&c2, b, 2);
    comm_open(&c3, b, 3);
    ck_assert_int_ne(memcmp(c2.id, c3.id, sizeof(c2.id)), 0);
    wait_all_up(&c2, 1, OPEN_S);
    wait_all_up(&c3, 1, OPEN_S);
    plan_make(&p2, &c2, 0xabcdef12u);
    plan_make(&p3, &c3, 0x12345678u);
    plan_start(&p2);
    plan_start(&p3);
    wait_all_up(&c2, 2, EXCHANGE_S);
    wait_all_up(&c3, 2, EXCHANGE_S);
    plan_check(&p2);
    plan_check(&p3);
    plan_free(&p2);
    plan_free(&p3);
    comm_close(&c2);
    comm_close(&c3);
    b->ops->destroy(b);
}
END_TEST

static Suite *xnode_suite(void) {
    Suite *s = suite_create("xnode");
    TCase *tc = tcase_create("socket");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_unique_id);
    tcase_add_test(tc, test_all_to_all_2);
    tcase_add_test(tc, test_all_to_all_4);
    tcase_add_test(tc, test_rank_ahead);
    tcase_add_test(tc, test_size_mismatch);
    tcase_add_test(tc, test_peer_closes);
    tcase_add_test(tc, test_close_while_connecting);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_bad_hello);
    tcase_add_test(tc, test_two_communicators);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(xnode_suite(), CK_ENV);
}
