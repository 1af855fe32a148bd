/* GPT-2 forward for generation, with a KV cache (see infer.h).
 *
 * Invariants:
 *   1. kcache/vcache rows [0, pos) of every layer hold the keys and values of the tokens
 *      fed so far, in order; gpt_infer_feed writes rows [pos, pos+n) layer by layer and
 *      advances pos only after the whole block has run (gpt_infer_reset sets pos to 0).
 *   2. All buffers come from one block allocated in gpt_infer_load; nothing is allocated
 *      while feeding.
 *   3. Weights are views into the safetensors map (or its converted copies) and are never
 *      written. */
#include "gpt/infer.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/mem.h"
#include "base/pool.h"
#include "compute/backend.h"
#include "model/safetensors.h"

typedef struct infer_layer {
  const float *ln1_w, *ln1_b;   /* (C) */
  const float *attn_w;          /* (C, 3C) Conv1D: (in, out) */
  const float *attn_b;          /* (3C) */
  const float *proj_w;          /* (C, C) */
  const float *proj_b;          /* (C) */
  const float *ln2_w, *ln2_b;   /* (C) */
  const float *fc_w;            /* (C, 4C) */
  const float *fc_b;            /* (4C) */
  const float *fcproj_w;        /* (4C, C) */
  const float *fcproj_b;        /* (C) */
} infer_layer;

struct gpt_infer {
  gpt_infer_config cfg;         /* read-only after load */
  st_file *st;
  const float *wte;             /* (V, C) also the LM head */
  const float *wpe;             /* (T, C) */
  const float *lnf_w, *lnf_b;   /* (C) */
  infer_layer *layer;           /* (L) */
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
};

/* ---- config ----------------------------------------------------------------------------- */

static qv_status cfg_int(json_t *root, const char *key, const char *alt, int lo, int hi, int *out,
                         qv_error *err) {
  json_t *v = json_object_get(root, key);
  if (!v && alt) v = json_object_get(root, alt);
  if (!v) return qv_fail(err, QV_EFORMAT, "config.json: \"%s\" is missing", key);
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return qv_fail(err, QV_EFORMAT, "config.json: \"%s\" must be an integer in [%d, %d]", key, lo, hi);
  *out = (int)json_integer_value(v);
  return QV_OK;
}

static qv_status read_config(gpt_infer_config *c, const char *dir, qv_error *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", dir);
  json_error_t je;
  json_t *root = json_load_file(path, 0, &je);
  if (!root) {
    FILE *f = fopen(path, "r");
    if (!f) return qv_fail(err, QV_NOTFOUND, "%s: no such file", path);
    fclose(f);
    return qv_fail(err, QV_EFORMAT, "%s:%d: %s", path, je.line, je.text);
  }
  qv_status rc = QV_OK;
  if (!json_is_object(root)) {
    rc = qv_fail(err, QV_EFORMAT, "%s: not a JSON object", path);
    goto done;
  }
  json_t *mt = json_object_get(root, "model_type");
  if (mt && (!json_is_string(mt) || strcmp(json_string_value(mt), "gpt2"))) {
    rc = qv_fail(err, QV_EUNSUPPORTED, "%s: model_type \"%s\" is not gpt2", path,
                 json_is_string(mt) ? json_string_value(mt) : "?");
    goto done;
  }
  if ((rc = cfg_int(root, "n_layer", NULL, 1, 1024, &c->n_layer, err)) ||
      (rc = cfg_int(root, "n_head", NULL, 1, 1024, &c->n_head, err)) ||
      (rc = cfg_int(root, "n_embd", NULL, 1, 1 << 16, &c->n_embd, err)) ||
      (rc = cfg_int(root, "n_positions", "n_ctx", 1, 1 << 20, &c->n_ctx, err)) ||
      (rc = cfg_int(root, "vocab_size", NULL, 1, 1 << 24, &c->vocab_size, err)))
    goto done;
  if (c->n_embd % c->n_head) {
    rc = qv_fail(err, QV_EFORMAT, "%s: n_embd %d is not a multiple of n_head %d", path, c->n_embd,
                 c->n_head);
    goto done;
  }
  c->eps = 1e-5f;
  json_t *eps = json_object_get(root, "layer_norm_epsilon");
  if (eps) {
    if (!json_is_number(eps) || !(json_number_value(eps) > 0) || json_number_value(eps) > 1) {
      rc = qv_fail(err, QV_EFORMAT, "%s: layer_norm_epsilon must be a number in (0, 1]", path);
      goto done;
    }
    c->eps = (float)json_number_value(eps);
  }
  json_t *act = json_object_get(root, "activation_function");
  if (act && (!json_is_string(act) || (strcmp(json_string_value(act), "gelu_new") &&
                                       strcmp(json_string_value(act), "gelu_pytorch_tanh")))) {
    rc = qv_fail(err, QV_EUNSUPPORTED, "%s: activation_function \"%s\" (only gelu_new is supported)",
                 path, json_is_string(act) ? json_string_value(act) : "?");
    goto done;
  }
done:
  json_decref(root);
  return rc;
}

