/* test_idx_store: the LMDB document store of indexer/idx_store.h, on a real
 * LMDB environment in a fresh /tmp directory per test. In: documents and
 * deletes stamped with LSNs. Out: pass/fail on meta and applied state across
 * reopen (the state is the newest log record), old labels, missing deletes,
 * abort, log order, LSN ordering (KB_EGAP) and document lookup by label. */
#include "kb_test.h"

#include "kb_lmdb_child.h"

#include "idx_store.h"
#include "kb_err.h"
#include "kb_util.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#define DIM 8

typedef struct fx {
    char tmp[256];
    char dir[300];
    idx_store_t *s;
} fx_t;

static idx_store_t *store_open(const char *dir, uint64_t map_size)
{
    idx_store_t *s = NULL;
    char err[512] = "";
    KBT_OK(idx_store_open(dir, map_size, 1, &s, err, sizeof err), err);
    assert_non_null(s);
    return s;
}

/* cmocka 1.1 skips the teardown of a failed test: the fixture it left
 * behind is freed by the next setup, or at the end of main. */
static fx_t *live;

static void fx_free(fx_t *f)
{
    idx_store_close(&f->s);
    kbt_rmrf(f->tmp);
    free(f);
}

static int setup(void **state)
{
    if (live)
        fx_free(live);
    fx_t *f = live = calloc(1, sizeof *f);
    kbt_tmpdir(f->tmp, sizeof f->tmp, "store");
    /* A directory that does not exist yet: open creates it. */
    kbt_path(f->dir, sizeof f->dir, f->tmp, "kb");
    f->s = store_open(f->dir, 0);
    assert_true(kbt_exists(f->dir));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_free(*state);
    live = NULL;
    return 0;
}

/* A doc whose embedding is derived from seed; strings borrowed. */
static void make_doc(Kbsync__Doc *d, float *emb, const char *id,
                     const char *text, uint64_t seed)
{
    kbsync__doc__init(d);
    kbt_rand(emb, DIM, seed);
    d->id = (char *)id;
    d->text = (char *)text;
    d->metadata_json = "";
    d->n_embedding = DIM;
    d->embedding = emb;
}

/* Upserts id at lsn with commit time 1000 + lsn; returns the old label. */
static int64_t upsert(idx_wtxn_t *t, uint64_t lsn, const char *id,
                      const char *text)
{
    Kbsync__Doc d;
    float emb[DIM];
    make_doc(&d, emb, id, text, lsn);
    int64_t old = 12345;
    char err[512] = "";
    KBT_OK(idx_store_upsert(t, lsn, 1000 + lsn, &d, &old, err, sizeof err),
           err);
    return old;
}

/* Deletes id at lsn (commit time 1000 + lsn); returns the old label. */
static int64_t del(idx_wtxn_t *t, uint64_t lsn, const char *id, int log_missing)
{
    int64_t old = 12345;
    char err[512] = "";
    KBT_OK(idx_store_delete(t, lsn, 1000 + lsn, id, strlen(id), log_missing,
                            &old, err, sizeof err),
           err);
    return old;
}

static idx_wtxn_t *begin(idx_store_t *s)
{
    idx_wtxn_t *t = NULL;
    char err[512] = "";
    KBT_OK(idx_store_begin(s, &t, err, sizeof err), err);
    assert_non_null(t);
    return t;
}

static void commit(idx_wtxn_t **t)
{
    char err[512] = "";
    KBT_OK(idx_store_commit(t, err, sizeof err), err);
    assert_null(*t);
}

static void expect_state(idx_store_t *s, uint64_t lsn, uint64_t us)
{
    uint64_t l = 12345, u = 12345;
    idx_store_state(s, &l, &u);
    KBT_U64(l, lsn);
    KBT_U64(u, us);
}

/* Decodes the record found under label (a LogRecord holding the Doc), or
 * returns NULL when there is none. */
static Kbsync__LogRecord *rec_at(idx_store_t *s, int64_t label)
{
    idx_rtxn_t *r = NULL;
    char err[512] = "";
    KBT_OK(idx_store_rbegin(s, &r, err, sizeof err), err);
    const void *b = NULL;
    size_t len = 0;
    int rc = idx_store_doc_by_label(r, label, &b, &len);
    Kbsync__LogRecord *rec = NULL;
    if (rc == 0) {
        rec = kbsync__log_record__unpack(NULL, len, b);
        assert_non_null(rec);
    } else {
        assert_int_equal(rc, -ENOENT);
    }
    idx_store_rend(&r);
    assert_null(r);
    return rec;
}

static int64_t label_of(idx_store_t *s, const char *id)
{
    idx_wtxn_t *t = begin(s);
    int64_t l = 12345;
    assert_int_equal(idx_store_wlabel(t, id, strlen(id), &l), 0);
    idx_store_abort(&t);
    assert_null(t);
    return l;
}

/* Log scan collector. */
typedef struct logs {
    size_t n;
    uint64_t lsn[64];
    Kbsync__LogRecord *rec[64];
    size_t stop_at; /* return 42 when n reaches this (0 = never) */
} logs_t;

static int collect(void *ctx, uint64_t lsn, const void *bytes, size_t len)
{
    logs_t *l = ctx;
    assert_true(l->n < 64);
    l->lsn[l->n] = lsn;
    l->rec[l->n] = kbsync__log_record__unpack(NULL, len, bytes);
    assert_non_null(l->rec[l->n]);
    l->n++;
    return l->stop_at && l->n == l->stop_at ? 42 : 0;
}

static void logs_free(logs_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        kbsync__log_record__free_unpacked(l->rec[i], NULL);
    l->n = 0;
}

static int scan(idx_store_t *s, uint64_t from, size_t max, logs_t *l)
{
    char err[512] = "";
    return idx_store_scan_log(s, from, max, collect, l, err, sizeof err);
}

/* ---------------------------------------------------------------- tests */

