/* Training through a backend's GPT ops (gpt_dev.h), and the ops' CPU twin. */
#include "gpt/gpt_dev.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/mem.h"
#include "base/pool.h"
#include "gpt/kernels.h"

/* ---- The CPU twin: gpt.c's kernels; ctx is the pool (NULL: pool_default()) ----------- */

static qv_pool *cpu_pool(void *ctx) { return ctx ? (qv_pool *)ctx : pool_default(); }

static void *cpu_alloc(void *ctx, size_t bytes) {
  (void)ctx;
  void *p = qv_aligned_alloc(bytes ? bytes : 1);
  if (p) memset(p, 0, bytes);
  return p;
}
static void cpu_release(void *ctx, void *p) {
  (void)ctx;
  qv_aligned_free(p);
}
static void cpu_zero(void *ctx, void *p, size_t bytes) {
  (void)ctx;
  memset(p, 0, bytes);
}
static void cpu_copy(void *ctx, void *dst, const void *src, size_t bytes) {
  (void)ctx;
  memcpy(dst, src, bytes);
}
static void cpu_encoder_fwd(void *ctx, float *out, const int32_t *inp, const float *wte, const float *wpe, int B,
                            int T, int C) {
  (void)ctx;
  gpt_encoder_forward(out, inp, wte, wpe, B, T, C);
}
static void cpu_encoder_bwd(void *ctx, float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B,
                            int T, int C) {
  (void)ctx;
  gpt_encoder_backward(dwte, dwpe, dout, inp, B, T, C);
}
static void cpu_layernorm_fwd(void *ctx, float *out, float *mean, float *rstd, const float *inp, const float *w,
                              const float *b, int N, int C, float eps) {
  gpt_layernorm_forward(cpu_pool(ctx), out, mean, rstd, inp, w, b, N, C, eps);
}
static void cpu_layernorm_bwd(void *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                              const float *w, const float *mean, const float *rstd, int N, int C) {
  gpt_layernorm_backward(cpu_pool(ctx), dinp, dw, db, dout, inp, w, mean, rstd, N, C);
}
static void cpu_matmul_fwd(void *ctx, float *out, const float *inp, const float *w, const float *b, int N, int IC,
                           int OC) {
  gpt_matmul_forward(cpu_pool(ctx), out, inp, w, b, N, IC, OC);
}
static void cpu_matmul_bwd(void *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, int N, int IC, int OC) {
  gpt_matmul_backward(cpu_pool(ctx), dinp, dw, db, dout, inp, w, N, IC, OC);
}
static void cpu_head_fwd(void *ctx, float *logits, const float *x, const float *wte, int N, int V, int C) {
  gpt_head_forward(cpu_pool(ctx), logits, x, wte, N, V, C);
}
static void cpu_head_bwd(void *ctx, float *dx, float *dwte, const float *dlogits, const float *x, const float *wte,
                         int N, int V, int C) {
  gpt_head_backward(cpu_pool(ctx), dx, dwte, dlogits, x, wte, N, V, C);
}
static void cpu_attention_fwd(void *ctx, float *out, float *att, const float *qkv, int B, int T, int C, int H) {
  gpt_attention_forward(cpu_pool(ctx), out, NULL, att, qkv, B, T, C, H);
}
static void cpu_attention_bwd(void *ctx, float *dqkv, float *scratch, const float *dout, const float *qkv,
                              const float *att, int B, int T, int C, int H) {
  gpt_attention_backward(cpu_pool(ctx), dqkv, scratch, dout, qkv, att, B, T, C, H);
}
static void cpu_attention_cached(void *ctx, float *out, float *kcache, float *vcache, const float *qkv, int pos,
                                 int n, int C, int H) {
  (void)ctx;
  int hs = C / H;
  float scale = 1.0f / sqrtf((float)hs);
  for (int r = 0; r < n; r++) {
    const float *row = qkv + (size_t)r * 3 * C;
    memcpy(kcache + (size_t)(pos + r) * C, row + C, (size_t)C * sizeof(float));
    memcpy(vcache + (size_t)(pos + r) * C, row + 2 * C, (size_t)C * sizeof(float));
  }
  for (int r = 0; r < n; r++)
    for (int h = 0; h < H; h++) {
      /* online softmax: one pass over the keys, no scratch (ops never allocate) */
      const float *q = qkv + (size_t)r * 3 * C + (size_t)h * hs;
      float *o = out + (size_t)r * C + (size_t)h * hs;
      float mx = -INFINITY, sum = 0;
      memset(o, 0, (size_t)hs * sizeof(float));
      for (int t = 0; t <= pos + r; t++) {
        const float *k = kcache + (size_t)t * C + (size_t)h * hs, *v = vcache + (size_t)t * C + (size_t)h * hs;
        float d = 0;
        for (int i = 0; i < hs; i++) d += q[i] * k[i];
        d *= scale;
        if (d > mx) { /* rescale what was summed under the old maximum */
          float f = expf(mx - d);
          sum *= f;
          for (int i = 0; i < hs; i++) o[i] *= f;
          mx = d;
        }
        float p = expf(d - mx);
        sum += p;
        for (int i = 0; i < hs; i++) o[i] += p * v[i];
      }
      for (int i = 0; i < hs; i++) o[i] /= sum;
    }
}
static void cpu_gelu_fwd(void *ctx, float *out, const float *inp, size_t n) {
  gpt_gelu_forward(cpu_pool(ctx), out, inp, n);
}
static void cpu_gelu_bwd(void *ctx, float *dinp, const float *inp, const float *dout, size_t n) {
  gpt_gelu_backward(cpu_pool(ctx), dinp, inp, dout, n);
}
static void cpu_add(void *ctx, float *out, const float *a, const float *b, size_t n) {
  gpt_residual_forward(cpu_pool(ctx), out, a, b, n);
}
static void cpu_ce_fwd(void *ctx, float *probs, float *losses, const float *logits, const int32_t *targets, int N,
                       int V) {
  gpt_crossentropy_forward(cpu_pool(ctx), probs, losses, logits, targets, N, V);
}
static void cpu_ce_bwd(void *ctx, float *dlogits, const float *probs, const int32_t *targets, int N, int V,
                       float dloss) {
  gpt_crossentropy_backward(cpu_pool(ctx), dlogits, probs, targets, N, V, dloss);
}
static double cpu_sumsq(void *ctx, const float *x, size_t n) {
  (void)ctx;
  return gptk_sumsq(x, n);
}
static void cpu_scale(void *ctx, float *x, size_t n, float s) {
  (void)ctx;
  gptk_scale(x, n, s);
}
static void cpu_adamw(void *ctx, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                      float b2, float eps, float decay, float c1, float c2) {
  (void)ctx;
  gptk_adam o = {lr, b1, b2, eps, decay, c1, c2};
  gptk_adamw(p, g, m, v, n, &o);
}
static qv_status cpu_status(void *ctx, char *msg, size_t msg_len) {
  (void)ctx;
  if (msg && msg_len) msg[0] = 0;
  return QV_OK;
}

