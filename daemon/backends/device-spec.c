/* Parsing device specs and mapping them onto the visible GPUs (device-spec.h). */
#include "device-spec.h"
#include "errbuf.h"

#include <errno.h>
#include <string.h>

#include "plan.h"

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
