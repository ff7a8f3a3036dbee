/* What model.c (opening, checking) and model-weights.c (converting a layer) share. */
#ifndef LLEP_MODEL_INTERNAL_H
#define LLEP_MODEL_INTERNAL_H

#include "checkpoint.h"
#include "family.h"
#include "model.h"

struct llep_model {
    llep_ckpt *ckpt;
    llep_family_config cfg;
    llep_model_config info;
    enum llep_storage *storage;     /* how each MoE layer is stored, found at open */
};

#endif
