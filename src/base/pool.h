/* A fixed thread pool for data-parallel loops. The calling thread takes part, so a pool
 * of n threads starts n-1 workers. pool_run is not reentrant: a task must not call
 * pool_run on the same pool (it runs inline instead, see pool_run). */
#ifndef QV_BASE_POOL_H
#define QV_BASE_POOL_H

#include <stddef.h>

#include "quiver.h"

typedef struct qv_pool qv_pool;

/* nthreads <= 0 means the number of online CPUs (or QUIVER_THREADS when set). */
qv_status pool_create(qv_pool **out, int nthreads);
void pool_destroy(qv_pool *p);
int pool_size(const qv_pool *p);

/* Calls fn(ctx, task, worker) for task in [0, ntasks), spread over the pool, and returns
 * when all are done. worker is in [0, pool_size). A NULL pool runs everything inline with
 * worker 0; so does a call made while the pool is already running. */
typedef void (*pool_fn)(void *ctx, size_t task, int worker);
void pool_run(qv_pool *p, size_t ntasks, pool_fn fn, void *ctx);

/* The process-wide pool, created on first use; NULL if creation failed. */
qv_pool *pool_default(void);

#endif
