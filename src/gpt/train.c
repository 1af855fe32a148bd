/* The training loop (see train.h for the corpus pipeline and the determinism contract).
 *
 * Invariants:
 *   1. Everything random in a run comes from two generators: gpt_init(seed) for the
 *      weights and `sampler` (seeded from seed) for batch offsets. A checkpoint stores the
 *      sampler's state with the optimizer, so --resume draws the same batches.
 *   2. Validation never touches a generator: it reads fixed windows of the held-out stream.
 *   3. The step loop allocates nothing: buffers are sized before the first step, except
 *      when a device fails and the CPU takes over (invariant 4), which then allocates the
 *      CPU's activations; if it cannot, the host's state is saved before the run stops.
 *   4. On a device (gpt_dev.h) the host model is the state last copied back (at start, and
 *      at every evaluation and checkpoint) with the step, sampler state and token count it
 *      belongs to (`synced`). When the device fails and fallback is on, the run goes back
 *      to that state and continues on the CPU, so the steps after it are recomputed, not
 *      lost, and a checkpoint never holds state the device did not finish.
 */
#define _GNU_SOURCE /* strdup */
#include "gpt/train.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/clock.h"
#include "base/error.h"
#include "base/file.h"
#include "base/hash.h"
#include "base/log.h"
#include "compute/device.h"
#include "gpt/bpe.h"
#include "gpt/ckpt.h"
#include "gpt/gpt_dev.h"
#include "text/ingest.h"

void gpt_train_defaults(gpt_train_opts *o) {
  memset(o, 0, sizeof *o);
  o->vocab_size = 512;
  o->model = (gpt_config){.n_layer = 4, .n_head = 4, .n_embd = 128, .n_ctx = 128, .vocab_size = 0, .ln_eps = 1e-5f};
  o->batch = 8;
  o->accum = 1;
  o->steps = 1000;
  o->warmup = 100;
  o->lr = 6e-4f;
  o->min_lr = -1; /* lr / 10 */
  o->weight_decay = 0.1f;
  o->clip = 1.0f;
  o->beta1 = 0.9f;
  o->beta2 = 0.95f;
  o->seed = 1337;
  o->eval_every = 100;
  o->save_every = 0;
  o->eval_batches = 8;
  o->val_fraction = 0.05;
  o->chunk = (text_chunk_config){.kind = TEXT_CHUNK_STRUCTURE, .size = 256, .min = 64, .max = 254, .overlap = 0};
}

/* ---- Corpus -------------------------------------------------------------------------- */

typedef struct ids {
  int32_t *v;
  size_t n, cap;
} ids;

static int ids_push(ids *s, const int32_t *x, size_t n) {
  if (s->n + n > s->cap) {
    size_t cap = s->cap ? s->cap : 4096;
    while (cap < s->n + n) cap *= 2;
    int32_t *nv = realloc(s->v, cap * sizeof *nv);
    if (!nv) return -1;
    s->v = nv;
    s->cap = cap;
  }
  memcpy(s->v + s->n, x, n * sizeof *x);
  s->n += n;
  return 0;
}

static qv_status count_bpe(void *ctx, const char *s, size_t n, uint32_t *out, qv_error *err) {
  int32_t *v = NULL;
  size_t k = 0;
  qv_status st = gpt_bpe_encode(ctx, s, n, &v, &k);
  free(v);
  if (st) return qv_fail(err, st, "tokenizer failed");
  *out = (uint32_t)k;
  return QV_OK;
}

typedef struct corpus {
  char **srcs;       /* (ndocs) file contents */
  size_t *src_lens;
  text_doc *docs;    /* (ndocs) parsed */
  size_t ndocs;
  ids train, val;
  size_t nchunks, nval_chunks;
} corpus;

static void corpus_free(corpus *c) {
  for (size_t i = 0; i < c->ndocs; i++) {
    free(c->srcs[i]);
    text_doc_free(&c->docs[i]);
  }
  free(c->srcs);
  free(c->src_lens);
  free(c->docs);
  free(c->train.v);
  free(c->val.v);
  memset(c, 0, sizeof *c);
}

