/* quiver gpt generate | chat: text from a GPT-2 folder (ours or Hugging Face's), streamed
 * as it is sampled; the chat is a plain REPL with commands for people learning how these
 * models work (/explain shows tokens and the five likeliest next tokens at each step). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/pool.h"
#include "cli/cli.h"
#include "gpt/bpe.h"
#include "gpt/generate.h"
#include "gpt/infer.h"
#include "gpt/sample.h"

/* ---- shared setup ---------------------------------------------------------------------- */

typedef struct gen_cli {
  const char *model, *max_tokens, *temperature, *top_k, *top_p, *rep, *seed, *gpu, *gpu_dev;
  int no_cache;
  char **stops; /* unescaped --stop values */
  size_t n_stops;
} gen_cli;

/* "\n", "\t", "\\" in stop strings, so a newline can be given without shell quoting. */
static char *unescape(const char *s) {
  char *out = malloc(strlen(s) + 1), *o = out;
  if (!out) cli_die("out of memory");
  for (; *s; s++) {
    if (*s == '\\' && (s[1] == 'n' || s[1] == 't' || s[1] == '\\')) {
      s++;
      *o++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : '\\';
    } else {
      *o++ = *s;
    }
  }
  *o = 0;
  return out;
}

/* Takes every "--stop S" / "--stop=S" out of argv (cli_parse keeps only the last value of
 * an option, and several stop strings are allowed). Returns the new argc. */
static int take_stops(int argc, char **argv, gen_cli *c) {
  int out = 1;
  c->stops = calloc((size_t)argc, sizeof *c->stops);
  if (!c->stops) cli_die("out of memory");
  for (int i = 1; i < argc; i++) {
    const char *v = NULL;
    if (!strcmp(argv[i], "--stop")) {
      if (i + 1 >= argc) cli_die("%s: --stop needs a value", argv[0]);
      v = argv[++i];
    } else if (!strncmp(argv[i], "--stop=", 7)) {
      v = argv[i] + 7;
    } else {
      argv[out++] = argv[i];
      continue;
    }
    if (!*v) cli_die("%s: --stop needs a non-empty string", argv[0]);
    c->stops[c->n_stops++] = unescape(v);
  }
  return out;
}

/* The options both commands take (besides --model and the repeatable --stop). */
#define SAMPLING_OPTS(c)                                                                           \
  {"max-tokens", &(c).max_tokens, NULL}, {"temperature", &(c).temperature, NULL},                  \
      {"top-k", &(c).top_k, NULL}, {"top-p", &(c).top_p, NULL}, {"repetition-penalty", &(c).rep, NULL}, \
      {"seed", &(c).seed, NULL}, {"gpu", &(c).gpu, NULL}, {"gpu-device", &(c).gpu_dev, NULL}

static void free_stops(gen_cli *c) {
  for (size_t i = 0; i < c->n_stops; i++) free(c->stops[i]);
  free(c->stops);
}

static gpt_sample_params sample_params(const gen_cli *c) {
  gpt_sample_params p = gpt_sample_defaults();
  if (c->temperature) p.temperature = (float)cli_double(c->temperature, "--temperature");
  if (c->top_k) p.top_k = (int)cli_int(c->top_k, "--top-k", 0, 1 << 30);
  if (c->top_p) p.top_p = (float)cli_double(c->top_p, "--top-p");
  if (c->rep) p.repetition_penalty = (float)cli_double(c->rep, "--repetition-penalty");
  if (c->seed) p.seed = (uint64_t)cli_int(c->seed, "--seed", 0, (long long)(~0ull >> 1));
  qv_error err = {0};
  if (gpt_sample_check(&p, &err)) cli_die("%s", err.msg);
  return p;
}

static gpt_bpe *load_tokenizer(const char *dir) {
  qv_error err = {0};
  gpt_bpe *b = NULL;
  /* a folder: its tokenizer.json (ours, HF's gpt2), or else vocab.json + merges.txt */
  cli_check(gpt_bpe_load(&b, dir, &err), &err, "tokenizer");
  return b;
}

static const char *token_bytes(void *tok, int32_t id, size_t *len) {
  return gpt_bpe_token_bytes(tok, id, len);
}

/* The model, its tokenizer, a sampler and a generation loop, as both commands need them. */
typedef struct gen_setup {
  gpt_infer *m;
  gpt_bpe *bpe;
  gpt_sampler *s;
  gpt_gen *g;
  size_t V;
} gen_setup;

