/* The monotonic clock and latency percentiles (latency.h). */
#include "latency.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t llepd_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const uint64_t llepd_latency_bounds_us[LLEPD_LAT_BUCKETS] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000,
};

void llepd_latency_add(llepd_latency *l, uint64_t us) {
    uint32_t b = 0;

    l->us[l->count % LLEPD_LAT_SAMPLES] = us;
    l->count++;
    while (b < LLEPD_LAT_BUCKETS && us > llepd_latency_bounds_us[b])
        b++;
    l->buckets[b]++;
    l->sum_us += us;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sorting a copy of at most 4096 samples per llepctl request costs far less than the request. */
uint64_t llepd_latency_percentile(const llepd_latency *l, double p) {
    uint64_t n = l->count < LLEPD_LAT_SAMPLES ? l->count : LLEPD_LAT_SAMPLES;
    uint64_t tmp[LLEPD_LAT_SAMPLES];

    if (n == 0)
        return 0;
    memcpy(tmp, l->us, n * sizeof(*tmp));
    qsort(tmp, n, sizeof(*tmp), cmp_u64);
    uint64_t i = (uint64_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return tmp[i < n ? i : n - 1];
}
