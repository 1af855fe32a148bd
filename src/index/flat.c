/* Exact search: score every allowed row against every query and keep the k best.
 *
 * One plan serves every case. The rows are cut into blocks; each block is one pool task,
 * and a task scores its block against the queries into a small per-worker buffer, then
 * offers the buffer to per-(worker, query) bounded heaps. The buffer is filled in one of
 * two ways:
 *   - kernel mode (one query, a few queries, or Manhattan, which has no product form):
 *     the SIMD kernels, one row at a time. Blocks are sized to stay in L2 so that, with
 *     several queries, each block is read from memory once rather than once per query.
 *   - GEMM mode (Cosine, Dot or Euclid with nq >= FLAT_GEMM_MIN_NQ): cblas_sgemm of a
 *     block of queries (FLAT_GEMM_QBLK, dim) against the block's rows (lda = stride),
 *     which reads each row once for many queries and runs at the BLAS kernel's
 *     throughput. Euclid uses |q|^2 + |x|^2 - 2 q.x clamped at 0; cancellation makes
 *     that less accurate than the direct kernel for near-duplicates (absolute error on
 *     the squared distance about 1e-7 * (|q|^2 + |x|^2)), the same trade FAISS makes.
 * After all blocks, each query's worker heaps are merged and sorted best-first.
 *
 * Inside, every score is turned into a key where higher is better (distances negated;
 * Euclid in GEMM mode keys on the negated squared distance, and its k results are then
 * rescored with the direct kernel, so reported Euclid distances are exact on both paths). NaN keys rank below every number, so a NaN never beats a real score but
 * still fills a list that would otherwise be short. Equal keys rank the lower row first.
 *
 * Threads: the pool is the only source of parallelism. OpenBLAS would otherwise start its
 * own threads inside each sgemm call made by each pool worker (2 x 2 threads on 2 cores),
 * so the first GEMM-mode search sets OpenBLAS to one thread for the whole process. Other
 * users of BLAS in the process are expected to parallelize over the pool as well. */
#include "index/flat.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "base/mem.h"
#include "index/distance.h"

#define FLAT_GEMM_MIN_NQ 8     /* below this, per-row kernels beat packing for sgemm */
#ifndef FLAT_GEMM_QBLK
/* Queries per sgemm call. OpenBLAS packs the row block once per call, so one call for
 * all queries (up to 1024) is ~3% faster than 256 at the cost of a 4 MiB buffer. */
#define FLAT_GEMM_QBLK 1024
#endif
#ifndef FLAT_GEMM_RBLK
#define FLAT_GEMM_RBLK 1024 /* rows per task in GEMM mode */
#endif
#define FLAT_SCAN_BYTES 262144 /* bytes of rows per task in kernel mode (fits L2) */
#define FLAT_PAR_WORK (1u << 23) /* nq * n * dim below which threads cost more than they save */

/* ---- Bounded heap: worst hit on top ----------------------------------------------------- */

static inline int hit_worse(flat_hit a, flat_hit b) {
  int an = a.score != a.score, bn = b.score != b.score;
  if (an != bn) return an;
  if (!an && a.score != b.score) return a.score < b.score;
  return a.row > b.row;
}

