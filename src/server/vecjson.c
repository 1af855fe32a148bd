/* Vector lists rewritten to one string each before jansson parses a body; see vecjson.h.
 *
 * The scan is a single pass over the text that follows JSON's structure just far enough to
 * know, at each '[', the key it is the value of and whether a "payload", "payloads" or
 * "filter" encloses it: strings (escapes included) are skipped whole, so brackets and
 * quotes inside them never count. It does not validate: jansson does that on the
 * rewritten text, which differs from the original only inside the rewritten lists, each
 * of which was checked to be '[' number (',' number)* ']' with JSON's number grammar. So
 * the rewritten body is valid JSON exactly when the original was, and means the same
 * with those lists as strings. */
#include "server/vecjson.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define SECRET_LEN 16
#define PREFIX_LEN (1 + 6 + SECRET_LEN + 1) /* \x01 "qvf32:" secret ":" */

static char prefix[PREFIX_LEN + 1];
static pthread_once_t prefix_once = PTHREAD_ONCE_INIT;

static void make_prefix(void) {
  unsigned char r[SECRET_LEN / 2];
  if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
    /* no entropy source: a value a client cannot read from the outside still does */
    uint64_t x = (uint64_t)(uintptr_t)&r ^ (uint64_t)(uintptr_t)make_prefix;
    memcpy(r, &x, sizeof r);
  }
  char *p = prefix;
  *p++ = '\x01';
  memcpy(p, "qvf32:", 6);
  p += 6;
  for (size_t i = 0; i < sizeof r; i++) p += sprintf(p, "%02x", r[i]);
  *p++ = ':';
  *p = 0;
}

static const char *get_prefix(void) {
  pthread_once(&prefix_once, make_prefix);
  return prefix;
}

/* ---- scanning ------------------------------------------------------------------------- */

enum { K_OTHER, K_VEC, K_VECTOR, K_VECTORS, K_EXCL };

/* A key's class from its raw text (between the quotes); escaped keys are K_OTHER. */
static int key_class(const char *k, size_t n) {
  if (memchr(k, '\\', n)) return K_OTHER;
#define IS(lit) (n == sizeof lit - 1 && !memcmp(k, lit, n))
  if (IS("vector")) return K_VECTOR;
  if (IS("query") || IS("nearest")) return K_VEC;
  if (IS("vectors")) return K_VECTORS;
  if (IS("payload") || IS("payloads") || IS("filter")) return K_EXCL;
#undef IS
  return K_OTHER;
}

typedef struct frame {
  char kind;      /* '{' or '[' */
  char cls;       /* the class of the key this container is the value of */
  char excluded;  /* inside payload / payloads / filter */
  char last_key;  /* objects: the class of the latest key */
  char want_key;  /* objects: the next string is a key */
} frame;

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The end of the string whose opening quote is at s[i], after its closing quote; n when
 * it is not closed. */
static size_t string_end(const char *s, size_t i, size_t n) {
  for (i++; i < n; i++) {
    if (s[i] == '\\') i++;
    else if (s[i] == '"') return i + 1;
  }
  return n;
}

/* One JSON number at s[i]: its end, or 0 when there is none. */
static size_t number_end(const char *s, size_t i, size_t n) {
  if (i < n && s[i] == '-') i++;
  if (i >= n) return 0;
  if (s[i] == '0') i++;
  else if (s[i] >= '1' && s[i] <= '9')
    while (i < n && is_digit(s[i])) i++;
  else
    return 0;
  if (i < n && s[i] == '.') {
    if (++i >= n || !is_digit(s[i])) return 0;
    while (i < n && is_digit(s[i])) i++;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    if (++i < n && (s[i] == '+' || s[i] == '-')) i++;
    if (i >= n || !is_digit(s[i])) return 0;
    while (i < n && is_digit(s[i])) i++;
  }
  return i;
}

/* A list of numbers at s[i] (on its '['): the end after its ']', or 0 when it is not one
 * (empty, or holding anything but numbers). */
