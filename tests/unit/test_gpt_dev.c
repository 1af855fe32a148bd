/* The device training driver (gpt/gpt_dev.h) on the ops' CPU twin against the CPU path
 * (gpt_forward / gpt_backward / gpt_clip_grad / gpt_adamw_step): the same losses,
 * gradients and parameters over several steps; input checks; and what a device failure
 * does (latched, reported, the host copy left as it was). */
#define _GNU_SOURCE /* mkdtemp */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/mem.h"
#include "compute/device.h"
#include "gpt/gpt.h"
#include "gpt/ckpt.h"
#include "gpt/gpt_dev.h"
#include "gpt/infer.h"
#include "gpt/train.h"
#include "gpt/kernels.h"
#include "test.h"

static const gpt_config tiny = {.n_layer = 2, .n_head = 2, .n_embd = 32, .n_ctx = 16, .vocab_size = 67,
                                .ln_eps = 1e-5f};
enum { TB = 3, TT = 16 };

static void batch(gpt_rng *r, int32_t *inp, int32_t *tgt, int V) {
  for (int i = 0; i < TB * TT; i++) {
    inp[i] = (int32_t)(gpt_rng_u64(r) % (uint64_t)V);
    tgt[i] = i % 11 == 5 ? -1 : (int32_t)(gpt_rng_u64(r) % (uint64_t)V); /* some ignored */
  }
}

/* max |a - b| / max(1e-3, max |b|). */
static double rel_diff(const float *a, const float *b, size_t n) {
  double worst = 0, scale = 1e-3;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]);
    if (!(d <= worst)) worst = d;
    if (fabs((double)b[i]) > scale) scale = fabs((double)b[i]);
  }
  return worst / scale;
}

static gpt_model *model(uint64_t seed) {
  gpt_model *m = NULL;
  qv_error err = {0};
  if (gpt_create(&m, &tiny, &err) || gpt_train_alloc(m, TB, TT, &err)) return NULL;
  gpt_init(m, seed);
  return m;
}

TEST(driver_on_cpu_twin_matches_cpu_training) {
  gpt_model *cpu = model(7), *host = model(7);
  ASSERT(cpu && host);
  gpt_dev *d = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_dev_create(&d, gpt_ops_cpu(), NULL, host, TB, TT, &err));
  float *g = qv_aligned_alloc(cpu->nparams * sizeof(float));
  float *logits = malloc((size_t)TB * TT * tiny.vocab_size * sizeof(float));
  ASSERT(g && logits);
  gpt_rng r;
  gpt_rng_seed(&r, 3);
  int32_t inp[TB * TT], tgt[TB * TT];
  gpt_adamw o = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
  float dl = 0;
  /* Where the AVX2 GEMM runs, the fused CPU path and the twin's separate ops compute each
   * element in the same order (kernels.c invariant 1), so the bits agree; elsewhere
   * OpenBLAS's per-call blocking may differ. */
  double tol = gptk_gemm_available() ? 0 : 1e-4;
  for (int step = 1; step <= 4; step++) {
    batch(&r, inp, tgt, tiny.vocab_size);
    gpt_zero_grad(cpu);
    gpt_dev_zero_grad(d);
    double lsum = 0;
    for (int a = 0; a < 2; a++) { /* gradient accumulation over two forwards */
      ASSERT_OK(gpt_forward(cpu, inp, tgt, TB, TT));
      ASSERT_OK(gpt_dev_forward(d, inp, tgt, TB, TT, &dl, &err));
      ASSERT(fabs(dl - cpu->loss) <= tol * fabs(cpu->loss));
      if (a == 0 && step == 1) {
        ASSERT_OK(gpt_dev_logits(d, logits, &err)); /* probabilities after a forward with targets */
        ASSERT(rel_diff(logits, gpt_logits(cpu), (size_t)TB * TT * tiny.vocab_size) <= tol);
      }
      lsum += dl;
      gpt_backward(cpu, 0.5f);
      gpt_dev_backward(d, 0.5f);
    }
    ASSERT_OK(gpt_dev_grads(d, g, &err));
    double gd = rel_diff(g, cpu->grads, cpu->nparams);
    if (gd > tol) TEST_FAIL_("step %d: gradients differ by %g (relative to the largest)", step, gd);
    double n1 = gpt_clip_grad(cpu, 0.05f), n2 = gpt_dev_clip_grad(d, 0.05f);
    ASSERT(n1 > 0.05); /* the clip is exercised */
    ASSERT(fabs(n1 - n2) <= tol * n1);
    gpt_adamw_step(cpu, &o, step);
    gpt_dev_adamw_step(d, &o, step);
    ASSERT(lsum > 0);
  }
  ASSERT_OK(gpt_dev_download(d, host, &err));
  double pd = rel_diff(host->params, cpu->params, cpu->nparams);
  if (pd > tol) TEST_FAIL_("parameters after 4 steps differ by %g", pd);
  ASSERT(rel_diff(host->m, cpu->m, cpu->nparams) <= tol);
  ASSERT(rel_diff(host->v, cpu->v, cpu->nparams) <= tol);
  /* the parameters moved: the comparison is not between two untouched copies */
  gpt_model *fresh = model(7);
  ASSERT(fresh);
  ASSERT(rel_diff(host->params, fresh->params, fresh->nparams) > 1e-3);
  /* logits without targets, on a shorter batch */
  ASSERT_OK(gpt_forward(cpu, inp, NULL, 2, 9));
  ASSERT_OK(gpt_dev_forward(d, inp, NULL, 2, 9, &dl, &err));
  ASSERT(dl == -1.0f);
  ASSERT_OK(gpt_dev_logits(d, logits, &err));
  ASSERT(rel_diff(logits, gpt_logits(cpu), (size_t)2 * 9 * tiny.vocab_size) <= tol);
  gpt_dev_free(d);
  gpt_free(cpu);
  gpt_free(host);
  gpt_free(fresh);
  qv_aligned_free(g);
  free(logits);
}

