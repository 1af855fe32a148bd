/* BM25: scores against hand-computed Okapi values, ranking, ties, tokenization. */
#include <math.h>
#include <string.h>

#include "index/bm25.h"
#include "test.h"

static float idf(float n, float df) { return logf(1.0f + (n - df + 0.5f) / (df + 0.5f)); }

TEST(scores_match_the_formula) {
  bm25_index *ix;
  ASSERT_OK(bm25_create(&ix));
  const char *docs[] = {"the quick brown fox", "the lazy dog", "quick quick dog, QUICK!", "unrelated text here"};
  for (int i = 0; i < 4; i++) ASSERT_OK(bm25_add(ix, 100 + i, docs[i], strlen(docs[i])));
  ASSERT_EQ(bm25_count(ix), 4);
  bm25_hit h[4];
  size_t n;
  ASSERT_OK(bm25_search(ix, "Quick", 5, 4, h, &n));
  ASSERT_EQ(n, 2);
  ASSERT_EQ(h[0].key, 102); /* tf 3 beats tf 1 */
  ASSERT_EQ(h[1].key, 100);
  float avg = (4 + 3 + 4 + 3) / 4.0f;
  float w = idf(4, 2);
  ASSERT_NEAR(h[0].score, w * 3 * 2.2f / (3 + 1.2f * (0.25f + 0.75f * 4 / avg)), 1e-5);
  ASSERT_NEAR(h[1].score, w * 1 * 2.2f / (1 + 1.2f * (0.25f + 0.75f * 4 / avg)), 1e-5);
  /* two terms add; a repeated query term counts once */
  ASSERT_OK(bm25_search(ix, "dog dog lazy", 12, 4, h, &n));
  ASSERT_EQ(n, 2);
  ASSERT_EQ(h[0].key, 101);
  /* k limits; nothing matches */
  ASSERT_OK(bm25_search(ix, "quick", 5, 1, h, &n));
  ASSERT_EQ(n, 1);
  ASSERT_OK(bm25_search(ix, "zebra !!", 8, 4, h, &n));
  ASSERT_EQ(n, 0);
  ASSERT_OK(bm25_search(ix, "", 0, 4, h, &n));
  ASSERT_EQ(n, 0);
  bm25_free(ix);
}

TEST(ties_keep_insertion_order_and_unicode_terms) {
  bm25_index *ix;
  ASSERT_OK(bm25_create(&ix));
  for (int i = 0; i < 3000; i++) { /* grows the term table several times */
    char buf[64];
    int len = snprintf(buf, sizeof buf, "term%d caf\xc3\xa9 common", i);
    ASSERT_OK(bm25_add(ix, (uint64_t)i, buf, (size_t)len));
  }
  bm25_hit h[5];
  size_t n;
  ASSERT_OK(bm25_search(ix, "CAF\xc3\xa9", 5, 5, h, &n)); /* ASCII lower-cased, the rest kept */
  ASSERT_EQ(n, 5);
  for (int i = 0; i < 5; i++) ASSERT_EQ(h[i].key, i);
  ASSERT_OK(bm25_search(ix, "term2999", 8, 5, h, &n));
  ASSERT_EQ(n, 1);
  ASSERT_EQ(h[0].key, 2999);
  bm25_free(ix);
}

TEST(empty_index) {
  bm25_index *ix;
  ASSERT_OK(bm25_create(&ix));
  bm25_hit h[1];
  size_t n = 7;
  ASSERT_OK(bm25_search(ix, "x", 1, 1, h, &n));
  ASSERT_EQ(n, 0);
  ASSERT_OK(bm25_add(ix, 1, "", 0));
  ASSERT_OK(bm25_search(ix, "x", 1, 1, h, &n));
  ASSERT_EQ(n, 0);
  bm25_free(ix);
}

TEST_MAIN(T(scores_match_the_formula), T(ties_keep_insertion_order_and_unicode_terms), T(empty_index))
