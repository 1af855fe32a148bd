/* The BERT encoder over the backend ops.
 *
 * Memory: the weights stay in the safetensors map except the fused QKV weight and bias
 * (made once at load, the only copy). A workspace is one aligned block cut into the
 * activations; bert_forward allocates nothing.
 *
 * Padding: sequences are packed as (B, T) rows and every op except attention is
 * row-wise, so padded rows are computed (from zero embeddings) but never reach a real
 * row: attention masks keys at t >= lens[b] and zeroes its padded output rows. The
 * caller's padded ids are never read. */
#include "model/bert.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/mem.h"

typedef struct bert_layer {
  const float *qkv_w;  /* (3C, C): into bert_model.fused */
  const float *qkv_b;  /* (3C) */
  const float *o_w;    /* (C, C) */
  const float *o_b;    /* (C) */
  const float *ln1_w, *ln1_b; /* (C) */
  const float *i_w;    /* (I, C) */
  const float *i_b;    /* (I) */
  const float *f_w;    /* (C, I) */
  const float *f_b;    /* (C) */
  const float *ln2_w, *ln2_b; /* (C) */
} bert_layer;

struct bert_model {
  bert_config cfg;
  const float *word;  /* (vocab, C) */
  const float *pos;   /* (max_pos, C) */
  const float *type;  /* (type_vocab, C) */
  const float *emb_ln_w, *emb_ln_b; /* (C) */
  bert_layer *layer;  /* (layers) */
  const float *pool_w, *pool_b; /* (C, C), (C); classification models only */
  const float *cls_w, *cls_b;   /* (num_labels, C), (num_labels) */
  float *fused;       /* layers x [(3C, C) weight | (3C) bias], owned */
};

struct bert_workspace {
  int B, T;
  float *x;       /* (B, T, C) the residual stream */
  float *qkv;     /* (B, T, 3C); also the (B, T, C) output of each projection back to C */
  float *attn;    /* (B, T, C) */
  float *ffn;     /* (B, T, I) */
  float *scratch; /* attention_scratch floats */
  size_t scratch_n;
  void *block;
};

/* ---- config --------------------------------------------------------------------------- */

static qv_status get_int(json_t *root, const char *path, const char *key, int min, int *out,
                         qv_error *err) {
  json_t *v = json_object_get(root, key);
  if (!json_is_integer(v))
    return qv_fail(err, QV_EFORMAT, "%s: \"%s\" is missing or not an integer", path, key);
  json_int_t x = json_integer_value(v);
  if (x < min || x > (1 << 24))
    return qv_fail(err, QV_EFORMAT, "%s: \"%s\" = %lld is out of range", path, key, (long long)x);
  *out = (int)x;
  return QV_OK;
}

