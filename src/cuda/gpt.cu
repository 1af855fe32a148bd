/* The GPT training ops (compute/gpt_ops.h) on the device: the CUDA twin of gpt_ops_cpu()
 * (src/gpt/gpt_dev.c over the kernels of src/gpt/gpt.c), which defines their semantics.
 *
 * NEVER RUN ON A GPU: none was lent while this file was written. It compiles (nvcc, sm_80 and
 * sm_90); its kernels were run only on a throwaway CPU emulation (one host thread per CUDA
 * thread, barriers for __syncthreads and the shuffles) against src/gpt's kernels, and its
 * cuBLAS argument lists against a column-major GEMM emulation. Whoever first has a GPU runs
 * `make gpu-test` (tests/gpu/test_gpu_gpt.c compares every op, whole training steps and
 * generation against the CPU) before trusting a device run.
 *
 * What each op does on the device (all on c->stream, under c->mu):
 *   alloc / release / zero / copy_in / copy_out: cudaMalloc + memset, cudaFree after a stream
 *     sync, cudaMemsetAsync, and copies that wait for the stream (the host buffer is free
 *     when they return).
 *   encoder_fwd: one thread per output element. encoder_bwd: dwpe by one thread per (t, c)
 *     walking b in order; dwte by chains of rows with the same token (enc_links_kernel finds
 *     each row's next row with its token and whether it is its token's first row), each
 *     chain walked in row order by one block -- the CPU's order, so the same bits.
 *   layernorm_fwd / _bwd: one block per row (two-pass mean and biased variance, rstd =
 *     1/sqrt(var + eps)); dw and db by the two-stage column sums below.
 *   matmul_fwd / _bwd, head_fwd / _bwd: cublasSgemm in FP32 (the mapping from row-major is
 *     written at each call), bias added by a kernel after the GEMM, backward with beta = 1.
 *   attention_fwd: q, k, v permuted to (B, H, T, hs) scratch, scores by a strided batched
 *     GEMM with alpha = 1/sqrt(hs) into att, a causal softmax per row in place (upper
 *     triangle 0), att @ v batched, unpermuted into out. attention_bwd: dout permuted, then
 *     datt = dout @ v^T (into the caller's scratch), dv = att^T @ dout, the softmax backward
 *     in place (scale folded in, upper triangle 0), dq = dpre @ k, dk = dpre^T @ q, all
 *     added into dqkv by one unpermute kernel.
 *   gelu (tanh form, gpt.c's rational tanh), add, scale, adamw, crossentropy_bwd:
 *     elementwise, grid-stride.
 *   crossentropy_fwd: one block per row; every thread reads the target's logit before the
 *     first barrier, and the row is written only after it (probs may alias logits).
 *   sumsq: a fixed grid of partial sums in double, then one block adds them in order.
 *   attention_cached (inference): one kernel stores the rows' keys and values in the caches,
 *     then one block per (row, head) takes its scores over cache rows [0, pos + r] in shared
 *     memory, their softmax, and the weighted sum of values.
 *   status: reports and clears c->err and c->err_msg (as cu_status does).
 *
 * Invariants:
 *   1. cuda_internal.h's 1 and 2: every op runs on c->stream under c->mu and returns at once
 *      while c->err is set (alloc then returns NULL, sumsq NaN); release still frees.
 *   2. Same inputs, same bits: no reduction uses atomics; every sum's order depends only on
 *      the sizes (block sizes and chunk counts are constants or functions of N), and cuBLAS
 *      is deterministic for a given GPU model and stream.
 *   3. GEMMs run in IEEE FP32: gemm() sets CUBLAS_PEDANTIC_MATH for each call and restores the
 *      mode the encoder set (TF32 under QUIVER_CUDA_GEMM=tf32) after it.
 *   4. The ctx's GPT scratch (gpt_scr, gpt_red, gpt_links) is only live within one op: an op
 *      may grow it (cudaFree waits for the device), and no op reads what another left. */
#include <math.h>
#include <stdio.h>

#include "cuda/cuda_internal.h"

#define GPT_LOCK(c)             \
  cu_ctx *c = (cu_ctx *)ctx;    \
  cu_enter(c);                  \
  if (c->err) goto done
#define GPT_UNLOCK(c) pthread_mutex_unlock(&c->mu)

/* Block size of every row and reduction kernel: a multiple of 32 (full-warp shuffles) and
 * a constant, so that sums are taken in the same order on every run (invariant 2). */
#define GPT_THREADS 256
/* sumsq's first stage: a fixed number of blocks, whatever the device (invariant 2). */
#define GPT_SUMSQ_BLOCKS 256
/* Column sums take rows in chunks of at least this many, at most GPT_COLSUM_CHUNKS chunks. */
#define GPT_COLSUM_ROWS 256
#define GPT_COLSUM_CHUNKS 1024

static unsigned grid_for(size_t n, unsigned threads) {
  size_t b = (n + threads - 1) / threads;
  return (unsigned)(b > 65535 * 8 ? 65535 * 8 : b ? b : 1);
}

#define FOR_EACH(i, n) \
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* The block's sum of v, the same value in every thread; sh holds 32 T. The leading barrier
 * lets a caller reduce twice in a row with one sh. */
template <typename T> static __device__ T gpt_block_sum(T v, T *sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  T t = 0;
  for (int i = 0; i < nw; i++) t += sh[i];
  return t;
}

static __device__ float gpt_block_max(float v, float *sh) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int i = 0; i < nw; i++) m = fmaxf(m, sh[i]);
  return m;
}

/* Column-major C (m, n) = alpha op(A) (m, k) @ op(B) (k, n) + beta C, batch times with the
 * strides given (cublasSgemm for one), in IEEE FP32: the math mode is set for the call and
 * the encoder's restored after it (invariant 3). 1 on failure (recorded). */
