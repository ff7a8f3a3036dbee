/* Checkpoint directories (checkpoint.h). */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "errbuf.h"
#include "index.h"
#include "jsonfile.h"

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define SUFFIX ".safetensors"

struct llep_ckpt {
    char *dir;
    char *config_path;
    json_object *config;
    char *index_path;           /* NULL without an index */
    llep_index *index;
    size_t nfiles;
    llep_st_file **files;       /* with an index, in the order of index->files */
};

static char *join(const char *dir, const char *name) {
    char *p;

    return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

static bool is_file(const char *path) {
    struct stat st;

    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int oom(const char *where, char *err, size_t errlen) {
    return llep__errf(err, errlen, -ENOMEM, "%s: out of memory", where);
}

/* Maps dir/name as files[nfiles++]; the files array has room. */
static int open_one(llep_ckpt *c, const char *name, char *err, size_t errlen) {
    char *path = join(c->dir, name);
    int r;

    if (!path)
        return oom(c->dir, err, errlen);
    r = llep__st_open(path, path, &c->files[c->nfiles], err, errlen);
    free(path);
    if (r == 0)
        c->nfiles++;
    return r;
}

/* Every tensor the index names must be in the file it names: found now, not at first use. */
static int check_index(const llep_ckpt *c, char *err, size_t errlen) {
    for (size_t i = 0; i < c->index->n; i++) {
        const llep_index_entry *e = &c->index->entries[i];

        if (!llep__st_find(c->files[e->file], e->tensor))
            return llep__errf(err, errlen, -EINVAL,
                              "%s: weight_map puts tensor '%s' in %s, which has no such tensor",
                              c->index_path, e->tensor, llep__st_label(c->files[e->file]));
    }
    return 0;
}

/* A shard that is not there: the message names a tensor the index puts in it. */
static int shard_missing(const llep_ckpt *c, uint32_t file, char *err, size_t errlen) {
    const char *tensor = "?";

    for (size_t i = 0; i < c->index->n; i++)
        if (c->index->entries[i].file == file) {
            tensor = c->index->entries[i].tensor;
            break;
        }
    return llep__errf(err, errlen, -ENOENT,
                      "%s: weight_map puts tensor '%s' in %s/%s, which is not there",
                      c->index_path, tensor, c->dir, c->index->files[file]);
}

static int open_indexed(llep_ckpt *c, char *err, size_t errlen) {
    json_object *root;
    int r = llep__json_read(c->index_path, c->index_path, &root, err, errlen);

    if (r < 0)
        return r;
    r = llep__index_from_json(root, c->index_path, &c->index, err, errlen);
    json_object_put(root);
    if (r < 0)
        return r;
    c->files = calloc(c->index->nfiles ? c->index->nfiles : 1, sizeof(*c->files));
    if (!c->files)
        return oom(c->index_path, err, errlen);
    for (size_t i = 0; r == 0 && i < c->index->nfiles; i++) {
        r = open_one(c, c->index->files[i], err, errlen);
        if (r == -ENOENT)
            r = shard_missing(c, (uint32_t)i, err, errlen);
    }
    return r < 0 ? r : check_index(c, err, errlen);
}

static bool has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);

    return n > k && strcmp(s + n - k, suffix) == 0;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* The *.safetensors files of the directory, in name order. */
static int list_shards(const char *dir, char ***ret, size_t *ret_n, char *err, size_t errlen) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char **names = NULL, **grown;
    size_t n = 0;

    if (!d)
        return llep__errf(err, errlen, -errno, "%s: %s", dir, strerror(errno));
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !has_suffix(de->d_name, SUFFIX))
            continue;
        grown = realloc(names, (n + 1) * sizeof(*names));
        if (!grown || !(grown[n] = strdup(de->d_name))) {
            names = grown ? grown : names;
            closedir(d);
            free_names(names, n);
            return oom(dir, err, errlen);
        }
        names = grown;
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof(*names), name_cmp);
    *ret = names;
    *ret_n = n;
    return 0;
}

/* Without an index a name must not be in two files: which one would be meant? */
static int check_unique(const llep_ckpt *c, char *err, size_t errlen) {
    for (size_t f = 1; f < c->nfiles; f++)
        for (size_t i = 0; i < llep__st_count(c->files[f]); i++) {
            const char *name = llep__st_at(c->files[f], i)->name;

            for (size_t g = 0; g < f; g++)
                if (llep__st_find(c->files[g], name))
                    return llep__errf(err, errlen, -EINVAL,
                                      "%s: tensor '%s' is also in %s, and there is no %s to "
                                      "say which is meant", llep__st_label(c->files[f]), name,
                                      llep__st_label(c->files[g]), INDEX_NAME);
        }
    return 0;
}