static void setup(gen_setup *st, const gen_cli *c, const char *who) {
  gpt_sample_params sp = sample_params(c);
  qv_error err = {0};
  cli_check(cli_gpu_setup(c->gpu, c->gpu_dev, &err), &err, who);
  cli_check(gpt_infer_load(&st->m, c->model, &err), &err, "model");
  st->bpe = load_tokenizer(c->model);
  st->V = (size_t)gpt_infer_config_of(st->m)->vocab_size;
  if (gpt_bpe_vocab_size(st->bpe) > st->V)
    cli_die("%s: the tokenizer has %zu tokens but the model only %zu", who, gpt_bpe_vocab_size(st->bpe), st->V);
  cli_check(gpt_sampler_create(&st->s, st->V, &sp, &err), &err, "sampler");
  cli_check(gpt_gen_create(&st->g, st->m, &err), &err, who);
}

static void teardown(gen_setup *st, gen_cli *c) {
  gpt_gen_free(st->g);
  gpt_sampler_free(st->s);
  gpt_bpe_free(st->bpe);
  gpt_infer_free(st->m);
  free_stops(c);
}

static int write_text(void *ctx, const char *text, size_t len) {
  (void)ctx;
  if (fwrite(text, 1, len, stdout) != len) return 1;
  fflush(stdout);
  return 0;
}

/* A token's bytes for people to read: quoted, with newlines, tabs, quotes, control bytes
 * and bytes that are not whole UTF-8 characters escaped. */
static void print_token(FILE *f, const gpt_bpe *b, int32_t id) {
  size_t n = 0;
  const unsigned char *s = (const unsigned char *)gpt_bpe_token_bytes(b, id, &n);
  fputc('"', f);
  for (size_t i = 0; s && i < n; i++) {
    unsigned c = s[i];
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    int whole = c >= 0x80 && c < 0xF8 && c >= 0xC0 && i + need <= n;
    for (size_t k = 1; whole && k < need; k++) whole = (s[i + k] & 0xC0) == 0x80;
    if (whole) {
      fwrite(s + i, 1, need, f);
      i += need - 1;
    } else if (c == '\n') {
      fputs("\\n", f);
    } else if (c == '\t') {
      fputs("\\t", f);
    } else if (c == '"' || c == '\\') {
      fprintf(f, "\\%c", c);
    } else if (c < 0x20 || c >= 0x7F) {
      fprintf(f, "\\x%02x", c);
    } else {
      fputc((int)c, f);
    }
  }
  fputc('"', f);
}

static void write_json_ids(FILE *f, const char *key, const int32_t *ids, size_t n) {
  fprintf(f, "\"%s\": [", key);
  for (size_t i = 0; i < n; i++) fprintf(f, "%s%d", i ? ", " : "", (int)ids[i]);
  fputs("]", f);
}

/* ---- generate ---------------------------------------------------------------------------- */

typedef struct trace {
  float *rows; /* (n_prompt + max_tokens, V), or NULL without --trace */
  size_t n, V;
  double first; /* when the first token was chosen: the prompt's prefill is done */
} trace;

static void trace_step(void *ctx, int32_t id, const float *logits) {
  (void)id;
  trace *t = ctx;
  if (!t->first) t->first = cli_now();
  if (!t->rows) return;
  memcpy(t->rows + t->n * t->V, logits, t->V * sizeof(float));
  t->n++;
}

static const char *GEN_USAGE =
    "usage: quiver gpt generate --model DIR --prompt TEXT [options]\n"
    "\n"
    "Continues TEXT with a GPT-2 model folder (config.json, model.safetensors, tokenizer.json:\n"
    "a `quiver gpt train` checkpoint or Hugging Face's gpt2), streaming to stdout.\n"
    "\n"
    "  --model DIR               the model folder (required)\n"
    "  --prompt TEXT             the text to continue (required)\n"
    "  --max-tokens N            tokens to generate at most (default 128)\n"
    "  --temperature T           0 is greedy; default 1\n"
    "  --top-k K                 sample among the K likeliest tokens (default 0: all)\n"
    "  --top-p P                 ... among the smallest set with mass P (default 1: all)\n"
    "  --repetition-penalty R    divide the logits of tokens already seen by R (default 1: off)\n"
    "  --seed S                  the sampler's seed (default 0); the same seed gives the same text\n"
    "  --stop S                  stop when S appears (not printed); may repeat; \\n and \\t escapes\n"
    "  --gpu auto|on|off         run on the GPU when one works (auto, the default), require one\n"
    "                            (on), or stay on the CPU (off); a GPU that fails mid-way hands\n"
    "                            the sequence to the CPU\n"
    "  --gpu-device N            which GPU (default 0)\n"
    "  --no-cache                recompute the whole sequence at each step (checks the KV cache)\n"
    "  --trace PREFIX            write PREFIX.json (prompt and generated ids, stop reason) and\n"
    "                            PREFIX.npy (float32 logits at every position fed, prompt first)\n"
    "  --stats                   print one JSON line of timings to stderr (prefill and decode\n"
    "                            seconds, tokens/s); without it a summary goes to stderr when it\n"
    "                            is a terminal\n"
    "Generation ends at end-of-text too. QUIVER_THREADS sets the thread count.\n";