static const qv_gpt_ops cpu_ops = {
    .alloc = cpu_alloc,
    .release = cpu_release,
    .zero = cpu_zero,
    .copy_in = cpu_copy,
    .copy_out = cpu_copy,
    .encoder_fwd = cpu_encoder_fwd,
    .encoder_bwd = cpu_encoder_bwd,
    .layernorm_fwd = cpu_layernorm_fwd,
    .layernorm_bwd = cpu_layernorm_bwd,
    .matmul_fwd = cpu_matmul_fwd,
    .matmul_bwd = cpu_matmul_bwd,
    .head_fwd = cpu_head_fwd,
    .head_bwd = cpu_head_bwd,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .attention_cached = cpu_attention_cached,
    .gelu_fwd = cpu_gelu_fwd,
    .gelu_bwd = cpu_gelu_bwd,
    .add = cpu_add,
    .crossentropy_fwd = cpu_ce_fwd,
    .crossentropy_bwd = cpu_ce_bwd,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .adamw = cpu_adamw,
    .status = cpu_status,
};

const qv_gpt_ops *gpt_ops_cpu(void) { return &cpu_ops; }

/* ---- The driver ---------------------------------------------------------------------- */

/* A device's first failure, kept (invariant 1). */
typedef struct dev_latch {
  int failed;
  qv_status st;
  char msg[256];
} dev_latch;


struct gpt_dev {
  const qv_gpt_ops *o;
  void *ctx;
  gpt_config cfg;
  size_t nparams;
  int B, T;            /* created sizes */
  float *params, *grads, *m, *v;
  gpt_weights w, g;    /* pointers into params / grads (device addresses) */
  float *block;        /* activations */
  float *gblock;       /* their gradients */
  int32_t *inputs, *targets;
  gpt_act_ptrs a;     /* gpt.c's layout, in the backend's memory */
  float *losses_host;  /* (B*T) */
  float *stage;        /* (3 nparams) host: gpt_dev_download's all-or-nothing copy */
  int lastB, lastT, has_targets;
  size_t nvalid;
  dev_latch fail;      /* invariant 1 */
};

