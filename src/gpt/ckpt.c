/* Checkpoint folders (format and invariants: ckpt.h). */
#define _GNU_SOURCE /* mkostemp */
#include "gpt/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>

#include "base/error.h"
#include "base/file.h"
#include "model/safetensors.h"

void gpt_ckpt_meta_free(gpt_ckpt_meta *m) {
  if (!m) return;
  free(m->chunking);
  m->chunking = NULL;
}

/* ---- Atomic files ---------------------------------------------------------------------- */

typedef struct part {
  const void *data;
  size_t len;
} part;

static qv_status write_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len) {
    ssize_t w = write(fd, p, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    len -= (size_t)w;
  }
  return QV_OK;
}

/* Invariant 1: tmp beside the target, fsync, rename, fsync the folder. */
static qv_status atomic_write(const char *path, const part *parts, size_t nparts, qv_error *err) {
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 16);
  if (!tmp) return qv_fail(err, QV_ENOMEM, "out of memory");
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".tmp-XXXXXX", 12);
  qv_status st = QV_OK;
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    st = errno;
    qv_fail(err, st, "%s: cannot create a temporary file: %s", path, strerror(st));
    free(tmp);
    return st;
  }
  if (fchmod(fd, 0644)) st = errno;
  for (size_t i = 0; i < nparts && !st; i++) st = write_all(fd, parts[i].data, parts[i].len);
  if (!st && fsync(fd)) st = errno;
  if (close(fd) && !st) st = errno;
  if (!st && rename(tmp, path)) st = errno;
  if (st) {
    unlink(tmp);
    qv_fail(err, st, "%s: write failed: %s", path, strerror(st));
  } else if ((st = qv_fsync_parent(path))) {
    qv_fail(err, st, "%s: fsync of the folder failed", path);
  }
  free(tmp);
  return st;
}

qv_status gpt_ckpt_write_file(const char *path, const void *data, size_t len, qv_error *err) {
  part p = {data, len};
  return atomic_write(path, &p, 1, err);
}

/* ---- safetensors writer -------------------------------------------------------------- */

qv_status gpt_st_write(const char *path, const gpt_st_entry *t, size_t n, const char *const *meta_kv,
                       size_t nmeta, qv_error *err) {
  qv_status st = QV_OK;
  json_t *h = json_object();
  part *parts = calloc(n + 2, sizeof *parts);
  char *hdr = NULL;
  if (!h || !parts) goto oom;
  if (nmeta) {
    json_t *md = json_object();
    if (!md || json_object_set_new(h, "__metadata__", md)) goto oom;
    for (size_t i = 0; i < nmeta; i++)
      if (json_object_set_new(md, meta_kv[2 * i], json_string(meta_kv[2 * i + 1]))) goto oom;
  }
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    size_t numel = (size_t)t[i].shape[0] * (size_t)(t[i].ndim == 2 ? t[i].shape[1] : 1);
    json_t *e = json_pack("{s:s, s:[], s:[I, I]}", "dtype", "F32", "shape", "data_offsets", (json_int_t)off,
                          (json_int_t)(off + numel * 4));
    if (!e) goto oom;
    for (int d = 0; d < t[i].ndim; d++) json_array_append_new(json_object_get(e, "shape"), json_integer(t[i].shape[d]));
    if (json_object_set_new(h, t[i].name, e)) goto oom;
    parts[i + 2] = (part){t[i].data, numel * 4};
    off += numel * 4;
  }
  char *text = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!text) goto oom;
  size_t tl = strlen(text), padded = (tl + 7) & ~(size_t)7; /* data starts 8-byte aligned */
  hdr = malloc(8 + padded);
  if (!hdr) {
    free(text);
    goto oom;
  }
  for (int i = 0; i < 8; i++) hdr[i] = (char)(((uint64_t)padded >> (8 * i)) & 0xff);
  memcpy(hdr + 8, text, tl);
  memset(hdr + 8 + tl, ' ', padded - tl);
  free(text);
  parts[0] = (part){hdr, 8 + padded};
  parts[1] = (part){"", 0};
  st = atomic_write(path, parts, n + 2, err);
  goto done;
oom:
  st = qv_fail(err, QV_ENOMEM, "%s: out of memory", path);
done:
  json_decref(h);
  free(parts);
  free(hdr);
  return st;
}

/* ---- Save ---------------------------------------------------------------------------- */

static char *path_join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *p = malloc(a + b + 2);
  if (!p) return NULL;
  memcpy(p, dir, a);
  p[a] = '/';
  memcpy(p + a + 1, name, b + 1);
  return p;
}

