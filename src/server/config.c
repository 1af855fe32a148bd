/* Server configuration: one setter per dotted key, fed by a YAML file, the environment
 * and flags (see config.h). */
#include "server/config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "base/error.h"
#include "compute/device.h"

void server_config_defaults(server_config *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->host, sizeof c->host, "0.0.0.0");
  c->port = 6333;
  snprintf(c->data_dir, sizeof c->data_dir, "./quiver-data");
  snprintf(c->model, sizeof c->model, "all-MiniLM-L6-v2");
  c->max_body_bytes = (size_t)32 << 20;
  c->max_batch = 10000;
  c->request_timeout_s = 60;
  c->threads = 8;
  c->truncate = 1;
  c->batch_tokens = 16384;
  c->batch_wait_ms = 2;
  c->max_queue = 1024;
  snprintf(c->gpu, sizeof c->gpu, "auto");
  qv_gpu_config_default(&c->gpu_opts);
  c->max_in_flight = 512;
}

static void free_list(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

void server_config_free(server_config *c) {
  free_list(c->api_keys, c->n_api_keys);
  free_list(c->ro_keys, c->n_ro_keys);
  c->api_keys = c->ro_keys = NULL;
  c->n_api_keys = c->n_ro_keys = 0;
}

static qv_status set_str(char *dst, size_t cap, const char *key, const char *v, qv_error *err) {
  size_t n = strlen(v);
  if (n >= cap) return qv_fail(err, QV_EINVAL, "%s: longer than %zu bytes", key, cap - 1);
  memcpy(dst, v, n + 1);
  return QV_OK;
}

static qv_status set_size(size_t *dst, const char *key, const char *v, size_t lo, size_t hi,
                          qv_error *err) {
  char *end;
  errno = 0;
  if (*v == '-' || *v == '\0') return qv_fail(err, QV_EINVAL, "%s: \"%s\" is not a count", key, v);
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || *end || x < lo || x > hi)
    return qv_fail(err, QV_EINVAL, "%s: \"%s\" is not a count in %zu..%zu", key, v, lo, hi);
  *dst = (size_t)x;
  return QV_OK;
}

static qv_status set_double(double *dst, const char *key, const char *v, double lo, double hi,
                            qv_error *err) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !isfinite(x) || x < lo || x > hi)
    return qv_fail(err, QV_EINVAL, "%s: \"%s\" is not a number in %g..%g", key, v, lo, hi);
  *dst = x;
  return QV_OK;
}

static qv_status set_bool(int *dst, const char *key, const char *v, qv_error *err) {
  if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on")) *dst = 1;
  else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off")) *dst = 0;
  else return qv_fail(err, QV_EINVAL, "%s: \"%s\" is not true or false", key, v);
  return QV_OK;
}

/* Appends each comma-separated, non-empty item of v to the list. */
static qv_status add_list(char ***list, size_t *n, const char *key, const char *v, qv_error *err) {
  const char *p = v;
  while (*p) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len) {
      if (len > 4096) return qv_fail(err, QV_EINVAL, "%s: a key longer than 4096 bytes", key);
      char **grown = realloc(*list, (*n + 1) * sizeof **list);
      if (!grown) return qv_fail(err, QV_ENOMEM, "%s: out of memory", key);
      *list = grown;
      char *s = strndup(p, len);
      if (!s) return qv_fail(err, QV_ENOMEM, "%s: out of memory", key);
      grown[(*n)++] = s;
    }
    p += len;
    if (*p == ',') p++;
  }
  return QV_OK;
}