int cmd_gpt_generate(int argc, char **argv) {
  gen_cli c = {0};
  const char *prompt = NULL, *trace_prefix = NULL;
  int stats = 0;
  argc = take_stops(argc, argv, &c);
  cli_opt opts[] = {{"model", &c.model, NULL},
                    {"prompt", &prompt, NULL},
                    SAMPLING_OPTS(c),
                    {"no-cache", NULL, &c.no_cache},
                    {"trace", &trace_prefix, NULL},
                    {"stats", NULL, &stats},
                    {NULL, NULL, NULL}};
  cli_parse(argc, argv, opts, NULL, 0, GEN_USAGE);
  if (!c.model) cli_die("gpt generate: --model DIR is required");
  if (!prompt) cli_die("gpt generate: --prompt TEXT is required");
  size_t max_tokens = c.max_tokens ? (size_t)cli_int(c.max_tokens, "--max-tokens", 0, 1 << 24) : 128;
  gen_setup su = {0};
  setup(&su, &c, "gpt generate");
  gpt_bpe *bpe = su.bpe;
  const size_t V = su.V;
  qv_error err = {0};
  int32_t *ids = NULL;
  size_t n = 0;
  cli_check(gpt_bpe_encode(bpe, prompt, strlen(prompt), &ids, &n), NULL, "tokenizer");
  if (n == 0) cli_die("gpt generate: the prompt is empty");

  gpt_gen *g = su.g;
  trace t = {0};
  t.V = V;
  if (trace_prefix) {
    size_t rows = n + max_tokens, bytes;
    if (__builtin_mul_overflow(rows, V * sizeof(float), &bytes) || !(t.rows = malloc(bytes ? bytes : 1)))
      cli_die("gpt generate: --trace needs %zu x %zu floats", rows, V);
  }
  gpt_gen_opts o = {.max_tokens = max_tokens,
                    .stops = (const char *const *)c.stops,
                    .n_stops = c.n_stops,
                    .eot = gpt_bpe_eot(bpe),
                    .no_cache = c.no_cache,
                    .token_bytes = token_bytes,
                    .tok = bpe,
                    .on_text = write_text,
                    .on_step = trace_step,
                    .ctx = &t,
                    .prompt_logits = t.rows};
  /* step logits land after the prompt's rows; step 0's are the prompt's last row again */
  t.n = n;
  gpt_gen_result res;
  double t0 = cli_now();
  qv_status st = gpt_gen_run(g, su.s, ids, n, &o, &res, &err);
  double dt = cli_now() - t0;
  cli_check(st, &err, "generate");
  if (isatty(STDOUT_FILENO)) fputc('\n', stdout);
  if (fflush(stdout)) cli_die("gpt generate: cannot write to stdout");
  /* prefill: until the first token is chosen; decode: the rest, one token per step */
  double prefill = t.first ? t.first - t0 : dt, decode = dt - prefill;
  double rate = res.n_tokens > 1 && decode > 0 ? (double)(res.n_tokens - 1) / decode : 0.0;
  if (stats)
    fprintf(stderr,
            "{\"prompt_tokens\": %zu, \"prefill_s\": %.6f, \"generated\": %zu, \"decode_s\": %.6f, "
            "\"decode_tokens_per_s\": %.3f, \"threads\": %d, \"stop\": \"%s\", \"device\": \"%s\"}\n",
            n, prefill, res.n_tokens, decode, rate, pool_default() ? pool_size(pool_default()) : 1,
            gpt_stop_name(res.reason), gpt_infer_device(su.m));
  else if (isatty(STDERR_FILENO))
    fprintf(stderr, "[%zu prompt tokens, %zu generated in %.2fs (%.1f tokens/s), stopped: %s]\n", n,
            res.n_tokens, dt, dt > 0 ? (double)res.n_tokens / dt : 0.0, gpt_stop_name(res.reason));
  if (trace_prefix) {
    char path[4096];
    /* rows: the prompt's positions, then one per generated token but the first (whose
     * logits are the prompt's last row) */
    size_t rows = n + (res.n_tokens ? res.n_tokens - 1 : 0);
    if (res.n_tokens) memmove(t.rows + n * V, t.rows + (n + 1) * V, (res.n_tokens - 1) * V * sizeof(float));
    snprintf(path, sizeof path, "%s.npy", trace_prefix);
    cli_write_npy(path, "<f4", t.rows, sizeof(float), rows, V);
    snprintf(path, sizeof path, "%s.json", trace_prefix);
    FILE *f = fopen(path, "w");
    if (!f) cli_die("gpt generate: cannot write %s", path);
    fputs("{", f);
    write_json_ids(f, "prompt_ids", ids, n);
    fputs(", ", f);
    write_json_ids(f, "generated_ids", gpt_gen_tokens(g), res.n_tokens);
    fprintf(f, ", \"stop\": \"%s\"}\n", gpt_stop_name(res.reason));
    if (fclose(f)) cli_die("gpt generate: cannot write %s", path);
  }
  free(t.rows);
  free(ids);
  teardown(&su, &c);
  return 0;
}