static size_t numbers_end(const char *s, size_t i, size_t n) {
  for (i++;;) {
    while (i < n && is_ws(s[i])) i++;
    size_t e = number_end(s, i, n);
    if (!e) return 0;
    for (i = e; i < n && is_ws(s[i]);) i++;
    if (i >= n) return 0;
    if (s[i] == ']') return i + 1;
    if (s[i] != ',') return 0;
    i++;
  }
}

typedef struct span {
  size_t from, to;
} span;

/* Whether a list starting here holds a vector, by where it stands. */
static int vector_place(const frame *top) {
  if (!top || top->excluded) return 0;
  if (top->kind == '[') return top->cls == K_VECTORS;
  return top->last_key == K_VEC || top->last_key == K_VECTOR || top->cls == K_VECTOR;
}

/* The rewritable lists of s, in order, into *out (malloc'd); -1 when the body nests too
 * deep or memory runs out (then nothing is rewritten). */
static int find_spans(const char *s, size_t n, span **out, size_t *count) {
  frame st[VECJSON_MAX_DEPTH];
  size_t depth = 0, cap = 0, e;
  *out = NULL;
  *count = 0;
  for (size_t i = 0; i < n;) {
    char c = s[i];
    frame *top = depth ? &st[depth - 1] : NULL;
    if (c == '"') {
      e = string_end(s, i, n);
      if (top && top->kind == '{' && top->want_key) {
        top->last_key = (char)key_class(s + i + 1, e > i + 1 ? e - i - 2 : 0);
        top->want_key = 0;
      }
      i = e;
    } else if (c == '[' && vector_place(top) && (e = numbers_end(s, i, n))) {
      if (*count == cap) {
        cap = cap ? 2 * cap : 8;
        span *m = realloc(*out, cap * sizeof *m);
        if (!m) return -1;
        *out = m;
      }
      (*out)[(*count)++] = (span){i, e};
      i = e;
    } else if (c == '{' || c == '[') {
      if (depth == VECJSON_MAX_DEPTH) return -1;
      /* a list in {"vectors": {name: [...]}} holds vectors as batch.vectors does */
      char cls = !top || top->kind != '{' ? K_OTHER : top->cls == K_VECTORS ? K_VECTORS : top->last_key;
      char excl = top && (top->excluded || (top->kind == '{' && top->last_key == K_EXCL));
      st[depth++] = (frame){c, cls, excl, K_OTHER, c == '{'};
      i++;
    } else if (c == '}' || c == ']') {
      if (depth) depth--;
      i++;
    } else if (c == ',') {
      if (top && top->kind == '{') top->want_key = 1;
      i++;
    } else {
      i++;
    }
  }
  return 0;
}

void vecjson_free(vecjson *vt) {
  free(vt->data);
  free(vt->off);
  free(vt->len);
  free(vt->bad);
  *vt = (vecjson){0};
}

/* strtoll's or strtod's double without their general paths, for the shapes clients send.
 *
 * An integer of up to 19 digits within int64: the integer, as strtoll gives it.
 *
 * A real of up to 15 significant digits with a decimal exponent within 10^22: Clinger's
 * fast path, one exact integer times or over one exact power of ten, a single correctly
 * rounded IEEE operation.
 *
 * Up to 19 digits (Python's and most JSON encoders' repr of a float32 or float64 has 17)
 * with an exponent within 10^27, where x87 extended precision is available: the integer
 * (< 2^64) and the power of ten (5^27 < 2^63) are both exact in a 64-bit significand, so
 * one extended operation gives the value rounded once to 64 bits, within half a unit of
 * the last place (ulp64). Rounding that to double (53 bits) agrees with rounding the exact
 * value unless a double halfway point lies within half an ulp64 of it, that is unless its
 * 11 low bits are 0x400 (or next to it, to be safe); those numbers, and every other shape,
 * go to strtod. Returns 0 where strtoll or strtod must decide. */
