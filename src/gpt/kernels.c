/* GPT kernels (kernels.h): a 6 x 16 register-blocked AVX2+FMA GEMM.
 *
 * Blocking, after BLIS's Haswell kernel: the output is cut into 6-row x 16-column tiles, each
 * held in 12 ymm accumulators while k runs; B is copied once per (row block, k block, 16
 * columns) into a contiguous, zero-padded panel on the stack (GPTK_KC x 16 floats, 16 KiB, L1),
 * and A is read in place through its strides (six rows, one broadcast each per k). Rows are
 * taken MC at a time so that the A rows a panel meets stay in L2. Training's matrices are
 * small (K <= 512 at width 128, a weight at most 1 MiB), so copying B costs 1/MC of the
 * multiply-adds and A needs no copy at all.
 *
 * Invariants:
 *   1. An output element's value depends only on its row of A, its column of B and K: terms
 *      are added in increasing k with one FMA each, onto the output's running value, in the
 *      same k blocks whatever M, N or the caller's split (kernels.h).
 *   2. Edge tiles (fewer than 6 rows or 16 columns) run the same kernel on a padded copy, so
 *      they follow invariant 1 too.
 */
#include "gpt/kernels.h"

#include <math.h>
#include <string.h>

#include "compute/simd.h"

enum { MR = 6, NR = 16, KC = 256, MC = 192 };

#if defined(QV_X86)

int gptk_gemm_available(void) {
  static int cached = -1;
  if (cached < 0) cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return cached;
}

/* c (6, 16) += A (6 rows ar[r], k stride aks) (6, kc) @ bp (kc, 16), bp packed. */
AVX2 static void ukernel_avx2(float *c, size_t ldc, const float *const *ar, size_t aks, const float *bp, int kc,
                         const float *init) {
  float *c0 = c, *c1 = c + ldc, *c2 = c + 2 * ldc, *c3 = c + 3 * ldc, *c4 = c + 4 * ldc, *c5 = c + 5 * ldc;
  __m256 x00, x01, x10, x11, x20, x21, x30, x31, x40, x41, x50, x51;
  if (init) { /* every row starts from the same 16 values (a bias, or zeros) */
    x00 = x10 = x20 = x30 = x40 = x50 = _mm256_loadu_ps(init);
    x01 = x11 = x21 = x31 = x41 = x51 = _mm256_loadu_ps(init + 8);
  } else {
    x00 = _mm256_loadu_ps(c0), x01 = _mm256_loadu_ps(c0 + 8);
    x10 = _mm256_loadu_ps(c1), x11 = _mm256_loadu_ps(c1 + 8);
    x20 = _mm256_loadu_ps(c2), x21 = _mm256_loadu_ps(c2 + 8);
    x30 = _mm256_loadu_ps(c3), x31 = _mm256_loadu_ps(c3 + 8);
    x40 = _mm256_loadu_ps(c4), x41 = _mm256_loadu_ps(c4 + 8);
    x50 = _mm256_loadu_ps(c5), x51 = _mm256_loadu_ps(c5 + 8);
  }
  const float *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3], *a4 = ar[4], *a5 = ar[5];
  size_t o = 0;
  for (int k = 0; k < kc; k++, o += aks, bp += NR) {
    __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8), v;
    v = _mm256_broadcast_ss(a0 + o);
    x00 = _mm256_fmadd_ps(v, b0, x00);
    x01 = _mm256_fmadd_ps(v, b1, x01);
    v = _mm256_broadcast_ss(a1 + o);
    x10 = _mm256_fmadd_ps(v, b0, x10);
    x11 = _mm256_fmadd_ps(v, b1, x11);
    v = _mm256_broadcast_ss(a2 + o);
    x20 = _mm256_fmadd_ps(v, b0, x20);
    x21 = _mm256_fmadd_ps(v, b1, x21);
    v = _mm256_broadcast_ss(a3 + o);
    x30 = _mm256_fmadd_ps(v, b0, x30);
    x31 = _mm256_fmadd_ps(v, b1, x31);
    v = _mm256_broadcast_ss(a4 + o);
    x40 = _mm256_fmadd_ps(v, b0, x40);
    x41 = _mm256_fmadd_ps(v, b1, x41);
    v = _mm256_broadcast_ss(a5 + o);
    x50 = _mm256_fmadd_ps(v, b0, x50);
    x51 = _mm256_fmadd_ps(v, b1, x51);
  }
  _mm256_storeu_ps(c0, x00), _mm256_storeu_ps(c0 + 8, x01);
  _mm256_storeu_ps(c1, x10), _mm256_storeu_ps(c1 + 8, x11);
  _mm256_storeu_ps(c2, x20), _mm256_storeu_ps(c2 + 8, x21);
  _mm256_storeu_ps(c3, x30), _mm256_storeu_ps(c3 + 8, x31);
  _mm256_storeu_ps(c4, x40), _mm256_storeu_ps(c4 + 8, x41);
  _mm256_storeu_ps(c5, x50), _mm256_storeu_ps(c5 + 8, x51);
}

