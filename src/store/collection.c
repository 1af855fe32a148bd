/* A collection: durable points in LMDB, searched from a copy in memory.
 *
 * Invariants:
 *  1. LMDB's "points" table is the truth. The rows in memory (vectors, ids, parsed
 *     payloads) are a cache of it, rebuilt by collection_open_dir.
 *  2. A write is acknowledged only after mdb_txn_commit returned 0. The environment is
 *     opened without MDB_NOSYNC / MDB_NOMETASYNC / MDB_WRITEMAP, so a successful commit has
 *     fsynced the data pages and then the meta page: it survives kill -9 and power loss.
 *     A batch is one transaction, so it is all there or not at all.
 *  3. Memory changes only after the commit succeeded (apply_upsert, apply_delete), and that
 *     step cannot fail: reserve_rows made room before the transaction began. So memory
 *     never shows what storage does not hold.
 *  4. One writer at a time (write_mu; LMDB allows one write transaction anyway). Readers
 *     take rw shared and see memory between two applied batches, never inside one.
 *  5. After a failed commit the handle is sticky: every later write gets QV_ESTICKY until
 *     the collection is reopened, because after an fsync error the page cache may no
 *     longer say what is on disk.
 *  6. The HNSW graph is derived data (see "index" below). While it exists, every live row
 *     is either mapped to exactly one live graph node (row2node / node2row agree) or
 *     counted in `unindexed` and scored by the exact scan every graph search adds; a
 *     tombstoned node maps to no row. So a point not yet in the graph is still found, and
 *     a deleted one is never returned (unlink_row, remove_row, index_rows, build_locked).
 *  7. The graph file is trusted only when it names the points version stored in LMDB,
 *     which moves in the same transaction as every write that changes points or vectors
 *     (write_txn; payload-only edits move only `version`); anything else is rebuilt
 *     (load_graph). A crash during a build or a save costs a rebuild, never data.
 *  8. The GPU copy is derived data too, and is brought in step before every device search
 *     (see "device path" below, invariants D1-D4).
 *  9. Each float32 vector is held once. A row mapped to a node of a float32 graph has its
 *     vector in the graph's node block (the copy the search reads), and its slot in vecs
 *     is unspecified (its page may have been given back); every other row's vector is in
 *     vecs. Readers go through row_read; a row leaves the graph only by being rewritten
 *     (set_row) or removed (remove_row), or by a build that does not take it (build_locked
 *     copies such vectors back first).
 * 10. A page of vecs is marked in `gone` exactly while release_pages has given it back and
 *     nothing has written it since: release_pages marks the pages it gives back, and every
 *     write into vecs goes through row_write, which writes whole strides (so every page
 *     below row c->n's end has been written) and clears the marks of the pages it touches.
 *     gone_live counts the marks below row c->n's end and moves with c->n (rows_set_n), so
 *     the resident bytes stats report cost no system call (rows_resident).
 * 11. rowtab, while rowtab_ok, holds row_read(c, r) for every row r < c->n. Whatever can
 *     change a row's vector pointer (a row written, moved or mapped to a node, vecs moved
 *     by reserve_rows, a graph swapped in) runs under rw held for writing and clears
 *     rowtab_ok (rows_changed); the first exact scan after that rebuilds the table under rw
 *     shared and rowtab_mu (row_table). So every reader in one rw epoch sees one table.
 */
#define _GNU_SOURCE /* mremap */
#include "store/collection.h"

#include <dirent.h>
#include <errno.h>
#include <lmdb.h>
#include <malloc.h>
#include <stdio.h>
#include <unistd.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <jansson.h>

#include "base/error.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/pool.h"
#include "compute/device.h"
#include "index/distance.h"
#include "index/flat.h"
#include "index/flat_gpu.h"
#include "index/hnsw.h"
#include "store/filter.h"
#include "store/idmap.h"
#include "store/record.h"

#define MAP_SIZE ((size_t)1 << 40) /* address space only; the file grows as needed */
#define CONFIG_FORMAT 1
#define DEFAULT_M 16
#define DEFAULT_EF_CONSTRUCT 100
#define DEFAULT_FULL_SCAN_KB 10000
#define DEFAULT_QUANTILE 0.99f
#define DEFAULT_EF 64
#define NODE_NONE UINT32_MAX
#define BUILD_CHUNK 2048
/* A rebuild is scheduled once tombstones pass this share of the graph's nodes: a
 * tombstone still costs traversal work and memory, and hnswlib-style repair of the
 * neighbours' links is left for later (see the report in collection_close's comment). */
#define TOMBSTONE_SHARE 0.2

struct qv_collection {
  char *name, *dir;               /* read-only */
  qv_collection_config cfg;       /* size, distance, vector_name read-only; the rest under rw */
  size_t stride;                  /* floats per row: size rounded up to 64 bytes; read-only */
  MDB_env *env;
  MDB_dbi points, meta;
  void *map_addr;                 /* LMDB's map, or NULL if not found (find_map); read-only */
  size_t map_len;
  pthread_mutex_t write_mu;       /* held by the one writer */
  pthread_rwlock_t rw;            /* guards the rows below */
  int sticky;                     /* guarded by write_mu */
  size_t n, cap;
  float *vecs;                    /* (cap, stride) an anonymous mapping of vecs_bytes; see
                                   * "rows in memory" for which rows it holds */
  size_t vecs_bytes;
  float *sqnorms;                 /* (cap) squared L2 norm of each row */
  qv_point_id *ids;               /* (cap) */
  json_t **payloads;              /* (cap) parsed payload objects, NULL for none */
  idmap map;                      /* id -> row; reads ids (store/idmap.h) */
  size_t corrupt;                 /* records skipped at open; read-only after open */
  uint64_t version;               /* committed writes; stored in meta "version"; atomic */
  uint64_t points_version;        /* committed writes that changed points or vectors (not
                                   * payload-only edits); meta "points_version"; names the
                                   * graph file; under write_mu */
  size_t page;                    /* the system's page size; read-only */
  uint64_t *gone;                 /* (pages of vecs_bytes, in bits) pages given back
                                   * (invariant 10); under write_mu */
  size_t gone_live;               /* marks of gone below row n's end; written under write_mu,
                                   * read atomically */
  const float **rowtab;           /* (rowtab_cap) where each row's vector is (invariant 11) */
  size_t rowtab_cap;
  int rowtab_ok;                  /* atomic; cleared under rw held for writing */
  pthread_mutex_t rowtab_mu;      /* one rebuild at a time */

  /* The HNSW index (see "index" below). Rows move (swap-remove) and UUIDs do not fit a
   * graph label, so the graph's internal node ids are the stable names and two arrays
   * map between nodes and rows. All of these change only under write_mu and are swapped
   * or written under rw held for writing, so a search holding rw shared sees them whole. */
  hnsw *graph;                    /* NULL until built */
  uint32_t *node2row;             /* (node_cap) a node's row; NODE_NONE when tombstoned or pending */
  size_t node_cap;
  uint32_t *row2node;             /* (cap) a row's node; NODE_NONE when not in the graph */
  size_t unindexed;               /* rows with no node while graph != NULL: scanned exactly */
  qv_hnsw_config graph_cfg;       /* the parameters graph was built with */
  qv_quant_config graph_quant;    /* and its quantization */
  int graph_dirty;                /* graph differs from its file; under write_mu */
  int graph_loaded;               /* the graph came from its file at open; read-only */
  pthread_t worker;               /* background builder (index_worker) */
  int worker_started;
  pthread_mutex_t idx_mu;         /* guards the three below */
  pthread_cond_t idx_cv;
  int want_build, indexing, stop;

  /* The device path (see "device path" below). */
  compute_dispatch *disp;         /* device_dispatch(), fetched by the first search; atomic */
  pthread_mutex_t gpu_mu;         /* guards gpu (with rw shared); gpu_unfit is written under it, atomically */
  flat_gpu *gpu;                  /* the device copy, or NULL (D1) */
  size_t gpu_lo, gpu_hi;          /* rows written since the last sync (D2); under rw */
  size_t gpu_unfit;               /* row count at which the copy did not fit, or 0 (D3) */
};

static qv_status lmdb_fail(qv_error *err, int rc, const char *what) {
  qv_status st = rc > 0 ? rc : QV_ESTORE;
  if (rc == MDB_MAP_FULL) st = QV_ENOMEM;
  return qv_fail(err, st, "%s: %s", what, mdb_strerror(rc));
}

qv_status collection_name_check(const char *name, qv_error *err) {
  size_t len = name ? strlen(name) : 0;
  if (len == 0) return qv_fail(err, QV_ENAME, "collection name is empty");
  if (len > QV_MAX_NAME)
    return qv_fail(err, QV_ENAME, "collection name is %zu bytes, more than %d", len, QV_MAX_NAME);
  if (name[0] == '.')
    return qv_fail(err, QV_ENAME, "collection name \"%s\" starts with '.'", name);
  for (size_t i = 0; i < len; i++) {
    char ch = name[i];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '_' || ch == '-' || ch == '.';
    if (!ok)
      return qv_fail(err, QV_ENAME,
                     "collection name \"%s\" has '%c' at byte %zu; use letters, digits, '_', '-', '.'",
                     name, ch >= 32 && ch < 127 ? ch : '?', i);
  }
  return QV_OK;
}

/* ---- configuration -------------------------------------------------------------------- */

/* The map is address space, not memory; but where address space is scarce (a
 * ThreadSanitizer build, a ulimit -v) reserving 1 TiB fails with ENOMEM, so smaller maps
 * are tried down to 1 GiB, which then also bounds the collection's size. */
static qv_status env_open(MDB_env **out, const char *dir, qv_error *err) {
  int rc = 0;
  for (size_t map = MAP_SIZE; map >= ((size_t)1 << 30); map /= 4) {
    MDB_env *env;
    rc = mdb_env_create(&env);
    if (rc) return lmdb_fail(err, rc, "mdb_env_create");
    if ((rc = mdb_env_set_maxdbs(env, 4)) || (rc = mdb_env_set_mapsize(env, map)) ||
        (rc = mdb_env_open(env, dir, MDB_NOTLS, 0644))) {
      mdb_env_close(env);
      if (rc == ENOMEM) continue;
      break;
    }
    if (map != MAP_SIZE) LOG_WARN("%s: address space is short; the LMDB map is %zu MiB", dir, map >> 20);
    *out = env;
    return QV_OK;
  }
  return lmdb_fail(err, rc, dir);
}

/* Fills the zero fields of a configuration with the defaults and checks the ranges. */
qv_status collection_config_resolve(qv_collection_config *cfg, qv_error *err) {
  if (cfg->size < 1 || cfg->size > QV_MAX_VECTOR_SIZE)
    return qv_fail(err, QV_ERANGE, "vector size %u is outside 1..%d", cfg->size, QV_MAX_VECTOR_SIZE);
  if ((unsigned)cfg->distance > QV_DIST_MANHATTAN)
    return qv_fail(err, QV_EINVAL, "unknown distance %d", (int)cfg->distance);
  if (!cfg->hnsw.m) cfg->hnsw.m = DEFAULT_M;
  if (!cfg->hnsw.ef_construct) cfg->hnsw.ef_construct = DEFAULT_EF_CONSTRUCT;
  if (!cfg->hnsw.full_scan_threshold) cfg->hnsw.full_scan_threshold = DEFAULT_FULL_SCAN_KB;
  if (cfg->hnsw.m < 2 || cfg->hnsw.m > 1024)
    return qv_fail(err, QV_ERANGE, "hnsw_config.m %u is outside 2..1024", cfg->hnsw.m);
  if (cfg->hnsw.ef_construct < 4 || cfg->hnsw.ef_construct > 100000)
    return qv_fail(err, QV_ERANGE, "hnsw_config.ef_construct %u is outside 4..100000",
                   cfg->hnsw.ef_construct);
  if ((unsigned)cfg->quant.type > QV_QUANT_INT8)
    return qv_fail(err, QV_EINVAL, "unknown quantization type %d", (int)cfg->quant.type);
  if (cfg->quant.type == QV_QUANT_NONE) {
    cfg->quant.quantile = 0;
    cfg->quant.always_ram = 0;
  } else {
    if (cfg->quant.quantile == 0) cfg->quant.quantile = DEFAULT_QUANTILE;
    if (!(cfg->quant.quantile > 0.5f && cfg->quant.quantile <= 1.0f))
      return qv_fail(err, QV_ERANGE, "quantization quantile %g is outside (0.5, 1]",
                     (double)cfg->quant.quantile);
    cfg->quant.always_ram = cfg->quant.always_ram != 0;
  }
  if (memchr(cfg->vector_name, 0, sizeof cfg->vector_name) == NULL ||
      memchr(cfg->model, 0, sizeof cfg->model) == NULL)
    return qv_fail(err, QV_EINVAL, "vector name or model name is not terminated");
  return QV_OK;
}

/* The stored configuration, as compact JSON (malloc'd) or NULL when out of memory. Keys
 * added after format 1 (hnsw, quantization, vector_name, model) are optional on reading,
 * so configurations written before them still open with the defaults. */
