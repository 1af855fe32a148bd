/* vecjson: vector lists taken out of request bodies decode to exactly the floats jansson
 * would have given, and nothing else in a body changes meaning. */
#include <jansson.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/vecjson.h"
#include "test.h"

/* Rewrites body; returns the parsed rewritten body (NULL when nothing was rewritten). */
static json_t *rewrite(const char *body, vecjson *vt) {
  size_t len;
  char *fast = vecjson_rewrite(body, strlen(body), &len, vt);
  if (!fast) return NULL;
  json_t *j = json_loadb(fast, len, JSON_REJECT_DUPLICATES, NULL);
  ASSERT(j != NULL);
  ASSERT(strlen(fast) == len);
  free(fast);
  return j;
}

/* The floats jansson gives for a list. */
static void jansson_floats(const json_t *arr, float *out) {
  for (size_t i = 0; i < json_array_size(arr); i++) out[i] = (float)json_number_value(json_array_get(arr, i));
}

TEST(vectors_decode_to_the_floats_jansson_gives) {
  const char *body = "{\"query\": [0, -0, 1, -17, 0.1, 3.3e38, 1e-50, 0.10000000149011612, "
                     "123456789012345678, -2.5E+3, 7e0, 0.30000001192092896], \"limit\": 3}";
  json_t *plain = json_loads(body, 0, NULL);
  vecjson vt;
  json_t *j = rewrite(body, &vt);
  ASSERT(plain && j);
  json_t *q = json_object_get(j, "query");
  ASSERT(vecjson_is(q));
  ASSERT(json_integer_value(json_object_get(j, "limit")) == 3);
  float want[12], got[12];
  jansson_floats(json_object_get(plain, "query"), want);
  size_t n;
  ASSERT_OK(vecjson_floats(&vt, q, got, 12, &n));
  ASSERT_EQ(n, 12);
  ASSERT(memcmp(want, got, sizeof want) == 0); /* bit for bit, -0 included */
  ASSERT_STATUS(vecjson_floats(&vt, q, got, 11, &n), QV_EDIM);
  ASSERT_EQ(n, 12);
  json_decref(j);
  json_decref(plain);
  vecjson_free(&vt);
}

/* Random numbers of every shape (1 to 18 digits, a point anywhere, exponents -40..19,
 * signs, zeros): the fast path and strtod's give jansson's floats bit for bit. */
TEST(random_numbers_decode_as_jansson_decodes_them) {
  enum { N = 20000 };
  char *body = malloc(N * 48 + 32), *p = body;
  uint64_t x = 0x243F6A8885A308D3ULL;
  p += sprintf(p, "{\"query\": [");
  for (int i = 0; i < N; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    int digits = 1 + (int)(x % 18), point = (int)((x >> 8) % (uint64_t)(digits + 1));
    if (i) *p++ = ',';
    if ((x >> 16) & 1) *p++ = '-';
    uint64_t y = x;
    for (int d = 0; d < digits; d++) {
      if (d == point && d > 0) *p++ = '.';
      y = y * 6364136223846793005ULL + 1442695040888963407ULL;
      int dig = (int)((y >> 33) % 10);
      if (d == 0) dig = (x >> 20) % 7 == 0 ? 0 : 1 + dig % 9;
      *p++ = (char)('0' + dig);
      if (d == 0 && dig == 0 && digits > 1) { /* JSON: no leading zeros, so "0." then the rest */
        *p++ = '.';
        point = -1;
      }
    }
    if ((x >> 24) % 3 == 0) p += sprintf(p, "e%d", (int)((x >> 32) % 60) - 40); /* stays in float range */
  }
  p += sprintf(p, "]}");
  json_t *plain = json_loads(body, 0, NULL);
  ASSERT(plain != NULL);
  vecjson vt;
  json_t *j = rewrite(body, &vt);
  ASSERT(j != NULL);
  float *want = malloc(N * sizeof *want), *got = malloc(N * sizeof *got);
  jansson_floats(json_object_get(plain, "query"), want);
  size_t n;
  ASSERT_OK(vecjson_floats(&vt, json_object_get(j, "query"), got, N, &n));
  for (size_t i = 0; i < N; i++) {
    if (memcmp(&want[i], &got[i], sizeof *got)) {
      json_t *t = json_array_get(json_object_get(plain, "query"), i);
      fprintf(stderr, "  %.60s\n  #%zu: %.17g vs %.9g (jansson %.9g)\n", body, i, json_number_value(t), (double)got[i], (double)want[i]);
    }
    ASSERT(memcmp(&want[i], &got[i], sizeof *got) == 0);
  }
  free(want);
  free(got);
  free(body);
  json_decref(j);
  json_decref(plain);
  vecjson_free(&vt);
}

