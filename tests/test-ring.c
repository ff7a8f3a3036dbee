/* Shared-memory arena and rings: layout, validation of hostile arenas, ring order and
 * corruption, concurrent producers/consumers in threads and in processes, eventfd wake-ups,
 * submission checks, and handing the arena over a unix socket (fdpass.c). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fdpass.h"
#include "fixtures.h"
#include "ring.h"

static void make_arena(llep_arena *a, uint64_t tensor_bytes, uint32_t sq, uint32_t cq) {
    llep_arena_geom g;

    ck_assert_int_eq(llep__arena_layout(tensor_bytes, sq, cq, &g), 0);
    ck_assert_int_eq(llep__arena_create(&g, a), 0);
    ck_assert_int_ge(a->fd, 0);
}

START_TEST(test_layout) {
    llep_arena_geom g;

    ck_assert_int_eq(llep__arena_layout(1, 0, 0, &g), 0);
    ck_assert_uint_eq(g.sq_entries, LLEP_RING_DEFAULT_ENTRIES);
    ck_assert_uint_eq(g.cq_entries, LLEP_RING_DEFAULT_ENTRIES);
    ck_assert_uint_ge(g.sq_offset, sizeof(llep_arena_header));
    ck_assert_uint_eq(g.sq_offset % LLEP_CACHELINE, 0);
    ck_assert_uint_eq(g.cq_offset % LLEP_CACHELINE, 0);
    ck_assert_uint_ge(g.cq_offset,
                      g.sq_offset + sizeof(llep_ring_ctl) + g.sq_entries * sizeof(llep_sqe));
    ck_assert_uint_ge(g.tensor_offset,
                      g.cq_offset + sizeof(llep_ring_ctl) + g.cq_entries * sizeof(llep_cqe));
    ck_assert_uint_eq(g.tensor_offset % LLEP_ARENA_TENSOR_ALIGN, 0);
    ck_assert_uint_eq(g.tensor_size, 4096);
    ck_assert_uint_eq(g.arena_size, g.tensor_offset + g.tensor_size);

    ck_assert_int_eq(llep__arena_layout(0, 1, LLEP_RING_MAX_ENTRIES, &g), 0);
    ck_assert_uint_eq(g.tensor_size, 0);
    ck_assert_int_eq(llep__arena_layout(0, 3, 0, &g), -EINVAL);
    ck_assert_int_eq(llep__arena_layout(0, 0, 1000, &g), -EINVAL);
    ck_assert_int_eq(llep__arena_layout(0, LLEP_RING_MAX_ENTRIES * 2, 0, &g), -EINVAL);
    ck_assert_int_eq(llep__arena_layout(LLEP_ARENA_MAX_SIZE, 0, 0, &g), -EINVAL);
    ck_assert_int_eq(llep__arena_layout(UINT64_MAX, 0, 0, &g), -EINVAL);
    ck_assert_int_eq(llep__arena_layout(LLEP_ARENA_MAX_SIZE - (1 << 20), 0, 0, &g), 0);
}
END_TEST

START_TEST(test_create_and_map) {
    llep_arena a, b;
    llep_arena_header *h;
    llep_sqe e = { .tag = 1, .layer_id = 2, .tokens = 3 }, out;
    char err[256];

    make_arena(&a, 1 << 20, 8, 16);
    h = (llep_arena_header *)a.base;
    ck_assert_uint_eq(h->magic, LLEP_ARENA_MAGIC);
    ck_assert_uint_eq(h->arena_size, a.geom.arena_size);
    ck_assert_int_eq(fcntl(a.fd, F_GET_SEALS) & (F_SEAL_SHRINK | F_SEAL_GROW),
                     F_SEAL_SHRINK | F_SEAL_GROW);
    /* The peer cannot shrink it under us. */
    ck_assert_int_eq(ftruncate(a.fd, 4096), -1);

    ck_assert_int_eq(llep__arena_map(a.fd, &a.geom, &b, err, sizeof(err)), 0);
    ck_assert_int_eq(b.fd, -1);
    ck_assert_mem_eq(&a.geom, &b.geom, sizeof(a.geom));
    ck_assert_int_eq(llep__arena_map(a.fd, NULL, &b, err, sizeof(err)), 0);
    llep__arena_unmap(&b);
    ck_assert_int_eq(llep__arena_map(a.fd, &a.geom, &b, err, sizeof(err)), 0);

    /* A submission pushed through one mapping comes out of the other. */
    ck_assert_int_eq(llep__sq_push(&b, &e), 0);
    ck_assert_int_eq(llep__ring_pending(&a.sq), 1);
    ck_assert_int_eq(llep__sq_pop(&a, &out), 0);
    ck_assert_mem_eq(&e, &out, sizeof(e));
    ck_assert_int_eq(llep__sq_pop(&a, &out), -EAGAIN);

    /* Tensor space is shared too. */
    memcpy(llep__arena_ptr(&a, a.geom.tensor_offset), "hello", 6);
    ck_assert_str_eq(llep__arena_ptr(&b, b.geom.tensor_offset), "hello");

    llep__arena_unmap(&b);
    llep__arena_unmap(&a);
    llep__arena_unmap(&a);  /* harmless twice */
}
END_TEST

