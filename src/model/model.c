/* Models: a sentence-transformers or cross-encoder folder turned into an encoder, a
 * tokenizer and a pooling recipe; batching by length so padding costs little.
 *
 * Encoding sorts the inputs by token count and cuts the sorted list into batches of at
 * most BATCH_SEQS sequences and BATCH_TOKENS padded tokens, so each forward pass pads
 * little and the workspace stays small (a few tens of MB at any length). The workspace is
 * allocated before a forward pass, never inside one. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "base/error.h"
#include "base/log.h"
#include "base/mem.h"
#include "compute/backend.h"
#include "compute/device.h"
#include "index/distance.h"
#include "model/bert.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"

#define BATCH_SEQS 32
#define BATCH_TOKENS 4096

struct qv_model {
  char *name, *dir;               /* read-only */
  qv_model_info info;             /* read-only; info.name points at name */
  st_file *st;
  bert_model *bert;
  qv_tokenizer *tok;
  const qv_backend *be;           /* the CPU backend: the classifier head, and CPU-only runs */
  compute_dispatch *disp;         /* the process's GPU -> CPU dispatch (compute/device.h) */
  int gpu;                        /* weights and workspace are mapped on disp->gpu, guarded by mu */
  pthread_mutex_t mu;             /* one encode at a time: the workspace is shared */
  bert_workspace *ws;             /* guarded by mu */
  float *hidden;                  /* (BATCH_TOKENS, C) rows of the last batch, guarded by mu */
};

static char *path_join(const char *a, const char *b) {
  char *s;
  return asprintf(&s, "%s/%s", a, b) < 0 ? NULL : s;
}

