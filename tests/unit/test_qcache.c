/* The query cache: normalized keys, LRU eviction, version invalidation, counters. */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "text/qcache.h"

static int get_str(qcache *q, const char *key, uint64_t v, char *buf) {
  void *val;
  size_t len;
  if (!qcache_get(q, key, v, &val, &len)) return 0;
  memcpy(buf, val, len);
  buf[len] = 0;
  free(val);
  return 1;
}

TEST(keys_normalize_text_not_params) {
  char *a = qcache_key("  How do  I\tREAD a file?\n", "k=5"), *b = qcache_key("how do i read a file?", "k=5");
  char *c = qcache_key("how do i read a file?", "k=6");
  ASSERT_STR_EQ(a, b);
  ASSERT(strcmp(a, c) != 0);
  free(a);
  free(b);
  free(c);
}

TEST(lru_eviction_and_versions) {
  qcache *q;
  ASSERT_OK(qcache_create(&q, 2));
  char buf[64];
  qcache_put(q, "a", 1, "A", 1);
  qcache_put(q, "b", 1, "B", 1);
  ASSERT(get_str(q, "a", 1, buf)); /* a is now the most recent */
  ASSERT_STR_EQ(buf, "A");
  qcache_put(q, "c", 1, "C", 1); /* evicts b */
  ASSERT(!get_str(q, "b", 1, buf));
  ASSERT(get_str(q, "a", 1, buf));
  ASSERT(get_str(q, "c", 1, buf));
  ASSERT_STR_EQ(buf, "C");
  ASSERT(!get_str(q, "a", 2, buf)); /* the collection moved on */
  qcache_put(q, "a", 2, "A2", 2);   /* replaces in place */
  ASSERT(get_str(q, "a", 2, buf));
  ASSERT_STR_EQ(buf, "A2");
  uint64_t hits, misses;
  size_t entries;
  qcache_counters(q, &hits, &misses, &entries);
  ASSERT_EQ(hits, 4);
  ASSERT_EQ(misses, 2);
  ASSERT_EQ(entries, 2);
  qcache_free(q);
}

TEST(zero_capacity_stores_nothing) {
  qcache *q;
  ASSERT_OK(qcache_create(&q, 0));
  char buf[8];
  qcache_put(q, "a", 1, "A", 1);
  ASSERT(!get_str(q, "a", 1, buf));
  uint64_t hits, misses;
  qcache_counters(q, &hits, &misses, NULL);
  ASSERT_EQ(hits, 0);
  ASSERT_EQ(misses, 1);
  qcache_free(q);
}

TEST_MAIN(T(keys_normalize_text_not_params), T(lru_eviction_and_versions), T(zero_capacity_stores_nothing))
