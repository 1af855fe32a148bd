/* libFuzzer target: config.json text of a GPT-2 checkpoint through gpt_ckpt_parse_config;
 * a config it accepts must pass gpt_config_check and give a tensor table whose offsets add
 * up to the parameter count. */
#include <stdint.h>
#include <stdlib.h>

#include "gpt/ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  gpt_config c;
  gpt_ckpt_meta meta;
  qv_error err;
  if (gpt_ckpt_parse_config((const char *)data, size, &c, &meta, &err) != QV_OK) return 0;
  if (gpt_config_check(&c, NULL) != QV_OK) abort();
  size_t nt = gpt_tensor_count(&c), total = gpt_param_count(&c);
  gpt_tensor_info last;
  gpt_tensor_at(&c, nt - 1, &last);
  if (last.offset + last.numel != total) abort();
  gpt_ckpt_meta_free(&meta);
  return 0;
}
