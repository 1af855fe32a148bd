/* Documents to clean text: Markdown (CommonMark's block structure and the common inline
 * syntax), MDX, reStructuredText, HTML and plain text.
 *
 * Invariants:
 *  1. Every byte of the clean text comes from an emit call that names the source bytes
 *     [s, e) it stands for, so map/map_end always hold a valid span (put).
 *  2. Blocks are opened with begin_block and closed with end_block, which trims them to
 *     non-space bytes and drops empty ones; blocks are separated by "\n\n".
 *  3. The source is sanitized first (sanitize): invalid UTF-8 bytes become '?', control
 *     characters other than tab, newline and carriage return become ' ', each keeping its
 *     offset, so every file yields a document with the same byte positions.
 * It is a pragmatic reader, not a full CommonMark implementation: what it gets wrong
 * costs a stray marker character in the text, never a crash or lost text.
 */
#define _GNU_SOURCE /* memmem */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "base/error.h"
#include "base/log.h"
#include "text/text.h"

#define MAX_SRC ((size_t)1 << 31)

typedef struct parser {
  text_doc *d;
  const char *s; /* sanitized source */
  size_t n;
  int oom;
  int open;             /* a block is open */
  size_t block_mark;    /* d->len before the open block's separator */
  /* the heading stack */
  int levels[TEXT_MAX_DEPTH];
  int32_t heads[TEXT_MAX_DEPTH];
  int depth;
  int mdx;
} parser;

int text_format_for_path(const char *path) {
  const char *dot = strrchr(path, '.');
  const char *slash = strrchr(path, '/');
  if (!dot || (slash && dot < slash)) return -1;
  dot++;
  if (!strcasecmp(dot, "md") || !strcasecmp(dot, "markdown")) return TEXT_MARKDOWN;
  if (!strcasecmp(dot, "mdx")) return TEXT_MDX;
  if (!strcasecmp(dot, "txt")) return TEXT_PLAIN;
  if (!strcasecmp(dot, "rst")) return TEXT_RST;
  if (!strcasecmp(dot, "html") || !strcasecmp(dot, "htm")) return TEXT_HTML;
  return -1;
}

const char *text_format_name(text_format f) {
  static const char *names[] = {"text", "markdown", "mdx", "rst", "html"};
  return (unsigned)f < 5 ? names[f] : "?";
}

void text_doc_free(text_doc *d) {
  if (!d) return;
  free(d->text);
  free(d->map);
  free(d->map_end);
  free(d->blocks);
  for (size_t i = 0; i < d->nheads; i++) free(d->heads[i]);
  free(d->heads);
  if (d->front) json_decref(d->front);
  memset(d, 0, sizeof *d);
}

/* ---- emitting ---------------------------------------------------------------------- */

static void put(parser *p, char c, size_t s, size_t e) {
  text_doc *d = p->d;
  if (p->oom) return;
  if (d->len + 2 > d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 4096;
    char *t = realloc(d->text, cap);
    if (t) d->text = t;
    uint32_t *m = realloc(d->map, cap * sizeof *m);
    if (m) d->map = m;
    uint32_t *me = realloc(d->map_end, cap * sizeof *me);
    if (me) d->map_end = me;
    if (!t || !m || !me) {
      p->oom = 1;
      return;
    }
    d->cap = cap;
  }
  d->text[d->len] = c;
  d->map[d->len] = (uint32_t)s;
  d->map_end[d->len] = (uint32_t)e;
  d->len++;
}

static void put_src(parser *p, size_t a, size_t b) {
  for (size_t i = a; i < b; i++) put(p, p->s[i], i, i + 1);
}

static void put_utf8(parser *p, uint32_t cp, size_t s, size_t e) {
  char buf[4];
  int k;
  if (cp < 0x80) buf[0] = (char)cp, k = 1;
  else if (cp < 0x800) buf[0] = (char)(0xC0 | cp >> 6), buf[1] = (char)(0x80 | (cp & 63)), k = 2;
  else if (cp < 0x10000) {
    if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;
    buf[0] = (char)(0xE0 | cp >> 12), buf[1] = (char)(0x80 | ((cp >> 6) & 63)), buf[2] = (char)(0x80 | (cp & 63));
    k = 3;
  } else if (cp < 0x110000) {
    buf[0] = (char)(0xF0 | cp >> 18), buf[1] = (char)(0x80 | ((cp >> 12) & 63));
    buf[2] = (char)(0x80 | ((cp >> 6) & 63)), buf[3] = (char)(0x80 | (cp & 63));
    k = 4;
  } else {
    put_utf8(p, 0xFFFD, s, e);
    return;
  }
  for (int i = 0; i < k; i++) put(p, buf[i], s, e);
}