static int gemm(cu_ctx *c, const char *what, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                float alpha, const float *A, int lda, long long sa, const float *B, int ldb, long long sb, float beta,
                float *C, int ldc, long long sc, int batch) {
  cublasMath_t mode = CUBLAS_DEFAULT_MATH;
  /* pedantic: CUBLAS_DEFAULT_MATH still lets NVIDIA_TF32_OVERRIDE=1 turn FP32 GEMMs into
   * TF32, which the 1e-4 comparisons with the CPU twin (and the self-check) would not pass */
  if (cu_check_blas(c, cublasGetMathMode(c->blas, &mode), what) ||
      cu_check_blas(c, cublasSetMathMode(c->blas, CUBLAS_PEDANTIC_MATH), what))
    return 1;
  cublasStatus_t st = batch == 1 ? cublasSgemm(c->blas, ta, tb, m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc)
                                 : cublasSgemmStridedBatched(c->blas, ta, tb, m, n, k, &alpha, A, lda, sa, B, ldb,
                                                             sb, &beta, C, ldc, sc, batch);
  int failed = cu_check_blas(c, st, what);
  return cu_check_blas(c, cublasSetMathMode(c->blas, mode), "restoring the cuBLAS math mode") || failed;
}

#define GEMM1(c, what, ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc) \
  gemm(c, what, ta, tb, m, n, k, 1.0f, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1)

/* ---- memory --------------------------------------------------------------------------- */

static void *gpt_alloc(void *ctx, size_t bytes) {
  void *p = NULL;
  GPT_LOCK(c);
  if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
    cudaGetLastError(); /* not an op failure (the caller reports it); clear it for the launches' checks */
    p = NULL;
    goto done;
  }
  if (cu_check(c, cudaMemsetAsync(p, 0, bytes, c->stream), "alloc: memset") ||
      cu_check(c, cudaStreamSynchronize(c->stream), "alloc: sync")) {
    cudaFree(p);
    p = NULL;
  }
done:
  GPT_UNLOCK(c);
  return p;
}

static void gpt_release(void *ctx, void *p) {
  cu_ctx *c = (cu_ctx *)ctx;
  if (!p) return;
  cu_enter(c);
  cudaStreamSynchronize(c->stream); /* queued ops may still read it */
  cudaFree(p);
  GPT_UNLOCK(c);
}

static void gpt_zero(void *ctx, void *p, size_t bytes) {
  GPT_LOCK(c);
  if (bytes) cu_check(c, cudaMemsetAsync(p, 0, bytes, c->stream), "zero");
done:
  GPT_UNLOCK(c);
}

/* A copy that waits for the stream, so the host buffer is free (or filled) on return. */
static void gpt_copy(void *ctx, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, const char *what) {
  GPT_LOCK(c);
  if (!bytes) goto done;
  if (cu_check(c, cudaMemcpyAsync(dst, src, bytes, kind, c->stream), what)) goto done;
  cu_check(c, cudaStreamSynchronize(c->stream), what);
done:
  GPT_UNLOCK(c);
}

static void gpt_copy_in(void *ctx, void *dst, const void *host, size_t bytes) {
  gpt_copy(ctx, dst, host, bytes, cudaMemcpyHostToDevice, "copy in");
}

static void gpt_copy_out(void *ctx, void *host, const void *src, size_t bytes) {
  gpt_copy(ctx, host, src, bytes, cudaMemcpyDeviceToHost, "copy out");
}

/* ---- encoder -------------------------------------------------------------------------- */

__global__ void enc_fwd_kernel(float *out /* (B, T, C) */, const int32_t *inp /* (B, T) */,
                               const float *wte /* (V, C) */, const float *wpe /* (maxT, C) */, int T, int C,
                               size_t n) {
  FOR_EACH(i, n) {
    size_t bt = i / (size_t)C;
    size_t c = i % (size_t)C, t = bt % (size_t)T;
    out[i] = wte[(size_t)inp[bt] * C + c] + wpe[t * C + c];
  }
}

/* For each row n of inp (N): next[n] = the next row with the same token (-1: none), and
 * head[n] = 1 when no earlier row has it. Ids are compared a tile at a time from shared
 * memory: O(N^2) compares, 67 million for a batch of 8192 rows, spread over N threads. */
__global__ void enc_links_kernel(int32_t *next /* (N) */, int32_t *head /* (N) */, const int32_t *inp, int N) {
  __shared__ int32_t tile[GPT_THREADS];
  int n = blockIdx.x * blockDim.x + threadIdx.x;
  int32_t id = n < N ? inp[n] : -1, nx = -1, first = 1;
  for (int j0 = 0; j0 < N; j0 += blockDim.x) {
    __syncthreads();
    if (j0 + (int)threadIdx.x < N) tile[threadIdx.x] = inp[j0 + threadIdx.x];
    __syncthreads();
    int m = N - j0 < (int)blockDim.x ? N - j0 : (int)blockDim.x;
    for (int j = 0; j < m; j++) {
      if (tile[j] != id) continue;
      int r = j0 + j;
      if (r < n) first = 0;
      else if (r > n && nx < 0) nx = r;
    }
  }
  if (n < N) {
    next[n] = nx;
    head[n] = first;
  }
}

/* One block per row; a token's first row walks its chain in row order, adding each row's
 * dout into a register that starts from dwte: the CPU's order of additions per element. */
__global__ void enc_bwd_wte_kernel(float *dwte /* (V, C) */, const float *dout /* (N, C) */,
                                   const int32_t *inp, const int32_t *next, const int32_t *head, int C) {
  int n = blockIdx.x;
  if (!head[n]) return;
  float *dw = dwte + (size_t)inp[n] * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = dw[c];
    for (int r = n; r >= 0; r = next[r]) acc += dout[(size_t)r * C + c];
    dw[c] = acc;
  }
}

/* dwpe[t] += dout[b, t] for b in order, one thread per (t, c). */
__global__ void enc_bwd_wpe_kernel(float *dwpe /* (T, C) */, const float *dout /* (B, T, C) */, int B, int T,
                                   int C) {
  size_t TC = (size_t)T * C;
  FOR_EACH(i, TC) {
    float acc = dwpe[i];
    for (int b = 0; b < B; b++) acc += dout[(size_t)b * TC + i];
    dwpe[i] = acc;
  }
}

