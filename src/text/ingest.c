/* The ingestion pipeline (see ingest.h).
 *
 * Invariants:
 *  1. A point's id is a function of (source, chunk_index) (chunk_id), so re-ingesting a
 *     document overwrites its chunks in place and ingesting twice changes nothing.
 *  2. A document's chunks are upserted in one transaction (flush), then its stale chunks
 *     (indices past the new count) are deleted. A crash between the two leaves points
 *     with two file hashes for one source; open marks such a source inconsistent and the
 *     next ingest of it redoes it rather than skipping it.
 *  3. A document is skipped only when every stored chunk of its source carries its
 *     current file hash and their count equals the stored chunk_count.
 */
#define _GNU_SOURCE /* strndup, asprintf */
#include "text/ingest.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/error.h"
#include "base/file.h"
#include "base/hash.h"
#include "base/log.h"

/* ---- what the collection holds, by source ------------------------------------------- */

typedef struct stored_chunk {
  qv_point_id id;
  long long index;
} stored_chunk;

typedef struct source_entry {
  char *source; /* NULL: empty slot */
  char file_hash[65];
  int consistent;
  long long chunk_count;
  stored_chunk *chunks;
  size_t n, cap;
  int seen;
  int removing; /* its chunks are queued for deletion by text_ingester_sync */
} source_entry;

typedef struct pending {
  char **texts;      /* what is embedded: heading path + text */
  char **payloads;
  qv_point_id *ids;
  size_t n, cap;
  qv_point_id *stale; /* ids to delete once the batch is stored */
  size_t nstale, cap_stale;
  size_t tokens;
} pending;

struct text_ingester {
  qv_collection *c;
  qv_model *m;
  size_t dims, batch;
  uint32_t max_tokens;
  text_chunk_config cfg;
  char settings[320];   /* the chunking settings and the model, as folded into file_hash */
  source_entry *map;
  size_t mask, used;
  pending p;
  float *vecs;
  text_ingest_stats stats;
};

static uint64_t hash_str(const char *s) { return qv_hash_bytes(s, strlen(s)); }

static source_entry *lookup(text_ingester *ing, const char *source, int create) {
  if (create && (ing->used + 1) * 2 > ing->mask) {
    size_t nmask = ing->mask * 2 + 1;
    source_entry *nm = calloc(nmask + 1, sizeof *nm);
    if (!nm) return NULL;
    for (size_t i = 0; i <= ing->mask; i++) {
      if (!ing->map[i].source) continue;
      size_t j = hash_str(ing->map[i].source) & nmask;
      while (nm[j].source) j = (j + 1) & nmask;
      nm[j] = ing->map[i];
    }
    free(ing->map);
    ing->map = nm;
    ing->mask = nmask;
  }
  size_t i = hash_str(source) & ing->mask;
  while (ing->map[i].source) {
    if (!strcmp(ing->map[i].source, source)) return &ing->map[i];
    i = (i + 1) & ing->mask;
  }
  if (!create) return NULL;
  source_entry *e = &ing->map[i];
  if (!(e->source = strdup(source))) return NULL;
  e->consistent = 1;
  e->chunk_count = -1;
  ing->used++;
  return e;
}

static int entry_push(source_entry *e, qv_point_id id, long long index) {
  if (e->n == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 8;
    stored_chunk *nc = realloc(e->chunks, cap * sizeof *nc);
    if (!nc) return -1;
    e->chunks = nc;
    e->cap = cap;
  }
  e->chunks[e->n++] = (stored_chunk){id, index};
  return 0;
}