static int open_unindexed(llep_ckpt *c, char *err, size_t errlen) {
    char *single = join(c->dir, SINGLE_NAME), **names = NULL;
    size_t n = 0;
    int r;

    if (!single)
        return oom(c->dir, err, errlen);
    if (is_file(single)) {
        free(single);
        c->files = calloc(1, sizeof(*c->files));
        return c->files ? open_one(c, SINGLE_NAME, err, errlen) : oom(c->dir, err, errlen);
    }
    free(single);
    r = list_shards(c->dir, &names, &n, err, errlen);
    if (r < 0)
        return r;
    if (n == 0)
        r = llep__errf(err, errlen, -ENOENT, "%s: no %s, no %s and no *%s file", c->dir,
                       INDEX_NAME, SINGLE_NAME, SUFFIX);
    else if (!(c->files = calloc(n, sizeof(*c->files))))
        r = oom(c->dir, err, errlen);
    for (size_t i = 0; r == 0 && i < n; i++)
        r = open_one(c, names[i], err, errlen);
    free_names(names, n);
    return r < 0 ? r : check_unique(c, err, errlen);
}

static int read_config(llep_ckpt *c, char *err, size_t errlen) {
    int r;

    c->config_path = join(c->dir, "config.json");
    if (!c->config_path)
        return oom(c->dir, err, errlen);
    r = llep__json_read(c->config_path, c->config_path, &c->config, err, errlen);
    if (r == 0 && !json_object_is_type(c->config, json_type_object))
        r = llep__errf(err, errlen, -EINVAL, "%s: not a JSON object", c->config_path);
    return r;
}

int llep__ckpt_open(const char *dir, llep_ckpt **ret, char *err, size_t errlen) {
    llep_ckpt *c = calloc(1, sizeof(*c));
    int r;

    *ret = NULL;
    if (!c || !(c->dir = strdup(dir))) {
        free(c);
        return oom(dir, err, errlen);
    }
    r = read_config(c, err, errlen);
    if (r == 0 && !(c->index_path = join(dir, INDEX_NAME)))
        r = oom(dir, err, errlen);
    if (r == 0 && !is_file(c->index_path)) {
        free(c->index_path);
        c->index_path = NULL;
    }
    if (r == 0)
        r = c->index_path ? open_indexed(c, err, errlen) : open_unindexed(c, err, errlen);
    if (r < 0) {
        llep__ckpt_close(c);
        return r;
    }
    *ret = c;
    return 0;
}

json_object *llep__ckpt_config(const llep_ckpt *c) {
    return c->config;
}

const char *llep__ckpt_config_path(const llep_ckpt *c) {
    return c->config_path;
}

const llep_st_tensor *llep__ckpt_find(const llep_ckpt *c, const char *name,
                                      const char **ret_file) {
    const llep_st_tensor *t = NULL;
    size_t f = 0;

    if (c->index) {
        int64_t at = llep__index_find(c->index, name);

        if (at >= 0) {
            f = (size_t)at;
            t = llep__st_find(c->files[f], name);
        }
    } else {
        for (f = 0; f < c->nfiles; f++)
            if ((t = llep__st_find(c->files[f], name)))
                break;
    }
    if (t && ret_file)
        *ret_file = llep__st_label(c->files[f]);
    return t;
}

int llep__ckpt_missing(const llep_ckpt *c, const char *name, char *err, size_t errlen) {
    if (c->index)
        return llep__errf(err, errlen, -ENOENT, "%s: weight_map has no tensor '%s'",
                          c->index_path, name);
    if (c->nfiles == 1)
        return llep__errf(err, errlen, -ENOENT, "%s: no tensor '%s'",
                          llep__st_label(c->files[0]), name);
    return llep__errf(err, errlen, -ENOENT, "%s: no tensor '%s' in any of its %zu *%s files",
                      c->dir, name, c->nfiles, SUFFIX);
}

void llep__ckpt_close(llep_ckpt *c) {
    if (!c)
        return;
    for (size_t i = 0; i < c->nfiles; i++)
        llep__st_close(c->files[i]);
    free(c->files);
    llep__index_free(c->index);
    free(c->index_path);
    json_object_put(c->config);
    free(c->config_path);
    free(c->dir);
    free(c);
}
