/* GPT kernels (kernels.h): a 6 x 16 register-blocked AVX2+FMA GEMM.
 *
 * Blocking, after BLIS's Haswell kernel: the output is cut into 6-row x 16-column tiles, each
 * held in 12 ymm accumulators while k runs; B is copied once per (row block, k block, 16
 * columns) into a contiguous, zero-padded panel on the stack (GPTK_KC x 16 floats, 16 KiB, L1),
 * and A is read in place through its strides (six rows, one broadcast each per k). Rows are
 * taken MC at a time so that the A rows a panel meets stay in L2. Training's matrices are
 * small (K <= 512 at width 128, a weight at most 1 MiB), so copying B costs 1/MC of the
 * multiply-adds and A needs no copy at all. A B that several calls or row blocks share can be
 * packed once ahead (gptk_pack) and read in place by gptk_gemm_packed: the same loop, panels
 * taken from the caller's buffer instead of the stack.
 *
 * Invariants:
 *   1. An output element's value depends only on its row of A, its column of B and K: terms
 *      are added in increasing k with one FMA each, onto the output's running value, in the
 *      same k blocks whatever M, N or the caller's split (kernels.h).
 *   2. Edge tiles (fewer than 6 rows or 16 columns) run the same kernel on a padded copy, so
 *      they follow invariant 1 too.
 *   3. Packed or not, a panel holds the same floats in the same order, so gptk_gemm_packed
 *      gives gptk_gemm's bits.
 */
#include "gpt/kernels.h"

#include <math.h>
#include <string.h>

#include "compute/simd.h"

enum { MR = GPTK_MR, NR = GPTK_NR, KC = 256, MC = GPTK_MC };

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
    /* the tile is only stored, after kc steps: fetch its lines now, so that a fresh output
     * (an activation not in cache) costs no stall at the stores (measured: a cold
     * 1024 x 512 x 128 output ran 13% under a hot one without, 6% with) */
    _mm_prefetch((const char *)c0, _MM_HINT_T0), _mm_prefetch((const char *)(c0 + 15), _MM_HINT_T0);
    _mm_prefetch((const char *)c1, _MM_HINT_T0), _mm_prefetch((const char *)(c1 + 15), _MM_HINT_T0);
    _mm_prefetch((const char *)c2, _MM_HINT_T0), _mm_prefetch((const char *)(c2 + 15), _MM_HINT_T0);
    _mm_prefetch((const char *)c3, _MM_HINT_T0), _mm_prefetch((const char *)(c3 + 15), _MM_HINT_T0);
    _mm_prefetch((const char *)c4, _MM_HINT_T0), _mm_prefetch((const char *)(c4 + 15), _MM_HINT_T0);
    _mm_prefetch((const char *)c5, _MM_HINT_T0), _mm_prefetch((const char *)(c5 + 15), _MM_HINT_T0);
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

/* out = softmax(scale * in); returns the sum of exponentials, the maximum in *maxp. The tail
 * (n % 8) takes expf, as the inference path (infer.c) does for every term, which keeps
 * short rows (attention's first) equal to it. */
