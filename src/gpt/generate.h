/* The generation loop shared by `quiver gpt generate` and `quiver gpt chat`: feed the
 * prompt, then sample, stream and feed one token at a time until max tokens, end-of-text,
 * a stop string or an error.
 *
 * A gpt_gen keeps the tokens in the model's KV cache (a conversation, for the chat). When
 * the context fills up, the older half is dropped and the newer half fed again, so a chat
 * can run on past the context length.
 *
 * Stop strings are matched on the decoded text, across token boundaries. Text reaches
 * on_text only once it can no longer be part of a stop string and ends on a whole UTF-8
 * character, so the stop string itself is never printed. */
#ifndef QV_GPT_GENERATE_H
#define QV_GPT_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "gpt/infer.h"
#include "gpt/sample.h"
#include "quiver.h"

typedef enum {
  GPT_STOP_MAX_TOKENS, /* max_tokens generated */
  GPT_STOP_EOT,        /* the model produced end-of-text (not streamed) */
  GPT_STOP_STRING,     /* a stop string appeared (not streamed) */
  GPT_STOP_CALLBACK    /* on_text returned non-zero */
} gpt_stop_reason;

const char *gpt_stop_name(gpt_stop_reason r); /* "max_tokens", "eot", "stop_string", "callback" */

typedef struct gpt_gen_opts {
  size_t max_tokens;
  const char *const *stops; /* (n_stops); empty ones are ignored */
  size_t n_stops;
  int32_t eot;              /* end-of-text id, -1 for none */
  int no_cache;             /* recompute the whole sequence at each step (a check of the cache) */
  /* The bytes of one token (gpt_bpe_token_bytes through a context). */
  const char *(*token_bytes)(void *tok, int32_t id, size_t *len);
  void *tok;
  /* Streams text; non-zero stops generation. */
  int (*on_text)(void *ctx, const char *text, size_t len);
  /* (optional) Each chosen token with the logits (vocab) it was drawn from. */
  void (*on_step)(void *ctx, int32_t id, const float *logits);
  void *ctx;
  /* (optional) Receives the logits of every prompt position (n_prompt, vocab). */
  float *prompt_logits;
} gpt_gen_opts;

typedef struct gpt_gen_result {
  size_t n_tokens;         /* tokens generated (an end-of-text token counts) */
  gpt_stop_reason reason;
} gpt_gen_result;

typedef struct gpt_gen gpt_gen;

qv_status gpt_gen_create(gpt_gen **out, gpt_infer *m, qv_error *err);
void gpt_gen_free(gpt_gen *g);
/* Forgets the conversation (and empties the KV cache). */
void gpt_gen_reset(gpt_gen *g);
/* Tokens in the conversation (the KV cache). */
size_t gpt_gen_len(const gpt_gen *g);
/* The generated token ids of the last run (n_tokens of them), valid until the next run. */
const int32_t *gpt_gen_tokens(const gpt_gen *g);

/* Appends prompt (n_prompt >= 1, fewer than the context) to the conversation and
 * generates. QV_ETOOLONG for a prompt that leaves no room in the context, QV_ERANGE for an
 * id out of the vocabulary, QV_ENOMEM. */
qv_status gpt_gen_run(gpt_gen *g, gpt_sampler *s, const int32_t *prompt, size_t n_prompt,
                      const gpt_gen_opts *o, gpt_gen_result *res, qv_error *err);

#endif
