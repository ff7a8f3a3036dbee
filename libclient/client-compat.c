/* The calls of earlier library versions whose structs have grown since: programs linked
 * against them pass or receive the smaller struct, so these entry points (bound by symbol
 * version, libllep-client.sym) copy between it and today's.
 *
 * llep_layer_desc grew the layout fields in 0.3.0 (LLEP_CLIENT_0.2); llep_model_info holds a
 * desc, so its later fields moved. */
#include "client-internal.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

/* The bytes of llep_layer_desc up to and with group_timeout_ms, its last field before 0.3.0:
 * the prefix every earlier program's desc has (the padding after it is not theirs to read). */
#define DESC_0_BYTES (offsetof(llep_layer_desc, group_timeout_ms) + sizeof(uint32_t))

/* llep_layer_desc and llep_model_info as LLEP_CLIENT_0 and LLEP_CLIENT_0.1 laid them out. */
typedef struct desc_0 {
    unsigned char bytes[DESC_0_BYTES];
} __attribute__((aligned(8))) desc_0;

typedef struct model_info_0 {
    uint32_t num_layers;
    desc_0 desc;
    int bias;
    char model_type[32];
} model_info_0;

_Static_assert(sizeof(desc_0) == 112, "the desc of 0.1.0 and 0.2.0 is 112 bytes on LP64");
_Static_assert(offsetof(llep_layer_desc, gate_up_layout) == DESC_0_BYTES,
               "new desc fields come after group_timeout_ms");
_Static_assert(offsetof(model_info_0, bias) == 120 && sizeof(model_info_0) == 160,
               "llep_model_info of 0.2.0");

/* Old descs to today's: the prefix, the new fields zero (llep's own layouts). */
static const llep_layer_desc *desc_from_0(const void *old, llep_layer_desc *d) {
    if (!old)
        return NULL;
    memset(d, 0, sizeof(*d));
    memcpy(d, old, DESC_0_BYTES);
    return d;
}

LLEP_EXTERN __attribute__((symver("llep_layer_create@LLEP_CLIENT_0")))
int llep__layer_create_0(llep_client *c, const char *name, const void *d, llep_layer **ret);

LLEP_EXTERN int llep__layer_create_0(llep_client *c, const char *name, const void *d,
                                     llep_layer **ret) {
    llep_layer_desc nd;

    return llep_layer_create(c, name, desc_from_0(d, &nd), ret);
}

LLEP_EXTERN __attribute__((symver("llep_layer_get_desc@LLEP_CLIENT_0")))
int llep__layer_get_desc_0(const llep_layer *l, void *ret);

LLEP_EXTERN int llep__layer_get_desc_0(const llep_layer *l, void *ret) {
    llep_layer_desc d;
    int r = llep_layer_get_desc(l, ret ? &d : NULL);

    if (r == 0)
        memcpy(ret, &d, DESC_0_BYTES);
    return r;
}

LLEP_EXTERN __attribute__((symver("llep_model_get@LLEP_CLIENT_0.1")))
int llep__model_get_0(llep_client *c, const char *name, void *ret);

LLEP_EXTERN int llep__model_get_0(llep_client *c, const char *name, void *ret) {
    llep_model_info mi;
    model_info_0 old;
    int r = llep_model_get(c, name, ret ? &mi : NULL);

    if (r == 0) {
        memset(&old, 0, sizeof(old));
        old.num_layers = mi.num_layers;
        memcpy(&old.desc, &mi.desc, DESC_0_BYTES);
        old.bias = mi.bias;
        memcpy(old.model_type, mi.model_type, sizeof(old.model_type));
        memcpy(ret, &old, sizeof(old));
    }
    return r;
}