static void test_idx_store_reopen_keeps_meta_and_state(void **state)
{
    fx_t *f = *state;
    char err[512] = "";
    Kbsync__KbMeta *m = (void *)1;
    KBT_OK(idx_store_get_meta(f->s, &m, err, sizeof err), err);
    assert_null(m); /* new store */
    expect_state(f->s, 0, 0);
    KBT_U64(idx_store_count(f->s), 0);

    Kbsync__KbMeta put = KBSYNC__KB_META__INIT;
    put.format_version = 1;
    put.dim = DIM;
    put.metric = "l2";
    put.index = "IDMap2,Flat";
    put.node_id = "node-7";
    put.embedder = "kb-lexical-v1";
    KBT_OK(idx_store_put_meta(f->s, &put, err, sizeof err), err);

    idx_wtxn_t *t = begin(f->s);
    upsert(t, 1, "a", "alpha");
    upsert(t, 2, "b", "beta");
    commit(&t);
    expect_state(f->s, 2, 1002); /* the newest record's LSN and time */
    t = begin(f->s);
    del(t, 3, "a", 0);
    commit(&t);
    expect_state(f->s, 3, 1003);

    idx_store_close(&f->s);
    assert_null(f->s);
    idx_store_close(&f->s); /* NULL is fine */
    f->s = store_open(f->dir, 0);

    KBT_OK(idx_store_get_meta(f->s, &m, err, sizeof err), err);
    assert_non_null(m);
    assert_int_equal(m->format_version, 1);
    assert_int_equal(m->dim, DIM);
    assert_string_equal(m->metric, "l2");
    assert_string_equal(m->index, "IDMap2,Flat");
    assert_string_equal(m->node_id, "node-7");
    assert_string_equal(m->embedder, "kb-lexical-v1");
    kbsync__kb_meta__free_unpacked(m, NULL);
    expect_state(f->s, 3, 1003); /* derived again from the log */
    KBT_U64(idx_store_count(f->s), 1);
    assert_int_equal(label_of(f->s, "b"), 2);
    assert_int_equal(label_of(f->s, "a"), -1);
    Kbsync__LogRecord *r = rec_at(f->s, 2);
    assert_non_null(r);
    assert_non_null(r->doc);
    assert_string_equal(r->doc->id, "b");
    assert_string_equal(r->doc->text, "beta");
    kbsync__log_record__free_unpacked(r, NULL);
}

static void test_idx_store_old_labels(void **state)
{
    fx_t *f = *state;
    idx_wtxn_t *t = begin(f->s);
    assert_int_equal(upsert(t, 1, "a", "a1"), -1);
    assert_int_equal(upsert(t, 2, "b", "b1"), -1);
    assert_int_equal(upsert(t, 3, "a", "a2"), 1); /* replaces label 1 */
    assert_int_equal(upsert(t, 4, "a", "a3"), 3); /* and again */
    assert_int_equal(del(t, 5, "b", 0), 2);
    assert_int_equal(del(t, 6, "b", 0), -1); /* already gone */
    assert_int_equal(del(t, 6, "never", 0), -1);
    int64_t l = 0;
    assert_int_equal(idx_store_wlabel(t, "a", 1, &l), 0);
    assert_int_equal(l, 4);
    assert_int_equal(idx_store_wlabel(t, "b", 1, &l), 0);
    assert_int_equal(l, -1);
    commit(&t);
    expect_state(f->s, 5, 1005); /* the missing deletes took no LSN */

    KBT_U64(idx_store_count(f->s), 1);
    assert_int_equal(label_of(f->s, "a"), 4);
    assert_int_equal(label_of(f->s, "b"), -1);
    Kbsync__LogRecord *r = rec_at(f->s, 4);
    assert_non_null(r);
    assert_int_equal(r->op, KBSYNC__LOG_OP__LOG_OP_UPSERT);
    assert_string_equal(r->doc->id, "a");
    assert_string_equal(r->doc->text, "a3");
    assert_int_equal(r->doc->n_embedding, DIM);
    float emb[DIM];
    kbt_rand(emb, DIM, 4);
    assert_memory_equal(r->doc->embedding, emb, sizeof emb);
    kbsync__log_record__free_unpacked(r, NULL);

    /* The missing deletes wrote no log record: LSNs 1..5 only. */
    logs_t lg = {0};
    assert_int_equal(scan(f->s, 0, SIZE_MAX, &lg), 0);
    assert_int_equal(lg.n, 5);
    KBT_U64(lg.lsn[4], 5);
    logs_free(&lg);
}

static void test_idx_store_delete_log_missing(void **state)
{
    fx_t *f = *state;
    idx_wtxn_t *t = begin(f->s);
    upsert(t, 1, "a", "a1");
    commit(&t);
    /* A replica keeps every LSN of the leader's log: a delete of an id it
     * does not hold is still logged, and still advances the state. */
    t = begin(f->s);
    assert_int_equal(del(t, 2, "ghost", 1), -1);
    commit(&t);
    expect_state(f->s, 2, 1002);
    KBT_U64(idx_store_count(f->s), 1);
    logs_t lg = {0};
    assert_int_equal(scan(f->s, 2, SIZE_MAX, &lg), 0);
    assert_int_equal(lg.n, 1);
    assert_int_equal(lg.rec[0]->op, KBSYNC__LOG_OP__LOG_OP_DELETE);
    assert_string_equal(lg.rec[0]->id, "ghost");
    logs_free(&lg);
    /* Without log_missing (the leader's path) it writes nothing at all,
     * and a transaction of nothing but that leaves the state alone. */
    t = begin(f->s);
    assert_int_equal(del(t, 3, "ghost", 0), -1);
    commit(&t);
    expect_state(f->s, 2, 1002);
    assert_int_equal(scan(f->s, 3, SIZE_MAX, &lg), 0);
    assert_int_equal(lg.n, 0);
    /* log_missing with a present id is an ordinary delete. */
    t = begin(f->s);
    assert_int_equal(del(t, 3, "a", 1), 1);
    commit(&t);
    expect_state(f->s, 3, 1003);
    KBT_U64(idx_store_count(f->s), 0);
}

