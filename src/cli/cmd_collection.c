/* quiver collection create|list|info|delete */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char usage[] =
    "usage: quiver collection create NAME --size N [--distance Cosine|Dot|Euclid|Manhattan]\n"
    "       quiver collection list\n"
    "       quiver collection info NAME\n"
    "       quiver collection delete NAME\n"
    "options:\n"
    "  --data-dir DIR   data directory (default ./quiver-data)\n"
    "  --size N         vector size, 1..65536 (create)\n"
    "  --distance D     Cosine (default), Dot, Euclid or Manhattan (create)\n";

int cmd_collection(int argc, char **argv) {
  const char *data_dir = NULL, *size = NULL, *distance = "Cosine", *pos[2] = {0};
  cli_opt opts[] = {{"data-dir", &data_dir, NULL}, {"size", &size, NULL}, {"distance", &distance, NULL}, {0}};
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
    cli_check(qv_collection_create(db, name, &cfg, &err), &err, "collection create");
    printf("{\"result\":true,\"name\":\"%s\"}\n", name);
  } else if (strcmp(sub, "delete") == 0) {
    cli_check(qv_collection_delete(db, name, &err), &err, "collection delete");
    printf("{\"result\":true}\n");
  } else {
    qv_collection *c = cli_open_collection(db, name);
    qv_collection_config cfg;
    qv_collection_config_get(c, &cfg);
    printf("{\"name\":\"%s\",\"status\":\"green\",\"points_count\":%zu,"
           "\"config\":{\"params\":{\"vectors\":{\"size\":%u,\"distance\":\"%s\"}}}}\n",
           name, qv_collection_count_all(c), cfg.size, qv_distance_name(cfg.distance));
  }
  qv_db_close(db);
  return 0;
}
