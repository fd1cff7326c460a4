/* idx_ckpt: vector index checkpoints of one node, private to indexer/. In:
 * the index state at one published version (idx_vec, postings, the delta
 * entries and removals the FAISS index does not hold yet). Out: DIR/index.ckpt,
 * written atomically; at open, that state read back, checked, and brought
 * up to the store's applied version. Owns no state between calls. */
#ifndef IDX_CKPT_H
#define IDX_CKPT_H

#include "idx_delta.h"
#include "idx_filter.h"
#include "idx_store.h"
#include "idx_vec.h"

#include <stddef.h>
#include <stdint.h>

#define IDX_CKPT_FILE "index.ckpt"
#define IDX_CKPT_FORMAT 3 /* 2: store_id; 3: filter values as written */
#define IDX_CKPT_INDEX_MAX 256 /* bytes of the index description kept */

/* The head of a checkpoint: what it covers and the settings it was written
 * with. Read alone by idx_ckpt_peek(), before the body is trusted. */
typedef struct idx_ckpt_head {
    uint32_t format; /* IDX_CKPT_FORMAT */
    uint32_t dim;
    uint32_t metric;                     /* idx_metric_t */
    char index[IDX_CKPT_INDEX_MAX];      /* KbMeta.index, NUL-terminated */
    uint64_t lsn;        /* covered: the published version it holds */
    uint64_t commit_us;  /* leader commit time of record lsn (0: lsn 0) */
    uint64_t docs;       /* live documents at lsn */
    uint64_t written_us; /* wall clock when the write started */
    uint64_t store_id;   /* the store's history id (meta "store_id"): a
                            checkpoint of another store, or of records a
                            truncation dropped since, never matches */
} idx_ckpt_head_t;

/* What a checkpoint holds besides its head; everything is borrowed for the
 * write and must not change during it (idx pauses the merger). */
typedef struct idx_ckpt_src {
    const idx_vec_t *vec;
    const void *postings; /* idx_filter_save() bytes, labels <= head.lsn */
    size_t postings_len;
    const idx_delta_t *delta; /* entries the FAISS index does not hold: */
    const uint64_t *extra;    /* their delta indexes, labels ascending */
    size_t nextra;
    const int64_t *rm; /* labels removed at or before head.lsn that vec
                          still has live (pending removals) */
    size_t nrm;
} idx_ckpt_src_t;

/* Asked between writes of a running checkpoint: non-zero gives it up. */
typedef int (*idx_ckpt_stop_fn)(void *ctx);

/* Writes DIR/index.ckpt: a temp file, fsync, rename over the old one,
 * fsync of DIR; the old checkpoint stays until the rename. mbps > 0 paces
 * the writes to at most that many MB/s (so that a background checkpoint
 * takes its share of memory bandwidth and disk over seconds, not in a
 * burst). stop (may be NULL) is polled. *bytes (may be NULL) receives the
 * file size. Returns 0,
 * or -errno (disk), KB_EINDEX (FAISS), KB_EUNAVAIL (stopped), KB_ENOMEM;
 * on failure the temp file is removed and the old checkpoint is intact. */
int idx_ckpt_write(const char *dir, const idx_ckpt_head_t *h,
                   const idx_ckpt_src_t *src, uint32_t mbps,
                   idx_ckpt_stop_fn stop, void *stop_ctx, uint64_t *bytes,
                   char *err, size_t errlen);

/* Reads and checks the head of DIR/index.ckpt (magic, format, its own
 * checksum, file size against the trailer). Returns 0, -ENOENT (no
 * checkpoint), or KB_ECORRUPT / -errno naming what is wrong. */
int idx_ckpt_peek(const char *dir, idx_ckpt_head_t *h, char *err,
                  size_t errlen);

/* What idx_ckpt_load() hands back (owned by the caller: idx_ckpt_loaded_free
 * frees what is left in it). */
typedef struct idx_ckpt_loaded {
    idx_vec_t *vec;     /* the FAISS index and bitmaps, removals applied */
    idx_filter_t *flt;  /* postings of labels <= lsn */
    int64_t *xlabel;    /* the delta entries it held, ascending */
    float *x;           /* nx * dim floats */
    size_t nx;
} idx_ckpt_loaded_t;

void idx_ckpt_loaded_free(idx_ckpt_loaded_t *l);

/* Reads the whole checkpoint whose head was `want` (from idx_ckpt_peek(),
 * already judged usable) and checks it: same head, whole-file checksum,
 * FAISS index against dim/metric/index, live documents at the covered LSN
 * == head docs. Returns 0 and fills *out, or KB_ECORRUPT / KB_EINDEX /
 * -errno / KB_ENOMEM naming the reason (then *out holds nothing). */
int idx_ckpt_load(const char *dir, const idx_ckpt_head_t *want,
                  idx_ckpt_loaded_t *out, char *err, size_t errlen);

/* Brings a loaded checkpoint covering lsn up to the store's snapshot t:
 * vectors of documents live in t but not in l->vec go to delta (the
 * checkpoint's own delta entries first), in label order, with their
 * metadata added to l->flt; labels live in l->vec but not in t are
 * removed from it. A live document at or below lsn that the checkpoint
 * lacks means the checkpoint does not belong to this store: KB_ECORRUPT.
 * *added / *removed receive the counts. Returns 0, or KB_ECORRUPT /
 * KB_ESTORE / KB_ENOMEM. */
int idx_ckpt_catch_up(idx_rtxn_t *t, uint64_t lsn, uint32_t dim,
                      idx_ckpt_loaded_t *l, idx_delta_t *delta,
                      uint64_t *added, uint64_t *removed, char *err,
                      size_t errlen);

/* Removes DIR/index.ckpt (and a leftover temp file). Returns 0 or -errno
 * (-ENOENT when there was none). */
int idx_ckpt_remove(const char *dir);

#endif
