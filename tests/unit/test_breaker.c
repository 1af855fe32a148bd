/* The GPU -> CPU circuit breaker and the dispatch, with an injected failing backend (no
 * GPU needed): a test backend wraps the CPU backend and, on command, poisons its outputs
 * and reports QV_EDEVICE, or makes each unit look slow by stepping the injected clock.
 * The model tests run qv_model_encode through the same dispatch path the model uses and
 * check that the results still equal the CPU's while the breaker opens, half-opens and
 * closes. Time is a counter the tests advance; nothing sleeps. */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "base/log.h"
#include "compute/backend.h"
#include "compute/breaker.h"
#include "compute/device.h"
#include "compute/dispatch.h"
#include "test.h"

/* ---- the injectable clock ------------------------------------------------------------- */

static double fake_now;
static double fake_clock(void *arg) { return fake_now; }

/* ---- the failing backend: the CPU backend plus failure on command ---------------------- */

static struct {
  qv_backend be;
  int fail;          /* every unit fails while set */
  double slow_s;     /* each sync advances the clock by this much */
  int ops;           /* ops run on this backend */
  int pending_error;
} fb;

static const qv_backend *cpu(void) { return backend_cpu(); }

static void fb_linear(void *ctx, float *out, const float *inp, const float *w, const float *bias, int M, int N,
                      int K) {
  fb.ops++;
  cpu()->linear(cpu()->ctx, out, inp, w, bias, M, N, K);
  if (fb.fail) {
    for (size_t i = 0; i < (size_t)M * N; i++) out[i] = NAN; /* what a broken device leaves */
    fb.pending_error = 1;
  }
}
static void fb_layernorm(void *ctx, float *out, const float *inp, const float *res, const float *w, const float *b,
                         int rows, int C, float eps) {
  fb.ops++;
  cpu()->layernorm(cpu()->ctx, out, inp, res, w, b, rows, C, eps);
}
static void fb_gelu(void *ctx, float *x, size_t n) { cpu()->gelu(cpu()->ctx, x, n); }
static void fb_tanh(void *ctx, float *x, size_t n) { cpu()->act_tanh(cpu()->ctx, x, n); }
static void fb_attention(void *ctx, float *out, const float *qkv, const int *lens, int B, int T, int C, int NH,
                         float *scratch) {
  cpu()->attention(cpu()->ctx, out, qkv, lens, B, T, C, NH, scratch);
}
static size_t fb_scratch(void *ctx, int B, int T, int NH) { return cpu()->attention_scratch(cpu()->ctx, B, T, NH); }
static void fb_embed(void *ctx, float *out, const int32_t *ids, const int32_t *types, const float *word,
                     const float *pos, const float *type, const int *lens, int B, int T, int C) {
  cpu()->embed(cpu()->ctx, out, ids, types, word, pos, type, lens, B, T, C);
}
static void fb_sync(void *ctx) { fake_now += fb.slow_s; }
static qv_status fb_status(void *ctx) {
  qv_status st = fb.pending_error ? QV_EDEVICE : QV_OK;
  fb.pending_error = 0;
  return st;
}

static const qv_backend *failing_backend(void) {
  fb.be = (qv_backend){.api_version = QV_BACKEND_API_VERSION,
                       .name = "cuda",
                       .linear = fb_linear,
                       .layernorm = fb_layernorm,
                       .gelu = fb_gelu,
                       .act_tanh = fb_tanh,
                       .attention = fb_attention,
                       .attention_scratch = fb_scratch,
                       .embed = fb_embed,
                       .sync = fb_sync,
                       .status = fb_status};
  fb.fail = 0;
  fb.slow_s = 0;
  fb.ops = 0;
  fb.pending_error = 0;
  return &fb.be;
}

/* ---- breaker alone --------------------------------------------------------------------- */

