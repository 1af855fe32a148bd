/* The GPU's GPT training ops (compute/gpt_ops.h, src/cuda/gpt.cu) against their CPU twin
 * (gpt_ops_cpu), run where a GPU is lent: `make gpu-test`.
 *
 * Each op runs on the device and on the twin from the same random inputs, gradients
 * starting from random values (the ops accumulate), and is compared within
 *   GEMMs (linear, head, attention), FP32:   |d| <= 1e-4 * (1 + |cpu|)
 *   elementwise, LayerNorm, softmax, CE:     |d| <= 1e-4 * (1 + |cpu|)
 *   encoder forward, scale, add:             exact
 *   sumsq (double):                          1e-9 relative
 * then whole training steps of a small GPT-2 (gpt_dev.h) on both: losses and parameters
 * after 3 steps within 1e-3 relative; and two runs on the device give the same bits
 * (the device's reductions have a fixed order). Then generation: KV-cache attention op by
 * op (the caches exact), and gpt_infer on the device against the CPU path (prompt and
 * decode logits within 1e-4). With --self the "device" is the twin
 * itself (ctest runs that): on machines without a GPU it checks only that the harness runs
 * (the data, the driver calls, the bookkeeping) and crashes nowhere, since the two sides
 * are one.
 * Exit status 0 when every comparison holds, 2 when no GPU with the ops is there. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/mem.h"
#include "compute/backend.h"
#include "compute/device.h"
#include "gpt/gpt.h"
#include "gpt/gpt_dev.h"
#include "gpt/infer.h"
#include "harness.h"

typedef struct side {
  const qv_gpt_ops *o;
  void *x;
} side;

static side dev, twin;

/* A device copy of host (n floats, or n int32 when ints) on s. */
static void *up(side *s, const void *host, size_t bytes) {
  void *p = s->o->alloc(s->x, bytes ? bytes : 4);
  if (!p) {
    fprintf(stderr, "alloc of %zu bytes failed\n", bytes);
    exit(2);
  }
  s->o->copy_in(s->x, p, host, bytes);
  return p;
}

static float *down(side *s, const void *p, size_t n) {
  float *h = rand_vec(n, 0);
  s->o->copy_out(s->x, h, p, n * sizeof(float));
  return h;
}

/* One output of an op run on both sides: copies back and compares. */
static void check(const char *what, void *pd, void *pt, size_t n, double tol) {
  float *hd = down(&dev, pd, n), *ht = down(&twin, pt, n);
  compare(what, hd, ht, n, tol);
  qv_aligned_free(hd);
  qv_aligned_free(ht);
}

/* n floats of random values (scale) on both sides: d and t get the same contents. */
static void both(float **d, float **t, size_t n, float scale) {
  float *h = rand_vec(n, scale);
  *d = up(&dev, h, n * sizeof(float));
  *t = up(&twin, h, n * sizeof(float));
  qv_aligned_free(h);
}

static void freeboth(float *d, float *t) {
  dev.o->release(dev.x, d);
  twin.o->release(twin.x, t);
}

