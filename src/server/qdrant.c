/* The Qdrant-compatible REST API: collections and points, with Qdrant's envelope
 * {"result", "status": "ok", "time"} and its error shape. Decoders turn bodies into plain
 * structs first (callable without a socket: see qdrant.h and tests/fuzz/fuzz_request.c);
 * handlers then call the collection API. Quiver's additions: a query or a point's vector
 * may be a Document {"text": "..."} embedded by the server's model. */
#include "server/qdrant.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/error.h"
#include "store/filter.h"
#include "server/batcher.h"
#include "server/docs.h"
#include "server/server.h"
#include "server/vecjson.h"

/* The version GET / reports: qdrant-client warns unless major.minor is within one minor
 * version of its own (1.20.x here, so it accepts 1.19..1.21). */
#define QDRANT_COMPAT_VERSION "1.20.0"

/* ---- envelope ------------------------------------------------------------------------- */

void qdrant_ok(http_resp *w, json_t *result, double t0) {
  http_reply_json(w, 200, json_pack("{s:o,s:s,s:f}", "result", result ? result : json_null(), "status", "ok",
                                    "time", server_now() - t0));
}

void qdrant_error(http_resp *w, int status, double t0, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  http_utf8_sanitize(msg);
  http_reply_json(w, status, json_pack("{s:{s:s},s:f}", "status", "error", msg, "time", server_now() - t0));
  if (status == 429) w->retry_after = 1;
}

void qdrant_fail(http_resp *w, qv_status st, const qv_error *err, double t0) {
  qdrant_error(w, http_status_of(st), t0, "%s", err && err->msg[0] ? err->msg : qv_strerror(st));
}

/* ---- decoders ------------------------------------------------------------------------- */

/* A non-negative integer field into *out, at most max; absent leaves *out. */
static qv_status get_count(json_t *obj, const char *key, size_t max, size_t *out, qv_error *err) {
  json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v)) return QV_OK;
  if (!json_is_integer(v) || json_integer_value(v) < 0 || (unsigned long long)json_integer_value(v) > max)
    return qv_fail(err, QV_EINVAL, "\"%s\" must be an integer in 0..%zu", key, max);
  *out = (size_t)json_integer_value(v);
  return QV_OK;
}

static qv_status get_bool(json_t *obj, const char *key, int *out, qv_error *err) {
  json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v)) return QV_OK;
  if (!json_is_boolean(v)) return qv_fail(err, QV_EINVAL, "\"%s\" must be true or false", key);
  *out = json_is_true(v);
  return QV_OK;
}

qv_status qdrant_decode_id(json_t *j, qv_point_id *out, qv_error *err) {
  memset(out, 0, sizeof *out);
  if (json_is_integer(j)) {
    if (json_integer_value(j) < 0) return qv_fail(err, QV_EINVAL, "a point id must be an unsigned integer or a UUID");
    out->kind = QV_ID_NUM;
    out->num = (uint64_t)json_integer_value(j);
    return QV_OK;
  }
  if (json_is_string(j) && qv_point_id_parse(out, json_string_value(j)) == QV_OK) return QV_OK;
  return qv_fail(err, QV_EINVAL, "a point id must be an unsigned integer or a UUID");
}

static qv_status decode_ids(json_t *arr, size_t max, qv_point_id **out, size_t *n, qv_error *err) {
  *out = NULL;
  *n = 0;
  if (!json_is_array(arr)) return qv_fail(err, QV_EINVAL, "point ids must be a list");
  size_t cnt = json_array_size(arr);
  if (cnt > max) return qv_fail(err, QV_EINVAL, "%zu ids; the limit per request is %zu", cnt, max);
  qv_point_id *ids = calloc(cnt ? cnt : 1, sizeof *ids);
  if (!ids) return qv_fail(err, QV_ENOMEM, "out of memory");
  for (size_t i = 0; i < cnt; i++) {
    qv_status st = qdrant_decode_id(json_array_get(arr, i), &ids[i], err);
    if (st) {
      free(ids);
      qv_error_prefix(err, "ids[%zu]", i);
      return st;
    }
  }
  *out = ids;
  *n = cnt;
  return QV_OK;
}

/* Whether j holds a vector: a list, or one vecjson_rewrite turned into a string. */
static int is_vector_list(const json_t *j) { return json_is_array(j) || vecjson_is(j); }

/* Numbers into out (size); the list must have exactly size finite numbers. */
static qv_status decode_floats(const vecjson *vt, json_t *arr, uint32_t size, float *out, qv_error *err) {
  if (vecjson_is(arr)) {
    size_t n;
    qv_status st = vecjson_floats(vt, arr, out, size, &n);
    if (st == QV_EDIM) return qv_fail(err, QV_EDIM, "the vector has %zu dimensions; the collection's has %u", n, size);
    if (st == QV_ENONFINITE) return qv_fail(err, QV_ENONFINITE, "vector[%zu] is out of float range", n);
    return st ? qv_fail(err, st, "a vector must be a list of numbers") : QV_OK;
  }
  if (!json_is_array(arr)) return qv_fail(err, QV_EINVAL, "a vector must be a list of numbers");
  if (json_array_size(arr) != size)
    return qv_fail(err, QV_EDIM, "the vector has %zu dimensions; the collection's has %u", json_array_size(arr), size);
  for (size_t i = 0; i < size; i++) {
    json_t *x = json_array_get(arr, i);
    if (!json_is_number(x)) return qv_fail(err, QV_EINVAL, "vector[%zu] is not a number", i);
    double d = json_number_value(x);
    if (!isfinite(d) || fabs(d) > 3.4e38) return qv_fail(err, QV_ENONFINITE, "vector[%zu] is out of float range", i);
    out[i] = (float)d;
  }
  return QV_OK;
}

/* A Document: {"text": "...", "model"?: "..."}; *text set when it is one. */
static qv_status decode_document(json_t *j, const char **text, size_t *len, qv_error *err) {
  *text = NULL;
  /* A string "text" makes a Document; {"text": [..]} is a vector named "text". */
  json_t *t = json_object_get(j, "text");
  if (!json_is_object(j) || !json_is_string(t) || vecjson_is(t)) return QV_OK;
  (void)err;
  *text = json_string_value(t);
  *len = json_string_length(t);
  return QV_OK;
}

/* A point's vector: a list, or {name: list} naming the collection's vector, or a Document.
 * Fills out, or sets *text for a Document. */
static qv_status decode_point_vector(const vecjson *vt, json_t *j, const qv_collection_config *cfg, float *out,
                                     const char **text, size_t *text_len, qv_error *err) {
  *text = NULL;
  if (is_vector_list(j)) return decode_floats(vt, j, cfg->size, out, err);
  if (!json_is_object(j)) return qv_fail(err, QV_EINVAL, "a vector must be a list of numbers or {name: list}");
  qv_status st = decode_document(j, text, text_len, err);
  if (st || *text) return st;
  if (json_object_size(j) != 1)
    return qv_fail(err, QV_EINVAL, "this collection has one vector%s%s%s", cfg->vector_name[0] ? " named \"" : "",
                   cfg->vector_name, cfg->vector_name[0] ? "\"" : "");
  const char *name = json_object_iter_key(json_object_iter(j));
  if (strcmp(name, cfg->vector_name))
    return qv_fail(err, QV_EINVAL, "no vector named \"%.100s\" in this collection", name);
  json_t *v = json_object_iter_value(json_object_iter(j));
  if (json_is_object(v)) {
    st = decode_document(v, text, text_len, err);
    if (st || *text) return st;
  }
  return decode_floats(vt, v, cfg->size, out, err);
}

void qdrant_points_free(qdrant_points *p) {
  if (p->payloads)
    for (size_t i = 0; i < p->n; i++) free(p->payloads[i]);
  free(p->payloads);
  free(p->ids);
  free(p->vectors);
  free(p->texts);
  free(p->text_lens);
  free(p->text_rows);
  memset(p, 0, sizeof *p);
}

static qv_status points_alloc(qdrant_points *p, size_t n, uint32_t size, qv_error *err) {
  p->n = n;
  p->ids = calloc(n ? n : 1, sizeof *p->ids);
  p->payloads = calloc(n ? n : 1, sizeof *p->payloads);
  p->vectors = calloc(n ? n * size : 1, sizeof *p->vectors);
  p->texts = calloc(n ? n : 1, sizeof *p->texts);
  p->text_lens = calloc(n ? n : 1, sizeof *p->text_lens);
  p->text_rows = calloc(n ? n : 1, sizeof *p->text_rows);
  if (!p->ids || !p->payloads || !p->vectors || !p->texts || !p->text_lens || !p->text_rows)
    return qv_fail(err, QV_ENOMEM, "out of memory for %zu points", n);
  return QV_OK;
}

