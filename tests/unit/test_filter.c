/* Payload filters: each condition kind, paths and arrays, boolean combinations, has_id,
 * boundaries, and every class of parse error. */
#include <jansson.h>

#include "quiver.h"
#include "store/filter.h"

#include "test.h"

/* Parses filter text; on success frees it. Returns the status, err filled. */
static int parse(const char *text, qv_error *err) {
  qv_filter *f = (qv_filter *)(uintptr_t)1;
  memset(err, 0, sizeof *err);
  int st = qv_filter_parse(&f, text, strlen(text), err);
  if (st == QV_OK) qv_filter_free(f);
  else if (f != NULL) return 999; /* *out must be NULL after a failure */
  return st;
}

static qv_point_id num_id(uint64_t n) {
  qv_point_id id;
  memset(&id, 0, sizeof id);
  id.kind = QV_ID_NUM;
  id.num = n;
  return id;
}

/* Whether filter text matches payload text (NULL = no payload) for point id. */
static int match_id(const char *ftext, const char *ptext, const qv_point_id *id) {
  qv_filter *f = NULL;
  qv_error e = {0};
  int st = qv_filter_parse(&f, ftext, strlen(ftext), &e);
  if (st != QV_OK) fprintf(stderr, "  parse %s: %s\n", ftext, e.msg);
  ASSERT_OK(st);
  json_t *p = NULL;
  if (ptext) {
    p = json_loads(ptext, JSON_DECODE_ANY, NULL);
    ASSERT(p != NULL);
  }
  int r = filter_match(f, id, p);
  json_decref(p);
  qv_filter_free(f);
  return r;
}

static int match(const char *ftext, const char *ptext) {
  qv_point_id id = num_id(1);
  return match_id(ftext, ptext, &id);
}

