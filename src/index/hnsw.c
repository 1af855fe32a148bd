/* HNSW graph: storage, insertion, search, persistence.
 *
 * Layout. Every node has one level-0 block of `stride` bytes (a multiple of 64; of 8
 * with int8 codes, see hnsw_quantize_int8):
 *
 *   0  u16 count0            links in use on level 0          (atomic: written under lock)
 *   2  u8  level             top level of the node            (written before publication)
 *   3  u8  flags             bit 0 = deleted                  (atomic)
 *   4  u32 lock              the node's spinlock              (atomic)
 *   8  u32 links[M0]         level-0 neighbours, M0 = 2M      (atomic: written under lock)
 *   .  u64 label             the caller's label               (written before publication)
 *   .  u32 *upper            level-1.. lists, or NULL         (written before publication)
 *   .  pad to 64
 *   vec_off  float vector[dim], padded to 64 bytes
 *
 * hnswlib puts the label after the vector; here it sits in the gap that aligning the
 * vector to 64 bytes leaves anyway, which saves 64 bytes a node for M=16, dim=128 (768 ->
 * 704 bytes). The vector starts a cache line, so a distance touches ceil(4 dim / 64)
 * lines and never splits a load. Upper levels exist only for nodes that have them: one
 * malloc'd array per node of level x (M + 1) u32, each level [count | M links].
 *
 * Blocks live in chunks of geometric size (chunk c holds B << c nodes, B chosen so chunk
 * 0 is about 64 KiB), found from the id with one count-leading-zeros. Growing adds a
 * chunk and never moves a node, so readers need no lock against growth, and the chunk
 * table has a fixed 32 entries. The price is a few integer instructions per node address
 * against hnswlib's one multiply; realloc-style doubling would instead have to stop all
 * readers while it copies.
 *
 * Invariants (all threads):
 *  1. A node is published (reachable from another node's list or the entry point) only
 *     after its block, vector, label, level and upper arrays are written (hnsw_add before
 *     insert_node). Links and counts are stored with release and loaded with acquire, so
 *     whoever reads an id from a list also sees that node fully written.
 *  2. A node's lists are written only while its spinlock is held (connect), except by
 *     hnsw_load, which runs before anyone else sees the index.
 *  3. Every slot below a list's count holds a valid, published id, at all times: a list is
 *     rewritten slot by slot and its count stored last, and no count ever exceeds the
 *     slots written. A reader may see a mix of an old and a new list; never garbage.
 *  4. An insert connects bottom-up (level 0 first) after searching top-down, so once a
 *     node is reachable on level l its lists on every level below l are already set.
 *     hnswlib instead holds the new node's mutex for the whole insert and makes searches
 *     during construction lock each node they expand; here nothing waits on a node while
 *     another thread walks the graph.
 *  5. The entry point (id and top level, packed in one u64) changes only under level_mu;
 *     an insert whose level exceeds the current top holds level_mu for its whole insert,
 *     as hnswlib's does, so two such inserts never race to become the entry point.
 *  6. ids are handed out by a CAS on `next` only after the chunk holding them exists, so
 *     every id below next has a block (alloc_id). An id whose insert then fails is kept
 *     as a deleted node with no links: never reachable, never returned.
 *  7. hnsw_save holds save_lock for writing; adds and deletes hold it for reading, so a
 *     save sees no half-inserted node.
 *
 * Seam for int8 scalar quantization: every distance goes through `space` (one kernel
 * pointer fetched once per call, a sign) and every stored vector through vec_of(). A
 * quantized index will store codes where the vector is and swap both, keeping the graph
 * code as it is. */
#define _GNU_SOURCE /* mkostemp, pthread_rwlockattr_setkind_np */
#include "index/hnsw.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "base/file.h"
#include "base/hash.h"
#include "base/mem.h"
#include "index/distance.h"

#define EP_NONE UINT64_MAX
#define CHK 0x80000000u /* in a beam entry: already expanded */
#define ID_MASK 0x7fffffffu
#define MAX_CHUNKS 32
#define CHUNK0_BYTES 65536
#define OFF_LINKS 8
/* Prefetching, tuned on 100k x 128: the first line of every unvisited neighbour at once
 * (gather), then the rest of each vector PREFETCH_AHEAD distances ahead of its use, at
 * most PREFETCH_MAX_BYTES of it (the L2 streamer follows beyond that). Issuing every line
 * of all 32 neighbours up front measured about 10% slower: the prefetch instructions
 * stall once the miss queue is full. */
#define PREFETCH_AHEAD 2
#define PREFETCH_MAX_BYTES 2048

#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

typedef struct cand {
  float d;     /* internal distance: lower is closer */
  uint32_t id; /* may carry CHK inside a beam */
} cand;

/* Per-search working memory, pooled in the index (scratch_get / scratch_put). */
typedef struct scratch {
  struct scratch *next;
  uint16_t *vis; /* (vcap) visited tags */
  size_t vcap;
  uint16_t tag;
  cand *pool; /* (pool_cap) the beam, or the result heap of a filtered search */
  size_t pool_cap;
  cand *heap; /* (heap_cap) candidate queue of a filtered search */
  size_t heap_cap;
  float *q;          /* (dim) the query, copied (normalized for Cosine) */
  uint32_t *todo;    /* (M0) unvisited neighbours of the node being expanded */
  const float **todov; /* (M0) their vectors */
  cand *sel;         /* ((HNSW_MAX_LEVEL + 1) * M) neighbours chosen per level */
  size_t nsel[HNSW_MAX_LEVEL + 1];
  cand *batch;       /* (M0) one expansion's neighbours that beat the beam's worst */
  cand *tmp;         /* (M0 + 1) a list being pruned */
  cand *kept;        /* (M0 + 1) */
  const float **kv;  /* (M0 + 1) vectors of kept candidates */
  size_t bytes;
} scratch;

typedef struct space {
  dist_fn fn;
  float sign; /* -1 for inner product: distance = -dot */
  size_t dim;
  const struct hnsw *q8; /* int8 codes: "vectors" point at codes (see q8_dist); else NULL */
} space;

struct hnsw {
  /* read-only after hnsw_new / hnsw_load */
  size_t dim;
  qv_distance metric;
  uint32_t M, M0, ef_construct;
  uint64_t seed;
  double mult;
  size_t stride, off_label, off_upper, off_vec;
  unsigned cshift; /* chunk 0 holds 1 << cshift nodes */
  /* Int8 scalar quantization (hnsw_quantize_int8): each stored vector is dim u8 codes c
   * with x ~ q_lo + q_step * c, then (at q_sum_off) the float sum of its codes. */
  int quant;
  float q_lo, q_hi, q_step;
  uint32_t (*q8_fn)(const uint8_t *, const uint8_t *, size_t); /* the metric's code kernel */
  size_t q_sum_off;

  unsigned char *chunks[MAX_CHUNKS]; /* atomic */
  uint64_t cap;                      /* atomic: ids with a block */
  uint64_t next;                     /* atomic: ids handed out */
  uint64_t deleted;                  /* atomic */
  uint64_t upper_bytes;              /* atomic */
  uint64_t scratch_bytes;            /* atomic */
  uint64_t ep;                       /* atomic: level << 32 | id, or EP_NONE */

  pthread_mutex_t grow_mu;
  pthread_mutex_t level_mu;
  pthread_rwlock_t save_lock;
  pthread_mutex_t scratch_mu;
  scratch *free_scratch;
};

/* ---- Node access --------------------------------------------------------------------- */

static inline unsigned char *node_at(const hnsw *h, uint32_t id) {
  uint64_t t = ((uint64_t)id >> h->cshift) + 1;
  unsigned c = 63u - (unsigned)__builtin_clzll(t);
  uint64_t first = (((uint64_t)1 << c) - 1) << h->cshift;
  unsigned char *base = LOAD_RLX((unsigned char *const *)&h->chunks[c]);
  return base + ((uint64_t)id - first) * h->stride;
}

static inline uint16_t *count0_of(unsigned char *n) { return (uint16_t *)n; }
static inline int level_of(const unsigned char *n) { return n[2]; }
static inline uint8_t *flags_of(unsigned char *n) { return n + 3; }
static inline uint32_t *lock_of(unsigned char *n) { return (uint32_t *)(n + 4); }
static inline uint32_t *links0_of(unsigned char *n) { return (uint32_t *)(n + OFF_LINKS); }
static inline const float *vec_of(const hnsw *h, const unsigned char *n) {
  return (const float *)(n + h->off_vec);
}
static inline uint32_t *upper_of(const hnsw *h, const unsigned char *n) {
  uint32_t *u;
  memcpy(&u, n + h->off_upper, sizeof u);
  return u;
}

