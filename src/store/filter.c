/* Payload filters: Qdrant's filter JSON compiled into a tree of conditions, then evaluated
 * per point.
 *
 * Compiling does all the work that does not depend on the point: key paths are split into
 * steps once, match values are stored typed and sorted for binary search, has_id lists are
 * sorted. Evaluation (filter_match) runs once per point in scans, so it never allocates and
 * never parses: it walks the payload along the pre-split steps and compares.
 *
 * Every node of a compiled filter lives in one arena owned by the qv_filter, so a parse
 * that fails half-way is undone by freeing the arena, and qv_filter_free is a list walk.
 *
 * Choices where Qdrant's behaviour had to be pinned down:
 *  1. A "key" step on an array finds nothing ("a.b" does not look inside a = [{...}]);
 *     "a[]" walks every element and "a[2]" one. A value the path ends on that is an array
 *     is flattened one level: the condition holds if any element satisfies it.
 *  2. match value/any: strings equal strings, bools equal bools, integers equal integers;
 *     a real payload value matches an integer only when it is exactly that integer (3.0
 *     matches 3, 3.5 matches nothing).
 *  3. match except holds when no value the path reaches is in the list, so a missing key,
 *     null, [] and values of another type all match.
 *  4. range compares numbers (int or real) as doubles; anything else never matches.
 *  5. is_empty holds when every value reached is null or [] (vacuously when the key is
 *     missing); is_null holds when a value reached is null itself ([null] is not null).
 *  6. "should": [] (or absent) places no constraint; "must": [] holds; "must_not": [] holds.
 *  7. "nested": {"key": K, "filter": F} holds when some object element of the array at K
 *     (or the object at K itself) satisfies F on its own; has_id inside F still tests the
 *     point's id.
 *  8. Filters nest at most FILTER_MAX_DEPTH deep, so a hostile body fails with
 *     QV_EFILTER instead of exhausting the stack; key paths have at most FILTER_MAX_STEPS
 *     steps for the same reason (walk recurses per "[]").
 */
#define _GNU_SOURCE /* memmem */
#include "store/filter.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/mem.h"

#define FILTER_MAX_DEPTH 32
#define FILTER_MAX_STEPS 64
#define WHERE_MAX 192 /* "must[1].should[0]..." context in messages; truncated beyond */

/* ---- The compiled form --------------------------------------------------------------- */

typedef enum { STEP_KEY, STEP_EACH, STEP_INDEX } step_kind;

typedef struct step {
  step_kind kind;
  size_t index;     /* STEP_INDEX */
  const char *name; /* STEP_KEY, NUL-terminated */
} step;

typedef struct path {
  const step *steps; /* (n), n >= 1 */
  size_t n;
} path;

typedef struct str {
  const char *p; /* may hold NUL bytes when the JSON did */
  size_t len;
} str;

typedef struct value_set {
  const str *strs;       /* (nstrs), sorted by str_cmp */
  size_t nstrs;
  const long long *ints; /* (nints), sorted */
  size_t nints;
  unsigned bools;        /* bit 0: false is listed, bit 1: true is listed */
} value_set;

enum { HAS_GT = 1, HAS_GTE = 2, HAS_LT = 4, HAS_LTE = 8 };

typedef struct num_range {
  double gt, gte, lt, lte;
  unsigned has; /* HAS_* */
} num_range;

typedef enum {
  C_ANY,      /* match value (a set of one) and match any */
  C_EXCEPT,
  C_TEXT,
  C_RANGE,
  C_HAS_ID,
  C_IS_EMPTY,
  C_IS_NULL,
  C_FILTER,   /* a nested filter object */
  C_NESTED    /* Qdrant's "nested": a filter applied to each array element */
} cond_kind;

typedef struct fnode fnode;

typedef struct cond {
  cond_kind kind;
  path key; /* all kinds but C_HAS_ID and C_FILTER */
  union {
    value_set set; /* C_ANY, C_EXCEPT */
    str text;      /* C_TEXT */
    num_range range;
    struct {
      const qv_point_id *ids; /* (n), sorted by id_cmp */
      size_t n;
    } ids;                    /* C_HAS_ID */
    const fnode *sub;         /* C_FILTER, C_NESTED */
  } u;
} cond;

