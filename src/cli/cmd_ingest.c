/* quiver ingest: placeholder until its issue lands; its owner replaces this file. */
#include "cli/cli.h"

int cmd_ingest(int argc, char **argv) {
  (void)argc;
  (void)argv;
  cli_die("\"ingest\" is not built yet");
}
