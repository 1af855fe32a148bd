/* The GPT-2 model's gradients against central finite differences, layer by layer and for
 * the whole model; AdamW against a hand computation; the learning-rate schedule; clipping;
 * determinism across pool sizes; checkpoint round trips. */
#define _GNU_SOURCE /* mkdtemp */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/pool.h"
#include "gpt/ckpt.h"
#include "gpt/gpt.h"
#include "gpt/kernels.h"
#include "gpt/infer.h"
#include "test.h"

static void fill(float *x, size_t n, gpt_rng *r, float scale) {
  for (size_t i = 0; i < n; i++) x[i] = scale * gpt_rng_normal(r);
}

static double dot(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

/* Compares analytic against numeric gradients: every element within abs + rel * |num|, and
 * the normwise relative error ||a - n|| / ||n|| under 1e-3. */
#define CHECK_GRAD(ana, num, n, abs_tol, rel_tol)                                                     \
  do {                                                                                               \
    double e2_ = 0, n2_ = 0;                                                                         \
    for (size_t i_ = 0; i_ < (size_t)(n); i_++) {                                                    \
      double d_ = (double)(ana)[i_] - (double)(num)[i_];                                             \
      e2_ += d_ * d_;                                                                                \
      n2_ += (double)(num)[i_] * (num)[i_];                                                          \
      if (fabs(d_) > (abs_tol) + (rel_tol) * fabs((double)(num)[i_]))                                \
        TEST_FAIL_("%s[%zu]: analytic %.7g vs numeric %.7g", #ana, i_, (double)(ana)[i_],            \
                   (double)(num)[i_]);                                                               \
    }                                                                                                \
    if (n2_ > 0 && sqrt(e2_ / n2_) > 1e-3) TEST_FAIL_("%s: relative error %g", #ana, sqrt(e2_ / n2_)); \
  } while (0)

/* A layer f(x) is checked through the scalar loss sum(f(x) * R) for a fixed random R. */
typedef double (*loss_fn)(void *ctx);

static void numeric(float *x, size_t n, loss_fn f, void *ctx, float h, float *out) {
  for (size_t i = 0; i < n; i++) {
    float keep = x[i];
    x[i] = keep + h;
    double lp = f(ctx);
    x[i] = keep - h;
    double lm = f(ctx);
    x[i] = keep;
    out[i] = (float)((lp - lm) / (2.0 * h));
  }
}

/* ---- LayerNorm ---- */
enum { LN_N = 5, LN_C = 7 };
typedef struct ln_case {
  float inp[LN_N * LN_C], w[LN_C], b[LN_C], out[LN_N * LN_C], mean[LN_N], rstd[LN_N], R[LN_N * LN_C];
} ln_case;
static double ln_loss(void *c) {
  ln_case *x = c;
  gpt_layernorm_forward(NULL, x->out, x->mean, x->rstd, x->inp, x->w, x->b, LN_N, LN_C, 1e-5f);
  return dot(x->out, x->R, LN_N * LN_C);
}

TEST(layernorm_backward) {
  static ln_case x;
  gpt_rng r;
  gpt_rng_seed(&r, 1);
  fill(x.inp, LN_N * LN_C, &r, 1.0f);
  fill(x.w, LN_C, &r, 1.0f);
  fill(x.b, LN_C, &r, 1.0f);
  fill(x.R, LN_N * LN_C, &r, 1.0f);
  float di[LN_N * LN_C] = {0}, dw[LN_C] = {0}, db[LN_C] = {0};
  float ni[LN_N * LN_C], nw[LN_C], nb[LN_C];
  ln_loss(&x);
  gpt_layernorm_backward(pool_default(), di, dw, db, x.R, x.inp, x.w, x.mean, x.rstd, LN_N, LN_C);
  numeric(x.inp, LN_N * LN_C, ln_loss, &x, 1e-3f, ni);
  numeric(x.w, LN_C, ln_loss, &x, 1e-3f, nw);
  numeric(x.b, LN_C, ln_loss, &x, 1e-3f, nb);
  CHECK_GRAD(di, ni, LN_N * LN_C, 2e-3, 1e-2);
  CHECK_GRAD(dw, nw, LN_C, 2e-3, 1e-2);
  CHECK_GRAD(db, nb, LN_C, 2e-3, 1e-2);
}

/* ---- Matmul ---- */
enum { MM_N = 6, MM_I = 5, MM_O = 4 };
typedef struct mm_case {
  float inp[MM_N * MM_I], w[MM_I * MM_O], b[MM_O], out[MM_N * MM_O], R[MM_N * MM_O];
} mm_case;
static double mm_loss(void *c) {
  mm_case *x = c;
  gpt_matmul_forward(NULL, x->out, x->inp, x->w, x->b, MM_N, MM_I, MM_O);
  return dot(x->out, x->R, MM_N * MM_O);
}

TEST(matmul_backward) {
  static mm_case x;
  gpt_rng r;
  gpt_rng_seed(&r, 2);
  fill(x.inp, sizeof x.inp / 4, &r, 1.0f);
  fill(x.w, sizeof x.w / 4, &r, 1.0f);
  fill(x.b, MM_O, &r, 1.0f);
  fill(x.R, sizeof x.R / 4, &r, 1.0f);
  /* the forward against a plain triple loop */
  mm_loss(&x);
  for (int n = 0; n < MM_N; n++)
    for (int o = 0; o < MM_O; o++) {
      double s = x.b[o];
      for (int i = 0; i < MM_I; i++) s += (double)x.inp[n * MM_I + i] * x.w[i * MM_O + o];
      ASSERT_NEAR(x.out[n * MM_O + o], s, 1e-5);
    }
  float di[MM_N * MM_I] = {0}, dw[MM_I * MM_O] = {0}, db[MM_O] = {0};
  float ni[MM_N * MM_I], nw[MM_I * MM_O], nb[MM_O];
  gpt_matmul_backward(pool_default(), di, dw, db, x.R, x.inp, x.w, MM_N, MM_I, MM_O);
  numeric(x.inp, MM_N * MM_I, mm_loss, &x, 1e-2f, ni);
  numeric(x.w, MM_I * MM_O, mm_loss, &x, 1e-2f, nw);
  numeric(x.b, MM_O, mm_loss, &x, 1e-2f, nb);
  CHECK_GRAD(di, ni, MM_N * MM_I, 1e-3, 1e-3);
  CHECK_GRAD(dw, nw, MM_I * MM_O, 1e-3, 1e-3);
  CHECK_GRAD(db, nb, MM_O, 1e-3, 1e-3);
}

/* ---- Attention ---- */
enum { AT_B = 2, AT_T = 4, AT_C = 6, AT_H = 2 };
typedef struct at_case {
  float qkv[AT_B * AT_T * 3 * AT_C], out[AT_B * AT_T * AT_C], R[AT_B * AT_T * AT_C];
  float preatt[AT_B * AT_H * AT_T * AT_T], att[AT_B * AT_H * AT_T * AT_T];
} at_case;
static double at_loss(void *c) {
  at_case *x = c;
  gpt_attention_forward(NULL, x->out, x->preatt, x->att, x->qkv, AT_B, AT_T, AT_C, AT_H);
  return dot(x->out, x->R, sizeof x->out / 4);
}

TEST(attention_backward_and_causal_mask) {
  static at_case x;
  gpt_rng r;
  gpt_rng_seed(&r, 3);
  fill(x.qkv, sizeof x.qkv / 4, &r, 1.0f);
  fill(x.R, sizeof x.R / 4, &r, 1.0f);
  at_loss(&x);
  /* causal: no weight on the future, each row sums to 1 */
  for (int bh = 0; bh < AT_B * AT_H; bh++)
    for (int t = 0; t < AT_T; t++) {
      double s = 0;
      for (int t2 = 0; t2 < AT_T; t2++) {
        float a = x.att[(bh * AT_T + t) * AT_T + t2];
        if (t2 > t) ASSERT_EQ(a, 0);
        s += a;
      }
      ASSERT_NEAR(s, 1.0, 1e-6);
    }
  /* changing a future token's key and value leaves earlier outputs alone */
  float before = x.out[0];
  x.qkv[3 * AT_C + AT_C] += 5.0f;
  at_loss(&x);
  ASSERT_EQ(x.out[0], before);
  x.qkv[3 * AT_C + AT_C] -= 5.0f;
  at_loss(&x);
  float dq[sizeof x.qkv / 4], nq[sizeof x.qkv / 4], scratch[AT_B * AT_H * AT_T * AT_T];
  memset(dq, 0, sizeof dq);
  gpt_attention_backward(pool_default(), dq, scratch, x.R, x.qkv, x.att, AT_B, AT_T, AT_C, AT_H);
  numeric(x.qkv, sizeof x.qkv / 4, at_loss, &x, 1e-3f, nq);
  CHECK_GRAD(dq, nq, sizeof x.qkv / 4, 2e-3, 1e-2);
}

/* ---- GELU ---- */
enum { GE_N = 40 };
typedef struct ge_case {
  float inp[GE_N], out[GE_N], R[GE_N];
} ge_case;
static double ge_loss(void *c) {
  ge_case *x = c;
  gpt_gelu_forward(NULL, x->out, x->inp, GE_N);
  return dot(x->out, x->R, GE_N);
}

TEST(gelu_backward) {
  static ge_case x;
  gpt_rng r;
  gpt_rng_seed(&r, 4);
  fill(x.inp, GE_N, &r, 2.0f);
  fill(x.R, GE_N, &r, 1.0f);
  ge_loss(&x);
  /* tanh approximation at known points: gelu_new(1) = 0.841192, gelu_new(-1) = -0.158808 */
  float p[2] = {1.0f, -1.0f}, q[2];
  gpt_gelu_forward(NULL, q, p, 2);
  ASSERT_NEAR(q[0], 0.8411920, 1e-6);
  ASSERT_NEAR(q[1], -0.1588080, 1e-6);
  /* every lane of the vector path and the scalar tail (37 = 4 x 8 + 5) against double */
  float o37[37];
  gpt_gelu_forward(NULL, o37, x.inp, 37);
  for (int i = 0; i < 37; i++) {
    double v = x.inp[i];
    ASSERT_NEAR(o37[i], 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))), 2e-6);
  }
  float d[GE_N] = {0}, n[GE_N];
  gpt_gelu_backward(pool_default(), d, x.inp, x.R, GE_N);
  numeric(x.inp, GE_N, ge_loss, &x, 1e-3f, n);
  CHECK_GRAD(d, n, GE_N, 2e-3, 1e-2);
}