/* Entries come out in order; a full ring says -EAGAIN; indices wrap around 2^32. */
START_TEST(test_ring_order_and_wrap) {
    llep_arena a;
    llep_cqe c, out;

    make_arena(&a, 0, 4, 4);
    for (uint64_t round = 0; round < 3; round++) {
        for (uint32_t i = 0; i < 4; i++) {
            c = (llep_cqe){ .tag = round * 10 + i, .status = -(int32_t)i };
            ck_assert_int_eq(llep__cq_push(&a, &c), 0);
        }
        ck_assert_int_eq(llep__cq_push(&a, &c), -EAGAIN);
        for (uint32_t i = 0; i < 4; i++) {
            ck_assert_int_eq(llep__cq_pop(&a, &out), 0);
            ck_assert_uint_eq(out.tag, round * 10 + i);
            ck_assert_int_eq(out.status, -(int32_t)i);
        }
        ck_assert_int_eq(llep__cq_pop(&a, &out), -EAGAIN);
    }

    /* Start both sides just below the 32-bit wrap. */
    atomic_store(&a.cq.ctl->head, UINT32_MAX - 1);
    atomic_store(&a.cq.ctl->tail, UINT32_MAX - 1);
    a.cq.prod = a.cq.cons = UINT32_MAX - 1;
    for (uint32_t i = 0; i < 4; i++) {
        c.tag = i;
        ck_assert_int_eq(llep__cq_push(&a, &c), 0);
    }
    ck_assert_int_eq(llep__cq_push(&a, &c), -EAGAIN);
    for (uint32_t i = 0; i < 4; i++) {
        ck_assert_int_eq(llep__cq_pop(&a, &out), 0);
        ck_assert_uint_eq(out.tag, i);
    }
    ck_assert_uint_eq(a.cq.cons, 2);
    llep__arena_unmap(&a);
}
END_TEST

