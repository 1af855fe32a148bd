/* Exact (flat) search over a row-major matrix of vectors.
 *
 * The caller owns the matrix: n rows of `stride` floats, of which the first `dim` are the
 * vector (stride >= dim; extra floats are ignored). Scores follow dist_score. Results for
 * each query are the k best rows, best first, ties broken by lower row index. Rows not set
 * in `mask` (a bitmap of n bits, bit r = word r/64, bit r%64) are skipped; a NULL mask
 * allows every row.
 *
 * A row whose score is NaN ranks below every real score (ties by row), so it appears only
 * when fewer than k rows score a number.
 *
 * One query scans with the SIMD kernels, split over the pool for large n. A batch of
 * queries is computed as a blocked matrix product (OpenBLAS sgemm) with bounded top-k
 * heaps per query, also spread over the pool; Manhattan always scans. In the batch path
 * Euclid ranks by |q|^2 + |x|^2 - 2 q.x and then rescores the k results exactly, so near
 * the k-th place a row within about 1e-7 * (|q|^2 + |x|^2) of the cut-off may be swapped
 * for its neighbour. The first batch search sets OpenBLAS to one thread, process-wide
 * (see flat.c). pool may be NULL (runs on the calling thread). */
#ifndef QV_INDEX_FLAT_H
#define QV_INDEX_FLAT_H

#include <stddef.h>
#include <stdint.h>

#include "base/pool.h"
#include "quiver.h"

typedef struct flat_hit {
  float score;
  uint32_t row;
} flat_hit;

typedef struct flat_matrix {
  const float *data;     /* (n, stride) */
  const float *sqnorms;  /* (n) squared L2 norm of each row; may be NULL (then computed) */
  size_t n, dim, stride;
} flat_matrix;

/* hits: (nq, k) filled best-first; counts: (nq) how many hits each query got
 * (min(k, allowed rows)). queries: (nq, dim). k == 0 or n == 0 sets every count to 0 (hits
 * may then be NULL). QV_EINVAL for dim 0, stride < dim, n > UINT32_MAX or an unknown
 * distance; QV_ENOMEM when scratch cannot be allocated. */
qv_status flat_search(flat_hit *hits, size_t *counts, const float *queries, size_t nq,
                      const flat_matrix *m, qv_distance dist, size_t k, const uint64_t *mask,
                      qv_pool *pool);

/* The same over rows that are not one matrix: row r is rows[r] (dim floats each, no
 * alignment needed); sqnorms may be NULL. GEMM mode copies each block's rows into a
 * per-worker buffer before the product. For stores whose vectors live in several
 * places (a collection whose graph holds most of them). */
qv_status flat_search_rows(flat_hit *hits, size_t *counts, const float *queries, size_t nq,
                           const float *const *rows, const float *sqnorms, size_t n, size_t dim,
                           qv_distance dist, size_t k, const uint64_t *mask, qv_pool *pool);

#endif
