/* The CPU backend's ops against naive double-precision references.
 *
 * Tolerances (each stated again where it is checked):
 *   linear     |got - ref| <= 1e-5 * sum_k |inp_k w_k| + 1e-6 |bias|: float sums of K terms
 *   layernorm  |got - ref| <= 1e-5 * (|w| + 1) (outputs are O(|w|) by construction)
 *   attention  |got - ref| <= 1e-5 (probabilities sum to 1, values are O(1))
 *   gelu       |got - ref| <= 5e-7 |ref| + 1e-37 over [-13, 13] (relative accuracy kept
 *              on the negative tail too, where 1 + erf in float would cancel to 0);
 *              erf <= 2e-7 relative over a dense float grid; libm erff's figure printed
 *   embed      exact sums of three floats, checked to 1e-6
 * Elementwise kernels are run under each ISA the machine has (portable always). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "compute/backend.h"
#include "test.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) { /* [0, 1) */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0;
}
static void fill(float *x, size_t n, float lo, float hi) {
  for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)urand();
}
static float *falloc(size_t n) {
  float *p = malloc((n ? n : 1) * sizeof *p);
  if (!p) abort();
  return p;
}

/* ---- linear --------------------------------------------------------------------------- */

static void check_linear(int M, int N, int K, int with_bias) {
  const qv_backend *be = backend_cpu();
  float *x = falloc((size_t)M * K), *w = falloc((size_t)N * K), *b = falloc((size_t)N);
  float *out = falloc((size_t)M * N);
  fill(x, (size_t)M * K, -1, 1);
  fill(w, (size_t)N * K, -0.5f, 0.5f);
  fill(b, (size_t)N, -1, 1);
  be->linear(be->ctx, out, x, w, with_bias ? b : NULL, M, N, K);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = with_bias ? b[n] : 0, mag = 0;
      for (int k = 0; k < K; k++) {
        double p = (double)x[(size_t)m * K + k] * w[(size_t)n * K + k];
        s += p;
        mag += fabs(p);
      }
      /* tolerance: 1e-5 of the sum of |products| (+ the bias's own rounding) */
      double tol = 1e-5 * mag + 1e-6 * (with_bias ? fabs(b[n]) : 0) + 1e-30;
      if (fabs(out[(size_t)m * N + n] - s) > tol) {
        fprintf(stderr, "  linear M=%d N=%d K=%d at (%d, %d)\n", M, N, K, m, n);
        ASSERT_NEAR(out[(size_t)m * N + n], s, tol);
      }
    }
  free(x), free(w), free(b), free(out);
}

TEST(linear_small_shapes) {
  check_linear(1, 1, 1, 1);
  check_linear(1, 384, 384, 1);
  check_linear(3, 5, 7, 0);
  check_linear(17, 33, 65, 1);
  check_linear(2, 3, 1, 1);
}

/* Big enough to split over the pool: by rows (M large) and by columns (M small). */
TEST(linear_split_over_pool) {
  check_linear(130, 1152, 384, 1); /* row blocks, last one partial */
  check_linear(600, 384, 1536, 1); /* several row blocks per thread */
  check_linear(5, 1536, 384, 1);   /* column blocks */
  check_linear(1, 1001, 2048, 0);  /* column blocks, odd N */
}

/* ---- layernorm ------------------------------------------------------------------------ */

/* mode 0: separate out; 1: out aliases inp; 2: out aliases residual */
static void check_layernorm(int rows, int C, int with_res, int mode) {
  const qv_backend *be = backend_cpu();
  size_t n = (size_t)rows * C;
  float *a = falloc(n), *r = falloc(n), *w = falloc((size_t)C), *b = falloc((size_t)C);
  float *a0 = falloc(n), *r0 = falloc(n), *sep = falloc(n);
  fill(a, n, -3, 5);
  fill(r, n, -2, 2);
  fill(w, (size_t)C, 0.5f, 1.5f);
  fill(b, (size_t)C, -0.5f, 0.5f);
  memcpy(a0, a, n * sizeof *a);
  memcpy(r0, r, n * sizeof *r);
  float *out = mode == 1 ? a : mode == 2 ? r : sep;
  const float eps = 1e-12f;
  be->layernorm(be->ctx, out, a, with_res ? r : NULL, w, b, rows, C, eps);
  for (int i = 0; i < rows; i++) {
    double mean = 0, var = 0;
    for (int c = 0; c < C; c++) mean += a0[(size_t)i * C + c] + (with_res ? r0[(size_t)i * C + c] : 0.0);
    mean /= C;
    for (int c = 0; c < C; c++) {
      double d = a0[(size_t)i * C + c] + (with_res ? r0[(size_t)i * C + c] : 0.0) - mean;
      var += d * d;
    }
    var /= C;
    for (int c = 0; c < C; c++) {
      double v = a0[(size_t)i * C + c] + (with_res ? r0[(size_t)i * C + c] : 0.0);
      double ref = (v - mean) / sqrt(var + eps) * w[c] + b[c];
      /* tolerance: 1e-5 * (|w| + 1); C = 1 gives var 0 and out = b exactly */
      ASSERT_NEAR(out[(size_t)i * C + c], ref, 1e-5 * (fabs(w[c]) + 1));
    }
  }
  free(a), free(r), free(w), free(b), free(a0), free(r0), free(sep);
}

