/* Checks of decoded control messages (see validate.h). */
#include "validate.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "frame.h"

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* act_alpha, act_limit, alpha, lambda: 0 selects the default, otherwise finite and > 0. */
static bool param_ok(float v) {
    return v == 0 || (isfinite(v) && v > 0);
}

int llep__layer_desc_check(const LlepPb__LayerDesc *d, char *err, size_t errlen) {
    if (!d)
        return fail(err, errlen, "missing layer description");
    if (d->num_experts < 1 || d->num_experts > LLEP_LAYER_MAX_EXPERTS)
        return fail(err, errlen, "num_experts %" PRIu32 " is outside [1, %u]", d->num_experts,
                    LLEP_LAYER_MAX_EXPERTS);
    if (d->top_k < 1 || d->top_k > d->num_experts)
        return fail(err, errlen, "top_k %" PRIu32 " is outside [1, num_experts = %" PRIu32 "]",
                    d->top_k, d->num_experts);
    if (d->hidden < 1 || d->hidden > LLEP_LAYER_MAX_DIM)
        return fail(err, errlen, "hidden %" PRIu32 " is outside [1, %u]", d->hidden,
                    LLEP_LAYER_MAX_DIM);
    if (d->inter < 1 || d->inter > LLEP_LAYER_MAX_DIM)
        return fail(err, errlen, "inter %" PRIu32 " is outside [1, %u]", d->inter,
                    LLEP_LAYER_MAX_DIM);
    if (d->dtype != LLEP_PB__DTYPE__DTYPE_F32 && d->dtype != LLEP_PB__DTYPE__DTYPE_BF16)
        return fail(err, errlen, "unknown dtype %d", (int)d->dtype);
    if (d->act != LLEP_PB__ACTIVATION__ACT_SWIGLU && d->act != LLEP_PB__ACTIVATION__ACT_SWIGLU_OAI)
        return fail(err, errlen, "unknown activation %d", (int)d->act);
    if (d->policy != LLEP_PB__POLICY__POLICY_AUTO && d->policy != LLEP_PB__POLICY__POLICY_EP &&
        d->policy != LLEP_PB__POLICY__POLICY_LLEP)
        return fail(err, errlen, "unknown policy %d", (int)d->policy);
    if (d->scope != LLEP_PB__SCOPE__SCOPE_NODE && d->scope != LLEP_PB__SCOPE__SCOPE_CLUSTER)
        return fail(err, errlen, "unknown scope %d", (int)d->scope);
    if (!param_ok(d->act_alpha))
        return fail(err, errlen, "act_alpha %g must be 0 (default) or a finite number > 0",
                    (double)d->act_alpha);
    if (!param_ok(d->act_limit))
        return fail(err, errlen, "act_limit %g must be 0 (default) or a finite number > 0",
                    (double)d->act_limit);
    if (!param_ok(d->alpha))
        return fail(err, errlen, "alpha %g must be 0 (default) or a finite number > 0",
                    (double)d->alpha);
    if (!param_ok(d->lambda))
        return fail(err, errlen, "lambda %g must be 0 (default) or a finite number > 0",
                    (double)d->lambda);
    if (d->group > LLEP_LAYER_MAX_GROUP)
        return fail(err, errlen, "group %" PRIu32 " is larger than %u", d->group,
                    LLEP_LAYER_MAX_GROUP);
    return 0;
}

void llep__layer_bytes_of(const LlepPb__LayerDesc *d, llep_layer_bytes *ret) {
    /* With the limits of llep__layer_desc_check, N * D * H * 4 <= 2^16 * 2^20 * 2^20 * 4 =
     * 2^58: no product here can overflow. */
    uint64_t e = d->dtype == LLEP_PB__DTYPE__DTYPE_BF16 ? 2 : 4;
    uint64_t n = d->num_experts, dd = d->hidden, h = d->inter;

    ret->elem_size = (uint32_t)e;
    ret->w_gate = ret->w_up = ret->w_down = n * dd * h * e;
    ret->b_gate = ret->b_up = n * h * e;
    ret->b_down = n * dd * e;
}

static const char *dtype_name(LlepPb__DType t) {
    return t == LLEP_PB__DTYPE__DTYPE_BF16 ? "bf16" : t == LLEP_PB__DTYPE__DTYPE_F32 ? "f32" : "?";
}

void llep__layer_desc_format_shape(const LlepPb__LayerDesc *d, char *buf, size_t len) {
    if (!len)
        return;
    if (!d) {
        snprintf(buf, len, "(no shape)");
        return;
    }
    if (d->act == LLEP_PB__ACTIVATION__ACT_SWIGLU_OAI)
        snprintf(buf, len,
                 "N=%" PRIu32 " K=%" PRIu32 " D=%" PRIu32 " H=%" PRIu32 " %s swiglu_oai "
                 "(alpha %g, limit %g)", d->num_experts, d->top_k, d->hidden, d->inter,
                 dtype_name(d->dtype), d->act_alpha ? (double)d->act_alpha : 1.702,
                 d->act_limit ? (double)d->act_limit : 7.0);
    else
        snprintf(buf, len, "N=%" PRIu32 " K=%" PRIu32 " D=%" PRIu32 " H=%" PRIu32 " %s %s",
                 d->num_experts, d->top_k, d->hidden, d->inter, dtype_name(d->dtype),
                 d->act == LLEP_PB__ACTIVATION__ACT_SWIGLU ? "swiglu" : "?");
}

