/* The data directory: collections live in <dir>/collections/<name>/, each its own LMDB
 * environment.
 *
 * Invariants:
 *  1. One process at a time: qv_db_open takes an exclusive flock on <dir>/LOCK and holds
 *     it until qv_db_close; a second opener gets QV_ELOCKED at once.
 *  2. A collection appears whole or not at all: it is built in collections/.tmp-<name>-<pid>
 *     (environment and configuration committed), then renamed into place and the parent
 *     fsynced (qv_collection_create). rename is atomic, so a crash leaves either no
 *     collection or a complete one, plus maybe a .tmp-* directory that the next open removes.
 *  3. Deletion renames the collection to .trash-<name>-<pid> (atomic, fsynced) before
 *     removing files, so a crash mid-removal never leaves a half-deleted collection under
 *     its name.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"
#include "base/file.h"
#include "base/log.h"
#include "store/collection.h"

typedef struct open_entry {
  char *name;
  qv_collection *c;
  struct open_entry *next;
} open_entry;

struct qv_db {
  char *path, *coll_dir;   /* read-only */
  int lock_fd;
  pthread_mutex_t mu;      /* guards `open` and create/delete */
  open_entry *open;
};

static const char *dist_names[] = {"Cosine", "Dot", "Euclid", "Manhattan"};

qv_status qv_distance_parse(qv_distance *out, const char *name) {
  for (int i = 0; i < 4; i++)
    if (name && strcasecmp(name, dist_names[i]) == 0) {
      *out = (qv_distance)i;
      return QV_OK;
    }
  return QV_EINVAL;
}

const char *qv_distance_name(qv_distance d) {
  return (unsigned)d <= QV_DIST_MANHATTAN ? dist_names[d] : "unknown";
}

static char *join(const char *a, const char *b) {
  char *s;
  return asprintf(&s, "%s/%s", a, b) < 0 ? NULL : s;
}

/* Removes what an interrupted create or delete left behind (invariants 2 and 3). */
static void sweep_leftovers(const char *coll_dir) {
  DIR *d = opendir(coll_dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, ".tmp-", 5) && strncmp(e->d_name, ".trash-", 7)) continue;
    char *p = join(coll_dir, e->d_name);
    if (p && qv_rm_tree(p) == QV_OK) LOG_INFO("removed leftover %s", p);
    free(p);
  }
  closedir(d);
}

qv_status qv_db_open(qv_db **out, const char *path, qv_error *err) {
  qv_db *db = calloc(1, sizeof *db);
  if (!db) return qv_fail(err, QV_ENOMEM, "out of memory");
  db->lock_fd = -1;
  pthread_mutex_init(&db->mu, NULL);
  qv_status st = QV_OK;
  char *lock_path = NULL;
  db->path = strdup(path);
  db->coll_dir = join(path, "collections");
  lock_path = join(path, "LOCK");
  if (!db->path || !db->coll_dir || !lock_path) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
    goto fail;
  }
  if (mkdir(path, 0755) && errno != EEXIST) {
    st = qv_fail(err, errno, "cannot create data directory %s: %s", path, strerror(errno));
    goto fail;
  }
  db->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (db->lock_fd < 0) {
    st = qv_fail(err, errno, "cannot open %s: %s", lock_path, strerror(errno));
    goto fail;
  }
  if (flock(db->lock_fd, LOCK_EX | LOCK_NB)) {
    st = errno == EWOULDBLOCK
             ? qv_fail(err, QV_ELOCKED, "data directory %s is in use by another process", path)
             : qv_fail(err, errno, "cannot lock %s: %s", lock_path, strerror(errno));
    goto fail;
  }
  if (mkdir(db->coll_dir, 0755) && errno != EEXIST) {
    st = qv_fail(err, errno, "cannot create %s: %s", db->coll_dir, strerror(errno));
    goto fail;
  }
  sweep_leftovers(db->coll_dir);
  free(lock_path);
  *out = db;
  return QV_OK;
fail:
  free(lock_path);
  qv_db_close(db);
  return st;
}

void qv_db_close(qv_db *db) {
  if (!db) return;
  while (db->open) {
    open_entry *e = db->open;
    db->open = e->next;
    collection_close(e->c);
    free(e->name);
    free(e);
  }
  if (db->lock_fd >= 0) close(db->lock_fd); /* releases the flock */
  pthread_mutex_destroy(&db->mu);
  free(db->path);
  free(db->coll_dir);
  free(db);
}

