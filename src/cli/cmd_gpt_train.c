/* quiver gpt train | list: train the small GPT on documents, and show its checkpoints. */
#define _GNU_SOURCE /* sigaction */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/text_cli.h"
#include "gpt/ckpt.h"
#include "gpt/train.h"

static const char train_usage[] =
    "usage: quiver gpt train --data PATH [PATH...] --out DIR [options]\n"
    "       quiver gpt train --resume CKPT --out DIR [--steps N] [--data PATH...]\n"
    "Trains a GPT-2 on the documents under PATH (.md .mdx .txt .rst .html; folders are\n"
    "walked). Text is cleaned and chunked as `quiver ingest` does, encoded with the BPE and\n"
    "packed into context-length windows with <|endoftext|> between chunks; a share of the\n"
    "chunks is held out for the validation loss. Checkpoints (Hugging Face GPT-2 folders)\n"
    "go to DIR/step-NNNNNN. With --resume, the model, tokenizer, chunking and optimizer\n"
    "options come from the checkpoint and training continues exactly where it stopped.\n"
    "options:\n"
    "  --tokenizer F      a tokenizer.json (or GPT-2 folder) to use\n"
    "  --vocab-size N     else train a BPE of N tokens on the data (default 512)\n"
    "  --layers N         transformer blocks (default 4)\n"
    "  --heads N          attention heads (default 4)\n"
    "  --width N          embedding width, a multiple of heads (default 128)\n"
    "  --context N        context length in tokens (default 128)\n"
    "  --batch N          sequences per micro-batch (default 8)\n"
    "  --accum N          micro-batches per step (gradient accumulation, default 1)\n"
    "  --steps N          optimizer steps (default 1000)\n"
    "  --lr X             peak learning rate (default 6e-4); --min-lr X (default lr/10)\n"
    "  --warmup N         linear warmup steps before cosine decay (default 100)\n"
    "  --weight-decay X   AdamW decoupled weight decay on 2-D weights (default 0.1)\n"
    "  --clip X           global gradient-norm clip, 0 for none (default 1.0)\n"
    "  --seed N           weights and batch order (default 1337)\n"
    "  --eval-every N     validation loss every N steps (default 100)\n"
    "  --eval-batches N   batches of held-out windows per validation (default 8)\n"
    "  --val-fraction X   share of chunks held out (default 0.05)\n"
    "  --save-every N     checkpoint every N steps (default: only at the end)\n"
    "  --log FILE         one JSON line per step: step, loss, lr, grad_norm, elapsed_s, val_loss\n"
    "  --gpu auto|on|off  train on the GPU when one works (auto, the default), require one\n"
    "                     (on), or stay on the CPU (off); a GPU that fails mid-run hands the\n"
    "                     run to the CPU from the last evaluation's state\n"
    "  --gpu-device N     which GPU (default 0)\n" TCLI_CHUNK_USAGE
    "Progress (step, loss, lr, tokens/s, ETA) shows on a terminal; a line per evaluation\n"
    "goes to stdout. Ctrl-C saves a checkpoint after the current step and stops.\n";

/* Ctrl-C: the run saves a checkpoint after the current step and stops (resume from it). */
static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}

typedef struct run_ctx {
  const char *out;
  FILE *log;
  int tty;
  double last_print;
  cli_progress tok;
} run_ctx;

