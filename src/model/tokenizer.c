/* Tokenizers read from Hugging Face `tokenizer.json`, the BERT family's pipeline, giving
 * the ids HF `tokenizers` gives (tests/integration/test_tokenizer.py checks thousands of
 * strings against it).
 *
 * One encode, per text:
 *   1. decode       UTF-8 to code points (raw), rejecting invalid input with its offset
 *   2. added tokens split raw on the added tokens that are not `normalized` (leftmost-
 *                   longest, as HF's Aho-Corasick), then each piece in between is
 *   3. normalized   clean_text, chinese chars, strip_accents, lowercase, in HF's order;
 *                   then split again on the `normalized` added tokens
 *   4. pre-split    on White_Space, and each punctuation char alone
 *   5. WordPiece    greedy longest-match-first with the continuing-subword prefix
 *   then truncation (HF's longest-first arithmetic) and the post-processor template.
 *
 * Where HF differs from "the Unicode standard" we follow HF, because ids must match:
 *   - HF's BertNormalizer and BertPreTokenizer take "other" (Cc, Cf, Co), "nonspacing
 *     mark" and "punctuation" from the unicode_categories crate, whose tables predate
 *     Unicode 9, while lowercase is Rust's (Unicode 16). utf8proc 2.8 is Unicode 15, so
 *     the code points whose category or mapping differs are listed below as exceptions,
 *     found by comparing every code point with HF.
 *   - Unassigned code points (Cn) are kept, not cleaned away.
 *   - Lowercase is Rust's char::to_lowercase: the full mapping, so U+0130 'İ' becomes
 *     "i\u0307" (utf8proc_tolower gives plain 'i'), and Σ never becomes final ς.
 *   - HF's NFD (the unicode-normalization crate) is older still in places: it leaves
 *     U+11938 whole and takes the marks in ccc_newer for starters.
 *   - NFD (strip_accents) runs over each piece between added tokens: combining marks are
 *     reordered by combining class before the nonspacing ones are dropped.
 *   - max_input_chars_per_word counts normalized chars; a longer word is one [UNK].
 *
 * Encoding is on the embedding hot path: vocab lookups go through an open-addressing hash
 * table built at load, and the working buffers are per thread and reused between calls,
 * so an encode allocates nothing once the buffers have grown. */
#include "model/tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "base/error.h"
#include "base/hash.h"

/* Ids index dense arrays; a larger id in a vocab is taken for a malformed file. */
#define TOK_MAX_ID (1 << 24)

/* ---- Unicode, as HF sees it ----------------------------------------------------------- */

typedef struct cp_range {
  uint32_t lo, hi;
} cp_range;

static int in_ranges(uint32_t c, const cp_range *r, size_t n) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (c < r[mid].lo) hi = mid;
    else if (c > r[mid].hi) lo = mid + 1;
    else return 1;
  }
  return 0;
}
#define IN(c, table) in_ranges((c), (table), sizeof(table) / sizeof((table)[0]))

/* The tables below are what a comparison of every code point with HF `tokenizers` 0.23
 * found (normalizer and pre-tokenizer run on each char alone). */

/* Cc/Cf/Co in utf8proc that HF does not count as "other": Cf assigned since its tables. */
static const cp_range other_newer[] = {
    {0x0890, 0x0891}, {0x08E2, 0x08E2}, {0x110CD, 0x110CD}, {0x13430, 0x1343F},
};
/* Mn in utf8proc that HF does not count as nonspacing marks: assigned since its tables. */
static const cp_range mn_newer[] = {
    {0x7FD, 0x7FD}, {0x898, 0x89F}, {0x8CA, 0x8E1}, {0x9FE, 0x9FE}, {0xAFA, 0xAFF},
    {0xB55, 0xB55}, {0xC04, 0xC04}, {0xC3C, 0xC3C}, {0xD00, 0xD00}, {0xD3B, 0xD3C},
    {0xD81, 0xD81}, {0xEBA, 0xEBA}, {0xECE, 0xECE}, {0x180F, 0x180F}, {0x1885, 0x1886},
    {0x1ABF, 0x1ACE}, {0x1DF6, 0x1DFB}, {0xA82C, 0xA82C}, {0xA8C5, 0xA8C5}, {0xA8FF, 0xA8FF},
    {0xA9BD, 0xA9BD}, {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF},
    {0x10F46, 0x10F50}, {0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x11073, 0x11074},
    {0x110C2, 0x110C2}, {0x111C9, 0x111C9}, {0x111CF, 0x111CF}, {0x1123E, 0x1123E},
    {0x11241, 0x11241}, {0x1133B, 0x1133B}, {0x11438, 0x1143F}, {0x11442, 0x11444},
    {0x11446, 0x11446}, {0x1145E, 0x1145E}, {0x1182F, 0x11837}, {0x11839, 0x1183A},
    {0x1193B, 0x1193C}, {0x1193E, 0x1193E}, {0x11943, 0x11943}, {0x119D4, 0x119D7},
    {0x119DA, 0x119DB}, {0x119E0, 0x119E0}, {0x11A01, 0x11A0A}, {0x11A33, 0x11A38},
    {0x11A3B, 0x11A3E}, {0x11A47, 0x11A47}, {0x11A51, 0x11A56}, {0x11A59, 0x11A5B},
    {0x11A8A, 0x11A96}, {0x11A98, 0x11A99}, {0x11C30, 0x11C36}, {0x11C38, 0x11C3D},
    {0x11C3F, 0x11C3F}, {0x11C92, 0x11CA7}, {0x11CAA, 0x11CB0}, {0x11CB2, 0x11CB3},
    {0x11CB5, 0x11CB6}, {0x11D31, 0x11D36}, {0x11D3A, 0x11D3A}, {0x11D3C, 0x11D3D},
    {0x11D3F, 0x11D45}, {0x11D47, 0x11D47}, {0x11D90, 0x11D91}, {0x11D95, 0x11D95},
    {0x11D97, 0x11D97}, {0x11EF3, 0x11EF4}, {0x11F00, 0x11F01}, {0x11F36, 0x11F3A},
    {0x11F40, 0x11F40}, {0x11F42, 0x11F42}, {0x13440, 0x13440}, {0x13447, 0x13455},
    {0x16F4F, 0x16F4F}, {0x16FE4, 0x16FE4}, {0x1CF00, 0x1CF2D}, {0x1CF30, 0x1CF46},
    {0x1E000, 0x1E006}, {0x1E008, 0x1E018}, {0x1E01B, 0x1E021}, {0x1E023, 0x1E024},
    {0x1E026, 0x1E02A}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE},
    {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF}, {0x1E944, 0x1E94A},
};
/* P* in utf8proc that HF does not count as punctuation: assigned since its tables. */
static const cp_range punct_newer[] = {
    {0x61D, 0x61D}, {0x9FD, 0x9FD}, {0xA76, 0xA76}, {0xC77, 0xC77}, {0xC84, 0xC84},
    {0x1B7D, 0x1B7E}, {0x2E43, 0x2E4F}, {0x2E52, 0x2E5D}, {0x10EAD, 0x10EAD},
    {0x10F55, 0x10F59}, {0x10F86, 0x10F89}, {0x1144B, 0x1144F}, {0x1145A, 0x1145B},
    {0x1145D, 0x1145D}, {0x11660, 0x1166C}, {0x116B9, 0x116B9}, {0x1183B, 0x1183B},
    {0x11944, 0x11946}, {0x119E2, 0x119E2}, {0x11A3F, 0x11A46}, {0x11A9A, 0x11A9C},
    {0x11A9E, 0x11AA2}, {0x11B00, 0x11B09}, {0x11C41, 0x11C45}, {0x11C70, 0x11C71},
    {0x11EF7, 0x11EF8}, {0x11F43, 0x11F4F}, {0x11FFF, 0x11FFF}, {0x12FF1, 0x12FF2},
    {0x16E97, 0x16E9A}, {0x16FE2, 0x16FE2}, {0x1E95E, 0x1E95F},
};
/* Non-starters in utf8proc that HF's NFD takes for starters (combining class 0): marks
 * assigned, or given a class, after its tables. */