static void test_encoder(void) {
  int B = 3, T = 37, C = 48, V = 101;
  int32_t ids[3 * 37];
  for (int i = 0; i < B * T; i++) ids[i] = (i * 7919) % V;
  ids[5] = ids[40] = ids[77] = 3; /* rows sharing a token add into one dwte row */
  int32_t *id = up(&dev, ids, sizeof ids), *it = up(&twin, ids, sizeof ids);
  float *wte_d, *wte_t, *wpe_d, *wpe_t, *out_d, *out_t, *dout_d, *dout_t;
  both(&wte_d, &wte_t, (size_t)V * C, 1);
  both(&wpe_d, &wpe_t, (size_t)T * C, 1);
  both(&out_d, &out_t, (size_t)B * T * C, 0);
  both(&dout_d, &dout_t, (size_t)B * T * C, 1);
  dev.o->encoder_fwd(dev.x, out_d, id, wte_d, wpe_d, B, T, C);
  twin.o->encoder_fwd(twin.x, out_t, it, wte_t, wpe_t, B, T, C);
  check("encoder forward", out_d, out_t, (size_t)B * T * C, 0);
  dev.o->encoder_bwd(dev.x, wte_d, wpe_d, dout_d, id, B, T, C); /* += into the tables */
  twin.o->encoder_bwd(twin.x, wte_t, wpe_t, dout_t, it, B, T, C);
  check("encoder backward dwte", wte_d, wte_t, (size_t)V * C, 1e-6);
  check("encoder backward dwpe", wpe_d, wpe_t, (size_t)T * C, 1e-6);
  freeboth(wte_d, wte_t), freeboth(wpe_d, wpe_t), freeboth(out_d, out_t), freeboth(dout_d, dout_t);
  dev.o->release(dev.x, id);
  twin.o->release(twin.x, it);
}

static void test_layernorm(void) {
  int N = 301, C = 96;
  size_t n = (size_t)N * C;
  float *inp_d, *inp_t, *w_d, *w_t, *b_d, *b_t, *out_d, *out_t, *mean_d, *mean_t, *rstd_d, *rstd_t;
  float *dout_d, *dout_t, *din_d, *din_t, *dw_d, *dw_t, *db_d, *db_t;
  both(&inp_d, &inp_t, n, 3);
  both(&w_d, &w_t, C, 1);
  both(&b_d, &b_t, C, 1);
  both(&out_d, &out_t, n, 0);
  both(&mean_d, &mean_t, N, 0);
  both(&rstd_d, &rstd_t, N, 0);
  both(&dout_d, &dout_t, n, 1);
  both(&din_d, &din_t, n, 1);
  both(&dw_d, &dw_t, C, 1);
  both(&db_d, &db_t, C, 1);
  dev.o->layernorm_fwd(dev.x, out_d, mean_d, rstd_d, inp_d, w_d, b_d, N, C, 1e-5f);
  twin.o->layernorm_fwd(twin.x, out_t, mean_t, rstd_t, inp_t, w_t, b_t, N, C, 1e-5f);
  check("layernorm forward", out_d, out_t, n, 1e-4);
  check("layernorm forward mean", mean_d, mean_t, N, 1e-4);
  check("layernorm forward rstd", rstd_d, rstd_t, N, 1e-4);
  dev.o->layernorm_bwd(dev.x, din_d, dw_d, db_d, dout_d, inp_d, w_d, mean_d, rstd_d, N, C);
  twin.o->layernorm_bwd(twin.x, din_t, dw_t, db_t, dout_t, inp_t, w_t, mean_t, rstd_t, N, C);
  check("layernorm backward dinp", din_d, din_t, n, 1e-4);
  check("layernorm backward dw", dw_d, dw_t, C, 1e-4);
  check("layernorm backward db", db_d, db_t, C, 1e-4);
  float *all[][2] = {{inp_d, inp_t}, {w_d, w_t},       {b_d, b_t},       {out_d, out_t}, {mean_d, mean_t},
                     {rstd_d, rstd_t}, {dout_d, dout_t}, {din_d, din_t}, {dw_d, dw_t},   {db_d, db_t}};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) freeboth(all[i][0], all[i][1]);
}

