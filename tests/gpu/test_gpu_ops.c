/* The CUDA backend against the CPU oracle (run where a GPU is lent: `make gpu-test`).
 *
 * Every op, the full encoder and exact search are run on the device backend the device
 * layer loads (gpu: on) and on the CPU backend, and compared within these tolerances:
 *   linear, FP16/BF16 tensor cores, FP32 accumulation: |d| <= 2e-2 * (1 + |cpu|)
 *     (K up to 1536 products of values rounded to 11 / 8 mantissa bits)
 *   linear, FP32 (unmapped weight):          |d| <= 1e-4 * (1 + |cpu|)
 *   layernorm, GELU, tanh, attention:        |d| <= 1e-4 * (1 + |cpu|)
 *   embed:                                   exact
 *   encoder (all-MiniLM-L6-v2, mean pooled, normalized): cosine(gpu, cpu) >= 0.999
 *   exact search (Cosine/Dot/Euclid, k=10, with and without a mask): the same rows in
 *     the same order except where two scores lie within 1e-4 relative (then either
 *     order is right), scores within 1e-4 relative.
 *   a collection's searches (store/collection.c's device path: the copy made by the first
 *     search, then brought in step after upserts, replacements and deletes): the ids
 *     and scores of the same searches on the CPU, with the same near-tie allowance, and
 *     the device must have run them (its unit count moved).
 * With --self the "device" is the CPU backend itself: the harness's own logic (data,
 * comparisons, search bookkeeping) checked on machines without a GPU (ctest runs that).
 * Exit status 0 when every comparison holds. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/mem.h"
#include "compute/backend.h"
#include "compute/device.h"
#include "index/flat.h"

#include "harness.h"

static void test_linear(const qv_backend *g, const qv_backend *c, int map, double tol) {
  static const int shapes[][3] = {{1, 384, 384}, {7, 1152, 384}, {128, 1536, 384}, {128, 384, 1536}, {33, 5, 17}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
    float *x = rand_vec((size_t)M * K, 1), *w = rand_vec((size_t)N * K, 0.1f), *b = rand_vec((size_t)N, 0.5f);
    float *og = rand_vec((size_t)M * N, 0), *oc = rand_vec((size_t)M * N, 0);
    if (map && g->map) g->map(g->ctx, w, (size_t)N * K * sizeof(float), QV_MAP_WEIGHT);
    g->linear(g->ctx, og, x, w, b, M, N, K);
    if (g->sync) g->sync(g->ctx);
    c->linear(c->ctx, oc, x, w, b, M, N, K);
    char what[96];
    snprintf(what, sizeof what, "linear %s M=%d N=%d K=%d", map ? "low-precision" : "fp32", M, N, K);
    compare(what, og, oc, (size_t)M * N, tol);
    if (map && g->unmap) g->unmap(g->ctx, w);
    qv_aligned_free(x), qv_aligned_free(w), qv_aligned_free(b), qv_aligned_free(og), qv_aligned_free(oc);
  }
}

static void test_elementwise(const qv_backend *g, const qv_backend *c) {
  int rows = 300, C = 384;
  size_t n = (size_t)rows * C;
  float *x = rand_vec(n, 3), *r = rand_vec(n, 1), *w = rand_vec(C, 1), *b = rand_vec(C, 1);
  float *og = rand_vec(n, 0), *oc = rand_vec(n, 0);
  g->layernorm(g->ctx, og, x, r, w, b, rows, C, 1e-12f);
  if (g->sync) g->sync(g->ctx);
  c->layernorm(c->ctx, oc, x, r, w, b, rows, C, 1e-12f);
  compare("layernorm with residual", og, oc, n, 1e-4);
  memcpy(og, x, n * sizeof *x);
  memcpy(oc, x, n * sizeof *x);
  g->gelu(g->ctx, og, n);
  if (g->sync) g->sync(g->ctx);
  c->gelu(c->ctx, oc, n);
  compare("gelu (erf)", og, oc, n, 1e-4);
  memcpy(og, x, n * sizeof *x);
  memcpy(oc, x, n * sizeof *x);
  g->act_tanh(g->ctx, og, n);
  if (g->sync) g->sync(g->ctx);
  c->act_tanh(c->ctx, oc, n);
  compare("tanh", og, oc, n, 1e-4);
  qv_aligned_free(x), qv_aligned_free(r), qv_aligned_free(w), qv_aligned_free(b), qv_aligned_free(og),
      qv_aligned_free(oc);
}

static void test_attention(const qv_backend *g, const qv_backend *c) {
  static const int shapes[][2] = {{1, 1}, {4, 16}, {3, 128}, {2, 512}};
  int C = 384, NH = 12;
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    int B = shapes[s][0], T = shapes[s][1];
    int lens[8];
    for (int i = 0; i < B; i++) lens[i] = i == 0 ? T : 1 + (T * (i + 1) / (B + 1)) % T;
    size_t n = (size_t)B * T * C;
    float *qkv = rand_vec(3 * n, 1), *og = rand_vec(n, 0), *oc = rand_vec(n, 0);
    float *scr = rand_vec(c->attention_scratch(c->ctx, B, T, NH), 0);
    g->attention(g->ctx, og, qkv, lens, B, T, C, NH, scr);
    if (g->sync) g->sync(g->ctx);
    c->attention(c->ctx, oc, qkv, lens, B, T, C, NH, scr);
    char what[64];
    snprintf(what, sizeof what, "attention B=%d T=%d (padded)", B, T);
    compare(what, og, oc, n, 1e-4);
    qv_aligned_free(qkv), qv_aligned_free(og), qv_aligned_free(oc), qv_aligned_free(scr);
  }
}

static void test_embed(const qv_backend *g, const qv_backend *c) {
  int V = 1000, P = 64, B = 3, T = 20, C = 384, lens[3] = {20, 7, 1};
  float *word = rand_vec((size_t)V * C, 1), *pos = rand_vec((size_t)P * C, 1), *type = rand_vec(2 * (size_t)C, 1);
  int32_t ids[60], types[60];
  for (int i = 0; i < B * T; i++) ids[i] = (i * 37) % V, types[i] = i % 2;
  size_t n = (size_t)B * T * C;
  float *og = rand_vec(n, 0), *oc = rand_vec(n, 0);
  if (g->map) {
    g->map(g->ctx, word, (size_t)V * C * 4, QV_MAP_WEIGHT);
    g->map(g->ctx, pos, (size_t)P * C * 4, QV_MAP_WEIGHT);
    g->map(g->ctx, type, 2 * (size_t)C * 4, QV_MAP_WEIGHT);
  }
  g->embed(g->ctx, og, ids, types, word, pos, type, lens, B, T, C);
  if (g->sync) g->sync(g->ctx);
  c->embed(c->ctx, oc, ids, types, word, pos, type, lens, B, T, C);
  compare("embed (exact)", og, oc, n, 0);
  if (g->unmap) g->unmap(g->ctx, word), g->unmap(g->ctx, pos), g->unmap(g->ctx, type);
  qv_aligned_free(word), qv_aligned_free(pos), qv_aligned_free(type), qv_aligned_free(og), qv_aligned_free(oc);
}

/* The device's results against flat_search; a swap of two rows whose scores are within
 * tolerance is allowed. */
