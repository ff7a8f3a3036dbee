/* The host copy of a layer's weights that LLEP_LAYER_KEEP_WEIGHTS asks for (client-internal.h,
 * llep_kept_weights): taken from the arena as the weights went in, so re-creating the layer
 * after a reconnect only copies bytes back. Plain data, below everything that uses it. */
#include "client-internal.h"

#include <stdlib.h>
#include <string.h>

llep_kept_weights *llep__kept_new(const llep_client *c, const llep_layer_desc *d,
                                  const bool present[LLEP_WEIGHT_COUNT], uint64_t block,
                                  uint64_t total) {
    llep_kept_weights *k = calloc(1, sizeof(*k));

    if (!k || !(k->bytes = malloc(total ? total : 1))) {
        free(k);
        return NULL;
    }
    memcpy(k->bytes, llep__arena_ptr(&c->arena, block), total);
    memcpy(k->present, present, sizeof(k->present));
    k->total = total;
    /* The shape and policy as asked; the bytes are in llep's layout. */
    k->desc = *d;
    k->desc.w_gate = k->desc.w_up = k->desc.w_down = NULL;
    k->desc.b_gate = k->desc.b_up = k->desc.b_down = NULL;
    k->desc.w_gate_up = k->desc.b_gate_up = NULL;
    k->desc.gate_up_layout = LLEP_GATE_UP_SEPARATE;
    k->desc.down_layout = LLEP_DOWN_HD;
    return k;
}

void llep__kept_free(llep_kept_weights *k) {
    if (k)
        free(k->bytes);
    free(k);
}