/* Asks the backend after a unit of work; latches the first failure (invariant 1). */
static int latch_check(dev_latch *l, const qv_gpt_ops *o, void *ctx) {
  if (l->failed) return 1;
  char msg[sizeof l->msg];
  msg[0] = 0;
  qv_status st = o->status(ctx, msg, sizeof msg);
  if (st == QV_OK) return 0;
  l->failed = 1;
  l->st = st;
  snprintf(l->msg, sizeof l->msg, "%s", msg[0] ? msg : qv_strerror(st));
  return 1;
}

static int dev_failed(gpt_dev *d) { return latch_check(&d->fail, d->o, d->ctx); }

void gpt_dev_free(gpt_dev *d) {
  if (!d) return;
  void *bufs[] = {d->params, d->grads, d->m, d->v, d->block, d->gblock, d->inputs, d->targets};
  for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
    if (bufs[i]) d->o->release(d->ctx, bufs[i]);
  free(d->w.layers);
  free(d->g.layers);
  free(d->losses_host);
  qv_aligned_free(d->stage);
  free(d);
}

qv_status gpt_dev_create(gpt_dev **out, const qv_gpt_ops *ops, void *ctx, const gpt_model *m, int B, int T,
                         qv_error *err) {
  *out = NULL;
  const gpt_config *c = &m->cfg;
  if (B <= 0 || T <= 0 || T > c->n_ctx)
    return qv_fail(err, QV_EINVAL, "batch %d x %d does not fit the model (context %d)", B, T, c->n_ctx);
  gpt_dev *d = calloc(1, sizeof *d);
  if (!d) return qv_fail(err, QV_ENOMEM, "out of memory");
  d->o = ops;
  d->ctx = ctx;
  d->cfg = *c;
  d->nparams = m->nparams;
  d->B = B;
  d->T = T;
  size_t L = (size_t)c->n_layer, BT = (size_t)B * (size_t)T;
  size_t afloats, gfloats;
  gpt_acts_layout(c, B, T, NULL, NULL, NULL, &afloats, &gfloats);
  qv_status st = QV_OK;
  d->w.layers = calloc(L, sizeof(gpt_layer_w));
  d->g.layers = calloc(L, sizeof(gpt_layer_w));
  d->losses_host = malloc(BT * sizeof(float));
  d->stage = qv_aligned_alloc(3 * m->nparams * sizeof(float));
  if (!d->w.layers || !d->g.layers || !d->losses_host || !d->stage) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  size_t pbytes = m->nparams * sizeof(float);
  d->params = ops->alloc(ctx, pbytes);
  d->grads = ops->alloc(ctx, pbytes);
  d->m = ops->alloc(ctx, pbytes);
  d->v = ops->alloc(ctx, pbytes);
  d->block = ops->alloc(ctx, afloats * sizeof(float));
  d->gblock = ops->alloc(ctx, gfloats * sizeof(float));
  d->inputs = ops->alloc(ctx, BT * sizeof(int32_t));
  d->targets = ops->alloc(ctx, BT * sizeof(int32_t));
  if (!d->params || !d->grads || !d->m || !d->v || !d->block || !d->gblock || !d->inputs || !d->targets) {
    size_t total = 4 * pbytes + (afloats + gfloats) * sizeof(float);
    st = qv_fail(err, QV_ENOMEM, "the %s backend cannot hold the training state (%.1f MiB)", "device",
                 (double)total / 1048576.0);
    goto fail;
  }
  gpt_point_weights(c, d->params, &d->w);
  gpt_point_weights(c, d->grads, &d->g);
  /* device addresses: the layout only adds offsets to them */
  gpt_acts_layout(c, B, T, d->block, d->gblock, &d->a, NULL, NULL);
  ops->copy_in(ctx, d->params, m->params, pbytes);
  if (m->m && m->v) {
    ops->copy_in(ctx, d->m, m->m, pbytes);
    ops->copy_in(ctx, d->v, m->v, pbytes);
  }
  if (dev_failed(d)) {
    st = qv_fail(err, d->fail.st, "copying the model to the device: %s", d->fail.msg);
    goto fail;
  }
  *out = d;
  return QV_OK;
fail:
  gpt_dev_free(d);
  return st;
}

static qv_status dev_failure(gpt_dev *d, qv_error *err, const char *what) {
  return qv_fail(err, d->fail.st ? d->fail.st : QV_EDEVICE, "%s: %s", what, d->fail.msg);
}

