/* Handlers of llepctl's requests (handlers-ctl.c), dispatched from handlers.c's table. */
#ifndef LLEPD_HANDLERS_H
#define LLEPD_HANDLERS_H

#include "server.h"

void llepd_handle_devices(llepd_session *s, const Llep__Frame *f);
void llepd_handle_layers(llepd_session *s, const Llep__Frame *f);
void llepd_handle_experts(llepd_session *s, const Llep__Frame *f);
void llepd_handle_plan(llepd_session *s, const Llep__Frame *f);
void llepd_handle_stats(llepd_session *s, const Llep__Frame *f);
void llepd_handle_set(llepd_session *s, const Llep__Frame *f);
void llepd_handle_drain(llepd_session *s, const Llep__Frame *f);

#endif
