/* Readers for the vector files `quiver load` accepts. Each parses from memory (the CLI
 * maps the file) so the fuzz targets drive exactly the code users run.
 *
 *  .npy   NumPy format 1.0/2.0/3.0, dtype <f4 or <f8 (converted), C order, shape (n, d)
 *         or (d,); fortran_order true is refused.
 *  .fvecs per row: little-endian int32 d, then d float32; every row the same d.
 *  .jsonl one JSON object per line: {"id": 7 | "uuid", "vector": [...], "payload": {...}};
 *         blank lines are skipped.
 *  ids    one id per line (decimal or UUID), for .npy/.fvecs rows.
 * Errors name the problem and, where one exists, the row or line. */
#ifndef QV_STORE_VECFILE_H
#define QV_STORE_VECFILE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef struct vecfile_matrix {
  float *data; /* (rows, cols), malloc'd, owned */
  size_t rows, cols;
} vecfile_matrix;

void vecfile_matrix_free(vecfile_matrix *m);

qv_status vecfile_read_npy(vecfile_matrix *out, const uint8_t *buf, size_t len, qv_error *err);
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
 * the field. A line of only white space yields QV_NOTFOUND (skip it). */
qv_status vecfile_parse_jsonl_line(vecfile_record *rec, const char *line, size_t len, qv_error *err);

/* Parses an ids file: one id per line, blank lines skipped. *ids is malloc'd. */
qv_status vecfile_read_ids(qv_point_id **ids, size_t *count, const uint8_t *buf, size_t len,
                           qv_error *err);

/* Maps a whole file read-only. An empty file maps to (NULL, 0). */
qv_status vecfile_map(const char *path, const uint8_t **buf, size_t *len, qv_error *err);
void vecfile_unmap(const uint8_t *buf, size_t len);

#endif