/* 1e-5f printed as the double 1e-05, not 9.99999975e-06 */
static double eps_double(float e) {
  char b[32];
  snprintf(b, sizeof b, "%.7g", (double)e);
  return strtod(b, NULL);
}

static json_t *loss_json(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static void fmt_loss(char *buf, size_t n, double v) {
  if (isfinite(v)) snprintf(buf, n, "%.9g", v);
  else snprintf(buf, n, "nan");
}

qv_status gpt_save(const gpt_model *m, const char *dir, const gpt_ckpt_meta *meta_in,
                   const char *tokenizer_json, qv_error *err) {
  gpt_ckpt_meta meta = {0};
  meta.train_loss = meta.val_loss = NAN;
  if (meta_in) meta = *meta_in;
  if (!meta.timestamp[0]) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(meta.timestamp, sizeof meta.timestamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
  }
  if (mkdir(dir, 0755)) {
    if (errno != EEXIST)
      return qv_fail(err, errno, "%s: cannot create the checkpoint folder: %s", dir, strerror(errno));
  } else {
    qv_status fs = qv_fsync_parent(dir); /* the new folder's name is durable too */
    if (fs) return qv_fail(err, fs, "%s: fsync of the parent folder failed", dir);
  }
  qv_status st = QV_OK;
  char *path = NULL, *text = NULL;
  gpt_st_entry *ents = NULL;
  json_t *chunking = NULL;
  if (meta.chunking) {
    json_error_t je;
    chunking = json_loads(meta.chunking, 0, &je);
    if (!json_is_object(chunking)) {
      json_decref(chunking);
      return qv_fail(err, QV_EINVAL, "chunking metadata is not a JSON object");
    }
  }
  const gpt_config *c = &m->cfg;
  if (tokenizer_json) {
    if (!(path = path_join(dir, "tokenizer.json"))) goto oom;
    if ((st = gpt_ckpt_write_file(path, tokenizer_json, strlen(tokenizer_json), err))) goto done;
    free(path);
    path = NULL;
  }
  json_t *q = json_pack("{s:I, s:o, s:o, s:o, s:s, s:I, s:I}", "step", (json_int_t)meta.step, "train_loss",
                        loss_json(meta.train_loss), "val_loss", loss_json(meta.val_loss), "chunking",
                        chunking ? json_incref(chunking) : json_null(), "timestamp", meta.timestamp, "seed",
                        (json_int_t)meta.seed, "tokens_seen", (json_int_t)meta.tokens_seen);
  json_t *cfg = q ? json_pack("{s:s, s:[s], s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:s, s:b, s:o}", "model_type",
                              "gpt2", "architectures", "GPT2LMHeadModel", "n_layer", c->n_layer, "n_head",
                              c->n_head, "n_embd", c->n_embd, "n_positions", c->n_ctx, "n_ctx", c->n_ctx,
                              "vocab_size", c->vocab_size, "layer_norm_epsilon", eps_double(c->ln_eps),
                              "activation_function", "gelu_new", "tie_word_embeddings", 1, "quiver", q)
                  : NULL;
  if (!cfg) goto oom;
  text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
  json_decref(cfg);
  if (!text) goto oom;
  if (!(path = path_join(dir, "config.json"))) goto oom;
  if ((st = gpt_ckpt_write_file(path, text, strlen(text), err))) goto done;
  free(path);
  path = NULL;

  size_t nt = gpt_tensor_count(c);
  gpt_tensor_info *info = calloc(nt, sizeof *info);
  ents = calloc(nt, sizeof *ents);
  if (!info || !ents) {
    free(info);
    goto oom;
  }
  for (size_t i = 0; i < nt; i++) {
    gpt_tensor_at(c, i, &info[i]);
    ents[i] = (gpt_st_entry){info[i].name, info[i].ndim, {info[i].shape[0], info[i].shape[1]},
                             m->params + info[i].offset};
  }
  char step[32], seed[32], tokens[32], tl[32], vl[32];
  snprintf(step, sizeof step, "%ld", meta.step);
  snprintf(seed, sizeof seed, "%llu", (unsigned long long)meta.seed);
  snprintf(tokens, sizeof tokens, "%llu", (unsigned long long)meta.tokens_seen);
  fmt_loss(tl, sizeof tl, meta.train_loss);
  fmt_loss(vl, sizeof vl, meta.val_loss);
  char *chunk_text = chunking ? json_dumps(chunking, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  const char *kv[] = {"format",    "pt",      "step",       step, "train_loss", tl, "val_loss", vl,
                      "timestamp", meta.timestamp, "seed", seed, "tokens_seen", tokens, "chunking",
                      chunk_text ? chunk_text : "null"};
  if ((path = path_join(dir, "model.safetensors")))
    st = gpt_st_write(path, ents, nt, kv, sizeof kv / sizeof *kv / 2, err);
  free(chunk_text);
  free(info);
  if (!path) goto oom;
  goto done;
oom:
  st = qv_fail(err, QV_ENOMEM, "%s: out of memory writing the checkpoint", dir);
done:
  json_decref(chunking);
  free(ents);
  free(path);
  free(text);
  return st;
}

/* ---- Load ---------------------------------------------------------------------------- */

static qv_status cfg_int(json_t *j, const char *k1, const char *k2, int *out, qv_error *err) {
  json_t *v = json_object_get(j, k1);
  if (!v && k2) v = json_object_get(j, k2);
  if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1 << 24))
    return qv_fail(err, QV_EFORMAT, "config.json: \"%s\" is missing or not a positive integer", k1);
  *out = (int)json_integer_value(v);
  return QV_OK;
}

