/* The GPU harnesses' shared pieces: a fixed random stream, random host vectors, and the
 * comparison that counts and prints each check (tests/gpu/test_gpu_*.c). */
#ifndef QV_TESTS_GPU_HARNESS_H
#define QV_TESTS_GPU_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/mem.h"
#include "compute/device.h"

static int failures, checks;

static unsigned long long rng = 88172645463325252ull;
static float frand(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static float *rand_vec(size_t n, float scale) {
  float *v = qv_aligned_alloc((n ? n : 1) * sizeof *v);
  if (!v) {
    fprintf(stderr, "out of memory\n");
    exit(2);
  }
  for (size_t i = 0; i < n; i++) v[i] = frand() * scale;
  return v;
}

static void compare(const char *what, const float *gpu, const float *cpu, size_t n, double rel) {
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)gpu[i] - cpu[i]) / (1 + fabs((double)cpu[i]));
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  checks++;
  int ok = worst <= rel;
  if (!ok) failures++;
  printf("%-4s %-44s max rel err %.3g (tolerance %.3g)%s\n", ok ? "ok" : "FAIL", what, worst, rel,
         ok ? "" : " <-");
  if (!ok) printf("     at %zu: gpu %g cpu %g\n", at, gpu[at], cpu[at]);
}

/* The GPU backend the device layer loads with gpu on, its name and compute capability
 * printed; exits 2 with the reason when no GPU works. */
static const qv_backend *harness_gpu(const char *prog) {
  qv_gpu_config cfg;
  qv_error err = {0};
  qv_gpu_config_default(&cfg);
  cfg.enabled = QV_GPU_ON;
  if (qv_gpu_config_apply(&cfg, &err)) {
    fprintf(stderr, "%s: %s\n", prog, err.msg);
    exit(2);
  }
  qv_gpu_report r;
  qv_gpu_report_get(&r);
  printf("device: %s (compute %d.%d)\n", r.info.name, r.info.cc_major, r.info.cc_minor);
  return device_dispatch()->gpu;
}

#endif
