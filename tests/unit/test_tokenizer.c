/* The tokenizer on a tiny hand-written tokenizer.json, each pipeline stage and error on its
 * own; then a few known encodings from the real all-MiniLM-L6-v2 tokenizer when it is
 * present (tests/integration/test_tokenizer.py compares thousands against HF). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"
#include "test.h"

/* ids: [PAD]0 [UNK]1 [CLS]2 [SEP]3 [MASK]4 hello5 world6 un7 ##aff8 ##able9 ,10 !11 a12
 * ##b13 cafe14 café15 中16 i17 ##̇18 σ19 .20 x21 ##x22 is23 */
#define VOCAB                                                                                     \
  "{\"[PAD]\":0,\"[UNK]\":1,\"[CLS]\":2,\"[SEP]\":3,\"[MASK]\":4,\"hello\":5,\"world\":6,"       \
  "\"un\":7,\"##aff\":8,\"##able\":9,\",\":10,\"!\":11,\"a\":12,\"##b\":13,\"cafe\":14,"          \
  "\"caf\\u00e9\":15,\"\\u4e2d\":16,\"i\":17,\"##\\u0307\":18,\"\\u03c3\":19,\".\":20,\"x\":21,"  \
  "\"##x\":22,\"is\":23}"

#define ADDED                                                                                     \
  "[{\"id\":0,\"content\":\"[PAD]\",\"special\":true,\"normalized\":false},"                       \
  "{\"id\":1,\"content\":\"[UNK]\",\"special\":true,\"normalized\":false},"                        \
  "{\"id\":2,\"content\":\"[CLS]\",\"special\":true,\"normalized\":false},"                        \
  "{\"id\":3,\"content\":\"[SEP]\",\"special\":true,\"normalized\":false},"                        \
  "{\"id\":4,\"content\":\"[MASK]\",\"special\":true,\"normalized\":false}]"

#define TEMPLATE                                                                                  \
  "{\"type\":\"TemplateProcessing\","                                                             \
  "\"single\":[{\"SpecialToken\":{\"id\":\"[CLS]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\","  \
  "\"type_id\":0}},{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":0}}],"                          \
  "\"pair\":[{\"SpecialToken\":{\"id\":\"[CLS]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\","    \
  "\"type_id\":0}},{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":0}},{\"Sequence\":{\"id\":"     \
  "\"B\",\"type_id\":1}},{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":1}}],"                    \
  "\"special_tokens\":{\"[CLS]\":{\"id\":\"[CLS]\",\"ids\":[2],\"tokens\":[\"[CLS]\"]},"          \
  "\"[SEP]\":{\"id\":\"[SEP]\",\"ids\":[3],\"tokens\":[\"[SEP]\"]}}}"

static char json_buf[8192];

/* A tokenizer.json with the given normalizer, max chars per word and post-processor. */
static const char *make_json(const char *normalizer, int max_chars, const char *post) {
  snprintf(json_buf, sizeof json_buf,
           "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":" ADDED ","
           "\"normalizer\":%s,\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
           "\"post_processor\":%s,\"decoder\":null,"
           "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\","
           "\"max_input_chars_per_word\":%d,\"vocab\":" VOCAB "}}",
           normalizer, post, max_chars);
  return json_buf;
}

#define BERT_NORM(lower, strip) \
  "{\"type\":\"BertNormalizer\",\"clean_text\":true,\"handle_chinese_chars\":true,\"strip_accents\":" strip ",\"lowercase\":" lower "}"

static qv_tokenizer *load(const char *normalizer, int max_chars, const char *post) {
  const char *j = make_json(normalizer, max_chars, post);
  qv_tokenizer *t = NULL;
  qv_error err = {0};
  qv_status st = tok_from_json(&t, j, strlen(j), &err);
  if (st) fprintf(stderr, "  tok_from_json: %s\n", err.msg);
  return t;
}

static qv_tokenizer *std_tok(void) { return load(BERT_NORM("true", "null"), 100, TEMPLATE); }

