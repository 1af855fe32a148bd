/* Distance kernels against a double-precision reference, under every ISA this CPU has. */
#include "index/distance.h"

#include <stdint.h>

#include "test.h"

static const size_t dims[] = {1, 3, 15, 16, 17, 31, 64, 383, 384, 385, 4096};
static const char *isas[] = {"portable", "avx2", "avx512"};

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(rng_state >> 40) / (double)(1ull << 23) - 1.0);
}

static double ref_dot(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}
static double ref_l2sq(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
  return s;
}
static double ref_l1(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += fabs((double)a[i] - b[i]);
  return s;
}

/* Float sums of n terms drift by about n * eps * sum|terms|; allow a margin on that. */
static double tol_for(size_t n, double magnitude) { return 1e-6 * (double)(n + 8) * (magnitude + 1); }

/* Runs each kernel at each dim, from an odd offset so no load is aligned, with a guard
 * float after each vector that must not be read into the sum. */
static void check_isa(const char *isa) {
  const char *got = dist_force_isa(isa);
  int available = strcmp(got, isa) == 0;
  if (!available) {
    dist_force_isa(NULL);
    SKIP("ISA not available on this CPU");
  }
  ASSERT_STR_EQ(dist_isa(), isa);
  for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
    size_t n = dims[di];
    float *a = malloc((n + 2) * sizeof(float)), *b = malloc((n + 2) * sizeof(float));
    ASSERT(a && b);
    for (size_t i = 0; i < n + 2; i++) {
      a[i] = frand();
      b[i] = frand();
    }
    a[n + 1] = b[n + 1] = 1e30f; /* poison: a read past n would show */
    const float *pa = a + 1, *pb = b + 1;
    double mag = ref_l1(pa, pb, n) + ref_dot(pa, pa, n) + ref_dot(pb, pb, n);
    ASSERT_NEAR(dist_dot(pa, pb, n), ref_dot(pa, pb, n), tol_for(n, mag));
    ASSERT_NEAR(dist_l2sq(pa, pb, n), ref_l2sq(pa, pb, n), tol_for(n, mag));
    ASSERT_NEAR(dist_l1(pa, pb, n), ref_l1(pa, pb, n), tol_for(n, mag));
    const dist_kernels *kt = dist_get_kernels();
    ASSERT_NEAR(kt->dot(pa, pb, n), ref_dot(pa, pb, n), tol_for(n, mag));
    ASSERT_NEAR(dist_score(QV_DIST_EUCLID, pa, pb, n), sqrt(ref_l2sq(pa, pb, n)), tol_for(n, mag));
    ASSERT_NEAR(dist_score(QV_DIST_MANHATTAN, pa, pb, n), ref_l1(pa, pb, n), tol_for(n, mag));
    ASSERT_NEAR(dist_score(QV_DIST_DOT, pa, pb, n), ref_dot(pa, pb, n), tol_for(n, mag));
    ASSERT_NEAR(dist_score(QV_DIST_COSINE, pa, pb, n), ref_dot(pa, pb, n), tol_for(n, mag));
    /* identical vectors: exactly zero distance */
    ASSERT_EQ(dist_l2sq(pa, pa, n) == 0.0f, 1);
    ASSERT_EQ(dist_l1(pa, pa, n) == 0.0f, 1);
    free(a);
    free(b);
  }
  /* n = 0 sums nothing */
  float z = 1;
  ASSERT_EQ(dist_dot(&z, &z, 0) == 0.0f, 1);
  ASSERT_EQ(dist_l1(&z, &z, 0) == 0.0f, 1);
  dist_force_isa(NULL);
}

TEST(portable) { check_isa(isas[0]); }
TEST(avx2) { check_isa(isas[1]); }
TEST(avx512) { check_isa(isas[2]); }

TEST(isa_cap) {
  /* The cap never raises the choice above what the CPU has, and lower caps are honoured. */
  ASSERT_STR_EQ(dist_force_isa("portable"), "portable");
  const char *best = dist_force_isa(NULL);
  ASSERT(strcmp(best, "portable") == 0 || strcmp(best, "avx2") == 0 || strcmp(best, "avx512") == 0);
  ASSERT_STR_EQ(dist_force_isa("bogus"), best); /* unknown names are ignored */
  if (strcmp(best, "avx512") == 0) ASSERT_STR_EQ(dist_force_isa("avx2"), "avx2");
  dist_force_isa(NULL);
}

TEST(normalize) {
  float v[385];
  for (size_t i = 0; i < 385; i++) v[i] = frand() * 10;
  dist_normalize(v, 385);
  ASSERT_NEAR(ref_dot(v, v, 385), 1.0, 1e-5);
  float zero[7] = {0};
  dist_normalize(zero, 7);
  for (size_t i = 0; i < 7; i++) ASSERT_EQ(zero[i] == 0.0f, 1);
  float one[1] = {-3};
  dist_normalize(one, 1);
  ASSERT_NEAR(one[0], -1.0, 1e-7);
}

TEST(higher_is_better) {
  ASSERT_EQ(dist_higher_is_better(QV_DIST_COSINE), 1);
  ASSERT_EQ(dist_higher_is_better(QV_DIST_DOT), 1);
  ASSERT_EQ(dist_higher_is_better(QV_DIST_EUCLID), 0);
  ASSERT_EQ(dist_higher_is_better(QV_DIST_MANHATTAN), 0);
}

TEST_MAIN(T(portable), T(avx2), T(avx512), T(isa_cap), T(normalize), T(higher_is_better))
