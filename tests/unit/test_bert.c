/* The BERT encoder: against an independent reference on the real model (skipped when the
 * model is not in the cache), batching and padding invariance, config parsing, and the
 * classification head on a small synthetic checkpoint. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/bert.h"
#include "test.h"

static char model_dir[1024];

static int have_model(void) {
  const char *home = getenv("HOME");
  if (!home) return 0;
  snprintf(model_dir, sizeof model_dir, "%s/.cache/quiver/models/all-MiniLM-L6-v2", home);
  char p[1100];
  snprintf(p, sizeof p, "%s/model.safetensors", model_dir);
  return access(p, R_OK) == 0;
}

typedef struct loaded {
  st_file *st;
  bert_model *m;
} loaded;

static void load_minilm(loaded *L) {
  char p[1100];
  qv_error err = {0};
  bert_config cfg;
  snprintf(p, sizeof p, "%s/config.json", model_dir);
  ASSERT_OK(bert_config_read(&cfg, p, &err));
  ASSERT_EQ(cfg.hidden, 384);
  ASSERT_EQ(cfg.layers, 6);
  ASSERT_EQ(cfg.heads, 12);
  ASSERT_EQ(cfg.intermediate, 1536);
  ASSERT_EQ(cfg.num_labels, 0);
  snprintf(p, sizeof p, "%s/model.safetensors", model_dir);
  ASSERT_OK(st_open(&L->st, p, &err));
  qv_status st = bert_load(&L->m, L->st, &cfg, &err);
  if (st) fprintf(stderr, "  %s\n", err.msg);
  ASSERT_OK(st);
}

static void unload(loaded *L) {
  bert_free(L->m);
  st_close(L->st);
}

static void mean_pool(float *out, const float *hidden, int len, int C) {
  for (int c = 0; c < C; c++) {
    double s = 0;
    for (int t = 0; t < len; t++) s += hidden[(size_t)t * C + c];
    out[c] = (float)(s / len);
  }
}

/* Reference: an independent numpy forward pass (float64 math on the float32 weights,
 * safetensors parsed by hand with json + struct + numpy.frombuffer, exact-erf GELU,
 * two-pass layernorm), mean-pooled over the 6 tokens; the throwaway script was run once
 * and its printed values are pasted here. Token ids are HF tokenizers' for
 * "Hello, world!". */
static const int32_t hello_ids[6] = {101, 7592, 1010, 2088, 999, 102};
static const struct { int i; float v; } hello_pooled[] = {
    {0, -0.1867582f}, {1, 0.1609974f},  {2, -0.0267067f}, {3, 0.0702961f},  {4, -0.1970990f},
    {5, -0.5700633f}, {6, 0.1550124f},  {7, 0.0093520f},  {100, 0.1834591f}, {200, 0.1529819f},
    {300, 0.0128642f}, {383, 0.0888522f},
};
static const float hello_h0[4] = {0.0970456f, 0.0446677f, 0.0334293f, 0.2942181f}; /* hidden[0][0:4] */
static const float hello_norm = 4.8918834f;

TEST(minilm_hello_world_matches_numpy) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models (scripts/fetch_models.py)");
  loaded L;
  load_minilm(&L);
  const qv_backend *be = backend_cpu();
  bert_workspace *ws;
  ASSERT_OK(bert_workspace_new(&ws, L.m, 1, 6));
  float hidden[6 * 384], pooled[384];
  int len = 6;
  ASSERT_OK(bert_forward(L.m, ws, be, hidden, hello_ids, NULL, &len, 1, 6));
  mean_pool(pooled, hidden, 6, 384);
  for (size_t k = 0; k < sizeof hello_pooled / sizeof hello_pooled[0]; k++)
    ASSERT_NEAR(pooled[hello_pooled[k].i], hello_pooled[k].v, 1e-4); /* tolerance 1e-4 */
  for (int c = 0; c < 4; c++) ASSERT_NEAR(hidden[c], hello_h0[c], 1e-4);
  double n2 = 0;
  for (int c = 0; c < 384; c++) n2 += (double)pooled[c] * pooled[c];
  ASSERT_NEAR(sqrt(n2), hello_norm, 1e-4);
  bert_workspace_free(ws);
  unload(&L);
}

