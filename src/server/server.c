/* Server start-up and shutdown: HTTP first (so /livez answers while models load), then the
 * data directory, the models and their batchers; shutdown in the reverse order, after
 * in-flight requests have finished, so the last acknowledged write is on disk before the
 * data directory closes. */
#include <string.h>

#include "base/error.h"
#include "base/log.h"
#include "compute/device.h"
#include "server/batcher.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/server.h"

static qv_status load_model(server *s, const char *name, qv_model **m, struct batcher **b,
                            qv_model_kind want, qv_error *err) {
  qv_status st = qv_model_load(m, name, err);
  if (st) {
    qv_error_prefix(err, "loading model %s", name);
    return st;
  }
  qv_model_info info;
  qv_model_info_get(*m, &info);
  if (info.kind != want)
    return qv_fail(err, QV_EINVAL, "model %s is %s, not %s", name,
                   info.kind == QV_MODEL_RERANKER ? "a cross-encoder" : "an embedding model",
                   want == QV_MODEL_RERANKER ? "a cross-encoder" : "an embedding model");
  st = batcher_new(b, *m, s->cfg.batch_tokens, s->cfg.batch_wait_ms, s->cfg.max_queue, s->metrics, err);
  if (st) return st;
  LOG_INFO("loaded %s (%d dims, %d tokens)", info.name, info.dims, info.max_tokens);
  return QV_OK;
}

qv_status server_start(server *s, qv_error *err) {
  qv_status st;
  s->started = server_now();
  s->metrics = metrics_new();
  if (!s->metrics) return qv_fail(err, QV_ENOMEM, "out of memory");
  if ((st = http_start(s, err))) goto fail;
  if ((st = qv_db_open(&s->db, s->cfg.data_dir, err))) {
    qv_error_prefix(err, "data directory %s", s->cfg.data_dir);
    goto fail;
  }
  /* The device is set up before any model loads, so weights go where they will run. */
  /* (the QUIVER_GPU* variables reached gpu_opts through server_config_load_env) */
  qv_gpu_config gpu = s->cfg.gpu_opts;
  if ((st = qv_gpu_mode_parse(&gpu.enabled, s->cfg.gpu)) || (st = qv_gpu_config_apply(&gpu, err))) {
    if (!err || !err->msg[0]) qv_fail(err, st, "gpu.enabled \"%s\"", s->cfg.gpu);
    goto fail;
  }
  if (s->cfg.model[0] &&
      (st = load_model(s, s->cfg.model, &s->model, &s->embed_batcher, QV_MODEL_EMBEDDING, err)))
    goto fail;
  if (s->cfg.reranker[0] &&
      (st = load_model(s, s->cfg.reranker, &s->reranker, &s->rerank_batcher, QV_MODEL_RERANKER, err)))
    goto fail;
  __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
  return QV_OK;
fail:
  server_stop(s);
  return st;
}

void server_stop(server *s) {
  /* In-flight requests still need ready set to finish; /readyz reports the drain. */
  __atomic_store_n(&s->stopping, 1, __ATOMIC_RELEASE);
  http_stop(s);
  __atomic_store_n(&s->ready, 0, __ATOMIC_RELEASE);
  if (s->embed_batcher) batcher_free(s->embed_batcher);
  if (s->rerank_batcher) batcher_free(s->rerank_batcher);
  s->embed_batcher = s->rerank_batcher = NULL;
  qv_model_free(s->model);
  qv_model_free(s->reranker);
  s->model = s->reranker = NULL;
  if (s->db) qv_db_close(s->db);
  s->db = NULL;
  metrics_free(s->metrics);
  s->metrics = NULL;
}
