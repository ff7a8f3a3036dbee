/* One connection to llepd: connect, Hello, framed requests and replies, descriptors.
 *
 * Shared by libllep-client and llepctl, so the two speak the protocol the same way. Not
 * thread-safe: the client library serialises access with its own lock, llepctl has one
 * thread. The socket is non-blocking; every blocking operation here waits with poll(), so the
 * caller can bound it and the client library can watch the socket from another thread. */
#ifndef LLEP_CONN_H
#define LLEP_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"

/* Descriptors that may come with one frame (ArenaReply carries three). */
#define LLEP_CONN_MAX_FDS 3u

typedef struct llep_conn {
    int fd;                       /* the unix socket, -1 when closed */
    llep_frame_decoder dec;
    uint64_t next_id;             /* last request id used */
    /* Descriptors received and not yet claimed by llep__conn_take_fds(). */
    int fds[LLEP_CONN_MAX_FDS];
    size_t nfds;
    /* Descriptors to attach to the next frame sent (SpaceRegister); the send clears them. */
    const int *out_fds;
    size_t out_nfds;
    bool eof;                     /* the daemon closed the connection */
    uint64_t client_id;           /* from HelloReply */
    uint32_t daemon_protocol;
    char daemon_version[32];
} llep_conn;

/* Connects to the unix socket at path (NULL: llep__socket_path_default()), sends Hello with
 * the given peer kind and program name and checks the HelloReply; timeout_ms (-1: none)
 * bounds the connect (-ETIMEDOUT while llepd's backlog stays full) and the Hello each.
 * Returns 0 or a negative errno with a sentence in err: -ENOENT / -ECONNREFUSED / -EACCES
 * from connect(), -EPROTONOSUPPORT on a version mismatch, -ECONNRESET when the daemon
 * closes instead of answering, the reply's status otherwise. On error nothing is left open. */
int llep__conn_open(llep_conn *c, const char *path, LlepPb__PeerKind kind, const char *program,
                    int timeout_ms, char *err, size_t errlen);

/* Closes the socket and any unclaimed descriptors; safe on a closed connection. */
void llep__conn_close(llep_conn *c);

/* Sends f framed, giving it the next request id when f->id is 0 (the id is left in f->id),
 * with c->out_fds attached to its first byte when set. Waits for room in the socket as long
 * as it takes. Returns 0, -ECONNRESET when the daemon is
 * gone, -EMSGSIZE, -ENOMEM. */
int llep__conn_send(llep_conn *c, LlepPb__Frame *f, char *err, size_t errlen);

/* Receives the next whole frame, waiting up to timeout_ms (-1: no limit, 0: only what has
 * arrived). Returns 1 with a frame in *ret (llep__frame_free() it), 0 when none came in time,
 * -ECONNRESET when the daemon closed the connection (also when it closed mid-frame), -EPROTO
 * for a frame over the limit or undecodable (the connection is unusable then), or another
 * negative errno. Descriptors that came with the bytes are kept for llep__conn_take_fds(). */
int llep__conn_recv(llep_conn *c, int timeout_ms, LlepPb__Frame **ret, char *err, size_t errlen);

/* Hands over the descriptors received so far (at most max) and forgets them; the caller
 * closes them. Returns how many were stored in fds. */
size_t llep__conn_take_fds(llep_conn *c, int *fds, size_t max);

/* Closes descriptors nobody claimed (they came with a frame that should carry none). */
void llep__conn_drop_fds(llep_conn *c);

/* Sends a request and waits for the frame with its id, up to timeout_ms in all (-1: no
 * limit). Frames with id 0 that arrive meanwhile (Notice, SubmissionError) go to on_async when
 * it is not NULL, else are dropped. Returns 0 with the reply in *ret, or a negative errno:
 * -ETIMEDOUT, -ECONNRESET, -EPROTO (a reply with an unexpected id). The reply may still be an
 * ErrorReply or carry a non-OK status; see llep__conn_reply_status(). */
typedef void llep_conn_async_fn(void *userdata, LlepPb__Frame *f);
int llep__conn_request(llep_conn *c, LlepPb__Frame *req, int timeout_ms,
                       llep_conn_async_fn *on_async, void *userdata, LlepPb__Frame **ret,
                       char *err, size_t errlen);

/* Checks a reply: an ErrorReply, a body other than `expected`, or a status other than OK
 * becomes a negative errno with the daemon's message (or what was wrong) in err. Every reply
 * has `status` and `message` as its first fields (proto/llep.proto); they are found through
 * the message descriptors, so this works for every reply type. Returns 0 when the reply is
 * the expected one with STATUS_OK. */
int llep__conn_reply_check(const LlepPb__Frame *reply, LlepPb__Frame__BodyCase expected,
                           char *err, size_t errlen);

#endif
