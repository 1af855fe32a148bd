/* GPT-2 forward and backward on the CPU (layout and math: gpt.h).
 *
 * Invariants:
 *   1. Nothing allocates after gpt_train_alloc: activations and their gradients are two
 *      blocks sized for (B, T) once; every pass points into them.
 *   2. Every parallel loop either writes disjoint outputs per task (rows, heads, column
 *      ranges) or runs sequentially, and every sum over rows runs in row order, so results
 *      do not depend on scheduling (training determinism, --seed).
 *   3. Matmuls are sliced over the pool by rows of the output into slices fixed by the pool's
 *      size. With AVX2+FMA they run gptk_gemm (kernels.h), whose bits do not depend on the
 *      slicing; elsewhere cblas_sgemm with OpenBLAS single-threaded, whose bits for a row
 *      depend on the call's M (measured: one M=1024 x K=512 call differs from two of
 *      M=512). Either way results are bit-identical at a fixed pool size (QUIVER_THREADS)
 *      and agree to float rounding across sizes.
 */
#include "gpt/gpt.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "base/error.h"
#include "base/mem.h"
#include "compute/simd.h"
#include "gpt/kernels.h"

#define GPT_PI 3.14159265358979323846

/* ---- Parallel helpers ------------------------------------------------------------------ */

typedef void (*range_fn)(void *ctx, size_t lo, size_t hi);
typedef struct range_ctx {
  range_fn fn;
  void *ctx;
  size_t n, ntasks;
} range_ctx;

static void range_task(void *c, size_t task, int worker) {
  (void)worker;
  range_ctx *r = c;
  size_t lo = task * r->n / r->ntasks, hi = (task + 1) * r->n / r->ntasks;
  if (lo < hi) r->fn(r->ctx, lo, hi);
}

/* Runs fn over [0, n) in contiguous ranges spread over the pool. Small loops run inline:
 * waking workers costs more than a few thousand flops. */