/* The list of node n on level l: sets *links, returns the count (acquire). */
static inline uint32_t list_get(const hnsw *h, unsigned char *n, int l, uint32_t **links) {
  if (l == 0) {
    *links = links0_of(n);
    return LOAD_ACQ(count0_of(n));
  }
  uint32_t *u = upper_of(h, n) + (size_t)(l - 1) * (h->M + 1);
  *links = u + 1;
  return LOAD_ACQ(u);
}

/* Rewrites a list: slots first, count last (invariant 3). Caller holds n's lock. */
static void list_set(const hnsw *h, unsigned char *n, int l, const cand *c, size_t cnt) {
  uint32_t *links;
  list_get(h, n, l, &links);
  for (size_t i = 0; i < cnt; i++) STORE_REL(&links[i], c[i].id & ID_MASK);
  if (l == 0) STORE_REL(count0_of(n), (uint16_t)cnt);
  else STORE_REL(links - 1, (uint32_t)cnt);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

/* Critical sections are a few hundred distance computations at most, so spin; yield
 * after a while in case the holder was preempted (2 threads on 2 busy cores). */
static void node_lock(unsigned char *n) {
  uint32_t *l = lock_of(n);
  unsigned spins = 0;
  while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) {
    while (LOAD_RLX(l)) {
      if (++spins < 128) cpu_relax();
      else sched_yield();
    }
  }
}
static void node_unlock(unsigned char *n) { STORE_REL(lock_of(n), 0); }

/* The rest of a vector whose first line is already on its way (see gather). */
static inline void prefetch_rest(const hnsw *h, const float *v) {
  const char *p = (const char *)v;
  size_t bytes = h->quant ? h->q_sum_off + 4 : h->dim * sizeof(float);
  if (bytes > PREFETCH_MAX_BYTES) bytes = PREFETCH_MAX_BYTES;
  for (size_t o = 64; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 3);
}

/* ---- Int8 codes --------------------------------------------------------------------------
 * With quantization on, the graph code is unchanged: every `const float *` vector it
 * passes around points at a node's codes (or the query's, encoded in place in the
 * scratch area), and dist() sends them here. Codes are unsigned so that the integer sums
 * fit u32 up to QV_MAX_VECTOR_SIZE dimensions (255^2 * 65536 < 2^32). */

typedef uint32_t (*u8_fn)(const uint8_t *, const uint8_t *, size_t);

static uint32_t u8_dot_c(const uint8_t *a, const uint8_t *b, size_t n) {
  uint32_t s = 0;
  for (size_t i = 0; i < n; i++) s += (uint32_t)a[i] * b[i];
  return s;
}
static uint32_t u8_l2_c(const uint8_t *a, const uint8_t *b, size_t n) {
  uint32_t s = 0;
  for (size_t i = 0; i < n; i++) {
    int d = (int)a[i] - (int)b[i];
    s += (uint32_t)(d * d);
  }
  return s;
}
static uint32_t u8_l1_c(const uint8_t *a, const uint8_t *b, size_t n) {
  uint32_t s = 0;
  for (size_t i = 0; i < n; i++) s += (uint32_t)abs((int)a[i] - (int)b[i]);
  return s;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint32_t hsum_epi32(__m256i v) {
  __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4e));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xb1));
  return (uint32_t)_mm_cvtsi128_si32(x);
}
/* 16 codes widened to i16, multiplied pairwise and summed into i32 lanes (madd): each
 * lane stays below 2 * 255^2, and the u32 total wraps back to the exact sum. */
__attribute__((target("avx2"))) static uint32_t u8_dot_avx2(const uint8_t *a, const uint8_t *b, size_t n) {
  __m256i acc = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(a + i)));
    __m256i y = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(b + i)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, y));
  }
  return hsum_epi32(acc) + u8_dot_c(a + i, b + i, n - i);
}
__attribute__((target("avx2"))) static uint32_t u8_l2_avx2(const uint8_t *a, const uint8_t *b, size_t n) {
  __m256i acc = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(a + i)));
    __m256i y = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(b + i)));
    __m256i d = _mm256_sub_epi16(x, y);
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(d, d));
  }
  return hsum_epi32(acc) + u8_l2_c(a + i, b + i, n - i);
}
__attribute__((target("avx2"))) static uint32_t u8_l1_avx2(const uint8_t *a, const uint8_t *b, size_t n) {
  __m256i acc = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(a + i)),
                                                 _mm256_loadu_si256((const __m256i *)(b + i))));
  __m128i x = _mm_add_epi64(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  x = _mm_add_epi64(x, _mm_unpackhi_epi64(x, x));
  return (uint32_t)_mm_cvtsi128_si64(x) + u8_l1_c(a + i, b + i, n - i);
}
#endif

#if defined(__x86_64__)
#define U8_AVX2(name) name##_avx2
#else
#define U8_AVX2(name) name##_c
#endif

/* The code kernel for a metric: AVX2 where the CPU has it, unless the float kernels were
 * capped to the portable ones (QUIVER_ISA=portable, dist_force_isa), so that one setting
 * selects the portable path everywhere and tests can run it on AVX2 machines. */
static u8_fn u8_kernel(qv_distance metric) {
  int avx2 = 0;
#if defined(__x86_64__)
  avx2 = strcmp(dist_isa(), "portable") != 0 && __builtin_cpu_supports("avx2");
#endif
  switch (metric) {
  case QV_DIST_EUCLID:
    return avx2 ? U8_AVX2(u8_l2) : u8_l2_c;
  case QV_DIST_MANHATTAN:
    return avx2 ? U8_AVX2(u8_l1) : u8_l1_c;
  default:
    return avx2 ? U8_AVX2(u8_dot) : u8_dot_c;
  }
}

/* The internal distance (lower is closer) between two code vectors, in the units of the
 * float metric: dot from sum((lo + s a)(lo + s b)), squared L2 and L1 scaled by s. */
static float q8_dist(const hnsw *h, const float *fa, const float *fb) {
  const uint8_t *a = (const uint8_t *)fa, *b = (const uint8_t *)fb;
  size_t n = h->dim;
  float st = h->q_step;
  switch (h->metric) {
  case QV_DIST_EUCLID:
    return st * st * (float)h->q8_fn(a, b, n);
  case QV_DIST_MANHATTAN:
    return st * (float)h->q8_fn(a, b, n);
  default: {
    float sa, sb;
    memcpy(&sa, a + h->q_sum_off, 4);
    memcpy(&sb, b + h->q_sum_off, 4);
    float lo = h->q_lo;
    return -((float)n * lo * lo + lo * st * (sa + sb) + st * st * (float)h->q8_fn(a, b, n));
  }
  }
}

/* Encodes n floats into codes (and their sum) at out; out may be the same memory as x:
 * byte i is written after float i was read, and lies at or before it. */
static void q8_encode(const hnsw *h, uint8_t *out, const float *x) {
  uint32_t sum = 0;
  float inv = h->q_step > 0 ? 1.0f / h->q_step : 0;
  for (size_t i = 0; i < h->dim; i++) {
    float v = x[i];
    float c = (v - h->q_lo) * inv;
    c = c < 0 ? 0 : c > 255 ? 255 : c;
    uint8_t code = (uint8_t)lrintf(c);
    out[i] = code;
    sum += code;
  }
  float fs = (float)sum;
  memcpy(out + h->q_sum_off, &fs, 4);
}

static inline float dist(const space *sp, const float *a, const float *b) {
  if (sp->q8) return q8_dist(sp->q8, a, b);
  return sp->sign * sp->fn(a, b, sp->dim);
}

static space space_of(const hnsw *h) {
  const dist_kernels *k = dist_get_kernels();
  space sp = {k->dot, -1.0f, h->dim, NULL};
  if (h->metric == QV_DIST_EUCLID) sp = (space){k->l2sq, 1.0f, h->dim, NULL};
  else if (h->metric == QV_DIST_MANHATTAN) sp = (space){k->l1, 1.0f, h->dim, NULL};
  if (h->quant) sp.q8 = h;
  return sp;
}

