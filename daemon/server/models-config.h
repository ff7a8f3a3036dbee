/* The models of llepd's configuration (the `model` key of llepd.conf, --model): loaded at
 * start and brought in line with the file on SIGHUP. Models loaded with `llepctl load` are
 * not the configuration's and a reload leaves them alone. */
#ifndef LLEPD_MODELS_CONFIG_H
#define LLEPD_MODELS_CONFIG_H

#include "config.h"
#include "server.h"

/* Every configured model is loaded, or the first failure (status < 0, msg naming the model
 * and why); called once, on the loop thread, after every load has ended. */
typedef void (*llepd_models_started_cb)(llepd_server *srv, int status, const char *msg,
                                        void *data);

/* Starts loading cfg's models. Returns 0 (done will be called, at once when there are none)
 * or -ENOMEM. */
int llepd_models_start(llepd_server *srv, const llep_config *cfg, llepd_models_started_cb done,
                       void *data);

/* SIGHUP: unloads the models of old that next no longer lists (or lists with another
 * directory), which is refused while clients hold their layers (logged; the model stays), and
 * loads those next adds. Outcomes are logged. */
void llepd_models_reload(llepd_server *srv, const llep_config *old, const llep_config *next);

#endif
