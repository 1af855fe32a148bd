/* quiver tokenize: token ids for JSON lines of text, as Hugging Face tokenizers gives them. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "model/tokenizer.h"

static const char usage[] =
    "usage: quiver tokenize --tokenizer PATH/tokenizer.json [--max-length N] [--pairs] [FILE]\n"
    "Reads JSON lines from FILE (or stdin): each a string, or with --pairs an array [a, b].\n"
    "Prints one JSON line per input: {\"ids\":[...],\"type_ids\":[...],\"untruncated_len\":N}.\n"
    "options:\n"
    "  --tokenizer FILE   a Hugging Face tokenizer.json (WordPiece)\n"
    "  --max-length N     truncate to N tokens in all, special tokens included (0: no limit;\n"
    "                     default 0); pairs lose tokens from the longer text first\n"
    "  --pairs            each line is a pair [a, b]\n"
    "  --data-dir DIR     accepted and ignored, like every command\n";

/* Output goes through one buffer: printf per id would dominate the run time. */
typedef struct outbuf {
  char buf[1 << 16];
  size_t len;
} outbuf;

static void out_flush(outbuf *o) {
  if (o->len && fwrite(o->buf, 1, o->len, stdout) != o->len) cli_die("tokenize: write failed: %s", strerror(errno));
  o->len = 0;
}

static void out_str(outbuf *o, const char *s, size_t n) {
  if (o->len + n > sizeof o->buf) out_flush(o);
  if (n > sizeof o->buf) {
    if (fwrite(s, 1, n, stdout) != n) cli_die("tokenize: write failed: %s", strerror(errno));
    return;
  }
  memcpy(o->buf + o->len, s, n);
  o->len += n;
}

static void out_u64(outbuf *o, unsigned long long v) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[sizeof tmp - 1 - n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  out_str(o, tmp + sizeof tmp - n, n);
}

static void out_ids(outbuf *o, const int32_t *ids, size_t n) {
  out_str(o, "[", 1);
  for (size_t i = 0; i < n; i++) {
    if (i) out_str(o, ",", 1);
    out_u64(o, (unsigned long long)ids[i]);
  }
  out_str(o, "]", 1);
}

static int blank(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
  return 1;
}

int cmd_tokenize(int argc, char **argv) {
  const char *path = NULL, *max_length = "0", *data_dir = NULL, *pos[1] = {0};
  int pairs = 0;
  cli_opt opts[] = {{"tokenizer", &path, NULL},
                    {"max-length", &max_length, NULL},
                    {"pairs", NULL, &pairs},
                    {"data-dir", &data_dir, NULL},
                    {0}};
  int npos = cli_parse(argc, argv, opts, pos, 1, usage);
  (void)data_dir;
  if (!path) cli_die("tokenize: --tokenizer is required (see --help)");
  size_t max_len = (size_t)cli_int(max_length, "--max-length", 0, 1LL << 30);
  FILE *in = stdin;
  const char *name = "stdin";
  if (npos == 1 && strcmp(pos[0], "-") != 0) {
    name = pos[0];
    in = fopen(name, "rb");
    if (!in) cli_die("%s: %s", name, strerror(errno));
  }
  qv_error err = {0};
  qv_tokenizer *tok;
  cli_check(tok_load(&tok, path, &err), &err, "tokenize");

  static outbuf out;
  tok_encoding enc = {0};
  char *line = NULL;
  size_t cap = 0, lineno = 0;
  ssize_t got;
  while ((got = getline(&line, &cap, in)) >= 0) {
    lineno++;
    size_t len = (size_t)got;
    if (blank(line, len)) continue;
    json_error_t je;
    json_t *v = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!v) cli_die("%s line %zu: malformed JSON: %s", name, lineno, je.text);
    const json_t *a = v, *b = NULL;
    if (pairs) {
      if (!json_is_array(v) || json_array_size(v) != 2)
        cli_die("%s line %zu: expected an array of two strings [a, b]", name, lineno);
      a = json_array_get(v, 0);
      b = json_array_get(v, 1);
      if (!json_is_string(a) || !json_is_string(b))
        cli_die("%s line %zu: expected an array of two strings [a, b]", name, lineno);
    } else if (!json_is_string(v)) {
      cli_die("%s line %zu: expected a JSON string (or use --pairs for [a, b])", name, lineno);
    }
    qv_status st = tok_encode(tok, json_string_value(a), json_string_length(a), b ? json_string_value(b) : NULL,
                              b ? json_string_length(b) : 0, max_len, &enc, &err);
    if (st) {
      out_flush(&out);
      cli_die("%s line %zu: %s", name, lineno, err.msg[0] ? err.msg : qv_strerror(st));
    }
    json_decref(v);
    out_str(&out, "{\"ids\":", 7);
    out_ids(&out, enc.ids, enc.len);
    out_str(&out, ",\"type_ids\":", 12);
    out_ids(&out, enc.type_ids, enc.len);
    out_str(&out, ",\"untruncated_len\":", 19);
    out_u64(&out, enc.untruncated_len);
    out_str(&out, "}\n", 2);
  }
  if (ferror(in)) cli_die("%s: read failed: %s", name, strerror(errno));
  out_flush(&out);
  if (fflush(stdout) != 0) cli_die("tokenize: write failed: %s", strerror(errno));
  free(line);
  tok_encoding_free(&enc);
  tok_free(tok);
  if (in != stdin) fclose(in);
  return 0;
}
