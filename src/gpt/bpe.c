/* GPT-2's byte-level BPE: loading, encoding, decoding, saving and training.
 *
 * Tokens are held as raw bytes; the printable "byte-to-unicode" form of GPT-2 exists only
 * in files (tokenizer.json, vocab.json, merges.txt). Encoding follows Hugging Face
 * `tokenizers` (ByteLevel pre-tokenizer with add_prefix_space false, BPE model):
 *   1. added tokens (<|endoftext|>) are split out first, leftmost-longest;
 *   2. each run between them is cut by GPT-2's pattern
 *        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *      written out by hand (pretok_next) with utf8proc's categories; \s is Unicode
 *      White_Space, as Oniguruma (the regex engine of HF's Python wheels) has it. A byte
 *      that is not part of valid UTF-8 counts as one character of the third class;
 *   3. each piece starts as its bytes' tokens and the adjacent pair of lowest merge rank
 *      is merged (leftmost first among equal ranks) until no pair has a rank. A byte with
 *      no token is dropped, as HF's BPE does without an unk_token.
 * Pieces up to CACHE_MAX_WORD bytes are cached per tokenizer (guarded by a mutex, so one
 * tokenizer may encode from several threads).
 *
 * Training: words of the corpus are counted once, then the most frequent adjacent pair is
 * merged repeatedly. Pair counts are kept up to date incrementally (each merge touches only
 * the words holding the pair, found through a per-pair list of words), and the most
 * frequent pair comes from a max-heap with lazy updates: a popped entry whose count is
 * stale is pushed back with its current count. Ties go to the pair with the smaller left
 * id, then the smaller right id, so training is deterministic.
 */
#define _GNU_SOURCE /* memmem */
#include "gpt/bpe.h"
#include "gpt/ckpt.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "base/error.h"
#include "base/file.h"
#include "base/hash.h"

#define EOT_TEXT "<|endoftext|>"
#define CACHE_MAX_WORD 64
#define CACHE_MAX_ENTRIES 65536

/* ---- hash maps ------------------------------------------------------------------------ */

/* Byte strings to int32 values; keys are copied. Open addressing, linear probing. */
typedef struct smap_slot {
  char *key; /* NULL when empty */
  size_t len;
  uint64_t hash;
  int32_t val;
  int32_t *ids; /* the cache's value: a malloc'd id array of val entries */
} smap_slot;

typedef struct smap {
  smap_slot *slots;
  size_t cap, count;
} smap;

static void smap_clear(smap *m) {
  for (size_t i = 0; i < m->cap; i++) {
    free(m->slots[i].key);
    free(m->slots[i].ids);
  }
  free(m->slots);
  memset(m, 0, sizeof *m);
}

static smap_slot *smap_find(const smap *m, const char *k, size_t n, uint64_t h) {
  if (!m->cap) return NULL;
  for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    smap_slot *s = &m->slots[i];
    if (!s->key) return NULL;
    if (s->hash == h && s->len == n && !memcmp(s->key, k, n)) return s;
  }
}

static int smap_grow(smap *m) {
  size_t cap = m->cap ? m->cap * 2 : 64;
  smap_slot *slots = calloc(cap, sizeof *slots);
  if (!slots) return -1;
  for (size_t i = 0; i < m->cap; i++) {
    smap_slot *s = &m->slots[i];
    if (!s->key) continue;
    size_t j = s->hash & (cap - 1);
    while (slots[j].key) j = (j + 1) & (cap - 1);
    slots[j] = *s;
  }
  free(m->slots);
  m->slots = slots;
  m->cap = cap;
  return 0;
}

/* Returns the slot for k, inserting it (val 0) when absent; *added tells which. */
static smap_slot *smap_put(smap *m, const char *k, size_t n, int *added) {
  uint64_t h = qv_hash_bytes(k, n);
  smap_slot *s = smap_find(m, k, n, h);
  *added = 0;
  if (s) return s;
  if ((m->count + 1) * 4 > m->cap * 3 && smap_grow(m)) return NULL;
  size_t i = h & (m->cap - 1);
  while (m->slots[i].key) i = (i + 1) & (m->cap - 1);
  s = &m->slots[i];
  s->key = malloc(n ? n : 1);
  if (!s->key) return NULL;
  if (n) memcpy(s->key, k, n);
  s->len = n;
  s->hash = h;
  s->val = 0;
  s->ids = NULL;
  m->count++;
  *added = 1;
  return s;
}

/* uint64 keys (a pair of ids) to a value index. Keys are never removed. */
typedef struct pmap {
  uint64_t *keys; /* UINT64_MAX when empty */
  int64_t *vals;
  size_t cap, count;
} pmap;

static void pmap_clear(pmap *m) {
  free(m->keys);
  free(m->vals);
  memset(m, 0, sizeof *m);
}

static int64_t pmap_get(const pmap *m, uint64_t k) {
  if (!m->cap) return -1;
  for (size_t i = qv_mix64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    if (m->keys[i] == k) return m->vals[i];
    if (m->keys[i] == UINT64_MAX) return -1;
  }
}

