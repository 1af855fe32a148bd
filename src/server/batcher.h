/* Dynamic batching: concurrent embedding (or rerank) requests share forward passes. A
 * request waits at most max_wait_ms for others to join; a pass holds at most
 * max_tokens tokens. Owned by the server; one batcher per loaded model. */
#ifndef QV_SERVER_BATCHER_H
#define QV_SERVER_BATCHER_H

#include <stddef.h>

#include "quiver.h"

struct metrics;
typedef struct batcher batcher;

qv_status batcher_new(batcher **out, qv_model *m, size_t max_tokens, double max_wait_ms,
                      size_t max_queue, struct metrics *metrics, qv_error *err);
/* Finishes queued work, then stops the worker. */
void batcher_free(batcher *b);

/* Blocks until the n embeddings are in out (n, dims). QV_EBUSY when max_queue requests
 * are already waiting; QV_ETOOLONG as qv_model_encode. Thread-safe. */
qv_status batcher_encode(batcher *b, const char *const *texts, const size_t *lens, size_t n,
                         int truncate, float *out, qv_error *err);
/* As batcher_encode; *tokens (may be NULL) gets the tokens the inputs hold, special
 * tokens included, after truncation: what the OpenAI route reports as usage. */
qv_status batcher_encode_tokens(batcher *b, const char *const *texts, const size_t *lens, size_t n,
                                int truncate, float *out, size_t *tokens, qv_error *err);
/* Blocks until the n cross-encoder logits are in logits (n). */
qv_status batcher_rerank(batcher *b, const char *query, const char *const *docs, size_t n,
                         int truncate, float *logits, qv_error *err);

/* Model calls made so far (a merged pass counts once), and requests waiting now: for
 * tests and the server's own gauges. */
size_t batcher_passes(batcher *b);
/* hold != 0 keeps the worker from starting another pass until released (or until
 * batcher_free, which still finishes the queue): lets tests fill the queue for certain. */
void batcher_hold(batcher *b, int hold);
size_t batcher_queued(batcher *b);

#endif
