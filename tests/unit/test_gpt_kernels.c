/* gpt/kernels.c: the GEMM against a plain fused-multiply-add loop, bit for bit, on every
 * operand layout training uses, edge tiles, K across blocks, bias and accumulate modes, and
 * any split of the output; the softmax against a double-precision reference. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpt/gpt.h"
#include "gpt/kernels.h"
#include "test.h"

static void fill(float *x, size_t n, gpt_rng *r) {
  for (size_t i = 0; i < n; i++) x[i] = gpt_rng_normal(r);
}

/* The contract of kernels.h: per element, start from init and add the terms in k order,
 * one fmaf each. */
static void reference(float *c, size_t ldc, const float *a, size_t ars, size_t aks, const float *b, size_t bks,
                      size_t bjs, int M, int N, int K, int acc, const float *bias) {
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      float s = acc ? c[(size_t)i * ldc + j] : bias ? bias[j] : 0.0f;
      for (int k = 0; k < K; k++) s = fmaf(a[i * ars + k * aks], b[k * bks + j * bjs], s);
      c[(size_t)i * ldc + j] = s;
    }
}

/* layout 0: A (M, K) row-major, B (K, N) row-major; 1: B given as (N, K) (transposed);
 * 2: A given as (K, M) (transposed), B (K, N). c has 3 spare columns (ldc = N + 3). The
 * product runs over k in [k0, K) (A's columns and B's rows from k0), through gptk_gemm, or
 * through gptk_pack of all K rows and gptk_gemm_packed from row k0 (packed). */
static int check_gemm(int layout, int M, int N, int K, int k0, int acc, int with_bias, int packed, gpt_rng *r) {
  size_t ldc = (size_t)N + 3;
  float *a = malloc(sizeof(float) * ((size_t)M * K + 1)), *b = malloc(sizeof(float) * ((size_t)K * N + 1));
  float *bias = malloc(sizeof(float) * (size_t)N + 4);
  float *c = malloc(sizeof(float) * ((size_t)M * ldc + 1)), *want = malloc(sizeof(float) * ((size_t)M * ldc + 1));
  float *bp = aligned_alloc(64, (sizeof(float) * gptk_packed_floats(K, N) + 64) / 64 * 64);
  if (!a || !b || !bias || !c || !want || !bp) return -1;
  fill(a, (size_t)M * K, r);
  fill(b, (size_t)K * N, r);
  fill(bias, (size_t)N, r);
  fill(c, (size_t)M * ldc, r);
  memcpy(want, c, sizeof(float) * (size_t)M * ldc);
  size_t ars = (size_t)K, aks = 1, bks = (size_t)N, bjs = 1;
  if (layout == 1) bks = 1, bjs = (size_t)K;
  if (layout == 2) ars = 1, aks = (size_t)M;
  const float *bi = with_bias ? bias : NULL, *a0 = a + (size_t)k0 * aks;
  reference(want, ldc, a0, ars, aks, b + (size_t)k0 * bks, bks, bjs, M, N, K - k0, acc, bi);
  if (packed) {
    gptk_pack(bp, b, bks, bjs, K, N);
    gptk_gemm_packed(c, ldc, a0, ars, aks, bp + (size_t)k0 * GPTK_NR, (size_t)K * GPTK_NR, M, N, K - k0, acc, bi);
  } else {
    gptk_gemm(c, ldc, a0, ars, aks, b + (size_t)k0 * bks, bks, bjs, M, N, K - k0, acc, bi);
  }
  int bad = memcmp(c, want, sizeof(float) * (size_t)M * ldc) != 0;
  free(a), free(b), free(bias), free(c), free(want), free(bp);
  return bad;
}

static int check(int layout, int M, int N, int K, int acc, int with_bias, gpt_rng *r) {
  return check_gemm(layout, M, N, K, 0, acc, with_bias, 0, r);
}

static int check_packed(int layout, int M, int N, int K, int k0, int acc, int with_bias, gpt_rng *r) {
  return check_gemm(layout, M, N, K, k0, acc, with_bias, 1, r);
}

TEST(gemm_matches_fma_loop_bit_for_bit) {
  gpt_rng r;
  gpt_rng_seed(&r, 7);
  /* edge tiles in both directions, K of 0, 1, one block, and across blocks of 256 */
  static const int Ms[] = {1, 5, 6, 7, 13, 200};
  static const int Ns[] = {1, 15, 16, 17, 40};
  static const int Ks[] = {0, 1, 8, 31, 256, 300, 520};
  for (int layout = 0; layout < 3; layout++)
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
      for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
          for (int mode = 0; mode < 3; mode++) { /* accumulate, bias, zeros */
            int bad = check(layout, Ms[mi], Ns[ni], Ks[ki], mode == 0, mode == 1, &r);
            if (bad)
              TEST_FAIL_("layout %d M %d N %d K %d mode %d: %s", layout, Ms[mi], Ns[ni], Ks[ki], mode,
                         bad < 0 ? "out of memory" : "differs from the fmaf loop");
          }
}

