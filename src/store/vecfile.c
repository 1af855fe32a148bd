/* Readers for the vector files `quiver load` accepts: .npy, .fvecs, JSON lines and ids
 * files, all parsed from memory. See vecfile.h for the formats and conventions.
 *
 * Every size that comes from a file is untrusted: each product goes through
 * qv_mul_overflow, and a file's declared size is compared with the bytes actually present
 * before anything is allocated, so a 100-byte file that claims (2**40, 4) fails with
 * QV_ETRUNC instead of asking for terabytes. */
#include "store/vecfile.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "base/error.h"
#include "base/mem.h"

void vecfile_matrix_free(vecfile_matrix *m) {
  if (!m) return;
  qv_aligned_free(m->data);
  m->data = NULL;
  m->rows = m->cols = 0;
}

static uint32_t load_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t load_le64(const uint8_t *p) {
  return (uint64_t)load_le32(p) | (uint64_t)load_le32(p + 4) << 32;
}

/* Copies n little-endian float32 values; src need not be aligned. */
static void copy_f32_le(float *dst, const uint8_t *src, size_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (n) memcpy(dst, src, n * sizeof(float));
#else
  for (size_t i = 0; i < n; i++) {
    uint32_t u = load_le32(src + 4 * i);
    memcpy(&dst[i], &u, sizeof u);
  }
#endif
}

/* ---- .npy ---------------------------------------------------------------------------- */

/* The header is a Python dict literal written by numpy's repr, e.g.
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
 * padded with spaces and ended by '\n'. We parse just this grammar (string keys and
 * strings, True/False, tuples of non-negative integers) rather than evaluate Python. */
typedef struct npy_cursor {
  const char *p, *end;
} npy_cursor;

#define NPY_MAX_DIMS 8

typedef struct npy_header {
  char descr[16];
  int fortran_order;
  size_t ndim;
  uint64_t shape[NPY_MAX_DIMS];
  int have_descr, have_fortran, have_shape;
} npy_header;

static void npy_skip_ws(npy_cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
    c->p++;
}

static int npy_eat(npy_cursor *c, char ch) {
  npy_skip_ws(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return 1;
  }
  return 0;
}

/* A quoted string without escapes into buf (NUL-terminated). Returns 0 on success. */
static int npy_string(npy_cursor *c, char *buf, size_t cap) {
  npy_skip_ws(c);
  if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return -1;
  char q = *c->p++;
  size_t n = 0;
  while (c->p < c->end && *c->p != q) {
    if (*c->p == '\\' || *c->p == '\n' || n + 1 >= cap) return -1;
    buf[n++] = *c->p++;
  }
  if (c->p >= c->end) return -1;
  c->p++;
  buf[n] = 0;
  return 0;
}

static int npy_word(npy_cursor *c, const char *w) {
  size_t n = strlen(w);
  npy_skip_ws(c);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0) return 0;
  c->p += n;
  return 1;
}

/* A tuple of non-negative integers: (), (3,), (3, 4), with an optional trailing comma and
 * the 'L' suffix Python 2 numpy wrote for longs. */
static qv_status npy_shape(npy_cursor *c, npy_header *h, qv_error *err) {
  if (!npy_eat(c, '('))
    return qv_fail(err, QV_EFORMAT, "header: 'shape' must be a tuple");
  h->ndim = 0;
  for (;;) {
    if (npy_eat(c, ')')) return QV_OK;
    npy_skip_ws(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
      return qv_fail(err, QV_EFORMAT, "header: 'shape' must hold non-negative integers");
    uint64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
      if (v > (UINT64_MAX - 9) / 10)
        return qv_fail(err, QV_EFORMAT, "header: a dimension in 'shape' is too large");
      v = v * 10 + (uint64_t)(*c->p++ - '0');
    }
    if (c->p < c->end && *c->p == 'L') c->p++;
    if (h->ndim == NPY_MAX_DIMS)
      return qv_fail(err, QV_EFORMAT, "header: 'shape' has too many dimensions");
    h->shape[h->ndim++] = v;
    if (npy_eat(c, ',')) continue;
    if (npy_eat(c, ')')) return QV_OK;
    return qv_fail(err, QV_EFORMAT, "header: malformed 'shape' tuple");
  }
}

