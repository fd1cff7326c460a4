/* idx: a node's knowledge base = idx_store (LMDB, the truth) + idx_vec
 * (FAISS, derived). In: validated ops (leader) or log records (replica).
 * Out: LSNs, hits, stats. The vector index is loaded from its checkpoint (or
 * rebuilt from the store) at open and updated after each durable commit; on
 * a replica, records the leader has not confirmed stay staged (STAGING).
 *
 * WRITE CONTRACT
 * A write is one LMDB transaction holding, for every op, the document (or its
 * removal), the id -> label mapping and the log record, plus the node's
 * applied state (LSN, commit time). Only after mdb_txn_commit() returns 0 is
 * the vector index touched, and only then may the caller acknowledge. A crash
 * between commit and index update loses nothing: the index is rebuilt from
 * the store at the next open. A document's FAISS label is the LSN of the
 * upsert that wrote it, so labels are unique for the life of the store and
 * replacing a document is "remove old label, add new label". */
#include "idx.h"

#include "idx_ckpt.h"
#include "idx_delta.h"
#include "idx_embed.h"
#include "idx_filter.h"
#include "idx_scrub.h"
#include "idx_store.h"
#include "idx_vec.h"
#include "kb_err.h"
#include "kb_json.h"
#include "kb_util.h"
#include "kb_wire.h"
#include "kbsync.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* 2: log compaction (meta log_start), undo entries on every node (meta
 * undo_from), staged records (meta staged), snapshot loading (meta
 * snapshot_until). A format-1 store is upgraded in place at open. */
#define IDX_FORMAT_VERSION 2
#define IDX_REBUILD_CHUNK 8192
#define IDX_MERGE_CHUNK_GRAPH 64   /* HNSW vectors merged per exclusive hold */
#define IDX_MERGE_CHUNK_FLAT 16384 /* flat/IVF vectors merged per hold */
#define IDX_MERGE_IDLE_MS 50       /* merger's look when nothing signals */
#define IDX_MERGE_MIN 4096         /* delta entries that start a flat merge */
#define IDX_MERGE_MAX_AGE_MS 200   /* ... or the age of the last merge */
#define IDX_GROW_BACKOFF_MS 10000  /* in-place growth after a failed copy */
#define IDX_TRAIN_MAX 100000       /* vectors an IVF is trained on, at most */
#define IDX_DEAD_MIN 1024          /* dead vectors before an automatic rebuild */
#define IDX_FILTER_BRUTE_MIN 4096  /* candidates always scored exactly */
#define IDX_PUBHIST 32             /* published-version samples kept */
#define IDX_PUBHIST_MS 100         /* ... one per this many ms at most */
#define IDX_COMPACT_LAG_MIN_MS 100 /* compaction stays at least this far */
#define IDX_COMPACT_LAG_MAX_MS 2000 /* ... and at most this far behind */
/* Background checkpoints write at most this many MB/s: about half of what
 * the test machine's disk takes (548 MB/s, dd with fdatasync), so that the
 * LMDB commits that fsync to the same disk keep the other half while a
 * 1.6 GB checkpoint (1M x 384 flat) is written. Whether pacing also helps
 * the queries running meanwhile was not measurable on the shared 2-core
 * machine (docs/ARCHITECTURE.md). Close and idx_checkpoint() go flat out. */
#define IDX_CKPT_MBPS 256u

/* The metadata of a document written while a rebuild runs, replayed on the
 * rebuild's fresh postings before they replace the live ones. */
typedef struct jentry {
    int64_t label;
    char *meta; /* owned */
    size_t meta_len;
} jentry_t;

/* A removal the FAISS index does not hold yet: label died at lsn. */
typedef struct pending_rm {
    int64_t label;
    uint64_t lsn;
} pending_rm_t;

struct idx {
    idx_store_t *store;
    idx_scrub_t *scrub; /* background digest checks, or NULL */
    char *confirmed_path; /* replicas: DIR/confirmed (see STAGING) */
    int confirmed_fd;     /* open on it, or -1 */
    int confirmed_warned;
    uint64_t loading;     /* snapshot: not servable below this LSN (0: no);
                             atomic: readers check it */
    uint64_t loading_ready; /* ... nor below this one (idx_set_loading) */
    /* Writer thread: published versions sampled every IDX_PUBHIST_MS, so
     * compaction can stay behind what searches may hold. */
    struct {
        uint64_t us, version;
    } pubhist[IDX_PUBHIST];
    size_t pubhist_at;
    uint64_t pub_last_us; /* monotonic: the last publish */
    uint64_t search_max_us; /* atomic: longest recent search (decays) */
    uint64_t search_decay_us; /* writer: when it was last halved */
    Kbsync__KbMeta *meta; /* as stored; immutable after open */
    uint32_t dim;
    int metric;     /* IDX_METRIC_* */
    uint32_t nlist; /* IVF lists (0: not IVF), the bound of nprobe */

    /* See THREADS in idx.h and the banner of the search section. */
    pthread_mutex_t vmu; /* guards view */
    idx_view_t view;
    pthread_rwlock_t vlock; /* writers preferred; guards vec, merged,
                               merge_paused; taken exclusively through
                               vlock_wr() / vlock_merger() */
    atomic_int vwant;       /* threads other than the merger waiting to
                               take vlock exclusively */
    idx_vec_t *vec;
    uint64_t merged;      /* delta entries below are in vec */
    idx_stats_t stats_cache; /* index figures of the last idx_stats*()
                                that got vlock (writer thread only) */
    int stats_cached;        /* stats_cache holds figures */
    int merge_paused;     /* a rebuild is building the next vec */
    idx_delta_t *delta;   /* appended by the writer; see idx_delta.h */
    pthread_mutex_t rm_mu; /* guards rm (removals vec does not hold) */
    pending_rm_t *rm;
    size_t rm_n, rm_cap;
    pthread_mutex_t fmu; /* guards flt */
    idx_filter_t *flt;

    /* Writer thread only: scratch for one write, vectors to add (with the
     * metadata of their documents) and labels to remove. */
    float *add_x;
    int64_t *add_label;
    const char **add_meta;
    size_t *add_meta_len;
    size_t add_n, add_cap;
    int64_t *rm_label;
    size_t rm_lab_n, rm_lab_cap;
    kb_arena_t arena;     /* the records idx_apply_log_staged() decodes */
    kb_arena_t pub_arena; /* ... and idx_publish() (called inside it) */
    uint64_t commits;
    double rebuild_s;

    /* The merger thread moves delta entries and removals into vec. */
    pthread_mutex_t mg_mu; /* guards mg_stop, mg_kick, mg_growing */
    pthread_cond_t mg_cv;
    int mg_stop, mg_kick, mg_started;
    int mg_growing; /* merge_grown() reads vec and the delta unlocked */
    uint64_t grows; /* mg_mu: grown copies swapped in */
    uint64_t grow_backoff_us; /* vlock: no grown copy before (a failure) */
    uint32_t grow_pause_ms;   /* KBSYNC_TEST_FAULT grow-pause-ms, at open */
    pthread_t mg_thr;

    /* Background rebuild. rb_mu guards rb_active, rb_stop, the journal and
     * rebuilds; lock order: vlock, then fmu, then rb_mu. */
    pthread_mutex_t rb_mu;
    int rb_active; /* a rebuild runs and postings are journaled */
    int rb_stop;   /* idx_close(): give up */
    jentry_t *jr;
    size_t jr_n, jr_cap;
    uint64_t rebuilds;
    int rb_started; /* writer thread: rb_thr must be joined */
    pthread_t rb_thr;
    idx_rtxn_t *rb_txn; /* the snapshot handed to the rebuild thread */
    uint64_t rb_docs;   /* live documents in that snapshot */
    int build_threads;  /* OpenMP threads of the opener: rebuilds use them */
    uint64_t rb_failed_at; /* rb_mu: version of the last failed rebuild */
    uint64_t rb_version; /* its version */

    /* Checkpoints (CHECKPOINTS below). ck_mu guards ck_active, ck_stop
     * and the figures; ck_pause is under vlock like merge_paused. */
    char *dir;          /* the data directory (owned copy) */
    uint64_t ck_ops;    /* IDX_CKPT_NEVER: no periodic checkpoints */
    uint64_t ck_secs;
    int ck_off;
    int ck_skip_close; /* idx_skip_close_checkpoint() */
    int opened;         /* idx_open() completed: close may checkpoint */
    int ck_pause;       /* vlock: a checkpoint reads vec; no merging */
    pthread_mutex_t ck_mu;
    pthread_cond_t ck_cv; /* ck_active went to 0 */
    int ck_active, ck_stop, ck_started, ck_loaded;
    pthread_t ck_thr;
    uint64_t ck_start_us; /* writer thread: when the last one started */
    uint64_t ck_lsn, ck_us, ck_count;
    uint64_t ck_extra; /* delta entries (unmerged vectors) the newest
                          checkpoint holds */
    double ck_s;
};

static int metric_code(const char *m)
{
    return !strcmp(m, "ip") ? IDX_METRIC_IP
           : !strcmp(m, "cosine") ? IDX_METRIC_COSINE
                                  : IDX_METRIC_L2;
}

static const char *metric_name(uint32_t code)
{
    return code == IDX_METRIC_IP       ? "ip"
           : code == IDX_METRIC_COSINE ? "cosine"
           : code == IDX_METRIC_L2     ? "l2"
                                       : "unknown";
}

static uint32_t ivf_nlist(const char *index)
{
    const char *p = strstr(index, "IVF");
    return p ? (uint32_t)strtoul(p + 3, NULL, 10) : 0;
}

/* ------------------------------------------------------------------ open */

static int idx_check_meta(const Kbsync__KbMeta *m, const idx_config_t *cfg,
                          const char *dir, char *err, size_t errlen)
{
    if (cfg->dim && cfg->dim != m->dim)
        return kb_seterr(
            err, errlen, KB_EMISMATCH,
            "%s holds a knowledge base of dim %u; --dim %u differs", dir,
            m->dim, cfg->dim);
    if (cfg->metric && strcmp(cfg->metric, m->metric))
        return kb_seterr(err, errlen, KB_EMISMATCH,
                         "%s holds a knowledge base with metric %s; --metric "
                         "%s differs",
                         dir, m->metric, cfg->metric);
    if (cfg->index && strcmp(cfg->index, m->index))
        return kb_seterr(err, errlen, KB_EMISMATCH,
                         "%s holds a knowledge base with index \"%s\"; --index "
                         "\"%s\" differs",
                         dir, m->index, cfg->index);
    if (cfg->node_id && strcmp(cfg->node_id, m->node_id))
        return kb_seterr(err, errlen, KB_EMISMATCH,
                         "%s belongs to node \"%s\"; --id \"%s\" differs", dir,
                         m->node_id, cfg->node_id);
    if (m->format_version != IDX_FORMAT_VERSION && m->format_version != 1)
        return kb_seterr(err, errlen, KB_EMISMATCH,
                         "%s has store format %u; this kbsync reads formats 1 "
                         "(upgraded in place) and %u",
                         dir, m->format_version, IDX_FORMAT_VERSION);
    return 0;
}

/* Format 1 -> 2, in one transaction (a crash leaves format 1 intact):
 * undo entries are complete only from the next LSN on, so compaction judges
 * older writes by the id map. Nothing else changes on disk. */
static int idx_upgrade_v1(idx_kb_t *ix, const char *dir, char *err,
                          size_t errlen)
{
    uint64_t head;
    idx_store_state(ix->store, &head, NULL);
    int rc = idx_store_set_undo_from(ix->store, head + 1, err, errlen);
    if (rc)
        return rc;
    ix->meta->format_version = IDX_FORMAT_VERSION;
    rc = idx_store_put_meta(ix->store, ix->meta, err, errlen);
    if (!rc)
        kb_info("%s: store format 1 upgraded to %u in place (LSN %llu)", dir,
                IDX_FORMAT_VERSION, (unsigned long long)head);
    return rc;
}

/* ------------------------------------------------------ building indexes */

/* A fresh vector index and postings, filled from one store snapshot. */
struct build {
    idx_kb_t *ix;
    idx_vec_t *vec;
    idx_filter_t *flt;
    float *x;
    int64_t *labels;
    size_t n;
    size_t train_n, train_cap; /* collecting training vectors */
    float *train_x;
    int *stop; /* rebuild thread: &ix->rb_stop (read under rb_mu) */
    char *err;
    size_t errlen;
};

static int build_stopped(struct build *b)
{
    if (!b->stop)
        return 0;
    pthread_mutex_lock(&b->ix->rb_mu);
    int stop = *b->stop;
    pthread_mutex_unlock(&b->ix->rb_mu);
    return stop ? kb_seterr(b->err, b->errlen, KB_EUNAVAIL, "stopped") : 0;
}

static int build_flush(struct build *b)
{
    int rc = idx_vec_add(b->vec, b->n, b->x, b->labels, b->err, b->errlen);
    b->n = 0;
    return rc ? rc : build_stopped(b);
}

static const Kbsync__Doc *build_doc(struct build *b, int64_t label,
                                    Kbsync__LogRecord **recp, const void *bytes,
                                    size_t len, int *rc)
{
    Kbsync__LogRecord *rec = kbsync__log_record__unpack(NULL, len, bytes);
    const Kbsync__Doc *d = rec ? rec->doc : NULL;
    *recp = rec;
    *rc = 0;
    if (!d || d->n_embedding != b->ix->dim) {
        *rc = kb_seterr(b->err, b->errlen, KB_ECORRUPT,
                        "document with label %lld: %s", (long long)label,
                        !rec ? "record cannot be decoded"
                        : !d ? "record holds no document"
                             : "embedding size differs from dim");
        return NULL;
    }
    return d;
}

static int train_visit(void *ctx, int64_t label, const void *bytes, size_t len)
{
    struct build *b = ctx;
    Kbsync__LogRecord *rec;
    int rc;
    const Kbsync__Doc *d = build_doc(b, label, &rec, bytes, len, &rc);
    if (d) {
        memcpy(b->train_x + b->train_n * b->ix->dim, d->embedding,
               sizeof(float) * b->ix->dim);
        b->train_n++;
    }
    if (rec)
        kbsync__log_record__free_unpacked(rec, NULL);
    return rc ? rc : b->train_n == b->train_cap ? 1 : 0;
}

static int build_visit(void *ctx, int64_t label, const void *bytes, size_t len)
{
    struct build *b = ctx;
    Kbsync__LogRecord *rec;
    int rc;
    const Kbsync__Doc *d = build_doc(b, label, &rec, bytes, len, &rc);
    if (d) {
        memcpy(b->x + b->n * b->ix->dim, d->embedding,
               sizeof(float) * b->ix->dim);
        b->labels[b->n++] = label;
        size_t ml = d->metadata_json ? strlen(d->metadata_json) : 0;
        rc = idx_filter_add(b->flt, label, d->metadata_json, ml);
        if (rc == KB_EBADJSON) /* validated on the way in: never expected */
            rc = kb_seterr(b->err, b->errlen, KB_ECORRUPT,
                           "document with label %lld: metadata is not a JSON "
                           "object",
                           (long long)label);
        else if (rc)
            rc = kb_seterr(b->err, b->errlen, rc, "out of memory");
    }
    if (rec)
        kbsync__log_record__free_unpacked(rec, NULL);
    if (!rc && b->n == IDX_REBUILD_CHUNK)
        rc = build_flush(b);
    return rc;
}

/* Builds a vector index and postings from the documents of snapshot t,
 * training an IVF index first when the snapshot holds enough documents
 * (at most IDX_TRAIN_MAX of them, the first in label order). ndocs is the
 * snapshot's live document count. */
/* Walks the live documents of snapshot *tp: in *tp itself at open (no
 * writer runs), or, for a background rebuild (stop set), by label list
 * taken from *tp, which then ends, and records read in short transactions
 * (idx_store_scan_labels: a long read transaction would keep LMDB from
 * reusing pages that writes and compaction free meanwhile). */
static int build_scan(struct build *b, idx_rtxn_t **tp, const uint64_t *labels,
                      size_t nl, idx_store_doc_cb cb)
{
    if (!b->stop)
        return idx_store_scan_docs_in(*tp, cb, b, b->err, b->errlen);
    return idx_store_scan_labels(b->ix->store, labels, nl, cb, b, b->err,
                                 b->errlen);
}

