/* Vector file readers: .npy, .fvecs, JSON lines, ids files and mapping. Files are built
 * byte by byte here; one .npy fixture is the exact output of numpy 2.1.3's np.save. */
#include <errno.h>
#include <float.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quiver.h"
#include "store/vecfile.h"

#include "test.h"

/* ---- builders ------------------------------------------------------------------------ */

typedef struct bytes {
  uint8_t *p;
  size_t n;
} bytes;

static void put(bytes *b, const void *src, size_t n) {
  b->p = realloc(b->p, b->n + n + 1);
  if (!b->p) abort();
  if (n) memcpy(b->p + b->n, src, n);
  b->n += n;
}

static void put_i32(bytes *b, int32_t v) {
  uint8_t le[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  put(b, le, 4);
}

static void put_f32(bytes *b, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  put_i32(b, (int32_t)u);
}

static void put_f64(bytes *b, double d) {
  uint64_t u;
  memcpy(&u, &d, 8);
  put_i32(b, (int32_t)(uint32_t)u);
  put_i32(b, (int32_t)(uint32_t)(u >> 32));
}

/* An .npy preamble and header as numpy writes it: the dict text padded with spaces and a
 * final '\n' so the data starts at a multiple of 64. major 1 has a u16 length, 2 and 3 u32. */
static bytes npy_header(int major, const char *dict) {
  bytes b = {0};
  uint8_t pre[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  put(&b, pre, 6);
  uint8_t ver[2] = {(uint8_t)major, 0};
  put(&b, ver, 2);
  size_t pre_len = major == 1 ? 10 : 12, hlen = strlen(dict) + 1;
  while ((pre_len + hlen) % 64) hlen++;
  if (major == 1) {
    uint8_t l[2] = {(uint8_t)hlen, (uint8_t)(hlen >> 8)};
    put(&b, l, 2);
  } else {
    put_i32(&b, (int32_t)hlen);
  }
  put(&b, dict, strlen(dict));
  for (size_t i = strlen(dict) + 1; i < hlen; i++) put(&b, " ", 1);
  put(&b, "\n", 1);
  return b;
}

/* A header with the given length field but no padding rules, for garbage tests. */
static bytes npy_raw(const char *dict) {
  bytes b = {0};
  uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
  size_t n = strlen(dict);
  pre[8] = (uint8_t)n;
  pre[9] = (uint8_t)(n >> 8);
  put(&b, pre, 10);
  put(&b, dict, n);
  return b;
}

static qv_status read_npy(vecfile_matrix *m, bytes b, qv_error *err) {
  qv_status st = vecfile_read_npy(m, b.p, b.n, err);
  free(b.p);
  return st;
}

/* Expects the .npy built from dict (v1 header, no data) to fail with want. */
#define NPY_FAILS(dict, want)                                   \
  do {                                                          \
    vecfile_matrix m_;                                          \
    qv_error e_ = {0};                                          \
    ASSERT_STATUS(read_npy(&m_, npy_header(1, dict), &e_), want); \
    ASSERT(m_.data == NULL);                                    \
    ASSERT(e_.msg[0] != 0);                                     \
  } while (0)

/* ---- .npy ---------------------------------------------------------------------------- */

/* np.save(f, np.array([[1.5, -2], [3, 4.25], [0, 1e-3]], dtype='<f4')), numpy 2.1.3. */
static const uint8_t numpy_fixture[] = {
    0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 0x01, 0x00, 0x76, 0x00, 0x7b, 0x27, 0x64, 0x65, 0x73, 0x63,
    0x72, 0x27, 0x3a, 0x20, 0x27, 0x3c, 0x66, 0x34, 0x27, 0x2c, 0x20, 0x27, 0x66, 0x6f, 0x72, 0x74,
    0x72, 0x61, 0x6e, 0x5f, 0x6f, 0x72, 0x64, 0x65, 0x72, 0x27, 0x3a, 0x20, 0x46, 0x61, 0x6c, 0x73,
    0x65, 0x2c, 0x20, 0x27, 0x73, 0x68, 0x61, 0x70, 0x65, 0x27, 0x3a, 0x20, 0x28, 0x33, 0x2c, 0x20,
    0x32, 0x29, 0x2c, 0x20, 0x7d, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
    0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
    0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
    0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x0a,
    0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x40, 0x40, 0x00, 0x00, 0x88, 0x40,
    0x00, 0x00, 0x00, 0x00, 0x6f, 0x12, 0x83, 0x3a,
};

TEST(npy_numpy_fixture) {
  vecfile_matrix m;
  ASSERT_OK(vecfile_read_npy(&m, numpy_fixture, sizeof numpy_fixture, NULL));
  ASSERT_EQ(m.rows, 3);
  ASSERT_EQ(m.cols, 2);
  const float want[6] = {1.5f, -2.0f, 3.0f, 4.25f, 0.0f, 1e-3f};
  for (int i = 0; i < 6; i++) ASSERT_EQ(memcmp(&m.data[i], &want[i], 4), 0);
  vecfile_matrix_free(&m);
  ASSERT(m.data == NULL);
}

TEST(npy_our_builder_matches_numpy) {
  bytes b = npy_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }");
  const float v[6] = {1.5f, -2.0f, 3.0f, 4.25f, 0.0f, 1e-3f};
  for (int i = 0; i < 6; i++) put_f32(&b, v[i]);
  ASSERT_EQ(b.n, sizeof numpy_fixture);
  int same = memcmp(b.p, numpy_fixture, b.n) == 0;
  free(b.p);
  ASSERT(same);
}

static void check_f4_versions(int major) {
  bytes b = npy_header(major, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
  for (int i = 0; i < 6; i++) put_f32(&b, (float)i * 0.5f);
  vecfile_matrix m;
  ASSERT_OK(read_npy(&m, b, NULL));
  ASSERT_EQ(m.rows, 2);
  ASSERT_EQ(m.cols, 3);
  for (int i = 0; i < 6; i++) ASSERT_NEAR(m.data[i], i * 0.5, 0);
  vecfile_matrix_free(&m);
}

TEST(npy_v1_header) { check_f4_versions(1); }
TEST(npy_v2_header) { check_f4_versions(2); }
TEST(npy_v3_header) { check_f4_versions(3); }

TEST(npy_header_spelling_tolerated) {
  /* Key order, double quotes, no trailing comma, extra spaces, Python 2 'L' suffix. */
  bytes b = npy_raw("{ \"shape\" : ( 2L ,3 ,) ,'fortran_order':False,'descr':\"<f4\"}   \n");
  for (int i = 0; i < 6; i++) put_f32(&b, (float)i);
  vecfile_matrix m;
  ASSERT_OK(read_npy(&m, b, NULL));
  ASSERT_EQ(m.rows, 2);
  ASSERT_EQ(m.cols, 3);
  ASSERT_NEAR(m.data[5], 5.0, 0);
  vecfile_matrix_free(&m);
}

TEST(npy_f8_converted) {
  bytes b = npy_header(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }");
  put_f64(&b, 0.1);
  put_f64(&b, -1e30);
  put_f64(&b, 1e-50); /* underflows to 0 */
  put_f64(&b, (double)FLT_MAX);
  vecfile_matrix m;
  ASSERT_OK(read_npy(&m, b, NULL));
  ASSERT_EQ(m.rows, 2);
  ASSERT_EQ(m.cols, 2);
  ASSERT_EQ(memcmp(&m.data[0], &(float){0.1f}, 4), 0);
  ASSERT_NEAR(m.data[1], -1e30, 1e23);
  ASSERT_NEAR(m.data[2], 0.0, 0);
  ASSERT_NEAR(m.data[3], FLT_MAX, 0);
  vecfile_matrix_free(&m);
}

TEST(npy_f8_overflow_is_erange) {
  bytes b = npy_header(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }");
  put_f64(&b, 1);
  put_f64(&b, 2);
  put_f64(&b, 3);
  put_f64(&b, -1e39);
  vecfile_matrix m;
  qv_error e = {0};
  ASSERT_STATUS(read_npy(&m, b, &e), QV_ERANGE);
  ASSERT(strstr(e.msg, "row 1, column 1") != NULL);
  ASSERT(m.data == NULL);
}

TEST(npy_nonfinite_passes_through) {
  /* The readers keep NaN and infinities; the collection refuses them, naming the point. */
  bytes b = npy_header(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }");
  put_f64(&b, NAN);
  put_f64(&b, INFINITY);
  put_f64(&b, -INFINITY);
  vecfile_matrix m;
  ASSERT_OK(read_npy(&m, b, NULL));
  ASSERT(isnan(m.data[0]));
  ASSERT(isinf(m.data[1]) && m.data[1] > 0);
  ASSERT(isinf(m.data[2]) && m.data[2] < 0);
  vecfile_matrix_free(&m);
}

TEST(npy_1d_is_one_row) {
  bytes b = npy_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }");
  for (int i = 0; i < 4; i++) put_f32(&b, (float)i);
  vecfile_matrix m;
  ASSERT_OK(read_npy(&m, b, NULL));
  ASSERT_EQ(m.rows, 1);
  ASSERT_EQ(m.cols, 4);
  vecfile_matrix_free(&m);
}

TEST(npy_dim_1_and_4096) {
  bytes b = npy_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 1), }");
  for (int i = 0; i < 3; i++) put_f32(&b, (float)i);
  vecfile_matrix m;
  ASSERT_OK(read_npy(&m, b, NULL));
  ASSERT_EQ(m.cols, 1);
  ASSERT_NEAR(m.data[2], 2, 0);
  vecfile_matrix_free(&m);
  b = npy_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4096), }");
  for (int i = 0; i < 8192; i++) put_f32(&b, (float)i);
  ASSERT_OK(read_npy(&m, b, NULL));
  ASSERT_EQ(m.rows, 2);
  ASSERT_EQ(m.cols, 4096);
  ASSERT_NEAR(m.data[8191], 8191, 0);
  vecfile_matrix_free(&m);
}

