/* Prometheus metrics in fixed tables.
 *
 * Invariants:
 *  1. Nothing allocates after metrics_new: routes, status codes, stages and named counters
 *     live in fixed arrays; a label seen when its table is full is counted under "other"
 *     (the last slot), so a flood of odd route names can never grow memory.
 *  2. One mutex guards every table. Each update holds it for a few additions, far less
 *     than the request it records, so contention costs nothing measurable; atomics per
 *     field would not let a render see a histogram's buckets, sum and count consistently.
 *  3. Histogram buckets are stored non-cumulative and summed at render, so an update
 *     touches one bucket.
 *  4. Only metrics_render allocates (its output buffer) and reads the gauges (points per
 *     collection, resident memory) at that moment. */
#define _GNU_SOURCE
#include "server/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/mem.h"
#include "quiver.h"
#include "server/server.h"

#define LABEL_MAX 64
#define MAX_ROUTES 64
#define MAX_CODES 16
#define MAX_STAGES 16
#define MAX_COUNTERS 32

static const double LAT_BOUNDS[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                    0.1,    0.25,  0.5,    1.0,   2.5,  5.0,   10.0};
#define N_LAT (sizeof LAT_BOUNDS / sizeof LAT_BOUNDS[0])
static const double SEQ_BOUNDS[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
#define N_SEQ (sizeof SEQ_BOUNDS / sizeof SEQ_BOUNDS[0])
static const double TOK_BOUNDS[] = {16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536};
#define N_TOK (sizeof TOK_BOUNDS / sizeof TOK_BOUNDS[0])
#define N_MAXB 16 /* the widest bucket list above, +1 for +Inf */

typedef struct hist {
  uint64_t bucket[N_MAXB]; /* non-cumulative; [nb] is the +Inf overflow */
  uint64_t count;
  double sum;
} hist;

typedef struct code_count {
  int code;
  uint64_t n;
} code_count;

typedef struct route_stats {
  char name[LABEL_MAX];
  code_count codes[MAX_CODES];
  size_t n_codes;
  hist latency;
} route_stats;

typedef struct stage_stats {
  char name[LABEL_MAX];
  hist latency;
} stage_stats;

typedef struct counter {
  char name[LABEL_MAX];
  double value;
} counter;

struct metrics {
  pthread_mutex_t mu;
  route_stats routes[MAX_ROUTES];
  size_t n_routes;
  stage_stats stages[MAX_STAGES];
  size_t n_stages;
  counter counters[MAX_COUNTERS];
  size_t n_counters;
  hist batch_seqs, batch_tokens;
};

metrics *metrics_new(void) {
  metrics *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  if (pthread_mutex_init(&m->mu, NULL)) {
    free(m);
    return NULL;
  }
  return m;
}

void metrics_free(metrics *m) {
  if (!m) return;
  pthread_mutex_destroy(&m->mu);
  free(m);
}

static void hist_add(hist *h, const double *bounds, size_t nb, double v) {
  size_t i = 0;
  while (i < nb && v > bounds[i]) i++;
  h->bucket[i]++;
  h->count++;
  h->sum += v;
}

/* Finds or claims the slot for name in a table of `cap` entries of `size` bytes whose
 * first member is the name; the last slot is "other" once the rest are taken (inv. 1). */
static void *slot(void *table, size_t size, size_t cap, size_t *used, const char *name) {
  char *base = table;
  for (size_t i = 0; i < *used; i++)
    if (strncmp(base + i * size, name, LABEL_MAX - 1) == 0) return base + i * size;
  if (*used + 1 < cap) {
    char *e = base + (*used)++ * size;
    snprintf(e, LABEL_MAX, "%s", name);
    return e;
  }
  char *other = base + (cap - 1) * size;
  if (*used < cap) {
    snprintf(other, LABEL_MAX, "%s", "other");
    *used = cap;
  }
  return other;
}

void metrics_request(metrics *m, const char *route, int status, double seconds) {
  if (!m) return;
  pthread_mutex_lock(&m->mu);
  route_stats *r = slot(m->routes, sizeof m->routes[0], MAX_ROUTES, &m->n_routes, route ? route : "unknown");
  size_t i = 0;
  while (i < r->n_codes && r->codes[i].code != status) i++;
  if (i == r->n_codes) {
    if (r->n_codes < MAX_CODES) {
      r->codes[r->n_codes++].code = status;
    } else {
      i = MAX_CODES - 1; /* a 17th distinct code on one route joins the last one's count */
    }
  }
  r->codes[i].n++;
  hist_add(&r->latency, LAT_BOUNDS, N_LAT, seconds);
  pthread_mutex_unlock(&m->mu);
}

void metrics_stage(metrics *m, const char *stage, double seconds) {
  if (!m) return;
  pthread_mutex_lock(&m->mu);
  stage_stats *s = slot(m->stages, sizeof m->stages[0], MAX_STAGES, &m->n_stages, stage ? stage : "unknown");
  hist_add(&s->latency, LAT_BOUNDS, N_LAT, seconds);
  pthread_mutex_unlock(&m->mu);
}

void metrics_batch(metrics *m, size_t seqs, size_t tokens) {
  if (!m) return;
  pthread_mutex_lock(&m->mu);
  hist_add(&m->batch_seqs, SEQ_BOUNDS, N_SEQ, (double)seqs);
  hist_add(&m->batch_tokens, TOK_BOUNDS, N_TOK, (double)tokens);
  pthread_mutex_unlock(&m->mu);
}

void metrics_count(metrics *m, const char *name, double n) {
  if (!m || !name) return;
  pthread_mutex_lock(&m->mu);
  counter *c = slot(m->counters, sizeof m->counters[0], MAX_COUNTERS, &m->n_counters, name);
  c->value += n;
  pthread_mutex_unlock(&m->mu);
}

/* ---- rendering ------------------------------------------------------------------------ */

typedef struct buf {
  char *p;
  size_t len, cap;
  int oom;
} buf;

__attribute__((format(printf, 2, 3))) static void put(buf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (k < 0) {
      b->oom = 1;
      return;
    }
    if ((size_t)k < b->cap - b->len) {
      b->len += (size_t)k;
      return;
    }
    size_t ncap = b->cap * 2 + (size_t)k + 1;
    char *np = realloc(b->p, ncap);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = ncap;
  }
}

