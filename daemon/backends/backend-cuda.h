/* The CUDA backend from outside backends/: its ops table, the probes backend selection uses
 * and what tests and the NCCL transport ask of a running backend. No CUDA header is needed to
 * include this one, so that backend-select.c and the tests build the same with or without
 * CUDA; the definitions exist only in builds with LLEP_HAVE_CUDA. */
#ifndef LLEP_BACKEND_CUDA_H
#define LLEP_BACKEND_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* Logical devices on GPUs (backend-cuda.c): cuBLAS expert GEMMs, the kernels of moe-cuda.h,
 * NCCL weight transfers between GPUs, device-to-device copies between logical devices sharing
 * a GPU; busy time from CUDA events. */
extern const llep_backend_ops llep__backend_cuda;

/* Visible GPUs, or -1 when none is usable (why, if given, says so) (cuda-probe.c). */
int llep__cuda_visible_gpus(char *why, size_t whylen);
/* The free memory of one GPU, 0 when it cannot be read (cuda-probe.c). */
uint64_t llep__cuda_free_bytes(uint32_t gpu);

/* How this backend moves token rows between its logical devices: "nccl", "peer" (peer
 * access in the kernels) or "local" (one GPU: device-to-device). For tests and tools. */
const char *llep__cuda_dispatch_path(const llep_backend *b);
/* The CUDA ordinal of logical device dev, or -EINVAL (for xnode-nccl.c). */
int llep__cuda_device_ordinal(const llep_backend *b, uint32_t dev);

#endif
