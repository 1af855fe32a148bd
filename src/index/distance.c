/* Distance kernels: portable C, AVX2+FMA and AVX-512F versions of dot, squared L2 and L1,
 * with one dispatch table chosen at load time.
 *
 * All three ISAs live in this file as `target` functions so the rest of the build stays
 * at the baseline ISA and one binary runs on any x86-64. Each kernel keeps several
 * independent accumulators: a single one would serialize on the add/FMA latency (4
 * cycles) and run at a quarter of the throughput. Tails are handled with masked loads
 * (AVX-512, AVX2) so no read goes past n floats. */
#include "index/distance.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compute/simd.h"

/* ---- Portable ------------------------------------------------------------------------ */

/* Eight accumulators so the compiler (or the CPU, when it does not vectorize) can keep
 * eight adds in flight. */
static float dot_portable(const float *a, const float *b, size_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
    s4 += a[i + 4] * b[i + 4];
    s5 += a[i + 5] * b[i + 5];
    s6 += a[i + 6] * b[i + 6];
    s7 += a[i + 7] * b[i + 7];
  }
  for (; i < n; i++) s0 += a[i] * b[i];
  return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
}

static float l2sq_portable(const float *a, const float *b, size_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    float d0 = a[i] - b[i], d1 = a[i + 1] - b[i + 1], d2 = a[i + 2] - b[i + 2],
          d3 = a[i + 3] - b[i + 3], d4 = a[i + 4] - b[i + 4], d5 = a[i + 5] - b[i + 5],
          d6 = a[i + 6] - b[i + 6], d7 = a[i + 7] - b[i + 7];
    s0 += d0 * d0;
    s1 += d1 * d1;
    s2 += d2 * d2;
    s3 += d3 * d3;
    s4 += d4 * d4;
    s5 += d5 * d5;
    s6 += d6 * d6;
    s7 += d7 * d7;
  }
  for (; i < n; i++) {
    float d = a[i] - b[i];
    s0 += d * d;
  }
  return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
}

static float l1_portable(const float *a, const float *b, size_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 += fabsf(a[i] - b[i]);
    s1 += fabsf(a[i + 1] - b[i + 1]);
    s2 += fabsf(a[i + 2] - b[i + 2]);
    s3 += fabsf(a[i + 3] - b[i + 3]);
    s4 += fabsf(a[i + 4] - b[i + 4]);
    s5 += fabsf(a[i + 5] - b[i + 5]);
    s6 += fabsf(a[i + 6] - b[i + 6]);
    s7 += fabsf(a[i + 7] - b[i + 7]);
  }
  for (; i < n; i++) s0 += fabsf(a[i] - b[i]);
  return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
}

#ifdef QV_X86

/* ---- AVX2 + FMA ---------------------------------------------------------------------- */


AVX2 static float dot_avx2(const float *a, const float *b, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  if (i < n) {
    __m256i m = avx2_tail_mask(n - i);
    s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
  }
  return avx2_hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

AVX2 static float l2sq_avx2(const float *a, const float *b, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
    __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
    __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
    s0 = _mm256_fmadd_ps(d0, d0, s0);
    s1 = _mm256_fmadd_ps(d1, d1, s1);
    s2 = _mm256_fmadd_ps(d2, d2, s2);
    s3 = _mm256_fmadd_ps(d3, d3, s3);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    s0 = _mm256_fmadd_ps(d, d, s0);
  }
  if (i < n) {
    __m256i m = avx2_tail_mask(n - i);
    __m256 d = _mm256_sub_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m));
    s1 = _mm256_fmadd_ps(d, d, s1);
  }
  return avx2_hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

AVX2 static float l1_avx2(const float *a, const float *b, size_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
    __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
    __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
    s0 = _mm256_add_ps(s0, _mm256_andnot_ps(sign, d0));
    s1 = _mm256_add_ps(s1, _mm256_andnot_ps(sign, d1));
    s2 = _mm256_add_ps(s2, _mm256_andnot_ps(sign, d2));
    s3 = _mm256_add_ps(s3, _mm256_andnot_ps(sign, d3));
  }
  for (; i + 8 <= n; i += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    s0 = _mm256_add_ps(s0, _mm256_andnot_ps(sign, d));
  }
  if (i < n) {
    __m256i m = avx2_tail_mask(n - i);
    __m256 d = _mm256_sub_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m));
    s1 = _mm256_add_ps(s1, _mm256_andnot_ps(sign, d));
  }
  return avx2_hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/* ---- AVX-512F ------------------------------------------------------------------------ */


