/* Shared pieces of the `quiver` command line: option parsing, errors, output. Only this
 * layer may exit the process. */
#ifndef QV_CLI_H
#define QV_CLI_H

#include <stddef.h>
#include <stdio.h>

#include "quiver.h"

/* Prints "quiver: <message>" on stderr and exits 1. */
_Noreturn void cli_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Dies with err's message when st is not QV_OK. */
void cli_check(qv_status st, const qv_error *err, const char *what);

/* An option: "--name VALUE" / "--name=VALUE" when value is set, a flag when flag is set. */
typedef struct cli_opt {
  const char *name;
  const char **value;
  int *flag;
} cli_opt;

/* Parses argv[1..] (argv[0] is the command's name). Positional arguments go to pos (at most
 * max_pos, else dies). "--help" prints usage and exits 0. Returns the count of positionals. */
int cli_parse(int argc, char **argv, const cli_opt *opts, const char **pos, int max_pos,
              const char *usage);

long long cli_int(const char *s, const char *what, long long lo, long long hi);

/* Applies the GPU settings (compute/device.h): the QUIVER_GPU* variables, then --gpu MODE
 * and --gpu-device N where given (NULL: not given); dies on a bad value. Returns
 * qv_gpu_config_apply's status: QV_EDEVICE when the mode is on and no GPU works. */
qv_status cli_gpu_setup(const char *mode, const char *device_id, qv_error *err);
double cli_double(const char *s, const char *what);

/* The data directory from --data-dir, else $QUIVER_DATA_DIR, else ./quiver-data. */
const char *cli_data_dir(const char *flag);
qv_db *cli_open_db(const char *flag);
qv_collection *cli_open_collection(qv_db *db, const char *name);
qv_filter *cli_filter(const char *json); /* NULL for NULL */

/* Writes one record as Qdrant's Record (score < 0 means none) or ScoredPoint. */
void cli_print_record(FILE *f, const qv_record *r, size_t dim, int scored);
/* Reads a float .npy matrix (vecfile_read_npy); dies with the file's name on error. The
 * caller frees it with vecfile_matrix_free. */
struct vecfile_matrix cli_read_npy(const char *path);

/* Writes a 2-D .npy file (format 1.0, C order): descr is "<f4" or "<i8", data holds
 * rows x cols elements of elem_size bytes. Dies with the path on any write error. */
void cli_write_npy(const char *path, const char *descr, const void *data, size_t elem_size, size_t rows,
                   size_t cols);

/* Parses "1.5,2,-3" into exactly `dim` floats (or any count when dim is 0). Dies on error. */
float *cli_parse_vector(const char *s, size_t *dim);

/* Progress on stderr when it is a terminal: "label done/total  rate unit/s  ETA". Quiet
 * when stderr is not a terminal. */
typedef struct cli_progress {
  const char *label, *unit;
  size_t total;
  double start, last;
  int tty;
  char note[64]; /* (optional) shown after the rate, e.g. a second rate; set between updates */
} cli_progress;
void cli_progress_start(cli_progress *p, const char *label, const char *unit, size_t total);
void cli_progress_update(cli_progress *p, size_t done);
/* Whether the next cli_progress_update would draw (a terminal, and the last line is old
 * enough): for callers whose note costs something to compute. */
int cli_progress_due(const cli_progress *p);
void cli_progress_end(cli_progress *p, size_t done);
double cli_now(void);

int cmd_collection(int argc, char **argv);
int cmd_load(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_points(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_ann(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_embed(int argc, char **argv);
int cmd_rerank(int argc, char **argv);
int cmd_model(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_index(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_ingest(int argc, char **argv);
int cmd_chunk(int argc, char **argv);
int cmd_query(int argc, char **argv);
int cmd_gpt(int argc, char **argv);
int cmd_gpt_tokenizer(int argc, char **argv);
int cmd_gpt_generate(int argc, char **argv);
int cmd_gpt_chat(int argc, char **argv);
int cmd_gpt_train(int argc, char **argv);
int cmd_gpt_list(int argc, char **argv);

#endif
