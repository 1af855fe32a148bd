/* BM25 over an in-memory inverted index: a hash table of terms, each with a growing
 * postings list of (document, term frequency), and every document's length.
 *
 * Invariants:
 *  1. Postings of a term are in increasing document order (documents are added in order,
 *     and bm25_add counts a document's terms before appending one posting per term).
 *  2. total_len is the sum of doc_len, so the average length is exact.
 * Scores are accumulated per document into a dense array per search: a query touches the
 * postings of its few terms, and a dense array avoids hashing every touched document.
 */
#include "index/bm25.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/hash.h"

#define MAX_TERM 64
#define K1 1.2f
#define B 0.75f

typedef struct posting {
  uint32_t doc, tf;
} posting;

typedef struct term {
  char *text; /* NULL for an empty slot */
  uint32_t len;
  posting *post;
  uint32_t n, cap;
} term;

struct bm25_index {
  term *terms;
  size_t mask, nterms;
  uint64_t *keys;     /* (ndocs) */
  uint32_t *doc_len;  /* (ndocs) */
  size_t ndocs, cap_docs;
  uint64_t total_len;
};

qv_status bm25_create(bm25_index **out) {
  bm25_index *ix = calloc(1, sizeof *ix);
  if (!ix) return QV_ENOMEM;
  ix->mask = 1023;
  ix->terms = calloc(ix->mask + 1, sizeof *ix->terms);
  if (!ix->terms) {
    free(ix);
    return QV_ENOMEM;
  }
  *out = ix;
  return QV_OK;
}

void bm25_free(bm25_index *ix) {
  if (!ix) return;
  for (size_t i = 0; i <= ix->mask; i++) {
    free(ix->terms[i].text);
    free(ix->terms[i].post);
  }
  free(ix->terms);
  free(ix->keys);
  free(ix->doc_len);
  free(ix);
}

size_t bm25_count(const bm25_index *ix) { return ix->ndocs; }


static term *find(const bm25_index *ix, const char *s, size_t n) {
  size_t i = qv_hash_bytes(s, n) & ix->mask;
  while (ix->terms[i].text) {
    if (ix->terms[i].len == n && !memcmp(ix->terms[i].text, s, n)) return &ix->terms[i];
    i = (i + 1) & ix->mask;
  }
  return &ix->terms[i];
}

static int grow_terms(bm25_index *ix) {
  size_t nmask = ix->mask * 2 + 1;
  term *nt = calloc(nmask + 1, sizeof *nt);
  if (!nt) return -1;
  for (size_t i = 0; i <= ix->mask; i++) {
    term *t = &ix->terms[i];
    if (!t->text) continue;
    size_t j = qv_hash_bytes(t->text, t->len) & nmask;
    while (nt[j].text) j = (j + 1) & nmask;
    nt[j] = *t;
  }
  free(ix->terms);
  ix->terms = nt;
  ix->mask = nmask;
  return 0;
}

/* Calls fn for each term of text: lower-cased ASCII alphanumerics and non-ASCII bytes,
 * cut at MAX_TERM bytes. */