/* Encodes and compares with want (n ids) and, when types is set, the type ids. */
static int check(const qv_tokenizer *t, const char *a, const char *b, size_t max_len, const int32_t *want,
                 size_t n, const int32_t *types) {
  tok_encoding e = {0};
  qv_error err = {0};
  qv_status st = tok_encode(t, a, strlen(a), b, b ? strlen(b) : 0, max_len, &e, &err);
  int ok = st == QV_OK && e.len == n && memcmp(e.ids, want, n * sizeof *want) == 0 &&
           (!types || memcmp(e.type_ids, types, n * sizeof *types) == 0);
  if (!ok) {
    fprintf(stderr, "  \"%s\"%s%s%s: status %d, got [", a, b ? " / \"" : "", b ? b : "", b ? "\"" : "", st);
    for (size_t i = 0; i < e.len; i++) fprintf(stderr, "%s%d:%d", i ? " " : "", e.ids[i], e.type_ids[i]);
    fprintf(stderr, "], want [");
    for (size_t i = 0; i < n; i++) fprintf(stderr, "%s%d", i ? " " : "", want[i]);
    fprintf(stderr, "]\n");
  }
  tok_encoding_free(&e);
  return ok;
}

#define CHECK(t, a, ...)                                                   \
  do {                                                                     \
    static const int32_t want_[] = {__VA_ARGS__};                          \
    ASSERT(check(t, a, NULL, 0, want_, sizeof want_ / sizeof *want_, NULL)); \
  } while (0)

TEST(lookups) {
  qv_tokenizer *t = std_tok();
  ASSERT(t);
  ASSERT_EQ(tok_vocab_size(t), 24);
  ASSERT_EQ(tok_id(t, "hello"), 5);
  ASSERT_EQ(tok_id(t, "[MASK]"), 4);
  ASSERT_EQ(tok_id(t, "nope"), -1);
  ASSERT_STR_EQ(tok_token(t, 8), "##aff");
  ASSERT(tok_token(t, 24) == NULL);
  ASSERT(tok_token(t, -1) == NULL);
  ASSERT_EQ(tok_pad_id(t), 0);
  tok_free(t);
}

TEST(punctuation_split_and_continuation) {
  qv_tokenizer *t = std_tok();
  ASSERT(t);
  CHECK(t, "Hello, world!", 2, 5, 10, 6, 11, 3);
  CHECK(t, "unaffable", 2, 7, 8, 9, 3);
  CHECK(t, "abbb", 2, 12, 13, 13, 13, 3);
  CHECK(t, "hello...world", 2, 5, 20, 20, 20, 6, 3);
  /* $ is ASCII punctuation for BERT though Unicode calls it a symbol */
  CHECK(t, "a$a", 2, 12, 1, 12, 3);
  CHECK(t, "", 2, 3);
  CHECK(t, " \t\n ", 2, 3);
  tok_free(t);
}

TEST(unknown_words) {
  qv_tokenizer *t = std_tok();
  ASSERT(t);
  CHECK(t, "unknown", 2, 1, 3);    /* "un" matches, "##known" does not: one [UNK] */
  CHECK(t, "ba", 2, 1, 3);         /* nothing matches at the start */
  CHECK(t, "hello zzz x", 2, 5, 1, 21, 3);
  tok_free(t);
}

TEST(max_chars_per_word) {
  qv_tokenizer *t = load(BERT_NORM("true", "null"), 4, TEMPLATE);
  ASSERT(t);
  CHECK(t, "xxxx", 2, 21, 22, 22, 22, 3);
  CHECK(t, "xxxxx", 2, 1, 3);
  /* counted after normalization: "café" with accents stripped is still 4 chars */
  CHECK(t, "CAFÉ", 2, 14, 3);
  tok_free(t);
}

TEST(normalizer_options) {
  qv_tokenizer *t = std_tok(); /* lowercase, strip_accents follows it */
  ASSERT(t);
  CHECK(t, "CAFÉ", 2, 14, 3);
  CHECK(t, "cafe\xcc\x81", 2, 14, 3);       /* combining acute: NFD, then dropped */
  CHECK(t, "a\x07\xef\xbb\xbf" "b", 2, 12, 13, 3); /* BEL and BOM are cleaned away */
  CHECK(t, "a\xc2\xa0" "a", 2, 12, 12, 3);       /* no-break space splits */
  CHECK(t, "a\xe4\xb8\xad" "a", 2, 12, 16, 12, 3); /* a CJK char stands alone */
  CHECK(t, "\xce\xa3", 2, 19, 3);                /* Σ -> σ, never final ς */
  CHECK(t, "\xc4\xb0", 2, 17, 3);                /* İ -> I + dot, dot dropped -> i */
  tok_free(t);

  t = load(BERT_NORM("true", "false"), 100, TEMPLATE); /* lowercase, accents kept */
  ASSERT(t);
  CHECK(t, "CAFÉ", 2, 15, 3);
  CHECK(t, "\xc4\xb0", 2, 17, 18, 3); /* full lowercase: "i\u0307" */
  tok_free(t);

  t = load(BERT_NORM("false", "null"), 100, TEMPLATE); /* cased */
  ASSERT(t);
  CHECK(t, "Hello hello", 2, 1, 5, 3);
  CHECK(t, "café", 2, 15, 3);
  tok_free(t);

  t = load(BERT_NORM("false", "true"), 100, TEMPLATE); /* cased, accents stripped */
  ASSERT(t);
  CHECK(t, "café", 2, 14, 3);
  tok_free(t);

  t = load("null", 100, TEMPLATE);
  ASSERT(t);
  CHECK(t, "HELLO a\x07" "a", 2, 1, 1, 3);
  tok_free(t);
}