/* The double of every real equals strtod's bit for bit, on the shapes that take the
 * extended-precision path: Python's repr (shortest round trip, up to 17 digits) of random
 * doubles and of float32 values, %.19g and %.18e forms, values right next to double
 * halfway points (a double plus or minus a quarter, half and three quarters of its ulp,
 * printed with 25 digits), and integers with exponents to +-27. */
TEST(reals_parse_to_strtods_double) {
  uint64_t x = 0x9E3779B97F4A7C15ULL;
  char buf[64];
  size_t checked = 0;
  for (int i = 0; i < 400000; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    double v;
    int shape = (int)(x % 6);
    uint64_t bits = x * 0x2545F4914F6CDD1DULL;
    double mant = (double)(bits >> 11) / 9007199254740992.0; /* [0, 1) */
    int e10 = (int)((x >> 40) % 61) - 35;                        /* 10^-35 .. 10^25 */
    v = (mant + 0.05) * pow(10.0, e10);
    switch (shape) {
    case 0: snprintf(buf, sizeof buf, "%.17g", v); break;
    case 1: snprintf(buf, sizeof buf, "%.9g", (double)(float)v); break;
    case 2: snprintf(buf, sizeof buf, "%.17g", (double)(float)v); break;
    case 3: snprintf(buf, sizeof buf, "%.19g", v); break;
    case 4: snprintf(buf, sizeof buf, "%.18e", v); break;
    default: { /* near a halfway point between v and the next double */
      double up = nextafter(v, INFINITY), h = (up - v) * ((double)((x >> 50) % 4) / 4.0);
      snprintf(buf, sizeof buf, "%.24Le", (long double)v + (long double)h);
      break;
    }
    }
    if (!strpbrk(buf, ".eE")) strcat(buf, ".0"); /* a real, not the integer path */
    if ((x >> 60) & 1) { /* negative */
      memmove(buf + 1, buf, strlen(buf) + 1);
      buf[0] = '-';
    }
    char *e1, *e2;
    double got;
    errno = 0;
    double want = strtod(buf, &e2);
    int rc = vecjson_parse_number(buf, &e1, &got);
    if (rc || e1 != e2 || memcmp(&got, &want, sizeof got))
      fprintf(stderr, "  %s: rc %d, %.17g vs strtod %.17g\n", buf, rc, got, want);
    ASSERT_EQ(rc, 0);
    ASSERT(e1 == e2);
    ASSERT(memcmp(&got, &want, sizeof got) == 0);
    checked++;
  }
  for (int e = -27; e <= 27; e++)
    for (uint64_t m = 1; m < UINT64_MAX / 10; m = m * 10 + (m % 7)) {
      snprintf(buf, sizeof buf, "%llue%d", (unsigned long long)m, e);
      char *e1, *e2;
      double got, want = strtod(buf, &e2);
      ASSERT_EQ(vecjson_parse_number(buf, &e1, &got), 0);
      ASSERT(e1 == e2);
      ASSERT(memcmp(&got, &want, sizeof got) == 0);
      checked++;
    }
  ASSERT(checked > 400000);
}

/* 19-digit decimals within half an ulp64 of a halfway point between two doubles (found
 * with exact rational arithmetic): extended precision rounds them onto the halfway point,
 * where its rounding to double could go the wrong way; they must still be strtod's. */
TEST(reals_next_to_halfway_points_are_strtods) {
  static const char *cases[] = {
      "3871517600077859685e-11",
      "7781989817613599139e-24",
      "8697610032864445202e-15",
      "9171819180904664790e-15",
      "8736836877824339688e-21",
      "9668986691940234778e-15",
      "3058010088753290745e-16",
      "6811549070522142646e-18",
      "5535752864916691906e-13",
      "8428217545076281577e-11",
      "8937839810509593056e-23",
      "5938657375493203858e-16",
      "3465599313595861914e-5",
      "6305377108408464354e-20",
      "9868321176964247656e-5",
      "3408434406671299303e-26",
      "8975310584912408958e-13",
      "8462865580353094545e-21",
      "6919506556705383171e-19",
      "9602177246481349837e1",
      "9377730542743893061e-18",
      "7620423490750945916e-16",
      "5637211873935526530e-22",
      "8368801601292816169e-23",
      "7720499984260429261e-21",
      "9573165725625462308e-18",
      "8533037763943139553e-9",
      "6509625747569035781e-17",
      "9763609664189215387e-18",
      "7224896111648508231e-13",
      "9866037092124645710e-25"};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char *e1, *e2;
    double got, want = strtod(cases[i], &e2);
    ASSERT_EQ(vecjson_parse_number(cases[i], &e1, &got), 0);
    ASSERT(e1 == e2);
    if (memcmp(&got, &want, sizeof got)) fprintf(stderr, "  %s: %.17g vs strtod %.17g\n", cases[i], got, want);
    ASSERT(memcmp(&got, &want, sizeof got) == 0);
  }
}

