/* Tokenizers read from Hugging Face `tokenizer.json`: the BERT family's pipeline.
 *
 *   normalizer     BertNormalizer {clean_text, handle_chinese_chars, strip_accents, lowercase}
 *                  (strip_accents null follows lowercase, as in HF); or null
 *   pre_tokenizer  BertPreTokenizer (split on whitespace, and each punctuation char alone)
 *   model          WordPiece {vocab, unk_token, continuing_subword_prefix,
 *                  max_input_chars_per_word}
 *   post_processor TemplateProcessing ([CLS] $A [SEP] / [CLS] $A [SEP] $B:1 [SEP]:1), or
 *                  BertProcessing
 *   added_tokens   matched in the text before normalization (or after, when `normalized`),
 *                  leftmost-longest, with single_word/lstrip/rstrip; ids assigned as HF does
 *   truncation     ignored, as is padding (its pad_id aside): the caller's max_len rules
 *                  (sentence-transformers uses its own max_seq_length); pairs truncate
 *                  longest-first with HF's arithmetic
 * Unicode comes from utf8proc, corrected where HF's older Unicode tables differ (see
 * tokenizer.c). Ids match HF `tokenizers` exactly (tests/integration/test_tokenizer.py).
 * Other types of normalizer, pre-tokenizer, model or post-processor are QV_EUNSUPPORTED
 * naming the type; a malformed file is QV_EFORMAT naming the field.
 *
 * A loaded tokenizer is read-only: any number of threads may encode with it at once. Each
 * thread keeps its own working buffers between calls (freed at thread exit, or after a
 * call when larger than 1 MiB). */
#ifndef QV_MODEL_TOKENIZER_H
#define QV_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef struct qv_tokenizer qv_tokenizer;

qv_status tok_load(qv_tokenizer **out, const char *path, qv_error *err);
qv_status tok_from_json(qv_tokenizer **out, const char *json, size_t len, qv_error *err);
void tok_free(qv_tokenizer *t);

typedef struct tok_encoding {
  int32_t *ids;      /* (len) with special tokens */
  int32_t *type_ids; /* (len) 0 for the first sequence, 1 for the second */
  size_t len, cap;
  size_t untruncated_len; /* what len would be with no limit */
} tok_encoding;

/* Encodes text a (and b, for a pair, when b != NULL) with the special tokens. max_len > 0
 * truncates the total to max_len tokens (longest-first for pairs); 0 means no limit. A
 * max_len below the special tokens' count keeps just those (HF's unsigned arithmetic
 * wraps there and truncates nothing). Texts are UTF-8 with explicit lengths (NUL is a
 * char, cleaned away by clean_text). Reuses out's buffers when they are large enough.
 * Invalid UTF-8 is QV_EINVAL naming the text and the byte offset. */
qv_status tok_encode(const qv_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                     size_t max_len, tok_encoding *out, qv_error *err);
void tok_encoding_free(tok_encoding *e);

/* Largest id + 1 over the vocab, the added tokens and the post-processor's special
 * tokens: the rows an embedding matrix needs. */
size_t tok_vocab_size(const qv_tokenizer *t);
int32_t tok_id(const qv_tokenizer *t, const char *token); /* added tokens first; -1 when absent */
const char *tok_token(const qv_tokenizer *t, int32_t id);  /* NULL when out of range or unused */
int32_t tok_pad_id(const qv_tokenizer *t); /* padding.pad_id, else [PAD]'s id, else 0 */

#endif
