/* model.safetensors.index.json: which file of a sharded checkpoint holds each tensor.
 *
 *     { "metadata": {...}, "weight_map": { "TENSOR NAME": "FILE NAME", ... } }
 *
 * Every file name must be a plain name inside the checkpoint's directory: not empty, no '/',
 * no "..". Text in, tables out, no file access: the fuzz target drives it directly. */
#ifndef LLEP_MODEL_INDEX_H
#define LLEP_MODEL_INDEX_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

typedef struct llep_index_entry {
    char *tensor;
    uint32_t file;          /* into llep_index.files */
} llep_index_entry;

typedef struct llep_index {
    size_t n;
    llep_index_entry *entries;  /* sorted by tensor name */
    size_t nfiles;
    char **files;               /* each distinct file name once, in name order */
} llep_index;

/* Builds the index from the parsed file root; label names it in messages. Returns 0 with
 * the index in *ret, or -EINVAL (with the message) / -ENOMEM. */
int llep__index_from_json(json_object *root, const char *label, llep_index **ret, char *err,
                          size_t errlen);

/* The same from the file's text[0..len). */
int llep__index_parse(const char *text, size_t len, const char *label, llep_index **ret,
                      char *err, size_t errlen);

/* The file index of tensor, or -1 when the index does not name it. */
int64_t llep__index_find(const llep_index *ix, const char *tensor);

void llep__index_free(llep_index *ix);

#endif