TEST(special_tokens_in_text) {
  qv_tokenizer *t = std_tok();
  ASSERT(t);
  CHECK(t, "hello [MASK] x[SEP]a", 2, 5, 4, 21, 3, 12, 3);
  CHECK(t, "[mask]", 2, 1, 1, 1, 3); /* not normalized: matched as written only */
  tok_free(t);
}

TEST(pair_template_and_type_ids) {
  qv_tokenizer *t = std_tok();
  ASSERT(t);
  static const int32_t ids[] = {2, 5, 3, 6, 11, 3}, types[] = {0, 0, 0, 1, 1, 1};
  ASSERT(check(t, "hello", "world!", 0, ids, 6, types));
  static const int32_t e_ids[] = {2, 3, 3}, e_types[] = {0, 0, 1};
  ASSERT(check(t, "", "", 0, e_ids, 3, e_types));
  tok_free(t);

  t = load(BERT_NORM("true", "null"), 100,
           "{\"type\":\"BertProcessing\",\"sep\":[\"[SEP]\",3],\"cls\":[\"[CLS]\",2]}");
  ASSERT(t);
  ASSERT(check(t, "hello", "world!", 0, ids, 6, types));
  tok_free(t);

  t = load(BERT_NORM("true", "null"), 100, "null"); /* no special tokens; B still type 1 */
  ASSERT(t);
  static const int32_t n_ids[] = {5, 6, 11}, n_types[] = {0, 1, 1};
  ASSERT(check(t, "hello", "world!", 0, n_ids, 3, n_types));
  tok_free(t);
}

TEST(truncation_single) {
  qv_tokenizer *t = std_tok();
  ASSERT(t);
  tok_encoding e = {0};
  const char *s = "a a a a a a";
  ASSERT_OK(tok_encode(t, s, strlen(s), NULL, 0, 5, &e, NULL));
  ASSERT_EQ(e.len, 5);
  ASSERT_EQ(e.ids[0], 2);
  ASSERT_EQ(e.ids[3], 12);
  ASSERT_EQ(e.ids[4], 3);
  ASSERT_EQ(e.untruncated_len, 8);
  ASSERT_OK(tok_encode(t, s, strlen(s), NULL, 0, 8, &e, NULL)); /* exactly fits */
  ASSERT_EQ(e.len, 8);
  ASSERT_OK(tok_encode(t, s, strlen(s), NULL, 0, 2, &e, NULL)); /* only the specials fit */
  ASSERT_EQ(e.len, 2);
  ASSERT_OK(tok_encode(t, s, strlen(s), NULL, 0, 1, &e, NULL)); /* specials are kept */
  ASSERT_EQ(e.len, 2);
  ASSERT_EQ(e.untruncated_len, 8);
  tok_encoding_free(&e);
  tok_free(t);
}

/* Lengths HF's longest-first leaves (utils/truncation.rs) for max_len 7 + 3 specials. */
TEST(truncation_pair_longest_first) {
  qv_tokenizer *t = std_tok();
  ASSERT(t);
  static const char *seq[] = {"", "a a", "a a a a", "a a a a a a a a"}; /* 0, 2, 4, 8 */
  static const size_t want[4][4][2] = {
      {{0, 0}, {0, 2}, {0, 4}, {0, 7}},
      {{2, 0}, {2, 2}, {2, 4}, {2, 5}},
      {{4, 0}, {4, 2}, {3, 4}, {3, 4}},
      {{7, 0}, {5, 2}, {4, 3}, {3, 4}},
  };
  tok_encoding e = {0};
  for (int i = 0; i < 4; i++) {
    for (int j = 0; j < 4; j++) {
      ASSERT_OK(tok_encode(t, seq[i], strlen(seq[i]), seq[j], strlen(seq[j]), 10, &e, NULL));
      size_t na = 0, nb = 0;
      for (size_t k = 0; k < e.len; k++)
        if (e.ids[k] == 12) *(e.type_ids[k] ? &nb : &na) += 1;
      if (na != want[i][j][0] || nb != want[i][j][1])
        fprintf(stderr, "  %d/%d: got %zu+%zu\n", i, j, na, nb);
      ASSERT_EQ(na, want[i][j][0]);
      ASSERT_EQ(nb, want[i][j][1]);
    }
  }
  tok_encoding_free(&e);
  tok_free(t);
}

