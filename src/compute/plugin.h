/* The ABI between Quiver and a device plugin (libquiver-cuda.so).
 *
 * The main binary never links a device runtime: compute/device.c dlopens the plugin and
 * calls its one exported symbol, QV_PLUGIN_ENTRY, with the API version it was built
 * against. A plugin built for another version refuses (returns nonzero with a reason),
 * so a stale plugin next to a new binary is reported, not run. Everything the plugin
 * gives back is plain C: a backend table (compute/backend.h) and device facts. */
#ifndef QV_COMPUTE_PLUGIN_H
#define QV_COMPUTE_PLUGIN_H

#include <stddef.h>

#include "compute/backend.h"

#define QV_PLUGIN_API_VERSION 1
#define QV_PLUGIN_ENTRY "quiver_plugin_open"

typedef struct qv_device_info {
  char name[128];          /* "NVIDIA H100 80GB HBM3" */
  int device_id, device_count;
  int cc_major, cc_minor;  /* compute capability */
  size_t mem_total, mem_used; /* bytes, as the driver reports them at the time of asking */
  int driver_version, runtime_version; /* CUDA's encoding: 1000 * major + 10 * minor */
} qv_device_info;

typedef struct qv_plugin_config {
  int device_id;
  double memory_fraction; /* of the device's memory that resident copies may take */
  double timeout_s;       /* a sync waiting longer than this reports QV_EDEVICE */
} qv_plugin_config;

typedef struct qv_plugin {
  int api_version;        /* QV_PLUGIN_API_VERSION */
  qv_backend backend;     /* name, ctx and ops; ctx belongs to the plugin */
  /* Refreshes out (memory in use changes); callable from any thread. */
  void (*info)(void *ctx, qv_device_info *out);
  /* Bytes the resident copies may still take under memory_fraction. */
  size_t (*budget_left)(void *ctx);
  /* Frees everything; the table is dead afterwards. */
  void (*close)(void *ctx);
} qv_plugin;

/* Fills *out and returns 0, or returns nonzero and writes a one-line reason ("no CUDA
 * device", "cuInit failed: CUDA driver version is insufficient") into reason. */
typedef int (*qv_plugin_open_fn)(int api_version, const qv_plugin_config *cfg, qv_plugin *out,
                                 char *reason, size_t reason_len);

#endif