static const cp_range ccc_newer[] = {
    {0x7FD, 0x7FD}, {0x898, 0x89F}, {0x8CA, 0x8D3}, {0x9FE, 0x9FE}, {0xC3C, 0xC3C},
    {0xD3B, 0xD3C}, {0xEBA, 0xEBA}, {0x1715, 0x1715}, {0x1ABF, 0x1ACE}, {0x1DF6, 0x1DFA},
    {0xA82C, 0xA82C}, {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF},
    {0x10F46, 0x10F50}, {0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x1133B, 0x1133B},
    {0x1145E, 0x1145E}, {0x11839, 0x1183A}, {0x1193D, 0x1193E}, {0x11943, 0x11943},
    {0x119E0, 0x119E0}, {0x11A34, 0x11A34}, {0x11A47, 0x11A47}, {0x11A99, 0x11A99},
    {0x11D42, 0x11D42}, {0x11D44, 0x11D45}, {0x11D97, 0x11D97}, {0x11F41, 0x11F42},
    {0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE},
    {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF},
};
/* What HF counts and utf8proc does not: code points whose category changed since. */
static const cp_range other_older[] = {{0x1BCA0, 0x1BCA3}, {0xE0001, 0xE0001}};
static const cp_range mn_older[] = {{0x1734, 0x1734}};
static const cp_range punct_older[] = {{0x166D, 0x166D}, {0x111C9, 0x111C9}};

/* Lowercase mappings Rust has (Unicode 16) and utf8proc 2.8 (Unicode 15) lacks:
 * c in [lo, hi] maps to c + delta. */
static const struct {
  uint32_t lo, hi;
  int32_t delta;
} lower_newer[] = {
    {0x1C89, 0x1C89, 1},         {0xA7CB, 0xA7CB, 0x264 - 0xA7CB}, {0xA7CC, 0xA7CC, 1},
    {0xA7CE, 0xA7CE, 1},         {0xA7D2, 0xA7D2, 1},              {0xA7D4, 0xA7D4, 1},
    {0xA7DA, 0xA7DA, 1},         {0xA7DC, 0xA7DC, 0x19B - 0xA7DC}, {0x10D50, 0x10D65, 0x20},
    {0x16EA0, 0x16EB8, 0x1B},
};

static int category(uint32_t c) { return utf8proc_get_property((utf8proc_int32_t)c)->category; }

/* Rust's char::is_whitespace: the White_Space property. */
static int is_ws(uint32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 9 && c <= 13);
  switch (c) {
  case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
  case 0x3000:
    return 1;
  }
  return c >= 0x2000 && c <= 0x200A;
}

/* clean_text removes these; \t \n \r are whitespace instead. */
static int is_control(uint32_t c) {
  if (c < 0x80) return (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F;
  int cat = category(c);
  if (cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_CO)
    return !IN(c, other_newer);
  return IN(c, other_older);
}

/* BERT's "CJK Unified Ideographs" ranges, as HF spells them (0x2B920, not 0x2B820). */
static int is_chinese(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B81F) ||
         (c >= 0x2B920 && c <= 0x2CEAF) || (c >= 0xF900 && c <= 0xFAFF) ||
         (c >= 0x2F800 && c <= 0x2FA1F);
}

static int is_mn(uint32_t c) {
  if (category(c) == UTF8PROC_CATEGORY_MN) return !IN(c, mn_newer);
  return IN(c, mn_older);
}

/* ASCII punctuation (so $, +, <, =, >, ^, `, | and ~ count too), or Unicode P*. */
static int is_punct(uint32_t c) {
  if (c < 0x80)
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
           (c >= 123 && c <= 126);
  int cat = category(c);
  if (cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO) return !IN(c, punct_newer);
  return IN(c, punct_older);
}

/* Regex \w, as HF's single_word check uses it. */
static int is_word_char(uint32_t c) {
  if (c < 0x80)
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  int cat = category(c);
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_ND) ||
         cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_PC || c == 0x200C || c == 0x200D;
}

/* Rust's char::to_lowercase into out (1 or 2 code points); returns the count. */
static int lower(uint32_t c, uint32_t out[2]) {
  if (c < 0x80) {
    out[0] = c >= 'A' && c <= 'Z' ? c + 32 : c;
    return 1;
  }
  if (c == 0x130) { /* the one unconditional multi-char lowercase in SpecialCasing.txt */
    out[0] = 'i';
    out[1] = 0x307;
    return 2;
  }
  out[0] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
  if (out[0] == c && ((c >= 0x1C89 && c <= 0xA7DC) || (c >= 0x10D50 && c <= 0x16EB8))) {
    for (size_t i = 0; i < sizeof lower_newer / sizeof lower_newer[0]; i++)
      if (c >= lower_newer[i].lo && c <= lower_newer[i].hi) out[0] = (uint32_t)((int32_t)c + lower_newer[i].delta);
  }
  return 1;
}

/* ---- The tokenizer ----------------------------------------------------------------- */

typedef struct tok_added {
  char *text;    /* the content as written */
  uint32_t *cps; /* (ncps) content as matched: normalized when `normalized` */
  size_t ncps;
  int32_t id;
  uint8_t single_word, lstrip, rstrip, normalized;
} tok_added;

/* A set of added tokens matched at one stage (raw or normalized text). */
typedef struct tok_added_set {
  tok_added *items; /* (n) */
  size_t n;
  uint8_t first_ascii[128]; /* an item starts with this ASCII char */
  int first_other;          /* an item starts with a non-ASCII char */
} tok_added_set;

enum { PIECE_SPECIAL, PIECE_A, PIECE_B };
typedef struct tok_piece {
  int kind;
  int32_t type_id;
  size_t ids_off, nids; /* into special_ids, for PIECE_SPECIAL */
} tok_piece;

typedef struct tok_slot {
  uint32_t hash;
  int32_t entry; /* -1: empty */
} tok_slot;

typedef struct tok_entry {
  uint32_t off, len; /* the key in pool */
  int32_t id;
} tok_entry;

