/* One session per connection: reading frames, sending replies, the client's arena and the
 * watch on its submission eventfd (session.h).
 *
 * Nothing a peer sends may crash the daemon or disturb another session: every frame is
 * decoded and checked before use, a protocol violation ends only that connection, and a
 * session's memory stays alive while a step still reads or writes its arena. */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "session.h"

#include "admit.h"
#include "fdpass.h"
#include "log.h"
#include "space.h"
#include "validate.h"

/* How long a connection waits for the group lookup (admit.h) before it is refused: a directory
 * that does not answer must not hold connections, and their descriptors, for ever. */
#define ADMIT_WAIT_MS 10000

static void unwatch(llepd_session *s);
static bool admit_cancel(llepd_session *s);

static void on_handle_closed(uv_handle_t *h) {
    llepd_session *s = h->data;
    s->open_handles--;
    llepd_session_unref(s);
}

void llepd_session_ref(llepd_session *s) {
    s->refs++;
}

void llepd_session_unref(llepd_session *s) {
    if (--s->refs > 0)
        return;
    llep__frame_decoder_fini(&s->dec);
    llep__arena_unmap(&s->arena);
    llepd_space_close(s->space); /* no step uses it: each submission holds a reference */
    if (s->cq_efd >= 0)
        close(s->cq_efd);
    free(s->layers);
    free(s);
}

static void close_handle(llepd_session *s, uv_handle_t *h) {
    if (uv_is_closing(h))
        return;
    llepd_session_ref(s); /* dropped in on_handle_closed */
    uv_close(h, on_handle_closed);
}

void llepd_session_close(llepd_session *s, const char *why) {
    if (s->state == SESSION_CLOSING)
        return;
    log_info("client %llu (%s, pid %d) closing: %s", (unsigned long long)s->id, s->program,
             (int)s->cred.pid, why);
    s->state = SESSION_CLOSING;
    admit_cancel(s);
    llepd_list_remove(&s->link);
    s->srv->nsessions--;

    /* Queued submissions and layer references go; submissions in a running step finish and
     * are then discarded (they hold a reference, so the arena stays mapped until then). */
    s->srv->hooks.session_closing(s);

    llepd_server *srv = s->srv;
    close_handle(s, (uv_handle_t *)&s->pipe);
    close_handle(s, (uv_handle_t *)&s->retry);
    unwatch(s);
    llepd_session_unref(s); /* the session's own reference */
    srv->hooks.work_done(srv);
}

static void on_write(uv_write_t *req, int status) {
    llepd_session *s = req->data;

    free(req);
    if (status < 0 && s->state != SESSION_CLOSING)
        llepd_session_close(s, uv_strerror(status));
    llepd_session_unref(s);
}

/* Writes what the socket takes at once and queues the rest, so a slow reader costs memory,
 * not the event loop's time. */
static void send_bytes(llepd_session *s, uint8_t *buf, size_t len, size_t already) {
    uv_buf_t b = uv_buf_init((char *)buf + already, (unsigned)(len - already));
    int r = 0;

    if (uv_stream_get_write_queue_size((uv_stream_t *)&s->pipe) == 0 && b.len > 0) {
        r = uv_try_write((uv_stream_t *)&s->pipe, &b, 1);
        if (r > 0) {
            b.base += r;
            b.len -= (unsigned)r;
        } else if (r != UV_EAGAIN) {
            free(buf);
            llepd_session_close(s, uv_strerror(r));
            return;
        }
    }
    if (b.len == 0) {
        free(buf);
        return;
    }
    /* The request carries the whole buffer so on_write can free it. */
    uv_write_t *req = malloc(sizeof(*req) + b.len);
    if (!req) {
        free(buf);
        llepd_session_close(s, "out of memory");
        return;
    }
    memcpy(req + 1, b.base, b.len);
    free(buf);
    b.base = (char *)(req + 1);
    req->data = s;
    llepd_session_ref(s);
    r = uv_write(req, (uv_stream_t *)&s->pipe, &b, 1, on_write);
    if (r < 0) {
        llepd_session_unref(s);
        free(req);
        llepd_session_close(s, uv_strerror(r));
    }
}

void llepd_session_send(llepd_session *s, const LlepPb__Frame *f) {
    uint8_t *buf;
    size_t len;

    if (s->state == SESSION_CLOSING)
        return;
    int r = llep__frame_encode_alloc(f, &buf, &len);
    if (r < 0) {
        log_error("client %llu: cannot encode a %s frame: %s", (unsigned long long)s->id,
                  llep__frame_body_name(f->body_case), strerror(-r));
        llepd_session_close(s, "reply could not be encoded");
        return;
    }
    send_bytes(s, buf, len, 0);
}

