/* The document routes' state shared with the rest of the server (docs.c): the per-
 * collection retrievers, which qdrant.c's {"text"} + "using": "bm25" queries search too. */
#ifndef QV_SERVER_DOCS_H
#define QV_SERVER_DOCS_H

#include <stddef.h>

#include <jansson.h>

#include "quiver.h"
#include "text/retrieve.h"
#include "text/text.h"

struct server;

/* The BM25 ranking of the collection's chunks for text (ids and scores, best first, at
 * most k) among the points filter matches (NULL: all), through the collection's
 * retriever (created on first use). */
qv_status docs_keyword_search(struct server *s, qv_collection *c, const char *text, size_t len, size_t k,
                              const qv_filter *filter, qv_records *out, qv_error *err);
/* Retires c's retriever: called before the collection is deleted. */
void docs_forget(struct server *s, qv_collection *c);
/* The bodies of the document routes, checked whole; no socket, model or data directory
 * needed, so tests/fuzz/fuzz_docs.c calls them directly. Ingest: documents (at most max),
 * chunker, max_tokens (for a model taking model_max tokens), overlap into *cc. Query:
 * query (borrowed from b), k, hybrid, filter into q (*filter is the caller's to free, NULL
 * when none), and whether to rerank. */
qv_status docs_decode_ingest(json_t *b, int model_max, size_t max, text_chunk_config *cc, qv_error *err);
qv_status docs_decode_query(json_t *b, text_query *q, int *rerank, qv_filter **filter, qv_error *err);
/* Frees every retriever of s; called once no request runs (http_stop). */
void docs_release(struct server *s);

#endif
