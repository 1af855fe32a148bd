/* Device detection without a GPU: the config and its env overrides, and plugin loading
 * through the real dlopen path with a test plugin (tests/unit/fake_plugin.c) that has no
 * device, claims a wrong API version, or gives a device whose every unit fails. */
#include <stdatomic.h>
#include <stdlib.h>

#include "compute/device.h"
#include "test.h"

#ifndef QV_FAKE_PLUGIN
#error "the build passes the fake plugin's path"
#endif

TEST(config_defaults_and_env) {
  qv_gpu_config c;
  qv_gpu_config_default(&c);
  ASSERT_EQ(c.enabled, QV_GPU_AUTO);
  ASSERT_EQ(c.device_id, 0);
  ASSERT_EQ(c.fallback_to_cpu, 1);
  ASSERT_EQ(c.breaker_failures, 3);
  ASSERT_NEAR(c.breaker_cooldown_s, 300, 0);
  setenv("QUIVER_GPU", "off", 1);
  setenv("QUIVER_GPU_DEVICE", "2", 1);
  ASSERT_OK(qv_gpu_config_env(&c, NULL));
  ASSERT_EQ(c.enabled, QV_GPU_OFF);
  ASSERT_EQ(c.device_id, 2);
  setenv("QUIVER_GPU", "sometimes", 1);
  qv_error err = {0};
  ASSERT_STATUS(qv_gpu_config_env(&c, &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "QUIVER_GPU") != NULL);
  setenv("QUIVER_GPU", "ON", 1);
  setenv("QUIVER_GPU_DEVICE", "x1", 1);
  ASSERT_STATUS(qv_gpu_config_env(&c, &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "QUIVER_GPU_DEVICE") != NULL);
  unsetenv("QUIVER_GPU");
  unsetenv("QUIVER_GPU_DEVICE");
  qv_gpu_mode m;
  ASSERT_OK(qv_gpu_mode_parse(&m, "true"));
  ASSERT_EQ(m, QV_GPU_ON);
  ASSERT_OK(qv_gpu_mode_parse(&m, "auto"));
  ASSERT_EQ(m, QV_GPU_AUTO);
  ASSERT_STATUS(qv_gpu_mode_parse(&m, ""), QV_EINVAL);
}

TEST(config_out_of_range_is_refused) {
  qv_gpu_config c;
  qv_gpu_config_default(&c);
  c.memory_fraction = 1.5;
  qv_error err = {0};
  ASSERT_STATUS(qv_gpu_config_apply(&c, &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "memory_fraction") != NULL);
  qv_gpu_config_default(&c);
  c.breaker_failures = 0;
  ASSERT_STATUS(qv_gpu_config_apply(&c, &err), QV_EINVAL);
}

TEST(off_by_config) {
  qv_gpu_config c;
  qv_gpu_config_default(&c);
  c.enabled = QV_GPU_OFF;
  ASSERT_OK(qv_gpu_config_apply(&c, NULL));
  qv_gpu_report r;
  qv_gpu_report_get(&r);
  ASSERT(!strcmp(r.backend, "cpu"));
  ASSERT(strstr(r.reason, "disabled by config") != NULL);
  ASSERT(device_dispatch()->gpu == NULL);
}

TEST(auto_without_driver_or_plugin_runs_on_cpu_and_says_why) {
  unsetenv("QUIVER_CUDA_PLUGIN");
  qv_gpu_config c;
  qv_gpu_config_default(&c);
  ASSERT_OK(qv_gpu_config_apply(&c, NULL));
  qv_gpu_report r;
  qv_gpu_report_get(&r);
  if (!strcmp(r.backend, "cuda")) SKIP("this machine has a working GPU");
  ASSERT(r.reason[0] != 0);
  ASSERT(strstr(r.reason, "no plugin built") || strstr(r.reason, "no CUDA driver") || strstr(r.reason, "device"));
  /* on: the same, but refused */
  c.enabled = QV_GPU_ON;
  qv_error err = {0};
  ASSERT_STATUS(qv_gpu_config_apply(&c, &err), QV_EDEVICE);
  ASSERT(strstr(err.msg, "gpu is on") != NULL);
  ASSERT(device_dispatch()->gpu == NULL); /* still usable on the CPU */
}

TEST(plugin_missing_file) {
  setenv("QUIVER_CUDA_PLUGIN", "/nonexistent/libquiver-cuda.so", 1);
  qv_gpu_config c;
  qv_gpu_config_default(&c);
  ASSERT_OK(qv_gpu_config_apply(&c, NULL));
  qv_gpu_report r;
  qv_gpu_report_get(&r);
  ASSERT(!strcmp(r.backend, "cpu"));
  ASSERT(strstr(r.reason, "no plugin at QUIVER_CUDA_PLUGIN") != NULL);
  unsetenv("QUIVER_CUDA_PLUGIN");
}

