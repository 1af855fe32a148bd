/* The HTTP glue on libmicrohttpd: body accumulation under a size limit, route matching,
 * auth (static keys and HS256 JWTs), an in-flight limit, metrics and graceful shutdown.
 * The API surfaces only see http_req/http_resp (http.h).
 *
 * Invariants:
 *  1. Every request gets a JSON body, errors included (http_finish fills one in when a
 *     handler left it empty), and metrics_request is called exactly once per request
 *     (in on_completed, which MHD calls for every request it began).
 *  2. s->inflight counts requests from their first callback to on_completed; http_stop
 *     waits for it to reach 0 after MHD_quiesce_daemon, so in-flight requests finish.
 *  3. Keys are compared through their SHA-256 with CRYPTO_memcmp, so neither the content
 *     nor the length of a configured key leaks through timing.
 *  4. Model routes (HTTP_ROUTE_MODEL) do not block an MHD thread: the connection is
 *     suspended, the handler runs on one of the offload threads, which stores the
 *     response in the request's state and resumes the connection; MHD then calls
 *     on_request again and the stored response goes out. Why: MHD's pool threads each
 *     own a set of connections, so a thread blocked in a batcher stalls every other
 *     connection it owns, and no more requests than pool threads could ever reach the
 *     batcher to be merged. Every suspended connection is resumed exactly once, and the
 *     offload threads are joined (after the queue drains) before MHD_stop_daemon, which
 *     must not see a suspended connection. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <pthread.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/error.h"
#include "base/log.h"
#include "server/docs.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/server.h"

/* Threads that run model routes (inv. 4). They mostly sleep in a batcher, so there are
 * enough of them for a full batch of one-text requests to be waiting at once. */
#define OFFLOAD_THREADS 64

struct conn_state;

typedef struct http_server {
  struct MHD_Daemon *d;
  server *srv;
  long inflight;          /* atomic */
  pthread_rwlock_t handles; /* shared by handlers; exclusive for HTTP_ROUTE_EXCLUSIVE */
  pthread_mutex_t off_mu;
  pthread_cond_t off_cv;  /* a job arrived, or off_stop was set */
  struct conn_state *off_head, *off_tail; /* guarded by off_mu */
  int off_stop;           /* guarded by off_mu */
  pthread_t off_threads[OFFLOAD_THREADS];
  int n_off;              /* offload threads started */
} http_server;

#define DRAIN_MAX ((size_t)256 << 20)

/* One request's state, from its first callback to on_completed. */
typedef struct conn_state {
  char *body;
  size_t len, cap;
  size_t discarded;       /* body bytes dropped after the limit */
  int too_big;
  double start;
  const http_route *route;
  int status;
  char path_buf[2048];    /* the matched route's {param} values, NUL-separated */
  const char *params[HTTP_MAX_PARAMS]; /* into path_buf */
  int mismatch;           /* no route, but the path matched with another method */
  int read_only;          /* authenticated with a read-only key */
  /* an offloaded model route (inv. 4) */
  struct MHD_Connection *conn;
  http_req req;
  http_resp resp;
  int resp_ready;         /* set by the offload thread before it resumes conn */
  struct conn_state *next; /* in the offload queue; guarded by off_mu */
} conn_state;

double server_now(void) { return qv_monotonic_s(); }

/* ---- replies -------------------------------------------------------------------------- */

void http_reply_json(http_resp *w, int status, json_t *j) {
  free(w->body);
  w->body = NULL;
  w->body_len = 0;
  w->status = status;
  w->content_type = "application/json";
  if (j) {
    w->body = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_ENCODE_ANY);
    json_decref(j);
  }
  if (!w->body) w->body = strdup("null");
  w->body_len = w->body ? strlen(w->body) : 0;
}

void http_reply_text(http_resp *w, int status, const char *content_type, const char *text, size_t len) {
  free(w->body);
  w->status = status;
  w->content_type = content_type;
  w->body = malloc(len + 1);
  w->body_len = w->body ? len : 0;
  if (w->body) {
    memcpy(w->body, text, len);
    w->body[len] = '\0';
  }
}