static qv_status decode_payload(json_t *j, char **out, qv_error *err) {
  *out = NULL;
  if (!j || json_is_null(j)) return QV_OK;
  if (!json_is_object(j)) return qv_fail(err, QV_EINVAL, "a payload must be a JSON object");
  *out = json_dumps(j, JSON_COMPACT);
  if (!*out) return qv_fail(err, QV_ENOMEM, "out of memory");
  return QV_OK;
}

static qv_status decode_one(qdrant_points *p, size_t i, json_t *id, json_t *vec, json_t *payload,
                            const vecjson *vt, const qv_collection_config *cfg, qv_error *err) {
  qv_status st = qdrant_decode_id(id, &p->ids[i], err);
  if (st) return st;
  if (!vec) return qv_fail(err, QV_EINVAL, "missing \"vector\"");
  const char *text = NULL;
  size_t tl = 0;
  if ((st = decode_point_vector(vt, vec, cfg, p->vectors + i * cfg->size, &text, &tl, err))) return st;
  if (text) {
    p->texts[p->n_texts] = text;
    p->text_lens[p->n_texts] = tl;
    p->text_rows[p->n_texts++] = i;
  }
  return decode_payload(payload, &p->payloads[i], err);
}

qv_status qdrant_decode_points(json_t *body, const vecjson *vt, const qv_collection_config *cfg, size_t max_batch,
                               qdrant_points *out, qv_error *err) {
  memset(out, 0, sizeof *out);
  json_t *pts = json_object_get(body, "points"), *batch = json_object_get(body, "batch");
  qv_status st;
  if (!!pts == !!batch) return qv_fail(err, QV_EINVAL, "give exactly one of \"points\" and \"batch\"");
  if (pts) {
    if (!json_is_array(pts)) return qv_fail(err, QV_EINVAL, "\"points\" must be a list");
    size_t n = json_array_size(pts);
    if (n > max_batch) return qv_fail(err, QV_EINVAL, "%zu points; the limit per request is %zu", n, max_batch);
    if ((st = points_alloc(out, n, cfg->size, err))) goto fail;
    for (size_t i = 0; i < n; i++) {
      json_t *pt = json_array_get(pts, i);
      if (!json_is_object(pt)) {
        st = qv_fail(err, QV_EINVAL, "points[%zu] must be an object", i);
        goto fail;
      }
      if ((st = decode_one(out, i, json_object_get(pt, "id"), json_object_get(pt, "vector"),
                           json_object_get(pt, "payload"), vt, cfg, err))) {
        qv_error_prefix(err, "points[%zu]", i);
        goto fail;
      }
    }
    return QV_OK;
  }
  if (!json_is_object(batch)) return qv_fail(err, QV_EINVAL, "\"batch\" must be an object");
  json_t *ids = json_object_get(batch, "ids"), *vecs = json_object_get(batch, "vectors"),
         *pls = json_object_get(batch, "payloads");
  if (!json_is_array(ids)) return qv_fail(err, QV_EINVAL, "batch.ids must be a list");
  size_t n = json_array_size(ids);
  if (n > max_batch) return qv_fail(err, QV_EINVAL, "%zu points; the limit per request is %zu", n, max_batch);
  /* Named vectors in batch form: {"vectors": {"name": [[...], ...]}}. */
  if (json_is_object(vecs) && json_object_size(vecs) == 1) {
    const char *name = json_object_iter_key(json_object_iter(vecs));
    if (strcmp(name, cfg->vector_name))
      return qv_fail(err, QV_EINVAL, "no vector named \"%.100s\" in this collection", name);
    vecs = json_object_iter_value(json_object_iter(vecs));
  }
  if (!json_is_array(vecs) || json_array_size(vecs) != n)
    return qv_fail(err, QV_EINVAL, "batch.vectors must be a list as long as batch.ids");
  if (pls && !json_is_null(pls) && (!json_is_array(pls) || json_array_size(pls) != n))
    return qv_fail(err, QV_EINVAL, "batch.payloads must be a list as long as batch.ids");
  if ((st = points_alloc(out, n, cfg->size, err))) goto fail;
  for (size_t i = 0; i < n; i++) {
    if ((st = decode_one(out, i, json_array_get(ids, i), json_array_get(vecs, i),
                         json_is_array(pls) ? json_array_get(pls, i) : NULL, vt, cfg, err))) {
      qv_error_prefix(err, "batch[%zu]", i);
      goto fail;
    }
  }
  return QV_OK;
fail:
  qdrant_points_free(out);
  return st;
}

static qv_status decode_hnsw(json_t *h, qv_hnsw_config *out, qv_error *err) {
  if (!h || json_is_null(h)) return QV_OK;
  if (!json_is_object(h)) return qv_fail(err, QV_EINVAL, "hnsw_config must be an object");
  size_t m = out->m, ef = out->ef_construct, fst = out->full_scan_threshold;
  qv_status st;
  if ((st = get_count(h, "m", 512, &m, err)) || (st = get_count(h, "ef_construct", 100000, &ef, err)) ||
      (st = get_count(h, "full_scan_threshold", 1u << 30, &fst, err))) {
    qv_error_prefix(err, "hnsw_config");
    return st;
  }
  out->m = (uint32_t)m;
  out->ef_construct = (uint32_t)ef;
  out->full_scan_threshold = (uint32_t)fst;
  return QV_OK;
}

static qv_status decode_quant(json_t *q, qv_quant_config *out, qv_error *err) {
  if (!q) return QV_OK;
  if (json_is_null(q) || (json_is_string(q) && !strcmp(json_string_value(q), "Disabled"))) {
    memset(out, 0, sizeof *out);
    return QV_OK;
  }
  json_t *sc = json_object_get(q, "scalar");
  if (!json_is_object(q) || !json_is_object(sc))
    return qv_fail(err, QV_EINVAL, "quantization_config must be {\"scalar\": {...}} (scalar int8 only)");
  json_t *type = json_object_get(sc, "type");
  if (type && (!json_is_string(type) || strcasecmp(json_string_value(type), "int8")))
    return qv_fail(err, QV_EINVAL, "quantization_config.scalar.type must be \"int8\"");
  json_t *qt = json_object_get(sc, "quantile");
  float quantile = 0;
  if (qt && !json_is_null(qt)) {
    if (!json_is_number(qt) || json_number_value(qt) <= 0.5 || json_number_value(qt) > 1)
      return qv_fail(err, QV_EINVAL, "quantization_config.scalar.quantile must be in (0.5, 1]");
    quantile = (float)json_number_value(qt);
  }
  int always_ram = 0;
  qv_status st = get_bool(sc, "always_ram", &always_ram, err);
  if (st) return st;
  out->type = QV_QUANT_INT8;
  out->quantile = quantile;
  out->always_ram = always_ram;
  return QV_OK;
}

static qv_status decode_vector_params(json_t *v, uint32_t *size, qv_distance *dist, qv_error *err) {
  size_t sz = 0;
  qv_status st = get_count(v, "size", QV_MAX_VECTOR_SIZE, &sz, err);
  if (st) return st;
  if (sz == 0) return qv_fail(err, QV_EINVAL, "vectors.size must be an integer in 1..%d", QV_MAX_VECTOR_SIZE);
  json_t *d = json_object_get(v, "distance");
  if (!json_is_string(d) || qv_distance_parse(dist, json_string_value(d)))
    return qv_fail(err, QV_EINVAL, "vectors.distance must be Cosine, Dot, Euclid or Manhattan");
  *size = (uint32_t)sz;
  return QV_OK;
}

