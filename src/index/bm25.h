/* An in-memory BM25 keyword index: documents are token lists (ASCII letters and digits
 * lower-cased, other UTF-8 kept as is, split at everything else), each with a caller's
 * 64-bit key. Okapi BM25 with k1 = 1.2, b = 0.75 and the non-negative idf
 * log(1 + (N - df + 0.5) / (df + 0.5)), as Lucene scores.
 *
 * Built once, then searched: bm25_add documents, then any number of threads may
 * bm25_search at once (the index is read-only after the first search). */
#ifndef QV_INDEX_BM25_H
#define QV_INDEX_BM25_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef struct bm25_index bm25_index;

typedef struct bm25_hit {
  uint64_t key;
  float score;
} bm25_hit;

qv_status bm25_create(bm25_index **out);
void bm25_free(bm25_index *ix);
/* Adds a document; keys need not be unique (each add is a separate document). */
qv_status bm25_add(bm25_index *ix, uint64_t key, const char *text, size_t len);
size_t bm25_count(const bm25_index *ix);
/* The best k documents for the query, best first (ties by insertion order); *n gets how
 * many matched at least one term (at most k). hits has room for k. */
qv_status bm25_search(const bm25_index *ix, const char *query, size_t len, size_t k, bm25_hit *hits, size_t *n);
/* The same over the documents whose key allow(ctx, key) accepts (allow NULL: all). allow
 * is called once per document that matches a query term, from the calling thread. */
typedef int (*bm25_allow_fn)(void *ctx, uint64_t key);
qv_status bm25_search_filtered(const bm25_index *ix, const char *query, size_t len, size_t k,
                               bm25_allow_fn allow, void *ctx, bm25_hit *hits, size_t *n);

#endif
