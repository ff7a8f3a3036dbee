/* Peer links: a link's life and what leaves on it. Making the link's handle, writing frames
 * (a link whose peer stops reading is closed), bulk data paced out in chunks so heartbeats and
 * step messages pass in between, and ending a link (its peer then goes down in
 * cluster-peers.c). What arrives on a link is peer-proto.c's; making the connections is
 * peer-dial.c's. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-internal.h"
#include "log.h"

/* Bytes queued on a link; past this it is closed (the peer does not read). Bulk data (shares,
 * step buffers) is paced below BULK_QUEUE, so only a stuck peer gets here. */
#define MAX_WRITE_QUEUE ((size_t)64 << 20)
/* Bulk data goes out in chunks of BULK_CHUNK while less than BULK_QUEUE waits on the link, so
 * heartbeats and step messages never queue behind gigabytes of weights. */
#define BULK_CHUNK ((size_t)1 << 20)
#define BULK_QUEUE ((size_t)4 << 20)

/* A buffer going out as ClusterData chunks, a few at a time (llepd_cluster_send_bulk). */
typedef struct bulk {
    llepd_list node;                /* in its link's bulks */
    char layer[LLEP_NAME_MAX + 1];
    uint64_t step, total, off;
    int kind;
    uint32_t index;
    const uint8_t *data;
    uint8_t *owned;                 /* a copy the bulk frees, or NULL for borrowed data */
    const void *tag;
} bulk;

/* ---- making a link ----------------------------------------------------------------------- */

cluster_link *llepd_link_new(llepd_cluster *cl, bool outgoing) {
    cluster_link *l = calloc(1, sizeof(*l));

    if (!l)
        return NULL;
    if (uv_tcp_init(cl->loop, &l->tcp) < 0) {
        free(l);
        return NULL;
    }
    l->cl = cl;
    l->tcp.data = l;
    l->outgoing = outgoing;
    l->started_ns = llepd_now_ns();
    llep__frame_decoder_init(&l->dec, 0);
    llepd_list_init(&l->bulks);
    llepd_list_append(&cl->links, &l->node);
    return l;
}

/* ---- ending a link ----------------------------------------------------------------------- */

static void bulk_free(bulk *b) {
    llepd_list_remove(&b->node);
    free(b->owned);
    free(b);
}

static void drop_bulks(cluster_link *l) {
    while (!llepd_list_empty(&l->bulks))
        bulk_free(llepd_container_of(l->bulks.next, bulk, node));
}

void llepd_link_free(cluster_link *l) {
    llepd_list_remove(&l->node);
    drop_bulks(l);
    llep__frame_decoder_fini(&l->dec);
    free(l);
}

static void on_link_closed(uv_handle_t *h) {
    llepd_link_free(h->data);
}

void llepd_link_close_handle(cluster_link *l) {
    if (!uv_is_closing((uv_handle_t *)&l->tcp))
        uv_close((uv_handle_t *)&l->tcp, on_link_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    (void)status;
    llepd_link_close_handle(req->data);
}

/* Detaches the link from its peer (the peer is down when the link was up) and closes it:
 * after what was queued has been written when flush is set (a refusal or error reply the
 * other end should read), else at once. */
void llepd_link_end(cluster_link *l, const char *why, bool flush) {
    llepd_cluster *cl = l->cl;
    cluster_peer *p = l->peer;
    bool was_up = l->state == LINK_UP, connected = l->state != LINK_CONNECTING;

    if (l->state == LINK_CLOSING)
        return;
    l->state = LINK_CLOSING;
    l->started_ns = llepd_now_ns();
    drop_bulks(l);
    if (p && p->link == l)
        llepd_peer_link_gone(cl, p, why, was_up);
    if (connected)
        uv_read_stop((uv_stream_t *)&l->tcp);
    if (flush && connected) {
        l->shutdown_req.data = l;
        if (uv_shutdown(&l->shutdown_req, (uv_stream_t *)&l->tcp, on_shutdown) == 0)
            return;
    }
    llepd_link_close_handle(l);
}

/* Answers a frame that cannot be served with an ErrorReply, logs it and closes the link. */
void llepd_link_fail(cluster_link *l, uint64_t id, int err, const char *msg) {
    LlepPb__ErrorReply er = LLEP_PB__ERROR_REPLY__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    log_warning("peer link %s: %s", l->remote, msg);
    er.status = llep__status_from_errno(err);
    er.message = (char *)msg;
    f.id = id;
    f.body_case = LLEP_PB__FRAME__BODY_ERROR;
    f.error = &er;
    llepd_link_send(l, &f);
    llepd_link_end(l, msg, true);
}

/* ---- writing frames ---------------------------------------------------------------------- */

static void pump(cluster_link *l);

static void on_write(uv_write_t *req, int status) {
    cluster_link *l = req->data;

    free(req);
    if (status < 0 && l->state != LINK_CLOSING)
        llepd_link_end(l, uv_strerror(status), false);
    else if (status == 0)
        pump(l);
}

void llepd_link_send(cluster_link *l, const LlepPb__Frame *f) {
    uint8_t *buf;
    size_t len;
    uv_write_t *req;

    if (l->state == LINK_CLOSING || l->state == LINK_CONNECTING)
        return;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&l->tcp) > MAX_WRITE_QUEUE) {
        llepd_link_end(l, "the peer does not read what this node sends", false);
        return;
    }
    int r = llep__frame_encode_alloc(f, &buf, &len);
    if (r < 0) {
        log_error("peer link %s: cannot encode a %s frame: %s", l->remote,
                  llep__frame_body_name(f->body_case), strerror(-r));
        llepd_link_end(l, "a frame could not be encoded", false);
        return;
    }
    /* The request carries the frame, so on_write frees both at once. */
    req = malloc(sizeof(*req) + len);
    if (!req) {
        free(buf);
        llepd_link_end(l, "out of memory", false);
        return;
    }
    memcpy(req + 1, buf, len);
    free(buf);
    req->data = l;
    uv_buf_t b = uv_buf_init((char *)(req + 1), (unsigned)len);
    r = uv_write(req, (uv_stream_t *)&l->tcp, &b, 1, on_write);
    if (r < 0) {
        free(req);
        llepd_link_end(l, uv_strerror(r), false);
        return;
    }
    if (l->peer)
        l->peer->bytes_sent += len;
}