void llepd_session_reply(llepd_session *s, uint64_t id, LlepPb__Frame__BodyCase body, void *msg) {
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    f.id = id;
    f.body_case = body;
    f.hello_reply = msg; /* every body member of the oneof shares one storage slot */
    llepd_session_send(s, &f);
}

void llepd_session_reply_error(llepd_session *s, uint64_t id, int err, const char *msg) {
    LlepPb__ErrorReply er = LLEP_PB__ERROR_REPLY__INIT;

    er.status = llep__status_from_errno(err);
    er.message = (char *)msg;
    llepd_session_reply(s, id, LLEP_PB__FRAME__BODY_ERROR, &er);
}

/* The one frame that carries descriptors (ArenaReply). It goes out with sendmsg() on the raw
 * socket, which is only in order with libuv's writes while nothing is queued; a client waits
 * for each reply before the next request, so the queue is empty in practice. -EAGAIN when it
 * is not, or when the socket takes nothing now: the caller tells the client to ask again. */
int llepd_session_send_fds(llepd_session *s, const LlepPb__Frame *f, const int *fds, size_t nfds) {
    uv_os_fd_t fd;
    uint8_t *buf;
    size_t len;

    if (uv_stream_get_write_queue_size((uv_stream_t *)&s->pipe) != 0)
        return -EAGAIN;
    int r = llep__frame_encode_alloc(f, &buf, &len);
    if (r < 0)
        return r;
    r = uv_fileno((uv_handle_t *)&s->pipe, &fd);
    if (r < 0) {
        free(buf);
        return r;
    }
    ssize_t n = llep__send_with_fds(fd, buf, len, fds, nfds);
    if (n < 0) {
        free(buf);
        return (int)n;
    }
    send_bytes(s, buf, len, (size_t)n);
    return 0;
}

/* ---- the arena and its submission eventfd ---------------------------------------------- */

typedef struct llepd_sq_watch {
    uv_poll_t poll;
    int fd;
    llepd_session *s;
} llepd_sq_watch;

static void on_watch_closed(uv_handle_t *h) {
    llepd_sq_watch *w = h->data;
    llepd_session *s = w->s;

    close(w->fd);
    free(w);
    llepd_session_unref(s);
}

static void unwatch(llepd_session *s) {
    llepd_sq_watch *w = s->sq_watch;

    if (!w)
        return;
    s->sq_watch = NULL;
    llepd_session_ref(s);
    uv_close((uv_handle_t *)&w->poll, on_watch_closed);
}

int llepd_session_sq_fd(const llepd_session *s) {
    return s->sq_watch ? s->sq_watch->fd : -1;
}

static void on_sq_event(uv_poll_t *h, int status, int events) {
    llepd_sq_watch *w = h->data;
    uint64_t n;

    (void)events;
    if (status < 0) {
        llepd_session_close(w->s, uv_strerror(status));
        return;
    }
    llep__eventfd_wait(w->fd, &n); /* non-blocking: resets the counter */
    w->s->srv->hooks.ring(w->s);
}

static void on_retry(uv_timer_t *t) {
    llepd_session *s = t->data;
    s->srv->hooks.ring(s);
}

void llepd_session_retry_later(llepd_session *s) {
    uv_timer_start(&s->retry, on_retry, 1, 0);
}

int llepd_session_set_arena(llepd_session *s, const llep_arena_geom *g) {
    llep_arena a;
    int sq_fd = -1, cq_fd = -1, r;
    llepd_sq_watch *w = calloc(1, sizeof(*w));

    if (!w)
        return -ENOMEM;
    r = llep__arena_create(g, &a);
    if (r < 0)
        goto fail;
    sq_fd = llep__eventfd_open(true);
    cq_fd = llep__eventfd_open(false);
    if (sq_fd < 0 || cq_fd < 0) {
        r = sq_fd < 0 ? sq_fd : cq_fd;
        llep__arena_unmap(&a);
        goto fail;
    }
    r = uv_poll_init(s->srv->loop, &w->poll, sq_fd);
    if (r < 0) {
        llep__arena_unmap(&a);
        goto fail;
    }
    /* Replace the old arena only now that the new one is complete. */
    unwatch(s);
    if (s->have_arena)
        llep__arena_unmap(&s->arena);
    if (s->cq_efd >= 0)
        close(s->cq_efd);
    s->arena = a;
    s->cq_efd = cq_fd;
    s->have_arena = true;
    w->fd = sq_fd;
    w->s = s;
    w->poll.data = w;
    s->sq_watch = w;
    uv_poll_start(&w->poll, UV_READABLE, on_sq_event);
    /* Announce that we sleep until signalled, or the client's first push would wait for a
     * wake-up it never sends. */
    llep__ring_prepare_sleep(&s->arena.sq);
    return 0;

fail:
    if (sq_fd >= 0)
        close(sq_fd);
    if (cq_fd >= 0)
        close(cq_fd);
    free(w);
    return r;
}