static void sift_up(flat_hit *h, size_t i) {
  flat_hit x = h[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!hit_worse(x, h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = x;
}

static void sift_down(flat_hit *h, size_t len, size_t i) {
  flat_hit x = h[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= len) break;
    if (c + 1 < len && hit_worse(h[c + 1], h[c])) c++;
    if (!hit_worse(h[c], x)) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = x;
}

/* Offers hit to a heap of capacity cap holding *len hits. */
static inline void heap_offer(flat_hit *h, size_t *len, size_t cap, flat_hit hit) {
  if (*len < cap) {
    h[*len] = hit;
    sift_up(h, (*len)++);
  } else if (hit_worse(h[0], hit)) {
    h[0] = hit;
    sift_down(h, cap, 0);
  }
}

/* Keys below this cannot enter the heap. NaN passes `!(key < thr)` and is then refused by
 * heap_offer unless the list is short. */
static inline float heap_threshold(const flat_hit *h, size_t len, size_t cap) {
  if (len < cap || h[0].score != h[0].score) return -INFINITY;
  return h[0].score;
}

static inline int mask_has(const uint64_t *mask, size_t r) {
  return (int)((mask[r >> 6] >> (r & 63)) & 1);
}

/* Whether any row in [r0, r0 + nr) is allowed. */
static int mask_any(const uint64_t *mask, size_t r0, size_t nr) {
  size_t r1 = r0 + nr;
  while (r0 < r1) {
    if ((r0 & 63) == 0 && r0 + 64 <= r1) {
      if (mask[r0 >> 6]) return 1;
      r0 += 64;
    } else {
      if (mask_has(mask, r0)) return 1;
      r0++;
    }
  }
  return 0;
}

/* The first j in [j, nr) whose key is not below thr (NaN counts as not below), or nr.
 * Once the heap is full almost every key is below, so the AVX-512 version, which tests
 * 16 at a time, is what keeps selection cheap next to sgemm. */
static size_t next_candidate_portable(const float *keys, size_t j, size_t nr, float thr) {
  while (j < nr && keys[j] < thr) j++;
  return j;
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static size_t next_candidate_avx512(const float *keys,
                                                                       size_t j, size_t nr,
                                                                       float thr) {
  __m512 t = _mm512_set1_ps(thr);
  for (; j + 16 <= nr; j += 16) {
    __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(keys + j), t, _CMP_NLT_UQ);
    if (hit) return j + (size_t)__builtin_ctz(hit);
  }
  return next_candidate_portable(keys, j, nr, thr);
}
#endif

typedef size_t (*next_fn)(const float *keys, size_t j, size_t nr, float thr);

/* Offers keys (nr) for rows r0.. to the heap, skipping rows not in mask. */
static void select_block(flat_hit *h, size_t *len, size_t cap, const float *keys, size_t nr,
                         size_t r0, const uint64_t *mask, next_fn next) {
  float thr = heap_threshold(h, *len, cap);
  for (size_t j = 0; (j = next(keys, j, nr, thr)) < nr; j++) {
    float key = keys[j];
    if (mask && !mask_has(mask, r0 + j)) continue;
    heap_offer(h, len, cap, (flat_hit){key, (uint32_t)(r0 + j)});
    thr = heap_threshold(h, *len, cap);
  }
}

/* ---- The search --------------------------------------------------------------------------- */

typedef struct search_ctx {
  const float *queries; /* (nq, dim) */
  const flat_matrix *m;
  const float *const *rows; /* (n) row pointers, or NULL: rows are m->data */
  const uint64_t *mask; /* (n bits) or NULL */
  const float *xnorms;  /* (n) Euclid in GEMM mode, else NULL */
  const float *qnorms;  /* (nq) Euclid in GEMM mode, else NULL */
  dist_fn kernel;       /* kernel mode; Euclid rescoring in GEMM mode */
  next_fn next;         /* selection prefilter for the kernels' ISA */
  qv_distance dist;
  int gemm;
  size_t nq, kk, rblk, qblk, nblocks;
  float *scores;        /* (workers, qblk, rblk) */
  float *gather;        /* (workers, rblk, stride) when rows in GEMM mode, else NULL */
  flat_hit *heaps;      /* (workers, nq, kk) */
  size_t *lens;         /* (workers, nq) */
} search_ctx;

static inline const float *row_at(const search_ctx *c, size_t r) {
  return c->rows ? c->rows[r] : c->m->data + r * c->m->stride;
}

/* Turns a kernel result into a key where higher is better. */
static inline float kernel_key(qv_distance d, float s) {
  switch (d) {
  case QV_DIST_EUCLID:
    return -sqrtf(s);
  case QV_DIST_MANHATTAN:
    return -s;
  default:
    return s;
  }
}

static void block_task(void *arg, size_t task, int worker) {
  search_ctx *c = arg;
  const flat_matrix *m = c->m;
  size_t r0 = task * c->rblk;
  size_t nr = m->n - r0 < c->rblk ? m->n - r0 : c->rblk;
  if (c->mask && !mask_any(c->mask, r0, nr)) return;
  float *s = c->scores + (size_t)worker * c->qblk * c->rblk; /* (qblk, nr) */
  flat_hit *heaps = c->heaps + (size_t)worker * c->nq * c->kk;
  size_t *lens = c->lens + (size_t)worker * c->nq;
  const float *x = c->rows ? NULL : m->data + r0 * m->stride; /* (nr, stride) */
  if (c->rows && c->gemm) {
    float *g = c->gather + (size_t)worker * c->rblk * m->stride;
    for (size_t j = 0; j < nr; j++) memcpy(g + j * m->stride, c->rows[r0 + j], m->dim * sizeof(float));
    x = g;
  }

  for (size_t q0 = 0; q0 < c->nq; q0 += c->qblk) {
    size_t nqb = c->nq - q0 < c->qblk ? c->nq - q0 : c->qblk;
    if (c->gemm) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nqb, (int)nr, (int)m->dim, 1.0f,
                  c->queries + q0 * m->dim, (int)m->dim, x, (int)m->stride, 0.0f, s, (int)nr);
    }
    for (size_t i = 0; i < nqb; i++) {
      size_t q = q0 + i;
      const float *qv = c->queries + q * m->dim;
      float *keys = s + i * nr; /* (nr) */
      if (!c->gemm) {
        for (size_t j = 0; j < nr; j++) {
          if (c->mask && !mask_has(c->mask, r0 + j)) {
            keys[j] = -INFINITY; /* select_block skips it */
            continue;
          }
          keys[j] = kernel_key(c->dist, c->kernel(qv, row_at(c, r0 + j), m->dim));
        }
      } else if (c->dist == QV_DIST_EUCLID) {
        const float *xn = c->xnorms + r0;
        float qn = c->qnorms[q];
        for (size_t j = 0; j < nr; j++) {
          float d2 = qn + xn[j] - 2.0f * keys[j];
          keys[j] = -(d2 < 0 ? 0 : d2); /* NaN stays NaN */
        }
      }
      select_block(heaps + q * c->kk, &lens[q], c->kk, keys, nr, r0, c->mask, c->next);
    }
  }
}

