/* idx_store: the LMDB document store of one node, private to indexer/.
 * In: documents and deletes stamped with an LSN. Out: documents by label,
 * the write log in LSN order, and the node's applied state. Owns the LMDB
 * environment in DIR with four databases:
 *   meta  "kb" -> KbMeta (dim, metric, index, node id, embedder)
 *   log   LSN (u64) -> LogRecord, exactly the bytes streamed to replicas;
 *         an upsert's record holds the whole document, embedding included
 *   ids   document id bytes -> label (u64) of its live version
 *   undo  LSN -> the label that write replaced (UINT64_MAX: none); kept by
 *         replicas only, so that a diverged tail can be dropped quickly
 * A document's label is the LSN of the upsert that wrote it, so the live
 * version of a document IS its upsert's log record: each document is stored
 * once. The applied state (LSN, commit time) is the newest log record, so a
 * commit touches only `log` and `ids`: fewer pages to fsync per write.
 * One write transaction at a time (LMDB's rule); reads use their own. */
#ifndef IDX_STORE_H
#define IDX_STORE_H

#include "kbsync.pb-c.h"

#include <stddef.h>
#include <stdint.h>

typedef struct idx_store idx_store_t;
typedef struct idx_wtxn idx_wtxn_t;
typedef struct idx_rtxn idx_rtxn_t;
typedef int (*idx_store_log_cb)(void *ctx, uint64_t lsn, const void *bytes,
                                size_t len);

/* Opens (creating DIR and the databases if needed) the store in DIR.
 * map_size is the most bytes the store may grow to (0 = 64 GiB).
 * nosync skips fsync on commit (benchmarks only: acknowledged data can be
 * lost on power failure, not on a process crash). */
int idx_store_open(const char *dir, uint64_t map_size, int nosync,
                   idx_store_t **out, char *err, size_t errlen);
void idx_store_close(idx_store_t **s);

/* Reads the KbMeta; *meta is NULL when the store is new. The caller frees
 * it with kbsync__kb_meta__free_unpacked(). */
int idx_store_get_meta(idx_store_t *s, Kbsync__KbMeta **meta, char *err,
                       size_t errlen);
int idx_store_put_meta(idx_store_t *s, const Kbsync__KbMeta *meta, char *err,
                       size_t errlen);

/* Applied state: LSN of the last committed write and its commit time. */
void idx_store_state(const idx_store_t *s, uint64_t *lsn, uint64_t *commit_us);

/* Number of live documents (entries in `ids`). Writer thread only. */
uint64_t idx_store_count(idx_store_t *s);

/* --- writing ------------------------------------------------------------
 * begin, then any number of upsert/delete with strictly increasing LSNs,
 * then commit (durable when it returns 0) or abort. old_label receives the
 * label the write made obsolete (-1: none); its vector must leave the index. */
int idx_store_begin(idx_store_t *s, idx_wtxn_t **t, char *err, size_t errlen);
int idx_store_upsert(idx_wtxn_t *t, uint64_t lsn, uint64_t commit_us,
                     const Kbsync__Doc *doc, int64_t *old_label, char *err,
                     size_t errlen);
/* A delete of an id that is not present sets *old_label = -1 and writes
 * nothing, unless log_missing is set (a replica applying the leader's log
 * keeps every LSN): then only the log record is written. */
int idx_store_delete(idx_wtxn_t *t, uint64_t lsn, uint64_t commit_us,
                     const char *id, size_t id_len, int log_missing,
                     int64_t *old_label, char *err, size_t errlen);
/* The next upsert/delete in t stores these bytes (borrowed for that call)
 * as its log record instead of packing one: a replica keeps the leader's
 * exact bytes. They must encode the same record the call describes. */
void idx_store_next_raw(idx_wtxn_t *t, const void *bytes, size_t len);
/* From now on in t, each write also records the label it replaced (a
 * replica's apply): idx_store_truncate() then restores ids without reading
 * the log. */