/* ---- connection set-up ------------------------------------------------------------------- */

/* The answer to a peer that may not connect: a HelloReply saying why, then the end. */
static void refuse(llepd_session *s, uint64_t id) {
    LlepPb__HelloReply hr = LLEP_PB__HELLO_REPLY__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;
    char msg[200];

    if (s->admit_timed_out)
        snprintf(msg, sizeof(msg), "llepd could not check whether uid %u is in group llep: "
                 "the group database did not answer within %d s; try again",
                 (unsigned)s->cred.uid, ADMIT_WAIT_MS / 1000);
    else
        snprintf(msg, sizeof(msg), "uid %u may not use llepd: it serves root, its own user "
                 "and members of group llep", (unsigned)s->cred.uid);
    hr.status = LLEP_PB__STATUS__STATUS_PERMISSION;
    hr.message = msg;
    hr.version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    f.id = id;
    f.body_case = LLEP_PB__FRAME__BODY_HELLO_REPLY;
    f.hello_reply = &hr;
    llepd_session_send(s, &f);
    llepd_session_close(s, "not allowed");
}

static void on_refused_timeout(uv_timer_t *t) {
    llepd_session_close(t->data, "not allowed (said nothing)");
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    static char slab[LLEP_FRAME_READ_MAX];
    (void)h;
    (void)suggested;
    /* One loop thread, and every read is fed to the decoder before the next: one buffer. */
    *buf = uv_buf_init(slab, sizeof(slab));
}

/* ---- descriptors from the client ----------------------------------------------------------- */

/* The pipe is opened in libuv's IPC mode so that it receives descriptors with the bytes; libuv
 * hands out a received descriptor only through uv_accept() into a handle, which for a pipe
 * handle just adopts the number. So each one is adopted by a scratch pipe, duplicated, and the
 * scratch closed (which closes the original). */
static void on_scratch_closed(uv_handle_t *h) {
    free(h);
}

static int take_one_fd(llepd_session *s) {
    uv_pipe_t *tmp = malloc(sizeof(*tmp));
    uv_os_fd_t fd = -1;
    int dup_fd = -1;

    if (!tmp || uv_pipe_init(s->srv->loop, tmp, 0) < 0) {
        free(tmp);
        return -ENOMEM;
    }
    if (uv_accept((uv_stream_t *)&s->pipe, (uv_stream_t *)tmp) == 0 &&
        uv_fileno((uv_handle_t *)tmp, &fd) == 0)
        dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    uv_close((uv_handle_t *)tmp, on_scratch_closed);
    return dup_fd < 0 ? -EBADF : dup_fd;
}

size_t llepd_session_take_fds(llepd_session *s, int *fds, size_t max) {
    size_t n = 0;

    while (n < max && uv_pipe_pending_count(&s->pipe) > 0) {
        int fd = take_one_fd(s);
        if (fd < 0)
            break;
        fds[n++] = fd;
    }
    return n;
}

static void drop_fds(llepd_session *s) {
    int fd;

    while (uv_pipe_pending_count(&s->pipe) > 0 && (fd = take_one_fd(s)) >= 0)
        close(fd);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    llepd_session *s = stream->data;
    LlepPb__Frame *f;
    int r;

    if (nread == UV_EOF || nread == UV_ECONNRESET) {
        llepd_session_close(s, llep__frame_decoder_pending(&s->dec) ? "closed mid-frame"
                                                                     : "disconnected");
        return;
    }
    if (nread < 0) {
        llepd_session_close(s, uv_strerror((int)nread));
        return;
    }
    r = llep__frame_decoder_feed(&s->dec, buf->base, (size_t)nread);
    /* Keep a reference: a handler may close the session while we loop. */
    llepd_session_ref(s);
    while (r == 0 && s->state != SESSION_CLOSING) {
        r = llep__frame_decoder_next(&s->dec, &f);
        if (r <= 0)
            break;
        if (s->refused)
            refuse(s, f->id);
        else
            s->srv->hooks.frame(s, f);
        llep__frame_free(f);
        r = 0;
    }
    /* Descriptors no request took (SpaceRegister takes its own while it is handled). */
    if (s->state != SESSION_CLOSING)
        drop_fds(s);
    if (r < 0 && s->refused)
        refuse(s, 0);
    if (r < 0 && s->state != SESSION_CLOSING) {
        /* Undecodable frames get an error reply naming the problem, then the connection
         * ends: after garbage the peer's idea of the protocol cannot be trusted. */
        LlepPb__ErrorReply er = LLEP_PB__ERROR_REPLY__INIT;
        LlepPb__Frame out = LLEP_PB__FRAME__INIT;
        char msg[256];
        snprintf(msg, sizeof(msg), "bad frame: %s", llep__frame_decoder_error(&s->dec));
        er.status = LLEP_PB__STATUS__STATUS_PROTOCOL;
        er.message = msg;
        out.body_case = LLEP_PB__FRAME__BODY_ERROR;
        out.error = &er;
        llepd_session_send(s, &out);
        llepd_session_close(s, msg);
    }
    llepd_session_unref(s);
}

