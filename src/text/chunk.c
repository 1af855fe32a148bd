/* Chunkers: fixed, sentence, structure, adaptive, each optionally overlapping.
 *
 * All four are one greedy packer over the document's words (maximal runs of non-space
 * bytes inside blocks). Each word knows its token count under the model's tokenizer and
 * how strong the boundary after it is:
 *   0 inside a sentence, 1 a sentence end (or a line end in code), 2 a block end,
 *   3 a section boundary (before a heading, around code blocks), 4 a cut that must
 *   happen (between the pieces of a word too long for any chunk).
 * A chunker is a rule for where to cut among the boundaries that fit the budget: fixed
 * takes the furthest word, sentence the furthest sentence end, structure the furthest
 * block end and never crosses a section, adaptive the strongest boundary between min and
 * max nearest to a size picked by the density of the text (more tokens per word, as in
 * code and reference tables, means smaller chunks).
 * Counting words one at a time equals counting the chunk, because BERT's pre-tokenizer
 * splits on whitespace first; tests/unit/test_chunk.c checks it against the tokenizer.
 */
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/hash.h"
#include "text/text.h"

enum { BRK_WORD = 0, BRK_SENTENCE = 1, BRK_BLOCK = 2, BRK_SECTION = 3, BRK_FORCED = 4 };

typedef struct word {
  size_t start, end;
  uint32_t tokens;
  uint8_t brk;
  uint8_t code;
  uint32_t block;
} word;

typedef struct words {
  word *w;
  size_t n, cap;
} words;

qv_status text_chunker_parse(text_chunker *out, const char *name) {
  static const char *names[] = {"fixed", "sentence", "structure", "adaptive"};
  for (int i = 0; i < 4; i++)
    if (!strcmp(name, names[i])) {
      *out = (text_chunker)i;
      return QV_OK;
    }
  return QV_EINVAL;
}

const char *text_chunker_name(text_chunker c) {
  static const char *names[] = {"fixed", "sentence", "structure", "adaptive"};
  return (unsigned)c < 4 ? names[c] : "?";
}

void text_sha256_hex(const void *data, size_t n, char hex[65]) {
  unsigned char md[32];
  unsigned int len = 0;
  EVP_Digest(data, n, md, &len, EVP_sha256(), NULL);
  for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
  hex[64] = 0;
}

