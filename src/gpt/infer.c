/* GPT-2 forward for generation, with a KV cache (see infer.h).
 *
 * Invariants:
 *   1. kcache/vcache rows [0, pos) of every layer hold the keys and values of the tokens
 *      fed so far, in order; gpt_infer_feed writes rows [pos, pos+n) layer by layer and
 *      advances pos only after the whole block has run (gpt_infer_reset sets pos to 0).
 *   2. All buffers come from one block allocated in gpt_infer_load; nothing is allocated
 *      while feeding.
 *   3. The weights are the gpt_model's (gpt_load's copy, or the caller's) and are never
 *      written here.
 *   4. On a device (dev set), history[0, pos) holds every id fed since the last reset, so a
 *      device that fails is replaced by the CPU path replaying them into the CPU cache
 *      before the feed that failed runs again there. */
#include "gpt/infer.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/mem.h"
#include "base/pool.h"
#include "base/log.h"
#include "compute/backend.h"
#include "compute/device.h"
#include "gpt/ckpt.h"
#include "gpt/gpt_dev.h"

static qv_status cpu_create(gpt_infer **out, const gpt_model *model, qv_error *err);

struct gpt_infer {
  const gpt_model *model;       /* the weights: model->w, never written (invariant 3) */
  gpt_model *owned;             /* model, when gpt_infer_load made it */
  gpt_config cfg;               /* read-only: model->cfg */
  float *kcache, *vcache;       /* (L, T, C) each */
  float *x;                     /* (B, C) residual stream, B = GPT_INFER_BLOCK */
  float *h;                     /* (B, C) layernorm output */
  float *qkv;                   /* (B, 3C) */
  float *att;                   /* (B, C) attention output before c_proj */
  float *fc;                    /* (B, 4C) */
  float *logits;                /* (V) of the last token fed */
  float *scores;                /* (workers, T) attention scratch, one row per worker */
  void *block;
  size_t pos;
  qv_pool *pool;
  int workers;
  gpt_dev_infer *dev;           /* the device path, or NULL (invariant 4) */
  const char *dev_name;
  int fallback;                 /* a device failure continues on the CPU (else it is returned) */
  int32_t *history;             /* (T) with dev */
};

/* Puts m on the device (ops, ctx); required: a device that cannot take the model is an
 * error rather than a warning. */
static qv_status attach_device(gpt_infer *m, const gpt_model *model, const qv_gpt_ops *ops, void *ctx,
                               const char *name, int required, qv_error *err) {
  qv_error derr = {0};
  name = name ? name : "device";
  m->history = malloc((size_t)m->cfg.n_ctx * sizeof(int32_t));
  if (!m->history) qv_fail(&derr, QV_ENOMEM, "out of memory");
  else if (!gpt_dev_infer_create(&m->dev, ops, ctx, model, GPT_INFER_BLOCK, &derr)) {
    m->dev_name = name;
    return QV_OK;
  }
  free(m->history);
  m->history = NULL;
  if (required) return qv_fail(err, derr.status ? derr.status : QV_EDEVICE, "the %s device: %s", name, derr.msg);
  /* the CPU path is whole already: the device is an accelerator */
  LOG_WARN("gpt: cannot run on the %s device (%s); generating on the CPU", name, derr.msg);
  return QV_OK;
}

qv_status gpt_infer_create(gpt_infer **out, const gpt_model *model, qv_error *err) {
  qv_gpu_config cfg;
  device_config(&cfg);
  const qv_backend *gpu = device_dispatch()->gpu;
  const qv_gpt_ops *ops = gpu && gpu->gpt && gpu->gpt->attention_cached ? gpu->gpt : NULL;
  int required = cfg.enabled == QV_GPU_ON;
  *out = NULL;
  if (required && !ops)
    return qv_fail(err, QV_EDEVICE, "gpu is on but %s", gpu ? "its backend has no GPT generation ops (rebuild the plugin)"
                                                            : "no GPU is in use (quiver info says why)");
  qv_error cerr = {0};
  /* code that reports no error can still compute wrong results: a tiny model's logits
   * must agree with the CPU's before generation goes there */
  if (ops && gpt_dev_selfcheck(ops, gpu->ctx, 1, &cerr)) {
    if (required) return qv_fail(err, QV_EDEVICE, "the %s backend failed its GPT self-check: %s", gpu->name, cerr.msg);
    LOG_WARN("gpt: the %s backend failed its GPT self-check (%s); generating on the CPU", gpu->name, cerr.msg);
    ops = NULL;
  }
  qv_status st = cpu_create(out, model, err);
  if (st || !ops) return st;
  (*out)->fallback = cfg.fallback_to_cpu;
  if ((st = attach_device(*out, model, ops, gpu->ctx, gpu->name, required, err))) {
    gpt_infer_free(*out);
    *out = NULL;
  }
  return st;
}

