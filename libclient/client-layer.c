/* Layers: create (weights through the arena), attach by name, release. */
#include "client-internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "validate.h"

/* Weight uploads at least this large give their pages back once the daemon has copied them,
 * so a big layer does not leave the arena's memory resident. */
#define RELEASE_PAGES_MIN (4u << 20)

static void desc_to_proto(const llep_layer_desc *d, LlepPb__LayerDesc *p) {
    p->num_experts = d->num_experts;
    p->top_k = d->top_k;
    p->hidden = d->hidden;
    p->inter = d->inter;
    p->dtype = (LlepPb__DType)d->dtype;
    p->act = (LlepPb__Activation)d->act;
    p->act_alpha = d->act_alpha;
    p->act_limit = d->act_limit;
    p->policy = (LlepPb__Policy)d->policy;
    p->alpha = d->alpha;
    p->lambda = d->lambda;
    p->min_tokens = d->min_tokens;
    p->group = d->group;
    p->scope = (LlepPb__Scope)d->scope;
    p->group_timeout_ms = d->group_timeout_ms;
}

void llep__desc_from_proto(const LlepPb__LayerDesc *p, llep_layer_desc *d) {
    memset(d, 0, sizeof(*d));
    d->num_experts = p->num_experts;
    d->top_k = p->top_k;
    d->hidden = p->hidden;
    d->inter = p->inter;
    d->dtype = (enum llep_dtype)p->dtype;
    d->act = (enum llep_act)p->act;
    d->act_alpha = p->act_alpha;
    d->act_limit = p->act_limit;
    d->policy = (enum llep_policy)p->policy;
    d->alpha = p->alpha;
    d->lambda = p->lambda;
    d->min_tokens = p->min_tokens;
    d->group = p->group;
    d->scope = (enum llep_scope)p->scope;
    d->group_timeout_ms = p->group_timeout_ms;
}

/* One tensor of a LayerCreate: where it goes in the upload block and where it comes from. */
typedef struct upload {
    const void *src;
    uint64_t bytes;
    LlepPb__TensorRef ref;
} upload;

/* Copies the weights into the arena and sends LayerCreate. */
static int create_layer(llep_client *c, const char *name, const llep_layer_desc *d,
                        LlepPb__LayerDesc *pd, LlepPb__Frame **ret) {
    LlepPb__LayerCreate lc = LLEP_PB__LAYER_CREATE__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    llep_layer_bytes b;
    upload u[6] = {
        { d->w_gate, 0, LLEP_PB__TENSOR_REF__INIT }, { d->w_up, 0, LLEP_PB__TENSOR_REF__INIT },
        { d->w_down, 0, LLEP_PB__TENSOR_REF__INIT }, { d->b_gate, 0, LLEP_PB__TENSOR_REF__INIT },
        { d->b_up, 0, LLEP_PB__TENSOR_REF__INIT }, { d->b_down, 0, LLEP_PB__TENSOR_REF__INIT },
    };
    LlepPb__TensorRef **refs[6] = { &lc.w_gate, &lc.w_up, &lc.w_down,
                                  &lc.b_gate, &lc.b_up, &lc.b_down };
    uint64_t total = 0, block, off;
    int r;

    llep__layer_bytes_of(pd, &b);
    u[0].bytes = b.w_gate;
    u[1].bytes = b.w_up;
    u[2].bytes = b.w_down;
    u[3].bytes = b.b_gate;
    u[4].bytes = b.b_up;
    u[5].bytes = b.b_down;
    for (int i = 0; i < 6; i++)
        if (u[i].src)
            total += llep__align_up(u[i].bytes, LLEP_CLIENT_ALIGN);
    r = llep__arena_reserve(c, total, false, &block);
    if (r < 0)
        return r;
    off = block;
    for (int i = 0; i < 6; i++) {
        if (!u[i].src)
            continue;
        memcpy(llep__arena_ptr(&c->arena, off), u[i].src, u[i].bytes);
        u[i].ref.offset = off;
        u[i].ref.bytes = u[i].bytes;
        *refs[i] = &u[i].ref;
        off += llep__align_up(u[i].bytes, LLEP_CLIENT_ALIGN);
    }
    lc.name = (char *)name;
    lc.desc = pd;
    req.body_case = LLEP_PB__FRAME__BODY_LAYER_CREATE;
    req.layer_create = &lc;
    r = llep__client_request(c, &req, LLEP_PB__FRAME__BODY_LAYER_CREATE_REPLY, ret);
    /* The daemon has copied the weights (or refused them): the space is free again. */
    if (c->have_arena && total >= RELEASE_PAGES_MIN) {
        uint64_t start = llep__align_up(block, 4096), end = (block + total) / 4096 * 4096;

        if (end > start)
            madvise(llep__arena_ptr(&c->arena, start), end - start, MADV_REMOVE);
    }
    llep__arena_release(c, block);
    return r;
}

