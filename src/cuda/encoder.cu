/* The encoder ops on the device: GEMMs through cuBLAS (FP16 or BF16 tensor cores with
 * FP32 accumulation by default; TF32 or plain FP32 by QUIVER_CUDA_GEMM), and kernels for
 * bias, layernorm, exact-erf GELU, tanh, masked softmax attention and embeddings. Each op
 * follows the CPU backend's contract in compute/backend.h, which tests/gpu checks it
 * against. */
#include <math.h>

#include "cuda/cuda_internal.h"

#define LOCK(c)                   \
  cu_ctx *c = (cu_ctx *)ctx;      \
  cu_enter(c);                    \
  if (c->err) goto done
#define UNLOCK(c) pthread_mutex_unlock(&c->mu)

static unsigned blocks_for(size_t n, unsigned threads) {
  size_t b = (n + threads - 1) / threads;
  return (unsigned)(b > 65535 * 8 ? 65535 * 8 : b ? b : 1);
}

/* ---- elementwise ------------------------------------------------------------------------ */

__global__ void to_half_kernel(__half *out, const float *in, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = __float2half_rn(in[i]);
}

__global__ void to_bf16_kernel(__nv_bfloat16 *out, const float *in, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void bias_kernel(float *out /* (M, N) */, const float *bias /* (N) */, int M, int N) {
  size_t n = (size_t)M * N;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] += bias[i % N];
}

__global__ void gelu_kernel(float *x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float v = x[i];
    x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
  }
}

__global__ void tanh_kernel(float *x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    x[i] = tanhf(x[i]);
}

/* Converts n floats at src into c->act as the GEMM's low-precision type. */
static void *to_low(cu_ctx *c, void **buf, size_t *cap, const float *src, size_t n) {
  if (cu_grow(c, buf, cap, n * 2)) return NULL;
  if (c->gemm == CU_GEMM_BF16)
    to_bf16_kernel<<<blocks_for(n, 256), 256, 0, c->stream>>>((__nv_bfloat16 *)*buf, src, n);
  else
    to_half_kernel<<<blocks_for(n, 256), 256, 0, c->stream>>>((__half *)*buf, src, n);
  return cu_check(c, cudaGetLastError(), "convert") ? NULL : *buf;
}

/* The low-precision copy of the weight range holding w (made once, invariant 3). */
static const void *weight_low(cu_ctx *c, const float *w) {
  cu_range *r = cu_find(c, w);
  if (!r || r->kind != QV_MAP_WEIGHT) return NULL;
  if (!r->low) {
    size_t n = r->bytes / sizeof(float);
    if (c->used + n * 2 > c->budget) return NULL; /* no room: this weight runs in FP32 */
    if (cudaMalloc(&r->low, n * 2) != cudaSuccess) {
      cudaGetLastError(); /* not an op failure: this weight runs in FP32 */
      r->low = NULL;
      return NULL;
    }
    size_t cap = n * 2;
    if (to_low(c, &r->low, &cap, (const float *)r->dev, n) == NULL) return NULL;
    c->used += n * 2;
  }
  size_t off = (size_t)((const char *)w - r->host) / sizeof(float);
  return (const char *)r->low + off * 2;
}

extern "C" void cu_linear(void *ctx, float *out, const float *inp, const float *w, const float *bias, int M, int N,
                          int K) {
  LOCK(c);
  {
    const float *inp_d = (const float *)cu_dev(c, inp, (size_t)M * K * 4, 0, 1);
    float *out_d = (float *)cu_dev(c, out, (size_t)M * N * 4, 1, 0);
    const float *bias_d = bias ? (const float *)cu_dev(c, bias, (size_t)N * 4, 2, 1) : NULL;
    if (!inp_d || !out_d || (bias && !bias_d)) goto done;
    const float one = 1.0f, zero = 0.0f;
    const void *w_low = c->gemm <= CU_GEMM_BF16 ? weight_low(c, w) : NULL;
    if (w_low) {
      /* Row-major out (M, N) = inp (M, K) @ w^T is column-major out^T (N, M) =
       * w (K, N)^T @ inp (K, M): A = w transposed, B = inp as is. */
      const void *x_low = to_low(c, &c->act, &c->act_cap, inp_d, (size_t)M * K);
      if (!x_low) goto done;
      cudaDataType t = c->gemm == CU_GEMM_BF16 ? CUDA_R_16BF : CUDA_R_16F;
      if (cu_check_blas(c,
                        cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w_low, t, K, x_low, t, K,
                                     &zero, out_d, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                        "gemm"))
        goto done;
    } else {
      const float *w_d = (const float *)cu_dev(c, w, (size_t)N * K * 4, 3, 1);
      if (!w_d) goto done;
      if (cu_check_blas(c, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w_d, K, inp_d, K, &zero,
                                       out_d, N),
                        "sgemm"))
        goto done;
    }
    if (bias_d) {
      bias_kernel<<<blocks_for((size_t)M * N, 256), 256, 0, c->stream>>>(out_d, bias_d, M, N);
      if (cu_check(c, cudaGetLastError(), "bias")) goto done;
    }
    cu_written(c, out, out_d, (size_t)M * N * 4);
  }