qv_status bert_config_read(bert_config *cfg, const char *path, qv_error *err) {
  memset(cfg, 0, sizeof *cfg);
  json_error_t je;
  json_t *root = json_load_file(path, 0, &je);
  if (!root) {
    FILE *f = fopen(path, "rb");
    if (!f) return qv_fail(err, QV_NOTFOUND, "%s: cannot open", path);
    fclose(f);
    return qv_fail(err, QV_EFORMAT, "%s: line %d: %s", path, je.line, je.text);
  }
  qv_status st = QV_OK;
  if (!json_is_object(root)) {
    st = qv_fail(err, QV_EFORMAT, "%s: not a JSON object", path);
    goto done;
  }
  if ((st = get_int(root, path, "vocab_size", 1, &cfg->vocab, err)) ||
      (st = get_int(root, path, "hidden_size", 1, &cfg->hidden, err)) ||
      (st = get_int(root, path, "num_hidden_layers", 1, &cfg->layers, err)) ||
      (st = get_int(root, path, "num_attention_heads", 1, &cfg->heads, err)) ||
      (st = get_int(root, path, "intermediate_size", 1, &cfg->intermediate, err)) ||
      (st = get_int(root, path, "max_position_embeddings", 1, &cfg->max_pos, err)) ||
      (st = get_int(root, path, "type_vocab_size", 1, &cfg->type_vocab, err)))
    goto done;
  if (cfg->hidden % cfg->heads != 0) {
    st = qv_fail(err, QV_EFORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d",
                 path, cfg->hidden, cfg->heads);
    goto done;
  }
  json_t *eps = json_object_get(root, "layer_norm_eps");
  if (!json_is_number(eps) || !(json_number_value(eps) > 0) || json_number_value(eps) >= 1) {
    st = qv_fail(err, QV_EFORMAT, "%s: \"layer_norm_eps\" is missing or not in (0, 1)", path);
    goto done;
  }
  cfg->ln_eps = (float)json_number_value(eps);
  const char *act = json_string_value(json_object_get(root, "hidden_act"));
  if (!act || strcmp(act, "gelu") != 0) {
    st = qv_fail(err, QV_EFORMAT, "%s: \"hidden_act\" is %s%s%s; only \"gelu\" is supported", path,
                 act ? "\"" : "", act ? act : "missing", act ? "\"" : "");
    goto done;
  }
  const char *pet = json_string_value(json_object_get(root, "position_embedding_type"));
  if (pet && strcmp(pet, "absolute") != 0) {
    st = qv_fail(err, QV_EFORMAT, "%s: position_embedding_type \"%s\" is not supported", path, pet);
    goto done;
  }
  json_t *archs = json_object_get(root, "architectures");
  size_t i;
  json_t *a;
  int classify = 0;
  json_array_foreach(archs, i, a) {
    const char *s = json_string_value(a);
    if (s && strstr(s, "ForSequenceClassification")) classify = 1;
  }
  if (classify) {
    json_t *labels = json_object_get(root, "id2label");
    json_t *nl = json_object_get(root, "num_labels");
    if (json_is_object(labels) && json_object_size(labels) > 0)
      cfg->num_labels = (int)json_object_size(labels);
    else if (json_is_integer(nl) && json_integer_value(nl) > 0 && json_integer_value(nl) < 65536)
      cfg->num_labels = (int)json_integer_value(nl);
    else
      cfg->num_labels = 1;
  }
done:
  json_decref(root);
  return st;
}

/* ---- load ----------------------------------------------------------------------------- */

typedef struct loader {
  st_file *st;
  const char *prefix; /* "" or "bert." */
  qv_error *err;
} loader;

static qv_status get(loader *L, const float **out, int use_prefix, const char *name, int64_t d0,
                     int64_t d1) {
  char full[256];
  snprintf(full, sizeof full, "%s%s", use_prefix ? L->prefix : "", name);
  int64_t shape[2] = {d0, d1};
  return st_get_f32(L->st, full, shape, d1 > 0 ? 2 : 1, out, L->err);
}

static qv_status get_layer(loader *L, const float **out, int l, const char *name, int64_t d0,
                           int64_t d1) {
  char full[200];
  snprintf(full, sizeof full, "encoder.layer.%d.%s", l, name);
  return get(L, out, 1, full, d0, d1);
}

