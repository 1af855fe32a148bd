/* quiver serve: placeholder until its issue lands; its owner replaces this file. */
#include "cli/cli.h"

int cmd_serve(int argc, char **argv) {
  (void)argc;
  (void)argv;
  cli_die("\"serve\" is not built yet");
}
