/* libFuzzer target: the input as a tokenizer.json for tok_from_json; what loads then
 * encodes a fixed text and a pair. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "model/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  qv_tokenizer *t = NULL;
  qv_error err;
  if (tok_from_json(&t, (const char *)data, size, &err) != QV_OK) return 0;
  static const char text[] = "Hello, [MASK] w\xc3\xb6rld! \xe4\xb8\xad unaffable x";
  tok_encoding e = {0};
  if (tok_encode(t, text, sizeof text - 1, NULL, 0, 0, &e, &err) == QV_OK) {
    for (size_t i = 0; i < e.len; i++)
      if (e.ids[i] < 0 || (size_t)e.ids[i] >= tok_vocab_size(t)) abort();
  }
  (void)tok_encode(t, text, 10, text + 10, sizeof text - 11, 8, &e, &err);
  (void)tok_id(t, "[UNK]");
  (void)tok_token(t, 0);
  tok_encoding_free(&e);
  tok_free(t);
  return 0;
}
