/* Next-token sampling (see sample.h).
 *
 * Order of operations, as Hugging Face's generate applies its logits processors:
 * repetition penalty on the raw logits, then temperature, then top-k, then top-p over the
 * softmax of what is left, then one draw. Candidates are sorted by (logit desc, id asc), so
 * the result depends only on the logits, the history and the RNG state: the same seed
 * gives the same tokens. */
#include "gpt/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

struct gpt_sampler {
  gpt_sample_params p; /* read-only: gpt_sampler_set */
  size_t vocab;
  uint64_t rng;        /* xorshift64* state, never 0 */
  float *work;         /* (vocab) penalised, tempered logits */
  int32_t *idx;        /* (vocab) candidate ids, sorted */
  uint8_t *seen;       /* (vocab) marks for the repetition penalty, all 0 between calls */
};

gpt_sample_params gpt_sample_defaults(void) {
  gpt_sample_params p = {1.0f, 0, 1.0f, 1.0f, 0};
  return p;
}

qv_status gpt_sample_check(const gpt_sample_params *p, qv_error *err) {
  if (!isfinite(p->temperature) || p->temperature < 0)
    return qv_fail(err, QV_ERANGE, "temperature must be >= 0 (0 is greedy), got %g", p->temperature);
  if (p->top_k < 0) return qv_fail(err, QV_ERANGE, "top-k must be >= 0 (0 is off), got %d", p->top_k);
  if (!isfinite(p->top_p) || !(p->top_p > 0) || p->top_p > 1)
    return qv_fail(err, QV_ERANGE, "top-p must be in (0, 1], got %g", p->top_p);
  if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0))
    return qv_fail(err, QV_ERANGE, "repetition penalty must be > 0 (1 is off), got %g", p->repetition_penalty);
  return QV_OK;
}

static void rng_seed(gpt_sampler *s, uint64_t seed) {
  /* splitmix64 of the seed, so nearby seeds start far apart; xorshift needs a non-zero state */
  uint64_t z = seed + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  s->rng = z ? z : 0x2545F4914F6CDD1Dull;
}

static double rng_uniform(gpt_sampler *s) {
  // [0, 1) from the top 53 bits of xorshift64*
  s->rng ^= s->rng >> 12;
  s->rng ^= s->rng << 25;
  s->rng ^= s->rng >> 27;
  return (double)((s->rng * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}

qv_status gpt_sampler_create(gpt_sampler **out, size_t vocab, const gpt_sample_params *p, qv_error *err) {
  *out = NULL;
  qv_status rc = gpt_sample_check(p, err);
  if (rc) return rc;
  if (vocab == 0) return qv_fail(err, QV_EINVAL, "empty vocabulary");
  gpt_sampler *s = calloc(1, sizeof *s);
  if (!s) return qv_fail(err, QV_ENOMEM, "out of memory");
  s->p = *p;
  s->vocab = vocab;
  s->work = malloc(vocab * sizeof *s->work);
  s->idx = malloc(vocab * sizeof *s->idx);
  s->seen = calloc(vocab, 1);
  if (!s->work || !s->idx || !s->seen) {
    gpt_sampler_free(s);
    return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  rng_seed(s, p->seed);
  *out = s;
  return QV_OK;
}

void gpt_sampler_free(gpt_sampler *s) {
  if (!s) return;
  free(s->work);
  free(s->idx);
  free(s->seen);
  free(s);
}

qv_status gpt_sampler_set(gpt_sampler *s, const gpt_sample_params *p, qv_error *err) {
  qv_status rc = gpt_sample_check(p, err);
  if (rc) return rc;
  if (p->seed != s->p.seed) rng_seed(s, p->seed);
  s->p = *p;
  return QV_OK;
}

const gpt_sample_params *gpt_sampler_params(const gpt_sampler *s) { return &s->p; }

/* Sorting ids by their value in a table: qsort has no context argument, so the heap
 * sift below does it by hand (and keeps ties in id order, which qsort would not promise). */
static int before(const float *v, int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); }

static void sift_down(const float *v, int32_t *h, size_t n, size_t i) {
  /* a min-heap under `before`: the root is the candidate that sorts last */
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && before(v, h[m], h[l])) m = l;
    if (r < n && before(v, h[m], h[r])) m = r;
    if (m == i) return;
    int32_t t = h[i];
    h[i] = h[m];
    h[m] = t;
    i = m;
  }
}

