/* The monotonic clock, and step latencies kept for percentiles (llepctl stats). */
#ifndef LLEPD_LATENCY_H
#define LLEPD_LATENCY_H

#include <stdint.h>

/* Step latencies kept for percentiles: the most recent LLEPD_LAT_SAMPLES. */
#define LLEPD_LAT_SAMPLES 4096u

typedef struct llepd_latency {
    uint64_t us[LLEPD_LAT_SAMPLES];
    uint64_t count;
} llepd_latency;

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t llepd_now_ns(void);

void llepd_latency_add(llepd_latency *l, uint64_t us);
/* p in [0, 100]; 0 when empty. */
uint64_t llepd_latency_percentile(const llepd_latency *l, double p);

#endif
