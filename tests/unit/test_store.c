/* Collections through the public API: boundaries, persistence, atomicity, corruption. */
#define _GNU_SOURCE
#include <errno.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "quiver.h"
#include "store/idmap.h"
#include "store/record.h"
#include "test.h"

static char *fresh_dir(void) {
  static char buf[256];
  snprintf(buf, sizeof buf, "/tmp/qv-test-store-XXXXXX");
  if (!mkdtemp(buf)) abort();
  return buf;
}

static qv_point_id num(uint64_t n) { return (qv_point_id){.kind = QV_ID_NUM, .num = n}; }

static qv_collection *make(qv_db **db, const char *dir, uint32_t size, qv_distance d) {
  qv_collection *c = NULL;
  qv_collection_config cfg = {.size = size, .distance = d};
  if (qv_db_open(db, dir, NULL) || qv_collection_create(*db, "t", &cfg, NULL) ||
      qv_collection_open(*db, "t", &c, NULL))
    return NULL;
  return c;
}

TEST(empty_collection_search_count_scroll) {
  qv_db *db;
  qv_collection *c = make(&db, fresh_dir(), 4, QV_DIST_DOT);
  ASSERT(c);
  float q[4] = {1, 0, 0, 0};
  qv_records r;
  qv_search_params p = {.limit = 5};
  ASSERT_OK(qv_collection_search(c, q, 1, &p, &r, NULL));
  ASSERT_EQ(r.count, 0);
  qv_records_free(&r);
  size_t n = 99;
  ASSERT_OK(qv_collection_count(c, NULL, &n, NULL));
  ASSERT_EQ(n, 0);
  qv_point_id next;
  int has_next = 1;
  ASSERT_OK(qv_collection_scroll(c, NULL, 10, NULL, 1, 1, &r, &next, &has_next, NULL));
  ASSERT_EQ(r.count, 0);
  ASSERT_EQ(has_next, 0);
  qv_records_free(&r);
  qv_db_close(db);
}

TEST(dimension_one_and_4096_round_trip_after_reopen) {
  uint32_t sizes[] = {1, 4096};
  for (int s = 0; s < 2; s++) {
    char *dir = fresh_dir();
    qv_db *db;
    uint32_t dim = sizes[s];
    qv_collection *c = make(&db, dir, dim, QV_DIST_EUCLID);
    ASSERT(c);
    float *v = malloc(dim * 3 * sizeof(float));
    for (uint32_t i = 0; i < dim * 3; i++) v[i] = (float)i * 0.25f - 7.0f;
    qv_point pts[3] = {{num(1), v, "{\"a\":1}"}, {num(2), v + dim, NULL}, {num(3), v + 2 * dim, "{}"}};
    ASSERT_OK(qv_collection_upsert(c, pts, 3, NULL));
    qv_db_close(db);
    ASSERT_OK(qv_db_open(&db, dir, NULL));
    ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
    qv_records r;
    qv_point_id ids[3] = {num(3), num(1), num(2)};
    ASSERT_OK(qv_collection_get(c, ids, 3, 1, 1, &r, NULL));
    ASSERT_EQ(r.count, 3);
    ASSERT_U64_EQ(r.items[0].id.num, 3);
    ASSERT_EQ(memcmp(r.items[0].vector, v + 2 * dim, dim * sizeof(float)), 0);
    ASSERT_EQ(memcmp(r.items[1].vector, v, dim * sizeof(float)), 0);
    ASSERT_STR_EQ(r.items[1].payload, "{\"a\":1}");
    ASSERT_STR_EQ(r.items[2].payload, "{}");
    qv_records_free(&r);
    qv_search_params p = {.limit = 1};
    ASSERT_OK(qv_collection_search(c, v + dim, 1, &p, &r, NULL));
    ASSERT_EQ(r.count, 1);
    ASSERT_U64_EQ(r.items[0].id.num, 2);
    ASSERT_NEAR(r.items[0].score, 0, 1e-6);
    qv_records_free(&r);
    free(v);
    qv_db_close(db);
  }
}