qv_status gpt_dev_forward(gpt_dev *d, const int32_t *inputs, const int32_t *targets, int B, int T, float *loss,
                          qv_error *err) {
  const gpt_config *c = &d->cfg;
  const qv_gpt_ops *o = d->o;
  void *x = d->ctx;
  if (d->fail.failed) return dev_failure(d, err, "the device failed earlier");
  if (B <= 0 || T <= 0 || (size_t)B * T > (size_t)d->B * d->T || T > d->T)
    return qv_fail(err, QV_EINVAL, "batch %d x %d is larger than the %d x %d the state was made for", B, T, d->B,
                   d->T);
  size_t BT = (size_t)B * T;
  int C = c->n_embd, V = c->vocab_size, H = c->n_head, L = c->n_layer;
  for (size_t i = 0; i < BT; i++) {
    if (inputs[i] < 0 || inputs[i] >= V) return qv_fail(err, QV_EINVAL, "token id %d is out of range", inputs[i]);
    if (targets && targets[i] >= V) return qv_fail(err, QV_EINVAL, "target id %d is out of range", targets[i]);
  }
  gpt_act_ptrs *a = &d->a;
  size_t cBT = (size_t)d->B * d->T; /* per-layer stride (the created size) */
  size_t sC = cBT * C, s3C = 3 * sC, s4C = 4 * sC, sN = cBT, sTT = (size_t)d->B * H * d->T * d->T;
  o->copy_in(x, d->inputs, inputs, BT * sizeof(int32_t));
  if (targets) o->copy_in(x, d->targets, targets, BT * sizeof(int32_t));
  o->encoder_fwd(x, a->encoded, d->inputs, d->w.wte, d->w.wpe, B, T, C);
  const float *residual = a->encoded;
  for (int l = 0; l < L; l++) {
    const gpt_layer_w *w = &d->w.layers[l];
    float *ln1 = a->ln1 + l * sC, *qkv = a->qkv + l * s3C, *atty = a->atty + l * sC, *res2 = a->residual2 + l * sC;
    float *ln2 = a->ln2 + l * sC, *fch = a->fch + l * s4C, *fchg = a->fch_gelu + l * s4C, *res3 = a->residual3 + l * sC;
    o->layernorm_fwd(x, ln1, a->ln1_mean + l * sN, a->ln1_rstd + l * sN, residual, w->ln1w, w->ln1b, (int)BT, C,
                     c->ln_eps);
    o->matmul_fwd(x, qkv, ln1, w->qkvw, w->qkvb, (int)BT, C, 3 * C);
    o->attention_fwd(x, atty, a->att + l * sTT, qkv, B, T, C, H);
    o->matmul_fwd(x, res2, atty, w->attprojw, w->attprojb, (int)BT, C, C);
    o->add(x, res2, res2, residual, BT * C);
    o->layernorm_fwd(x, ln2, a->ln2_mean + l * sN, a->ln2_rstd + l * sN, res2, w->ln2w, w->ln2b, (int)BT, C,
                     c->ln_eps);
    o->matmul_fwd(x, fch, ln2, w->fcw, w->fcb, (int)BT, C, 4 * C);
    o->gelu_fwd(x, fchg, fch, BT * 4 * C);
    o->matmul_fwd(x, res3, fchg, w->fcprojw, w->fcprojb, (int)BT, 4 * C, C);
    o->add(x, res3, res3, res2, BT * C);
    residual = res3;
  }
  o->layernorm_fwd(x, a->lnf, a->lnf_mean, a->lnf_rstd, residual, d->w.lnfw, d->w.lnfb, (int)BT, C, c->ln_eps);
  o->head_fwd(x, a->logits, a->lnf, d->w.wte, (int)BT, V, C);
  d->has_targets = targets != NULL;
  d->nvalid = 0;
  d->lastB = B;
  d->lastT = T;
  *loss = -1.0f;
  if (targets) {
    o->crossentropy_fwd(x, a->logits, a->losses, a->logits, d->targets, (int)BT, V);
    o->copy_out(x, d->losses_host, a->losses, BT * sizeof(float));
  }
  if (dev_failed(d)) return dev_failure(d, err, "forward pass");
  if (targets) {
    /* gpt_forward's sum: double, row order, valid targets only */
    double sum = 0;
    for (size_t i = 0; i < BT; i++)
      if (targets[i] >= 0) sum += d->losses_host[i], d->nvalid++;
    *loss = d->nvalid ? (float)(sum / (double)d->nvalid) : 0.0f;
  }
  return QV_OK;
}

qv_status gpt_dev_logits(gpt_dev *d, float *host, qv_error *err) {
  if (d->fail.failed) return dev_failure(d, err, "the device failed earlier");
  size_t n = (size_t)d->lastB * d->lastT * d->cfg.vocab_size;
  d->o->copy_out(d->ctx, host, d->a.logits, n * sizeof(float));
  return dev_failed(d) ? dev_failure(d, err, "reading the logits") : QV_OK;
}

