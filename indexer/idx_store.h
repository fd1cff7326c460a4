/* idx_store: the LMDB document store of one node, private to indexer/.
 * In: documents and deletes stamped with an LSN. Out: documents by label,
 * the write log in LSN order, and the node's applied state. Owns the LMDB
 * environment in DIR with four databases (store format 2):
 *   meta  "kb" -> KbMeta (dim, metric, index, node id, embedder); small u64
 *         settings by name: log_start, undo_from, staged, snapshot_until,
 *         store_id, pin:<replica id>; txn (the id of the LMDB transaction
 *         of the node's newest commit, written by each)
 *   log   LSN (u64) -> LogRecord, exactly the bytes streamed to replicas;
 *         an upsert's record holds the whole document, embedding included.
 *         From log_start on: every operation. Below it: only the records of
 *         live documents (the documents table; see "compaction" below)
 *   ids   document id bytes -> label (u64) of its live version
 *   undo  LSN -> the label that write replaced (UINT64_MAX: none); kept by
 *         every node, so that compaction finds replaced records and a
 *         diverged tail can be dropped quickly
 * A document's label is the LSN of the upsert that wrote it, so the live
 * version of a document IS its upsert's log record: each document is stored
 * once. The applied state (LSN, commit time) is the newest log record, which
 * compaction never removes. One write transaction at a time (LMDB's rule);
 * reads use their own. */
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

/* Lazy commits, for records no writer waits on (a replica's async
 * stream): while on, write transactions commit with MDB_NOMETASYNC, one
 * disk flush instead of two; the newest lazy commit reaches the disk with
 * the next commit or idx_store_sync(). A crash of the process loses
 * nothing (the page cache holds it); a crash of the machine can undo the
 * commits after idx_store_synced(), never corrupt the store. No effect
 * with nosync. Writer thread only, as are the three below. */
void idx_store_set_lazy(idx_store_t *s, int on);
/* Newest LSN known to be on disk (<= the applied one). */
uint64_t idx_store_synced(const idx_store_t *s);
/* Flushes lazy commits to disk (nothing to do: returns 0 at once). */
int idx_store_sync(idx_store_t *s, char *err, size_t errlen);
/* Since open: commits flushed in full, lazy commits, idx_store_sync()
 * flushes. */
void idx_store_sync_counts(const idx_store_t *s, uint64_t *synced_commits,
                           uint64_t *lazy_commits, uint64_t *syncs);

/* Another process wrote to this store (LMDB lets one in: an operator's
 * tool, a test's kb_tamper): returns the id of the newest such LMDB
 * transaction found since the last call (0: none). Found two ways: a
 * commit of this node whose predecessor was not its own newest (every
 * commit of the node writes meta "txn", so each takes an id), and LMDB's
 * newest id above the node's newest when the node is not writing. One
 * thread at a time (the digest-check one). */
uint64_t idx_store_foreign_txn(idx_store_t *s);

/* What tells whether the stored bytes may have changed: LMDB's newest
 * transaction id (any process's commit) and the data file's size and
 * modification and change times (a write to the file that bypasses LMDB:
 * a tool, a flipped bit written back). Equal stamps taken at two moments:
 * nothing was written in between, through LMDB or the file, provided the
 * first one is `settled`: its file times at least IDX_STORE_STAMP_SETTLE_S
 * older than the clock when it was taken. (File systems keep times in
 * steps, up to 2 s on some; a write in the same step as the one before
 * would leave them unchanged.) */
typedef struct idx_store_stamp {
    uint64_t txnid, size;
    int64_t mtime_s, mtime_ns, ctime_s, ctime_ns;
    int settled; /* not compared */
} idx_store_stamp_t;

#define IDX_STORE_STAMP_SETTLE_S 3

/* Takes the stamp now. Returns 0, or an LMDB or errno code (then the
 * stamp is zeroed and should be taken as "may have changed"). Any thread. */
int idx_store_stamp(idx_store_t *s, idx_store_stamp_t *out);
int idx_store_stamp_equal(const idx_store_stamp_t *a,
                          const idx_store_stamp_t *b);

/* Number of live documents (entries in `ids`). Writer thread only. */
uint64_t idx_store_count(idx_store_t *s);

/* Entries in `undo` (0 on failure). Any thread. */
uint64_t idx_store_undo_count(idx_store_t *s);

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
/* The same, but only for writes that replaced a document (a snapshot's
 * documents: they are never cut back, and compaction needs an entry only
 * to drop what a write replaced, which on a fresh store is nothing). */
void idx_store_keep_undo_replaced(idx_wtxn_t *t);
/* Replicas: records from LSN `first` on in this store may not be committed
 * on the leader yet (they are staged: durable, not searchable). Recorded in
 * `meta` inside t, so that a crash can never leave such records looking
 * confirmed; 0 clears the mark (everything is confirmed). */