TEST(gemm_training_shapes_and_splits_agree) {
  /* the logits' shape (a transposed 2048 x 128 weight): whole, and in row and column slices
   * as the pool cuts it, must give the same bits */
  enum { M = 96, N = 2048, K = 128 };
  gpt_rng r;
  gpt_rng_seed(&r, 8);
  float *a = malloc(sizeof(float) * M * K), *w = malloc(sizeof(float) * N * K);
  float *c1 = malloc(sizeof(float) * M * N), *c2 = malloc(sizeof(float) * M * N);
  ASSERT(a && w && c1 && c2);
  fill(a, (size_t)M * K, &r);
  fill(w, (size_t)N * K, &r);
  gptk_gemm(c1, N, a, K, 1, w, 1, K, M, N, K, 0, NULL);
  /* rows 0..37, 37..96 (not multiples of the 6-row tile), then columns in two */
  gptk_gemm(c2, N, a, K, 1, w, 1, K, 37, N, K, 0, NULL);
  gptk_gemm(c2 + (size_t)37 * N, N, a + (size_t)37 * K, K, 1, w, 1, K, M - 37, 1000, K, 0, NULL);
  gptk_gemm(c2 + (size_t)37 * N + 1000, N, a + (size_t)37 * K, K, 1, w + (size_t)1000 * K, 1, K, M - 37,
            N - 1000, K, 0, NULL);
  int same = memcmp(c1, c2, sizeof(float) * M * N) == 0;
  /* and the result is a matrix product: spot-check against double */
  double worst = 0;
  for (int i = 0; i < M; i += 7)
    for (int j = 0; j < N; j += 13) {
      double s = 0;
      for (int k = 0; k < K; k++) s += (double)a[i * K + k] * w[(size_t)j * K + k];
      worst = fmax(worst, fabs(s - c1[(size_t)i * N + j]));
    }
  free(a), free(w), free(c1), free(c2);
  ASSERT(same);
  ASSERT(worst < 1e-4);
}

TEST(softmax_matches_double_and_returns_log_sum_exp) {
  gpt_rng r;
  gpt_rng_seed(&r, 9);
  static const int ns[] = {1, 7, 8, 9, 100, 2048};
  float in[2048], out[2048];
  for (size_t t = 0; t < sizeof ns / sizeof *ns; t++) {
    int n = ns[t];
    for (int i = 0; i < n; i++) in[i] = 8.0f * gpt_rng_normal(&r);
    if (n > 9) in[3] = -1e30f; /* a masked entry: probability 0 */
    double maxv = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) maxv = fmax(maxv, in[i]);
    for (int i = 0; i < n; i++) sum += exp((double)in[i] - maxv);
    float lse = gptk_softmax(out, in, n, 1.0f);
    ASSERT_NEAR(lse, maxv + log(sum), 1e-5 * fmax(1.0, fabs(maxv)));
    double total = 0;
    for (int i = 0; i < n; i++) {
      double want = exp((double)in[i] - maxv) / sum;
      ASSERT_NEAR(out[i], want, 1e-6 + 2e-6 * want);
      total += out[i];
    }
    ASSERT_NEAR(total, 1.0, 1e-5);
    if (n > 9) ASSERT_EQ(out[3] == 0.0f, 1);
    /* in place gives the same bits */
    float again[2048];
    memcpy(again, in, sizeof(float) * (size_t)n);
    gptk_softmax(again, again, n, 1.0f);
    ASSERT_EQ(memcmp(again, out, sizeof(float) * (size_t)n), 0);
  }
}

/* Attention at a length that crosses the causal row blocks (gpt.c's ATT_RB is 24), with
 * head size 8: the forward against a double-precision reference, the backward against
 * central differences along random directions. */
enum { AB = 2, AT = 61, AC = 16, AH = 2, AHS = AC / AH };
typedef struct att_big {
  float qkv[AB * AT * 3 * AC], out[AB * AT * AC], R[AB * AT * AC], att[AB * AH * AT * AT];
} att_big;

static double att_big_loss(att_big *x) {
  gpt_attention_forward(NULL, x->out, NULL, x->att, x->qkv, AB, AT, AC, AH);
  double s = 0;
  for (size_t i = 0; i < sizeof x->out / sizeof *x->out; i++) s += (double)x->out[i] * x->R[i];
  return s;
}

