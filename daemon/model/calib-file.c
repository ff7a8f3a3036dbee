/* The calibration file (calib-file.h). */
#include "calib-file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errbuf.h"
#include "jsonfile.h"

static const char *const link_names[LLEP_LINK_KINDS] = { "same", "gpu", "peer", "node" };

/* ---- reading ----------------------------------------------------------------------------- */

typedef struct reader {
    const char *label;
    char *err;
    size_t errlen;
    bool printed;               /* the form llep__cost_table_json prints (calib-file.h) */
} reader;

static json_object *field(reader *rd, json_object *obj, const char *key, json_type type,
                          const char *what, int *r) {
    json_object *v = NULL;

    if (*r < 0)
        return NULL;
    if (!json_object_object_get_ex(obj, key, &v) || !v) {
        *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: '%s' is missing", rd->label, key);
        return NULL;
    }
    /* json-c tells integers from reals; a number is either. */
    bool ok = json_object_is_type(v, type) ||
              (type == json_type_double && json_object_is_type(v, json_type_int));
    if (!ok) {
        *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: '%s' must be %s", rd->label, key,
                        what);
        return NULL;
    }
    return v;
}

/* A finite number >= 0 (every figure of the model is a time or a rate). */
static double number(reader *rd, json_object *obj, const char *key, int *r) {
    json_object *v = field(rd, obj, key, json_type_double, "a number", r);
    double x = v ? json_object_get_double(v) : 0;

    if (*r == 0 && (!isfinite(x) || x < 0))
        *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: '%s' must be a finite number >= 0",
                        rd->label, key);
    return *r == 0 ? x : 0;
}

static uint32_t u32(reader *rd, json_object *obj, const char *key, uint32_t max, int *r) {
    uint32_t v = 0;

    if (*r == 0)
        *r = llep__json_u32(obj, key, false, 0, 0, max, &v, rd->label, rd->err, rd->errlen);
    return v;
}

static void string(reader *rd, json_object *obj, const char *key, char *buf, size_t len,
                   int *r) {
    json_object *v = field(rd, obj, key, json_type_string, "a string", r);

    if (!v)
        return;
    const char *s = json_object_get_string(v);
    size_t n = strlen(s);
    if (n == 0 || n >= len || n != (size_t)json_object_get_string_len(v))
        *r = llep__errf(rd->err, rd->errlen, -EINVAL,
                        "%s: '%s' must be a string of 1 to %zu bytes", rd->label, key, len - 1);
    else
        memcpy(buf, s, n + 1);
}

static void read_curve(reader *rd, json_object *o, llep_cost_model *m, int *r) {
    json_object *curve = field(rd, o, "curve", json_type_array, "an array", r);

    if (!curve)
        return;
    size_t n = json_object_array_length(curve);
    if (n == 0 || n > LLEP_COST_MAX_POINTS) {
        *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: 'curve' must have 1 to %d points",
                        rd->label, LLEP_COST_MAX_POINTS);
        return;
    }
    m->num_points = (uint32_t)n;
    for (size_t i = 0; i < n && *r == 0; i++) {
        json_object *pt = json_object_array_get_idx(curve, i);
        if (!json_object_is_type(pt, json_type_object)) {
            *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: curve point %zu is not an object",
                            rd->label, i);
            return;
        }
        m->rows[i] = u32(rd, pt, "rows", UINT32_MAX, r);
        m->rate[i] = number(rd, pt, rd->printed ? "rate_flops_per_ns" : "rate", r);
    }
}

