/* The CPU backend: OpenBLAS sgemm for the products, SIMD kernels for the rest, all spread
 * over the process-wide pool.
 *
 * Threads: as in index/flat.c, the pool is the only source of parallelism. Every task
 * calls a single-threaded sgemm on its own block (OpenBLAS is set to one thread on the
 * first backend_cpu call); letting OpenBLAS thread inside each pool task would run
 * 2 x 2 threads on 2 cores.
 *
 * Elementwise kernels come in a portable and an AVX2+FMA version behind one table chosen
 * at load time (QUIVER_ISA caps it). Both evaluate the same polynomials, so they agree to
 * within rounding; the AVX2 versions handle tails with masked loads rather than scalar
 * code, so a row gives the same result wherever it sits in a batch. The table also holds
 * an unpacked small-M linear kernel (AVX2, and AVX-512 where present: ISA "avx512", which
 * keeps the AVX2 elementwise kernels); QUIVER_ISA=portable|avx2|avx512 caps the choice.
 *
 * GELU is the exact-erf form. libm's erff costs ~10 ns a value, which at 256 tokens would
 * rival the GEMMs, so erf/erfc are evaluated here in SIMD with two fitted pieces (Lawson
 * minimax fits in relative error, coefficients below; max fit error ~8e-9):
 *   z in [0, 1]:  erf(z)  = z + z P1(z^2)                   (degree 6 in z^2)
 *   z in [.5, 10]: erfc(z) = exp(-z^2) t R(t - 0.4), t = 1/(1 + z/2)  (degree 8)
 * and GELU takes 1 + erf(x/sqrt2) as erfc(|x|/sqrt2) for negative x, so its negative tail
 * keeps full relative precision instead of cancelling to zero. exp(-z^2) takes z^2 as an
 * exact hi + lo pair (an FMA), and GELU forms it from x^2 / 2 rather than from the rounded
 * x / sqrt2, so large |x| loses no accuracy there. Measured (tests/unit/test_backend.c):
 * erf within ~1.2e-7 relative (libm erff: 8e-8), GELU within ~4e-7 relative over
 * [-13, 13]; the remaining error is float rounding in exp and Horner (2-4 ulps). */
#include "compute/backend.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/pool.h"

#include "compute/simd.h"

/* Work (in multiply-adds, or elements for elementwise ops) below which an op runs on the
 * calling thread: waking the pool costs more than it saves. */
#define CPU_PAR_MACS (1u << 21)
#define CPU_PAR_ELEMS (1u << 15)
#ifndef CPU_LINEAR_ROWS
#define CPU_LINEAR_ROWS 256 /* rows per linear task: several tasks per thread for balance */
#endif
#define CPU_ELEM_CHUNK (1u << 15) /* elements per GELU task */
/* Rows up to which linear skips sgemm's packing. Measured on Zen 4 at MiniLM's shapes with
 * the weights out of cache: 2.6x faster than sgemm at M = 13, 1.4x at 64, even at 96-256. */
#ifndef CPU_LINEAR_SMALL_M
#define CPU_LINEAR_SMALL_M 128
#endif
#ifndef CPU_PAR_MACS_SMALL
#define CPU_PAR_MACS_SMALL (1u << 19)
#endif

/* ---- Coefficients, shared by both ISAs ------------------------------------------------ */

static const float ERF_P[7] = {7.854018258e-05f, -8.010245179e-04f, 5.188334210e-03f,
                               -2.685381591e-02f, 1.128358527e-01f,  -3.761262584e-01f,
                               1.283791660e-01f}; /* the constant less 1: erf = z + z P1 */
static const float ERFC_R[9] = {-6.179232933e-02f, 1.007327445e-01f, 4.313388397e-02f,
                                -1.470942791e-01f, -1.079883703e-01f, 2.024900184e-01f,
                                5.060615792e-01f,  5.803759382e-01f,  4.475028743e-01f};
/* Q(t) = t R(t - ERFC_T0): Q vanishes with t, so factoring t out keeps its relative error
 * that of t, and centring R keeps Horner's partial sums small. */
#define ERFC_T0 0.4f
/* The pieces overlap on [0.5, 1]. erf switches late, where 1 - erfc cancels least; GELU
 * switches early, where its negative side 1 - erf(z) starts to cancel. */
#define ERF_SPLIT 0.921875f
#define GELU_SPLIT 0.5f
#define SQRT1_2 0.70710678118654752f
/* Cephes expf: exp(r) = 1 + r + r^2 E(r) on |r| <= ln2/2, with ln2 split for reduction. */
static const float EXP_E[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                               4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f
#define EXP_MIN -87.33654475f /* below this the result is 0 (2^-126 would be next) */
#define EXP_MAX 88.3762626647949f

/* ---- Portable kernels ----------------------------------------------------------------- */

/* exp(x - lo), lo a small correction below x's last bit (or 0); 0 below EXP_MIN. */
static inline float exp_s(float x, float lo) {
  if (x != x) return x;
  if (x < EXP_MIN) return 0.0f;
  if (x > EXP_MAX) x = EXP_MAX;
  float n = nearbyintf(x * LOG2E);
  float r = x - n * LN2_HI;
  r = r - n * LN2_LO;
  r = r - lo;
  float y = EXP_E[0];
  for (int i = 1; i < 6; i++) y = y * r + EXP_E[i];
  y = y * r * r + r + 1.0f;
  return ldexpf(y, (int)n);
}

static inline float erf_small_s(float z) { /* z + z P1(z^2), z in [0, 1] */
  float z2 = z * z, p = ERF_P[0];
  for (int i = 1; i < 7; i++) p = p * z2 + ERF_P[i];
  return fmaf(z, p, z);
}

/* erfc(z) for z >= 0, given z^2 = hi + lo exactly (see gelu for why it is passed in). */
static inline float erfc_big_s(float z, float hi, float lo) {
  float t = 1.0f / (1.0f + 0.5f * z), s = t - ERFC_T0, q = ERFC_R[0];
  for (int i = 1; i < 9; i++) q = q * s + ERFC_R[i];
  return exp_s(-hi, lo) * (t * q);
}

static void erf_portable(float *out, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float v = x[i], z = fabsf(v);
    float hi = z * z, lo = fmaf(z, z, -hi);
    float e = z < ERF_SPLIT ? erf_small_s(z) : 1.0f - erfc_big_s(z, hi, lo);
    out[i] = copysignf(e, v);
  }
}