/* Reads every point's source, file_hash, chunk_index and chunk_count. */
static qv_status load_state(text_ingester *ing, qv_error *err) {
  qv_point_id off;
  int has_off = 0, has_next = 1;
  while (has_next) {
    qv_records r = {0};
    qv_point_id next;
    qv_status st = qv_collection_scroll(ing->c, has_off ? &off : NULL, 1024, NULL, 1, 0, &r, &next, &has_next, err);
    if (st) return st;
    for (size_t i = 0; i < r.count; i++) {
      if (!r.items[i].payload) continue;
      json_t *j = json_loads(r.items[i].payload, 0, NULL);
      const char *src = j ? json_string_value(json_object_get(j, "source")) : NULL;
      const char *fh = j ? json_string_value(json_object_get(j, "file_hash")) : NULL;
      if (src) {
        source_entry *e = lookup(ing, src, 1);
        json_t *ix = json_object_get(j, "chunk_index"), *cnt = json_object_get(j, "chunk_count");
        if (!e || entry_push(e, r.items[i].id, json_is_integer(ix) ? json_integer_value(ix) : -1)) {
          json_decref(j);
          qv_records_free(&r);
          return qv_fail(err, QV_ENOMEM, "out of memory");
        }
        long long cc = json_is_integer(cnt) ? json_integer_value(cnt) : -1;
        if (e->n == 1) {
          snprintf(e->file_hash, sizeof e->file_hash, "%s", fh && strlen(fh) == 64 ? fh : "");
          e->chunk_count = cc;
        } else if (!fh || strcmp(fh, e->file_hash) || cc != e->chunk_count) {
          e->consistent = 0;
        }
      }
      json_decref(j);
    }
    qv_records_free(&r);
    off = next;
    has_off = 1;
  }
  for (size_t i = 0; i <= ing->mask; i++) {
    source_entry *e = &ing->map[i];
    if (e->source && (e->chunk_count < 0 || (size_t)e->chunk_count != e->n)) e->consistent = 0;
  }
  return QV_OK;
}

qv_status text_count_model(void *m, const char *s, size_t n, uint32_t *out, qv_error *err) {
  size_t t;
  qv_status st = qv_model_count_tokens(m, s, n, &t, err);
  *out = st || t < 2 ? 0 : (uint32_t)(t - 2);
  return st;
}

qv_status text_ingester_open(text_ingester **out, qv_collection *c, qv_model *m, const text_chunk_config *cfg,
                             size_t batch, qv_error *err) {
  qv_model_info info;
  qv_model_info_get(m, &info);
  qv_collection_config cc;
  qv_collection_config_get(c, &cc);
  if (info.kind != QV_MODEL_EMBEDDING) return qv_fail(err, QV_EINVAL, "%s is not an embedding model", info.name);
  if ((int)cc.size != info.dims)
    return qv_fail(err, QV_EDIM, "the collection holds %u-dimensional vectors; %s makes %d", cc.size, info.name,
                   info.dims);
  uint32_t budget = cfg->kind == TEXT_CHUNK_ADAPTIVE ? cfg->max : cfg->size;
  if (info.max_tokens > 2 && budget > (uint32_t)info.max_tokens - 2)
    return qv_fail(err, QV_ERANGE, "chunks of %u tokens are over %s's limit of %d (%d without its special tokens)",
                   budget, info.name, info.max_tokens, info.max_tokens - 2);
  text_ingester *ing = calloc(1, sizeof *ing);
  if (!ing) return qv_fail(err, QV_ENOMEM, "out of memory");
  ing->c = c;
  ing->m = m;
  ing->dims = (size_t)info.dims;
  ing->max_tokens = (uint32_t)info.max_tokens;
  ing->batch = batch ? batch : 64;
  ing->cfg = *cfg;
  snprintf(ing->settings, sizeof ing->settings, "chunker=%d size=%u min=%u max=%u overlap=%.6f model=%s",
           (int)cfg->kind, cfg->size, cfg->min, cfg->max, cfg->overlap, info.name ? info.name : "");
  ing->mask = 255;
  qv_status st;
  if (!(ing->map = calloc(ing->mask + 1, sizeof *ing->map))) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  if ((st = load_state(ing, err))) goto fail;
  *out = ing;
  return QV_OK;
fail:
  text_ingester_free(ing);
  return st;
}

