/* The routes of the users' earlier embedding service, so its clients keep working:
 *
 *   POST /api/v1/embeddings/generate   {"text"} | {"texts"}  -> {"embeddings", "model", "dimensions"}
 *   POST /api/v1/embeddings/batch      {"texts"}             -> the same, plus "count"
 *   POST /api/v1/similarity/search     {"query", "collection", "top_k", "filter"?} -> {"results"}
 *   POST /api/v1/index/add             {"collection", "documents": [{"id"?, "text", "metadata"?}]}
 *
 * Documents are stored as points whose payload is their metadata plus "text" (the
 * document's own text wins over a metadata key of that name), so search hits carry the
 * text back. A document without an id gets a random UUID. A filter is Qdrant's filter
 * (must/should/must_not) or, as the earlier service took it, a flat {"key": value} object
 * meaning every key must match. Errors are {"error": "..."} (http_reply_error) with 400
 * for bad input, 404 for a missing collection, 413 for an over-long text without
 * truncation, 429 when the batcher's queue is full. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "base/error.h"
#include "store/filter.h"
#include "server/embed_api.h"
#include "server/http.h"
#include "server/qdrant.h"
#include "server/server.h"

static void fail(http_resp *w, qv_status st, const qv_error *err) {
  int status = http_status_of(st);
  http_reply_error(w, status, "%s", err->msg[0] ? err->msg : qv_strerror(st));
  if (status == 429) w->retry_after = 1;
}

/* "texts" (an array of strings) or "text" (a string), borrowed from body. */
static int read_texts(server *s, json_t *body, http_resp *w, const char ***texts, size_t **lens, size_t *n) {
  json_t *one = json_object_get(body, "text"), *many = json_object_get(body, "texts");
  *texts = NULL;
  *lens = NULL;
  *n = 0;
  if (many ? !json_is_array(many) : !json_is_string(one)) {
    http_reply_error(w, 400, "give \"text\" (a string) or \"texts\" (a non-empty array of strings)");
    return -1;
  }
  qv_error err = {0};
  qv_status st = many ? embedapi_texts(s, many, "texts", texts, lens, n, &err)
                      : embedapi_texts(s, one, "text", texts, lens, n, &err);
  if (st) fail(w, st, &err);
  return st ? -1 : 0;
}

static int read_truncate(server *s, json_t *body, http_resp *w) {
  int t = embedapi_truncate(s, json_object_get(body, "truncate"));
  if (t < 0) http_reply_error(w, 400, "\"truncate\" must be a boolean");
  return t;
}

static void generate_common(http_req *r, http_resp *w, int with_count) {
  server *s = r->srv;
  json_t *body = http_body_json(r, w, 0);
  if (!body) return;
  const char **texts = NULL;
  size_t *lens = NULL, n = 0;
  float *vecs = NULL;
  int truncate;
  if (read_texts(s, body, w, &texts, &lens, &n)) goto done;
  if ((truncate = read_truncate(s, body, w)) < 0) goto done;
  qv_error err = {0};
  qv_status st = embedapi_encode(s, texts, lens, n, truncate, &vecs, NULL, &err);
  if (st) {
    fail(w, st, &err);
    goto done;
  }
  qv_model_info info;
  qv_model_info_get(s->model, &info);
  json_t *embs = json_array();
  for (size_t i = 0; i < n; i++) {
    json_t *row = json_array();
    for (int c = 0; c < info.dims; c++) json_array_append_new(row, json_real(vecs[i * (size_t)info.dims + (size_t)c]));
    json_array_append_new(embs, row);
  }
  json_t *out = json_pack("{s:o, s:s, s:i}", "embeddings", embs, "model", info.name, "dimensions", info.dims);
  if (with_count) json_object_set_new(out, "count", json_integer((json_int_t)n));
  http_reply_json(w, 200, out);
done:
  free(vecs);
  free(texts);
  free(lens);
  json_decref(body);
}

static void generate(http_req *r, http_resp *w) { generate_common(r, w, 0); }
static void batch(http_req *r, http_resp *w) { generate_common(r, w, 1); }

/* A filter from either form (see the top of the file); *f NULL when absent. */
static qv_status read_filter(json_t *body, qv_filter **f, qv_error *err) {
  *f = NULL;
  json_t *fj = json_object_get(body, "filter");
  if (!fj || json_is_null(fj)) return QV_OK;
  if (!json_is_object(fj)) return qv_fail(err, QV_EFILTER, "\"filter\" must be an object");
  json_t *q;
  if (json_object_get(fj, "must") || json_object_get(fj, "should") || json_object_get(fj, "must_not") ||
      json_object_get(fj, "min_should")) {
    q = json_incref(fj);
  } else {
    json_t *must = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(fj, k, v) {
      if (!(json_is_string(v) || json_is_integer(v) || json_is_boolean(v))) {
        json_decref(must);
        return qv_fail(err, QV_EFILTER, "filter key \"%s\": a flat filter matches strings, integers or booleans", k);
      }
      json_array_append_new(must, json_pack("{s:s, s:{s:O}}", "key", k, "match", "value", v));
    }
    q = json_pack("{s:o}", "must", must);
  }
  qv_status st = q ? filter_from_json(f, q, err) : qv_fail(err, QV_ENOMEM, "out of memory");
  json_decref(q);
  return st;
}

