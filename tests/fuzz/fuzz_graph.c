/* libFuzzer target: HNSW graph files (hnsw_load_ex), as collections read them at open.
 * A mutated file almost never passes the CRC-32C checks, which would keep the fuzzer at
 * the door; so, for inputs with a flag byte set, the harness first rewrites both
 * checksums (the header's and the file's), letting mutations reach the header checks,
 * the size arithmetic and the graph validation. A file that loads is then searched at
 * several widths and saved again, so ASan sees every link it follows. */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/hash.h"
#include "index/hnsw.h"

#define HDR 96

/* Reading every byte of the map lets ASan see an overread; the sink keeps the reads. */
static volatile uint8_t fuzz_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int fix = data[0] & 1;
  data++;
  size--;
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf) return 0;
  memcpy(buf, data, size);
  if (fix && size >= HDR + 4) {
    uint32_t h = qv_crc32c(0, buf, HDR - 4), t;
    memcpy(buf + HDR - 4, &h, 4);
    t = qv_crc32c(0, buf, size - 4);
    memcpy(buf + size - 4, &t, 4);
  }
  char path[64], out[80];
  snprintf(path, sizeof path, "/tmp/fuzz_graph-%d", (int)getpid());
  snprintf(out, sizeof out, "%s.saved", path);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(buf, 1, size, f) != size) {
    if (f) fclose(f);
    free(buf);
    return 0;
  }
  fclose(f);
  free(buf);
  hnsw *h = NULL;
  void *extra = NULL;
  size_t extra_len = 0;
  if (hnsw_load_ex(&h, path, &extra, &extra_len) == QV_OK) {
    for (size_t i = 0; i < extra_len; i++) fuzz_sink ^= ((uint8_t *)extra)[i];
    size_t dim = hnsw_dim(h);
    float *q = calloc(dim, sizeof *q);
    hnsw_hit hits[16];
    size_t got;
    if (q) {
      for (size_t i = 0; i < dim; i++) q[i] = (float)(i % 7) - 3.0f;
      hnsw_search(h, q, 16, 16, NULL, hits, &got);
      hnsw_search(h, q, 1, 200, NULL, hits, &got);
      if (hnsw_count(h)) hnsw_mark_deleted(h, 0);
      hnsw_search(h, q, 5, 5, NULL, hits, &got);
    }
    free(q);
    hnsw_save_ex(h, out, extra, extra_len);
    unlink(out);
    hnsw_free(h);
  }
  free(extra);
  unlink(path);
  return 0;
}