qv_status qdrant_decode_collection(json_t *body, qv_collection_config *cfg, qv_error *err) {
  memset(cfg, 0, sizeof *cfg);
  json_t *v = json_object_get(body, "vectors");
  qv_status st;
  if (!json_is_object(v)) return qv_fail(err, QV_EINVAL, "\"vectors\" must be {size, distance} or {name: {size, distance}}");
  if (json_object_get(v, "size")) {
    if ((st = decode_vector_params(v, &cfg->size, &cfg->distance, err))) return st;
  } else {
    if (json_object_size(v) != 1)
      return qv_fail(err, QV_EINVAL, "a collection has exactly one vector (named or not); got %zu", json_object_size(v));
    const char *name = json_object_iter_key(json_object_iter(v));
    if (!*name || strlen(name) > QV_MAX_VECTOR_NAME)
      return qv_fail(err, QV_EINVAL, "a vector name must be 1..%d bytes", QV_MAX_VECTOR_NAME);
    json_t *p = json_object_iter_value(json_object_iter(v));
    if (!json_is_object(p)) return qv_fail(err, QV_EINVAL, "vectors.%s must be {size, distance}", name);
    if ((st = decode_vector_params(p, &cfg->size, &cfg->distance, err))) return st;
    snprintf(cfg->vector_name, sizeof cfg->vector_name, "%s", name);
  }
  json_t *sparse = json_object_get(body, "sparse_vectors");
  if (sparse && !json_is_null(sparse) && (!json_is_object(sparse) || json_object_size(sparse)))
    return qv_fail(err, QV_EUNSUPPORTED, "sparse vectors are not supported");
  if ((st = decode_hnsw(json_object_get(body, "hnsw_config"), &cfg->hnsw, err))) return st;
  if ((st = decode_quant(json_object_get(body, "quantization_config"), &cfg->quant, err))) return st;
  json_t *model = json_object_get(body, "model");
  if (model && !json_is_null(model)) {
    if (!json_is_string(model) || json_string_length(model) > QV_MAX_NAME)
      return qv_fail(err, QV_EINVAL, "\"model\" must be a model name");
    snprintf(cfg->model, sizeof cfg->model, "%s", json_string_value(model));
  }
  return QV_OK;
}

qv_status qdrant_decode_update(json_t *body, qv_collection_config *cfg, qv_error *err) {
  qv_status st;
  if ((st = decode_hnsw(json_object_get(body, "hnsw_config"), &cfg->hnsw, err))) return st;
  if ((st = decode_quant(json_object_get(body, "quantization_config"), &cfg->quant, err))) return st;
  json_t *v = json_object_get(body, "vectors");
  if (v && !json_is_null(v)) {
    /* Qdrant's VectorsConfigDiff: {name: {hnsw_config, quantization_config, on_disk}}. */
    if (!json_is_object(v)) return qv_fail(err, QV_EINVAL, "\"vectors\" must be an object");
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
      if (strcmp(key, cfg->vector_name)) return qv_fail(err, QV_EINVAL, "no vector named \"%.100s\"", key);
      if ((st = decode_hnsw(json_object_get(val, "hnsw_config"), &cfg->hnsw, err))) return st;
      if ((st = decode_quant(json_object_get(val, "quantization_config"), &cfg->quant, err))) return st;
    }
  }
  return QV_OK;
}

void qdrant_query_free(qdrant_query *q) {
  for (size_t i = 0; i < q->n_prefetch; i++) qdrant_query_free(&q->prefetch[i]);
  free(q->prefetch);
  free(q->vector);
  qv_filter_free(q->filter);
  memset(q, 0, sizeof *q);
}

/* The query itself: a vector, {"nearest": ...}, a point id, a Document, or a fusion. */
static qv_status decode_query_value(json_t *j, const vecjson *vt, const qv_collection_config *cfg, qdrant_query *q,
                                    qv_error *err) {
  qv_status st;
  if (!j || json_is_null(j)) return QV_OK;
  if (json_is_object(j) && json_object_get(j, "nearest")) {
    json_t *n = json_object_get(j, "nearest");
    if (json_is_object(n) && !json_object_get(n, "text") && json_object_size(n) == 1) {
      /* {"nearest": {name: vec}} is not Qdrant's shape; a named vector goes in "using". */
      return qv_fail(err, QV_EINVAL, "\"nearest\" must be a vector, a point id or a document");
    }
    return decode_query_value(n, vt, cfg, q, err);
  }
  if (json_is_object(j) && json_object_get(j, "fusion")) {
    json_t *f = json_object_get(j, "fusion");
    if (!json_is_string(f) || strcmp(json_string_value(f), "rrf"))
      return qv_fail(err, QV_EUNSUPPORTED, "fusion must be \"rrf\"");
    q->kind = QQ_RRF;
    q->rrf_k = 2;
    return QV_OK;
  }
  if (json_is_object(j) && json_object_get(j, "rrf")) {
    json_t *r = json_object_get(j, "rrf");
    size_t k = 2;
    if (json_is_object(r) && (st = get_count(r, "k", 1000000, &k, err))) return st;
    q->kind = QQ_RRF;
    q->rrf_k = k ? (int)k : 2;
    return QV_OK;
  }
  if (json_is_object(j) && json_is_string(json_object_get(j, "text")) && !vecjson_is(json_object_get(j, "text"))) {
    if ((st = decode_document(j, &q->text, &q->text_len, err))) return st;
    q->kind = QQ_TEXT;
    return QV_OK;
  }
  if (is_vector_list(j)) { /* before ids: a rewritten vector is a string */
    q->vector = malloc((size_t)cfg->size * sizeof *q->vector);
    if (!q->vector) return qv_fail(err, QV_ENOMEM, "out of memory");
    if ((st = decode_floats(vt, j, cfg->size, q->vector, err))) return st;
    q->kind = QQ_VECTOR;
    return QV_OK;
  }
  if (json_is_integer(j) || json_is_string(j)) {
    if ((st = qdrant_decode_id(j, &q->id, err))) return st;
    q->kind = QQ_ID;
    return QV_OK;
  }
  return qv_fail(err, QV_EUNSUPPORTED,
                 "query must be a vector, {\"nearest\": ...}, a point id, {\"text\": ...} or {\"fusion\": \"rrf\"}");
}

static qv_status decode_using(json_t *body, const char *key, const qv_collection_config *cfg, qv_error *err) {
  json_t *u = json_object_get(body, key);
  if (!u || json_is_null(u)) return QV_OK;
  if (!json_is_string(u)) return qv_fail(err, QV_EINVAL, "\"%s\" must be a vector name", key);
  if (strcmp(json_string_value(u), cfg->vector_name))
    return qv_fail(err, QV_EINVAL, "no vector named \"%.100s\" in this collection", json_string_value(u));
  return QV_OK;
}

static qv_status decode_with_payload(json_t *wp, qv_error *err) {
  if (!wp || json_is_null(wp) || json_is_boolean(wp)) return QV_OK;
  json_t *list = wp;
  if (json_is_object(wp)) {
    list = json_object_get(wp, "include");
    if (!list) list = json_object_get(wp, "exclude");
  }
  if (!json_is_array(list)) return qv_fail(err, QV_EINVAL, "with_payload must be true, false, a list of keys or {include|exclude: [...]}");
  for (size_t i = 0; i < json_array_size(list); i++)
    if (!json_is_string(json_array_get(list, i))) return qv_fail(err, QV_EINVAL, "with_payload keys must be strings");
  return QV_OK;
}

