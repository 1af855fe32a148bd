/* The HTTP layer's pure parts: route matching with {param} segments and specificity,
 * 404 vs 405, HS256 JWT checks (valid, expired, tampered, wrong alg, malformed), and
 * UTF-8 sanitizing of error text, and the one qv_status -> HTTP status table. */
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#include "quiver.h"
#include "server/http.h"

#include "test.h"

TEST(match_params) {
  const char *p[HTTP_MAX_PARAMS] = {0};
  char buf[256];
  ASSERT(http_match("/collections/{name}/points/{id}", "/collections/docs/points/42", p, buf, sizeof buf));
  ASSERT_STR_EQ(p[0], "docs");
  ASSERT_STR_EQ(p[1], "42");
  ASSERT(http_match("/collections/{name}", "/collections/docs/", p, buf, sizeof buf)); /* trailing slash */
  ASSERT(!http_match("/collections/{name}", "/collections/", p, buf, sizeof buf));     /* empty segment */
  ASSERT(!http_match("/collections/{name}", "/collections/a/b", p, buf, sizeof buf));
  ASSERT(!http_match("/collections", "/collectionsX", p, buf, sizeof buf));
  ASSERT(!http_match("/collections/{name}", "/collections/docs", p, buf, 3)); /* no room for the value */
  ASSERT(http_match("/", "/", p, buf, sizeof buf));
}

TEST(find_route_specific_first_and_405) {
  const char *p[HTTP_MAX_PARAMS] = {0};
  char buf[256];
  int mismatch = 0;
  const http_route *r = http_find_route("POST", "/collections/c/points/query", p, buf, sizeof buf, &mismatch);
  ASSERT(r);
  ASSERT_STR_EQ(r->name, "qdrant_query");
  ASSERT_STR_EQ(p[0], "c");
  r = http_find_route("GET", "/collections/c/points/7", p, buf, sizeof buf, &mismatch);
  ASSERT(r);
  ASSERT_STR_EQ(r->name, "qdrant_get_point");
  ASSERT_STR_EQ(p[1], "7");
  /* GET on a literal route's path is 405, not the {id} route with id "query". */
  ASSERT(!http_find_route("GET", "/collections/c/points/query", p, buf, sizeof buf, &mismatch));
  ASSERT_EQ(mismatch, 1);
  ASSERT(!http_find_route("DELETE", "/healthz", p, buf, sizeof buf, &mismatch));
  ASSERT_EQ(mismatch, 1);
  ASSERT(!http_find_route("GET", "/nope", p, buf, sizeof buf, &mismatch));
  ASSERT_EQ(mismatch, 0);
  r = http_find_route("GET", "/", p, buf, sizeof buf, &mismatch);
  ASSERT(r && (r->flags & HTTP_ROUTE_OPEN));
  r = http_find_route("PUT", "/collections/c/points", p, buf, sizeof buf, &mismatch);
  ASSERT(r && (r->flags & HTTP_ROUTE_WRITE));
}

static void b64url(const unsigned char *in, size_t n, char *out) {
  static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
    out[o++] = t[(v >> 18) & 63];
    out[o++] = t[(v >> 12) & 63];
    if (i + 1 < n) out[o++] = t[(v >> 6) & 63];
    if (i + 2 < n) out[o++] = t[v & 63];
  }
  out[o] = '\0';
}

static void make_jwt(char *out, const char *header, const char *payload, const char *secret) {
  char h[512], p[512];
  b64url((const unsigned char *)header, strlen(header), h);
  b64url((const unsigned char *)payload, strlen(payload), p);
  size_t n = (size_t)sprintf(out, "%s.%s", h, p);
  unsigned char mac[64];
  unsigned len = 0;
  HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)out, n, mac, &len);
  out[n++] = '.';
  b64url(mac, len, out + n);
}

TEST(jwt) {
  char tok[2048];
  int ro = -1;
  const char *hs = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
  make_jwt(tok, hs, "{\"exp\":2000,\"access\":\"m\"}", "s");
  ASSERT_EQ(http_jwt_check(tok, "s", 1000, &ro), 0);
  ASSERT_EQ(ro, 0);
  ASSERT_EQ(http_jwt_check(tok, "s", 2000, &ro), -2); /* exp is exclusive */
  ASSERT_EQ(http_jwt_check(tok, "t", 1000, &ro), -1); /* another secret */
  make_jwt(tok, hs, "{\"access\":\"r\"}", "s");
  ASSERT_EQ(http_jwt_check(tok, "s", 1e9, &ro), 0);
  ASSERT_EQ(ro, 1);
  make_jwt(tok, "{\"alg\":\"none\"}", "{}", "s");
  ASSERT_EQ(http_jwt_check(tok, "s", 0, &ro), -1);
  make_jwt(tok, hs, "{\"exp\":\"soon\"}", "s");
  ASSERT_EQ(http_jwt_check(tok, "s", 0, &ro), -2);
  make_jwt(tok, hs, "[1]", "s");
  ASSERT_EQ(http_jwt_check(tok, "s", 0, &ro), -1);
  /* Tampering with one character of the payload breaks the signature. */
  make_jwt(tok, hs, "{\"exp\":2000}", "s");
  char *dot = strchr(tok, '.');
  dot[2] = dot[2] == 'A' ? 'B' : 'A';
  ASSERT_EQ(http_jwt_check(tok, "s", 0, &ro), -1);
  const char *junk[] = {"", ".", "..", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"};
  for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) ASSERT_EQ(http_jwt_check(junk[i], "s", 0, &ro), -1);
}

TEST(utf8_sanitize) {
  char a[] = "ok \xc3\xa9 \xff bad \xe2\x82 \xed\xa0\x80 \xf0\x9f\x98\x80 \xc0\xaf end";
  http_utf8_sanitize(a);
  json_t *j = json_string(a);
  ASSERT(j);
  json_decref(j);
  ASSERT(strstr(a, "\xc3\xa9"));         /* valid é kept */
  ASSERT(strstr(a, "\xf0\x9f\x98\x80")); /* valid 4-byte kept */
  ASSERT(!strchr(a, '\xff'));
}

/* One table for every surface: each status code lands in its class. */
TEST(status_table) {
  static const qv_status bad[] = {QV_EINVAL, QV_EJSON, QV_EFILTER, QV_ENAME, QV_EDIM, QV_ENONFINITE, QV_ERANGE,
                                  QV_EUNSUPPORTED};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) ASSERT_EQ(http_status_of(bad[i]), 400);
  ASSERT_EQ(http_status_of(QV_NOTFOUND), 404);
  ASSERT_EQ(http_status_of(QV_EXISTS), 409);
  ASSERT_EQ(http_status_of(QV_ETOOLONG), 413);
  ASSERT_EQ(http_status_of(QV_EBUSY), 429);
  ASSERT_EQ(http_status_of(QV_ENOMODEL), 503);
  static const qv_status internal[] = {QV_ENOMEM, QV_EFORMAT, QV_ETRUNC, QV_ECORRUPT, QV_ELOCKED,
                                       QV_ESTORE, QV_ESTICKY, QV_EDEVICE, 5 /* EIO */, 28 /* ENOSPC */};
  for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++) ASSERT_EQ(http_status_of(internal[i]), 500);
}

TEST_MAIN(T(match_params), T(find_route_specific_first_and_405), T(jwt), T(utf8_sanitize), T(status_table))
