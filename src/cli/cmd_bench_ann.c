/* quiver bench ann: builds the HNSW index (src/index/hnsw.h) straight from a .npy file and
 * sweeps the search beam width, so bench/ann.py can set it beside hnswlib, FAISS and
 * usearch on the same data with the same M and ef_construction. By default the index is
 * used directly: the point is the graph, not the storage around it. With --collection
 * the same data goes through a collection in a temporary data directory (LMDB, id map,
 * float32 rescoring, optionally int8 codes), which is what a user's search pays.
 *
 * Build runs over a pool of --threads. Searches run one query per call; the whole query
 * set is timed per ef, on the calling thread (1) or split over a pool (--search-threads).
 * Memory is reported twice: what the index counts (hnsw_memory_bytes or the collection's
 * stats) and the growth of the process's resident set across the build, which is what
 * bench/ann.py compares across libraries.
 *
 * With --rounds the process stays up after the sweep and answers timing requests read from
 * stdin, one "EF THREADS" line each, with one JSON line {"ef","threads","qps"}: bench/ann.py
 * keeps every library's index alive this way and times them in alternation, round after
 * round, so that the ratios it reports compare runs made in the same minute (this VM's
 * speed drifts by up to 2x over an hour, more than the margins being measured). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "base/mem.h"
#include "base/pool.h"
#include "base/file.h"
#include "cli/cli.h"
#include "index/hnsw.h"
#include "store/collection.h"
#include "store/vecfile.h"

static const char ann_usage[] =
    "usage: quiver bench ann --data X.npy --queries Q.npy --truth T.npy [options]\n"
    "Builds an HNSW index over X, then for each ef searches every query of Q one at a time\n"
    "on one thread and scores recall@k against T (ids of the true neighbours, best first,\n"
    "(queries, >= k), int64 or float32). Prints one JSON object.\n"
    "options:\n"
    "  --distance D       Dot (default), Cosine, Euclid, Manhattan\n"
    "  --m M              links per node on upper levels, 2M on level 0 (default 16)\n"
    "  --ef-construct E   beam width while building (default 200)\n"
    "  --ef LIST          beam widths to search with, comma-separated (default 16,32,64,128,256)\n"
    "  --k K              neighbours per query (default 10)\n"
    "  --threads N        build threads (default: all CPUs; with --collection, QUIVER_THREADS)\n"
    "  --collection       through a collection in a temporary data directory\n"
    "  --quantization int8  int8 codes for the graph (with --collection)\n"
    "  --search-threads LIST  threads the query set is split over, comma-separated (default 1)\n"
    "  --rounds           after the sweep, answer \"EF THREADS\" lines on stdin with the query\n"
    "                     set's queries/s at that beam width and thread count, one JSON line each\n";

/* The ground truth as uint64 ids (rows, cols). vecfile reads only float .npy, so '<i8'
 * (numpy's default for argsort output) is parsed here; anything else goes to vecfile,
 * whose float32 holds ids exactly below 2^24. Only what numpy writes for a C-order 2-D
 * array is accepted. */
static uint64_t *read_truth(const char *path, size_t *rows, size_t *cols) {
  const uint8_t *buf;
  size_t len;
  qv_error err = {0};
  cli_check(vecfile_map(path, &buf, &len, &err), &err, path);
  if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) cli_die("%s: not a .npy file", path);
  size_t hoff = buf[6] == 1 ? 10 : 12;
  if (len < hoff) cli_die("%s: truncated header", path);
  size_t hlen = buf[8] | (size_t)buf[9] << 8;
  if (buf[6] != 1) hlen |= (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
  if (hlen > len - hoff) cli_die("%s: truncated header", path);
  char *h = strndup((const char *)buf + hoff, hlen);
  if (!h) cli_die("out of memory");
  if (!strstr(h, "'<i8'")) {
    free(h);
    vecfile_unmap(buf, len);
    vecfile_matrix m = cli_read_npy(path);
    size_t n = m.rows * m.cols;
    uint64_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) cli_die("out of memory");
    for (size_t i = 0; i < n; i++) ids[i] = m.data[i] < 0 ? UINT64_MAX : (uint64_t)m.data[i];
    *rows = m.rows;
    *cols = m.cols;
    vecfile_matrix_free(&m);
    return ids;
  }
  const char *shape = strstr(h, "'shape':");
  if (strstr(h, "'fortran_order': True") || !shape ||
      sscanf(shape, "'shape': (%zu, %zu)", rows, cols) != 2)
    cli_die("%s: want a C-order (queries, k) int64 array", path);
  free(h);
  size_t n = *rows * *cols;
  if (*cols && n / *cols != *rows) cli_die("%s: shape too large", path);
  if (len - hoff - hlen != n * 8) cli_die("%s: %zu data bytes, shape needs %zu", path, len - hoff - hlen, n * 8);
  uint64_t *ids = malloc((n ? n : 1) * sizeof *ids);
  if (!ids) cli_die("out of memory");
  memcpy(ids, buf + hoff + hlen, n * 8); /* little-endian hosts only, as '<i8' says */
  vecfile_unmap(buf, len);
  return ids;
}

