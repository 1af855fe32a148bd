/* An LD_PRELOAD shim that makes the storage engine's syncs fail, for the failure-injection
 * test: with QV_FAIL_SYNC_AT=N, the Nth fsync/fdatasync call of the process (counting from
 * 1) and every later one return -1 with errno EIO, as a disk that went bad would. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

static atomic_long calls;

static int should_fail(void) {
  const char *at = getenv("QV_FAIL_SYNC_AT");
  long n = atomic_fetch_add(&calls, 1) + 1;
  return at && n >= atol(at);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  if (should_fail()) {
    errno = EIO;
    return -1;
  }
  return real(fd);
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  if (should_fail()) {
    errno = EIO;
    return -1;
  }
  return real(fd);
}
