/* The byte-level BPE tokenizer: GPT-2's byte mapping, merges by rank on hand-made
 * vocabularies, the pre-tokenizer's pieces, special tokens, training, saving and loading,
 * and the errors bad files get. (Equality with Hugging Face tokenizers on GPT-2's real
 * vocabulary is tests/integration/test_gpt_tokenizer.py.) */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gpt/bpe.h"
#include "test.h"

/* A tokenizer.json around the given vocab and merges (JSON text of each). */
static char *doc(const char *vocab, const char *merges, const char *added) {
  static const char fmt[] =
      "{\"version\":\"1.0\",\"added_tokens\":%s,\"normalizer\":null,"
      "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
      "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"vocab\":%s,\"merges\":%s}}";
  size_t n = sizeof fmt + strlen(vocab) + strlen(merges) + strlen(added);
  char *s = malloc(n);
  snprintf(s, n, fmt, added, vocab, merges);
  return s;
}

static gpt_bpe *load_doc(const char *vocab, const char *merges, const char *added) {
  char *s = doc(vocab, merges, added);
  gpt_bpe *b = NULL;
  qv_error err;
  qv_status st = gpt_bpe_from_json(&b, s, strlen(s), &err);
  if (st) fprintf(stderr, "  load: %s\n", err.msg);
  free(s);
  return b;
}

/* Encodes text and compares with want (n ids). */
static int enc_is(const gpt_bpe *b, const char *text, const int32_t *want, size_t n) {
  int32_t *ids;
  size_t got;
  if (gpt_bpe_encode(b, text, strlen(text), &ids, &got)) return 0;
  int ok = got == n && (!n || !memcmp(ids, want, n * sizeof *ids));
  if (!ok) {
    fprintf(stderr, "  \"%s\" ->", text);
    for (size_t i = 0; i < got; i++) fprintf(stderr, " %d", (int)ids[i]);
    fprintf(stderr, "\n");
  }
  free(ids);
  return ok;
}
#define ENC_IS(b, text, ...)                                               \
  do {                                                                     \
    static const int32_t want_[] = {__VA_ARGS__};                          \
    ASSERT(enc_is(b, text, want_, sizeof want_ / sizeof want_[0]));        \
  } while (0)

static gpt_bpe *bytes_only(void) {
  gpt_bpe *b = NULL;
  qv_error err;
  if (gpt_bpe_train(&b, NULL, NULL, 0, 257, NULL, NULL, &err)) return NULL;
  return b;
}

TEST(byte_mapping_is_gpt2s) {
  gpt_bpe *b = bytes_only();
  ASSERT(b);
  ASSERT_EQ(gpt_bpe_vocab_size(b), 257);
  ASSERT_EQ(gpt_bpe_eot(b), 256);
  /* GPT-2 numbers "!" 0, space ("Ġ") 220, byte 0 ("Ā") 188, byte 0xFF ("ÿ") 187 */
  ENC_IS(b, "!", 0);
  ENC_IS(b, " ", 220);
  ENC_IS(b, "\xff", 187);
  int32_t *ids;
  size_t n;
  ASSERT_OK(gpt_bpe_encode(b, "\0", 1, &ids, &n));
  ASSERT_EQ(n, 1);
  ASSERT_EQ(ids[0], 188);
  free(ids);
  size_t len;
  ASSERT(!memcmp(gpt_bpe_token_bytes(b, 220, &len), " ", 1) && len == 1);
  ASSERT(gpt_bpe_token_bytes(b, 257, &len) == NULL && len == 0);
  ASSERT(gpt_bpe_token_bytes(b, -1, NULL) == NULL);
  char *json = gpt_bpe_to_json(b);
  ASSERT(json);
  ASSERT(strstr(json, "\"\xc4\xa0\": 220")); /* "Ġ": 220 */
  ASSERT(strstr(json, "\"\xc4\x80\": 188")); /* "Ā": 188 */
  ASSERT(strstr(json, "\"<|endoftext|>\": 256"));
  free(json);
  /* every byte decodes back, even when the result is not UTF-8 */
  char all[256];
  for (int i = 0; i < 256; i++) all[i] = (char)i;
  ASSERT_OK(gpt_bpe_encode(b, all, 256, &ids, &n));
  ASSERT_EQ(n, 256);
  char *back = gpt_bpe_decode(b, ids, n, &len);
  ASSERT(back && len == 256 && !memcmp(back, all, 256));
  free(back);
  free(ids);
  gpt_bpe_free(b);
}

