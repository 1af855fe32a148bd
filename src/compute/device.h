/* Devices: which backend Quiver computes on, and why.
 *
 * At start-up (the first device_dispatch(), or qv_gpu_config_apply from the server's
 * config) the device layer looks for the CUDA plugin, dlopens it and asks it for a
 * device. Any step may fail -- no plugin built, dlopen failed (no cudart / cuBLAS), no
 * driver, no device, disabled by config -- and then Quiver runs on the CPU and keeps the
 * reason for `quiver info` and the metrics. Where the plugin is looked for, in order:
 *   1. $QUIVER_CUDA_PLUGIN (a path; when set, only it)
 *   2. libquiver-cuda.so next to the executable
 *   3. ../lib/quiver/libquiver-cuda.so relative to the executable's directory
 *   4. QV_PLUGIN_DIR (the install prefix's lib/quiver, fixed at build time) */
#ifndef QV_COMPUTE_DEVICE_H
#define QV_COMPUTE_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "compute/dispatch.h"
#include "compute/plugin.h"
#include "quiver.h"

typedef enum { QV_GPU_AUTO = 0, QV_GPU_ON = 1, QV_GPU_OFF = 2 } qv_gpu_mode;

/* The GPU settings (config file "gpu:" section, env, flags). Each has one key, one parser
 * and one range check (qv_gpu_config_set), whichever way it arrives:
 *   key                    env                            default
 *   gpu.enabled            QUIVER_GPU                     auto
 *   gpu.device_id          QUIVER_GPU_DEVICE              0
 *   gpu.batch_size         QUIVER_GPU_BATCH_SIZE          64
 *   gpu.memory_fraction    QUIVER_GPU_MEMORY_FRACTION     0.8
 *   gpu.fallback_to_cpu    QUIVER_GPU_FALLBACK            true
 *   gpu.breaker_failures   QUIVER_GPU_BREAKER_FAILURES    3
 *   gpu.breaker_cooldown_s QUIVER_GPU_BREAKER_COOLDOWN    300
 *   gpu.timeout_s          QUIVER_GPU_TIMEOUT             30 */
typedef struct qv_gpu_config {
  qv_gpu_mode enabled;     /* auto: use a GPU when one works; on: refuse to start without
                            * one; off: never look */
  int device_id;           /* default 0 */
  int batch_size;          /* queries per unit of device search work (one GEMM + top-k,
                            * one dispatch_run); default 64. The encoder's batches are
                            * bounded by tokens (the server's batching.max_tokens), not by
                            * this. */
  double memory_fraction;  /* of device memory resident weights and collections may take;
                            * default 0.8 */
  int fallback_to_cpu;     /* default 1; 0 turns GPU failures into QV_EDEVICE errors */
  int breaker_failures;    /* consecutive failures that open the breaker; default 3 */
  double breaker_cooldown_s; /* how long an open breaker keeps work on the CPU before a
                              * half-open trial; default 300 */
  double timeout_s;        /* one unit of GPU work longer than this is a failure; default 30 */
} qv_gpu_config;

void qv_gpu_config_default(qv_gpu_config *c);
/* Sets one setting from text; key is the part after "gpu." ("batch_size"). QV_EINVAL
 * naming gpu.<key> for an unknown key or a bad or out-of-range value. */
qv_status qv_gpu_config_set(qv_gpu_config *c, const char *key, const char *value, qv_error *err);
/* Overrides c from the QUIVER_GPU* variables of the table above, read through getenv_fn
 * (getenv in production); an empty variable is unset. QV_EINVAL naming the variable on a
 * bad value. */
qv_status qv_gpu_config_env_from(qv_gpu_config *c, const char *(*getenv_fn)(const char *), qv_error *err);
/* qv_gpu_config_env_from with getenv. */
qv_status qv_gpu_config_env(qv_gpu_config *c, qv_error *err);
/* Parses "auto" / "on" / "off" (and true/false/1/0/yes/no). */
qv_status qv_gpu_mode_parse(qv_gpu_mode *out, const char *s);
const char *qv_gpu_mode_name(qv_gpu_mode m);
/* Sets the process's device up from c. Call it before loading models; calling it again
 * replaces the set-up (models loaded before keep the old backend's mapping; do not).
 * Returns QV_EDEVICE with the reason when enabled is on and no GPU works; otherwise
 * QV_OK, with the reason kept for the report. QV_EINVAL for out-of-range fields. */
qv_status qv_gpu_config_apply(const qv_gpu_config *c, qv_error *err);

/* The process-wide dispatch; the first call applies the env config if nothing applied
 * one (a bad env value is logged and the default used). Never NULL. */
compute_dispatch *device_dispatch(void);
/* The config in effect. */
void device_config(qv_gpu_config *out);
/* Bytes that resident copies may still take on the GPU (0 without one). */
size_t device_budget_left(void);

/* For `quiver info` and the metrics. */
typedef struct qv_gpu_report {
  const char *backend;     /* "cuda" or "cpu" */
  char reason[512];        /* why not "cuda"; empty when it is */
  char plugin[1024];       /* the plugin file loaded or last tried; empty if none found */
  int have_device;         /* info is valid */
  qv_device_info info;
  qv_gpu_mode mode;
} qv_gpu_report;
void qv_gpu_report_get(qv_gpu_report *out);

/* Metrics getters (the metrics engineer renders them). */
typedef struct qv_gpu_stats {
  const char *backend;        /* "cuda" or "cpu": where new work goes first */
  int breaker_state;          /* 0 closed, 1 open, 2 half-open */
  const char *breaker_state_name;
  uint64_t breaker_opens_total;
  uint64_t fallbacks_total;   /* units meant for the GPU that ran on the CPU */
  uint64_t gpu_failures_total;
  uint64_t gpu_runs_total, cpu_runs_total;
  size_t mem_total, mem_used; /* bytes; 0 without a GPU */
} qv_gpu_stats;
void qv_gpu_stats_get(qv_gpu_stats *out);

/* For tests only: makes gpu (which must outlive its use) the process's GPU backend with
 * config c (NULL: defaults) and the given breaker clock (NULL: monotonic), as if a plugin
 * had produced it. gpu NULL puts the process back on the CPU with reason "test". */
void device_set_backend_for_test(const qv_backend *gpu, const qv_gpu_config *c, breaker_clock clock,
                                 void *clock_arg);

#endif
