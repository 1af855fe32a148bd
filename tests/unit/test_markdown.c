/* Documents to clean text: Markdown blocks and inline syntax, front matter, MDX, HTML,
 * reStructuredText and plain text, and the byte map from clean text back to the source. */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "text/text.h"

static text_doc parse(const char *src, text_format f) {
  text_doc d;
  qv_error err = {0};
  if (text_parse(&d, src, strlen(src), f, &err)) {
    fprintf(stderr, "parse failed: %s\n", err.msg);
    abort();
  }
  return d;
}

static char *block_text(const text_doc *d, size_t i) {
  return strndup(d->text + d->blocks[i].start, d->blocks[i].end - d->blocks[i].start);
}

#define ASSERT_BLOCK(d, i, kind_, text_)                 \
  do {                                                   \
    ASSERT((i) < (d).nblocks);                           \
    char *bt_ = block_text(&(d), (i));                   \
    int same_ = !strcmp(bt_, (text_));                   \
    if (!same_) fprintf(stderr, "  block %zu: \"%s\"\n", (size_t)(i), bt_); \
    free(bt_);                                           \
    ASSERT(same_);                                       \
    ASSERT_EQ((d).blocks[i].kind, (kind_));              \
  } while (0)

/* Every byte of clean text maps into the source, and a byte copied as is maps to itself. */
static int map_ok(const text_doc *d, const char *src) {
  size_t n = strlen(src);
  for (size_t i = 0; i < d->len; i++) {
    if (d->map[i] > d->map_end[i] || d->map_end[i] > n) return 0;
    if (d->map_end[i] == d->map[i] + 1 && d->text[i] != src[d->map[i]] && d->text[i] != ' ' && d->text[i] != '?')
      return 0;
  }
  return 1;
}

TEST(markdown_blocks_and_headings) {
  const char *src =
      "# Title\n\nIntro with **bold**, _em_, `code` and a [link](http://x.y/z).\n"
      "Second line.\n\n## Part A\n\n- item one\n- item *two*\n\n```c\nint x = 1;\n```\n\n"
      "### Deep\n\ntext &amp; more\n\n## Part B\nSetext\n======\n\nafter\n";
  text_doc d = parse(src, TEXT_MARKDOWN);
  ASSERT_BLOCK(d, 0, TEXT_BLOCK_HEADING, "Title");
  ASSERT_BLOCK(d, 1, TEXT_BLOCK_PARA, "Intro with bold, em, code and a link.\nSecond line.");
  ASSERT_BLOCK(d, 2, TEXT_BLOCK_HEADING, "Part A");
  ASSERT_BLOCK(d, 3, TEXT_BLOCK_LIST, "item one");
  ASSERT_BLOCK(d, 4, TEXT_BLOCK_LIST, "item two");
  ASSERT_BLOCK(d, 5, TEXT_BLOCK_CODE, "int x = 1;");
  ASSERT_BLOCK(d, 6, TEXT_BLOCK_HEADING, "Deep");
  ASSERT_BLOCK(d, 7, TEXT_BLOCK_PARA, "text & more");
  ASSERT_BLOCK(d, 8, TEXT_BLOCK_HEADING, "Part B");
  ASSERT_BLOCK(d, 9, TEXT_BLOCK_HEADING, "Setext");
  ASSERT_BLOCK(d, 10, TEXT_BLOCK_PARA, "after");
  ASSERT_EQ(d.nblocks, 11);
  /* heading paths */
  json_t *h = text_block_headings(&d, 7);
  char *s = json_dumps(h, JSON_COMPACT);
  ASSERT_STR_EQ(s, "[\"Title\",\"Part A\",\"Deep\"]");
  free(s);
  json_decref(h);
  h = text_block_headings(&d, 10); /* Setext is level 1: a new top-level path */
  s = json_dumps(h, JSON_COMPACT);
  ASSERT_STR_EQ(s, "[\"Setext\"]");
  free(s);
  json_decref(h);
  /* the entity maps to its five source bytes */
  const char *amp = strchr(d.text, '&');
  size_t at = (size_t)(amp - d.text);
  ASSERT_EQ(d.map_end[at] - d.map[at], 5);
  ASSERT(!strncmp(src + d.map[at], "&amp;", 5));
  ASSERT(map_ok(&d, src));
  text_doc_free(&d);
}

