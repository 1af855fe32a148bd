/* The OpenAI-compatible surface: POST /v1/embeddings, GET /v1/models, and POST /v1/rerank
 * in the Cohere/Jina shape. Errors use OpenAI's envelope
 * {"error": {"message", "type", "param", "code"}} so the official clients raise their
 * usual exceptions.
 *
 * Inputs may be a string, an array of strings, an array of token ids, or an array of
 * token-id arrays (what tiktoken-based clients send). Token ids are turned back into text
 * with the model's vocabulary (embedapi_decode_ids) and embedded like any text: the model
 * API takes text, and for WordPiece the text re-tokenizes to the same ids.
 *
 * Truncation is the same on every embedding route: the request's `truncate` (an extension
 * OpenAI lacks), else the server default; without it an over-long input is 413 naming the
 * model's limit and the input's token count. */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "server/embed_api.h"
#include "server/http.h"
#include "server/server.h"

static void oai_error(http_resp *w, int status, const char *type, const char *param, const char *code,
                      const char *msg) {
  json_t *e = json_pack("{s:s, s:s, s:o, s:o}", "message", msg, "type", type, "param",
                        param ? json_string(param) : json_null(), "code", code ? json_string(code) : json_null());
  http_reply_json(w, status, json_pack("{s:o}", "error", e));
  if (status == 429) w->retry_after = 1;
}

static void oai_fail(http_resp *w, qv_status st, const qv_error *err) {
  int status = http_status_of(st);
  const char *type = status == 429 ? "rate_limit_error" : status >= 500 ? "server_error" : "invalid_request_error";
  const char *code = st == QV_ETOOLONG ? "context_length_exceeded" : st == QV_EBUSY ? "overloaded"
                     : st == QV_ENOMODEL ? "model_not_loaded" : NULL;
  oai_error(w, status, type, st == QV_ETOOLONG || st == QV_EINVAL || st == QV_ERANGE ? "input" : NULL, code,
            err->msg[0] ? err->msg : qv_strerror(st));
}

/* Whether a request's `model` names the loaded model: its folder name, the configured
 * name or path, an "org/name" id ending in it, "default", or one of OpenAI's
 * text-embedding-* names (so clients with a hard-wired default work unchanged). */
static int model_matches(const server *s, const char *want, const char *name) {
  size_t nl = strlen(name), wl = strlen(want);
  return strcmp(want, name) == 0 || strcmp(want, s->cfg.model) == 0 || strcmp(want, "default") == 0 ||
         strncmp(want, "text-embedding-", 15) == 0 ||
         (wl > nl && want[wl - nl - 1] == '/' && strcmp(want + wl - nl, name) == 0);
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The floats as little-endian float32 bytes in base64, as OpenAI's API returns them. */
static char *base64_floats(const float *v, size_t n) {
  size_t bytes = n * 4, olen = (bytes + 2) / 3 * 4;
  unsigned char *raw = malloc(bytes ? bytes : 1);
  char *out = malloc(olen + 1);
  if (!raw || !out) {
    free(raw);
    free(out);
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &v[i], 4);
    raw[i * 4] = (unsigned char)u;
    raw[i * 4 + 1] = (unsigned char)(u >> 8);
    raw[i * 4 + 2] = (unsigned char)(u >> 16);
    raw[i * 4 + 3] = (unsigned char)(u >> 24);
  }
  size_t o = 0;
  for (size_t i = 0; i < bytes; i += 3) {
    uint32_t x = (uint32_t)raw[i] << 16;
    if (i + 1 < bytes) x |= (uint32_t)raw[i + 1] << 8;
    if (i + 2 < bytes) x |= raw[i + 2];
    out[o++] = B64[(x >> 18) & 63];
    out[o++] = B64[(x >> 12) & 63];
    out[o++] = i + 1 < bytes ? B64[(x >> 6) & 63] : '=';
    out[o++] = i + 2 < bytes ? B64[x & 63] : '=';
  }
  out[o] = '\0';
  free(raw);
  return out;
}

/* Reads a token-id array into a malloc'd int64 array; 0 when an element is not an integer. */
static int64_t *read_ids(const json_t *arr, size_t *n) {
  *n = json_array_size(arr);
  int64_t *ids = malloc((*n ? *n : 1) * sizeof *ids);
  if (!ids) return NULL;
  for (size_t i = 0; i < *n; i++) {
    json_t *v = json_array_get(arr, i);
    if (!json_is_integer(v)) {
      free(ids);
      return NULL;
    }
    ids[i] = (int64_t)json_integer_value(v);
  }
  return ids;
}