void http_utf8_sanitize(char *s) {
  unsigned char *p = (unsigned char *)s;
  while (*p) {
    int n = *p < 0x80 ? 1 : (*p >> 5) == 6 ? 2 : (*p >> 4) == 14 ? 3 : (*p >> 3) == 30 ? 4 : 0;
    int good = n > 0;
    for (int i = 1; good && i < n; i++) good = (p[i] & 0xc0) == 0x80;
    /* Overlong forms and surrogates are invalid too (jansson refuses them). */
    if (good && n == 2 && *p < 0xc2) good = 0;
    if (good && n == 3 && ((*p == 0xe0 && p[1] < 0xa0) || (*p == 0xed && p[1] >= 0xa0))) good = 0;
    if (good && n == 4 && ((*p == 0xf0 && p[1] < 0x90) || *p > 0xf4 || (*p == 0xf4 && p[1] >= 0x90))) good = 0;
    if (!good) {
      *p++ = '?';
      continue;
    }
    p += n;
  }
}

void http_reply_error(http_resp *w, int status, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  http_utf8_sanitize(msg);
  http_reply_json(w, status, json_pack("{s:s}", "error", msg));
}

int http_status_of(qv_status st) {
  switch (st) {
  case QV_EINVAL: case QV_EJSON: case QV_EFILTER: case QV_ENAME: case QV_EDIM: case QV_ENONFINITE:
  case QV_ERANGE: case QV_EUNSUPPORTED: return 400;
  case QV_NOTFOUND: return 404;
  case QV_EXISTS: return 409;
  case QV_ETOOLONG: return 413;
  case QV_EBUSY: return 429;
  case QV_ENOMODEL: return 503;
  default: return 500;
  }
}

json_t *http_parse_body(const http_req *r, int allow_any, char *why, size_t cap) {
  json_error_t je;
  if (r->body_len == 0) {
    snprintf(why, cap, "the request needs a JSON body");
    return NULL;
  }
  /* jansson rejects invalid UTF-8 and NUL bytes itself; depth is bounded below. */
  json_t *j = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &je);
  if (!j) {
    snprintf(why, cap, "malformed JSON at line %d column %d: %s", je.line, je.column, je.text);
    return NULL;
  }
  if (!allow_any && !json_is_object(j)) {
    json_decref(j);
    snprintf(why, cap, "the body must be a JSON object");
    return NULL;
  }
  return j;
}

json_t *http_body_json(const http_req *r, http_resp *w, int allow_any) {
  char why[256];
  json_t *j = http_parse_body(r, allow_any, why, sizeof why);
  if (!j) http_reply_error(w, 400, "%s", why);
  return j;
}

const char *http_header(const http_req *r, const char *name) {
  if (!r->conn) return NULL;
  return MHD_lookup_connection_value((struct MHD_Connection *)r->conn, MHD_HEADER_KIND, name);
}

const char *http_query_arg(const http_req *r, const char *name) {
  if (!r->conn) return NULL;
  return MHD_lookup_connection_value((struct MHD_Connection *)r->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* ---- routing -------------------------------------------------------------------------- */

/* Whether path matches pattern; {x} segments are copied NUL-separated into buf and
 * pointed to from params. */
int http_match(const char *pattern, const char *path, const char **params, char *buf, size_t cap) {
  const char *p = pattern, *q = path;
  size_t used = 0;
  int np = 0;
  while (*p && *q) {
    if (*p == '{') {
      const char *pe = strchr(p, '}');
      const char *qe = strchr(q, '/');
      if (!pe) return 0;
      if (!qe) qe = q + strlen(q);
      size_t n = (size_t)(qe - q);
      if (n == 0 || np >= HTTP_MAX_PARAMS || used + n + 1 > cap) return 0;
      memcpy(buf + used, q, n);
      buf[used + n] = '\0';
      params[np++] = buf + used;
      used += n + 1;
      p = pe + 1;
      q = qe;
    } else {
      if (*p != *q) return 0;
      p++;
      q++;
    }
  }
  /* A trailing slash on the request is tolerated, as many clients add one. */
  if (*q == '/' && q[1] == '\0' && q != path) q++;
  return *p == '\0' && *q == '\0';
}

static const http_route *const route_tables[] = {qdrant_routes, openai_routes, tei_routes,
                                                 native_routes, legacy_routes, docs_routes};

/* The most specific pattern wins: a path matching both ".../points/query" and
 * ".../points/{id}" belongs to the first, so a GET there is 405, not a bad point id. */
const http_route *http_find_route(const char *method, const char *path, const char **params,
                                  char *buf, size_t cap, int *method_mismatch) {
  const http_route *best = NULL;
  int best_np = HTTP_MAX_PARAMS + 1, any_np = HTTP_MAX_PARAMS + 1;
  *method_mismatch = 0;
  for (size_t t = 0; t < sizeof route_tables / sizeof route_tables[0]; t++) {
    for (const http_route *r = route_tables[t]; r->pattern; r++) {
      const char *tmp[HTTP_MAX_PARAMS] = {0};
      if (!http_match(r->pattern, path, tmp, buf, cap)) continue;
      int np = 0;
      while (np < HTTP_MAX_PARAMS && tmp[np]) np++;
      if (np < any_np) any_np = np;
      if (!strcmp(r->method, method) && np < best_np) {
        best = r;
        best_np = np;
      }
    }
  }
  if (best && best_np == any_np) {
    const char *tmp[HTTP_MAX_PARAMS] = {0};
    http_match(best->pattern, path, tmp, buf, cap);
    memcpy(params, tmp, sizeof tmp);
    return best;
  }
  *method_mismatch = any_np <= HTTP_MAX_PARAMS;
  return NULL;
}

/* ---- auth ----------------------------------------------------------------------------- */

static int key_equal(const char *given, size_t glen, const char *key) {
  unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)given, glen, a);
  SHA256((const unsigned char *)key, strlen(key), b);
  return CRYPTO_memcmp(a, b, sizeof a) == 0;
}