/* ---- weights ---------------------------------------------------------------------------- */

static qv_status weight(gpt_infer *m, const char *prefix, const char *name, int64_t d0, int64_t d1,
                        const float **out, qv_error *err) {
  char full[256];
  snprintf(full, sizeof full, "%s%s", prefix, name);
  int64_t shape[2] = {d0, d1};
  qv_status rc = st_get_f32(m->st, full, shape, d1 ? 2 : 1, out, err);
  if (rc == QV_NOTFOUND) return qv_fail(err, rc, "model.safetensors: tensor \"%s\" is missing", full);
  return rc;
}

static qv_status load_weights(gpt_infer *m, qv_error *err) {
  const gpt_infer_config *c = &m->cfg;
  int64_t C = c->n_embd, V = c->vocab_size, T = c->n_ctx;
  const char *p = st_find(m->st, "wte.weight") ? "" : "transformer.";
  qv_status rc;
  if ((rc = weight(m, p, "wte.weight", V, C, &m->wte, err)) ||
      (rc = weight(m, p, "wpe.weight", T, C, &m->wpe, err)) ||
      (rc = weight(m, p, "ln_f.weight", C, 0, &m->lnf_w, err)) ||
      (rc = weight(m, p, "ln_f.bias", C, 0, &m->lnf_b, err)))
    return rc;
  for (int l = 0; l < c->n_layer; l++) {
    infer_layer *L = &m->layer[l];
    char n[64];
#define W(field, suffix, d0, d1)                                     \
  snprintf(n, sizeof n, "h.%d.%s", l, suffix);                        \
  if ((rc = weight(m, p, n, d0, d1, &L->field, err))) return rc;
    W(ln1_w, "ln_1.weight", C, 0)
    W(ln1_b, "ln_1.bias", C, 0)
    W(attn_w, "attn.c_attn.weight", C, 3 * C)
    W(attn_b, "attn.c_attn.bias", 3 * C, 0)
    W(proj_w, "attn.c_proj.weight", C, C)
    W(proj_b, "attn.c_proj.bias", C, 0)
    W(ln2_w, "ln_2.weight", C, 0)
    W(ln2_b, "ln_2.bias", C, 0)
    W(fc_w, "mlp.c_fc.weight", C, 4 * C)
    W(fc_b, "mlp.c_fc.bias", 4 * C, 0)
    W(fcproj_w, "mlp.c_proj.weight", 4 * C, C)
    W(fcproj_b, "mlp.c_proj.bias", C, 0)
#undef W
  }
  return QV_OK;
}