/* Parses "16,32,64" into at most max values in [lo, hi]; returns the count. */
static size_t parse_list(size_t *out, size_t max, const char *s, const char *what) {
  size_t n = 0;
  char *copy = strdup(s), *save = NULL;
  if (!copy) cli_die("out of memory");
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (n == max) cli_die("%s: at most %zu values", what, max);
    out[n++] = (size_t)cli_int(tok, what, 1, 1000000);
  }
  free(copy);
  if (!n) cli_die("%s: empty list", what);
  return n;
}

/* One search of the sweep: the labels of up to k hits for query i into out. */
typedef size_t (*search_one_fn)(void *ctx, size_t i, size_t ef, uint64_t *out);

typedef struct sweep_job {
  search_one_fn fn;
  void *ctx;
  size_t ef, k;
  uint64_t *labels; /* (queries, k) */
  size_t *counts;   /* (queries) */
} sweep_job;

static void sweep_task(void *ctx, size_t i, int worker) {
  (void)worker;
  sweep_job *j = ctx;
  j->counts[i] = j->fn(j->ctx, i, j->ef, j->labels + i * j->k);
}

/* Queries/s over the whole query set, on the calling thread (pool NULL) or split over pool:
 * wall clock from the first query to the last, as the Python libraries' batch calls are
 * timed. */
static double time_queries(sweep_job *job, size_t nq, qv_pool *pool) {
  double t0 = cli_now();
  if (pool) pool_run(pool, nq, sweep_task, job);
  else for (size_t i = 0; i < nq; i++) sweep_task(job, i, 0);
  double s = cli_now() - t0;
  return s > 0 ? (double)nq / s : 0.0;
}

/* --rounds: answers "EF THREADS" lines from stdin until EOF (see the top comment). A pool
 * per thread count is started on first use and kept. */
static void serve_rounds(search_one_fn fn, void *ctx, size_t nq, size_t k) {
  uint64_t *labels = malloc((nq ? nq : 1) * k * sizeof *labels);
  size_t *counts = calloc(nq ? nq : 1, sizeof *counts);
  qv_pool *pools[65] = {0};
  if (!labels || !counts) cli_die("out of memory");
  char line[128];
  while (fgets(line, sizeof line, stdin)) {
    char ef_s[32], threads_s[32];
    line[strcspn(line, "\n")] = '\0';
    if (sscanf(line, "%31s %31s", ef_s, threads_s) != 2)
      cli_die("bench ann --rounds: want \"EF THREADS\", got \"%s\"", line);
    size_t ef = (size_t)cli_int(ef_s, "EF", 1, 1000000), threads = (size_t)cli_int(threads_s, "THREADS", 1, 64);
    if (threads > 1 && !pools[threads] && pool_create(&pools[threads], (int)threads)) cli_die("cannot start threads");
    sweep_job job = {fn, ctx, ef, k, labels, counts};
    printf("{\"ef\":%zu,\"threads\":%zu,\"qps\":%.1f}\n", ef, threads, time_queries(&job, nq, pools[threads]));
    fflush(stdout);
  }
  for (size_t t = 0; t < 65; t++)
    if (pools[t]) pool_destroy(pools[t]);
  free(labels);
  free(counts);
}

