/* File-system helpers for durable writes and cleanup. */
#ifndef QV_BASE_FILE_H
#define QV_BASE_FILE_H

#include "quiver.h"

/* fsyncs the directory itself, so entries created, renamed or removed in it are durable.
 * Returns errno values. */
qv_status qv_fsync_dir(const char *dir);
/* fsyncs the directory holding path ("." for a bare name): after rename(tmp, path), this
 * makes the new name durable. Returns errno values or QV_ENOMEM. */
qv_status qv_fsync_parent(const char *path);
/* Removes path and everything under it; symlinks are removed, not followed. Returns the
 * errno of the first failure, QV_OK when all is gone. */
qv_status qv_rm_tree(const char *path);
/* Reads a whole file into *data (malloc'd, NUL-terminated after *len bytes). errno values
 * from open (ENOENT for a missing file), EIO for a read error, QV_ERANGE past 2 GiB,
 * QV_ENOMEM; err names the path. */
qv_status qv_read_file(const char *path, char **data, size_t *len, qv_error *err);

#endif