/* Reads and parses every document under the data paths. */
static qv_status corpus_read(corpus *c, const char *const *paths, size_t npaths, qv_error *err) {
  char **files = NULL;
  size_t nfiles = 0;
  qv_status st = text_find_documents(paths, npaths, &files, &nfiles, err);
  if (st) return st;
  if (!nfiles) {
    st = qv_fail(err, QV_NOTFOUND, "no documents (.md .mdx .txt .rst .html) under the data paths");
    goto done;
  }
  c->srcs = calloc(nfiles, sizeof *c->srcs);
  c->src_lens = calloc(nfiles, sizeof *c->src_lens);
  c->docs = calloc(nfiles, sizeof *c->docs);
  if (!c->srcs || !c->src_lens || !c->docs) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < nfiles && !st; i++) {
    if ((st = qv_read_file(files[i], &c->srcs[i], &c->src_lens[i], err))) break;
    st = text_parse(&c->docs[i], c->srcs[i], c->src_lens[i], (text_format)text_format_for_path(files[i]), err);
    if (st) {
      free(c->srcs[i]);
      qv_error_prefix(err, "%s", files[i]);
    } else {
      c->ndocs++;
    }
  }
done:
  for (size_t i = 0; i < nfiles; i++) free(files[i]);
  free(files);
  return st;
}

/* Chunks every document, encodes each chunk and appends it with <|endoftext|> to the
 * training or the validation stream (by a hash of its text). */
static qv_status corpus_encode(corpus *c, const gpt_bpe *bpe, const text_chunk_config *cc, double val_fraction,
                               qv_error *err) {
  int32_t eot = gpt_bpe_eot(bpe);
  if (eot < 0) return qv_fail(err, QV_EINVAL, "the tokenizer has no <|endoftext|> token");
  uint64_t cut = (uint64_t)(val_fraction * 1e6);
  qv_status st = QV_OK;
  for (size_t d = 0; d < c->ndocs && !st; d++) {
    text_chunk *ch = NULL;
    size_t nc = 0;
    if ((st = text_chunk_doc(&c->docs[d], c->srcs[d], c->src_lens[d], cc, count_bpe, (void *)bpe, &ch, &nc, err)))
      break;
    for (size_t k = 0; k < nc && !st; k++) {
      const char *s = c->docs[d].text + ch[k].start;
      size_t n = ch[k].end - ch[k].start;
      int32_t *v = NULL;
      size_t nv = 0;
      if ((st = gpt_bpe_encode(bpe, s, n, &v, &nv))) {
        qv_fail(err, st, "tokenizer failed on a chunk");
        break;
      }
      int is_val = qv_hash_bytes(s, n) % 1000000 < cut;
      ids *dst = is_val ? &c->val : &c->train;
      if ((nv && ids_push(dst, v, nv)) || ids_push(dst, &eot, 1)) st = qv_fail(err, QV_ENOMEM, "out of memory");
      free(v);
      c->nchunks++;
      c->nval_chunks += (size_t)is_val;
    }
    free(ch);
  }
  return st;
}

/* ---- Arguments kept for --resume ------------------------------------------------------- */

static char *args_to_json(const gpt_train_opts *o) {
  json_t *data = json_array();
  for (size_t i = 0; data && i < o->ndata; i++) json_array_append_new(data, json_string(o->data[i]));
  json_t *j = json_pack("{s:o, s:i, s:i, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:i, s:f}", "data",
                        data ? data : json_array(), "batch", o->batch, "accum", o->accum, "steps",
                        (json_int_t)o->steps, "warmup", (json_int_t)o->warmup, "lr", (double)o->lr, "min_lr",
                        (double)o->min_lr, "weight_decay", (double)o->weight_decay, "clip", (double)o->clip, "beta1",
                        (double)o->beta1, "beta2", (double)o->beta2, "seed", (json_int_t)o->seed, "eval_batches",
                        o->eval_batches, "val_fraction", o->val_fraction);
  char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17)) : NULL;
  json_decref(j);
  return s;
}