static void test_idx_store_abort_changes_nothing(void **state)
{
    fx_t *f = *state;
    idx_wtxn_t *t = begin(f->s);
    upsert(t, 1, "a", "a1");
    upsert(t, 2, "b", "b1");
    commit(&t);

    t = begin(f->s);
    assert_int_equal(upsert(t, 3, "c", "c1"), -1);
    assert_int_equal(upsert(t, 4, "a", "a2"), 1);
    assert_int_equal(del(t, 5, "b", 0), 2);
    assert_int_equal(del(t, 6, "ghost", 1), -1);
    idx_store_abort(&t);
    assert_null(t);
    idx_store_abort(&t); /* NULL is fine */

    expect_state(f->s, 2, 1002);
    KBT_U64(idx_store_count(f->s), 2);
    assert_int_equal(label_of(f->s, "a"), 1);
    assert_int_equal(label_of(f->s, "b"), 2);
    assert_int_equal(label_of(f->s, "c"), -1);
    Kbsync__LogRecord *r = rec_at(f->s, 1);
    assert_non_null(r);
    assert_string_equal(r->doc->text, "a1");
    kbsync__log_record__free_unpacked(r, NULL);
    assert_null(rec_at(f->s, 3));
    assert_null(rec_at(f->s, 4));
    logs_t lg = {0};
    assert_int_equal(scan(f->s, 0, SIZE_MAX, &lg), 0);
    assert_int_equal(lg.n, 2);
    logs_free(&lg);

    /* ...and the same LSNs can be used again after the abort. */
    t = begin(f->s);
    assert_int_equal(upsert(t, 3, "c", "c2"), -1);
    commit(&t);
    expect_state(f->s, 3, 1003);
}

static void test_idx_store_log_scan_in_order(void **state)
{
    fx_t *f = *state;
    /* Two transactions: LSNs 1..3 then 4..6. */
    idx_wtxn_t *t = begin(f->s);
    upsert(t, 1, "a", "a1");
    upsert(t, 2, "b", "b1");
    upsert(t, 3, "c", "c1");
    commit(&t);
    t = begin(f->s);
    del(t, 4, "b", 0);
    upsert(t, 5, "a", "a2");
    del(t, 6, "c", 0);
    commit(&t);

    logs_t lg = {0};
    assert_int_equal(scan(f->s, 3, SIZE_MAX, &lg), 0);
    assert_int_equal(lg.n, 4);
    for (size_t i = 0; i < lg.n; i++) {
        KBT_U64(lg.lsn[i], 3 + i);
        KBT_U64(lg.rec[i]->lsn, 3 + i);
        KBT_U64(lg.rec[i]->commit_time_us, 1003 + i);
    }
    assert_int_equal(lg.rec[0]->op, KBSYNC__LOG_OP__LOG_OP_UPSERT);
    assert_string_equal(lg.rec[0]->doc->id, "c");
    assert_int_equal(lg.rec[0]->doc->n_embedding, DIM);
    assert_int_equal(lg.rec[1]->op, KBSYNC__LOG_OP__LOG_OP_DELETE);
    assert_string_equal(lg.rec[1]->id, "b");
    assert_null(lg.rec[1]->doc);
    assert_int_equal(lg.rec[2]->op, KBSYNC__LOG_OP__LOG_OP_UPSERT);
    assert_string_equal(lg.rec[2]->doc->id, "a");
    assert_string_equal(lg.rec[2]->doc->text, "a2");
    assert_int_equal(lg.rec[3]->op, KBSYNC__LOG_OP__LOG_OP_DELETE);
    assert_string_equal(lg.rec[3]->id, "c");
    logs_free(&lg);

    /* from 0 = from the first; max bounds the count. */
    assert_int_equal(scan(f->s, 0, SIZE_MAX, &lg), 0);
    assert_int_equal(lg.n, 6);
    KBT_U64(lg.lsn[0], 1);
    logs_free(&lg);
    assert_int_equal(scan(f->s, 2, 2, &lg), 0);
    assert_int_equal(lg.n, 2);
    KBT_U64(lg.lsn[0], 2);
    KBT_U64(lg.lsn[1], 3);
    logs_free(&lg);
    assert_int_equal(scan(f->s, 5, 0, &lg), 0); /* max 0: nothing */
    assert_int_equal(lg.n, 0);
    /* Past the end: nothing. */
    assert_int_equal(scan(f->s, 7, SIZE_MAX, &lg), 0);
    assert_int_equal(lg.n, 0);
    /* A non-zero callback return stops the scan and is returned. */
    lg.stop_at = 2;
    assert_int_equal(scan(f->s, 1, SIZE_MAX, &lg), 42);
    assert_int_equal(lg.n, 2);
    logs_free(&lg);
}

static void test_idx_store_lsn_order_violation_is_egap(void **state)
{
    fx_t *f = *state;
    idx_wtxn_t *t = begin(f->s);
    upsert(t, 5, "a", "a1");
    upsert(t, 6, "b", "b1");
    commit(&t);

    char err[512];
    Kbsync__Doc d;
    float emb[DIM];
    make_doc(&d, emb, "x", "x", 1);
    int64_t old;

    /* An upsert below the newest LSN. */
    t = begin(f->s);
    err[0] = 0;
    KBT_RC(idx_store_upsert(t, 3, 1, &d, &old, err, sizeof err), KB_EGAP, err);
    KBT_CONTAINS(err, "LSN 3");
    KBT_CONTAINS(err, "6");
    idx_store_abort(&t);

    /* An upsert AT the newest LSN (a duplicate). */
    t = begin(f->s);
    err[0] = 0;
    KBT_RC(idx_store_upsert(t, 6, 1, &d, &old, err, sizeof err), KB_EGAP, err);
    KBT_CONTAINS(err, "LSN 6");
    idx_store_abort(&t);

    /* A replace whose new LSN repeats the replaced (newest) label. */
    make_doc(&d, emb, "b", "b2", 2);
    t = begin(f->s);
    err[0] = 0;
    KBT_RC(idx_store_upsert(t, 6, 1, &d, &old, err, sizeof err), KB_EGAP, err);
    idx_store_abort(&t);

    /* Deletes below the newest LSN, of a present and of a missing id. */
    t = begin(f->s);
    err[0] = 0;
    KBT_RC(idx_store_delete(t, 4, 1, "a", 1, 0, &old, err, sizeof err), KB_EGAP,
           err);
    KBT_CONTAINS(err, "LSN 4");
    idx_store_abort(&t);
    t = begin(f->s);
    err[0] = 0;
    KBT_RC(idx_store_delete(t, 2, 1, "zz", 2, 1, &old, err, sizeof err),
           KB_EGAP, err);
    idx_store_abort(&t);

    /* Reordering inside one transaction. */
    t = begin(f->s);
    upsert(t, 8, "c", "c1");
    make_doc(&d, emb, "y", "y", 3);
    err[0] = 0;
    KBT_RC(idx_store_upsert(t, 7, 1, &d, &old, err, sizeof err), KB_EGAP, err);
    idx_store_abort(&t);

    /* None of it stuck. */
    expect_state(f->s, 6, 1006);
    KBT_U64(idx_store_count(f->s), 2);
    assert_int_equal(label_of(f->s, "b"), 6);
    assert_int_equal(label_of(f->s, "a"), 5);
    assert_int_equal(label_of(f->s, "c"), -1);
    Kbsync__LogRecord *got = rec_at(f->s, 6);
    assert_non_null(got);
    assert_string_equal(got->doc->text, "b1");
    kbsync__log_record__free_unpacked(got, NULL);
    logs_t lg = {0};
    assert_int_equal(scan(f->s, 0, SIZE_MAX, &lg), 0);
    assert_int_equal(lg.n, 2);
    logs_free(&lg);
}

