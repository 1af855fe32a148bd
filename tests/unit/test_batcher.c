/* The dynamic batcher with the real model: results equal direct qv_model_encode under many
 * concurrent callers, requests merge into fewer passes, a full queue is QV_EBUSY, and an
 * over-long input fails only its own request. Skipped when the model is not cached. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quiver.h"
#include "server/batcher.h"
#include "server/metrics.h"
#include "test.h"

static char model_dir[1024];
static qv_model *model;

static int have_model(void) {
  if (model) return 1;
  const char *home = getenv("HOME");
  if (!home) return 0;
  snprintf(model_dir, sizeof model_dir, "%s/.cache/quiver/models/all-MiniLM-L6-v2", home);
  char p[1100];
  snprintf(p, sizeof p, "%s/model.safetensors", model_dir);
  if (access(p, R_OK) != 0) return 0;
  return qv_model_load(&model, model_dir, NULL) == 0;
}

#define NTHREADS 24
#define PER_REQ 3

static const char *WORDS[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "vector",
                              "search", "engine", "embedding", "retrieval", "café", "naïve", "x"};

static void make_text(char *buf, size_t cap, int seed) {
  size_t at = 0;
  int n = 1 + (seed * 7) % 23;
  for (int i = 0; i < n && at + 16 < cap; i++)
    at += (size_t)snprintf(buf + at, cap - at, "%s%s", i ? " " : "", WORDS[(seed * 31 + i * 17) % 16]);
}

typedef struct job {
  batcher *b;
  int id;
  int truncate;
  const char *texts[PER_REQ];
  char store[PER_REQ][512];
  float out[PER_REQ * 384];
  qv_status st;
  qv_error err;
} job;

static void *run_job(void *arg) {
  job *j = arg;
  j->st = batcher_encode(j->b, j->texts, NULL, PER_REQ, j->truncate, j->out, &j->err);
  return NULL;
}

static void setup_job(job *j, batcher *b, int id) {
  memset(j, 0, sizeof *j);
  j->b = b;
  j->id = id;
  for (int k = 0; k < PER_REQ; k++) {
    make_text(j->store[k], sizeof j->store[k], id * PER_REQ + k);
    j->texts[k] = j->store[k];
  }
}

TEST(concurrent_requests_match_direct_encode_and_merge) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models (scripts/fetch_models.py)");
  metrics *mx = metrics_new();
  batcher *b;
  /* a long wait lets the threads pile up, so merging is certain rather than likely */
  ASSERT_OK(batcher_new(&b, model, 100000, 200, 1024, mx, NULL));
  static job jobs[NTHREADS];
  pthread_t th[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    setup_job(&jobs[i], b, i);
    ASSERT_EQ(pthread_create(&th[i], NULL, run_job, &jobs[i]), 0);
  }
  for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  size_t passes = batcher_passes(b);
  for (int i = 0; i < NTHREADS; i++) {
    ASSERT_OK(jobs[i].st);
    float want[PER_REQ * 384];
    ASSERT_OK(qv_model_encode(model, jobs[i].texts, NULL, PER_REQ, 0, want, NULL));
    for (int k = 0; k < PER_REQ * 384; k++) ASSERT_NEAR(jobs[i].out[k], want[k], 1e-6);
  }
  ASSERT(passes >= 1);
  ASSERT(passes < NTHREADS);
  char *t = metrics_render(mx, NULL, NULL);
  ASSERT(t);
  char line[64];
  snprintf(line, sizeof line, "\nquiver_batch_size_sum %d\n", NTHREADS * PER_REQ);
  ASSERT(strstr(t, line));
  snprintf(line, sizeof line, "\nquiver_batch_size_count %zu\n", passes);
  ASSERT(strstr(t, line));
  ASSERT(strstr(t, "quiver_stage_duration_seconds_count{stage=\"queue\"} 24\n"));
  free(t);
  batcher_free(b);
  metrics_free(mx);
}

/* Waiting for company only when some is evidently coming: a lone caller's request runs
 * without the (here 60 s) wait, while callers that queue together share passes. */
TEST(lone_request_does_not_wait_and_a_burst_merges) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  metrics *mx = metrics_new();
  batcher *b;
  ASSERT_OK(batcher_new(&b, model, 1000000, 60000, 1024, mx, NULL));
  static job lone;
  setup_job(&lone, b, 500);
  run_job(&lone); /* would block for 60 s if a lone request waited */
  ASSERT_OK(lone.st);
  ASSERT_EQ(batcher_passes(b), 1);
  /* a burst queued while the worker is held: released, it runs as one pass */
  batcher_hold(b, 1);
  static job jobs[NTHREADS];
  pthread_t th[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    setup_job(&jobs[i], b, 600 + i);
    ASSERT_EQ(pthread_create(&th[i], NULL, run_job, &jobs[i]), 0);
  }
  while (batcher_queued(b) < NTHREADS) usleep(1000);
  batcher_hold(b, 0);
  for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < NTHREADS; i++) ASSERT_OK(jobs[i].st);
  ASSERT_EQ(batcher_passes(b), 2);
  char *t = metrics_render(mx, NULL, NULL);
  ASSERT(t);
  char line[64];
  snprintf(line, sizeof line, "\nquiver_batch_size_sum %d\n", (NTHREADS + 1) * PER_REQ);
  ASSERT(strstr(t, line));
  ASSERT(strstr(t, "\nquiver_batch_size_count 2\n"));
  free(t);
  batcher_free(b);
  metrics_free(mx);
}

