/* Parsing and mapping .safetensors files (safetensors.h). */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errbuf.h"
#include "jsonfile.h"

struct llep_st_file {
    char *label;
    void *map;              /* the mapping when llep__st_open made one */
    size_t map_len;
    size_t n;
    llep_st_tensor *t;      /* sorted by name */
    uint64_t *dims;         /* every tensor's shape, one after the other */
    char **names;           /* what t[i].name points to, owned */
};

/* What a tensor entry says before the tiling check: its offsets, relative to the data. */
typedef struct span {
    uint64_t begin, end;
    size_t tensor;
} span;

static const struct {
    const char *name;
    unsigned bits;
} dtypes[] = {
    [LLEP_ST_BOOL] = { "BOOL", 8 },       [LLEP_ST_U8] = { "U8", 8 },
    [LLEP_ST_I8] = { "I8", 8 },           [LLEP_ST_I16] = { "I16", 16 },
    [LLEP_ST_U16] = { "U16", 16 },        [LLEP_ST_F16] = { "F16", 16 },
    [LLEP_ST_BF16] = { "BF16", 16 },      [LLEP_ST_I32] = { "I32", 32 },
    [LLEP_ST_U32] = { "U32", 32 },        [LLEP_ST_F32] = { "F32", 32 },
    [LLEP_ST_F64] = { "F64", 64 },        [LLEP_ST_I64] = { "I64", 64 },
    [LLEP_ST_U64] = { "U64", 64 },        [LLEP_ST_C64] = { "C64", 64 },
    [LLEP_ST_F8_E5M2] = { "F8_E5M2", 8 }, [LLEP_ST_F8_E4M3] = { "F8_E4M3", 8 },
    [LLEP_ST_F8_E8M0] = { "F8_E8M0", 8 }, [LLEP_ST_F6_E2M3] = { "F6_E2M3", 6 },
    [LLEP_ST_F6_E3M2] = { "F6_E3M2", 6 }, [LLEP_ST_F4] = { "F4", 4 },
};

#define NUM_DTYPES (sizeof(dtypes) / sizeof(dtypes[0]))

const char *llep__st_dtype_name(enum llep_st_dtype t) {
    return (size_t)t < NUM_DTYPES ? dtypes[t].name : "?";
}

size_t llep__st_dtype_size(enum llep_st_dtype t) {
    return (size_t)t < NUM_DTYPES && dtypes[t].bits % 8 == 0 ? dtypes[t].bits / 8 : 0;
}

static int dtype_from_name(const char *s, enum llep_st_dtype *ret) {
    for (size_t i = 0; i < NUM_DTYPES; i++)
        if (strcmp(s, dtypes[i].name) == 0) {
            *ret = (enum llep_st_dtype)i;
            return 0;
        }
    return -EINVAL;
}

/* A JSON integer >= 0 (json-c keeps those beyond INT64_MAX as uint64). */
static bool get_u64(json_object *o, uint64_t *ret) {
    int64_t s;

    if (!json_object_is_type(o, json_type_int))
        return false;
    s = json_object_get_int64(o);
    if (s < 0)
        return false;
    *ret = s == INT64_MAX ? json_object_get_uint64(o) : (uint64_t)s;
    return true;
}

static int parse_shape(json_object *arr, llep_st_tensor *t, uint64_t *dims, const char *label,
                       char *err, size_t errlen) {
    uint64_t numel = 1;

    for (uint32_t d = 0; d < t->ndim; d++) {
        if (!get_u64(json_object_array_get_idx(arr, d), &dims[d]))
            return llep__errf(err, errlen, -EINVAL,
                              "%s: tensor '%s': shape[%u] is not an integer >= 0", label,
                              t->name, d);
        if (__builtin_mul_overflow(numel, dims[d], &numel))
            return llep__errf(err, errlen, -EINVAL,
                              "%s: tensor '%s': the shape's element count overflows", label,
                              t->name);
    }
    t->shape = dims;
    t->numel = numel;
    return 0;
}

