#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "cli/cli.h"
#include "compute/device.h"
#include "store/vecfile.h"

_Noreturn void cli_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("quiver: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

void cli_check(qv_status st, const qv_error *err, const char *what) {
  if (st == QV_OK) return;
  if (err && err->msg[0]) cli_die("%s: %s", what, err->msg);
  cli_die("%s: %s", what, qv_strerror(st));
}

int cli_parse(int argc, char **argv, const cli_opt *opts, const char **pos, int max_pos,
              const char *usage) {
  int npos = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(usage, stdout);
      exit(0);
    }
    if (strncmp(a, "--", 2) != 0 || strcmp(a, "--") == 0) {
      if (strcmp(a, "--") == 0) a = ++i < argc ? argv[i] : NULL;
      if (!a) break;
      if (npos == max_pos) cli_die("%s: unexpected argument \"%s\" (see --help)", argv[0], a);
      pos[npos++] = a;
      continue;
    }
    const char *eq = strchr(a, '=');
    size_t nlen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
    const cli_opt *o = opts;
    for (; o && o->name; o++)
      if (strlen(o->name) == nlen && strncmp(o->name, a + 2, nlen) == 0) break;
    if (!o || !o->name) cli_die("%s: unknown option %.*s (see --help)", argv[0], (int)nlen + 2, a);
    if (o->flag) {
      if (eq) cli_die("%s: --%s takes no value", argv[0], o->name);
      *o->flag = 1;
    } else if (eq) {
      *o->value = eq + 1;
    } else {
      if (i + 1 >= argc) cli_die("%s: --%s needs a value", argv[0], o->name);
      *o->value = argv[++i];
    }
  }
  return npos;
}

long long cli_int(const char *s, const char *what, long long lo, long long hi) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi)
    cli_die("%s must be an integer in %lld..%lld, got \"%s\"", what, lo, hi, s);
  return v;
}

qv_status cli_gpu_setup(const char *mode, const char *device_id, qv_error *err) {
  qv_gpu_config cfg;
  qv_gpu_config_default(&cfg);
  cli_check(qv_gpu_config_env(&cfg, err), err, "gpu settings");
  if (mode && qv_gpu_mode_parse(&cfg.enabled, mode)) cli_die("--gpu \"%s\": expected auto, on or off", mode);
  if (device_id) cfg.device_id = (int)cli_int(device_id, "--gpu-device", 0, 1023);
  return qv_gpu_config_apply(&cfg, err);
}

double cli_double(const char *s, const char *what) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(v)) cli_die("%s must be a finite number, got \"%s\"", what, s);
  return v;
}

const char *cli_data_dir(const char *flag) {
  if (flag) return flag;
  const char *env = getenv("QUIVER_DATA_DIR");
  return env && *env ? env : "./quiver-data";
}

qv_db *cli_open_db(const char *flag) {
  qv_db *db;
  qv_error err = {0};
  cli_check(qv_db_open(&db, cli_data_dir(flag), &err), &err, "opening the data directory");
  return db;
}

qv_collection *cli_open_collection(qv_db *db, const char *name) {
  qv_collection *c;
  qv_error err = {0};
  cli_check(qv_collection_open(db, name, &c, &err), &err, "opening the collection");
  return c;
}

qv_filter *cli_filter(const char *json) {
  if (!json) return NULL;
  qv_filter *f;
  qv_error err = {0};
  cli_check(qv_filter_parse(&f, json, strlen(json), &err), &err, "--filter");
  return f;
}

static void print_float(FILE *f, float v) {
  /* %.9g round-trips every float32 */
  fprintf(f, "%.9g", (double)v);
}

void cli_print_record(FILE *f, const qv_record *r, size_t dim, int scored) {
  char id[40];
  qv_point_id_format(&r->id, id);
  if (r->id.kind == QV_ID_UUID) fprintf(f, "{\"id\":\"%s\",", id);
  else fprintf(f, "{\"id\":%s,", id);
  if (scored) {
    fputs("\"version\":0,\"score\":", f);
    print_float(f, r->score);
    fputc(',', f);
  }
  fprintf(f, "\"payload\":%s,\"vector\":", r->payload ? r->payload : "null");
  if (r->vector) {
    fputc('[', f);
    for (size_t i = 0; i < dim; i++) {
      if (i) fputc(',', f);
      print_float(f, r->vector[i]);
    }
    fputc(']', f);
  } else {
    fputs("null", f);
  }
  fputc('}', f);
}

