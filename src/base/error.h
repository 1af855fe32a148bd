/* Status helpers shared by every layer. */
#ifndef QV_BASE_ERROR_H
#define QV_BASE_ERROR_H

#include "quiver.h"

/* Records status and a formatted message in err (if not NULL) and returns status, so
 * callers can write `return qv_fail(err, QV_EDIM, "...", ...);`. */
qv_status qv_fail(qv_error *err, qv_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes an existing message in err with context ("point 7: ..."). */
void qv_error_prefix(qv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
