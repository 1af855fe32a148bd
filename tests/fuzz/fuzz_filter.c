/* libFuzzer target for payload filters: parses the input as filter JSON and, when it
 * compiles, evaluates it against fixed payloads and ids, so both the parser and the
 * matcher (paths, arrays, sets, ranges, nested filters) see hostile shapes. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quiver.h"
#include "store/filter.h"

static const char *const payload_text[] = {
    "{}",
    "{\"a\":1,\"b\":\"x\",\"c\":true,\"d\":null,\"e\":[],\"f\":2.5}",
    "{\"city\":\"London\",\"tags\":[\"red\",\"blue\",3,null,[1]],\"price\":12.0}",
    "{\"a\":{\"b\":{\"c\":[1,\"two\",3.0,false]}},\"n\":-9223372036854775808}",
    ("{\"cities\":[{\"name\":\"Paris\",\"pop\":2100000},{\"name\":\"x\",\"pop\":[1,2]},7,null],"
     "\"dinners\":[{\"food\":\"meat\",\"liked\":true},{\"food\":\"fish\"}]}"),
    "{\"a\":[[{\"b\":1}],{\"b\":[null]}],\"s\":\"the quick brown fox\",\"k\":{\"k\":{\"k\":{}}}}",
};
#define NPAYLOADS (sizeof payload_text / sizeof payload_text[0])

static json_t *payloads[NPAYLOADS + 1]; /* the last stays NULL: a point without payload */
static qv_point_id ids[4];

static void setup(void) {
  for (size_t i = 0; i < NPAYLOADS; i++) {
    payloads[i] = json_loads(payload_text[i], 0, NULL);
    if (!payloads[i]) __builtin_trap(); /* a broken literal: fail loudly */
  }
  ids[0].kind = QV_ID_NUM, ids[0].num = 0;
  ids[1].kind = QV_ID_NUM, ids[1].num = 42;
  ids[2].kind = QV_ID_NUM, ids[2].num = UINT64_MAX;
  if (qv_point_id_parse(&ids[3], "936da01f-9abd-4d9d-80c7-02af85c822a8") != QV_OK) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) {
    setup();
    ready = 1;
  }
  qv_filter *f = NULL;
  qv_error err;
  qv_status st = qv_filter_parse(&f, (const char *)data, size, &err);
  if (st != QV_OK) {
    if (f) __builtin_trap(); /* a failed parse must leave *out NULL */
    if (st != QV_EJSON && st != QV_EFILTER && st != QV_ENOMEM) __builtin_trap();
    if (!memchr(err.msg, 0, sizeof err.msg)) __builtin_trap();
    return 0;
  }
  unsigned sink = 0;
  for (size_t p = 0; p <= NPAYLOADS; p++)
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) sink += (unsigned)filter_match(f, &ids[i], payloads[p]);
  sink += (unsigned)filter_match(f, NULL, payloads[1]);
  qv_filter_free(f);
  return sink > 1000000u; /* keeps the matches from being optimized out */
}