/* ---- Softmax cross-entropy ---- */
enum { CE_N = 4, CE_V = 9 };
typedef struct ce_case {
  float logits[CE_N * CE_V], probs[CE_N * CE_V], losses[CE_N];
  int32_t targets[CE_N];
} ce_case;
static double ce_loss(void *c) {
  ce_case *x = c;
  gpt_crossentropy_forward(NULL, x->probs, x->losses, x->logits, x->targets, CE_N, CE_V);
  double s = 0;
  for (int i = 0; i < CE_N; i++) s += x->losses[i];
  return s / CE_N;
}

TEST(crossentropy_backward_and_ignored_targets) {
  static ce_case x;
  gpt_rng r;
  gpt_rng_seed(&r, 5);
  fill(x.logits, CE_N * CE_V, &r, 2.0f);
  int32_t t[CE_N] = {0, 8, -1, 3};
  memcpy(x.targets, t, sizeof t);
  ce_loss(&x);
  ASSERT_EQ(x.losses[2], 0);
  /* loss = logsumexp - logit[target], computed here in double */
  double mx = -1e30, s = 0;
  for (int i = 0; i < CE_V; i++) mx = fmax(mx, x.logits[CE_V + i]);
  for (int i = 0; i < CE_V; i++) s += exp(x.logits[CE_V + i] - mx);
  ASSERT_NEAR(x.losses[1], mx + log(s) - x.logits[CE_V + 8], 1e-5);
  float d[CE_N * CE_V] = {0}, n[CE_N * CE_V];
  gpt_crossentropy_backward(pool_default(), d, x.probs, x.targets, CE_N, CE_V, 1.0f / CE_N);
  numeric(x.logits, CE_N * CE_V, ce_loss, &x, 1e-3f, n);
  CHECK_GRAD(d, n, CE_N * CE_V, 1e-4, 1e-2);
  for (int i = 0; i < CE_V; i++) ASSERT_EQ(d[2 * CE_V + i], 0); /* ignored row */
}