TEST(duplicate_ids_in_one_batch_last_wins) {
  qv_db *db;
  qv_collection *c = make(&db, fresh_dir(), 2, QV_DIST_DOT);
  float a[2] = {1, 2}, b[2] = {3, 4};
  qv_point pts[2] = {{num(7), a, "{\"v\":1}"}, {num(7), b, "{\"v\":2}"}};
  ASSERT_OK(qv_collection_upsert(c, pts, 2, NULL));
  ASSERT_EQ(qv_collection_count_all(c), 1);
  qv_records r;
  qv_point_id id = num(7);
  ASSERT_OK(qv_collection_get(c, &id, 1, 1, 1, &r, NULL));
  ASSERT_NEAR(r.items[0].vector[0], 3, 0);
  ASSERT_STR_EQ(r.items[0].payload, "{\"v\":2}");
  qv_records_free(&r);
  qv_db_close(db);
}

TEST(a_bad_point_rejects_the_whole_batch) {
  qv_db *db;
  qv_collection *c = make(&db, fresh_dir(), 2, QV_DIST_COSINE);
  float good[2] = {1, 2}, nan2[2] = {1, NAN}, zero[2] = {0, 0};
  qv_point pts[3] = {{num(1), good, NULL}, {num(2), good, "{\"x\":"}, {num(3), good, NULL}};
  qv_error err = {0};
  ASSERT_STATUS(qv_collection_upsert(c, pts, 3, &err), QV_EJSON);
  ASSERT(strstr(err.msg, "point 2") != NULL);
  pts[1] = (qv_point){num(2), nan2, NULL};
  ASSERT_STATUS(qv_collection_upsert(c, pts, 3, &err), QV_ENONFINITE);
  pts[1] = (qv_point){num(2), good, "[1,2]"};
  ASSERT_STATUS(qv_collection_upsert(c, pts, 3, &err), QV_EJSON);
  ASSERT(strstr(err.msg, "object") != NULL);
  ASSERT_EQ(qv_collection_count_all(c), 0);
  /* a zero vector under Cosine stays zero rather than becoming NaN */
  pts[0] = (qv_point){num(9), zero, NULL};
  ASSERT_OK(qv_collection_upsert(c, pts, 1, NULL));
  qv_records r;
  qv_point_id id = num(9);
  ASSERT_OK(qv_collection_get(c, &id, 1, 0, 1, &r, NULL));
  ASSERT_NEAR(r.items[0].vector[0], 0, 0);
  qv_records_free(&r);
  qv_db_close(db);
}

TEST(create_refuses_bad_configs_and_names) {
  qv_db *db;
  ASSERT_OK(qv_db_open(&db, fresh_dir(), NULL));
  qv_collection_config cfg = {.size = 0, .distance = QV_DIST_DOT};
  ASSERT_STATUS(qv_collection_create(db, "a", &cfg, NULL), QV_ERANGE);
  cfg.size = QV_MAX_VECTOR_SIZE + 1;
  ASSERT_STATUS(qv_collection_create(db, "a", &cfg, NULL), QV_ERANGE);
  cfg.size = 4;
  ASSERT_STATUS(qv_collection_create(db, "../a", &cfg, NULL), QV_ENAME);
  ASSERT_STATUS(qv_collection_create(db, "", &cfg, NULL), QV_ENAME);
  ASSERT_STATUS(qv_collection_create(db, "a/b", &cfg, NULL), QV_ENAME);
  ASSERT_OK(qv_collection_create(db, "a", &cfg, NULL));
  ASSERT_STATUS(qv_collection_create(db, "a", &cfg, NULL), QV_EXISTS);
  qv_collection *c;
  ASSERT_STATUS(qv_collection_open(db, "nope", &c, NULL), QV_NOTFOUND);
  ASSERT_STATUS(qv_collection_delete(db, "nope", NULL), QV_NOTFOUND);
  ASSERT_OK(qv_collection_delete(db, "a", NULL));
  ASSERT_STATUS(qv_collection_open(db, "a", &c, NULL), QV_NOTFOUND);
  qv_db_close(db);
}

