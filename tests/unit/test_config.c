/* Server configuration: defaults, the YAML file, the environment, their precedence, and
 * every class of bad value. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver.h"
#include "compute/device.h"
#include "server/config.h"

#include "test.h"

static qv_status yaml(server_config *c, const char *text, qv_error *err) {
  memset(err, 0, sizeof *err);
  return server_config_load_yaml(c, text, strlen(text), err);
}

TEST(defaults) {
  server_config c;
  server_config_defaults(&c);
  ASSERT_EQ(c.port, 6333);
  ASSERT_STR_EQ(c.host, "0.0.0.0");
  ASSERT_STR_EQ(c.data_dir, "./quiver-data");
  ASSERT_STR_EQ(c.model, "all-MiniLM-L6-v2");
  ASSERT_STR_EQ(c.gpu, "auto");
  ASSERT_EQ(c.max_body_bytes, 32 << 20);
  ASSERT_EQ(c.n_api_keys, 0);
  server_config_free(&c);
}

TEST(yaml_file_nested_and_lists) {
  server_config c;
  qv_error err;
  server_config_defaults(&c);
  ASSERT_OK(yaml(&c,
                 "host: 127.0.0.1\n"
                 "port: 7000\n"
                 "data_dir: /tmp/qd\n"
                 "model: ~\n"
                 "auth:\n"
                 "  api_keys: [k1, k2]\n"
                 "  read_only_keys:\n"
                 "    - r1\n"
                 "  jwt_secret: s3cret\n"
                 "limits:\n"
                 "  max_body_bytes: 4096\n"
                 "  request_timeout_s: 2.5\n"
                 "batching: {max_tokens: 999, max_wait_ms: 1.5, max_queue: 7}\n"
                 "gpu:\n"
                 "  enabled: off\n"
                 "threads: 3\n",
                 &err));
  ASSERT_STR_EQ(c.host, "127.0.0.1");
  ASSERT_EQ(c.port, 7000);
  ASSERT_STR_EQ(c.data_dir, "/tmp/qd");
  ASSERT_STR_EQ(c.model, "all-MiniLM-L6-v2"); /* null leaves the default */
  ASSERT_EQ(c.n_api_keys, 2);
  ASSERT_STR_EQ(c.api_keys[0], "k1");
  ASSERT_STR_EQ(c.api_keys[1], "k2");
  ASSERT_EQ(c.n_ro_keys, 1);
  ASSERT_STR_EQ(c.ro_keys[0], "r1");
  ASSERT_STR_EQ(c.jwt_secret, "s3cret");
  ASSERT_EQ(c.max_body_bytes, 4096);
  ASSERT_NEAR(c.request_timeout_s, 2.5, 0);
  ASSERT_EQ(c.batch_tokens, 999);
  ASSERT_NEAR(c.batch_wait_ms, 1.5, 0);
  ASSERT_EQ(c.max_queue, 7);
  ASSERT_STR_EQ(c.gpu, "off");
  ASSERT_EQ(c.threads, 3);
  server_config_free(&c);
}

TEST(yaml_errors_name_the_problem) {
  server_config c;
  qv_error err;
  server_config_defaults(&c);
  ASSERT_STATUS(yaml(&c, "port: 70000\n", &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "port"));
  ASSERT(strstr(err.msg, "line 1"));
  ASSERT_STATUS(yaml(&c, "host: a\nbogus: 1\n", &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "bogus"));
  ASSERT(strstr(err.msg, "line 2"));
  ASSERT_STATUS(yaml(&c, "port: [1, 2\n", &err), QV_EFORMAT);
  ASSERT_STATUS(yaml(&c, "- a\n- b\n", &err), QV_EFORMAT);
  ASSERT_STATUS(yaml(&c, "just text\n", &err), QV_EFORMAT);
  ASSERT_STATUS(yaml(&c, "a: &x 1\nb: *x\n", &err), QV_EINVAL); /* "a" is unknown first */
  ASSERT_STATUS(yaml(&c, "gpu:\n  enabled: sometimes\n", &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "gpu.enabled"));
  /* The same spellings QUIVER_GPU accepts for the other commands. */
  ASSERT_OK(yaml(&c, "gpu:\n  enabled: Yes\n", &err));
  ASSERT_OK(yaml(&c, "gpu:\n  enabled: OFF\n", &err));
  ASSERT_STATUS(yaml(&c, "limits:\n  max_body_bytes: -5\n", &err), QV_EINVAL);
  ASSERT_STATUS(yaml(&c, "limits:\n  request_timeout_s: nan\n", &err), QV_EINVAL);
  ASSERT_STATUS(yaml(&c, "a: {b: {c: {d: {e: {f: {g: {h: {i: 1}}}}}}}}\n", &err), QV_EFORMAT);
  ASSERT_OK(yaml(&c, "", &err)); /* an empty file is no settings */
  server_config_free(&c);
}

