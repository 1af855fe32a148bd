/* The writer and checker behind tests/integration/test_crash.py.
 *
 *   qv_crash_writer write  DIR FIRST_BATCH SEED   applies batches FIRST_BATCH, +1, ... for
 *                                                 ever, printing "ack B N" after each returns
 *                                                 (N: points it upserted)
 *   qv_crash_writer verify DIR LAST_ACKED SEED    checks the collection against a replay
 *
 * Batch b is a pure function of (SEED, b): an upsert of 1..64 points (integer ids and
 * UUIDs, replacing earlier ones), a delete of some ids, or a delete by payload filter. So
 * the checker can replay batches 0..B and know exactly what must be stored. After a kill,
 * the stored state must equal the replay up to LAST_ACKED, or up to LAST_ACKED+1 (that
 * batch may have committed before its ack was printed); anything else means a lost or
 * half-applied batch. verify prints "state S points P lost L" and exits 0 only when the
 * state is one of the two. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/hash.h"
#include "quiver.h"

#define DIM 16
#define NUM_IDS 1500 /* integer ids 0..1499; the same numbers again as UUIDs */
#define SLOTS (2 * NUM_IDS)
#define BUCKETS 40

static uint64_t seed;

static uint64_t rnd(uint64_t *s) { return qv_mix64(*s += 0x9e3779b97f4a7c15ULL); }

static qv_point_id slot_id(int slot) {
  qv_point_id id = {0};
  int n = slot % NUM_IDS;
  if (slot < NUM_IDS) {
    id.kind = QV_ID_NUM;
    id.num = (uint64_t)n;
  } else {
    id.kind = QV_ID_UUID;
    uint64_t a = qv_mix64((uint64_t)n + 1), b = qv_mix64(a);
    memcpy(id.uuid, &a, 8);
    memcpy(id.uuid + 8, &b, 8);
  }
  return id;
}

static void point_vector(float *v, int slot, int batch) {
  uint64_t s = seed ^ qv_mix64((uint64_t)slot * 1000003u + (uint64_t)batch);
  for (int i = 0; i < DIM; i++) v[i] = (float)((double)(rnd(&s) >> 11) / 9007199254740992.0 * 2 - 1);
}

static char *point_payload(int slot, int batch) {
  uint64_t s = seed ^ qv_mix64((uint64_t)slot * 7919u + (uint64_t)batch + 17);
  int taglen = (int)(rnd(&s) % 120);
  char tag[128];
  for (int i = 0; i < taglen; i++) tag[i] = (char)('a' + rnd(&s) % 26);
  tag[taglen] = 0;
  json_t *j = json_pack("{s:i, s:i, s:i, s:s}", "slot", slot, "batch", batch, "bucket", slot % BUCKETS, "tag", tag);
  char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  return text;
}

typedef enum { OP_UPSERT, OP_DELETE_IDS, OP_DELETE_FILTER } op_kind;

typedef struct batch {
  op_kind op;
  int n;
  int slots[64];
  int bucket;
} batch;

static void make_batch(batch *b, int index) {
  uint64_t s = seed ^ qv_mix64((uint64_t)index * 2654435761u + 5);
  int r = (int)(rnd(&s) % 100);
  b->op = r < 80 ? OP_UPSERT : r < 95 ? OP_DELETE_IDS : OP_DELETE_FILTER;
  b->n = 1 + (int)(rnd(&s) % 64);
  for (int i = 0; i < b->n; i++) b->slots[i] = (int)(rnd(&s) % SLOTS);
  b->bucket = (int)(rnd(&s) % BUCKETS);
}

/* The replayed state: for every slot, the batch that last wrote it, or -1. */
static void replay(int *last, int upto) {
  for (int s = 0; s < SLOTS; s++) last[s] = -1;
  batch b;
  for (int i = 0; i <= upto; i++) {
    make_batch(&b, i);
    for (int k = 0; k < b.n && b.op != OP_DELETE_FILTER; k++) last[b.slots[k]] = b.op == OP_UPSERT ? i : -1;
    if (b.op == OP_DELETE_FILTER)
      for (int s = 0; s < SLOTS; s++)
        if (s % BUCKETS == b.bucket) last[s] = -1;
  }
}

static int fail(const char *what, qv_status st, const qv_error *err) {
  fprintf(stderr, "qv_crash_writer: %s: %s\n", what, err && err->msg[0] ? err->msg : qv_strerror(st));
  return 2;
}

