/* Collections search on the GPU (src/store/collection.c, "device path") with the test
 * device of fake_gpu.h: exact searches go to the device and answer what the CPU path
 * answers, writes after the first device search are seen by the next one, a failing
 * device falls back to the CPU (and opens the breaker), batches are cut at
 * gpu.batch_size, and what does not suit the device stays on the CPU. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "compute/device.h"
#include "quiver.h"
#include "store/collection.h"
#include "fixtures.h"
#include "test.h"
#include "fake_gpu.h"

static void rm_dir(const char *dir) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) abort();
}

static unsigned seed_ = 1;
static float *rand_rows(size_t n, size_t dim) {
  float *v = malloc(n * dim * sizeof *v);
  for (size_t i = 0; i < n * dim; i++) {
    seed_ = seed_ * 1103515245u + 12345u;
    v[i] = (float)((seed_ >> 8) & 0xffff) / 65536.0f - 0.5f;
  }
  return v;
}

static double clock_now;
static double test_clock(void *arg) {
  (void)arg;
  return clock_now;
}

/* Puts the process on the test device (or, dev 0, on the CPU) with batch_size. The
 * fake's ranges survive the switch, so a copy made before stays valid. */
static void use_device(int dev, int batch_size, int fallback) {
  qv_gpu_config cfg;
  qv_gpu_config_default(&cfg);
  cfg.batch_size = batch_size;
  cfg.fallback_to_cpu = fallback;
  device_set_backend_for_test(dev ? &fake_gpu.be : NULL, &cfg, test_clock, NULL);
}

static char payload_buf[64];
static const char *payload_of(size_t i) {
  snprintf(payload_buf, sizeof payload_buf, "{\"g\": %zu}", i % 3);
  return payload_buf;
}

static void upsert(qv_collection *c, const float *x, size_t dim, size_t from, size_t to, uint64_t id0) {
  for (size_t i = from; i < to; i++) {
    qv_point p = {num(id0 + i), x + i * dim, payload_of(i)};
    ASSERT_OK(qv_collection_upsert(c, &p, 1, NULL));
  }
}

static qv_collection *make(qv_db **db, const char *dir, size_t dim, qv_distance dist, uint32_t full_scan_kb) {
  qv_collection_config cfg = {.size = (uint32_t)dim, .distance = dist};
  cfg.hnsw.full_scan_threshold = full_scan_kb;
  qv_collection *c = make_collection(db, dir, &cfg);
  ASSERT(c);
  return c;
}

/* Searches on the device and on the CPU and checks both answer the same; returns how
 * many device calls the device search made. */
static int same_on_both(qv_collection *c, const float *q, size_t nq, const qv_search_params *p) {
  qv_records *a = calloc(nq, sizeof *a), *b = calloc(nq, sizeof *b);
  int before = fake_gpu.searches;
  use_device(1, 64, 1);
  ASSERT_OK(qv_collection_search(c, q, nq, p, b, NULL));
  int calls = fake_gpu.searches - before;
  use_device(0, 64, 1);
  ASSERT_OK(qv_collection_search(c, q, nq, p, a, NULL));
  ASSERT_EQ(fake_gpu.searches, before + calls);
  for (size_t i = 0; i < nq; i++) {
    ASSERT_EQ(b[i].count, a[i].count);
    for (size_t j = 0; j < a[i].count; j++) {
      ASSERT_U64_EQ(b[i].items[j].id.num, a[i].items[j].id.num);
      ASSERT_NEAR(b[i].items[j].score, a[i].items[j].score, 1e-5);
    }
    qv_records_free(&a[i]);
    qv_records_free(&b[i]);
  }
  free(a);
  free(b);
  return calls;
}