/* Three sequences of different lengths in one padded batch give the rows each gives
 * alone; padding ids (anything, even out of range) change nothing. */
TEST(minilm_batch_equals_singles_and_padding_is_ignored) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  loaded L;
  load_minilm(&L);
  const qv_backend *be = backend_cpu();
  enum { B = 3, T = 40, C = 384 };
  int lens[B] = {6, 40, 1};
  int32_t *ids = calloc(B * T, sizeof *ids), *tids = calloc(B * T, sizeof *tids);
  float *hb = malloc(sizeof(float) * B * T * C), *h1 = malloc(sizeof(float) * T * C);
  float *hp = malloc(sizeof(float) * B * T * C);
  ASSERT(ids && tids && hb && h1 && hp);
  uint32_t r = 12345;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      r = r * 1664525u + 1013904223u;
      ids[b * T + t] = t == 0 ? 101 : 1000 + (int32_t)(r >> 8) % 20000;
    }
  memcpy(ids, hello_ids, sizeof hello_ids);
  ids[T + T - 1] = 102;
  tids[T + 20] = 1; /* a second-segment token in the long one */
  bert_workspace *ws;
  ASSERT_OK(bert_workspace_new(&ws, L.m, B, T));
  ASSERT_OK(bert_forward(L.m, ws, be, hb, ids, tids, lens, B, T));
  double worst = 0;
  for (int b = 0; b < B; b++) {
    ASSERT_OK(bert_forward(L.m, ws, be, h1, ids + b * T, tids + b * T, &lens[b], 1, lens[b]));
    for (int t = 0; t < T; t++)
      for (int c = 0; c < C; c++) {
        float got = hb[((size_t)b * T + t) * C + c];
        if (t >= lens[b]) {
          ASSERT(got == 0.0f);
          continue;
        }
        double d = fabs(got - h1[(size_t)t * C + c]);
        if (d > worst) worst = d;
        /* tolerance: 1e-5 absolute on values of magnitude up to ~10 (1e-6 relative); the
         * GEMM and attention blockings differ between the two shapes */
        ASSERT_NEAR(got, h1[(size_t)t * C + c], 1e-5);
      }
  }
  printf("  batch vs single: max abs difference %.3g\n", worst);
  /* garbage in the padding, including ids no table has */
  for (int b = 0; b < B; b++)
    for (int t = lens[b]; t < T; t++) ids[b * T + t] = tids[b * T + t] = (t % 2) ? -7 : 1 << 30;
  ASSERT_OK(bert_forward(L.m, ws, be, hp, ids, tids, lens, B, T));
  ASSERT(memcmp(hp, hb, sizeof(float) * B * T * C) == 0); /* bitwise */
  bert_workspace_free(ws);
  free(ids), free(tids), free(hb), free(h1), free(hp);
  unload(&L);
}

TEST(minilm_rejects_bad_input) {
  if (!have_model()) SKIP("all-MiniLM-L6-v2 not in ~/.cache/quiver/models");
  loaded L;
  load_minilm(&L);
  const qv_backend *be = backend_cpu();
  bert_workspace *ws;
  ASSERT_STATUS(bert_workspace_new(&ws, L.m, 1, 513), QV_EINVAL); /* past max_position */
  ASSERT_OK(bert_workspace_new(&ws, L.m, 2, 8));
  float hidden[2 * 8 * 384];
  int32_t ids[16] = {101, 30522, 102};
  int lens[2] = {3, 3};
  ASSERT_STATUS(bert_forward(L.m, ws, be, hidden, ids, NULL, lens, 1, 8), QV_ERANGE); /* id = vocab */
  ids[1] = 7592;
  int32_t tids[16] = {0, 2};
  ASSERT_STATUS(bert_forward(L.m, ws, be, hidden, ids, tids, lens, 1, 8), QV_ERANGE); /* type 2 */
  lens[0] = 9;
  ASSERT_STATUS(bert_forward(L.m, ws, be, hidden, ids, NULL, lens, 1, 8), QV_EINVAL); /* len > T */
  lens[0] = 3;
  ASSERT_STATUS(bert_forward(L.m, ws, be, hidden, ids, NULL, lens, 3, 8), QV_EINVAL); /* B > ws */
  ASSERT_STATUS(bert_classify(L.m, ws, be, hidden, hidden, 1, 8), QV_EUNSUPPORTED); /* no head */
  bert_workspace_free(ws);
  unload(&L);
}