/* ---- Embedding ---- */
TEST(encoder_backward) {
  enum { B = 2, T = 3, C = 4, V = 5 };
  float wte[V * C], wpe[T * C], out[B * T * C], R[B * T * C];
  gpt_rng r;
  gpt_rng_seed(&r, 6);
  fill(wte, V * C, &r, 1.0f);
  fill(wpe, T * C, &r, 1.0f);
  fill(R, B * T * C, &r, 1.0f);
  int32_t inp[B * T] = {1, 4, 1, 0, 1, 2};
  gpt_encoder_forward(out, inp, wte, wpe, B, T, C);
  ASSERT_EQ(out[(1 * T + 2) * C + 3], wte[2 * C + 3] + wpe[2 * C + 3]);
  float dwte[V * C] = {0}, dwpe[T * C] = {0};
  gpt_encoder_backward(dwte, dwpe, R, inp, B, T, C);
  /* linear: the gradient is the sum of R over the rows using each token / position */
  for (int c = 0; c < C; c++) {
    ASSERT_NEAR(dwte[1 * C + c], R[0 * C + c] + R[2 * C + c] + R[4 * C + c], 1e-6);
    ASSERT_EQ(dwte[3 * C + c], 0);
    ASSERT_NEAR(dwpe[1 * C + c], R[1 * C + c] + R[4 * C + c], 1e-6);
  }
}

