/* The query cache (see qcache.h): a fixed array of entries with a use tick, searched
 * linearly. Capacities are small (hundreds to a few thousand queries) and a lookup costs
 * microseconds against the milliseconds of the embedding it saves, so a hash table and
 * a linked list would buy nothing measurable. */
#define _GNU_SOURCE
#include "text/qcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
  char *key; /* NULL = empty */
  void *value;
  size_t len;
  uint64_t version, tick;
} entry;

struct qcache {
  pthread_mutex_t mu;
  entry *e;
  size_t cap;
  uint64_t tick, hits, misses;
};

qv_status qcache_create(qcache **out, size_t capacity) {
  qcache *q = calloc(1, sizeof *q);
  if (!q) return QV_ENOMEM;
  if (capacity && !(q->e = calloc(capacity, sizeof *q->e))) {
    free(q);
    return QV_ENOMEM;
  }
  q->cap = capacity;
  pthread_mutex_init(&q->mu, NULL);
  *out = q;
  return QV_OK;
}

void qcache_free(qcache *q) {
  if (!q) return;
  for (size_t i = 0; i < q->cap; i++) {
    free(q->e[i].key);
    free(q->e[i].value);
  }
  free(q->e);
  pthread_mutex_destroy(&q->mu);
  free(q);
}

char *qcache_key(const char *text, const char *params) {
  size_t n = strlen(text), m = strlen(params);
  char *k = malloc(n + m + 2), *w = k;
  if (!k) return NULL;
  int space = 0;
  for (const char *s = text; *s; s++) {
    char c = *s;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      space = w != k;
      continue;
    }
    if (space) *w++ = ' ';
    space = 0;
    *w++ = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
  }
  *w++ = '\x1f'; /* unit separator: cannot come from the text's whitespace-free words */
  memcpy(w, params, m + 1);
  return k;
}

int qcache_get(qcache *q, const char *key, uint64_t version, void **value, size_t *len) {
  pthread_mutex_lock(&q->mu);
  for (size_t i = 0; i < q->cap; i++) {
    entry *e = &q->e[i];
    if (!e->key || strcmp(e->key, key)) continue;
    if (e->version != version) break; /* stale: the next put replaces it */
    void *v = malloc(e->len ? e->len : 1);
    if (!v) break;
    memcpy(v, e->value, e->len);
    e->tick = ++q->tick;
    q->hits++;
    pthread_mutex_unlock(&q->mu);
    *value = v;
    *len = e->len;
    return 1;
  }
  q->misses++;
  pthread_mutex_unlock(&q->mu);
  return 0;
}

void qcache_put(qcache *q, const char *key, uint64_t version, const void *value, size_t len) {
  if (!q->cap) return;
  char *k = strdup(key);
  void *v = malloc(len ? len : 1);
  if (!k || !v) {
    free(k);
    free(v);
    return; /* a cache may forget */
  }
  memcpy(v, value, len);
  pthread_mutex_lock(&q->mu);
  size_t victim = 0;
  for (size_t i = 0; i < q->cap; i++) {
    entry *e = &q->e[i];
    if (e->key && !strcmp(e->key, key)) {
      victim = i;
      break;
    }
    if (!e->key) {
      if (q->e[victim].key) victim = i;
    } else if (q->e[victim].key && e->tick < q->e[victim].tick) {
      victim = i;
    }
  }
  entry *e = &q->e[victim];
  free(e->key);
  free(e->value);
  *e = (entry){k, v, len, version, ++q->tick};
  pthread_mutex_unlock(&q->mu);
}

void qcache_counters(qcache *q, uint64_t *hits, uint64_t *misses, size_t *entries) {
  pthread_mutex_lock(&q->mu);
  if (hits) *hits = q->hits;
  if (misses) *misses = q->misses;
  if (entries) {
    size_t n = 0;
    for (size_t i = 0; i < q->cap; i++) n += q->e[i].key != NULL;
    *entries = n;
  }
  pthread_mutex_unlock(&q->mu);
}
