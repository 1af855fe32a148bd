/* flat_search against a brute-force reference: every score in double precision, sorted.
 * Ids must match exactly where the reference scores are separated by more than the
 * tolerance; within a near-tie any of the tied rows is accepted, as long as its own
 * reference score is the one expected at that position. */
#include "index/flat.h"

#include <stdint.h>

#include "index/distance.h"
#include "test.h"

#define TOL 1e-4

static const qv_distance all_dists[] = {QV_DIST_COSINE, QV_DIST_DOT, QV_DIST_EUCLID,
                                        QV_DIST_MANHATTAN};

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return rng_state >> 24;
}
static float frand(void) { return (float)((double)(rnd() & 0xFFFFFF) / (double)(1 << 23) - 1.0); }

static double ref_score(qv_distance d, const float *q, const float *x, size_t dim) {
  double s = 0;
  for (size_t i = 0; i < dim; i++) {
    double a = q[i], b = x[i];
    if (d == QV_DIST_EUCLID) s += (a - b) * (a - b);
    else if (d == QV_DIST_MANHATTAN) s += fabs(a - b);
    else s += a * b;
  }
  return d == QV_DIST_EUCLID ? sqrt(s) : s;
}

typedef struct ref_hit {
  double score;
  size_t row;
} ref_hit;

static int ref_higher_;
static int ref_cmp(const void *pa, const void *pb) {
  const ref_hit *a = pa, *b = pb;
  int an = a->score != a->score, bn = b->score != b->score;
  if (an != bn) return an ? 1 : -1;
  if (!an && a->score != b->score) {
    int a_better = ref_higher_ ? a->score > b->score : a->score < b->score;
    return a_better ? -1 : 1;
  }
  return a->row < b->row ? -1 : a->row > b->row ? 1 : 0;
}

static int allowed(const uint64_t *mask, size_t r) { return !mask || ((mask[r / 64] >> (r % 64)) & 1); }

static int close_enough(double a, double b) {
  if (a != a || b != b) return a != a && b != b;
  return fabs(a - b) <= TOL * fmax(1.0, fmax(fabs(a), fabs(b)));
}

/* Runs flat_search and checks every query against the reference. exact: scores are exact
 * in float (small integers), so ties must come out strictly by row. */
static void check_search(const float *queries, size_t nq, const flat_matrix *m, qv_distance d,
                         size_t k, const uint64_t *mask, qv_pool *pool, int exact) {
  flat_hit *hits = malloc((nq * k + 1) * sizeof *hits);
  size_t *counts = malloc((nq + 1) * sizeof *counts);
  ref_hit *ref = malloc((m->n + 1) * sizeof *ref);
  ASSERT(hits && counts && ref);
  for (size_t q = 0; q < nq; q++) counts[q] = (size_t)-1;
  ASSERT_OK(flat_search(hits, counts, queries, nq, m, d, k, mask, pool));
  ref_higher_ = dist_higher_is_better(d);
  for (size_t q = 0; q < nq; q++) {
    const float *qv = queries + q * m->dim;
    size_t nref = 0;
    for (size_t r = 0; r < m->n; r++)
      if (allowed(mask, r))
        ref[nref++] = (ref_hit){ref_score(d, qv, m->data + r * m->stride, m->dim), r};
    qsort(ref, nref, sizeof *ref, ref_cmp);
    size_t want = k < nref ? k : nref;
    ASSERT_EQ(counts[q], want);
    const flat_hit *h = hits + q * k;
    for (size_t i = 0; i < want; i++) {
      size_t r = h[i].row;
      ASSERT(r < m->n);
      ASSERT(allowed(mask, r));
      for (size_t j = 0; j < i; j++) ASSERT_NE(h[j].row, r);
      double own = ref_score(d, qv, m->data + r * m->stride, m->dim);
      if (exact) {
        ASSERT_EQ(r, ref[i].row);
        ASSERT_NEAR(h[i].score, ref[i].score, 1e-6);
        continue;
      }
      if (!close_enough(h[i].score, own) || !close_enough(own, ref[i].score))
        TEST_FAIL_("q %zu pos %zu: row %zu score %.9g, its ref %.9g, ref at pos %.9g (row %zu)",
                   q, i, r, (double)h[i].score, own, ref[i].score, ref[i].row);
      int separated = (i == 0 || !close_enough(ref[i].score, ref[i - 1].score)) &&
                      (i + 1 >= nref || !close_enough(ref[i].score, ref[i + 1].score));
      if (separated && r != ref[i].row)
        TEST_FAIL_("q %zu pos %zu: row %zu, want %zu (score %.9g)", q, i, r, ref[i].row,
                   ref[i].score);
    }
  }
  free(hits);
  free(counts);
  free(ref);
}