done:
  UNLOCK(c);
}

/* ---- layernorm: one block per row, FP32 two-pass statistics ----------------------------- */

__device__ float block_sum(float v, float *sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float t = 0;
  int nw = (blockDim.x + 31) >> 5;
  for (int i = 0; i < nw; i++) t += sh[i];
  return t;
}

__global__ void layernorm_kernel(float *out /* (rows, C) */, const float *inp, const float *res, const float *w,
                                 const float *b, int C, float eps) {
  __shared__ float sh[32];
  size_t row = blockIdx.x;
  const float *x = inp + row * C, *r = res ? res + row * C : NULL;
  float s = 0;
  for (int i = threadIdx.x; i < C; i += blockDim.x) s += x[i] + (r ? r[i] : 0.f);
  float mean = block_sum(s, sh) / C;
  float v = 0;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float d = x[i] + (r ? r[i] : 0.f) - mean;
    v += d * d;
  }
  float rstd = rsqrtf(block_sum(v, sh) / C + eps);
  /* each element is read and written by the same thread, so out may alias inp or res */
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float d = x[i] + (r ? r[i] : 0.f) - mean;
    out[row * C + i] = d * rstd * w[i] + b[i];
  }
}

extern "C" void cu_layernorm(void *ctx, float *out, const float *inp, const float *residual, const float *w,
                             const float *b, int rows, int C, float eps) {
  LOCK(c);
  {
    size_t bytes = (size_t)rows * C * 4;
    const float *inp_d = (const float *)cu_dev(c, inp, bytes, 0, 1);
    const float *res_d = residual ? (const float *)cu_dev(c, residual, bytes, 1, 1) : NULL;
    float *out_d = out == inp ? (float *)inp_d : out == residual ? (float *)res_d : (float *)cu_dev(c, out, bytes, 2, 0);
    const float *w_d = (const float *)cu_dev(c, w, (size_t)C * 4, 3, 1);
    const float *b_d = (const float *)cu_dev(c, b, (size_t)C * 4, 4, 1);
    if (!inp_d || (residual && !res_d) || !out_d || !w_d || !b_d || rows <= 0) goto done;
    layernorm_kernel<<<rows, 128, 0, c->stream>>>(out_d, inp_d, res_d, w_d, b_d, C, eps);
    if (cu_check(c, cudaGetLastError(), "layernorm")) goto done;
    cu_written(c, out, out_d, bytes);
  }
done:
  UNLOCK(c);
}

static void unary(void *ctx, float *x, size_t n, int which) {
  LOCK(c);
  {
    float *x_d = (float *)cu_dev(c, x, n * 4, 0, 1);
    if (!x_d || !n) goto done;
    if (which == 0) gelu_kernel<<<blocks_for(n, 256), 256, 0, c->stream>>>(x_d, n);
    else tanh_kernel<<<blocks_for(n, 256), 256, 0, c->stream>>>(x_d, n);
    if (cu_check(c, cudaGetLastError(), which ? "tanh" : "gelu")) goto done;
    cu_written(c, x, x_d, n * 4);
  }
done:
  UNLOCK(c);
}

extern "C" void cu_gelu(void *ctx, float *x, size_t n) { unary(ctx, x, n, 0); }
extern "C" void cu_tanh(void *ctx, float *x, size_t n) { unary(ctx, x, n, 1); }

/* ---- attention: one block per (query t, head h, sequence b) ------------------------------- */

__global__ void attention_kernel(float *out /* (B, T, C) */, const float *qkv /* (B, T, 3C) */,
                                 const int *lens /* (B) */, int T, int C, int NH) {
  extern __shared__ float sh[]; /* T scores | hs query | 32 reduction */
  int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  int len = lens ? lens[b] : T;
  float *o = out + ((size_t)b * T + t) * C + (size_t)h * hs;
  if (t >= len) { /* padded rows are zeros, as on the CPU */
    for (int d = threadIdx.x; d < hs; d += blockDim.x) o[d] = 0;
    return;
  }
  float *sc = sh, *q = sh + T, *red = q + hs;
  const float *base = qkv + (size_t)b * T * 3 * C;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) q[d] = base[(size_t)t * 3 * C + h * hs + d];
  __syncthreads();
  float scale = rsqrtf((float)hs), mx = -INFINITY;
  for (int s = threadIdx.x; s < len; s += blockDim.x) {
    const float *k = base + (size_t)s * 3 * C + C + h * hs;
    float a = 0;
    for (int d = 0; d < hs; d++) a += q[d] * k[d];
    sc[s] = a * scale;
    mx = fmaxf(mx, sc[s]);
  }
  /* block max */
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
  __syncthreads();
  mx = -INFINITY;
  for (int i = 0; i < (int)((blockDim.x + 31) >> 5); i++) mx = fmaxf(mx, red[i]);
  __syncthreads();
  float sum = 0;
  for (int s = threadIdx.x; s < len; s += blockDim.x) {
    float e = expf(sc[s] - mx);
    sc[s] = e;
    sum += e;
  }
  sum = block_sum(sum, red);
  __syncthreads();
  float inv = 1.0f / sum;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) {
    float a = 0;
    for (int s = 0; s < len; s++) a += sc[s] * base[(size_t)s * 3 * C + 2 * C + h * hs + d];
    o[d] = a * inv;
  }
}

