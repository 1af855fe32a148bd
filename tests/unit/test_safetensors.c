/* safetensors reader: images are built in memory (8-byte length, header JSON, data), so every
 * malformed case is exact; one test reads the real all-MiniLM-L6-v2 file when it is cached. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/safetensors.h"
#include "test.h"

typedef struct {
  uint8_t *p;
  size_t n;
  size_t hlen; /* header length as written */
} image;

/* header padded with spaces to hlen bytes (hlen 0: to the next multiple of 8, as the
 * reference writer does), then dlen bytes of data. */
static image make_image(const char *header, size_t hlen, const void *data, size_t dlen) {
  size_t h = strlen(header);
  if (hlen == 0) hlen = (h + 7) / 8 * 8;
  if (hlen < h) hlen = h;
  image im = {malloc(8 + hlen + dlen), 8 + hlen + dlen, hlen};
  if (!im.p) TEST_FAIL_("out of memory");
  for (int i = 0; i < 8; i++) im.p[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
  memcpy(im.p + 8, header, h);
  memset(im.p + 8 + h, ' ', hlen - h);
  if (dlen) memcpy(im.p + 8 + hlen, data, dlen);
  return im;
}

/* Parses header + data and expects status `want`; the message must contain `needle`. */
#define EXPECT_BAD(header, data, dlen, want, needle)                                       \
  do {                                                                                     \
    image im_ = make_image(header, 0, data, dlen);                                         \
    st_file *f_ = (st_file *)1;                                                            \
    qv_error e_ = {0};                                                                     \
    int rc_ = st_parse(&f_, im_.p, im_.n, &e_);                                            \
    free(im_.p);                                                                           \
    if (rc_ == QV_OK) st_close(f_);                                                        \
    ASSERT_STATUS(rc_, want);                                                              \
    ASSERT(f_ == NULL);                                                                    \
    if (!strstr(e_.msg, needle)) TEST_FAIL_("message \"%s\" lacks \"%s\"", e_.msg, needle); \
  } while (0)

static const float six[6] = {1, 2, 3, 4, 5, 6};

TEST(f32_in_place) {
  image im = make_image("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 0, six, 24);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  ASSERT_EQ(st_count(f), 1);
  const st_tensor *t = st_at(f, 0);
  ASSERT_STR_EQ(t->name, "w");
  ASSERT_EQ(t->dtype, ST_F32);
  ASSERT_EQ(t->ndim, 2);
  ASSERT_EQ(t->numel, 6);
  ASSERT_EQ(t->nbytes, 24);
  ASSERT(st_at(f, 1) == NULL);
  ASSERT(st_find(f, "w") == t);
  const float *w;
  ASSERT_OK(st_get_f32(f, "w", (int64_t[]){2, 3}, 2, &w, &err));
  ASSERT(w == (const float *)(im.p + 8 + im.hlen)); /* no copy */
  ASSERT_EQ(w[5], 6);
  st_close(f);
  free(im.p);
}

TEST(f16_special_values) {
  /* 1, -2, smallest subnormal 2^-24, largest subnormal 1023*2^-24, max 65504, -0, +inf,
   * -inf, NaN, 0x3555 = 0.333251953125, smallest normal 2^-14 */
  static const uint16_t h[11] = {0x3c00, 0xc000, 0x0001, 0x03ff, 0x7bff, 0x8000,
                                 0x7c00, 0xfc00, 0x7e00, 0x3555, 0x0400};
  image im = make_image("{\"h\":{\"dtype\":\"F16\",\"shape\":[11],\"data_offsets\":[0,22]}}", 0, h, sizeof h);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  const float *x;
  ASSERT_OK(st_get_f32(f, "h", (int64_t[]){11}, 1, &x, &err));
  ASSERT((uintptr_t)x % 64 == 0);
  ASSERT_EQ(x[0], 1);
  ASSERT_EQ(x[1], -2);
  ASSERT(x[2] == ldexpf(1, -24));
  ASSERT(x[3] == ldexpf(1023, -24));
  ASSERT(x[4] == 65504.0f);
  ASSERT(x[5] == 0 && signbit(x[5]));
  ASSERT(isinf(x[6]) && x[6] > 0);
  ASSERT(isinf(x[7]) && x[7] < 0);
  ASSERT(isnan(x[8]));
  ASSERT(x[9] == 0.333251953125f);
  ASSERT(x[10] == ldexpf(1, -14));
  const float *again;
  ASSERT_OK(st_get_f32(f, "h", (int64_t[]){11}, 1, &again, &err));
  ASSERT(again == x); /* converted once, cached */
  st_close(f);
  free(im.p);
}

TEST(f16_every_value_matches_reference) {
  /* All 65536 halves against an independent formula: (-1)^s * 2^(e-15) * (1 + m/1024). */
  uint16_t *h = malloc(65536 * 2);
  ASSERT(h != NULL);
  for (uint32_t i = 0; i < 65536; i++) h[i] = (uint16_t)i;
  image im = make_image("{\"h\":{\"dtype\":\"F16\",\"shape\":[65536],\"data_offsets\":[0,131072]}}", 0, h,
                        65536 * 2);
  free(h);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  const float *x;
  ASSERT_OK(st_get_f32(f, "h", (int64_t[]){65536}, 1, &x, &err));
  for (uint32_t i = 0; i < 65536; i++) {
    int s = i >> 15, e = (i >> 10) & 31, m = i & 1023;
    double want = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    if (s) want = -want;
    if (isnan(want)) {
      if (!isnan(x[i])) TEST_FAIL_("half 0x%04x: %g, want NaN", i, x[i]);
    } else if ((double)x[i] != want || !signbit(x[i]) != !signbit(want)) {
      TEST_FAIL_("half 0x%04x: %.9g, want %.9g", i, x[i], want);
    }
  }
  st_close(f);
  free(im.p);
}

TEST(bf16) {
  static const uint16_t b[4] = {0x3f80, 0xc040, 0x4049, 0xff80};
  image im = make_image("{\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 0, b, sizeof b);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  const float *x;
  ASSERT_OK(st_get_f32(f, "b", (int64_t[]){2, 2}, 2, &x, &err));
  ASSERT(x[0] == 1.0f);
  ASSERT(x[1] == -3.0f);
  ASSERT(x[2] == 3.140625f);
  ASSERT(isinf(x[3]) && x[3] < 0);
  st_close(f);
  free(im.p);
}

TEST(misaligned_f32_is_copied) {
  /* A 61-byte header puts the data at byte 69 of a malloc'd (16-aligned) block. */
  image im = make_image("{\"w\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]}}", 61, six, 24);
  ASSERT_EQ(im.hlen, 61);
  ASSERT((uintptr_t)(im.p + 8 + im.hlen) % 4 != 0);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  const float *w, *again;
  ASSERT_OK(st_get_f32(f, "w", (int64_t[]){6}, 1, &w, &err));
  ASSERT((const uint8_t *)w != im.p + 8 + im.hlen);
  ASSERT((uintptr_t)w % 4 == 0);
  for (int i = 0; i < 6; i++) ASSERT_EQ(w[i], six[i]);
  ASSERT_OK(st_get_f32(f, "w", (int64_t[]){6}, 1, &again, &err));
  ASSERT(again == w);
  st_close(f);
  free(im.p);
}

TEST(shape_mismatch_names_both) {
  image im = make_image("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 0, six, 24);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  const float *w = (const float *)six;
  ASSERT_STATUS(st_get_f32(f, "w", (int64_t[]){3, 2}, 2, &w, &err), QV_EFORMAT);
  ASSERT(w == NULL);
  ASSERT(strstr(err.msg, "\"w\"") && strstr(err.msg, "[2, 3]") && strstr(err.msg, "[3, 2]"));
  ASSERT_STATUS(st_get_f32(f, "w", (int64_t[]){6}, 1, &w, &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "[6]"));
  ASSERT_STATUS(st_get_f32(f, "w", (int64_t[]){2, 3, 1}, 3, &w, &err), QV_EFORMAT);
  ASSERT_STATUS(st_get_f32(f, "w", NULL, 0, &w, &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "[]"));
  st_close(f);
  free(im.p);
}

TEST(missing_tensor_is_notfound) {
  image im = make_image("{\"w\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[0,24]}}", 0, six, 24);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  const float *w;
  ASSERT(st_find(f, "v") == NULL);
  ASSERT(st_find(f, "") == NULL);
  ASSERT_STATUS(st_get_f32(f, "v", (int64_t[]){6}, 1, &w, &err), QV_NOTFOUND);
  ASSERT(strstr(err.msg, "\"v\""));
  st_close(f);
  free(im.p);
}

TEST(integer_dtype_not_float) {
  int64_t ids[3] = {0, 1, 2};
  image im = make_image("{\"ids\":{\"dtype\":\"I64\",\"shape\":[1,3],\"data_offsets\":[0,24]}}", 0, ids, 24);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  ASSERT_EQ(st_find(f, "ids")->dtype, ST_I64);
  ASSERT(st_find(f, "ids")->data == im.p + 8 + im.hlen);
  const float *w;
  ASSERT_STATUS(st_get_f32(f, "ids", (int64_t[]){1, 3}, 2, &w, &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "dtype I64 cannot be read as float32"));
  st_close(f);
  free(im.p);
}

TEST(every_dtype_size) {
  static const char *names[] = {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"};
  static const size_t sizes[] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};
  uint8_t data[32] = {0};
  for (int d = 0; d < 10; d++) {
    char header[200];
    snprintf(header, sizeof header, "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}", names[d],
             3 * sizes[d]);
    image im = make_image(header, 0, data, 3 * sizes[d]);
    st_file *f;
    qv_error err;
    ASSERT_OK(st_parse(&f, im.p, im.n, &err));
    ASSERT_EQ(st_at(f, 0)->dtype, d);
    st_close(f);
    free(im.p);
    /* one byte too many is a span mismatch */
    snprintf(header, sizeof header, "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}", names[d],
             3 * sizes[d] + 1);
    EXPECT_BAD(header, data, sizeof data, QV_EFORMAT, "needs");
  }
}

TEST(scalar_and_empty_tensors) {
  float one = 7;
  image im = make_image("{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                        "\"e\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[4,4]}}",
                        0, &one, 4);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  const float *x;
  ASSERT_OK(st_get_f32(f, "s", NULL, 0, &x, &err));
  ASSERT_EQ(*x, 7);
  ASSERT_EQ(st_find(f, "s")->numel, 1);
  ASSERT_OK(st_get_f32(f, "e", (int64_t[]){0, 4}, 2, &x, &err));
  ASSERT(x != NULL);
  ASSERT_EQ(st_find(f, "e")->numel, 0);
  st_close(f);
  free(im.p);
}

TEST(sorted_lookup_many_tensors) {
  /* 150 tensors, named in reverse so the sort has work to do; each one float. */
  char header[16384];
  float data[150];
  size_t h = 0;
  h += (size_t)snprintf(header + h, sizeof header - h, "{");
  for (int i = 149; i >= 0; i--) {
    data[i] = (float)i;
    h += (size_t)snprintf(header + h, sizeof header - h,
                          "%s\"layer.%03d.w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%d,%d]}",
                          i == 149 ? "" : ",", i, 4 * i, 4 * i + 4);
  }
  snprintf(header + h, sizeof header - h, "}");
  image im = make_image(header, 0, data, sizeof data);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  ASSERT_EQ(st_count(f), 150);
  for (int i = 0; i < 150; i++) {
    char name[32];
    snprintf(name, sizeof name, "layer.%03d.w", i);
    const float *x;
    ASSERT_OK(st_get_f32(f, name, (int64_t[]){1}, 1, &x, &err));
    ASSERT_EQ(*x, i);
    ASSERT_STR_EQ(st_at(f, (size_t)i)->name, name);
  }
  st_close(f);
  free(im.p);
}

TEST(every_truncation_is_an_error) {
  image im = make_image("{\"__metadata__\":{\"format\":\"pt\"},"
                        "\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[4,24]}}",
                        0, six, 24);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  st_close(f);
  for (size_t cut = 0; cut < im.n; cut++) {
    uint8_t *copy = malloc(cut ? cut : 1); /* exact size, so ASan sees any over-read */
    ASSERT(copy != NULL);
    memcpy(copy, im.p, cut);
    f = (st_file *)1;
    int rc = st_parse(&f, copy, cut, &err);
    free(copy);
    if (rc != QV_ETRUNC) TEST_FAIL_("cut at %zu of %zu: got %d (%s), want QV_ETRUNC", cut, im.n, rc, qv_strerror(rc));
    ASSERT(f == NULL);
  }
  free(im.p);
}

TEST(header_length_past_file) {
  image im = make_image("{}", 0, NULL, 0);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  ASSERT_EQ(st_count(f), 0);
  st_close(f);
  im.p[0] = 9; /* 9 > 8 bytes present */
  ASSERT_STATUS(st_parse(&f, im.p, im.n, &err), QV_ETRUNC);
  ASSERT(strstr(err.msg, "header length 9"));
  memset(im.p, 0xff, 8);
  ASSERT_STATUS(st_parse(&f, im.p, im.n, &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "limit"));
  memset(im.p, 0, 8);
  im.p[3] = 0x10; /* 268 MB: over the limit even though it is a "reasonable" number */
  ASSERT_STATUS(st_parse(&f, im.p, im.n, &err), QV_EFORMAT);
  free(im.p);
}

TEST(header_not_json_or_not_object) {
  EXPECT_BAD("{\"a\":", NULL, 0, QV_EFORMAT, "not valid JSON");
  EXPECT_BAD("not json", NULL, 0, QV_EFORMAT, "not valid JSON");
  EXPECT_BAD("", NULL, 0, QV_EFORMAT, "not valid JSON");
  EXPECT_BAD("[1,2]", NULL, 0, QV_EFORMAT, "not a JSON object");
  EXPECT_BAD("\"x\"", NULL, 0, QV_EFORMAT, "not a JSON object");
  EXPECT_BAD("{} {}", NULL, 0, QV_EFORMAT, "not valid JSON");
  EXPECT_BAD("{\"a\":1}", NULL, 0, QV_EFORMAT, "tensor \"a\": header entry is not an object");
  /* duplicate names would make a lookup ambiguous */
  EXPECT_BAD("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
             "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
             six, 1, QV_EFORMAT, "not valid JSON");
}

TEST(bad_entries) {
  EXPECT_BAD("{\"t\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", six, 1, QV_EFORMAT,
             "tensor \"t\": unknown dtype \"F8\"");
  EXPECT_BAD("{\"t\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", six, 4, QV_EFORMAT, "dtype");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", six, 4, QV_EFORMAT,
             "unknown field \"extra\"");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", six, 4, QV_EFORMAT, "missing \"shape\"");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", six, 4, QV_EFORMAT, "missing \"data_offsets\"");
  EXPECT_BAD("{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", six, 4, QV_EFORMAT, "missing \"dtype\"");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", six, 4,
             QV_EFORMAT, "9 dimensions");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", six, 4, QV_EFORMAT,
             "shape is not an array");
}