static void gelu_portable(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float v = x[i], z = fabsf(v) * SQRT1_2;
    float hi = v * v, lo = fmaf(v, v, -hi); /* z^2 = (hi + lo) / 2, exactly */
    float g;
    if (z < GELU_SPLIT) g = 0.5f * v + 0.5f * fabsf(v) * erf_small_s(z);
    else if (v > 0) g = v * (1.0f - 0.5f * erfc_big_s(z, 0.5f * hi, 0.5f * lo));
    else g = 0.5f * v * erfc_big_s(z, 0.5f * hi, 0.5f * lo);
    x[i] = g;
  }
}

/* out (C) = layernorm(a + r) * w + b; r may be NULL; out may alias a or r. */
static void layernorm_row_portable(float *out, const float *a, const float *r, const float *w,
                                   const float *b, int C, float eps) {
  float s = 0.0f;
  for (int i = 0; i < C; i++) {
    float v = r ? a[i] + r[i] : a[i];
    out[i] = v;
    s += v;
  }
  float mean = s / (float)C, ss = 0.0f;
  for (int i = 0; i < C; i++) {
    float d = out[i] - mean;
    ss += d * d;
  }
  float rstd = 1.0f / sqrtf(ss / (float)C + eps);
  for (int i = 0; i < C; i++) out[i] = (out[i] - mean) * rstd * w[i] + b[i];
}

/* x (n) = softmax(x), n >= 1 */
static void softmax_row_portable(float *x, int n) {
  float m = x[0];
  for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
  float s = 0.0f;
  for (int i = 0; i < n; i++) {
    x[i] = exp_s(x[i] - m, 0.0f);
    s += x[i];
  }
  float inv = 1.0f / s;
  for (int i = 0; i < n; i++) x[i] *= inv;
}

/* out (rows, ld) += bias (N) on the first N columns of each row */
static void add_bias_portable(float *out, const float *bias, int rows, int N, int ld) {
  for (int r = 0; r < rows; r++) {
    float *o = out + (size_t)r * ld;
    for (int i = 0; i < N; i++) o[i] += bias[i];
  }
}

typedef struct cpu_kernels {
  void (*erf)(float *out, const float *x, size_t n);
  void (*gelu)(float *x, size_t n);
  void (*layernorm_row)(float *out, const float *a, const float *r, const float *w,
                        const float *b, int C, float eps);
  void (*softmax_row)(float *x, int n);
  void (*add_bias)(float *out, const float *bias, int rows, int N, int ld);
  /* out (M, n1 - n0 columns of ld) = inp (M, K) @ w[n0:n1]^T + bias[n0:n1], straight from
   * the row-major weight without packing (see cpu_linear); NULL: always use sgemm */
  void (*linear_rows)(float *out, const float *inp, const float *w, const float *bias, int M,
                      int n0, int n1, int K, int ld);
  const char *isa;
} cpu_kernels;

/* Portable builds keep OpenBLAS for every shape: a scalar blocked kernel would lose to its
 * packed product even where packing dominates. */
static const cpu_kernels k_portable = {erf_portable, gelu_portable, layernorm_row_portable,
                                       softmax_row_portable, add_bias_portable, NULL, "portable"};

/* ---- AVX2 + FMA kernels --------------------------------------------------------------- */

#ifdef QV_X86


/* exp(x - lo); 0 below EXP_MIN; NaN stays NaN. */
AVX2 static inline __m256 exp8(__m256 x, __m256 lo) {
  __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_MIN), _CMP_GE_OQ);
  x = _mm256_min_ps(_mm256_set1_ps(EXP_MAX), x);
  x = _mm256_max_ps(_mm256_set1_ps(EXP_MIN), x); /* min/max pass a NaN x through */
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
  r = _mm256_sub_ps(r, lo);
  __m256 y = _mm256_set1_ps(EXP_E[0]);
  for (int i = 1; i < 6; i++) y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_E[i]));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  /* lanes below EXP_MIN give 0; NaN lanes (compare false) must stay NaN */
  __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  return _mm256_or_ps(_mm256_and_ps(y, under), nan);
}

AVX2 static inline __m256 erf_small8(__m256 z) {
  __m256 z2 = _mm256_mul_ps(z, z), p = _mm256_set1_ps(ERF_P[0]);
  for (int i = 1; i < 7; i++) p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(ERF_P[i]));
  return _mm256_fmadd_ps(z, p, z);
}

