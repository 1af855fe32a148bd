/* libquiver-cuda.so: the plugin entry point, device facts, the host -> device range map,
 * sync with a timeout, and error recording (see cuda_internal.h for the invariants). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda/cuda_internal.h"

void cu_enter(cu_ctx *c) {
  pthread_mutex_lock(&c->mu);
  cudaSetDevice(c->device);
}

int cu_check(cu_ctx *c, cudaError_t e, const char *what) {
  if (e == cudaSuccess) return 0;
  if (!c->err) {
    c->err = QV_EDEVICE;
    snprintf(c->err_msg, sizeof c->err_msg, "%s: %s", what, cudaGetErrorString(e));
  }
  return 1;
}

int cu_check_blas(cu_ctx *c, cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return 0;
  if (!c->err) {
    c->err = QV_EDEVICE;
    snprintf(c->err_msg, sizeof c->err_msg, "%s: cuBLAS status %d", what, (int)s);
  }
  return 1;
}

cu_range *cu_find(cu_ctx *c, const void *p) {
  const char *q = (const char *)p;
  for (size_t i = 0; i < c->nr; i++)
    if (q >= c->r[i].host && q < c->r[i].host + c->r[i].bytes) return &c->r[i];
  return NULL;
}

int cu_grow(cu_ctx *c, void **buf, size_t *cap, size_t bytes) {
  if (bytes <= *cap) return 0;
  if (*buf) cudaFree(*buf);
  *buf = NULL;
  *cap = 0;
  size_t want = bytes + bytes / 4;
  if (cu_check(c, cudaMalloc(buf, want), "cudaMalloc")) return 1;
  *cap = want;
  return 0;
}

void *cu_dev(cu_ctx *c, const void *p, size_t bytes, int slot, int copy_in) {
  if (c->err || !p) return NULL;
  cu_range *r = cu_find(c, p);
  if (r) {
    size_t off = (size_t)((const char *)p - r->host);
    if (off + bytes > r->bytes && !c->err) {
      c->err = QV_EDEVICE;
      snprintf(c->err_msg, sizeof c->err_msg, "an op reads past a mapped range (%zu + %zu > %zu)", off, bytes,
               r->bytes);
      return NULL;
    }
    return r->dev + off;
  }
  if (cu_grow(c, &c->stage[slot], &c->stage_cap[slot], bytes ? bytes : 1)) return NULL;
  if (copy_in && bytes &&
      cu_check(c, cudaMemcpyAsync(c->stage[slot], p, bytes, cudaMemcpyHostToDevice, c->stream), "copy in"))
    return NULL;
  return c->stage[slot];
}

void cu_written(cu_ctx *c, void *host, const void *dev, size_t bytes) {
  if (c->err) return;
  cu_range *r = cu_find(c, host);
  if (r) {
    size_t end = (size_t)((char *)host - r->host) + bytes;
    if (r->kind == QV_MAP_OUTPUT && end > r->dirty) r->dirty = end;
    return;
  }
  /* an unmapped output: the caller expects host memory filled when the op returns */
  cu_check(c, cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, c->stream), "copy out");
  cu_check(c, cudaStreamSynchronize(c->stream), "sync");
}

/* ---- table entries --------------------------------------------------------------------- */

static qv_status cu_map(void *ctx, const void *host, size_t bytes, int kind) {
  cu_ctx *c = (cu_ctx *)ctx;
  cu_enter(c);
  qv_status st = QV_OK;
  if (cu_find(c, host) || !bytes) goto done; /* already mapped (a shared weight) */
  if (c->used + bytes > c->budget) {
    st = QV_ENOMEM;
    goto done;
  }
  if (c->nr == c->cap) {
    size_t nc = c->cap ? 2 * c->cap : 64;
    cu_range *nr = (cu_range *)realloc(c->r, nc * sizeof *nr);
    if (!nr) {
      st = QV_ENOMEM;
      goto done;
    }
    c->r = nr;
    c->cap = nc;
  }
  {
    cu_range r = {(const char *)host, bytes, NULL, kind, 0, NULL};
    if (cudaMalloc((void **)&r.dev, bytes) != cudaSuccess) {
      st = QV_ENOMEM;
      goto done;
    }
    /* on the ops' stream and waited for: a pageable cudaMemcpy on the legacy stream may
     * return before its DMA lands, and the non-blocking stream would not wait for it */
    if (kind == QV_MAP_WEIGHT &&
        (cudaMemcpyAsync(r.dev, host, bytes, cudaMemcpyHostToDevice, c->stream) != cudaSuccess ||
         cudaStreamSynchronize(c->stream) != cudaSuccess)) {
      cudaFree(r.dev);
      st = QV_EDEVICE;
      goto done;
    }
    c->r[c->nr++] = r;
    c->used += bytes;
  }
done:
  pthread_mutex_unlock(&c->mu);
  return st;
}

