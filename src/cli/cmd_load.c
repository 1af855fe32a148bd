/* quiver load COLLECTION FILE: vectors from .npy, .fvecs or JSON lines.
 *
 * The whole file is checked before anything is written (dimensions, finite components,
 * ids, JSON), so a bad file changes nothing. Points are then written in batches, each one
 * durable transaction: an interrupted load keeps the batches it finished. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "store/vecfile.h"

static const char usage[] =
    "usage: quiver load COLLECTION FILE [options]\n"
    "FILE is .npy (float32/float64, shape (n, d)), .fvecs, or .jsonl with one\n"
    "{\"id\": ..., \"vector\": [...], \"payload\": {...}} per line.\n"
    "options:\n"
    "  --data-dir DIR   data directory (default ./quiver-data)\n"
    "  --ids FILE       ids for .npy/.fvecs rows, one per line (default 0..n-1)\n"
    "  --batch N        points per transaction (default 1000)\n";

static int has_suffix(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

static void check_finite(const float *v, size_t dim, size_t row) {
  for (size_t i = 0; i < dim; i++)
    if (!isfinite(v[i])) cli_die("row %zu: component %zu is %s; nothing was loaded", row, i, isnan(v[i]) ? "NaN" : "infinite");
}

static void load_matrix(qv_collection *c, const char *path, const uint8_t *buf, size_t len,
                        const char *ids_path, size_t batch) {
  vecfile_matrix m = {0};
  qv_error err = {0};
  qv_status st = has_suffix(path, ".npy") ? vecfile_read_npy(&m, buf, len, &err)
                                          : vecfile_read_fvecs(&m, buf, len, &err);
  cli_check(st, &err, path);
  qv_collection_config cfg;
  qv_collection_config_get(c, &cfg);
  if (m.rows && m.cols != cfg.size)
    cli_die("%s: vectors have %zu dimensions; the collection's have %u; nothing was loaded", path, m.cols, cfg.size);
  for (size_t r = 0; r < m.rows; r++) check_finite(m.data + r * m.cols, m.cols, r);
  qv_point_id *ids = NULL;
  if (ids_path) {
    const uint8_t *ib;
    size_t il, nids;
    cli_check(vecfile_map(ids_path, &ib, &il, &err), &err, ids_path);
    cli_check(vecfile_read_ids(&ids, &nids, ib, il, &err), &err, ids_path);
    vecfile_unmap(ib, il);
    if (nids != m.rows) cli_die("%s has %zu ids for %zu rows; nothing was loaded", ids_path, nids, m.rows);
  }
  qv_point *pts = calloc(batch, sizeof *pts);
  if (!pts) cli_die("out of memory");
  cli_progress prog;
  cli_progress_start(&prog, "loading", "points", m.rows);
  double t0 = cli_now();
  for (size_t r0 = 0; r0 < m.rows; r0 += batch) {
    size_t nb = m.rows - r0 < batch ? m.rows - r0 : batch;
    for (size_t i = 0; i < nb; i++) {
      pts[i].vector = m.data + (r0 + i) * m.cols;
      pts[i].payload = NULL;
      if (ids) pts[i].id = ids[r0 + i];
      else pts[i].id = (qv_point_id){.kind = QV_ID_NUM, .num = r0 + i};
    }
    cli_check(qv_collection_upsert(c, pts, nb, &err), &err, "upsert");
    cli_progress_update(&prog, r0 + nb);
  }
  cli_progress_end(&prog, m.rows);
  printf("{\"loaded\":%zu,\"seconds\":%.3f}\n", m.rows, cli_now() - t0);
  free(pts);
  free(ids);
  vecfile_matrix_free(&m);
}

/* Calls fn for every non-blank line; returns the count of records. */
typedef void (*line_fn)(void *ctx, vecfile_record *rec, size_t lineno);

static size_t each_jsonl(const char *path, const uint8_t *buf, size_t len, line_fn fn, void *ctx) {
  size_t count = 0, lineno = 0;
  const char *p = (const char *)buf, *end = p + len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
    lineno++;
    vecfile_record rec;
    qv_error err = {0};
    qv_status st = vecfile_parse_jsonl_line(&rec, p, ll, &err);
    if (st != QV_NOTFOUND) {
      if (st) cli_die("%s:%zu: %s; nothing was loaded", path, lineno, err.msg[0] ? err.msg : qv_strerror(st));
      fn(ctx, &rec, lineno);
      count++;
    }
    p += ll + 1;
  }
  return count;
}