static qv_status npy_parse_header(npy_header *h, const char *text, size_t len, qv_error *err) {
  npy_cursor c = {text, text + len};
  memset(h, 0, sizeof *h);
  if (!npy_eat(&c, '{'))
    return qv_fail(err, QV_EFORMAT, "header: expected a dict literal starting with '{'");
  for (;;) {
    if (npy_eat(&c, '}')) break;
    char key[32];
    if (npy_string(&c, key, sizeof key) != 0)
      return qv_fail(err, QV_EFORMAT, "header: expected a quoted key");
    if (!npy_eat(&c, ':'))
      return qv_fail(err, QV_EFORMAT, "header: expected ':' after '%s'", key);
    if (strcmp(key, "descr") == 0) {
      if (h->have_descr) return qv_fail(err, QV_EFORMAT, "header: duplicate 'descr'");
      if (npy_string(&c, h->descr, sizeof h->descr) != 0)
        return qv_fail(err, QV_EFORMAT,
                       "header: 'descr' must be a plain dtype string such as '<f4' "
                       "(structured dtypes are not supported)");
      h->have_descr = 1;
    } else if (strcmp(key, "fortran_order") == 0) {
      if (h->have_fortran)
        return qv_fail(err, QV_EFORMAT, "header: duplicate 'fortran_order'");
      if (npy_word(&c, "True")) h->fortran_order = 1;
      else if (npy_word(&c, "False")) h->fortran_order = 0;
      else return qv_fail(err, QV_EFORMAT, "header: 'fortran_order' must be True or False");
      h->have_fortran = 1;
    } else if (strcmp(key, "shape") == 0) {
      if (h->have_shape) return qv_fail(err, QV_EFORMAT, "header: duplicate 'shape'");
      qv_status rc = npy_shape(&c, h, err);
      if (rc) return rc;
      h->have_shape = 1;
    } else {
      return qv_fail(err, QV_EFORMAT, "header: unexpected key '%s'", key);
    }
    if (npy_eat(&c, ',')) continue;
    if (npy_eat(&c, '}')) break;
    return qv_fail(err, QV_EFORMAT, "header: expected ',' or '}' after '%s'", key);
  }
  npy_skip_ws(&c);
  if (c.p != c.end) return qv_fail(err, QV_EFORMAT, "header: unexpected text after '}'");
  if (!h->have_descr || !h->have_fortran || !h->have_shape)
    return qv_fail(err, QV_EFORMAT, "header: missing '%s'",
                   !h->have_descr ? "descr" : !h->have_fortran ? "fortran_order" : "shape");
  return QV_OK;
}

