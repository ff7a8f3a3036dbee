/* Choosing the backend and its devices at start (llepd --backend, --devices).
 *
 * The devices are named by a device spec (device-spec.h).
 * Library code: nothing here logs; messages go to the caller's buffer. */
#ifndef LLEP_BACKEND_SELECT_H
#define LLEP_BACKEND_SELECT_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "device-spec.h"
#include "config.h"

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

/* The ops table of a chosen backend kind: the CPU backend for LLEP_BACKEND_CPU (and AUTO, for
 * a caller that did not choose), the CUDA backend for LLEP_BACKEND_CUDA; NULL when this build
 * has no CUDA backend. */
const llep_backend_ops *llep__backend_ops_of(enum llep_backend_kind kind);

/* The decision of llep__backend_select for a given GPU count (visible < 0: no driver or no
 * CUDA in this build, `why` says which), so that it can be tested on any machine. */
int llep__backend_select_for(enum llep_backend_kind want, const char *devices_spec,
                             int visible, const char *why, const llep_backend_ops **ret_ops,
                             llep_backend_options *ret_opt, char *msg, size_t msglen);

#endif