/* A peer that writes impossible indices gets -EPROTO, never an out-of-bounds access. */
START_TEST(test_ring_corrupt_indices) {
    llep_arena a;
    llep_sqe e = { 0 }, out;

    make_arena(&a, 0, 8, 8);
    /* The client (producer) claims 9 entries in an 8-slot ring. */
    atomic_store(&a.sq.ctl->head, 9);
    ck_assert_int_eq(llep__sq_pop(&a, &out), -EPROTO);
    ck_assert_int_eq(llep__ring_pending(&a.sq), -EPROTO);
    atomic_store(&a.sq.ctl->head, UINT32_MAX);
    ck_assert_int_eq(llep__sq_pop(&a, &out), -EPROTO);
    /* Wild but plausible values are masked into the ring. */
    atomic_store(&a.sq.ctl->head, 8);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(llep__sq_pop(&a, &out), 0);
    ck_assert_int_eq(llep__sq_pop(&a, &out), -EAGAIN);

    /* As producer: the consumer's tail runs ahead of anything we produced. */
    a.sq.prod = 8;
    atomic_store(&a.sq.ctl->tail, 9);
    ck_assert_int_eq(llep__sq_push(&a, &e), -EPROTO);
    atomic_store(&a.sq.ctl->tail, 8);
    ck_assert_int_eq(llep__sq_push(&a, &e), 0);
    /* Our own index lives in private memory: overwriting its shared copy changes nothing. */
    atomic_store(&a.sq.ctl->head, 1000);
    ck_assert_int_eq(llep__sq_push(&a, &e), 0);
    ck_assert_uint_eq(atomic_load(&a.sq.ctl->head), 10);
    llep__arena_unmap(&a);
}
END_TEST

/* Writes a memfd sealed against shrinking holding `size` bytes copied from src. */
static int sealed_copy(const void *src, size_t size) {
    int fd = memfd_create("corrupt", MFD_CLOEXEC | MFD_ALLOW_SEALING);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
    ck_assert_int_eq(pwrite(fd, src, size, 0), (ssize_t)size);
    ck_assert_int_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
    return fd;
}

/* Every header field a mapper depends on, corrupted in turn, gets the arena refused. */
START_TEST(test_corrupt_headers) {
    llep_arena a, b;
    llep_arena_header good;
    char err[256];
    size_t size;
    uint8_t *copy;

    make_arena(&a, 8192, 4, 4);
    good = *(llep_arena_header *)a.base;
    size = a.geom.arena_size;
    copy = malloc(size);
    memcpy(copy, a.base, size);

    for (int field = 0; field < 16; field++) {
        llep_arena_header *h = (llep_arena_header *)copy;
        int fd;

        *h = good;
        switch (field) {
        case 0: h->magic ^= 1; break;
        case 1: h->version = 2; break;
        case 2: h->header_size = 64; break;
        case 3: h->arena_size += 4096; break;
        case 4: h->arena_size = 0; break;
        case 5: h->sq_offset = 0; break;
        case 6: h->cq_offset = h->sq_offset; break;
        case 7: h->tensor_offset -= 4096; break;
        case 8: h->tensor_size += 4096; break;
        case 9: h->tensor_size = UINT64_MAX; break;
        case 10: h->sq_entries = 3; break;
        case 11: h->cq_entries = 0; break;
        case 12: h->sq_entries = 8; break;  /* a plausible size, but not this layout */
        case 13: h->sqe_size = 32; break;
        case 14: h->cqe_size = 64; break;
        case 15: h->cq_entries = 1u << 31; break;
        }
        fd = sealed_copy(copy, size);
        ck_assert_msg(llep__arena_map(fd, NULL, &b, err, sizeof(err)) == -EPROTO,
                      "field %d accepted", field);
        ck_assert(err[0] != '\0');
        close(fd);
    }

    /* A good copy maps, but not when it differs from what ArenaReply announced. */
    {
        llep_arena_geom other = a.geom;
        int fd;

        memcpy(copy, &good, sizeof(good));
        fd = sealed_copy(copy, size);
        ck_assert_int_eq(llep__arena_map(fd, &a.geom, &b, err, sizeof(err)), 0);
        llep__arena_unmap(&b);
        other.sq_entries = 8;
        ck_assert_int_eq(llep__arena_map(fd, &other, &b, err, sizeof(err)), -EPROTO);
        other = a.geom;
        other.arena_size += 4096;
        ck_assert_int_eq(llep__arena_map(fd, &other, &b, err, sizeof(err)), -EPROTO);
        close(fd);
    }
    free(copy);
    llep__arena_unmap(&a);
}
END_TEST

