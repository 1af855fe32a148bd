/* Retrieval: dense, hybrid (dense + BM25 by reciprocal rank fusion), reranked; cached.
 *
 * Invariants:
 *  1. The keyword index answers for the collection version it was built at (bm_version);
 *     a query that sees another version rebuilds it first (ensure_keyword_index), under
 *     mu, so queries never read a half-built index.
 *  2. A cache entry holds the version it was computed at; a lookup at another version is
 *     a miss (qcache_get), so writes invalidate cached answers without a hook.
 */
#define _GNU_SOURCE
#include "text/retrieve.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "index/bm25.h"
#include "text/qcache.h"

struct text_retriever {
  qv_collection *c;
  qv_model *m;
  size_t dims;
  pthread_mutex_t mu; /* the keyword index */
  bm25_index *bm;
  qv_point_id *keys; /* (nkeys) the point of each BM25 document */
  size_t nkeys;
  uint64_t bm_version;
  qcache *cache;
};

void text_hits_free(text_hits *h) {
  if (!h) return;
  for (size_t i = 0; i < h->n; i++) free(h->items[i].payload);
  free(h->items);
  h->items = NULL;
  h->n = 0;
}

qv_status text_retriever_open(text_retriever **out, qv_collection *c, qv_model *embed, size_t cache_entries,
                              qv_error *err) {
  qv_model_info info;
  qv_model_info_get(embed, &info);
  qv_collection_config cfg;
  qv_collection_config_get(c, &cfg);
  if (info.kind != QV_MODEL_EMBEDDING) return qv_fail(err, QV_EINVAL, "%s is not an embedding model", info.name);
  if ((int)cfg.size != info.dims)
    return qv_fail(err, QV_EDIM, "the collection holds %u-dimensional vectors; %s makes %d", cfg.size, info.name,
                   info.dims);
  text_retriever *r = calloc(1, sizeof *r);
  if (!r) return qv_fail(err, QV_ENOMEM, "out of memory");
  r->c = c;
  r->m = embed;
  r->dims = (size_t)info.dims;
  pthread_mutex_init(&r->mu, NULL);
  if (qcache_create(&r->cache, cache_entries)) {
    text_retriever_free(r);
    return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  *out = r;
  return QV_OK;
}

void text_retriever_free(text_retriever *r) {
  if (!r) return;
  bm25_free(r->bm);
  free(r->keys);
  qcache_free(r->cache);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

void text_retriever_cache_counters(text_retriever *r, uint64_t *hits, uint64_t *misses) {
  qcache_counters(r->cache, hits, misses, NULL);
}

/* The text a chunk is matched on: its heading path, then its text. */
static char *chunk_text(json_t *payload) {
  const char *t = json_string_value(json_object_get(payload, "text"));
  json_t *h = json_object_get(payload, "headings");
  size_t n = t ? strlen(t) : 0;
  for (size_t i = 0; i < json_array_size(h); i++) {
    const char *s = json_string_value(json_array_get(h, i));
    n += s ? strlen(s) + 3 : 0;
  }
  char *out = malloc(n + 2), *w = out;
  if (!out) return NULL;
  for (size_t i = 0; i < json_array_size(h); i++) {
    const char *s = json_string_value(json_array_get(h, i));
    if (s) w += sprintf(w, "%s%s", w == out ? "" : " > ", s);
  }
  if (w != out) *w++ = '\n';
  if (t) memcpy(w, t, strlen(t)), w += strlen(t);
  *w = 0;
  return out;
}

static qv_status ensure_keyword_index(text_retriever *r, qv_error *err) {
  uint64_t v = qv_collection_version(r->c);
  if (r->bm && r->bm_version == v) return QV_OK;
  bm25_index *bm = NULL;
  qv_point_id *keys = NULL;
  size_t nkeys = 0, cap = 0;
  qv_status st = bm25_create(&bm) ? QV_ENOMEM : QV_OK;
  qv_point_id off;
  int has_off = 0, has_next = !st;
  while (!st && has_next) {
    qv_records rec = {0};
    qv_point_id next;
    if ((st = qv_collection_scroll(r->c, has_off ? &off : NULL, 1024, NULL, 1, 0, &rec, &next, &has_next, err)))
      break;
    for (size_t i = 0; !st && i < rec.count; i++) {
      json_t *p = rec.items[i].payload ? json_loads(rec.items[i].payload, 0, NULL) : NULL;
      char *t = p ? chunk_text(p) : NULL;
      json_decref(p);
      if (!t) continue; /* no payload, or not JSON: not a chunk */
      if (nkeys == cap) {
        cap = cap ? cap * 2 : 1024;
        qv_point_id *nk = realloc(keys, cap * sizeof *nk);
        if (!nk) st = QV_ENOMEM;
        else keys = nk;
      }
      if (!st) st = bm25_add(bm, nkeys, t, strlen(t));
      if (!st) keys[nkeys++] = rec.items[i].id;
      free(t);
    }
    qv_records_free(&rec);
    off = next;
    has_off = 1;
  }
  if (st) {
    bm25_free(bm);
    free(keys);
    return st == QV_ENOMEM ? qv_fail(err, st, "out of memory") : st;
  }
  bm25_free(r->bm);
  free(r->keys);
  r->bm = bm;
  r->keys = keys;
  r->nkeys = nkeys;
  r->bm_version = v;
  return QV_OK;
}

/* ---- cache encoding ------------------------------------------------------------------- */

static char *hits_to_json(const text_hits *h) {
  json_t *a = json_array();
  for (size_t i = 0; a && i < h->n; i++) {
    const text_hit *x = &h->items[i];
    char id[40];
    qv_point_id_format(&x->id, id);
    json_t *p = x->payload ? json_loads(x->payload, 0, NULL) : json_null();
    json_array_append_new(a, json_pack("{s:s,s:f,s:f,s:f,s:i,s:i,s:f,s:o}", "id", id, "score", (double)x->score,
                                       "dense", (double)x->dense, "keyword", (double)x->keyword, "dense_rank",
                                       x->dense_rank, "keyword_rank", x->keyword_rank, "logit",
                                       (double)x->rerank_logit, "payload", p ? p : json_null()));
  }
  char *s = a ? json_dumps(a, JSON_COMPACT) : NULL;
  json_decref(a);
  return s;
}

static int hits_from_json(const char *s, size_t len, text_hits *out) {
  json_t *a = json_loadb(s, len, 0, NULL);
  size_t n = json_array_size(a);
  out->items = calloc(n ? n : 1, sizeof *out->items);
  if (!a || !out->items) {
    json_decref(a);
    free(out->items);
    out->items = NULL;
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *o = json_array_get(a, i);
    text_hit *x = &out->items[i];
    qv_point_id_parse(&x->id, json_string_value(json_object_get(o, "id")));
    x->score = (float)json_real_value(json_object_get(o, "score"));
    x->dense = (float)json_real_value(json_object_get(o, "dense"));
    x->keyword = (float)json_real_value(json_object_get(o, "keyword"));
    x->rerank_logit = (float)json_real_value(json_object_get(o, "logit"));
    x->dense_rank = (int)json_integer_value(json_object_get(o, "dense_rank"));
    x->keyword_rank = (int)json_integer_value(json_object_get(o, "keyword_rank"));
    json_t *p = json_object_get(o, "payload");
    x->payload = json_is_object(p) ? json_dumps(p, JSON_COMPACT) : NULL;
    out->n++;
  }
  json_decref(a);
  return 0;
}

/* ---- the query ------------------------------------------------------------------------ */

static int by_score(const void *a, const void *b) {
  const text_hit *x = a, *y = b;
  if (x->score != y->score) return x->score > y->score ? -1 : 1;
  /* ties: the dense list's order, then the keyword list's */
  int dx = x->dense_rank ? x->dense_rank : 1 << 30, dy = y->dense_rank ? y->dense_rank : 1 << 30;
  if (dx != dy) return dx < dy ? -1 : 1;
  return x->keyword_rank < y->keyword_rank ? -1 : x->keyword_rank > y->keyword_rank;
}

/* ---- filters on the keyword side ------------------------------------------------------ */

/* The points a filter matches, as a sorted id list, so the BM25 search can skip the rest:
 * the dense side filters inside the collection, the keyword side through allow_key. */
typedef struct id_set {
  qv_point_id *ids;
  size_t n;
} id_set;

static int cmp_id(const void *pa, const void *pb) {
  const qv_point_id *a = pa, *b = pb;
  if (a->kind != b->kind) return a->kind < b->kind ? -1 : 1;
  if (a->kind == QV_ID_NUM) return a->num < b->num ? -1 : a->num > b->num;
  return memcmp(a->uuid, b->uuid, sizeof a->uuid);
}

static qv_status filter_ids(qv_collection *c, const qv_filter *f, id_set *out, qv_error *err) {
  memset(out, 0, sizeof *out);
  size_t cap = 0;
  qv_point_id next, *from = NULL;
  int more = 1;
  qv_status st = QV_OK;
  while (!st && more) {
    qv_records page = {0};
    st = qv_collection_scroll(c, from, 4096, f, 0, 0, &page, &next, &more, err);
    if (!st && out->n + page.count > cap) {
      size_t nc = (out->n + page.count) * 2;
      qv_point_id *ni = realloc(out->ids, nc * sizeof *ni);
      if (!ni) st = qv_fail(err, QV_ENOMEM, "out of memory");
      else out->ids = ni, cap = nc;
    }
    for (size_t i = 0; !st && i < page.count; i++) out->ids[out->n++] = page.items[i].id;
    qv_records_free(&page);
    from = &next;
  }
  if (st) {
    free(out->ids);
    memset(out, 0, sizeof *out);
    return st;
  }
  if (out->n) qsort(out->ids, out->n, sizeof *out->ids, cmp_id);
  return QV_OK;
}

typedef struct allow_ctx {
  const text_retriever *r;
  const id_set *set;
} allow_ctx;

static int allow_key(void *ctx, uint64_t key) {
  const allow_ctx *a = ctx;
  return key < a->r->nkeys && a->set->n &&
         bsearch(&a->r->keys[key], a->set->ids, a->set->n, sizeof *a->set->ids, cmp_id) != NULL;
}

static qv_status run_query(text_retriever *r, const text_query *q, size_t k, size_t cand, text_hits *out,
                           qv_error *err) {
  qv_status st;
  float *vec = malloc(r->dims * sizeof *vec);
  qv_records dense = {0};
  text_hit *items = NULL;
  size_t n = 0;
  char **docs = NULL;
  size_t ndocs = 0;
  float *logits = NULL;
  if (!vec) return qv_fail(err, QV_ENOMEM, "out of memory");
  if ((st = qv_model_encode(r->m, &q->text, NULL, 1, 1, vec, err))) goto done;
  qv_search_params sp = {.limit = q->hybrid || q->reranker ? cand : k, .filter = q->filter, .with_payload = 1};
  if ((st = qv_collection_search(r->c, vec, 1, &sp, &dense, err))) goto done;
  size_t cap = dense.count + (q->hybrid ? cand : 0);
  if (!(items = calloc(cap ? cap : 1, sizeof *items))) goto oom;
  for (size_t i = 0; i < dense.count; i++) {
    items[n] = (text_hit){.id = dense.items[i].id, .score = dense.items[i].score, .dense = dense.items[i].score,
                          .dense_rank = (int)i + 1, .payload = dense.items[i].payload};
    dense.items[i].payload = NULL;
    n++;
  }
  if (q->hybrid) {
    id_set allowed = {0};
    if (q->filter && (st = filter_ids(r->c, q->filter, &allowed, err))) goto done;
    bm25_hit *kw = malloc(cand * sizeof *kw);
    size_t nkw = 0;
    if (!kw) {
      free(allowed.ids);
      goto oom;
    }
    pthread_mutex_lock(&r->mu);
    st = ensure_keyword_index(r, err);
    allow_ctx ac = {r, &allowed};
    if (!st)
      st = bm25_search_filtered(r->bm, q->text, strlen(q->text), cand, q->filter ? allow_key : NULL, &ac, kw,
                                &nkw);
    free(allowed.ids);
    qv_point_id *missing = malloc((nkw ? nkw : 1) * sizeof *missing);
    size_t nmissing = 0;
    if (!missing && !st) st = QV_ENOMEM;
    for (size_t i = 0; !st && i < nkw; i++) {
      qv_point_id id = r->keys[kw[i].key];
      size_t j = 0;
      while (j < n && !qv_point_id_equal(&items[j].id, &id)) j++;
      if (j == n) {
        items[n++] = (text_hit){.id = id};
        missing[nmissing++] = id;
      }
      items[j].keyword = kw[i].score;
      items[j].keyword_rank = (int)i + 1;
    }
    pthread_mutex_unlock(&r->mu);
    free(kw);
    if (st) {
      free(missing);
      if (st == QV_ENOMEM) goto oom;
      goto done;
    }
    if (nmissing) {
      qv_records got = {0};
      st = qv_collection_get(r->c, missing, nmissing, 1, 0, &got, err);
      for (size_t i = 0; !st && i < got.count; i++)
        for (size_t j = 0; j < n; j++)
          if (!items[j].payload && qv_point_id_equal(&items[j].id, &got.items[i].id)) {
            items[j].payload = got.items[i].payload;
            got.items[i].payload = NULL;
            break;
          }
      qv_records_free(&got);
      free(missing);
      if (st) goto done;
    } else {
      free(missing);
    }
    /* a point deleted between the two searches has no payload: drop it */
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
      if (items[i].payload) items[w++] = items[i];
    n = w;
    for (size_t i = 0; i < n; i++)
      items[i].score = (items[i].dense_rank ? 1.0f / (TEXT_RRF_K + items[i].dense_rank) : 0) +
                       (items[i].keyword_rank ? 1.0f / (TEXT_RRF_K + items[i].keyword_rank) : 0);
    qsort(items, n, sizeof *items, by_score);
    if (n > cand) {
      for (size_t i = cand; i < n; i++) free(items[i].payload);
      n = cand;
    }
  }
  if (q->reranker && q->rerank_top && n > q->rerank_top) {
    for (size_t i = q->rerank_top; i < n; i++) free(items[i].payload);
    n = q->rerank_top;
  }
  if (q->reranker && n) {
    if (!(docs = calloc(n, sizeof *docs)) || !(logits = malloc(n * sizeof *logits))) goto oom;
    ndocs = n;
    for (size_t i = 0; i < n; i++) {
      json_t *p = json_loads(items[i].payload, 0, NULL);
      docs[i] = p ? chunk_text(p) : strdup("");
      json_decref(p);
      if (!docs[i]) goto oom;
    }
    if ((st = qv_model_rerank(q->reranker, q->text, (const char *const *)docs, n, 1, logits, err))) goto done;
    /* sort on the logit: sigmoid saturates to equal floats for large logits */
    for (size_t i = 0; i < n; i++) items[i].rerank_logit = items[i].score = logits[i];
    qsort(items, n, sizeof *items, by_score);
    for (size_t i = 0; i < n; i++) items[i].score = 1.0f / (1.0f + expf(-items[i].rerank_logit));
  }
  if (n > k) {
    for (size_t i = k; i < n; i++) free(items[i].payload);
    n = k;
  }
  out->items = items;
  out->n = n;
  items = NULL;
  n = 0;
  goto done;
oom:
  st = qv_fail(err, QV_ENOMEM, "out of memory");
done:
  for (size_t i = 0; docs && i < ndocs; i++) free(docs[i]);
  free(vec);
  qv_records_free(&dense);
  if (items)
    for (size_t i = 0; i < n; i++) free(items[i].payload);
  free(items);
  free(logits);
  free(docs);
  return st;
}

qv_status text_retrieve(text_retriever *r, const text_query *q, text_hits *out, qv_error *err) {
  memset(out, 0, sizeof *out);
  if (!q->text || !*q->text) return qv_fail(err, QV_EINVAL, "the query text is empty");
  size_t k = q->k ? q->k : 5;
  size_t cand = q->candidates ? q->candidates : TEXT_CANDIDATES;
  if (k > 10000 || cand > 10000) return qv_fail(err, QV_ERANGE, "k and candidates must be at most 10000");
  if (cand < k) cand = k;
  char *key = NULL;
  uint64_t version = qv_collection_version(r->c);
  if (!q->filter) {
    char params[256];
    qv_model_info ri = {0};
    if (q->reranker) qv_model_info_get(q->reranker, &ri);
    snprintf(params, sizeof params, "k=%zu;c=%zu;hybrid=%d;rerank=%s;top=%zu", k, cand, q->hybrid,
             q->reranker ? ri.name : "", q->rerank_top);
    key = qcache_key(q->text, params);
    void *v;
    size_t len;
    if (key && qcache_get(r->cache, key, version, &v, &len)) {
      int bad = hits_from_json(v, len, out);
      free(v);
      if (!bad) {
        out->cached = 1;
        free(key);
        return QV_OK;
      }
    }
  }
  qv_status st = run_query(r, q, k, cand, out, err);
  if (!st && key) {
    char *s = hits_to_json(out);
    if (s) qcache_put(r->cache, key, version, s, strlen(s));
    free(s);
  }
  free(key);
  return st;
}

qv_status text_retrieve_keyword(text_retriever *r, const char *text, size_t len, size_t k,
                                const qv_filter *filter, qv_records *out, qv_error *err) {
  memset(out, 0, sizeof *out);
  if (k > 10000) return qv_fail(err, QV_ERANGE, "k must be at most 10000");
  id_set allowed = {0};
  if (filter) {
    qv_status fst = filter_ids(r->c, filter, &allowed, err);
    if (fst) return fst;
  }
  bm25_hit *kw = malloc((k ? k : 1) * sizeof *kw);
  qv_record *items = calloc(k ? k : 1, sizeof *items);
  if (!kw || !items) {
    free(kw);
    free(items);
    free(allowed.ids);
    return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  size_t n = 0;
  pthread_mutex_lock(&r->mu);
  qv_status st = ensure_keyword_index(r, err);
  allow_ctx ac = {r, &allowed};
  if (!st && k) st = bm25_search_filtered(r->bm, text, len, k, filter ? allow_key : NULL, &ac, kw, &n);
  free(allowed.ids);
  for (size_t i = 0; !st && i < n; i++) {
    items[i].id = r->keys[kw[i].key];
    items[i].score = kw[i].score;
  }
  pthread_mutex_unlock(&r->mu);
  free(kw);
  if (st) {
    free(items);
    return st == QV_ENOMEM ? qv_fail(err, st, "out of memory") : st;
  }
  out->items = items;
  out->count = n;
  return QV_OK;
}
