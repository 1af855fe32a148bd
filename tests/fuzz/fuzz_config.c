/* libFuzzer target for the server's YAML configuration reader: any input either loads or
 * fails with a message, and the key lists stay consistent. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quiver.h"
#include "server/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  server_config c;
  qv_error err = {0};
  server_config_defaults(&c);
  qv_status st = server_config_load_yaml(&c, (const char *)data, size, &err);
  if (st != QV_OK && !err.msg[0]) __builtin_trap();
  for (size_t i = 0; i < c.n_api_keys; i++)
    if (!c.api_keys[i] || !c.api_keys[i][0]) __builtin_trap();
  if (c.port < 0 || c.port > 65535) __builtin_trap();
  server_config_free(&c);
  return 0;
}