/* Puts the k best ids (under `before` on v) into idx[0..k), best first. O(V log k). */
static void top_k_sorted(const float *v, size_t vocab, int32_t *idx, size_t k) {
  for (size_t i = 0; i < k; i++) idx[i] = (int32_t)i;
  for (size_t i = k / 2; i-- > 0;) sift_down(v, idx, k, i);
  for (size_t id = k; id < vocab; id++)
    if (before(v, (int32_t)id, idx[0])) {
      idx[0] = (int32_t)id;
      sift_down(v, idx, k, 0);
    }
  /* heap sort in place: repeatedly move the last-sorting root to the end */
  for (size_t n = k; n > 1; n--) {
    int32_t t = idx[0];
    idx[0] = idx[n - 1];
    idx[n - 1] = t;
    sift_down(v, idx, n - 1, 0);
  }
}

static int32_t argmax(const float *v, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; i++)
    if (v[i] > v[best]) best = i;
  return (int32_t)best;
}

int32_t gpt_sampler_next(gpt_sampler *s, const float *logits, const int32_t *history, size_t n_hist) {
  const size_t V = s->vocab;
  float *w = s->work;
  memcpy(w, logits, V * sizeof *w);
  if (s->p.repetition_penalty != 1.0f && n_hist) {
    for (size_t i = 0; i < n_hist; i++) {
      int32_t t = history[i];
      if (t < 0 || (size_t)t >= V || s->seen[t]) continue;
      s->seen[t] = 1;
      w[t] = w[t] > 0 ? w[t] / s->p.repetition_penalty : w[t] * s->p.repetition_penalty;
    }
    for (size_t i = 0; i < n_hist; i++)
      if (history[i] >= 0 && (size_t)history[i] < V) s->seen[history[i]] = 0;
  }
  if (s->p.temperature == 0 || s->p.top_k == 1) return argmax(w, V);
  size_t k = s->p.top_k > 0 && (size_t)s->p.top_k < V ? (size_t)s->p.top_k : V;
  top_k_sorted(w, V, s->idx, k);
  /* softmax of the k candidates at the temperature, in double; w keeps the weights */
  double mx = w[s->idx[0]], sum = 0;
  for (size_t i = 0; i < k; i++) {
    double e = exp(((double)w[s->idx[i]] - mx) / s->p.temperature);
    w[s->idx[i]] = (float)e;
    sum += e;
  }
  /* top-p: the shortest prefix whose mass reaches p (at least one token) */
  size_t n = k;
  if (s->p.top_p < 1.0f) {
    double acc = 0;
    for (n = 0; n < k;) {
      acc += w[s->idx[n++]] / sum;
      if (acc >= s->p.top_p) break;
    }
    sum = 0;
    for (size_t i = 0; i < n; i++) sum += w[s->idx[i]];
  }
  double u = rng_uniform(s) * sum, acc = 0;
  for (size_t i = 0; i < n; i++) {
    acc += w[s->idx[i]];
    if (u < acc) return s->idx[i];
  }
  return s->idx[n - 1];
}

void gpt_top_probs(const float *logits, size_t vocab, size_t k, int32_t *ids, float *probs) {
  if (k > vocab) k = vocab;
  if (!k) return;
  top_k_sorted(logits, vocab, ids, k);
  double mx = logits[ids[0]], sum = 0;
  for (size_t i = 0; i < vocab; i++) sum += exp((double)logits[i] - mx);
  for (size_t i = 0; i < k; i++) probs[i] = (float)(exp((double)logits[ids[i]] - mx) / sum);
}