static void test_idx_store_doc_by_label(void **state)
{
    fx_t *f = *state;
    idx_wtxn_t *t = begin(f->s);
    for (uint64_t i = 1; i <= 10; i++) {
        char id[32], text[32];
        snprintf(id, sizeof id, "doc-%llu", (unsigned long long)i);
        snprintf(text, sizeof text, "text of doc %llu", (unsigned long long)i);
        upsert(t, i * 10, id, text); /* sparse labels 10, 20, ... */
    }
    commit(&t);

    for (uint64_t i = 1; i <= 10; i++) {
        Kbsync__LogRecord *r = rec_at(f->s, (int64_t)(i * 10));
        assert_non_null(r);
        KBT_U64(r->lsn, i * 10);
        assert_non_null(r->doc);
        char want[32];
        snprintf(want, sizeof want, "doc-%llu", (unsigned long long)i);
        assert_string_equal(r->doc->id, want);
        snprintf(want, sizeof want, "text of doc %llu", (unsigned long long)i);
        assert_string_equal(r->doc->text, want);
        kbsync__log_record__free_unpacked(r, NULL);
    }
    assert_null(rec_at(f->s, 0));
    assert_null(rec_at(f->s, 15));
    assert_null(rec_at(f->s, 110));
    assert_null(rec_at(f->s, -1));
}

typedef struct docs_seen {
    size_t n;
    int64_t label[16];
    char id[16][8];
} docs_seen_t;

static int see_doc(void *ctx, int64_t label, const void *bytes, size_t len)
{
    docs_seen_t *s = ctx;
    Kbsync__LogRecord *r = kbsync__log_record__unpack(NULL, len, bytes);
    assert_non_null(r);
    assert_non_null(r->doc);
    KBT_U64(r->lsn, (uint64_t)label);
    snprintf(s->id[s->n], sizeof s->id[0], "%s", r->doc->id);
    kbsync__log_record__free_unpacked(r, NULL);
    s->label[s->n++] = label;
    return s->n == 16 ? 1 : 0;
}

static void test_idx_store_scan_docs_live_in_label_order(void **state)
{
    fx_t *f = *state;
    idx_wtxn_t *t = begin(f->s);
    upsert(t, 1, "a", "a");
    upsert(t, 2, "b", "b");
    upsert(t, 300, "d", "d");
    commit(&t);
    t = begin(f->s);
    upsert(t, 301, "c", "c");
    upsert(t, 302, "a", "a2"); /* label 1 is no longer live */
    del(t, 303, "b", 0);       /* label 2 neither */
    del(t, 304, "ghost", 1);
    commit(&t);
    docs_seen_t s = {0};
    char err[512] = "";
    KBT_OK(idx_store_scan_docs(f->s, see_doc, &s, err, sizeof err), err);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.label[0], 300);
    assert_string_equal(s.id[0], "d");
    assert_int_equal(s.label[1], 301);
    assert_string_equal(s.id[1], "c");
    assert_int_equal(s.label[2], 302);
    assert_string_equal(s.id[2], "a");
    /* An empty store scans to nothing. */
    idx_store_close(&f->s);
    char dir[300];
    kbt_path(dir, sizeof dir, f->tmp, "empty");
    f->s = store_open(dir, 0);
    memset(&s, 0, sizeof s);
    KBT_OK(idx_store_scan_docs(f->s, see_doc, &s, err, sizeof err), err);
    assert_int_equal(s.n, 0);
}

static void test_idx_store_map_full_is_estore(void **state)
{
    fx_t *f = *state;
    idx_store_close(&f->s);
    char dir[300];
    kbt_path(dir, sizeof dir, f->tmp, "small");
    f->s = store_open(dir, 1u << 20); /* 1 MiB map */
    char *big = kbt_repeat('z', 1100u << 10);
    Kbsync__Doc d;
    float emb[DIM];
    make_doc(&d, emb, "big", big, 1);
    char err[512] = "";
    int64_t old;
    /* The record (~1.1 MiB) cannot fit. */
    idx_wtxn_t *t = begin(f->s);
    KBT_RC(idx_store_upsert(t, 1, 1, &d, &old, err, sizeof err), KB_ESTORE,
           err);
    KBT_CONTAINS(err, "MDB_MAP_FULL");
    idx_store_abort(&t);
    free(big);
    KBT_U64(idx_store_count(f->s), 0);
    expect_state(f->s, 0, 0);
    /* Small writes still work. */
    t = begin(f->s);
    upsert(t, 1, "small", "s");
    commit(&t);
    KBT_U64(idx_store_count(f->s), 1);
}

static void test_idx_store_open_errors(void **state)
{
    fx_t *f = *state;
    char path[400], err[512] = "";
    idx_store_t *s = (void *)1;
    /* A parent that does not exist: -ENOENT from mkdir, path named. */
    kbt_path(path, sizeof path, f->tmp, "no/such/dir");
    int rc = idx_store_open(path, 0, 1, &s, err, sizeof err);
    KBT_RC(rc, -ENOENT, err);
    assert_null(s);
    KBT_CONTAINS(err, path);
    /* A regular file where the directory should be. */
    kbt_path(path, sizeof path, f->tmp, "file");
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    s = (void *)1;
    err[0] = 0;
    rc = idx_store_open(path, 0, 1, &s, err, sizeof err);
    assert_true(rc < 0);
    assert_null(s);
    KBT_CONTAINS(err, path);
}

/* A diverged replica drops only its tail: every id the tail touched points
 * back at its newest write at or below keep, exactly as before the tail. */
