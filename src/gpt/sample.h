/* Choosing the next token from logits: repetition penalty, temperature, top-k, top-p,
 * drawn with a seeded RNG (the same seed, logits and history give the same token on every
 * machine and run). Scratch for the vocabulary is allocated once, in gpt_sampler_create. */
#ifndef QV_GPT_SAMPLE_H
#define QV_GPT_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef struct gpt_sample_params {
  float temperature;        /* 0 is greedy (argmax); default 1 */
  int top_k;                /* keep the k most likely; 0 keeps all */
  float top_p;              /* keep the smallest set whose mass reaches p; 1 keeps all */
  float repetition_penalty; /* CTRL's: logits of tokens already seen divided (>0) or
                               multiplied (<0) by it; 1 is off */
  uint64_t seed;
} gpt_sample_params;

/* temperature 1, top_k 0, top_p 1, repetition_penalty 1, seed 0. */
gpt_sample_params gpt_sample_defaults(void);
/* QV_ERANGE naming the parameter that is out of range (temperature < 0, top_k < 0,
 * top_p not in (0, 1], repetition_penalty <= 0, or a non-finite value). */
qv_status gpt_sample_check(const gpt_sample_params *p, qv_error *err);

typedef struct gpt_sampler gpt_sampler;

qv_status gpt_sampler_create(gpt_sampler **out, size_t vocab, const gpt_sample_params *p, qv_error *err);
void gpt_sampler_free(gpt_sampler *s);
/* Changes parameters (the chat's /temp); the RNG keeps its state. Checked as above. */
qv_status gpt_sampler_set(gpt_sampler *s, const gpt_sample_params *p, qv_error *err);
const gpt_sample_params *gpt_sampler_params(const gpt_sampler *s);

/* The next token for logits (vocab), given the tokens seen so far (history, for the
 * repetition penalty; may be NULL when n_hist is 0). logits are not modified. */
int32_t gpt_sampler_next(gpt_sampler *s, const float *logits, const int32_t *history, size_t n_hist);

/* The k most likely tokens under softmax(logits) (temperature 1, no penalty), most likely
 * first (ties: lower id first): ids (k), probs (k). k is at most vocab. */
void gpt_top_probs(const float *logits, size_t vocab, size_t k, int32_t *ids, float *probs);

#endif
