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

void idmap_free(idmap *m) {
  free(m->slots);
  memset(m, 0, sizeof *m);
}

static void insert_slot(idmap_slot *slots, size_t cap, const idmap_slot *s) {
  size_t i = id_hash(&s->id) & (cap - 1);
  while (slots[i].used) i = (i + 1) & (cap - 1);
  slots[i] = *s;
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
  for (size_t i = 0; i < m->cap; i++)
    if (m->slots[i].used) insert_slot(slots, cap, &m->slots[i]);
  free(m->slots);
  m->slots = slots;
  m->cap = cap;
  return QV_OK;
}

static size_t find(const idmap *m, const qv_point_id *id, int *found) {
  size_t i = id_hash(id) & (m->cap - 1);
  while (m->slots[i].used) {
    if (qv_point_id_equal(&m->slots[i].id, id)) {
      *found = 1;
      return i;
    }
    i = (i + 1) & (m->cap - 1);
  }
  *found = 0;
  return i;
}

int64_t idmap_get(const idmap *m, const qv_point_id *id) {
  if (!m->cap) return -1;
  int found;
  size_t i = find(m, id, &found);
  return found ? (int64_t)m->slots[i].row : -1;
}

void idmap_put(idmap *m, const qv_point_id *id, uint32_t row) {
  int found;
  size_t i = find(m, id, &found);
  if (!found) {
    m->slots[i].used = 1;
    m->slots[i].id = *id;
    m->count++;
  }
  m->slots[i].row = row;
}

void idmap_del(idmap *m, const qv_point_id *id) {
  if (!m->cap) return;
  int found;
  size_t i = find(m, id, &found);
  if (!found) return;
  m->slots[i].used = 0;
  m->count--;
  /* Backward shift: pull later members of the probe run into the hole when their home
   * slot lies at or before it, so lookups never stop early at the gap. */
  size_t hole = i, j = i;
  for (;;) {
    j = (j + 1) & (m->cap - 1);
    if (!m->slots[j].used) break;
    size_t home = id_hash(&m->slots[j].id) & (m->cap - 1);
    size_t dist_hole = (hole - home) & (m->cap - 1), dist_j = (j - home) & (m->cap - 1);
    if (dist_hole < dist_j) {
      m->slots[hole] = m->slots[j];
      m->slots[j].used = 0;
      hole = j;
    }
  }
}