TEST(driver_rejects_bad_input) {
  gpt_model *m = model(1);
  ASSERT(m);
  gpt_dev *d = NULL;
  qv_error err = {0};
  ASSERT_STATUS(gpt_dev_create(&d, gpt_ops_cpu(), NULL, m, TB, tiny.n_ctx + 1, &err), QV_EINVAL);
  ASSERT(d == NULL);
  ASSERT_OK(gpt_dev_create(&d, gpt_ops_cpu(), NULL, m, TB, TT, &err));
  int32_t inp[TB * TT] = {0}, tgt[TB * TT] = {0};
  float loss;
  inp[5] = tiny.vocab_size;
  ASSERT_STATUS(gpt_dev_forward(d, inp, tgt, TB, TT, &loss, &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "out of range"));
  inp[5] = 0;
  tgt[7] = tiny.vocab_size;
  ASSERT_STATUS(gpt_dev_forward(d, inp, tgt, TB, TT, &loss, &err), QV_EINVAL);
  ASSERT_STATUS(gpt_dev_forward(d, inp, tgt, TB + 1, TT, &loss, &err), QV_EINVAL);
  ASSERT_STATUS(gpt_dev_forward(d, inp, tgt, 1, TT + 1, &loss, &err), QV_EINVAL);
  tgt[7] = -1;
  ASSERT_OK(gpt_dev_forward(d, inp, tgt, TB, TT, &loss, &err)); /* the state is usable after refusals */
  ASSERT(loss > 0);
  gpt_dev_free(d);
  gpt_free(m);
}

/* A device whose ops start failing after `after` status checks. */
static qv_gpt_ops failing;
static int checks_left;
static int adamw_calls, fail_at_adamw; /* fail once adamw ran this often (0: never) */
static qv_status failing_status(void *ctx, char *msg, size_t len) {
  (void)ctx;
  if (checks_left-- > 0 && !(fail_at_adamw && adamw_calls >= fail_at_adamw)) return QV_OK;
  snprintf(msg, len, "injected failure");
  return QV_EDEVICE;
}

static void counting_adamw(void *ctx, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                           float b2, float eps, float decay, float c1, float c2) {
  adamw_calls++;
  gpt_ops_cpu()->adamw(ctx, p, g, m, v, n, lr, b1, b2, eps, decay, c1, c2);
}

