/* Exact search on the GPU for a collection that fits: a device-resident copy of its
 * vectors, searched through the dispatch (compute/dispatch.h) with flat_search as the CPU
 * twin. Same results, ranking and tie rules as flat.h.
 *
 * How the store uses it (src/store/collection.c, "device path"):
 *   - only in a process with a GPU backend (device_dispatch()->gpu), and only on the first
 *     search that would go to the device: flat_gpu_create + flat_gpu_set_rows(0, n); a
 *     copy that is not resident afterwards (it does not fit memory_fraction) is freed
 *     again, so a process without a GPU never holds a second copy;
 *   - writes only mark rows dirty; the next device search brings the copy in step
 *     (flat_gpu_truncate to the collection's row count, flat_gpu_set_rows over the dirty
 *     rows) before it searches;
 *   - each unit of the search runs inside the store's own dispatch work with
 *     flat_gpu_search_on, so a CPU rerun is the store's own CPU path (graph or scan over
 *     its rows), not this copy;
 *   - on close: flat_gpu_free.
 * flat_gpu_search is the self-contained variant (dispatch and CPU twin included).
 * The copy holds its own host rows (the device copy's source and flat_gpu_search's CPU
 * twin's data), so the store's layout and growth never have to be announced to it: the
 * price is a second host copy of a GPU-resident collection's vectors. Thread-safe: writes
 * take a write lock, searches a read lock. */
#ifndef QV_INDEX_FLAT_GPU_H
#define QV_INDEX_FLAT_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "base/pool.h"
#include "compute/backend.h"
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
/* flat_search's contract (hits (nq, k), counts (nq)) over the rows set so far: on the
 * device in units of at most gpu.batch_size queries, each one dispatch_run (so a failing
 * device reruns that unit on the CPU twin), or on the CPU twin directly when
 * flat_gpu_can_search says no. */
qv_status flat_gpu_search(flat_gpu *g, flat_hit *hits, size_t *counts, const float *queries, size_t nq, size_t k,
                          const uint64_t *mask, qv_pool *pool);
/* Forgets rows [n, rows now); n <= rows now (QV_EINVAL otherwise). The device copy needs
 * nothing: rows past n are never read. */
qv_status flat_gpu_truncate(flat_gpu *g, size_t n, qv_error *err);
/* The largest k the device's selection kernel takes; larger k runs on the CPU. */
#define FLAT_GPU_MAX_K 1024
/* The searches the device path takes at all: the distance has a product form (Manhattan
 * has none) and 0 < k <= FLAT_GPU_MAX_K. */
static inline int flat_gpu_supports(qv_distance dist, size_t k) {
  return dist != QV_DIST_MANHATTAN && k > 0 && k <= FLAT_GPU_MAX_K;
}
/* Whether a search with this k can run on the device: the copy is resident, the
 * distance has a product form (not Manhattan) and 0 < k <= FLAT_GPU_MAX_K. */
int flat_gpu_can_search(flat_gpu *g, size_t k);
/* One unit of device work for a dispatch_work function: flat_search's contract for
 * queries (nq, dim) on backend be, which must be the backend the copy is resident on
 * (QV_EUNSUPPORTED otherwise, and when flat_gpu_can_search says no). The device's
 * failures come back as the backend reports them (QV_EDEVICE). */
qv_status flat_gpu_search_on(flat_gpu *g, const qv_backend *be, flat_hit *hits, size_t *counts,
                             const float *queries, size_t nq, size_t k, const uint64_t *mask);
size_t flat_gpu_rows(const flat_gpu *g);
/* Whether searches try the device (the copy is resident). */
int flat_gpu_resident(const flat_gpu *g);

#endif
