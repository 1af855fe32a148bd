/* quiver gpt tokenizer train|encode|decode: the small GPT's byte-level BPE tokenizer. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "cli/cli.h"
#include "gpt/bpe.h"
#include "text/ingest.h"

static const char usage[] =
    "usage: quiver gpt tokenizer train --vocab-size N --out tokenizer.json PATH...\n"
    "       quiver gpt tokenizer encode --tokenizer F [--jsonl FILE|-] [TEXT]\n"
    "       quiver gpt tokenizer decode --tokenizer F [--jsonl FILE|-] [IDS]\n"
    "train learns a byte-level BPE (GPT-2's scheme) from documents (.md .mdx .txt .rst .html;\n"
    "folders are walked) and writes a Hugging Face tokenizer.json. encode prints the ids of\n"
    "TEXT (or of stdin) as a JSON array; decode prints the text of a JSON array of ids (or of\n"
    "stdin). With --jsonl, each line of FILE (- for stdin) is one input (a JSON string for\n"
    "encode, an array of ids for decode) and each output is one JSON line.\n"
    "options:\n"
    "  --tokenizer F      tokenizer.json, a folder holding one, or a folder with GPT-2's\n"
    "                     vocab.json + merges.txt\n"
    "  --vocab-size N     train: 256 byte tokens + merges + <|endoftext|> (257..16777216)\n"
    "  --out FILE         train: where the tokenizer.json goes\n"
    "  --jsonl FILE       encode/decode many inputs, one JSON value a line\n";

#define MAX_PATHS 256

/* ---- train ------------------------------------------------------------------------------ */

static char *slurp(const char *path, size_t *len) {
  char *buf;
  qv_error err = {0};
  cli_check(qv_read_file(path, &buf, len, &err), &err, "gpt tokenizer train");
  return buf;
}

static void train_progress(void *ctx, size_t done, size_t total) {
  cli_progress *p = ctx;
  (void)total;
  cli_progress_update(p, done);
}

static int tok_train(int argc, char **argv) {
  const char *vocab = NULL, *out = NULL, *pos[MAX_PATHS] = {0};
  cli_opt opts[] = {{"vocab-size", &vocab, NULL}, {"out", &out, NULL}, {0}};
  int npos = cli_parse(argc, argv, opts, pos, MAX_PATHS, usage);
  if (!vocab || !out || !npos) cli_die("gpt tokenizer train: --vocab-size, --out and a PATH are required (see --help)");
  size_t vocab_size = (size_t)cli_int(vocab, "--vocab-size", 257, 1 << 24);
  /* the documents `quiver ingest` and `gpt train` read: sorted, so runs repeat exactly */
  char **paths = NULL;
  size_t npaths = 0;
  qv_error err;
  cli_check(text_find_documents(pos, (size_t)npos, &paths, &npaths, &err), &err, "gpt tokenizer train");
  if (!npaths) cli_die("gpt tokenizer train: no documents (.md .mdx .txt .rst .html) under the given paths");
  char **texts = malloc(npaths * sizeof *texts);
  size_t *lens = malloc(npaths * sizeof *lens), bytes = 0;
  if (!texts || !lens) cli_die("gpt tokenizer train: out of memory");
  for (size_t i = 0; i < npaths; i++) {
    texts[i] = slurp(paths[i], &lens[i]);
    bytes += lens[i];
  }
  cli_progress prog;
  cli_progress_start(&prog, "merges", "merges", vocab_size - 257);
  gpt_bpe *b = NULL;
  cli_check(gpt_bpe_train(&b, (const char *const *)texts, lens, npaths, vocab_size, train_progress, &prog, &err), &err,
            "gpt tokenizer train");
  cli_progress_end(&prog, gpt_bpe_vocab_size(b) - 257);
  cli_check(gpt_bpe_save(b, out, &err), &err, "gpt tokenizer train");
  fprintf(stderr, "%s: %zu tokens learned from %zu files (%zu bytes)\n", out, gpt_bpe_vocab_size(b), npaths, bytes);
  gpt_bpe_free(b);
  for (size_t i = 0; i < npaths; i++) {
    free(texts[i]);
    free(paths[i]);
  }
  free(texts);
  free(lens);
  free(paths);
  return 0;
}

/* ---- encode / decode -------------------------------------------------------------------- */

static gpt_bpe *open_tokenizer(const char *path, const char *cmd) {
  if (!path) cli_die("gpt tokenizer %s: --tokenizer is required (see --help)", cmd);
  gpt_bpe *b;
  qv_error err;
  cli_check(gpt_bpe_load(&b, path, &err), &err, "gpt tokenizer");
  return b;
}

static void print_ids(const int32_t *ids, size_t n) {
  putchar('[');
  for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", (int)ids[i]);
  fputs("]\n", stdout);
}