AVX2 static float softmax_avx2(float *out, const float *in, int n, float scale, float *maxp) {
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
  *maxp = maxv;
  return sum;
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

typedef void (*ukernel_fn)(float *, size_t, const float *const *, size_t, const float *, int, const float *);

static ukernel_fn pick_ukernel(void) {
#if defined(QV_X86)
  if (gptk_gemm_available()) return ukernel_avx2;
#endif
  return ukernel_c;
}

/* Rows [i0, i1) of columns j0.. (nr of them) over one k block [k0, k0 + kc), against the
 * block's packed panel bp: tiles start from init (16 floats) when it is set, else from c.
 * A is read through its strides, or from ap (pack_a_cols's block for rows [i0, i1)) when
 * that is set. */
static void panel_rows(ukernel_fn uk, float *c, size_t ldc, const float *a, size_t ars, size_t aks,
                       const float *ap, const float *bp, int i0, int i1, int j0, int nr, int k0, int kc,
                       const float *init) {
  float ct[MR * NR] __attribute__((aligned(64)));
  size_t raks = ap ? MR : aks;
  for (int i = i0; i < i1; i += MR) {
    int mr = i1 - i < MR ? i1 - i : MR;
    const float *ar[MR];
    /* rows past mr repeat row i: computed into the padded tile and dropped */
    for (int r = 0; r < MR; r++) {
      int rr = r < mr ? r : 0;
      ar[r] = ap ? ap + (size_t)(i - i0) * (size_t)kc + (size_t)rr : a + (size_t)(i + rr) * ars + (size_t)k0 * aks;
    }
    float *ctile = c + (size_t)i * ldc + (size_t)j0;
    if (mr == MR && nr == NR) {
      uk(ctile, ldc, ar, raks, bp, kc, init);
      continue;
    }
    memset(ct, 0, sizeof ct);
    if (!init)
      for (int r = 0; r < mr; r++) memcpy(ct + r * NR, ctile + (size_t)r * ldc, (size_t)nr * sizeof(float));
    uk(ct, NR, ar, raks, bp, kc, init);
    for (int r = 0; r < mr; r++) memcpy(ctile + (size_t)r * ldc, ct + r * NR, (size_t)nr * sizeof(float));
  }
}

/* init (16) = bias[j0..j0+nr) or zeros, zero past nr. */
static void panel_init(float *init, const float *bias, int j0, int nr) {
  for (int j = 0; j < NR; j++) init[j] = bias && j < nr ? bias[j0 + j] : 0.0f;
}

/* ap = A's rows [0, mc) x k's [0, kc) for A stored by columns (ars == 1, column k at
 * a + k * aks), in panels of MR rows: panel p holds kc groups of MR floats (rows p * MR..,
 * in row order), kc * MR floats apart. A last panel's rows past mc are left unset (the
 * kernel reads its first row in their place). */
static void pack_a_cols(float *ap, const float *a, size_t aks, int mc, int kc) {
  for (int k = 0; k < kc; k++) {
    const float *src = a + (size_t)k * aks;
    float *dst = ap + (size_t)k * MR;
    int i = 0;
    for (; i + MR <= mc; i += MR, dst += (size_t)kc * MR)
      for (int r = 0; r < MR; r++) dst[r] = src[i + r];
    for (int r = 0; i + r < mc; r++) dst[r] = src[i + r];
  }
}

/* A stored by columns this far apart (floats) or more is packed per (row block, k block):
 * each k of a tile would read a new line at a multiple of 4 KiB, all in one L1 set (the LM
 * head's weight gradient, 2,048 apart: 56 -> 62 GFLOP/s measured, alternating; at 512 apart,
 * the MLP's, packing measured no better). */
enum { PACKA_MIN = 1024 };

/* The GEMM over blocks of MC rows and KC k's, one 16-column panel at a time: B packed per
 * (row block, k block, panel) into a stack panel when bp is NULL (b through its strides),
 * else read from bp's panels (panel p at bp + p * pstride); A packed into ap per (row block,
 * k block) when ap is set. */
static void gemm_blocks(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b, size_t bks,
                        size_t bjs, const float *bp, size_t pstride, float *ap, int M, int N, int K,
                        int accumulate, const float *bias) {
  float panel_buf[KC * NR] __attribute__((aligned(64)));
  float init[NR] __attribute__((aligned(64)));
  ukernel_fn uk = pick_ukernel();
  for (int i0 = 0; i0 < M; i0 += MC) {
    int mc = M - i0 < MC ? M - i0 : MC;
    /* K == 0 still runs one empty block, so that a non-accumulating call writes its init */
    for (int k0 = 0; k0 < K || k0 == 0; k0 += KC) {
      int kc = K - k0 < KC ? K - k0 : KC;
      int fresh = k0 == 0 && !accumulate; /* tiles start from init instead of c */
      if (ap) pack_a_cols(ap, a + (size_t)i0 + (size_t)k0 * aks, aks, mc, kc);
      for (int j0 = 0; j0 < N; j0 += NR) {
        int nr = N - j0 < NR ? N - j0 : NR;
        if (fresh) panel_init(init, bias, j0, nr);
        const float *panel = panel_buf;
        if (bp) panel = bp + (size_t)(j0 / NR) * pstride + (size_t)k0 * NR;
        else pack_b(panel_buf, b, bks, bjs, k0, kc, j0, nr);
        panel_rows(uk, c, ldc, a, ars, aks, ap, panel, i0, i0 + mc, j0, nr, k0, kc, fresh ? init : NULL);
      }
    }
  }
}

/* gemm_blocks with A packed (a stack block of MC x KC floats, 192 KiB, only on this path). */
static __attribute__((noinline)) void gemm_blocks_packa(float *c, size_t ldc, const float *a, size_t aks,
                                                        const float *b, size_t bks, size_t bjs, const float *bp,
                                                        size_t pstride, int M, int N, int K, int accumulate,
                                                        const float *bias) {
  float ap[MC * KC] __attribute__((aligned(64)));
  gemm_blocks(c, ldc, a, 1, aks, b, bks, bjs, bp, pstride, ap, M, N, K, accumulate, bias);
}

static void gemm_any(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b, size_t bks,
                     size_t bjs, const float *bp, size_t pstride, int M, int N, int K, int accumulate,
                     const float *bias) {
  if (ars == 1 && aks >= PACKA_MIN && N > NR)
    gemm_blocks_packa(c, ldc, a, aks, b, bks, bjs, bp, pstride, M, N, K, accumulate, bias);
  else
    gemm_blocks(c, ldc, a, ars, aks, b, bks, bjs, bp, pstride, NULL, M, N, K, accumulate, bias);
}

void gptk_gemm(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b, size_t bks,
               size_t bjs, int M, int N, int K, int accumulate, const float *bias) {
  gemm_any(c, ldc, a, ars, aks, b, bks, bjs, NULL, 0, M, N, K, accumulate, bias);
}

size_t gptk_packed_floats(int K, int N) { return (size_t)((N + NR - 1) / NR) * NR * (size_t)(K > 0 ? K : 0); }

void gptk_pack(float *bp, const float *b, size_t bks, size_t bjs, int K, int N) {
  if (K <= 0) return;
  for (int j0 = 0; j0 < N; j0 += NR)
    pack_b(bp + (size_t)(j0 / NR) * NR * (size_t)K, b, bks, bjs, 0, K, j0, N - j0 < NR ? N - j0 : NR);
}

void gptk_gemm_packed(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *bp, size_t pstride,
                      int M, int N, int K, int accumulate, const float *bias) {
  gemm_any(c, ldc, a, ars, aks, NULL, 0, 0, bp, pstride, M, N, K, accumulate, bias);
}

static float softmax_c(float *out, const float *in, int n, float scale, float *maxp) {
  float maxv = -INFINITY, sum = 0;
  for (int i = 0; i < n; i++) maxv = in[i] > maxv ? in[i] : maxv;
  for (int i = 0; i < n; i++) {
    out[i] = expf((in[i] - maxv) * scale);
    sum += out[i];
  }
  float inv = 1.0f / sum;
  for (int i = 0; i < n; i++) out[i] *= inv;
  *maxp = maxv;
  return sum;
}

static float softmax_any(float *out, const float *in, int n, float scale, float *maxp) {
#if defined(QV_X86)
  if (gptk_gemm_available()) return softmax_avx2(out, in, n, scale, maxp);
#endif
  return softmax_c(out, in, n, scale, maxp);
}

float gptk_softmax(float *out, const float *in, int n, float scale) {
  float maxv, sum = softmax_any(out, in, n, scale, &maxv);
  return maxv * scale + logf(sum);
}

void gptk_softmax_probs(float *out, const float *in, int n, float scale) {
  float maxv;
  softmax_any(out, in, n, scale, &maxv);
}

/* ---- Elementwise and row kernels ----------------------------------------------------------
 * Each has an AVX2 body and the same loop in C for other CPUs. Sums across a row are taken in
 * 8 lanes and then added lane by lane, a fixed order for a given length; sums down columns
 * keep row order per column, as the scalar loops did. */

#if defined(QV_X86)
AVX2 static void adamw_avx2(float *p, const float *g, float *m, float *v, size_t n, const gptk_adam *o) {
  const __m256 b1 = _mm256_set1_ps(o->beta1), c1 = _mm256_set1_ps(1.0f - o->beta1);
  const __m256 b2 = _mm256_set1_ps(o->beta2), c2 = _mm256_set1_ps(1.0f - o->beta2);
  const __m256 ibc1 = _mm256_set1_ps(1.0f / o->bc1), ibc2 = _mm256_set1_ps(1.0f / o->bc2);
  const __m256 eps = _mm256_set1_ps(o->eps), lr = _mm256_set1_ps(o->lr), wd = _mm256_set1_ps(o->decay);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 gi = _mm256_loadu_ps(g + i), pi = _mm256_loadu_ps(p + i);
    __m256 mi = _mm256_fmadd_ps(b1, _mm256_loadu_ps(m + i), _mm256_mul_ps(c1, gi));
    __m256 vi = _mm256_fmadd_ps(b2, _mm256_loadu_ps(v + i), _mm256_mul_ps(c2, _mm256_mul_ps(gi, gi)));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    __m256 den = _mm256_add_ps(_mm256_sqrt_ps(_mm256_mul_ps(vi, ibc2)), eps);
    __m256 upd = _mm256_fmadd_ps(wd, pi, _mm256_div_ps(_mm256_mul_ps(mi, ibc1), den));
    _mm256_storeu_ps(p + i, _mm256_fnmadd_ps(lr, upd, pi));
  }
  /* the tail repeats a lane's operations exactly, so any split of a tensor gives the same bits */
  const float ib1 = 1.0f / o->bc1, ib2 = 1.0f / o->bc2;
  for (; i < n; i++) {
    float mi = fmaf(o->beta1, m[i], (1.0f - o->beta1) * g[i]);
    float vi = fmaf(o->beta2, v[i], (1.0f - o->beta2) * (g[i] * g[i]));
    m[i] = mi, v[i] = vi;
    float upd = fmaf(o->decay, p[i], (mi * ib1) / (sqrtf(vi * ib2) + o->eps));
    p[i] = fmaf(-o->lr, upd, p[i]);
  }
}

