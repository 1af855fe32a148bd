/* Chunkers against the real all-MiniLM-L6-v2 tokenizer: for each chunker, with and without
 * overlap, on hand-written documents and on a real Markdown file (Node.js's fs.md when it
 * Debian's nodejs-doc): no chunk over budget, chunks cover the
 * whole text, overlaps as configured, words kept whole, spans map back to the file. */
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"
#include "test.h"
#include "text/text.h"

static qv_tokenizer *tok;

static qv_status count_tok(void *ctx, const char *s, size_t n, uint32_t *out, qv_error *err) {
  tok_encoding e = {0};
  qv_status st = tok_encode(ctx, s, n, NULL, 0, 0, &e, err);
  *out = st ? 0 : (uint32_t)(e.len - 2);
  tok_encoding_free(&e);
  return st;
}

static uint32_t count_str(const char *s, size_t n) {
  uint32_t t = 0;
  if (count_tok(tok, s, n, &t, NULL)) abort();
  return t;
}

static void load_tok(void) {
  if (tok) return;
  char path[1024];
  const char *dir = getenv("QUIVER_MODELS");
  const char *home = getenv("HOME");
  if (dir && *dir) snprintf(path, sizeof path, "%s/all-MiniLM-L6-v2/tokenizer.json", dir);
  else snprintf(path, sizeof path, "%s/.cache/quiver/models/all-MiniLM-L6-v2/tokenizer.json", home ? home : ".");
  qv_error err = {0};
  if (tok_load(&tok, path, &err)) {
    fprintf(stderr, "the chunk tests need all-MiniLM-L6-v2 (quiver model pull all-MiniLM-L6-v2): %s\n", err.msg);
    exit(1);
  }
}

