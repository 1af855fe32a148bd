/* quiver index: placeholder until its issue lands; its owner replaces this file. */
#include "cli/cli.h"

int cmd_index(int argc, char **argv) {
  (void)argc;
  (void)argv;
  cli_die("\"index\" is not built yet");
}
