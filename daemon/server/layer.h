/* Layer registry and creation (layer.c); request handlers call these. */
#ifndef LLEPD_LAYER_H
#define LLEPD_LAYER_H

#include "server.h"

/* Registers a new layer in state "creating". NULL when out of memory. */
llepd_layer *llepd_layer_new(llepd_server *srv, const char *name, const Llep__LayerDesc *d);

/* Copies the weights named by lc out of s's arena into a new engine, on the thread pool;
 * llepd_layer_created() is called on the loop thread when done. Returns 0 or a negative
 * errno (then nothing was started). */
int llepd_layer_start_create(llepd_layer *l, llepd_session *s, uint64_t frame_id,
                             const Llep__LayerCreate *lc);

/* Creation finished (handlers.c): reply to the creator (NULL for a cluster layer's share
 * that a peer created here) and to the attaches that waited; status 0 or a negative errno
 * with a message. */
void llepd_layer_created(llepd_layer *l, llepd_session *creator, uint64_t frame_id, int status,
                         const char *msg);

/* The plan parameters a step of this layer uses now. */
void llepd_layer_params(const llepd_layer *l, llep_plan_params *ret);

/* The layer's desc with the tunables now in effect filled in (what clients and llepctl see). */
void llepd_layer_effective_desc(const llepd_layer *l, Llep__LayerDesc *ret);

/* Frees the layer when nothing references or uses it any more. */
void llepd_layer_maybe_destroy(llepd_layer *l);

/* The engine config of the layer on this node: shape, activation, devices, backend, the
 * budget the other layers leave and the plan parameters; no weights. */
void llepd_layer_engine_config(const llepd_layer *l, llep_engine_config *cfg);

/* Bytes the other layers' native weights hold on each device of this node. */
uint64_t llepd_layer_others_held(const llepd_server *srv, const llepd_layer *self);

/* After the loop has ended: frees whatever layers remain. */
void llepd_layer_free_all(llepd_server *srv);

#endif