/* n random rows of `dim` floats in [-1, 1) with `stride`; Cosine rows are normalized. */
static float *random_rows(size_t n, size_t dim, size_t stride, int normalize) {
  float *x = malloc((n * stride + 1) * sizeof *x);
  if (!x) return NULL;
  for (size_t i = 0; i < n * stride; i++) x[i] = frand();
  if (normalize)
    for (size_t r = 0; r < n; r++) dist_normalize(x + r * stride, dim);
  return x;
}

/* Each distance, on both paths (nq = 1 scans, nq = 50 uses sgemm except Manhattan), with
 * and without a pool. */
static void run_random(size_t n, size_t dim, size_t stride, size_t k, const uint64_t *mask,
                       qv_pool *pool) {
  for (size_t di = 0; di < 4; di++) {
    qv_distance d = all_dists[di];
    int cos = d == QV_DIST_COSINE;
    float *x = random_rows(n, dim, stride, cos);
    float *q = random_rows(50, dim, dim, cos);
    ASSERT(x && q);
    flat_matrix m = {x, NULL, n, dim, stride};
    check_search(q, 1, &m, d, k, mask, pool, 0);
    check_search(q, 3, &m, d, k, mask, pool, 0);
    check_search(q, 50, &m, d, k, mask, pool, 0);
    if (d == QV_DIST_EUCLID) { /* caller-provided norms */
      float *sq = malloc(n * sizeof *sq + 1);
      ASSERT(sq);
      for (size_t r = 0; r < n; r++) sq[r] = dist_dot(x + r * stride, x + r * stride, dim);
      m.sqnorms = sq;
      check_search(q, 50, &m, d, k, mask, pool, 0);
      free(sq);
    }
    free(x);
    free(q);
  }
}

static qv_pool *test_pool(void) {
  qv_pool *p = NULL;
  if (pool_create(&p, 3) != QV_OK) return NULL;
  return p;
}

TEST(random_small) { run_random(300, 17, 17, 10, NULL, NULL); }

TEST(random_threads) {
  /* large enough that blocks are spread over the workers in both modes */
  qv_pool *p = test_pool();
  ASSERT(p);
  run_random(3000, 96, 96, 10, NULL, p);
  pool_destroy(p);
}

TEST(single_query_large_n) {
  /* 25000 x 384: the single-query scan goes parallel */
  qv_pool *p = test_pool();
  ASSERT(p);
  size_t n = 25000, dim = 384;
  for (size_t di = 0; di < 4; di++) {
    float *x = random_rows(n, dim, dim, 0), *q = random_rows(1, dim, dim, 0);
    ASSERT(x && q);
    flat_matrix m = {x, NULL, n, dim, dim};
    check_search(q, 1, &m, all_dists[di], 25, NULL, p, 0);
    free(x);
    free(q);
  }
  pool_destroy(p);
}

TEST(mask) {
  qv_pool *p = test_pool();
  ASSERT(p);
  size_t n = 2500;
  uint64_t mask[(2500 + 63) / 64];
  for (size_t w = 0; w < sizeof mask / sizeof mask[0]; w++) mask[w] = rnd() & rnd();
  for (size_t w = 3; w < 20; w++) mask[w] = 0; /* a stretch of whole zero words */
  for (size_t w = 20; w < 30; w++) mask[w] = 0; /* ... and a block with nothing allowed */
  mask[(n - 1) / 64] &= (1ull << (n % 64)) - 1;
  run_random(n, 40, 40, 10, mask, p);
  run_random(n, 40, 40, 10, mask, NULL);
  /* a mask allowing fewer rows than k */
  uint64_t few[(2500 + 63) / 64] = {0};
  few[0] = 1u << 5;
  few[17] = 1ull << 63;
  few[39] = 1;
  run_random(n, 40, 40, 10, few, p);
  pool_destroy(p);
}

TEST(stride) { run_random(1500, 33, 40, 7, NULL, NULL); }

TEST(k_larger_than_n) {
  run_random(7, 9, 11, 20, NULL, NULL);
  uint64_t mask[1] = {0x55};
  run_random(7, 9, 11, 20, mask, NULL);
}

