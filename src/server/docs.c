/* Documents over HTTP: ingest text into a collection with the server's model, and query it
 * with citations (dense, hybrid by RRF with BM25, reranked), through the text layer
 * (text/ingest.h, text/retrieve.h). Replies use Qdrant's envelope, as the collection
 * routes next to them do.
 *
 *   POST /collections/{name}/documents        {"documents": [{"source", "text"}], "chunker"?,
 *                                              "max_tokens"?, "overlap"?}
 *   POST /collections/{name}/documents/query  {"query", "k"?, "hybrid"?, "rerank"?, "filter"?}
 *
 * Invariants:
 *  1. A request is validated whole before anything is written: a bad document anywhere
 *     in it stores nothing and creates no collection.
 *  2. Ingests into one server are serialized (ingest_mu): an ingester reads what the
 *     collection holds when it opens, so two at once would both see a source as new.
 *  3. One retriever per open collection handle (handles are shared and live until the
 *     collection is deleted: qv_collection_open), created on first use under docs_mu.
 *     Deleting a collection retires its retriever first (docs_forget), so a new handle
 *     that happens to get the old address never meets the old keyword index or cache;
 *     retired retrievers are freed only by docs_release, once requests have drained
 *     (http_stop), so a handler never sees a retriever freed under it.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "store/filter.h"
#include "server/docs.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/qdrant.h"
#include "server/server.h"
#include "text/ingest.h"
#include "text/retrieve.h"

#define DOCS_CACHE_ENTRIES 1024
#define DOCS_MAX_K 1000

typedef struct docs_entry {
  struct docs_entry *next;
  server *srv;
  qv_collection *c;
  text_retriever *r;
} docs_entry;

static pthread_mutex_t docs_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t ingest_mu = PTHREAD_MUTEX_INITIALIZER;
static docs_entry *docs_list;
/* Entries replaced while requests may still use them; freed by docs_release. */
static docs_entry *docs_retired;

/* Checks that the server's model can embed for c (or for a new collection when c is NULL). */
static qv_status check_model(server *s, qv_collection *c, qv_error *err) {
  if (!s->model) return qv_fail(err, QV_ENOMODEL, "no embedding model is loaded; start the server with --model");
  if (!c) return QV_OK;
  qv_model_info mi;
  qv_model_info_get(s->model, &mi);
  qv_collection_config cfg;
  qv_collection_config_get(c, &cfg);
  if (cfg.model[0] && strcmp(cfg.model, mi.name) && strcmp(cfg.model, s->cfg.model))
    return qv_fail(err, QV_EINVAL, "the collection's model is %s; this server has %s loaded", cfg.model, mi.name);
  if ((uint32_t)mi.dims != cfg.size)
    return qv_fail(err, QV_EDIM, "model %s makes %d-dimensional vectors; the collection's have %u", mi.name, mi.dims,
                   cfg.size);
  return QV_OK;
}

/* ---- retrievers ------------------------------------------------------------------------ */

/* The retriever for c, created on first use. */
static qv_status retriever_for(server *s, qv_collection *c, text_retriever **out, qv_error *err) {
  qv_status st = QV_OK;
  pthread_mutex_lock(&docs_mu);
  for (docs_entry *e = docs_list; e; e = e->next)
    if (e->srv == s && e->c == c) {
      *out = e->r;
      goto done;
    }
  docs_entry *e = calloc(1, sizeof *e);
  if (!e) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto done;
  }
  if ((st = text_retriever_open(&e->r, c, s->model, DOCS_CACHE_ENTRIES, err))) {
    free(e);
    goto done;
  }
  e->srv = s;
  e->c = c;
  e->next = docs_list;
  docs_list = e;
  *out = e->r;
done:
  pthread_mutex_unlock(&docs_mu);
  return st;
}

void docs_forget(struct server *s, qv_collection *c) {
  pthread_mutex_lock(&docs_mu);
  for (docs_entry **pp = &docs_list; *pp;) {
    docs_entry *e = *pp;
    if (e->srv != s || e->c != c) {
      pp = &e->next;
      continue;
    }
    /* A request may still hold e->r: it is freed by docs_release. */
    *pp = e->next;
    e->next = docs_retired;
    docs_retired = e;
  }
  pthread_mutex_unlock(&docs_mu);
}