static void add_block(parser *p, text_block *b) {
  text_doc *d = p->d;
  if (p->oom) return;
  if (d->nblocks == d->cap_blocks) {
    size_t cap = d->cap_blocks ? d->cap_blocks * 2 : 64;
    text_block *nb = realloc(d->blocks, cap * sizeof *nb);
    if (!nb) {
      p->oom = 1;
      return;
    }
    d->blocks = nb;
    d->cap_blocks = cap;
  }
  d->blocks[d->nblocks++] = *b;
}

static void begin_block(parser *p, text_block_kind kind) {
  text_doc *d = p->d;
  p->block_mark = d->len;
  if (d->len) {
    uint32_t at = d->map_end[d->len - 1];
    put(p, '\n', at, at);
    put(p, '\n', at, at);
  }
  p->open = 1;
  text_block b = {.start = d->len, .end = d->len, .kind = (uint8_t)kind, .depth = (uint8_t)p->depth};
  for (int i = 0; i < p->depth; i++) b.path[i] = p->heads[i];
  add_block(p, &b);
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Closes the open block: trims it, or removes it (and its separator) when empty. Returns
 * whether a block remains. */
static int end_block(parser *p) {
  text_doc *d = p->d;
  if (!p->open || p->oom) return 0;
  p->open = 0;
  text_block *b = &d->blocks[d->nblocks - 1];
  size_t a = b->start, e = d->len;
  while (a < e && is_space(d->text[a])) a++;
  while (e > a && is_space(d->text[e - 1])) e--;
  if (a == e) {
    d->len = p->block_mark;
    d->nblocks--;
    return 0;
  }
  d->len = e;
  b->start = a;
  b->end = e;
  return 1;
}

/* Makes the last block a heading of `level` and pushes it on the heading stack. */
static void make_heading(parser *p, int level) {
  text_doc *d = p->d;
  if (p->oom || !d->nblocks) return;
  text_block *b = &d->blocks[d->nblocks - 1];
  if (d->nheads == d->cap_heads) {
    size_t cap = d->cap_heads ? d->cap_heads * 2 : 32;
    char **nh = realloc(d->heads, cap * sizeof *nh);
    if (!nh) {
      p->oom = 1;
      return;
    }
    d->heads = nh;
    d->cap_heads = cap;
  }
  char *h = strndup(d->text + b->start, b->end - b->start);
  if (!h) {
    p->oom = 1;
    return;
  }
  for (char *c = h; *c; c++)
    if (*c == '\n') *c = ' ';
  d->heads[d->nheads] = h;
  while (p->depth > 0 && p->levels[p->depth - 1] >= level) p->depth--;
  if (p->depth == TEXT_MAX_DEPTH) p->depth--;
  p->levels[p->depth] = level;
  p->heads[p->depth] = (int32_t)d->nheads;
  p->depth++;
  d->nheads++;
  b->kind = TEXT_BLOCK_HEADING;
  b->depth = (uint8_t)p->depth;
  for (int i = 0; i < p->depth; i++) b->path[i] = p->heads[i];
}

/* ---- entities ---------------------------------------------------------------------- */

/* Decodes an entity at s[i] == '&'; returns its length (0 when it is not one). */
static size_t entity(const char *s, size_t i, size_t end, uint32_t *cp) {
  static const struct { const char *name; uint32_t cp; } names[] = {
      {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}, {"nbsp", ' '},
      {"mdash", 0x2014}, {"ndash", 0x2013}, {"hellip", 0x2026}, {"copy", 0xA9}, {"reg", 0xAE},
      {"rarr", 0x2192}, {"larr", 0x2190}, {"times", 0xD7}, {"lsquo", 0x2018}, {"rsquo", 0x2019},
      {"ldquo", 0x201C}, {"rdquo", 0x201D}, {"trade", 0x2122}, {"middot", 0xB7}};
  size_t j = i + 1;
  if (j < end && s[j] == '#') {
    j++;
    int hex = j < end && (s[j] == 'x' || s[j] == 'X');
    if (hex) j++;
    uint32_t v = 0;
    size_t d0 = j;
    while (j < end && j - d0 < 7 && (hex ? isxdigit((unsigned char)s[j]) : isdigit((unsigned char)s[j]))) {
      int c = (unsigned char)s[j];
      v = v * (hex ? 16 : 10) + (uint32_t)(isdigit(c) ? c - '0' : (tolower(c) - 'a' + 10));
      j++;
    }
    if (j == d0 || j >= end || s[j] != ';') return 0;
    *cp = v == 0 || v > 0x10FFFF ? 0xFFFD : v;
    return j + 1 - i;
  }
  size_t a = j;
  while (j < end && j - a < 10 && isalnum((unsigned char)s[j])) j++;
  if (j == a || j >= end || s[j] != ';') return 0;
  for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
    if (strlen(names[k].name) == j - a && !memcmp(names[k].name, s + a, j - a)) {
      *cp = names[k].cp;
      return j + 1 - i;
    }
  return 0;
}

/* ---- Markdown inline ----------------------------------------------------------------- */

static const char *find_byte(const char *s, size_t a, size_t b, char c) {
  const void *r = a < b ? memchr(s + a, c, b - a) : NULL;
  return r;
}

/* The closing bracket matching s[i] == '[' within [i, b), or b. */
static size_t match_bracket(const char *s, size_t i, size_t b, char open, char close) {
  int depth = 0;
  for (size_t j = i; j < b; j++) {
    if (s[j] == '\\') {
      j++;
      continue;
    }
    if (s[j] == open) depth++;
    else if (s[j] == close && --depth == 0) return j;
  }
  return b;
}

static void inline_md(parser *p, size_t a, size_t b, int table);

static void inline_md(parser *p, size_t a, size_t b, int table) {
  const char *s = p->s;
  size_t i = a;
  while (i < b) {
    char c = s[i];
    if (c == '\\' && i + 1 < b && ispunct((unsigned char)s[i + 1])) {
      put(p, s[i + 1], i, i + 2);
      i += 2;
    } else if (c == '`') {
      size_t k = i;
      while (k < b && s[k] == '`') k++;
      size_t run = k - i, j = k, close = b;
      while (j < b) {
        if (s[j] == '`') {
          size_t e = j;
          while (e < b && s[e] == '`') e++;
          if (e - j == run) {
            close = j;
            break;
          }
          j = e;
        } else
          j++;
      }
      if (close == b) {
        put_src(p, i, k);
        i = k;
        continue;
      }
      size_t ca = k, cb = close;
      if (cb - ca >= 2 && s[ca] == ' ' && s[cb - 1] == ' ') ca++, cb--;
      put_src(p, ca, cb);
      i = close + run;
    } else if ((c == '[' || (c == '!' && i + 1 < b && s[i + 1] == '['))) {
      size_t o = c == '!' ? i + 1 : i;
      size_t cl = match_bracket(s, o, b, '[', ']');
      if (cl < b && cl + 1 < b && (s[cl + 1] == '(' || s[cl + 1] == '[')) {
        size_t u = match_bracket(s, cl + 1, b, s[cl + 1], s[cl + 1] == '(' ? ')' : ']');
        if (u < b) {
          inline_md(p, o + 1, cl, table);
          i = u + 1;
          continue;
        }
      }
      put(p, c, i, i + 1);
      i++;
    } else if (c == '<' && i + 1 < b && (isalpha((unsigned char)s[i + 1]) || s[i + 1] == '/' || s[i + 1] == '!' || s[i + 1] == '>')) {
      const char *gt = find_byte(s, i, b, '>');
      if (!gt) {
        put(p, c, i, i + 1);
        i++;
        continue;
      }
      size_t e = (size_t)(gt - s);
      /* an autolink keeps its address */
      if (!find_byte(s, i, e, ' ') && (memmem(s + i, e - i, "://", 3) || find_byte(s, i, e, '@')))
        put_src(p, i + 1, e);
      i = e + 1;
    } else if (c == '*' || c == '_' || c == '~') {
      size_t k = i;
      while (k < b && s[k] == c) k++;
      int before_sp = i == a || is_space(s[i - 1]);
      int after_sp = k == b || is_space(s[k]);
      int intraword = !before_sp && !after_sp && isalnum((unsigned char)s[i - 1]) && isalnum((unsigned char)s[k]);
      int drop = !(before_sp && after_sp) && !(c == '_' && intraword) && !(c == '~' && k - i == 1);
      if (!drop) put_src(p, i, k);
      i = k;
    } else if (c == '&') {
      uint32_t cp;
      size_t len = entity(s, i, b, &cp);
      if (len) {
        put_utf8(p, cp, i, i + len);
        i += len;
      } else {
        put(p, c, i, i + 1);
        i++;
      }
    } else if (c == '|' && table) {
      put(p, ' ', i, i + 1);
      i++;
    } else {
      put(p, c, i, i + 1);
      i++;
    }
  }
}

/* ---- YAML front matter --------------------------------------------------------------- */

static json_t *yaml_node_json(yaml_document_t *doc, yaml_node_t *node, int depth) {
  if (!node || depth > 16) return json_null();
  switch (node->type) {
  case YAML_SCALAR_NODE: {
    const char *v = (const char *)node->data.scalar.value;
    size_t len = node->data.scalar.length;
    if (node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
      if (!strcmp(v, "true") || !strcmp(v, "True")) return json_true();
      if (!strcmp(v, "false") || !strcmp(v, "False")) return json_false();
      if (!strcmp(v, "null") || !strcmp(v, "~") || len == 0) return json_null();
      char *end;
      long long ll = strtoll(v, &end, 10);
      if (*v && !*end && len < 19) return json_integer(ll);
      double dv = strtod(v, &end);
      if (*v && !*end && (isdigit((unsigned char)v[0]) || v[0] == '-' || v[0] == '.')) return json_real(dv);
    }
    json_t *sj = json_stringn_nocheck(v, len);
    return sj ? sj : json_null();
  }
  case YAML_SEQUENCE_NODE: {
    json_t *a = json_array();
    for (yaml_node_item_t *it = node->data.sequence.items.start; a && it < node->data.sequence.items.top; it++)
      json_array_append_new(a, yaml_node_json(doc, yaml_document_get_node(doc, *it), depth + 1));
    return a ? a : json_null();
  }
  case YAML_MAPPING_NODE: {
    json_t *o = json_object();
    for (yaml_node_pair_t *pr = node->data.mapping.pairs.start; o && pr < node->data.mapping.pairs.top; pr++) {
      yaml_node_t *k = yaml_document_get_node(doc, pr->key);
      if (!k || k->type != YAML_SCALAR_NODE) continue;
      json_t *v = yaml_node_json(doc, yaml_document_get_node(doc, pr->value), depth + 1);
      json_object_setn_new_nocheck(o, (const char *)k->data.scalar.value, k->data.scalar.length, v);
    }
    return o ? o : json_null();
  }
  default:
    return json_null();
  }
}

/* Front matter as a JSON object; NULL when it is not a YAML mapping (logged, not fatal:
 * the text is still indexed). */
static json_t *parse_front(const char *s, size_t n) {
  yaml_parser_t yp;
  yaml_document_t doc;
  json_t *out = NULL;
  if (!yaml_parser_initialize(&yp)) return NULL;
  yaml_parser_set_input_string(&yp, (const unsigned char *)s, n);
  if (yaml_parser_load(&yp, &doc)) {
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && root->type == YAML_MAPPING_NODE) out = yaml_node_json(&doc, root, 0);
    yaml_document_delete(&doc);
  }
  if (!out) LOG_DEBUG("front matter is not a YAML mapping; kept out of the payload");
  yaml_parser_delete(&yp);
  if (out && !json_is_object(out)) {
    json_decref(out);
    out = NULL;
  }
  return out;
}