TEST(second_open_of_a_data_directory_is_refused) {
  char *dir = fresh_dir();
  qv_db *a, *b;
  ASSERT_OK(qv_db_open(&a, dir, NULL));
  ASSERT_STATUS(qv_db_open(&b, dir, NULL), QV_ELOCKED);
  qv_db_close(a);
  ASSERT_OK(qv_db_open(&b, dir, NULL));
  qv_db_close(b);
}

TEST(leftover_tmp_and_trash_directories_are_swept) {
  char *dir = fresh_dir();
  qv_db *db;
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  qv_db_close(db);
  char path[512];
  snprintf(path, sizeof path, "%s/collections/.tmp-x-1", dir);
  ASSERT_EQ(mkdir(path, 0755), 0);
  snprintf(path, sizeof path, "%s/collections/.trash-y-1", dir);
  ASSERT_EQ(mkdir(path, 0755), 0);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_EQ(access(path, F_OK), -1);
  char **names;
  size_t n;
  ASSERT_OK(qv_collection_list(db, &names, &n, NULL));
  ASSERT_EQ(n, 0);
  free(names);
  qv_db_close(db);
}

/* A record damaged on disk is detected by its checksum and never loaded as data. */
TEST(corrupt_record_is_skipped_at_open) {
  char *dir = fresh_dir();
  qv_db *db;
  qv_collection *c = make(&db, dir, 3, QV_DIST_DOT);
  float v[6] = {1, 2, 3, 4, 5, 6};
  qv_point pts[2] = {{num(1), v, "{\"k\":1}"}, {num(2), v + 3, "{\"k\":2}"}};
  ASSERT_OK(qv_collection_upsert(c, pts, 2, NULL));
  qv_db_close(db);

  char env_dir[512];
  snprintf(env_dir, sizeof env_dir, "%s/collections/t", dir);
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  ASSERT_EQ(mdb_env_create(&env), 0);
  mdb_env_set_maxdbs(env, 4);
  mdb_env_set_mapsize(env, (size_t)1 << 40);
  ASSERT_EQ(mdb_env_open(env, env_dir, 0, 0644), 0);
  ASSERT_EQ(mdb_txn_begin(env, NULL, 0, &txn), 0);
  ASSERT_EQ(mdb_dbi_open(txn, "points", 0, &dbi), 0);
  uint8_t key[RECORD_KEY_MAX];
  qv_point_id id2 = num(2);
  MDB_val k = {record_key_encode(key, &id2), key}, val;
  ASSERT_EQ(mdb_get(txn, dbi, &k, &val), 0);
  uint8_t *copy = malloc(val.mv_size);
  memcpy(copy, val.mv_data, val.mv_size);
  copy[RECORD_HEADER + 5] ^= 0x40; /* flip one bit of the vector */
  MDB_val nv = {val.mv_size, copy};
  ASSERT_EQ(mdb_put(txn, dbi, &k, &nv, 0), 0);
  ASSERT_EQ(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
  free(copy);

  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  ASSERT_EQ(qv_collection_count_all(c), 1);
  qv_records r;
  qv_point_id ids[2] = {num(1), num(2)};
  ASSERT_OK(qv_collection_get(c, ids, 2, 1, 0, &r, NULL));
  ASSERT_EQ(r.count, 1);
  ASSERT_U64_EQ(r.items[0].id.num, 1);
  qv_records_free(&r);
  qv_db_close(db);
}

TEST(record_decode_rejects_every_truncation) {
  float v[5] = {1, 2, 3, 4, 5};
  const char *payload = "{\"a\":\"b\"}";
  size_t len = record_size(5, strlen(payload));
  uint8_t *buf = malloc(len);
  record_encode(buf, v, 5, payload, strlen(payload));
  record_view rv;
  ASSERT_OK(record_decode(&rv, buf, len));
  ASSERT_EQ(rv.dim, 5);
  ASSERT_EQ(rv.payload_len, strlen(payload));
  for (size_t cut = 0; cut < len; cut++) ASSERT_STATUS(record_decode(&rv, buf, cut), QV_ECORRUPT);
  free(buf);
}

TEST(id_keys_sort_in_id_order) {
  uint8_t a[RECORD_KEY_MAX], b[RECORD_KEY_MAX];
  qv_point_id x = num(255), y = num(256), u = {.kind = QV_ID_UUID};
  size_t la = record_key_encode(a, &x), lb = record_key_encode(b, &y);
  ASSERT_EQ(la, lb);
  ASSERT(memcmp(a, b, la) < 0);
  lb = record_key_encode(b, &u);
  ASSERT(memcmp(a, b, 1) < 0); /* integers before UUIDs */
  qv_point_id back;
  ASSERT_OK(record_key_decode(&back, b, lb));
  ASSERT(qv_point_id_equal(&back, &u));
  ASSERT_STATUS(record_key_decode(&back, b, 3), QV_ECORRUPT);
}

TEST(point_id_parse_and_format) {
  qv_point_id id;
  char buf[40];
  ASSERT_OK(qv_point_id_parse(&id, "18446744073709551615"));
  ASSERT_U64_EQ(id.num, UINT64_MAX);
  ASSERT_STATUS(qv_point_id_parse(&id, "18446744073709551616"), QV_ERANGE);
  ASSERT_STATUS(qv_point_id_parse(&id, "-1"), QV_EINVAL);
  ASSERT_STATUS(qv_point_id_parse(&id, ""), QV_EINVAL);
  ASSERT_OK(qv_point_id_parse(&id, "550E8400-e29b-41d4-a716-446655440000"));
  qv_point_id_format(&id, buf);
  ASSERT_STR_EQ(buf, "550e8400-e29b-41d4-a716-446655440000");
  ASSERT_STATUS(qv_point_id_parse(&id, "550e8400-e29b-41d4-a716-44665544000g"), QV_EINVAL);
  ASSERT_STATUS(qv_point_id_parse(&id, "550e8400xe29b-41d4-a716-446655440000"), QV_EINVAL);
}

/* Key k's id: numeric for even k, a UUID built from k for odd k. */
static qv_point_id key_id(int k) {
  if (k % 2 == 0) return num((uint64_t)k * 1000003u);
  qv_point_id id = {.kind = QV_ID_UUID};
  for (int b = 0; b < 16; b++) id.uuid[b] = (uint8_t)((k * 2654435761u) >> (b % 4 * 8)) ^ (uint8_t)b;
  return id;
}

/* The id map against a plain array under heavy churn, so backward-shift deletion is hit.
 * Rows are step numbers; the row table says which id each row was given (the map reads
 * it), and a row's entry is rewritten only once the map has moved its id elsewhere. Half
 * the keys are UUIDs, so both id kinds probe and compare. */
TEST(idmap_matches_reference_under_churn) {
  enum { N = 5000, STEPS = 200000 };
  qv_point_id *rows = calloc(STEPS, sizeof *rows);
  ASSERT(rows != NULL);
  idmap m;
  idmap_init(&m, &rows);
  static int64_t ref[N];
  for (int i = 0; i < N; i++) ref[i] = -1;
  uint64_t s = 12345;
  for (int step = 0; step < STEPS; step++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    int key = (int)((s >> 33) % N);
    qv_point_id id = key_id(key);
    if ((s >> 20) & 1) {
      ASSERT_OK(idmap_reserve(&m, 1));
      rows[step] = id;
      idmap_put(&m, &id, (uint32_t)step);
      ref[key] = step;
    } else {
      idmap_del(&m, &id);
      ref[key] = -1;
    }
  }
  size_t live = 0;
  for (int i = 0; i < N; i++) {
    qv_point_id id = key_id(i);
    ASSERT_EQ(idmap_get(&m, &id), ref[i]);
    live += ref[i] >= 0;
  }
  ASSERT_EQ(m.count, live);
  qv_point_id absent = num(7); /* no key maps to 7 */
  ASSERT_EQ(idmap_get(&m, &absent), -1);
  idmap_free(&m);
  free(rows);
}

TEST(statuses_have_messages) {
  ASSERT_STR_EQ(qv_strerror(QV_OK), "success");
  ASSERT_STR_EQ(qv_strerror(QV_ELOCKED), "data directory is locked by another process");
  ASSERT_STR_EQ(qv_strerror(ENOENT), strerror(ENOENT));
  ASSERT_STR_EQ(qv_strerror(-9999), "unknown error");
}

TEST(config_fields_persist_and_defaults_fill_in) {
  char *dir = fresh_dir();
  qv_db *db;
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  qv_collection_config cfg = {.size = 8, .distance = QV_DIST_COSINE,
                              .hnsw = {.m = 32, .full_scan_threshold = 5},
                              .quant = {.type = QV_QUANT_INT8, .quantile = 0.9f, .always_ram = 1}};
  strcpy(cfg.vector_name, "text");
  strcpy(cfg.model, "all-MiniLM-L6-v2");
  ASSERT_OK(qv_collection_create(db, "t", &cfg, NULL));
  qv_collection_config bad = {.size = 8, .hnsw = {.m = 1}};
  ASSERT_STATUS(qv_collection_create(db, "u", &bad, NULL), QV_ERANGE);
  bad = (qv_collection_config){.size = 8, .quant = {.type = QV_QUANT_INT8, .quantile = 0.2f}};
  ASSERT_STATUS(qv_collection_create(db, "u", &bad, NULL), QV_ERANGE);
  qv_db_close(db);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  qv_collection *c;
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  qv_collection_config got;
  qv_collection_config_get(c, &got);
  ASSERT_EQ(got.size, 8);
  ASSERT_EQ(got.hnsw.m, 32);
  ASSERT_EQ(got.hnsw.ef_construct, 100);
  ASSERT_EQ(got.hnsw.full_scan_threshold, 5);
  ASSERT_EQ(got.quant.type, QV_QUANT_INT8);
  ASSERT_NEAR(got.quant.quantile, 0.9, 1e-6);
  ASSERT_EQ(got.quant.always_ram, 1);
  ASSERT_STR_EQ(got.vector_name, "text");
  ASSERT_STR_EQ(got.model, "all-MiniLM-L6-v2");

  /* hnsw and quantization may change; size, distance and vector name may not */
  got.hnsw.ef_construct = 200;
  got.quant = (qv_quant_config){0};
  ASSERT_OK(qv_collection_update_config(c, &got, NULL));
  qv_collection_config other = got;
  other.size = 9;
  ASSERT_STATUS(qv_collection_update_config(c, &other, NULL), QV_EINVAL);
  other = got;
  strcpy(other.vector_name, "image");
  ASSERT_STATUS(qv_collection_update_config(c, &other, NULL), QV_EINVAL);
  qv_db_close(db);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  qv_collection_config_get(c, &got);
  ASSERT_EQ(got.hnsw.ef_construct, 200);
  ASSERT_EQ(got.hnsw.m, 32);
  ASSERT_EQ(got.quant.type, QV_QUANT_NONE);
  qv_db_close(db);
}

TEST(a_format_1_config_without_new_fields_opens_with_defaults) {
  char *dir = fresh_dir();
  qv_db *db;
  qv_collection *c = make(&db, dir, 4, QV_DIST_DOT);
  ASSERT(c);
  qv_db_close(db);
  /* rewrite the stored configuration as the first release wrote it */
  char path[512];
  snprintf(path, sizeof path, "%s/collections/t", dir);
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi meta;
  ASSERT_EQ(mdb_env_create(&env), 0);
  ASSERT_EQ(mdb_env_set_maxdbs(env, 4), 0);
  ASSERT_EQ(mdb_env_open(env, path, 0, 0644), 0);
  ASSERT_EQ(mdb_txn_begin(env, NULL, 0, &txn), 0);
  ASSERT_EQ(mdb_dbi_open(txn, "meta", 0, &meta), 0);
  const char *old = "{\"format\":1,\"name\":\"t\",\"size\":4,\"distance\":\"Dot\"}";
  MDB_val k = {6, "config"}, v = {strlen(old), (void *)old};
  ASSERT_EQ(mdb_put(txn, meta, &k, &v, 0), 0);
  ASSERT_EQ(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  qv_collection_config got;
  qv_collection_config_get(c, &got);
  ASSERT_EQ(got.size, 4);
  ASSERT_EQ(got.distance, QV_DIST_DOT);
  ASSERT_EQ(got.hnsw.m, 16);
  ASSERT_EQ(got.hnsw.ef_construct, 100);
  ASSERT_EQ(got.hnsw.full_scan_threshold, 10000);
  ASSERT_EQ(got.quant.type, QV_QUANT_NONE);
  ASSERT_STR_EQ(got.vector_name, "");
  qv_db_close(db);
}

TEST(version_grows_with_each_write_and_survives_reopen) {
  char *dir = fresh_dir();
  qv_db *db;
  qv_collection *c = make(&db, dir, 2, QV_DIST_DOT);
  ASSERT(c);
  ASSERT_U64_EQ(qv_collection_version(c), 0);
  float v[2] = {1, 2};
  qv_point p = {num(1), v, "{\"a\":1}"};
  ASSERT_OK(qv_collection_upsert(c, &p, 1, NULL));
  ASSERT_U64_EQ(qv_collection_version(c), 1);
  size_t n;
  qv_point_id missing = num(7);
  ASSERT_OK(qv_collection_delete_ids(c, &missing, 1, &n, NULL)); /* nothing written */
  ASSERT_U64_EQ(qv_collection_version(c), 1);
  ASSERT_OK(qv_collection_set_payload(c, &p.id, 1, NULL, "{\"b\":2}", QV_PAYLOAD_SET, &n, NULL));
  ASSERT_U64_EQ(qv_collection_version(c), 2);
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  ASSERT_EQ(s.points, 1);
  ASSERT(s.vector_bytes >= 2 * sizeof(float));
  qv_db_close(db);
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  ASSERT_U64_EQ(qv_collection_version(c), 2);
  qv_db_close(db);
}

static char *payload_of(qv_collection *c, uint64_t id) {
  static char buf[256];
  qv_point_id pid = num(id);
  qv_records r;
  if (qv_collection_get(c, &pid, 1, 1, 0, &r, NULL) || r.count != 1) return NULL;
  snprintf(buf, sizeof buf, "%s", r.items[0].payload);
  qv_records_free(&r);
  return buf;
}

TEST(set_overwrite_and_delete_payload_by_ids_and_filter) {
  char *dir = fresh_dir();
  qv_db *db;
  qv_collection *c = make(&db, dir, 2, QV_DIST_DOT);
  ASSERT(c);
  float v[2] = {1, 2};
  qv_point pts[3] = {{num(1), v, "{\"a\":1,\"k\":\"x\"}"}, {num(2), v, "{\"a\":2,\"k\":\"y\"}"}, {num(3), v, NULL}};
  ASSERT_OK(qv_collection_upsert(c, pts, 3, NULL));
  size_t n = 99;
  qv_point_id ids[3] = {num(1), num(1), num(9)}; /* a repeat and a missing id */
  ASSERT_OK(qv_collection_set_payload(c, ids, 3, NULL, "{\"b\":[1,2],\"a\":5}", QV_PAYLOAD_SET, &n, NULL));
  ASSERT_EQ(n, 1);
  ASSERT_STR_EQ(payload_of(c, 1), "{\"a\":5,\"k\":\"x\",\"b\":[1,2]}");
  ASSERT_OK(qv_collection_set_payload(c, &pts[2].id, 1, NULL, "{\"z\":true}", QV_PAYLOAD_OVERWRITE, &n, NULL));
  ASSERT_STR_EQ(payload_of(c, 3), "{\"z\":true}");
  ASSERT_STATUS(qv_collection_set_payload(c, ids, 1, NULL, "[1]", QV_PAYLOAD_SET, &n, NULL), QV_EJSON);
  ASSERT_STATUS(qv_collection_set_payload(c, ids, 1, NULL, "{", QV_PAYLOAD_SET, &n, NULL), QV_EJSON);

  qv_filter *f;
  const char *ft = "{\"must\":[{\"key\":\"k\",\"match\":{\"value\":\"y\"}}]}";
  ASSERT_OK(qv_filter_parse(&f, ft, strlen(ft), NULL));
  ASSERT_OK(qv_collection_set_payload(c, NULL, 0, f, "{\"k\":\"w\"}", QV_PAYLOAD_SET, &n, NULL));
  ASSERT_EQ(n, 1);
  ASSERT_STR_EQ(payload_of(c, 2), "{\"a\":2,\"k\":\"w\"}");
  qv_filter_free(f);

  const char *keys[2] = {"a", "nope"};
  ASSERT_OK(qv_collection_delete_payload(c, NULL, 0, NULL, keys, 2, &n, NULL)); /* every point */
  ASSERT_EQ(n, 2); /* point 3 has no "a" */
  ASSERT_STR_EQ(payload_of(c, 1), "{\"k\":\"x\",\"b\":[1,2]}");
  ASSERT_OK(qv_collection_set_payload(c, NULL, 0, NULL, "{}", QV_PAYLOAD_OVERWRITE, &n, NULL)); /* clear */
  ASSERT_EQ(n, 3);
  ASSERT_OK(qv_collection_set_payload(c, &pts[0].id, 1, NULL, "{\"after\":1}", QV_PAYLOAD_SET, &n, NULL));
  qv_db_close(db);
  /* durable: the changes are in storage, not only in memory */
  ASSERT_OK(qv_db_open(&db, dir, NULL));
  ASSERT_OK(qv_collection_open(db, "t", &c, NULL));
  ASSERT_STR_EQ(payload_of(c, 1), "{\"after\":1}");
  ASSERT_STR_EQ(payload_of(c, 2), "{}");
  ASSERT_STR_EQ(payload_of(c, 3), "{}");
  qv_db_close(db);
}

TEST_MAIN(T(empty_collection_search_count_scroll), T(dimension_one_and_4096_round_trip_after_reopen),
          T(duplicate_ids_in_one_batch_last_wins), T(a_bad_point_rejects_the_whole_batch),
          T(create_refuses_bad_configs_and_names), T(second_open_of_a_data_directory_is_refused),
          T(leftover_tmp_and_trash_directories_are_swept), T(corrupt_record_is_skipped_at_open),
          T(record_decode_rejects_every_truncation), T(id_keys_sort_in_id_order),
          T(point_id_parse_and_format), T(idmap_matches_reference_under_churn), T(statuses_have_messages),
          T(config_fields_persist_and_defaults_fill_in), T(a_format_1_config_without_new_fields_opens_with_defaults),
          T(version_grows_with_each_write_and_survives_reopen), T(set_overwrite_and_delete_payload_by_ids_and_filter))
