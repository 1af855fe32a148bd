/* Model internals other layers may reach: the tokenizer behind a loaded model, for the
 * servers' /tokenize route and for turning OpenAI token-id inputs back into text. */
#ifndef QV_MODEL_MODEL_H
#define QV_MODEL_MODEL_H

#include "model/tokenizer.h"
#include "quiver.h"

/* Read-only; lives as long as m. */
const qv_tokenizer *model_tokenizer(const qv_model *m);

#endif