static char *config_json(const char *name, const qv_collection_config *cfg) {
  json_t *j = json_pack("{s:i, s:s, s:I, s:s, s:{s:I, s:I, s:I}, s:s, s:s}", "format", CONFIG_FORMAT,
                        "name", name, "size", (json_int_t)cfg->size, "distance",
                        qv_distance_name(cfg->distance), "hnsw", "m", (json_int_t)cfg->hnsw.m,
                        "ef_construct", (json_int_t)cfg->hnsw.ef_construct, "full_scan_threshold",
                        (json_int_t)cfg->hnsw.full_scan_threshold, "vector_name", cfg->vector_name,
                        "model", cfg->model);
  if (j && cfg->quant.type == QV_QUANT_INT8) {
    json_t *q = json_pack("{s:s, s:f, s:b}", "type", "int8", "quantile", (double)cfg->quant.quantile,
                          "always_ram", cfg->quant.always_ram);
    if (!q || json_object_set_new(j, "quantization", q)) {
      json_decref(j);
      j = NULL;
    }
  }
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  return text;
}

qv_status collection_init_dir(const char *dir, const char *name, const qv_collection_config *cfg_in,
                              qv_error *err) {
  qv_collection_config cfg = *cfg_in;
  qv_status st = collection_config_resolve(&cfg, err);
  if (st) return st;
  MDB_env *env;
  st = env_open(&env, dir, err);
  if (st) return st;
  char *text = config_json(name, &cfg);
  if (!text) {
    mdb_env_close(env);
    return qv_fail(err, QV_ENOMEM, "out of memory writing the configuration");
  }
  MDB_txn *txn = NULL;
  MDB_dbi meta, points;
  int rc = mdb_txn_begin(env, NULL, 0, &txn);
  if (!rc) rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &meta);
  if (!rc) rc = mdb_dbi_open(txn, "points", MDB_CREATE, &points);
  if (!rc) {
    MDB_val k = {6, "config"}, v = {strlen(text), text};
    rc = mdb_put(txn, meta, &k, &v, 0);
  }
  if (!rc) {
    rc = mdb_txn_commit(txn);
    txn = NULL;
  }
  if (txn) mdb_txn_abort(txn);
  free(text);
  mdb_env_close(env);
  return rc ? lmdb_fail(err, rc, "writing the collection configuration") : QV_OK;
}

static int get_u32_field(json_t *obj, const char *key, uint32_t *out) {
  json_t *v = json_object_get(obj, key);
  if (!v) return 0;
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX) return -1;
  *out = (uint32_t)json_integer_value(v);
  return 0;
}

static qv_status read_config(qv_collection *c, MDB_txn *txn, qv_error *err) {
  MDB_val k = {6, "config"}, v;
  int rc = mdb_get(txn, c->meta, &k, &v);
  if (rc) return rc == MDB_NOTFOUND ? qv_fail(err, QV_ECORRUPT, "%s: no configuration", c->dir)
                                    : lmdb_fail(err, rc, "reading the configuration");
  json_error_t je;
  json_t *j = json_loadb(v.mv_data, v.mv_size, 0, &je);
  json_int_t format = 0, size = 0;
  const char *dist = NULL;
  qv_collection_config cfg = {0};
  int bad = !j || json_unpack(j, "{s:I, s:I, s:s}", "format", &format, "size", &size, "distance", &dist) ||
            format != CONFIG_FORMAT || size < 1 || size > QV_MAX_VECTOR_SIZE ||
            qv_distance_parse(&cfg.distance, dist) != QV_OK;
  if (!bad) {
    cfg.size = (uint32_t)size;
    json_t *h = json_object_get(j, "hnsw"), *q = json_object_get(j, "quantization");
    if (h) bad = !json_is_object(h) || get_u32_field(h, "m", &cfg.hnsw.m) ||
                 get_u32_field(h, "ef_construct", &cfg.hnsw.ef_construct) ||
                 get_u32_field(h, "full_scan_threshold", &cfg.hnsw.full_scan_threshold);
    if (!bad && q && !json_is_null(q)) {
      const char *type = NULL;
      double quantile = 0;
      int always = 0;
      bad = json_unpack(q, "{s:s, s?F, s?b}", "type", &type, "quantile", &quantile, "always_ram", &always) ||
            strcmp(type, "int8") != 0;
      cfg.quant.type = QV_QUANT_INT8;
      cfg.quant.quantile = (float)quantile;
      cfg.quant.always_ram = always;
    }
    const char *vn = json_string_value(json_object_get(j, "vector_name"));
    const char *model = json_string_value(json_object_get(j, "model"));
    if (!bad && vn && strlen(vn) <= QV_MAX_VECTOR_NAME) strcpy(cfg.vector_name, vn);
    if (!bad && model && strlen(model) <= QV_MAX_NAME) strcpy(cfg.model, model);
  }
  qv_status st = bad ? QV_ECORRUPT : collection_config_resolve(&cfg, NULL);
  if (st) st = qv_fail(err, QV_ECORRUPT, "%s: unreadable configuration", c->dir);
  else c->cfg = cfg;
  json_decref(j);
  if (!st) {
    MDB_val vk = {7, "version"}, vv;
    rc = mdb_get(txn, c->meta, &vk, &vv);
    if (rc == 0 && vv.mv_size == 8) memcpy(&c->version, vv.mv_data, 8);
    else if (rc != MDB_NOTFOUND) st = qv_fail(err, QV_ECORRUPT, "%s: unreadable version", c->dir);
  }
  if (!st) {
    /* Collections written before points_version existed named the graph file by version. */
    MDB_val vk = {14, "points_version"}, vv;
    c->points_version = c->version;
    rc = mdb_get(txn, c->meta, &vk, &vv);
    if (rc == 0 && vv.mv_size == 8) memcpy(&c->points_version, vv.mv_data, 8);
    else if (rc != MDB_NOTFOUND) st = qv_fail(err, QV_ECORRUPT, "%s: unreadable points version", c->dir);
  }
  return st;
}

static int cmp_size(const void *a, const void *b) {
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  return x < y ? -1 : x > y;
}

/* ---- rows in memory ------------------------------------------------------------------- */

/* Row pointers may have changed (invariant 11). Caller holds rw for writing, or is
 * opening the collection. */
static void rows_changed(qv_collection *c) { __atomic_store_n(&c->rowtab_ok, 0, __ATOMIC_RELAXED); }

/* Pages of vecs that rows [0, n) reach into: those whose residency stats count. */
static size_t rows_pages(const qv_collection *c, size_t n) {
  return (n * c->stride * sizeof(float) + c->page - 1) / c->page;
}

static int page_gone(const qv_collection *c, size_t p) { return (int)(c->gone[p / 64] >> (p % 64) & 1); }

/* Marks page p given back or not (invariant 10). Caller holds write_mu. */
static void page_mark(qv_collection *c, size_t p, int gone) {
  if (page_gone(c, p) == gone) return;
  c->gone[p / 64] ^= 1ULL << (p % 64);
  if (p >= rows_pages(c, c->n)) return;
  size_t live = __atomic_load_n(&c->gone_live, __ATOMIC_RELAXED);
  __atomic_store_n(&c->gone_live, gone ? live + 1 : live - 1, __ATOMIC_RELAXED);
}

/* Sets the row count, moving gone_live with it (invariant 10). Caller holds write_mu and
 * rw for writing. */
static void rows_set_n(qv_collection *c, size_t n) {
  size_t a = rows_pages(c, c->n), b = rows_pages(c, n), d = 0;
  for (size_t p = a < b ? a : b; p < (a < b ? b : a); p++) d += (size_t)page_gone(c, p);
  size_t live = __atomic_load_n(&c->gone_live, __ATOMIC_RELAXED);
  __atomic_store_n(&c->gone_live, b > a ? live + d : live - d, __ATOMIC_RELAXED);
  c->n = n;
}

static qv_status reserve_rows(qv_collection *c, size_t more) {
  if (idmap_reserve(&c->map, more)) return QV_ENOMEM;
  size_t need = c->n + more;
  if (need <= c->cap) return QV_OK;
  if (need > UINT32_MAX) return QV_ERANGE;
  size_t cap = c->cap ? c->cap : 64;
  while (cap < need) cap = cap + cap / 2;
  size_t bytes;
  if (qv_mul_overflow(cap, c->stride * sizeof(float), &bytes)) return QV_ENOMEM;
  float *sq = realloc(c->sqnorms, cap * sizeof *sq);
  if (sq) c->sqnorms = sq;
  qv_point_id *ids = realloc(c->ids, cap * sizeof *ids);
  if (ids) c->ids = ids;
  json_t **pl = realloc(c->payloads, cap * sizeof *pl);
  if (pl) c->payloads = pl;
  uint32_t *r2n = realloc(c->row2node, cap * sizeof *r2n);
  if (r2n) {
    c->row2node = r2n;
    for (size_t i = c->cap; i < cap; i++) r2n[i] = NODE_NONE;
  }
  if (!sq || !ids || !pl || !r2n) return QV_ENOMEM;
  size_t bits = 64 * c->page, words = (bytes + bits - 1) / bits, had = (c->vecs_bytes + bits - 1) / bits;
  if (words > had) {
    uint64_t *g = realloc(c->gone, words * sizeof *g);
    if (!g) return QV_ENOMEM;
    memset(g + had, 0, (words - had) * sizeof *g);
    c->gone = g;
  }
  /* Anonymous pages start zero (the padding floats stay zero, so kernels that read the
   * whole stride see no garbage), and mremap moves page tables instead of copying, so
   * pages given back by release_rows stay given back. */
  void *v = c->vecs ? mremap(c->vecs, c->vecs_bytes, bytes, MREMAP_MAYMOVE)
                    : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (v == MAP_FAILED) return QV_ENOMEM;
  rows_changed(c); /* vecs may have moved */
  c->vecs = v;
  c->vecs_bytes = bytes;
  c->cap = cap;
  return QV_OK;
}

/* A row's slot in vecs: it holds the row's vector only while the row is not in a float32
 * graph (invariant 9), so reads of a vector go through row_read; the slot is for writing
 * a row and for paths that have checked !vec_in_graph. */
static float *row_slot(const qv_collection *c, size_t row) { return c->vecs + row * c->stride; }

/* Writes a row's vector into its slot, padding zeroed: the whole stride, so the pages it
 * spans are resident and no longer marked given back (invariant 10). */
static void row_write(qv_collection *c, size_t row, const float *v) {
  float *d = row_slot(c, row);
  memcpy(d, v, c->cfg.size * sizeof(float));
  memset(d + c->cfg.size, 0, (c->stride - c->cfg.size) * sizeof(float));
  size_t rb = c->stride * sizeof(float);
  for (size_t p = row * rb / c->page; p <= ((row + 1) * rb - 1) / c->page; p++) page_mark(c, p, 0);
}

/* Whether mapped rows keep their vector in the graph: a float32 graph (an int8 one holds
 * codes, and the rows keep the floats that rescore its hits). */
static int vec_in_graph(const qv_collection *c) { return c->graph && !hnsw_quantized(c->graph); }

/* A row's vector (invariant 9). Caller holds rw, or write_mu (which every writer of the
 * graph, row2node and vecs holds). */
static const float *row_read(const qv_collection *c, size_t row) {
  uint32_t node = c->graph ? c->row2node[row] : NODE_NONE;
  if (node != NODE_NONE && !hnsw_quantized(c->graph)) return hnsw_vector(c->graph, node);
  return row_slot(c, row);
}

/* The table of where each row's vector is, for exact scans while vectors live in the
 * graph (invariant 11), or NULL when out of memory. Caller holds rw shared. */
static const float **row_table(qv_collection *c) {
  if (__atomic_load_n(&c->rowtab_ok, __ATOMIC_ACQUIRE)) return c->rowtab;
  pthread_mutex_lock(&c->rowtab_mu);
  if (!c->rowtab_ok) {
    if (c->rowtab_cap < c->n) {
      const float **t = realloc(c->rowtab, c->cap * sizeof *t);
      if (t) c->rowtab = t, c->rowtab_cap = c->cap;
    }
    if (c->rowtab_cap >= c->n) {
      for (size_t r = 0; r < c->n; r++) c->rowtab[r] = row_read(c, r);
      __atomic_store_n(&c->rowtab_ok, 1, __ATOMIC_RELEASE);
    }
  }
  const float **t = c->rowtab_ok ? c->rowtab : NULL;
  pthread_mutex_unlock(&c->rowtab_mu);
  return t;
}

/* Exact search over every row (allowed by mask) for queries (nq, dim) into hits (nq, k)
 * and counts (nq): over vecs as one matrix, or, while vectors live in the graph, over the
 * table of where each row's vector is (row_table). Caller holds rw. */
static qv_status exact_search(qv_collection *c, const float *qs, size_t nq, size_t k,
                              const uint64_t *mask, qv_pool *pool, flat_hit *hits, size_t *counts) {
  if (!vec_in_graph(c)) {
    flat_matrix m = {c->vecs, c->sqnorms, c->n, c->cfg.size, c->stride};
    return flat_search(hits, counts, qs, nq, &m, c->cfg.distance, k, mask, pool);
  }
  const float **t = c->n ? row_table(c) : NULL;
  if (c->n && !t) return QV_ENOMEM;
  return flat_search_rows(hits, counts, qs, nq, t, c->sqnorms, c->n, c->cfg.size, c->cfg.distance, k, mask,
                          pool);
}

