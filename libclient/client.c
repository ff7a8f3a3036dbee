/* libllep-client: connection, errors, and the progress loop that reaps completions. */
#include "client-internal.h"
#include "layout.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Why the last llep_connect() of this thread failed, for llep_client_error(NULL). */
static _Thread_local char connect_error[LLEP_CLIENT_ERROR_MAX];

int64_t llep__client_now_ms(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int llep__client_fail(llep_client *c, int r, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
    return r;
}

LLEP_EXTERN const char *llep_strerror(int err) {
    switch (err) {
    case 0: return "success";
    case -EINVAL: return "invalid argument";
    case -ENOMEM: return "out of memory (a device or the arena cannot hold it)";
    case -EPROTO: return "protocol error";
    case -EPROTONOSUPPORT: return "llepd speaks another protocol version";
    case -ENOENT: return "not found (no such layer, or no llepd socket at that path)";
    case -EEXIST: return "already exists";
    case -EPERM: return "not permitted";
    case -EACCES: return "permission denied";
    case -ETIMEDOUT: return "timed out (a collective step did not fill in time)";
    case -ESHUTDOWN: return "llepd is shutting down";
    case -EIO: return "internal error in llepd";
    case -ECONNRESET: return "connection to llepd lost";
    case -ECONNREFUSED: return "connection refused (llepd is not running)";
    case -EAGAIN: return "not complete yet";
    case -ENAMETOOLONG: return "socket path too long";
    case -ENXIO: return "no socket path ($LLEP_SOCKET and $XDG_RUNTIME_DIR unset)";
    case -EMSGSIZE: return "message too large";
    case -EBADMSG: return "bad message";
    default: return "unknown error";
    }
}

LLEP_EXTERN const char *llep_client_error(const llep_client *c) {
    return c ? c->error : connect_error;
}

/* ---------------------------------------------------------------------------------------- */
/* Tickets. */

llep_ticket *llep__ticket_find(llep_client *c, uint64_t id) {
    for (size_t i = 0; i < c->ntickets; i++)
        if (c->tickets[i].id == id)
            return &c->tickets[i];
    return NULL;
}

/* Final status of a submission; copies y out on success and gives back its block. */
static void ticket_complete(llep_client *c, llep_ticket *t, int status) {
    if (status == 0 && c->have_arena && t->y) /* NULL: y lies in the client's space */
        llep__layout_convert(t->y, t->y_type, llep__arena_ptr(&c->arena, t->y_offset),
                             t->y_arena, t->y_elems);
    if (status == 0 && !t->y && c->space_y_done)
        c->space_y_done(c);
    if (t->in_flight && t->in_space)
        c->space_inflight--;
    if (t->in_flight) {
        llep__arena_release(c, t->block);
        c->in_flight--;
        t->in_flight = false;
    }
    t->status = status;
    t->done = true;
}

/* ---------------------------------------------------------------------------------------- */
/* Frames the daemon sends on its own, and losing it. */

/* Every submission in flight fails with the connection; waiters learn it at once. */
static void connection_lost(llep_client *c, const char *why) {
    if (c->dead)
        return;
    c->dead = -ECONNRESET;
    if (c->notice[0])
        llep__client_fail(c, -ECONNRESET, "%s (%s)", why, c->notice);
    else
        llep__client_fail(c, -ECONNRESET, "%s", why);
    for (size_t i = 0; i < c->ntickets; i++)
        if (!c->tickets[i].done)
            ticket_complete(c, &c->tickets[i], -ECONNRESET);
    llep__conn_close(&c->conn);
    pthread_cond_broadcast(&c->cond);
    if (c->poller)
        llep__eventfd_signal(c->wake_efd);
}

static void handle_async(void *userdata, LlepPb__Frame *f) {
    llep_client *c = userdata;

    if (f->body_case == LLEP_PB__FRAME__BODY_SUBMISSION_ERROR && f->submission_error) {
        const LlepPb__SubmissionError *se = f->submission_error;
        llep_ticket *t = llep__ticket_find(c, se->tag);

        /* The frame may be read before the failed completion or, when reap() goes looking
         * for it, just after. */
        if (t && !t->message && se->message && se->message[0])
            t->message = strdup(se->message);
    } else if (f->body_case == LLEP_PB__FRAME__BODY_NOTICE && f->notice) {
        const char *what = llep_strerror(llep__status_to_errno(f->notice->status));

        /* "llepd is shutting down: SIGTERM" */
        if (f->notice->message && f->notice->message[0])
            snprintf(c->notice, sizeof(c->notice), "%s: %s", what, f->notice->message);
        else
            snprintf(c->notice, sizeof(c->notice), "%s", what);
    }
    llep__frame_free(f);
}

/* Reads what the socket has without waiting (up to wait_ms when that is positive, for the
 * SubmissionError frames of failed completions). */
static void pump_socket(llep_client *c, int wait_ms) {
    char err[LLEP_CLIENT_ERROR_MAX];
    LlepPb__Frame *f;
    int r;

    while (!c->dead) {
        r = llep__conn_recv(&c->conn, wait_ms, &f, err, sizeof(err));
        if (r == 0)
            return;
        if (r < 0) {
            connection_lost(c, err);
            return;
        }
        if (f->id != 0) {
            /* No request is outstanding outside llep__client_request(): a stray reply. */
            llep__frame_free(f);
            connection_lost(c, "llepd sent a reply to no request");
            return;
        }
        handle_async(c, f);
        wait_ms = 0;
    }
}

/* Takes every completion in the ring. Returns how many. */
static int reap(llep_client *c) {
    bool want_messages = false;
    llep_cqe e;
    int n = 0, r;

    while (c->have_arena && !c->dead) {
        llep_ticket *t;

        r = llep__cq_pop(&c->arena, &e);
        if (r == -EAGAIN)
            break;
        t = r == 0 ? llep__ticket_find(c, e.tag) : NULL;
        if (!t || !t->in_flight) {
            connection_lost(c, r < 0 ? "llepd's completion ring is corrupt"
                                     : "llepd completed a submission that was not in flight");
            break;
        }
        /* A positive status is not an errno this library returns. */
        ticket_complete(c, t, e.status > 0 ? -EPROTO : e.status);
        if (t->status < 0 && !t->message)
            want_messages = true;
        n++;
    }
    if (want_messages)
        pump_socket(c, LLEP_CLIENT_ERROR_FRAME_WAIT_MS);
    return n;
}

static void cond_wait_until(llep_client *c, int64_t deadline_ms) {
    struct timespec ts;

    if (deadline_ms < 0) {
        pthread_cond_wait(&c->cond, &c->lock);
        return;
    }
    ts.tv_sec = deadline_ms / 1000;
    ts.tv_nsec = (deadline_ms % 1000) * 1000000;
    pthread_cond_timedwait(&c->cond, &c->lock, &ts);
}

/* The poller's sleep: until the daemon completes something (completion eventfd), says
 * something (socket), another thread needs it back (wake eventfd), or the timeout. */
static void poller_sleep(llep_client *c, int timeout_ms) {
    struct pollfd p[3] = {
        { .fd = c->conn.fd, .events = POLLIN },
        { .fd = c->wake_efd, .events = POLLIN },
        { .fd = c->have_arena ? c->cq_efd : -1, .events = POLLIN },
    };
    uint64_t count;
    int n;

    if (c->have_arena && !llep__ring_prepare_sleep(&c->arena.cq))
        return;
    pthread_mutex_unlock(&c->lock);
    do
        n = poll(p, 3, timeout_ms);
    while (n < 0 && errno == EINTR);
    pthread_mutex_lock(&c->lock);
    /* Only the poller reads these two, and only after poll() said they are readable, so the
     * reads cannot block. The arena cannot have changed meanwhile: replacing it waits for the
     * poller to leave. */
    if (n > 0 && p[0].revents)
        c->socket_ready = true;
    if (n > 0 && (p[1].revents & POLLIN))
        llep__eventfd_wait(c->wake_efd, &count);
    if (n > 0 && (p[2].revents & POLLIN))
        llep__eventfd_wait(c->cq_efd, &count);
    if (c->have_arena)
        llep__ring_finish_sleep(&c->arena.cq);
}

static int64_t now_ns(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Watches the completion ring for a moment, as the poller (so the arena stays put) but
 * without the lock, so other threads can submit meanwhile. It reads only the daemon's head, an
 * atomic, against a copy of our index: should another thread reap meanwhile, the two differ
 * and the caller merely looks again sooner. True when something arrived. */
static bool spin_for_completion(llep_client *c) {
    _Atomic uint32_t *head;
    uint32_t cons;
    int64_t end;
    bool seen = false;

    if (!c->have_arena || c->in_flight == 0)
        return false;
    head = &c->arena.cq.ctl->head;
    cons = c->arena.cq.cons;
    pthread_mutex_unlock(&c->lock);
    end = now_ns() + LLEP_CLIENT_SPIN_NS;
    do {
        if (atomic_load_explicit(head, memory_order_acquire) != cons) {
            seen = true;
            break;
        }
    } while (now_ns() < end);
    pthread_mutex_lock(&c->lock);
    return seen;
}

int llep__client_progress(llep_client *c, int64_t deadline_ms) {
    int timeout_ms;

    /* The socket is read only when poll() found it readable (the poller watches it), or when
     * a failed completion needs its message: the fast path makes no socket calls. */
    if (!c->dead && c->socket_ready) {
        c->socket_ready = false;
        pump_socket(c, 0);
    }
    if (reap(c) > 0) {
        pthread_cond_broadcast(&c->cond);
        /* The poller may be waiting for one of the submissions just completed. */
        if (c->poller)
            llep__eventfd_signal(c->wake_efd);
        return 0;
    }
    if (c->dead)
        return c->dead;
    if (deadline_ms < 0)
        timeout_ms = -1;
    else {
        int64_t left = deadline_ms - llep__client_now_ms();

        if (left <= 0)
            return -EAGAIN;
        timeout_ms = left > 1000000 ? 1000000 : (int)left;
    }
    if (c->poller) {
        cond_wait_until(c, deadline_ms);
        return 0;
    }
    c->poller = true;
    if (!spin_for_completion(c) && !c->dead)
        poller_sleep(c, timeout_ms);
    c->poller = false;
    pthread_cond_broadcast(&c->cond);
    return 0;
}

int llep__client_request(llep_client *c, LlepPb__Frame *req, LlepPb__Frame__BodyCase expected,
                         LlepPb__Frame **ret) {
    char err[LLEP_CLIENT_ERROR_MAX];
    LlepPb__Frame *reply = NULL;
    int r;

    if (c->dead)
        return llep__client_fail(c, c->dead, "the connection to llepd is lost%s%s",
                                 c->notice[0] ? ": " : "", c->notice);
    r = llep__conn_request(&c->conn, req, -1, handle_async, c, &reply, err, sizeof(err));
    /* Frames that came in the same read as the reply wait in the decoder. */
    if (llep__frame_decoder_pending(&c->conn.dec) > 0)
        c->socket_ready = true;
    if (r == -ECONNRESET || r == -EPROTO) {
        connection_lost(c, err);
        return c->dead;
    }
    if (r < 0)
        return llep__client_fail(c, r, "%s", err);
    r = llep__conn_reply_check(reply, expected, err, sizeof(err));
    if (r < 0) {
        llep__frame_free(reply);
        return llep__client_fail(c, r, "%s", err);
    }
    *ret = reply;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Connecting. */

const char *llep__program_name(void) {
    extern char *program_invocation_short_name;

    return program_invocation_short_name ? program_invocation_short_name : "";
}

static void client_free(llep_client *c) {
    while (c->layers) {
        llep_layer *l = c->layers;

        c->layers = l->next;
        llep__kept_free(l->kept);
        free(l->name);
        free(l);
    }
    llep__conn_close(&c->conn);
    llep__arena_drop(c);
    if (c->space_drop)
        c->space_drop(c);
    for (size_t i = 0; i < c->ntickets; i++)
        free(c->tickets[i].message);
    free(c->tickets);
    free(c->blocks);
    if (c->wake_efd >= 0)
        close(c->wake_efd);
    free(c->socket_path);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

LLEP_EXTERN int llep_connect_ex(const char *socket_path, unsigned flags, llep_client **ret) {
    pthread_condattr_t ca;
    llep_client *c;
    int r;

    connect_error[0] = '\0';
    if (!ret) {
        snprintf(connect_error, sizeof(connect_error), "llep_connect: ret is NULL");
        return -EINVAL;
    }
    *ret = NULL;
    if (flags & ~(unsigned)LLEP_CONNECT_RECONNECT) {
        snprintf(connect_error, sizeof(connect_error), "llep_connect_ex: unknown flags 0x%x",
                 flags & ~(unsigned)LLEP_CONNECT_RECONNECT);
        return -EINVAL;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(connect_error, sizeof(connect_error), "out of memory");
        return -ENOMEM;
    }
    c->conn.fd = c->sq_efd = c->cq_efd = -1;
    pthread_mutex_init(&c->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    c->wake_efd = llep__eventfd_open(true);
    if (c->wake_efd < 0) {
        r = c->wake_efd;
        snprintf(connect_error, sizeof(connect_error), "cannot create an eventfd: %s",
                 strerror(-r));
        goto fail;
    }
    r = llep__conn_open(&c->conn, socket_path, LLEP_PB__PEER_KIND__PEER_KIND_CLIENT,
                        llep__program_name(), -1, connect_error, sizeof(connect_error));
    if (r < 0)
        goto fail;
    c->gen = c->restored_gen = 1;
    c->reconnect = flags & LLEP_CONNECT_RECONNECT;
    if (c->reconnect && socket_path && !(c->socket_path = strdup(socket_path))) {
        r = -ENOMEM;
        snprintf(connect_error, sizeof(connect_error), "out of memory");
        goto fail;
    }
    *ret = c;
    return 0;

fail:
    client_free(c);
    return r;
}

/* $LLEP_RECONNECT=1 gives programs built before llep_connect_ex() reconnecting clients. */
LLEP_EXTERN int llep_connect(const char *socket_path, llep_client **ret) {
    const char *env = getenv("LLEP_RECONNECT");

    return llep_connect_ex(socket_path, env && strcmp(env, "1") == 0 ? LLEP_CONNECT_RECONNECT
                                                                     : 0, ret);
}

LLEP_EXTERN void llep_disconnect(llep_client *c) {
    if (c)
        client_free(c);
}