TEST(plugin_not_a_library) {
  const char *dir = getenv("QUIVER_TEST_TMP");
  char p[1024];
  snprintf(p, sizeof p, "%s/not-a-plugin.so", dir ? dir : "/tmp");
  char cmd[1100];
  snprintf(cmd, sizeof cmd, "mkdir -p %s", dir ? dir : "/tmp");
  ASSERT_EQ(system(cmd), 0);
  FILE *f = fopen(p, "w");
  ASSERT(f != NULL);
  fputs("not an ELF file\n", f);
  fclose(f);
  setenv("QUIVER_CUDA_PLUGIN", p, 1);
  qv_gpu_config c;
  qv_gpu_config_default(&c);
  ASSERT_OK(qv_gpu_config_apply(&c, NULL));
  qv_gpu_report r;
  qv_gpu_report_get(&r);
  ASSERT(!strcmp(r.backend, "cpu"));
  ASSERT(strstr(r.reason, "dlopen failed") != NULL);
  unsetenv("QUIVER_CUDA_PLUGIN");
}

TEST(plugin_without_device_reports_its_reason) {
  setenv("QUIVER_CUDA_PLUGIN", QV_FAKE_PLUGIN, 1);
  setenv("QV_FAKE_PLUGIN_MODE", "nodevice", 1);
  qv_gpu_config c;
  qv_gpu_config_default(&c);
  ASSERT_OK(qv_gpu_config_apply(&c, NULL));
  qv_gpu_report r;
  qv_gpu_report_get(&r);
  ASSERT(!strcmp(r.backend, "cpu"));
  ASSERT(!strcmp(r.reason, "fake: no CUDA device"));
  ASSERT(!strcmp(r.plugin, QV_FAKE_PLUGIN));
  setenv("QV_FAKE_PLUGIN_MODE", "badversion", 1);
  ASSERT_OK(qv_gpu_config_apply(&c, NULL));
  qv_gpu_report_get(&r);
  ASSERT(!strcmp(r.backend, "cpu"));
  ASSERT(strstr(r.reason, "API version 99") != NULL);
  unsetenv("QUIVER_CUDA_PLUGIN");
  unsetenv("QV_FAKE_PLUGIN_MODE");
}

typedef struct unit {
  float out[2];
} unit;

static qv_status unit_run(const qv_backend *be, void *arg) {
  unit *u = arg;
  static const float x[2] = {1, 2}, w[2 * 2] = {1, 1, 0, 3};
  be->linear(be->ctx, u->out, x, w, NULL, 1, 2, 2);
  return QV_OK;
}

TEST(broken_device_is_used_and_falls_back) {
  setenv("QUIVER_CUDA_PLUGIN", QV_FAKE_PLUGIN, 1);
  setenv("QV_FAKE_PLUGIN_MODE", "broken", 1);
  qv_gpu_config c;
  qv_gpu_config_default(&c);
  c.enabled = QV_GPU_ON;
  ASSERT_OK(qv_gpu_config_apply(&c, NULL));
  qv_gpu_report r;
  qv_gpu_report_get(&r);
  ASSERT(!strcmp(r.backend, "cuda"));
  ASSERT(r.have_device);
  ASSERT(!strcmp(r.info.name, "Fake GPU"));
  ASSERT_EQ(r.info.cc_major, 9);
  compute_dispatch *d = device_dispatch();
  for (int i = 0; i < 4; i++) {
    unit u = {{-1, -1}};
    const qv_backend *used;
    ASSERT_OK(dispatch_run(d, unit_run, &u, &used, NULL));
    ASSERT(used == backend_cpu());
    ASSERT_NEAR(u.out[0], 3, 0);
    ASSERT_NEAR(u.out[1], 6, 0);
  }
  qv_gpu_stats s;
  qv_gpu_stats_get(&s);
  ASSERT_EQ(s.gpu_failures_total, 3);
  ASSERT_EQ(s.fallbacks_total, 4);
  ASSERT(!strcmp(s.breaker_state_name, "open"));
  ASSERT_U64_EQ(s.mem_total, (size_t)1 << 30);
  unsetenv("QUIVER_CUDA_PLUGIN");
  unsetenv("QV_FAKE_PLUGIN_MODE");
  c.enabled = QV_GPU_OFF;
  ASSERT_OK(qv_gpu_config_apply(&c, NULL));
}

TEST_MAIN(T(config_defaults_and_env), T(config_out_of_range_is_refused), T(off_by_config),
          T(auto_without_driver_or_plugin_runs_on_cpu_and_says_why), T(plugin_missing_file), T(plugin_not_a_library),
          T(plugin_without_device_reports_its_reason), T(broken_device_is_used_and_falls_back))