AVX2 static double sumsq_avx2(const float *x, size_t n) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
    s0 = _mm256_fmadd_pd(lo, lo, s0);
    s1 = _mm256_fmadd_pd(hi, hi, s1);
  }
  double l[4];
  _mm256_storeu_pd(l, _mm256_add_pd(s0, s1));
  double s = (l[0] + l[1]) + (l[2] + l[3]);
  for (; i < n; i++) s += (double)x[i] * x[i];
  return s;
}

AVX2 static void scale_avx2(float *x, size_t n, float s) {
  __m256 sv = _mm256_set1_ps(s);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), sv));
  for (; i < n; i++) x[i] *= s;
}

AVX2 static void colsum_avx2(float *db, const float *d, size_t N, size_t ld, size_t ncols) {
  size_t j = 0;
  for (; j + 32 <= ncols; j += 32) {
    __m256 a0 = _mm256_loadu_ps(db + j), a1 = _mm256_loadu_ps(db + j + 8);
    __m256 a2 = _mm256_loadu_ps(db + j + 16), a3 = _mm256_loadu_ps(db + j + 24);
    for (size_t r = 0; r < N; r++) {
      const float *row = d + r * ld + j;
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(row));
      a1 = _mm256_add_ps(a1, _mm256_loadu_ps(row + 8));
      a2 = _mm256_add_ps(a2, _mm256_loadu_ps(row + 16));
      a3 = _mm256_add_ps(a3, _mm256_loadu_ps(row + 24));
    }
    _mm256_storeu_ps(db + j, a0), _mm256_storeu_ps(db + j + 8, a1);
    _mm256_storeu_ps(db + j + 16, a2), _mm256_storeu_ps(db + j + 24, a3);
  }
  for (; j + 8 <= ncols; j += 8) {
    __m256 a0 = _mm256_loadu_ps(db + j);
    for (size_t r = 0; r < N; r++) a0 = _mm256_add_ps(a0, _mm256_loadu_ps(d + r * ld + j));
    _mm256_storeu_ps(db + j, a0);
  }
  for (; j < ncols; j++)
    for (size_t r = 0; r < N; r++) db[j] += d[r * ld + j];
}