TEST(breaker_opens_after_threshold_and_half_opens_after_recovery) {
  breaker b;
  fake_now = 1000;
  breaker_init(&b, 3, 300, fake_clock, NULL);
  ASSERT_EQ(breaker_get_state(&b), BREAKER_CLOSED);
  ASSERT(breaker_allow(&b));
  breaker_failure(&b);
  breaker_failure(&b);
  ASSERT_EQ(breaker_get_state(&b), BREAKER_CLOSED);
  breaker_failure(&b);
  ASSERT_EQ(breaker_get_state(&b), BREAKER_OPEN);
  ASSERT_EQ(breaker_opens(&b), 1);
  ASSERT(!breaker_allow(&b));
  fake_now += 299.9;
  ASSERT(!breaker_allow(&b));
  fake_now += 0.1;
  ASSERT(breaker_allow(&b)); /* the trial */
  ASSERT_EQ(breaker_get_state(&b), BREAKER_HALF_OPEN);
  ASSERT(!breaker_allow(&b)); /* only one trial at a time */
  breaker_failure(&b);        /* the trial failed: a full recovery period again */
  ASSERT_EQ(breaker_get_state(&b), BREAKER_OPEN);
  ASSERT_EQ(breaker_opens(&b), 2);
  fake_now += 299;
  ASSERT(!breaker_allow(&b));
  fake_now += 1;
  ASSERT(breaker_allow(&b));
  breaker_success(&b);
  ASSERT_EQ(breaker_get_state(&b), BREAKER_CLOSED);
  ASSERT(breaker_allow(&b));
  ASSERT(breaker_allow(&b));
  breaker_destroy(&b);
}

TEST(breaker_success_resets_the_count_and_late_failures_do_not_extend_open) {
  breaker b;
  fake_now = 0;
  breaker_init(&b, 3, 10, fake_clock, NULL);
  breaker_failure(&b);
  breaker_failure(&b);
  breaker_success(&b);
  breaker_failure(&b);
  breaker_failure(&b);
  ASSERT_EQ(breaker_get_state(&b), BREAKER_CLOSED);
  breaker_failure(&b);
  ASSERT_EQ(breaker_get_state(&b), BREAKER_OPEN);
  fake_now = 9;
  breaker_failure(&b); /* a unit let through before the opening reports late */
  fake_now = 10;
  ASSERT(breaker_allow(&b));
  breaker_destroy(&b);
}

TEST(breaker_defaults) {
  breaker b;
  breaker_init(&b, 0, 0, NULL, NULL);
  ASSERT_EQ(b.threshold, 3);
  ASSERT_NEAR(b.recovery_s, 300, 0);
  ASSERT(breaker_now(&b) > 0);
  breaker_destroy(&b);
}

/* ---- dispatch with a small unit of work ------------------------------------------------- */

typedef struct lin_work {
  float out[4 * 3];
  qv_status refuse; /* returned before any op: bad input */
} lin_work;

static qv_status lin_run(const qv_backend *be, void *arg) {
  lin_work *w = arg;
  if (w->refuse) return w->refuse;
  static const float x[4 * 2] = {1, 2, 3, 4, 5, 6, 7, 8}, wt[3 * 2] = {1, 0, 0, 1, 1, 1}, b[3] = {0.5f, 0, -1};
  be->linear(be->ctx, w->out, x, wt, b, 4, 3, 2);
  if (be->sync) be->sync(be->ctx);
  return QV_OK;
}

TEST(dispatch_reruns_failed_units_on_the_cpu_and_counts_them) {
  compute_dispatch d;
  fake_now = 0;
  dispatch_init(&d, failing_backend(), 1, 30, 3, 300, fake_clock, NULL);
  lin_work w = {0};
  const qv_backend *used;
  ASSERT_OK(dispatch_run(&d, lin_run, &w, &used, NULL));
  ASSERT(used == &fb.be);
  ASSERT_NEAR(w.out[0], 1.5, 0);
  ASSERT_NEAR(w.out[11], 14, 0);
  fb.fail = 1;
  for (int i = 0; i < 3; i++) {
    memset(w.out, 0, sizeof w.out);
    ASSERT_OK(dispatch_run(&d, lin_run, &w, &used, NULL));
    ASSERT(used == d.cpu);
    ASSERT_NEAR(w.out[0], 1.5, 0); /* the CPU's answer, not the poisoned one */
    ASSERT_NEAR(w.out[11], 14, 0);
  }
  ASSERT_EQ(breaker_get_state(&d.br), BREAKER_OPEN);
  ASSERT_EQ(atomic_load(&d.gpu_failures), 3);
  ASSERT_EQ(atomic_load(&d.fallbacks), 3);
  int ops = fb.ops;
  ASSERT_OK(dispatch_run(&d, lin_run, &w, &used, NULL)); /* open: straight to the CPU */
  ASSERT(used == d.cpu);
  ASSERT_EQ(fb.ops, ops);
  ASSERT_EQ(atomic_load(&d.fallbacks), 4);
  ASSERT_EQ(atomic_load(&d.gpu_failures), 3);
  dispatch_destroy(&d);
}

