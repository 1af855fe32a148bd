/* quiver collection create|list|info|delete */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char usage[] =
    "usage: quiver collection create NAME --size N [--distance Cosine|Dot|Euclid|Manhattan] [index options]\n"
    "       quiver collection list\n"
    "       quiver collection info NAME\n"
    "       quiver collection delete NAME\n"
    "options:\n"
    "  --data-dir DIR   data directory (default ./quiver-data)\n"
    "  --size N         vector size, 1..65536 (create)\n"
    "  --distance D     Cosine (default), Dot, Euclid or Manhattan (create)\n"
    "index options (create; Qdrant's hnsw_config and quantization_config):\n"
    "  --m M                      links per node, 2..1024 (default 16)\n"
    "  --ef-construct N           beam width while building, 4..100000 (default 100)\n"
    "  --full-scan-threshold KB   below this many KB of vectors search is exact (default 10000)\n"
    "  --quantization int8        keep int8 codes of the vectors (scalar quantization)\n"
    "  --quantile Q               clip at this quantile before quantizing, (0.5, 1] (default 0.99)\n";

static void print_info(const char *name, qv_collection *c) {
  qv_collection_config cfg;
  qv_collection_stats s;
  qv_collection_config_get(c, &cfg);
  qv_collection_stats_get(c, &s);
  printf("{\"name\":\"%s\",\"status\":\"%s\",\"points_count\":%zu,\"indexed_vectors_count\":%zu,"
         "\"tombstones\":%zu,\"config\":{\"params\":{\"vectors\":{\"size\":%u,\"distance\":\"%s\"}},"
         "\"hnsw_config\":{\"m\":%u,\"ef_construct\":%u,\"full_scan_threshold\":%u},\"quantization_config\":",
         name, s.indexing ? "yellow" : "green", s.points, s.indexed, s.tombstones, cfg.size,
         qv_distance_name(cfg.distance), cfg.hnsw.m, cfg.hnsw.ef_construct, cfg.hnsw.full_scan_threshold);
  if (cfg.quant.type == QV_QUANT_INT8)
    printf("{\"scalar\":{\"type\":\"int8\",\"quantile\":%g,\"always_ram\":%s}}", (double)cfg.quant.quantile,
           cfg.quant.always_ram ? "true" : "false");
  else
    printf("null");
  printf("},\"memory\":{\"vectors_bytes\":%zu,\"graph_bytes\":%zu,\"quantized_bytes\":%zu}}\n", s.vector_bytes,
         s.graph_bytes, s.quantized_bytes);
}

int cmd_collection(int argc, char **argv) {
  const char *data_dir = NULL, *size = NULL, *distance = "Cosine", *pos[2] = {0}, *m = NULL, *efc = NULL,
             *fst = NULL, *quant = NULL, *quantile = NULL;
  cli_opt opts[] = {{"data-dir", &data_dir, NULL},
                    {"size", &size, NULL},
                    {"distance", &distance, NULL},
                    {"m", &m, NULL},
                    {"ef-construct", &efc, NULL},
                    {"full-scan-threshold", &fst, NULL},
                    {"quantization", &quant, NULL},
                    {"quantile", &quantile, NULL},
                    {0}};
  int npos = cli_parse(argc, argv, opts, pos, 2, usage);
  if (npos < 1) {
    fputs(usage, stderr);
    return 2;
  }
  const char *sub = pos[0], *name = pos[1];
  qv_error err = {0};
  if (strcmp(sub, "list") == 0) {
    qv_db *db = cli_open_db(data_dir);
    char **names;
    size_t n;
    cli_check(qv_collection_list(db, &names, &n, &err), &err, "listing collections");
    printf("{\"collections\":[");
    for (size_t i = 0; i < n; i++) {
      printf("%s{\"name\":\"%s\"}", i ? "," : "", names[i]);
      free(names[i]);
    }
    printf("]}\n");
    free(names);
    qv_db_close(db);
    return 0;
  }
  if (strcmp(sub, "create") && strcmp(sub, "info") && strcmp(sub, "delete"))
    cli_die("collection: unknown subcommand \"%s\" (see --help)", sub);
  if (!name) cli_die("collection %s: missing NAME", sub);
  qv_db *db = cli_open_db(data_dir);
  if (strcmp(sub, "create") == 0) {
    if (!size) cli_die("collection create: --size is required");
    qv_collection_config cfg = {.size = (uint32_t)cli_int(size, "--size", 1, QV_MAX_VECTOR_SIZE)};
    if (qv_distance_parse(&cfg.distance, distance))
      cli_die("--distance must be Cosine, Dot, Euclid or Manhattan, got \"%s\"", distance);
    if (m) cfg.hnsw.m = (uint32_t)cli_int(m, "--m", 2, 1024);
    if (efc) cfg.hnsw.ef_construct = (uint32_t)cli_int(efc, "--ef-construct", 4, 100000);
    if (fst) cfg.hnsw.full_scan_threshold = (uint32_t)cli_int(fst, "--full-scan-threshold", 1, UINT32_MAX);
    if (quant) {
      if (strcmp(quant, "int8") != 0) cli_die("--quantization must be int8, got \"%s\"", quant);
      cfg.quant.type = QV_QUANT_INT8;
      cfg.quant.always_ram = 1;
    }
    if (quantile) {
      if (!quant) cli_die("--quantile needs --quantization int8");
      double qv = cli_double(quantile, "--quantile");
      if (!(qv > 0.5 && qv <= 1)) cli_die("--quantile must be in (0.5, 1], got %s", quantile);
      cfg.quant.quantile = (float)qv;
    }
    cli_check(qv_collection_create(db, name, &cfg, &err), &err, "collection create");
    printf("{\"result\":true,\"name\":\"%s\"}\n", name);
  } else if (strcmp(sub, "delete") == 0) {
    cli_check(qv_collection_delete(db, name, &err), &err, "collection delete");
    printf("{\"result\":true}\n");
  } else {
    print_info(name, cli_open_collection(db, name));
  }
  qv_db_close(db);
  return 0;
}
