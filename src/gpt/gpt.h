/* The GPT-2 model: configuration, parameters, forward and backward passes, AdamW.
 *
 * Parameters live in ONE contiguous float buffer (model->params, model->nparams floats),
 * tensor after tensor in the order of gpt_tensor_info(cfg, i) for i in [0, gpt_tensor_count):
 *
 *   wte (V,C), wpe (T,C),
 *   then for each layer l in [0, L):
 *     h.l.ln_1.weight (C), h.l.ln_1.bias (C),
 *     h.l.attn.c_attn.weight (C,3C), h.l.attn.c_attn.bias (3C),
 *     h.l.attn.c_proj.weight (C,C), h.l.attn.c_proj.bias (C),
 *     h.l.ln_2.weight (C), h.l.ln_2.bias (C),
 *     h.l.mlp.c_fc.weight (C,4C), h.l.mlp.c_fc.bias (4C),
 *     h.l.mlp.c_proj.weight (4C,C), h.l.mlp.c_proj.bias (C),
 *   ln_f.weight (C), ln_f.bias (C).
 *
 * Names and shapes are Hugging Face GPT2Model's. Linear weights keep HF's Conv1D layout
 * (in, out), row-major, so a layer is out(N, OC) = inp(N, IC) @ w(IC, OC) + b(OC) and a
 * checkpoint's bytes are the buffer's bytes. The LM head is tied: logits = ln_f(x) @ wte^T.
 * model->w holds typed pointers into the buffer (w.wte, w.layers[l].qkvw, ...), so callers
 * never compute offsets. grads (when allocated) has exactly the same layout.
 *
 * Math: pre-LayerNorm blocks (x += attn(ln_1(x)); x += mlp(ln_2(x))), causal
 * multi-head attention with scale 1/sqrt(C/H), tanh-approximation GELU ("gelu_new"), eps
 * from the config (1e-5).
 *
 * Nothing allocates inside a step: gpt_train_alloc(m, B, T) sizes the activations,
 * gradients and optimizer state once; gpt_forward / gpt_backward / gpt_adamw then only
 * write into them. Reductions over rows run in a fixed order and matmuls are the AVX2 GEMM of
 * kernels.h or OpenBLAS single-threaded (gpt_create sets it; the pool does the slicing),
 * so the same inputs give
 * bit-identical results at a fixed pool size (training determinism); across pool sizes
 * they agree to float rounding. */
#ifndef QV_GPT_GPT_H
#define QV_GPT_GPT_H

#include <stddef.h>
#include <stdint.h>

#include "base/pool.h"
#include "quiver.h"

typedef struct gpt_config {
  int n_layer;      /* L */
  int n_head;       /* H; n_embd % n_head == 0 */
  int n_embd;       /* C */
  int n_ctx;        /* T max (n_positions) */
  int vocab_size;   /* V */
  float ln_eps;     /* layer_norm_epsilon, 1e-5 */
} gpt_config;

/* QV_EINVAL (message naming the field) unless every size is positive, n_embd divides by
 * n_head, and the parameter count fits in memory arithmetic. */
qv_status gpt_config_check(const gpt_config *c, qv_error *err);

typedef struct gpt_layer_w {
  float *ln1w, *ln1b;         /* (C), (C) */
  float *qkvw, *qkvb;         /* (C, 3C), (3C): q, k, v side by side in the output */
  float *attprojw, *attprojb; /* (C, C), (C) */
  float *ln2w, *ln2b;         /* (C), (C) */
  float *fcw, *fcb;           /* (C, 4C), (4C) */
  float *fcprojw, *fcprojb;   /* (4C, C), (C) */
} gpt_layer_w;

typedef struct gpt_weights {
  float *wte;          /* (V, C) */
  float *wpe;          /* (T, C) */
  gpt_layer_w *layers; /* (L) */
  float *lnfw, *lnfb;  /* (C), (C) */
} gpt_weights;

/* One tensor of the buffer: its HF name (without "transformer."), shape and offset. */
typedef struct gpt_tensor_info {
  char name[48];
  int ndim;          /* 1 or 2 */
  int64_t shape[2];
  size_t offset;     /* in floats from the start of the buffer */
  size_t numel;
  int decay;         /* 1 for 2-D weights (AdamW weight decay applies), 0 otherwise */
} gpt_tensor_info;

size_t gpt_tensor_count(const gpt_config *c); /* 2 + 12 L + 2 */
/* Points w's fields (and w->layers[0, L), which the caller allocates) at the tensors of a
 * buffer laid out as above: params, grads, or a device copy of them. */
