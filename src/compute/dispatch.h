/* Dispatch: each unit of work (one forward pass, one batch of searches) tries the GPU
 * backend when there is one and the breaker allows it, and reruns on the CPU backend when
 * the GPU fails, so a failing GPU never turns into an error for the client.
 *
 * A unit of work is a function of the backend it runs on. It must be repeatable: its
 * outputs are written afresh by every run (a GPU run that failed half-way is simply run
 * again on the CPU). What counts as a GPU failure: the work returning QV_EDEVICE, the
 * backend's status hook reporting an error after it, or the work taking longer than
 * timeout_s by the breaker's clock. Any other error from the work is the input's fault
 * and is returned as it is (the breaker counts it as a GPU success: the device answered).
 * A run that only timed out still succeeded, so its results are kept (rerunning would add
 * latency, not correctness); it still counts against the breaker. */
#ifndef QV_COMPUTE_DISPATCH_H
#define QV_COMPUTE_DISPATCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "compute/backend.h"
#include "compute/breaker.h"
#include "quiver.h"

typedef struct compute_dispatch {
  const qv_backend *gpu;   /* NULL: CPU only */
  const qv_backend *cpu;   /* never NULL */
  breaker br;
  /* One unit on the GPU at a time: the backend's status hook reports errors per backend,
   * not per caller, so two interleaved units could each see the other's failure. The
   * device runs one stream anyway, so little parallelism is lost. */
  pthread_mutex_t gpu_mu;
  int fallback_to_cpu;     /* 0: a GPU failure is returned as QV_EDEVICE */
  double timeout_s;        /* <= 0: no timeout */
  _Atomic uint64_t gpu_runs;     /* units that completed on the GPU */
  _Atomic uint64_t cpu_runs;     /* units that ran on the CPU (for any reason) */
  _Atomic uint64_t fallbacks;    /* units meant for the GPU that ran on the CPU */
  _Atomic uint64_t gpu_failures; /* GPU failures and timeouts */
} compute_dispatch;

typedef qv_status (*dispatch_work)(const qv_backend *be, void *arg);

void dispatch_init(compute_dispatch *d, const qv_backend *gpu, int fallback_to_cpu, double timeout_s,
                   int breaker_threshold, double breaker_recovery_s, breaker_clock clock, void *clock_arg);
void dispatch_destroy(compute_dispatch *d);

/* Runs work once (or twice: GPU, then CPU). used (may be NULL) gets the backend whose
 * results stand. */
qv_status dispatch_run(compute_dispatch *d, dispatch_work work, void *arg, const qv_backend **used,
                       qv_error *err);

#endif
