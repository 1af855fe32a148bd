/* How a point is laid out in LMDB.
 *
 * Key: one byte of kind (0 = integer, 1 = UUID) then the id big-endian (8 bytes) or the
 * UUID's 16 bytes, so LMDB's byte order is id order: integers ascending, then UUIDs.
 *
 * Value: a fixed header, the vector, then the payload's compact JSON text (none when
 * payload_len is 0):
 *   u8  version (1) | u8 flags (0) | u16 reserved (0) | u32 dim | u32 payload_len |
 *   u32 crc32c of everything after this field | f32 vector[dim] | payload bytes
 * All little-endian. The checksum catches a record damaged on disk; LMDB's copy-on-write
 * commit already rules out a half-written one. */
#ifndef QV_STORE_RECORD_H
#define QV_STORE_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

#define RECORD_KEY_MAX 17
#define RECORD_HEADER 16

size_t record_key_encode(uint8_t *key /* RECORD_KEY_MAX */, const qv_point_id *id);
qv_status record_key_decode(qv_point_id *id, const uint8_t *key, size_t len);

size_t record_size(uint32_t dim, size_t payload_len);
/* Writes a record into out (record_size bytes). */
void record_encode(uint8_t *out, const float *vector, uint32_t dim, const char *payload,
                   size_t payload_len);

typedef struct record_view {
  uint32_t dim;
  const uint8_t *vector; /* dim floats, maybe unaligned: copy with memcpy */
  const char *payload;   /* not NUL-terminated; NULL when none */
  size_t payload_len;
} record_view;

/* Validates header, sizes and checksum: QV_ECORRUPT when any is off. */
qv_status record_decode(record_view *v, const uint8_t *data, size_t len);

#endif
