/* The GPU-resident exact-search copy (index/flat_gpu.h) with the test device of
 * fake_gpu.h (its own copy of each mapped range, so a missed sync shows as a wrong
 * answer; failing on command). Results must equal flat_search over the same rows in every case. */
#include <stdatomic.h>

#include "compute/device.h"
#include "index/flat.h"
#include "index/flat_gpu.h"
#include "test.h"
#include "fake_gpu.h"

/* the test device keeps one range per map; these tests only ever map one */
static const qv_backend *test_device(void) { return fake_gpu_reset(); }

static double clock_now;
static double test_clock(void *arg) { return clock_now; }

static float *rand_rows(size_t n, size_t dim, unsigned seed) {
  float *v = malloc(n * dim * sizeof *v);
  for (size_t i = 0; i < n * dim; i++) {
    seed = seed * 1103515245u + 12345u;
    v[i] = (float)((seed >> 8) & 0xffff) / 65536.0f - 0.5f;
  }
  return v;
}

/* flat_gpu's answer equals flat_search over rows (n, dim). */
static void check_same(flat_gpu *g, const float *rows, size_t n, size_t dim, qv_distance dist, const uint64_t *mask) {
  size_t nq = 5, k = 7;
  float *q = rand_rows(nq, dim, 99);
  flat_hit a[35], b[35];
  size_t ca[5], cb[5];
  flat_matrix m = {rows, NULL, n, dim, dim};
  ASSERT_OK(flat_search(a, ca, q, nq, &m, dist, k, mask, NULL));
  ASSERT_OK(flat_gpu_search(g, b, cb, q, nq, k, mask, NULL));
  for (size_t i = 0; i < nq; i++) {
    ASSERT_EQ(cb[i], ca[i]);
    for (size_t j = 0; j < ca[i]; j++) {
      ASSERT_EQ(b[i * k + j].row, a[i * k + j].row);
      ASSERT_NEAR(b[i * k + j].score, a[i * k + j].score, 1e-6);
    }
  }
  free(q);
}

TEST(without_a_gpu_searches_run_on_the_cpu) {
  device_set_backend_for_test(NULL, NULL, NULL, NULL);
  flat_gpu *g;
  ASSERT_OK(flat_gpu_create(&g, 16, QV_DIST_DOT, 4, NULL));
  ASSERT(!flat_gpu_resident(g));
  float *x = rand_rows(100, 16, 1);
  ASSERT_OK(flat_gpu_set_rows(g, 0, 100, x, 16, NULL));
  ASSERT_EQ(flat_gpu_rows(g), 100);
  check_same(g, x, 100, 16, QV_DIST_DOT, NULL);
  ASSERT_STATUS(flat_gpu_set_rows(g, 101, 1, x, 16, NULL), QV_EINVAL);
  flat_gpu_free(g);
  free(x);
}

TEST(resident_copy_follows_writes_and_growth) {
  device_set_backend_for_test(test_device(), NULL, test_clock, NULL);
  flat_gpu *g;
  size_t dim = 24;
  ASSERT_OK(flat_gpu_create(&g, dim, QV_DIST_COSINE, 64, NULL));
  ASSERT(flat_gpu_resident(g));
  float *x = rand_rows(300, dim, 2);
  ASSERT_OK(flat_gpu_set_rows(g, 0, 50, x, dim, NULL));
  check_same(g, x, 50, dim, QV_DIST_COSINE, NULL);
  ASSERT_EQ(fake_gpu.searches, 1);
  /* overwrite in place: the device copy must see it */
  float *y = rand_rows(10, dim, 3);
  memcpy(x + 20 * dim, y, 10 * dim * sizeof *x);
  ASSERT_OK(flat_gpu_set_rows(g, 20, 10, y, dim, NULL));
  check_same(g, x, 50, dim, QV_DIST_COSINE, NULL);
  /* append past the capacity: remapped whole */
  ASSERT_OK(flat_gpu_set_rows(g, 50, 250, x + 50 * dim, dim, NULL));
  ASSERT(flat_gpu_resident(g));
  check_same(g, x, 300, dim, QV_DIST_COSINE, NULL);
  uint64_t mask[5] = {0};
  for (size_t r = 0; r < 300; r += 7) mask[r / 64] |= 1ull << (r % 64);
  check_same(g, x, 300, dim, QV_DIST_COSINE, mask);
  ASSERT_EQ(fake_gpu.searches, 4);
  /* Manhattan goes to the CPU twin directly */
  flat_gpu_free(g);
  ASSERT_OK(flat_gpu_create(&g, dim, QV_DIST_MANHATTAN, 300, NULL));
  ASSERT_OK(flat_gpu_set_rows(g, 0, 300, x, dim, NULL));
  check_same(g, x, 300, dim, QV_DIST_MANHATTAN, NULL);
  ASSERT_EQ(fake_gpu.searches, 4);
  flat_gpu_free(g);
  free(x);
  free(y);
  device_set_backend_for_test(NULL, NULL, NULL, NULL);
}