TEST(invalid_utf8) {
  qv_tokenizer *t = std_tok();
  ASSERT(t);
  tok_encoding e = {0};
  qv_error err = {0};
  static const char *bad[] = {"ab\xff", "ab\xc3", "ab\xc0\xaf", "ab\xed\xa0\x80", "ab\xf4\x90\x80\x80",
                              "ab\xe2\x28\xa1"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ASSERT_STATUS(tok_encode(t, bad[i], strlen(bad[i]), NULL, 0, 0, &e, &err), QV_EINVAL);
    ASSERT(strstr(err.msg, "at byte 2") != NULL);
  }
  ASSERT_STATUS(tok_encode(t, "ok", 2, "x\x80", 2, 0, &e, &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "second text") && strstr(err.msg, "byte 1"));
  /* NUL is a char like any other (cleaned away, so "a\0b" is "ab"), not the end of the text */
  static const int32_t want[] = {2, 12, 13, 3};
  ASSERT_OK(tok_encode(t, "a\0b", 3, NULL, 0, 0, &e, NULL));
  ASSERT_EQ(e.len, 4);
  ASSERT(memcmp(e.ids, want, sizeof want) == 0);
  tok_encoding_free(&e);
  tok_free(t);
}

/* Replaces the first `from` in the standard JSON with `to`, then loads it. */
static qv_status load_edited(const char *from, const char *to, qv_error *err) {
  const char *j = make_json(BERT_NORM("true", "null"), 100, TEMPLATE);
  char buf[sizeof json_buf + 256];
  const char *at = strstr(j, from);
  if (!at) return -999;
  snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - j), j, to, at + strlen(from));
  qv_tokenizer *t = NULL;
  qv_status st = tok_from_json(&t, buf, strlen(buf), err);
  tok_free(t);
  return st;
}

TEST(malformed_json) {
  qv_tokenizer *t = (qv_tokenizer *)1;
  qv_error err = {0};
  ASSERT_STATUS(tok_from_json(&t, "{", 1, &err), QV_EFORMAT);
  ASSERT(t == NULL);
  ASSERT_STATUS(tok_from_json(&t, "[]", 2, &err), QV_EFORMAT);
  ASSERT_STATUS(tok_from_json(&t, "{}", 2, &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "model"));
  ASSERT_STATUS(load_edited("\"vocab\":{", "\"vocab\":[],\"x\":{", &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "model.vocab"));
  ASSERT_STATUS(load_edited("\"hello\":5", "\"hello\":-5", &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "hello"));
  ASSERT_STATUS(load_edited("\"unk_token\":\"[UNK]\"", "\"unk_token\":\"<unk>\"", &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "unk_token"));
  ASSERT_STATUS(load_edited("\"lowercase\":true", "\"lowercase\":1", &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "normalizer.lowercase"));
  ASSERT_STATUS(load_edited("\"max_input_chars_per_word\":100", "\"max_input_chars_per_word\":-1", &err),
                QV_EFORMAT);
  ASSERT_STATUS(load_edited("\"ids\":[2]", "\"ids\":[\"x\"]", &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "special_tokens"));
  ASSERT_STATUS(load_edited("\"SpecialToken\":{\"id\":\"[CLS]\"", "\"SpecialToken\":{\"id\":\"[XX]\"", &err), QV_EFORMAT);
  ASSERT_STATUS(load_edited("\"single\":[", "\"single\":{},\"y\":[", &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "post_processor.single"));
  ASSERT_STATUS(load_edited("{\"Sequence\":{\"id\":\"A\"", "{\"Sequence\":{\"id\":\"C\"", &err), QV_EFORMAT);
  ASSERT_STATUS(load_edited("\"content\":\"[PAD]\"", "\"content\":7", &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "added_tokens[0].content"));
  ASSERT_STATUS(load_edited("\"added_tokens\":[", "\"added_tokens\":{},\"z\":[", &err), QV_EFORMAT);
}

