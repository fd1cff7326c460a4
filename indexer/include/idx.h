/* idx: one node's knowledge base: the LMDB document store, the FAISS index
 * and the metadata postings behind one interface. In: validated writes
 * (upsert/delete) stamped with LSNs, and kNN queries. Out: LSNs, hits with
 * their documents, and the version each answer reflects. Owns an idx_store
 * (truth, durable), an idx_vec and an idx_filter (derived, rebuilt from the
 * store at open and in the background).
 *
 * THREADS
 * - ONE writer thread (the node loop) calls everything not listed below:
 *   open, close, validate, write, apply_log, stats, rebuild_start, the log
 *   readers. It owns the store's write transactions and the write scratch.
 * - ANY number of reader threads call idx_search_batch(), idx_search(),
 *   idx_check_query(), idx_view() and idx_hits_free() concurrently with it.
 * - ONE background rebuild thread, owned by idx, builds a fresh vector
 *   index from a store snapshot and swaps it in (idx_rebuild_start()).
 * - ONE merger thread, owned by idx, moves recent writes into FAISS.
 * - ONE checkpoint thread, owned by idx, writes the vector index to
 *   DIR/index.ckpt now and then (CHECKPOINTS in idx.c): it pauses the
 *   merger, holds no lock while it writes, and a rebuild waits for it
 *   before its swap.
 * The writer never takes a lock a search holds for long: a write's vectors
 * go to an append-only delta (idx_delta.h), its removals to a pending list
 * (rm_mu), its metadata to the postings (fmu), then the new version is
 * published (vmu); idx_stats_try() and the rebuild check only try vlock.
 * vlock (a reader-writer lock, writers preferred) guards the FAISS index:
 * searches hold it shared; the merger and the rebuild swap hold it
 * exclusively. A search reads the published version V inside its hold and
 * returns labels <= V that are not removed at V, from FAISS and the delta,
 * so it sees either all of a write or none of it. Documents of hits are
 * read from the log records named by their labels, which never change. */
#ifndef IDX_H
#define IDX_H

#include <stddef.h>
#include <stdint.h>

typedef struct idx idx_kb_t;

typedef struct idx_config {
    const char *dir;     /* data directory; created on first open */
    uint32_t dim;        /* 0 = take the stored one (must exist) */
    const char *metric;  /* "ip", "l2" or "cosine"; NULL = stored, or "ip" */
    const char *index;   /* FAISS factory string ("Flat", "HNSW32",
                            "IVF1024,Flat", "IVF1024,PQ32"); NULL = stored, or
                            "IDMap2,Flat" when new */
    const char *node_id; /* NULL = stored, or "node" when new */
    uint64_t map_size;   /* bytes; 0 = 64 GiB */
    int nosync;          /* 1 = no fsync on commit (benchmarks only) */
    int replica;         /* 1 = a replica's store: records may be staged
                            (idx_apply_log_staged); at open, unconfirmed
                            ones are dropped */
    /* Checkpoints (DIR/index.ckpt): one is written when the published
     * version is ckpt_ops past the last one's and ckpt_secs have passed
     * since the last one started, and at idx_close(). */
    uint64_t ckpt_ops;  /* 0 = IDX_CKPT_OPS_DEFAULT; IDX_CKPT_NEVER = only
                           at close and idx_checkpoint() */
    uint32_t ckpt_secs; /* 0 = IDX_CKPT_SECS_DEFAULT */
    int ckpt_off;       /* 1 = neither write nor load checkpoints */
    /* Digest checks (anti-entropy): a background pass recomputes the
     * documents' digest at most every scrub_ms (0 = 1000; IDX_SCRUB_OFF =
     * never) and at most 1/30 of a core. A scheduled pass gives way once
     * its read transaction has been open scrub_hold_ms (0 =
     * IDX_SCRUB_HOLD_MS) and a write committed since. A store unchanged
     * since the last completed pass gets the next one scrub_unchanged_ms
     * after it (0 = IDX_SCRUB_UNCHANGED_MS, 5 minutes). */
    uint32_t scrub_ms;
    uint32_t scrub_hold_ms;
    uint32_t scrub_unchanged_ms;
} idx_config_t;