/* ---- lines --------------------------------------------------------------------------- */

typedef struct line {
  size_t a, b, next; /* content [a, b) without the newline or CR; next line's start */
} line;

static line get_line(const char *s, size_t n, size_t pos) {
  line l = {pos, pos, n};
  const char *nl = pos < n ? memchr(s + pos, '\n', n - pos) : NULL;
  l.b = nl ? (size_t)(nl - s) : n;
  l.next = nl ? l.b + 1 : n;
  if (l.b > l.a && s[l.b - 1] == '\r') l.b--;
  return l;
}

static int blank(const char *s, size_t a, size_t b) {
  for (size_t i = a; i < b; i++)
    if (!is_space(s[i])) return 0;
  return 1;
}

static int starts(const char *s, size_t a, size_t b, const char *w) {
  size_t k = strlen(w);
  return b - a >= k && !memcmp(s + a, w, k);
}

/* A line of one repeated char c (spaces allowed), at least min of them. */
static int rule_of(const char *s, size_t a, size_t b, char c, int min) {
  int k = 0;
  for (size_t i = a; i < b; i++) {
    if (s[i] == c) k++;
    else if (s[i] != ' ' && s[i] != '\t') return 0;
  }
  return k >= min;
}

static size_t front_matter(parser *p) {
  const char *s = p->s;
  line l = get_line(s, p->n, 0);
  if (!(l.b - l.a == 3 && starts(s, l.a, l.b, "---"))) return 0;
  for (size_t pos = l.next; pos < p->n;) {
    line m = get_line(s, p->n, pos);
    if (m.b - m.a == 3 && (starts(s, m.a, m.b, "---") || starts(s, m.a, m.b, "..."))) {
      p->d->front = parse_front(s + l.next, m.a - l.next);
      return m.next;
    }
    pos = m.next;
  }
  return 0; /* no closing line: not front matter */
}