static int build_fresh(idx_kb_t *ix, idx_rtxn_t **tp, uint64_t ndocs,
                       int *stop, idx_vec_t **vec_out, idx_filter_t **flt_out,
                       char *err, size_t errlen)
{
    struct build b = {.ix = ix, .stop = stop, .err = err, .errlen = errlen};
    *vec_out = NULL;
    *flt_out = NULL;
    uint64_t *labels = NULL;
    size_t nl = 0;
    int rc = 0;
    if (stop) {
        rc = idx_store_live_labels(*tp, &labels, &nl, err, errlen);
        idx_store_rend(tp);
        if (rc)
            return rc;
    }
    rc = idx_vec_new(ix->dim, ix->meta->index, ix->metric, &b.vec, err,
                     errlen);
    if (!rc && idx_filter_new(&b.flt))
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (!rc && idx_vec_needs_training(b.vec) &&
        ndocs >= idx_vec_train_min(b.vec)) {
        b.train_cap = ndocs < IDX_TRAIN_MAX ? ndocs : IDX_TRAIN_MAX;
        b.train_x = malloc(sizeof(float) * ix->dim * b.train_cap);
        if (!b.train_x)
            rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
        if (!rc) {
            rc = build_scan(&b, tp, labels, nl, train_visit);
            if (rc == 1)
                rc = 0;
        }
        if (!rc) {
            uint64_t t0 = kb_mono_us();
            rc = idx_vec_train(b.vec, b.train_n, b.train_x, err, errlen);
            if (!rc)
                kb_info("trained index \"%s\" on %zu vectors in %.2f s",
                        ix->meta->index, b.train_n,
                        (double)(kb_mono_us() - t0) / 1e6);
        }
        free(b.train_x);
    }
    if (!rc) {
        b.x = malloc(sizeof(float) * ix->dim * IDX_REBUILD_CHUNK);
        b.labels = malloc(sizeof(int64_t) * IDX_REBUILD_CHUNK);
        rc = (!b.x || !b.labels)
                 ? kb_seterr(err, errlen, KB_ENOMEM, "out of memory")
                 : build_scan(&b, tp, labels, nl, build_visit);
        if (!rc && b.n)
            rc = build_flush(&b);
    }
    free(b.x);
    free(b.labels);
    free(labels);
    if (rc) {
        idx_vec_free(&b.vec);
        idx_filter_free(&b.flt);
        return rc;
    }
    *vec_out = b.vec;
    *flt_out = b.flt;
    return 0;
}

/* Open-time build from the current store (nothing else runs yet). */
static int idx_build_now(idx_kb_t *ix, char *err, size_t errlen)
{
    uint64_t t0 = kb_mono_us();
    idx_rtxn_t *t;
    int rc = idx_store_rbegin(ix->store, &t, err, errlen);
    if (rc)
        return rc;
    idx_vec_t *vec;
    idx_filter_t *flt;
    rc = build_fresh(ix, &t, idx_store_count(ix->store), NULL, &vec, &flt, err,
                     errlen);
    idx_store_rend(&t);
    if (rc)
        return rc;
    idx_vec_free(&ix->vec);
    idx_filter_free(&ix->flt);
    ix->vec = vec;
    ix->flt = flt;
    ix->rebuild_s = (double)(kb_mono_us() - t0) / 1e6;
    return 0;
}

static int idx_reserve(idx_kb_t *ix, size_t adds, size_t rms)
{
    if (adds > ix->add_cap) {
        float *x = realloc(ix->add_x, sizeof(float) * ix->dim * adds);
        if (!x)
            return KB_ENOMEM;
        ix->add_x = x;
        int64_t *l = realloc(ix->add_label, sizeof(int64_t) * adds);
        if (!l)
            return KB_ENOMEM;
        ix->add_label = l;
        const char **m = realloc(ix->add_meta, sizeof(char *) * adds);
        if (!m)
            return KB_ENOMEM;
        ix->add_meta = m;
        size_t *ml = realloc(ix->add_meta_len, sizeof(size_t) * adds);
        if (!ml)
            return KB_ENOMEM;
        ix->add_meta_len = ml;
        ix->add_cap = adds;
    }
    if (rms > ix->rm_lab_cap) {
        int64_t *l = realloc(ix->rm_label, sizeof(int64_t) * rms);
        if (!l)
            return KB_ENOMEM;
        ix->rm_label = l;
        ix->rm_lab_cap = rms;
    }
    return 0;
}

static void *merger_main(void *arg);
static int idx_drop_unconfirmed(idx_kb_t *ix, char *err, size_t errlen);
static int ckpt_load(idx_kb_t *ix);
static void ckpt_join(idx_kb_t *ix, int stop);
static void ckpt_wait(idx_kb_t *ix);
static void ckpt_at_close(idx_kb_t *ix);
static void ckpt_maybe_start(idx_kb_t *ix);

void idx_setup(int threads)
{
    idx_vec_setup(threads);
}

int idx_open(const idx_config_t *cfg, idx_kb_t **out, char *err, size_t errlen)
{
    *out = NULL;
    idx_kb_t *ix = calloc(1, sizeof *ix);
    if (!ix)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    kb_arena_init(&ix->arena);
    kb_arena_init(&ix->pub_arena);
    ix->confirmed_fd = -1;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* A merger waiting for the lock stops new searches from taking it, so
     * it waits for the searches already running, never for a queue of
     * them. */
    pthread_rwlockattr_setkind_np(&ra,
                                  PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&ix->vlock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&ix->vmu, NULL);
    pthread_mutex_init(&ix->rm_mu, NULL);
    pthread_mutex_init(&ix->fmu, NULL);
    pthread_mutex_init(&ix->rb_mu, NULL);
    pthread_mutex_init(&ix->mg_mu, NULL);
    pthread_cond_init(&ix->mg_cv, NULL);
    pthread_mutex_init(&ix->ck_mu, NULL);
    pthread_cond_init(&ix->ck_cv, NULL);
    ix->ck_ops = cfg->ckpt_ops ? cfg->ckpt_ops : IDX_CKPT_OPS_DEFAULT;
    ix->ck_secs = cfg->ckpt_secs ? cfg->ckpt_secs : IDX_CKPT_SECS_DEFAULT;
    ix->ck_off = cfg->ckpt_off;
    {
        const char *f = getenv("KBSYNC_TEST_FAULT");
        const char *p = f ? strstr(f, "grow-pause-ms:") : NULL;
        if (p)
            ix->grow_pause_ms = (uint32_t)strtoul(p + 14, NULL, 10);
    }
    if (!(ix->dir = strdup(cfg->dir))) {
        idx_close(&ix);
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    int rc = idx_store_open(cfg->dir, cfg->map_size, cfg->nosync, &ix->store,
                            err, errlen);
    if (!rc)
        rc = idx_store_get_meta(ix->store, &ix->meta, err, errlen);
    if (rc)
        goto fail;

    if (!ix->meta) {
        if (!cfg->dim) {
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "%s holds no knowledge base yet; give --dim to "
                           "create one",
                           cfg->dir);
            goto fail;
        }
        if (cfg->dim > KB_MAX_DIM) {
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "--dim %u is above the "
                           "maximum %u",
                           cfg->dim, KB_MAX_DIM);
            goto fail;
        }
        const char *metric = cfg->metric ? cfg->metric : "ip";
        if (strcmp(metric, "ip") && strcmp(metric, "l2") &&
            strcmp(metric, "cosine")) {
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "--metric must be ip, l2 or cosine, not \"%s\"",
                           metric);
            goto fail;
        }
        Kbsync__KbMeta m = KBSYNC__KB_META__INIT;
        m.format_version = IDX_FORMAT_VERSION;
        m.dim = cfg->dim;
        m.metric = (char *)metric;
        m.index = (char *)(cfg->index ? cfg->index : "IDMap2,Flat");
        m.node_id = (char *)(cfg->node_id ? cfg->node_id : "node");
        m.embedder = (char *)IDX_EMBED_NAME;
        /* Build the index first so a bad --index leaves no store behind
         * claiming it. */
        rc = idx_vec_new(m.dim, m.index, metric_code(metric), &ix->vec, err,
                         errlen);
        if (!rc)
            rc = idx_store_put_meta(ix->store, &m, err, errlen);
        if (!rc)
            rc = idx_store_get_meta(ix->store, &ix->meta, err, errlen);
        if (rc)
            goto fail;
        kb_info("created knowledge base in %s: dim %u, metric %s, index \"%s\"",
                cfg->dir, m.dim, m.metric, m.index);
    } else {
        rc = idx_check_meta(ix->meta, cfg, cfg->dir, err, errlen);
        if (!rc && ix->meta->format_version == 1)
            rc = idx_upgrade_v1(ix, cfg->dir, err, errlen);
        if (rc)
            goto fail;
    }
    ix->loading = idx_store_get_u64(ix->store, "snapshot_until");
    ix->loading_ready = idx_store_get_u64(ix->store, "snapshot_ready");
    ix->dim = ix->meta->dim;
    ix->metric = metric_code(ix->meta->metric);
    ix->nlist = ivf_nlist(ix->meta->index);
    if (cfg->replica) {
        size_t dl = strlen(cfg->dir);
        ix->confirmed_path = malloc(dl + sizeof "/confirmed");
        if (!ix->confirmed_path) {
            rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
            goto fail;
        }
        memcpy(ix->confirmed_path, cfg->dir, dl);
        memcpy(ix->confirmed_path + dl, "/confirmed", sizeof "/confirmed");
        rc = idx_drop_unconfirmed(ix, err, errlen);
        if (rc)
            goto fail;
    }
    ix->build_threads = omp_get_max_threads(); /* idx_vec_setup()'s */
    if (idx_delta_new(ix->dim, ix->metric, &ix->delta)) {
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
        goto fail;
    }
    int loaded = ix->ck_off ? 1 : ckpt_load(ix);
    if (loaded < 0)
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    else if (loaded)
        rc = idx_build_now(ix, err, errlen);
    if (rc)
        goto fail;
    idx_store_state(ix->store, &ix->view.version, &ix->view.commit_us);
    ix->view.docs = idx_store_count(ix->store);
    ix->pub_last_us = kb_mono_us(); /* the view at open is published */
    if (pthread_create(&ix->mg_thr, NULL, merger_main, ix)) {
        rc = kb_seterr(err, errlen, KB_ENOMEM, "cannot start the merger");
        goto fail;
    }
    ix->mg_started = 1;
    /* With the checks off (IDX_SCRUB_OFF) the thread still runs the
     * passes `kbsync verify` asks for, off the node's loop. */
    if (idx_scrub_start(ix->store,
                        cfg->scrub_ms == IDX_SCRUB_OFF
                            ? IDX_SCRUB_REQUESTS_ONLY
                            : cfg->scrub_ms,
                        cfg->scrub_hold_ms,
                        cfg->scrub_unchanged_ms, &ix->loading, &ix->scrub)) {
        rc = kb_seterr(err, errlen, KB_ENOMEM,
                       "cannot start the digest checks");
        goto fail;
    }
    ix->opened = 1;
    kb_info("opened %s: version %llu, %llu documents; %s index %s in %.3f s",
            cfg->dir, (unsigned long long)ix->view.version,
            (unsigned long long)ix->view.docs, idx_vec_kind(ix->vec),
            ix->ck_loaded ? "loaded from its checkpoint" : "built from LMDB",
            ix->rebuild_s);
    *out = ix;
    return 0;
fail:
    idx_close(&ix);
    return rc;
}

static void journal_free(idx_kb_t *ix)
{
    for (size_t i = 0; i < ix->jr_n; i++)
        free(ix->jr[i].meta);
    free(ix->jr);
    ix->jr = NULL;
    ix->jr_n = ix->jr_cap = 0;
}

void idx_close(idx_kb_t **ixp)
{
    if (!ixp || !*ixp)
        return;
    idx_kb_t *ix = *ixp;
    idx_scrub_stop(&ix->scrub);
    ckpt_join(ix, 1); /* first: a rebuild may wait for it */
    if (ix->rb_started) {
        pthread_mutex_lock(&ix->rb_mu);
        ix->rb_stop = 1;
        pthread_mutex_unlock(&ix->rb_mu);
        pthread_join(ix->rb_thr, NULL);
    }
    if (ix->mg_started) {
        pthread_mutex_lock(&ix->mg_mu);
        ix->mg_stop = 1;
        pthread_cond_signal(&ix->mg_cv);
        pthread_mutex_unlock(&ix->mg_mu);
        pthread_join(ix->mg_thr, NULL);
    }
    if (ix->opened)
        ckpt_at_close(ix);
    journal_free(ix);
    idx_vec_free(&ix->vec);
    idx_filter_free(&ix->flt);
    idx_delta_free(&ix->delta);
    free(ix->rm);
    idx_store_close(&ix->store);
    free(ix->confirmed_path);
    if (ix->confirmed_fd >= 0)
        close(ix->confirmed_fd);
    if (ix->meta)
        kbsync__kb_meta__free_unpacked(ix->meta, NULL);
    free(ix->add_x);
    free(ix->add_label);
    free(ix->add_meta);
    free(ix->add_meta_len);
    free(ix->rm_label);
    kb_arena_free(&ix->arena);
    kb_arena_free(&ix->pub_arena);
    pthread_rwlock_destroy(&ix->vlock);
    pthread_mutex_destroy(&ix->vmu);
    pthread_mutex_destroy(&ix->rm_mu);
    pthread_mutex_destroy(&ix->fmu);
    pthread_mutex_destroy(&ix->rb_mu);
    pthread_mutex_destroy(&ix->mg_mu);
    pthread_cond_destroy(&ix->mg_cv);
    pthread_mutex_destroy(&ix->ck_mu);
    pthread_cond_destroy(&ix->ck_cv);
    free(ix->dir);
    free(ix);
    *ixp = NULL;
}

/* -------------------------------------------------------------- validate */

/* Finite values, and a norm small enough that no score can overflow: with
 * |x|^2 and |q|^2 at most FLT_MAX / 4, an inner product stays within
 * FLT_MAX / 4 and a squared L2 distance, at most (|x| + |q|)^2, within
 * FLT_MAX. *bad is then n. */
static int check_floats(const float *x, size_t n, char *what, size_t *bad)
{
    double n2 = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            *bad = i;
            strcpy(what, isnan(x[i]) ? "NaN" : "infinite");
            return KB_ENONFINITE;
        }
        n2 += (double)x[i] * x[i];
    }
    if (n2 > FLT_MAX / 4.0) {
        *bad = n;
        strcpy(what, "too large");
        return KB_ENONFINITE;
    }
    return 0;
}

static int all_zero(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (x[i] != 0)
            return 0;
    return 1;
}

/* fresh: a new write from a client, held to the rules added since
 * records were first stored (id characters, UTF-8, the norm bound); a
 * record from the leader's log is judged as when it was written. */
static int validate_ops(const idx_kb_t *ix, const idx_op_t *ops, size_t n,
                        int fresh, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        const idx_op_t *o = &ops[i];
        size_t idlen = o->id ? strlen(o->id) : 0;
        if (idlen == 0)
            return kb_seterr(err, errlen, KB_EBADID, "op #%zu: empty id", i);
        if (idlen > KB_MAX_ID_LEN)
            return kb_seterr(err, errlen, KB_EBADID,
                             "op #%zu: id of %zu bytes is longer than %u", i,
                             idlen, KB_MAX_ID_LEN);
        if (o->op == IDX_OP_DELETE)
            continue; /* any id: a delete can only remove what is stored */
        for (size_t j = 0; fresh && j < idlen; j++) {
            unsigned char c = (unsigned char)o->id[j];
            if (c < 0x20 || c == 0x7f)
                return kb_seterr(err, errlen, KB_EBADID,
                                 "op #%zu: id has control character 0x%02x "
                                 "at byte %zu",
                                 i, c, j);
        }
        size_t bad_utf8 = fresh ? kb_utf8_check(o->id, idlen) : idlen;
        if (bad_utf8 < idlen)
            return kb_seterr(err, errlen, KB_EBADID,
                             "op #%zu: id is not valid UTF-8 at byte %zu", i,
                             bad_utf8);
        if (o->op != IDX_OP_UPSERT)
            return kb_seterr(err, errlen, KB_EINVAL,
                             "op #%zu (\"%s\"): "
                             "unknown operation %d",
                             i, o->id, (int)o->op);
        size_t tlen = o->text ? strlen(o->text) : 0;
        if (tlen > KB_MAX_TEXT_LEN)
            return kb_seterr(err, errlen, KB_ETOOBIG,
                             "doc #%zu (\"%s\"): text of %zu bytes is longer "
                             "than %u",
                             i, o->id, tlen, KB_MAX_TEXT_LEN);
        size_t bad_text =
            fresh ? kb_utf8_check(o->text ? o->text : "", tlen) : tlen;
        if (bad_text < tlen)
            return kb_seterr(err, errlen, KB_EINVAL,
                             "doc #%zu (\"%s\"): text is not valid UTF-8 at "
                             "byte %zu",
                             i, o->id, bad_text);
        if (o->embedding) {
            if (o->embedding_len != ix->dim)
                return kb_seterr(err, errlen, KB_EDIM,
                                 "doc #%zu (\"%s\"): embedding has %zu "
                                 "values, the knowledge base has dim %u",
                                 i, o->id, o->embedding_len, ix->dim);
            char what[16];
            size_t bad;
            if (check_floats(o->embedding, o->embedding_len, what, &bad) &&
                (fresh || bad < o->embedding_len))
                return bad == o->embedding_len
                           ? kb_seterr(err, errlen, KB_ENONFINITE,
                                       "doc #%zu (\"%s\"): embedding's "
                                       "squared norm is above %.3g: a score "
                                       "could overflow",
                                       i, o->id, FLT_MAX / 4.0)
                           : kb_seterr(err, errlen, KB_ENONFINITE,
                                       "doc #%zu (\"%s\"): embedding[%zu] "
                                       "is %s",
                                       i, o->id, bad, what);
            if (ix->metric == IDX_METRIC_COSINE &&
                all_zero(o->embedding, ix->dim))
                return kb_seterr(err, errlen, KB_EINVAL,
                                 "doc #%zu (\"%s\"): embedding is all zeros: "
                                 "it has no direction for the cosine metric",
                                 i, o->id);
        } else if (tlen == 0) {
            return kb_seterr(err, errlen, KB_EINVAL,
                             "doc #%zu (\"%s\"): neither embedding nor text "
                             "to embed",
                             i, o->id);
        } else if (!idx_embed_has_words(o->text, tlen)) {
            return kb_seterr(err, errlen, KB_EINVAL,
                             "doc #%zu (\"%s\"): text has no words to embed "
                             "(no letter, digit or non-ASCII character): "
                             "send an embedding with it, or leave it out",
                             i, o->id);
        } else if (ix->metric == IDX_METRIC_COSINE) {
            float buf[KB_MAX_DIM];
            idx_embed_text(o->text, tlen, buf, ix->dim);
            if (all_zero(buf, ix->dim))
                return kb_seterr(err, errlen, KB_EINVAL,
                                 "doc #%zu (\"%s\"): text has no words to "
                                 "embed (the cosine metric needs a direction)",
                                 i, o->id);
        }
        size_t mlen = o->metadata ? strlen(o->metadata) : 0;
        if (mlen > KB_MAX_METADATA_LEN)
            return kb_seterr(err, errlen, KB_ETOOBIG,
                             "doc #%zu (\"%s\"): metadata of %zu bytes is "
                             "longer than %u",
                             i, o->id, mlen, KB_MAX_METADATA_LEN);
        if (mlen) {
            char why[200];
            if (kb_json_check_object(o->metadata, mlen, why, sizeof why))
                return kb_seterr(err, errlen, KB_EBADJSON,
                                 "doc #%zu (\"%s\"): metadata: %s", i, o->id,
                                 why);
        }
    }
    return 0;
}