/* Resident bytes of vecs up to row c->n: the pages rows reach into, less those given back
 * (invariant 10), so what stats report is what the rows hold, without a system call.
 * Caller holds rw. */
static size_t rows_resident(const qv_collection *c) {
  size_t len = c->n * c->stride * sizeof(float);
  size_t got = (rows_pages(c, c->n) - __atomic_load_n(&c->gone_live, __ATOMIC_ACQUIRE)) * c->page;
  return got < len ? got : len;
}

size_t collection_rows_mincore(qv_collection *c) {
  pthread_rwlock_rdlock(&c->rw);
  size_t len = c->n * c->stride * sizeof(float), pages = rows_pages(c, c->n), got = 0;
  unsigned char *v = pages ? malloc(pages) : NULL;
  if (v && !mincore(c->vecs, len, v))
    for (size_t i = 0; i < pages; i++) got += v[i] & 1;
  else got = pages;
  free(v);
  pthread_rwlock_unlock(&c->rw);
  return got * c->page < len ? got * c->page : len;
}

/* Gives back the pages [p0, p1) of vecs where every row they hold, up to c->n, has its
 * vector in a float32 graph (invariant 9), and marks them (invariant 10); rows past c->n
 * are free slots and need nothing. A page given back reads as zeros and is faulted in
 * again by the next write, so this only lowers memory. Caller holds write_mu. */
static void release_pages(qv_collection *c, size_t p0, size_t p1) {
  if (!vec_in_graph(c) || !c->vecs) return;
  size_t pg = c->page, rb = c->stride * sizeof(float), run = p0;
  for (size_t p = p0; p <= p1; p++) {
    int ok = p < p1 && (p + 1) * pg <= c->vecs_bytes && !page_gone(c, p);
    for (size_t r = p * pg / rb; ok && r < c->n && r * rb < (p + 1) * pg; r++) ok = c->row2node[r] != NODE_NONE;
    if (ok) continue;
    if (p > run && !madvise((char *)c->vecs + run * pg, (p - run) * pg, MADV_DONTNEED))
      for (size_t q = run; q < p; q++) page_mark(c, q, 1);
    run = p + 1;
  }
}

/* release_pages over the pages rows [lo, hi) reach into. */
static void release_rows(qv_collection *c, size_t lo, size_t hi) {
  size_t rb = c->stride * sizeof(float);
  if (lo < hi) release_pages(c, lo * rb / c->page, (hi * rb + c->page - 1) / c->page);
}

/* release_pages over the pages of the given rows: rows in ascending order whose pages
 * touch make one range, so new rows at the end cost one madvise and rows scattered over
 * the collection cost their own pages, not every page between them (a row out of order
 * starts a range of its own). */
static void release_row_list(qv_collection *c, const size_t *rows, size_t n) {
  size_t rb = c->stride * sizeof(float), a0 = 0, a1 = 0;
  for (size_t i = 0; i < n; i++) {
    size_t a = rows[i] * rb / c->page, b = ((rows[i] + 1) * rb + c->page - 1) / c->page;
    if (i && a >= a0 && a <= a1) {
      if (b > a1) a1 = b;
      continue;
    }
    if (i) release_pages(c, a0, a1);
    a0 = a;
    a1 = b;
  }
  if (n) release_pages(c, a0, a1);
}

/* Marks a row the GPU copy must take again (D2). Caller holds rw for writing. Without a
 * copy (always, in a process without a GPU) it is one branch. */
static void gpu_touch(qv_collection *c, size_t row) {
  if (!c->gpu) return;
  if (row < c->gpu_lo) c->gpu_lo = row;
  if (row + 1 > c->gpu_hi) c->gpu_hi = row + 1;
}

/* Takes a row out of the graph: its node becomes a tombstone (never returned, still
 * traversed) and the row counts as unindexed until it is inserted again. Caller holds
 * write_mu and rw for writing. */
static void unlink_row(qv_collection *c, size_t row) {
  uint32_t node = c->row2node[row];
  if (node == NODE_NONE) return;
  hnsw_mark_deleted(c->graph, node);
  c->node2row[node] = NODE_NONE;
  c->row2node[row] = NODE_NONE;
  c->unindexed++;
}

/* Sets row `row` (existing or the next free one) to this point; takes the payload ref.
 * A replaced point's old node is tombstoned; the new vector is unindexed until
 * index_rows inserts it. */
static void set_row(qv_collection *c, const qv_point_id *id, const float *vec, json_t *payload) {
  int64_t found = idmap_get(&c->map, id);
  size_t row;
  if (found >= 0) {
    row = (size_t)found;
    json_decref(c->payloads[row]);
    unlink_row(c, row);
  } else {
    row = c->n;
    rows_set_n(c, row + 1);
    c->ids[row] = *id;
    c->row2node[row] = NODE_NONE;
    if (c->graph) c->unindexed++;
    idmap_put(&c->map, id, (uint32_t)row);
  }
  row_write(c, row, vec);
  c->sqnorms[row] = dist_dot(vec, vec, c->cfg.size);
  c->payloads[row] = payload;
  gpu_touch(c, row);
  rows_changed(c);
}

/* Removes a row by moving the last row into its place. */
static void remove_row(qv_collection *c, size_t row) {
  idmap_del(&c->map, &c->ids[row]);
  json_decref(c->payloads[row]);
  unlink_row(c, row);
  if (c->graph) c->unindexed--; /* the row is gone, not waiting for the graph */
  size_t last = c->n - 1;
  if (row != last) {
    /* a vector held by the graph moves with its node: nothing to copy (invariant 9) */
    if (!vec_in_graph(c) || c->row2node[last] == NODE_NONE) row_write(c, row, row_slot(c, last));
    c->sqnorms[row] = c->sqnorms[last];
    c->ids[row] = c->ids[last];
    c->payloads[row] = c->payloads[last];
    idmap_put(&c->map, &c->ids[row], (uint32_t)row);
    uint32_t node = c->row2node[last];
    c->row2node[row] = node;
    if (node != NODE_NONE) c->node2row[node] = (uint32_t)row;
    gpu_touch(c, row);
  }
  c->row2node[last] = NODE_NONE;
  rows_set_n(c, last);
  rows_changed(c);
}

/* LMDB's read-only map of the data file: opening reads every record through it, and
 * those pages would stay in the process's resident set although searches never read
 * them (they use the rows in memory). Dropping them from the mapping costs little: they
 * stay in the page cache, and whatever reads them next faults them in again. (Write
 * transactions touch few map pages: a load of 100k points left RSS the same with or
 * without dropping them after each commit.) LMDB does not say where its map is, so
 * find_map looks it up once in /proc/self/maps by the data file's device and inode (it
 * does not move: the map size is fixed when the environment opens). */
static void find_map(qv_collection *c) {
  char path[PATH_MAX], line[PATH_MAX + 256];
  struct stat sb;
  if (snprintf(path, sizeof path, "%s/data.mdb", c->dir) >= (int)sizeof path || stat(path, &sb)) return;
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi, ino;
    unsigned dmaj, dmin;
    if (sscanf(line, "%lx-%lx %*s %*s %x:%x %lu", &lo, &hi, &dmaj, &dmin, &ino) == 5 && ino == sb.st_ino &&
        makedev(dmaj, dmin) == sb.st_dev && hi - lo > c->map_len) {
      c->map_addr = (void *)lo;
      c->map_len = hi - lo;
    }
  }
  fclose(f);
}

static void drop_map_pages(const qv_collection *c) {
  if (c->map_len) madvise(c->map_addr, c->map_len, MADV_DONTNEED);
}

#define LOAD_DROP_EVERY 32768
static qv_status load_points(qv_collection *c, MDB_txn *txn, qv_error *err) {
  MDB_stat stat;
  int rc = mdb_stat(txn, c->points, &stat);
  if (rc) return lmdb_fail(err, rc, "mdb_stat");
  if (reserve_rows(c, stat.ms_entries)) return qv_fail(err, QV_ENOMEM, "out of memory loading %zu points", (size_t)stat.ms_entries);
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, c->points, &cur))) return lmdb_fail(err, rc, "mdb_cursor_open");
  MDB_val k, v;
  float *tmp = malloc(c->cfg.size * sizeof(float));
  qv_status st = tmp ? QV_OK : qv_fail(err, QV_ENOMEM, "out of memory");
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); !st && rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    qv_point_id id;
    record_view rv;
    json_t *payload = NULL;
    int bad = record_key_decode(&id, k.mv_data, k.mv_size) || record_decode(&rv, v.mv_data, v.mv_size) ||
              rv.dim != c->cfg.size;
    if (!bad && rv.payload) {
      payload = json_loadb(rv.payload, rv.payload_len, 0, NULL);
      bad = !json_is_object(payload);
    }
    if (bad) {
      json_decref(payload);
      c->corrupt++;
      continue;
    }
    memcpy(tmp, rv.vector, c->cfg.size * sizeof(float));
    set_row(c, &id, tmp, payload);
    if (c->n % LOAD_DROP_EVERY == 0) drop_map_pages(c); /* keeps the peak down too */
  }
  free(tmp);
  mdb_cursor_close(cur);
  if (!st && rc != MDB_NOTFOUND) st = lmdb_fail(err, rc, "reading points");
  if (c->corrupt)
    LOG_ERROR("collection %s: skipped %zu corrupt records (checksum or layout mismatch)", c->name,
              c->corrupt);
  return st;
}

/* ---- index ---------------------------------------------------------------------------
 *
 * The graph is derived data: LMDB stays the truth (invariant 1), and the graph can always
 * be rebuilt from the rows. It exists once the collection's vectors pass
 * full_scan_threshold KB (Qdrant's unit); below that every search is exact. Writers keep
 * it in step: an upsert inserts its new vectors after its commit, holding write_mu but
 * not rw, so searches go on meanwhile; the rows are unindexed (scanned exactly by every
 * search) until their nodes are mapped. Deletes and replacements tombstone the node. A
 * background thread (index_worker) builds the graph the first time, and rebuilds it when
 * tombstones pass TOMBSTONE_SHARE or the parameters change; a build holds write_mu, so
 * writers wait for it while searches keep using the old graph or the exact scan. */

static size_t vectors_kb(const qv_collection *c, size_t n) { return n * c->cfg.size * sizeof(float) / 1024; }

/* Whether the graph should be (re)built now; caller holds write_mu. */
static int needs_build(const qv_collection *c) {
  if (vectors_kb(c, c->n) < c->cfg.hnsw.full_scan_threshold) return 0;
  if (!c->graph) return 1;
  if (c->graph_cfg.m != c->cfg.hnsw.m || c->graph_cfg.ef_construct != c->cfg.hnsw.ef_construct) return 1;
  if (c->graph_quant.type != c->cfg.quant.type ||
      (c->cfg.quant.type && c->graph_quant.quantile != c->cfg.quant.quantile))
    return 1;
  size_t total = hnsw_count(c->graph), dead = hnsw_deleted_count(c->graph);
  return total && (double)dead > TOMBSTONE_SHARE * (double)total;
}

static void request_build(qv_collection *c) {
  pthread_mutex_lock(&c->idx_mu);
  c->want_build = 1;
  pthread_cond_broadcast(&c->idx_cv);
  pthread_mutex_unlock(&c->idx_mu);
}

static int stopping(qv_collection *c) { return __atomic_load_n(&c->stop, __ATOMIC_ACQUIRE); }

/* Makes room for `more` further graph nodes in node2row, so mapping them cannot fail;
 * caller holds write_mu and rw for writing. */
static qv_status reserve_nodes(qv_collection *c, size_t more) {
  if (!c->graph) return QV_OK;
  size_t need = hnsw_count(c->graph) + more;
  if (need <= c->node_cap) return QV_OK;
  size_t cap = c->node_cap ? c->node_cap : 1024;
  while (cap < need) cap += cap / 2;
  uint32_t *m = realloc(c->node2row, cap * sizeof *m);
  if (!m) return QV_ENOMEM;
  for (size_t i = c->node_cap; i < cap; i++) m[i] = NODE_NONE;
  c->node2row = m;
  c->node_cap = cap;
  return QV_OK;
}

/* Inserts rows into graph g (n of them) in chunks, over the pool for big batches, and
 * records each node's row in node2row / row2node as given (the caller decides whether
 * these are the live arrays, under rw, or a new build's). */
typedef struct index_job {
  hnsw *g;
  const size_t *rows;
  size_t n;
  float *buf;        /* (BUILD_CHUNK, size) */
  uint64_t *labels;  /* (BUILD_CHUNK) */
  uint32_t *ids;     /* (BUILD_CHUNK) */
} index_job;

