#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>

#include "base/hash.h"

qv_status qv_sha256_file(const char *path, char hex[65]) {
  FILE *f = fopen(path, "rb");
  if (!f) return errno;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  qv_status st = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ? QV_OK : QV_ENOMEM;
  static __thread unsigned char buf[1 << 16];
  size_t n;
  while (!st && (n = fread(buf, 1, sizeof buf, f)) > 0)
    if (!EVP_DigestUpdate(ctx, buf, n)) st = QV_EINVAL;
  if (!st && ferror(f)) st = EIO;
  unsigned char md[32];
  unsigned int mdlen = 0;
  if (!st && !EVP_DigestFinal_ex(ctx, md, &mdlen)) st = QV_EINVAL;
  EVP_MD_CTX_free(ctx);
  fclose(f);
  if (st) return st;
  static const char digits[] = "0123456789abcdef";
  for (unsigned i = 0; i < 32; i++) {
    hex[2 * i] = digits[md[i] >> 4];
    hex[2 * i + 1] = digits[md[i] & 15];
  }
  hex[64] = 0;
  return QV_OK;
}