static float to_score(const hnsw *h, float d) {
  switch (h->metric) {
  case QV_DIST_EUCLID:
    return sqrtf(d > 0 ? d : 0);
  case QV_DIST_MANHATTAN:
    return d;
  default:
    return -d;
  }
}

/* Level drawn from the id and the seed: -ln(U) / ln(M), U uniform in (0, 1]. */
static int draw_level(const hnsw *h, uint32_t id) {
  uint64_t r = qv_mix64(h->seed ^ qv_mix64((uint64_t)id + 0x9e3779b97f4a7c15ull));
  double u = ((double)(r >> 11) + 1.0) * 0x1.0p-53;
  double l = -log(u) * h->mult;
  return l >= HNSW_MAX_LEVEL ? HNSW_MAX_LEVEL : (int)l;
}

/* ---- Construction and teardown ------------------------------------------------------- */

static size_t align_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }

/* Chunks of 2 MiB and more are mapped on their own and asked for transparent huge pages:
 * a search touches a few hundred nodes spread over the whole index, and with 4 KiB pages
 * nearly every one of them is a TLB miss (a page walk of its own). Smaller chunks come
 * from the allocator. */
#define HUGE_BYTES ((size_t)2 << 20)

static size_t chunk_bytes(const hnsw *h, unsigned c) {
  return ((size_t)1 << (c + h->cshift)) * h->stride;
}