static void test_search(const qv_backend *g, qv_distance dist, int masked) {
  size_t n = 20000, dim = 384, nq = 37, k = 10;
  float *x = rand_vec(n * dim, 1), *q = rand_vec(nq * dim, 1);
  uint64_t *mask = NULL;
  if (masked) {
    mask = calloc((n + 63) / 64, 8);
    for (size_t r = 0; r < n; r += 3) mask[r / 64] |= 1ull << (r % 64);
  }
  flat_hit *hits = calloc(nq * k, sizeof *hits);
  size_t *cc = calloc(nq, sizeof *cc), *gc = calloc(nq, sizeof *gc);
  float *gs = calloc(nq * k, sizeof *gs);
  uint32_t *gr = calloc(nq * k, sizeof *gr);
  flat_matrix m = {x, NULL, n, dim, dim};
  flat_search(hits, cc, q, nq, &m, dist, k, mask, NULL);
  qv_status st = QV_EUNSUPPORTED;
  if (g->search_exact) {
    if (g->map) g->map(g->ctx, x, n * dim * 4, QV_MAP_WEIGHT);
    st = g->search_exact(g->ctx, gs, gr, gc, q, nq, x, n, dim, dim, (int)dist, k, mask);
    if (g->unmap) g->unmap(g->ctx, x);
  } else { /* --self: the CPU twin stands in */
    for (size_t i = 0; i < nq; i++) {
      gc[i] = cc[i];
      for (size_t j = 0; j < cc[i]; j++) gs[i * k + j] = hits[i * k + j].score, gr[i * k + j] = hits[i * k + j].row;
    }
    st = QV_OK;
  }
  int ok = st == QV_OK;
  double worst = 0;
  for (size_t i = 0; i < nq && ok; i++) {
    ok = gc[i] == cc[i];
    for (size_t j = 0; j < cc[i] && ok; j++) {
      float cs = hits[i * k + j].score;
      double d = fabs((double)gs[i * k + j] - cs) / (1 + fabs(cs));
      if (d > worst) worst = d;
      if (d > 1e-4) ok = 0;
      if (gr[i * k + j] != hits[i * k + j].row) {
        /* allowed only as a near-tie with a neighbour */
        int tie = (j + 1 < cc[i] && gr[i * k + j] == hits[i * k + j + 1].row &&
                   fabs(hits[i * k + j + 1].score - cs) <= 1e-4 * (1 + fabs(cs))) ||
                  (j > 0 && gr[i * k + j] == hits[i * k + j - 1].row &&
                   fabs(hits[i * k + j - 1].score - cs) <= 1e-4 * (1 + fabs(cs)));
        if (!tie) ok = 0;
      }
    }
  }
  checks++;
  if (!ok) failures++;
  printf("%-4s exact search %-9s k=%zu nq=%zu n=%zu%s  max rel err %.3g (status %s)\n", ok ? "ok" : "FAIL",
         qv_distance_name(dist), k, nq, n, masked ? " masked" : "", worst, qv_strerror(st));
  qv_aligned_free(x), qv_aligned_free(q);
  free(mask), free(hits), free(cc), free(gc), free(gs), free(gr);
}