vecfile_matrix cli_read_npy(const char *path) {
  const uint8_t *buf;
  size_t len;
  qv_error err = {0};
  vecfile_matrix m = {0};
  cli_check(vecfile_map(path, &buf, &len, &err), &err, path);
  cli_check(vecfile_read_npy(&m, buf, len, &err), &err, path);
  vecfile_unmap(buf, len);
  return m;
}

void cli_write_npy(const char *path, const char *descr, const void *data, size_t elem_size, size_t rows,
                   size_t cols) {
  FILE *f = fopen(path, "wb");
  if (!f) cli_die("%s: cannot write", path);
  char header[160];
  int hl = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (%zu, %zu), }", descr,
                    rows, cols);
  /* magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes */
  int pad = (64 - (10 + hl + 1) % 64) % 64;
  unsigned short hlen = (unsigned short)(hl + pad + 1);
  int ok = fwrite("\x93NUMPY\x01\x00", 1, 8, f) == 8 && fputc(hlen & 0xff, f) != EOF && fputc(hlen >> 8, f) != EOF &&
           fwrite(header, 1, (size_t)hl, f) == (size_t)hl;
  for (int i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF && fwrite(data, elem_size, rows * cols, f) == rows * cols;
  if (fclose(f) || !ok) cli_die("%s: write failed", path);
}

float *cli_parse_vector(const char *s, size_t *dim) {
  size_t cap = 16, n = 0;
  float *v = malloc(cap * sizeof *v);
  if (!v) cli_die("out of memory");
  const char *p = s;
  for (;;) {
    char *end;
    errno = 0;
    float x = strtof(p, &end);
    if (end == p) cli_die("--vector: expected a number at \"%.20s\"", p);
    if (errno == ERANGE && isinf(x)) cli_die("--vector: component %zu is out of float range", n);
    if (!isfinite(x)) cli_die("--vector: component %zu is %s", n, isnan(x) ? "NaN" : "infinite");
    if (n == cap && !(v = realloc(v, (cap *= 2) * sizeof *v))) cli_die("out of memory");
    v[n++] = x;
    p = end;
    while (*p == ' ') p++;
    if (!*p) break;
    if (*p != ',') cli_die("--vector: expected ',' at \"%.20s\"", p);
    p++;
  }
  if (*dim && n != *dim) cli_die("--vector has %zu components; the collection's vectors have %zu", n, *dim);
  *dim = n;
  return v;
}

double cli_now(void) { return qv_monotonic_s(); }

void cli_progress_start(cli_progress *p, const char *label, const char *unit, size_t total) {
  p->label = label;
  p->unit = unit;
  p->total = total;
  p->start = p->last = cli_now();
  p->tty = isatty(STDERR_FILENO);
  p->note[0] = 0;
}

static void progress_line(cli_progress *p, size_t done, double now) {
  double el = now - p->start, rate = el > 0 ? (double)done / el : 0;
  fprintf(stderr, "\r%s %zu/%zu %s  %.0f %s/s", p->label, done, p->total, p->unit, rate, p->unit);
  if (p->note[0]) fprintf(stderr, "  %s", p->note);
  if (rate > 0 && done < p->total) fprintf(stderr, "  ETA %.0fs", (double)(p->total - done) / rate);
  fputs("\033[K", stderr);
}

int cli_progress_due(const cli_progress *p) { return p->tty && cli_now() - p->last >= 0.1; }

void cli_progress_update(cli_progress *p, size_t done) {
  if (!cli_progress_due(p)) return;
  double now = cli_now();
  p->last = now;
  progress_line(p, done, now);
}

void cli_progress_end(cli_progress *p, size_t done) {
  if (!p->tty) return;
  progress_line(p, done, cli_now());
  fputc('\n', stderr);
}