/* The texts of `input`: strdup'd or decoded from ids. Replies and returns -1 on bad input. */
static int read_input(server *s, const json_t *input, http_resp *w, char ***texts, size_t *n) {
  *texts = NULL;
  *n = 0;
  char msg[256];
  if (json_is_string(input)) {
    *texts = malloc(sizeof **texts);
    if (!*texts || !((*texts)[0] = strndup(json_string_value(input), json_string_length(input)))) goto oom;
    *n = 1;
    return 0;
  }
  if (!json_is_array(input) || json_array_size(input) == 0) {
    oai_error(w, 400, "invalid_request_error", "input", NULL,
              "'input' must be a non-empty string, array of strings, array of token ids or array of token-id arrays");
    return -1;
  }
  if (s->cfg.max_batch && json_array_size(input) > s->cfg.max_batch &&
      !json_is_integer(json_array_get(input, 0))) {
    snprintf(msg, sizeof msg, "'input' holds %zu items; at most %zu are allowed per request",
             json_array_size(input), s->cfg.max_batch);
    oai_error(w, 400, "invalid_request_error", "input", NULL, msg);
    return -1;
  }
  json_t *first = json_array_get(input, 0);
  size_t count = json_is_integer(first) ? 1 : json_array_size(input);
  *texts = calloc(count, sizeof **texts);
  if (!*texts) goto oom;
  *n = count;
  if (json_is_integer(first)) {
    size_t k;
    int64_t *ids = read_ids(input, &k);
    if (!ids) {
      oai_error(w, 400, "invalid_request_error", "input", NULL, "'input' mixes token ids with other values");
      return -1;
    }
    qv_error err = {0};
    qv_status st = embedapi_decode_ids(s, ids, k, &(*texts)[0], &err);
    free(ids);
    if (st) {
      oai_fail(w, st, &err);
      return -1;
    }
    return 0;
  }
  for (size_t i = 0; i < count; i++) {
    json_t *v = json_array_get(input, i);
    if (json_is_string(v)) {
      if (!((*texts)[i] = strndup(json_string_value(v), json_string_length(v)))) goto oom;
    } else if (json_is_array(v) && json_array_size(v) > 0) {
      size_t k;
      int64_t *ids = read_ids(v, &k);
      if (!ids) {
        snprintf(msg, sizeof msg, "'input'[%zu] must be an array of integer token ids", i);
        oai_error(w, 400, "invalid_request_error", "input", NULL, msg);
        return -1;
      }
      qv_error err = {0};
      qv_status st = embedapi_decode_ids(s, ids, k, &(*texts)[i], &err);
      free(ids);
      if (st) {
        qv_error_prefix(&err, "input %zu", i);
        oai_fail(w, st, &err);
        return -1;
      }
    } else {
      snprintf(msg, sizeof msg, "'input'[%zu] must be a string or a non-empty array of token ids", i);
      oai_error(w, 400, "invalid_request_error", "input", NULL, msg);
      return -1;
    }
  }
  return 0;
oom:
  oai_error(w, 500, "server_error", NULL, NULL, "out of memory");
  return -1;
}

static void free_texts(char **texts, size_t n) {
  if (!texts) return;
  for (size_t i = 0; i < n; i++) free(texts[i]);
  free(texts);
}

