/* Payload filters: Qdrant's filter language compiled once and evaluated per point.
 *
 * Grammar (JSON): a filter is an object with any of "must", "should", "must_not", each a
 * condition or a list of conditions ("min_should" is not supported). A condition is one of:
 *   {"key": K, "match": {"value": V}}       V string, integer or bool; equality
 *   {"key": K, "match": {"any": [V...]}}    equal to one of
 *   {"key": K, "match": {"except": [V...]}} equal to none of (a missing key matches)
 *   {"key": K, "match": {"text": S}}        string contains S
 *   {"key": K, "range": {"gt","gte","lt","lte": number}}
 *   {"has_id": [ids]}
 *   {"is_empty": {"key": K}}  missing, null, or []
 *   {"is_null": {"key": K}}   present and null
 *   {"nested": {"key": K, "filter": F}}     some element of array K satisfies F on its own
 *   a nested filter object (has must/should/must_not)
 * Keys are dotted paths ("a.b.c"); "a[].b" walks every element of array a, "a[2].b" one;
 * a plain step does not look inside arrays. When a path ends on an array, the condition
 * holds if any element satisfies it (as Qdrant does). A real payload value matches an
 * integer only when exactly equal (3.0 matches 3). Anything else (geo, values_count,
 * datetime ranges, min_should, unknown keys) is QV_EFILTER; filters nest at most 32 deep.
 * Semantics: must = all hold; should = at least one holds (when present); must_not = none
 * holds. An empty filter matches everything. filter.c's header lists the finer choices. */
#ifndef QV_STORE_FILTER_H
#define QV_STORE_FILTER_H

#include <jansson.h>

#include "quiver.h"

/* payload: the point's JSON object, or NULL when it has none. id may be NULL (has_id then
 * never holds); f NULL matches everything. Allocation-free and read-only: safe to call
 * from many threads on one filter. */
int filter_match(const qv_filter *f, const qv_point_id *id, const json_t *payload);

/* Parses from an already decoded JSON value (the server decodes bodies once). */
qv_status filter_from_json(qv_filter **out, const json_t *json, qv_error *err);

#endif