static void par_range(qv_pool *pool, size_t n, size_t work_per_item, range_fn fn, void *ctx) {
  if (n == 0) return;
  size_t nt = (size_t)pool_size(pool) * 4;
  if (nt > n) nt = n;
  if (n * work_per_item < 32768 || nt <= 1) {
    fn(ctx, 0, n);
    return;
  }
  range_ctx r = {fn, ctx, n, nt};
  pool_run(pool, nt, range_task, &r);
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single(void) { openblas_set_num_threads(1); }

/* ---- RNG ----------------------------------------------------------------------------- */

void gpt_rng_seed(gpt_rng *r, uint64_t seed) {
  /* splitmix64, so that small seeds still give a well-mixed nonzero state */
  uint64_t z = seed + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  r->s = z ? z : 0x2545F4914F6CDD1Dull;
}

uint64_t gpt_rng_u64(gpt_rng *r) {
  uint64_t x = r->s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  r->s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

float gpt_rng_uniform(gpt_rng *r) { return (float)(gpt_rng_u64(r) >> 40) / 16777216.0f; }

float gpt_rng_normal(gpt_rng *r) {
  double u1 = ((double)(gpt_rng_u64(r) >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
  double u2 = (double)(gpt_rng_u64(r) >> 11) / 9007199254740992.0;
  return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * GPT_PI * u2));
}

/* ---- Config and tensor table --------------------------------------------------------- */

qv_status gpt_config_check(const gpt_config *c, qv_error *err) {
  if (c->n_layer <= 0 || c->n_layer > 1024) return qv_fail(err, QV_EINVAL, "n_layer %d out of range", c->n_layer);
  if (c->n_head <= 0 || c->n_head > 1024) return qv_fail(err, QV_EINVAL, "n_head %d out of range", c->n_head);
  if (c->n_embd <= 0 || c->n_embd > 65536) return qv_fail(err, QV_EINVAL, "n_embd %d out of range", c->n_embd);
  if (c->n_embd % c->n_head)
    return qv_fail(err, QV_EINVAL, "n_embd %d is not a multiple of n_head %d", c->n_embd, c->n_head);
  if (c->n_ctx <= 0 || c->n_ctx > 65536) return qv_fail(err, QV_EINVAL, "n_ctx %d out of range", c->n_ctx);
  if (c->vocab_size <= 0 || c->vocab_size > 1 << 24)
    return qv_fail(err, QV_EINVAL, "vocab_size %d out of range", c->vocab_size);
  if (!(c->ln_eps > 0 && c->ln_eps < 1)) return qv_fail(err, QV_EINVAL, "layer_norm_epsilon %g out of range", c->ln_eps);
  /* with the bounds above the parameter count fits in size_t on 64-bit hosts */
  return QV_OK;
}

size_t gpt_tensor_count(const gpt_config *c) { return 2 + 12 * (size_t)c->n_layer + 2; }

static const char *const layer_names[12] = {
    "ln_1.weight",      "ln_1.bias",      "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",      "ln_2.bias",
    "mlp.c_fc.weight",  "mlp.c_fc.bias",  "mlp.c_proj.weight",  "mlp.c_proj.bias"};

static void shape_of(const gpt_config *c, size_t i, gpt_tensor_info *t) {
  int64_t C = c->n_embd, L = c->n_layer;
  t->ndim = 1;
  t->shape[1] = 0;
  t->decay = 0;
  if (i == 0) {
    snprintf(t->name, sizeof t->name, "wte.weight");
    t->ndim = 2, t->shape[0] = c->vocab_size, t->shape[1] = C;
  } else if (i == 1) {
    snprintf(t->name, sizeof t->name, "wpe.weight");
    t->ndim = 2, t->shape[0] = c->n_ctx, t->shape[1] = C;
  } else if (i < 2 + 12 * (size_t)L) {
    size_t l = (i - 2) / 12, k = (i - 2) % 12;
    snprintf(t->name, sizeof t->name, "h.%zu.%s", l, layer_names[k]);
    static const int64_t rows[12] = {1, 1, 1, 3, 1, 1, 1, 1, 1, 4, 4, 1};   /* x C */
    static const int64_t cols[12] = {0, 0, 3, 0, 1, 0, 0, 0, 4, 0, 1, 0};   /* x C, 0: 1-D */
    if (cols[k]) {
      t->ndim = 2, t->shape[0] = rows[k] * C, t->shape[1] = cols[k] * C;
    } else {
      t->shape[0] = rows[k] * C;
    }
  } else {
    snprintf(t->name, sizeof t->name, i == 2 + 12 * (size_t)L ? "ln_f.weight" : "ln_f.bias");
    t->shape[0] = C;
  }
  t->numel = (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
  t->decay = t->ndim == 2;
}

void gpt_tensor_at(const gpt_config *c, size_t i, gpt_tensor_info *out) {
  size_t off = 0;
  gpt_tensor_info t;
  for (size_t j = 0; j < i; j++) {
    shape_of(c, j, &t);
    off += t.numel;
  }
  shape_of(c, i, out);
  out->offset = off;
}

size_t gpt_param_count(const gpt_config *c) {
  size_t n = 0, nt = gpt_tensor_count(c);
  gpt_tensor_info t;
  for (size_t i = 0; i < nt; i++) {
    shape_of(c, i, &t);
    n += t.numel;
  }
  return n;
}

void gpt_point_weights(const gpt_config *c, float *base, gpt_weights *w) {
  size_t nt = gpt_tensor_count(c), off = 0;
  gpt_tensor_info t;
  float **slots[12];
  for (size_t i = 0; i < nt; i++) {
    shape_of(c, i, &t);
    float *p = base + off;
    off += t.numel;
    if (i == 0) w->wte = p;
    else if (i == 1) w->wpe = p;
    else if (i < nt - 2) {
      gpt_layer_w *lw = &w->layers[(i - 2) / 12];
      float **s[12] = {&lw->ln1w, &lw->ln1b, &lw->qkvw, &lw->qkvb, &lw->attprojw, &lw->attprojb,
                       &lw->ln2w, &lw->ln2b, &lw->fcw,  &lw->fcb,  &lw->fcprojw,  &lw->fcprojb};
      memcpy(slots, s, sizeof s);
      *slots[(i - 2) % 12] = p;
    } else if (i == nt - 2) w->lnfw = p;
    else w->lnfb = p;
  }
}

/* ---- Activations --------------------------------------------------------------------- */

struct gpt_acts {
  float *block;  /* p's activations point into it */
  float *gblock; /* p's gradients point into it, then pack */
  size_t gsize;
  gpt_act_ptrs p;
  float *probs;                              /* p.logits: the softmax runs in place */
  float *pack;                               /* a matmul's B, packed once per call (mm_par) */
  size_t pack_cap;                           /* its floats */
  int32_t *inputs, *targets;                 /* (B, T) of the last forward */
  int lastB, lastT;
  int has_targets;
  size_t nvalid;
};

qv_status gpt_create(gpt_model **out, const gpt_config *c, qv_error *err) {
  *out = NULL;
  qv_status st = gpt_config_check(c, err);
  if (st) return st;
  pthread_once(&blas_once, blas_single);
  gpt_model *m = calloc(1, sizeof *m);
  if (!m) return qv_fail(err, QV_ENOMEM, "out of memory for the model");
  m->cfg = *c;
  m->nparams = gpt_param_count(c);
  m->params = qv_aligned_alloc(m->nparams * sizeof(float));
  m->w.layers = calloc((size_t)c->n_layer, sizeof(gpt_layer_w));
  m->g.layers = calloc((size_t)c->n_layer, sizeof(gpt_layer_w));
  if (!m->params || !m->w.layers || !m->g.layers) {
    gpt_free(m);
    return qv_fail(err, QV_ENOMEM, "out of memory for %zu parameters", gpt_param_count(c));
  }
  memset(m->params, 0, m->nparams * sizeof(float));
  gpt_point_weights(c, m->params, &m->w);
  *out = m;
  return QV_OK;
}

void gpt_free(gpt_model *m) {
  if (!m) return;
  qv_aligned_free(m->params);
  qv_aligned_free(m->grads);
  qv_aligned_free(m->m);
  qv_aligned_free(m->v);
  if (m->acts) {
    qv_aligned_free(m->acts->block);
    qv_aligned_free(m->acts->gblock);
    free(m->acts->inputs);
    free(m->acts->targets);
    free(m->acts);
  }
  free(m->w.layers);
  free(m->g.layers);
  free(m);
}

void gpt_init(gpt_model *m, uint64_t seed) {
  gpt_rng r;
  gpt_rng_seed(&r, seed);
  const gpt_config *c = &m->cfg;
  size_t nt = gpt_tensor_count(c);
  float resid_std = 0.02f / sqrtf(2.0f * (float)c->n_layer);
  for (size_t i = 0; i < nt; i++) {
    gpt_tensor_info t;
    gpt_tensor_at(c, i, &t);
    float *p = m->params + t.offset;
    if (t.ndim == 2) {
      float sd = strstr(t.name, "c_proj.weight") ? resid_std : 0.02f;
      for (size_t j = 0; j < t.numel; j++) p[j] = sd * gpt_rng_normal(&r);
    } else {
      float v = strstr(t.name, "ln_") && strstr(t.name, ".weight") ? 1.0f : 0.0f;
      for (size_t j = 0; j < t.numel; j++) p[j] = v;
    }
  }
}

qv_status gpt_moments_alloc(gpt_model *m, qv_error *err) {
  if (m->m && m->v) return QV_OK;
  float *mm = qv_aligned_alloc(m->nparams * sizeof(float)), *vv = qv_aligned_alloc(m->nparams * sizeof(float));
  if (!mm || !vv) {
    qv_aligned_free(mm);
    qv_aligned_free(vv);
    return qv_fail(err, QV_ENOMEM, "out of memory for the optimizer state (%zu floats)", 2 * m->nparams);
  }
  memset(mm, 0, m->nparams * sizeof(float));
  memset(vv, 0, m->nparams * sizeof(float));
  m->m = mm;
  m->v = vv;
  return QV_OK;
}

/* The next array of n floats at offset *cur of base (NULL without a base: sizes only). */
static float *place(float *base, size_t *cur, size_t n) {
  size_t at = *cur;
  *cur += (n + 15) & ~(size_t)15; /* keep each array 64-byte aligned */
  return base ? base + at : NULL;
}

void gpt_acts_layout(const gpt_config *c, int B, int T, float *block, float *gblock, gpt_act_ptrs *p,
                     size_t *afloats, size_t *gfloats) {
  size_t L = (size_t)c->n_layer, C = (size_t)c->n_embd, H = (size_t)c->n_head, V = (size_t)c->vocab_size;
  size_t BT = (size_t)B * (size_t)T, TT = (size_t)B * H * (size_t)T * (size_t)T;
  size_t a = 0, g = 0;
  gpt_act_ptrs scratch;
  if (!p) p = &scratch;
  p->encoded = place(block, &a, BT * C);
  p->ln1 = place(block, &a, L * BT * C);
  p->ln1_mean = place(block, &a, L * BT);
  p->ln1_rstd = place(block, &a, L * BT);
  p->qkv = place(block, &a, L * BT * 3 * C);
  p->atty = place(block, &a, L * BT * C);
  p->att = place(block, &a, L * TT);
  p->residual2 = place(block, &a, L * BT * C);
  p->ln2 = place(block, &a, L * BT * C);
  p->ln2_mean = place(block, &a, L * BT);
  p->ln2_rstd = place(block, &a, L * BT);
  p->fch = place(block, &a, L * BT * 4 * C);
  p->fch_gelu = place(block, &a, L * BT * 4 * C);
  p->residual3 = place(block, &a, L * BT * C);
  p->lnf = place(block, &a, BT * C);
  p->lnf_mean = place(block, &a, BT);
  p->lnf_rstd = place(block, &a, BT);
  p->logits = place(block, &a, BT * V);
  p->losses = place(block, &a, BT);
  p->dres = place(gblock, &g, BT * C);
  p->dln = place(gblock, &g, BT * C);
  p->datty = place(gblock, &g, BT * C);
  p->dlnf = place(gblock, &g, BT * C);
  p->dqkv = place(gblock, &g, BT * 3 * C);
  p->dfch = place(gblock, &g, BT * 4 * C);
  p->dfch_gelu = place(gblock, &g, BT * 4 * C);
  p->dlogits = place(gblock, &g, BT * V);
  p->dscratch = place(gblock, &g, TT);
  if (afloats) *afloats = a;
  if (gfloats) *gfloats = g;
}

qv_status gpt_train_alloc(gpt_model *m, int B, int T, qv_error *err) {
  const gpt_config *c = &m->cfg;
  if (B <= 0 || T <= 0 || T > c->n_ctx)
    return qv_fail(err, QV_EINVAL, "batch %d x %d does not fit the model (context %d)", B, T, c->n_ctx);
  if (m->acts) return qv_fail(err, QV_EINVAL, "training state already allocated");
  size_t C = (size_t)c->n_embd, V = (size_t)c->vocab_size, BT = (size_t)B * (size_t)T;
  size_t asize, gsize;
  gpt_acts_layout(c, B, T, NULL, NULL, NULL, &asize, &gsize);
  /* the largest B a step's matmuls pack (K x columns rounded to panels): weights (C x 4C both
   * ways), dout for weight gradients (BT x 4C), the tied head (C x V, V x C, BT x C); it
   * follows the gradients in gblock */
  size_t pcap = gptk_packed_floats((int)C, (int)(4 * C));
  size_t pk[] = {gptk_packed_floats((int)(4 * C), (int)C), gptk_packed_floats((int)BT, (int)(4 * C)),
                 gptk_packed_floats((int)C, (int)V), gptk_packed_floats((int)V, (int)C)};
  for (size_t i = 0; i < sizeof pk / sizeof *pk; i++) pcap = pk[i] > pcap ? pk[i] : pcap;
  pcap = (pcap + 15) & ~(size_t)15;
  gsize += pcap;
  gpt_acts *a = calloc(1, sizeof *a);
  if (!a) return qv_fail(err, QV_ENOMEM, "out of memory for activations");
  a->block = qv_aligned_alloc(asize * sizeof(float));
  a->gblock = qv_aligned_alloc(gsize * sizeof(float));
  a->inputs = malloc(BT * sizeof(int32_t));
  a->targets = malloc(BT * sizeof(int32_t));
  m->grads = qv_aligned_alloc(m->nparams * sizeof(float));
  m->acts = a;
  if (!a->block || !a->gblock || !a->inputs || !a->targets || !m->grads || gpt_moments_alloc(m, NULL)) {
    size_t total = asize + gsize + 3 * m->nparams;
    qv_aligned_free(m->grads);
    m->grads = NULL;
    qv_aligned_free(a->block);
    qv_aligned_free(a->gblock);
    free(a->inputs);
    free(a->targets);
    free(a);
    m->acts = NULL;
    return qv_fail(err, QV_ENOMEM, "out of memory for training state (%zu floats)", total);
  }
  memset(a->block, 0, asize * sizeof(float));
  memset(m->grads, 0, m->nparams * sizeof(float));
  gpt_point_weights(c, m->grads, &m->g);
  gpt_acts_layout(c, B, T, a->block, a->gblock, &a->p, NULL, NULL);
  a->probs = a->p.logits; /* the softmax runs in place: the logits are not needed after it */
  a->gsize = gsize;
  a->pack = a->gblock + (gsize - pcap);
  a->pack_cap = pcap;
  m->B = B;
  m->T = T;
  return QV_OK;
}

/* ---- Kernels ------------------------------------------------------------------------- */

void gpt_encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, int B, int T,
                         int C) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      float *o = out + ((size_t)b * T + t) * C;          // (C)
      const float *we = wte + (size_t)inp[b * T + t] * C; // (C)
      const float *pe = wpe + (size_t)t * C;             // (C)
      for (int i = 0; i < C; i++) o[i] = we[i] + pe[i];
    }
}