qv_status vecfile_read_npy(vecfile_matrix *out, const uint8_t *buf, size_t len, qv_error *err) {
  static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  memset(out, 0, sizeof *out);
  if (len < 10 || memcmp(buf, magic, sizeof magic) != 0) {
    if (len < sizeof magic && len > 0 && memcmp(buf, magic, len) == 0)
      return qv_fail(err, QV_ETRUNC, "file ends inside the magic string");
    if (len >= sizeof magic && memcmp(buf, magic, sizeof magic) == 0)
      return qv_fail(err, QV_ETRUNC, "file ends inside the preamble (%zu bytes)", len);
    if (len == 0) return qv_fail(err, QV_EFORMAT, "empty file");
    return qv_fail(err, QV_EFORMAT, "missing the \\x93NUMPY magic string");
  }
  uint8_t major = buf[6], minor = buf[7];
  size_t hlen, hoff;
  if (major == 1 && minor == 0) {
    hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
    hoff = 10;
  } else if ((major == 2 || major == 3) && minor == 0) {
    if (len < 12)
      return qv_fail(err, QV_ETRUNC, "file ends inside the preamble (%zu bytes)", len);
    hlen = load_le32(buf + 8);
    hoff = 12;
  } else {
    return qv_fail(err, QV_EFORMAT, "unsupported format version %u.%u (want 1.0, 2.0, 3.0)",
                   major, minor);
  }
  if (hlen > len - hoff)
    return qv_fail(err, QV_ETRUNC, "truncated: header needs %zu bytes, file has %zu after the preamble",
                   hlen, len - hoff);

  npy_header h;
  qv_status rc = npy_parse_header(&h, (const char *)buf + hoff, hlen, err);
  if (rc) return rc;

  size_t itemsize;
  if (strcmp(h.descr, "<f4") == 0) itemsize = 4;
  else if (strcmp(h.descr, "<f8") == 0) itemsize = 8;
  else if (strcmp(h.descr, ">f4") == 0 || strcmp(h.descr, ">f8") == 0)
    return qv_fail(err, QV_EFORMAT,
                   "dtype '%s' is big-endian; save with arr.astype('<f4')", h.descr);
  else
    return qv_fail(err, QV_EFORMAT,
                   "dtype '%s' is not supported (want '<f4' or '<f8'); "
                   "save with arr.astype('<f4')", h.descr);
  if (h.fortran_order)
    return qv_fail(err, QV_EFORMAT,
                   "fortran_order is True; save with np.ascontiguousarray(arr)");

  uint64_t rows64, cols64;
  if (h.ndim == 2) {
    rows64 = h.shape[0];
    cols64 = h.shape[1];
  } else if (h.ndim == 1) {
    rows64 = 1;
    cols64 = h.shape[0];
  } else {
    return qv_fail(err, QV_EFORMAT, "shape has %zu dimensions; want (n, d) or (d,)",
                   h.ndim);
  }
  if (cols64 == 0) return qv_fail(err, QV_EFORMAT, "vector dimension is 0");
  if (cols64 > QV_MAX_VECTOR_SIZE)
    return qv_fail(err, QV_EFORMAT, "vector dimension %" PRIu64 " exceeds the maximum %d",
                   cols64, QV_MAX_VECTOR_SIZE);
  size_t count, need;
  if (rows64 > SIZE_MAX || qv_mul_overflow((size_t)rows64, (size_t)cols64, &count) ||
      qv_mul_overflow(count, itemsize, &need))
    return qv_fail(err, QV_EFORMAT, "shape (%" PRIu64 ", %" PRIu64 ") is too large",
                   rows64, cols64);

  size_t doff = hoff + hlen, have = len - doff;
  if (have < need)
    return qv_fail(err, QV_ETRUNC, "truncated: data needs %zu bytes, file has %zu after the header",
                   need, have);
  if (have > need)
    return qv_fail(err, QV_EFORMAT, "%zu unexpected bytes after the %zu bytes of data",
                   have - need, need);

  float *data = qv_aligned_alloc(count * sizeof(float)); /* (rows, cols) */
  if (!data) return qv_fail(err, QV_ENOMEM, "out of memory for %zu floats", count);
  const uint8_t *src = buf + doff;
  if (itemsize == 4) {
    copy_f32_le(data, src, count);
  } else {
    for (size_t i = 0; i < count; i++) {
      uint64_t u = load_le64(src + 8 * i);
      double v;
      memcpy(&v, &u, sizeof v);
      /* NaN and infinities pass through; the collection refuses them by point. */
      if (isfinite(v) && fabs(v) > FLT_MAX) {
        qv_aligned_free(data);
        return qv_fail(err, QV_ERANGE, "row %zu, column %zu: %g overflows float32",
                       i / (size_t)cols64, i % (size_t)cols64, v);
      }
      data[i] = (float)v;
    }
  }
  out->data = data;
  out->rows = (size_t)rows64;
  out->cols = (size_t)cols64;
  return QV_OK;
}

