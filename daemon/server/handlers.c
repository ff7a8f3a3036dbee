/* One handler per request, dispatched from a table that also says who may send it. Each
 * handler checks its message first (proto/validate.h) and answers every request, with a
 * status and a sentence naming the problem when it cannot serve it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "handlers.h"
#include "models.h"

#include "layer.h"
#include "llep-config.h"
#include "log.h"
#include "session.h"
#include "validate.h"
#include "grow.h"

#define MSG_MAX 512

/* Who may send a request. */
enum { ANY = 0, CLIENT = 1, CTL = 2, ADMIN = 4 };

typedef void (*handler_fn)(llepd_session *s, const LlepPb__Frame *f);

typedef struct handler {
    LlepPb__Frame__BodyCase body;
    handler_fn fn;
    int who;
} handler;

/* ---- connection set-up ------------------------------------------------------------------- */

static void handle_hello(llepd_session *s, const LlepPb__Frame *f) {
    LlepPb__HelloReply hr = LLEP_PB__HELLO_REPLY__INIT;
    char err[MSG_MAX] = "";
    int r = llep__frame_check_hello(f, err, sizeof(err));

    hr.version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    hr.daemon_version = (char *)LLEP_VERSION;
    hr.client_id = s->id;
    if (r == 0 && s->state != SESSION_HELLO) {
        r = -EPROTO;
        snprintf(err, sizeof(err), "Hello sent twice");
    }
    if (r == 0 && f->hello->kind != LLEP_PB__PEER_KIND__PEER_KIND_CLIENT &&
        f->hello->kind != LLEP_PB__PEER_KIND__PEER_KIND_CTL) {
        r = -EINVAL;
        snprintf(err, sizeof(err), "Hello.kind must be client or ctl");
    }
    hr.status = llep__status_from_errno(r);
    hr.message = err;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_HELLO_REPLY, &hr);
    if (r < 0) {
        llepd_session_close(s, err);
        return;
    }
    s->state = SESSION_READY;
    s->kind = f->hello->kind;
    snprintf(s->program, sizeof(s->program), "%s",
             f->hello->program && f->hello->program[0] ? f->hello->program : "?");
    log_debug("client %llu is %s (%s)", (unsigned long long)s->id, s->program,
              s->kind == LLEP_PB__PEER_KIND__PEER_KIND_CTL ? "ctl" : "client");
}

/* Arenas above this are refused: a typo must not make the daemon map a terabyte. */
#define MAX_TENSOR_BYTES (UINT64_C(64) << 30)

static void handle_arena_setup(llepd_session *s, const LlepPb__Frame *f) {
    LlepPb__ArenaReply ar = LLEP_PB__ARENA_REPLY__INIT;
    llep_arena_geom g;
    char err[MSG_MAX] = "";
    int r;

    if (s->inflight || s->creating) {
        r = -EINVAL; /* the protocol has no "busy": the request is wrong at this moment */
        snprintf(err, sizeof(err), "cannot replace the arena while %u submissions and %u "
                 "layer creations are in flight", s->inflight, s->creating);
    } else {
        r = llep__arena_setup_check(f->arena_setup, MAX_TENSOR_BYTES, &g, err, sizeof(err));
    }
    if (r == 0) {
        r = llepd_session_set_arena(s, &g);
        if (r < 0)
            snprintf(err, sizeof(err), "cannot create the arena: %s", strerror(-r));
    }
    ar.status = llep__status_from_errno(r);
    ar.message = err;
    if (r < 0) {
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_ARENA_REPLY, &ar);
        return;
    }
    llep__arena_reply_set_geom(&ar, &s->arena.geom);
    ar.fd_count = 3;
    LlepPb__Frame out = LLEP_PB__FRAME__INIT;
    out.id = f->id;
    out.body_case = LLEP_PB__FRAME__BODY_ARENA_REPLY;
    out.arena_reply = &ar;
    int fds[3] = { s->arena.fd, llepd_session_sq_fd(s), s->cq_efd };
    r = llepd_session_send_fds(s, &out, fds, 3);
    if (r == -EAGAIN) {
        /* Earlier replies still fill the socket; the descriptors must not overtake them. The
         * arena made for this request waits unused until the client asks again. */
        LlepPb__ArenaReply busy = LLEP_PB__ARENA_REPLY__INIT;
        busy.status = LLEP_PB__STATUS__STATUS_INVALID;
        busy.message = (char *)"replies to this client are still queued on the socket; read "
                               "them and ask for the arena again";
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_ARENA_REPLY, &busy);
    } else if (r < 0) {
        snprintf(err, sizeof(err), "could not pass the arena descriptors: %s", strerror(-r));
        llepd_session_close(s, err);
    }
}

