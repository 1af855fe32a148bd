#include "store/record.h"

#include <string.h>

#include "base/hash.h"

static void put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

size_t record_key_encode(uint8_t *key, const qv_point_id *id) {
  key[0] = id->kind;
  if (id->kind == QV_ID_UUID) {
    memcpy(key + 1, id->uuid, 16);
    return 17;
  }
  for (int i = 0; i < 8; i++) key[1 + i] = (uint8_t)(id->num >> (56 - 8 * i));
  return 9;
}

qv_status record_key_decode(qv_point_id *id, const uint8_t *key, size_t len) {
  memset(id, 0, sizeof *id);
  if (len == 9 && key[0] == QV_ID_NUM) {
    id->kind = QV_ID_NUM;
    for (int i = 0; i < 8; i++) id->num = id->num << 8 | key[1 + i];
    return QV_OK;
  }
  if (len == 17 && key[0] == QV_ID_UUID) {
    id->kind = QV_ID_UUID;
    memcpy(id->uuid, key + 1, 16);
    return QV_OK;
  }
  return QV_ECORRUPT;
}

size_t record_size(uint32_t dim, size_t payload_len) {
  return RECORD_HEADER + (size_t)dim * sizeof(float) + payload_len;
}

void record_encode(uint8_t *out, const float *vector, uint32_t dim, const char *payload,
                   size_t payload_len) {
  out[0] = 1;
  out[1] = 0;
  out[2] = out[3] = 0;
  put_u32(out + 4, dim);
  put_u32(out + 8, (uint32_t)payload_len);
  /* floats are stored in host order: every platform Quiver builds for is little-endian */
  memcpy(out + RECORD_HEADER, vector, (size_t)dim * sizeof(float));
  if (payload_len) memcpy(out + RECORD_HEADER + (size_t)dim * sizeof(float), payload, payload_len);
  size_t body = (size_t)dim * sizeof(float) + payload_len;
  put_u32(out + 12, qv_crc32c(0, out + RECORD_HEADER, body));
}

qv_status record_decode(record_view *v, const uint8_t *data, size_t len) {
  if (len < RECORD_HEADER || data[0] != 1) return QV_ECORRUPT;
  uint32_t dim = get_u32(data + 4), plen = get_u32(data + 8);
  if (record_size(dim, plen) != len) return QV_ECORRUPT;
  if (get_u32(data + 12) != qv_crc32c(0, data + RECORD_HEADER, len - RECORD_HEADER))
    return QV_ECORRUPT;
  v->dim = dim;
  v->vector = data + RECORD_HEADER;
  v->payload_len = plen;
  v->payload = plen ? (const char *)data + RECORD_HEADER + (size_t)dim * sizeof(float) : NULL;
  return QV_OK;
}