TEST(device_failure_is_latched_and_leaves_the_host_copy) {
  gpt_model *m = model(2);
  ASSERT(m);
  failing = *gpt_ops_cpu();
  failing.status = failing_status;
  checks_left = 1000;
  gpt_dev *d = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_dev_create(&d, &failing, NULL, m, TB, TT, &err));
  gpt_rng r;
  gpt_rng_seed(&r, 5);
  int32_t inp[TB * TT], tgt[TB * TT];
  batch(&r, inp, tgt, tiny.vocab_size);
  float loss;
  gpt_adamw o = {1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f};
  ASSERT_OK(gpt_dev_forward(d, inp, tgt, TB, TT, &loss, &err));
  gpt_dev_backward(d, 1.0f);
  gpt_dev_adamw_step(d, &o, 1);
  ASSERT_OK(gpt_dev_download(d, m, &err)); /* the host copy is now step 1's state */
  float *keep = malloc(m->nparams * sizeof(float));
  ASSERT(keep);
  memcpy(keep, m->params, m->nparams * sizeof(float));
  checks_left = 0; /* the next check fails */
  gpt_dev_backward(d, 1.0f);
  gpt_dev_adamw_step(d, &o, 2); /* would change the device's parameters; returns at once */
  ASSERT_STATUS(gpt_dev_status(d, &err), QV_EDEVICE);
  ASSERT(strstr(err.msg, "injected failure"));
  checks_left = 1000; /* the device "recovers": the failure stays latched (invariant 1) */
  ASSERT_STATUS(gpt_dev_forward(d, inp, tgt, TB, TT, &loss, &err), QV_EDEVICE);
  ASSERT(isnan(gpt_dev_clip_grad(d, 1.0f)));
  ASSERT_STATUS(gpt_dev_download(d, m, &err), QV_EDEVICE);
  ASSERT(memcmp(keep, m->params, m->nparams * sizeof(float)) == 0);
  gpt_dev_free(d);
  /* a failure during the download itself leaves the host copy too */
  checks_left = 1000;
  ASSERT_OK(gpt_dev_create(&d, &failing, NULL, m, TB, TT, &err));
  ASSERT_OK(gpt_dev_forward(d, inp, tgt, TB, TT, &loss, &err));
  gpt_dev_backward(d, 1.0f);
  gpt_dev_adamw_step(d, &o, 2);
  checks_left = 0;
  ASSERT_STATUS(gpt_dev_download(d, m, &err), QV_EDEVICE);
  ASSERT(memcmp(keep, m->params, m->nparams * sizeof(float)) == 0);
  gpt_dev_free(d);
  free(keep);
  gpt_free(m);
}

/* ---- gpt_train_run on a device ---- */

/* A failing device's triggers: after this many forwards (encoder_fwd calls) or AdamW
 * updates (0: never). */
static int fwd_calls, fail_at_fwd;
static int fail_now; /* set by a test's step callback */
static void counting_encoder_fwd(void *ctx, float *out, const int32_t *inp, const float *wte, const float *wpe,
                                 int B, int T, int C) {
  fwd_calls++;
  gpt_ops_cpu()->encoder_fwd(ctx, out, inp, wte, wpe, B, T, C);
}
static qv_status trigger_status(void *ctx, char *msg, size_t len) {
  (void)ctx;
  if (!fail_now && !(fail_at_adamw && adamw_calls >= fail_at_adamw) && !(fail_at_fwd && fwd_calls >= fail_at_fwd))
    return QV_OK;
  snprintf(msg, len, "injected failure");
  return QV_EDEVICE;
}
static const qv_gpt_ops *trigger_ops(int at_adamw, int at_fwd) {
  failing = *gpt_ops_cpu();
  failing.status = trigger_status;
  failing.adamw = counting_adamw;
  failing.encoder_fwd = counting_encoder_fwd;
  adamw_calls = fwd_calls = fail_now = 0;
  fail_at_adamw = at_adamw;
  fail_at_fwd = at_fwd;
  return &failing;
}

