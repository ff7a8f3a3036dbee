/* The socket transport of the CPU backend (xnode.h): a communicator between processes of one
 * host over Linux abstract unix sockets, so that llepd's tests take the path of the GPUs'
 * NCCL communicators without GPUs. On the CPU backend device memory is host memory, so the
 * ops' buffers are read and written directly.
 *
 * Every communicator has one thread. Rank r listens on "\0llep-xnode-<token>-<r>", the token
 * being the random part of the id, connects to every lower rank and accepts every higher one;
 * a connection starts with a hello that names the connecting rank. An exchange is handed to
 * the thread, which moves all its ops at once with nonblocking sockets and poll(), so that two
 * ranks sending much to each other never wait for each other. Each message is its length
 * (8 bytes, little-endian) followed by its bytes: the length lets a receiver tell an exchange
 * whose sides disagree from a good one, instead of reading the wrong bytes into its buffer.
 *
 * The caller's thread and the communicator's thread share only `state` (atomic), the op list
 * (written by exchange() while the thread is idle, read by the thread while it exchanges) and
 * the failure (written by the thread before it publishes XN_FAILED), so no lock is needed. */
#include "xnode.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "backend.h"
#include "errbuf.h"

#define XN_MAGIC "LLEPXN1"          /* 8 bytes with its NUL, at the start of ids and hellos */
#define XN_MAGIC_BYTES 8
#define XN_TOKEN_BYTES 16
#define XN_HELLO_BYTES 16           /* magic, rank (le32), nranks (le32) */
#define XN_HEADER_BYTES 8
#define XN_MAX_RANKS 1024
#define XN_RETRY_MS 5               /* between connects to a rank that does not listen yet */
#define XN_MAX_IO ((size_t)1 << 30) /* bytes per system call, well inside ssize_t */
#define XN_STOPPED 1                /* the thread's functions: close() asked it to stop */

enum xn_state { XN_OPENING, XN_UP, XN_EXCHANGING, XN_FAILED };

/* One direction of a link in an exchange: the op it moves now (nops when nothing is left),
 * how many bytes of that op's header and payload have moved, and the header itself. */
typedef struct xn_dir {
    uint32_t op;
    uint64_t done;
    uint8_t hdr[XN_HEADER_BYTES];
} xn_dir;

typedef struct xn_peer {
    int fd;                          /* -1 until linked */
    xn_dir send, recv;
} xn_peer;

/* An accepted connection whose hello has not fully arrived. */
typedef struct xn_pending {
    int fd;
    uint32_t got;
    uint8_t hello[XN_HELLO_BYTES];
} xn_pending;

struct llep_xnode {
    uint32_t nranks, rank;
    uint8_t token[XN_TOKEN_BYTES];
    llep_xnode_notify notify;
    void *arg;

    int listen_fd;                   /* -1 once every higher rank is linked */
    int wake_fd;                     /* eventfd: an exchange was handed over, or close() */
    pthread_t thread;
    atomic_bool stop;

    xn_peer *peers;                  /* [nranks]; peers[rank] unused */
    xn_pending *pending;             /* [nranks] */
    uint32_t npending;
    struct pollfd *pfd;              /* [nranks + 2] */

    llep_xnode_op *ops;              /* the current or last exchange, owned */
    uint32_t nops;

    _Atomic int state;               /* enum xn_state */
    int fail;                        /* negative errno, once state is XN_FAILED */
    char fail_msg[256];
    char call_msg[256];              /* why the caller's last call was rejected */
};

/* ---- small helpers ---- */

