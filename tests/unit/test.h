/* A tiny test harness. Each test file defines TEST(name) functions and lists them in
 * TEST_MAIN(...). ASSERT_* print both values and are never compiled out; a failing
 * assertion ends the current test, marks it failed and the run continues with the next.
 * SKIP(reason) ends a test as skipped, with the reason printed. The process exits 1 when
 * any test failed. */
#ifndef QV_TEST_H
#define QV_TEST_H

#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct test_case {
  const char *name;
  void (*fn)(void);
} test_case;

static jmp_buf test_jmp_;
static int test_outcome_; /* 0 pass, 1 fail, 2 skip */

#define TEST(name) static void test_##name(void)
#define T(name) {#name, test_##name}

#define TEST_FAIL_(...)                                    \
  do {                                                     \
    fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);      \
    fprintf(stderr, __VA_ARGS__);                          \
    fprintf(stderr, "\n");                                 \
    test_outcome_ = 1;                                     \
    longjmp(test_jmp_, 1);                                 \
  } while (0)

#define ASSERT(cond) \
  do { if (!(cond)) TEST_FAIL_("assertion failed: %s", #cond); } while (0)

#define ASSERT_EQ(a, b)                                                                 \
  do {                                                                                  \
    long long a_ = (long long)(a), b_ = (long long)(b);                                 \
    if (a_ != b_) TEST_FAIL_("%s == %s: %lld != %lld", #a, #b, a_, b_);                 \
  } while (0)

#define ASSERT_NE(a, b)                                                                 \
  do {                                                                                  \
    long long a_ = (long long)(a), b_ = (long long)(b);                                 \
    if (a_ == b_) TEST_FAIL_("%s != %s: both %lld", #a, #b, a_);                        \
  } while (0)

#define ASSERT_U64_EQ(a, b)                                                             \
  do {                                                                                  \
    uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);                                    \
    if (a_ != b_) TEST_FAIL_("%s == %s: %" PRIu64 " != %" PRIu64, #a, #b, a_, b_);      \
  } while (0)

#define ASSERT_NEAR(a, b, tol)                                                          \
  do {                                                                                  \
    double a_ = (double)(a), b_ = (double)(b);                                          \
    if (!(fabs(a_ - b_) <= (double)(tol)))                                              \
      TEST_FAIL_("%s ~= %s: %.9g vs %.9g (tol %g)", #a, #b, a_, b_, (double)(tol));     \
  } while (0)

#define ASSERT_STR_EQ(a, b)                                                             \
  do {                                                                                  \
    const char *a_ = (a), *b_ = (b);                                                    \
    if (!a_ || !b_ || strcmp(a_, b_) != 0)                                              \
      TEST_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
  } while (0)

/* Expects a qv_status call to return exactly `want` (a QV_* code). */
#define ASSERT_STATUS(call, want)                                                       \
  do {                                                                                  \
    int got_ = (call);                                                                  \
    if (got_ != (want))                                                                 \
      TEST_FAIL_("%s: got %d (%s), want %s (%d)", #call, got_, qv_strerror(got_), #want, (int)(want)); \
  } while (0)

#define ASSERT_OK(call) ASSERT_STATUS(call, QV_OK)

#define SKIP(reason)                                       \
  do {                                                     \
    fprintf(stderr, "  skipped: %s\n", reason);            \
    test_outcome_ = 2;                                     \
    longjmp(test_jmp_, 1);                                 \
  } while (0)

static inline int test_run_all_(const test_case *cases, size_t n, int argc, char **argv) {
  volatile int failed = 0, passed = 0, skipped = 0;
  for (volatile size_t i = 0; i < n; i++) {
    if (argc > 1 && strcmp(argv[1], cases[i].name) != 0) continue;
    test_outcome_ = 0;
    if (setjmp(test_jmp_) == 0) cases[i].fn();
    const char *word = test_outcome_ == 0 ? "ok" : test_outcome_ == 1 ? "FAIL" : "skip";
    printf("%-4s %s\n", word, cases[i].name);
    fflush(stdout);
    if (test_outcome_ == 0) passed++;
    else if (test_outcome_ == 1) failed++;
    else skipped++;
  }
  printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed ? 1 : 0;
}

#define TEST_MAIN(...)                                                                  \
  int main(int argc, char **argv) {                                                     \
    static const test_case cases_[] = {__VA_ARGS__};                                    \
    return test_run_all_(cases_, sizeof cases_ / sizeof cases_[0], argc, argv);         \
  }

#endif