struct fnode {
  const cond *must, *should, *must_not;
  size_t n_must, n_should, n_must_not;
};

typedef struct block {
  struct block *next;
  size_t used, cap;
  max_align_t data[];
} block;

struct qv_filter {
  block *blocks;
  const fnode *root;
};

/* ---- Arena --------------------------------------------------------------------------- */

#define ARENA_BLOCK 4096
#define ARENA_ALIGN (sizeof(max_align_t))

static void *arena_alloc(qv_filter *f, size_t size) {
  if (size > SIZE_MAX - ARENA_ALIGN) return NULL;
  size = (size + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
  block *b = f->blocks;
  if (!b || b->cap - b->used < size) {
    size_t cap = size > ARENA_BLOCK ? size : ARENA_BLOCK;
    if (cap > SIZE_MAX - sizeof *b) return NULL;
    block *nb = malloc(sizeof *nb + cap);
    if (!nb) return NULL;
    nb->used = 0;
    nb->cap = cap;
    /* A block made for one large request goes behind the current one, which keeps its
     * free space for the small requests that follow. */
    if (b && size > ARENA_BLOCK / 2) {
      nb->next = b->next;
      b->next = nb;
    } else {
      nb->next = b;
      f->blocks = nb;
    }
    b = nb;
  }
  void *p = (char *)b->data + b->used;
  b->used += size;
  return p;
}

static void *arena_array(qv_filter *f, size_t n, size_t each) {
  size_t bytes;
  if (n == 0) return NULL;
  if (qv_mul_overflow(n, each, &bytes)) return NULL;
  return arena_alloc(f, bytes);
}

static const char *arena_strdup(qv_filter *f, const char *s, size_t len) {
  char *p = arena_alloc(f, len + 1);
  if (!p) return NULL;
  memcpy(p, s, len);
  p[len] = 0;
  return p;
}

/* ---- Parsing ------------------------------------------------------------------------- */

typedef struct parser {
  qv_filter *f;
  qv_error *err;
} parser;

static qv_status fail_at(parser *p, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static qv_status fail_at(parser *p, const char *where, const char *fmt, ...) {
  if (p->err) {
    char msg[sizeof p->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    qv_fail(p->err, QV_EFILTER, "%s: %s", *where ? where : "filter", msg);
  }
  return QV_EFILTER;
}

static qv_status nomem(parser *p) {
  return qv_fail(p->err, QV_ENOMEM, "out of memory compiling the filter");
}

static void where_fmt(char *dst, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void where_fmt(char *dst, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(dst, WHERE_MAX, fmt, ap);
  va_end(ap);
}

static const char *json_kind(const json_t *j) {
  switch (json_typeof(j)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "an array";
  case JSON_STRING: return "a string";
  case JSON_INTEGER: return "an integer";
  case JSON_REAL: return "a real number";
  case JSON_TRUE:
  case JSON_FALSE: return "a bool";
  case JSON_NULL: return "null";
  }
  return "a value";
}

static int str_cmp(const void *a, const void *b) {
  const str *x = a, *y = b;
  size_t m = x->len < y->len ? x->len : y->len;
  int r = memcmp(x->p, y->p, m);
  if (r) return r;
  return (x->len > y->len) - (x->len < y->len);
}

static int ll_cmp(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return (x > y) - (x < y);
}

static int id_cmp(const void *a, const void *b) {
  const qv_point_id *x = a, *y = b;
  if (x->kind != y->kind) return (x->kind > y->kind) - (x->kind < y->kind);
  if (x->kind == QV_ID_NUM) return (x->num > y->num) - (x->num < y->num);
  return memcmp(x->uuid, y->uuid, 16);
}

/* Splits "a.b[].c[2]" into steps: key a, key b, each, key c, index 2. */
static qv_status parse_path(parser *p, const json_t *jkey, const char *where, path *out) {
  if (!jkey) return fail_at(p, where, "condition needs a \"key\"");
  if (!json_is_string(jkey)) return fail_at(p, where, "\"key\" must be a string, not %s", json_kind(jkey));
  const char *s = json_string_value(jkey);
  size_t len = json_string_length(jkey);
  if (len == 0) return fail_at(p, where, "\"key\" is empty");
  if (strlen(s) != len) return fail_at(p, where, "\"key\" contains a NUL byte");
  char *buf = (char *)arena_strdup(p->f, s, len); /* segment names point into it */
  if (!buf) return nomem(p);

  step steps[FILTER_MAX_STEPS];
  size_t n = 0, i = 0;
  for (;;) {
    size_t start = i;
    while (i < len && buf[i] != '.' && buf[i] != '[' && buf[i] != ']') i++;
    if (i == start) return fail_at(p, where, "key \"%s\" has an empty name at offset %zu", s, i);
    if (n == FILTER_MAX_STEPS)
      return fail_at(p, where, "key \"%.64s...\" has more than %d steps", s, FILTER_MAX_STEPS);
    char c = buf[i];
    buf[i] = 0;
    steps[n++] = (step){.kind = STEP_KEY, .name = buf + start};
    while (c == '[') {
      i++;
      step st = {.kind = STEP_EACH};
      if (buf[i] != ']') {
        size_t idx = 0, digits = 0;
        while (buf[i] >= '0' && buf[i] <= '9') {
          if (idx > (SIZE_MAX - 9) / 10)
            return fail_at(p, where, "key \"%s\" has an array index out of range", s);
          idx = idx * 10 + (size_t)(buf[i] - '0');
          i++;
          digits++;
        }
        if (!digits || buf[i] != ']')
          return fail_at(p, where, "key \"%s\": expected \"[]\" or \"[N]\" at offset %zu", s, i);
        st = (step){.kind = STEP_INDEX, .index = idx};
      }
      i++; /* past ']' */
      if (n == FILTER_MAX_STEPS)
        return fail_at(p, where, "key \"%.64s...\" has more than %d steps", s, FILTER_MAX_STEPS);
      steps[n++] = st;
      c = buf[i];
    }
    if (i >= len) break;
    if (c != '.') return fail_at(p, where, "key \"%s\": unexpected '%c' at offset %zu", s, c, i);
    i++;
    if (i == len) return fail_at(p, where, "key \"%s\" ends with '.'", s);
  }
  step *kept = arena_array(p->f, n, sizeof *kept);
  if (!kept) return nomem(p);
  memcpy(kept, steps, n * sizeof *kept);
  out->steps = kept;
  out->n = n;
  return QV_OK;
}

/* Values for match value / any / except: strings, integers and bools. */
static qv_status parse_values(parser *p, const json_t *const *vals, size_t n, const char *where,
                              const char *what, value_set *out) {
  str *strs = arena_array(p->f, n, sizeof *strs);
  long long *ints = arena_array(p->f, n, sizeof *ints);
  if (n && (!strs || !ints)) return nomem(p);
  size_t ns = 0, ni = 0;
  unsigned bools = 0;
  for (size_t i = 0; i < n; i++) {
    const json_t *v = vals[i];
    switch (json_typeof(v)) {
    case JSON_STRING: {
      size_t len = json_string_length(v);
      const char *c = arena_strdup(p->f, json_string_value(v), len);
      if (!c) return nomem(p);
      strs[ns++] = (str){c, len};
      break;
    }
    case JSON_INTEGER: ints[ni++] = json_integer_value(v); break;
    case JSON_TRUE: bools |= 2; break;
    case JSON_FALSE: bools |= 1; break;
    default:
      if (n == 1 && !strcmp(what, "value"))
        return fail_at(p, where, "match \"value\" must be a string, integer or bool, not %s",
                       json_kind(v));
      return fail_at(p, where, "match \"%s\"[%zu] must be a string, integer or bool, not %s", what,
                     i, json_kind(v));
    }
  }
  if (ns > 1) qsort(strs, ns, sizeof *strs, str_cmp);
  if (ni > 1) qsort(ints, ni, sizeof *ints, ll_cmp);
  *out = (value_set){.strs = ns ? strs : NULL, .nstrs = ns, .ints = ni ? ints : NULL,
                     .nints = ni, .bools = bools};
  return QV_OK;
}

static qv_status parse_list_values(parser *p, const json_t *arr, const char *where,
                                   const char *what, value_set *out) {
  if (!json_is_array(arr))
    return fail_at(p, where, "match \"%s\" must be a list, not %s", what, json_kind(arr));
  size_t n = json_array_size(arr);
  const json_t **vals = arena_array(p->f, n, sizeof *vals);
  if (n && !vals) return nomem(p);
  for (size_t i = 0; i < n; i++) vals[i] = json_array_get(arr, i);
  return parse_values(p, vals, n, where, what, out);
}

static qv_status parse_match(parser *p, const json_t *m, const char *where, cond *c) {
  if (!json_is_object(m)) return fail_at(p, where, "\"match\" must be an object, not %s", json_kind(m));
  const char *k, *kind = NULL;
  json_t *v, *val = NULL;
  json_object_foreach((json_t *)m, k, v) {
    if (strcmp(k, "value") && strcmp(k, "any") && strcmp(k, "except") && strcmp(k, "text"))
      return fail_at(p, where, "unknown match kind \"%s\" (want \"value\", \"any\", \"except\" or \"text\")", k);
    if (kind) return fail_at(p, where, "match has both \"%s\" and \"%s\"; use one", kind, k);
    kind = k;
    val = v;
  }
  if (!kind) return fail_at(p, where, "match needs one of \"value\", \"any\", \"except\", \"text\"");
  if (!strcmp(kind, "value")) {
    c->kind = C_ANY;
    const json_t *one = val;
    return parse_values(p, &one, 1, where, "value", &c->u.set);
  }
  if (!strcmp(kind, "any")) {
    c->kind = C_ANY;
    return parse_list_values(p, val, where, "any", &c->u.set);
  }
  if (!strcmp(kind, "except")) {
    c->kind = C_EXCEPT;
    return parse_list_values(p, val, where, "except", &c->u.set);
  }
  if (!json_is_string(val))
    return fail_at(p, where, "match \"text\" must be a string, not %s", json_kind(val));
  c->kind = C_TEXT;
  size_t len = json_string_length(val);
  const char *t = arena_strdup(p->f, json_string_value(val), len);
  if (!t) return nomem(p);
  c->u.text = (str){t, len};
  return QV_OK;
}

static qv_status parse_range(parser *p, const json_t *r, const char *where, cond *c) {
  if (!json_is_object(r)) return fail_at(p, where, "\"range\" must be an object, not %s", json_kind(r));
  num_range out = {0};
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)r, k, v) {
    double *slot;
    unsigned bit;
    if (!strcmp(k, "gt")) slot = &out.gt, bit = HAS_GT;
    else if (!strcmp(k, "gte")) slot = &out.gte, bit = HAS_GTE;
    else if (!strcmp(k, "lt")) slot = &out.lt, bit = HAS_LT;
    else if (!strcmp(k, "lte")) slot = &out.lte, bit = HAS_LTE;
    else return fail_at(p, where, "unknown range bound \"%s\" (want \"gt\", \"gte\", \"lt\", \"lte\")", k);
    if (json_is_null(v)) continue; /* Qdrant's Option: null is no bound */
    if (json_is_string(v))
      return fail_at(p, where, "range needs a number for \"%s\" (datetime ranges are not supported)", k);
    if (!json_is_number(v)) return fail_at(p, where, "range needs a number for \"%s\", not %s", k, json_kind(v));
    *slot = json_number_value(v);
    out.has |= bit;
  }
  c->kind = C_RANGE;
  c->u.range = out;
  return QV_OK;
}

static qv_status parse_has_id(parser *p, const json_t *v, const char *where, cond *c) {
  if (!json_is_array(v)) return fail_at(p, where, "\"has_id\" must be a list of ids, not %s", json_kind(v));
  size_t n = json_array_size(v);
  qv_point_id *ids = arena_array(p->f, n, sizeof *ids);
  if (n && !ids) return nomem(p);
  for (size_t i = 0; i < n; i++) {
    const json_t *e = json_array_get(v, i);
    if (json_is_integer(e)) {
      json_int_t num = json_integer_value(e);
      if (num < 0) return fail_at(p, where, "has_id[%zu]: point ids cannot be negative", i);
      memset(&ids[i], 0, sizeof ids[i]);
      ids[i].kind = QV_ID_NUM;
      ids[i].num = (uint64_t)num;
    } else if (json_is_string(e)) {
      const char *s = json_string_value(e);
      if (strlen(s) != json_string_length(e) || qv_point_id_parse(&ids[i], s) != QV_OK)
        return fail_at(p, where, "has_id[%zu]: \"%s\" is not a point id (an unsigned integer or a UUID)", i, s);
    } else {
      return fail_at(p, where, "has_id[%zu] must be an unsigned integer or a UUID string, not %s", i,
                     json_kind(e));
    }
  }
  if (n > 1) qsort(ids, n, sizeof *ids, id_cmp);
  c->kind = C_HAS_ID;
  c->u.ids.ids = ids;
  c->u.ids.n = n;
  return QV_OK;
}

/* {"key": K} for is_empty and is_null. */
static qv_status parse_key_only(parser *p, const json_t *v, const char *where, const char *what,
                                cond *c) {
  if (!json_is_object(v)) return fail_at(p, where, "\"%s\" must be {\"key\": ...}, not %s", what, json_kind(v));
  const char *k;
  json_t *x;
  json_object_foreach((json_t *)v, k, x) {
    if (strcmp(k, "key")) return fail_at(p, where, "unknown field \"%s\" in \"%s\"", k, what);
  }
  return parse_path(p, json_object_get(v, "key"), where, &c->key);
}

static qv_status parse_filter(parser *p, const json_t *j, const char *where, int depth, const fnode **out);

static qv_status parse_nested(parser *p, const json_t *v, const char *where, int depth, cond *c) {
  if (!json_is_object(v))
    return fail_at(p, where, "\"nested\" must be {\"key\": ..., \"filter\": ...}, not %s", json_kind(v));
  const char *k;
  json_t *x;
  json_object_foreach((json_t *)v, k, x) {
    if (strcmp(k, "key") && strcmp(k, "filter")) return fail_at(p, where, "unknown field \"%s\" in \"nested\"", k);
  }
  qv_status rc = parse_path(p, json_object_get(v, "key"), where, &c->key);
  if (rc) return rc;
  const json_t *sub = json_object_get(v, "filter");
  if (!sub) return fail_at(p, where, "\"nested\" needs a \"filter\"");
  char w[WHERE_MAX];
  where_fmt(w, "%s.nested.filter", where);
  c->kind = C_NESTED;
  return parse_filter(p, sub, w, depth + 1, &c->u.sub);
}

typedef enum { G_NONE, G_FILTER, G_FIELD, G_HAS_ID, G_IS_EMPTY, G_IS_NULL, G_NESTED } cond_group;

static cond_group group_of(const char *k) {
  static const struct {
    const char *name;
    cond_group g;
  } keys[] = {
      {"must", G_FILTER},   {"should", G_FILTER},       {"must_not", G_FILTER},
      {"min_should", G_FILTER}, {"key", G_FIELD},       {"match", G_FIELD},
      {"range", G_FIELD},   {"has_id", G_HAS_ID},       {"is_empty", G_IS_EMPTY},
      {"is_null", G_IS_NULL}, {"nested", G_NESTED},
  };
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (!strcmp(k, keys[i].name)) return keys[i].g;
  return G_NONE;
}

static int qdrant_but_unsupported(const char *k) {
  static const char *const names[] = {"geo_bounding_box", "geo_radius", "geo_polygon",
                                      "values_count", "has_vector", "datetime_range"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strcmp(k, names[i])) return 1;
  return 0;
}

static qv_status parse_cond(parser *p, const json_t *j, const char *where, int depth, cond *c) {
  if (!json_is_object(j)) return fail_at(p, where, "a condition must be an object, not %s", json_kind(j));
  memset(c, 0, sizeof *c);
  cond_group g = G_NONE;
  const char *first = NULL, *k;
  json_t *v;
  json_object_foreach((json_t *)j, k, v) {
    cond_group kg = group_of(k);
    if (kg == G_NONE) {
      if (qdrant_but_unsupported(k)) return fail_at(p, where, "\"%s\" conditions are not supported", k);
      return fail_at(p, where, "unknown condition \"%s\"", k);
    }
    if (g != G_NONE && kg != g)
      return fail_at(p, where, "\"%s\" and \"%s\" cannot be in the same condition", first, k);
    if (g == G_NONE) first = k;
    g = kg;
  }
  switch (g) {
  case G_NONE:
  case G_FILTER:
    c->kind = C_FILTER;
    return parse_filter(p, j, where, depth + 1, &c->u.sub);
  case G_FIELD: {
    const json_t *m = json_object_get(j, "match"), *r = json_object_get(j, "range");
    if (json_is_null(m)) m = NULL;
    if (json_is_null(r)) r = NULL;
    qv_status rc = parse_path(p, json_object_get(j, "key"), where, &c->key);
    if (rc) return rc;
    if (m && r) return fail_at(p, where, "a condition takes \"match\" or \"range\", not both");
    if (m) return parse_match(p, m, where, c);
    if (r) return parse_range(p, r, where, c);
    return fail_at(p, where, "condition on \"%s\" needs \"match\" or \"range\"",
                   json_string_value(json_object_get(j, "key")));
  }
  case G_HAS_ID: return parse_has_id(p, json_object_get(j, "has_id"), where, c);
  case G_IS_EMPTY:
    c->kind = C_IS_EMPTY;
    return parse_key_only(p, json_object_get(j, "is_empty"), where, "is_empty", c);
  case G_IS_NULL:
    c->kind = C_IS_NULL;
    return parse_key_only(p, json_object_get(j, "is_null"), where, "is_null", c);
  case G_NESTED: return parse_nested(p, json_object_get(j, "nested"), where, depth, c);
  }
  return fail_at(p, where, "unreadable condition");
}

/* must / should / must_not: a condition or a list of them. */
static qv_status parse_cond_list(parser *p, const json_t *v, const char *name, int depth,
                                 const cond **out, size_t *count) {
  if (json_is_object(v)) {
    cond *c = arena_alloc(p->f, sizeof *c);
    if (!c) return nomem(p);
    qv_status rc = parse_cond(p, v, name, depth, c);
    if (rc) return rc;
    *out = c;
    *count = 1;
    return QV_OK;
  }
  if (!json_is_array(v)) return fail_at(p, name, "must be a condition or a list of conditions, not %s", json_kind(v));
  size_t n = json_array_size(v);
  cond *cs = arena_array(p->f, n, sizeof *cs);
  if (n && !cs) return nomem(p);
  for (size_t i = 0; i < n; i++) {
    char w[WHERE_MAX];
    where_fmt(w, "%s[%zu]", name, i);
    qv_status rc = parse_cond(p, json_array_get(v, i), w, depth, &cs[i]);
    if (rc) return rc;
  }
  *out = cs;
  *count = n;
  return QV_OK;
}

static qv_status parse_filter(parser *p, const json_t *j, const char *where, int depth, const fnode **out) {
  if (depth > FILTER_MAX_DEPTH)
    return fail_at(p, where, "filters nested deeper than %d levels", FILTER_MAX_DEPTH);
  if (!json_is_object(j)) return fail_at(p, where, "a filter must be an object, not %s", json_kind(j));
  fnode *n = arena_alloc(p->f, sizeof *n);
  if (!n) return nomem(p);
  memset(n, 0, sizeof *n);
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)j, k, v) {
    const cond **list;
    size_t *count;
    if (!strcmp(k, "must")) list = &n->must, count = &n->n_must;
    else if (!strcmp(k, "should")) list = &n->should, count = &n->n_should;
    else if (!strcmp(k, "must_not")) list = &n->must_not, count = &n->n_must_not;
    else if (!strcmp(k, "min_should")) {
      if (json_is_null(v)) continue;
      return fail_at(p, where, "\"min_should\" is not supported");
    } else if (group_of(k) != G_NONE)
      return fail_at(p, where, "\"%s\" is part of a condition; put the condition in \"must\"", k);
    else
      return fail_at(p, where, "unknown key \"%s\" in filter", k);
    if (json_is_null(v)) continue;
    char w[WHERE_MAX];
    where_fmt(w, "%s%s%s", where, *where ? "." : "", k);
    qv_status rc = parse_cond_list(p, v, w, depth, list, count);
    if (rc) return rc;
  }
  *out = n;
  return QV_OK;
}