TEST(bad_shapes) {
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", six, 4, QV_EFORMAT,
             "shape[0] is not an integer >= 0");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1.0],\"data_offsets\":[0,4]}}", six, 4, QV_EFORMAT,
             "shape[1] is not an integer >= 0");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", six, 4, QV_EFORMAT,
             "shape[0]");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,4]}}", six, 4, QV_EFORMAT,
             "shape[0]");
  /* 2^80 elements, and 2^62 floats = 2^64 bytes: both overflow size_t */
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,4]}}", six,
             4, QV_EFORMAT, "too large");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", six, 4,
             QV_EFORMAT, "too large");
  /* too big for JSON's int64 at all */
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", six, 4,
             QV_EFORMAT, "not valid JSON");
}

TEST(bad_offsets) {
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", six, 24, QV_EFORMAT,
             "begin 8 is past end 4");
  EXPECT_BAD("{\"encoder.layer.0.attention.self.query.weight\":{\"dtype\":\"F32\",\"shape\":[2],"
             "\"data_offsets\":[20,28]}}",
             six, 24, QV_ETRUNC,
             "tensor \"encoder.layer.0.attention.self.query.weight\": data_offsets end 28 is past the data "
             "section (24 bytes)");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}}", six, 24, QV_EFORMAT,
             "span 12 bytes but F32 [2] needs 8");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-4,4]}}", six, 24, QV_EFORMAT,
             "data_offsets");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", six, 24, QV_EFORMAT,
             "data_offsets");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,16]}}", six, 24, QV_EFORMAT,
             "data_offsets");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"a\":0}}}", six, 24, QV_EFORMAT,
             "data_offsets");
  EXPECT_BAD("{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[9223372036854775807,"
             "9223372036854775807]}}",
             six, 24, QV_ETRUNC, "past the data section");
}