TEST(npy_empty_matrix) {
  vecfile_matrix m;
  ASSERT_OK(read_npy(&m, npy_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }"),
                     NULL));
  ASSERT_EQ(m.rows, 0);
  ASSERT_EQ(m.cols, 3);
  vecfile_matrix_free(&m);
}

TEST(npy_dim_zero_refused) {
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 0), }", QV_EFORMAT);
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }", QV_EFORMAT);
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 0), }", QV_EFORMAT);
}

TEST(npy_dim_over_max_refused) {
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 65537), }", QV_EFORMAT);
}

TEST(npy_fortran_order_refused) {
  vecfile_matrix m;
  qv_error e = {0};
  bytes b = npy_header(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }");
  for (int i = 0; i < 6; i++) put_f32(&b, 0);
  ASSERT_STATUS(read_npy(&m, b, &e), QV_EFORMAT);
  ASSERT(strstr(e.msg, "fortran_order") != NULL);
}

TEST(npy_big_endian_refused) {
  vecfile_matrix m;
  qv_error e = {0};
  bytes b = npy_header(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }");
  for (int i = 0; i < 6; i++) put_f32(&b, 0);
  ASSERT_STATUS(read_npy(&m, b, &e), QV_EFORMAT);
  ASSERT(strstr(e.msg, "big-endian") != NULL);
}