static void embeddings(http_req *r, http_resp *w) {
  server *s = r->srv;
  json_t *body = http_body_json(r, w, 0);
  if (!body) return;
  char **texts = NULL;
  size_t n = 0;
  float *vecs = NULL;
  json_t *data = NULL;
  char msg[512];
  qv_model_info info = {0};
  if (!s->model) {
    oai_error(w, 503, "server_error", NULL, "model_not_loaded", "no embedding model is loaded");
    goto done;
  }
  qv_model_info_get(s->model, &info);
  json_t *model = json_object_get(body, "model");
  if (model && !json_is_null(model)) {
    if (!json_is_string(model)) {
      oai_error(w, 400, "invalid_request_error", "model", NULL, "'model' must be a string");
      goto done;
    }
    if (!model_matches(s, json_string_value(model), info.name)) {
      snprintf(msg, sizeof msg, "The model `%.200s` does not exist; this server embeds with `%s`",
               json_string_value(model), info.name);
      oai_error(w, 404, "invalid_request_error", "model", "model_not_found", msg);
      goto done;
    }
  }
  int base64 = 0;
  json_t *fmt = json_object_get(body, "encoding_format");
  if (fmt && !json_is_null(fmt)) {
    const char *f = json_is_string(fmt) ? json_string_value(fmt) : "";
    if (strcmp(f, "base64") == 0) {
      base64 = 1;
    } else if (strcmp(f, "float") != 0) {
      oai_error(w, 400, "invalid_request_error", "encoding_format", NULL,
                "'encoding_format' must be \"float\" or \"base64\"");
      goto done;
    }
  }
  json_t *dims = json_object_get(body, "dimensions");
  if (dims && !json_is_null(dims) && (!json_is_integer(dims) || json_integer_value(dims) != info.dims)) {
    snprintf(msg, sizeof msg, "'dimensions' must be %d: %s gives %d-dimensional embeddings and does not shorten them",
             info.dims, info.name, info.dims);
    oai_error(w, 400, "invalid_request_error", "dimensions", NULL, msg);
    goto done;
  }
  int truncate = embedapi_truncate(s, json_object_get(body, "truncate"));
  if (truncate < 0) {
    oai_error(w, 400, "invalid_request_error", "truncate", NULL, "'truncate' must be a boolean");
    goto done;
  }
  json_t *input = json_object_get(body, "input");
  if (!input) {
    oai_error(w, 400, "invalid_request_error", "input", NULL, "'input' is required");
    goto done;
  }
  if (read_input(s, input, w, &texts, &n)) goto done;
  size_t tokens = 0;
  qv_error err = {0};
  qv_status st = embedapi_encode(s, (const char *const *)texts, NULL, n, truncate, &vecs, &tokens, &err);
  if (st) {
    oai_fail(w, st, &err);
    goto done;
  }
  data = json_array();
  for (size_t i = 0; i < n; i++) {
    const float *v = vecs + i * (size_t)info.dims;
    json_t *emb;
    if (base64) {
      char *b = base64_floats(v, (size_t)info.dims);
      emb = b ? json_string(b) : NULL;
      free(b);
    } else {
      emb = json_array();
      for (int c = 0; c < info.dims; c++) json_array_append_new(emb, json_real(v[c]));
    }
    if (!emb) {
      oai_error(w, 500, "server_error", NULL, NULL, "out of memory");
      goto done;
    }
    json_array_append_new(data, json_pack("{s:s, s:I, s:o}", "object", "embedding", "index", (json_int_t)i,
                                          "embedding", emb));
  }
  http_reply_json(w, 200,
                  json_pack("{s:s, s:o, s:s, s:{s:I, s:I}}", "object", "list", "data", data, "model", info.name,
                            "usage", "prompt_tokens", (json_int_t)tokens, "total_tokens", (json_int_t)tokens));
  data = NULL;
done:
  json_decref(data);
  free(vecs);
  free_texts(texts, n);
  json_decref(body);
}

