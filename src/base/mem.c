#include "base/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void *qv_aligned_alloc(size_t size) {
  void *p = NULL;
  size_t rounded = (size + QV_ALIGN - 1) & ~(size_t)(QV_ALIGN - 1);
  if (rounded < size) return NULL;
  if (posix_memalign(&p, QV_ALIGN, rounded ? rounded : QV_ALIGN) != 0) return NULL;
  return p;
}

void qv_aligned_free(void *p) { free(p); }

int qv_mul_overflow(size_t a, size_t b, size_t *out) {
  return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}

long qv_resident_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) return -1;
  long size = 0, rss = -1;
  if (fscanf(f, "%ld %ld", &size, &rss) != 2) rss = -1;
  fclose(f);
  long page = sysconf(_SC_PAGESIZE);
  return rss < 0 || page <= 0 ? -1 : rss * page;
}