/* The process's GPU settings: gpu off (no plugin is looked for: the CPU runs are CPU runs
 * wherever the tests run) and the given fallback policy. */
static void gpu_settings(int fallback) {
  qv_gpu_config cfg;
  qv_error err = {0};
  qv_gpu_config_default(&cfg);
  cfg.enabled = QV_GPU_OFF;
  cfg.fallback_to_cpu = fallback;
  if (qv_gpu_config_apply(&cfg, &err)) TEST_FAIL_("gpu settings: %s", err.msg);
}

enum { RUN_STEPS = 12 };
typedef struct run_log {
  int stop_at;  /* the step whose callback asks to stop, and makes the device fail (0: none) */
  const char *resume;
  float loss[RUN_STEPS + 1];
  double val[RUN_STEPS + 1];
  const char *device[RUN_STEPS + 1];
  int calls;
} run_log;
static int log_step(void *c, const gpt_train_stats *s) {
  run_log *l = c;
  l->loss[s->step] = s->loss; /* a recomputed step overwrites its first value */
  l->val[s->step] = s->val_loss;
  l->device[s->step] = s->device;
  l->calls++;
  if (l->stop_at && s->step == l->stop_at) {
    fail_now = 1; /* the copy back for the stop's checkpoint meets a failed device */
    return 1;
  }
  return 0;
}

static qv_status train(const char *data, const char *out, const qv_gpt_ops *ops, run_log *l, qv_error *err) {
  gpt_train_opts o;
  gpt_train_defaults(&o);
  const char *paths[] = {data};
  o.data = paths;
  o.ndata = 1;
  o.out = out;
  o.vocab_size = 300;
  o.model = (gpt_config){.n_layer = 2, .n_head = 2, .n_embd = 16, .n_ctx = 16, .ln_eps = 1e-5f};
  o.batch = 3;
  o.accum = 2;
  o.steps = RUN_STEPS;
  o.warmup = 2;
  o.lr = 1e-2f;
  o.eval_every = 4;
  o.eval_batches = 2;
  o.val_fraction = 0.3;
  o.ops = ops;
  o.ops_name = "twin";
  o.on_step = log_step;
  o.ctx = l;
  int stop_at = l->stop_at;
  const char *resume = l->resume;
  memset(l, 0, sizeof *l);
  l->stop_at = stop_at;
  if (resume) { /* the model, tokenizer and optimizer options come from the checkpoint */
    o.resume = resume;
    o.model = (gpt_config){0};
  }
  return gpt_train_run(&o, err);
}

static gpt_model *final_model(const char *out, gpt_ckpt_meta *meta) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/step-%06d", out, RUN_STEPS);
  gpt_model *m = NULL;
  qv_error err = {0};
  if (gpt_load(&m, dir, meta, &err) || gpt_moments_alloc(m, &err) ||
      gpt_load_optimizer(m, dir, NULL, NULL, NULL, &err))
    return NULL;
  return m;
}

/* b's losses, validation losses, final weights, moments and token count equal a's (within
 * tol, relative). */
static void same_run(const char *what, const run_log *a, const char *out_a, const run_log *b, const char *out_b,
                     double tol) {
  for (int s = 1; s <= RUN_STEPS; s++) {
    if (fabs(b->loss[s] - a->loss[s]) > tol * a->loss[s])
      TEST_FAIL_("%s: step %d: loss %.9g, %.9g on the CPU", what, s, b->loss[s], a->loss[s]);
    if (isnan(a->val[s]) != isnan(b->val[s]) || (!isnan(a->val[s]) && fabs(b->val[s] - a->val[s]) > tol * a->val[s]))
      TEST_FAIL_("%s: step %d: validation loss %.9g, %.9g on the CPU", what, s, b->val[s], a->val[s]);
  }
  gpt_ckpt_meta ma = {0}, mb = {0};
  gpt_model *x = final_model(out_a, &ma), *y = final_model(out_b, &mb);
  ASSERT(x && y);
  ASSERT(rel_diff(y->params, x->params, x->nparams) <= tol);
  ASSERT(rel_diff(y->m, x->m, x->nparams) <= tol);
  ASSERT(rel_diff(y->v, x->v, x->nparams) <= tol);
  ASSERT_EQ(mb.tokens_seen, ma.tokens_seen);
  ASSERT(fabs(mb.val_loss - ma.val_loss) <= tol * ma.val_loss);
  gpt_ckpt_meta_free(&ma);
  gpt_ckpt_meta_free(&mb);
  gpt_free(x);
  gpt_free(y);
}

