/* Per-unit GPU -> CPU dispatch with the circuit breaker; the rules are in dispatch.h. */
#include "compute/dispatch.h"

#include "base/error.h"
#include "base/log.h"

void dispatch_init(compute_dispatch *d, const qv_backend *gpu, int fallback_to_cpu, double timeout_s,
                   int breaker_threshold, double breaker_recovery_s, breaker_clock clock, void *clock_arg) {
  d->gpu = gpu;
  d->cpu = backend_cpu();
  d->fallback_to_cpu = fallback_to_cpu;
  d->timeout_s = timeout_s;
  breaker_init(&d->br, breaker_threshold, breaker_recovery_s, clock, clock_arg);
  pthread_mutex_init(&d->gpu_mu, NULL);
  atomic_store(&d->gpu_runs, 0);
  atomic_store(&d->cpu_runs, 0);
  atomic_store(&d->fallbacks, 0);
  atomic_store(&d->gpu_failures, 0);
}

void dispatch_destroy(compute_dispatch *d) {
  breaker_destroy(&d->br);
  pthread_mutex_destroy(&d->gpu_mu);
}

qv_status dispatch_run(compute_dispatch *d, dispatch_work work, void *arg, const qv_backend **used,
                       qv_error *err) {
  if (d->gpu) {
    if (breaker_allow(&d->br)) {
      pthread_mutex_lock(&d->gpu_mu);
      double t0 = breaker_now(&d->br);
      qv_status st = work(d->gpu, arg);
      qv_status dev = d->gpu->status ? d->gpu->status(d->gpu->ctx) : QV_OK;
      double dt = breaker_now(&d->br) - t0;
      pthread_mutex_unlock(&d->gpu_mu);
      int slow = d->timeout_s > 0 && dt > d->timeout_s;
      if (st && st != QV_EDEVICE && !dev) {
        breaker_success(&d->br); /* the input was refused; the device is fine */
        return st;
      }
      if (!st && !dev) {
        if (slow) {
          breaker_failure(&d->br);
          atomic_fetch_add(&d->gpu_failures, 1);
          LOG_WARN("gpu: a unit of work took %.3f s (timeout %.3f s); counted as a failure", dt, d->timeout_s);
        } else {
          breaker_success(&d->br);
        }
        atomic_fetch_add(&d->gpu_runs, 1);
        if (used) *used = d->gpu;
        return QV_OK;
      }
      breaker_failure(&d->br);
      atomic_fetch_add(&d->gpu_failures, 1);
      qv_status why = dev ? dev : st;
      if (!d->fallback_to_cpu)
        return qv_fail(err, QV_EDEVICE, "the GPU failed (%s) and CPU fallback is off", qv_strerror(why));
      LOG_WARN("gpu: %s; rerunning on the CPU (breaker %s)", qv_strerror(why),
               breaker_state_name(breaker_get_state(&d->br)));
    } else if (!d->fallback_to_cpu) {
      return qv_fail(err, QV_EDEVICE, "the GPU is unavailable (circuit breaker open) and CPU fallback is off");
    }
    atomic_fetch_add(&d->fallbacks, 1);
  }
  atomic_fetch_add(&d->cpu_runs, 1);
  if (used) *used = d->cpu;
  return work(d->cpu, arg);
}