#define IDX_SCRUB_OFF UINT32_MAX

#define IDX_CKPT_OPS_DEFAULT 10000u
#define IDX_CKPT_SECS_DEFAULT 30u
#define IDX_CKPT_NEVER UINT64_MAX

/* Process-wide compute settings for the vector index: `threads` OpenMP and
 * OpenBLAS threads for FAISS searches, adds and training (>= 1), and single
 * queries through BLAS. Call once at start-up, before idx_open(). */
void idx_setup(int threads);

/* Opens or creates the knowledge base in cfg->dir and loads the vector
 * index from DIR/index.ckpt, adding the documents written after it, or
 * (no usable checkpoint: logged once, with the reason) rebuilds it from
 * the stored documents. A dim, metric or index that differs from
 * what the directory was created with is refused with KB_EMISMATCH naming
 * both values. Returns 0 and sets *out, or a negative code with err set. */
int idx_open(const idx_config_t *cfg, idx_kb_t **out, char *err, size_t errlen);

/* Closes, writing a checkpoint first when the published version is newer
 * than the last one (unless ckpt_off); accepts NULL and sets *ix to NULL. */
void idx_close(idx_kb_t **ix);

/* Writes a checkpoint of the published version now, on the calling thread
 * (after waiting for a periodic one to end). Writer thread; for tests and
 * tools: it takes as long as the file takes to write. Returns 0, or
 * KB_EUNAVAIL (checkpoints off, or a rebuild is running), -errno (disk),
 * KB_EINDEX, KB_ENOMEM, with err set. */
int idx_checkpoint(idx_kb_t *ix, char *err, size_t errlen);

typedef enum idx_opcode { IDX_OP_UPSERT = 1, IDX_OP_DELETE = 2 } idx_opcode_t;

/* One write. Strings are NUL-terminated; everything is borrowed for the
 * duration of the call. */
typedef struct idx_op {
    idx_opcode_t op;
    const char *id;         /* 1..KB_MAX_ID_LEN bytes */
    const char *text;       /* NULL or "" = none */
    const float *embedding; /* embedding_len floats, or NULL: embed text */
    size_t embedding_len;
    const char *metadata; /* JSON object text; NULL or "" = none */
} idx_op_t;

/* Checks ops against the knowledge base without changing anything: ids,
 * dimension, finite values, text and metadata sizes, metadata is a JSON
 * object. The first problem is described in err, naming the op's index and
 * id. Returns 0 or KB_EBADID / KB_EDIM / KB_ENONFINITE / KB_ETOOBIG /
 * KB_EBADJSON / KB_EINVAL. */
int idx_validate(const idx_kb_t *ix, const idx_op_t *ops, size_t n, char *err,
                 size_t errlen);

/* Receives log records in LSN order: bytes is a serialized LogRecord,
 * borrowed for the call. A non-zero return stops the walk and is returned. */
typedef int (*idx_log_cb)(void *ctx, uint64_t lsn, const void *bytes,
                          size_t len);

/* Leader path. Commits n validated ops in ONE durable transaction under
 * consecutive LSNs after the current version, then updates the vector index.
 * lsns (n entries, caller-allocated) receives each op's LSN, or 0 for a
 * delete of an id that is not present (such a delete takes no LSN).
 * commit_us is the commit time recorded with each log record (0 = now).
 * precommit (may be NULL) is called with each new log record after all of
 * them are in the transaction and BEFORE the commit, then once more with
 * bytes == NULL; it lets the leader ship records to replicas while its own
 * fsync is in flight. If precommit fails, nothing is committed. If the
 * commit itself then fails, records already shipped exist elsewhere but not
 * here: the caller must not reuse their LSNs (the leader stops).
 * On failure nothing is committed. */