TEST(dispatch_input_errors_are_not_device_failures) {
  compute_dispatch d;
  dispatch_init(&d, failing_backend(), 1, 30, 1, 300, fake_clock, NULL);
  lin_work w = {.refuse = QV_ERANGE};
  ASSERT_STATUS(dispatch_run(&d, lin_run, &w, NULL, NULL), QV_ERANGE);
  ASSERT_EQ(breaker_get_state(&d.br), BREAKER_CLOSED);
  ASSERT_EQ(atomic_load(&d.gpu_failures), 0);
  dispatch_destroy(&d);
}

TEST(dispatch_timeout_counts_as_failure_but_keeps_results) {
  compute_dispatch d;
  fake_now = 0;
  dispatch_init(&d, failing_backend(), 1, 30, 2, 300, fake_clock, NULL);
  fb.slow_s = 31;
  lin_work w = {0};
  const qv_backend *used;
  ASSERT_OK(dispatch_run(&d, lin_run, &w, &used, NULL));
  ASSERT(used == &fb.be);
  ASSERT_NEAR(w.out[11], 14, 0);
  ASSERT_EQ(atomic_load(&d.gpu_failures), 1);
  ASSERT_EQ(breaker_get_state(&d.br), BREAKER_CLOSED);
  ASSERT_OK(dispatch_run(&d, lin_run, &w, &used, NULL));
  ASSERT_EQ(breaker_get_state(&d.br), BREAKER_OPEN);
  dispatch_destroy(&d);
}

TEST(dispatch_without_fallback_reports_edevice) {
  compute_dispatch d;
  fake_now = 0;
  dispatch_init(&d, failing_backend(), 0, 30, 1, 300, fake_clock, NULL);
  fb.fail = 1;
  lin_work w = {0};
  qv_error err = {0};
  ASSERT_STATUS(dispatch_run(&d, lin_run, &w, NULL, &err), QV_EDEVICE);
  ASSERT(strstr(err.msg, "fallback is off") != NULL);
  ASSERT_STATUS(dispatch_run(&d, lin_run, &w, NULL, &err), QV_EDEVICE); /* open now */
  ASSERT(strstr(err.msg, "circuit breaker open") != NULL);
  dispatch_destroy(&d);
}

TEST(dispatch_cpu_only) {
  compute_dispatch d;
  dispatch_init(&d, NULL, 1, 30, 3, 300, NULL, NULL);
  lin_work w = {0};
  const qv_backend *used;
  ASSERT_OK(dispatch_run(&d, lin_run, &w, &used, NULL));
  ASSERT(used == backend_cpu());
  ASSERT_EQ(atomic_load(&d.fallbacks), 0);
  ASSERT_EQ(atomic_load(&d.cpu_runs), 1);
  dispatch_destroy(&d);
}

/* ---- two callers at once: one's failure must never be charged to the other ----------- */

static _Atomic int shared_error; /* a device's error state is per backend, not per caller */
static __thread int i_fail;

static void cc_linear(void *ctx, float *out, const float *inp, const float *w, const float *bias, int M, int N,
                      int K) {
  cpu()->linear(cpu()->ctx, out, inp, w, bias, M, N, K);
  if (i_fail) atomic_store(&shared_error, 1);
  sched_yield(); /* let the other caller reach its status check in between */
}
static qv_status cc_status(void *ctx) { return atomic_exchange(&shared_error, 0) ? QV_EDEVICE : QV_OK; }
static qv_backend cc_be = {.api_version = QV_BACKEND_API_VERSION, .name = "cuda", .linear = cc_linear,
                           .status = cc_status};

