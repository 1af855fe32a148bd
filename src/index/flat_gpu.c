/* The GPU-resident exact-search copy (see flat_gpu.h for how the store drives it).
 *
 * Invariants:
 *   1. host holds rows [0, n) as (cap, dim) floats; it is the source of the device copy
 *      and the CPU twin's data. Changed only by flat_gpu_set_rows under the write lock.
 *   2. resident => the backend has a QV_MAP_WEIGHT twin of [host, host + cap * dim) and
 *      rows [0, n) of it equal host's (set_rows copies each write with map_update
 *      before it returns; a failed copy drops residency, never leaves a stale twin).
 *   3. Growth reallocates host, so it unmaps first and maps the new block whole. */
#include "index/flat_gpu.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/log.h"
#include "base/mem.h"
#include "compute/device.h"

struct flat_gpu {
  pthread_rwlock_t lock;
  compute_dispatch *d;
  const qv_backend *be; /* the GPU backend the copy is mapped on, or NULL */
  float *host;          /* (cap, dim), invariant 1 */
  size_t n, cap, dim;
  qv_distance dist;
  int resident;         /* invariant 2 */
};

static int fits(const flat_gpu *g, size_t cap) {
  return g->be && g->be->map && g->be->search_exact && cap * g->dim * sizeof(float) <= device_budget_left();
}

static void make_resident(flat_gpu *g) {
  g->resident = 0;
  if (!g->d->gpu) return;
  g->be = g->d->gpu;
  if (!fits(g, g->cap)) return;
  if (g->be->map(g->be->ctx, g->host, g->cap * g->dim * sizeof(float), QV_MAP_WEIGHT)) return;
  g->resident = 1;
}

static void drop_resident(flat_gpu *g) {
  if (g->resident && g->be->unmap) g->be->unmap(g->be->ctx, g->host);
  g->resident = 0;
}

qv_status flat_gpu_create(flat_gpu **out, size_t dim, qv_distance dist, size_t cap, qv_error *err) {
  *out = NULL;
  if (!dim) return qv_fail(err, QV_EINVAL, "dimension 0");
  flat_gpu *g = calloc(1, sizeof *g);
  if (!g) return qv_fail(err, QV_ENOMEM, "out of memory");
  g->dim = dim;
  g->dist = dist;
  g->cap = cap ? cap : 1024;
  g->d = device_dispatch();
  size_t bytes;
  if (qv_mul_overflow(g->cap * sizeof(float), dim, &bytes) || !(g->host = qv_aligned_alloc(bytes))) {
    free(g);
    return qv_fail(err, QV_ENOMEM, "out of memory for %zu rows", cap);
  }
  pthread_rwlock_init(&g->lock, NULL);
  make_resident(g);
  *out = g;
  return QV_OK;
}

void flat_gpu_free(flat_gpu *g) {
  if (!g) return;
  drop_resident(g);
  pthread_rwlock_destroy(&g->lock);
  qv_aligned_free(g->host);
  free(g);
}

qv_status flat_gpu_set_rows(flat_gpu *g, size_t first, size_t count, const float *vecs, size_t stride,
                            qv_error *err) {
  if (first > g->n || stride < g->dim) return qv_fail(err, QV_EINVAL, "rows must be written in place or appended");
  if (!count) return QV_OK;
  pthread_rwlock_wrlock(&g->lock);
  qv_status st = QV_OK;
  size_t end = first + count;
  if (end > g->cap) { /* invariant 3 */
    size_t ncap = g->cap;
    while (ncap < end) ncap *= 2;
    size_t bytes;
    float *nh = qv_mul_overflow(ncap * sizeof(float), g->dim, &bytes) ? NULL : qv_aligned_alloc(bytes);
    if (!nh) {
      st = qv_fail(err, QV_ENOMEM, "out of memory for %zu rows", ncap);
      goto done;
    }
    memcpy(nh, g->host, g->n * g->dim * sizeof(float));
    int was = g->resident;
    drop_resident(g);
    qv_aligned_free(g->host);
    g->host = nh;
    g->cap = ncap;
    for (size_t r = 0; r < count; r++) memcpy(g->host + (first + r) * g->dim, vecs + r * stride, g->dim * sizeof(float));
    if (end > g->n) g->n = end;
    if (was || g->d->gpu) make_resident(g); /* maps the new block whole, rows included */
    goto done;
  }
  for (size_t r = 0; r < count; r++) memcpy(g->host + (first + r) * g->dim, vecs + r * stride, g->dim * sizeof(float));
  if (end > g->n) g->n = end;
  if (g->resident) {
    qv_status ms = g->be->map_update ? g->be->map_update(g->be->ctx, g->host + first * g->dim,
                                                         count * g->dim * sizeof(float))
                                     : QV_EUNSUPPORTED;
    if (ms) {
      LOG_WARN("gpu: cannot update the resident copy (%s); exact search on the CPU", qv_strerror(ms));
      drop_resident(g);
    }
  }
done:
  pthread_rwlock_unlock(&g->lock);
  return st;
}