#define ASSERT_MSG(err, sub)                                                          \
  do {                                                                                \
    if (!strstr((err).msg, (sub))) {                                                  \
      fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", (err).msg, (sub));           \
      ASSERT(strstr((err).msg, (sub)) != NULL);                                       \
    }                                                                                 \
  } while (0)

/* ---- match value ---- */

TEST(match_value_string) {
  const char *f = "{\"must\":[{\"key\":\"city\",\"match\":{\"value\":\"London\"}}]}";
  ASSERT_EQ(match(f, "{\"city\":\"London\"}"), 1);
  ASSERT_EQ(match(f, "{\"city\":\"london\"}"), 0);
  ASSERT_EQ(match(f, "{\"city\":\"London \"}"), 0);
  ASSERT_EQ(match(f, "{\"city\":\"Lond\"}"), 0);
  ASSERT_EQ(match(f, "{\"town\":\"London\"}"), 0);
  ASSERT_EQ(match(f, "{\"city\":[\"Paris\",\"London\"]}"), 1);
  ASSERT_EQ(match(f, "{\"city\":[\"Paris\"]}"), 0);
  ASSERT_EQ(match(f, "{\"city\":1}"), 0);
}

TEST(match_value_int_and_real) {
  const char *f = "{\"must\":{\"key\":\"n\",\"match\":{\"value\":3}}}";
  ASSERT_EQ(match(f, "{\"n\":3}"), 1);
  ASSERT_EQ(match(f, "{\"n\":3.0}"), 1); /* exactly the integer */
  ASSERT_EQ(match(f, "{\"n\":3.5}"), 0);
  ASSERT_EQ(match(f, "{\"n\":\"3\"}"), 0);
  ASSERT_EQ(match(f, "{\"n\":4}"), 0);
  ASSERT_EQ(match(f, "{\"n\":true}"), 0);
  ASSERT_EQ(match(f, "{\"n\":[1,2,3]}"), 1);
  ASSERT_EQ(match(f, "{\"n\":1e300}"), 0);
  ASSERT_EQ(match("{\"must\":{\"key\":\"n\",\"match\":{\"value\":-9223372036854775808}}}",
                  "{\"n\":-9223372036854775808}"), 1);
  ASSERT_EQ(match("{\"must\":{\"key\":\"n\",\"match\":{\"value\":9223372036854775807}}}",
                  "{\"n\":9223372036854775808.0}"), 0); /* 2^63 is out of range, not a wrap */
}

TEST(match_value_bool) {
  const char *t = "{\"must\":{\"key\":\"ok\",\"match\":{\"value\":true}}}";
  const char *fl = "{\"must\":{\"key\":\"ok\",\"match\":{\"value\":false}}}";
  ASSERT_EQ(match(t, "{\"ok\":true}"), 1);
  ASSERT_EQ(match(t, "{\"ok\":false}"), 0);
  ASSERT_EQ(match(t, "{\"ok\":1}"), 0);
  ASSERT_EQ(match(t, "{\"ok\":\"true\"}"), 0);
  ASSERT_EQ(match(fl, "{\"ok\":false}"), 1);
  ASSERT_EQ(match(fl, "{\"ok\":0}"), 0);
  ASSERT_EQ(match(fl, "{\"ok\":null}"), 0);
  ASSERT_EQ(match(fl, "{}"), 0);
}

TEST(match_value_string_with_nul_in_payload) {
  const char *f = "{\"must\":{\"key\":\"s\",\"match\":{\"value\":\"a\"}}}";
  qv_filter *flt = NULL;
  ASSERT_OK(qv_filter_parse(&flt, f, strlen(f), NULL));
  json_t *p = json_loads("{\"s\":\"a\\u0000b\"}", JSON_ALLOW_NUL, NULL);
  ASSERT(p != NULL);
  qv_point_id id = num_id(1);
  ASSERT_EQ(filter_match(flt, &id, p), 0); /* "a\0b" is not "a" */
  json_decref(p);
  qv_filter_free(flt);
}

/* ---- match any / except ---- */

TEST(match_any) {
  const char *f = "{\"must\":[{\"key\":\"color\",\"match\":{\"any\":[\"red\",\"green\",\"blue\"]}}]}";
  ASSERT_EQ(match(f, "{\"color\":\"green\"}"), 1);
  ASSERT_EQ(match(f, "{\"color\":\"blue\"}"), 1);
  ASSERT_EQ(match(f, "{\"color\":\"black\"}"), 0);
  ASSERT_EQ(match(f, "{\"color\":[\"black\",\"red\"]}"), 1);
  ASSERT_EQ(match(f, "{\"color\":[]}"), 0);
  ASSERT_EQ(match(f, "{}"), 0);
  const char *n = "{\"must\":[{\"key\":\"n\",\"match\":{\"any\":[5,-1,100,7]}}]}";
  ASSERT_EQ(match(n, "{\"n\":-1}"), 1);
  ASSERT_EQ(match(n, "{\"n\":100}"), 1);
  ASSERT_EQ(match(n, "{\"n\":6}"), 0);
  ASSERT_EQ(match(n, "{\"n\":7.0}"), 1);
  const char *mixed = "{\"must\":[{\"key\":\"v\",\"match\":{\"any\":[\"x\",2,true]}}]}";
  ASSERT_EQ(match(mixed, "{\"v\":\"x\"}"), 1);
  ASSERT_EQ(match(mixed, "{\"v\":2}"), 1);
  ASSERT_EQ(match(mixed, "{\"v\":true}"), 1);
  ASSERT_EQ(match(mixed, "{\"v\":false}"), 0);
}

TEST(match_any_large_list) {
  /* 500 strings and 500 ints, given in a scrambled order, looked up by binary search. */
  size_t cap = 64 * 1024;
  char *buf = malloc(cap);
  ASSERT(buf != NULL);
  size_t off = (size_t)snprintf(buf, cap, "{\"must\":{\"key\":\"v\",\"match\":{\"any\":[");
  for (int i = 0; i < 500; i++) {
    int k = (i * 7919) % 500;
    off += (size_t)snprintf(buf + off, cap - off, "\"s%d\",%d,", k, k * 3);
  }
  off += (size_t)snprintf(buf + off, cap - off, "\"last\"]}}}");
  ASSERT(off < cap);
  for (int k = 0; k < 500; k += 37) {
    char p[64];
    snprintf(p, sizeof p, "{\"v\":\"s%d\"}", k);
    ASSERT_EQ(match(buf, p), 1);
    snprintf(p, sizeof p, "{\"v\":%d}", k * 3);
    ASSERT_EQ(match(buf, p), 1);
    snprintf(p, sizeof p, "{\"v\":%d}", k * 3 + 1);
    ASSERT_EQ(match(buf, p), 0);
  }
  ASSERT_EQ(match(buf, "{\"v\":\"last\"}"), 1);
  ASSERT_EQ(match(buf, "{\"v\":\"s500\"}"), 0);
  ASSERT_EQ(match(buf, "{\"v\":\"s\"}"), 0);
  free(buf);
}

TEST(match_any_empty_list_matches_nothing) {
  const char *f = "{\"must\":{\"key\":\"v\",\"match\":{\"any\":[]}}}";
  ASSERT_EQ(match(f, "{\"v\":1}"), 0);
  ASSERT_EQ(match(f, "{\"v\":\"\"}"), 0);
  ASSERT_EQ(match(f, "{}"), 0);
}

TEST(match_except) {
  const char *f = "{\"must\":{\"key\":\"color\",\"match\":{\"except\":[\"red\",\"blue\"]}}}";
  ASSERT_EQ(match(f, "{\"color\":\"green\"}"), 1);
  ASSERT_EQ(match(f, "{\"color\":\"red\"}"), 0);
  ASSERT_EQ(match(f, "{}"), 1);                        /* missing key matches */
  ASSERT_EQ(match(f, NULL), 1);                        /* so does no payload */
  ASSERT_EQ(match(f, "{\"color\":null}"), 1);
  ASSERT_EQ(match(f, "{\"color\":[]}"), 1);
  ASSERT_EQ(match(f, "{\"color\":5}"), 1);             /* another type is not in the list */
  ASSERT_EQ(match(f, "{\"color\":[\"green\",\"pink\"]}"), 1);
  ASSERT_EQ(match(f, "{\"color\":[\"green\",\"blue\"]}"), 0); /* an element is listed */
  const char *n = "{\"must\":{\"key\":\"n\",\"match\":{\"except\":[1,2]}}}";
  ASSERT_EQ(match(n, "{\"n\":3}"), 1);
  ASSERT_EQ(match(n, "{\"n\":2}"), 0);
  ASSERT_EQ(match(n, "{\"n\":2.0}"), 0);
  ASSERT_EQ(match(n, "{\"n\":2.5}"), 1);
  const char *empty = "{\"must\":{\"key\":\"n\",\"match\":{\"except\":[]}}}";
  ASSERT_EQ(match(empty, "{\"n\":3}"), 1);
  ASSERT_EQ(match(empty, "{}"), 1);
}

/* ---- match text ---- */

TEST(match_text_substring) {
  const char *f = "{\"must\":{\"key\":\"d\",\"match\":{\"text\":\"quick brown\"}}}";
  ASSERT_EQ(match(f, "{\"d\":\"the quick brown fox\"}"), 1);
  ASSERT_EQ(match(f, "{\"d\":\"quick brown\"}"), 1);
  ASSERT_EQ(match(f, "{\"d\":\"the Quick brown fox\"}"), 0);
  ASSERT_EQ(match(f, "{\"d\":\"quick  brown\"}"), 0);
  ASSERT_EQ(match(f, "{\"d\":[\"a\",\"very quick brown dog\"]}"), 1);
  ASSERT_EQ(match(f, "{\"d\":5}"), 0);
  ASSERT_EQ(match(f, "{}"), 0);
  const char *empty = "{\"must\":{\"key\":\"d\",\"match\":{\"text\":\"\"}}}";
  ASSERT_EQ(match(empty, "{\"d\":\"\"}"), 1);
  ASSERT_EQ(match(empty, "{\"d\":\"anything\"}"), 1);
  ASSERT_EQ(match(empty, "{\"d\":1}"), 0);
}

/* ---- range ---- */

TEST(range_bounds) {
  const char *f = "{\"must\":{\"key\":\"p\",\"range\":{\"gte\":10,\"lt\":20.5}}}";
  ASSERT_EQ(match(f, "{\"p\":10}"), 1);
  ASSERT_EQ(match(f, "{\"p\":9.999}"), 0);
  ASSERT_EQ(match(f, "{\"p\":20}"), 1);
  ASSERT_EQ(match(f, "{\"p\":20.5}"), 0);
  ASSERT_EQ(match(f, "{\"p\":15.25}"), 1);
  ASSERT_EQ(match(f, "{\"p\":\"15\"}"), 0);
  ASSERT_EQ(match(f, "{\"p\":true}"), 0);
  ASSERT_EQ(match(f, "{\"p\":null}"), 0);
  ASSERT_EQ(match(f, "{}"), 0);
  ASSERT_EQ(match(f, "{\"p\":[1,2,17]}"), 1);
  ASSERT_EQ(match(f, "{\"p\":[1,2,30]}"), 0);
  const char *g = "{\"must\":{\"key\":\"p\",\"range\":{\"gt\":1,\"lte\":2}}}";
  ASSERT_EQ(match(g, "{\"p\":1}"), 0);
  ASSERT_EQ(match(g, "{\"p\":1.0000001}"), 1);
  ASSERT_EQ(match(g, "{\"p\":2}"), 1);
  ASSERT_EQ(match(g, "{\"p\":2.0}"), 1);
  ASSERT_EQ(match(g, "{\"p\":2.0001}"), 0);
  ASSERT_EQ(match("{\"must\":{\"key\":\"p\",\"range\":{\"lt\":-1e300}}}", "{\"p\":-1e301}"), 1);
}

TEST(range_empty_and_null_bounds) {
  /* No bounds: any number, as in Qdrant. A null bound is no bound. */
  const char *f = "{\"must\":{\"key\":\"p\",\"range\":{}}}";
  ASSERT_EQ(match(f, "{\"p\":-5}"), 1);
  ASSERT_EQ(match(f, "{\"p\":\"x\"}"), 0);
  const char *g = "{\"must\":{\"key\":\"p\",\"range\":{\"gt\":null,\"lt\":3}}}";
  ASSERT_EQ(match(g, "{\"p\":-5}"), 1);
  ASSERT_EQ(match(g, "{\"p\":3}"), 0);
}

/* ---- is_empty / is_null ---- */

TEST(is_empty) {
  const char *f = "{\"must\":{\"is_empty\":{\"key\":\"tags\"}}}";
  ASSERT_EQ(match(f, "{}"), 1);
  ASSERT_EQ(match(f, NULL), 1);
  ASSERT_EQ(match(f, "{\"tags\":null}"), 1);
  ASSERT_EQ(match(f, "{\"tags\":[]}"), 1);
  ASSERT_EQ(match(f, "{\"tags\":[null]}"), 0);
  ASSERT_EQ(match(f, "{\"tags\":[\"a\"]}"), 0);
  ASSERT_EQ(match(f, "{\"tags\":\"\"}"), 0);
  ASSERT_EQ(match(f, "{\"tags\":0}"), 0);
  ASSERT_EQ(match(f, "{\"tags\":{}}"), 0);
}

TEST(is_null) {
  const char *f = "{\"must\":{\"is_null\":{\"key\":\"r\"}}}";
  ASSERT_EQ(match(f, "{\"r\":null}"), 1);
  ASSERT_EQ(match(f, "{}"), 0);
  ASSERT_EQ(match(f, NULL), 0);
  ASSERT_EQ(match(f, "{\"r\":[]}"), 0);
  ASSERT_EQ(match(f, "{\"r\":[null]}"), 0);
  ASSERT_EQ(match(f, "{\"r\":0}"), 0);
  ASSERT_EQ(match(f, "{\"r\":\"\"}"), 0);
}

/* ---- paths ---- */

TEST(nested_key_paths) {
  const char *f = "{\"must\":{\"key\":\"a.b.c\",\"match\":{\"value\":1}}}";
  ASSERT_EQ(match(f, "{\"a\":{\"b\":{\"c\":1}}}"), 1);
  ASSERT_EQ(match(f, "{\"a\":{\"b\":{\"c\":2}}}"), 0);
  ASSERT_EQ(match(f, "{\"a\":{\"b\":1}}"), 0);
  ASSERT_EQ(match(f, "{\"a\":{\"b\":{\"c\":[0,1]}}}"), 1);
  ASSERT_EQ(match(f, "{\"a.b.c\":1}"), 0);
  ASSERT_EQ(match(f, "{\"a\":5}"), 0);
  /* A plain key step does not look inside arrays (Qdrant's json paths). */
  ASSERT_EQ(match(f, "{\"a\":[{\"b\":{\"c\":1}}]}"), 0);
}

TEST(array_paths) {
  const char *f = "{\"must\":{\"key\":\"cities[].pop\",\"range\":{\"gt\":1000000}}}";
  ASSERT_EQ(match(f, "{\"cities\":[{\"pop\":10},{\"pop\":9000000}]}"), 1);
  ASSERT_EQ(match(f, "{\"cities\":[{\"pop\":10},{\"pop\":900}]}"), 0);
  ASSERT_EQ(match(f, "{\"cities\":[]}"), 0);
  ASSERT_EQ(match(f, "{\"cities\":{\"pop\":9000000}}"), 0); /* [] wants an array */
  ASSERT_EQ(match(f, "{\"cities\":[1,\"x\",null,{\"pop\":[5,2000000]}]}"), 1);
  const char *two = "{\"must\":{\"key\":\"a[].b[].c\",\"match\":{\"value\":\"x\"}}}";
  ASSERT_EQ(match(two, "{\"a\":[{\"b\":[{\"c\":\"y\"}]},{\"b\":[{\"c\":\"z\"},{\"c\":\"x\"}]}]}"), 1);
  ASSERT_EQ(match(two, "{\"a\":[{\"b\":[{\"c\":\"y\"}]},{\"b\":[{\"c\":\"z\"}]}]}"), 0);
  const char *idx = "{\"must\":{\"key\":\"a[1].b\",\"match\":{\"value\":2}}}";
  ASSERT_EQ(match(idx, "{\"a\":[{\"b\":1},{\"b\":2}]}"), 1);
  ASSERT_EQ(match(idx, "{\"a\":[{\"b\":2},{\"b\":1}]}"), 0);
  ASSERT_EQ(match(idx, "{\"a\":[{\"b\":2}]}"), 0);
  const char *tail = "{\"must\":{\"key\":\"t[]\",\"match\":{\"value\":\"q\"}}}";
  ASSERT_EQ(match(tail, "{\"t\":[\"p\",\"q\"]}"), 1);
  ASSERT_EQ(match(tail, "{\"t\":\"q\"}"), 0);
}

TEST(array_paths_is_empty_and_except) {
  const char *e = "{\"must\":{\"is_empty\":{\"key\":\"a[].b\"}}}";
  ASSERT_EQ(match(e, "{\"a\":[{\"b\":null},{\"b\":[]},{}]}"), 1);
  ASSERT_EQ(match(e, "{\"a\":[{\"b\":null},{\"b\":1}]}"), 0);
  const char *n = "{\"must\":{\"is_null\":{\"key\":\"a[].b\"}}}";
  ASSERT_EQ(match(n, "{\"a\":[{\"b\":1},{\"b\":null}]}"), 1);
  ASSERT_EQ(match(n, "{\"a\":[{\"b\":1},{}]}"), 0);
  const char *x = "{\"must\":{\"key\":\"a[].b\",\"match\":{\"except\":[1]}}}";
  ASSERT_EQ(match(x, "{\"a\":[{\"b\":2},{\"b\":3}]}"), 1);
  ASSERT_EQ(match(x, "{\"a\":[{\"b\":2},{\"b\":1}]}"), 0);
  ASSERT_EQ(match(x, "{\"a\":[]}"), 1);
}

/* ---- combinations ---- */

TEST(empty_filter_matches_all) {
  ASSERT_EQ(match("{}", "{\"a\":1}"), 1);
  ASSERT_EQ(match("{}", NULL), 1);
  ASSERT_EQ(match("{\"must\":[],\"should\":[],\"must_not\":[]}", "{}"), 1);
  ASSERT_EQ(match("{\"must\":null,\"should\":null,\"must_not\":null}", "{}"), 1);
  ASSERT_EQ(match("{\"must\":[{}]}", "{}"), 1); /* an empty nested filter */
  ASSERT_EQ(match(" { } ", "{}"), 1);
  /* NULL filter means no filter. */
  qv_point_id id = num_id(1);
  ASSERT_EQ(filter_match(NULL, &id, NULL), 1);
}

TEST(must_should_must_not) {
  const char *f =
      "{\"must\":[{\"key\":\"a\",\"match\":{\"value\":1}},{\"key\":\"b\",\"match\":{\"value\":2}}],"
      "\"should\":[{\"key\":\"c\",\"match\":{\"value\":\"x\"}},{\"key\":\"c\",\"match\":{\"value\":\"y\"}}],"
      "\"must_not\":[{\"key\":\"d\",\"match\":{\"value\":true}}]}";
  ASSERT_EQ(match(f, "{\"a\":1,\"b\":2,\"c\":\"x\"}"), 1);
  ASSERT_EQ(match(f, "{\"a\":1,\"b\":2,\"c\":\"y\",\"d\":false}"), 1);
  ASSERT_EQ(match(f, "{\"a\":1,\"b\":2,\"c\":\"z\"}"), 0);        /* no should */
  ASSERT_EQ(match(f, "{\"a\":1,\"c\":\"x\"}"), 0);                /* a must fails */
  ASSERT_EQ(match(f, "{\"a\":1,\"b\":2,\"c\":\"x\",\"d\":true}"), 0); /* must_not */
  const char *s = "{\"should\":[{\"key\":\"c\",\"match\":{\"value\":1}}]}";
  ASSERT_EQ(match(s, "{}"), 0);
  ASSERT_EQ(match(s, "{\"c\":1}"), 1);
  const char *mn = "{\"must_not\":[{\"key\":\"c\",\"match\":{\"value\":1}},{\"is_null\":{\"key\":\"z\"}}]}";
  ASSERT_EQ(match(mn, "{}"), 1);
  ASSERT_EQ(match(mn, "{\"c\":1}"), 0);
  ASSERT_EQ(match(mn, "{\"z\":null}"), 0);
  ASSERT_EQ(match(mn, "{\"c\":2,\"z\":0}"), 1);
}

TEST(single_condition_without_list) {
  const char *f = "{\"should\":{\"key\":\"a\",\"match\":{\"value\":1}},"
                  "\"must_not\":{\"key\":\"b\",\"match\":{\"value\":1}}}";
  ASSERT_EQ(match(f, "{\"a\":1}"), 1);
  ASSERT_EQ(match(f, "{\"a\":1,\"b\":1}"), 0);
  ASSERT_EQ(match(f, "{\"a\":2}"), 0);
}

TEST(nested_filters) {
  /* (a = 1 or b = 1) and not (c = 1 and d = 1) */
  const char *f =
      "{\"must\":[{\"should\":[{\"key\":\"a\",\"match\":{\"value\":1}},{\"key\":\"b\",\"match\":{\"value\":1}}]},"
      "{\"must_not\":[{\"must\":[{\"key\":\"c\",\"match\":{\"value\":1}},{\"key\":\"d\",\"match\":{\"value\":1}}]}]}]}";
  ASSERT_EQ(match(f, "{\"a\":1}"), 1);
  ASSERT_EQ(match(f, "{\"b\":1,\"c\":1}"), 1);
  ASSERT_EQ(match(f, "{\"b\":1,\"c\":1,\"d\":1}"), 0);
  ASSERT_EQ(match(f, "{\"c\":1}"), 0);
}

TEST(nested_condition_per_element) {
  /* Qdrant's "nested": both conditions must hold for the same element. */
  const char *f = "{\"must\":{\"nested\":{\"key\":\"dinners\",\"filter\":{\"must\":["
                  "{\"key\":\"food\",\"match\":{\"value\":\"meat\"}},"
                  "{\"key\":\"liked\",\"match\":{\"value\":true}}]}}}}";
  ASSERT_EQ(match(f, "{\"dinners\":[{\"food\":\"meat\",\"liked\":false},{\"food\":\"fish\",\"liked\":true}]}"), 0);
  ASSERT_EQ(match(f, "{\"dinners\":[{\"food\":\"fish\",\"liked\":true},{\"food\":\"meat\",\"liked\":true}]}"), 1);
  ASSERT_EQ(match(f, "{\"dinners\":[]}"), 0);
  ASSERT_EQ(match(f, "{}"), 0);
  ASSERT_EQ(match(f, "{\"dinners\":[1,\"x\"]}"), 0);
  /* The flat path form matches across elements. */
  const char *flat = "{\"must\":[{\"key\":\"dinners[].food\",\"match\":{\"value\":\"meat\"}},"
                     "{\"key\":\"dinners[].liked\",\"match\":{\"value\":true}}]}";
  ASSERT_EQ(match(flat, "{\"dinners\":[{\"food\":\"meat\",\"liked\":false},{\"food\":\"fish\",\"liked\":true}]}"), 1);
}

/* ---- has_id ---- */

TEST(has_id_numbers_and_uuids) {
  const char *f = "{\"must\":{\"has_id\":[5,1,\"936DA01F-9ABD-4D9D-80C7-02AF85C822A8\",3,"
                  "\"18446744073709551615\"]}}";
  qv_point_id id = num_id(3);
  ASSERT_EQ(match_id(f, "{}", &id), 1);
  id = num_id(5);
  ASSERT_EQ(match_id(f, NULL, &id), 1);
  id = num_id(4);
  ASSERT_EQ(match_id(f, "{}", &id), 0);
  id = num_id(UINT64_MAX);
  ASSERT_EQ(match_id(f, "{}", &id), 1);
  ASSERT_OK(qv_point_id_parse(&id, "936da01f-9abd-4d9d-80c7-02af85c822a8"));
  ASSERT_EQ(match_id(f, "{}", &id), 1);
  ASSERT_OK(qv_point_id_parse(&id, "936da01f-9abd-4d9d-80c7-02af85c822a9"));
  ASSERT_EQ(match_id(f, "{}", &id), 0);
  /* A uuid whose bytes are all zero is not the number 0. */
  ASSERT_OK(qv_point_id_parse(&id, "00000000-0000-0000-0000-000000000000"));
  ASSERT_EQ(match_id("{\"must\":{\"has_id\":[0]}}", "{}", &id), 0);
  id = num_id(0);
  ASSERT_EQ(match_id("{\"must\":{\"has_id\":[0]}}", "{}", &id), 1);
  ASSERT_EQ(match_id("{\"must_not\":{\"has_id\":[0]}}", "{}", &id), 0);
}

TEST(has_id_empty_and_no_id) {
  qv_point_id id = num_id(1);
  ASSERT_EQ(match_id("{\"must\":{\"has_id\":[]}}", "{}", &id), 0);
  ASSERT_EQ(match_id("{\"must_not\":{\"has_id\":[]}}", "{}", &id), 1);
  const char *f = "{\"must\":{\"has_id\":[1]}}";
  qv_filter *flt = NULL;
  ASSERT_OK(qv_filter_parse(&flt, f, strlen(f), NULL));
  ASSERT_EQ(filter_match(flt, NULL, NULL), 0);
  qv_filter_free(flt);
}

TEST(has_id_many) {
  char buf[16384];
  size_t off = (size_t)snprintf(buf, sizeof buf, "{\"must\":{\"has_id\":[");
  for (int i = 999; i >= 0; i--) off += (size_t)snprintf(buf + off, sizeof buf - off, "%d,", i * 2);
  snprintf(buf + off - 1, sizeof buf - off + 1, "]}}");
  for (uint64_t k = 0; k < 2000; k += 13) {
    qv_point_id id = num_id(k);
    ASSERT_EQ(match_id(buf, "{}", &id), k % 2 == 0);
  }
}

/* ---- filter_from_json ---- */

TEST(from_decoded_json) {
  json_t *j = json_pack("{s:[{s:s,s:{s:i}}]}", "must", "key", "n", "match", "value", 7);
  ASSERT(j != NULL);
  qv_filter *f = NULL;
  ASSERT_OK(filter_from_json(&f, j, NULL));
  json_decref(j); /* the filter owns copies of everything it needs */
  json_t *p = json_pack("{s:i}", "n", 7);
  qv_point_id id = num_id(1);
  ASSERT_EQ(filter_match(f, &id, p), 1);
  json_decref(p);
  qv_filter_free(f);
  qv_filter_free(NULL);
  qv_error e;
  ASSERT_STATUS(filter_from_json(&f, NULL, &e), QV_EINVAL);
  ASSERT_STATUS(qv_filter_parse(NULL, "{}", 2, &e), QV_EINVAL);
}

/* ---- errors ---- */

TEST(error_not_json) {
  qv_error e;
  ASSERT_STATUS(parse("{", &e), QV_EJSON);
  ASSERT_EQ(e.status, QV_EJSON);
  ASSERT_STATUS(parse("", &e), QV_EJSON);
  ASSERT_STATUS(parse("{\"must\":[}", &e), QV_EJSON);
  ASSERT_STATUS(parse("{} x", &e), QV_EJSON);
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"value\":\"\\u0000\"}}]}", &e), QV_EJSON);
  ASSERT_STATUS(parse("{\"a\":\"\xff\"}", &e), QV_EJSON);
  qv_filter *f = NULL;
  ASSERT_STATUS(qv_filter_parse(&f, "{}", 1, &e), QV_EJSON); /* length is honoured */
  ASSERT_STATUS(qv_filter_parse(&f, NULL, 0, &e), QV_EJSON);
  ASSERT(f == NULL);
}