/* Float options went out as the double of a float: reading them back as float is exact. */
static qv_status args_from_json(gpt_train_opts *o, const char *text, json_t **keep, qv_error *err) {
  json_error_t je;
  json_t *j = json_loads(text, 0, &je);
  if (!json_is_object(j)) {
    json_decref(j);
    return qv_fail(err, QV_EFORMAT, "checkpoint: training arguments are not a JSON object");
  }
  json_t *v;
#define GETI(k, dst) \
  if (json_is_integer(v = json_object_get(j, k))) dst = json_integer_value(v)
#define GETF(k, dst) \
  if (json_is_number(v = json_object_get(j, k))) dst = (float)json_number_value(v)
  GETI("batch", o->batch);
  GETI("accum", o->accum);
  GETI("warmup", o->warmup);
  GETI("seed", o->seed);
  GETI("eval_batches", o->eval_batches);
  GETF("lr", o->lr);
  GETF("min_lr", o->min_lr);
  GETF("weight_decay", o->weight_decay);
  GETF("clip", o->clip);
  GETF("beta1", o->beta1);
  GETF("beta2", o->beta2);
  if (json_is_number(v = json_object_get(j, "val_fraction"))) o->val_fraction = json_number_value(v);
  if (!o->steps) GETI("steps", o->steps);
#undef GETI
#undef GETF
  json_t *data = json_object_get(j, "data");
  if (!o->ndata && json_array_size(data)) {
    /* the strings live in *keep until the run ends */
    size_t n = json_array_size(data);
    const char **paths = calloc(n, sizeof *paths);
    if (!paths) {
      json_decref(j);
      return qv_fail(err, QV_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
      const char *p = json_string_value(json_array_get(data, i));
      paths[i] = p ? p : "";
    }
    o->data = paths;
    o->ndata = n;
  }
  *keep = j;
  return QV_OK;
}

static char *chunking_to_json(const text_chunk_config *c, double val_fraction) {
  json_t *j = json_pack("{s:s, s:i, s:i, s:i, s:f, s:f}", "chunker", text_chunker_name(c->kind), "size", (int)c->size,
                        "min", (int)c->min, "max", (int)c->max, "overlap", c->overlap, "val_fraction", val_fraction);
  char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17)) : NULL;
  json_decref(j);
  return s;
}

static qv_status chunking_from_json(text_chunk_config *c, const char *text, qv_error *err) {
  json_error_t je;
  json_t *j = text ? json_loads(text, 0, &je) : NULL;
  qv_status st = QV_OK;
  json_t *v;
  if (!json_is_object(j)) {
    st = qv_fail(err, QV_EFORMAT, "checkpoint: no chunking configuration");
  } else if (!json_is_string(v = json_object_get(j, "chunker")) || text_chunker_parse(&c->kind, json_string_value(v))) {
    st = qv_fail(err, QV_EFORMAT, "checkpoint: bad chunker");
  } else {
    if (json_is_integer(v = json_object_get(j, "size"))) c->size = (uint32_t)json_integer_value(v);
    if (json_is_integer(v = json_object_get(j, "min"))) c->min = (uint32_t)json_integer_value(v);
    if (json_is_integer(v = json_object_get(j, "max"))) c->max = (uint32_t)json_integer_value(v);
    if (json_is_number(v = json_object_get(j, "overlap"))) c->overlap = json_number_value(v);
  }
  json_decref(j);
  return st;
}

/* ---- The run ------------------------------------------------------------------------- */

/* The model a step runs on: the device's state when dev is set, else m. */
typedef struct trainer {
  gpt_model *m;
  gpt_dev *dev;
} trainer;

static qv_status tr_forward(trainer *t, const int32_t *inp, const int32_t *tgt, int B, int T, float *loss,
                            qv_error *err) {
  if (t->dev) return gpt_dev_forward(t->dev, inp, tgt, B, T, loss, err);
  qv_status st = gpt_forward(t->m, inp, tgt, B, T);
  *loss = t->m->loss;
  return st ? qv_fail(err, st, "forward pass failed") : QV_OK;
}