/* erfc(z) for z >= 0, given z^2 = hi + lo exactly. */
AVX2 static inline __m256 erfc_big8(__m256 z, __m256 hi, __m256 lo) {
  __m256 one = _mm256_set1_ps(1.0f);
  __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(z, _mm256_set1_ps(0.5f), one));
  __m256 s = _mm256_sub_ps(t, _mm256_set1_ps(ERFC_T0));
  __m256 q = _mm256_set1_ps(ERFC_R[0]);
  for (int i = 1; i < 9; i++) q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(ERFC_R[i]));
  q = _mm256_mul_ps(q, t);
  __m256 neg = _mm256_set1_ps(-0.0f);
  return _mm256_mul_ps(exp8(_mm256_xor_ps(hi, neg), lo), q);
}

AVX2 static inline __m256 erf8(__m256 v) {
  __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 z = _mm256_andnot_ps(sign, v);
  __m256 small = _mm256_cmp_ps(z, _mm256_set1_ps(ERF_SPLIT), _CMP_LT_OQ);
  __m256 hi = _mm256_mul_ps(z, z), lo = _mm256_fmsub_ps(z, z, hi);
  __m256 big = _mm256_sub_ps(_mm256_set1_ps(1.0f), erfc_big8(z, hi, lo));
  __m256 e = _mm256_blendv_ps(big, erf_small8(z), small);
  return _mm256_or_ps(e, _mm256_and_ps(v, sign));
}

AVX2 static inline __m256 gelu8(__m256 v) {
  __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f);
  __m256 a = _mm256_andnot_ps(sign, v);
  __m256 z = _mm256_mul_ps(a, _mm256_set1_ps(SQRT1_2));
  __m256 small = _mm256_cmp_ps(z, _mm256_set1_ps(GELU_SPLIT), _CMP_LT_OQ);
  __m256 pos = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
  __m256 hv = _mm256_mul_ps(half, v);
  __m256 gs = _mm256_fmadd_ps(_mm256_mul_ps(half, a), erf_small8(z), hv);
  /* z^2 from v^2 / 2 rather than from the rounded z: at |v| = 12 the rounding of
   * v / sqrt2 alone would cost 1e-5 relative in erfc. */
  __m256 hi = _mm256_mul_ps(v, v), lo = _mm256_fmsub_ps(v, v, hi);
  __m256 ec = erfc_big8(z, _mm256_mul_ps(half, hi), _mm256_mul_ps(half, lo));
  /* v (1 - erfc/2), multiplied last so that v = +inf gives +inf rather than inf - inf */
  __m256 gp = _mm256_mul_ps(v, _mm256_fnmadd_ps(half, ec, _mm256_set1_ps(1.0f)));
  __m256 gn = _mm256_mul_ps(hv, ec);       /* v erfc / 2 */
  return _mm256_blendv_ps(_mm256_blendv_ps(gn, gp, pos), gs, small);
}

AVX2 static void erf_avx2(float *out, const float *x, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, erf8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    __m256i m = avx2_tail_mask(n - i);
    _mm256_maskstore_ps(out + i, m, erf8(_mm256_maskload_ps(x + i, m)));
  }
}

AVX2 static void gelu_avx2(float *x, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 a = gelu8(_mm256_loadu_ps(x + i)), b = gelu8(_mm256_loadu_ps(x + i + 8));
    _mm256_storeu_ps(x + i, a);
    _mm256_storeu_ps(x + i + 8, b);
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    __m256i m = avx2_tail_mask(n - i);
    _mm256_maskstore_ps(x + i, m, gelu8(_mm256_maskload_ps(x + i, m)));
  }
}

AVX2 static void layernorm_row_avx2(float *out, const float *a, const float *r, const float *w,
                                    const float *b, int C, float eps) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= C; i += 8) {
    __m256 v = _mm256_loadu_ps(a + i);
    if (r) v = _mm256_add_ps(v, _mm256_loadu_ps(r + i));
    _mm256_storeu_ps(out + i, v);
    s0 = _mm256_add_ps(s0, v);
  }
  __m256i m = avx2_tail_mask((size_t)(C - i));
  if (i < C) {
    __m256 v = _mm256_maskload_ps(a + i, m);
    if (r) v = _mm256_add_ps(v, _mm256_maskload_ps(r + i, m));
    _mm256_maskstore_ps(out + i, m, v);
    s1 = v;
  }
  float mean = avx2_hsum(_mm256_add_ps(s0, s1)) / (float)C;
  __m256 mv = _mm256_set1_ps(mean);
  s0 = _mm256_setzero_ps();
  s1 = _mm256_setzero_ps();
  for (i = 0; i + 8 <= C; i += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(out + i), mv);
    s0 = _mm256_fmadd_ps(d, d, s0);
  }
  if (i < C) {
    __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(out + i, m), mv),
                             _mm256_castsi256_ps(m));
    s1 = _mm256_mul_ps(d, d);
  }
  float rstd = 1.0f / sqrtf(avx2_hsum(_mm256_add_ps(s0, s1)) / (float)C + eps);
  __m256 rv = _mm256_set1_ps(rstd);
  for (i = 0; i + 8 <= C; i += 8) {
    __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(out + i), mv), rv);
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
  }
  if (i < C) {
    __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(out + i, m), mv), rv);
    _mm256_maskstore_ps(out + i, m,
                        _mm256_fmadd_ps(d, _mm256_maskload_ps(w + i, m), _mm256_maskload_ps(b + i, m)));
  }
}