typedef struct norms_ctx {
  const search_ctx *s;
  const flat_matrix *m;
  float *out; /* (n) */
  dist_fn dot;
} norms_ctx;

#define NORMS_BLK 4096

static void norms_task(void *arg, size_t task, int worker) {
  norms_ctx *c = arg;
  size_t r0 = task * NORMS_BLK, r1 = r0 + NORMS_BLK < c->m->n ? r0 + NORMS_BLK : c->m->n;
  for (size_t r = r0; r < r1; r++) {
    const float *x = row_at(c->s, r);
    c->out[r] = c->dot(x, x, c->m->dim);
  }
}

typedef struct merge_ctx {
  search_ctx *s;
  int workers;
  flat_hit *hits; /* (nq, k) */
  size_t *counts; /* (nq) */
  size_t k;
} merge_ctx;

/* Merges query q's worker heaps into worker 0's, then writes it out best-first. */
static void merge_task(void *arg, size_t q, int worker) {
  merge_ctx *c = arg;
  search_ctx *s = c->s;
  flat_hit *h = s->heaps + q * s->kk;
  size_t len = s->lens[q];
  for (int w = 1; w < c->workers; w++) {
    const flat_hit *o = s->heaps + ((size_t)w * s->nq + q) * s->kk;
    size_t olen = s->lens[(size_t)w * s->nq + q];
    for (size_t i = 0; i < olen; i++) heap_offer(h, &len, s->kk, o[i]);
  }
  if (s->gemm && s->dist == QV_DIST_EUCLID) {
    /* The expanded form loses precision for near neighbours; the k survivors are cheap
     * to rescore with the direct kernel, so reported distances (and their order) are
     * exact and only membership at the k-th place carries the GEMM error. */
    const flat_matrix *m = s->m;
    const float *qv = s->queries + q * m->dim;
    for (size_t i = 0; i < len; i++)
      h[i].score = -sqrtf(s->kernel(qv, row_at(s, h[i].row), m->dim));
    for (size_t i = len / 2; i > 0; i--) sift_down(h, len, i - 1);
  }
  flat_hit *out = c->hits + q * c->k;
  c->counts[q] = len;
  for (size_t i = len; i > 0; i--) { /* pop the worst into the last free slot */
    flat_hit top = h[0];
    h[0] = h[i - 1];
    if (i - 1 > 0) sift_down(h, i - 1, 0);
    float key = top.score;
    if (!dist_higher_is_better(s->dist)) top.score = -key;
    out[i - 1] = top;
  }
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_thread(void) { openblas_set_num_threads(1); }

/* Sizes of the scratch block's parts, in bytes, each rounded up to QV_ALIGN. */
static int part_size(size_t *out, size_t a, size_t b, size_t elem) {
  size_t n;
  if (qv_mul_overflow(a, b, &n) || qv_mul_overflow(n, elem, &n)) return -1;
  if (n > SIZE_MAX - QV_ALIGN) return -1;
  *out = (n + QV_ALIGN - 1) & ~(size_t)(QV_ALIGN - 1);
  return 0;
}

static qv_status search(flat_hit *hits, size_t *counts, const float *queries, size_t nq,
                       const flat_matrix *m, const float *const *rows, qv_distance dist, size_t k,
                       const uint64_t *mask, qv_pool *pool) {
  if (nq == 0) return QV_OK;
  if (!counts || !m) return QV_EINVAL;
  if (k == 0 || m->n == 0) {
    memset(counts, 0, nq * sizeof *counts);
    return QV_OK;
  }
  if (!hits || !queries || (!m->data && !rows) || m->dim == 0 || m->stride < m->dim ||
      m->n > (size_t)UINT32_MAX || (unsigned)dist > QV_DIST_MANHATTAN)
    return QV_EINVAL;

  search_ctx c = {0};
  c.queries = queries;
  c.m = m;
  c.rows = rows;
  c.mask = mask;
  c.dist = dist;
  c.nq = nq;
  c.kk = k < m->n ? k : m->n;
  c.gemm = dist != QV_DIST_MANHATTAN && nq >= FLAT_GEMM_MIN_NQ && m->stride <= INT_MAX &&
           m->n <= INT_MAX;
  c.kernel = dist == QV_DIST_EUCLID      ? dist_get_kernels()->l2sq
             : dist == QV_DIST_MANHATTAN ? dist_get_kernels()->l1
                                         : dist_get_kernels()->dot;
  c.next = next_candidate_portable;
#if defined(__x86_64__)
  if (strcmp(dist_get_kernels()->isa, "avx512") == 0) c.next = next_candidate_avx512;
#endif
  if (c.gemm) {
    c.rblk = FLAT_GEMM_RBLK;
    c.qblk = FLAT_GEMM_QBLK < nq ? FLAT_GEMM_QBLK : nq;
  } else {
    size_t row_bytes = m->stride * sizeof(float);
    c.rblk = FLAT_SCAN_BYTES / row_bytes;
    if (c.rblk < 16) c.rblk = 16;
    c.qblk = 1;
  }
  if (c.rblk > m->n) c.rblk = m->n;
  c.nblocks = (m->n + c.rblk - 1) / c.rblk;

  /* Threads only pay off above some work; small searches run inline. */
  double work = (double)nq * (double)m->n * (double)m->dim;
  qv_pool *run_pool = work >= (double)FLAT_PAR_WORK ? pool : NULL;
  int workers = pool_size(run_pool);

  int need_norms = c.gemm && dist == QV_DIST_EUCLID;
  size_t sz_scores, sz_heaps, sz_lens, sz_xn = 0, sz_qn = 0, sz_gather = 0;
  if (part_size(&sz_scores, (size_t)workers * c.qblk, c.rblk, sizeof(float)) ||
      (rows && c.gemm && part_size(&sz_gather, (size_t)workers * c.rblk, m->stride, sizeof(float))) ||
      part_size(&sz_heaps, (size_t)workers * nq, c.kk, sizeof(flat_hit)) ||
      part_size(&sz_lens, (size_t)workers, nq, sizeof(size_t)) ||
      (need_norms && !m->sqnorms && part_size(&sz_xn, m->n, 1, sizeof(float))) ||
      (need_norms && part_size(&sz_qn, nq, 1, sizeof(float))))
    return QV_ENOMEM;
  size_t total = sz_scores;
  if (__builtin_add_overflow(total, sz_heaps, &total) ||
      __builtin_add_overflow(total, sz_lens, &total) ||
      __builtin_add_overflow(total, sz_xn, &total) ||
      __builtin_add_overflow(total, sz_qn, &total) ||
      __builtin_add_overflow(total, sz_gather, &total))
    return QV_ENOMEM;
  char *block = qv_aligned_alloc(total);
  if (!block) return QV_ENOMEM;
  c.scores = (float *)block;
  c.heaps = (flat_hit *)(block + sz_scores);
  c.lens = (size_t *)(block + sz_scores + sz_heaps);
  memset(c.lens, 0, (size_t)workers * nq * sizeof(size_t));
  char *next = block + sz_scores + sz_heaps + sz_lens;
  if (sz_gather) {
    c.gather = (float *)next;
    next += sz_gather;
  }

  if (need_norms) {
    dist_fn dot = dist_get_kernels()->dot;
    if (m->sqnorms) {
      c.xnorms = m->sqnorms;
    } else {
      float *xn = (float *)next;
      next += sz_xn;
      norms_ctx nc = {&c, m, xn, dot};
      pool_run(run_pool, (m->n + NORMS_BLK - 1) / NORMS_BLK, norms_task, &nc);
      c.xnorms = xn;
    }
    float *qn = (float *)next;
    for (size_t q = 0; q < nq; q++) qn[q] = dot(queries + q * m->dim, queries + q * m->dim, m->dim);
    c.qnorms = qn;
  }
  if (c.gemm) pthread_once(&blas_once, blas_single_thread);

  pool_run(run_pool, c.nblocks, block_task, &c);

  merge_ctx mc = {&c, workers, hits, counts, k};
  pool_run(run_pool, nq, merge_task, &mc);

  qv_aligned_free(block);
  return QV_OK;
}

qv_status flat_search(flat_hit *hits, size_t *counts, const float *queries, size_t nq,
                      const flat_matrix *m, qv_distance dist, size_t k, const uint64_t *mask,
                      qv_pool *pool) {
  return search(hits, counts, queries, nq, m, NULL, dist, k, mask, pool);
}

qv_status flat_search_rows(flat_hit *hits, size_t *counts, const float *queries, size_t nq,
                           const float *const *rows, const float *sqnorms, size_t n, size_t dim,
                           qv_distance dist, size_t k, const uint64_t *mask, qv_pool *pool) {
  /* the gather buffer's rows are stride floats apart: dim rounded up to a cache line */
  flat_matrix m = {NULL, sqnorms, n, dim, (dim + 15) & ~(size_t)15};
  return search(hits, counts, queries, nq, &m, rows, dist, k, mask, pool);
}