static void gpt_encoder_fwd(void *ctx, float *out, const int32_t *inp, const float *wte, const float *wpe, int B,
                            int T, int C) {
  GPT_LOCK(c);
  {
    size_t n = (size_t)B * T * C;
    if (!n || B <= 0 || T <= 0 || C <= 0) goto done;
    enc_fwd_kernel<<<grid_for(n, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(out, inp, wte, wpe, T, C, n);
    cu_check(c, cudaGetLastError(), "gpt encoder_fwd");
  }
done:
  GPT_UNLOCK(c);
}

static void gpt_encoder_bwd(void *ctx, float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B,
                            int T, int C) {
  GPT_LOCK(c);
  {
    int N = B * T;
    if (B <= 0 || T <= 0 || C <= 0) goto done;
    if (cu_grow(c, &c->gpt_links, &c->gpt_links_cap, 2 * (size_t)N * sizeof(int32_t))) goto done;
    int32_t *next = (int32_t *)c->gpt_links, *head = next + N;
    unsigned blocks = (unsigned)((N + GPT_THREADS - 1) / GPT_THREADS);
    enc_links_kernel<<<blocks, GPT_THREADS, 0, c->stream>>>(next, head, inp, N);
    if (cu_check(c, cudaGetLastError(), "gpt encoder_bwd links")) goto done;
    enc_bwd_wte_kernel<<<N, GPT_THREADS, 0, c->stream>>>(dwte, dout, inp, next, head, C);
    if (cu_check(c, cudaGetLastError(), "gpt encoder_bwd wte")) goto done;
    size_t TC = (size_t)T * C;
    enc_bwd_wpe_kernel<<<grid_for(TC, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(dwpe, dout, B, T, C);
    cu_check(c, cudaGetLastError(), "gpt encoder_bwd wpe");
  }
done:
  GPT_UNLOCK(c);
}

/* ---- column sums (LayerNorm's dw and db, a linear's db) ------------------------------------
 * Two stages in a fixed order (invariant 2): chunk k of rows gives part[k] (2C: dw's sums,
 * then db's), each column's rows in order; then each column adds its chunks in order. */

static int colsum_chunks(int N, int *rows_per) {
  int chunks = (N + GPT_COLSUM_ROWS - 1) / GPT_COLSUM_ROWS;
  if (chunks > GPT_COLSUM_CHUNKS) chunks = GPT_COLSUM_CHUNKS;
  if (chunks < 1) chunks = 1;
  *rows_per = (N + chunks - 1) / chunks;
  return chunks;
}

/* inp NULL: only db's sums (dout's columns). */
__global__ void colsum_part_kernel(float *part /* (chunks, 2C) */, const float *dout /* (N, C) */,
                                   const float *inp /* (N, C) */, const float *mean, const float *rstd, int N, int C,
                                   int rows_per) {
  int j = blockIdx.x * blockDim.x + threadIdx.x, k = blockIdx.y;
  if (j >= C) return;
  int r0 = k * rows_per, r1 = r0 + rows_per < N ? r0 + rows_per : N;
  float sw = 0, sb = 0;
  for (int r = r0; r < r1; r++) {
    float d = dout[(size_t)r * C + j];
    sb += d;
    if (inp) sw += (inp[(size_t)r * C + j] - mean[r]) * rstd[r] * d;
  }
  part[(size_t)k * 2 * C + j] = sw;
  part[(size_t)k * 2 * C + C + j] = sb;
}

__global__ void colsum_final_kernel(float *dw /* (C) or NULL */, float *db /* (C) or NULL */,
                                    const float *part /* (chunks, 2C) */, int chunks, int C) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= C) return;
  float sw = 0, sb = 0;
  for (int k = 0; k < chunks; k++) {
    sw += part[(size_t)k * 2 * C + j];
    sb += part[(size_t)k * 2 * C + C + j];
  }
  if (dw) dw[j] += sw;
  if (db) db[j] += sb;
}

/* dw += sum_n norm(inp)[n] * dout[n] (inp non-NULL), db += sum_n dout[n]; 1 on failure. */
static int colsums(cu_ctx *c, float *dw, float *db, const float *dout, const float *inp, const float *mean,
                   const float *rstd, int N, int C) {
  int rows_per, chunks = colsum_chunks(N, &rows_per);
  if (cu_grow(c, &c->gpt_red, &c->gpt_red_cap, (size_t)chunks * 2 * C * sizeof(float))) return 1;
  float *part = (float *)c->gpt_red;
  dim3 g1((unsigned)((C + GPT_THREADS - 1) / GPT_THREADS), (unsigned)chunks);
  colsum_part_kernel<<<g1, GPT_THREADS, 0, c->stream>>>(part, dout, inp, mean, rstd, N, C, rows_per);
  if (cu_check(c, cudaGetLastError(), "gpt column sums")) return 1;
  colsum_final_kernel<<<(unsigned)((C + GPT_THREADS - 1) / GPT_THREADS), GPT_THREADS, 0, c->stream>>>(
      inp ? dw : NULL, db, part, chunks, C);
  return cu_check(c, cudaGetLastError(), "gpt column sums");
}

/* ---- layernorm ------------------------------------------------------------------------ */

__global__ void ln_fwd_kernel(float *out /* (N, C) */, float *mean /* (N) */, float *rstd /* (N) */,
                              const float *inp /* (N, C) */, const float *w, const float *b, int C, float eps) {
  __shared__ float sh[32];
  size_t n = blockIdx.x;
  const float *x = inp + n * C;
  float s = 0;
  for (int i = threadIdx.x; i < C; i += blockDim.x) s += x[i];
  float mu = gpt_block_sum(s, sh) / (float)C;
  float v = 0;
  for (int i = threadIdx.x; i < C; i += blockDim.x) v += (x[i] - mu) * (x[i] - mu);
  float rs = 1.0f / sqrtf(gpt_block_sum(v, sh) / (float)C + eps);
  /* each element read and written by one thread: out may alias inp */
  for (int i = threadIdx.x; i < C; i += blockDim.x) out[n * C + i] = (x[i] - mu) * rs * w[i] + b[i];
  if (threadIdx.x == 0) {
    if (mean) mean[n] = mu;
    if (rstd) rstd[n] = rs;
  }
}

