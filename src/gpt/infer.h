/* GPT-2 inference with a KV cache: the forward pass used for generation and chat.
 *
 * It runs on a gpt_model (gpt.h): loaded from a checkpoint folder by gpt_load (ckpt.h),
 * which reads our `quiver gpt train` checkpoints and Hugging Face GPT-2 folders alike
 * (names with or without "transformer.", Conv1D (in, out) weights, LM head tied to wte),
 * or borrowed from a caller that already holds one.
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

#include "compute/gpt_ops.h"
#include "gpt/gpt.h"
#include "quiver.h"

/* Rows of a prefill block: bounds the activation buffers (a long prompt is fed in blocks,
 * each attending to the cache that the previous ones filled). */
#define GPT_INFER_BLOCK 64

typedef struct gpt_infer gpt_infer;

/* Loads a checkpoint folder with gpt_load (its errors: QV_NOTFOUND for a missing file,
 * QV_EFORMAT naming the field or tensor at fault, QV_EUNSUPPORTED for another
 * activation) and owns the model. */
qv_status gpt_infer_load(gpt_infer **out, const char *dir, qv_error *err);
/* Runs on a model the caller keeps (it must outlive the handle and not change while
 * feeding). Where the device layer has a GPU whose backend has the GPT ops with KV-cache
 * attention (compute/gpt_ops.h) and they pass gpt_dev_selfcheck, feeding runs there (the
 * weights copied once). A device that cannot take the model leaves the work on the CPU
 * (QV_EDEVICE instead with gpu.enabled on); one that fails later hands it to the CPU,
 * which replays the ids fed so far into its own cache, so callers see the same results
 * either way (with gpu.fallback_to_cpu false, the failing feed returns QV_EDEVICE). */
qv_status gpt_infer_create(gpt_infer **out, const gpt_model *model, qv_error *err);
/* gpt_infer_create on the given ops (NULL: the CPU only), without the self-check; name is
 * the device's, for the logs and gpt_infer_device; fallback as gpu.fallback_to_cpu. For
 * tests and benchmarks. */
qv_status gpt_infer_create_on(gpt_infer **out, const gpt_model *model, const qv_gpt_ops *ops, void *ctx,
                              const char *name, int fallback, qv_error *err);
/* Where feeding runs now: "cpu" or the device's name. */
const char *gpt_infer_device(const gpt_infer *m);
void gpt_infer_free(gpt_infer *m);

const gpt_config *gpt_infer_config_of(const gpt_infer *m);
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