/* Mean loss over the fixed validation windows (invariant 2); NaN without a held-out stream
 * or when the device failed (the caller checks it). */
static double validate(trainer *t, const ids *val, int B, int T, int nbatches) {
  if (val->n < 2) return NAN;
  size_t nwin = (val->n - 1) / (size_t)T;
  int Tv = T;
  if (nwin == 0) {
    nwin = 1;
    Tv = (int)(val->n - 1);
  }
  if (nwin > (size_t)B * (size_t)nbatches) nwin = (size_t)B * (size_t)nbatches;
  double sum = 0;
  size_t ntok = 0;
  for (size_t w = 0; w < nwin; w += (size_t)B) {
    int b = (int)(nwin - w < (size_t)B ? nwin - w : (size_t)B);
    /* consecutive windows are contiguous: inputs and targets point into the stream */
    const int32_t *inp = val->v + w * (size_t)T;
    float loss;
    qv_error ignored = {0};
    if (tr_forward(t, inp, inp + 1, b, Tv, &loss, &ignored)) return NAN;
    sum += (double)loss * b * Tv;
    ntok += (size_t)b * Tv;
  }
  return sum / (double)ntok;
}

/* Whether a device failure may continue on the CPU: gpu.fallback_to_cpu. */
static int fallback_allowed(void) {
  qv_gpu_config cfg;
  device_config(&cfg);
  return cfg.fallback_to_cpu;
}

/* Where the steps should run: o->ops (tests), else the GPU backend's GPT ops when the
 * device layer has a GPU (gpu.enabled auto or on), else NULL (the CPU). QV_EDEVICE when
 * gpu is on and no GPU with the ops is there. */
typedef struct dev_choice {
  const qv_gpt_ops *ops;
  void *ctx;
  const char *name;
} dev_choice;

static qv_status choose_device(const gpt_train_opts *o, dev_choice *d, qv_error *err) {
  *d = (dev_choice){o->ops, o->ops_ctx, o->ops_name ? o->ops_name : "test"};
  if (o->ops) return QV_OK;
  const qv_backend *gpu = device_dispatch()->gpu;
  qv_gpu_config cfg;
  device_config(&cfg);
  if (!gpu) {
    if (cfg.enabled == QV_GPU_ON) return qv_fail(err, QV_EDEVICE, "gpu is on but no GPU is in use (quiver info says why)");
    return QV_OK;
  }
  if (!gpu->gpt) {
    if (cfg.enabled == QV_GPU_ON)
      return qv_fail(err, QV_EDEVICE, "the %s backend has no GPT training ops (rebuild the plugin)", gpu->name);
    LOG_WARN("gpt train: the %s backend has no GPT training ops; training on the CPU", gpu->name);
    return QV_OK;
  }
  /* code that reports no error can still compute wrong results: a tiny model's steps
   * must agree with the CPU's before the run goes there */
  qv_error cerr = {0};
  if (gpt_dev_selfcheck(gpu->gpt, gpu->ctx, 0, &cerr)) {
    if (cfg.enabled == QV_GPU_ON)
      return qv_fail(err, QV_EDEVICE, "the %s backend failed its GPT self-check: %s", gpu->name, cerr.msg);
    LOG_WARN("gpt train: the %s backend failed its GPT self-check (%s); training on the CPU", gpu->name, cerr.msg);
    return QV_OK;
  }
  *d = (dev_choice){gpu->gpt, gpu->ctx, gpu->name};
  return QV_OK;
}

/* The training state on the chosen device; *dev stays NULL (the CPU) when the device cannot
 * take it and fallback is allowed. */
static qv_status open_device(const gpt_train_opts *o, const dev_choice *c, gpt_model *m, int B, int T, gpt_dev **dev,
                             const char **where, qv_error *err) {
  *dev = NULL;
  *where = "cpu";
  if (!c->ops) return QV_OK;
  qv_error derr = {0};
  qv_status st = gpt_dev_create(dev, c->ops, c->ctx, m, B, T, &derr);
  if (st) {
    if (!fallback_allowed()) return qv_fail(err, st, "%s", derr.msg);
    LOG_WARN("gpt train: cannot train on the %s device (%s); training on the CPU", c->name, derr.msg);
    return QV_OK;
  }
  *where = c->name;
  return QV_OK;
}