/* dinp (N, C) += LayerNorm's input gradient, one block per row. */
__global__ void ln_bwd_kernel(float *dinp, const float *dout, const float *inp, const float *w, const float *mean,
                              const float *rstd, int C) {
  __shared__ float sh[32];
  size_t n = blockIdx.x;
  const float *x = inp + n * C, *d = dout + n * C;
  float mu = mean[n], rs = rstd[n], s1 = 0, s2 = 0;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float nv = (x[i] - mu) * rs, dn = w[i] * d[i];
    s1 += dn;
    s2 += dn * nv;
  }
  float dmean = gpt_block_sum(s1, sh) / (float)C;
  float dnmean = gpt_block_sum(s2, sh) / (float)C;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float nv = (x[i] - mu) * rs, dn = w[i] * d[i];
    dinp[n * C + i] += (dn - dmean - nv * dnmean) * rs;
  }
}

static void gpt_layernorm_fwd(void *ctx, float *out, float *mean, float *rstd, const float *inp, const float *w,
                              const float *b, int N, int C, float eps) {
  GPT_LOCK(c);
  if (N <= 0 || C <= 0) goto done;
  ln_fwd_kernel<<<N, GPT_THREADS, 0, c->stream>>>(out, mean, rstd, inp, w, b, C, eps);
  cu_check(c, cudaGetLastError(), "gpt layernorm_fwd");
done:
  GPT_UNLOCK(c);
}

static void gpt_layernorm_bwd(void *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                              const float *w, const float *mean, const float *rstd, int N, int C) {
  GPT_LOCK(c);
  if (N <= 0 || C <= 0) goto done;
  if (dinp) {
    ln_bwd_kernel<<<N, GPT_THREADS, 0, c->stream>>>(dinp, dout, inp, w, mean, rstd, C);
    if (cu_check(c, cudaGetLastError(), "gpt layernorm_bwd")) goto done;
  }
  if (dw || db) colsums(c, dw, db, dout, inp, mean, rstd, N, C);
done:
  GPT_UNLOCK(c);
}

/* ---- matmuls -------------------------------------------------------------------------- */

__global__ void add_bias_kernel(float *out /* (N, OC) */, const float *b /* (OC) */, int OC, size_t n) {
  FOR_EACH(i, n) out[i] += b[i % (size_t)OC];
}

