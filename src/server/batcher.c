/* Dynamic batching: requests that arrive together share one forward pass.
 *
 * Each embedding request is tokenized and validated in its caller's thread (tokenizing is
 * parallel, the forward pass is not: the model serializes encodes), then queued with its
 * token ids, which the worker hands to model_encode_tokens: each text is tokenized once.
 * One worker thread per batcher takes requests in arrival order while they fit the token
 * budget (always at least one), runs one pass over all their texts and copies each
 * request's rows back before waking it.
 *
 * Waiting for company (up to max_wait_ms, or until the queue holds max_tokens) pays only
 * when others are coming, so the worker waits only when they evidently are: another
 * caller is tokenizing right now (`arriving`), or the last pass merged requests. A lone
 * client therefore never waits; under load, the requests that arrive while a pass runs
 * make up the next one anyway.
 *
 * Invariants:
 *  1. A request is in exactly one place: the queue (counted in `queued`), the worker's
 *     current batch, or done (req->done set under mu, after its output is written). The
 *     caller's stack holds the request, so the caller returns only after done.
 *  2. Errors stay with their request: over-long inputs (without truncate) and invalid
 *     UTF-8 are refused in the caller before queueing; if a merged pass fails anyway, the
 *     worker reruns its requests one by one so each gets its own status.
 *  3. At most max_queue requests wait; the next is QV_EBUSY at once (the server's 429).
 *  4. batcher_free stops taking requests (QV_EBUSY), finishes every queued one, then joins.
 *
 * Reranking batches per request, not per pair across requests: qv_model_rerank scores
 * pairs against one query, and a request's pairs already fill the model's passes (up to 32
 * pairs each); merging requests would need a many-query model call for a gain only when
 * many small rerank requests arrive at once. Rerank requests still queue (EBUSY, ordering,
 * queue-time metrics) like embedding requests. */
#define _GNU_SOURCE
#include "server/batcher.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/error.h"
#include "base/log.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "server/metrics.h"

typedef struct breq {
  /* set by the caller, read-only afterwards */
  const char *const *texts;
  const size_t *lens;   /* (n) byte lengths; never NULL here */
  tok_encoding *enc;    /* (n) embedding requests: the tokenized inputs */
  size_t n;
  const char *query;    /* rerank only */
  int truncate;
  size_t tokens;        /* counted, after truncation */
  double enqueued;      /* monotonic seconds */
  float *out;           /* (n, dims) or (n) logits */
  /* set by the worker under b->mu */
  qv_status st;
  qv_error err;
  int done;
  pthread_cond_t cv;
  struct breq *next;
} breq;

struct batcher {
  qv_model *model;          /* read-only */
  qv_model_info info;       /* read-only */
  size_t max_tokens;        /* read-only */
  double max_wait_s;        /* read-only */
  size_t max_queue;         /* read-only */
  metrics *metrics;         /* read-only */
  pthread_mutex_t mu;
  pthread_cond_t work_cv;   /* signalled when a request arrives or stopping is set */
  breq *head, *tail;        /* guarded by mu */
  size_t queued;            /* guarded by mu */
  size_t arriving;          /* callers tokenizing, not yet queued; guarded by mu */
  size_t last_k;            /* requests in the last pass; guarded by mu */
  int stopping;             /* guarded by mu */
  int held;                 /* batcher_hold; guarded by mu */
  pthread_t thread;
  atomic_size_t passes;     /* model calls made */
  atomic_size_t requests;   /* requests completed */
};

static void copy_err(qv_error *dst, const qv_error *src) {
  if (dst) *dst = *src;
}

/* Runs one request alone: the fallback that keeps errors with their request (inv. 2). */
static qv_status run_one(batcher *b, breq *r) {
  r->err.status = 0;
  r->err.msg[0] = '\0';
  atomic_fetch_add(&b->passes, 1);
  if (r->query) return qv_model_rerank(b->model, r->query, r->texts, r->n, r->truncate, r->out, &r->err);
  return model_encode_tokens(b->model, r->enc, r->n, r->out, &r->err);
}

/* One merged pass over the requests in batch[0..k). Requests with different truncate
 * settings may share it: each was tokenized (and cut, or checked to fit) by its caller. */
