/* libFuzzer target: safetensors bytes through st_parse, then every tensor through
 * st_get_f32 with its own shape; each float is read so ASan checks the view covers numel
 * floats. Integer dtypes must fail cleanly (QV_EFORMAT). */
#include <stddef.h>
#include <stdint.h>

#include "model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  st_file *f;
  qv_error err;
  if (st_parse(&f, data, size, &err) != QV_OK) return 0;
  volatile float sink = 0;
  for (size_t i = 0; i < st_count(f); i++) {
    const st_tensor *t = st_at(f, i);
    const float *x;
    for (int pass = 0; pass < 2; pass++) /* the second call takes the cached copy */
      if (st_get_f32(f, t->name, t->shape, t->ndim, &x, &err) == QV_OK)
        for (size_t k = 0; k < t->numel; k++) sink += x[k];
    for (size_t k = 0; k < t->nbytes; k++) sink += t->data[k];
  }
  (void)st_metadata(f, "format");
  (void)sink;
  st_close(f);
  return 0;
}
