/* The compute backend: a table of function pointers plus a context, as in ggml-backend.
 * The encoder is written once against these ops; the CPU backend (always present,
 * registered last as the fallback) implements them with OpenBLAS and SIMD kernels over
 * the thread pool, and the CUDA plugin (later) implements them on the device.
 *
 * Conventions (llm.c style): outputs first, then inputs, then sizes; every pointer carries
 * its shape. Pointers are to memory the backend can address (host memory for the CPU
 * backend). No op allocates. */
#ifndef QV_COMPUTE_BACKEND_H
#define QV_COMPUTE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "compute/gpt_ops.h"
#include "quiver.h"

#define QV_BACKEND_API_VERSION 2

typedef struct qv_backend {
  int api_version;
  const char *name; /* "cpu", "cuda" */
  void *ctx;

  /* out (M, N) = inp (M, K) @ w^T + bias, with w (N, K) row-major as PyTorch's Linear
   * stores it; bias (N) may be NULL. */
  void (*linear)(void *ctx, float *out, const float *inp, const float *w, const float *bias, int M,
                 int N, int K);
  /* out (rows, C) = layernorm(inp + residual) * w + b; residual may be NULL; out may alias
   * inp or residual. */
  void (*layernorm)(void *ctx, float *out, const float *inp, const float *residual, const float *w,
                    const float *b, int rows, int C, float eps);
  /* x (n) = gelu(x) in place, with the exact erf form (HF "gelu"). */
  void (*gelu)(void *ctx, float *x, size_t n);
  /* x (n) = tanh(x) in place (the BERT pooler). */
  void (*act_tanh)(void *ctx, float *x, size_t n);
  /* Multi-head self-attention over packed sequences.
   * out (B, T, C); qkv (B, T, 3C) as [q | k | v] per token; lens (B) real lengths (keys at
   * t >= lens[b] are masked; rows at t >= lens[b] are written as zeros); scratch is at least
   * attention_scratch(B, T, NH) floats. */
  void (*attention)(void *ctx, float *out, const float *qkv, const int *lens, int B, int T, int C,
                    int NH, float *scratch);
  size_t (*attention_scratch)(void *ctx, int B, int T, int NH);
  /* out (B, T, C) = word[ids] + pos[t] + type[type_ids] for t < lens[b]; rows at
   * t >= lens[b] are written as zeros and their ids are not read, so padding may hold
   * anything. lens (B) NULL means every row is T long. ids must be in range (the caller
   * checks them against the table sizes). */
  void (*embed)(void *ctx, float *out, const int32_t *ids, const int32_t *type_ids, const float *word,
                const float *pos, const float *type, const int *lens, int B, int T, int C);
  /* (optional) wait for queued work; NULL means ops are synchronous. A device backend
   * also copies every QV_MAP_OUTPUT range its ops wrote back to host memory here. */
  void (*sync)(void *ctx);

  /* ---- Device hooks. All (optional): NULL is the CPU default (host memory is the memory
   * the ops address, nothing is queued, nothing fails). ---- */

  /* (optional) Makes [host, host + bytes) addressable by the ops. A device backend keeps a
   * device twin of the range and translates any pointer into it: QV_MAP_WEIGHT copies the
   * contents once and keeps them resident (read-only afterwards); QV_MAP_BUFFER is a
   * device-only scratch twin (never copied); QV_MAP_OUTPUT is a twin whose written part
   * is copied back to the host at sync. Pointers the ops get that lie in no mapped range
   * are staged per call. QV_EDEVICE / QV_ENOMEM when the device cannot hold it. */
  qv_status (*map)(void *ctx, const void *host, size_t bytes, int kind);
  /* (optional) Drops the twin of the range that starts at host. */
  void (*unmap)(void *ctx, const void *host);
  /* (optional) Copies [host, host + bytes), which lies inside a QV_MAP_WEIGHT range, to
   * the twin again: how a resident copy follows writes to its host rows. */
  qv_status (*map_update)(void *ctx, const void *host, size_t bytes);
  /* (optional) The first error any op met since the last call (QV_EDEVICE, also when
   * sync timed out), cleared by the call. Ops return void,
   * so a device backend records failures and the dispatch asks here after each unit of
   * work (compute/dispatch.h). */
  qv_status (*status)(void *ctx);
  /* (optional) Exact top-k search, the twin of src/index/flat.c (same ranking: higher key
   * first, distances negated, NaN last, ties by lower row). scores, rows (nq, k) best
   * first; counts (nq); queries (nq, dim) host; base (n, stride) a QV_MAP_WEIGHT range;
   * metric is a qv_distance (Manhattan is refused with QV_EUNSUPPORTED); mask NULL or
   * n bits. Euclid scores are L2 distances (not squared). */
  qv_status (*search_exact)(void *ctx, float *scores, uint32_t *rows, size_t *counts,
                            const float *queries, size_t nq, const float *base, size_t n,
                            size_t dim, size_t stride, int metric, size_t k, const uint64_t *mask);
  /* (optional) The GPT training ops over memory of the backend's own (compute/gpt_ops.h),
   * with ctx as their context; NULL where the backend has none (the CPU trains through
   * src/gpt/gpt.c directly). */
  const qv_gpt_ops *gpt;
} qv_backend;

/* map kinds */
#define QV_MAP_WEIGHT 0
#define QV_MAP_BUFFER 1
#define QV_MAP_OUTPUT 2

/* The CPU backend over the process-wide pool. Never NULL. Its first call sets OpenBLAS to
 * one thread for the process: the pool is the only source of parallelism (see flat.c). */
const qv_backend *backend_cpu(void);

/* The CPU backend's elementwise kernels (layernorm, softmax, GELU, bias) come in a
 * portable and an AVX2+FMA version, chosen at load time; QUIVER_ISA=portable caps the
 * choice as it does for the distance kernels. Returns "avx512", "avx2" or "portable". */
const char *backend_cpu_isa(void);
/* For tests only: re-selects the kernels as if QUIVER_ISA were isa (NULL = no cap) and
 * returns the ISA now in use. Call it only while no op is running. */
const char *backend_cpu_force_isa(const char *isa);
/* For tests only: out (n) = erf(x) with the kernel GELU uses (in place is fine). */
void backend_cpu_erf(float *out, const float *x, size_t n);

#endif