static double json_loss(json_t *v) { return json_is_number(v) ? json_number_value(v) : NAN; }

qv_status gpt_ckpt_parse_config(const char *text, size_t len, gpt_config *cfg, gpt_ckpt_meta *meta,
                                qv_error *err) {
  if (meta) {
    memset(meta, 0, sizeof *meta);
    meta->train_loss = meta->val_loss = NAN;
  }
  qv_status st = QV_OK;
  json_error_t je;
  json_t *j = json_loadb(text, len, 0, &je);
  if (!j) return qv_fail(err, QV_EJSON, "line %d: %s", je.line, je.text);
  if (!json_is_object(j)) {
    st = qv_fail(err, QV_EFORMAT, "not a JSON object");
    goto done;
  }
  json_t *mt = json_object_get(j, "model_type");
  if (mt && (!json_is_string(mt) || strcmp(json_string_value(mt), "gpt2"))) {
    st = qv_fail(err, QV_EUNSUPPORTED, "model_type is not \"gpt2\"");
    goto done;
  }
  json_t *act = json_object_get(j, "activation_function");
  if (act && (!json_is_string(act) || strcmp(json_string_value(act), "gelu_new"))) {
    st = qv_fail(err, QV_EUNSUPPORTED, "activation_function must be \"gelu_new\"");
    goto done;
  }
  gpt_config c = {0};
  c.ln_eps = 1e-5f;
  if ((st = cfg_int(j, "n_layer", NULL, &c.n_layer, err)) || (st = cfg_int(j, "n_head", NULL, &c.n_head, err)) ||
      (st = cfg_int(j, "n_embd", NULL, &c.n_embd, err)) ||
      (st = cfg_int(j, "n_positions", "n_ctx", &c.n_ctx, err)) ||
      (st = cfg_int(j, "vocab_size", NULL, &c.vocab_size, err)))
    goto done;
  json_t *eps = json_object_get(j, "layer_norm_epsilon");
  if (json_is_number(eps)) c.ln_eps = (float)json_number_value(eps);
  if ((st = gpt_config_check(&c, err))) goto done;
  *cfg = c;
  json_t *q = json_object_get(j, "quiver");
  if (meta && json_is_object(q)) {
    json_t *v;
    if (json_is_integer(v = json_object_get(q, "step"))) meta->step = (long)json_integer_value(v);
    meta->train_loss = json_loss(json_object_get(q, "train_loss"));
    meta->val_loss = json_loss(json_object_get(q, "val_loss"));
    if (json_is_string(v = json_object_get(q, "timestamp")))
      snprintf(meta->timestamp, sizeof meta->timestamp, "%s", json_string_value(v));
    if (json_is_integer(v = json_object_get(q, "seed"))) meta->seed = (uint64_t)json_integer_value(v);
    if (json_is_integer(v = json_object_get(q, "tokens_seen")))
      meta->tokens_seen = (uint64_t)json_integer_value(v);
    if (json_is_object(v = json_object_get(q, "chunking")) &&
        !(meta->chunking = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER)))
      st = qv_fail(err, QV_ENOMEM, "out of memory");
  }
done:
  json_decref(j);
  return st;
}

