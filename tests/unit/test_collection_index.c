/* Collections with an HNSW index: recall against exact search, deletes and replacements,
 * filtered search, and the index kept in step with writes. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "quiver.h"
#include "store/collection.h"
#include "fixtures.h"
#include "test.h"

/* Points from one clustered distribution (fixtures.h's, centres from seed 1234567); each
 * call site names its own draw, so queries are independent of the points and a test's
 * data does not depend on which tests ran before it. */
static float *cluster_points(size_t n, size_t dim, uint64_t draw) {
  return clustered2(n, dim, 1234567, 1000003 * draw);
}

static int has_id(const qv_records *r, uint64_t id) {
  for (size_t i = 0; i < r->count; i++)
    if (r->items[i].id.num == id) return 1;
  return 0;
}

TEST(recall_at_10_is_at_least_0_95_on_20k_points_at_default_params) {
  /* 20000 x 128 floats is 10000 KB: exactly the default full_scan_threshold */
  size_t n = 20000, dim = 128, nq = 200;
  float *x = cluster_points(n, dim, 1);
  qv_db *db;
  qv_collection_config cfg = {.size = (uint32_t)dim, .distance = QV_DIST_COSINE};
  qv_collection *c = make_collection(&db, fresh_dir("cindex"), &cfg);
  ASSERT(c);
  for (size_t from = 0; from < n; from += 2500) ASSERT_OK(upsert_range(c, x, dim, from, from + 2500, NULL));
  collection_index_wait(c);
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.points, n);
  ASSERT_EQ(s.indexed, n);
  ASSERT_EQ(s.tombstones, 0);
  ASSERT(s.graph_bytes > 0);
  float *q = cluster_points(nq, dim, 2); /* independent of the points */
  qv_records *approx = calloc(nq, sizeof *approx), *exact = calloc(nq, sizeof *exact);
  qv_search_params pa = {.limit = 10}, pe = {.limit = 10, .exact = 1};
  ASSERT_OK(qv_collection_search(c, q, nq, &pa, approx, NULL));
  ASSERT_OK(qv_collection_search(c, q, nq, &pe, exact, NULL));
  size_t found = 0;
  for (size_t i = 0; i < nq; i++) {
    ASSERT_EQ(approx[i].count, 10);
    for (size_t j = 0; j < exact[i].count; j++) found += has_id(&approx[i], exact[i].items[j].id.num);
  }
  double recall = (double)found / (double)(nq * 10);
  fprintf(stderr, "  recall@10 = %.4f\n", recall);
  ASSERT(recall >= 0.95);
  /* a larger beam does not do worse */
  qv_search_params pw = {.limit = 10, .hnsw_ef = 256};
  qv_records *wide = calloc(nq, sizeof *wide);
  ASSERT_OK(qv_collection_search(c, q, nq, &pw, wide, NULL));
  size_t found_wide = 0;
  for (size_t i = 0; i < nq; i++)
    for (size_t j = 0; j < exact[i].count; j++) found_wide += has_id(&wide[i], exact[i].items[j].id.num);
  ASSERT(found_wide >= found);
  for (size_t i = 0; i < nq; i++) {
    qv_records_free(&approx[i]);
    qv_records_free(&exact[i]);
    qv_records_free(&wide[i]);
  }

  /* points arriving after the build are in the graph when the upsert returns */
  float *more = cluster_points(500, dim, 3);
  qv_point *pts = calloc(500, sizeof *pts);
  for (size_t i = 0; i < 500; i++) pts[i] = (qv_point){num(n + i), more + i * dim, NULL};
  ASSERT_OK(qv_collection_upsert(c, pts, 500, NULL));
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.points, n + 500);
  ASSERT_EQ(s.indexed, n + 500);
  qv_records r;
  ASSERT_OK(qv_collection_search(c, more + 17 * dim, 1, &pa, &r, NULL));
  ASSERT(r.count >= 1);
  ASSERT_U64_EQ(r.items[0].id.num, n + 17);
  qv_records_free(&r);
  free(pts);
  free(more);
  free(approx);
  free(exact);
  free(wide);
  free(q);
  free(x);
  qv_db_close(db);
}

