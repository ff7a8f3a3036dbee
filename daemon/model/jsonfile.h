/* JSON text and files through json-c, with the errors every caller in model/ wants: a message
 * naming the file (the caller's label) and what was wrong in it. */
#ifndef LLEP_MODEL_JSONFILE_H
#define LLEP_MODEL_JSONFILE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest JSON file read (config.json, the index): far above any real one, and a bound
 * on what a hostile directory can make us allocate. */
#define LLEP_JSON_MAX_FILE ((size_t)64 << 20)

/* Parses text[0..len) strictly (one value, valid UTF-8, nothing after it but spaces).
 * Returns 0 with the value in *ret (json_object_put it), or -EINVAL ("LABEL: WHAT is not
 * JSON (why)"; what NULL: "the file") / -ENOMEM. */
int llep__json_parse(const char *text, size_t len, const char *label, const char *what,
                     json_object **ret, char *err, size_t errlen);

/* Reads the file at path (at most LLEP_JSON_MAX_FILE bytes) and parses it as above; -ENOENT
 * when there is no such file. */
int llep__json_read(const char *path, const char *label, json_object **ret, char *err,
                    size_t errlen);

/* obj[key] as an integer in [min, max]. When the key is absent (or null): *ret = dflt and 0
 * if optional, else -EINVAL naming the key. Present but of another type or out of range:
 * -EINVAL naming the key and its value. */
int llep__json_u32(json_object *obj, const char *key, bool optional, uint32_t dflt,
                   uint32_t min, uint32_t max, uint32_t *ret, const char *label, char *err,
                   size_t errlen);

/* obj[key] as a finite number (integer or real); absent: dflt. */
int llep__json_float(json_object *obj, const char *key, float dflt, float *ret,
                     const char *label, char *err, size_t errlen);

/* obj[key] as a string, or NULL when absent; -EINVAL when present but not a string. */
int llep__json_str(json_object *obj, const char *key, const char **ret, const char *label,
                   char *err, size_t errlen);

#endif