json_t *text_block_headings(const text_doc *d, size_t block) {
  json_t *a = json_array();
  if (!a || block >= d->nblocks) return a;
  const text_block *b = &d->blocks[block];
  for (int i = 0; i < b->depth; i++) json_array_append_new(a, json_string(d->heads[b->path[i]]));
  return a;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* ---- a per-call cache of word token counts (documents repeat their words) ---------------- */

typedef struct count_cache {
  struct slot {
    const char *s;
    uint32_t len, tokens;
  } *slots;
  size_t mask, used;
  text_count_fn fn;
  void *ctx;
} count_cache;


static qv_status count_words(count_cache *c, const char *s, size_t n, uint32_t *out, qv_error *err) {
  if (n > 64 || !c->slots) return c->fn(c->ctx, s, n, out, err);
  size_t i = qv_hash_bytes(s, n) & c->mask;
  while (c->slots[i].s) {
    if (c->slots[i].len == n && !memcmp(c->slots[i].s, s, n)) {
      *out = c->slots[i].tokens;
      return QV_OK;
    }
    i = (i + 1) & c->mask;
  }
  qv_status st = c->fn(c->ctx, s, n, out, err);
  if (st) return st;
  if (c->used * 2 < c->mask) {
    c->slots[i].s = s;
    c->slots[i].len = (uint32_t)n;
    c->slots[i].tokens = *out;
    c->used++;
  }
  return QV_OK;
}

/* ---- words --------------------------------------------------------------------------- */

static int push_word(words *ws, word w) {
  if (ws->n == ws->cap) {
    size_t cap = ws->cap ? ws->cap * 2 : 256;
    word *nw = realloc(ws->w, cap * sizeof *nw);
    if (!nw) return -1;
    ws->w = nw;
    ws->cap = cap;
  }
  ws->w[ws->n++] = w;
  return 0;
}

static int utf8_cont(char c) { return ((unsigned char)c & 0xC0) == 0x80; }

/* Pushes word [a, b), cut into pieces of at most `budget` tokens when it is longer. */
static qv_status add_word(words *ws, count_cache *cc, const text_doc *d, size_t a, size_t b, uint32_t block,
                          uint8_t code, uint32_t budget, qv_error *err) {
  uint32_t t;
  qv_status st = count_words(cc, d->text + a, b - a, &t, err);
  if (st) return st;
  if (t <= budget) return push_word(ws, (word){a, b, t, BRK_WORD, code, block}) ? QV_ENOMEM : QV_OK;
  /* the character boundaries of the word, then the longest prefix that fits, by binary
   * search over them, piece after piece */
  size_t *offs = malloc((b - a + 1) * sizeof *offs), nb = 0;
  if (!offs) return QV_ENOMEM;
  for (size_t k = a + 1; k <= b; k++)
    if (k == b || !utf8_cont(d->text[k])) offs[nb++] = k;
  size_t from = 0; /* index into offs of the first char boundary after the piece start */
  while (a < b) {
    size_t lo = from, hi = nb - 1, best = from;
    uint32_t best_t = 0;
    int found = 0;
    while (lo <= hi) {
      size_t mid = lo + (hi - lo) / 2;
      if ((st = cc->fn(cc->ctx, d->text + a, offs[mid] - a, &t, err))) break;
      if (t <= budget) {
        best = mid, best_t = t, found = 1;
        lo = mid + 1;
      } else {
        if (mid == 0) break;
        hi = mid - 1;
      }
    }
    if (!st && !found) st = cc->fn(cc->ctx, d->text + a, offs[from] - a, &best_t, err); /* one char alone */
    if (st) break;
    size_t e = offs[best];
    if (push_word(ws, (word){a, e, best_t, e < b ? BRK_FORCED : BRK_WORD, code, block})) {
      st = QV_ENOMEM;
      break;
    }
    a = e;
    from = best + 1;
  }
  free(offs);
  return st;
}

static int abbreviation(const char *s, size_t n) {
  static const char *abbr[] = {"e.g.", "i.e.", "vs.", "etc.", "Mr.", "Mrs.", "Dr.", "cf.", "approx.", "Fig.", "No."};
  for (size_t i = 0; i < sizeof abbr / sizeof abbr[0]; i++) {
    size_t k = strlen(abbr[i]);
    if (n >= k && !strncmp(s + n - k, abbr[i], k) && (n == k || !((s[n - k - 1] | 32) >= 'a' && (s[n - k - 1] | 32) <= 'z')))
      return 1;
  }
  return 0;
}

/* Whether the word [a, b) ends a sentence when followed by the word at c. */
static int sentence_end(const char *s, size_t a, size_t b, size_t c) {
  size_t e = b;
  while (e > a && (s[e - 1] == ')' || s[e - 1] == '"' || s[e - 1] == '\'' || s[e - 1] == ']' || s[e - 1] == '*')) e--;
  if (e == a) return 0;
  char last = s[e - 1];
  if (last != '.' && last != '!' && last != '?') return 0;
  if (last == '.' && abbreviation(s + a, e - a)) return 0;
  unsigned char nx = (unsigned char)s[c];
  return !(nx >= 'a' && nx <= 'z');
}

static qv_status build_words(const text_doc *d, count_cache *cc, uint32_t budget, words *ws, qv_error *err) {
  for (size_t bi = 0; bi < d->nblocks; bi++) {
    const text_block *b = &d->blocks[bi];
    size_t first = ws->n;
    size_t i = b->start;
    uint8_t code = b->kind == TEXT_BLOCK_CODE;
    while (i < b->end) {
      while (i < b->end && is_space(d->text[i])) i++;
      if (i == b->end) break;
      size_t j = i;
      while (j < b->end && !is_space(d->text[j])) j++;
      qv_status st = add_word(ws, cc, d, i, j, (uint32_t)bi, code, budget, err);
      if (st) return st;
      i = j;
    }
    /* boundaries inside the block */
    for (size_t k = first; k + 1 < ws->n; k++) {
      word *w = &ws->w[k];
      if (w->brk == BRK_FORCED) continue;
      if (code) w->brk = memchr(d->text + w->end, '\n', ws->w[k + 1].start - w->end) ? BRK_SENTENCE : BRK_WORD;
      else w->brk = sentence_end(d->text, w->start, w->end, ws->w[k + 1].start) ? BRK_SENTENCE : BRK_WORD;
    }
    if (ws->n > first) {
      word *last = &ws->w[ws->n - 1];
      int section = bi + 1 >= d->nblocks || code || d->blocks[bi + 1].kind == TEXT_BLOCK_HEADING ||
                    d->blocks[bi + 1].kind == TEXT_BLOCK_CODE;
      /* a heading belongs with what follows it: cutting right after one is no better
       * than cutting at a sentence end */
      if (b->kind == TEXT_BLOCK_HEADING)
        last->brk = bi + 1 >= d->nblocks || d->blocks[bi + 1].kind == TEXT_BLOCK_HEADING ? BRK_SECTION : BRK_SENTENCE;
      else
        last->brk = section ? BRK_SECTION : BRK_BLOCK;
    }
  }
  return QV_OK;
}

/* ---- packing -------------------------------------------------------------------------- */

static size_t line_of(const size_t *starts, size_t nlines, size_t off) {
  size_t lo = 0, hi = nlines; /* the last line start <= off */
  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if (starts[mid] <= off) lo = mid;
    else hi = mid;
  }
  return lo + 1;
}