int idx_validate(const idx_kb_t *ix, const idx_op_t *ops, size_t n, char *err,
                 size_t errlen)
{
    return validate_ops(ix, ops, n, 1, err, errlen);
}

/* ----------------------------------------------------------------- write */

/* Index bookkeeping for one committed op: label `added` (or -1) holds vector
 * x and documents metadata meta, label `removed` (or -1) leaves the index.
 * x and meta must stay valid until idx_apply_vectors() returns. */
static void idx_note(idx_kb_t *ix, int64_t added, const float *x,
                     const char *meta, int64_t removed)
{
    if (removed >= 0)
        ix->rm_label[ix->rm_lab_n++] = removed;
    if (added >= 0) {
        memcpy(ix->add_x + ix->add_n * ix->dim, x, sizeof(float) * ix->dim);
        ix->add_meta[ix->add_n] = meta;
        ix->add_meta_len[ix->add_n] = meta ? strlen(meta) : 0;
        ix->add_label[ix->add_n++] = added;
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Journals the metadata of new documents for a running rebuild. Called with
 * fmu held, in the same hold as the change to the live postings, so that a
 * swap sees every change either in the postings it replaces or in the
 * journal. */
static void journal_add(idx_kb_t *ix, size_t n, const int64_t *labels,
                        const char *const *meta, const size_t *meta_len)
{
    pthread_mutex_lock(&ix->rb_mu);
    if (!ix->rb_active)
        goto out;
    if (ix->jr_n + n > ix->jr_cap) {
        size_t cap = ix->jr_cap ? ix->jr_cap : 1024;
        while (cap < ix->jr_n + n)
            cap *= 2;
        jentry_t *j = realloc(ix->jr, cap * sizeof *j);
        if (!j)
            goto nomem;
        ix->jr = j;
        ix->jr_cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        if (!meta_len[i])
            continue;
        jentry_t *e = &ix->jr[ix->jr_n];
        e->label = labels[i];
        e->meta = malloc(meta_len[i]);
        if (!e->meta)
            goto nomem;
        memcpy(e->meta, meta[i], meta_len[i]);
        e->meta_len = meta_len[i];
        ix->jr_n++;
    }
    goto out;
nomem:
    /* The rebuild cannot be completed without every change: give it up. */
    kb_error("out of memory journaling index changes; the background "
             "rebuild is abandoned");
    ix->rb_stop = 1;
out:
    pthread_mutex_unlock(&ix->rb_mu);
}

static void idx_maybe_rebuild(idx_kb_t *ix);

static void merger_kick(idx_kb_t *ix)
{
    pthread_mutex_lock(&ix->mg_mu);
    ix->mg_kick = 1;
    pthread_cond_signal(&ix->mg_cv);
    pthread_mutex_unlock(&ix->mg_mu);
}

/* After the commit, make the write searchable and publish it (see SEARCH):
 * new vectors go to the delta, removals to the pending list, metadata to
 * the postings, then the view moves to the new version in one short hold
 * of vmu. Nothing here waits for a search. A label added and removed
 * within the same write (the same id upserted twice) never reaches the
 * index. */
static int idx_apply_vectors(idx_kb_t *ix, const idx_view_t *pub, char *err,
                             size_t errlen)
{
    size_t keep = 0, rm = 0;
    /* Labels from first_new on were added by this write. */
    const int64_t first_new = ix->add_n ? ix->add_label[0] : INT64_MAX;
    if (ix->rm_lab_n) {
        qsort(ix->rm_label, ix->rm_lab_n, sizeof(int64_t), cmp_i64);
        /* add_label is ascending (labels are LSNs). */
        for (size_t i = 0; i < ix->add_n; i++) {
            int64_t l = ix->add_label[i];
            if (bsearch(&l, ix->rm_label, ix->rm_lab_n, sizeof l, cmp_i64))
                continue;
            if (keep != i) {
                ix->add_label[keep] = l;
                ix->add_meta[keep] = ix->add_meta[i];
                ix->add_meta_len[keep] = ix->add_meta_len[i];
                memcpy(ix->add_x + keep * ix->dim, ix->add_x + i * ix->dim,
                       sizeof(float) * ix->dim);
            }
            keep++;
        }
        for (size_t i = 0; i < ix->rm_lab_n; i++)
            if (ix->rm_label[i] < first_new)
                ix->rm_label[rm++] = ix->rm_label[i];
    } else {
        keep = ix->add_n;
    }
    idx_view_t v;
    if (pub) {
        v = *pub;
    } else {
        idx_store_state(ix->store, &v.version, &v.commit_us);
        v.docs = idx_store_count(ix->store);
    }
    int warned = 0;
    int rc;
    while ((rc = idx_delta_append(ix->delta, keep, ix->add_x,
                                  ix->add_label)) == KB_EUNAVAIL) {
        if (!warned++)
            kb_warn("%u vectors wait for the index merger; writes wait too",
                    IDX_DELTA_MAX);
        merger_kick(ix);
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    if (rc) {
        kb_error("out of memory adding %zu vectors after a durable commit; "
                 "stopping: restart the node to rebuild its index from LMDB",
                 keep);
        abort();
    }
    pthread_mutex_lock(&ix->fmu);
    for (size_t j = 0; j < keep && !rc; j++)
        rc = idx_filter_add(ix->flt, ix->add_label[j], ix->add_meta[j],
                            ix->add_meta_len[j]);
    journal_add(ix, keep, ix->add_label, ix->add_meta, ix->add_meta_len);
    pthread_mutex_unlock(&ix->fmu);
    if (rc) {
        kb_error("cannot add to the metadata postings after a durable "
                 "commit (%s); stopping: restart the node to rebuild them",
                 kb_strerror(rc));
        abort();
    }
    if (rm) {
        pthread_mutex_lock(&ix->rm_mu);
        if (ix->rm_n + rm > ix->rm_cap) {
            size_t cap = ix->rm_cap ? ix->rm_cap : 1024;
            while (cap < ix->rm_n + rm)
                cap *= 2;
            pending_rm_t *p = realloc(ix->rm, cap * sizeof *p);
            if (!p) {
                kb_error("out of memory noting %zu removals after a durable "
                         "commit; stopping: restart the node",
                         rm);
                abort();
            }
            ix->rm = p;
            ix->rm_cap = cap;
        }
        for (size_t i = 0; i < rm; i++)
            ix->rm[ix->rm_n++] = (pending_rm_t){ix->rm_label[i], v.version};
        pthread_mutex_unlock(&ix->rm_mu);
    }
    pthread_mutex_lock(&ix->vmu);
    ix->view = v;
    pthread_mutex_unlock(&ix->vmu);
    uint64_t now = kb_mono_us();
    ix->pub_last_us = now;
    size_t last = (ix->pubhist_at + IDX_PUBHIST - 1) % IDX_PUBHIST;
    if (now - ix->pubhist[last].us >= IDX_PUBHIST_MS * 1000u) {
        ix->pubhist[ix->pubhist_at].us = now;
        ix->pubhist[ix->pubhist_at].version = v.version;
        ix->pubhist_at = (ix->pubhist_at + 1) % IDX_PUBHIST;
    }
    ix->add_n = ix->rm_lab_n = 0;
    if (keep || rm)
        merger_kick(ix);
    idx_maybe_rebuild(ix);
    (void)err;
    (void)errlen;
    return 0;
}

/* Fills a Doc for an upsert op; vec receives the vector to index (written
 * to buf, dim floats, when the op has text only). */
static void idx_doc_from_op(idx_kb_t *ix, const idx_op_t *o, Kbsync__Doc *d,
                            float *buf, const float **vec)
{
    kbsync__doc__init(d);
    d->id = (char *)o->id;
    d->text = (char *)(o->text ? o->text : "");
    d->metadata_json = (char *)(o->metadata ? o->metadata : "");
    if (o->embedding) {
        *vec = o->embedding;
    } else {
        idx_embed_text(d->text, strlen(d->text), buf, ix->dim);
        *vec = buf;
    }
    d->n_embedding = ix->dim;
    d->embedding = (float *)*vec;
}

int idx_write(idx_kb_t *ix, const idx_op_t *ops, size_t n, uint64_t commit_us,
              uint64_t *lsns, idx_log_cb precommit, void *ctx, char *err,
              size_t errlen)
{
    return idx_write_ex(ix, ops, n, commit_us, lsns, precommit, ctx, NULL, 0,
                        err, errlen);
}

int idx_dedup_get(idx_kb_t *ix, const void *key, size_t klen,
                  idx_dedup_result_t *out)
{
    idx_store_dedup_t d;
    int rc = idx_store_dedup_get(ix->store, key, klen, &d);
    if (!rc) {
        out->first = d.first;
        out->version = d.version;
        out->commit_us = d.commit_us;
        out->hash = d.hash;
        out->written = d.written;
        out->missing = d.missing;
    }
    return rc;
}

int idx_dedup_expire(idx_kb_t *ix, uint64_t before_us, uint64_t max_entries,
                     size_t max_step, uint64_t *removed, uint64_t *left,
                     char *err, size_t errlen)
{
    return idx_store_dedup_expire(ix->store, before_us, max_entries, max_step,
                                  removed, left, err, errlen);
}

int idx_write_ex(idx_kb_t *ix, const idx_op_t *ops, size_t n,
                 uint64_t commit_us, uint64_t *lsns, idx_log_cb precommit,
                 void *ctx, const idx_dedup_t *dd, size_t ndd, char *err,
                 size_t errlen)
{
    if (n == 0)
        return 0;
    if (!commit_us)
        commit_us = kb_wall_us();
    if (idx_reserve(ix, n, n))
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    idx_wtxn_t *t;
    int rc = idx_store_begin(ix->store, &t, err, errlen);
    if (rc)
        return rc;
    idx_store_keep_undo(t); /* compaction finds replaced records by it */
    uint64_t lsn;
    idx_store_state(ix->store, &lsn, NULL);
    const uint64_t first = lsn + 1;
    for (size_t i = 0; i < n && !rc; i++) {
        const idx_op_t *o = &ops[i];
        int64_t old = -1;
        if (o->op == IDX_OP_UPSERT) {
            Kbsync__Doc d;
            const float *vec;
            float buf[KB_MAX_DIM];
            idx_doc_from_op(ix, o, &d, buf, &vec);
            rc = idx_store_upsert(t, lsn + 1, commit_us, &d, &old, err, errlen);
            if (!rc) {
                lsns[i] = ++lsn;
                idx_note(ix, (int64_t)lsn, vec, o->metadata, old);
            }
        } else {
            rc = idx_store_delete(t, lsn + 1, commit_us, o->id, strlen(o->id),
                                  0, &old, err, errlen);
            if (!rc && old >= 0) {
                lsns[i] = ++lsn;
                idx_note(ix, -1, NULL, NULL, old);
            } else if (!rc) {
                lsns[i] = 0;
            }
        }
    }
    for (size_t i = 0; i < ndd && !rc; i++) {
        idx_store_dedup_t d = {0};
        d.commit_us = commit_us;
        d.hash = dd[i].hash;
        d.version = lsn; /* a request that wrote nothing: the head */
        for (size_t j = dd[i].first_op; j < dd[i].first_op + dd[i].nops; j++) {
            if (lsns[j]) {
                if (!d.written++)
                    d.first = lsns[j];
                d.version = lsns[j];
            } else {
                d.missing++;
            }
        }
        rc = idx_store_dedup_put(t, dd[i].key, dd[i].klen, &d, err, errlen);
    }
    if (!rc && precommit && lsn >= first) {
        rc = idx_store_txn_log(t, first, precommit, ctx, err, errlen);
    }
    if (rc) {
        idx_store_abort(&t);
        ix->add_n = ix->rm_lab_n = 0;
        return rc;
    }
    rc = idx_store_commit(&t, err, errlen);
    if (rc) {
        ix->add_n = ix->rm_lab_n = 0;
        return rc;
    }
    ix->commits++;
    return idx_apply_vectors(ix, NULL, err, errlen);
}

int idx_apply_log(idx_kb_t *ix, size_t n, const void *const *recs,
                  const size_t *lens, char *err, size_t errlen)
{
    return idx_apply_log_staged(ix, n, recs, lens, UINT64_MAX, err, errlen);
}

int idx_apply_log_staged(idx_kb_t *ix, size_t n, const void *const *recs,
                         const size_t *lens, uint64_t confirmed, char *err,
                         size_t errlen)
{
    if (n == 0)
        return idx_publish(ix, confirmed, err, errlen);
    if (idx_reserve(ix, n, n))
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    Kbsync__LogRecord **r = calloc(n, sizeof *r);
    if (!r)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    uint64_t lsn;
    idx_store_state(ix->store, &lsn, NULL);
    int rc = 0;
    /* Decode and check everything before the transaction: a bad record
     * changes nothing. */
    uint64_t prev = lsn;
    for (size_t i = 0; i < n && !rc; i++, prev = r[i - 1] ? r[i - 1]->lsn : prev) {
        r[i] = kbsync__log_record__unpack(&ix->arena.pc, lens[i], recs[i]);
        if (!r[i]) {
            rc = kb_seterr(err, errlen, KB_EBADMSG,
                           "log record #%zu (%zu bytes) cannot be decoded", i,
                           lens[i]);
        } else if (r[i]->lsn != prev + 1 &&
                   !(r[i]->lsn > prev && r[i]->lsn <= ix->loading + 1)) {
            /* Gaps are the compacted documents table of a snapshot: only
             * up to the first operation after it (ix->loading + 1). */
            rc = kb_seterr(err, errlen, KB_EGAP,
                           "log record #%zu has LSN %llu, expected %llu (%s)",
                           i, (unsigned long long)r[i]->lsn,
                           (unsigned long long)(prev + 1),
                           r[i]->lsn <= prev ? "duplicate or reordered"
                                             : "gap");
        } else if (r[i]->op == KBSYNC__LOG_OP__LOG_OP_UPSERT) {
            Kbsync__Doc *d = r[i]->doc;
            idx_op_t o = {IDX_OP_UPSERT,          d ? d->id : NULL,
                          d ? d->text : NULL,     d ? d->embedding : NULL,
                          d ? d->n_embedding : 0, d ? d->metadata_json : NULL};
            if (!d || !d->embedding)
                rc = kb_seterr(err, errlen, KB_EBADMSG,
                               "log record LSN %llu: upsert without embedding",
                               (unsigned long long)r[i]->lsn);
            else
                rc = validate_ops(ix, &o, 1, 0, err, errlen);
        } else if (r[i]->op == KBSYNC__LOG_OP__LOG_OP_DELETE) {
            idx_op_t o = {IDX_OP_DELETE, r[i]->id, NULL, NULL, 0, NULL};
            rc = validate_ops(ix, &o, 1, 0, err, errlen);
        } else {
            rc = kb_seterr(err, errlen, KB_EBADMSG,
                           "log record LSN %llu: unknown op %d",
                           (unsigned long long)r[i]->lsn, (int)r[i]->op);
        }
    }
    /* Fast path: everything published so far and every record confirmed:
     * publish this batch from the decoded records. Otherwise the records
     * are staged and idx_publish() reads the confirmed ones back. */
    idx_view_t pub;
    idx_view(ix, &pub);
    const int direct = !rc && pub.version == lsn && r[n - 1]->lsn <= confirmed;
    const int loaded = !rc && ix->loading && r[n - 1]->lsn >= ix->loading &&
                       r[n - 1]->lsn >= ix->loading_ready;
    idx_wtxn_t *t = NULL;
    if (!rc)
        rc = idx_store_begin(ix->store, &t, err, errlen);
    /* Undo entries let a diverged tail go quickly. A snapshot's documents
     * (up to ix->loading) are the leader's committed state and never go
     * back: an entry only where one replaced a document (none on a fresh
     * store), so that compaction has none to walk or delete. */
    if (!rc && ix->loading && r[n - 1]->lsn <= ix->loading)
        idx_store_keep_undo_replaced(t);
    else if (!rc)
        idx_store_keep_undo(t);
    /* The staged mark: the first LSN that may not be confirmed, while any
     * record is staged (see STAGING). */
    if (!rc)
        rc = idx_store_set_staged(t, direct ? 0 : pub.version + 1, err,
                                  errlen);
    if (!rc && loaded) /* the snapshot is complete with this batch */
        rc = idx_store_put_u64(t, "snapshot_until", 0, err, errlen);
    if (!rc && loaded && ix->loading_ready)
        rc = idx_store_put_u64(t, "snapshot_ready", 0, err, errlen);
    for (size_t i = 0; i < n && !rc; i++) {
        int64_t old = -1;
        idx_store_next_raw(t, recs[i], lens[i]); /* keep the leader's bytes */
        if (r[i]->op == KBSYNC__LOG_OP__LOG_OP_UPSERT) {
            rc = idx_store_upsert(t, r[i]->lsn, r[i]->commit_time_us, r[i]->doc,
                                  &old, err, errlen);
            if (!rc && direct)
                idx_note(ix, (int64_t)r[i]->lsn, r[i]->doc->embedding,
                         r[i]->doc->metadata_json, old);
        } else {
            rc = idx_store_delete(t, r[i]->lsn, r[i]->commit_time_us, r[i]->id,
                                  strlen(r[i]->id), 1, &old, err, errlen);
            if (!rc && direct)
                idx_note(ix, -1, NULL, NULL, old);
        }
    }
    if (!rc) {
        rc = idx_store_commit(&t, err, errlen);
    } else {
        idx_store_abort(&t);
    }
    if (!rc) {
        ix->commits++;
        if (loaded) {
            kb_info("snapshot complete at LSN %llu: %llu documents; serving "
                    "from now on",
                    (unsigned long long)r[n - 1]->lsn,
                    (unsigned long long)idx_store_count(ix->store));
            __atomic_store_n(&ix->loading, 0, __ATOMIC_RELEASE);
            ix->loading_ready = 0;
        }
        if (direct)
            rc = idx_apply_vectors(ix, NULL, err, errlen); /* meta in r[] */
        else
            rc = idx_publish(ix, confirmed, err, errlen);
    } else {
        ix->add_n = ix->rm_lab_n = 0;
    }
    kb_arena_reset(&ix->arena); /* every r[i] */
    free(r);
    return rc;
}

/* ---------------------------------------------------------------- staging
 *
 * STAGING (replicas)
 * The leader ships the records of a group commit that holds an `all` write
 * BEFORE its own commit, so that the replicas' fsyncs overlap its own. Until
 * the leader says it committed them (ReplBeat.committed_lsn), a replica
 * keeps such records durable in LMDB but unsearchable: if the leader dies
 * before its commit, no reader ever saw them. idx_apply_log_staged() commits
 * them with a mark in the store ("records above LSN m may be unconfirmed");
 * idx_publish() later reads the confirmed ones back from LMDB, with the
 * label each replaced (the undo entries), and makes them searchable in one
 * step. The published LSN is also written to DIR/confirmed (no fsync: it is
 * a hint that survives a process crash; without it the mark alone is used).
 * At open, a store with the mark drops its records above max(mark, the
 * hint) before building the index, so a restarted replica never serves an
 * unconfirmed record either; the leader sends them again if it has them. */

typedef struct confirmed_file {
    uint64_t magic, lsn, commit_us, check;
} confirmed_file_t;

#define CONFIRMED_MAGIC UINT64_C(0x6b62636f6e66726d) /* "kbconfrm" */

static uint64_t confirmed_check(const confirmed_file_t *c)
{
    return (c->magic ^ (c->lsn * UINT64_C(0x9e3779b97f4a7c15)) ^
            (c->commit_us * UINT64_C(0xc2b2ae3d27d4eb4f))) +
           1;
}

static void confirmed_write(idx_kb_t *ix, const idx_view_t *v)
{
    if (!ix->confirmed_path)
        return;
    confirmed_file_t c = {CONFIRMED_MAGIC, v->version, v->commit_us, 0};
    c.check = confirmed_check(&c);
    if (ix->confirmed_fd < 0) /* kept open: this runs on every `all` ack */
        ix->confirmed_fd =
            open(ix->confirmed_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (ix->confirmed_fd < 0 ||
        pwrite(ix->confirmed_fd, &c, sizeof c, 0) != (ssize_t)sizeof c) {
        if (!ix->confirmed_warned++)
            kb_warn("cannot write %s: %s (a hint only: after a crash, "
                    "records since the last mark are fetched again)",
                    ix->confirmed_path, strerror(errno));
    }
}

/* The hint's LSN, when the file is whole and names a record of this store
 * with the same commit time; else 0. */
static uint64_t confirmed_read(idx_kb_t *ix)
{
    confirmed_file_t c;
    int fd = open(ix->confirmed_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t got = pread(fd, &c, sizeof c, 0);
    close(fd);
    if (got != (ssize_t)sizeof c || c.magic != CONFIRMED_MAGIC ||
        c.check != confirmed_check(&c))
        return 0;
    return c.lsn && idx_commit_time(ix, c.lsn) == c.commit_us ? c.lsn : 0;
}

/* At open: drop records above the confirmed point (see STAGING). */
static int idx_drop_unconfirmed(idx_kb_t *ix, char *err, size_t errlen)
{
    uint64_t mark = idx_store_staged(ix->store), head;
    idx_store_state(ix->store, &head, NULL);
    if (!mark)
        return 0;
    uint64_t hint = confirmed_read(ix);
    uint64_t keep = hint > mark - 1 ? hint : mark - 1;
    uint64_t start = idx_store_log_start(ix->store);
    if (keep + 1 < start) {
        /* Not expected (compaction stays below the mark): keep what the
         * compacted log allows rather than refuse to open. */
        kb_warn("staged mark %llu is below the compacted log (start %llu); "
                "keeping the records up to %llu",
                (unsigned long long)mark, (unsigned long long)start,
                (unsigned long long)start - 1);
        keep = start - 1;
    }
    uint64_t dropped = 0;
    int rc = idx_store_truncate(ix->store, keep < head ? keep : head, &dropped,
                                err, errlen);
    if (rc)
        return rc;
    if (dropped)
        kb_info("dropped %llu records above LSN %llu that the leader had not "
                "confirmed before this replica stopped (it sends them again "
                "if it committed them)",
                (unsigned long long)dropped, (unsigned long long)keep);
    return 0;
}

typedef struct publish_ctx {
    idx_kb_t *ix;
    Kbsync__LogRecord **r;
    size_t n, cap;
    int64_t docs;
    uint64_t last_us;
    char *err;
    size_t errlen;
} publish_ctx_t;

static int publish_visit(void *ctx, uint64_t lsn, const void *b, size_t len,
                         int64_t old)
{
    publish_ctx_t *p = ctx;
    if (!b)
        return 0;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        Kbsync__LogRecord **m = realloc(p->r, cap * sizeof *m);
        if (!m || idx_reserve(p->ix, cap, cap)) {
            if (m)
                p->r = m;
            return kb_seterr(p->err, p->errlen, KB_ENOMEM, "out of memory");
        }
        p->r = m;
        p->cap = cap;
    }
    Kbsync__LogRecord *r =
        kbsync__log_record__unpack(&p->ix->pub_arena.pc, len, b);
    if (!r)
        return kb_seterr(p->err, p->errlen, KB_ECORRUPT,
                         "staged log record %llu cannot be decoded",
                         (unsigned long long)lsn);
    p->r[p->n++] = r;
    if (r->op == KBSYNC__LOG_OP__LOG_OP_UPSERT && r->doc &&
        r->doc->n_embedding == p->ix->dim) {
        idx_note(p->ix, (int64_t)lsn, r->doc->embedding, r->doc->metadata_json,
                 old);
        p->docs += old < 0;
    } else {
        idx_note(p->ix, -1, NULL, NULL, old);
        p->docs -= old >= 0;
    }
    p->last_us = r->commit_time_us;
    return 0;
}

int idx_publish(idx_kb_t *ix, uint64_t upto, char *err, size_t errlen)
{
    uint64_t head;
    idx_store_state(ix->store, &head, NULL);
    if (upto > head)
        upto = head;
    idx_view_t v;
    idx_view(ix, &v);
    if (upto <= v.version)
        return 0;
    publish_ctx_t p = {.ix = ix, .err = err, .errlen = errlen};
    ix->add_n = ix->rm_lab_n = 0;
    int rc = idx_store_read_staged(ix->store, v.version, upto, publish_visit,
                                   &p, err, errlen);
    if (!rc) {
        idx_view_t nv = {upto, p.last_us,
                         (uint64_t)((int64_t)v.docs + p.docs)};
        rc = idx_apply_vectors(ix, &nv, err, errlen);
        if (!rc)
            confirmed_write(ix, &nv);
    } else {
        ix->add_n = ix->rm_lab_n = 0;
    }
    kb_arena_reset(&ix->pub_arena); /* every p.r[i] */
    free(p.r);
    return rc;
}

/* ---------------------------------------------------------------- merger
 *
 * MERGER
 * One thread per knowledge base moves what the writer left in the delta
 * and the pending removals into the FAISS index, so that the delta stays
 * small (it is searched exactly, by brute force). Each step takes vlock
 * exclusively (it waits for the searches inside FAISS, never the writer),
 * adds up to IDX_MERGE_CHUNK_* delta entries to the index, advances
 * `merged`, then tombstones in the index the pending removals that are
 * published (lsn <= view) and whose labels the index now holds, and frees
 * delta blocks below `merged`. Readers take vlock shared and read `merged`
 * and the pending removals inside it, so each removal and each vector is
 * seen in exactly one place. Flat and IVF merges wait for IDX_MERGE_MIN
 * entries or IDX_MERGE_MAX_AGE_MS (each one makes new searches wait for the
 * running ones); HNSW merges in small chunks continuously. A step is
 * skipped while a rebuild prepares the next index (merge_paused): the
 * rebuild takes over from the delta and the pending list at its swap. A
 * step that would reallocate a large flat array is made on a copy outside
 * vlock (merge_grown()), and before each step the merger lets in any other
 * thread waiting for vlock exclusively (vlock_merger()). */

static int merge_finish(idx_kb_t *ix, uint64_t version);

/* One merge step, vlock held exclusively. Returns 1 when work remains. */
static int merge_step(idx_kb_t *ix)
{
    char err[256];
    pthread_mutex_lock(&ix->vmu);
    uint64_t version = ix->view.version;
    pthread_mutex_unlock(&ix->vmu);
    uint64_t n = idx_delta_count(ix->delta);
    size_t chunk = strcmp(idx_vec_kind(ix->vec), "hnsw") ? IDX_MERGE_CHUNK_FLAT
                                                         : IDX_MERGE_CHUNK_GRAPH;
    uint64_t end = ix->merged + chunk < n ? ix->merged + chunk : n;
    /* A step that would reallocate a large flat array under this lock is
     * left to merge_grown() (the delta grew since it looked), unless
     * growing beside the searches failed lately. */
    if (end > ix->merged && kb_mono_us() >= ix->grow_backoff_us &&
        idx_vec_grow_due(ix->vec, (size_t)(end - ix->merged)))
        return 1;
    int rc = 0;
    int64_t *labels = malloc(chunk * sizeof *labels);
    if (!labels)
        return 0; /* try again later */
    while (ix->merged < end && !rc) {
        /* Entries are contiguous within a delta block. */
        uint64_t i = ix->merged, m = 1;
        const float *x = idx_delta_vector(ix->delta, i);
        while (i + m < end && idx_delta_vector(ix->delta, i + m) ==
                                  x + (size_t)m * ix->dim)
            m++;
        for (uint64_t j = 0; j < m; j++)
            labels[j] = idx_delta_label(ix->delta, i + j);
        rc = idx_vec_add(ix->vec, (size_t)m, x, labels, err, sizeof err);
        if (!rc)
            ix->merged += m;
    }
    free(labels);
    if (rc) {
        kb_error("cannot add merged vectors to the index (%s); stopping: "
                 "restart the node to rebuild its index from LMDB",
                 err);
        abort();
    }
    return merge_finish(ix, version);
}

/* The end of a merge step, vlock held exclusively: tombstones the pending
 * removals published at or before `version` whose labels vec holds, frees
 * the delta blocks below `merged`. Returns 1 when delta entries remain. */
static int merge_finish(idx_kb_t *ix, uint64_t version)
{
    char err[256];
    uint64_t n = idx_delta_count(ix->delta);
    int64_t first_unmerged =
        ix->merged < n ? idx_delta_label(ix->delta, ix->merged) : INT64_MAX;
    pthread_mutex_lock(&ix->rm_mu);
    size_t keep = 0, nr = 0;
    int64_t *done = malloc((ix->rm_n ? ix->rm_n : 1) * sizeof *done);
    for (size_t i = 0; i < ix->rm_n; i++) {
        pending_rm_t r = ix->rm[i];
        if (done && r.lsn <= version && r.label < first_unmerged)
            done[nr++] = r.label;
        else
            ix->rm[keep++] = r;
    }
    ix->rm_n = keep;
    pthread_mutex_unlock(&ix->rm_mu);
    if (nr)
        idx_vec_remove(ix->vec, nr, done, err, sizeof err);
    free(done);
    idx_delta_free_below(ix->delta, ix->merged);
    return ix->merged < n;
}

/* VLOCK FOR WRITERS. The merger takes vlock exclusively step after step;
 * the writer-preferring rwlock lets the waiting searches in between two
 * steps, but not another thread waiting for it exclusively, which then
 * waited for the merger's whole backlog (97 s for a checkpoint behind an
 * HNSW merge of 50k vectors), and every search and status request waited
 * behind it. So the others announce themselves (vlock_wr) and the merger
 * lets them in before its next step (vlock_merger). */
static void vlock_wr(idx_kb_t *ix)
{
    atomic_fetch_add(&ix->vwant, 1);
    pthread_rwlock_wrlock(&ix->vlock);
    atomic_fetch_sub(&ix->vwant, 1);
}

static void vlock_merger(idx_kb_t *ix)
{
    while (atomic_load(&ix->vwant))
        nanosleep(&(struct timespec){0, 100000}, NULL);
    pthread_rwlock_wrlock(&ix->vlock);
}

/* KBSYNC_TEST_FAULT=grow-pause-ms:N (tests only; read at open): the
 * merger sleeps N ms after making a grown copy, before it takes vlock to
 * swap it in, so that a test can search while the copy is being made. */
static void grow_test_pause(const idx_kb_t *ix)
{
    uint32_t ms = ix->grow_pause_ms;
    if (ms)
        nanosleep(&(struct timespec){(time_t)(ms / 1000),
                                     (long)(ms % 1000) * 1000000L},
                  NULL);
}

/* A merge step whose add may reallocate a large flat index (idx_vec.h,
 * "growth outside the lock"): the grown copy, with the step's vectors, is
 * made with no lock held while searches go on; then, under vlock, it is
 * swapped in if nothing paused merging meanwhile (a checkpoint reading vec,
 * a rebuild), else dropped and the next step tries again. mg_growing keeps
 * a rebuild from swapping vec or freeing the delta entries read here until
 * this ends (grow_wait()). Returns -1 when it did nothing (no growth due;
 * the ordinary step follows), else 1 when delta entries remain. */
static int merge_grown(idx_kb_t *ix)
{
    char err[256];
    pthread_rwlock_rdlock(&ix->vlock);
    uint64_t from = ix->merged, n = idx_delta_count(ix->delta);
    uint64_t m = from + IDX_MERGE_CHUNK_FLAT < n ? IDX_MERGE_CHUNK_FLAT
                                                 : n - from;
    /* the whole step: what merge_step() would add in place */
    int due = !ix->merge_paused && !ix->ck_pause && m &&
              kb_mono_us() >= ix->grow_backoff_us &&
              idx_vec_grow_due(ix->vec, (size_t)m);
    if (due) {
        pthread_mutex_lock(&ix->mg_mu);
        ix->mg_growing = 1;
        pthread_mutex_unlock(&ix->mg_mu);
    }
    idx_vec_t *vec = ix->vec;
    pthread_rwlock_unlock(&ix->vlock);
    if (!due)
        return -1;

    uint64_t t0 = kb_mono_us();
    idx_vec_grown_t *g = NULL;
    /* The step's entries span delta blocks: gathered into one array. */
    int64_t *labels = malloc(m * sizeof *labels);
    float *x = malloc(m * ix->dim * sizeof *x);
    int rc = labels && x ? 0
                         : kb_seterr(err, sizeof err, KB_ENOMEM, "out of memory");
    for (uint64_t j = 0; !rc && j < m; j++) {
        labels[j] = idx_delta_label(ix->delta, from + j);
        memcpy(x + j * ix->dim, idx_delta_vector(ix->delta, from + j),
               ix->dim * sizeof *x);
    }
    if (!rc)
        rc = idx_vec_grow(vec, (size_t)m, x, labels, &g, err, sizeof err);
    free(x);
    grow_test_pause(ix);
    uint64_t t1 = kb_mono_us();
    int out = -1;
    vlock_merger(ix);
    if (!rc && (ix->merge_paused || ix->ck_pause || ix->merged != from))
        rc = kb_seterr(err, sizeof err, KB_EUNAVAIL, "merging was paused");
    if (!rc)
        rc = idx_vec_adopt(ix->vec, g, err, sizeof err);
    if (!rc) {
        ix->merged = from + m;
        pthread_mutex_lock(&ix->vmu);
        uint64_t version = ix->view.version;
        pthread_mutex_unlock(&ix->vmu);
        out = merge_finish(ix, version);
    } else if (rc != KB_EUNAVAIL) {
        /* The next steps add in place (under the lock), as before this
         * existed; the copy is tried again after a while. */
        ix->grow_backoff_us = kb_mono_us() + IDX_GROW_BACKOFF_MS * 1000u;
    }
    uint64_t stored = idx_vec_stored(ix->vec);
    pthread_rwlock_unlock(&ix->vlock);
    pthread_mutex_lock(&ix->mg_mu);
    ix->mg_growing = 0;
    ix->grows += !rc;
    pthread_cond_broadcast(&ix->mg_cv);
    pthread_mutex_unlock(&ix->mg_mu);
    idx_vec_grown_free(&g); /* the old index, after the swap */
    free(labels);
    if (!rc)
        kb_info("vector index grown to %llu vectors beside the searches in "
                "%.2f s (swapped in %.1f ms)",
                (unsigned long long)stored, (double)(t1 - t0) / 1e6,
                (double)(kb_mono_us() - t1) / 1e3);
    else if (rc != KB_EUNAVAIL)
        kb_warn("cannot grow the vector index beside the searches (%s); "
                "growing it in place for %d s",
                err, IDX_GROW_BACKOFF_MS / 1000);
    return out;
}

/* Rebuild thread, before it swaps vec and frees delta blocks: waits for a
 * grown copy being made from them (merge_grown()). */
static void grow_wait(idx_kb_t *ix)
{
    pthread_mutex_lock(&ix->mg_mu);
    while (ix->mg_growing)
        pthread_cond_wait(&ix->mg_cv, &ix->mg_mu);
    pthread_mutex_unlock(&ix->mg_mu);
}

static void *merger_main(void *arg)
{
    idx_kb_t *ix = arg;
    /* Merging competes with searches for the cores: one FAISS thread. */
    omp_set_num_threads(1);
    uint64_t last_us = kb_mono_us();
    for (;;) {
        pthread_mutex_lock(&ix->mg_mu);
        if (!ix->mg_kick && !ix->mg_stop) {
            struct timespec ts;
            kb_abstime_in(&ts, IDX_MERGE_IDLE_MS * 1000u);
            pthread_cond_timedwait(&ix->mg_cv, &ix->mg_mu, &ts);
        }
        int stop = ix->mg_stop;
        ix->mg_kick = 0;
        pthread_mutex_unlock(&ix->mg_mu);
        if (stop)
            break;
        /* Merge in bulk: each step makes new searches wait for the ones
         * inside FAISS, and a small delta costs searches little. */
        pthread_rwlock_rdlock(&ix->vlock);
        uint64_t pending = idx_delta_count(ix->delta) - ix->merged;
        int paused = ix->merge_paused || ix->ck_pause;
        int graph = !strcmp(idx_vec_kind(ix->vec), "hnsw");
        pthread_rwlock_unlock(&ix->vlock);
        pthread_mutex_lock(&ix->rm_mu);
        size_t rms = ix->rm_n;
        pthread_mutex_unlock(&ix->rm_mu);
        uint64_t now = kb_mono_us();
        if (paused || (!pending && !rms))
            continue;
        if (!graph && pending < IDX_MERGE_MIN && rms < IDX_MERGE_MIN &&
            now - last_us < IDX_MERGE_MAX_AGE_MS * 1000u)
            continue;
        last_us = now;
        int more = 1;
        while (more) {
            more = graph ? -1 : merge_grown(ix);
            if (more < 0) {
                vlock_merger(ix);
                more = ix->merge_paused || ix->ck_pause ? 0 : merge_step(ix);
                pthread_rwlock_unlock(&ix->vlock);
            }
            pthread_mutex_lock(&ix->mg_mu);
            if (ix->mg_stop)
                more = 0;
            pthread_mutex_unlock(&ix->mg_mu);
        }
    }
    return NULL;
}

/* ------------------------------------------------------- background rebuild
 *
 * BACKGROUND REBUILD
 * Tombstoned vectors (replaced or deleted documents) stay in the FAISS index
 * until it is rebuilt, and an IVF index searches exactly until trained. The
 * writer starts a rebuild (idx_rebuild_start(), or automatically when dead
 * vectors pass IDX_DEAD_MIN and a quarter of the stored ones, or when an
 * untrained IVF holds enough documents to train): between two writes it
 * opens a store snapshot at the published version S, pauses the merger and
 * turns the postings journal on. The rebuild thread builds a fresh index
 * and postings from that snapshot (training first for IVF) while queries
 * and writes go on against the live index and the delta (which grows: the
 * merger is paused). Then, holding vlock exclusively, it swaps the fresh
 * index in, takes the delta over from the first entry above S, drops the
 * pending removals at or below S (the snapshot has them), replays the
 * journaled metadata on the fresh postings and swaps them in, and resumes
 * the merger. The writer never waits for any of it. */

static void *rebuild_main(void *arg)
{
    idx_kb_t *ix = arg;
    omp_set_num_threads(ix->build_threads);
    char err[512];
    uint64_t t0 = kb_mono_us();
    idx_vec_t *vec = NULL;
    idx_filter_t *flt = NULL;
    idx_rtxn_t *t = ix->rb_txn;
    int rc = build_fresh(ix, &t, ix->rb_docs, &ix->rb_stop, &vec, &flt, err,
                         sizeof err);
    idx_store_rend(&t);
    const uint64_t S = ix->rb_version;
    ckpt_wait(ix); /* a checkpoint may be reading the index it replaces */
    grow_wait(ix); /* the merger may be copying it */
    vlock_wr(ix);
    pthread_mutex_lock(&ix->fmu);
    pthread_mutex_lock(&ix->rb_mu);
    if (!rc && ix->rb_stop)
        rc = kb_seterr(err, sizeof err, KB_EUNAVAIL, "stopped");
    for (size_t i = 0; i < ix->jr_n && !rc; i++)
        if (idx_filter_add(flt, ix->jr[i].label, ix->jr[i].meta,
                           ix->jr[i].meta_len))
            rc = kb_seterr(err, sizeof err, KB_ENOMEM, "out of memory");
    idx_vec_t *old_vec = NULL;
    idx_filter_t *old_flt = NULL;
    uint64_t dead_dropped = 0;
    size_t replayed = ix->jr_n;
    if (!rc) {
        old_vec = ix->vec;
        old_flt = ix->flt;
        dead_dropped = idx_vec_dead(old_vec);
        ix->vec = vec;
        ix->flt = flt;
        vec = NULL;
        flt = NULL;
        /* The snapshot holds every delta entry up to S. */
        uint64_t n = idx_delta_count(ix->delta), lo = ix->merged, hi = n;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (idx_delta_label(ix->delta, mid) <= (int64_t)S)
                lo = mid + 1;
            else
                hi = mid;
        }
        ix->merged = lo;
        idx_delta_free_below(ix->delta, ix->merged);
        pthread_mutex_lock(&ix->rm_mu);
        size_t keep = 0;
        for (size_t i = 0; i < ix->rm_n; i++)
            if (ix->rm[i].lsn > S)
                ix->rm[keep++] = ix->rm[i];
        ix->rm_n = keep;
        pthread_mutex_unlock(&ix->rm_mu);
        ix->rebuilds++;
    }
    ix->rb_active = 0;
    ix->merge_paused = 0;
    journal_free(ix);
    pthread_mutex_unlock(&ix->rb_mu);
    pthread_mutex_unlock(&ix->fmu);
    uint64_t stored = idx_vec_stored(ix->vec);
    pthread_rwlock_unlock(&ix->vlock);
    merger_kick(ix);
    double secs = (double)(kb_mono_us() - t0) / 1e6;
    if (rc) {
        pthread_mutex_lock(&ix->rb_mu);
        ix->rb_failed_at = S ? S : 1;
        pthread_mutex_unlock(&ix->rb_mu);
        kb_warn("background index rebuild abandoned: %s", err);
    }
    else
        kb_info("background index rebuild done in %.2f s: %llu vectors from "
                "version %llu, %zu documents' metadata replayed; dropped %llu "
                "dead vectors",
                secs, (unsigned long long)stored, (unsigned long long)S,
                replayed, (unsigned long long)dead_dropped);
    idx_vec_free(&old_vec);
    idx_filter_free(&old_flt);
    idx_vec_free(&vec);
    idx_filter_free(&flt);
    return NULL;
}

void idx_maintain(idx_kb_t *ix)
{
    idx_maybe_rebuild(ix);
    ckpt_maybe_start(ix);
}

int idx_rebuild_start(idx_kb_t *ix)
{
    pthread_mutex_lock(&ix->rb_mu);
    int active = ix->rb_active;
    pthread_mutex_unlock(&ix->rb_mu);
    if (active)
        return 1;
    if (ix->rb_started) { /* the last one finished: reap it */
        pthread_join(ix->rb_thr, NULL);
        ix->rb_started = 0;
    }
    uint64_t stored_lsn;
    idx_store_state(ix->store, &stored_lsn, NULL);
    if (stored_lsn != ix->view.version)
        return 1; /* staged records: the store is not the published state */
    char err[256];
    idx_rtxn_t *t;
    if (idx_store_rbegin(ix->store, &t, err, sizeof err)) {
        kb_warn("cannot start an index rebuild: %s", err);
        return 0;
    }
    /* The writer is between two writes: the snapshot is exactly the
     * published version; the merger stops before its next step. */
    vlock_wr(ix);
    pthread_mutex_lock(&ix->fmu);
    pthread_mutex_lock(&ix->rb_mu);
    ix->rb_active = 1;
    ix->rb_stop = 0;
    ix->rb_txn = t;
    ix->rb_docs = ix->view.docs;
    ix->rb_version = ix->view.version;
    ix->merge_paused = 1;
    pthread_mutex_unlock(&ix->rb_mu);
    pthread_mutex_unlock(&ix->fmu);
    uint64_t dead = idx_vec_dead(ix->vec), stored = idx_vec_stored(ix->vec);
    int train = idx_vec_needs_training(ix->vec);
    pthread_rwlock_unlock(&ix->vlock);
    kb_info("background index rebuild started at version %llu: %llu stored "
            "vectors, %llu dead%s",
            (unsigned long long)ix->rb_version, (unsigned long long)stored,
            (unsigned long long)dead, train ? ", training the index" : "");
    if (pthread_create(&ix->rb_thr, NULL, rebuild_main, ix)) {
        kb_warn("cannot start the index rebuild thread");
        vlock_wr(ix);
        pthread_mutex_lock(&ix->fmu);
        pthread_mutex_lock(&ix->rb_mu);
        ix->rb_active = 0;
        ix->merge_paused = 0;
        journal_free(ix);
        pthread_mutex_unlock(&ix->rb_mu);
        pthread_mutex_unlock(&ix->fmu);
        pthread_rwlock_unlock(&ix->vlock);
        idx_store_rend(&t);
        return 0;
    }
    ix->rb_started = 1;
    return 0;
}

/* Writer thread, after each write: start a rebuild when dead vectors pass
 * the threshold or an untrained IVF can be trained. */
static void idx_maybe_rebuild(idx_kb_t *ix)
{
    pthread_mutex_lock(&ix->rb_mu);
    int active = ix->rb_active;
    pthread_mutex_unlock(&ix->rb_mu);
    if (active)
        return;
    /* Never wait for vlock here (a waiting merger makes it wait for the
     * searches): the next write checks again. */
    if (pthread_rwlock_tryrdlock(&ix->vlock))
        return;
    uint64_t dead = idx_vec_dead(ix->vec), stored = idx_vec_stored(ix->vec);
    int train = idx_vec_needs_training(ix->vec) &&
                ix->view.docs >= idx_vec_train_min(ix->vec);
    pthread_rwlock_unlock(&ix->vlock);
    /* A rebuild that failed is not retried until the store has grown by
     * IDX_DEAD_MIN writes. */
    pthread_mutex_lock(&ix->rb_mu);
    uint64_t failed_at = ix->rb_failed_at;
    pthread_mutex_unlock(&ix->rb_mu);
    if (failed_at && ix->view.version < failed_at + IDX_DEAD_MIN)
        return;
    if ((dead >= IDX_DEAD_MIN && dead * 4 > stored) || train)
        idx_rebuild_start(ix);
}

/* ---------------------------------------------------------------- search */

struct hits_priv {
    size_t n;
    Kbsync__LogRecord *rec[]; /* each holds the hit's Doc */
};

static int floats_bad(const float *x, size_t n, char *what, size_t *bad)
{
    return check_floats(x, n, what, bad);
}

/* KB_ENONFINITE naming the first bad value of a query vector, or 0. */
static int query_values_bad(const float *v, size_t n, char *err, size_t errlen)
{
    char what[16];
    size_t bad;
    if (!floats_bad(v, n, what, &bad))
        return 0;
    return bad == n ? kb_seterr(err, errlen, KB_ENONFINITE,
                                "query vector's squared norm is above %.3g: "
                                "a score could overflow",
                                FLT_MAX / 4.0)
                    : kb_seterr(err, errlen, KB_ENONFINITE,
                                "query vector[%zu] is %s", bad, what);
}

int idx_check_query(const idx_kb_t *ix, const idx_query_t *q, char *err,
                    size_t errlen)
{
    if (q->k > KB_MAX_K)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "k = %u is above the maximum %u", q->k, KB_MAX_K);
    if (q->vec && !ix) { /* no knowledge base yet: what needs no dim */
        if (q->vec_len == 0 || q->vec_len > KB_MAX_DIM)
            return kb_seterr(err, errlen, KB_EDIM,
                             "query vector has %zu values (1..%u allowed)",
                             q->vec_len, KB_MAX_DIM);
        int rc = query_values_bad(q->vec, q->vec_len, err, errlen);
        if (rc)
            return rc;
    } else if (q->vec) {
        if (q->vec_len != ix->dim)
            return kb_seterr(err, errlen, KB_EDIM,
                             "query vector has %zu values, the knowledge base "
                             "has dim %u",
                             q->vec_len, ix->dim);
        int rc = query_values_bad(q->vec, ix->dim, err, errlen);
        if (rc)
            return rc;
        if (ix->metric == IDX_METRIC_COSINE && all_zero(q->vec, ix->dim))
            return kb_seterr(err, errlen, KB_EINVAL,
                             "query vector is all zeros: it has no "
                             "direction for the cosine metric");
    } else if (!q->text || !q->text_len) {
        return kb_seterr(err, errlen, KB_EINVAL,
                         "query has neither a vector nor text");
    } else if (!ix) {
        if (!idx_embed_has_words(q->text, q->text_len))
            return kb_seterr(err, errlen, KB_EINVAL,
                             "query text has no words to embed");
    } else {
        float buf[KB_MAX_DIM];
        idx_embed_text(q->text, q->text_len, buf, ix->dim);
        if (all_zero(buf, ix->dim))
            return kb_seterr(err, errlen, KB_EINVAL,
                             "query text has no words to embed");
    }
    if (q->ef_search > IDX_MAX_EF_SEARCH)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "ef_search = %u is above the maximum %u",
                         q->ef_search, IDX_MAX_EF_SEARCH);
    if (ix && q->nprobe && ix->nlist && q->nprobe > ix->nlist)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "nprobe = %u is above the index's %u lists",
                         q->nprobe, ix->nlist);
    if (q->nfilters > IDX_MAX_FILTERS)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "%zu filters: at most %u are allowed", q->nfilters,
                         IDX_MAX_FILTERS);
    for (size_t i = 0; i < q->nfilters; i++) {
        size_t kl = q->filters[i].key ? strlen(q->filters[i].key) : 0;
        size_t vl = q->filters[i].value ? strlen(q->filters[i].value) : 0;
        if (kl == 0 || kl > IDX_MAX_FILTER_KEY)
            return kb_seterr(err, errlen, KB_EINVAL,
                             "filter #%zu: key of %zu bytes (1..%u allowed)",
                             i, kl, IDX_MAX_FILTER_KEY);
        if (vl > IDX_MAX_FILTER_VALUE)
            return kb_seterr(err, errlen, KB_EINVAL,
                             "filter #%zu (\"%s\"): value of %zu bytes is "
                             "longer than %u",
                             i, q->filters[i].key, vl, IDX_MAX_FILTER_VALUE);
    }
    return 0;
}

