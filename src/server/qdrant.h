/* The Qdrant-compatible surface: its envelope and error shape, and the decoders of its
 * request bodies. The decoders need no socket and no data directory, so the fuzz target
 * calls them directly. */
#ifndef QV_SERVER_QDRANT_H
#define QV_SERVER_QDRANT_H

#include <jansson.h>
#include <stddef.h>

#include "quiver.h"
#include "server/http.h"
#include "server/vecjson.h"

/* Qdrant's error shape {"status": {"error": "..."}, "time": t}. */
void qdrant_error(http_resp *w, int status, double t0, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Qdrant's success envelope {"result": result, "status": "ok", "time": t} (takes result). */
void qdrant_ok(http_resp *w, json_t *result, double t0);
/* Replies with Qdrant's error shape for st, with err's message. */
void qdrant_fail(http_resp *w, qv_status st, const qv_error *err, double t0);
/* The request body as a JSON object; on failure replies 400 naming the problem and
 * returns NULL. */
json_t *qdrant_body(http_req *r, http_resp *w, double t0);

/* Largest limit / offset a request may ask for. */
#define QDRANT_MAX_LIMIT 100000
#define QDRANT_MAX_PREFETCH_DEPTH 4

/* PUT /collections/{name}: vectors (unnamed or one named), hnsw_config,
 * quantization_config.scalar, and Quiver's "model". */
qv_status qdrant_decode_collection(json_t *body, qv_collection_config *cfg, qv_error *err);
/* PATCH /collections/{name}: changes cfg (already the current config) in place. */
qv_status qdrant_decode_update(json_t *body, qv_collection_config *cfg, qv_error *err);

/* An integer >= 0 or a UUID string. */
qv_status qdrant_decode_id(json_t *j, qv_point_id *out, qv_error *err);
/* A point id as Qdrant writes it: an integer, or a UUID string. */
json_t *qdrant_id_json(const qv_point_id *id);

/* The points of an upsert ({"points": [...]} or {"batch": {ids, vectors, payloads}}).
 * A vector given as a Document ({"text": ...}) is listed in texts/text_rows; the caller
 * embeds it into vectors + row * size. */
typedef struct qdrant_points {
  size_t n;
  qv_point_id *ids;       /* (n) */
  float *vectors;         /* (n, size) */
  char **payloads;        /* (n) compact JSON text or NULL */
  size_t n_texts;
  const char **texts;     /* borrowed from the body */
  size_t *text_lens;
  size_t *text_rows;
} qdrant_points;
/* vt: the vectors vecjson_rewrite took out of the body, or NULL when it was parsed as sent. */
qv_status qdrant_decode_points(json_t *body, const vecjson *vt, const qv_collection_config *cfg, size_t max_batch,
                               qdrant_points *out, qv_error *err);
void qdrant_points_free(qdrant_points *p);

/* QQ_KEYWORD: a Document ({"text"}) with "using": "bm25", ranked by BM25 (docs.c). */
typedef enum { QQ_NONE = 0, QQ_VECTOR, QQ_ID, QQ_TEXT, QQ_RRF, QQ_KEYWORD } qdrant_query_kind;

/* One query request (query, prefetch, filter, params...). */
typedef struct qdrant_query {
  qdrant_query_kind kind;
  float *vector;            /* (size) for QQ_VECTOR; for QQ_TEXT once embedded */
  qv_point_id id;           /* QQ_ID */
  const char *text;         /* QQ_TEXT, borrowed from the body */
  size_t text_len;
  int rrf_k;                /* QQ_RRF */
  qv_filter *filter;        /* or NULL */
  json_t *filter_json;      /* borrowed, or NULL */
  size_t limit, offset;
  int has_threshold;
  float threshold;
  json_t *with_payload;     /* borrowed selector, or NULL (= default) */
  int with_payload_default;
  int with_vector;
  uint32_t hnsw_ef;
  int exact;
  struct qdrant_query *prefetch;
  size_t n_prefetch;
} qdrant_query;

/* legacy = 1 decodes a search request ({"vector": ...}) instead of a query request. vt as
 * for qdrant_decode_points. */
qv_status qdrant_decode_query(json_t *body, const vecjson *vt, const qv_collection_config *cfg, int legacy, int depth,
                              qdrant_query *q, qv_error *err);
void qdrant_query_free(qdrant_query *q);

#endif
