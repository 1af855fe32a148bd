/* HNSW: an approximate nearest-neighbour graph over float vectors (Malkov & Yashunin),
 * laid out as hnswlib lays it out and built with hnswlib's heuristic neighbour selection.
 *
 * Nodes have a dense internal id (uint32, in insertion order) and a caller label (uint64).
 * The index is standalone: it knows nothing of collections, point ids or payloads; the
 * caller maps its ids to labels and keeps deletions in step.
 *
 * Metrics and scores. Cosine and Dot search by inner product (Cosine vectors and queries
 * are normalized by the index, so passing already-normalized vectors is fine); Euclid by
 * squared L2; Manhattan by L1. Scores come back in Quiver's convention, as dist_score
 * gives them: the dot product for Cosine/Dot (higher first), the L2 distance (the square
 * root) for Euclid and the L1 distance for Manhattan (lower first). Hits are best first.
 *
 * Threads. Every call below may run concurrently with every other, on the same index,
 * except hnsw_free (nothing else may run) and hnsw_load (which makes a new index):
 *   - hnsw_add / hnsw_add_batch from any number of threads: per-node spinlocks guard link
 *     lists, and a global mutex is held only by an insert that raises the top level.
 *   - hnsw_search never locks a node: it reads link lists with atomic loads, so it may see
 *     a list that an insert is rewriting half old and half new (every id in it is still a
 *     valid, fully written node). Nodes added while a search runs may or may not be found.
 *   - hnsw_save waits for running adds and deletes and holds them off while it writes;
 *     searches go on meanwhile.
 * Searches take a scratch area (visited tags, queues) from a pool inside the index, so a
 * search allocates nothing unless the index grew since that scratch area was last used.
 *
 * Limits: at most HNSW_MAX_NODES nodes, 2 <= M <= HNSW_MAX_M, 1 <= dim <=
 * QV_MAX_VECTOR_SIZE. Int8 scalar quantization: hnsw_quantize_int8. */
#ifndef QV_INDEX_HNSW_H
#define QV_INDEX_HNSW_H

#include <stddef.h>
#include <stdint.h>

#include "base/pool.h"
#include "quiver.h"

#define HNSW_MAX_NODES 0x7fffffffu /* ids are 31 bits: the search keeps a flag in bit 31 */
#define HNSW_MAX_M 1024
#define HNSW_MAX_LEVEL 31

typedef struct hnsw hnsw;

typedef struct hnsw_hit {
  float score;    /* Quiver's score, see above */
  uint32_t id;    /* internal id */
  uint64_t label; /* the caller's label given to hnsw_add */
} hnsw_hit;

/* Which internal ids a search may return. Both parts are optional; a node must pass every
 * part given. bitmap: bit id (word id/64, bit id%64) set = allowed, ids >= nbits are not
 * allowed. fn: called from the searching thread for nodes that reach the result list's
 * frontier (not for every node visited); must be thread-safe if searches run in
 * parallel. */
typedef int (*hnsw_allow_fn)(void *ctx, uint32_t id);
typedef struct hnsw_filter {
  const uint64_t *bitmap; /* (ceil(nbits / 64)) or NULL */
  size_t nbits;
  hnsw_allow_fn fn; /* (optional) */
  void *ctx;
} hnsw_filter;

/* M: links per node on upper levels (2M on level 0); ef_construct: beam width while
 * building (raised to M if lower). seed picks node levels: the same seed and the same
 * single-threaded insertion order give the same graph. QV_EINVAL for dim, M or distance
 * out of range; QV_ENOMEM. */
qv_status hnsw_new(hnsw **out, size_t dim, qv_distance dist, size_t M, size_t ef_construct,
                   uint64_t seed);
void hnsw_free(hnsw *h);

/* Inserts vector (dim floats, copied) under label and sets *out_id (may be NULL) to its
 * internal id. QV_ENONFINITE for a NaN or infinite component, QV_ERANGE when the index
 * is full, QV_ENOMEM. Labels need not be unique. */
qv_status hnsw_add(hnsw *h, uint64_t label, const float *vector, uint32_t *out_id);

/* Inserts n vectors (n, dim) with labels (n), in parallel over pool (NULL: the calling
 * thread only). out_ids (n, may be NULL) receives each internal id; ids follow the order
 * of labels only when one thread inserts. On failure the first error is returned and some
 * vectors may have been inserted (their out_ids are set; the rest are UINT32_MAX). */