AVX2 static void layernorm_avx2(float *out, const float *in, const float *w, const float *b, int C, float eps,
                                float *mean, float *rstd) {
  int i = 0;
  __m256 s = _mm256_setzero_ps();
  for (; i + 8 <= C; i += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(in + i));
  float sum = avx2_hsum(s);
  for (; i < C; i++) sum += in[i];
  float mu = sum / (float)C;
  __m256 mv = _mm256_set1_ps(mu);
  s = _mm256_setzero_ps();
  for (i = 0; i + 8 <= C; i += 8) {
    __m256 dv = _mm256_sub_ps(_mm256_loadu_ps(in + i), mv);
    s = _mm256_fmadd_ps(dv, dv, s);
  }
  float var = avx2_hsum(s);
  for (; i < C; i++) var += (in[i] - mu) * (in[i] - mu);
  float rs = 1.0f / sqrtf(var / (float)C + eps);
  __m256 rv = _mm256_set1_ps(rs);
  for (i = 0; i + 8 <= C; i += 8) {
    __m256 nv = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(in + i), mv), rv);
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(nv, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
  }
  for (; i < C; i++) out[i] = (in[i] - mu) * rs * w[i] + b[i];
  if (mean) *mean = mu;
  if (rstd) *rstd = rs;
}

