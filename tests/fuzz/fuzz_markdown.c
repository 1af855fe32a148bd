/* libFuzzer target: the input parsed as each document format, then cut by each chunker
 * with a small budget and an overlap, with a token counter that needs no model files (one
 * token per 4 bytes, rounded up, per word: additive over whitespace like BERT's). Checks
 * that every map entry lies in the input and that chunks respect their budget. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "text/text.h"

static qv_status count4(void *ctx, const char *s, size_t n, uint32_t *out, qv_error *err) {
  (void)ctx;
  (void)err;
  uint32_t t = 0;
  size_t run = 0;
  for (size_t i = 0; i <= n; i++) {
    int sp = i == n || s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r' || s[i] == '\f' || s[i] == '\v';
    if (!sp) run++;
    else if (run) t += (uint32_t)((run + 3) / 4), run = 0;
  }
  *out = t;
  return QV_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int f = 0; f <= TEXT_HTML; f++) {
    text_doc d;
    if (text_parse(&d, (const char *)data, size, (text_format)f, NULL)) continue;
    for (size_t i = 0; i < d.len; i++)
      if (d.map[i] > d.map_end[i] || d.map_end[i] > size) abort();
    for (size_t b = 0; b < d.nblocks; b++) {
      if (d.blocks[b].end > d.len || d.blocks[b].start > d.blocks[b].end) abort();
      json_decref(text_block_headings(&d, b));
    }
    for (int k = 0; k < 4; k++) {
      text_chunk_config c = {.kind = (text_chunker)k, .size = 7, .min = 3, .max = 7, .overlap = 0.3};
      text_chunk *ch;
      size_t nc;
      if (text_chunk_doc(&d, (const char *)data, size, &c, count4, NULL, &ch, &nc, NULL)) continue;
      for (size_t i = 0; i < nc; i++)
        if (ch[i].tokens > 7 || ch[i].end > d.len || ch[i].src_end > size || ch[i].line_start > ch[i].line_end) abort();
      free(ch);
    }
    text_doc_free(&d);
  }
  return 0;
}
