/* Per-expert loads as people write them: unsigned decimal integers separated by white space,
 * on a command line or in a file (llep-plan --loads-file). */
#ifndef LLEP_TOOLS_LOADS_H
#define LLEP_TOOLS_LOADS_H

#include <stddef.h>
#include <stdint.h>

typedef struct llep_loads {
    uint64_t *v;
    size_t n, cap;
    size_t max;      /* most loads accepted; more is an error */
} llep_loads;

/* Appends one load written as `tok`. Returns 0, -EINVAL (not a non-negative integer, with the
 * reason in err), -ERANGE (beyond 64 bits), -E2BIG (more than max loads) or -ENOMEM. */
int llep__loads_add(llep_loads *l, const char *tok, char *err, size_t errlen);

/* Parses a whole text of len bytes (not necessarily NUL-terminated; NUL bytes are errors).
 * Errors name the 1-based line and the offending token. */
int llep__loads_parse(llep_loads *l, const char *text, size_t len, char *err, size_t errlen);

/* Reads and parses a file; errors name the file. */
int llep__loads_read_file(llep_loads *l, const char *path, char *err, size_t errlen);

void llep__loads_free(llep_loads *l);

#endif