qv_status hnsw_add_batch(hnsw *h, const uint64_t *labels, const float *vectors, size_t n,
                         qv_pool *pool, uint32_t *out_ids);

/* Tombstones a node: never returned again, still traversed (so the graph stays
 * connected). id must come from a completed hnsw_add. Deleting twice is a no-op.
 * QV_NOTFOUND for an id never handed out. */
qv_status hnsw_mark_deleted(hnsw *h, uint32_t id);
int hnsw_is_deleted(const hnsw *h, uint32_t id);

/* The k best non-deleted, allowed nodes for query (dim floats) into out (k), best first;
 * *count is how many (fewer than k only when fewer are found). ef is the beam width
 * (raised to k if lower); larger is slower and more exact.
 *
 * With a filter or with deleted nodes, the search keeps walking through excluded nodes
 * until the beam holds ef allowed ones or the reachable graph is exhausted, as hnswlib
 * does. That keeps recall up under selective filters, at a cost that grows like
 * 1/selectivity: a filter allowing 1% of nodes visits about 100x as many nodes, and one
 * allowing very few, or none, visits the whole graph. Callers that can estimate the
 * filter's cardinality should switch to exact search below a few thousand allowed
 * nodes. QV_ENONFINITE for a bad query, QV_ENOMEM if scratch space cannot grow. */
qv_status hnsw_search(hnsw *h, const float *query, size_t k, size_t ef, const hnsw_filter *filter,
                      hnsw_hit *out, size_t *count);

size_t hnsw_count(const hnsw *h);         /* nodes inserted, deleted ones included */
size_t hnsw_deleted_count(const hnsw *h);
size_t hnsw_dim(const hnsw *h);
qv_distance hnsw_distance(const hnsw *h);
uint64_t hnsw_label(const hnsw *h, uint32_t id);  /* id < hnsw_count */
const float *hnsw_vector(const hnsw *h, uint32_t id); /* (dim), as stored (normalized for Cosine) */
/* Int8 scalar quantization: from now on the index keeps, for each vector, dim u8 codes on
 * the grid lo + (hi - lo) / 255 * c (values outside [lo, hi] clipped; Cosine vectors
 * normalized first) instead of its floats, and every distance, while building and
 * searching, is computed on codes (the query is encoded the same way). Blocks shrink to
 * about a quarter of the vector bytes. Scores are then approximate: callers that keep the
 * floats rescore the hits (the collection layer does). Only on an empty index: QV_EINVAL
 * otherwise, or for a non-finite or inverted range. hnsw_vector returns NULL then. */
qv_status hnsw_quantize_int8(hnsw *h, float lo, float hi);
int hnsw_quantized(const hnsw *h);
size_t hnsw_code_bytes(const hnsw *h); /* bytes of codes (0 without quantization) */

/* Bytes the index holds in memory: node blocks (the used part of mapped chunks, rounded
 * up to the 2 MiB page a write faults in; heap chunks whole), upper-level lists, scratch.
 * Reserved address space that was never written is not counted. */
size_t hnsw_memory_bytes(const hnsw *h);

/* Writes the index to path atomically: a temporary file beside it (path.tmp-XXXXXX) is
 * written, fsynced, renamed over path, and the directory fsynced, so a crash at any point
 * leaves path either as it was or complete (a crash may leave the temporary file behind).
 * Returns errno values from the file system; on failure path is untouched. */
qv_status hnsw_save(hnsw *h, const char *path);

/* Reads an index written by hnsw_save. Every byte is checked (CRC-32C) and the graph is
 * validated before use, so a damaged file is an error, never a crash: QV_ETRUNC for a
 * file shorter than its header says, QV_ECORRUPT for a checksum mismatch or an
 * inconsistent graph, QV_EUNSUPPORTED for a format version this build does not read,
 * errno values for I/O errors. */
qv_status hnsw_load(hnsw **out, const char *path);

/* The same, with `extra_len` bytes of the caller's own (a map from nodes to its ids, say)
 * stored after the graph and covered by the same checksum, so the two can never come
 * from different saves. hnsw_load_ex hands them back malloc'd (*extra NULL when none);
 * free with free(). Files without extra bytes read as extra_len 0. */
qv_status hnsw_save_ex(hnsw *h, const char *path, const void *extra, size_t extra_len);
qv_status hnsw_load_ex(hnsw **out, const char *path, void **extra, size_t *extra_len);

#endif