static void layernorm_all(void) {
  static const int Cs[] = {1, 3, 8, 13, 384, 1000};
  for (size_t i = 0; i < sizeof Cs / sizeof Cs[0]; i++)
    for (int mode = 0; mode < 3; mode++) {
      check_layernorm(1, Cs[i], 1, mode);
      check_layernorm(7, Cs[i], mode != 2, mode == 2 ? 0 : mode);
    }
  check_layernorm(300, 384, 1, 2); /* big enough to run over the pool */
}

TEST(layernorm_matches_reference) {
  const char *isa = backend_cpu_isa();
  layernorm_all();
  backend_cpu_force_isa("portable");
  layernorm_all();
  backend_cpu_force_isa(NULL);
  ASSERT_STR_EQ(backend_cpu_isa(), isa);
}

/* ---- gelu and erf --------------------------------------------------------------------- */

static double gelu_ref(double x) { return 0.5 * x * erfc(-x / sqrt(2.0)); }

/* Max relative error of gelu over a dense grid, and checks special values. */
static void check_gelu(void) {
  const qv_backend *be = backend_cpu();
  size_t n = 2600001; /* [-13, 13] step 1e-5, an odd count so the tail path runs too */
  float *x = falloc(n), *g = falloc(n);
  for (size_t i = 0; i < n; i++) x[i] = (float)(-13.0 + 1e-5 * (double)i);
  memcpy(g, x, n * sizeof *x);
  be->gelu(be->ctx, g, n);
  double worst = 0;
  size_t wi = 0;
  for (size_t i = 0; i < n; i++) {
    double ref = gelu_ref(x[i]), err = fabs(g[i] - ref);
    /* tolerance: 5e-7 relative (about 4 float ulps), 1e-37 absolute for the underflow */
    if (err > 5e-7 * fabs(ref) + 1e-37) {
      fprintf(stderr, "  gelu(%.9g) = %.9g, ref %.9g (isa %s)\n", x[i], g[i], ref, backend_cpu_isa());
      ASSERT(0);
    }
    if (fabs(ref) > 1e-30 && err / fabs(ref) > worst) worst = err / fabs(ref), wi = i;
  }
  printf("  gelu [%s]: max rel error %.3g at x = %.7g\n", backend_cpu_isa(), worst, x[wi]);
  float sp[6] = {0.0f, -0.0f, INFINITY, 1e30f, -1e30f, NAN};
  be->gelu(be->ctx, sp, 6);
  ASSERT(sp[0] == 0.0f && sp[1] == 0.0f);
  ASSERT(sp[2] == INFINITY);
  ASSERT(sp[3] == 1e30f);
  ASSERT(sp[4] == 0.0f);
  ASSERT(isnan(sp[5]));
  free(x), free(g);
}

/* erf over every 64th float in (1e-30, 12), both signs, against double erf and erff. */
static void check_erf(void) {
  enum { CHUNK = 1 << 20 };
  float *x = falloc(CHUNK), *e = falloc(CHUNK);
  uint32_t u, hi;
  float f = 1e-30f, top = 12.0f;
  memcpy(&u, &f, 4);
  memcpy(&hi, &top, 4);
  double worst = 0, worst_erff = 0;
  float worst_x = 0;
  size_t total = 0;
  while (u < hi) {
    size_t n = 0;
    for (; u < hi && n < CHUNK; u += 64) {
      memcpy(&f, &u, 4);
      x[n++] = f;
      x[n++] = -f;
    }
    backend_cpu_erf(e, x, n);
    for (size_t i = 0; i < n; i++) {
      double ref = erf((double)x[i]), rel = fabs(e[i] - ref) / fabs(ref);
      /* tolerance: 2e-7 relative against the double erf of the same float input */
      if (rel > 2e-7) {
        fprintf(stderr, "  erf(%.9g) = %.9g, ref %.9g, rel %.3g\n", x[i], e[i], ref, rel);
        ASSERT(0);
      }
      if (rel > worst) worst = rel, worst_x = x[i];
      double relf = fabs((double)erff(x[i]) - ref) / fabs(ref);
      if (relf > worst_erff) worst_erff = relf;
    }
    total += n;
  }
  printf("  erf [%s]: %zu values, max rel error %.3g at %.7g (libm erff: %.3g)\n", backend_cpu_isa(),
         total, worst, worst_x, worst_erff);
  free(x), free(e);
}