TEST(markdown_front_matter_and_comments) {
  const char *src = "---\ntitle: Hello\ntags: [a, b]\nweight: 3\ndraft: false\n---\n<!-- hidden\nstill -->\n"
                    "Body text.\n\n[ref]: http://example.com\n| a | b |\n|---|:-:|\n| 1 | 2 |\n";
  text_doc d = parse(src, TEXT_MARKDOWN);
  ASSERT(d.front != NULL);
  char *s = json_dumps(d.front, JSON_COMPACT | JSON_SORT_KEYS);
  ASSERT_STR_EQ(s, "{\"draft\":false,\"tags\":[\"a\",\"b\"],\"title\":\"Hello\",\"weight\":3}");
  free(s);
  ASSERT_BLOCK(d, 0, TEXT_BLOCK_PARA, "Body text.");
  ASSERT_BLOCK(d, 1, TEXT_BLOCK_PARA, "a   b  \n  1   2");
  ASSERT_EQ(d.nblocks, 2);
  ASSERT(map_ok(&d, src));
  text_doc_free(&d);
}

TEST(mdx_drops_imports_and_jsx) {
  const char *src = "import Tabs from '@theme/Tabs';\nimport {\n  A,\n} from 'x';\nexport const meta = 1;\n\n"
                    "# Guide\n\n<Tabs>\n<TabItem value=\"a\">\n\nInside the tab.\n\n</TabItem>\n</Tabs>\n\n"
                    "{/* a comment */}\n\n<Note\n  kind=\"warn\"\n/>\n\nLast <Badge text=\"x\"/> words.\n"
                    "```js\nimport x from 'y';\n```\n";
  text_doc d = parse(src, TEXT_MDX);
  ASSERT_BLOCK(d, 0, TEXT_BLOCK_HEADING, "Guide");
  ASSERT_BLOCK(d, 1, TEXT_BLOCK_PARA, "Inside the tab.");
  ASSERT_BLOCK(d, 2, TEXT_BLOCK_PARA, "Last  words.");
  ASSERT_BLOCK(d, 3, TEXT_BLOCK_CODE, "import x from 'y';"); /* code keeps its imports */
  ASSERT_EQ(d.nblocks, 4);
  ASSERT(map_ok(&d, src));
  text_doc_free(&d);
}

TEST(html_text) {
  const char *src = "<html><head><title>T</title><style>p{}</style></head><body>"
                    "<h1>Big &lt;Title&gt;</h1><p>One   two\nthree.</p><script>var x;</script>"
                    "<h2>Sub</h2><pre>a  b\n c</pre><p>caf&#233;</p></body></html>";
  text_doc d = parse(src, TEXT_HTML);
  ASSERT_BLOCK(d, 0, TEXT_BLOCK_HEADING, "Big <Title>");
  ASSERT_BLOCK(d, 1, TEXT_BLOCK_PARA, "One two three.");
  ASSERT_BLOCK(d, 2, TEXT_BLOCK_HEADING, "Sub");
  ASSERT_BLOCK(d, 3, TEXT_BLOCK_CODE, "a  b\n c");
  ASSERT_BLOCK(d, 4, TEXT_BLOCK_PARA, "caf\xc3\xa9");
  ASSERT_EQ(d.nblocks, 5);
  ASSERT_EQ(d.blocks[3].depth, 2);
  ASSERT(map_ok(&d, src));
  text_doc_free(&d);
}