qv_status qdrant_decode_query(json_t *body, const vecjson *vt, const qv_collection_config *cfg, int legacy, int depth,
                              qdrant_query *q, qv_error *err) {
  memset(q, 0, sizeof *q);
  q->limit = 10;
  qv_status st;
  if (!json_is_object(body)) return qv_fail(err, QV_EINVAL, "a query must be an object");
  if (legacy) {
    json_t *v = json_object_get(body, "vector");
    if (!v) return qv_fail(err, QV_EINVAL, "missing \"vector\"");
    if (json_is_object(v) && json_object_get(v, "vector")) {
      /* NamedVector {"name", "vector"} */
      json_t *name = json_object_get(v, "name");
      if (!json_is_string(name) || strcmp(json_string_value(name), cfg->vector_name))
        return qv_fail(err, QV_EINVAL, "no vector by that name in this collection");
      v = json_object_get(v, "vector");
    }
    if (!is_vector_list(v)) return qv_fail(err, QV_EINVAL, "\"vector\" must be a list of numbers");
    if ((st = decode_query_value(v, vt, cfg, q, err))) return st;
  } else {
    if ((st = decode_query_value(json_object_get(body, "query"), vt, cfg, q, err))) return st;
    json_t *u = json_object_get(body, "using");
    /* "bm25" names the keyword index, unless the collection's vector has that name. */
    if (q->kind == QQ_TEXT && json_is_string(u) && !strcmp(json_string_value(u), "bm25") &&
        strcmp(cfg->vector_name, "bm25"))
      q->kind = QQ_KEYWORD;
    else if ((st = decode_using(body, "using", cfg, err)))
      return st;
  }
  if ((st = get_count(body, "limit", QDRANT_MAX_LIMIT, &q->limit, err)) ||
      (st = get_count(body, "offset", QDRANT_MAX_LIMIT, &q->offset, err)))
    return st;
  if (q->limit == 0) q->limit = 10;
  json_t *f = json_object_get(body, "filter");
  if (f && !json_is_null(f)) {
    if ((st = filter_from_json(&q->filter, f, err))) return st;
    q->filter_json = f;
  }
  json_t *th = json_object_get(body, "score_threshold");
  if (th && !json_is_null(th)) {
    if (!json_is_number(th) || !isfinite(json_number_value(th)) || fabs(json_number_value(th)) > 3.4e38)
      return qv_fail(err, QV_EINVAL, "score_threshold must be a number");
    q->has_threshold = 1;
    q->threshold = (float)json_number_value(th);
  }
  json_t *wp = json_object_get(body, "with_payload");
  if ((st = decode_with_payload(wp, err))) return st;
  q->with_payload = wp && !json_is_null(wp) ? wp : NULL;
  json_t *wv = json_object_get(body, "with_vector");
  if (!wv) wv = json_object_get(body, "with_vectors");
  if (wv && !json_is_null(wv)) {
    if (json_is_boolean(wv)) q->with_vector = json_is_true(wv);
    else if (json_is_array(wv)) q->with_vector = json_array_size(wv) > 0;
    else return qv_fail(err, QV_EINVAL, "with_vector must be true, false or a list of vector names");
  }
  json_t *params = json_object_get(body, "params");
  if (params && !json_is_null(params)) {
    if (!json_is_object(params)) return qv_fail(err, QV_EINVAL, "\"params\" must be an object");
    size_t ef = 0;
    if ((st = get_count(params, "hnsw_ef", 1000000, &ef, err)) || (st = get_bool(params, "exact", &q->exact, err))) {
      qv_error_prefix(err, "params");
      return st;
    }
    q->hnsw_ef = (uint32_t)ef;
  }
  json_t *pf = json_object_get(body, "prefetch");
  if (!legacy && pf && !json_is_null(pf)) {
    if (depth >= QDRANT_MAX_PREFETCH_DEPTH) return qv_fail(err, QV_EINVAL, "prefetch nested too deeply");
    size_t n = json_is_array(pf) ? json_array_size(pf) : 1;
    if (!json_is_array(pf) && !json_is_object(pf)) return qv_fail(err, QV_EINVAL, "prefetch must be an object or a list");
    if (n > 64) return qv_fail(err, QV_EINVAL, "at most 64 prefetches");
    q->prefetch = calloc(n ? n : 1, sizeof *q->prefetch);
    if (!q->prefetch) return qv_fail(err, QV_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
      st = qdrant_decode_query(json_is_array(pf) ? json_array_get(pf, i) : pf, vt, cfg, 0, depth + 1, &q->prefetch[i],
                               err);
      q->n_prefetch = i + 1;
      if (st) {
        qv_error_prefix(err, "prefetch[%zu]", i);
        return st;
      }
    }
  }
  if (q->kind == QQ_RRF && !q->n_prefetch) return qv_fail(err, QV_EINVAL, "fusion needs a prefetch list");
  return QV_OK;
}

/* ---- output --------------------------------------------------------------------------- */

/* The payload as the selector asks (NULL selector = def), or NULL to leave it out. */
static json_t *payload_json(const char *text, json_t *sel, int def) {
  int on = sel ? !json_is_false(sel) : def;
  if (!on) return NULL;
  json_t *p = text ? json_loads(text, 0, NULL) : NULL;
  if (!p) p = json_object();
  if (!sel || json_is_boolean(sel)) return p;
  json_t *inc = json_is_array(sel) ? sel : json_object_get(sel, "include");
  json_t *exc = json_is_object(sel) ? json_object_get(sel, "exclude") : NULL;
  if (inc) {
    json_t *out = json_object();
    for (size_t i = 0; i < json_array_size(inc); i++) {
      const char *k = json_string_value(json_array_get(inc, i));
      json_t *v = k ? json_object_get(p, k) : NULL;
      if (v) json_object_set(out, k, v);
    }
    json_decref(p);
    return out;
  }
  for (size_t i = 0; i < json_array_size(exc); i++) {
    const char *k = json_string_value(json_array_get(exc, i));
    if (k) json_object_del(p, k);
  }
  return p;
}

static json_t *vector_json(const float *v, const qv_collection_config *cfg) {
  json_t *a = json_array();
  for (uint32_t i = 0; i < cfg->size; i++) json_array_append_new(a, json_real(v[i]));
  if (!cfg->vector_name[0]) return a;
  json_t *o = json_object();
  json_object_set_new(o, cfg->vector_name, a);
  return o;
}

json_t *qdrant_id_json(const qv_point_id *id) {
  if (id->kind == QV_ID_NUM) return json_integer((json_int_t)id->num);
  char buf[40];
  qv_point_id_format(id, buf);
  return json_string(buf);
}

static json_t *record_json(const qv_record *r, const qv_collection_config *cfg, json_t *sel, int def_payload,
                           int scored) {
  json_t *o = json_object();
  json_object_set_new(o, "id", qdrant_id_json(&r->id));
  if (scored) {
    json_object_set_new(o, "version", json_integer(0));
    json_object_set_new(o, "score", json_real(r->score));
  }
  json_t *p = payload_json(r->payload, sel, def_payload);
  if (p) json_object_set_new(o, "payload", p);
  if (r->vector) json_object_set_new(o, "vector", vector_json(r->vector, cfg));
  return o;
}

static json_t *records_json(const qv_records *rs, const qv_collection_config *cfg, json_t *sel, int def_payload,
                            int scored) {
  json_t *a = json_array();
  for (size_t i = 0; i < rs->count; i++) json_array_append_new(a, record_json(&rs->items[i], cfg, sel, def_payload, scored));
  return a;
}

/* ---- handler plumbing ----------------------------------------------------------------- */

/* With vectors, the body's vector lists arrive as one string each (vecjson.h): only for
 * routes that read every vector through decode_floats. A body that does not parse then is
 * parsed again as sent, so the error names the client's own line and column. */
static json_t *parse_body(http_req *r, http_resp *w, double t0, vecjson *vt) {
  char why[256];
  json_t *j = NULL;
  size_t len;
  char *fast = vt && r->body_len ? vecjson_rewrite(r->body, r->body_len, &len, vt) : NULL;
  if (fast) {
    j = json_loadb(fast, len, JSON_REJECT_DUPLICATES, NULL);
    free(fast);
    if (j && !json_is_object(j)) {
      json_decref(j);
      j = NULL;
    }
    if (!j) vecjson_free(vt);
  }
  if (!j) j = http_parse_body(r, 0, why, sizeof why);
  if (!j) qdrant_error(w, 400, t0, "%s", why);
  return j;
}

json_t *qdrant_body(http_req *r, http_resp *w, double t0) { return parse_body(r, w, t0, NULL); }

/* An optional body: {} when empty. */
static json_t *body_opt(http_req *r, http_resp *w, double t0) {
  if (r->body_len == 0) return json_object();
  return qdrant_body(r, w, t0);
}

static qv_collection *open_coll(http_req *r, http_resp *w, double t0, qv_collection_config *cfg) {
  qv_collection *c = NULL;
  qv_error err = {0};
  qv_status st = qv_collection_open(r->srv->db, r->params[0], &c, &err);
  if (st == QV_NOTFOUND) {
    qdrant_error(w, 404, t0, "Not found: Collection `%.200s` doesn't exist!", r->params[0]);
    return NULL;
  }
  if (st) {
    qdrant_fail(w, st, &err, t0);
    return NULL;
  }
  if (cfg) qv_collection_config_get(c, cfg);
  return c;
}

static json_t *update_result(qv_collection *c) {
  return json_pack("{s:I,s:s}", "operation_id", (json_int_t)qv_collection_version(c), "status", "completed");
}