static int do_write(const char *dir, int first) {
  qv_db *db;
  qv_collection *c;
  qv_error err = {0};
  qv_status st = qv_db_open(&db, dir, &err);
  if (st) return fail("open", st, &err);
  qv_collection_config cfg = {.size = DIM, .distance = QV_DIST_EUCLID};
  st = qv_collection_create(db, "crash", &cfg, &err);
  if (st && st != QV_EXISTS) {
    qv_db_close(db);
    return fail("create", st, &err);
  }
  if ((st = qv_collection_open(db, "crash", &c, &err))) {
    qv_db_close(db);
    return fail("open collection", st, &err);
  }
  printf("ready\n");
  fflush(stdout);
  static float vecs[64][DIM];
  for (int i = first;; i++) {
    batch b;
    make_batch(&b, i);
    if (b.op == OP_UPSERT) {
      qv_point pts[64];
      for (int k = 0; k < b.n; k++) {
        point_vector(vecs[k], b.slots[k], i);
        pts[k] = (qv_point){slot_id(b.slots[k]), vecs[k], point_payload(b.slots[k], i)};
      }
      st = qv_collection_upsert(c, pts, (size_t)b.n, &err);
      for (int k = 0; k < b.n; k++) free((void *)pts[k].payload);
    } else if (b.op == OP_DELETE_IDS) {
      qv_point_id ids[64];
      for (int k = 0; k < b.n; k++) ids[k] = slot_id(b.slots[k]);
      st = qv_collection_delete_ids(c, ids, (size_t)b.n, NULL, &err);
    } else {
      char f[96];
      snprintf(f, sizeof f, "{\"must\":[{\"key\":\"bucket\",\"match\":{\"value\":%d}}]}", b.bucket);
      qv_filter *flt;
      st = qv_filter_parse(&flt, f, strlen(f), &err);
      if (!st) st = qv_collection_delete_filter(c, flt, NULL, &err);
      qv_filter_free(flt);
    }
    if (st) {
      /* Report the failure, then show that the handle now refuses writes (sticky). */
      printf("fail %d %d\n", i, st);
      float v[DIM] = {0};
      qv_point p = {slot_id(0), v, NULL};
      printf("retry %d\n", qv_collection_upsert(c, &p, 1, NULL));
      fflush(stdout);
      qv_db_close(db);
      return fail("write", st, &err);
    }
    printf("ack %d %d\n", i, b.op == OP_UPSERT ? b.n : 0);
    fflush(stdout);
  }
}

/* Compares the stored points with the replay up to `upto`; returns mismatching slots. */
static int diff_state(const qv_records *r, const int *last, int upto, int *lost) {
  int mismatches = 0, seen[SLOTS] = {0};
  float v[DIM];
  for (size_t i = 0; i < r->count; i++) {
    const qv_record *rec = &r->items[i];
    json_t *p = json_loads(rec->payload, 0, NULL);
    int slot = (int)json_integer_value(json_object_get(p, "slot"));
    json_decref(p);
    qv_point_id want_id = slot_id(slot >= 0 && slot < SLOTS ? slot : 0);
    if (slot < 0 || slot >= SLOTS || !qv_point_id_equal(&rec->id, &want_id) || last[slot] < 0) {
      mismatches++;
      continue;
    }
    seen[slot] = 1;
    point_vector(v, slot, last[slot]);
    char *want = point_payload(slot, last[slot]);
    if (memcmp(v, rec->vector, sizeof v) != 0 || strcmp(want, rec->payload) != 0) mismatches++;
    free(want);
  }
  *lost = 0;
  for (int s = 0; s < SLOTS; s++)
    if (last[s] >= 0 && !seen[s]) (*lost)++;
  (void)upto;
  return mismatches + *lost;
}

static int do_verify(const char *dir, int acked) {
  qv_db *db;
  qv_collection *c;
  qv_error err = {0};
  qv_status st = qv_db_open(&db, dir, &err);
  if (st) return fail("open", st, &err);
  st = qv_collection_open(db, "crash", &c, &err);
  if (st == QV_NOTFOUND && acked < 0) {
    printf("state -1 points 0 lost 0\n");
    qv_db_close(db);
    return 0;
  }
  if (st) return fail("open collection", st, &err);
  qv_records r;
  qv_point_id next;
  int has_next;
  st = qv_collection_scroll(c, NULL, SLOTS + 1, NULL, 1, 1, &r, &next, &has_next, &err);
  if (st) return fail("scroll", st, &err);
  static int last[SLOTS];
  int lost_a, lost_b, state = -2;
  replay(last, acked);
  int bad_a = diff_state(&r, last, acked, &lost_a);
  replay(last, acked + 1);
  int bad_b = diff_state(&r, last, acked + 1, &lost_b);
  if (bad_a == 0) state = acked;
  else if (bad_b == 0) state = acked + 1;
  int lost = lost_a < lost_b ? lost_a : lost_b;
  printf("state %d points %zu lost %d mismatched %d\n", state, r.count, state == -2 ? lost : 0,
         state == -2 ? (bad_a < bad_b ? bad_a : bad_b) : 0);
  qv_records_free(&r);
  qv_db_close(db);
  return state == -2 ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: qv_crash_writer write|verify DIR BATCH SEED\n");
    return 2;
  }
  seed = strtoull(argv[4], NULL, 10);
  int b = atoi(argv[3]);
  if (strcmp(argv[1], "write") == 0) return do_write(argv[2], b);
  if (strcmp(argv[1], "verify") == 0) return do_verify(argv[2], b);
  return 2;
}