static void run_embed(batcher *b, breq **batch, size_t k) {
  size_t total = 0, tokens = 0, dims = (size_t)b->info.dims;
  for (size_t i = 0; i < k; i++) {
    total += batch[i]->n;
    tokens += batch[i]->tokens;
  }
  double t0 = qv_monotonic_s();
  qv_status st = QV_ENOMEM;
  if (k == 1) {
    st = run_one(b, batch[0]);
    batch[0]->st = st;
  } else {
    /* shallow copies: the token arrays stay with their requests */
    tok_encoding *enc = malloc(total * sizeof *enc);
    float *out = malloc(total * dims * sizeof *out);
    qv_error err = {0};
    if (enc && out) {
      size_t at = 0;
      for (size_t i = 0; i < k; i++) {
        memcpy(enc + at, batch[i]->enc, batch[i]->n * sizeof *enc);
        at += batch[i]->n;
      }
      atomic_fetch_add(&b->passes, 1);
      st = model_encode_tokens(b->model, enc, total, out, &err);
    }
    if (!st) {
      size_t at = 0;
      for (size_t i = 0; i < k; i++) {
        memcpy(batch[i]->out, out + at * dims, batch[i]->n * dims * sizeof *out);
        at += batch[i]->n;
        batch[i]->st = QV_OK;
      }
    } else {
      LOG_WARN("batched encode of %zu requests failed (%s); running them one by one", k, qv_strerror(st));
      for (size_t i = 0; i < k; i++) batch[i]->st = run_one(b, batch[i]);
    }
    free(enc);
    free(out);
  }
  metrics_stage(b->metrics, "embed", qv_monotonic_s() - t0);
  metrics_batch(b->metrics, total, tokens);
}

static void run_rerank(batcher *b, breq *r) {
  double t0 = qv_monotonic_s();
  r->st = run_one(b, r);
  metrics_stage(b->metrics, "rerank", qv_monotonic_s() - t0);
  metrics_batch(b->metrics, r->n, r->tokens);
}

static void *worker(void *arg) {
  batcher *b = arg;
  size_t cap = 0;
  breq **batch = NULL;
  pthread_mutex_lock(&b->mu);
  for (;;) {
    while ((!b->head || b->held) && !b->stopping) pthread_cond_wait(&b->work_cv, &b->mu);
    if (!b->head) break; /* stopping, and nothing left (inv. 4) */
    int embed = b->info.kind == QV_MODEL_EMBEDDING;
    /* Wait for company while some is evidently coming: until the budget is full or the
     * oldest request's wait is over. */
    while (embed && !b->stopping) {
      if (b->arriving == 0 && b->last_k <= 1) break;
      size_t tokens = 0;
      for (breq *r = b->head; r && tokens < b->max_tokens; r = r->next) tokens += r->tokens;
      if (tokens >= b->max_tokens) break;
      double deadline = b->head->enqueued + b->max_wait_s;
      if (qv_monotonic_s() >= deadline) break;
      /* work_cv is on CLOCK_MONOTONIC (batcher_new), like deadline */
      struct timespec ts;
      ts.tv_sec = (time_t)deadline;
      ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
      if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
      pthread_cond_timedwait(&b->work_cv, &b->mu, &ts);
    }
    /* Take requests in order while they fit the budget; the first always goes. */
    size_t k = 0, tokens = 0;
    double taken = qv_monotonic_s();
    while (b->head) {
      breq *r = b->head;
      if (k > 0 && (!embed || tokens + r->tokens > b->max_tokens)) break;
      if (k == cap) {
        size_t ncap = cap ? cap * 2 : 16;
        breq **nb = realloc(batch, ncap * sizeof *nb);
        if (!nb) break; /* k >= 1 here unless cap was 0; handled below */
        batch = nb;
        cap = ncap;
      }
      b->head = r->next;
      if (!b->head) b->tail = NULL;
      b->queued--;
      batch[k++] = r;
      tokens += r->tokens;
    }
    b->last_k = k;
    if (k == 0) {
      /* no memory for even one slot: fail the oldest request rather than spin */
      breq *r = b->head;
      b->head = r->next;
      if (!b->head) b->tail = NULL;
      b->queued--;
      r->st = qv_fail(&r->err, QV_ENOMEM, "out of memory in the batcher");
      r->done = 1;
      pthread_cond_signal(&r->cv);
      continue;
    }
    pthread_mutex_unlock(&b->mu);

    for (size_t i = 0; i < k; i++) metrics_stage(b->metrics, "queue", taken - batch[i]->enqueued);
    if (embed) run_embed(b, batch, k);
    else run_rerank(b, batch[0]);

    pthread_mutex_lock(&b->mu);
    for (size_t i = 0; i < k; i++) {
      batch[i]->done = 1;
      pthread_cond_signal(&batch[i]->cv);
    }
    atomic_fetch_add(&b->requests, k);
  }
  pthread_mutex_unlock(&b->mu);
  free(batch);
  return NULL;
}

