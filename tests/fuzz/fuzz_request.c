/* libFuzzer target for request decoding without sockets: the input's first line is
 * "METHOD PATH" and the rest is the body. The path goes through route matching (and the
 * first line through the JWT checker, as a token); the body through every Qdrant body
 * decoder, against an unnamed and a named collection configuration, both as sent and as
 * vecjson_rewrite turns it, which must decode to the same statuses and vectors. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quiver.h"
#include "server/http.h"
#include "server/qdrant.h"

/* What the decoders made of a body: each decoder's status and the vectors it read, so
 * the body as sent and the body vecjson_rewrite made can be compared. */
typedef struct outcome {
  qv_status st[5];
  float vec[3][8 * 4]; /* points (first 8), query, legacy query */
  size_t nvec[3];
} outcome;

static void decode_all(json_t *body, const vecjson *vt, const qv_collection_config *cfg, outcome *o) {
  qv_error err;
  qv_collection_config c2;
  memset(o, 0, sizeof *o);
  o->st[0] = qdrant_decode_collection(body, &c2, &err);
  c2 = *cfg;
  o->st[1] = qdrant_decode_update(body, &c2, &err);
  qdrant_points pts;
  if ((o->st[2] = qdrant_decode_points(body, vt, cfg, 1000, &pts, &err)) == QV_OK) {
    if (pts.n_texts > pts.n) __builtin_trap();
    for (size_t i = 0; i < pts.n_texts; i++)
      if (pts.text_rows[i] >= pts.n || !pts.texts[i]) __builtin_trap();
    o->nvec[0] = (pts.n < 8 ? pts.n : 8) * cfg->size;
    if (o->nvec[0]) memcpy(o->vec[0], pts.vectors, o->nvec[0] * sizeof(float));
    qdrant_points_free(&pts);
  }
  for (int legacy = 0; legacy < 2; legacy++) {
    qdrant_query q;
    qv_status st = qdrant_decode_query(body, vt, cfg, legacy, 0, &q, &err);
    o->st[3 + legacy] = st;
    if (st == QV_OK && q.kind == QQ_VECTOR && !q.vector) __builtin_trap();
    if (st == QV_OK && q.kind == QQ_VECTOR) {
      o->nvec[1 + legacy] = cfg->size;
      memcpy(o->vec[1 + legacy], q.vector, cfg->size * sizeof(float));
    }
    qdrant_query_free(&q);
  }
}

/* The body as sent and as vecjson_rewrite made it: both parse or neither, and every
 * decoder answers the same, down to the bits of each vector. */
static void decode_both(const char *text, size_t len, const qv_collection_config *cfg) {
  json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
  vecjson vt;
  size_t flen;
  char *fast = vecjson_rewrite(text, len, &flen, &vt);
  json_t *f = fast ? json_loadb(fast, flen, JSON_REJECT_DUPLICATES, NULL) : NULL;
  if (fast && !j != !f) __builtin_trap();
  if (json_is_object(j)) {
    outcome a, b;
    decode_all(j, NULL, cfg, &a);
    if (f) {
      decode_all(f, &vt, cfg, &b);
      if (memcmp(a.st, b.st, sizeof a.st) || memcmp(a.nvec, b.nvec, sizeof a.nvec)) __builtin_trap();
      for (int k = 0; k < 3; k++)
        if (memcmp(a.vec[k], b.vec[k], a.nvec[k] * sizeof(float))) __builtin_trap();
    }
  }
  json_decref(f);
  json_decref(j);
  free(fast);
  vecjson_free(&vt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nl = memchr(data, '\n', size);
  size_t line_len = nl ? (size_t)(nl - data) : size;
  if (line_len > 4096) line_len = 4096;
  char *line = malloc(line_len + 1);
  if (!line) return 0;
  memcpy(line, data, line_len);
  line[line_len] = '\0';
  char *sp = strchr(line, ' ');
  if (sp) {
    *sp = '\0';
    const char *params[HTTP_MAX_PARAMS];
    char buf[2048];
    int mismatch;
    const http_route *r = http_find_route(line, sp + 1, params, buf, sizeof buf, &mismatch);
    if (r && (!r->fn || !r->name)) __builtin_trap();
    *sp = ' ';
  }
  int ro;
  (void)http_jwt_check(line, "secret", 1e9, &ro);
  http_utf8_sanitize(line);
  json_t *check = json_string(line); /* sanitized text is always valid UTF-8 */
  if (!check) __builtin_trap();
  json_decref(check);
  free(line);

  if (nl) {
    /* a copy ending in NUL, as http.c hands bodies over */
    size_t blen = size - (size_t)(nl - data) - 1;
    char *body = malloc(blen + 1);
    if (!body) return 0;
    memcpy(body, nl + 1, blen);
    body[blen] = 0;
    qv_collection_config unnamed = {.size = 4, .distance = QV_DIST_COSINE};
    qv_collection_config named = {.size = 3, .distance = QV_DIST_DOT, .vector_name = "v"};
    decode_both(body, blen, &unnamed);
    decode_both(body, blen, &named);
    free(body);
  }
  return 0;
}