static void test_matmul(void) {
  static const int shapes[][3] = {{256, 128, 384}, {256, 512, 128}, {37, 65, 19}, {1, 128, 2048}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    int N = shapes[s][0], IC = shapes[s][1], OC = shapes[s][2];
    for (int bias = 0; bias < 2; bias++) {
      float *in_d, *in_t, *w_d, *w_t, *b_d = NULL, *b_t = NULL, *out_d, *out_t, *dout_d, *dout_t;
      float *din_d, *din_t, *dw_d, *dw_t, *db_d = NULL, *db_t = NULL;
      both(&in_d, &in_t, (size_t)N * IC, 1);
      both(&w_d, &w_t, (size_t)IC * OC, 0.1f);
      if (bias) both(&b_d, &b_t, (size_t)OC, 0.5f);
      both(&out_d, &out_t, (size_t)N * OC, 0);
      both(&dout_d, &dout_t, (size_t)N * OC, 1);
      both(&din_d, &din_t, (size_t)N * IC, 1);
      both(&dw_d, &dw_t, (size_t)IC * OC, 1);
      if (bias) both(&db_d, &db_t, (size_t)OC, 1);
      char what[96];
      dev.o->matmul_fwd(dev.x, out_d, in_d, w_d, b_d, N, IC, OC);
      twin.o->matmul_fwd(twin.x, out_t, in_t, w_t, b_t, N, IC, OC);
      snprintf(what, sizeof what, "matmul forward %d x %d x %d%s", N, IC, OC, bias ? " + bias" : "");
      check(what, out_d, out_t, (size_t)N * OC, 1e-4);
      dev.o->matmul_bwd(dev.x, din_d, dw_d, db_d, dout_d, in_d, w_d, N, IC, OC);
      twin.o->matmul_bwd(twin.x, din_t, dw_t, db_t, dout_t, in_t, w_t, N, IC, OC);
      snprintf(what, sizeof what, "matmul backward dinp %d x %d x %d", N, IC, OC);
      check(what, din_d, din_t, (size_t)N * IC, 1e-4);
      snprintf(what, sizeof what, "matmul backward dw %d x %d x %d", N, IC, OC);
      check(what, dw_d, dw_t, (size_t)IC * OC, 1e-4);
      if (bias) {
        snprintf(what, sizeof what, "matmul backward db %d x %d x %d", N, IC, OC);
        check(what, db_d, db_t, (size_t)OC, 1e-4);
        freeboth(b_d, b_t), freeboth(db_d, db_t);
      }
      freeboth(in_d, in_t), freeboth(w_d, w_t), freeboth(out_d, out_t), freeboth(dout_d, dout_t);
      freeboth(din_d, din_t), freeboth(dw_d, dw_t);
    }
  }
}

static void test_head(void) {
  int N = 130, V = 1003, C = 64;
  float *x_d, *x_t, *wte_d, *wte_t, *lo_d, *lo_t, *dl_d, *dl_t, *dx_d, *dx_t, *dw_d, *dw_t;
  both(&x_d, &x_t, (size_t)N * C, 1);
  both(&wte_d, &wte_t, (size_t)V * C, 0.1f);
  both(&lo_d, &lo_t, (size_t)N * V, 0);
  both(&dl_d, &dl_t, (size_t)N * V, 0.01f);
  both(&dx_d, &dx_t, (size_t)N * C, 1);
  both(&dw_d, &dw_t, (size_t)V * C, 1);
  dev.o->head_fwd(dev.x, lo_d, x_d, wte_d, N, V, C);
  twin.o->head_fwd(twin.x, lo_t, x_t, wte_t, N, V, C);
  check("head forward (tied wte)", lo_d, lo_t, (size_t)N * V, 1e-4);
  dev.o->head_bwd(dev.x, dx_d, dw_d, dl_d, x_d, wte_d, N, V, C);
  twin.o->head_bwd(twin.x, dx_t, dw_t, dl_t, x_t, wte_t, N, V, C);
  check("head backward dx", dx_d, dx_t, (size_t)N * C, 1e-4);
  check("head backward dwte", dw_d, dw_t, (size_t)V * C, 1e-4);
  freeboth(x_d, x_t), freeboth(wte_d, wte_t), freeboth(lo_d, lo_t), freeboth(dl_d, dl_t);
  freeboth(dx_d, dx_t), freeboth(dw_d, dw_t);
}

