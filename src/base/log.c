#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int level = -1;
static const char *names[] = {"error", "warn", "info", "debug"};

static int env_level(void) {
  const char *s = getenv("QUIVER_LOG");
  if (!s) return QV_LOG_WARN;
  for (int i = 0; i < 4; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return QV_LOG_WARN;
}

void qv_log_set_level(qv_log_level l) { level = (int)l; }

void qv_log(qv_log_level l, const char *fmt, ...) {
  if (level < 0) level = env_level();
  if ((int)l > level) return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "quiver: %s: %s\n", names[l], line);
}