/* a=0 b=1 c=2 "Ġ"=3 ab=4 bc=5 abc=6 Ġa=7 aa=8 */
static const char VOCAB[] =
    "{\"a\":0,\"b\":1,\"c\":2,\"\xc4\xa0\":3,\"ab\":4,\"bc\":5,\"abc\":6,"
    "\"\xc4\xa0" "a\":7,\"aa\":8,\"'\":9,\"s\":10,\"'s\":11}";

TEST(merges_apply_by_rank) {
  gpt_bpe *b = load_doc(VOCAB, "[\"b c\", \"a b\", \"a bc\", \"\xc4\xa0 a\", \"a a\", \"' s\"]", "[]");
  ASSERT(b);
  ENC_IS(b, "abc", 6);   /* b c (rank 0) first, then a bc; "a b" never gets its turn */
  ENC_IS(b, "ab", 4);
  ENC_IS(b, "cab", 2, 4);
  ENC_IS(b, "aaa", 8, 0); /* equal ranks: leftmost first */
  ENC_IS(b, "aaaa", 8, 8);
  int32_t *none;
  size_t nn;
  ASSERT_OK(gpt_bpe_encode(b, "", 0, &none, &nn));
  ASSERT(nn == 0 && none == NULL);
  /* bytes without a token are dropped, as HF's BPE does without unk_token */
  ENC_IS(b, "axb", 4); /* and the bytes around them become neighbours */
  gpt_bpe_free(b);
  /* the array form of merges, as tokenizers >= 0.20 writes it, loads the same */
  b = load_doc(VOCAB, "[[\"b\",\"c\"],[\"a\",\"b\"],[\"a\",\"bc\"]]", "[]");
  ASSERT(b);
  ENC_IS(b, "abc", 6);
  gpt_bpe_free(b);
}

TEST(pre_tokenizer_pieces) {
  gpt_bpe *b = load_doc(VOCAB, "[\"\xc4\xa0 a\", \"a a\", \"' s\"]", "[]");
  ASSERT(b);
  ENC_IS(b, "a a", 0, 7);        /* " a" is one piece */
  ENC_IS(b, "a  a", 0, 3, 7);    /* a space run gives its last space to the word */
  ENC_IS(b, "a   ", 0, 3, 3, 3); /* trailing spaces stay one piece, no merge applies */
  ENC_IS(b, "a's", 0, 11);       /* contraction */
  ENC_IS(b, "a 's", 0, 3, 9, 10); /* " '" is a piece of its own, then "s" */
  ENC_IS(b, "aa", 8);
  ENC_IS(b, "a\xc3\xa9" "a", 8); /* "aéa" is one piece (é is a letter); é has no token, so "aa" */
  gpt_bpe_free(b);
  /* with the byte tokens, pieces show up as where merges may not cross */
  gpt_bpe *t = NULL;
  const char *texts[] = {"aa1 aa1 a1"};
  size_t lens[] = {strlen(texts[0])};
  qv_error err;
  ASSERT_OK(gpt_bpe_train(&t, texts, lens, 1, 262, NULL, NULL, &err));
  /* letters and digits never merge: "a1" is two pieces */
  int32_t *ids;
  size_t n;
  ASSERT_OK(gpt_bpe_encode(t, "a1", 2, &ids, &n));
  ASSERT_EQ(n, 2);
  free(ids);
  gpt_bpe_free(t);
}