struct qv_tokenizer {
  /* normalizer */
  int normalize, clean_text, chinese, strip_accents, lowercase;
  /* pre-tokenizer */
  int pre_split;
  /* WordPiece */
  char *pool;         /* keys of entries, and id_token strings */
  tok_entry *entries; /* (n_entries) the model vocab */
  size_t n_entries;
  tok_slot *slots; /* (slot_mask + 1) */
  size_t slot_mask;
  uint32_t max_first, max_cont; /* longest key; longest key after the prefix */
  int32_t unk_id;
  char prefix[64];
  size_t prefix_len, max_chars;
  /* id -> token text (model vocab, then added tokens on top) */
  const char **id_token; /* (n_ids) NULL for holes */
  size_t n_ids;
  /* added tokens */
  tok_added_set raw, norm;
  /* post-processor */
  tok_piece *single, *pair;
  size_t n_single, n_pair;
  int32_t *special_ids;
  size_t n_special_ids;
  size_t added_single, added_pair; /* special tokens each template adds */
  int32_t pad_id;
};

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ n;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, s, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdULL;
    h ^= h >> 32;
    s += 8;
    n -= 8;
  }
  uint64_t w = 0;
  memcpy(&w, s, n);
  return qv_mix64(h ^ w);
}

static int32_t vocab_find(const qv_tokenizer *t, const char *s, size_t n) {
  uint64_t h = hash_bytes(s, n);
  uint32_t h32 = (uint32_t)(h >> 32);
  for (size_t i = (size_t)h & t->slot_mask;; i = (i + 1) & t->slot_mask) {
    const tok_slot *sl = &t->slots[i];
    if (sl->entry < 0) return -1;
    if (sl->hash != h32) continue;
    const tok_entry *e = &t->entries[sl->entry];
    if (e->len == n && memcmp(t->pool + e->off, s, n) == 0) return e->id;
  }
}

/* ---- Per-thread working buffers --------------------------------------------------------- */

typedef struct tok_scratch {
  uint32_t *raw; /* decoded text */
  size_t raw_cap;
  uint32_t *norm; /* one normalized piece */
  size_t norm_cap;
  uint32_t *tmp; /* canonical-ordering merge buffer */
  size_t tmp_cap;
  char *word; /* prefix_len reserved bytes, then the word's UTF-8 */
  size_t word_cap;
  int32_t *ids; /* sequence A's tokens, then B's */
  size_t ids_cap;
} tok_scratch;

/* Buffers larger than this are freed after the call that grew them, so one huge input
 * does not pin its memory to the thread. */
#define SCRATCH_KEEP ((size_t)1 << 20)

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_free(void *p) {
  tok_scratch *s = p;
  if (!s) return;
  free(s->raw);
  free(s->norm);
  free(s->tmp);
  free(s->word);
  free(s->ids);
  free(s);
}

static void scratch_init(void) { scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0; }

static tok_scratch *scratch_get(void) {
  pthread_once(&scratch_once, scratch_init);
  if (!scratch_key_ok) return NULL;
  tok_scratch *s = pthread_getspecific(scratch_key);
  if (s) return s;
  s = calloc(1, sizeof *s);
  if (s && pthread_setspecific(scratch_key, s) != 0) {
    free(s);
    s = NULL;
  }
  return s;
}

static void scratch_trim(tok_scratch *s) {
#define TRIM(p, cap)                                        \
  if (s->cap * sizeof *s->p > SCRATCH_KEEP) {               \
    free(s->p);                                             \
    s->p = NULL;                                            \
    s->cap = 0;                                             \
  }
  TRIM(raw, raw_cap)
  TRIM(norm, norm_cap)
  TRIM(tmp, tmp_cap)
  TRIM(word, word_cap)
  TRIM(ids, ids_cap)
#undef TRIM
}

/* Grows *p to hold at least n elements of size sz; 0 or -1. */
static int grow(void *pp, size_t *cap, size_t n, size_t sz) {
  if (n <= *cap) return 0;
  size_t c = *cap ? *cap : 256;
  while (c < n) {
    if (c > SIZE_MAX / 2 / sz) return -1;
    c *= 2;
  }
  void *q = realloc(*(void **)pp, c * sz);
  if (!q) return -1;
  *(void **)pp = q;
  *cap = c;
  return 0;
}

/* ---- Encoding ----------------------------------------------------------------------- */

/* Decodes UTF-8 (as Rust's str accepts it: no overlongs, surrogates or values past
 * U+10FFFF) into cps; returns the count, or -1 with *bad at the first bad byte. */
static long decode_utf8(const char *text, size_t len, uint32_t *cps, size_t *bad) {
  const uint8_t *s = (const uint8_t *)text;
  size_t i = 0, n = 0;
  while (i < len) {
    uint32_t c = s[i];
    if (c < 0x80) {
      cps[n++] = c;
      i++;
      continue;
    }
    size_t k;
    uint32_t min;
    if (c >= 0xC2 && c <= 0xDF) k = 1, c &= 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) k = 2, c &= 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) k = 3, c &= 0x07, min = 0x10000;
    else break;
    if (len - i <= k) break;
    size_t j = 1;
    for (; j <= k && (s[i + j] & 0xC0) == 0x80; j++) c = (c << 6) | (s[i + j] & 0x3F);
    if (j <= k || c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) break;
    cps[n++] = c;
    i += k + 1;
  }
  if (i < len) {
    *bad = i;
    return -1;
  }
  return (long)n;
}