TEST(exact_searches_run_on_the_device_and_answer_as_the_cpu) {
  qv_distance dists[] = {QV_DIST_COSINE, QV_DIST_DOT, QV_DIST_EUCLID};
  size_t dim = 20, n = 300; /* a stride of 32 floats: the copy is packed, the rows are not */
  float *x = rand_rows(n, dim), *q = rand_rows(7, dim);
  qv_filter *f;
  const char *fj = "{\"must\": [{\"key\": \"g\", \"match\": {\"value\": 1}}]}";
  ASSERT_OK(qv_filter_parse(&f, fj, strlen(fj), NULL));
  for (size_t d = 0; d < 3; d++) {
    fake_gpu_reset();
    char *dir = fresh_dir("cgpu");
    qv_db *db;
    qv_collection *c = make(&db, dir, dim, dists[d], 0);
    upsert(c, x, dim, 0, n, 0);
    qv_search_params p = {.limit = 10};
    ASSERT_EQ(same_on_both(c, q, 1, &p), 1);
    ASSERT_EQ(same_on_both(c, q, 7, &p), 1);
    p.filter = f;
    ASSERT_EQ(same_on_both(c, q, 7, &p), 1);
    p = (qv_search_params){.limit = 5, .offset = 3, .exact = 1, .with_payload = 1};
    ASSERT_EQ(same_on_both(c, q, 3, &p), 1);
    p = (qv_search_params){.limit = 1000}; /* more than the collection holds */
    ASSERT_EQ(same_on_both(c, q, 2, &p), 1);
    qv_db_close(db);
    rm_dir(dir);
  }
  qv_filter_free(f);
  free(x);
  free(q);
}

TEST(writes_after_the_first_device_search_are_seen_by_the_next) {
  fake_gpu_reset();
  size_t dim = 16, n = 400;
  float *x = rand_rows(n, dim), *y = rand_rows(n, dim), *q = rand_rows(6, dim);
  char *dir = fresh_dir("cgpu");
  qv_db *db;
  qv_collection *c = make(&db, dir, dim, QV_DIST_DOT, 0);
  upsert(c, x, dim, 0, 100, 0);
  qv_search_params p = {.limit = 8};
  ASSERT_EQ(same_on_both(c, q, 6, &p), 1); /* the copy is made here */
  upsert(c, x, dim, 100, n, 0);            /* appended past the copy's room */
  ASSERT_EQ(same_on_both(c, q, 6, &p), 1);
  upsert(c, y, dim, 50, 80, 0);            /* replaced in place */
  ASSERT_EQ(same_on_both(c, q, 6, &p), 1);
  /* deletes move the last rows into the holes and shrink the collection */
  qv_point_id del[40];
  for (size_t i = 0; i < 40; i++) del[i] = num(i * 7);
  size_t deleted = 0;
  ASSERT_OK(qv_collection_delete_ids(c, del, 40, &deleted, NULL));
  ASSERT_EQ(deleted, 40);
  ASSERT_EQ(same_on_both(c, q, 6, &p), 1);
  /* and a point written after that is found by its own vector */
  upsert(c, y, dim, 0, 1, 1000);
  use_device(1, 64, 1);
  qv_records r = {0};
  ASSERT_OK(qv_collection_search(c, y, 1, &(qv_search_params){.limit = 1}, &r, NULL));
  ASSERT_EQ(r.count, 1);
  ASSERT_U64_EQ(r.items[0].id.num, 1000);
  qv_records_free(&r);
  ASSERT_EQ(same_on_both(c, q, 6, &p), 1);
  qv_db_close(db);
  rm_dir(dir);
  free(x);
  free(y);
  free(q);
}