static void truncate_case(fx_t *f, int undo)
{
    idx_wtxn_t *t = begin(f->s);
    if (undo)
        idx_store_keep_undo(t);
    upsert(t, 1, "a", "a1");
    upsert(t, 2, "b", "b2");
    upsert(t, 3, "c", "c3");
    del(t, 4, "c", 0);
    commit(&t);
    t = begin(f->s); /* the tail: replace a, delete b, revive c, add d */
    if (undo)
        idx_store_keep_undo(t);
    upsert(t, 5, "a", "a5");
    del(t, 6, "b", 0);
    upsert(t, 7, "c", "c7");
    upsert(t, 8, "d", "d8");
    upsert(t, 9, "a", "a9");
    commit(&t);
    KBT_U64(idx_store_count(f->s), 3);

    uint64_t lsn[96], us[96];
    size_t n = idx_store_recent(f->s, 96, lsn, us);
    KBT_U64(n, 9);
    KBT_U64(lsn[0], 9);
    KBT_U64(us[0], 1009);
    KBT_U64(lsn[8], 1);

    uint64_t dropped = 0;
    char err[512] = "";
    KBT_OK(idx_store_truncate(f->s, 4, &dropped, err, sizeof err), err);
    KBT_U64(dropped, 5);
    expect_state(f->s, 4, 1004);
    assert_int_equal(label_of(f->s, "a"), 1);
    assert_int_equal(label_of(f->s, "b"), 2);
    assert_int_equal(label_of(f->s, "c"), -1);
    assert_int_equal(label_of(f->s, "d"), -1);
    KBT_U64(idx_store_count(f->s), 2);
    logs_t l = {0};
    scan(f->s, 1, 64, &l);
    KBT_U64(l.n, 4);
    logs_free(&l);
    /* The store goes on from there, and a reopen sees the same. */
    t = begin(f->s);
    upsert(t, 5, "d", "d5");
    commit(&t);
    idx_store_close(&f->s);
    f->s = store_open(f->dir, 0);
    expect_state(f->s, 5, 1005);
    assert_int_equal(label_of(f->s, "a"), 1);
    assert_int_equal(label_of(f->s, "d"), 5);
    KBT_U64(idx_store_count(f->s), 3);
}

/* Without undo entries (a store written before they were kept): the log is
 * read back from keep. */
static void test_idx_store_truncate_restores_the_prefix(void **state)
{
    truncate_case(*state, 0);
}

/* With them (a replica's store): the ids come back from the undo entries. */
static void test_idx_store_truncate_by_undo(void **state)
{
    truncate_case(*state, 1);
}

/* Compaction keeps exactly the live documents below the cut and every
 * operation from the cut on; undo entries (every store keeps them) find
 * the records that writes replaced. */
static void test_idx_store_compact_keeps_live_documents(void **state)
{
    fx_t *f = *state;
    idx_wtxn_t *t = begin(f->s);
    idx_store_keep_undo(t);
    upsert(t, 1, "a", "a1");
    upsert(t, 2, "b", "b2");
    upsert(t, 3, "c", "c3");
    commit(&t);
    t = begin(f->s);
    idx_store_keep_undo(t);
    upsert(t, 4, "a", "a4"); /* replaces 1 */
    del(t, 5, "b", 0);       /* removes 2 */
    upsert(t, 6, "d", "d6");
    upsert(t, 7, "c", "c7"); /* replaces 3 (after the cut) */
    del(t, 8, "d", 0);       /* removes 6 (after the cut) */
    upsert(t, 9, "e", "e9");
    commit(&t);
    uint64_t removed = 0, bytes = 0;
    char err[512] = "";
    KBT_U64(idx_store_log_start(f->s), 1);
    /* Stepwise, at most 2 operations per transaction. */
    KBT_OK(idx_store_compact(f->s, 7, 2, &removed, &bytes, err, sizeof err),
           err);
    KBT_U64(idx_store_log_start(f->s), 3);
    uint64_t total = removed;
    while (idx_store_log_start(f->s) < 7) {
        KBT_OK(idx_store_compact(f->s, 7, 2, &removed, &bytes, err,
                                 sizeof err),
               err);
        total += removed;
    }
    /* Gone: 1 (replaced by 4), 2 (deleted by 5), 5 (a delete). Kept: 3 is
     * live at the cut (replaced only by 7), 4, 6, and everything >= 7. */
    KBT_U64(total, 3);
    assert_null(rec_at(f->s, 1));
    assert_null(rec_at(f->s, 2));
    assert_null(rec_at(f->s, 5));
    int64_t keep[] = {3, 4, 6, 7, 8, 9};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        Kbsync__LogRecord *r = rec_at(f->s, keep[i]);
        assert_non_null(r);
        kbsync__log_record__free_unpacked(r, NULL);
    }
    /* Live documents unchanged; the state and its count too. */
    assert_int_equal(label_of(f->s, "a"), 4);
    assert_int_equal(label_of(f->s, "c"), 7);
    assert_int_equal(label_of(f->s, "e"), 9);
    assert_int_equal(label_of(f->s, "b"), -1);
    KBT_U64(idx_store_count(f->s), 3);
    expect_state(f->s, 9, 1009);
    /* Further: 3 goes (7 replaced it), 6 and 8 go (8 deleted d). */
    KBT_OK(idx_store_compact(f->s, 10, 100, &removed, &bytes, err,
                             sizeof err),
           err);
    KBT_U64(removed, 3);
    assert_true(bytes > 0);
    assert_null(rec_at(f->s, 3));
    assert_null(rec_at(f->s, 6));
    assert_null(rec_at(f->s, 8));
    logs_t l = {0};
    scan(f->s, 1, 64, &l);
    KBT_U64(l.n, 3); /* exactly the live documents: 4, 7, 9 */
    KBT_U64(l.lsn[0], 4);
    KBT_U64(l.lsn[1], 7);
    KBT_U64(l.lsn[2], 9);
    logs_free(&l);
    /* The log start survives a reopen; a truncation below it is refused. */
    idx_store_close(&f->s);
    f->s = store_open(f->dir, 0);
    KBT_U64(idx_store_log_start(f->s), 9); /* the newest record stays */
    uint64_t dropped = 0;
    assert_int_equal(idx_store_truncate(f->s, 5, &dropped, err, sizeof err),
                     KB_ECORRUPT);
    assert_non_null(strstr(err, "compacted"));
    KBT_U64(idx_store_count(f->s), 3);
}