TEST(gelu_matches_exact_erf_form) {
  check_gelu();
  backend_cpu_force_isa("portable");
  check_gelu();
  backend_cpu_force_isa(NULL);
}

TEST(erf_dense_range) {
  check_erf();
  backend_cpu_force_isa("portable");
  check_erf();
  backend_cpu_force_isa(NULL);
}

TEST(tanh_matches_libm) {
  const qv_backend *be = backend_cpu();
  float x[5] = {-20, -0.5f, 0, 1e-8f, 3};
  be->act_tanh(be->ctx, x, 5);
  ASSERT_NEAR(x[0], -1.0, 1e-7);
  ASSERT_NEAR(x[1], tanh(-0.5), 1e-7);
  ASSERT_NEAR(x[2], 0.0, 0);
  ASSERT_NEAR(x[3], 1e-8, 1e-15);
  ASSERT_NEAR(x[4], tanh(3.0), 1e-7);
}

/* ---- attention ------------------------------------------------------------------------ */

static void check_attention(int B, int T, int C, int NH, const int *lens) {
  const qv_backend *be = backend_cpu();
  size_t n = (size_t)B * T * C;
  float *qkv = falloc(3 * n), *out = falloc(n);
  float *scr = falloc(be->attention_scratch(be->ctx, B, T, NH));
  fill(qkv, 3 * n, -2, 2);
  /* padded rows hold NaN: the op must never read them */
  for (int b = 0; b < B; b++)
    for (int t = lens[b]; t < T; t++)
      for (int c = 0; c < 3 * C; c++) qkv[((size_t)b * T + t) * 3 * C + c] = NAN;
  for (size_t i = 0; i < n; i++) out[i] = 12345.0f;
  be->attention(be->ctx, out, qkv, lens, B, T, C, NH, scr);
  int hd = C / NH;
  double *p = malloc((size_t)T * sizeof *p);
  ASSERT(p);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int t = 0; t < T; t++) {
        const float *o = out + ((size_t)b * T + t) * C + (size_t)h * hd;
        if (t >= lens[b]) {
          for (int d = 0; d < hd; d++) ASSERT(o[d] == 0.0f);
          continue;
        }
        const float *q = qkv + ((size_t)b * T + t) * 3 * C + (size_t)h * hd;
        double mx = -INFINITY, sum = 0;
        for (int s = 0; s < lens[b]; s++) {
          const float *k = qkv + ((size_t)b * T + s) * 3 * C + C + (size_t)h * hd;
          double dot = 0;
          for (int d = 0; d < hd; d++) dot += (double)q[d] * k[d];
          p[s] = dot / sqrt((double)hd);
          if (p[s] > mx) mx = p[s];
        }
        for (int s = 0; s < lens[b]; s++) sum += (p[s] = exp(p[s] - mx));
        for (int d = 0; d < hd; d++) {
          double ref = 0;
          for (int s = 0; s < lens[b]; s++)
            ref += p[s] / sum * qkv[((size_t)b * T + s) * 3 * C + 2 * C + (size_t)h * hd + d];
          /* tolerance: 1e-5 absolute (values are in [-2, 2]) */
          if (fabs(o[d] - ref) > 1e-5) {
            fprintf(stderr, "  attention B=%d T=%d C=%d NH=%d at b=%d h=%d t=%d d=%d\n", B, T, C, NH,
                    b, h, t, d);
            ASSERT_NEAR(o[d], ref, 1e-5);
          }
        }
      }
  free(p), free(qkv), free(out), free(scr);
}

static void attention_all(void) {
  int l1[1] = {1};
  check_attention(1, 1, 8, 2, l1);
  int l2[2] = {5, 3};
  check_attention(2, 5, 8, 2, l2);
  int l3[3] = {1, 64, 37};
  check_attention(3, 64, 384, 12, l3); /* runs over the pool */
  int l4[4] = {9, 2, 13, 13};
  check_attention(4, 13, 384, 12, l4);
  int l5[2] = {0, 3}; /* an empty sequence gives zero rows */
  check_attention(2, 3, 6, 3, l5);
  /* head dim 32 (MiniLM) at the lengths where a padded batch and block edges meet */
  static const int Ts[] = {1, 2, 13, 16, 17, 31, 64, 65};
  for (size_t i = 0; i < sizeof Ts / sizeof *Ts; i++) {
    int T = Ts[i];
    int lens[3] = {T, T > 1 ? T - 1 : 1, T / 2};
    check_attention(3, T, 64, 2, lens);
  }
}