/* ---- The whole model ---- */
static gpt_config tiny = {.n_layer = 2, .n_head = 2, .n_embd = 8, .n_ctx = 6, .vocab_size = 11, .ln_eps = 1e-5f};

typedef struct full_case {
  gpt_model *m;
  int32_t inp[2 * 5], tgt[2 * 5];
} full_case;
static double full_loss(void *c) {
  full_case *x = c;
  gpt_forward(x->m, x->inp, x->tgt, 2, 5);
  return x->m->loss;
}

TEST(full_model_gradient) {
  gpt_model *m = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_create(&m, &tiny, &err));
  gpt_init(m, 7);
  /* larger weights than GPT-2's init so every path carries signal */
  gpt_rng r;
  gpt_rng_seed(&r, 8);
  for (size_t i = 0; i < m->nparams; i++) m->params[i] += 0.3f * gpt_rng_normal(&r);
  ASSERT_OK(gpt_train_alloc(m, 2, 5, &err));
  full_case x = {m, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {2, 3, 4, 5, 6, 7, 8, 9, 10, 0}};
  full_loss(&x);
  gpt_zero_grad(m);
  gpt_backward(m, 1.0f);
  float *num = malloc(m->nparams * sizeof(float));
  ASSERT(num);
  numeric(m->params, m->nparams, full_loss, &x, 1e-2f, num);
  /* per tensor, so a failure names the tensor */
  for (size_t t = 0; t < gpt_tensor_count(&tiny); t++) {
    gpt_tensor_info ti;
    gpt_tensor_at(&tiny, t, &ti);
    const float *a = m->grads + ti.offset, *n = num + ti.offset;
    double e2 = 0, n2 = 0;
    for (size_t i = 0; i < ti.numel; i++) {
      double d = (double)a[i] - n[i];
      e2 += d * d;
      n2 += (double)n[i] * n[i];
      if (fabs(d) > 2e-3 + 5e-2 * fabs(n[i])) {
        free(num);
        gpt_free(m);
        TEST_FAIL_("%s[%zu]: analytic %.7g vs numeric %.7g", ti.name, i, (double)a[i], (double)n[i]);
      }
    }
    if (n2 > 1e-12 && sqrt(e2 / n2) > 1e-2) {
      free(num);
      gpt_free(m);
      TEST_FAIL_("%s: relative error %g", ti.name, sqrt(e2 / n2));
    }
  }
  /* gradient accumulation: two backwards at scale 1/2 equal one at scale 1 */
  float *once = malloc(m->nparams * sizeof(float));
  ASSERT(once);
  memcpy(once, m->grads, m->nparams * sizeof(float));
  gpt_zero_grad(m);
  full_loss(&x);
  gpt_backward(m, 0.5f);
  gpt_backward(m, 0.5f);
  for (size_t i = 0; i < m->nparams; i++) ASSERT_NEAR(m->grads[i], once[i], 1e-6 + 1e-5 * fabs(once[i]));
  free(once);
  free(num);
  gpt_free(m);
}

TEST(tensor_table_matches_hf_gpt2) {
  gpt_config c = {.n_layer = 12, .n_head = 12, .n_embd = 768, .n_ctx = 1024, .vocab_size = 50257, .ln_eps = 1e-5f};
  ASSERT_EQ(gpt_param_count(&c), 124439808); /* GPT-2 small, as PyTorch counts it */
  ASSERT_EQ(gpt_tensor_count(&c), 2 + 12 * 12 + 2);
  gpt_tensor_info t;
  gpt_tensor_at(&c, 4, &t);
  ASSERT_STR_EQ(t.name, "h.0.attn.c_attn.weight");
  ASSERT_EQ(t.shape[0], 768);
  ASSERT_EQ(t.shape[1], 2304);
  ASSERT_EQ(t.decay, 1);
  gpt_tensor_at(&c, 2 + 12 * 12 + 1, &t);
  ASSERT_STR_EQ(t.name, "ln_f.bias");
  ASSERT_EQ(t.offset + t.numel, gpt_param_count(&c));
  gpt_config bad = c;
  bad.n_head = 7;
  qv_error err = {0};
  ASSERT_STATUS(gpt_config_check(&bad, &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "n_head"));
}

