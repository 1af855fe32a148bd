/* What the embedding surfaces (openai.c, tei.c, legacy.c) share: running texts through the
 * server's batchers, one truncation rule, status-to-HTTP mapping, and token-level helpers
 * over the model's tokenizer. */
#ifndef QV_SERVER_EMBED_API_H
#define QV_SERVER_EMBED_API_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

struct server;

/* The truncate setting of a request: the JSON boolean v, or the server default when v is
 * absent or null. Returns -1 when v is present but not a boolean. */
int embedapi_truncate(const struct server *s, const json_t *v);

/* Borrows the strings of v (a string, or a non-empty array of strings) into *texts and
 * *lens (both malloc'd; the strings stay in v; free them even on failure). QV_EINVAL
 * naming `field` when v has another shape or an item is not a string, QV_ERANGE when it
 * holds more than limits.max_batch items. The text inputs of the TEI and /api/v1 routes. */
qv_status embedapi_texts(const struct server *s, const json_t *v, const char *field, const char ***texts,
                         size_t **lens, size_t *n, qv_error *err);

/* Embeds n texts with the default model through its batcher (directly when there is none).
 * *out (n, dims) is malloc'd; *tokens (may be NULL) gets the token count after truncation.
 * QV_ENOMODEL when no embedding model is loaded. */
qv_status embedapi_encode(struct server *s, const char *const *texts, const size_t *lens, size_t n,
                          int truncate, float **out, size_t *tokens, qv_error *err);

/* Cross-encoder logits (n) for (query, docs[i]) through the rerank batcher. QV_ENOMODEL
 * when the server runs without a reranker. */
qv_status embedapi_rerank(struct server *s, const char *query, const char *const *docs, size_t n,
                          int truncate, float *logits, qv_error *err);

/* Turns token ids back into text with the model's vocabulary: special tokens dropped,
 * "##" continuations glued to the previous piece, other pieces joined by spaces. The
 * result tokenizes back to the same ids for WordPiece vocabularies except where the
 * original text had no space between a word and punctuation (the ids are then equal;
 * only the spacing differs, which BERT's pre-tokenizer ignores). malloc'd; QV_ERANGE
 * naming the id when one is outside the vocabulary. */
qv_status embedapi_decode_ids(struct server *s, const int64_t *ids, size_t n, char **text, qv_error *err);

/* One token of TEI's /tokenize. */
typedef struct embedapi_token {
  int32_t id;
  const char *text;   /* the vocabulary's piece (owned by the tokenizer) */
  int special;
  size_t start, stop; /* byte offsets into the input; best effort, see tei.c */
} embedapi_token;

/* Tokenizes text with the default model's tokenizer, with or without the special tokens.
 * *toks is malloc'd. */
qv_status embedapi_tokenize(struct server *s, const char *text, size_t len, int add_special,
                            embedapi_token **toks, size_t *n, qv_error *err);

/* The JSON Schema (text) of the request body of one of openai.c's, tei.c's or legacy.c's
 * routes, by its http_route.name, for /openapi.json; NULL for other routes. */
const char *embedapi_body_schema(const char *route);

#endif
