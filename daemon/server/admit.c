/* Admission of a connecting peer (admit.h): the NSS lookups of group llep on the pool.
 *
 * Why a lookup per connection on the pool rather than a cached answer refreshed now and
 * then: a user added to group llep (or a group created) after llepd started must be let in
 * at their next connection, not after a refresh period, and a refresh would still need the
 * same lookup somewhere off the loop thread. The lookup per connection is as fresh as the
 * group database; its cost only matters with a slow directory, and there it delays that
 * connection's handshake alone, never the loop. */
#include "admit.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The group whose members may connect, set and drain. */
#define ADMIN_GROUP "llep"
/* Supplementary groups read from the kernel at once; more take a second, sized call. */
#define PEER_GROUPS_INLINE 64
/* The most a group or user entry may take (a group of many members): 1 MiB. */
#define NSS_BUF_MAX (1u << 20)

struct llepd_admit_req {
    uv_work_t work;
    llepd_list link;            /* in q->waiting until its turn */
    llepd_admit_queue *q;
    llepd_admit_done done;      /* NULL once cancelled */
    void *arg;
    struct ucred cred;
    gid_t *groups;              /* the peer's supplementary groups (SO_PEERGROUPS) */
    size_t ngroups;
    bool allowed;
};

void llepd_admit_init(llepd_admit_queue *q, uv_loop_t *loop) {
    q->loop = loop;
    q->running = NULL;
    llepd_list_init(&q->waiting);
}

/* The peer's supplementary groups as the kernel has them (as they were when it connected). */
static int peer_groups(int fd, llepd_admit_req *r) {
    gid_t inline_groups[PEER_GROUPS_INLINE];
    socklen_t len = sizeof(inline_groups);
    const gid_t *g = inline_groups;
    gid_t *big = NULL;

    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, inline_groups, &len) < 0) {
        /* ERANGE gives the size needed; anything else leaves the member list to decide. */
        big = errno == ERANGE ? malloc(len) : NULL;
        if (!big || getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, big, &len) < 0)
            len = 0;
        g = big;
    }
    r->ngroups = len / sizeof(gid_t);
    r->groups = r->ngroups ? malloc(r->ngroups * sizeof(gid_t)) : NULL;
    if (r->ngroups && !r->groups) {
        free(big);
        return -ENOMEM;
    }
    if (r->ngroups)
        memcpy(r->groups, g, r->ngroups * sizeof(gid_t));
    free(big);
    return 0;
}

/* getgrnam_r(ADMIN_GROUP) with a buffer grown until the entry fits; NULL when there is no such
 * group or it cannot be read. The buffer is the caller's to free. */
static struct group *admin_group(struct group *gr, char **buf) {
    struct group *g = NULL;

    for (size_t len = 1024; len <= NSS_BUF_MAX; len *= 2) {
        char *b = realloc(*buf, len);
        if (!b)
            return NULL;
        *buf = b;
        if (getgrnam_r(ADMIN_GROUP, gr, b, len, &g) != ERANGE)
            return g;
    }
    return NULL;
}

static struct passwd *user_of(uid_t uid, struct passwd *pw, char **buf) {
    struct passwd *p = NULL;

    for (size_t len = 1024; len <= NSS_BUF_MAX; len *= 2) {
        char *b = realloc(*buf, len);
        if (!b)
            return NULL;
        *buf = b;
        if (getpwuid_r(uid, pw, b, len, &p) != ERANGE)
            return p;
    }
    return NULL;
}

/* On the pool: the peer is in group llep by its gid, its supplementary groups (a process
 * started after the user joined, or one that switched groups), or the group's member list (a
 * user added while their session, which lacks the group, still runs). Reentrant NSS calls
 * only: other checks' lookups are not on this thread, but other code's may be. */
static void check_run(uv_work_t *w) {
    llepd_admit_req *r = w->data;
    struct group gr;
    struct passwd pw;
    char *gbuf = NULL, *pbuf = NULL;
    const struct group *g = admin_group(&gr, &gbuf);
    const struct passwd *p = NULL;

    r->allowed = false;
    if (g) {
        r->allowed = r->cred.gid == g->gr_gid;
        for (size_t i = 0; i < r->ngroups && !r->allowed; i++)
            r->allowed = r->groups[i] == g->gr_gid;
        if (!r->allowed)
            p = user_of(r->cred.uid, &pw, &pbuf);
        for (char **m = g->gr_mem; p && *m && !r->allowed; m++)
            r->allowed = strcmp(*m, p->pw_name) == 0;
    }
    free(gbuf);
    free(pbuf);
}

/* Answers the caller, unless it cancelled, and frees the request. */
static void finish(llepd_admit_req *r, bool allowed) {
    if (r->done)
        r->done(r->arg, allowed);
    free(r->groups);
    free(r);
}

static void check_done(uv_work_t *w, int status);

/* Puts the next waiting check on the pool, if none runs. A check that cannot be queued is
 * answered "refused" at once rather than left waiting for ever. */
static void start_next(llepd_admit_queue *q) {
    while (!q->running && !llepd_list_empty(&q->waiting)) {
        llepd_admit_req *r = llepd_container_of(q->waiting.next, llepd_admit_req, link);
        llepd_list_remove(&r->link);
        q->running = r;
        r->work.data = r;
        if (uv_queue_work(q->loop, &r->work, check_run, check_done) < 0) {
            q->running = NULL;
            finish(r, false);
        }
    }
}

static void check_done(uv_work_t *w, int status) {
    llepd_admit_req *r = w->data;
    llepd_admit_queue *q = r->q;

    q->running = NULL;
    finish(r, status == 0 && r->allowed);
    start_next(q);
}

int llepd_admit_check(llepd_admit_queue *q, int fd, const struct ucred *c,
                      llepd_admit_done done, void *arg, llepd_admit_req **ret) {
    if (c->uid == 0 || c->uid == geteuid())
        return 1;
    llepd_admit_req *r = calloc(1, sizeof(*r));
    if (!r || peer_groups(fd, r) < 0) {
        free(r);
        return -ENOMEM;
    }
    r->q = q;
    r->done = done;
    r->arg = arg;
    r->cred = *c;
    llepd_list_append(&q->waiting, &r->link);
    *ret = r;
    start_next(q);
    return 0;
}

void llepd_admit_cancel(llepd_admit_req *r) {
    if (r->q->running == r) {
        r->done = NULL; /* check_done frees it */
        return;
    }
    llepd_list_remove(&r->link);
    free(r->groups);
    free(r);
}