void gpt_encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B, int T,
                          int C) {
  /* sequential: rows with the same token add into the same dwte row, in row order */
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      const float *d = dout + ((size_t)b * T + t) * C;
      float *dw = dwte + (size_t)inp[b * T + t] * C, *dp = dwpe + (size_t)t * C;
      for (int i = 0; i < C; i++) {
        dw[i] += d[i];
        dp[i] += d[i];
      }
    }
}

typedef struct ln_ctx {
  float *out, *mean, *rstd, *dinp, *dw, *db;
  const float *inp, *w, *b, *dout, *cmean, *crstd;
  int C;
  float eps;
} ln_ctx;

static void ln_fwd_rows(void *c, size_t lo, size_t hi) {
  ln_ctx *x = c;
  size_t C = (size_t)x->C;
  for (size_t n = lo; n < hi; n++)
    gptk_layernorm(x->out + n * C, x->inp + n * C, x->w, x->b, x->C, x->eps, x->mean ? x->mean + n : NULL,
                   x->rstd ? x->rstd + n : NULL);
}

void gpt_layernorm_forward(qv_pool *pool, float *out, float *mean, float *rstd, const float *inp,
                           const float *w, const float *b, int N, int C, float eps) {
  ln_ctx x = {.out = out, .mean = mean, .rstd = rstd, .inp = inp, .w = w, .b = b, .C = C, .eps = eps};
  par_range(pool, (size_t)N, (size_t)C * 8, ln_fwd_rows, &x);
}

static void ln_bwd_rows(void *c, size_t lo, size_t hi) {
  ln_ctx *x = c;
  size_t C = (size_t)x->C;
  for (size_t n = lo; n < hi; n++)
    gptk_layernorm_bwd(x->dinp + n * C, x->inp + n * C, x->dout + n * C, x->w, x->cmean[n], x->crstd[n], x->C);
}

typedef struct colsum_ctx {
  const float *inp, *dout, *mean, *rstd;
  float *dw, *db;
  size_t N, C;
} colsum_ctx;

/* dw[i] += sum_n norm[n,i] dout[n,i], db[i] += sum_n dout[n,i] for columns [lo, hi), rows in
 * order (invariant 2). */
static void ln_bwd_cols(void *c, size_t lo, size_t hi) {
  colsum_ctx *x = c;
  gptk_layernorm_wgrad(x->dw + lo, x->db + lo, x->inp + lo, x->dout + lo, x->mean, x->rstd, x->N, x->C, hi - lo);
}

void gpt_layernorm_backward(qv_pool *pool, float *dinp, float *dw, float *db, const float *dout,
                            const float *inp, const float *w, const float *mean, const float *rstd, int N,
                            int C) {
  ln_ctx x = {.dinp = dinp, .inp = inp, .w = w, .dout = dout, .cmean = mean, .crstd = rstd, .C = C};
  par_range(pool, (size_t)N, (size_t)C * 12, ln_bwd_rows, &x);
  colsum_ctx s = {inp, dout, mean, rstd, dw, db, (size_t)N, (size_t)C};
  par_range(pool, (size_t)C, (size_t)N * 4, ln_bwd_cols, &s);
}

/* Matmuls are sliced over the pool by rows of the output. Where the CPU has AVX2+FMA they run
 * gptk_gemm (kernels.h), whose bits do not depend on the slicing; elsewhere OpenBLAS,
 * single-threaded (as the CPU backend, src/compute/cpu.c), one call per slice (invariant 3). */
typedef struct mm_ctx {
  float *out;
  const float *a, *b;
  int N, IC, OC;
  int kind; /* 0: out = a @ b, 1: out = a @ b^T, 3: out = a^T @ b; all sliced by rows of out */
  int acc;  /* 1: out += ..., 0: out = bias + ... (bias NULL: zeros) */
  const float *bias;
  float *pack;      /* room to pack B once for the whole call (NULL: each block packs its own) */
  size_t pack_cap;  /* pack's floats */
  const float *bp;  /* B packed (gptk_pack) into pack by mm_par, or NULL */
} mm_ctx;

/* B as gptk_gemm reads it for each kind: B(k, j) = b[k * bks + j * bjs], K x cols. */
typedef struct mm_bdesc {
  size_t bks, bjs;
  int K, cols;
} mm_bdesc;

static mm_bdesc mm_b(const mm_ctx *x) {
  if (x->kind == 0) return (mm_bdesc){(size_t)x->OC, 1, x->IC, x->OC};
  if (x->kind == 1) return (mm_bdesc){1, (size_t)x->OC, x->OC, x->IC};
  return (mm_bdesc){(size_t)x->OC, 1, x->N, x->OC};
}

/* out (rows [lo, lo + M), columns [j0, j0 + nc)) through gptk_gemm, or gptk_gemm_packed when
 * B is packed (the same bits). */
static void mm_gptk(const mm_ctx *x, size_t lo, int M, size_t j0, int nc) {
  size_t IC = (size_t)x->IC, OC = (size_t)x->OC, w = x->kind == 1 ? IC : OC; /* w: out's row length */
  const float *a = x->kind == 0 ? x->a + lo * IC : x->kind == 1 ? x->a + lo * OC : x->a + lo;
  size_t ars = x->kind == 0 ? IC : x->kind == 1 ? OC : 1, aks = x->kind == 3 ? IC : 1;
  mm_bdesc d = mm_b(x);
  float *out = x->out + lo * w + j0;
  const float *bias = x->bias ? x->bias + j0 : NULL;
  if (x->bp)
    gptk_gemm_packed(out, w, a, ars, aks, x->bp + j0 * (size_t)d.K, (size_t)d.K * GPTK_NR, M, nc, d.K, x->acc,
                     bias);
  else
    gptk_gemm(out, w, a, ars, aks, x->b + j0 * d.bjs, d.bks, d.bjs, M, nc, d.K, x->acc, bias);
}

