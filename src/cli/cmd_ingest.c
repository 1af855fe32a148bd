/* quiver ingest: documents from files and folders into a collection, incrementally. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/text_cli.h"
#include "text/ingest.h"

static const char usage[] =
    "usage: quiver ingest PATH... --collection NAME [options]\n"
    "Reads .md .mdx .txt .rst .html files (folders recursively), cuts them into chunks,\n"
    "embeds them and stores them with their source, heading path, span and text. Files\n"
    "whose content is unchanged since the last ingest are skipped; changed files have\n"
    "their chunks replaced. The collection is created when missing, for the model.\n"
    "options:\n"
    "  --collection NAME  the collection (required)\n"
    "  --model NAME|DIR   embedding model for a new collection (default: the collection's,\n"
    "                     else all-MiniLM-L6-v2)\n" TCLI_CHUNK_USAGE
    "  --sync             also delete the chunks of files under PATH that are gone\n"
    "  --batch N          chunks per embedding batch (default 64)\n"
    "  --data-dir DIR     data directory\n"
    "Prints progress on a terminal and one JSON summary line on stdout.\n";

/* The progress line: files, their rate and ETA, and the chunks/s that the files become. */
static void show(cli_progress *p, text_ingester *ing, size_t done, int final) {
  if (!p->tty || (!final && !cli_progress_due(p))) return;
  text_ingest_stats s;
  text_ingester_stats(ing, &s);
  double el = cli_now() - p->start;
  snprintf(p->note, sizeof p->note, "%.1f chunks/s", el > 0 ? (double)s.chunks / el : 0.0);
  if (final) cli_progress_end(p, done);
  else cli_progress_update(p, done);
}

int cmd_ingest(int argc, char **argv) {
  const char *coll = NULL, *model = NULL, *data_dir = NULL, *batch_s = NULL;
  int sync = 0;
  tcli_chunk_args ca = {0};
  static const char *pos[4096];
  cli_opt opts[] = {TCLI_CHUNK_OPTS(ca), {"collection", &coll, NULL}, {"model", &model, NULL},
                    {"sync", NULL, &sync}, {"batch", &batch_s, NULL}, {"data-dir", &data_dir, NULL}, {0}};
  int npos = cli_parse(argc, argv, opts, pos, 4096, usage);
  if (!npos) cli_die("ingest: give at least one PATH (see --help)");
  if (!coll) cli_die("ingest: --collection is required");
  size_t batch = batch_s ? (size_t)cli_int(batch_s, "--batch", 1, 4096) : 64;
  qv_error err = {0};
  char **files;
  size_t nfiles;
  cli_check(text_find_documents(pos, (size_t)npos, &files, &nfiles, &err), &err, "ingest");

  qv_db *db = cli_open_db(data_dir);
  qv_collection *c;
  qv_status st = qv_collection_open(db, coll, &c, &err);
  qv_model *m;
  qv_model_info info;
  if (st == QV_NOTFOUND) {
    m = tcli_load_model(model ? model : TEXT_DEFAULT_MODEL);
    qv_model_info_get(m, &info);
    if (info.kind != QV_MODEL_EMBEDDING) cli_die("%s is a reranker, not an embedding model", info.name);
    qv_collection_config cfg = {.size = (uint32_t)info.dims, .distance = QV_DIST_COSINE};
    snprintf(cfg.model, sizeof cfg.model, "%s", model ? model : TEXT_DEFAULT_MODEL);
    cli_check(qv_collection_create(db, coll, &cfg, &err), &err, "creating the collection");
    cli_check(qv_collection_open(db, coll, &c, &err), &err, "opening the collection");
  } else {
    cli_check(st, &err, "opening the collection");
    qv_collection_config cfg;
    qv_collection_config_get(c, &cfg);
    if (model && cfg.model[0] && strcmp(model, cfg.model))
      cli_die("collection %s embeds with %s; --model %s would mix two models", coll, cfg.model, model);
    m = tcli_load_model(cfg.model[0] ? cfg.model : model ? model : TEXT_DEFAULT_MODEL);
    qv_model_info_get(m, &info);
  }
  text_chunk_config cc = tcli_chunk_config(&ca, info.max_tokens);
  text_ingester *ing;
  cli_check(text_ingester_open(&ing, c, m, &cc, batch, &err), &err, "ingest");
  cli_progress p;
  cli_progress_start(&p, "ingest", "files", nfiles);
  for (size_t i = 0; i < nfiles; i++) {
    cli_check(text_ingester_add_file(ing, files[i], &err), &err, "ingest");
    show(&p, ing, i + 1, 0);
  }
  cli_check(text_ingester_flush(ing, &err), &err, "ingest");
  if (sync) cli_check(text_ingester_sync(ing, pos, (size_t)npos, &err), &err, "ingest --sync");
  show(&p, ing, nfiles, 1);
  double el = cli_now() - p.start;
  text_ingest_stats s;
  text_ingester_stats(ing, &s);
  printf("{\"collection\":\"%s\",\"files\":%zu,\"new\":%zu,\"changed\":%zu,\"unchanged\":%zu,\"removed\":%zu,"
         "\"chunks\":%zu,\"chunks_removed\":%zu,\"tokens\":%zu,\"seconds\":%.3f,\"files_per_s\":%.2f,"
         "\"chunks_per_s\":%.2f}\n",
         coll, s.files_seen, s.files_new, s.files_changed, s.files_unchanged, s.files_removed, s.chunks,
         s.chunks_removed, s.tokens, el, el > 0 ? s.files_seen / el : 0, el > 0 ? s.chunks / el : 0);
  text_ingester_free(ing);
  for (size_t i = 0; i < nfiles; i++) free(files[i]);
  free(files);
  qv_model_free(m);
  qv_db_close(db);
  return 0;
}
