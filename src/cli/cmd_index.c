/* quiver index build|info COLLECTION: the collection's HNSW index. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "store/collection.h"

static const char usage[] =
    "usage: quiver index build COLLECTION\n"
    "       quiver index info COLLECTION\n"
    "build: builds the HNSW graph over every point now (whatever the collection's size),\n"
    "       saves it beside the collection and prints the index's figures.\n"
    "info:  prints them: points, indexed points, tombstones, whether the graph was loaded\n"
    "       from its file, the parameters and the memory of vectors, graph and int8 codes.\n"
    "options:\n"
    "  --data-dir DIR   data directory (default ./quiver-data)\n";

static void print_index(qv_collection *c, int built) {
  qv_collection_config cfg;
  qv_collection_stats s;
  qv_collection_config_get(c, &cfg);
  qv_collection_stats_get(c, &s);
  const char *source = built ? "built" : collection_index_loaded(c) ? "file" : s.graph_bytes ? "built" : "none";
  printf("{\"points\":%zu,\"indexed\":%zu,\"tombstones\":%zu,\"indexing\":%s,\"graph\":\"%s\","
         "\"m\":%u,\"ef_construct\":%u,\"full_scan_threshold\":%u,\"quantization\":%s,"
         "\"vectors_bytes\":%zu,\"graph_bytes\":%zu,\"quantized_bytes\":%zu}\n",
         s.points, s.indexed, s.tombstones, s.indexing ? "true" : "false", source, cfg.hnsw.m,
         cfg.hnsw.ef_construct, cfg.hnsw.full_scan_threshold,
         cfg.quant.type == QV_QUANT_INT8 ? "\"int8\"" : "null", s.vector_bytes, s.graph_bytes,
         s.quantized_bytes);
}

int cmd_index(int argc, char **argv) {
  const char *data_dir = NULL, *pos[2] = {0};
  cli_opt opts[] = {{"data-dir", &data_dir, NULL}, {0}};
  if (cli_parse(argc, argv, opts, pos, 2, usage) != 2) {
    fputs(usage, stderr);
    return 2;
  }
  int build = strcmp(pos[0], "build") == 0;
  if (!build && strcmp(pos[0], "info") != 0) cli_die("index: unknown subcommand \"%s\" (see --help)", pos[0]);
  qv_db *db = cli_open_db(data_dir);
  qv_collection *c = cli_open_collection(db, pos[1]);
  qv_error err = {0};
  if (build) cli_check(collection_index_build(c, &err), &err, "index build");
  print_index(c, build);
  qv_db_close(db);
  return 0;
}