TEST(adamw_matches_hand_computation) {
  gpt_model *m = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_create(&m, &tiny, &err));
  gpt_init(m, 9);
  ASSERT_OK(gpt_train_alloc(m, 1, 2, &err));
  gpt_rng r;
  gpt_rng_seed(&r, 10);
  fill(m->grads, m->nparams, &r, 1.0f);
  float *p0 = malloc(m->nparams * sizeof(float));
  ASSERT(p0);
  memcpy(p0, m->params, m->nparams * sizeof(float));
  gpt_adamw o = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.5f};
  gpt_adamw_step(m, &o, 1);
  /* step 1: m = 0.1 g, v = 0.05 g^2, mhat = g, vhat = g^2: p -= lr (g / (|g| + eps) + wd p) */
  for (size_t t = 0; t < gpt_tensor_count(&tiny); t++) {
    gpt_tensor_info ti;
    gpt_tensor_at(&tiny, t, &ti);
    for (size_t i = ti.offset; i < ti.offset + ti.numel; i++) {
      double g = m->grads[i], wd = ti.decay ? 0.5 : 0.0;
      double want = p0[i] - 0.1 * (g / (fabs(g) + 1e-8) + wd * p0[i]);
      ASSERT_NEAR(m->params[i], want, 1e-6);
      ASSERT_NEAR(m->m[i], 0.1 * g, 1e-6);
      ASSERT_NEAR(m->v[i], 0.05 * g * g, 1e-6);
    }
  }
  /* step 2 with the same gradient: m = 0.19 g, v = 0.0975 g^2, corrected by 1 - b^2 */
  memcpy(p0, m->params, m->nparams * sizeof(float));
  gpt_adamw_step(m, &o, 2);
  size_t i = tiny.vocab_size * tiny.n_embd + 3; /* inside wpe: decayed */
  double g = m->grads[i];
  double mh = 0.19 * g / (1 - 0.81), vh = 0.0975 * g * g / (1 - 0.9025);
  ASSERT_NEAR(m->params[i], p0[i] - 0.1 * (mh / (sqrt(vh) + 1e-8) + 0.5 * p0[i]), 1e-5);
  free(p0);
  gpt_free(m);
}

TEST(lr_schedule_and_clipping) {
  ASSERT_NEAR(gpt_lr_at(0, 10, 100, 1.0f, 0.1f), 0.1, 1e-7);
  ASSERT_NEAR(gpt_lr_at(9, 10, 100, 1.0f, 0.1f), 1.0, 1e-7);
  ASSERT_NEAR(gpt_lr_at(10, 10, 100, 1.0f, 0.1f), 1.0, 1e-7);
  ASSERT_NEAR(gpt_lr_at(55, 10, 100, 1.0f, 0.1f), 0.55, 1e-6); /* halfway: the mean */
  ASSERT_NEAR(gpt_lr_at(100, 10, 100, 1.0f, 0.1f), 0.1, 1e-7);
  ASSERT_NEAR(gpt_lr_at(0, 0, 1, 1.0f, 0.0f), 1.0, 1e-7);
  gpt_model *m = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_create(&m, &tiny, &err));
  ASSERT_OK(gpt_train_alloc(m, 1, 2, &err));
  for (size_t i = 0; i < m->nparams; i++) m->grads[i] = i == 0 ? 3.0f : i == 1 ? 4.0f : 0.0f;
  ASSERT_NEAR(gpt_clip_grad(m, 10.0f), 5.0, 1e-9); /* under the limit: unchanged */
  ASSERT_EQ(m->grads[0], 3.0f);
  ASSERT_NEAR(gpt_clip_grad(m, 1.0f), 5.0, 1e-9);
  ASSERT_NEAR(m->grads[0], 0.6, 1e-6);
  ASSERT_NEAR(m->grads[1], 0.8, 1e-6);
  gpt_free(m);
}

/* One training step's loss and gradients: bit-identical for two runs on pools of the same
 * size, and equal to float rounding between pools of 1 and 2 (OpenBLAS's bits depend on
 * the slice sizes, gpt.c invariant 3), exactly equal where the AVX2 kernels run. K = 512
 * in the LM head splits OpenBLAS's K blocks; 256 rows take the prepacked, multi-block
 * paths of gpt.c's matmuls. */