static void read_links(reader *rd, json_object *o, llep_calibration *cal, int *r) {
    json_object *links = field(rd, o, "links", json_type_array, "an array", r);

    if (!links)
        return;
    if (json_object_array_length(links) != LLEP_LINK_KINDS) {
        *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: 'links' must have %d entries",
                        rd->label, LLEP_LINK_KINDS);
        return;
    }
    for (int k = 0; k < LLEP_LINK_KINDS && *r == 0; k++) {
        json_object *l = json_object_array_get_idx(links, (size_t)k);
        char kind[16] = "";
        if (!json_object_is_type(l, json_type_object)) {
            *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: link %d is not an object",
                            rd->label, k);
            return;
        }
        string(rd, l, "kind", kind, sizeof(kind), r);
        if (*r == 0 && strcmp(kind, link_names[k]) != 0) {
            *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: link %d must be '%s', not '%s'",
                            rd->label, k, link_names[k], kind);
            return;
        }
        cal->model.link[k].latency_ns = number(rd, l, "latency_ns", r);
        cal->model.link[k].ns_per_byte = number(rd, l, "ns_per_byte", r);
        json_object *m = field(rd, l, "measured", json_type_boolean, "true or false", r);
        cal->measured[k] = m && json_object_get_boolean(m);
    }
}

static void read_all(reader *rd, json_object *o, llep_calibration *cal, int *r) {
    llep_cost_model *m = &cal->model;
    char dtype[8] = "";

    if (!json_object_is_type(o, json_type_object)) {
        *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: not a JSON object", rd->label);
        return;
    }
    /* The printed form has no version: its keys are those of cost-table.h. */
    uint32_t version = rd->printed ? LLEP_CALIB_VERSION : u32(rd, o, "version", UINT32_MAX, r);
    if (*r == 0 && version != LLEP_CALIB_VERSION) {
        *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: version %u, this llepd reads %d",
                        rd->label, version, LLEP_CALIB_VERSION);
        return;
    }
    string(rd, o, "backend", m->backend, sizeof(m->backend), r);
    string(rd, o, "device_name", m->device_name, sizeof(m->device_name), r);
    cal->devices = u32(rd, o, "devices", 4096, r);
    m->devices_per_gpu = u32(rd, o, "devices_per_gpu", 4096, r);
    m->devices_per_node = u32(rd, o, "devices_per_node", 4096, r);
    cal->hidden = u32(rd, o, "hidden", 65536, r);
    cal->inter = u32(rd, o, "inter", 65536, r);
    string(rd, o, "dtype", dtype, sizeof(dtype), r);
    if (*r == 0 && strcmp(dtype, "f32") != 0 && strcmp(dtype, "bf16") != 0)
        *r = llep__errf(rd->err, rd->errlen, -EINVAL, "%s: 'dtype' must be f32 or bf16",
                        rd->label);
    cal->dtype = strcmp(dtype, "bf16") == 0 ? LLEP_DTYPE_BF16 : LLEP_DTYPE_F32;
    m->chunk_fixed_ns = number(rd, o, "chunk_fixed_ns", r);
    read_curve(rd, o, m, r);
    read_links(rd, o, cal, r);
    cal->elapsed_ms = number(rd, o, "elapsed_ms", r);
    json_object *t = field(rd, o, "time", json_type_int, "an integer", r);
    cal->time = t ? json_object_get_int64(t) : 0;
    if (*r == 0 && (cal->devices == 0 || cal->hidden == 0 || cal->inter == 0))
        *r = llep__errf(rd->err, rd->errlen, -EINVAL,
                        "%s: 'devices', 'hidden' and 'inter' must be at least 1", rd->label);
}

/* Which form o is, for parse_text with any_form: the stored one has "version", the printed
 * one "hash" (and no "version"). */
static int which_form(json_object *o, const char *label, bool *printed, char *err,
                      size_t errlen) {
    json_object *v;

    *printed = false;
    if (!json_object_is_type(o, json_type_object) ||
        json_object_object_get_ex(o, "version", &v))
        return 0;
    if (json_object_object_get_ex(o, "hash", &v)) {
        *printed = true;
        return 0;
    }
    return llep__errf(err, errlen, -EINVAL,
                      "%s: not a calibration: neither llepd's file (no 'version') nor "
                      "`llep-bench --calibrate --json` output (no 'hash')", label);
}