/* ---- layers ------------------------------------------------------------------------------ */

static int add_layer_ref(llepd_session *s, llepd_layer *l) {
    if (llep__grow(&s->layers, &s->cap_layers, s->nlayers + 1, sizeof(*s->layers), 4) < 0)
        return -ENOMEM;
    s->layers[s->nlayers++] = l->id;
    l->refs++;
    return 0;
}

static void send_layer_reply(llepd_session *s, uint64_t id, LlepPb__Frame__BodyCase body,
                             const llepd_layer *l, int status, const char *msg, bool created) {
    LlepPb__LayerReply lr = LLEP_PB__LAYER_REPLY__INIT;
    LlepPb__LayerDesc d;

    llepd_layer_effective_desc(l, &d);

    lr.status = llep__status_from_errno(status);
    lr.message = (char *)(msg ? msg : "");
    if (status == 0) {
        lr.layer_id = l->id;
        lr.created = created;
        lr.desc = &d;
    }
    llepd_session_reply(s, id, body, &lr);
}

typedef struct attach_waiter {
    llepd_list link;
    llepd_session *s;
    uint64_t frame_id;
} attach_waiter;

/* hooks.layer_created: a creation ended; replies to the creator and the waiting attaches. */
static void layer_created(llepd_layer *l, llepd_session *creator, uint64_t frame_id, int status,
                          const char *msg) {
    char err[MSG_MAX];

    if (status == 0 && creator && creator->state != SESSION_CLOSING &&
        add_layer_ref(creator, l) < 0)
        status = -ENOMEM;
    if (creator && creator->state != SESSION_CLOSING) {
        snprintf(err, sizeof(err), "%s", msg ? msg : "");
        send_layer_reply(creator, frame_id, LLEP_PB__FRAME__BODY_LAYER_CREATE_REPLY, l, status,
                         err, true);
    }
    while (!llepd_list_empty(&l->attach_waiters)) {
        attach_waiter *w = llepd_container_of(l->attach_waiters.next, attach_waiter, link);
        llepd_list_remove(&w->link);
        if (w->s->state != SESSION_CLOSING) {
            int r = status;
            if (r == 0)
                r = add_layer_ref(w->s, l);
            snprintf(err, sizeof(err), "layer '%s' could not be created: %s", l->name,
                     msg ? msg : "");
            send_layer_reply(w->s, w->frame_id, LLEP_PB__FRAME__BODY_LAYER_ATTACH_REPLY, l, r,
                             r ? err : "", false);
        }
        llepd_session_unref(w->s);
        free(w);
    }
    if (status < 0 || l->refs == 0) {
        l->dead = true;
        llepd_layer_maybe_destroy(l);
    }
}

/* A cluster-scope layer needs the cluster of this daemon (--node-id and --peers). */
static int cluster_layer_new(llepd_server *srv, llepd_layer *l, char *err, size_t errlen) {
    if (!srv->hooks.cluster_layer_new) {
        snprintf(err, errlen, "scope cluster needs a clustered llepd (--node-id and --peers)");
        return -EINVAL;
    }
    return srv->hooks.cluster_layer_new(l, err, errlen);
}