/* Compaction reads only records short enough to be a delete: the longest
 * delete record there can be (an id of KB_MAX_ID_LEN bytes, a 9-byte LSN,
 * a 10-byte commit time: 282 bytes) is still recognised as one and
 * dropped. */
static void test_idx_store_compact_delete_of_longest_id(void **state)
{
    fx_t *f = *state;
    char id[KB_MAX_ID_LEN + 1];
    memset(id, 'x', KB_MAX_ID_LEN);
    id[KB_MAX_ID_LEN] = 0;
    /* labels are int64: the largest LSN takes 9 varint bytes */
    const uint64_t base = UINT64_C(1) << 62;
    idx_wtxn_t *t = begin(f->s);
    idx_store_keep_undo(t);
    upsert(t, base + 1, id, "long one");
    upsert(t, base + 2, "b", "b2");
    int64_t old = 0;
    char err[512] = "";
    KBT_OK(idx_store_delete(t, base + 3, UINT64_MAX, id, strlen(id), 0, &old,
                            err, sizeof err),
           err);
    upsert(t, base + 4, "c", "c4");
    commit(&t);
    Kbsync__LogRecord *r = rec_at(f->s, (int64_t)(base + 3));
    assert_non_null(r);
    size_t len = kbsync__log_record__get_packed_size(r);
    kbsync__log_record__free_unpacked(r, NULL);
    if (len < KB_MAX_ID_LEN + 26)
        fail_msg("the delete record is %zu bytes: not the longest", len);
    uint64_t removed = 0, bytes = 0;
    KBT_OK(idx_store_compact(f->s, base + 4, 100, &removed, &bytes, err,
                             sizeof err),
           err);
    KBT_U64(removed, 2); /* the deleted document and the delete */
    assert_null(rec_at(f->s, (int64_t)(base + 1)));
    assert_null(rec_at(f->s, (int64_t)(base + 3)));
    r = rec_at(f->s, (int64_t)(base + 2));
    assert_non_null(r);
    kbsync__log_record__free_unpacked(r, NULL);
    KBT_U64(idx_store_count(f->s), 2);
}

/* A snapshot's documents (idx_store_keep_undo_replaced): an undo entry
 * only for a write that replaced a document, and compaction still drops
 * the record it replaced. Fails when every write gets one, and when the
 * replacing write gets none (record 1 would stay). */
static void test_idx_store_undo_only_for_replaced(void **state)
{
    fx_t *f = *state;
    idx_wtxn_t *t = begin(f->s);
    idx_store_keep_undo_replaced(t);
    upsert(t, 1, "a", "a1");
    upsert(t, 2, "b", "b2");
    upsert(t, 3, "a", "a3"); /* replaces 1 */
    commit(&t);
    KBT_U64(idx_store_undo_count(f->s), 1);
    t = begin(f->s);
    idx_store_keep_undo(t);
    upsert(t, 4, "c", "c4"); /* the log after a snapshot: every write */
    commit(&t);
    KBT_U64(idx_store_undo_count(f->s), 2);
    uint64_t removed = 0, bytes = 0;
    char err[512] = "";
    KBT_OK(idx_store_compact(f->s, 4, 100, &removed, &bytes, err, sizeof err),
           err);
    KBT_U64(removed, 1);
    assert_null(rec_at(f->s, 1));
    Kbsync__LogRecord *r = rec_at(f->s, 2);
    assert_non_null(r);
    kbsync__log_record__free_unpacked(r, NULL);
    assert_int_equal(label_of(f->s, "a"), 3);
    assert_int_equal(label_of(f->s, "b"), 2);
}

/* Without undo entries (written before format 2), compaction judges by the
 * id map: a replaced upsert goes only when a write below the cut replaced
 * it, and a live one always stays. */
static void test_idx_store_compact_without_undo(void **state)
{
    fx_t *f = *state;
    idx_wtxn_t *t = begin(f->s);
    upsert(t, 1, "a", "a1");
    upsert(t, 2, "a", "a2");
    upsert(t, 3, "b", "b3");
    upsert(t, 4, "b", "b4");
    commit(&t);
    char err[512] = "";
    idx_wtxn_t *m = begin(f->s);
    KBT_OK(idx_store_put_u64(m, "undo_from", 5, err, sizeof err), err);
    commit(&m);
    idx_store_close(&f->s);
    f->s = store_open(f->dir, 0);
    uint64_t removed = 0, bytes = 0;
    KBT_OK(idx_store_compact(f->s, 4, 100, &removed, &bytes, err, sizeof err),
           err);
    KBT_U64(removed, 1); /* 1 (a replaced by 2); 3 stays: 4 is not below 4 */
    assert_null(rec_at(f->s, 1));
    Kbsync__LogRecord *r = rec_at(f->s, 3);
    assert_non_null(r);
    kbsync__log_record__free_unpacked(r, NULL);
    KBT_U64(idx_store_count(f->s), 2);
}

/* The sweep drops the documents-table records that operations above the
 * log start replaced or deleted, and keeps those operations. */
static void test_idx_store_sweep_below_log_start(void **state)
{
    fx_t *f = *state;
    idx_wtxn_t *t = begin(f->s);
    idx_store_keep_undo(t);
    upsert(t, 1, "a", "a1");
    upsert(t, 2, "b", "b2");
    upsert(t, 3, "c", "c3");
    commit(&t);
    uint64_t removed = 0, bytes = 0;
    char err[512] = "";
    KBT_OK(idx_store_compact(f->s, 3, 100, &removed, &bytes, err, sizeof err),
           err);
    KBT_U64(idx_store_log_start(f->s), 3);
    t = begin(f->s);
    idx_store_keep_undo(t);
    upsert(t, 4, "a", "a4"); /* replaces 1 (below the log start) */
    del(t, 5, "b", 0);       /* deletes 2 (below the log start) */
    upsert(t, 6, "c", "c6"); /* replaces 3 (an operation: stays) */
    commit(&t);
    KBT_OK(idx_store_sweep(f->s, 7, 100, &removed, &bytes, err, sizeof err),
           err);
    KBT_U64(removed, 2);
    assert_null(rec_at(f->s, 1));
    assert_null(rec_at(f->s, 2));
    int64_t keep[] = {3, 4, 5, 6};
    for (size_t i = 0; i < 4; i++) {
        Kbsync__LogRecord *r = rec_at(f->s, keep[i]);
        assert_non_null(r);
        kbsync__log_record__free_unpacked(r, NULL);
    }
    KBT_U64(idx_store_log_start(f->s), 3);
    KBT_U64(idx_store_count(f->s), 2);
    /* Nothing more to sweep: a second call removes nothing. */
    KBT_OK(idx_store_sweep(f->s, 7, 100, &removed, &bytes, err, sizeof err),
           err);
    KBT_U64(removed, 0);
}