qv_status gpt_infer_create_on(gpt_infer **out, const gpt_model *model, const qv_gpt_ops *ops, void *ctx,
                              const char *name, int fallback, qv_error *err) {
  qv_status st = cpu_create(out, model, err);
  if (st || !ops) return st;
  (*out)->fallback = fallback;
  return attach_device(*out, model, ops, ctx, name, 0, err);
}

const char *gpt_infer_device(const gpt_infer *m) { return m->dev ? m->dev_name : "cpu"; }

static qv_status cpu_create(gpt_infer **out, const gpt_model *model, qv_error *err) {
  *out = NULL;
  gpt_infer *m = calloc(1, sizeof *m);
  if (!m) return qv_fail(err, QV_ENOMEM, "out of memory");
  m->model = model;
  m->cfg = model->cfg;
  /* BLAS runs single-threaded inside pool tasks (the CPU backend sets that up). */
  (void)backend_cpu();
  m->pool = model->pool ? model->pool : pool_default();
  m->workers = m->pool ? pool_size(m->pool) : 1;

  const size_t L = (size_t)m->cfg.n_layer, T = (size_t)m->cfg.n_ctx, C = (size_t)m->cfg.n_embd;
  const size_t V = (size_t)m->cfg.vocab_size, B = GPT_INFER_BLOCK;
  /* Sizes in floats, each rounded up to 16 so every buffer stays 64-byte aligned. */
  size_t sizes[9] = {L * T * C, L * T * C, B * C, B * C, B * 3 * C, B * C, B * 4 * C, V,
                     (size_t)m->workers * T};
  size_t total = 0, bytes;
  for (int i = 0; i < 9; i++) total += (sizes[i] + 15) & ~(size_t)15;
  if (qv_mul_overflow(total, sizeof(float), &bytes) || !(m->block = qv_aligned_alloc(bytes))) {
    free(m);
    return qv_fail(err, QV_ENOMEM, "cannot allocate %zu floats for the KV cache and activations", total);
  }
  float *at = m->block;
  float **dst[9] = {&m->kcache, &m->vcache, &m->x, &m->h, &m->qkv, &m->att, &m->fc, &m->logits, &m->scores};
  for (int i = 0; i < 9; i++) {
    *dst[i] = at;
    at += (sizes[i] + 15) & ~(size_t)15;
  }
  memset(m->logits, 0, V * sizeof(float));
  *out = m;
  return QV_OK;
}

qv_status gpt_infer_load(gpt_infer **out, const char *dir, qv_error *err) {
  *out = NULL;
  gpt_model *model = NULL;
  qv_status rc = gpt_load(&model, dir, NULL, err);
  if (rc) return rc;
  if ((rc = gpt_infer_create(out, model, err))) {
    gpt_free(model);
    return rc;
  }
  (*out)->owned = model;
  return QV_OK;
}

void gpt_infer_free(gpt_infer *m) {
  if (!m) return;
  gpt_dev_infer_free(m->dev);
  free(m->history);
  qv_aligned_free(m->block);
  gpt_free(m->owned);
  free(m);
}

const gpt_config *gpt_infer_config_of(const gpt_infer *m) { return &m->cfg; }
size_t gpt_infer_pos(const gpt_infer *m) { return m->pos; }
void gpt_infer_reset(gpt_infer *m) { m->pos = 0; }
const float *gpt_infer_logits(const gpt_infer *m) { return m->logits; }

/* ---- kernels: layernorm, GELU and the embedding are gpt.h's; the matrix products here
 * differ from gpt_matmul_forward in splitting columns over the pool (a one-row decode
 * step is a matrix-vector product that one BLAS call would leave on one core), in
 * accumulating into the residual stream, and in the transposed LM head. ---- */

/* out (M, N) (+)= inp (M, K) @ W + bias, split over the pool by columns. W is either a
 * Conv1D weight (K, N) row-major or, for the tied LM head, wte (N, K) used transposed.
 * ldo is out's row stride. accumulate adds into out (the residual stream). */
typedef struct mm_job {
  float *out;
  const float *inp, *w, *bias;
  int M, N, K, ldo, trans, accumulate, cols;
} mm_job;