/* bp (kc, 16) = B (k0.., j0..j0+16) for a row-major B (bjs == 1) and a full panel. */
AVX2 static void pack_rows16(float *bp, const float *b, size_t bks, int kc) {
  for (int k = 0; k < kc; k++, b += bks, bp += NR) {
    _mm256_store_ps(bp, _mm256_loadu_ps(b));
    _mm256_store_ps(bp + 8, _mm256_loadu_ps(b + 8));
  }
}

/* bp (kc, 16) = B (k, j) = b[j * bjs + k] for a full panel and kc a multiple of 8:
 * 8 x 8 blocks transposed in registers. */
AVX2 static void pack_cols16(float *bp, const float *b, size_t bjs, int kc) {
  for (int jb = 0; jb < NR; jb += 8)
    for (int k = 0; k < kc; k += 8) {
      const float *s = b + (size_t)jb * bjs + (size_t)k;
      __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + bjs), r2 = _mm256_loadu_ps(s + 2 * bjs);
      __m256 r3 = _mm256_loadu_ps(s + 3 * bjs), r4 = _mm256_loadu_ps(s + 4 * bjs);
      __m256 r5 = _mm256_loadu_ps(s + 5 * bjs), r6 = _mm256_loadu_ps(s + 6 * bjs);
      __m256 r7 = _mm256_loadu_ps(s + 7 * bjs);
      __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
      __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
      __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
      __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float *d = bp + (size_t)k * NR + jb;
      _mm256_store_ps(d + 0 * NR, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_store_ps(d + 1 * NR, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_store_ps(d + 2 * NR, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_store_ps(d + 3 * NR, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_store_ps(d + 4 * NR, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_store_ps(d + 5 * NR, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_store_ps(d + 6 * NR, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_store_ps(d + 7 * NR, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
}

/* e^x for x <= 88 (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-5 polynomial for
 * e^r, 2^n built in the exponent bits); within 2 ulp of expf, 0 below -87.33 (softmax
 * inputs are shifted by their maximum, so they never overflow). */
AVX2 static inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3365478515625f);
  __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ); /* below: exactly 0, as expf's underflow */
  x = _mm256_max_ps(x, lo);
  __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), keep);
}

AVX2 static float softmax_avx2(float *out, const float *in, int n, float scale) {
  int i = 0;
  __m256 mv = _mm256_set1_ps(-INFINITY);
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(in + i));
  float maxv = avx2_hmax(mv);
  for (; i < n; i++) maxv = in[i] > maxv ? in[i] : maxv;
  __m256 mx = _mm256_set1_ps(maxv), sc = _mm256_set1_ps(scale), sv = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(in + i), mx), sc));
    _mm256_storeu_ps(out + i, e);
    sv = _mm256_add_ps(sv, e);
  }
  float sum = avx2_hsum(sv);
  for (; i < n; i++) {
    out[i] = expf((in[i] - maxv) * scale);
    sum += out[i];
  }
  float inv = 1.0f / sum;
  __m256 iv = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(out + i), iv));
  for (; i < n; i++) out[i] *= inv;
  return maxv * scale + logf(sum);
}

#else

int gptk_gemm_available(void) { return 0; }

#endif

/* ukernel_avx2's contract in plain C, for CPUs without AVX2 (gpt.c then prefers OpenBLAS,
 * but gptk_gemm stays correct everywhere). */
static void ukernel_c(float *c, size_t ldc, const float *const *ar, size_t aks, const float *bp, int kc,
                      const float *init) {
  for (int r = 0; r < MR; r++)
    for (int j = 0; j < NR; j++) {
      float s = init ? init[j] : c[r * ldc + j];
      for (int k = 0; k < kc; k++) s = fmaf(ar[r][k * aks], bp[k * NR + j], s);
      c[r * ldc + j] = s;
    }
}