static void mm_slice(void *c, size_t lo, size_t hi) {
  mm_ctx *x = c;
  int n = (int)(hi - lo);
  size_t IC = (size_t)x->IC, OC = (size_t)x->OC, w = x->kind == 1 ? IC : OC; /* w: out's row length */
  float *out = x->out + lo * w;
  if (gptk_gemm_available()) {
    mm_gptk(x, lo, n, 0, (int)w);
    return;
  }
  if (!x->acc)
    for (int r = 0; r < n; r++) {
      if (x->bias) memcpy(out + (size_t)r * w, x->bias, w * sizeof(float));
      else memset(out + (size_t)r * w, 0, w * sizeof(float));
    }
  if (x->kind == 0) /* out (n, OC) += a (n, IC) @ b (IC, OC) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, x->OC, x->IC, 1.0f, x->a + lo * IC, x->IC, x->b,
                x->OC, 1.0f, out, x->OC);
  else if (x->kind == 1) /* out (n, IC) += a (n, OC) @ b^T, b (IC, OC) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, x->IC, x->OC, 1.0f, x->a + lo * OC, x->OC, x->b,
                x->OC, 1.0f, out, x->IC);
  else /* kind 3: out (rows, OC) += a^T @ b for rows [lo, hi) of IC: a (N, IC), b (N, OC) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, x->OC, x->N, 1.0f, x->a + lo, x->IC, x->b, x->OC, 1.0f,
                out, x->OC);
}

typedef struct mm_job {
  mm_ctx *x;
  size_t n, per;
} mm_job;

static void mm_task(void *c, size_t task, int worker) {
  (void)worker;
  mm_job *j = c;
  size_t lo = task * j->per, hi = lo + j->per < j->n ? lo + j->per : j->n;
  if (lo < hi) mm_slice(j->x, lo, hi);
}

/* gptk_gemm path: output blocks of rows (B packed once for them all, mm_prepack) or, for
 * outputs with few rows, MM_COLS columns (B panels are packed by the task that owns them).
 * Several blocks per thread, claimed dynamically, so a thread that starts late (a shared
 * machine) does not leave its half undone; the bits do not depend on this. An output with
 * more than GPTK_MC rows is packed once ahead even on one thread. */
enum { MM_ROWS = GPTK_MC, MM_COLS = 32 };

typedef struct mm_blocks {
  mm_ctx *x;
  size_t rows, cols, by_rows; /* the output's shape; by_rows: split rows, else columns */
  size_t per;                 /* rows a block, by_rows */
} mm_blocks;

static void mm_block(void *c, size_t task, int worker) {
  (void)worker;
  mm_blocks *j = c;
  mm_ctx *x = j->x;
  if (j->by_rows) {
    size_t lo = task * j->per, hi = lo + j->per < j->rows ? lo + j->per : j->rows;
    mm_slice(x, lo, hi);
    return;
  }
  size_t j0 = task * MM_COLS, nc = j0 + MM_COLS < j->cols ? MM_COLS : j->cols - j0;
  mm_gptk(x, 0, (int)j->rows, j0, (int)nc);
}

/* Packs columns [64 task, 64 task + 64) of B into x->pack (four panels). */
enum { MM_PACK_COLS = 64 };
static void mm_pack_task(void *c, size_t task, int worker) {
  (void)worker;
  mm_ctx *x = c;
  mm_bdesc d = mm_b(x);
  int j0 = (int)task * MM_PACK_COLS, nc = d.cols - j0 < MM_PACK_COLS ? d.cols - j0 : MM_PACK_COLS;
  gptk_pack(x->pack + (size_t)j0 * (size_t)d.K, x->b + (size_t)j0 * d.bjs, d.bks, d.bjs, d.K, nc);
}

/* Packs x's B into x->pack (over the pool when parallel) and points x->bp at it; returns 0,
 * leaving bp NULL, where there is no room. */
static int mm_prepack(qv_pool *pool, mm_ctx *x, int parallel) {
  mm_bdesc d = mm_b(x);
  x->bp = NULL;
  if (!x->pack || d.K <= 0 || gptk_packed_floats(d.K, d.cols) > x->pack_cap) return 0;
  size_t pt = ((size_t)d.cols + MM_PACK_COLS - 1) / MM_PACK_COLS;
  if (parallel && pt > 1) pool_run(pool, pt, mm_pack_task, x);
  else
    for (size_t t = 0; t < pt; t++) mm_pack_task(x, t, 0);
  x->bp = x->pack;
  return 1;
}

static void mm_par(qv_pool *pool, mm_ctx *x, size_t n, size_t work_per) {
  size_t nt = (size_t)pool_size(pool);
  x->bp = NULL;
  if (gptk_gemm_available()) {
    size_t cols = (size_t)(x->kind == 1 ? x->IC : x->OC);
    /* row blocks: four a thread, in whole tiles, so that the blocks even out over the
     * threads (192-row blocks left one thread 576 of 1,024 rows at 2 threads) */
    size_t per = (n + 4 * nt - 1) / (4 * nt);
    per = (per + GPTK_MR - 1) / GPTK_MR * GPTK_MR;
    mm_blocks j = {x, n, cols, n >= 2 * MM_ROWS * nt || cols < 2 * MM_COLS, per};
    size_t tasks = j.by_rows ? (n + per - 1) / per : (cols + MM_COLS - 1) / MM_COLS;
    int split = nt > 1 && n * work_per >= 65536 && tasks > 1;
    /* More than one block of rows would each pack all of B (gptk_gemm packs per MC rows):
     * pack it once, over the pool, and let every block read the one copy. A split by
     * columns packs each panel once already. */
    if (n > MM_ROWS && (!split || j.by_rows)) mm_prepack(pool, x, split);
    if (split) {
      pool_run(pool, tasks, mm_block, &j);
      return;
    }
  }
  if (nt <= 1 || n * work_per < 65536 || n < 32 * nt) {
    mm_slice(x, 0, n);
    return;
  }
  /* one slice per thread, a multiple of 16 rows/columns so kernels see full panels */
  size_t per = (n + nt - 1) / nt;
  per = (per + 15) & ~(size_t)15;
  mm_job j = {x, n, per};
  pool_run(pool, (n + per - 1) / per, mm_task, &j);
}

/* A matmul fused with the row-wise passes around it, by blocks of FUSE_ROWS rows, so that a
 * block's rows are still in cache when the next pass reads them: the LM head with the
 * cross-entropy (forward: logits rows, then their softmax and losses; backward: dlogits rows,
 * then dlnf's rows), the MLP's first matmul with the GELU (forward: fch rows, then their
 * GELU; backward: dfch_gelu rows, then dfch's). B is packed once for all blocks. Each row's
 * values are those of the separate passes. */
enum { FUSE_ROWS = 24 };
typedef struct fuse_job {
  mm_ctx *mm;
  range_fn pre, post; /* before and after the block's matmul rows; NULL: none */
  void *pre_ctx, *post_ctx;
  size_t unit; /* pre and post take ranges of rows x unit (elements, or rows when 1) */
  size_t rows;
} fuse_job;

static void fuse_task(void *c, size_t task, int worker) {
  (void)worker;
  fuse_job *j = c;
  size_t lo = task * FUSE_ROWS, hi = lo + FUSE_ROWS < j->rows ? lo + FUSE_ROWS : j->rows;
  size_t w = (size_t)(j->mm->kind == 1 ? j->mm->IC : j->mm->OC);
  if (j->pre) j->pre(j->pre_ctx, lo * j->unit, hi * j->unit);
  mm_gptk(j->mm, lo, (int)(hi - lo), 0, (int)w);
  if (j->post) j->post(j->post_ctx, lo * j->unit, hi * j->unit);
}

/* Runs a fused job over rows [0, j->rows); 0 (nothing run) where the kernels or the packing
 * room are missing, so that the caller runs the passes separately. */
static int fused_rows(qv_pool *pool, fuse_job *j) {
  if (!gptk_gemm_available()) return 0;
  int parallel = pool_size(pool) > 1;
  if (!mm_prepack(pool, j->mm, parallel)) return 0;
  size_t tasks = (j->rows + FUSE_ROWS - 1) / FUSE_ROWS;
  if (parallel && tasks > 1) pool_run(pool, tasks, fuse_task, j);
  else
    for (size_t t = 0; t < tasks; t++) fuse_task(j, t, 0);
  return 1;
}

/* gpt_matmul_forward with room to pack the weight once (pack NULL: none). */
static void matmul_forward(qv_pool *pool, float *pack, size_t cap, float *out, const float *inp, const float *w,
                           const float *b, int N, int IC, int OC) {
  mm_ctx x = {out, inp, w, N, IC, OC, 0, 0, b, pack, cap, NULL};
  mm_par(pool, &x, (size_t)N, (size_t)IC * OC);
}

void gpt_matmul_forward(qv_pool *pool, float *out, const float *inp, const float *w, const float *b, int N,
                        int IC, int OC) {
  matmul_forward(pool, NULL, 0, out, inp, w, b, N, IC, OC);
}

typedef struct bias_ctx {
  float *db;
  const float *dout;
  size_t N, OC;
} bias_ctx;

static void bias_cols(void *c, size_t lo, size_t hi) {
  bias_ctx *x = c;
  gptk_colsum(x->db + lo, x->dout + lo, x->N, x->OC, hi - lo);
}

/* gpt_matmul_backward with dinp overwritten (acc_dinp 0) or accumulated into (1), room to
 * pack B once per matmul (pack NULL: none), and a pass over dinp's elements (post, NULL:
 * none; the GELU's backward) run by rows as they come out of the matmul (fuse_job). */
static void matmul_backward_then(qv_pool *pool, float *pack, size_t cap, float *dinp, float *dw, float *db,
                                 const float *dout, const float *inp, const float *w, int N, int IC, int OC,
                                 int acc_dinp, range_fn post, void *post_ctx) {
  /* dinp (N, IC) (+)= dout (N, OC) @ w^T; dw (IC, OC) += inp^T (IC, N) @ dout (N, OC) */
  mm_ctx x = {dinp, dout, w, N, IC, OC, 1, acc_dinp, NULL, pack, cap, NULL};
  fuse_job fj = {&x, NULL, post, NULL, post_ctx, (size_t)IC, (size_t)N};
  if (!post || !fused_rows(pool, &fj)) {
    mm_par(pool, &x, (size_t)N, (size_t)IC * OC);
    if (post) par_range(pool, (size_t)N * IC, 24, post, post_ctx);
  }
  mm_ctx y = {dw, inp, dout, N, IC, OC, 3, 1, NULL, pack, cap, NULL};
  mm_par(pool, &y, (size_t)IC, (size_t)OC * N);
  if (db) {
    bias_ctx z = {db, dout, (size_t)N, (size_t)OC};
    par_range(pool, (size_t)OC, (size_t)N, bias_cols, &z);
  }
}

static void matmul_backward(qv_pool *pool, float *pack, size_t cap, float *dinp, float *dw, float *db,
                            const float *dout, const float *inp, const float *w, int N, int IC, int OC,
                            int acc_dinp) {
  matmul_backward_then(pool, pack, cap, dinp, dw, db, dout, inp, w, N, IC, OC, acc_dinp, NULL, NULL);
}

void gpt_matmul_backward(qv_pool *pool, float *dinp, float *dw, float *db, const float *dout,
                         const float *inp, const float *w, int N, int IC, int OC) {
  matmul_backward(pool, NULL, 0, dinp, dw, db, dout, inp, w, N, IC, OC, 1);
}

void gpt_head_forward(qv_pool *pool, float *logits, const float *x, const float *wte, int N, int V, int C) {
  /* logits (N, V) = x (N, C) @ wte^T: the "dinp" shape of a matmul with w = wte */
  mm_ctx h = {logits, x, wte, N, V, C, 1, 0, NULL, NULL, 0, NULL};
  mm_par(pool, &h, (size_t)N, (size_t)V * C);
}

void gpt_head_backward(qv_pool *pool, float *dx, float *dwte, const float *dlogits, const float *x,
                       const float *wte, int N, int V, int C) {
  mm_ctx h1 = {dx, dlogits, wte, N, V, C, 0, 1, NULL, NULL, 0, NULL};
  mm_par(pool, &h1, (size_t)N, (size_t)V * C);
  mm_ctx h2 = {dwte, dlogits, x, N, V, C, 3, 1, NULL, NULL, 0, NULL};
  mm_par(pool, &h2, (size_t)V, (size_t)N * C);
}

typedef struct att_ctx {
  float *out, *preatt, *att, *dqkv, *scratch;
  const float *qkv, *dout, *catt;
  int B, T, C, H;
  int acc; /* backward: 1 adds into dqkv, 0 overwrites it (tiled path) */
} att_ctx;

/* task = (b, h): one head's T x T scores by sgemm (the upper triangle is computed and then
 * masked: cheaper in a BLAS kernel than skipping it in scalar code). */
static void att_fwd(void *c, size_t lo, size_t hi) {
  att_ctx *x = c;
  int T = x->T, C = x->C, H = x->H, hs = C / H;
  float scale = 1.0f / sqrtf((float)hs);
  for (size_t task = lo; task < hi; task++) {
    int h = (int)(task % (size_t)H), b = (int)(task / (size_t)H);
    const float *q = x->qkv + (size_t)b * T * 3 * C + (size_t)h * hs; // (T, hs) stride 3C
    const float *k = q + C, *v = q + 2 * C;
    float *att = x->att + task * (size_t)T * T;                    // (T, T)
    float *pre = x->preatt ? x->preatt + task * (size_t)T * T : att; // (T, T); softmax in place
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, 3 * C, k, 3 * C, 0.0f, pre, T);
    for (int t = 0; t < T; t++) {
      float *p = pre + (size_t)t * T, *a = att + (size_t)t * T;
      float maxv = -INFINITY;
      for (int t2 = 0; t2 <= t; t2++)
        if (p[t2] > maxv) maxv = p[t2];
      float sum = 0;
      for (int t2 = 0; t2 <= t; t2++) {
        a[t2] = expf(p[t2] - maxv);
        sum += a[t2];
      }
      float inv = 1.0f / sum;
      for (int t2 = 0; t2 <= t; t2++) a[t2] *= inv;
      for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0.0f; /* causal mask */
    }
    /* out (T, hs) = att (T, T) @ v (T, hs) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, att, T, v, 3 * C, 0.0f,
                x->out + (size_t)b * T * C + (size_t)h * hs, C);
  }
}

/* Causal blocks for the gptk_gemm path: rows are taken ATT_RB at a time (four 6-row tiles)
 * and a block's columns end at its last row, so the GEMMs skip most of the masked upper
 * triangle (at T = 128, 59% of the square instead of all of it). */
enum { ATT_RB = 24 };

/* A head's B operands are packed once per head (gptk_pack) and shared by its row blocks,
 * instead of each block's GEMM packing its own copy for only four row tiles: buffers of
 * ATT_PACK floats each on the task's stack, for heads where T x hs fits (T = 128, hs = 32:
 * 4,096); larger heads read their operands unpacked. */
enum { ATT_PACK = 8192 };

/* B operand of an attention GEMM: packed (bp set, panels pstride floats apart), or in place. */
typedef struct att_b {
  const float *b, *bp;
  size_t bks, bjs, pstride;
} att_b;

/* b (K, N) through its strides, packed into buf when buf is set. */
static att_b att_operand(float *buf, const float *b, size_t bks, size_t bjs, int K, int N) {
  att_b o = {b, NULL, bks, bjs, 0};
  if (buf) {
    gptk_pack(buf, b, bks, bjs, K, N);
    o.bp = buf;
    o.pstride = (size_t)K * GPTK_NR;
  }
  return o;
}

/* c (M, N) = or += A @ B's rows [k0, k0 + K) (gptk_gemm's contract; the same bits either way). */
static void att_mm(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const att_b *o, int k0, int M,
                   int N, int K, int acc) {
  if (o->bp)
    gptk_gemm_packed(c, ldc, a, ars, aks, o->bp + (size_t)k0 * GPTK_NR, o->pstride, M, N, K, acc, NULL);
  else
    gptk_gemm(c, ldc, a, ars, aks, o->b + (size_t)k0 * o->bks, o->bks, o->bjs, M, N, K, acc, NULL);
}

/* n columns rounded up to whole GPTK_NR panels, at most T (the row's length). */
static int att_cols(int n, int T) {
  int r = (n + GPTK_NR - 1) / GPTK_NR * GPTK_NR;
  return r < T ? r : T;
}

static int att_packs(int T, int hs) {
  return gptk_packed_floats(hs, T) <= ATT_PACK && gptk_packed_floats(T, hs) <= ATT_PACK;
}

/* task = (b, h), as att_fwd, with gptk_gemm over the lower triangle only. */
static void att_fwd_tiled(void *c, size_t lo, size_t hi) {
  att_ctx *x = c;
  int T = x->T, C = x->C, H = x->H, hs = C / H;
  size_t C3 = 3 * (size_t)C, Tz = (size_t)T;
  float scale = 1.0f / sqrtf((float)hs);
  float pk[2][ATT_PACK] __attribute__((aligned(64)));
  int packs = att_packs(T, hs);
  for (size_t task = lo; task < hi; task++) {
    int h = (int)(task % (size_t)H), b = (int)(task / (size_t)H);
    const float *q = x->qkv + (size_t)b * T * C3 + (size_t)h * hs; // (T, hs) stride 3C
    const float *k = q + C, *v = q + 2 * C;
    float *att = x->att + task * Tz * Tz;                     // (T, T)
    float *pre = x->preatt ? x->preatt + task * Tz * Tz : att; // (T, T), lower triangle
    float *out = x->out + (size_t)b * T * C + (size_t)h * hs; // (T, hs) stride C
    att_b kt = att_operand(packs ? pk[0] : NULL, k, 1, C3, hs, T); /* B (hs, T) = k^T */
    att_b vb = att_operand(packs ? pk[1] : NULL, v, C3, 1, T, hs); /* B (T, hs) = v */
    for (int i0 = 0; i0 < T; i0 += ATT_RB) {
      int rb = T - i0 < ATT_RB ? T - i0 : ATT_RB, n = i0 + rb;
      /* pre rows [i0, n), columns [0, n) = q @ k^T (unscaled); in place, to the end of n's
       * 16-column panel, a partial tile's copy saved: the masked scores past n are
       * overwritten below */
      int nc = x->preatt ? n : att_cols(n, T);
      att_mm(pre + i0 * Tz, Tz, q + i0 * C3, C3, 1, &kt, 0, rb, nc, hs, 0);
      for (int t = i0; t < n; t++) {
        float *p = pre + t * Tz, *a = att + t * Tz, s = scale;
        if (x->preatt) { /* keep the scaled scores */
          for (int j = 0; j <= t; j++) p[j] *= scale;
          s = 1.0f;
        }
        gptk_softmax_probs(a, p, t + 1, s);
        memset(a + t + 1, 0, (Tz - (size_t)t - 1) * sizeof(float)); /* causal mask */
      }
      /* out rows [i0, n) = att (rb, n) @ v (n, hs) */
      att_mm(out + i0 * (size_t)C, (size_t)C, att + i0 * Tz, Tz, 1, &vb, 0, rb, hs, n, 0);
    }
  }
}

void gpt_attention_forward(qv_pool *pool, float *out, float *preatt, float *att, const float *qkv, int B,
                           int T, int C, int H) {
  att_ctx x = {.out = out, .preatt = preatt, .att = att, .qkv = qkv, .B = B, .T = T, .C = C, .H = H};
  par_range(pool, (size_t)B * H, (size_t)T * T * (C / H) * 4, gptk_gemm_available() ? att_fwd_tiled : att_fwd,
            &x);
}

/* task = (b, h): each task writes only its head's slice of dqkv. scratch holds datt (T, T)
 * for the head, then dpreatt in place. */
static void att_bwd(void *c, size_t lo, size_t hi) {
  att_ctx *x = c;
  int T = x->T, C = x->C, H = x->H, hs = C / H;
  float scale = 1.0f / sqrtf((float)hs);
  for (size_t task = lo; task < hi; task++) {
    int h = (int)(task % (size_t)H), b = (int)(task / (size_t)H);
    size_t qoff = (size_t)b * T * 3 * C + (size_t)h * hs;
    const float *q = x->qkv + qoff, *k = q + C, *v = q + 2 * C;             // (T, hs) stride 3C
    float *dq = x->dqkv + qoff, *dk = dq + C, *dv = dq + 2 * C;             // (T, hs) stride 3C
    const float *att = x->catt + task * (size_t)T * T;                       // (T, T)
    const float *d = x->dout + (size_t)b * T * C + (size_t)h * hs;          // (T, hs) stride C
    float *datt = x->scratch + task * (size_t)T * T;                         // (T, T)
    /* out = att @ v: datt = dout @ v^T, dv += att^T @ dout */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, d, C, v, 3 * C, 0.0f, datt, T);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, att, T, d, C, 1.0f, dv, 3 * C);
    /* softmax rows: dpre = att * (datt - sum(att * datt)), masked entries 0; scale folded in */
    for (int t = 0; t < T; t++) {
      const float *a = att + (size_t)t * T;
      float *da = datt + (size_t)t * T;
      float dot = 0;
      for (int t2 = 0; t2 <= t; t2++) dot += a[t2] * da[t2];
      for (int t2 = 0; t2 <= t; t2++) da[t2] = a[t2] * (da[t2] - dot) * scale;
      for (int t2 = t + 1; t2 < T; t2++) da[t2] = 0.0f;
    }
    /* pre = q @ k^T * scale: dq += dpre @ k, dk += dpre^T @ q */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, datt, T, k, 3 * C, 1.0f, dq, 3 * C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, datt, T, q, 3 * C, 1.0f, dk, 3 * C);
  }
}