static qv_status insert_chunk(qv_collection *c, index_job *j, size_t from, size_t cnt) {
  size_t dim = c->cfg.size;
  for (size_t i = 0; i < cnt; i++) {
    memcpy(j->buf + i * dim, row_read(c, j->rows[from + i]), dim * sizeof(float));
    j->labels[i] = j->rows[from + i];
  }
  return hnsw_add_batch(j->g, j->labels, j->buf, cnt, cnt >= 64 ? pool_default() : NULL, j->ids);
}

static qv_status job_init(index_job *j, hnsw *g, const size_t *rows, size_t n, size_t dim) {
  size_t chunk = n < BUILD_CHUNK ? n : BUILD_CHUNK;
  if (!chunk) chunk = 1;
  *j = (index_job){g, rows, n, malloc(chunk * dim * sizeof(float)), malloc(chunk * sizeof(uint64_t)),
                   malloc(chunk * sizeof(uint32_t))};
  return j->buf && j->labels && j->ids ? QV_OK : QV_ENOMEM;
}

static void job_free(index_job *j) {
  free(j->buf);
  free(j->labels);
  free(j->ids);
}

/* Inserts the given unindexed rows into the live graph. Caller holds write_mu (so rows
 * stay put) and not rw: searches run meanwhile and see the new nodes only once mapped. */
static qv_status index_rows(qv_collection *c, const size_t *rows, size_t n) {
  index_job j;
  qv_status st = job_init(&j, c->graph, rows, n, c->cfg.size);
  for (size_t from = 0; !st && from < n; from += BUILD_CHUNK) {
    size_t cnt = n - from < BUILD_CHUNK ? n - from : BUILD_CHUNK;
    st = insert_chunk(c, &j, from, cnt);
    pthread_rwlock_wrlock(&c->rw);
    for (size_t i = 0; i < cnt; i++) {
      if (j.ids[i] == UINT32_MAX || j.ids[i] >= c->node_cap) continue; /* stays unindexed: scanned */
      size_t row = rows[from + i];
      c->node2row[j.ids[i]] = (uint32_t)row;
      c->row2node[row] = j.ids[i];
      c->unindexed--;
    }
    rows_changed(c);
    pthread_rwlock_unlock(&c->rw);
    release_row_list(c, rows + from, cnt);
    c->graph_dirty = 1;
  }
  job_free(&j);
  return st;
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

/* The int8 range, as Qdrant's scalar quantization picks it: the values between the
 * (1 - quantile) / 2 and (1 + quantile) / 2 quantiles of every vector component (Cosine
 * rows are stored normalized), estimated from up to QUANT_SAMPLE of them spread evenly
 * over the rows. Outliers beyond the range are clipped to its ends. */
#define QUANT_SAMPLE 200000
static qv_status quant_range(const qv_collection *c, float quantile, float *lo, float *hi) {
  size_t dim = c->cfg.size, total = c->n * dim, take = total < QUANT_SAMPLE ? total : QUANT_SAMPLE;
  *lo = -1;
  *hi = 1;
  if (!take) return QV_OK;
  float *v = malloc(take * sizeof *v);
  if (!v) return QV_ENOMEM;
  for (size_t i = 0; i < take; i++) {
    size_t at = (size_t)((double)i * (double)total / (double)take);
    v[i] = row_read(c, at / dim)[at % dim];
  }
  qsort(v, take, sizeof *v, cmp_float);
  double tail = (1.0 - quantile) / 2;
  size_t a = (size_t)(tail * (double)(take - 1)), b = (size_t)((1.0 - tail) * (double)(take - 1) + 0.5);
  *lo = v[a];
  *hi = v[b];
  free(v);
  return QV_OK;
}

/* The metric the graph is built with: rows and queries of a Cosine collection are
 * normalized already (prepare_point, qv_collection_search), so the graph takes them as
 * they are, by inner product, and its vectors stay bit-identical to the rows' (invariant
 * 9); normalizing them again could move the last bit. */
static qv_distance graph_metric(const qv_collection *c) {
  return c->cfg.distance == QV_DIST_COSINE ? QV_DIST_DOT : c->cfg.distance;
}

/* Before a build swaps graphs: rows whose vector lives in the old float32 graph and that
 * the new graph does not hold as floats (it is int8, or the row failed to go in) get it
 * back in vecs (invariant 9). Caller holds write_mu and rw for writing. */
static void unload_rows(qv_collection *c, const hnsw *next, const uint32_t *next_r2n) {
  if (!vec_in_graph(c)) return;
  for (size_t r = 0; r < c->n; r++) {
    uint32_t node = c->row2node[r];
    if (node == NODE_NONE || (!hnsw_quantized(next) && next_r2n[r] != NODE_NONE)) continue;
    row_write(c, r, hnsw_vector(c->graph, node));
  }
}

/* A build, or an upsert of a large batch, frees megabytes of short-lived blocks (the old
 * graph, the build's tables, the graph file's map; the batch's vectors) in the middle of
 * the heap, where free() keeps them; malloc_trim hands their pages back. On a 100k x 128
 * collection it took the heap from 20.7 to 15.8 MB after the build (bench ann
 * --collection, VmRSS by mapping), and the resident set after loading it in 10,000-point
 * batches from 75.0 to 65.7 MB. */
static void give_back_heap(void) { malloc_trim(0); }

/* Builds a new graph over every row and swaps it in. Caller holds write_mu; searches go
 * on with the old graph (or exact scans) until the swap. Stops early, changing nothing,
 * when the collection is closing. */
static qv_status build_locked(qv_collection *c) {
  hnsw *g = NULL;
  size_t n = c->n;
  size_t cap = n + n / 2 + 1024;
  uint32_t *n2r = malloc(cap * sizeof *n2r), *r2n = malloc((c->cap ? c->cap : 1) * sizeof *r2n);
  size_t *rows = malloc((n ? n : 1) * sizeof *rows);
  index_job j = {0};
  qv_status st = n2r && r2n && rows ? QV_OK : QV_ENOMEM;
  if (!st) st = hnsw_new(&g, c->cfg.size, graph_metric(c), c->cfg.hnsw.m, c->cfg.hnsw.ef_construct, 42);
  if (!st && c->cfg.quant.type == QV_QUANT_INT8) {
    float lo, hi;
    st = quant_range(c, c->cfg.quant.quantile, &lo, &hi);
    if (!st) st = hnsw_quantize_int8(g, lo, hi);
  }
  if (!st) st = job_init(&j, g, rows, n, c->cfg.size);
  if (st) goto out;
  for (size_t i = 0; i < cap; i++) n2r[i] = NODE_NONE;
  for (size_t i = 0; i < c->cap; i++) r2n[i] = NODE_NONE;
  for (size_t i = 0; i < n; i++) rows[i] = i;
  size_t unindexed = 0;
  for (size_t from = 0; from < n; from += BUILD_CHUNK) {
    if (stopping(c)) {
      st = QV_EBUSY;
      goto out;
    }
    size_t cnt = n - from < BUILD_CHUNK ? n - from : BUILD_CHUNK;
    if ((st = insert_chunk(c, &j, from, cnt))) goto out;
    for (size_t i = 0; i < cnt; i++) {
      if (j.ids[i] == UINT32_MAX || j.ids[i] >= cap) {
        unindexed++;
        continue;
      }
      n2r[j.ids[i]] = (uint32_t)(from + i);
      r2n[from + i] = j.ids[i];
    }
  }
  pthread_rwlock_wrlock(&c->rw);
  unload_rows(c, g, r2n);
  hnsw *old = c->graph;
  c->graph = g;
  g = old;
  free(c->node2row);
  c->node2row = n2r;
  c->node_cap = cap;
  n2r = NULL;
  free(c->row2node);
  c->row2node = r2n;
  r2n = NULL;
  c->unindexed = unindexed;
  c->graph_cfg = c->cfg.hnsw;
  c->graph_quant = c->cfg.quant;
  rows_changed(c);
  if (!vec_in_graph(c)) { /* exact scans read vecs again: the table is not needed */
    free(c->rowtab);
    c->rowtab = NULL;
    c->rowtab_cap = 0;
  }
  pthread_rwlock_unlock(&c->rw);
  release_rows(c, 0, c->n);
  c->graph_dirty = 1;
  LOG_INFO("collection %s: HNSW index built over %zu points (m %u, ef_construct %u)", c->name, n,
           c->cfg.hnsw.m, c->cfg.hnsw.ef_construct);
out:
  job_free(&j);
  hnsw_free(g);
  free(n2r);
  free(r2n);
  free(rows);
  return st;
}

/* ---- index persistence ------------------------------------------------------------------
 *
 * The graph is saved beside the LMDB environment as GRAPH_FILE by hnsw_save_ex (temporary
 * file, fsync, rename, directory fsync), with a map appended under the same checksum:
 *   "QVGMAP01" | u64 points version | u64 points | u64 nodes | u32 m | u32 ef_construct |
 *   per node: u8 kind (0 integer, 1 UUID, 0xFF tombstone) | 16 bytes (u64 LE or UUID)
 * At open the file is used only when it reads back whole (magic, format version,
 * checksums, graph validation) and names the stored points version and point count: that
 * version moves in the same LMDB transaction as every upsert and delete (write_txn), so
 * equal versions mean the same points and vectors. Payload edits leave it, and so the
 * file, alone. Anything else, including a file from before a crash
 * that followed later writes, is ignored and the graph rebuilt: it is derived data, so
 * a kill -9 during a build or a save costs a rebuild, never the collection. */

#define GRAPH_FILE "graph.hnsw"
#define GMAP_MAGIC "QVGMAP01"
#define GMAP_HEAD 40
#define GMAP_ENTRY 17

static char *graph_path(const qv_collection *c) {
  size_t len = strlen(c->dir) + sizeof GRAPH_FILE + 1;
  char *p = malloc(len);
  if (p) snprintf(p, len, "%s/%s", c->dir, GRAPH_FILE);
  return p;
}

/* Caller holds write_mu, so no node is added or moved while the map is written. */
static qv_status save_graph_locked(qv_collection *c) {
  if (!c->graph || !c->graph_dirty) return QV_OK;
  size_t nodes = hnsw_count(c->graph), len = GMAP_HEAD + nodes * GMAP_ENTRY;
  unsigned char *m = calloc(1, len);
  char *path = graph_path(c);
  qv_status st = m && path ? QV_OK : QV_ENOMEM;
  if (!st) {
    uint64_t head[4] = {c->points_version, c->n, nodes, (uint64_t)c->graph_cfg.ef_construct << 32 | c->graph_cfg.m};
    memcpy(m, GMAP_MAGIC, 8);
    memcpy(m + 8, head, sizeof head);
    for (size_t i = 0; i < nodes; i++) {
      unsigned char *e = m + GMAP_HEAD + i * GMAP_ENTRY;
      uint32_t row = i < c->node_cap ? c->node2row[i] : NODE_NONE;
      if (row == NODE_NONE) {
        e[0] = 0xFF;
        continue;
      }
      const qv_point_id *id = &c->ids[row];
      e[0] = id->kind;
      if (id->kind == QV_ID_UUID) memcpy(e + 1, id->uuid, 16);
      else memcpy(e + 1, &id->num, 8);
    }
    st = hnsw_save_ex(c->graph, path, m, len);
  }
  if (st) LOG_WARN("collection %s: saving the index failed (%s); it will be rebuilt at the next open",
                   c->name, qv_strerror(st));
  else c->graph_dirty = 0;
  free(m);
  free(path);
  return st;
}

/* Loads the saved graph when it matches the stored points; at open, before any thread
 * but this one sees the collection. A mismatch is logged and left for a rebuild. */
static void load_graph(qv_collection *c) {
  char *path = graph_path(c);
  hnsw *g = NULL;
  unsigned char *m = NULL;
  size_t len = 0;
  uint32_t *n2r = NULL;
  const char *why = NULL;
  if (!path) return;
  qv_status st = hnsw_load_ex(&g, path, (void **)&m, &len);
  if (st == ENOENT) goto out;
  if (st) {
    why = qv_strerror(st);
    goto out;
  }
  uint64_t head[4];
  size_t nodes = hnsw_count(g), cap = nodes + nodes / 2 + 1024;
  if (len >= GMAP_HEAD) memcpy(head, m + 8, sizeof head);
  if (len < GMAP_HEAD || memcmp(m, GMAP_MAGIC, 8) || head[2] != nodes ||
      len != GMAP_HEAD + nodes * GMAP_ENTRY) {
    why = "no valid point map";
    goto out;
  }
  if (head[0] != c->points_version || head[1] != c->n) {
    why = "it was saved before later writes";
    goto out;
  }
  if (hnsw_dim(g) != c->cfg.size || hnsw_distance(g) != graph_metric(c)) {
    why = "its dimension or distance differ";
    goto out;
  }
  if (!(n2r = malloc(cap * sizeof *n2r))) goto out;
  for (size_t i = 0; i < cap; i++) n2r[i] = NODE_NONE;
  size_t mapped = 0;
  for (size_t i = 0; i < nodes; i++) {
    const unsigned char *e = m + GMAP_HEAD + i * GMAP_ENTRY;
    if (e[0] == 0xFF) {
      if (!hnsw_is_deleted(g, (uint32_t)i)) hnsw_mark_deleted(g, (uint32_t)i);
      continue;
    }
    qv_point_id id = {.kind = e[0]};
    if (e[0] == QV_ID_UUID) memcpy(id.uuid, e + 1, 16);
    else if (e[0] == QV_ID_NUM) memcpy(&id.num, e + 1, 8);
    else {
      why = "its point map is damaged";
      goto unmap;
    }
    int64_t row = idmap_get(&c->map, &id);
    if (hnsw_is_deleted(g, (uint32_t)i)) continue;
    if (row < 0 || c->row2node[row] != NODE_NONE) {
      why = "its point map does not match the stored points";
      goto unmap;
    }
    n2r[i] = (uint32_t)row;
    c->row2node[row] = (uint32_t)i;
    mapped++;
  }
  c->graph = g;
  g = NULL;
  c->node2row = n2r;
  c->node_cap = cap;
  n2r = NULL;
  c->unindexed = c->n - mapped;
  c->graph_cfg.m = (uint32_t)head[3];
  c->graph_cfg.ef_construct = (uint32_t)(head[3] >> 32);
  c->graph_cfg.full_scan_threshold = c->cfg.hnsw.full_scan_threshold;
  /* the quantile is not in the file: a graph with codes is taken to match the config's */
  c->graph_quant = hnsw_quantized(c->graph) ? c->cfg.quant : (qv_quant_config){0};
  c->graph_loaded = 1;
  rows_changed(c);
  release_rows(c, 0, c->n);
  goto out;
unmap:
  for (size_t r = 0; r < c->n; r++) c->row2node[r] = NODE_NONE;
out:
  if (why) LOG_WARN("collection %s: not using the saved index (%s); rebuilding it", c->name, why);
  hnsw_free(g);
  free(n2r);
  free(m);
  free(path);
}

/* Removes temporary files a crash during a save left behind. */
static void sweep_graph_tmp(const qv_collection *c) {
  DIR *d = opendir(c->dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)))
    if (!strncmp(e->d_name, GRAPH_FILE ".tmp-", sizeof GRAPH_FILE + 4)) {
      char *p = malloc(strlen(c->dir) + strlen(e->d_name) + 2);
      if (!p) break;
      sprintf(p, "%s/%s", c->dir, e->d_name);
      unlink(p);
      free(p);
    }
  closedir(d);
}