TEST(error_not_a_filter) {
  qv_error e;
  ASSERT_STATUS(parse("5", &e), QV_EFILTER);
  ASSERT_MSG(e, "must be an object");
  ASSERT_STATUS(parse("[]", &e), QV_EFILTER);
  ASSERT_STATUS(parse("null", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"mustn't\":[]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "unknown key \"mustn't\"");
  ASSERT_STATUS(parse("{\"key\":\"a\",\"match\":{\"value\":1}}", &e), QV_EFILTER);
  ASSERT_MSG(e, "put the condition in \"must\"");
  ASSERT_STATUS(parse("{\"must\":5}", &e), QV_EFILTER);
  ASSERT_MSG(e, "must: must be a condition or a list");
  ASSERT_STATUS(parse("{\"must\":[5]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "must[0]: a condition must be an object");
  ASSERT_STATUS(parse("{\"min_should\":{\"conditions\":[],\"min_count\":1}}", &e), QV_EFILTER);
  ASSERT_MSG(e, "min_should");
}

TEST(error_unknown_condition) {
  qv_error e;
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"value\":1}},{\"frobnicate\":{}}]}", &e),
                QV_EFILTER);
  ASSERT_MSG(e, "must[1]: unknown condition \"frobnicate\"");
  ASSERT_STATUS(parse("{\"should\":[{\"key\":\"loc\",\"geo_radius\":{}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "should[0]: \"geo_radius\" conditions are not supported");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"tags\",\"values_count\":{\"gt\":1}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "values_count");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"phrase\":\"x y\"}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "unknown match kind \"phrase\"");
  ASSERT_STATUS(parse("{\"must\":[{\"has_id\":[1],\"key\":\"a\"}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "cannot be in the same condition");
  ASSERT_STATUS(parse("{\"must\":[{\"must\":[],\"is_null\":{\"key\":\"a\"}}]}", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"is_null\":{\"key\":\"a\",\"extra\":1}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "unknown field \"extra\"");
  ASSERT_STATUS(parse("{\"must\":[{\"nested\":{\"key\":\"a\"}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "needs a \"filter\"");
}

TEST(error_field_condition_shape) {
  qv_error e;
  ASSERT_STATUS(parse("{\"must\":[{\"match\":{\"value\":1}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "must[0]: condition needs a \"key\"");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\"}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "needs \"match\" or \"range\"");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"value\":1},\"range\":{\"gt\":1}}]}", &e),
                QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"key\":5,\"match\":{\"value\":1}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "\"key\" must be a string");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":[1]}]}", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "match needs one of");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"value\":1,\"any\":[1]}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "use one");
}

TEST(error_wrong_value_types) {
  qv_error e;
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"range\":{\"gt\":1}},"
                      "{\"key\":\"a\",\"range\":{\"gt\":\"5\"}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "must[1]: range needs a number for \"gt\"");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"range\":{\"lte\":true}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "range needs a number for \"lte\"");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"range\":{\"between\":1}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "unknown range bound \"between\"");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"range\":5}]}", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"value\":1.5}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "match \"value\" must be a string, integer or bool");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"value\":null}}]}", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"value\":[1]}}]}", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"any\":\"x\"}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "must be a list");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"any\":[1,{}]}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "match \"any\"[1]");
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"except\":[null]}}]}", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"a\",\"match\":{\"text\":1}}]}", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"is_empty\":\"a\"}]}", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"is_empty\":{}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "needs a \"key\"");
}

