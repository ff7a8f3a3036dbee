/* The index of a sharded checkpoint (index.h). */
#include "index.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "jsonfile.h"

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const llep_index_entry *)a)->tensor, ((const llep_index_entry *)b)->tensor);
}

static int str_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A name that stays inside the directory whatever joins it to the directory's path. */
static bool plain_name(const char *s, size_t len) {
    return len > 0 && strlen(s) == len && !strchr(s, '/') && !strstr(s, "..");
}

/* The distinct file names, sorted, so that each file is opened once. */
static int collect_files(llep_index *ix, json_object *map) {
    size_t n;

    ix->files = calloc(ix->n ? ix->n : 1, sizeof(*ix->files));
    if (!ix->files)
        return -ENOMEM;
    json_object_object_foreach(map, key, val) {
        (void)key;
        ix->files[ix->nfiles] = strdup(json_object_get_string(val));
        if (!ix->files[ix->nfiles])
            return -ENOMEM;
        ix->nfiles++;
    }
    n = ix->nfiles;
    qsort(ix->files, n, sizeof(*ix->files), str_cmp);
    ix->nfiles = 0;
    for (size_t i = 0; i < n; i++) {
        char *name = ix->files[i];

        ix->files[i] = NULL;
        if (ix->nfiles && strcmp(ix->files[ix->nfiles - 1], name) == 0)
            free(name);
        else
            ix->files[ix->nfiles++] = name;
    }
    return 0;
}

static int check_names(json_object *map, const char *label, char *err, size_t errlen) {
    json_object_object_foreach(map, key, val) {
        if (!json_object_is_type(val, json_type_string))
            return llep__errf(err, errlen, -EINVAL,
                              "%s: weight_map: tensor '%s' maps to %s, not a file name", label,
                              key, json_object_to_json_string(val));
        if (!plain_name(json_object_get_string(val), (size_t)json_object_get_string_len(val)))
            return llep__errf(err, errlen, -EINVAL,
                              "%s: weight_map: tensor '%s' is in file '%s', which is not a "
                              "plain name inside the checkpoint's directory (no '/' or '..')",
                              label, key, json_object_get_string(val));
    }
    return 0;
}

static int fill_entries(llep_index *ix, json_object *map) {
    size_t i = 0;

    ix->entries = calloc(ix->n ? ix->n : 1, sizeof(*ix->entries));
    if (!ix->entries)
        return -ENOMEM;
    json_object_object_foreach(map, key, val) {
        const char **hit, *name = json_object_get_string(val);

        ix->entries[i].tensor = strdup(key);
        if (!ix->entries[i].tensor)
            return -ENOMEM;
        hit = bsearch(&name, ix->files, ix->nfiles, sizeof(*ix->files), str_cmp);
        ix->entries[i].file = (uint32_t)(hit - (const char **)ix->files);
        i++;
    }
    qsort(ix->entries, ix->n, sizeof(*ix->entries), entry_cmp);
    return 0;
}

static int parse_map(llep_index *ix, json_object *root, const char *label, char *err,
                     size_t errlen) {
    json_object *map;
    int r;

    if (!json_object_is_type(root, json_type_object))
        return llep__errf(err, errlen, -EINVAL, "%s: not a JSON object", label);
    if (!json_object_object_get_ex(root, "weight_map", &map) ||
        !json_object_is_type(map, json_type_object))
        return llep__errf(err, errlen, -EINVAL, "%s: no weight_map object", label);
    r = check_names(map, label, err, errlen);
    if (r < 0)
        return r;
    ix->n = (size_t)json_object_object_length(map);
    r = collect_files(ix, map);
    if (r == 0)
        r = fill_entries(ix, map);
    if (r < 0)
        return llep__errf(err, errlen, r, "%s: out of memory", label);
    return 0;
}

int llep__index_from_json(json_object *root, const char *label, llep_index **ret, char *err,
                          size_t errlen) {
    llep_index *ix = calloc(1, sizeof(*ix));
    int r;

    *ret = NULL;
    if (!ix)
        return llep__errf(err, errlen, -ENOMEM, "%s: out of memory", label);
    r = parse_map(ix, root, label, err, errlen);
    if (r < 0) {
        llep__index_free(ix);
        return r;
    }
    *ret = ix;
    return 0;
}

int llep__index_parse(const char *text, size_t len, const char *label, llep_index **ret,
                      char *err, size_t errlen) {
    json_object *root;
    int r;

    *ret = NULL;
    r = llep__json_parse(text, len, label, NULL, &root, err, errlen);
    if (r < 0)
        return r;
    r = llep__index_from_json(root, label, ret, err, errlen);
    json_object_put(root);
    return r;
}

int64_t llep__index_find(const llep_index *ix, const char *tensor) {
    llep_index_entry key = { .tensor = (char *)tensor }, *hit;

    if (!ix->n)
        return -1;
    hit = bsearch(&key, ix->entries, ix->n, sizeof(*ix->entries), entry_cmp);
    return hit ? (int64_t)hit->file : -1;
}

void llep__index_free(llep_index *ix) {
    if (!ix)
        return;
    for (size_t i = 0; ix->entries && i < ix->n; i++)
        free(ix->entries[i].tensor);
    free(ix->entries);
    for (size_t i = 0; ix->files && i < ix->nfiles; i++)
        free(ix->files[i]);
    free(ix->files);
    free(ix);
}