int idx_write(idx_kb_t *ix, const idx_op_t *ops, size_t n, uint64_t commit_us,
              uint64_t *lsns, idx_log_cb precommit, void *ctx, char *err,
              size_t errlen);

/* Idempotent writes: idx_write_ex() records, in the same transaction as
 * the writes, the result of each request that carries a client identity:
 * key = client id, NUL, big-endian seq; its ops are ops[first_op ..
 * first_op + nops). idx_dedup_get() reads a result back (0, or -ENOENT). */
typedef struct idx_dedup {
    const void *key;
    size_t klen;
    uint64_t hash; /* of the request's content, to spot a reused seq */
    size_t first_op, nops;
} idx_dedup_t;
typedef struct idx_dedup_result {
    uint64_t first, version, commit_us, hash;
    uint32_t written, missing;
} idx_dedup_result_t;
int idx_write_ex(idx_kb_t *ix, const idx_op_t *ops, size_t n,
                 uint64_t commit_us, uint64_t *lsns, idx_log_cb precommit,
                 void *ctx, const idx_dedup_t *dd, size_t ndd, char *err,
                 size_t errlen);
int idx_dedup_get(idx_kb_t *ix, const void *key, size_t klen,
                  idx_dedup_result_t *out);
/* Drops results committed before before_us, and the oldest beyond
 * max_entries, at most max_step per call; *left: results kept. */
int idx_dedup_expire(idx_kb_t *ix, uint64_t before_us, uint64_t max_entries,
                     size_t max_step, uint64_t *removed, uint64_t *left,
                     char *err, size_t errlen);

/* Replica path. Applies serialized LogRecords (as read from a leader's log)
 * in one durable transaction. Their LSNs must continue the current version
 * with no gap, duplicate or reordering: anything else is refused with
 * KB_EGAP and changes nothing. */
int idx_apply_log(idx_kb_t *ix, size_t n, const void *const *recs,
                  const size_t *lens, char *err, size_t errlen);

/* idx_apply_log() for a replica that may receive records before the
 * leader committed them: records with LSN <= confirmed (and any staged
 * before them) become searchable; later ones are durable but stay
 * unsearchable (staged) until idx_publish() confirms them. The store's
 * version (idx_state) then runs ahead of the published one (idx_view).
 * n may be 0 (publish only). */
int idx_apply_log_staged(idx_kb_t *ix, size_t n, const void *const *recs,
                         const size_t *lens, uint64_t confirmed, char *err,
                         size_t errlen);

/* Makes the staged records with LSN <= upto searchable, in one step.
 * Writer thread. Returns 0 or a negative code (nothing published). */
int idx_publish(idx_kb_t *ix, uint64_t upto, char *err, size_t errlen);

/* A query hit. Strings are NUL-terminated and owned by the idx_hits_t. */
typedef struct idx_hit {
    const char *id;
    float score;
    const char *text;
    const char *metadata; /* "" when the document has none */
    uint64_t version;     /* the LSN that wrote this version of it */
} idx_hit_t;

typedef struct idx_hits {
    size_t n;
    idx_hit_t *hit;
    void *priv; /* decoded documents backing the strings */
} idx_hits_t;

/* One metadata condition: key=value (see idx_filter.h for what matches). */
typedef struct idx_filter_kv {
    const char *key; /* NUL-terminated */
    const char *value;
} idx_filter_kv_t;

/* One kNN query. Borrowed for the call. */
typedef struct idx_query {
    const float *vec; /* vec_len floats (must be dim), or NULL: embed text */
    size_t vec_len;
    const char *text;
    size_t text_len;
    uint32_t k;         /* 1..KB_MAX_K; 0 = 10 */
    uint32_t ef_search; /* HNSW; 0 = default */
    uint32_t nprobe;    /* IVF; 0 = default */
    const idx_filter_kv_t *filters;
    size_t nfilters; /* all must hold; at most IDX_MAX_FILTERS */
} idx_query_t;

