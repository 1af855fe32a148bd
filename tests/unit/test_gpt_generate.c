/* Generation: the sampler (seeded determinism, temperature 0, top-k, top-p, repetition
 * penalty, the distribution it draws from), inference with the KV cache against train's
 * full forward (gpt_forward) on a tiny random model, and the generation loop's streaming
 * (stop strings across tokens, whole UTF-8 characters). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpt/generate.h"
#include "gpt/gpt.h"
#include "gpt/infer.h"
#include "gpt/sample.h"
#include "test.h"

#define V 50

static void random_logits(float *l, size_t n, unsigned seed) {
  srand(seed);
  for (size_t i = 0; i < n; i++) l[i] = (float)(rand() % 2000) / 250.0f - 4.0f;
}

static int32_t argmax(const float *l, size_t n) {
  size_t b = 0;
  for (size_t i = 1; i < n; i++)
    if (l[i] > l[b]) b = i;
  return (int32_t)b;
}

TEST(params_out_of_range_are_refused) {
  qv_error err = {0};
  gpt_sample_params p = gpt_sample_defaults();
  p.temperature = -0.5f;
  ASSERT_STATUS(gpt_sample_check(&p, &err), QV_ERANGE);
  ASSERT(strstr(err.msg, "temperature"));
  p = gpt_sample_defaults();
  p.top_p = 0;
  ASSERT_STATUS(gpt_sample_check(&p, &err), QV_ERANGE);
  p.top_p = 1.01f;
  ASSERT_STATUS(gpt_sample_check(&p, &err), QV_ERANGE);
  p = gpt_sample_defaults();
  p.top_k = -1;
  ASSERT_STATUS(gpt_sample_check(&p, &err), QV_ERANGE);
  p = gpt_sample_defaults();
  p.repetition_penalty = 0;
  ASSERT_STATUS(gpt_sample_check(&p, &err), QV_ERANGE);
  p.repetition_penalty = NAN;
  ASSERT_STATUS(gpt_sample_check(&p, &err), QV_ERANGE);
  gpt_sampler *s = NULL;
  ASSERT_STATUS(gpt_sampler_create(&s, V, &p, &err), QV_ERANGE);
  ASSERT(s == NULL);
}

TEST(same_seed_same_tokens_other_seed_other_tokens) {
  float l[V];
  random_logits(l, V, 1);
  gpt_sample_params p = gpt_sample_defaults();
  int32_t a[64], b[64], c[64];
  gpt_sampler *s = NULL;
  for (int run = 0; run < 3; run++) {
    p.seed = run == 2 ? 8 : 7;
    ASSERT_OK(gpt_sampler_create(&s, V, &p, NULL));
    int32_t *out = run == 0 ? a : run == 1 ? b : c;
    for (int i = 0; i < 64; i++) out[i] = gpt_sampler_next(s, l, NULL, 0);
    gpt_sampler_free(s);
  }
  ASSERT(memcmp(a, b, sizeof a) == 0);
  ASSERT(memcmp(a, c, sizeof a) != 0);
}

TEST(greedy_when_temperature_0_or_top_k_1) {
  float l[V];
  random_logits(l, V, 2);
  gpt_sample_params p = gpt_sample_defaults();
  p.temperature = 0;
  gpt_sampler *s = NULL;
  ASSERT_OK(gpt_sampler_create(&s, V, &p, NULL));
  ASSERT_EQ(gpt_sampler_next(s, l, NULL, 0), argmax(l, V));
  p.temperature = 5;
  p.top_k = 1;
  ASSERT_OK(gpt_sampler_set(s, &p, NULL));
  for (int i = 0; i < 20; i++) ASSERT_EQ(gpt_sampler_next(s, l, NULL, 0), argmax(l, V));
  gpt_sampler_free(s);
}

TEST(top_k_and_top_p_keep_only_the_likeliest) {
  float l[V];
  for (int i = 0; i < V; i++) l[i] = (float)-i; /* token 0 likeliest, then 1, ... */
  gpt_sample_params p = gpt_sample_defaults();
  p.top_k = 3;
  gpt_sampler *s = NULL;
  ASSERT_OK(gpt_sampler_create(&s, V, &p, NULL));
  int seen[V] = {0};
  for (int i = 0; i < 2000; i++) seen[gpt_sampler_next(s, l, NULL, 0)]++;
  ASSERT(seen[0] > 0 && seen[1] > 0 && seen[2] > 0);
  for (int i = 3; i < V; i++) ASSERT_EQ(seen[i], 0);
  /* softmax(0, -1, -2, ...) puts 0.632 on token 0 and 0.865 on {0, 1}: top-p 0.8 keeps two */
  p.top_k = 0;
  p.top_p = 0.8f;
  ASSERT_OK(gpt_sampler_set(s, &p, NULL));
  memset(seen, 0, sizeof seen);
  for (int i = 0; i < 2000; i++) seen[gpt_sampler_next(s, l, NULL, 0)]++;
  ASSERT(seen[0] > 0 && seen[1] > 0);
  for (int i = 2; i < V; i++) ASSERT_EQ(seen[i], 0);
  gpt_sampler_free(s);
}