/* task = (b, h), as att_bwd, with gptk_gemm over the lower triangle; x->acc 0 overwrites
 * the head's slices of dqkv instead of adding into them. */
static void att_bwd_tiled(void *c, size_t lo, size_t hi) {
  att_ctx *x = c;
  int T = x->T, C = x->C, H = x->H, hs = C / H, acc = x->acc;
  size_t C3 = 3 * (size_t)C, Tz = (size_t)T, Cz = (size_t)C;
  float scale = 1.0f / sqrtf((float)hs);
  float pk[4][ATT_PACK] __attribute__((aligned(64)));
  int packs = att_packs(T, hs);
  for (size_t task = lo; task < hi; task++) {
    int h = (int)(task % (size_t)H), b = (int)(task / (size_t)H);
    size_t qoff = (size_t)b * T * C3 + (size_t)h * hs;
    const float *q = x->qkv + qoff, *k = q + C, *v = q + 2 * C;  // (T, hs) stride 3C
    float *dq = x->dqkv + qoff, *dk = dq + C, *dv = dq + 2 * C;  // (T, hs) stride 3C
    const float *att = x->catt + task * Tz * Tz;                 // (T, T)
    const float *d = x->dout + (size_t)b * T * C + (size_t)h * hs; // (T, hs) stride C
    float *datt = x->scratch + task * Tz * Tz;                   // (T, T), lower triangle
    att_b vt = att_operand(packs ? pk[0] : NULL, v, 1, C3, hs, T); /* B (hs, T) = v^T */
    att_b kb = att_operand(packs ? pk[1] : NULL, k, C3, 1, T, hs); /* B (T, hs) = k */
    att_b qb = att_operand(packs ? pk[2] : NULL, q, C3, 1, T, hs); /* B (T, hs) = q */
    att_b db = att_operand(packs ? pk[3] : NULL, d, Cz, 1, T, hs); /* B (T, hs) = dout */
    for (int i0 = 0; i0 < T; i0 += ATT_RB) {
      int rb = T - i0 < ATT_RB ? T - i0 : ATT_RB, n = i0 + rb;
      /* datt rows [i0, n), columns [0, n) = dout @ v^T (to the end of n's panel: the GEMMs
       * below read no column past n of these rows) */
      att_mm(datt + i0 * Tz, Tz, d + i0 * Cz, Cz, 1, &vt, 0, rb, att_cols(n, T), hs, 0);
      /* softmax rows: dpre = att * (datt - sum(att * datt)) * scale; zero to the block's end,
       * where the GEMMs below read */
      for (int t = i0; t < n; t++) {
        float *da = datt + t * Tz;
        gptk_softmax_bwd(da, att + t * Tz, t + 1, scale);
        for (int j = t + 1; j < n; j++) da[j] = 0.0f;
      }
    }
    for (int i0 = 0; i0 < T; i0 += ATT_RB) {
      int rb = T - i0 < ATT_RB ? T - i0 : ATT_RB, n = i0 + rb;
      /* dq rows [i0, n) = dpre (rb, n) @ k (n, hs) */
      att_mm(dq + i0 * C3, C3, datt + i0 * Tz, Tz, 1, &kb, 0, rb, hs, n, acc);
      /* dk rows [i0, n) = dpre^T @ q and dv rows = att^T @ dout, over rows t >= i0 only */
      att_mm(dk + i0 * C3, C3, datt + i0 * Tz + i0, 1, Tz, &qb, i0, rb, hs, T - i0, acc);
      att_mm(dv + i0 * C3, C3, att + i0 * Tz + i0, 1, Tz, &db, i0, rb, hs, T - i0, acc);
    }
  }
}

