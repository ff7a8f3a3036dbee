/* Backend and device choice at start (backend-select.h). */
#include "backend-select.h"
#include "backend-cuda.h"
#include "errbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llep-config.h"
#include "plan.h"

/* The memory each logical device may use: the smallest share of any GPU's free memory. */
static uint64_t share_per_device(const uint32_t *gpu_of, uint32_t n) {
#if LLEP_HAVE_CUDA
    uint32_t per[LLEP_SPEC_MAX_GPUS] = { 0 };
    uint64_t best = UINT64_MAX;

    for (uint32_t i = 0; i < n; i++)
        per[gpu_of[i]]++;
    for (uint32_t g = 0; g < LLEP_SPEC_MAX_GPUS; g++)
        if (per[g]) {
            uint64_t s = llep__cuda_free_bytes(g) / per[g];
            best = s < best ? s : best;
        }
    return best == UINT64_MAX ? 0 : best;
#else
    (void)gpu_of;
    (void)n;
    return 0;
#endif
}

static int choose_cpu(const llep_device_spec *s, const char *spec,
                      const llep_backend_ops **ret_ops, llep_backend_options *ret_opt) {
    *ret_ops = &llep__backend_cpu;
    memset(ret_opt, 0, sizeof(*ret_opt));
    ret_opt->num_devices = s->count;
    ret_opt->devices = spec;
    return 0;
}

int llep__backend_select_for(enum llep_backend_kind want, const char *devices_spec,
                             int visible, const char *why, const llep_backend_ops **ret_ops,
                             llep_backend_options *ret_opt, char *msg, size_t msglen) {
    llep_device_spec s;
    uint32_t *gpu_of;
    uint32_t n = 0;
    int r;

    if (!ret_ops || !ret_opt)
        return -EINVAL;
    if (!why)
        why = "no GPU";
#if !LLEP_HAVE_CUDA
    /* Without the CUDA backend nothing can use a GPU, however many there are. */
    if (visible > 0) {
        visible = -1;
        why = "this llepd was built without CUDA (meson -Dcuda=enabled)";
    }
#endif
    r = llep__device_spec_parse(devices_spec, &s, msg, msglen);
    if (r < 0)
        return r;
    if (want == LLEP_BACKEND_CPU && s.kind == LLEP_BACKEND_CUDA)
        return llep__errf(msg, msglen, -EINVAL, "--devices %s needs --backend cuda or auto",
                    devices_spec);
    if (want == LLEP_BACKEND_CUDA && s.kind == LLEP_BACKEND_CPU)
        return llep__errf(msg, msglen, -EINVAL, "--devices %s needs --backend cpu or auto",
                    devices_spec);
    if (want == LLEP_BACKEND_CPU || s.kind == LLEP_BACKEND_CPU) {
        llep__errf(msg, msglen, 0, "backend cpu%s", want == LLEP_BACKEND_AUTO ?
             " (auto: the device spec asks for CPU devices)" : "");
        return choose_cpu(&s, devices_spec, ret_ops, ret_opt);
    }
    if (visible <= 0) {
        if (want == LLEP_BACKEND_CUDA)
            return llep__errf(msg, msglen, -ENODEV, "--backend cuda: no usable GPU (%s); use "
                        "--backend cpu or auto", why);
        if (s.kind == LLEP_BACKEND_CUDA)
            return llep__errf(msg, msglen, -ENODEV, "--devices %s: no usable GPU (%s)", devices_spec,
                        why);
        llep__errf(msg, msglen, 0, "backend auto: no usable GPU (%s), using the CPU backend", why);
        return choose_cpu(&s, devices_spec, ret_ops, ret_opt);
    }
    gpu_of = calloc(LLEP_MAX_DEVICES, sizeof(*gpu_of));
    if (!gpu_of)
        return llep__errf(msg, msglen, -ENOMEM, "out of memory");
    char err[160] = "";
    r = llep__device_spec_map(&s, (uint32_t)visible, 0, gpu_of, LLEP_MAX_DEVICES, &n, err,
                              sizeof(err));
    if (r < 0) {
        free(gpu_of);
        return llep__errf(msg, msglen, r, "--devices %s: %s", devices_spec ? devices_spec : "",
                    err);
    }
    memset(ret_opt, 0, sizeof(*ret_opt));
    ret_opt->num_devices = n;
    ret_opt->devices = devices_spec;
    ret_opt->mem_per_device = share_per_device(gpu_of, n);
    free(gpu_of);
#if LLEP_HAVE_CUDA
    *ret_ops = &llep__backend_cuda;
#endif
    llep__errf(msg, msglen, 0, "backend %scuda: %u logical device%s on %d visible GPU%s%s%s",
         want == LLEP_BACKEND_AUTO ? "auto: " : "", n, n == 1 ? "" : "s", visible,
         visible == 1 ? "" : "s", devices_spec && *devices_spec ? ", devices " : "",
         devices_spec && *devices_spec ? devices_spec : "");
    return 0;
}

const llep_backend_ops *llep__backend_ops_of(enum llep_backend_kind kind) {
    if (kind != LLEP_BACKEND_CUDA)
        return &llep__backend_cpu;
#if LLEP_HAVE_CUDA
    return &llep__backend_cuda;
#else
    return NULL;
#endif
}

int llep__backend_select(enum llep_backend_kind want, const char *devices_spec,
                         const llep_backend_ops **ret_ops, llep_backend_options *ret_opt,
                         char *msg, size_t msglen) {
    char why[160] = "this llepd was built without CUDA (meson -Dcuda=enabled)";
    int visible = -1;

#if LLEP_HAVE_CUDA
    visible = llep__cuda_visible_gpus(why, sizeof(why));
#endif
    return llep__backend_select_for(want, devices_spec, visible, why, ret_ops, ret_opt, msg,
                                    msglen);
}
