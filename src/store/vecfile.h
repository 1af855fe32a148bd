/* Readers for the vector files `quiver load` accepts. Each parses from memory (the CLI
 * maps the file) so the fuzz targets drive exactly the code users run.
 *
 *  .npy   NumPy format 1.0/2.0/3.0, dtype <f4 or <f8 (converted), C order, shape (n, d)
 *         or (d,); fortran_order true is refused.
 *  .fvecs per row: little-endian int32 d, then d float32; every row the same d.
 *  .jsonl one JSON object per line: {"id": 7 | "uuid", "vector": [...], "payload": {...}};
 *         blank lines are skipped.
 *  ids    one id per line (decimal or UUID), for .npy/.fvecs rows.
 * Errors name the problem and, where one exists, the row (0-based, as in numpy) or the
 * line (1-based, as in editors); the caller prefixes the path. Codes: QV_EFORMAT for a
 * file that is not what it claims, QV_ETRUNC for one that ends early, QV_EJSON for bad
 * JSON (including bad UTF-8), QV_ERANGE for a value outside its type (an id past
 * 2^64 - 1, a float64 past float32's range).
 *
 * NaN and infinite components are NOT refused here: a .npy/.fvecs file may carry them,
 * and the collection refuses them on upsert naming the point. JSON cannot spell them. */
#ifndef QV_STORE_VECFILE_H
#define QV_STORE_VECFILE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef struct vecfile_matrix {
  float *data; /* (rows, cols), 64-byte aligned, owned: release with vecfile_matrix_free */
  size_t rows, cols;
} vecfile_matrix;

/* Frees data and zeroes m; safe on a zeroed or already-freed matrix. */
void vecfile_matrix_free(vecfile_matrix *m);

/* Both readers zero *out first and leave it zeroed on failure. cols is 1 ..
 * QV_MAX_VECTOR_SIZE. The file's declared size is checked against the bytes present
 * before anything is allocated, and bytes after the data are an error (QV_EFORMAT).
 *
 * .npy: '<f4' or '<f8' only ('<f8' values beyond float32's range are QV_ERANGE);
 * shape (n, d) or (d,) (one row); (0, d) is an empty matrix. */
qv_status vecfile_read_npy(vecfile_matrix *out, const uint8_t *buf, size_t len, qv_error *err);
/* .fvecs: an empty file is QV_EFORMAT; a partial last row is QV_ETRUNC. */
qv_status vecfile_read_fvecs(vecfile_matrix *out, const uint8_t *buf, size_t len, qv_error *err);

/* One JSON-lines record. vector and payload are owned by the caller after a successful
 * call (free both; payload may be NULL). */
typedef struct vecfile_record {
  qv_point_id id;
  float *vector; /* (dim) */
  size_t dim;
  char *payload; /* compact JSON object text, or NULL */
} vecfile_record;

/* Parses one line (without its newline). Returns QV_OK and fills rec, or an error naming
 * the field. A line of only white space yields QV_NOTFOUND (skip it). Strict: the keys are
 * "id" (an integer 0 .. 2^64 - 1 or a UUID string), "vector" (a non-empty array of
 * numbers) and optionally "payload" (an object, or null for none); any other key and
 * duplicate keys are errors. On failure rec is zeroed and nothing needs freeing. */
qv_status vecfile_parse_jsonl_line(vecfile_record *rec, const char *line, size_t len, qv_error *err);

/* Parses an ids file: one id per line, surrounding white space (and so a trailing \r)
 * trimmed, blank lines skipped. *ids is malloc'd (NULL when *count is 0); free it. */
qv_status vecfile_read_ids(qv_point_id **ids, size_t *count, const uint8_t *buf, size_t len,
                           qv_error *err);

/* Maps a whole regular file read-only. An empty file maps to (NULL, 0). Failures carry
 * errno (ENOENT, EACCES, EISDIR, ...) and a message naming the path; other non-regular
 * files are QV_EINVAL. The file must not shrink while mapped (that raises SIGBUS). */
qv_status vecfile_map(const char *path, const uint8_t **buf, size_t *len, qv_error *err);
void vecfile_unmap(const uint8_t *buf, size_t len);

#endif