qv_status filter_from_json(qv_filter **out, const json_t *json, qv_error *err) {
  if (!out) return qv_fail(err, QV_EINVAL, "filter_from_json: out is NULL");
  *out = NULL;
  if (!json) return qv_fail(err, QV_EINVAL, "filter_from_json: json is NULL");
  qv_filter *f = calloc(1, sizeof *f);
  if (!f) return qv_fail(err, QV_ENOMEM, "out of memory compiling the filter");
  parser p = {f, err};
  qv_status rc = parse_filter(&p, json, "", 1, &f->root);
  if (rc) {
    qv_filter_free(f);
    return rc;
  }
  *out = f;
  return QV_OK;
}

qv_status qv_filter_parse(qv_filter **out, const char *json, size_t len, qv_error *err) {
  if (!out) return qv_fail(err, QV_EINVAL, "qv_filter_parse: out is NULL");
  *out = NULL;
  if (!json && len) return qv_fail(err, QV_EINVAL, "qv_filter_parse: text is NULL");
  json_error_t jerr;
  /* JSON_DECODE_ANY so that `5` is a filter error (valid JSON, wrong shape) rather than a
   * JSON error; strings with \u0000 stay rejected, so keys are plain C strings. */
  json_t *j = json_loadb(json ? json : "", len, JSON_DECODE_ANY, &jerr);
  if (!j) {
    switch (json_error_code(&jerr)) {
    case json_error_out_of_memory: return qv_fail(err, QV_ENOMEM, "out of memory reading the filter");
    case json_error_stack_overflow:
      /* Valid JSON deeper than jansson will read: as a filter it is far past our limit. */
      return qv_fail(err, QV_EFILTER, "filter: nested deeper than %d levels", FILTER_MAX_DEPTH);
    default:
      return qv_fail(err, QV_EJSON, "filter is not valid JSON: %s (line %d, column %d)", jerr.text,
                     jerr.line, jerr.column);
    }
  }
  qv_status rc = filter_from_json(out, j, err);
  json_decref(j);
  return rc;
}