TEST(deleted_and_replaced_points_never_come_back) {
  size_t n = 3000, dim = 8;
  float *x = cluster_points(n, dim, 4);
  qv_db *db;
  qv_collection_config cfg = {.size = (uint32_t)dim, .distance = QV_DIST_EUCLID,
                              .hnsw = {.full_scan_threshold = 1}};
  qv_collection *c = make_filled_collection(&db, fresh_dir("cindex"), &cfg, x, dim, n, NULL);
  ASSERT_OK(collection_index_build(c, NULL));
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.indexed, n);
  /* delete every third point: few enough that no rebuild is due */
  size_t nd = 0;
  qv_point_id *del = malloc(n * sizeof *del);
  for (size_t i = 0; i < n; i += 7) del[nd++] = num(i);
  size_t deleted;
  ASSERT_OK(qv_collection_delete_ids(c, del, nd, &deleted, NULL));
  ASSERT_EQ(deleted, nd);
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.tombstones, nd);
  ASSERT_EQ(s.points, n - nd);
  qv_search_params p = {.limit = 20, .hnsw_ef = 20};
  for (size_t i = 0; i < n; i += 7) {
    qv_records r;
    ASSERT_OK(qv_collection_search(c, x + i * dim, 1, &p, &r, NULL));
    ASSERT_EQ(r.count, 20);
    for (size_t j = 0; j < r.count; j++) ASSERT(r.items[j].id.num % 7 != 0);
    qv_records_free(&r);
  }
  /* a replaced point is found at its new place and never at its old one */
  float far[8] = {100, 100, 100, 100, 100, 100, 100, 100};
  qv_point moved = {num(1), far, NULL};
  ASSERT_OK(qv_collection_upsert(c, &moved, 1, NULL));
  qv_records r;
  qv_search_params one = {.limit = 1};
  ASSERT_OK(qv_collection_search(c, far, 1, &one, &r, NULL));
  ASSERT_EQ(r.count, 1);
  ASSERT_U64_EQ(r.items[0].id.num, 1);
  ASSERT_NEAR(r.items[0].score, 0, 1e-4);
  qv_records_free(&r);
  qv_search_params p50 = {.limit = 50};
  ASSERT_OK(qv_collection_search(c, x + 1 * dim, 1, &p50, &r, NULL));
  ASSERT(!has_id(&r, 1));
  qv_records_free(&r);
  /* past the tombstone share a background rebuild drops them */
  nd = 0;
  for (size_t i = 0; i < n; i++)
    if (i % 7 && i % 2 == 0) del[nd++] = num(i);
  ASSERT_OK(qv_collection_delete_ids(c, del, nd, &deleted, NULL));
  for (size_t i = 0; i < n; i += 2) { /* searches while the rebuild may be running */
    ASSERT_OK(qv_collection_search(c, x + i * dim, 1, &p, &r, NULL));
    for (size_t j = 0; j < r.count; j++) ASSERT(r.items[j].id.num % 2 == 1 || r.items[j].id.num == 1);
    qv_records_free(&r);
  }
  collection_index_wait(c);
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.tombstones, 0);
  ASSERT_EQ(s.indexed, s.points);
  for (size_t i = 0; i < n; i += 2) {
    ASSERT_OK(qv_collection_search(c, x + i * dim, 1, &p, &r, NULL));
    ASSERT_EQ(r.count, 20);
    for (size_t j = 0; j < r.count; j++) ASSERT(r.items[j].id.num % 2 == 1 || r.items[j].id.num == 1);
    qv_records_free(&r);
  }
  free(del);
  free(x);
  qv_db_close(db);
}

static char group_text[100][16];
static const char *group_payload(size_t i) {
  if (!group_text[i % 100][0]) snprintf(group_text[i % 100], 16, "{\"g\":%zu}", i % 100);
  return group_text[i % 100];
}

static void same_results(const qv_records *a, const qv_records *b) {
  ASSERT_EQ(a->count, b->count);
  for (size_t j = 0; j < a->count; j++) {
    ASSERT_U64_EQ(a->items[j].id.num, b->items[j].id.num);
    ASSERT_NEAR(a->items[j].score, b->items[j].score, 1e-5);
  }
}

