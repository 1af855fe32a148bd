/* Retrieval over an ingested collection: dense search with the collection's embedding
 * model, optionally fused with BM25 keyword search by reciprocal rank fusion, optionally
 * reranked by a cross-encoder, with a query cache in front.
 *
 * The keyword index is built in memory from the chunk texts (payload "headings" and
 * "text") on the first hybrid query and rebuilt when qv_collection_version shows the
 * collection changed since. It is not persisted: rebuilding is one scroll of the
 * payloads (about a second for 100k chunks), and a long-lived server pays it once per
 * change, while a file would need its own crash-safety story next to LMDB's.
 */
#ifndef QV_TEXT_RETRIEVE_H
#define QV_TEXT_RETRIEVE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

#define TEXT_RRF_K 60         /* reciprocal rank fusion: score = sum 1 / (K + rank) */
#define TEXT_CANDIDATES 50    /* how many each retriever returns before fusion/reranking */

typedef struct text_retriever text_retriever;

typedef struct text_query {
  const char *text;
  size_t k;                 /* results; 0 = 5 */
  int hybrid;               /* fuse dense and BM25 */
  qv_model *reranker;       /* a cross-encoder, or NULL */
  size_t candidates;        /* 0 = TEXT_CANDIDATES */
  size_t rerank_top;        /* how many of the best candidates the reranker scores; 0 = all */
  const qv_filter *filter;  /* dense and keyword sides; NULL = none. Filtered queries skip the cache */
} text_query;

typedef struct text_hit {
  qv_point_id id;
  float score;        /* the rerank score (sigmoid of the logit), the RRF score, or the dense score */
  float dense;        /* cosine score, when the dense list had it (dense_rank > 0) */
  float keyword;      /* BM25 score, when the keyword list had it (keyword_rank > 0) */
  int dense_rank, keyword_rank; /* 1-based; 0 = absent */
  float rerank_logit; /* when reranked */
  char *payload;      /* JSON object text */
} text_hit;

typedef struct text_hits {
  text_hit *items;
  size_t n;
  int cached;         /* served from the query cache */
} text_hits;

void text_hits_free(text_hits *h);

/* embed must be the collection's embedding model. cache_entries 0 disables the cache. */
qv_status text_retriever_open(text_retriever **out, qv_collection *c, qv_model *embed, size_t cache_entries,
                              qv_error *err);
void text_retriever_free(text_retriever *r);

/* Thread-safe. */
qv_status text_retrieve(text_retriever *r, const text_query *q, text_hits *out, qv_error *err);

/* The BM25 ranking alone (the keyword half of a hybrid query): the best k chunks for
 * text among those filter matches (NULL: all), as ids and BM25 scores, best first; no
 * payloads. Thread-safe. */
qv_status text_retrieve_keyword(text_retriever *r, const char *text, size_t len, size_t k,
                                const qv_filter *filter, qv_records *out, qv_error *err);

void text_retriever_cache_counters(text_retriever *r, uint64_t *hits, uint64_t *misses);

#endif
