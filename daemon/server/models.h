/* Models: named, ordered sets of MoE layers that llepd loads itself from a checkpoint directory
 * (daemon/model/ reads it). MoE layer i of model NAME is the ordinary layer "NAME/i": clients
 * attach to it by that name, and everything else (steps, llepctl layers, stats) treats it as
 * any layer. The model holds one reference to each of its layers, so they live until the
 * model is unloaded; unloading is refused while clients hold any of them.
 *
 * A load runs on the thread pool in two parts: reading the checkpoint's config and tensor
 * index, then converting each layer's experts and copying them to the devices (the engines).
 * Attaches to a layer still loading wait for it, as attaches to a layer being created do. */
#ifndef LLEPD_MODELS_H
#define LLEPD_MODELS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "frame.h"
#include "list.h"
#include "server.h"

enum llepd_model_state { LLEPD_MODEL_LOADING, LLEPD_MODEL_READY };

typedef struct llepd_model llepd_model;

/* A load finished: status 0, or a negative errno with msg saying why (the model is gone
 * then). Called on the loop thread. */
typedef void (*llepd_model_done_cb)(llepd_model *m, int status, const char *msg, void *data);

struct llepd_model {
    llepd_server *srv;
    llepd_list link;                  /* in srv->models */
    char name[LLEP_MODEL_NAME_MAX + 1];
    char *path;
    char model_type[32];
    enum llepd_model_state state;
    LlepPb__LayerDesc desc;           /* the shape all its layers share */
    bool bias;
    uint32_t nlayers;
    struct llepd_layer **layers;      /* [nlayers], NULL until the checkpoint has been read */
    uint32_t *source_layers;          /* [nlayers] transformer layer index of each */
    uint64_t weight_bytes;            /* every layer, one copy */
    uint64_t start_ns, load_ns;
    _Atomic uint32_t layers_loaded;   /* set by the load on the pool, read for progress */

    llepd_model_done_cb done;         /* while loading */
    void *done_data;
};

/* Starts loading the checkpoint at path (absolute) as model name; done is called when every
 * layer is ready or the load failed. Returns 0, or -EINVAL / -EEXIST / -ESHUTDOWN / -ENOMEM
 * with the reason in err (done is then not called). */
int llepd_model_load(llepd_server *srv, const char *name, const char *path,
                     llepd_model_done_cb done, void *data, char *err, size_t errlen);

/* Unloads a ready model: its layers go once no step runs on them. Returns 0, -ENOENT, or
 * -EBUSY (still loading, or clients hold its layers) with the reason in err. */
int llepd_model_unload(llepd_server *srv, const char *name, char *err, size_t errlen);

llepd_model *llepd_model_find(llepd_server *srv, const char *name);

/* The model whose layer names include layer_name ("NAME/..." of a loaded or loading model), or
 * NULL. */
llepd_model *llepd_model_of_layer(llepd_server *srv, const char *layer_name);

/* Client references to the model's layers (the model's own not counted). */
uint32_t llepd_model_refs(const llepd_model *m);

/* Fills info for `llepctl models`; its strings point into m, and what it allocates goes with
 * llepd_model_info_fini. Returns 0 or -ENOMEM. */
int llepd_model_info(const llepd_model *m, LlepPb__ModelInfo *info);
void llepd_model_info_fini(LlepPb__ModelInfo *info);

/* After the loop has ended: drops what is left (the layers go with llepd_layer_free_all). */
void llepd_models_fini(llepd_server *srv);

#endif