static int pmap_set(pmap *m, uint64_t k, int64_t v) {
  if ((m->count + 1) * 2 > m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 256;
    uint64_t *keys = malloc(cap * sizeof *keys);
    int64_t *vals = malloc(cap * sizeof *vals);
    if (!keys || !vals) {
      free(keys);
      free(vals);
      return -1;
    }
    memset(keys, 0xff, cap * sizeof *keys);
    for (size_t i = 0; i < m->cap; i++) {
      if (m->keys[i] == UINT64_MAX) continue;
      size_t j = qv_mix64(m->keys[i]) & (cap - 1);
      while (keys[j] != UINT64_MAX) j = (j + 1) & (cap - 1);
      keys[j] = m->keys[i];
      vals[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
  }
  size_t i = qv_mix64(k) & (m->cap - 1);
  while (m->keys[i] != UINT64_MAX && m->keys[i] != k) i = (i + 1) & (m->cap - 1);
  if (m->keys[i] == UINT64_MAX) m->count++;
  m->keys[i] = k;
  m->vals[i] = v;
  return 0;
}

static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

/* ---- the tokenizer -------------------------------------------------------------------- */

typedef struct added_token {
  char *text;
  size_t len;
  int32_t id;
  int special;
} added_token;

struct gpt_bpe {
  size_t n_ids;     /* read-only: 1 + the largest id */
  char **tok;       /* (n_ids) raw bytes of each id; NULL for an unused id */
  size_t *tok_len;  /* (n_ids) */
  smap vocab;       /* raw bytes -> id, the BPE model's vocabulary */
  int32_t byte_id[256];
  pmap merges;      /* pair_key(a, b) -> rank */
  int32_t *merge_a, *merge_b, *merge_out; /* (n_merges) by rank */
  size_t n_merges;
  added_token *added;
  size_t n_added;
  int32_t eot;
  int ignore_merges;
  pthread_mutex_t cache_lock;
  smap cache; /* piece -> ids */
};

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68
 * bytes for U+0100.. in byte order. */
static uint32_t byte_char[256];
static int16_t char_byte[324]; /* inverse, for code points < 324; -1 elsewhere */
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static int byte_printable(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static void tables_init(void) {
  uint32_t n = 0;
  for (int i = 0; i < 324; i++) char_byte[i] = -1;
  for (int b = 0; b < 256; b++) byte_char[b] = byte_printable(b) ? (uint32_t)b : 256 + n++;
  for (int b = 0; b < 256; b++) char_byte[byte_char[b]] = (int16_t)b;
}

/* The order GPT-2 numbers its 256 byte tokens in: printable bytes first, then the rest. */
static int byte_rank_order(int i) {
  int k = 0;
  for (int b = 0; b < 256; b++)
    if (byte_printable(b) && k++ == i) return b;
  for (int b = 0; b < 256; b++)
    if (!byte_printable(b) && k++ == i) return b;
  return -1;
}

/* Maps a printable-form string to raw bytes in out (>= n bytes). Returns the length, or
 * (size_t)-1 when a character is not one of the 256 (such a token keeps its UTF-8 text). */
static size_t unmap_string(const char *s, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
    if (k <= 0 || c >= 324 || char_byte[c] < 0) return (size_t)-1;
    out[o++] = (char)char_byte[c];
    i += (size_t)k;
  }
  return o;
}

/* Raw bytes to printable form, appended to a growing buffer; 0 or -1 on no memory. */
static int map_bytes(const char *s, size_t n, char **buf, size_t *len, size_t *cap) {
  if (*len + 2 * n + 1 > *cap) {
    size_t c = (*len + 2 * n + 1) * 2;
    char *p = realloc(*buf, c);
    if (!p) return -1;
    *buf = p;
    *cap = c;
  }
  for (size_t i = 0; i < n; i++) {
    uint32_t c = byte_char[(uint8_t)s[i]];
    if (c < 0x80) {
      (*buf)[(*len)++] = (char)c;
    } else {
      (*buf)[(*len)++] = (char)(0xC0 | (c >> 6));
      (*buf)[(*len)++] = (char)(0x80 | (c & 0x3F));
    }
  }
  (*buf)[*len] = 0;
  return 0;
}

void gpt_bpe_free(gpt_bpe *b) {
  if (!b) return;
  for (size_t i = 0; i < b->n_ids; i++) free(b->tok[i]);
  free(b->tok);
  free(b->tok_len);
  smap_clear(&b->vocab);
  pmap_clear(&b->merges);
  free(b->merge_a);
  free(b->merge_b);
  free(b->merge_out);
  for (size_t i = 0; i < b->n_added; i++) free(b->added[i].text);
  free(b->added);
  smap_clear(&b->cache);
  pthread_mutex_destroy(&b->cache_lock);
  free(b);
}

static gpt_bpe *bpe_new(void) {
  pthread_once(&tables_once, tables_init);
  gpt_bpe *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  pthread_mutex_init(&b->cache_lock, NULL);
  b->eot = -1;
  for (int i = 0; i < 256; i++) b->byte_id[i] = -1;
  return b;
}

/* Records id's bytes, growing the id table. */
static qv_status set_token(gpt_bpe *b, int32_t id, const char *bytes, size_t n, qv_error *err) {
  if (id < 0 || id >= (1 << 24)) return qv_fail(err, QV_EFORMAT, "token id %d is out of range", (int)id);
  if ((size_t)id >= b->n_ids) {
    size_t n_ids = (size_t)id + 1, cap = b->n_ids;
    char **tok = realloc(b->tok, n_ids * sizeof *tok);
    if (!tok) return qv_fail(err, QV_ENOMEM, "out of memory");
    b->tok = tok;
    size_t *tl = realloc(b->tok_len, n_ids * sizeof *tl);
    if (!tl) return qv_fail(err, QV_ENOMEM, "out of memory");
    b->tok_len = tl;
    for (size_t i = cap; i < n_ids; i++) {
      b->tok[i] = NULL;
      b->tok_len[i] = 0;
    }
    b->n_ids = n_ids;
  }
  if (b->tok[id]) return qv_fail(err, QV_EFORMAT, "token id %d is used twice", (int)id);
  b->tok[id] = malloc(n + 1);
  if (!b->tok[id]) return qv_fail(err, QV_ENOMEM, "out of memory");
  memcpy(b->tok[id], bytes, n);
  b->tok[id][n] = 0;
  b->tok_len[id] = n;
  return QV_OK;
}

/* Adds a vocabulary entry given in printable form. */
static qv_status add_vocab(gpt_bpe *b, const char *s, size_t n, int32_t id, qv_error *err) {
  char *raw = malloc(n + 1);
  if (!raw) return qv_fail(err, QV_ENOMEM, "out of memory");
  size_t rn = unmap_string(s, n, raw);
  const char *key = rn == (size_t)-1 ? s : raw;
  if (rn == (size_t)-1) rn = n;
  qv_status rc = set_token(b, id, key, rn, err);
  int added;
  if (!rc) {
    smap_slot *slot = smap_put(&b->vocab, key, rn, &added);
    if (!slot) {
      rc = qv_fail(err, QV_ENOMEM, "out of memory");
    } else if (!added) {
      rc = qv_fail(err, QV_EFORMAT, "vocabulary: token \"%.*s\" appears twice", (int)(n > 40 ? 40 : n), s);
    } else {
      slot->val = id;
      if (rn == 1) b->byte_id[(uint8_t)key[0]] = id;
    }
  }
  free(raw);
  return rc;
}

static int32_t vocab_id(const gpt_bpe *b, const char *raw, size_t n) {
  smap_slot *s = smap_find(&b->vocab, raw, n, qv_hash_bytes(raw, n));
  return s ? s->val : -1;
}

/* Adds merge (a, b) (printable forms) with the next rank. */
static qv_status add_merge(gpt_bpe *b, const char *a, size_t an, const char *c, size_t cn, size_t cap,
                           qv_error *err) {
  char *raw = malloc(an + cn + 1);
  if (!raw) return qv_fail(err, QV_ENOMEM, "out of memory");
  qv_status rc = QV_OK;
  size_t ra = unmap_string(a, an, raw);
  size_t rb = ra == (size_t)-1 ? (size_t)-1 : unmap_string(c, cn, raw + ra);
  int32_t ia = -1, ib = -1, io = -1;
  if (rb != (size_t)-1) {
    ia = vocab_id(b, raw, ra);
    ib = vocab_id(b, raw + ra, rb);
    io = vocab_id(b, raw, ra + rb);
  }
  free(raw);
  if (ia < 0 || ib < 0)
    return qv_fail(err, QV_EFORMAT, "merge %zu (\"%.*s\" \"%.*s\"): a token is not in the vocabulary",
                   b->n_merges + 1, (int)(an > 40 ? 40 : an), a, (int)(cn > 40 ? 40 : cn), c);
  if (io < 0)
    return qv_fail(err, QV_EFORMAT, "merge %zu (\"%.*s\" \"%.*s\"): the merged token is not in the vocabulary",
                   b->n_merges + 1, (int)(an > 40 ? 40 : an), a, (int)(cn > 40 ? 40 : cn), c);
  if (pmap_get(&b->merges, pair_key(ia, ib)) >= 0) return QV_OK; /* HF keeps the first rank */
  if (b->n_merges >= cap) return qv_fail(err, QV_EFORMAT, "too many merges");
  b->merge_a[b->n_merges] = ia;
  b->merge_b[b->n_merges] = ib;
  b->merge_out[b->n_merges] = io;
  if (pmap_set(&b->merges, pair_key(ia, ib), (int64_t)b->n_merges)) rc = qv_fail(err, QV_ENOMEM, "out of memory");
  b->n_merges++;
  return rc;
}

static qv_status alloc_merges(gpt_bpe *b, size_t n, qv_error *err) {
  size_t c = n ? n : 1;
  b->merge_a = malloc(c * sizeof(int32_t));
  b->merge_b = malloc(c * sizeof(int32_t));
  b->merge_out = malloc(c * sizeof(int32_t));
  if (!b->merge_a || !b->merge_b || !b->merge_out) return qv_fail(err, QV_ENOMEM, "out of memory");
  return QV_OK;
}

static int grow_merges(gpt_bpe *b, size_t *cap) {
  size_t c = *cap * 2;
  int32_t *x = realloc(b->merge_a, c * sizeof *x);
  if (!x) return -1;
  b->merge_a = x;
  if (!(x = realloc(b->merge_b, c * sizeof *x))) return -1;
  b->merge_b = x;
  if (!(x = realloc(b->merge_out, c * sizeof *x))) return -1;
  b->merge_out = x;
  *cap = c;
  return 0;
}

static qv_status add_special(gpt_bpe *b, const char *text, size_t n, int32_t id, int special, qv_error *err) {
  if (!n) return qv_fail(err, QV_EFORMAT, "added token %d: empty content", (int)id);
  added_token *a = realloc(b->added, (b->n_added + 1) * sizeof *a);
  if (!a) return qv_fail(err, QV_ENOMEM, "out of memory");
  b->added = a;
  a = &b->added[b->n_added];
  a->text = malloc(n + 1);
  if (!a->text) return qv_fail(err, QV_ENOMEM, "out of memory");
  memcpy(a->text, text, n);
  a->text[n] = 0;
  a->len = n;
  a->id = id;
  a->special = special;
  b->n_added++;
  if (n == strlen(EOT_TEXT) && !memcmp(text, EOT_TEXT, n)) b->eot = id;
  return QV_OK;
}

/* ---- loading ---------------------------------------------------------------------------- */

static qv_status load_merges_json(gpt_bpe *b, const json_t *merges, qv_error *err) {
  if (!json_is_array(merges)) return qv_fail(err, QV_EFORMAT, "model.merges: expected an array");
  qv_status rc = alloc_merges(b, json_array_size(merges), err);
  if (rc) return rc;
  size_t i;
  const json_t *m;
  json_array_foreach(merges, i, m) {
    if (json_is_string(m)) {
      /* the older form, "a b" */
      const char *s = json_string_value(m);
      size_t n = json_string_length(m);
      const char *sp = memchr(s, ' ', n);
      if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
        return qv_fail(err, QV_EFORMAT, "model.merges[%zu]: expected \"a b\"", i);
      rc = add_merge(b, s, (size_t)(sp - s), sp + 1, n - (size_t)(sp + 1 - s), json_array_size(merges), err);
    } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
               json_is_string(json_array_get(m, 1))) {
      const json_t *x = json_array_get(m, 0), *y = json_array_get(m, 1);
      rc = add_merge(b, json_string_value(x), json_string_length(x), json_string_value(y), json_string_length(y),
                     json_array_size(merges), err);
    } else {
      return qv_fail(err, QV_EFORMAT, "model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", i);
    }
    if (rc) return rc;
  }
  return QV_OK;
}

static qv_status load_vocab_json(gpt_bpe *b, const json_t *vocab, const char *where, qv_error *err) {
  if (!json_is_object(vocab)) return qv_fail(err, QV_EFORMAT, "%s: expected an object", where);
  const char *k;
  size_t klen;
  json_t *v;
  qv_status rc;
  json_object_keylen_foreach((json_t *)vocab, k, klen, v) {
    if (!json_is_integer(v)) return qv_fail(err, QV_EFORMAT, "%s: the id of \"%.40s\" is not an integer", where, k);
    json_int_t id = json_integer_value(v);
    if (id < 0 || id >= (1 << 24)) return qv_fail(err, QV_EFORMAT, "%s: id %lld is out of range", where, (long long)id);
    if ((rc = add_vocab(b, k, klen, (int32_t)id, err))) return rc;
  }
  return QV_OK;
}

static int str_is(const json_t *v, const char *s) { return json_is_string(v) && !strcmp(json_string_value(v), s); }

static qv_status check_bool(const json_t *obj, const char *key, int want, const char *where, qv_error *err) {
  const json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v)) return QV_OK;
  if (!json_is_boolean(v)) return qv_fail(err, QV_EFORMAT, "%s.%s: expected true or false", where, key);
  if (json_is_true(v) != want)
    return qv_fail(err, QV_EUNSUPPORTED, "%s.%s: only %s is supported", where, key, want ? "true" : "false");
  return QV_OK;
}