TEST(npy_other_dtypes_refused) {
  NPY_FAILS("{'descr': '<i4', 'fortran_order': False, 'shape': (0, 3), }", QV_EFORMAT);
  NPY_FAILS("{'descr': '|O', 'fortran_order': False, 'shape': (0, 3), }", QV_EFORMAT);
  NPY_FAILS("{'descr': '<f2', 'fortran_order': False, 'shape': (0, 3), }", QV_EFORMAT);
  NPY_FAILS("{'descr': '|f4', 'fortran_order': False, 'shape': (0, 3), }", QV_EFORMAT);
  NPY_FAILS("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (0, 3), }", QV_EFORMAT);
}

TEST(npy_other_shapes_refused) {
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", QV_EFORMAT);
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }", QV_EFORMAT);
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 3), }", QV_EFORMAT);
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }", QV_EFORMAT);
}

TEST(npy_truncated_last_byte) {
  bytes b = npy_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
  for (int i = 0; i < 6; i++) put_f32(&b, 1);
  b.n--;
  vecfile_matrix m;
  qv_error e = {0};
  ASSERT_STATUS(read_npy(&m, b, &e), QV_ETRUNC);
  ASSERT(strstr(e.msg, "24") != NULL && strstr(e.msg, "23") != NULL);
  ASSERT(m.data == NULL);
}

TEST(npy_truncated_header) {
  bytes b = npy_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
  vecfile_matrix m;
  ASSERT_STATUS(vecfile_read_npy(&m, b.p, b.n - 1, NULL), QV_ETRUNC);
  ASSERT_STATUS(vecfile_read_npy(&m, b.p, 9, NULL), QV_ETRUNC);
  ASSERT_STATUS(vecfile_read_npy(&m, b.p, 3, NULL), QV_ETRUNC);
  ASSERT_STATUS(vecfile_read_npy(&m, b.p, 0, NULL), QV_EFORMAT);
  free(b.p);
}

TEST(npy_trailing_junk) {
  bytes b = npy_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
  for (int i = 0; i < 6; i++) put_f32(&b, 1);
  put(&b, "x", 1);
  vecfile_matrix m;
  qv_error e = {0};
  ASSERT_STATUS(read_npy(&m, b, &e), QV_EFORMAT);
  ASSERT(strstr(e.msg, "1 unexpected byte") != NULL);
}