int collection_index_loaded(const qv_collection *c) { return c->graph_loaded; }

static void *index_worker(void *arg) {
  qv_collection *c = arg;
  pthread_mutex_lock(&c->idx_mu);
  for (;;) {
    while (!c->want_build && !c->stop) pthread_cond_wait(&c->idx_cv, &c->idx_mu);
    if (c->stop) break;
    c->want_build = 0;
    c->indexing = 1;
    pthread_mutex_unlock(&c->idx_mu);
    pthread_mutex_lock(&c->write_mu);
    if (needs_build(c)) {
      qv_status st = build_locked(c);
      if (!st) save_graph_locked(c);
      give_back_heap();
      if (st && st != QV_EBUSY)
        LOG_ERROR("collection %s: building the index failed: %s; searches stay exact", c->name,
                  qv_strerror(st));
    }
    pthread_mutex_unlock(&c->write_mu);
    pthread_mutex_lock(&c->idx_mu);
    c->indexing = 0;
    pthread_cond_broadcast(&c->idx_cv);
  }
  pthread_mutex_unlock(&c->idx_mu);
  return NULL;
}

qv_status collection_index_build(qv_collection *c, qv_error *err) {
  pthread_mutex_lock(&c->write_mu);
  qv_status st = build_locked(c);
  if (!st) st = save_graph_locked(c);
  give_back_heap();
  pthread_mutex_unlock(&c->write_mu);
  return st ? qv_fail(err, st, "collection %s: building the index: %s", c->name, qv_strerror(st)) : QV_OK;
}

void collection_index_wait(qv_collection *c) {
  pthread_mutex_lock(&c->idx_mu);
  while ((c->want_build || c->indexing) && !c->stop) pthread_cond_wait(&c->idx_cv, &c->idx_mu);
  pthread_mutex_unlock(&c->idx_mu);
}

qv_status collection_open_dir(qv_collection **out, const char *dir, const char *name, qv_error *err) {
  MDB_txn *txn = NULL;
  int rc;
  qv_collection *c = calloc(1, sizeof *c);
  if (!c) return qv_fail(err, QV_ENOMEM, "out of memory");
  idmap_init(&c->map, &c->ids);
  c->name = strdup(name);
  c->dir = strdup(dir);
  pthread_mutex_init(&c->write_mu, NULL);
  pthread_rwlock_init(&c->rw, NULL);
  pthread_mutex_init(&c->idx_mu, NULL);
  pthread_cond_init(&c->idx_cv, NULL);
  pthread_mutex_init(&c->gpu_mu, NULL);
  pthread_mutex_init(&c->rowtab_mu, NULL);
  c->page = (size_t)sysconf(_SC_PAGESIZE);
  qv_status st = c->name && c->dir ? QV_OK : qv_fail(err, QV_ENOMEM, "out of memory");
  if (!st) st = env_open(&c->env, dir, err);
  if (st) goto fail;
  rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
  if (!rc) rc = mdb_dbi_open(txn, "meta", 0, &c->meta);
  if (!rc) rc = mdb_dbi_open(txn, "points", 0, &c->points);
  if (rc) {
    if (!txn) goto fail;
    mdb_txn_abort(txn);
    st = rc == MDB_NOTFOUND ? qv_fail(err, QV_ECORRUPT, "%s: not a Quiver collection", dir)
                            : lmdb_fail(err, rc, dir);
    goto fail;
  }
  find_map(c);
  c->cfg.size = 0;
  st = read_config(c, txn, err);
  if (!st) {
    c->stride = (c->cfg.size + 15) & ~(size_t)15;
    st = load_points(c, txn, err);
  }
  /* dbi handles opened in a read-only transaction stay valid after it commits */
  if (st) mdb_txn_abort(txn);
  else mdb_txn_commit(txn);
  if (st) goto fail;
  drop_map_pages(c);
  sweep_graph_tmp(c);
  load_graph(c);
  if (pthread_create(&c->worker, NULL, index_worker, c)) {
    st = qv_fail(err, QV_ENOMEM, "cannot start the index thread");
    goto fail;
  }
  c->worker_started = 1;
  pthread_mutex_lock(&c->write_mu);
  if (needs_build(c)) request_build(c);
  pthread_mutex_unlock(&c->write_mu);
  *out = c;
  return QV_OK;
fail:
  collection_close(c);
  return st ? st : QV_ESTORE;
}

void collection_close(qv_collection *c) {
  if (!c) return;
  if (c->worker_started) {
    pthread_mutex_lock(&c->idx_mu);
    __atomic_store_n(&c->stop, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&c->idx_cv);
    pthread_mutex_unlock(&c->idx_mu);
    pthread_join(c->worker, NULL);
    pthread_mutex_lock(&c->write_mu);
    if (!c->sticky) save_graph_locked(c);
    pthread_mutex_unlock(&c->write_mu);
  }
  flat_gpu_free(c->gpu);
  pthread_mutex_destroy(&c->gpu_mu);
  hnsw_free(c->graph);
  free(c->node2row);
  free(c->row2node);
  if (c->env) mdb_env_close(c->env);
  for (size_t i = 0; i < c->n; i++) json_decref(c->payloads[i]);
  if (c->vecs) munmap(c->vecs, c->vecs_bytes);
  free(c->gone);
  free(c->rowtab);
  pthread_mutex_destroy(&c->rowtab_mu);
  free(c->sqnorms);
  free(c->ids);
  free(c->payloads);
  idmap_free(&c->map);
  pthread_mutex_destroy(&c->write_mu);
  pthread_rwlock_destroy(&c->rw);
  pthread_mutex_destroy(&c->idx_mu);
  pthread_cond_destroy(&c->idx_cv);
  free(c->name);
  free(c->dir);
  free(c);
}

void qv_collection_config_get(const qv_collection *c, qv_collection_config *out) {
  pthread_rwlock_rdlock((pthread_rwlock_t *)&c->rw);
  *out = c->cfg;
  pthread_rwlock_unlock((pthread_rwlock_t *)&c->rw);
}

size_t qv_collection_count_all(const qv_collection *c) {
  pthread_rwlock_rdlock((pthread_rwlock_t *)&c->rw);
  size_t n = c->n;
  pthread_rwlock_unlock((pthread_rwlock_t *)&c->rw);
  return n;
}

/* ---- writes --------------------------------------------------------------------------- */

/* A point checked and converted for storage: vector normalized for Cosine, payload parsed
 * and re-serialized compactly. */
typedef struct prepared {
  float *vec;    /* (size), in the batch's block of vectors (qv_collection_upsert) */
  json_t *json;  /* NULL for none */
  char *text;    /* compact JSON, NULL for none */
} prepared;

static int all_finite(const float *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(v[i])) return 0;
  return 1;
}

/* Fills out for p, its vector copied into vec (room for cfg.size floats). */
static qv_status prepare_point(const qv_collection *c, const qv_point *p, size_t index, float *vec,
                               prepared *out, qv_error *err) {
  char idtext[40];
  qv_point_id_format(&p->id, idtext);
  if (!p->vector) return qv_fail(err, QV_EINVAL, "point %s (#%zu): no vector", idtext, index);
  for (uint32_t i = 0; i < c->cfg.size; i++)
    if (!isfinite(p->vector[i]))
      return qv_fail(err, QV_ENONFINITE, "point %s (#%zu): component %u is %s", idtext, index, i,
                     isnan(p->vector[i]) ? "NaN" : "infinite");
  out->vec = vec;
  memcpy(out->vec, p->vector, c->cfg.size * sizeof(float));
  if (c->cfg.distance == QV_DIST_COSINE) dist_normalize(out->vec, c->cfg.size);
  if (!all_finite(out->vec, c->cfg.size)) /* normalizing a huge vector can overflow */
    return qv_fail(err, QV_ENONFINITE, "point %s (#%zu): vector cannot be normalized", idtext, index);
  if (p->payload) {
    json_error_t je;
    out->json = json_loads(p->payload, 0, &je);
    if (!out->json)
      return qv_fail(err, QV_EJSON, "point %s (#%zu): payload: %s at column %d", idtext, index, je.text,
                     je.column);
    if (!json_is_object(out->json))
      return qv_fail(err, QV_EJSON, "point %s (#%zu): payload must be a JSON object", idtext, index);
    out->text = json_dumps(out->json, JSON_COMPACT);
    if (!out->text) return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  return QV_OK;
}

static void prepared_free(prepared *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    json_decref(p[i].json);
    free(p[i].text);
  }
  free(p);
}

/* Runs the LMDB side of a write: fn fills the transaction, then it commits. A failed
 * commit makes the handle sticky (invariant 5). Caller holds write_mu. */
typedef int (*txn_fill_fn)(qv_collection *c, MDB_txn *txn, void *ctx);

static qv_status write_txn(qv_collection *c, txn_fill_fn fill, void *ctx, int points, qv_error *err) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
  if (rc) return lmdb_fail(err, rc, "mdb_txn_begin");
  rc = fill(c, txn, ctx);
  if (!rc) {
    /* The versions move with the data in the same transaction, so a saved graph that
     * names a points version matches exactly the points stored under it. */
    uint64_t next = c->version + 1;
    MDB_val k = {7, "version"}, v = {8, &next};
    rc = mdb_put(txn, c->meta, &k, &v, 0);
  }
  if (!rc && points) {
    uint64_t next = c->points_version + 1;
    MDB_val k = {14, "points_version"}, v = {8, &next};
    rc = mdb_put(txn, c->meta, &k, &v, 0);
  }
  if (rc) {
    mdb_txn_abort(txn);
    return lmdb_fail(err, rc, "writing points");
  }
  rc = mdb_txn_commit(txn);
  if (rc) {
    c->sticky = 1;
    LOG_ERROR("collection %s: commit failed (%s); refusing writes until reopened", c->name,
              mdb_strerror(rc));
    return lmdb_fail(err, rc, "committing");
  }
  return QV_OK;
}

/* Called with write_mu and rw held for writing, after the memory side of a committed
 * write is applied: write_txn stored version + 1 (and points_version + 1 when points is
 * set) in the same transaction. */
static void bump_version(qv_collection *c, int points) {
  __atomic_store_n(&c->version, c->version + 1, __ATOMIC_RELEASE);
  if (points) c->points_version++;
}

uint64_t qv_collection_version(const qv_collection *c) {
  return __atomic_load_n(&c->version, __ATOMIC_ACQUIRE);
}

typedef struct upsert_ctx {
  const qv_point *points;
  prepared *prep;
  size_t n;
} upsert_ctx;

static int fill_upsert(qv_collection *c, MDB_txn *txn, void *arg) {
  upsert_ctx *u = arg;
  for (size_t i = 0; i < u->n; i++) {
    uint8_t key[RECORD_KEY_MAX];
    size_t plen = u->prep[i].text ? strlen(u->prep[i].text) : 0;
    MDB_val k = {record_key_encode(key, &u->points[i].id), key};
    MDB_val v = {record_size(c->cfg.size, plen), NULL};
    int rc = mdb_put(txn, c->points, &k, &v, MDB_RESERVE);
    if (rc) return rc;
    record_encode(v.mv_data, u->prep[i].vec, c->cfg.size, u->prep[i].text, plen);
  }
  return 0;
}