static float *one_step(int threads, float *loss, size_t *n) {
  gpt_config c = {.n_layer = 2, .n_head = 2, .n_embd = 64, .n_ctx = 32, .vocab_size = 512, .ln_eps = 1e-5f};
  int32_t inp[8 * 32], tgt[8 * 32];
  for (int i = 0; i < 8 * 32; i++) inp[i] = (i * 7) % 512, tgt[i] = (i * 11 + 3) % 512;
  gpt_model *m = NULL;
  qv_pool *pool = NULL;
  qv_error err = {0};
  if (pool_create(&pool, threads) || gpt_create(&m, &c, &err)) return NULL;
  m->pool = pool;
  gpt_init(m, 42);
  float *g = NULL;
  if (!gpt_train_alloc(m, 8, 32, &err) && !gpt_forward(m, inp, tgt, 8, 32)) {
    gpt_zero_grad(m);
    gpt_backward(m, 1.0f);
    *loss = m->loss;
    *n = m->nparams;
    if ((g = malloc(m->nparams * sizeof(float)))) memcpy(g, m->grads, m->nparams * sizeof(float));
  }
  gpt_free(m);
  pool_destroy(pool);
  return g;
}

TEST(deterministic_at_a_fixed_pool_size) {
  float l[3];
  size_t n = 0;
  float *g[3] = {one_step(2, &l[0], &n), one_step(2, &l[1], &n), one_step(1, &l[2], &n)};
  int ok = g[0] && g[1] && g[2];
  int same = ok && memcmp(g[0], g[1], n * sizeof(float)) == 0 && memcmp(&l[0], &l[1], sizeof(float)) == 0;
  double e2 = 0, n2 = 0;
  for (size_t i = 0; ok && i < n; i++) {
    double d = (double)g[0][i] - g[2][i];
    e2 += d * d;
    n2 += (double)g[2][i] * g[2][i];
  }
  double worst = n2 > 0 ? sqrt(e2 / n2) : 1;
  /* With the AVX2 kernels every product's bits are independent of how the pool splits it
   * (kernels.c invariant 1, the fused and prepacked paths included), so 1 and 2 threads
   * agree exactly; the C twin only promises the normwise bound below. */
  int across = ok && memcmp(g[0], g[2], n * sizeof(float)) == 0 && memcmp(&l[0], &l[2], sizeof(float)) == 0;
  free(g[0]);
  free(g[1]);
  free(g[2]);
  ASSERT(ok);
  ASSERT(same);
  ASSERT_NEAR(l[0], l[2], 1e-6);
  ASSERT_NEAR(l[0], log(512.0), 0.2); /* GPT-2's init predicts nearly uniformly */
  if (!(worst < 1e-5)) TEST_FAIL_("pools of 1 and 2 differ by %g (normwise relative)", worst);
  if (gptk_gemm_available() && !across) TEST_FAIL_("pools of 1 and 2 differ (by %g normwise) under AVX2", worst);
}

/* The training forward's logits against gen's KV-cache inference (src/gpt/infer.c, itself
 * tested against a numpy GPT-2 in tests/integration/test_gpt_generate.py): two
 * implementations of the same math on one model. */
TEST(forward_matches_kv_cache_inference) {
  gpt_config c = {.n_layer = 2, .n_head = 4, .n_embd = 32, .n_ctx = 24, .vocab_size = 97, .ln_eps = 1e-5f};
  gpt_model *m = NULL;
  gpt_infer *inf = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_create(&m, &c, &err));
  gpt_init(m, 21);
  gpt_rng r;
  gpt_rng_seed(&r, 22);
  for (size_t i = 0; i < m->nparams; i++) m->params[i] += 0.1f * gpt_rng_normal(&r); /* non-trivial LN, biases */
  ASSERT_OK(gpt_train_alloc(m, 2, 24, &err));
  int32_t ids[2 * 24];
  for (int i = 0; i < 2 * 24; i++) ids[i] = (int32_t)(gpt_rng_u64(&r) % 97);
  ASSERT_OK(gpt_forward(m, ids, NULL, 2, 24));
  ASSERT_OK(gpt_infer_create_on(&inf, m, NULL, NULL, NULL, 1, &err));
  float *all = malloc(24 * 97 * sizeof(float));
  ASSERT(all);
  double worst = 0;
  for (int b = 0; b < 2; b++) {
    gpt_infer_reset(inf);
    /* a prefill of 10, then one token at a time through the cache */
    qv_status st = gpt_infer_feed(inf, ids + b * 24, 10, all, &err);
    for (int t = 10; !st && t < 24; t++) {
      st = gpt_infer_feed(inf, ids + b * 24 + t, 1, NULL, &err);
      if (!st) memcpy(all + (size_t)t * 97, gpt_infer_logits(inf), 97 * sizeof(float));
    }
    if (st) {
      free(all);
      gpt_infer_free(inf);
      gpt_free(m);
      TEST_FAIL_("inference: %s", err.msg);
    }
    const float *mine = gpt_logits(m) + (size_t)b * 24 * 97;
    for (int i = 0; i < 24 * 97; i++) worst = fmax(worst, fabs((double)mine[i] - all[i]));
  }
  free(all);
  gpt_infer_free(inf);
  gpt_free(m);
  if (!(worst < 1e-4)) TEST_FAIL_("logits differ by %g", worst);
}

