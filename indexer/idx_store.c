/* idx_store: LMDB layout and transactions for one node's documents, id map
 * and write log (layout in idx_store.h). LMDB codes are translated here,
 * once, into KB_ESTORE/KB_ECORRUPT with mdb_strerror text. Log records are
 * packed straight into LMDB's pages (MDB_RESERVE); LSNs only grow, so the log
 * takes MDB_APPEND and a reordered LSN is caught by LMDB itself. */
#include "idx_store.h"

#include "kb_err.h"
#include "kb_util.h"
#include "kb_wire.h"

#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STORE_DEFAULT_MAP (64ull << 30)

struct idx_store {
    MDB_env *env;
    MDB_dbi meta, ids, log, undo;
    MDB_dbi dedup, dedup_t; /* idempotent writes: (client, seq) -> result,
                               and (commit time, key) for expiry */
    uint64_t staged;      /* meta "staged": records above may be unconfirmed */
    uint64_t log_start;   /* meta "log_start" (1 when absent) */
    uint64_t undo_from;   /* meta "undo_from": undo kept from this LSN on */
    uint64_t store_id;    /* meta "store_id" */
    uint64_t swept;       /* idx_store_sweep() walked undo up to here */
    uint64_t applied_lsn; /* LSN of the newest log record; 0 = none */
    uint64_t applied_us;  /* its leader commit time */
    uint64_t ndocs;       /* entries in `ids`, kept in step with commits */
    uint64_t digest;      /* meta "digest": sum of the live documents'
                             record hashes (idx_store_digest) */
    /* The digest after each recent LSN (written as records are put; valid
     * for LSNs <= applied_lsn whose slot still holds them). */
    uint64_t ring_lsn[IDX_STORE_DIGEST_RING], ring_dg[IDX_STORE_DIGEST_RING];
    /* Lazy commits (idx_store_set_lazy): MDB_NOMETASYNC, so the newest
     * commit's meta page reaches the disk with the next commit's flush or
     * idx_store_sync(). synced_lsn: every record up to it is on disk. */
    int nosync, lazy, env_lazy;
    int sync_failed; /* a flush failed: synced_lsn never moves again */
    uint64_t synced_lsn;
    uint64_t synced_commits, lazy_commits, syncs;
    /* The id of this node's newest write transaction (set just before each
     * commit; any thread reads it); the newest id of another process's
     * transaction that a commit of ours found before it (txn_commit), until
     * idx_store_foreign_txn() takes it; the newest id that one reported. */
    uint64_t own_txnid, foreign_pending, foreign_seen;
};

struct idx_wtxn {
    idx_store_t *s;
    MDB_txn *txn;
    uint64_t last_lsn, last_us; /* newest record written in this txn */
    int64_t ndocs_delta;        /* ids added - ids removed in this txn */
    const void *raw;            /* idx_store_next_raw(): bytes to store */
    size_t rawlen;
    int undo; /* idx_store_keep_undo(): record old labels (2: only the
                 labels of documents replaced) */
    int lazy;                   /* begun with MDB_NOMETASYNC */
    uint64_t staged;            /* the staged mark after this txn */
    uint64_t digest;            /* the store's digest as of this txn */
};

struct idx_rtxn {
    idx_store_t *s;
    MDB_txn *txn;
};

static int store_fail(char *err, size_t errlen, int rc, const char *what)
{
    if (rc == MDB_MAP_FULL)
        return kb_seterr(err, errlen, KB_ESTORE,
                         "LMDB %s: knowledge base is full (MDB_MAP_FULL); "
                         "restart the node with a larger --map-size-gb",
                         what);
    if (rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == MDB_INVALID)
        return kb_seterr(err, errlen, KB_ECORRUPT, "LMDB %s: %s", what,
                         mdb_strerror(rc));
    return kb_seterr(err, errlen, KB_ESTORE, "LMDB %s: %s", what,
                     mdb_strerror(rc));
}

/* Commits a write transaction of this node. Every one writes meta "txn"
 * (its own LMDB transaction id), so that none is empty and each takes an
 * id: then, under LMDB's writer lock, a transaction before this one that
 * is not this node's newest was another process's (latched for
 * idx_store_foreign_txn). The id is noted as the newest of ours before the
 * commit; a failed commit puts the old one back. Frees txn, as
 * mdb_txn_commit() does. */
static int txn_commit(idx_store_t *s, MDB_txn *txn)
{
    uint64_t prev = __atomic_load_n(&s->own_txnid, __ATOMIC_RELAXED);
    uint64_t id = (uint64_t)mdb_txn_id(txn);
    if (prev && id - 1 > prev) {
        uint64_t was = __atomic_load_n(&s->foreign_pending, __ATOMIC_RELAXED);
        while (was < id - 1 &&
               !__atomic_compare_exchange_n(&s->foreign_pending, &was, id - 1,
                                            0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_RELAXED))
            ;
    }
    MDB_val k = {3, "txn"}, v = {sizeof id, &id};
    int rc = mdb_put(txn, s->meta, &k, &v, 0);
    if (rc) {
        mdb_txn_abort(txn);
        return rc;
    }
    __atomic_store_n(&s->own_txnid, id, __ATOMIC_SEQ_CST);
    rc = mdb_txn_commit(txn);
    if (rc)
        __atomic_store_n(&s->own_txnid, prev, __ATOMIC_SEQ_CST);
    return rc;
}

/* LMDB's newest transaction id, any process's (a read transaction's: the
 * lock region's aligned counter, not the mapped meta page). */
static int newest_txnid(idx_store_t *s, uint64_t *id)
{
    MDB_txn *rt;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &rt);
    if (rc)
        return rc;
    *id = (uint64_t)mdb_txn_id(rt);
    mdb_txn_abort(rt);
    return 0;
}

uint64_t idx_store_foreign_txn(idx_store_t *s)
{
    uint64_t found =
        __atomic_exchange_n(&s->foreign_pending, 0, __ATOMIC_SEQ_CST);
    /* LMDB's newest id first, then ours: a commit of ours that is
     * visible has its id noted already. */
    uint64_t last;
    if (!newest_txnid(s, &last) &&
        last > __atomic_load_n(&s->own_txnid, __ATOMIC_SEQ_CST) && last > found)
        found = last;
    if (found <= s->foreign_seen)
        return 0;
    s->foreign_seen = found;
    return found;
}

int idx_store_stamp(idx_store_t *s, idx_store_stamp_t *out)
{
    memset(out, 0, sizeof *out);
    int rc = newest_txnid(s, &out->txnid);
    if (rc)
        return rc;
    int fd;
    struct stat st;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now); /* before the file's times */
    rc = mdb_env_get_fd(s->env, &fd);
    if (!rc && fstat(fd, &st))
        rc = errno;
    if (rc) {
        memset(out, 0, sizeof *out);
        return rc;
    }
    out->size = (uint64_t)st.st_size;
    out->mtime_s = st.st_mtim.tv_sec;
    out->mtime_ns = st.st_mtim.tv_nsec;
    out->ctime_s = st.st_ctim.tv_sec;
    out->ctime_ns = st.st_ctim.tv_nsec;
    int64_t newest = out->mtime_s > out->ctime_s ? out->mtime_s : out->ctime_s;
    out->settled = (int64_t)now.tv_sec - newest > IDX_STORE_STAMP_SETTLE_S;
    return 0;
}

int idx_store_stamp_equal(const idx_store_stamp_t *a,
                          const idx_store_stamp_t *b)
{
    return a->txnid && a->txnid == b->txnid && a->size == b->size &&
           a->mtime_s == b->mtime_s && a->mtime_ns == b->mtime_ns &&
           a->ctime_s == b->ctime_s && a->ctime_ns == b->ctime_ns;
}

/* A random non-zero id (getrandom; the clock if that fails). */
static uint64_t new_store_id(void)
{
    uint64_t id = 0;
    if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
        id = kb_wall_us() ^ ((uint64_t)getpid() << 32);
    return id ? id : 1;
}

static MDB_val u64_val(uint64_t *v)
{
    MDB_val m = {sizeof *v, v};
    return m;
}

static uint64_t get_u64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The applied state is the newest log record. */
/* ---------------------------------------------------------------- digest
 * Order-independent: the sum (mod 2^64) of a 64-bit hash of each live
 * document's log record, byte for byte as the leader wrote it (so every
 * copy of the same state has the same digest). The record holds the id,
 * the LSN, the commit time and the document. */