TEST(attention_across_causal_blocks) {
  static att_big x;
  static float dqkv[AB * AT * 3 * AC], scratch[AB * AH * AT * AT], u[AB * AT * 3 * AC];
  gpt_rng r;
  gpt_rng_seed(&r, 10);
  fill(x.qkv, sizeof x.qkv / 4, &r);
  fill(x.R, sizeof x.R / 4, &r);
  att_big_loss(&x);
  double worst = 0;
  for (int b = 0; b < AB; b++)
    for (int h = 0; h < AH; h++)
      for (int t = 0; t < AT; t++) {
        const float *q = x.qkv + ((size_t)b * AT + t) * 3 * AC + h * AHS;
        double sc[AT], mx = -INFINITY, sum = 0;
        for (int j = 0; j <= t; j++) {
          const float *k = x.qkv + ((size_t)b * AT + j) * 3 * AC + AC + h * AHS;
          sc[j] = 0;
          for (int i = 0; i < AHS; i++) sc[j] += (double)q[i] * k[i];
          sc[j] /= sqrt((double)AHS);
          mx = fmax(mx, sc[j]);
        }
        for (int j = 0; j <= t; j++) sum += (sc[j] = exp(sc[j] - mx));
        for (int i = 0; i < AHS; i++) {
          double o = 0;
          for (int j = 0; j <= t; j++) o += sc[j] / sum * x.qkv[((size_t)b * AT + j) * 3 * AC + 2 * AC + h * AHS + i];
          worst = fmax(worst, fabs(o - x.out[((size_t)b * AT + t) * AC + h * AHS + i]));
        }
        for (int j = t + 1; j < AT; j++) ASSERT_EQ(x.att[(((size_t)b * AH + h) * AT + t) * AT + j] == 0.0f, 1);
      }
  ASSERT(worst < 1e-5);
  /* the backward adds into dqkv: start from ones and subtract them after */
  for (size_t i = 0; i < sizeof dqkv / 4; i++) dqkv[i] = 1.0f;
  gpt_attention_backward(NULL, dqkv, scratch, x.R, x.qkv, x.att, AB, AT, AC, AH);
  for (size_t i = 0; i < sizeof dqkv / 4; i++) dqkv[i] -= 1.0f;
  for (int dir = 0; dir < 6; dir++) {
    fill(u, sizeof u / 4, &r);
    const float h = 1e-2f;
    double ana = 0;
    for (size_t i = 0; i < sizeof u / 4; i++) ana += (double)dqkv[i] * u[i];
    for (size_t i = 0; i < sizeof u / 4; i++) x.qkv[i] += h * u[i];
    double lp = att_big_loss(&x);
    for (size_t i = 0; i < sizeof u / 4; i++) x.qkv[i] -= 2 * h * u[i];
    double lm = att_big_loss(&x);
    for (size_t i = 0; i < sizeof u / 4; i++) x.qkv[i] += h * u[i];
    double num = (lp - lm) / (2 * h);
    ASSERT_NEAR(ana, num, 2e-3 * fmax(1.0, fabs(num)));
  }
}

/* gptk_pack + gptk_gemm_packed against the fmaf loop, bit for bit, on the three layouts, and
 * on a row range [k0, K) of a packed B (attention's dk and dv read one from k0 = i0). */
TEST(packed_gemm_matches_fma_loop_bit_for_bit) {
  gpt_rng r;
  gpt_rng_seed(&r, 11);
  static const int Ms[] = {1, 7, 200};
  static const int Ns[] = {1, 16, 40};
  static const int Ks[] = {0, 8, 31, 300};
  for (int layout = 0; layout < 3; layout++)
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
      for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
          for (int mode = 0; mode < 3; mode++) { /* accumulate, bias, zeros */
            int K = Ks[ki], k0 = mode == 0 && K > 8 ? K / 3 : 0;
            int bad = check_packed(layout, Ms[mi], Ns[ni], K, k0, mode == 0, mode == 1, &r);
            if (bad)
              TEST_FAIL_("layout %d M %d N %d K %d from %d mode %d: %s", layout, Ms[mi], Ns[ni], K, k0, mode,
                         bad < 0 ? "out of memory" : "differs from the fmaf loop");
          }
}

/* A stored by columns 1,024 or more floats apart is packed by the kernel (kernels.c
 * PACKA_MIN): the same bits as the fmaf loop, plain and with B packed, edge rows and tiles. */
TEST(gemm_far_apart_columns_of_a_bit_for_bit) {
  gpt_rng r;
  gpt_rng_seed(&r, 12);
  static const int Ms[] = {1024, 1030};
  static const int Ns[] = {17, 40};
  static const int Ks[] = {7, 300};
  for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
    for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
      for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
        for (int mode = 0; mode < 3; mode++) {
          int bad = check(2, Ms[mi], Ns[ni], Ks[ki], mode == 0, mode == 1, &r);
          if (!bad) bad = check_packed(2, Ms[mi], Ns[ni], Ks[ki], mode == 0 ? Ks[ki] / 3 : 0, mode == 0, mode == 1, &r);
          if (bad)
            TEST_FAIL_("M %d N %d K %d mode %d: %s", Ms[mi], Ns[ni], Ks[ki], mode,
                       bad < 0 ? "out of memory" : "differs from the fmaf loop");
        }
}

TEST_MAIN(T(gemm_matches_fma_loop_bit_for_bit), T(gemm_training_shapes_and_splits_agree),
          T(softmax_matches_double_and_returns_log_sum_exp), T(attention_across_causal_blocks),
          T(packed_gemm_matches_fma_loop_bit_for_bit), T(gemm_far_apart_columns_of_a_bit_for_bit))