TEST(attention_matches_reference) {
  static const char *isas[] = {"avx512", "avx2", "portable"};
  for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
    backend_cpu_force_isa(isas[i]);
    attention_all();
  }
  backend_cpu_force_isa(NULL);
}

/* ---- embed ---------------------------------------------------------------------------- */

TEST(embed_gathers_and_zeroes_padding) {
  const qv_backend *be = backend_cpu();
  enum { V = 50, P = 16, TV = 2, C = 12, B = 3, T = 7 };
  float *word = falloc(V * C), *pos = falloc(P * C), *type = falloc(TV * C), *out = falloc(B * T * C);
  fill(word, V * C, -1, 1);
  fill(pos, P * C, -1, 1);
  fill(type, TV * C, -1, 1);
  int32_t ids[B * T], tids[B * T];
  int lens[B] = {7, 1, 4};
  for (int i = 0; i < B * T; i++) {
    ids[i] = (int32_t)(urand() * V);
    tids[i] = (int32_t)(urand() * TV);
  }
  /* padding holds ids far out of range: the op must not read them */
  for (int b = 0; b < B; b++)
    for (int t = lens[b]; t < T; t++) ids[b * T + t] = tids[b * T + t] = 1 << 30;
  be->embed(be->ctx, out, ids, tids, word, pos, type, lens, B, T, C);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int c = 0; c < C; c++) {
        float got = out[(b * T + t) * C + c];
        if (t >= lens[b]) {
          ASSERT(got == 0.0f);
          continue;
        }
        int i = b * T + t;
        double ref = (double)word[ids[i] * C + c] + pos[t * C + c] + type[tids[i] * C + c];
        ASSERT_NEAR(got, ref, 1e-6);
      }
  /* NULL type ids mean type 0; NULL lens mean full rows */
  for (int i = 0; i < B * T; i++) ids[i] = i % V;
  be->embed(be->ctx, out, ids, NULL, word, pos, type, NULL, B, T, C);
  for (int i = 0; i < B * T; i++)
    for (int c = 0; c < C; c++)
      ASSERT_NEAR(out[i * C + c], (double)word[(i % V) * C + c] + pos[(i % T) * C + c] + type[c], 1e-6);
  free(word), free(pos), free(type), free(out);
}

/* Few rows take the unpacked kernel (M <= 64 in cpu.c), more go to sgemm: check both
 * sides of the cutoff, K and N tails (K % 16, N % 4), and single-threaded and pooled splits,
 * under every ISA the machine has. */
static void linear_small_m_all(void) {
  static const int Ms[] = {1, 3, 13, 64, 65};
  static const int Ks[] = {384, 1536, 37};
  static const int Ns[] = {1, 384, 1152};
  for (size_t m = 0; m < sizeof Ms / sizeof Ms[0]; m++)
    for (size_t k = 0; k < sizeof Ks / sizeof Ks[0]; k++)
      for (size_t n = 0; n < sizeof Ns / sizeof Ns[0]; n++)
        check_linear(Ms[m], Ns[n], Ks[k], (int)((m + k + n) % 2 == 0));
  check_linear(5, 7, 1, 1);   /* K below one vector */
  check_linear(2, 6, 17, 0);  /* K one past a vector, N % 4 == 2 */
  check_linear(4, 1001, 16, 1);
}

TEST(linear_small_m_every_isa) {
  static const char *isas[] = {"portable", "avx2", "avx512"};
  for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++) {
    const char *got = backend_cpu_force_isa(isas[i]);
    if (strcmp(got, isas[i]) != 0) continue; /* not on this machine */
    printf("  linear small M [%s]\n", got);
    linear_small_m_all();
  }
  backend_cpu_force_isa(NULL);
}

TEST(backend_table_is_complete) {
  const qv_backend *be = backend_cpu();
  ASSERT_EQ(be->api_version, QV_BACKEND_API_VERSION);
  ASSERT_STR_EQ(be->name, "cpu");
  ASSERT(be->linear && be->layernorm && be->gelu && be->act_tanh && be->attention &&
         be->attention_scratch && be->embed);
  ASSERT_STR_EQ(backend_cpu_force_isa("portable"), "portable");
  backend_cpu_force_isa(NULL);
}

TEST_MAIN(T(backend_table_is_complete), T(linear_small_shapes), T(linear_split_over_pool), T(linear_small_m_every_isa),
          T(layernorm_matches_reference), T(gelu_matches_exact_erf_form), T(erf_dense_range),
          T(tanh_matches_libm), T(attention_matches_reference), T(embed_gathers_and_zeroes_padding))
