/* Metrics: the Prometheus text exposition after known updates, from many threads. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver.h"
#include "server/metrics.h"
#include "server/server.h"
#include "test.h"

static int has_line(const char *text, const char *line) {
  size_t n = strlen(line);
  for (const char *p = text; (p = strstr(p, line)); p++)
    if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0')) return 1;
  return 0;
}

TEST(empty_render_has_gauges_and_help) {
  metrics *m = metrics_new();
  ASSERT(m);
  size_t len = 0;
  char *t = metrics_render(m, NULL, &len);
  ASSERT(t);
  ASSERT_EQ(len, strlen(t));
  ASSERT(has_line(t, "# TYPE quiver_requests_total counter"));
  ASSERT(has_line(t, "# TYPE quiver_request_duration_seconds histogram"));
  ASSERT(has_line(t, "# TYPE quiver_batch_size histogram"));
  ASSERT(has_line(t, "quiver_batch_size_count 0"));
  ASSERT(has_line(t, "quiver_backend_info{backend=\"cpu\"} 1"));
  ASSERT(strstr(t, "\nprocess_resident_memory_bytes "));
  free(t);
  metrics_free(m);
}

TEST(requests_stages_batches_and_counters) {
  metrics *m = metrics_new();
  metrics_request(m, "openai_embeddings", 200, 0.003);
  metrics_request(m, "openai_embeddings", 200, 0.2);
  metrics_request(m, "openai_embeddings", 413, 0.0001);
  metrics_request(m, "tei_embed", 200, 20.0);
  metrics_stage(m, "embed", 0.004);
  metrics_batch(m, 3, 30);
  metrics_batch(m, 1, 10);
  metrics_count(m, "query_cache_hits", 2);
  metrics_count(m, "query_cache_hits", 1);
  metrics_count(m, "weird name-x", 1);
  char *t = metrics_render(m, NULL, NULL);
  ASSERT(t);
  ASSERT(has_line(t, "quiver_requests_total{route=\"openai_embeddings\",status=\"200\"} 2"));
  ASSERT(has_line(t, "quiver_requests_total{route=\"openai_embeddings\",status=\"413\"} 1"));
  ASSERT(has_line(t, "quiver_requests_total{route=\"tei_embed\",status=\"200\"} 1"));
  /* cumulative buckets: 0.0001 <= 0.0005; 0.003 <= 0.005; 0.2 <= 0.25 */
  ASSERT(has_line(t, "quiver_request_duration_seconds_bucket{route=\"openai_embeddings\",le=\"0.0005\"} 1"));
  ASSERT(has_line(t, "quiver_request_duration_seconds_bucket{route=\"openai_embeddings\",le=\"0.005\"} 2"));
  ASSERT(has_line(t, "quiver_request_duration_seconds_bucket{route=\"openai_embeddings\",le=\"0.1\"} 2"));
  ASSERT(has_line(t, "quiver_request_duration_seconds_bucket{route=\"openai_embeddings\",le=\"0.25\"} 3"));
  ASSERT(has_line(t, "quiver_request_duration_seconds_bucket{route=\"openai_embeddings\",le=\"+Inf\"} 3"));
  ASSERT(has_line(t, "quiver_request_duration_seconds_count{route=\"openai_embeddings\"} 3"));
  ASSERT(has_line(t, "quiver_request_duration_seconds_bucket{route=\"tei_embed\",le=\"10\"} 0"));
  ASSERT(has_line(t, "quiver_request_duration_seconds_bucket{route=\"tei_embed\",le=\"+Inf\"} 1"));
  ASSERT(has_line(t, "quiver_request_duration_seconds_sum{route=\"tei_embed\"} 20"));
  ASSERT(has_line(t, "quiver_stage_duration_seconds_count{stage=\"embed\"} 1"));
  ASSERT(has_line(t, "quiver_batch_size_bucket{le=\"1\"} 1"));
  ASSERT(has_line(t, "quiver_batch_size_bucket{le=\"4\"} 2"));
  ASSERT(has_line(t, "quiver_batch_size_sum 4"));
  ASSERT(has_line(t, "quiver_batch_size_count 2"));
  ASSERT(has_line(t, "quiver_batch_tokens_sum 40"));
  ASSERT(has_line(t, "# TYPE quiver_query_cache_hits_total counter"));
  ASSERT(has_line(t, "quiver_query_cache_hits_total 3"));
  ASSERT(has_line(t, "quiver_weird_name_x_total 1"));
  free(t);
  metrics_free(m);
}

