/* Quiver: self-hosted semantic search. The public C API.
 *
 * Handles are opaque. Every call that can fail returns a qv_status: 0 is success,
 * negative values are Quiver's own codes (see QV_STATUS_MAP), positive values are errno
 * passed through. Calls that can fail for a reason worth telling a person also take an
 * optional qv_error * that receives one line naming the problem; pass NULL to skip it.
 */
#ifndef QUIVER_H
#define QUIVER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QV_VERSION "0.1.0"

/* name, value, message */
#define QV_STATUS_MAP(X)                                                        \
  X(OK, 0, "success")                                                           \
  X(EINVAL, -1, "invalid argument")                                             \
  X(ENOMEM, -2, "out of memory")                                                \
  X(NOTFOUND, -3, "not found")                                                  \
  X(EXISTS, -4, "already exists")                                               \
  X(EDIM, -5, "vector dimension does not match")                                \
  X(ENONFINITE, -6, "vector has a NaN or infinite component")                   \
  X(EJSON, -7, "malformed JSON")                                                \
  X(EFILTER, -8, "invalid filter")                                              \
  X(ENAME, -9, "invalid name")                                                  \
  X(EFORMAT, -10, "malformed file")                                             \
  X(ETRUNC, -11, "file is truncated")                                           \
  X(ECORRUPT, -12, "stored data is corrupt")                                    \
  X(ELOCKED, -13, "data directory is locked by another process")                \
  X(ESTORE, -14, "storage engine error")                                        \
  X(ESTICKY, -15, "storage failed earlier; reopen the collection")              \
  X(EUNSUPPORTED, -16, "not supported")                                         \
  X(ERANGE, -17, "value out of range")                                          \
  X(ETOOLONG, -18, "input is longer than the model accepts")                   \
  X(EBUSY, -19, "overloaded; try again later")                                 \
  X(EDEVICE, -20, "accelerator failed")                                         \
  X(ENOMODEL, -21, "no model is loaded for this")

typedef enum {
#define QV_STATUS_ENUM(name, value, msg) QV_##name = value,
  QV_STATUS_MAP(QV_STATUS_ENUM)
#undef QV_STATUS_ENUM
} qv_status_code;

typedef int qv_status;

/* The message for a status; for positive values, strerror's. Never NULL. */
const char *qv_strerror(qv_status st);

/* One line naming what went wrong, filled by calls that take it. */
typedef struct qv_error {
  qv_status status;
  char msg[480];
} qv_error;

/* ---- Points ------------------------------------------------------------------------- */

typedef enum { QV_ID_NUM = 0, QV_ID_UUID = 1 } qv_id_kind;

/* An id is an unsigned 64-bit integer or a UUID, as Qdrant accepts. */
typedef struct qv_point_id {
  uint8_t kind; /* qv_id_kind */
  uint8_t uuid[16];
  uint64_t num;
} qv_point_id;

/* Parses "123" or a UUID in its canonical 36-character form (any case). */
qv_status qv_point_id_parse(qv_point_id *out, const char *text);
/* Writes the id as decimal digits or the lower-case canonical UUID; buf >= 37 bytes. */
void qv_point_id_format(const qv_point_id *id, char *buf);
int qv_point_id_equal(const qv_point_id *a, const qv_point_id *b);

typedef enum {
  QV_DIST_COSINE = 0, /* vectors normalized on insert; score = dot product, higher first */
  QV_DIST_DOT = 1,    /* score = dot product, higher first */
  QV_DIST_EUCLID = 2, /* score = L2 distance, lower first */
  QV_DIST_MANHATTAN = 3 /* score = L1 distance, lower first */
} qv_distance;

/* "Cosine", "Dot", "Euclid", "Manhattan" (Qdrant's spelling, any case). */
qv_status qv_distance_parse(qv_distance *out, const char *name);
const char *qv_distance_name(qv_distance d);

typedef struct qv_point {
  qv_point_id id;
  const float *vector;  /* (size) */
  const char *payload;  /* a JSON object as text, or NULL for none */
} qv_point;

/* A point returned by search, get or scroll. vector and payload are owned by the
 * record and released by qv_records_free. */
typedef struct qv_record {
  qv_point_id id;
  float score;     /* search only */
  float *vector;   /* (size), when asked for; else NULL */
  char *payload;   /* compact JSON object text, when asked for; else NULL */
} qv_record;

typedef struct qv_records {
  qv_record *items;
  size_t count;
} qv_records;

void qv_records_free(qv_records *r);

/* ---- Filters ------------------------------------------------------------------------ */

typedef struct qv_filter qv_filter;

/* Compiles a Qdrant filter (must / should / must_not, nested; match value / any / except;
 * range; has_id; is_empty; is_null) from JSON text. */