TEST(error_has_id) {
  qv_error e;
  ASSERT_STATUS(parse("{\"must\":[{\"has_id\":5}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "must be a list of ids");
  ASSERT_STATUS(parse("{\"must\":[{\"has_id\":[1,-2]}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "has_id[1]: point ids cannot be negative");
  ASSERT_STATUS(parse("{\"must\":[{\"has_id\":[\"not-a-uuid\"]}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "has_id[0]: \"not-a-uuid\" is not a point id");
  ASSERT_STATUS(parse("{\"must\":[{\"has_id\":[1.5]}]}", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"has_id\":[\"18446744073709551616\"]}]}", &e), QV_EFILTER);
  ASSERT_STATUS(parse("{\"must\":[{\"has_id\":[\"936DA01F-9ABD-4D9D-80C7-02AF85C822AZ\"]}]}", &e),
                QV_EFILTER);
  /* Above 2^63-1 a JSON number does not fit jansson's integer: not valid for us. */
  ASSERT_STATUS(parse("{\"must\":[{\"has_id\":[18446744073709551615]}]}", &e), QV_EJSON);
}

TEST(error_bad_keys) {
  static const char *const bad[] = {"a..b", ".a", "a.", "a[", "a[x]", "a[]b", "a]", "[]",
                                    "a[-1]", "a[1", "a.[]", "a[99999999999999999999999]"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char f[256];
    qv_error e;
    snprintf(f, sizeof f, "{\"must\":[{\"key\":\"%s\",\"match\":{\"value\":1}}]}", bad[i]);
    int st = parse(f, &e);
    if (st != QV_EFILTER) fprintf(stderr, "  key \"%s\" accepted\n", bad[i]);
    ASSERT_STATUS(st, QV_EFILTER);
    ASSERT_MSG(e, "must[0]: ");
  }
  qv_error e;
  ASSERT_STATUS(parse("{\"must\":[{\"key\":\"\",\"match\":{\"value\":1}}]}", &e), QV_EFILTER);
  ASSERT_MSG(e, "\"key\" is empty");
  /* 64 steps are fine, 65 are not. */
  char f[1024];
  size_t off = (size_t)snprintf(f, sizeof f, "{\"must\":{\"key\":\"");
  for (int i = 0; i < 64; i++) off += (size_t)snprintf(f + off, sizeof f - off, "%sk", i ? "." : "");
  snprintf(f + off, sizeof f - off, "\",\"match\":{\"value\":1}}}");
  ASSERT_OK(parse(f, &e));
  snprintf(f + off, sizeof f - off, ".k\",\"match\":{\"value\":1}}}");
  ASSERT_STATUS(parse(f, &e), QV_EFILTER);
  ASSERT_MSG(e, "more than 64 steps");
}

static char *deep_filter(int depth, int as_list) {
  size_t cap = (size_t)depth * 16 + 64;
  char *s = malloc(cap);
  if (!s) return NULL;
  size_t off = 0;
  for (int i = 0; i < depth; i++) off += (size_t)snprintf(s + off, cap - off, as_list ? "{\"must\":[" : "{\"must\":");
  off += (size_t)snprintf(s + off, cap - off, "{}");
  for (int i = 0; i < depth; i++) off += (size_t)snprintf(s + off, cap - off, as_list ? "]}" : "}");
  return s;
}

TEST(error_nesting_depth) {
  qv_error e;
  char *s = deep_filter(31, 1); /* 31 levels plus the innermost {} = 32 filters */
  ASSERT(s != NULL);
  ASSERT_OK(parse(s, &e));
  free(s);
  s = deep_filter(32, 1);
  ASSERT_STATUS(parse(s, &e), QV_EFILTER);
  ASSERT_MSG(e, "nested deeper than 32");
  free(s);
  s = deep_filter(1000, 1);
  ASSERT_STATUS(parse(s, &e), QV_EFILTER);
  free(s);
  s = deep_filter(1000, 0);
  ASSERT_STATUS(parse(s, &e), QV_EFILTER);
  free(s);
  s = deep_filter(100000, 1); /* past jansson's own depth limit: still a filter error */
  ASSERT_STATUS(parse(s, &e), QV_EFILTER);
  free(s);
  /* "nested" conditions count towards the same limit. */
  size_t cap = 40 * 64;
  s = malloc(cap);
  ASSERT(s != NULL);
  size_t off = 0;
  for (int i = 0; i < 40; i++)
    off += (size_t)snprintf(s + off, cap - off, "{\"must\":{\"nested\":{\"key\":\"a\",\"filter\":");
  off += (size_t)snprintf(s + off, cap - off, "{}");
  for (int i = 0; i < 40; i++) off += (size_t)snprintf(s + off, cap - off, "}}}");
  ASSERT_STATUS(parse(s, &e), QV_EFILTER);
  free(s);
}

TEST(error_null_err_is_fine) {
  qv_filter *f = NULL;
  ASSERT_STATUS(qv_filter_parse(&f, "{\"must\":[{\"x\":1}]}", strlen("{\"must\":[{\"x\":1}]}"), NULL), QV_EFILTER);
  ASSERT_STATUS(qv_filter_parse(&f, "{", 1, NULL), QV_EJSON);
  ASSERT(f == NULL);
}

TEST_MAIN(T(match_value_string), T(match_value_int_and_real), T(match_value_bool),
          T(match_value_string_with_nul_in_payload), T(match_any), T(match_any_large_list),
          T(match_any_empty_list_matches_nothing), T(match_except), T(match_text_substring),
          T(range_bounds), T(range_empty_and_null_bounds), T(is_empty), T(is_null),
          T(nested_key_paths), T(array_paths), T(array_paths_is_empty_and_except),
          T(empty_filter_matches_all), T(must_should_must_not), T(single_condition_without_list),
          T(nested_filters), T(nested_condition_per_element), T(has_id_numbers_and_uuids),
          T(has_id_empty_and_no_id), T(has_id_many), T(from_decoded_json), T(error_not_json),
          T(error_not_a_filter), T(error_unknown_condition), T(error_field_condition_shape),
          T(error_wrong_value_types), T(error_has_id), T(error_bad_keys), T(error_nesting_depth),
          T(error_null_err_is_fine))