static unsigned char *chunk_alloc(size_t bytes) {
  if (bytes < HUGE_BYTES) return qv_aligned_alloc(bytes);
  /* Over-map by one huge page and trim, so the chunk starts on a 2 MiB boundary. */
  size_t len = align_up(bytes, HUGE_BYTES);
  unsigned char *m = mmap(NULL, len + HUGE_BYTES, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return NULL;
  unsigned char *p = (unsigned char *)align_up((uintptr_t)m, HUGE_BYTES);
  if (p > m) munmap(m, (size_t)(p - m));
  if (m + HUGE_BYTES > p) munmap(p + len, (size_t)(m + HUGE_BYTES - p));
#ifdef MADV_HUGEPAGE
  madvise(p, len, MADV_HUGEPAGE); /* advice only: without THP it fails and nothing changes */
#endif
  return p;
}

static void chunk_free(hnsw *h, unsigned c) {
  if (!h->chunks[c]) return;
  size_t bytes = chunk_bytes(h, c);
  if (bytes < HUGE_BYTES) qv_aligned_free(h->chunks[c]);
  else munmap(h->chunks[c], align_up(bytes, HUGE_BYTES));
}

static qv_status init(hnsw **out, size_t dim, qv_distance dist_kind, size_t M, size_t efc,
                      uint64_t seed) {
  *out = NULL;
  if (dim == 0 || dim > QV_MAX_VECTOR_SIZE || M < 2 || M > HNSW_MAX_M ||
      (unsigned)dist_kind > QV_DIST_MANHATTAN)
    return QV_EINVAL;
  hnsw *h = calloc(1, sizeof *h);
  if (!h) return QV_ENOMEM;
  h->dim = dim;
  h->metric = dist_kind;
  h->M = (uint32_t)M;
  h->M0 = (uint32_t)(2 * M);
  h->ef_construct = (uint32_t)(efc < M ? M : efc > UINT32_MAX ? UINT32_MAX : efc);
  h->seed = seed;
  h->mult = 1.0 / log((double)M);
  h->off_label = align_up(OFF_LINKS + 4 * (size_t)h->M0, 8);
  h->off_upper = h->off_label + 8;
  h->off_vec = align_up(h->off_upper + sizeof(uint32_t *), 64);
  h->stride = align_up(h->off_vec + dim * sizeof(float), 64);
  unsigned cs = 4;
  while (cs < 16 && ((size_t)2 << cs) * h->stride <= CHUNK0_BYTES) cs++;
  h->cshift = cs;
  h->ep = EP_NONE;
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  /* A save must not starve behind a stream of adds. */
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  int e = pthread_rwlock_init(&h->save_lock, &ra);
  pthread_rwlockattr_destroy(&ra);
  if (e) {
    free(h);
    return e;
  }
  pthread_mutex_init(&h->grow_mu, NULL);
  pthread_mutex_init(&h->level_mu, NULL);
  pthread_mutex_init(&h->scratch_mu, NULL);
  *out = h;
  return QV_OK;
}

qv_status hnsw_new(hnsw **out, size_t dim, qv_distance dist_kind, size_t M, size_t ef_construct,
                   uint64_t seed) {
  if (!out) return QV_EINVAL;
  return init(out, dim, dist_kind, M, ef_construct, seed);
}

static void scratch_free(scratch *s) {
  if (!s) return;
  free(s->vis);
  free(s->pool);
  free(s->heap);
  qv_aligned_free(s->q);
  free(s->todo);
  free(s->todov);
  free(s->sel);
  free(s->batch);
  free(s->tmp);
  free(s->kept);
  free(s->kv);
  free(s);
}

void hnsw_free(hnsw *h) {
  if (!h) return;
  uint64_t n = h->next;
  for (uint64_t i = 0; i < n; i++) free(upper_of(h, node_at(h, (uint32_t)i)));
  for (unsigned c = 0; c < MAX_CHUNKS; c++) chunk_free(h, c);
  while (h->free_scratch) {
    scratch *s = h->free_scratch;
    h->free_scratch = s->next;
    scratch_free(s);
  }
  pthread_mutex_destroy(&h->grow_mu);
  pthread_mutex_destroy(&h->level_mu);
  pthread_mutex_destroy(&h->scratch_mu);
  pthread_rwlock_destroy(&h->save_lock);
  free(h);
}

/* Capacity after chunks 0..c exist. */
static uint64_t cap_after(const hnsw *h, unsigned c) {
  return ((((uint64_t)1) << (c + 1)) - 1) << h->cshift;
}

/* Makes sure a block exists for id (invariant 6). */
static qv_status grow(hnsw *h, uint64_t id) {
  qv_status st = QV_OK;
  pthread_mutex_lock(&h->grow_mu);
  while (LOAD_RLX(&h->cap) <= id) {
    unsigned c = 0;
    while (c < MAX_CHUNKS && h->chunks[c]) c++;
    size_t bytes;
    if (c == MAX_CHUNKS || qv_mul_overflow((size_t)1 << (c + h->cshift), h->stride, &bytes)) {
      st = QV_ERANGE;
      break;
    }
    unsigned char *p = chunk_alloc(bytes);
    if (!p) {
      st = QV_ENOMEM;
      break;
    }
    STORE_REL(&h->chunks[c], p);
    STORE_REL(&h->cap, cap_after(h, c));
  }
  pthread_mutex_unlock(&h->grow_mu);
  return st;
}

static qv_status alloc_id(hnsw *h, uint32_t *out) {
  uint64_t id = LOAD_RLX(&h->next);
  for (;;) {
    if (id >= HNSW_MAX_NODES) return QV_ERANGE;
    if (id >= LOAD_ACQ(&h->cap)) {
      qv_status st = grow(h, id);
      if (st) return st;
    }
    if (__atomic_compare_exchange_n(&h->next, &id, id + 1, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_RELAXED))
      break;
  }
  *out = (uint32_t)id;
  return QV_OK;
}

/* ---- Scratch pool -------------------------------------------------------------------- */

static int grow_cands(cand **p, size_t *cap, size_t need, uint64_t *bytes) {
  if (*cap >= need) return 0;
  size_t n = *cap ? *cap : 64;
  while (n < need) n *= 2;
  cand *q = realloc(*p, n * sizeof *q);
  if (!q) return -1;
  *bytes += (n - *cap) * sizeof *q;
  *p = q;
  *cap = n;
  return 0;
}

static scratch *scratch_new(const hnsw *h) {
  scratch *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  size_t m1 = (size_t)h->M0 + 1;
  s->q = qv_aligned_alloc(align_up(h->dim * sizeof(float), 64));
  s->todo = malloc(m1 * sizeof *s->todo);
  s->todov = malloc(m1 * sizeof *s->todov);
  s->sel = malloc((size_t)(HNSW_MAX_LEVEL + 1) * h->M * sizeof *s->sel);
  s->batch = malloc(m1 * sizeof *s->batch);
  s->tmp = malloc(m1 * sizeof *s->tmp);
  s->kept = malloc(m1 * sizeof *s->kept);
  s->kv = malloc(m1 * sizeof *s->kv);
  if (!s->q || !s->todo || !s->todov || !s->sel || !s->batch || !s->tmp || !s->kept || !s->kv) {
    scratch_free(s);
    return NULL;
  }
  s->bytes = sizeof *s + align_up(h->dim * sizeof(float), 64) +
             m1 * (4 + 3 * sizeof(cand) + 2 * sizeof(void *)) +
             (size_t)(HNSW_MAX_LEVEL + 1) * h->M * sizeof(cand);
  return s;
}

/* A scratch area whose visited tags cover every id with a block now and whose beam holds
 * ef entries. NULL when memory runs out. */
static scratch *scratch_get(hnsw *h, size_t ef) {
  pthread_mutex_lock(&h->scratch_mu);
  scratch *s = h->free_scratch;
  if (s) h->free_scratch = s->next;
  pthread_mutex_unlock(&h->scratch_mu);
  uint64_t before = s ? s->bytes : 0;
  if (!s && !(s = scratch_new(h))) return NULL;
  size_t cap = (size_t)LOAD_ACQ(&h->cap);
  if (s->vcap < cap) {
    free(s->vis);
    s->bytes -= s->vcap * sizeof *s->vis;
    s->vis = calloc(cap, sizeof *s->vis);
    s->vcap = s->vis ? cap : 0;
    s->bytes += s->vcap * sizeof *s->vis;
    s->tag = 0;
  }
  uint64_t b = s->bytes;
  int bad = !s->vis || grow_cands(&s->pool, &s->pool_cap, ef + 1, &b);
  s->bytes = b;
  __atomic_add_fetch(&h->scratch_bytes, s->bytes - before, __ATOMIC_RELAXED);
  if (bad) {
    __atomic_sub_fetch(&h->scratch_bytes, s->bytes, __ATOMIC_RELAXED);
    scratch_free(s);
    return NULL;
  }
  return s;
}

static void scratch_put(hnsw *h, scratch *s) {
  pthread_mutex_lock(&h->scratch_mu);
  s->next = h->free_scratch;
  h->free_scratch = s;
  pthread_mutex_unlock(&h->scratch_mu);
}

/* Marks a search's first node visited. greedy() may have stepped onto a node added after
 * the scratch was sized; such a node simply goes unmarked. */
static inline void mark_visited(scratch *s, uint32_t id, uint16_t tag) {
  if (id < s->vcap) s->vis[id] = tag;
}

static inline uint16_t new_tag(scratch *s) {
  if (++s->tag == 0) {
    memset(s->vis, 0, s->vcap * sizeof *s->vis);
    s->tag = 1;
  }
  return s->tag;
}

/* ---- Search primitives --------------------------------------------------------------- */

/* Walks down from level `from` to level `to` + 1, moving to the closest neighbour while one
 * is closer (ef = 1). */
static uint32_t greedy(const hnsw *h, const space *sp, const float *q, uint32_t cur, float *curd,
                       int from, int to) {
  for (int l = from; l > to; l--) {
    int changed = 1;
    while (changed) {
      changed = 0;
      uint32_t *links;
      uint32_t c = list_get(h, node_at(h, cur), l, &links);
      for (uint32_t j = 0; j < c; j++) {
        uint32_t x = LOAD_ACQ(&links[j]);
        if (j + 1 < c) {
          const float *nv = vec_of(h, node_at(h, LOAD_RLX(&links[j + 1])));
          __builtin_prefetch(nv, 0, 3);
          prefetch_rest(h, nv);
        }
        float d = dist(sp, q, vec_of(h, node_at(h, x)));
        if (d < *curd) {
          *curd = d;
          cur = x;
          changed = 1;
        }
      }
    }
  }
  return cur;
}

/* Collects the unvisited neighbours of node id on level l into s->todo (and their vectors
 * into s->todov), marking them visited and prefetching the first line of each vector;
 * returns how many. Ids past the visited array (nodes added after this search took its
 * scratch) are skipped. */
static inline size_t gather(const hnsw *h, scratch *s, uint32_t id, int l, uint16_t tag) {
  uint32_t *links;
  uint32_t c = list_get(h, node_at(h, id), l, &links);
  uint16_t *vis = s->vis;
  size_t vcap = s->vcap, nt = 0;
  for (uint32_t j = 0; j < c; j++) {
    uint32_t x = LOAD_ACQ(&links[j]);
    if (x >= vcap || vis[x] == tag) continue;
    vis[x] = tag;
    const float *v = vec_of(h, node_at(h, x));
    __builtin_prefetch(v, 0, 3);
    s->todo[nt] = x;
    s->todov[nt++] = v;
  }
  return nt;
}

/* Merges b (nb entries, sorted, each closer than the beam's worst when the beam is full)
 * into the sorted beam p of *n entries, keeping at most ef. Ties: existing entries first,
 * then b in its order, so the beam equals what inserting b one entry at a time (each
 * checked against the worst of the moment) would leave. Works from the back: each entry
 * of b, largest first, finds its place by binary search and the block above it moves up
 * once, so the beam moves at most once per expansion however many entries arrive.
 * Returns the position of b[0], the lowest that changed. */
static size_t beam_merge(cand *p, size_t *n, size_t ef, const cand *b, size_t nb) {
  size_t nn = *n + nb < ef ? *n + nb : ef;
  size_t hi = *n; /* p[0..hi) has not moved yet */
  for (size_t j = nb; j > 0; j--) {
    float d = b[j - 1].d;
    size_t lo = 0, top = hi;
    while (lo < top) {
      size_t mid = (lo + top) >> 1;
      if (p[mid].d <= d) lo = mid + 1;
      else top = mid;
    }
    /* p[lo..hi) moves up by j and b[j - 1] lands just below it; whatever would land at
     * or past nn drops out. */
    if (lo + j < nn) {
      size_t end = hi < nn - j ? hi : nn - j;
      memmove(p + lo + j, p + lo, (end - lo) * sizeof *p);
    }
    if (lo + j - 1 < nn) p[lo + j - 1] = b[j - 1];
    hi = lo;
  }
  *n = nn;
  return hi;
}

/* Best-first search on level l from the n entries already in s->pool (sorted), keeping
 * the ef closest nodes seen; every node in the beam gets expanded, which stops the search
 * exactly where hnswlib's two-heap loop stops it. Returns the beam's size; ids in it carry
 * CHK.
 *
 * The beam is a sorted array, and the next node to expand is found by a forward scan from
 * the lowest position that changed. An expansion's neighbours are not inserted one by one
 * (a binary search and a memmove of up to ef entries each: at ef = 1024 an insert moved
 * 400 entries on average, 3 inserts an expansion, on random-128d) but collected (those
 * closer than the worst entry at the start of the expansion), sorted, and merged once
 * (beam_merge). The beam ends up the same as with one-by-one inserts, so results do not
 * change. Measured on one saved graph, old and new code interleaved in one process
 * (100k random-128d L2 / clustered-384d IP, 1000 queries): +6% / +3% queries/s at ef
 * 1024, +8% / +5% at 2048, +1-4% at 128..512, even at 16..64. The search is bound by
 * fetching vectors (about two thirds of its time is in the distance kernel), which is
 * why the beam's own cost matters this little. Two binary heaps (hnswlib's layout)
 * measured no faster at ef 256..1024 (+4..8% at 2048 only), and they order equal
 * distances differently; prefetching the whole link list of the next node, or the rest
 * of each vector further ahead, measured no faster either. */
static size_t beam_search(const hnsw *h, scratch *s, const space *sp, const float *q, int l,
                          size_t ef, size_t n, uint16_t tag) {
  cand *pool = s->pool, *batch = s->batch;
  size_t cur = 0;
  while (cur < n) {
    uint32_t id = pool[cur].id;
    pool[cur].id |= CHK;
    /* The next candidate to expand is most likely the one after this: fetch its list. */
    if (cur + 1 < n) __builtin_prefetch(node_at(h, pool[cur + 1].id & ID_MASK), 0, 3);
    size_t nt = gather(h, s, id, l, tag);
    int full = n == ef;
    float worst = pool[n - 1].d;
    size_t nb = 0;
    for (size_t t = 0; t < nt; t++) {
      if (t + PREFETCH_AHEAD < nt) prefetch_rest(h, s->todov[t + PREFETCH_AHEAD]);
      float d = dist(sp, q, s->todov[t]);
      if (full && !(d < worst)) continue;
      size_t j = nb++; /* insertion sort, stable: at most M0 entries */
      while (j > 0 && batch[j - 1].d > d) {
        batch[j] = batch[j - 1];
        j--;
      }
      batch[j] = (cand){d, s->todo[t]};
    }
    cur++;
    if (nb) {
      size_t lo = beam_merge(pool, &n, ef, batch, nb);
      if (lo < cur) cur = lo;
    }
    while (cur < n && (pool[cur].id & CHK)) cur++;
  }
  return n;
}

/* ---- Binary heaps for the filtered search -------------------------------------------- */

static inline void minheap_push(cand *a, size_t *n, cand x) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) >> 1;
    if (a[p].d <= x.d) break;
    a[i] = a[p];
    i = p;
  }
  a[i] = x;
}

