/* qv_gpu_bench: the CUDA backend's speed (`make gpu-bench`, where a GPU is lent).
 *   encoder: sentences/s for all-MiniLM-L6-v2 at sequence length 16, 128 and 512 and
 *            batch 1, 2, 4, ... 256 (random token ids, weights resident, one forward
 *            pass per batch including the copy of the last hidden state back to the host)
 *   search:  exact top-10 queries/s over 1M x 384 (Cosine) at batch 1, 100 and 1000, and
 *            the card's limit for reading the matrix once per batch at --bandwidth GB/s
 *            (default by device name; H200 4800, H100 3350, A100 2039)
 * One JSON object per line on stdout. Options: --quick (fewer sizes), --bandwidth GBS.
 * bench/gpu_bench.py measures the same with PyTorch where torch is importable. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/mem.h"
#include "compute/device.h"
#include "model/bert.h"
#include "model/safetensors.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int die(const char *what, const qv_error *err) {
  fprintf(stderr, "qv_gpu_bench: %s: %s\n", what, err && err->msg[0] ? err->msg : "failed");
  return 2;
}

static int bench_encoder(const qv_backend *g, const char *dir, int quick) {
  char p[1200];
  qv_error err = {0};
  bert_config cfg;
  st_file *st = NULL;
  bert_model *m = NULL;
  snprintf(p, sizeof p, "%s/config.json", dir);
  if (bert_config_read(&cfg, p, &err)) return die(p, &err);
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  if (st_open(&st, p, &err) || bert_load(&m, st, &cfg, &err)) return die(p, &err);
  static const int seqs[] = {16, 128, 512};
  for (size_t si = 0; si < 3; si++) {
    int T = seqs[si];
    if (T > cfg.max_pos) continue;
    for (int B = 1; B <= 256; B *= quick ? 4 : 2) {
      bert_workspace *ws = NULL;
      float *hidden = qv_aligned_alloc((size_t)B * T * cfg.hidden * sizeof(float));
      int32_t *ids = malloc((size_t)B * T * sizeof *ids);
      int *lens = malloc((size_t)B * sizeof *lens);
      if (!hidden || !ids || !lens || bert_workspace_new(&ws, m, B, T)) return die("workspace", NULL);
      for (int i = 0; i < B * T; i++) ids[i] = 1000 + (i * 7919) % 20000;
      for (int b = 0; b < B; b++) lens[b] = T;
      qv_status ms = bert_map(m, ws, hidden, (size_t)B * T * cfg.hidden, g);
      if (ms) return die("map", NULL);
      bert_forward(m, ws, g, hidden, ids, NULL, lens, B, T); /* warm-up: FP16 weight copies */
      int reps = 0;
      double t0 = now(), t;
      do {
        bert_forward(m, ws, g, hidden, ids, NULL, lens, B, T);
        reps++;
      } while ((t = now() - t0) < 0.5 && reps < 1000);
      qv_status dev = g->status ? g->status(g->ctx) : QV_OK;
      printf("{\"bench\":\"encoder\",\"backend\":\"%s\",\"seq\":%d,\"batch\":%d,\"sentences_per_s\":%.1f,"
             "\"status\":\"%s\"}\n",
             g->name, T, B, (double)B * reps / t, qv_strerror(dev));
      fflush(stdout);
      bert_unmap(m, ws, hidden, g);
      bert_workspace_free(ws);
      qv_aligned_free(hidden);
      free(ids);
      free(lens);
    }
  }
  bert_free(m);
  st_close(st);
  return 0;
}

