/* The tools' --json output, built with json-c rather than printf: json-c escapes strings (quotes,
 * backslashes, control characters in layer, model and device names) and writes numbers as
 * JSON wants them. Helpers that keep the building short: integers stay integers, doubles
 * doubles, and NaN or infinities (which JSON cannot write) become null. */
#ifndef LLEP_TOOLS_JSON_OUT_H
#define LLEP_TOOLS_JSON_OUT_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* One line, "key": value and ", " as the hand-written output had; '/' left as it is. */
#define LLEP_JOUT_LINE (JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE)
/* Indented, one member per line (two spaces a level). */
#define LLEP_JOUT_PRETTY (LLEP_JOUT_LINE | JSON_C_TO_STRING_PRETTY)

/* A new empty object or array. The tools print and exit, so running out of memory while
 * building a document ends the program with a message rather than printing a wrong one
 * (this holds for every helper below). */
json_object *llep__jout_object(void);
json_object *llep__jout_array(void);

/* o[key] = v, taking v; v NULL is JSON null. Keys keep the order they are added in. */
void llep__jout_add(json_object *o, const char *key, json_object *v);
void llep__jout_u64(json_object *o, const char *key, uint64_t v);
void llep__jout_i64(json_object *o, const char *key, int64_t v);
/* A double, written with the precision that reads back the same; null when not finite. */
void llep__jout_f64(json_object *o, const char *key, double v);
/* A float (the protocol's alpha and lambda) in its shortest decimal form that reads back as
 * the same float: 1.3f as 1.3, not as the double it widens to (1.2999999523162842); null when
 * not finite. */
void llep__jout_f32(json_object *o, const char *key, float v);
/* A string; NULL as "". */
void llep__jout_str(json_object *o, const char *key, const char *s);
void llep__jout_bool(json_object *o, const char *key, bool v);

/* Appends v to the array a, taking v; or an integer. */
void llep__jout_push(json_object *a, json_object *v);
void llep__jout_push_u64(json_object *a, uint64_t v);

/* Arrays of integers. */
json_object *llep__jout_u64s(const uint64_t *v, size_t n);
json_object *llep__jout_u32s(const uint32_t *v, size_t n);

/* Writes o as JSON text (flags: LLEP_JOUT_LINE or LLEP_JOUT_PRETTY) and then end (NULL:
 * nothing) on f, and drops o. Returns 0, -ENOMEM, or -EIO when f reports an error. */
int llep__jout_write(FILE *f, json_object *o, int flags, const char *end);

#endif
