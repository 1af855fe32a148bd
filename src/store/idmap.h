/* Point id -> row index: an open-addressing hash table with linear probing and
 * backward-shift deletion (no tombstones, so probe lengths stay short under churn).
 *
 * A slot is 8 bytes, the row and 32 bits of the id's hash; the ids themselves are not
 * copied: a probe whose hash bits match compares against the owner's row table, (*ids)[row].
 * So the owner must keep (*ids)[row] equal to the id the map holds for row for as long as
 * it does (set it before idmap_put, change it only after the entry moved or left). A
 * 40-byte slot copying the id cost 105 bytes a point at 100k points (load <= 0.5); this
 * costs 21. */
#ifndef QV_STORE_IDMAP_H
#define QV_STORE_IDMAP_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef struct idmap_slot {
  uint32_t row1; /* row + 1; 0 marks an empty slot */
  uint32_t hash; /* the low 32 bits of the id's hash */
} idmap_slot;

typedef struct idmap {
  idmap_slot *slots;           /* (cap), cap a power of two */
  size_t cap, count;
  qv_point_id *const *ids;     /* the owner's row -> id table, read through this pointer */
} idmap;

/* An empty map whose rows' ids live in *ids (which may move: it is read at every use). */
void idmap_init(idmap *m, qv_point_id *const *ids);
void idmap_free(idmap *m);
/* Makes room for `more` further entries without failing later; QV_ENOMEM on failure. */
qv_status idmap_reserve(idmap *m, size_t more);
/* Row of id, or -1 when absent. */
int64_t idmap_get(const idmap *m, const qv_point_id *id);
/* Inserts or overwrites; needs room reserved beforehand, row < UINT32_MAX and
 * (*ids)[row] equal to *id. */
void idmap_put(idmap *m, const qv_point_id *id, uint32_t row);
void idmap_del(idmap *m, const qv_point_id *id);

#endif