static int bench_search(const qv_backend *g, double bw_gbs, int quick) {
  size_t n = quick ? 200000 : 1000000, dim = 384, k = 10;
  float *x = qv_aligned_alloc(n * dim * sizeof *x);
  float *q = qv_aligned_alloc(1000 * dim * sizeof *q);
  float *scores = malloc(1000 * k * sizeof *scores);
  uint32_t *rows = malloc(1000 * k * sizeof *rows);
  size_t *counts = malloc(1000 * sizeof *counts);
  if (!x || !q || !scores || !rows || !counts) return die("out of memory", NULL);
  unsigned long long s = 1;
  for (size_t i = 0; i < n * dim; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = (float)((s >> 40) * (1.0 / 16777216.0)) - 0.5f;
  }
  memcpy(q, x, 1000 * dim * sizeof *q);
  if (!g->search_exact || !g->map) return die("the backend has no exact search", NULL);
  if (g->map(g->ctx, x, n * dim * sizeof *x, QV_MAP_WEIGHT)) return die("map 1M x 384 on the device", NULL);
  static const size_t batches[] = {1, 100, 1000};
  for (size_t bi = 0; bi < 3; bi++) {
    size_t nq = batches[bi];
    g->search_exact(g->ctx, scores, rows, counts, q, nq, x, n, dim, dim, QV_DIST_COSINE, k, NULL);
    int reps = 0;
    double t0 = now(), t;
    do {
      g->search_exact(g->ctx, scores, rows, counts, q, nq, x, n, dim, dim, QV_DIST_COSINE, k, NULL);
      reps++;
    } while ((t = now() - t0) < 1.0 && reps < 10000);
    double qps = (double)nq * reps / t;
    double limit = bw_gbs > 0 ? (double)nq * bw_gbs * 1e9 / ((double)n * dim * sizeof(float)) : 0;
    qv_status dev = g->status ? g->status(g->ctx) : QV_OK;
    printf("{\"bench\":\"search\",\"backend\":\"%s\",\"n\":%zu,\"dim\":%zu,\"k\":%zu,\"batch\":%zu,"
           "\"queries_per_s\":%.1f,\"bandwidth_limit_qps\":%.1f,\"fraction_of_limit\":%.3f,\"top1_self\":%s,"
           "\"status\":\"%s\"}\n",
           g->name, n, dim, k, nq, qps, limit, limit > 0 ? qps / limit : 0,
           rows[0] == 0 && counts[0] == k ? "true" : "false", qv_strerror(dev));
    fflush(stdout);
  }
  g->unmap(g->ctx, x);
  qv_aligned_free(x);
  qv_aligned_free(q);
  free(scores);
  free(rows);
  free(counts);
  return 0;
}

int main(int argc, char **argv) {
  int quick = 0;
  double bw = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (!strcmp(argv[i], "--bandwidth") && i + 1 < argc) bw = atof(argv[++i]);
    else {
      fprintf(stderr, "usage: qv_gpu_bench [--quick] [--bandwidth GBS]\n");
      return 2;
    }
  }
  qv_gpu_config cfg;
  qv_error err = {0};
  qv_gpu_config_default(&cfg);
  cfg.enabled = QV_GPU_ON;
  if (qv_gpu_config_apply(&cfg, &err)) return die("gpu", &err);
  const qv_backend *g = device_dispatch()->gpu;
  qv_gpu_report r;
  qv_gpu_report_get(&r);
  if (bw <= 0)
    bw = strstr(r.info.name, "H200") ? 4800 : strstr(r.info.name, "H100") ? 3350 : strstr(r.info.name, "A100") ? 2039 : 0;
  printf("{\"device\":\"%s\",\"compute_capability\":\"%d.%d\",\"bandwidth_gbs\":%.0f}\n", r.info.name, r.info.cc_major,
         r.info.cc_minor, bw);
  const char *home = getenv("HOME"), *models = getenv("QUIVER_MODELS");
  char dir[1024];
  if (models && *models) snprintf(dir, sizeof dir, "%s/all-MiniLM-L6-v2", models);
  else snprintf(dir, sizeof dir, "%s/.cache/quiver/models/all-MiniLM-L6-v2", home ? home : ".");
  int rc = bench_encoder(g, dir, quick);
  if (!rc) rc = bench_search(g, bw, quick);
  return rc;
}
