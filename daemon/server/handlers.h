/* The request handlers: one per request body, dispatched from a table that also says who may
 * send it (handlers.c: connection set-up and layers; handlers-ctl.c: llepctl's requests;
 * handlers-model.c: models; handlers-space.c: device spaces). */
#ifndef LLEPD_HANDLERS_H
#define LLEPD_HANDLERS_H

#include "frame.h"
#include "server.h"

/* Registers hooks.frame (every decoded frame) and hooks.layer_created. */
void llepd_handlers_init(llepd_server *srv);

/* llepctl's requests (handlers-ctl.c), in handlers.c's table. */
void llepd_handle_devices(llepd_session *s, const LlepPb__Frame *f);
void llepd_handle_layers(llepd_session *s, const LlepPb__Frame *f);
void llepd_handle_experts(llepd_session *s, const LlepPb__Frame *f);
void llepd_handle_plan(llepd_session *s, const LlepPb__Frame *f);
void llepd_handle_stats(llepd_session *s, const LlepPb__Frame *f);
void llepd_handle_set(llepd_session *s, const LlepPb__Frame *f);
void llepd_handle_drain(llepd_session *s, const LlepPb__Frame *f);
void llepd_handle_peers(llepd_session *s, const LlepPb__Frame *f);

/* The requests about models (handlers-model.c). */
void llepd_handle_model_load(llepd_session *s, const LlepPb__Frame *f);
void llepd_handle_model_unload(llepd_session *s, const LlepPb__Frame *f);
void llepd_handle_models(llepd_session *s, const LlepPb__Frame *f);

/* A client's device space (handlers-space.c). */
void llepd_handle_space_register(llepd_session *s, const LlepPb__Frame *f);
void llepd_handle_space_release(llepd_session *s, const LlepPb__Frame *f);

/* `llepctl tune` (handlers-tune.c). */
void llepd_handle_tune(llepd_session *s, const LlepPb__Frame *f);

#endif
