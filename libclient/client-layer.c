/* Layers: create (weights through the arena, kept on request), attach by name, release. */
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

/* The bytes of the six tensors of pd's shape in llep's layout. */
static void weight_bytes(const LlepPb__LayerDesc *pd, uint64_t bytes[LLEP_WEIGHT_COUNT]) {
    llep_layer_bytes b;

    llep__layer_bytes_of(pd, &b);
    bytes[LLEP_W_GATE] = b.w_gate;
    bytes[LLEP_W_UP] = b.w_up;
    bytes[LLEP_W_DOWN] = b.w_down;
    bytes[LLEP_B_GATE] = b.b_gate;
    bytes[LLEP_B_UP] = b.b_up;
    bytes[LLEP_B_DOWN] = b.b_down;
}

/* The tensor space the present tensors take one after another, each aligned. */
static uint64_t weights_total(const bool present[LLEP_WEIGHT_COUNT],
                              const uint64_t bytes[LLEP_WEIGHT_COUNT]) {
    uint64_t total = 0;

    for (int i = 0; i < LLEP_WEIGHT_COUNT; i++)
        if (present[i])
            total += llep__align_up(bytes[i], LLEP_CLIENT_ALIGN);
    return total;
}

/* Sends LayerCreate for the present tensors laid out from block on (as weights_total()
 * counts), then frees the block. */