static qv_status from_json_value(gpt_bpe *b, const json_t *root, qv_error *err) {
  qv_status rc;
  if (!json_is_object(root)) return qv_fail(err, QV_EFORMAT, "tokenizer.json: expected an object");
  const json_t *model = json_object_get(root, "model");
  if (!json_is_object(model)) return qv_fail(err, QV_EFORMAT, "model: expected an object");
  const json_t *type = json_object_get(model, "type");
  if (type && !str_is(type, "BPE")) return qv_fail(err, QV_EUNSUPPORTED, "model.type: only \"BPE\" is supported");
  const json_t *pre = json_object_get(root, "pre_tokenizer");
  if (!json_is_object(pre) || !str_is(json_object_get(pre, "type"), "ByteLevel"))
    return qv_fail(err, QV_EUNSUPPORTED, "pre_tokenizer: only ByteLevel is supported");
  if ((rc = check_bool(pre, "add_prefix_space", 0, "pre_tokenizer", err))) return rc;
  if ((rc = check_bool(pre, "use_regex", 1, "pre_tokenizer", err))) return rc;
  const json_t *norm = json_object_get(root, "normalizer");
  if (norm && !json_is_null(norm)) return qv_fail(err, QV_EUNSUPPORTED, "normalizer: only null is supported");
  const json_t *v;
  if ((v = json_object_get(model, "dropout")) && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0))
    return qv_fail(err, QV_EUNSUPPORTED, "model.dropout: only null is supported");
  if ((v = json_object_get(model, "continuing_subword_prefix")) && !json_is_null(v) && !str_is(v, ""))
    return qv_fail(err, QV_EUNSUPPORTED, "model.continuing_subword_prefix: not supported");
  if ((v = json_object_get(model, "end_of_word_suffix")) && !json_is_null(v) && !str_is(v, ""))
    return qv_fail(err, QV_EUNSUPPORTED, "model.end_of_word_suffix: not supported");
  if ((rc = check_bool(model, "byte_fallback", 0, "model", err))) return rc;
  if ((v = json_object_get(model, "ignore_merges")) && json_is_true(v)) b->ignore_merges = 1;
  if ((rc = load_vocab_json(b, json_object_get(model, "vocab"), "model.vocab", err))) return rc;
  if ((rc = load_merges_json(b, json_object_get(model, "merges"), err))) return rc;
  const json_t *added = json_object_get(root, "added_tokens");
  if (added && !json_is_null(added)) {
    if (!json_is_array(added)) return qv_fail(err, QV_EFORMAT, "added_tokens: expected an array");
    size_t i;
    const json_t *a;
    json_array_foreach(added, i, a) {
      const json_t *id = json_object_get(a, "id"), *content = json_object_get(a, "content");
      if (!json_is_integer(id) || !json_is_string(content))
        return qv_fail(err, QV_EFORMAT, "added_tokens[%zu]: expected \"id\" and \"content\"", i);
      json_int_t n = json_integer_value(id);
      if (n < 0 || n >= (1 << 24)) return qv_fail(err, QV_EFORMAT, "added_tokens[%zu]: id out of range", i);
      /* matching is exact and leftmost-longest; HF's whitespace-eating variants are not done */
      static const char *const flags[] = {"single_word", "lstrip", "rstrip"};
      for (size_t f = 0; f < 3; f++)
        if (json_is_true(json_object_get(a, flags[f])))
          return qv_fail(err, QV_EUNSUPPORTED, "added_tokens[%zu].%s: only false is supported", i, flags[f]);
      const char *s = json_string_value(content);
      size_t len = json_string_length(content);
      if ((size_t)n < b->n_ids && b->tok[n]) {
        /* GPT-2 lists <|endoftext|> in the vocabulary too; it must be the same text */
        if (b->tok_len[n] != len || memcmp(b->tok[n], s, len))
          return qv_fail(err, QV_EFORMAT, "added_tokens[%zu]: id %lld is another token", i, (long long)n);
      } else if ((rc = set_token(b, (int32_t)n, s, len, err))) {
        return rc;
      }
      if ((rc = add_special(b, s, len, (int32_t)n, json_is_true(json_object_get(a, "special")), err))) return rc;
    }
  }
  return QV_OK;
}

