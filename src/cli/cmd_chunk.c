/* quiver chunk: shows how a document is cut, chunk by chunk, with statistics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/text_cli.h"
#include "text/ingest.h"

static const char usage[] =
    "usage: quiver chunk FILE [options]\n"
    "Cuts FILE (.md .mdx .txt .rst .html) as `quiver ingest` would and prints each chunk\n"
    "with its token count, source lines and heading path, then the count and the\n"
    "min/mean/max token sizes. Tokens are the embedding model's own.\n"
    "options:\n" TCLI_CHUNK_USAGE
    "  --model NAME|DIR   the model whose tokenizer counts (default all-MiniLM-L6-v2)\n"
    "  --json             one JSON object per chunk, then {\"stats\": ...}\n";

int cmd_chunk(int argc, char **argv) {
  const char *model = TEXT_DEFAULT_MODEL, *data_dir = NULL;
  int json = 0;
  tcli_chunk_args ca = {0};
  const char *pos[1];
  cli_opt opts[] = {TCLI_CHUNK_OPTS(ca), {"model", &model, NULL}, {"json", NULL, &json},
                    {"data-dir", &data_dir, NULL}, {0}};
  if (cli_parse(argc, argv, opts, pos, 1, usage) != 1) cli_die("chunk: give one FILE (see --help)");
  const char *path = pos[0];
  int f = text_format_for_path(path);
  if (f < 0) cli_die("%s: not a document (.md .mdx .txt .rst .html)", path);
  FILE *fp = fopen(path, "rb");
  if (!fp) cli_die("%s: cannot open", path);
  size_t cap = 1 << 16, n = 0, r;
  char *src = malloc(cap);
  while (src && (r = fread(src + n, 1, cap - n, fp)) > 0)
    if ((n += r) == cap) src = realloc(src, cap *= 2);
  if (!src || ferror(fp)) cli_die("%s: read error", path);
  fclose(fp);

  qv_model *m = tcli_load_model(model);
  qv_model_info info;
  qv_model_info_get(m, &info);
  text_chunk_config cfg = tcli_chunk_config(&ca, info.max_tokens);
  qv_error err = {0};
  text_doc d;
  cli_check(text_parse(&d, src, n, (text_format)f, &err), &err, path);
  text_chunk *ch;
  size_t nc;
  cli_check(text_chunk_doc(&d, src, n, &cfg, text_count_model, m, &ch, &nc, &err), &err, path);
  uint32_t mn = nc ? UINT32_MAX : 0, mx = 0;
  double sum = 0;
  for (size_t i = 0; i < nc; i++) {
    const text_chunk *k = &ch[i];
    mn = k->tokens < mn ? k->tokens : mn;
    mx = k->tokens > mx ? k->tokens : mx;
    sum += k->tokens;
    json_t *h = text_block_headings(&d, k->block);
    if (json) {
      json_t *o = json_pack("{s:I,s:I,s:o,s:{s:[I,I],s:[I,I]},s:s%,s:b}", "chunk_index", (json_int_t)i, "tokens",
                            (json_int_t)k->tokens, "headings", h, "span", "bytes", (json_int_t)k->src_start,
                            (json_int_t)k->src_end, "lines", (json_int_t)k->line_start, (json_int_t)k->line_end,
                            "text", d.text + k->start, k->end - k->start, "is_code", k->is_code);
      char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
      if (!s) cli_die("out of memory");
      puts(s);
      free(s);
      json_decref(o);
    } else {
      printf("--- chunk %zu: %u tokens, lines %zu-%zu, bytes %zu-%zu%s", i, k->tokens, k->line_start, k->line_end,
             k->src_start, k->src_end, k->is_code ? ", code" : "");
      for (size_t j = 0; j < json_array_size(h); j++)
        printf("%s%s", j ? " > " : "\n    ", json_string_value(json_array_get(h, j)));
      printf("\n%.*s\n", (int)(k->end - k->start), d.text + k->start);
      json_decref(h);
    }
  }
  double mean = nc ? sum / (double)nc : 0;
  if (json)
    printf("{\"stats\":{\"chunks\":%zu,\"chunker\":\"%s\",\"tokens\":{\"min\":%u,\"mean\":%.2f,\"max\":%u}}}\n", nc,
           text_chunker_name(cfg.kind), mn, mean, mx);
  else
    printf("--- %zu chunks (%s); tokens min %u, mean %.1f, max %u\n", nc, text_chunker_name(cfg.kind), mn, mean, mx);
  free(ch);
  text_doc_free(&d);
  free(src);
  qv_model_free(m);
  return 0;
}
