/* Device discovery and the process-wide dispatch (see device.h for the search order).
 *
 * Invariants:
 *   1. The dispatch object has one address for the life of the process; models keep a
 *      pointer to it. Only qv_gpu_config_apply / device_set_backend_for_test re-initialize
 *      it, before models are loaded (tests: between them).
 *   2. dev.plugin.backend is the GPU backend exactly when dev.have_gpu; dev.reason is
 *      empty exactly then.
 *   3. The plugin library is never dlclosed while its backend may be referenced: a
 *      re-apply closes the plugin's context but keeps the library mapped (cudart does not
 *      survive unloading well, and a dangling op pointer would be worse). */
#define _GNU_SOURCE
#include "compute/device.h"

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/error.h"
#include "base/log.h"

#ifndef QV_PLUGIN_DIR
#define QV_PLUGIN_DIR "/usr/local/lib/quiver"
#endif
#define PLUGIN_FILE "libquiver-cuda.so"

static struct {
  pthread_mutex_t mu;
  int applied;           /* guarded by mu */
  qv_gpu_config cfg;
  void *dl;              /* the plugin library, kept mapped (invariant 3) */
  qv_plugin plugin;
  int have_gpu;          /* invariant 2 */
  char reason[512];
  char path[1024];
  compute_dispatch disp; /* invariant 1 */
} dev = {.mu = PTHREAD_MUTEX_INITIALIZER};

void qv_gpu_config_default(qv_gpu_config *c) {
  c->enabled = QV_GPU_AUTO;
  c->device_id = 0;
  c->batch_size = 64;
  c->memory_fraction = 0.8;
  c->fallback_to_cpu = 1;
  c->breaker_failures = 3;
  c->breaker_cooldown_s = 300;
  c->timeout_s = 30;
}

qv_status qv_gpu_mode_parse(qv_gpu_mode *out, const char *s) {
  if (!s) return QV_EINVAL;
  if (!strcasecmp(s, "auto")) *out = QV_GPU_AUTO;
  else if (!strcasecmp(s, "on") || !strcasecmp(s, "true") || !strcasecmp(s, "1") || !strcasecmp(s, "yes"))
    *out = QV_GPU_ON;
  else if (!strcasecmp(s, "off") || !strcasecmp(s, "false") || !strcasecmp(s, "0") || !strcasecmp(s, "no"))
    *out = QV_GPU_OFF;
  else
    return QV_EINVAL;
  return QV_OK;
}

const char *qv_gpu_mode_name(qv_gpu_mode m) {
  return m == QV_GPU_ON ? "on" : m == QV_GPU_OFF ? "off" : "auto";
}

static qv_status parse_long(long *out, const char *key, const char *v, long lo, long hi, qv_error *err) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi)
    return qv_fail(err, QV_EINVAL, "gpu.%s: \"%s\" is not an integer in %ld..%ld", key, v, lo, hi);
  *out = x;
  return QV_OK;
}

/* A number in (lo, hi] when open_lo, else [lo, hi]. */
static qv_status parse_double(double *out, const char *key, const char *v, double lo, double hi, int open_lo,
                              qv_error *err) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !isfinite(x) || (open_lo ? x <= lo : x < lo) || x > hi)
    return qv_fail(err, QV_EINVAL, "gpu.%s: \"%s\" is not a number in %s%g, %g]", key, v, open_lo ? "(" : "[", lo,
                   hi);
  *out = x;
  return QV_OK;
}

qv_status qv_gpu_config_set(qv_gpu_config *c, const char *key, const char *v, qv_error *err) {
  long x = 0;
  qv_status st;
  if (!v) v = "";
  if (!strcmp(key, "enabled")) {
    if (qv_gpu_mode_parse(&c->enabled, v))
      return qv_fail(err, QV_EINVAL, "gpu.enabled: \"%s\" is not auto, on or off", v);
    return QV_OK;
  }
  if (!strcmp(key, "device_id")) {
    if ((st = parse_long(&x, key, v, 0, 1023, err))) return st;
    c->device_id = (int)x;
    return QV_OK;
  }
  if (!strcmp(key, "batch_size")) {
    if ((st = parse_long(&x, key, v, 1, 4096, err))) return st;
    c->batch_size = (int)x;
    return QV_OK;
  }
  if (!strcmp(key, "memory_fraction")) return parse_double(&c->memory_fraction, key, v, 0, 1, 1, err);
  if (!strcmp(key, "fallback_to_cpu")) {
    qv_gpu_mode m; /* the same true/false spellings as enabled's on/off */
    if (qv_gpu_mode_parse(&m, v) || m == QV_GPU_AUTO)
      return qv_fail(err, QV_EINVAL, "gpu.fallback_to_cpu: \"%s\" is not true or false", v);
    c->fallback_to_cpu = m == QV_GPU_ON;
    return QV_OK;
  }
  if (!strcmp(key, "breaker_failures")) {
    if ((st = parse_long(&x, key, v, 1, 1000000, err))) return st;
    c->breaker_failures = (int)x;
    return QV_OK;
  }
  if (!strcmp(key, "breaker_cooldown_s")) return parse_double(&c->breaker_cooldown_s, key, v, 0, 86400 * 30, 1, err);
  if (!strcmp(key, "timeout_s")) return parse_double(&c->timeout_s, key, v, 0, 86400, 0, err);
  return qv_fail(err, QV_EINVAL, "unknown setting \"gpu.%s\"", key);
}

