/* quiver info: the backend in use, the GPU (or why there is none), versions. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli/cli.h"
#include "compute/backend.h"
#include "compute/device.h"

static const char usage[] =
    "usage: quiver info [--json] [--gpu auto|on|off] [--gpu-device N]\n"
    "Shows the compute backend Quiver uses, the GPU's name, compute capability, memory and\n"
    "CUDA driver/runtime versions, or the reason the GPU is not used. The GPU settings come\n"
    "from $QUIVER_GPU (auto|on|off) and $QUIVER_GPU_DEVICE unless given as flags; the plugin\n"
    "from $QUIVER_CUDA_PLUGIN, else libquiver-cuda.so next to the binary.\n";

static void version_str(char *buf, size_t cap, int v) {
  if (v > 0) snprintf(buf, cap, "%d.%d", v / 1000, (v % 1000) / 10);
  else snprintf(buf, cap, "unknown");
}

int cmd_info(int argc, char **argv) {
  int json = 0;
  const char *gpu = NULL, *gpu_dev = NULL, *data_dir = NULL;
  cli_opt opts[] = {{"json", NULL, &json},
                    {"gpu", &gpu, NULL},
                    {"gpu-device", &gpu_dev, NULL},
                    {"data-dir", &data_dir, NULL},
                    {0}};
  cli_parse(argc, argv, opts, NULL, 0, usage);
  (void)data_dir; /* accepted like every command's; info reads no data */

  qv_error err = {0};
  /* gpu: on without a GPU is reported, not fatal, here: saying why is this command's job */
  qv_status st = cli_gpu_setup(gpu, gpu_dev, &err);
  if (st && st != QV_EDEVICE) cli_check(st, &err, "gpu settings");

  qv_gpu_report r;
  qv_gpu_stats s;
  qv_gpu_report_get(&r);
  qv_gpu_stats_get(&s);
  char drv[32], rt[32];
  version_str(drv, sizeof drv, r.info.driver_version);
  version_str(rt, sizeof rt, r.info.runtime_version);

  if (json) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "version", QV_VERSION, "backend", r.backend, "gpu_mode",
                          qv_gpu_mode_name(r.mode), "cpu_isa", backend_cpu_isa(), "breaker",
                          s.breaker_state_name);
    /* exact search (and batched search) runs where new GPU work goes: the device unless
     * there is none or its breaker is open */
    json_object_set_new(o, "exact_search", json_string(s.backend));
    qv_gpu_config g;
    device_config(&g);
    json_object_set_new(o, "gpu_settings",
                        json_pack("{s:i, s:i, s:f, s:b, s:i, s:f, s:f}", "device_id", g.device_id, "batch_size",
                                  g.batch_size, "memory_fraction", g.memory_fraction, "fallback_to_cpu",
                                  g.fallback_to_cpu, "breaker_failures", g.breaker_failures, "breaker_cooldown_s",
                                  g.breaker_cooldown_s, "timeout_s", g.timeout_s));
    json_object_set_new(o, "reason", r.reason[0] ? json_string(r.reason) : json_null());
    json_object_set_new(o, "plugin", r.plugin[0] ? json_string(r.plugin) : json_null());
    if (r.have_device) {
      char cc[16];
      snprintf(cc, sizeof cc, "%d.%d", r.info.cc_major, r.info.cc_minor);
      json_object_set_new(o, "device",
                          json_pack("{s:i, s:i, s:s, s:s, s:I, s:I, s:s, s:s}", "id", r.info.device_id, "count",
                                    r.info.device_count, "name", r.info.name, "compute_capability", cc,
                                    "memory_total", (json_int_t)r.info.mem_total, "memory_used",
                                    (json_int_t)r.info.mem_used, "driver_version", drv, "runtime_version", rt));
    } else {
      json_object_set_new(o, "device", json_null());
    }
    char *txt = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!txt) cli_die("out of memory");
    puts(txt);
    free(txt);
    return 0;
  }
  printf("quiver %s\n", QV_VERSION);
  printf("backend:   %s\n", r.backend);
  printf("gpu mode:  %s\n", qv_gpu_mode_name(r.mode));
  printf("cpu isa:   %s\n", backend_cpu_isa());
  if (r.have_device) {
    printf("device:    %d of %d: %s\n", r.info.device_id, r.info.device_count, r.info.name);
    printf("compute:   %d.%d\n", r.info.cc_major, r.info.cc_minor);
    printf("memory:    %.1f GiB used of %.1f GiB\n", (double)r.info.mem_used / (1 << 30),
           (double)r.info.mem_total / (1 << 30));
    printf("cuda:      driver %s, runtime %s\n", drv, rt);
    printf("breaker:   %s (%" PRIu64 " opened, %" PRIu64 " fallbacks)\n", s.breaker_state_name, s.breaker_opens_total,
           s.fallbacks_total);
  } else {
    printf("gpu:       not used: %s\n", r.reason);
  }
  printf("exact search: %s\n", s.backend);
  if (r.plugin[0]) printf("plugin:    %s\n", r.plugin);
  return 0;
}