AVX2 static void softmax_row_avx2(float *x, int n) {
  __m256 mx = _mm256_set1_ps(-INFINITY);
  int i = 0;
  for (; i + 8 <= n; i += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(x + i));
  __m256i m = avx2_tail_mask((size_t)(n - i));
  if (i < n)
    mx = _mm256_max_ps(mx, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(x + i, m),
                                            _mm256_castsi256_ps(m)));
  __m256 mv = _mm256_set1_ps(avx2_hmax(mx)), zero = _mm256_setzero_ps();
  __m256 s0 = zero, s1 = zero;
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv), zero);
    _mm256_storeu_ps(x + i, e);
    s0 = _mm256_add_ps(s0, e);
  }
  if (i < n) {
    __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), mv), zero),
                             _mm256_castsi256_ps(m));
    _mm256_maskstore_ps(x + i, m, e);
    s1 = e;
  }
  __m256 inv = _mm256_set1_ps(1.0f / avx2_hsum(_mm256_add_ps(s0, s1)));
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  if (i < n) _mm256_maskstore_ps(x + i, m, _mm256_mul_ps(_mm256_maskload_ps(x + i, m), inv));
}

AVX2 static void add_bias_avx2(float *out, const float *bias, int rows, int N, int ld) {
  __m256i m = avx2_tail_mask((size_t)(N % 8));
  for (int r = 0; r < rows; r++) {
    float *o = out + (size_t)r * ld;
    int i = 0;
    for (; i + 8 <= N; i += 8)
      _mm256_storeu_ps(o + i, _mm256_add_ps(_mm256_loadu_ps(o + i), _mm256_loadu_ps(bias + i)));
    if (i < N)
      _mm256_maskstore_ps(o + i, m,
                          _mm256_add_ps(_mm256_maskload_ps(o + i, m), _mm256_maskload_ps(bias + i, m)));
  }
}

/* ---- Small-M linear, no packing -------------------------------------------------------
 * For a few rows (one short text) the product is bound by streaming the weight, which is
 * read once per forward; sgemm's packing would read it, write a packed copy and read that.
 * Here each block of 4 weight rows is loaded once from (N, K) row-major and multiplied
 * against a block of input rows (MR of them, kept hot in L1/L2): MR x 4 vector accumulators
 * over K, a 4-way transposing horizontal sum at the end, bias added on the way out. A
 * partial block (M % MR rows, N % 4 weight rows) repeats its last row pointer and stores
 * only the real results, so any row is computed the same way wherever it sits. */