static void gpt_matmul_fwd(void *ctx, float *out, const float *inp, const float *w, const float *b, int N, int IC,
                           int OC) {
  GPT_LOCK(c);
  if (N <= 0 || IC <= 0 || OC <= 0) goto done;
  /* Row-major out (N, OC) = inp (N, IC) @ w (IC, OC) is column-major
   * out^T (OC, N) = w^T (OC, IC) @ inp^T (IC, N), and each buffer read column-major is
   * already the transpose: A = w (lda OC), B = inp (ldb IC), C = out (ldc OC). */
  if (GEMM1(c, "gpt matmul_fwd", CUBLAS_OP_N, CUBLAS_OP_N, OC, N, IC, w, OC, inp, IC, 0.0f, out, OC)) goto done;
  if (b) {
    size_t n = (size_t)N * OC;
    add_bias_kernel<<<grid_for(n, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(out, b, OC, n);
    cu_check(c, cudaGetLastError(), "gpt matmul_fwd bias");
  }
done:
  GPT_UNLOCK(c);
}

static void gpt_matmul_bwd(void *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, int N, int IC, int OC) {
  GPT_LOCK(c);
  if (N <= 0 || IC <= 0 || OC <= 0) goto done;
  /* dinp (N, IC) += dout (N, OC) @ w^T: column-major dinp^T (IC, N) += w (IC, OC) @
   * dout^T (OC, N); the w buffer read column-major is w^T (OC, IC, ld OC), so op T;
   * dout read column-major is dout^T (OC, N, ld OC), op N; C = dinp (ldc IC). */
  if (dinp && GEMM1(c, "gpt matmul_bwd dinp", CUBLAS_OP_T, CUBLAS_OP_N, IC, N, OC, w, OC, dout, OC, 1.0f, dinp, IC))
    goto done;
  /* dw (IC, OC) += inp^T (IC, N) @ dout (N, OC): column-major dw^T (OC, IC) += dout^T
   * (OC, N) @ inp (N, IC); dout read column-major is dout^T (ld OC), op N; inp read
   * column-major is inp^T (IC, N, ld IC), so op T; C = dw (ldc OC). */
  if (dw && GEMM1(c, "gpt matmul_bwd dw", CUBLAS_OP_N, CUBLAS_OP_T, OC, IC, N, dout, OC, inp, IC, 1.0f, dw, OC))
    goto done;
  if (db) colsums(c, NULL, db, dout, NULL, NULL, NULL, N, OC);
done:
  GPT_UNLOCK(c);
}

static void gpt_head_fwd(void *ctx, float *logits, const float *x, const float *wte, int N, int V, int C) {
  GPT_LOCK(c);
  if (N <= 0 || V <= 0 || C <= 0) goto done;
  /* logits (N, V) = x (N, C) @ wte^T: column-major logits^T (V, N) = wte (V, C) @ x^T
   * (C, N); wte read column-major is wte^T (C, V, ld C), so op T; x read column-major is
   * x^T (C, N, ld C), op N; C = logits (ldc V). */
  GEMM1(c, "gpt head_fwd", CUBLAS_OP_T, CUBLAS_OP_N, V, N, C, wte, C, x, C, 0.0f, logits, V);
done:
  GPT_UNLOCK(c);
}

static void gpt_head_bwd(void *ctx, float *dx, float *dwte, const float *dlogits, const float *x, const float *wte,
                         int N, int V, int C) {
  GPT_LOCK(c);
  if (N <= 0 || V <= 0 || C <= 0) goto done;
  /* dx (N, C) += dlogits (N, V) @ wte (V, C): column-major dx^T (C, N) += wte^T (C, V) @
   * dlogits^T (V, N); both buffers read column-major are those transposes: A = wte
   * (lda C), B = dlogits (ldb V), op N both; C = dx (ldc C). */
  if (dx && GEMM1(c, "gpt head_bwd dx", CUBLAS_OP_N, CUBLAS_OP_N, C, N, V, wte, C, dlogits, V, 1.0f, dx, C))
    goto done;
  /* dwte (V, C) += dlogits^T (V, N) @ x (N, C): column-major dwte^T (C, V) += x^T (C, N) @
   * dlogits (N, V); x read column-major is x^T (ld C), op N; dlogits read column-major is
   * dlogits^T (V, N, ld V), so op T; C = dwte (ldc C). */
  if (dwte) GEMM1(c, "gpt head_bwd dwte", CUBLAS_OP_N, CUBLAS_OP_T, C, V, N, x, C, dlogits, V, 1.0f, dwte, C);
done:
  GPT_UNLOCK(c);
}

/* ---- attention ------------------------------------------------------------------------ */

/* Element i of a (B, H, T, hs) tensor, as an offset into a (B, T, row) one whose row holds
 * the heads' slices side by side from column 0 (row = C for out, 3C for qkv's q part). */
static __device__ size_t head_to_row(size_t i, int T, int C, int H, size_t row) {
  size_t hs = (size_t)(C / H);
  size_t d = i % hs, r = i / hs;
  size_t t = r % (size_t)T, bh = r / (size_t)T;
  size_t h = bh % (size_t)H, b = bh / (size_t)H;
  return (b * T + t) * row + h * hs + d;
}

/* qkv (B, T, 3C) -> q, k, v (B, H, T, hs) each. */
__global__ void att_permute_kernel(float *q, float *k, float *v, const float *qkv, int T, int C, int H,
                                   size_t n /* B T C */) {
  FOR_EACH(i, n) {
    size_t src = head_to_row(i, T, C, H, 3 * (size_t)C);
    q[i] = qkv[src];
    k[i] = qkv[src + C];
    v[i] = qkv[src + 2 * (size_t)C];
  }
}

/* dir 0: dst (B, H, T, hs) = src (B, T, C) permuted; dir 1: dst (B, T, C) = src (B, H, T, hs)
 * unpermuted. */
__global__ void att_move_kernel(float *dst, const float *src, int T, int C, int H, size_t n, int dir) {
  FOR_EACH(i, n) {
    size_t o = head_to_row(i, T, C, H, (size_t)C);
    if (dir) dst[o] = src[i];
    else dst[i] = src[o];
  }
}

/* dqkv (B, T, 3C) += dq, dk, dv (B, H, T, hs). */
__global__ void att_unpermute_add_kernel(float *dqkv, const float *dq, const float *dk, const float *dv, int T,
                                         int C, int H, size_t n) {
  FOR_EACH(i, n) {
    size_t dst = head_to_row(i, T, C, H, 3 * (size_t)C);
    dqkv[dst] += dq[i];
    dqkv[dst + C] += dk[i];
    dqkv[dst + 2 * (size_t)C] += dv[i];
  }
}

/* One warp per row (bh, t) of att (B H T, T), in place: the scaled scores of columns <= t
 * become their softmax, columns > t become 0. */
__global__ void att_softmax_kernel(float *att, int T, size_t rows) {
  size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (row >= rows) return; /* whole warps leave together: rows are per warp */
  int t = (int)(row % (size_t)T);
  float *a = att + row * T;
  float mx = -INFINITY;
  for (int j = lane; j <= t; j += 32) mx = fmaxf(mx, a[j]);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0;
  for (int j = lane; j <= t; j += 32) {
    float e = expf(a[j] - mx);
    a[j] = e;
    sum += e;
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  float inv = 1.0f / sum;
  for (int j = lane; j < T; j += 32) a[j] = j <= t ? a[j] * inv : 0.0f;
}

/* One warp per row, in place on da: dpre = att * (da - sum(att * da)) * scale for columns
 * <= t, 0 above. */
__global__ void att_softmax_bwd_kernel(float *da, const float *att, int T, float scale, size_t rows) {
  size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  int t = (int)(row % (size_t)T);
  float *d = da + row * T;
  const float *a = att + row * T;
  float dot = 0;
  for (int j = lane; j <= t; j += 32) dot += a[j] * d[j];
  for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  for (int j = lane; j < T; j += 32) d[j] = j <= t ? a[j] * (d[j] - dot) * scale : 0.0f;
}

static unsigned warp_rows_grid(size_t rows) { return (unsigned)((rows * 32 + GPT_THREADS - 1) / GPT_THREADS); }

static void gpt_attention_fwd(void *ctx, float *out, float *att, const float *qkv, int B, int T, int C, int H) {
  GPT_LOCK(c);
  {
    if (B <= 0 || T <= 0 || C <= 0 || H <= 0 || C % H) goto done;
    int hs = C / H, BH = B * H;
    size_t n = (size_t)B * T * C, rows = (size_t)BH * T;
    if (cu_grow(c, &c->gpt_scr, &c->gpt_scr_cap, 4 * n * sizeof(float))) goto done;
    float *q = (float *)c->gpt_scr, *k = q + n, *v = k + n, *y = v + n; /* each (B, H, T, hs) */
    att_permute_kernel<<<grid_for(n, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(q, k, v, qkv, T, C, H, n);
    if (cu_check(c, cudaGetLastError(), "gpt attention_fwd permute")) goto done;
    float scale = 1.0f / sqrtf((float)hs);
    long long sq = (long long)T * hs, sa = (long long)T * T;
    /* per head: att (T, T) = q (T, hs) @ k^T * scale, i.e. column-major att^T (T, T) =
     * k (T, hs) @ q^T (hs, T); k read column-major is k^T (hs, T, ld hs), so op T; q read
     * column-major is q^T (ld hs), op N; C = att (ldc T). */
    if (gemm(c, "gpt attention_fwd scores", CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, scale, k, hs, sq, q, hs, sq, 0.0f,
             att, T, sa, BH))
      goto done;
    att_softmax_kernel<<<warp_rows_grid(rows), GPT_THREADS, 0, c->stream>>>(att, T, rows);
    if (cu_check(c, cudaGetLastError(), "gpt attention_fwd softmax")) goto done;
    /* per head: y (T, hs) = att (T, T) @ v (T, hs), i.e. column-major y^T (hs, T) = v^T
     * (hs, T) @ att^T (T, T); both buffers read column-major are those transposes, op N:
     * A = v (lda hs), B = att (ldb T), C = y (ldc hs). */
    if (gemm(c, "gpt attention_fwd att @ v", CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, v, hs, sq, att, T, sa, 0.0f,
             y, hs, sq, BH))
      goto done;
    att_move_kernel<<<grid_for(n, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(out, y, T, C, H, n, 1);
    cu_check(c, cudaGetLastError(), "gpt attention_fwd unpermute");
  }
done:
  GPT_UNLOCK(c);
}

static void gpt_attention_bwd(void *ctx, float *dqkv, float *scratch, const float *dout, const float *qkv,
                              const float *att, int B, int T, int C, int H) {
  GPT_LOCK(c);
  {
    if (B <= 0 || T <= 0 || C <= 0 || H <= 0 || C % H) goto done;
    int hs = C / H, BH = B * H;
    size_t n = (size_t)B * T * C, rows = (size_t)BH * T;
    if (cu_grow(c, &c->gpt_scr, &c->gpt_scr_cap, 7 * n * sizeof(float))) goto done;
    float *q = (float *)c->gpt_scr, *k = q + n, *v = k + n, *dy = v + n; /* each (B, H, T, hs) */
    float *dq = dy + n, *dk = dq + n, *dv = dk + n;
    float *datt = scratch; /* (B, H, T, T) */
    att_permute_kernel<<<grid_for(n, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(q, k, v, qkv, T, C, H, n);
    if (cu_check(c, cudaGetLastError(), "gpt attention_bwd permute")) goto done;
    att_move_kernel<<<grid_for(n, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(dy, dout, T, C, H, n, 0);
    if (cu_check(c, cudaGetLastError(), "gpt attention_bwd permute dout")) goto done;
    float scale = 1.0f / sqrtf((float)hs);
    long long sq = (long long)T * hs, sa = (long long)T * T;
    /* y = att @ v. datt (T, T) = dy (T, hs) @ v^T: column-major datt^T (T, T) = v (T, hs) @
     * dy^T (hs, T); v read column-major is v^T (hs, T, ld hs), so op T; dy read column-major
     * is dy^T (ld hs), op N; C = datt (ldc T). */
    if (gemm(c, "gpt attention_bwd datt", CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, 1.0f, v, hs, sq, dy, hs, sq, 0.0f,
             datt, T, sa, BH))
      goto done;
    /* dv (T, hs) = att^T (T, T) @ dy (T, hs): column-major dv^T (hs, T) = dy^T (hs, T) @
     * att (T, T); dy read column-major is dy^T (ld hs), op N; att read column-major is
     * att^T (ld T), so op T; C = dv (ldc hs). */
    if (gemm(c, "gpt attention_bwd dv", CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, dy, hs, sq, att, T, sa, 0.0f, dv,
             hs, sq, BH))
      goto done;
    att_softmax_bwd_kernel<<<warp_rows_grid(rows), GPT_THREADS, 0, c->stream>>>(datt, att, T, scale, rows);
    if (cu_check(c, cudaGetLastError(), "gpt attention_bwd softmax")) goto done;
    /* pre = q @ k^T * scale (scale already in dpre). dq (T, hs) = dpre (T, T) @ k (T, hs):
     * column-major dq^T (hs, T) = k^T (hs, T) @ dpre^T (T, T); both buffers read
     * column-major are those transposes, op N: A = k (lda hs), B = dpre (ldb T). */
    if (gemm(c, "gpt attention_bwd dq", CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, k, hs, sq, datt, T, sa, 0.0f, dq,
             hs, sq, BH))
      goto done;
    /* dk (T, hs) = dpre^T (T, T) @ q (T, hs): column-major dk^T (hs, T) = q^T (hs, T) @ dpre
     * (T, T); q read column-major is q^T (ld hs), op N; dpre read column-major is dpre^T
     * (ld T), so op T; C = dk (ldc hs). */
    if (gemm(c, "gpt attention_bwd dk", CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, q, hs, sq, datt, T, sa, 0.0f, dk,
             hs, sq, BH))
      goto done;
    att_unpermute_add_kernel<<<grid_for(n, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(dqkv, dq, dk, dv, T, C, H,
                                                                                     n);
    cu_check(c, cudaGetLastError(), "gpt attention_bwd unpermute");
  }
done:
  GPT_UNLOCK(c);
}

/* ---- attention over a KV cache (inference) ---------------------------------------------- */

/* Rows pos .. pos+n-1 of kcache and vcache (n_ctx, C) = the k and v parts of qkv (n, 3C). */
__global__ void kv_store_kernel(float *kcache, float *vcache, const float *qkv, int pos, int C, size_t n /* n C */) {
  FOR_EACH(i, n) {
    size_t r = i / (size_t)C, c = i % (size_t)C, dst = ((size_t)pos + r) * C + c;
    kcache[dst] = qkv[r * 3 * C + C + c];
    vcache[dst] = qkv[r * 3 * C + 2 * (size_t)C + c];
  }
}

/* One block per (row r, head h): out[r, h] = softmax(q k^T * scale) v over cache rows
 * [0, pos + r]. Shared: L = pos + r + 1 scores, then hs of q. */
__global__ void kv_attention_kernel(float *out /* (n, C) */, const float *kcache, const float *vcache,
                                    const float *qkv /* (n, 3C) */, int pos, int C, int H) {
  extern __shared__ float kv_sh[];
  __shared__ float red[32];
  int r = blockIdx.x, h = blockIdx.y, hs = C / H, L = pos + r + 1;
  float *sc = kv_sh, *q = kv_sh + L;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) q[d] = qkv[(size_t)r * 3 * C + (size_t)h * hs + d];
  __syncthreads();
  float scale = 1.0f / sqrtf((float)hs), mx = -INFINITY;
  for (int t = threadIdx.x; t < L; t += blockDim.x) {
    const float *k = kcache + (size_t)t * C + (size_t)h * hs;
    float a = 0;
    for (int d = 0; d < hs; d++) a += q[d] * k[d];
    sc[t] = a * scale;
    mx = fmaxf(mx, sc[t]);
  }
  mx = gpt_block_max(mx, red);
  float s = 0;
  for (int t = threadIdx.x; t < L; t += blockDim.x) {
    float e = expf(sc[t] - mx);
    sc[t] = e;
    s += e;
  }
  float sum = gpt_block_sum(s, red); /* its barriers also publish sc to every thread */
  float *o = out + (size_t)r * C + (size_t)h * hs;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) {
    float a = 0;
    for (int t = 0; t < L; t++) a += sc[t] * vcache[(size_t)t * C + (size_t)h * hs + d];
    o[d] = a / sum;
  }
}

static void gpt_attention_cached(void *ctx, float *out, float *kcache, float *vcache, const float *qkv, int pos,
                                 int n, int C, int H) {
  GPT_LOCK(c);
  {
    if (n <= 0 || pos < 0 || C <= 0 || H <= 0 || C % H || H > 65535) goto done;
    size_t nc = (size_t)n * C;
    kv_store_kernel<<<grid_for(nc, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(kcache, vcache, qkv, pos, C, nc);
    if (cu_check(c, cudaGetLastError(), "gpt attention_cached store")) goto done;
    size_t shm = ((size_t)pos + n + (size_t)(C / H)) * sizeof(float);
    if (shm > 48 * 1024 &&
        cu_check(c, cudaFuncSetAttribute(kv_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm),
                 "gpt attention_cached smem"))
      goto done;
    kv_attention_kernel<<<dim3((unsigned)n, (unsigned)H), 128, shm, c->stream>>>(out, kcache, vcache, qkv, pos, C, H);
    cu_check(c, cudaGetLastError(), "gpt attention_cached");
  }
done:
  GPT_UNLOCK(c);
}

/* ---- elementwise ---------------------------------------------------------------------- */

/* The body of an elementwise op: kernel over n elements with the arguments given. */
#define GPT_ELEMENTWISE(what, kernel, n, ...)                                   \
  GPT_LOCK(c);                                                                  \
  if (n) {                                                                      \
    kernel<<<grid_for(n, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(__VA_ARGS__); \
    cu_check(c, cudaGetLastError(), what);                                      \
  }                                                                             \
done:                                                                           \
  GPT_UNLOCK(c)

#define GPT_GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

/* tanh as gpt.c computes it (fast_tanh / tanh8: Eigen's odd 13 / even 6 rational fit,
 * clamped where tanh is 1 in float), with the fused multiply-adds of its AVX2 form, so that
 * the GELU here gives the CPU's bits where the CPU has AVX2 and stays within 4e-7 of tanh
 * (tanhf differs from it by up to ~1e-6, a 2% relative difference in the gradient's tails). */
static __device__ float gpt_tanh(float x) {
  const float lim = 7.90531110763549805f;
  x = fmaxf(fminf(x, lim), -lim);
  float x2 = x * x;
  const float pc[7] = {-2.76076847742355e-16f, 2.00018790482477e-13f, -8.60467152213735e-11f,
                       5.12229709037114e-08f,  1.48572235717979e-05f, 6.37261928875436e-04f,
                       4.89352455891786e-03f};
  const float qc[4] = {1.19825839466702e-06f, 1.18534705686654e-04f, 2.26843463243900e-03f, 4.89352518554385e-03f};
  float p = pc[0], q = qc[0];
  for (int i = 1; i < 7; i++) p = fmaf(p, x2, pc[i]);
  for (int i = 1; i < 4; i++) q = fmaf(q, x2, qc[i]);
  return (x * p) / q;
}

/* u = sqrt(2/pi) (v + 0.044715 v^3), as gelu_u8 */
static __device__ float gelu_u(float v) { return GPT_GELU_SCALE * fmaf(0.044715f, (v * v) * v, v); }

__global__ void gelu_fwd_kernel(float *out, const float *inp, size_t n) {
  FOR_EACH(i, n) {
    float v = inp[i];
    out[i] = (0.5f * v) * (1.0f + gpt_tanh(gelu_u(v)));
  }
}

/* dinp += gelu'(inp) dout, gelu' = 0.5 (1 + th) + 0.5 v sech^2 du in gelu_bwd_avx2's order */
__global__ void gelu_bwd_kernel(float *dinp, const float *inp, const float *dout, size_t n) {
  FOR_EACH(i, n) {
    float v = inp[i];
    float th = gpt_tanh(gelu_u(v)), sech2 = fmaf(-th, th, 1.0f);
    float du = GPT_GELU_SCALE * fmaf(3.0f * 0.044715f, v * v, 1.0f);
    float g = 0.5f * fmaf(v * sech2, du, 1.0f + th);
    dinp[i] = fmaf(g, dout[i], dinp[i]);
  }
}

__global__ void add_kernel(float *out, const float *a, const float *b, size_t n) {
  FOR_EACH(i, n) out[i] = a[i] + b[i];
}

__global__ void scale_kernel(float *x, float s, size_t n) {
  FOR_EACH(i, n) x[i] *= s;
}

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                             float eps, float decay, float c1, float c2) {
  FOR_EACH(i, n) {
    float gi = g[i];
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= lr * ((mi / c1) / (sqrtf(vi / c2) + eps) + decay * p[i]);
  }
}

static void gpt_gelu_fwd(void *ctx, float *out, const float *inp, size_t n) {
  GPT_ELEMENTWISE("gpt gelu_fwd", gelu_fwd_kernel, n, out, inp, n);
}

static void gpt_gelu_bwd(void *ctx, float *dinp, const float *inp, const float *dout, size_t n) {
  GPT_ELEMENTWISE("gpt gelu_bwd", gelu_bwd_kernel, n, dinp, inp, dout, n);
}

static void gpt_add(void *ctx, float *out, const float *a, const float *b, size_t n) {
  GPT_ELEMENTWISE("gpt add", add_kernel, n, out, a, b, n);
}

static void gpt_scale(void *ctx, float *x, size_t n, float s) {
  GPT_ELEMENTWISE("gpt scale", scale_kernel, n, x, s, n);
}

static void gpt_adamw(void *ctx, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                      float b2, float eps, float decay, float c1, float c2) {
  GPT_ELEMENTWISE("gpt adamw", adamw_kernel, n, p, g, m, v, n, lr, b1, b2, eps, decay, c1, c2);
}

/* ---- cross-entropy -------------------------------------------------------------------- */

/* One block per row n of logits (N, V). */
__global__ void ce_fwd_kernel(float *probs, float *losses, const float *logits, const int32_t *targets, int V) {
  __shared__ float sh[32];
  size_t n = blockIdx.x;
  const float *l = logits + n * V;
  float *p = probs + n * V;
  int32_t tg = targets ? targets[n] : -1;
  /* read before the first barrier, and so before any thread writes the row (probs may
   * alias logits) */
  float lt = tg >= 0 ? l[tg] : 0.0f;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, l[i]);
  mx = gpt_block_max(mx, sh);
  float s = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float e = expf(l[i] - mx);
    p[i] = e; /* each element read and written by one thread */
    s += e;
  }
  float sum = gpt_block_sum(s, sh);
  float inv = 1.0f / sum;
  for (int i = threadIdx.x; i < V; i += blockDim.x) p[i] *= inv;
  if (threadIdx.x == 0 && losses) losses[n] = tg >= 0 ? mx + logf(sum) - lt : 0.0f;
}

/* dlogits (N, V) += (probs - onehot(target)) * dloss, rows with target >= 0 only: p * dloss
 * is added first and dloss taken off after, as on the CPU. */
__global__ void ce_bwd_kernel(float *dlogits, const float *probs, const int32_t *targets, int V, float dloss,
                              size_t n) {
  FOR_EACH(i, n) {
    size_t row = i / (size_t)V;
    int32_t tg = targets[row];
    if (tg < 0) continue;
    float d = dlogits[i] + probs[i] * dloss;
    if ((int32_t)(i % (size_t)V) == tg) d -= dloss;
    dlogits[i] = d;
  }
}

static void gpt_crossentropy_fwd(void *ctx, float *probs, float *losses, const float *logits,
                                 const int32_t *targets, int N, int V) {
  GPT_LOCK(c);
  if (N <= 0 || V <= 0) goto done;
  ce_fwd_kernel<<<N, 512, 0, c->stream>>>(probs, losses, logits, targets, V);
  cu_check(c, cudaGetLastError(), "gpt crossentropy_fwd");
done:
  GPT_UNLOCK(c);
}

static void gpt_crossentropy_bwd(void *ctx, float *dlogits, const float *probs, const int32_t *targets, int N,
                                 int V, float dloss) {
  GPT_LOCK(c);
  {
    size_t n = (size_t)N * V;
    if (N <= 0 || V <= 0) goto done;
    ce_bwd_kernel<<<grid_for(n, GPT_THREADS), GPT_THREADS, 0, c->stream>>>(dlogits, probs, targets, V, dloss, n);
    cu_check(c, cudaGetLastError(), "gpt crossentropy_bwd");
  }
done:
  GPT_UNLOCK(c);
}

/* ---- sum of squares ------------------------------------------------------------------- */

/* part[block] = the block's sum of x^2 in double over a fixed grid-stride partition. */
__global__ void sumsq_part_kernel(double *part, const float *x, size_t n) {
  __shared__ double sh[32];
  double s = 0;
  FOR_EACH(i, n) s += (double)x[i] * x[i];
  s = gpt_block_sum(s, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* One block: out[0] = sum of part (np), each thread's share in order, then the block's tree. */
__global__ void sumsq_final_kernel(double *out, const double *part, int np) {
  __shared__ double sh[32];
  double s = 0;
  for (int i = threadIdx.x; i < np; i += blockDim.x) s += part[i];
  s = gpt_block_sum(s, sh);
  if (threadIdx.x == 0) out[0] = s;
}

static double gpt_sumsq(void *ctx, const float *x, size_t n) {
  double r = NAN;
  GPT_LOCK(c);
  {
    if (!n) {
      r = 0;
      goto done;
    }
    if (cu_grow(c, &c->gpt_red, &c->gpt_red_cap, (GPT_SUMSQ_BLOCKS + 1) * sizeof(double))) goto done;
    double *part = (double *)c->gpt_red, *out = part + GPT_SUMSQ_BLOCKS;
    sumsq_part_kernel<<<GPT_SUMSQ_BLOCKS, GPT_THREADS, 0, c->stream>>>(part, x, n);
    if (cu_check(c, cudaGetLastError(), "gpt sumsq")) goto done;
    sumsq_final_kernel<<<1, GPT_THREADS, 0, c->stream>>>(out, part, GPT_SUMSQ_BLOCKS);
    if (cu_check(c, cudaGetLastError(), "gpt sumsq")) goto done;
    double h = NAN;
    if (cu_check(c, cudaMemcpyAsync(&h, out, sizeof h, cudaMemcpyDeviceToHost, c->stream), "gpt sumsq: copy") ||
        cu_check(c, cudaStreamSynchronize(c->stream), "gpt sumsq: sync"))
      goto done;
    r = h;
  }
done:
  GPT_UNLOCK(c);
  return r;
}

/* ---- status --------------------------------------------------------------------------- */

static qv_status gpt_status(void *ctx, char *msg, size_t msg_len) {
  cu_ctx *c = (cu_ctx *)ctx;
  cu_enter(c);
  qv_status st = c->err;
  if (msg && msg_len) snprintf(msg, msg_len, "%s", st ? c->err_msg : "");
  c->err = QV_OK;
  c->err_msg[0] = '\0';
  /* as cu_status: clears a non-sticky error; a sticky one fails the next op again */
  cudaGetLastError();
  GPT_UNLOCK(c);
  return st;
}

/* In gpt_ops.h's field order. */
const qv_gpt_ops cu_gpt_ops = {
    gpt_alloc,       gpt_release,          gpt_zero,          gpt_copy_in,       gpt_copy_out,
    gpt_encoder_fwd, gpt_encoder_bwd,      gpt_layernorm_fwd, gpt_layernorm_bwd, gpt_matmul_fwd,
    gpt_matmul_bwd,  gpt_head_fwd,         gpt_head_bwd,      gpt_attention_fwd, gpt_attention_bwd,
    gpt_gelu_fwd,    gpt_gelu_bwd,         gpt_add,           gpt_crossentropy_fwd, gpt_crossentropy_bwd,
    gpt_sumsq,       gpt_scale,            gpt_adamw,         gpt_status,        gpt_attention_cached,
};