typedef struct jsonl_check {
  const char *path;
  uint32_t dim;
} jsonl_check;

static void check_line(void *arg, vecfile_record *rec, size_t lineno) {
  jsonl_check *jc = arg;
  if (rec->dim != jc->dim)
    cli_die("%s:%zu: vector has %zu dimensions; the collection's have %u; nothing was loaded", jc->path, lineno,
            rec->dim, jc->dim);
  for (size_t i = 0; i < rec->dim; i++)
    if (!isfinite(rec->vector[i]))
      cli_die("%s:%zu: component %zu is %s; nothing was loaded", jc->path, lineno, i,
              isnan(rec->vector[i]) ? "NaN" : "infinite");
  free(rec->vector);
  free(rec->payload);
}

typedef struct jsonl_load {
  qv_collection *c;
  qv_point *pts;
  size_t n, batch, done;
  cli_progress *prog;
} jsonl_load;

static void flush(jsonl_load *jl) {
  qv_error err = {0};
  cli_check(qv_collection_upsert(jl->c, jl->pts, jl->n, &err), &err, "upsert");
  jl->done += jl->n;
  for (size_t i = 0; i < jl->n; i++) {
    free((void *)jl->pts[i].vector);
    free((void *)jl->pts[i].payload);
  }
  jl->n = 0;
  cli_progress_update(jl->prog, jl->done);
}

static void load_line(void *arg, vecfile_record *rec, size_t lineno) {
  (void)lineno;
  jsonl_load *jl = arg;
  jl->pts[jl->n++] = (qv_point){rec->id, rec->vector, rec->payload};
  if (jl->n == jl->batch) flush(jl);
}

static void load_jsonl(qv_collection *c, const char *path, const uint8_t *buf, size_t len, size_t batch) {
  qv_collection_config cfg;
  qv_collection_config_get(c, &cfg);
  jsonl_check jc = {path, cfg.size};
  size_t total = each_jsonl(path, buf, len, check_line, &jc);
  cli_progress prog;
  cli_progress_start(&prog, "loading", "points", total);
  jsonl_load jl = {c, calloc(batch, sizeof(qv_point)), 0, batch, 0, &prog};
  if (!jl.pts) cli_die("out of memory");
  double t0 = cli_now();
  each_jsonl(path, buf, len, load_line, &jl);
  if (jl.n) flush(&jl);
  cli_progress_end(&prog, jl.done);
  printf("{\"loaded\":%zu,\"seconds\":%.3f}\n", jl.done, cli_now() - t0);
  free(jl.pts);
}

int cmd_load(int argc, char **argv) {
  const char *data_dir = NULL, *ids = NULL, *batch_s = "1000", *pos[2] = {0};
  cli_opt opts[] = {{"data-dir", &data_dir, NULL}, {"ids", &ids, NULL}, {"batch", &batch_s, NULL}, {0}};
  if (cli_parse(argc, argv, opts, pos, 2, usage) != 2) {
    fputs(usage, stderr);
    return 2;
  }
  size_t batch = (size_t)cli_int(batch_s, "--batch", 1, 1000000);
  const char *path = pos[1];
  int is_matrix = has_suffix(path, ".npy") || has_suffix(path, ".fvecs");
  int is_jsonl = has_suffix(path, ".jsonl") || has_suffix(path, ".ndjson") || has_suffix(path, ".json");
  if (!is_matrix && !is_jsonl) cli_die("%s: unknown file type; use .npy, .fvecs or .jsonl", path);
  if (ids && !is_matrix) cli_die("--ids applies to .npy and .fvecs files only");
  const uint8_t *buf;
  size_t len;
  qv_error err = {0};
  cli_check(vecfile_map(path, &buf, &len, &err), &err, path);
  if (len == 0) cli_die("%s: file is empty; nothing was loaded", path);
  qv_db *db = cli_open_db(data_dir);
  qv_collection *c = cli_open_collection(db, pos[0]);
  if (is_matrix) load_matrix(c, path, buf, len, ids, batch);
  else load_jsonl(c, path, buf, len, batch);
  vecfile_unmap(buf, len);
  qv_db_close(db);
  return 0;
}