static void free_list(docs_entry **list, server *s) {
  for (docs_entry **pp = list; *pp;) {
    docs_entry *e = *pp;
    if (e->srv != s) {
      pp = &e->next;
      continue;
    }
    *pp = e->next;
    text_retriever_free(e->r);
    free(e);
  }
}

void docs_release(struct server *s) {
  pthread_mutex_lock(&docs_mu);
  free_list(&docs_list, s);
  free_list(&docs_retired, s);
  pthread_mutex_unlock(&docs_mu);
}

qv_status docs_keyword_search(struct server *s, qv_collection *c, const char *text, size_t len, size_t k,
                              const qv_filter *filter, qv_records *out, qv_error *err) {
  text_retriever *r;
  memset(out, 0, sizeof *out);
  qv_status st = check_model(s, c, err);
  if (!st) st = retriever_for(s, c, &r, err);
  if (!st) st = text_retrieve_keyword(r, text, len, k, filter, out, err);
  return st;
}

/* ---- ingest ---------------------------------------------------------------------------- */

/* The chunking options of a request; max_tokens defaults as `quiver ingest` does. */
static qv_status decode_chunking(json_t *b, int model_max, text_chunk_config *cc, qv_error *err) {
  *cc = (text_chunk_config){.kind = TEXT_CHUNK_STRUCTURE, .size = 200, .min = 64, .max = 254};
  long long lim = model_max > 2 ? model_max - 2 : 1000000;
  if (cc->max > lim) cc->max = (uint32_t)lim;
  if (cc->size > lim) cc->size = (uint32_t)lim;
  if (cc->min > cc->max) cc->min = cc->max;
  json_t *v = json_object_get(b, "chunker");
  if (v && !json_is_null(v)) {
    if (!json_is_string(v) || text_chunker_parse(&cc->kind, json_string_value(v)))
      return qv_fail(err, QV_EINVAL, "\"chunker\" must be \"structure\", \"fixed\", \"sentence\" or \"adaptive\"");
  }
  v = json_object_get(b, "max_tokens");
  if (v && !json_is_null(v)) {
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > lim)
      return qv_fail(err, QV_EINVAL, "\"max_tokens\" must be an integer in 1..%lld (the model's limit)", lim);
    cc->size = cc->max = (uint32_t)json_integer_value(v);
    if (cc->min > cc->max) cc->min = cc->max;
  }
  v = json_object_get(b, "overlap");
  if (v && !json_is_null(v)) {
    if (!json_is_number(v) || !(json_number_value(v) >= 0 && json_number_value(v) <= 0.9))
      return qv_fail(err, QV_EINVAL, "\"overlap\" must be a number in 0..0.9");
    cc->overlap = json_number_value(v);
  }
  return QV_OK;
}

static qv_status decode_documents(json_t *b, size_t max, qv_error *err) {
  if (!max) max = 1;
  json_t *docs = json_object_get(b, "documents");
  if (!json_is_array(docs)) return qv_fail(err, QV_EINVAL, "\"documents\" must be a list of {\"source\", \"text\"}");
  if (!json_array_size(docs)) return qv_fail(err, QV_EINVAL, "\"documents\" is empty");
  if (json_array_size(docs) > max)
    return qv_fail(err, QV_EINVAL, "%zu documents; the limit per request is %zu", json_array_size(docs), max);
  /* sources seen so far, source -> index: jansson's hash table keeps the duplicate check
   * linear where comparing each source with every earlier one was quadratic */
  json_t *seen = json_object();
  if (!seen) return qv_fail(err, QV_ENOMEM, "out of memory");
  qv_status st = QV_OK;
  size_t i;
  json_t *d;
  json_array_foreach(docs, i, d) {
    if (!json_is_object(d)) {
      st = qv_fail(err, QV_EINVAL, "documents[%zu] must be an object", i);
      break;
    }
    json_t *src = json_object_get(d, "source"), *text = json_object_get(d, "text");
    if (!json_is_string(src) || !json_string_length(src)) {
      st = qv_fail(err, QV_EINVAL, "documents[%zu].source must be a non-empty string", i);
      break;
    }
    if (strlen(json_string_value(src)) != json_string_length(src)) {
      st = qv_fail(err, QV_EINVAL, "documents[%zu].source holds a NUL character", i);
      break;
    }
    if (!json_is_string(text)) {
      st = qv_fail(err, QV_EINVAL, "documents[%zu].text must be a string", i);
      break;
    }
    json_t *prev = json_object_get(seen, json_string_value(src));
    if (prev) {
      st = qv_fail(err, QV_EINVAL, "documents[%zu].source repeats documents[%zu]'s", i,
                   (size_t)json_integer_value(prev));
      break;
    }
    if (json_object_set_new(seen, json_string_value(src), json_integer((json_int_t)i))) {
      st = qv_fail(err, QV_ENOMEM, "out of memory");
      break;
    }
  }
  json_decref(seen);
  return st;
}