TEST(forward_rejects_bad_ids) {
  gpt_model *m = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_create(&m, &tiny, &err));
  ASSERT_OK(gpt_train_alloc(m, 1, 3, &err));
  int32_t bad[3] = {1, 11, 2}, neg[3] = {1, -1, 2}, ok[3] = {1, 2, 3}, tbad[3] = {1, 2, 11};
  ASSERT_STATUS(gpt_forward(m, bad, NULL, 1, 3), QV_EINVAL);
  ASSERT_STATUS(gpt_forward(m, neg, NULL, 1, 3), QV_EINVAL);
  ASSERT_STATUS(gpt_forward(m, ok, tbad, 1, 3), QV_EINVAL);
  ASSERT_STATUS(gpt_forward(m, ok, NULL, 1, 4), QV_EINVAL); /* longer than allocated */
  ASSERT_OK(gpt_forward(m, ok, NULL, 1, 3));
  ASSERT(gpt_logits(m) != NULL);
  ASSERT_STATUS(gpt_train_alloc(m, 1, 7, &err), QV_EINVAL);
  gpt_free(m);
  gpt_model *m2 = NULL;
  ASSERT_OK(gpt_create(&m2, &tiny, &err));
  ASSERT_STATUS(gpt_train_alloc(m2, 1, 7, &err), QV_EINVAL); /* beyond n_ctx */
  gpt_free(m2);
}

/* ---- Checkpoints ---- */
static char tmpdir[512];

static void make_tmpdir(void) {
  const char *base = getenv("TMPDIR");
  if (!base || !*base) base = "/tmp";
  snprintf(tmpdir, sizeof tmpdir, "%s/gptckpt-XXXXXX", base);
  if (!mkdtemp(tmpdir)) TEST_FAIL_("mkdtemp %s: %s", tmpdir, strerror(errno));
}

static void rm_tmpdir(void) {
  const char *names[] = {"config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors"};
  char p[600];
  for (size_t i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s/ck/%s", tmpdir, names[i]);
    unlink(p);
  }
  snprintf(p, sizeof p, "%s/ck", tmpdir);
  rmdir(p);
  rmdir(tmpdir);
}

TEST(checkpoint_round_trip_is_bit_exact) {
  make_tmpdir();
  char dir[600];
  snprintf(dir, sizeof dir, "%s/ck", tmpdir);
  gpt_model *m = NULL, *back = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_create(&m, &tiny, &err));
  gpt_init(m, 11);
  ASSERT_OK(gpt_train_alloc(m, 1, 2, &err));
  gpt_rng r;
  gpt_rng_seed(&r, 12);
  fill(m->m, m->nparams, &r, 1.0f);
  fill(m->v, m->nparams, &r, 1.0f);
  gpt_ckpt_meta meta = {.step = 17, .train_loss = 2.5, .val_loss = 2.75, .seed = 5, .tokens_seen = 12345};
  meta.chunking = (char *)"{\"chunker\":\"fixed\",\"size\":256}";
  ASSERT_OK(gpt_save(m, dir, &meta, "{\"model\":{}}", &err));
  ASSERT_OK(gpt_save_optimizer(m, dir, 17, 0xdeadbeefcafef00dull, "{\"batch\":4}", &err));
  gpt_ckpt_meta got;
  ASSERT_OK(gpt_load(&back, dir, &got, &err));
  ASSERT_EQ(back->nparams, m->nparams);
  ASSERT_EQ(memcmp(back->params, m->params, m->nparams * sizeof(float)), 0);
  ASSERT_EQ(got.step, 17);
  ASSERT_NEAR(got.val_loss, 2.75, 1e-9);
  ASSERT_EQ(got.tokens_seen, 12345);
  ASSERT(got.chunking && strstr(got.chunking, "\"fixed\""));
  ASSERT(got.timestamp[0] == '2');
  gpt_ckpt_meta_free(&got);
  ASSERT_OK(gpt_train_alloc(back, 1, 2, &err));
  long step = 0;
  uint64_t rng = 0;
  char *args = NULL;
  ASSERT_OK(gpt_load_optimizer(back, dir, &step, &rng, &args, &err));
  ASSERT_STR_EQ(args, "{\"batch\":4}");
  free(args);
  ASSERT_EQ(step, 17);
  ASSERT_U64_EQ(rng, 0xdeadbeefcafef00dull);
  ASSERT_EQ(memcmp(back->m, m->m, m->nparams * sizeof(float)), 0);
  ASSERT_EQ(memcmp(back->v, m->v, m->nparams * sizeof(float)), 0);
  /* a config that does not match the weights names the tensor */
  char p[700];
  snprintf(p, sizeof p, "%s/config.json", dir);
  FILE *f = fopen(p, "w");
  ASSERT(f);
  fputs("{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_head\":2,\"n_embd\":16,\"n_positions\":6,\"vocab_size\":11}", f);
  fclose(f);
  gpt_model *bad = NULL;
  ASSERT_STATUS(gpt_load(&bad, dir, NULL, &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "wte.weight"));
  ASSERT(bad == NULL);
  f = fopen(p, "w");
  ASSERT(f);
  fputs("{\"n_layer\":2,\"n_head\":2}", f);
  fclose(f);
  ASSERT_STATUS(gpt_load(&bad, dir, NULL, &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "n_embd"));
  gpt_free(m);
  gpt_free(back);
  rm_tmpdir();
  ASSERT_STATUS(gpt_load(&bad, "/nonexistent/quiver-gpt", NULL, &err), QV_NOTFOUND);
}