/* The kept digest equals the sum of the live documents' record hashes
 * after every kind of write, a truncation and a reopen; the digest after
 * each LSN stays readable; two stores with the same writes agree. */
static void expect_digest(idx_store_t *s)
{
    idx_store_digest_check_t c;
    char err[512] = "";
    KBT_OK(idx_store_digest_check(s, &c, NULL, 0, err, sizeof err), err);
    KBT_U64(c.stored, c.scanned);
    KBT_U64(c.stored, idx_store_digest(s));
    KBT_U64(c.docs, idx_store_count(s));
}

static void test_idx_store_digest_follows_every_write(void **state)
{
    fx_t *f = *state;
    KBT_U64(idx_store_digest(f->s), 0);
    idx_wtxn_t *t = begin(f->s);
    upsert(t, 1, "a", "a1");
    upsert(t, 2, "b", "b2");
    commit(&t);
    expect_digest(f->s);
    uint64_t after2 = idx_store_digest(f->s), d;
    assert_int_equal(idx_store_digest_at(f->s, 2, &d), 0);
    KBT_U64(d, after2);
    t = begin(f->s);
    upsert(t, 3, "a", "a3"); /* replace */
    del(t, 4, "b", 0);
    upsert(t, 5, "c", "c5");
    commit(&t);
    expect_digest(f->s);
    assert_int_equal(idx_store_digest_at(f->s, 2, &d), 0);
    KBT_U64(d, after2);
    assert_int_equal(idx_store_digest_at(f->s, 6, &d), -ENOENT);
    /* an aborted transaction leaves the digest as it was */
    uint64_t before = idx_store_digest(f->s);
    t = begin(f->s);
    upsert(t, 6, "d", "d6");
    idx_store_abort(&t);
    KBT_U64(idx_store_digest(f->s), before);
    assert_int_equal(idx_store_digest_at(f->s, 6, &d), -ENOENT);
    /* truncation recomputes it: back to the state after LSN 2 */
    uint64_t dropped;
    char err[512] = "";
    KBT_OK(idx_store_truncate(f->s, 2, &dropped, err, sizeof err), err);
    KBT_U64(idx_store_digest(f->s), after2);
    expect_digest(f->s);
    idx_store_close(&f->s);
    f->s = store_open(f->dir, 0);
    KBT_U64(idx_store_digest(f->s), after2);
    /* another store with the same two writes has the same digest */
    char dir2[300];
    kbt_path(dir2, sizeof dir2, f->tmp, "kb2");
    idx_store_t *s2 = store_open(dir2, 0);
    t = begin(s2);
    upsert(t, 1, "a", "a1");
    upsert(t, 2, "b", "b2");
    commit(&t);
    KBT_U64(idx_store_digest(s2), after2);
    t = begin(s2);
    upsert(t, 3, "b", "B3");
    commit(&t);
    assert_true(idx_store_digest(s2) != after2);
    idx_store_close(&s2);
}

/* A writer that commits one upsert per transaction until told to stop. */
typedef struct {
    idx_store_t *s;
    uint64_t lsn; /* the last one written */
    _Atomic int stop, commits, done;
} churn_t;

static void *churn_main(void *arg)
{
    churn_t *c = arg;
    char err[512] = "";
    while (!c->stop) {
        idx_wtxn_t *t = NULL;
        if (idx_store_begin(c->s, &t, err, sizeof err))
            break;
        Kbsync__Doc d;
        float emb[DIM];
        make_doc(&d, emb, "churn", "churn", ++c->lsn);
        int64_t old;
        if (idx_store_upsert(t, c->lsn, 1000 + c->lsn, &d, &old, err,
                             sizeof err) ||
            idx_store_commit(&t, err, sizeof err)) {
            idx_store_abort(&t);
            break;
        }
        c->commits++;
    }
    c->done = 1;
    return NULL;
}

/* A digest check with a hold limit gives way (-EAGAIN) once its read
 * transaction is older than the limit and a write committed meanwhile
 * (LMDB cannot reuse the pages freed while it is open), and only then: with
 * no write it runs to the end however long it takes; without a limit it
 * always does, and its digest matches. Fails when the limit is ignored,
 * or applied without a write. */
static void test_idx_store_digest_check_gives_way_to_writes(void **state)
{
    fx_t *f = *state;
    char err[512] = "";
    idx_wtxn_t *t = begin(f->s);
    char id[32];
    for (uint64_t i = 1; i <= 4096; i++) {
        snprintf(id, sizeof id, "doc%llu", (unsigned long long)i);
        upsert(t, i, id, "some text of a document");
    }
    commit(&t);
    idx_store_digest_check_t c;
    /* no write: the 1 us limit is long past, but nothing is held back */
    KBT_OK(idx_store_digest_check(f->s, &c, NULL, 1, err, sizeof err), err);
    KBT_U64(c.docs, 4096);
    KBT_U64(c.scanned, c.stored);
    churn_t ch = {.s = f->s, .lsn = 4096};
    pthread_t thr;
    assert_int_equal(pthread_create(&thr, NULL, churn_main, &ch), 0);
    for (int i = 0; i < 100000 && ch.commits < 10 && !ch.done; i++)
        usleep(100);
    assert_true(ch.commits >= 10);
    int gave_way = 0, completed = 0;
    for (int i = 0; i < 200 && (gave_way < 3 || completed < 3); i++) {
        int rc = idx_store_digest_check(f->s, &c, NULL, 1, err, sizeof err);
        if (rc == -EAGAIN) {
            gave_way++;
            assert_non_null(strstr(err, "gave way to writes"));
            assert_true(c.docs < 4097);
        } else {
            KBT_OK(rc, err);
        }
        /* without a limit: always to the end, consistent */
        KBT_OK(idx_store_digest_check(f->s, &c, NULL, 0, err, sizeof err),
               err);
        KBT_U64(c.scanned, c.stored);
        KBT_U64(c.docs, 4097);
        completed++;
    }
    ch.stop = 1;
    pthread_join(thr, NULL);
    if (gave_way < 3)
        fail_msg("a check with a 1 us hold limit gave way %d times while "
                 "%d commits were made",
                 gave_way, (int)ch.commits);
    expect_digest(f->s);
}