void idx_store_keep_undo(idx_wtxn_t *t);
/* Looks up the live label of an id inside the write transaction. */
int idx_store_wlabel(idx_wtxn_t *t, const char *id, size_t id_len,
                     int64_t *label);
/* Calls cb for each log record with LSN >= from written in this open
 * transaction (they are readable before the commit), then once with bytes ==
 * NULL; all bytes stay valid until that last call returns. */
int idx_store_txn_log(idx_wtxn_t *t, uint64_t from, idx_store_log_cb cb,
                      void *ctx, char *err, size_t errlen);
int idx_store_commit(idx_wtxn_t **t, char *err, size_t errlen);
void idx_store_abort(idx_wtxn_t **t);

/* The newest records' LSNs and commit times, newest first: up to 64
 * consecutive ones, then one every power of two further back (LSN
 * newest - 128, - 256, ...), at most max in all. Returns how many. */
size_t idx_store_recent(idx_store_t *s, size_t max, uint64_t *lsn,
                        uint64_t *commit_us);

/* Drops every log record above `keep` in one transaction and points each id
 * they touched back at its newest upsert at or below `keep` (or drops it):
 * the store is then exactly what it was when `keep` was its newest record.
 * *dropped receives how many records went. */
int idx_store_truncate(idx_store_t *s, uint64_t keep, uint64_t *dropped,
                       char *err, size_t errlen);

/* --- reading ------------------------------------------------------------
 * Pointers returned by reads are borrowed from LMDB's map and valid only
 * until idx_store_rend() of that transaction. */
int idx_store_rbegin(idx_store_t *s, idx_rtxn_t **t, char *err, size_t errlen);
void idx_store_rend(idx_rtxn_t **t);
/* Finds the log record (a serialized LogRecord holding the Doc) of the
 * document with that label. Returns 0, or -ENOENT when there is none. The
 * caller knows the label is live (it came from the vector index). */
int idx_store_doc_by_label(idx_rtxn_t *t, int64_t label, const void **bytes,
                           size_t *len);

/* Calls cb for every live document in label order; stops and returns cb's
 * value when it is non-zero. bytes are the document's serialized LogRecord,
 * borrowed for the call. */
typedef int (*idx_store_doc_cb)(void *ctx, int64_t label, const void *bytes,
                                size_t len);
int idx_store_scan_docs(idx_store_t *s, idx_store_doc_cb cb, void *ctx,
                        char *err, size_t errlen);
/* The same walk inside read transaction t: the documents live in t's
 * snapshot. t stays open. */
int idx_store_scan_docs_in(idx_rtxn_t *t, idx_store_doc_cb cb, void *ctx,
                           char *err, size_t errlen);

/* The labels of every live document in t's snapshot, ascending, in *labels
 * (malloc'd, the caller frees; NULL when none) and their count in *n.
 * Reads only `ids`. Returns 0, KB_ECORRUPT, KB_ESTORE or KB_ENOMEM. */
int idx_store_live_labels(idx_rtxn_t *t, uint64_t **labels, size_t *n,
                          char *err, size_t errlen);

/* Bytes of the store's data file in use (last page written x page size). */
uint64_t idx_store_bytes(idx_store_t *s);

/* Calls cb for each log record with LSN >= from, in LSN order, at most max
 * of them; bytes are a serialized LogRecord borrowed for the call. */
typedef int (*idx_store_log_cb)(void *ctx, uint64_t lsn, const void *bytes,
                                size_t len);
int idx_store_scan_log(idx_store_t *s, uint64_t from, size_t max,
                       idx_store_log_cb cb, void *ctx, char *err,
                       size_t errlen);
/* Like idx_store_scan_log, then calls cb once more with bytes == NULL
 * (unless cb stopped the walk): every bytes pointer of the walk stays valid
 * until that last call returns, so a caller can batch without copying. */
int idx_store_read_log(idx_store_t *s, uint64_t from, size_t max,
                       idx_store_log_cb cb, void *ctx, char *err,
                       size_t errlen);

#endif