uint64_t idx_store_record_hash(const void *bytes, size_t len)
{
    uint64_t z = ((uint64_t)kb_crc32c(0, bytes, len) << 32) ^ len;
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The hash of the record at label, or 0 when there is none. */
static uint64_t label_hash(MDB_txn *txn, MDB_dbi log, int64_t label)
{
    if (label < 0)
        return 0;
    uint64_t key = (uint64_t)label;
    MDB_val k = {sizeof key, &key}, v;
    if (mdb_get(txn, log, &k, &v))
        return 0;
    return idx_store_record_hash(v.mv_data, v.mv_size);
}

/* Whether a write transaction committed after txn began (the pages it
 * freed cannot be reused while txn is open). */
static int store_moved(idx_store_t *s, MDB_txn *txn)
{
    MDB_envinfo info;
    return !mdb_env_info(s->env, &info) &&
           info.me_last_txnid != mdb_txn_id(txn);
}

/* Recomputes the digest from every live document in txn; with hold_us,
 * gives way (-EAGAIN) as idx_store_digest_check() says. */
static int digest_scan(idx_store_t *s, MDB_txn *txn, uint64_t *digest,
                       uint64_t *docs, const _Atomic int *stop,
                       uint64_t hold_us)
{
    uint64_t t0 = hold_us ? kb_mono_us() : 0;
    MDB_cursor *cur;
    MDB_val k, v;
    *digest = *docs = 0;
    int rc = mdb_cursor_open(txn, s->ids, &cur);
    if (rc)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        /* before a document (never after the last one): give way? */
        if (*docs && (*docs & 1023) == 0 && hold_us &&
            kb_mono_us() - t0 > hold_us && store_moved(s, txn)) {
            rc = -EAGAIN;
            break;
        }
        if (v.mv_size != 8) {
            rc = MDB_CORRUPTED;
            break;
        }
        uint64_t key = get_u64(v.mv_data);
        MDB_val lk = {sizeof key, &key}, lv;
        rc = mdb_get(txn, s->log, &lk, &lv);
        if (rc == MDB_NOTFOUND)
            rc = MDB_CORRUPTED; /* a live id without its record */
        if (rc)
            break;
        *digest += idx_store_record_hash(lv.mv_data, lv.mv_size);
        if ((++*docs & 1023) == 0 && stop && *stop) {
            rc = KB_EUNAVAIL;
            break;
        }
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int digest_put(idx_store_t *s, MDB_txn *txn, uint64_t digest)
{
    uint64_t v64 = digest;
    MDB_val k = {6, "digest"}, v = u64_val(&v64);
    return mdb_put(txn, s->meta, &k, &v, 0);
}

static int store_load_state(idx_store_t *s, MDB_txn *txn)
{
    MDB_cursor *cur;
    MDB_val k, v;
    s->applied_lsn = s->applied_us = 0;
    int rc = mdb_cursor_open(txn, s->log, &cur);
    if (rc)
        return rc;
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    if (rc == 0) {
        Kbsync__LogRecord *r =
            kbsync__log_record__unpack(NULL, v.mv_size, v.mv_data);
        if (k.mv_size != 8 || !r || r->lsn != get_u64(k.mv_data)) {
            rc = MDB_CORRUPTED;
        } else {
            s->applied_lsn = r->lsn;
            s->applied_us = r->commit_time_us;
        }
        if (r)
            kbsync__log_record__free_unpacked(r, NULL);
    } else if (rc == MDB_NOTFOUND) {
        rc = 0;
    }
    mdb_cursor_close(cur);
    return rc;
}

int idx_store_open(const char *dir, uint64_t map_size, int nosync,
                   idx_store_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (mkdir(dir, 0755) && errno != EEXIST)
        return kb_seterr(err, errlen, -errno, "cannot create data dir %s: %s",
                         dir, strerror(errno));
    idx_store_t *s = calloc(1, sizeof *s);
    if (!s)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    int rc = mdb_env_create(&s->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(s->env, 8);
    if (!rc)
        rc = mdb_env_set_mapsize(
            s->env, (size_t)(map_size ? map_size : STORE_DEFAULT_MAP));
    if (rc) {
        mdb_env_close(s->env);
        free(s);
        return store_fail(err, errlen, rc, "env setup");
    }
    /* MDB_NOTLS: read transactions are not tied to threads. MDB_NORDAHEAD:
     * document reads by label are random. */
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (nosync ? MDB_NOSYNC : 0);
    rc = mdb_env_open(s->env, dir, flags, 0644);
    if (rc) {
        mdb_env_close(s->env);
        free(s);
        return kb_seterr(err, errlen, rc > 0 ? -rc : KB_ESTORE,
                         "cannot open LMDB store in %s: %s", dir,
                         mdb_strerror(rc));
    }
    MDB_txn *txn;
    rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (!rc)
        rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta);
    if (!rc)
        rc = mdb_dbi_open(txn, "ids", MDB_CREATE, &s->ids);
    if (!rc)
        rc = mdb_dbi_open(txn, "log", MDB_CREATE | MDB_INTEGERKEY, &s->log);
    if (!rc)
        rc = mdb_dbi_open(txn, "undo", MDB_CREATE | MDB_INTEGERKEY, &s->undo);
    if (!rc)
        rc = mdb_dbi_open(txn, "dedup", MDB_CREATE, &s->dedup);
    if (!rc)
        rc = mdb_dbi_open(txn, "dedup_t", MDB_CREATE, &s->dedup_t);
    if (!rc)
        rc = store_load_state(s, txn);
    MDB_stat st;
    if (!rc && !(rc = mdb_stat(txn, s->ids, &st)))
        s->ndocs = st.ms_entries;
    const char *names[] = {"staged", "log_start", "undo_from", "store_id"};
    uint64_t *vals[] = {&s->staged, &s->log_start, &s->undo_from,
                        &s->store_id};
    for (int i = 0; i < 4 && !rc; i++) {
        MDB_val k = {strlen(names[i]), (void *)names[i]}, v;
        int g = mdb_get(txn, s->meta, &k, &v);
        if (g == 0 && v.mv_size == 8)
            *vals[i] = get_u64(v.mv_data);
        else if (g != MDB_NOTFOUND)
            rc = g ? g : MDB_CORRUPTED;
    }
    if (!rc) {
        MDB_val k = {6, "digest"}, v;
        int g = mdb_get(txn, s->meta, &k, &v);
        if (g == 0 && v.mv_size == 8) {
            s->digest = get_u64(v.mv_data);
        } else if (g == MDB_NOTFOUND) { /* older store: computed once */
            uint64_t docs;
            rc = digest_scan(s, txn, &s->digest, &docs, NULL, 0);
            if (!rc)
                rc = digest_put(s, txn, s->digest);
        } else {
            rc = g ? g : MDB_CORRUPTED;
        }
    }
    if (!rc && !s->store_id) {
        s->store_id = new_store_id();
        MDB_val k = {8, "store_id"}, v = u64_val(&s->store_id);
        rc = mdb_put(txn, s->meta, &k, &v, 0);
    }
    if (s->applied_lsn) { /* the digest at the head is known at once */
        size_t ri = s->applied_lsn % IDX_STORE_DIGEST_RING;
        s->ring_lsn[ri] = s->applied_lsn;
        s->ring_dg[ri] = s->digest;
    }
    if (!s->log_start)
        s->log_start = 1;
    if (!s->undo_from)
        s->undo_from = 1;
    if (!rc)
        rc = txn_commit(s, txn);
    else
        mdb_txn_abort(txn);
    if (rc) {
        mdb_env_close(s->env);
        free(s);
        return store_fail(err, errlen, rc, "open databases");
    }
    /* What a killed process left in the page cache may not be on disk yet
     * (a lazy commit): flush it once, so that synced_lsn starts true. */
    s->nosync = nosync;
    if (!nosync && (rc = mdb_env_sync(s->env, 1))) {
        mdb_env_close(s->env);
        free(s);
        return store_fail(err, errlen, rc, "flush at open");
    }
    s->synced_lsn = s->applied_lsn;
    *out = s;
    return 0;
}

void idx_store_close(idx_store_t **s)
{
    if (!s || !*s)
        return;
    mdb_env_close((*s)->env);
    free(*s);
    *s = NULL;
}

int idx_store_get_meta(idx_store_t *s, Kbsync__KbMeta **meta, char *err,
                       size_t errlen)
{
    *meta = NULL;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return store_fail(err, errlen, rc, "read meta");
    MDB_val k = {2, "kb"}, v;
    rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return 0;
    }
    if (rc) {
        mdb_txn_abort(txn);
        return store_fail(err, errlen, rc, "read meta");
    }
    *meta = kbsync__kb_meta__unpack(NULL, v.mv_size, v.mv_data);
    mdb_txn_abort(txn);
    if (!*meta)
        return kb_seterr(err, errlen, KB_ECORRUPT,
                         "stored knowledge-base settings cannot be decoded");
    return 0;
}

int idx_store_put_meta(idx_store_t *s, const Kbsync__KbMeta *meta, char *err,
                       size_t errlen)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return store_fail(err, errlen, rc, "write meta");
    MDB_val k = {2, "kb"}, v;
    v.mv_size = kbsync__kb_meta__get_packed_size(meta);
    rc = mdb_put(txn, s->meta, &k, &v, MDB_RESERVE);
    if (!rc) {
        kbsync__kb_meta__pack(meta, v.mv_data);
        rc = txn_commit(s, txn);
    } else {
        mdb_txn_abort(txn);
    }
    return rc ? store_fail(err, errlen, rc, "write meta") : 0;
}