/* Integers at int64's edges read as strtoll reads them, and jansson's refusals stay. */
TEST(integers_at_int64_bounds) {
  static const struct {
    const char *s;
    int rc;
    double v;
  } cases[] = {{"0", 0, 0.0},
               {"-0", 0, 0.0},
               {"9223372036854775807", 0, 9223372036854775807.0},
               {"-9223372036854775807", 0, -9223372036854775807.0},
               {"-9223372036854775808", 0, -9223372036854775808.0},
               {"9223372036854775808", -1, 0},
               {"-9223372036854775809", -1, 0},
               {"9999999999999999999", -1, 0},
               {"18446744073709551616", -1, 0},
               {"1234567890123456789", 0, 1234567890123456789.0}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char *end;
    double got = 12345;
    int rc = vecjson_parse_number(cases[i].s, &end, &got);
    if (rc != cases[i].rc) fprintf(stderr, "  %s: rc %d\n", cases[i].s, rc);
    ASSERT_EQ(rc, cases[i].rc);
    if (rc) continue;
    ASSERT(end == cases[i].s + strlen(cases[i].s));
    ASSERT(memcmp(&got, &cases[i].v, sizeof got) == 0); /* "-0" is +0.0, as strtoll gives */
  }
}

TEST(only_vector_places_are_rewritten) {
  const char *body =
      "{\"points\": [{\"id\": 1, \"vector\": [1, 2], \"payload\": {\"vector\": [3, 4], \"query\": [5]}},"
      " {\"id\": 2, \"vector\": {\"dense\": [6, 7]}}],"
      " \"batch\": {\"ids\": [1, 2], \"vectors\": [[8, 9], [10, 11]], \"payloads\": [{\"vector\": [12]}, null]},"
      " \"filter\": {\"must\": [{\"key\": \"vector\", \"match\": {\"any\": [13, 14]}}]},"
      " \"\\u0071uery\": [15], \"nearest\": [], \"prefetch\": {\"query\": {\"nearest\": [16, 17]}},"
      " \"with_vector\": [18], \"other\": [19], \"mixed\": {\"query\": [20, \"x\"]}, \"deep\": {\"query\": [[21]]}}";
  vecjson vt;
  json_t *j = rewrite(body, &vt);
  ASSERT(j);
  json_t *p0 = json_array_get(json_object_get(j, "points"), 0), *p1 = json_array_get(json_object_get(j, "points"), 1);
  ASSERT(vecjson_is(json_object_get(p0, "vector")));
  ASSERT(json_is_array(json_object_get(json_object_get(p0, "payload"), "vector")));
  ASSERT(json_is_array(json_object_get(json_object_get(p0, "payload"), "query")));
  ASSERT(vecjson_is(json_object_get(json_object_get(p1, "vector"), "dense")));
  json_t *batch = json_object_get(j, "batch");
  ASSERT(json_is_array(json_object_get(batch, "ids")));
  ASSERT(vecjson_is(json_array_get(json_object_get(batch, "vectors"), 1)));
  ASSERT(json_is_array(json_object_get(json_array_get(json_object_get(batch, "payloads"), 0), "vector")));
  json_t *any = json_object_get(json_object_get(json_array_get(json_object_get(json_object_get(j, "filter"), "must"), 0),
                                                "match"),
                                "any");
  ASSERT(json_is_array(any) && json_array_size(any) == 2);
  ASSERT(json_is_array(json_object_get(j, "query")));   /* an escaped key stays as sent */
  ASSERT(json_is_array(json_object_get(j, "nearest"))); /* empty */
  ASSERT(vecjson_is(json_object_get(json_object_get(json_object_get(j, "prefetch"), "query"), "nearest")));
  ASSERT(json_is_array(json_object_get(j, "with_vector")));
  ASSERT(json_is_array(json_object_get(j, "other")));
  ASSERT(json_is_array(json_object_get(json_object_get(j, "mixed"), "query")));
  ASSERT(json_is_array(json_object_get(json_object_get(j, "deep"), "query")));
  /* and each rewritten one carries its own numbers */
  float v[2];
  size_t n;
  ASSERT_OK(vecjson_floats(&vt, json_array_get(json_object_get(batch, "vectors"), 1), v, 2, &n));
  ASSERT(v[0] == 10 && v[1] == 11);
  ASSERT_OK(vecjson_floats(&vt, json_object_get(json_object_get(p1, "vector"), "dense"), v, 2, &n));
  ASSERT(v[0] == 6 && v[1] == 7);
  json_decref(j);
  vecjson_free(&vt);
}