static void parse_markdown(parser *p) {
  const char *s = p->s;
  size_t n = p->n;
  size_t pos = front_matter(p);
  char fence = 0;
  size_t fence_len = 0;
  int in_comment = 0, skip_until_close = 0, in_jsx = 0, para = 0;
  size_t prev_nl = 0;
  while (pos < n) {
    line l = get_line(s, n, pos);
    pos = l.next;
    size_t a = l.a, b = l.b;
    if (fence) {
      size_t t = a;
      while (t < b && t - a < 4 && s[t] == ' ') t++;
      size_t k = t;
      while (k < b && s[k] == fence) k++;
      if (t - a < 4 && k - t >= fence_len && blank(s, k, b)) {
        end_block(p);
        fence = 0;
        continue;
      }
      put_src(p, a, b);
      put(p, '\n', b, l.next);
      continue;
    }
    if (in_comment) {
      if (memmem(s + a, b - a, "-->", 3)) in_comment = 0;
      continue;
    }
    if (skip_until_close) {
      if (find_byte(s, a, b, '}') || find_byte(s, a, b, ';')) skip_until_close = 0;
      continue;
    }
    if (in_jsx) {
      if (find_byte(s, a, b, '>')) in_jsx = 0;
      continue;
    }
    size_t t = a;
    int indent = 0;
    while (t < b && (s[t] == ' ' || s[t] == '\t')) indent += s[t] == '\t' ? 4 : 1, t++;
    if (t == b) {
      if (para) end_block(p), para = 0;
      continue;
    }
    /* a fenced code block */
    if (indent <= 3 && (starts(s, t, b, "```") || starts(s, t, b, "~~~"))) {
      if (para) end_block(p), para = 0;
      fence = s[t];
      size_t k = t;
      while (k < b && s[k] == fence) k++;
      fence_len = k - t;
      begin_block(p, TEXT_BLOCK_CODE);
      continue;
    }
    if (starts(s, t, b, "<!--")) {
      if (para) end_block(p), para = 0;
      const char *e = memmem(s + t, b - t, "-->", 3);
      if (!e) in_comment = 1;
      else if (!blank(s, (size_t)(e - s) + 3, b)) {
        begin_block(p, TEXT_BLOCK_PARA);
        para = 1;
        inline_md(p, (size_t)(e - s) + 3, b, 0);
      }
      continue;
    }
    if (p->mdx && indent == 0 && (starts(s, t, b, "import ") || starts(s, t, b, "export "))) {
      if (para) end_block(p), para = 0;
      if (find_byte(s, t, b, '{') && !find_byte(s, t, b, '}')) skip_until_close = 1;
      continue;
    }
    if (p->mdx && s[t] == '{') {
      if (para) end_block(p), para = 0;
      if (!find_byte(s, t, b, '}')) skip_until_close = 1;
      continue;
    }
    if (p->mdx && s[t] == '<' && t + 1 < b &&
        (isupper((unsigned char)s[t + 1]) || s[t + 1] == '>' ||
         (s[t + 1] == '/' && (t + 2 >= b || isupper((unsigned char)s[t + 2]) || s[t + 2] == '>')))) {
      /* a JSX tag line: dropped; text after the tag on the same line is kept */
      const char *gt = find_byte(s, t, b, '>');
      if (!gt) {
        if (para) end_block(p), para = 0;
        in_jsx = 1;
        continue;
      }
      size_t rest = (size_t)(gt - s) + 1;
      if (blank(s, rest, b)) {
        if (para) end_block(p), para = 0;
        continue;
      }
    }
    /* an ATX heading */
    if (indent <= 3 && s[t] == '#') {
      size_t k = t;
      while (k < b && s[k] == '#') k++;
      int level = (int)(k - t);
      if (level <= 6 && (k == b || s[k] == ' ' || s[k] == '\t')) {
        if (para) end_block(p), para = 0;
        size_t e = b;
        while (e > k && is_space(s[e - 1])) e--;
        size_t h = e;
        while (h > k && s[h - 1] == '#') h--;
        if (h == k || s[h - 1] == ' ' || s[h - 1] == '\t') e = h;
        begin_block(p, TEXT_BLOCK_HEADING);
        inline_md(p, k, e, 0);
        if (end_block(p)) make_heading(p, level);
        continue;
      }
    }
    /* a setext underline turns the paragraph above into a heading */
    if (para == 1 && indent <= 3 && (rule_of(s, t, b, '=', 1) || rule_of(s, t, b, '-', 2)) &&
        (s[t] == '=' || s[t] == '-')) {
      int level = s[t] == '=' ? 1 : 2;
      if (end_block(p)) make_heading(p, level);
      para = 0;
      continue;
    }
    if (indent <= 3 && (rule_of(s, t, b, '-', 3) || rule_of(s, t, b, '*', 3) || rule_of(s, t, b, '_', 3))) {
      if (para) end_block(p), para = 0;
      continue;
    }
    /* a table's delimiter row */
    if (s[t] == '|' || s[t] == ':' || s[t] == '-') {
      int ok = 1, pipe = 0, dash = 0;
      for (size_t i = t; i < b; i++) {
        if (s[i] == '|') pipe = 1;
        else if (s[i] == '-') dash = 1;
        else if (s[i] != ':' && s[i] != ' ' && s[i] != '\t') ok = 0;
      }
      if (ok && pipe && dash) continue;
    }
    /* a link reference definition */
    if (s[t] == '[') {
      size_t cl = match_bracket(s, t, b, '[', ']');
      if (cl + 1 < b && s[cl + 1] == ':') continue;
    }
    while (t < b && s[t] == '>') {
      t++;
      if (t < b && s[t] == ' ') t++;
    }
    while (t < b && (s[t] == ' ' || s[t] == '\t')) t++;
    if (t == b) {
      if (para) end_block(p), para = 0;
      continue;
    }
    /* a list item */
    size_t m = t;
    int item = 0;
    if ((s[m] == '-' || s[m] == '*' || s[m] == '+') && m + 1 < b && s[m + 1] == ' ') item = 1, m += 2;
    else if (isdigit((unsigned char)s[m])) {
      while (m < b && m - t < 9 && isdigit((unsigned char)s[m])) m++;
      if (m + 1 < b && (s[m] == '.' || s[m] == ')') && s[m + 1] == ' ') item = 1, m += 2;
      else m = t;
    }
    if (item) {
      if (para) end_block(p);
      begin_block(p, TEXT_BLOCK_LIST);
      para = 2;
      while (m < b && s[m] == ' ') m++;
      t = m;
    } else if (para) {
      put(p, '\n', prev_nl, prev_nl + 1);
    } else {
      begin_block(p, TEXT_BLOCK_PARA);
      para = 1;
    }
    inline_md(p, t, b, s[t] == '|');
    prev_nl = b;
  }
  end_block(p);
}

