/* quiver info: placeholder until its issue lands; its owner replaces this file. */
#include "cli/cli.h"

int cmd_info(int argc, char **argv) {
  (void)argc;
  (void)argv;
  cli_die("\"info\" is not built yet");
}