/* A label value with \, " and newline escaped as the text format requires. */
static void put_label(buf *b, const char *v) {
  for (; *v; v++) {
    if (*v == '\\') put(b, "\\\\");
    else if (*v == '"') put(b, "\\\"");
    else if (*v == '\n') put(b, "\\n");
    else put(b, "%c", *v);
  }
}

/* A metric name from a counter's name: quiver_<name>_total, other chars mapped to '_'. */
static void put_counter_name(buf *b, const char *name) {
  if (strncmp(name, "quiver_", 7) != 0) put(b, "quiver_");
  for (const char *p = name; *p; p++) {
    char c = *p;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == ':';
    put(b, "%c", ok ? c : '_');
  }
  size_t n = strlen(name);
  if (n < 6 || strcmp(name + n - 6, "_total") != 0) put(b, "_total");
}

static void put_hist(buf *b, const char *metric, const char *label, const char *value, const hist *h,
                     const double *bounds, size_t nb) {
  uint64_t cum = 0;
  const char *sep = label ? "," : "";
  for (size_t i = 0; i <= nb; i++) {
    cum += h->bucket[i];
    put(b, "%s_bucket{", metric);
    if (label) {
      put(b, "%s=\"", label);
      put_label(b, value);
      put(b, "\"");
    }
    if (i < nb) put(b, "%sle=\"%g\"} %llu\n", sep, bounds[i], (unsigned long long)cum);
    else put(b, "%sle=\"+Inf\"} %llu\n", sep, (unsigned long long)cum);
  }
  const char *sfx[2] = {"_sum", "_count"};
  for (int k = 0; k < 2; k++) {
    put(b, "%s%s", metric, sfx[k]);
    if (label) {
      put(b, "{%s=\"", label);
      put_label(b, value);
      put(b, "\"}");
    }
    if (k == 0) put(b, " %.9g\n", h->sum);
    else put(b, " %llu\n", (unsigned long long)h->count);
  }
}

static void put_collections(buf *b, server *s) {
  put(b, "# HELP quiver_collection_points Live points per collection.\n"
         "# TYPE quiver_collection_points gauge\n");
  if (!s || !s->db) return;
  char **names = NULL;
  size_t n = 0;
  if (qv_collection_list(s->db, &names, &n, NULL)) return;
  for (size_t i = 0; i < n; i++) {
    qv_collection *c;
    if (!qv_collection_open(s->db, names[i], &c, NULL)) {
      put(b, "quiver_collection_points{collection=\"");
      put_label(b, names[i]);
      put(b, "\"} %zu\n", qv_collection_count_all(c));
    }
    free(names[i]);
  }
  free(names);
}