/* Applies gpu: on (fallback off, so a device failure shows) or off. */
static int apply_gpu(int on) {
  qv_gpu_config cfg;
  qv_gpu_config_default(&cfg);
  cfg.enabled = on ? QV_GPU_ON : QV_GPU_OFF;
  cfg.fallback_to_cpu = 0;
  qv_error err = {0};
  if (qv_gpu_config_apply(&cfg, &err) == QV_OK) return 0;
  printf("FAIL gpu config: %s\n", err.msg);
  return 1;
}

/* Opens the collection in dir, optionally writes (upserts ids [from, to) with vectors
 * x, replaces ids below 100, deletes every 7th id), runs nq searches and returns their
 * results in out (nq). The collection is closed before returning, so the device copy is
 * gone before the device layer is set up again. */
static qv_status collection_pass(const char *dir, int create, const float *x, size_t dim, size_t from, size_t to,
                                 const float *q, size_t nq, size_t k, qv_records *out, int search_first,
                                 qv_error *err) {
  qv_db *db = NULL;
  qv_collection *c = NULL;
  qv_status st = qv_db_open(&db, dir, err);
  qv_collection_config cc = {.size = (uint32_t)dim, .distance = QV_DIST_COSINE};
  if (!st && create) st = qv_collection_create(db, "g", &cc, err);
  if (!st) st = qv_collection_open(db, "g", &c, err);
  qv_search_params p = {.limit = k};
  if (!st && search_first) { /* makes the device copy before the writes below */
    st = qv_collection_search(c, q, nq, &p, out, err);
    for (size_t i = 0; i < nq; i++) qv_records_free(&out[i]);
  }
  for (size_t i = from; !st && i < to; i += 500) {
    size_t m = to - i < 500 ? to - i : 500;
    qv_point pts[500];
    for (size_t j = 0; j < m; j++)
      pts[j] = (qv_point){{.kind = QV_ID_NUM, .num = i + j}, x + (i + j) * dim, NULL};
    st = qv_collection_upsert(c, pts, m, err);
  }
  if (!st && to > from) {
    qv_point pts[100];
    for (size_t j = 0; j < 100; j++) pts[j] = (qv_point){{.kind = QV_ID_NUM, .num = j}, x + (to - 1 - j) * dim, NULL};
    st = qv_collection_upsert(c, pts, 100, err);
    qv_point_id del[200];
    for (size_t j = 0; j < 200; j++) del[j] = (qv_point_id){.kind = QV_ID_NUM, .num = 7 * j + 3};
    if (!st) st = qv_collection_delete_ids(c, del, 200, NULL, err);
  }
  if (!st) st = qv_collection_search(c, q, nq, &p, out, err);
  qv_db_close(db);
  return st;
}