TEST(rst_titles_and_literal_blocks) {
  const char *src = "=====\nTitle\n=====\n\nSome *emphasis* and ``code``.\n\nSection\n-------\n\nExample::\n\n"
                    "    x = 1\n    y = 2\n\n.. note::\n   skipped\n\nEnd.\n";
  text_doc d = parse(src, TEXT_RST);
  ASSERT_BLOCK(d, 0, TEXT_BLOCK_HEADING, "Title");
  ASSERT_BLOCK(d, 1, TEXT_BLOCK_PARA, "Some emphasis and code.");
  ASSERT_BLOCK(d, 2, TEXT_BLOCK_HEADING, "Section");
  ASSERT_BLOCK(d, 3, TEXT_BLOCK_PARA, "Example:");
  ASSERT_BLOCK(d, 4, TEXT_BLOCK_CODE, "x = 1\n    y = 2");
  ASSERT_BLOCK(d, 5, TEXT_BLOCK_PARA, "End.");
  ASSERT_EQ(d.nblocks, 6);
  ASSERT_EQ(d.blocks[4].depth, 2);
  text_doc_free(&d);
}

TEST(plain_text_is_the_source) {
  const char *src = "  First para\nline two.\n\n\n\tSecond.\n";
  text_doc d = parse(src, TEXT_PLAIN);
  ASSERT_EQ(d.len, strlen(src));
  ASSERT(!memcmp(d.text, src, d.len));
  ASSERT_BLOCK(d, 0, TEXT_BLOCK_PARA, "First para\nline two.");
  ASSERT_BLOCK(d, 1, TEXT_BLOCK_PARA, "Second.");
  ASSERT_EQ(d.nblocks, 2);
  text_doc_free(&d);
}

TEST(invalid_utf8_and_controls_keep_offsets) {
  const char src[] = "ab\xff\xfe c\x01" "d \xe2\x82 e\xc3\xa9";
  text_doc d;
  ASSERT_OK(text_parse(&d, src, sizeof src - 1, TEXT_PLAIN, NULL));
  ASSERT_EQ(d.len, sizeof src - 1);
  ASSERT(!memcmp(d.text, "ab?? c d ?? e\xc3\xa9", d.len));
  text_doc_free(&d);
  ASSERT_OK(text_parse(&d, src, sizeof src - 1, TEXT_MARKDOWN, NULL));
  ASSERT_STR_EQ(d.text, "ab?? c d ?? e\xc3\xa9");
  text_doc_free(&d);
}

TEST(empty_and_unclosed_constructs) {
  static const char *srcs[] = {"", "\n\n", "---\nno: close\n", "```\nopen fence", "<!-- open", "[a](", "`x",
                               "<", "&#99999999;", "# ", "---\n- a\n---\n", "* * *", "<h1>x"};
  for (size_t i = 0; i < sizeof srcs / sizeof srcs[0]; i++)
    for (int f = 0; f <= TEXT_HTML; f++) {
      text_doc d;
      ASSERT_OK(text_parse(&d, srcs[i], strlen(srcs[i]), (text_format)f, NULL));
      ASSERT(map_ok(&d, srcs[i]));
      ASSERT_EQ(d.text[d.len], 0);
      text_doc_free(&d);
    }
}

TEST(format_for_path) {
  ASSERT_EQ(text_format_for_path("a/b.md"), TEXT_MARKDOWN);
  ASSERT_EQ(text_format_for_path("x.MDX"), TEXT_MDX);
  ASSERT_EQ(text_format_for_path("x.rst"), TEXT_RST);
  ASSERT_EQ(text_format_for_path("x.htm"), TEXT_HTML);
  ASSERT_EQ(text_format_for_path("x.txt"), TEXT_PLAIN);
  ASSERT_EQ(text_format_for_path("x.c"), -1);
  ASSERT_EQ(text_format_for_path("dir.md/file"), -1);
}

TEST_MAIN(T(markdown_blocks_and_headings), T(markdown_front_matter_and_comments), T(mdx_drops_imports_and_jsx),
          T(html_text), T(rst_titles_and_literal_blocks), T(plain_text_is_the_source),
          T(invalid_utf8_and_controls_keep_offsets), T(empty_and_unclosed_constructs), T(format_for_path))