/* base64url without padding into out (cap bytes); the decoded length, or -1. */
static long b64url_decode(const char *s, size_t n, unsigned char *out, size_t cap) {
  unsigned val = 0;
  int bits = 0;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)s[i], v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '-') v = 62;
    else if (c == '_') v = 63;
    else if (c == '=') break;
    else return -1;
    val = (val << 6) | (unsigned)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (o >= cap) return -1;
      out[o++] = (unsigned char)((val >> bits) & 0xff);
    }
  }
  return (long)o;
}

int http_jwt_check(const char *token, const char *secret, double now, int *read_only) {
  const char *d1 = strchr(token, '.');
  const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
  if (!d1 || !d2 || strchr(d2 + 1, '.')) return -1;
  size_t tlen = strlen(token);
  if (tlen > 8192) return -1;
  unsigned char mac[EVP_MAX_MD_SIZE], sig[64];
  unsigned int maclen = 0;
  if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)token,
            (size_t)(d2 - token), mac, &maclen))
    return -1;
  long siglen = b64url_decode(d2 + 1, tlen - (size_t)(d2 + 1 - token), sig, sizeof sig);
  if (siglen != (long)maclen || CRYPTO_memcmp(sig, mac, maclen)) return -1;
  unsigned char hdr[1024], pl[6144];
  long hl = b64url_decode(token, (size_t)(d1 - token), hdr, sizeof hdr);
  long pln = b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), pl, sizeof pl);
  if (hl <= 0 || pln <= 0) return -1;
  int rc = -1;
  json_t *h = json_loadb((const char *)hdr, (size_t)hl, 0, NULL);
  json_t *p = json_loadb((const char *)pl, (size_t)pln, 0, NULL);
  if (!json_is_object(h) || !json_is_object(p)) goto done;
  const char *alg = json_string_value(json_object_get(h, "alg"));
  if (!alg || strcmp(alg, "HS256")) goto done;
  json_t *exp = json_object_get(p, "exp");
  if (exp) {
    if (!json_is_number(exp) || json_number_value(exp) <= now) {
      rc = -2;
      goto done;
    }
  }
  /* Qdrant's claim: "access": "r" for read-only, "m" (manage) for everything. */
  const char *access = json_string_value(json_object_get(p, "access"));
  *read_only = access && !strcmp(access, "r");
  rc = 0;
done:
  json_decref(h);
  json_decref(p);
  return rc;
}

