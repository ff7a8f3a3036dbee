/* What backend selection asks of CUDA before any backend exists (backend-cuda.h). */
#include "backend-cuda.h"

#include <stdio.h>

#include <cuda_runtime_api.h>

int llep__cuda_visible_gpus(char *why, size_t whylen) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);

    if (e != cudaSuccess) {
        if (why && whylen)
            snprintf(why, whylen, "CUDA: %s", cudaGetErrorString(e));
        return -1;
    }
    if (n == 0) {
        if (why && whylen)
            snprintf(why, whylen, "CUDA: no device found");
        return -1;
    }
    return n;
}

uint64_t llep__cuda_free_bytes(uint32_t gpu) {
    size_t free_b = 0, total = 0;

    if (cudaSetDevice((int)gpu) != cudaSuccess || cudaMemGetInfo(&free_b, &total) != cudaSuccess)
        return 0;
    return free_b;
}