static void cu_unmap(void *ctx, const void *host) {
  cu_ctx *c = (cu_ctx *)ctx;
  cu_enter(c);
  for (size_t i = 0; i < c->nr; i++) {
    if (c->r[i].host != (const char *)host) continue;
    cudaStreamSynchronize(c->stream);
    cudaFree(c->r[i].dev);
    if (c->r[i].low) cudaFree(c->r[i].low);
    c->used -= c->r[i].bytes + (c->r[i].low ? c->r[i].bytes / 2 : 0);
    c->r[i] = c->r[--c->nr];
    break;
  }
  pthread_mutex_unlock(&c->mu);
}

static qv_status cu_map_update(void *ctx, const void *host, size_t bytes) {
  cu_ctx *c = (cu_ctx *)ctx;
  cu_enter(c);
  qv_status st = QV_OK;
  cu_range *r = cu_find(c, host);
  size_t off = r ? (size_t)((const char *)host - r->host) : 0;
  if (!r || r->kind != QV_MAP_WEIGHT || off + bytes > r->bytes) st = QV_EINVAL;
  else if (cudaMemcpyAsync(r->dev + off, host, bytes, cudaMemcpyHostToDevice, c->stream) != cudaSuccess ||
           cudaStreamSynchronize(c->stream) != cudaSuccess)
    st = QV_EDEVICE;
  /* a low-precision copy (GEMM weights) would be stale now; drop it to be remade */
  if (!st && r->low) {
    cudaFree(r->low);
    r->low = NULL;
    c->used -= r->bytes / 2;
  }
  pthread_mutex_unlock(&c->mu);
  return st;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Waits for the stream with a deadline: a hung kernel becomes a recorded failure (the
 * dispatch then reruns on the CPU) instead of a hung request. Then copies every output
 * range's written part back. */
static void cu_sync(void *ctx) {
  cu_ctx *c = (cu_ctx *)ctx;
  cu_enter(c);
  if (!c->err) {
    cudaEvent_t ev;
    if (!cu_check(c, cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "event")) {
      cu_check(c, cudaEventRecord(ev, c->stream), "event record");
      double t0 = now_s();
      cudaError_t q;
      while ((q = cudaEventQuery(ev)) == cudaErrorNotReady) {
        if (c->timeout_s > 0 && now_s() - t0 > c->timeout_s) {
          c->err = QV_EDEVICE;
          snprintf(c->err_msg, sizeof c->err_msg, "sync timed out after %.1f s", c->timeout_s);
          break;
        }
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
      }
      if (q != cudaErrorNotReady) cu_check(c, q, "kernel");
      cudaEventDestroy(ev);
    }
  }
  for (size_t i = 0; i < c->nr; i++) {
    cu_range *r = &c->r[i];
    if (r->kind != QV_MAP_OUTPUT || !r->dirty) continue;
    if (!c->err)
      cu_check(c, cudaMemcpyAsync((void *)r->host, r->dev, r->dirty, cudaMemcpyDeviceToHost, c->stream), "copy back");
    r->dirty = 0;
  }
  if (!c->err) cu_check(c, cudaStreamSynchronize(c->stream), "copy back");
  pthread_mutex_unlock(&c->mu);
}

static qv_status cu_status(void *ctx) {
  cu_ctx *c = (cu_ctx *)ctx;
  cu_enter(c);
  qv_status st = c->err;
  c->err = QV_OK;
  c->err_msg[0] = '\0';
  /* a sticky CUDA error (an illegal address) poisons the context; cudaGetLastError
   * clears only the non-sticky kind, so the next op fails again and the breaker opens */
  cudaGetLastError();
  pthread_mutex_unlock(&c->mu);
  return st;
}

static void cu_info(void *ctx, qv_device_info *out) {
  cu_ctx *c = (cu_ctx *)ctx;
  cu_enter(c);
  size_t free_b = 0, total_b = 0;
  cudaSetDevice(c->device);
  if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
    c->info.mem_total = total_b;
    c->info.mem_used = total_b - free_b;
  }
  *out = c->info;
  pthread_mutex_unlock(&c->mu);
}

static size_t cu_budget_left(void *ctx) {
  cu_ctx *c = (cu_ctx *)ctx;
  pthread_mutex_lock(&c->mu);
  size_t left = c->budget > c->used ? c->budget - c->used : 0;
  pthread_mutex_unlock(&c->mu);
  return left;
}

static void cu_close(void *ctx) {
  cu_ctx *c = (cu_ctx *)ctx;
  if (!c) return;
  cudaSetDevice(c->device);
  if (c->stream) cudaStreamSynchronize(c->stream);
  for (size_t i = 0; i < c->nr; i++) {
    cudaFree(c->r[i].dev);
    if (c->r[i].low) cudaFree(c->r[i].low);
  }
  for (int i = 0; i < CU_STAGES; i++)
    if (c->stage[i]) cudaFree(c->stage[i]);
  if (c->act) cudaFree(c->act);
  if (c->scratch) cudaFree(c->scratch);
  if (c->gpt_scr) cudaFree(c->gpt_scr);
  if (c->gpt_red) cudaFree(c->gpt_red);
  if (c->gpt_links) cudaFree(c->gpt_links);
  if (c->blas) cublasDestroy(c->blas);
  if (c->stream) cudaStreamDestroy(c->stream);
  pthread_mutex_destroy(&c->mu);
  free(c->r);
  free(c);
}