static size_t put_utf8(char *dst, uint32_t c) {
  if (c < 0x80) {
    dst[0] = (char)c;
    return 1;
  }
  if (c < 0x800) {
    dst[0] = (char)(0xC0 | (c >> 6));
    dst[1] = (char)(0x80 | (c & 0x3F));
    return 2;
  }
  if (c < 0x10000) {
    dst[0] = (char)(0xE0 | (c >> 12));
    dst[1] = (char)(0x80 | ((c >> 6) & 0x3F));
    dst[2] = (char)(0x80 | (c & 0x3F));
    return 3;
  }
  dst[0] = (char)(0xF0 | (c >> 18));
  dst[1] = (char)(0x80 | ((c >> 12) & 0x3F));
  dst[2] = (char)(0x80 | ((c >> 6) & 0x3F));
  dst[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}

/* The state of one sequence's encoding: its tokens go to s->ids from `base`; `count` runs
 * on past `keep` (the most that truncation can leave) without storing. */
typedef struct enc_state {
  const qv_tokenizer *t;
  tok_scratch *s;
  size_t base, count, keep;
} enc_state;

static int emit(enc_state *st, int32_t id) {
  if (st->count < st->keep) {
    if (grow(&st->s->ids, &st->s->ids_cap, st->base + st->count + 1, sizeof(int32_t))) return -1;
    st->s->ids[st->base + st->count] = id;
  }
  st->count++;
  return 0;
}

/* WordPiece on one word: s->word + prefix_len holds n > 0 bytes of nchars chars. */
static int wordpiece(enc_state *st, size_t n, size_t nchars) {
  const qv_tokenizer *t = st->t;
  size_t p = t->prefix_len;
  char *w = st->s->word + p;
  if (nchars > t->max_chars) return emit(st, t->unk_id);
  int32_t id = vocab_find(t, w, n);
  if (id >= 0) return emit(st, id);
  size_t mark = st->count, start = 0;
  while (start < n) {
    size_t cap = start ? t->max_cont : t->max_first;
    size_t end = n - start > cap ? start + cap : n;
    while (end < n && ((uint8_t)w[end] & 0xC0) == 0x80) end--;
    /* The prefix overwrites bytes already consumed (or the reserved room before w). */
    if (start) memcpy(w + start - p, t->prefix, p);
    id = -1;
    while (end > start) {
      id = start ? vocab_find(t, w + start - p, end - start + p) : vocab_find(t, w, end);
      if (id >= 0) break;
      do end--;
      while (end > start && ((uint8_t)w[end] & 0xC0) == 0x80);
    }
    if (id < 0) {
      st->count = mark;
      return emit(st, t->unk_id);
    }
    if (emit(st, id)) return -1;
    start = end;
  }
  return 0;
}

/* Appends c to the word being built; words past max_chars stop storing bytes. */
static int word_add(enc_state *st, size_t *n, size_t *nchars, uint32_t c) {
  if (++*nchars > st->t->max_chars) return 0;
  tok_scratch *s = st->s;
  if (grow(&s->word, &s->word_cap, st->t->prefix_len + *n + 4, 1)) return -1;
  *n += put_utf8(s->word + st->t->prefix_len + *n, c);
  return 0;
}

/* Pre-splits normalized text and runs WordPiece on each word. */
static int split_words(enc_state *st, const uint32_t *cps, size_t ncps) {
  const qv_tokenizer *t = st->t;
  size_t n = 0, nchars = 0;
  for (size_t i = 0; i < ncps; i++) {
    uint32_t c = cps[i];
    if (!t->pre_split) {
      if (word_add(st, &n, &nchars, c)) return -1;
    } else if (is_ws(c)) {
      if (nchars && wordpiece(st, n, nchars)) return -1;
      n = nchars = 0;
    } else if (is_punct(c)) {
      if (nchars && wordpiece(st, n, nchars)) return -1;
      n = nchars = 0;
      if (word_add(st, &n, &nchars, c) || wordpiece(st, n, nchars)) return -1;
      n = nchars = 0;
    } else if (word_add(st, &n, &nchars, c)) {
      return -1;
    }
  }
  if (nchars && wordpiece(st, n, nchars)) return -1;
  return 0;
}

static int ccc(uint32_t c) {
  if (c < 0x300) return 0;
  int cc = utf8proc_get_property((utf8proc_int32_t)c)->combining_class;
  return cc && c >= 0x7FD && IN(c, ccc_newer) ? 0 : cc;
}

/* Canonical ordering: each run of non-starters sorted by combining class, stably. Runs are
 * short in text, but a long one (zalgo) must not go quadratic, so those get a merge sort. */
static int canonical_order(tok_scratch *s, uint32_t *cps, size_t n) {
  for (size_t i = 0; i < n;) {
    if (!ccc(cps[i])) {
      i++;
      continue;
    }
    size_t j = i + 1;
    while (j < n && ccc(cps[j])) j++;
    size_t len = j - i;
    uint32_t *r = cps + i;
    if (len <= 32) {
      for (size_t a = 1; a < len; a++) {
        uint32_t c = r[a];
        int cc = ccc(c);
        size_t b = a;
        for (; b > 0 && ccc(r[b - 1]) > cc; b--) r[b] = r[b - 1];
        r[b] = c;
      }
    } else {
      /* Stable counting sort on the class (0..254). */
      if (grow(&s->tmp, &s->tmp_cap, len, sizeof(uint32_t))) return -1;
      size_t count[257] = {0};
      for (size_t a = 0; a < len; a++) count[ccc(r[a]) + 1]++;
      for (int b = 1; b < 257; b++) count[b] += count[b - 1];
      for (size_t a = 0; a < len; a++) s->tmp[count[ccc(r[a])]++] = r[a];
      memcpy(r, s->tmp, len * sizeof *r);
    }
    i = j;
  }
  return 0;
}

/* Normalizes raw[0..n) into s->norm; returns the count or -1. */
static long normalize(const qv_tokenizer *t, tok_scratch *s, const uint32_t *raw, size_t n) {
  /* Each char gives at most 4 (canonical decompositions are at most 4 long), 3 (a padded
   * ideograph) or 2 (a lowercase İ). */
  if (n > SIZE_MAX / 4 || grow(&s->norm, &s->norm_cap, n * 4 + 4, sizeof(uint32_t))) return -1;
  uint32_t *out = s->norm;
  size_t m = 0;
  int marks = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t c = raw[i];
    if (t->clean_text) {
      if (c == 0 || c == 0xFFFD || is_control(c)) continue;
      if (is_ws(c)) c = ' ';
    }
    if (c < 0x80) {
      out[m++] = t->lowercase && c >= 'A' && c <= 'Z' ? c + 32 : c;
      continue;
    }
    int pad = t->chinese && is_chinese(c);
    if (pad) out[m++] = ' ';
    if (t->strip_accents && c != 0x11938) { /* HF's NFD leaves U+11938 whole */
      utf8proc_int32_t d[8];
      utf8proc_ssize_t k = utf8proc_decompose_char((utf8proc_int32_t)c, d, 8, UTF8PROC_DECOMPOSE, NULL);
      if (k < 1 || k > 4) { /* cannot happen for valid code points */
        out[m++] = c;
      } else {
        for (utf8proc_ssize_t a = 0; a < k; a++) out[m++] = (uint32_t)d[a];
      }
      marks = 1;
    } else if (t->lowercase) {
      uint32_t lc[2];
      int nl = lower(c, lc);
      out[m++] = lc[0];
      if (nl > 1) out[m++] = lc[1];
    } else {
      out[m++] = c;
    }
    if (pad) out[m++] = ' ';
  }
  if (marks) {
    if (canonical_order(s, out, m)) return -1;
    /* Lowercase comes last, in place: after NFD every char lowercases to one (U+0130,
     * the one that gives two, has decomposed). */
    size_t k = 0;
    for (size_t i = 0; i < m; i++) {
      if (out[i] >= 0x300 && is_mn(out[i])) continue;
      uint32_t lc[2];
      out[k++] = t->lowercase ? (lower(out[i], lc), lc[0]) : out[i];
    }
    m = k;
  }
  return (long)m;
}

/* Finds the next added token in cps[from..n) as HF does: leftmost-longest, then
 * single_word may veto it (the scan goes on after it), lstrip/rstrip widen it over
 * whitespace. Returns 1 with the span [*ms, *me) and the token, else 0. `floor` is where
 * the previous match ended (lstrip does not reach before it). */
static int find_added(const tok_added_set *set, const uint32_t *cps, size_t n, size_t from,
                      size_t floor, size_t *ms, size_t *me, const tok_added **tok) {
  for (size_t i = from; i < n; i++) {
    uint32_t c = cps[i];
    if (c < 128 ? !set->first_ascii[c] : !set->first_other) continue;
    const tok_added *best = NULL;
    for (size_t k = 0; k < set->n; k++) {
      const tok_added *a = &set->items[k];
      if (a->ncps > n - i || (best && a->ncps <= best->ncps)) continue;
      if (memcmp(a->cps, cps + i, a->ncps * sizeof *cps) == 0) best = a;
    }
    if (!best) continue;
    size_t s = i, e = i + best->ncps;
    if (best->single_word && ((s > 0 && is_word_char(cps[s - 1])) || (e < n && is_word_char(cps[e])))) {
      i = e - 1; /* matches do not overlap: the scan resumes after this one */
      continue;
    }
    if (best->lstrip) {
      while (s > floor && is_ws(cps[s - 1])) s--;
    }
    if (best->rstrip) {
      while (e < n && is_ws(cps[e])) e++;
    }
    *ms = s;
    *me = e;
    *tok = best;
    return 1;
  }
  return 0;
}