/* ---- bulk data and what cluster layers send ---------------------------------------------- */

/* Queues chunks of the link's bulk data while little waits on the socket. */
static void pump(cluster_link *l) {
    LlepPb__ClusterData d = LLEP_PB__CLUSTER_DATA__INIT;
    LlepPb__Frame f = LLEP_PB__FRAME__INIT;

    f.body_case = LLEP_PB__FRAME__BODY_CLUSTER_DATA;
    f.cluster_data = &d;
    while (l->state == LINK_UP && !llepd_list_empty(&l->bulks) &&
           uv_stream_get_write_queue_size((uv_stream_t *)&l->tcp) < BULK_QUEUE) {
        bulk *b = llepd_container_of(l->bulks.next, bulk, node);
        uint64_t n = b->total - b->off < BULK_CHUNK ? b->total - b->off : BULK_CHUNK;
        d.layer = b->layer;
        d.step = b->step;
        d.kind = (LlepPb__ClusterDataKind)b->kind;
        d.index = b->index;
        d.offset = b->off;
        d.total = b->total;
        d.data.data = (uint8_t *)b->data + b->off;
        d.data.len = n;
        b->off += n;
        /* llepd_link_send may end the link, which frees the bulks still listed: a finished one is
         * taken off first and freed here, and nothing else of b is touched after. */
        bool done = b->off >= b->total;
        if (done)
            llepd_list_remove(&b->node);
        llepd_link_send(l, &f);
        if (done)
            bulk_free(b);
    }
}

int llepd_cluster_send_bulk(llepd_cluster *cl, uint32_t node_id, const char *layer,
                            uint64_t step, int kind, uint32_t index, const void *data,
                            uint64_t total, bool copy, const void *tag) {
    if (!llepd_cluster_peer_up(cl, node_id))
        return -ENOTCONN;
    if (total == 0)
        return 0;
    cluster_link *l = llepd_peer_by_id(cl, node_id)->link;
    bulk *b = calloc(1, sizeof(*b));
    if (!b || (copy && total > SIZE_MAX)) {
        free(b);
        return -ENOMEM;
    }
    if (copy) {
        b->owned = malloc((size_t)total);
        if (!b->owned) {
            free(b);
            return -ENOMEM;
        }
        memcpy(b->owned, data, (size_t)total);
    }
    snprintf(b->layer, sizeof(b->layer), "%s", layer);
    b->step = step;
    b->kind = kind;
    b->index = index;
    b->data = copy ? b->owned : data;
    b->total = total;
    b->tag = tag;
    llepd_list_append(&l->bulks, &b->node);
    pump(l);
    return 0;
}

void llepd_cluster_cancel_bulk(llepd_cluster *cl, const void *tag) {
    if (!cl)
        return;
    for (llepd_list *i = cl->links.next; i != &cl->links; i = i->next) {
        cluster_link *l = llepd_container_of(i, cluster_link, node);
        for (llepd_list *j = l->bulks.next, *next; j != &l->bulks; j = next) {
            next = j->next;
            bulk *b = llepd_container_of(j, bulk, node);
            if (b->tag == tag)
                bulk_free(b);
        }
    }
}

int llepd_cluster_send(llepd_cluster *cl, uint32_t node_id, const LlepPb__Frame *f) {
    if (!llepd_cluster_peer_up(cl, node_id))
        return -ENOTCONN;
    cluster_peer *p = llepd_peer_by_id(cl, node_id);
    llepd_link_send(p->link, f);
    return p->link && p->link->state == LINK_UP ? 0 : -ENOTCONN;
}
