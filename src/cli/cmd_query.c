/* quiver query: questions in, ranked chunks with their citations out. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/text_cli.h"
#include "text/ingest.h"
#include "text/retrieve.h"

static const char usage[] =
    "usage: quiver query TEXT --collection NAME [options]\n"
    "       quiver query --queries FILE --collection NAME [options]\n"
    "Embeds TEXT with the collection's model, searches (top 50 candidates), optionally\n"
    "fuses BM25 keyword matches and reranks with a cross-encoder, and prints the top k\n"
    "chunks with score, source, heading path, line span and text.\n"
    "options:\n"
    "  --collection NAME  the collection (required)\n"
    "  --k N              results (default 5)\n"
    "  --hybrid           fuse dense and BM25 keyword results (reciprocal rank fusion)\n"
    "  --rerank MODEL     rerank the candidates with this cross-encoder\n"
    "  --candidates N     candidates per retriever before fusion/reranking (default 50)\n"
    "  --rerank-top N     rerank only the best N candidates (default: all)\n"
    "  --filter JSON      only chunks whose payload matches this Qdrant filter\n"
    "                     (e.g. '{\"must\":[{\"key\":\"source\",\"match\":{\"value\":\"a.md\"}}]}')\n"
    "  --queries FILE     one query per line ('-' for stdin); one JSON line per query\n"
    "  --json             print JSON: {query, mode, results: [...], cache: {...}}\n"
    "  --data-dir DIR     data directory\n";

static json_t *result_json(const text_hits *h, const char *query, const char *mode, text_retriever *r) {
  json_t *res = json_array();
  for (size_t i = 0; i < h->n; i++) {
    const text_hit *x = &h->items[i];
    char id[40];
    qv_point_id_format(&x->id, id);
    json_t *p = x->payload ? json_loads(x->payload, 0, NULL) : NULL;
    json_t *span = json_object_get(p, "span");
    json_t *o = json_pack("{s:i,s:s,s:f,s:O?,s:O?,s:O?,s:O?,s:O?}", "rank", (int)i + 1, "id", id, "score",
                          (double)x->score, "source", json_object_get(p, "source"), "headings",
                          json_object_get(p, "headings"), "lines", json_object_get(span, "lines"), "chunk_index",
                          json_object_get(p, "chunk_index"), "text", json_object_get(p, "text"));
    if (x->dense_rank) json_object_set_new(o, "dense_rank", json_integer(x->dense_rank));
    if (x->keyword_rank) json_object_set_new(o, "keyword_rank", json_integer(x->keyword_rank));
    if (!strcmp(mode, "reranked") || !strcmp(mode, "hybrid+reranked"))
      json_object_set_new(o, "logit", json_real(x->rerank_logit));
    json_array_append_new(res, o);
    json_decref(p);
  }
  uint64_t hits, misses;
  text_retriever_cache_counters(r, &hits, &misses);
  return json_pack("{s:s,s:s,s:o,s:b,s:{s:I,s:I}}", "query", query, "mode", mode, "results", res, "cached",
                   h->cached, "cache", "hits", (json_int_t)hits, "misses", (json_int_t)misses);
}

static void print_human(const text_hits *h) {
  if (!h->n) puts("(no results)");
  for (size_t i = 0; i < h->n; i++) {
    json_t *p = json_loads(h->items[i].payload, 0, NULL);
    json_t *lines = json_object_get(json_object_get(p, "span"), "lines");
    printf("%zu. %.4f  %s:%lld-%lld", i + 1, (double)h->items[i].score,
           json_string_value(json_object_get(p, "source")) ? json_string_value(json_object_get(p, "source")) : "?",
           (long long)json_integer_value(json_array_get(lines, 0)), (long long)json_integer_value(json_array_get(lines, 1)));
    json_t *hd = json_object_get(p, "headings");
    for (size_t j = 0; j < json_array_size(hd); j++)
      printf("%s%s", j ? " > " : "  ", json_string_value(json_array_get(hd, j)));
    const char *t = json_string_value(json_object_get(p, "text"));
    printf("\n   ");
    for (size_t j = 0; t && t[j] && j < 400; j++) putchar(t[j] == '\n' ? ' ' : t[j]);
    printf("%s\n", t && strlen(t) > 400 ? "..." : "");
    json_decref(p);
  }
}

int cmd_query(int argc, char **argv) {
  const char *coll = NULL, *k_s = NULL, *rerank = NULL, *cand_s = NULL, *top_s = NULL, *queries = NULL, *data_dir = NULL,
             *filter = NULL;
  int hybrid = 0, json = 0;
  const char *pos[1];
  cli_opt opts[] = {{"collection", &coll, NULL}, {"k", &k_s, NULL}, {"hybrid", NULL, &hybrid},
                    {"rerank", &rerank, NULL}, {"candidates", &cand_s, NULL}, {"rerank-top", &top_s, NULL}, {"queries", &queries, NULL},
                    {"filter", &filter, NULL}, {"json", NULL, &json}, {"data-dir", &data_dir, NULL}, {0}};
  int npos = cli_parse(argc, argv, opts, pos, 1, usage);
  if (!coll) cli_die("query: --collection is required");
  if (!npos && !queries) cli_die("query: give TEXT or --queries FILE (see --help)");
  if (npos && queries) cli_die("query: give TEXT or --queries FILE, not both");
  text_query q = {0};
  q.k = k_s ? (size_t)cli_int(k_s, "--k", 1, 1000) : 5;
  q.candidates = cand_s ? (size_t)cli_int(cand_s, "--candidates", 1, 10000) : 0;
  q.rerank_top = top_s ? (size_t)cli_int(top_s, "--rerank-top", 1, 10000) : 0;
  q.hybrid = hybrid;
  qv_filter *qf = cli_filter(filter);
  q.filter = qf;
  qv_db *db = cli_open_db(data_dir);
  qv_collection *c = cli_open_collection(db, coll);
  qv_collection_config cfg;
  qv_collection_config_get(c, &cfg);
  qv_model *m = tcli_load_model(cfg.model[0] ? cfg.model : TEXT_DEFAULT_MODEL);
  qv_model *rr = NULL;
  if (rerank) {
    rr = tcli_load_model(rerank);
    qv_model_info ri;
    qv_model_info_get(rr, &ri);
    if (ri.kind != QV_MODEL_RERANKER) cli_die("%s is not a cross-encoder (reranker)", ri.name);
    q.reranker = rr;
  }
  const char *mode = hybrid ? (rr ? "hybrid+reranked" : "hybrid") : (rr ? "reranked" : "dense");
  qv_error err = {0};
  text_retriever *r;
  cli_check(text_retriever_open(&r, c, m, 1024, &err), &err, "query");
  FILE *in = NULL;
  if (queries && !(in = strcmp(queries, "-") ? fopen(queries, "r") : stdin)) cli_die("%s: cannot open", queries);
  char *line = NULL;
  size_t lcap = 0;
  for (;;) {
    const char *text;
    if (in) {
      ssize_t len = getline(&line, &lcap, in);
      if (len < 0) break;
      while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
      if (!len) continue;
      text = line;
    } else {
      text = pos[0];
    }
    q.text = text;
    text_hits h;
    cli_check(text_retrieve(r, &q, &h, &err), &err, "query");
    if (json || in) {
      json_t *o = result_json(&h, text, mode, r);
      char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
      if (!s) cli_die("out of memory");
      puts(s);
      free(s);
      json_decref(o);
    } else {
      print_human(&h);
    }
    text_hits_free(&h);
    if (!in) break;
  }
  free(line);
  if (in && in != stdin) fclose(in);
  text_retriever_free(r);
  qv_filter_free(qf);
  qv_model_free(rr);
  qv_model_free(m);
  qv_db_close(db);
  return 0;
}