TEST(draws_follow_the_softmax) {
  /* probabilities 0.5, 0.3, 0.2 as logits; 20000 draws land within 0.015 of each */
  float l[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
  gpt_sample_params p = gpt_sample_defaults();
  p.seed = 3;
  gpt_sampler *s = NULL;
  ASSERT_OK(gpt_sampler_create(&s, 3, &p, NULL));
  int n[3] = {0};
  for (int i = 0; i < 20000; i++) n[gpt_sampler_next(s, l, NULL, 0)]++;
  ASSERT_NEAR(n[0] / 20000.0, 0.5, 0.015);
  ASSERT_NEAR(n[1] / 20000.0, 0.3, 0.015);
  ASSERT_NEAR(n[2] / 20000.0, 0.2, 0.015);
  /* temperature 2 flattens: p ~ sqrt(p) normalised = 0.412, 0.319, 0.269 */
  p.temperature = 2;
  ASSERT_OK(gpt_sampler_set(s, &p, NULL));
  memset(n, 0, sizeof n);
  for (int i = 0; i < 20000; i++) n[gpt_sampler_next(s, l, NULL, 0)]++;
  ASSERT_NEAR(n[0] / 20000.0, 0.412, 0.015);
  ASSERT_NEAR(n[2] / 20000.0, 0.269, 0.015);
  gpt_sampler_free(s);
}

TEST(repetition_penalty_divides_positive_and_multiplies_negative_logits) {
  float l[4] = {2.0f, 1.9f, -1.0f, -1.05f};
  gpt_sample_params p = gpt_sample_defaults();
  p.temperature = 0;
  p.repetition_penalty = 1.2f;
  gpt_sampler *s = NULL;
  ASSERT_OK(gpt_sampler_create(&s, 4, &p, NULL));
  int32_t hist[3] = {0, 0, 2};
  /* 2.0 / 1.2 < 1.9: token 1 wins once 0 was seen */
  ASSERT_EQ(gpt_sampler_next(s, l, hist, 1), 1);
  ASSERT_EQ(gpt_sampler_next(s, l, NULL, 0), 0);
  /* among the negative ones: -1 * 1.2 < -1.05 */
  float neg[2] = {-1.0f, -1.05f};
  gpt_sampler *s2 = NULL;
  ASSERT_OK(gpt_sampler_create(&s2, 2, &p, NULL));
  int32_t h0 = 0;
  ASSERT_EQ(gpt_sampler_next(s2, neg, &h0, 1), 1);
  /* the logits passed in are left alone, and repeated history entries count once */
  ASSERT_EQ(l[0], 2.0f);
  ASSERT_EQ(gpt_sampler_next(s, l, hist, 3), 1);
  gpt_sampler_free(s);
  gpt_sampler_free(s2);
}

TEST(top_probs_sorted_and_softmaxed) {
  float l[V];
  random_logits(l, V, 4);
  l[17] = l[argmax(l, V)]; /* a tie: the lower id comes first */
  int32_t ids[5];
  float pr[5];
  gpt_top_probs(l, V, 5, ids, pr);
  double z = 0, mx = l[argmax(l, V)];
  for (int i = 0; i < V; i++) z += exp(l[i] - mx);
  for (int i = 0; i < 5; i++) {
    ASSERT_NEAR(pr[i], exp(l[ids[i]] - mx) / z, 1e-6);
    if (i) ASSERT(l[ids[i - 1]] > l[ids[i]] || (l[ids[i - 1]] == l[ids[i]] && ids[i - 1] < ids[i]));
  }
  ASSERT_EQ(ids[0], argmax(l, V) < 17 ? argmax(l, V) : 17);
}

/* ---- inference ------------------------------------------------------------------------- */

static gpt_model *tiny_model(void) {
  gpt_config c = {.n_layer = 2, .n_head = 2, .n_embd = 16, .n_ctx = 80, .vocab_size = V, .ln_eps = 1e-5f};
  gpt_model *m = NULL;
  if (gpt_create(&m, &c, NULL)) return NULL;
  gpt_init(m, 42);
  /* GPT-2's init leaves logits nearly flat; larger weights make the test discriminating */
  for (size_t i = 0; i < m->nparams; i++) m->params[i] *= 8.0f;
  return m;
}

TEST(cache_and_blocks_match_the_full_forward) {
  gpt_model *m = tiny_model();
  ASSERT(m);
  const int n = 75; /* more than one prefill block of 64 */
  int32_t ids[75];
  for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 7 + 3) % V);
  ASSERT_OK(gpt_train_alloc(m, 1, n, NULL));
  ASSERT_OK(gpt_forward(m, ids, NULL, 1, n));
  const float *want = gpt_logits(m); /* (1, n, V) */

  gpt_infer *inf = NULL;
  ASSERT_OK(gpt_infer_create_on(&inf, m, NULL, NULL, NULL, 1, NULL));
  float *all = malloc(sizeof(float) * n * V);
  ASSERT(all);
  ASSERT_OK(gpt_infer_feed(inf, ids, n, all, NULL));
  ASSERT_EQ(gpt_infer_pos(inf), n);
  /* The two paths add in different orders (training's blocked GEMM, inference's cached
   * rows), so they agree to float32 rounding relative to the logits' size, not to a fixed
   * absolute amount: here logits reach ~15 and the paths differ by up to ~1e-4 (7e-6 of
   * the largest), while a wrong position, mask or cache row moves logits by O(1). */
  double scale = 1, worst = 0;
  for (int i = 0; i < n * V; i++) scale = fmax(scale, fabs(want[i]));
  const double tol = 2e-5 * scale;
  for (int i = 0; i < n * V; i++) worst = fmax(worst, fabs(all[i] - want[i]));
  ASSERT(worst < tol);
  /* one token at a time, after a reset: the same logits at every position */
  gpt_infer_reset(inf);
  worst = 0;
  for (int t = 0; t < n; t++) {
    ASSERT_OK(gpt_infer_feed(inf, ids + t, 1, NULL, NULL));
    const float *l = gpt_infer_logits(inf);
    for (int v = 0; v < V; v++) worst = fmax(worst, fabs(l[v] - want[(size_t)t * V + v]));
  }
  ASSERT(worst < tol);
  free(all);
  gpt_infer_free(inf);
  gpt_free(m);
}