/* 0 when allowed (read_only set), else the HTTP status to answer with; msg says why. */
static int authenticate(server *s, struct MHD_Connection *c, int *read_only, const char **msg) {
  const server_config *cfg = &s->cfg;
  *read_only = 0;
  if (!cfg->n_api_keys && !cfg->n_ro_keys && !cfg->jwt_secret[0]) return 0;
  const char *tok = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "api-key");
  if (!tok) {
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (a && !strncasecmp(a, "Bearer ", 7)) tok = a + 7;
  }
  if (!tok || !*tok) {
    *msg = "this server needs an API key: send it as the api-key header or Authorization: Bearer";
    return 401;
  }
  size_t tl = strlen(tok);
  int ok = 0, ro = 0;
  /* Every key is compared, so the time does not say which list matched. */
  for (size_t i = 0; i < cfg->n_api_keys; i++) ok |= key_equal(tok, tl, cfg->api_keys[i]);
  for (size_t i = 0; i < cfg->n_ro_keys; i++)
    if (key_equal(tok, tl, cfg->ro_keys[i]) && !ok) ok = ro = 1;
  if (!ok && cfg->jwt_secret[0]) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int jrc = http_jwt_check(tok, cfg->jwt_secret, (double)ts.tv_sec, &ro);
    if (jrc == -2) {
      *msg = "the token has expired";
      return 401;
    }
    ok = jrc == 0;
  }
  if (!ok) {
    *msg = "invalid API key or token";
    return 401;
  }
  *read_only = ro;
  return 0;
}

/* ---- MHD callbacks -------------------------------------------------------------------- */

static enum MHD_Result send_resp(struct MHD_Connection *c, conn_state *cs, http_resp *w) {
  if (!w->body) http_reply_error(w, w->status ? w->status : 500, "the handler gave no response");
  struct MHD_Response *r = MHD_create_response_from_buffer(w->body_len, w->body, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(w->body);
    w->body = NULL; /* w may be the connection's own (an offloaded reply), freed again at completion */
    return MHD_NO;
  }
  w->body = NULL;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                          w->content_type ? w->content_type : "application/json");
  if (w->retry_after > 0) {
    char ra[16];
    snprintf(ra, sizeof ra, "%d", w->retry_after);
    MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, ra);
  }
  cs->status = w->status;
  enum MHD_Result ret = MHD_queue_response(c, (unsigned)w->status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *c, conn_state *cs, int status,
                                  int retry_after, const char *msg) {
  http_resp w = {0};
  http_reply_error(&w, status, "%s", msg);
  w.retry_after = retry_after;
  return send_resp(c, cs, &w);
}

/* Runs a route's handler under the collection-handle lock. */
static void run_route(http_server *h, const http_route *rt, http_req *req, http_resp *w) {
  /* Open routes (health checks, GET /, the OpenAPI document) touch no collection, so
   * they skip the lock: a delete waiting behind a long ingest must not make /readyz hang. */
  int locked = !(rt->flags & HTTP_ROUTE_OPEN);
  if (locked && (rt->flags & HTTP_ROUTE_EXCLUSIVE))
    pthread_rwlock_wrlock(&h->handles);
  else if (locked)
    pthread_rwlock_rdlock(&h->handles);
  rt->fn(req, w);
  if (locked) pthread_rwlock_unlock(&h->handles);
  if (w->status == 429 && w->retry_after <= 0) w->retry_after = 1;
}

/* An offload thread (inv. 4): runs queued model routes until stopped and the queue is empty. */
static void *offload_main(void *arg) {
  http_server *h = arg;
  pthread_mutex_lock(&h->off_mu);
  for (;;) {
    while (!h->off_head && !h->off_stop) pthread_cond_wait(&h->off_cv, &h->off_mu);
    conn_state *cs = h->off_head;
    if (!cs) break;
    h->off_head = cs->next;
    if (!h->off_head) h->off_tail = NULL;
    cs->next = NULL;
    pthread_mutex_unlock(&h->off_mu);
    run_route(h, cs->route, &cs->req, &cs->resp);
    cs->resp_ready = 1;
    MHD_resume_connection(cs->conn);
    pthread_mutex_lock(&h->off_mu);
  }
  pthread_mutex_unlock(&h->off_mu);
  return NULL;
}

