/* Quiver's own routes: health checks, Prometheus metrics, telemetry and the OpenAPI
 * document. The document is built from the route tables themselves, so it describes
 * every route any surface registers, with the request shapes in openapi_body_schema. */
#include <stdlib.h>
#include <string.h>

#include "server/embed_api.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/server.h"

static void healthz(http_req *r, http_resp *w) {
  (void)r;
  http_reply_text(w, 200, "text/plain", "healthz check passed", 20);
}

static void livez(http_req *r, http_resp *w) {
  (void)r;
  http_reply_text(w, 200, "text/plain", "livez check passed", 18);
}

static void readyz(http_req *r, http_resp *w) {
  if (__atomic_load_n(&r->srv->stopping, __ATOMIC_ACQUIRE))
    http_reply_error(w, 503, "the server is shutting down");
  else if (__atomic_load_n(&r->srv->ready, __ATOMIC_ACQUIRE))
    http_reply_text(w, 200, "text/plain", "all shards are ready", 20);
  else
    http_reply_error(w, 503, "the data directory or the models are still loading");
}

static void metrics_route(http_req *r, http_resp *w) {
  size_t len = 0;
  char *text = metrics_render(r->srv->metrics, r->srv, &len);
  if (!text) {
    http_reply_error(w, 500, "out of memory rendering metrics");
    return;
  }
  free(w->body);
  w->status = 200;
  w->content_type = "text/plain; version=0.0.4";
  w->body = text;
  w->body_len = len;
}

static void telemetry(http_req *r, http_resp *w) {
  server *s = r->srv;
  double t0 = server_now();
  char **names = NULL;
  size_t n = 0;
  json_t *cols = json_array();
  size_t points = 0;
  if (qv_collection_list(s->db, &names, &n, NULL) == QV_OK) {
    for (size_t i = 0; i < n; i++) {
      qv_collection *c;
      size_t cnt = 0;
      if (qv_collection_open(s->db, names[i], &c, NULL) == QV_OK) cnt = qv_collection_count_all(c);
      points += cnt;
      json_array_append_new(cols, json_pack("{s:s,s:I}", "name", names[i], "points", (json_int_t)cnt));
      free(names[i]);
    }
    free(names);
  }
  json_t *models = json_array();
  qv_model *ms[2] = {s->model, s->reranker};
  for (int i = 0; i < 2; i++) {
    if (!ms[i]) continue;
    qv_model_info mi;
    qv_model_info_get(ms[i], &mi);
    json_array_append_new(models, json_pack("{s:s,s:s,s:i}", "name", mi.name, "kind",
                                            mi.kind == QV_MODEL_RERANKER ? "reranker" : "embedding",
                                            "dims", mi.dims));
  }
  json_t *res = json_pack("{s:s,s:s,s:f,s:{s:I,s:I,s:o},s:o,s:s}", "id", "quiver", "version", QV_VERSION,
                          "uptime_s", server_now() - s->started, "collections", "number_of_collections",
                          (json_int_t)n, "points", (json_int_t)points, "collections", cols, "models", models,
                          "gpu", s->cfg.gpu);
  http_reply_json(w, 200, json_pack("{s:o,s:s,s:f}", "result", res, "status", "ok", "time", server_now() - t0));
}

/* ---- OpenAPI ---------------------------------------------------------------------------- */

/* Request-body schemas for the routes that take one, by route name; a route not listed
 * takes any JSON object. Kept loose where the API is (Qdrant's bodies have many optional
 * fields), tight on the fields whose type is certain. */
