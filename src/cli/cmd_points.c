/* quiver points get|upsert|delete|count|scroll */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char usage[] =
    "usage: quiver points get COLLECTION ID... [--with-vector] [--no-payload]\n"
    "       quiver points upsert COLLECTION --id ID --vector X,Y,... [--payload JSON]\n"
    "       quiver points delete COLLECTION (ID... | --filter JSON)\n"
    "       quiver points count COLLECTION [--filter JSON]\n"
    "       quiver points scroll COLLECTION [--limit N] [--offset ID] [--filter JSON]\n"
    "options:\n"
    "  --data-dir DIR   data directory (default ./quiver-data)\n"
    "IDs are unsigned integers or UUIDs.\n";

#define MAX_POS 4096

static qv_point_id parse_id(const char *s) {
  qv_point_id id;
  if (qv_point_id_parse(&id, s)) cli_die("\"%s\" is not a point id (an unsigned integer or a UUID)", s);
  return id;
}

static void print_records(const qv_records *r, size_t dim) {
  putchar('[');
  for (size_t i = 0; i < r->count; i++) {
    if (i) putchar(',');
    cli_print_record(stdout, &r->items[i], dim, 0);
  }
  putchar(']');
}

int cmd_points(int argc, char **argv) {
  const char *data_dir = NULL, *filter = NULL, *limit = "10", *offset = NULL, *id = NULL,
             *vector = NULL, *payload = NULL;
  static const char *pos[MAX_POS];
  int with_vector = 0, no_payload = 0;
  cli_opt opts[] = {{"data-dir", &data_dir, NULL}, {"filter", &filter, NULL},
                    {"limit", &limit, NULL},       {"offset", &offset, NULL},
                    {"id", &id, NULL},             {"vector", &vector, NULL},
                    {"payload", &payload, NULL},   {"with-vector", NULL, &with_vector},
                    {"no-payload", NULL, &no_payload}, {0}};
  int npos = cli_parse(argc, argv, opts, pos, MAX_POS, usage);
  if (npos < 2) {
    fputs(usage, stderr);
    return 2;
  }
  const char *sub = pos[0];
  if (strcmp(sub, "get") && strcmp(sub, "upsert") && strcmp(sub, "delete") && strcmp(sub, "count") &&
      strcmp(sub, "scroll"))
    cli_die("points: unknown subcommand \"%s\" (see --help)", sub);
  size_t nids = (size_t)npos - 2;
  qv_point_id *ids = calloc(nids ? nids : 1, sizeof *ids);
  if (!ids) cli_die("out of memory");
  for (size_t i = 0; i < nids; i++) ids[i] = parse_id(pos[2 + i]);
  qv_filter *f = cli_filter(filter);
  qv_db *db = cli_open_db(data_dir);
  qv_collection *c = cli_open_collection(db, pos[1]);
  qv_collection_config cfg;
  qv_collection_config_get(c, &cfg);
  qv_error err = {0};
  qv_records r = {0};
  if (!strcmp(sub, "get")) {
    cli_check(qv_collection_get(c, ids, nids, !no_payload, with_vector, &r, &err), &err, "points get");
    print_records(&r, cfg.size);
    putchar('\n');
  } else if (!strcmp(sub, "upsert")) {
    if (!id || !vector) cli_die("points upsert: --id and --vector are required");
    size_t dim = cfg.size;
    float *v = cli_parse_vector(vector, &dim);
    qv_point p = {parse_id(id), v, payload};
    cli_check(qv_collection_upsert(c, &p, 1, &err), &err, "points upsert");
    printf("{\"status\":\"completed\"}\n");
    free(v);
  } else if (!strcmp(sub, "delete")) {
    if (!!nids == !!f) cli_die("points delete: give ids or --filter, not both or neither");
    size_t deleted;
    if (f) cli_check(qv_collection_delete_filter(c, f, &deleted, &err), &err, "points delete");
    else cli_check(qv_collection_delete_ids(c, ids, nids, &deleted, &err), &err, "points delete");
    printf("{\"status\":\"completed\",\"deleted\":%zu}\n", deleted);
  } else if (!strcmp(sub, "count")) {
    size_t n;
    cli_check(qv_collection_count(c, f, &n, &err), &err, "points count");
    printf("{\"count\":%zu}\n", n);
  } else {
    qv_point_id off, next;
    if (offset) off = parse_id(offset);
    int has_next;
    cli_check(qv_collection_scroll(c, offset ? &off : NULL, (size_t)cli_int(limit, "--limit", 1, 1000000), f,
                                   !no_payload, with_vector, &r, &next, &has_next, &err),
              &err, "points scroll");
    printf("{\"points\":");
    print_records(&r, cfg.size);
    char nb[40];
    if (has_next) {
      qv_point_id_format(&next, nb);
      if (next.kind == QV_ID_UUID) printf(",\"next_page_offset\":\"%s\"}\n", nb);
      else printf(",\"next_page_offset\":%s}\n", nb);
    } else {
      printf(",\"next_page_offset\":null}\n");
    }
  }
  qv_records_free(&r);
  qv_filter_free(f);
  free(ids);
  qv_db_close(db);
  return 0;
}