/* Embeds n texts with the server's model into out (n, cfg->size). */
static qv_status embed_texts(server *s, const qv_collection_config *cfg, const char *const *texts, const size_t *lens,
                             size_t n, float *out, qv_error *err) {
  if (!s->embed_batcher) return qv_fail(err, QV_ENOMODEL, "no embedding model is loaded; start the server with --model");
  qv_model_info mi;
  qv_model_info_get(s->model, &mi);
  if (cfg->model[0] && strcmp(cfg->model, mi.name) && strcmp(cfg->model, s->cfg.model))
    return qv_fail(err, QV_EINVAL, "the collection's model is %s; this server has %s loaded", cfg->model, mi.name);
  if ((uint32_t)mi.dims != cfg->size)
    return qv_fail(err, QV_EDIM, "model %s makes %d-dimensional vectors; the collection's have %u", mi.name, mi.dims,
                   cfg->size);
  return batcher_encode(s->embed_batcher, texts, lens, n, s->cfg.truncate, out, err);
}

/* ---- collections ---------------------------------------------------------------------- */

static void root(http_req *r, http_resp *w) {
  (void)r;
  http_reply_json(w, 200, json_pack("{s:s,s:s,s:s}", "title", "qdrant - vector search engine", "version",
                                    QDRANT_COMPAT_VERSION, "quiver_version", QV_VERSION));
}

static void list_collections(http_req *r, http_resp *w) {
  double t0 = server_now();
  char **names = NULL;
  size_t n = 0;
  qv_error err = {0};
  qv_status st = qv_collection_list(r->srv->db, &names, &n, &err);
  if (st) return qdrant_fail(w, st, &err, t0);
  json_t *a = json_array();
  for (size_t i = 0; i < n; i++) {
    json_array_append_new(a, json_pack("{s:s}", "name", names[i]));
    free(names[i]);
  }
  free(names);
  qdrant_ok(w, json_pack("{s:o}", "collections", a), t0);
}

static void create_collection(http_req *r, http_resp *w) {
  double t0 = server_now();
  json_t *b = body_opt(r, w, t0);
  if (!b) return;
  qv_collection_config cfg;
  qv_error err = {0};
  qv_status st = qdrant_decode_collection(b, &cfg, &err);
  if (!st) st = qv_collection_create(r->srv->db, r->params[0], &cfg, &err);
  json_decref(b);
  if (st == QV_EXISTS) return qdrant_error(w, 409, t0, "Wrong input: Collection `%.200s` already exists!", r->params[0]);
  if (st) return qdrant_fail(w, st, &err, t0);
  qdrant_ok(w, json_true(), t0);
}

static void delete_collection(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_error err = {0};
  qv_collection *c;
  if (qv_collection_open(r->srv->db, r->params[0], &c, NULL) == QV_OK) docs_forget(r->srv, c);
  qv_status st = qv_collection_delete(r->srv->db, r->params[0], &err);
  if (st == QV_NOTFOUND) return qdrant_ok(w, json_false(), t0);
  if (st) return qdrant_fail(w, st, &err, t0);
  qdrant_ok(w, json_true(), t0);
}

static void collection_exists(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_collection *c = NULL;
  qv_error err = {0};
  qv_status st = qv_collection_open(r->srv->db, r->params[0], &c, &err);
  if (st && st != QV_NOTFOUND && st != QV_ENAME) return qdrant_fail(w, st, &err, t0);
  qdrant_ok(w, json_pack("{s:b}", "exists", st == QV_OK), t0);
}

static json_t *config_json(const qv_collection_config *cfg) {
  json_t *vp = json_pack("{s:i,s:s}", "size", (int)cfg->size, "distance", qv_distance_name(cfg->distance));
  json_t *vectors = vp;
  if (cfg->vector_name[0]) {
    vectors = json_object();
    json_object_set_new(vectors, cfg->vector_name, vp);
  }
  json_t *quant = json_null();
  if (cfg->quant.type == QV_QUANT_INT8) {
    quant = json_pack("{s:{s:s,s:b}}", "scalar", "type", "int8", "always_ram", cfg->quant.always_ram);
    if (cfg->quant.quantile > 0)
      json_object_set_new(json_object_get(quant, "scalar"), "quantile", json_real(cfg->quant.quantile));
  }
  json_t *params = json_pack("{s:o,s:i,s:i,s:i,s:b}", "vectors", vectors, "shard_number", 1, "replication_factor", 1,
                             "write_consistency_factor", 1, "on_disk_payload", 1);
  if (cfg->model[0]) json_object_set_new(params, "model", json_string(cfg->model));
  return json_pack(
      "{s:o,s:{s:i,s:i,s:i,s:i,s:b},s:{s:f,s:i,s:i,s:n,s:n,s:i,s:i,s:n},s:{s:i,s:i},s:o}", "params", params,
      "hnsw_config", "m", (int)(cfg->hnsw.m ? cfg->hnsw.m : 16), "ef_construct",
      (int)(cfg->hnsw.ef_construct ? cfg->hnsw.ef_construct : 100), "full_scan_threshold",
      (int)(cfg->hnsw.full_scan_threshold ? cfg->hnsw.full_scan_threshold : 10000), "max_indexing_threads", 0,
      "on_disk", 0, "optimizer_config", "deleted_threshold", 0.2, "vacuum_min_vector_number", 1000,
      "default_segment_number", 0, "max_segment_size", "memmap_threshold", "indexing_threshold", 20000,
      "flush_interval_sec", 5, "max_optimization_threads", "wal_config", "wal_capacity_mb", 32, "wal_segments_ahead",
      0, "quantization_config", quant);
}

static void collection_info(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_collection_config cfg;
  qv_collection *c = open_coll(r, w, t0, &cfg);
  if (!c) return;
  qv_collection_stats stats;
  qv_collection_stats_get(c, &stats);
  qdrant_ok(w,
     json_pack("{s:s,s:s,s:I,s:I,s:I,s:i,s:o,s:{}}", "status", stats.indexing ? "yellow" : "green",
               "optimizer_status", "ok", "vectors_count", (json_int_t)stats.points, "indexed_vectors_count",
               (json_int_t)stats.indexed, "points_count", (json_int_t)stats.points, "segments_count", 1, "config",
               config_json(&cfg), "payload_schema"),
     t0);
}

static void update_collection(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_collection_config cfg;
  qv_collection *c = open_coll(r, w, t0, &cfg);
  if (!c) return;
  json_t *b = body_opt(r, w, t0);
  if (!b) return;
  qv_error err = {0};
  qv_status st = qdrant_decode_update(b, &cfg, &err);
  json_decref(b);
  if (!st) st = qv_collection_update_config(c, &cfg, &err);
  if (st) return qdrant_fail(w, st, &err, t0);
  qdrant_ok(w, json_true(), t0);
}

/* PUT /collections/{name}/index: filters work without payload indexes, so creating one
 * is accepted and changes nothing. */
static void create_index(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_collection *c = open_coll(r, w, t0, NULL);
  if (!c) return;
  json_t *b = qdrant_body(r, w, t0);
  if (!b) return;
  int good = json_is_string(json_object_get(b, "field_name"));
  json_decref(b);
  if (!good) return qdrant_error(w, 400, t0, "\"field_name\" must be a string");
  qdrant_ok(w, update_result(c), t0);
}

/* ---- points --------------------------------------------------------------------------- */