#define IDX_MAX_FILTERS 16
#define IDX_MAX_EF_SEARCH 4096
#define IDX_MAX_FILTER_KEY 256
#define IDX_MAX_FILTER_VALUE 1024

/* What an answer reflects: the version published when its search ran. */
typedef struct idx_view {
    uint64_t version;   /* LSN of the newest write searched */
    uint64_t commit_us; /* its leader commit time (0 = none) */
    uint64_t docs;      /* live documents at that version */
} idx_view_t;

/* Checks a query without running it: k, vector size and values, text,
 * ef_search (1..4096), nprobe (1..the IVF's nlist), filters (count, key and
 * value sizes). Returns 0, or KB_EINVAL / KB_EDIM / KB_ENONFINITE naming
 * the field and the bound. ix may be NULL (a replica before its knowledge
 * base arrived): then only what needs no dim, metric or nlist is checked.
 * Any thread. */
int idx_check_query(const idx_kb_t *ix, const idx_query_t *q, char *err,
                    size_t errlen);

/* Searches nq checked queries as ONE batch (one FAISS call for their
 * vectors) against one consistent version of the index. Queries of one
 * batch must share ef_search and nprobe and carry no filters, unless nq is
 * 1. out[0..nq) receive the hits (free each with idx_hits_free()); *view
 * what they reflect. Any thread. Returns 0 or a negative code with err set
 * (then no out[] needs freeing). */
int idx_search_batch(idx_kb_t *ix, size_t nq, const idx_query_t *q,
                     idx_hits_t *out, idx_view_t *view, char *err,
                     size_t errlen);

/* FOUND: the same search, with the hits read one query at a time, so that
 * a caller answering a batch holds one answer's documents at a time.
 * idx_search_found searches and sets *out (NULL when nq is 0; on error no
 * *out needs freeing); its read transaction stays open until
 * idx_found_free, so every query's hits come from the searched version.
 * idx_found_hits fills out (free with idx_hits_free()) with query i's hits;
 * with max_bytes > 0 it stops with KB_ETOOBIG, naming the hit, when the
 * hits' strings (id, text, metadata) and IDX_HIT_OVERHEAD bytes per hit
 * would exceed max_bytes. One thread at a time per idx_found_t. */
typedef struct idx_found idx_found_t;
#define IDX_HIT_OVERHEAD 32 /* answer bytes of a hit besides its strings */
int idx_search_found(idx_kb_t *ix, size_t nq, const idx_query_t *q,
                     idx_found_t **out, idx_view_t *view, char *err,
                     size_t errlen);
int idx_found_hits(idx_found_t *f, size_t i, size_t max_bytes, idx_hits_t *out,
                   char *err, size_t errlen);
void idx_found_free(idx_found_t **f);

/* One query (checked here) with a query vector of dim floats (or, with
 * text, the built-in embedding of the text: pass q = NULL). Fills *out;
 * free with idx_hits_free(). Scores: inner product or cosine (higher =
 * closer) or squared L2 distance (lower = closer). Any thread. */
int idx_search(idx_kb_t *ix, const float *q, const char *text, size_t text_len,
               uint32_t k, idx_hits_t *out, char *err, size_t errlen);
void idx_hits_free(idx_hits_t *h);

/* The published view (version, commit time, docs). Any thread. */
void idx_view(idx_kb_t *ix, idx_view_t *v);

/* Starts the background rebuild when it is due (a quarter of the stored
 * vectors dead, or an untrained IVF that can be trained), as each write
 * does. The merger tombstones and merges after the writes that caused
 * them, so the node loop calls this between writes too (every tick).
 * Writer thread; never waits for the index lock. */
void idx_maintain(idx_kb_t *ix);

