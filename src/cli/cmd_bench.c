#define _GNU_SOURCE
/* quiver bench exact: times exact search through the collection API, the path users get.
 * The data goes into a collection in a temporary data directory that is removed after. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "base/pool.h"
#include "base/file.h"
#include "cli/cli.h"
#include "index/distance.h"
#include "store/vecfile.h"

static const char usage[] =
    "usage: quiver bench exact|embed|sgemm|ann ...\n"
    "       quiver bench exact --data FILE.npy --queries FILE.npy [options]\n"
    "Loads the data into a temporary collection, then times one query at a time and all\n"
    "queries as one batch. Prints one JSON object.\n"
    "options:\n"
    "  --k K            neighbours per query (default 10)\n"
    "  --distance D     Dot (default), Cosine, Euclid, Manhattan\n"
    "  --repeat R       timed repetitions of the batch, best kept (default 3)\n"
    "  --out FILE.npy   write the batch's result ids, int64 (queries, k)\n";

/* The batch's result ids as int64 (queries, k), -1 where a query got fewer than k. */
static void write_ids(const char *path, const qv_records *res, size_t nq, size_t k) {
  long long *ids = malloc((nq ? nq : 1) * k * sizeof *ids);
  if (!ids) cli_die("out of memory");
  for (size_t q = 0; q < nq; q++)
    for (size_t i = 0; i < k; i++) ids[q * k + i] = i < res[q].count ? (long long)res[q].items[i].id.num : -1;
  cli_write_npy(path, "<i8", ids, sizeof *ids, nq, k);
  free(ids);
}

static int bench_exact(int argc, char **argv) {
  const char *data = NULL, *queries = NULL, *k_s = "10", *dist_s = "Dot", *repeat_s = "3", *out = NULL;
  cli_opt opts[] = {{"data", &data, NULL}, {"queries", &queries, NULL}, {"k", &k_s, NULL},
                    {"distance", &dist_s, NULL}, {"repeat", &repeat_s, NULL}, {"out", &out, NULL}, {0}};
  cli_parse(argc, argv, opts, NULL, 0, usage);
  if (!data || !queries) cli_die("bench exact: --data and --queries are required");
  size_t k = (size_t)cli_int(k_s, "--k", 1, 10000);
  int repeat = (int)cli_int(repeat_s, "--repeat", 1, 1000);
  /* exact search only: the graph is never built (full_scan_threshold at its maximum) */
  qv_collection_config cfg = {.hnsw = {.full_scan_threshold = UINT32_MAX}};
  if (qv_distance_parse(&cfg.distance, dist_s)) cli_die("--distance: unknown \"%s\"", dist_s);
  vecfile_matrix x = cli_read_npy(data), q = cli_read_npy(queries);
  if (x.cols != q.cols) cli_die("data has %zu dimensions, queries %zu", x.cols, q.cols);
  cfg.size = (uint32_t)x.cols;

  char tmpl[] = "/tmp/quiver-bench-XXXXXX";
  if (!mkdtemp(tmpl)) cli_die("cannot make a temporary directory");
  qv_db *db = cli_open_db(tmpl);
  qv_error err = {0};
  cli_check(qv_collection_create(db, "bench", &cfg, &err), &err, "create");
  qv_collection *c = cli_open_collection(db, "bench");
  double t0 = cli_now();
  const size_t batch = 10000;
  qv_point *pts = calloc(batch, sizeof *pts);
  if (!pts) cli_die("out of memory");
  for (size_t r0 = 0; r0 < x.rows; r0 += batch) {
    size_t nb = x.rows - r0 < batch ? x.rows - r0 : batch;
    for (size_t i = 0; i < nb; i++)
      pts[i] = (qv_point){{.kind = QV_ID_NUM, .num = r0 + i}, x.data + (r0 + i) * x.cols, NULL};
    cli_check(qv_collection_upsert(c, pts, nb, &err), &err, "upsert");
  }
  double load_s = cli_now() - t0;
  free(pts);

  qv_search_params p = {.limit = k};
  qv_records *res = calloc(q.rows, sizeof *res);
  if (!res) cli_die("out of memory");
  /* one query at a time */
  double best_single = 1e30;
  for (int r = 0; r < repeat; r++) {
    t0 = cli_now();
    for (size_t i = 0; i < q.rows; i++) {
      cli_check(qv_collection_search(c, q.data + i * q.cols, 1, &p, &res[i], &err), &err, "search");
      qv_records_free(&res[i]);
    }
    double s = cli_now() - t0;
    if (s < best_single) best_single = s;
  }
  /* all queries as one batch */
  double best_batch = 1e30;
  for (int r = 0; r < repeat; r++) {
    t0 = cli_now();
    cli_check(qv_collection_search(c, q.data, q.rows, &p, res, &err), &err, "search");
    double s = cli_now() - t0;
    if (s < best_batch) best_batch = s;
    if (r + 1 < repeat)
      for (size_t i = 0; i < q.rows; i++) qv_records_free(&res[i]);
  }
  if (out) write_ids(out, res, q.rows, k);
  for (size_t i = 0; i < q.rows; i++) qv_records_free(&res[i]);
  free(res);
  printf("{\"n\":%zu,\"dim\":%zu,\"queries\":%zu,\"k\":%zu,\"isa\":\"%s\",\"load_s\":%.3f,"
         "\"single_qps\":%.1f,\"single_ms\":%.4f,\"batch_qps\":%.1f,\"batch_s\":%.4f}\n",
         x.rows, x.cols, q.rows, k, dist_isa(), load_s, (double)q.rows / best_single,
         best_single * 1e3 / (double)q.rows, (double)q.rows / best_batch, best_batch);
  cli_check(qv_collection_delete(db, "bench", &err), &err, "cleanup");
  qv_db_close(db);
  qv_rm_tree(tmpl);
  vecfile_matrix_free(&x);
  vecfile_matrix_free(&q);
  return 0;
}