TEST(npy_overflowing_shapes) {
  /* 2**62 * 2**62 overflows; so do 2**62 * 4 bytes and a dimension past u64. */
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, "
            "4611686018427387904), }", QV_EFORMAT);
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }",
            QV_EFORMAT);
  NPY_FAILS("{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952, 1), }",
            QV_EFORMAT);
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, 4), }",
            QV_EFORMAT);
  /* Large but representable: reported as missing data, without allocating. */
  NPY_FAILS("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 4), }",
            QV_ETRUNC);
}

TEST(npy_header_garbage) {
  static const char *bad[] = {
      "",
      "[]",
      "{",
      "{'descr': '<f4', 'fortran_order': False}",                       /* no shape */
      "{'descr': '<f4', 'shape': (2, 3)}",                               /* no fortran_order */
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", /* unknown key */
      "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}",
      "{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3)}",
      "{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2 3)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} junk",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}}",
      "{'descr: '<f4', 'fortran_order': False, 'shape': (2, 3)}",
      "{'descr': '<f\\x34', 'fortran_order': False, 'shape': (2, 3)}",
      "{descr: '<f4', 'fortran_order': False, 'shape': (2, 3)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3,,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1,2,3,4,5,6,7,8,9)}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    vecfile_matrix m;
    qv_error e = {0};
    qv_status st = read_npy(&m, npy_raw(bad[i]), &e);
    if (st != QV_EFORMAT) fprintf(stderr, "  header %zu: %s\n", i, bad[i]);
    ASSERT_STATUS(st, QV_EFORMAT);
    ASSERT(m.data == NULL);
  }
}

TEST(npy_bad_magic_and_version) {
  vecfile_matrix m;
  bytes b = npy_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }");
  b.p[1] = 'n';
  ASSERT_STATUS(vecfile_read_npy(&m, b.p, b.n, NULL), QV_EFORMAT);
  b.p[1] = 'N';
  b.p[6] = 4;
  ASSERT_STATUS(vecfile_read_npy(&m, b.p, b.n, NULL), QV_EFORMAT);
  b.p[6] = 1;
  b.p[7] = 1;
  ASSERT_STATUS(vecfile_read_npy(&m, b.p, b.n, NULL), QV_EFORMAT);
  b.p[7] = 0;
  ASSERT_OK(vecfile_read_npy(&m, b.p, b.n, NULL));
  vecfile_matrix_free(&m);
  free(b.p);
}

/* ---- .fvecs -------------------------------------------------------------------------- */

static bytes fvecs(size_t rows, int32_t dim) {
  bytes b = {0};
  for (size_t r = 0; r < rows; r++) {
    put_i32(&b, dim);
    for (int32_t i = 0; i < dim; i++) put_f32(&b, (float)(r * 1000 + (size_t)i));
  }
  return b;
}

TEST(fvecs_good) {
  bytes b = fvecs(3, 5);
  vecfile_matrix m;
  ASSERT_OK(vecfile_read_fvecs(&m, b.p, b.n, NULL));
  free(b.p);
  ASSERT_EQ(m.rows, 3);
  ASSERT_EQ(m.cols, 5);
  ASSERT_NEAR(m.data[0], 0, 0);
  ASSERT_NEAR(m.data[2 * 5 + 4], 2004, 0);
  vecfile_matrix_free(&m);
}

TEST(fvecs_dim_1_and_4096) {
  vecfile_matrix m;
  bytes b = fvecs(4, 1);
  ASSERT_OK(vecfile_read_fvecs(&m, b.p, b.n, NULL));
  free(b.p);
  ASSERT_EQ(m.rows, 4);
  ASSERT_EQ(m.cols, 1);
  ASSERT_NEAR(m.data[3], 3000, 0);
  vecfile_matrix_free(&m);
  b = fvecs(2, 4096);
  ASSERT_OK(vecfile_read_fvecs(&m, b.p, b.n, NULL));
  free(b.p);
  ASSERT_EQ(m.rows, 2);
  ASSERT_EQ(m.cols, 4096);
  ASSERT_NEAR(m.data[4096 + 4095], 5095, 0);
  vecfile_matrix_free(&m);
}

TEST(fvecs_mismatched_dim) {
  bytes b = fvecs(2, 3);
  bytes c = fvecs(1, 4);
  put(&b, c.p, c.n);
  free(c.p);
  vecfile_matrix m;
  qv_error e = {0};
  ASSERT_STATUS(vecfile_read_fvecs(&m, b.p, b.n, &e), QV_EFORMAT);
  free(b.p);
  ASSERT(strstr(e.msg, "row 2") != NULL);
  ASSERT(m.data == NULL);
}