qv_status batcher_new(batcher **out, qv_model *m, size_t max_tokens, double max_wait_ms, size_t max_queue,
                      struct metrics *mx, qv_error *err) {
  *out = NULL;
  if (!m) return qv_fail(err, QV_EINVAL, "batcher needs a model");
  batcher *b = calloc(1, sizeof *b);
  if (!b) return qv_fail(err, QV_ENOMEM, "out of memory");
  b->model = m;
  qv_model_info_get(m, &b->info);
  b->max_tokens = max_tokens ? max_tokens : 4096;
  b->max_wait_s = max_wait_ms > 0 ? max_wait_ms / 1000.0 : 0;
  b->max_queue = max_queue ? max_queue : 1024;
  b->metrics = mx;
  pthread_condattr_t ca;
  int rc = pthread_mutex_init(&b->mu, NULL);
  if (rc) {
    free(b);
    return qv_fail(err, rc, "cannot create the batcher's lock");
  }
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  rc = pthread_cond_init(&b->work_cv, &ca);
  pthread_condattr_destroy(&ca);
  if (!rc) {
    rc = pthread_create(&b->thread, NULL, worker, b);
    if (rc) pthread_cond_destroy(&b->work_cv);
  }
  if (rc) {
    pthread_mutex_destroy(&b->mu);
    free(b);
    return qv_fail(err, rc, "cannot start the batcher's worker thread");
  }
  *out = b;
  return QV_OK;
}

void batcher_free(batcher *b) {
  if (!b) return;
  pthread_mutex_lock(&b->mu);
  b->stopping = 1;
  pthread_cond_broadcast(&b->work_cv);
  pthread_mutex_unlock(&b->mu);
  pthread_join(b->thread, NULL);
  pthread_cond_destroy(&b->work_cv);
  pthread_mutex_destroy(&b->mu);
  free(b);
}

void batcher_hold(batcher *b, int hold) {
  pthread_mutex_lock(&b->mu);
  b->held = hold;
  pthread_cond_broadcast(&b->work_cv);
  pthread_mutex_unlock(&b->mu);
}

size_t batcher_passes(batcher *b) { return atomic_load(&b->passes); }

size_t batcher_queued(batcher *b) {
  pthread_mutex_lock(&b->mu);
  size_t n = b->queued;
  pthread_mutex_unlock(&b->mu);
  return n;
}

/* Tokenizes each input of an embedding request into r->enc, cut to the model's limit
 * when truncating, refusing what cannot run. */
static qv_status tokenize(batcher *b, breq *r, qv_error *err) {
  size_t limit = (size_t)b->info.max_tokens;
  const qv_tokenizer *tok = model_tokenizer(b->model);
  for (size_t i = 0; i < r->n; i++) {
    const char *text = r->texts[i] ? r->texts[i] : "";
    qv_status st = tok_encode(tok, text, r->lens[i], NULL, 0, r->truncate ? limit : 0, &r->enc[i], err);
    if (st) {
      qv_error_prefix(err, "input %zu", i);
      return st;
    }
    size_t t = r->enc[i].len;
    if (t > limit)
      return qv_fail(err, QV_ETOOLONG,
                     "input %zu has %zu tokens; the model accepts %zu (ask for truncation to cut it)", i, t, limit);
    r->tokens += t;
  }
  return QV_OK;
}