/* four accumulators -> (sum a0, sum a1, sum a2, sum a3) */
AVX2 static inline __m128 hsum4_avx2(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

AVX2 static inline void store4(float *o, __m128 v, const float *bias, int nr) {
  if (bias) {
    float b[4];
    for (int j = 0; j < 4; j++) b[j] = j < nr ? bias[j] : 0.0f;
    v = _mm_add_ps(v, _mm_loadu_ps(b));
  }
  if (nr == 4) {
    _mm_storeu_ps(o, v);
  } else {
    float t[4];
    _mm_storeu_ps(t, v);
    for (int j = 0; j < nr; j++) o[j] = t[j];
  }
}

/* Weight blocks ahead to prefetch: with few input rows the hardware prefetcher alone
 * leaves the 4 weight streams waiting on DRAM, and compute and loads do not overlap
 * (M = 13 from DRAM took compute time + transfer time). Pass p over the input rows
 * prefetches weight row p of the block LIN_PF_BLOCKS ahead (all four when there are fewer
 * passes), one line per 16 floats, spreading the requests over the whole block's work:
 * 1.3x at M = 13, 1.5x at M = 64 against prefetching in the first pass only. Prefetching
 * past the weight's end is harmless (prefetches do not fault). */
#ifndef LIN_PF_BLOCKS
#define LIN_PF_BLOCKS 2
#endif

#define LIN_MR_AVX2 3
AVX2 static void linear_rows_avx2(float *out, const float *inp, const float *w, const float *bias,
                                  int M, int n0, int n1, int K, int ld) {
  __m256i tm = avx2_tail_mask((size_t)(K % 8));
  int K8 = K & ~7;
  size_t pf = (size_t)LIN_PF_BLOCKS * 4 * K;
  int npass = (M + LIN_MR_AVX2 - 1) / LIN_MR_AVX2;
  for (int n = n0; n < n1; n += 4) {
    int nr = n1 - n < 4 ? n1 - n : 4;
    const float *w0 = w + (size_t)n * K;
    const float *w1 = w0 + (size_t)(nr > 1) * K, *w2 = w0 + (size_t)(nr > 2 ? 2 : nr - 1) * K;
    const float *w3 = w0 + (size_t)(nr - 1) * K;
    for (int m = 0; m < M; m += LIN_MR_AVX2) {
      int mr = M - m < LIN_MR_AVX2 ? M - m : LIN_MR_AVX2, pass = m / LIN_MR_AVX2;
      const float *x0 = inp + (size_t)m * K;
      const float *x1 = x0 + (size_t)(mr > 1) * K, *x2 = x0 + (size_t)(mr - 1) * K;
      __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c03 = c00;
      __m256 c10 = c00, c11 = c00, c12 = c00, c13 = c00;
      __m256 c20 = c00, c21 = c00, c22 = c00, c23 = c00;
#define LIN_STEP_AVX2(LOAD)                                                                  \
  do {                                                                                       \
    __m256 b0 = LOAD(w0), b1 = LOAD(w1), b2 = LOAD(w2), b3 = LOAD(w3), a;                    \
    a = LOAD(x0);                                                                            \
    c00 = _mm256_fmadd_ps(a, b0, c00), c01 = _mm256_fmadd_ps(a, b1, c01);                    \
    c02 = _mm256_fmadd_ps(a, b2, c02), c03 = _mm256_fmadd_ps(a, b3, c03);                    \
    a = LOAD(x1);                                                                            \
    c10 = _mm256_fmadd_ps(a, b0, c10), c11 = _mm256_fmadd_ps(a, b1, c11);                    \
    c12 = _mm256_fmadd_ps(a, b2, c12), c13 = _mm256_fmadd_ps(a, b3, c13);                    \
    a = LOAD(x2);                                                                            \
    c20 = _mm256_fmadd_ps(a, b0, c20), c21 = _mm256_fmadd_ps(a, b1, c21);                    \
    c22 = _mm256_fmadd_ps(a, b2, c22), c23 = _mm256_fmadd_ps(a, b3, c23);                    \
  } while (0)
      int k = 0;
      for (; k < K8; k += 8) {
#define LD8(p) _mm256_loadu_ps((p) + k)
        if (k % 16 == 0)
          for (int r = pass; r < 4; r += npass)
            _mm_prefetch((const char *)(w0 + pf + (size_t)r * K + k), _MM_HINT_T0);
        LIN_STEP_AVX2(LD8);
#undef LD8
      }
      if (k < K) {
#define LDM8(p) _mm256_maskload_ps((p) + k, tm)
        LIN_STEP_AVX2(LDM8);
#undef LDM8
      }
#undef LIN_STEP_AVX2
      float *o = out + (size_t)m * ld + n;
      const float *bb = bias ? bias + n : NULL;
      store4(o, hsum4_avx2(c00, c01, c02, c03), bb, nr);
      if (mr > 1) store4(o + ld, hsum4_avx2(c10, c11, c12, c13), bb, nr);
      if (mr > 2) store4(o + 2 * (size_t)ld, hsum4_avx2(c20, c21, c22, c23), bb, nr);
    }
  }
}

#define AVX512_FMA __attribute__((target("avx512f,avx2,fma")))

AVX512_FMA static inline __m128 hsum4_avx512(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  /* per 128-bit lane: [a0 a1 a2 a3] partials, then the four lanes added */
  __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  __m512 s = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

#define LIN_MR_AVX512 4
/* One block: MR (1..4, a constant after inlining, so the unused accumulators vanish) input
 * rows from x0 against the 4 weight rows w0..w3, into o (MR rows of ld). A tail of M % 4
 * rows gets its own MR rather than repeating a row, which at M = 13 would cost 23% more
 * multiply-adds. */
AVX512_FMA static inline __attribute__((always_inline)) void
lin_block_avx512(const int MR, float *o, const float *x0, const float *w0, const float *w1,
                 const float *w2, const float *w3, const float *bb, int nr, int K, int ld,
                 const float *pfw, int pass, int npass) {
  __mmask16 tm = (__mmask16)((1u << (K % 16)) - 1);
  int K16 = K & ~15;
  const float *x1 = x0 + (MR > 1 ? K : 0), *x2 = x0 + (MR > 2 ? 2 * K : 0);
  const float *x3 = x0 + (MR > 3 ? 3 * K : 0);
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00;
  __m512 c10 = c00, c11 = c00, c12 = c00, c13 = c00;
  __m512 c20 = c00, c21 = c00, c22 = c00, c23 = c00;
  __m512 c30 = c00, c31 = c00, c32 = c00, c33 = c00;
#define LIN_STEP_AVX512(LOAD)                                                                \
  do {                                                                                       \
    __m512 b0 = LOAD(w0), b1 = LOAD(w1), b2 = LOAD(w2), b3 = LOAD(w3), a;                    \
    a = LOAD(x0);                                                                            \
    c00 = _mm512_fmadd_ps(a, b0, c00), c01 = _mm512_fmadd_ps(a, b1, c01);                    \
    c02 = _mm512_fmadd_ps(a, b2, c02), c03 = _mm512_fmadd_ps(a, b3, c03);                    \
    if (MR > 1) {                                                                            \
      a = LOAD(x1);                                                                          \
      c10 = _mm512_fmadd_ps(a, b0, c10), c11 = _mm512_fmadd_ps(a, b1, c11);                  \
      c12 = _mm512_fmadd_ps(a, b2, c12), c13 = _mm512_fmadd_ps(a, b3, c13);                  \
    }                                                                                        \
    if (MR > 2) {                                                                            \
      a = LOAD(x2);                                                                          \
      c20 = _mm512_fmadd_ps(a, b0, c20), c21 = _mm512_fmadd_ps(a, b1, c21);                  \
      c22 = _mm512_fmadd_ps(a, b2, c22), c23 = _mm512_fmadd_ps(a, b3, c23);                  \
    }                                                                                        \
    if (MR > 3) {                                                                            \
      a = LOAD(x3);                                                                          \
      c30 = _mm512_fmadd_ps(a, b0, c30), c31 = _mm512_fmadd_ps(a, b1, c31);                  \
      c32 = _mm512_fmadd_ps(a, b2, c32), c33 = _mm512_fmadd_ps(a, b3, c33);                  \
    }                                                                                        \
  } while (0)
  int k = 0;
  for (; k < K16; k += 16) {
#define LD16(p) _mm512_loadu_ps((p) + k)
    for (int r = pass; r < 4; r += npass)
      _mm_prefetch((const char *)(pfw + (size_t)r * K + k), _MM_HINT_T0);
    LIN_STEP_AVX512(LD16);
#undef LD16
  }
  if (k < K) {
#define LDM16(p) _mm512_maskz_loadu_ps(tm, (p) + k)
    LIN_STEP_AVX512(LDM16);
#undef LDM16
  }
#undef LIN_STEP_AVX512
  store4(o, hsum4_avx512(c00, c01, c02, c03), bb, nr);
  if (MR > 1) store4(o + ld, hsum4_avx512(c10, c11, c12, c13), bb, nr);
  if (MR > 2) store4(o + 2 * (size_t)ld, hsum4_avx512(c20, c21, c22, c23), bb, nr);
  if (MR > 3) store4(o + 3 * (size_t)ld, hsum4_avx512(c30, c31, c32, c33), bb, nr);
}

AVX512_FMA static void linear_rows_avx512(float *out, const float *inp, const float *w,
                                          const float *bias, int M, int n0, int n1, int K, int ld) {
  size_t pf = (size_t)LIN_PF_BLOCKS * 4 * K;
  int npass = (M + LIN_MR_AVX512 - 1) / LIN_MR_AVX512;
  for (int n = n0; n < n1; n += 4) {
    int nr = n1 - n < 4 ? n1 - n : 4;
    const float *w0 = w + (size_t)n * K;
    const float *w1 = w0 + (size_t)(nr > 1) * K, *w2 = w0 + (size_t)(nr > 2 ? 2 : nr - 1) * K;
    const float *w3 = w0 + (size_t)(nr - 1) * K;
    const float *bb = bias ? bias + n : NULL;
    for (int m = 0; m < M; m += LIN_MR_AVX512) {
      int mr = M - m < LIN_MR_AVX512 ? M - m : LIN_MR_AVX512, pass = m / LIN_MR_AVX512;
      const float *x0 = inp + (size_t)m * K;
      float *o = out + (size_t)m * ld + n;
      switch (mr) {
      case 4: lin_block_avx512(4, o, x0, w0, w1, w2, w3, bb, nr, K, ld, w0 + pf, pass, npass); break;
      case 3: lin_block_avx512(3, o, x0, w0, w1, w2, w3, bb, nr, K, ld, w0 + pf, pass, npass); break;
      case 2: lin_block_avx512(2, o, x0, w0, w1, w2, w3, bb, nr, K, ld, w0 + pf, pass, npass); break;
      default: lin_block_avx512(1, o, x0, w0, w1, w2, w3, bb, nr, K, ld, w0 + pf, pass, npass); break;
      }
    }
  }
}

static const cpu_kernels k_avx2 = {erf_avx2, gelu_avx2, layernorm_row_avx2, softmax_row_avx2,
                                   add_bias_avx2, linear_rows_avx2, "avx2"};
/* AVX-512 only changes the linear kernel; the elementwise ops stay AVX2. */
static const cpu_kernels k_avx512 = {erf_avx2, gelu_avx2, layernorm_row_avx2, softmax_row_avx2,
                                     add_bias_avx2, linear_rows_avx512, "avx512"};
#endif

/* Written by the load-time constructor (and backend_cpu_force_isa in tests). */
static const cpu_kernels *kern = &k_portable;

/* cap: "portable", "avx2" or "avx512" (as for the distance kernels); NULL or unknown = none */
static const cpu_kernels *select_kernels(const char *cap) {
  if (cap && strcmp(cap, "portable") == 0) return &k_portable;
#ifdef QV_X86
  __builtin_cpu_init();
  int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && !(cap && strcmp(cap, "avx2") == 0))
    return &k_avx512;
  if (avx2) return &k_avx2;
#endif
  return &k_portable;
}

__attribute__((constructor)) static void cpu_kernels_init(void) {
  kern = select_kernels(getenv("QUIVER_ISA"));
}

const char *backend_cpu_isa(void) { return kern->isa; }

const char *backend_cpu_force_isa(const char *isa) {
  kern = select_kernels(isa);
  return kern->isa;
}

void backend_cpu_erf(float *out, const float *x, size_t n) { kern->erf(out, x, n); }

/* ---- Pool helpers --------------------------------------------------------------------- */

static qv_pool *cpu_pool(void) { return pool_default(); }

static int cpu_threads(void) {
  qv_pool *p = cpu_pool();
  return p ? pool_size(p) : 1;
}

/* ---- linear --------------------------------------------------------------------------- */

typedef struct linear_job {
  float *out;        /* (M, N) */
  const float *inp;  /* (M, K) */
  const float *w;    /* (N, K) */
  const float *bias; /* (N) or NULL */
  int M, N, K;
  int rows, cols; /* block per task: rows of M (cols == N) or columns of N (rows == M) */
  int ncol_blocks;
} linear_job;

static void linear_task(void *ctx, size_t task, int worker) {
  (void)worker;
  const linear_job *j = ctx;
  int r0 = (int)(task / (size_t)j->ncol_blocks) * j->rows;
  int c0 = (int)(task % (size_t)j->ncol_blocks) * j->cols;
  int m = j->M - r0 < j->rows ? j->M - r0 : j->rows;
  int n = j->N - c0 < j->cols ? j->N - c0 : j->cols;
  float *o = j->out + (size_t)r0 * j->N + c0;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, j->K, 1.0f,
              j->inp + (size_t)r0 * j->K, j->K, j->w + (size_t)c0 * j->K, j->K, 0.0f, o, j->N);
  if (j->bias) kern->add_bias(o, j->bias + c0, m, n, j->N);
}