static void pending_clear(pending *p) {
  for (size_t i = 0; i < p->n; i++) {
    free(p->texts[i]);
    free(p->payloads[i]);
  }
  p->n = 0;
  p->nstale = 0;
  p->tokens = 0;
}

void text_ingester_free(text_ingester *ing) {
  if (!ing) return;
  pending_clear(&ing->p);
  free(ing->p.texts);
  free(ing->p.payloads);
  free(ing->p.ids);
  free(ing->p.stale);
  free(ing->vecs);
  if (ing->map)
    for (size_t i = 0; i <= ing->mask; i++) {
      free(ing->map[i].source);
      free(ing->map[i].chunks);
    }
  free(ing->map);
  free(ing);
}

void text_ingester_stats(const text_ingester *ing, text_ingest_stats *out) { *out = ing->stats; }

/* A name-based UUID: the first 16 bytes of SHA-256(source NUL index), version 5 bits. */
static qv_point_id chunk_id(const char *source, size_t index) {
  size_t n = strlen(source);
  char buf[4096 + 32];
  char hex[65];
  qv_point_id id = {.kind = QV_ID_UUID};
  if (n > 4096) { /* long sources: hash them first */
    text_sha256_hex(source, n, hex);
    source = hex, n = 64;
  }
  memcpy(buf, source, n);
  int k = snprintf(buf + n, 32, "%c%zu", 0, index);
  unsigned char md[65];
  text_sha256_hex(buf, n + (size_t)k, (char *)md);
  for (int i = 0; i < 16; i++) {
    unsigned hi = md[2 * i] <= '9' ? md[2 * i] - '0' : md[2 * i] - 'a' + 10;
    unsigned lo = md[2 * i + 1] <= '9' ? md[2 * i + 1] - '0' : md[2 * i + 1] - 'a' + 10;
    id.uuid[i] = (uint8_t)(hi << 4 | lo);
  }
  id.uuid[6] = (uint8_t)((id.uuid[6] & 0x0f) | 0x50);
  id.uuid[8] = (uint8_t)((id.uuid[8] & 0x3f) | 0x80);
  return id;
}

static int pending_push(pending *p, char *text, char *payload, qv_point_id id) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 128;
    char **t = realloc(p->texts, cap * sizeof *t);
    if (t) p->texts = t;
    char **pl = realloc(p->payloads, cap * sizeof *pl);
    if (pl) p->payloads = pl;
    qv_point_id *ids = realloc(p->ids, cap * sizeof *ids);
    if (ids) p->ids = ids;
    if (!t || !pl || !ids) return -1;
    p->cap = cap;
  }
  p->texts[p->n] = text;
  p->payloads[p->n] = payload;
  p->ids[p->n] = id;
  p->n++;
  return 0;
}

static int stale_push(pending *p, qv_point_id id) {
  if (p->nstale == p->cap_stale) {
    size_t cap = p->cap_stale ? p->cap_stale * 2 : 64;
    qv_point_id *ns = realloc(p->stale, cap * sizeof *ns);
    if (!ns) return -1;
    p->stale = ns;
    p->cap_stale = cap;
  }
  p->stale[p->nstale++] = id;
  return 0;
}

qv_status text_ingester_flush(text_ingester *ing, qv_error *err) {
  pending *p = &ing->p;
  qv_status st = QV_OK;
  qv_point *pts = NULL;
  if (!p->n && !p->nstale) return QV_OK;
  if (p->n) {
    float *v = realloc(ing->vecs, p->n * ing->dims * sizeof *v);
    if (!v || !(pts = calloc(p->n, sizeof *pts))) {
      if (v) ing->vecs = v;
      st = qv_fail(err, QV_ENOMEM, "out of memory");
      goto done;
    }
    ing->vecs = v;
    if ((st = qv_model_encode(ing->m, (const char *const *)p->texts, NULL, p->n, 1, v, err))) goto done;
    for (size_t i = 0; i < p->n; i++) pts[i] = (qv_point){p->ids[i], v + i * ing->dims, p->payloads[i]};
    if ((st = qv_collection_upsert(ing->c, pts, p->n, err))) goto done;
    ing->stats.chunks += p->n;
    ing->stats.tokens += p->tokens;
  }
  if (p->nstale) {
    size_t deleted = 0;
    if ((st = qv_collection_delete_ids(ing->c, p->stale, p->nstale, &deleted, err))) goto done;
    ing->stats.chunks_removed += deleted;
  }
done:
  free(pts);
  pending_clear(p);
  return st;
}