static void test_attention(void) {
  static const int shapes[][4] = {{2, 61, 64, 4}, {1, 1, 32, 2}, {3, 128, 96, 3}}; /* B, T, C, H */
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    int B = shapes[s][0], T = shapes[s][1], C = shapes[s][2], H = shapes[s][3];
    size_t n = (size_t)B * T * C, tt = (size_t)B * H * T * T;
    float *qkv_d, *qkv_t, *out_d, *out_t, *att_d, *att_t, *dout_d, *dout_t, *dqkv_d, *dqkv_t, *sc_d, *sc_t;
    both(&qkv_d, &qkv_t, 3 * n, 1);
    both(&out_d, &out_t, n, 0);
    both(&att_d, &att_t, tt, 0);
    both(&dout_d, &dout_t, n, 1);
    both(&dqkv_d, &dqkv_t, 3 * n, 1);
    both(&sc_d, &sc_t, tt, 0);
    char what[96];
    dev.o->attention_fwd(dev.x, out_d, att_d, qkv_d, B, T, C, H);
    twin.o->attention_fwd(twin.x, out_t, att_t, qkv_t, B, T, C, H);
    snprintf(what, sizeof what, "attention forward B=%d T=%d C=%d H=%d", B, T, C, H);
    check(what, out_d, out_t, n, 1e-4);
    snprintf(what, sizeof what, "attention probabilities T=%d (causal)", T);
    check(what, att_d, att_t, tt, 1e-5);
    dev.o->attention_bwd(dev.x, dqkv_d, sc_d, dout_d, qkv_d, att_d, B, T, C, H);
    twin.o->attention_bwd(twin.x, dqkv_t, sc_t, dout_t, qkv_t, att_t, B, T, C, H);
    snprintf(what, sizeof what, "attention backward dqkv T=%d", T);
    check(what, dqkv_d, dqkv_t, 3 * n, 1e-4);
    freeboth(qkv_d, qkv_t), freeboth(out_d, out_t), freeboth(att_d, att_t), freeboth(dout_d, dout_t);
    freeboth(dqkv_d, dqkv_t), freeboth(sc_d, sc_t);
  }
}

/* KV-cache attention: a 70-row prefill, then single rows, the caches compared too. */
static void test_attention_cached(void) {
  if (!dev.o->attention_cached) {
    checks++, failures++;
    printf("FAIL the device has no attention_cached (generation would stay on the CPU)\n");
    return;
  }
  int T = 96, C = 64, H = 4;
  float *kd, *kt, *vd, *vt, *qd, *qt, *od, *ot;
  both(&kd, &kt, (size_t)T * C, 0);
  both(&vd, &vt, (size_t)T * C, 0);
  both(&qd, &qt, (size_t)70 * 3 * C, 1);
  both(&od, &ot, (size_t)70 * C, 0);
  int steps[][2] = {{0, 70}, {70, 1}, {71, 1}, {72, 24}}; /* pos, n */
  for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
    int pos = steps[i][0], n = steps[i][1];
    float *h = rand_vec((size_t)n * 3 * C, 1);
    dev.o->copy_in(dev.x, qd, h, (size_t)n * 3 * C * sizeof(float));
    twin.o->copy_in(twin.x, qt, h, (size_t)n * 3 * C * sizeof(float));
    qv_aligned_free(h);
    dev.o->attention_cached(dev.x, od, kd, vd, qd, pos, n, C, H);
    twin.o->attention_cached(twin.x, ot, kt, vt, qt, pos, n, C, H);
    char what[96];
    snprintf(what, sizeof what, "attention over the KV cache pos=%d n=%d", pos, n);
    check(what, od, ot, (size_t)n * C, 1e-4);
  }
  check("KV cache keys", kd, kt, (size_t)T * C, 0);
  check("KV cache values", vd, vt, (size_t)T * C, 0);
  freeboth(kd, kt), freeboth(vd, vt), freeboth(qd, qt), freeboth(od, ot);
}

/* gpt_infer on the device against the CPU path: a 100-token prompt (two blocks), every
 * row's logits, then 20 tokens one at a time. */
