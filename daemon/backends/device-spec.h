/* Device specs (llepd --devices, llep-bench --devices): which logical devices to run and on
 * which GPUs:
 *   NULL or ""          the backend's default: one logical device per visible GPU (CUDA), the
 *                       caller's default count (CPU)
 *   N                   N logical devices: GPUs 0..N-1 when N <= the visible GPUs, else N / G
 *                       on each of the G visible GPUs (N must then be a multiple of G)
 *   cpu:N               N CPU logical devices (CPU backend only)
 *   cuda, cuda:all      one logical device per visible GPU
 *   cuda:0,1,3          those GPUs, one logical device each
 *   cuda:0x4            4 logical devices on GPU 0 (copies between them are device-to-device)
 *   cuda:0x4,1x4        items combine; logical devices are numbered in the order given
 * Library code: nothing here logs; messages go to the caller's buffer. */
#ifndef LLEP_DEVICE_SPEC_H
#define LLEP_DEVICE_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* GPUs a spec may name, and GPUs the CUDA backend drives at once. */
#define LLEP_SPEC_MAX_GPUS 64u

typedef struct llep_device_spec {
    enum llep_backend_kind kind;   /* CPU for "cpu:N", CUDA for "cuda...", else AUTO */
    uint32_t count;                /* "N" or "cpu:N"; 0 when not given */
    uint32_t num_items;            /* "cuda:..." items; 0: every visible GPU */
    uint32_t gpu[LLEP_SPEC_MAX_GPUS], per_gpu[LLEP_SPEC_MAX_GPUS];
} llep_device_spec;

/* Parses a device spec. Returns 0 or -EINVAL with a message. */
int llep__device_spec_parse(const char *spec, llep_device_spec *ret, char *msg, size_t msglen);

/* The GPU of each logical device for a parsed spec on a machine with `visible` GPUs:
 * gpu_of[0..*ret_n) (at most max entries). num_devices > 0 is the count the caller needs
 * (e.g. the engine's P); a spec giving another count is an error. Returns 0 or -EINVAL. */
int llep__device_spec_map(const llep_device_spec *s, uint32_t visible, uint32_t num_devices,
                          uint32_t *gpu_of, uint32_t max, uint32_t *ret_n, char *msg,
                          size_t msglen);

#endif