TEST(a_failing_device_falls_back_and_the_breaker_opens_after_three_failures) {
  fake_gpu_reset();
  clock_now = 0;
  size_t dim = 8, n = 200;
  float *x = rand_rows(n, dim), *q = rand_rows(3, dim);
  char *dir = fresh_dir("cgpu");
  qv_db *db;
  qv_collection *c = make(&db, dir, dim, QV_DIST_EUCLID, 0);
  upsert(c, x, dim, 0, n, 0);
  qv_search_params p = {.limit = 5};
  qv_records cpu[3] = {{0}};
  use_device(0, 64, 1);
  ASSERT_OK(qv_collection_search(c, q, 3, &p, cpu, NULL));
  use_device(1, 64, 1);
  fake_gpu.fail = 1;
  for (int round = 0; round < 4; round++) {
    qv_records r[3] = {{0}};
    ASSERT_OK(qv_collection_search(c, q, 3, &p, r, NULL));
    for (int i = 0; i < 3; i++) {
      ASSERT_EQ(r[i].count, cpu[i].count);
      for (size_t j = 0; j < r[i].count; j++) ASSERT_U64_EQ(r[i].items[j].id.num, cpu[i].items[j].id.num);
      qv_records_free(&r[i]);
    }
  }
  ASSERT_EQ(fake_gpu.searches, 3); /* the fourth found the breaker open */
  qv_gpu_stats s;
  qv_gpu_stats_get(&s);
  ASSERT_EQ(s.breaker_state, 1);
  ASSERT_EQ(s.fallbacks_total, 4);
  ASSERT_EQ(s.gpu_failures_total, 3);
  ASSERT_STR_EQ(s.backend, "cpu");
  /* after the recovery period the half-open trial runs on the device and closes it */
  fake_gpu.fail = 0;
  clock_now = 300;
  qv_records r[3] = {{0}};
  ASSERT_OK(qv_collection_search(c, q, 3, &p, r, NULL));
  ASSERT_EQ(fake_gpu.searches, 4);
  qv_gpu_stats_get(&s);
  ASSERT_EQ(s.breaker_state, 0);
  ASSERT_EQ(s.gpu_runs_total, 1);
  for (int i = 0; i < 3; i++) {
    ASSERT_U64_EQ(r[i].items[0].id.num, cpu[i].items[0].id.num);
    qv_records_free(&r[i]);
    qv_records_free(&cpu[i]);
  }
  /* with gpu.fallback_to_cpu off a device failure is the client's error */
  use_device(1, 64, 0);
  fake_gpu.fail = 1;
  qv_error err = {0};
  ASSERT_STATUS(qv_collection_search(c, q, 1, &p, r, &err), QV_EDEVICE);
  qv_db_close(db);
  rm_dir(dir);
  free(x);
  free(q);
}

TEST(gpu_batch_size_cuts_query_batches_into_device_units) {
  fake_gpu_reset();
  size_t dim = 12, n = 150, nq = 23;
  float *x = rand_rows(n, dim), *q = rand_rows(nq, dim);
  char *dir = fresh_dir("cgpu");
  qv_db *db;
  qv_collection *c = make(&db, dir, dim, QV_DIST_COSINE, 0);
  upsert(c, x, dim, 0, n, 0);
  use_device(1, 5, 1);
  qv_records r[23] = {{0}};
  ASSERT_OK(qv_collection_search(c, q, nq, &(qv_search_params){.limit = 4}, r, NULL));
  ASSERT_EQ(fake_gpu.searches, 5); /* 5 + 5 + 5 + 5 + 3 */
  ASSERT_EQ(fake_gpu.max_nq, 5);
  for (size_t i = 0; i < nq; i++) {
    ASSERT_EQ(r[i].count, 4);
    qv_records_free(&r[i]);
  }
  /* a unit that fails half-way through a batch: the rest of the batch runs on the CPU */
  fake_gpu.searches = 0;
  qv_records cpu[23] = {{0}};
  use_device(0, 5, 1);
  ASSERT_OK(qv_collection_search(c, q, nq, &(qv_search_params){.limit = 4}, cpu, NULL));
  use_device(1, 5, 1);
  ASSERT_OK(qv_collection_search(c, q, 5, &(qv_search_params){.limit = 4}, r, NULL)); /* one good unit */
  for (size_t i = 0; i < 5; i++) qv_records_free(&r[i]);
  fake_gpu.fail = 1;
  ASSERT_OK(qv_collection_search(c, q, nq, &(qv_search_params){.limit = 4}, r, NULL));
  ASSERT_EQ(fake_gpu.searches, 2);
  for (size_t i = 0; i < nq; i++) {
    ASSERT_EQ(r[i].count, 4);
    for (size_t j = 0; j < 4; j++) ASSERT_U64_EQ(r[i].items[j].id.num, cpu[i].items[j].id.num);
    qv_records_free(&r[i]);
    qv_records_free(&cpu[i]);
  }
  use_device(0, 64, 1);
  qv_db_close(db);
  rm_dir(dir);
  free(x);
  free(q);
}