static const struct { const char *route, *schema; } body_schemas[] = {
    {"qdrant_create_collection",
     "{\"type\":\"object\",\"properties\":{\"vectors\":{\"type\":\"object\"},"
     "\"hnsw_config\":{\"type\":\"object\"},\"quantization_config\":{\"type\":[\"object\",\"null\"]}}}"},
    {"qdrant_upsert",
     "{\"type\":\"object\",\"properties\":{\"points\":{\"type\":\"array\",\"items\":{\"type\":\"object\","
     "\"required\":[\"id\",\"vector\"],\"properties\":{\"id\":{\"type\":[\"integer\",\"string\"]},"
     "\"vector\":{\"type\":[\"array\",\"object\"]},\"payload\":{\"type\":[\"object\",\"null\"]}}}},"
     "\"batch\":{\"type\":\"object\"}}}"},
    {"qdrant_query",
     "{\"type\":\"object\",\"properties\":{\"query\":{},\"prefetch\":{},\"using\":{\"type\":\"string\"},"
     "\"filter\":{\"type\":\"object\"},\"params\":{\"type\":\"object\"},\"limit\":{\"type\":\"integer\"},"
     "\"offset\":{\"type\":\"integer\"},\"with_payload\":{},\"with_vector\":{},"
     "\"score_threshold\":{\"type\":\"number\"}}}"},
    {"qdrant_search",
     "{\"type\":\"object\",\"required\":[\"vector\"],\"properties\":{\"vector\":{},\"filter\":{\"type\":\"object\"},"
     "\"limit\":{\"type\":\"integer\"},\"offset\":{\"type\":\"integer\"},\"with_payload\":{},\"with_vector\":{},"
     "\"score_threshold\":{\"type\":\"number\"}}}"},
    {"qdrant_scroll",
     "{\"type\":\"object\",\"properties\":{\"offset\":{\"type\":[\"integer\",\"string\",\"null\"]},"
     "\"limit\":{\"type\":\"integer\"},\"filter\":{\"type\":[\"object\",\"null\"]},\"with_payload\":{},\"with_vector\":{}}}"},
    {"qdrant_count", "{\"type\":\"object\",\"properties\":{\"filter\":{\"type\":[\"object\",\"null\"]},\"exact\":{\"type\":\"boolean\"}}}"},
    {"qdrant_get_points",
     "{\"type\":\"object\",\"required\":[\"ids\"],\"properties\":{\"ids\":{\"type\":\"array\"},\"with_payload\":{},\"with_vector\":{}}}"},
    {"qdrant_delete_points",
     "{\"type\":\"object\",\"properties\":{\"points\":{\"type\":\"array\"},\"filter\":{\"type\":\"object\"}}}"},
    {"qdrant_update_collection",
     "{\"type\":\"object\",\"properties\":{\"hnsw_config\":{\"type\":\"object\",\"properties\":{\"m\":{\"type\":\"integer\"},\"ef_construct\":{\"type\":\"integer\"},\"full_scan_threshold\":{\"type\":\"integer\"}}},\"quantization_config\":{},\"vectors\":{\"type\":\"object\"},\"optimizers_config\":{\"type\":\"object\"}}}"},
    {"qdrant_create_index",
     "{\"type\":\"object\",\"required\":[\"field_name\"],\"properties\":{\"field_name\":{\"type\":\"string\"},\"field_schema\":{}}}"},
    {"qdrant_set_payload",
     "{\"type\":\"object\",\"required\":[\"payload\"],\"properties\":{\"payload\":{\"type\":\"object\"},\"points\":{\"type\":\"array\",\"items\":{\"type\":[\"integer\",\"string\"]}},\"filter\":{\"type\":\"object\"}}}"},
    {"qdrant_overwrite_payload",
     "{\"type\":\"object\",\"required\":[\"payload\"],\"properties\":{\"payload\":{\"type\":\"object\"},\"points\":{\"type\":\"array\",\"items\":{\"type\":[\"integer\",\"string\"]}},\"filter\":{\"type\":\"object\"}}}"},
    {"qdrant_delete_payload",
     "{\"type\":\"object\",\"required\":[\"keys\"],\"properties\":{\"keys\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},\"points\":{\"type\":\"array\",\"items\":{\"type\":[\"integer\",\"string\"]}},\"filter\":{\"type\":\"object\"}}}"},
    {"qdrant_clear_payload",
     "{\"type\":\"object\",\"properties\":{\"points\":{\"type\":\"array\",\"items\":{\"type\":[\"integer\",\"string\"]}},\"filter\":{\"type\":\"object\"}}}"},
    {"qdrant_query_batch",
     "{\"type\":\"object\",\"required\":[\"searches\"],\"properties\":{\"searches\":{\"type\":\"array\",\"items\":{\"type\":\"object\"}}}}"},
    {"qdrant_search_batch",
     "{\"type\":\"object\",\"required\":[\"searches\"],\"properties\":{\"searches\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"required\":[\"vector\"]}}}}"},
    {"docs_ingest",
     "{\"type\":\"object\",\"required\":[\"documents\"],\"properties\":{\"documents\":{\"type\":\"array\","
     "\"items\":{\"type\":\"object\",\"required\":[\"source\",\"text\"],\"properties\":{\"source\":{\"type\":\"string\"},"
     "\"text\":{\"type\":\"string\"}}}},\"chunker\":{\"enum\":[\"structure\",\"fixed\",\"sentence\",\"adaptive\"]},"
     "\"max_tokens\":{\"type\":\"integer\"},\"overlap\":{\"type\":\"number\"}}}"},
    {"docs_query",
     "{\"type\":\"object\",\"required\":[\"query\"],\"properties\":{\"query\":{\"type\":\"string\"},"
     "\"k\":{\"type\":\"integer\"},\"hybrid\":{\"type\":\"boolean\"},\"rerank\":{\"type\":\"boolean\"},"
     "\"filter\":{\"type\":[\"object\",\"null\"]}}}"},
    /* S2's surfaces, from the shapes in the comments at the end of openai.c, tei.c, legacy.c. */
    {"openai_embeddings",
     "{\"type\":\"object\",\"required\":[\"input\"],\"properties\":{\"input\":{\"oneOf\":[{\"type\":\"string\"},"
     "{\"type\":\"array\",\"items\":{\"type\":\"string\"}},{\"type\":\"array\",\"items\":{\"type\":\"integer\"}},"
     "{\"type\":\"array\",\"items\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}}]},"
     "\"model\":{\"type\":\"string\"},\"encoding_format\":{\"enum\":[\"float\",\"base64\"]},"
     "\"dimensions\":{\"type\":\"integer\"},\"user\":{\"type\":\"string\"},\"truncate\":{\"type\":\"boolean\"}}}"},
    {"openai_rerank",
     "{\"type\":\"object\",\"required\":[\"query\",\"documents\"],\"properties\":{\"query\":{\"type\":\"string\"},"
     "\"documents\":{\"type\":\"array\",\"items\":{\"oneOf\":[{\"type\":\"string\"},{\"type\":\"object\","
     "\"properties\":{\"text\":{\"type\":\"string\"}}}]}},\"top_n\":{\"type\":\"integer\"},"
     "\"return_documents\":{\"type\":\"boolean\"},\"model\":{\"type\":\"string\"},\"truncate\":{\"type\":\"boolean\"}}}"},
    {"tei_embed",
     "{\"type\":\"object\",\"required\":[\"inputs\"],\"properties\":{\"inputs\":{\"oneOf\":[{\"type\":\"string\"},"
     "{\"type\":\"array\",\"items\":{\"type\":\"string\"}}]},\"normalize\":{\"type\":\"boolean\"},"
     "\"truncate\":{\"type\":\"boolean\"}}}"},
    {"tei_rerank",
     "{\"type\":\"object\",\"required\":[\"query\",\"texts\"],\"properties\":{\"query\":{\"type\":\"string\"},"
     "\"texts\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},\"raw_scores\":{\"type\":\"boolean\"},"
     "\"return_text\":{\"type\":\"boolean\"},\"truncate\":{\"type\":\"boolean\"}}}"},
    {"tei_tokenize",
     "{\"type\":\"object\",\"required\":[\"inputs\"],\"properties\":{\"inputs\":{\"oneOf\":[{\"type\":\"string\"},"
     "{\"type\":\"array\",\"items\":{\"type\":\"string\"}}]},\"add_special_tokens\":{\"type\":\"boolean\"}}}"},
    {"legacy_generate",
     "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"},\"texts\":{\"type\":\"array\","
     "\"items\":{\"type\":\"string\"}},\"truncate\":{\"type\":\"boolean\"}}}"},
    {"legacy_batch",
     "{\"type\":\"object\",\"required\":[\"texts\"],\"properties\":{\"texts\":{\"type\":\"array\","
     "\"items\":{\"type\":\"string\"}},\"truncate\":{\"type\":\"boolean\"}}}"},
    {"legacy_search",
     "{\"type\":\"object\",\"required\":[\"query\",\"collection\"],\"properties\":{\"query\":{\"type\":\"string\"},"
     "\"collection\":{\"type\":\"string\"},\"top_k\":{\"type\":\"integer\"},\"filter\":{\"type\":\"object\"}}}"},
    {"legacy_index_add",
     "{\"type\":\"object\",\"required\":[\"collection\",\"documents\"],\"properties\":{\"collection\":{\"type\":\"string\"},"
     "\"documents\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"required\":[\"text\"],\"properties\":{"
     "\"id\":{\"type\":[\"integer\",\"string\"]},\"text\":{\"type\":\"string\"},\"metadata\":{\"type\":\"object\"}}}},"
     "\"truncate\":{\"type\":\"boolean\"}}}"},
};