TEST(fvecs_truncated) {
  bytes b = fvecs(3, 4);
  vecfile_matrix m;
  qv_error e = {0};
  ASSERT_STATUS(vecfile_read_fvecs(&m, b.p, b.n - 1, &e), QV_ETRUNC);
  ASSERT(strstr(e.msg, "row 2") != NULL);
  ASSERT_STATUS(vecfile_read_fvecs(&m, b.p, 2 * 20 + 2, &e), QV_ETRUNC);
  ASSERT(strstr(e.msg, "row 2") != NULL);
  ASSERT_STATUS(vecfile_read_fvecs(&m, b.p, 3, &e), QV_ETRUNC);
  ASSERT(m.data == NULL);
  free(b.p);
}

TEST(fvecs_empty) {
  vecfile_matrix m;
  qv_error e = {0};
  ASSERT_STATUS(vecfile_read_fvecs(&m, NULL, 0, &e), QV_EFORMAT);
  ASSERT(strstr(e.msg, "empty file") != NULL);
}

TEST(fvecs_bad_dims) {
  vecfile_matrix m;
  bytes b = fvecs(1, 0);
  ASSERT_STATUS(vecfile_read_fvecs(&m, b.p, b.n, NULL), QV_EFORMAT);
  free(b.p);
  b = (bytes){0};
  put_i32(&b, -4);
  put_f32(&b, 1);
  ASSERT_STATUS(vecfile_read_fvecs(&m, b.p, b.n, NULL), QV_EFORMAT);
  free(b.p);
  b = (bytes){0};
  put_i32(&b, 65537);
  ASSERT_STATUS(vecfile_read_fvecs(&m, b.p, b.n, NULL), QV_EFORMAT);
  free(b.p);
  b = (bytes){0};
  put_i32(&b, INT32_MAX);
  ASSERT_STATUS(vecfile_read_fvecs(&m, b.p, b.n, NULL), QV_EFORMAT);
  free(b.p);
}

/* ---- JSON lines ---------------------------------------------------------------------- */

static qv_status jl(vecfile_record *r, const char *line, qv_error *e) {
  return vecfile_parse_jsonl_line(r, line, strlen(line), e);
}

static void record_free(vecfile_record *r) {
  free(r->vector);
  free(r->payload);
}

TEST(jsonl_good) {
  vecfile_record r;
  ASSERT_OK(jl(&r, "{\"id\": 7, \"vector\": [1, 2.5, -3e2], \"payload\": {\"a\": [1, \"x\"], \"b\": null}}",
               NULL));
  ASSERT_EQ(r.id.kind, QV_ID_NUM);
  ASSERT_U64_EQ(r.id.num, 7);
  ASSERT_EQ(r.dim, 3);
  ASSERT_NEAR(r.vector[0], 1, 0);
  ASSERT_NEAR(r.vector[1], 2.5, 0);
  ASSERT_NEAR(r.vector[2], -300, 0);
  ASSERT_STR_EQ(r.payload, "{\"a\":[1,\"x\"],\"b\":null}");
  record_free(&r);
}

TEST(jsonl_payload_optional) {
  vecfile_record r;
  ASSERT_OK(jl(&r, "{\"vector\":[0.5],\"id\":0}", NULL));
  ASSERT_EQ(r.dim, 1);
  ASSERT(r.payload == NULL);
  record_free(&r);
  ASSERT_OK(jl(&r, "  {\"id\":1,\"vector\":[1],\"payload\":null}\r", NULL));
  ASSERT(r.payload == NULL);
  record_free(&r);
}

TEST(jsonl_uuid_id) {
  vecfile_record r;
  ASSERT_OK(jl(&r, "{\"id\": \"550E8400-e29b-41d4-a716-446655440000\", \"vector\": [1]}", NULL));
  ASSERT_EQ(r.id.kind, QV_ID_UUID);
  char buf[40];
  qv_point_id_format(&r.id, buf);
  ASSERT_STR_EQ(buf, "550e8400-e29b-41d4-a716-446655440000");
  record_free(&r);
  ASSERT_STATUS(jl(&r, "{\"id\": \"12\", \"vector\": [1]}", NULL), QV_EFORMAT);
  ASSERT_STATUS(jl(&r, "{\"id\": \"550e8400-e29b-41d4-a716-44665544000g\", \"vector\": [1]}", NULL),
                QV_EFORMAT);
}