TEST(indexed_collections_send_large_batches_and_exact_queries_to_the_device) {
  fake_gpu_reset();
  size_t dim = 16, n = 2000; /* 125 KB of vectors, over a 64 KB threshold: a graph */
  float *x = rand_rows(n, dim), *q = rand_rows(16, dim);
  char *dir = fresh_dir("cgpu");
  qv_db *db;
  use_device(0, 64, 1);
  qv_collection *c = make(&db, dir, dim, QV_DIST_COSINE, 64);
  ASSERT_OK(upsert_range(c, x, dim, 0, n, NULL));
  ASSERT_OK(collection_index_build(c, NULL));
  use_device(1, 64, 1);
  qv_records r[16] = {{0}};
  qv_search_params p = {.limit = 10};
  ASSERT_OK(qv_collection_search(c, q, 15, &p, r, NULL)); /* a small batch: the graph */
  for (size_t i = 0; i < 15; i++) qv_records_free(&r[i]);
  ASSERT_EQ(fake_gpu.searches, 0);
  ASSERT_EQ(same_on_both(c, q, 16, &(qv_search_params){.limit = 10, .exact = 1}), 1);
  /* 16 queries: answered exactly on the device (the CPU's graph may differ, so compare
   * with the CPU's exact answer) */
  qv_records e[16] = {{0}};
  use_device(0, 64, 1);
  ASSERT_OK(qv_collection_search(c, q, 16, &(qv_search_params){.limit = 10, .exact = 1}, e, NULL));
  use_device(1, 64, 1);
  ASSERT_OK(qv_collection_search(c, q, 16, &p, r, NULL));
  ASSERT_EQ(fake_gpu.searches, 2);
  for (size_t i = 0; i < 16; i++) {
    ASSERT_EQ(r[i].count, 10);
    for (size_t j = 0; j < 10; j++) ASSERT_U64_EQ(r[i].items[j].id.num, e[i].items[j].id.num);
    qv_records_free(&r[i]);
    qv_records_free(&e[i]);
  }
  use_device(0, 64, 1);
  qv_db_close(db);
  rm_dir(dir);
  free(x);
  free(q);
}

TEST(what_does_not_suit_the_device_stays_on_the_cpu) {
  fake_gpu_reset();
  size_t dim = 8, n = 300;
  float *x = rand_rows(n, dim), *q = rand_rows(2, dim);
  /* Manhattan has no product form */
  char *dir = fresh_dir("cgpu");
  qv_db *db;
  qv_collection *c = make(&db, dir, dim, QV_DIST_MANHATTAN, 0);
  upsert(c, x, dim, 0, n, 0);
  ASSERT_EQ(same_on_both(c, q, 2, &(qv_search_params){.limit = 5}), 0);
  qv_db_close(db);
  rm_dir(dir);
  /* a collection larger than the device holds: no copy, CPU answers, and no retry until
   * it shrinks */
  fake_gpu.max_bytes = 100 * dim * sizeof(float);
  dir = fresh_dir("cgpu");
  c = make(&db, dir, dim, QV_DIST_DOT, 0);
  upsert(c, x, dim, 0, n, 0);
  ASSERT_EQ(same_on_both(c, q, 2, &(qv_search_params){.limit = 5}), 0);
  ASSERT_EQ(same_on_both(c, q, 2, &(qv_search_params){.limit = 5}), 0);
  qv_point_id del[250];
  for (size_t i = 0; i < 250; i++) del[i] = num(i);
  ASSERT_OK(qv_collection_delete_ids(c, del, 250, NULL, NULL));
  ASSERT_EQ(same_on_both(c, q, 2, &(qv_search_params){.limit = 5}), 1);
  qv_db_close(db);
  rm_dir(dir);
  free(x);
  free(q);
  fake_gpu_reset();
}