void gpt_point_weights(const gpt_config *c, float *base, gpt_weights *w);
void gpt_tensor_at(const gpt_config *c, size_t i, gpt_tensor_info *out);
size_t gpt_param_count(const gpt_config *c);

/* Activations kept by the forward pass for the backward pass, for (B, T). */
typedef struct gpt_acts gpt_acts;

/* The arrays a training step keeps, and their gradients, as pointers into two blocks
 * (gpt_acts_layout): the CPU's (gpt_acts) and a device's (gpt_dev.c) are laid out alike.
 * Per-layer arrays hold L slices, each as many rows as the B*T laid out. */
typedef struct gpt_act_ptrs {
  float *encoded;                   /* (B, T, C) */
  float *ln1, *ln1_mean, *ln1_rstd; /* (L, B, T, C), (L, B, T) x2 */
  float *qkv;                       /* (L, B, T, 3C) */
  float *atty;                      /* (L, B, T, C) */
  float *att;                       /* (L, B, H, T, T) softmax weights (the scores are not kept) */
  float *residual2;                 /* (L, B, T, C) */
  float *ln2, *ln2_mean, *ln2_rstd;
  float *fch, *fch_gelu;            /* (L, B, T, 4C) */
  float *residual3;                 /* (L, B, T, C) */
  float *lnf, *lnf_mean, *lnf_rstd; /* (B, T, C), (B, T) x2 */
  float *logits;                    /* (B, T, V) */
  float *losses;                    /* (B, T) */
  /* gradients of activations */
  float *dres;                      /* (B, T, C) the residual stream's, carried down the layers */
  float *dln, *datty, *dlnf;        /* (B, T, C) scratch */
  float *dqkv;                      /* (B, T, 3C) */
  float *dfch, *dfch_gelu;          /* (B, T, 4C) */
  float *dlogits;                   /* (B, T, V) */
  float *dscratch;                  /* (B, H, T, T) */
} gpt_act_ptrs;

/* The floats of the activation block and of the gradient block for (B, T) into *afloats and
 * *gfloats (when not NULL), every array 64-byte aligned within its block; with blocks and p
 * given, points p's fields into them. */
void gpt_acts_layout(const gpt_config *c, int B, int T, float *block, float *gblock, gpt_act_ptrs *p,
                     size_t *afloats, size_t *gfloats);

typedef struct gpt_model {
  gpt_config cfg;
  size_t nparams;
  float *params;       /* (nparams) the contiguous buffer, 64-byte aligned */
  gpt_weights w;       /* pointers into params */
  /* Training state; NULL until gpt_train_alloc. */
  float *grads;        /* (nparams) same layout as params */
  gpt_weights g;       /* pointers into grads */
  float *m, *v;        /* (nparams) AdamW moments */
  gpt_acts *acts;
  int B, T;            /* read-only: the sizes acts were made for */
  float loss;          /* read-only: mean loss of the last gpt_forward with targets */
  qv_pool *pool;       /* NULL: pool_default() */
} gpt_model;

/* A model with zeroed parameters (gpt_init fills them). */
qv_status gpt_create(gpt_model **out, const gpt_config *c, qv_error *err);
void gpt_free(gpt_model *m);
/* GPT-2's initialisation, deterministic in seed: N(0, 0.02) weights, residual
 * projections (attn.c_proj, mlp.c_proj) N(0, 0.02/sqrt(2L)), zero biases, LayerNorm 1/0. */
void gpt_init(gpt_model *m, uint64_t seed);

/* Allocates the AdamW moments (zeroed), unless m has them: all a device run keeps on the
 * host (gpt_dev.h), and what checkpoints read and write. */
qv_status gpt_moments_alloc(gpt_model *m, qv_error *err);
/* Allocates gradients, moments (zeroed; kept when m has them) and activations for batches
 * of (B, T), T <= n_ctx. */
qv_status gpt_train_alloc(gpt_model *m, int B, int T, qv_error *err);

/* Forward over inputs (B, T) token ids in [0, V). With targets (B, T) it also computes the
 * mean cross-entropy into m->loss (and returns it; targets < 0 are ignored), and
 * gpt_logits(m) then holds the softmax probabilities (computed in place); without, it holds
 * the logits. Returns QV_EINVAL for an id out of range or B, T larger
 * than gpt_train_alloc's. */
qv_status gpt_forward(gpt_model *m, const int32_t *inputs, const int32_t *targets, int B, int T);
const float *gpt_logits(const gpt_model *m); /* (B, T, V) after gpt_forward */