void qv_filter_free(qv_filter *f) {
  if (!f) return;
  for (block *b = f->blocks, *next; b; b = next) {
    next = b->next;
    free(b);
  }
  free(f);
}

/* ---- Evaluation ---------------------------------------------------------------------- */

static int node_match(const fnode *n, const qv_point_id *id, const json_t *payload);

typedef int (*leaf_fn)(const cond *c, const json_t *leaf, const qv_point_id *id);

/* Follows c's key path from v from step i on; returns 1 as soon as pred holds for a
 * value the path reaches. Recursion only at "[]" steps, so depth <= FILTER_MAX_STEPS. */
static int walk(const cond *c, size_t i, const json_t *v, leaf_fn pred, const qv_point_id *id) {
  for (; i < c->key.n; i++) {
    const step *s = &c->key.steps[i];
    if (s->kind == STEP_KEY) {
      if (!json_is_object(v)) return 0;
      v = json_object_get(v, s->name);
    } else if (s->kind == STEP_INDEX) {
      if (!json_is_array(v)) return 0;
      v = json_array_get(v, s->index);
    } else {
      if (!json_is_array(v)) return 0;
      size_t n = json_array_size(v);
      for (size_t k = 0; k < n; k++)
        if (walk(c, i + 1, json_array_get(v, k), pred, id)) return 1;
      return 0;
    }
    if (!v) return 0;
  }
  return pred(c, v, id);
}