static void test_collection(int self) {
  size_t n = 6000, dim = 64, nq = 40, k = 10;
  float *x = rand_vec(n * dim, 1), *q = rand_vec(nq * dim, 1);
  char dir[] = "/tmp/qv-gpu-test-XXXXXX";
  qv_records *g = calloc(nq, sizeof *g), *c = calloc(nq, sizeof *c);
  qv_error err = {0};
  int ok = mkdtemp(dir) != NULL;
  qv_status st = ok ? QV_OK : (qv_status)errno;
  qv_gpu_stats before, after;
  /* on the device: 4000 points, a search (the copy), 2000 more + replacements + deletes */
  if (!st && apply_gpu(!self)) st = QV_EDEVICE;
  if (!st) st = collection_pass(dir, 1, x, dim, 0, 4000, q, nq, k, g, 0, &err);
  for (size_t i = 0; i < nq; i++) qv_records_free(&g[i]);
  qv_gpu_stats_get(&before);
  if (!st) st = collection_pass(dir, 0, x, dim, 4000, n, q, nq, k, g, 1, &err);
  qv_gpu_stats_get(&after);
  /* the same points searched on the CPU */
  if (!st && apply_gpu(0)) st = QV_EDEVICE;
  if (!st) st = collection_pass(dir, 0, x, dim, 0, 0, q, nq, k, c, 0, &err);
  ok = !st && (self || after.gpu_runs_total >= before.gpu_runs_total + 2);
  double worst = 0;
  for (size_t i = 0; i < nq && ok; i++) {
    ok = g[i].count == c[i].count && c[i].count == k;
    for (size_t j = 0; j < c[i].count && ok; j++) {
      float cs = c[i].items[j].score;
      double d = fabs((double)g[i].items[j].score - cs) / (1 + fabs(cs));
      if (d > worst) worst = d;
      if (d > 1e-4) ok = 0;
      if (g[i].items[j].id.num != c[i].items[j].id.num) {
        int tie = (j + 1 < c[i].count && g[i].items[j].id.num == c[i].items[j + 1].id.num &&
                   fabs(c[i].items[j + 1].score - cs) <= 1e-4 * (1 + fabs(cs))) ||
                  (j > 0 && g[i].items[j].id.num == c[i].items[j - 1].id.num &&
                   fabs(c[i].items[j - 1].score - cs) <= 1e-4 * (1 + fabs(cs)));
        if (!tie) ok = 0;
      }
    }
  }
  checks++;
  if (!ok) failures++;
  printf("%-4s collection search after writes, Cosine k=%zu nq=%zu n=%zu  max rel err %.3g, device units %llu (%s)\n",
         ok ? "ok" : "FAIL", k, nq, n, worst, (unsigned long long)(after.gpu_runs_total - before.gpu_runs_total),
         st ? err.msg : "ok");
  for (size_t i = 0; i < nq; i++) qv_records_free(&g[i]), qv_records_free(&c[i]);
  free(g), free(c);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) printf("note: could not remove %s\n", dir);
  qv_aligned_free(x), qv_aligned_free(q);
}

