/* quiver search COLLECTION: top-k through the collection's index (or exact), one JSON line
 * per query. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "store/vecfile.h"

static const char usage[] =
    "usage: quiver search COLLECTION (--vector X,Y,... | --queries FILE.npy) [options]\n"
    "Prints one JSON line per query: the list of Qdrant ScoredPoints, best first.\n"
    "options:\n"
    "  --data-dir DIR          data directory (default ./quiver-data)\n"
    "  --limit K               results per query (default 10)\n"
    "  --offset N              skip the N best (default 0)\n"
    "  --filter JSON           a Qdrant filter on the payload\n"
    "  --score-threshold T     keep score >= T (Cosine, Dot) or distance <= T (Euclid, Manhattan)\n"
    "  --with-vector           include each point's vector\n"
    "  --hnsw-ef N             beam width of the HNSW search (default max(limit + offset, 64))\n"
    "  --exact                 scan every point instead of using the index\n"
    "  --no-payload            leave payloads out\n";

int cmd_search(int argc, char **argv) {
  const char *data_dir = NULL, *vector = NULL, *queries = NULL, *limit = "10", *offset = "0",
             *filter = NULL, *threshold = NULL, *pos[1] = {0};
  const char *hnsw_ef = NULL;
  int with_vector = 0, no_payload = 0, exact = 0;
  cli_opt opts[] = {{"data-dir", &data_dir, NULL},  {"vector", &vector, NULL},
                    {"queries", &queries, NULL},    {"limit", &limit, NULL},
                    {"offset", &offset, NULL},      {"filter", &filter, NULL},
                    {"score-threshold", &threshold, NULL}, {"with-vector", NULL, &with_vector},
                    {"no-payload", NULL, &no_payload}, {"hnsw-ef", &hnsw_ef, NULL},
                    {"exact", NULL, &exact},           {0}};
  if (cli_parse(argc, argv, opts, pos, 1, usage) != 1) {
    fputs(usage, stderr);
    return 2;
  }
  if (!!vector == !!queries) cli_die("search: give exactly one of --vector and --queries");
  qv_search_params p = {
      .limit = (size_t)cli_int(limit, "--limit", 1, 1000000),
      .offset = (size_t)cli_int(offset, "--offset", 0, 1000000),
      .with_payload = !no_payload,
      .with_vector = with_vector,
      .hnsw_ef = hnsw_ef ? (uint32_t)cli_int(hnsw_ef, "--hnsw-ef", 1, 1000000) : 0,
      .exact = exact,
  };
  if (threshold) {
    p.has_score_threshold = 1;
    p.score_threshold = (float)cli_double(threshold, "--score-threshold");
  }
  qv_filter *f = cli_filter(filter);
  p.filter = f;
  qv_db *db = cli_open_db(data_dir);
  qv_collection *c = cli_open_collection(db, pos[0]);
  qv_collection_config cfg;
  qv_collection_config_get(c, &cfg);
  size_t dim = cfg.size, nq = 1;
  float *qs = NULL;
  vecfile_matrix m = {0};
  qv_error err = {0};
  if (vector) {
    qs = cli_parse_vector(vector, &dim);
  } else {
    m = cli_read_npy(queries);
    if (m.rows && m.cols != dim)
      cli_die("%s: queries have %zu dimensions; the collection's vectors have %zu", queries, m.cols, dim);
    qs = m.data;
    nq = m.rows;
  }
  /* Batches bound the memory held by results while keeping the GEMM path busy. */
  const size_t chunk = 1024;
  qv_records *res = calloc(chunk, sizeof *res);
  if (!res) cli_die("out of memory");
  for (size_t q0 = 0; q0 < nq; q0 += chunk) {
    size_t nb = nq - q0 < chunk ? nq - q0 : chunk;
    cli_check(qv_collection_search(c, qs + q0 * dim, nb, &p, res, &err), &err, "search");
    for (size_t q = 0; q < nb; q++) {
      putchar('[');
      for (size_t i = 0; i < res[q].count; i++) {
        if (i) putchar(',');
        cli_print_record(stdout, &res[q].items[i], dim, 1);
      }
      puts("]");
      qv_records_free(&res[q]);
    }
  }
  free(res);
  if (vector) free(qs);
  vecfile_matrix_free(&m);
  qv_filter_free(f);
  qv_db_close(db);
  return 0;
}