static int attach_layer(llep_client *c, const char *name, LlepPb__LayerDesc *pd,
                        LlepPb__Frame **ret) {
    LlepPb__LayerAttach la = LLEP_PB__LAYER_ATTACH__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;

    la.name = (char *)name;
    la.desc = pd;
    req.body_case = LLEP_PB__FRAME__BODY_LAYER_ATTACH;
    req.layer_attach = &la;
    return llep__client_request(c, &req, LLEP_PB__FRAME__BODY_LAYER_ATTACH_REPLY, ret);
}

/* Checks what the caller gave before anything is sent. */
static int check_create_args(llep_client *c, const char *name, const llep_layer_desc *d,
                             LlepPb__LayerDesc *pd, bool *ret_create) {
    char err[LLEP_CLIENT_ERROR_MAX];
    int nweights;

    if (!name)
        return llep__client_fail(c, -EINVAL, "llep_layer_create: name is NULL");
    if (llep__frame_check_name(name, err, sizeof(err)) < 0)
        return llep__client_fail(c, -EINVAL, "bad layer name: %s", err);
    if (!d) {
        *ret_create = false;
        return 0;
    }
    nweights = !!d->w_gate + !!d->w_up + !!d->w_down;
    if (nweights != 0 && nweights != 3)
        return llep__client_fail(c, -EINVAL, "layer '%s': give w_gate, w_up and w_down to "
                                 "create it, or none of them to attach to it", name);
    if (nweights == 0 && (d->b_gate || d->b_up || d->b_down))
        return llep__client_fail(c, -EINVAL, "layer '%s': biases given without weights",
                                 name);
    desc_to_proto(d, pd);
    if (llep__layer_desc_check(pd, err, sizeof(err)) < 0)
        return llep__client_fail(c, -EINVAL, "layer '%s': %s", name, err);
    *ret_create = nweights == 3;
    return 0;
}

LLEP_EXTERN int llep_layer_create(llep_client *c, const char *name, const llep_layer_desc *d,
                                  llep_layer **ret) {
    LlepPb__LayerDesc pd = LLEP_PB__LAYER_DESC__INIT;
    LlepPb__Frame *reply = NULL;
    char err[LLEP_CLIENT_ERROR_MAX];
    const LlepPb__LayerReply *lr;
    llep_layer *l = NULL;
    bool create = false;
    int r;

    if (ret)
        *ret = NULL;
    if (!c)
        return -EINVAL;
    pthread_mutex_lock(&c->lock);
    if (!ret) {
        r = llep__client_fail(c, -EINVAL, "llep_layer_create: ret is NULL");
        goto out;
    }
    r = check_create_args(c, name, d, &pd, &create);
    if (r < 0)
        goto out;
    if (create)
        r = create_layer(c, name, d, &pd, &reply);
    else
        r = attach_layer(c, name, d ? &pd : NULL, &reply);
    if (r < 0)
        goto out;

    lr = create ? reply->layer_create_reply : reply->layer_attach_reply;
    if (!lr->desc || llep__layer_desc_check(lr->desc, err, sizeof(err)) < 0) {
        r = llep__client_fail(c, -EPROTO, "llepd described layer '%s' badly: %s", name,
                              lr->desc ? err : "no description");
        goto out;
    }
    l = calloc(1, sizeof(*l));
    if (!l || !(l->name = strdup(name))) {
        free(l);
        r = llep__client_fail(c, -ENOMEM, "out of memory");
        goto out;
    }
    l->client = c;
    l->id = lr->layer_id;
    llep__desc_from_proto(lr->desc, &l->desc);
    l->elem_size = l->desc.dtype == LLEP_DTYPE_BF16 ? 2 : 4;
    l->next = c->layers;
    if (c->layers)
        c->layers->prev = l;
    c->layers = l;
    *ret = l;
out:
    llep__frame_free(reply);
    pthread_mutex_unlock(&c->lock);
    return r;
}

LLEP_EXTERN void llep_layer_release(llep_layer *l) {
    LlepPb__LayerRelease rel = LLEP_PB__LAYER_RELEASE__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
    llep_client *c;

    if (!l)
        return;
    c = l->client;
    pthread_mutex_lock(&c->lock);
    if (!c->dead) {
        rel.layer_id = l->id;
        req.body_case = LLEP_PB__FRAME__BODY_LAYER_RELEASE;
        req.layer_release = &rel;
        /* Nothing to tell the caller if this fails: the reference goes with the connection
         * at the latest. */
        if (llep__client_request(c, &req, LLEP_PB__FRAME__BODY_LAYER_RELEASE_REPLY, &reply) == 0)
            llep__frame_free(reply);
    }
    if (l->prev)
        l->prev->next = l->next;
    else
        c->layers = l->next;
    if (l->next)
        l->next->prev = l->prev;
    pthread_mutex_unlock(&c->lock);
    free(l->name);
    free(l);
}

LLEP_EXTERN int llep_layer_get_desc(const llep_layer *l, llep_layer_desc *ret) {
    if (!l || !ret)
        return -EINVAL;
    *ret = l->desc;
    return 0;
}

LLEP_EXTERN llep_client *llep_layer_client(const llep_layer *l) {
    return l ? l->client : NULL;
}