static const char *reserved[] = {"source", "headings", "span", "chunk_index", "chunk_count", "hash",
                                 "file_hash", "format", "text", "is_code"};

static char *make_payload(const text_doc *d, const text_chunk *ch, const char *source, size_t index, size_t count,
                          const char *file_hash, text_format f) {
  json_t *o = json_object();
  if (!o) return NULL;
  if (d->front) {
    const char *k;
    json_t *v;
    json_object_foreach(d->front, k, v) {
      int clash = 0;
      for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++) clash |= !strcmp(k, reserved[i]);
      if (!clash) json_object_set(o, k, v);
    }
  }
  char hex[65];
  text_sha256_hex(d->text + ch->start, ch->end - ch->start, hex);
  json_object_set_new(o, "source", json_string(source));
  json_object_set_new(o, "headings", text_block_headings(d, ch->block));
  json_object_set_new(o, "span", json_pack("{s:[I,I],s:[I,I]}", "bytes", (json_int_t)ch->src_start,
                                           (json_int_t)ch->src_end, "lines", (json_int_t)ch->line_start,
                                           (json_int_t)ch->line_end));
  json_object_set_new(o, "chunk_index", json_integer((json_int_t)index));
  json_object_set_new(o, "chunk_count", json_integer((json_int_t)count));
  json_object_set_new(o, "hash", json_string(hex));
  json_object_set_new(o, "file_hash", json_string(file_hash));
  json_object_set_new(o, "format", json_string(text_format_name(f)));
  json_object_set_new(o, "text", json_stringn(d->text + ch->start, ch->end - ch->start));
  if (ch->is_code) json_object_set_new(o, "is_code", json_true());
  char *s = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return s;
}

/* What is embedded: the heading path, then the chunk, so a chunk deep in a section still
 * says what it is about. */
static char *embed_text(const text_doc *d, const text_chunk *ch) {
  const text_block *b = &d->blocks[ch->block];
  size_t n = ch->end - ch->start + 1;
  for (int i = 0; i < b->depth; i++) n += strlen(d->heads[b->path[i]]) + 3;
  char *s = malloc(n + 1), *w = s;
  if (!s) return NULL;
  for (int i = 0; i < b->depth; i++) {
    const char *h = d->heads[b->path[i]];
    /* a heading chunk starts with its own title: do not repeat the last one */
    if (i == b->depth - 1 && b->kind == TEXT_BLOCK_HEADING && ch->start == b->start) break;
    w += sprintf(w, "%s%s", i ? " > " : "", h);
  }
  if (w != s) *w++ = '\n';
  memcpy(w, d->text + ch->start, ch->end - ch->start);
  w[ch->end - ch->start] = 0;
  return s;
}