int idx_store_set_staged(idx_wtxn_t *t, uint64_t first, char *err,
                         size_t errlen);
/* The mark set by idx_store_set_staged() (0: none). */
uint64_t idx_store_staged(idx_store_t *s);

/* Calls cb for each log record with from < LSN <= upto, in order, with the
 * label that write replaced as kept by idx_store_keep_undo() (-1: none, or
 * not kept), then once with bytes == NULL; bytes stay valid until then.
 * For making staged records searchable. */
typedef int (*idx_store_undo_cb)(void *ctx, uint64_t lsn, const void *bytes,
                                 size_t len, int64_t old_label);
int idx_store_read_staged(idx_store_t *s, uint64_t from, uint64_t upto,
                          idx_store_undo_cb cb, void *ctx, char *err,
                          size_t errlen);

/* Small settings in `meta` by name (at most 64 bytes): u64 values, 0 when
 * absent. idx_store_put_u64 writes inside t (0 deletes the key);
 * idx_store_get_u64 reads the committed value. */
int idx_store_put_u64(idx_wtxn_t *t, const char *key, uint64_t v, char *err,
                      size_t errlen);
uint64_t idx_store_get_u64(idx_store_t *s, const char *key);
/* idx_store_put_u64 in a transaction of its own. */
int idx_store_set_u64(idx_store_t *s, const char *key, uint64_t v, char *err,
                      size_t errlen);

/* --- compaction ---------------------------------------------------------
 * The log from `log start` (meta "log_start", 1 when absent) up is every
 * operation in LSN order. Below it the log holds only the upsert records
 * that are the live version of a document: the documents table, keyed by
 * label (= LSN), with gaps. idx_store_compact() moves log start up to `cut`
 * in steps of at most max_records operations per transaction: for each
 * operation below cut, the record its write replaced goes (found through
 * `undo`, which every store keeps from meta "undo_from" on; older writes
 * are judged by the id map), deletes go, undo entries go; upserts that are
 * still live stay. The newest record always stays (cut is held to the
 * applied LSN): it is the applied state. Every write below cut must be final (never truncated):
 * on a leader everything committed, on a replica what is confirmed.
 * Returns 0 with *removed records and *bytes removed (may be less than
 * asked when max_records stopped it: call again), or a negative code. */
int idx_store_compact(idx_store_t *s, uint64_t cut, size_t max_records,
                      uint64_t *removed, uint64_t *bytes, char *err,
                      size_t errlen);
/* The store's history id (meta "store_id"): random, set when the store is
 * first opened by this format and renewed by every idx_store_truncate() (a
 * history that went back is another history). Whatever was derived from
 * the store (an index checkpoint) records it and must match it. */
uint64_t idx_store_id(idx_store_t *s);

/* Drops the documents-table records (below log start) that an operation
 * in [log start, upto) replaced or deleted: the operations stay (a replica
 * may still catch up from them) but the data they made obsolete goes at
 * once, not when they leave the log. Every write below upto must be final.
 * Walks at most max_records undo entries from where the last call stopped.
 * *removed and *bytes as for idx_store_compact(). */
int idx_store_sweep(idx_store_t *s, uint64_t upto, size_t max_records,
                    uint64_t *removed, uint64_t *bytes, char *err,
                    size_t errlen);

/* The current log start (see above). */
uint64_t idx_store_log_start(idx_store_t *s);
/* The log start in t's snapshot. */
uint64_t idx_store_rtxn_log_start(idx_rtxn_t *t);
/* Undo entries are complete from this LSN on (meta "undo_from"). */
uint64_t idx_store_undo_from(idx_store_t *s);
/* Sets meta "undo_from" (format upgrade) and the staged mark (0 clears)
 * in transactions of their own. */
int idx_store_set_undo_from(idx_store_t *s, uint64_t lsn, char *err,
                            size_t errlen);
int idx_store_set_staged_now(idx_store_t *s, uint64_t first, char *err,
                             size_t errlen);
/* 1 when the upsert record bytes is the live version of its document
 * (the id map points at lsn), else 0. */
int idx_store_is_live(idx_store_t *s, uint64_t lsn, const void *bytes,
                      size_t len);
/* The exact log record at lsn (borrowed in t), or -ENOENT. */
int idx_store_log_get(idx_rtxn_t *t, uint64_t lsn, const void **bytes,
                      size_t *len);

/* Looks up the live label of an id inside the write transaction. */
int idx_store_wlabel(idx_wtxn_t *t, const char *id, size_t id_len,
                     int64_t *label);
/* Calls cb for each log record with LSN >= from written in this open
 * transaction (they are readable before the commit), then once with bytes ==
 * NULL; all bytes stay valid until that last call returns. */
