/* The server's configuration from three sources, later ones winning: a YAML file
 * (quiver.yaml), QUIVER_* environment variables, then command-line flags. Every source goes
 * through server_config_set with a dotted key ("limits.max_body_bytes"), so a setting has
 * one name, one parser and one range check whichever way it arrives. */
#ifndef QV_SERVER_CONFIG_H
#define QV_SERVER_CONFIG_H

#include "quiver.h"
#include "server/server.h"

/* The defaults: 0.0.0.0:6333, ./quiver-data, all-MiniLM-L6-v2, 32 MiB bodies, ... */
void server_config_defaults(server_config *c);
/* Releases the key lists; the struct may be reused after server_config_defaults. */
void server_config_free(server_config *c);

/* Sets one key from text. Keys: host, port, data_dir, model, reranker, threads, truncate,
 * auth.api_keys, auth.read_only_keys (comma-separated lists; each call appends),
 * auth.jwt_secret, limits.max_body_bytes, limits.max_batch, limits.request_timeout_s,
 * limits.max_in_flight, batching.max_tokens, batching.max_wait_ms, batching.max_queue,
 * and the gpu.* keys of compute/device.h (gpu.enabled, gpu.device_id, gpu.batch_size,
 * gpu.memory_fraction, gpu.fallback_to_cpu, gpu.breaker_failures, gpu.breaker_cooldown_s,
 * gpu.timeout_s). QV_EINVAL naming the key for an unknown key or a bad value. */
qv_status server_config_set(server_config *c, const char *key, const char *value, qv_error *err);

/* Reads a YAML mapping (nested mappings flatten to dotted keys; a sequence of scalars is
 * a list). QV_EFORMAT naming the line for malformed YAML. */
qv_status server_config_load_yaml(server_config *c, const char *text, size_t len, qv_error *err);
qv_status server_config_load_file(server_config *c, const char *path, qv_error *err);

/* Applies QUIVER_HOST, QUIVER_PORT, QUIVER_DATA_DIR, QUIVER_MODEL, QUIVER_RERANKER,
 * QUIVER_API_KEY, QUIVER_READ_ONLY_API_KEY, QUIVER_JWT_SECRET, QUIVER_MAX_BODY_BYTES,
 * QUIVER_MAX_BATCH, QUIVER_REQUEST_TIMEOUT, QUIVER_MAX_IN_FLIGHT, QUIVER_THREADS,
 * QUIVER_BATCH_TOKENS, QUIVER_BATCH_WAIT_MS, QUIVER_MAX_QUEUE and the QUIVER_GPU* variables
 * of compute/device.h (QUIVER_GPU, QUIVER_GPU_DEVICE, QUIVER_GPU_BATCH_SIZE, ...), read through
 * getenv_fn (getenv in production; a table in tests). */
qv_status server_config_load_env(server_config *c, const char *(*getenv_fn)(const char *),
                                 qv_error *err);

#endif
