/* Ingestion: documents in, chunks with embeddings and payloads out, into a collection.
 *
 * An ingester reads what the collection already holds (source, file hash, chunk index of
 * every point) once when opened, then takes documents one at a time (from files, or from
 * memory for the server's ingest route). A document whose content hash matches what is
 * stored is skipped; a changed one is re-chunked, its chunks upserted under ids derived
 * from (source, chunk index), and its stale chunks deleted. Chunks are embedded and
 * upserted in batches across documents; every batch is one durable transaction.
 *
 * A point's payload: source, headings (array), span {bytes: [start, end), lines: [first,
 * last]}, chunk_index, chunk_count, hash (of the chunk text), file_hash (of the file with the
 * chunking settings and the model), format, text,
 * is_code (only when true), and the document's front matter fields (those not clashing
 * with these names).
 */
#ifndef QV_TEXT_INGEST_H
#define QV_TEXT_INGEST_H

#include <stddef.h>

#include "quiver.h"
#include "text/text.h"

#define TEXT_DEFAULT_MODEL "all-MiniLM-L6-v2"

typedef struct text_ingest_stats {
  size_t files_seen;      /* documents offered */
  size_t files_new, files_changed, files_unchanged, files_removed;
  size_t chunks;          /* chunks embedded and stored */
  size_t chunks_removed;  /* stale chunks deleted */
  size_t tokens;          /* tokens embedded */
} text_ingest_stats;

typedef struct text_ingester text_ingester;

/* Loads the collection's current state. c's vectors must match m's dimensions. batch is
 * the number of chunks per embedding/upsert batch (0 = 64). */
qv_status text_ingester_open(text_ingester **out, qv_collection *c, qv_model *m, const text_chunk_config *cfg,
                             size_t batch, qv_error *err);
void text_ingester_free(text_ingester *ing);

/* Offers one document. Its chunks may wait in the batch until text_ingester_flush. */
qv_status text_ingester_add(text_ingester *ing, const char *source, const char *data, size_t n, text_format f,
                            qv_error *err);
/* Reads and offers a file (format by extension). */
qv_status text_ingester_add_file(text_ingester *ing, const char *path, qv_error *err);
qv_status text_ingester_flush(text_ingester *ing, qv_error *err);
/* Deletes the chunks of every source not offered since open that equals one of roots or
 * lies under it (roots NULL = every source). Flushes first. */
qv_status text_ingester_sync(text_ingester *ing, const char *const *roots, size_t nroots, qv_error *err);
void text_ingester_stats(const text_ingester *ing, text_ingest_stats *out);

/* The document files under paths (directories recursively, hidden entries skipped,
 * sorted), as malloc'd strings; a named path that is missing or not a document is an
 * error naming it. */
qv_status text_find_documents(const char *const *paths, size_t npaths, char ***out, size_t *n, qv_error *err);

/* Counts tokens (no special tokens) with m's tokenizer: a text_count_fn with ctx = m. */
qv_status text_count_model(void *m, const char *s, size_t n, uint32_t *out, qv_error *err);

#endif