qv_status gpt_ckpt_read_config(const char *dir, gpt_config *cfg, gpt_ckpt_meta *meta, qv_error *err) {
  if (meta) {
    memset(meta, 0, sizeof *meta);
    meta->train_loss = meta->val_loss = NAN;
  }
  char *path = path_join(dir, "config.json");
  if (!path) return qv_fail(err, QV_ENOMEM, "out of memory");
  char *buf = NULL;
  size_t n = 0;
  qv_status st = qv_read_file(path, &buf, &n, err);
  if (st == ENOENT) st = qv_fail(err, QV_NOTFOUND, "%s: %s", path, strerror(ENOENT));
  else if (!st && (st = gpt_ckpt_parse_config(buf, n, cfg, meta, err))) qv_error_prefix(err, "%s", path);
  free(buf);
  free(path);
  return st;
}

qv_status gpt_load(gpt_model **out, const char *dir, gpt_ckpt_meta *meta, qv_error *err) {
  *out = NULL;
  gpt_model *m = NULL;
  st_file *f = NULL;
  char *path = NULL;
  gpt_config c;
  qv_status st = gpt_ckpt_read_config(dir, &c, meta, err);
  if (st) goto done;
  if ((st = gpt_create(&m, &c, err))) goto done;
  if (!(path = path_join(dir, "model.safetensors"))) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto done;
  }
  if ((st = st_open(&f, path, err))) goto done;
  size_t nt = gpt_tensor_count(&c);
  for (size_t i = 0; i < nt; i++) {
    gpt_tensor_info t;
    gpt_tensor_at(&c, i, &t);
    char pref[64];
    snprintf(pref, sizeof pref, "transformer.%s", t.name);
    const char *name = st_find(f, t.name) ? t.name : pref; /* invariant 2 */
    const float *data;
    if ((st = st_get_f32(f, name, t.shape, t.ndim, &data, err))) {
      qv_error_prefix(err, "%s", path);
      goto done;
    }
    memcpy(m->params + t.offset, data, t.numel * sizeof(float));
  }
  *out = m;
  m = NULL;
done:
  if (st && meta) gpt_ckpt_meta_free(meta);
  st_close(f);
  free(path);
  gpt_free(m);
  return st;
}

/* ---- Listing ------------------------------------------------------------------------- */

static int by_step(const void *a, const void *b) {
  const gpt_ckpt_entry *x = a, *y = b;
  if (x->meta.step != y->meta.step) return x->meta.step < y->meta.step ? -1 : 1;
  return strcmp(x->dir, y->dir);
}

void gpt_ckpt_list_free(gpt_ckpt_entry *e, size_t n) {
  for (size_t i = 0; e && i < n; i++) {
    free(e[i].dir);
    gpt_ckpt_meta_free(&e[i].meta);
  }
  free(e);
}

static qv_status list_add(gpt_ckpt_entry **v, size_t *n, size_t *cap, const char *dir, qv_error *err) {
  gpt_ckpt_entry e = {0};
  qv_error ignored = {0};
  /* a folder without a readable config.json is simply not a checkpoint */
  if (gpt_ckpt_read_config(dir, &e.cfg, &e.meta, &ignored)) return QV_OK;
  e.nparams = gpt_param_count(&e.cfg);
  if (!(e.dir = strdup(dir))) goto oom;
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 16;
    gpt_ckpt_entry *nv = realloc(*v, nc * sizeof *nv);
    if (!nv) goto oom;
    *v = nv;
    *cap = nc;
  }
  (*v)[(*n)++] = e;
  return QV_OK;
oom:
  free(e.dir);
  gpt_ckpt_meta_free(&e.meta);
  return qv_fail(err, QV_ENOMEM, "out of memory");
}