/* ---- reStructuredText ------------------------------------------------------------------ */

static int rst_adornment(const char *s, size_t a, size_t b) {
  if (b - a < 2 || !ispunct((unsigned char)s[a])) return 0;
  for (size_t i = a; i < b; i++)
    if (s[i] != s[a]) return 0;
  return 1;
}

static void inline_rst(parser *p, size_t a, size_t b) {
  const char *s = p->s;
  for (size_t i = a; i < b; i++) {
    char c = s[i];
    if (c == '`') continue;
    if (c == '_' && i > a && s[i - 1] == '`') continue;
    if (c == '*' && !((i == a || is_space(s[i - 1])) && (i + 1 == b || is_space(s[i + 1])))) continue;
    put(p, c, i, i + 1);
  }
}

static void parse_rst(parser *p) {
  const char *s = p->s;
  size_t n = p->n, pos = 0;
  char styles[16][2];
  int nstyles = 0, para = 0, code_indent = -1, want_code = 0, skip_indent = -1;
  size_t prev_nl = 0;
  while (pos < n) {
    line l = get_line(s, n, pos);
    pos = l.next;
    size_t t = l.a;
    int indent = 0;
    while (t < l.b && (s[t] == ' ' || s[t] == '\t')) indent += s[t] == '\t' ? 8 : 1, t++;
    int is_blank = t == l.b;
    if (code_indent >= 0 || skip_indent >= 0) {
      int lim = code_indent >= 0 ? code_indent : skip_indent;
      if (is_blank || indent > lim) {
        if (code_indent >= 0) {
          if (!p->open && !is_blank) begin_block(p, TEXT_BLOCK_CODE);
          if (p->open) {
            put_src(p, l.a, l.b);
            put(p, '\n', l.b, l.next);
          }
        }
        continue;
      }
      if (code_indent >= 0) end_block(p);
      code_indent = skip_indent = -1;
    }
    if (is_blank) {
      if (para) end_block(p), para = 0;
      if (want_code) code_indent = want_code - 1, want_code = 0;
      continue;
    }
    if (starts(s, t, l.b, ".. ")) {
      if (para) end_block(p), para = 0;
      if (memmem(s + t, l.b - t, "code", 4)) code_indent = indent;
      else skip_indent = indent;
      continue;
    }
    /* a title: text over an adornment line (an overline above is skipped as its own line) */
    line nx = get_line(s, n, pos);
    if (!rst_adornment(s, t, l.b) && pos < n && rst_adornment(s, nx.a, nx.b) && nx.b - nx.a >= l.b - t) {
      if (para) end_block(p), para = 0;
      char key[2] = {s[nx.a], 0};
      int level = 0;
      while (level < nstyles && styles[level][0] != key[0]) level++;
      if (level == nstyles && nstyles < 16) styles[nstyles][0] = key[0], nstyles++;
      begin_block(p, TEXT_BLOCK_HEADING);
      inline_rst(p, t, l.b);
      if (end_block(p)) make_heading(p, level + 1 > 6 ? 6 : level + 1);
      pos = nx.next;
      continue;
    }
    if (rst_adornment(s, t, l.b)) continue;
    if (para) put(p, '\n', prev_nl, prev_nl + 1);
    else begin_block(p, TEXT_BLOCK_PARA), para = 1;
    size_t e = l.b;
    if (e - t >= 2 && s[e - 1] == ':' && s[e - 2] == ':') {
      want_code = indent + 1;
      e--; /* "text::" reads as "text:" */
    }
    inline_rst(p, t, e);
    prev_nl = l.b;
  }
  end_block(p);
}

