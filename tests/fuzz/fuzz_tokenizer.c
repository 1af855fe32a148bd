/* libFuzzer target: the input as text for tok_encode, alone and split in two at its first
 * byte's value as a pair, with no limit and with max_len 16, through a small tokenizer
 * embedded here (every normalizer step, added tokens with lstrip/rstrip/single_word, the
 * pair template) so that runs need no files. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"

static const char tokenizer_json[] =
    "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,"
    "\"added_tokens\":["
    "{\"id\":0,\"content\":\"[PAD]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
    "{\"id\":1,\"content\":\"[UNK]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
    "{\"id\":2,\"content\":\"[CLS]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
    "{\"id\":3,\"content\":\"[SEP]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
    "{\"id\":4,\"content\":\"[MASK]\",\"single_word\":false,\"lstrip\":true,\"rstrip\":true,\"normalized\":false,\"special\":true},"
    "{\"id\":30,\"content\":\"Hello World\",\"single_word\":true,\"lstrip\":false,\"rstrip\":false,\"normalized\":true,\"special\":false},"
    "{\"id\":31,\"content\":\"\\u0130s\",\"single_word\":false,\"lstrip\":true,\"rstrip\":false,\"normalized\":true,\"special\":false}],"
    "\"normalizer\":{\"type\":\"BertNormalizer\",\"clean_text\":true,\"handle_chinese_chars\":true,"
    "\"strip_accents\":null,\"lowercase\":true},"
    "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\","
    "\"single\":[{\"SpecialToken\":{\"id\":\"[CLS]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},"
    "{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":0}}],"
    "\"pair\":[{\"SpecialToken\":{\"id\":\"[CLS]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},"
    "{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"B\",\"type_id\":1}},"
    "{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":1}}],"
    "\"special_tokens\":{\"[CLS]\":{\"id\":\"[CLS]\",\"ids\":[2],\"tokens\":[\"[CLS]\"]},"
    "\"[SEP]\":{\"id\":\"[SEP]\",\"ids\":[3],\"tokens\":[\"[SEP]\"]}}},"
    "\"decoder\":null,"
    "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\","
    "\"max_input_chars_per_word\":12,\"vocab\":{\"[PAD]\":0,\"[UNK]\":1,\"[CLS]\":2,\"[SEP]\":3,"
    "\"[MASK]\":4,\"a\":5,\"##a\":6,\"b\":7,\"##b\":8,\"ab\":9,\"##ab\":10,\"hello\":11,\"world\":12,"
    "\"##llo\":13,\"he\":14,\",\":15,\"!\":16,\"\\u4e2d\":17,\"e\":18,\"##e\":19,\"i\":20,\"##\\u0307\":21,"
    "\"\\u03c3\":22,\"1\":23,\"##1\":24,\"\\u00e9\":25,\"##s\":26,\"s\":27,\"[\":28,\"]\":29}}}";

static qv_tokenizer *tok;

static void check(const tok_encoding *e, qv_status st, size_t max_len) {
  if (st != QV_OK) return;
  if (max_len && e->len > max_len && e->len > 3) abort();
  if (e->len > e->untruncated_len) abort();
  for (size_t i = 0; i < e->len; i++)
    if (e->ids[i] < 0 || (size_t)e->ids[i] >= tok_vocab_size(tok) || e->type_ids[i] < 0 || e->type_ids[i] > 1)
      abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!tok && tok_from_json(&tok, tokenizer_json, sizeof tokenizer_json - 1, NULL) != QV_OK) abort();
  const char *text = (const char *)data;
  static tok_encoding e;
  static const size_t limits[] = {0, 16};
  for (int i = 0; i < 2; i++) {
    check(&e, tok_encode(tok, text, size, NULL, 0, limits[i], &e, NULL), limits[i]);
    size_t cut = size ? data[0] % (size + 1) : 0;
    check(&e, tok_encode(tok, text, cut, text + cut, size - cut, limits[i], &e, NULL), limits[i]);
  }
  return 0;
}