qv_status bert_load(bert_model **out, st_file *st, const bert_config *cfg, qv_error *err) {
  *out = NULL;
  if (cfg->hidden <= 0 || cfg->heads <= 0 || cfg->hidden % cfg->heads || cfg->layers <= 0 ||
      cfg->intermediate <= 0 || cfg->vocab <= 0 || cfg->max_pos <= 0 || cfg->type_vocab <= 0)
    return qv_fail(err, QV_EINVAL, "bad BERT config");
  bert_model *m = calloc(1, sizeof *m);
  if (!m) return qv_fail(err, QV_ENOMEM, "out of memory");
  m->cfg = *cfg;
  qv_status rc = QV_OK;
  const int64_t C = cfg->hidden, I = cfg->intermediate;
  loader L = {st, "", err};
  /* Cross-encoders saved from BertForSequenceClassification carry "bert."; the bare
   * BertModel of sentence-transformers does not. */
  if (!st_find(st, "embeddings.word_embeddings.weight") &&
      st_find(st, "bert.embeddings.word_embeddings.weight"))
    L.prefix = "bert.";
  m->layer = calloc((size_t)cfg->layers, sizeof *m->layer);
  size_t per = (size_t)(3 * C * C + 3 * C);
  m->fused = qv_aligned_alloc((size_t)cfg->layers * per * sizeof(float));
  if (!m->layer || !m->fused) {
    rc = qv_fail(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  if ((rc = get(&L, &m->word, 1, "embeddings.word_embeddings.weight", cfg->vocab, C)) ||
      (rc = get(&L, &m->pos, 1, "embeddings.position_embeddings.weight", cfg->max_pos, C)) ||
      (rc = get(&L, &m->type, 1, "embeddings.token_type_embeddings.weight", cfg->type_vocab, C)) ||
      (rc = get(&L, &m->emb_ln_w, 1, "embeddings.LayerNorm.weight", C, 0)) ||
      (rc = get(&L, &m->emb_ln_b, 1, "embeddings.LayerNorm.bias", C, 0)))
    goto fail;
  for (int l = 0; l < cfg->layers; l++) {
    bert_layer *ly = &m->layer[l];
    float *fw = m->fused + (size_t)l * per, *fb = fw + 3 * C * C;
    static const char *qkv[3] = {"query", "key", "value"};
    for (int k = 0; k < 3; k++) {
      char name[64];
      const float *w, *b;
      snprintf(name, sizeof name, "attention.self.%s.weight", qkv[k]);
      if ((rc = get_layer(&L, &w, l, name, C, C))) goto fail;
      snprintf(name, sizeof name, "attention.self.%s.bias", qkv[k]);
      if ((rc = get_layer(&L, &b, l, name, C, 0))) goto fail;
      memcpy(fw + (size_t)k * C * C, w, (size_t)(C * C) * sizeof *fw);
      memcpy(fb + (size_t)k * C, b, (size_t)C * sizeof *fb);
    }
    ly->qkv_w = fw;
    ly->qkv_b = fb;
    if ((rc = get_layer(&L, &ly->o_w, l, "attention.output.dense.weight", C, C)) ||
        (rc = get_layer(&L, &ly->o_b, l, "attention.output.dense.bias", C, 0)) ||
        (rc = get_layer(&L, &ly->ln1_w, l, "attention.output.LayerNorm.weight", C, 0)) ||
        (rc = get_layer(&L, &ly->ln1_b, l, "attention.output.LayerNorm.bias", C, 0)) ||
        (rc = get_layer(&L, &ly->i_w, l, "intermediate.dense.weight", I, C)) ||
        (rc = get_layer(&L, &ly->i_b, l, "intermediate.dense.bias", I, 0)) ||
        (rc = get_layer(&L, &ly->f_w, l, "output.dense.weight", C, I)) ||
        (rc = get_layer(&L, &ly->f_b, l, "output.dense.bias", C, 0)) ||
        (rc = get_layer(&L, &ly->ln2_w, l, "output.LayerNorm.weight", C, 0)) ||
        (rc = get_layer(&L, &ly->ln2_b, l, "output.LayerNorm.bias", C, 0)))
      goto fail;
  }
  if (cfg->num_labels > 0) {
    if ((rc = get(&L, &m->pool_w, 1, "pooler.dense.weight", C, C)) ||
        (rc = get(&L, &m->pool_b, 1, "pooler.dense.bias", C, 0)) ||
        (rc = get(&L, &m->cls_w, 0, "classifier.weight", cfg->num_labels, C)) ||
        (rc = get(&L, &m->cls_b, 0, "classifier.bias", cfg->num_labels, 0)))
      goto fail;
  }
  *out = m;
  return QV_OK;
fail:
  bert_free(m);
  return rc;
}

void bert_free(bert_model *m) {
  if (!m) return;
  qv_aligned_free(m->fused);
  free(m->layer);
  free(m);
}

const bert_config *bert_get_config(const bert_model *m) { return &m->cfg; }

/* ---- workspace ------------------------------------------------------------------------ */

/* Rounds a float count up to whole 64-byte lines so every buffer starts aligned. */
static size_t lines(size_t n) { return (n + 15) & ~(size_t)15; }

qv_status bert_workspace_new(bert_workspace **out, const bert_model *m, int B, int T) {
  *out = NULL;
  if (B <= 0 || T <= 0 || T > m->cfg.max_pos) return QV_EINVAL;
  bert_workspace *ws = calloc(1, sizeof *ws);
  if (!ws) return QV_ENOMEM;
  size_t C = (size_t)m->cfg.hidden, I = (size_t)m->cfg.intermediate, BT = (size_t)B * T;
  /* The CPU backend sizes attention scratch by its pool; ask it, and keep room for any
   * backend that sizes by (B, T, NH) within a (B, NH, T, T) bound. */
  const qv_backend *cpu = backend_cpu();
  ws->scratch_n = cpu->attention_scratch(cpu->ctx, B, T, m->cfg.heads);
  size_t n_x = lines(BT * C), n_qkv = lines(BT * 3 * C), n_ffn = lines(BT * I);
  size_t n_scr = lines(ws->scratch_n);
  size_t total = 2 * n_x + n_qkv + n_ffn + n_scr, bytes;
  if (qv_mul_overflow(total, sizeof(float), &bytes) || !(ws->block = qv_aligned_alloc(bytes))) {
    free(ws);
    return QV_ENOMEM;
  }
  float *p = ws->block;
  ws->x = p, p += n_x;
  ws->attn = p, p += n_x;
  ws->qkv = p, p += n_qkv;
  ws->ffn = p, p += n_ffn;
  ws->scratch = p;
  ws->B = B;
  ws->T = T;
  *out = ws;
  return QV_OK;
}

void bert_workspace_free(bert_workspace *ws) {
  if (!ws) return;
  qv_aligned_free(ws->block);
  free(ws);
}

/* ---- forward -------------------------------------------------------------------------- */

/* A workspace made for (B, T) holds B*T tokens: any batch of sequences no longer than T
 * whose padded size fits, so one workspace serves many short or few long sequences. */
static int fits(const bert_workspace *ws, int B, int T) {
  return B > 0 && T > 0 && T <= ws->T && (size_t)B * (size_t)T <= (size_t)ws->B * (size_t)ws->T;
}

qv_status bert_forward(const bert_model *m, bert_workspace *ws, const qv_backend *be, float *hidden,
                       const int32_t *ids, const int32_t *type_ids, const int *lens, int B, int T) {
  const bert_config *c = &m->cfg;
  if (!fits(ws, B, T) || T > c->max_pos) return QV_EINVAL;
  if (be->attention_scratch(be->ctx, B, T, c->heads) > ws->scratch_n) return QV_EINVAL;
  for (int b = 0; b < B; b++) {
    if (lens[b] < 0 || lens[b] > T) return QV_EINVAL;
    for (int t = 0; t < lens[b]; t++) {
      size_t bt = (size_t)b * T + t;
      if (ids[bt] < 0 || ids[bt] >= c->vocab) return QV_ERANGE;
      if (type_ids && (type_ids[bt] < 0 || type_ids[bt] >= c->type_vocab)) return QV_ERANGE;
    }
  }
  const int C = c->hidden, I = c->intermediate, M = B * T;
  float *x = ws->x, *proj = ws->qkv; /* proj reuses qkv once attention has read it */
  be->embed(be->ctx, x, ids, type_ids, m->word, m->pos, m->type, lens, B, T, C);
  be->layernorm(be->ctx, x, x, NULL, m->emb_ln_w, m->emb_ln_b, M, C, c->ln_eps);
  for (int l = 0; l < c->layers; l++) {
    const bert_layer *ly = &m->layer[l];
    be->linear(be->ctx, ws->qkv, x, ly->qkv_w, ly->qkv_b, M, 3 * C, C);
    be->attention(be->ctx, ws->attn, ws->qkv, lens, B, T, C, c->heads, ws->scratch);
    be->linear(be->ctx, proj, ws->attn, ly->o_w, ly->o_b, M, C, C);
    be->layernorm(be->ctx, x, proj, x, ly->ln1_w, ly->ln1_b, M, C, c->ln_eps);
    be->linear(be->ctx, ws->ffn, x, ly->i_w, ly->i_b, M, I, C);
    be->gelu(be->ctx, ws->ffn, (size_t)M * I);
    be->linear(be->ctx, proj, ws->ffn, ly->f_w, ly->f_b, M, C, I);
    float *dst = l == c->layers - 1 ? hidden : x;
    be->layernorm(be->ctx, dst, proj, x, ly->ln2_w, ly->ln2_b, M, C, c->ln_eps);
  }
  /* A device backend copies hidden back to the host at sync, so sync comes first. */
  if (be->sync) be->sync(be->ctx);
  /* Padded rows carry layernorm(bias) values; the contract says zeros. */
  for (int b = 0; b < B; b++)
    if (lens[b] < T)
      memset(hidden + ((size_t)b * T + lens[b]) * C, 0, (size_t)(T - lens[b]) * C * sizeof *hidden);
  return QV_OK;
}

qv_status bert_classify(const bert_model *m, bert_workspace *ws, const qv_backend *be, float *logits,
                        const float *hidden, int B, int T) {
  const bert_config *c = &m->cfg;
  if (c->num_labels <= 0 || !m->pool_w) return QV_EUNSUPPORTED;
  if (!fits(ws, B, T)) return QV_EINVAL;
  const int C = c->hidden;
  /* The attention buffer (B*T*C floats) is free once the forward pass is done; B*C of it
   * holds the pooled [CLS] rows. */
  float *pooled = ws->attn;
  /* The [CLS] rows are T*C apart; one M=1 product per sequence keeps linear's contiguous
   * contract, and B x C x C is small next to the encoder. */
  for (int b = 0; b < B; b++)
    be->linear(be->ctx, pooled + (size_t)b * C, hidden + (size_t)b * T * C, m->pool_w, m->pool_b,
               1, C, C);
  be->act_tanh(be->ctx, pooled, (size_t)B * C);
  be->linear(be->ctx, logits, pooled, m->cls_w, m->cls_b, B, c->num_labels, C);
  if (be->sync) be->sync(be->ctx);
  return QV_OK;
}

/* ---- device residency ------------------------------------------------------------------ */

/* Every weight range of the model, for bert_map / bert_unmap: (pointer, floats). */
static size_t weight_ranges(const bert_model *m, const float **p, size_t *n, size_t cap) {
  const bert_config *c = &m->cfg;
  size_t C = (size_t)c->hidden, I = (size_t)c->intermediate, k = 0;
#define W(ptr, count) \
  do { if ((ptr) && k < cap) { p[k] = (ptr); n[k] = (count); k++; } } while (0)
  W(m->word, (size_t)c->vocab * C);
  W(m->pos, (size_t)c->max_pos * C);
  W(m->type, (size_t)c->type_vocab * C);
  W(m->emb_ln_w, C);
  W(m->emb_ln_b, C);
  W(m->fused, (size_t)c->layers * (3 * C * C + 3 * C));
  for (int l = 0; l < c->layers; l++) {
    const bert_layer *ly = &m->layer[l];
    W(ly->o_w, C * C);
    W(ly->o_b, C);
    W(ly->ln1_w, C);
    W(ly->ln1_b, C);
    W(ly->i_w, I * C);
    W(ly->i_b, I);
    W(ly->f_w, C * I);
    W(ly->f_b, C);
    W(ly->ln2_w, C);
    W(ly->ln2_b, C);
  }
#undef W
  return k;
}

qv_status bert_map(const bert_model *m, bert_workspace *ws, float *hidden, size_t hidden_floats,
                   const qv_backend *be) {
  if (!be->map) return QV_OK;
  size_t cap = 8 + 10 * (size_t)m->cfg.layers, k;
  const float **p = malloc(cap * sizeof *p);
  size_t *n = malloc(cap * sizeof *n);
  qv_status st = p && n ? QV_OK : QV_ENOMEM;
  if (!st) {
    k = weight_ranges(m, p, n, cap);
    for (size_t i = 0; i < k && !st; i++) st = be->map(be->ctx, p[i], n[i] * sizeof(float), QV_MAP_WEIGHT);
  }
  if (!st) st = be->map(be->ctx, ws->block, ((char *)(ws->scratch + lines(ws->scratch_n))) - (char *)ws->block,
                        QV_MAP_BUFFER);
  if (!st) st = be->map(be->ctx, hidden, hidden_floats * sizeof(float), QV_MAP_OUTPUT);
  free(p);
  free(n);
  if (st) bert_unmap(m, ws, hidden, be);
  return st;
}

void bert_unmap(const bert_model *m, bert_workspace *ws, float *hidden, const qv_backend *be) {
  if (!be->unmap) return;
  size_t cap = 8 + 10 * (size_t)m->cfg.layers;
  const float **p = malloc(cap * sizeof *p);
  size_t *n = malloc(cap * sizeof *n);
  if (p && n) {
    size_t k = weight_ranges(m, p, n, cap);
    for (size_t i = 0; i < k; i++) be->unmap(be->ctx, p[i]);
  }
  free(p);
  free(n);
  be->unmap(be->ctx, ws->block);
  be->unmap(be->ctx, hidden);
}
