/* Shared plumbing of the embedding surfaces: see embed_api.h. */
#define _GNU_SOURCE
#include "server/embed_api.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "server/batcher.h"
#include "server/server.h"

int embedapi_truncate(const server *s, const json_t *v) {
  if (!v || json_is_null(v)) return s->cfg.truncate ? 1 : 0;
  if (!json_is_boolean(v)) return -1;
  return json_is_true(v) ? 1 : 0;
}

qv_status embedapi_texts(const server *s, const json_t *v, const char *field, const char ***texts, size_t **lens,
                         size_t *n, qv_error *err) {
  *texts = NULL;
  *lens = NULL;
  *n = 0;
  size_t count = json_is_string(v) ? 1 : json_is_array(v) ? json_array_size(v) : 0;
  if (count == 0)
    return qv_fail(err, QV_EINVAL, "`%s` must be a string or a non-empty array of strings", field);
  if (s->cfg.max_batch && count > s->cfg.max_batch)
    return qv_fail(err, QV_ERANGE, "`%s` holds %zu items; at most %zu are allowed per request", field, count,
                   s->cfg.max_batch);
  *texts = malloc(count * sizeof **texts);
  *lens = malloc(count * sizeof **lens);
  if (!*texts || !*lens) return qv_fail(err, QV_ENOMEM, "out of memory");
  for (size_t i = 0; i < count; i++) {
    const json_t *t = json_is_string(v) ? v : json_array_get(v, i);
    if (!json_is_string(t)) return qv_fail(err, QV_EINVAL, "`%s`[%zu] must be a string", field, i);
    (*texts)[i] = json_string_value(t);
    (*lens)[i] = json_string_length(t);
  }
  *n = count;
  return QV_OK;
}

qv_status embedapi_encode(server *s, const char *const *texts, const size_t *lens, size_t n, int truncate, float **out,
                          size_t *tokens, qv_error *err) {
  *out = NULL;
  if (tokens) *tokens = 0;
  if (!s->model) return qv_fail(err, QV_ENOMODEL, "no embedding model is loaded");
  qv_model_info info;
  qv_model_info_get(s->model, &info);
  float *v = malloc((n ? n : 1) * (size_t)info.dims * sizeof *v);
  if (!v) return qv_fail(err, QV_ENOMEM, "out of memory for %zu embeddings", n);
  qv_status st;
  if (s->embed_batcher) {
    st = batcher_encode_tokens(s->embed_batcher, texts, lens, n, truncate, v, tokens, err);
  } else {
    st = qv_model_encode(s->model, texts, lens, n, truncate, v, err);
    if (!st && tokens) {
      for (size_t i = 0; i < n && !st; i++) {
        size_t t;
        st = qv_model_count_tokens(s->model, texts[i], lens ? lens[i] : strlen(texts[i]), &t, err);
        *tokens += t < (size_t)info.max_tokens ? t : (size_t)info.max_tokens;
      }
    }
  }
  if (st) {
    free(v);
    return st;
  }
  *out = v;
  return QV_OK;
}

qv_status embedapi_rerank(server *s, const char *query, const char *const *docs, size_t n, int truncate, float *logits,
                          qv_error *err) {
  if (!s->reranker) return qv_fail(err, QV_ENOMODEL, "no reranker is loaded (start the server with --reranker)");
  if (s->rerank_batcher) return batcher_rerank(s->rerank_batcher, query, docs, n, truncate, logits, err);
  return qv_model_rerank(s->reranker, query, docs, n, truncate, logits, err);
}

/* A post-processor special token such as [CLS]: "[...]" that maps back to its own id. */
static int is_special(const qv_tokenizer *t, int32_t id, const char *piece) {
  size_t n = strlen(piece);
  return n > 2 && piece[0] == '[' && piece[n - 1] == ']' && tok_id(t, piece) == id;
}

qv_status embedapi_decode_ids(server *s, const int64_t *ids, size_t n, char **text, qv_error *err) {
  *text = NULL;
  if (!s->model) return qv_fail(err, QV_ENOMODEL, "no embedding model is loaded");
  const qv_tokenizer *t = model_tokenizer(s->model);
  size_t cap = 1;
  for (size_t i = 0; i < n; i++) {
    const char *p = ids[i] >= 0 && ids[i] <= INT32_MAX ? tok_token(t, (int32_t)ids[i]) : NULL;
    if (!p) return qv_fail(err, QV_ERANGE, "token id %lld at position %zu is not in the model's vocabulary", (long long)ids[i], i);
    cap += strlen(p) + 1;
  }
  char *out = malloc(cap), *w = out;
  if (!out) return qv_fail(err, QV_ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) {
    const char *p = tok_token(t, (int32_t)ids[i]);
    if (is_special(t, (int32_t)ids[i], p)) continue;
    if (strncmp(p, "##", 2) == 0 && w > out) {
      p += 2;
    } else if (w > out) {
      *w++ = ' ';
    }
    size_t k = strlen(p);
    memcpy(w, p, k);
    w += k;
  }
  *w = '\0';
  *text = out;
  return QV_OK;
}

/* Where piece starts in text at or after *at: ASCII case-insensitive, skipping whitespace
 * and at most 8 other bytes (accents the normalizer strips, control chars it cleans). */
static int find_piece(const char *text, size_t len, size_t at, const char *piece, size_t *start) {
  size_t k = strlen(piece);
  if (k == 0) return 0;
  size_t other = 0;
  for (size_t p = at; p + k <= len; p++) {
    size_t i = 0;
    while (i < k && tolower((unsigned char)text[p + i]) == tolower((unsigned char)piece[i])) i++;
    if (i == k) {
      *start = p;
      return 1;
    }
    if (!isspace((unsigned char)text[p]) && ++other > 8) return 0;
  }
  return 0;
}