static const struct {
  const char *env, *key;
} env_keys[] = {
    {"QUIVER_GPU", "enabled"},
    {"QUIVER_GPU_DEVICE", "device_id"},
    {"QUIVER_GPU_BATCH_SIZE", "batch_size"},
    {"QUIVER_GPU_MEMORY_FRACTION", "memory_fraction"},
    {"QUIVER_GPU_FALLBACK", "fallback_to_cpu"},
    {"QUIVER_GPU_BREAKER_FAILURES", "breaker_failures"},
    {"QUIVER_GPU_BREAKER_COOLDOWN", "breaker_cooldown_s"},
    {"QUIVER_GPU_TIMEOUT", "timeout_s"},
};

qv_status qv_gpu_config_env_from(qv_gpu_config *c, const char *(*getenv_fn)(const char *), qv_error *err) {
  for (size_t i = 0; i < sizeof env_keys / sizeof env_keys[0]; i++) {
    const char *v = getenv_fn(env_keys[i].env);
    if (!v || !*v) continue;
    qv_status st = qv_gpu_config_set(c, env_keys[i].key, v, err);
    if (st) {
      qv_error_prefix(err, "%s=\"%s\"", env_keys[i].env, v);
      return st;
    }
  }
  return QV_OK;
}

static const char *env_get(const char *name) { return getenv(name); }

qv_status qv_gpu_config_env(qv_gpu_config *c, qv_error *err) { return qv_gpu_config_env_from(c, env_get, err); }

static qv_status check_config(const qv_gpu_config *c, qv_error *err) {
  if (c->device_id < 0) return qv_fail(err, QV_EINVAL, "gpu.device_id must be >= 0");
  if (c->batch_size < 1 || c->batch_size > 4096) return qv_fail(err, QV_EINVAL, "gpu.batch_size must be in 1..4096");
  if (!(c->memory_fraction > 0 && c->memory_fraction <= 1))
    return qv_fail(err, QV_EINVAL, "gpu.memory_fraction must be in (0, 1]");
  if (c->breaker_failures < 1) return qv_fail(err, QV_EINVAL, "gpu.breaker_failures must be >= 1");
  if (!(c->breaker_cooldown_s > 0)) return qv_fail(err, QV_EINVAL, "gpu.breaker_cooldown_s must be > 0");
  if (!(c->timeout_s >= 0)) return qv_fail(err, QV_EINVAL, "gpu.timeout_s must be >= 0");
  return QV_OK;
}

/* The directory of the running executable, or "" */
static void exe_dir(char *out, size_t cap) {
  ssize_t n = readlink("/proc/self/exe", out, cap - 1);
  if (n <= 0) {
    out[0] = 0;
    return;
  }
  out[n] = 0;
  char *slash = strrchr(out, '/');
  if (slash) *slash = 0;
  else out[0] = 0;
}

/* Tries one candidate file. Returns 1 when the plugin gave a device, 0 when the file
 * exists but failed (reason set), -1 when there is no such file. */