static void upsert(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_collection_config cfg;
  qv_collection *c = open_coll(r, w, t0, &cfg);
  if (!c) return;
  vecjson vt;
  json_t *b = parse_body(r, w, t0, &vt);
  if (!b) return;
  qdrant_points pts;
  qv_error err = {0};
  qv_point *pv = NULL;
  float *tv = NULL;
  qv_status st = qdrant_decode_points(b, &vt, &cfg, r->srv->cfg.max_batch, &pts, &err);
  vecjson_free(&vt);
  if (st) goto done;
  if (pts.n_texts) {
    tv = malloc(pts.n_texts * cfg.size * sizeof *tv);
    if (!tv) {
      st = qv_fail(&err, QV_ENOMEM, "out of memory");
      goto done;
    }
    if ((st = embed_texts(r->srv, &cfg, pts.texts, pts.text_lens, pts.n_texts, tv, &err))) goto done;
    for (size_t i = 0; i < pts.n_texts; i++)
      memcpy(pts.vectors + pts.text_rows[i] * cfg.size, tv + i * cfg.size, cfg.size * sizeof *tv);
  }
  pv = calloc(pts.n ? pts.n : 1, sizeof *pv);
  if (!pv) {
    st = qv_fail(&err, QV_ENOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < pts.n; i++) {
    pv[i].id = pts.ids[i];
    pv[i].vector = pts.vectors + i * cfg.size;
    pv[i].payload = pts.payloads[i];
  }
  st = qv_collection_upsert(c, pv, pts.n, &err);
done:
  free(pv);
  free(tv);
  qdrant_points_free(&pts);
  json_decref(b);
  if (st) return qdrant_fail(w, st, &err, t0);
  qdrant_ok(w, update_result(c), t0);
}

static void retrieve(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_collection_config cfg;
  qv_collection *c = open_coll(r, w, t0, &cfg);
  if (!c) return;
  json_t *b = qdrant_body(r, w, t0);
  if (!b) return;
  qv_error err = {0};
  qv_point_id *ids = NULL;
  size_t n = 0;
  int wv = 0;
  json_t *wp = json_object_get(b, "with_payload");
  json_t *wvj = json_object_get(b, "with_vector");
  qv_records rs = {0};
  qv_status st = decode_ids(json_object_get(b, "ids"), r->srv->cfg.max_batch, &ids, &n, &err);
  if (!st) st = decode_with_payload(wp, &err);
  if (!st && wvj && !json_is_null(wvj)) {
    if (json_is_boolean(wvj)) wv = json_is_true(wvj);
    else if (json_is_array(wvj)) wv = json_array_size(wvj) > 0;
    else st = qv_fail(&err, QV_EINVAL, "with_vector must be true, false or a list of names");
  }
  if (!st) st = qv_collection_get(c, ids, n, 1, wv, &rs, &err);
  if (!st) qdrant_ok(w, records_json(&rs, &cfg, json_is_null(wp) ? NULL : wp, 1, 0), t0);
  else qdrant_fail(w, st, &err, t0);
  qv_records_free(&rs);
  free(ids);
  json_decref(b);
}

static void get_point(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_collection_config cfg;
  qv_collection *c = open_coll(r, w, t0, &cfg);
  if (!c) return;
  qv_point_id id;
  if (qv_point_id_parse(&id, r->params[1])) return qdrant_error(w, 400, t0, "a point id must be an unsigned integer or a UUID");
  qv_records rs = {0};
  qv_error err = {0};
  qv_status st = qv_collection_get(c, &id, 1, 1, 1, &rs, &err);
  if (st) return qdrant_fail(w, st, &err, t0);
  if (rs.count == 0) qdrant_error(w, 404, t0, "Not found: No point with id %.100s found", r->params[1]);
  else qdrant_ok(w, record_json(&rs.items[0], &cfg, NULL, 1, 0), t0);
  qv_records_free(&rs);
}

/* A points selector: {"points": [ids]} or {"filter": {...}} (either may be absent for
 * payload ops that then apply to every point only when allow_all). */
static qv_status decode_selector(json_t *b, size_t max, qv_point_id **ids, size_t *n, qv_filter **f, int allow_all,
                                 qv_error *err) {
  *ids = NULL;
  *n = 0;
  *f = NULL;
  json_t *p = json_object_get(b, "points"), *fj = json_object_get(b, "filter");
  if (p && !json_is_null(p)) {
    /* {"points": {"filter": ...}} is Qdrant's FilterSelector nested form too. */
    if (json_is_object(p) && json_object_get(p, "filter")) fj = json_object_get(p, "filter");
    else return decode_ids(p, max, ids, n, err);
  }
  if (fj && !json_is_null(fj)) {
    return filter_from_json(f, fj, err);
  }
  if (!allow_all) return qv_fail(err, QV_EINVAL, "give \"points\" (a list of ids) or \"filter\"");
  return QV_OK;
}

static void delete_points(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_collection *c = open_coll(r, w, t0, NULL);
  if (!c) return;
  json_t *b = qdrant_body(r, w, t0);
  if (!b) return;
  qv_point_id *ids;
  size_t n, deleted = 0;
  qv_filter *f;
  qv_error err = {0};
  qv_status st = decode_selector(b, r->srv->cfg.max_batch, &ids, &n, &f, 0, &err);
  if (!st) st = f ? qv_collection_delete_filter(c, f, &deleted, &err) : qv_collection_delete_ids(c, ids, n, &deleted, &err);
  free(ids);
  qv_filter_free(f);
  json_decref(b);
  if (st) return qdrant_fail(w, st, &err, t0);
  qdrant_ok(w, update_result(c), t0);
}

static void payload_op(http_req *r, http_resp *w, int mode /* 0 set, 1 overwrite, 2 delete keys, 3 clear */) {
  double t0 = server_now();
  qv_collection *c = open_coll(r, w, t0, NULL);
  if (!c) return;
  json_t *b = qdrant_body(r, w, t0);
  if (!b) return;
  qv_point_id *ids = NULL;
  size_t n = 0;
  qv_filter *f = NULL;
  qv_error err = {0};
  char *payload = NULL;
  const char **keys = NULL;
  qv_status st = decode_selector(b, r->srv->cfg.max_batch, &ids, &n, &f, mode != 3, &err);
  if (st) goto done;
  if (json_object_get(b, "key") && !json_is_null(json_object_get(b, "key"))) {
    st = qv_fail(&err, QV_EUNSUPPORTED, "\"key\" (a nested payload path) is not supported");
    goto done;
  }
  int all = !ids && !f; /* no selector: every point */
  if (mode <= 1 || mode == 3) {
    json_t *p = mode == 3 ? NULL : json_object_get(b, "payload");
    if (mode != 3 && !json_is_object(p)) {
      st = qv_fail(&err, QV_EINVAL, "\"payload\" must be a JSON object");
      goto done;
    }
    payload = p ? json_dumps(p, JSON_COMPACT) : strdup("{}");
    if (!payload) {
      st = qv_fail(&err, QV_ENOMEM, "out of memory");
      goto done;
    }
    st = qv_collection_set_payload(c, all ? NULL : ids, n, f, payload,
                                   mode == 0 ? QV_PAYLOAD_SET : QV_PAYLOAD_OVERWRITE, NULL, &err);
  } else {
    json_t *k = json_object_get(b, "keys");
    if (!json_is_array(k)) {
      st = qv_fail(&err, QV_EINVAL, "\"keys\" must be a list of payload keys");
      goto done;
    }
    size_t nk = json_array_size(k);
    keys = calloc(nk ? nk : 1, sizeof *keys);
    if (!keys) {
      st = qv_fail(&err, QV_ENOMEM, "out of memory");
      goto done;
    }
    for (size_t i = 0; i < nk; i++) {
      keys[i] = json_string_value(json_array_get(k, i));
      if (!keys[i]) {
        st = qv_fail(&err, QV_EINVAL, "keys[%zu] must be a string", i);
        goto done;
      }
    }
    st = qv_collection_delete_payload(c, all ? NULL : ids, n, f, keys, nk, NULL, &err);
  }
done:
  free(keys);
  free(payload);
  free(ids);
  qv_filter_free(f);
  json_decref(b);
  if (st) return qdrant_fail(w, st, &err, t0);
  qdrant_ok(w, update_result(c), t0);
}

static void set_payload(http_req *r, http_resp *w) { payload_op(r, w, 0); }
static void overwrite_payload(http_req *r, http_resp *w) { payload_op(r, w, 1); }
static void delete_payload(http_req *r, http_resp *w) { payload_op(r, w, 2); }
static void clear_payload(http_req *r, http_resp *w) { payload_op(r, w, 3); }

static void scroll(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_collection_config cfg;
  qv_collection *c = open_coll(r, w, t0, &cfg);
  if (!c) return;
  json_t *b = body_opt(r, w, t0);
  if (!b) return;
  qv_error err = {0};
  qv_records rs = {0};
  qv_point_id off, next;
  int has_off = 0, has_next = 0, wv = 0;
  size_t limit = 10;
  qv_filter *f = NULL;
  json_t *oj = json_object_get(b, "offset"), *fj = json_object_get(b, "filter"), *wp = json_object_get(b, "with_payload");
  json_t *wvj = json_object_get(b, "with_vector");
  qv_status st = get_count(b, "limit", QDRANT_MAX_LIMIT, &limit, &err);
  if (!st && json_object_get(b, "order_by") && !json_is_null(json_object_get(b, "order_by")))
    st = qv_fail(&err, QV_EUNSUPPORTED, "order_by is not supported; scroll is in id order");
  if (!st && oj && !json_is_null(oj)) {
    st = qdrant_decode_id(oj, &off, &err);
    has_off = 1;
  }
  if (!st) st = decode_with_payload(wp, &err);
  if (!st && wvj && !json_is_null(wvj)) {
    if (json_is_boolean(wvj)) wv = json_is_true(wvj);
    else if (json_is_array(wvj)) wv = json_array_size(wvj) > 0;
    else st = qv_fail(&err, QV_EINVAL, "with_vector must be true, false or a list of names");
  }
  if (!st && fj && !json_is_null(fj)) {
    st = filter_from_json(&f, fj, &err);
  }
  if (!st && limit == 0) limit = 10;
  if (!st) st = qv_collection_scroll(c, has_off ? &off : NULL, limit, f, 1, wv, &rs, &next, &has_next, &err);
  if (!st)
    qdrant_ok(w,
       json_pack("{s:o,s:o}", "points", records_json(&rs, &cfg, json_is_null(wp) ? NULL : wp, 1, 0), "next_page_offset",
                 has_next ? qdrant_id_json(&next) : json_null()),
       t0);
  else qdrant_fail(w, st, &err, t0);
  qv_records_free(&rs);
  qv_filter_free(f);
  json_decref(b);
}

static void count(http_req *r, http_resp *w) {
  double t0 = server_now();
  qv_collection *c = open_coll(r, w, t0, NULL);
  if (!c) return;
  json_t *b = body_opt(r, w, t0);
  if (!b) return;
  qv_error err = {0};
  qv_filter *f = NULL;
  size_t n = 0;
  json_t *fj = json_object_get(b, "filter");
  int exact = 1;
  qv_status st = get_bool(b, "exact", &exact, &err);
  if (!st && fj && !json_is_null(fj)) {
    st = filter_from_json(&f, fj, &err);
  }
  if (!st) st = qv_collection_count(c, f, &n, &err);
  qv_filter_free(f);
  json_decref(b);
  if (st) return qdrant_fail(w, st, &err, t0);
  qdrant_ok(w, json_pack("{s:I}", "count", (json_int_t)n), t0);
}

/* ---- query ---------------------------------------------------------------------------- */

static int id_cmp(const qv_point_id *a, const qv_point_id *b) {
  if (a->kind != b->kind) return a->kind < b->kind ? -1 : 1;
  if (a->kind == QV_ID_NUM) return a->num < b->num ? -1 : a->num > b->num;
  return memcmp(a->uuid, b->uuid, 16);
}

static int rec_id_cmp(const void *x, const void *y) {
  return id_cmp(&((const qv_record *)x)->id, &((const qv_record *)y)->id);
}

static int rec_score_desc(const void *x, const void *y) {
  float a = ((const qv_record *)x)->score, b = ((const qv_record *)y)->score;
  if (a != b) return a > b ? -1 : 1;
  return rec_id_cmp(x, y);
}

static int wants_payload(const qdrant_query *q) { return q->with_payload && !json_is_false(q->with_payload); }

static qv_status run_query(server *s, qv_collection *c, const qv_collection_config *cfg, qdrant_query *q,
                           int top, qv_records *out, qv_error *err);

/* Runs the prefetches; out gets one candidate list per prefetch (ids and scores). */
static qv_status run_prefetch(server *s, qv_collection *c, const qv_collection_config *cfg, qdrant_query *q,
                              qv_records *lists, qv_error *err) {
  for (size_t i = 0; i < q->n_prefetch; i++) {
    qv_status st = run_query(s, c, cfg, &q->prefetch[i], 0, &lists[i], err);
    if (st) {
      qv_error_prefix(err, "prefetch[%zu]", i);
      return st;
    }
  }
  return QV_OK;
}

/* Reciprocal rank fusion: score(p) = sum over lists of 1 / (k + rank), rank from 1. */
static qv_status fuse_rrf(qv_records *lists, size_t nl, int k, qv_records *out, qv_error *err) {
  size_t total = 0;
  for (size_t i = 0; i < nl; i++) total += lists[i].count;
  qv_record *all = calloc(total ? total : 1, sizeof *all);
  if (!all) return qv_fail(err, QV_ENOMEM, "out of memory");
  size_t n = 0;
  for (size_t i = 0; i < nl; i++)
    for (size_t j = 0; j < lists[i].count; j++) {
      all[n].id = lists[i].items[j].id;
      all[n++].score = 1.0f / (float)(k + (int)j + 1);
    }
  qsort(all, n, sizeof *all, rec_id_cmp);
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    if (m && !id_cmp(&all[m - 1].id, &all[i].id)) all[m - 1].score += all[i].score;
    else all[m++] = all[i];
  }
  qsort(all, m, sizeof *all, rec_score_desc);
  out->items = all;
  out->count = m;
  return QV_OK;
}