AVX512 static float dot_avx512(const float *a, const float *b, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
         s3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
  }
  for (; i + 16 <= n; i += 16)
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
  if (i < n) {
    __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

AVX512 static float l2sq_avx512(const float *a, const float *b, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
         s3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
    __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32));
    __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48));
    s0 = _mm512_fmadd_ps(d0, d0, s0);
    s1 = _mm512_fmadd_ps(d1, d1, s1);
    s2 = _mm512_fmadd_ps(d2, d2, s2);
    s3 = _mm512_fmadd_ps(d3, d3, s3);
  }
  for (; i + 16 <= n; i += 16) {
    __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    s0 = _mm512_fmadd_ps(d, d, s0);
  }
  if (i < n) {
    __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
    s1 = _mm512_fmadd_ps(d, d, s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

AVX512 static float l1_avx512(const float *a, const float *b, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
         s3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
    __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32));
    __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48));
    s0 = _mm512_add_ps(s0, _mm512_abs_ps(d0));
    s1 = _mm512_add_ps(s1, _mm512_abs_ps(d1));
    s2 = _mm512_add_ps(s2, _mm512_abs_ps(d2));
    s3 = _mm512_add_ps(s3, _mm512_abs_ps(d3));
  }
  for (; i + 16 <= n; i += 16) {
    __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    s0 = _mm512_add_ps(s0, _mm512_abs_ps(d));
  }
  if (i < n) {
    __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
    s1 = _mm512_add_ps(s1, _mm512_abs_ps(d));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

#endif /* QV_X86 */

/* ---- Dispatch ------------------------------------------------------------------------ */

static const dist_kernels k_portable = {dot_portable, l2sq_portable, l1_portable, "portable"};
#ifdef QV_X86
static const dist_kernels k_avx2 = {dot_avx2, l2sq_avx2, l1_avx2, "avx2"};
static const dist_kernels k_avx512 = {dot_avx512, l2sq_avx512, l1_avx512, "avx512"};
#endif

/* Written only by the load-time constructor (and dist_force_isa in tests); until then the
 * portable kernels answer. */
static const dist_kernels *active = &k_portable;

/* 0 portable, 1 avx2, 2 avx512; -1 for no cap or an unknown name. */
static int isa_level(const char *name) {
  if (!name) return -1;
  if (strcmp(name, "portable") == 0) return 0;
  if (strcmp(name, "avx2") == 0) return 1;
  if (strcmp(name, "avx512") == 0) return 2;
  return -1;
}

static const dist_kernels *select_kernels(const char *cap_name) {
  int cap = isa_level(cap_name);
  if (cap < 0) cap = 2;
#ifdef QV_X86
  __builtin_cpu_init(); /* we may run before libgcc's own constructor */
  if (cap >= 2 && __builtin_cpu_supports("avx512f")) return &k_avx512;
  if (cap >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return &k_avx2;
#endif
  return &k_portable;
}

__attribute__((constructor)) static void dist_init(void) {
  active = select_kernels(getenv("QUIVER_ISA"));
}

const dist_kernels *dist_get_kernels(void) { return active; }

const char *dist_force_isa(const char *isa) {
  active = select_kernels(isa);
  return active->isa;
}

const char *dist_isa(void) { return active->isa; }

float dist_dot(const float *a, const float *b, size_t n) { return active->dot(a, b, n); }
float dist_l2sq(const float *a, const float *b, size_t n) { return active->l2sq(a, b, n); }
float dist_l1(const float *a, const float *b, size_t n) { return active->l1(a, b, n); }

void dist_normalize(float *v, size_t n) {
  float sq = active->dot(v, v, n);
  if (!(sq > 0)) return; /* zero (or NaN) stays as it is */
  float inv = 1.0f / sqrtf(sq);
  for (size_t i = 0; i < n; i++) v[i] *= inv;
}

float dist_score(qv_distance d, const float *q, const float *x, size_t n) {
  switch (d) {
  case QV_DIST_EUCLID:
    return sqrtf(active->l2sq(q, x, n));
  case QV_DIST_MANHATTAN:
    return active->l1(q, x, n);
  case QV_DIST_COSINE:
  case QV_DIST_DOT:
  default:
    return active->dot(q, x, n);
  }
}