TEST(jsonl_u64_ids) {
  vecfile_record r;
  ASSERT_OK(jl(&r, "{\"id\": 9223372036854775807, \"vector\": [1]}", NULL));
  ASSERT_U64_EQ(r.id.num, 9223372036854775807ull);
  record_free(&r);
  /* Beyond jansson's json_int_t, still a valid u64. */
  ASSERT_OK(jl(&r, "{\"vector\": [1], \"payload\": {\"id\": 3}, \"id\": 18446744073709551615}", NULL));
  ASSERT_EQ(r.id.kind, QV_ID_NUM);
  ASSERT_U64_EQ(r.id.num, UINT64_MAX);
  ASSERT_STR_EQ(r.payload, "{\"id\":3}");
  record_free(&r);
}

TEST(jsonl_negative_id) {
  vecfile_record r;
  qv_error e = {0};
  ASSERT_STATUS(jl(&r, "{\"id\": -1, \"vector\": [1]}", &e), QV_ERANGE);
  ASSERT(strstr(e.msg, "negative") != NULL);
  ASSERT_STATUS(jl(&r, "{\"id\": -99999999999999999999, \"vector\": [1]}", NULL), QV_ERANGE);
  ASSERT(r.vector == NULL);
}

TEST(jsonl_huge_id) {
  vecfile_record r;
  qv_error e = {0};
  ASSERT_STATUS(jl(&r, "{\"id\": 18446744073709551616, \"vector\": [1]}", &e), QV_ERANGE);
  ASSERT(strstr(e.msg, "18446744073709551616") != NULL);
  ASSERT_STATUS(jl(&r, "{\"id\": 123456789012345678901234567890123456789, \"vector\": [1]}", NULL),
                QV_ERANGE);
  /* Not an integer literal: still refused, as JSON or as a type. */
  ASSERT_STATUS(jl(&r, "{\"id\": 0018446744073709551616, \"vector\": [1]}", NULL), QV_EJSON);
  ASSERT_STATUS(jl(&r, "{\"id\": 1.5, \"vector\": [1]}", NULL), QV_EFORMAT);
  ASSERT_STATUS(jl(&r, "{\"id\": 1e3, \"vector\": [1]}", NULL), QV_EFORMAT);
  /* A big id with broken JSON elsewhere is still a JSON error. */
  ASSERT_STATUS(jl(&r, "{\"id\": 18446744073709551615, \"vector\": [1,]}", NULL), QV_EJSON);
}

TEST(jsonl_missing_fields) {
  vecfile_record r;
  qv_error e = {0};
  ASSERT_STATUS(jl(&r, "{\"id\": 1}", &e), QV_EFORMAT);
  ASSERT(strstr(e.msg, "vector") != NULL);
  ASSERT_STATUS(jl(&r, "{\"vector\": [1]}", &e), QV_EFORMAT);
  ASSERT(strstr(e.msg, "id") != NULL);
  ASSERT_STATUS(jl(&r, "{\"id\": true, \"vector\": [1]}", NULL), QV_EFORMAT);
  ASSERT_STATUS(jl(&r, "{\"id\": null, \"vector\": [1]}", NULL), QV_EFORMAT);
}

TEST(jsonl_unknown_key) {
  vecfile_record r;
  qv_error e = {0};
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1], \"vectors\": [1]}", &e), QV_EFORMAT);
  ASSERT(strstr(e.msg, "\"vectors\"") != NULL);
}

TEST(jsonl_bad_vector) {
  vecfile_record r;
  qv_error e = {0};
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1, \"2\"]}", &e), QV_EFORMAT);
  ASSERT(strstr(e.msg, "[1]") != NULL);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1, null]}", NULL), QV_EFORMAT);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [[1]]}", NULL), QV_EFORMAT);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": []}", NULL), QV_EFORMAT);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": {\"0\": 1}}", NULL), QV_EFORMAT);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1e39]}", NULL), QV_ERANGE);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1e400]}", NULL), QV_EJSON);
}

TEST(jsonl_payload_not_object) {
  vecfile_record r;
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1], \"payload\": [1]}", NULL), QV_EFORMAT);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1], \"payload\": \"x\"}", NULL), QV_EFORMAT);
  ASSERT(r.vector == NULL && r.payload == NULL);
}

TEST(jsonl_bad_json) {
  vecfile_record r;
  qv_error e = {0};
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1]", &e), QV_EJSON);
  ASSERT(strstr(e.msg, "column") != NULL);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"id\": 2, \"vector\": [1]}", NULL), QV_EJSON);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [NaN]}", NULL), QV_EJSON);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1]} {}", NULL), QV_EJSON);
  ASSERT_STATUS(jl(&r, "[1, 2]", NULL), QV_EFORMAT);
  ASSERT_STATUS(jl(&r, "17", NULL), QV_EFORMAT);
  /* An embedded NUL byte ends nothing early: the line is bad JSON. */
  ASSERT_STATUS(vecfile_parse_jsonl_line(&r, "{\"id\": 1}\0{", 11, NULL), QV_EJSON);
}