static inline void minheap_pop(cand *a, size_t *n) {
  cand x = a[--(*n)];
  size_t i = 0, len = *n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= len) break;
    if (c + 1 < len && a[c + 1].d < a[c].d) c++;
    if (x.d <= a[c].d) break;
    a[i] = a[c];
    i = c;
  }
  if (len) a[i] = x;
}

static inline void maxheap_push(cand *a, size_t *n, cand x) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) >> 1;
    if (a[p].d >= x.d) break;
    a[i] = a[p];
    i = p;
  }
  a[i] = x;
}

static inline void maxheap_pop(cand *a, size_t *n) {
  cand x = a[--(*n)];
  size_t i = 0, len = *n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= len) break;
    if (c + 1 < len && a[c + 1].d > a[c].d) c++;
    if (x.d >= a[c].d) break;
    a[i] = a[c];
    i = c;
  }
  if (len) a[i] = x;
}

static inline int passes(hnsw *h, const hnsw_filter *f, uint32_t id) {
  if (LOAD_RLX(flags_of(node_at(h, id))) & 1) return 0;
  if (!f) return 1;
  if (f->bitmap && (id >= f->nbits || !((f->bitmap[id >> 6] >> (id & 63)) & 1))) return 0;
  if (f->fn && !f->fn(f->ctx, id)) return 0;
  return 1;
}

static int cand_cmp(const void *pa, const void *pb) {
  const cand *a = pa, *b = pb;
  if (a->d != b->d) return a->d < b->d ? -1 : 1;
  return a->id < b->id ? -1 : a->id > b->id;
}

/* hnswlib's searchBaseLayerST with a filter or deletions: excluded nodes are walked but
 * never enter the results, and the walk stops only when the ef results are all closer
 * than the next candidate. Leaves the results sorted in s->pool; returns how many. */
static qv_status search_filtered(hnsw *h, scratch *s, const space *sp, const float *q,
                                 uint32_t ep, float epd, size_t ef, const hnsw_filter *f,
                                 size_t *nres) {
  cand *top = s->pool;
  size_t nt = 0, nc = 0;
  uint16_t tag = new_tag(s);
  uint64_t b = 0;
  if (grow_cands(&s->heap, &s->heap_cap, 256, &b)) return QV_ENOMEM;
  mark_visited(s, ep, tag);
  float lb = INFINITY;
  if (passes(h, f, ep)) {
    maxheap_push(top, &nt, (cand){epd, ep});
    lb = epd;
  }
  minheap_push(s->heap, &nc, (cand){epd, ep});
  while (nc) {
    cand c = s->heap[0];
    if (c.d > lb && nt == ef) break;
    minheap_pop(s->heap, &nc);
    size_t ng = gather(h, s, c.id, 0, tag);
    if (nc + ng > s->heap_cap && grow_cands(&s->heap, &s->heap_cap, nc + ng, &b)) {
      __atomic_add_fetch(&h->scratch_bytes, b, __ATOMIC_RELAXED);
      return QV_ENOMEM;
    }
    for (size_t t = 0; t < ng; t++) {
      uint32_t x = s->todo[t];
      if (t + PREFETCH_AHEAD < ng) prefetch_rest(h, s->todov[t + PREFETCH_AHEAD]);
      float d = dist(sp, q, s->todov[t]);
      if (nt < ef || d < lb) {
        minheap_push(s->heap, &nc, (cand){d, x});
        if (passes(h, f, x)) {
          maxheap_push(top, &nt, (cand){d, x});
          if (nt > ef) maxheap_pop(top, &nt);
          lb = top[0].d;
        }
      }
    }
  }
  s->bytes += b;
  __atomic_add_fetch(&h->scratch_bytes, b, __ATOMIC_RELAXED);
  qsort(top, nt, sizeof *top, cand_cmp);
  *nres = nt;
  return QV_OK;
}

qv_status hnsw_search(hnsw *h, const float *query, size_t k, size_t ef, const hnsw_filter *filter,
                      hnsw_hit *out, size_t *count) {
  if (!h || !count || (k && (!query || !out))) return QV_EINVAL;
  *count = 0;
  if (k == 0) return QV_OK;
  for (size_t i = 0; i < h->dim; i++)
    if (!isfinite(query[i])) return QV_ENONFINITE;
  uint64_t ep = LOAD_ACQ(&h->ep);
  if (ep == EP_NONE) return QV_OK;
  /* Neither the results nor the beam can hold more nodes than there are. */
  size_t nodes = hnsw_count(h);
  if (k > nodes) k = nodes;
  if (ef < k) ef = k;
  if (ef > nodes) ef = nodes;
  scratch *s = scratch_get(h, ef);
  if (!s) return QV_ENOMEM;
  memcpy(s->q, query, h->dim * sizeof(float));
  if (h->metric == QV_DIST_COSINE) dist_normalize(s->q, h->dim);
  if (h->quant) q8_encode(h, (uint8_t *)s->q, s->q);
  space sp = space_of(h);
  uint32_t cur = (uint32_t)ep;
  float curd = dist(&sp, s->q, vec_of(h, node_at(h, cur)));
  cur = greedy(h, &sp, s->q, cur, &curd, (int)(ep >> 32), 0);

  qv_status st = QV_OK;
  size_t n;
  int filtered = (filter && (filter->bitmap || filter->fn)) || LOAD_RLX(&h->deleted) > 0;
  if (!filtered) {
    uint16_t tag = new_tag(s);
    mark_visited(s, cur, tag);
    s->pool[0] = (cand){curd, cur};
    n = beam_search(h, s, &sp, s->q, 0, ef, 1, tag);
  } else {
    st = search_filtered(h, s, &sp, s->q, cur, curd, ef, filter, &n);
  }
  if (!st) {
    if (n > k) n = k;
    for (size_t i = 0; i < n; i++) {
      uint32_t id = s->pool[i].id & ID_MASK;
      out[i].score = to_score(h, s->pool[i].d);
      out[i].id = id;
      memcpy(&out[i].label, node_at(h, id) + h->off_label, 8);
    }
    *count = n;
  }
  scratch_put(h, s);
  return st;
}

/* ---- Insertion ----------------------------------------------------------------------- */

/* hnswlib's getNeighborsByHeuristic2: walking c (n, sorted closest first to the base
 * point), keep a candidate only if it is closer to the base than to every candidate kept
 * so far; stop at m. Fewer than m candidates are all kept. Writes out, returns count. */
static size_t heuristic(const hnsw *h, scratch *s, const space *sp, const cand *c, size_t n,
                        size_t m, cand *out) {
  if (n < m) {
    for (size_t i = 0; i < n; i++) out[i] = (cand){c[i].d, c[i].id & ID_MASK};
    return n;
  }
  size_t k = 0;
  for (size_t i = 0; i < n && k < m; i++) {
    uint32_t id = c[i].id & ID_MASK;
    const float *v = vec_of(h, node_at(h, id));
    int good = 1;
    for (size_t j = 0; j < k; j++)
      if (dist(sp, v, s->kv[j]) < c[i].d) {
        good = 0;
        break;
      }
    if (good) {
      s->kv[k] = v;
      out[k++] = (cand){c[i].d, id};
    }
  }
  return k;
}

/* Links the new node id to its chosen neighbours sel (n) on level l, and each of them
 * back to it, pruning a full list with the heuristic. */