/* ---- chat -------------------------------------------------------------------------------- */

typedef struct chat {
  gpt_bpe *bpe;
  size_t V;
  int explain;  /* this turn prints its steps */
  size_t step;
  char *reply;  /* the reply's text, when explaining (printed after the steps) */
  size_t reply_len, reply_cap;
} chat;

static int chat_text(void *ctx, const char *text, size_t len) {
  chat *c = ctx;
  if (!c->explain) return write_text(NULL, text, len);
  if (c->reply_len + len + 1 > c->reply_cap) {
    size_t cap = c->reply_cap ? c->reply_cap : 256;
    while (cap < c->reply_len + len + 1) cap *= 2;
    char *p = realloc(c->reply, cap);
    if (!p) cli_die("out of memory");
    c->reply = p;
    c->reply_cap = cap;
  }
  memcpy(c->reply + c->reply_len, text, len);
  c->reply_len += len;
  return 0;
}

static void chat_step(void *ctx, int32_t id, const float *logits) {
  chat *c = ctx;
  if (!c->explain) return;
  int32_t top[5];
  float p[5];
  gpt_top_probs(logits, c->V, 5, top, p);
  printf("  step %zu: ", ++c->step);
  print_token(stdout, c->bpe, id);
  printf(" (id %d) <- top 5:", (int)id);
  for (int i = 0; i < 5 && (size_t)i < c->V; i++) {
    printf(" ");
    print_token(stdout, c->bpe, top[i]);
    printf(" %.3f", p[i]);
  }
  printf("\n");
  fflush(stdout);
}

static const char *CHAT_USAGE =
    "usage: quiver gpt chat --model DIR [options]\n"
    "\n"
    "A REPL over a GPT-2 model folder. Each line you type is fed after the conversation so far\n"
    "(a newline between turns) and the model continues it; the reply streams as it is sampled.\n"
    "Options as for `quiver gpt generate` (--max-tokens default 64). Commands:\n"
    "  /temp X      set the temperature (0 is greedy)\n"
    "  /tokens N    set the reply length in tokens\n"
    "  /reset       forget the conversation\n"
    "  /explain     toggle explain mode: the tokens of your input, and at each generated step the\n"
    "               token chosen and the five likeliest next tokens with their probabilities;\n"
    "               /explain TEXT explains one turn only\n"
    "  /help        this list\n"
    "  /quit        leave (so does end of input)\n";

static const char *CHAT_HELP =
    "/temp X  /tokens N  /reset  /explain [TEXT]  /help  /quit  (anything else is fed to the model)\n";