qv_status gpt_bpe_from_json(gpt_bpe **out, const char *json, size_t len, qv_error *err) {
  *out = NULL;
  json_error_t je;
  json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
  if (!root) return qv_fail(err, QV_EJSON, "tokenizer.json: line %d: %s", je.line, je.text);
  gpt_bpe *b = bpe_new();
  qv_status rc = b ? from_json_value(b, root, err) : qv_fail(err, QV_ENOMEM, "out of memory");
  json_decref(root);
  if (rc) {
    gpt_bpe_free(b);
    return rc;
  }
  *out = b;
  return QV_OK;
}

/* vocab.json + merges.txt, as GPT-2 ships them; <|endoftext|> in the vocabulary is special. */
static qv_status load_folder(gpt_bpe **out, const char *dir, qv_error *err) {
  char path[4096];
  char *data = NULL;
  size_t len = 0;
  json_t *vocab = NULL;
  gpt_bpe *b = bpe_new();
  qv_status rc;
  if (!b) return qv_fail(err, QV_ENOMEM, "out of memory");
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  struct stat st;
  if (!stat(path, &st)) {
    gpt_bpe_free(b);
    return gpt_bpe_load(out, path, err);
  }
  snprintf(path, sizeof path, "%s/vocab.json", dir);
  if ((rc = qv_read_file(path, &data, &len, err))) goto fail;
  json_error_t je;
  vocab = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
  free(data);
  data = NULL;
  if (!vocab) {
    rc = qv_fail(err, QV_EJSON, "%s: line %d: %s", path, je.line, je.text);
    goto fail;
  }
  if ((rc = load_vocab_json(b, vocab, "vocab.json", err))) goto fail;
  snprintf(path, sizeof path, "%s/merges.txt", dir);
  if ((rc = qv_read_file(path, &data, &len, err))) goto fail;
  size_t lines = 1;
  for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
  if ((rc = alloc_merges(b, lines, err))) goto fail;
  size_t line_no = 0;
  for (size_t i = 0; i < len;) {
    char *nl = memchr(data + i, '\n', len - i);
    size_t end = nl ? (size_t)(nl - data) : len, n = end - i;
    const char *s = data + i;
    line_no++;
    i = end + 1;
    if (n && s[n - 1] == '\r') n--;
    if (!n || (line_no == 1 && n >= 8 && !memcmp(s, "#version", 8))) continue;
    const char *sp = memchr(s, ' ', n);
    if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s))) {
      rc = qv_fail(err, QV_EFORMAT, "%s: line %zu: expected two tokens separated by one space", path, line_no);
      goto fail;
    }
    if ((rc = add_merge(b, s, (size_t)(sp - s), sp + 1, n - (size_t)(sp + 1 - s), lines, err))) {
      qv_error_prefix(err, "%s: line %zu: ", path, line_no);
      goto fail;
    }
  }
  int32_t eot = vocab_id(b, EOT_TEXT, strlen(EOT_TEXT));
  if (eot >= 0 && (rc = add_special(b, EOT_TEXT, strlen(EOT_TEXT), eot, 1, err))) goto fail;
  free(data);
  json_decref(vocab);
  *out = b;
  return QV_OK;
fail:
  free(data);
  json_decref(vocab);
  gpt_bpe_free(b);
  return rc;
}