TEST(token_budget_splits_batches) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  batcher *b;
  /* a budget of one token: every request runs alone, however many wait */
  ASSERT_OK(batcher_new(&b, model, 1, 50, 1024, NULL, NULL));
  static job jobs[6];
  pthread_t th[6];
  for (int i = 0; i < 6; i++) {
    setup_job(&jobs[i], b, 100 + i);
    pthread_create(&th[i], NULL, run_job, &jobs[i]);
  }
  for (int i = 0; i < 6; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 6; i++) ASSERT_OK(jobs[i].st);
  ASSERT_EQ(batcher_passes(b), 6);
  batcher_free(b);
}

TEST(too_long_input_fails_only_its_request) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  batcher *b;
  ASSERT_OK(batcher_new(&b, model, 100000, 100, 1024, NULL, NULL));
  static job jobs[8];
  pthread_t th[8];
  static char longtext[8000];
  for (size_t k = 0; k + 5 < sizeof longtext; k += 5) memcpy(longtext + k, "word ", 5);
  longtext[sizeof longtext - 1] = '\0';
  for (int i = 0; i < 8; i++) {
    setup_job(&jobs[i], b, 200 + i);
    if (i == 3) jobs[i].texts[1] = longtext;
    if (i == 5) {
      jobs[i].texts[2] = longtext;
      jobs[i].truncate = 1;
    }
    pthread_create(&th[i], NULL, run_job, &jobs[i]);
  }
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 8; i++) {
    if (i == 3) {
      ASSERT_STATUS(jobs[i].st, QV_ETOOLONG);
      ASSERT_STATUS(jobs[i].err.status, QV_ETOOLONG);
      ASSERT(strstr(jobs[i].err.msg, "input 1 has 1601 tokens"));
      ASSERT(strstr(jobs[i].err.msg, "accepts 256"));
      continue;
    }
    ASSERT_OK(jobs[i].st);
    float want[PER_REQ * 384];
    ASSERT_OK(qv_model_encode(model, jobs[i].texts, NULL, PER_REQ, jobs[i].truncate, want, NULL));
    for (int k = 0; k < PER_REQ * 384; k++) ASSERT_NEAR(jobs[i].out[k], want[k], 1e-6);
  }
  batcher_free(b);
}

TEST(invalid_utf8_fails_only_its_request) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  batcher *b;
  ASSERT_OK(batcher_new(&b, model, 100000, 1, 1024, NULL, NULL));
  const char *bad[1] = {"ok \xff\xfe bad"};
  float out[384];
  qv_error err = {0};
  ASSERT_STATUS(batcher_encode(b, bad, NULL, 1, 0, out, &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "input 0"));
  const char *good[1] = {"fine"};
  ASSERT_OK(batcher_encode(b, good, NULL, 1, 0, out, NULL));
  batcher_free(b);
}

TEST(full_queue_is_ebusy) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  batcher *b;
  /* the worker is held, so two stay queued while the third arrives */
  ASSERT_OK(batcher_new(&b, model, 1000000, 3000, 2, NULL, NULL));
  batcher_hold(b, 1);
  static job jobs[2];
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    setup_job(&jobs[i], b, 300 + i);
    pthread_create(&th[i], NULL, run_job, &jobs[i]);
  }
  while (batcher_queued(b) < 2) usleep(1000);
  const char *t[1] = {"one more"};
  float out[384];
  qv_error err = {0};
  ASSERT_STATUS(batcher_encode(b, t, NULL, 1, 0, out, &err), QV_EBUSY);
  ASSERT(strstr(err.msg, "2 requests are already waiting"));
  batcher_hold(b, 0);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 2; i++) ASSERT_OK(jobs[i].st);
  batcher_free(b);
}

TEST(free_finishes_queued_work) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  batcher *b;
  ASSERT_OK(batcher_new(&b, model, 1000000, 60000, 16, NULL, NULL));
  batcher_hold(b, 1);
  static job jobs[3];
  pthread_t th[3];
  for (int i = 0; i < 3; i++) {
    setup_job(&jobs[i], b, 400 + i);
    pthread_create(&th[i], NULL, run_job, &jobs[i]);
  }
  while (batcher_queued(b) < 3) usleep(1000);
  /* the hold (and the 60 s wait) end at shutdown; every queued request still completes */
  batcher_free(b);
  for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 3; i++) {
    ASSERT_OK(jobs[i].st);
    float want[PER_REQ * 384];
    ASSERT_OK(qv_model_encode(model, jobs[i].texts, NULL, PER_REQ, 0, want, NULL));
    for (int k = 0; k < PER_REQ * 384; k++) ASSERT_NEAR(jobs[i].out[k], want[k], 1e-6);
  }
}

TEST(wrong_model_kind_and_empty_input) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  batcher *b;
  ASSERT_OK(batcher_new(&b, model, 4096, 1, 16, NULL, NULL));
  float out[4];
  const char *d[1] = {"doc"};
  ASSERT_STATUS(batcher_rerank(b, "q", d, 1, 0, out, NULL), QV_EINVAL);
  ASSERT_OK(batcher_encode(b, d, NULL, 0, 0, out, NULL));
  ASSERT_EQ(batcher_passes(b), 0);
  batcher_free(b);
}

TEST(cleanup) {
  qv_model_free(model);
  model = NULL;
}

TEST_MAIN(T(concurrent_requests_match_direct_encode_and_merge), T(lone_request_does_not_wait_and_a_burst_merges),
          T(token_budget_splits_batches),
          T(too_long_input_fails_only_its_request), T(invalid_utf8_fails_only_its_request), T(full_queue_is_ebusy),
          T(free_finishes_queued_work), T(wrong_model_kind_and_empty_input), T(cleanup))