/* The peer's admission is decided: reading starts, and a refused peer is told why in answer
 * to its Hello; one that says nothing goes after a second, so refused peers cannot pile up.
 * The socket's mode keeps others out already; this guards a socket made more open. */
static void admitted(llepd_session *s, bool allowed) {
    s->admin = allowed;
    if (!allowed) {
        log_warning("refused a connection from uid %u: %s", (unsigned)s->cred.uid,
                    s->admit_timed_out ? "the group database did not answer in time"
                                       : "not root, the daemon's user or in group llep");
        s->refused = true;
        s->srv->refused_connections++;
        uv_timer_start(&s->retry, on_refused_timeout, 1000, 0);
    }
    uv_read_start((uv_stream_t *)&s->pipe, alloc_cb, on_read);
    log_debug("client %llu connected (pid %d, uid %u)", (unsigned long long)s->id,
              (int)s->cred.pid, (unsigned)s->cred.uid);
}

/* The lookup on the pool answered (admit.c); the session's reference for it goes. */
static void on_admit_done(void *arg, bool allowed) {
    llepd_session *s = arg;

    s->admit = NULL;
    uv_timer_stop(&s->retry);
    admitted(s, allowed);
    llepd_session_unref(s);
}

/* The lookup is given up on (its answer no longer wanted); true when one was pending. */
static bool admit_cancel(llepd_session *s) {
    if (!s->admit)
        return false;
    llepd_admit_cancel(s->admit);
    s->admit = NULL;
    llepd_session_unref(s);
    return true;
}

static void on_admit_timeout(uv_timer_t *t) {
    llepd_session *s = t->data;

    s->admit_timed_out = true;
    llepd_session_ref(s);
    if (admit_cancel(s))
        admitted(s, false);
    llepd_session_unref(s);
}

void llepd_session_accept(llepd_server *srv) {
    llepd_session *s = calloc(1, sizeof(*s));
    uv_os_fd_t fd;
    socklen_t len = sizeof(s->cred);

    if (!s) {
        log_error("out of memory accepting a connection");
        return;
    }
    s->srv = srv;
    s->cq_efd = -1;
    s->arena.fd = -1; /* a zeroed arena would name fd 0 */
    s->refs = 1;
    s->id = srv->next_session_id++;
    snprintf(s->program, sizeof(s->program), "?");
    llep__frame_decoder_init(&s->dec, 0);
    uv_pipe_init(srv->loop, &s->pipe, 1); /* IPC mode: receives descriptors (SpaceRegister) */
    uv_timer_init(srv->loop, &s->retry);
    s->pipe.data = s->retry.data = s;
    llepd_list_init(&s->link);
    llepd_list_append(&srv->sessions, &s->link);
    srv->nsessions++;
    if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&s->pipe) < 0 ||
        uv_fileno((uv_handle_t *)&s->pipe, &fd) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &s->cred, &len) < 0) {
        llepd_session_close(s, "accept failed");
        return;
    }
    /* The session's reference for the lookup, dropped when it answers or is given up on. */
    llepd_session_ref(s);
    int r = llepd_admit_check(&srv->admit, fd, &s->cred, on_admit_done, s, &s->admit);
    if (r != 0) {
        llepd_session_unref(s);
        if (r < 0)
            llepd_session_close(s, "out of memory checking the peer");
        else
            admitted(s, true);
        return;
    }
    /* Reading waits for the lookup: nothing the peer sends is handled before. (A lookup that
     * could not even be queued has answered already.) */
    if (s->admit)
        uv_timer_start(&s->retry, on_admit_timeout, ADMIT_WAIT_MS, 0);
}
