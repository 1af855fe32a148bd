/* Pieces shared by `quiver chunk`, `ingest` and `query`: the embedding model (with the
 * hint to pull it when it is missing) and the chunker options. */
#ifndef QV_CLI_TEXT_CLI_H
#define QV_CLI_TEXT_CLI_H

#include "cli/cli.h"
#include "text/text.h"

/* Loads a model by name or folder; dies with "run `quiver model pull NAME`" when the
 * cache lacks it. */
qv_model *tcli_load_model(const char *name);

/* The chunker options' values as given (NULL = default). */
typedef struct tcli_chunk_args {
  const char *chunker, *size, *min, *max, *overlap;
} tcli_chunk_args;

#define TCLI_CHUNK_OPTS(a)                                                              \
  {"chunker", &(a).chunker, NULL}, {"size", &(a).size, NULL}, {"min", &(a).min, NULL}, \
      {"max", &(a).max, NULL}, {"overlap", &(a).overlap, NULL}

#define TCLI_CHUNK_USAGE                                                                          \
  "  --chunker KIND     fixed | sentence | structure | adaptive (default structure)\n"            \
  "  --size N           tokens per chunk for fixed, sentence, structure (default 200)\n"         \
  "  --min N, --max N   adaptive chunk sizes in tokens (default 64, 254)\n"                       \
  "  --overlap R        share of a chunk's tokens the next one repeats, 0..0.9 (default 0)\n"

/* Builds the chunker configuration; dies on a bad value. max_tokens is the model's input
 * limit with special tokens. */
text_chunk_config tcli_chunk_config(const tcli_chunk_args *a, int max_tokens);

#endif
