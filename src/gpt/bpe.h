/* The byte-level BPE tokenizer of the small GPT (GPT-2's scheme).
 *
 * Text is split into special tokens (<|endoftext|>) and ordinary runs; each run is
 * pre-tokenized with GPT-2's pattern, each piece mapped byte by byte to GPT-2's printable
 * characters and merged by rank. Encoding matches Hugging Face `tokenizers` loading the
 * same files (ByteLevel pre-tokenizer, add_prefix_space false).
 */
#ifndef QV_GPT_BPE_H
#define QV_GPT_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef struct gpt_bpe gpt_bpe;

/* tokenizer.json (HF ByteLevel BPE: model.type "BPE", vocab, merges, added_tokens) or a
 * folder with vocab.json + merges.txt (GPT-2's files) */
qv_status gpt_bpe_load(gpt_bpe **out, const char *path, qv_error *err);
qv_status gpt_bpe_from_json(gpt_bpe **out, const char *json, size_t len, qv_error *err);
/* tokenizer.json text, malloc'd; HF tokenizers loads it and encodes identically */
char *gpt_bpe_to_json(const gpt_bpe *b);
qv_status gpt_bpe_save(const gpt_bpe *b, const char *path, qv_error *err);
/* learns merges up to vocab_size (256 byte tokens + merges + <|endoftext|>) from n texts;
 * progress(ctx, done, total) may be NULL */
qv_status gpt_bpe_train(gpt_bpe **out, const char *const *texts, const size_t *lens, size_t n,
                        size_t vocab_size, void (*progress)(void *ctx, size_t done, size_t total),
                        void *ctx, qv_error *err);
/* ids malloc'd (*ids NULL when *n 0); special tokens like <|endoftext|> in text are
 * recognized */
qv_status gpt_bpe_encode(const gpt_bpe *b, const char *text, size_t len, int32_t **ids, size_t *n);
/* the bytes of ids concatenated, NUL-terminated, malloc'd (may be invalid UTF-8
 * mid-character) */
char *gpt_bpe_decode(const gpt_bpe *b, const int32_t *ids, size_t n, size_t *len);
/* raw bytes of one token (for /explain) */
const char *gpt_bpe_token_bytes(const gpt_bpe *b, int32_t id, size_t *len);
size_t gpt_bpe_vocab_size(const gpt_bpe *b);
/* id of <|endoftext|>, -1 if none */
int32_t gpt_bpe_eot(const gpt_bpe *b);
void gpt_bpe_free(gpt_bpe *b);

#endif