TEST(jsonl_bad_utf8) {
  vecfile_record r;
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1], \"payload\": {\"t\": \"\xff\xfe\"}}", NULL),
                QV_EJSON);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1], \"payload\": {\"t\": \"\xc3\"}}", NULL), QV_EJSON);
  ASSERT_STATUS(jl(&r, "{\"id\": 1, \"vector\": [1], \"payload\": {\"t\": \"\\u0000\"}}", NULL),
                QV_EJSON);
  ASSERT_OK(jl(&r, "{\"id\": 1, \"vector\": [1], \"payload\": {\"t\": \"h\xc3\xa9\"}}", NULL));
  ASSERT_STR_EQ(r.payload, "{\"t\":\"h\xc3\xa9\"}");
  record_free(&r);
}

TEST(jsonl_blank_line) {
  vecfile_record r;
  ASSERT_STATUS(jl(&r, "", NULL), QV_NOTFOUND);
  ASSERT_STATUS(jl(&r, "  \t \r", NULL), QV_NOTFOUND);
  ASSERT(r.vector == NULL);
}

/* ---- ids files ----------------------------------------------------------------------- */

static qv_status ids(qv_point_id **out, size_t *n, const char *text, qv_error *e) {
  return vecfile_read_ids(out, n, (const uint8_t *)text, strlen(text), e);
}

TEST(ids_good) {
  qv_point_id *v;
  size_t n;
  ASSERT_OK(ids(&v, &n, "1\r\n  22 \n\n\t\n550e8400-e29b-41d4-a716-446655440000\r\n18446744073709551615",
                NULL));
  ASSERT_EQ(n, 4);
  ASSERT_U64_EQ(v[0].num, 1);
  ASSERT_U64_EQ(v[1].num, 22);
  ASSERT_EQ(v[2].kind, QV_ID_UUID);
  ASSERT_U64_EQ(v[3].num, UINT64_MAX);
  free(v);
}

TEST(ids_empty) {
  qv_point_id *v;
  size_t n;
  ASSERT_OK(ids(&v, &n, "", NULL));
  ASSERT_EQ(n, 0);
  ASSERT(v == NULL);
  ASSERT_OK(ids(&v, &n, "\n \r\n", NULL));
  ASSERT_EQ(n, 0);
  free(v);
}

TEST(ids_errors_name_the_line) {
  qv_point_id *v;
  size_t n;
  qv_error e = {0};
  ASSERT_STATUS(ids(&v, &n, "1\n2\n\nx7\n", &e), QV_EFORMAT);
  ASSERT(strstr(e.msg, "line 4") != NULL);
  ASSERT(v == NULL);
  ASSERT_STATUS(ids(&v, &n, "1\n-3\n", &e), QV_EFORMAT);
  ASSERT(strstr(e.msg, "line 2") != NULL);
  ASSERT_STATUS(ids(&v, &n, "1\n18446744073709551616\n", &e), QV_ERANGE);
  ASSERT(strstr(e.msg, "line 2") != NULL);
  ASSERT_STATUS(ids(&v, &n, "123456789012345678901234567890123456789012345678901234567890\n", &e),
                QV_ERANGE);
  ASSERT_STATUS(ids(&v, &n, "1 2\n", &e), QV_EFORMAT);
  ASSERT_STATUS(vecfile_read_ids(&v, &n, (const uint8_t *)"12\0x\n", 5, &e), QV_EFORMAT);
  /* The message quotes the id from a buffer with no NUL after it (found by fuzz_jsonl). */
  static const char big[] = "18446744073709551616";
  uint8_t *exact = malloc(sizeof big - 1);
  ASSERT(exact != NULL);
  memcpy(exact, big, sizeof big - 1);
  qv_status st = vecfile_read_ids(&v, &n, exact, sizeof big - 1, &e);
  free(exact);
  ASSERT_STATUS(st, QV_ERANGE);
  ASSERT(strstr(e.msg, "\"18446744073709551616\"") != NULL);
}