/* Starts a background rebuild of the vector index and postings from the
 * current store (dropping dead vectors; training an IVF index) unless one
 * is running. Writer thread. Returns 0, or 1 when one was already running. */
int idx_rebuild_start(idx_kb_t *ix);

typedef struct idx_stats {
    uint64_t version;   /* LSN of the last write applied here */
    uint64_t commit_us; /* leader commit time of that write (0 = none) */
    uint64_t docs;      /* live documents */
    uint64_t durable;   /* idx_stats(): LSN of the newest record in LMDB
                           (above version while records are staged) */
    uint64_t vectors;   /* searchable vectors in the FAISS index (== docs) */
    uint64_t dead;      /* replaced/deleted vectors still stored, hidden */
    uint64_t unmerged;  /* searchable vectors not in FAISS yet (delta) */
    uint64_t index_bytes; /* vector index + postings memory */
    uint64_t store_bytes; /* LMDB data file in use */
    uint32_t dim;
    const char *metric;  /* borrowed: valid until idx_close */
    const char *index;   /* borrowed */
    const char *node_id; /* borrowed */
    const char *kind;    /* "flat", "hnsw" or "ivf" (borrowed) */
    int trained;         /* 0: an IVF index still searching exactly */
    int rebuilding;      /* a background rebuild is running */
    uint64_t rebuilds;   /* background rebuilds completed */
    uint64_t grows;      /* flat index arrays grown beside the searches
                            (idx_vec.h, growth outside the lock) */
    uint64_t commits;    /* durable write transactions since open */
    uint64_t synced_commits, lazy_commits, store_syncs; /* idx_set_lazy() */
    double rebuild_s;    /* seconds the last index (re)build took; at
                            open, loading the checkpoint included */
    int ckpt_loaded;     /* the index was loaded from a checkpoint at open */
    uint64_t ckpt_lsn;   /* version the newest checkpoint (written or
                            loaded) covers; 0 = none */
    uint64_t ckpt_us;    /* wall clock when it was written (0 = none) */
    double ckpt_s;       /* seconds the last checkpoint write took */
    uint64_t ckpts;      /* checkpoints written since open */
    int checkpointing;   /* a checkpoint is being written */
} idx_stats_t;

/* Writer thread. Waits for the index lock (status answers only). */
void idx_stats(idx_kb_t *ix, idx_stats_t *st);
/* idx_stats() that never waits: when a merge step holds the index lock,
 * the index figures (vectors, dead, unmerged, index_bytes, kind, trained)
 * are those of the last idx_stats*() call. For metrics scrapes, which must
 * not stall the writer. Writer thread. */
void idx_stats_try(idx_kb_t *ix, idx_stats_t *st);

/* The applied version and its leader commit time, without any lock: for
 * the replication stream. Writer thread. */
void idx_state(const idx_kb_t *ix, uint64_t *version, uint64_t *commit_us);
/* Lazy commits (idx_store_set_lazy): while on, writes commit with one disk
 * flush and reach the disk fully with the next commit or idx_sync();
 * idx_synced() is the newest LSN known on disk. Writer thread only. */
void idx_set_lazy(idx_kb_t *ix, int on);
uint64_t idx_synced(const idx_kb_t *ix);
int idx_sync(idx_kb_t *ix, char *err, size_t errlen);

/* idx_stats() without the index figures (vectors, dead, bytes, kind, ...:
 * left 0) and without any lock: version, commit time, docs, settings,
 * commits. For the replication stream. Writer thread. */
void idx_stats_stream(idx_kb_t *ix, idx_stats_t *st);

/* The stored settings (dim, metric, index, node id, embedder); borrowed,
 * valid until idx_close. The pointer is a Kbsync__KbMeta. */
const void *idx_meta(const idx_kb_t *ix);