static void offload_stop(http_server *h) {
  pthread_mutex_lock(&h->off_mu);
  h->off_stop = 1;
  pthread_cond_broadcast(&h->off_cv);
  pthread_mutex_unlock(&h->off_mu);
  for (int i = 0; i < h->n_off; i++) pthread_join(h->off_threads[i], NULL);
  h->n_off = 0;
  pthread_cond_destroy(&h->off_cv);
  pthread_mutex_destroy(&h->off_mu);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
  http_server *h = cls;
  server *s = h->srv;
  conn_state *cs = *con_cls;
  if (!cs) {
    cs = calloc(1, sizeof *cs);
    if (!cs) return MHD_NO;
    cs->start = server_now();
    *con_cls = cs;
    __atomic_add_fetch(&h->inflight, 1, __ATOMIC_SEQ_CST);
    int mismatch = 0;
    cs->route = http_find_route(method, url, cs->params, cs->path_buf, sizeof cs->path_buf, &mismatch);
    cs->mismatch = mismatch;
    /* Auth needs only the headers, so it is checked before the body is read: a client
     * without a key cannot make the server buffer max_body_bytes. The answer goes out now;
     * MHD then closes the connection rather than read a body nobody will use. */
    if (cs->route && !(cs->route->flags & HTTP_ROUTE_OPEN)) {
      const char *why = NULL;
      int st = authenticate(s, c, &cs->read_only, &why);
      if (st) return send_error(c, cs, st, 0, why);
      if (cs->read_only && (cs->route->flags & HTTP_ROUTE_WRITE))
        return send_error(c, cs, 403, 0, "this key is read-only; the route changes data");
    }
    /* A declared length over the limit is refused before any of the body is read. */
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > s->cfg.max_body_bytes) cs->too_big = 1;
    return MHD_YES;
  }
  if (*upload_size) {
    size_t n = *upload_size;
    *upload_size = 0;
    if (cs->too_big || cs->len + n > s->cfg.max_body_bytes) {
      /* Drain the rest (reading costs no memory) so the client gets the 413 instead of a
       * reset connection; past DRAIN_MAX the connection is closed (MHD cannot answer
       * while a body is still arriving). */
      cs->too_big = 1;
      cs->discarded += n;
      if (cs->discarded > DRAIN_MAX && cs->discarded > 4 * s->cfg.max_body_bytes) return MHD_NO;
      return MHD_YES;
    }
    if (cs->len + n + 1 > cs->cap) {
      size_t cap = cs->cap ? cs->cap : 4096;
      while (cap < cs->len + n + 1) cap *= 2;
      char *g = realloc(cs->body, cap);
      if (!g) return MHD_NO; /* out of memory: drop the connection */
      cs->body = g;
      cs->cap = cap;
    }
    memcpy(cs->body + cs->len, upload, n);
    cs->len += n;
    return MHD_YES;
  }
  /* The whole request is here. */
  if (cs->resp_ready) return send_resp(c, cs, &cs->resp); /* back from an offload thread */
  if (cs->too_big) {
    char msg[128];
    snprintf(msg, sizeof msg, "the request body is larger than the limit of %zu bytes", s->cfg.max_body_bytes);
    return send_error(c, cs, 413, 0, msg);
  }
  http_req req = {0};
  const http_route *rt = cs->route;
  memcpy(req.params, cs->params, sizeof req.params);
  if (!rt) {
    char msg[2200];
    if (cs->mismatch) {
      snprintf(msg, sizeof msg, "method %.16s is not allowed on %.2000s", method, url);
      return send_error(c, cs, 405, 0, msg);
    }
    snprintf(msg, sizeof msg, "no route for %.16s %.2000s", method, url);
    return send_error(c, cs, 404, 0, msg);
  }
  int read_only = cs->read_only; /* authenticated on the first call */
  if (!(rt->flags & HTTP_ROUTE_OPEN)) {
    if (!__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE))
      return send_error(c, cs, 503, 1, "the server is starting: the data directory and models are loading");
  }
  if ((size_t)__atomic_load_n(&h->inflight, __ATOMIC_SEQ_CST) > s->cfg.max_in_flight)
    return send_error(c, cs, 429, 1, "too many requests in flight; try again shortly");
  req.method = method;
  req.path = url;
  req.body = cs->body ? cs->body : "";
  req.body_len = cs->len;
  if (cs->body) cs->body[cs->len] = '\0';
  req.read_only = read_only;
  req.srv = s;
  req.conn = c;
  (void)version;
  if ((rt->flags & HTTP_ROUTE_MODEL) && h->n_off > 0) {
    /* inv. 4: suspended before it is queued, so the resume cannot come first */
    cs->conn = c;
    cs->req = req;
    cs->resp.status = 200;
    MHD_suspend_connection(c);
    pthread_mutex_lock(&h->off_mu);
    if (h->off_tail) h->off_tail->next = cs;
    else h->off_head = cs;
    h->off_tail = cs;
    pthread_cond_signal(&h->off_cv);
    pthread_mutex_unlock(&h->off_mu);
    return MHD_YES;
  }
  http_resp w = {.status = 200};
  run_route(h, rt, &req, &w);
  return send_resp(c, cs, &w);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  http_server *h = cls;
  conn_state *cs = *con_cls;
  (void)c;
  if (!cs) return;
  if (h->srv->metrics)
    metrics_request(h->srv->metrics, cs->route ? cs->route->name : "unmatched",
                    cs->status ? cs->status : (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? 200 : 499),
                    server_now() - cs->start);
  free(cs->body);
  free(cs->resp.body);
  free(cs);
  *con_cls = NULL;
  __atomic_sub_fetch(&h->inflight, 1, __ATOMIC_SEQ_CST);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
  char msg[512];
  (void)cls;
  vsnprintf(msg, sizeof msg, fmt, ap);
  size_t n = strlen(msg);
  while (n && msg[n - 1] == '\n') msg[--n] = '\0';
  LOG_DEBUG("http: %s", msg);
}