typedef struct caller {
  compute_dispatch *d;
  int fail, wrong_backend, wrong_result;
} caller;

static void *caller_main(void *arg) {
  caller *c = arg;
  i_fail = c->fail;
  for (int i = 0; i < 2000; i++) {
    lin_work w = {0};
    const qv_backend *used;
    if (dispatch_run(c->d, lin_run, &w, &used, NULL)) c->wrong_result++;
    if (used != (c->fail ? c->d->cpu : &cc_be)) c->wrong_backend++;
    if (w.out[0] != 1.5f || w.out[11] != 14.0f) c->wrong_result++;
  }
  return NULL;
}

TEST(dispatch_concurrent_callers_see_only_their_own_failures) {
  compute_dispatch d;
  /* a threshold no run reaches: the point is who is charged, not the opening */
  dispatch_init(&d, &cc_be, 1, 0, 1000000, 300, fake_clock, NULL);
  caller good = {&d, 0, 0, 0}, bad = {&d, 1, 0, 0};
  qv_log_set_level(QV_LOG_ERROR); /* 2000 fallbacks would each warn */
  pthread_t a, b;
  ASSERT_EQ(pthread_create(&a, NULL, caller_main, &good), 0);
  ASSERT_EQ(pthread_create(&b, NULL, caller_main, &bad), 0);
  pthread_join(a, NULL);
  pthread_join(b, NULL);
  ASSERT_EQ(good.wrong_backend, 0);
  ASSERT_EQ(good.wrong_result, 0);
  ASSERT_EQ(bad.wrong_backend, 0);
  ASSERT_EQ(bad.wrong_result, 0);
  ASSERT_EQ(atomic_load(&d.gpu_failures), 2000);
  ASSERT_EQ(atomic_load(&d.gpu_runs), 2000);
  qv_log_set_level(QV_LOG_WARN);
  dispatch_destroy(&d);
}

/* ---- the model through the process's dispatch ------------------------------------------ */

#define NTEXT 40 /* two batches of at most 32 */
static const char *texts[NTEXT];
static char text_buf[NTEXT][160];

static int have_model(void) {
  const char *home = getenv("HOME");
  char p[1024];
  snprintf(p, sizeof p, "%s/.cache/quiver/models/all-MiniLM-L6-v2/model.safetensors", home ? home : ".");
  FILE *f = fopen(p, "rb");
  if (f) fclose(f);
  for (int i = 0; i < NTEXT; i++) {
    snprintf(text_buf[i], sizeof text_buf[i], "sentence %d about %s and %.*s", i,
             i % 3 ? "search engines" : "graphics cards", i * 3 % 90,
             "many more words make this longer so the lengths differ between the inputs of a batch here");
    texts[i] = text_buf[i];
  }
  return f != NULL;
}

static float *encode_with(const qv_backend *gpu, const qv_gpu_config *cfg, qv_status *st) {
  device_set_backend_for_test(gpu, cfg, fake_clock, NULL);
  qv_model *m;
  qv_error err = {0};
  *st = qv_model_load(&m, "all-MiniLM-L6-v2", &err);
  if (*st) return NULL;
  float *out = calloc(NTEXT * 384, sizeof *out);
  *st = qv_model_encode(m, texts, NULL, NTEXT, 1, out, &err);
  qv_model_free(m);
  return out;
}

static double max_diff(const float *a, const float *b) {
  double d = 0;
  for (size_t i = 0; i < NTEXT * 384; i++) {
    double x = fabs((double)a[i] - b[i]);
    if (!(x <= d)) d = x; /* NaN counts as the largest */
  }
  return d;
}