static void mm_task(void *ctx, size_t task, int worker) {
  (void)worker;
  const mm_job *j = ctx;
  int n0 = (int)task * j->cols, n1 = n0 + j->cols < j->N ? n0 + j->cols : j->N;
  int nn = n1 - n0;
  float beta = j->accumulate ? 1.0f : 0.0f;
  if (j->trans) {
    const float *w = j->w + (size_t)n0 * j->K; /* rows n0..n1 of (N, K) */
    if (j->M == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, nn, j->K, 1.0f, w, j->K, j->inp, 1, beta, j->out + n0, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->M, nn, j->K, 1.0f, j->inp, j->K, w, j->K,
                  beta, j->out + n0, j->ldo);
  } else {
    const float *w = j->w + n0; /* columns n0..n1 of (K, N) */
    if (j->M == 1)
      cblas_sgemv(CblasRowMajor, CblasTrans, j->K, nn, 1.0f, w, j->N, j->inp, 1, beta, j->out + n0, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->M, nn, j->K, 1.0f, j->inp, j->K, w, j->N,
                  beta, j->out + n0, j->ldo);
  }
  if (j->bias)
    for (int r = 0; r < j->M; r++) {
      float *o = j->out + (size_t)r * j->ldo;
      for (int c = n0; c < n1; c++) o[c] += j->bias[c];
    }
}

static void matmul(gpt_infer *m, float *out, const float *inp, const float *w, const float *bias, int M,
                   int N, int K, int ldo, int trans, int accumulate) {
  /* Enough tasks to balance the workers, each wide enough (>= 64 columns) that a task
   * costs more than the hand-off. */
  int tasks = m->workers * 4;
  int cols = (N + tasks - 1) / tasks;
  if (cols < 64) cols = 64;
  cols = (cols + 15) & ~15;
  mm_job j = {out, inp, w, bias, M, N, K, ldo, trans, accumulate, cols};
  pool_run(m->pool, (size_t)((N + cols - 1) / cols), mm_task, &j);
}

/* Causal attention of rows [0, n) (at positions pos0 + r) over the cache of one layer.
 * One task per (row, head). */
typedef struct att_job {
  gpt_infer *m;
  float *out;         /* (n, C) */
  const float *q;     /* (n, 3C): q is the first C of each row */
  const float *k, *v; /* (T, C) this layer's cache */
  size_t pos0;
  int NH, hd, C;
} att_job;

static void att_task(void *ctx, size_t task, int worker) {
  const att_job *j = ctx;
  int r = (int)(task / (size_t)j->NH), h = (int)(task % (size_t)j->NH);
  size_t len = j->pos0 + (size_t)r + 1; /* keys 0 .. pos, causal */
  const float *q = j->q + (size_t)r * 3 * j->C + (size_t)h * j->hd;
  float *s = j->m->scores + (size_t)worker * (size_t)j->m->cfg.n_ctx;
  float scale = 1.0f / sqrtf((float)j->hd), mx = -INFINITY;
  for (size_t t = 0; t < len; t++) {
    const float *k = j->k + t * j->C + (size_t)h * j->hd;
    float d = 0;
    for (int i = 0; i < j->hd; i++) d += q[i] * k[i];
    s[t] = d * scale;
    if (s[t] > mx) mx = s[t];
  }
  float sum = 0;
  for (size_t t = 0; t < len; t++) {
    s[t] = expf(s[t] - mx);
    sum += s[t];
  }
  float inv = 1.0f / sum;
  float *o = j->out + (size_t)r * j->C + (size_t)h * j->hd;
  memset(o, 0, (size_t)j->hd * sizeof(float));
  for (size_t t = 0; t < len; t++) {
    const float *v = j->v + t * j->C + (size_t)h * j->hd;
    float p = s[t] * inv;
    for (int i = 0; i < j->hd; i++) o[i] += p * v[i];
  }
}