/* Hugging Face's own files: "transformer." prefixes, extra buffers (attn.bias masks,
 * lm_head.weight) that a tied GPT-2 ignores, and a config with n_ctx but no n_positions. */
TEST(loads_hf_names_with_prefix_and_extras) {
  make_tmpdir();
  char dir[600], p[700];
  snprintf(dir, sizeof dir, "%s/ck", tmpdir);
  ASSERT_EQ(mkdir(dir, 0755), 0);
  gpt_model *m = NULL, *back = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_create(&m, &tiny, &err));
  gpt_init(m, 31);
  size_t nt = gpt_tensor_count(&tiny);
  gpt_st_entry *e = calloc(nt + 2, sizeof *e);
  char(*names)[64] = calloc(nt, sizeof *names);
  ASSERT(e && names);
  for (size_t i = 0; i < nt; i++) {
    gpt_tensor_info t;
    gpt_tensor_at(&tiny, i, &t);
    snprintf(names[i], sizeof names[i], "transformer.%s", t.name);
    e[i] = (gpt_st_entry){names[i], t.ndim, {t.shape[0], t.shape[1]}, m->params + t.offset};
  }
  static float mask[6 * 6];
  e[nt] = (gpt_st_entry){"transformer.h.0.attn.bias", 2, {6, 6}, mask};
  e[nt + 1] = (gpt_st_entry){"lm_head.weight", 2, {11, 8}, m->w.wte};
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  ASSERT_OK(gpt_st_write(p, e, nt + 2, NULL, 0, &err));
  free(e);
  free(names);
  snprintf(p, sizeof p, "%s/config.json", dir);
  const char *cfg = "{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_head\":2,\"n_embd\":8,\"n_ctx\":6,\"vocab_size\":11}";
  ASSERT_OK(gpt_ckpt_write_file(p, cfg, strlen(cfg), &err));
  gpt_ckpt_meta meta;
  ASSERT_OK(gpt_load(&back, dir, &meta, &err));
  ASSERT_EQ(back->cfg.n_ctx, 6);
  ASSERT_EQ(meta.step, 0);
  ASSERT(isnan(meta.val_loss));
  ASSERT_EQ(memcmp(back->params, m->params, m->nparams * sizeof(float)), 0);
  gpt_free(back);
  gpt_free(m);
  rm_tmpdir();
}

TEST_MAIN(T(layernorm_backward), T(matmul_backward), T(attention_backward_and_causal_mask), T(gelu_backward),
          T(crossentropy_backward_and_ignored_targets), T(encoder_backward), T(full_model_gradient),
          T(tensor_table_matches_hf_gpt2), T(adamw_matches_hand_computation), T(lr_schedule_and_clipping),
          T(deterministic_at_a_fixed_pool_size), T(forward_matches_kv_cache_inference), T(forward_rejects_bad_ids), T(checkpoint_round_trip_is_bit_exact),
          T(loads_hf_names_with_prefix_and_extras))