TEST(special_tokens_split_first) {
  gpt_bpe *b = load_doc(VOCAB, "[\"a b\"]",
                        "[{\"id\":12,\"content\":\"<|endoftext|>\",\"single_word\":false,\"lstrip\":false,"
                        "\"rstrip\":false,\"normalized\":false,\"special\":true}]");
  ASSERT(b);
  ASSERT_EQ(gpt_bpe_eot(b), 12);
  ASSERT_EQ(gpt_bpe_vocab_size(b), 13);
  ENC_IS(b, "<|endoftext|>", 12);
  ENC_IS(b, "a<|endoftext|>b", 0, 12, 1);
  ENC_IS(b, "ab<|endoftext|><|endoftext|>ab", 4, 12, 12, 4);
  size_t len;
  const char *t = gpt_bpe_token_bytes(b, 12, &len);
  ASSERT(t && len == 13 && !memcmp(t, "<|endoftext|>", 13));
  int32_t ids[] = {4, 12, 0, 99, -5};
  char *s = gpt_bpe_decode(b, ids, 5, &len);
  ASSERT_STR_EQ(s, "ab<|endoftext|>a"); /* unknown ids decode to nothing */
  ASSERT_EQ(len, 16);
  free(s);
  gpt_bpe_free(b);
  /* without added tokens the text is ordinary: no end-of-text */
  b = load_doc(VOCAB, "[]", "[]");
  ASSERT_EQ(gpt_bpe_eot(b), -1);
  gpt_bpe_free(b);
}

static size_t last_done, last_total, calls;
static void progress(void *ctx, size_t done, size_t total) {
  (void)ctx;
  last_done = done;
  last_total = total;
  calls++;
}

TEST(training_merges_the_most_frequent_pair) {
  const char *texts[] = {"ab ab", " ab cd", "<|endoftext|>zz"};
  size_t lens[] = {5, 6, 15};
  gpt_bpe *b = NULL;
  qv_error err;
  calls = 0;
  ASSERT_OK(gpt_bpe_train(&b, texts, lens, 3, 260, progress, NULL, &err));
  /* pairs: a b x3, Ġ a x2, then Ġ ab x2; Ġ c, c d and z z tie at 1: smaller left id
   * wins, and "c" (66) < "z" (89) < "Ġ" (220) */
  size_t len;
  ASSERT(!memcmp(gpt_bpe_token_bytes(b, 256, &len), "ab", 2) && len == 2);
  ASSERT(!memcmp(gpt_bpe_token_bytes(b, 257, &len), " ab", 3) && len == 3);
  ASSERT(!memcmp(gpt_bpe_token_bytes(b, 258, &len), "cd", 2) && len == 2);
  ASSERT_EQ(gpt_bpe_eot(b), 259);
  ASSERT_EQ(gpt_bpe_vocab_size(b), 260);
  ASSERT(calls >= 1 && last_done == 3 && last_total == 3);
  ENC_IS(b, "ab ab cd<|endoftext|>", 256, 257, 220, 258, 259);
  /* the same corpus gives the same tokenizer */
  gpt_bpe *c = NULL;
  ASSERT_OK(gpt_bpe_train(&c, texts, lens, 3, 260, NULL, NULL, &err));
  char *j1 = gpt_bpe_to_json(b), *j2 = gpt_bpe_to_json(c);
  ASSERT_STR_EQ(j1, j2);
  free(j1);
  free(j2);
  gpt_bpe_free(c);
  gpt_bpe_free(b);
  /* a corpus with fewer pairs than asked stops early */
  const char *tiny[] = {"ab"};
  size_t tl[] = {2};
  ASSERT_OK(gpt_bpe_train(&b, tiny, tl, 1, 1000, NULL, NULL, &err));
  ASSERT_EQ(gpt_bpe_vocab_size(b), 258);
  ASSERT_EQ(gpt_bpe_eot(b), 257);
  gpt_bpe_free(b);
  ASSERT_STATUS(gpt_bpe_train(&b, tiny, tl, 1, 256, NULL, NULL, &err), QV_ERANGE);
  ASSERT(b == NULL);
}