static void test_generation(void) {
  gpt_config c = {.n_layer = 2, .n_head = 4, .n_embd = 64, .n_ctx = 128, .vocab_size = 300, .ln_eps = 1e-5f};
  gpt_model *m = NULL;
  qv_error err = {0};
  if (gpt_create(&m, &c, &err)) exit(2);
  gpt_init(m, 8);
  gpt_infer *gd = NULL, *gc = NULL;
  /* no fallback: a device failure must show, not be papered over by the CPU */
  if (gpt_infer_create_on(&gd, m, dev.o, dev.x, "device", 0, &err) ||
      gpt_infer_create_on(&gc, m, NULL, NULL, NULL, 1, &err)) {
    fprintf(stderr, "gpt_infer_create_on: %s\n", err.msg);
    exit(2);
  }
  checks++;
  if (strcmp(gpt_infer_device(gd), "device")) {
    failures++;
    printf("FAIL generation did not take the device: %s\n", gpt_infer_device(gd));
  }
  int32_t ids[100];
  for (int i = 0; i < 100; i++) ids[i] = (i * 31 + 7) % 300;
  float *ld = rand_vec(100 * 300, 0), *lc = rand_vec(100 * 300, 0);
  if (gpt_infer_feed(gd, ids, 100, ld, &err) || gpt_infer_feed(gc, ids, 100, lc, &err)) {
    fprintf(stderr, "feed: %s\n", err.msg);
    exit(1);
  }
  compare("generation: prompt logits (100 rows)", ld, lc, 100 * 300, 1e-4);
  float worst[20], zero[20] = {0};
  for (int i = 0; i < 20; i++) {
    int32_t id = (i * 17 + 3) % 300;
    if (gpt_infer_feed(gd, &id, 1, NULL, &err) || gpt_infer_feed(gc, &id, 1, NULL, &err)) {
      fprintf(stderr, "feed: %s\n", err.msg);
      exit(1);
    }
    const float *a = gpt_infer_logits(gd), *b = gpt_infer_logits(gc);
    worst[i] = 0;
    for (int v = 0; v < 300; v++) {
      float d = fabsf(a[v] - b[v]) / (1 + fabsf(b[v]));
      if (d > worst[i]) worst[i] = d;
    }
  }
  compare("generation: 20 decode steps' worst logit error", worst, zero, 20, 1e-4);
  checks++;
  if (strcmp(gpt_infer_device(gd), "device")) {
    failures++;
    printf("FAIL generation fell back to the CPU\n");
  }
  qv_aligned_free(ld), qv_aligned_free(lc);
  gpt_infer_free(gd);
  gpt_infer_free(gc);
  gpt_free(m);
}

