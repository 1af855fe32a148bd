/* Vectors in request bodies without a JSON value per number.
 *
 * A Qdrant query or upsert body is mostly one or more lists of a few hundred numbers, and
 * jansson makes a heap object per number: at 384 dimensions parsing took about as long as
 * the HNSW search it feeds. vecjson_rewrite finds the number lists that hold vectors,
 * parses them into floats with strtod, as jansson would have (the same double for the
 * same text, so the same float), and replaces each, in a copy of the body, by a short
 * marker string naming its entry; jansson then parses the rest, and decoders take the
 * floats with vecjson_floats.
 *
 * Which lists: a non-empty list of JSON numbers only, that is the value of a key "query",
 * "nearest" or "vector", an element of a list under "vectors", or a value of an object
 * under "vector" (named vectors); never inside "payload", "payloads" or "filter", whose
 * lists must stay lists. A key spelled with escapes, a list holding anything but numbers,
 * or a body nested deeper than VECJSON_MAX_DEPTH is left alone, and jansson sees it as
 * sent. Callers must read every vector through vecjson_floats (or vecjson_is), since a
 * rewritten vector is a string, not an array.
 *
 * The marker carries a secret drawn once per process, so a client cannot send a string
 * that passes for a rewritten vector. */
#ifndef QV_SERVER_VECJSON_H
#define QV_SERVER_VECJSON_H

#include <jansson.h>
#include <stddef.h>

#include "quiver.h"

#define VECJSON_MAX_DEPTH 128

/* The vectors taken out of one body, parsed: vector k is data[off[k] .. off[k] + len[k]),
 * and bad[k] is the index of its first number outside float range (SIZE_MAX if none). */
typedef struct vecjson {
  float *data;
  size_t *off, *len, *bad;
  size_t n;
} vecjson;

/* A malloc'd, NUL-terminated copy of body (len bytes) in which each vector list is a
 * short marker string naming its entry in *vt, its length in *out_len; NULL when nothing
 * was rewritten (the body is to be parsed as it is; *vt is then empty) or memory ran out.
 * Never fails otherwise: malformed text is copied as it is, and jansson reports it.
 * vecjson_free(vt) after the last vecjson_floats. */
char *vecjson_rewrite(const char *body, size_t len, size_t *out_len, vecjson *vt);
void vecjson_free(vecjson *vt);

/* Whether j is a marker vecjson_rewrite wrote (in any body). */
int vecjson_is(const json_t *j);

/* A marker's vector from vt into out (cap floats): QV_OK with *n set; QV_EDIM with *n set
 * when it does not have exactly cap numbers; QV_ENONFINITE with *n the index of a number
 * outside float range; QV_EINVAL when j is not a marker of vt (vt may be NULL). */
qv_status vecjson_floats(const vecjson *vt, const json_t *j, float *out, size_t cap, size_t *n);

/* One JSON number at p (well-formed: the lists vecjson takes are checked first), as
 * jansson reads it: an integer as strtoll gives it, a real as strtod does (fast paths for
 * the common shapes, bit-identical); *end past it. Returns -1 where jansson would refuse
 * the number (an integer outside int64, a real that overflows). Exported for the tests. */
int vecjson_parse_number(const char *p, char **end, double *out);

#endif