void gpt_dev_zero_grad(gpt_dev *d) {
  if (!d->fail.failed) d->o->zero(d->ctx, d->grads, d->nparams * sizeof(float));
}

void gpt_dev_backward(gpt_dev *d, float loss_scale) {
  if (d->fail.failed || !d->has_targets || !d->nvalid) return;
  const gpt_config *c = &d->cfg;
  const qv_gpt_ops *o = d->o;
  void *x = d->ctx;
  gpt_act_ptrs *a = &d->a;
  int B = d->lastB, T = d->lastT, C = c->n_embd, V = c->vocab_size, H = c->n_head, L = c->n_layer;
  size_t BT = (size_t)B * T, cBT = (size_t)d->B * d->T;
  size_t sC = cBT * C, s3C = 3 * sC, s4C = 4 * sC, sN = cBT, sTT = (size_t)d->B * H * d->T * d->T;
  size_t fC = BT * C * sizeof(float);
  o->zero(x, a->dres, fC);
  o->zero(x, a->dlnf, fC);
  o->zero(x, a->dlogits, BT * V * sizeof(float));
  o->crossentropy_bwd(x, a->dlogits, a->logits, d->targets, (int)BT, V, loss_scale / (float)d->nvalid);
  o->head_bwd(x, a->dlnf, d->g.wte, a->dlogits, a->lnf, d->w.wte, (int)BT, V, C);
  const float *last = L ? a->residual3 + (size_t)(L - 1) * sC : a->encoded;
  /* the residual stream's gradient is updated in place from the top, as in gpt_backward */
  o->layernorm_bwd(x, a->dres, d->g.lnfw, d->g.lnfb, a->dlnf, last, d->w.lnfw, a->lnf_mean, a->lnf_rstd, (int)BT,
                   C);
  for (int l = L - 1; l >= 0; l--) {
    const gpt_layer_w *w = &d->w.layers[l];
    const gpt_layer_w *g = &d->g.layers[l];
    const float *residual = l ? a->residual3 + (size_t)(l - 1) * sC : a->encoded;
    const float *ln1 = a->ln1 + l * sC, *qkv = a->qkv + l * s3C, *atty = a->atty + l * sC, *res2 = a->residual2 + l * sC;
    const float *ln2 = a->ln2 + l * sC, *fch = a->fch + l * s4C, *fchg = a->fch_gelu + l * s4C;
    o->zero(x, a->dfch_gelu, 4 * fC);
    o->matmul_bwd(x, a->dfch_gelu, g->fcprojw, g->fcprojb, a->dres, fchg, w->fcprojw, (int)BT, 4 * C, C);
    o->zero(x, a->dfch, 4 * fC);
    o->gelu_bwd(x, a->dfch, fch, a->dfch_gelu, BT * 4 * C);
    o->zero(x, a->dln, fC);
    o->matmul_bwd(x, a->dln, g->fcw, g->fcb, a->dfch, ln2, w->fcw, (int)BT, C, 4 * C);
    o->layernorm_bwd(x, a->dres, g->ln2w, g->ln2b, a->dln, res2, w->ln2w, a->ln2_mean + l * sN,
                     a->ln2_rstd + l * sN, (int)BT, C);
    o->zero(x, a->datty, fC);
    o->matmul_bwd(x, a->datty, g->attprojw, g->attprojb, a->dres, atty, w->attprojw, (int)BT, C, C);
    o->zero(x, a->dqkv, 3 * fC);
    o->attention_bwd(x, a->dqkv, a->dscratch, a->datty, qkv, a->att + l * sTT, B, T, C, H);
    o->zero(x, a->dln, fC);
    o->matmul_bwd(x, a->dln, g->qkvw, g->qkvb, a->dqkv, ln1, w->qkvw, (int)BT, C, 3 * C);
    o->layernorm_bwd(x, a->dres, g->ln1w, g->ln1b, a->dln, residual, w->ln1w, a->ln1_mean + l * sN,
                     a->ln1_rstd + l * sN, (int)BT, C);
  }
  o->encoder_bwd(x, d->g.wte, d->g.wpe, a->dres, d->inputs, B, T, C);
  dev_failed(d);
}

double gpt_dev_clip_grad(gpt_dev *d, float clip) {
  if (d->fail.failed) return NAN;
  double norm = sqrt(d->o->sumsq(d->ctx, d->grads, d->nparams));
  if (clip > 0 && norm > clip) d->o->scale(d->ctx, d->grads, d->nparams, (float)(clip / norm));
  return dev_failed(d) ? NAN : norm;
}