/* For each ef: the whole query set is timed once per search thread count (wall clock from
 * the first query to the last, as the Python libraries' batch calls are timed), then
 * recall@k is scored outside the timing. Prints the "runs" array. */
static void sweep(search_one_fn fn, void *ctx, size_t nq, const uint64_t *gt, size_t tcols, size_t k,
                  const size_t *efs, size_t nef, const size_t *sthreads, size_t nst) {
  uint64_t *labels = malloc((nq ? nq : 1) * k * sizeof *labels);
  size_t *counts = calloc(nq ? nq : 1, sizeof *counts);
  qv_pool **pools = calloc(nst, sizeof *pools);
  if (!labels || !counts || !pools) cli_die("out of memory");
  for (size_t t = 0; t < nst; t++)
    if (sthreads[t] > 1 && pool_create(&pools[t], (int)sthreads[t])) cli_die("cannot start threads");
  printf("\"search_threads\":[");
  for (size_t t = 0; t < nst; t++) printf("%s%zu", t ? "," : "", sthreads[t]);
  printf("],\"runs\":[");
  for (size_t e = 0; e < nef; e++) {
    sweep_job job = {fn, ctx, efs[e], k, labels, counts};
    printf("%s{\"ef\":%zu,\"qps_by_threads\":[", e ? "," : "", efs[e]);
    double qps1 = 0;
    for (size_t t = 0; t < nst; t++) {
      double qps = time_queries(&job, nq, pools[t]);
      if (t == 0) qps1 = qps;
      printf("%s%.1f", t ? "," : "", qps);
    }
    size_t found = 0; /* recall@k: how many of the true k nearest came back */
    for (size_t i = 0; i < nq; i++)
      for (size_t a = 0; a < counts[i]; a++)
        for (size_t b = 0; b < k; b++)
          if (labels[i * k + a] == gt[i * tcols + b]) {
            found++;
            break;
          }
    printf("],\"qps\":%.1f,\"recall\":%.4f}", qps1, nq ? (double)found / (double)(nq * k) : 0.0);
  }
  printf("]}\n");
  fflush(stdout); /* with --rounds the reader waits for this line before asking */
  for (size_t t = 0; t < nst; t++)
    if (pools[t]) pool_destroy(pools[t]);
  free(pools);
  free(labels);
  free(counts);
}

typedef struct coll_ctx {
  qv_collection *c;
  const vecfile_matrix *q;
  size_t k;
} coll_ctx;

static size_t coll_search(void *ctx, size_t i, size_t ef, uint64_t *out) {
  coll_ctx *cc = ctx;
  qv_search_params p = {.limit = cc->k, .hnsw_ef = (uint32_t)ef};
  qv_records r;
  qv_error err = {0};
  cli_check(qv_collection_search(cc->c, cc->q->data + i * cc->q->cols, 1, &p, &r, &err), &err,
            "bench ann: search");
  for (size_t a = 0; a < r.count; a++) out[a] = r.items[a].id.num;
  size_t n = r.count;
  qv_records_free(&r);
  return n;
}

typedef struct index_ctx {
  hnsw *h;
  const vecfile_matrix *q;
  size_t k;
  hnsw_hit *hits; /* (queries, k): hnsw_search's output, one row per query */
} index_ctx;

static size_t index_search(void *ctx, size_t i, size_t ef, uint64_t *out) {
  index_ctx *ic = ctx;
  hnsw_hit *hits = ic->hits + i * ic->k;
  size_t count;
  qv_status st = hnsw_search(ic->h, ic->q->data + i * ic->q->cols, ic->k, ef, NULL, hits, &count);
  if (st) cli_die("bench ann: search failed: %s", qv_strerror(st));
  for (size_t a = 0; a < count; a++) out[a] = hits[a].label;
  return count;
}