static void fmt_eta(char *b, size_t n, double s) {
  if (!(s >= 0) || s > 1e8) snprintf(b, n, "?");
  else if (s >= 3600) snprintf(b, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
  else snprintf(b, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

static int on_step(void *c, const gpt_train_stats *s) {
  run_ctx *x = c;
  if (s->first) {
    printf("corpus: %zu documents, %zu chunks (%zu held out), %zu training / %zu validation tokens; "
           "model: %zu parameters; training on %s\n",
           s->ndocs, s->nchunks, s->nval_chunks, s->train_tokens, s->val_tokens, s->nparams, s->device);
    fflush(stdout);
  }
  if (x->log) {
    fprintf(x->log, "{\"step\":%ld,\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,\"elapsed_s\":%.6f", s->step,
            (double)s->loss, (double)s->lr, s->grad_norm, s->elapsed_s);
    if (isfinite(s->val_loss)) fprintf(x->log, ",\"val_loss\":%.9g", s->val_loss);
    if (s->saved) {
      json_t *p = json_string(s->saved);
      char *q = p ? json_dumps(p, JSON_ENCODE_ANY) : NULL;
      if (q) fprintf(x->log, ",\"saved\":%s", q);
      free(q);
      json_decref(p);
    }
    fputs("}\n", x->log);
    fflush(x->log);
  }
  char eta[32];
  fmt_eta(eta, sizeof eta, s->eta_s);
  double now = cli_now();
  if (x->tty && (now - x->last_print > 0.1 || s->step == s->steps)) {
    fprintf(stderr, "\r\033[Kstep %ld/%ld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s", s->step, s->steps,
            (double)s->loss, (double)s->lr, s->tokens_per_s, eta);
    x->last_print = now;
  }
  if (isfinite(s->val_loss) || s->saved) {
    if (x->tty) fputs("\r\033[K", stderr);
    printf("step %ld/%ld  loss %.4f", s->step, s->steps, (double)s->loss);
    if (isfinite(s->val_loss)) printf("  val %.4f", s->val_loss);
    printf("  lr %.2e  %.0f tok/s", (double)s->lr, s->tokens_per_s);
    if (s->saved) printf("  saved %s", s->saved);
    putchar('\n');
    fflush(stdout);
  }
  if (x->tty && s->step == s->steps) fputc('\n', stderr);
  if (interrupted) {
    if (x->tty) fputs("\r\033[K", stderr);
    printf("interrupted at step %ld: saved %s/step-%06ld (continue with --resume)\n", s->step, x->out, s->step);
    fflush(stdout);
  }
  return interrupted;
}

static void on_tok(void *c, size_t done, size_t total) {
  run_ctx *x = c;
  if (!x->tok.label) cli_progress_start(&x->tok, "tokenizer", "merges", total);
  cli_progress_update(&x->tok, done);
  if (done == total) cli_progress_end(&x->tok, done);
}

int cmd_gpt_train(int argc, char **argv) {
  const char *data = NULL, *out = NULL, *tok = NULL, *vocab = NULL, *resume = NULL, *layers = NULL, *heads = NULL,
             *width = NULL, *context = NULL, *batch = NULL, *accum = NULL, *steps = NULL, *lr = NULL,
             *min_lr = NULL, *warmup = NULL, *wd = NULL, *clip = NULL, *seed = NULL, *eval_every = NULL,
             *eval_batches = NULL, *val_frac = NULL, *save_every = NULL, *log = NULL, *gpu = NULL,
             *gpu_dev = NULL;
  tcli_chunk_args ca = {0};
  cli_opt opts[] = {{"data", &data, NULL},         {"out", &out, NULL},
                    {"tokenizer", &tok, NULL},     {"vocab-size", &vocab, NULL},
                    {"resume", &resume, NULL},     {"layers", &layers, NULL},
                    {"heads", &heads, NULL},       {"width", &width, NULL},
                    {"context", &context, NULL},   {"batch", &batch, NULL},
                    {"accum", &accum, NULL},       {"steps", &steps, NULL},
                    {"lr", &lr, NULL},             {"min-lr", &min_lr, NULL},
                    {"warmup", &warmup, NULL},     {"weight-decay", &wd, NULL},
                    {"clip", &clip, NULL},         {"seed", &seed, NULL},
                    {"eval-every", &eval_every, NULL}, {"eval-batches", &eval_batches, NULL},
                    {"val-fraction", &val_frac, NULL}, {"save-every", &save_every, NULL},
                    {"log", &log, NULL},           {"gpu", &gpu, NULL},
                    {"gpu-device", &gpu_dev, NULL}, TCLI_CHUNK_OPTS(ca),
                    {0}};
  const char *pos[256];
  int npos = cli_parse(argc, argv, opts, pos, 255, train_usage);
  if (!out) cli_die("gpt train: --out DIR is required (see --help)");
  const char *paths[257];
  size_t np = 0;
  if (data) paths[np++] = data;
  for (int i = 0; i < npos; i++) paths[np++] = pos[i];
  if (!np && !resume) cli_die("gpt train: --data PATH is required (see --help)");
  if (resume && (tok || vocab || layers || heads || width || context || ca.chunker || ca.size || ca.overlap))
    cli_die("gpt train: with --resume the model, tokenizer and chunking come from the checkpoint");

  gpt_train_opts o;
  gpt_train_defaults(&o);
  o.data = paths;
  o.ndata = np;
  o.out = out;
  o.tokenizer = tok;
  o.resume = resume;
  if (tok && vocab) cli_die("gpt train: give --tokenizer or --vocab-size, not both");
  if (vocab) o.vocab_size = (size_t)cli_int(vocab, "--vocab-size", 258, 1 << 20);
  if (layers) o.model.n_layer = (int)cli_int(layers, "--layers", 1, 256);
  if (heads) o.model.n_head = (int)cli_int(heads, "--heads", 1, 256);
  if (width) o.model.n_embd = (int)cli_int(width, "--width", 1, 16384);
  if (context) o.model.n_ctx = (int)cli_int(context, "--context", 2, 16384);
  if (o.model.n_embd % o.model.n_head) cli_die("--width %d is not a multiple of --heads %d", o.model.n_embd, o.model.n_head);
  if (batch) o.batch = (int)cli_int(batch, "--batch", 1, 1 << 16);
  if (accum) o.accum = (int)cli_int(accum, "--accum", 1, 1 << 16);
  /* with --resume, 0 means "the checkpoint's" */
  if (resume) o.steps = 0;
  if (steps) o.steps = (long)cli_int(steps, "--steps", 1, 1LL << 40);
  if (lr) o.lr = (float)cli_double(lr, "--lr");
  if (min_lr) o.min_lr = (float)cli_double(min_lr, "--min-lr");
  if (warmup) o.warmup = (long)cli_int(warmup, "--warmup", 0, 1LL << 40);
  if (wd) o.weight_decay = (float)cli_double(wd, "--weight-decay");
  if (clip) o.clip = (float)cli_double(clip, "--clip");
  if (seed) o.seed = (uint64_t)cli_int(seed, "--seed", 0, 1LL << 62);
  if (eval_every) o.eval_every = (long)cli_int(eval_every, "--eval-every", 0, 1LL << 40);
  if (eval_batches) o.eval_batches = (int)cli_int(eval_batches, "--eval-batches", 1, 1 << 20);
  if (val_frac) o.val_fraction = cli_double(val_frac, "--val-fraction");
  if (save_every) o.save_every = (long)cli_int(save_every, "--save-every", 0, 1LL << 40);
  if (!(o.lr > 0)) cli_die("--lr must be positive");
  if (!(o.val_fraction >= 0 && o.val_fraction < 1)) cli_die("--val-fraction must be in [0, 1)");
  if (!(o.weight_decay >= 0) || !(o.clip >= 0)) cli_die("--weight-decay and --clip must be >= 0");
  if (!resume) {
    o.chunk = tcli_chunk_config(&ca, 0);
  }
  if (resume && (lr || min_lr || warmup || wd || clip || seed || batch || accum || val_frac || eval_batches))
    cli_die("gpt train: with --resume the optimizer and validation options come from the checkpoint (only "
            "--steps, --data, --eval-every, --save-every, --log may change)");

  run_ctx x = {0};
  x.out = out;
  x.tty = isatty(2);
  struct sigaction sa = {0};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  if (log && !(x.log = fopen(log, "w"))) cli_die("%s: cannot open for writing", log);
  o.on_step = on_step;
  o.on_tok = on_tok;
  o.ctx = &x;
  qv_error err = {0};
  cli_check(cli_gpu_setup(gpu, gpu_dev, &err), &err, "gpt train");
  qv_status st = gpt_train_run(&o, &err);
  if (x.log && fclose(x.log)) cli_die("%s: write error", log);
  cli_check(st, &err, "gpt train");
  return 0;
}

static const char list_usage[] =
    "usage: quiver gpt list [DIR] [--json]\n"
    "Lists the checkpoints in DIR (default .): DIR itself and its subfolders that hold a\n"
    "config.json, by step, with their size, losses and time; * marks the best (lowest\n"
    "validation loss).\n";

static void print_loss(double v) {
  if (isfinite(v)) printf("  %8.4f", v);
  else printf("  %8s", "-");
}

int cmd_gpt_list(int argc, char **argv) {
  int json = 0;
  const char *pos[1] = {"."};
  cli_opt opts[] = {{"json", NULL, &json}, {0}};
  cli_parse(argc, argv, opts, pos, 1, list_usage);
  gpt_ckpt_entry *e = NULL;
  size_t n = 0;
  long best = -1;
  qv_error err = {0};
  cli_check(gpt_ckpt_list(pos[0], &e, &n, &best, &err), &err, "gpt list");
  if (!json)
    printf("  %-40s %8s %10s %10s %10s  %-8s  %s\n", "checkpoint", "step", "params", "train", "val", "shape",
           "time");
  for (size_t i = 0; i < n; i++) {
    const gpt_ckpt_entry *k = &e[i];
    if (json) {
      /* through jansson: folder names and timestamps may hold quotes or backslashes */
      json_t *o = json_pack("{s:s,s:I,s:I,s:i,s:i,s:i,s:i,s:i,s:I,s:s,s:b}", "dir", k->dir, "step",
                            (json_int_t)k->meta.step, "params", (json_int_t)k->nparams, "n_layer", k->cfg.n_layer,
                            "n_head", k->cfg.n_head, "n_embd", k->cfg.n_embd, "n_ctx", k->cfg.n_ctx, "vocab_size",
                            k->cfg.vocab_size, "tokens_seen", (json_int_t)k->meta.tokens_seen, "timestamp",
                            k->meta.timestamp, "best", (long)i == best);
      if (o && isfinite(k->meta.train_loss)) json_object_set_new(o, "train_loss", json_real(k->meta.train_loss));
      if (o && isfinite(k->meta.val_loss)) json_object_set_new(o, "val_loss", json_real(k->meta.val_loss));
      char *line = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
      if (!line) cli_die("out of memory");
      puts(line);
      free(line);
      json_decref(o);
      continue;
    }
    char shape[48];
    snprintf(shape, sizeof shape, "%dx%dx%d", k->cfg.n_layer, k->cfg.n_head, k->cfg.n_embd);
    printf("%c %-40s %8ld %10zu", (long)i == best ? '*' : ' ', k->dir, k->meta.step, k->nparams);
    print_loss(k->meta.train_loss);
    print_loss(k->meta.val_loss);
    printf("  %-8s  %s\n", shape, k->meta.timestamp);
  }
  gpt_ckpt_list_free(e, n);
  return 0;
}