TEST(training_on_a_device_and_falling_back_to_the_cpu) {
  char root[] = "/tmp/qv_gptdev_XXXXXX";
  ASSERT(mkdtemp(root));
  char data[600], out[4][600];
  snprintf(data, sizeof data, "%s/corpus", root);
  ASSERT_EQ(mkdir(data, 0755), 0);
  for (int d = 0; d < 12; d++) { /* chunks per file: some are held out for validation */
    char path[700];
    snprintf(path, sizeof path, "%s/doc%02d.txt", data, d);
    FILE *f = fopen(path, "w");
    ASSERT(f);
    for (int i = 0; i < 8; i++)
      fprintf(f, "Paragraph %d of %d. The quiver holds arrows of %s wood; archers count them %s.\n\n", i, d,
              (i + d) % 3 ? "ash" : "yew", d % 2 ? "twice" : "once");
    fclose(f);
  }
  const char *names[4] = {"cpu", "dev", "fail-adamw", "fail-forward"};
  for (int i = 0; i < 4; i++) snprintf(out[i], sizeof out[i], "%s/%s", root, names[i]);
  qv_error err = {0};
  static run_log cpu, dev, fail;
  gpu_settings(1);
  ASSERT_OK(train(data, out[0], NULL, &cpu, &err));
  ASSERT_EQ(cpu.calls, RUN_STEPS);
  ASSERT(!strcmp(cpu.device[1], "cpu"));
  ASSERT(cpu.loss[RUN_STEPS] < cpu.loss[1]);                  /* it trained */
  ASSERT(!isnan(cpu.val[4]) && !isnan(cpu.val[RUN_STEPS])); /* and validated */
  /* Where the AVX2 GEMM runs, the twin's ops give the CPU path's bits (see the first test) */
  double tol = gptk_gemm_available() ? 0 : 1e-4;
  ASSERT_OK(train(data, out[1], gpt_ops_cpu(), &dev, &err));
  ASSERT(!strcmp(dev.device[1], "twin") && !strcmp(dev.device[RUN_STEPS], "twin"));
  same_run("on the twin", &cpu, out[0], &dev, out[1], tol);
  /* a device that fails in step 7's AdamW: the run goes back to step 4's state (the last
   * evaluation) and recomputes steps 5-12 on the CPU */
  int nt = (int)gpt_tensor_count(&(gpt_config){.n_layer = 2});
  ASSERT_OK(train(data, out[2], trigger_ops(6 * nt + 1, 0), &fail, &err));
  ASSERT_EQ(fail.calls, RUN_STEPS + 2); /* steps 5 and 6 reported twice; the failed step 7 not */
  ASSERT(!strcmp(fail.device[4], "twin") && !strcmp(fail.device[5], "cpu"));
  same_run("after a failure in AdamW", &cpu, out[0], &fail, out[2], tol);
  /* ... and one that fails in step 10's second forward (two per step, plus the validation
   * forwards at step 4 and 8): back to step 8 */
  ASSERT_OK(train(data, out[3], trigger_ops(0, 2 * 9 + 2 * 2 + 2), &fail, &err));
  ASSERT_EQ(fail.calls, RUN_STEPS + 1); /* step 9 twice */
  ASSERT(!strcmp(fail.device[8], "twin") && !strcmp(fail.device[9], "cpu"));
  same_run("after a failure in a forward", &cpu, out[0], &fail, out[3], tol);
  /* a stop (Ctrl-C) at step 6 whose copy back fails: step 4's state, the last that came
   * back, is saved instead, and resuming from it ends where the uninterrupted run ends */
  char stopped[700], resumed[700], ck4[800], ck6[800];
  snprintf(stopped, sizeof stopped, "%s/stopped", root);
  snprintf(resumed, sizeof resumed, "%s/resumed", root);
  snprintf(ck4, sizeof ck4, "%s/step-000004", stopped);
  snprintf(ck6, sizeof ck6, "%s/step-000006", stopped);
  static run_log st;
  st.stop_at = 6;
  ASSERT_OK(train(data, stopped, trigger_ops(0, 0), &st, &err));
  ASSERT_EQ(st.calls, 6);
  struct stat sb;
  ASSERT_EQ(stat(ck4, &sb), 0);
  ASSERT(stat(ck6, &sb) != 0);
  st.resume = ck4;
  st.stop_at = 0;
  ASSERT_OK(train(data, resumed, NULL, &st, &err));
  ASSERT_EQ(st.calls, RUN_STEPS - 4);
  for (int s = 1; s <= 4; s++) st.loss[s] = cpu.loss[s], st.val[s] = cpu.val[s]; /* not rerun */
  same_run("resumed from the state saved at a failed stop", &cpu, out[0], &st, resumed, tol);
  /* without fallback, the failure ends the run, naming the step */
  gpu_settings(0);
  char nofb[700];
  snprintf(nofb, sizeof nofb, "%s/nofallback", root);
  ASSERT_STATUS(train(data, nofb, trigger_ops(6 * nt + 1, 0), &fail, &err), QV_EDEVICE);
  ASSERT(strstr(err.msg, "step 7") && strstr(err.msg, "injected failure"));
  gpu_settings(1);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  ASSERT_EQ(system(cmd), 0);
}