/* SEARCH
 * A search holds vlock shared for its index part. Inside it reads the view
 * V (under vmu), `merged`, the delta's count and the pending removals
 * published at or before V (under rm_mu). It asks the FAISS index for
 * labels <= V minus those removals, scans the delta entries [merged, count)
 * with the same rule, and merges the two best-first lists. A write enters
 * the view only after its vectors are in the delta and its removals are
 * pending, and the merger moves both into the index under vlock held
 * exclusively, so an answer reflects exactly version V: all of a write or
 * none of it. */

typedef struct rctx {
    const int64_t *dead; /* sorted: removed at or before V, index lacks it */
    size_t ndead;
    const int64_t *cand; /* sorted filter matches, or NULL: no filter */
    size_t ncand;
} rctx_t;

static int in_sorted(const int64_t *v, size_t n, int64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && v[lo] == x;
}

static int rctx_keep(void *ctx, int64_t label)
{
    const rctx_t *r = ctx;
    if (r->ndead && in_sorted(r->dead, r->ndead, label))
        return 0;
    return !r->cand || in_sorted(r->cand, r->ncand, label);
}

/* The pending removals published at or before version, sorted. Called
 * with vlock held shared. */
static int pending_dead(idx_kb_t *ix, uint64_t version, int64_t **out,
                        size_t *n)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&ix->rm_mu);
    size_t m = 0;
    int64_t *d = ix->rm_n ? malloc(ix->rm_n * sizeof *d) : NULL;
    for (size_t i = 0; d && i < ix->rm_n; i++)
        if (ix->rm[i].lsn <= version)
            d[m++] = ix->rm[i].label;
    int fail = ix->rm_n && !d;
    pthread_mutex_unlock(&ix->rm_mu);
    if (fail)
        return KB_ENOMEM;
    if (m)
        qsort(d, m, sizeof *d, cmp_i64);
    *out = d;
    *n = m;
    return 0;
}