TEST(numbers_jansson_refuses_stay_for_jansson_to_report) {
  vecjson vt;
  size_t len;
  /* a real that overflows and an integer past int64: jansson rejects the whole body */
  const char *bodies[] = {"{\"query\": [1e400, 2]}", "{\"query\": [99999999999999999999]}"};
  for (size_t i = 0; i < 2; i++) {
    ASSERT(vecjson_rewrite(bodies[i], strlen(bodies[i]), &len, &vt) == NULL);
    ASSERT_EQ(vt.n, 0);
    ASSERT(json_loads(bodies[i], 0, NULL) == NULL);
  }
  /* a finite double outside float range is a vector with a bad number, as before */
  json_t *j = rewrite("{\"vector\": [1, 2, 1e39]}", &vt);
  ASSERT(j);
  float v[3];
  size_t n;
  ASSERT_STATUS(vecjson_floats(&vt, json_object_get(j, "vector"), v, 3, &n), QV_ENONFINITE);
  ASSERT_EQ(n, 2);
  json_decref(j);
  vecjson_free(&vt);
}

TEST(malformed_bodies_stay_malformed) {
  const char *bodies[] = {"{\"query\": [1, 2] ", "{\"query\": [1, 2], }", "{\"query\": [1, 2]]}",
                          "[1, 2]", "{\"query\": [1, 2], \"query\": [3]}", "{\"a\": \"[\", \"query\": [1,2]"};
  for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
    vecjson vt;
    size_t len;
    char *fast = vecjson_rewrite(bodies[i], strlen(bodies[i]), &len, &vt);
    json_t *a = json_loads(bodies[i], JSON_REJECT_DUPLICATES, NULL);
    json_t *b = fast ? json_loadb(fast, len, JSON_REJECT_DUPLICATES, NULL) : NULL;
    if (fast) ASSERT(!a == !b);
    json_decref(a);
    json_decref(b);
    free(fast);
    vecjson_free(&vt);
  }
}

TEST(markers_cannot_be_forged_and_read_the_table_given) {
  vecjson vt, other;
  json_t *j = rewrite("{\"query\": [1, 2]}", &vt);
  json_t *k = rewrite("{\"query\": [1, 2, 3]}", &other);
  ASSERT(j && k);
  /* a client's string shaped like a marker, without the process's secret */
  json_t *forged = json_string("\x01qvf32:0000000000000000:0");
  ASSERT(!vecjson_is(forged));
  float v[3];
  size_t n;
  ASSERT_STATUS(vecjson_floats(&vt, forged, v, 2, &n), QV_EINVAL);
  ASSERT_STATUS(vecjson_floats(NULL, json_object_get(j, "query"), v, 2, &n), QV_EINVAL);
  /* a marker is read against the table it is given: here entry 0 holds 2 numbers, not 3 */
  ASSERT_STATUS(vecjson_floats(&vt, json_object_get(k, "query"), v, 3, &n), QV_EDIM);
  json_decref(forged);
  json_decref(j);
  json_decref(k);
  vecjson_free(&vt);
  vecjson_free(&other);
}

TEST(deep_nesting_is_left_to_jansson) {
  size_t depth = VECJSON_MAX_DEPTH + 5;
  char *body = malloc(depth * 8 + 64);
  char *p = body;
  for (size_t i = 0; i < depth; i++) p += sprintf(p, "{\"a\":");
  p += sprintf(p, "{\"query\": [1]}");
  for (size_t i = 0; i < depth; i++) *p++ = '}';
  *p = 0;
  vecjson vt;
  size_t len;
  ASSERT(vecjson_rewrite(body, strlen(body), &len, &vt) == NULL);
  free(body);
}

TEST_MAIN(T(vectors_decode_to_the_floats_jansson_gives), T(random_numbers_decode_as_jansson_decodes_them), T(reals_parse_to_strtods_double), T(reals_next_to_halfway_points_are_strtods), T(integers_at_int64_bounds), T(only_vector_places_are_rewritten),
          T(numbers_jansson_refuses_stay_for_jansson_to_report), T(malformed_bodies_stay_malformed),
          T(markers_cannot_be_forged_and_read_the_table_given), T(deep_nesting_is_left_to_jansson))