qv_status server_config_set(server_config *c, const char *key, const char *v, qv_error *err) {
  size_t x;
  qv_status st;
  if (!strcmp(key, "host")) return set_str(c->host, sizeof c->host, key, v, err);
  if (!strcmp(key, "port")) {
    if ((st = set_size(&x, key, v, 0, 65535, err))) return st;
    c->port = (int)x;
    return QV_OK;
  }
  if (!strcmp(key, "data_dir")) {
    if (!*v) return qv_fail(err, QV_EINVAL, "data_dir: empty");
    return set_str(c->data_dir, sizeof c->data_dir, key, v, err);
  }
  if (!strcmp(key, "model")) return set_str(c->model, sizeof c->model, key, v, err);
  if (!strcmp(key, "reranker")) return set_str(c->reranker, sizeof c->reranker, key, v, err);
  if (!strcmp(key, "threads")) {
    if ((st = set_size(&x, key, v, 1, 1024, err))) return st;
    c->threads = (int)x;
    return QV_OK;
  }
  if (!strcmp(key, "truncate")) return set_bool(&c->truncate, key, v, err);
  if (!strcmp(key, "auth.api_keys")) return add_list(&c->api_keys, &c->n_api_keys, key, v, err);
  if (!strcmp(key, "auth.read_only_keys")) return add_list(&c->ro_keys, &c->n_ro_keys, key, v, err);
  if (!strcmp(key, "auth.jwt_secret")) return set_str(c->jwt_secret, sizeof c->jwt_secret, key, v, err);
  if (!strcmp(key, "limits.max_body_bytes"))
    return set_size(&c->max_body_bytes, key, v, 1024, (size_t)1 << 32, err);
  if (!strcmp(key, "limits.max_batch")) return set_size(&c->max_batch, key, v, 1, 10000000, err);
  if (!strcmp(key, "limits.request_timeout_s"))
    return set_double(&c->request_timeout_s, key, v, 0.1, 86400, err);
  if (!strcmp(key, "limits.max_in_flight")) return set_size(&c->max_in_flight, key, v, 1, 1000000, err);
  if (!strcmp(key, "batching.max_tokens")) return set_size(&c->batch_tokens, key, v, 1, 100000000, err);
  if (!strcmp(key, "batching.max_wait_ms")) return set_double(&c->batch_wait_ms, key, v, 0, 10000, err);
  if (!strcmp(key, "batching.max_queue")) return set_size(&c->max_queue, key, v, 1, 10000000, err);
  if (!strncmp(key, "gpu.", 4)) {
    /* The device layer's setter, so serve accepts exactly what the QUIVER_GPU* variables
     * mean to the other commands (gpu.enabled: auto/on/off, any case, and the
     * yes/no/true/false/1/0 spellings). */
    if ((st = qv_gpu_config_set(&c->gpu_opts, key + 4, v, err))) return st;
    if (!strcmp(key, "gpu.enabled")) snprintf(c->gpu, sizeof c->gpu, "%s", qv_gpu_mode_name(c->gpu_opts.enabled));
    return QV_OK;
  }
  return qv_fail(err, QV_EINVAL, "unknown setting \"%s\"", key);
}

/* ---- YAML ------------------------------------------------------------------------------ */

/* Walks the event stream with an explicit key path: mapping keys push a segment, values
 * set "a.b.c". Only mappings of scalars and sequences of scalars mean anything here. */
#define YAML_MAX_DEPTH 8

qv_status server_config_load_yaml(server_config *c, const char *text, size_t len, qv_error *err) {
  yaml_parser_t p;
  yaml_event_t ev;
  char path[YAML_MAX_DEPTH][128];
  int expect_key[YAML_MAX_DEPTH + 1] = {0};
  int in_seq = 0, root_seen = 0, done = 0;
  qv_status st = QV_OK;
  if (!yaml_parser_initialize(&p)) return qv_fail(err, QV_ENOMEM, "yaml: out of memory");
  yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
  /* level = -1 before the root mapping; 0 inside it, 1 inside a nested one... */
  int level = -1;
  while (!done) {
    if (!yaml_parser_parse(&p, &ev)) {
      st = qv_fail(err, QV_EFORMAT, "config line %zu: %s", p.problem_mark.line + 1,
                   p.problem ? p.problem : "malformed YAML");
      break;
    }
    size_t line = ev.start_mark.line + 1;
    switch (ev.type) {
    case YAML_STREAM_END_EVENT: done = 1; break;
    case YAML_MAPPING_START_EVENT:
      if (in_seq) { st = qv_fail(err, QV_EFORMAT, "config line %zu: a list may hold only values", line); break; }
      if (level < 0) {
        if (root_seen) { st = qv_fail(err, QV_EFORMAT, "config: more than one document"); break; }
        root_seen = 1;
      } else if (expect_key[level]) {
        st = qv_fail(err, QV_EFORMAT, "config line %zu: a mapping cannot be a key", line);
        break;
      }
      if (level + 1 >= YAML_MAX_DEPTH) { st = qv_fail(err, QV_EFORMAT, "config line %zu: nested too deeply", line); break; }
      if (level >= 0) expect_key[level] = 1; /* the mapping was the value */
      level++;
      expect_key[level] = 1;
      break;
    case YAML_MAPPING_END_EVENT: level--; break;
    case YAML_SEQUENCE_START_EVENT:
      if (level < 0 || expect_key[level] || in_seq) {
        st = qv_fail(err, QV_EFORMAT, "config line %zu: a list is allowed only as a setting's value", line);
        break;
      }
      in_seq = 1;
      break;
    case YAML_SEQUENCE_END_EVENT:
      in_seq = 0;
      expect_key[level] = 1;
      break;
    case YAML_SCALAR_EVENT: {
      const char *val = (const char *)ev.data.scalar.value;
      if (level < 0) { st = qv_fail(err, QV_EFORMAT, "config: the file must be a mapping of settings"); break; }
      if (expect_key[level] && !in_seq) {
        if (strlen(val) >= sizeof path[0]) { st = qv_fail(err, QV_EFORMAT, "config line %zu: key too long", line); break; }
        snprintf(path[level], sizeof path[0], "%s", val);
        expect_key[level] = 0;
        break;
      }
      char key[YAML_MAX_DEPTH * 129] = "";
      size_t kl = 0;
      for (int i = 0; i <= level; i++)
        kl += (size_t)snprintf(key + kl, sizeof key - kl, "%s%s", i ? "." : "", path[i]);
      /* A null value ("key:" or "~") leaves the default alone. */
      int is_null = ev.data.scalar.plain_implicit && (!*val || !strcmp(val, "~") || !strcmp(val, "null"));
      if (!is_null) {
        st = server_config_set(c, key, val, err);
        if (st) qv_error_prefix(err, "config line %zu", line);
      }
      if (!in_seq) expect_key[level] = 1;
      break;
    }
    case YAML_ALIAS_EVENT: st = qv_fail(err, QV_EFORMAT, "config line %zu: aliases are not supported", line); break;
    default: break;
    }
    yaml_event_delete(&ev);
    if (st) break;
  }
  yaml_parser_delete(&p);
  return st;
}