static int is_sp(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Checks every invariant of text_chunk_doc; returns the chunk count. */
static size_t check(const char *src, size_t n, text_format f, text_chunk_config c) {
  load_tok();
  text_doc d;
  qv_error err = {0};
  if (text_parse(&d, src, n, f, &err)) TEST_FAIL_("parse: %s", err.msg);
  text_chunk *ch;
  size_t nc;
  if (text_chunk_doc(&d, src, n, &c, count_tok, tok, &ch, &nc, &err)) TEST_FAIL_("chunk: %s", err.msg);
  uint32_t budget = c.kind == TEXT_CHUNK_ADAPTIVE ? c.max : c.size;
  char *covered = calloc(d.len + 1, 1);
  for (size_t i = 0; i < nc; i++) {
    const text_chunk *k = &ch[i];
    /* 1. the budget, counted on the whole chunk text by the tokenizer */
    uint32_t t = count_str(d.text + k->start, k->end - k->start);
    if (t != k->tokens) TEST_FAIL_("chunk %zu: %u tokens counted, %u claimed", i, t, k->tokens);
    if (t > budget) TEST_FAIL_("chunk %zu: %u tokens over the budget %u", i, t, budget);
    ASSERT(!is_sp(d.text[k->start]) && !is_sp(d.text[k->end - 1]));
    /* 2. order */
    if (i) {
      ASSERT(k->start > ch[i - 1].start);
      ASSERT(k->end > ch[i - 1].end);
    }
    /* 3. overlap */
    if (i && k->start < ch[i - 1].end) {
      if (c.overlap == 0) TEST_FAIL_("chunks %zu and %zu overlap without --overlap", i - 1, i);
      uint32_t ov = count_str(d.text + k->start, ch[i - 1].end - k->start);
      uint32_t allowed = (uint32_t)(c.overlap * ch[i - 1].tokens);
      if (ov > allowed) TEST_FAIL_("chunk %zu repeats %u tokens; at most %u", i, ov, allowed);
      if (c.kind == TEXT_CHUNK_STRUCTURE)
        ASSERT_EQ(d.blocks[k->block].depth == d.blocks[ch[i - 1].block].depth &&
                      !memcmp(d.blocks[k->block].path, d.blocks[ch[i - 1].block].path,
                              d.blocks[k->block].depth * sizeof(int32_t)), 1);
    }
    /* 4. words whole: a chunk begins and ends at whitespace, unless a word alone is over
     * the budget */
    int starts_word = k->start == 0 || is_sp(d.text[k->start - 1]);
    int ends_word = k->end == d.len || is_sp(d.text[k->end]);
    if (!starts_word || !ends_word) {
      size_t a = k->start, b = k->end;
      while (a > 0 && !is_sp(d.text[a - 1])) a--;
      while (b < d.len && !is_sp(d.text[b])) b++;
      size_t wa = !starts_word ? a : b, wb = b;
      if (!starts_word) {
        wb = a;
        while (wb < d.len && !is_sp(d.text[wb])) wb++;
      } else {
        wa = k->end;
        while (wa > 0 && !is_sp(d.text[wa - 1])) wa--;
      }
      if (count_str(d.text + wa, wb - wa) <= budget) TEST_FAIL_("chunk %zu splits a word that fits", i);
    }
    /* 5. adaptive minimum: met unless this is the last chunk or the next word could not
     * have joined it */
    if (c.kind == TEXT_CHUNK_ADAPTIVE && i + 1 < nc && k->tokens < c.min) {
      size_t b = k->end;
      while (b < d.len && is_sp(d.text[b])) b++;
      size_t e = b;
      while (e < d.len && !is_sp(d.text[e])) e++;
      if (ends_word && k->tokens + count_str(d.text + b, e - b) <= c.max)
        TEST_FAIL_("adaptive chunk %zu has %u tokens, under min %u", i, k->tokens, c.min);
    }
    /* spans: inside the file, on the lines they name, starting where the chunk starts */
    ASSERT(k->src_start < k->src_end && k->src_end <= n);
    ASSERT_EQ(src[k->src_start] == d.text[k->start] || d.map_end[k->start] - d.map[k->start] != 1, 1);
    size_t line = 1;
    for (size_t p = 0; p < k->src_start; p++) line += src[p] == '\n';
    ASSERT_EQ(k->line_start, line);
    for (size_t p = k->src_start; p + 1 < k->src_end; p++) line += src[p] == '\n';
    ASSERT_EQ(k->line_end, line);
    if (f == TEXT_PLAIN) ASSERT(!memcmp(src + k->src_start, d.text + k->start, k->end - k->start));
    memset(covered + k->start, 1, k->end - k->start);
  }
  for (size_t p = 0; p < d.len; p++)
    if (!is_sp(d.text[p]) && !covered[p]) TEST_FAIL_("byte %zu ('%c') is in no chunk", p, d.text[p]);
  free(covered);
  free(ch);
  text_doc_free(&d);
  return nc;
}

static const char *doc_md =
    "---\ntitle: Sample\n---\n# Streams\n\nA stream is an abstract interface for working with streaming data in "
    "Node.js. The node:stream module provides an API for implementing the stream interface. There are many "
    "stream objects provided by Node.js. For instance, a request to an HTTP server and process.stdout are both "
    "stream instances! Streams can be readable, writable, or both? All streams are instances of EventEmitter.\n\n"
    "## Types of streams\n\nThere are four fundamental stream types within Node.js: Writable, Readable, Duplex "
    "and Transform (e.g. zlib.createDeflate()).\n\n```js\nconst { pipeline } = require('node:stream');\n"
    "const fs = require('node:fs');\npipeline(fs.createReadStream('archive.tar'), zlib.createGzip(), "
    "fs.createWriteStream('archive.tar.gz'), (err) => { if (err) console.error(err); });\n```\n\n"
    "### Object mode\n\nAll streams created by Node.js APIs operate exclusively on strings, Buffer, TypedArray "
    "and DataView objects. Supercalifragilisticexpialidocious-antidisestablishmentarianism-pneumonoultra"
    "microscopicsilicovolcanoconiosis-floccinaucinihilipilification is one long word.\n\n- one item\n- two "
    "items with more words in them\n\nA final paragraph. It has sentences. Many of them. Short ones.\n";

TEST(every_chunker_small_budgets) {
  size_t n = strlen(doc_md);
  for (int kind = 0; kind < 4; kind++)
    for (int ov = 0; ov < 3; ov++)
      for (uint32_t size = 8; size <= 64; size *= 2) {
        text_chunk_config c = {.kind = (text_chunker)kind, .size = size, .min = size / 2, .max = size,
                               .overlap = ov * 0.2};
        size_t nc = check(doc_md, n, TEXT_MARKDOWN, c);
        ASSERT(nc >= 2);
      }
}

TEST(fixed_chunks_are_full) {
  /* fixed packs greedily: each chunk but the last is one word short of overflowing */
  text_chunk_config c = {.kind = TEXT_CHUNK_FIXED, .size = 20};
  text_doc d;
  ASSERT_OK(text_parse(&d, doc_md, strlen(doc_md), TEXT_MARKDOWN, NULL));
  load_tok();
  text_chunk *ch;
  size_t nc;
  ASSERT_OK(text_chunk_doc(&d, doc_md, strlen(doc_md), &c, count_tok, tok, &ch, &nc, NULL));
  for (size_t i = 0; i + 1 < nc; i++) {
    size_t b = ch[i + 1].start, e = b;
    while (e < d.len && !is_sp(d.text[e])) e++;
    if (ch[i].end < b) ASSERT(ch[i].tokens + count_str(d.text + b, e - b) > c.size || ch[i + 1].tokens > c.size / 2);
  }
  free(ch);
  text_doc_free(&d);
}

TEST(structure_keeps_sections_apart) {
  text_chunk_config c = {.kind = TEXT_CHUNK_STRUCTURE, .size = 200};
  text_doc d;
  ASSERT_OK(text_parse(&d, doc_md, strlen(doc_md), TEXT_MARKDOWN, NULL));
  load_tok();
  text_chunk *ch;
  size_t nc;
  ASSERT_OK(text_chunk_doc(&d, doc_md, strlen(doc_md), &c, count_tok, tok, &ch, &nc, NULL));
  /* sections: Streams, Types (prose), its code, Object mode: each its own chunk */
  ASSERT_EQ(nc, 4);
  ASSERT(!strncmp(d.text + ch[0].start, "Streams", 7));
  ASSERT(!strncmp(d.text + ch[1].start, "Types of streams", 16));
  ASSERT_EQ(ch[2].is_code, 1);
  ASSERT_EQ(ch[1].is_code, 0);
  ASSERT(!strncmp(d.text + ch[3].start, "Object mode", 11));
  json_t *h = text_block_headings(&d, ch[2].block);
  char *s = json_dumps(h, JSON_COMPACT);
  ASSERT_STR_EQ(s, "[\"Streams\",\"Types of streams\"]");
  free(s);
  json_decref(h);
  free(ch);
  text_doc_free(&d);
}

TEST(sentence_cuts_at_sentence_ends) {
  text_chunk_config c = {.kind = TEXT_CHUNK_SENTENCE, .size = 20};
  const char *src = "One short sentence here. Another one follows it closely. A third sentence is a bit longer "
                    "than the others were. Fourth. Fifth sentence, e.g. with an abbreviation inside it. Sixth.";
  text_doc d;
  ASSERT_OK(text_parse(&d, src, strlen(src), TEXT_PLAIN, NULL));
  load_tok();
  text_chunk *ch;
  size_t nc;
  ASSERT_OK(text_chunk_doc(&d, src, strlen(src), &c, count_tok, tok, &ch, &nc, NULL));
  ASSERT(nc >= 2);
  for (size_t i = 0; i < nc; i++) ASSERT_EQ(d.text[ch[i].end - 1], '.');
  /* "e.g." does not end a sentence */
  for (size_t i = 0; i + 1 < nc; i++) ASSERT(strncmp(d.text + ch[i + 1].start, "with", 4) != 0);
  check(src, strlen(src), TEXT_PLAIN, c);
  free(ch);
  text_doc_free(&d);
}

TEST(plain_text_spans_are_exact) {
  const char *src = "alpha beta gamma\ndelta epsilon.\n\nzeta eta theta iota kappa lambda mu nu xi omicron pi rho\n";
  for (int kind = 0; kind < 4; kind++) {
    text_chunk_config c = {.kind = (text_chunker)kind, .size = 6, .min = 3, .max = 6, .overlap = 0.3};
    check(src, strlen(src), TEXT_PLAIN, c);
  }
}

TEST(a_word_over_budget_is_cut) {
  const char *src = "short aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                    "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9 tail";
  for (int kind = 0; kind < 4; kind++) {
    text_chunk_config c = {.kind = (text_chunker)kind, .size = 3, .min = 2, .max = 3};
    check(src, strlen(src), TEXT_PLAIN, c);
  }
}

TEST(bad_configs) {
  text_doc d;
  ASSERT_OK(text_parse(&d, "x", 1, TEXT_PLAIN, NULL));
  load_tok();
  text_chunk *ch;
  size_t nc;
  text_chunk_config c = {.kind = TEXT_CHUNK_FIXED, .size = 0};
  ASSERT_STATUS(text_chunk_doc(&d, "x", 1, &c, count_tok, tok, &ch, &nc, NULL), QV_EINVAL);
  c = (text_chunk_config){.kind = TEXT_CHUNK_ADAPTIVE, .min = 10, .max = 5};
  ASSERT_STATUS(text_chunk_doc(&d, "x", 1, &c, count_tok, tok, &ch, &nc, NULL), QV_EINVAL);
  c = (text_chunk_config){.kind = TEXT_CHUNK_FIXED, .size = 5, .overlap = 0.95};
  ASSERT_STATUS(text_chunk_doc(&d, "x", 1, &c, count_tok, tok, &ch, &nc, NULL), QV_EINVAL);
  text_chunker k;
  ASSERT_STATUS(text_chunker_parse(&k, "paragraph"), QV_EINVAL);
  ASSERT_OK(text_chunker_parse(&k, "adaptive"));
  ASSERT_EQ(k, TEXT_CHUNK_ADAPTIVE);
  text_doc_free(&d);
  /* an empty document has no chunks */
  ASSERT_OK(text_parse(&d, "", 0, TEXT_MARKDOWN, NULL));
  c = (text_chunk_config){.kind = TEXT_CHUNK_FIXED, .size = 5};
  ASSERT_OK(text_chunk_doc(&d, "", 0, &c, count_tok, tok, &ch, &nc, NULL));
  ASSERT_EQ(nc, 0);
  free(ch);
  text_doc_free(&d);
}

/* A real document: Node.js's fs.md from Debian's nodejs-doc (make deps installs it). */
static char *read_gz(const char *path, size_t *n) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "gzip -dc %s 2>/dev/null", path);
  FILE *f = popen(cmd, "r");
  if (!f) return NULL;
  size_t cap = 1 << 20, len = 0, r;
  char *buf = malloc(cap);
  while (buf && (r = fread(buf + len, 1, cap - len, f)) > 0) {
    len += r;
    if (len == cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  int rc = pclose(f);
  if (rc != 0) {
    free(buf);
    return NULL;
  }
  *n = len;
  return buf;
}

TEST(real_markdown_file) {
  size_t n = 0;
  char *src = read_gz("/usr/share/doc/nodejs/api/fs.md.gz", &n);
  if (!src) TEST_FAIL_("/usr/share/doc/nodejs/api/fs.md.gz is missing: apt-get install nodejs-doc");
  ASSERT(n > 1000);
  for (int kind = 0; kind < 4; kind++) {
    text_chunk_config c = {.kind = (text_chunker)kind, .size = 128, .min = 48, .max = 160, .overlap = kind == 1 ? 0.2 : 0};
    ASSERT(check(src, n, TEXT_MARKDOWN, c) > 5);
  }
  free(src);
}

TEST_MAIN(T(every_chunker_small_budgets), T(fixed_chunks_are_full), T(structure_keeps_sections_apart),
          T(sentence_cuts_at_sentence_ends), T(plain_text_spans_are_exact), T(a_word_over_budget_is_cut),
          T(bad_configs), T(real_markdown_file))