static void linear_rows_task(void *ctx, size_t task, int worker) {
  (void)worker;
  const linear_job *j = ctx;
  int n0 = (int)task * j->cols, n1 = n0 + j->cols < j->N ? n0 + j->cols : j->N;
  kern->linear_rows(j->out, j->inp, j->w, j->bias, j->M, n0, n1, j->K, j->N);
}

static void cpu_linear(void *ctx, float *out, const float *inp, const float *w, const float *bias,
                       int M, int N, int K) {
  (void)ctx;
  if (M <= 0 || N <= 0) return;
  if (kern->linear_rows && M <= CPU_LINEAR_SMALL_M && K > 0) {
    /* Few rows: no packing (see linear_rows_avx2), the weight split by rows over the pool
     * in blocks of 4 rows, a few tasks per thread so a busy core does not hold up the op. */
    linear_job j = {out, inp, w, bias, M, N, K, M, N, 1};
    int nt = cpu_threads();
    size_t ntasks = 1;
    if (nt > 1 && (double)M * N * K >= CPU_PAR_MACS_SMALL) {
      int per = (N + 4 * nt - 1) / (4 * nt);
      j.cols = per < 16 ? 16 : (per + 3) & ~3;
      ntasks = (size_t)((N + j.cols - 1) / j.cols);
    }
    if (ntasks == 1) kern->linear_rows(out, inp, w, bias, M, 0, N, K, N);
    else pool_run(cpu_pool(), ntasks, linear_rows_task, &j);
    return;
  }
  linear_job j = {out, inp, w, bias, M, N, K, M, N, 1};
  int nt = cpu_threads();
  double macs = (double)M * N * K;
  size_t ntasks = 1;
  if (nt > 1 && macs >= CPU_PAR_MACS) {
    if (M >= 32 * nt) {
      /* Row blocks: each task packs the whole weight once, which is cheap next to its
       * rows x N x K products; several blocks per thread keep the load even. */
      int per = (M + nt - 1) / nt;
      if (per > CPU_LINEAR_ROWS) per = CPU_LINEAR_ROWS;
      j.rows = (per + 7) & ~7;
    } else {
      /* Few rows (pooler, small batches): split the weight's rows instead. */
      int per = (N + nt - 1) / nt;
      j.cols = (per + 15) & ~15;
      j.ncol_blocks = (N + j.cols - 1) / j.cols;
    }
    ntasks = (size_t)((M + j.rows - 1) / j.rows) * (size_t)j.ncol_blocks;
  }
  if (ntasks == 1) linear_task(&j, 0, 0);
  else pool_run(cpu_pool(), ntasks, linear_task, &j);
}

