/* quiver gpt SUBCOMMAND: the small GPT (issue 8). Each subcommand lives in its own file
 * and is listed in `subs` below; this file only routes. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

typedef struct gpt_sub {
  const char *name;
  int (*fn)(int argc, char **argv);
  const char *help;
} gpt_sub;

static const gpt_sub subs[] = {
    {"tokenizer", cmd_gpt_tokenizer, "train|encode|decode  byte-level BPE tokenizers"},
    {"generate", cmd_gpt_generate, "continue a prompt with a GPT-2 model (streams to stdout)"},
    {"chat", cmd_gpt_chat, "a REPL over a GPT-2 model (/temp /tokens /reset /explain)"},
    {"train", cmd_gpt_train, "train a GPT-2 on documents (checkpoints, --resume)"},
    {"list", cmd_gpt_list, "show checkpoints with their metadata; * marks the best"},
    {NULL, NULL, NULL},
};

static void print_usage(FILE *f) {
  fputs("usage: quiver gpt <subcommand> [options]\n\nsubcommands:\n", f);
  for (const gpt_sub *s = subs; s->name; s++) fprintf(f, "  %-10s %s\n", s->name, s->help);
  fputs("\nEvery subcommand takes --help.\n", f);
}

int cmd_gpt(int argc, char **argv) {
  if (argc < 2) {
    print_usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    print_usage(stdout);
    return 0;
  }
  for (const gpt_sub *s = subs; s->name; s++)
    if (!strcmp(argv[1], s->name)) return s->fn(argc - 1, argv + 1);
  cli_die("gpt: unknown subcommand \"%s\" (see quiver gpt --help)", argv[1]);
}