/* ---- .fvecs -------------------------------------------------------------------------- */

qv_status vecfile_read_fvecs(vecfile_matrix *out, const uint8_t *buf, size_t len,
                             qv_error *err) {
  memset(out, 0, sizeof *out);
  if (len == 0) return qv_fail(err, QV_EFORMAT, "empty file");
  /* First pass: validate every row header and count rows, so the block is allocated once
   * and only for bytes that are really there. */
  size_t dim = 0, rowbytes = 0, rows = 0;
  for (size_t off = 0; off < len; rows++) {
    size_t left = len - off;
    if (left < 4)
      return qv_fail(err, QV_ETRUNC, "row %zu is truncated: %zu of 4 header bytes",
                     rows, left);
    int32_t d = (int32_t)load_le32(buf + off);
    if (rows == 0) {
      if (d < 1 || d > QV_MAX_VECTOR_SIZE)
        return qv_fail(err, QV_EFORMAT, "row 0: dimension %" PRId32 " is outside 1..%d",
                       d, QV_MAX_VECTOR_SIZE);
      dim = (size_t)d;
      rowbytes = 4 + 4 * dim;
    } else if (d < 0 || (size_t)d != dim) {
      return qv_fail(err, QV_EFORMAT, "row %zu: dimension %" PRId32 " differs from %zu",
                     rows, d, dim);
    }
    if (left < rowbytes)
      return qv_fail(err, QV_ETRUNC, "row %zu is truncated: needs %zu bytes, has %zu",
                     rows, rowbytes, left);
    off += rowbytes;
  }
  size_t count, bytes;
  if (qv_mul_overflow(rows, dim, &count) || qv_mul_overflow(count, sizeof(float), &bytes))
    return qv_fail(err, QV_EFORMAT, "too many rows");
  float *data = qv_aligned_alloc(bytes); /* (rows, dim) */
  if (!data) return qv_fail(err, QV_ENOMEM, "out of memory for %zu floats", count);
  for (size_t r = 0; r < rows; r++) copy_f32_le(data + r * dim, buf + r * rowbytes + 4, dim);
  out->data = data;
  out->rows = rows;
  out->cols = dim;
  return QV_OK;
}

/* ---- JSON lines ---------------------------------------------------------------------- */

static int is_json_ws(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }

/* Finds the raw text of the top-level "id" value when it is a number. jansson keeps
 * integers in a signed 64-bit json_int_t and fails on larger ones, but ids go up to
 * 2^64 - 1, so the id's digits are read from the text itself. This is a scanner, not a
 * validator: on anything unexpected it answers "not found" and jansson reports the error.
 * Keys spelled with escapes ("\u0069d") are not matched; such ids still work up to
 * INT64_MAX through jansson. */
static int find_id_number(const char *s, size_t len, size_t *at, size_t *n) {
  size_t i = 0;
  int depth = 0, expect_key = 0;
  while (i < len) {
    char ch = s[i];
    if (ch == '"') {
      size_t start = ++i;
      while (i < len && s[i] != '"') i += s[i] == '\\' ? 2 : 1;
      if (i >= len) return 0;
      size_t klen = i - start;
      i++;
      if (depth == 1 && expect_key) {
        expect_key = 0;
        int is_id = klen == 2 && memcmp(s + start, "id", 2) == 0;
        while (i < len && is_json_ws(s[i])) i++;
        if (i >= len || s[i] != ':') return 0;
        i++;
        while (i < len && is_json_ws(s[i])) i++;
        if (is_id) {
          size_t j = i;
          while (j < len && (s[j] == '-' || s[j] == '+' || s[j] == '.' || s[j] == 'e' ||
                             s[j] == 'E' || (s[j] >= '0' && s[j] <= '9')))
            j++;
          if (j == i) return 0;
          *at = i;
          *n = j - i;
          return 1;
        }
      }
      continue;
    }
    if (ch == '{') {
      depth++;
      expect_key = depth == 1;
    } else if (ch == '[') {
      depth++;
    } else if (ch == '}' || ch == ']') {
      depth--;
    } else if (ch == ',' && depth == 1) {
      expect_key = 1;
    }
    i++;
  }
  return 0;
}

