/* Exact search on the GPU for a collection that fits: a device-resident copy of its
 * vectors, kept in sync by the store, searched through the dispatch (compute/dispatch.h)
 * with flat_search as the CPU twin. Same results, ranking and tie rules as flat.h.
 *
 * How the store uses it (src/store/collection.c, whose owner wires it):
 *   - on open, after the vectors are loaded: flat_gpu_create(&c->gpu, dim, distance,
 *     n) and flat_gpu_set_rows(c->gpu, 0, n, c->vecs, c->stride); a collection that does
 *     not fit the GPU's memory_fraction (or a process without a GPU) gets QV_OK and a
 *     copy that is simply not resident: every search runs flat_search on its host rows;
 *   - after each acknowledged write of rows [first, first + count) (upsert in place or
 *     append): flat_gpu_set_rows(c->gpu, first, count, c->vecs + first * c->stride,
 *     c->stride), under the collection's write lock; deletes need nothing (deleted rows
 *     are left out by the mask, as in flat_search);
 *   - in the exact (flat) search path, in place of flat_search:
 *     flat_gpu_search(c->gpu, hits, counts, qs, nq, k, mask, pool_default());
 *   - on close: flat_gpu_free(c->gpu).
 * The copy holds its own host rows (the device copy's source and the CPU fallback's
 * data), so the store's layout and growth never have to be announced to it: the price
 * is a second host copy of a GPU-resident collection's vectors. Thread-safe: writes take
 * a write lock, searches a read lock. */
#ifndef QV_INDEX_FLAT_GPU_H
#define QV_INDEX_FLAT_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "base/pool.h"
#include "index/flat.h"
#include "quiver.h"

typedef struct flat_gpu flat_gpu;

/* An empty copy for dim-sized vectors scored by dist, with room for cap rows (grown as
 * needed). Resident on the device when there is one and cap rows fit. */
qv_status flat_gpu_create(flat_gpu **out, size_t dim, qv_distance dist, size_t cap, qv_error *err);
void flat_gpu_free(flat_gpu *g);
/* Rows [first, first + count) = vecs (count, stride); first <= rows now (so it
 * overwrites and/or appends). Growing past the device's room leaves the copy
 * non-resident (searches go to the CPU); a device error while syncing does too. */
qv_status flat_gpu_set_rows(flat_gpu *g, size_t first, size_t count, const float *vecs, size_t stride,
                            qv_error *err);
/* flat_search's contract (hits (nq, k), counts (nq)) over the rows set so far. */
qv_status flat_gpu_search(flat_gpu *g, flat_hit *hits, size_t *counts, const float *queries, size_t nq, size_t k,
                          const uint64_t *mask, qv_pool *pool);
size_t flat_gpu_rows(const flat_gpu *g);
/* Whether searches try the device (the copy is resident). */
int flat_gpu_resident(const flat_gpu *g);

#endif