/* The --collection run: load, build, then the same ef sweep through qv_collection_search. */
static void bench_collection(const vecfile_matrix *x, const vecfile_matrix *q, const uint64_t *gt,
                             size_t tcols, qv_distance dist, size_t M, size_t efc, size_t k,
                             const size_t *efs, size_t nef, const size_t *sthreads, size_t nst, int int8,
                             int rounds) {
  char dir[] = "/tmp/quiver-bench-ann-XXXXXX";
  if (!mkdtemp(dir)) cli_die("bench ann: cannot make a temporary directory");
  qv_error err = {0};
  qv_db *db;
  qv_collection *c;
  /* no automatic build while loading: the build is timed on its own below */
  qv_collection_config cfg = {.size = (uint32_t)x->cols, .distance = dist,
                              .hnsw = {(uint32_t)M, (uint32_t)efc, UINT32_MAX}};
  if (int8) cfg.quant = (qv_quant_config){QV_QUANT_INT8, 0, 1};
  long rss0 = qv_resident_bytes();
  cli_check(qv_db_open(&db, dir, &err), &err, dir);
  cli_check(qv_collection_create(db, "bench", &cfg, &err), &err, "bench ann");
  cli_check(qv_collection_open(db, "bench", &c, &err), &err, "bench ann");
  const size_t batch = 10000;
  qv_point *pts = malloc(batch * sizeof *pts);
  if (!pts) cli_die("out of memory");
  double t0 = cli_now();
  for (size_t from = 0; from < x->rows; from += batch) {
    size_t n = x->rows - from < batch ? x->rows - from : batch;
    for (size_t i = 0; i < n; i++)
      pts[i] = (qv_point){{.kind = QV_ID_NUM, .num = from + i}, x->data + (from + i) * x->cols, NULL};
    cli_check(qv_collection_upsert(c, pts, n, &err), &err, "bench ann: upsert");
  }
  double load_s = cli_now() - t0;
  free(pts);
  long rss1 = qv_resident_bytes();
  t0 = cli_now();
  cli_check(collection_index_build(c, &err), &err, "bench ann: build");
  double build_s = cli_now() - t0;
  long rss2 = qv_resident_bytes();
  cfg.hnsw.full_scan_threshold = 1; /* from now on every search goes through the graph */
  cli_check(qv_collection_update_config(c, &cfg, &err), &err, "bench ann");
  qv_collection_stats s;
  qv_collection_stats_get(c, &s);
  printf("{\"n\":%zu,\"dim\":%zu,\"queries\":%zu,\"k\":%zu,\"m\":%zu,\"ef_construct\":%zu,"
         "\"collection\":true,\"quantization\":%s,\"threads\":%d,\"load_s\":%.3f,\"build_s\":%.3f,"
         "\"vector_bytes\":%zu,\"graph_bytes\":%zu,\"quantized_bytes\":%zu,\"rss_load_bytes\":%ld,"
         "\"rss_build_bytes\":%ld,",
         x->rows, x->cols, q->rows, k, M, efc, int8 ? "\"int8\"" : "null", pool_size(pool_default()), load_s,
         build_s, s.vector_bytes, s.graph_bytes, s.quantized_bytes, rss1 - rss0, rss2 - rss1);
  coll_ctx cc = {c, q, k};
  sweep(coll_search, &cc, q->rows, gt, tcols, k, efs, nef, sthreads, nst);
  if (rounds) serve_rounds(coll_search, &cc, q->rows, k);
  qv_db_close(db);
  qv_rm_tree(dir);
}