qv_status flat_gpu_truncate(flat_gpu *g, size_t n, qv_error *err) {
  pthread_rwlock_wrlock(&g->lock);
  qv_status st = n <= g->n ? QV_OK : qv_fail(err, QV_EINVAL, "cannot truncate %zu rows to %zu", g->n, n);
  if (!st) g->n = n;
  pthread_rwlock_unlock(&g->lock);
  return st;
}

/* Caller holds the lock. */
static int can_search_locked(const flat_gpu *g, size_t k) {
  /* Manhattan has no product form and very large k does not suit the selection kernel:
   * the CPU serves those directly (not a fallback). */
  return g->resident && flat_gpu_supports(g->dist, k);
}

int flat_gpu_can_search(flat_gpu *g, size_t k) {
  pthread_rwlock_rdlock(&g->lock);
  int ok = can_search_locked(g, k);
  pthread_rwlock_unlock(&g->lock);
  return ok;
}

/* One unit on the device; caller holds the lock (read). */
static qv_status search_device_locked(flat_gpu *g, const qv_backend *be, flat_hit *hits, size_t *counts,
                                      const float *queries, size_t nq, size_t k, const uint64_t *mask) {
  if (!can_search_locked(g, k) || be != g->be || !be->search_exact) return QV_EUNSUPPORTED;
  if (nq == 0) return QV_OK;
  if (g->n == 0) {
    memset(counts, 0, nq * sizeof *counts);
    return QV_OK;
  }
  size_t cells;
  if (qv_mul_overflow(nq, k, &cells)) return QV_ENOMEM;
  float *scores = malloc(cells * sizeof *scores);   /* (nq, k) the device's scores */
  uint32_t *rows = malloc(cells * sizeof *rows);    /* (nq, k) */
  qv_status st = scores && rows ? QV_OK : QV_ENOMEM;
  if (!st)
    st = be->search_exact(be->ctx, scores, rows, counts, queries, nq, g->host, g->n, g->dim, g->dim, (int)g->dist, k,
                          mask);
  for (size_t i = 0; !st && i < cells; i++) hits[i] = (flat_hit){scores[i], rows[i]};
  free(scores);
  free(rows);
  return st;
}

qv_status flat_gpu_search_on(flat_gpu *g, const qv_backend *be, flat_hit *hits, size_t *counts,
                             const float *queries, size_t nq, size_t k, const uint64_t *mask) {
  pthread_rwlock_rdlock(&g->lock);
  qv_status st = search_device_locked(g, be, hits, counts, queries, nq, k, mask);
  pthread_rwlock_unlock(&g->lock);
  return st;
}

typedef struct search_work {
  flat_gpu *g;
  flat_hit *hits;       /* (nq, k) */
  size_t *counts;       /* (nq) */
  const float *queries; /* (nq, dim) */
  size_t nq, k;
  const uint64_t *mask;
  qv_pool *pool;
} search_work;

/* Caller holds the lock (read). */
static qv_status search_run(const qv_backend *be, void *arg) {
  search_work *w = arg;
  flat_gpu *g = w->g;
  if (be->search_exact) return search_device_locked(g, be, w->hits, w->counts, w->queries, w->nq, w->k, w->mask);
  flat_matrix m = {g->host, NULL, g->n, g->dim, g->dim};
  return flat_search(w->hits, w->counts, w->queries, w->nq, &m, g->dist, w->k, w->mask, w->pool);
}

qv_status flat_gpu_search(flat_gpu *g, flat_hit *hits, size_t *counts, const float *queries, size_t nq, size_t k,
                          const uint64_t *mask, qv_pool *pool) {
  qv_gpu_config cfg;
  device_config(&cfg);
  size_t batch = cfg.batch_size > 0 ? (size_t)cfg.batch_size : 64;
  pthread_rwlock_rdlock(&g->lock);
  qv_status st = QV_OK;
  if (g->n > 0 && nq > 0 && can_search_locked(g, k)) {
    /* gpu.batch_size bounds the queries per unit: it caps the device's scratch (scores
     * (batch, n) for the top-k) and what a failure has to rerun on the CPU. */
    for (size_t q0 = 0; q0 < nq && !st; q0 += batch) {
      size_t m = nq - q0 < batch ? nq - q0 : batch;
      search_work w = {g, hits + q0 * k, counts + q0, queries + q0 * g->dim, m, k, mask, pool};
      st = dispatch_run(g->d, search_run, &w, NULL, NULL);
    }
  } else {
    flat_matrix m = {g->host, NULL, g->n, g->dim, g->dim};
    st = flat_search(hits, counts, queries, nq, &m, g->dist, k, mask, pool);
  }
  pthread_rwlock_unlock(&g->lock);
  return st;
}

size_t flat_gpu_rows(const flat_gpu *g) { return g->n; }
int flat_gpu_resident(const flat_gpu *g) { return g->resident; }