/* ---- config.json ---------------------------------------------------------------------- */

static const char *write_tmp(const char *text) {
  static char path[256];
  const char *dir = getenv("QUIVER_TEST_TMP");
  if (!dir) dir = "/tmp";
  char mk[300];
  snprintf(mk, sizeof mk, "mkdir -p '%s'", dir);
  if (system(mk) != 0) return NULL;
  snprintf(path, sizeof path, "%s/bert_config_%d.json", dir, (int)getpid());
  FILE *f = fopen(path, "w");
  if (!f) return NULL;
  fputs(text, f);
  fclose(f);
  return path;
}

#define CFG_BASE                                                                              \
  "\"vocab_size\": 10, \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2," \
  " \"intermediate_size\": 16, \"max_position_embeddings\": 8, \"type_vocab_size\": 2,"          \
  " \"layer_norm_eps\": 1e-12"

TEST(config_read_fields_and_errors) {
  bert_config cfg;
  qv_error err = {0};
  const char *p = write_tmp("{" CFG_BASE ", \"hidden_act\": \"gelu\", \"architectures\": [\"BertModel\"]}");
  ASSERT(p);
  ASSERT_OK(bert_config_read(&cfg, p, &err));
  ASSERT_EQ(cfg.vocab, 10);
  ASSERT_EQ(cfg.hidden, 8);
  ASSERT_EQ(cfg.intermediate, 16);
  ASSERT_EQ(cfg.num_labels, 0);
  ASSERT_NEAR(cfg.ln_eps, 1e-12, 1e-20);
  p = write_tmp("{" CFG_BASE ", \"hidden_act\": \"gelu\", \"architectures\": "
                "[\"BertForSequenceClassification\"], \"id2label\": {\"0\": \"a\", \"1\": \"b\", \"2\": \"c\"}}");
  ASSERT_OK(bert_config_read(&cfg, p, &err));
  ASSERT_EQ(cfg.num_labels, 3);
  p = write_tmp("{" CFG_BASE ", \"hidden_act\": \"gelu\", \"architectures\": [\"BertForSequenceClassification\"]}");
  ASSERT_OK(bert_config_read(&cfg, p, &err));
  ASSERT_EQ(cfg.num_labels, 1);
  p = write_tmp("{" CFG_BASE ", \"hidden_act\": \"relu\"}");
  ASSERT_STATUS(bert_config_read(&cfg, p, &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "hidden_act"));
  p = write_tmp("{\"vocab_size\": 10, \"hidden_act\": \"gelu\"}");
  ASSERT_STATUS(bert_config_read(&cfg, p, &err), QV_EFORMAT);
  ASSERT(strstr(err.msg, "hidden_size"));
  p = write_tmp("{\"vocab_size\": 10, \"hidden_size\": 8, \"num_hidden_layers\": 1, "
                "\"num_attention_heads\": 3, \"intermediate_size\": 16, \"max_position_embeddings\": 8, "
                "\"type_vocab_size\": 2, \"layer_norm_eps\": 1e-12, \"hidden_act\": \"gelu\"}");
  ASSERT_STATUS(bert_config_read(&cfg, p, &err), QV_EFORMAT); /* 8 % 3 heads */
  ASSERT(strstr(err.msg, "num_attention_heads"));
  p = write_tmp("{not json");
  ASSERT_STATUS(bert_config_read(&cfg, p, &err), QV_EFORMAT);
  ASSERT_STATUS(bert_config_read(&cfg, "/nonexistent/config.json", &err), QV_NOTFOUND);
  unlink(p);
}