static void put_le(uint8_t *p, uint64_t v, unsigned n) {
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned n) {
    uint64_t v = 0;

    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static socklen_t socket_name(const uint8_t *token, uint32_t rank, struct sockaddr_un *a) {
    static const char hex[] = "0123456789abcdef";
    char tok[2 * XN_TOKEN_BYTES + 1];
    int n;

    for (unsigned i = 0; i < XN_TOKEN_BYTES; i++) {
        tok[2 * i] = hex[token[i] >> 4];
        tok[2 * i + 1] = hex[token[i] & 15];
    }
    tok[2 * XN_TOKEN_BYTES] = '\0';
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    /* sun_path[0] stays NUL: an abstract name, which needs no file and vanishes with the
     * socket, so a crashed test leaves nothing behind. */
    n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "llep-xnode-%s-%u", tok, rank);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

static void make_hello(uint8_t *h, uint32_t rank, uint32_t nranks) {
    memcpy(h, XN_MAGIC, XN_MAGIC_BYTES);
    put_le(h + 8, rank, 4);
    put_le(h + 12, nranks, 4);
}

/* The thread's failures: the message goes where error() finds it once the thread publishes
 * XN_FAILED; nobody reads it before. Returns err. */
/* The caller's rejected calls. Returns err. */
static int xn_reject(llep_xnode *x, int err, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(x->call_msg, sizeof(x->call_msg), fmt, ap);
    va_end(ap);
    return err;
}

static int xn_wait(llep_xnode *x, struct pollfd *pfd, nfds_t n, int timeout_ms) {
    uint64_t v;

    if (poll(pfd, n, timeout_ms) < 0) {
        if (errno != EINTR)
            return llep__errf(x->fail_msg, sizeof(x->fail_msg), -errno, "poll: %s", strerror(errno));
        for (nfds_t i = 0; i < n; i++)
            pfd[i].revents = 0;
    }
    if (atomic_load(&x->stop))
        return XN_STOPPED;
    if (pfd[0].revents & POLLIN && read(x->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        return llep__errf(x->fail_msg, sizeof(x->fail_msg), -errno, "reading the wake-up eventfd: %s", strerror(errno));
    return 0;
}

/* ---- joining: connect to lower ranks, accept higher ones ---- */

/* Returns 0 when linked to rank s, 1 when s does not listen yet, or a negative errno. */
static int connect_one(llep_xnode *x, uint32_t s) {
    struct sockaddr_un a;
    socklen_t len = socket_name(x->token, s, &a);
    uint8_t hello[XN_HELLO_BYTES];
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    ssize_t k;

    if (fd < 0)
        return llep__errf(x->fail_msg, sizeof(x->fail_msg), -errno, "cannot make a socket for rank %u: %s", s, strerror(errno));
    if (connect(fd, (struct sockaddr *)&a, len) < 0) {
        int e = errno;

        close(fd);
        /* Rank s has not opened yet (or its backlog is full): the caller's deadline, not
         * ours, decides how long that may last. */
        if (e == ECONNREFUSED || e == ENOENT || e == EAGAIN || e == EINTR)
            return 1;
        return llep__errf(x->fail_msg, sizeof(x->fail_msg), -e, "cannot connect to rank %u: %s", s, strerror(e));
    }
    /* A fresh connection's buffer has room for the hello, so one call sends all of it. */
    make_hello(hello, x->rank, x->nranks);
    k = send(fd, hello, sizeof(hello), MSG_NOSIGNAL);
    if (k != (ssize_t)sizeof(hello)) {
        int e = k < 0 ? errno : EIO;

        close(fd);
        return llep__errf(x->fail_msg, sizeof(x->fail_msg), -e, "cannot send the hello to rank %u: %s", s, strerror(e));
    }
    x->peers[s].fd = fd;
    return 0;
}

/* Tries every lower rank not linked yet; *waiting says whether one did not listen. */
static int connect_lower(llep_xnode *x, uint32_t *links, bool *waiting) {
    *waiting = false;
    for (uint32_t s = 0; s < x->rank; s++) {
        if (x->peers[s].fd >= 0)
            continue;
        int r = connect_one(x, s);
        if (r < 0)
            return r;
        if (r == 1)
            *waiting = true;
        else
            (*links)++;
    }
    return 0;
}

static int accept_higher(llep_xnode *x) {
    for (;;) {
        int fd = accept4(x->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                return 0;
            return llep__errf(x->fail_msg, sizeof(x->fail_msg), -errno, "accepting a link: %s", strerror(errno));
        }
        /* Only higher ranks connect; one more than there are is a stranger or a duplicate. */
        if (x->npending >= x->nranks - 1 - x->rank) {
            close(fd);
            return llep__errf(x->fail_msg, sizeof(x->fail_msg), -EPROTO, "more connections than the %u higher ranks",
                            x->nranks - 1 - x->rank);
        }
        x->pending[x->npending++] = (xn_pending){ .fd = fd };
    }
}

static int check_hello(llep_xnode *x, const uint8_t *h) {
    uint32_t r = (uint32_t)get_le(h + 8, 4), n = (uint32_t)get_le(h + 12, 4);

    if (memcmp(h, XN_MAGIC, XN_MAGIC_BYTES) != 0)
        return llep__errf(x->fail_msg, sizeof(x->fail_msg), -EPROTO, "a connection to rank %u did not start with a hello",
                        x->rank);
    if (n != x->nranks)
        return llep__errf(x->fail_msg, sizeof(x->fail_msg), -EPROTO, "rank %u says the communicator has %u ranks, not %u", r,
                        n, x->nranks);
    if (r <= x->rank || r >= x->nranks)
        return llep__errf(x->fail_msg, sizeof(x->fail_msg), -EPROTO, "a connection to rank %u says it is rank %u", x->rank, r);
    if (x->peers[r].fd >= 0)
        return llep__errf(x->fail_msg, sizeof(x->fail_msg), -EPROTO, "rank %u connected twice", r);
    return 0;
}

/* Reads what has arrived of pending connection i's hello; links it when complete. Returns 1
 * when linked (the entry is gone), 0 when more is to come, or a negative errno. */
static int read_hello(llep_xnode *x, uint32_t i) {
    xn_pending *p = &x->pending[i];
    ssize_t k = recv(p->fd, p->hello + p->got, XN_HELLO_BYTES - p->got, 0);
    int r;

    if (k < 0)
        return errno == EAGAIN || errno == EINTR
                   ? 0
                   : llep__errf(x->fail_msg, sizeof(x->fail_msg), -errno, "reading a hello: %s", strerror(errno));
    if (k == 0)
        return llep__errf(x->fail_msg, sizeof(x->fail_msg), -EPROTO, "a connection to rank %u closed before its hello",
                        x->rank);
    p->got += (uint32_t)k;
    if (p->got < XN_HELLO_BYTES)
        return 0;
    r = check_hello(x, p->hello);
    if (r < 0)
        return r;
    x->peers[get_le(p->hello + 8, 4)].fd = p->fd;
    x->pending[i] = x->pending[--x->npending];
    return 1;
}

static nfds_t join_pollset(llep_xnode *x, uint32_t accepted) {
    nfds_t n = 1;

    x->pfd[0] = (struct pollfd){ .fd = x->wake_fd, .events = POLLIN };
    if (x->listen_fd >= 0 && accepted + x->npending < x->nranks - 1 - x->rank)
        x->pfd[n++] = (struct pollfd){ .fd = x->listen_fd, .events = POLLIN };
    for (uint32_t i = 0; i < x->npending; i++)
        x->pfd[n++] = (struct pollfd){ .fd = x->pending[i].fd, .events = POLLIN };
    return n;
}

/* Links this rank to every other; returns 0, XN_STOPPED or a negative errno. */
static int join(llep_xnode *x) {
    uint32_t links = 0, accepted = 0;
    bool waiting = false;

    for (;;) {
        int r = connect_lower(x, &links, &waiting);

        if (r < 0)
            return r;
        if (links + accepted == x->nranks - 1)
            break;
        nfds_t n = join_pollset(x, accepted);
        r = xn_wait(x, x->pfd, n, waiting ? XN_RETRY_MS : -1);
        if (r != 0)
            return r;
        /* Hellos before accepting, which adds pending connections that pfd[] lacks. */
        for (nfds_t j = 1; j < n; j++) {
            if (x->pfd[j].fd == x->listen_fd || !x->pfd[j].revents)
                continue;
            for (uint32_t i = 0; i < x->npending; i++)
                if (x->pending[i].fd == x->pfd[j].fd) {
                    r = read_hello(x, i);
                    if (r < 0)
                        return r;
                    accepted += (uint32_t)r;
                    break;
                }
        }
        if (n > 1 && x->pfd[1].fd == x->listen_fd && x->pfd[1].revents) {
            r = accept_higher(x);
            if (r < 0)
                return r;
        }
    }
    /* Every higher rank is linked: nobody else may connect, and the name is free again. */
    if (x->listen_fd >= 0) {
        close(x->listen_fd);
        x->listen_fd = -1;
    }
    return 0;
}

/* ---- exchanging ---- */

/* The first op from `from` on that moves bytes to (recv 0) or from (recv 1) peer p. */
static uint32_t next_op(const llep_xnode *x, uint32_t p, int recv, uint32_t from) {
    for (uint32_t i = from; i < x->nops; i++) {
        const llep_xnode_op *o = &x->ops[i];

        if (o->peer == p && !o->recv == !recv && o->bytes > 0)
            return i;
    }
    return x->nops;
}

static void dir_start(const llep_xnode *x, uint32_t p, int recv, xn_dir *d, uint32_t from) {
    d->op = next_op(x, p, recv, from);
    d->done = 0;
    put_le(d->hdr, d->op < x->nops ? x->ops[d->op].bytes : 0, XN_HEADER_BYTES);
}

static int link_error(llep_xnode *x, uint32_t p, const char *what, int e) {
    if (e == EPIPE || e == ECONNRESET)
        return llep__errf(x->fail_msg, sizeof(x->fail_msg), -ECONNRESET, "rank %u closed its link", p);
    return llep__errf(x->fail_msg, sizeof(x->fail_msg), -e, "%s rank %u: %s", what, p, strerror(e));
}

/* Sends to peer p until its socket is full or nothing is left to send. */
static int send_some(llep_xnode *x, uint32_t p) {
    xn_peer *pe = &x->peers[p];
    xn_dir *d = &pe->send;

    while (d->op < x->nops) {
        const llep_xnode_op *o = &x->ops[d->op];
        uint64_t body = d->done < XN_HEADER_BYTES ? 0 : d->done - XN_HEADER_BYTES;
        uint64_t left = o->bytes - body;
        struct iovec iov[2];
        struct msghdr m = { .msg_iov = iov };

        if (d->done < XN_HEADER_BYTES)
            iov[m.msg_iovlen++] = (struct iovec){ d->hdr + d->done, XN_HEADER_BYTES - d->done };
        iov[m.msg_iovlen++] = (struct iovec){ (char *)o->buf + body,
                                              left < XN_MAX_IO ? (size_t)left : XN_MAX_IO };
        ssize_t k = sendmsg(pe->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            return link_error(x, p, "sending to", errno);
        }
        d->done += (uint64_t)k;
        if (d->done == XN_HEADER_BYTES + o->bytes)
            dir_start(x, p, 0, d, d->op + 1);
    }
    return 0;
}

/* Receives from peer p until its socket is empty or nothing is left to receive. */
static int recv_some(llep_xnode *x, uint32_t p) {
    xn_peer *pe = &x->peers[p];
    xn_dir *d = &pe->recv;

    while (d->op < x->nops) {
        const llep_xnode_op *o = &x->ops[d->op];
        bool head = d->done < XN_HEADER_BYTES;
        uint64_t left = head ? XN_HEADER_BYTES - d->done : XN_HEADER_BYTES + o->bytes - d->done;
        char *dst = head ? (char *)d->hdr + d->done : (char *)o->buf + (d->done - XN_HEADER_BYTES);
        ssize_t k = recv(pe->fd, dst, left < XN_MAX_IO ? (size_t)left : XN_MAX_IO,
                         MSG_DONTWAIT);

        if (k < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            return link_error(x, p, "receiving from", errno);
        }
        if (k == 0)
            return llep__errf(x->fail_msg, sizeof(x->fail_msg), -ECONNRESET, "rank %u closed its link", p);
        d->done += (uint64_t)k;
        if (head && d->done == XN_HEADER_BYTES && get_le(d->hdr, 8) != o->bytes)
            return llep__errf(x->fail_msg, sizeof(x->fail_msg), -EPROTO, "rank %u sent %llu bytes where %llu were expected", p,
                            (unsigned long long)get_le(d->hdr, 8),
                            (unsigned long long)o->bytes);
        if (d->done == XN_HEADER_BYTES + o->bytes)
            dir_start(x, p, 1, d, d->op + 1);
    }
    return 0;
}

/* pfd[p + 1] watches peer p for what is left with it; returns how many peers have some. */
static uint32_t exchange_pollset(llep_xnode *x) {
    uint32_t busy = 0;

    x->pfd[0] = (struct pollfd){ .fd = x->wake_fd, .events = POLLIN };
    for (uint32_t p = 0; p < x->nranks; p++) {
        const xn_peer *pe = &x->peers[p];
        short ev = p == x->rank ? 0
                                : (short)((pe->send.op < x->nops ? POLLOUT : 0) |
                                          (pe->recv.op < x->nops ? POLLIN : 0));

        /* A peer done with us is left out: its next exchange's bytes may already arrive,
         * and they are not this exchange's to read. */
        x->pfd[p + 1] = (struct pollfd){ .fd = ev ? pe->fd : -1, .events = ev };
        busy += ev != 0;
    }
    return busy;
}

/* Moves every op of x->ops; returns 0, XN_STOPPED or a negative errno. */
static int run_exchange(llep_xnode *x) {
    for (uint32_t p = 0; p < x->nranks; p++) {
        if (p == x->rank)
            continue;
        dir_start(x, p, 0, &x->peers[p].send, 0);
        dir_start(x, p, 1, &x->peers[p].recv, 0);
    }
    while (exchange_pollset(x) > 0) {
        int r = xn_wait(x, x->pfd, x->nranks + 1, -1);

        if (r != 0)
            return r;
        for (uint32_t p = 0; p < x->nranks && r == 0; p++) {
            short rev = x->pfd[p + 1].revents;

            /* A hang-up or error shows in the next send or receive, which says which. */
            if (rev & (POLLIN | POLLHUP | POLLERR) && x->pfd[p + 1].events & POLLIN)
                r = recv_some(x, p);
            if (r == 0 && rev & (POLLOUT | POLLHUP | POLLERR) && x->pfd[p + 1].events & POLLOUT)
                r = send_some(x, p);
        }
        if (r != 0)
            return r;
    }
    return 0;
}

/* ---- the communicator's thread ---- */

static void publish(llep_xnode *x, int state) {
    atomic_store(&x->state, state);
    if (x->notify)
        x->notify(x->arg);
}

/* Idle: waits for exchange() or close(). Returns 0 when an exchange was handed over. */
static int wait_for_exchange(llep_xnode *x) {
    x->pfd[0] = (struct pollfd){ .fd = x->wake_fd, .events = POLLIN };
    while (atomic_load(&x->state) != XN_EXCHANGING) {
        int r = xn_wait(x, x->pfd, 1, -1);

        if (r != 0)
            return r;
    }
    return 0;
}

static void *xn_main(void *arg) {
    llep_xnode *x = arg;
    int r = join(x);

    if (r == 0)
        publish(x, XN_UP);
    while (r == 0) {
        r = wait_for_exchange(x);
        if (r == 0)
            r = run_exchange(x);
        if (r == 0)
            publish(x, XN_UP);
    }
    if (r < 0) {
        /* The communicator is unusable: shutting its links tells every peer at once, rather
         * than when our caller gets round to close(). */
        for (uint32_t p = 0; p < x->nranks; p++)
            if (x->peers[p].fd >= 0)
                shutdown(x->peers[p].fd, SHUT_RDWR);
        x->fail = r;
        publish(x, XN_FAILED);
    }
    return NULL;
}

/* ---- the operations ---- */

static int xn_unique_id(llep_backend *b, uint8_t id[LLEP_XNODE_ID_BYTES]) {
    size_t got = 0;

    if (!id)
        return -EINVAL;
    memset(id, 0, LLEP_XNODE_ID_BYTES);
    memcpy(id, XN_MAGIC, XN_MAGIC_BYTES);
    while (got < XN_TOKEN_BYTES) {
        ssize_t k = getrandom(id + XN_MAGIC_BYTES + got, XN_TOKEN_BYTES - got, 0);

        if (k < 0 && errno != EINTR)
            return -errno;
        if (k > 0)
            got += (size_t)k;
    }
    return 0;
}

static int check_open(const llep_backend *b, uint32_t dev, const uint8_t *id, uint32_t nranks,
                      uint32_t rank, llep_xnode **ret, char *err, size_t errlen) {
    if (!b || !id || !ret) {
        snprintf(err, errlen, "no backend, id or result pointer");
        return -EINVAL;
    }
    if (memcmp(id, XN_MAGIC, XN_MAGIC_BYTES) != 0) {
        snprintf(err, errlen, "not an id of the socket transport");
        return -EINVAL;
    }
    if (nranks < 2 || nranks > XN_MAX_RANKS) {
        snprintf(err, errlen, "a communicator has 2 to %u ranks, not %u", XN_MAX_RANKS, nranks);
        return -EINVAL;
    }
    if (rank >= nranks) {
        snprintf(err, errlen, "rank %u of a communicator of %u ranks", rank, nranks);
        return -EINVAL;
    }
    if (dev >= b->num_devices) {
        snprintf(err, errlen, "no device %u: the backend has %u", dev, b->num_devices);
        return -EINVAL;
    }
    return 0;
}

/* The listening socket is made here rather than in the thread so that a clash of names
 * (the same id and rank opened twice) fails open() itself. */
static int listen_on(llep_xnode *x, char *err, size_t errlen) {
    struct sockaddr_un a;
    socklen_t len = socket_name(x->token, x->rank, &a);
    int e;

    x->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (x->listen_fd < 0) {
        e = errno;
        snprintf(err, errlen, "cannot make the listening socket: %s", strerror(e));
        return -e;
    }
    if (bind(x->listen_fd, (struct sockaddr *)&a, len) < 0 ||
        listen(x->listen_fd, SOMAXCONN) < 0) {
        e = errno;
        snprintf(err, errlen, "cannot listen as rank %u: %s", x->rank, strerror(e));
        return -e;
    }
    return 0;
}

static void free_xnode(llep_xnode *x) {
    if (x->listen_fd >= 0)
        close(x->listen_fd);
    if (x->wake_fd >= 0)
        close(x->wake_fd);
    for (uint32_t i = 0; x->peers && i < x->nranks; i++)
        if (x->peers[i].fd >= 0)
            close(x->peers[i].fd);
    for (uint32_t i = 0; i < x->npending; i++)
        close(x->pending[i].fd);
    free(x->peers);
    free(x->pending);
    free(x->pfd);
    free(x->ops);
    free(x);
}

static int xn_open(llep_backend *b, uint32_t dev, const uint8_t id[LLEP_XNODE_ID_BYTES],
                   uint32_t nranks, uint32_t rank, llep_xnode_notify notify, void *arg,
                   llep_xnode **ret, char *err, size_t errlen) {
    llep_xnode *x;
    int r = check_open(b, dev, id, nranks, rank, ret, err, errlen);

    if (r < 0)
        return r;
    x = calloc(1, sizeof(*x));
    if (!x)
        goto nomem;
    x->nranks = nranks;
    x->rank = rank;
    memcpy(x->token, id + XN_MAGIC_BYTES, XN_TOKEN_BYTES);
    x->notify = notify;
    x->arg = arg;
    x->listen_fd = x->wake_fd = -1;
    atomic_init(&x->stop, false);
    atomic_init(&x->state, XN_OPENING);
    x->peers = calloc(nranks, sizeof(*x->peers));
    x->pending = calloc(nranks, sizeof(*x->pending));
    x->pfd = calloc(nranks + 2, sizeof(*x->pfd));
    if (!x->peers || !x->pending || !x->pfd)
        goto nomem;
    for (uint32_t i = 0; i < nranks; i++)
        x->peers[i].fd = -1;

    x->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (x->wake_fd < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot make an eventfd: %s", strerror(-r));
        goto fail;
    }
    r = listen_on(x, err, errlen);
    if (r < 0)
        goto fail;
    r = -pthread_create(&x->thread, NULL, xn_main, x);
    if (r < 0) {
        snprintf(err, errlen, "cannot start the communicator's thread: %s", strerror(-r));
        goto fail;
    }
    *ret = x;
    return 0;

nomem:
    r = -ENOMEM;
    snprintf(err, errlen, "out of memory for a communicator of %u ranks", nranks);
fail:
    if (x)
        free_xnode(x);
    return r;
}

static int xn_poll(llep_xnode *x) {
    x->call_msg[0] = '\0';
    switch (atomic_load(&x->state)) {
    case XN_UP:
        return 0;
    case XN_FAILED:
        return x->fail;
    default:
        return -EINPROGRESS;
    }
}

static int check_ops(llep_xnode *x, const llep_xnode_op *ops, uint32_t n) {
    if (n > 0 && !ops)
        return xn_reject(x, -EINVAL, "%u ops but no op array", n);
    for (uint32_t i = 0; i < n; i++) {
        if (ops[i].peer >= x->nranks || ops[i].peer == x->rank)
            return xn_reject(x, -EINVAL, "op %u: rank %u cannot exchange with rank %u of %u",
                             i, x->rank, ops[i].peer, x->nranks);
        if (ops[i].bytes > 0 && !ops[i].buf)
            return xn_reject(x, -EINVAL, "op %u: %llu bytes without a buffer", i,
                             (unsigned long long)ops[i].bytes);
    }
    return 0;
}

static int xn_exchange(llep_xnode *x, const llep_xnode_op *ops, uint32_t n) {
    llep_xnode_op *copy = NULL;
    uint64_t one = 1;
    int r;

    switch (atomic_load(&x->state)) {
    case XN_OPENING:
        return xn_reject(x, -EINVAL, "the communicator is not up yet");
    case XN_EXCHANGING:
        return xn_reject(x, -EBUSY, "an exchange is still in flight");
    case XN_FAILED:
        return xn_reject(x, -EINVAL, "the communicator failed: %s", x->fail_msg);
    }
    r = check_ops(x, ops, n);
    if (r < 0)
        return r;
    if (n > 0) {
        copy = malloc((size_t)n * sizeof(*copy));
        if (!copy)
            return xn_reject(x, -ENOMEM, "out of memory for %u ops", n);
        memcpy(copy, ops, (size_t)n * sizeof(*copy));
    }
    /* The thread is idle while the state is XN_UP, so the op list is ours to replace. */
    free(x->ops);
    x->ops = copy;
    x->nops = n;
    x->call_msg[0] = '\0';
    atomic_store(&x->state, XN_EXCHANGING);
    if (write(x->wake_fd, &one, sizeof(one)) < 0) {
        /* Only an overflowing counter fails, and then the thread has a wake-up pending. */
    }
    return 0;
}

static const char *xn_error(const llep_xnode *x) {
    if (x->call_msg[0])
        return x->call_msg;
    if (atomic_load(&x->state) == XN_FAILED)
        return x->fail_msg;
    return "";
}

static void xn_close(llep_xnode *x) {
    uint64_t one = 1;

    if (!x)
        return;
    atomic_store(&x->stop, true);
    if (write(x->wake_fd, &one, sizeof(one)) < 0) {
        /* As in exchange: a wake-up is pending already. */
    }
    pthread_join(x->thread, NULL);
    free_xnode(x);
}

const llep_xnode_ops llep__xnode_socket = {
    .name = "socket",
    .flags = LLEP_XNODE_SAME_HOST,
    .unique_id = xn_unique_id,
    .open = xn_open,
    .poll = xn_poll,
    .exchange = xn_exchange,
    .error = xn_error,
    .close = xn_close,
};