void gpt_zero_grad(gpt_model *m);
/* Accumulates (+=) into m->grads the gradient of loss_scale * m->loss of the last forward
 * (loss_scale 1/accum for gradient accumulation). */
void gpt_backward(gpt_model *m, float loss_scale);

/* Global L2 norm of the gradients (in double, fixed order); if clip > 0 and the norm is
 * larger, scales every gradient by clip / norm. Returns the norm before clipping. */
double gpt_clip_grad(gpt_model *m, float clip);

typedef struct gpt_adamw {
  float lr, beta1, beta2, eps, weight_decay;
} gpt_adamw;
/* One AdamW step (t counts from 1, for bias correction). Weight decay is decoupled
 * (p -= lr * wd * p) and applies to 2-D weights only (gpt_tensor_info.decay). */
void gpt_adamw_step(gpt_model *m, const gpt_adamw *o, long t);

/* Linear warmup over `warmup` steps to lr, then cosine decay to min_lr at `steps`;
 * step counts from 0. */
float gpt_lr_at(long step, long warmup, long steps, float lr, float min_lr);

/* ---- Kernels (llm.c conventions: outputs first, then inputs, then sizes) -------------
 * Exposed for generation and for the gradient tests. Backward kernels accumulate (+=)
 * into their gradients. pool may be NULL (inline). */
void gpt_encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, int B, int T,
                         int C);
void gpt_encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B, int T,
                          int C);
void gpt_layernorm_forward(qv_pool *pool, float *out, float *mean, float *rstd, const float *inp,
                           const float *w, const float *b, int N, int C, float eps);
void gpt_layernorm_backward(qv_pool *pool, float *dinp, float *dw, float *db, const float *dout,
                            const float *inp, const float *w, const float *mean, const float *rstd, int N,
                            int C);
/* out (N, OC) = inp (N, IC) @ w (IC, OC) + b (OC); b may be NULL. */
void gpt_matmul_forward(qv_pool *pool, float *out, const float *inp, const float *w, const float *b, int N,
                        int IC, int OC);
void gpt_matmul_backward(qv_pool *pool, float *dinp, float *dw, float *db, const float *dout,
                         const float *inp, const float *w, int N, int IC, int OC);
/* The tied LM head: logits (N, V) = x (N, C) @ wte (V, C)^T; backward dx (N, C) +=
 * dlogits @ wte and dwte (V, C) += dlogits^T @ x. */
void gpt_head_forward(qv_pool *pool, float *logits, const float *x, const float *wte, int N, int V, int C);
void gpt_head_backward(qv_pool *pool, float *dx, float *dwte, const float *dlogits, const float *x,
                       const float *wte, int N, int V, int C);
/* qkv (B, T, 3C) -> out (B, T, C); att (B, H, T, T) kept for the backward; preatt
 * (B, H, T, T) receives the scaled scores, or is NULL (the softmax then runs in att). */
void gpt_attention_forward(qv_pool *pool, float *out, float *preatt, float *att, const float *qkv, int B,
                           int T, int C, int H);
/* scratch: (B, H, T, T) floats, overwritten. */
void gpt_attention_backward(qv_pool *pool, float *dqkv, float *scratch, const float *dout, const float *qkv,
                            const float *att, int B, int T, int C, int H);
/* out (n) = a + b elementwise (the residual adds; out may alias either). */
void gpt_residual_forward(qv_pool *pool, float *out, const float *a, const float *b, size_t n);
void gpt_gelu_forward(qv_pool *pool, float *out, const float *inp, size_t n);
void gpt_gelu_backward(qv_pool *pool, float *dinp, const float *inp, const float *dout, size_t n);
/* probs (N, V) = softmax(logits); losses (N) = -log probs[target] (0 where target < 0). */
void gpt_crossentropy_forward(qv_pool *pool, float *probs, float *losses, const float *logits,
                              const int32_t *targets, int N, int V);
/* dlogits (N, V) += (probs - onehot(target)) * dloss, for rows with target >= 0. */
void gpt_crossentropy_backward(qv_pool *pool, float *dlogits, const float *probs, const int32_t *targets,
                               int N, int V, float dloss);

/* A small deterministic generator (xorshift64*) for init, data sampling and sampling. */
typedef struct gpt_rng {
  uint64_t s;
} gpt_rng;
void gpt_rng_seed(gpt_rng *r, uint64_t seed);
uint64_t gpt_rng_u64(gpt_rng *r);
float gpt_rng_uniform(gpt_rng *r); /* [0, 1) */
float gpt_rng_normal(gpt_rng *r);

#endif