static int ints_has(const value_set *s, long long x) {
  size_t lo = 0, hi = s->nints;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->ints[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo < s->nints && s->ints[lo] == x;
}

static int value_in_set(const value_set *s, const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_STRING: {
    if (!s->nstrs) return 0;
    str key = {json_string_value(v), json_string_length(v)};
    return bsearch(&key, s->strs, s->nstrs, sizeof *s->strs, str_cmp) != NULL;
  }
  case JSON_INTEGER: return ints_has(s, json_integer_value(v));
  case JSON_REAL: {
    double d = json_real_value(v);
    if (!(d >= -0x1p63 && d < 0x1p63)) return 0;
    long long x = (long long)d;
    return (double)x == d && ints_has(s, x);
  }
  case JSON_TRUE: return (s->bools & 2) != 0;
  case JSON_FALSE: return (s->bools & 1) != 0;
  default: return 0;
  }
}

static int leaf_in_set(const cond *c, const json_t *leaf, const qv_point_id *id) {
  if (!json_is_array(leaf)) return value_in_set(&c->u.set, leaf);
  size_t n = json_array_size(leaf);
  for (size_t k = 0; k < n; k++)
    if (value_in_set(&c->u.set, json_array_get(leaf, k))) return 1;
  return 0;
}

static int has_text(const str *t, const json_t *v) {
  if (!json_is_string(v)) return 0;
  return memmem(json_string_value(v), json_string_length(v), t->p, t->len) != NULL;
}

