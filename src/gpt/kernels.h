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

/* out (n) = softmax(scale * in (n)), n >= 1, scale > 0; returns log(sum(exp(scale * in))),
 * computed from the maximum, so that -log p = lse - in[i] (scale 1) stays exact for tiny
 * probabilities. out may be in. Sums run in a fixed order for a given n. */
float gptk_softmax(float *out, const float *in, int n, float scale);

#endif
