/* Internal: how the data directory (db.c) opens and creates collections. */
#ifndef QV_STORE_COLLECTION_H
#define QV_STORE_COLLECTION_H

#include "quiver.h"

/* Fills a configuration's zero fields with the defaults and checks every range. */
qv_status collection_config_resolve(qv_collection_config *cfg, qv_error *err);

/* Makes a new collection's LMDB environment in the existing, empty directory `dir` and
 * writes its configuration durably. */
qv_status collection_init_dir(const char *dir, const char *name, const qv_collection_config *cfg,
                              qv_error *err);
/* Opens the collection stored in `dir` and loads its points into memory. */
qv_status collection_open_dir(qv_collection **out, const char *dir, const char *name, qv_error *err);
/* Stops the index thread, saves the graph when it changed, and frees everything. */
void collection_close(qv_collection *c);

/* Builds (or rebuilds) the collection's HNSW graph now, whatever its size, and returns
 * when it is in use. Writers wait meanwhile; searches do not. */
qv_status collection_index_build(qv_collection *c, qv_error *err);
/* Returns once no background build is wanted or running. */
void collection_index_wait(qv_collection *c);
/* Whether the graph in use was read from its file at open (not rebuilt). */
int collection_index_loaded(const qv_collection *c);

/* For tests: the resident bytes of the rows' vectors as the kernel reports them (mincore
 * over the rows' pages), which stats' vector_bytes counts without asking it. */
size_t collection_rows_mincore(qv_collection *c);

/* Whether `name` may be a collection name: 1..QV_MAX_NAME bytes of [A-Za-z0-9_.-], not
 * starting with '.', so it is always one safe path component. */
qv_status collection_name_check(const char *name, qv_error *err);

#endif