qv_status docs_decode_ingest(json_t *b, int model_max, size_t max, text_chunk_config *cc, qv_error *err) {
  qv_status st = decode_chunking(b, model_max, cc, err);
  return st ? st : decode_documents(b, max, err);
}

static void ingest(http_req *r, http_resp *w) {
  double t0 = server_now();
  server *s = r->srv;
  json_t *b = qdrant_body(r, w, t0);
  if (!b) return;
  qv_error err = {0};
  qv_status st = QV_OK;
  text_ingester *ing = NULL;
  qv_collection *c = NULL;
  text_chunk_config cc;
  qv_model_info mi = {0};
  int locked = 0;
  if ((st = check_model(s, NULL, &err))) goto done;
  qv_model_info_get(s->model, &mi);
  if ((st = docs_decode_ingest(b, mi.max_tokens, s->cfg.max_batch, &cc, &err))) goto done;
  pthread_mutex_lock(&ingest_mu);
  locked = 1;
  st = qv_collection_open(s->db, r->params[0], &c, &err);
  if (st == QV_NOTFOUND) {
    qv_collection_config cfg = {.size = (uint32_t)mi.dims, .distance = QV_DIST_COSINE};
    snprintf(cfg.model, sizeof cfg.model, "%s", mi.name);
    memset(&err, 0, sizeof err);
    st = qv_collection_create(s->db, r->params[0], &cfg, &err);
    if (!st || st == QV_EXISTS) st = qv_collection_open(s->db, r->params[0], &c, &err);
  }
  if (st || (st = check_model(s, c, &err))) goto done;
  if ((st = text_ingester_open(&ing, c, s->model, &cc, 0, &err))) goto done;
  json_t *docs = json_object_get(b, "documents"), *d;
  size_t i;
  json_array_foreach(docs, i, d) {
    const char *src = json_string_value(json_object_get(d, "source"));
    json_t *text = json_object_get(d, "text");
    int f = text_format_for_path(src);
    st = text_ingester_add(ing, src, json_string_value(text), json_string_length(text),
                           f < 0 ? TEXT_PLAIN : (text_format)f, &err);
    if (st) {
      qv_error_prefix(&err, "documents[%zu] (%.200s)", i, src);
      goto done;
    }
  }
  if ((st = text_ingester_flush(ing, &err))) goto done;
  text_ingest_stats ts;
  text_ingester_stats(ing, &ts);
  qdrant_ok(w,
     json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "files", (json_int_t)ts.files_seen, "new", (json_int_t)ts.files_new,
               "changed", (json_int_t)ts.files_changed, "skipped", (json_int_t)ts.files_unchanged, "chunks",
               (json_int_t)ts.chunks, "deleted", (json_int_t)ts.chunks_removed, "tokens", (json_int_t)ts.tokens),
     t0);
done:
  text_ingester_free(ing);
  if (locked) pthread_mutex_unlock(&ingest_mu);
  json_decref(b);
  if (st) qdrant_fail(w, st, &err, t0);
}

/* ---- query ----------------------------------------------------------------------------- */