void idx_store_state(const idx_store_t *s, uint64_t *lsn, uint64_t *commit_us)
{
    if (lsn)
        *lsn = s->applied_lsn;
    if (commit_us)
        *commit_us = s->applied_us;
}

void idx_store_set_lazy(idx_store_t *s, int on)
{
    s->lazy = on;
}

uint64_t idx_store_synced(const idx_store_t *s)
{
    return s->synced_lsn < s->applied_lsn ? s->synced_lsn : s->applied_lsn;
}

int idx_store_sync(idx_store_t *s, char *err, size_t errlen)
{
    if (s->synced_lsn >= s->applied_lsn)
        return 0;
    if (s->sync_failed)
        return kb_seterr(err, errlen, KB_ESTORE,
                         "an earlier flush to disk failed: what it held may "
                         "not be on disk, so nothing after LSN %llu is "
                         "reported durable until the node is restarted",
                         (unsigned long long)s->synced_lsn);
    int rc = mdb_env_sync(s->env, 1);
    if (rc) {
        /* Linux may mark the pages of a failed writeback clean: a later
         * flush that succeeds would not have written them. Never count
         * anything as on disk again in this process. */
        s->sync_failed = 1;
        return store_fail(err, errlen, rc, "flush to disk");
    }
    s->syncs++;
    s->synced_lsn = s->applied_lsn;
    return 0;
}

void idx_store_sync_counts(const idx_store_t *s, uint64_t *synced_commits,
                           uint64_t *lazy_commits, uint64_t *syncs)
{
    *synced_commits = s->synced_commits;
    *lazy_commits = s->lazy_commits;
    *syncs = s->syncs;
}

uint64_t idx_store_count(idx_store_t *s)
{
    return s->ndocs;
}

int idx_store_begin(idx_store_t *s, idx_wtxn_t **t, char *err, size_t errlen)
{
    *t = NULL;
    idx_wtxn_t *w = calloc(1, sizeof *w);
    if (!w)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    /* LMDB 0.9 takes MDB_NOMETASYNC only as an environment flag (as a
     * transaction flag it is ignored): switched here, by the one writer,
     * before its transaction begins; commits read it. */
    w->lazy = s->lazy && !s->nosync;
    int rc = 0;
    if (w->lazy != s->env_lazy) {
        rc = mdb_env_set_flags(s->env, MDB_NOMETASYNC, w->lazy);
        if (rc) {
            free(w);
            return store_fail(err, errlen, rc, "set commit mode");
        }
        s->env_lazy = w->lazy;
    }
    rc = mdb_txn_begin(s->env, NULL, 0, &w->txn);
    if (rc) {
        free(w);
        return store_fail(err, errlen, rc, "begin write");
    }
    w->s = s;
    w->last_lsn = s->applied_lsn;
    w->last_us = s->applied_us;
    w->staged = s->staged;
    w->digest = s->digest;
    *t = w;
    return 0;
}

/* The live label of an id in txn, or -1; an LMDB code on failure. */
static int id_label(MDB_txn *txn, MDB_dbi ids, const char *id, size_t id_len,
                    int64_t *label)
{
    MDB_val k = {id_len, (void *)id}, v;
    int rc = mdb_get(txn, ids, &k, &v);
    *label = -1;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (v.mv_size != 8)
        return MDB_CORRUPTED;
    *label = (int64_t)get_u64(v.mv_data);
    return 0;
}

int idx_store_wlabel(idx_wtxn_t *t, const char *id, size_t id_len,
                     int64_t *label)
{
    return id_label(t->txn, t->s->ids, id, id_len, label);
}

/* Appends rec to the log. An LSN not above the newest one is a gap in the
 * caller's sequence: KB_EGAP. */
static int store_put_log(idx_wtxn_t *t, const Kbsync__LogRecord *rec,
                         const char *what, char *err, size_t errlen)
{
    if (rec->lsn <= t->last_lsn)
        return kb_seterr(err, errlen, KB_EGAP,
                         "%s: LSN %llu is not above the newest one, %llu", what,
                         (unsigned long long)rec->lsn,
                         (unsigned long long)t->last_lsn);
    uint64_t key = rec->lsn;
    MDB_val k = u64_val(&key), v;
    const void *raw = t->raw;
    t->raw = NULL;
    v.mv_size = raw ? t->rawlen : kbsync__log_record__get_packed_size(rec);
    int rc = mdb_put(t->txn, t->s->log, &k, &v, MDB_RESERVE | MDB_APPEND);
    if (rc == MDB_KEYEXIST)
        return kb_seterr(err, errlen, KB_EGAP, "%s: LSN %llu already logged",
                         what, (unsigned long long)rec->lsn);
    if (rc)
        return store_fail(err, errlen, rc, what);
    if (raw)
        memcpy(v.mv_data, raw, v.mv_size);
    else
        kbsync__log_record__pack(rec, v.mv_data);
    t->last_lsn = rec->lsn;
    t->last_us = rec->commit_time_us;
    return 0;
}

/* With idx_store_keep_undo(): undo[lsn] = the label the write replaced
 * (UINT64_MAX: the id had none), so that idx_store_truncate() can put each
 * id back without reading the log. */
static int store_put_undo(idx_wtxn_t *t, uint64_t lsn, int64_t old_label)
{
    if (!t->undo || (t->undo == 2 && old_label < 0))
        return 0;
    uint64_t key = lsn, val = old_label < 0 ? UINT64_MAX : (uint64_t)old_label;
    MDB_val k = u64_val(&key), v = u64_val(&val);
    return mdb_put(t->txn, t->s->undo, &k, &v, MDB_APPEND);
}