static const char embed_usage[] =
    "usage: quiver bench embed --input FILE [--model NAME|DIR] [--batch B] [--repeat R]\n"
    "Embeds every line of FILE in calls of B texts, best of R runs. Prints one JSON object:\n"
    "texts, tokens (with special tokens, after truncation), seconds, sentences/s, peak RSS.\n";

static int bench_embed(int argc, char **argv) {
  const char *input = NULL, *model = "all-MiniLM-L6-v2", *batch_s = "32", *repeat_s = "3";
  cli_opt opts[] = {{"input", &input, NULL}, {"model", &model, NULL}, {"batch", &batch_s, NULL},
                    {"repeat", &repeat_s, NULL}, {0}};
  cli_parse(argc, argv, opts, NULL, 0, embed_usage);
  if (!input) cli_die("bench embed: --input is required");
  size_t batch = (size_t)cli_int(batch_s, "--batch", 1, 100000);
  int repeat = (int)cli_int(repeat_s, "--repeat", 1, 1000);
  FILE *f = fopen(input, "r");
  if (!f) cli_die("%s: cannot open", input);
  char **texts = NULL, *line = NULL;
  size_t n = 0, cap = 0, lcap = 0;
  ssize_t len;
  while ((len = getline(&line, &lcap, f)) >= 0) {
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
    if (n == cap && !(texts = realloc(texts, (cap = cap ? cap * 2 : 256) * sizeof *texts))) cli_die("out of memory");
    if (!(texts[n++] = strdup(line))) cli_die("out of memory");
  }
  free(line);
  fclose(f);
  qv_model *m;
  qv_error err = {0};
  cli_check(qv_model_load(&m, model, &err), &err, "loading the model");
  qv_model_info info;
  qv_model_info_get(m, &info);
  size_t tokens = 0;
  for (size_t i = 0; i < n; i++) {
    size_t t;
    cli_check(qv_model_count_tokens(m, texts[i], strlen(texts[i]), &t, &err), &err, "tokenize");
    tokens += t < (size_t)info.max_tokens ? t : (size_t)info.max_tokens;
  }
  float *out = malloc((n ? n : 1) * (size_t)info.dims * sizeof(float));
  if (!out) cli_die("out of memory");
  double best = 1e30;
  for (int r = 0; r < repeat; r++) {
    double t0 = cli_now();
    for (size_t i = 0; i < n; i += batch) {
      size_t nb = n - i < batch ? n - i : batch;
      cli_check(qv_model_encode(m, (const char *const *)texts + i, NULL, nb, 1, out + i * (size_t)info.dims, &err),
                &err, "embed");
    }
    double s = cli_now() - t0;
    if (s < best) best = s;
  }
  /* VmHWM, not getrusage's ru_maxrss: the latter survives execve, so a big parent (a
   * Python benchmark driver) would show through. */
  double hwm_kb = 0;
  FILE *status = fopen("/proc/self/status", "r");
  char sl[256];
  while (status && fgets(sl, sizeof sl, status))
    if (sscanf(sl, "VmHWM: %lf kB", &hwm_kb) == 1) break;
  if (status) fclose(status);
  printf("{\"texts\":%zu,\"batch\":%zu,\"tokens\":%zu,\"seconds\":%.4f,\"sentences_per_s\":%.1f,"
         "\"maxrss_mb\":%.1f}\n",
         n, batch, tokens, best, (double)n / best, hwm_kb / 1024.0);
  for (size_t i = 0; i < n; i++) free(texts[i]);
  free(texts);
  free(out);
  qv_model_free(m);
  return 0;
}