qv_status http_start(server *s, qv_error *err) {
  http_server *h = calloc(1, sizeof *h);
  if (!h) return qv_fail(err, QV_ENOMEM, "out of memory");
  h->srv = s;
  /* Writer preference, so a collection delete is not starved by a steady stream of
   * queries; no handler takes the lock twice, so it cannot deadlock a reader. */
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&h->handles, &attr);
  pthread_rwlockattr_destroy(&attr);
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)s->cfg.port);
  const char *host = s->cfg.host;
  if (!strcmp(host, "localhost")) host = "127.0.0.1";
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
    pthread_rwlock_destroy(&h->handles);
    free(h);
    return qv_fail(err, QV_EINVAL, "host \"%s\" is not an IPv4 address", s->cfg.host);
  }
  unsigned timeout = s->cfg.request_timeout_s < 1 ? 1 : (unsigned)s->cfg.request_timeout_s;
  pthread_mutex_init(&h->off_mu, NULL);
  pthread_cond_init(&h->off_cv, NULL);
  /* Fewer threads than asked only cost merging; none at all runs model routes inline,
   * which is all a server configured without models needs (its model routes answer 503
   * at once). The models load after this, so the configuration decides. */
  int want = s->cfg.model[0] || s->cfg.reranker[0] ? OFFLOAD_THREADS : 0;
  while (h->n_off < want && !pthread_create(&h->off_threads[h->n_off], NULL, offload_main, h)) h->n_off++;
  if (h->n_off < want) LOG_WARN("http: %d of %d offload threads started", h->n_off, want);
  h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG |
                              MHD_ALLOW_SUSPEND_RESUME,
                          (uint16_t)s->cfg.port, NULL, NULL, on_request, h,
                          MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                          MHD_OPTION_THREAD_POOL_SIZE, (unsigned)s->cfg.threads,
                          MHD_OPTION_CONNECTION_TIMEOUT, timeout,
                          MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                          MHD_OPTION_LISTENING_ADDRESS_REUSE, 1U,
                          MHD_OPTION_END);
  if (!h->d) {
    offload_stop(h);
    pthread_rwlock_destroy(&h->handles);
    free(h);
    return qv_fail(err, QV_EINVAL, "cannot listen on %s:%d (in use, or not allowed)", s->cfg.host, s->cfg.port);
  }
  if (s->cfg.port == 0) {
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    if (di) s->cfg.port = di->port;
  }
  s->http = h;
  return QV_OK;
}

void http_stop(server *s) {
  http_server *h = s->http;
  if (!h) return;
  MHD_quiesce_daemon(h->d); /* stop accepting; open connections go on */
  double deadline = server_now() + s->cfg.request_timeout_s;
  while (__atomic_load_n(&h->inflight, __ATOMIC_SEQ_CST) > 0 && server_now() < deadline)
    usleep(10000);
  offload_stop(h); /* inv. 4: every offloaded request is resumed before the daemon stops */
  MHD_stop_daemon(h->d);
  docs_release(s);
  pthread_rwlock_destroy(&h->handles);
  free(h);
  s->http = NULL;
}
