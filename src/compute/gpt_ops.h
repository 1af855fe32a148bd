/* The GPT training ops of a backend (issue 8): the kernels of one GPT-2 training step over
 * buffers the backend owns, so that a device keeps the whole training state resident and
 * the host only sends token ids and reads losses.
 *
 * src/gpt/gpt_dev.c drives a step through this table (forward, backward, clipping, AdamW);
 * the CPU twin (gpt_ops_cpu, src/gpt/gpt_dev.h) implements it with the kernels of
 * src/gpt/gpt.c, and the CUDA plugin (src/cuda/gpt.cu) with cuBLAS and its own kernels.
 * tests/gpu/test_gpu_gpt.c compares the two op by op and over whole steps.
 *
 * Conventions (gpt.h's, llm.c's): outputs first, then inputs, then sizes. Every float* and
 * int32_t* an op takes is memory from alloc (device memory for a device backend), at any
 * offset inside it. Linear weights are in HF Conv1D layout, w (IC, OC) row-major. Backward
 * ops ACCUMULATE (+=) into every gradient they write, activations' and parameters' alike;
 * the driver zeroes what must start at zero. Ops are queued in order on one stream and
 * return void; copy_out and sumsq wait for the queue. A device records its first failure
 * and status() reports it (then clears it); after a failure, outputs are garbage. */
#ifndef QV_COMPUTE_GPT_OPS_H
#define QV_COMPUTE_GPT_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef struct qv_gpt_ops {
  /* Memory. alloc returns zeroed memory (NULL when the device cannot hold it; no failure
   * is recorded for that, the caller reports it). */
  void *(*alloc)(void *ctx, size_t bytes);
  void (*release)(void *ctx, void *p);
  void (*zero)(void *ctx, void *p, size_t bytes);
  void (*copy_in)(void *ctx, void *dst, const void *host, size_t bytes);
  void (*copy_out)(void *ctx, void *host, const void *src, size_t bytes); /* waits */

  /* out (B, T, C) = wte[inp] + wpe[t]; ids must be in [0, V) (the driver checks them). */
  void (*encoder_fwd)(void *ctx, float *out, const int32_t *inp, const float *wte, const float *wpe, int B,
                      int T, int C);
  /* dwte[inp[n]] += dout[n], dwpe[t] += dout[n]. */
  void (*encoder_bwd)(void *ctx, float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B, int T,
                      int C);
  /* out (N, C) = layernorm(inp) * w + b; mean, rstd (N) kept for the backward. */
  void (*layernorm_fwd)(void *ctx, float *out, float *mean, float *rstd, const float *inp, const float *w,
                        const float *b, int N, int C, float eps);
  void (*layernorm_bwd)(void *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C);
  /* out (N, OC) = inp (N, IC) @ w (IC, OC) + b (OC); b may be NULL. */
  void (*matmul_fwd)(void *ctx, float *out, const float *inp, const float *w, const float *b, int N, int IC,
                     int OC);
  /* dinp += dout @ w^T; dw += inp^T @ dout; db (may be NULL) += column sums of dout. */
  void (*matmul_bwd)(void *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, int N, int IC, int OC);
  /* The tied LM head: logits (N, V) = x (N, C) @ wte (V, C)^T. */
  void (*head_fwd)(void *ctx, float *logits, const float *x, const float *wte, int N, int V, int C);
  /* dx (N, C) += dlogits @ wte; dwte (V, C) += dlogits^T @ x. */
  void (*head_bwd)(void *ctx, float *dx, float *dwte, const float *dlogits, const float *x, const float *wte,
                   int N, int V, int C);
  /* Causal multi-head attention: qkv (B, T, 3C) as [q | k | v] per token -> out (B, T, C),
   * scale 1/sqrt(C/H); att (B, H, T, T) gets the probabilities (upper triangle zero). */
  void (*attention_fwd)(void *ctx, float *out, float *att, const float *qkv, int B, int T, int C, int H);
  /* dqkv += the gradient through the attention; scratch (B, H, T, T) is overwritten. */
  void (*attention_bwd)(void *ctx, float *dqkv, float *scratch, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int H);
  /* GPT-2's tanh-approximation GELU, and its backward (dinp += gelu'(inp) * dout). */
  void (*gelu_fwd)(void *ctx, float *out, const float *inp, size_t n);
  void (*gelu_bwd)(void *ctx, float *dinp, const float *inp, const float *dout, size_t n);
  /* out = a + b (out may alias either). */
  void (*add)(void *ctx, float *out, const float *a, const float *b, size_t n);
  /* probs (N, V) = softmax(logits) (probs may alias logits); losses (N) = -log
   * probs[target], 0 where target < 0. */
  void (*crossentropy_fwd)(void *ctx, float *probs, float *losses, const float *logits, const int32_t *targets,
                           int N, int V);
  /* dlogits += (probs - onehot(target)) * dloss for rows with target >= 0. */
  void (*crossentropy_bwd)(void *ctx, float *dlogits, const float *probs, const int32_t *targets, int N, int V,
                           float dloss);
  /* The sum of squares of x (n), in double; waits. */
  double (*sumsq)(void *ctx, const float *x, size_t n);
  /* x *= s. */
  void (*scale)(void *ctx, float *x, size_t n, float s);
  /* One AdamW update of n parameters: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
   * p -= lr (m / c1 / (sqrt(v / c2) + eps) + decay p), with c1 = 1 - b1^t, c2 = 1 - b2^t. */
  void (*adamw)(void *ctx, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                float eps, float decay, float c1, float c2);
  /* The first failure since the last call (QV_EDEVICE with the reason in msg), cleared by
   * the call; QV_OK when none. msg may be NULL. */
  qv_status (*status)(void *ctx, char *msg, size_t msg_len);
  /* (optional: NULL where a backend only trains) Inference over a KV cache, one sequence:
   * the n rows of qkv (n, 3C) are the tokens at positions pos .. pos+n-1. Their keys and
   * values are written to those rows of kcache and vcache (n_ctx, C), then out (n, C)
   * gets each row's causal attention over cache rows [0, pos + r]. */
  void (*attention_cached)(void *ctx, float *out, float *kcache, float *vcache, const float *qkv, int pos, int n,
                           int C, int H);
} qv_gpt_ops;

#endif