/* gpt_attention_backward adding into dqkv (acc 1) or overwriting it (0). */
static void attention_backward(qv_pool *pool, float *dqkv, float *scratch, const float *dout, const float *qkv,
                               const float *att, int B, int T, int C, int H, int acc) {
  att_ctx x = {.dqkv = dqkv, .scratch = scratch, .dout = dout, .qkv = qkv, .catt = att, .B = B, .T = T, .C = C,
               .H = H, .acc = acc};
  if (gptk_gemm_available()) {
    par_range(pool, (size_t)B * H, (size_t)T * T * (C / H) * 8, att_bwd_tiled, &x);
    return;
  }
  if (!acc) memset(dqkv, 0, (size_t)B * T * 3 * C * sizeof(float));
  par_range(pool, (size_t)B * H, (size_t)T * T * (C / H) * 8, att_bwd, &x);
}

void gpt_attention_backward(qv_pool *pool, float *dqkv, float *scratch, const float *dout, const float *qkv,
                            const float *att, int B, int T, int C, int H) {
  attention_backward(pool, dqkv, scratch, dout, qkv, att, B, T, C, H, 1);
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

/* tanh as a rational function (the minimax fit Eigen uses for float: odd degree 13 over even
 * degree 6, clamped where tanh is 1 in float): no libm call, where glibc's tanhf was 17%
 * of a training step's profile. Within 4e-7 of tanh everywhere (measured on a 1e-4 grid
 * over [-20, 20] against double tanh). */
static inline float fast_tanh(float x) {
  const float lim = 7.90531110763549805f;
  x = x > lim ? lim : x < -lim ? -lim : x;
  float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}

typedef struct gelu_ctx {
  float *out;
  const float *inp, *dout;
  int acc; /* backward: 1 adds into out, 0 overwrites it */
} gelu_ctx;

static inline float gelu1(float v) {
  return 0.5f * v * (1.0f + fast_tanh(GELU_SCALE * (v + 0.044715f * v * v * v)));
}

#if defined(__x86_64__)
/* AVX2 versions of gelu1 / gelu_grad1, 8 lanes, the same rational tanh; picked at run time
 * (the build targets baseline x86-64, where GCC leaves these loops scalar). */
AVX2 static inline __m256 tanh8(__m256 x) {
  const __m256 lim = _mm256_set1_ps(7.90531110763549805f);
  x = _mm256_max_ps(_mm256_min_ps(x, lim), _mm256_sub_ps(_mm256_setzero_ps(), lim));
  __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(-2.76076847742355e-16f);
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.00018790482477e-13f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-8.60467152213735e-11f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(5.12229709037114e-08f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(1.48572235717979e-05f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(6.37261928875436e-04f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(4.89352455891786e-03f));
  __m256 q = _mm256_set1_ps(1.19825839466702e-06f);
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(1.18534705686654e-04f));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(2.26843463243900e-03f));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(4.89352518554385e-03f));
  return _mm256_div_ps(_mm256_mul_ps(x, p), q);
}

/* u = sqrt(2/pi) (v + 0.044715 v^3) */
AVX2 static inline __m256 gelu_u8(__m256 v) {
  __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
  return _mm256_mul_ps(_mm256_set1_ps(GELU_SCALE), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), v3, v));
}

AVX2 static size_t gelu_fwd_avx2(float *out, const float *in, size_t lo, size_t hi) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  size_t i = lo;
  for (; i + 8 <= hi; i += 8) {
    __m256 v = _mm256_loadu_ps(in + i);
    __m256 th = tanh8(gelu_u8(v));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, th)));
  }
  return i;
}

AVX2 static size_t gelu_bwd_avx2(float *dinp, const float *in, const float *dout, size_t lo, size_t hi, int acc) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256 c3 = _mm256_set1_ps(3.0f * 0.044715f), sc = _mm256_set1_ps(GELU_SCALE);
  size_t i = lo;
  for (; i + 8 <= hi; i += 8) {
    __m256 v = _mm256_loadu_ps(in + i);
    __m256 th = tanh8(gelu_u8(v));
    __m256 sech2 = _mm256_fnmadd_ps(th, th, one);
    __m256 du = _mm256_mul_ps(sc, _mm256_fmadd_ps(c3, _mm256_mul_ps(v, v), one));
    /* 0.5 (1 + th) + 0.5 v sech2 du */
    __m256 g = _mm256_mul_ps(half, _mm256_fmadd_ps(_mm256_mul_ps(v, sech2), du, _mm256_add_ps(one, th)));
    __m256 base = acc ? _mm256_loadu_ps(dinp + i) : _mm256_setzero_ps();
    _mm256_storeu_ps(dinp + i, _mm256_fmadd_ps(g, _mm256_loadu_ps(dout + i), base));
  }
  return i;
}

