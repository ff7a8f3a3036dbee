/* Whether a connecting peer may use llepd (admit.c): root, llepd's own user and members of
 * group llep.
 *
 * Root and llepd's user are known from SO_PEERCRED at once. Everyone else needs the group
 * database (getgrnam_r, getpwuid_r), which goes through NSS and may be a network directory
 * (LDAP) that takes seconds or hangs: that lookup runs on libuv's thread pool, never on the
 * loop thread, and the connection's handshake waits for it (session.c reads nothing from the
 * peer until then). One lookup runs at a time, so a slow directory holds one pool thread and
 * the others keep running steps; the rest wait here in arrival order. */
#ifndef LLEPD_ADMIT_H
#define LLEPD_ADMIT_H

#include <stdbool.h>
#include <sys/socket.h>
#include <uv.h>

#include "list.h"

typedef struct llepd_admit_req llepd_admit_req;

/* The server's checks: waiting ones in order, and the one on the pool (NULL when none). */
typedef struct llepd_admit_queue {
    uv_loop_t *loop;
    llepd_list waiting;
    llepd_admit_req *running;
} llepd_admit_queue;

/* On the loop thread, once the lookup is done (never after llepd_admit_cancel). */
typedef void (*llepd_admit_done)(void *arg, bool allowed);

void llepd_admit_init(llepd_admit_queue *q, uv_loop_t *loop);

/* Decides for the peer on socket fd with credentials c. Returns 1 (allowed) when no lookup is
 * needed; else reads the peer's groups from the socket now, queues the lookup, sets *ret and
 * returns 0: done(arg, allowed) follows. -ENOMEM when the request cannot be made. */
int llepd_admit_check(llepd_admit_queue *q, int fd, const struct ucred *c,
                      llepd_admit_done done, void *arg, llepd_admit_req **ret);

/* The answer is no longer wanted: done is not called. A lookup already on the pool finishes
 * there and is then freed. */
void llepd_admit_cancel(llepd_admit_req *r);

#endif
