/* Shared x86 SIMD helpers for kernels compiled per ISA with target attributes and picked
 * at run time. Include only from .c files that dispatch on the CPU's features. */
#ifndef QV_COMPUTE_SIMD_H
#define QV_COMPUTE_SIMD_H

#include <stddef.h>

#if defined(__x86_64__)
#define QV_X86 1
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX512 __attribute__((target("avx512f")))

/* Lane mask selecting the first r (0..8) lanes: -1 in the lanes to load. */
AVX2 static inline __m256i avx2_tail_mask(size_t r) {
  static const int lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256((const __m256i *)(lanes + 8 - r));
}

AVX2 static inline float avx2_hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

AVX2 static inline float avx2_hmax(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_max_ps(lo, hi);
  lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_max_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
#endif

#endif