static json_t *hit_json(const text_hit *h, int reranked) {
  json_t *p = h->payload ? json_loads(h->payload, 0, NULL) : NULL;
  json_t *o = json_pack("{s:o,s:f}", "id", qdrant_id_json(&h->id), "score", (double)h->score);
  static const char *const keep[] = {"source", "headings", "span", "text", "chunk_index", "chunk_count"};
  for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
    json_t *v = json_object_get(p, keep[i]);
    if (v) json_object_set(o, keep[i], v);
  }
  if (h->dense_rank) json_object_set_new(o, "dense", json_real(h->dense));
  if (h->keyword_rank) json_object_set_new(o, "keyword", json_real(h->keyword));
  if (reranked) json_object_set_new(o, "logit", json_real(h->rerank_logit));
  json_decref(p);
  return o;
}

qv_status docs_decode_query(json_t *b, text_query *q, int *rerank, qv_filter **filter, qv_error *err) {
  memset(q, 0, sizeof *q);
  *rerank = 0;
  *filter = NULL;
  json_t *v = json_object_get(b, "query");
  if (!json_is_string(v) || !json_string_length(v) || strlen(json_string_value(v)) != json_string_length(v))
    return qv_fail(err, QV_EINVAL, "\"query\" must be a non-empty string");
  q->text = json_string_value(v);
  q->k = 5;
  if ((v = json_object_get(b, "k")) && !json_is_null(v)) {
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > DOCS_MAX_K)
      return qv_fail(err, QV_EINVAL, "\"k\" must be an integer in 1..%d", DOCS_MAX_K);
    q->k = (size_t)json_integer_value(v);
  }
  const char *flags[] = {"hybrid", "rerank"};
  int *dst[] = {&q->hybrid, rerank};
  for (int i = 0; i < 2; i++)
    if ((v = json_object_get(b, flags[i])) && !json_is_null(v)) {
      if (!json_is_boolean(v)) return qv_fail(err, QV_EINVAL, "\"%s\" must be true or false", flags[i]);
      *dst[i] = json_is_true(v);
    }
  if ((v = json_object_get(b, "filter")) && !json_is_null(v)) {
    if (!json_is_object(v)) return qv_fail(err, QV_EINVAL, "\"filter\" must be an object");
    qv_status st = filter_from_json(filter, v, err);
    if (st) return st;
    q->filter = *filter;
  }
  return QV_OK;
}

static void query(http_req *r, http_resp *w) {
  double t0 = server_now();
  server *s = r->srv;
  qv_collection *c = NULL;
  qv_error err = {0};
  qv_status st = qv_collection_open(s->db, r->params[0], &c, &err);
  if (st == QV_NOTFOUND) return qdrant_error(w, 404, t0, "Not found: Collection `%.200s` doesn't exist!", r->params[0]);
  if (st) return qdrant_fail(w, st, &err, t0);
  json_t *b = qdrant_body(r, w, t0);
  if (!b) return;
  text_hits hits = {0};
  qv_filter *filter = NULL;
  text_query q;
  int rerank;
  if ((st = docs_decode_query(b, &q, &rerank, &filter, &err))) goto done;
  if (rerank) {
    if (!s->reranker) {
      st = qv_fail(&err, QV_ENOMODEL, "\"rerank\" needs a cross-encoder; start the server with --reranker");
      goto done;
    }
    q.reranker = s->reranker;
  }
  text_retriever *ret;
  if ((st = check_model(s, c, &err)) || (st = retriever_for(s, c, &ret, &err))) goto done;
  if ((st = text_retrieve(ret, &q, &hits, &err))) goto done;
  if (!q.filter) metrics_count(s->metrics, hits.cached ? "query_cache_hits" : "query_cache_misses", 1);
  json_t *a = json_array();
  for (size_t i = 0; i < hits.n; i++) json_array_append_new(a, hit_json(&hits.items[i], q.reranker != NULL));
  qdrant_ok(w, json_pack("{s:o,s:b}", "hits", a, "cached", hits.cached), t0);
done:
  text_hits_free(&hits);
  qv_filter_free(filter);
  json_decref(b);
  if (st) qdrant_fail(w, st, &err, t0);
}

#define W HTTP_ROUTE_WRITE
const http_route docs_routes[] = {
    {"POST", "/collections/{name}/documents", ingest, W | HTTP_ROUTE_MODEL, "docs_ingest"},
    {"POST", "/collections/{name}/documents/query", query, HTTP_ROUTE_MODEL, "docs_query"},
    {0},
};
#undef W