/* Quoted file text is not NUL-terminated: messages print it with "%.*s" and this bound. */
#define MSG_LEN(n) ((int)((n) > 40 ? 40 : (n)))

/* True when tok is all decimal digits. */
static int is_digits(const char *tok, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++)
    if (tok[i] < '0' || tok[i] > '9') return 0;
  return 1;
}

/* True when tok is a JSON integer literal: -? (0 | [1-9][0-9]*). */
static int is_json_int_literal(const char *tok, size_t n) {
  size_t i = n && tok[0] == '-' ? 1 : 0;
  if (!is_digits(tok + i, n - i)) return 0;
  return tok[i] != '0' || n - i == 1;
}

/* Does the integer literal fit jansson's json_int_t? */
static int fits_json_int(const char *tok, size_t n) {
  char tmp[32];
  if (n >= sizeof tmp) return 0;
  memcpy(tmp, tok, n);
  tmp[n] = 0;
  errno = 0;
  (void)strtoll(tmp, NULL, 10);
  return errno != ERANGE;
}

static qv_status id_from_literal(qv_point_id *id, const char *tok, size_t n, qv_error *err) {
  if (tok[0] == '-')
    return qv_fail(err, QV_ERANGE, "\"id\": %.*s%s is negative", MSG_LEN(n), tok,
                   n > 40 ? "..." : "");
  char tmp[32];
  int ok = 0;
  if (n < sizeof tmp) {
    memcpy(tmp, tok, n);
    tmp[n] = 0;
    ok = qv_point_id_parse(id, tmp) == QV_OK && id->kind == QV_ID_NUM;
  }
  if (!ok)
    return qv_fail(err, QV_ERANGE, "\"id\": %.*s%s is out of range (max %" PRIu64 ")",
                   MSG_LEN(n), tok, n > 40 ? "..." : "", UINT64_MAX);
  return QV_OK;
}

static qv_status parse_id(qv_point_id *id, json_t *v, qv_error *err) {
  if (json_is_string(v)) {
    const char *s = json_string_value(v);
    if (json_string_length(v) != 36 || qv_point_id_parse(id, s) != QV_OK || id->kind != QV_ID_UUID)
      return qv_fail(err, QV_EFORMAT, "\"id\": string \"%.40s\" is not a UUID", s);
    return QV_OK;
  }
  if (json_is_integer(v)) {
    json_int_t n = json_integer_value(v);
    if (n < 0) return qv_fail(err, QV_ERANGE, "\"id\": %" JSON_INTEGER_FORMAT " is negative", n);
    memset(id, 0, sizeof *id);
    id->kind = QV_ID_NUM;
    id->num = (uint64_t)n;
    return QV_OK;
  }
  return qv_fail(err, QV_EFORMAT, "\"id\" must be a non-negative integer or a UUID string");
}

static qv_status parse_vector(vecfile_record *rec, json_t *v, qv_error *err) {
  if (!json_is_array(v)) return qv_fail(err, QV_EFORMAT, "\"vector\" must be an array of numbers");
  size_t n = json_array_size(v);
  if (n == 0) return qv_fail(err, QV_EFORMAT, "\"vector\" is empty");
  if (n > QV_MAX_VECTOR_SIZE)
    return qv_fail(err, QV_EFORMAT, "\"vector\" has %zu components; the maximum is %d", n,
                   QV_MAX_VECTOR_SIZE);
  float *vec = malloc(n * sizeof *vec); /* (n) */
  if (!vec) return qv_fail(err, QV_ENOMEM, "out of memory for the vector");
  for (size_t i = 0; i < n; i++) {
    json_t *x = json_array_get(v, i);
    if (!json_is_number(x)) {
      free(vec);
      return qv_fail(err, QV_EFORMAT, "\"vector\"[%zu] is not a number", i);
    }
    double d = json_number_value(x);
    if (fabs(d) > FLT_MAX) {
      free(vec);
      return qv_fail(err, QV_ERANGE, "\"vector\"[%zu] = %g overflows float32", i, d);
    }
    vec[i] = (float)d;
  }
  rec->vector = vec;
  rec->dim = n;
  return QV_OK;
}

