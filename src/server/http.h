/* The HTTP layer's contract with the API surfaces (qdrant.c, openai.c, tei.c, native.c):
 * a handler gets a complete request and fills a response; http.c does the socket work on
 * libmicrohttpd, limits, auth, metrics and logging around it. */
#ifndef QV_SERVER_HTTP_H
#define QV_SERVER_HTTP_H

#include <jansson.h>
#include <stddef.h>

struct server;

#define HTTP_MAX_PARAMS 4

typedef struct http_req {
  const char *method;            /* "GET", "POST", "PUT", "PATCH", "DELETE" */
  const char *path;              /* percent-decoded path, no query string */
  const char *body;              /* the whole body, NUL-terminated; "" when none */
  size_t body_len;
  const char *params[HTTP_MAX_PARAMS]; /* the {name} segments of the matched route, in order */
  int read_only;                 /* the caller authenticated with a read-only key */
  struct server *srv;
  void *conn;                    /* private to http.c */
} http_req;

/* A request header or query-string argument, or NULL when absent. */
const char *http_header(const http_req *r, const char *name);
const char *http_query_arg(const http_req *r, const char *name);

typedef struct http_resp {
  int status;
  char *body;                    /* malloc'd; owned by the response */
  size_t body_len;
  const char *content_type;      /* static string; default application/json */
  int retry_after;               /* seconds, sent as Retry-After when > 0 */
} http_resp;

/* Sets the response to j serialized compactly (takes ownership of j). */
void http_reply_json(http_resp *w, int status, json_t *j);
/* Sets a text body (copied). */
void http_reply_text(http_resp *w, int status, const char *content_type, const char *text, size_t len);
/* A plain JSON error {"error": "..."} for non-Qdrant surfaces; Qdrant routes use
 * qdrant_error (qdrant.h) for Qdrant's envelope. */
void http_reply_error(http_resp *w, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The one qv_status -> HTTP status rule every surface uses (docs/api.md, "Errors"):
 *   400  bad input: EINVAL EJSON EFILTER ENAME EDIM ENONFINITE ERANGE EUNSUPPORTED
 *   404  NOTFOUND (a collection, a point)     409  EXISTS
 *   413  ETOOLONG (an input over the model's limit, without truncation)
 *   429  EBUSY (overloaded; sent with Retry-After)
 *   503  ENOMODEL (the route needs a model the server runs without)
 *   500  everything else: storage, memory, the accelerator, errno values.
 * TEI's routes rename two of them as TEI does (tei.c): 400 -> 422, 500 -> 424. */
int http_status_of(qv_status st);

/* Parses the body as JSON (an object unless allow_any); NULL on failure with why (cap
 * bytes) naming the problem: every surface's parser, each answering in its own shape. */
json_t *http_parse_body(const http_req *r, int allow_any, char *why, size_t cap);
/* http_parse_body answering a failure with http_reply_error's 400. */
json_t *http_body_json(const http_req *r, http_resp *w, int allow_any);

/* Replaces each byte of an invalid UTF-8 sequence in s with '?', so text quoted from a
 * request (a path, a name) can always go into a JSON error. */
void http_utf8_sanitize(char *s);

typedef void (*http_handler)(http_req *r, http_resp *w);

enum {
  HTTP_ROUTE_OPEN = 1,   /* no auth (health checks, GET /) */
  HTTP_ROUTE_WRITE = 2,  /* needs a read-write key */
  /* Runs alone: waits for every request in flight and holds the others back. For routes
   * that free collection handles (deleting a collection), which the other handlers may be
   * using; every other route but the open ones (which touch no collection) runs under
   * the shared side of the same lock. */
  HTTP_ROUTE_EXCLUSIVE = 4,
  /* Waits on a model's batcher: runs off MHD's threads (http.c, inv. 4) so concurrent
   * requests can meet in the batcher however few HTTP threads there are. */
  HTTP_ROUTE_MODEL = 8,
};

typedef struct http_route {
  const char *method;
  const char *pattern;   /* "/collections/{name}/points/query": {x} matches one segment */
  http_handler fn;
  int flags;
  const char *name;      /* the route's label in metrics, e.g. "qdrant_query" */
} http_route;

/* Route tables, each ending with a {0} entry; http.c tries them in order. */
extern const http_route qdrant_routes[];
extern const http_route openai_routes[];
extern const http_route tei_routes[];
extern const http_route native_routes[];   /* health, metrics, telemetry, openapi */
extern const http_route legacy_routes[];   /* the earlier embedding service's /api/v1/... */
extern const http_route docs_routes[];     /* documents in, cited chunks out (docs.c) */

/* ---- http.c's own entry points (server.c and the fuzz target use them) ---- */

#include "quiver.h"

/* Listens on cfg.host:cfg.port (port 0 picks a free one, written back to cfg.port). */
qv_status http_start(struct server *s, qv_error *err);
/* Stops accepting, waits for in-flight requests (up to request_timeout_s), stops. */
void http_stop(struct server *s);

/* Whether path matches pattern ({x} matches one non-empty segment); the {x} values are
 * copied NUL-separated into buf (cap bytes) and pointed to from params. */
int http_match(const char *pattern, const char *path, const char **params, char *buf, size_t cap);
/* The route for method and path over every table, or NULL; *method_mismatch says a route
 * matched the path with another method (405 rather than 404). */
const http_route *http_find_route(const char *method, const char *path, const char **params,
                                  char *buf, size_t cap, int *method_mismatch);
/* Checks an HS256 JWT against secret at time now (seconds since the epoch): 0 valid (with
 * *read_only from Qdrant's "access": "r" claim), -2 expired, -1 otherwise invalid. */
int http_jwt_check(const char *token, const char *secret, double now, int *read_only);

#endif
