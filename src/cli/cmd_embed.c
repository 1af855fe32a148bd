/* quiver embed and quiver rerank: text in, vectors or scores out. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

#define CHUNK 256 /* texts per encode call: bounds memory and paces the progress line */

typedef struct text_list {
  char **items;
  size_t n, cap;
} text_list;

static void push(text_list *l, const char *s, size_t len) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 64;
    if (!(l->items = realloc(l->items, l->cap * sizeof *l->items))) cli_die("out of memory");
  }
  if (!(l->items[l->n] = strndup(s, len))) cli_die("out of memory");
  l->n++;
}

static void free_list(text_list *l) {
  for (size_t i = 0; i < l->n; i++) free(l->items[i]);
  free(l->items);
}

/* One text per line (without its newline; a trailing \r is dropped). */
static void read_lines(text_list *l, FILE *f) {
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, f)) >= 0) {
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
    push(l, line, (size_t)len);
  }
  free(line);
}

static void gather(text_list *l, const char **pos, int npos, int first, const char *input) {
  for (int i = first; i < npos; i++) push(l, pos[i], strlen(pos[i]));
  if (input) {
    FILE *f = strcmp(input, "-") ? fopen(input, "r") : stdin;
    if (!f) cli_die("%s: cannot open", input);
    read_lines(l, f);
    if (f != stdin) fclose(f);
  } else if (npos <= first) {
    read_lines(l, stdin);
  }
}

static qv_model *load_model(const char *name) {
  qv_model *m;
  qv_error err = {0};
  cli_check(qv_model_load(&m, name, &err), &err, "loading the model");
  return m;
}

static const char embed_usage[] =
    "usage: quiver embed [TEXT...] [options]\n"
    "Embeds each TEXT (or each line of --input, or of stdin when neither is given).\n"
    "Prints one JSON line per text, {\"index\": i, \"embedding\": [...]}, or writes .npy.\n"
    "options:\n"
    "  --model NAME|DIR   embedding model (default all-MiniLM-L6-v2, from $QUIVER_MODELS)\n"
    "  --input FILE       one text per line ('-' for stdin)\n"
    "  --output FILE.npy  write a float32 (n, dims) array instead of JSON lines\n"
    "  --no-truncate      fail on inputs longer than the model's limit instead of cutting them\n";

int cmd_embed(int argc, char **argv) {
  const char *model = "all-MiniLM-L6-v2", *input = NULL, *output = NULL;
  static const char *pos[65536];
  int no_truncate = 0;
  cli_opt opts[] = {{"model", &model, NULL}, {"input", &input, NULL}, {"output", &output, NULL},
                    {"no-truncate", NULL, &no_truncate}, {0}};
  int npos = cli_parse(argc, argv, opts, pos, 65536, embed_usage);
  text_list texts = {0};
  gather(&texts, pos, npos, 0, input);
  qv_model *m = load_model(model);
  qv_model_info info;
  qv_model_info_get(m, &info);
  if (info.kind != QV_MODEL_EMBEDDING) cli_die("%s is a reranker; use quiver rerank", info.name);
  size_t dims = (size_t)info.dims;
  float *out = malloc((texts.n ? texts.n : 1) * dims * sizeof(float));
  if (!out) cli_die("out of memory");
  cli_progress prog;
  cli_progress_start(&prog, "embedding", "texts", texts.n);
  qv_error err = {0};
  for (size_t i = 0; i < texts.n; i += CHUNK) {
    size_t nb = texts.n - i < CHUNK ? texts.n - i : CHUNK;
    qv_status st = qv_model_encode(m, (const char *const *)texts.items + i, NULL, nb, !no_truncate,
                                   out + i * dims, &err);
    if (st == QV_ETOOLONG || st == QV_EINVAL) cli_die("text %zu: %s", i, err.msg);
    cli_check(st, &err, "embed");
    cli_progress_update(&prog, i + nb);
  }
  cli_progress_end(&prog, texts.n);
  if (output) {
    cli_write_npy(output, "<f4", out, sizeof(float), texts.n, dims);
    printf("{\"embedded\":%zu,\"dims\":%zu,\"output\":\"%s\"}\n", texts.n, dims, output);
  } else {
    for (size_t i = 0; i < texts.n; i++) {
      printf("{\"index\":%zu,\"embedding\":[", i);
      for (size_t c = 0; c < dims; c++) printf(c ? ",%.9g" : "%.9g", (double)out[i * dims + c]);
      puts("]}");
    }
  }
  free(out);
  free_list(&texts);
  qv_model_free(m);
  return 0;
}

static const char rerank_usage[] =
    "usage: quiver rerank QUERY [DOC...] [options]\n"
    "Scores each DOC (or each line of --input, or of stdin) against QUERY with a\n"
    "cross-encoder. Prints JSON lines, best first: {\"index\", \"score\", \"logit\", \"text\"};\n"
    "score is sigmoid(logit).\n"
    "options:\n"
    "  --model NAME|DIR   cross-encoder (default ms-marco-MiniLM-L-6-v2, from $QUIVER_MODELS)\n"
    "  --input FILE       one document per line ('-' for stdin)\n"
    "  --top N            print only the N best\n"
    "  --no-truncate      fail on pairs longer than the model's limit instead of cutting them\n";

static const float *sort_scores;
static int by_score(const void *a, const void *b) {
  float x = sort_scores[*(const size_t *)a], y = sort_scores[*(const size_t *)b];
  if (x != y) return x > y ? -1 : 1;
  return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

static void print_json_string(const char *s) {
  putchar('"');
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') printf("\\%c", *p);
    else if (*p < 0x20) printf("\\u%04x", *p);
    else putchar(*p);
  }
  putchar('"');
}

int cmd_rerank(int argc, char **argv) {
  const char *model = "ms-marco-MiniLM-L-6-v2", *input = NULL, *top_s = NULL;
  static const char *pos[65536];
  int no_truncate = 0;
  cli_opt opts[] = {{"model", &model, NULL}, {"input", &input, NULL}, {"top", &top_s, NULL},
                    {"no-truncate", NULL, &no_truncate}, {0}};
  int npos = cli_parse(argc, argv, opts, pos, 65536, rerank_usage);
  if (npos < 1) cli_die("rerank: missing QUERY (see --help)");
  text_list docs = {0};
  gather(&docs, pos, npos, 1, input);
  size_t top = top_s ? (size_t)cli_int(top_s, "--top", 1, 1 << 30) : docs.n;
  qv_model *m = load_model(model);
  float *logits = malloc((docs.n ? docs.n : 1) * sizeof *logits);
  size_t *order = malloc((docs.n ? docs.n : 1) * sizeof *order);
  if (!logits || !order) cli_die("out of memory");
  qv_error err = {0};
  cli_check(qv_model_rerank(m, pos[0], (const char *const *)docs.items, docs.n, !no_truncate, logits, &err), &err,
            "rerank");
  for (size_t i = 0; i < docs.n; i++) order[i] = i;
  sort_scores = logits;
  qsort(order, docs.n, sizeof *order, by_score);
  for (size_t r = 0; r < docs.n && r < top; r++) {
    size_t i = order[r];
    printf("{\"index\":%zu,\"score\":%.9g,\"logit\":%.9g,\"text\":", i, 1.0 / (1.0 + exp(-(double)logits[i])),
           (double)logits[i]);
    print_json_string(docs.items[i]);
    puts("}");
  }
  free(logits);
  free(order);
  free_list(&docs);
  qv_model_free(m);
  return 0;
}