/* The ceiling the encoder's GEMMs are measured against: OpenBLAS sgemm on an
 * encoder-shaped product (M tokens x N outputs x K inputs) and on a large square one,
 * run both ways: OpenBLAS's own threads, and single-threaded sgemm on row slices spread
 * over Quiver's pool (how the encoder calls it). The best figure is the peak. */
typedef struct sgemm_job {
  const float *a, *b;
  float *c;
  int M, N, K, parts;
} sgemm_job;

static void sgemm_part(void *arg, size_t task, int worker) {
  (void)worker;
  sgemm_job *j = arg;
  int m0 = (int)((size_t)j->M * task / (size_t)j->parts), m1 = (int)((size_t)j->M * (task + 1) / (size_t)j->parts);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m1 - m0, j->N, j->K, 1.0f, j->a + (size_t)m0 * j->K, j->K,
              j->b, j->K, 0.0f, j->c + (size_t)m0 * j->N, j->N);
}

static double sgemm_gflops(int M, int N, int K, qv_pool *pool) {
  float *a = calloc((size_t)M * K, sizeof(float)), *b = calloc((size_t)N * K, sizeof(float)),
        *c = calloc((size_t)M * N, sizeof(float));
  if (!a || !b || !c) cli_die("out of memory");
  for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
  for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)(i % 5) * 0.1f;
  double best = 1e30;
  for (int r = 0; r < 5; r++) {
    double t0 = cli_now();
    if (pool) {
      sgemm_job j = {a, b, c, M, N, K, pool_size(pool)};
      pool_run(pool, (size_t)j.parts, sgemm_part, &j);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
    }
    double s = cli_now() - t0;
    if (s < best) best = s;
  }
  free(a);
  free(b);
  free(c);
  return 2.0 * M * N * K / best / 1e9;
}

static int bench_sgemm(int argc, char **argv) {
  const char *threads_s = NULL;
  cli_opt opts[] = {{"threads", &threads_s, NULL}, {0}};
  cli_parse(argc, argv, opts, NULL, 0, "usage: quiver bench sgemm [--threads T]\n");
  int threads = threads_s ? (int)cli_int(threads_s, "--threads", 1, 1024) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  openblas_set_num_threads(threads);
  double own_enc = sgemm_gflops(4096, 1536, 384, NULL), own_sq = sgemm_gflops(2048, 2048, 2048, NULL);
  qv_pool *pool;
  if (pool_create(&pool, threads)) cli_die("cannot start threads");
  openblas_set_num_threads(1);
  double pool_enc = sgemm_gflops(4096, 1536, 384, pool), pool_sq = sgemm_gflops(2048, 2048, 2048, pool);
  pool_destroy(pool);
  double best = own_enc;
  if (own_sq > best) best = own_sq;
  if (pool_enc > best) best = pool_enc;
  if (pool_sq > best) best = pool_sq;
  printf("{\"threads\":%d,\"openblas_threads\":{\"encoder_shape\":%.1f,\"square\":%.1f},"
         "\"pool_slices\":{\"encoder_shape\":%.1f,\"square\":%.1f},\"gflops\":%.1f}\n",
         threads, own_enc, own_sq, pool_enc, pool_sq, best);
  return 0;
}

int cmd_bench(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "exact") == 0) return bench_exact(argc - 1, argv + 1);
  if (strcmp(argv[1], "embed") == 0) return bench_embed(argc - 1, argv + 1);
  if (strcmp(argv[1], "sgemm") == 0) return bench_sgemm(argc - 1, argv + 1);
  if (strcmp(argv[1], "ann") == 0) return cmd_bench_ann(argc - 1, argv + 1);
  cli_die("bench: unknown benchmark \"%s\" (try: exact, embed, sgemm, ann)", argv[1]);
}
