/* JSON text and files (jsonfile.h). */
#include "jsonfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errbuf.h"

int llep__json_parse(const char *text, size_t len, const char *label, const char *what,
                     json_object **ret, char *err, size_t errlen) {
    json_tokener *tok;
    json_object *o;
    enum json_tokener_error e;

    *ret = NULL;
    what = what ? what : "the file";
    if (len > INT_MAX)  /* json-c takes the length as an int */
        return llep__errf(err, errlen, -EINVAL, "%s: %s is too long (%zu bytes)", label, what,
                          len);
    tok = json_tokener_new();
    if (!tok)
        return llep__errf(err, errlen, -ENOMEM, "%s: out of memory", label);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    o = json_tokener_parse_ex(tok, text, (int)len);
    e = json_tokener_get_error(tok);
    if (o && (e != json_tokener_success || json_tokener_get_parse_end(tok) != len)) {
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(tok);
    if (!o)
        return llep__errf(err, errlen, -EINVAL, "%s: %s is not JSON (%s)", label, what,
                          e == json_tokener_continue || e == json_tokener_success
                              ? "it ends inside a value" : json_tokener_error_desc(e));
    *ret = o;
    return 0;
}

static int read_all(int fd, char *buf, size_t len) {
    size_t got = 0;

    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO;  /* the file shrank under us */
        got += (size_t)n;
    }
    return 0;
}

int llep__json_read(const char *path, const char *label, json_object **ret, char *err,
                    size_t errlen) {
    struct stat st;
    char *buf;
    int fd, r;

    *ret = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return llep__errf(err, errlen, -errno, "%s: %s", label, strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > LLEP_JSON_MAX_FILE) {
        close(fd);
        return llep__errf(err, errlen, -EINVAL, "%s: not a regular file of at most %zu bytes",
                          label, LLEP_JSON_MAX_FILE);
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return llep__errf(err, errlen, -ENOMEM, "%s: out of memory", label);
    }
    r = read_all(fd, buf, (size_t)st.st_size);
    close(fd);
    if (r < 0)
        r = llep__errf(err, errlen, r, "%s: %s", label, strerror(-r));
    else
        r = llep__json_parse(buf, (size_t)st.st_size, label, NULL, ret, err, errlen);
    free(buf);
    return r;
}

int llep__json_u32(json_object *obj, const char *key, bool optional, uint32_t dflt,
                   uint32_t min, uint32_t max, uint32_t *ret, const char *label, char *err,
                   size_t errlen) {
    json_object *v;
    int64_t x;

    if (!json_object_object_get_ex(obj, key, &v) || !v) {
        if (!optional)
            return llep__errf(err, errlen, -EINVAL, "%s: no %s", label, key);
        *ret = dflt;
        return 0;
    }
    if (!json_object_is_type(v, json_type_int))
        return llep__errf(err, errlen, -EINVAL, "%s: %s is %s, not an integer", label, key,
                          json_object_to_json_string(v));
    x = json_object_get_int64(v);
    if (x < (int64_t)min || x > (int64_t)max)
        return llep__errf(err, errlen, -EINVAL, "%s: %s is %s, outside [%u, %u]", label, key,
                          json_object_to_json_string(v), min, max);
    *ret = (uint32_t)x;
    return 0;
}

int llep__json_float(json_object *obj, const char *key, float dflt, float *ret,
                     const char *label, char *err, size_t errlen) {
    json_object *v;
    double x;

    if (!json_object_object_get_ex(obj, key, &v) || !v) {
        *ret = dflt;
        return 0;
    }
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
        return llep__errf(err, errlen, -EINVAL, "%s: %s is %s, not a number", label, key,
                          json_object_to_json_string(v));
    x = json_object_get_double(v);
    if (!isfinite(x) || !isfinite((float)x))
        return llep__errf(err, errlen, -EINVAL, "%s: %s is %s, not a finite float", label, key,
                          json_object_to_json_string(v));
    *ret = (float)x;
    return 0;
}

int llep__json_str(json_object *obj, const char *key, const char **ret, const char *label,
                   char *err, size_t errlen) {
    json_object *v;

    *ret = NULL;
    if (!json_object_object_get_ex(obj, key, &v) || !v)
        return 0;
    if (!json_object_is_type(v, json_type_string))
        return llep__errf(err, errlen, -EINVAL, "%s: %s is %s, not a string", label, key,
                          json_object_to_json_string(v));
    *ret = json_object_get_string(v);
    return 0;
}