static void test_pointwise(void) {
  size_t n = 100003;
  float *x_d, *x_t, *y_d, *y_t, *d_d, *d_t, *g_d, *g_t;
  both(&x_d, &x_t, n, 4);
  both(&y_d, &y_t, n, 0);
  both(&d_d, &d_t, n, 1);
  both(&g_d, &g_t, n, 1);
  dev.o->gelu_fwd(dev.x, y_d, x_d, n);
  twin.o->gelu_fwd(twin.x, y_t, x_t, n);
  check("gelu forward (tanh)", y_d, y_t, n, 1e-4);
  dev.o->gelu_bwd(dev.x, g_d, x_d, d_d, n);
  twin.o->gelu_bwd(twin.x, g_t, x_t, d_t, n);
  check("gelu backward", g_d, g_t, n, 1e-4);
  dev.o->add(dev.x, y_d, y_d, x_d, n); /* aliasing out and a */
  twin.o->add(twin.x, y_t, y_t, x_t, n);
  check("add (in place)", y_d, y_t, n, 0);
  dev.o->scale(dev.x, y_d, n, 0.37f);
  twin.o->scale(twin.x, y_t, n, 0.37f);
  check("scale", y_d, y_t, n, 0);
  double sd = dev.o->sumsq(dev.x, x_d, n), st = twin.o->sumsq(twin.x, x_t, n);
  double rel = fabs(sd - st) / st;
  checks++;
  failures += !(rel <= 1e-9);
  printf("%-4s %-44s rel err %.3g (tolerance 1e-09)\n", rel <= 1e-9 ? "ok" : "FAIL", "sumsq (double)", rel);
  float *p_d, *p_t, *m_d, *m_t, *v_d, *v_t;
  both(&p_d, &p_t, n, 1);
  both(&m_d, &m_t, n, 0.01f);
  float *hv = rand_vec(n, 0.01f);
  for (size_t i = 0; i < n; i++) hv[i] *= hv[i]; /* second moments are >= 0 */
  v_d = up(&dev, hv, n * sizeof(float));
  v_t = up(&twin, hv, n * sizeof(float));
  qv_aligned_free(hv);
  dev.o->adamw(dev.x, p_d, d_d, m_d, v_d, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.271f, 0.142625f);
  twin.o->adamw(twin.x, p_t, d_t, m_t, v_t, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.271f, 0.142625f);
  check("adamw parameters", p_d, p_t, n, 1e-6);
  check("adamw first moments", m_d, m_t, n, 1e-6);
  check("adamw second moments", v_d, v_t, n, 1e-6);
  freeboth(x_d, x_t), freeboth(y_d, y_t), freeboth(d_d, d_t), freeboth(g_d, g_t);
  freeboth(p_d, p_t), freeboth(m_d, m_t), freeboth(v_d, v_t);
}

static void test_crossentropy(void) {
  int N = 77, V = 50257; /* GPT-2's vocabulary: rows longer than any block */
  size_t n = (size_t)N * V;
  int32_t tg[77];
  for (int i = 0; i < N; i++) tg[i] = i % 9 == 4 ? -1 : (int32_t)((i * 104729) % V);
  int32_t *tg_d = up(&dev, tg, sizeof tg), *tg_t = up(&twin, tg, sizeof tg);
  float *lo_d, *lo_t, *l_d, *l_t, *dl_d, *dl_t;
  both(&lo_d, &lo_t, n, 5);
  both(&l_d, &l_t, N, 0);
  both(&dl_d, &dl_t, n, 1e-3f);
  /* probs written over the logits, as the driver does */
  dev.o->crossentropy_fwd(dev.x, lo_d, l_d, lo_d, tg_d, N, V);
  twin.o->crossentropy_fwd(twin.x, lo_t, l_t, lo_t, tg_t, N, V);
  check("cross-entropy probabilities (in place)", lo_d, lo_t, n, 1e-4);
  check("cross-entropy losses", l_d, l_t, N, 1e-4);
  dev.o->crossentropy_bwd(dev.x, dl_d, lo_d, tg_d, N, V, 0.125f);
  twin.o->crossentropy_bwd(twin.x, dl_t, lo_t, tg_t, N, V, 0.125f);
  check("cross-entropy backward", dl_d, dl_t, n, 1e-4);
  freeboth(lo_d, lo_t), freeboth(l_d, l_t), freeboth(dl_d, dl_t);
  dev.o->release(dev.x, tg_d);
  twin.o->release(twin.x, tg_t);
}

/* Three AdamW steps of a small GPT-2 through gpt_dev on each side (runs twice on the device:
 * the second run must give the same bits). */