static const char *fake_env(const char *name) {
  if (!strcmp(name, "QUIVER_PORT")) return "7100";
  if (!strcmp(name, "QUIVER_API_KEY")) return "a,b";
  if (!strcmp(name, "QUIVER_GPU")) return "on";
  if (!strcmp(name, "QUIVER_DATA_DIR")) return "";
  return NULL;
}

static const char *bad_env(const char *name) {
  return !strcmp(name, "QUIVER_THREADS") ? "many" : NULL;
}

TEST(env_then_flags_override_file) {
  server_config c;
  qv_error err;
  server_config_defaults(&c);
  ASSERT_OK(yaml(&c, "port: 7000\ndata_dir: /f\n", &err));
  ASSERT_OK(server_config_load_env(&c, fake_env, &err));
  ASSERT_EQ(c.port, 7100);
  ASSERT_STR_EQ(c.data_dir, "/f"); /* an empty variable is unset */
  ASSERT_EQ(c.n_api_keys, 2);
  ASSERT_STR_EQ(c.gpu, "on");
  ASSERT_OK(server_config_set(&c, "port", "7200", &err)); /* a flag */
  ASSERT_EQ(c.port, 7200);
  memset(&err, 0, sizeof err);
  ASSERT_STATUS(server_config_load_env(&c, bad_env, &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "QUIVER_THREADS"));
  server_config_free(&c);
}

static const char *gpu_env(const char *name) {
  if (!strcmp(name, "QUIVER_GPU_MEMORY_FRACTION")) return "0.5";
  if (!strcmp(name, "QUIVER_GPU_BREAKER_FAILURES")) return "7";
  if (!strcmp(name, "QUIVER_GPU_BREAKER_COOLDOWN")) return "12.5";
  if (!strcmp(name, "QUIVER_GPU_BATCH_SIZE")) return "32";
  if (!strcmp(name, "QUIVER_GPU_DEVICE")) return "1";
  if (!strcmp(name, "QUIVER_GPU_FALLBACK")) return "false";
  return NULL;
}

static const char *bad_gpu_env(const char *name) {
  return !strcmp(name, "QUIVER_GPU_MEMORY_FRACTION") ? "1.5" : NULL;
}