int idx_store_txn_log(idx_wtxn_t *t, uint64_t from, idx_store_log_cb cb,
                      void *ctx, char *err, size_t errlen);
int idx_store_commit(idx_wtxn_t **t, char *err, size_t errlen);

/* Digests (anti-entropy, docs/CONSISTENCY.md): the sum mod 2^64 of
 * idx_store_record_hash() of every live document's log record, kept with
 * every commit (meta "digest") and for the last IDX_STORE_DIGEST_RING LSNs
 * in memory. idx_store_digest_at: the digest right after lsn, or -ENOENT
 * when it is not in the window (writer thread). idx_store_digest_check
 * recomputes it from the documents in one read transaction and returns it
 * with the stored one and the LSN they cover (any thread). */
#define IDX_STORE_DIGEST_RING 65536
uint64_t idx_store_record_hash(const void *bytes, size_t len);
uint64_t idx_store_digest(idx_store_t *s);
int idx_store_digest_at(idx_store_t *s, uint64_t lsn, uint64_t *digest);
typedef struct idx_store_digest_check {
    uint64_t lsn, stored, scanned, docs;
} idx_store_digest_check_t;
/* stop (may be NULL): when it turns non-zero the walk gives up within
 * 1,024 documents with KB_EUNAVAIL. hold_us (0: no limit): once its read
 * transaction has been open that long and a write transaction committed
 * since it began, the walk gives up at the next multiple of 1,024
 * documents read (not after the last one) with -EAGAIN
 * (an open read transaction keeps LMDB from reusing the pages later
 * writes free, and the data file grows). */
int idx_store_digest_check(idx_store_t *s, idx_store_digest_check_t *c,
                           const _Atomic int *stop, uint64_t hold_us,
                           char *err, size_t errlen);
/* The newest LSN in the log, read in its own read transaction (any
 * thread; 0 when empty or on error). */
uint64_t idx_store_head(idx_store_t *s);

/* Idempotent writes (the leader's table of committed (client, seq) pairs;
 * see idx_write_ex): one entry, written in t; read back by key; expired
 * (its own transaction) when committed before before_us or beyond the
 * max_entries newest, at most max_step per call (*left: entries kept). */
typedef struct idx_store_dedup {
    uint64_t first, version, commit_us, hash;
    uint32_t written, missing;
} idx_store_dedup_t;
int idx_store_dedup_put(idx_wtxn_t *t, const void *key, size_t klen,
                        const idx_store_dedup_t *d, char *err, size_t errlen);
/* 0, -ENOENT, KB_ESTORE or KB_ECORRUPT. */
int idx_store_dedup_get(idx_store_t *s, const void *key, size_t klen,
                        idx_store_dedup_t *d);
int idx_store_dedup_expire(idx_store_t *s, uint64_t before_us,
                           uint64_t max_entries, size_t max_step,
                           uint64_t *removed, uint64_t *left, char *err,
                           size_t errlen);
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
/* The live label (LSN of the current version) of an id, or -1. */
int idx_store_rlabel(idx_rtxn_t *t, const char *id, size_t id_len,
                     int64_t *label);
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

/* The labels of the live documents in t's snapshot, ascending, in a
 * malloc'ed array (*labels, free() it; NULL when *n is 0). */
int idx_store_live_labels(idx_rtxn_t *t, uint64_t **labels, size_t *n,
                          char *err, size_t errlen);
/* Calls cb for the records of labels[0..n) (ascending) that still exist,
 * reading them in chunks, each chunk in a read transaction of its own: a
 * long walk does not keep LMDB from reusing the pages freed meanwhile
 * (which a single long read transaction would, growing the file). A label
 * whose record went since (a document replaced or deleted, then compacted)
 * is skipped. Stops and returns cb's value when it is non-zero. */
int idx_store_scan_labels(idx_store_t *s, const uint64_t *labels, size_t n,
                          idx_store_doc_cb cb, void *ctx, char *err,
                          size_t errlen);

/* The live documents of t's snapshot whose ids start with prefix[0..plen)
 * and sort (bytewise) after after[0..alen) (alen 0: from the first), in id
 * order, at most max: cb gets each id (not NUL-terminated), its label (the
 * LSN that wrote it) and its LogRecord, borrowed for the call; a non-zero
 * return stops the walk and is returned. *more is set when another such id
 * follows the last one passed; *lsn receives the newest LSN in t's log.
 * Returns 0, cb's value, or KB_ESTORE / KB_ECORRUPT with err set. */
typedef int (*idx_store_list_cb)(void *ctx, const char *id, size_t id_len,
                                 uint64_t label, const void *rec,
                                 size_t rec_len);
int idx_store_list(idx_rtxn_t *t, const char *prefix, size_t plen,
                   const char *after, size_t alen, size_t max,
                   idx_store_list_cb cb, void *ctx, int *more, uint64_t *lsn,
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
