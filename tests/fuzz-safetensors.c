/* Fuzz target: the .safetensors parser and the sharding index parser of daemon/model, both
 * fed every input (a file image, and the same bytes as index JSON). Whatever a parser accepts
 * must describe only bytes inside the input; any crash or sanitizer report is a bug. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint8_t sink;

static void check_file(const llep_st_file *f, const uint8_t *data, size_t size) {
    for (size_t i = 0; i < llep__st_count(f); i++) {
        const llep_st_tensor *t = llep__st_at(f, i);
        const uint8_t *p = t->data;

        if (p < data || p + t->nbytes > data + size || llep__st_find(f, t->name) != t) {
            fprintf(stderr, "tensor '%s' lies outside the input or cannot be found\n", t->name);
            abort();
        }
        /* Touch the bytes, so that a span past the input is a sanitizer report. */
        if (t->nbytes) {
            sink = p[0];
            sink = p[t->nbytes - 1];
        }
    }
}

static void check_index(const llep_index *ix) {
    for (size_t i = 0; i < ix->n; i++)
        if (ix->entries[i].file >= ix->nfiles ||
            llep__index_find(ix, ix->entries[i].tensor) != (int64_t)ix->entries[i].file ||
            strchr(ix->files[ix->entries[i].file], '/')) {
            fprintf(stderr, "index entry '%s' is inconsistent\n", ix->entries[i].tensor);
            abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512];
    llep_st_file *f;
    llep_index *ix;

    if (llep__st_parse(data, size, "fuzz.safetensors", &f, err, sizeof(err)) == 0) {
        check_file(f, data, size);
        llep__st_close(f);
    }
    if (llep__index_parse((const char *)data, size, "fuzz.index.json", &ix, err,
                          sizeof(err)) == 0) {
        check_index(ix);
        llep__index_free(ix);
    }
    return 0;
}
