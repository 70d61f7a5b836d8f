/*
 * The clocks, in one place: wall time for records (Unix microseconds), monotonic time for
 * durations and deadlines. Thread rule: reentrant.
 */
#pragma once

#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CLOCK_REALTIME in microseconds since the Unix epoch. */
static inline int64_t xr_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* CLOCK_MONOTONIC in microseconds. */
static inline int64_t xr_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* CLOCK_MONOTONIC in seconds, for latency histograms. */
static inline double xr_mono_s(void)
{
    return (double)xr_mono_us() / 1e6;
}

#ifdef __cplusplus
}
#endif