TEST(filtered_search_returns_what_a_filtered_exact_scan_returns) {
  size_t n = 6000, dim = 16;
  float *x = cluster_points(n, dim, 5);
  qv_db *db;
  /* 10 KB = 160 vectors of 16 floats: a filter matching fewer is scanned exactly */
  qv_collection_config cfg = {.size = (uint32_t)dim, .distance = QV_DIST_DOT,
                              .hnsw = {.full_scan_threshold = 10}};
  qv_collection *c = make_filled_collection(&db, fresh_dir("cindex"), &cfg, x, dim, n, group_payload);
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.indexed, n);
  const char *texts[] = {
      "{\"must\":[{\"key\":\"g\",\"match\":{\"value\":7}}]}",            /* 60 matches: exact */
      "{\"must\":[{\"key\":\"g\",\"match\":{\"any\":[1,2,3,4,5]}}]}",   /* 300: graph, k = 100 */
      "{\"must\":[{\"key\":\"g\",\"range\":{\"lt\":50}}]}",             /* 3000: graph */
      "{\"must\":[{\"key\":\"g\",\"match\":{\"value\":1000}}]}",        /* none */
  };
  for (int t = 0; t < 4; t++) {
    qv_filter *f;
    ASSERT_OK(qv_filter_parse(&f, texts[t], strlen(texts[t]), NULL));
    for (int qi = 0; qi < 20; qi++) {
      const float *q = x + (rnd() % n) * dim;
      qv_search_params pa = {.limit = 100, .filter = f, .hnsw_ef = 16, .with_payload = 1};
      qv_search_params pe = pa;
      pe.exact = 1;
      qv_records a, e;
      ASSERT_OK(qv_collection_search(c, q, 1, &pa, &a, NULL));
      ASSERT_OK(qv_collection_search(c, q, 1, &pe, &e, NULL));
      /* never fewer than k when k points match */
      ASSERT_EQ(a.count, e.count);
      ASSERT_EQ(e.count, t == 0 ? 60 : t == 3 ? 0 : 100);
      if (t == 0) same_results(&a, &e); /* selective: the exact scan itself */
      for (size_t j = 0; j < a.count; j++) {
        int g = atoi(strchr(a.items[j].payload, ':') + 1);
        ASSERT(t == 0 ? g == 7 : t == 1 ? g >= 1 && g <= 5 : g < 50);
      }
      /* the graph path finds the best matches too, scored exactly */
      if (t == 1 || t == 2) {
        size_t found = 0;
        for (size_t j = 0; j < 10; j++) found += has_id(&a, e.items[j].id.num);
        ASSERT(found >= 9);
      }
      qv_records_free(&a);
      qv_records_free(&e);
    }
    qv_filter_free(f);
  }
  free(x);
  qv_db_close(db);
}

TEST(small_collections_stay_exact_and_an_empty_graph_is_harmless) {
  size_t dim = 4;
  qv_db *db;
  qv_collection_config cfg = {.size = (uint32_t)dim, .distance = QV_DIST_COSINE};
  qv_collection *c = make_collection(&db, fresh_dir("cindex"), &cfg);
  ASSERT(c);
  ASSERT_OK(collection_index_build(c, NULL)); /* over no points */
  float q[4] = {1, 0, 0, 0};
  qv_records r;
  qv_search_params p = {.limit = 3};
  ASSERT_OK(qv_collection_search(c, q, 1, &p, &r, NULL));
  ASSERT_EQ(r.count, 0);
  qv_records_free(&r);
  float v[4] = {0, 1, 0, 0};
  qv_point pt = {num(5), v, NULL};
  ASSERT_OK(qv_collection_upsert(c, &pt, 1, NULL));
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.indexed, 1);
  ASSERT_EQ(s.indexing, 0);
  ASSERT_OK(qv_collection_search(c, q, 1, &p, &r, NULL));
  ASSERT_EQ(r.count, 1);
  ASSERT_U64_EQ(r.items[0].id.num, 5);
  qv_records_free(&r);
  qv_db_close(db);
}

static void search_all(qv_collection *c, const float *q, size_t nq, size_t dim, qv_records *out) {
  qv_search_params p = {.limit = 10};
  for (size_t i = 0; i < nq; i++)
    if (qv_collection_search(c, q + i * dim, 1, &p, &out[i], NULL)) abort();
}

static void flip_byte(const char *path, long at) {
  FILE *f = fopen(path, "r+b");
  if (!f) abort();
  fseek(f, at, SEEK_SET);
  int ch = fgetc(f);
  fseek(f, at, SEEK_SET);
  fputc(ch ^ 0x40, f);
  fclose(f);
}