qv_status gpt_bpe_load(gpt_bpe **out, const char *path, qv_error *err) {
  *out = NULL;
  struct stat st;
  if (stat(path, &st)) return qv_fail(err, errno, "%s: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode)) return load_folder(out, path, err);
  char *data;
  size_t len;
  qv_status rc = qv_read_file(path, &data, &len, err);
  if (rc) return rc;
  rc = gpt_bpe_from_json(out, data, len, err);
  free(data);
  if (rc) qv_error_prefix(err, "%s: ", path);
  return rc;
}

/* ---- pre-tokenization --------------------------------------------------------------------- */

enum { CL_SPACE, CL_LETTER, CL_NUMBER, CL_OTHER };

static int is_white_space(int32_t c) {
  return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* The class of the character at s (len > 0) and its length in bytes. */
static int char_class(const char *s, size_t len, size_t *n) {
  uint8_t b = (uint8_t)s[0];
  if (b < 0x80) {
    *n = 1;
    if (is_white_space(b)) return CL_SPACE;
    if ((b | 0x20) >= 'a' && (b | 0x20) <= 'z') return CL_LETTER;
    if (b >= '0' && b <= '9') return CL_NUMBER;
    return CL_OTHER;
  }
  utf8proc_int32_t c;
  utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)(len > 4 ? 4 : len), &c);
  if (k <= 0) {
    *n = 1;
    return CL_OTHER;
  }
  *n = (size_t)k;
  if (is_white_space(c)) return CL_SPACE;
  switch (utf8proc_get_property(c)->category) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return CL_LETTER;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return CL_NUMBER;
    default:
      return CL_OTHER;
  }
}

/* End of the run of class cl starting at i. */
static size_t run_end(const char *s, size_t len, size_t i, int cl) {
  size_t n;
  while (i < len && char_class(s + i, len - i, &n) == cl) i += n;
  return i;
}

/* The length of the piece GPT-2's pattern matches at s (len > 0). */
static size_t pretok_next(const char *s, size_t len) {
  if (s[0] == '\'' && len >= 2) {
    char c = s[1];
    if (c == 's' || c == 't' || c == 'm' || c == 'd') return 2;
    if (len >= 3 && ((c == 'r' && s[2] == 'e') || (c == 'v' && s[2] == 'e') || (c == 'l' && s[2] == 'l'))) return 3;
  }
  size_t n, m;
  int cl = char_class(s, len, &n);
  if (s[0] == ' ' && len > 1) {
    int next = char_class(s + 1, len - 1, &m);
    if (next != CL_SPACE) return run_end(s, len, 1 + m, next);
  }
  if (cl != CL_SPACE) return run_end(s, len, n, cl);
  /* \s+(?!\S) backs off one character so the last space can lead the next word; a single
   * space before a non-space is matched by the final \s+ */
  size_t end = n, last = 0;
  while (end < len) {
    size_t k;
    if (char_class(s + end, len - end, &k) != CL_SPACE) break;
    last = end;
    end += k;
  }
  if (end == len || !last) return end;
  return last;
}

/* ---- encoding ------------------------------------------------------------------------------ */

typedef struct idbuf {
  int32_t *ids;
  size_t n, cap;
} idbuf;

static int idbuf_push(idbuf *o, int32_t id) {
  if (o->n == o->cap) {
    size_t cap = o->cap ? o->cap * 2 : 64;
    int32_t *p = realloc(o->ids, cap * sizeof *p);
    if (!p) return -1;
    o->ids = p;
    o->cap = cap;
  }
  o->ids[o->n++] = id;
  return 0;
}

typedef struct sym {
  int32_t id;
  int32_t prev, next; /* -1 at the ends */
} sym;

typedef struct heap_ent {
  int64_t rank;
  int32_t pos;
} heap_ent;