static int is_dir(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static json_t *load_json(const char *dir, const char *file, int required, qv_error *err, qv_status *st) {
  char *p = path_join(dir, file);
  json_error_t je;
  json_t *j = p ? json_load_file(p, 0, &je) : NULL;
  *st = QV_OK;
  if (!j && required) {
    struct stat sb;
    *st = p && stat(p, &sb) != 0 ? qv_fail(err, QV_NOTFOUND, "%s: missing", p)
                                 : qv_fail(err, QV_EFORMAT, "%s: %s (line %d)", p ? p : file, je.text, je.line);
  }
  free(p);
  return j;
}

/* Where the model's files are: a directory as given, or a name in the model cache. */
static char *resolve_dir(const char *path) {
  if (is_dir(path)) return strdup(path);
  const char *cache = getenv("QUIVER_MODELS");
  char *home_cache = NULL;
  if (!cache || !*cache) {
    const char *home = getenv("HOME");
    if (asprintf(&home_cache, "%s/.cache/quiver/models", home ? home : ".") < 0) return NULL;
    cache = home_cache;
  }
  char *p = path_join(cache, path);
  free(home_cache);
  return p;
}

static const char *base_name(const char *dir) {
  const char *s = strrchr(dir, '/');
  while (s && s[1] == 0 && s > dir) { /* trailing slash */
    const char *t = s - 1;
    while (t > dir && *t != '/') t--;
    return *t == '/' ? t + 1 : t;
  }
  return s ? s + 1 : dir;
}

/* Reads modules.json and the pooling config: mean / CLS / max, and whether a Normalize
 * module follows. */
static qv_status read_pipeline(qv_model *m, qv_error *err) {
  qv_status st;
  json_t *mods = load_json(m->dir, "modules.json", 0, err, &st);
  m->info.pooling = QV_POOL_MEAN;
  m->info.normalize = 0;
  const char *pool_dir = "1_Pooling";
  if (mods) {
    if (!json_is_array(mods)) {
      json_decref(mods);
      return qv_fail(err, QV_EFORMAT, "%s/modules.json: not a list", m->dir);
    }
    size_t i;
    json_t *mod;
    json_array_foreach(mods, i, mod) {
      const char *type = json_string_value(json_object_get(mod, "type"));
      const char *path = json_string_value(json_object_get(mod, "path"));
      if (!type) continue;
      if (strstr(type, "Normalize")) m->info.normalize = 1;
      else if (strstr(type, "Pooling") && path && *path) pool_dir = path;
      else if (!strstr(type, "Transformer") && !strstr(type, "Pooling")) {
        st = qv_fail(err, QV_EUNSUPPORTED, "%s/modules.json: module %s is not supported", m->dir, type);
        json_decref(mods);
        return st;
      }
    }
  }
  char *pc = path_join(pool_dir, "config.json");
  json_t *pool = pc ? load_json(m->dir, pc, 0, err, &st) : NULL;
  free(pc);
  if (pool) {
    if (json_is_true(json_object_get(pool, "pooling_mode_cls_token"))) m->info.pooling = QV_POOL_CLS;
    else if (json_is_true(json_object_get(pool, "pooling_mode_max_tokens"))) m->info.pooling = QV_POOL_MAX;
    else if (!json_is_true(json_object_get(pool, "pooling_mode_mean_tokens"))) {
      json_decref(pool);
      json_decref(mods);
      return qv_fail(err, QV_EUNSUPPORTED, "%s: pooling mode not supported (mean, cls and max are)", m->dir);
    }
    json_decref(pool);
  }
  json_decref(mods);
  return QV_OK;
}

/* The token limit: sentence_bert_config.json's max_seq_length, else the tokenizer's
 * model_max_length, capped by the position table. */
static int read_max_tokens(const qv_model *m, int max_pos) {
  qv_status st;
  long limit = 0;
  json_t *sb = load_json(m->dir, "sentence_bert_config.json", 0, NULL, &st);
  if (sb) limit = (long)json_integer_value(json_object_get(sb, "max_seq_length"));
  json_decref(sb);
  if (limit <= 0) {
    json_t *tc = load_json(m->dir, "tokenizer_config.json", 0, NULL, &st);
    json_t *v = tc ? json_object_get(tc, "model_max_length") : NULL;
    if (json_is_integer(v)) limit = (long)json_integer_value(v);
    json_decref(tc);
  }
  if (limit <= 0 || limit > max_pos) limit = max_pos;
  return (int)limit;
}

qv_status qv_model_load(qv_model **out, const char *path, qv_error *err) {
  qv_model *m = calloc(1, sizeof *m);
  if (!m) return qv_fail(err, QV_ENOMEM, "out of memory");
  pthread_mutex_init(&m->mu, NULL);
  qv_status st = QV_OK;
  char *p = NULL;
  m->dir = resolve_dir(path);
  if (!m->dir) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  if (!is_dir(m->dir)) {
    st = qv_fail(err, QV_NOTFOUND, "model %s not found (looked in %s; fetch it with scripts/fetch_models.py %s)",
                 path, m->dir, path);
    goto fail;
  }
  m->name = strdup(base_name(m->dir));
  m->info.name = m->name;
  bert_config cfg;
  if (!(p = path_join(m->dir, "config.json"))) goto oom;
  if ((st = bert_config_read(&cfg, p, err))) goto fail;
  free(p);
  if (!(p = path_join(m->dir, "model.safetensors"))) goto oom;
  if ((st = st_open(&m->st, p, err))) goto fail;
  if ((st = bert_load(&m->bert, m->st, &cfg, err))) goto fail;
  free(p);
  if (!(p = path_join(m->dir, "tokenizer.json"))) goto oom;
  if ((st = tok_load(&m->tok, p, err))) goto fail;
  free(p);
  p = NULL;
  m->info.kind = cfg.num_labels > 0 ? QV_MODEL_RERANKER : QV_MODEL_EMBEDDING;
  m->info.dims = cfg.hidden;
  m->info.max_tokens = read_max_tokens(m, cfg.max_pos);
  if (m->info.kind == QV_MODEL_EMBEDDING && (st = read_pipeline(m, err))) goto fail;
  m->be = backend_cpu();
  m->disp = device_dispatch();
  *out = m;
  return QV_OK;
oom:
  st = qv_fail(err, QV_ENOMEM, "out of memory");
fail:
  free(p);
  qv_model_free(m);
  return st;
}

void qv_model_free(qv_model *m) {
  if (!m) return;
  if (m->gpu) bert_unmap(m->bert, m->ws, m->hidden, m->disp->gpu);
  bert_workspace_free(m->ws);
  qv_aligned_free(m->hidden);
  bert_free(m->bert);
  st_close(m->st);
  tok_free(m->tok);
  pthread_mutex_destroy(&m->mu);
  free(m->name);
  free(m->dir);
  free(m);
}

void qv_model_info_get(const qv_model *m, qv_model_info *out) { *out = m->info; }

const qv_tokenizer *model_tokenizer(const qv_model *m) { return m->tok; }

/* ---- batching ------------------------------------------------------------------------ */

typedef struct job {
  tok_encoding *enc; /* (n) */
  size_t *order;     /* (n) indices sorted by token count */
  size_t n;
} job;

static void job_free(job *j) {
  if (j->enc)
    for (size_t i = 0; i < j->n; i++) tok_encoding_free(&j->enc[i]);
  free(j->enc);
  free(j->order);
}

static int by_len(const void *a, const void *b, void *arg) {
  const tok_encoding *enc = arg;
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  size_t lx = enc[x].len, ly = enc[y].len;
  return lx < ly ? -1 : lx > ly ? 1 : x < y ? -1 : x > y;
}

/* Tokenizes every input (pairs when query != NULL) and orders them by length. */
static qv_status tokenize_all(qv_model *m, job *j, const char *query, const char *const *texts,
                              const size_t *lens, size_t n, int truncate, qv_error *err) {
  j->n = n;
  j->enc = calloc(n ? n : 1, sizeof *j->enc);
  j->order = malloc((n ? n : 1) * sizeof *j->order);
  if (!j->enc || !j->order) return qv_fail(err, QV_ENOMEM, "out of memory");
  size_t limit = (size_t)m->info.max_tokens;
  for (size_t i = 0; i < n; i++) {
    const char *t = texts[i] ? texts[i] : "";
    size_t tl = lens ? lens[i] : strlen(t);
    qv_status st = query ? tok_encode(m->tok, query, strlen(query), t, tl, truncate ? limit : 0, &j->enc[i], err)
                         : tok_encode(m->tok, t, tl, NULL, 0, truncate ? limit : 0, &j->enc[i], err);
    if (st) {
      qv_error_prefix(err, "input %zu", i);
      return st;
    }
    if (j->enc[i].len > limit)
      return qv_fail(err, QV_ETOOLONG, "input %zu has %zu tokens; the model accepts %zu (ask for truncation to cut it)",
                     i, j->enc[i].len, limit);
    j->order[i] = i;
  }
  qsort_r(j->order, n, sizeof *j->order, by_len, j->enc);
  return QV_OK;
}

/* One workspace of BATCH_TOKENS tokens serves every batch next_batch forms. */
static qv_status ensure_workspace(qv_model *m, qv_error *err) {
  if (m->ws) return QV_OK;
  int T = m->info.max_tokens, B = T < BATCH_TOKENS ? BATCH_TOKENS / T : 1;
  m->hidden = qv_aligned_alloc((size_t)B * (size_t)T * (size_t)m->info.dims * sizeof(float));
  qv_status st = m->hidden ? bert_workspace_new(&m->ws, m->bert, B, T) : QV_ENOMEM;
  if (st) {
    qv_aligned_free(m->hidden);
    m->hidden = NULL;
    m->ws = NULL;
    return qv_fail(err, st, "cannot allocate the workspace for %d x %d tokens", B, T);
  }
  /* With a GPU, the weights become resident and the workspace gets a device twin once;
   * a device that cannot hold them leaves this model on the CPU (the rest of the process
   * may still use the GPU). */
  if (m->disp->gpu) {
    size_t hidden_n = (size_t)B * (size_t)T * (size_t)m->info.dims;
    qv_status ms = bert_map(m->bert, m->ws, m->hidden, hidden_n, m->disp->gpu);
    if (ms) LOG_WARN("model %s stays on the CPU: the GPU cannot hold it (%s)", m->name, qv_strerror(ms));
    m->gpu = ms == QV_OK;
  }
  return QV_OK;
}

/* The next batch from order[*at]: as many sequences as fit the limits. */
static size_t next_batch(const job *j, size_t at, int *T) {
  size_t count = 0;
  size_t maxlen = 1;
  while (at + count < j->n && count < BATCH_SEQS) {
    size_t len = j->enc[j->order[at + count]].len;
    size_t ml = len > maxlen ? len : maxlen;
    if (count > 0 && (count + 1) * ml > BATCH_TOKENS) break;
    maxlen = ml;
    count++;
  }
  *T = (int)maxlen;
  return count;
}

/* One forward pass as a unit of dispatch work: repeatable, since every run writes
 * m->hidden afresh from the same inputs. */
typedef struct fwd_work {
  qv_model *m;
  const int32_t *ids, *types;
  const int *lens;
  int B, T;
} fwd_work;

static qv_status fwd_run(const qv_backend *be, void *arg) {
  fwd_work *w = arg;
  return bert_forward(w->m->bert, w->m->ws, be, w->m->hidden, w->ids, w->types, w->lens, w->B, w->T);
}

typedef void (*batch_out_fn)(qv_model *m, const job *j, size_t at, int B, int T, void *ctx);

/* Runs the forward pass over every batch; `emit` consumes m->hidden for each. */
static qv_status run_batches(qv_model *m, const job *j, batch_out_fn emit, void *ctx, qv_error *err) {
  int32_t *ids = NULL, *types = NULL;
  int *lens = NULL;
  qv_status st = QV_OK;
  size_t cap = 0;
  for (size_t at = 0; at < j->n && !st;) {
    int T;
    int B = (int)next_batch(j, at, &T);
    if ((st = ensure_workspace(m, err))) break;
    size_t need = (size_t)B * (size_t)T;
    if (need > cap) {
      free(ids);
      free(types);
      free(lens);
      ids = calloc(need, sizeof *ids);
      types = calloc(need, sizeof *types);
      lens = calloc((size_t)BATCH_SEQS, sizeof *lens);
      cap = need;
      if (!ids || !types || !lens) {
        st = qv_fail(err, QV_ENOMEM, "out of memory");
        break;
      }
    }
    int32_t pad = tok_pad_id(m->tok);
    for (int b = 0; b < B; b++) {
      const tok_encoding *e = &j->enc[j->order[at + (size_t)b]];
      lens[b] = (int)e->len;
      for (int t = 0; t < T; t++) {
        ids[(size_t)b * T + t] = (size_t)t < e->len ? e->ids[t] : pad;
        types[(size_t)b * T + t] = (size_t)t < e->len ? e->type_ids[t] : 0;
      }
    }
    fwd_work w = {m, ids, types, lens, B, T};
    st = m->gpu ? dispatch_run(m->disp, fwd_run, &w, NULL, err) : fwd_run(m->be, &w);
    if (st) {
      if (st != QV_EDEVICE) st = qv_fail(err, st, "forward pass failed: %s", qv_strerror(st));
      break;
    }
    emit(m, j, at, B, T, ctx);
    at += (size_t)B;
  }
  free(ids);
  free(types);
  free(lens);
  return st;
}

/* ---- embeddings ----------------------------------------------------------------------- */

static void pool_into(const qv_model *m, float *dst, const float *h /* (T, C) */, size_t len) {
  size_t C = (size_t)m->info.dims;
  if (m->info.pooling == QV_POOL_CLS || len == 0) {
    memcpy(dst, h, C * sizeof(float));
  } else if (m->info.pooling == QV_POOL_MAX) {
    memcpy(dst, h, C * sizeof(float));
    for (size_t t = 1; t < len; t++)
      for (size_t c = 0; c < C; c++)
        if (h[t * C + c] > dst[c]) dst[c] = h[t * C + c];
  } else {
    /* accumulate in double: the sum of up to 512 rows keeps full float precision */
    double acc[4096];
    double *a = C <= 4096 ? acc : NULL;
    if (!a) return;
    for (size_t c = 0; c < C; c++) a[c] = 0;
    for (size_t t = 0; t < len; t++)
      for (size_t c = 0; c < C; c++) a[c] += h[t * C + c];
    for (size_t c = 0; c < C; c++) dst[c] = (float)(a[c] / (double)len);
  }
  if (m->info.normalize) dist_normalize(dst, C);
}

static void emit_embeddings(qv_model *m, const job *j, size_t at, int B, int T, void *ctx) {
  float *out = ctx;
  size_t C = (size_t)m->info.dims;
  for (int b = 0; b < B; b++) {
    size_t idx = j->order[at + (size_t)b];
    pool_into(m, out + idx * C, m->hidden + (size_t)b * (size_t)T * C, j->enc[idx].len);
  }
}

qv_status qv_model_encode(qv_model *m, const char *const *texts, const size_t *lens, size_t n, int truncate,
                          float *out, qv_error *err) {
  if (m->info.kind != QV_MODEL_EMBEDDING)
    return qv_fail(err, QV_EINVAL, "model %s is a reranker, not an embedding model", m->name);
  if (m->info.dims > 4096) return qv_fail(err, QV_EUNSUPPORTED, "hidden size over 4096");
  job j = {0};
  qv_status st = tokenize_all(m, &j, NULL, texts, lens, n, truncate, err);
  if (!st) {
    pthread_mutex_lock(&m->mu);
    st = run_batches(m, &j, emit_embeddings, out, err);
    pthread_mutex_unlock(&m->mu);
  }
  job_free(&j);
  return st;
}

qv_status model_encode_tokens(qv_model *m, const tok_encoding *enc, size_t n, float *out, qv_error *err) {
  if (m->info.kind != QV_MODEL_EMBEDDING)
    return qv_fail(err, QV_EINVAL, "model %s is a reranker, not an embedding model", m->name);
  if (m->info.dims > 4096) return qv_fail(err, QV_EUNSUPPORTED, "hidden size over 4096");
  /* The job borrows enc: run_batches only reads it, and job_free is not called. */
  job j = {.enc = (tok_encoding *)enc, .n = n, .order = malloc((n ? n : 1) * sizeof *j.order)};
  if (!j.order) return qv_fail(err, QV_ENOMEM, "out of memory");
  size_t limit = (size_t)m->info.max_tokens;
  qv_status st = QV_OK;
  for (size_t i = 0; i < n && !st; i++) {
    if (enc[i].len > limit)
      st = qv_fail(err, QV_ETOOLONG, "input %zu has %zu tokens; the model accepts %zu (ask for truncation to cut it)",
                   i, enc[i].len, limit);
    j.order[i] = i;
  }
  if (!st) {
    qsort_r(j.order, n, sizeof *j.order, by_len, j.enc);
    pthread_mutex_lock(&m->mu);
    st = run_batches(m, &j, emit_embeddings, out, err);
    pthread_mutex_unlock(&m->mu);
  }
  free(j.order);
  return st;
}

/* ---- reranking ------------------------------------------------------------------------ */

typedef struct rerank_ctx {
  float *logits;
  float *tmp; /* (BATCH_SEQS, num_labels) */
  qv_status st;
} rerank_ctx;

static void emit_logits(qv_model *m, const job *j, size_t at, int B, int T, void *arg) {
  rerank_ctx *rc = arg;
  if (rc->st) return;
  int labels = bert_get_config(m->bert)->num_labels;
  rc->st = bert_classify(m->bert, m->ws, m->be, rc->tmp, m->hidden, B, T);
  for (int b = 0; b < B && !rc->st; b++) rc->logits[j->order[at + (size_t)b]] = rc->tmp[(size_t)b * labels];
}

qv_status qv_model_rerank(qv_model *m, const char *query, const char *const *docs, size_t n, int truncate,
                          float *logits, qv_error *err) {
  if (m->info.kind != QV_MODEL_RERANKER)
    return qv_fail(err, QV_EINVAL, "model %s is an embedding model, not a reranker", m->name);
  job j = {0};
  int labels = bert_get_config(m->bert)->num_labels;
  rerank_ctx rc = {logits, malloc((size_t)BATCH_SEQS * (size_t)labels * sizeof(float)), QV_OK};
  qv_status st = rc.tmp ? tokenize_all(m, &j, query ? query : "", docs, NULL, n, truncate, err)
                        : qv_fail(err, QV_ENOMEM, "out of memory");
  if (!st) {
    pthread_mutex_lock(&m->mu);
    st = run_batches(m, &j, emit_logits, &rc, err);
    pthread_mutex_unlock(&m->mu);
    if (!st && rc.st) st = qv_fail(err, rc.st, "classifier failed: %s", qv_strerror(rc.st));
  }
  free(rc.tmp);
  job_free(&j);
  return st;
}

qv_status qv_model_count_tokens(qv_model *m, const char *text, size_t len, size_t *out, qv_error *err) {
  tok_encoding e = {0};
  qv_status st = tok_encode(m->tok, text, len, NULL, 0, 0, &e, err);
  *out = st ? 0 : e.len;
  tok_encoding_free(&e);
  return st;
}