bool llep__layer_desc_same_shape(const LlepPb__LayerDesc *a, const LlepPb__LayerDesc *b) {
    if (!a || !b)
        return false;
    if (a->num_experts != b->num_experts || a->top_k != b->top_k || a->hidden != b->hidden ||
        a->inter != b->inter || a->dtype != b->dtype || a->act != b->act)
        return false;
    /* Only swiglu_oai has parameters; 0 stands for the default value. */
    if (a->act == LLEP_PB__ACTIVATION__ACT_SWIGLU_OAI) {
        float aa = a->act_alpha ? a->act_alpha : 1.702f, ba = b->act_alpha ? b->act_alpha : 1.702f;
        float al = a->act_limit ? a->act_limit : 7.0f, bl = b->act_limit ? b->act_limit : 7.0f;

        return aa == ba && al == bl;
    }
    return true;
}

/* One weight or bias of LayerCreate: present when required, exact size, aligned, inside the
 * tensor space. */
static int tensor_check(const char *name, const LlepPb__TensorRef *t, uint64_t bytes,
                        uint32_t align, bool required, const llep_arena *arena,
                        char *err, size_t errlen) {
    if (!t)
        return required ? fail(err, errlen, "%s is missing", name) : 0;
    if (t->bytes != bytes)
        return fail(err, errlen, "%s has %" PRIu64 " bytes, the shape needs %" PRIu64, name,
                    t->bytes, bytes);
    if (t->offset % align)
        return fail(err, errlen, "%s offset %" PRIu64 " is not aligned to %" PRIu32 " bytes",
                    name, t->offset, align);
    if (llep__arena_check_span(arena, t->offset, t->bytes) < 0)
        return fail(err, errlen, "%s [%" PRIu64 ", +%" PRIu64 ") is outside the tensor space "
                    "[%" PRIu64 ", %" PRIu64 ")", name, t->offset, t->bytes,
                    arena->geom.tensor_offset, arena->geom.arena_size);
    return 0;
}

int llep__layer_create_check(const LlepPb__LayerCreate *lc, const llep_arena *arena,
                             char *err, size_t errlen) {
    llep_layer_bytes b;
    int r;

    if (!lc)
        return fail(err, errlen, "missing layer_create");
    r = llep__frame_check_name(lc->name, err, errlen);
    if (r < 0)
        return r;
    r = llep__layer_desc_check(lc->desc, err, errlen);
    if (r < 0)
        return r;
    if (!arena || !arena->base)
        return fail(err, errlen, "no arena to read the weights from: send arena_setup first");
    llep__layer_bytes_of(lc->desc, &b);
    if ((r = tensor_check("w_gate", lc->w_gate, b.w_gate, b.elem_size, true, arena, err,
                          errlen)) < 0 ||
        (r = tensor_check("w_up", lc->w_up, b.w_up, b.elem_size, true, arena, err,
                          errlen)) < 0 ||
        (r = tensor_check("w_down", lc->w_down, b.w_down, b.elem_size, true, arena, err,
                          errlen)) < 0 ||
        (r = tensor_check("b_gate", lc->b_gate, b.b_gate, b.elem_size, false, arena, err,
                          errlen)) < 0 ||
        (r = tensor_check("b_up", lc->b_up, b.b_up, b.elem_size, false, arena, err,
                          errlen)) < 0 ||
        (r = tensor_check("b_down", lc->b_down, b.b_down, b.elem_size, false, arena, err,
                          errlen)) < 0)
        return r;
    return 0;
}

int llep__layer_attach_check(const LlepPb__LayerAttach *la, char *err, size_t errlen) {
    int r;

    if (!la)
        return fail(err, errlen, "missing layer_attach");
    r = llep__frame_check_name(la->name, err, errlen);
    if (r < 0)
        return r;
    return la->desc ? llep__layer_desc_check(la->desc, err, errlen) : 0;
}

int llep__arena_setup_check(const LlepPb__ArenaSetup *s, uint64_t max_tensor_bytes,
                            llep_arena_geom *ret, char *err, size_t errlen) {
    if (!s)
        return fail(err, errlen, "missing arena_setup");
    if (s->tensor_bytes > max_tensor_bytes) {
        if (err && errlen)
            snprintf(err, errlen, "arena of %" PRIu64 " tensor bytes is over this daemon's "
                     "limit of %" PRIu64, s->tensor_bytes, max_tensor_bytes);
        return -ENOMEM;
    }
    if (llep__arena_layout(s->tensor_bytes, s->sq_entries, s->cq_entries, ret) < 0)
        return fail(err, errlen, "ring sizes %" PRIu32 "/%" PRIu32 " must be 0 or powers of "
                    "two up to %u (or the arena is too large)", s->sq_entries, s->cq_entries,
                    LLEP_RING_MAX_ENTRIES);
    return 0;
}

void llep__arena_reply_set_geom(LlepPb__ArenaReply *r, const llep_arena_geom *g) {
    r->ring_version = LLEP_RING_VERSION;
    r->arena_size = g->arena_size;
    r->sq_offset = g->sq_offset;
    r->sq_entries = g->sq_entries;
    r->cq_offset = g->cq_offset;
    r->cq_entries = g->cq_entries;
    r->tensor_offset = g->tensor_offset;
    r->tensor_size = g->tensor_size;
}

void llep__arena_reply_get_geom(const LlepPb__ArenaReply *r, llep_arena_geom *ret) {
    *ret = (llep_arena_geom){
        .arena_size = r->arena_size,
        .sq_offset = r->sq_offset,
        .cq_offset = r->cq_offset,
        .tensor_offset = r->tensor_offset,
        .tensor_size = r->tensor_size,
        .sq_entries = r->sq_entries,
        .cq_entries = r->cq_entries,
    };
}