/* Counts each (query, doc) pair's tokens for a rerank request, refusing what cannot run. */
static qv_status count_tokens(batcher *b, breq *r, qv_error *err) {
  size_t limit = (size_t)b->info.max_tokens;
  size_t qtok = 0;
  if (r->query) {
    qv_status st = qv_model_count_tokens(b->model, r->query, strlen(r->query), &qtok, err);
    if (st) {
      qv_error_prefix(err, "query");
      return st;
    }
    qtok = qtok > 1 ? qtok - 1 : 0; /* a pair shares [CLS] ... [SEP]: the query adds its own [SEP] only */
  }
  for (size_t i = 0; i < r->n; i++) {
    size_t t;
    const char *text = r->texts[i] ? r->texts[i] : "";
    qv_status st = qv_model_count_tokens(b->model, text, r->lens[i], &t, err);
    if (st) {
      qv_error_prefix(err, "input %zu", i);
      return st;
    }
    t += qtok;
    if (t > limit) {
      if (!r->truncate)
        return qv_fail(err, QV_ETOOLONG,
                       "input %zu has %zu tokens; the model accepts %zu (ask for truncation to cut it)", i, t, limit);
      t = limit;
    }
    r->tokens += t;
  }
  return QV_OK;
}

static qv_status submit(batcher *b, breq *r, qv_error *err) {
  pthread_mutex_lock(&b->mu);
  b->arriving++;
  pthread_mutex_unlock(&b->mu);
  double t0 = qv_monotonic_s();
  qv_status st = r->enc ? tokenize(b, r, err) : count_tokens(b, r, err);
  metrics_stage(b->metrics, "tokenize", qv_monotonic_s() - t0);
  if (!st && pthread_cond_init(&r->cv, NULL)) st = qv_fail(err, QV_ENOMEM, "cannot create a condition");
  pthread_mutex_lock(&b->mu);
  b->arriving--;
  if (st) {
    pthread_mutex_unlock(&b->mu);
    return st;
  }
  if (b->stopping) {
    st = qv_fail(err, QV_EBUSY, "the server is shutting down");
  } else if (b->queued >= b->max_queue) {
    st = qv_fail(err, QV_EBUSY, "overloaded: %zu requests are already waiting for the model", b->queued);
  } else {
    r->enqueued = qv_monotonic_s();
    if (b->tail) b->tail->next = r;
    else b->head = r;
    b->tail = r;
    b->queued++;
    pthread_cond_signal(&b->work_cv);
    while (!r->done) pthread_cond_wait(&r->cv, &b->mu);
    st = r->st;
    if (st) copy_err(err, &r->err);
  }
  pthread_mutex_unlock(&b->mu);
  pthread_cond_destroy(&r->cv);
  return st;
}

qv_status batcher_encode(batcher *b, const char *const *texts, const size_t *lens, size_t n, int truncate, float *out,
                         qv_error *err) {
  return batcher_encode_tokens(b, texts, lens, n, truncate, out, NULL, err);
}

qv_status batcher_encode_tokens(batcher *b, const char *const *texts, const size_t *lens, size_t n, int truncate,
                                float *out, size_t *tokens, qv_error *err) {
  if (tokens) *tokens = 0;
  if (b->info.kind != QV_MODEL_EMBEDDING)
    return qv_fail(err, QV_EINVAL, "model %s is a reranker, not an embedding model", b->info.name);
  if (n == 0) return QV_OK;
  size_t *own = NULL;
  if (!lens) {
    own = malloc(n * sizeof *own);
    if (!own) return qv_fail(err, QV_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) own[i] = texts[i] ? strlen(texts[i]) : 0;
  }
  tok_encoding *enc = calloc(n, sizeof *enc);
  if (!enc) {
    free(own);
    return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  breq r = {.texts = texts, .lens = lens ? lens : own, .enc = enc, .n = n, .truncate = truncate, .out = out};
  qv_status st = submit(b, &r, err);
  if (!st && tokens) *tokens = r.tokens;
  for (size_t i = 0; i < n; i++) tok_encoding_free(&enc[i]);
  free(enc);
  free(own);
  return st;
}

qv_status batcher_rerank(batcher *b, const char *query, const char *const *docs, size_t n, int truncate, float *logits,
                         qv_error *err) {
  if (b->info.kind != QV_MODEL_RERANKER)
    return qv_fail(err, QV_EINVAL, "model %s is an embedding model, not a reranker", b->info.name);
  if (n == 0) return QV_OK;
  size_t *lens = malloc(n * sizeof *lens);
  if (!lens) return qv_fail(err, QV_ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) lens[i] = docs[i] ? strlen(docs[i]) : 0;
  breq r = {.texts = docs, .lens = lens, .n = n, .query = query ? query : "", .truncate = truncate, .out = logits};
  qv_status st = submit(b, &r, err);
  free(lens);
  return st;
}