static void handle_layer_create(llepd_session *s, const LlepPb__Frame *f) {
    const LlepPb__LayerCreate *lc = f->layer_create;
    char err[MSG_MAX] = "";
    llepd_layer *l = NULL;
    int r = llep__layer_create_check(lc, s->have_arena ? &s->arena : NULL, err, sizeof(err));

    if (r == 0 && s->srv->draining) {
        r = -ESHUTDOWN;
        snprintf(err, sizeof(err), "llepd is draining and creates no layers");
    }
    if (r == 0 && lc->desc->scope != LLEP_PB__SCOPE__SCOPE_CLUSTER &&
        lc->desc->num_experts % s->srv->devices != 0) {
        r = -EINVAL;
        snprintf(err, sizeof(err), "num_experts %u is not a multiple of the daemon's %u devices",
                 lc->desc->num_experts, s->srv->devices);
    }
    if (r == 0 && llepd_layer_find(s->srv, lc->name)) {
        r = -EEXIST;
        snprintf(err, sizeof(err), "layer '%s' exists; attach to it with NULL weights",
                 lc->name);
    }
    if (r == 0 && llepd_model_of_layer(s->srv, lc->name)) {
        r = -EEXIST;
        snprintf(err, sizeof(err), "layer name '%s' belongs to model '%.*s' (llepctl models)",
                 lc->name, (int)(strchr(lc->name, '/') - lc->name), lc->name);
    }
    if (r == 0 && !(l = llepd_layer_new(s->srv, lc->name, lc->desc))) {
        r = -ENOMEM;
        snprintf(err, sizeof(err), "llepd is out of memory");
    }
    if (r == 0 && lc->desc->scope == LLEP_PB__SCOPE__SCOPE_CLUSTER)
        r = cluster_layer_new(s->srv, l, err, sizeof(err));
    if (r < 0 && l) {
        l->creating = false;
        l->dead = true;
        llepd_layer_maybe_destroy(l);
        l = NULL;
    }
    if (r == 0) {
        r = llepd_layer_start_create(l, s, f->id, lc);
        if (r < 0) {
            snprintf(err, sizeof(err), "cannot start creating the layer: %s", strerror(-r));
            l->creating = false;
            l->dead = true;
            llepd_layer_maybe_destroy(l);
        }
    }
    if (r < 0) {
        LlepPb__LayerReply lr = LLEP_PB__LAYER_REPLY__INIT;
        lr.status = llep__status_from_errno(r);
        lr.message = err;
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_LAYER_CREATE_REPLY, &lr);
    }
}

static void handle_layer_attach(llepd_session *s, const LlepPb__Frame *f) {
    const LlepPb__LayerAttach *la = f->layer_attach;
    char err[MSG_MAX] = "", have[160], want[160];
    llepd_layer *l = NULL;
    int r = llep__layer_attach_check(la, err, sizeof(err));

    if (r == 0 && !(l = llepd_layer_find(s->srv, la->name))) {
        r = -ENOENT;
        snprintf(err, sizeof(err), "no layer named '%s'", la->name);
    }
    if (r == 0 && la->desc && !llep__layer_desc_same_shape(&l->desc, la->desc)) {
        llep__layer_desc_format_shape(&l->desc, have, sizeof(have));
        llep__layer_desc_format_shape(la->desc, want, sizeof(want));
        r = -EINVAL;
        snprintf(err, sizeof(err), "layer '%s' has shape %s, asked for %s", la->name, have,
                 want);
    }
    if (r == 0 && l->creating) {
        attach_waiter *w = calloc(1, sizeof(*w));
        if (w) {
            w->s = s;
            w->frame_id = f->id;
            llepd_session_ref(s);
            llepd_list_append(&l->attach_waiters, &w->link);
            return; /* answered by layer_created() */
        }
        r = -ENOMEM;
    }
    if (r == 0)
        r = add_layer_ref(s, l);
    if (r < 0 && !err[0])
        snprintf(err, sizeof(err), "%s", strerror(-r));
    if (r < 0) {
        LlepPb__LayerReply lr = LLEP_PB__LAYER_REPLY__INIT;
        lr.status = llep__status_from_errno(r);
        lr.message = err;
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_LAYER_ATTACH_REPLY, &lr);
        return;
    }
    send_layer_reply(s, f->id, LLEP_PB__FRAME__BODY_LAYER_ATTACH_REPLY, l, 0, "", false);
}

static void handle_layer_release(llepd_session *s, const LlepPb__Frame *f) {
    LlepPb__LayerReleaseReply rr = LLEP_PB__LAYER_RELEASE_REPLY__INIT;
    char err[MSG_MAX] = "";
    uint32_t id = f->layer_release->layer_id;
    uint32_t i = 0;

    while (i < s->nlayers && s->layers[i] != id)
        i++;
    if (i == s->nlayers) {
        rr.status = LLEP_PB__STATUS__STATUS_NOT_FOUND;
        snprintf(err, sizeof(err), "this client holds no layer with id %u", id);
    } else {
        s->layers[i] = s->layers[--s->nlayers];
        llepd_layer *l = llepd_layer_by_id(s->srv, id);
        if (l)
            llepd_layer_unref(l);
    }
    rr.message = err;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_LAYER_RELEASE_REPLY, &rr);
}

/* ---- inspection (llepctl) ---------------------------------------------------------------- */