static void connect(hnsw *h, scratch *s, const space *sp, uint32_t id, unsigned char *nd, int l,
                    const cand *sel, size_t n) {
  size_t mmax = l ? h->M : h->M0;
  node_lock(nd);
  list_set(h, nd, l, sel, n);
  node_unlock(nd);
  for (size_t i = 0; i < n; i++) {
    unsigned char *nb = node_at(h, sel[i].id);
    const float *nv = vec_of(h, nb);
    node_lock(nb);
    uint32_t *links;
    uint32_t c = list_get(h, nb, l, &links);
    if (c < mmax) {
      STORE_REL(&links[c], id);
      if (l == 0) STORE_REL(count0_of(nb), (uint16_t)(c + 1));
      else STORE_REL(links - 1, c + 1);
    } else {
      cand *t = s->tmp;
      t[0] = (cand){sel[i].d, id};
      for (uint32_t j = 0; j < c; j++) {
        uint32_t x = links[j];
        t[j + 1] = (cand){dist(sp, nv, vec_of(h, node_at(h, x))), x};
      }
      /* insertion sort: at most M0 + 1 entries */
      for (size_t a = 1; a <= c; a++) {
        cand x = t[a];
        size_t b = a;
        while (b > 0 && t[b - 1].d > x.d) {
          t[b] = t[b - 1];
          b--;
        }
        t[b] = x;
      }
      size_t k = heuristic(h, s, sp, t, c + 1, mmax, s->kept);
      list_set(h, nb, l, s->kept, k);
    }
    node_unlock(nb);
  }
}

/* Makes a fully written node reachable (invariants 4 and 5). */
static qv_status insert_node(hnsw *h, uint32_t id, int level) {
  unsigned char *nd = node_at(h, id);
  const float *v = vec_of(h, nd);
  uint64_t ep = LOAD_ACQ(&h->ep);
  int hold = 0;
  if (ep == EP_NONE || level > (int)(ep >> 32)) {
    pthread_mutex_lock(&h->level_mu);
    hold = 1;
    ep = LOAD_ACQ(&h->ep);
    if (ep == EP_NONE) {
      STORE_REL(&h->ep, (uint64_t)level << 32 | id);
      pthread_mutex_unlock(&h->level_mu);
      return QV_OK;
    }
    if (level <= (int)(ep >> 32)) {
      pthread_mutex_unlock(&h->level_mu);
      hold = 0;
    }
  }
  scratch *s = scratch_get(h, h->ef_construct);
  if (!s) {
    if (hold) pthread_mutex_unlock(&h->level_mu);
    return QV_ENOMEM;
  }
  space sp = space_of(h);
  int top = (int)(ep >> 32);
  uint32_t cur = (uint32_t)ep;
  float curd = dist(&sp, v, vec_of(h, node_at(h, cur)));
  cur = greedy(h, &sp, v, cur, &curd, top, level);
  int lmax = level < top ? level : top;
  for (int l = lmax; l >= 0; l--) {
    uint16_t tag = new_tag(s);
    mark_visited(s, cur, tag);
    s->pool[0] = (cand){curd, cur};
    size_t n = beam_search(h, s, &sp, v, l, h->ef_construct, 1, tag);
    s->nsel[l] = heuristic(h, s, &sp, s->pool, n, h->M, s->sel + (size_t)l * h->M);
    cur = s->pool[0].id & ID_MASK;
    curd = s->pool[0].d;
  }
  for (int l = 0; l <= lmax; l++)
    connect(h, s, &sp, id, nd, l, s->sel + (size_t)l * h->M, s->nsel[l]);
  if (hold) {
    STORE_REL(&h->ep, (uint64_t)level << 32 | id);
    pthread_mutex_unlock(&h->level_mu);
  }
  scratch_put(h, s);
  return QV_OK;
}

/* A node whose insert failed after its id was handed out (invariant 6). */
static void make_hole(hnsw *h, unsigned char *nd) {
  STORE_REL(flags_of(nd), 1);
  __atomic_add_fetch(&h->deleted, 1, __ATOMIC_RELAXED);
}

qv_status hnsw_add(hnsw *h, uint64_t label, const float *vector, uint32_t *out_id) {
  if (!h || !vector) return QV_EINVAL;
  for (size_t i = 0; i < h->dim; i++)
    if (!isfinite(vector[i])) return QV_ENONFINITE;
  pthread_rwlock_rdlock(&h->save_lock);
  uint32_t id;
  qv_status st = alloc_id(h, &id);
  if (st) goto out;
  unsigned char *nd = node_at(h, id);
  memset(nd, 0, h->stride);
  int level = draw_level(h, id);
  uint32_t *up = NULL;
  if (level > 0) {
    size_t words = (size_t)level * (h->M + 1);
    up = calloc(words, sizeof *up);
    if (!up) {
      make_hole(h, nd);
      st = QV_ENOMEM;
      goto out;
    }
    __atomic_add_fetch(&h->upper_bytes, words * sizeof *up, __ATOMIC_RELAXED);
  }
  nd[2] = (uint8_t)level;
  memcpy(nd + h->off_label, &label, 8);
  memcpy(nd + h->off_upper, &up, sizeof up);
  if (h->quant) {
    /* the node block has room for the codes only; normalize in scratch space first */
    scratch *sc = scratch_get(h, 1);
    if (!sc) {
      make_hole(h, nd);
      st = QV_ENOMEM;
      goto out;
    }
    memcpy(sc->q, vector, h->dim * sizeof(float));
    if (h->metric == QV_DIST_COSINE) dist_normalize(sc->q, h->dim);
    q8_encode(h, nd + h->off_vec, sc->q);
    scratch_put(h, sc);
  } else {
    float *v = (float *)(nd + h->off_vec);
    memcpy(v, vector, h->dim * sizeof(float));
    if (h->metric == QV_DIST_COSINE) dist_normalize(v, h->dim);
  }
  st = insert_node(h, id, level);
  if (st) make_hole(h, nd);
out:
  pthread_rwlock_unlock(&h->save_lock);
  if (!st && out_id) *out_id = id;
  return st;
}

typedef struct batch_ctx {
  hnsw *h;
  const uint64_t *labels;
  const float *vectors;
  uint32_t *out_ids;
  size_t n;
  qv_status st; /* atomic: first error */
} batch_ctx;

#define BATCH_TASK 16