TEST(a_saved_index_reloads_to_identical_results_and_a_damaged_one_is_rebuilt) {
  size_t n = 4000, dim = 16, nq = 50;
  float *x = cluster_points(n, dim, 6), *q = cluster_points(nq, dim, 7);
  char *dir = fresh_dir("cindex"), path[512];
  snprintf(path, sizeof path, "%s/collections/t/graph.hnsw", dir);
  qv_db *db;
  qv_collection_config cfg = {.size = (uint32_t)dim, .distance = QV_DIST_EUCLID,
                              .hnsw = {.m = 8, .full_scan_threshold = 1}};
  qv_collection *c = make_filled_collection(&db, dir, &cfg, x, dim, n, NULL);
  qv_point_id gone[3] = {num(5), num(6), num(7)};
  ASSERT_OK(qv_collection_delete_ids(c, gone, 3, NULL, NULL)); /* tombstones are saved too */
  qv_records before[50], after[50];
  search_all(c, q, nq, dim, before);
  ASSERT_EQ(collection_index_loaded(c), 0);
  qv_db_close(db); /* saves */
  struct stat sb;
  ASSERT_EQ(stat(path, &sb), 0);

  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  ASSERT_EQ(collection_index_loaded(c), 1);
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.indexed, n - 3);
  ASSERT_EQ(s.tombstones, 3);
  search_all(c, q, nq, dim, after);
  for (size_t i = 0; i < nq; i++) {
    ASSERT_EQ(before[i].count, after[i].count);
    for (size_t j = 0; j < before[i].count; j++) {
      ASSERT_U64_EQ(before[i].items[j].id.num, after[i].items[j].id.num);
      ASSERT_EQ(before[i].items[j].score, after[i].items[j].score);
    }
    qv_records_free(&after[i]);
  }
  /* a write after the load, then a crash (the child process dies without closing, as
   * kill -9 would leave it): the file names an older version, so the next open rebuilds
   * rather than trusting it, and the acknowledged point is there */
  qv_db_close(db);
  pid_t pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    qv_db *cdb;
    qv_collection *cc;
    float v[16] = {0};
    qv_point pt = {num(n + 1), v, NULL};
    if (qv_db_open(&cdb, dir, NULL) || qv_collection_open(cdb, "t", &cc, NULL) ||
        qv_collection_upsert(cc, &pt, 1, NULL))
      _exit(1);
    _exit(0);
  }
  int wst;
  ASSERT_EQ(waitpid(pid, &wst, 0), pid);
  ASSERT(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  ASSERT_EQ(collection_index_loaded(c), 0);
  collection_index_wait(c);
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.points, n - 2);
  ASSERT_EQ(s.indexed, n - 2);
  qv_point_id extra = num(n + 1);
  ASSERT_OK(qv_collection_delete_ids(c, &extra, 1, NULL, NULL));
  qv_db_close(db); /* saves the rebuilt graph, at the version after this delete */
  /* a payload change leaves the points, and so the graph file, as they were: the file is
   * not rewritten at close (a rewrite renames a new file in: a new inode) and still loads */
  struct stat before_edit, after_edit;
  ASSERT_EQ(stat(path, &before_edit), 0);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  ASSERT_EQ(collection_index_loaded(c), 1);
  uint64_t v0 = qv_collection_version(c);
  qv_point_id one = num(1);
  ASSERT_OK(qv_collection_set_payload(c, &one, 1, NULL, "{\"k\":1}", QV_PAYLOAD_SET, NULL, NULL));
  ASSERT(qv_collection_version(c) > v0); /* what the BM25 index and the query cache follow */
  qv_db_close(db);
  ASSERT_EQ(stat(path, &after_edit), 0);
  ASSERT_EQ(after_edit.st_ino, before_edit.st_ino);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  ASSERT_EQ(collection_index_loaded(c), 1);
  qv_db_close(db);

  /* a flipped byte anywhere is caught by the checksums; the graph is rebuilt from the
   * points and answers as before */
  long offsets[3] = {10, (long)sb.st_size / 2, (long)sb.st_size - 30};
  for (int t = 0; t < 3; t++) {
    flip_byte(path, offsets[t]);
    ASSERT_OK(qv_db_open(&db, dir, NULL));
    ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
    ASSERT_EQ(collection_index_loaded(c), 0);
    collection_index_wait(c);
    qv_collection_stats_get(c, &s);
    ASSERT_EQ(s.points, n - 3);
    ASSERT_EQ(s.indexed, n - 3);
    qv_search_params pe = {.limit = 10, .exact = 1};
    size_t found = 0;
    for (size_t i = 0; i < nq; i++) {
      qv_records e;
      search_all(c, q + i * dim, 1, dim, &after[i]);
      ASSERT_OK(qv_collection_search(c, q + i * dim, 1, &pe, &e, NULL));
      for (size_t j = 0; j < e.count; j++) found += has_id(&after[i], e.items[j].id.num);
      qv_records_free(&e);
      qv_records_free(&after[i]);
    }
    ASSERT(found >= nq * 10 * 95 / 100);
    qv_db_close(db); /* saves the rebuilt graph */
    ASSERT_OK(qv_db_open(&db, dir, NULL));
    ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
    ASSERT_EQ(collection_index_loaded(c), 1);
    qv_db_close(db);
  }
  /* a truncated file and a leftover temporary file from a crash mid-save */
  ASSERT_EQ(truncate(path, sb.st_size / 3), 0);
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp-abcdef", path);
  FILE *f = fopen(tmp, "w");
  fputs("half a graph", f);
  fclose(f);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  ASSERT_EQ(collection_index_loaded(c), 0);
  ASSERT(stat(tmp, &sb) != 0);
  collection_index_wait(c);
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.indexed, n - 3);
  qv_db_close(db);
  for (size_t i = 0; i < nq; i++) qv_records_free(&before[i]);
  free(x);
  free(q);
}