/* Descriptors that are not a sealed arena of sensible size are refused before mapping. */
START_TEST(test_bad_descriptors) {
    llep_arena b;
    char err[256];
    int fd, p[2];
    llep_arena_header h = { 0 };

    ck_assert_int_eq(llep__arena_map(-1, NULL, &b, err, sizeof(err)), -EINVAL);

    /* Not sealed: the peer could truncate it under us. */
    fd = memfd_create("unsealed", MFD_CLOEXEC);
    ck_assert_int_eq(ftruncate(fd, 1 << 16), 0);
    ck_assert_int_eq(llep__arena_map(fd, NULL, &b, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "arena is not sealed against shrinking");
    close(fd);

    /* Too small to hold a header, and empty. */
    fd = sealed_copy(&h, 16);
    ck_assert_int_eq(llep__arena_map(fd, NULL, &b, err, sizeof(err)), -EINVAL);
    close(fd);
    fd = memfd_create("empty", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    ck_assert_int_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
    ck_assert_int_eq(llep__arena_map(fd, NULL, &b, err, sizeof(err)), -EINVAL);
    close(fd);
    /* All zeros. */
    fd = sealed_copy(&h, sizeof(h));
    ck_assert_int_eq(llep__arena_map(fd, NULL, &b, err, sizeof(err)), -EPROTO);
    close(fd);

    /* Not a file at all. */
    ck_assert_int_eq(pipe(p), 0);
    ck_assert_int_eq(llep__arena_map(p[0], NULL, &b, err, sizeof(err)), -EINVAL);
    close(p[0]);
    close(p[1]);
    fd = llep__eventfd_open(true);
    ck_assert_int_eq(llep__arena_map(fd, NULL, &b, err, sizeof(err)), -EINVAL);
    close(fd);
}
END_TEST

START_TEST(test_eventfd) {
    int fd = llep__eventfd_open(true);
    uint64_t n = 0;

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(llep__eventfd_wait(fd, &n), -EAGAIN);
    ck_assert_int_eq(llep__eventfd_signal(fd), 0);
    ck_assert_int_eq(llep__eventfd_signal(fd), 0);
    ck_assert_int_eq(llep__eventfd_wait(fd, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(llep__eventfd_wait(fd, NULL), -EAGAIN);
    close(fd);
    ck_assert_int_eq(llep__eventfd_signal(fd), -EBADF);
}
END_TEST

START_TEST(test_sleep_protocol) {
    llep_arena a;
    llep_cqe c = { 0 };

    make_arena(&a, 0, 4, 4);
    ck_assert(!llep__ring_need_wake(&a.cq));
    ck_assert(llep__ring_prepare_sleep(&a.cq));      /* empty: may sleep */
    ck_assert_int_eq(llep__cq_push(&a, &c), 0);
    ck_assert(llep__ring_need_wake(&a.cq));           /* so the producer must wake it */
    llep__ring_finish_sleep(&a.cq);
    ck_assert(!llep__ring_need_wake(&a.cq));
    ck_assert(!llep__ring_prepare_sleep(&a.cq));     /* an entry waits: do not sleep */
    ck_assert(!llep__ring_need_wake(&a.cq));
    llep__arena_unmap(&a);
}
END_TEST

#define STRESS_COUNT 200000u

/* One side of the stress test. The client pushes submissions and pops completions; the
 * daemon pops submissions and answers each with a completion, as llepd will. Both block on
 * eventfds through the sleep protocol whenever they run dry, so a lost wake-up hangs the test
 * (and Check's timeout fails it). */
typedef struct stress_side {
    llep_arena a;
    int sq_efd, cq_efd;
    uint64_t done;
    int error;
} stress_side;

static void wait_ring(llep_ring *r, int efd) {
    if (llep__ring_prepare_sleep(r))
        ck_assert_int_eq(llep__eventfd_wait(efd, NULL), 0);
    llep__ring_finish_sleep(r);
}

static void *stress_client(void *arg) {
    stress_side *s = arg;
    uint64_t sent = 0, received = 0;

    while (received < STRESS_COUNT) {
        llep_sqe e = { .tag = sent, .layer_id = 1, .tokens = (uint32_t)sent,
                       .x_offset = sent * 3 };
        llep_cqe c;
        bool progress = false;
        int r;

        if (sent < STRESS_COUNT && (r = llep__sq_push(&s->a, &e)) == 0) {
            sent++;
            progress = true;
            if (llep__ring_need_wake(&s->a.sq))
                llep__eventfd_signal(s->sq_efd);
        }
        while ((r = llep__cq_pop(&s->a, &c)) == 0) {
            if (c.tag != received || c.step != received * 7 || c.status != 0)
                s->error = 1;
            received++;
            progress = true;
        }
        if (r != -EAGAIN)
            s->error = 2;
        if (!progress) {
            if (sent == STRESS_COUNT || sent - received >= s->a.geom.sq_entries)
                wait_ring(&s->a.cq, s->cq_efd);
            else
                sched_yield();
        }
    }
    s->done = received;
    return NULL;
}

static void *stress_daemon(void *arg) {
    stress_side *s = arg;
    uint64_t n = 0;

    while (n < STRESS_COUNT) {
        llep_sqe e;
        llep_cqe c;
        int r = llep__sq_pop(&s->a, &e);

        if (r == -EAGAIN) {
            wait_ring(&s->a.sq, s->sq_efd);
            continue;
        }
        if (r < 0 || e.tag != n || e.tokens != (uint32_t)n || e.x_offset != n * 3) {
            s->error = 3;
            break;
        }
        c = (llep_cqe){ .tag = e.tag, .step = e.tag * 7, .layer_id = e.layer_id };
        /* A client slow to take its completions can fill the ring; llepd would hold the
         * completion back, the test just waits for room. */
        while ((r = llep__cq_push(&s->a, &c)) == -EAGAIN)
            sched_yield();
        if (r < 0) {
            s->error = 4;
            break;
        }
        if (llep__ring_need_wake(&s->a.cq))
            llep__eventfd_signal(s->cq_efd);
        n++;
    }
    s->done = n;
    return NULL;
}

START_TEST(test_threads) {
    stress_side daemon = { 0 }, client = { 0 };
    pthread_t t1, t2;
    char err[256];

    make_arena(&daemon.a, 4096, 16, 16);
    ck_assert_int_eq(llep__arena_map(daemon.a.fd, &daemon.a.geom, &client.a, err, sizeof(err)),
                     0);
    daemon.sq_efd = client.sq_efd = llep__eventfd_open(false);
    daemon.cq_efd = client.cq_efd = llep__eventfd_open(false);

    ck_assert_int_eq(pthread_create(&t1, NULL, stress_daemon, &daemon), 0);
    ck_assert_int_eq(pthread_create(&t2, NULL, stress_client, &client), 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    ck_assert_int_eq(daemon.error, 0);
    ck_assert_int_eq(client.error, 0);
    ck_assert_uint_eq(daemon.done, STRESS_COUNT);
    ck_assert_uint_eq(client.done, STRESS_COUNT);
    close(daemon.sq_efd);
    close(daemon.cq_efd);
    llep__arena_unmap(&client.a);
    llep__arena_unmap(&daemon.a);
}
END_TEST

/* The same exchange between two processes that share only the memfd and the eventfds, the way
 * llepd and a client do; the child maps (and validates) the arena itself. */
START_TEST(test_processes) {
    stress_side daemon = { 0 };
    int status;
    pid_t pid;

    make_arena(&daemon.a, 4096, 8, 8);
    daemon.sq_efd = llep__eventfd_open(false);
    daemon.cq_efd = llep__eventfd_open(false);

    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        stress_side client = { .sq_efd = daemon.sq_efd, .cq_efd = daemon.cq_efd };
        char err[256];

        if (llep__arena_map(daemon.a.fd, &daemon.a.geom, &client.a, err, sizeof(err)) < 0)
            _exit(10);
        stress_client(&client);
        _exit(client.error ? 20 + client.error : client.done == STRESS_COUNT ? 0 : 30);
    }
    stress_daemon(&daemon);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status));
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    ck_assert_int_eq(daemon.error, 0);
    ck_assert_uint_eq(daemon.done, STRESS_COUNT);
    close(daemon.sq_efd);
    close(daemon.cq_efd);
    llep__arena_unmap(&daemon.a);
}
END_TEST

START_TEST(test_check_span) {
    llep_arena a;
    uint64_t lo, hi;

    make_arena(&a, 8192, 4, 4);
    lo = a.geom.tensor_offset;
    hi = a.geom.arena_size;
    ck_assert_int_eq(llep__arena_check_span(&a, lo, 8192), 0);
    ck_assert_int_eq(llep__arena_check_span(&a, lo, 0), 0);
    ck_assert_int_eq(llep__arena_check_span(&a, hi, 0), 0);
    ck_assert_int_eq(llep__arena_check_span(&a, hi - 1, 1), 0);
    ck_assert_int_eq(llep__arena_check_span(&a, lo, 8193), -EINVAL);
    ck_assert_int_eq(llep__arena_check_span(&a, lo - 1, 1), -EINVAL);   /* into the rings */
    ck_assert_int_eq(llep__arena_check_span(&a, 0, 16), -EINVAL);       /* the header */
    ck_assert_int_eq(llep__arena_check_span(&a, hi, 1), -EINVAL);
    ck_assert_int_eq(llep__arena_check_span(&a, hi + 1, 0), -EINVAL);
    ck_assert_int_eq(llep__arena_check_span(&a, lo, UINT64_MAX), -EINVAL);
    ck_assert_int_eq(llep__arena_check_span(&a, UINT64_MAX, 2), -EINVAL);
    ck_assert_int_eq(llep__arena_check_span(&a, UINT64_MAX - 10, 20), -EINVAL);
    llep__arena_unmap(&a);
}
END_TEST

START_TEST(test_sqe_check) {
    const llep_sqe_shape shape = { .top_k = 4, .hidden = 64, .elem_size = 4 };
    llep_arena a;
    llep_sqe good, e;
    uint64_t t;
    char err[256];

    /* 8 tokens: x and y 2 KiB each, routing 128 bytes each. */
    make_arena(&a, 8192, 4, 4);
    t = a.geom.tensor_offset;
    good = (llep_sqe){ .tag = 77, .tokens = 8, .x_offset = t, .topk_idx_offset = t + 2048,
                       .topk_w_offset = t + 2048 + 128, .y_offset = t + 4096 };
    ck_assert_int_eq(llep__sqe_check(&a, &good, &shape, err, sizeof(err)), 0);
    e = good;
    e.y_offset = t + 8192 - 2048;  /* flush with the end */
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), 0);
    e = good;
    e.tokens = 0;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), 0);

    e = good;
    e.y_offset = t + 8192 - 2047;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    e.y_offset = t + 8192 - 2044;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "y ["));
    ck_assert_ptr_nonnull(strstr(err, "outside the tensor space"));

    e = good;
    e.x_offset = 0;  /* the header */
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, ": x ["));
    e = good;
    e.topk_idx_offset = UINT64_MAX - 64;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "topk_idx"));
    e = good;
    e.topk_w_offset = t + 2;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "topk_w offset"));
    ck_assert_ptr_nonnull(strstr(err, "aligned"));

    /* tokens * D * elem must not wrap to something small. */
    e = good;
    e.tokens = UINT32_MAX;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &(llep_sqe_shape){ UINT32_MAX, UINT32_MAX, 4, 0 },
                                     err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "overflow"));
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);

    e = good;
    e.y_offset = good.x_offset + 4;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "submission 77: y overlaps x");
    e.y_offset = good.topk_w_offset - 2048 + 4;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);

    e = good;
    e.flags = 1;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    e = good;
    e.reserved[2] = 1;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &shape, err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__sqe_check(&a, &good, &(llep_sqe_shape){ 4, 64, 3, 0 }, err,
                                     sizeof(err)), -EINVAL);

    /* bf16: two-byte alignment is enough for x and y. */
    e = good;
    e.x_offset = t + 6;
    e.tokens = 4;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &(llep_sqe_shape){ 4, 64, 2, 0 }, err, sizeof(err)),
                     0);
    e.x_offset = t + 7;
    ck_assert_int_eq(llep__sqe_check(&a, &e, &(llep_sqe_shape){ 4, 64, 2, 0 }, err, sizeof(err)),
                     -EINVAL);
    llep__arena_unmap(&a);
}
END_TEST