/* A device whose ops compute wrong results (GELU as the identity) without reporting it. */
static void identity_gelu(void *ctx, float *out, const float *inp, size_t n) {
  (void)ctx;
  memmove(out, inp, n * sizeof(float));
}

TEST(self_check_passes_the_twin_and_catches_wrong_math) {
  qv_error err = {0};
  ASSERT_OK(gpt_dev_selfcheck(gpt_ops_cpu(), NULL, 1, &err));
  failing = *gpt_ops_cpu();
  failing.gelu_fwd = identity_gelu;
  ASSERT_STATUS(gpt_dev_selfcheck(&failing, NULL, 0, &err), QV_EDEVICE);
  ASSERT(strstr(err.msg, "training steps differ"));
  ASSERT_STATUS(gpt_dev_selfcheck(&failing, NULL, 1, &err), QV_EDEVICE);
  ASSERT(strstr(err.msg, "generation"));
  /* a device that reports a failure fails the check with its reason */
  trigger_ops(0, 1);
  ASSERT_STATUS(gpt_dev_selfcheck(&failing, NULL, 0, &err), QV_EDEVICE);
  ASSERT(strstr(err.msg, "injected failure"));
}

/* ---- gpt_infer on a device ---- */

/* Feeds a and b alike, comparing logits after each feed: a 70-token prompt (two blocks)
 * with every row's logits, 12 tokens one by one, then 70 more (two blocks again). */
static void feed_both(gpt_infer *a, gpt_infer *b, double tol) {
  const gpt_config *c = gpt_infer_config_of(a);
  size_t V = (size_t)c->vocab_size;
  int32_t prompt[70];
  for (int i = 0; i < 70; i++) prompt[i] = (int32_t)((i * 37 + 11) % c->vocab_size);
  float *la = malloc(70 * V * sizeof(float)), *lb = malloc(70 * V * sizeof(float));
  ASSERT(la && lb);
  qv_error err = {0};
  for (int round = 0; round < 2; round++) {
    ASSERT_OK(gpt_infer_feed(a, prompt, 70, la, &err));
    ASSERT_OK(gpt_infer_feed(b, prompt, 70, lb, &err));
    double d = rel_diff(lb, la, 70 * V);
    if (d > tol) TEST_FAIL_("feed of 70 (round %d): logits differ by %g", round, d);
    ASSERT(rel_diff(gpt_infer_logits(b), gpt_infer_logits(a), V) <= tol);
    for (int i = 0; round == 0 && i < 12; i++) {
      int32_t id = (int32_t)((i * 101 + 5) % c->vocab_size);
      ASSERT_OK(gpt_infer_feed(a, &id, 1, NULL, &err));
      ASSERT_OK(gpt_infer_feed(b, &id, 1, NULL, &err));
      d = rel_diff(gpt_infer_logits(b), gpt_infer_logits(a), V);
      if (d > tol) TEST_FAIL_("token %d: logits differ by %g", i, d);
    }
  }
  ASSERT_EQ(gpt_infer_pos(a), gpt_infer_pos(b));
  free(la);
  free(lb);
}

