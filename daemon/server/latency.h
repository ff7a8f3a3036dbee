/* The monotonic clock, and step latencies kept for percentiles (llepctl stats) and counted in
 * a histogram of fixed buckets (the metrics endpoint, metrics.c). */
#ifndef LLEPD_LATENCY_H
#define LLEPD_LATENCY_H

#include <stdint.h>

/* Step latencies kept for percentiles: the most recent LLEPD_LAT_SAMPLES. */
#define LLEPD_LAT_SAMPLES 4096u

/* Upper bounds of the histogram's buckets in microseconds (llepd_latency_bounds_us), from
 * 50 us to 10 s; a last bucket counts the rest. */
#define LLEPD_LAT_BUCKETS 17u
extern const uint64_t llepd_latency_bounds_us[LLEPD_LAT_BUCKETS];

typedef struct llepd_latency {
    uint64_t us[LLEPD_LAT_SAMPLES];
    uint64_t count;
    /* Since start: steps per bucket (not cumulative; the last is above every bound) and
     * the sum of their latencies. */
    uint64_t buckets[LLEPD_LAT_BUCKETS + 1];
    uint64_t sum_us;
} llepd_latency;

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t llepd_now_ns(void);

void llepd_latency_add(llepd_latency *l, uint64_t us);
/* p in [0, 100]; 0 when empty. */
uint64_t llepd_latency_percentile(const llepd_latency *l, double p);

#endif