static void test_encoder(int self) {
  static const char *texts[] = {"a GPU runs the encoder", "short", "",
                                "a much longer sentence that goes on for a while so that padding matters in the batch",
                                "semantic search over documents", "café naïve résumé"};
  size_t n = sizeof texts / sizeof texts[0];
  float out[2][6 * 384];
  for (int pass = 0; pass < 2; pass++) {
    qv_gpu_config cfg;
    qv_gpu_config_default(&cfg);
    cfg.enabled = pass == 0 && !self ? QV_GPU_ON : QV_GPU_OFF;
    cfg.fallback_to_cpu = 0; /* a GPU failure must show here, not be hidden by the CPU */
    qv_error err = {0};
    qv_model *m = NULL;
    qv_status st = qv_gpu_config_apply(&cfg, &err);
    if (!st) st = qv_model_load(&m, "all-MiniLM-L6-v2", &err);
    if (!st) st = qv_model_encode(m, texts, NULL, n, 1, out[pass], &err);
    qv_model_free(m);
    if (st) {
      checks++, failures++;
      printf("FAIL encoder (%s): %s\n", pass ? "cpu" : "gpu", err.msg);
      return;
    }
  }
  double worst = 1;
  for (size_t i = 0; i < n; i++) {
    double dot = 0, a = 0, b = 0;
    for (size_t d = 0; d < 384; d++) {
      dot += (double)out[0][i * 384 + d] * out[1][i * 384 + d];
      a += (double)out[0][i * 384 + d] * out[0][i * 384 + d];
      b += (double)out[1][i * 384 + d] * out[1][i * 384 + d];
    }
    double cs = dot / sqrt(a * b);
    if (!(cs >= worst)) worst = cs;
  }
  checks++;
  int ok = worst >= 0.999;
  if (!ok) failures++;
  printf("%-4s encoder all-MiniLM-L6-v2, %zu texts: min cosine(gpu, cpu) %.6f (>= 0.999)\n", ok ? "ok" : "FAIL", n,
         worst);
}

int main(int argc, char **argv) {
  int self = argc > 1 && !strcmp(argv[1], "--self");
  const qv_backend *c = backend_cpu(), *g = c;
  if (!self) g = harness_gpu("qv_gpu_test");
  test_linear(g, c, 1, self ? 0 : 2e-2);
  test_linear(g, c, 0, self ? 0 : 1e-4);
  test_elementwise(g, c);
  test_attention(g, c);
  test_embed(g, c);
  test_search(self ? c : g, QV_DIST_COSINE, 0);
  test_search(self ? c : g, QV_DIST_DOT, 1);
  test_search(self ? c : g, QV_DIST_EUCLID, 0);
  /* asked before test_encoder and test_collection set the device layer up again (which
   * closes this backend's context) */
  if (!self && g->status) {
    qv_status st = g->status(g->ctx);
    checks++;
    if (st) failures++;
    printf("%-4s no device error recorded (%s)\n", st ? "FAIL" : "ok", qv_strerror(st));
  }
  test_encoder(self);
  test_collection(self);
  printf("%d of %d comparisons hold\n", checks - failures, checks);
  return failures ? 1 : 0;
}
