/* Inside core: the table of llepd's settings (config-keys.c) and the parsers of the cluster
 * settings (config-peers.c) that config.c reads files and command lines with. */
#ifndef LLEP_CONFIG_KEYS_H
#define LLEP_CONFIG_KEYS_H

#include <stddef.h>

#include "config.h"

/* A setter parses value into c; on a bad value it returns -EINVAL (or -ERANGE) and leaves c
 * alone, and the table's `expect` text tells the user what would have been right. */
typedef int (*config_setter)(llep_config *c, const char *value);

typedef struct config_key {
    const char *name;
    const char *arg;      /* for --help */
    const char *expect;   /* completes "expected ..." in errors */
    const char *help;
    config_setter set;
} config_key;

/* Every key, in --help order. */
extern const config_key llep__config_keys[];
extern const size_t llep__config_num_keys;

/* Finds a key; '_' matches '-' so `min_tokens` works as well as `min-tokens`. len lets the
 * caller pass the name part of "--name=value" without copying it. */
const config_key *llep__config_find_key(const char *name, size_t len);

/* Writes s into out as a quoted, printable, bounded excerpt, so whatever bytes a file holds,
 * error messages stay one readable line. */
void llep__config_quote(char *out, size_t outlen, const char *s, size_t len);

/* The setters of `peers`, `listen-peers` and `metrics-listen` (config-peers.c). */
int llep__config_set_peers(llep_config *c, const char *value);
int llep__config_set_listen_peers(llep_config *c, const char *value);
int llep__config_set_metrics_listen(llep_config *c, const char *value);

#endif
