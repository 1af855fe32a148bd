/* Each vector held once (collection.c invariant 9): once a float32 graph holds the rows'
 * vectors, the rows give their pages back, and every read path (get, exact search,
 * filtered search, rescoring, a rebuild to int8, a reload) still sees the stored vectors
 * bit for bit, through deletes that move rows and upserts that replace indexed points. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "index/distance.h"
#include "quiver.h"
#include "store/collection.h"
#include "fixtures.h"
#include "test.h"

enum { N = 6000, DIM = 96 };

/* The vectors as a Cosine collection stores them: normalized by the same function. */
static float *unit_vectors(size_t n) {
  float *x = malloc(n * DIM * sizeof *x);
  for (size_t i = 0; i < n * DIM; i++) x[i] = frand();
  return x;
}

static char payload_text[N][32];
static const char *group_of(size_t i) {
  snprintf(payload_text[i], sizeof payload_text[i], "{\"g\":%zu}", i % 97);
  return payload_text[i];
}

/* Every live point's stored vector equals want (id i at want + i * DIM), bit for bit. */
static void vectors_are(qv_collection *c, const float *want, const int *live) {
  size_t n = 0;
  qv_point_id *ids = malloc(N * sizeof *ids);
  for (size_t i = 0; i < N; i++)
    if (live[i]) ids[n++] = num(i);
  qv_records r;
  ASSERT_OK(qv_collection_get(c, ids, n, 0, 1, &r, NULL));
  ASSERT_EQ(r.count, n);
  for (size_t i = 0; i < r.count; i++) {
    uint64_t id = r.items[i].id.num;
    ASSERT(memcmp(r.items[i].vector, want + id * DIM, DIM * sizeof(float)) == 0);
  }
  qv_records_free(&r);
  free(ids);
}

/* Stats' vector_bytes (kept by count, invariant 10) is what the kernel says the rows'
 * pages hold, to the byte; returns it. */
static size_t resident_exact(qv_collection *c) {
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.vector_bytes, collection_rows_mincore(c));
  return s.vector_bytes;
}

/* Exact search (all rows, and rows of payload group g) equals a brute-force scan of want. */
static void exact_matches_brute_force(qv_collection *c, const float *want, const int *live, const float *q) {
  for (int filtered = 0; filtered < 2; filtered++) {
    qv_filter *f = NULL;
    const char *fj = "{\"must\":[{\"key\":\"g\",\"match\":{\"value\":5}}]}";
    if (filtered) ASSERT_OK(qv_filter_parse(&f, fj, strlen(fj), NULL));
    qv_search_params p = {.limit = 10, .exact = !filtered, .filter = f};
    qv_records r;
    ASSERT_OK(qv_collection_search(c, q, 1, &p, &r, NULL));
    float best[10];
    uint64_t best_id[10];
    size_t nb = 0;
    for (size_t i = 0; i < N; i++) {
      if (!live[i] || (filtered && i % 97 != 5)) continue;
      float s = dist_dot(q, want + i * DIM, DIM);
      size_t at = nb < 10 ? nb++ : 10;
      while (at > 0 && best[at - 1] < s) {
        if (at < 10) best[at] = best[at - 1], best_id[at] = best_id[at - 1];
        at--;
      }
      if (at < 10) best[at] = s, best_id[at] = i;
    }
    ASSERT_EQ(r.count, nb);
    for (size_t i = 0; i < nb; i++) {
      ASSERT_U64_EQ(r.items[i].id.num, best_id[i]);
      ASSERT_NEAR(r.items[i].score, best[i], 1e-5);
    }
    qv_records_free(&r);
    qv_filter_free(f);
  }
}