TEST(model_results_equal_cpu_while_the_gpu_fails) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  qv_status st;
  float *ref = encode_with(NULL, NULL, &st);
  ASSERT_OK(st);
  const qv_backend *g = failing_backend();
  fb.fail = 1;
  fake_now = 0;
  device_set_backend_for_test(g, NULL, fake_clock, NULL);
  qv_model *m;
  ASSERT_OK(qv_model_load(&m, "all-MiniLM-L6-v2", NULL));
  float *out = calloc(NTEXT * 384, sizeof *out);
  qv_gpu_stats s;
  /* 2 batches per call: calls 1 and 2 fail 3 units on the GPU (the third opens it) */
  for (int call = 0; call < 3; call++) {
    ASSERT_OK(qv_model_encode(m, texts, NULL, NTEXT, 1, out, NULL));
    ASSERT(max_diff(ref, out) <= 1e-6);
  }
  qv_gpu_stats_get(&s);
  ASSERT_EQ(s.gpu_failures_total, 3);
  ASSERT_EQ(s.fallbacks_total, 6);
  ASSERT_EQ(s.breaker_state, BREAKER_OPEN);
  ASSERT(!strcmp(s.backend, "cpu"));
  /* the device heals; after the recovery period one trial closes the breaker */
  fb.fail = 0;
  fake_now += 300;
  int ops = fb.ops;
  ASSERT_OK(qv_model_encode(m, texts, NULL, NTEXT, 1, out, NULL));
  ASSERT(max_diff(ref, out) <= 1e-6);
  ASSERT(fb.ops > ops);
  qv_gpu_stats_get(&s);
  ASSERT_EQ(s.breaker_state, BREAKER_CLOSED);
  ASSERT_EQ(s.gpu_runs_total, 2);
  ASSERT(!strcmp(s.backend, "cuda"));
  qv_model_free(m);
  free(out);
  free(ref);
  device_set_backend_for_test(NULL, NULL, NULL, NULL);
}

TEST(model_trial_failure_reopens_for_a_full_period) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  qv_gpu_config cfg;
  qv_gpu_config_default(&cfg);
  cfg.breaker_failures = 1;
  cfg.breaker_cooldown_s = 60;
  const qv_backend *g = failing_backend();
  fb.fail = 1;
  fake_now = 0;
  device_set_backend_for_test(g, &cfg, fake_clock, NULL);
  qv_model *m;
  ASSERT_OK(qv_model_load(&m, "all-MiniLM-L6-v2", NULL));
  float *out = calloc(NTEXT * 384, sizeof *out);
  ASSERT_OK(qv_model_encode(m, texts, 0, 1, 1, out, NULL)); /* one batch: fails, opens */
  qv_gpu_stats s;
  qv_gpu_stats_get(&s);
  ASSERT_EQ(s.breaker_state, BREAKER_OPEN);
  fake_now = 60;
  ASSERT_OK(qv_model_encode(m, texts, 0, 1, 1, out, NULL)); /* the trial fails */
  qv_gpu_stats_get(&s);
  ASSERT_EQ(s.breaker_state, BREAKER_OPEN);
  ASSERT_EQ(s.breaker_opens_total, 2);
  ASSERT_EQ(s.gpu_failures_total, 2);
  fake_now = 119;
  int ops = fb.ops;
  ASSERT_OK(qv_model_encode(m, texts, 0, 1, 1, out, NULL));
  ASSERT_EQ(fb.ops, ops); /* still open: the GPU was not touched */
  qv_model_free(m);
  free(out);
  device_set_backend_for_test(NULL, NULL, NULL, NULL);
}

TEST(model_without_fallback_returns_edevice) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  qv_gpu_config cfg;
  qv_gpu_config_default(&cfg);
  cfg.fallback_to_cpu = 0;
  const qv_backend *g = failing_backend();
  fb.fail = 1;
  qv_status st;
  float *out = encode_with(g, &cfg, &st);
  ASSERT_STATUS(st, QV_EDEVICE);
  free(out);
  device_set_backend_for_test(NULL, NULL, NULL, NULL);
}

TEST_MAIN(T(breaker_opens_after_threshold_and_half_opens_after_recovery),
          T(breaker_success_resets_the_count_and_late_failures_do_not_extend_open), T(breaker_defaults),
          T(dispatch_reruns_failed_units_on_the_cpu_and_counts_them), T(dispatch_input_errors_are_not_device_failures),
          T(dispatch_timeout_counts_as_failure_but_keeps_results), T(dispatch_without_fallback_reports_edevice),
          T(dispatch_cpu_only), T(dispatch_concurrent_callers_see_only_their_own_failures), T(model_results_equal_cpu_while_the_gpu_fails),
          T(model_trial_failure_reopens_for_a_full_period), T(model_without_fallback_returns_edevice))
