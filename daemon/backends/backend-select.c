/* Backend and device choice at start (backend-select.h). */
#include "backend-select.h"
#include "errbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llep-config.h"
#include "plan.h"

#if LLEP_HAVE_CUDA
/* backend-cuda.c: visible GPUs (< 0 when none is usable, why in the buffer) and the free
 * memory of one. */
int llep__cuda_visible_gpus(char *why, size_t whylen);
uint64_t llep__cuda_free_bytes(uint32_t gpu);
#endif

/* A decimal number in [1, LLEP_MAX_DEVICES] running up to `end`. */
static int parse_count(const char *s, const char *end, uint32_t *ret) {
    uint64_t v = 0;

    if (s == end)
        return -EINVAL;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9')
            return -EINVAL;
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > LLEP_MAX_DEVICES)
            return -EINVAL;
    }
    *ret = (uint32_t)v;
    return 0;
}

static int parse_cuda_items(const char *s, llep_device_spec *ret, char *msg, size_t msglen) {
    uint64_t total = 0;

    if (*s == '\0' || strcmp(s, "all") == 0)
        return 0;
    while (*s) {
        const char *end = strchr(s, ',');
        if (!end)
            end = s + strlen(s);
        const char *x = memchr(s, 'x', (size_t)(end - s));
        uint32_t gpu, per = 1;
        if (parse_count(s, x ? x : end, &gpu) < 0)
            return llep__errf(msg, msglen, -EINVAL, "'%.*s' is not a GPU number", (int)(end - s), s);
        if (gpu >= LLEP_SPEC_MAX_GPUS)
            return llep__errf(msg, msglen, -EINVAL, "GPU %u: at most %u GPUs are supported", gpu,
                        LLEP_SPEC_MAX_GPUS);
        if (x && (parse_count(x + 1, end, &per) < 0 || per == 0))
            return llep__errf(msg, msglen, -EINVAL, "'%.*s': the count after 'x' must be 1..%u",
                        (int)(end - s), s, LLEP_MAX_DEVICES);
        for (uint32_t i = 0; i < ret->num_items; i++)
            if (ret->gpu[i] == gpu)
                return llep__errf(msg, msglen, -EINVAL, "GPU %u is named twice (use cuda:%ux%u)",
                            gpu, gpu, 2u);
        if (ret->num_items == LLEP_SPEC_MAX_GPUS)
            return llep__errf(msg, msglen, -EINVAL, "more than %u GPUs", LLEP_SPEC_MAX_GPUS);
        total += per;
        if (total > LLEP_MAX_DEVICES)
            return llep__errf(msg, msglen, -EINVAL, "more than %u logical devices", LLEP_MAX_DEVICES);
        ret->gpu[ret->num_items] = gpu;
        ret->per_gpu[ret->num_items++] = per;
        if (*end == '\0')
            break;
        s = end + 1;
        if (*s == '\0')
            return llep__errf(msg, msglen, -EINVAL, "trailing ',' in the GPU list");
    }
    return 0;
}

int llep__device_spec_parse(const char *spec, llep_device_spec *ret, char *msg, size_t msglen) {
    if (!ret)
        return -EINVAL;
    memset(ret, 0, sizeof(*ret));
    ret->kind = LLEP_BACKEND_AUTO;
    if (!spec || *spec == '\0')
        return 0;
    if (strncmp(spec, "cpu:", 4) == 0) {
        ret->kind = LLEP_BACKEND_CPU;
        if (parse_count(spec + 4, spec + strlen(spec), &ret->count) < 0 || ret->count == 0)
            return llep__errf(msg, msglen, -EINVAL, "devices '%s': cpu:N needs N in 1..%u", spec,
                        LLEP_MAX_DEVICES);
        return 0;
    }
    if (strcmp(spec, "cuda") == 0 || strncmp(spec, "cuda:", 5) == 0) {
        ret->kind = LLEP_BACKEND_CUDA;
        char why[160] = "";
        int r = parse_cuda_items(spec[4] ? spec + 5 : spec + 4, ret, why, sizeof(why));
        if (r < 0)
            return llep__errf(msg, msglen, r, "devices '%s': %s", spec, why);
        if (spec[4] == ':' && spec[5] == '\0')
            return llep__errf(msg, msglen, -EINVAL, "devices '%s': no GPU after 'cuda:'", spec);
        return 0;
    }
    if (parse_count(spec, spec + strlen(spec), &ret->count) < 0 || ret->count == 0)
        return llep__errf(msg, msglen, -EINVAL, "devices '%s': expected N, cpu:N, cuda, cuda:all, "
                    "cuda:0,1,... or cuda:0x4", spec);
    return 0;
}

int llep__device_spec_map(const llep_device_spec *s, uint32_t visible, uint32_t num_devices,
                          uint32_t *gpu_of, uint32_t max, uint32_t *ret_n, char *msg,
                          size_t msglen) {
    uint32_t n = 0;

    if (!s || !ret_n || (max && !gpu_of))
        return -EINVAL;
    if (visible == 0)
        return llep__errf(msg, msglen, -EINVAL, "no GPU is visible");
    if (s->kind == LLEP_BACKEND_CPU)
        return llep__errf(msg, msglen, -EINVAL, "cpu:N is not a GPU spec");
    if (s->num_items > 0) {
        for (uint32_t i = 0; i < s->num_items; i++) {
            if (s->gpu[i] >= visible)
                return llep__errf(msg, msglen, -EINVAL, "GPU %u does not exist (%u visible)",
                            s->gpu[i], visible);
            for (uint32_t j = 0; j < s->per_gpu[i]; j++, n++)
                if (n < max)
                    gpu_of[n] = s->gpu[i];
        }
    } else {
        /* A count, or every visible GPU once; num_devices fills in when neither says. */
        uint32_t want = s->count ? s->count : (s->kind == LLEP_BACKEND_CUDA || !num_devices)
                                                  ? (visible < LLEP_SPEC_MAX_GPUS
                                                         ? visible : LLEP_SPEC_MAX_GPUS)
                                                  : num_devices;
        uint32_t gpus = visible < LLEP_SPEC_MAX_GPUS ? visible : LLEP_SPEC_MAX_GPUS;
        if (want > gpus && want % gpus != 0)
            return llep__errf(msg, msglen, -EINVAL, "%u logical devices do not split evenly over "
                        "%u GPUs; name them, e.g. cuda:0x%u", want, gpus, want);
        uint32_t per = want > gpus ? want / gpus : 1;
        for (n = 0; n < want; n++)
            if (n < max)
                gpu_of[n] = n / per;
    }
    if (n > max)
        return llep__errf(msg, msglen, -EINVAL, "%u logical devices, at most %u", n, max);
    if (num_devices && n != num_devices)
        return llep__errf(msg, msglen, -EINVAL, "the spec gives %u logical devices, %u are needed", n,
                    num_devices);
    *ret_n = n;
    return 0;
}

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