int idx_store_set_staged(idx_wtxn_t *t, uint64_t lsn, char *err,
                         size_t errlen)
{
    if (lsn == t->staged)
        return 0;
    MDB_val k = {6, "staged"};
    int rc;
    if (lsn) {
        uint64_t v64 = lsn;
        MDB_val v = u64_val(&v64);
        rc = mdb_put(t->txn, t->s->meta, &k, &v, 0);
    } else {
        rc = mdb_del(t->txn, t->s->meta, &k, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    if (rc)
        return store_fail(err, errlen, rc, "mark staged records");
    t->staged = lsn;
    return 0;
}

uint64_t idx_store_staged(idx_store_t *s)
{
    return s->staged;
}

int idx_store_put_u64(idx_wtxn_t *t, const char *key, uint64_t v, char *err,
                      size_t errlen)
{
    MDB_val k = {strlen(key), (void *)key};
    int rc;
    if (v) {
        uint64_t v64 = v;
        MDB_val mv = u64_val(&v64);
        rc = mdb_put(t->txn, t->s->meta, &k, &mv, 0);
    } else {
        rc = mdb_del(t->txn, t->s->meta, &k, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    return rc ? store_fail(err, errlen, rc, "write a setting") : 0;
}

uint64_t idx_store_get_u64(idx_store_t *s, const char *key)
{
    MDB_txn *txn;
    uint64_t out = 0;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))
        return 0;
    MDB_val k = {strlen(key), (void *)key}, v;
    if (!mdb_get(txn, s->meta, &k, &v) && v.mv_size == 8)
        out = get_u64(v.mv_data);
    mdb_txn_abort(txn);
    return out;
}

int idx_store_set_u64(idx_store_t *s, const char *key, uint64_t v, char *err,
                      size_t errlen)
{
    idx_wtxn_t *t;
    int rc = idx_store_begin(s, &t, err, errlen);
    if (!rc)
        rc = idx_store_put_u64(t, key, v, err, errlen);
    if (!rc)
        return idx_store_commit(&t, err, errlen);
    idx_store_abort(&t);
    return rc;
}

uint64_t idx_store_id(idx_store_t *s)
{
    return s->store_id;
}

uint64_t idx_store_log_start(idx_store_t *s)
{
    return s->log_start;
}

uint64_t idx_store_rtxn_log_start(idx_rtxn_t *t)
{
    MDB_val k = {9, "log_start"}, v;
    if (!mdb_get(t->txn, t->s->meta, &k, &v) && v.mv_size == 8)
        return get_u64(v.mv_data);
    return 1;
}

uint64_t idx_store_undo_from(idx_store_t *s)
{
    return s->undo_from;
}

int idx_store_set_undo_from(idx_store_t *s, uint64_t lsn, char *err,
                            size_t errlen)
{
    int rc = idx_store_set_u64(s, "undo_from", lsn, err, errlen);
    if (!rc)
        s->undo_from = lsn;
    return rc;
}

int idx_store_set_staged_now(idx_store_t *s, uint64_t first, char *err,
                             size_t errlen)
{
    idx_wtxn_t *t;
    int rc = idx_store_begin(s, &t, err, errlen);
    if (!rc)
        rc = idx_store_set_staged(t, first, err, errlen);
    if (!rc)
        return idx_store_commit(&t, err, errlen);
    idx_store_abort(&t);
    return rc;
}

int idx_store_is_live(idx_store_t *s, uint64_t lsn, const void *bytes,
                      size_t len)
{
    Kbsync__LogRecord *r = kbsync__log_record__unpack(NULL, len, bytes);
    int live = 0;
    if (r && r->op == KBSYNC__LOG_OP__LOG_OP_UPSERT && r->doc && r->doc->id) {
        MDB_txn *txn;
        if (!mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)) {
            MDB_val k = {strlen(r->doc->id), r->doc->id}, v;
            live = !mdb_get(txn, s->ids, &k, &v) && v.mv_size == 8 &&
                   get_u64(v.mv_data) == lsn;
            mdb_txn_abort(txn);
        }
    }
    if (r)
        kbsync__log_record__free_unpacked(r, NULL);
    return live;
}

int idx_store_log_get(idx_rtxn_t *t, uint64_t lsn, const void **bytes,
                      size_t *len)
{
    return idx_store_doc_by_label(t, (int64_t)lsn, bytes, len);
}

void idx_store_keep_undo(idx_wtxn_t *t)
{
    t->undo = 1;
}

void idx_store_keep_undo_replaced(idx_wtxn_t *t)
{
    t->undo = 2;
}

void idx_store_next_raw(idx_wtxn_t *t, const void *bytes, size_t len)
{
    t->raw = bytes;
    t->rawlen = len;
}

static void store_ring(idx_wtxn_t *t, uint64_t lsn)
{
    size_t i = lsn % IDX_STORE_DIGEST_RING;
    t->s->ring_lsn[i] = lsn;
    t->s->ring_dg[i] = t->digest;
}

int idx_store_upsert(idx_wtxn_t *t, uint64_t lsn, uint64_t commit_us,
                     const Kbsync__Doc *doc, int64_t *old_label, char *err,
                     size_t errlen)
{
    size_t idlen = strlen(doc->id);
    int rc = idx_store_wlabel(t, doc->id, idlen, old_label);
    if (rc)
        return store_fail(err, errlen, rc, "upsert: look up id");
    Kbsync__LogRecord rec = KBSYNC__LOG_RECORD__INIT;
    rec.lsn = lsn;
    rec.commit_time_us = commit_us;
    rec.op = KBSYNC__LOG_OP__LOG_OP_UPSERT;
    rec.doc = (Kbsync__Doc *)doc;
    t->digest -= label_hash(t->txn, t->s->log, *old_label);
    rc = store_put_log(t, &rec, "upsert", err, errlen);
    if (rc)
        return rc;
    {
        uint64_t key = lsn;
        MDB_val k = u64_val(&key), v;
        if (!mdb_get(t->txn, t->s->log, &k, &v))
            t->digest += idx_store_record_hash(v.mv_data, v.mv_size);
        store_ring(t, lsn);
    }
    uint64_t label = lsn;
    MDB_val ik = {idlen, doc->id}, iv = u64_val(&label);
    rc = mdb_put(t->txn, t->s->ids, &ik, &iv, 0);
    if (rc)
        return store_fail(err, errlen, rc, "upsert: put id");
    rc = store_put_undo(t, lsn, *old_label);
    if (rc)
        return store_fail(err, errlen, rc, "upsert: put undo");
    if (*old_label < 0)
        t->ndocs_delta++;
    return 0;
}

int idx_store_delete(idx_wtxn_t *t, uint64_t lsn, uint64_t commit_us,
                     const char *id, size_t id_len, int log_missing,
                     int64_t *old_label, char *err, size_t errlen)
{
    int rc = idx_store_wlabel(t, id, id_len, old_label);
    if (rc)
        return store_fail(err, errlen, rc, "delete: look up id");
    if (*old_label < 0 && !log_missing) {
        t->raw = NULL;
        return 0;
    }
    if (*old_label >= 0) {
        t->digest -= label_hash(t->txn, t->s->log, *old_label);
        MDB_val ik = {id_len, (void *)id};
        rc = mdb_del(t->txn, t->s->ids, &ik, NULL);
        if (rc)
            return store_fail(err, errlen, rc, "delete: drop id");
        t->ndocs_delta--;
    }
    if (id_len > KB_MAX_ID_LEN)
        return kb_seterr(err, errlen, KB_EBADID, "delete: id too long");
    char idbuf[KB_MAX_ID_LEN + 1]; /* protobuf-c wants NUL-terminated */
    memcpy(idbuf, id, id_len);
    idbuf[id_len] = 0;
    Kbsync__LogRecord rec = KBSYNC__LOG_RECORD__INIT;
    rec.lsn = lsn;
    rec.commit_time_us = commit_us;
    rec.op = KBSYNC__LOG_OP__LOG_OP_DELETE;
    rec.id = idbuf;
    rc = store_put_log(t, &rec, "delete", err, errlen);
    if (!rc)
        store_ring(t, lsn);
    if (!rc && (rc = store_put_undo(t, lsn, *old_label)))
        return store_fail(err, errlen, rc, "delete: put undo");
    return rc;
}

int idx_store_commit(idx_wtxn_t **tp, char *err, size_t errlen)
{
    idx_wtxn_t *t = *tp;
    *tp = NULL;
    int rc = t->digest != t->s->digest ? digest_put(t->s, t->txn, t->digest)
                                       : 0;
    if (rc) {
        mdb_txn_abort(t->txn);
        free(t);
        return store_fail(err, errlen, rc, "commit (digest)");
    }
    uint64_t before = t->s->applied_lsn;
    rc = txn_commit(t->s, t->txn);
    if (rc == EIO) /* a flush failed (ENOSPC: no space for the pages;
                      nothing was flushed and the commit can be retried) */
        t->s->sync_failed = 1;
    if (!rc) {
        /* A lazy commit's fdatasync also flushed the meta page the commit
         * before it left unsynced: everything before this one is on disk. */
        if (t->s->sync_failed)
            ; /* pages a failed flush dropped may be missing: see below */
        else if (t->s->nosync)
            t->s->synced_lsn = t->last_lsn;
        else if (t->lazy)
            t->s->synced_lsn = before;
        else
            t->s->synced_lsn = t->last_lsn;
        if (t->lazy)
            t->s->lazy_commits++;
        else if (!t->s->nosync)
            t->s->synced_commits++;
        t->s->digest = t->digest;
        t->s->applied_lsn = t->last_lsn;
        t->s->applied_us = t->last_us;
        t->s->ndocs = (uint64_t)((int64_t)t->s->ndocs + t->ndocs_delta);
        t->s->staged = t->staged;
    }
    free(t);
    return rc ? store_fail(err, errlen, rc, "commit") : 0;
}

/* ------------------------------------------------------ idempotent writes
 * dedup: key (client id, NUL, big-endian seq) -> 40 bytes: first, version,
 * commit_us, hash (u64 each), written, missing (u32 each), little-endian.
 * dedup_t: (big-endian commit_us, key) -> nothing, oldest first, so that
 * expiry walks from the front. */

#define DEDUP_VAL 40

static void put64le(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64le(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int idx_store_dedup_put(idx_wtxn_t *t, const void *key, size_t klen,
                        const idx_store_dedup_t *d, char *err, size_t errlen)
{
    unsigned char v[DEDUP_VAL], tk[8 + 512];
    if (klen > sizeof tk - 8)
        return kb_seterr(err, errlen, KB_EINVAL, "client id too long");
    put64le(v, d->first);
    put64le(v + 8, d->version);
    put64le(v + 16, d->commit_us);
    put64le(v + 24, d->hash);
    put64le(v + 32, (uint64_t)d->written | (uint64_t)d->missing << 32);
    for (int i = 0; i < 8; i++)
        tk[i] = (unsigned char)(d->commit_us >> (56 - 8 * i));
    memcpy(tk + 8, key, klen);
    MDB_val k = {klen, (void *)key}, mv = {DEDUP_VAL, v};
    MDB_val k2 = {klen + 8, tk}, e = {0, ""};
    int rc = mdb_put(t->txn, t->s->dedup, &k, &mv, 0);
    if (!rc)
        rc = mdb_put(t->txn, t->s->dedup_t, &k2, &e, 0);
    return rc ? store_fail(err, errlen, rc, "write the idempotency table") : 0;
}

int idx_store_dedup_get(idx_store_t *s, const void *key, size_t klen,
                        idx_store_dedup_t *d)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return KB_ESTORE;
    MDB_val k = {klen, (void *)key}, v;
    rc = mdb_get(txn, s->dedup, &k, &v);
    if (!rc && v.mv_size == DEDUP_VAL) {
        const unsigned char *p = v.mv_data;
        d->first = get64le(p);
        d->version = get64le(p + 8);
        d->commit_us = get64le(p + 16);
        d->hash = get64le(p + 24);
        uint64_t wm = get64le(p + 32);
        d->written = (uint32_t)wm;
        d->missing = (uint32_t)(wm >> 32);
    }
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND)
        return -ENOENT;
    return rc ? KB_ESTORE : (v.mv_size == DEDUP_VAL ? 0 : KB_ECORRUPT);
}

int idx_store_dedup_expire(idx_store_t *s, uint64_t before_us,
                           uint64_t max_entries, size_t max_step,
                           uint64_t *removed, uint64_t *left, char *err,
                           size_t errlen)
{
    *removed = 0;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return store_fail(err, errlen, rc, "begin");
    MDB_stat st;
    rc = mdb_stat(txn, s->dedup_t, &st);
    uint64_t n = rc ? 0 : st.ms_entries;
    MDB_cursor *c = NULL;
    if (!rc)
        rc = mdb_cursor_open(txn, s->dedup_t, &c);
    MDB_val k, v;
    int g = rc ? rc : mdb_cursor_get(c, &k, &v, MDB_FIRST);
    while (!rc && g == 0 && *removed < max_step && k.mv_size > 8) {
        const unsigned char *p = k.mv_data;
        uint64_t at = 0;
        for (int i = 0; i < 8; i++)
            at = at << 8 | p[i];
        if (at >= before_us && n - *removed <= max_entries)
            break;
        MDB_val dk = {k.mv_size - 8, (unsigned char *)k.mv_data + 8};
        rc = mdb_del(txn, s->dedup, &dk, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
        if (!rc)
            rc = mdb_cursor_del(c, 0);
        if (!rc) {
            (*removed)++;
            g = mdb_cursor_get(c, &k, &v, MDB_FIRST);
            if (g == 0 && k.mv_size <= 8)
                g = MDB_NOTFOUND;
        }
    }
    if (c)
        mdb_cursor_close(c);
    if (!rc && *removed)
        rc = txn_commit(s, txn);
    else
        mdb_txn_abort(txn);
    if (left)
        *left = n - *removed;
    return rc ? store_fail(err, errlen, rc, "expire the idempotency table") : 0;
}

void idx_store_abort(idx_wtxn_t **tp)
{
    if (!tp || !*tp)
        return;
    mdb_txn_abort((*tp)->txn);
    free(*tp);
    *tp = NULL;
}

int idx_store_rbegin(idx_store_t *s, idx_rtxn_t **t, char *err, size_t errlen)
{
    *t = NULL;
    idx_rtxn_t *r = calloc(1, sizeof *r);
    if (!r)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &r->txn);
    if (rc) {
        free(r);
        return store_fail(err, errlen, rc, "begin read");
    }
    r->s = s;
    *t = r;
    return 0;
}

void idx_store_rend(idx_rtxn_t **t)
{
    if (!t || !*t)
        return;
    mdb_txn_abort((*t)->txn);
    free(*t);
    *t = NULL;
}

int idx_store_rlabel(idx_rtxn_t *t, const char *id, size_t id_len,
                     int64_t *label)
{
    return id_label(t->txn, t->s->ids, id, id_len, label);
}

int idx_store_doc_by_label(idx_rtxn_t *t, int64_t label, const void **bytes,
                           size_t *len)
{
    uint64_t key = (uint64_t)label;
    MDB_val k = u64_val(&key), v;
    int rc = mdb_get(t->txn, t->s->log, &k, &v);
    if (rc == MDB_NOTFOUND)
        return -ENOENT;
    if (rc)
        return KB_ESTORE;
    *bytes = v.mv_data;
    *len = v.mv_size;
    return 0;
}

int idx_store_list(idx_rtxn_t *t, const char *prefix, size_t plen,
                   const char *after, size_t alen, size_t max,
                   idx_store_list_cb cb, void *ctx, int *more, uint64_t *lsn,
                   char *err, size_t errlen)
{
    MDB_cursor *cur;
    MDB_val k, v;
    *more = 0;
    *lsn = 0; /* the newest record in this transaction (none: 0) */
    int rc = mdb_cursor_open(t->txn, t->s->log, &cur);
    if (rc)
        return store_fail(err, errlen, rc, "list: open log cursor");
    if (mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0 && k.mv_size == 8)
        *lsn = get_u64(k.mv_data);
    mdb_cursor_close(cur);
    rc = mdb_cursor_open(t->txn, t->s->ids, &cur);
    if (rc)
        return store_fail(err, errlen, rc, "list: open id cursor");
    /* Start at whichever of prefix and after sorts later; skip `after`
     * itself. */
    size_t m = alen < plen ? alen : plen;
    int c = memcmp(after, prefix, m);
    int from_after = alen && (c > 0 || (c == 0 && alen >= plen));
    k.mv_data = (void *)(from_after ? after : prefix);
    k.mv_size = from_after ? alen : plen;
    if (k.mv_size == 0)
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    else
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && from_after && k.mv_size == alen &&
        memcmp(k.mv_data, after, alen) == 0)
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    size_t n = 0;
    int out = 0;
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0)
            break; /* past the prefix */
        if (v.mv_size != 8) {
            rc = MDB_CORRUPTED;
            break;
        }
        if (n == max) {
            *more = 1;
            break;
        }
        uint64_t label = get_u64(v.mv_data);
        MDB_val lk = {sizeof label, &label}, lv;
        rc = mdb_get(t->txn, t->s->log, &lk, &lv);
        if (rc == MDB_NOTFOUND)
            rc = MDB_CORRUPTED; /* a live id without its record */
        if (rc)
            break;
        n++;
        if ((out = cb(ctx, k.mv_data, k.mv_size, label, lv.mv_data,
                      lv.mv_size)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    if (out)
        return out;
    if (rc && rc != MDB_NOTFOUND)
        return store_fail(err, errlen, rc, "list documents");
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Live documents are the labels in `ids`: collect them, sort, and read their
 * log records in LSN order (sequential in the file). */
int idx_store_scan_docs(idx_store_t *s, idx_store_doc_cb cb, void *ctx,
                        char *err, size_t errlen)
{
    idx_rtxn_t *t;
    int rc = idx_store_rbegin(s, &t, err, errlen);
    if (rc)
        return rc;
    rc = idx_store_scan_docs_in(t, cb, ctx, err, errlen);
    idx_store_rend(&t);
    return rc;
}

int idx_store_live_labels(idx_rtxn_t *t, uint64_t **out, size_t *nout,
                          char *err, size_t errlen)
{
    idx_store_t *s = t->s;
    MDB_cursor *cur;
    MDB_stat st;
    *out = NULL;
    *nout = 0;
    int rc = mdb_stat(t->txn, s->ids, &st);
    if (!rc)
        rc = mdb_cursor_open(t->txn, s->ids, &cur);
    if (rc)
        return store_fail(err, errlen, rc, "scan documents");
    size_t n = 0, cap = st.ms_entries ? st.ms_entries : 1;
    uint64_t *labels = malloc(cap * sizeof *labels);
    int bad = labels ? 0 : kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    MDB_val k, v;
    rc = bad ? MDB_NOTFOUND : mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (rc == 0 && n < cap) {
        if (v.mv_size != 8) {
            bad = kb_seterr(err, errlen, KB_ECORRUPT, "id entry of %zu bytes",
                            v.mv_size);
            break;
        }
        labels[n++] = get_u64(v.mv_data);
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (!bad && rc && rc != MDB_NOTFOUND)
        bad = store_fail(err, errlen, rc, "scan documents");
    if (bad) {
        free(labels);
        return bad;
    }
    qsort(labels, n, sizeof *labels, cmp_u64);
    *out = labels;
    *nout = n;
    return 0;
}

int idx_store_scan_docs_in(idx_rtxn_t *t, idx_store_doc_cb cb, void *ctx,
                           char *err, size_t errlen)
{
    uint64_t *labels;
    size_t n;
    int out = idx_store_live_labels(t, &labels, &n, err, errlen);
    for (size_t i = 0; i < n && !out; i++) {
        const void *b;
        size_t len;
        int rc = idx_store_doc_by_label(t, (int64_t)labels[i], &b, &len);
        if (rc == -ENOENT)
            out = kb_seterr(err, errlen, KB_ECORRUPT,
                            "live document %llu has no log record",
                            (unsigned long long)labels[i]);
        else if (rc)
            out = kb_seterr(err, errlen, rc, "scan documents: LMDB read "
                                             "failed");
        else
            out = cb(ctx, (int64_t)labels[i], b, len);
    }
    free(labels);
    return out;
}

#define SCAN_CHUNK 4096

int idx_store_scan_labels(idx_store_t *s, const uint64_t *labels, size_t n,
                          idx_store_doc_cb cb, void *ctx, char *err,
                          size_t errlen)
{
    int out = 0;
    for (size_t i = 0; i < n && !out;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
        if (rc)
            return store_fail(err, errlen, rc, "scan documents");
        for (size_t end = i + SCAN_CHUNK < n ? i + SCAN_CHUNK : n;
             i < end && !out; i++) {
            uint64_t key = labels[i];
            MDB_val k = u64_val(&key), v;
            rc = mdb_get(txn, s->log, &k, &v);
            if (rc == MDB_NOTFOUND)
                continue;
            if (rc)
                out = store_fail(err, errlen, rc, "scan documents");
            else
                out = cb(ctx, (int64_t)labels[i], v.mv_data, v.mv_size);
        }
        mdb_txn_abort(txn);
    }
    return out;
}

uint64_t idx_store_bytes(idx_store_t *s)
{
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(s->env, &info) || mdb_env_stat(s->env, &st))
        return 0;
    return (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
}

uint64_t idx_store_undo_count(idx_store_t *s)
{
    MDB_txn *txn;
    MDB_stat st;
    uint64_t n = 0;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))
        return 0;
    if (!mdb_stat(txn, s->undo, &st))
        n = st.ms_entries;
    mdb_txn_abort(txn);
    return n;
}

/* Walks `log` from LSN `from` in transaction txn. With end_call, cb is
 * called once more with bytes == NULL after a walk that cb did not stop,
 * still inside the transaction (so earlier pointers are still valid). */
static int store_walk_log(MDB_txn *txn, MDB_dbi dbi, uint64_t from, size_t max,
                          int end_call, idx_store_log_cb cb, void *ctx,
                          char *err, size_t errlen)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc)
        return store_fail(err, errlen, rc, "scan log");
    uint64_t key = from;
    MDB_val k = u64_val(&key), v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    int out = 0;
    for (size_t n = 0; rc == 0 && n < max; n++) {
        if (k.mv_size != 8) {
            out = kb_seterr(err, errlen, KB_ECORRUPT, "log key of %zu bytes",
                            k.mv_size);
            break;
        }
        out = cb(ctx, get_u64(k.mv_data), v.mv_data, v.mv_size);
        if (out)
            break;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (!out && rc && rc != MDB_NOTFOUND)
        out = store_fail(err, errlen, rc, "scan log");
    mdb_cursor_close(cur);
    if (!out && end_call)
        out = cb(ctx, 0, NULL, 0);
    return out;
}

