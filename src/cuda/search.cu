/* Exact batched search on the device: the twin of src/index/flat.c.
 *
 * Rows are taken in blocks; each block is one FP32 SGEMM (queries x rows, IEEE FP32 so
 * scores match the CPU's sgemm up to summation order) followed by a top-k selection
 * kernel that merges the block's scores into each query's running k best. Selection
 * uses the CPU's total order -- higher key first, NaN below every number, ties by lower
 * row -- and picks the k best by k rounds of "the best candidate ranked after the last
 * one picked". A strict total order means nothing has to be marked as taken, so a round
 * is a plain block-wide argmax. Cost per block is O(k * (rows + k)) per query, small next
 * to the GEMM's O(rows * dim) for k up to a few hundred (CU_TOPK_MAX caps it).
 *
 * Euclid ranks on -(|q|^2 + |x|^2 - 2 q.x) clamped at 0 and reports the square root, as
 * flat.c's GEMM mode does before its exact rescoring; near-duplicates can differ from the
 * CPU's exact rescored distance by about 1e-7 * (|q|^2 + |x|^2) (the stated tolerance). */
#include <math.h>

#include "cuda/cuda_internal.h"

#define DIST_COSINE 0
#define DIST_DOT 1
#define DIST_EUCLID 2
#define TOPK_THREADS 256

__device__ __forceinline__ bool key_better(float ak, unsigned ar, float bk, unsigned br) {
  bool an = isnan(ak), bn = isnan(bk);
  if (an != bn) return !an;
  if (!an && ak != bk) return ak > bk;
  return ar < br;
}

__global__ void sqnorm_kernel(float *out /* (n) */, const float *x /* (n, stride) */, size_t n, size_t dim,
                              size_t stride) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const float *r = x + i * stride;
    float s = 0;
    for (size_t d = 0; d < dim; d++) s += r[d] * r[d];
    out[i] = s;
  }
}

/* One block per query. prev_* (nq, k) hold prev_n[q] best-first entries from earlier row
 * blocks; next_* get the merged best min(k, candidates). S (nq, RB): this block's scores
 * for rows r0 .. r0 + rb - 1. */