AVX2 static void layernorm_bwd_avx2(float *dinp, const float *in, const float *dout, const float *w, float mean,
                                    float rstd, int C) {
  __m256 mv = _mm256_set1_ps(mean), rv = _mm256_set1_ps(rstd), s1 = _mm256_setzero_ps(), s2 = s1;
  int i = 0;
  for (; i + 8 <= C; i += 8) {
    __m256 nv = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(in + i), mv), rv);
    __m256 dn = _mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(dout + i));
    s1 = _mm256_add_ps(s1, dn);
    s2 = _mm256_fmadd_ps(dn, nv, s2);
  }
  float dmean = avx2_hsum(s1), dnmean = avx2_hsum(s2);
  for (; i < C; i++) {
    float nv = (in[i] - mean) * rstd, dn = w[i] * dout[i];
    dmean += dn;
    dnmean += dn * nv;
  }
  dmean /= (float)C;
  dnmean /= (float)C;
  __m256 a = _mm256_set1_ps(dmean), bn = _mm256_set1_ps(dnmean);
  for (i = 0; i + 8 <= C; i += 8) {
    __m256 nv = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(in + i), mv), rv);
    __m256 dn = _mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(dout + i));
    __m256 g = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(dn, a), _mm256_mul_ps(nv, bn)), rv);
    _mm256_storeu_ps(dinp + i, _mm256_add_ps(_mm256_loadu_ps(dinp + i), g));
  }
  for (; i < C; i++) {
    float nv = (in[i] - mean) * rstd, dn = w[i] * dout[i];
    dinp[i] += (dn - dmean - nv * dnmean) * rstd;
  }
}

AVX2 static void layernorm_wgrad_avx2(float *dw, float *db, const float *in, const float *dout, const float *mean,
                                      const float *rstd, size_t N, size_t ld, size_t ncols) {
  size_t j = 0;
  for (; j + 16 <= ncols; j += 16) {
    __m256 w0 = _mm256_loadu_ps(dw + j), w1 = _mm256_loadu_ps(dw + j + 8);
    __m256 b0 = _mm256_loadu_ps(db + j), b1 = _mm256_loadu_ps(db + j + 8);
    for (size_t r = 0; r < N; r++) {
      const float *x = in + r * ld + j, *d = dout + r * ld + j;
      __m256 mv = _mm256_set1_ps(mean[r]), rv = _mm256_set1_ps(rstd[r]);
      __m256 d0 = _mm256_loadu_ps(d), d1 = _mm256_loadu_ps(d + 8);
      w0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x), mv), rv), d0, w0);
      w1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + 8), mv), rv), d1, w1);
      b0 = _mm256_add_ps(b0, d0);
      b1 = _mm256_add_ps(b1, d1);
    }
    _mm256_storeu_ps(dw + j, w0), _mm256_storeu_ps(dw + j + 8, w1);
    _mm256_storeu_ps(db + j, b0), _mm256_storeu_ps(db + j + 8, b1);
  }
  for (; j < ncols; j++)
    for (size_t r = 0; r < N; r++) {
      float d = dout[r * ld + j];
      dw[j] = fmaf((in[r * ld + j] - mean[r]) * rstd[r], d, dw[j]);
      db[j] += d;
    }
}

AVX2 static void softmax_bwd_avx2(float *da, const float *a, int n, float scale) {
  __m256 s = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(da + i), s);
  float dot = avx2_hsum(s);
  for (; i < n; i++) dot += a[i] * da[i];
  __m256 dv = _mm256_set1_ps(dot), sv = _mm256_set1_ps(scale);
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 g = _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_sub_ps(_mm256_loadu_ps(da + i), dv));
    _mm256_storeu_ps(da + i, _mm256_mul_ps(g, sv));
  }
  for (; i < n; i++) da[i] = a[i] * (da[i] - dot) * scale;
}
#endif

