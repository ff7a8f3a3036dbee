/* One connection to llepd (see conn.h). */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "fdpass.h"
#include "errbuf.h"

static int64_t now_ms(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t deadline_of(int timeout_ms) {
    return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

/* Milliseconds left until deadline (-1: none), for poll(). */
static int remaining_ms(int64_t deadline) {
    int64_t left;

    if (deadline < 0)
        return -1;
    left = deadline - now_ms();
    return left <= 0 ? 0 : left > 1000000 ? 1000000 : (int)left;
}

/* Waits for events on fd; 1 when ready, 0 on timeout. */
static int wait_fd(int fd, short events, int64_t deadline) {
    struct pollfd p = { .fd = fd, .events = events };
    int n;

    do
        n = poll(&p, 1, remaining_ms(deadline));
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

/* timeout_ms >= 0 bounds connect() too: it blocks while llepd's listen backlog is full (a
 * daemon that is stopped or stuck), and SO_SNDTIMEO is what bounds that on a unix socket. */
static int connect_socket(const char *path, int timeout_ms, char *err, size_t errlen) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    size_t len = strlen(path);
    int fd, r;

    if (len == 0 || len >= sizeof(sa.sun_path)) {
        llep__errf(err, errlen, 0, "socket path '%s' is empty or longer than %zu bytes", path,
                  sizeof(sa.sun_path) - 1);
        return len ? -ENAMETOOLONG : -EINVAL;
    }
    memcpy(sa.sun_path, path, len + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        r = -errno;
        llep__errf(err, errlen, 0, "cannot create a socket: %s", strerror(-r));
        return r;
    }
    if (timeout_ms >= 0) {
        struct timeval tv = { .tv_sec = timeout_ms / 1000,
                              .tv_usec = (timeout_ms % 1000) * 1000 + (timeout_ms == 0) };

        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    /* connect() on a unix socket completes at once unless the backlog is full; only then is
     * the socket made non-blocking, so there is no EINPROGRESS to handle. */
    r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
    if (r == -EAGAIN) {
        llep__errf(err, errlen, 0, "llepd at %s accepts no connections (its backlog stayed "
                   "full for %d ms)", path, timeout_ms);
        close(fd);
        return -ETIMEDOUT;
    }
    if (r == 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
        r = -errno;
    if (r < 0) {
        llep__errf(err, errlen, 0, "cannot connect to llepd at %s: %s", path, strerror(-r));
        close(fd);
        return r;
    }
    return fd;
}

void llep__conn_drop_fds(llep_conn *c) {
    for (size_t i = 0; i < c->nfds; i++)
        close(c->fds[i]);
    c->nfds = 0;
}

size_t llep__conn_take_fds(llep_conn *c, int *fds, size_t max) {
    size_t n = c->nfds < max ? c->nfds : max;

    memcpy(fds, c->fds, n * sizeof(int));
    /* Anything beyond what the caller wanted is not for it: close it. */
    for (size_t i = n; i < c->nfds; i++)
        close(c->fds[i]);
    c->nfds = 0;
    return n;
}

void llep__conn_close(llep_conn *c) {
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    llep__conn_drop_fds(c);
    llep__frame_decoder_fini(&c->dec);
}

int llep__conn_send(llep_conn *c, LlepPb__Frame *f, char *err, size_t errlen) {
    uint8_t *buf;
    size_t len, off = 0;
    int r;

    if (c->fd < 0 || c->eof) {
        llep__errf(err, errlen, 0, "the connection to llepd is closed");
        return -ECONNRESET;
    }
    if (f->id == 0)
        f->id = ++c->next_id;
    r = llep__frame_encode_alloc(f, &buf, &len);
    if (r < 0) {
        llep__errf(err, errlen, 0, "cannot encode %s: %s", llep__frame_body_name(f->body_case),
                  strerror(-r));
        return r;
    }
    while (off < len) {
        ssize_t n;

        if (c->out_nfds) {
            /* The descriptors ride on the first byte; the rest goes as plain bytes. */
            n = llep__send_with_fds(c->fd, buf, len, c->out_fds, c->out_nfds);
            if (n > 0)
                c->out_nfds = 0;
            else
                errno = (int)-n;
            n = n > 0 ? n : -1;
        } else {
            n = send(c->fd, buf + off, len - off, MSG_NOSIGNAL);
        }

        if (n >= 0) {
            off += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            r = wait_fd(c->fd, POLLOUT, -1);
            if (r < 0)
                break;
            continue;
        }
        r = errno == EPIPE || errno == ECONNRESET ? -ECONNRESET : -errno;
        break;
    }
    free(buf);
    if (off < len) {
        if (r == -ECONNRESET) {
            c->eof = true;
            llep__errf(err, errlen, 0, "llepd closed the connection");
        } else
            llep__errf(err, errlen, 0, "cannot send to llepd: %s", strerror(-r));
        return r < 0 ? r : -EIO;
    }
    return 0;
}

/* Reads what the socket has (without waiting) into the decoder. 1: bytes came, 0: none
 * (EAGAIN), -ECONNRESET at end of stream, other negative errnos. */
static int read_some(llep_conn *c, char *err, size_t errlen) {
    uint8_t buf[LLEP_FRAME_READ_MAX];
    int fds[LLEP_FDPASS_MAX];
    size_t nfds = 0;
    ssize_t n;
    int r;

    n = llep__recv_with_fds(c->fd, buf, sizeof(buf), fds, LLEP_FDPASS_MAX, &nfds);
    if (n == -EAGAIN)
        return 0;
    if (n == 0 || n == -ECONNRESET) {
        c->eof = true;
        llep__errf(err, errlen, 0, "llepd closed the connection");
        return -ECONNRESET;
    }
    if (n < 0) {
        llep__errf(err, errlen, 0, "cannot read from llepd: %s", strerror((int)-n));
        return (int)n;
    }
    for (size_t i = 0; i < nfds; i++) {
        if (c->nfds < LLEP_CONN_MAX_FDS)
            c->fds[c->nfds++] = fds[i];
        else
            close(fds[i]);
    }
    r = llep__frame_decoder_feed(&c->dec, buf, (size_t)n);
    if (r < 0) {
        llep__errf(err, errlen, 0, "cannot buffer llepd's reply: %s", strerror(-r));
        return r;
    }
    return 1;
}

int llep__conn_recv(llep_conn *c, int timeout_ms, LlepPb__Frame **ret, char *err,
                    size_t errlen) {
    int64_t deadline = deadline_of(timeout_ms);
    int r;

    if (c->fd < 0) {
        llep__errf(err, errlen, 0, "the connection to llepd is closed");
        return -ECONNRESET;
    }
    for (;;) {
        r = llep__frame_decoder_next(&c->dec, ret);
        if (r == 1)
            return 1;
        if (r < 0) {
            /* A peer that sends garbage is not llepd, or not one this client understands. */
            llep__errf(err, errlen, 0, "bad frame from llepd: %s",
                      llep__frame_decoder_error(&c->dec));
            c->eof = true;
            return -EPROTO;
        }
        if (c->eof) {
            llep__errf(err, errlen, 0, "llepd closed the connection");
            return -ECONNRESET;
        }
        r = read_some(c, err, errlen);
        if (r < 0)
            return r;
        if (r > 0)
            continue;
        r = wait_fd(c->fd, POLLIN, deadline);
        if (r < 0) {
            llep__errf(err, errlen, 0, "cannot wait for llepd: %s", strerror(-r));
            return r;
        }
        if (r == 0)
            return 0;
    }
}

int llep__conn_request(llep_conn *c, LlepPb__Frame *req, int timeout_ms,
                       llep_conn_async_fn *on_async, void *userdata, LlepPb__Frame **ret,
                       char *err, size_t errlen) {
    int64_t deadline = deadline_of(timeout_ms);
    LlepPb__Frame *f;
    int r;

    req->id = 0;
    r = llep__conn_send(c, req, err, errlen);
    if (r < 0)
        return r;
    for (;;) {
        r = llep__conn_recv(c, remaining_ms(deadline), &f, err, errlen);
        if (r < 0)
            return r;
        if (r == 0) {
            llep__errf(err, errlen, 0, "llepd did not answer %s in time",
                      llep__frame_body_name(req->body_case));
            return -ETIMEDOUT;
        }
        if (f->id == req->id) {
            *ret = f;
            return 0;
        }
        if (f->id == 0 && on_async) {
            on_async(userdata, f);
            continue;
        }
        if (f->id == 0) {
            llep__frame_free(f);
            continue;
        }
        llep__errf(err, errlen, 0, "llepd answered request %" PRIu64 " while %" PRIu64
                  " was outstanding", f->id, req->id);
        llep__frame_free(f);
        return -EPROTO;
    }
}

/* The body of a frame as a generic message, found through the oneof's field descriptor. */
static const ProtobufCMessage *frame_body(const LlepPb__Frame *f) {
    const ProtobufCFieldDescriptor *fd;

    fd = protobuf_c_message_descriptor_get_field(&llep_pb__frame__descriptor,
                                                 (unsigned)f->body_case);
    if (!fd || fd->type != PROTOBUF_C_TYPE_MESSAGE)
        return NULL;
    return *(const ProtobufCMessage *const *)((const char *)f + fd->offset);
}

int llep__conn_reply_check(const LlepPb__Frame *reply, LlepPb__Frame__BodyCase expected,
                           char *err, size_t errlen) {
    const ProtobufCFieldDescriptor *sf, *mf;
    const ProtobufCMessage *body;
    const char *message;
    int status, r;

    if (reply->body_case != expected && reply->body_case != LLEP_PB__FRAME__BODY_ERROR) {
        llep__errf(err, errlen, 0, "llepd answered with %s instead of %s",
                  llep__frame_body_name(reply->body_case), llep__frame_body_name(expected));
        return -EPROTO;
    }
    body = frame_body(reply);
    if (!body) {
        llep__errf(err, errlen, 0, "llepd sent an empty %s", llep__frame_body_name(expected));
        return -EPROTO;
    }
    sf = protobuf_c_message_descriptor_get_field_by_name(body->descriptor, "status");
    mf = protobuf_c_message_descriptor_get_field_by_name(body->descriptor, "message");
    if (!sf || !mf || sf->type != PROTOBUF_C_TYPE_ENUM || mf->type != PROTOBUF_C_TYPE_STRING)
        return 0;
    memcpy(&status, (const char *)body + sf->offset, sizeof(status));
    message = *(const char *const *)((const char *)body + mf->offset);
    r = llep__status_to_errno((LlepPb__Status)status);
    if (r < 0 || reply->body_case == LLEP_PB__FRAME__BODY_ERROR) {
        if (r == 0)
            r = -EPROTO;
        llep__errf(err, errlen, 0, "%s", message && message[0] ? message : strerror(-r));
        return r;
    }
    return 0;
}

int llep__conn_open(llep_conn *c, const char *path, LlepPb__PeerKind kind, const char *program,
                    int timeout_ms, char *err, size_t errlen) {
    LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
    LlepPb__Hello hello = LLEP_PB__HELLO__INIT;
    char *default_path = NULL;
    int r;

    memset(c, 0, sizeof(*c));
    c->fd = -1;
    llep__frame_decoder_init(&c->dec, 0);
    if (!path) {
        r = llep__socket_path_connect_default(&default_path);
        if (r < 0) {
            llep__errf(err, errlen, 0, r == -ENXIO
                          ? "no llepd socket: set $LLEP_SOCKET or $XDG_RUNTIME_DIR"
                          : "cannot work out the llepd socket path: %s", strerror(-r));
            goto fail;
        }
        path = default_path;
    }
    r = connect_socket(path, timeout_ms, err, errlen);
    if (r < 0)
        goto fail;
    c->fd = r;

    hello.version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    hello.program = (char *)(program ? program : "");
    hello.kind = kind;
    req.body_case = LLEP_PB__FRAME__BODY_HELLO;
    req.hello = &hello;
    r = llep__conn_request(c, &req, timeout_ms, NULL, NULL, &reply, err, errlen);
    if (r < 0)
        goto fail;
    if (reply->body_case == LLEP_PB__FRAME__BODY_ERROR)
        r = llep__conn_reply_check(reply, LLEP_PB__FRAME__BODY_HELLO_REPLY, err, errlen);
    else
        r = llep__frame_check_hello_reply(reply, err, errlen);
    if (r < 0)
        goto fail;
    c->client_id = reply->hello_reply->client_id;
    c->daemon_protocol = reply->hello_reply->version;
    snprintf(c->daemon_version, sizeof(c->daemon_version), "%s",
             reply->hello_reply->daemon_version ? reply->hello_reply->daemon_version : "");
    llep__frame_free(reply);
    free(default_path);
    return 0;

fail:
    llep__frame_free(reply);
    free(default_path);
    llep__conn_close(c);
    return r;
}
