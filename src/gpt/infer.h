/* GPT-2 inference with a KV cache: the forward pass used for generation and chat.
 *
 * A model is a Hugging Face GPT-2 folder (the checkpoint format of issue 8): config.json
 * and model.safetensors with F32/F16/BF16 tensors named as GPT2Model names them, with or
 * without the "transformer." prefix; Conv1D weights are (in, out). The LM head is tied to
 * wte. Our own checkpoints (quiver gpt train) are the same kind of folder.
 *
 * gpt_infer_feed appends tokens to the KV cache: a prompt goes in at once (prefill, in
 * blocks of GPT_INFER_BLOCK rows through GEMMs), then one token per call. Every buffer is
 * allocated at load, sized for the model's context, so feeding allocates nothing. Matrix
 * products are OpenBLAS single-threaded per task, split over the thread pool by output
 * columns; attention is split by (row, head). */
#ifndef QV_GPT_INFER_H
#define QV_GPT_INFER_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

/* Rows of a prefill block: bounds the activation buffers (a long prompt is fed in blocks,
 * each attending to the cache that the previous ones filled). */
#define GPT_INFER_BLOCK 64

typedef struct gpt_infer_config {
  int n_layer, n_head, n_embd, n_ctx, vocab_size;
  float eps;
} gpt_infer_config;

typedef struct gpt_infer gpt_infer;

/* Loads DIR/config.json and DIR/model.safetensors. QV_NOTFOUND when a file or tensor is
 * missing, QV_EFORMAT on a bad config or a tensor of the wrong shape (the message names
 * it), QV_EUNSUPPORTED for an activation other than gelu_new. */
qv_status gpt_infer_load(gpt_infer **out, const char *dir, qv_error *err);
void gpt_infer_free(gpt_infer *m);

const gpt_infer_config *gpt_infer_config_of(const gpt_infer *m);
/* Tokens in the KV cache (the position the next token takes). */
size_t gpt_infer_pos(const gpt_infer *m);
/* Empties the KV cache. */
void gpt_infer_reset(gpt_infer *m);

/* Runs ids (n) at positions pos .. pos+n-1 and appends them to the cache. The logits of
 * the last one are then at gpt_infer_logits. all_logits, when not NULL, receives every
 * row's logits (n, vocab). QV_ETOOLONG when pos + n exceeds the context (nothing is fed),
 * QV_ERANGE for an id outside the vocabulary, QV_EINVAL for n == 0. */
qv_status gpt_infer_feed(gpt_infer *m, const int32_t *ids, size_t n, float *all_logits, qv_error *err);
/* The logits (vocab) of the last token fed; valid until the next feed or reset. */
const float *gpt_infer_logits(const gpt_infer *m);

#endif
