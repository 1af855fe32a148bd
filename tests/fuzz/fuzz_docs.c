/* libFuzzer target for the document routes' body decoders (server/docs.h): any bytes that
 * parse as JSON go through the ingest and the query decoder; an accepted body must yield a
 * usable chunking configuration and query. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "quiver.h"
#include "server/docs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_t *b = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
  if (!b) return 0;
  qv_error err;
  text_chunk_config cc;
  if (docs_decode_ingest(b, 256, 100, &cc, &err) == QV_OK) {
    if (cc.size < 1 || cc.size > 254 || cc.max < 1 || cc.max > 254 || !(cc.overlap >= 0 && cc.overlap <= 0.9))
      __builtin_trap();
    if (json_array_size(json_object_get(b, "documents")) < 1) __builtin_trap();
  }
  text_query q;
  int rerank;
  qv_filter *f = NULL;
  if (docs_decode_query(b, &q, &rerank, &f, &err) == QV_OK) {
    if (!q.text || !*q.text || q.k < 1 || q.k > 1000) __builtin_trap();
    if ((f != NULL) != (q.filter != NULL)) __builtin_trap();
  }
  qv_filter_free(f);
  json_decref(b);
  return 0;
}