int cmd_gpt_chat(int argc, char **argv) {
  gen_cli c = {0};
  argc = take_stops(argc, argv, &c);
  cli_opt opts[] = {{"model", &c.model, NULL},
                    SAMPLING_OPTS(c),
                    {NULL, NULL, NULL}};
  cli_parse(argc, argv, opts, NULL, 0, CHAT_USAGE);
  if (!c.model) cli_die("gpt chat: --model DIR is required");
  size_t max_tokens = c.max_tokens ? (size_t)cli_int(c.max_tokens, "--max-tokens", 1, 1 << 24) : 64;
  gen_setup su = {0};
  setup(&su, &c, "gpt chat");
  gpt_bpe *bpe = su.bpe;
  gpt_sampler *s = su.s;
  gpt_gen *g = su.g;
  chat ch = {.bpe = bpe, .V = su.V};
  qv_error err = {0};
  const gpt_config *cfg = gpt_infer_config_of(su.m);
  printf("quiver gpt chat: %d layers, %d heads, width %d, context %d, vocabulary %d. /help for commands.\n",
         cfg->n_layer, cfg->n_head, cfg->n_embd, cfg->n_ctx, cfg->vocab_size);

  int explain_all = 0;
  char *line = NULL;
  size_t cap = 0;
  for (;;) {
    fputs("> ", stdout);
    fflush(stdout);
    ssize_t got = getline(&line, &cap, stdin);
    if (got < 0) {
      fputc('\n', stdout);
      break;
    }
    while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
    char *text = line;
    ch.explain = explain_all;
    if (line[0] == '/') {
      char *arg = strchr(line, ' ');
      if (arg) {
        *arg++ = 0;
        while (*arg == ' ') arg++;
      }
      if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) break;
      if (!strcmp(line, "/help")) {
        fputs(CHAT_HELP, stdout);
      } else if (!strcmp(line, "/reset")) {
        gpt_gen_reset(g);
        puts("(conversation cleared)");
      } else if (!strcmp(line, "/temp") || !strcmp(line, "/tokens")) {
        char *end = NULL;
        double v = arg && *arg ? strtod(arg, &end) : -1;
        int ok = end && !*end;
        if (!strcmp(line, "/temp")) {
          gpt_sample_params p = *gpt_sampler_params(s);
          p.temperature = (float)v;
          if (ok && !gpt_sampler_set(s, &p, &err))
            printf("(temperature %g)\n", v);
          else
            puts("usage: /temp X with X >= 0 (0 is greedy)");
        } else if (ok && v >= 1 && v <= (1 << 24) && v == (double)(long)v) {
          max_tokens = (size_t)v;
          printf("(replies of up to %zu tokens)\n", max_tokens);
        } else {
          puts("usage: /tokens N with N >= 1");
        }
      } else if (!strcmp(line, "/explain")) {
        if (arg && *arg) {
          ch.explain = 1;
          text = arg;
        } else {
          explain_all = !explain_all;
          printf("(explain %s)\n", explain_all ? "on" : "off");
        }
      } else {
        printf("unknown command %s; %s", line, CHAT_HELP);
      }
      if (text == line) continue;
    }
    if (!*text) continue;

    /* turns are separated by a newline in the conversation */
    size_t tlen = strlen(text);
    char *fed = malloc(tlen + 2);
    if (!fed) cli_die("out of memory");
    size_t off = gpt_gen_len(g) ? 1 : 0;
    fed[0] = '\n';
    memcpy(fed + off, text, tlen + 1);
    int32_t *ids = NULL;
    size_t n = 0;
    cli_check(gpt_bpe_encode(bpe, fed, tlen + off, &ids, &n), NULL, "tokenizer");
    free(fed);
    if (ch.explain) {
      printf("input: %zu tokens:", n);
      for (size_t i = 0; i < n; i++) {
        printf(" ");
        print_token(stdout, bpe, ids[i]);
        printf("=%d", (int)ids[i]);
      }
      printf("\n");
    }
    ch.step = 0;
    ch.reply_len = 0;
    gpt_gen_opts o = {.max_tokens = max_tokens,
                      .stops = (const char *const *)c.stops,
                      .n_stops = c.n_stops,
                      .eot = gpt_bpe_eot(bpe),
                      .token_bytes = token_bytes,
                      .tok = bpe,
                      .on_text = chat_text,
                      .on_step = chat_step,
                      .ctx = &ch};
    gpt_gen_result res;
    qv_status st = gpt_gen_run(g, s, ids, n, &o, &res, &err);
    free(ids);
    if (st) {
      /* a turn that cannot run (too long for the context) is reported; the REPL goes on */
      printf("error: %s\n", err.msg);
      continue;
    }
    if (ch.explain) {
      printf("reply: ");
      fwrite(ch.reply ? ch.reply : "", 1, ch.reply_len, stdout);
      printf("\n[%zu tokens, stopped: %s]\n", res.n_tokens, gpt_stop_name(res.reason));
    } else {
      fputc('\n', stdout);
    }
    fflush(stdout);
  }
  free(line);
  free(ch.reply);
  teardown(&su, &c);
  return 0;
}