/* Inserts the rows of a just-applied batch that are not in the graph yet (each row once,
 * though an id may repeat in a batch). A failure leaves rows unindexed, which searches
 * scan exactly, so the write stays acknowledged; the next rebuild picks them up. */
static void index_batch(qv_collection *c, const qv_point *points, size_t n) {
  size_t *rows = malloc(n * sizeof *rows), m = 0;
  if (!rows) return;
  for (size_t i = 0; i < n; i++) {
    int64_t r = idmap_get(&c->map, &points[i].id);
    if (r >= 0 && c->row2node[r] == NODE_NONE) rows[m++] = (size_t)r;
  }
  qsort(rows, m, sizeof *rows, cmp_size);
  size_t u = 0;
  for (size_t i = 0; i < m; i++)
    if (u == 0 || rows[u - 1] != rows[i]) rows[u++] = rows[i];
  qv_status st = index_rows(c, rows, u);
  if (st) LOG_WARN("collection %s: indexing %zu points failed (%s); they are searched exactly", c->name, u, qv_strerror(st));
  free(rows);
}

qv_status qv_collection_upsert(qv_collection *c, const qv_point *points, size_t n, qv_error *err) {
  if (n == 0) return QV_OK;
  /* The batch's vectors in one block: one allocation instead of one per point, and one
   * hole in the heap afterwards instead of n small ones among the payloads that stay. */
  size_t vbytes;
  if (qv_mul_overflow(n, c->cfg.size * sizeof(float), &vbytes))
    return qv_fail(err, QV_ENOMEM, "out of memory");
  prepared *prep = calloc(n, sizeof *prep);
  float *vecs = malloc(vbytes ? vbytes : 1);
  if (!prep || !vecs) {
    free(prep);
    free(vecs);
    return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  qv_status st = QV_OK;
  for (size_t i = 0; i < n && !st; i++)
    st = prepare_point(c, &points[i], i, vecs + i * c->cfg.size, &prep[i], err);
  if (st) goto out;

  pthread_mutex_lock(&c->write_mu);
  if (c->sticky) {
    st = qv_fail(err, QV_ESTICKY, "collection %s: an earlier write failed; reopen it", c->name);
  } else {
    pthread_rwlock_wrlock(&c->rw);
    st = reserve_rows(c, n);
    if (!st) st = reserve_nodes(c, n);
    pthread_rwlock_unlock(&c->rw);
    if (st) st = qv_fail(err, st, "no room in memory for %zu more points", n);
  }
  if (!st) {
    upsert_ctx u = {points, prep, n};
    st = write_txn(c, fill_upsert, &u, 1, err);
  }
  if (!st) {
    pthread_rwlock_wrlock(&c->rw);
    for (size_t i = 0; i < n; i++) {
      set_row(c, &points[i].id, prep[i].vec, prep[i].json);
      prep[i].json = NULL; /* the row owns it now */
    }
    bump_version(c, 1);
    pthread_rwlock_unlock(&c->rw);
    if (c->graph) index_batch(c, points, n);
    if (needs_build(c)) request_build(c);
  }
  pthread_mutex_unlock(&c->write_mu);
out:
  prepared_free(prep, n);
  free(vecs);
  /* a large batch's block and its LMDB pages are freed where the heap cannot shrink */
  if (n >= 1024) give_back_heap();
  return st;
}

typedef struct delete_ctx {
  const qv_point_id *ids;
  size_t n;
} delete_ctx;

static int fill_delete(qv_collection *c, MDB_txn *txn, void *arg) {
  delete_ctx *d = arg;
  for (size_t i = 0; i < d->n; i++) {
    uint8_t key[RECORD_KEY_MAX];
    MDB_val k = {record_key_encode(key, &d->ids[i]), key};
    int rc = mdb_del(txn, c->points, &k, NULL);
    if (rc && rc != MDB_NOTFOUND) return rc;
  }
  return 0;
}

/* Deletes ids that exist; caller holds write_mu (so rows cannot change under it). */
static qv_status delete_locked(qv_collection *c, qv_point_id *ids, size_t n, size_t *deleted,
                               qv_error *err) {
  size_t present = 0;
  for (size_t i = 0; i < n; i++)
    if (idmap_get(&c->map, &ids[i]) >= 0) ids[present++] = ids[i];
  if (deleted) *deleted = 0;
  if (present == 0) return QV_OK;
  if (c->sticky) return qv_fail(err, QV_ESTICKY, "collection %s: an earlier write failed; reopen it", c->name);
  delete_ctx d = {ids, present};
  qv_status st = write_txn(c, fill_delete, &d, 1, err);
  if (st) return st;
  pthread_rwlock_wrlock(&c->rw);
  size_t removed = 0;
  for (size_t i = 0; i < present; i++) {
    int64_t row = idmap_get(&c->map, &ids[i]);
    if (row >= 0) { /* an id given twice is removed once */
      remove_row(c, (size_t)row);
      removed++;
    }
  }
  bump_version(c, 1);
  pthread_rwlock_unlock(&c->rw);
  if (c->graph) c->graph_dirty = 1;
  if (needs_build(c)) request_build(c);
  if (deleted) *deleted = removed;
  return QV_OK;
}

qv_status qv_collection_delete_ids(qv_collection *c, const qv_point_id *ids, size_t n, size_t *deleted,
                                   qv_error *err) {
  if (deleted) *deleted = 0;
  if (n == 0) return QV_OK;
  qv_point_id *copy = malloc(n * sizeof *copy);
  if (!copy) return qv_fail(err, QV_ENOMEM, "out of memory");
  memcpy(copy, ids, n * sizeof *copy);
  pthread_mutex_lock(&c->write_mu);
  qv_status st = delete_locked(c, copy, n, deleted, err);
  pthread_mutex_unlock(&c->write_mu);
  free(copy);
  return st;
}

qv_status qv_collection_delete_filter(qv_collection *c, const qv_filter *f, size_t *deleted,
                                      qv_error *err) {
  if (deleted) *deleted = 0;
  pthread_mutex_lock(&c->write_mu);
  qv_point_id *ids = malloc((c->n ? c->n : 1) * sizeof *ids);
  qv_status st = ids ? QV_OK : qv_fail(err, QV_ENOMEM, "out of memory");
  size_t m = 0;
  for (size_t r = 0; !st && r < c->n; r++)
    if (!f || filter_match(f, &c->ids[r], c->payloads[r])) ids[m++] = c->ids[r];
  if (!st) st = delete_locked(c, ids, m, deleted, err);
  pthread_mutex_unlock(&c->write_mu);
  free(ids);
  return st;
}

/* ---- payload changes ------------------------------------------------------------------ */

typedef struct payload_ctx {
  const size_t *rows;
  char *const *texts; /* (n) compact JSON of each row's new payload */
  size_t n;
} payload_ctx;

static int fill_payload(qv_collection *c, MDB_txn *txn, void *arg) {
  payload_ctx *u = arg;
  for (size_t i = 0; i < u->n; i++) {
    uint8_t key[RECORD_KEY_MAX];
    size_t row = u->rows[i], plen = strlen(u->texts[i]);
    MDB_val k = {record_key_encode(key, &c->ids[row]), key};
    MDB_val v = {record_size(c->cfg.size, plen), NULL};
    int rc = mdb_put(txn, c->points, &k, &v, MDB_RESERVE);
    if (rc) return rc;
    /* row_read: an indexed row's vector lives in its graph node, not in vecs (inv. 9) */
    record_encode(v.mv_data, row_read(c, row), c->cfg.size, u->texts[i], plen);
  }
  return 0;
}

/* The rows a payload change applies to, sorted and without repeats; caller holds
 * write_mu, so rows cannot move under it. */
static qv_status target_rows(qv_collection *c, const qv_point_id *ids, size_t n, const qv_filter *f,
                             size_t **rows_out, size_t *count) {
  size_t cap = ids ? n : c->n, m = 0;
  size_t *rows = malloc((cap ? cap : 1) * sizeof *rows);
  if (!rows) return QV_ENOMEM;
  if (ids) {
    for (size_t i = 0; i < n; i++) {
      int64_t r = idmap_get(&c->map, &ids[i]);
      if (r >= 0) rows[m++] = (size_t)r;
    }
    qsort(rows, m, sizeof *rows, cmp_size);
    size_t u = 0;
    for (size_t i = 0; i < m; i++)
      if (u == 0 || rows[u - 1] != rows[i]) rows[u++] = rows[i];
    m = u;
  } else {
    for (size_t r = 0; r < c->n; r++)
      if (!f || filter_match(f, &c->ids[r], c->payloads[r])) rows[m++] = r;
  }
  *rows_out = rows;
  *count = m;
  return QV_OK;
}

typedef struct payload_op {
  json_t *set;               /* SET / OVERWRITE: the parsed object */
  qv_payload_mode mode;
  const char *const *keys;   /* delete: the keys */
  size_t nkeys;
} payload_op;

/* The new payload of one row, or NULL with *same set when the row would not change. */
static json_t *apply_op(const payload_op *op, json_t *old, int *same) {
  *same = 0;
  if (op->set && op->mode == QV_PAYLOAD_OVERWRITE) return json_deep_copy(op->set);
  json_t *p = old ? json_copy(old) : json_object();
  if (!p) return NULL;
  if (op->set) {
    if (json_object_update(p, op->set)) {
      json_decref(p);
      return NULL;
    }
    return p;
  }
  size_t removed = 0;
  for (size_t i = 0; i < op->nkeys; i++) removed += json_object_del(p, op->keys[i]) == 0;
  if (!removed) {
    json_decref(p);
    *same = 1;
    return NULL;
  }
  return p;
}

static qv_status payload_change(qv_collection *c, const qv_point_id *ids, size_t n, const qv_filter *f,
                                const payload_op *op, size_t *updated, qv_error *err) {
  if (updated) *updated = 0;
  size_t *rows = NULL, m = 0, changed = 0;
  json_t **newp = NULL;
  char **texts = NULL;
  qv_status st = QV_OK;
  pthread_mutex_lock(&c->write_mu);
  if (c->sticky) {
    st = qv_fail(err, QV_ESTICKY, "collection %s: an earlier write failed; reopen it", c->name);
    goto out;
  }
  if ((st = target_rows(c, ids, n, f, &rows, &m))) goto oom;
  newp = calloc(m ? m : 1, sizeof *newp);
  texts = calloc(m ? m : 1, sizeof *texts);
  if (!newp || !texts) goto oom;
  for (size_t i = 0; i < m; i++) {
    int same;
    json_t *p = apply_op(op, c->payloads[rows[i]], &same);
    if (same) continue;
    if (!p) goto oom;
    rows[changed] = rows[i];
    newp[changed] = p;
    if (!(texts[changed++] = json_dumps(p, JSON_COMPACT))) goto oom;
  }
  if (changed) {
    payload_ctx u = {rows, texts, changed};
    st = write_txn(c, fill_payload, &u, 0, err);
    if (st) goto out;
    pthread_rwlock_wrlock(&c->rw);
    for (size_t i = 0; i < changed; i++) {
      json_decref(c->payloads[rows[i]]);
      c->payloads[rows[i]] = newp[i];
      newp[i] = NULL;
    }
    bump_version(c, 0);
    pthread_rwlock_unlock(&c->rw);
    /* the graph and the points version are unchanged, so its file stays valid */
  }
  if (updated) *updated = changed;
  goto out;
oom:
  st = qv_fail(err, QV_ENOMEM, "out of memory changing payloads");
out:
  pthread_mutex_unlock(&c->write_mu);
  for (size_t i = 0; i < changed && newp; i++) json_decref(newp[i]);
  for (size_t i = 0; i < changed && texts; i++) free(texts[i]);
  free(newp);
  free(texts);
  free(rows);
  return st;
}

qv_status qv_collection_set_payload(qv_collection *c, const qv_point_id *ids, size_t n,
                                    const qv_filter *f, const char *payload, qv_payload_mode mode,
                                    size_t *updated, qv_error *err) {
  if (updated) *updated = 0;
  if ((unsigned)mode > QV_PAYLOAD_OVERWRITE) return qv_fail(err, QV_EINVAL, "unknown payload mode %d", (int)mode);
  if (!payload) return qv_fail(err, QV_EINVAL, "no payload given");
  json_error_t je;
  json_t *j = json_loads(payload, 0, &je);
  if (!j) return qv_fail(err, QV_EJSON, "payload: %s at column %d", je.text, je.column);
  if (!json_is_object(j)) {
    json_decref(j);
    return qv_fail(err, QV_EJSON, "payload must be a JSON object");
  }
  payload_op op = {j, mode, NULL, 0};
  qv_status st = payload_change(c, ids, n, f, &op, updated, err);
  json_decref(j);
  return st;
}

qv_status qv_collection_delete_payload(qv_collection *c, const qv_point_id *ids, size_t n,
                                       const qv_filter *f, const char *const *keys, size_t nkeys,
                                       size_t *updated, qv_error *err) {
  if (updated) *updated = 0;
  for (size_t i = 0; i < nkeys; i++)
    if (!keys[i]) return qv_fail(err, QV_EINVAL, "payload key %zu is NULL", i);
  if (nkeys == 0) return QV_OK;
  payload_op op = {NULL, QV_PAYLOAD_SET, keys, nkeys};
  return payload_change(c, ids, n, f, &op, updated, err);
}

/* ---- configuration changes and statistics -------------------------------------------- */

qv_status qv_collection_update_config(qv_collection *c, const qv_collection_config *cfg_in,
                                      qv_error *err) {
  qv_collection_config cfg = *cfg_in;
  qv_status st = collection_config_resolve(&cfg, err);
  if (st) return st;
  if (cfg.size != c->cfg.size || cfg.distance != c->cfg.distance ||
      strcmp(cfg.vector_name, c->cfg.vector_name) != 0)
    return qv_fail(err, QV_EINVAL, "collection %s: size, distance and vector name cannot change", c->name);
  char *text = config_json(c->name, &cfg);
  if (!text) return qv_fail(err, QV_ENOMEM, "out of memory");
  pthread_mutex_lock(&c->write_mu);
  if (c->sticky) {
    st = qv_fail(err, QV_ESTICKY, "collection %s: an earlier write failed; reopen it", c->name);
  } else {
    MDB_txn *txn;
    int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
    if (!rc) {
      MDB_val k = {6, "config"}, v = {strlen(text), text};
      rc = mdb_put(txn, c->meta, &k, &v, 0);
      if (rc) mdb_txn_abort(txn);
      else if ((rc = mdb_txn_commit(txn))) c->sticky = 1;
    }
    if (rc) st = lmdb_fail(err, rc, "writing the configuration");
  }
  if (!st) {
    pthread_rwlock_wrlock(&c->rw);
    c->cfg = cfg;
    pthread_rwlock_unlock(&c->rw);
    if (needs_build(c)) request_build(c);
  }
  pthread_mutex_unlock(&c->write_mu);
  free(text);
  return st;
}

void qv_collection_stats_get(qv_collection *c, qv_collection_stats *out) {
  memset(out, 0, sizeof *out);
  pthread_rwlock_rdlock(&c->rw);
  out->points = c->n;
  out->vector_bytes = rows_resident(c);
  if (c->graph) {
    out->indexed = c->n - c->unindexed;
    out->tombstones = hnsw_deleted_count(c->graph);
    out->quantized_bytes = hnsw_code_bytes(c->graph);
    out->graph_bytes = hnsw_memory_bytes(c->graph) - out->quantized_bytes + c->node_cap * sizeof(uint32_t);
  }
  pthread_rwlock_unlock(&c->rw);
  pthread_mutex_lock(&c->idx_mu);
  out->indexing = c->want_build || c->indexing;
  pthread_mutex_unlock(&c->idx_mu);
}

/* ---- reads ---------------------------------------------------------------------------- */

void qv_records_free(qv_records *r) {
  if (!r) return;
  for (size_t i = 0; i < r->count; i++) {
    free(r->items[i].vector);
    free(r->items[i].payload);
  }
  free(r->items);
  r->items = NULL;
  r->count = 0;
}

/* Fills rec from a row in memory; caller holds rw. */
static qv_status fill_record(const qv_collection *c, size_t row, float score, int with_payload,
                             int with_vector, qv_record *rec) {
  rec->id = c->ids[row];
  rec->score = score;
  rec->vector = NULL;
  rec->payload = NULL;
  if (with_vector) {
    rec->vector = malloc(c->cfg.size * sizeof(float));
    if (!rec->vector) return QV_ENOMEM;
    memcpy(rec->vector, row_read(c, row), c->cfg.size * sizeof(float));
  }
  if (with_payload) {
    rec->payload = c->payloads[row] ? json_dumps(c->payloads[row], JSON_COMPACT) : strdup("{}");
    if (!rec->payload) return QV_ENOMEM;
  }
  return QV_OK;
}

qv_status qv_collection_get(qv_collection *c, const qv_point_id *ids, size_t n, int with_payload,
                            int with_vector, qv_records *out, qv_error *err) {
  out->count = 0;
  out->items = calloc(n ? n : 1, sizeof *out->items);
  if (!out->items) return qv_fail(err, QV_ENOMEM, "out of memory");
  qv_status st = QV_OK;
  pthread_rwlock_rdlock(&c->rw);
  for (size_t i = 0; i < n && !st; i++) {
    int64_t row = idmap_get(&c->map, &ids[i]);
    if (row < 0) continue;
    st = fill_record(c, (size_t)row, 0, with_payload, with_vector, &out->items[out->count++]);
  }
  pthread_rwlock_unlock(&c->rw);
  if (st) {
    qv_records_free(out);
    return qv_fail(err, st, "out of memory");
  }
  return QV_OK;
}

qv_status qv_collection_count(qv_collection *c, const qv_filter *f, size_t *out, qv_error *err) {
  pthread_rwlock_rdlock(&c->rw);
  size_t m = 0;
  if (!f) m = c->n;
  else
    for (size_t r = 0; r < c->n; r++) m += filter_match(f, &c->ids[r], c->payloads[r]) != 0;
  pthread_rwlock_unlock(&c->rw);
  *out = m;
  return QV_OK;
}

/* Scroll walks LMDB's id order from the offset, taking each point's content from memory.
 * LMDB may be one batch ahead of memory (a writer commits, then waits for rw to apply),
 * so an id LMDB has and memory lacks is skipped, and one memory still holds after LMDB
 * dropped it is not returned: a page shows each point as of its last applied batch or
 * the one being applied, never a half-applied point. */
qv_status qv_collection_scroll(qv_collection *c, const qv_point_id *offset, size_t limit,
                               const qv_filter *f, int with_payload, int with_vector, qv_records *out,
                               qv_point_id *next_offset, int *has_next, qv_error *err) {
  out->count = 0;
  *has_next = 0;
  out->items = calloc(limit ? limit : 1, sizeof *out->items);
  if (!out->items) return qv_fail(err, QV_ENOMEM, "out of memory");
  pthread_rwlock_rdlock(&c->rw);
  MDB_txn *txn = NULL;
  MDB_cursor *cur = NULL;
  qv_status st = QV_OK;
  int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
  if (!rc) rc = mdb_cursor_open(txn, c->points, &cur);
  uint8_t key[RECORD_KEY_MAX];
  MDB_val k = {0, key}, v;
  if (!rc) {
    if (offset) {
      k.mv_size = record_key_encode(key, offset);
      rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    } else {
      rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    }
  }
  for (; rc == 0 && !st; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    qv_point_id id;
    if (record_key_decode(&id, k.mv_data, k.mv_size)) continue;
    int64_t row = idmap_get(&c->map, &id);
    if (row < 0) continue; /* skipped as corrupt at open */
    if (f && !filter_match(f, &id, c->payloads[row])) continue;
    if (out->count == limit) {
      *has_next = 1;
      *next_offset = id;
      break;
    }
    st = fill_record(c, (size_t)row, 0, with_payload, with_vector, &out->items[out->count++]);
    if (st) st = qv_fail(err, st, "out of memory");
  }
  if (rc && rc != MDB_NOTFOUND && !st) st = lmdb_fail(err, rc, "scrolling");
  if (cur) mdb_cursor_close(cur);
  if (txn) mdb_txn_abort(txn);
  pthread_rwlock_unlock(&c->rw);
  if (st) qv_records_free(out);
  return st;
}

/* ---- search --------------------------------------------------------------------------- */

static int passes_threshold(qv_distance d, float score, float t) {
  return dist_higher_is_better(d) ? score >= t : score <= t;
}

/* Bitmap of rows that match the filter; caller holds rw. */
static uint64_t *filter_mask(const qv_collection *c, const qv_filter *f) {
  uint64_t *mask = calloc((c->n + 63) / 64 + 1, sizeof *mask);
  if (!mask) return NULL;
  for (size_t r = 0; r < c->n; r++)
    if (filter_match(f, &c->ids[r], c->payloads[r])) mask[r / 64] |= 1ULL << (r % 64);
  return mask;
}

/* Rows allowed for the graph's part of a search: mapped nodes (not tombstoned, not
 * pending) whose row passes the filter mask. Runs under rw shared. */
typedef struct allow_ctx {
  const qv_collection *c;
  const uint64_t *mask; /* or NULL */
} allow_ctx;

static int allow_node(void *arg, uint32_t id) {
  const allow_ctx *a = arg;
  if (id >= a->c->node_cap) return 0;
  uint32_t row = a->c->node2row[id];
  return row != NODE_NONE && (!a->mask || (a->mask[row / 64] >> (row % 64) & 1));
}

typedef struct ranked {
  float key; /* higher first: the score, negated for distances */
  uint32_t row;
  float score;
} ranked;

static int cmp_ranked(const void *a, const void *b) {
  const ranked *x = a, *y = b;
  if (x->key != y->key) return x->key > y->key ? -1 : 1;
  return x->row < y->row ? -1 : x->row > y->row;
}

/* One query through the graph, with an exact scan of the rows the graph does not hold
 * yet, merged; falls back to an exact scan when the graph found fewer than k of the
 * `allowed` rows (a selective filter can strand the beam). hits (k). Caller holds rw. */
/* extra (xn): the best rows among those not in the graph yet, for this query (see
 * unindexed_search); merged with the graph's hits. */
static qv_status graph_search(qv_collection *c, const float *q, size_t k, size_t ef,
                              const uint64_t *mask, size_t allowed, const flat_hit *extra, size_t xn,
                              flat_hit *hits, size_t *count) {
  size_t dim = c->cfg.size;
  int higher = dist_higher_is_better(c->cfg.distance);
  /* On int8 codes the graph's order is approximate: take the whole beam and let the
   * float32 rescoring below pick the k best. */
  size_t kq = hnsw_quantized(c->graph) && ef > k ? ef : k;
  hnsw_hit *hh = malloc(kq * sizeof *hh);
  ranked *all = malloc((kq + xn) * sizeof *all);
  size_t got = 0, m = 0;
  qv_status st = hh && all ? QV_OK : QV_ENOMEM;
  if (!st) {
    /* Without a filter no callback: tombstones are the graph's own deleted nodes, and a
     * node not mapped yet (an insert in flight) is dropped below, the exact fallback
     * covering the rare shortfall. */
    allow_ctx a = {c, mask};
    hnsw_filter hf = {NULL, 0, allow_node, &a};
    st = hnsw_search(c->graph, q, kq, ef, mask ? &hf : NULL, hh, &got);
  }
  for (size_t i = 0; !st && i < got; i++) {
    uint32_t row = c->node2row[hh[i].id];
    if (row == NODE_NONE) continue;
    /* rescore from the row: the stored float32 vector is the reference for every path */
    float sc = dist_score(c->cfg.distance, q, row_read(c, row), dim);
    all[m++] = (ranked){higher ? sc : -sc, row, sc};
  }
  for (size_t i = 0; !st && i < xn; i++)
    all[m++] = (ranked){higher ? extra[i].score : -extra[i].score, extra[i].row, extra[i].score};
  if (!st) {
    qsort(all, m, sizeof *all, cmp_ranked);
    if (m > k) m = k;
    size_t want = allowed < k ? allowed : k;
    if (m < want) {
      /* the beam missed allowed points (tombstones or a filter cut it off): scan exactly */
      st = exact_search(c, q, 1, k, mask, NULL, hits, count);
    } else {
      for (size_t i = 0; i < m; i++) hits[i] = (flat_hit){all[i].score, all[i].row};
      *count = m;
    }
  }
  free(hh);
  free(all);
  return st;
}

/* The rows not in the graph yet (and allowed by mask) scored exactly for queries
 * [0, nq), at most k each into extra (nq, k) / xn (nq): one mask and one batched scan for
 * the whole batch, since finding those rows walks every row. */
static qv_status unindexed_search(const qv_collection *c, const float *qs, size_t nq, size_t k,
                                  const uint64_t *mask, flat_hit *extra, size_t *xn) {
  size_t words = (c->n + 63) / 64 + 1;
  uint64_t *umask = calloc(words, sizeof *umask);
  if (!umask) return QV_ENOMEM;
  for (size_t r = 0; r < c->n; r++)
    if (c->row2node[r] == NODE_NONE && (!mask || (mask[r / 64] >> (r % 64) & 1)))
      umask[r / 64] |= 1ULL << (r % 64);
  /* vecs holds every unindexed row (invariant 9); the mask skips the others */
  flat_matrix fm = {c->vecs, c->sqnorms, c->n, c->cfg.size, c->stride};
  qv_status st = flat_search(extra, xn, qs, nq, &fm, c->cfg.distance, k, umask, nq > 1 ? pool_default() : NULL);
  free(umask);
  return st;
}

/* ---- device path -----------------------------------------------------------------------
 *
 * Exact searches run on the GPU when the process has one (compute/device.h: gpu.enabled,
 * QUIVER_GPU; on by default where a GPU works), on a device-resident copy of the rows
 * (index/flat_gpu.h), through the dispatch, so a failing GPU or an open breaker puts the
 * search back on the CPU path below with no error for the client.
 *
 * Invariants:
 *  D1. c->gpu is NULL until the first search the device takes (device_run), and stays
 *      NULL in a process without a GPU backend: the CPU path then pays one branch per
 *      written row (gpu_touch) and per search (device_wanted), and holds no second copy.
 *      With a GPU, a collection the device searches has its rows on the device and a
 *      host twin of them inside flat_gpu (see flat_gpu.h).
 *  D2. Rows [0, flat_gpu_rows) of the copy equal c's rows, except rows in
 *      [gpu_lo, gpu_hi) and rows >= c->n: set_row and remove_row mark every row they
 *      write (gpu_touch, rw held for writing). device_sync, run by each device unit under
 *      rw shared and gpu_mu, truncates the copy to c->n, copies the marked rows and any
 *      row past the copy's end, and empties the range. So a device search sees exactly
 *      the writes applied before it took rw, as the CPU path does.
 *  D3. A copy that is not resident once made (it does not fit gpu.memory_fraction) is
 *      freed at once and gpu_unfit keeps c->n: no copy is tried again until the
 *      collection has fewer rows (or is reopened). A copy that loses residency later
 *      (it grew past the budget, or the device failed a copy) is freed and made afresh
 *      by the next device search, which then either fits or sets gpu_unfit.
 *  D4. What goes to the device: the exact path (collections under full_scan_threshold,
 *      exact: true, filters matching few rows) and, where the graph would serve it, a
 *      batch of at least GPU_MIN_BATCH queries (answered exactly). Not Manhattan, not
 *      k > FLAT_GPU_MAX_K. Units of at most gpu.batch_size queries each go through
 *      dispatch_run; the first unit the dispatch runs on the CPU ends the device part and
 *      the remaining queries take the CPU path, as if there were no device. */
#define GPU_MIN_BATCH 16

static compute_dispatch *collection_dispatch(qv_collection *c) {
  compute_dispatch *d = __atomic_load_n(&c->disp, __ATOMIC_ACQUIRE);
  if (!d) {
    d = device_dispatch(); /* one address for the process's life */
    __atomic_store_n(&c->disp, d, __ATOMIC_RELEASE);
  }
  return d;
}

static int device_wanted(qv_collection *c, size_t nq, size_t k, int use_graph) {
  if (!flat_gpu_supports(c->cfg.distance, k)) return 0;
  if (use_graph && nq < GPU_MIN_BATCH) return 0;
  /* A copy that did not fit is not tried again while c is as large (D3): such a search
   * never takes the device lock, and never counts as a device success in the breaker. */
  size_t unfit = __atomic_load_n(&c->gpu_unfit, __ATOMIC_RELAXED);
  if (unfit && c->n >= unfit) return 0;
  const qv_backend *gpu = collection_dispatch(c)->gpu;
  return gpu && gpu->search_exact && gpu->map;
}

/* Copies rows [lo, lo + n) into the device copy, gathering them in chunks when vectors
 * live in the graph (invariant 9). Caller holds rw shared. */
static qv_status gpu_put_rows(const qv_collection *c, flat_gpu *g, size_t lo, size_t n) {
  if (!vec_in_graph(c)) return flat_gpu_set_rows(g, lo, n, row_slot(c, lo), c->stride, NULL);
  enum { CHUNK = 1024 };
  float *buf = malloc(CHUNK * c->cfg.size * sizeof *buf);
  qv_status st = buf ? QV_OK : QV_ENOMEM;
  for (size_t at = 0; !st && at < n; at += CHUNK) {
    size_t m = n - at < CHUNK ? n - at : CHUNK;
    for (size_t i = 0; i < m; i++) memcpy(buf + i * c->cfg.size, row_read(c, lo + at + i), c->cfg.size * sizeof *buf);
    st = flat_gpu_set_rows(g, lo + at, m, buf, c->cfg.size, NULL);
  }
  free(buf);
  return st;
}

/* Brings the copy in step (D2, D3). Caller holds rw shared and gpu_mu. QV_EUNSUPPORTED:
 * no resident copy this time (the CPU path answers). */
static qv_status device_sync(qv_collection *c) {
  if (c->gpu_unfit && c->n < c->gpu_unfit) __atomic_store_n(&c->gpu_unfit, 0, __ATOMIC_RELAXED);
  if (c->gpu_unfit) return QV_EUNSUPPORTED;
  if (c->gpu && !flat_gpu_resident(c->gpu)) {
    flat_gpu_free(c->gpu);
    c->gpu = NULL;
  }
  if (!c->gpu) {
    flat_gpu *g = NULL;
    qv_status st = flat_gpu_create(&g, c->cfg.size, c->cfg.distance, c->n, NULL);
    if (!st) st = gpu_put_rows(c, g, 0, c->n);
    if (st || !flat_gpu_resident(g)) {
      flat_gpu_free(g);
      __atomic_store_n(&c->gpu_unfit, c->n ? c->n : 1, __ATOMIC_RELAXED);
      LOG_INFO("collection %s: %zu vectors do not fit the GPU's budget; exact search stays on the CPU", c->name,
               c->n);
      return QV_EUNSUPPORTED;
    }
    c->gpu = g;
    c->gpu_lo = SIZE_MAX;
    c->gpu_hi = 0;
    return QV_OK;
  }
  size_t rows = flat_gpu_rows(c->gpu), lo = c->gpu_lo, hi = c->gpu_hi;
  qv_status st = QV_OK;
  if (rows > c->n) st = flat_gpu_truncate(c->gpu, rows = c->n, NULL);
  if (rows < c->n) {
    if (rows < lo) lo = rows;
    hi = c->n;
  }
  if (hi > c->n) hi = c->n;
  if (!st && lo < hi) st = gpu_put_rows(c, c->gpu, lo, hi - lo);
  if (st || !flat_gpu_resident(c->gpu)) {
    flat_gpu_free(c->gpu);
    c->gpu = NULL;
    return QV_EUNSUPPORTED;
  }
  c->gpu_lo = SIZE_MAX;
  c->gpu_hi = 0;
  return QV_OK;
}

typedef struct device_work {
  qv_collection *c;
  const compute_dispatch *d;
  flat_hit *hits;       /* (nq, k) */
  size_t *counts;       /* (nq) */
  const float *qs;      /* (nq, dim) */
  size_t nq, k;
  const uint64_t *mask; /* NULL or c->n bits */
} device_work;

/* A dispatch unit. On the CPU it does nothing and says QV_EUNSUPPORTED: the caller's
 * own CPU path (graph or scan over c's rows) answers instead of a second copy. */
static qv_status device_run(const qv_backend *be, void *arg) {
  device_work *w = arg;
  qv_collection *c = w->c;
  if (be != w->d->gpu) return QV_EUNSUPPORTED;
  pthread_mutex_lock(&c->gpu_mu);
  qv_status st = device_sync(c);
  if (!st) st = flat_gpu_search_on(c->gpu, be, w->hits, w->counts, w->qs, w->nq, w->k, w->mask);
  pthread_mutex_unlock(&c->gpu_mu);
  return st;
}

/* Answers queries [0, *done) on the device; the caller answers the rest. Caller holds rw
 * shared. Errors: QV_EDEVICE when the GPU failed and gpu.fallback_to_cpu is off. */
static qv_status device_search(qv_collection *c, const float *qs, size_t nq, size_t k, const uint64_t *mask,
                               flat_hit *hits, size_t *counts, size_t *done, qv_error *err) {
  compute_dispatch *d = collection_dispatch(c);
  qv_gpu_config cfg;
  device_config(&cfg);
  size_t batch = (size_t)cfg.batch_size; /* 1..4096, checked when set */
  *done = 0;
  while (*done < nq) {
    size_t m = nq - *done < batch ? nq - *done : batch;
    device_work w = {c, d, hits + *done * k, counts + *done, qs + *done * c->cfg.size, m, k, mask};
    const qv_backend *used = NULL;
    qv_status st = dispatch_run(d, device_run, &w, &used, err);
    if (st == QV_EUNSUPPORTED || (!st && used != d->gpu)) break;
    if (st) return st;
    *done += m;
  }
  return QV_OK;
}

static size_t popcount_mask(const uint64_t *mask, size_t n) {
  size_t m = 0;
  for (size_t w = 0; w < (n + 63) / 64; w++) m += (size_t)__builtin_popcountll(mask[w]);
  return m;
}

qv_status qv_collection_search(qv_collection *c, const float *queries, size_t nq,
                               const qv_search_params *p, qv_records *out, qv_error *err) {
  size_t dim = c->cfg.size, limit = p->limit ? p->limit : 10;
  for (size_t q = 0; q < nq; q++) out[q] = (qv_records){0};
  if (nq == 0) return QV_OK;
  for (size_t q = 0; q < nq; q++)
    for (size_t i = 0; i < dim; i++)
      if (!isfinite(queries[q * dim + i]))
        return qv_fail(err, QV_ENONFINITE, "query %zu: component %zu is %s", q, i,
                       isnan(queries[q * dim + i]) ? "NaN" : "infinite");
  size_t k = limit + p->offset;
  if (k < limit) return qv_fail(err, QV_ERANGE, "limit + offset overflows");
  size_t qbytes, hbytes;
  if (qv_mul_overflow(nq, dim * sizeof(float), &qbytes))
    return qv_fail(err, QV_ERANGE, "too many queries");
  float *qs = qv_aligned_alloc(qbytes);
  if (!qs) return qv_fail(err, QV_ENOMEM, "out of memory");
  memcpy(qs, queries, qbytes);
  if (c->cfg.distance == QV_DIST_COSINE)
    for (size_t q = 0; q < nq; q++) dist_normalize(qs + q * dim, dim);

  pthread_rwlock_rdlock(&c->rw);
  if (k > c->n) k = c->n;
  flat_hit *hits = NULL;
  size_t *counts = calloc(nq, sizeof *counts);
  uint64_t *mask = NULL;
  qv_status st = counts ? QV_OK : QV_ENOMEM;
  if (!st && k > 0) {
    if (qv_mul_overflow(nq, k * sizeof(flat_hit), &hbytes) || !(hits = malloc(hbytes))) st = QV_ENOMEM;
    if (!st && p->filter && !(mask = filter_mask(c, p->filter))) st = QV_ENOMEM;
    /* Qdrant's rule: the graph only for more than full_scan_threshold KB of candidate
     * vectors. The filter's cardinality is counted exactly from the mask (there is no
     * payload index to estimate it from), so a selective filter scans its matches. */
    size_t allowed = mask ? popcount_mask(mask, c->n) : c->n;
    uint32_t fst = c->cfg.hnsw.full_scan_threshold;
    int use_graph = c->graph && !p->exact && vectors_kb(c, c->n) >= fst && vectors_kb(c, allowed) >= fst;
    size_t q0 = 0; /* queries [0, q0) answered on the device */
    if (!st && device_wanted(c, nq, k, use_graph)) st = device_search(c, qs, nq, k, mask, hits, counts, &q0, err);
    if (!st && use_graph && q0 < nq) {
      size_t ef = p->hnsw_ef ? p->hnsw_ef : DEFAULT_EF;
      if (ef < k) ef = k;
      flat_hit *extra = NULL;
      size_t *xn = NULL;
      if (c->unindexed) {
        extra = malloc((nq - q0) * k * sizeof *extra);
        xn = calloc(nq - q0, sizeof *xn);
        st = extra && xn ? unindexed_search(c, qs + q0 * dim, nq - q0, k, mask, extra, xn) : QV_ENOMEM;
      }
      for (size_t q = q0; q < nq && !st; q++)
        st = graph_search(c, qs + q * dim, k, ef, mask, allowed, extra ? extra + (q - q0) * k : NULL,
                          xn ? xn[q - q0] : 0, hits + q * k, &counts[q]);
      free(extra);
      free(xn);
    } else if (!st && q0 < nq) {
      st = exact_search(c, qs + q0 * dim, nq - q0, k, mask, pool_default(), hits + q0 * k, counts + q0);
    }
  }
  for (size_t q = 0; q < nq && !st; q++) {
    size_t got = counts[q];
    out[q].items = calloc(got > p->offset ? got - p->offset : 1, sizeof(qv_record));
    if (!out[q].items) {
      st = QV_ENOMEM;
      break;
    }
    for (size_t i = p->offset; i < got && !st; i++) {
      const flat_hit *h = &hits[q * k + i];
      if (p->has_score_threshold && !passes_threshold(c->cfg.distance, h->score, p->score_threshold))
        break;
      st = fill_record(c, h->row, h->score, p->with_payload, p->with_vector, &out[q].items[out[q].count++]);
    }
  }
  pthread_rwlock_unlock(&c->rw);
  free(mask);
  free(hits);
  free(counts);
  qv_aligned_free(qs);
  if (st) {
    for (size_t q = 0; q < nq; q++) qv_records_free(&out[q]);
    return qv_fail(err, st, "search failed: %s", qv_strerror(st));
  }
  return QV_OK;
}