static void batch_task(void *arg, size_t task, int worker) {
  batch_ctx *b = arg;
  size_t lo = task * BATCH_TASK, hi = lo + BATCH_TASK < b->n ? lo + BATCH_TASK : b->n;
  for (size_t i = lo; i < hi; i++) {
    uint32_t id = UINT32_MAX;
    qv_status st = hnsw_add(b->h, b->labels[i], b->vectors + i * b->h->dim, &id);
    if (st) {
      qv_status zero = QV_OK;
      __atomic_compare_exchange_n(&b->st, &zero, st, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    }
    if (b->out_ids) b->out_ids[i] = st ? UINT32_MAX : id;
  }
}

qv_status hnsw_add_batch(hnsw *h, const uint64_t *labels, const float *vectors, size_t n,
                         qv_pool *pool, uint32_t *out_ids) {
  if (!h || (n && (!labels || !vectors))) return QV_EINVAL;
  batch_ctx b = {h, labels, vectors, out_ids, n, QV_OK};
  pool_run(pool, (n + BATCH_TASK - 1) / BATCH_TASK, batch_task, &b);
  return b.st;
}

qv_status hnsw_mark_deleted(hnsw *h, uint32_t id) {
  if (!h) return QV_EINVAL;
  pthread_rwlock_rdlock(&h->save_lock);
  qv_status st = QV_OK;
  if (id >= LOAD_ACQ(&h->next)) st = QV_NOTFOUND;
  else if (!(__atomic_fetch_or(flags_of(node_at(h, id)), 1, __ATOMIC_RELAXED) & 1))
    __atomic_add_fetch(&h->deleted, 1, __ATOMIC_RELAXED);
  pthread_rwlock_unlock(&h->save_lock);
  return st;
}

int hnsw_is_deleted(const hnsw *h, uint32_t id) {
  return LOAD_RLX(flags_of(node_at(h, id))) & 1;
}

size_t hnsw_count(const hnsw *h) { return (size_t)LOAD_ACQ(&h->next); }
size_t hnsw_deleted_count(const hnsw *h) { return (size_t)LOAD_RLX(&h->deleted); }
size_t hnsw_dim(const hnsw *h) { return h->dim; }
qv_distance hnsw_distance(const hnsw *h) { return h->metric; }

uint64_t hnsw_label(const hnsw *h, uint32_t id) {
  uint64_t l;
  memcpy(&l, node_at(h, id) + h->off_label, 8);
  return l;
}

const float *hnsw_vector(const hnsw *h, uint32_t id) {
  return h->quant ? NULL : vec_of(h, node_at(h, id));
}

qv_status hnsw_quantize_int8(hnsw *h, float lo, float hi) {
  if (!h || !isfinite(lo) || !isfinite(hi) || !(hi >= lo)) return QV_EINVAL;
  if (LOAD_ACQ(&h->cap) || LOAD_ACQ(&h->next)) return QV_EINVAL;
  h->quant = 1;
  h->q8_fn = u8_kernel(h->metric);
  h->q_lo = lo;
  h->q_hi = hi;
  h->q_step = hi > lo ? (hi - lo) / 255.0f : 1.0f;
  h->q_sum_off = align_up(h->dim, 4);
  /* Codes are read with unaligned loads, so the block needs only the header's 8-byte
   * alignment (the label and upper pointer; the code sum is 4-aligned by q_sum_off): at
   * 128 dimensions and M=16 that is 288 bytes a node instead of 704 for floats. */
  h->off_vec = align_up(h->off_upper + sizeof(uint32_t *), 8);
  h->stride = align_up(h->off_vec + h->q_sum_off + 4, 8);
  unsigned cs = 4;
  while (cs < 16 && ((size_t)2 << cs) * h->stride <= CHUNK0_BYTES) cs++;
  h->cshift = cs;
  return QV_OK;
}

int hnsw_quantized(const hnsw *h) { return h->quant; }

size_t hnsw_code_bytes(const hnsw *h) {
  return h->quant ? hnsw_count(h) * (h->q_sum_off + 4) : 0;
}

/* Node blocks count as resident where they can be: a chunk from the heap counts whole,
 * but a chunk mapped by chunk_alloc is anonymous memory that the kernel backs only where
 * it is written, so only its used part counts, rounded up to the huge page that a first
 * write faults in. (The last chunk is up to half the capacity; counting it whole would
 * report address space, not memory.) */
size_t hnsw_memory_bytes(const hnsw *h) {
  uint64_t used = LOAD_ACQ(&h->next);
  size_t blocks = 0;
  for (unsigned c = 0; c < MAX_CHUNKS && LOAD_ACQ(&h->chunks[c]); c++) {
    size_t bytes = chunk_bytes(h, c);
    uint64_t first = cap_after(h, c) - ((uint64_t)1 << (c + h->cshift));
    if (bytes < HUGE_BYTES) {
      blocks += bytes;
    } else if (used > first) {
      uint64_t in = used - first < ((uint64_t)1 << (c + h->cshift)) ? used - first
                                                                      : (uint64_t)1 << (c + h->cshift);
      size_t touched = align_up((size_t)in * h->stride, HUGE_BYTES);
      blocks += touched < bytes ? touched : bytes;
    }
  }
  return sizeof *h + blocks + (size_t)LOAD_RLX(&h->upper_bytes) + (size_t)LOAD_RLX(&h->scratch_bytes);
}

/* ---- Persistence --------------------------------------------------------------------- */

/* File: header (HDR_SIZE bytes, its own CRC-32C in its last 4), then count blocks of
 * stride bytes (lock and upper-pointer fields zero), then the upper lists of every node
 * with level > 0 in id order (level x (M + 1) u32 each), then the caller's extra bytes
 * (header u64 at offset 80; zero in files written before it existed, which therefore
 * still read), then a CRC-32C of everything before it. Integers are little-endian (the block bytes are the in-memory layout, so a
 * big-endian host is refused at compile time). */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "hnsw files are little-endian"
#endif

#define HNSW_MAGIC "QVHNSWix"
#define HNSW_VERSION 1
#define HDR_SIZE 96
#define LEVEL_NONE UINT32_MAX

typedef struct file_header {
  uint32_t version, dim, metric /* | QUANT_FLAG */, M, ef_construct, stride, max_level, entry;
  uint64_t seed, count, deleted, upper_words;
  uint64_t extra_len; /* the caller's bytes after the upper lists (0 in older files) */
  float q_lo, q_hi;   /* int8 range, when metric has QUANT_FLAG */
} file_header;
#define QUANT_FLAG 0x100u

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const unsigned char *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
static uint64_t get64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

static void header_encode(unsigned char *b, const file_header *fh) {
  memset(b, 0, HDR_SIZE);
  memcpy(b, HNSW_MAGIC, 8);
  put32(b + 8, fh->version);
  put32(b + 12, HDR_SIZE);
  put32(b + 16, fh->dim);
  put32(b + 20, fh->metric);
  put32(b + 24, fh->M);
  put32(b + 28, fh->ef_construct);
  put32(b + 32, fh->stride);
  put32(b + 36, fh->max_level);
  put64(b + 40, fh->seed);
  put64(b + 48, fh->count);
  put64(b + 56, fh->deleted);
  put64(b + 64, fh->upper_words);
  put32(b + 72, fh->entry);
  put64(b + 80, fh->extra_len);
  memcpy(b + 76, &fh->q_lo, 4);
  memcpy(b + 88, &fh->q_hi, 4);
  put32(b + HDR_SIZE - 4, qv_crc32c(0, b, HDR_SIZE - 4));
}

typedef struct wbuf {
  int fd;
  unsigned char *buf;
  size_t len, cap;
  uint32_t crc;
  qv_status st;
} wbuf;

static void wflush(wbuf *w) {
  size_t off = 0;
  while (!w->st && off < w->len) {
    ssize_t r = write(w->fd, w->buf + off, w->len - off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) w->st = r < 0 ? errno : EIO;
    else off += (size_t)r;
  }
  w->len = 0;
}

static void wput(wbuf *w, const void *data, size_t n) {
  const unsigned char *p = data;
  w->crc = qv_crc32c(w->crc, p, n);
  while (n && !w->st) {
    if (w->len == w->cap) wflush(w);
    size_t take = w->cap - w->len < n ? w->cap - w->len : n;
    memcpy(w->buf + w->len, p, take);
    w->len += take;
    p += take;
    n -= take;
  }
}


static void write_index(const hnsw *h, wbuf *w, const void *extra, size_t extra_len) {
  uint64_t n = h->next, upper_words = 0;
  for (uint64_t i = 0; i < n; i++)
    upper_words += (uint64_t)level_of(node_at(h, (uint32_t)i)) * (h->M + 1);
  uint64_t ep = h->ep;
  file_header fh = {HNSW_VERSION, (uint32_t)h->dim, (uint32_t)h->metric | (h->quant ? QUANT_FLAG : 0), h->M, h->ef_construct,
                    (uint32_t)h->stride, ep == EP_NONE ? LEVEL_NONE : (uint32_t)(ep >> 32),
                    ep == EP_NONE ? 0 : (uint32_t)ep, h->seed, n, h->deleted, upper_words, extra_len,
                    h->q_lo, h->q_hi};
  unsigned char hdr[HDR_SIZE];
  header_encode(hdr, &fh);
  wput(w, hdr, HDR_SIZE);
  unsigned char *blk = malloc(h->stride);
  if (!blk) {
    w->st = QV_ENOMEM;
    return;
  }
  for (uint64_t i = 0; i < n && !w->st; i++) {
    memcpy(blk, node_at(h, (uint32_t)i), h->stride);
    memset(blk + 4, 0, 4);
    memset(blk + h->off_upper, 0, sizeof(uint32_t *));
    wput(w, blk, h->stride);
  }
  free(blk);
  for (uint64_t i = 0; i < n && !w->st; i++) {
    unsigned char *nd = node_at(h, (uint32_t)i);
    if (level_of(nd)) wput(w, upper_of(h, nd), (size_t)level_of(nd) * (h->M + 1) * 4);
  }
  if (extra_len) wput(w, extra, extra_len);
  unsigned char crc[4];
  put32(crc, w->crc);
  wput(w, crc, 4);
  wflush(w);
}

qv_status hnsw_save(hnsw *h, const char *path) { return hnsw_save_ex(h, path, NULL, 0); }

qv_status hnsw_save_ex(hnsw *h, const char *path, const void *extra, size_t extra_len) {
  if (!h || !path || (extra_len && !extra)) return QV_EINVAL;
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 16);
  if (!tmp) return QV_ENOMEM;
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".tmp-XXXXXX", 12);
  wbuf w = {-1, malloc(1 << 20), 0, 1 << 20, 0, QV_OK};
  if (!w.buf) {
    free(tmp);
    return QV_ENOMEM;
  }
  qv_status st = QV_OK;
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    st = errno;
    goto done;
  }
  w.fd = fd;
  if (fchmod(fd, 0644)) w.st = errno;
  pthread_rwlock_wrlock(&h->save_lock);
  if (!w.st) write_index(h, &w, extra, extra_len);
  pthread_rwlock_unlock(&h->save_lock);
  st = w.st;
  if (!st && fsync(fd)) st = errno;
  if (close(fd) && !st) st = errno;
  if (!st && rename(tmp, path)) st = errno;
  if (st) unlink(tmp);
  else st = qv_fsync_parent(path);