static int parse_offsets(json_object *arr, const llep_st_tensor *t, span *s, const char *label,
                         char *err, size_t errlen) {
    if (!json_object_is_type(arr, json_type_array) || json_object_array_length(arr) != 2 ||
        !get_u64(json_object_array_get_idx(arr, 0), &s->begin) ||
        !get_u64(json_object_array_get_idx(arr, 1), &s->end))
        return llep__errf(err, errlen, -EINVAL,
                          "%s: tensor '%s': data_offsets is not [begin, end] of integers >= 0",
                          label, t->name);
    if (s->end < s->begin)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: tensor '%s': data_offsets [%llu, %llu) end before they begin",
                          label, t->name, (unsigned long long)s->begin,
                          (unsigned long long)s->end);
    return 0;
}

/* The byte count the dtype and shape imply must be the span's, as the reference checks. */
static int check_bytes(const llep_st_tensor *t, const span *s, const char *label, char *err,
                       size_t errlen) {
    uint64_t bits;

    if (__builtin_mul_overflow(t->numel, (uint64_t)dtypes[t->dtype].bits, &bits))
        return llep__errf(err, errlen, -EINVAL, "%s: tensor '%s': its byte count overflows",
                          label, t->name);
    if (bits % 8 != 0)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: tensor '%s': %llu elements of %s do not fill whole bytes", label,
                          t->name, (unsigned long long)t->numel, dtypes[t->dtype].name);
    if (s->end - s->begin != bits / 8)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: tensor '%s': data_offsets [%llu, %llu) hold %llu bytes, but "
                          "%llu elements of %s are %llu bytes", label, t->name,
                          (unsigned long long)s->begin, (unsigned long long)s->end,
                          (unsigned long long)(s->end - s->begin),
                          (unsigned long long)t->numel, dtypes[t->dtype].name,
                          (unsigned long long)(bits / 8));
    return 0;
}

/* One entry of the header: its dtype, shape and offsets, checked against each other. */
static int parse_entry(json_object *o, llep_st_tensor *t, uint64_t *dims, span *s,
                       const char *label, char *err, size_t errlen) {
    json_object *dt, *shape, *offs;
    int r;

    if (!json_object_is_type(o, json_type_object))
        return llep__errf(err, errlen, -EINVAL, "%s: tensor '%s': its entry is not an object",
                          label, t->name);
    if (!json_object_object_get_ex(o, "dtype", &dt) || !json_object_is_type(dt, json_type_string))
        return llep__errf(err, errlen, -EINVAL, "%s: tensor '%s': no dtype string", label,
                          t->name);
    if (dtype_from_name(json_object_get_string(dt), &t->dtype) < 0)
        return llep__errf(err, errlen, -EINVAL, "%s: tensor '%s': unknown dtype '%.32s'", label,
                          t->name, json_object_get_string(dt));
    if (!json_object_object_get_ex(o, "shape", &shape) ||
        !json_object_is_type(shape, json_type_array))
        return llep__errf(err, errlen, -EINVAL, "%s: tensor '%s': no shape array", label,
                          t->name);
    if (!json_object_object_get_ex(o, "data_offsets", &offs))
        return llep__errf(err, errlen, -EINVAL, "%s: tensor '%s': no data_offsets", label,
                          t->name);
    r = parse_shape(shape, t, dims, label, err, errlen);
    if (r == 0)
        r = parse_offsets(offs, t, s, label, err, errlen);
    if (r == 0)
        r = check_bytes(t, s, label, err, errlen);
    return r;
}

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;

    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int tensor_cmp(const void *a, const void *b) {
    return strcmp(((const llep_st_tensor *)a)->name, ((const llep_st_tensor *)b)->name);
}

/* In offset order the tensors must tile the data: each begins where the one before ended,
 * and the last ends where the file does. Anything else is an overlap, a gap or a file cut
 * short (or with bytes after the last tensor). */