/* Fills payloads / vectors of rs from the store, as q asks. */
static qv_status fill_records(qv_collection *c, qdrant_query *q, qv_records *rs, qv_error *err) {
  if (!rs->count || (!wants_payload(q) && !q->with_vector)) return QV_OK;
  qv_point_id *ids = calloc(rs->count, sizeof *ids);
  if (!ids) return qv_fail(err, QV_ENOMEM, "out of memory");
  for (size_t i = 0; i < rs->count; i++) ids[i] = rs->items[i].id;
  qv_records got = {0};
  qv_status st = qv_collection_get(c, ids, rs->count, wants_payload(q), q->with_vector, &got, err);
  free(ids);
  if (st) return st;
  /* get returns the ids that still exist, in the order asked. */
  size_t j = 0;
  for (size_t i = 0; i < rs->count && j < got.count; i++) {
    if (id_cmp(&rs->items[i].id, &got.items[j].id)) continue;
    rs->items[i].payload = got.items[j].payload;
    rs->items[i].vector = got.items[j].vector;
    got.items[j].payload = NULL;
    got.items[j].vector = NULL;
    j++;
  }
  qv_records_free(&got);
  return QV_OK;
}

/* Keeps items [offset, offset + limit) of rs. */
static void window(qv_records *rs, size_t offset, size_t limit) {
  size_t keep_from = offset < rs->count ? offset : rs->count;
  size_t keep_to = keep_from + limit < rs->count ? keep_from + limit : rs->count;
  for (size_t i = 0; i < rs->count; i++)
    if (i < keep_from || i >= keep_to) {
      free(rs->items[i].payload);
      free(rs->items[i].vector);
    }
  memmove(rs->items, rs->items + keep_from, (keep_to - keep_from) * sizeof *rs->items);
  rs->count = keep_to - keep_from;
}

/* Runs one query. top = 1 for the request's own level (payloads and vectors as asked);
 * prefetches only need ids and scores. */
