/* Training a GPT-2 through a backend's GPT ops (compute/gpt_ops.h): the device path of
 * `quiver gpt train`.
 *
 * A gpt_dev holds the whole training state -- parameters, gradients, AdamW moments,
 * activations -- in the backend's memory. A step sends B x T token ids and reads back the
 * B x T per-token losses; parameters come back to the host only when gpt_dev_download
 * asks (checkpoints, validation on the host, the end of a run). The math is gpt.c's,
 * op for op (gpt_forward / gpt_backward / gpt_clip_grad / gpt_adamw_step), without its
 * CPU-only fusions; with gpt_ops_cpu() it runs on the host, which is how the driver is
 * tested on machines without a GPU and what a GPU's results are compared against.
 *
 * Invariants:
 *   1. After any op failed, every later call returns at once and gpt_dev_status reports the
 *      failure: the host copy (the last gpt_dev_download) is the state to fall back to.
 *   2. Nothing allocates host memory after gpt_dev_create. A device backend may grow its
 *      own scratch on an op's first use (the CUDA plugin's attention takes 7 B T C floats);
 *      a failed allocation there is a device failure like any other (invariant 1). */
#ifndef QV_GPT_GPT_DEV_H
#define QV_GPT_GPT_DEV_H

#include <stddef.h>
#include <stdint.h>

#include "compute/gpt_ops.h"
#include "gpt/gpt.h"
#include "quiver.h"

/* The ops with gpt.c's kernels on host memory. */
const qv_gpt_ops *gpt_ops_cpu(void);
/* ctx for gpt_ops_cpu: the pool its kernels run on (NULL: pool_default()). */

typedef struct gpt_dev gpt_dev;

/* Training state on (ops, ctx) for m's configuration and batches of (B, T), T <= n_ctx.
 * Host memory: 3 x the parameters (gpt_dev_download's staging) plus B x T losses.
 * Copies m->params, and m->m / m->v when m has them (gpt_train_alloc), to the backend;
 * otherwise the moments start at zero. QV_EDEVICE or QV_ENOMEM when the backend cannot
 * hold it. */
qv_status gpt_dev_create(gpt_dev **out, const qv_gpt_ops *ops, void *ctx, const gpt_model *m, int B, int T,
                         qv_error *err);
void gpt_dev_free(gpt_dev *d);

/* gpt_forward's contract: inputs (B, T) in [0, V), targets (B, T) < V (negative:
 * ignored) or NULL. *loss gets the mean loss over valid targets (-1 without targets).
 * QV_EINVAL for ids out of range or a batch larger than created; QV_EDEVICE when an op
 * failed (the reason in err). */
qv_status gpt_dev_forward(gpt_dev *d, const int32_t *inputs, const int32_t *targets, int B, int T, float *loss,
                          qv_error *err);
/* The last forward's logits, or probabilities when it had targets, (B, T, V) into host. */
qv_status gpt_dev_logits(gpt_dev *d, float *host, qv_error *err);
void gpt_dev_zero_grad(gpt_dev *d);
/* Accumulates the gradient of loss_scale * the last forward's loss (gpt_backward). */
void gpt_dev_backward(gpt_dev *d, float loss_scale);
/* gpt_clip_grad: the global norm before clipping (NaN after a failure). */
double gpt_dev_clip_grad(gpt_dev *d, float clip);
void gpt_dev_adamw_step(gpt_dev *d, const gpt_adamw *o, long t);
/* Copies the parameters, and the moments where m has them, into m: all of them or, when
 * the device fails, none (m stays the state to fall back to). */
qv_status gpt_dev_download(gpt_dev *d, gpt_model *m, qv_error *err);
/* The gradients (nparams, gpt.h's layout) into host. */
qv_status gpt_dev_grads(gpt_dev *d, float *host, qv_error *err);
/* QV_OK, or the first failure since the last call (invariant 1) with its reason. */
qv_status gpt_dev_status(gpt_dev *d, qv_error *err);

/* Runs two training steps of a tiny GPT-2 (and, with inference, a short generation) on
 * (ops, ctx) and on the CPU twin, and compares them within 1e-3 relative: a device whose
 * ops compute wrong results, not only ones that report failures, is not used. QV_EDEVICE
 * saying what differed, or the failure an op reported. */
qv_status gpt_dev_selfcheck(const qv_gpt_ops *ops, void *ctx, int inference, qv_error *err);

/* Inference with a KV cache on a backend: gpt_infer's device path (infer.h), which checks
 * ids and lengths and falls back to the CPU. Needs the ops' attention_cached
 * (QV_EUNSUPPORTED without it). The weights are copied once; block is the most rows one
 * feed may take. */
typedef struct gpt_dev_infer gpt_dev_infer;
qv_status gpt_dev_infer_create(gpt_dev_infer **out, const qv_gpt_ops *ops, void *ctx, const gpt_model *m,
                               int block, qv_error *err);
void gpt_dev_infer_free(gpt_dev_infer *d);
/* Runs ids (n <= block) at positions pos .. pos+n-1, writing their keys and values into
 * the cache; last (V) gets the last row's logits, all_logits (n, V) every row's when not
 * NULL. QV_EDEVICE (latched: every later call fails too) when the device failed. */
qv_status gpt_dev_infer_feed(gpt_dev_infer *d, const int32_t *ids, int n, size_t pos, float *last,
                             float *all_logits, qv_error *err);

#endif