static int have_avx2(void) {
  static int cached = -1;
  if (cached < 0) cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return cached;
}
#endif

static void gelu_fwd(void *c, size_t lo, size_t hi) {
  gelu_ctx *x = c;
  size_t i = lo;
#if defined(__x86_64__)
  if (have_avx2()) i = gelu_fwd_avx2(x->out, x->inp, lo, hi);
#endif
  for (; i < hi; i++) x->out[i] = gelu1(x->inp[i]);
}

void gpt_gelu_forward(qv_pool *pool, float *out, const float *inp, size_t n) {
  gelu_ctx x = {out, inp, NULL, 0};
  par_range(pool, n, 20, gelu_fwd, &x);
}

static inline float gelu_grad1(float v) {
  float u = GELU_SCALE * (v + 0.044715f * v * v * v);
  float th = fast_tanh(u), sech2 = 1.0f - th * th;
  return 0.5f * (1.0f + th) + 0.5f * v * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * v * v);
}

static void gelu_bwd(void *c, size_t lo, size_t hi) {
  gelu_ctx *x = c;
  size_t i = lo;
#if defined(__x86_64__)
  if (have_avx2()) i = gelu_bwd_avx2(x->out, x->inp, x->dout, lo, hi, x->acc);
#endif
  for (; i < hi; i++) x->out[i] = (x->acc ? x->out[i] : 0.0f) + gelu_grad1(x->inp[i]) * x->dout[i];
}

void gpt_gelu_backward(qv_pool *pool, float *dinp, const float *inp, const float *dout, size_t n) {
  gelu_ctx x = {dinp, inp, dout, 1};
  par_range(pool, n, 24, gelu_bwd, &x);
}

typedef struct ce_ctx {
  float *probs, *losses, *dlogits;
  const float *logits, *cprobs;
  const int32_t *targets;
  int V;
  float dloss;
  int acc; /* backward: 1 adds into dlogits, 0 overwrites it */
} ce_ctx;

static void ce_fwd(void *c, size_t lo, size_t hi) {
  ce_ctx *x = c;
  size_t V = (size_t)x->V;
  for (size_t n = lo; n < hi; n++) {
    const float *l = x->logits + n * V; // (V)
    int32_t tg = x->targets ? x->targets[n] : -1;
    float lt = tg >= 0 ? l[tg] : 0.0f; /* read before the row may be overwritten (probs == logits) */
    float lse = gptk_softmax(x->probs + n * V, l, x->V, 1.0f);
    if (x->losses) x->losses[n] = tg >= 0 ? lse - lt : 0.0f;
  }
}

void gpt_crossentropy_forward(qv_pool *pool, float *probs, float *losses, const float *logits,
                              const int32_t *targets, int N, int V) {
  ce_ctx x = {.probs = probs, .losses = losses, .logits = logits, .targets = targets, .V = V};
  par_range(pool, (size_t)N, (size_t)V * 4, ce_fwd, &x);
}

static void ce_bwd(void *c, size_t lo, size_t hi) {
  ce_ctx *x = c;
  size_t V = (size_t)x->V;
  for (size_t n = lo; n < hi; n++) {
    int32_t tg = x->targets[n];
    float *d = x->dlogits + n * V;
    if (tg < 0) {
      if (!x->acc) memset(d, 0, V * sizeof(float));
      continue;
    }
    const float *p = x->cprobs + n * V;
    if (x->acc) {
      for (size_t i = 0; i < V; i++) d[i] += p[i] * x->dloss;
    } else {
      for (size_t i = 0; i < V; i++) d[i] = p[i] * x->dloss;
    }
    d[tg] -= x->dloss;
  }
}

void gpt_crossentropy_backward(qv_pool *pool, float *dlogits, const float *probs, const int32_t *targets,
                               int N, int V, float dloss) {
  ce_ctx x = {.dlogits = dlogits, .cprobs = probs, .targets = targets, .V = V, .dloss = dloss, .acc = 1};
  par_range(pool, (size_t)N, (size_t)V * 2, ce_bwd, &x);
}

/* ---- The model ----------------------------------------------------------------------- */

static qv_pool *pool_of(const gpt_model *m) { return m->pool ? m->pool : pool_default(); }

typedef struct add_ctx {
  float *out;
  const float *a, *b;
} add_ctx;

static void add_range(void *c, size_t lo, size_t hi) {
  add_ctx *x = c;
  for (size_t i = lo; i < hi; i++) x->out[i] = x->a[i] + x->b[i];
}

void gpt_residual_forward(qv_pool *pool, float *out, const float *a, const float *b, size_t n) {
  add_ctx x = {out, a, b};
  par_range(pool, n, 2, add_range, &x);
}

qv_status gpt_forward(gpt_model *m, const int32_t *inputs, const int32_t *targets, int B, int T) {
  gpt_acts *a = m->acts;
  const gpt_config *c = &m->cfg;
  if (!a || B <= 0 || T <= 0 || (size_t)B * T > (size_t)m->B * m->T || T > m->T) return QV_EINVAL;
  size_t BT = (size_t)B * T;
  int C = c->n_embd, V = c->vocab_size, H = c->n_head, L = c->n_layer;
  for (size_t i = 0; i < BT; i++) {
    if (inputs[i] < 0 || inputs[i] >= V) return QV_EINVAL;
    if (targets && targets[i] >= V) return QV_EINVAL;
  }
  qv_pool *pool = pool_of(m);
  memcpy(a->inputs, inputs, BT * sizeof(int32_t));
  a->has_targets = targets != NULL;
  if (targets) memcpy(a->targets, targets, BT * sizeof(int32_t));
  /* per-layer arrays are strided by the actual B*T, so a smaller batch packs densely */
  size_t sC = BT * C, s3C = 3 * sC, s4C = 4 * sC, sN = BT, sTT = (size_t)B * H * T * T;
  gpt_encoder_forward(a->p.encoded, inputs, m->w.wte, m->w.wpe, B, T, C);
  const float *residual = a->p.encoded;
  for (int l = 0; l < L; l++) {
    const gpt_layer_w *w = &m->w.layers[l];
    float *ln1 = a->p.ln1 + l * sC, *qkv = a->p.qkv + l * s3C, *atty = a->p.atty + l * sC;
    float *res2 = a->p.residual2 + l * sC, *ln2 = a->p.ln2 + l * sC, *fch = a->p.fch + l * s4C;
    float *fchg = a->p.fch_gelu + l * s4C, *res3 = a->p.residual3 + l * sC;
    gpt_layernorm_forward(pool, ln1, a->p.ln1_mean + l * sN, a->p.ln1_rstd + l * sN, residual, w->ln1w, w->ln1b,
                          (int)BT, C, c->ln_eps);
    matmul_forward(pool, a->pack, a->pack_cap, qkv, ln1, w->qkvw, w->qkvb, (int)BT, C, 3 * C);
    gpt_attention_forward(pool, atty, NULL, a->p.att + l * sTT, qkv, B, T, C, H);
    /* res2 = residual + atty @ attprojw + b: the projection goes into res2, then adds */
    matmul_forward(pool, a->pack, a->pack_cap, res2, atty, w->attprojw, w->attprojb, (int)BT, C, C);
    gpt_residual_forward(pool, res2, res2, residual, sC);
    gpt_layernorm_forward(pool, ln2, a->p.ln2_mean + l * sN, a->p.ln2_rstd + l * sN, res2, w->ln2w, w->ln2b,
                          (int)BT, C, c->ln_eps);
    mm_ctx fc = {fch, ln2, w->fcw, (int)BT, C, 4 * C, 0, 0, w->fcb, a->pack, a->pack_cap, NULL};
    gelu_ctx gf = {fchg, fch, NULL, 0};
    fuse_job fj = {&fc, NULL, gelu_fwd, NULL, &gf, (size_t)4 * C, BT};
    if (!fused_rows(pool, &fj)) {
      mm_par(pool, &fc, BT, (size_t)C * 4 * C);
      gpt_gelu_forward(pool, fchg, fch, s4C);
    }
    matmul_forward(pool, a->pack, a->pack_cap, res3, fchg, w->fcprojw, w->fcprojb, (int)BT, 4 * C, C);
    gpt_residual_forward(pool, res3, res3, res2, sC);
    residual = res3;
  }
  gpt_layernorm_forward(pool, a->p.lnf, a->p.lnf_mean, a->p.lnf_rstd, residual, m->w.lnfw, m->w.lnfb, (int)BT, C,
                        c->ln_eps);
  /* logits (BT, V) = lnf (BT, C) @ wte^T */
  /* logits (BT, V) = lnf (BT, C) @ wte^T: the "dinp" shape of a matmul with w = wte */
  mm_ctx head = {a->p.logits, a->p.lnf, m->w.wte, (int)BT, V, C, 1, 0, NULL, a->pack, a->pack_cap, NULL};
  ce_ctx ce = {.probs = a->probs, .losses = a->p.losses, .logits = a->p.logits, .targets = targets, .V = V};
  fuse_job hj = {&head, NULL, ce_fwd, NULL, &ce, 1, BT};
  int fused = targets && fused_rows(pool, &hj);
  if (!fused) mm_par(pool, &head, BT, (size_t)V * C);
  if (targets) {
    if (!fused) gpt_crossentropy_forward(pool, a->probs, a->p.losses, a->p.logits, targets, (int)BT, V);
    double sum = 0;
    size_t nvalid = 0;
    for (size_t i = 0; i < BT; i++)
      if (targets[i] >= 0) sum += a->p.losses[i], nvalid++;
    a->nvalid = nvalid;
    m->loss = nvalid ? (float)(sum / (double)nvalid) : 0.0f;
  } else {
    m->loss = -1.0f;
  }
  a->lastB = B;
  a->lastT = T;
  return QV_OK;
}

