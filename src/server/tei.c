/* The surface of Hugging Face text-embeddings-inference (TEI): POST /embed, /rerank,
 * /tokenize, GET /info, /health, so TEI clients (huggingface_hub's InferenceClient,
 * LangChain's HuggingFaceEndpointEmbeddings, plain HTTP) work against Quiver.
 *
 * Errors are TEI's {"error": "...", "error_type": "..."} with its status codes: 413 for an
 * input over the model's limit without truncation, 422 for validation, 429 when the
 * batcher's queue is full, 424 when the model fails, 503 when no model is loaded.
 *
 * Two things differ from TEI and say so in their errors: normalize=false is refused for a
 * model whose pipeline ends in Normalize (the model API returns its pipeline's output),
 * and /tokenize's start/stop offsets are recovered by aligning the vocabulary's pieces
 * with the input (the tokenizer does not track offsets): exact for text the normalizer
 * leaves alone apart from case, and best effort (the enclosing word) where it rewrites
 * characters (accents, [UNK]). */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "index/distance.h"
#include "server/embed_api.h"
#include "server/http.h"
#include "server/server.h"

static void tei_error(http_resp *w, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void tei_error(http_resp *w, int status, const char *type, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  http_reply_json(w, status, json_pack("{s:s, s:s}", "error", msg, "error_type", type));
  if (status == 429) w->retry_after = 1;
}

static void tei_fail(http_resp *w, qv_status st, const qv_error *err) {
  const char *msg = err->msg[0] ? err->msg : qv_strerror(st);
  /* http_status_of's rule, with TEI's names for two of its answers: 422 for bad input,
   * 424 for a backend failure */
  switch (http_status_of(st)) {
  case 413: tei_error(w, 413, "Validation", "%s", msg); break;
  case 429: tei_error(w, 429, "Overloaded", "%s", msg); break;
  case 400: tei_error(w, 422, "Tokenizer", "%s", msg); break;
  case 503: tei_error(w, 503, "Unhealthy", "%s", msg); break;
  case 404: tei_error(w, 404, "Validation", "%s", msg); break;
  default: tei_error(w, 424, "Backend", "%s", msg); break;
  }
}

/* TEI parses the body itself and answers 422 for JSON it cannot read. */
static json_t *tei_body(http_req *r, http_resp *w) {
  char why[256];
  json_t *j = http_parse_body(r, 0, why, sizeof why);
  if (!j) tei_error(w, 422, "Validation", "%s", why);
  return j;
}

/* `inputs` as borrowed strings: a string or a non-empty array of strings. */
static int tei_inputs(server *s, json_t *body, const char *field, http_resp *w, const char ***texts, size_t **lens,
                      size_t *n) {
  json_t *in = json_object_get(body, field);
  qv_error err = {0};
  qv_status st = embedapi_texts(s, in, field, texts, lens, n, &err);
  if (st == QV_ENOMEM) tei_fail(w, st, &err);
  else if (st) tei_error(w, 422, json_is_array(in) && json_array_size(in) == 0 ? "Empty" : "Validation", "%s", err.msg);
  return st ? -1 : 0;
}

static int tei_bool(json_t *body, const char *field, int dflt, http_resp *w) {
  json_t *v = json_object_get(body, field);
  if (!v || json_is_null(v)) return dflt;
  if (!json_is_boolean(v)) {
    tei_error(w, 422, "Validation", "`%s` must be a boolean", field);
    return -1;
  }
  return json_is_true(v);
}

static int tei_truncate(server *s, json_t *body, http_resp *w) {
  int t = embedapi_truncate(s, json_object_get(body, "truncate"));
  if (t < 0) tei_error(w, 422, "Validation", "`truncate` must be a boolean");
  return t;
}

static void embed(http_req *r, http_resp *w) {
  server *s = r->srv;
  json_t *body = tei_body(r, w);
  if (!body) return;
  const char **texts = NULL;
  size_t *lens = NULL, n = 0;
  float *vecs = NULL;
  int normalize, truncate;
  if (tei_inputs(s, body, "inputs", w, &texts, &lens, &n)) goto done;
  if ((normalize = tei_bool(body, "normalize", 1, w)) < 0) goto done;
  if ((truncate = tei_truncate(s, body, w)) < 0) goto done;
  if (!s->model) {
    tei_error(w, 503, "Unhealthy", "no embedding model is loaded");
    goto done;
  }
  qv_model_info info;
  qv_model_info_get(s->model, &info);
  if (!normalize && info.normalize) {
    tei_error(w, 422, "Validation",
              "normalize=false is not available: %s's pipeline ends in Normalize, so its embeddings are unit length",
              info.name);
    goto done;
  }
  qv_error err = {0};
  qv_status st = embedapi_encode(s, texts, lens, n, truncate, &vecs, NULL, &err);
  if (st) {
    tei_fail(w, st, &err);
    goto done;
  }
  json_t *out = json_array();
  for (size_t i = 0; i < n; i++) {
    float *v = vecs + i * (size_t)info.dims;
    if (normalize && !info.normalize) dist_normalize(v, (size_t)info.dims);
    json_t *row = json_array();
    for (int c = 0; c < info.dims; c++) json_array_append_new(row, json_real(v[c]));
    json_array_append_new(out, row);
  }
  http_reply_json(w, 200, out);
done:
  free(vecs);
  free(texts);
  free(lens);
  json_decref(body);
}

static int by_score_desc(const void *a, const void *b) {
  const float *x = *(const float *const *)a, *y = *(const float *const *)b;
  return *x > *y ? -1 : *x < *y ? 1 : x < y ? -1 : x > y;
}

static void rerank(http_req *r, http_resp *w) {
  server *s = r->srv;
  json_t *body = tei_body(r, w);
  if (!body) return;
  const char **texts = NULL;
  size_t *lens = NULL, n = 0;
  float *logits = NULL;
  const float **order = NULL;
  int raw, return_text, truncate;
  json_t *query = json_object_get(body, "query");
  if (!json_is_string(query)) {
    tei_error(w, 422, "Validation", "`query` must be a string");
    goto done;
  }
  if (tei_inputs(s, body, "texts", w, &texts, &lens, &n)) goto done;
  if ((raw = tei_bool(body, "raw_scores", 0, w)) < 0) goto done;
  if ((return_text = tei_bool(body, "return_text", 0, w)) < 0) goto done;
  if ((truncate = tei_truncate(s, body, w)) < 0) goto done;
  logits = malloc(n * sizeof *logits);
  order = malloc(n * sizeof *order);
  if (!logits || !order) {
    tei_error(w, 500, "Backend", "out of memory");
    goto done;
  }
  qv_error err = {0};
  qv_status st = embedapi_rerank(s, json_string_value(query), texts, n, truncate, logits, &err);
  if (st) {
    tei_fail(w, st, &err);
    goto done;
  }
  for (size_t i = 0; i < n; i++) order[i] = &logits[i];
  qsort(order, n, sizeof *order, by_score_desc);
  json_t *out = json_array();
  for (size_t k = 0; k < n; k++) {
    size_t i = (size_t)(order[k] - logits);
    double score = raw ? (double)logits[i] : 1.0 / (1.0 + exp(-(double)logits[i]));
    json_t *item = json_pack("{s:I, s:f}", "index", (json_int_t)i, "score", score);
    if (return_text) json_object_set_new(item, "text", json_string(texts[i]));
    json_array_append_new(out, item);
  }
  http_reply_json(w, 200, out);
done:
  free(texts);
  free(lens);
  free(logits);
  free(order);
  json_decref(body);
}

static void tokenize(http_req *r, http_resp *w) {
  server *s = r->srv;
  json_t *body = tei_body(r, w);
  if (!body) return;
  const char **texts = NULL;
  size_t *lens = NULL, n = 0;
  int special;
  json_t *out = NULL;
  if (tei_inputs(s, body, "inputs", w, &texts, &lens, &n)) goto done;
  if ((special = tei_bool(body, "add_special_tokens", 1, w)) < 0) goto done;
  out = json_array();
  for (size_t i = 0; i < n; i++) {
    embedapi_token *toks;
    size_t k;
    qv_error err = {0};
    qv_status st = embedapi_tokenize(s, texts[i], lens[i], special, &toks, &k, &err);
    if (st) {
      qv_error_prefix(&err, "input %zu", i);
      tei_fail(w, st, &err);
      goto done;
    }
    json_t *row = json_array();
    for (size_t t = 0; t < k; t++)
      json_array_append_new(row, json_pack("{s:I, s:s, s:b, s:I, s:I}", "id", (json_int_t)toks[t].id, "text",
                                           toks[t].text, "special", toks[t].special, "start",
                                           (json_int_t)toks[t].start, "stop", (json_int_t)toks[t].stop));
    free(toks);
    json_array_append_new(out, row);
  }
  http_reply_json(w, 200, out);
  out = NULL;
done:
  json_decref(out);
  free(texts);
  free(lens);
  json_decref(body);
}

static void info(http_req *r, http_resp *w) {
  server *s = r->srv;
  qv_model *m = s->model ? s->model : s->reranker;
  if (!m) {
    tei_error(w, 503, "Unhealthy", "no model is loaded");
    return;
  }
  qv_model_info mi;
  qv_model_info_get(m, &mi);
  json_t *type;
  if (mi.kind == QV_MODEL_EMBEDDING) {
    const char *pool = mi.pooling == QV_POOL_CLS ? "cls" : mi.pooling == QV_POOL_MAX ? "max" : "mean";
    type = json_pack("{s:{s:s}}", "embedding", "pooling", pool);
  } else {
    type = json_pack("{s:{s:{s:s}}}", "reranker", "id2label", "0", "LABEL_0");
  }
  json_t *j = json_pack("{s:s, s:n, s:s, s:o, s:I, s:I, s:I, s:I, s:b, s:s}", "model_id", mi.name, "model_sha",
                        "model_dtype", "float32", "model_type", type, "max_concurrent_requests",
                        (json_int_t)(s->cfg.max_queue ? s->cfg.max_queue : 1024), "max_input_length",
                        (json_int_t)mi.max_tokens, "max_batch_tokens",
                        (json_int_t)(s->cfg.batch_tokens ? s->cfg.batch_tokens : 4096), "max_client_batch_size",
                        (json_int_t)(s->cfg.max_batch ? s->cfg.max_batch : 1024), "auto_truncate",
                        s->cfg.truncate ? 1 : 0, "version", QV_VERSION);
  if (j && s->model && s->reranker) {
    qv_model_info ri;
    qv_model_info_get(s->reranker, &ri);
    json_object_set_new(j, "reranker_id", json_string(ri.name));
  }
  http_reply_json(w, 200, j);
}

static void health(http_req *r, http_resp *w) {
  server *s = r->srv;
  if (!s->model && !s->reranker) {
    tei_error(w, 503, "Unhealthy", "no model is loaded");
    return;
  }
  http_reply_text(w, 200, "text/plain", "", 0);
}

const http_route tei_routes[] = {
    {"POST", "/embed", embed, HTTP_ROUTE_MODEL, "tei_embed"},
    {"POST", "/rerank", rerank, HTTP_ROUTE_MODEL, "tei_rerank"},
    {"POST", "/tokenize", tokenize, 0, "tei_tokenize"},
    {"GET", "/info", info, 0, "tei_info"},
    {"GET", "/health", health, HTTP_ROUTE_OPEN, "tei_health"},
    {0},
};

/* Request and response shapes, for the OpenAPI document (also in docs/api.md):
 *
 * POST /embed     {"inputs": string | [string], "normalize"?: bool (true), "truncate"?: bool}
 *   200 [[float]]
 * POST /rerank    {"query": string, "texts": [string], "raw_scores"?: bool (false),
 *                  "return_text"?: bool (false), "truncate"?: bool}
 *   200 [{"index": int, "score": float, "text"?: string}]   (highest score first)
 * POST /tokenize  {"inputs": string | [string], "add_special_tokens"?: bool (true)}
 *   200 [[{"id": int, "text": string, "special": bool, "start": int, "stop": int}]]
 * GET /info
 *   200 {"model_id": string, "model_sha": null, "model_dtype": "float32",
 *        "model_type": {"embedding": {"pooling": string}} | {"reranker": {...}},
 *        "max_concurrent_requests": int, "max_input_length": int, "max_batch_tokens": int,
 *        "max_client_batch_size": int, "auto_truncate": bool, "version": string,
 *        "reranker_id"?: string}
 * GET /health     200 (empty body) | 503
 * Errors          {"error": string, "error_type": "Validation" | "Empty" | "Tokenizer" |
 *                  "Overloaded" | "Backend" | "Unhealthy"} with 413/422/424/429/503
 */