static int try_plugin(const char *path) {
  if (access(path, F_OK) != 0) return -1;
  snprintf(dev.path, sizeof dev.path, "%s", path);
  void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!dl) {
    const char *e = dlerror();
    snprintf(dev.reason, sizeof dev.reason, "dlopen failed: %s", e ? e : "unknown error");
    return 0;
  }
  qv_plugin_open_fn open_fn;
  *(void **)&open_fn = dlsym(dl, QV_PLUGIN_ENTRY);
  if (!open_fn) {
    snprintf(dev.reason, sizeof dev.reason, "%s: no %s symbol (not a Quiver plugin)", path, QV_PLUGIN_ENTRY);
    dlclose(dl);
    return 0;
  }
  qv_plugin_config pc = {dev.cfg.device_id, dev.cfg.memory_fraction, dev.cfg.timeout_s};
  char why[400] = "";
  memset(&dev.plugin, 0, sizeof dev.plugin);
  if (open_fn(QV_PLUGIN_API_VERSION, &pc, &dev.plugin, why, sizeof why) != 0) {
    snprintf(dev.reason, sizeof dev.reason, "%s", why[0] ? why : "the plugin found no usable device");
    memset(&dev.plugin, 0, sizeof dev.plugin);
    /* Kept mapped: a CUDA runtime that initialized part-way may have registered exit
     * handlers inside the library (invariant 3). */
    dev.dl = dl;
    return 0;
  }
  if (dev.plugin.api_version != QV_PLUGIN_API_VERSION ||
      dev.plugin.backend.api_version != QV_BACKEND_API_VERSION) {
    snprintf(dev.reason, sizeof dev.reason, "%s: API version %d/%d, expected %d/%d", path,
             dev.plugin.api_version, dev.plugin.backend.api_version, QV_PLUGIN_API_VERSION,
             QV_BACKEND_API_VERSION);
    if (dev.plugin.close) dev.plugin.close(dev.plugin.backend.ctx);
    memset(&dev.plugin, 0, sizeof dev.plugin);
    dev.dl = dl;
    return 0;
  }
  dev.dl = dl;
  return 1;
}

static void discover(void) {
  const char *env = getenv("QUIVER_CUDA_PLUGIN");
  if (env && *env) {
    int r = try_plugin(env);
    if (r < 0) snprintf(dev.reason, sizeof dev.reason, "no plugin at QUIVER_CUDA_PLUGIN=%s", env);
    dev.have_gpu = r == 1;
    return;
  }
  char dir[PATH_MAX], cand[3][PATH_MAX + 64];
  exe_dir(dir, sizeof dir);
  snprintf(cand[0], sizeof cand[0], "%s/%s", dir, PLUGIN_FILE);
  snprintf(cand[1], sizeof cand[1], "%s/../lib/quiver/%s", dir, PLUGIN_FILE);
  snprintf(cand[2], sizeof cand[2], "%s/%s", QV_PLUGIN_DIR, PLUGIN_FILE);
  const char *found = NULL;
  for (int i = dir[0] ? 0 : 2; i < 3 && !found; i++)
    if (access(cand[i], F_OK) == 0) found = cand[i];
  if (!found) {
    snprintf(dev.reason, sizeof dev.reason, "no plugin built (%s not found next to the executable or in %s)",
             PLUGIN_FILE, QV_PLUGIN_DIR);
    return;
  }
  snprintf(dev.path, sizeof dev.path, "%s", found);
  /* No driver, no point loading the plugin (and with it cuBLAS, hundreds of MB of
   * mappings) into every process: ask the dynamic loader for the driver first. An
   * explicit QUIVER_CUDA_PLUGIN skips this so the plugin's own report can be seen. */
  void *drv = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!drv) {
    const char *e = dlerror();
    snprintf(dev.reason, sizeof dev.reason, "no CUDA driver (dlopen failed: %s)", e ? e : "libcuda.so.1");
    return;
  }
  dlclose(drv);
  dev.have_gpu = try_plugin(found) == 1;
}

static void teardown(void) {
  if (dev.applied) dispatch_destroy(&dev.disp);
  if (dev.have_gpu && dev.plugin.close) dev.plugin.close(dev.plugin.backend.ctx);
  memset(&dev.plugin, 0, sizeof dev.plugin);
  dev.have_gpu = 0;
  dev.reason[0] = 0;
  dev.path[0] = 0;
}

static qv_status apply_locked(const qv_gpu_config *c, qv_error *err) {
  qv_status st = check_config(c, err);
  if (st) return st;
  teardown();
  dev.cfg = *c;
  if (c->enabled == QV_GPU_OFF) snprintf(dev.reason, sizeof dev.reason, "disabled by config (gpu: off)");
  else discover();
  if (dev.have_gpu) {
    qv_device_info di;
    dev.plugin.info(dev.plugin.backend.ctx, &di);
    LOG_INFO("gpu: %s (compute %d.%d) via %s", di.name, di.cc_major, di.cc_minor, dev.path);
  } else if (c->enabled != QV_GPU_OFF) {
    LOG_DEBUG("gpu: not used: %s", dev.reason);
  }
  dispatch_init(&dev.disp, dev.have_gpu ? &dev.plugin.backend : NULL, c->fallback_to_cpu, c->timeout_s,
                c->breaker_failures, c->breaker_cooldown_s, NULL, NULL);
  dev.applied = 1;
  if (c->enabled == QV_GPU_ON && !dev.have_gpu)
    return qv_fail(err, QV_EDEVICE, "gpu is on but no GPU can be used: %s", dev.reason);
  return QV_OK;
}