static int parse_text(const char *text, size_t len, const char *label, bool any_form,
                      llep_calibration *ret, char *err, size_t errlen) {
    reader rd = { label, err, errlen, false };
    json_object *o;
    char why[200];

    memset(ret, 0, sizeof(*ret));
    int r = llep__json_parse(text, len, label, NULL, &o, err, errlen);
    if (r < 0)
        return r;
    json_object *inner = NULL;
    /* `llepctl tune --json` wraps the printed object: {"path", "stored", "calibration"}. */
    if (any_form && json_object_is_type(o, json_type_object) &&
        !json_object_object_get_ex(o, "version", NULL) &&
        !json_object_object_get_ex(o, "hash", NULL) &&
        json_object_object_get_ex(o, "calibration", &inner) &&
        json_object_is_type(inner, json_type_object)) {
        json_object_get(inner);
        json_object_put(o);
        o = inner;
    }
    if (any_form)
        r = which_form(o, label, &rd.printed, err, errlen);
    if (r == 0)
        read_all(&rd, o, ret, &r);
    json_object_put(o);
    /* The figures one by one are in range; the model as a whole must hold too (rows from 1
     * up, rates > 0, link kinds in order). */
    if (r == 0 && llep__cost_check(&ret->model, why, sizeof(why)) < 0)
        r = llep__errf(err, errlen, -EINVAL, "%s: not a valid cost model: %s", label, why);
    if (r < 0)
        memset(ret, 0, sizeof(*ret));
    return r;
}

int llep__calib_parse(const char *text, size_t len, const char *label, llep_calibration *ret,
                      char *err, size_t errlen) {
    return parse_text(text, len, label, false, ret, err, errlen);
}

static int load(const char *path, bool any_form, llep_calibration *ret, char *err,
                size_t errlen) {
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t len = 0;
    int r = 0;

    memset(ret, 0, sizeof(*ret));
    if (!f)
        return llep__errf(err, errlen, -errno, "%s: %s", path, strerror(errno));
    /* A calibration file is about 2 KiB; a much bigger one is not one. */
    buf = malloc(65536 + 1);
    if (!buf)
        r = llep__errf(err, errlen, -ENOMEM, "%s: out of memory", path);
    else
        len = fread(buf, 1, 65536 + 1, f);
    if (r == 0 && ferror(f))
        r = llep__errf(err, errlen, -EIO, "%s: read error", path);
    else if (r == 0 && len > 65536)
        r = llep__errf(err, errlen, -EINVAL, "%s: larger than 64 KiB", path);
    fclose(f);
    if (r == 0)
        r = parse_text(buf, len, path, any_form, ret, err, errlen);
    free(buf);
    return r;
}

int llep__calib_load(const char *path, llep_calibration *ret, char *err, size_t errlen) {
    return load(path, false, ret, err, errlen);
}

int llep__calib_load_any(const char *path, llep_calibration *ret, char *err, size_t errlen) {
    return load(path, true, ret, err, errlen);
}

/* ---- writing ----------------------------------------------------------------------------- */

/* The file's text through json-c (pretty, doubles to 17 digits so that a round trip gives
 * the same model and hash). */
static json_object *num(double v) {
    return json_object_new_double(v);
}

