/* Distance kernels. Each has a portable version and AVX2+FMA / AVX-512 versions chosen
 * once at run time from the CPU's features (dist_isa reports which). All take two
 * vectors of n floats with no alignment requirement. */
#ifndef QV_INDEX_DISTANCE_H
#define QV_INDEX_DISTANCE_H

#include <stddef.h>

#include "quiver.h"

float dist_dot(const float *a, const float *b, size_t n);
float dist_l2sq(const float *a, const float *b, size_t n);
float dist_l1(const float *a, const float *b, size_t n);

/* "avx512", "avx2", or "portable". QUIVER_ISA=portable|avx2|avx512 caps the choice. */
const char *dist_isa(void);

/* Scales v to unit length in place; a zero vector is left as it is. */
void dist_normalize(float *v, size_t n);

/* Whether a higher score is better for this distance (Cosine, Dot) or lower (Euclid,
 * Manhattan). */
static inline int dist_higher_is_better(qv_distance d) {
  return d == QV_DIST_COSINE || d == QV_DIST_DOT;
}

/* The score Quiver reports between a query and a stored vector: the dot product for
 * Cosine and Dot, the L2 distance for Euclid, the L1 distance for Manhattan. */
float dist_score(qv_distance d, const float *q, const float *x, size_t n);

#endif
