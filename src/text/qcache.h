/* The query cache: an LRU map from a query's normalized text and parameters to its
 * results, valid while the collection's version is the one they were computed at. Hit
 * and miss counters for /metrics. Thread-safe. */
#ifndef QV_TEXT_QCACHE_H
#define QV_TEXT_QCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef struct qcache qcache;

/* capacity 0 makes a cache that stores nothing (every lookup a miss). */
qv_status qcache_create(qcache **out, size_t capacity);
void qcache_free(qcache *q);

/* The key of a query: its text lower-cased (ASCII) with whitespace runs collapsed and
 * trimmed, then the parameters. malloc'd; NULL when out of memory. */
char *qcache_key(const char *text, const char *params);

/* On a hit, *value gets a malloc'd copy of the stored bytes and *len their size. */
int qcache_get(qcache *q, const char *key, uint64_t version, void **value, size_t *len);
/* Stores a copy of value (replacing the key's entry; evicting the least recently used). */
void qcache_put(qcache *q, const char *key, uint64_t version, const void *value, size_t len);
void qcache_counters(qcache *q, uint64_t *hits, uint64_t *misses, size_t *entries);

#endif