START_TEST(test_routing_check) {
    int32_t idx[6] = { 0, 1, 2, 3, 3, 0 };
    float w[6] = { 0.5f, 0.5f, 1.0f, 0.0f, -2.0f, 1e30f };
    char err[256];

    ck_assert_int_eq(llep__routing_check(idx, w, 3, 2, 4, err, sizeof(err)), 0);
    ck_assert_int_eq(llep__routing_check(idx, w, 0, 2, 4, err, sizeof(err)), 0);
    idx[3] = 4;
    ck_assert_int_eq(llep__routing_check(idx, w, 3, 2, 4, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "topk_idx[1][1] = 4 is not an expert of this layer (0..3)");
    idx[3] = -1;
    ck_assert_int_eq(llep__routing_check(idx, w, 3, 2, 4, err, sizeof(err)), -EINVAL);
    idx[3] = 3;
    w[5] = NAN;
    ck_assert_int_eq(llep__routing_check(idx, w, 3, 2, 4, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "topk_w[2][1] is not finite");
    w[5] = -INFINITY;
    ck_assert_int_eq(llep__routing_check(idx, w, 3, 2, 4, err, sizeof(err)), -EINVAL);
}
END_TEST

/* Open descriptors of this process, to prove nothing leaked. */
static int count_fds(void) {
    return llep_test_dir_entries("/proc/self/fd");
}

/* The hand-over llepd does with ArenaReply: memfd plus two eventfds, then both sides talk
 * through the rings and wake each other through the passed eventfds. */
START_TEST(test_fdpass_arena) {
    llep_arena daemon, client;
    llep_sqe e = { .tag = 42 }, out;
    int sv[2], fds[3], got[LLEP_FDPASS_MAX];
    size_t nfds = 0;
    char buf[16], err[256];
    uint64_t count;

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    make_arena(&daemon, 4096, 4, 4);
    fds[0] = daemon.fd;
    fds[1] = llep__eventfd_open(true);
    fds[2] = llep__eventfd_open(true);
    ck_assert_int_eq(llep__send_with_fds(sv[0], "arena-reply", 11, fds, 3), 11);

    ck_assert_int_eq(llep__recv_with_fds(sv[1], buf, sizeof(buf), got, 3, &nfds), 11);
    ck_assert_uint_eq(nfds, 3);
    ck_assert_mem_eq(buf, "arena-reply", 11);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(fcntl(got[i], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    ck_assert_int_eq(llep__arena_map(got[0], &daemon.geom, &client, err, sizeof(err)), 0);
    close(got[0]);   /* the mapping stays */

    ck_assert_int_eq(llep__sq_push(&client, &e), 0);
    ck_assert_int_eq(llep__eventfd_signal(got[1]), 0);
    ck_assert_int_eq(llep__eventfd_wait(fds[1], &count), 0);
    ck_assert_uint_eq(count, 1);
    ck_assert_int_eq(llep__sq_pop(&daemon, &out), 0);
    ck_assert_uint_eq(out.tag, 42);

    /* Plain data comes through with no descriptors. */
    ck_assert_int_eq(llep__send_with_fds(sv[0], "x", 1, NULL, 0), 1);
    ck_assert_int_eq(llep__recv_with_fds(sv[1], buf, sizeof(buf), got, 3, &nfds), 1);
    ck_assert_uint_eq(nfds, 0);

    /* A closed peer reads as 0 bytes, and writing to it is -EPIPE, not SIGPIPE. */
    close(sv[0]);
    ck_assert_int_eq(llep__recv_with_fds(sv[1], buf, sizeof(buf), got, 3, &nfds), 0);
    signal(SIGPIPE, SIG_DFL);
    ck_assert_int_eq(llep__send_with_fds(sv[1], "x", 1, NULL, 0), -EPIPE);

    for (int i = 1; i < 3; i++) {
        close(fds[i]);
        close(got[i]);
    }
    close(sv[1]);
    llep__arena_unmap(&client);
    llep__arena_unmap(&daemon);
}
END_TEST

/* A peer sending more descriptors than expected gets -EPROTO, and none of them stays open. */
START_TEST(test_fdpass_hostile) {
    int sv[2], fds[4], got[LLEP_FDPASS_MAX], before;
    size_t nfds = 99;
    char buf[16];

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    for (int i = 0; i < 4; i++)
        fds[i] = llep__eventfd_open(false);
    before = count_fds();
    ck_assert_int_eq(llep__send_with_fds(sv[0], "abc", 3, fds, 4), 3);
    ck_assert_int_eq(llep__recv_with_fds(sv[1], buf, sizeof(buf), got, 3, &nfds), -EPROTO);
    ck_assert_uint_eq(nfds, 99);
    ck_assert_int_eq(count_fds(), before);

    /* Over the hard limit on the sending side. */
    ck_assert_int_eq(llep__send_with_fds(sv[0], "abc", 3, fds, LLEP_FDPASS_MAX + 1), -EINVAL);
    ck_assert_int_eq(llep__send_with_fds(sv[0], "abc", 0, fds, 1), -EINVAL);
    ck_assert_int_eq(llep__send_with_fds(sv[0], "abc", 3, NULL, 1), -EINVAL);
    ck_assert_int_eq(llep__send_with_fds(-1, "abc", 3, NULL, 0), -EBADF);
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

/* On a full non-blocking socket the sender gets -EAGAIN or a partial count, never a hang. */
START_TEST(test_fdpass_nonblocking) {
    static char big[1 << 16];
    int sv[2], fd = llep__eventfd_open(false);
    ssize_t n;
    size_t total = 0;

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    for (;;) {
        n = llep__send_with_fds(sv[0], big, sizeof(big), &fd, 1);
        if (n < 0)
            break;
        ck_assert_int_gt(n, 0);
        total += (size_t)n;
        ck_assert_uint_lt(total, 1u << 30);
    }
    ck_assert_int_eq(n, -EAGAIN);
    ck_assert_uint_gt(total, 0);
    close(fd);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

static Suite *ring_suite(void) {
    Suite *s = suite_create("ring");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_layout);
    tcase_add_test(tc, test_create_and_map);
    tcase_add_test(tc, test_ring_order_and_wrap);
    tcase_add_test(tc, test_ring_corrupt_indices);
    tcase_add_test(tc, test_corrupt_headers);
    tcase_add_test(tc, test_bad_descriptors);
    tcase_add_test(tc, test_eventfd);
    tcase_add_test(tc, test_sleep_protocol);
    tcase_add_test(tc, test_threads);
    tcase_add_test(tc, test_processes);
    tcase_add_test(tc, test_check_span);
    tcase_add_test(tc, test_sqe_check);
    tcase_add_test(tc, test_routing_check);
    suite_add_tcase(s, tc);

    tc = tcase_create("fdpass");
    tcase_add_test(tc, test_fdpass_arena);
    tcase_add_test(tc, test_fdpass_hostile);
    tcase_add_test(tc, test_fdpass_nonblocking);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(ring_suite(), CK_ENV);
}
