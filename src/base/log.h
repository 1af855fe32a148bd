/* The logger: the only way library layers print. Lines go to stderr as
 * "quiver: <level>: <message>". The level comes from QUIVER_LOG (error|warn|info|debug). */
#ifndef QV_BASE_LOG_H
#define QV_BASE_LOG_H

typedef enum { QV_LOG_ERROR = 0, QV_LOG_WARN = 1, QV_LOG_INFO = 2, QV_LOG_DEBUG = 3 } qv_log_level;

void qv_log(qv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void qv_log_set_level(qv_log_level level);

#define LOG_ERROR(...) qv_log(QV_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) qv_log(QV_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) qv_log(QV_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) qv_log(QV_LOG_DEBUG, __VA_ARGS__)

#endif