static int fast_number(const char *p, char **end, double *out) {
  static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
  /* One pass over a well-formed JSON number (number_end checked the grammar): leading
   * zeros skipped, then at most 19 significant digits summed without a test per digit. */
  const char *q = p;
  int neg = *q == '-';
  q += neg;
  uint64_t m = 0;
  int digits = 0, exp10 = 0, real = 0;
  while (*q == '0') q++;
  const char *d = q;
  for (; is_digit(*q); q++) m = m * 10 + (uint64_t)(*q - '0');
  digits = (int)(q - d);
  if (*q == '.') {
    real = 1;
    q++;
    if (!digits)
      for (; *q == '0'; q++) exp10--;
    const char *f = q;
    for (; is_digit(*q); q++) m = m * 10 + (uint64_t)(*q - '0');
    digits += (int)(q - f);
    exp10 -= (int)(q - f);
  }
  if (digits > 19) return 0; /* m wrapped: strtod decides */
  if (*q == 'e' || *q == 'E') {
    real = 1;
    q++;
    int eneg = *q == '-', e = 0;
    q += *q == '-' || *q == '+';
    for (; is_digit(*q); q++)
      if ((e = e * 10 + (*q - '0')) > 1000) return 0;
    exp10 += eneg ? -e : e;
  }
  if (!real) { /* an integer, as strtoll reads it ("-0" is 0) */
    if (m > (uint64_t)INT64_MAX) return 0;
    *out = (double)(neg ? -(int64_t)m : (int64_t)m);
    *end = (char *)q;
    return 1;
  }
  if (m == 0) {
    *out = neg ? -0.0 : 0.0;
    *end = (char *)q;
    return 1;
  }
  double v;
  if (digits <= 15 && exp10 >= -22 && exp10 <= 22) {
    v = (double)m; /* exact: m < 10^15 < 2^53 */
    v = exp10 < 0 ? v / pow10[-exp10] : v * pow10[exp10];
  } else {
#if defined(__x86_64__) && LDBL_MANT_DIG == 64
    static const long double pow10l[] = {
        1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,  1e10L, 1e11L, 1e12L, 1e13L,
        1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L, 1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};
    if (exp10 < -27 || exp10 > 27) return 0;
    /* only with the x87 precision control at 64 bits (the ABI's default; a library or an
     * emulator such as valgrind may lower it), or the single rounding is not one */
    unsigned short cw;
    __asm__("fnstcw %0" : "=m"(cw));
    if ((cw & 0x300) != 0x300) return 0;
    long double x = (long double)m; /* exact: m < 2^64 */
    x = exp10 < 0 ? x / pow10l[-exp10] : x * pow10l[exp10];
    uint64_t sig;
    memcpy(&sig, &x, sizeof sig); /* the x87 format: the 64-bit significand comes first */
    unsigned low = (unsigned)(sig & 0x7ff);
    if (low >= 0x3ff && low <= 0x401) return 0;
    v = (double)x;
#else
    return 0;
#endif
  }
  *out = neg ? -v : v;
  *end = (char *)q;
  return 1;
}

/* One number of a span, as jansson would read it: integers through strtoll (so "-0" is 0
 * and the double is the integer's), the rest through strtod. Returns -1 where jansson
 * would refuse the number (an integer outside int64, a real that overflows), so that the
 * list stays for jansson to report. */
int vecjson_parse_number(const char *p, char **end, double *out) {
  if (fast_number(p, end, out)) return 0;
  size_t n = strspn(p, "-0123456789");
  errno = 0;
  if (p[n] != '.' && p[n] != 'e' && p[n] != 'E') {
    long long v = strtoll(p, end, 10);
    if (errno == ERANGE) return -1;
    *out = (double)v;
    return 0;
  }
  *out = strtod(p, end);
  return errno == ERANGE && (*out == HUGE_VAL || *out == -HUGE_VAL) ? -1 : 0;
}

/* The numbers of each span into vt, dropping (from sp, *ns) the spans jansson would
 * refuse. */