static int store_scan_log(idx_store_t *s, uint64_t from, size_t max,
                          int end_call, idx_store_log_cb cb, void *ctx,
                          char *err, size_t errlen)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return store_fail(err, errlen, rc, "scan log");
    rc = store_walk_log(txn, s->log, from, max, end_call, cb, ctx, err, errlen);
    mdb_txn_abort(txn);
    return rc;
}

int idx_store_scan_log(idx_store_t *s, uint64_t from, size_t max,
                       idx_store_log_cb cb, void *ctx, char *err, size_t errlen)
{
    return store_scan_log(s, from, max, 0, cb, ctx, err, errlen);
}

int idx_store_read_log(idx_store_t *s, uint64_t from, size_t max,
                       idx_store_log_cb cb, void *ctx, char *err, size_t errlen)
{
    return store_scan_log(s, from, max, 1, cb, ctx, err, errlen);
}

int idx_store_txn_log(idx_wtxn_t *t, uint64_t from, idx_store_log_cb cb,
                      void *ctx, char *err, size_t errlen)
{
    return store_walk_log(t->txn, t->s->log, from, SIZE_MAX, 1, cb, ctx, err,
                          errlen);
}

int idx_store_read_staged(idx_store_t *s, uint64_t from, uint64_t upto,
                          idx_store_undo_cb cb, void *ctx, char *err,
                          size_t errlen)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return store_fail(err, errlen, rc, "read staged records");
    rc = mdb_cursor_open(txn, s->log, &cur);
    if (rc) {
        mdb_txn_abort(txn);
        return store_fail(err, errlen, rc, "read staged records");
    }
    uint64_t key = from + 1;
    MDB_val k = u64_val(&key), v;
    int out = 0;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && !out) {
        if (k.mv_size != 8) {
            out = kb_seterr(err, errlen, KB_ECORRUPT, "log key of %zu bytes",
                            k.mv_size);
            break;
        }
        uint64_t lsn = get_u64(k.mv_data);
        if (lsn > upto)
            break;
        uint64_t ukey = lsn;
        MDB_val uk = u64_val(&ukey), uv;
        int64_t old = -1;
        if (!mdb_get(txn, s->undo, &uk, &uv) && uv.mv_size == 8 &&
            get_u64(uv.mv_data) != UINT64_MAX)
            old = (int64_t)get_u64(uv.mv_data);
        out = cb(ctx, lsn, v.mv_data, v.mv_size, old);
        if (!out)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (!out && rc && rc != MDB_NOTFOUND)
        out = store_fail(err, errlen, rc, "read staged records");
    mdb_cursor_close(cur);
    if (!out)
        out = cb(ctx, 0, NULL, 0, -1);
    mdb_txn_abort(txn);
    return out;
}

