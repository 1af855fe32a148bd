#include "base/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

/* One job at a time: pool_run publishes (fn, ctx, ntasks), bumps the generation and
 * wakes the workers; every thread, the caller included, claims tasks from an atomic
 * counter until none are left, then the caller waits for the workers to check in. */
struct qv_pool {
  int n;
  pthread_t *threads;
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  pthread_mutex_t run_mu; /* serializes callers of pool_run */
  unsigned long gen;      /* guarded by mu */
  int active;             /* workers still on the current job; guarded by mu */
  int quit;
  pool_fn fn;
  void *ctx;
  size_t ntasks;
  atomic_size_t next;
};

static void drain(qv_pool *p, int worker) {
  for (;;) {
    size_t t = atomic_fetch_add(&p->next, 1);
    if (t >= p->ntasks) break;
    p->fn(p->ctx, t, worker);
  }
}

typedef struct { qv_pool *p; int worker; } worker_arg;

static void *worker_main(void *arg) {
  worker_arg *wa = arg;
  qv_pool *p = wa->p;
  int worker = wa->worker;
  free(wa);
  unsigned long seen = 0;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    while (p->gen == seen && !p->quit) pthread_cond_wait(&p->wake, &p->mu);
    if (p->quit) {
      pthread_mutex_unlock(&p->mu);
      return NULL;
    }
    seen = p->gen;
    pthread_mutex_unlock(&p->mu);
    drain(p, worker);
    pthread_mutex_lock(&p->mu);
    if (--p->active == 0) pthread_cond_signal(&p->done);
    pthread_mutex_unlock(&p->mu);
  }
}

static int default_threads(void) {
  const char *s = getenv("QUIVER_THREADS");
  if (s && atoi(s) > 0) return atoi(s);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

qv_status pool_create(qv_pool **out, int nthreads) {
  qv_pool *p = calloc(1, sizeof *p);
  if (!p) return QV_ENOMEM;
  p->n = nthreads > 0 ? nthreads : default_threads();
  p->threads = calloc((size_t)p->n, sizeof *p->threads);
  if (!p->threads) {
    free(p);
    return QV_ENOMEM;
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_mutex_init(&p->run_mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->done, NULL);
  int started = 1;
  for (int i = 1; i < p->n; i++) {
    worker_arg *wa = malloc(sizeof *wa);
    if (!wa) break;
    wa->p = p;
    wa->worker = i;
    if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
      free(wa);
      break;
    }
    started++;
  }
  p->n = started; /* fewer threads is slower, not wrong */
  *out = p;
  return QV_OK;
}

int pool_size(const qv_pool *p) { return p ? p->n : 1; }

void pool_run(qv_pool *p, size_t ntasks, pool_fn fn, void *ctx) {
  if (ntasks == 0) return;
  if (!p || p->n == 1 || ntasks == 1 || pthread_mutex_trylock(&p->run_mu) != 0) {
    for (size_t t = 0; t < ntasks; t++) fn(ctx, t, 0);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->ctx = ctx;
  p->ntasks = ntasks;
  atomic_store(&p->next, 0);
  p->active = p->n - 1;
  p->gen++;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  drain(p, 0);
  pthread_mutex_lock(&p->mu);
  while (p->active > 0) pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
  pthread_mutex_unlock(&p->run_mu);
}

void pool_destroy(qv_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->quit = 1;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_mutex_destroy(&p->run_mu);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->done);
  free(p->threads);
  free(p);
}

static qv_pool *global_pool;
static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void) {
  if (pool_create(&global_pool, 0) != QV_OK) global_pool = NULL;
}

static void global_fini(void) __attribute__((destructor));
static void global_fini(void) {
  pool_destroy(global_pool);
  global_pool = NULL;
}

qv_pool *pool_default(void) {
  pthread_once(&global_once, global_init);
  return global_pool;
}
