/* safetensors reader. Invariants once st_parse returns QV_OK:
 *   1. every tensor's [data, data + nbytes) lies inside the data section of buf, and
 *      nbytes == numel * dtype size, computed without overflow;
 *   2. tensors[] is sorted by name with no duplicates (the header parser rejects duplicate
 *      keys), so st_find is a binary search and st_at(i) walks names in byte order;
 *   3. f32[i] is NULL until st_get_f32 first has to convert tensor i, then owns the float32
 *      copy until st_close; in-place views are never stored there. */
#include "model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"
#include "base/mem.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; in-place F32 views assume a little-endian host"
#endif

/* The reference implementation's limit: a header is names and numbers, and a bigger one is
 * far more likely a corrupt length than a real model. */
#define ST_MAX_HEADER (100u * 1000u * 1000u)

struct st_file {
  const uint8_t *buf; /* the whole image; read-only */
  size_t len;
  void *map; /* non-NULL only when st_open mapped buf */
  size_t map_len;
  st_tensor *tensors; /* sorted by name */
  float **f32;        /* per tensor: converted copy, or NULL */
  size_t n;
  char **meta; /* key, value, key, value, ... */
  size_t nmeta;
};

static const struct {
  const char *name;
  size_t size;
} dtypes[] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2}, [ST_F64] = {"F64", 8},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4}, [ST_I16] = {"I16", 2},   [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},   [ST_BOOL] = {"BOOL", 1},
};

#define NDTYPES (sizeof dtypes / sizeof dtypes[0])

static int cmp_tensor(const void *a, const void *b) {
  return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* "[30522, 384]" into out, truncated to cap. */
static void format_shape(char *out, size_t cap, const int64_t *shape, int ndim) {
  size_t used = 0;
  out[0] = 0;
  for (int i = -1; i <= ndim && used < cap; i++) {
    int k = i < 0 ? snprintf(out + used, cap - used, "[")
            : i == ndim ? snprintf(out + used, cap - used, "]")
                        : snprintf(out + used, cap - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < 0) return;
    used += (size_t)k;
  }
}

/* Reads a JSON integer >= 0 into *out; -1 when the value is not one. */
static int json_nonneg(const json_t *v, int64_t *out) {
  if (!json_is_integer(v)) return -1;
  json_int_t x = json_integer_value(v);
  if (x < 0) return -1;
  *out = (int64_t)x;
  return 0;
}

/* Fills t from one header entry; data_len is the size of the data section, data its start. */
static qv_status parse_tensor(st_tensor *t, const char *name, json_t *entry, const uint8_t *data,
                              size_t data_len, qv_error *err) {
  if (!json_is_object(entry))
    return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": header entry is not an object", name);
  json_t *jdtype = NULL, *jshape = NULL, *joff = NULL;
  const char *key;
  json_t *val;
  json_object_foreach(entry, key, val) {
    if (strcmp(key, "dtype") == 0) jdtype = val;
    else if (strcmp(key, "shape") == 0) jshape = val;
    else if (strcmp(key, "data_offsets") == 0) joff = val;
    else return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": unknown field \"%.100s\"", name, key);
  }
  if (!jdtype || !jshape || !joff)
    return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": missing \"%s\"", name,
                   !jdtype ? "dtype" : !jshape ? "shape" : "data_offsets");

  if (!json_is_string(jdtype))
    return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": dtype is not a string", name);
  const char *dt = json_string_value(jdtype);
  size_t d = 0;
  while (d < NDTYPES && strcmp(dtypes[d].name, dt) != 0) d++;
  if (d == NDTYPES) return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": unknown dtype \"%.40s\"", name, dt);
  t->dtype = (st_dtype)d;

  if (!json_is_array(jshape))
    return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": shape is not an array", name);
  size_t nd = json_array_size(jshape);
  if (nd > ST_MAX_DIMS)
    return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": %zu dimensions (at most %d supported)", name, nd,
                   ST_MAX_DIMS);
  t->ndim = (int)nd;
  size_t numel = 1;
  int overflow = 0;
  for (size_t i = 0; i < nd; i++) {
    if (json_nonneg(json_array_get(jshape, i), &t->shape[i]))
      return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": shape[%zu] is not an integer >= 0", name, i);
    if ((uint64_t)t->shape[i] > SIZE_MAX || qv_mul_overflow(numel, (size_t)t->shape[i], &numel)) overflow = 1;
  }
  size_t nbytes = 0;
  if (overflow || qv_mul_overflow(numel, dtypes[d].size, &nbytes)) {
    char s[200];
    format_shape(s, sizeof s, t->shape, t->ndim);
    return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": shape %s is too large", name, s);
  }
  t->numel = numel;

  int64_t begin, end;
  if (!json_is_array(joff) || json_array_size(joff) != 2 || json_nonneg(json_array_get(joff, 0), &begin) ||
      json_nonneg(json_array_get(joff, 1), &end))
    return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": data_offsets is not [begin, end] with integers >= 0",
                   name);
  if (begin > end)
    return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": data_offsets begin %lld is past end %lld", name,
                   (long long)begin, (long long)end);
  if ((uint64_t)end > data_len)
    return qv_fail(err, QV_ETRUNC, "tensor \"%.200s\": data_offsets end %lld is past the data section (%zu bytes)",
                   name, (long long)end, data_len);
  if ((uint64_t)(end - begin) != nbytes) {
    char s[200];
    format_shape(s, sizeof s, t->shape, t->ndim);
    return qv_fail(err, QV_EFORMAT,
                   "tensor \"%.200s\": data_offsets span %lld bytes but %s %s needs %zu", name,
                   (long long)(end - begin), dtypes[d].name, s, nbytes);
  }
  t->data = data + begin;
  t->nbytes = nbytes;
  t->name = strdup(name);
  if (!t->name) return qv_fail(err, QV_ENOMEM, "out of memory");
  return QV_OK;
}

