/* The BERT-family encoder, written once against the backend ops.
 *
 * Weights come from a safetensors file with Hugging Face names, with or without a
 * "bert." prefix (cross-encoders carry it). Q, K and V are fused into one (3C, C) matrix
 * at load (the only copy made); everything else is used in place from the map.
 * Forward: embeddings + layernorm, then per layer: fused QKV linear, masked softmax
 * attention, output linear + residual + layernorm, GELU MLP + residual + layernorm. */
#ifndef QV_MODEL_BERT_H
#define QV_MODEL_BERT_H

#include <stddef.h>
#include <stdint.h>

#include "compute/backend.h"
#include "model/safetensors.h"
#include "quiver.h"

typedef struct bert_config {
  int vocab, hidden, layers, heads, intermediate, max_pos, type_vocab;
  float ln_eps;
  int num_labels; /* > 0: a sequence-classification head ("classifier.weight") is loaded */
} bert_config;

typedef struct bert_model bert_model;

/* Reads config.json's fields into cfg (QV_EFORMAT naming a missing or bad field; only
 * hidden_act "gelu" is accepted). */
qv_status bert_config_read(bert_config *cfg, const char *config_json_path, qv_error *err);

/* Binds the weights in st (which must outlive the model). */
qv_status bert_load(bert_model **out, st_file *st, const bert_config *cfg, qv_error *err);
void bert_free(bert_model *m);
const bert_config *bert_get_config(const bert_model *m);

/* Workspace for B*T tokens: batches of sequences of at most T tokens whose padded size
 * (sequences x longest) is at most B*T. Allocated once. */
typedef struct bert_workspace bert_workspace;
qv_status bert_workspace_new(bert_workspace **out, const bert_model *m, int B, int T);
void bert_workspace_free(bert_workspace *ws);

/* Runs the encoder. ids, type_ids (B, T) padded rows (values past lens[b] are ignored);
 * hidden gets the last layer (B, T, C), rows past lens[b] zeroed. B, T must fit ws.
 * ws->attn is free again when it returns (bert_classify uses it). */
qv_status bert_forward(const bert_model *m, bert_workspace *ws, const qv_backend *be, float *hidden,
                       const int32_t *ids, const int32_t *type_ids, const int *lens, int B, int T);

/* Cross-encoder head: logits (B, num_labels) from the [CLS] row through the pooler
 * (dense + tanh) and the classifier, as BertForSequenceClassification does. */
qv_status bert_classify(const bert_model *m, bert_workspace *ws, const qv_backend *be, float *logits,
                        const float *hidden, int B, int T);

/* Makes the weights resident on a device backend (QV_MAP_WEIGHT), ws's block its device
 * scratch (QV_MAP_BUFFER) and hidden (hidden_floats) the output copied back at sync
 * (QV_MAP_OUTPUT). A no-op for backends without a map hook. On failure nothing stays
 * mapped. bert_unmap undoes it (unmapping what was never mapped is harmless). */
qv_status bert_map(const bert_model *m, bert_workspace *ws, float *hidden, size_t hidden_floats,
                   const qv_backend *be);
void bert_unmap(const bert_model *m, bert_workspace *ws, float *hidden, const qv_backend *be);

#endif
