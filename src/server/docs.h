/* The document routes' state shared with the rest of the server (docs.c): the per-
 * collection retrievers, which qdrant.c's {"text"} + "using": "bm25" queries search too. */
#ifndef QV_SERVER_DOCS_H
#define QV_SERVER_DOCS_H

#include <stddef.h>

#include "quiver.h"

struct server;

/* The BM25 ranking of the collection's chunks for text (ids and scores, best first, at
 * most k), through the collection's retriever (created on first use). */
qv_status docs_keyword_search(struct server *s, qv_collection *c, const char *text, size_t len, size_t k,
                              qv_records *out, qv_error *err);
/* Retires c's retriever: called before the collection is deleted. */
void docs_forget(struct server *s, qv_collection *c);
/* Frees every retriever of s; called once no request runs (http_stop). */
void docs_release(struct server *s);

#endif