/* ---- HTML ----------------------------------------------------------------------------- */

static int tag_is(const char *s, size_t a, size_t b, const char *name) {
  size_t k = strlen(name);
  return b - a == k && !strncasecmp(s + a, name, k);
}

static void parse_html(parser *p) {
  const char *s = p->s;
  size_t n = p->n, i = 0;
  int pre = 0, heading = 0, space = 0;
  while (i < n) {
    char c = s[i];
    if (c == '<') {
      if (starts(s, i, n, "<!--")) {
        const char *e = memmem(s + i, n - i, "-->", 3);
        i = e ? (size_t)(e - s) + 3 : n;
        continue;
      }
      const char *gt = find_byte(s, i, n, '>');
      if (!gt) {
        i = n;
        break;
      }
      size_t e = (size_t)(gt - s) + 1;
      size_t na = i + 1;
      int closing = na < n && s[na] == '/';
      if (closing) na++;
      size_t nb = na;
      while (nb < e && isalnum((unsigned char)s[nb])) nb++;
      if (!closing && (tag_is(s, na, nb, "script") || tag_is(s, na, nb, "style") || tag_is(s, na, nb, "head") ||
                       tag_is(s, na, nb, "template"))) {
        char endtag[16];
        snprintf(endtag, sizeof endtag, "</%.*s", (int)(nb - na), s + na);
        size_t k = e;
        while (k < n && !(s[k] == '<' && starts(s, k, n, "</") && !strncasecmp(s + k, endtag, strlen(endtag)))) k++;
        const char *gt2 = k < n ? find_byte(s, k, n, '>') : NULL;
        i = gt2 ? (size_t)(gt2 - s) + 1 : n;
        continue;
      }
      int h = nb - na == 2 && (s[na] == 'h' || s[na] == 'H') && s[na + 1] >= '1' && s[na + 1] <= '6' ? s[na + 1] - '0' : 0;
      static const char *blocks[] = {"p", "div", "li", "ul", "ol", "br", "tr", "td", "th", "table", "section",
                                     "article", "header", "footer", "nav", "blockquote", "dt", "dd", "dl",
                                     "hr", "main", "aside", "figure", "figcaption", "body", "title", "pre"};
      int is_block = h != 0;
      for (size_t k = 0; !is_block && k < sizeof blocks / sizeof blocks[0]; k++) is_block = tag_is(s, na, nb, blocks[k]);
      if (is_block) {
        if (heading && h && closing) {
          if (end_block(p)) make_heading(p, heading);
          heading = 0;
        } else
          end_block(p);
        pre = 0;
        space = 0;
        if (!closing && h) {
          begin_block(p, TEXT_BLOCK_HEADING);
          heading = h;
        } else if (!closing && tag_is(s, na, nb, "pre")) {
          begin_block(p, TEXT_BLOCK_CODE);
          pre = 1;
        }
      }
      i = e;
      continue;
    }
    if (!p->open) {
      if (is_space(c)) {
        i++;
        continue;
      }
      begin_block(p, TEXT_BLOCK_PARA);
      space = 0;
    }
    if (c == '&') {
      uint32_t cp;
      size_t len = entity(s, i, n, &cp);
      if (len) {
        put_utf8(p, cp, i, i + len);
        i += len;
        space = 0;
        continue;
      }
    }
    if (!pre && is_space(c)) {
      if (!space) put(p, ' ', i, i + 1);
      space = 1;
      i++;
      continue;
    }
    space = 0;
    put(p, c, i, i + 1);
    i++;
  }
  if (heading) {
    if (end_block(p)) make_heading(p, heading);
  } else
    end_block(p);
}