static cu_gemm_mode gemm_mode_from_env(void) {
  const char *s = getenv("QUIVER_CUDA_GEMM");
  if (!s) return CU_GEMM_FP16;
  if (!strcmp(s, "bf16")) return CU_GEMM_BF16;
  if (!strcmp(s, "tf32")) return CU_GEMM_TF32;
  if (!strcmp(s, "fp32")) return CU_GEMM_FP32;
  return CU_GEMM_FP16;
}

extern "C" __attribute__((visibility("default"))) int quiver_plugin_open(int api_version, const qv_plugin_config *cfg,
                                                                          qv_plugin *out, char *reason,
                                                                          size_t reason_len) {
  if (api_version != QV_PLUGIN_API_VERSION) {
    snprintf(reason, reason_len, "plugin API %d, Quiver asks for %d (rebuild the plugin)", QV_PLUGIN_API_VERSION,
             api_version);
    return 1;
  }
  int drv = 0, rt = 0, count = 0;
  cudaError_t e = cudaDriverGetVersion(&drv);
  if (e != cudaSuccess || drv == 0) {
    snprintf(reason, reason_len, "no usable CUDA driver (%s)",
             e != cudaSuccess ? cudaGetErrorString(e) : "driver version 0");
    return 1;
  }
  cudaRuntimeGetVersion(&rt);
  if ((e = cudaGetDeviceCount(&count)) != cudaSuccess || count == 0) {
    snprintf(reason, reason_len, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "count 0");
    return 1;
  }
  if (cfg->device_id >= count) {
    snprintf(reason, reason_len, "device %d asked for, %d present", cfg->device_id, count);
    return 1;
  }
  cudaDeviceProp prop;
  if ((e = cudaSetDevice(cfg->device_id)) != cudaSuccess ||
      (e = cudaGetDeviceProperties(&prop, cfg->device_id)) != cudaSuccess) {
    snprintf(reason, reason_len, "device %d: %s", cfg->device_id, cudaGetErrorString(e));
    return 1;
  }
  if (prop.major < 7) {
    snprintf(reason, reason_len, "%s has compute capability %d.%d; the plugin is built for 8.0 and 9.0", prop.name,
             prop.major, prop.minor);
    return 1;
  }
  cu_ctx *c = (cu_ctx *)calloc(1, sizeof *c);
  if (!c) {
    snprintf(reason, reason_len, "out of memory");
    return 1;
  }
  pthread_mutex_init(&c->mu, NULL);
  c->device = cfg->device_id;
  c->timeout_s = cfg->timeout_s;
  c->gemm = gemm_mode_from_env();
  cublasStatus_t bs;
  if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
    snprintf(reason, reason_len, "cudaStreamCreate: %s", cudaGetErrorString(e));
    cu_close(c);
    return 1;
  }
  if ((bs = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS) {
    snprintf(reason, reason_len, "cublasCreate failed (status %d)", (int)bs);
    cu_close(c);
    return 1;
  }
  cublasSetStream(c->blas, c->stream);
  /* FP32 GEMMs (search) stay IEEE FP32 so results match the CPU; the tensor-core path
   * is chosen per call by the data type. */
  cublasSetMathMode(c->blas, c->gemm == CU_GEMM_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  c->budget = (size_t)((double)total_b * cfg->memory_fraction);
  snprintf(c->info.name, sizeof c->info.name, "%.127s", prop.name);
  c->info.device_id = cfg->device_id;
  c->info.device_count = count;
  c->info.cc_major = prop.major;
  c->info.cc_minor = prop.minor;
  c->info.mem_total = total_b;
  c->info.mem_used = total_b - free_b;
  c->info.driver_version = drv;
  c->info.runtime_version = rt;

  memset(out, 0, sizeof *out);
  out->api_version = QV_PLUGIN_API_VERSION;
  qv_backend *be = &out->backend;
  be->api_version = QV_BACKEND_API_VERSION;
  be->name = "cuda";
  be->ctx = c;
  be->linear = cu_linear;
  be->layernorm = cu_layernorm;
  be->gelu = cu_gelu;
  be->act_tanh = cu_tanh;
  be->attention = cu_attention;
  be->attention_scratch = cu_attention_scratch;
  be->embed = cu_embed;
  be->sync = cu_sync;
  be->map = cu_map;
  be->unmap = cu_unmap;
  be->map_update = cu_map_update;
  be->status = cu_status;
  be->search_exact = cu_search_exact;
  be->gpt = &cu_gpt_ops;
  out->info = cu_info;
  out->budget_left = cu_budget_left;
  out->close = cu_close;
  return 0;
}