TEST(feed_refuses_overflow_bad_ids_and_nothing) {
  gpt_model *m = tiny_model();
  ASSERT(m);
  gpt_infer *inf = NULL;
  qv_error err = {0};
  ASSERT_OK(gpt_infer_create_on(&inf, m, NULL, NULL, NULL, 1, NULL));
  int32_t ids[81] = {0};
  ASSERT_STATUS(gpt_infer_feed(inf, ids, 81, NULL, &err), QV_ETOOLONG);
  ASSERT_EQ(gpt_infer_pos(inf), 0);
  ids[3] = V;
  ASSERT_STATUS(gpt_infer_feed(inf, ids, 5, NULL, &err), QV_ERANGE);
  ids[3] = -1;
  ASSERT_STATUS(gpt_infer_feed(inf, ids, 5, NULL, &err), QV_ERANGE);
  ASSERT_STATUS(gpt_infer_feed(inf, ids, 0, NULL, &err), QV_EINVAL);
  ids[3] = 0;
  ASSERT_OK(gpt_infer_feed(inf, ids, 80, NULL, &err));
  ASSERT_STATUS(gpt_infer_feed(inf, ids, 1, NULL, &err), QV_ETOOLONG);
  gpt_infer_free(inf);
  gpt_free(m);
}

/* ---- the generation loop ---------------------------------------------------------------- */

/* Tokens spell "€" (e2 82 ac) in two pieces, plus plain letters. */
static const char *PIECES[5] = {"\xe2\x82", "\xac", "ab", "c", "d"};

static const char *piece(void *tok, int32_t id, size_t *len) {
  (void)tok;
  const char *p = PIECES[id % 5];
  *len = strlen(p);
  return p;
}

typedef struct sink {
  char buf[4096];
  size_t len;
  size_t cuts[512];
  size_t ncuts;
} sink;