TEST(dim_1) {
  qv_pool *p = test_pool();
  ASSERT(p);
  run_random(1000, 1, 1, 5, NULL, p);
  run_random(1000, 1, 3, 5, NULL, NULL);
  pool_destroy(p);
}

TEST(dim_4096) {
  qv_pool *p = test_pool();
  ASSERT(p);
  run_random(300, 4096, 4096, 10, NULL, p);
  pool_destroy(p);
}

TEST(empty_and_k0) {
  float q[4] = {1, 2, 3, 4}, x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  flat_hit hits[4];
  size_t counts[1] = {99};
  flat_matrix empty = {NULL, NULL, 0, 4, 4};
  for (size_t di = 0; di < 4; di++) {
    counts[0] = 99;
    ASSERT_OK(flat_search(hits, counts, q, 1, &empty, all_dists[di], 3, NULL, NULL));
    ASSERT_EQ(counts[0], 0);
    flat_matrix two = {x, NULL, 2, 4, 4};
    counts[0] = 99;
    ASSERT_OK(flat_search(NULL, counts, q, 1, &two, all_dists[di], 0, NULL, NULL));
    ASSERT_EQ(counts[0], 0);
    /* a mask with nothing allowed */
    uint64_t none[1] = {0};
    counts[0] = 99;
    ASSERT_OK(flat_search(hits, counts, q, 1, &two, all_dists[di], 3, none, NULL));
    ASSERT_EQ(counts[0], 0);
  }
  ASSERT_OK(flat_search(NULL, NULL, NULL, 0, &empty, QV_DIST_DOT, 3, NULL, NULL));
}

TEST(invalid) {
  float q[4] = {0}, x[8] = {0};
  flat_hit hits[4];
  size_t counts[1];
  flat_matrix bad_stride = {x, NULL, 2, 4, 3};
  ASSERT_STATUS(flat_search(hits, counts, q, 1, &bad_stride, QV_DIST_DOT, 2, NULL, NULL), QV_EINVAL);
  flat_matrix no_dim = {x, NULL, 2, 0, 4};
  ASSERT_STATUS(flat_search(hits, counts, q, 1, &no_dim, QV_DIST_DOT, 2, NULL, NULL), QV_EINVAL);
  flat_matrix ok = {x, NULL, 2, 4, 4};
  ASSERT_STATUS(flat_search(hits, counts, q, 1, &ok, (qv_distance)9, 2, NULL, NULL), QV_EINVAL);
}

/* Small-integer vectors with many duplicates: every score is exact in float on either
 * path, so ties must come out by lower row, exactly. */
TEST(ties) {
  qv_pool *p = test_pool();
  ASSERT(p);
  size_t n = 2100, dim = 8, nq = 20;
  float *x = malloc(n * dim * sizeof *x), *q = malloc(nq * dim * sizeof *q);
  ASSERT(x && q);
  for (size_t i = 0; i < n * dim; i++) x[i] = (float)(rnd() % 3);
  for (size_t i = 0; i < nq * dim; i++) q[i] = (float)(rnd() % 3) - 1;
  flat_matrix m = {x, NULL, n, dim, dim};
  uint64_t mask[(2100 + 63) / 64];
  for (size_t w = 0; w < sizeof mask / sizeof mask[0]; w++) mask[w] = rnd() | rnd();
  for (size_t di = 0; di < 4; di++) {
    check_search(q, 1, &m, all_dists[di], 50, NULL, p, 1);
    check_search(q, nq, &m, all_dists[di], 50, NULL, p, 1);
    check_search(q, nq, &m, all_dists[di], 50, mask, p, 1);
    check_search(q, nq, &m, all_dists[di], 50, mask, NULL, 1);
  }
  free(x);
  free(q);
  pool_destroy(p);
}

/* A row with a NaN component scores NaN: it never beats a real score, and only shows up
 * (last) when the list would otherwise be short. */
