/* Point ids: unsigned 64-bit integers or UUIDs, parsed and printed as Qdrant does. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver.h"

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static qv_status parse_uuid(qv_point_id *out, const char *s) {
  /* 8-4-4-4-12 hex digits */
  static const int dash_at[] = {8, 13, 18, 23};
  if (strlen(s) != 36) return QV_EINVAL;
  int byte = 0, d = 0;
  for (int i = 0; i < 36; i++) {
    if (d < 4 && i == dash_at[d]) {
      if (s[i] != '-') return QV_EINVAL;
      d++;
      continue;
    }
    int hi = hexval(s[i]), lo = hexval(s[i + 1]);
    if (hi < 0 || lo < 0) return QV_EINVAL;
    out->uuid[byte++] = (uint8_t)(hi << 4 | lo);
    i++;
  }
  out->kind = QV_ID_UUID;
  out->num = 0;
  return QV_OK;
}

qv_status qv_point_id_parse(qv_point_id *out, const char *text) {
  memset(out, 0, sizeof *out);
  if (!text || !*text) return QV_EINVAL;
  if (strlen(text) == 36) return parse_uuid(out, text);
  for (const char *p = text; *p; p++)
    if (*p < '0' || *p > '9') return QV_EINVAL;
  if (strlen(text) > 20) return QV_ERANGE;
  errno = 0;
  char *end;
  unsigned long long v = strtoull(text, &end, 10);
  if (errno == ERANGE || *end) return QV_ERANGE;
  out->kind = QV_ID_NUM;
  out->num = v;
  return QV_OK;
}

void qv_point_id_format(const qv_point_id *id, char *buf) {
  if (id->kind == QV_ID_NUM) {
    snprintf(buf, 37, "%llu", (unsigned long long)id->num);
    return;
  }
  static const char hex[] = "0123456789abcdef";
  char *p = buf;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
    *p++ = hex[id->uuid[i] >> 4];
    *p++ = hex[id->uuid[i] & 15];
  }
  *p = 0;
}

int qv_point_id_equal(const qv_point_id *a, const qv_point_id *b) {
  if (a->kind != b->kind) return 0;
  if (a->kind == QV_ID_NUM) return a->num == b->num;
  return memcmp(a->uuid, b->uuid, 16) == 0;
}