static int collect(void *ctx, const char *text, size_t len) {
  sink *s = ctx;
  memcpy(s->buf + s->len, text, len);
  s->len += len;
  s->cuts[s->ncuts++] = s->len;
  return 0;
}

static size_t spell(const int32_t *ids, size_t n, char *out) {
  size_t len = 0, l;
  for (size_t i = 0; i < n; i++) {
    const char *p = piece(NULL, ids[i], &l);
    memcpy(out + len, p, l);
    len += l;
  }
  return len;
}

TEST(streaming_keeps_characters_whole_and_stops_on_strings) {
  gpt_model *m = tiny_model();
  ASSERT(m);
  gpt_infer *inf = NULL;
  gpt_gen *g = NULL;
  gpt_sampler *s = NULL;
  gpt_sample_params p = gpt_sample_defaults();
  p.seed = 11;
  ASSERT_OK(gpt_infer_create_on(&inf, m, NULL, NULL, NULL, 1, NULL));
  ASSERT_OK(gpt_gen_create(&g, inf, NULL));
  ASSERT_OK(gpt_sampler_create(&s, V, &p, NULL));
  int32_t prompt[3] = {1, 2, 3};
  sink out = {0};
  gpt_gen_opts o = {.max_tokens = 120, .eot = -1, .token_bytes = piece, .on_text = collect, .ctx = &out};
  gpt_gen_result r;
  /* 120 tokens from 3 of context 80: the conversation slides on the way */
  ASSERT_OK(gpt_gen_run(g, s, prompt, 3, &o, &r, NULL));
  ASSERT_EQ(r.n_tokens, 120);
  ASSERT_EQ(r.reason, GPT_STOP_MAX_TOKENS);
  ASSERT(gpt_gen_len(g) <= 80);
  char full[4096];
  size_t flen = spell(gpt_gen_tokens(g), r.n_tokens, full);
  ASSERT_EQ(out.len, flen);
  ASSERT(memcmp(out.buf, full, flen) == 0);
  /* no chunk ends between e2 82 and ac when ac followed */
  for (size_t i = 0; i + 1 < out.ncuts; i++) {
    size_t c = out.cuts[i];
    ASSERT(!(c >= 2 && c < flen && (unsigned char)full[c] == 0xac && (unsigned char)full[c - 2] == 0xe2));
    ASSERT(!(c >= 1 && c + 1 < flen && (unsigned char)full[c - 1] == 0xe2 &&
             (unsigned char)full[c + 1] == 0xac));
  }

  /* the same run with a stop string taken from the middle of its text, spanning tokens */
  const char *at = NULL;
  for (size_t i = 10; i + 3 < flen && !at; i++)
    if (full[i] == 'b' && (full[i + 1] == 'c' || full[i + 1] == 'd' || full[i + 1] == 'a')) at = full + i;
  ASSERT(at);
  char stop[3] = {at[0], at[1], 0};
  size_t first = 0;
  while (memcmp(full + first, stop, 2)) first++;
  const char *stops[1] = {stop};
  p.seed = 11;
  gpt_sampler_free(s);
  ASSERT_OK(gpt_sampler_create(&s, V, &p, NULL));
  gpt_gen_reset(g);
  memset(&out, 0, sizeof out);
  o.stops = stops;
  o.n_stops = 1;
  ASSERT_OK(gpt_gen_run(g, s, prompt, 3, &o, &r, NULL));
  ASSERT_EQ(r.reason, GPT_STOP_STRING);
  ASSERT_EQ(out.len, first);
  ASSERT(memcmp(out.buf, full, first) == 0);

  /* the prompt must leave room in the context */
  int32_t longp[80] = {0};
  ASSERT_STATUS(gpt_gen_run(g, s, longp, 80, &o, &r, NULL), QV_ETOOLONG);
  gpt_sampler_free(s);
  gpt_gen_free(g);
  gpt_infer_free(inf);
  gpt_free(m);
}

TEST_MAIN(T(params_out_of_range_are_refused), T(same_seed_same_tokens_other_seed_other_tokens),
          T(greedy_when_temperature_0_or_top_k_1), T(top_k_and_top_p_keep_only_the_likeliest),
          T(draws_follow_the_softmax), T(repetition_penalty_divides_positive_and_multiplies_negative_logits),
          T(top_probs_sorted_and_softmaxed), T(cache_and_blocks_match_the_full_forward),
          T(feed_refuses_overflow_bad_ids_and_nothing), T(streaming_keeps_characters_whole_and_stops_on_strings))
