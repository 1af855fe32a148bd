/* Hashing: CRC-32C for checksums of stored records, and a 64-bit mixer for hash tables. */
#ifndef QV_BASE_HASH_H
#define QV_BASE_HASH_H

#include <stddef.h>
#include <stdint.h>

uint32_t qv_crc32c(uint32_t crc, const void *data, size_t len);

/* splitmix64's finalizer: a bijection that spreads every input bit over the output. */
static inline uint64_t qv_mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

/* FNV-1a over n bytes, then qv_mix64: a hash-table key for strings and byte runs. Not for
 * anything stored: use qv_crc32c or SHA-256 there. */
static inline uint64_t qv_hash_bytes(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ULL;
  return qv_mix64(h);
}

#endif

/* SHA-256 of a whole file as 64 lower-case hex digits plus NUL. */
#include "quiver.h"
qv_status qv_sha256_file(const char *path, char hex[65]);