/* ---- plain text ----------------------------------------------------------------------- */

/* The clean text is the source itself; paragraphs (split at blank lines) are the blocks. */
static void parse_plain(parser *p) {
  const char *s = p->s;
  size_t n = p->n, pos = 0;
  put_src(p, 0, n);
  if (p->oom) return;
  p->d->len = n;
  int in = 0;
  size_t start = 0, last = 0;
  while (pos < n) {
    line l = get_line(s, n, pos);
    if (blank(s, l.a, l.b)) {
      if (in) {
        text_block bl = {.start = start, .end = last, .kind = TEXT_BLOCK_PARA};
        add_block(p, &bl);
      }
      in = 0;
    } else {
      if (!in) {
        start = l.a;
        while (is_space(s[start])) start++;
      }
      in = 1;
      last = l.b;
      while (last > l.a && is_space(s[last - 1])) last--;
    }
    pos = l.next;
  }
  if (in) {
    text_block bl = {.start = start, .end = last, .kind = TEXT_BLOCK_PARA};
    add_block(p, &bl);
  }
}

/* ---- entry ------------------------------------------------------------------------------ */

static int utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  int k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (!k || (size_t)k > n) return 0;
  for (int i = 1; i < k; i++)
    if ((s[i] & 0xC0) != 0x80) return 0;
  uint32_t cp = k == 1 ? c : k == 2 ? (c & 31) : k == 3 ? (c & 15) : (c & 7);
  for (int i = 1; i < k; i++) cp = cp << 6 | (s[i] & 63);
  if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp < 0xE000))
    return 0;
  return k;
}

