/* Distance kernels. Each has a portable version and AVX2+FMA / AVX-512 versions chosen
 * once at run time from the CPU's features (dist_isa reports which). All take two
 * vectors of n floats with no alignment requirement.
 *
 * The choice is made by a constructor before main, so calls are one indirect jump with no
 * locking; a call made before that constructor (from another constructor) gets the
 * portable kernels, which are slower but give the same results within rounding. */
#ifndef QV_INDEX_DISTANCE_H
#define QV_INDEX_DISTANCE_H

#include <stddef.h>

#include "quiver.h"

float dist_dot(const float *a, const float *b, size_t n);
float dist_l2sq(const float *a, const float *b, size_t n);
float dist_l1(const float *a, const float *b, size_t n);

/* "avx512", "avx2", or "portable". QUIVER_ISA=portable|avx2|avx512 caps the choice (an
 * unknown value is ignored); it is read once, at load time. */
const char *dist_isa(void);

/* The kernels in use, for loops that call one many times: fetch the table once and call
 * through it, saving the dispatch per call. Never NULL; read-only. */
typedef float (*dist_fn)(const float *a, const float *b, size_t n);
typedef struct dist_kernels {
  dist_fn dot, l2sq, l1;
  const char *isa;
} dist_kernels;
const dist_kernels *dist_get_kernels(void);

/* For tests only: re-selects the kernels as if QUIVER_ISA were `isa` (NULL = no cap) and
 * returns the ISA now in use. Not thread-safe: call it only while no other thread uses
 * the kernels. */
const char *dist_force_isa(const char *isa);

/* Scales v to unit length in place; a zero vector is left as it is. */
void dist_normalize(float *v, size_t n);

/* Whether a higher score is better for this distance (Cosine, Dot) or lower (Euclid,
 * Manhattan). */
static inline int dist_higher_is_better(qv_distance d) {
  return d == QV_DIST_COSINE || d == QV_DIST_DOT;
}

/* The score Quiver reports between a query and a stored vector: the dot product for
 * Cosine and Dot, the L2 distance (sqrt of dist_l2sq) for Euclid, the L1 distance for
 * Manhattan. */
float dist_score(qv_distance d, const float *q, const float *x, size_t n);

#endif
