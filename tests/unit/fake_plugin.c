/* A device plugin without a device, for tests on machines without a GPU. What it does
 * comes from $QV_FAKE_PLUGIN_MODE:
 *   nodevice (default)  refuses with "fake: no CUDA device"
 *   badversion          claims plugin API 99
 *   broken              gives a "device" whose every unit of work fails (status()
 *                       reports QV_EDEVICE, ops write nothing, search_exact fails), so the
 *                       dispatch must rerun everything on the CPU. Mapping succeeds and
 *                       the budget is 1 GiB, so collections do get a "resident" copy and
 *                       their searches reach the device (and fail there). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/plugin.h"

static int ctx_token;

static void op_linear(void *c, float *o, const float *i, const float *w, const float *b, int M, int N, int K) {}
static void op_layernorm(void *c, float *o, const float *i, const float *r, const float *w, const float *b, int rows,
                         int C, float eps) {}
static void op_unary(void *c, float *x, size_t n) {}
static void op_attention(void *c, float *o, const float *qkv, const int *lens, int B, int T, int C, int NH,
                         float *s) {}
static size_t op_scratch(void *c, int B, int T, int NH) { return 0; }
static void op_embed(void *c, float *o, const int32_t *ids, const int32_t *t, const float *w, const float *p,
                     const float *ty, const int *lens, int B, int T, int C) {}
static qv_status op_status(void *c) { return QV_EDEVICE; }
static qv_status op_map(void *c, const void *host, size_t bytes, int kind) { return QV_OK; }
static void op_unmap(void *c, const void *host) {}
static qv_status op_map_update(void *c, const void *host, size_t bytes) { return QV_OK; }
static qv_status op_search(void *c, float *scores, uint32_t *rows, size_t *counts, const float *queries, size_t nq,
                           const float *base, size_t n, size_t dim, size_t stride, int metric, size_t k,
                           const uint64_t *mask) {
  return QV_EDEVICE;
}
static void fake_info(void *c, qv_device_info *out) {
  memset(out, 0, sizeof *out);
  snprintf(out->name, sizeof out->name, "Fake GPU");
  out->device_count = 1;
  out->cc_major = 9;
  out->mem_total = (size_t)1 << 30;
  out->mem_used = (size_t)1 << 20;
  out->driver_version = 13000;
  out->runtime_version = 13000;
}
static size_t fake_budget(void *c) { return (size_t)1 << 30; }
static void fake_close(void *c) {}

__attribute__((visibility("default"))) int quiver_plugin_open(int api_version, const qv_plugin_config *cfg,
                                                               qv_plugin *out, char *reason, size_t reason_len) {
  const char *mode = getenv("QV_FAKE_PLUGIN_MODE");
  if (!mode || !strcmp(mode, "nodevice")) {
    snprintf(reason, reason_len, "fake: no CUDA device");
    return 1;
  }
  memset(out, 0, sizeof *out);
  out->api_version = !strcmp(mode, "badversion") ? 99 : QV_PLUGIN_API_VERSION;
  qv_backend *be = &out->backend;
  be->api_version = QV_BACKEND_API_VERSION;
  be->name = "cuda";
  be->ctx = &ctx_token;
  be->linear = op_linear;
  be->layernorm = op_layernorm;
  be->gelu = op_unary;
  be->act_tanh = op_unary;
  be->attention = op_attention;
  be->attention_scratch = op_scratch;
  be->embed = op_embed;
  be->status = op_status;
  be->map = op_map;
  be->unmap = op_unmap;
  be->map_update = op_map_update;
  be->search_exact = op_search;
  out->info = fake_info;
  out->budget_left = fake_budget;
  out->close = fake_close;
  return 0;
}