/* ---- classification head on a synthetic checkpoint ------------------------------------ */

typedef struct tensor_spec {
  char name[96];
  int64_t d0, d1; /* d1 = 0 for 1-D */
  float *data;
} tensor_spec;

/* Builds a safetensors image of F32 tensors. */
static uint8_t *build_st(const tensor_spec *ts, int n, size_t *len) {
  char *hdr = malloc(65536);
  size_t hl = 0, off = 0;
  hl += (size_t)sprintf(hdr + hl, "{");
  for (int i = 0; i < n; i++) {
    size_t bytes = (size_t)ts[i].d0 * (ts[i].d1 ? (size_t)ts[i].d1 : 1) * 4;
    if (ts[i].d1)
      hl += (size_t)sprintf(hdr + hl, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[%zu,%zu]}",
                            i ? "," : "", ts[i].name, (long long)ts[i].d0, (long long)ts[i].d1, off, off + bytes);
    else
      hl += (size_t)sprintf(hdr + hl, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],\"data_offsets\":[%zu,%zu]}",
                            i ? "," : "", ts[i].name, (long long)ts[i].d0, off, off + bytes);
    off += bytes;
  }
  hl += (size_t)sprintf(hdr + hl, "}");
  while (hl % 8) hdr[hl++] = ' ';
  uint8_t *buf = malloc(8 + hl + off);
  uint64_t h = hl;
  memcpy(buf, &h, 8);
  memcpy(buf + 8, hdr, hl);
  size_t at = 8 + hl;
  for (int i = 0; i < n; i++) {
    size_t bytes = (size_t)ts[i].d0 * (ts[i].d1 ? (size_t)ts[i].d1 : 1) * 4;
    memcpy(buf + at, ts[i].data, bytes);
    at += bytes;
  }
  free(hdr);
  *len = at;
  return buf;
}

