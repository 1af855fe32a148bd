/* quiver model list|pull: the model registry is the cache directory. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "base/hash.h"
#include "cli/cli.h"

#define DEFAULT_MODEL "all-MiniLM-L6-v2"

static const char usage[] =
    "usage: quiver model list [--json] [--no-verify]\n"
    "       quiver model pull NAME\n"
    "The registry is the cache directory $QUIVER_MODELS (default ~/.cache/quiver/models).\n"
    "list shows each model's kind, dimensions, token limit, pooling, size and whether its\n"
    "files match the SHA-256 sums recorded when it was fetched.\n";

static char *cache_dir(void) {
  const char *env = getenv("QUIVER_MODELS");
  char *s;
  if (env && *env) return strdup(env);
  const char *home = getenv("HOME");
  return asprintf(&s, "%s/.cache/quiver/models", home ? home : ".") < 0 ? NULL : s;
}

/* "verified", "unverified" (no manifest) or "MISMATCH: <file>". */
static const char *check_sums(const char *dir, char *buf, size_t cap, off_t *bytes) {
  char *mp;
  *bytes = 0;
  if (asprintf(&mp, "%s/quiver-manifest.json", dir) < 0) return "unverified";
  json_t *man = json_load_file(mp, 0, NULL);
  free(mp);
  json_t *files = json_object_get(man, "files");
  if (!json_is_object(files)) {
    json_decref(man);
    return "unverified";
  }
  const char *name;
  json_t *want;
  const char *state = "verified";
  json_object_foreach(files, name, want) {
    char *fp, hex[65];
    if (asprintf(&fp, "%s/%s", dir, name) < 0) continue;
    struct stat sb;
    if (stat(fp, &sb) == 0) *bytes += sb.st_size;
    if (qv_sha256_file(fp, hex) || strcmp(hex, json_string_value(want) ? json_string_value(want) : "")) {
      snprintf(buf, cap, "MISMATCH: %s", name);
      state = buf;
    }
    free(fp);
  }
  json_decref(man);
  return state;
}

static const char *pooling_name(qv_pooling p) { return p == QV_POOL_CLS ? "cls" : p == QV_POOL_MAX ? "max" : "mean"; }

static int list(int json_out, int verify) {
  char *cache = cache_dir();
  if (!cache) cli_die("out of memory");
  DIR *d = opendir(cache);
  if (!json_out)
    printf("%-28s %-9s %5s %7s %7s %9s  %-12s %s\n", "NAME", "KIND", "DIMS", "MAXLEN", "POOLING", "SIZE", "CHECKSUM",
           "DEFAULT");
  struct dirent **names = NULL;
  int n = d ? scandir(cache, &names, NULL, alphasort) : 0;
  if (d) closedir(d);
  for (int i = 0; i < n; i++) {
    const char *nm = names[i]->d_name;
    char *dir;
    if (nm[0] == '.' || asprintf(&dir, "%s/%s", cache, nm) < 0) {
      free(names[i]);
      continue;
    }
    qv_model *m;
    qv_error err = {0};
    char sumbuf[256];
    off_t bytes = 0;
    const char *sums = verify ? check_sums(dir, sumbuf, sizeof sumbuf, &bytes) : "not checked";
    int is_default = strcmp(nm, DEFAULT_MODEL) == 0;
    if (qv_model_load(&m, dir, &err) != QV_OK) {
      if (json_out) {
        json_t *j = json_pack("{s:s, s:s}", "name", nm, "error", err.msg);
        char *t = json_dumps(j, JSON_COMPACT);
        puts(t);
        free(t);
        json_decref(j);
      } else {
        printf("%-28s error: %s\n", nm, err.msg);
      }
    } else {
      qv_model_info info;
      qv_model_info_get(m, &info);
      const char *kind = info.kind == QV_MODEL_RERANKER ? "reranker" : "embedding";
      if (json_out)
        printf("{\"name\":\"%s\",\"kind\":\"%s\",\"dims\":%d,\"max_tokens\":%d,\"pooling\":\"%s\","
               "\"normalize\":%s,\"bytes\":%lld,\"checksum\":\"%s\",\"default\":%s}\n",
               nm, kind, info.dims, info.max_tokens, info.kind == QV_MODEL_RERANKER ? "none" : pooling_name(info.pooling),
               info.normalize ? "true" : "false", (long long)bytes, sums, is_default ? "true" : "false");
      else
        printf("%-28s %-9s %5d %7d %7s %8.1fM  %-12s %s\n", nm, kind, info.dims, info.max_tokens,
               info.kind == QV_MODEL_RERANKER ? "-" : pooling_name(info.pooling), (double)bytes / 1e6, sums,
               is_default ? "yes" : "");
      qv_model_free(m);
    }
    free(dir);
    free(names[i]);
  }
  free(names);
  free(cache);
  return 0;
}

/* The fetch script sits in the source tree's scripts/, next to the build directory. */
static int pull(const char *name) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n < 0) cli_die("model pull: cannot find the quiver executable");
  exe[n] = 0;
  char *slash = strrchr(exe, '/');
  if (slash) *slash = 0;
  const char *candidates[] = {"%s/../scripts/fetch_models.py", "%s/../share/quiver/fetch_models.py"};
  for (size_t i = 0; i < 2; i++) {
    char *script;
    if (asprintf(&script, candidates[i], exe) < 0) cli_die("out of memory");
    if (access(script, R_OK) == 0) {
      execlp("python3", "python3", script, name, (char *)NULL);
      cli_die("model pull: cannot run python3: %s", strerror(errno));
    }
    free(script);
  }
  cli_die("model pull: scripts/fetch_models.py not found beside %s", exe);
}

int cmd_model(int argc, char **argv) {
  const char *pos[2] = {0};
  int json_out = 0, no_verify = 0;
  cli_opt opts[] = {{"json", NULL, &json_out}, {"no-verify", NULL, &no_verify}, {0}};
  int npos = cli_parse(argc, argv, opts, pos, 2, usage);
  if (npos < 1) {
    fputs(usage, stderr);
    return 2;
  }
  if (!strcmp(pos[0], "list")) return list(json_out, !no_verify);
  if (!strcmp(pos[0], "pull")) {
    if (npos < 2) cli_die("model pull: missing NAME");
    return pull(pos[1]);
  }
  cli_die("model: unknown subcommand \"%s\" (see --help)", pos[0]);
}