TEST(save_and_load_round_trip) {
  const char *texts[] = {"The quick brown fox jumps over the lazy dog. It's 2026; don't panic!\n\n  indented\tcode()\n",
                         "caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 "
                         "r\xc3\xa9sum\xc3\xa9s the the the"};
  size_t lens[] = {strlen(texts[0]), strlen(texts[1])};
  gpt_bpe *b = NULL, *c = NULL;
  qv_error err;
  ASSERT_OK(gpt_bpe_train(&b, texts, lens, 2, 300, NULL, NULL, &err));
  char path[] = "/tmp/qv_test_bpe_XXXXXX";
  ASSERT(mkdtemp(path));
  char file[300];
  snprintf(file, sizeof file, "%s/tokenizer.json", path);
  ASSERT_OK(gpt_bpe_save(b, file, &err));
  ASSERT_OK(gpt_bpe_load(&c, file, &err));
  gpt_bpe *d = NULL;
  ASSERT_OK(gpt_bpe_load(&d, path, &err)); /* a folder holding tokenizer.json */
  char *j1 = gpt_bpe_to_json(b), *j2 = gpt_bpe_to_json(c);
  ASSERT_STR_EQ(j1, j2);
  free(j1);
  free(j2);
  ASSERT_EQ(gpt_bpe_vocab_size(c), 300);
  ASSERT_EQ(gpt_bpe_eot(c), 299);
  for (int i = 0; i < 2; i++) {
    int32_t *x, *y;
    size_t nx, ny, len;
    ASSERT_OK(gpt_bpe_encode(b, texts[i], lens[i], &x, &nx));
    ASSERT_OK(gpt_bpe_encode(d, texts[i], lens[i], &y, &ny));
    ASSERT(nx == ny && !memcmp(x, y, nx * sizeof *x));
    ASSERT(nx < lens[i]); /* merges were learned and used */
    char *s = gpt_bpe_decode(c, x, nx, &len);
    ASSERT(len == lens[i] && !memcmp(s, texts[i], len));
    free(s);
    free(x);
    free(y);
  }
  unlink(file);
  rmdir(path);
  gpt_bpe_free(b);
  gpt_bpe_free(c);
  gpt_bpe_free(d);
}

static void write_text(const char *path, const char *s) {
  FILE *f = fopen(path, "w");
  fputs(s, f);
  fclose(f);
}

TEST(gpt2_folder_vocab_and_merges) {
  char dir[] = "/tmp/qv_test_bpe_XXXXXX";
  ASSERT(mkdtemp(dir));
  char v[300], m[300];
  snprintf(v, sizeof v, "%s/vocab.json", dir);
  snprintf(m, sizeof m, "%s/merges.txt", dir);
  write_text(v, "{\"a\":0,\"b\":1,\"ab\":2,\"<|endoftext|>\":3}");
  write_text(m, "#version: 0.2\na b\n");
  gpt_bpe *b = NULL;
  qv_error err;
  ASSERT_OK(gpt_bpe_load(&b, dir, &err));
  ASSERT_EQ(gpt_bpe_eot(b), 3);
  ENC_IS(b, "abab<|endoftext|>a", 2, 2, 3, 0);
  gpt_bpe_free(b);
  write_text(m, "#version: 0.2\na x\n");
  ASSERT_STATUS(gpt_bpe_load(&b, dir, &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "merges.txt: line 2"));
  write_text(m, "a b c\n");
  ASSERT_STATUS(gpt_bpe_load(&b, dir, &err), QV_EFORMAT);
  unlink(m);
  ASSERT_STATUS(gpt_bpe_load(&b, dir, &err), ENOENT);
  unlink(v);
  rmdir(dir);
  ASSERT_STATUS(gpt_bpe_load(&b, dir, &err), ENOENT);
}

static qv_status from(const char *s, qv_error *err) {
  gpt_bpe *b = NULL;
  qv_status st = gpt_bpe_from_json(&b, s, strlen(s), err);
  gpt_bpe_free(b);
  return st;
}