TEST(classify_head_on_synthetic_checkpoint) {
  enum { V = 10, C = 8, NH = 2, I = 16, P = 8, NL = 3, T = 5, B = 2 };
  const struct { const char *name; int64_t d0, d1; int prefix; } shapes[] = {
      {"embeddings.word_embeddings.weight", V, C, 1},
      {"embeddings.position_embeddings.weight", P, C, 1},
      {"embeddings.token_type_embeddings.weight", 2, C, 1},
      {"embeddings.LayerNorm.weight", C, 0, 1},
      {"embeddings.LayerNorm.bias", C, 0, 1},
      {"encoder.layer.0.attention.self.query.weight", C, C, 1},
      {"encoder.layer.0.attention.self.query.bias", C, 0, 1},
      {"encoder.layer.0.attention.self.key.weight", C, C, 1},
      {"encoder.layer.0.attention.self.key.bias", C, 0, 1},
      {"encoder.layer.0.attention.self.value.weight", C, C, 1},
      {"encoder.layer.0.attention.self.value.bias", C, 0, 1},
      {"encoder.layer.0.attention.output.dense.weight", C, C, 1},
      {"encoder.layer.0.attention.output.dense.bias", C, 0, 1},
      {"encoder.layer.0.attention.output.LayerNorm.weight", C, 0, 1},
      {"encoder.layer.0.attention.output.LayerNorm.bias", C, 0, 1},
      {"encoder.layer.0.intermediate.dense.weight", I, C, 1},
      {"encoder.layer.0.intermediate.dense.bias", I, 0, 1},
      {"encoder.layer.0.output.dense.weight", C, I, 1},
      {"encoder.layer.0.output.dense.bias", C, 0, 1},
      {"encoder.layer.0.output.LayerNorm.weight", C, 0, 1},
      {"encoder.layer.0.output.LayerNorm.bias", C, 0, 1},
      {"pooler.dense.weight", C, C, 1},
      {"pooler.dense.bias", C, 0, 1},
      {"classifier.weight", NL, C, 0},
      {"classifier.bias", NL, 0, 0},
  };
  enum { NT = sizeof shapes / sizeof shapes[0] };
  tensor_spec ts[NT];
  uint32_t r = 7;
  for (int i = 0; i < NT; i++) {
    snprintf(ts[i].name, sizeof ts[i].name, "%s%s", shapes[i].prefix ? "bert." : "", shapes[i].name);
    ts[i].d0 = shapes[i].d0;
    ts[i].d1 = shapes[i].d1;
    size_t n = (size_t)shapes[i].d0 * (shapes[i].d1 ? (size_t)shapes[i].d1 : 1);
    ts[i].data = malloc(n * sizeof(float));
    for (size_t k = 0; k < n; k++) {
      r = r * 1664525u + 1013904223u;
      ts[i].data[k] = ((float)(r >> 8) / 16777216.0f - 0.5f) * (strstr(ts[i].name, "LayerNorm.weight") ? 0.2f : 1.0f) +
                      (strstr(ts[i].name, "LayerNorm.weight") ? 1.0f : 0.0f);
    }
  }
  size_t len;
  uint8_t *img = build_st(ts, NT, &len);
  st_file *st;
  qv_error err = {0};
  ASSERT_OK(st_parse(&st, img, len, &err));
  bert_config cfg = {V, C, 1, NH, I, P, 2, 1e-12f, NL};
  bert_model *m;
  qv_status rc = bert_load(&m, st, &cfg, &err);
  if (rc) fprintf(stderr, "  %s\n", err.msg);
  ASSERT_OK(rc);
  bert_workspace *ws;
  ASSERT_OK(bert_workspace_new(&ws, m, B, T));
  const qv_backend *be = backend_cpu();
  int32_t ids[B * T] = {1, 5, 7, 2, 0, 1, 3, 2, 0, 0};
  int lens[B] = {4, 3};
  float hidden[B * T * C], logits[B * NL];
  ASSERT_OK(bert_forward(m, ws, be, hidden, ids, NULL, lens, B, T));
  ASSERT_OK(bert_classify(m, ws, be, logits, hidden, B, T));
  const float *pw = ts[21].data, *pb = ts[22].data, *cw = ts[23].data, *cb = ts[24].data;
  for (int b = 0; b < B; b++) {
    double pooled[C];
    for (int o = 0; o < C; o++) {
      double s = pb[o];
      for (int c = 0; c < C; c++) s += (double)pw[o * C + c] * hidden[b * T * C + c];
      pooled[o] = tanh(s);
    }
    for (int l = 0; l < NL; l++) {
      double s = cb[l];
      for (int c = 0; c < C; c++) s += (double)cw[l * C + c] * pooled[c];
      ASSERT_NEAR(logits[b * NL + l], s, 1e-5); /* tolerance 1e-5: two 8-term float sums */
    }
  }
  /* a checkpoint without the head fails to load as a classifier, naming the tensor */
  bert_workspace_free(ws);
  bert_free(m);
  st_close(st);
  free(img);
  img = build_st(ts, NT - 2, &len);
  ASSERT_OK(st_parse(&st, img, len, &err));
  ASSERT_STATUS(bert_load(&m, st, &cfg, &err), QV_NOTFOUND);
  ASSERT(strstr(err.msg, "classifier.weight"));
  cfg.num_labels = 0; /* the encoder alone still loads */
  ASSERT_OK(bert_load(&m, st, &cfg, &err));
  bert_free(m);
  st_close(st);
  free(img);
  for (int i = 0; i < NT; i++) free(ts[i].data);
}

TEST_MAIN(T(config_read_fields_and_errors), T(classify_head_on_synthetic_checkpoint),
          T(minilm_hello_world_matches_numpy), T(minilm_batch_equals_singles_and_padding_is_ignored),
          T(minilm_rejects_bad_input))
