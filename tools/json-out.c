/* The tools' JSON output through json-c (json-out.h). */
#include "json-out.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* json-c answers NULL when an allocation fails; a document missing a member would be a wrong
 * answer, so the tool stops instead (json-out.h). */
static json_object *need(json_object *v) {
    if (!v) {
        fputs("out of memory while building the JSON output\n", stderr);
        exit(EXIT_FAILURE);
    }
    return v;
}

json_object *llep__jout_object(void) {
    return need(json_object_new_object());
}

json_object *llep__jout_array(void) {
    return need(json_object_new_array());
}

void llep__jout_add(json_object *o, const char *key, json_object *v) {
    if (json_object_object_add(o, key, v) < 0)
        need(NULL);
}

void llep__jout_u64(json_object *o, const char *key, uint64_t v) {
    llep__jout_add(o, key, need(json_object_new_uint64(v)));
}

void llep__jout_i64(json_object *o, const char *key, int64_t v) {
    llep__jout_add(o, key, need(json_object_new_int64(v)));
}

/* json-c writes a double with %.17g (and ".0" when that looks like an integer), which reads
 * back as the same double; it would write NaN and infinities as words JSON does not have. */
void llep__jout_f64(json_object *o, const char *key, double v) {
    llep__jout_add(o, key, isfinite(v) ? need(json_object_new_double(v)) : NULL);
}

void llep__jout_f32(json_object *o, const char *key, float v) {
    char text[32];

    if (!isfinite(v)) {
        llep__jout_add(o, key, NULL);
        return;
    }
    /* The tools keep the C locale, so the decimal point is '.'. 9 digits always read back. */
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(text, sizeof(text), "%.*g", digits, (double)v);
        if (strtof(text, NULL) == v)
            break;
    }
    /* "2" would read back as an integer: a float stays a real number. */
    if (!strpbrk(text, ".e"))
        strcat(text, ".0");
    llep__jout_add(o, key, need(json_object_new_double_s((double)v, text)));
}

void llep__jout_str(json_object *o, const char *key, const char *s) {
    llep__jout_add(o, key, need(json_object_new_string(s ? s : "")));
}

void llep__jout_bool(json_object *o, const char *key, bool v) {
    llep__jout_add(o, key, need(json_object_new_boolean(v)));
}

void llep__jout_push(json_object *a, json_object *v) {
    if (json_object_array_add(a, v) < 0)
        need(NULL);
}

void llep__jout_push_u64(json_object *a, uint64_t v) {
    llep__jout_push(a, need(json_object_new_uint64(v)));
}

json_object *llep__jout_u64s(const uint64_t *v, size_t n) {
    json_object *a = llep__jout_array();

    for (size_t i = 0; i < n; i++)
        llep__jout_push_u64(a, v[i]);
    return a;
}

json_object *llep__jout_u32s(const uint32_t *v, size_t n) {
    json_object *a = llep__jout_array();

    for (size_t i = 0; i < n; i++)
        llep__jout_push_u64(a, v[i]);
    return a;
}

int llep__jout_write(FILE *f, json_object *o, int flags, const char *end) {
    const char *s = json_object_to_json_string_ext(o, flags);
    int r = 0;

    if (!s)
        r = -ENOMEM;
    else if (fputs(s, f) == EOF || (end && fputs(end, f) == EOF) || ferror(f))
        r = -EIO;
    json_object_put(o);
    return r;
}
