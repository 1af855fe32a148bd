/* The CUDA plugin's shared pieces: the context, the host -> device range map, error
 * recording. Only src/cuda includes this.
 *
 * Invariants:
 *   1. Every op runs on ctx->stream under ctx->mu; ops never synchronize except where a
 *      host output must be filled (unmapped output pointers, search results, sync).
 *   2. ctx->err holds the first failure since the last status call; while it is set every
 *      op returns at once (its output is garbage and the dispatch reruns on the CPU).
 *   3. A mapped range's device twin lives until unmap or close; weights are copied once at
 *      map time, their FP16 / BF16 copies made on first use by a GEMM. */
#ifndef QV_CUDA_INTERNAL_H
#define QV_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "compute/plugin.h"
}

typedef enum { CU_GEMM_FP16 = 0, CU_GEMM_BF16 = 1, CU_GEMM_TF32 = 2, CU_GEMM_FP32 = 3 } cu_gemm_mode;

typedef struct cu_range {
  const char *host;
  size_t bytes;
  char *dev;
  int kind;          /* QV_MAP_* */
  size_t dirty;      /* QV_MAP_OUTPUT: bytes from the start written since the last sync */
  void *low;         /* FP16/BF16 copy of a weight, made on first GEMM use */
} cu_range;

#define CU_STAGES 8

typedef struct cu_ctx {
  pthread_mutex_t mu;
  int device;
  cudaStream_t stream;
  cublasHandle_t blas;
  cu_gemm_mode gemm;
  cu_range *r;
  size_t nr, cap;
  size_t budget, used;          /* bytes resident copies may take / take now */
  double timeout_s;
  qv_status err;                /* invariant 2 */
  char err_msg[256];
  void *stage[CU_STAGES];       /* staging for unmapped host pointers, grown on demand */
  size_t stage_cap[CU_STAGES];
  void *act;                    /* low-precision copy of GEMM inputs, grown on demand */
  size_t act_cap;
  float *scratch;               /* search scores and norms, grown on demand */
  size_t scratch_cap;
  void *gpt_scr;                /* GPT ops: permuted q, k, v and their gradients (gpt.cu) */
  size_t gpt_scr_cap;
  void *gpt_red;                /* GPT ops: reduction partials (gpt.cu) */
  size_t gpt_red_cap;
  void *gpt_links;              /* GPT ops: the encoder backward's row chains (gpt.cu) */
  size_t gpt_links_cap;
  qv_device_info info;
} cu_ctx;

/* Locks ctx and makes its device current on this thread (ops come from any thread,
 * and the current device is per thread). */
void cu_enter(cu_ctx *c);

/* Records the first failure (invariant 2); returns 1 when call failed. */
int cu_check(cu_ctx *c, cudaError_t e, const char *what);
int cu_check_blas(cu_ctx *c, cublasStatus_t s, const char *what);
/* Device address of host pointer p, which must have `bytes` valid bytes. Mapped: the
 * twin; else the contents are copied into stage slot `slot` when `copy_in` (NULL on
 * failure, recorded). */
void *cu_dev(cu_ctx *c, const void *p, size_t bytes, int slot, int copy_in);
cu_range *cu_find(cu_ctx *c, const void *p);
/* Marks [p, p + bytes) written by an op: extends an output range's dirty part, or copies
 * a staged unmapped output back (synchronously). */
void cu_written(cu_ctx *c, void *host, const void *dev, size_t bytes);
/* Grows *buf to at least bytes (device memory). */
int cu_grow(cu_ctx *c, void **buf, size_t *cap, size_t bytes);

/* Ops (encoder.cu, search.cu) -- the qv_backend table's entries. */
extern "C" {
void cu_linear(void *ctx, float *out, const float *inp, const float *w, const float *bias, int M, int N, int K);
void cu_layernorm(void *ctx, float *out, const float *inp, const float *residual, const float *w, const float *b,
                  int rows, int C, float eps);
void cu_gelu(void *ctx, float *x, size_t n);
void cu_tanh(void *ctx, float *x, size_t n);
void cu_attention(void *ctx, float *out, const float *qkv, const int *lens, int B, int T, int C, int NH,
                  float *scratch);
size_t cu_attention_scratch(void *ctx, int B, int T, int NH);
void cu_embed(void *ctx, float *out, const int32_t *ids, const int32_t *type_ids, const float *word,
              const float *pos, const float *type, const int *lens, int B, int T, int C);
qv_status cu_search_exact(void *ctx, float *scores, uint32_t *rows, size_t *counts, const float *queries,
                          size_t nq, const float *base, size_t n, size_t dim, size_t stride, int metric, size_t k,
                          const uint64_t *mask);
}

/* The GPT training ops on the device (gpt.cu), the qv_backend's gpt table. */
extern const qv_gpt_ops cu_gpt_ops;

/* The most results one search returns per query on the device (larger k runs on the CPU). */
#define CU_TOPK_MAX 1024

#endif