static void models(http_req *r, http_resp *w) {
  server *s = r->srv;
  json_t *data = json_array();
  qv_model *ms[2] = {s->model, s->reranker};
  for (int i = 0; i < 2; i++) {
    if (!ms[i]) continue;
    qv_model_info info;
    qv_model_info_get(ms[i], &info);
    json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s}", "id", info.name, "object", "model", "created",
                                          (json_int_t)0, "owned_by", "quiver"));
  }
  http_reply_json(w, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

static int by_score_desc(const void *a, const void *b) {
  const float *x = *(const float *const *)a, *y = *(const float *const *)b;
  return *x > *y ? -1 : *x < *y ? 1 : x < y ? -1 : x > y;
}

/* Sigmoid of the logit: the relevance score Cohere and Jina report, in (0, 1). */
static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

static void rerank(http_req *r, http_resp *w) {
  server *s = r->srv;
  json_t *body = http_body_json(r, w, 0);
  if (!body) return;
  const char **docs = NULL;
  float *logits = NULL;
  const float **order = NULL;
  char msg[256];
  json_t *query = json_object_get(body, "query");
  json_t *documents = json_object_get(body, "documents");
  if (!json_is_string(query)) {
    oai_error(w, 400, "invalid_request_error", "query", NULL, "'query' must be a string");
    goto done;
  }
  if (!json_is_array(documents)) {
    oai_error(w, 400, "invalid_request_error", "documents", NULL,
              "'documents' must be an array of strings or of {\"text\": ...} objects");
    goto done;
  }
  size_t n = json_array_size(documents);
  json_t *top = json_object_get(body, "top_n");
  size_t top_n = n;
  if (top && !json_is_null(top)) {
    if (!json_is_integer(top) || json_integer_value(top) < 1) {
      oai_error(w, 400, "invalid_request_error", "top_n", NULL, "'top_n' must be a positive integer");
      goto done;
    }
    if ((size_t)json_integer_value(top) < n) top_n = (size_t)json_integer_value(top);
  }
  json_t *rd = json_object_get(body, "return_documents");
  if (rd && !json_is_null(rd) && !json_is_boolean(rd)) {
    oai_error(w, 400, "invalid_request_error", "return_documents", NULL, "'return_documents' must be a boolean");
    goto done;
  }
  int return_docs = rd ? json_is_true(rd) : 0;
  int truncate = embedapi_truncate(s, json_object_get(body, "truncate"));
  if (truncate < 0) {
    oai_error(w, 400, "invalid_request_error", "truncate", NULL, "'truncate' must be a boolean");
    goto done;
  }
  docs = calloc(n ? n : 1, sizeof *docs);
  logits = calloc(n ? n : 1, sizeof *logits);
  order = calloc(n ? n : 1, sizeof *order);
  if (!docs || !logits || !order) {
    oai_error(w, 500, "server_error", NULL, NULL, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *d = json_array_get(documents, i);
    if (json_is_object(d)) d = json_object_get(d, "text");
    if (!json_is_string(d)) {
      snprintf(msg, sizeof msg, "'documents'[%zu] must be a string or an object with a string \"text\"", i);
      oai_error(w, 400, "invalid_request_error", "documents", NULL, msg);
      goto done;
    }
    docs[i] = json_string_value(d);
  }
  qv_error err = {0};
  qv_status st = embedapi_rerank(s, json_string_value(query), docs, n, truncate, logits, &err);
  if (st) {
    oai_fail(w, st, &err);
    goto done;
  }
  for (size_t i = 0; i < n; i++) order[i] = &logits[i];
  qsort(order, n, sizeof *order, by_score_desc);
  json_t *results = json_array();
  for (size_t k = 0; k < top_n; k++) {
    size_t i = (size_t)(order[k] - logits);
    json_t *item = json_pack("{s:I, s:f}", "index", (json_int_t)i, "relevance_score", sigmoid(logits[i]));
    if (return_docs) json_object_set_new(item, "document", json_pack("{s:s}", "text", docs[i]));
    json_array_append_new(results, item);
  }
  qv_model_info info;
  qv_model_info_get(s->reranker, &info);
  http_reply_json(w, 200, json_pack("{s:s, s:o}", "model", info.name, "results", results));
done:
  free(docs);
  free(logits);
  free(order);
  json_decref(body);
}

const http_route openai_routes[] = {
    {"POST", "/v1/embeddings", embeddings, HTTP_ROUTE_MODEL, "openai_embeddings"},
    {"GET", "/v1/models", models, 0, "openai_models"},
    {"POST", "/v1/rerank", rerank, HTTP_ROUTE_MODEL, "openai_rerank"},
    {0},
};

/* Request and response shapes, for the OpenAPI document (also in docs/api.md):
 *
 * POST /v1/embeddings
 *   {"input": string | [string] | [int] | [[int]], "model"?: string,
 *    "encoding_format"?: "float" | "base64", "dimensions"?: int, "user"?: string,
 *    "truncate"?: bool}
 *   200 {"object": "list", "data": [{"object": "embedding", "index": int,
 *        "embedding": [float] | base64 string}], "model": string,
 *        "usage": {"prompt_tokens": int, "total_tokens": int}}
 *   400/404/413/429/503 {"error": {"message": string, "type": string, "param": string|null,
 *        "code": string|null}}
 * GET /v1/models
 *   200 {"object": "list", "data": [{"id": string, "object": "model", "created": int,
 *        "owned_by": "quiver"}]}
 * POST /v1/rerank
 *   {"query": string, "documents": [string | {"text": string}], "top_n"?: int,
 *    "return_documents"?: bool, "model"?: string, "truncate"?: bool}
 *   200 {"model": string, "results": [{"index": int, "relevance_score": float,
 *        "document"?: {"text": string}}]}   (sorted by relevance_score, highest first)
 */
