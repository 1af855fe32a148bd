/* Concurrent writes and searches on one indexed collection. Built normally it checks the
 * results; built with -DQUIVER_TSAN=ON (make tsan-test) ThreadSanitizer also checks that
 * the graph inserts after each commit, the tombstones, the background rebuild and the
 * searches running beside them (graph and exact) share no unsynchronized memory. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "quiver.h"
#include "store/collection.h"
#include "fixtures.h"
#include "test.h"

#define DIM 16
#define BATCH 50
#define BATCHES 40

static void vec_of(uint64_t id, float *v) {
  uint64_t s = id * 0x9E3779B97F4A7C15ULL + 1;
  for (int d = 0; d < DIM; d++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    v[d] = (float)((s >> 40) & 0xffff) / 65536.0f - 0.5f;
  }
}

typedef struct shared {
  qv_collection *c;
  int done;            /* atomic */
  int failures;        /* atomic */
  uint64_t committed;  /* atomic: ids below this were acknowledged */
} shared;

static void *writer(void *arg) {
  shared *sh = arg;
  qv_point pts[BATCH];
  float vecs[BATCH][DIM];
  for (uint64_t b = 0; b < BATCHES; b++) {
    for (int i = 0; i < BATCH; i++) {
      uint64_t id = b * BATCH + (uint64_t)i;
      vec_of(id, vecs[i]);
      pts[i] = (qv_point){num(id), vecs[i], NULL};
    }
    if (qv_collection_upsert(sh->c, pts, BATCH, NULL)) __atomic_add_fetch(&sh->failures, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&sh->committed, (b + 1) * BATCH, __ATOMIC_RELEASE);
    if (b % 4 == 3) { /* delete a few, enough over time to trigger background rebuilds */
      qv_point_id del[10];
      for (int i = 0; i < 10; i++) del[i] = num(b * BATCH + (uint64_t)i * 3);
      size_t n;
      if (qv_collection_delete_ids(sh->c, del, 10, &n, NULL)) __atomic_add_fetch(&sh->failures, 1, __ATOMIC_RELAXED);
    }
  }
  __atomic_store_n(&sh->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

static void *reader(void *arg) {
  shared *sh = arg;
  float q[DIM];
  uint64_t i = 0;
  while (!__atomic_load_n(&sh->done, __ATOMIC_ACQUIRE)) {
    uint64_t upto = __atomic_load_n(&sh->committed, __ATOMIC_ACQUIRE);
    vec_of(upto ? (i * 7919) % upto : 0, q);
    qv_records r;
    /* every other search exact: its table of row pointers is rebuilt after each write */
    qv_search_params p = {.limit = 5, .with_payload = 1, .exact = (int)(i % 2)};
    if (qv_collection_search(sh->c, q, 1, &p, &r, NULL)) __atomic_add_fetch(&sh->failures, 1, __ATOMIC_RELAXED);
    else qv_records_free(&r);
    qv_collection_stats s;
    qv_collection_stats_get(sh->c, &s);
    i++;
  }
  return NULL;
}

static void run_together(qv_quant_type quant) {
  qv_db *db;
  qv_collection_config cfg = {.size = DIM, .distance = QV_DIST_COSINE, .hnsw = {.full_scan_threshold = 4},
                              .quant = {.type = quant}};
  qv_collection *c = make_collection(&db, fresh_dir("cthreads"), &cfg);
  ASSERT(c);
  shared sh = {c, 0, 0, 0};
  pthread_t w, r[2];
  ASSERT_EQ(pthread_create(&w, NULL, writer, &sh), 0);
  for (int i = 0; i < 2; i++) ASSERT_EQ(pthread_create(&r[i], NULL, reader, &sh), 0);
  pthread_join(w, NULL);
  for (int i = 0; i < 2; i++) pthread_join(r[i], NULL);
  ASSERT_EQ(sh.failures, 0);
  collection_index_wait(c);
  /* every live point finds itself first; no deleted one comes back */
  size_t live = 0;
  for (uint64_t id = 0; id < BATCH * BATCHES; id++) {
    uint64_t b = id / BATCH, i = id % BATCH;
    int deleted = b % 4 == 3 && i % 3 == 0 && i / 3 < 10;
    float q[DIM];
    vec_of(id, q);
    qv_records res;
    qv_search_params p = {.limit = 3, .exact = (int)(id % 2)};
    ASSERT_OK(qv_collection_search(c, q, 1, &p, &res, NULL));
    ASSERT(res.count == 3);
    if (!deleted) {
      ASSERT_U64_EQ(res.items[0].id.num, id);
      live++;
    }
    for (size_t j = 0; j < res.count; j++) {
      uint64_t got = res.items[j].id.num, gb = got / BATCH, gi = got % BATCH;
      ASSERT(!(gb % 4 == 3 && gi % 3 == 0 && gi / 3 < 10));
    }
    qv_records_free(&res);
  }
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.points, live);
  ASSERT_EQ(s.indexed, live);
  if (quant) ASSERT(s.quantized_bytes > 0);
  qv_db_close(db);
}

TEST(inserts_deletes_and_searches_run_together) { run_together(QV_QUANT_NONE); }
TEST(the_same_on_int8_codes) { run_together(QV_QUANT_INT8); }

TEST_MAIN(T(inserts_deletes_and_searches_run_together), T(the_same_on_int8_codes))
