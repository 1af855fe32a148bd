/* Model internals other layers may reach: the tokenizer behind a loaded model, for the
 * servers' /tokenize route and for turning OpenAI token-id inputs back into text. */
#ifndef QV_MODEL_MODEL_H
#define QV_MODEL_MODEL_H

#include "model/tokenizer.h"
#include "quiver.h"

/* Read-only; lives as long as m. */
const qv_tokenizer *model_tokenizer(const qv_model *m);

/* qv_model_encode over inputs the caller already tokenized with model_tokenizer(m)
 * (tok_encode with the special tokens, cut to the model's limit when truncating), so a
 * caller that tokenizes anyway (the server's batcher, to count tokens) does not pay for
 * it twice. enc (n) is only read. QV_ETOOLONG when an input is over the limit. */
qv_status model_encode_tokens(qv_model *m, const tok_encoding *enc, size_t n, float *out, qv_error *err);

#endif