static qv_status run_query(server *s, qv_collection *c, const qv_collection_config *cfg, qdrant_query *q, int top,
                           qv_records *out, qv_error *err) {
  qv_status st = QV_OK;
  memset(out, 0, sizeof *out);
  qv_records *lists = NULL;
  qv_filter *cand = NULL;
  float *vec = NULL;
  if (q->n_prefetch) {
    lists = calloc(q->n_prefetch, sizeof *lists);
    if (!lists) return qv_fail(err, QV_ENOMEM, "out of memory");
    if ((st = run_prefetch(s, c, cfg, q, lists, err))) goto done;
  }
  if (q->kind == QQ_RRF) {
    if ((st = fuse_rrf(lists, q->n_prefetch, q->rrf_k, out, err))) goto done;
    if (q->has_threshold) {
      size_t m = 0;
      while (m < out->count && out->items[m].score >= q->threshold) m++;
      out->count = m;
    }
    window(out, q->offset, q->limit);
    if (top) st = fill_records(c, q, out, err);
    goto done;
  }
  if (q->kind == QQ_NONE) {
    if (q->n_prefetch == 1) {
      *out = lists[0];
      memset(&lists[0], 0, sizeof lists[0]);
      window(out, q->offset, q->limit);
      if (top) st = fill_records(c, q, out, err);
      goto done;
    }
    if (q->n_prefetch) {
      st = qv_fail(err, QV_EINVAL, "with several prefetches, give a query or a fusion");
      goto done;
    }
    /* No query: points in id order, as Qdrant does. */
    qv_point_id next;
    int has_next;
    st = qv_collection_scroll(c, NULL, q->offset + q->limit, q->filter, top && wants_payload(q), top && q->with_vector,
                              out, &next, &has_next, err);
    if (!st) window(out, q->offset, q->limit);
    goto done;
  }
  if (q->kind == QQ_KEYWORD) {
    if (q->n_prefetch) {
      st = qv_fail(err, QV_EUNSUPPORTED, "a bm25 query takes no prefetch yet");
      goto done;
    }
    if ((st = docs_keyword_search(s, c, q->text, q->text_len, q->offset + q->limit, q->filter, out, err)))
      goto done;
    size_t m = 0;
    while (q->has_threshold && m < out->count && out->items[m].score >= q->threshold) m++;
    if (q->has_threshold) out->count = m;
    window(out, q->offset, q->limit);
    if (top) st = fill_records(c, q, out, err);
    goto done;
  }
  /* A vector to search with. */
  const float *qv = q->vector;
  if (q->kind == QQ_TEXT) {
    vec = malloc(cfg->size * sizeof *vec);
    if (!vec) {
      st = qv_fail(err, QV_ENOMEM, "out of memory");
      goto done;
    }
    const char *t = q->text;
    if ((st = embed_texts(s, cfg, &t, &q->text_len, 1, vec, err))) goto done;
    qv = vec;
  } else if (q->kind == QQ_ID) {
    qv_records got = {0};
    if ((st = qv_collection_get(c, &q->id, 1, 0, 1, &got, err))) goto done;
    if (!got.count) {
      qv_records_free(&got);
      char idt[40];
      qv_point_id_format(&q->id, idt);
      st = qv_fail(err, QV_NOTFOUND, "Not found: No point with id %s found", idt);
      goto done;
    }
    vec = got.items[0].vector;
    got.items[0].vector = NULL;
    qv_records_free(&got);
    qv = vec;
  }
  const qv_filter *filter = q->filter;
  if (q->n_prefetch) {
    /* Rescoring: the search is restricted to the prefetched candidates with has_id. */
    json_t *ids = json_array();
    for (size_t i = 0; i < q->n_prefetch; i++)
      for (size_t j = 0; j < lists[i].count; j++) json_array_append_new(ids, qdrant_id_json(&lists[i].items[j].id));
    json_t *must = json_pack("[{s:o}]", "has_id", ids);
    if (q->filter_json) json_array_append(must, q->filter_json);
    json_t *fj = json_pack("{s:o}", "must", must);
    st = fj ? filter_from_json(&cand, fj, err) : qv_fail(err, QV_ENOMEM, "out of memory");
    json_decref(fj);
    if (st) goto done;
    filter = cand;
  }
  size_t extra = q->kind == QQ_ID ? 1 : 0;
  qv_search_params p = {
      .limit = q->limit + q->offset + extra,
      .offset = 0,
      .filter = filter,
      .has_score_threshold = q->has_threshold,
      .score_threshold = q->threshold,
      .with_payload = top && wants_payload(q),
      .with_vector = top && q->with_vector,
      .hnsw_ef = q->hnsw_ef,
      .exact = q->exact,
  };
  if ((st = qv_collection_search(c, qv, 1, &p, out, err))) goto done;
  if (extra) {
    /* The query point itself is not a result. */
    for (size_t i = 0; i < out->count; i++)
      if (!id_cmp(&out->items[i].id, &q->id)) {
        free(out->items[i].payload);
        free(out->items[i].vector);
        memmove(out->items + i, out->items + i + 1, (out->count - i - 1) * sizeof *out->items);
        out->count--;
        break;
      }
  }
  window(out, q->offset, q->limit);
done:
  for (size_t i = 0; lists && i < q->n_prefetch; i++) qv_records_free(&lists[i]);
  free(lists);
  free(vec);
  qv_filter_free(cand);
  if (st) qv_records_free(out);
  return st;
}

/* POST .../points/query, .../query/batch, .../search, .../search/batch. */
static void query_common(http_req *r, http_resp *w, int legacy, int batch) {
  double t0 = server_now();
  qv_collection_config cfg;
  qv_collection *c = open_coll(r, w, t0, &cfg);
  if (!c) return;
  vecjson vt;
  json_t *b = parse_body(r, w, t0, &vt);
  if (!b) return;
  qv_error err = {0};
  qv_status st = QV_OK;
  json_t *reqs = b, *result = json_array();
  size_t n = 1;
  if (batch) {
    reqs = json_object_get(b, "searches");
    if (!json_is_array(reqs)) {
      st = qv_fail(&err, QV_EINVAL, "\"searches\" must be a list of requests");
      goto done;
    }
    n = json_array_size(reqs);
    if (n > r->srv->cfg.max_batch) {
      st = qv_fail(&err, QV_EINVAL, "%zu searches; the limit per request is %zu", n, r->srv->cfg.max_batch);
      goto done;
    }
  }
  for (size_t i = 0; i < n && !st; i++) {
    qdrant_query q;
    qv_records rs = {0};
    st = qdrant_decode_query(batch ? json_array_get(reqs, i) : reqs, &vt, &cfg, legacy, 0, &q, &err);
    if (!st) st = run_query(r->srv, c, &cfg, &q, 1, &rs, &err);
    if (!st) {
      json_t *pts = records_json(&rs, &cfg, q.with_payload, 0, 1);
      if (legacy && !batch) {
        json_decref(result);
        result = pts;
      } else if (legacy) {
        json_array_append_new(result, pts);
      } else if (batch) {
        json_array_append_new(result, json_pack("{s:o}", "points", pts));
      } else {
        json_decref(result);
        result = json_pack("{s:o}", "points", pts);
      }
    } else if (batch) {
      qv_error_prefix(&err, "searches[%zu]", i);
    }
    qv_records_free(&rs);
    qdrant_query_free(&q);
  }
done:
  json_decref(b);
  vecjson_free(&vt);
  if (st) {
    json_decref(result);
    return qdrant_fail(w, st, &err, t0);
  }
  qdrant_ok(w, result, t0);
}

static void query(http_req *r, http_resp *w) { query_common(r, w, 0, 0); }
static void query_batch(http_req *r, http_resp *w) { query_common(r, w, 0, 1); }
static void search(http_req *r, http_resp *w) { query_common(r, w, 1, 0); }
static void search_batch(http_req *r, http_resp *w) { query_common(r, w, 1, 1); }

#define W HTTP_ROUTE_WRITE
const http_route qdrant_routes[] = {
    {"GET", "/", root, HTTP_ROUTE_OPEN, "qdrant_root"},
    {"GET", "/collections", list_collections, 0, "qdrant_list_collections"},
    {"GET", "/collections/{name}", collection_info, 0, "qdrant_collection_info"},
    {"PUT", "/collections/{name}", create_collection, W, "qdrant_create_collection"},
    {"DELETE", "/collections/{name}", delete_collection, W | HTTP_ROUTE_EXCLUSIVE, "qdrant_delete_collection"},
    {"PATCH", "/collections/{name}", update_collection, W, "qdrant_update_collection"},
    {"GET", "/collections/{name}/exists", collection_exists, 0, "qdrant_collection_exists"},
    {"PUT", "/collections/{name}/index", create_index, W, "qdrant_create_index"},
    {"PUT", "/collections/{name}/points", upsert, W, "qdrant_upsert"},
    {"POST", "/collections/{name}/points", retrieve, 0, "qdrant_get_points"},
    {"POST", "/collections/{name}/points/delete", delete_points, W, "qdrant_delete_points"},
    {"POST", "/collections/{name}/points/scroll", scroll, 0, "qdrant_scroll"},
    {"POST", "/collections/{name}/points/count", count, 0, "qdrant_count"},
    {"POST", "/collections/{name}/points/payload", set_payload, W, "qdrant_set_payload"},
    {"PUT", "/collections/{name}/points/payload", overwrite_payload, W, "qdrant_overwrite_payload"},
    {"POST", "/collections/{name}/points/payload/delete", delete_payload, W, "qdrant_delete_payload"},
    {"POST", "/collections/{name}/points/payload/clear", clear_payload, W, "qdrant_clear_payload"},
    {"POST", "/collections/{name}/points/query", query, 0, "qdrant_query"},
    {"POST", "/collections/{name}/points/query/batch", query_batch, 0, "qdrant_query_batch"},
    {"POST", "/collections/{name}/points/search", search, 0, "qdrant_search"},
    {"POST", "/collections/{name}/points/search/batch", search_batch, 0, "qdrant_search_batch"},
    {"GET", "/collections/{name}/points/{id}", get_point, 0, "qdrant_get_point"},
    {0},
};
#undef W