static void search(http_req *r, http_resp *w) {
  server *s = r->srv;
  json_t *body = http_body_json(r, w, 0);
  if (!body) return;
  float *vec = NULL;
  qv_filter *f = NULL;
  qv_records rec = {0};
  qv_error err = {0};
  qv_status st;
  json_t *query = json_object_get(body, "query"), *coll = json_object_get(body, "collection");
  json_t *topk = json_object_get(body, "top_k");
  if (!json_is_string(query) || !json_is_string(coll)) {
    http_reply_error(w, 400, "\"query\" and \"collection\" must be strings");
    goto done;
  }
  size_t k = 10;
  if (topk && !json_is_null(topk)) {
    if (!json_is_integer(topk) || json_integer_value(topk) < 1 || json_integer_value(topk) > 10000) {
      http_reply_error(w, 400, "\"top_k\" must be an integer from 1 to 10000");
      goto done;
    }
    k = (size_t)json_integer_value(topk);
  }
  int truncate = read_truncate(s, body, w);
  if (truncate < 0) goto done;
  if ((st = read_filter(body, &f, &err))) {
    fail(w, st, &err);
    goto done;
  }
  qv_collection *c;
  if ((st = qv_collection_open(s->db, json_string_value(coll), &c, &err))) {
    if (st == QV_NOTFOUND) http_reply_error(w, 404, "collection \"%s\" does not exist", json_string_value(coll));
    else fail(w, st, &err);
    goto done;
  }
  const char *q = json_string_value(query);
  size_t ql = json_string_length(query);
  if ((st = embedapi_encode(s, &q, &ql, 1, truncate, &vec, NULL, &err))) {
    fail(w, st, &err);
    goto done;
  }
  qv_search_params p = {.limit = k, .filter = f, .with_payload = 1};
  if ((st = qv_collection_search(c, vec, 1, &p, &rec, &err))) {
    fail(w, st, &err);
    goto done;
  }
  json_t *results = json_array();
  for (size_t i = 0; i < rec.count; i++) {
    json_t *payload = rec.items[i].payload ? json_loads(rec.items[i].payload, 0, NULL) : NULL;
    json_array_append_new(results, json_pack("{s:o, s:f, s:o}", "id", qdrant_id_json(&rec.items[i].id), "score",
                                             (double)rec.items[i].score, "payload",
                                             payload ? payload : json_object()));
  }
  http_reply_json(w, 200, json_pack("{s:o, s:s, s:I}", "results", results, "collection", json_string_value(coll),
                                    "count", (json_int_t)rec.count));
done:
  qv_records_free(&rec);
  qv_filter_free(f);
  free(vec);
  json_decref(body);
}

static qv_status random_uuid(qv_point_id *id) {
  id->kind = QV_ID_UUID;
  id->num = 0;
  if (getrandom(id->uuid, 16, 0) != 16) return QV_EINVAL;
  id->uuid[6] = (uint8_t)((id->uuid[6] & 0x0f) | 0x40); /* version 4 */
  id->uuid[8] = (uint8_t)((id->uuid[8] & 0x3f) | 0x80); /* RFC 4122 variant */
  return QV_OK;
}

/* Opens the collection, creating it for the model (its dims, Cosine) when missing. */
static qv_status open_or_create(server *s, const char *name, qv_collection **c, qv_error *err) {
  qv_status st = qv_collection_open(s->db, name, c, err);
  if (st != QV_NOTFOUND) return st;
  qv_model_info info;
  qv_model_info_get(s->model, &info);
  qv_collection_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.size = (uint32_t)info.dims;
  cfg.distance = QV_DIST_COSINE;
  snprintf(cfg.model, sizeof cfg.model, "%s", info.name);
  st = qv_collection_create(s->db, name, &cfg, err);
  if (st && st != QV_EXISTS) return st;
  return qv_collection_open(s->db, name, c, err);
}