static json_object *calib_object(const llep_calibration *cal) {
    const llep_cost_model *m = &cal->model;
    json_object *o = json_object_new_object(), *curve = json_object_new_array();
    json_object *links = json_object_new_array();

    json_object_object_add(o, "version", json_object_new_int(LLEP_CALIB_VERSION));
    json_object_object_add(o, "backend", json_object_new_string(m->backend));
    json_object_object_add(o, "device_name", json_object_new_string(m->device_name));
    json_object_object_add(o, "devices", json_object_new_int64(cal->devices));
    json_object_object_add(o, "devices_per_gpu", json_object_new_int64(m->devices_per_gpu));
    json_object_object_add(o, "devices_per_node", json_object_new_int64(m->devices_per_node));
    json_object_object_add(o, "hidden", json_object_new_int64(cal->hidden));
    json_object_object_add(o, "inter", json_object_new_int64(cal->inter));
    json_object_object_add(o, "dtype", json_object_new_string(
                                           cal->dtype == LLEP_DTYPE_BF16 ? "bf16" : "f32"));
    json_object_object_add(o, "chunk_fixed_ns", num(m->chunk_fixed_ns));
    for (uint32_t i = 0; i < m->num_points && i < LLEP_COST_MAX_POINTS; i++) {
        json_object *pt = json_object_new_object();
        json_object_object_add(pt, "rows", json_object_new_int64(m->rows[i]));
        json_object_object_add(pt, "rate", num(m->rate[i]));
        json_object_array_add(curve, pt);
    }
    json_object_object_add(o, "curve", curve);
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        json_object *l = json_object_new_object();
        json_object_object_add(l, "kind", json_object_new_string(link_names[k]));
        json_object_object_add(l, "latency_ns", num(m->link[k].latency_ns));
        json_object_object_add(l, "ns_per_byte", num(m->link[k].ns_per_byte));
        json_object_object_add(l, "measured", json_object_new_boolean(cal->measured[k]));
        json_object_array_add(links, l);
    }
    json_object_object_add(o, "links", links);
    json_object_object_add(o, "elapsed_ms", num(cal->elapsed_ms));
    json_object_object_add(o, "time", json_object_new_int64(cal->time));
    return o;
}

char *llep__calib_format(const llep_calibration *cal) {
    json_object *o = calib_object(cal);
    int flags = JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                JSON_C_TO_STRING_NOSLASHESCAPE;
    const char *s = o ? json_object_to_json_string_ext(o, flags) : NULL;
    char *text = NULL;

    if (s && asprintf(&text, "%s\n", s) < 0)
        text = NULL;
    json_object_put(o);
    return text;
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int llep__calib_save(const char *path, const llep_calibration *cal, char *err, size_t errlen) {
    char tmp[PATH_MAX];
    char *text = llep__calib_format(cal);

    if (!text)
        return llep__errf(err, errlen, -ENOMEM, "%s: out of memory", path);
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp)) {
        free(text);
        return llep__errf(err, errlen, -ENAMETOOLONG, "%s: path too long", path);
    }
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(text);
        return llep__errf(err, errlen, -e, "cannot write %s: %s", tmp, strerror(e));
    }
    /* Written and flushed to disk before it takes the name, so that a crash leaves the old
     * file or the new one, never a short one. */
    int r = write_all(fd, text, strlen(text));
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    free(text);
    if (r < 0) {
        unlink(tmp);
        return llep__errf(err, errlen, r, "cannot write %s: %s", path, strerror(-r));
    }
    return 0;
}

bool llep__calib_matches(const llep_calibration *stored, const llep_calibration *now,
                         char *why, size_t whylen) {
    const llep_cost_model *a = &stored->model, *b = &now->model;

    if (strcmp(a->backend, b->backend) != 0)
        snprintf(why, whylen, "it is for backend %s, llepd runs %s", a->backend, b->backend);
    else if (stored->devices != now->devices)
        snprintf(why, whylen, "it is for %u devices, llepd runs %u", stored->devices,
                 now->devices);
    else if (strcmp(a->device_name, b->device_name) != 0)
        snprintf(why, whylen, "it was measured on '%s', these devices are '%s'",
                 a->device_name, b->device_name);
    else if (a->devices_per_gpu != b->devices_per_gpu)
        snprintf(why, whylen, "it has %u logical devices per physical one, llepd runs %u",
                 a->devices_per_gpu, b->devices_per_gpu);
    else
        return true;
    return false;
}
