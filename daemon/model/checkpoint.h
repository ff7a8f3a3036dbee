/* A Hugging Face style checkpoint directory: config.json, and the weights in .safetensors
 * files, found through model.safetensors.index.json (its weight_map names each tensor's file)
 * or, without an index, in model.safetensors alone, else in every *.safetensors file of the
 * directory. Each file is mapped once, read-only, when the checkpoint is opened, and every
 * tensor the index names is checked to be in its file then; close unmaps everything. */
#ifndef LLEP_MODEL_CHECKPOINT_H
#define LLEP_MODEL_CHECKPOINT_H

#include <json-c/json.h>
#include <stddef.h>

#include "safetensors.h"

typedef struct llep_ckpt llep_ckpt;   /* opaque */

/* Opens the checkpoint in dir. Returns 0 with it in *ret, or a negative errno with a message
 * naming the file (and tensor) that is wrong: -ENOENT (no config.json, no weights), -EINVAL
 * (malformed), -ENOMEM, or open/mmap's errno. */
int llep__ckpt_open(const char *dir, llep_ckpt **ret, char *err, size_t errlen);

/* config.json's object, owned by the checkpoint, and that file's path for messages. */
json_object *llep__ckpt_config(const llep_ckpt *c);
const char *llep__ckpt_config_path(const llep_ckpt *c);

/* The tensor called name, and the path of the file that holds it in *ret_file (may be NULL);
 * NULL when the checkpoint has no such tensor. */
const llep_st_tensor *llep__ckpt_find(const llep_ckpt *c, const char *name,
                                      const char **ret_file);

/* -ENOENT with a message saying where a tensor that is not there was looked for. */
int llep__ckpt_missing(const llep_ckpt *c, const char *name, char *err, size_t errlen);

/* Unmaps and frees everything; NULL is fine. */
void llep__ckpt_close(llep_ckpt *c);

#endif