struct scored {
    float s;
    int64_t l;
};

static int cmp_hi(const void *a, const void *b)
{
    float x = ((const struct scored *)a)->s, y = ((const struct scored *)b)->s;
    return (x < y) - (x > y);
}

static int cmp_lo(const void *a, const void *b)
{
    float x = ((const struct scored *)a)->s, y = ((const struct scored *)b)->s;
    return (x > y) - (x < y);
}

/* A filtered query, vlock held shared; r->cand holds the filter's matches.
 * Small candidate sets (at most IDX_FILTER_BRUTE_MIN, or an eighth of the
 * stored vectors) are scored exactly against the query: k matching hits
 * whenever k match, whatever the index kind. Larger ones go through the
 * index with the candidates as an allow-list (the index over-fetches until
 * it has k). */
static int search_filtered(idx_kb_t *ix, const float *x, uint32_t k,
                           const idx_vec_params_t *base, rctx_t *r,
                           uint64_t lo, uint64_t hi, float *scores,
                           int64_t *labels, char *err, size_t errlen)
{
    int rc = 0;
    const int64_t V = base->max_label;
    uint64_t stored = idx_vec_stored(ix->vec);
    if (r->ncand <= IDX_FILTER_BRUTE_MIN || r->ncand * 8 <= stored) {
        int64_t first_delta =
            lo < hi ? idx_delta_label(ix->delta, lo) : INT64_MAX;
        size_t n = r->ncand, m = 0, md = 0;
        int64_t *in_vec = malloc((n ? n : 1) * sizeof *in_vec);
        struct scored *sc = malloc((n ? n : 1) * sizeof *sc);
        float *s = malloc((n ? n : 1) * sizeof *s);
        if (!in_vec || !sc || !s)
            rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
        for (size_t i = 0; i < n && !rc; i++) {
            int64_t l = r->cand[i];
            if (l > V || (r->ndead && in_sorted(r->dead, r->ndead, l)))
                continue;
            if (l < first_delta) {
                if (idx_vec_is_live(ix->vec, l))
                    in_vec[m++] = l;
                continue;
            }
            uint64_t e = idx_delta_find(ix->delta, lo, hi, l);
            if (e != UINT64_MAX) {
                sc[md].s = idx_delta_score(ix->delta, x, e);
                sc[md++].l = l;
            }
        }
        if (!rc && m)
            rc = idx_vec_score_labels(ix->vec, x, m, in_vec, s, err, errlen);
        if (!rc) {
            for (size_t i = 0; i < m; i++) {
                sc[md + i].s = s[i];
                sc[md + i].l = in_vec[i];
            }
            qsort(sc, md + m, sizeof *sc,
                  ix->metric == IDX_METRIC_L2 ? cmp_lo : cmp_hi);
            for (size_t i = 0; i < md + m && i < k; i++) {
                scores[i] = sc[i].s;
                labels[i] = sc[i].l;
            }
        }
        free(in_vec);
        free(sc);
        free(s);
        return rc;
    }
    idx_vec_params_t p = *base;
    p.allow = rctx_keep;
    p.allow_ctx = r;
    rc = idx_vec_search_params(ix->vec, 1, x, k, &p, scores, labels, err,
                               errlen);
    if (!rc && idx_delta_search(ix->delta, lo, hi, V, rctx_keep, r, 1, x, k,
                                scores, labels))
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    return rc;
}

