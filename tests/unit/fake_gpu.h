/* A test "GPU" for unit tests on machines without one (included by test_flat_gpu.c and
 * test_collection_gpu.c). Its "device memory" is its own copy of each mapped range, so a
 * write that was not synced shows as a wrong answer; search_exact runs flat_search over
 * that copy, counts its calls and the most queries one call took, fails on command
 * (fake_gpu.fail: QV_EDEVICE with garbage outputs), and refuses ranges larger than
 * fake_gpu.max_bytes (0: any size), as a full device would. */
#ifndef QV_TEST_FAKE_GPU_H
#define QV_TEST_FAKE_GPU_H

#include <stdlib.h>
#include <string.h>

#include "compute/backend.h"
#include "index/flat.h"

#define FAKE_GPU_RANGES 8

static struct {
  qv_backend be;
  struct {
    const char *host;
    size_t bytes;
    char *twin;
  } r[FAKE_GPU_RANGES];
  int searches;       /* search_exact calls */
  size_t max_nq;      /* most queries in one call */
  int fail;           /* search_exact fails */
  int fail_update;    /* map_update fails */
  size_t max_bytes;   /* map refuses larger ranges; 0: no limit */
} fake_gpu;

static int fake_gpu_find(const void *host) {
  for (int i = 0; i < FAKE_GPU_RANGES; i++)
    if (fake_gpu.r[i].twin && fake_gpu.r[i].host == host) return i;
  return -1;
}

static qv_status fake_gpu_map(void *ctx, const void *host, size_t bytes, int kind) {
  (void)ctx, (void)kind;
  if (fake_gpu.max_bytes && bytes > fake_gpu.max_bytes) return QV_ENOMEM;
  for (int i = 0; i < FAKE_GPU_RANGES; i++) {
    if (fake_gpu.r[i].twin) continue;
    if (!(fake_gpu.r[i].twin = malloc(bytes))) return QV_ENOMEM;
    memcpy(fake_gpu.r[i].twin, host, bytes);
    fake_gpu.r[i].host = host;
    fake_gpu.r[i].bytes = bytes;
    return QV_OK;
  }
  return QV_ENOMEM;
}

static void fake_gpu_unmap(void *ctx, const void *host) {
  (void)ctx;
  int i = fake_gpu_find(host);
  if (i < 0) return;
  free(fake_gpu.r[i].twin);
  memset(&fake_gpu.r[i], 0, sizeof fake_gpu.r[i]);
}

static qv_status fake_gpu_update(void *ctx, const void *host, size_t bytes) {
  (void)ctx;
  if (fake_gpu.fail_update) return QV_EDEVICE;
  const char *h = host;
  for (int i = 0; i < FAKE_GPU_RANGES; i++) {
    const char *lo = fake_gpu.r[i].host;
    if (fake_gpu.r[i].twin && h >= lo && h + bytes <= lo + fake_gpu.r[i].bytes) {
      memcpy(fake_gpu.r[i].twin + (h - lo), host, bytes);
      return QV_OK;
    }
  }
  return QV_EINVAL;
}

static qv_status fake_gpu_search(void *ctx, float *scores, uint32_t *rows, size_t *counts, const float *queries,
                                 size_t nq, const float *base, size_t n, size_t dim, size_t stride, int metric,
                                 size_t k, const uint64_t *mask) {
  (void)ctx;
  fake_gpu.searches++;
  if (nq > fake_gpu.max_nq) fake_gpu.max_nq = nq;
  int i = fake_gpu_find(base);
  if (i < 0) return QV_EINVAL;
  if (fake_gpu.fail) {
    for (size_t j = 0; j < nq * k; j++) scores[j] = NAN, rows[j] = 7;
    return QV_EDEVICE;
  }
  flat_matrix m = {(const float *)fake_gpu.r[i].twin, NULL, n, dim, stride};
  flat_hit *h = calloc(nq * k, sizeof *h);
  if (!h) return QV_ENOMEM;
  qv_status st = flat_search(h, counts, queries, nq, &m, (qv_distance)metric, k, mask, NULL);
  for (size_t j = 0; j < nq * k; j++) scores[j] = h[j].score, rows[j] = h[j].row;
  free(h);
  return st;
}

/* Frees every range and returns the backend, counters and failure switches cleared. */
static const qv_backend *fake_gpu_reset(void) {
  for (int i = 0; i < FAKE_GPU_RANGES; i++) free(fake_gpu.r[i].twin);
  memset(&fake_gpu, 0, sizeof fake_gpu);
  fake_gpu.be = (qv_backend){.api_version = QV_BACKEND_API_VERSION, .name = "cuda", .map = fake_gpu_map,
                             .unmap = fake_gpu_unmap, .map_update = fake_gpu_update, .search_exact = fake_gpu_search};
  return &fake_gpu.be;
}

#endif