static int leaf_has_text(const cond *c, const json_t *leaf, const qv_point_id *id) {
  if (!json_is_array(leaf)) return has_text(&c->u.text, leaf);
  size_t n = json_array_size(leaf);
  for (size_t k = 0; k < n; k++)
    if (has_text(&c->u.text, json_array_get(leaf, k))) return 1;
  return 0;
}

static int in_range(const num_range *r, const json_t *v) {
  if (!json_is_number(v)) return 0;
  double x = json_number_value(v);
  if ((r->has & HAS_GT) && !(x > r->gt)) return 0;
  if ((r->has & HAS_GTE) && !(x >= r->gte)) return 0;
  if ((r->has & HAS_LT) && !(x < r->lt)) return 0;
  if ((r->has & HAS_LTE) && !(x <= r->lte)) return 0;
  return 1;
}

static int leaf_in_range(const cond *c, const json_t *leaf, const qv_point_id *id) {
  if (!json_is_array(leaf)) return in_range(&c->u.range, leaf);
  size_t n = json_array_size(leaf);
  for (size_t k = 0; k < n; k++)
    if (in_range(&c->u.range, json_array_get(leaf, k))) return 1;
  return 0;
}

static int leaf_not_empty(const cond *c, const json_t *leaf, const qv_point_id *id) {
  if (json_is_null(leaf)) return 0;
  return !json_is_array(leaf) || json_array_size(leaf) > 0;
}