qv_status gpt_ckpt_list(const char *dir, gpt_ckpt_entry **out, size_t *n, long *best, qv_error *err) {
  *out = NULL;
  *n = 0;
  *best = -1;
  gpt_ckpt_entry *v = NULL;
  size_t nv = 0, cap = 0;
  qv_status st = list_add(&v, &nv, &cap, dir, err);
  DIR *d = opendir(dir);
  if (!d) {
    gpt_ckpt_list_free(v, nv);
    return qv_fail(err, errno == ENOENT ? QV_NOTFOUND : errno, "%s: %s", dir, strerror(errno));
  }
  struct dirent *de;
  while (!st && (de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char *p = path_join(dir, de->d_name);
    struct stat sb;
    if (!p) st = qv_fail(err, QV_ENOMEM, "out of memory");
    else if (!stat(p, &sb) && S_ISDIR(sb.st_mode)) st = list_add(&v, &nv, &cap, p, err);
    free(p);
  }
  closedir(d);
  if (st) {
    gpt_ckpt_list_free(v, nv);
    return st;
  }
  if (!nv) return qv_fail(err, QV_NOTFOUND, "%s: no checkpoints (folders with config.json)", dir);
  qsort(v, nv, sizeof *v, by_step);
  for (size_t i = 0; i < nv; i++)
    if (isfinite(v[i].meta.val_loss) && (*best < 0 || v[i].meta.val_loss < v[*best].meta.val_loss)) *best = (long)i;
  *out = v;
  *n = nv;
  return QV_OK;
}

/* ---- Optimizer state ----------------------------------------------------------------- */

qv_status gpt_save_optimizer(const gpt_model *m, const char *dir, long step, uint64_t rng, const char *args_json,
                             qv_error *err) {
  if (!m->m || !m->v) return qv_fail(err, QV_EINVAL, "the model has no optimizer state");
  size_t nt = gpt_tensor_count(&m->cfg);
  gpt_st_entry *ents = calloc(2 * nt, sizeof *ents);
  char(*names)[56] = calloc(2 * nt, sizeof *names);
  char *path = path_join(dir, "optimizer.safetensors");
  qv_status st;
  if (!ents || !names || !path) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < nt; i++) {
    gpt_tensor_info t;
    gpt_tensor_at(&m->cfg, i, &t);
    snprintf(names[2 * i], sizeof names[0], "m.%s", t.name);
    snprintf(names[2 * i + 1], sizeof names[0], "v.%s", t.name);
    ents[2 * i] = (gpt_st_entry){names[2 * i], t.ndim, {t.shape[0], t.shape[1]}, m->m + t.offset};
    ents[2 * i + 1] = (gpt_st_entry){names[2 * i + 1], t.ndim, {t.shape[0], t.shape[1]}, m->v + t.offset};
  }
  char s_step[32], s_rng[32];
  snprintf(s_step, sizeof s_step, "%ld", step);
  snprintf(s_rng, sizeof s_rng, "%llu", (unsigned long long)rng);
  const char *kv[] = {"step", s_step, "rng", s_rng, "args", args_json ? args_json : "{}"};
  st = gpt_st_write(path, ents, 2 * nt, kv, 3, err);
done:
  free(ents);
  free(names);
  free(path);
  return st;
}

qv_status gpt_load_optimizer(gpt_model *m, const char *dir, long *step, uint64_t *rng, char **args_json,
                             qv_error *err) {
  if (args_json) *args_json = NULL;
  if (!m->m || !m->v) return qv_fail(err, QV_EINVAL, "the model has no optimizer state allocated");
  char *path = path_join(dir, "optimizer.safetensors");
  if (!path) return qv_fail(err, QV_ENOMEM, "out of memory");
  st_file *f = NULL;
  qv_status st = st_open(&f, path, err);
  if (st) goto done;
  size_t nt = gpt_tensor_count(&m->cfg);
  for (size_t i = 0; i < nt && !st; i++) {
    gpt_tensor_info t;
    gpt_tensor_at(&m->cfg, i, &t);
    for (int k = 0; k < 2 && !st; k++) {
      char name[64];
      snprintf(name, sizeof name, "%c.%s", k ? 'v' : 'm', t.name);
      const float *data;
      if (!(st = st_get_f32(f, name, t.shape, t.ndim, &data, err)))
        memcpy((k ? m->v : m->m) + t.offset, data, t.numel * sizeof(float));
    }
  }
  if (st) goto done;
  const char *s = st_metadata(f, "step"), *r = st_metadata(f, "rng");
  char *end = NULL;
  if (!s || !r) {
    st = qv_fail(err, QV_EFORMAT, "%s: __metadata__ lacks step or rng", path);
    goto done;
  }
  errno = 0;
  long sv = strtol(s, &end, 10);
  if (errno || *end || sv < 0) {
    st = qv_fail(err, QV_EFORMAT, "%s: bad step \"%s\"", path, s);
    goto done;
  }
  unsigned long long rv = strtoull(r, &end, 10);
  if (errno || *end) {
    st = qv_fail(err, QV_EFORMAT, "%s: bad rng \"%s\"", path, r);
    goto done;
  }
  if (step) *step = sv;
  if (rng) *rng = (uint64_t)rv;
  const char *a = st_metadata(f, "args");
  if (args_json && a && !(*args_json = strdup(a))) st = qv_fail(err, QV_ENOMEM, "out of memory");
done:
  if (st) qv_error_prefix(err, "optimizer state");
  st_close(f);
  free(path);
  return st;
}
