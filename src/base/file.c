#define _GNU_SOURCE /* nftw */
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"

qv_status qv_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  qv_status st = fsync(fd) ? errno : QV_OK;
  close(fd);
  return st;
}

qv_status qv_fsync_parent(const char *path) {
  char *dir = strdup(path);
  if (!dir) return QV_ENOMEM;
  char *slash = strrchr(dir, '/');
  if (!slash) strcpy(dir, ".");
  else if (slash == dir) dir[1] = 0;
  else *slash = 0;
  qv_status st = qv_fsync_dir(dir);
  free(dir);
  return st;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

qv_status qv_rm_tree(const char *path) {
  return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) ? errno : QV_OK;
}

qv_status qv_read_file(const char *path, char **data, size_t *len, qv_error *err) {
  *data = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return qv_fail(err, errno, "%s: %s", path, strerror(errno));
  size_t cap = (size_t)1 << 16, n = 0;
  char *buf = malloc(cap);
  qv_status st = buf ? QV_OK : QV_ENOMEM;
  while (!st) {
    if (n + 1 >= cap) { /* room for the data and the NUL */
      if (cap >= ((size_t)1 << 31)) {
        st = qv_fail(err, QV_ERANGE, "%s: over 2 GiB", path);
        break;
      }
      char *nb = realloc(buf, cap *= 2);
      if (!nb) {
        st = QV_ENOMEM;
        break;
      }
      buf = nb;
    }
    size_t r = fread(buf + n, 1, cap - 1 - n, f);
    n += r;
    if (r == 0) break;
  }
  if (st == QV_ENOMEM) st = qv_fail(err, QV_ENOMEM, "%s: out of memory", path);
  else if (!st && ferror(f)) st = qv_fail(err, EIO, "%s: read error", path);
  fclose(f);
  if (st) {
    free(buf);
    return st;
  }
  buf[n] = 0;
  *data = buf;
  *len = n;
  return QV_OK;
}
