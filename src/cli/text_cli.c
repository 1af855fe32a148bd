/* Shared pieces of the text commands (see text_cli.h). */
#include "cli/text_cli.h"

#include <string.h>

qv_model *tcli_load_model(const char *name) {
  qv_model *m;
  qv_error err = {0};
  qv_status st = qv_model_load(&m, name, &err);
  if (st == QV_NOTFOUND && !strchr(name, '/'))
    cli_die("model %s is not in the model cache; run `quiver model pull %s` (%s)", name, name, err.msg);
  cli_check(st, &err, "loading the model");
  return m;
}

text_chunk_config tcli_chunk_config(const tcli_chunk_args *a, int max_tokens) {
  text_chunk_config c = {.kind = TEXT_CHUNK_STRUCTURE, .size = 200, .min = 64, .max = 254};
  long long lim = max_tokens > 2 ? max_tokens - 2 : 1000000;
  if (c.max > lim) c.max = (uint32_t)lim;
  if (c.size > lim) c.size = (uint32_t)lim;
  if (c.min > c.max) c.min = c.max;
  if (a->chunker && text_chunker_parse(&c.kind, a->chunker))
    cli_die("--chunker must be fixed, sentence, structure or adaptive, got \"%s\"", a->chunker);
  char what[96];
  snprintf(what, sizeof what, "--size (the model takes %lld tokens)", lim);
  if (a->size) c.size = (uint32_t)cli_int(a->size, what, 1, lim);
  snprintf(what, sizeof what, "--max (the model takes %lld tokens)", lim);
  if (a->max) c.max = (uint32_t)cli_int(a->max, what, 1, lim);
  if (a->min) c.min = (uint32_t)cli_int(a->min, "--min", 1, lim);
  if (c.kind == TEXT_CHUNK_ADAPTIVE && c.min > c.max) cli_die("--min (%u) is over --max (%u)", c.min, c.max);
  if (a->overlap) {
    c.overlap = cli_double(a->overlap, "--overlap");
    if (!(c.overlap >= 0 && c.overlap <= 0.9)) cli_die("--overlap must be in 0..0.9, got \"%s\"", a->overlap);
  }
  return c;
}
