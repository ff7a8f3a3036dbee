/* Riding out a restart of llepd (include/llep/client.h, "reconnecting"): one try to connect
 * again per call that needs llepd, with backoff between tries. The layers are restored on
 * the new connection above this, in client-layer.c (llep__client_usable()).
 *
 * What makes it safe: a lost connection completes every submission in flight with
 * -ECONNRESET without touching its y (client.c, connection_lost()); only a completion the
 * daemon posted in the ring copies y out. The old arena is unmapped before the new one comes,
 * so nothing of the old daemon's is read after the loss, and ticket ids keep counting across
 * connections, so no old ticket can be completed by the new daemon. Layer handles stay the
 * same structs; only their ids (per connection) change. */
#include "client-internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void llep__client_sleep_until(llep_client *c, int64_t ms) {
    int64_t left = ms - llep__client_now_ms();
    struct timespec ts;

    if (left <= 0)
        return;
    if (left > LLEP_CLIENT_RETRY_MAX_MS)
        left = LLEP_CLIENT_RETRY_MAX_MS;
    ts.tv_sec = left / 1000;
    ts.tv_nsec = (left % 1000) * 1000000;
    pthread_mutex_unlock(&c->lock);
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&c->lock);
}

/* A failed try: the next one comes after twice the last wait, from 10 ms up to 200 ms. */
int llep__retry_failed(llep_retry *t) {
    if (t->backoff_ms == 0)
        t->backoff_ms = LLEP_CLIENT_RETRY_FIRST_MS;
    else if (t->backoff_ms < LLEP_CLIENT_RETRY_MAX_MS / 2)
        t->backoff_ms *= 2;
    else
        t->backoff_ms = LLEP_CLIENT_RETRY_MAX_MS;
    t->next_ms = llep__client_now_ms() + t->backoff_ms;
    return t->backoff_ms;
}

void llep__retry_reset(llep_retry *t) {
    t->next_ms = 0;
    t->backoff_ms = 0;
}

static int lost(llep_client *c) {
    return llep__client_fail(c, c->dead, "the connection to llepd is lost%s%s",
                             c->notice[0] ? ": " : "", c->notice);
}

/* The new connection replaces the lost one; the arena goes with the old daemon (a new one is
 * set up when the next forward or creation needs it). Nothing is in flight: connection_lost()
 * completed it all, and no poller sleeps (revive() waited for it to leave). */
static void install(llep_client *c, llep_conn *nc) {
    llep__conn_close(&c->conn);
    c->conn = *nc;
    llep__arena_drop(c);
    c->dead = 0;
    c->notice[0] = '\0';
    c->socket_ready = false;
    c->gen++;
    llep__retry_reset(&c->retry);
    /* A new daemon: its layers are tried at once, whatever the old one said. */
    for (llep_layer *l = c->layers; l; l = l->next)
        llep__retry_reset(&l->retry);
}

/* One try to connect again, the lock dropped while it waits for its turn and connects. */
static int revive(llep_client *c) {
    char err[LLEP_CLIENT_ERROR_MAX];
    llep_conn nc;
    int r;

    c->reviving = true;
    /* connection_lost() woke the poller; the socket and arena change only once it is out. */
    while (c->poller) {
        llep__eventfd_signal(c->wake_efd);
        pthread_cond_wait(&c->cond, &c->lock);
    }
    llep__client_sleep_until(c, c->retry.next_ms);
    pthread_mutex_unlock(&c->lock);
    r = llep__conn_open(&nc, c->socket_path, LLEP_PB__PEER_KIND__PEER_KIND_CLIENT,
                        llep__program_name(), LLEP_CLIENT_RETRY_HELLO_MS, err, sizeof(err));
    pthread_mutex_lock(&c->lock);
    c->revive_tries++;
    if (r < 0) {
        int next = llep__retry_failed(&c->retry);

        c->reviving = false;
        pthread_cond_broadcast(&c->cond);
        return llep__client_fail(c, -ECONNRESET, "the connection to llepd is lost%s%s; "
                                 "reconnecting failed: %s (next try in %d ms)",
                                 c->notice[0] ? ": " : "", c->notice, err, next);
    }
    install(c, &nc);
    c->reviving = false;
    pthread_cond_broadcast(&c->cond);
    return 0;
}

int llep__client_ready(llep_client *c) {
    uint64_t tries = c->revive_tries;
    bool waited = false;

    if (!c->dead)
        return 0;
    if (!c->reconnect)
        return lost(c);
    /* Another thread's try is ours too: its outcome is this call's. */
    while (c->reviving) {
        pthread_cond_wait(&c->cond, &c->lock);
        waited = true;
    }
    if (!c->dead)
        return 0;
    if (waited && c->revive_tries != tries)
        return -ECONNRESET;
    return revive(c);
}
