/* Aligned allocation for vectors: 64-byte alignment so AVX-512 loads never split lines. */
#ifndef QV_BASE_MEM_H
#define QV_BASE_MEM_H

#include <stddef.h>

#define QV_ALIGN 64

/* NULL on failure or when size overflows; size 0 returns a valid (empty) block. */
void *qv_aligned_alloc(size_t size);
void qv_aligned_free(void *p);
/* Multiplies with overflow check: 0 on success, -1 on overflow. */
int qv_mul_overflow(size_t a, size_t b, size_t *out);
/* The process's resident set in bytes (/proc/self/statm), or -1 where it cannot be read. */
long qv_resident_bytes(void);

#endif