qv_status qv_gpu_config_apply(const qv_gpu_config *c, qv_error *err) {
  pthread_mutex_lock(&dev.mu);
  qv_status st = apply_locked(c, err);
  pthread_mutex_unlock(&dev.mu);
  return st;
}

compute_dispatch *device_dispatch(void) {
  pthread_mutex_lock(&dev.mu);
  if (!dev.applied) {
    qv_gpu_config c;
    qv_error e = {0};
    qv_gpu_config_default(&c);
    if (qv_gpu_config_env(&c, &e)) {
      LOG_WARN("%s; using gpu: auto", e.msg);
      qv_gpu_config_default(&c);
    }
    if (apply_locked(&c, &e) == QV_EDEVICE) LOG_WARN("%s; running on the CPU", e.msg);
  }
  pthread_mutex_unlock(&dev.mu);
  return &dev.disp;
}

void device_config(qv_gpu_config *out) {
  device_dispatch();
  pthread_mutex_lock(&dev.mu);
  *out = dev.cfg;
  pthread_mutex_unlock(&dev.mu);
}

size_t device_budget_left(void) {
  device_dispatch();
  pthread_mutex_lock(&dev.mu);
  size_t n = dev.have_gpu && dev.plugin.budget_left ? dev.plugin.budget_left(dev.plugin.backend.ctx) : 0;
  if (!dev.have_gpu && dev.disp.gpu) n = SIZE_MAX; /* a test backend: host memory, no budget */
  pthread_mutex_unlock(&dev.mu);
  return n;
}

void qv_gpu_report_get(qv_gpu_report *out) {
  device_dispatch();
  pthread_mutex_lock(&dev.mu);
  memset(out, 0, sizeof *out);
  out->backend = dev.disp.gpu ? "cuda" : "cpu";
  out->mode = dev.cfg.enabled;
  snprintf(out->reason, sizeof out->reason, "%s", dev.reason);
  snprintf(out->plugin, sizeof out->plugin, "%s", dev.path);
  if (dev.have_gpu && dev.plugin.info) {
    dev.plugin.info(dev.plugin.backend.ctx, &out->info);
    out->have_device = 1;
  }
  pthread_mutex_unlock(&dev.mu);
}

void qv_gpu_stats_get(qv_gpu_stats *out) {
  compute_dispatch *d = device_dispatch();
  memset(out, 0, sizeof *out);
  breaker_state s = breaker_get_state(&d->br);
  out->backend = d->gpu && s != BREAKER_OPEN ? d->gpu->name : "cpu";
  out->breaker_state = (int)s;
  out->breaker_state_name = breaker_state_name(s);
  out->breaker_opens_total = breaker_opens(&d->br);
  out->fallbacks_total = atomic_load(&d->fallbacks);
  out->gpu_failures_total = atomic_load(&d->gpu_failures);
  out->gpu_runs_total = atomic_load(&d->gpu_runs);
  out->cpu_runs_total = atomic_load(&d->cpu_runs);
  pthread_mutex_lock(&dev.mu);
  if (dev.have_gpu && dev.plugin.info) {
    qv_device_info di;
    dev.plugin.info(dev.plugin.backend.ctx, &di);
    out->mem_total = di.mem_total;
    out->mem_used = di.mem_used;
  }
  pthread_mutex_unlock(&dev.mu);
}

void device_set_backend_for_test(const qv_backend *gpu, const qv_gpu_config *c, breaker_clock clock,
                                 void *clock_arg) {
  pthread_mutex_lock(&dev.mu);
  teardown();
  if (c) dev.cfg = *c;
  else qv_gpu_config_default(&dev.cfg);
  if (!gpu) snprintf(dev.reason, sizeof dev.reason, "test");
  dispatch_init(&dev.disp, gpu, dev.cfg.fallback_to_cpu, dev.cfg.timeout_s, dev.cfg.breaker_failures,
                dev.cfg.breaker_cooldown_s, clock, clock_arg);
  dev.applied = 1;
  pthread_mutex_unlock(&dev.mu);
}
