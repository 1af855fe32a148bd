/* safetensors files: an 8-byte little-endian header length, a JSON header naming each
 * tensor's dtype, shape and [begin, end) byte offsets into the data section, then the data.
 *
 * st_open maps the file read-only; tensors stay in the map. st_get_f32 hands out float32
 * views: F32 data that is 4-byte aligned is used in place (no copy); F16, BF16 and
 * misaligned F32 are converted once into buffers the file owns. Every offset, size and
 * shape is validated against the file before anything points into it, so a truncated or
 * corrupt file is an error (QV_EFORMAT / QV_ETRUNC naming the tensor), never a crash. */
#ifndef QV_MODEL_SAFETENSORS_H
#define QV_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

#define ST_MAX_DIMS 8

typedef enum { ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL } st_dtype;

typedef struct st_tensor {
  char *name;
  st_dtype dtype;
  int ndim;
  int64_t shape[ST_MAX_DIMS];
  size_t numel;
  const uint8_t *data; /* into the map; nbytes long */
  size_t nbytes;
} st_tensor;

typedef struct st_file st_file;

qv_status st_open(st_file **out, const char *path, qv_error *err);
/* Parses a file image already in memory (the fuzz target's entry); buf must outlive the
 * handle. QV_ETRUNC when the header or a tensor's data runs past len, QV_EFORMAT for
 * anything else malformed (bad JSON, unknown dtype or field, a span that does not match
 * dtype x shape, duplicate names); *out is NULL on failure. */
qv_status st_parse(st_file **out, const uint8_t *buf, size_t len, qv_error *err);
void st_close(st_file *f);

size_t st_count(const st_file *f);
/* Tensors in byte order of their names (not file order); NULL past the end. */
const st_tensor *st_at(const st_file *f, size_t i);
const st_tensor *st_find(const st_file *f, const char *name);
/* The "__metadata__" string value for key, or NULL. */
const char *st_metadata(const st_file *f, const char *key);

/* A float32 view of tensor `name`, checked to have exactly the shape given (ndim dims).
 * QV_NOTFOUND when absent, QV_EFORMAT on a shape or dtype mismatch (message names both).
 * The view lives until st_close: aligned F32 points into the map (4-byte aligned only);
 * converted copies are 64-byte aligned and made on the first call only. Not thread-safe
 * for a tensor's first conversion: load weights from one thread. */
qv_status st_get_f32(st_file *f, const char *name, const int64_t *shape, int ndim, const float **out,
                     qv_error *err);

#endif
