/* Checkpoint folders: a Hugging Face GPT-2 folder, so our checkpoints and HF GPT-2 load the
 * same way.
 *
 *   DIR/config.json             {"model_type":"gpt2","n_layer","n_head","n_embd","n_positions",
 *                                "n_ctx","vocab_size","layer_norm_epsilon","activation_function",
 *                                "quiver": {step, train_loss, val_loss, chunking, timestamp,
 *                                seed, tokens_seen}}
 *   DIR/model.safetensors       F32 tensors named as gpt_tensor_at (HF GPT2Model names);
 *                               __metadata__ carries the "quiver" fields as strings
 *   DIR/tokenizer.json          the BPE (gpt_bpe_to_json), when one was given
 *   DIR/optimizer.safetensors   (training only) "m.<name>", "v.<name>" per tensor;
 *                               __metadata__: step, rng, args (the training options)
 *
 * Invariants:
 *   1. Every file is written to DIR/.name.tmp-XXXXXX, fsynced, renamed over DIR/name, and
 *      the directory fsynced (gpt_ckpt_write_file): a crash leaves each file old or new,
 *      never torn. model.safetensors is renamed LAST, so a folder whose
 *      model.safetensors has the step of config.json is complete.
 *   2. gpt_load accepts names with or without the "transformer." prefix and ignores
 *      tensors it does not know (HF's attn.bias masks, lm_head.weight tied to wte).
 *   3. Loading then saving a model writes the same tensor bytes (F32 stays F32 bit for bit).
 */
#ifndef QV_GPT_CKPT_H
#define QV_GPT_CKPT_H

#include <stdint.h>

#include "gpt/gpt.h"
#include "quiver.h"

/* The "quiver" block of config.json. Absent fields read as 0 / NULL / NaN (losses). */
typedef struct gpt_ckpt_meta {
  long step;
  double train_loss, val_loss; /* NaN when unknown */
  char *chunking;              /* JSON object text (malloc'd when loaded), or NULL */
  char timestamp[40];          /* ISO 8601 UTC; gpt_save fills it when empty */
  uint64_t seed;
  uint64_t tokens_seen;
} gpt_ckpt_meta;

void gpt_ckpt_meta_free(gpt_ckpt_meta *m); /* frees chunking only */

/* Loads config.json + model.safetensors of dir into a new model (no training state).
 * meta may be NULL; else it receives the "quiver" block (zeros for HF GPT-2).
 * QV_NOTFOUND for a missing file, QV_EFORMAT naming the field or tensor at fault. */
qv_status gpt_load(gpt_model **out, const char *dir, gpt_ckpt_meta *meta, qv_error *err);

/* Parses config.json text (the fuzz target's entry): the model config and (meta may be
 * NULL) the "quiver" block. QV_EJSON, QV_EFORMAT or QV_EUNSUPPORTED naming the field. */
qv_status gpt_ckpt_parse_config(const char *text, size_t len, gpt_config *cfg, gpt_ckpt_meta *meta,
                                qv_error *err);
/* Reads dir/config.json with gpt_ckpt_parse_config; QV_NOTFOUND when it is missing. */
qv_status gpt_ckpt_read_config(const char *dir, gpt_config *cfg, gpt_ckpt_meta *meta, qv_error *err);

/* One checkpoint of a folder, for `quiver gpt list`. */
typedef struct gpt_ckpt_entry {
  char *dir;
  gpt_config cfg;
  gpt_ckpt_meta meta;
  size_t nparams;
} gpt_ckpt_entry;

/* The checkpoints in dir: dir itself if it holds a config.json, and its subfolders that
 * do, ordered by step then name. *best is the index with the lowest finite val_loss, or
 * -1 when none has one. QV_NOTFOUND when dir holds no checkpoint. */
qv_status gpt_ckpt_list(const char *dir, gpt_ckpt_entry **out, size_t *n, long *best, qv_error *err);
void gpt_ckpt_list_free(gpt_ckpt_entry *e, size_t n);

/* Writes config.json, model.safetensors and (tokenizer_json != NULL) tokenizer.json into dir,
 * creating it. */
qv_status gpt_save(const gpt_model *m, const char *dir, const gpt_ckpt_meta *meta,
                   const char *tokenizer_json, qv_error *err);

/* optimizer.safetensors: m->m and m->v plus the step, an RNG state and the training
 * arguments (a JSON object's text, may be NULL) that --resume starts from. */
qv_status gpt_save_optimizer(const gpt_model *m, const char *dir, long step, uint64_t rng, const char *args_json,
                             qv_error *err);
/* Reads them back into m (which must have gpt_train_alloc'd state of the same config);
 * *args_json (may be NULL) gets a malloc'd copy of the arguments, or NULL. */
qv_status gpt_load_optimizer(gpt_model *m, const char *dir, long *step, uint64_t *rng, char **args_json,
                             qv_error *err);

/* A safetensors writer: n F32 tensors with names, shapes and data, plus string metadata
 * (nmeta key/value pairs, may be 0), written atomically (invariant 1). */
typedef struct gpt_st_entry {
  const char *name;
  int ndim;
  int64_t shape[2];
  const float *data;
} gpt_st_entry;
qv_status gpt_st_write(const char *path, const gpt_st_entry *t, size_t n, const char *const *meta_kv,
                       size_t nmeta, qv_error *err);

/* Writes len bytes to path atomically: tmp file in the same folder, fsync, rename, fsync dir. */
qv_status gpt_ckpt_write_file(const char *path, const void *data, size_t len, qv_error *err);

#endif