TEST(nan_never_wins) {
  size_t n = 40, dim = 16, nq = 10;
  float *x = random_rows(n, dim, dim, 0), *q = random_rows(nq, dim, dim, 0);
  flat_hit *hits = malloc(nq * n * sizeof *hits);
  size_t counts[10];
  ASSERT(x && q && hits);
  x[0 * dim + 3] = NAN;
  x[7 * dim + 0] = NAN;
  flat_matrix m = {x, NULL, n, dim, dim};
  for (size_t di = 0; di < 4; di++) {
    for (size_t nqi = 1; nqi <= nq; nqi += nq - 1) { /* scan and GEMM paths */
      ASSERT_OK(flat_search(hits, counts, q, nqi, &m, all_dists[di], n - 2, NULL, NULL));
      for (size_t i = 0; i < nqi; i++) {
        ASSERT_EQ(counts[i], n - 2);
        for (size_t j = 0; j < n - 2; j++) {
          ASSERT(hits[i * (n - 2) + j].score == hits[i * (n - 2) + j].score);
          ASSERT(hits[i * (n - 2) + j].row != 0 && hits[i * (n - 2) + j].row != 7);
        }
      }
      ASSERT_OK(flat_search(hits, counts, q, nqi, &m, all_dists[di], n, NULL, NULL));
      for (size_t i = 0; i < nqi; i++) {
        ASSERT_EQ(counts[i], n);
        ASSERT_EQ(hits[i * n + n - 2].row, 0); /* NaNs last, lower row first */
        ASSERT_EQ(hits[i * n + n - 1].row, 7);
      }
    }
  }
  free(x);
  free(q);
  free(hits);
}

/* The kernel ISAs all give the same top-k. */
TEST(every_isa) {
  static const char *isas[] = {"portable", "avx2", "avx512"};
  for (size_t i = 0; i < 3; i++) {
    if (strcmp(dist_force_isa(isas[i]), isas[i]) != 0) continue;
    run_random(500, 31, 31, 10, NULL, NULL);
  }
  dist_force_isa(NULL);
}

/* flat_search_rows over rows scattered in memory (row pointers in shuffled order, as a
 * collection's graph blocks are) gives exactly what flat_search gives over the same rows
 * as one matrix: both modes (1 and 40 queries), each distance, with a mask and a pool. */
TEST(rows_as_pointers_match_the_matrix) {
  qv_pool *p = test_pool();
  ASSERT(p);
  size_t n = 2500, dim = 40, k = 12, nqs[2] = {1, 40};
  uint64_t *mask = calloc((n + 63) / 64, sizeof *mask);
  for (size_t r = 0; r < n; r++)
    if (r % 3) mask[r / 64] |= 1ULL << (r % 64);
  for (size_t di = 0; di < 4; di++) {
    float *x = random_rows(n, dim, dim, all_dists[di] == QV_DIST_COSINE), *q = random_rows(40, dim, dim, 0);
    float *scattered = malloc(n * (dim + 3) * sizeof *scattered);
    const float **rows = malloc(n * sizeof *rows);
    ASSERT(x && q && scattered && rows);
    for (size_t r = 0; r < n; r++) { /* row r at slot (r * 7919) % n, an odd offset apart */
      float *at = scattered + ((r * 7919) % n) * (dim + 3) + 1;
      memcpy(at, x + r * dim, dim * sizeof *at);
      rows[r] = at;
    }
    flat_matrix m = {x, NULL, n, dim, dim};
    for (int masked = 0; masked < 2; masked++)
      for (size_t i = 0; i < 2; i++) {
        size_t nq = nqs[i];
        flat_hit *a = malloc(nq * k * sizeof *a), *b = malloc(nq * k * sizeof *b);
        size_t *ca = calloc(nq, sizeof *ca), *cb = calloc(nq, sizeof *cb);
        const uint64_t *mk = masked ? mask : NULL;
        ASSERT_OK(flat_search(a, ca, q, nq, &m, all_dists[di], k, mk, p));
        ASSERT_OK(flat_search_rows(b, cb, q, nq, rows, NULL, n, dim, all_dists[di], k, mk, p));
        for (size_t j = 0; j < nq; j++) {
          ASSERT_EQ(ca[j], cb[j]);
          for (size_t h = 0; h < ca[j]; h++) {
            ASSERT_EQ(a[j * k + h].row, b[j * k + h].row);
            ASSERT(a[j * k + h].score == b[j * k + h].score);
          }
        }
        free(a);
        free(b);
        free(ca);
        free(cb);
      }
    free(x);
    free(q);
    free(scattered);
    free(rows);
  }
  free(mask);
  pool_destroy(p);
}

TEST_MAIN(T(random_small), T(rows_as_pointers_match_the_matrix), T(random_threads), T(single_query_large_n), T(mask), T(stride),
          T(k_larger_than_n), T(dim_1), T(dim_4096), T(empty_and_k0), T(invalid), T(ties),
          T(nan_never_wins), T(every_isa))