static void steps(side *s, gpt_model *m, float *losses, float *params, float *grads1) {
  gpt_dev *d = NULL;
  qv_error err = {0};
  if (gpt_dev_create(&d, s->o, s->x, m, 4, 64, &err)) {
    fprintf(stderr, "gpt_dev_create: %s\n", err.msg);
    exit(2);
  }
  gpt_rng r;
  gpt_rng_seed(&r, 11);
  int32_t inp[4 * 64], tgt[4 * 64];
  gpt_adamw o = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
  for (int step = 0; step < 3; step++) {
    for (int i = 0; i < 4 * 64; i++) {
      inp[i] = (int32_t)(gpt_rng_u64(&r) % (uint64_t)m->cfg.vocab_size);
      tgt[i] = (int32_t)(gpt_rng_u64(&r) % (uint64_t)m->cfg.vocab_size);
    }
    gpt_dev_zero_grad(d);
    if (gpt_dev_forward(d, inp, tgt, 4, 64, &losses[step], &err)) {
      fprintf(stderr, "forward: %s\n", err.msg);
      exit(1);
    }
    gpt_dev_backward(d, 1.0f);
    if (step == 0 && gpt_dev_grads(d, grads1, &err)) {
      fprintf(stderr, "gradients: %s\n", err.msg);
      exit(1);
    }
    gpt_dev_clip_grad(d, 1.0f);
    gpt_dev_adamw_step(d, &o, step + 1);
  }
  gpt_model *back = NULL;
  if (gpt_create(&back, &m->cfg, &err) || gpt_dev_download(d, back, &err)) {
    fprintf(stderr, "download: %s\n", err.msg);
    exit(1);
  }
  memcpy(params, back->params, m->nparams * sizeof(float));
  gpt_free(back);
  gpt_dev_free(d);
}

static void test_training_steps(void) {
  gpt_config c = {.n_layer = 2, .n_head = 4, .n_embd = 64, .n_ctx = 64, .vocab_size = 300, .ln_eps = 1e-5f};
  gpt_model *m = NULL;
  qv_error err = {0};
  if (gpt_create(&m, &c, &err)) exit(2);
  gpt_init(m, 5);
  float ld[3], ld2[3], lt[3];
  float *pd = rand_vec(m->nparams, 0), *pd2 = rand_vec(m->nparams, 0), *pt = rand_vec(m->nparams, 0);
  float *gd = rand_vec(m->nparams, 0), *gd2 = rand_vec(m->nparams, 0), *gt = rand_vec(m->nparams, 0);
  steps(&dev, m, ld, pd, gd);
  steps(&dev, m, ld2, pd2, gd2);
  steps(&twin, m, lt, pt, gt);
  /* the first step's gradients before clipping: AdamW's early updates are ~lr x sign(g),
   * so the weights alone would hide a gradient off by a constant factor */
  compare("training step 1: gradients", gd, gt, m->nparams, 1e-4);
  compare("3 training steps: losses", ld, lt, 3, 1e-3);
  compare("3 training steps: parameters", pd, pt, m->nparams, 1e-3);
  compare("3 training steps on the device twice: losses", ld2, ld, 3, 0);
  compare("3 training steps on the device twice: parameters", pd2, pd, m->nparams, 0);
  qv_aligned_free(pd), qv_aligned_free(pd2), qv_aligned_free(pt);
  qv_aligned_free(gd), qv_aligned_free(gd2), qv_aligned_free(gt);
  gpt_free(m);
}

int main(int argc, char **argv) {
  int self = argc > 1 && !strcmp(argv[1], "--self");
  twin = (side){gpt_ops_cpu(), NULL};
  dev = twin;
  if (!self) {
    const qv_backend *g = harness_gpu("qv_gpu_gpt_test");
    if (!g->gpt) {
      fprintf(stderr, "qv_gpu_gpt_test: the %s backend has no GPT ops\n", g->name);
      return 2;
    }
    dev = (side){g->gpt, g->ctx};
  }
  test_encoder();
  test_layernorm();
  test_matmul();
  test_head();
  test_attention();
  test_pointwise();
  test_crossentropy();
  test_training_steps();
  test_attention_cached();
  test_generation();
  char msg[256];
  qv_status st = dev.o->status(dev.x, msg, sizeof msg);
  checks++;
  if (st) failures++;
  printf("%-4s no device error recorded (%s%s%s)\n", st ? "FAIL" : "ok", qv_strerror(st), st ? ": " : "",
         st ? msg : "");
  printf("%d of %d comparisons hold\n", checks - failures, checks);
  return failures ? 1 : 0;
}
