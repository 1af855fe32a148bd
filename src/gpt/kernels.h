/* GPT-specific CPU kernels: a register-blocked single-precision GEMM for the small shapes
 * training uses (rows of a batch x a few hundred columns), where OpenBLAS spends much of a
 * call packing and dispatching.
 *
 * gptk_gemm's result for an output element depends only on its row of A, its column of B and
 * K: the sum over k runs in increasing k, one fused multiply-add per term, in blocks of
 * GPTK_KC terms added onto the running output. So any split of the output over threads (by
 * rows or by columns) gives the same bits, unlike a BLAS whose blocking follows the call's
 * shape. */
#ifndef QV_GPT_KERNELS_H
#define QV_GPT_KERNELS_H

#include <stddef.h>

/* 1 when the CPU runs the AVX2+FMA kernel; otherwise gpt.c uses OpenBLAS. */
int gptk_gemm_available(void);

/* c (M, N) = init + A (M, K) @ B (K, N), where A(i, k) = a[i * ars + k * aks],
 * B(k, j) = b[k * bks + j * bjs] and c's rows are ldc floats apart. init is c itself when
 * accumulate is set, else bias (N) on every row, or zeros when bias is NULL. Any strides, so
 * transposed operands need no copy. Runs everywhere; fast with gptk_gemm_available(). */
void gptk_gemm(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b, size_t bks,
               size_t bjs, int M, int N, int K, int accumulate, const float *bias);

/* Packed B, for an operand that several calls share (attention's per-head K, V, Q and dout):
 * gptk_pack writes B (K, N) (B(k, j) = b[k * bks + j * bjs]) as ceil(N / GPTK_NR) panels of
 * K rows x GPTK_NR floats, panel p at bp + p * K * GPTK_NR, columns past N zero;
 * gptk_packed_floats(K, N) is its size. bp must be 32-byte aligned. */
#define GPTK_NR 16
/* The kernel's tile height and row block: callers that split outputs by rows cut them in
 * whole GPTK_MR-row tiles, and an output taller than GPTK_MC rows meets each B panel once per
 * block (worth packing B once ahead). */
#define GPTK_MR 6
#define GPTK_MC 192
size_t gptk_packed_floats(int K, int N);
void gptk_pack(float *bp, const float *b, size_t bks, size_t bjs, int K, int N);
/* gptk_gemm with B packed: panel p of B's rows [0, K) at bp + p * pstride, rows GPTK_NR floats
 * apart (so bp + k0 * GPTK_NR with pstride K * GPTK_NR reads rows [k0, k0 + K) of a
 * gptk_pack). The same bits as gptk_gemm on the unpacked operand. */
void gptk_gemm_packed(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *bp, size_t pstride,
                      int M, int N, int K, int accumulate, const float *bias);

/* out (n) = softmax(scale * in (n)), n >= 1, scale > 0; returns log(sum(exp(scale * in))),
 * computed from the maximum, so that -log p = lse - in[i] (scale 1) stays exact for tiny
 * probabilities. out may be in. Sums run in a fixed order for a given n. */
float gptk_softmax(float *out, const float *in, int n, float scale);
/* gptk_softmax without the log-sum-exp (attention's rows): the same out. */
void gptk_softmax_probs(float *out, const float *in, int n, float scale);

/* ---- Elementwise and row kernels (AVX2 where available, the same math in C elsewhere) ---- */

typedef struct gptk_adam {
  float lr, beta1, beta2, eps, decay; /* decay: this tensor's weight decay (0: none) */
  float bc1, bc2;                     /* bias corrections 1 - beta^t */
} gptk_adam;
/* One AdamW update of p, m, v (n) from gradients g (n), decoupled weight decay. */
void gptk_adamw(float *p, const float *g, float *m, float *v, size_t n, const gptk_adam *o);
/* sum x^2 in double, a fixed order for a given n. */
double gptk_sumsq(const float *x, size_t n);
void gptk_scale(float *x, size_t n, float s);
/* db (ncols) += sum over rows r < N of d[r * ld + j], in row order per column. */
void gptk_colsum(float *db, const float *d, size_t N, size_t ld, size_t ncols);
/* One row: out (C) = (in - mean) * rstd * w + b; mean and rstd stored when not NULL. */
void gptk_layernorm(float *out, const float *in, const float *w, const float *b, int C, float eps, float *mean,
                    float *rstd);
/* One row of LayerNorm's input gradient, added into dinp (C). */
void gptk_layernorm_bwd(float *dinp, const float *in, const float *dout, const float *w, float mean, float rstd,
                        int C);
/* LayerNorm's weight and bias gradients for columns [0, ncols) of rows ld floats apart:
 * dw += sum_r norm[r] * dout[r], db += sum_r dout[r], in row order per column. */
void gptk_layernorm_wgrad(float *dw, float *db, const float *in, const float *dout, const float *mean,
                          const float *rstd, size_t N, size_t ld, size_t ncols);
/* Softmax backward over one row in place: da = a * (da - sum(a * da)) * scale. */
void gptk_softmax_bwd(float *da, const float *a, int n, float scale);

#endif