int cmd_bench_ann(int argc, char **argv) {
  const char *data = NULL, *queries = NULL, *truth = NULL, *dist_s = "Dot", *m_s = "16", *efc_s = "200",
             *ef_s = "16,32,64,128,256", *k_s = "10", *threads_s = "0", *quant_s = NULL,
             *sthreads_s = "1";
  int through_collection = 0, rounds = 0;
  cli_opt opts[] = {{"data", &data, NULL},         {"queries", &queries, NULL}, {"truth", &truth, NULL},
                    {"distance", &dist_s, NULL},   {"m", &m_s, NULL},           {"ef-construct", &efc_s, NULL},
                    {"ef", &ef_s, NULL},           {"k", &k_s, NULL},           {"threads", &threads_s, NULL},
                    {"collection", NULL, &through_collection}, {"quantization", &quant_s, NULL},
                    {"search-threads", &sthreads_s, NULL}, {"rounds", NULL, &rounds},
                    {0}};
  cli_parse(argc, argv, opts, NULL, 0, ann_usage);
  if (!data || !queries || !truth) cli_die("bench ann: --data, --queries and --truth are required");
  qv_distance dist;
  if (qv_distance_parse(&dist, dist_s)) cli_die("--distance: unknown \"%s\"", dist_s);
  size_t M = (size_t)cli_int(m_s, "--m", 2, HNSW_MAX_M);
  size_t efc = (size_t)cli_int(efc_s, "--ef-construct", 1, 1000000);
  size_t k = (size_t)cli_int(k_s, "--k", 1, 10000);
  int threads = (int)cli_int(threads_s, "--threads", 0, 1024);
  size_t efs[64];
  size_t nef = parse_list(efs, 64, ef_s, "--ef");
  size_t sthreads[8];
  size_t nst = parse_list(sthreads, 8, sthreads_s, "--search-threads");

  vecfile_matrix x = cli_read_npy(data), q = cli_read_npy(queries);
  if (x.cols != q.cols) cli_die("data has %zu dimensions, queries %zu", x.cols, q.cols);
  size_t trows, tcols;
  uint64_t *gt = read_truth(truth, &trows, &tcols); /* (trows, tcols) */
  if (trows != q.rows || tcols < k)
    cli_die("%s: shape (%zu, %zu), want (%zu, >= %zu)", truth, trows, tcols, q.rows, k);
  if (quant_s && strcmp(quant_s, "int8") != 0) cli_die("--quantization must be int8, got \"%s\"", quant_s);
  if (quant_s && !through_collection) cli_die("--quantization needs --collection");
  if (through_collection) {
    if (efc < 4) cli_die("--ef-construct must be at least 4 with --collection");
    bench_collection(&x, &q, gt, tcols, dist, M, efc, k, efs, nef, sthreads, nst, quant_s != NULL, rounds);
    free(gt);
    vecfile_matrix_free(&x);
    vecfile_matrix_free(&q);
    return 0;
  }

  hnsw *h;
  qv_pool *pool;
  if (pool_create(&pool, threads)) cli_die("cannot start threads");
  if (hnsw_new(&h, x.cols, dist, M, efc, 42)) cli_die("bench ann: bad index parameters");
  uint64_t *labels = malloc((x.rows ? x.rows : 1) * sizeof *labels);
  if (!labels) cli_die("out of memory");
  for (size_t i = 0; i < x.rows; i++) labels[i] = i;
  long rss0 = qv_resident_bytes();
  double t0 = cli_now();
  qv_status st = hnsw_add_batch(h, labels, x.data, x.rows, pool, NULL);
  double build_s = cli_now() - t0;
  long rss1 = qv_resident_bytes();
  if (st) cli_die("bench ann: build failed: %s", qv_strerror(st));
  free(labels);
  size_t mem = hnsw_memory_bytes(h);
  printf("{\"n\":%zu,\"dim\":%zu,\"queries\":%zu,\"k\":%zu,\"m\":%zu,\"ef_construct\":%zu,\"threads\":%d,"
         "\"build_s\":%.3f,\"memory_bytes\":%zu,\"bytes_per_point\":%.1f,\"rss_build_bytes\":%ld,",
         x.rows, x.cols, q.rows, k, M, efc, pool_size(pool), build_s, mem,
         x.rows ? (double)mem / (double)x.rows : 0.0, rss1 - rss0);
  index_ctx ic = {h, &q, k, malloc((q.rows ? q.rows : 1) * k * sizeof(hnsw_hit))};
  if (!ic.hits) cli_die("out of memory");
  sweep(index_search, &ic, q.rows, gt, tcols, k, efs, nef, sthreads, nst);
  if (rounds) serve_rounds(index_search, &ic, q.rows, k);
  free(ic.hits);
  free(gt);
  hnsw_free(h);
  pool_destroy(pool);
  vecfile_matrix_free(&x);
  vecfile_matrix_free(&q);
  return 0;
}
