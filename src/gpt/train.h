/* Training a GPT-2 on documents: files -> clean text -> chunks -> BPE ids -> packed
 * sequences -> AdamW steps, with a held-out split, checkpoints and exact resume.
 *
 * The corpus: every document under the data paths (text_find_documents: .md .mdx .txt .rst
 * .html, in name order) is parsed (text_parse) and cut by the chunker; each chunk is
 * encoded and followed by <|endoftext|>. A chunk goes to the validation stream when a hash
 * of its text falls under val_fraction, so the split depends on content, not file order.
 * Training batches are windows of T+1 tokens at offsets drawn from a generator seeded by
 * seed; validation uses the first eval_batches x B consecutive windows of the held-out
 * stream, always the same ones.
 *
 * Determinism: the same options and seed give the same losses bit for bit at a fixed
 * OpenBLAS thread count (the model's kernels do not depend on the pool's size). A run
 * resumed from a checkpoint (model, optimizer moments, step and the sampler's state) gives
 * the losses the uninterrupted run gives.
 *
 * Device: with a GPU whose backend has the GPT ops, the steps run there (gpt_dev.h) and the
 * state comes back to the host at each evaluation and checkpoint; when the device fails,
 * the run continues on the CPU from the last state that came back (train.c invariant 4). */
#ifndef QV_GPT_TRAIN_H
#define QV_GPT_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "compute/gpt_ops.h"
#include "gpt/gpt.h"
#include "quiver.h"
#include "text/text.h"

typedef struct gpt_train_stats {
  long step, steps;        /* steps done (1-based after the first), total */
  float loss, lr;
  double grad_norm;
  double val_loss;         /* NaN unless this step evaluated */
  double tokens_per_s;     /* over this run so far */
  double elapsed_s;        /* since this run's first step started (corpus loading excluded) */
  double eta_s;
  uint64_t tokens_seen;
  const char *saved;       /* the checkpoint folder written at this step, or NULL */
  /* the run: corpus and model sizes */
  size_t ndocs, nchunks, nval_chunks, train_tokens, val_tokens, nparams;
  int first;               /* the first step of this run */
  const char *device;      /* where this step ran: "cpu", or the device backend's name */
} gpt_train_stats;

typedef struct gpt_train_opts {
  const char *const *data; /* files or folders */
  size_t ndata;
  const char *out;         /* checkpoints go to out/step-NNNNNN */
  const char *tokenizer;   /* tokenizer.json or GPT-2 folder; NULL: train one of vocab_size */
  size_t vocab_size;
  const char *resume;      /* a checkpoint folder to continue from, or NULL */
  gpt_config model;        /* n_layer, n_head, n_embd, n_ctx (vocab from the tokenizer) */
  int batch, accum;
  long steps, warmup;
  float lr, min_lr, weight_decay, clip, beta1, beta2;
  uint64_t seed;
  long eval_every, save_every;
  int eval_batches;
  double val_fraction;
  text_chunk_config chunk;
  qv_pool *pool;           /* NULL: pool_default() */
  /* Where the steps run: NULL trains on the GPU when the device layer has one whose backend
   * has the GPT ops (gpu.enabled auto or on; compute/device.h), else on the CPU. Tests set
   * ops (and ops_ctx, ops_name) to train on given ops instead. A device that fails falls
   * back to the CPU when gpu.fallback_to_cpu allows it (always with ops given). */
  const qv_gpt_ops *ops;
  void *ops_ctx;
  const char *ops_name;
  /* called after every step (may be NULL); returning nonzero stops after a save */
  int (*on_step)(void *ctx, const gpt_train_stats *s);
  void *ctx;
  /* called while the tokenizer trains (may be NULL) */
  void (*on_tok)(void *ctx, size_t done, size_t total);
} gpt_train_opts;

/* Options with the defaults `quiver gpt train` documents. */
void gpt_train_defaults(gpt_train_opts *o);

/* Runs the training. With resume, the model config, tokenizer, chunking and the optimizer
 * and validation options (batch, accum, lr, min_lr, warmup, weight decay, clip, betas,
 * seed, eval_batches, val_fraction) come from the checkpoint, whatever o holds; steps and
 * data are taken from the checkpoint only when o leaves them unset. */
qv_status gpt_train_run(const gpt_train_opts *o, qv_error *err);

#endif