static qv_status parse_metadata(st_file *f, json_t *meta, qv_error *err) {
  if (json_is_null(meta)) return QV_OK;
  if (!json_is_object(meta)) return qv_fail(err, QV_EFORMAT, "__metadata__ is not an object");
  size_t n = json_object_size(meta);
  f->meta = calloc(n ? 2 * n : 1, sizeof *f->meta);
  if (!f->meta) return qv_fail(err, QV_ENOMEM, "out of memory");
  const char *key;
  json_t *val;
  json_object_foreach(meta, key, val) {
    if (!json_is_string(val))
      return qv_fail(err, QV_EFORMAT, "__metadata__ \"%.200s\" is not a string", key);
    char **kv = f->meta + 2 * f->nmeta;
    kv[0] = strdup(key);
    kv[1] = strdup(json_string_value(val));
    f->nmeta++; /* counted now so st_close frees a half-made pair */
    if (!kv[0] || !kv[1]) return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  return QV_OK;
}

qv_status st_parse(st_file **out, const uint8_t *buf, size_t len, qv_error *err) {
  *out = NULL;
  if (len < 8) return qv_fail(err, QV_ETRUNC, "%zu bytes is shorter than the 8-byte header length", len);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
  if (hlen > ST_MAX_HEADER)
    return qv_fail(err, QV_EFORMAT, "header length %llu is over the %u-byte limit", (unsigned long long)hlen,
                   ST_MAX_HEADER);
  if (hlen > len - 8)
    return qv_fail(err, QV_ETRUNC, "header length %llu is past the end of the file (%zu bytes)",
                   (unsigned long long)hlen, len);

  json_error_t jerr;
  json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
  if (!root)
    return qv_fail(err, QV_EFORMAT, "header is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                   jerr.column);
  qv_status rc = QV_OK;
  st_file *f = NULL;
  if (!json_is_object(root)) {
    rc = qv_fail(err, QV_EFORMAT, "header is not a JSON object");
    goto fail;
  }
  f = calloc(1, sizeof *f);
  if (!f) {
    rc = qv_fail(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  f->buf = buf;
  f->len = len;
  size_t cap = json_object_size(root);
  f->tensors = calloc(cap ? cap : 1, sizeof *f->tensors);
  f->f32 = calloc(cap ? cap : 1, sizeof *f->f32);
  if (!f->tensors || !f->f32) {
    rc = qv_fail(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  const uint8_t *data = buf + 8 + hlen;
  size_t data_len = len - 8 - (size_t)hlen;
  const char *key;
  json_t *val;
  json_object_foreach(root, key, val) {
    if (strcmp(key, "__metadata__") == 0) {
      rc = parse_metadata(f, val, err);
    } else {
      rc = parse_tensor(&f->tensors[f->n], key, val, data, data_len, err);
      if (rc == QV_OK) f->n++;
    }
    if (rc) goto fail;
  }
  qsort(f->tensors, f->n, sizeof *f->tensors, cmp_tensor);
  json_decref(root);
  *out = f;
  return QV_OK;

fail:
  json_decref(root);
  st_close(f);
  return rc;
}

qv_status st_open(st_file **out, const char *path, qv_error *err) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return qv_fail(err, errno, "open %s: %s", path, strerror(errno));
  struct stat sb;
  qv_status rc = QV_OK;
  void *map = NULL;
  size_t len = 0;
  if (fstat(fd, &sb) != 0) {
    rc = qv_fail(err, errno, "stat %s: %s", path, strerror(errno));
    goto done;
  }
  if (!S_ISREG(sb.st_mode)) {
    rc = qv_fail(err, QV_EFORMAT, "%s: not a regular file", path);
    goto done;
  }
  len = (size_t)sb.st_size;
  if (len > 0) { /* mmap refuses length 0; st_parse reports the empty file */
    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      map = NULL;
      rc = qv_fail(err, errno, "mmap %s: %s", path, strerror(errno));
      goto done;
    }
  }
  rc = st_parse(out, map ? map : (const void *)"", len, err);
  if (rc) {
    qv_error_prefix(err, "%s", path);
    if (map) munmap(map, len);
    goto done;
  }
  (*out)->map = map;
  (*out)->map_len = len;
done:
  close(fd);
  return rc;
}

void st_close(st_file *f) {
  if (!f) return;
  for (size_t i = 0; i < f->n; i++) {
    free(f->tensors[i].name);
    qv_aligned_free(f->f32[i]);
  }
  for (size_t i = 0; i < 2 * f->nmeta; i++) free(f->meta[i]);
  free(f->meta);
  free(f->tensors);
  free(f->f32);
  if (f->map) munmap(f->map, f->map_len);
  free(f);
}

size_t st_count(const st_file *f) { return f->n; }

const st_tensor *st_at(const st_file *f, size_t i) { return i < f->n ? &f->tensors[i] : NULL; }

const st_tensor *st_find(const st_file *f, const char *name) {
  st_tensor key = {.name = (char *)name};
  return bsearch(&key, f->tensors, f->n, sizeof *f->tensors, cmp_tensor);
}

const char *st_metadata(const st_file *f, const char *key) {
  for (size_t i = 0; i < f->nmeta; i++)
    if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
  return NULL;
}

/* IEEE 754 binary16 -> binary32; exact for every input, NaN payloads kept. */
static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else { /* subnormal: mant * 2^-24; normalise into a binary32 normal */
      int e = -1;
      do {
        mant <<= 1;
        e++;
      } while (!(mant & 0x400u));
      bits = sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float x;
  memcpy(&x, &bits, sizeof x);
  return x;
}

static float bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float x;
  memcpy(&x, &bits, sizeof x);
  return x;
}

qv_status st_get_f32(st_file *f, const char *name, const int64_t *shape, int ndim, const float **out,
                     qv_error *err) {
  *out = NULL;
  const st_tensor *t = st_find(f, name);
  if (!t) return qv_fail(err, QV_NOTFOUND, "tensor \"%.200s\" is not in the file", name);
  int same = ndim == t->ndim;
  for (int i = 0; same && i < ndim; i++) same = shape[i] == t->shape[i];
  if (!same) {
    char want[160], have[160];
    format_shape(want, sizeof want, shape, ndim > 0 ? ndim : 0);
    format_shape(have, sizeof have, t->shape, t->ndim);
    return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": shape %s, expected %s", name, have, want);
  }
  if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
    return qv_fail(err, QV_EFORMAT, "tensor \"%.200s\": dtype %s cannot be read as float32", name,
                   dtypes[t->dtype].name);
  if (t->dtype == ST_F32 && (uintptr_t)t->data % sizeof(float) == 0) {
    *out = (const float *)(const void *)t->data;
    return QV_OK;
  }
  size_t i = (size_t)(t - f->tensors);
  if (!f->f32[i]) {
    size_t size;
    float *dst = qv_mul_overflow(t->numel, sizeof(float), &size) ? NULL : qv_aligned_alloc(size);
    if (!dst) return qv_fail(err, QV_ENOMEM, "tensor \"%.200s\": out of memory converting to float32", name);
    const uint8_t *src = t->data;
    if (t->dtype == ST_F32) {
      memcpy(dst, src, t->nbytes);
    } else {
      float (*conv)(uint16_t) = t->dtype == ST_F16 ? f16_to_f32 : bf16_to_f32;
      for (size_t k = 0; k < t->numel; k++) dst[k] = conv((uint16_t)(src[2 * k] | src[2 * k + 1] << 8));
    }
    f->f32[i] = dst;
  }
  *out = f->f32[i];
  return QV_OK;
}