qv_status text_ingester_add(text_ingester *ing, const char *source, const char *data, size_t n, text_format f,
                            qv_error *err) {
  /* file_hash covers the content and how it is chunked and embedded: a file is
   * unchanged only when re-chunking it would give the same points, so a new --chunker,
   * size, overlap or model re-ingests it instead of keeping chunks cut the old way. */
  char content[65], keyed[65 + sizeof ing->settings], file_hash[65];
  text_sha256_hex(data, n, content);
  int kn = snprintf(keyed, sizeof keyed, "%s\n%s", ing->settings, content);
  text_sha256_hex(keyed, (size_t)kn, file_hash);
  ing->stats.files_seen++;
  source_entry *e = lookup(ing, source, 0);
  if (e) e->seen = 1;
  if (e && e->consistent && !strcmp(e->file_hash, file_hash)) {
    ing->stats.files_unchanged++;
    return QV_OK;
  }
  text_doc d;
  text_chunk *ch = NULL;
  size_t nc = 0;
  qv_status st = text_parse(&d, data, n, f, err);
  if (st) {
    qv_error_prefix(err, "%s: ", source);
    return st;
  }
  if ((st = text_chunk_doc(&d, data, n, &ing->cfg, text_count_model, ing->m, &ch, &nc, err))) {
    qv_error_prefix(err, "%s: ", source);
    goto done;
  }
  for (size_t i = 0; i < nc; i++) {
    char *t = embed_text(&d, &ch[i]);
    char *pl = make_payload(&d, &ch[i], source, i, nc, file_hash, f);
    if (!t || !pl || pending_push(&ing->p, t, pl, chunk_id(source, i))) {
      free(t);
      free(pl);
      st = qv_fail(err, QV_ENOMEM, "out of memory");
      goto done;
    }
    ing->p.tokens += ch[i].tokens;
  }
  if (e) {
    for (size_t i = 0; i < e->n; i++)
      if (e->chunks[i].index < 0 || (size_t)e->chunks[i].index >= nc ||
          !qv_point_id_equal(&e->chunks[i].id, &ing->p.ids[ing->p.n - nc + (size_t)e->chunks[i].index]))
        if (stale_push(&ing->p, e->chunks[i].id)) {
          st = qv_fail(err, QV_ENOMEM, "out of memory");
          goto done;
        }
    ing->stats.files_changed++;
  } else {
    ing->stats.files_new++;
  }
  if (ing->p.n >= ing->batch) st = text_ingester_flush(ing, err);
done:
  free(ch);
  text_doc_free(&d);
  return st;
}

qv_status text_ingester_add_file(text_ingester *ing, const char *path, qv_error *err) {
  int f = text_format_for_path(path);
  if (f < 0) return qv_fail(err, QV_EINVAL, "%s: not a document (.md .mdx .txt .rst .html)", path);
  char *data = NULL;
  size_t n = 0;
  qv_status st = qv_read_file(path, &data, &n, err);
  if (st) return st;
  st = text_ingester_add(ing, path, data, n, (text_format)f, err);
  free(data);
  return st;
}

static int under(const char *source, const char *root) {
  size_t k = strlen(root);
  while (k > 1 && root[k - 1] == '/') k--;
  return !strncmp(source, root, k) && (source[k] == 0 || source[k] == '/');
}

qv_status text_ingester_sync(text_ingester *ing, const char *const *roots, size_t nroots, qv_error *err) {
  qv_status st = text_ingester_flush(ing, err);
  if (st) return st;
  for (size_t i = 0; i <= ing->mask; i++) {
    source_entry *e = &ing->map[i];
    if (!e->source || e->seen || !e->n) continue;
    int in = !roots;
    for (size_t r = 0; r < nroots && !in; r++) in = under(e->source, roots[r]);
    if (!in) continue;
    for (size_t k = 0; k < e->n; k++)
      if (stale_push(&ing->p, e->chunks[k].id)) {
        st = qv_fail(err, QV_ENOMEM, "out of memory");
        break;
      }
    e->removing = 1;
    if (st) break;
  }
  if (!st) st = text_ingester_flush(ing, err);
  /* The map forgets a file's chunks only once their deletion is committed; after a
   * failure it still lists them, so the next sync deletes them again. */
  for (size_t i = 0; i <= ing->mask; i++) {
    source_entry *e = &ing->map[i];
    if (!e->removing) continue;
    e->removing = 0;
    if (st) continue;
    e->n = 0;
    ing->stats.files_removed++;
  }
  return st;
}

/* ---- finding documents --------------------------------------------------------------- */

