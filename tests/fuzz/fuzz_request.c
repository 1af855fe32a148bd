/* libFuzzer target for request decoding without sockets: the input's first line is
 * "METHOD PATH" and the rest is the body. The path goes through route matching (and the
 * first line through the JWT checker, as a token); the body through every Qdrant body
 * decoder, against an unnamed and a named collection configuration. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quiver.h"
#include "server/http.h"
#include "server/qdrant.h"

static void decode_all(json_t *body, const qv_collection_config *cfg) {
  qv_error err;
  qv_collection_config c2;
  (void)qdrant_decode_collection(body, &c2, &err);
  c2 = *cfg;
  (void)qdrant_decode_update(body, &c2, &err);
  qdrant_points pts;
  if (qdrant_decode_points(body, cfg, 1000, &pts, &err) == QV_OK) {
    if (pts.n_texts > pts.n) __builtin_trap();
    for (size_t i = 0; i < pts.n_texts; i++)
      if (pts.text_rows[i] >= pts.n || !pts.texts[i]) __builtin_trap();
    qdrant_points_free(&pts);
  }
  for (int legacy = 0; legacy < 2; legacy++) {
    qdrant_query q;
    qv_status st = qdrant_decode_query(body, cfg, legacy, 0, &q, &err);
    if (st == QV_OK && q.kind == QQ_VECTOR && !q.vector) __builtin_trap();
    qdrant_query_free(&q);
  }
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
    const char *body = (const char *)nl + 1;
    size_t blen = size - (size_t)(nl - data) - 1;
    json_t *j = json_loadb(body, blen, JSON_REJECT_DUPLICATES, NULL);
    if (json_is_object(j)) {
      qv_collection_config unnamed = {.size = 4, .distance = QV_DIST_COSINE};
      qv_collection_config named = {.size = 3, .distance = QV_DIST_DOT, .vector_name = "v"};
      decode_all(j, &unnamed);
      decode_all(j, &named);
    }
    json_decref(j);
  }
  return 0;
}