qv_status vecfile_parse_jsonl_line(vecfile_record *rec, const char *line, size_t len,
                                   qv_error *err) {
  memset(rec, 0, sizeof *rec);
  size_t k = 0;
  while (k < len && (is_json_ws(line[k]) || line[k] == '\v' || line[k] == '\f')) k++;
  if (k == len) return qv_fail(err, QV_NOTFOUND, "blank line");

  /* An integer id beyond json_int_t: hand jansson a copy with the literal replaced by "0"
   * and spaces (same length, still valid JSON) and read the id from the original text. */
  size_t id_at = 0, id_n = 0;
  int big_id = find_id_number(line, len, &id_at, &id_n) && is_json_int_literal(line + id_at, id_n) &&
               !fits_json_int(line + id_at, id_n);
  char *copy = NULL;
  const char *text = line;
  if (big_id) {
    copy = malloc(len);
    if (!copy) return qv_fail(err, QV_ENOMEM, "out of memory for the line");
    memcpy(copy, line, len);
    copy[id_at] = '0';
    memset(copy + id_at + 1, ' ', id_n - 1);
    text = copy;
  }

  json_error_t jerr;
  json_t *root = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
  free(copy);
  if (!root)
    return qv_fail(err, QV_EJSON, "invalid JSON at column %d: %s", jerr.column, jerr.text);

  qv_status rc = QV_OK;
  if (!json_is_object(root)) {
    rc = qv_fail(err, QV_EFORMAT, "line is not a JSON object");
    goto fail;
  }
  const char *key;
  json_t *val;
  json_object_foreach(root, key, val) {
    if (strcmp(key, "id") != 0 && strcmp(key, "vector") != 0 && strcmp(key, "payload") != 0) {
      rc = qv_fail(err, QV_EFORMAT, "unknown key \"%.60s\" (want id, vector, payload)", key);
      goto fail;
    }
  }
  json_t *id = json_object_get(root, "id"), *vector = json_object_get(root, "vector"),
         *payload = json_object_get(root, "payload");
  if (!id) {
    rc = qv_fail(err, QV_EFORMAT, "missing \"id\"");
    goto fail;
  }
  if (!vector) {
    rc = qv_fail(err, QV_EFORMAT, "missing \"vector\"");
    goto fail;
  }
  rc = big_id ? id_from_literal(&rec->id, line + id_at, id_n, err) : parse_id(&rec->id, id, err);
  if (rc) goto fail;
  rc = parse_vector(rec, vector, err);
  if (rc) goto fail;
  if (payload && !json_is_null(payload)) {
    if (!json_is_object(payload)) {
      rc = qv_fail(err, QV_EFORMAT, "\"payload\" must be an object or null");
      goto fail;
    }
    rec->payload = json_dumps(payload, JSON_COMPACT);
    if (!rec->payload) {
      rc = qv_fail(err, QV_ENOMEM, "out of memory serializing \"payload\"");
      goto fail;
    }
  }
  json_decref(root);
  return QV_OK;

fail:
  json_decref(root);
  free(rec->vector);
  free(rec->payload);
  memset(rec, 0, sizeof *rec);
  return rc;
}

/* ---- ids files ----------------------------------------------------------------------- */

static int is_space(uint8_t ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' || ch == '\f';
}