/* Lazy commits (idx_store_set_lazy): a lazy commit is on disk only once
 * the next commit (or idx_store_sync) flushed its meta page, and
 * idx_store_synced() never claims more; a full commit is on disk at once;
 * reopening flushes; with nosync everything counts as synced. */
static void test_idx_store_lazy_commits_and_synced_lsn(void **state)
{
    fx_t *f = *state;
    char dir[400], err[512] = "";
    kbt_path(dir, sizeof dir, f->tmp, "lazy");
    idx_store_t *s = NULL;
    KBT_OK(idx_store_open(dir, 0, 0, &s, err, sizeof err), err);
    uint64_t full, lazy, syncs;
    KBT_U64(idx_store_synced(s), 0);
    idx_wtxn_t *t = begin(s);
    upsert(t, 1, "a", "a1");
    commit(&t);
    KBT_U64(idx_store_synced(s), 1); /* full: on disk at once */
    idx_store_set_lazy(s, 1);
    t = begin(s);
    upsert(t, 2, "b", "b1");
    commit(&t);
    KBT_U64(idx_store_synced(s), 1); /* its meta page is not flushed */
    t = begin(s);
    upsert(t, 3, "c", "c1");
    upsert(t, 4, "d", "d1");
    commit(&t);
    KBT_U64(idx_store_synced(s), 2); /* this flush carried LSN 2's meta */
    expect_state(s, 4, 1004);
    idx_store_sync_counts(s, &full, &lazy, &syncs);
    KBT_U64(full, 1);
    KBT_U64(lazy, 2);
    KBT_U64(syncs, 0);
    KBT_OK(idx_store_sync(s, err, sizeof err), err);
    KBT_U64(idx_store_synced(s), 4);
    KBT_OK(idx_store_sync(s, err, sizeof err), err); /* nothing to do */
    idx_store_sync_counts(s, &full, &lazy, &syncs);
    KBT_U64(syncs, 1);
    t = begin(s);
    upsert(t, 5, "e", "e1");
    commit(&t);
    KBT_U64(idx_store_synced(s), 4);
    idx_store_close(&s);
    /* reopened: what the last process left is flushed, then counted */
    KBT_OK(idx_store_open(dir, 0, 0, &s, err, sizeof err), err);
    expect_state(s, 5, 1005);
    KBT_U64(idx_store_synced(s), 5);
    idx_store_close(&s);
    /* nosync (the fixture's store): lazy or not, synced follows applied */
    idx_store_set_lazy(f->s, 1);
    t = begin(f->s);
    upsert(t, 1, "a", "a1");
    commit(&t);
    KBT_U64(idx_store_synced(f->s), 1);
    idx_store_sync_counts(f->s, &full, &lazy, &syncs);
    KBT_U64(full + lazy + syncs, 0);
}

/* One commit by another process (kbt_lmdb_child): key put in meta. */
static int put_meta_key(MDB_txn *txn, void *key)
{
    MDB_dbi meta;
    MDB_val k = {strlen(key), key}, v = {1, "x"};
    int rc = mdb_dbi_open(txn, "meta", 0, &meta);
    return rc ? rc : mdb_put(txn, meta, &k, &v, 0);
}

static void foreign_commit(const char *dir, const char *key)
{
    kbt_lmdb_child(dir, put_meta_key, (void *)key);
}

/* A commit by another process is reported once (with LMDB's transaction
 * id), the store's own commits never; one found while the store went on
 * committing (its own commits after it) is still reported. */
static void test_idx_store_foreign_commit_is_seen(void **state)
{
    fx_t *f = *state;
    KBT_U64(idx_store_foreign_txn(f->s), 0);
    idx_wtxn_t *t = begin(f->s);
    upsert(t, 1, "a", "a1");
    commit(&t);
    KBT_U64(idx_store_foreign_txn(f->s), 0);
    foreign_commit(f->dir, "operator");
    uint64_t id = idx_store_foreign_txn(f->s);
    assert_true(id > 0);
    KBT_U64(idx_store_foreign_txn(f->s), 0); /* once */
    t = begin(f->s);
    upsert(t, 2, "b", "b2");
    commit(&t);
    KBT_U64(idx_store_foreign_txn(f->s), 0);
    /* a foreign commit, then two of ours (one writing no document) before
     * anyone looks */
    foreign_commit(f->dir, "operator2");
    t = begin(f->s);
    commit(&t);
    t = begin(f->s);
    upsert(t, 3, "c", "c3");
    commit(&t);
    uint64_t id2 = idx_store_foreign_txn(f->s);
    KBT_U64(id2, id + 2);
    KBT_U64(idx_store_foreign_txn(f->s), 0);
    /* and a transaction of ours that writes no document is not empty: a
     * foreign commit after it is seen */
    t = begin(f->s);
    commit(&t);
    foreign_commit(f->dir, "operator3");
    assert_true(idx_store_foreign_txn(f->s) > id2);
}

int main(void)
{
    kb_log_setup(KB_LOG_WARN, "test_idx_store");
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_idx_store_reopen_keeps_meta_and_state),
        T(test_idx_store_old_labels),
        T(test_idx_store_delete_log_missing),
        T(test_idx_store_abort_changes_nothing),
        T(test_idx_store_log_scan_in_order),
        T(test_idx_store_lsn_order_violation_is_egap),
        T(test_idx_store_doc_by_label),
        T(test_idx_store_scan_docs_live_in_label_order),
        T(test_idx_store_map_full_is_estore),
        T(test_idx_store_open_errors),
        T(test_idx_store_truncate_restores_the_prefix),
        T(test_idx_store_truncate_by_undo),
        T(test_idx_store_compact_keeps_live_documents),
        T(test_idx_store_compact_without_undo),
        T(test_idx_store_undo_only_for_replaced),
        T(test_idx_store_compact_delete_of_longest_id),
        T(test_idx_store_sweep_below_log_start),
        T(test_idx_store_digest_follows_every_write),
        T(test_idx_store_digest_check_gives_way_to_writes),
        T(test_idx_store_lazy_commits_and_synced_lsn),
        T(test_idx_store_foreign_commit_is_seen),
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (live)
        fx_free(live);
    return failed;
}