static int encode_normalized(enc_state *st, const uint32_t *cps, size_t n) {
  const tok_added_set *set = &st->t->norm;
  if (!set->n) return split_words(st, cps, n);
  size_t at = 0, ms, me;
  const tok_added *a;
  while (find_added(set, cps, n, at, at, &ms, &me, &a)) {
    if (ms > at && split_words(st, cps + at, ms - at)) return -1;
    if (emit(st, a->id)) return -1;
    at = me;
  }
  return split_words(st, cps + at, n - at);
}

static int encode_piece(enc_state *st, const uint32_t *raw, size_t n) {
  const qv_tokenizer *t = st->t;
  if (!n) return 0;
  if (!t->normalize) return encode_normalized(st, raw, n);
  long m = normalize(t, st->s, raw, n);
  if (m < 0) return -1;
  return encode_normalized(st, st->s->norm, (size_t)m);
}

/* Encodes one text into s->ids from st->base; returns QV_OK with st->count set. */
static qv_status encode_text(enc_state *st, const char *text, size_t len, const char *which,
                             qv_error *err) {
  tok_scratch *s = st->s;
  if (grow(&s->raw, &s->raw_cap, len + 1, sizeof(uint32_t)))
    return qv_fail(err, QV_ENOMEM, "tokenize: out of memory");
  size_t bad = 0;
  long n = decode_utf8(text, len, s->raw, &bad);
  if (n < 0) return qv_fail(err, QV_EINVAL, "%sinvalid UTF-8 at byte %zu", which, bad);
  const tok_added_set *set = &st->t->raw;
  size_t at = 0, ms, me;
  const tok_added *a;
  while (set->n && find_added(set, s->raw, (size_t)n, at, at, &ms, &me, &a)) {
    /* s->raw stays put: encode_piece grows other buffers only. */
    if (encode_piece(st, s->raw + at, ms - at) || emit(st, a->id)) goto oom;
    at = me;
  }
  if (encode_piece(st, s->raw + at, (size_t)n - at)) goto oom;
  return QV_OK;
oom:
  return qv_fail(err, QV_ENOMEM, "tokenize: out of memory");
}

/* HF's longest-first arithmetic (utils/truncation.rs), for limit tokens in all. */
static void truncate_pair(size_t *na, size_t *nb, size_t limit) {
  size_t n1 = *na, n2 = *nb;
  int swap = n1 > n2;
  if (swap) {
    size_t x = n1;
    n1 = n2;
    n2 = x;
  }
  if (n1 > limit) n2 = n1;
  else n2 = n1 > limit - n1 ? n1 : limit - n1;
  if (n1 + n2 > limit) {
    n1 = limit / 2;
    n2 = n1 + limit % 2;
  }
  if (swap) {
    size_t x = n1;
    n1 = n2;
    n2 = x;
  }
  if (*na > n1) *na = n1;
  if (*nb > n2) *nb = n2;
}

qv_status tok_encode(const qv_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                     size_t max_len, tok_encoding *out, qv_error *err) {
  if (!t || !out || (!a && alen) || (!b && blen))
    return qv_fail(err, QV_EINVAL, "tok_encode: missing argument");
  tok_scratch *s = scratch_get();
  if (!s) return qv_fail(err, QV_ENOMEM, "tokenize: out of memory");
  if (!a) a = "";
  int is_pair = b != NULL;
  size_t added = is_pair ? t->added_pair : t->added_single;
  /* HF subtracts the special tokens from max_length before truncating the sequences; where
   * max_len is smaller than that, HF's unsigned subtraction wraps and nothing is truncated,
   * while here the sequences are emptied and the special tokens stay. */
  size_t limit = max_len == 0 ? SIZE_MAX : max_len > added ? max_len - added : 0;
  enc_state sa = {t, s, 0, 0, limit}, sb = {t, s, 0, 0, limit};
  qv_status st = encode_text(&sa, a, alen, is_pair ? "first text: " : "", err);
  if (st) goto done;
  size_t na = sa.count, nb = 0;
  if (is_pair) {
    sb.base = na < limit ? na : limit;
    st = encode_text(&sb, b, blen, "second text: ", err);
    if (st) goto done;
    nb = sb.count;
  }
  if (na + nb > SIZE_MAX - added) {
    st = qv_fail(err, QV_ERANGE, "tokenize: text too long");
    goto done;
  }
  out->untruncated_len = na + nb + added;
  if (na + nb > limit) {
    if (is_pair) truncate_pair(&na, &nb, limit);
    else na = limit;
  }
  size_t len = na + nb + added;
  if (len > out->cap) {
    int32_t *ids = realloc(out->ids, len * sizeof *ids);
    if (!ids) goto oom;
    out->ids = ids;
    int32_t *types = realloc(out->type_ids, len * sizeof *types);
    if (!types) goto oom;
    out->type_ids = types;
    out->cap = len;
  }
  const tok_piece *pieces = is_pair ? t->pair : t->single;
  size_t npieces = is_pair ? t->n_pair : t->n_single, o = 0;
  for (size_t i = 0; i < npieces; i++) {
    const tok_piece *pc = &pieces[i];
    size_t n = pc->kind == PIECE_SPECIAL ? pc->nids : pc->kind == PIECE_A ? na : nb;
    if (!n) continue;
    const int32_t *src = pc->kind == PIECE_SPECIAL ? t->special_ids + pc->ids_off
                         : pc->kind == PIECE_A     ? s->ids
                                                   : s->ids + sb.base;
    memcpy(out->ids + o, src, n * sizeof *src);
    for (size_t k = 0; k < n; k++) out->type_ids[o + k] = pc->type_id;
    o += n;
  }
  out->len = o;
  st = QV_OK;
  goto done;
oom:
  st = qv_fail(err, QV_ENOMEM, "tokenize: out of memory");
done:
  scratch_trim(s);
  return st;
}

void tok_encoding_free(tok_encoding *e) {
  if (!e) return;
  free(e->ids);
  free(e->type_ids);
  memset(e, 0, sizeof *e);
}

size_t tok_vocab_size(const qv_tokenizer *t) { return t->n_ids; }

static int32_t tok_added_id(const qv_tokenizer *t, const char *token) {
  for (size_t s = 0; s < 2; s++) {
    const tok_added_set *set = s ? &t->norm : &t->raw;
    for (size_t i = 0; i < set->n; i++)
      if (strcmp(set->items[i].text, token) == 0) return set->items[i].id;
  }
  return -1;
}

/* As HF's token_to_id: the added tokens first, then the model's vocab. */
int32_t tok_id(const qv_tokenizer *t, const char *token) {
  int32_t id = tok_added_id(t, token);
  return id >= 0 ? id : vocab_find(t, token, strlen(token));
}

const char *tok_token(const qv_tokenizer *t, int32_t id) {
  if (id < 0 || (size_t)id >= t->n_ids) return NULL;
  return t->id_token[id];
}

int32_t tok_pad_id(const qv_tokenizer *t) { return t->pad_id; }

/* ---- Loading ------------------------------------------------------------------------ */

void tok_free(qv_tokenizer *t) {
  if (!t) return;
  free(t->pool);
  free(t->entries);
  free(t->slots);
  free(t->id_token);
  for (int s = 0; s < 2; s++) {
    tok_added_set *set = s ? &t->norm : &t->raw;
    for (size_t i = 0; i < set->n; i++) {
      free(set->items[i].cps);
      free(set->items[i].text);
    }
    free(set->items);
  }
  free(t->single);
  free(t->pair);
  free(t->special_ids);
  free(t);
}