TEST(unsupported_types) {
  qv_error err = {0};
  ASSERT_STATUS(load_edited("\"WordPiece\",\"unk", "\"BPE\",\"unk", &err), QV_EUNSUPPORTED);
  ASSERT(strstr(err.msg, "BPE"));
  ASSERT_STATUS(load_edited("\"BertNormalizer\"", "\"NFKC\"", &err), QV_EUNSUPPORTED);
  ASSERT(strstr(err.msg, "NFKC"));
  ASSERT_STATUS(load_edited("\"BertPreTokenizer\"", "\"ByteLevel\"", &err), QV_EUNSUPPORTED);
  ASSERT(strstr(err.msg, "ByteLevel"));
  ASSERT_STATUS(load_edited("\"TemplateProcessing\"", "\"RobertaProcessing\"", &err), QV_EUNSUPPORTED);
  ASSERT(strstr(err.msg, "RobertaProcessing"));
}

TEST(load_missing_file) {
  qv_tokenizer *t;
  qv_error err = {0};
  qv_status st = tok_load(&t, "/nonexistent/tokenizer.json", &err);
  ASSERT(st > 0);
  ASSERT(strstr(err.msg, "/nonexistent/tokenizer.json"));
}

TEST(buffers_are_reused) {
  qv_tokenizer *t = std_tok();
  ASSERT(t);
  tok_encoding e = {0};
  ASSERT_OK(tok_encode(t, "hello world", 11, NULL, 0, 0, &e, NULL));
  int32_t *ids = e.ids;
  size_t cap = e.cap;
  ASSERT_OK(tok_encode(t, "a", 1, NULL, 0, 0, &e, NULL));
  ASSERT(e.ids == ids && e.cap == cap);
  ASSERT_EQ(e.len, 3);
  /* a large input grows, then still encodes right */
  size_t n = 200000;
  char *big = malloc(n * 2);
  ASSERT(big);
  for (size_t i = 0; i < n; i++) big[2 * i] = 'a', big[2 * i + 1] = ' ';
  ASSERT_OK(tok_encode(t, big, n * 2, NULL, 0, 0, &e, NULL));
  ASSERT_EQ(e.len, n + 2);
  ASSERT_OK(tok_encode(t, big, n * 2, NULL, 0, 16, &e, NULL));
  ASSERT_EQ(e.len, 16);
  ASSERT_EQ(e.untruncated_len, n + 2);
  free(big);
  tok_encoding_free(&e);
  tok_free(t);
}

static const char *real_path(char *buf, size_t n) {
  const char *dir = getenv("QUIVER_MODELS");
  const char *home = getenv("HOME");
  if (dir) snprintf(buf, n, "%s/all-MiniLM-L6-v2/tokenizer.json", dir);
  else if (home) snprintf(buf, n, "%s/.cache/quiver/models/all-MiniLM-L6-v2/tokenizer.json", home);
  else return NULL;
  FILE *f = fopen(buf, "rb");
  if (!f) return NULL;
  fclose(f);
  return buf;
}

TEST(real_minilm_tokenizer) {
  char path[1024];
  if (!real_path(path, sizeof path)) SKIP("all-MiniLM-L6-v2/tokenizer.json not found (QUIVER_MODELS)");
  qv_tokenizer *t;
  qv_error err = {0};
  ASSERT_OK(tok_load(&t, path, &err));
  ASSERT_EQ(tok_vocab_size(t), 30522);
  ASSERT_EQ(tok_pad_id(t), 0);
  CHECK(t, "Hello, world!", 101, 7592, 1010, 2088, 999, 102);
  CHECK(t, "unaffable", 101, 14477, 20961, 3468, 102);
  CHECK(t, "İstanbul ΣΑΣ straße", 101, 9960, 1173, 14608, 29733, 2358, 27807, 102);
  CHECK(t, "hello [MASK] x[CLS]y", 101, 7592, 103, 1060, 101, 1061, 102);
  static const int32_t pair[] = {101, 7592, 2088, 102, 1037, 102}, types[] = {0, 0, 0, 0, 1, 1};
  ASSERT(check(t, "hello world", "a", 0, pair, 6, types));
  tok_free(t);
}

TEST_MAIN(T(lookups), T(punctuation_split_and_continuation), T(unknown_words), T(max_chars_per_word),
          T(normalizer_options), T(special_tokens_in_text), T(pair_template_and_type_ids),
          T(truncation_single), T(truncation_pair_longest_first), T(invalid_utf8), T(malformed_json),
          T(unsupported_types), T(load_missing_file), T(buffers_are_reused), T(real_minilm_tokenizer))