TEST(gpu_settings_from_file_env_and_flags) {
  server_config c;
  qv_error err;
  server_config_defaults(&c);
  ASSERT_EQ(c.gpu_opts.batch_size, 64);
  ASSERT_NEAR(c.gpu_opts.memory_fraction, 0.8, 0);
  ASSERT_EQ(c.gpu_opts.breaker_failures, 3);
  ASSERT_NEAR(c.gpu_opts.breaker_cooldown_s, 300, 0);
  ASSERT_EQ(c.gpu_opts.fallback_to_cpu, 1);
  ASSERT_OK(yaml(&c,
                 "gpu:\n"
                 "  enabled: on\n"
                 "  device_id: 2\n"
                 "  batch_size: 128\n"
                 "  memory_fraction: 0.25\n"
                 "  fallback_to_cpu: true\n"
                 "  breaker_failures: 5\n"
                 "  breaker_cooldown_s: 60\n"
                 "  timeout_s: 2\n",
                 &err));
  ASSERT_STR_EQ(c.gpu, "on");
  ASSERT_EQ(c.gpu_opts.enabled, QV_GPU_ON);
  ASSERT_EQ(c.gpu_opts.device_id, 2);
  ASSERT_EQ(c.gpu_opts.batch_size, 128);
  ASSERT_NEAR(c.gpu_opts.memory_fraction, 0.25, 0);
  ASSERT_EQ(c.gpu_opts.breaker_failures, 5);
  ASSERT_NEAR(c.gpu_opts.breaker_cooldown_s, 60, 0);
  ASSERT_NEAR(c.gpu_opts.timeout_s, 2, 0);
  /* the environment wins over the file */
  ASSERT_OK(server_config_load_env(&c, gpu_env, &err));
  ASSERT_NEAR(c.gpu_opts.memory_fraction, 0.5, 0);
  ASSERT_EQ(c.gpu_opts.breaker_failures, 7);
  ASSERT_NEAR(c.gpu_opts.breaker_cooldown_s, 12.5, 0);
  ASSERT_EQ(c.gpu_opts.batch_size, 32);
  ASSERT_EQ(c.gpu_opts.device_id, 1);
  ASSERT_EQ(c.gpu_opts.fallback_to_cpu, 0);
  ASSERT_STR_EQ(c.gpu, "on"); /* QUIVER_GPU unset: the file's value stays */
  /* and a flag over both */
  ASSERT_OK(server_config_set(&c, "gpu.breaker_cooldown_s", "1", &err));
  ASSERT_NEAR(c.gpu_opts.breaker_cooldown_s, 1, 0);
  ASSERT_OK(server_config_set(&c, "gpu.enabled", "no", &err));
  ASSERT_STR_EQ(c.gpu, "off");
  ASSERT_EQ(c.gpu_opts.enabled, QV_GPU_OFF);
  /* every bad value is refused with the key named; nothing changes */
  struct {
    const char *key, *value;
  } bad[] = {{"gpu.memory_fraction", "0"},     {"gpu.memory_fraction", "1.01"}, {"gpu.memory_fraction", "nan"},
             {"gpu.memory_fraction", "half"},  {"gpu.breaker_failures", "0"},   {"gpu.breaker_failures", "-1"},
             {"gpu.breaker_failures", "2.5"},  {"gpu.breaker_cooldown_s", "0"}, {"gpu.breaker_cooldown_s", "-3"},
             {"gpu.breaker_cooldown_s", "inf"}, {"gpu.batch_size", "0"},         {"gpu.batch_size", "5000"},
             {"gpu.device_id", "-1"},          {"gpu.fallback_to_cpu", "auto"}, {"gpu.timeout_s", "-1"},
             {"gpu.bogus", "1"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    memset(&err, 0, sizeof err);
    ASSERT_STATUS(server_config_set(&c, bad[i].key, bad[i].value, &err), QV_EINVAL);
    if (!strstr(err.msg, bad[i].key)) TEST_FAIL_("%s=%s: \"%s\" does not name the key", bad[i].key, bad[i].value, err.msg);
  }
  ASSERT_NEAR(c.gpu_opts.memory_fraction, 0.5, 0);
  ASSERT_EQ(c.gpu_opts.breaker_failures, 7);
  memset(&err, 0, sizeof err);
  ASSERT_STATUS(yaml(&c, "gpu:\n  breaker_failures: 0\n", &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "gpu.breaker_failures"));
  ASSERT(strstr(err.msg, "line 2"));
  memset(&err, 0, sizeof err);
  ASSERT_STATUS(server_config_load_env(&c, bad_gpu_env, &err), QV_EINVAL);
  ASSERT(strstr(err.msg, "QUIVER_GPU_MEMORY_FRACTION"));
  /* what the server hands the device layer passes its checks */
  server_config_defaults(&c);
  ASSERT_OK(server_config_load_env(&c, gpu_env, &err));
  qv_gpu_config g = c.gpu_opts;
  g.enabled = QV_GPU_OFF;
  ASSERT_OK(qv_gpu_config_apply(&g, &err));
  qv_gpu_config now;
  device_config(&now);
  ASSERT_EQ(now.breaker_failures, 7);
  ASSERT_NEAR(now.breaker_cooldown_s, 12.5, 0);
  ASSERT_NEAR(now.memory_fraction, 0.5, 0);
  server_config_free(&c);
}

TEST(file_errors) {
  server_config c;
  qv_error err = {0};
  server_config_defaults(&c);
  ASSERT(server_config_load_file(&c, "/nonexistent/quiver.yaml", &err) > 0);
  ASSERT(strstr(err.msg, "/nonexistent/quiver.yaml"));
  const char *dir = getenv("QUIVER_TEST_TMP");
  char path[4096];
  snprintf(path, sizeof path, "%s/test_config.yaml", dir ? dir : "/tmp");
  if (dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    ASSERT_EQ(system(cmd), 0);
  }
  FILE *f = fopen(path, "w");
  ASSERT(f);
  fputs("port: 6400\nmodel: other\n", f);
  fclose(f);
  ASSERT_OK(server_config_load_file(&c, path, &err));
  ASSERT_EQ(c.port, 6400);
  ASSERT_STR_EQ(c.model, "other");
  remove(path);
  server_config_free(&c);
}

TEST_MAIN(T(defaults), T(yaml_file_nested_and_lists), T(yaml_errors_name_the_problem),
          T(env_then_flags_override_file), T(gpu_settings_from_file_env_and_flags), T(file_errors))