#define FAIL_FORMAT(...) qv_fail(err, QV_EFORMAT, __VA_ARGS__)

/* A boolean member: absent or null takes dflt. */
static qv_status get_bool(const json_t *obj, const char *key, const char *where, int dflt, int *out,
                          qv_error *err) {
  const json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v)) {
    *out = dflt;
    return QV_OK;
  }
  if (!json_is_boolean(v)) return FAIL_FORMAT("%s.%s: expected true or false", where, key);
  *out = json_is_true(v);
  return QV_OK;
}

/* The member "type" of a component, or NULL when the component is null. */
static qv_status get_type(const json_t *obj, const char *where, const char **type, qv_error *err) {
  *type = NULL;
  if (!obj || json_is_null(obj)) return QV_OK;
  if (!json_is_object(obj)) return FAIL_FORMAT("%s: expected an object or null", where);
  const json_t *v = json_object_get(obj, "type");
  if (!json_is_string(v)) return FAIL_FORMAT("%s.type: expected a string", where);
  *type = json_string_value(v);
  return QV_OK;
}

static qv_status load_normalizer(qv_tokenizer *t, const json_t *n, qv_error *err) {
  const char *type;
  qv_status st = get_type(n, "normalizer", &type, err);
  if (st || !type) return st;
  if (strcmp(type, "BertNormalizer") != 0)
    return qv_fail(err, QV_EUNSUPPORTED, "normalizer type \"%s\" is not supported (only BertNormalizer)", type);
  t->normalize = 1;
  if ((st = get_bool(n, "clean_text", "normalizer", 1, &t->clean_text, err))) return st;
  if ((st = get_bool(n, "handle_chinese_chars", "normalizer", 1, &t->chinese, err))) return st;
  if ((st = get_bool(n, "lowercase", "normalizer", 1, &t->lowercase, err))) return st;
  /* strip_accents null follows lowercase, as in HF. */
  return get_bool(n, "strip_accents", "normalizer", t->lowercase, &t->strip_accents, err);
}

static qv_status load_pre_tokenizer(qv_tokenizer *t, const json_t *p, qv_error *err) {
  const char *type;
  qv_status st = get_type(p, "pre_tokenizer", &type, err);
  if (st || !type) return st;
  if (strcmp(type, "BertPreTokenizer") != 0)
    return qv_fail(err, QV_EUNSUPPORTED, "pre_tokenizer type \"%s\" is not supported (only BertPreTokenizer)", type);
  t->pre_split = 1;
  return QV_OK;
}

static qv_status load_model(qv_tokenizer *t, const json_t *m, qv_error *err) {
  const char *type;
  qv_status st;
  if (!m || json_is_null(m)) return FAIL_FORMAT("model: missing");
  if ((st = get_type(m, "model", &type, err))) return st;
  if (strcmp(type, "WordPiece") != 0)
    return qv_fail(err, QV_EUNSUPPORTED, "model type \"%s\" is not supported (only WordPiece)", type);
  const json_t *vocab = json_object_get(m, "vocab");
  if (!json_is_object(vocab)) return FAIL_FORMAT("model.vocab: expected an object of token: id");
  const char *unk = "[UNK]";
  const json_t *v = json_object_get(m, "unk_token");
  if (v && !json_is_string(v)) return FAIL_FORMAT("model.unk_token: expected a string");
  if (v) unk = json_string_value(v);
  v = json_object_get(m, "continuing_subword_prefix");
  const char *prefix = "##";
  if (v && !json_is_null(v) && !json_is_string(v))
    return FAIL_FORMAT("model.continuing_subword_prefix: expected a string");
  if (json_is_string(v)) prefix = json_string_value(v);
  if (strlen(prefix) >= sizeof t->prefix)
    return FAIL_FORMAT("model.continuing_subword_prefix: longer than %zu bytes", sizeof t->prefix - 1);
  memcpy(t->prefix, prefix, strlen(prefix) + 1);
  t->prefix_len = strlen(prefix);
  t->max_chars = 100;
  v = json_object_get(m, "max_input_chars_per_word");
  if (v && !json_is_null(v)) {
    if (!json_is_integer(v) || json_integer_value(v) < 0)
      return FAIL_FORMAT("model.max_input_chars_per_word: expected a non-negative integer");
    t->max_chars = (size_t)json_integer_value(v);
  }

  size_t n = json_object_size(vocab), bytes = 0;
  const char *key;
  json_t *val;
  json_object_foreach((json_t *)vocab, key, val) {
    if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= TOK_MAX_ID)
      return FAIL_FORMAT("model.vocab[\"%.80s\"]: expected an id in 0..%d", key, TOK_MAX_ID - 1);
    bytes += strlen(key) + 1;
  }
  if (bytes > UINT32_MAX) return FAIL_FORMAT("model.vocab: too large");
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  t->pool = malloc(bytes ? bytes : 1);
  t->entries = malloc((n ? n : 1) * sizeof *t->entries);
  t->slots = malloc(cap * sizeof *t->slots);
  if (!t->pool || !t->entries || !t->slots) return qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
  t->slot_mask = cap - 1;
  for (size_t i = 0; i < cap; i++) t->slots[i].entry = -1;
  size_t off = 0, e = 0;
  int32_t max_id = -1;
  json_object_foreach((json_t *)vocab, key, val) {
    size_t len = strlen(key);
    memcpy(t->pool + off, key, len + 1);
    int32_t id = (int32_t)json_integer_value(val);
    t->entries[e] = (tok_entry){(uint32_t)off, (uint32_t)len, id};
    uint64_t h = hash_bytes(key, len);
    size_t i = (size_t)h & t->slot_mask;
    while (t->slots[i].entry >= 0) i = (i + 1) & t->slot_mask;
    t->slots[i] = (tok_slot){(uint32_t)(h >> 32), (int32_t)e};
    if (len > t->max_first) t->max_first = (uint32_t)len;
    if (len >= t->prefix_len && memcmp(key, prefix, t->prefix_len) == 0 && len - t->prefix_len > t->max_cont)
      t->max_cont = (uint32_t)(len - t->prefix_len);
    if (id > max_id) max_id = id;
    off += len + 1;
    e++;
  }
  t->n_entries = n;
  t->n_ids = (size_t)(max_id + 1);
  t->unk_id = vocab_find(t, unk, strlen(unk));
  if (t->unk_id < 0) return FAIL_FORMAT("model.unk_token: \"%.80s\" is not in model.vocab", unk);
  return QV_OK;
}

/* Text to code points, normalized when the token is matched on normalized text. */
static qv_status added_cps(const qv_tokenizer *t, const char *text, size_t len, int normalized,
                           tok_added *a, size_t index, qv_error *err) {
  uint32_t *raw = malloc((len + 1) * sizeof *raw);
  if (!raw) return qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
  size_t bad;
  long n = decode_utf8(text, len, raw, &bad);
  if (n < 0) {
    free(raw);
    return FAIL_FORMAT("added_tokens[%zu].content: invalid UTF-8", index);
  }
  if (normalized && t->normalize) {
    /* As HF matches them (refresh_added_tokens): normalized like the text. */
    tok_scratch s = {0};
    long m = normalize(t, &s, raw, (size_t)n);
    free(raw);
    free(s.tmp);
    if (m < 0) {
      free(s.norm);
      return qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
    }
    raw = s.norm;
    n = m;
  }
  a->cps = raw;
  a->ncps = (size_t)n;
  return QV_OK;
}