static int check_tiling(llep_st_file *f, span *s, uint64_t data_len, const char *label,
                        char *err, size_t errlen) {
    uint64_t at = 0;

    /* Bounds first: a tensor past the end says more than the gap it leaves elsewhere. */
    for (size_t i = 0; i < f->n; i++)
        if (s[i].end > data_len)
            return llep__errf(err, errlen, -EINVAL,
                              "%s: tensor '%s': data_offsets [%llu, %llu) run past the end of "
                              "the data (%llu bytes): the file is truncated or its offsets "
                              "are wrong", label, f->names[s[i].tensor],
                              (unsigned long long)s[i].begin, (unsigned long long)s[i].end,
                              (unsigned long long)data_len);
    qsort(s, f->n, sizeof(*s), span_cmp);
    for (size_t i = 0; i < f->n; i++) {
        const char *name = f->names[s[i].tensor];

        if (s[i].begin < at)
            return llep__errf(err, errlen, -EINVAL,
                              "%s: tensor '%s': data_offsets [%llu, %llu) overlap tensor '%s'",
                              label, name, (unsigned long long)s[i].begin,
                              (unsigned long long)s[i].end, f->names[s[i - 1].tensor]);
        if (s[i].begin > at)
            return llep__errf(err, errlen, -EINVAL,
                              "%s: tensor '%s': data_offsets [%llu, %llu) leave a gap after "
                              "byte %llu of the data", label, name,
                              (unsigned long long)s[i].begin, (unsigned long long)s[i].end,
                              (unsigned long long)at);
        at = s[i].end;
    }
    if (at != data_len)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: the tensors end at byte %llu of the data, but the file holds "
                          "%llu data bytes", label, (unsigned long long)at,
                          (unsigned long long)data_len);
    return 0;
}

static void count_tensors(json_object *hdr, size_t *n, size_t *ndims) {
    *n = *ndims = 0;
    json_object_object_foreach(hdr, key, val) {
        json_object *shape;

        if (strcmp(key, "__metadata__") == 0)
            continue;
        (*n)++;
        if (json_object_is_type(val, json_type_object) &&
            json_object_object_get_ex(val, "shape", &shape) &&
            json_object_is_type(shape, json_type_array))
            *ndims += json_object_array_length(shape);
    }
}

static int alloc_tables(llep_st_file *f, size_t ndims, span **spans) {
    f->t = calloc(f->n ? f->n : 1, sizeof(*f->t));
    f->names = calloc(f->n ? f->n : 1, sizeof(*f->names));
    f->dims = calloc(ndims ? ndims : 1, sizeof(*f->dims));
    *spans = calloc(f->n ? f->n : 1, sizeof(**spans));
    return f->t && f->names && f->dims && *spans ? 0 : -ENOMEM;
}

/* Every entry but __metadata__ (which the format leaves free) becomes a tensor. */
static int parse_entries(llep_st_file *f, json_object *hdr, const uint8_t *data,
                         uint64_t data_len, char *err, size_t errlen) {
    size_t n, ndims, i = 0, d = 0;
    span *spans = NULL;
    int r;

    count_tensors(hdr, &n, &ndims);
    f->n = n;
    if (alloc_tables(f, ndims, &spans) < 0) {
        free(spans);
        return llep__errf(err, errlen, -ENOMEM, "%s: out of memory", f->label);
    }
    json_object_object_foreach(hdr, key, val) {
        llep_st_tensor *t = &f->t[i];
        json_object *shape;

        if (strcmp(key, "__metadata__") == 0)
            continue;
        f->names[i] = strdup(key);
        if (!f->names[i]) {
            free(spans);
            return llep__errf(err, errlen, -ENOMEM, "%s: out of memory", f->label);
        }
        t->name = f->names[i];
        t->ndim = json_object_object_get_ex(val, "shape", &shape) &&
                  json_object_is_type(shape, json_type_array)
                      ? (uint32_t)json_object_array_length(shape) : 0;
        spans[i].tensor = i;
        r = parse_entry(val, t, f->dims + d, &spans[i], f->label, err, errlen);
        if (r < 0) {
            free(spans);
            return r;
        }
        d += t->ndim;
        i++;
    }
    r = check_tiling(f, spans, data_len, f->label, err, errlen);
    for (size_t k = 0; r == 0 && k < f->n; k++) {
        f->t[spans[k].tensor].data = data + spans[k].begin;
        f->t[spans[k].tensor].nbytes = (size_t)(spans[k].end - spans[k].begin);
    }
    free(spans);
    if (r == 0)
        qsort(f->t, f->n, sizeof(*f->t), tensor_cmp);
    return r;
}

