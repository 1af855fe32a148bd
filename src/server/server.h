/* The server's shared state: configuration, the data directory, the loaded models and
 * their batchers. One per process; handlers reach it through http_req.srv. */
#ifndef QV_SERVER_SERVER_H
#define QV_SERVER_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "compute/device.h"
#include "quiver.h"

struct batcher;
struct metrics;

typedef struct server_config {
  char host[64];
  int port;                       /* 6333 */
  char data_dir[4096];
  char model[256];                /* default embedding model name or path */
  char reranker[256];             /* cross-encoder name or path; "" = none */
  char **api_keys;  size_t n_api_keys;        /* read-write keys */
  char **ro_keys;   size_t n_ro_keys;         /* read-only keys */
  char jwt_secret[256];           /* HS256; "" = JWT off */
  size_t max_body_bytes;          /* 32 MiB */
  size_t max_batch;               /* points or inputs per request */
  double request_timeout_s;
  int threads;                    /* HTTP worker threads */
  int truncate;                   /* default for embedding routes */
  size_t batch_tokens;            /* dynamic batching: token budget per forward pass */
  double batch_wait_ms;           /* dynamic batching: longest wait to fill a batch */
  size_t max_queue;               /* waiting embedding requests before 429 */
  char gpu[8];                    /* "auto" | "on" | "off" */
  qv_gpu_config gpu_opts;         /* every gpu.* setting (enabled agrees with gpu) */
  size_t max_in_flight;           /* requests being served at once before 429 */
} server_config;

typedef struct server {
  server_config cfg;              /* read-only after start */
  qv_db *db;
  qv_model *model;                /* default embedding model, or NULL */
  qv_model *reranker;             /* or NULL */
  struct batcher *embed_batcher;  /* over model */
  struct batcher *rerank_batcher; /* over reranker */
  struct metrics *metrics;
  double started;                 /* monotonic seconds */
  int ready;                      /* db and models loaded (read with __atomic_load_n) */
  int stopping;                   /* shutdown began: /readyz says 503, requests still run */
  struct http_server *http;       /* private to http.c */
} server;

/* Monotonic seconds. */
double server_now(void);

/* Starts listening, then opens the data directory and loads the models; the HTTP side
 * answers /livez at once and everything else 503 until ready. On failure everything
 * started is stopped. */
qv_status server_start(server *s, qv_error *err);
/* Stops accepting, lets in-flight requests finish (up to request_timeout_s), then frees
 * the batchers and models and closes the data directory (flushing storage). */
void server_stop(server *s);

#endif