qv_status qv_filter_parse(qv_filter **out, const char *json, size_t len, qv_error *err);
void qv_filter_free(qv_filter *f);

/* ---- Collections -------------------------------------------------------------------- */

typedef struct qv_db qv_db;               /* a data directory */
typedef struct qv_collection qv_collection;

#define QV_MAX_VECTOR_SIZE 65536
#define QV_MAX_NAME 128

/* Opens (creating if needed) a data directory and locks it against other processes. */
qv_status qv_db_open(qv_db **out, const char *path, qv_error *err);
void qv_db_close(qv_db *db);

/* Qdrant's hnsw_config. Zero fields take the defaults (m 16, ef_construct 100,
 * full_scan_threshold 10000). */
typedef struct qv_hnsw_config {
  uint32_t m;                    /* links per node on upper levels; 2m on level 0 */
  uint32_t ef_construct;         /* candidate list size while building */
  uint32_t full_scan_threshold;  /* in KB of vectors, as Qdrant: below it search is exact */
} qv_hnsw_config;

typedef enum { QV_QUANT_NONE = 0, QV_QUANT_INT8 = 1 } qv_quant_type;

/* Qdrant's quantization_config.scalar. */
typedef struct qv_quant_config {
  qv_quant_type type;
  float quantile;                /* 0 = default 0.99; in (0.5, 1] */
  int always_ram;
} qv_quant_config;

#define QV_MAX_VECTOR_NAME 64

typedef struct qv_collection_config {
  uint32_t size;        /* 1 .. QV_MAX_VECTOR_SIZE */
  qv_distance distance;
  qv_hnsw_config hnsw;
  qv_quant_config quant;
  /* The name of the collection's one vector when it was created with named vectors
   * ({"name": {size, distance}}); "" for an unnamed vector. */
  char vector_name[QV_MAX_VECTOR_NAME + 1];
  /* The embedding model that turns text into this collection's vectors ("" = none
   * chosen; text queries then use the server's default model). */
  char model[QV_MAX_NAME + 1];
} qv_collection_config;

qv_status qv_collection_create(qv_db *db, const char *name, const qv_collection_config *cfg,
                               qv_error *err);
qv_status qv_collection_delete(qv_db *db, const char *name, qv_error *err);
/* Names of the collections, sorted; free each and the array with free(). */
qv_status qv_collection_list(qv_db *db, char ***names, size_t *count, qv_error *err);
/* Collections are opened once and shared: the handle belongs to db, do not close it. */
qv_status qv_collection_open(qv_db *db, const char *name, qv_collection **out, qv_error *err);

void qv_collection_config_get(const qv_collection *c, qv_collection_config *out);
size_t qv_collection_count_all(const qv_collection *c);

/* Changes the parts of the configuration that may change after creation: hnsw and quant
 * (size, distance, vector_name are fixed; a request to change them is QV_EINVAL). The
 * index is rebuilt in the background when its parameters change. Durable on return. */
qv_status qv_collection_update_config(qv_collection *c, const qv_collection_config *cfg,
                                      qv_error *err);

/* What `collection info` and Qdrant's CollectionInfo report. */
typedef struct qv_collection_stats {
  size_t points;           /* live points */
  size_t indexed;          /* points reachable through the HNSW graph */
  size_t tombstones;       /* deleted points still linked in the graph */
  int indexing;            /* a background build or repair is running */
  size_t vector_bytes;     /* float32 vectors held beside the graph, resident pages counted:
                            * all of them without a graph or with an int8 one; with a
                            * float32 graph only those not in it yet (the graph holds the
                            * rest, counted in graph_bytes) */
  size_t graph_bytes;      /* HNSW links and levels (and float32 vectors, see above) */
  size_t quantized_bytes;  /* int8 codes, when quantization is on */
} qv_collection_stats;
void qv_collection_stats_get(qv_collection *c, qv_collection_stats *out);

/* A counter that grows with every committed write (upsert, delete, payload change), so
 * derived structures (a keyword index, a cache) can tell they are stale. */
uint64_t qv_collection_version(const qv_collection *c);

/* Inserts or replaces n points as one transaction: all are stored, or none. Returns only
 * after the batch is durable. */
qv_status qv_collection_upsert(qv_collection *c, const qv_point *points, size_t n, qv_error *err);
/* Removes the given ids (missing ids are ignored); *deleted gets how many were removed. */
qv_status qv_collection_delete_ids(qv_collection *c, const qv_point_id *ids, size_t n,
                                   size_t *deleted, qv_error *err);
qv_status qv_collection_delete_filter(qv_collection *c, const qv_filter *f, size_t *deleted,
                                      qv_error *err);