void gptk_adamw(float *p, const float *g, float *m, float *v, size_t n, const gptk_adam *o) {
#if defined(QV_X86)
  if (gptk_gemm_available()) {
    adamw_avx2(p, g, m, v, n, o);
    return;
  }
#endif
  for (size_t i = 0; i < n; i++) {
    float mi = o->beta1 * m[i] + (1.0f - o->beta1) * g[i];
    float vi = o->beta2 * v[i] + (1.0f - o->beta2) * g[i] * g[i];
    m[i] = mi, v[i] = vi;
    p[i] -= o->lr * ((mi / o->bc1) / (sqrtf(vi / o->bc2) + o->eps) + o->decay * p[i]);
  }
}

double gptk_sumsq(const float *x, size_t n) {
#if defined(QV_X86)
  if (gptk_gemm_available()) return sumsq_avx2(x, n);
#endif
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  return s;
}

void gptk_scale(float *x, size_t n, float s) {
#if defined(QV_X86)
  if (gptk_gemm_available()) {
    scale_avx2(x, n, s);
    return;
  }
#endif
  for (size_t i = 0; i < n; i++) x[i] *= s;
}

void gptk_colsum(float *db, const float *d, size_t N, size_t ld, size_t ncols) {
#if defined(QV_X86)
  if (gptk_gemm_available()) {
    colsum_avx2(db, d, N, ld, ncols);
    return;
  }
#endif
  for (size_t r = 0; r < N; r++)
    for (size_t j = 0; j < ncols; j++) db[j] += d[r * ld + j];
}

void gptk_layernorm(float *out, const float *in, const float *w, const float *b, int C, float eps, float *mean,
                    float *rstd) {
#if defined(QV_X86)
  if (gptk_gemm_available()) {
    layernorm_avx2(out, in, w, b, C, eps, mean, rstd);
    return;
  }
#endif
  float mu = 0, var = 0;
  for (int i = 0; i < C; i++) mu += in[i];
  mu /= (float)C;
  for (int i = 0; i < C; i++) var += (in[i] - mu) * (in[i] - mu);
  float rs = 1.0f / sqrtf(var / (float)C + eps);
  for (int i = 0; i < C; i++) out[i] = (in[i] - mu) * rs * w[i] + b[i];
  if (mean) *mean = mu;
  if (rstd) *rstd = rs;
}

void gptk_layernorm_bwd(float *dinp, const float *in, const float *dout, const float *w, float mean, float rstd,
                        int C) {
#if defined(QV_X86)
  if (gptk_gemm_available()) {
    layernorm_bwd_avx2(dinp, in, dout, w, mean, rstd, C);
    return;
  }
#endif
  float dmean = 0, dnmean = 0;
  for (int i = 0; i < C; i++) {
    float nv = (in[i] - mean) * rstd, dn = w[i] * dout[i];
    dmean += dn;
    dnmean += dn * nv;
  }
  dmean /= (float)C;
  dnmean /= (float)C;
  for (int i = 0; i < C; i++) {
    float nv = (in[i] - mean) * rstd, dn = w[i] * dout[i];
    dinp[i] += (dn - dmean - nv * dnmean) * rstd;
  }
}

void gptk_softmax_bwd(float *da, const float *a, int n, float scale) {
#if defined(QV_X86)
  if (gptk_gemm_available()) {
    softmax_bwd_avx2(da, a, n, scale);
    return;
  }
#endif
  float dot = 0;
  for (int i = 0; i < n; i++) dot += a[i] * da[i];
  for (int i = 0; i < n; i++) da[i] = a[i] * (da[i] - dot) * scale;
}

void gptk_layernorm_wgrad(float *dw, float *db, const float *in, const float *dout, const float *mean,
                          const float *rstd, size_t N, size_t ld, size_t ncols) {
#if defined(QV_X86)
  if (gptk_gemm_available()) {
    layernorm_wgrad_avx2(dw, db, in, dout, mean, rstd, N, ld, ncols);
    return;
  }
#endif
  for (size_t r = 0; r < N; r++)
    for (size_t j = 0; j < ncols; j++) {
      float d = dout[r * ld + j];
      dw[j] += (in[r * ld + j] - mean[r]) * rstd[r] * d;
      db[j] += d;
    }
}