/* bp (kc, 16) = B (k0.., j0..j0+nr), columns past nr zero. */
static void pack_b(float *bp, const float *b, size_t bks, size_t bjs, int k0, int kc, int j0, int nr) {
#if defined(QV_X86)
  if (gptk_gemm_available() && nr == NR && bjs == 1) {
    pack_rows16(bp, b + (size_t)k0 * bks + (size_t)j0, bks, kc);
    return;
  }
  if (gptk_gemm_available() && nr == NR && bks == 1 && kc % 8 == 0) {
    pack_cols16(bp, b + (size_t)j0 * bjs + (size_t)k0, bjs, kc);
    return;
  }
#endif
  if (bjs == 1) {
    for (int k = 0; k < kc; k++) {
      const float *src = b + (size_t)(k0 + k) * bks + (size_t)j0;
      float *dst = bp + (size_t)k * NR;
      memcpy(dst, src, (size_t)nr * sizeof(float));
      for (int j = nr; j < NR; j++) dst[j] = 0.0f;
    }
    return;
  }
  /* a transposed B: walk each column along k, where it is contiguous when bks == 1 */
  for (int j = 0; j < NR; j++) {
    if (j >= nr) {
      for (int k = 0; k < kc; k++) bp[(size_t)k * NR + j] = 0.0f;
      continue;
    }
    const float *src = b + (size_t)(j0 + j) * bjs + (size_t)k0 * bks;
    for (int k = 0; k < kc; k++) bp[(size_t)k * NR + j] = src[(size_t)k * bks];
  }
}

void gptk_gemm(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b, size_t bks,
               size_t bjs, int M, int N, int K, int accumulate, const float *bias) {
  float bp[KC * NR] __attribute__((aligned(64)));
  float ct[MR * NR] __attribute__((aligned(64)));
  float init[NR] __attribute__((aligned(64)));
  void (*ukernel)(float *, size_t, const float *const *, size_t, const float *, int, const float *) = ukernel_c;
#if defined(QV_X86)
  if (gptk_gemm_available()) ukernel = ukernel_avx2;
#endif
  for (int i0 = 0; i0 < M; i0 += MC) {
    int mc = M - i0 < MC ? M - i0 : MC;
    /* K == 0 still runs one empty block, so that a non-accumulating call writes its init */
    for (int k0 = 0; k0 < K || k0 == 0; k0 += KC) {
      int kc = K - k0 < KC ? K - k0 : KC;
      int fresh = k0 == 0 && !accumulate; /* tiles start from init instead of c */
      for (int j0 = 0; j0 < N; j0 += NR) {
        int nr = N - j0 < NR ? N - j0 : NR;
        if (fresh) {
          for (int j = 0; j < NR; j++) init[j] = bias && j < nr ? bias[j0 + j] : 0.0f;
        }
        pack_b(bp, b, bks, bjs, k0, kc, j0, nr);
        for (int i = i0; i < i0 + mc; i += MR) {
          int mr = i0 + mc - i < MR ? i0 + mc - i : MR;
          const float *ar[MR];
          /* rows past mr repeat row i: computed into the padded tile and dropped */
          for (int r = 0; r < MR; r++) ar[r] = a + (size_t)(i + (r < mr ? r : 0)) * ars + (size_t)k0 * aks;
          float *ctile = c + (size_t)i * ldc + (size_t)j0;
          if (mr == MR && nr == NR) {
            ukernel(ctile, ldc, ar, aks, bp, kc, fresh ? init : NULL);
            continue;
          }
          memset(ct, 0, sizeof ct);
          if (!fresh)
            for (int r = 0; r < mr; r++) memcpy(ct + r * NR, ctile + (size_t)r * ldc, (size_t)nr * sizeof(float));
          ukernel(ct, NR, ar, aks, bp, kc, fresh ? init : NULL);
          for (int r = 0; r < mr; r++) memcpy(ctile + (size_t)r * ldc, ct + r * NR, (size_t)nr * sizeof(float));
        }
      }
    }
  }
}

static float softmax_c(float *out, const float *in, int n, float scale) {
  float maxv = -INFINITY, sum = 0;
  for (int i = 0; i < n; i++) maxv = in[i] > maxv ? in[i] : maxv;
  for (int i = 0; i < n; i++) {
    out[i] = expf((in[i] - maxv) * scale);
    sum += out[i];
  }
  float inv = 1.0f / sum;
  for (int i = 0; i < n; i++) out[i] *= inv;
  return maxv * scale + logf(sum);
}

float gptk_softmax(float *out, const float *in, int n, float scale) {
#if defined(QV_X86)
  if (gptk_gemm_available()) return softmax_avx2(out, in, n, scale);
#endif
  return softmax_c(out, in, n, scale);
}
