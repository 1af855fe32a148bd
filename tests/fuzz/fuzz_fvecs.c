/* libFuzzer target: .fvecs bytes through vecfile_read_fvecs. On success every float is
 * read so ASan checks the block matches (rows, cols). */
#include <stddef.h>
#include <stdint.h>

#include "store/vecfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  vecfile_matrix m;
  qv_error err;
  if (vecfile_read_fvecs(&m, data, size, &err) == QV_OK) {
    volatile float sink = 0;
    for (size_t i = 0; i < m.rows * m.cols; i++) sink += m.data[i];
    (void)sink;
    vecfile_matrix_free(&m);
  }
  return 0;
}