/* ---- layernorm ------------------------------------------------------------------------ */

typedef struct ln_job {
  float *out;
  const float *inp, *res, *w, *b;
  int rows, C, per;
  float eps;
} ln_job;

static void ln_task(void *ctx, size_t task, int worker) {
  (void)worker;
  const ln_job *j = ctx;
  int r0 = (int)task * j->per, r1 = r0 + j->per < j->rows ? r0 + j->per : j->rows;
  for (int r = r0; r < r1; r++) {
    size_t off = (size_t)r * j->C;
    kern->layernorm_row(j->out + off, j->inp + off, j->res ? j->res + off : NULL, j->w, j->b,
                        j->C, j->eps);
  }
}

static void cpu_layernorm(void *ctx, float *out, const float *inp, const float *residual,
                          const float *w, const float *b, int rows, int C, float eps) {
  (void)ctx;
  if (rows <= 0) return;
  ln_job j = {out, inp, residual, w, b, rows, C, rows, eps};
  int nt = cpu_threads();
  if (nt > 1 && (size_t)rows * C >= CPU_PAR_ELEMS) {
    j.per = (int)(CPU_ELEM_CHUNK / (size_t)C) + 1;
    pool_run(cpu_pool(), (size_t)((rows + j.per - 1) / j.per), ln_task, &j);
  } else {
    ln_task(&j, 0, 0);
  }
}

/* ---- elementwise ---------------------------------------------------------------------- */

typedef struct elem_job {
  float *x;
  size_t n;
} elem_job;

static void gelu_task(void *ctx, size_t task, int worker) {
  (void)worker;
  const elem_job *j = ctx;
  size_t i0 = task * CPU_ELEM_CHUNK, n = j->n - i0 < CPU_ELEM_CHUNK ? j->n - i0 : CPU_ELEM_CHUNK;
  kern->gelu(j->x + i0, n);
}

static void cpu_gelu(void *ctx, float *x, size_t n) {
  (void)ctx;
  elem_job j = {x, n};
  size_t ntasks = (n + CPU_ELEM_CHUNK - 1) / CPU_ELEM_CHUNK;
  if (ntasks > 1 && cpu_threads() > 1) pool_run(cpu_pool(), ntasks, gelu_task, &j);
  else if (n) kern->gelu(x, n);
}

