/* The requests about a client's device space (space.h): SpaceRegister, with the descriptor
 * that came with it, and SpaceRelease. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include "handlers.h"

#include "session.h"
#include "space.h"

#define MSG_MAX 512

static void reply_register(llepd_session *s, uint64_t id, int r, const char *msg) {
    LlepPb__SpaceReply sr = LLEP_PB__SPACE_REPLY__INIT;

    sr.status = llep__status_from_errno(r);
    sr.message = (char *)msg;
    if (r == 0) {
        sr.size = s->space->size;
        sr.done_event.data = s->space->done_event;
        sr.done_event.len = s->space->done_len;
    }
    llepd_session_reply(s, id, LLEP_PB__FRAME__BODY_SPACE_REPLY, &sr);
}

void llepd_handle_space_register(llepd_session *s, const LlepPb__Frame *f) {
    const LlepPb__SpaceRegister *m = f->space_register;
    char err[MSG_MAX] = "";
    int fds[2] = { -1, -1 };
    size_t nfds = llepd_session_take_fds(s, fds, 2);
    int r = 0;

    if (!m)
        r = -EINVAL, snprintf(err, sizeof(err), "missing space_register");
    else if (s->space)
        r = -EEXIST, snprintf(err, sizeof(err), "this client has a space of %" PRIu64 " bytes "
                              "already: release it first", s->space->size);
    else if (m->fd_count != 1 || nfds != 1)
        r = -EINVAL, snprintf(err, sizeof(err), "space_register must come with exactly one "
                              "descriptor (fd_count %" PRIu32 ", %zu arrived)", m->fd_count,
                              nfds);
    if (r == 0)
        r = llepd_space_open(m, fds[0], s->srv->backend_ops, llep__devices_backend(s->srv->devs),
                             &s->space, err, sizeof(err));
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]); /* the mapping (or the backend's import) keeps the memory */
    reply_register(s, f->id, r, err);
}

void llepd_handle_space_release(llepd_session *s, const LlepPb__Frame *f) {
    LlepPb__SpaceReleaseReply rr = LLEP_PB__SPACE_RELEASE_REPLY__INIT;
    char err[MSG_MAX] = "";
    int r = 0;

    if (!s->space) {
        r = -ENOENT;
        snprintf(err, sizeof(err), "this client has no space");
    } else if (s->inflight) {
        /* A step may be reading x from it or writing y into it. */
        r = -EBUSY;
        snprintf(err, sizeof(err), "cannot release the space while %u submissions are in "
                 "flight", s->inflight);
    } else {
        llepd_space_close(s->space);
        s->space = NULL;
    }
    rr.status = llep__status_from_errno(r);
    rr.message = err;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_SPACE_RELEASE_REPLY, &rr);
}
