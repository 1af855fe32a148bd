/* libFuzzer target: the input as a tokenizer.json for gpt_bpe_from_json (what loads then
 * encodes a fixed text, is saved and loaded again), and the input as text for a trained
 * tokenizer's encode, whose decode must give the input back. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpt/bpe.h"

static gpt_bpe *trained;

static void check_ids(const gpt_bpe *b, const int32_t *ids, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || (size_t)ids[i] >= gpt_bpe_vocab_size(b)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  qv_error err;
  if (!trained) {
    static const char *texts[] = {"The quick brown fox's 12 jumps   over\n\n the lazy dog. caf\xc3\xa9 \xe4\xb8\xad"};
    size_t lens[] = {strlen(texts[0])};
    if (gpt_bpe_train(&trained, texts, lens, 1, 320, NULL, NULL, &err)) abort();
  }
  int32_t *ids = NULL;
  size_t n = 0, len = 0;
  if (gpt_bpe_encode(trained, (const char *)data, size, &ids, &n)) abort();
  check_ids(trained, ids, n);
  char *back = gpt_bpe_decode(trained, ids, n, &len);
  if (!back || len != size || memcmp(back, data, size)) abort();
  free(back);
  free(ids);

  gpt_bpe *b = NULL;
  if (gpt_bpe_from_json(&b, (const char *)data, size, &err) != QV_OK) return 0;
  static const char text[] = "Hello, w\xc3\xb6rld! it's <|endoftext|> 42  \xf0\x9f\x98\x80\xff";
  if (gpt_bpe_encode(b, text, sizeof text - 1, &ids, &n) == QV_OK) {
    check_ids(b, ids, n);
    free(gpt_bpe_decode(b, ids, n, &len));
    free(ids);
  }
  (void)gpt_bpe_token_bytes(b, 0, &len);
  (void)gpt_bpe_eot(b);
  char *json = gpt_bpe_to_json(b);
  if (json) {
    gpt_bpe *c = NULL;
    if (gpt_bpe_from_json(&c, json, strlen(json), &err) == QV_OK) gpt_bpe_free(c);
    free(json);
  }
  gpt_bpe_free(b);
  return 0;
}
