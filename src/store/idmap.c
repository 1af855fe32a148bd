#include "store/idmap.h"

#include <stdlib.h>
#include <string.h>

#include "base/hash.h"

static uint64_t id_hash(const qv_point_id *id) {
  if (id->kind == QV_ID_NUM) return qv_mix64(id->num);
  uint64_t a, b;
  memcpy(&a, id->uuid, 8);
  memcpy(&b, id->uuid + 8, 8);
  return qv_mix64(a ^ qv_mix64(b) ^ 0x9e3779b97f4a7c15ULL);
}

void idmap_init(idmap *m, qv_point_id *const *ids) {
  memset(m, 0, sizeof *m);
  m->ids = ids;
}

void idmap_free(idmap *m) {
  free(m->slots);
  m->slots = NULL;
  m->cap = m->count = 0;
}

/* The slot a member's probe starts from. Past 2^32 slots the 32 stored hash bits are too
 * few, and the hash is computed again from the member's id. */
static size_t home_of(const idmap *m, const idmap_slot *s) {
  if (m->cap <= ((size_t)1 << 32)) return s->hash & (m->cap - 1);
  return id_hash(&(*m->ids)[s->row1 - 1]) & (m->cap - 1);
}

qv_status idmap_reserve(idmap *m, size_t more) {
  size_t need = m->count + more;
  if (need < m->count) return QV_ENOMEM;
  /* load factor <= 0.5 keeps linear probing short */
  if (m->cap >= 16 && need <= m->cap / 2) return QV_OK;
  size_t cap = m->cap ? m->cap : 16;
  while (cap / 2 < need) {
    if (cap > SIZE_MAX / 2 / sizeof(idmap_slot)) return QV_ENOMEM;
    cap *= 2;
  }
  idmap_slot *slots = calloc(cap, sizeof *slots);
  if (!slots) return QV_ENOMEM;
  idmap old = *m;
  m->slots = slots;
  m->cap = cap;
  for (size_t i = 0; i < old.cap; i++) {
    if (!old.slots[i].row1) continue;
    size_t j = home_of(m, &old.slots[i]);
    while (slots[j].row1) j = (j + 1) & (cap - 1);
    slots[j] = old.slots[i];
  }
  free(old.slots);
  return QV_OK;
}

static size_t find(const idmap *m, const qv_point_id *id, int *found) {
  uint64_t h = id_hash(id);
  uint32_t h32 = (uint32_t)h;
  size_t i = h & (m->cap - 1);
  for (const idmap_slot *s; (s = &m->slots[i])->row1; i = (i + 1) & (m->cap - 1))
    if (s->hash == h32 && qv_point_id_equal(&(*m->ids)[s->row1 - 1], id)) {
      *found = 1;
      return i;
    }
  *found = 0;
  return i;
}

int64_t idmap_get(const idmap *m, const qv_point_id *id) {
  if (!m->cap) return -1;
  int found;
  size_t i = find(m, id, &found);
  return found ? (int64_t)m->slots[i].row1 - 1 : -1;
}

void idmap_put(idmap *m, const qv_point_id *id, uint32_t row) {
  int found;
  size_t i = find(m, id, &found);
  if (!found) {
    m->slots[i].hash = (uint32_t)id_hash(id);
    m->count++;
  }
  m->slots[i].row1 = row + 1;
}

void idmap_del(idmap *m, const qv_point_id *id) {
  if (!m->cap) return;
  int found;
  size_t i = find(m, id, &found);
  if (!found) return;
  m->slots[i].row1 = 0;
  m->count--;
  /* Backward shift: pull later members of the probe run into the hole when their home
   * slot lies at or before it, so lookups never stop early at the gap. */
  size_t hole = i, j = i;
  for (;;) {
    j = (j + 1) & (m->cap - 1);
    if (!m->slots[j].row1) break;
    size_t home = home_of(m, &m->slots[j]);
    size_t dist_hole = (hole - home) & (m->cap - 1), dist_j = (j - home) & (m->cap - 1);
    if (dist_hole < dist_j) {
      m->slots[hole] = m->slots[j];
      m->slots[j].row1 = 0;
      hole = j;
    }
  }
}