static qv_status load_added(qv_tokenizer *t, const json_t *list, qv_error *err) {
  if (!list || json_is_null(list)) return QV_OK;
  if (!json_is_array(list)) return FAIL_FORMAT("added_tokens: expected an array");
  size_t n = json_array_size(list);
  t->raw.items = calloc(n ? n : 1, sizeof *t->raw.items);
  t->norm.items = calloc(n ? n : 1, sizeof *t->norm.items);
  if (!t->raw.items || !t->norm.items) return qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
  int32_t max_added = -1;
  for (size_t i = 0; i < n; i++) {
    const json_t *o = json_array_get(list, i);
    char where[48];
    snprintf(where, sizeof where, "added_tokens[%zu]", i);
    if (!json_is_object(o)) return FAIL_FORMAT("%s: expected an object", where);
    const json_t *c = json_object_get(o, "content"), *idv = json_object_get(o, "id");
    if (!json_is_string(c)) return FAIL_FORMAT("%s.content: expected a string", where);
    if (!json_is_integer(idv) || json_integer_value(idv) < 0 || json_integer_value(idv) >= TOK_MAX_ID)
      return FAIL_FORMAT("%s.id: expected an id in 0..%d", where, TOK_MAX_ID - 1);
    int single = 0, lstrip = 0, rstrip = 0, normalized = 0, special = 0;
    qv_status st;
    if ((st = get_bool(o, "special", where, 0, &special, err))) return st;
    if ((st = get_bool(o, "single_word", where, 0, &single, err))) return st;
    if ((st = get_bool(o, "lstrip", where, 0, &lstrip, err))) return st;
    if ((st = get_bool(o, "rstrip", where, 0, &rstrip, err))) return st;
    if ((st = get_bool(o, "normalized", where, !special, &normalized, err))) return st;
    const char *text = json_string_value(c);
    size_t len = json_string_length(c);
    if (strlen(text) != len) return FAIL_FORMAT("%s.content: contains U+0000", where);
    if (!len) continue; /* HF ignores an empty token */
    /* HF does not trust the file's ids (it only warns when they differ): a token already
     * known keeps its id (the first of two with the same content wins here), a new one
     * gets the next id after the vocab and the added tokens so far. */
    int32_t id = tok_id(t, text);
    if (id >= 0 && tok_added_id(t, text) >= 0) continue;
    if (id < 0) {
      size_t vocab_len = t->n_entries;
      id = max_added < 0 ? (int32_t)vocab_len
           : ((size_t)max_added >= vocab_len || vocab_len == 0) ? max_added + 1
                                                                : (int32_t)vocab_len;
    }
    if (id >= TOK_MAX_ID) return FAIL_FORMAT("%s: too many added tokens", where);
    if (id > max_added) max_added = id;
    tok_added_set *set = normalized ? &t->norm : &t->raw;
    tok_added *a = &set->items[set->n];
    if ((st = added_cps(t, text, len, normalized, a, i, err))) return st;
    if (!a->ncps) { /* normalized to nothing: never matches */
      free(a->cps);
      a->cps = NULL;
      continue;
    }
    if (!(a->text = strdup(text))) return qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
    set->n++;
    a->id = id;
    a->single_word = (uint8_t)single;
    a->lstrip = (uint8_t)lstrip;
    a->rstrip = (uint8_t)rstrip;
    a->normalized = (uint8_t)normalized;
    if (a->cps[0] < 128) set->first_ascii[a->cps[0]] = 1;
    else set->first_other = 1;
    if ((size_t)id >= t->n_ids) t->n_ids = (size_t)id + 1;
  }
  return QV_OK;
}

static qv_status add_special(qv_tokenizer *t, const int32_t *ids, size_t n, size_t *off, qv_error *err) {
  int32_t *p = realloc(t->special_ids, (t->n_special_ids + n + 1) * sizeof *p);
  if (!p) return qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
  t->special_ids = p;
  *off = t->n_special_ids;
  if (n) memcpy(p + t->n_special_ids, ids, n * sizeof *ids);
  t->n_special_ids += n;
  return QV_OK;
}

static qv_status get_type_id(const json_t *o, const char *where, int32_t *out, qv_error *err) {
  const json_t *v = json_object_get(o, "type_id");
  if (!v) {
    *out = 0;
    return QV_OK;
  }
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
    return FAIL_FORMAT("%s.type_id: expected a non-negative integer", where);
  *out = (int32_t)json_integer_value(v);
  return QV_OK;
}

static qv_status load_template(qv_tokenizer *t, const json_t *pp, const char *name, int pair,
                               qv_error *err) {
  char where[96];
  snprintf(where, sizeof where, "post_processor.%s", name);
  const json_t *list = json_object_get(pp, name), *specials = json_object_get(pp, "special_tokens");
  if (!json_is_array(list)) return FAIL_FORMAT("%s: expected an array of pieces", where);
  if (specials && !json_is_object(specials))
    return FAIL_FORMAT("post_processor.special_tokens: expected an object");
  size_t n = json_array_size(list);
  tok_piece *pieces = calloc(n ? n : 1, sizeof *pieces);
  if (!pieces) return qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
  if (pair) t->pair = pieces, t->n_pair = n;
  else t->single = pieces, t->n_single = n;
  size_t added = 0, seen[2] = {0, 0};
  for (size_t i = 0; i < n; i++) {
    const json_t *o = json_array_get(list, i), *sp, *sq;
    char pw[128];
    snprintf(pw, sizeof pw, "%s[%zu]", where, i);
    if (!json_is_object(o) || json_object_size(o) != 1)
      return FAIL_FORMAT("%s: expected {\"SpecialToken\": ...} or {\"Sequence\": ...}", pw);
    qv_status st;
    if ((sq = json_object_get(o, "Sequence"))) {
      if (!json_is_object(sq)) return FAIL_FORMAT("%s.Sequence: expected an object", pw);
      const char *id = json_string_value(json_object_get(sq, "id"));
      if (!id || (strcmp(id, "A") && strcmp(id, "B")))
        return FAIL_FORMAT("%s.Sequence.id: expected \"A\" or \"B\"", pw);
      if (id[0] == 'B' && !pair) return FAIL_FORMAT("%s.Sequence.id: \"B\" in the single template", pw);
      pieces[i].kind = id[0] == 'A' ? PIECE_A : PIECE_B;
      seen[id[0] == 'B']++;
      if ((st = get_type_id(sq, pw, &pieces[i].type_id, err))) return st;
    } else if ((sp = json_object_get(o, "SpecialToken"))) {
      if (!json_is_object(sp)) return FAIL_FORMAT("%s.SpecialToken: expected an object", pw);
      const char *id = json_string_value(json_object_get(sp, "id"));
      if (!id) return FAIL_FORMAT("%s.SpecialToken.id: expected a string", pw);
      const json_t *def = specials ? json_object_get(specials, id) : NULL;
      if (!json_is_object(def))
        return FAIL_FORMAT("post_processor.special_tokens: no entry for \"%.80s\"", id);
      const json_t *ids = json_object_get(def, "ids");
      if (!json_is_array(ids))
        return FAIL_FORMAT("post_processor.special_tokens[\"%.80s\"].ids: expected an array", id);
      size_t k = json_array_size(ids);
      int32_t buf[16];
      if (k > 16) return FAIL_FORMAT("post_processor.special_tokens[\"%.80s\"].ids: too many", id);
      for (size_t j = 0; j < k; j++) {
        const json_t *x = json_array_get(ids, j);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= TOK_MAX_ID)
          return FAIL_FORMAT("post_processor.special_tokens[\"%.80s\"].ids[%zu]: expected an id", id, j);
        buf[j] = (int32_t)json_integer_value(x);
      }
      pieces[i].kind = PIECE_SPECIAL;
      pieces[i].nids = k;
      if ((st = get_type_id(sp, pw, &pieces[i].type_id, err))) return st;
      if ((st = add_special(t, buf, k, &pieces[i].ids_off, err))) return st;
      added += k;
    } else {
      return FAIL_FORMAT("%s: expected {\"SpecialToken\": ...} or {\"Sequence\": ...}", pw);
    }
  }
  /* Truncation and the output length count each sequence once. */
  if (seen[0] != 1 || seen[1] != (size_t)pair)
    return FAIL_FORMAT("%s: expected %s once", where, pair ? "sequences A and B each" : "sequence A");
  if (pair) t->added_pair = added;
  else t->added_single = added;
  return QV_OK;
}

