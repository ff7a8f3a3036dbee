/* One .safetensors file: an 8-byte little-endian header length N, N bytes of JSON naming each
 * tensor's dtype, shape and [begin, end) byte offsets into the data that follows.
 *
 * The parser takes the file whole and checks it as the reference implementation does
 * (huggingface/safetensors, Metadata::validate): the header within the file and at most
 * 100 MB, a JSON object, every tensor with a known dtype, a shape whose byte count matches
 * its offsets, tensors that tile the data without overlap or gap, and the file ending where
 * the last tensor does. Each failure is a message naming the file (the caller's label) and
 * the tensor, with -EINVAL. Tensor data is never read here, so the parser also serves the
 * fuzz target on in-memory buffers. */
#ifndef LLEP_MODEL_SAFETENSORS_H
#define LLEP_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* The dtypes of the format, by their header names. */
enum llep_st_dtype {
    LLEP_ST_BOOL,
    LLEP_ST_U8,
    LLEP_ST_I8,
    LLEP_ST_I16,
    LLEP_ST_U16,
    LLEP_ST_F16,
    LLEP_ST_BF16,
    LLEP_ST_I32,
    LLEP_ST_U32,
    LLEP_ST_F32,
    LLEP_ST_F64,
    LLEP_ST_I64,
    LLEP_ST_U64,
    LLEP_ST_C64,
    LLEP_ST_F8_E5M2,
    LLEP_ST_F8_E4M3,
    LLEP_ST_F8_E8M0,
    LLEP_ST_F6_E2M3,
    LLEP_ST_F6_E3M2,
    LLEP_ST_F4,
};

/* The header's largest length, as in the reference implementation (MAX_HEADER_SIZE). */
#define LLEP_ST_MAX_HEADER ((uint64_t)100000000u)

typedef struct llep_st_tensor {
    const char *name;
    enum llep_st_dtype dtype;
    uint32_t ndim;
    const uint64_t *shape;      /* ndim dimensions */
    uint64_t numel;
    const void *data;           /* inside the file's bytes; aligned only as the file made it */
    size_t nbytes;
} llep_st_tensor;

typedef struct llep_st_file llep_st_file;   /* opaque */

/* Parses the file image buf[0..len), which must outlive the result; label names it in
 * messages. Returns 0 with the file in *ret, or -EINVAL (malformed) / -ENOMEM with a message
 * in err and *ret NULL. */
int llep__st_parse(const void *buf, size_t len, const char *label, llep_st_file **ret,
                   char *err, size_t errlen);

/* Maps the file at path read-only (once) and parses it; label names it in messages (NULL:
 * the path). Close unmaps it. Errors as llep__st_parse, and -errno from open/fstat/mmap. */
int llep__st_open(const char *path, const char *label, llep_st_file **ret, char *err,
                  size_t errlen);

/* The label the file was opened with. */
const char *llep__st_label(const llep_st_file *f);

/* Its tensors, in name order. */
size_t llep__st_count(const llep_st_file *f);
const llep_st_tensor *llep__st_at(const llep_st_file *f, size_t i);

/* The tensor called name, or NULL. */
const llep_st_tensor *llep__st_find(const llep_st_file *f, const char *name);

/* "F32", "BF16", ... */
const char *llep__st_dtype_name(enum llep_st_dtype t);

/* Bytes of one element of t; 0 for the sub-byte dtypes (F4, F6_*). */
size_t llep__st_dtype_size(enum llep_st_dtype t);

/* Frees what llep__st_parse/open made (and unmaps); NULL is fine. */
void llep__st_close(llep_st_file *f);

#endif