typedef struct path_list {
  char **items;
  size_t n, cap;
} path_list;

static int list_push(path_list *l, char *s) {
  if (!s) return -1;
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    char **ni = realloc(l->items, cap * sizeof *ni);
    if (!ni) {
      free(s);
      return -1;
    }
    l->items = ni;
    l->cap = cap;
  }
  l->items[l->n++] = s;
  return 0;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The directories on the path from the root being walked, to tell a symlink loop (a link
 * back to one of them) from a deep tree. */
typedef struct dir_stack {
  dev_t dev[65];
  ino_t ino[65];
  int n;
} dir_stack;

static qv_status walk(const char *dir, path_list *l, dir_stack *up, qv_error *err) {
  if (up->n > 64) return qv_fail(err, QV_ERANGE, "%s: directories nested over 64 deep", dir);
  DIR *d = opendir(dir);
  if (!d) return qv_fail(err, errno, "%s: %s", dir, strerror(errno));
  path_list names = {0};
  struct dirent *de;
  qv_status st = QV_OK;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue; /* hidden entries, . and .. */
    if (list_push(&names, strdup(de->d_name))) {
      st = qv_fail(err, QV_ENOMEM, "out of memory");
      break;
    }
  }
  closedir(d);
  if (names.n) qsort(names.items, names.n, sizeof *names.items, by_name); /* NULL when empty */
  size_t dl = strlen(dir);
  while (dl > 1 && dir[dl - 1] == '/') dl--;
  for (size_t i = 0; !st && i < names.n; i++) {
    char *p;
    if (asprintf(&p, "%.*s/%s", (int)dl, dir, names.items[i]) < 0) {
      st = qv_fail(err, QV_ENOMEM, "out of memory");
      break;
    }
    struct stat sb;
    if (stat(p, &sb) != 0) { /* a dangling link: nothing to read */
      free(p);
      continue;
    }
    if (S_ISDIR(sb.st_mode)) {
      int loop = 0;
      for (int k = 0; k < up->n && !loop; k++) loop = up->dev[k] == sb.st_dev && up->ino[k] == sb.st_ino;
      if (loop) {
        LOG_WARN("%s: a link back to a directory above it; skipped", p);
      } else {
        up->dev[up->n] = sb.st_dev;
        up->ino[up->n++] = sb.st_ino;
        st = walk(p, l, up, err);
        up->n--;
      }
      free(p);
    } else if (S_ISREG(sb.st_mode) && text_format_for_path(p) >= 0) {
      if (list_push(l, p)) st = qv_fail(err, QV_ENOMEM, "out of memory");
    } else {
      free(p);
    }
  }
  for (size_t i = 0; i < names.n; i++) free(names.items[i]);
  free(names.items);
  return st;
}

qv_status text_find_documents(const char *const *paths, size_t npaths, char ***out, size_t *n, qv_error *err) {
  path_list l = {0};
  qv_status st = QV_OK;
  for (size_t i = 0; !st && i < npaths; i++) {
    struct stat sb;
    if (stat(paths[i], &sb) != 0) st = qv_fail(err, QV_NOTFOUND, "%s: %s", paths[i], strerror(errno));
    else if (S_ISDIR(sb.st_mode)) {
      dir_stack up = {.dev = {sb.st_dev}, .ino = {sb.st_ino}, .n = 1};
      st = walk(paths[i], &l, &up, err);
    }
    else if (text_format_for_path(paths[i]) < 0)
      st = qv_fail(err, QV_EINVAL, "%s: not a document (.md .mdx .txt .rst .html)", paths[i]);
    else if (list_push(&l, strdup(paths[i])))
      st = qv_fail(err, QV_ENOMEM, "out of memory");
  }
  if (st) {
    for (size_t i = 0; i < l.n; i++) free(l.items[i]);
    free(l.items);
    return st;
  }
  *out = l.items;
  *n = l.n;
  return QV_OK;
}