static void index_add(http_req *r, http_resp *w) {
  server *s = r->srv;
  json_t *body = http_body_json(r, w, 0);
  if (!body) return;
  json_t *coll = json_object_get(body, "collection"), *docs = json_object_get(body, "documents");
  size_t n = json_array_size(docs);
  const char **texts = NULL;
  size_t *lens = NULL;
  qv_point *pts = NULL;
  char **payloads = NULL;
  float *vecs = NULL;
  qv_error err = {0};
  qv_status st;
  if (!json_is_string(coll)) {
    http_reply_error(w, 400, "\"collection\" must be a string");
    goto done;
  }
  if (!json_is_array(docs) || n == 0) {
    http_reply_error(w, 400, "\"documents\" must be a non-empty array of {\"id\"?, \"text\", \"metadata\"?}");
    goto done;
  }
  if (s->cfg.max_batch && n > s->cfg.max_batch) {
    http_reply_error(w, 400, "\"documents\" holds %zu items; at most %zu are allowed per request", n, s->cfg.max_batch);
    goto done;
  }
  int truncate = read_truncate(s, body, w);
  if (truncate < 0) goto done;
  if (!s->model) {
    http_reply_error(w, 503, "no embedding model is loaded");
    goto done;
  }
  texts = calloc(n, sizeof *texts);
  lens = calloc(n, sizeof *lens);
  pts = calloc(n, sizeof *pts);
  payloads = calloc(n, sizeof *payloads);
  if (!texts || !lens || !pts || !payloads) {
    http_reply_error(w, 500, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *d = json_array_get(docs, i);
    json_t *text = json_object_get(d, "text"), *id = json_object_get(d, "id"), *meta = json_object_get(d, "metadata");
    if (!json_is_object(d) || !json_is_string(text)) {
      http_reply_error(w, 400, "documents[%zu] needs a string \"text\"", i);
      goto done;
    }
    texts[i] = json_string_value(text);
    lens[i] = json_string_length(text);
    if (!id || json_is_null(id)) {
      if (random_uuid(&pts[i].id)) {
        http_reply_error(w, 500, "cannot draw a random id");
        goto done;
      }
    } else if (json_is_integer(id) && json_integer_value(id) >= 0) {
      pts[i].id = (qv_point_id){.kind = QV_ID_NUM, .num = (uint64_t)json_integer_value(id)};
    } else if (!json_is_string(id) || qv_point_id_parse(&pts[i].id, json_string_value(id))) {
      http_reply_error(w, 400, "documents[%zu].id must be an unsigned integer or a UUID", i);
      goto done;
    }
    if (meta && !json_is_null(meta) && !json_is_object(meta)) {
      http_reply_error(w, 400, "documents[%zu].metadata must be an object", i);
      goto done;
    }
    json_t *payload = meta && json_is_object(meta) ? json_deep_copy(meta) : json_object();
    json_object_set(payload, "text", text);
    payloads[i] = json_dumps(payload, JSON_COMPACT);
    json_decref(payload);
    if (!payloads[i]) {
      http_reply_error(w, 500, "out of memory");
      goto done;
    }
    pts[i].payload = payloads[i];
  }
  qv_collection *c;
  if ((st = open_or_create(s, json_string_value(coll), &c, &err))) {
    fail(w, st, &err);
    goto done;
  }
  if ((st = embedapi_encode(s, texts, lens, n, truncate, &vecs, NULL, &err))) {
    fail(w, st, &err);
    goto done;
  }
  qv_model_info info;
  qv_model_info_get(s->model, &info);
  for (size_t i = 0; i < n; i++) pts[i].vector = vecs + i * (size_t)info.dims;
  if ((st = qv_collection_upsert(c, pts, n, &err))) {
    fail(w, st, &err);
    goto done;
  }
  json_t *ids = json_array();
  for (size_t i = 0; i < n; i++) json_array_append_new(ids, qdrant_id_json(&pts[i].id));
  http_reply_json(w, 200, json_pack("{s:s, s:I, s:o}", "collection", json_string_value(coll), "added", (json_int_t)n,
                                    "ids", ids));
done:
  if (payloads)
    for (size_t i = 0; i < n; i++) free(payloads[i]);
  free(payloads);
  free(pts);
  free(texts);
  free(lens);
  free(vecs);
  json_decref(body);
}

const http_route legacy_routes[] = {
    {"POST", "/api/v1/embeddings/generate", generate, HTTP_ROUTE_MODEL, "legacy_generate"},
    {"POST", "/api/v1/embeddings/batch", batch, HTTP_ROUTE_MODEL, "legacy_batch"},
    {"POST", "/api/v1/similarity/search", search, HTTP_ROUTE_MODEL, "legacy_search"},
    {"POST", "/api/v1/index/add", index_add, HTTP_ROUTE_WRITE | HTTP_ROUTE_MODEL, "legacy_index_add"},
    {0},
};

/* Request and response shapes, for the OpenAPI document (also in docs/api.md):
 *
 * POST /api/v1/embeddings/generate  {"text": string} | {"texts": [string]}, "truncate"?: bool
 *   200 {"embeddings": [[float]], "model": string, "dimensions": int}
 * POST /api/v1/embeddings/batch     {"texts": [string], "truncate"?: bool}
 *   200 {"embeddings": [[float]], "model": string, "dimensions": int, "count": int}
 * POST /api/v1/similarity/search    {"query": string, "collection": string, "top_k"?: int (10),
 *                                    "filter"?: Qdrant filter | {"key": value, ...}}
 *   200 {"results": [{"id": int|string, "score": float, "payload": object}],
 *        "collection": string, "count": int}
 * POST /api/v1/index/add            {"collection": string, "documents": [{"id"?: int|string,
 *                                    "text": string, "metadata"?: object}], "truncate"?: bool}
 *   200 {"collection": string, "added": int, "ids": [int|string]}
 * Errors  {"error": string} with 400, 404 (collection), 413 (too long), 429, 503
 */