TEST(int8_quantization_keeps_recall_saves_memory_and_follows_config_changes) {
  size_t n = 8000, dim = 64, nq = 100;
  float *x = cluster_points(n, dim, 8), *q = cluster_points(nq, dim, 9);
  char *dir = fresh_dir("cindex");
  qv_db *db;
  qv_collection_config cfg = {.size = (uint32_t)dim, .distance = QV_DIST_COSINE,
                              .hnsw = {.full_scan_threshold = 100},
                              .quant = {.type = QV_QUANT_INT8, .always_ram = 1}};
  qv_collection *c = make_filled_collection(&db, dir, &cfg, x, dim, n, NULL);
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.indexed, n);
  ASSERT_EQ(s.quantized_bytes, n * (dim + 4));
  ASSERT(s.quantized_bytes * 3 < s.vector_bytes);
  size_t found = 0;
  for (int pass = 0; pass < 2; pass++) {
    found = 0;
    for (size_t i = 0; i < nq; i++) {
      qv_records a, e;
      qv_search_params pa = {.limit = 10}, pe = {.limit = 10, .exact = 1};
      ASSERT_OK(qv_collection_search(c, q + i * dim, 1, &pa, &a, NULL));
      ASSERT_OK(qv_collection_search(c, q + i * dim, 1, &pe, &e, NULL));
      for (size_t j = 0; j < e.count; j++) found += has_id(&a, e.items[j].id.num);
      /* scores are the float32 ones: the same point scores the same on both paths */
      for (size_t j = 0; j < a.count; j++)
        for (size_t g = 0; g < e.count; g++)
          if (a.items[j].id.num == e.items[g].id.num) ASSERT_NEAR(a.items[j].score, e.items[g].score, 1e-6);
      qv_records_free(&a);
      qv_records_free(&e);
    }
    fprintf(stderr, "  int8 recall@10 with rescoring = %.4f\n", (double)found / (double)(nq * 10));
    ASSERT(found >= nq * 10 * 95 / 100);
    if (pass == 0) { /* the quantized graph reloads as it was */
      qv_db_close(db);
      ASSERT_OK(qv_db_open(&db, dir, NULL));
      ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
      ASSERT_EQ(collection_index_loaded(c), 1);
      qv_collection_stats_get(c, &s);
      ASSERT_EQ(s.quantized_bytes, n * (dim + 4));
    }
  }
  /* turning quantization off rebuilds the graph on floats */
  qv_collection_config now;
  qv_collection_config_get(c, &now);
  now.quant = (qv_quant_config){0};
  ASSERT_OK(qv_collection_update_config(c, &now, NULL));
  collection_index_wait(c);
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.quantized_bytes, 0);
  ASSERT_EQ(s.indexed, n);
  qv_db_close(db);
  free(x);
  free(q);
}

TEST_MAIN(T(recall_at_10_is_at_least_0_95_on_20k_points_at_default_params),
          T(deleted_and_replaced_points_never_come_back),
          T(filtered_search_returns_what_a_filtered_exact_scan_returns),
          T(small_collections_stay_exact_and_an_empty_graph_is_harmless),
          T(a_saved_index_reloads_to_identical_results_and_a_damaged_one_is_rebuilt),
          T(int8_quantization_keeps_recall_saves_memory_and_follows_config_changes))