/* Payload changes, as Qdrant's set_payload / overwrite_payload / delete_payload /
 * clear_payload, on the given ids (missing ids are ignored) or, when ids is NULL, on the
 * points matching f (NULL = all). Set merges the keys of `payload` (a JSON object) into
 * each point's payload; overwrite replaces it. Delete removes `keys` (top-level names).
 * One transaction each; *updated (may be NULL) gets how many points changed. */
typedef enum { QV_PAYLOAD_SET = 0, QV_PAYLOAD_OVERWRITE = 1 } qv_payload_mode;
qv_status qv_collection_set_payload(qv_collection *c, const qv_point_id *ids, size_t n,
                                    const qv_filter *f, const char *payload, qv_payload_mode mode,
                                    size_t *updated, qv_error *err);
qv_status qv_collection_delete_payload(qv_collection *c, const qv_point_id *ids, size_t n,
                                       const qv_filter *f, const char *const *keys, size_t nkeys,
                                       size_t *updated, qv_error *err);

/* Records for the ids that exist, in the order asked. */
qv_status qv_collection_get(qv_collection *c, const qv_point_id *ids, size_t n, int with_payload,
                            int with_vector, qv_records *out, qv_error *err);
qv_status qv_collection_count(qv_collection *c, const qv_filter *f, size_t *out, qv_error *err);

/* Points in id order from *offset (inclusive; NULL = start), at most limit of them.
 * next_offset gets the id to continue from and *has_next whether there is one. */
qv_status qv_collection_scroll(qv_collection *c, const qv_point_id *offset, size_t limit,
                               const qv_filter *f, int with_payload, int with_vector,
                               qv_records *out, qv_point_id *next_offset, int *has_next,
                               qv_error *err);

typedef struct qv_search_params {
  size_t limit;              /* top-k; 0 means 10 */
  size_t offset;             /* skip this many of the best */
  const qv_filter *filter;   /* or NULL */
  int has_score_threshold;
  float score_threshold;     /* keep score >= t (Cosine, Dot) or distance <= t (Euclid, Manhattan) */
  int with_payload;
  int with_vector;
  uint32_t hnsw_ef;          /* 0 = max(limit + offset, default ef 64) */
  int exact;                 /* 1 = exact scan, bypassing the index */
} qv_search_params;

/* Search for nq queries (nq, size); out gets nq result lists. HNSW when the collection is
 * over full_scan_threshold and not p->exact; an exact scan otherwise, and for filters the
 * index estimates as selective. */
qv_status qv_collection_search(qv_collection *c, const float *queries, size_t nq,
                               const qv_search_params *p, qv_records *out, qv_error *err);

/* ---- Models ------------------------------------------------------------------------- */

typedef struct qv_model qv_model;

typedef enum { QV_MODEL_EMBEDDING = 0, QV_MODEL_RERANKER = 1 } qv_model_kind;
typedef enum { QV_POOL_MEAN = 0, QV_POOL_CLS = 1, QV_POOL_MAX = 2 } qv_pooling;

typedef struct qv_model_info {
  const char *name;     /* the folder's name */
  qv_model_kind kind;
  int dims;             /* embedding size (hidden size for rerankers) */
  int max_tokens;       /* inputs are cut to this many tokens, special tokens included */
  qv_pooling pooling;   /* embedding models */
  int normalize;        /* embeddings are L2-normalized */
} qv_model_info;

/* Loads a sentence-transformers folder (config.json, model.safetensors, tokenizer.json,
 * modules.json, 1_Pooling/config.json, ...) or a cross-encoder folder
 * (BertForSequenceClassification). `path` is a directory, or a model name looked up in
 * $QUIVER_MODELS (default ~/.cache/quiver/models). Weights stay memory-mapped. */
qv_status qv_model_load(qv_model **out, const char *path, qv_error *err);
void qv_model_free(qv_model *m);
void qv_model_info_get(const qv_model *m, qv_model_info *out);

/* Embeds n texts (UTF-8; lens may be NULL for NUL-terminated) into out (n, dims). With
 * truncate, inputs are cut to max_tokens; without it, a longer input is QV_ETOOLONG naming
 * its index and token count. Thread-safe; concurrent calls are serialized per model. */
qv_status qv_model_encode(qv_model *m, const char *const *texts, const size_t *lens, size_t n,
                          int truncate, float *out, qv_error *err);

/* Scores n (query, document) pairs with a cross-encoder: logits (n), raw (the usual
 * relevance score is sigmoid(logit)). Truncation as for qv_model_encode. */
qv_status qv_model_rerank(qv_model *m, const char *query, const char *const *docs, size_t n,
                          int truncate, float *logits, qv_error *err);

/* Token count of a text with special tokens, untruncated. */
qv_status qv_model_count_tokens(qv_model *m, const char *text, size_t len, size_t *out, qv_error *err);

#ifdef __cplusplus
}
#endif
#endif