static qv_status ensure_dir(const char *dir, qv_error *err) {
  if (mkdir(dir, 0755)) {
    if (errno != EEXIST) return qv_fail(err, errno, "%s: cannot create the folder: %s", dir, strerror(errno));
    return QV_OK;
  }
  qv_status st = qv_fsync_parent(dir); /* the new folder's name is durable too */
  return st ? qv_fail(err, st, "%s: fsync of the parent folder failed", dir) : QV_OK;
}

/* Writes out/step-N: the optimizer state first, so a folder whose model is written is
 * complete (ckpt.h 1). */
static qv_status save_checkpoint(gpt_model *m, const char *dir, long step, float loss, double val_loss,
                                 const gpt_rng *sampler, uint64_t tokens_seen, const gpt_train_opts *o,
                                 char *chunk_json, const char *args_json, const char *tok_json, qv_error *err) {
  gpt_ckpt_meta meta = {.step = step, .train_loss = loss, .val_loss = val_loss, .chunking = chunk_json,
                        .seed = o->seed, .tokens_seen = tokens_seen};
  qv_status st;
  if ((st = ensure_dir(dir, err)) || (st = gpt_save_optimizer(m, dir, step, sampler->s, args_json, err)) ||
      (st = gpt_save(m, dir, &meta, tok_json, err)))
    return st;
  return QV_OK;
}

/* Saves the host's model as out/step-<step> (the state synced from a device that then
 * failed); the failure to report is the caller's, so this one is logged. */
static qv_status save_synced(gpt_model *m, const gpt_train_opts *o, long step, float loss, double val_loss,
                             const gpt_rng *sampler, uint64_t tokens_seen, char *chunk_json, const char *args_json,
                             const char *tok_json) {
  char dir[4096];
  qv_error e = {0};
  snprintf(dir, sizeof dir, "%s/step-%06ld", o->out, step);
  qv_status st = save_checkpoint(m, dir, step, loss, val_loss, sampler, tokens_seen, o, chunk_json, args_json,
                                 tok_json, &e);
  if (st) LOG_WARN("gpt train: cannot save %s: %s", dir, e.msg);
  else LOG_WARN("gpt train: saved %s (continue with --resume)", dir);
  return st;
}