static int exists_dir(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

qv_status qv_collection_create(qv_db *db, const char *name, const qv_collection_config *cfg,
                               qv_error *err) {
  qv_status st = collection_name_check(name, err);
  if (st) return st;
  char *final = join(db->coll_dir, name), *tmp = NULL;
  if (!final || asprintf(&tmp, "%s/.tmp-%s-%d", db->coll_dir, name, (int)getpid()) < 0) {
    free(final);
    return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  pthread_mutex_lock(&db->mu);
  if (exists_dir(final)) {
    st = qv_fail(err, QV_EXISTS, "collection %s already exists", name);
    goto out;
  }
  qv_rm_tree(tmp);
  if (mkdir(tmp, 0755)) {
    st = qv_fail(err, errno, "cannot create %s: %s", tmp, strerror(errno));
    goto out;
  }
  st = collection_init_dir(tmp, name, cfg, err);
  if (!st && rename(tmp, final)) st = qv_fail(err, errno, "cannot rename %s: %s", tmp, strerror(errno));
  if (!st && (st = qv_fsync_dir(db->coll_dir)))
    st = qv_fail(err, st, "cannot fsync %s: %s", db->coll_dir, strerror(st));
  if (st) qv_rm_tree(tmp);
out:
  pthread_mutex_unlock(&db->mu);
  free(final);
  free(tmp);
  return st;
}

qv_status qv_collection_delete(qv_db *db, const char *name, qv_error *err) {
  qv_status st = collection_name_check(name, err);
  if (st) return st;
  char *final = join(db->coll_dir, name), *trash = NULL;
  if (!final || asprintf(&trash, "%s/.trash-%s-%d", db->coll_dir, name, (int)getpid()) < 0) {
    free(final);
    return qv_fail(err, QV_ENOMEM, "out of memory");
  }
  pthread_mutex_lock(&db->mu);
  if (!exists_dir(final)) {
    st = qv_fail(err, QV_NOTFOUND, "collection %s does not exist", name);
    goto out;
  }
  /* Close our handle first: handles to a deleted collection are invalid. */
  for (open_entry **pp = &db->open; *pp; pp = &(*pp)->next) {
    if (strcmp((*pp)->name, name) == 0) {
      open_entry *e = *pp;
      *pp = e->next;
      collection_close(e->c);
      free(e->name);
      free(e);
      break;
    }
  }
  qv_rm_tree(trash);
  if (rename(final, trash)) {
    st = qv_fail(err, errno, "cannot rename %s: %s", final, strerror(errno));
    goto out;
  }
  qv_fsync_dir(db->coll_dir);
  if (qv_rm_tree(trash)) LOG_WARN("could not remove %s; it will be removed at the next open", trash);
out:
  pthread_mutex_unlock(&db->mu);
  free(final);
  free(trash);
  return st;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

qv_status qv_collection_list(qv_db *db, char ***names, size_t *count, qv_error *err) {
  *names = NULL;
  *count = 0;
  DIR *d = opendir(db->coll_dir);
  if (!d) return qv_fail(err, errno, "cannot read %s: %s", db->coll_dir, strerror(errno));
  size_t n = 0, cap = 0;
  char **v = NULL;
  qv_status st = QV_OK;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' || collection_name_check(e->d_name, NULL)) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      char **nv = realloc(v, cap * sizeof *nv);
      if (!nv) {
        st = QV_ENOMEM;
        break;
      }
      v = nv;
    }
    if (!(v[n] = strdup(e->d_name))) {
      st = QV_ENOMEM;
      break;
    }
    n++;
  }
  closedir(d);
  if (st) {
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
    return qv_fail(err, st, "out of memory");
  }
  if (n) qsort(v, n, sizeof *v, cmp_str);
  *names = v;
  *count = n;
  return QV_OK;
}

qv_status qv_collection_open(qv_db *db, const char *name, qv_collection **out, qv_error *err) {
  qv_status st = collection_name_check(name, err);
  if (st) return st;
  pthread_mutex_lock(&db->mu);
  for (open_entry *e = db->open; e; e = e->next)
    if (strcmp(e->name, name) == 0) {
      *out = e->c;
      pthread_mutex_unlock(&db->mu);
      return QV_OK;
    }
  char *dir = join(db->coll_dir, name);
  open_entry *e = calloc(1, sizeof *e);
  if (!dir || !e || !(e->name = strdup(name))) {
    st = qv_fail(err, QV_ENOMEM, "out of memory");
  } else if (!exists_dir(dir)) {
    st = qv_fail(err, QV_NOTFOUND, "collection %s does not exist", name);
  } else {
    st = collection_open_dir(&e->c, dir, name, err);
  }
  if (st) {
    if (e) free(e->name);
    free(e);
  } else {
    e->next = db->open;
    db->open = e;
    *out = e->c;
  }
  free(dir);
  pthread_mutex_unlock(&db->mu);
  return st;
}