TEST(inference_on_a_device_matches_the_cpu_and_falls_back) {
  gpt_config c = {.n_layer = 2, .n_head = 4, .n_embd = 32, .n_ctx = 160, .vocab_size = 83, .ln_eps = 1e-5f};
  gpt_model *m = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_create(&m, &c, &err));
  gpt_init(m, 9);
  gpt_infer *cpu = NULL, *dev = NULL;
  ASSERT_OK(gpt_infer_create_on(&cpu, m, NULL, NULL, NULL, 1, &err));
  ASSERT_OK(gpt_infer_create_on(&dev, m, gpt_ops_cpu(), NULL, "twin", 1, &err));
  ASSERT(!strcmp(gpt_infer_device(cpu), "cpu") && !strcmp(gpt_infer_device(dev), "twin"));
  /* the twin's GEMMs are not the CPU path's OpenBLAS calls: rounding differs */
  feed_both(cpu, dev, 1e-4);
  ASSERT(!strcmp(gpt_infer_device(dev), "twin"));
  gpt_infer_reset(cpu);
  gpt_infer_reset(dev);
  feed_both(cpu, dev, 1e-4); /* after a reset the cache fills from position 0 again */
  gpt_infer_free(dev);
  /* a device that fails at the status check after `at` successful ones (one at creation,
   * one per block fed): in the first prompt's second block (nothing to replay, but its first
   * block was fed), after 4 single tokens, and in the last feed's second block (a replay
   * of 82 tokens, then that whole feed again) */
  static const int at[] = {2, 1 + 2 + 4, 1 + 2 + 12 + 1};
  for (size_t k = 0; k < sizeof at / sizeof *at; k++) {
    failing = *gpt_ops_cpu();
    failing.status = failing_status;
    checks_left = at[k];
    fail_at_adamw = 0;
    gpt_infer_reset(cpu);
    ASSERT_OK(gpt_infer_create_on(&dev, m, &failing, NULL, "failing", 1, &err));
    feed_both(cpu, dev, 1e-4);
    ASSERT(!strcmp(gpt_infer_device(dev), "cpu"));
    gpt_infer_free(dev);
  }
  /* without fallback the failing feed returns the failure, and nothing of it counts */
  checks_left = 2;
  ASSERT_OK(gpt_infer_create_on(&dev, m, &failing, NULL, "failing", 0, &err));
  int32_t ids[70] = {0};
  ASSERT_STATUS(gpt_infer_feed(dev, ids, 70, NULL, &err), QV_EDEVICE);
  ASSERT(strstr(err.msg, "injected failure"));
  ASSERT_EQ(gpt_infer_pos(dev), 0);
  ASSERT_STATUS(gpt_infer_feed(dev, ids, 1, NULL, &err), QV_EDEVICE); /* latched */
  gpt_infer_free(dev);
  /* a backend without KV-cache attention: generation stays on the CPU */
  failing = *gpt_ops_cpu();
  failing.attention_cached = NULL;
  ASSERT_OK(gpt_infer_create_on(&dev, m, &failing, NULL, "trainonly", 1, &err));
  ASSERT(!strcmp(gpt_infer_device(dev), "cpu"));
  gpt_infer_free(dev);
  gpt_infer_free(cpu);
  gpt_free(m);
}

TEST_MAIN(T(driver_on_cpu_twin_matches_cpu_training), T(driver_rejects_bad_input),
          T(device_failure_is_latched_and_leaves_the_host_copy), T(training_on_a_device_and_falling_back_to_the_cpu),
          T(self_check_passes_the_twin_and_catches_wrong_math), T(inference_on_a_device_matches_the_cpu_and_falls_back))