qv_status gpt_train_run(const gpt_train_opts *opts, qv_error *err) {
  gpt_train_opts o = *opts;
  qv_status st = QV_OK;
  corpus c = {0};
  gpt_bpe *bpe = NULL;
  gpt_model *m = NULL;
  json_t *resume_args = NULL;
  char *args_json = NULL, *chunk_json = NULL, *tok_json = NULL, *rargs = NULL;
  int32_t *inp = NULL, *tgt = NULL;
  const char **owned_data = NULL;
  gpt_ckpt_meta rmeta = {0};
  trainer tr = {NULL, NULL};
  long start = 0;
  gpt_rng sampler;
  gpt_rng_seed(&sampler, o.seed ^ 0x5A3C1E2D4B6F7081ull);

  if (!o.out) return qv_fail(err, QV_EINVAL, "no output folder");
  if (o.resume) {
    /* the model, tokenizer, chunking and optimizer arguments come from the checkpoint */
    if ((st = gpt_load(&m, o.resume, &rmeta, err))) goto done;
    if ((st = gpt_bpe_load(&bpe, o.resume, err))) goto done; /* the folder's tokenizer.json */
    if ((st = chunking_from_json(&o.chunk, rmeta.chunking, err))) goto done;
    /* read the arguments first: batch size sizes the activations */
    {
      gpt_model *probe = NULL;
      if ((st = gpt_create(&probe, &m->cfg, err))) goto done;
      if ((st = gpt_moments_alloc(probe, err)) ||
          (st = gpt_load_optimizer(probe, o.resume, &start, &sampler.s, &rargs, err))) {
        gpt_free(probe);
        goto done;
      }
      gpt_free(probe);
    }
    size_t ndata_given = o.ndata;
    if ((st = args_from_json(&o, rargs ? rargs : "{}", &resume_args, err))) goto done;
    if (!ndata_given && o.ndata) owned_data = (const char **)o.data;
    o.model = m->cfg;
  }
  if (!o.ndata) {
    st = qv_fail(err, QV_EINVAL, "no training data (--data PATH)");
    goto done;
  }
  if (o.batch <= 0 || o.accum <= 0 || o.steps <= 0 || o.warmup < 0 || o.eval_batches <= 0 || !(o.lr > 0) ||
      o.val_fraction < 0 || o.val_fraction >= 1) {
    st = qv_fail(err, QV_EINVAL, "batch, accum, steps, eval batches and lr must be positive, val fraction in [0, 1)");
    goto done;
  }
  if (o.min_lr < 0) o.min_lr = o.lr / 10;
  if (start >= o.steps) {
    st = qv_fail(err, QV_EINVAL, "the checkpoint is at step %ld; --steps %ld leaves nothing to do", start, o.steps);
    goto done;
  }

  if ((st = corpus_read(&c, o.data, o.ndata, err))) goto done;
  if (!bpe) {
    if (o.tokenizer) {
      if ((st = gpt_bpe_load(&bpe, o.tokenizer, err))) goto done;
    } else {
      const char **texts = calloc(c.ndocs, sizeof *texts);
      size_t *lens = calloc(c.ndocs, sizeof *lens);
      if (!texts || !lens) {
        free(texts);
        free(lens);
        st = qv_fail(err, QV_ENOMEM, "out of memory");
        goto done;
      }
      for (size_t i = 0; i < c.ndocs; i++) texts[i] = c.docs[i].text, lens[i] = c.docs[i].len;
      st = gpt_bpe_train(&bpe, texts, lens, c.ndocs, o.vocab_size, o.on_tok, o.ctx, err);
      free(texts);
      free(lens);
      if (st) goto done;
    }
  }
  if ((st = corpus_encode(&c, bpe, &o.chunk, o.val_fraction, err))) goto done;
  if (!(tok_json = gpt_bpe_to_json(bpe)) || !(args_json = args_to_json(&o)) ||
      !(chunk_json = chunking_to_json(&o.chunk, o.val_fraction))) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto done;
  }

  if (!m) {
    o.model.vocab_size = (int)gpt_bpe_vocab_size(bpe);
    o.model.ln_eps = 1e-5f;
    if ((st = gpt_create(&m, &o.model, err))) goto done;
    gpt_init(m, o.seed);
  } else if ((size_t)m->cfg.vocab_size < gpt_bpe_vocab_size(bpe)) {
    st = qv_fail(err, QV_EFORMAT, "the checkpoint's vocabulary (%d) is smaller than its tokenizer's (%zu)",
                 m->cfg.vocab_size, gpt_bpe_vocab_size(bpe));
    goto done;
  }
  m->pool = o.pool;
  int B = o.batch, T = m->cfg.n_ctx;
  if (c.train.n < (size_t)T + 1) {
    st = qv_fail(err, QV_EINVAL, "the corpus has %zu training tokens; a context of %d needs at least %d", c.train.n, T,
                 T + 1);
    goto done;
  }
  /* a device run keeps only the moments on the host: the CPU's activations and gradients
   * are allocated if the run ever comes back to the CPU */
  dev_choice dc;
  if ((st = choose_device(&o, &dc, err))) goto done;
  if ((st = dc.ops ? gpt_moments_alloc(m, err) : gpt_train_alloc(m, B, T, err))) goto done;
  if (o.resume && (st = gpt_load_optimizer(m, o.resume, NULL, NULL, NULL, err))) goto done;
  inp = malloc((size_t)B * T * sizeof *inp);
  tgt = malloc((size_t)B * T * sizeof *tgt);
  if (!inp || !tgt) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto done;
  }
  if ((st = ensure_dir(o.out, err))) goto done;
  LOG_INFO("gpt train: %zu documents, %zu chunks (%zu held out), %zu training and %zu validation tokens, "
           "%zu parameters",
           c.ndocs, c.nchunks, c.nval_chunks, c.train.n, c.val.n, m->nparams);

  gpt_adamw adam = {o.lr, o.beta1, o.beta2, 1e-8f, o.weight_decay};
  uint64_t tokens_seen = o.resume ? rmeta.tokens_seen : 0;
  size_t span = c.train.n - (size_t)T; /* window starts in [0, span) */
  tr.m = m;
  const char *where = "cpu";
  if ((st = open_device(&o, &dc, m, B, T, &tr.dev, &where, err))) goto done;
  if (!tr.dev && !m->acts && (st = gpt_train_alloc(m, B, T, err))) goto done;
  double last_val = NAN;
  /* invariant 4: the state the host model holds */
  struct {
    long step;
    gpt_rng sampler;
    uint64_t tokens_seen;
    double last_val;
    float loss; /* that step's training loss, for a checkpoint of it */
  } synced = {start, sampler, tokens_seen, NAN, NAN};
  long first = start; /* this run's (or this device's) first step, for tokens/s */
  double t0 = qv_monotonic_s();
  for (long step = start; step < o.steps; step++) {
    float lr = gpt_lr_at(step, o.warmup, o.steps, o.lr, o.min_lr);
    adam.lr = lr;
    if (tr.dev) gpt_dev_zero_grad(tr.dev);
    else gpt_zero_grad(m);
    double loss = 0, norm = NAN;
    int dev_down = 0;
    for (int a = 0; a < o.accum && !dev_down; a++) {
      for (int b = 0; b < B; b++) {
        size_t s0 = (size_t)(gpt_rng_u64(&sampler) % span);
        memcpy(inp + (size_t)b * T, c.train.v + s0, (size_t)T * sizeof *inp);
        memcpy(tgt + (size_t)b * T, c.train.v + s0 + 1, (size_t)T * sizeof *tgt);
      }
      float l;
      qv_error ferr = {0};
      if ((st = tr_forward(&tr, inp, tgt, B, T, &l, &ferr))) {
        if (tr.dev && st == QV_EDEVICE) {
          dev_down = 1;
          break;
        }
        qv_fail(err, st, "step %ld: %s", step + 1, ferr.msg);
        goto done;
      }
      if (tr.dev) gpt_dev_backward(tr.dev, 1.0f / (float)o.accum);
      else gpt_backward(m, 1.0f / (float)o.accum);
      loss += l / (double)o.accum;
    }
    st = QV_OK;
    if (!dev_down && !isfinite(loss)) {
      st = qv_fail(err, QV_ENONFINITE, "the loss is not finite at step %ld (lower --lr or raise --warmup)",
                   step + 1);
      goto done;
    }
    if (!dev_down) {
      if (tr.dev) {
        norm = gpt_dev_clip_grad(tr.dev, o.clip);
        gpt_dev_adamw_step(tr.dev, &adam, step + 1);
      } else {
        norm = gpt_clip_grad(m, o.clip);
        gpt_adamw_step(m, &adam, step + 1);
      }
    }
    tokens_seen += (uint64_t)B * T * o.accum;
    long done_steps = step + 1;
    int last = done_steps == o.steps;
    int save = last || (o.save_every > 0 && done_steps % o.save_every == 0);
    int eval = save || (o.eval_every > 0 && done_steps % o.eval_every == 0);
    double val = NAN;
    if (!dev_down && eval) val = validate(&tr, &c.val, B, T, o.eval_batches);
    /* a device's state comes back to the host at every evaluation and checkpoint */
    qv_error derr = {0};
    if (tr.dev && (dev_down || gpt_dev_status(tr.dev, &derr) || (eval && gpt_dev_download(tr.dev, m, &derr)))) {
      if (!derr.msg[0]) gpt_dev_status(tr.dev, &derr);
      if (!fallback_allowed()) {
        st = qv_fail(err, QV_EDEVICE, "the %s device failed at step %ld: %s", where, done_steps, derr.msg);
        goto done;
      }
      LOG_WARN("gpt train: the %s device failed at step %ld (%s); continuing on the CPU from step %ld, "
               "the last state copied back",
               where, done_steps, derr.msg, synced.step);
      gpt_dev_free(tr.dev);
      tr.dev = NULL;
      where = "cpu";
      if (!m->acts && (st = gpt_train_alloc(m, B, T, err))) {
        /* keep what the device finished: the host holds the synced state */
        if (synced.step > start)
          save_synced(m, &o, synced.step, synced.loss, synced.last_val, &synced.sampler, synced.tokens_seen,
                      chunk_json, args_json, tok_json);
        goto done;
      }
      step = synced.step - 1; /* the loop's step++ makes it synced.step */
      sampler = synced.sampler;
      tokens_seen = synced.tokens_seen;
      last_val = synced.last_val;
      first = synced.step;
      t0 = qv_monotonic_s();
      continue;
    }
    if (eval) {
      last_val = val;
      synced.step = done_steps;
      synced.sampler = sampler;
      synced.tokens_seen = tokens_seen;
      synced.last_val = last_val;
      synced.loss = (float)loss;
    }
    char dir[4096];
    const char *saved = NULL;
    if (save) {
      snprintf(dir, sizeof dir, "%s/step-%06ld", o.out, done_steps);
      if ((st = save_checkpoint(m, dir, done_steps, (float)loss, last_val, &sampler, tokens_seen, &o, chunk_json,
                                args_json, tok_json, err)))
        goto done;
      saved = dir;
    }
    double el = qv_monotonic_s() - t0;
    long ran = done_steps - first;
    gpt_train_stats s = {.step = done_steps, .steps = o.steps, .loss = (float)loss, .lr = lr, .grad_norm = norm,
                         .val_loss = val, .elapsed_s = el,
                         .tokens_per_s = el > 0 ? (double)ran * B * T * o.accum / el : 0,
                         .eta_s = el / (double)ran * (double)(o.steps - done_steps), .tokens_seen = tokens_seen,
                         .saved = saved, .ndocs = c.ndocs, .nchunks = c.nchunks, .nval_chunks = c.nval_chunks,
                         .train_tokens = c.train.n, .val_tokens = c.val.n, .nparams = m->nparams,
                         .first = step == start, .device = where};
    if (o.on_step && o.on_step(o.ctx, &s) && !last) {
      if (!save) {
        /* the host needs the device's state for this checkpoint; a device that cannot give
         * it leaves the last synced state to save (invariant 4) */
        qv_error derr2 = {0};
        if (tr.dev && gpt_dev_download(tr.dev, m, &derr2)) {
          LOG_WARN("gpt train: the %s device failed at step %ld (%s); saving step %ld, the last state copied back",
                   where, done_steps, derr2.msg, synced.step);
          if (synced.step > start &&
              (st = save_synced(m, &o, synced.step, synced.loss, synced.last_val, &synced.sampler,
                                synced.tokens_seen, chunk_json, args_json, tok_json)))
            qv_fail(err, st, "saving step %ld failed", synced.step);
          break;
        }
        snprintf(dir, sizeof dir, "%s/step-%06ld", o.out, done_steps);
        if ((st = save_checkpoint(m, dir, done_steps, (float)loss, last_val, &sampler, tokens_seen, &o,
                                  chunk_json, args_json, tok_json, err)))
          goto done;
      }
      break;
    }
  }
done:
  gpt_dev_free(tr.dev);
  free(inp);
  free(tgt);
  free(args_json);
  free(chunk_json);
  free(tok_json);
  free(rargs);
  free(owned_data);
  json_decref(resume_args);
  gpt_ckpt_meta_free(&rmeta);
  gpt_free(m);
  gpt_bpe_free(bpe);
  corpus_free(&c);
  return st;
}
