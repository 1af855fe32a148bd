/* libFuzzer target for the embedding surfaces' request parsing (openai.c, tei.c, legacy.c):
 * the first byte picks a route, the rest is the body. Every input gets a response with a
 * status and a JSON body (or TEI's empty /health), never a crash. The real model is used
 * when it is in the cache (so token ids, truncation and tokenize run); without it the
 * handlers answer 503 after parsing. Write routes are left out: they would grow the data
 * directory without bound. */
#define _GNU_SOURCE
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/server.h"

static server srv;

static void setup(void) {
  static int done;
  if (done) return;
  done = 1;
  char dir[] = "/tmp/qv-fuzz-embed-XXXXXX";
  if (!mkdtemp(dir) || qv_db_open(&srv.db, dir, NULL)) abort();
  const char *home = getenv("HOME");
  char path[1024];
  snprintf(path, sizeof path, "%s/.cache/quiver/models/all-MiniLM-L6-v2", home ? home : "/nonexistent");
  if (qv_model_load(&srv.model, path, NULL)) srv.model = NULL;
  srv.cfg.truncate = 1;
  srv.cfg.max_batch = 64;
  srv.metrics = metrics_new();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  setup();
  if (size < 1) return 0;
  const http_route *tables[] = {openai_routes, tei_routes, legacy_routes};
  const http_route *routes[32];
  size_t n = 0;
  for (size_t t = 0; t < 3; t++)
    for (const http_route *r = tables[t]; r->pattern && n < 32; r++)
      if (!(r->flags & HTTP_ROUTE_WRITE)) routes[n++] = r;
  const http_route *rt = routes[data[0] % n];
  char *body = malloc(size);
  if (!body) return 0;
  memcpy(body, data + 1, size - 1);
  body[size - 1] = '\0';
  http_req req = {.method = rt->method, .path = rt->pattern, .body = body, .body_len = size - 1, .srv = &srv};
  http_resp w = {0};
  rt->fn(&req, &w);
  if (w.status < 200 || w.status > 599) __builtin_trap();
  if (w.status != 200 || strcmp(rt->name, "tei_health") != 0) {
    json_t *j = w.body ? json_loadb(w.body, w.body_len, JSON_DECODE_ANY, NULL) : NULL;
    if (!j) __builtin_trap();
    json_decref(j);
  }
  free(w.body);
  free(body);
  return 0;
}