void idx_view(idx_kb_t *ix, idx_view_t *v)
{
    pthread_mutex_lock(&ix->vmu);
    *v = ix->view;
    pthread_mutex_unlock(&ix->vmu);
}

/* Turns labels into hits: each label names its document's log record. */
static int resolve_hits(idx_rtxn_t *t, const float *scores,
                        const int64_t *labels, uint32_t k, size_t max_bytes,
                        idx_hits_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct hits_priv *p =
        calloc(1, sizeof *p + sizeof(Kbsync__LogRecord *) * (k ? k : 1));
    idx_hit_t *hit = calloc(k ? k : 1, sizeof *hit);
    if (!p || !hit) {
        free(p);
        free(hit);
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    size_t bytes = 0;
    for (uint32_t i = 0; i < k && labels[i] >= 0; i++) {
        const void *b;
        size_t len;
        if (idx_store_doc_by_label(t, labels[i], &b, &len)) {
            /* Log records are never removed while labels point at them. */
            kb_error("search: label %lld is in the index but not in the store",
                     (long long)labels[i]);
            continue;
        }
        Kbsync__LogRecord *rec = kbsync__log_record__unpack(NULL, len, b);
        if (!rec || !rec->doc) {
            kb_error("search: document with label %lld cannot be decoded",
                     (long long)labels[i]);
            if (rec)
                kbsync__log_record__free_unpacked(rec, NULL);
            continue;
        }
        const Kbsync__Doc *d = rec->doc;
        /* what this hit adds to the answer (its strings, and a few bytes
         * of framing, score and version) */
        bytes += strlen(d->id) + strlen(d->text ? d->text : "") +
                 strlen(d->metadata_json ? d->metadata_json : "") +
                 IDX_HIT_OVERHEAD;
        if (max_bytes && bytes > max_bytes) {
            kbsync__log_record__free_unpacked(rec, NULL);
            size_t got = p->n;
            idx_hits_t h = {.n = p->n, .hit = hit, .priv = p};
            idx_hits_free(&h);
            int mib = max_bytes >= (1u << 20);
            return kb_seterr(err, errlen, KB_ETOOBIG,
                             "the answer would be larger than the message "
                             "limit of %zu %s (--max-msg-mb): %zu bytes at "
                             "hit %zu of the %u asked for; ask for fewer "
                             "hits (a smaller k)",
                             mib ? max_bytes >> 20 : max_bytes,
                             mib ? "MiB" : "bytes", bytes, got + 1, k);
        }
        p->rec[p->n] = rec;
        hit[p->n].id = d->id;
        hit[p->n].text = d->text;
        hit[p->n].metadata = d->metadata_json;
        hit[p->n].score = scores[i];
        hit[p->n].version = rec->lsn;
        p->n++;
    }
    out->n = p->n;
    out->hit = hit;
    out->priv = p;
    return 0;
}

/* A searched batch whose hits are read one query at a time (FOUND in
 * idx.h): the FAISS results, and the read transaction they are read in. */
struct idx_found {
    size_t nq;
    uint32_t kmax;
    uint32_t *k;
    float *scores;
    int64_t *labels;
    idx_rtxn_t *t;
};

void idx_found_free(idx_found_t **fp)
{
    idx_found_t *f = fp ? *fp : NULL;
    if (!f)
        return;
    idx_store_rend(&f->t);
    free(f->k);
    free(f->scores);
    free(f->labels);
    free(f);
    *fp = NULL;
}

int idx_found_hits(idx_found_t *f, size_t i, size_t max_bytes, idx_hits_t *out,
                   char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (i >= f->nq)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "no query %zu in a batch "
                         "of %zu",
                         i, f->nq);
    return resolve_hits(f->t, f->scores + i * f->kmax, f->labels + i * f->kmax,
                        f->k[i], max_bytes, out, err, errlen);
}