static json_t *operation(const http_route *r) {
  json_t *op = json_pack("{s:s,s:s}", "operationId", r->name ? r->name : r->pattern, "summary",
                         r->name ? r->name : r->pattern);
  /* Path parameters, in the pattern's order. */
  json_t *params = json_array();
  for (const char *p = strchr(r->pattern, '{'); p; p = strchr(p + 1, '{')) {
    const char *e = strchr(p, '}');
    if (!e) break;
    json_array_append_new(params, json_pack("{s:s%,s:s,s:b,s:{s:s}}", "name", p + 1, (size_t)(e - p - 1), "in",
                                            "path", "required", 1, "schema", "type", "string"));
  }
  if (json_array_size(params)) json_object_set_new(op, "parameters", params);
  else json_decref(params);
  if (!strcmp(r->method, "POST") || !strcmp(r->method, "PUT") || !strcmp(r->method, "PATCH")) {
    json_t *schema = NULL;
    for (size_t i = 0; r->name && i < sizeof body_schemas / sizeof body_schemas[0]; i++)
      if (!strcmp(body_schemas[i].route, r->name)) schema = json_loads(body_schemas[i].schema, 0, NULL);
    if (!schema && embedapi_body_schema(r->name)) schema = json_loads(embedapi_body_schema(r->name), 0, NULL);
    if (!schema) schema = json_pack("{s:s}", "type", "object");
    json_object_set_new(op, "requestBody",
                        json_pack("{s:b,s:{s:{s:o}}}", "required", 0, "content", "application/json", "schema", schema));
  }
  json_t *err = json_pack("{s:s,s:{s:{s:{s:s}}}}", "description", "error", "content", "application/json", "schema",
                          "type", "object");
  json_t *resp = json_pack("{s:{s:s},s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:o}", "200", "description", "success", "400", err,
                           "401", err, "403", err, "404", err, "405", err, "409", err, "413", err, "429", err);
  json_object_set_new(op, "responses", resp);
  if (!(r->flags & HTTP_ROUTE_OPEN))
    json_object_set_new(op, "security", json_pack("[{s:[]},{s:[]}]", "api-key", "bearer"));
  return op;
}