void gpt_dev_adamw_step(gpt_dev *d, const gpt_adamw *o, long t) {
  if (d->fail.failed || t < 1) return;
  float c1 = (float)(1.0 - pow(o->beta1, (double)t)), c2 = (float)(1.0 - pow(o->beta2, (double)t));
  size_t nt = gpt_tensor_count(&d->cfg);
  for (size_t i = 0; i < nt; i++) {
    gpt_tensor_info ti;
    gpt_tensor_at(&d->cfg, i, &ti);
    d->o->adamw(d->ctx, d->params + ti.offset, d->grads + ti.offset, d->m + ti.offset, d->v + ti.offset, ti.numel,
                o->lr, o->beta1, o->beta2, o->eps, ti.decay ? o->weight_decay : 0.0f, c1, c2);
  }
  dev_failed(d);
}

qv_status gpt_dev_download(gpt_dev *d, gpt_model *m, qv_error *err) {
  if (d->fail.failed) return dev_failure(d, err, "the device failed earlier");
  /* all or nothing: m is the state to fall back to (invariant 1), so a copy that fails
   * half-way must not reach it */
  size_t n = d->nparams, bytes = n * sizeof(float);
  int moments = m->m && m->v;
  d->o->copy_out(d->ctx, d->stage, d->params, bytes);
  if (moments) {
    d->o->copy_out(d->ctx, d->stage + n, d->m, bytes);
    d->o->copy_out(d->ctx, d->stage + 2 * n, d->v, bytes);
  }
  if (dev_failed(d)) return dev_failure(d, err, "copying the model back");
  memcpy(m->params, d->stage, bytes);
  if (moments) {
    memcpy(m->m, d->stage + n, bytes);
    memcpy(m->v, d->stage + 2 * n, bytes);
  }
  return QV_OK;
}

qv_status gpt_dev_grads(gpt_dev *d, float *host, qv_error *err) {
  if (d->fail.failed) return dev_failure(d, err, "the device failed earlier");
  d->o->copy_out(d->ctx, host, d->grads, d->nparams * sizeof(float));
  return dev_failed(d) ? dev_failure(d, err, "reading the gradients") : QV_OK;
}

qv_status gpt_dev_status(gpt_dev *d, qv_error *err) {
  return dev_failed(d) ? qv_fail(err, d->fail.st ? d->fail.st : QV_EDEVICE, "%s", d->fail.msg) : QV_OK;
}

/* ---- Inference with a KV cache on the device (gpt_infer's device path) ---------------- */

struct gpt_dev_infer {
  const qv_gpt_ops *o;
  void *ctx;
  gpt_config cfg;
  float *params;
  gpt_weights w;
  float *block; /* kcache, vcache (L, T, C) each; x, h, att, tmp (B, C); qkv (B, 3C); fc (B, 4C);
                 * mean, rstd (B); logits (B, V) */
  float *kcache, *vcache, *x, *h, *att, *tmp, *qkv, *fc, *mean, *rstd, *logits;
  int32_t *ids;
  dev_latch fail;
};

void gpt_dev_infer_free(gpt_dev_infer *d) {
  if (!d) return;
  if (d->params) d->o->release(d->ctx, d->params);
  if (d->block) d->o->release(d->ctx, d->block);
  if (d->ids) d->o->release(d->ctx, d->ids);
  free(d->w.layers);
  free(d);
}

static int infer_failed(gpt_dev_infer *d) { return latch_check(&d->fail, d->o, d->ctx); }

qv_status gpt_dev_infer_create(gpt_dev_infer **out, const qv_gpt_ops *ops, void *ctx, const gpt_model *m,
                               int block, qv_error *err) {
  *out = NULL;
  if (!ops->attention_cached) return qv_fail(err, QV_EUNSUPPORTED, "the backend has no KV-cache attention");
  gpt_dev_infer *d = calloc(1, sizeof *d);
  if (!d) return qv_fail(err, QV_ENOMEM, "out of memory");
  d->o = ops;
  d->ctx = ctx;
  d->cfg = m->cfg;
  const gpt_config *c = &m->cfg;
  size_t L = (size_t)c->n_layer, T = (size_t)c->n_ctx, C = (size_t)c->n_embd, V = (size_t)c->vocab_size;
  size_t B = (size_t)block;
  size_t sizes[11] = {L * T * C, L * T * C, B * C, B * C, B * C, B * C, B * 3 * C, B * 4 * C, B, B, B * V};
  float **dst[11] = {&d->kcache, &d->vcache, &d->x, &d->h, &d->att, &d->tmp, &d->qkv, &d->fc, &d->mean, &d->rstd,
                     &d->logits};
  size_t total = 0;
  for (int i = 0; i < 11; i++) total += (sizes[i] + 15) & ~(size_t)15;
  d->w.layers = calloc(L, sizeof(gpt_layer_w));
  d->params = ops->alloc(ctx, m->nparams * sizeof(float));
  d->block = ops->alloc(ctx, total * sizeof(float));
  d->ids = ops->alloc(ctx, B * sizeof(int32_t));
  if (!d->w.layers || !d->params || !d->block || !d->ids) {
    gpt_dev_infer_free(d);
    return qv_fail(err, QV_ENOMEM, "the device cannot hold the model and its KV cache (%.1f MiB)",
                   (double)(m->nparams + total) * 4 / 1048576.0);
  }
  float *at = d->block;
  for (int i = 0; i < 11; i++) {
    *dst[i] = at;
    at += (sizes[i] + 15) & ~(size_t)15;
  }
  gpt_point_weights(c, d->params, &d->w);
  ops->copy_in(ctx, d->params, m->params, m->nparams * sizeof(float));
  if (infer_failed(d)) {
    qv_status st = qv_fail(err, d->fail.st, "copying the model to the device: %s", d->fail.msg);
    gpt_dev_infer_free(d);
    return st;
  }
  *out = d;
  return QV_OK;
}