done:
  free(w.buf);
  free(tmp);
  return st;
}

typedef struct rbuf {
  int fd;
  unsigned char *buf;
  size_t pos, len, cap;
  uint32_t crc;
  qv_status st;
} rbuf;

/* Reads exactly n bytes (the file size was checked first, so a short read is a file that
 * shrank under us: QV_ETRUNC). */
static int rget(rbuf *r, void *dst, size_t n) {
  unsigned char *p = dst;
  while (n && !r->st) {
    if (r->pos == r->len) {
      ssize_t got = read(r->fd, r->buf, r->cap);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) r->st = errno;
      else if (got == 0) r->st = QV_ETRUNC;
      r->pos = 0;
      r->len = got > 0 ? (size_t)got : 0;
      continue;
    }
    size_t take = r->len - r->pos < n ? r->len - r->pos : n;
    memcpy(p, r->buf + r->pos, take);
    r->crc = qv_crc32c(r->crc, p, take);
    r->pos += take;
    p += take;
    n -= take;
  }
  return r->st ? -1 : 0;
}

/* Checks the graph read from a file with a valid checksum, so that a crafted file cannot
 * make a search read out of bounds. */
static qv_status validate(const hnsw *h, const file_header *fh) {
  uint64_t n = fh->count, deleted = 0;
  for (uint64_t i = 0; i < n; i++) {
    unsigned char *nd = node_at(h, (uint32_t)i);
    uint32_t c = *count0_of(nd);
    if (c > h->M0 || (uint32_t)level_of(nd) > fh->max_level || nd[3] > 1 || *lock_of(nd))
      return QV_ECORRUPT;
    deleted += nd[3];
    for (int l = 0; l <= level_of(nd); l++) {
      uint32_t *links;
      c = list_get(h, nd, l, &links);
      if (c > (l ? h->M : h->M0)) return QV_ECORRUPT;
      for (uint32_t j = 0; j < c; j++)
        if (links[j] >= n || level_of(node_at(h, links[j])) < l) return QV_ECORRUPT;
    }
  }
  if (deleted != fh->deleted) return QV_ECORRUPT;
  if (n && level_of(node_at(h, fh->entry)) != (int)fh->max_level) return QV_ECORRUPT;
  return QV_OK;
}

qv_status hnsw_load(hnsw **out, const char *path) { return hnsw_load_ex(out, path, NULL, NULL); }

qv_status hnsw_load_ex(hnsw **out, const char *path, void **extra, size_t *extra_len) {
  if (!out || !path || !extra != !extra_len) return QV_EINVAL;
  *out = NULL;
  if (extra) {
    *extra = NULL;
    *extra_len = 0;
  }
  unsigned char *xbuf = NULL;
  hnsw *h = NULL;
  rbuf r = {-1, NULL, 0, 0, 1 << 20, 0, QV_OK};
  qv_status st = QV_OK;
  r.fd = open(path, O_RDONLY | O_CLOEXEC);
  if (r.fd < 0) return errno;
  struct stat sb;
  if (fstat(r.fd, &sb)) {
    st = errno;
    goto fail;
  }
  if (!(r.buf = malloc(r.cap))) {
    st = QV_ENOMEM;
    goto fail;
  }
  unsigned char hdr[HDR_SIZE];
  if ((uint64_t)sb.st_size < HDR_SIZE + 4) {
    st = QV_ETRUNC;
    goto fail;
  }
  if (rget(&r, hdr, HDR_SIZE)) goto fail_r;
  if (qv_crc32c(0, hdr, HDR_SIZE - 4) != get32(hdr + HDR_SIZE - 4)) {
    st = QV_ECORRUPT;
    goto fail;
  }
  if (memcmp(hdr, HNSW_MAGIC, 8) || get32(hdr + 12) != HDR_SIZE) {
    st = QV_EFORMAT;
    goto fail;
  }
  file_header fh = {get32(hdr + 8), get32(hdr + 16), get32(hdr + 20), get32(hdr + 24),
                    get32(hdr + 28), get32(hdr + 32), get32(hdr + 36), get32(hdr + 72),
                    get64(hdr + 40), get64(hdr + 48), get64(hdr + 56), get64(hdr + 64),
                    get64(hdr + 80), 0, 0};
  memcpy(&fh.q_lo, hdr + 76, 4);
  memcpy(&fh.q_hi, hdr + 88, 4);
  if (fh.version != HNSW_VERSION) {
    st = QV_EUNSUPPORTED;
    goto fail;
  }
  if ((fh.metric & ~(QUANT_FLAG | 0xffu)) ||
      init(&h, fh.dim, (qv_distance)(fh.metric & 0xffu), fh.M, fh.ef_construct, fh.seed) ||
      ((fh.metric & QUANT_FLAG) && hnsw_quantize_int8(h, fh.q_lo, fh.q_hi)) || h->stride != fh.stride || fh.count > HNSW_MAX_NODES || fh.deleted > fh.count ||
      (fh.count == 0) != (fh.max_level == LEVEL_NONE) ||
      (fh.count && (fh.max_level > HNSW_MAX_LEVEL || fh.entry >= fh.count)) ||
      fh.upper_words > fh.count * HNSW_MAX_LEVEL * (uint64_t)(h->M + 1)) {
    st = QV_ECORRUPT;
    goto fail;
  }
  if (fh.extra_len > (uint64_t)sb.st_size) {
    st = QV_ETRUNC;
    goto fail;
  }
  uint64_t want = HDR_SIZE + fh.count * h->stride + fh.upper_words * 4 + fh.extra_len + 4;
  if ((uint64_t)sb.st_size != want) {
    st = (uint64_t)sb.st_size < want ? QV_ETRUNC : QV_ECORRUPT;
    goto fail;
  }
  if (fh.count && (st = grow(h, fh.count - 1))) goto fail;
  /* next counts the blocks read so far, with their upper-pointer field cleared at once:
   * whatever the file holds there, hnsw_free on the way out frees only our arrays. */
  for (uint64_t i = 0; i < fh.count; i++) {
    unsigned char *nd = node_at(h, (uint32_t)i);
    if (rget(&r, nd, h->stride)) goto fail_r;
    memset(nd + h->off_upper, 0, sizeof(uint32_t *));
    h->next = i + 1;
  }
  uint64_t used = 0;
  for (uint64_t i = 0; i < fh.count; i++) {
    unsigned char *nd = node_at(h, (uint32_t)i);
    size_t words = (size_t)level_of(nd) * (h->M + 1);
    if (!words) continue;
    if (used + words > fh.upper_words) {
      st = QV_ECORRUPT;
      goto fail;
    }
    uint32_t *up = malloc(words * 4);
    if (!up) {
      st = QV_ENOMEM;
      goto fail;
    }
    memcpy(nd + h->off_upper, &up, sizeof up);
    used += words;
    h->upper_bytes += words * 4;
    if (rget(&r, up, words * 4)) goto fail_r;
  }
  if (used != fh.upper_words) {
    st = QV_ECORRUPT;
    goto fail;
  }
  if (fh.extra_len) {
    if (!(xbuf = malloc(fh.extra_len))) {
      st = QV_ENOMEM;
      goto fail;
    }
    if (rget(&r, xbuf, fh.extra_len)) goto fail_r;
  }
  uint32_t crc = r.crc;
  unsigned char tail[4];
  if (rget(&r, tail, 4)) goto fail_r;
  if (get32(tail) != crc) {
    st = QV_ECORRUPT;
    goto fail;
  }
  if ((st = validate(h, &fh))) goto fail;
  h->deleted = fh.deleted;
  h->ep = fh.count ? (uint64_t)fh.max_level << 32 | fh.entry : EP_NONE;
  close(r.fd);
  free(r.buf);
  *out = h;
  if (extra) {
    *extra = xbuf;
    *extra_len = fh.extra_len;
  } else {
    free(xbuf);
  }
  return QV_OK;
fail_r:
  st = r.st;
fail:
  close(r.fd);
  free(r.buf);
  free(xbuf);
  hnsw_free(h);
  return st;
}