qv_status vecfile_read_ids(qv_point_id **ids, size_t *count, const uint8_t *buf, size_t len,
                           qv_error *err) {
  *ids = NULL;
  *count = 0;
  qv_point_id *arr = NULL;
  size_t n = 0, cap = 0, lineno = 0;
  qv_status rc = QV_OK;
  for (size_t off = 0; off < len;) {
    const uint8_t *nl = memchr(buf + off, '\n', len - off);
    size_t end = nl ? (size_t)(nl - buf) : len, a = off, b = end;
    lineno++;
    off = nl ? end + 1 : len;
    while (a < b && is_space(buf[a])) a++;
    while (b > a && is_space(buf[b - 1])) b--;
    if (a == b) continue;

    const char *tok = (const char *)buf + a;
    size_t tlen = b - a;
    char tmp[48];
    qv_point_id id;
    qv_status st = QV_EINVAL;
    if (tlen < sizeof tmp && !memchr(tok, 0, tlen)) {
      memcpy(tmp, tok, tlen);
      tmp[tlen] = 0;
      st = qv_point_id_parse(&id, tmp);
    } else if (is_digits(tok, tlen)) {
      st = QV_ERANGE;
    }
    if (st == QV_ERANGE) {
      rc = qv_fail(err, QV_ERANGE, "line %zu: \"%.*s%s\" is out of range (max %" PRIu64 ")",
                   lineno, MSG_LEN(tlen), tok, tlen > 40 ? "..." : "", UINT64_MAX);
      goto fail;
    }
    if (st != QV_OK) {
      /* %.*s stops at a NUL byte, which is fine for a message. */
      rc = qv_fail(err, QV_EFORMAT,
                   "line %zu: \"%.*s%s\" is not an id (a non-negative integer or a UUID)",
                   lineno, MSG_LEN(tlen), tok, tlen > 40 ? "..." : "");
      goto fail;
    }
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 64, bytes;
      if (qv_mul_overflow(ncap, sizeof *arr, &bytes)) {
        rc = qv_fail(err, QV_ENOMEM, "too many ids");
        goto fail;
      }
      qv_point_id *grown = realloc(arr, bytes);
      if (!grown) {
        rc = qv_fail(err, QV_ENOMEM, "out of memory at line %zu", lineno);
        goto fail;
      }
      arr = grown;
      cap = ncap;
    }
    arr[n++] = id;
  }
  *ids = arr;
  *count = n;
  return QV_OK;

fail:
  free(arr);
  return rc;
}

/* ---- mapping ------------------------------------------------------------------------- */

qv_status vecfile_map(const char *path, const uint8_t **buf, size_t *len, qv_error *err) {
  *buf = NULL;
  *len = 0;
  /* O_NONBLOCK so a FIFO is refused below instead of blocking open() for a writer. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int e = errno;
    return qv_fail(err, e, "%s: %s", path, strerror(e));
  }
  struct stat st;
  qv_status rc;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    rc = qv_fail(err, e, "%s: %s", path, strerror(e));
    goto done;
  }
  if (S_ISDIR(st.st_mode)) {
    rc = qv_fail(err, EISDIR, "%s: is a directory", path);
    goto done;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = qv_fail(err, QV_EINVAL, "%s: not a regular file", path);
    goto done;
  }
  if ((uint64_t)st.st_size > SIZE_MAX) {
    rc = qv_fail(err, EFBIG, "%s: %s", path, strerror(EFBIG));
    goto done;
  }
  rc = QV_OK;
  if (st.st_size == 0) goto done;
  void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    rc = qv_fail(err, e, "%s: mmap: %s", path, strerror(e));
    goto done;
  }
  *buf = p;
  *len = (size_t)st.st_size;
done:
  close(fd);
  return rc;
}

void vecfile_unmap(const uint8_t *buf, size_t len) {
  if (buf && len) munmap((void *)buf, len);
}