__global__ void topk_merge_kernel(float *next_key, unsigned *next_row, unsigned *next_n, const float *prev_key,
                                  const unsigned *prev_row, const unsigned *prev_n, const float *S, size_t RB,
                                  size_t rb, size_t r0, int metric, const float *qn, const float *xn,
                                  const unsigned long long *mask, size_t k) {
  __shared__ float sk[TOPK_THREADS];
  __shared__ unsigned sr[TOPK_THREADS];
  __shared__ int sv[TOPK_THREADS];
  __shared__ float last_k;
  __shared__ unsigned last_r;
  __shared__ int have_last, done;
  size_t q = blockIdx.x;
  const float *s = S + q * RB;
  unsigned pn = prev_n ? prev_n[q] : 0;
  float qq = qn ? qn[q] : 0;
  if (threadIdx.x == 0) {
    have_last = 0;
    done = 0;
  }
  __syncthreads();
  size_t got = 0;
  for (size_t round = 0; round < k; round++) {
    float bk = 0;
    unsigned br = 0;
    int bv = 0;
    float lk = last_k;
    unsigned lr = last_r;
    int hl = have_last;
    for (size_t i = threadIdx.x; i < pn + rb; i += blockDim.x) {
      float key;
      unsigned row;
      if (i < pn) {
        key = prev_key[q * k + i];
        row = prev_row[q * k + i];
      } else {
        size_t j = i - pn, r = r0 + j;
        if (mask && !((mask[r >> 6] >> (r & 63)) & 1ull)) continue;
        float v = s[j];
        if (metric == DIST_EUCLID) v = -fmaxf(qq + xn[j] - 2.0f * v, 0.0f);
        key = v;
        row = (unsigned)r;
      }
      if (hl && !key_better(lk, lr, key, row)) continue; /* not ranked after the last pick */
      if (!bv || key_better(key, row, bk, br)) {
        bk = key;
        br = row;
        bv = 1;
      }
    }
    sk[threadIdx.x] = bk;
    sr[threadIdx.x] = br;
    sv[threadIdx.x] = bv;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
      if ((int)threadIdx.x < w) {
        int o = threadIdx.x + w;
        if (sv[o] && (!sv[threadIdx.x] || key_better(sk[o], sr[o], sk[threadIdx.x], sr[threadIdx.x]))) {
          sk[threadIdx.x] = sk[o];
          sr[threadIdx.x] = sr[o];
          sv[threadIdx.x] = 1;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      if (!sv[0]) {
        done = 1;
      } else {
        next_key[q * k + round] = sk[0];
        next_row[q * k + round] = sr[0];
        last_k = sk[0];
        last_r = sr[0];
        have_last = 1;
      }
    }
    __syncthreads();
    if (done) break;
    got++;
  }
  if (threadIdx.x == 0) next_n[q] = (unsigned)got;
}

extern "C" qv_status cu_search_exact(void *ctx, float *scores, uint32_t *rows, size_t *counts, const float *queries,
                                     size_t nq, const float *base, size_t n, size_t dim, size_t stride, int metric,
                                     size_t k, const uint64_t *mask) {
  if (metric != DIST_COSINE && metric != DIST_DOT && metric != DIST_EUCLID) return QV_EUNSUPPORTED;
  if (k > CU_TOPK_MAX || n > 0xffffffffu) return QV_EUNSUPPORTED;
  if (!dim || stride < dim) return QV_EINVAL;
  if (k == 0 || n == 0 || nq == 0) {
    for (size_t q = 0; q < nq; q++) counts[q] = 0;
    return QV_OK;
  }
  cu_ctx *c = (cu_ctx *)ctx;
  cu_enter(c);
  qv_status st = QV_OK;
  /* IEEE FP32 whatever the encoder's GEMM mode: results must match the CPU's */
  cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);
  float *keys_h = NULL;
  unsigned *rows_h = NULL, *n_h = NULL;
  if (c->err) {
    st = c->err;
    goto done;
  }
  {
    const float *x_d = (const float *)cu_dev(c, base, ((n - 1) * stride + dim) * 4, 0, 1);
    const float *q_d = (const float *)cu_dev(c, queries, nq * dim * 4, 1, 1);
    const unsigned long long *m_d =
        mask ? (const unsigned long long *)cu_dev(c, mask, (n + 63) / 64 * 8, 2, 1) : NULL;
    /* row block: keep the score block near 256 MB */
    size_t RB = (size_t)64 << 20;
    RB = RB / nq;
    if (RB < 1024) RB = 1024;
    if (RB > n) RB = n;
    size_t cand = nq * k;
    if (!x_d || !q_d || (mask && !m_d)) goto fail;
    /* layout of one device block: S (nq, RB) | qn (nq) | xn (RB) | 2 x keys (nq, k) | 2 x rows | 2 x n */
    size_t need = (nq * RB + nq + RB + 2 * cand) * 4 + 2 * cand * 4 + 2 * nq * 4;
    if (cu_grow(c, (void **)&c->scratch, &c->scratch_cap, need)) goto fail;
    float *S = c->scratch, *qn = S + nq * RB, *xn = qn + nq;
    float *keys[2] = {xn + RB, xn + RB + cand};
    unsigned *rws[2] = {(unsigned *)(keys[1] + cand), (unsigned *)(keys[1] + cand) + cand};
    unsigned *cnt[2] = {rws[1] + cand, rws[1] + cand + nq};
    if (metric == DIST_EUCLID) {
      sqnorm_kernel<<<(unsigned)((nq + 255) / 256), 256, 0, c->stream>>>(qn, q_d, nq, dim, dim);
      if (cu_check(c, cudaGetLastError(), "norms")) goto fail;
    }
    const float one = 1.0f, zero = 0.0f;
    int cur = 0, first = 1;
    for (size_t r0 = 0; r0 < n; r0 += RB) {
      size_t rb = n - r0 < RB ? n - r0 : RB;
      const float *xb = x_d + r0 * stride;
      if (cu_check_blas(c, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rb, (int)nq, (int)dim, &one, xb,
                                       (int)stride, q_d, (int)dim, &zero, S, (int)RB),
                        "search sgemm"))
        goto fail;
      if (metric == DIST_EUCLID) {
        sqnorm_kernel<<<(unsigned)((rb + 255) / 256), 256, 0, c->stream>>>(xn, xb, rb, dim, stride);
        if (cu_check(c, cudaGetLastError(), "norms")) goto fail;
      }
      topk_merge_kernel<<<(unsigned)nq, TOPK_THREADS, 0, c->stream>>>(
          keys[cur ^ 1], rws[cur ^ 1], cnt[cur ^ 1], first ? NULL : keys[cur], first ? NULL : rws[cur],
          first ? NULL : cnt[cur], S, RB, rb, r0, metric, metric == DIST_EUCLID ? qn : NULL, xn, m_d, k);
      if (cu_check(c, cudaGetLastError(), "top-k")) goto fail;
      cur ^= 1;
      first = 0;
    }
    keys_h = (float *)malloc(cand * 4);
    rows_h = (unsigned *)malloc(cand * 4);
    n_h = (unsigned *)malloc(nq * 4);
    if (!keys_h || !rows_h || !n_h) {
      st = QV_ENOMEM;
      goto done;
    }
    if (cu_check(c, cudaMemcpyAsync(keys_h, keys[cur], cand * 4, cudaMemcpyDeviceToHost, c->stream), "copy out") ||
        cu_check(c, cudaMemcpyAsync(rows_h, rws[cur], cand * 4, cudaMemcpyDeviceToHost, c->stream), "copy out") ||
        cu_check(c, cudaMemcpyAsync(n_h, cnt[cur], nq * 4, cudaMemcpyDeviceToHost, c->stream), "copy out") ||
        cu_check(c, cudaStreamSynchronize(c->stream), "search"))
      goto fail;
    for (size_t q = 0; q < nq; q++) {
      counts[q] = n_h[q];
      for (size_t i = 0; i < n_h[q]; i++) {
        float key = keys_h[q * k + i];
        scores[q * k + i] = metric == DIST_EUCLID ? sqrtf(-key) : key;
        rows[q * k + i] = rows_h[q * k + i];
      }
    }
  }
  goto done;
fail:
  st = QV_EDEVICE; /* recorded in c->err too; status() reports and clears it */
done:
  if (c->gemm == CU_GEMM_TF32) cublasSetMathMode(c->blas, CUBLAS_TF32_TENSOR_OP_MATH);
  free(keys_h);
  free(rows_h);
  free(n_h);
  pthread_mutex_unlock(&c->mu);
  return st;
}