static int leaf_is_null(const cond *c, const json_t *leaf, const qv_point_id *id) {
  return json_is_null(leaf);
}

static int leaf_nested(const cond *c, const json_t *leaf, const qv_point_id *id) {
  if (json_is_object(leaf)) return node_match(c->u.sub, id, leaf);
  if (!json_is_array(leaf)) return 0;
  size_t n = json_array_size(leaf);
  for (size_t k = 0; k < n; k++) {
    const json_t *e = json_array_get(leaf, k);
    if (json_is_object(e) && node_match(c->u.sub, id, e)) return 1;
  }
  return 0;
}

static int cond_match(const cond *c, const qv_point_id *id, const json_t *payload) {
  switch (c->kind) {
  case C_ANY: return walk(c, 0, payload, leaf_in_set, id);
  case C_EXCEPT: return !walk(c, 0, payload, leaf_in_set, id);
  case C_TEXT: return walk(c, 0, payload, leaf_has_text, id);
  case C_RANGE: return walk(c, 0, payload, leaf_in_range, id);
  case C_HAS_ID:
    return id && c->u.ids.n && bsearch(id, c->u.ids.ids, c->u.ids.n, sizeof *id, id_cmp) != NULL;
  case C_IS_EMPTY: return !walk(c, 0, payload, leaf_not_empty, id);
  case C_IS_NULL: return walk(c, 0, payload, leaf_is_null, id);
  case C_FILTER: return node_match(c->u.sub, id, payload);
  case C_NESTED: return walk(c, 0, payload, leaf_nested, id);
  }
  return 0;
}

static int node_match(const fnode *n, const qv_point_id *id, const json_t *payload) {
  for (size_t i = 0; i < n->n_must; i++)
    if (!cond_match(&n->must[i], id, payload)) return 0;
  for (size_t i = 0; i < n->n_must_not; i++)
    if (cond_match(&n->must_not[i], id, payload)) return 0;
  if (!n->n_should) return 1;
  for (size_t i = 0; i < n->n_should; i++)
    if (cond_match(&n->should[i], id, payload)) return 1;
  return 0;
}

int filter_match(const qv_filter *f, const qv_point_id *id, const json_t *payload) {
  if (!f) return 1;
  return node_match(f->root, id, payload);
}