static int ent_less(heap_ent a, heap_ent b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(heap_ent *h, size_t *n, heap_ent e) {
  size_t i = (*n)++;
  while (i && ent_less(e, h[(i - 1) / 2])) {
    h[i] = h[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n) {
  heap_ent top = h[0], e = h[--*n];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= *n) break;
    if (c + 1 < *n && ent_less(h[c + 1], h[c])) c++;
    if (!ent_less(h[c], e)) break;
    h[i] = h[c];
    i = c;
  }
  if (*n) h[i] = e;
  return top;
}

static void push_pair(const gpt_bpe *b, const sym *sy, int32_t left, heap_ent *h, size_t *hn) {
  if (left < 0 || sy[left].next < 0) return;
  int64_t r = pmap_get(&b->merges, pair_key(sy[left].id, sy[sy[left].next].id));
  if (r >= 0) heap_push(h, hn, (heap_ent){r, left});
}

/* Encodes one piece into o. */
static int encode_piece(const gpt_bpe *b, const char *s, size_t len, idbuf *o) {
  if (b->ignore_merges) {
    int32_t id = vocab_id(b, s, len);
    if (id >= 0) return idbuf_push(o, id);
  }
  sym *sy = malloc(len * sizeof *sy);
  heap_ent *h = malloc(3 * len * sizeof *h + sizeof *h);
  int rc = -1;
  if (!sy || !h) goto done;
  int32_t n = 0;
  for (size_t i = 0; i < len; i++) {
    int32_t id = b->byte_id[(uint8_t)s[i]];
    if (id < 0) continue;
    sy[n] = (sym){id, n - 1, -1};
    if (n) sy[n - 1].next = n;
    n++;
  }
  size_t hn = 0;
  for (int32_t i = 0; i + 1 < n; i++) push_pair(b, sy, i, h, &hn);
  while (hn) {
    heap_ent e = heap_pop(h, &hn);
    int32_t l = e.pos, r = sy[l].next;
    /* stale entries: the left symbol was merged away (id -1) or the pair changed */
    if (sy[l].id < 0 || r < 0 || pmap_get(&b->merges, pair_key(sy[l].id, sy[r].id)) != e.rank) continue;
    sy[l].id = b->merge_out[e.rank];
    sy[l].next = sy[r].next;
    if (sy[r].next >= 0) sy[sy[r].next].prev = l;
    sy[r].id = -1;
    push_pair(b, sy, sy[l].prev, h, &hn);
    push_pair(b, sy, l, h, &hn);
  }
  for (int32_t i = n ? 0 : -1; i >= 0; i = sy[i].next)
    if (idbuf_push(o, sy[i].id)) goto done;
  rc = 0;
done:
  free(sy);
  free(h);
  return rc;
}

static int encode_piece_cached(const gpt_bpe *b, const char *s, size_t len, idbuf *o) {
  gpt_bpe *mb = (gpt_bpe *)b; /* the cache is the only mutable part, under its lock */
  if (len > CACHE_MAX_WORD) return encode_piece(b, s, len, o);
  pthread_mutex_lock(&mb->cache_lock);
  smap_slot *hit = smap_find(&mb->cache, s, len, qv_hash_bytes(s, len));
  if (hit) {
    int rc = 0;
    for (int32_t i = 0; i < hit->val && !rc; i++) rc = idbuf_push(o, hit->ids[i]);
    pthread_mutex_unlock(&mb->cache_lock);
    return rc;
  }
  pthread_mutex_unlock(&mb->cache_lock);
  size_t start = o->n;
  if (encode_piece(b, s, len, o)) return -1;
  size_t k = o->n - start;
  int32_t *ids = malloc((k ? k : 1) * sizeof *ids);
  if (!ids) return 0; /* the cache is an optimisation; the piece is encoded */
  memcpy(ids, o->ids + start, k * sizeof *ids);
  pthread_mutex_lock(&mb->cache_lock);
  if (mb->cache.count >= CACHE_MAX_ENTRIES) smap_clear(&mb->cache);
  int added;
  smap_slot *slot = smap_put(&mb->cache, s, len, &added);
  if (slot && added) {
    slot->ids = ids;
    slot->val = (int32_t)k;
    ids = NULL;
  }
  pthread_mutex_unlock(&mb->cache_lock);
  free(ids);
  return 0;
}

/* The leftmost, then longest, added token at or after i: its start, or len when none. */
static size_t next_added(const gpt_bpe *b, const char *s, size_t len, size_t i, const added_token **which) {
  *which = NULL;
  if (!b->n_added) return len;
  for (; i < len; i++) {
    for (size_t k = 0; k < b->n_added; k++) {
      const added_token *a = &b->added[k];
      int here = a->len <= len - i && a->text[0] == s[i] && !memcmp(a->text, s + i, a->len);
      if (here && (!*which || a->len > (*which)->len)) *which = a;
    }
    if (*which) return i;
  }
  return len;
}

/* Calls fn on each pre-tokenized piece of an ordinary run; 0 or the first nonzero. */
static int for_each_piece(const char *s, size_t len, int (*fn)(void *ctx, const char *p, size_t n), void *ctx) {
  for (size_t i = 0; i < len;) {
    size_t n = pretok_next(s + i, len - i);
    int rc = fn(ctx, s + i, n);
    if (rc) return rc;
    i += n;
  }
  return 0;
}

typedef struct enc_ctx {
  const gpt_bpe *b;
  idbuf *o;
} enc_ctx;

static int enc_piece_fn(void *ctx, const char *p, size_t n) {
  enc_ctx *c = ctx;
  return encode_piece_cached(c->b, p, n, c->o);
}

qv_status gpt_bpe_encode(const gpt_bpe *b, const char *text, size_t len, int32_t **ids, size_t *n) {
  *ids = NULL;
  *n = 0;
  idbuf o = {0};
  enc_ctx c = {b, &o};
  for (size_t i = 0; i < len;) {
    const added_token *a;
    size_t j = next_added(b, text, len, i, &a);
    if (for_each_piece(text + i, j - i, enc_piece_fn, &c)) goto nomem;
    if (!a) break;
    if (idbuf_push(&o, a->id)) goto nomem;
    i = j + a->len;
  }
  *ids = o.ids;
  *n = o.n;
  if (!o.n) {
    free(o.ids);
    *ids = NULL;
  }
  return QV_OK;
nomem:
  free(o.ids);
  return QV_ENOMEM;
}

char *gpt_bpe_decode(const gpt_bpe *b, const int32_t *ids, size_t n, size_t *len) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++)
    if (ids[i] >= 0 && (size_t)ids[i] < b->n_ids) total += b->tok_len[ids[i]];
  char *out = malloc(total + 1);
  if (!out) return NULL;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || (size_t)ids[i] >= b->n_ids || !b->tok[ids[i]]) continue; /* unknown ids decode to nothing */
    memcpy(out + o, b->tok[ids[i]], b->tok_len[ids[i]]);
    o += b->tok_len[ids[i]];
  }
  out[o] = 0;
  if (len) *len = o;
  return out;
}

const char *gpt_bpe_token_bytes(const gpt_bpe *b, int32_t id, size_t *len) {
  if (id < 0 || (size_t)id >= b->n_ids || !b->tok[id]) {
    if (len) *len = 0;
    return NULL;
  }
  if (len) *len = b->tok_len[id];
  return b->tok[id];
}

size_t gpt_bpe_vocab_size(const gpt_bpe *b) { return b->n_ids; }
int32_t gpt_bpe_eot(const gpt_bpe *b) { return b->eot; }

/* ---- saving --------------------------------------------------------------------------------- */

static json_t *mapped_string(const char *s, size_t n) {
  char *buf = NULL;
  size_t len = 0, cap = 0;
  if (map_bytes(s, n, &buf, &len, &cap)) return NULL;
  json_t *j = json_stringn(buf, len);
  free(buf);
  return j;
}

/* A token that came from a vocabulary in non-printable form (its text is kept as is). */
static json_t *token_json(const gpt_bpe *b, int32_t id) {
  return mapped_string(b->tok[id], b->tok_len[id]);
}

static json_t *byte_level(int add_prefix_space, int trim_offsets) {
  return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", add_prefix_space, "trim_offsets",
                   trim_offsets, "use_regex", 1);
}

char *gpt_bpe_to_json(const gpt_bpe *b) {
  json_t *root = json_object(), *added = json_array(), *vocab = json_object(), *merges = json_array();
  json_t *model = NULL;
  char *out = NULL;
  if (!root || !added || !vocab || !merges) goto done;
  for (size_t i = 0; i < b->n_added; i++) {
    const added_token *a = &b->added[i];
    json_t *t = json_pack("{s:i, s:s%, s:b, s:b, s:b, s:b, s:b}", "id", (int)a->id, "content", a->text, a->len,
                          "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", a->special);
    if (!t || json_array_append_new(added, t)) goto done;
  }
  for (size_t id = 0; id < b->n_ids; id++) {
    if (!b->tok[id]) continue; /* added tokens are listed too, as GPT-2's own file does */
    char *buf = NULL;
    size_t len = 0, cap = 0;
    if (map_bytes(b->tok[id], b->tok_len[id], &buf, &len, &cap)) goto done;
    int bad = json_object_setn_new(vocab, buf, len, json_integer((json_int_t)id));
    free(buf);
    if (bad) goto done;
  }
  for (size_t r = 0; r < b->n_merges; r++) {
    json_t *m = json_pack("[o, o]", token_json(b, b->merge_a[r]), token_json(b, b->merge_b[r]));
    if (!m || json_array_append_new(merges, m)) goto done;
  }
  model = json_pack("{s:s, s:n, s:n, s:s, s:s, s:b, s:b, s:b, s:O, s:O}", "type", "BPE", "dropout", "unk_token",
                    "continuing_subword_prefix", "", "end_of_word_suffix", "", "fuse_unk", 0, "byte_fallback", 0,
                    "ignore_merges", b->ignore_merges, "vocab", vocab, "merges", merges);
  if (!model) goto done;
  if (json_object_set_new(root, "version", json_string("1.0")) ||
      json_object_set_new(root, "truncation", json_null()) || json_object_set_new(root, "padding", json_null()) ||
      json_object_set(root, "added_tokens", added) ||
      json_object_set_new(root, "normalizer", json_null()) ||
      json_object_set_new(root, "pre_tokenizer", byte_level(0, 1)) ||
      json_object_set_new(root, "post_processor", byte_level(1, 0)) ||
      json_object_set_new(root, "decoder", byte_level(1, 1)) || json_object_set(root, "model", model))
    goto done;
  out = json_dumps(root, 0);
done:
  json_decref(root);
  json_decref(added);
  json_decref(vocab);
  json_decref(merges);
  json_decref(model);
  return out;
}

