/* The monotonic clock in seconds, for rates, timeouts and progress (never wall time). */
#ifndef QV_BASE_CLOCK_H
#define QV_BASE_CLOCK_H

#include <time.h>

static inline double qv_monotonic_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