/* One block of n <= GPT_INFER_BLOCK rows at positions pos .. pos+n-1. */
static void forward_block(gpt_infer *m, const int32_t *ids, int n, float *all_logits, int want_last) {
  const gpt_config *c = &m->cfg;
  const gpt_weights *w = &m->model->w;
  const int C = c->n_embd, V = c->vocab_size;
  const size_t T = (size_t)c->n_ctx;
  const float eps = c->ln_eps;
  gpt_encoder_forward(m->x, ids, w->wte, w->wpe + m->pos * C, 1, n, C);
  for (int l = 0; l < c->n_layer; l++) {
    const gpt_layer_w *L = &w->layers[l];
    float *kc = m->kcache + (size_t)l * T * C, *vc = m->vcache + (size_t)l * T * C;
    gpt_layernorm_forward(m->pool, m->h, NULL, NULL, m->x, L->ln1w, L->ln1b, n, C, eps);
    matmul(m, m->qkv, m->h, L->qkvw, L->qkvb, n, 3 * C, C, 3 * C, 0, 0);
    for (int r = 0; r < n; r++) {
      const float *row = m->qkv + (size_t)r * 3 * C;
      memcpy(kc + (m->pos + (size_t)r) * C, row + C, (size_t)C * sizeof(float));
      memcpy(vc + (m->pos + (size_t)r) * C, row + 2 * C, (size_t)C * sizeof(float));
    }
    att_job aj = {m, m->att, m->qkv, kc, vc, m->pos, c->n_head, C / c->n_head, C};
    pool_run(m->pool, (size_t)n * (size_t)c->n_head, att_task, &aj);
    matmul(m, m->x, m->att, L->attprojw, L->attprojb, n, C, C, C, 0, 1);
    gpt_layernorm_forward(m->pool, m->h, NULL, NULL, m->x, L->ln2w, L->ln2b, n, C, eps);
    matmul(m, m->fc, m->h, L->fcw, L->fcb, n, 4 * C, C, 4 * C, 0, 0);
    gpt_gelu_forward(m->pool, m->fc, m->fc, (size_t)n * 4 * C);
    matmul(m, m->x, m->fc, L->fcprojw, L->fcprojb, n, C, 4 * C, C, 0, 1);
  }
  if (all_logits) {
    gpt_layernorm_forward(m->pool, m->h, NULL, NULL, m->x, w->lnfw, w->lnfb, n, C, eps);
    matmul(m, all_logits, m->h, w->wte, NULL, n, V, C, V, 1, 0);
    if (want_last) memcpy(m->logits, all_logits + (size_t)(n - 1) * V, (size_t)V * sizeof(float));
  } else if (want_last) {
    gpt_layernorm_forward(m->pool, m->h, NULL, NULL, m->x + (size_t)(n - 1) * C, w->lnfw, w->lnfb, 1, C,
                          eps);
    matmul(m, m->logits, m->h, w->wte, NULL, 1, V, C, V, 1, 0);
  }
}

/* Feeds ids on the CPU path in blocks (the caller checked them). */
static void cpu_feed(gpt_infer *m, const int32_t *ids, size_t n, float *all_logits, int want_last) {
  const gpt_config *c = &m->cfg;
  for (size_t done = 0; done < n;) {
    int b = n - done < GPT_INFER_BLOCK ? (int)(n - done) : GPT_INFER_BLOCK;
    forward_block(m, ids + done, b, all_logits ? all_logits + done * (size_t)c->vocab_size : NULL,
                  want_last && done + (size_t)b == n);
    m->pos += (size_t)b;
    done += (size_t)b;
  }
}

/* The device path; on a failure the CPU takes over (invariant 4), or, without fallback,
 * the failure is returned (and every later feed fails too: the device's latch). */
static qv_status dev_feed(gpt_infer *m, const int32_t *ids, size_t n, float *all_logits, qv_error *err) {
  const gpt_config *c = &m->cfg;
  size_t pos0 = m->pos;
  qv_error derr = {0};
  for (size_t done = 0; done < n;) {
    int b = n - done < GPT_INFER_BLOCK ? (int)(n - done) : GPT_INFER_BLOCK;
    if (gpt_dev_infer_feed(m->dev, ids + done, b, m->pos, m->logits,
                           all_logits ? all_logits + done * (size_t)c->vocab_size : NULL, &derr)) {
      if (!m->fallback) {
        m->pos = pos0; /* nothing of this feed counts */
        return qv_fail(err, derr.status ? derr.status : QV_EDEVICE, "the %s device failed: %s", m->dev_name, derr.msg);
      }
      LOG_WARN("gpt: the %s device failed (%s); continuing on the CPU", m->dev_name, derr.msg);
      gpt_dev_infer_free(m->dev);
      m->dev = NULL;
      /* rebuild the CPU cache from the history, then run this feed there */
      m->pos = 0;
      if (pos0) cpu_feed(m, m->history, pos0, NULL, 0);
      cpu_feed(m, ids, n, all_logits, 1);
      return QV_OK;
    }
    memcpy(m->history + m->pos, ids + done, (size_t)b * sizeof(int32_t));
    m->pos += (size_t)b;
    done += (size_t)b;
  }
  return QV_OK;
}

qv_status gpt_infer_feed(gpt_infer *m, const int32_t *ids, size_t n, float *all_logits, qv_error *err) {
  const gpt_config *c = &m->cfg;
  if (n == 0) return qv_fail(err, QV_EINVAL, "no tokens to feed");
  if (n > (size_t)c->n_ctx - m->pos)
    return qv_fail(err, QV_ETOOLONG, "%zu tokens do not fit: %zu of the context of %d are used", n, m->pos,
                   c->n_ctx);
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= c->vocab_size)
      return qv_fail(err, QV_ERANGE, "token id %d is outside the vocabulary (%d)", (int)ids[i],
                     c->vocab_size);
  if (m->dev) return dev_feed(m, ids, n, all_logits, err);
  cpu_feed(m, ids, n, all_logits, 1);
  return QV_OK;
}