static int parse_into(llep_st_file *f, const uint8_t *p, size_t len, char *err, size_t errlen) {
    uint64_t n = 0;
    json_object *hdr;
    int r;

    if (len < 8)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: %zu bytes, too short for the 8-byte header length", f->label,
                          len);
    for (int i = 7; i >= 0; i--)
        n = n << 8 | p[i];
    if (n > LLEP_ST_MAX_HEADER)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: header length %llu is over the format's limit of 100 MB",
                          f->label, (unsigned long long)n);
    if (n > len - 8)
        return llep__errf(err, errlen, -EINVAL,
                          "%s: header length %llu runs past the end of the file (%zu bytes)",
                          f->label, (unsigned long long)n, len);
    /* Strict: one value and nothing after it but spaces (the writers' padding). */
    r = llep__json_parse((const char *)p + 8, (size_t)n, f->label, "the header", &hdr, err,
                         errlen);
    if (r < 0)
        return r;
    if (!json_object_is_type(hdr, json_type_object))
        r = llep__errf(err, errlen, -EINVAL, "%s: the header is not a JSON object", f->label);
    else
        r = parse_entries(f, hdr, p + 8 + n, len - 8 - n, err, errlen);
    json_object_put(hdr);
    return r;
}

int llep__st_parse(const void *buf, size_t len, const char *label, llep_st_file **ret,
                   char *err, size_t errlen) {
    llep_st_file *f = calloc(1, sizeof(*f));
    int r;

    *ret = NULL;
    if (!f || !(f->label = strdup(label))) {
        free(f);
        return llep__errf(err, errlen, -ENOMEM, "%s: out of memory", label);
    }
    r = parse_into(f, buf, len, err, errlen);
    if (r < 0) {
        llep__st_close(f);
        return r;
    }
    *ret = f;
    return 0;
}

/* Maps path read-only. A private mapping: nothing this process does can reach the file. */
static int map_file(const char *path, const char *label, void **ret, size_t *ret_len, char *err,
                    size_t errlen) {
    struct stat st;
    void *p;
    int fd = open(path, O_RDONLY | O_CLOEXEC), r;

    if (fd < 0)
        return llep__errf(err, errlen, -errno, "%s: %s", label, strerror(errno));
    if (fstat(fd, &st) < 0) {
        r = -errno;
        close(fd);
        return llep__errf(err, errlen, r, "%s: %s", label, strerror(-r));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return llep__errf(err, errlen, -EINVAL, "%s: not a regular file", label);
    }
    if (st.st_size == 0) {  /* mmap refuses a length of 0; the parser will say it is short */
        close(fd);
        *ret = NULL;
        *ret_len = 0;
        return 0;
    }
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    r = p == MAP_FAILED ? -errno : 0;
    close(fd);
    if (r < 0)
        return llep__errf(err, errlen, r, "%s: mmap: %s", label, strerror(-r));
    *ret = p;
    *ret_len = (size_t)st.st_size;
    return 0;
}

int llep__st_open(const char *path, const char *label, llep_st_file **ret, char *err,
                  size_t errlen) {
    static const uint8_t empty[1];
    void *map = NULL;
    size_t len = 0;
    int r;

    *ret = NULL;
    label = label ? label : path;
    r = map_file(path, label, &map, &len, err, errlen);
    if (r < 0)
        return r;
    r = llep__st_parse(map ? map : empty, len, label, ret, err, errlen);
    if (r < 0) {
        if (map)
            munmap(map, len);
        return r;
    }
    (*ret)->map = map;
    (*ret)->map_len = len;
    return 0;
}

const char *llep__st_label(const llep_st_file *f) {
    return f->label;
}

size_t llep__st_count(const llep_st_file *f) {
    return f->n;
}

const llep_st_tensor *llep__st_at(const llep_st_file *f, size_t i) {
    return i < f->n ? &f->t[i] : NULL;
}

const llep_st_tensor *llep__st_find(const llep_st_file *f, const char *name) {
    llep_st_tensor key = { .name = name };

    return f->n ? bsearch(&key, f->t, f->n, sizeof(*f->t), tensor_cmp) : NULL;
}

void llep__st_close(llep_st_file *f) {
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_len);
    for (size_t i = 0; f->names && i < f->n; i++)
        free(f->names[i]);
    free(f->names);
    free(f->dims);
    free(f->t);
    free(f->label);
    free(f);
}