/* Searches on the device while a writer replaces and deletes points: every answer is
 * sorted, and each hit's score is its returned vector's score against the query (the
 * vector comes from the collection's rows, the score from the device copy: a copy out of
 * step with the rows would show here). */
typedef struct race {
  qv_collection *c;
  size_t dim;
  int bad;
  unsigned seed;
} race;

static float race_rand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return (float)((*s >> 8) & 0xffff) / 65536.0f - 0.5f;
}

static void *race_writer(void *arg) {
  race *r = arg;
  float *v = malloc(10 * r->dim * sizeof *v);
  for (int it = 0; it < 150; it++) {
    qv_point p[10];
    for (int i = 0; i < 10; i++) {
      for (size_t d = 0; d < r->dim; d++) v[i * r->dim + d] = race_rand(&r->seed);
      p[i] = (qv_point){num(r->seed % 400), v + i * r->dim, NULL};
    }
    if (qv_collection_upsert(r->c, p, 10, NULL)) r->bad++;
    qv_point_id del[3] = {num(r->seed % 400), num((r->seed >> 9) % 400), num((r->seed >> 17) % 400)};
    if (qv_collection_delete_ids(r->c, del, 3, NULL, NULL)) r->bad++;
  }
  free(v);
  return NULL;
}

static void *race_searcher(void *arg) {
  race *r = arg;
  float q[2 * 16];
  for (int it = 0; it < 150; it++) {
    for (size_t d = 0; d < 2 * r->dim; d++) q[d] = race_rand(&r->seed);
    qv_records out[2] = {{0}};
    if (qv_collection_search(r->c, q, 2, &(qv_search_params){.limit = 5, .with_vector = 1}, out, NULL)) {
      r->bad++;
      continue;
    }
    for (int i = 0; i < 2; i++) {
      for (size_t j = 0; j < out[i].count; j++) {
        const qv_record *h = &out[i].items[j];
        double dot = 0;
        for (size_t d = 0; d < r->dim; d++) dot += (double)q[i * r->dim + d] * h->vector[d];
        if (fabs(dot - h->score) > 1e-4) r->bad++;
        if (j && h->score > out[i].items[j - 1].score) r->bad++;
      }
      qv_records_free(&out[i]);
    }
  }
  return NULL;
}

TEST(device_searches_stay_in_step_with_concurrent_writes) {
  fake_gpu_reset();
  size_t dim = 16;
  float *x = rand_rows(300, dim);
  char *dir = fresh_dir("cgpu");
  qv_db *db;
  use_device(1, 64, 1);
  qv_collection *c = make(&db, dir, dim, QV_DIST_DOT, 0);
  upsert(c, x, dim, 0, 300, 0);
  race w = {c, dim, 0, 11}, s1 = {c, dim, 0, 22}, s2 = {c, dim, 0, 33};
  pthread_t tw, t1, t2;
  ASSERT_EQ(pthread_create(&tw, NULL, race_writer, &w), 0);
  ASSERT_EQ(pthread_create(&t1, NULL, race_searcher, &s1), 0);
  ASSERT_EQ(pthread_create(&t2, NULL, race_searcher, &s2), 0);
  pthread_join(tw, NULL);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  ASSERT_EQ(w.bad + s1.bad + s2.bad, 0);
  ASSERT(fake_gpu.searches >= 300);
  use_device(0, 64, 1);
  qv_db_close(db);
  rm_dir(dir);
  free(x);
}

TEST_MAIN(T(exact_searches_run_on_the_device_and_answer_as_the_cpu),
          T(writes_after_the_first_device_search_are_seen_by_the_next),
          T(a_failing_device_falls_back_and_the_breaker_opens_after_three_failures),
          T(gpu_batch_size_cuts_query_batches_into_device_units),
          T(indexed_collections_send_large_batches_and_exact_queries_to_the_device),
          T(what_does_not_suit_the_device_stays_on_the_cpu),
          T(device_searches_stay_in_step_with_concurrent_writes))