qv_status text_chunk_doc(const text_doc *d, const char *src, size_t n, const text_chunk_config *c,
                         text_count_fn count, void *ctx, text_chunk **out, size_t *nout, qv_error *err) {
  *out = NULL;
  *nout = 0;
  uint32_t budget = c->kind == TEXT_CHUNK_ADAPTIVE ? c->max : c->size;
  if (budget < 1) return qv_fail(err, QV_EINVAL, "chunk size must be at least 1 token");
  if (c->kind == TEXT_CHUNK_ADAPTIVE && (c->min < 1 || c->min > c->max))
    return qv_fail(err, QV_EINVAL, "adaptive chunks need 1 <= min (%u) <= max (%u)", c->min, c->max);
  if (!(c->overlap >= 0 && c->overlap <= 0.9)) return qv_fail(err, QV_EINVAL, "overlap must be in [0, 0.9]");
  words ws = {0};
  uint64_t *P = NULL;
  size_t *lines = NULL, nlines = 0;
  text_chunk *chunks = NULL;
  size_t nchunks = 0, cap = 0;
  qv_status st = QV_OK;
  count_cache cc = {.fn = count, .ctx = ctx, .mask = 4095};
  cc.slots = calloc(cc.mask + 1, sizeof *cc.slots);
  if (!cc.slots) goto oom;
  if ((st = build_words(d, &cc, budget, &ws, err))) goto fail;
  if (!(P = malloc((ws.n + 1) * sizeof *P))) goto oom;
  P[0] = 0;
  for (size_t i = 0; i < ws.n; i++) P[i + 1] = P[i] + ws.w[i].tokens;
  size_t lcap = 1024;
  if (!(lines = malloc(lcap * sizeof *lines))) goto oom;
  lines[nlines++] = 0;
  for (size_t i = 0; i < n; i++)
    if (src[i] == '\n' && i + 1 <= n) {
      if (nlines == lcap) {
        size_t *nl = realloc(lines, lcap * 2 * sizeof *nl);
        if (!nl) goto oom;
        lines = nl;
        lcap *= 2;
      }
      lines[nlines++] = i + 1;
    }

  int hard = c->kind == TEXT_CHUNK_STRUCTURE ? BRK_SECTION : BRK_FORCED;
  size_t i = 0, prev_j = 0;
  while (i < ws.n) {
    size_t lim = i;
    while (lim < ws.n && ws.w[lim].brk < hard) lim++;
    lim = lim < ws.n ? lim + 1 : ws.n;
    size_t jfit = i + 1;
    while (jfit < lim && P[jfit + 1] - P[i] <= budget) jfit++;
    size_t min_end = prev_j + 1 > i + 1 ? prev_j + 1 : i + 1;
    size_t j = jfit;
    if (c->kind == TEXT_CHUNK_SENTENCE || c->kind == TEXT_CHUNK_STRUCTURE) {
      int want = c->kind == TEXT_CHUNK_STRUCTURE ? BRK_BLOCK : BRK_SENTENCE;
      for (; want >= BRK_SENTENCE; want--) {
        size_t k = jfit;
        while (k >= min_end && !(k == lim || ws.w[k - 1].brk >= want)) k--;
        if (k >= min_end) {
          j = k;
          break;
        }
      }
    } else if (c->kind == TEXT_CHUNK_ADAPTIVE) {
      double tpw = (double)(P[jfit] - P[i]) / (double)(jfit - i);
      double dens = (tpw - 1.2) / 0.8;
      dens = dens < 0 ? 0 : dens > 1 ? 1 : dens;
      double target = c->max - dens * (c->max - c->min);
      double best = -1e300;
      for (size_t k = min_end; k <= jfit; k++) {
        double size = (double)(P[k] - P[i]);
        if (size < c->min && k != lim) continue;
        int strength = k == lim ? BRK_SECTION : ws.w[k - 1].brk;
        double score = strength * 1e6 - (size > target ? size - target : target - size);
        if (score > best) best = score, j = k;
      }
    }
    if (nchunks == cap) {
      size_t ncap = cap ? cap * 2 : 64;
      text_chunk *nc = realloc(chunks, ncap * sizeof *nc);
      if (!nc) goto oom;
      chunks = nc;
      cap = ncap;
    }
    text_chunk *ch = &chunks[nchunks++];
    memset(ch, 0, sizeof *ch);
    ch->start = ws.w[i].start;
    ch->end = ws.w[j - 1].end;
    ch->src_start = d->map[ch->start];
    ch->src_end = d->map_end[ch->end - 1];
    if (ch->src_end < ch->src_start) ch->src_end = ch->src_start;
    ch->line_start = line_of(lines, nlines, ch->src_start);
    ch->line_end = line_of(lines, nlines, ch->src_end > ch->src_start ? ch->src_end - 1 : ch->src_start);
    ch->tokens = (uint32_t)(P[j] - P[i]);
    ch->block = ws.w[i].block;
    for (size_t k = i; k < j && !ch->is_code; k++) ch->is_code = ws.w[k].code;
    prev_j = j;
    if (j >= ws.n) break;
    size_t next = j;
    if (c->overlap > 0 && ws.w[j - 1].brk < hard) {
      uint64_t ov = (uint64_t)(c->overlap * (double)(P[j] - P[i]));
      size_t k = j;
      while (k - 1 > i && P[j] - P[k - 1] <= ov) k--;
      while (k < j && P[j + 1] - P[k] > budget) k++;
      next = k;
    }
    i = next;
  }
  free(cc.slots);
  free(ws.w);
  free(P);
  free(lines);
  *out = chunks;
  *nout = nchunks;
  return QV_OK;
oom:
  st = qv_fail(err, QV_ENOMEM, "out of memory");
fail:
  free(cc.slots);
  free(ws.w);
  free(P);
  free(lines);
  free(chunks);
  return st;
}