qv_status gpt_bpe_save(const gpt_bpe *b, const char *path, qv_error *err) {
  char *json = gpt_bpe_to_json(b);
  if (!json) return qv_fail(err, QV_ENOMEM, "out of memory");
  /* a unique temporary beside path, fsynced, renamed, the folder fsynced: a crash leaves
   * the old file or the new one */
  qv_status rc = gpt_ckpt_write_file(path, json, strlen(json), err);
  free(json);
  return rc;
}

/* ---- training -------------------------------------------------------------------------------- */

typedef struct tword {
  int32_t *sym; /* (n) current symbols */
  size_t n;
  int64_t count;
  size_t seen; /* the last merge that visited this word, + 1 */
} tword;

typedef struct tpair {
  int32_t a, b;
  int64_t count;
  size_t *words; /* indices of words that held the pair at some point (may repeat) */
  size_t nw, cw;
  size_t mark; /* the last merge that pushed this pair on the heap, + 1 */
} tpair;

typedef struct trainer {
  smap words_map; /* piece -> index in words */
  tword *words;
  size_t nwords, cwords;
  pmap pair_idx; /* pair_key -> index in pairs */
  tpair *pairs;
  size_t npairs, cpairs;
  heap_ent *heap; /* rank = count, pos = pair index; max-heap via negated order */
  size_t nheap, cheap;
} trainer;

static int count_piece_fn(void *ctx, const char *p, size_t n) {
  trainer *t = ctx;
  int added;
  smap_slot *s = smap_put(&t->words_map, p, n, &added);
  if (!s) return -1;
  if (added) {
    if (t->nwords == t->cwords) {
      size_t c = t->cwords ? t->cwords * 2 : 1024;
      tword *w = realloc(t->words, c * sizeof *w);
      if (!w) return -1;
      t->words = w;
      t->cwords = c;
    }
    s->val = (int32_t)t->nwords;
    t->words[t->nwords++] = (tword){NULL, 0, 0, 0};
  }
  t->words[s->val].count++;
  return 0;
}

/* Max-heap order: higher count first, then smaller (a, b). */
static int pair_before(const trainer *t, heap_ent x, heap_ent y) {
  if (x.rank != y.rank) return x.rank > y.rank;
  const tpair *p = &t->pairs[x.pos], *q = &t->pairs[y.pos];
  return p->a != q->a ? p->a < q->a : p->b < q->b;
}

static int theap_push(trainer *t, int64_t count, int32_t pair) {
  if (t->nheap == t->cheap) {
    size_t c = t->cheap ? t->cheap * 2 : 1024;
    heap_ent *h = realloc(t->heap, c * sizeof *h);
    if (!h) return -1;
    t->heap = h;
    t->cheap = c;
  }
  heap_ent e = {count, pair};
  size_t i = t->nheap++;
  while (i && pair_before(t, e, t->heap[(i - 1) / 2])) {
    t->heap[i] = t->heap[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  t->heap[i] = e;
  return 0;
}

static heap_ent theap_pop(trainer *t) {
  heap_ent top = t->heap[0], e = t->heap[--t->nheap];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= t->nheap) break;
    if (c + 1 < t->nheap && pair_before(t, t->heap[c + 1], t->heap[c])) c++;
    if (!pair_before(t, t->heap[c], e)) break;
    t->heap[i] = t->heap[c];
    i = c;
  }
  if (t->nheap) t->heap[i] = e;
  return top;
}

/* Adds delta to pair (a, b)'s count and, when positive, notes word w as holding it.
 * Returns the pair's index or -1 on no memory. */
static int64_t pair_add(trainer *t, int32_t a, int32_t b, int64_t delta, size_t w) {
  uint64_t k = pair_key(a, b);
  int64_t i = pmap_get(&t->pair_idx, k);
  if (i < 0) {
    if (t->npairs == t->cpairs) {
      size_t c = t->cpairs ? t->cpairs * 2 : 1024;
      tpair *p = realloc(t->pairs, c * sizeof *p);
      if (!p) return -1;
      t->pairs = p;
      t->cpairs = c;
    }
    i = (int64_t)t->npairs++;
    t->pairs[i] = (tpair){a, b, 0, NULL, 0, 0, 0};
    if (pmap_set(&t->pair_idx, k, i)) return -1;
  }
  tpair *p = &t->pairs[i];
  p->count += delta;
  if (delta > 0 && (!p->nw || p->words[p->nw - 1] != w)) {
    if (p->nw == p->cw) {
      size_t c = p->cw ? p->cw * 2 : 4;
      size_t *ws = realloc(p->words, c * sizeof *ws);
      if (!ws) return -1;
      p->words = ws;
      p->cw = c;
    }
    p->words[p->nw++] = w;
  }
  return i;
}

static void trainer_free(trainer *t) {
  smap_clear(&t->words_map);
  for (size_t i = 0; i < t->nwords; i++) free(t->words[i].sym);
  free(t->words);
  for (size_t i = 0; i < t->npairs; i++) free(t->pairs[i].words);
  free(t->pairs);
  pmap_clear(&t->pair_idx);
  free(t->heap);
}

/* A merge turned pair (a, b) of word wi (count times) into (c, d): moves the count and
 * notes (c, d) in tl for the heap. 0 or -1 on no memory. */
static int move_pair(trainer *t, int32_t a, int32_t b, int32_t c, int32_t d, int64_t count, size_t wi,
                     idbuf *tl) {
  if (pair_add(t, a, b, -count, wi) < 0) return -1;
  int64_t np = pair_add(t, c, d, count, wi);
  return np < 0 ? -1 : idbuf_push(tl, (int32_t)np); /* pair indices fit: the heap holds int32 */
}

/* Merges pair index pi into new id z in every word holding it; pairs whose count rose are
 * (re)pushed on the heap. */
