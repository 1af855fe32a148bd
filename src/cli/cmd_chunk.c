/* quiver chunk: placeholder until its issue lands; its owner replaces this file. */
#include "cli/cli.h"

int cmd_chunk(int argc, char **argv) {
  (void)argc;
  (void)argv;
  cli_die("\"chunk\" is not built yet");
}