TEST(ids_many) {
  size_t cap = 100000 * 8;
  char *text = malloc(cap);
  ASSERT(text != NULL);
  size_t off = 0;
  for (int i = 0; i < 100000; i++) off += (size_t)sprintf(text + off, "%d\n", i * 3);
  qv_point_id *v;
  size_t n;
  qv_status st = vecfile_read_ids(&v, &n, (const uint8_t *)text, off, NULL);
  free(text);
  ASSERT_OK(st);
  ASSERT_EQ(n, 100000);
  ASSERT_U64_EQ(v[99999].num, 299997);
  free(v);
}

/* ---- mapping ------------------------------------------------------------------------- */

static char tmpdir[512];

static void make_tmpdir(void) {
  const char *base = getenv("QUIVER_TEST_TMP");
  if (!base || !*base) base = "/tmp";
  mkdir(base, 0755);
  snprintf(tmpdir, sizeof tmpdir, "%s/vecfile-XXXXXX", base);
  if (!mkdtemp(tmpdir)) TEST_FAIL_("mkdtemp %s: %s", tmpdir, strerror(errno));
}

TEST(map_file) {
  make_tmpdir();
  char path[600];
  snprintf(path, sizeof path, "%s/a.fvecs", tmpdir);
  bytes b = fvecs(2, 3);
  FILE *f = fopen(path, "wb");
  ASSERT(f != NULL);
  ASSERT_EQ(fwrite(b.p, 1, b.n, f), b.n);
  ASSERT_EQ(fclose(f), 0);
  const uint8_t *buf;
  size_t len;
  ASSERT_OK(vecfile_map(path, &buf, &len, NULL));
  ASSERT_EQ(len, b.n);
  ASSERT_EQ(memcmp(buf, b.p, len), 0);
  free(b.p);
  vecfile_matrix m;
  ASSERT_OK(vecfile_read_fvecs(&m, buf, len, NULL));
  ASSERT_EQ(m.rows, 2);
  vecfile_matrix_free(&m);
  vecfile_unmap(buf, len);
  unlink(path);

  snprintf(path, sizeof path, "%s/empty", tmpdir);
  f = fopen(path, "wb");
  ASSERT(f != NULL);
  ASSERT_EQ(fclose(f), 0);
  ASSERT_OK(vecfile_map(path, &buf, &len, NULL));
  ASSERT(buf == NULL);
  ASSERT_EQ(len, 0);
  vecfile_unmap(buf, len);
  unlink(path);
  rmdir(tmpdir);
}

TEST(map_missing_and_directory) {
  make_tmpdir();
  char path[600];
  snprintf(path, sizeof path, "%s/nope.npy", tmpdir);
  const uint8_t *buf;
  size_t len;
  qv_error e = {0};
  ASSERT_STATUS(vecfile_map(path, &buf, &len, &e), ENOENT);
  ASSERT(strstr(e.msg, "nope.npy") != NULL);
  ASSERT_STATUS(vecfile_map(tmpdir, &buf, &len, &e), EISDIR);
  ASSERT(strstr(e.msg, "directory") != NULL);
  ASSERT(buf == NULL);
  rmdir(tmpdir);
}

TEST_MAIN(T(npy_numpy_fixture), T(npy_our_builder_matches_numpy), T(npy_v1_header),
          T(npy_v2_header), T(npy_v3_header), T(npy_header_spelling_tolerated),
          T(npy_f8_converted), T(npy_f8_overflow_is_erange), T(npy_nonfinite_passes_through),
          T(npy_1d_is_one_row), T(npy_dim_1_and_4096), T(npy_empty_matrix),
          T(npy_dim_zero_refused), T(npy_dim_over_max_refused), T(npy_fortran_order_refused),
          T(npy_big_endian_refused), T(npy_other_dtypes_refused), T(npy_other_shapes_refused),
          T(npy_truncated_last_byte), T(npy_truncated_header), T(npy_trailing_junk),
          T(npy_overflowing_shapes), T(npy_header_garbage), T(npy_bad_magic_and_version),
          T(fvecs_good), T(fvecs_dim_1_and_4096), T(fvecs_mismatched_dim), T(fvecs_truncated),
          T(fvecs_empty), T(fvecs_bad_dims), T(jsonl_good), T(jsonl_payload_optional),
          T(jsonl_uuid_id), T(jsonl_u64_ids), T(jsonl_negative_id), T(jsonl_huge_id),
          T(jsonl_missing_fields), T(jsonl_unknown_key), T(jsonl_bad_vector),
          T(jsonl_payload_not_object), T(jsonl_bad_json), T(jsonl_bad_utf8), T(jsonl_blank_line),
          T(ids_good), T(ids_empty), T(ids_errors_name_the_line), T(ids_many), T(map_file),
          T(map_missing_and_directory))
