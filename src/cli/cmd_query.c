/* quiver query: placeholder until its issue lands; its owner replaces this file. */
#include "cli/cli.h"

int cmd_query(int argc, char **argv) {
  (void)argc;
  (void)argv;
  cli_die("\"query\" is not built yet");
}