static char *sanitize(const char *src, size_t n) {
  char *s = malloc(n + 1);
  if (!s) return NULL;
  memcpy(s, src, n);
  s[n] = 0;
  for (size_t i = 0; i < n;) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x80) {
      if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') s[i] = ' ';
      else if (c == 0x7F) s[i] = ' ';
      i++;
      continue;
    }
    int k = utf8_len((const unsigned char *)s + i, n - i);
    if (!k) {
      s[i++] = '?';
      continue;
    }
    i += (size_t)k;
  }
  return s;
}

qv_status text_parse(text_doc *out, const char *src, size_t n, text_format f, qv_error *err) {
  memset(out, 0, sizeof *out);
  if (n >= MAX_SRC) return qv_fail(err, QV_ERANGE, "document is %zu bytes; at most 2 GiB", n);
  parser p = {.d = out, .n = n, .mdx = f == TEXT_MDX};
  char *s = sanitize(src, n);
  if (!s) return qv_fail(err, QV_ENOMEM, "out of memory");
  p.s = s;
  switch (f) {
  case TEXT_MARKDOWN:
  case TEXT_MDX: parse_markdown(&p); break;
  case TEXT_RST: parse_rst(&p); break;
  case TEXT_HTML: parse_html(&p); break;
  default: parse_plain(&p); break;
  }
  free(s);
  if (!p.oom && !out->text) {
    out->text = malloc(1);
    if (!out->text) p.oom = 1;
  }
  if (p.oom) {
    text_doc_free(out);
    return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  out->text[out->len] = 0;
  return QV_OK;
}