int idx_search_found(idx_kb_t *ix, size_t nq, const idx_query_t *q,
                     idx_found_t **out, idx_view_t *view, char *err,
                     size_t errlen)
{
    *out = NULL;
    if (nq == 0)
        return 0;
    uint32_t kmax = 0;
    for (size_t i = 0; i < nq; i++) {
        uint32_t k = q[i].k ? q[i].k : 10;
        if (k > kmax)
            kmax = k;
    }
    /* Everything a search writes is its own: query vectors, results. */
    idx_found_t *f = calloc(1, sizeof *f);
    float *x = malloc(sizeof(float) * ix->dim * nq);
    int rc = 0;
    if (f) {
        f->nq = nq;
        f->kmax = kmax;
        f->k = malloc(sizeof *f->k * nq);
        f->scores = malloc(sizeof(float) * kmax * nq);
        f->labels = malloc(sizeof(int64_t) * kmax * nq);
    }
    if (!f || !x || !f->k || !f->scores || !f->labels) {
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
        goto done;
    }
    float *scores = f->scores;
    int64_t *labels = f->labels;
    for (size_t i = 0; i < nq; i++) {
        f->k[i] = q[i].k ? q[i].k : 10;
        float *xi = x + i * ix->dim;
        if (q[i].vec) {
            memcpy(xi, q[i].vec, sizeof(float) * ix->dim);
            continue;
        }
        idx_embed_text(q[i].text, q[i].text_len, xi, ix->dim);
    }
    if (idx_loading(ix)) {
        rc = kb_seterr(err, errlen, KB_EUNAVAIL,
                       "this replica is loading a snapshot; it answers once "
                       "the snapshot is complete");
        goto done;
    }
    int tries = 0;
    const uint64_t t_search = kb_mono_us();
again:;
    idx_vec_params_t p = {.ef_search = q[0].ef_search, .nprobe = q[0].nprobe};
    idx_rtxn_t *t = NULL;
    rctx_t r = {0};
    int64_t *dead = NULL, *cand = NULL;
    pthread_rwlock_rdlock(&ix->vlock);
    idx_view(ix, view);
    /* max_label 0 means "no bound" to idx_vec: version 0 holds nothing,
     * whatever the first write has already put in the delta or index. */
    p.max_label = (int64_t)view->version;
    uint64_t lo = ix->merged, hi = idx_delta_count(ix->delta);
    rc = pending_dead(ix, view->version, &dead, &r.ndead);
    r.dead = dead;
    for (size_t i = 0; i < nq * kmax; i++) {
        scores[i] = ix->metric == IDX_METRIC_L2 ? FLT_MAX : -FLT_MAX;
        labels[i] = -1;
    }
    if (!view->version) {
        /* nothing to find (and max_label 0 would mean "no bound") */
    } else if (!rc && nq == 1 && q[0].nfilters) {
        idx_filter_pair_t pairs[IDX_MAX_FILTERS];
        for (size_t i = 0; i < q[0].nfilters; i++) {
            const char *v = q[0].filters[i].value ? q[0].filters[i].value : "";
            pairs[i] = (idx_filter_pair_t){q[0].filters[i].key,
                                           strlen(q[0].filters[i].key), v,
                                           strlen(v)};
        }
        pthread_mutex_lock(&ix->fmu);
        rc = idx_filter_match(ix->flt, pairs, q[0].nfilters, &cand, &r.ncand);
        pthread_mutex_unlock(&ix->fmu);
        r.cand = cand;
        if (rc)
            rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
        else if (r.ncand)
            rc = search_filtered(ix, x, kmax, &p, &r, lo, hi, scores, labels,
                                 err, errlen);
    } else if (!rc) {
        if (r.ndead) {
            p.allow = rctx_keep;
            p.allow_ctx = &r;
        }
        rc = idx_vec_search_params(ix->vec, nq, x, kmax, &p, scores, labels,
                                   err, errlen);
        if (!rc && idx_delta_search(ix->delta, lo, hi, p.max_label,
                                    r.ndead ? rctx_keep : NULL, &r, nq, x,
                                    kmax, scores, labels))
            rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    } else {
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    pthread_rwlock_unlock(&ix->vlock);
    free(dead);
    free(cand);
    if (!rc)
        rc = idx_store_rbegin(ix->store, &t, err, errlen);
    /* Compaction below a cut <= version + 1 only removes records that were
     * dead at this version. A cut above it (compaction lags the published
     * version by a second, so only a search slower than that) may have
     * removed a hit's record: search again at the new version. */
    if (!rc && idx_store_rtxn_log_start(t) > view->version + 1 &&
        tries++ < 3) {
        idx_store_rend(&t);
        goto again;
    }
    if (!rc)
        f->t = t; /* the hits are read in it (idx_found_hits) */
    else
        idx_store_rend(&t);
    {
        uint64_t took = kb_mono_us() - t_search,
                 cur = __atomic_load_n(&ix->search_max_us, __ATOMIC_RELAXED);
        while (took > cur &&
               !__atomic_compare_exchange_n(&ix->search_max_us, &cur, took, 1,
                                            __ATOMIC_RELAXED,
                                            __ATOMIC_RELAXED))
            ;
    }
done:
    free(x);
    if (rc)
        idx_found_free(&f);
    *out = f;
    return rc;
}

int idx_search_batch(idx_kb_t *ix, size_t nq, const idx_query_t *q,
                     idx_hits_t *out, idx_view_t *view, char *err,
                     size_t errlen)
{
    idx_found_t *f;
    int rc = idx_search_found(ix, nq, q, &f, view, err, errlen);
    for (size_t i = 0; i < nq && !rc; i++) {
        rc = idx_found_hits(f, i, 0, &out[i], err, errlen);
        if (rc)
            for (size_t j = 0; j < i; j++)
                idx_hits_free(&out[j]);
    }
    idx_found_free(&f);
    return rc;
}

int idx_search(idx_kb_t *ix, const float *q, const char *text, size_t text_len,
               uint32_t k, idx_hits_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    idx_query_t qq = {.vec = q,
                      .vec_len = q ? ix->dim : 0,
                      .text = text,
                      .text_len = text_len,
                      .k = k};
    int rc = idx_check_query(ix, &qq, err, errlen);
    if (rc)
        return rc;
    idx_view_t v;
    return idx_search_batch(ix, 1, &qq, out, &v, err, errlen);
}

void idx_hits_free(idx_hits_t *h)
{
    if (!h)
        return;
    struct hits_priv *p = h->priv;
    if (p) {
        for (size_t i = 0; i < p->n; i++)
            kbsync__log_record__free_unpacked(p->rec[i], NULL);
        free(p);
    }
    free(h->hit);
    memset(h, 0, sizeof *h);
}

/* ------------------------------------------------------------ checkpoints
 *
 * CHECKPOINTS
 * A checkpoint (idx_ckpt.c: the file, its checks, the catch-up at open)
 * saves the vector index at a PUBLISHED version V, so that the next open
 * loads it and adds only what came after, instead of re-adding every
 * document (minutes for a large HNSW graph). The writer thread starts one
 * from idx_maintain() when V is ck_ops past the last checkpoint's and
 * ck_secs have passed since the last one started, never while a rebuild
 * runs; idx_close() writes one more. A checkpoint:
 *  1. holds vlock exclusively for a moment (it waits for the searches in
 *     FAISS, as a merge step does): reads V and the documents at V, notes
 *     the delta entries <= V that vec does not hold and the removals
 *     published at or before V that vec has not applied, and pauses the
 *     merger (ck_pause). From then on nothing changes vec: the merger
 *     waits, a rebuild waits for the checkpoint before its swap
 *     (ckpt_wait), and the writer only appends to the delta;
 *  2. copies the postings of labels <= V under fmu (memory only; the
 *     writer adds labels > V meanwhile);
 *  3. writes the file with no lock held, at a lower CPU priority, while
 *     searches go on reading vec and the delta (which grows meanwhile);
 *  4. resumes the merger.
 * A record that is durable but not yet published is never in a checkpoint.
 * At open a checkpoint is used only if its settings match and
 * ckpt_usable() holds; otherwise ONE line says why and the index is
 * rebuilt from the store. */

typedef struct ckpt_job {
    idx_ckpt_head_t head;
    const idx_vec_t *vec;
    uint64_t *extra; /* delta indexes of the entries <= V vec lacks */
    size_t nextra;
    int64_t *rm; /* removals <= V of labels vec holds live */
    size_t nrm;
    char *postings;
    size_t postings_len;
} ckpt_job_t;

/* Step 1, vlock held exclusively. */
static int ckpt_capture(idx_kb_t *ix, ckpt_job_t *j, char *err, size_t errlen)
{
    idx_view_t v;
    idx_view(ix, &v);
    j->head = (idx_ckpt_head_t){.format = IDX_CKPT_FORMAT,
                                .store_id = idx_store_id(ix->store),
                                .dim = ix->dim,
                                .metric = (uint32_t)ix->metric,
                                .lsn = v.version,
                                .commit_us = v.commit_us,
                                .docs = v.docs,
                                .written_us = kb_wall_us()};
    snprintf(j->head.index, sizeof j->head.index, "%s", ix->meta->index);
    j->vec = ix->vec;
    uint64_t hi = idx_delta_count(ix->delta);
    j->extra = malloc((hi - ix->merged + 1) * sizeof *j->extra);
    if (!j->extra || pending_dead(ix, v.version, &j->rm, &j->nrm))
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    for (uint64_t i = ix->merged; i < hi; i++) {
        int64_t l = idx_delta_label(ix->delta, i);
        if (l > (int64_t)v.version)
            break; /* ascending */
        if (!in_sorted(j->rm, j->nrm, l))
            j->extra[j->nextra++] = i;
    }
    size_t keep = 0; /* the other removals hit delta entries left out */
    for (size_t i = 0; i < j->nrm; i++)
        if (idx_vec_is_live(ix->vec, j->rm[i]))
            j->rm[keep++] = j->rm[i];
    j->nrm = keep;
    ix->ck_pause = 1;
    return 0;
}

/* Step 2: the postings of labels <= V, as idx_filter_save() writes them. */
static int ckpt_postings(idx_kb_t *ix, ckpt_job_t *j, char *err,
                         size_t errlen)
{
    FILE *m = open_memstream(&j->postings, &j->postings_len);
    if (!m)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    pthread_mutex_lock(&ix->fmu);
    int rc = idx_filter_save(ix->flt, (int64_t)j->head.lsn, m);
    pthread_mutex_unlock(&ix->fmu);
    if (fclose(m) || rc)
        return kb_seterr(err, errlen, KB_ENOMEM,
                         "out of memory copying the postings");
    return 0;
}

static int ckpt_stopped(void *ctx)
{
    idx_kb_t *ix = ctx;
    pthread_mutex_lock(&ix->ck_mu);
    int stop = ix->ck_stop;
    pthread_mutex_unlock(&ix->ck_mu);
    return stop;
}

/* Steps 1 to 4. Any thread that may wait for vlock. mbps paces the
 * write (0: as fast as it goes). */
static int ckpt_run(idx_kb_t *ix, uint32_t mbps, char *err, size_t errlen)
{
    uint64_t t0 = kb_mono_us(), bytes = 0;
    ckpt_job_t j = {0};
    vlock_wr(ix);
    int rc = ckpt_capture(ix, &j, err, errlen);
    pthread_rwlock_unlock(&ix->vlock);
    if (!rc)
        rc = ckpt_postings(ix, &j, err, errlen);
    if (!rc) {
        idx_ckpt_src_t src = {.vec = j.vec,
                              .postings = j.postings,
                              .postings_len = j.postings_len,
                              .delta = ix->delta,
                              .extra = j.extra,
                              .nextra = j.nextra,
                              .rm = j.rm,
                              .nrm = j.nrm};
        rc = idx_ckpt_write(ix->dir, &j.head, &src, mbps, ckpt_stopped, ix,
                            &bytes, err, errlen);
    }
    vlock_wr(ix);
    ix->ck_pause = 0;
    pthread_rwlock_unlock(&ix->vlock);
    merger_kick(ix);
    double secs = (double)(kb_mono_us() - t0) / 1e6;
    if (!rc) {
        pthread_mutex_lock(&ix->ck_mu);
        ix->ck_lsn = j.head.lsn;
        ix->ck_us = j.head.written_us;
        ix->ck_extra = j.nextra;
        ix->ck_s = secs;
        ix->ck_count++;
        pthread_mutex_unlock(&ix->ck_mu);
        kb_info("checkpoint of version %llu written in %.2f s: %.1f MB, %llu "
                "documents (%zu from the delta, %zu removals pending)",
                (unsigned long long)j.head.lsn, secs, (double)bytes / 1e6,
                (unsigned long long)j.head.docs, j.nextra, j.nrm);
    }
    free(j.extra);
    free(j.rm);
    free(j.postings);
    return rc;
}

/* Sets ck_active (ck_mu); clearing it wakes a rebuild in ckpt_wait(). */
static void ckpt_set_active(idx_kb_t *ix, int on)
{
    pthread_mutex_lock(&ix->ck_mu);
    ix->ck_active = on;
    if (!on)
        pthread_cond_broadcast(&ix->ck_cv);
    pthread_mutex_unlock(&ix->ck_mu);
}

static void *ckpt_main(void *arg)
{
    idx_kb_t *ix = arg;
    /* Below the readers: a checkpoint may take seconds of a core. */
    setpriority(PRIO_PROCESS, (id_t)gettid(), 10);
    char err[512];
    int rc = ckpt_run(ix, IDX_CKPT_MBPS, err, sizeof err);
    if (rc && rc != KB_EUNAVAIL)
        kb_warn("checkpoint not written (tried again in %llu s): %s",
                (unsigned long long)ix->ck_secs, err);
    ckpt_set_active(ix, 0);
    return NULL;
}

/* Waits until no checkpoint is being written. Rebuild thread. */
static void ckpt_wait(idx_kb_t *ix)
{
    pthread_mutex_lock(&ix->ck_mu);
    while (ix->ck_active)
        pthread_cond_wait(&ix->ck_cv, &ix->ck_mu);
    pthread_mutex_unlock(&ix->ck_mu);
}

/* Writer thread: joins the checkpoint thread (asking it to give up when
 * stop is set). */
static void ckpt_join(idx_kb_t *ix, int stop)
{
    if (!ix->ck_started)
        return;
    pthread_mutex_lock(&ix->ck_mu);
    ix->ck_stop = stop;
    pthread_mutex_unlock(&ix->ck_mu);
    pthread_join(ix->ck_thr, NULL);
    ix->ck_started = 0;
    ix->ck_stop = 0;
}

/* Writer thread, from idx_maintain(). Never waits. */
/* The newest checkpoint holds at least IDX_CKPT_RESAVE_MIN unmerged
 * vectors and the index now holds every vector up to its version: a new
 * checkpoint at the same version spares the next start that merge (minutes
 * for an HNSW graph: a checkpoint taken during a bulk load held 50k).
 * Writer thread; never waits for vlock (0 when it is busy). */
#define IDX_CKPT_RESAVE_MIN 4096u
static int ckpt_worth_resaving(idx_kb_t *ix)
{
    pthread_mutex_lock(&ix->ck_mu);
    uint64_t extra = ix->ck_extra, lsn = ix->ck_lsn;
    pthread_mutex_unlock(&ix->ck_mu);
    if (extra < IDX_CKPT_RESAVE_MIN || pthread_rwlock_tryrdlock(&ix->vlock))
        return 0;
    uint64_t n = idx_delta_count(ix->delta);
    int merged = ix->merged >= n ||
                 idx_delta_label(ix->delta, ix->merged) > (int64_t)lsn;
    pthread_rwlock_unlock(&ix->vlock);
    return merged;
}

static void ckpt_maybe_start(idx_kb_t *ix)
{
    if (ix->ck_off || ix->ck_ops == IDX_CKPT_NEVER || idx_loading(ix))
        return; /* a snapshot being loaded is no state to save */
    pthread_mutex_lock(&ix->ck_mu);
    int active = ix->ck_active;
    uint64_t lsn = ix->ck_lsn;
    pthread_mutex_unlock(&ix->ck_mu);
    uint64_t now = kb_mono_us();
    idx_view_t v;
    idx_view(ix, &v);
    if (active ||
        (ix->ck_start_us && now - ix->ck_start_us < ix->ck_secs * 1000000u) ||
        (v.version < lsn + ix->ck_ops && !ckpt_worth_resaving(ix)))
        return;
    pthread_mutex_lock(&ix->rb_mu);
    int rebuilding = ix->rb_active;
    pthread_mutex_unlock(&ix->rb_mu);
    if (rebuilding)
        return;
    ckpt_join(ix, 0); /* the last one ended: reap it */
    ix->ck_start_us = now;
    ckpt_set_active(ix, 1);
    if (pthread_create(&ix->ck_thr, NULL, ckpt_main, ix)) {
        kb_warn("cannot start the checkpoint thread");
        ckpt_set_active(ix, 0);
        return;
    }
    pthread_setname_np(ix->ck_thr, "kb-ckpt");
    ix->ck_started = 1;
}

int idx_checkpoint(idx_kb_t *ix, char *err, size_t errlen)
{
    if (ix->ck_off)
        return kb_seterr(err, errlen, KB_EUNAVAIL, "checkpoints are off");
    ckpt_join(ix, 0);
    pthread_mutex_lock(&ix->rb_mu);
    int rebuilding = ix->rb_active;
    pthread_mutex_unlock(&ix->rb_mu);
    if (rebuilding)
        return kb_seterr(err, errlen, KB_EUNAVAIL,
                         "a background rebuild is running");
    ckpt_set_active(ix, 1);
    int rc = ckpt_run(ix, 0, err, errlen);
    ckpt_set_active(ix, 0);
    return rc;
}

/* idx_close(), every other thread stopped: one more checkpoint unless the
 * newest already covers the published version. */
static void ckpt_at_close(idx_kb_t *ix)
{
    char err[512];
    if (ix->ck_off || ix->ck_skip_close || idx_loading(ix) ||
        (ix->view.version == ix->ck_lsn && !ckpt_worth_resaving(ix)))
        return;
    if (ckpt_run(ix, 0, err, sizeof err))
        kb_warn("no checkpoint at close: %s", err);
}

/* Can a checkpoint covering lsn, whose record lsn was committed at
 * commit_us, seed this store? It must not be ahead of the store, and the
 * store's record lsn must be the same record (a replica that dropped a
 * diverged tail holds other records under the same LSNs). The catch-up
 * reads only live documents' records, never the log between. */
static int ckpt_usable(idx_kb_t *ix, uint64_t lsn, uint64_t commit_us,
                       char *why, size_t len)
{
    uint64_t applied;
    idx_store_state(ix->store, &applied, NULL);
    if (lsn > applied)
        return kb_seterr(why, len, KB_ECORRUPT,
                         "it covers LSN %llu, above the store's %llu",
                         (unsigned long long)lsn,
                         (unsigned long long)applied);
    uint64_t at = lsn ? idx_commit_time(ix, lsn) : commit_us;
    /* A record compacted since (below the log start) cannot be compared:
     * the live-document check at load stands for it. */
    if (lsn && at == 0 && lsn < idx_store_log_start(ix->store))
        at = commit_us;
    if (at != commit_us)
        return kb_seterr(why, len, KB_ECORRUPT,
                         "the store's record %llu was committed at %llu us, "
                         "the checkpoint's at %llu us (another history)",
                         (unsigned long long)lsn, (unsigned long long)at,
                         (unsigned long long)commit_us);
    return 0;
}

/* Loads DIR/index.ckpt into ix and catches it up with the store. Returns
 * 0, or 1 when there is none or it cannot be used (said in one line). */
static int ckpt_load(idx_kb_t *ix)
{
    uint64_t t0 = kb_mono_us(), added = 0, removed = 0;
    idx_ckpt_head_t h;
    idx_ckpt_loaded_t l = {0};
    idx_rtxn_t *t = NULL;
    char why[512] = "";
    int rc = idx_ckpt_peek(ix->dir, &h, why, sizeof why);
    if (rc == -ENOENT)
        return 1;
    if (!rc && (h.dim != ix->dim || h.metric != (uint32_t)ix->metric ||
                strcmp(h.index, ix->meta->index)))
        rc = kb_seterr(why, sizeof why, KB_EMISMATCH,
                       "written for dim %u, metric %s, index \"%s\"; the "
                       "knowledge base has dim %u, metric %s, index \"%s\"",
                       h.dim, metric_name(h.metric), h.index, ix->dim,
                       ix->meta->metric, ix->meta->index);
    if (!rc && h.store_id != idx_store_id(ix->store))
        rc = kb_seterr(why, sizeof why, KB_EMISMATCH,
                       "written for another store history (id %016llx, "
                       "the store's is %016llx: a copy, a wiped directory, "
                       "or records dropped since)",
                       (unsigned long long)h.store_id,
                       (unsigned long long)idx_store_id(ix->store));
    if (!rc)
        rc = ckpt_usable(ix, h.lsn, h.commit_us, why, sizeof why);
    uint64_t t1 = kb_mono_us();
    if (!rc)
        rc = idx_ckpt_load(ix->dir, &h, &l, why, sizeof why);
    uint64_t t2 = kb_mono_us();
    if (!rc)
        rc = idx_store_rbegin(ix->store, &t, why, sizeof why);
    if (!rc)
        rc = idx_ckpt_catch_up(t, h.lsn, ix->dim, &l, ix->delta, &added,
                               &removed, why, sizeof why);
    idx_store_rend(&t);
    if (rc) {
        char path[4200]; /* idx_ckpt's own reasons start with it */
        snprintf(path, sizeof path, "%s/%s", ix->dir, IDX_CKPT_FILE);
        size_t pl = strlen(path);
        kb_warn("checkpoint %s ignored and removed: %s; rebuilding the "
                "index from LMDB",
                path, strncmp(why, path, pl) ? why : why + pl + 2);
        /* Never accepted later (a refused file could match a history that
         * reuses its LSNs); the next checkpoint replaces it anyway. */
        idx_ckpt_remove(ix->dir);
        idx_ckpt_loaded_free(&l);
        idx_delta_free(&ix->delta); /* drop what the catch-up appended */
        return idx_delta_new(ix->dim, ix->metric, &ix->delta) ? -1 : 1;
    }
    idx_vec_free(&ix->vec);
    idx_filter_free(&ix->flt);
    ix->vec = l.vec;
    ix->flt = l.flt;
    l.vec = NULL;
    l.flt = NULL;
    ix->ck_extra = l.nx;
    idx_ckpt_loaded_free(&l);
    ix->ck_loaded = 1;
    ix->ck_lsn = h.lsn;
    ix->ck_us = h.written_us;
    ix->rebuild_s = (double)(kb_mono_us() - t0) / 1e6;
    uint64_t now = kb_wall_us();
    kb_info("loaded checkpoint %s/%s of version %llu (written %.0f s ago) "
            "in %.3f s (read %.3f s, caught up in %.3f s): %llu vectors to "
            "merge (its delta and later writes), %llu removed",
            ix->dir, IDX_CKPT_FILE, (unsigned long long)h.lsn,
            now > h.written_us ? (double)(now - h.written_us) / 1e6 : 0.0,
            ix->rebuild_s, (double)(t2 - t1) / 1e6,
            (double)(kb_mono_us() - t2) / 1e6, (unsigned long long)added,
            (unsigned long long)removed);
    return 0;
}

/* ----------------------------------------------------------------- stats */

static void stats_of(idx_kb_t *ix, idx_stats_t *st, int wait);

void idx_stats(idx_kb_t *ix, idx_stats_t *st)
{
    stats_of(ix, st, 1);
}

void idx_stats_try(idx_kb_t *ix, idx_stats_t *st)
{
    stats_of(ix, st, 0);
}

static void stats_of(idx_kb_t *ix, idx_stats_t *st, int wait)
{
    memset(st, 0, sizeof *st);
    idx_view_t v;
    idx_view(ix, &v); /* what searches see: staged records are not in it */
    st->version = v.version;
    st->commit_us = v.commit_us;
    st->docs = v.docs;
    st->durable = idx_store_synced(ix->store);
    /* Status only: this waits for vlock (so for a merge step, which waits
     * for the searches in FAISS). The stream uses idx_state(). */
    if (!wait && ix->stats_cached && pthread_rwlock_tryrdlock(&ix->vlock)) {
        idx_stats_t *c = &ix->stats_cache; /* a merge step holds it */
        st->vectors = c->vectors;
        st->dead = c->dead;
        st->unmerged = c->unmerged;
        st->index_bytes = c->index_bytes;
        st->kind = c->kind;
        st->trained = c->trained;
        goto unlocked;
    }
    if (wait || !ix->stats_cached) /* (the first time, a try waits once) */
        pthread_rwlock_rdlock(&ix->vlock);
    uint64_t delta = idx_delta_count(ix->delta) - ix->merged;
    pthread_mutex_lock(&ix->rm_mu);
    uint64_t pending = ix->rm_n;
    pthread_mutex_unlock(&ix->rm_mu);
    st->vectors = idx_vec_count(ix->vec) + delta - pending;
    st->dead = idx_vec_dead(ix->vec) + pending;
    st->unmerged = delta;
    st->index_bytes = idx_vec_bytes(ix->vec) + idx_delta_bytes(ix->delta);
    st->kind = idx_vec_kind(ix->vec);
    st->trained = idx_vec_is_trained(ix->vec);
    pthread_mutex_lock(&ix->fmu);
    st->index_bytes += idx_filter_bytes(ix->flt);
    pthread_mutex_unlock(&ix->fmu);
    pthread_rwlock_unlock(&ix->vlock);
    ix->stats_cache = *st;
    ix->stats_cached = 1;
unlocked:
    pthread_mutex_lock(&ix->rb_mu);
    st->rebuilding = ix->rb_active;
    st->rebuilds = ix->rebuilds;
    pthread_mutex_unlock(&ix->rb_mu);
    pthread_mutex_lock(&ix->mg_mu);
    st->grows = ix->grows;
    pthread_mutex_unlock(&ix->mg_mu);
    st->store_bytes = idx_store_bytes(ix->store);
    st->dim = ix->dim;
    st->metric = ix->meta->metric;
    st->index = ix->meta->index;
    st->node_id = ix->meta->node_id;
    st->commits = ix->commits;
    idx_store_sync_counts(ix->store, &st->synced_commits, &st->lazy_commits,
                          &st->store_syncs);
    st->rebuild_s = ix->rebuild_s;
    st->ckpt_loaded = ix->ck_loaded;
    pthread_mutex_lock(&ix->ck_mu);
    st->ckpt_lsn = ix->ck_lsn;
    st->ckpt_us = ix->ck_us;
    st->ckpt_s = ix->ck_s;
    st->ckpts = ix->ck_count;
    st->checkpointing = ix->ck_active;
    pthread_mutex_unlock(&ix->ck_mu);
}

void idx_state(const idx_kb_t *ix, uint64_t *version, uint64_t *commit_us)
{
    idx_store_state(ix->store, version, commit_us);
}

void idx_set_lazy(idx_kb_t *ix, int on)
{
    idx_store_set_lazy(ix->store, on);
}

uint64_t idx_synced(const idx_kb_t *ix)
{
    return idx_store_synced(ix->store);
}

int idx_sync(idx_kb_t *ix, char *err, size_t errlen)
{
    return idx_store_sync(ix->store, err, errlen);
}

void idx_stats_stream(idx_kb_t *ix, idx_stats_t *st)
{
    memset(st, 0, sizeof *st);
    idx_store_state(ix->store, &st->version, &st->commit_us);
    st->docs = idx_store_count(ix->store);
    st->dim = ix->dim;
    st->metric = ix->meta->metric;
    st->index = ix->meta->index;
    st->node_id = ix->meta->node_id;
    st->commits = ix->commits;
}

const void *idx_meta(const idx_kb_t *ix)
{
    return ix->meta;
}

void idx_digest(idx_kb_t *ix, uint64_t *lsn, uint64_t *digest)
{
    idx_store_state(ix->store, lsn, NULL);
    *digest = idx_store_digest(ix->store);
}

int idx_digest_at(idx_kb_t *ix, uint64_t lsn, uint64_t *digest)
{
    return idx_store_digest_at(ix->store, lsn, digest);
}

void idx_check_state(idx_kb_t *ix, idx_check_t *out)
{
    memset(out, 0, sizeof *out);
    if (!ix->scrub)
        return;
    idx_scrub_state_t s;
    idx_scrub_get(ix->scrub, &s);
    out->passes = s.passes;
    out->last_ms = s.last_ms;
    out->last_lsn = s.last_lsn;
    out->docs = s.docs;
    out->mismatches = s.mismatches;
    out->bad_lsn = s.bad_lsn;
    out->bad_stored = s.bad_stored;
    out->bad_scanned = s.bad_scanned;
    out->started = s.started;
    out->ended = s.passes + s.failed + s.yielded;
    out->yielded = s.yielded;
    out->last_ok = s.last_ok;
    out->last_stored = s.last_stored;
    out->last_scanned = s.last_scanned;
    out->foreign = s.foreign;
    out->unchanged = s.unchanged;
}

uint64_t idx_check_request(idx_kb_t *ix)
{
    return ix->scrub ? idx_scrub_request(ix->scrub) : 0;
}

int idx_check_now(idx_kb_t *ix, uint64_t *lsn, uint64_t *stored,
                  uint64_t *scanned, uint64_t *docs, char *err, size_t errlen)
{
    idx_store_digest_check_t c;
    int rc = ix->scrub ? idx_scrub_run(ix->scrub, &c, err, errlen)
                       : idx_store_digest_check(ix->store, &c, NULL, 0, err,
                                                errlen);
    if (!rc) {
        *lsn = c.lsn;
        *stored = c.stored;
        *scanned = c.scanned;
        *docs = c.docs;
    }
    return rc;
}

int idx_doc_versions(idx_kb_t *ix, const char *const *ids, size_t n,
                     uint64_t *vers, char *err, size_t errlen)
{
    idx_rtxn_t *rt;
    int rc = idx_store_rbegin(ix->store, &rt, err, errlen);
    for (size_t i = 0; !rc && i < n; i++) {
        int64_t lab;
        rc = idx_store_rlabel(rt, ids[i], strlen(ids[i]), &lab);
        if (rc)
            rc = kb_seterr(err, errlen, KB_ESTORE,
                           "looking up document \"%.64s\": LMDB error %d",
                           ids[i], rc);
        vers[i] = lab > 0 ? (uint64_t)lab : 0;
    }
    idx_store_rend(&rt);
    return rc;
}

/* ------------------------------------------------------------ listing */

typedef struct list_ctx {
    Kbsync__ListResult *r;
    size_t cap;
    size_t bytes; /* ids and values in r so far (IDX_LIST_BYTES) */
    const char *key;
    size_t key_len;
    char *err;
    size_t errlen;
} list_ctx_t;

static int list_one(void *vctx, const char *id, size_t id_len, uint64_t label,
                    const void *rec, size_t rec_len)
{
    list_ctx_t *c = vctx;
    Kbsync__ListResult *r = c->r;
    if (r->n_entries == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        Kbsync__ListEntry **e = realloc(r->entries, cap * sizeof *e);
        if (!e)
            return kb_seterr(c->err, c->errlen, KB_ENOMEM, "out of memory");
        r->entries = e;
        c->cap = cap;
    }
    char *val = NULL;
    size_t val_len = 0;
    if (c->key_len) {
        /* Only the metadata is needed: it is found on the wire (LogRecord
         * field 4, the document; its field 4, metadata_json) without
         * decoding the text and the vector (a whole decode took 67% of a
         * listing). */
        const void *doc = NULL, *m = NULL;
        size_t doc_len = 0, m_len = 0;
        int w = kb_wire_peek_bytes(rec, rec_len, 4, &doc, &doc_len);
        if (w == 0)
            w = kb_wire_peek_bytes(doc, doc_len, 4, &m, &m_len);
        if (w < 0 || !doc)
            return kb_seterr(c->err, c->errlen, KB_ECORRUPT,
                             "list: the record of document \"%.*s\" (LSN "
                             "%llu) does not decode",
                             (int)(id_len > 64 ? 64 : id_len), id,
                             (unsigned long long)label);
        int rc = m_len ? kb_json_value(m, m_len, c->key, c->key_len, &val,
                                       &val_len)
                       : 0;
        if (rc == -ENOMEM)
            return kb_seterr(c->err, c->errlen, KB_ENOMEM, "out of memory");
        /* metadata that is not an object has no keys */
    }
    /* A page ends at IDX_LIST_BYTES: the entry that would cross it is the
     * next page's first (1 stops the walk; idx_list sets `more`). */
    if (r->n_entries && c->bytes + id_len + val_len > IDX_LIST_BYTES) {
        free(val);
        return 1;
    }
    c->bytes += id_len + val_len;
    /* One allocation: the entry, its id, its value. */
    Kbsync__ListEntry *e = malloc(sizeof *e + id_len + val_len + 2);
    if (!e) {
        free(val);
        return kb_seterr(c->err, c->errlen, KB_ENOMEM, "out of memory");
    }
    kbsync__list_entry__init(e);
    char *p = (char *)(e + 1);
    memcpy(p, id, id_len);
    p[id_len] = 0;
    e->id = p;
    p += id_len + 1;
    if (val_len)
        memcpy(p, val, val_len);
    p[val_len] = 0;
    e->meta_value = p;
    e->version = label;
    free(val);
    r->entries[r->n_entries++] = e;
    return 0;
}

int idx_list(idx_kb_t *ix, const Kbsync__ListRequest *q,
             Kbsync__ListResult *out, char *err, size_t errlen)
{
    kbsync__list_result__init(out);
    const char *prefix = q->prefix ? q->prefix : "";
    const char *after = q->after ? q->after : "";
    const char *key = q->meta_key ? q->meta_key : "";
    size_t plen = strlen(prefix), alen = strlen(after), klen = strlen(key);
    uint32_t limit = q->limit ? q->limit : IDX_LIST_DEFAULT;
    if (limit > IDX_LIST_MAX)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "list: limit %u is above the maximum %u", limit,
                         IDX_LIST_MAX);
    if (plen > KB_MAX_ID_LEN || alen > KB_MAX_ID_LEN)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "list: %s is %zu bytes, longer than any id (%u)",
                         plen > KB_MAX_ID_LEN ? "prefix" : "after",
                         plen > KB_MAX_ID_LEN ? plen : alen, KB_MAX_ID_LEN);
    if (klen > IDX_MAX_FILTER_KEY)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "list: meta_key is %zu bytes (at most %u)", klen,
                         IDX_MAX_FILTER_KEY);
    idx_rtxn_t *rt;
    int rc = idx_store_rbegin(ix->store, &rt, err, errlen);
    if (rc)
        return rc;
    list_ctx_t c = {out, 0, 0, key, klen, err, errlen};
    int more = 0;
    uint64_t lsn = 0;
    rc = idx_store_list(rt, prefix, plen, after, alen, limit, list_one, &c,
                        &more, &lsn, err, errlen);
    idx_store_rend(&rt);
    if (rc == 1) { /* the byte budget ended the page */
        rc = 0;
        more = 1;
    }
    out->more = more;
    out->version = lsn;
    if (rc)
        idx_list_free(out);
    return rc;
}