static int parse_spans(const char *body, span *sp, size_t *ns, vecjson *vt) {
  size_t total = 0, kept = 0;
  for (size_t k = 0; k < *ns; k++) /* a list of c numbers has c - 1 commas */
    for (size_t i = sp[k].from; i < sp[k].to; i++) total += body[i] == ',' || body[i] == ']';
  vt->data = malloc((total ? total : 1) * sizeof *vt->data);
  vt->off = malloc(*ns * sizeof *vt->off);
  vt->len = malloc(*ns * sizeof *vt->len);
  vt->bad = malloc(*ns * sizeof *vt->bad);
  if (!vt->data || !vt->off || !vt->len || !vt->bad) return -1;
  size_t at = 0;
  for (size_t k = 0; k < *ns; k++) {
    /* the span is JSON numbers, commas and white space only (find_spans checked it), so
     * each number ends at white space, ',' or ']' inside it */
    const char *p = body + sp[k].from + 1;
    size_t start = at, bad = SIZE_MAX;
    int refused = 0;
    for (size_t i = 0; !refused; i++) {
      char *end;
      double d;
      while (is_ws(*p)) p++;
      if (vecjson_parse_number(p, &end, &d)) {
        refused = 1;
        break;
      }
      if ((!isfinite(d) || fabs(d) > 3.4e38) && bad == SIZE_MAX) bad = i;
      vt->data[at++] = (float)d;
      while (is_ws(*end)) end++;
      if (*end == ']') break;
      p = end + 1;
    }
    if (refused) {
      at = start;
      continue;
    }
    sp[kept] = sp[k];
    vt->off[kept] = start;
    vt->len[kept] = at - start;
    vt->bad[kept++] = bad;
    vt->n = kept;
  }
  *ns = kept;
  return 0;
}

char *vecjson_rewrite(const char *body, size_t len, size_t *out_len, vecjson *vt) {
  span *sp;
  size_t ns;
  *vt = (vecjson){0};
  if (find_spans(body, len, &sp, &ns) || ns == 0) {
    free(sp);
    return NULL;
  }
  const char *pre = get_prefix();
  /* a marker is "\u0001" + the prefix after its first byte + the entry's number */
  size_t marker = 2 + 6 + (PREFIX_LEN - 1) + 20;
  char *out = NULL;
  if (parse_spans(body, sp, &ns, vt) || ns == 0 || ns > SIZE_MAX / marker ||
      !(out = malloc(len + ns * marker + 1))) {
    free(sp);
    vecjson_free(vt);
    return NULL;
  }
  char *o = out;
  size_t at = 0;
  for (size_t k = 0; k < ns; k++) {
    memcpy(o, body + at, sp[k].from - at);
    o += sp[k].from - at;
    *o++ = '"';
    memcpy(o, "\\u0001", 6);
    o += 6;
    memcpy(o, pre + 1, PREFIX_LEN - 1);
    o += PREFIX_LEN - 1;
    o += sprintf(o, "%zu\"", k);
    at = sp[k].to;
  }
  memcpy(o, body + at, len - at);
  o += len - at;
  *o = 0;
  *out_len = (size_t)(o - out);
  free(sp);
  return out;
}

int vecjson_is(const json_t *j) {
  return json_is_string(j) && json_string_length(j) > PREFIX_LEN &&
         !memcmp(json_string_value(j), get_prefix(), PREFIX_LEN);
}

qv_status vecjson_floats(const vecjson *vt, const json_t *j, float *out, size_t cap, size_t *n) {
  if (!vt || !vecjson_is(j)) return QV_EINVAL;
  const char *p = json_string_value(j) + PREFIX_LEN;
  char *end;
  unsigned long long k = strtoull(p, &end, 10);
  if (*end || end == p || k >= vt->n) return QV_EINVAL;
  *n = vt->len[k];
  if (vt->len[k] != cap) return QV_EDIM;
  if (vt->bad[k] != SIZE_MAX) {
    *n = vt->bad[k];
    return QV_ENONFINITE;
  }
  memcpy(out, vt->data + vt->off[k], cap * sizeof *out);
  return QV_OK;
}
