/* One session per connection: reading frames, sending replies, the client's arena and the
 * watch on its submission eventfd (session.c).
 *
 * A session calls up only through the server's hooks: frames go to hooks.frame, the
 * submission eventfd to hooks.ring, and the start of its close to hooks.session_closing. */
#ifndef LLEPD_SESSION_H
#define LLEPD_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "frame.h"
#include "ring.h"
#include "server.h"

enum llepd_session_state { SESSION_HELLO, SESSION_READY, SESSION_CLOSING };

struct llepd_session {
    llepd_server *srv;
    llepd_list link;                /* in srv->sessions */
    uv_pipe_t pipe;
    struct llepd_sq_watch *sq_watch; /* polls the submission eventfd, once an arena exists */
    uv_timer_t retry;               /* drains the ring again when completions were full */
    llep_frame_decoder dec;
    uint64_t id;
    uint64_t broadcast_seq;         /* the last server broadcast this session got (server.c) */
    enum llepd_session_state state;
    int kind;                       /* LLEP_PB__PEER_KIND__* */
    char program[64];
    struct ucred cred;
    bool admin;                     /* root or a member of the daemon's group */
    bool refused;                   /* may not connect: answered with a refusal, then closed */
    struct llepd_admit_req *admit;  /* the group lookup while it runs (admit.h), else NULL */
    bool admit_timed_out;           /* refused because the lookup did not answer in time */

    llep_arena arena;
    bool have_arena;
    int cq_efd;                     /* completion eventfd (the client waits on it) */
    struct llepd_space *space;      /* the client's device space (space.h), or NULL */

    uint32_t *layers;               /* ids of the layers this client holds */
    uint32_t nlayers;
    size_t cap_layers;

    uint32_t inflight;              /* submissions queued or in a running step */
    bool in_drain, drain_again;     /* the ring drain is running / must run once more */
    uint32_t creating;              /* layer creations reading this arena */
    int refs;                       /* the session itself, handles, in-flight work */
    int open_handles;
};

/* Takes and drops a reference; the last drop frees the session. */
void llepd_session_ref(llepd_session *s);
void llepd_session_unref(llepd_session *s);

/* Starts closing: stops reading, calls hooks.session_closing (queued submissions and layer
 * references go); in-flight steps keep the arena mapped until they finish. Safe twice. */
void llepd_session_close(llepd_session *s, const char *why);

/* Sends a frame (copied); errors close the session. */
void llepd_session_send(llepd_session *s, const LlepPb__Frame *f);
/* Sends the reply `msg` (a message of the body's type) to request `id`. */
void llepd_session_reply(llepd_session *s, uint64_t id, LlepPb__Frame__BodyCase body, void *msg);
/* Sends an ErrorReply with the status of err (a negative errno) and the sentence msg. */
void llepd_session_reply_error(llepd_session *s, uint64_t id, int err, const char *msg);

/* Sends the one frame that carries descriptors (ArenaReply). -EAGAIN when replies are still
 * queued on the socket (the descriptors would overtake them). */
int llepd_session_send_fds(llepd_session *s, const LlepPb__Frame *f, const int *fds, size_t nfds);

/* Replaces the session's arena with a new one of geometry g; the caller has made sure
 * nothing is in flight. Returns 0 or a negative errno. */
int llepd_session_set_arena(llepd_session *s, const llep_arena_geom *g);
/* The submission eventfd (to pass to the client); -1 without an arena. */
int llepd_session_sq_fd(const llepd_session *s);
/* Polls the ring again in a millisecond (its completions were full). */
void llepd_session_retry_later(llepd_session *s);

/* Takes up to max descriptors that came with the frames read so far (SpaceRegister carries
 * one); the caller closes them. Those nobody takes are closed once the read that brought
 * them has been handled, so a client cannot pile descriptors up in llepd. */
size_t llepd_session_take_fds(llepd_session *s, int *fds, size_t max);

/* Accepts a new connection on the listener. */
void llepd_session_accept(llepd_server *srv);

#endif