static void handle_status(llepd_session *s, const LlepPb__Frame *f) {
    LlepPb__StatusReply sr = LLEP_PB__STATUS_REPLY__INIT;
    llepd_server *srv = s->srv;

    sr.message = (char *)"";
    sr.daemon_version = (char *)LLEP_VERSION;
    sr.protocol_version = LLEP_PB__PROTOCOL_VERSION__PROTOCOL_VERSION;
    sr.uptime_us = (llepd_now_ns() - srv->start_ns) / 1000;
    sr.backend = (LlepPb__Backend)srv->backend;
    sr.devices = srv->devices;
    for (llepd_list *i = srv->sessions.next; i != &srv->sessions; i = i->next)
        sr.clients += llepd_container_of(i, llepd_session, link)->kind ==
                      LLEP_PB__PEER_KIND__PEER_KIND_CLIENT;
    for (uint32_t i = 0; i < srv->nlayers; i++)
        sr.layers += !srv->layers[i]->dead;
    sr.draining = srv->draining;
    sr.pid = (uint32_t)getpid();
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_STATUS_REPLY, &sr);
}

static const handler handlers[] = {
    { LLEP_PB__FRAME__BODY_ARENA_SETUP, handle_arena_setup, CLIENT },
    { LLEP_PB__FRAME__BODY_LAYER_CREATE, handle_layer_create, CLIENT },
    { LLEP_PB__FRAME__BODY_LAYER_ATTACH, handle_layer_attach, CLIENT },
    { LLEP_PB__FRAME__BODY_LAYER_RELEASE, handle_layer_release, CLIENT },
    { LLEP_PB__FRAME__BODY_SPACE_REGISTER, llepd_handle_space_register, CLIENT },
    { LLEP_PB__FRAME__BODY_SPACE_RELEASE, llepd_handle_space_release, CLIENT },
    { LLEP_PB__FRAME__BODY_STATUS, handle_status, ANY },
    { LLEP_PB__FRAME__BODY_DEVICES, llepd_handle_devices, ANY },
    { LLEP_PB__FRAME__BODY_LAYERS, llepd_handle_layers, ANY },
    { LLEP_PB__FRAME__BODY_EXPERTS, llepd_handle_experts, ANY },
    { LLEP_PB__FRAME__BODY_PLAN, llepd_handle_plan, ANY },
    { LLEP_PB__FRAME__BODY_STATS, llepd_handle_stats, ANY },
    { LLEP_PB__FRAME__BODY_SET, llepd_handle_set, ADMIN },
    { LLEP_PB__FRAME__BODY_DRAIN, llepd_handle_drain, ADMIN },
    { LLEP_PB__FRAME__BODY_PEERS, llepd_handle_peers, ANY },
    { LLEP_PB__FRAME__BODY_MODEL_LOAD, llepd_handle_model_load, ADMIN },
    { LLEP_PB__FRAME__BODY_MODEL_UNLOAD, llepd_handle_model_unload, ADMIN },
    { LLEP_PB__FRAME__BODY_MODELS, llepd_handle_models, ANY },
    /* --show for anyone; a new measurement checks for admin itself. */
    { LLEP_PB__FRAME__BODY_TUNE, llepd_handle_tune, ANY },
};

static void handle_frame(llepd_session *s, const LlepPb__Frame *f) {
    char err[MSG_MAX];

    if (s->state == SESSION_HELLO || f->body_case == LLEP_PB__FRAME__BODY_HELLO) {
        handle_hello(s, f);
        return;
    }
    for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++) {
        const handler *h = &handlers[i];
        if (h->body != f->body_case)
            continue;
        if ((h->who & CLIENT) && s->kind != LLEP_PB__PEER_KIND__PEER_KIND_CLIENT) {
            snprintf(err, sizeof(err), "%s is for clients; this connection said it is llepctl",
                     llep__frame_body_name(f->body_case));
            llepd_session_reply_error(s, f->id, -EPROTO, err);
            return;
        }
        if ((h->who & ADMIN) && !s->admin) {
            snprintf(err, sizeof(err), "%s needs root or membership of group llep (uid %u)",
                     llep__frame_body_name(f->body_case), (unsigned)s->cred.uid);
            llepd_session_reply_error(s, f->id, -EPERM, err);
            return;
        }
        h->fn(s, f);
        return;
    }
    snprintf(err, sizeof(err), "%s is not a request llepd serves",
             llep__frame_body_name(f->body_case));
    llepd_session_reply_error(s, f->id, -EPROTO, err);
}

void llepd_handlers_init(llepd_server *srv) {
    srv->hooks.frame = handle_frame;
    srv->hooks.layer_created = layer_created;
}