TEST(label_values_are_escaped) {
  metrics *m = metrics_new();
  metrics_request(m, "a\"b\\c\nd", 500, 0.01);
  char *t = metrics_render(m, NULL, NULL);
  ASSERT(has_line(t, "quiver_requests_total{route=\"a\\\"b\\\\c\\nd\",status=\"500\"} 1"));
  free(t);
  metrics_free(m);
}

TEST(full_route_table_counts_under_other) {
  metrics *m = metrics_new();
  char name[32];
  for (int i = 0; i < 200; i++) {
    snprintf(name, sizeof name, "r%d", i);
    metrics_request(m, name, 200, 0.001);
  }
  char *t = metrics_render(m, NULL, NULL);
  ASSERT(has_line(t, "quiver_requests_total{route=\"r0\",status=\"200\"} 1"));
  ASSERT(has_line(t, "quiver_requests_total{route=\"r62\",status=\"200\"} 1"));
  ASSERT(!strstr(t, "route=\"r63\""));
  ASSERT(has_line(t, "quiver_requests_total{route=\"other\",status=\"200\"} 137"));
  free(t);
  metrics_free(m);
}

static void *hammer(void *arg) {
  metrics *m = arg;
  for (int i = 0; i < 10000; i++) {
    metrics_request(m, i % 2 ? "a" : "b", 200, 0.001);
    metrics_count(m, "hits", 1);
    metrics_batch(m, 2, 8);
  }
  return NULL;
}

TEST(concurrent_updates_are_all_counted) {
  metrics *m = metrics_new();
  pthread_t th[8];
  for (int i = 0; i < 8; i++) pthread_create(&th[i], NULL, hammer, m);
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
  char *t = metrics_render(m, NULL, NULL);
  ASSERT(has_line(t, "quiver_requests_total{route=\"a\",status=\"200\"} 40000"));
  ASSERT(has_line(t, "quiver_requests_total{route=\"b\",status=\"200\"} 40000"));
  ASSERT(has_line(t, "quiver_hits_total 80000"));
  ASSERT(has_line(t, "quiver_batch_size_count 80000"));
  free(t);
  metrics_free(m);
}

TEST(collection_points_gauge) {
  char dir[] = "/tmp/qv-test-metrics-XXXXXX";
  ASSERT(mkdtemp(dir));
  server s;
  memset(&s, 0, sizeof s);
  ASSERT_OK(qv_db_open(&s.db, dir, NULL));
  qv_collection_config cfg = {.size = 2, .distance = QV_DIST_DOT};
  ASSERT_OK(qv_collection_create(s.db, "docs", &cfg, NULL));
  qv_collection *c;
  ASSERT_OK(qv_collection_open(s.db, "docs", &c, NULL));
  float v[4] = {1, 0, 0, 1};
  qv_point p[2] = {{.id = {.kind = QV_ID_NUM, .num = 1}, .vector = v},
                   {.id = {.kind = QV_ID_NUM, .num = 2}, .vector = v + 2}};
  ASSERT_OK(qv_collection_upsert(c, p, 2, NULL));
  metrics *m = metrics_new();
  char *t = metrics_render(m, &s, NULL);
  ASSERT(has_line(t, "# TYPE quiver_collection_points gauge"));
  ASSERT(has_line(t, "quiver_collection_points{collection=\"docs\"} 2"));
  free(t);
  metrics_free(m);
  qv_db_close(s.db);
}

TEST_MAIN(T(empty_render_has_gauges_and_help), T(requests_stages_batches_and_counters), T(label_values_are_escaped),
          T(full_route_table_counts_under_other), T(concurrent_updates_are_all_counted), T(collection_points_gauge))