qv_status gpt_infer_load(gpt_infer **out, const char *dir, qv_error *err) {
  *out = NULL;
  gpt_infer *m = calloc(1, sizeof *m);
  if (!m) return qv_fail(err, QV_ENOMEM, "out of memory");
  qv_status rc = read_config(&m->cfg, dir, err);
  if (rc) goto fail;
  char path[4096];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  if ((rc = st_open(&m->st, path, err))) goto fail;
  m->layer = calloc((size_t)m->cfg.n_layer, sizeof *m->layer);
  if (!m->layer) {
    rc = qv_fail(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  if ((rc = load_weights(m, err))) goto fail;

  /* BLAS runs single-threaded inside pool tasks (the CPU backend sets that up). */
  (void)backend_cpu();
  m->pool = pool_default();
  m->workers = m->pool ? pool_size(m->pool) : 1;

  const size_t L = (size_t)m->cfg.n_layer, T = (size_t)m->cfg.n_ctx, C = (size_t)m->cfg.n_embd;
  const size_t V = (size_t)m->cfg.vocab_size, B = GPT_INFER_BLOCK;
  /* Sizes in floats, each rounded up to 16 so every buffer stays 64-byte aligned. */
  size_t sizes[9] = {L * T * C, L * T * C, B * C, B * C, B * 3 * C, B * C, B * 4 * C, V,
                     (size_t)m->workers * T};
  size_t total = 0;
  for (int i = 0; i < 9; i++) total += (sizes[i] + 15) & ~(size_t)15;
  size_t bytes;
  if (qv_mul_overflow(total, sizeof(float), &bytes) || !(m->block = qv_aligned_alloc(bytes))) {
    rc = qv_fail(err, QV_ENOMEM, "cannot allocate %zu floats for the KV cache and activations", total);
    goto fail;
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
fail:
  gpt_infer_free(m);
  return rc;
}

void gpt_infer_free(gpt_infer *m) {
  if (!m) return;
  qv_aligned_free(m->block);
  free(m->layer);
  st_close(m->st);
  free(m);
}

const gpt_infer_config *gpt_infer_config_of(const gpt_infer *m) { return &m->cfg; }
size_t gpt_infer_pos(const gpt_infer *m) { return m->pos; }
void gpt_infer_reset(gpt_infer *m) { m->pos = 0; }
const float *gpt_infer_logits(const gpt_infer *m) { return m->logits; }

/* ---- kernels ---------------------------------------------------------------------------- */

static void layernorm_forward(float *out, const float *inp, const float *w, const float *b, int rows,
                              int C, float eps) {
  // out, inp (rows, C); w, b (C)
  for (int r = 0; r < rows; r++) {
    const float *x = inp + (size_t)r * C;
    float *o = out + (size_t)r * C;
    double mean = 0, var = 0;
    for (int i = 0; i < C; i++) mean += x[i];
    mean /= C;
    for (int i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= C;
    float rstd = (float)(1.0 / sqrt(var + eps));
    for (int i = 0; i < C; i++) o[i] = ((float)(x[i] - mean)) * rstd * w[i] + b[i];
  }
}

static void gelu_tanh(float *x, size_t n) {
  // x (n) in place: the tanh approximation GPT-2 was trained with ("gelu_new")
  const float s = 0.7978845608028654f; /* sqrt(2/pi) */
  for (size_t i = 0; i < n; i++) {
    float v = x[i];
    x[i] = 0.5f * v * (1.0f + tanhf(s * (v + 0.044715f * v * v * v)));
  }
}

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
  const gpt_infer_config *c = &m->cfg;
  const int C = c->n_embd, V = c->vocab_size;
  const size_t T = (size_t)c->n_ctx;
  for (int r = 0; r < n; r++) {
    const float *te = m->wte + (size_t)ids[r] * C, *pe = m->wpe + (m->pos + (size_t)r) * C;
    float *x = m->x + (size_t)r * C;
    for (int i = 0; i < C; i++) x[i] = te[i] + pe[i];
  }
  for (int l = 0; l < c->n_layer; l++) {
    const infer_layer *L = &m->layer[l];
    float *kc = m->kcache + (size_t)l * T * C, *vc = m->vcache + (size_t)l * T * C;
    layernorm_forward(m->h, m->x, L->ln1_w, L->ln1_b, n, C, c->eps);
    matmul(m, m->qkv, m->h, L->attn_w, L->attn_b, n, 3 * C, C, 3 * C, 0, 0);
    for (int r = 0; r < n; r++) {
      const float *row = m->qkv + (size_t)r * 3 * C;
      memcpy(kc + (m->pos + (size_t)r) * C, row + C, (size_t)C * sizeof(float));
      memcpy(vc + (m->pos + (size_t)r) * C, row + 2 * C, (size_t)C * sizeof(float));
    }
    att_job aj = {m, m->att, m->qkv, kc, vc, m->pos, c->n_head, C / c->n_head, C};
    pool_run(m->pool, (size_t)n * (size_t)c->n_head, att_task, &aj);
    matmul(m, m->x, m->att, L->proj_w, L->proj_b, n, C, C, C, 0, 1);
    layernorm_forward(m->h, m->x, L->ln2_w, L->ln2_b, n, C, c->eps);
    matmul(m, m->fc, m->h, L->fc_w, L->fc_b, n, 4 * C, C, 4 * C, 0, 0);
    gelu_tanh(m->fc, (size_t)n * 4 * C);
    matmul(m, m->x, m->fc, L->fcproj_w, L->fcproj_b, n, C, 4 * C, C, 0, 1);
  }
  if (all_logits) {
    layernorm_forward(m->h, m->x, m->lnf_w, m->lnf_b, n, C, c->eps);
    matmul(m, all_logits, m->h, m->wte, NULL, n, V, C, V, 1, 0);
    if (want_last) memcpy(m->logits, all_logits + (size_t)(n - 1) * V, (size_t)V * sizeof(float));
  } else if (want_last) {
    layernorm_forward(m->h, m->x + (size_t)(n - 1) * C, m->lnf_w, m->lnf_b, 1, C, c->eps);
    matmul(m, m->logits, m->h, m->wte, NULL, 1, V, C, V, 1, 0);
  }
}

qv_status gpt_infer_feed(gpt_infer *m, const int32_t *ids, size_t n, float *all_logits, qv_error *err) {
  const gpt_infer_config *c = &m->cfg;
  if (n == 0) return qv_fail(err, QV_EINVAL, "no tokens to feed");
  if (n > (size_t)c->n_ctx - m->pos)
    return qv_fail(err, QV_ETOOLONG, "%zu tokens do not fit: %zu of the context of %d are used", n, m->pos,
                   c->n_ctx);
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= c->vocab_size)
      return qv_fail(err, QV_ERANGE, "token id %d is outside the vocabulary (%d)", (int)ids[i],
                     c->vocab_size);
  for (size_t done = 0; done < n;) {
    int b = n - done < GPT_INFER_BLOCK ? (int)(n - done) : GPT_INFER_BLOCK;
    forward_block(m, ids + done, b, all_logits ? all_logits + done * (size_t)c->vocab_size : NULL,
                  done + (size_t)b == n);
    m->pos += (size_t)b;
    done += (size_t)b;
  }
  return QV_OK;
}