qv_status gpt_dev_infer_feed(gpt_dev_infer *d, const int32_t *ids, int n, size_t pos, float *last,
                             float *all_logits, qv_error *err) {
  const gpt_config *c = &d->cfg;
  const qv_gpt_ops *o = d->o;
  void *x = d->ctx;
  const int C = c->n_embd, V = c->vocab_size, H = c->n_head;
  const size_t T = (size_t)c->n_ctx;
  if (d->fail.failed) return qv_fail(err, d->fail.st, "the device failed earlier: %s", d->fail.msg);
  o->copy_in(x, d->ids, ids, (size_t)n * sizeof(int32_t));
  o->encoder_fwd(x, d->x, d->ids, d->w.wte, d->w.wpe + pos * C, 1, n, C);
  for (int l = 0; l < c->n_layer; l++) {
    const gpt_layer_w *L = &d->w.layers[l];
    float *kc = d->kcache + (size_t)l * T * C, *vc = d->vcache + (size_t)l * T * C;
    o->layernorm_fwd(x, d->h, d->mean, d->rstd, d->x, L->ln1w, L->ln1b, n, C, c->ln_eps);
    o->matmul_fwd(x, d->qkv, d->h, L->qkvw, L->qkvb, n, C, 3 * C);
    o->attention_cached(x, d->att, kc, vc, d->qkv, (int)pos, n, C, H);
    o->matmul_fwd(x, d->tmp, d->att, L->attprojw, L->attprojb, n, C, C);
    o->add(x, d->x, d->x, d->tmp, (size_t)n * C);
    o->layernorm_fwd(x, d->h, d->mean, d->rstd, d->x, L->ln2w, L->ln2b, n, C, c->ln_eps);
    o->matmul_fwd(x, d->fc, d->h, L->fcw, L->fcb, n, C, 4 * C);
    o->gelu_fwd(x, d->fc, d->fc, (size_t)n * 4 * C);
    o->matmul_fwd(x, d->tmp, d->fc, L->fcprojw, L->fcprojb, n, 4 * C, C);
    o->add(x, d->x, d->x, d->tmp, (size_t)n * C);
  }
  if (all_logits) {
    o->layernorm_fwd(x, d->h, d->mean, d->rstd, d->x, d->w.lnfw, d->w.lnfb, n, C, c->ln_eps);
    o->head_fwd(x, d->logits, d->h, d->w.wte, n, V, C);
    o->copy_out(x, all_logits, d->logits, (size_t)n * V * sizeof(float));
  } else {
    o->layernorm_fwd(x, d->h, d->mean, d->rstd, d->x + (size_t)(n - 1) * C, d->w.lnfw, d->w.lnfb, 1, C, c->ln_eps);
    o->head_fwd(x, d->logits, d->h, d->w.wte, 1, V, C);
    o->copy_out(x, last, d->logits, (size_t)V * sizeof(float));
  }
  if (infer_failed(d)) return qv_fail(err, d->fail.st, "%s", d->fail.msg);
  if (all_logits) memcpy(last, all_logits + (size_t)(n - 1) * V, (size_t)V * sizeof(float));
  return QV_OK;
}

/* ---- Self-check: a device's ops against the CPU twin on a tiny model ------------------ */

/* max |a - b| / max(1e-3, max |b|) */
static double max_rel(const float *a, const float *b, size_t n) {
  double worst = 0, scale = 1e-3;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]);
    if (!(d <= worst)) worst = d; /* NaN counts as the worst */
    if (fabs((double)b[i]) > scale) scale = fabs((double)b[i]);
  }
  return worst / scale;
}