/* Only the pooler uses it (B x C values), so libm is fast enough. */
static void cpu_tanh(void *ctx, float *x, size_t n) {
  (void)ctx;
  for (size_t i = 0; i < n; i++) x[i] = tanhf(x[i]);
}

/* ---- attention ------------------------------------------------------------------------ */

typedef struct attn_job {
  float *out;        /* (B, T, C) */
  const float *qkv;  /* (B, T, 3C) */
  const int *lens;   /* (B) */
  float *scratch;    /* (workers, T, T) */
  int T, C, NH, hd;
  float scale;
} attn_job;

/* One (sequence, head): S = q k^T * scale over the valid len x len block, row softmax,
 * out = S v. q, k and v are read in place from the fused qkv rows (leading dimension 3C)
 * and the result lands in this head's columns of out (leading dimension C). */
static void attn_task(void *ctx, size_t task, int worker) {
  const attn_job *j = ctx;
  int b = (int)(task / (size_t)j->NH), h = (int)(task % (size_t)j->NH);
  int T = j->T, C = j->C, hd = j->hd;
  int len = j->lens[b];
  if (len < 0) len = 0;
  if (len > T) len = T;
  const float *q = j->qkv + (size_t)b * T * 3 * C + (size_t)h * hd;
  const float *k = q + C, *v = q + 2 * C;
  float *o = j->out + (size_t)b * T * C + (size_t)h * hd;
  float *S = j->scratch + (size_t)worker * T * T; /* (len, len) */
  if (len > 0) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, len, len, hd, j->scale, q, 3 * C, k,
                3 * C, 0.0f, S, len);
    for (int t = 0; t < len; t++) kern->softmax_row(S + (size_t)t * len, len);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, len, hd, len, 1.0f, S, len, v, 3 * C,
                0.0f, o, C);
  }
  for (int t = len; t < T; t++) memset(o + (size_t)t * C, 0, (size_t)hd * sizeof *o);
}

static size_t cpu_attention_scratch(void *ctx, int B, int T, int NH) {
  (void)ctx;
  (void)B;
  (void)NH;
  return (size_t)cpu_threads() * T * T;
}

static void cpu_attention(void *ctx, float *out, const float *qkv, const int *lens, int B, int T,
                          int C, int NH, float *scratch) {
  (void)ctx;
  if (B <= 0 || T <= 0) return;
  int hd = C / NH;
  attn_job j = {out, qkv, lens, scratch, T, C, NH, hd, 1.0f / sqrtf((float)hd)};
  size_t ntasks = (size_t)B * NH;
  if (cpu_threads() > 1 && (double)B * T * T * C >= CPU_PAR_MACS)
    pool_run(cpu_pool(), ntasks, attn_task, &j);
  else
    for (size_t t = 0; t < ntasks; t++) attn_task(&j, t, 0);
}

/* ---- embed ---------------------------------------------------------------------------- */

typedef struct embed_job {
  float *out;
  const int32_t *ids, *type_ids;
  const float *word, *pos, *type;
  const int *lens;
  int B, T, C;
} embed_job;

static void embed_task(void *ctx, size_t task, int worker) {
  (void)worker;
  const embed_job *j = ctx;
  int b = (int)task, T = j->T, C = j->C;
  int len = j->lens ? j->lens[b] : T;
  if (len < 0) len = 0;
  if (len > T) len = T;
  for (int t = 0; t < T; t++) {
    float *o = j->out + ((size_t)b * T + t) * C;
    if (t >= len) {
      memset(o, 0, (size_t)C * sizeof *o);
      continue;
    }
    size_t bt = (size_t)b * T + t;
    const float *we = j->word + (size_t)j->ids[bt] * C, *pe = j->pos + (size_t)t * C;
    const float *te = j->type + (size_t)(j->type_ids ? j->type_ids[bt] : 0) * C;
    for (int i = 0; i < C; i++) o[i] = we[i] + pe[i] + te[i];
  }
}

static void cpu_embed(void *ctx, float *out, const int32_t *ids, const int32_t *type_ids,
                      const float *word, const float *pos, const float *type, const int *lens, int B,
                      int T, int C) {
  (void)ctx;
  embed_job j = {out, ids, type_ids, word, pos, type, lens, B, T, C};
  if (B > 1 && cpu_threads() > 1 && (size_t)B * T * C >= CPU_PAR_ELEMS)
    pool_run(cpu_pool(), (size_t)B, embed_task, &j);
  else
    for (int b = 0; b < B; b++) embed_task(&j, (size_t)b, 0);
}

/* ---- the table ------------------------------------------------------------------------ */

static const qv_backend cpu_backend = {
    .api_version = QV_BACKEND_API_VERSION,
    .name = "cpu",
    .ctx = NULL,
    .linear = cpu_linear,
    .layernorm = cpu_layernorm,
    .gelu = cpu_gelu,
    .act_tanh = cpu_tanh,
    .attention = cpu_attention,
    .attention_scratch = cpu_attention_scratch,
    .embed = cpu_embed,
    .sync = NULL,
};

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_thread(void) { openblas_set_num_threads(1); }

const qv_backend *backend_cpu(void) {
  pthread_once(&blas_once, blas_single_thread);
  return &cpu_backend;
}