TEST(overlapping_offsets_allowed) {
  image im = make_image("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}",
                        0, six, 24);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  const float *a, *b;
  ASSERT_OK(st_get_f32(f, "a", (int64_t[]){4}, 1, &a, &err));
  ASSERT_OK(st_get_f32(f, "b", (int64_t[]){2, 2}, 2, &b, &err));
  ASSERT(b == a + 2);
  ASSERT_EQ(b[3], 6);
  st_close(f);
  free(im.p);
}

TEST(metadata) {
  image im = make_image("{\"__metadata__\":{\"format\":\"pt\",\"note\":\"ünïcode\"},"
                        "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                        0, six, 4);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  ASSERT_EQ(st_count(f), 1); /* __metadata__ is not a tensor */
  ASSERT(st_find(f, "__metadata__") == NULL);
  ASSERT_STR_EQ(st_metadata(f, "format"), "pt");
  ASSERT_STR_EQ(st_metadata(f, "note"), "ünïcode");
  ASSERT(st_metadata(f, "missing") == NULL);
  st_close(f);
  free(im.p);

  im = make_image("{\"__metadata__\":null}", 0, NULL, 0);
  ASSERT_OK(st_parse(&f, im.p, im.n, &err));
  ASSERT(st_metadata(f, "format") == NULL);
  st_close(f);
  free(im.p);

  EXPECT_BAD("{\"__metadata__\":{\"format\":\"pt\",\"n\":1}}", NULL, 0, QV_EFORMAT,
             "__metadata__ \"n\" is not a string");
  EXPECT_BAD("{\"__metadata__\":[\"pt\"]}", NULL, 0, QV_EFORMAT, "__metadata__ is not an object");
}

static char tmpdir[512];

static void make_tmpdir(void) {
  const char *base = getenv("QUIVER_TEST_TMP");
  if (!base || !*base) base = "/tmp";
  mkdir(base, 0755);
  snprintf(tmpdir, sizeof tmpdir, "%s/safetensors-XXXXXX", base);
  if (!mkdtemp(tmpdir)) TEST_FAIL_("mkdtemp %s: %s", tmpdir, strerror(errno));
}

static void write_file(const char *path, const void *p, size_t n) {
  FILE *fp = fopen(path, "wb");
  if (!fp) TEST_FAIL_("fopen %s: %s", path, strerror(errno));
  size_t w = n ? fwrite(p, 1, n, fp) : 0;
  if (fclose(fp) != 0 || w != n) TEST_FAIL_("write %s failed", path);
}

TEST(open_maps_file) {
  make_tmpdir();
  char path[600];
  snprintf(path, sizeof path, "%s/m.safetensors", tmpdir);
  image im = make_image("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 0, six, 24);
  write_file(path, im.p, im.n);
  st_file *f;
  qv_error err;
  ASSERT_OK(st_open(&f, path, &err));
  const float *w;
  ASSERT_OK(st_get_f32(f, "w", (int64_t[]){2, 3}, 2, &w, &err));
  /* in place: the mapping is page-aligned, so the data sits at 8 + header length within a page */
  ASSERT_EQ((uintptr_t)w % 4096, 8 + im.hlen);
  ASSERT_EQ(w[4], 5);
  st_close(f);

  write_file(path, im.p, im.n - 1);
  ASSERT_STATUS(st_open(&f, path, &err), QV_ETRUNC);
  ASSERT(strstr(err.msg, path) && strstr(err.msg, "\"w\""));
  write_file(path, "", 0);
  ASSERT_STATUS(st_open(&f, path, &err), QV_ETRUNC);
  ASSERT(f == NULL);
  unlink(path);
  ASSERT_STATUS(st_open(&f, path, &err), ENOENT);
  ASSERT(strstr(err.msg, path));
  ASSERT_STATUS(st_open(&f, tmpdir, &err), QV_EFORMAT);
  rmdir(tmpdir);
  free(im.p);
}

TEST(real_minilm_file) {
  const char *home = getenv("HOME");
  char path[1024];
  snprintf(path, sizeof path, "%s/.cache/quiver/models/all-MiniLM-L6-v2/model.safetensors", home ? home : "");
  if (!home || access(path, R_OK) != 0) SKIP("all-MiniLM-L6-v2 is not in ~/.cache/quiver/models");
  st_file *f;
  qv_error err;
  if (st_open(&f, path, &err)) TEST_FAIL_("%s", err.msg);
  ASSERT_EQ(st_count(f), 104);
  size_t nf32 = 0;
  for (size_t i = 0; i < st_count(f); i++) {
    const st_tensor *t = st_at(f, i);
    if (t->dtype == ST_F32) {
      nf32++;
      const float *x;
      ASSERT_OK(st_get_f32(f, t->name, t->shape, t->ndim, &x, &err));
      ASSERT(x == (const float *)(const void *)t->data); /* the reference writer aligns data */
      ASSERT(isfinite(x[0]) && isfinite(x[t->numel - 1]));
    }
  }
  ASSERT_EQ(nf32, 103);
  const st_tensor *pos = st_find(f, "embeddings.position_ids");
  ASSERT(pos != NULL);
  ASSERT_EQ(pos->dtype, ST_I64);
  ASSERT_EQ(pos->ndim, 2);
  ASSERT_EQ(pos->shape[0], 1);
  ASSERT_EQ(pos->shape[1], 512);
  const float *x;
  ASSERT_STATUS(st_get_f32(f, "embeddings.position_ids", (int64_t[]){1, 512}, 2, &x, &err), QV_EFORMAT);
  ASSERT_OK(st_get_f32(f, "embeddings.word_embeddings.weight", (int64_t[]){30522, 384}, 2, &x, &err));
  ASSERT_STATUS(st_get_f32(f, "embeddings.word_embeddings.weight", (int64_t[]){384, 30522}, 2, &x, &err),
                QV_EFORMAT);
  ASSERT(strstr(err.msg, "[30522, 384]") && strstr(err.msg, "[384, 30522]"));
  st_close(f);
}

TEST_MAIN(T(f32_in_place), T(f16_special_values), T(f16_every_value_matches_reference), T(bf16),
          T(misaligned_f32_is_copied), T(shape_mismatch_names_both), T(missing_tensor_is_notfound),
          T(integer_dtype_not_float), T(every_dtype_size), T(scalar_and_empty_tensors),
          T(sorted_lookup_many_tensors), T(every_truncation_is_an_error), T(header_length_past_file),
          T(header_not_json_or_not_object), T(bad_entries), T(bad_shapes), T(bad_offsets),
          T(overlapping_offsets_allowed), T(metadata), T(open_maps_file), T(real_minilm_file))