static void openapi(http_req *r, http_resp *w) {
  (void)r;
  const http_route *tables[] = {qdrant_routes, openai_routes, tei_routes, native_routes, legacy_routes, docs_routes};
  json_t *paths = json_object();
  for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++) {
    for (const http_route *rt = tables[t]; rt->pattern; rt++) {
      json_t *item = json_object_get(paths, rt->pattern);
      if (!item) {
        item = json_object();
        json_object_set_new(paths, rt->pattern, item);
      }
      char m[8] = {0};
      for (size_t i = 0; i < sizeof m - 1 && rt->method[i]; i++) m[i] = (char)(rt->method[i] | 0x20);
      if (!json_object_get(item, m)) json_object_set_new(item, m, operation(rt));
    }
  }
  json_t *doc = json_pack(
      "{s:s,s:{s:s,s:s,s:s},s:o,s:{s:{s:{s:s,s:s,s:s},s:{s:s,s:s}}}}", "openapi", "3.0.3", "info", "title", "Quiver",
      "version", QV_VERSION, "description",
      "Quiver's HTTP API: Qdrant-compatible collections and points, OpenAI- and TEI-style embeddings and "
      "reranking, health and metrics.",
      "paths", paths, "components", "securitySchemes", "api-key", "type", "apiKey", "in", "header", "name",
      "api-key", "bearer", "type", "http", "scheme", "bearer");
  http_reply_json(w, 200, doc);
}

const http_route native_routes[] = {
    {"GET", "/healthz", healthz, HTTP_ROUTE_OPEN, "healthz"},
    {"GET", "/livez", livez, HTTP_ROUTE_OPEN, "livez"},
    {"GET", "/readyz", readyz, HTTP_ROUTE_OPEN, "readyz"},
    {"GET", "/metrics", metrics_route, 0, "metrics"},
    {"GET", "/telemetry", telemetry, 0, "telemetry"},
    {"GET", "/openapi.json", openapi, HTTP_ROUTE_OPEN, "openapi"},
    {0},
};