/* ------------------------------------------------ divergence: the tail */

static int rec_commit_us(const MDB_val *v, uint64_t *us)
{
    Kbsync__LogRecord *r =
        kbsync__log_record__unpack(NULL, v->mv_size, v->mv_data);
    if (!r)
        return MDB_CORRUPTED;
    *us = r->commit_time_us;
    kbsync__log_record__free_unpacked(r, NULL);
    return 0;
}

size_t idx_store_recent(idx_store_t *s, size_t max, uint64_t *lsn,
                        uint64_t *commit_us)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    size_t n = 0;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))
        return 0;
    if (mdb_cursor_open(txn, s->log, &cur)) {
        mdb_txn_abort(txn);
        return 0;
    }
    MDB_val k, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    uint64_t newest = rc == 0 && k.mv_size == 8 ? get_u64(k.mv_data) : 0;
    for (size_t i = 0; rc == 0 && n < max && i < 64; i++) {
        if (k.mv_size != 8 || rec_commit_us(&v, &commit_us[n]))
            break;
        lsn[n++] = get_u64(k.mv_data);
        rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
    }
    for (uint64_t step = 128; n < max && step < newest; step *= 2) {
        uint64_t key = newest - step;
        k = u64_val(&key);
        if (mdb_cursor_get(cur, &k, &v, MDB_SET_KEY) ||
            rec_commit_us(&v, &commit_us[n]))
            break;
        lsn[n++] = key;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return n;
}

/* The id a log record writes or deletes, copied into id (NUL-terminated);
 * *is_upsert tells which. */
static int rec_id(const MDB_val *v, char *id, size_t cap, int *is_upsert)
{
    Kbsync__LogRecord *r =
        kbsync__log_record__unpack(NULL, v->mv_size, v->mv_data);
    if (!r)
        return MDB_CORRUPTED;
    const char *s = r->op == KBSYNC__LOG_OP__LOG_OP_UPSERT && r->doc
                        ? r->doc->id
                        : r->id;
    *is_upsert = r->op == KBSYNC__LOG_OP__LOG_OP_UPSERT;
    snprintf(id, cap, "%s", s ? s : "");
    kbsync__log_record__free_unpacked(r, NULL);
    return 0;
}

typedef struct {
    char id[KB_MAX_ID_LEN + 1];
    int found;
} tail_id_t;

/* Tails longer than this take the slow path (a divergence loses one group
 * commit, a few hundred records at most). */
#define UNDO_FAST_MAX 4096