void idx_list_free(Kbsync__ListResult *r)
{
    for (size_t i = 0; i < r->n_entries; i++)
        free(r->entries[i]);
    free(r->entries);
    r->entries = NULL;
    r->n_entries = 0;
}

uint64_t idx_commit_time(idx_kb_t *ix, uint64_t lsn)
{
    uint64_t t = 0;
    idx_rtxn_t *rt;
    const void *b;
    size_t n;
    if (lsn == 0 || idx_store_rbegin(ix->store, &rt, NULL, 0))
        return 0;
    if (idx_store_log_get(rt, lsn, &b, &n) == 0)
        t = kb_wire_peek_u64(b, n, 2);
    idx_store_rend(&rt);
    return t;
}

int idx_compact(idx_kb_t *ix, uint64_t cut, uint64_t sweep_max,
                size_t max_records,
                uint64_t *removed, uint64_t *bytes, char *err, size_t errlen)
{
    *removed = *bytes = 0;
    idx_view_t v;
    idx_view(ix, &v);
    if (ix->confirmed_path) { /* a replica: only what is confirmed */
        if (cut > v.version)
            cut = v.version;
        /* Keep the staged mark current (compaction must never pass it: a
         * restart may drop records back to it) and clear it when nothing is
         * staged. */
        uint64_t head, mark = idx_store_staged(ix->store);
        idx_store_state(ix->store, &head, NULL);
        uint64_t want = v.version >= head ? 0 : v.version + 1;
        if (mark && mark != want) {
            int rc = idx_store_set_staged_now(ix->store, want, err, errlen);
            if (rc)
                return rc;
            mark = want;
        }
        if (mark && cut > mark)
            cut = mark;
    }
    /* Searches resolve hits in a read transaction opened after they read
     * the published view: compact only below a version published longer
     * ago than searches take (idx_search_batch checks, and searches again
     * in the rare case a search took longer). */
    uint64_t old_v = 0, now = kb_mono_us();
    /* The lag: twice the longest recent search, within bounds; the longest
     * is halved every second so that one slow search does not hold it. */
    uint64_t smax = __atomic_load_n(&ix->search_max_us, __ATOMIC_RELAXED);
    if (now - ix->search_decay_us >= 1000000u) {
        __atomic_store_n(&ix->search_max_us, smax / 2, __ATOMIC_RELAXED);
        ix->search_decay_us = now;
    }
    uint64_t lag_us = 2 * smax;
    if (lag_us < IDX_COMPACT_LAG_MIN_MS * 1000u)
        lag_us = IDX_COMPACT_LAG_MIN_MS * 1000u;
    if (lag_us > IDX_COMPACT_LAG_MAX_MS * 1000u)
        lag_us = IDX_COMPACT_LAG_MAX_MS * 1000u;
    for (size_t i = 0; i < IDX_PUBHIST; i++)
        if (ix->pubhist[i].us && now - ix->pubhist[i].us >= lag_us &&
            ix->pubhist[i].version > old_v)
            old_v = ix->pubhist[i].version;
    if (ix->pub_last_us && now - ix->pub_last_us >= lag_us)
        old_v = v.version; /* nothing published for a while */
    if (cut > old_v + 1)
        cut = old_v + 1;
    if (ix->loading)
        return 0; /* a snapshot being loaded is not compacted */
    int rc = idx_store_compact(ix->store, cut, max_records, removed, bytes,
                               err, errlen);
    /* What the kept operations above the cut replaced goes now, up to the
     * same lag (a search may hold an older view). */
    uint64_t swept = 0, sbytes = 0, upto = old_v + 1;
    if (ix->confirmed_path && upto > v.version + 1)
        upto = v.version + 1;
    if (upto > sweep_max)
        upto = sweep_max;
    if (!rc)
        rc = idx_store_sweep(ix->store, upto, max_records, &swept, &sbytes,
                             err, errlen);
    *removed += swept;
    *bytes += sbytes;
    return rc;
}

int idx_set_u64(idx_kb_t *ix, const char *key, uint64_t v, char *err,
                size_t errlen)
{
    return idx_store_set_u64(ix->store, key, v, err, errlen);
}

uint64_t idx_get_u64(idx_kb_t *ix, const char *key)
{
    return idx_store_get_u64(ix->store, key);
}

uint64_t idx_store_docs(idx_kb_t *ix)
{
    return idx_store_count(ix->store);
}

uint64_t idx_store_size(idx_kb_t *ix)
{
    return idx_store_bytes(ix->store);
}

uint64_t idx_log_start(idx_kb_t *ix)
{
    return idx_store_log_start(ix->store);
}

uint64_t idx_loading(idx_kb_t *ix)
{
    return __atomic_load_n(&ix->loading, __ATOMIC_ACQUIRE);
}

uint64_t idx_undo_from(idx_kb_t *ix)
{
    return idx_store_undo_from(ix->store);
}

int idx_record_is_live(idx_kb_t *ix, uint64_t lsn, const void *bytes,
                       size_t len)
{
    return idx_store_is_live(ix->store, lsn, bytes, len);
}

uint64_t idx_undo_count(idx_kb_t *ix)
{
    return idx_store_undo_count(ix->store);
}

uint64_t idx_loading_ready(idx_kb_t *ix)
{
    return idx_loading(ix) ? ix->loading_ready : 0;
}

int idx_set_loading(idx_kb_t *ix, uint64_t until, uint64_t ready, char *err,
                    size_t errlen)
{
    if (!until)
        ready = 0;
    /* ready first: a crash between the two leaves a harmless mark */
    int rc = idx_store_set_u64(ix->store, "snapshot_ready", ready, err, errlen);
    if (!rc)
        rc = idx_store_set_u64(ix->store, "snapshot_until", until, err, errlen);
    if (!rc) {
        ix->loading_ready = ready;
        __atomic_store_n(&ix->loading, until, __ATOMIC_RELEASE);
    }
    return rc;
}

int idx_read_log(idx_kb_t *ix, uint64_t from, size_t max, idx_log_cb cb, void *ctx,
                 char *err, size_t errlen)
{
    return idx_store_read_log(ix->store, from, max, cb, ctx, err, errlen);
}

size_t idx_recent(idx_kb_t *ix, size_t max, uint64_t *lsn, uint64_t *commit_us)
{
    return idx_store_recent(ix->store, max, lsn, commit_us);
}

int idx_truncate_dir(const char *dir, uint64_t map_size, int nosync,
                     uint64_t keep, uint64_t *dropped, char *err,
                     size_t errlen)
{
    idx_store_t *s;
    int rc = idx_store_open(dir, map_size, nosync, &s, err, errlen);
    if (rc)
        return rc;
    rc = idx_store_truncate(s, keep, dropped, err, errlen);
    idx_store_close(&s);
    /* A checkpoint above keep holds documents the store no longer has, and
     * the same LSNs will name other records: it must go. */
    idx_ckpt_head_t h;
    char why[256];
    int peek = rc ? -ENOENT : idx_ckpt_peek(dir, &h, why, sizeof why);
    if (peek != -ENOENT && (peek || h.lsn > keep))
        idx_ckpt_remove(dir);
    return rc;
}

void idx_remove_derived(const char *dir)
{
    idx_ckpt_remove(dir);
}

void idx_skip_close_checkpoint(idx_kb_t *ix)
{
    ix->ck_skip_close = 1;
}
