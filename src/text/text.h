/* The text layer's internals: documents (Markdown, MDX, reStructuredText, HTML, plain text)
 * turned into clean text that remembers where each byte came from, and the chunkers that
 * cut that text into pieces an embedding model accepts.
 *
 * A document's clean text is a sequence of blocks (headings, paragraphs, list items, code)
 * separated by whitespace. Every byte of the clean text maps back to the source bytes that
 * produced it (map, map_end), so a chunk of clean text has an exact byte span in the file.
 */
#ifndef QV_TEXT_TEXT_H
#define QV_TEXT_TEXT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef enum { TEXT_PLAIN = 0, TEXT_MARKDOWN, TEXT_MDX, TEXT_RST, TEXT_HTML } text_format;

/* The format for a file name by extension (.md .markdown .mdx .txt .rst .html .htm); -1
 * for a file that is not a document. */
int text_format_for_path(const char *path);
const char *text_format_name(text_format f);

typedef enum { TEXT_BLOCK_PARA = 0, TEXT_BLOCK_HEADING, TEXT_BLOCK_LIST, TEXT_BLOCK_CODE } text_block_kind;

#define TEXT_MAX_DEPTH 6

typedef struct text_block {
  size_t start, end;              /* bytes of doc->text */
  uint8_t kind;                   /* text_block_kind */
  uint8_t depth;                  /* headings in force (a heading block includes itself) */
  int32_t path[TEXT_MAX_DEPTH];   /* indices into doc->heads */
} text_block;

typedef struct text_doc {
  char *text;           /* (len + 1) clean UTF-8, NUL-terminated */
  size_t len;
  uint32_t *map;        /* (len) source offset of the construct that produced each byte */
  uint32_t *map_end;    /* (len) source offset just past that construct */
  text_block *blocks;   /* (nblocks) in text order, non-overlapping */
  size_t nblocks, cap_blocks;
  char **heads;         /* (nheads) heading texts */
  size_t nheads, cap_heads;
  json_t *front;        /* front matter as a JSON object, or NULL */
  size_t cap;           /* read-only: allocation of text/map */
} text_doc;

/* Parses src (n bytes, UTF-8) as format f. Invalid UTF-8 is replaced byte by byte with
 * U+FFFD in the clean text, so every file yields a document; sources over 2 GiB are
 * QV_ERANGE. */
qv_status text_parse(text_doc *out, const char *src, size_t n, text_format f, qv_error *err);
void text_doc_free(text_doc *d);

/* ---- Chunking ----------------------------------------------------------------------- */

typedef enum { TEXT_CHUNK_FIXED = 0, TEXT_CHUNK_SENTENCE, TEXT_CHUNK_STRUCTURE, TEXT_CHUNK_ADAPTIVE } text_chunker;

/* "fixed", "sentence", "structure", "adaptive". */
qv_status text_chunker_parse(text_chunker *out, const char *name);
const char *text_chunker_name(text_chunker c);

typedef struct text_chunk_config {
  text_chunker kind;
  uint32_t size;     /* token budget (fixed, sentence, structure) */
  uint32_t min, max; /* adaptive: chunk sizes in tokens */
  double overlap;    /* in [0, 0.9]: the share of a chunk's tokens that the next repeats */
} text_chunk_config;

/* Counts the model's tokens in s (no special tokens). Word by word counts add up to the
 * count of the words joined by whitespace, as BERT's pre-tokenizer splits on whitespace. */
typedef qv_status (*text_count_fn)(void *ctx, const char *s, size_t n, uint32_t *out, qv_error *err);

typedef struct text_chunk {
  size_t start, end;           /* bytes of doc->text; text[start] and text[end-1] are not space */
  size_t src_start, src_end;   /* bytes of the source file */
  size_t line_start, line_end; /* 1-based lines of the source, inclusive */
  uint32_t tokens;             /* model tokens, special tokens excluded */
  size_t block;                /* the block holding the first byte: its heading path */
  int is_code;                 /* the chunk holds code from a code block */
} text_chunk;

/* Cuts d into chunks by c. Invariants (tests/unit/test_chunk.c):
 *  1. No chunk has more tokens than its budget (size, or max for adaptive).
 *  2. Every non-space byte of d->text is in a chunk; chunks are in order, and a chunk
 *     starts after the previous one starts and ends after it ends.
 *  3. Without overlap, chunks do not overlap; with it, a chunk repeats at most
 *     floor(overlap * tokens) of the previous chunk's tokens, as whole words, and never
 *     across a section boundary (structure).
 *  4. Words are never split, except a single word over the budget, which is cut at UTF-8
 *     character boundaries into pieces that fit.
 *  5. Adaptive chunks hold at least min tokens unless they end a document or a split word.
 * src and n are the source the doc came from (for line numbers). */
qv_status text_chunk_doc(const text_doc *d, const char *src, size_t n, const text_chunk_config *c,
                         text_count_fn count, void *ctx, text_chunk **out, size_t *nout, qv_error *err);

/* The heading path of a block as a JSON array of strings (new reference). */
json_t *text_block_headings(const text_doc *d, size_t block);

/* SHA-256 of bytes as 64 hex digits and a NUL. */
void text_sha256_hex(const void *data, size_t n, char hex[65]);

#endif