/* ListRequest (schemas/kbsync.proto): the live documents whose ids start
 * with q->prefix, after q->after, in id order, at most q->limit (0 =
 * IDX_LIST_DEFAULT, at most IDX_LIST_MAX, fewer when their ids and values
 * pass IDX_LIST_BYTES), with the value of q->meta_key
 * when set; read in one transaction, out->version is its newest LSN. Fills
 * *out (free its entries with idx_list_free). Any thread. Returns 0,
 * KB_EINVAL naming the field, KB_ENOMEM, KB_ESTORE or KB_ECORRUPT. */
#define IDX_LIST_DEFAULT 1000u
#define IDX_LIST_MAX 10000u
#define IDX_LIST_BYTES (4u << 20) /* ids + values per page; `more` beyond */
struct Kbsync__ListRequest;
struct Kbsync__ListResult;
int idx_list(idx_kb_t *ix, const struct Kbsync__ListRequest *q,
             struct Kbsync__ListResult *out, char *err, size_t errlen);
void idx_list_free(struct Kbsync__ListResult *r);

/* The current versions of n ids: vers[i] = the LSN that wrote id i's live
 * document, or 0 when it does not exist (committed state, as the next
 * idx_write starts from). Writer thread. Returns 0 or KB_ESTORE. */
int idx_doc_versions(idx_kb_t *ix, const char *const *ids, size_t n,
                     uint64_t *vers, char *err, size_t errlen);

/* Anti-entropy (docs/CONSISTENCY.md, "Digests"). Every node keeps an
 * order-independent digest of its live documents, updated with every
 * write. idx_digest: the digest now and the LSN it covers (the newest
 * durable record; writer thread). idx_digest_at: the digest right after
 * lsn, for the last 65,536 LSNs written here (-ENOENT otherwise; writer
 * thread). */
void idx_digest(idx_kb_t *ix, uint64_t *lsn, uint64_t *digest);
int idx_digest_at(idx_kb_t *ix, uint64_t lsn, uint64_t *digest);

/* The background digest checks: each pass recomputes the digest from the
 * stored documents and compares it with the kept one. */
typedef struct idx_check {
    uint64_t passes, last_ms, last_lsn, docs;
    uint64_t mismatches; /* passes that found the documents changed */
    uint64_t bad_lsn, bad_stored, bad_scanned; /* the newest mismatch */
    uint64_t started, ended; /* passes begun, and ended (done, failed or
                                gave way) */
    uint64_t last_stored, last_scanned; /* the newest completed pass */
    uint64_t last_ok; /* its number among the passes begun */
    uint64_t foreign; /* looks that found a commit by another process */
    uint64_t yielded; /* scheduled passes that gave way to writes */
    uint64_t unchanged; /* looks that skipped a due pass: the store was
                           unchanged since the last completed one */
} idx_check_t;
/* Any thread. All zero when checks are off. */
void idx_check_state(idx_kb_t *ix, idx_check_t *out);
/* Asks the background thread for a pass now (kbsync verify); returns N:
 * once `ended` reaches N, pass N has ended; last_ok >= N means the newest
 * completed pass (last_*) began after this call, else pass N failed. 0
 * when checks are off: use idx_check_now(). Any thread. */
uint64_t idx_check_request(idx_kb_t *ix);
/* One check now, on the calling thread (any thread): *lsn, the kept
 * digest, the recomputed one and the documents read. Returns 0 or a
 * negative code with err set. */
int idx_check_now(idx_kb_t *ix, uint64_t *lsn, uint64_t *stored,
                  uint64_t *scanned, uint64_t *docs, char *err, size_t errlen);

/* Commit time (leader clock, us) of the log record with that LSN, or 0 when
 * there is none. */
uint64_t idx_commit_time(idx_kb_t *ix, uint64_t lsn);

/* The newest records' LSNs and commit times, newest first (see
 * idx_store_recent): what a replica's hello shows the leader so that, after
 * a divergence, it can name the newest record both logs share. */
size_t idx_recent(idx_kb_t *ix, size_t max, uint64_t *lsn, uint64_t *commit_us);

