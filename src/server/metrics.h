/* Prometheus metrics: counters and latency histograms, rendered in the text exposition
 * format at /metrics. Every function is thread-safe and allocation-free after
 * metrics_new, so handlers may call them on every request. */
#ifndef QV_SERVER_METRICS_H
#define QV_SERVER_METRICS_H

#include <stddef.h>

struct server;
typedef struct metrics metrics;

metrics *metrics_new(void);
void metrics_free(metrics *m);

/* One finished request: its route label (http_route.name), status code, seconds. */
void metrics_request(metrics *m, const char *route, int status, double seconds);
/* Time spent in one stage: "tokenize", "embed", "search", "rerank", "queue". */
void metrics_stage(metrics *m, const char *stage, double seconds);
/* One forward pass of the batcher: how many sequences and tokens it held. */
void metrics_batch(metrics *m, size_t seqs, size_t tokens);
/* A named counter (e.g. "query_cache_hits", "gpu_fallbacks") grown by n. */
void metrics_count(metrics *m, const char *name, double n);

/* The exposition text (malloc'd; *len its length), with the gauges read from s: points per
 * collection, resident memory, backend in use. */
char *metrics_render(metrics *m, struct server *s, size_t *len);

#endif