qv_status embedapi_tokenize(server *s, const char *text, size_t len, int add_special, embedapi_token **toks, size_t *n,
                            qv_error *err) {
  *toks = NULL;
  *n = 0;
  if (!s->model) return qv_fail(err, QV_ENOMODEL, "no embedding model is loaded");
  const qv_tokenizer *t = model_tokenizer(s->model);
  tok_encoding e = {0};
  qv_status st = tok_encode(t, text, len, NULL, 0, 0, &e, err);
  if (st) return st;
  embedapi_token *out = calloc(e.len ? e.len : 1, sizeof *out);
  if (!out) {
    tok_encoding_free(&e);
    return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  size_t k = 0, at = 0;
  for (size_t i = 0; i < e.len; i++) {
    const char *p = tok_token(t, e.ids[i]);
    if (!p) p = "";
    int special = is_special(t, e.ids[i], p);
    if (special && !add_special) continue;
    embedapi_token *o = &out[k++];
    o->id = e.ids[i];
    o->text = p;
    o->special = special;
    o->start = o->stop = special ? (i == 0 ? 0 : len) : at;
    if (special) continue;
    const char *piece = strncmp(p, "##", 2) == 0 ? p + 2 : p;
    size_t st0;
    if (find_piece(text, len, at, piece, &st0)) {
      o->start = st0;
      o->stop = st0 + strlen(piece);
      at = o->stop;
    } else {
      /* an [UNK] or a piece the normalizer rewrote: it spans up to the next space */
      size_t p0 = at;
      while (p0 < len && isspace((unsigned char)text[p0])) p0++;
      size_t p1 = p0;
      while (p1 < len && !isspace((unsigned char)text[p1])) p1++;
      o->start = p0;
      o->stop = p1;
      at = p1;
    }
  }
  tok_encoding_free(&e);
  *toks = out;
  *n = k;
  return QV_OK;
}

/* ---- request schemas for /openapi.json ---------------------------------------------------- */

#define STR "{\"type\":\"string\"}"
#define BOOL "{\"type\":\"boolean\"}"
#define STRS "{\"type\":\"array\",\"items\":" STR "}"
#define STR_OR_STRS "{\"oneOf\":[" STR "," STRS "]}"
#define IDS "{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}"

static const struct {
  const char *route, *schema;
} body_schemas[] = {
    {"openai_embeddings",
     "{\"type\":\"object\",\"required\":[\"input\"],\"properties\":{\"input\":{\"oneOf\":[" STR "," STRS "," IDS
     ",{\"type\":\"array\",\"items\":" IDS "}]},\"model\":" STR ",\"encoding_format\":{\"enum\":[\"float\",\"base64\"]},"
     "\"dimensions\":{\"type\":\"integer\"},\"user\":" STR ",\"truncate\":" BOOL "}}"},
    {"openai_rerank",
     "{\"type\":\"object\",\"required\":[\"query\",\"documents\"],\"properties\":{\"query\":" STR
     ",\"documents\":{\"type\":\"array\",\"items\":{\"oneOf\":[" STR ",{\"type\":\"object\",\"required\":[\"text\"],"
     "\"properties\":{\"text\":" STR "}}]}},\"top_n\":{\"type\":\"integer\",\"minimum\":1},\"return_documents\":" BOOL
     ",\"model\":" STR ",\"truncate\":" BOOL "}}"},
    {"tei_embed",
     "{\"type\":\"object\",\"required\":[\"inputs\"],\"properties\":{\"inputs\":" STR_OR_STRS ",\"normalize\":" BOOL
     ",\"truncate\":" BOOL "}}"},
    {"tei_rerank",
     "{\"type\":\"object\",\"required\":[\"query\",\"texts\"],\"properties\":{\"query\":" STR ",\"texts\":" STRS
     ",\"raw_scores\":" BOOL ",\"return_text\":" BOOL ",\"truncate\":" BOOL "}}"},
    {"tei_tokenize",
     "{\"type\":\"object\",\"required\":[\"inputs\"],\"properties\":{\"inputs\":" STR_OR_STRS
     ",\"add_special_tokens\":" BOOL "}}"},
    {"legacy_generate",
     "{\"type\":\"object\",\"properties\":{\"text\":" STR ",\"texts\":" STRS ",\"truncate\":" BOOL "}}"},
    {"legacy_batch", "{\"type\":\"object\",\"required\":[\"texts\"],\"properties\":{\"texts\":" STRS
                     ",\"truncate\":" BOOL "}}"},
    {"legacy_search",
     "{\"type\":\"object\",\"required\":[\"query\",\"collection\"],\"properties\":{\"query\":" STR
     ",\"collection\":" STR ",\"top_k\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":10000},"
     "\"filter\":{\"type\":\"object\"},\"truncate\":" BOOL "}}"},
    {"legacy_index_add",
     "{\"type\":\"object\",\"required\":[\"collection\",\"documents\"],\"properties\":{\"collection\":" STR
     ",\"documents\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"required\":[\"text\"],\"properties\":{"
     "\"id\":{\"oneOf\":[{\"type\":\"integer\",\"minimum\":0},{\"type\":\"string\",\"format\":\"uuid\"}]},"
     "\"text\":" STR ",\"metadata\":{\"type\":\"object\"}}}},\"truncate\":" BOOL "}}"},
};

const char *embedapi_body_schema(const char *route) {
  for (size_t i = 0; route && i < sizeof body_schemas / sizeof body_schemas[0]; i++)
    if (strcmp(body_schemas[i].route, route) == 0) return body_schemas[i].schema;
  return NULL;
}
