/* quiver: the command line. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const char usage[] =
    "usage: quiver <command> [options]\n"
    "\n"
    "commands:\n"
    "  collection create|list|info|delete   manage collections\n"
    "  load COLLECTION FILE                 load vectors (.npy, .fvecs, .jsonl)\n"
    "  search COLLECTION                    exact top-k search\n"
    "  points get|upsert|delete|count|scroll  work with points\n"
    "  bench exact                          time exact search\n"
    "  embed [TEXT...]                      text to vectors with an embedding model\n"
    "  rerank QUERY DOC...                  score documents with a cross-encoder\n"
    "  model list                           the models in the cache\n"
    "  tokenize --tokenizer FILE            token ids, as Hugging Face tokenizers gives them\n"
    "  serve                                the HTTP server (Qdrant, OpenAI, TEI APIs)\n"
    "  index build|info COLLECTION          the collection's HNSW index\n"
    "  info                                 backends, devices and versions\n"
    "  ingest PATH... --collection NAME     documents into a collection\n"
    "  chunk FILE                           show how a file is chunked\n"
    "  query TEXT --collection NAME         search documents by text\n"
    "  version                              print the version\n"
    "\n"
    "Every command takes --help. Data lives in --data-dir (default ./quiver-data, or\n"
    "$QUIVER_DATA_DIR).\n";

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    fputs(usage, stdout);
    return 0;
  }
  if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
    printf("quiver %s\n", QV_VERSION);
    return 0;
  }
  if (!strcmp(cmd, "collection")) return cmd_collection(argc - 1, argv + 1);
  if (!strcmp(cmd, "load")) return cmd_load(argc - 1, argv + 1);
  if (!strcmp(cmd, "search")) return cmd_search(argc - 1, argv + 1);
  if (!strcmp(cmd, "points")) return cmd_points(argc - 1, argv + 1);
  if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
  if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
  if (!strcmp(cmd, "embed")) return cmd_embed(argc - 1, argv + 1);
  if (!strcmp(cmd, "rerank")) return cmd_rerank(argc - 1, argv + 1);
  if (!strcmp(cmd, "model")) return cmd_model(argc - 1, argv + 1);
  if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
  if (!strcmp(cmd, "index")) return cmd_index(argc - 1, argv + 1);
  if (!strcmp(cmd, "info")) return cmd_info(argc - 1, argv + 1);
  if (!strcmp(cmd, "ingest")) return cmd_ingest(argc - 1, argv + 1);
  if (!strcmp(cmd, "chunk")) return cmd_chunk(argc - 1, argv + 1);
  if (!strcmp(cmd, "query")) return cmd_query(argc - 1, argv + 1);
  if (!strcmp(cmd, "gpt")) return cmd_gpt(argc - 1, argv + 1);
  cli_die("unknown command \"%s\" (see quiver --help)", cmd);
}