const float *gpt_logits(const gpt_model *m) { return m->acts ? m->acts->p.logits : NULL; }

void gpt_zero_grad(gpt_model *m) {
  if (m->grads) memset(m->grads, 0, m->nparams * sizeof(float));
}

void gpt_backward(gpt_model *m, float loss_scale) {
  gpt_acts *a = m->acts;
  if (!a || !a->has_targets || !a->nvalid) return;
  const gpt_config *c = &m->cfg;
  int B = a->lastB, T = a->lastT, C = c->n_embd, V = c->vocab_size, H = c->n_head, L = c->n_layer;
  size_t BT = (size_t)B * T, sC = BT * C, s3C = 3 * sC, s4C = 4 * sC, sN = BT, sTT = (size_t)B * H * T * T;
  qv_pool *pool = pool_of(m);
  /* only the residual stream's gradient accumulates (+=); every other gradient of an
   * activation is overwritten by the pass that produces it */
  memset(a->p.dres, 0, sC * sizeof(float));
  ce_ctx ce = {.dlogits = a->p.dlogits, .cprobs = a->probs, .targets = a->targets, .V = V,
               .dloss = loss_scale / (float)a->nvalid, .acc = 0};
  /* logits = lnf @ wte^T: dlnf (BT, C) += dlogits (BT, V) @ wte (V, C);
   * dwte (V, C) += dlogits^T (V, BT) @ lnf (BT, C) */
  mm_ctx h1 = {a->p.dlnf, a->p.dlogits, m->w.wte, (int)BT, V, C, 0, 0, NULL, a->pack, a->pack_cap, NULL};
  fuse_job hj = {&h1, ce_bwd, NULL, &ce, NULL, 1, BT};
  if (!fused_rows(pool, &hj)) {
    par_range(pool, BT, (size_t)V * 2, ce_bwd, &ce);
    mm_par(pool, &h1, BT, (size_t)V * C);
  }
  mm_ctx h2 = {m->g.wte, a->p.dlogits, a->p.lnf, (int)BT, V, C, 3, 1, NULL, a->pack, a->pack_cap, NULL};
  mm_par(pool, &h2, (size_t)V, (size_t)BT * C);
  const float *last = a->p.residual3 + (size_t)(L - 1) * sC;
  /* The residual stream's gradient lives in one buffer, updated in place from the top:
   * x_out = x_in + f(ln(x_in)) gives dx_in = dx_out + (f's path), so each block's
   * LayerNorm backward adds its path into the buffer after f's backward has read dx_out. */
  gpt_layernorm_backward(pool, a->p.dres, m->g.lnfw, m->g.lnfb, a->p.dlnf, last, m->w.lnfw, a->p.lnf_mean, a->p.lnf_rstd,
                         (int)BT, C);
  for (int l = L - 1; l >= 0; l--) {
    const gpt_layer_w *w = &m->w.layers[l];
    gpt_layer_w *g = &m->g.layers[l];
    const float *residual = l ? a->p.residual3 + (size_t)(l - 1) * sC : a->p.encoded;
    const float *ln1 = a->p.ln1 + l * sC, *qkv = a->p.qkv + l * s3C, *atty = a->p.atty + l * sC;
    const float *res2 = a->p.residual2 + l * sC, *ln2 = a->p.ln2 + l * sC, *fch = a->p.fch + l * s4C;
    const float *fchg = a->p.fch_gelu + l * s4C;
    /* res3 = res2 + fcproj(gelu(fc(ln2(res2)))): dres holds dres3, then dres2 */
    gelu_ctx gb = {a->p.dfch, fch, a->p.dfch_gelu, 0};
    matmul_backward_then(pool, a->pack, a->pack_cap, a->p.dfch_gelu, g->fcprojw, g->fcprojb, a->p.dres, fchg,
                         w->fcprojw, (int)BT, 4 * C, C, 0, gelu_bwd, &gb);
    matmul_backward(pool, a->pack, a->pack_cap, a->p.dln, g->fcw, g->fcb, a->p.dfch, ln2, w->fcw, (int)BT, C, 4 * C, 0);
    gpt_layernorm_backward(pool, a->p.dres, g->ln2w, g->ln2b, a->p.dln, res2, w->ln2w, a->p.ln2_mean + l * sN,
                           a->p.ln2_rstd + l * sN, (int)BT, C);
    /* res2 = residual + attproj(attention(qkv(ln1(residual)))): dres2, then dresidual */
    matmul_backward(pool, a->pack, a->pack_cap, a->p.datty, g->attprojw, g->attprojb, a->p.dres, atty, w->attprojw, (int)BT, C, C, 0);
    attention_backward(pool, a->p.dqkv, a->p.dscratch, a->p.datty, qkv, a->p.att + l * sTT, B, T, C, H, 0);
    matmul_backward(pool, a->pack, a->pack_cap, a->p.dln, g->qkvw, g->qkvb, a->p.dqkv, ln1, w->qkvw, (int)BT, C, 3 * C, 0);
    gpt_layernorm_backward(pool, a->p.dres, g->ln1w, g->ln1b, a->p.dln, residual, w->ln1w, a->p.ln1_mean + l * sN,
                           a->p.ln1_rstd + l * sN, (int)BT, C);
  }
  gpt_encoder_backward(m->g.wte, m->g.wpe, a->p.dres, a->inputs, B, T, C);
}

double gpt_clip_grad(gpt_model *m, float clip) {
  if (!m->grads) return 0;
  double norm = sqrt(gptk_sumsq(m->grads, m->nparams));
  if (clip > 0 && norm > clip) gptk_scale(m->grads, m->nparams, (float)(clip / norm));
  return norm;
}

typedef struct adam_ctx {
  gpt_model *m;
  gptk_adam k;
  float weight_decay; /* for tensors with decay set */
} adam_ctx;

/* Floats [lo, hi) of the parameter buffer, tensor by tensor for each one's weight decay. */
static void adam_range(void *c, size_t lo, size_t hi) {
  adam_ctx *x = c;
  size_t nt = gpt_tensor_count(&x->m->cfg), off = 0;
  for (size_t i = 0; i < nt && off < hi; i++) {
    gpt_tensor_info ti;
    shape_of(&x->m->cfg, i, &ti);
    size_t a = off > lo ? off : lo, b = off + ti.numel < hi ? off + ti.numel : hi;
    off += ti.numel;
    if (a >= b) continue;
    gptk_adam k = x->k;
    k.decay = ti.decay ? x->weight_decay : 0.0f;
    gptk_adamw(x->m->params + a, x->m->grads + a, x->m->m + a, x->m->v + a, b - a, &k);
  }
}

void gpt_adamw_step(gpt_model *m, const gpt_adamw *o, long t) {
  if (!m->grads || t < 1) return;
  adam_ctx x = {m,
                {o->lr, o->beta1, o->beta2, o->eps, 0, (float)(1.0 - pow(o->beta1, (double)t)),
                 (float)(1.0 - pow(o->beta2, (double)t))},
                o->weight_decay};
  /* one job over the whole buffer instead of one a tensor: elementwise, so any split gives
   * the same bits (invariant 2) */
  par_range(pool_of(m), m->nparams, 16, adam_range, &x);
}

float gpt_lr_at(long step, long warmup, long steps, float lr, float min_lr) {
  if (step < warmup) return lr * (float)(step + 1) / (float)warmup;
  if (step >= steps) return min_lr;
  double ratio = (double)(step - warmup) / (double)(steps - warmup > 0 ? steps - warmup : 1);
  double coeff = 0.5 * (1.0 + cos(GPT_PI * ratio));
  return (float)(min_lr + coeff * (lr - min_lr));
}