/* ["[CLS]", 101] */
static qv_status bert_special(const json_t *pp, const char *name, int32_t *id, qv_error *err) {
  const json_t *v = json_object_get(pp, name);
  const json_t *x = json_array_get(v, 1);
  if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_string(json_array_get(v, 0)) ||
      !json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= TOK_MAX_ID)
    return FAIL_FORMAT("post_processor.%s: expected [token, id]", name);
  *id = (int32_t)json_integer_value(x);
  return QV_OK;
}

static qv_status load_post_processor(qv_tokenizer *t, const json_t *pp, qv_error *err) {
  const char *type;
  qv_status st = get_type(pp, "post_processor", &type, err);
  if (st) return st;
  if (!type) {
    /* No post-processor: HF still gives the second sequence type id 1. */
    t->single = calloc(1, sizeof *t->single);
    t->pair = calloc(2, sizeof *t->pair);
    if (!t->single || !t->pair) return qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
    t->single[0] = (tok_piece){PIECE_A, 0, 0, 0};
    t->pair[0] = (tok_piece){PIECE_A, 0, 0, 0};
    t->pair[1] = (tok_piece){PIECE_B, 1, 0, 0};
    t->n_single = 1;
    t->n_pair = 2;
    return QV_OK;
  }
  if (strcmp(type, "TemplateProcessing") == 0) {
    if ((st = load_template(t, pp, "single", 0, err))) return st;
    return load_template(t, pp, "pair", 1, err);
  }
  if (strcmp(type, "BertProcessing") == 0) {
    int32_t cls, sep;
    if ((st = bert_special(pp, "cls", &cls, err)) || (st = bert_special(pp, "sep", &sep, err))) return st;
    size_t ocls = 0, osep = 0;
    if ((st = add_special(t, &cls, 1, &ocls, err)) || (st = add_special(t, &sep, 1, &osep, err))) return st;
    t->single = calloc(3, sizeof *t->single);
    t->pair = calloc(5, sizeof *t->pair);
    if (!t->single || !t->pair) return qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
    tok_piece c = {PIECE_SPECIAL, 0, ocls, 1}, s0 = {PIECE_SPECIAL, 0, osep, 1},
              s1 = {PIECE_SPECIAL, 1, osep, 1};
    t->single[0] = c, t->single[1] = (tok_piece){PIECE_A, 0, 0, 0}, t->single[2] = s0;
    t->pair[0] = c, t->pair[1] = t->single[1], t->pair[2] = s0;
    t->pair[3] = (tok_piece){PIECE_B, 1, 0, 0}, t->pair[4] = s1;
    t->n_single = 3;
    t->n_pair = 5;
    t->added_single = 2;
    t->added_pair = 3;
    return QV_OK;
  }
  return qv_fail(err, QV_EUNSUPPORTED,
                 "post_processor type \"%s\" is not supported (only TemplateProcessing, BertProcessing)", type);
}

static qv_status build_id_table(qv_tokenizer *t, qv_error *err) {
  for (size_t i = 0; i < t->n_special_ids; i++)
    if ((size_t)t->special_ids[i] >= t->n_ids) t->n_ids = (size_t)t->special_ids[i] + 1;
  t->id_token = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->id_token);
  if (!t->id_token) return qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
  for (size_t i = 0; i < t->n_entries; i++) t->id_token[t->entries[i].id] = t->pool + t->entries[i].off;
  for (int s = 0; s < 2; s++) {
    const tok_added_set *set = s ? &t->norm : &t->raw;
    for (size_t i = 0; i < set->n; i++) t->id_token[set->items[i].id] = set->items[i].text;
  }
  return QV_OK;
}

qv_status tok_from_json(qv_tokenizer **out, const char *json, size_t len, qv_error *err) {
  *out = NULL;
  json_error_t je;
  json_t *root = json_loadb(json, len, 0, &je);
  if (!root) return FAIL_FORMAT("line %d column %d: %s", je.line, je.column, je.text);
  qv_status st;
  qv_tokenizer *t = calloc(1, sizeof *t);
  if (!t) {
    st = qv_fail(err, QV_ENOMEM, "tokenizer: out of memory");
    goto fail;
  }
  if (!json_is_object(root)) {
    st = FAIL_FORMAT("expected a JSON object");
    goto fail;
  }
  if ((st = load_normalizer(t, json_object_get(root, "normalizer"), err))) goto fail;
  if ((st = load_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), err))) goto fail;
  if ((st = load_model(t, json_object_get(root, "model"), err))) goto fail;
  if ((st = load_added(t, json_object_get(root, "added_tokens"), err))) goto fail;
  if ((st = load_post_processor(t, json_object_get(root, "post_processor"), err))) goto fail;
  if ((st = build_id_table(t, err))) goto fail;
  /* Padding is the caller's business, but the pad id comes from the file when it says. */
  const json_t *pad = json_object_get(json_object_get(root, "padding"), "pad_id");
  int32_t pid = vocab_find(t, "[PAD]", 5);
  if (json_is_integer(pad) && json_integer_value(pad) >= 0 && json_integer_value(pad) < TOK_MAX_ID)
    pid = (int32_t)json_integer_value(pad);
  t->pad_id = pid < 0 ? 0 : pid;
  json_decref(root);
  *out = t;
  return QV_OK;
fail:
  json_decref(root);
  tok_free(t);
  return st;
}

qv_status tok_load(qv_tokenizer **out, const char *path, qv_error *err) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    int e = errno;
    return qv_fail(err, e, "%s: %s", path, strerror(e));
  }
  char *buf = NULL;
  size_t len = 0, cap = 0;
  qv_status st = QV_OK;
  for (;;) {
    if (grow(&buf, &cap, len + 65536, 1)) {
      st = qv_fail(err, QV_ENOMEM, "%s: out of memory", path);
      break;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) {
      if (ferror(f)) st = qv_fail(err, EIO, "%s: read failed", path);
      break;
    }
  }
  fclose(f);
  if (!st) {
    st = tok_from_json(out, buf, len, err);
    if (st) qv_error_prefix(err, "%s", path);
  }
  free(buf);
  return st;
}