qv_status server_config_load_file(server_config *c, const char *path, qv_error *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return qv_fail(err, errno, "%s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t len = 0, cap = 0;
  qv_status st = QV_OK;
  for (;;) {
    if (len + 4096 > cap) {
      if (cap > ((size_t)1 << 20)) { st = qv_fail(err, QV_EFORMAT, "%s: larger than 1 MiB", path); goto done; }
      char *g = realloc(buf, cap = cap * 2 + 8192);
      if (!g) { st = qv_fail(err, QV_ENOMEM, "%s: out of memory", path); goto done; }
      buf = g;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) break;
  }
  if (ferror(f)) { st = qv_fail(err, QV_EFORMAT, "%s: read error", path); goto done; }
  st = server_config_load_yaml(c, buf ? buf : "", len, err);
  if (st) qv_error_prefix(err, "%s", path);
done:
  free(buf);
  fclose(f);
  return st;
}

static const struct { const char *env, *key; } env_keys[] = {
    {"QUIVER_HOST", "host"},
    {"QUIVER_PORT", "port"},
    {"QUIVER_DATA_DIR", "data_dir"},
    {"QUIVER_MODEL", "model"},
    {"QUIVER_RERANKER", "reranker"},
    {"QUIVER_API_KEY", "auth.api_keys"},
    {"QUIVER_READ_ONLY_API_KEY", "auth.read_only_keys"},
    {"QUIVER_JWT_SECRET", "auth.jwt_secret"},
    {"QUIVER_MAX_BODY_BYTES", "limits.max_body_bytes"},
    {"QUIVER_MAX_BATCH", "limits.max_batch"},
    {"QUIVER_REQUEST_TIMEOUT", "limits.request_timeout_s"},
    {"QUIVER_MAX_IN_FLIGHT", "limits.max_in_flight"},
    {"QUIVER_THREADS", "threads"},
    {"QUIVER_BATCH_TOKENS", "batching.max_tokens"},
    {"QUIVER_BATCH_WAIT_MS", "batching.max_wait_ms"},
    {"QUIVER_MAX_QUEUE", "batching.max_queue"},
};

qv_status server_config_load_env(server_config *c, const char *(*getenv_fn)(const char *),
                                 qv_error *err) {
  for (size_t i = 0; i < sizeof env_keys / sizeof env_keys[0]; i++) {
    const char *v = getenv_fn(env_keys[i].env);
    if (!v || !*v) continue;
    qv_status st = server_config_set(c, env_keys[i].key, v, err);
    if (st) {
      qv_error_prefix(err, "%s", env_keys[i].env);
      return st;
    }
  }
  /* QUIVER_GPU, QUIVER_GPU_DEVICE, QUIVER_GPU_BATCH_SIZE, ...: the device layer's table */
  qv_status st = qv_gpu_config_env_from(&c->gpu_opts, getenv_fn, err);
  if (!st) snprintf(c->gpu, sizeof c->gpu, "%s", qv_gpu_mode_name(c->gpu_opts.enabled));
  return st;
}