extern "C" size_t cu_attention_scratch(void *ctx, int B, int T, int NH) { return 0; }

extern "C" void cu_attention(void *ctx, float *out, const float *qkv, const int *lens, int B, int T, int C, int NH,
                             float *scratch) {
  LOCK(c);
  {
    const float *qkv_d = (const float *)cu_dev(c, qkv, (size_t)B * T * 3 * C * 4, 0, 1);
    float *out_d = (float *)cu_dev(c, out, (size_t)B * T * C * 4, 1, 0);
    const int *lens_d = lens ? (const int *)cu_dev(c, lens, (size_t)B * sizeof(int), 2, 1) : NULL;
    if (!qkv_d || !out_d || (lens && !lens_d) || B <= 0 || T <= 0) goto done;
    size_t shm = ((size_t)T + (size_t)(C / NH) + 32) * sizeof(float);
    if (shm > 48 * 1024 &&
        cu_check(c, cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm),
                 "attention smem"))
      goto done;
    attention_kernel<<<dim3(T, NH, B), 128, shm, c->stream>>>(out_d, qkv_d, lens_d, T, C, NH);
    if (cu_check(c, cudaGetLastError(), "attention")) goto done;
    cu_written(c, out, out_d, (size_t)B * T * C * 4);
  }
done:
  UNLOCK(c);
}

/* ---- embeddings --------------------------------------------------------------------------- */

__global__ void embed_kernel(float *out /* (B, T, C) */, const int32_t *ids, const int32_t *types,
                             const float *word, const float *pos, const float *type, const int *lens, int B, int T,
                             int C) {
  size_t n = (size_t)B * T * C;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    size_t bt = i / C;
    int c = (int)(i % C), t = (int)(bt % T), b = (int)(bt / T);
    if (lens && t >= lens[b]) {
      out[i] = 0;
      continue;
    }
    int tt = types ? types[bt] : 0;
    out[i] = word[(size_t)ids[bt] * C + c] + pos[(size_t)t * C + c] + type[(size_t)tt * C + c];
  }
}

extern "C" void cu_embed(void *ctx, float *out, const int32_t *ids, const int32_t *type_ids, const float *word,
                         const float *pos, const float *type, const int *lens, int B, int T, int C) {
  LOCK(c);
  {
    size_t BT = (size_t)B * T;
    float *out_d = (float *)cu_dev(c, out, BT * C * 4, 0, 0);
    const int32_t *ids_d = (const int32_t *)cu_dev(c, ids, BT * 4, 1, 1);
    const int32_t *ty_d = type_ids ? (const int32_t *)cu_dev(c, type_ids, BT * 4, 2, 1) : NULL;
    const int *lens_d = lens ? (const int *)cu_dev(c, lens, (size_t)B * sizeof(int), 3, 1) : NULL;
    /* the tables are mapped weights in practice; a staged table is copied whole, so
     * find its size from the range map only (an unmapped table is refused) */
    cu_range *rw = cu_find(c, word), *rp = cu_find(c, pos), *rt = cu_find(c, type);
    if (!rw || !rp || !rt) {
      if (!c->err) {
        c->err = QV_EDEVICE;
        snprintf(c->err_msg, sizeof c->err_msg, "embed: the embedding tables are not mapped");
      }
      goto done;
    }
    const float *w_d = (const float *)(rw->dev + ((const char *)word - rw->host));
    const float *p_d = (const float *)(rp->dev + ((const char *)pos - rp->host));
    const float *t_d = (const float *)(rt->dev + ((const char *)type - rt->host));
    if (!out_d || !ids_d || (type_ids && !ty_d) || (lens && !lens_d) || !BT) goto done;
    embed_kernel<<<blocks_for(BT * C, 256), 256, 0, c->stream>>>(out_d, ids_d, ty_d, w_d, p_d, t_d, lens_d, B, T, C);
    if (cu_check(c, cudaGetLastError(), "embed")) goto done;
    cu_written(c, out, out_d, BT * C * 4);
  }
done:
  UNLOCK(c);
}