char *metrics_render(metrics *m, struct server *s, size_t *len) {
  buf b = {malloc(16384), 0, 16384, 0};
  if (!b.p) return NULL;
  b.p[0] = '\0';
  if (m) {
    /* Copy under the lock, format outside it: a scrape must not stall requests. The copy
     * is a few tens of KB on the renderer's heap, not the tables' (inv. 4). */
    metrics *snap = malloc(sizeof *snap);
    if (!snap) {
      free(b.p);
      return NULL;
    }
    pthread_mutex_lock(&m->mu);
    memcpy(snap, m, sizeof *snap);
    pthread_mutex_unlock(&m->mu);

    put(&b, "# HELP quiver_requests_total HTTP requests served, by route and status code.\n"
            "# TYPE quiver_requests_total counter\n");
    for (size_t i = 0; i < snap->n_routes; i++) {
      const route_stats *r = &snap->routes[i];
      for (size_t k = 0; k < r->n_codes; k++) {
        put(&b, "quiver_requests_total{route=\"");
        put_label(&b, r->name);
        put(&b, "\",status=\"%d\"} %llu\n", r->codes[k].code, (unsigned long long)r->codes[k].n);
      }
    }
    put(&b, "# HELP quiver_request_duration_seconds HTTP request latency, by route.\n"
            "# TYPE quiver_request_duration_seconds histogram\n");
    for (size_t i = 0; i < snap->n_routes; i++)
      put_hist(&b, "quiver_request_duration_seconds", "route", snap->routes[i].name, &snap->routes[i].latency,
               LAT_BOUNDS, N_LAT);
    put(&b, "# HELP quiver_stage_duration_seconds Time spent per stage (tokenize, embed, search, rerank, queue).\n"
            "# TYPE quiver_stage_duration_seconds histogram\n");
    for (size_t i = 0; i < snap->n_stages; i++)
      put_hist(&b, "quiver_stage_duration_seconds", "stage", snap->stages[i].name, &snap->stages[i].latency,
               LAT_BOUNDS, N_LAT);
    put(&b, "# HELP quiver_batch_size Sequences per forward pass of the dynamic batcher.\n"
            "# TYPE quiver_batch_size histogram\n");
    put_hist(&b, "quiver_batch_size", NULL, NULL, &snap->batch_seqs, SEQ_BOUNDS, N_SEQ);
    put(&b, "# HELP quiver_batch_tokens Tokens per forward pass of the dynamic batcher.\n"
            "# TYPE quiver_batch_tokens histogram\n");
    put_hist(&b, "quiver_batch_tokens", NULL, NULL, &snap->batch_tokens, TOK_BOUNDS, N_TOK);
    for (size_t i = 0; i < snap->n_counters; i++) {
      put(&b, "# HELP ");
      put_counter_name(&b, snap->counters[i].name);
      put(&b, " Count of %s.\n# TYPE ", snap->counters[i].name);
      put_counter_name(&b, snap->counters[i].name);
      put(&b, " counter\n");
      put_counter_name(&b, snap->counters[i].name);
      put(&b, " %.17g\n", snap->counters[i].value);
    }
    free(snap);
  }
  put_collections(&b, s);
  long rss = qv_resident_bytes();
  put(&b, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
          "# TYPE process_resident_memory_bytes gauge\n");
  if (rss >= 0) put(&b, "process_resident_memory_bytes %ld\n", rss);
  /* The device layer's counters (compute/device.h): where new work goes first ("cpu" also
   * while the breaker is open), the breaker, and how often work fell back. */
  qv_gpu_stats g;
  qv_gpu_stats_get(&g);
  put(&b, "# HELP quiver_backend_info The compute backend new work goes to first.\n"
          "# TYPE quiver_backend_info gauge\n"
          "quiver_backend_info{backend=\"%s\"} 1\n", g.backend);
  put(&b, "# HELP quiver_gpu_breaker_state GPU circuit breaker: 0 closed, 1 open, 2 half-open.\n"
          "# TYPE quiver_gpu_breaker_state gauge\n"
          "quiver_gpu_breaker_state %d\n", g.breaker_state);
  put(&b, "# HELP quiver_gpu_breaker_opens_total Times the GPU circuit breaker opened.\n"
          "# TYPE quiver_gpu_breaker_opens_total counter\n"
          "quiver_gpu_breaker_opens_total %llu\n", (unsigned long long)g.breaker_opens_total);
  put(&b, "# HELP quiver_gpu_fallbacks_total Units of work meant for the GPU that ran on the CPU.\n"
          "# TYPE quiver_gpu_fallbacks_total counter\n"
          "quiver_gpu_fallbacks_total %llu\n", (unsigned long long)g.fallbacks_total);
  put(&b, "# HELP quiver_gpu_failures_total GPU errors and timeouts.\n"
          "# TYPE quiver_gpu_failures_total counter\n"
          "quiver_gpu_failures_total %llu\n", (unsigned long long)g.gpu_failures_total);
  put(&b, "# HELP quiver_compute_units_total Units of GPU-bound work (forward passes, search batches) by where they ran; counted only where a GPU is in use.\n"
          "# TYPE quiver_compute_units_total counter\n"
          "quiver_compute_units_total{backend=\"gpu\"} %llu\n"
          "quiver_compute_units_total{backend=\"cpu\"} %llu\n",
      (unsigned long long)g.gpu_runs_total, (unsigned long long)g.cpu_runs_total);
  put(&b, "# HELP quiver_gpu_memory_bytes GPU memory, as the driver reports it (0 without a GPU).\n"
          "# TYPE quiver_gpu_memory_bytes gauge\n"
          "quiver_gpu_memory_bytes{kind=\"total\"} %zu\n"
          "quiver_gpu_memory_bytes{kind=\"used\"} %zu\n", g.mem_total, g.mem_used);
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  if (len) *len = b.len;
  return b.p;
}