TEST(device_failures_fall_back_and_open_the_breaker) {
  device_set_backend_for_test(test_device(), NULL, test_clock, NULL);
  clock_now = 0;
  flat_gpu *g;
  size_t dim = 8;
  ASSERT_OK(flat_gpu_create(&g, dim, QV_DIST_EUCLID, 200, NULL));
  float *x = rand_rows(200, dim, 4);
  ASSERT_OK(flat_gpu_set_rows(g, 0, 200, x, dim, NULL));
  fake_gpu.fail = 1;
  for (int i = 0; i < 4; i++) check_same(g, x, 200, dim, QV_DIST_EUCLID, NULL);
  ASSERT_EQ(fake_gpu.searches, 3); /* the fourth found the breaker open */
  qv_gpu_stats s;
  qv_gpu_stats_get(&s);
  ASSERT_EQ(s.breaker_state, 1);
  ASSERT_EQ(s.fallbacks_total, 4);
  fake_gpu.fail = 0;
  clock_now = 300;
  check_same(g, x, 200, dim, QV_DIST_EUCLID, NULL); /* the half-open trial succeeds */
  qv_gpu_stats_get(&s);
  ASSERT_EQ(s.breaker_state, 0);
  /* a failed sync drops residency rather than leaving a stale copy */
  fake_gpu.fail_update = 1;
  float *y = rand_rows(1, dim, 5);
  memcpy(x + 3 * dim, y, dim * sizeof *x);
  ASSERT_OK(flat_gpu_set_rows(g, 3, 1, y, dim, NULL));
  ASSERT(!flat_gpu_resident(g));
  int before = fake_gpu.searches;
  check_same(g, x, 200, dim, QV_DIST_EUCLID, NULL);
  ASSERT_EQ(fake_gpu.searches, before);
  flat_gpu_free(g);
  free(x);
  free(y);
  device_set_backend_for_test(NULL, NULL, NULL, NULL);
}

TEST(gpu_batch_size_bounds_the_queries_per_device_unit) {
  qv_gpu_config cfg;
  qv_gpu_config_default(&cfg);
  cfg.batch_size = 4;
  device_set_backend_for_test(test_device(), &cfg, test_clock, NULL);
  clock_now = 0;
  size_t dim = 16, n = 120, nq = 10, k = 5;
  flat_gpu *g;
  ASSERT_OK(flat_gpu_create(&g, dim, QV_DIST_DOT, n, NULL));
  float *x = rand_rows(n, dim, 6), *q = rand_rows(nq, dim, 7);
  ASSERT_OK(flat_gpu_set_rows(g, 0, n, x, dim, NULL));
  flat_hit a[50], b[50];
  size_t ca[10], cb[10];
  flat_matrix m = {x, NULL, n, dim, dim};
  ASSERT_OK(flat_search(a, ca, q, nq, &m, QV_DIST_DOT, k, NULL, NULL));
  ASSERT_OK(flat_gpu_search(g, b, cb, q, nq, k, NULL, NULL));
  ASSERT_EQ(fake_gpu.searches, 3); /* 4 + 4 + 2 */
  ASSERT_EQ(fake_gpu.max_nq, 4);
  for (size_t i = 0; i < nq; i++) {
    ASSERT_EQ(cb[i], ca[i]);
    for (size_t j = 0; j < k; j++) {
      ASSERT_EQ(b[i * k + j].row, a[i * k + j].row);
      ASSERT_NEAR(b[i * k + j].score, a[i * k + j].score, 1e-6);
    }
  }
  /* one unit through flat_gpu_search_on: only on the backend the copy lives on */
  ASSERT_OK(flat_gpu_search_on(g, &fake_gpu.be, b, cb, q, 2, k, NULL));
  ASSERT_EQ(b[0].row, a[0].row);
  ASSERT_STATUS(flat_gpu_search_on(g, backend_cpu(), b, cb, q, 2, k, NULL), QV_EUNSUPPORTED);
  ASSERT_STATUS(flat_gpu_search_on(g, &fake_gpu.be, b, cb, q, 1, FLAT_GPU_MAX_K + 1, NULL), QV_EUNSUPPORTED);
  ASSERT(flat_gpu_can_search(g, k));
  ASSERT(!flat_gpu_can_search(g, 0));
  /* truncation forgets the tail: the answer is the first 60 rows' */
  ASSERT_OK(flat_gpu_truncate(g, 60, NULL));
  ASSERT_EQ(flat_gpu_rows(g), 60);
  ASSERT_STATUS(flat_gpu_truncate(g, 61, NULL), QV_EINVAL);
  check_same(g, x, 60, dim, QV_DIST_DOT, NULL);
  flat_gpu_free(g);
  free(x);
  free(q);
  device_set_backend_for_test(NULL, NULL, NULL, NULL);
}

TEST_MAIN(T(without_a_gpu_searches_run_on_the_cpu), T(resident_copy_follows_writes_and_growth),
          T(device_failures_fall_back_and_open_the_breaker), T(gpu_batch_size_bounds_the_queries_per_device_unit))
