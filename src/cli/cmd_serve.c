/* quiver serve: the HTTP server. Settings come from quiver.yaml (--config, or ./quiver.yaml
 * when present), then QUIVER_* variables, then these flags. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "server/config.h"
#include "server/server.h"

static const char usage[] =
    "usage: quiver serve [options]\n"
    "Serves the Qdrant-compatible API, OpenAI- and TEI-style embeddings, health and metrics.\n"
    "Settings: quiver.yaml (--config, or ./quiver.yaml), then QUIVER_* variables, then flags.\n"
    "options:\n"
    "  --config FILE             YAML settings file\n"
    "  --host ADDR               IPv4 address to listen on (default 0.0.0.0)\n"
    "  --port N                  port (default 6333; 0 picks a free one)\n"
    "  --data-dir DIR            data directory (default ./quiver-data or $QUIVER_DATA_DIR)\n"
    "  --model NAME|DIR          embedding model (default all-MiniLM-L6-v2 from the model cache)\n"
    "  --no-model                start without an embedding model\n"
    "  --reranker NAME|DIR       cross-encoder for reranking (default none)\n"
    "  --api-key KEYS            read-write API keys, comma-separated\n"
    "  --read-only-api-key KEYS  read-only API keys, comma-separated\n"
    "  --jwt-secret SECRET       accept HS256 JWTs signed with SECRET\n"
    "  --max-body-bytes N        largest request body (default 32 MiB)\n"
    "  --max-batch N             most points or inputs in one request (default 10000)\n"
    "  --request-timeout S       idle connection timeout and shutdown grace (default 60)\n"
    "  --max-in-flight N         requests served at once before 429 (default 512)\n"
    "  --threads N               HTTP worker threads (default 8)\n"
    "  --batch-tokens N          dynamic batching: tokens per forward pass (default 16384)\n"
    "  --batch-wait-ms MS        dynamic batching: longest wait to fill a batch (default 2)\n"
    "  --max-queue N             waiting embedding requests before 429 (default 1024)\n"
    "  --gpu auto|on|off         accelerator policy (default auto)\n"
    "  --gpu-device N            which GPU (default 0)\n"
    "  --gpu-batch-size N        queries per unit of GPU search work (default 64)\n"
    "  --gpu-memory-fraction F   share of GPU memory for weights and collections (default 0.8)\n"
    "  --gpu-fallback true|false rerun failed GPU work on the CPU (default true)\n"
    "  --gpu-breaker-failures N  consecutive GPU failures that open the breaker (default 3)\n"
    "  --gpu-breaker-cooldown S  seconds an open breaker keeps work on the CPU (default 300)\n"
    "  --gpu-timeout S           GPU work slower than this counts as a failure (default 30)\n";

int cmd_serve(int argc, char **argv) {
  const char *config = NULL;
  static const char *keys[] = {"host", "port", "data_dir", "model", "reranker", "auth.api_keys",
                               "auth.read_only_keys", "auth.jwt_secret", "limits.max_body_bytes",
                               "limits.max_batch", "limits.request_timeout_s", "limits.max_in_flight",
                               "threads", "batching.max_tokens", "batching.max_wait_ms",
                               "batching.max_queue", "gpu.enabled", "gpu.device_id", "gpu.batch_size",
                               "gpu.memory_fraction", "gpu.fallback_to_cpu", "gpu.breaker_failures",
                               "gpu.breaker_cooldown_s", "gpu.timeout_s"};
  const char *vals[sizeof keys / sizeof keys[0]] = {0};
  int no_model = 0;
  cli_opt opts[] = {{"config", &config, NULL},
                    {"host", &vals[0], NULL},
                    {"port", &vals[1], NULL},
                    {"data-dir", &vals[2], NULL},
                    {"model", &vals[3], NULL},
                    {"reranker", &vals[4], NULL},
                    {"api-key", &vals[5], NULL},
                    {"read-only-api-key", &vals[6], NULL},
                    {"jwt-secret", &vals[7], NULL},
                    {"max-body-bytes", &vals[8], NULL},
                    {"max-batch", &vals[9], NULL},
                    {"request-timeout", &vals[10], NULL},
                    {"max-in-flight", &vals[11], NULL},
                    {"threads", &vals[12], NULL},
                    {"batch-tokens", &vals[13], NULL},
                    {"batch-wait-ms", &vals[14], NULL},
                    {"max-queue", &vals[15], NULL},
                    {"gpu", &vals[16], NULL},
                    {"gpu-device", &vals[17], NULL},
                    {"gpu-batch-size", &vals[18], NULL},
                    {"gpu-memory-fraction", &vals[19], NULL},
                    {"gpu-fallback", &vals[20], NULL},
                    {"gpu-breaker-failures", &vals[21], NULL},
                    {"gpu-breaker-cooldown", &vals[22], NULL},
                    {"gpu-timeout", &vals[23], NULL},
                    {"no-model", NULL, &no_model},
                    {0}};
  cli_parse(argc, argv, opts, NULL, 0, usage);

  static server s;
  qv_error err = {0};
  server_config_defaults(&s.cfg);
  if (config) cli_check(server_config_load_file(&s.cfg, config, &err), &err, "reading the config");
  else if (access("quiver.yaml", R_OK) == 0)
    cli_check(server_config_load_file(&s.cfg, "quiver.yaml", &err), &err, "reading the config");
  cli_check(server_config_load_env(&s.cfg, (const char *(*)(const char *))getenv, &err), &err,
            "reading the environment");
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    if (!vals[i]) continue;
    if (!strcmp(keys[i], "model") && no_model) cli_die("serve: --model and --no-model exclude each other");
    char flag[64];
    snprintf(flag, sizeof flag, "--%s", opts[i + 1].name);
    qv_status st = server_config_set(&s.cfg, keys[i], vals[i], &err);
    if (st) cli_die("%s: %s", flag, err.msg);
  }
  if (no_model) s.cfg.model[0] = '\0';

  /* SIGTERM and SIGINT are blocked in every thread (the server's threads inherit the mask)
   * and taken here with sigwait, so shutdown runs in ordinary code, not a handler. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);

  cli_check(server_start(&s, &err), &err, "starting the server");
  fprintf(stderr, "quiver: serving on http://%s:%d (data %s, model %s)\n", s.cfg.host, s.cfg.port,
          s.cfg.data_dir, s.cfg.model[0] ? s.cfg.model : "none");
  fflush(stderr);
  int sig = 0;
  sigwait(&set, &sig);
  fprintf(stderr, "quiver: %s: finishing requests in flight, then stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  server_stop(&s);
  server_config_free(&s.cfg);
  fprintf(stderr, "quiver: stopped\n");
  return 0;
}
