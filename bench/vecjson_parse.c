/* Parsing the floats of a vector body: glibc's strtod (what jansson calls) against
 * vecjson_parse_number (src/server/vecjson.c), side by side in one run on the same
 * numbers, each written as qdrant-client writes a float32 (the double's shortest repr,
 * up to 17 digits). Prints ns per number for each and the ratio, best of 5.
 *
 *   cc -O2 -Isrc -Iinclude bench/vecjson_parse.c build/libquiver_core.a -ljansson -lm \
 *      -o /tmp/vecjson_parse && /tmp/vecjson_parse
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/vecjson.h"

enum { N = 38400, REPEAT = 10 }; /* 100 vectors of 384 */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static char text[N][32];

int main(void) {
  srand(1);
  for (int i = 0; i < N; i++) {
    float v = (float)((rand() / (double)RAND_MAX - 0.5) * 0.2); /* an embedding's range */
    snprintf(text[i], sizeof text[i], "%.17g", (double)v);
  }
  double best_strtod = 1e9, best_vj = 1e9, sum = 0;
  for (int round = 0; round < 5; round++) {
    double t = now();
    for (int r = 0; r < REPEAT; r++)
      for (int i = 0; i < N; i++) {
        char *e;
        sum += strtod(text[i], &e);
      }
    double a = now() - t;
    t = now();
    for (int r = 0; r < REPEAT; r++)
      for (int i = 0; i < N; i++) {
        char *e;
        double d;
        if (vecjson_parse_number(text[i], &e, &d)) return 1;
        sum -= d;
      }
    double b = now() - t;
    if (a < best_strtod) best_strtod = a;
    if (b < best_vj) best_vj = b;
  }
  double per = 1e9 / ((double)N * REPEAT);
  printf("{\"numbers\":%d,\"example\":\"%s\",\"strtod_ns\":%.1f,\"vecjson_ns\":%.1f,\"ratio\":%.2f,"
         "\"check\":%g}\n",
         N, text[0], best_strtod * per, best_vj * per, best_strtod / best_vj, sum);
  return 0;
}
