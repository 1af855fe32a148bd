#define _GNU_SOURCE /* nftw */
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
