/* libFuzzer target: the input split on '\n' and each line given to
 * vecfile_parse_jsonl_line, then the whole input read as an ids file. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/vecfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  for (size_t off = 0; off <= size;) {
    const char *nl = memchr(text + off, '\n', size - off);
    size_t end = nl ? (size_t)(nl - text) : size;
    vecfile_record rec;
    qv_error err;
    if (vecfile_parse_jsonl_line(&rec, text + off, end - off, &err) == QV_OK) {
      volatile float sink = 0;
      for (size_t i = 0; i < rec.dim; i++) sink += rec.vector[i];
      (void)sink;
      if (rec.payload) (void)strlen(rec.payload);
      free(rec.vector);
      free(rec.payload);
    }
    off = end + 1;
  }
  qv_point_id *ids;
  size_t count;
  qv_error err;
  if (vecfile_read_ids(&ids, &count, data, size, &err) == QV_OK) free(ids);
  return 0;
}