enum { SC_B = 2, SC_T = 24 };

/* Two training steps on (ops, ctx): the losses of both forwards and the parameters after. */
static qv_status sc_train(const qv_gpt_ops *ops, void *ctx, gpt_model *m, float loss[2], qv_error *err) {
  gpt_dev *d = NULL;
  qv_status st = gpt_dev_create(&d, ops, ctx, m, SC_B, SC_T, err);
  if (st) return st;
  int32_t inp[SC_B * SC_T], tgt[SC_B * SC_T];
  for (int i = 0; i < SC_B * SC_T; i++) {
    inp[i] = (int32_t)((i * 37 + 5) % m->cfg.vocab_size);
    tgt[i] = i % 7 == 3 ? -1 : (int32_t)((i * 11 + 2) % m->cfg.vocab_size);
  }
  gpt_adamw o = {1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f};
  for (int s = 0; s < 2 && !st; s++) {
    gpt_dev_zero_grad(d);
    if ((st = gpt_dev_forward(d, inp, tgt, SC_B, SC_T, &loss[s], err))) break;
    gpt_dev_backward(d, 1.0f);
    gpt_dev_clip_grad(d, 0.5f);
    gpt_dev_adamw_step(d, &o, s + 1);
  }
  if (!st) st = gpt_dev_download(d, m, err);
  gpt_dev_free(d);
  return st;
}

/* A 20-token prefill and 4 single tokens on (ops, ctx): every logit, (24, V). */
static qv_status sc_infer(const qv_gpt_ops *ops, void *ctx, const gpt_model *m, float *logits, qv_error *err) {
  gpt_dev_infer *d = NULL;
  qv_status st = gpt_dev_infer_create(&d, ops, ctx, m, 20, err);
  if (st) return st;
  int V = m->cfg.vocab_size;
  int32_t ids[24];
  for (int i = 0; i < 24; i++) ids[i] = (int32_t)((i * 13 + 1) % V);
  float *last = malloc((size_t)V * sizeof(float));
  if (!last) st = qv_fail(err, QV_ENOMEM, "out of memory");
  if (!st) st = gpt_dev_infer_feed(d, ids, 20, 0, last, logits, err);
  for (int i = 20; i < 24 && !st; i++) {
    st = gpt_dev_infer_feed(d, ids + i, 1, (size_t)i, last, NULL, err);
    if (!st) memcpy(logits + (size_t)i * V, last, (size_t)V * sizeof(float));
  }
  free(last);
  gpt_dev_infer_free(d);
  return st;
}

qv_status gpt_dev_selfcheck(const qv_gpt_ops *ops, void *ctx, int inference, qv_error *err) {
  static const gpt_config c = {.n_layer = 2, .n_head = 2, .n_embd = 32, .n_ctx = 32, .vocab_size = 67,
                               .ln_eps = 1e-5f};
  gpt_model *dm = NULL, *tm = NULL;
  float *dl = NULL, *tl = NULL;
  float dloss[2], tloss[2];
  qv_status st;
  if ((st = gpt_create(&dm, &c, err)) || (st = gpt_create(&tm, &c, err)) || (st = gpt_moments_alloc(dm, err)) ||
      (st = gpt_moments_alloc(tm, err)))
    goto done;
  gpt_init(dm, 3);
  gpt_init(tm, 3);
  size_t nl = (size_t)24 * c.vocab_size;
  dl = malloc(nl * sizeof(float));
  tl = malloc(nl * sizeof(float));
  if (!dl || !tl) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto done;
  }
  if (inference) {
    /* before training changes the weights: both sides start from gpt_init(3) */
    if ((st = sc_infer(ops, ctx, dm, dl, err)) || (st = sc_infer(gpt_ops_cpu(), NULL, tm, tl, err))) goto done;
    double e = max_rel(dl, tl, nl);
    if (!(e <= 1e-3)) {
      st = qv_fail(err, QV_EDEVICE, "generation's logits differ from the CPU's by %.3g (relative)", e);
      goto done;
    }
  }
  if ((st = sc_train(ops, ctx, dm, dloss, err)) || (st = sc_train(gpt_ops_cpu(), NULL, tm, tloss, err))) goto done;
  double el = max_rel(dloss, tloss, 2), ep = max_rel(dm->params, tm->params, dm->nparams);
  if (!(el <= 1e-3) || !(ep <= 1e-3))
    st = qv_fail(err, QV_EDEVICE, "two training steps differ from the CPU's: losses by %.3g, weights by %.3g",
                 el, ep);
done:
  free(dl);
  free(tl);
  gpt_free(dm);
  gpt_free(tm);
  return st;
}
