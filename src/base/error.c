#include "base/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *qv_strerror(qv_status st) {
  if (st > 0) return strerror(st);
  switch (st) {
#define QV_STATUS_CASE(name, value, msg) \
  case value:                            \
    return msg;
    QV_STATUS_MAP(QV_STATUS_CASE)
#undef QV_STATUS_CASE
  }
  return "unknown error";
}

qv_status qv_fail(qv_error *err, qv_status status, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    err->status = status;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return status;
}

void qv_error_prefix(qv_error *err, const char *fmt, ...) {
  if (!err) return;
  char head[160], old[sizeof err->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(head, sizeof head, fmt, ap);
  va_end(ap);
  memcpy(old, err->msg, sizeof old);
  size_t h = strlen(head);
  if (h + 2 >= sizeof err->msg) h = sizeof err->msg - 3;
  memcpy(err->msg, head, h);
  memcpy(err->msg + h, ": ", 2);
  size_t room = sizeof err->msg - h - 3, o = strnlen(old, room);
  memcpy(err->msg + h + 2, old, o);
  err->msg[h + 2 + o] = 0;
}