typedef int (*term_fn)(void *ctx, const char *t, size_t n);
static int each_term(const char *text, size_t len, term_fn fn, void *ctx) {
  char buf[MAX_TERM];
  size_t k = 0;
  for (size_t i = 0; i <= len; i++) {
    unsigned char c = i < len ? (unsigned char)text[i] : 0;
    int word = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
    if (word) {
      if (k < MAX_TERM) buf[k++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    } else if (k) {
      if (fn(ctx, buf, k)) return -1;
      k = 0;
    }
  }
  return 0;
}

typedef struct doc_terms {
  bm25_index *ix;
  uint32_t doc, len;
} doc_terms;

static int add_term(void *ctx, const char *s, size_t n) {
  doc_terms *dt = ctx;
  bm25_index *ix = dt->ix;
  dt->len++;
  term *t = find(ix, s, n);
  if (!t->text) {
    if ((ix->nterms + 1) * 2 > ix->mask) {
      if (grow_terms(ix)) return -1;
      t = find(ix, s, n);
    }
    if (!(t->text = malloc(n))) return -1;
    memcpy(t->text, s, n);
    t->len = (uint32_t)n;
    ix->nterms++;
  }
  if (t->n && t->post[t->n - 1].doc == dt->doc) {
    t->post[t->n - 1].tf++;
    return 0;
  }
  if (t->n == t->cap) {
    uint32_t cap = t->cap ? t->cap * 2 : 4;
    posting *np = realloc(t->post, cap * sizeof *np);
    if (!np) return -1;
    t->post = np;
    t->cap = cap;
  }
  t->post[t->n++] = (posting){dt->doc, 1};
  return 0;
}

qv_status bm25_add(bm25_index *ix, uint64_t key, const char *text, size_t len) {
  if (ix->ndocs == ix->cap_docs) {
    size_t cap = ix->cap_docs ? ix->cap_docs * 2 : 256;
    uint64_t *nk = realloc(ix->keys, cap * sizeof *nk);
    if (!nk) return QV_ENOMEM;
    ix->keys = nk;
    uint32_t *nl = realloc(ix->doc_len, cap * sizeof *nl);
    if (!nl) return QV_ENOMEM;
    ix->doc_len = nl;
    ix->cap_docs = cap;
  }
  doc_terms dt = {ix, (uint32_t)ix->ndocs, 0};
  /* a failure part-way leaves postings for a document that is not counted: searches skip
   * them (doc >= ndocs), so the index stays usable */
  if (each_term(text, len, add_term, &dt)) return QV_ENOMEM;
  ix->keys[ix->ndocs] = key;
  ix->doc_len[ix->ndocs] = dt.len;
  ix->ndocs++;
  ix->total_len += dt.len;
  return QV_OK;
}

typedef struct query_terms {
  const bm25_index *ix;
  const term *seen[64];
  size_t n;
} query_terms;

static int add_query_term(void *ctx, const char *s, size_t n) {
  query_terms *q = ctx;
  const term *t = find(q->ix, s, n);
  if (!t->text) return 0;
  for (size_t i = 0; i < q->n; i++)
    if (q->seen[i] == t) return 0;
  if (q->n < 64) q->seen[q->n++] = t;
  return 0;
}

static int by_score(const void *a, const void *b) {
  const bm25_hit *x = a, *y = b;
  if (x->score != y->score) return x->score > y->score ? -1 : 1;
  return x->key < y->key ? -1 : x->key > y->key; /* (doc numbers here): insertion order */
}

qv_status bm25_search(const bm25_index *ix, const char *query, size_t len, size_t k, bm25_hit *hits, size_t *n) {
  return bm25_search_filtered(ix, query, len, k, NULL, NULL, hits, n);
}

qv_status bm25_search_filtered(const bm25_index *ix, const char *query, size_t len, size_t k,
                               bm25_allow_fn allow, void *ctx, bm25_hit *hits, size_t *n) {
  *n = 0;
  if (!ix->ndocs || !k) return QV_OK;
  query_terms q = {.ix = ix};
  each_term(query, len, add_query_term, &q);
  if (!q.n) return QV_OK;
  float *acc = calloc(ix->ndocs, sizeof *acc);
  uint32_t *touched = malloc(ix->ndocs * sizeof *touched);
  if (!acc || !touched) {
    free(acc);
    free(touched);
    return QV_ENOMEM;
  }
  size_t nt = 0;
  float avg = (float)ix->total_len / (float)ix->ndocs;
  if (avg <= 0) avg = 1;
  for (size_t i = 0; i < q.n; i++) {
    const term *t = q.seen[i];
    float df = (float)t->n;
    float idf = logf(1.0f + ((float)ix->ndocs - df + 0.5f) / (df + 0.5f));
    for (uint32_t p = 0; p < t->n; p++) {
      uint32_t d = t->post[p].doc;
      if (d >= ix->ndocs) continue;
      float tf = (float)t->post[p].tf;
      float s = idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * (float)ix->doc_len[d] / avg));
      if (acc[d] == 0 && s > 0) touched[nt++] = d;
      acc[d] += s;
    }
  }
  bm25_hit *all = malloc((nt ? nt : 1) * sizeof *all);
  if (!all) {
    free(acc);
    free(touched);
    return QV_ENOMEM;
  }
  size_t m = 0;
  for (size_t i = 0; i < nt; i++)
    if (!allow || allow(ctx, ix->keys[touched[i]])) all[m++] = (bm25_hit){touched[i], acc[touched[i]]};
  qsort(all, m, sizeof *all, by_score);
  size_t out = m < k ? m : k;
  for (size_t i = 0; i < out; i++) hits[i] = (bm25_hit){ix->keys[all[i].key], all[i].score};
  *n = out;
  free(all);
  free(acc);
  free(touched);
  return QV_OK;
}