/* Compacts the log below cut (see idx_store_compact in idx_store.h):
 * superseded and deleted documents' records go, live ones stay as the
 * documents table below the log start; then sweeps the documents table of
 * what the operations kept above the cut replaced (idx_store_sweep), but
 * only what operations below sweep_max replaced (UINT64_MAX: no bound; the
 * leader bounds it while it streams snapshots, whose documents table must
 * hold every document as of the snapshot's LSN). On a replica cut is held
 * to the published version; nothing is compacted while a snapshot loads.
 * At most max_records operations per call. Writer thread. */
int idx_compact(idx_kb_t *ix, uint64_t cut, uint64_t sweep_max,
                size_t max_records,
                uint64_t *removed, uint64_t *bytes, char *err, size_t errlen);

/* Small named settings kept in the store (u64, 0 = absent), e.g. the
 * leader's retention pins. idx_set_u64 commits one small transaction. */
int idx_set_u64(idx_kb_t *ix, const char *key, uint64_t v, char *err,
                size_t errlen);
uint64_t idx_get_u64(idx_kb_t *ix, const char *key);

/* Undo entries are complete from this LSN on (older: a format-1 store). */
uint64_t idx_undo_from(idx_kb_t *ix);
/* 1 when the upsert log record at lsn is its document's live version. */
int idx_record_is_live(idx_kb_t *ix, uint64_t lsn, const void *bytes,
                       size_t len);

/* Live documents in the store and its size in bytes, without any lock.
 * Writer thread. */
uint64_t idx_store_docs(idx_kb_t *ix);
uint64_t idx_store_size(idx_kb_t *ix);

/* The first LSN from which the log holds every operation (1: all). */
uint64_t idx_log_start(idx_kb_t *ix);

/* Snapshot loading (replicas): until the version reaches both `until`
 * (the snapshot's LSN) and `ready`, the store is a partial copy and must
 * not be served. `ready` is the leader's head when the snapshot began: the
 * leader's documents table lacks the documents that operations after
 * `until` replaced (they were swept), so the copy is whole only once those
 * operations are applied too. idx_set_loading() records both durably
 * (until 0 clears); records with gaps are accepted up to until + 1; the
 * marks go in the transaction that reaches them. idx_loading() returns
 * `until` while loading, else 0. */
int idx_set_loading(idx_kb_t *ix, uint64_t until, uint64_t ready, char *err,
                    size_t errlen);
uint64_t idx_loading(idx_kb_t *ix);
/* `ready` while loading, else 0. Writer thread. */
uint64_t idx_loading_ready(idx_kb_t *ix);

/* Undo entries kept (idx_store_undo_count). Any thread. */
uint64_t idx_undo_count(idx_kb_t *ix);

/* The next idx_close() writes no checkpoint: the store is about to be
 * moved aside, emptied or cut back. Writer thread. */
void idx_skip_close_checkpoint(idx_kb_t *ix);

/* Removes what is derived from the store in dir (the index checkpoint),
 * when the store itself is moved aside or emptied. */
void idx_remove_derived(const char *dir);

/* Opens the store in dir (not open elsewhere), drops its log records above
 * keep, with the documents they wrote, and closes it: a diverged replica
 * loses only the tail the leader does not have. *dropped: records removed. */
int idx_truncate_dir(const char *dir, uint64_t map_size, int nosync,
                     uint64_t keep, uint64_t *dropped, char *err,
                     size_t errlen);

/* Calls cb for each stored log record with LSN >= from (at most max), in
 * order, then once more with bytes == NULL (unless cb stopped the walk);
 * bytes are a serialized LogRecord, valid until that last call returns. A
 * non-zero return from cb stops the walk and is returned. */
int idx_read_log(idx_kb_t *ix, uint64_t from, size_t max, idx_log_cb cb, void *ctx,
                 char *err, size_t errlen);

#endif