static int apply_merge(trainer *t, size_t pi, int32_t z, size_t merge_no) {
  int32_t a = t->pairs[pi].a, bb = t->pairs[pi].b;
  size_t nw = t->pairs[pi].nw;
  size_t *ws = t->pairs[pi].words;
  t->pairs[pi].words = NULL;
  t->pairs[pi].nw = t->pairs[pi].cw = 0;
  idbuf tl = {0};
  int rc = -1;
  for (size_t k = 0; k < nw; k++) {
    size_t wi = ws[k];
    tword *w = &t->words[wi];
    if (w->seen == merge_no + 1) continue;
    w->seen = merge_no + 1;
    size_t o = 0;
    for (size_t i = 0; i < w->n; i++) {
      if (i + 1 < w->n && w->sym[i] == a && w->sym[i + 1] == bb) {
        if (o > 0 && move_pair(t, w->sym[o - 1], a, w->sym[o - 1], z, w->count, wi, &tl)) goto done;
        if (i + 2 < w->n && move_pair(t, bb, w->sym[i + 2], z, w->sym[i + 2], w->count, wi, &tl)) goto done;
        t->pairs[pi].count -= w->count;
        w->sym[o++] = z;
        i++;
      } else {
        w->sym[o++] = w->sym[i];
      }
    }
    w->n = o;
  }
  /* new pairs (all hold z) enter the heap once, with their final count */
  for (size_t i = 0; i < tl.n; i++) {
    tpair *p = &t->pairs[tl.ids[i]];
    if (p->count > 0 && p->mark != merge_no + 1) {
      p->mark = merge_no + 1;
      if (theap_push(t, p->count, (int32_t)tl.ids[i])) goto done;
    }
  }
  rc = 0;
done:
  free(ws);
  free(tl.ids);
  return rc;
}

qv_status gpt_bpe_train(gpt_bpe **out, const char *const *texts, const size_t *lens, size_t n, size_t vocab_size,
                        void (*progress)(void *ctx, size_t done, size_t total), void *ctx, qv_error *err) {
  *out = NULL;
  if (vocab_size < 257 || vocab_size > (1 << 24))
    return qv_fail(err, QV_ERANGE, "vocabulary size %zu: expected 257 (the bytes and <|endoftext|>) to %d", vocab_size,
                   1 << 24);
  qv_status rc = QV_OK;
  trainer t = {0};
  gpt_bpe *b = bpe_new();
  if (!b) return qv_fail(err, QV_ENOMEM, "out of memory");
  size_t n_merges = vocab_size - 257, merges_cap = n_merges + 1;
  if ((rc = alloc_merges(b, merges_cap, err))) goto fail;
  for (int i = 0; i < 256; i++) {
    char c = (char)byte_rank_order(i);
    if ((rc = set_token(b, i, &c, 1, err))) goto fail;
    int added;
    smap_slot *s = smap_put(&b->vocab, &c, 1, &added);
    if (!s) goto nomem;
    s->val = i;
    b->byte_id[(uint8_t)c] = i;
  }
  /* count words; <|endoftext|> in the corpus separates texts and is not learned from */
  for (size_t d = 0; d < n; d++) {
    const char *s = texts[d];
    size_t len = lens[d];
    for (size_t i = 0; i < len;) {
      const char *e = len - i >= strlen(EOT_TEXT) ? memmem(s + i, len - i, EOT_TEXT, strlen(EOT_TEXT)) : NULL;
      size_t j = e ? (size_t)(e - s) : len;
      if (for_each_piece(s + i, j - i, count_piece_fn, &t)) goto nomem;
      i = e ? j + strlen(EOT_TEXT) : len;
    }
  }
  /* words as byte-token symbols; initial pair counts */
  for (size_t i = 0; i < t.words_map.cap; i++) {
    smap_slot *s = &t.words_map.slots[i];
    if (!s->key) continue;
    tword *w = &t.words[s->val];
    w->sym = malloc((s->len ? s->len : 1) * sizeof *w->sym);
    if (!w->sym) goto nomem;
    for (size_t k = 0; k < s->len; k++) w->sym[k] = b->byte_id[(uint8_t)s->key[k]];
    w->n = s->len;
  }
  /* word order decides nothing: pairs are visited in word-index order, and ties in the heap
   * are broken by ids, so the result does not depend on hash-table layout */
  for (size_t wi = 0; wi < t.nwords; wi++) {
    tword *w = &t.words[wi];
    for (size_t k = 0; k + 1 < w->n; k++)
      if (pair_add(&t, w->sym[k], w->sym[k + 1], w->count, wi) < 0) goto nomem;
  }
  for (size_t i = 0; i < t.npairs; i++)
    if (t.pairs[i].count > 0 && theap_push(&t, t.pairs[i].count, (int32_t)i)) goto nomem;
  /* ids are handed out in merge order; a pair spelling bytes that already have a token
   * ("a"+"bc" after "ab"+"c") reuses that id, as HF does, so it adds a merge but no id */
  size_t done = 0, merge_no = 0;
  int32_t next_id = 256;
  while (done < n_merges && t.nheap) {
    heap_ent e = theap_pop(&t);
    tpair *p = &t.pairs[e.pos];
    if (p->count <= 0) continue;
    if (p->count != e.rank) {
      if (theap_push(&t, p->count, e.pos)) goto nomem;
      continue;
    }
    size_t la = b->tok_len[p->a], lb = b->tok_len[p->b];
    char *buf = malloc(la + lb);
    if (!buf) goto nomem;
    memcpy(buf, b->tok[p->a], la);
    memcpy(buf + la, b->tok[p->b], lb);
    int added = 0;
    smap_slot *s = smap_put(&b->vocab, buf, la + lb, &added);
    if (s && added) {
      s->val = next_id;
      rc = set_token(b, next_id, buf, la + lb, err);
    }
    free(buf);
    if (!s) goto nomem;
    if (rc) goto fail;
    int32_t z = s->val;
    if (added) {
      next_id++;
      done++;
    }
    b->merge_a[b->n_merges] = p->a;
    b->merge_b[b->n_merges] = p->b;
    b->merge_out[b->n_merges] = z;
    if (pmap_set(&b->merges, pair_key(p->a, p->b), (int64_t)b->n_merges)) goto nomem;
    b->n_merges++;
    if (b->n_merges == merges_cap && grow_merges(b, &merges_cap)) goto nomem;
    if (apply_merge(&t, (size_t)e.pos, z, merge_no++)) goto nomem;
    if (progress && added && (done % 64 == 0 || done == n_merges)) progress(ctx, done, n_merges);
  }
  if ((rc = set_token(b, next_id, EOT_TEXT, strlen(EOT_TEXT), err))) goto fail;
  if ((rc = add_special(b, EOT_TEXT, strlen(EOT_TEXT), next_id, 1, err))) goto fail;
  trainer_free(&t);
  *out = b;
  return QV_OK;
nomem:
  rc = qv_fail(err, QV_ENOMEM, "out of memory");
fail:
  trainer_free(&t);
  gpt_bpe_free(b);
  return rc;
}