TEST(vectors_live_once_and_every_read_path_sees_them_exactly) {
  float *x = unit_vectors(N), *want = malloc(N * DIM * sizeof *want), *q = unit_vectors(1);
  memcpy(want, x, N * DIM * sizeof *want);
  for (size_t i = 0; i < N; i++) dist_normalize(want + i * DIM, DIM);
  dist_normalize(q, DIM);
  int *live = calloc(N, sizeof *live);
  char *dir = fresh_dir("cvec");
  qv_db *db;
  qv_collection_config cfg = {.size = DIM, .distance = QV_DIST_COSINE, .hnsw = {.full_scan_threshold = 10}};
  qv_collection *c = make_filled_collection(&db, dir, &cfg, x, DIM, N, group_of);
  for (size_t i = 0; i < N; i++) live[i] = 1;
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.indexed, N);
  size_t all_rows = (size_t)N * DIM * sizeof(float);
  /* the graph holds the vectors; the rows gave their pages back */
  ASSERT(s.vector_bytes < all_rows / 50);
  ASSERT(s.graph_bytes > all_rows);
  size_t indexed_bytes = resident_exact(c);
  vectors_are(c, want, live);
  exact_matches_brute_force(c, want, live, q);

  /* deletes move the last rows into the holes; an upsert replaces indexed points */
  qv_point_id del[N / 5];
  size_t nd = 0;
  for (size_t i = 0; i < N; i += 11) del[nd++] = num(i), live[i] = 0;
  size_t deleted;
  ASSERT_OK(qv_collection_delete_ids(c, del, nd, &deleted, NULL));
  ASSERT_EQ(deleted, nd);
  /* the moved rows' vectors stayed in their nodes: no page came back */
  ASSERT(resident_exact(c) <= indexed_bytes);
  float *y = unit_vectors(N);
  memcpy(x + 3 * DIM, y + 3 * DIM, DIM * sizeof *x);
  memcpy(x + (N - 1) * DIM, y + (N - 1) * DIM, DIM * sizeof *x);
  ASSERT_OK(upsert_range(c, x, DIM, 3, 4, group_of));
  ASSERT_OK(upsert_range(c, x, DIM, N - 1, N, group_of));
  memcpy(want + 3 * DIM, x + 3 * DIM, DIM * sizeof *x);
  memcpy(want + (N - 1) * DIM, x + (N - 1) * DIM, DIM * sizeof *x);
  dist_normalize(want + 3 * DIM, DIM);
  dist_normalize(want + (N - 1) * DIM, DIM);
  /* the replaced rows (one far from the other) went into the graph and gave their pages
   * back again */
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.indexed, N - nd);
  ASSERT(resident_exact(c) <= indexed_bytes);
  vectors_are(c, want, live);
  exact_matches_brute_force(c, want, live, q);
  /* the replaced point is found by its new vector through the graph */
  qv_search_params p1 = {.limit = 1};
  qv_records r;
  ASSERT_OK(qv_collection_search(c, want + 3 * DIM, 1, &p1, &r, NULL));
  ASSERT_EQ(r.count, 1);
  ASSERT_U64_EQ(r.items[0].id.num, 3);
  ASSERT_NEAR(r.items[0].score, 1, 1e-5);
  qv_records_free(&r);

  /* a payload change rewrites each point's record with its vector: the graph's copy,
   * not the given-back row; a reopen without the graph file rebuilds from those records */
  size_t updated;
  ASSERT_OK(qv_collection_set_payload(c, NULL, 0, NULL, "{\"edited\":true}", QV_PAYLOAD_SET, &updated, NULL));
  ASSERT_EQ(updated, N - nd);
  qv_db_close(db);
  char graph[512];
  snprintf(graph, sizeof graph, "%s/collections/t/graph.hnsw", dir);
  ASSERT_EQ(unlink(graph), 0);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  collection_index_wait(c);
  vectors_are(c, want, live);
  exact_matches_brute_force(c, want, live, q);

  /* switching to int8 rebuilds on codes: the rows take their floats back */
  qv_collection_config now;
  qv_collection_config_get(c, &now);
  now.quant = (qv_quant_config){.type = QV_QUANT_INT8, .quantile = 0.99f, .always_ram = 1};
  ASSERT_OK(qv_collection_update_config(c, &now, NULL));
  collection_index_wait(c);
  qv_collection_stats_get(c, &s);
  ASSERT(s.quantized_bytes > 0);
  ASSERT(s.vector_bytes >= (N - nd) * DIM * sizeof(float));
  ASSERT_EQ(resident_exact(c), (N - nd) * DIM * sizeof(float));
  vectors_are(c, want, live);
  exact_matches_brute_force(c, want, live, q);

  /* and back to floats, then a reopen that loads the saved graph */
  now.quant = (qv_quant_config){0};
  ASSERT_OK(qv_collection_update_config(c, &now, NULL));
  collection_index_wait(c);
  qv_db_close(db);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  ASSERT_EQ(collection_index_loaded(c), 1);
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.quantized_bytes, 0);
  ASSERT(s.vector_bytes < all_rows / 50);
  resident_exact(c);
  vectors_are(c, want, live);
  exact_matches_brute_force(c, want, live, q);

  /* points added after the build are read from the rows until the graph takes them */
  memcpy(x, y, DIM * sizeof *x);
  ASSERT_OK(upsert_range(c, x, DIM, 0, 1, group_of));
  live[0] = 1;
  memcpy(want, x, DIM * sizeof *x);
  dist_normalize(want, DIM);
  vectors_are(c, want, live);
  exact_matches_brute_force(c, want, live, q);
  resident_exact(c);
  qv_db_close(db);
  free(x);
  free(y);
  free(want);
  free(q);
  free(live);
}

TEST_MAIN(T(vectors_live_once_and_every_read_path_sees_them_exactly))
