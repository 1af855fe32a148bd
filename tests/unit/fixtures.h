/* Setup shared by the collection and HNSW unit tests: fresh directories, numeric ids,
 * one seeded generator, the clustered data set the recall tests measure on, a collection
 * made and filled in one call, and an HNSW graph built over clustered data. Everything is
 * static inline (each test is one translation unit, and a helper a test does not use
 * costs nothing); failures abort or fail the test through test.h. */
#ifndef QV_TEST_FIXTURES_H
#define QV_TEST_FIXTURES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "index/hnsw.h"
#include "quiver.h"
#include "store/collection.h"
#include "test.h"

/* A new empty directory /tmp/qv-test-<tag>-XXXXXX; the next call reuses the buffer. */
static inline char *fresh_dir(const char *tag) {
  static char buf[256];
  snprintf(buf, sizeof buf, "/tmp/qv-test-%s-XXXXXX", tag);
  if (!mkdtemp(buf)) abort();
  return buf;
}

static inline qv_point_id num(uint64_t n) { return (qv_point_id){.kind = QV_ID_NUM, .num = n}; }

/* One linear congruential generator per test file; a test that needs fixed data sets
 * rng_state first. */
static uint64_t rng_state = 88172645463325252ULL;
static inline uint64_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return rng_state >> 24;
}
/* Uniform in [-1, 1). */
static inline float frand(void) { return (float)((double)(rnd() & 0xFFFFFF) / (double)(1 << 23) - 1.0); }

#define FX_NCENT 1024  /* clusters: 20 points each at n = 20000 */
#define FX_SPREAD 0.5f /* per-coordinate noise; clusters overlap, which keeps recall honest */

/* n points around FX_NCENT centres in [-1, 1]^dim (the centres drawn from seed, the
 * points from point_seed), each coordinate spread by a sum of three uniforms scaled by
 * FX_SPREAD. The same seed with another point_seed draws from the same distribution. */
static inline float *clustered2(size_t n, size_t dim, uint64_t seed, uint64_t point_seed) {
  rng_state = seed;
  float *c = malloc(FX_NCENT * dim * sizeof *c), *x = malloc((n ? n : 1) * dim * sizeof *x);
  if (!c || !x) abort();
  for (size_t i = 0; i < FX_NCENT * dim; i++) c[i] = frand();
  rng_state = point_seed;
  for (size_t i = 0; i < n; i++) {
    size_t k = rnd() % FX_NCENT;
    for (size_t j = 0; j < dim; j++) x[i * dim + j] = c[k * dim + j] + FX_SPREAD * (frand() + frand() + frand());
  }
  free(c);
  return x;
}

static inline float *clustered(size_t n, size_t dim, uint64_t seed) { return clustered2(n, dim, seed, seed); }

/* nq queries from the distribution of clustered(n, dim, seed), independent of its points. */
static inline float *queries(size_t nq, size_t dim, uint64_t seed) {
  return clustered2(nq, dim, seed, seed * 31 + 7);
}

static inline uint64_t *iota_labels(size_t n) {
  uint64_t *l = malloc((n ? n : 1) * sizeof *l);
  if (!l) abort();
  for (size_t i = 0; i < n; i++) l[i] = i;
  return l;
}

/* clustered(n, dim, seed) and queries(nq, dim, seed), labels 0..n-1, and a graph over
 * the points with the given parameters (hnsw_new), filled by hnsw_add_batch over pool
 * (NULL: one thread, so node i is point i). */
typedef struct graph_fixture {
  float *x;          /* (n, dim) */
  float *q;          /* (nq, dim) */
  uint64_t *labels;  /* (n) */
  hnsw *h;
} graph_fixture;

static inline void graph_fixture_build(graph_fixture *f, size_t n, size_t nq, size_t dim, uint64_t seed,
                                       qv_distance d, size_t m, size_t ef_construct, uint64_t hseed,
                                       qv_pool *pool) {
  f->x = clustered(n, dim, seed);
  f->q = queries(nq, dim, seed);
  f->labels = iota_labels(n);
  ASSERT_OK(hnsw_new(&f->h, dim, d, m, ef_construct, hseed));
  ASSERT_OK(hnsw_add_batch(f->h, f->labels, f->x, n, pool, NULL));
}

static inline void graph_fixture_free(graph_fixture *f) {
  hnsw_free(f->h);
  free(f->labels);
  free(f->x);
  free(f->q);
}

/* Opens (creating) the data directory dir and in it a new collection "t" made with cfg;
 * a failing step fails the test with its status. */
static inline qv_collection *make_collection(qv_db **db, const char *dir, const qv_collection_config *cfg) {
  qv_collection *c = NULL;
  ASSERT_OK(qv_db_open(db, dir, NULL)); /* each step names its error when it fails */
  ASSERT_OK(qv_collection_create(*db, "t", cfg, NULL));
  ASSERT_OK(qv_collection_open(*db, "t", &c, NULL));
  return c;
}

/* Upserts rows [from, to) of x (dim floats each) as ids from..to-1, with payload(i)
 * (NULL: none), in one batch. */
static inline qv_status upsert_range(qv_collection *c, const float *x, size_t dim, size_t from, size_t to,
                                     const char *(*payload)(size_t)) {
  size_t n = to - from;
  qv_point *pts = calloc(n ? n : 1, sizeof *pts);
  if (!pts) return QV_ENOMEM;
  for (size_t i = 0; i < n; i++)
    pts[i] = (qv_point){num(from + i), x + (from + i) * dim, payload ? payload(from + i) : NULL};
  qv_status st = qv_collection_upsert(c, pts, n, NULL);
  free(pts);
  return st;
}

/* make_collection, rows [0, n) of x upserted in one batch (upsert_range), and any graph
 * build that brought about finished (collection_index_wait). Fails the test on error. */
static inline qv_collection *make_filled_collection(qv_db **db, const char *dir, const qv_collection_config *cfg,
                                                    const float *x, size_t dim, size_t n,
                                                    const char *(*payload)(size_t)) {
  qv_collection *c = make_collection(db, dir, cfg);
  ASSERT(c);
  ASSERT_OK(upsert_range(c, x, dim, 0, n, payload));
  collection_index_wait(c);
  return c;
}

#endif