static void encode_one(const gpt_bpe *b, const char *s, size_t len) {
  int32_t *ids;
  size_t n;
  if (gpt_bpe_encode(b, s, len, &ids, &n)) cli_die("gpt tokenizer encode: out of memory");
  print_ids(ids, n);
  free(ids);
}

/* Decoded bytes as a JSON string, or {"hex": "..."} when they are not valid UTF-8. */
static void print_text_json(const char *s, size_t len) {
  json_t *j = json_stringn(s, len);
  if (!j) {
    fputs("{\"hex\":\"", stdout);
    for (size_t i = 0; i < len; i++) printf("%02x", (unsigned char)s[i]);
    fputs("\"}\n", stdout);
    return;
  }
  char *t = json_dumps(j, JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
  if (!t) cli_die("gpt tokenizer decode: out of memory");
  puts(t);
  free(t);
  json_decref(j);
}

/* Parses a JSON array of ids; dies naming what is wrong. */
static int32_t *parse_ids(const char *s, size_t len, size_t *n, size_t line) {
  json_error_t je;
  json_t *j = json_loadb(s, len, 0, &je);
  if (!j || !json_is_array(j)) cli_die("gpt tokenizer decode: input %zu: expected a JSON array of ids", line);
  *n = json_array_size(j);
  int32_t *ids = malloc((*n ? *n : 1) * sizeof *ids);
  if (!ids) cli_die("gpt tokenizer decode: out of memory");
  for (size_t i = 0; i < *n; i++) {
    json_t *v = json_array_get(j, i);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
      cli_die("gpt tokenizer decode: input %zu: element %zu is not a token id", line, i);
    ids[i] = (int32_t)json_integer_value(v);
  }
  json_decref(j);
  return ids;
}

static int run_jsonl(const gpt_bpe *b, const char *file, int decode) {
  FILE *in = strcmp(file, "-") ? fopen(file, "rb") : stdin;
  if (!in) cli_die("%s: %s", file, strerror(errno));
  char *line = NULL;
  size_t cap = 0, no = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, in)) > 0) {
    no++;
    if (len == 1 && line[0] == '\n') continue;
    if (decode) {
      size_t n;
      int32_t *ids = parse_ids(line, (size_t)len, &n, no);
      size_t tl;
      char *t = gpt_bpe_decode(b, ids, n, &tl);
      if (!t) cli_die("gpt tokenizer decode: out of memory");
      print_text_json(t, tl);
      free(t);
      free(ids);
    } else {
      json_error_t je;
      json_t *j = json_loadb(line, (size_t)len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
      if (!j || !json_is_string(j)) cli_die("gpt tokenizer encode: line %zu: expected a JSON string", no);
      encode_one(b, json_string_value(j), json_string_length(j));
      json_decref(j);
    }
  }
  free(line);
  if (in != stdin) fclose(in);
  if (fflush(stdout)) cli_die("gpt tokenizer: write failed: %s", strerror(errno));
  return 0;
}

static char *read_stdin(size_t *len) {
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (!buf) cli_die("gpt tokenizer: out of memory");
    n += fread(buf + n, 1, cap - n, stdin);
    if (n < cap) break;
    buf = realloc(buf, cap *= 2);
  }
  *len = n;
  return buf;
}

static int tok_code(int argc, char **argv, int decode) {
  const char *path = NULL, *jsonl = NULL, *pos[1] = {0};
  cli_opt opts[] = {{"tokenizer", &path, NULL}, {"jsonl", &jsonl, NULL}, {0}};
  int npos = cli_parse(argc, argv, opts, pos, 1, usage);
  gpt_bpe *b = open_tokenizer(path, decode ? "decode" : "encode");
  if (jsonl) {
    run_jsonl(b, jsonl, decode);
    gpt_bpe_free(b);
    return 0;
  }
  size_t len;
  char *in = npos ? NULL : read_stdin(&len);
  const char *s = npos ? pos[0] : in;
  if (npos) len = strlen(s);
  if (decode) {
    size_t n, tl;
    int32_t *ids = parse_ids(s, len, &n, 1);
    char *t = gpt_bpe_decode(b, ids, n, &tl);
    if (!t) cli_die("gpt tokenizer decode: out of memory");
    if (fwrite(t, 1, tl, stdout) != tl) cli_die("gpt tokenizer decode: write failed: %s", strerror(errno));
    free(t);
    free(ids);
  } else {
    encode_one(b, s, len);
  }
  free(in);
  gpt_bpe_free(b);
  if (fflush(stdout)) cli_die("gpt tokenizer: write failed: %s", strerror(errno));
  return 0;
}

int cmd_gpt_tokenizer(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "train")) return tok_train(argc - 1, argv + 1);
  if (!strcmp(argv[1], "encode")) return tok_code(argc - 1, argv + 1, 0);
  if (!strcmp(argv[1], "decode")) return tok_code(argc - 1, argv + 1, 1);
  cli_die("gpt tokenizer: unknown action \"%s\" (train, encode or decode)", argv[1]);
}