int idx_store_truncate(idx_store_t *s, uint64_t keep, uint64_t *dropped,
                       char *err, size_t errlen)
{
    *dropped = 0;
    if (keep + 1 < s->log_start)
        return kb_seterr(err, errlen, KB_ECORRUPT,
                         "cannot go back to LSN %llu: the log below %llu is "
                         "compacted",
                         (unsigned long long)keep,
                         (unsigned long long)s->log_start);
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    tail_id_t *ids = NULL;
    size_t nids = 0, cap = 0;
    /* The fast path's undo entries, newest first. */
    char(*undo_id)[KB_MAX_ID_LEN + 1] = malloc(UNDO_FAST_MAX *
                                               sizeof *undo_id);
    uint64_t *undo_old = malloc(UNDO_FAST_MAX * sizeof *undo_old);
    size_t undo_n = 0;
    if (!undo_id || !undo_old) {
        free(undo_id);
        free(undo_old);
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return store_fail(err, errlen, rc, "truncate: begin");
    rc = mdb_cursor_open(txn, s->log, &cur);
    MDB_val k, v;
    /* 1. Drop the tail, newest first, remembering the ids it touched. */
    if (!rc)
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    while (rc == 0 && k.mv_size == 8 && get_u64(k.mv_data) > keep) {
        char id[KB_MAX_ID_LEN + 1];
        int up;
        rc = rec_id(&v, id, sizeof id, &up);
        if (rc)
            break;
        size_t i = 0;
        while (i < nids && strcmp(ids[i].id, id) != 0)
            i++;
        if (i == nids) {
            if (nids == cap) {
                cap = cap ? cap * 2 : 16;
                tail_id_t *m = realloc(ids, cap * sizeof *ids);
                if (!m) {
                    rc = ENOMEM;
                    break;
                }
                ids = m;
            }
            snprintf(ids[nids].id, sizeof ids[nids].id, "%s", id);
            ids[nids++].found = 0;
        }
        /* Its undo entry, if the store kept one (reversed in step 2). */
        uint64_t key = get_u64(k.mv_data);
        MDB_val uk = u64_val(&key), uv;
        if (undo_n == *dropped && !mdb_get(txn, s->undo, &uk, &uv) &&
            uv.mv_size == 8 && undo_n < UNDO_FAST_MAX) {
            snprintf(undo_id[undo_n], sizeof undo_id[undo_n], "%s", id);
            undo_old[undo_n++] = get_u64(uv.mv_data);
        }
        rc = mdb_cursor_del(cur, 0);
        if (!rc) {
            (*dropped)++;
            rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
        }
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    /* 2. Each touched id back to its version at keep. Fast path: the undo
     * entries of the tail, oldest last, name it. Otherwise (a store written
     * before undo entries were kept) walk the log back from keep. */
    if (!rc && undo_n == *dropped) {
        for (size_t i = 0; i < undo_n && !rc; i++) { /* oldest tail write last */
            MDB_val ik = {strlen(undo_id[i]), undo_id[i]};
            if (undo_old[i] == UINT64_MAX) {
                rc = mdb_del(txn, s->ids, &ik, NULL);
                if (rc == MDB_NOTFOUND)
                    rc = 0;
            } else {
                MDB_val iv = u64_val(&undo_old[i]);
                rc = mdb_put(txn, s->ids, &ik, &iv, 0);
            }
        }
        nids = 0; /* nothing left to look for */
    }
    if (!rc) { /* the tail's undo entries go with it */
        MDB_cursor *uc;
        rc = mdb_cursor_open(txn, s->undo, &uc);
        while (!rc && !(rc = mdb_cursor_get(uc, &k, &v, MDB_LAST)) &&
               k.mv_size == 8 && get_u64(k.mv_data) > keep)
            rc = mdb_cursor_del(uc, 0);
        if (rc == MDB_NOTFOUND || (!rc && k.mv_size == 8))
            rc = 0;
        mdb_cursor_close(uc);
    }
    size_t left = nids;
    for (size_t i = 0; !rc && i < nids; i++) {
        MDB_val ik = {strlen(ids[i].id), ids[i].id};
        rc = mdb_del(txn, s->ids, &ik, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    if (!rc) { /* what remains is what the leader has: no staged mark */
        MDB_val sk = {6, "staged"};
        rc = mdb_del(txn, s->meta, &sk, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    uint64_t new_id = new_store_id();
    if (!rc && *dropped) { /* another history from here on */
        MDB_val ik = {8, "store_id"}, iv = u64_val(&new_id);
        rc = mdb_put(txn, s->meta, &ik, &iv, 0);
    }
    if (!rc && left)
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    while (rc == 0 && left) {
        char id[KB_MAX_ID_LEN + 1];
        int up;
        rc = rec_id(&v, id, sizeof id, &up);
        if (rc)
            break;
        for (size_t i = 0; i < nids; i++) {
            if (ids[i].found || strcmp(ids[i].id, id) != 0)
                continue;
            ids[i].found = 1;
            left--;
            if (up) {
                uint64_t label = get_u64(k.mv_data);
                MDB_val ik = {strlen(id), id}, iv = u64_val(&label);
                rc = mdb_put(txn, s->ids, &ik, &iv, 0);
            }
            break;
        }
        if (!rc)
            rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    free(ids);
    free(undo_id);
    free(undo_old);
    if (cur)
        mdb_cursor_close(cur);
    uint64_t dg = 0, dg_docs;
    if (!rc && !(rc = digest_scan(s, txn, &dg, &dg_docs, NULL, 0)))
        rc = digest_put(s, txn, dg);
    if (!rc)
        rc = txn_commit(s, txn);
    else
        mdb_txn_abort(txn);
    if (rc)
        return store_fail(err, errlen, rc, "truncate");
    s->digest = dg;
    MDB_txn *rt;
    MDB_stat st;
    if (!mdb_txn_begin(s->env, NULL, MDB_RDONLY, &rt)) {
        store_load_state(s, rt);
        if (!mdb_stat(rt, s->ids, &st))
            s->ndocs = st.ms_entries;
        mdb_txn_abort(rt);
        s->staged = 0;
        if (*dropped)
            s->store_id = new_id;
    }
    return 0;
}

/* ------------------------------------------------------------ compaction */

/* LSNs of log records a compaction or sweep step drops, collected first
 * (a cursor must not delete what it has not visited yet). */
typedef struct drop_list {
    uint64_t *lsn;
    size_t n, cap;
} drop_list_t;

static int drop_push(drop_list_t *d, uint64_t lsn)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 1024;
        uint64_t *m = realloc(d->lsn, cap * sizeof *m);
        if (!m)
            return ENOMEM;
        d->lsn = m;
        d->cap = cap;
    }
    d->lsn[d->n++] = lsn;
    return 0;
}

static int compact_drop(MDB_txn *txn, MDB_dbi log, uint64_t lsn,
                        uint64_t *removed, uint64_t *bytes);

/* Drops the listed records and ends the step: commits when rc is 0, else
 * aborts; returns 0 or the error, named after what. Frees the list. */
static int drop_finish(idx_store_t *s, MDB_txn *txn, int rc, drop_list_t *d,
                       uint64_t *removed, uint64_t *bytes, const char *what,
                       char *err, size_t errlen)
{
    for (size_t i = 0; i < d->n && !rc; i++)
        rc = compact_drop(txn, s->log, d->lsn[i], removed, bytes);
    free(d->lsn);
    d->lsn = NULL;
    if (!rc)
        rc = txn_commit(s, txn);
    else
        mdb_txn_abort(txn);
    if (rc)
        return rc == ENOMEM ? kb_seterr(err, errlen, KB_ENOMEM,
                                        "out of memory")
                            : store_fail(err, errlen, rc, what);
    return 0;
}

/* The longest a delete's log record can be: LogRecord {lsn, commit_time_us,
 * op, id} is at most 3 varint fields (a tag byte and up to 10 bytes each)
 * and the id (a tag byte, its length in at most 2 bytes, at most
 * KB_MAX_ID_LEN bytes). An upsert's record may be shorter, never the
 * other way round. */
#define STORE_DELETE_RECORD_MAX (3 * 11 + 3 + KB_MAX_ID_LEN)

/* Drops log record lsn when present; adds its size to *bytes. */
static int compact_drop(MDB_txn *txn, MDB_dbi log, uint64_t lsn,
                        uint64_t *removed, uint64_t *bytes)
{
    uint64_t key = lsn;
    MDB_val k = u64_val(&key), v;
    int rc = mdb_get(txn, log, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    size_t sz = v.mv_size;
    rc = mdb_del(txn, log, &k, NULL);
    if (!rc) {
        (*removed)++;
        *bytes += sz + 8;
    }
    return rc;
}

int idx_store_compact(idx_store_t *s, uint64_t cut, size_t max_records,
                      uint64_t *removed, uint64_t *bytes, char *err,
                      size_t errlen)
{
    *removed = *bytes = 0;
    /* The newest record always stays: it is the store's applied state
     * (LSN, commit time) at the next open. */
    if (cut > s->applied_lsn)
        cut = s->applied_lsn;
    if (cut <= s->log_start)
        return 0;
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return store_fail(err, errlen, rc, "compact: begin");
    rc = mdb_cursor_open(txn, s->log, &cur);
    uint64_t from = s->log_start, upto = cut; /* [from, upto) this txn */
    /* Walk the operations in [from, cut) in LSN order. Records already gone
     * below from are live documents; each is visited at most once. */
    uint64_t key = from;
    MDB_val k = u64_val(&key), v;
    size_t n = 0;
    if (!rc)
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    /* First pass: decide, collecting the LSNs to drop. */
    drop_list_t drop = {0};
    while (rc == 0) {
        if (k.mv_size != 8) {
            rc = MDB_CORRUPTED;
            break;
        }
        uint64_t lsn = get_u64(k.mv_data);
        if (lsn >= cut)
            break;
        if (n == max_records) {
            upto = lsn;
            break;
        }
        n++;
        /* Only the op (field 3, after two varints) is needed here; the
         * whole record is decoded only for writes older than undo_from. A
         * record longer than any delete's is an upsert and is not read:
         * such records sit on overflow pages of their own, and reading
         * each one's first bytes cost a page touch per record (8% of a
         * replica's CPU in an ingest). */
        Kbsync__LogRecord *r = NULL;
        int is_up = v.mv_size > STORE_DELETE_RECORD_MAX ||
                    kb_wire_peek_u64(v.mv_data, v.mv_size, 3) ==
                        KBSYNC__LOG_OP__LOG_OP_UPSERT;
        if (lsn < s->undo_from) {
            r = kbsync__log_record__unpack(NULL, v.mv_size, v.mv_data);
            if (!r) {
                rc = MDB_CORRUPTED;
                break;
            }
            is_up = r->op == KBSYNC__LOG_OP__LOG_OP_UPSERT && r->doc;
        }
        const char *id = r ? (is_up ? r->doc->id : r->id) : NULL;
        uint64_t old = UINT64_MAX; /* the label this write replaced */
        int drop_self = !is_up;    /* deletes never stay below log start */
        if (lsn >= s->undo_from) {
            uint64_t ukey = lsn;
            MDB_val uk = u64_val(&ukey), uv;
            int g = mdb_get(txn, s->undo, &uk, &uv);
            if (g == 0 && uv.mv_size == 8)
                old = get_u64(uv.mv_data);
            else if (g != MDB_NOTFOUND)
                rc = g;
        } else if (is_up && id) {
            /* Written before undo entries were kept: an upsert that is not
             * the live version of its id goes when a write below cut (a
             * final one) replaced it. A delete's LSN is not known here, so
             * a document deleted since stays (harmless: nothing points at
             * it; it is dropped with the next compaction that sees it). */
            MDB_val ik = {strlen(id), (void *)id}, iv;
            int g = mdb_get(txn, s->ids, &ik, &iv);
            if (g == 0 && iv.mv_size == 8) {
                uint64_t live = get_u64(iv.mv_data);
                drop_self = live != lsn && live < cut;
            } else if (g != MDB_NOTFOUND) {
                rc = g;
            }
        }
        if (r)
            kbsync__log_record__free_unpacked(r, NULL);
        if (rc)
            break;
        if (old != UINT64_MAX)
            rc = drop_push(&drop, old);
        if (!rc && drop_self)
            rc = drop_push(&drop, lsn);
        if (rc)
            break;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    if (cur)
        mdb_cursor_close(cur);
    if (!rc) { /* undo entries below the new log start are never needed */
        MDB_cursor *uc;
        rc = mdb_cursor_open(txn, s->undo, &uc);
        while (!rc && !(rc = mdb_cursor_get(uc, &k, &v, MDB_FIRST)) &&
               k.mv_size == 8 && get_u64(k.mv_data) < upto)
            rc = mdb_cursor_del(uc, 0);
        if (rc == MDB_NOTFOUND || (!rc && k.mv_size == 8))
            rc = 0;
        mdb_cursor_close(uc);
    }
    if (!rc) {
        uint64_t ls = upto;
        MDB_val mk = {9, "log_start"}, mv = u64_val(&ls);
        rc = mdb_put(txn, s->meta, &mk, &mv, 0);
    }
    rc = drop_finish(s, txn, rc, &drop, removed, bytes, "compact", err,
                     errlen);
    if (!rc)
        s->log_start = upto;
    return rc;
}

int idx_store_sweep(idx_store_t *s, uint64_t upto, size_t max_records,
                    uint64_t *removed, uint64_t *bytes, char *err,
                    size_t errlen)
{
    *removed = *bytes = 0;
    if (upto > s->applied_lsn)
        upto = s->applied_lsn;
    uint64_t from = s->swept > s->log_start ? s->swept : s->log_start;
    if (from >= upto)
        return 0;
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return store_fail(err, errlen, rc, "sweep: begin");
    rc = mdb_cursor_open(txn, s->undo, &cur);
    uint64_t key = from, next = from;
    MDB_val k = u64_val(&key), v;
    drop_list_t drop = {0};
    size_t n = 0;
    if (!rc)
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && n < max_records) {
        if (k.mv_size != 8 || v.mv_size != 8) {
            rc = MDB_CORRUPTED;
            break;
        }
        uint64_t w = get_u64(k.mv_data), old = get_u64(v.mv_data);
        if (w >= upto)
            break;
        n++;
        next = w + 1;
        if (old != UINT64_MAX && old < s->log_start &&
            (rc = drop_push(&drop, old)))
            break;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND) {
        rc = 0;
        next = upto; /* no undo entries left below upto */
    } else if (!rc && n < max_records) {
        next = upto;
    }
    if (cur)
        mdb_cursor_close(cur);
    rc = drop_finish(s, txn, rc, &drop, removed, bytes, "sweep", err, errlen);
    if (!rc)
        s->swept = next;
    return rc;
}

/* ------------------------------------------------------------ digests */

uint64_t idx_store_digest(idx_store_t *s)
{
    return s->digest;
}

int idx_store_digest_at(idx_store_t *s, uint64_t lsn, uint64_t *digest)
{
    size_t i = lsn % IDX_STORE_DIGEST_RING;
    if (lsn == 0 || lsn > s->applied_lsn || s->ring_lsn[i] != lsn)
        return -ENOENT;
    *digest = s->ring_dg[i];
    return 0;
}

uint64_t idx_store_head(idx_store_t *s)
{
    MDB_txn *txn;
    uint64_t lsn = 0;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))
        return 0;
    MDB_cursor *cur;
    MDB_val k, v;
    if (!mdb_cursor_open(txn, s->log, &cur)) {
        if (!mdb_cursor_get(cur, &k, &v, MDB_LAST) && k.mv_size == 8)
            lsn = get_u64(k.mv_data);
        mdb_cursor_close(cur);
    }
    mdb_txn_abort(txn);
    return lsn;
}

int idx_store_digest_check(idx_store_t *s, idx_store_digest_check_t *c,
                           const _Atomic int *stop, uint64_t hold_us,
                           char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return store_fail(err, errlen, rc, "digest check");
    MDB_cursor *cur;
    MDB_val k, v;
    if (!(rc = mdb_cursor_open(txn, s->log, &cur))) {
        if (!mdb_cursor_get(cur, &k, &v, MDB_LAST) && k.mv_size == 8)
            c->lsn = get_u64(k.mv_data);
        mdb_cursor_close(cur);
    }
    MDB_val dk = {6, "digest"}, dv;
    if (!rc && !mdb_get(txn, s->meta, &dk, &dv) && dv.mv_size == 8)
        c->stored = get_u64(dv.mv_data);
    if (!rc)
        rc = digest_scan(s, txn, &c->scanned, &c->docs, stop, hold_us);
    mdb_txn_abort(txn);
    if (rc == KB_EUNAVAIL)
        return kb_seterr(err, errlen, rc, "digest check stopped");
    if (rc == -EAGAIN)
        return kb_seterr(err, errlen, rc,
                         "digest check gave way to writes: its read "
                         "transaction was open over %.1f ms (%llu documents "
                         "read), and LMDB cannot reuse the pages writes free "
                         "meanwhile",
                         (double)hold_us / 1000.0,
                         (unsigned long long)c->docs);
    if (rc)
        return store_fail(err, errlen, rc, "digest check");
    return 0;
}