TEST(bad_json_gets_a_clear_error) {
  qv_error err;
  ASSERT_STATUS(from("", &err), QV_EJSON);
  ASSERT_STATUS(from("{\"model\":", &err), QV_EJSON);
  ASSERT_STATUS(from("[]", &err), QV_EFORMAT);
  ASSERT_STATUS(from("{}", &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "model"));
  char *s = doc("{\"a\":0}", "[]", "[]");
  ASSERT_OK(from(s, &err));
  free(s);
  struct {
    const char *vocab, *merges, *added;
    qv_status want;
    const char *says;
  } cases[] = {
      {"[]", "[]", "[]", QV_EFORMAT, "model.vocab"},
      {"{\"a\":\"x\"}", "[]", "[]", QV_EFORMAT, "not an integer"},
      {"{\"a\":-1}", "[]", "[]", QV_EFORMAT, "out of range"},
      {"{\"a\":0,\"b\":0}", "[]", "[]", QV_EFORMAT, "used twice"},
      {"{\"a\":0,\"b\":1}", "[\"a b\"]", "[]", QV_EFORMAT, "merged token"},
      {"{\"a\":0,\"b\":1,\"ab\":2}", "[\"a c\"]", "[]", QV_EFORMAT, "not in the vocabulary"},
      {"{\"a\":0,\"b\":1,\"ab\":2}", "[\"ab\"]", "[]", QV_EFORMAT, "model.merges[0]"},
      {"{\"a\":0,\"b\":1,\"ab\":2}", "[7]", "[]", QV_EFORMAT, "model.merges[0]"},
      {"{\"a\":0,\"b\":1,\"ab\":2}", "{}", "[]", QV_EFORMAT, "model.merges"},
      {"{\"a\":0}", "[]", "[{\"id\":0,\"content\":\"x\"}]", QV_EFORMAT, "another token"},
      {"{\"a\":0}", "[]", "[{\"content\":\"x\"}]", QV_EFORMAT, "added_tokens[0]"},
      {"{\"a\":0}", "[]", "[{\"id\":5,\"content\":\"\"}]", QV_EFORMAT, "empty"},
      {"{\"a\":0}", "[]", "{}", QV_EFORMAT, "added_tokens"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    s = doc(cases[i].vocab, cases[i].merges, cases[i].added);
    err.msg[0] = 0;
    qv_status st = from(s, &err);
    free(s);
    if (st != cases[i].want || !strstr(err.msg, cases[i].says))
      TEST_FAIL_("case %zu: status %d, \"%s\" (want %d and \"%s\")", i, st, err.msg, cases[i].want, cases[i].says);
  }
  ASSERT_STATUS(
      from("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}},\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}", &err),
      QV_EUNSUPPORTED);
  ASSERT_STATUS(from("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},"
                     "\"pre_tokenizer\":{\"type\":\"Whitespace\"}}",
                     &err),
                QV_EUNSUPPORTED);
  ASSERT_STATUS(from("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},"
                     "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true}}",
                     &err),
                QV_EUNSUPPORTED);
  ASSERT(strstr(err.msg, "add_prefix_space"));
  s = doc("{\"a\":0}", "[]", "[{\"id\":1,\"content\":\"<s>\",\"lstrip\":true}]");
  ASSERT_STATUS(from(s, &err), QV_EUNSUPPORTED);
  ASSERT(strstr(err.msg, "added_tokens[0].lstrip"));
  free(s);
  gpt_bpe *b = (gpt_bpe *)1;
  ASSERT_STATUS(gpt_bpe_load(&b, "/nonexistent/tokenizer.json", &err), ENOENT);
  ASSERT(b == NULL);
}

TEST(arbitrary_bytes_round_trip) {
  const char *texts[] = {"hello hello world world world \xff\xfe\x80 abc\xe2\x82"};
  size_t lens[] = {strlen(texts[0])};
  gpt_bpe *b = NULL;
  qv_error err;
  ASSERT_OK(gpt_bpe_train(&b, texts, lens, 1, 280, NULL, NULL, &err));
  uint64_t x = 88172645463325252ULL;
  for (int round = 0; round < 200; round++) {
    char buf[64];
    size_t n = (size_t)(round % 64);
    for (size_t i = 0; i < n; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      buf[i] = (char)(round < 100 ? "hel o\n\xc3\xa9\xffw1'"[x % 12] : (int)(x & 0xff));
    }
    int32_t *ids;
    size_t m, len;
    ASSERT_OK(gpt_bpe_encode(b, buf, n, &ids, &m));
    ASSERT(m <= n && (m > 0) == (n > 0));
    char *s = gpt_bpe_decode(b, ids, m, &len);
    ASSERT(len == n && !memcmp(s, buf, n));
    free(s);
    free(ids);
  }
  gpt_bpe_free(b);
}

TEST_MAIN(T(byte_mapping_is_gpt2s), T(merges_apply_by_rank), T(pre_tokenizer_pieces), T(special_tokens_split_first),
          T(training_merges_the_most_frequent_pair), T(save_and_load_round_trip), T(gpt2_folder_vocab_and_merges),
          T(bad_json_gets_a_clear_error), T(arbitrary_bytes_round_trip))
