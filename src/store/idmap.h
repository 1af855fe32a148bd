/* Point id -> row index: an open-addressing hash table with linear probing and
 * backward-shift deletion (no tombstones, so probe lengths stay short under churn). */
#ifndef QV_STORE_IDMAP_H
#define QV_STORE_IDMAP_H

#include <stddef.h>
#include <stdint.h>

#include "quiver.h"

typedef struct idmap_slot {
  qv_point_id id;
  uint32_t row;
  uint8_t used;
} idmap_slot;

typedef struct idmap {
  idmap_slot *slots; /* (cap), cap a power of two */
  size_t cap, count;
} idmap;

void idmap_free(idmap *m);
/* Makes room for `more` further entries without failing later; QV_ENOMEM on failure. */
qv_status idmap_reserve(idmap *m, size_t more);
/* Row of id, or -1 when absent. */
int64_t idmap_get(const idmap *m, const qv_point_id *id);
/* Inserts or overwrites; needs room reserved beforehand. */
void idmap_put(idmap *m, const qv_point_id *id, uint32_t row);
void idmap_del(idmap *m, const qv_point_id *id);

#endif