static int send_create(llep_client *c, const char *name, LlepPb__LayerDesc *pd, uint64_t block,
                       const bool present[LLEP_WEIGHT_COUNT], LlepPb__Frame **ret) {
    LlepPb__LayerCreate lc = LLEP_PB__LAYER_CREATE__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    LlepPb__TensorRef ref[LLEP_WEIGHT_COUNT];
    LlepPb__TensorRef **refs[LLEP_WEIGHT_COUNT] = { &lc.w_gate, &lc.w_up, &lc.w_down,
                                                  &lc.b_gate, &lc.b_up, &lc.b_down };
    uint64_t bytes[LLEP_WEIGHT_COUNT], total, off = block;
    int r;

    weight_bytes(pd, bytes);
    total = weights_total(present, bytes);
    for (int i = 0; i < LLEP_WEIGHT_COUNT; i++) {
        if (!present[i])
            continue;
        ref[i] = (LlepPb__TensorRef)LLEP_PB__TENSOR_REF__INIT;
        ref[i].offset = off;
        ref[i].bytes = bytes[i];
        *refs[i] = &ref[i];
        off += llep__align_up(bytes[i], LLEP_CLIENT_ALIGN);
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

/* Copies the weights into the arena, into llep's layout (and, with ret_kept, into a copy the
 * library keeps), and sends LayerCreate. */
static int create_layer(llep_client *c, const char *name, const llep_layer_desc *d,
                        LlepPb__LayerDesc *pd, llep_kept_weights **ret_kept,
                        LlepPb__Frame **ret) {
    llep_weight_src src[LLEP_WEIGHT_COUNT];
    uint64_t bytes[LLEP_WEIGHT_COUNT], total, block, off;
    bool present[LLEP_WEIGHT_COUNT];
    int r;

    weight_bytes(pd, bytes);
    llep__weight_sources(d, src);
    for (int i = 0; i < LLEP_WEIGHT_COUNT; i++)
        present[i] = src[i].src != NULL;
    total = weights_total(present, bytes);
    r = llep__arena_reserve(c, total, false, &block);
    if (r < 0)
        return r;
    off = block;
    for (int i = 0; i < LLEP_WEIGHT_COUNT; i++) {
        if (!present[i])
            continue;
        llep__weight_copy(llep__arena_ptr(&c->arena, off), d->dtype, d->num_experts, &src[i]);
        off += llep__align_up(bytes[i], LLEP_CLIENT_ALIGN);
    }
    if (ret_kept && !(*ret_kept = llep__kept_new(c, d, present, block, total))) {
        llep__arena_release(c, block);
        return llep__client_fail(c, -ENOMEM, "layer '%s': out of memory for the copy of its "
                                 "weights (LLEP_LAYER_KEEP_WEIGHTS)", name);
    }
    r = send_create(c, name, pd, block, present, ret);
    if (r < 0 && ret_kept) {
        llep__kept_free(*ret_kept);
        *ret_kept = NULL;
    }
    return r;
}

static int create_kept(llep_client *c, const char *name, LlepPb__LayerDesc *pd,
                       const llep_kept_weights *kept, LlepPb__Frame **ret) {
    uint64_t block;
    int r = llep__arena_reserve(c, kept->total, false, &block);

    if (r < 0)
        return r;
    memcpy(llep__arena_ptr(&c->arena, block), kept->bytes, kept->total);
    return send_create(c, name, pd, block, kept->present, ret);
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

static const char *gate_up_name(enum llep_gate_up_layout g) {
    static const char *const names[] = { "SEPARATE", "SEPARATE_T", "FUSED", "FUSED_T",
                                         "INTERLEAVED" };

    return names[g];
}

/* Checks the weight pointers against the desc's layouts: all the layouts take to create the
 * layer (*ret_create true), or none to attach to it. Returns 0 or -EINVAL. */
static int check_weights(llep_client *c, const char *name, const llep_layer_desc *d,
                         bool *ret_create) {
    bool fused = llep__gate_up_fused(d->gate_up_layout);
    const void *gate_up = fused ? d->w_gate_up : d->w_gate;
    int nweights;

    if ((unsigned)d->gate_up_layout > LLEP_GATE_UP_INTERLEAVED)
        return llep__client_fail(c, -EINVAL, "layer '%s': gate_up_layout %d is not an "
                                 "llep_gate_up_layout", name, (int)d->gate_up_layout);
    if ((unsigned)d->down_layout > LLEP_DOWN_DH)
        return llep__client_fail(c, -EINVAL, "layer '%s': down_layout %d is not an "
                                 "llep_down_layout", name, (int)d->down_layout);
    if (fused && (d->w_gate || d->w_up || d->b_gate || d->b_up))
        return llep__client_fail(c, -EINVAL, "layer '%s': gate_up_layout %s takes w_gate_up "
                                 "and b_gate_up, not w_gate, w_up, b_gate or b_up", name,
                                 gate_up_name(d->gate_up_layout));
    if (!fused && (d->w_gate_up || d->b_gate_up))
        return llep__client_fail(c, -EINVAL, "layer '%s': w_gate_up and b_gate_up need a "
                                 "FUSED, FUSED_T or INTERLEAVED gate_up_layout, not %s", name,
                                 gate_up_name(d->gate_up_layout));
    nweights = fused ? !!d->w_gate_up + !!d->w_down : !!d->w_gate + !!d->w_up + !!d->w_down;
    if (nweights != 0 && nweights != (fused ? 2 : 3))
        return llep__client_fail(c, -EINVAL, "layer '%s': give %s to create it, or none of "
                                 "them to attach to it", name,
                                 fused ? "w_gate_up and w_down" : "w_gate, w_up and w_down");
    if (nweights == 0 &&
        (d->b_gate || d->b_up || d->b_down || d->b_gate_up))
        return llep__client_fail(c, -EINVAL, "layer '%s': biases given without weights",
                                 name);
    *ret_create = gate_up != NULL;
    return 0;
}

/* Checks what the caller gave before anything is sent. */
static int check_create_args(llep_client *c, const char *name, const llep_layer_desc *d,
                             LlepPb__LayerDesc *pd, bool *ret_create) {
    char err[LLEP_CLIENT_ERROR_MAX];
    int r;

    if (!name)
        return llep__client_fail(c, -EINVAL, "llep_layer_create: name is NULL");
    if (llep__frame_check_name(name, err, sizeof(err)) < 0)
        return llep__client_fail(c, -EINVAL, "bad layer name: %s", err);
    if (!d) {
        *ret_create = false;
        return 0;
    }
    if ((r = check_weights(c, name, d, ret_create)) < 0)
        return r;
    desc_to_proto(d, pd);
    if (llep__layer_desc_check(pd, err, sizeof(err)) < 0)
        return llep__client_fail(c, -EINVAL, "layer '%s': %s", name, err);
    return 0;
}

/* Takes the layer's id and desc from a create or attach reply, checked. */
static int take_reply(llep_client *c, llep_layer *l, const LlepPb__Frame *reply, bool create) {
    const LlepPb__LayerReply *lr = create ? reply->layer_create_reply
                                          : reply->layer_attach_reply;
    char err[LLEP_CLIENT_ERROR_MAX];

    if (!lr->desc || llep__layer_desc_check(lr->desc, err, sizeof(err)) < 0)
        return llep__client_fail(c, -EPROTO, "llepd described layer '%s' badly: %s", l->name,
                                 lr->desc ? err : "no description");
    l->id = lr->layer_id;
    llep__desc_from_proto(lr->desc, &l->desc);
    l->elem_size = l->desc.dtype == LLEP_DTYPE_BF16 ? 2 : 4;
    l->gen = c->gen;
    return 0;
}

/* ---- after a reconnect (include/llep/client.h, "reconnecting") ---------------------------- */

/* The shape attach checks: N, K, D, H, dtype and activation. */
static bool same_shape(const llep_layer_desc *a, const llep_layer_desc *b) {
    return a->num_experts == b->num_experts && a->top_k == b->top_k &&
           a->hidden == b->hidden && a->inter == b->inter && a->dtype == b->dtype &&
           a->act == b->act;
}

/* One try: created again from the kept weights (attached when another client was first), or
 * attached, shape checked. */
static int restore_once(llep_client *c, llep_layer *l) {
    LlepPb__LayerDesc pd = LLEP_PB__LAYER_DESC__INIT;
    LlepPb__Frame *reply = NULL;
    llep_layer_desc was = l->desc;
    bool create = l->kept != NULL;
    int r;

    if (create) {
        desc_to_proto(&l->kept->desc, &pd);
        r = create_kept(c, l->name, &pd, l->kept, &reply);
        if (r == -EEXIST)
            create = false;
    }
    if (!create) {
        desc_to_proto(&was, &pd);
        r = attach_layer(c, l->name, &pd, &reply);
    }
    if (r == 0)
        r = take_reply(c, l, reply, create);
    llep__frame_free(reply);
    if (r == 0 && !same_shape(&was, &l->desc)) {
        l->desc = was;
        l->gen = 0;
        r = llep__client_fail(c, -EPROTO, "layer '%s' came back from llepd with another shape",
                              l->name);
    }
    return r;
}

int llep__layer_restore(llep_layer *l) {
    llep_client *c = l->client;
    int r;

    if (l->gen == c->gen)
        return 0;
    if (l->created && !l->kept)
        return llep__client_fail(c, -ENOENT, "layer '%s' was lost when llepd restarted: this "
                                 "client created it without LLEP_LAYER_KEEP_WEIGHTS, so its "
                                 "weights are gone; release the handle and create it again",
                                 l->name);
    llep__client_sleep_until(c, l->retry.next_ms);
    /* The connection may have been lost, or restored this layer, while the lock was down. */
    if ((r = llep__client_ready(c)) < 0)
        return r;
    if (l->gen == c->gen)
        return 0;
    r = restore_once(c, l);
    if (r == 0)
        llep__retry_reset(&l->retry);
    else if (!c->dead)
        llep__retry_failed(&l->retry);
    return r;
}

int llep__client_usable(llep_client *c) {
    int r = llep__client_ready(c);

    if (r < 0 || c->restored_gen == c->gen)
        return r;
    /* Every layer at once after a reconnect, so llepd holds their references again (and a
     * re-created layer is there for the clients that attach to it); one that fails is tried
     * again when it is used. */
    c->restored_gen = c->gen;
    for (llep_layer *l = c->layers; l && !c->dead; l = l->next)
        if (!l->created || l->kept)
            llep__layer_restore(l);
    if (c->space_restore && !c->dead)
        c->space_restore(c); /* the device space (client-space.c), registered again */
    return c->dead ? llep__client_ready(c) : 0;
}

static int layer_create(llep_client *c, const char *name, const llep_layer_desc *d,
                        unsigned flags, llep_layer **ret) {
    LlepPb__LayerDesc pd = LLEP_PB__LAYER_DESC__INIT;
    LlepPb__Frame *reply = NULL;
    llep_kept_weights *kept = NULL;
    bool keep = flags & LLEP_LAYER_KEEP_WEIGHTS, create = false;
    llep_layer *l = NULL;
    int r;

    if (!ret)
        return llep__client_fail(c, -EINVAL, "llep_layer_create: ret is NULL");
    if (flags & ~(unsigned)LLEP_LAYER_KEEP_WEIGHTS)
        return llep__client_fail(c, -EINVAL, "llep_layer_create_ex: unknown flags 0x%x",
                                 flags & ~(unsigned)LLEP_LAYER_KEEP_WEIGHTS);
    if ((r = check_create_args(c, name, d, &pd, &create)) < 0)
        return r;
    if (keep && !create)
        return llep__client_fail(c, -EINVAL, "layer '%s': LLEP_LAYER_KEEP_WEIGHTS without "
                                 "weights (attaching keeps nothing)", name);
    if ((r = llep__client_usable(c)) < 0)
        return r;
    if (create)
        r = create_layer(c, name, d, &pd, keep ? &kept : NULL, &reply);
    else
        r = attach_layer(c, name, d ? &pd : NULL, &reply);
    if (r < 0)
        return r;
    l = calloc(1, sizeof(*l));
    if (!l || !(l->name = strdup(name))) {
        free(l);
        r = llep__client_fail(c, -ENOMEM, "out of memory");
        goto out;
    }
    l->client = c;
    if ((r = take_reply(c, l, reply, create)) < 0) {
        free(l->name);
        free(l);
        goto out;
    }
    l->created = create;
    l->kept = kept;
    kept = NULL;
    l->next = c->layers;
    if (c->layers)
        c->layers->prev = l;
    c->layers = l;
    *ret = l;
out:
    llep__kept_free(kept);
    llep__frame_free(reply);
    return r;
}

LLEP_EXTERN int llep_layer_create_ex(llep_client *c, const char *name,
                                     const llep_layer_desc *d, unsigned flags,
                                     llep_layer **ret) {
    int r;

    if (ret)
        *ret = NULL;
    if (!c)
        return -EINVAL;
    pthread_mutex_lock(&c->lock);
    r = layer_create(c, name, d, flags, ret);
    pthread_mutex_unlock(&c->lock);
    return r;
}

LLEP_EXTERN int llep_layer_create(llep_client *c, const char *name, const llep_layer_desc *d,
                                  llep_layer **ret) {
    return llep_layer_create_ex(c, name, d, 0, ret);
}

LLEP_EXTERN void llep_layer_release(llep_layer *l) {
    LlepPb__LayerRelease rel = LLEP_PB__LAYER_RELEASE__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT, *reply = NULL;
    llep_client *c;

    if (!l)
        return;
    c = l->client;
    pthread_mutex_lock(&c->lock);
    /* A layer not restored on this connection has no reference in llepd to drop. */
    if (!c->dead && l->gen == c->gen) {
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
    llep__kept_free(l->kept);
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
