#include "base/mem.h"

#include <stdlib.h>

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
