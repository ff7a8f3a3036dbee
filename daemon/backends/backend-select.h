/* Choosing the backend and its devices at start (llepd --backend, --devices).
 *
 * Device specs:
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
#ifndef LLEP_BACKEND_SELECT_H
#define LLEP_BACKEND_SELECT_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
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

/* Picks the backend for `want` and the device spec. On success *ret_ops is the backend and
 * *ret_opt says how many logical devices it drives (0 for the CPU backend when the spec gave
 * none: the caller's default), the spec to pass on (ret_opt->devices points into
 * devices_spec, which must outlive the backend's creation) and, for CUDA, the memory each
 * logical device may use (ret_opt->mem_per_device). msg is always set: what was chosen and
 * why (auto falling back to the CPU says so), or why nothing could be. Returns 0, -EINVAL
 * (bad spec, or a spec for another backend) or -ENODEV (cuda asked for, none usable). */
int llep__backend_select(enum llep_backend_kind want, const char *devices_spec,
                         const llep_backend_ops **ret_ops, llep_backend_options *ret_opt,
                         char *msg, size_t msglen);

/* The decision of llep__backend_select for a given GPU count (visible < 0: no driver or no
 * CUDA in this build, `why` says which), so that it can be tested on any machine. */
int llep__backend_select_for(enum llep_backend_kind want, const char *devices_spec,
                             int visible, const char *why, const llep_backend_ops **ret_ops,
                             llep_backend_options *ret_opt, char *msg, size_t msglen);

#endif
