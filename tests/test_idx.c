/* test_idx: one node's knowledge base (indexer/include/idx.h) = real LMDB in a fresh
 * /tmp directory + real FAISS. In: upserts, deletes, queries, log records
 * read from another idx. Out: pass/fail on settings checks at open, write
 * and search semantics (replace, delete, LSNs), validation errors, index
 * rebuild after reopen and after a crash, and the replica apply path. */
#include "kb_test.h"

#include "kb_lmdb_child.h"

#include "idx.h"
#include "idx_embed.h"
#include "idx_store.h"
#include "idx_vec.h"
#include "kb_err.h"
#include "kb_util.h"
#include "kbsync.pb-c.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <errno.h>
#include <sys/resource.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include <stdatomic.h>
#include <sys/wait.h>

#define DIM 16

/* Under ASan, fresh malloc memory is filled with 0xbe bytes, which read as a
 * negative FAISS label and so hide the empty-index crash tested below; a
 * fill that reads as a positive label keeps that test meaningful in the
 * sanitizer build. Unused in other builds. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "malloc_fill_byte=17";
}

typedef struct fx {
    char tmp[256];
    char dir[300];  /* leader / main knowledge base */
    char dir2[300]; /* replica */
    idx_kb_t *ix, *rep;
} fx_t;

static idx_kb_t *kb_open(const char *dir, uint32_t dim, const char *metric,
                      const char *index, const char *node)
{
    idx_config_t c = {.dir = dir,
                      .dim = dim,
                      .metric = metric,
                      .index = index,
                      .node_id = node,
                      .nosync = 1};
    idx_kb_t *ix = NULL;
    char err[512] = "";
    KBT_OK(idx_open(&c, &ix, err, sizeof err), err);
    assert_non_null(ix);
    return ix;
}

static int kb_open_rc(const char *dir, uint32_t dim, const char *metric,
                      const char *index, const char *node, char *err,
                      size_t errlen)
{
    idx_config_t c = {.dir = dir,
                      .dim = dim,
                      .metric = metric,
                      .index = index,
                      .node_id = node,
                      .nosync = 1};
    idx_kb_t *ix = (void *)1;
    err[0] = 0;
    int rc = idx_open(&c, &ix, err, errlen);
    if (rc)
        assert_null(ix);
    idx_close(&ix);
    return rc;
}

/* cmocka 1.1 skips the teardown of a failed test: the fixture it left
 * behind is freed by the next setup, or at the end of main. */
static fx_t *live;

static void fx_free(fx_t *f)
{
    idx_close(&f->ix);
    idx_close(&f->rep);
    kbt_rmrf(f->tmp);
    free(f);
}

static int setup(void **state)
{
    if (live)
        fx_free(live);
    fx_t *f = live = calloc(1, sizeof *f);
    kbt_tmpdir(f->tmp, sizeof f->tmp, "idx");
    kbt_path(f->dir, sizeof f->dir, f->tmp, "kb");
    kbt_path(f->dir2, sizeof f->dir2, f->tmp, "replica");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_free(*state);
    live = NULL;
    return 0;
}

static idx_stats_t stats(idx_kb_t *ix)
{
    idx_stats_t st;
    idx_stats(ix, &st);
    assert_int_equal(st.docs, st.vectors); /* store and index agree */
    return st;
}

static idx_op_t up(const char *id, const char *text, const float *emb,
                   const char *meta)
{
    idx_op_t o = {IDX_OP_UPSERT, id, text, emb, emb ? DIM : 0, meta};
    return o;
}

static idx_op_t rm(const char *id)
{
    idx_op_t o = {IDX_OP_DELETE, id, NULL, NULL, 0, NULL};
    return o;
}

/* Validates and writes ops; lsns (n entries) receive the LSNs. */
static void write_ops(idx_kb_t *ix, const idx_op_t *ops, size_t n, uint64_t *lsns)
{
    char err[512] = "";
    KBT_OK(idx_validate(ix, ops, n, err, sizeof err), err);
    KBT_OK(idx_write(ix, ops, n, 0, lsns, NULL, NULL, err, sizeof err), err);
}

static uint64_t write1(idx_kb_t *ix, idx_op_t op)
{
    uint64_t lsn = 777;
    write_ops(ix, &op, 1, &lsn);
    return lsn;
}

static idx_hits_t search(idx_kb_t *ix, const float *q, uint32_t k)
{
    idx_hits_t h;
    char err[512] = "";
    KBT_OK(idx_search(ix, q, NULL, 0, k, &h, err, sizeof err), err);
    return h;
}

static idx_hits_t search_text(idx_kb_t *ix, const char *text, uint32_t k)
{
    idx_hits_t h;
    char err[512] = "";
    KBT_OK(idx_search(ix, NULL, text, strlen(text), k, &h, err, sizeof err),
           err);
    return h;
}

static size_t count_id(const idx_hits_t *h, const char *id)
{
    size_t c = 0;
    for (size_t i = 0; i < h->n; i++)
        c += strcmp(h->hit[i].id, id) == 0;
    return c;
}

/* Fails unless both hit lists are the same, in the same order. */
static void assert_same_hits(const idx_hits_t *a, const idx_hits_t *b)
{
    if (a->n != b->n)
        fail_msg("%zu hits vs %zu hits", a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        if (strcmp(a->hit[i].id, b->hit[i].id))
            fail_msg("hit %zu: \"%s\" vs \"%s\"", i, a->hit[i].id,
                     b->hit[i].id);
        KBT_NEAR(a->hit[i].score, b->hit[i].score, 1e-6);
        assert_string_equal(a->hit[i].text, b->hit[i].text);
        assert_string_equal(a->hit[i].metadata, b->hit[i].metadata);
    }
}

/* Log records copied out of idx_read_log. */
typedef struct recs {
    size_t n;
    uint64_t lsn[256];
    void *data[256];
    size_t len[256];
} recs_t;

static int copy_rec(void *ctx, uint64_t lsn, const void *bytes, size_t len)
{
    recs_t *r = ctx;
    if (!bytes) /* end of the walk */
        return 0;
    assert_true(r->n < 256);
    r->lsn[r->n] = lsn;
    r->data[r->n] = malloc(len ? len : 1);
    assert_non_null(r->data[r->n]);
    memcpy(r->data[r->n], bytes, len);
    r->len[r->n] = len;
    r->n++;
    return 0;
}

static void read_log(idx_kb_t *ix, uint64_t from, recs_t *r)
{
    char err[512] = "";
    memset(r, 0, sizeof *r);
    KBT_OK(idx_read_log(ix, from, SIZE_MAX, copy_rec, r, err, sizeof err), err);
}

static void recs_free(recs_t *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->data[i]);
    r->n = 0;
}

static int apply(idx_kb_t *ix, recs_t *r, size_t from, size_t n, char *err,
                 size_t errlen)
{
    err[0] = 0;
    return idx_apply_log(ix, n, (const void *const *)&r->data[from],
                         &r->len[from], err, errlen);
}

/* A small varied history on ix: plain upserts with metadata, a replace, a
 * text-only doc, deletes (one missing), all in several writes. */
static void leader_history(idx_kb_t *ix)
{
    float v[12][DIM];
    for (int i = 0; i < 12; i++)
        kbt_rand_unit(v[i], DIM, 500 + i);
    idx_op_t w1[] = {up("a", "alpha", v[0], "{\"n\":1}"),
                     up("b", "beta", v[1], ""), up("c", "gamma", v[2], NULL),
                     up("d", "delta", v[3], "{\"tags\":[\"x\",\"y\"]}")};
    uint64_t l[8];
    write_ops(ix, w1, 4, l);
    idx_op_t w2[] = {up("b", "beta v2", v[4], "{\"n\":2}"), rm("c"), rm("nope"),
                     up("e", "replication log of writes", NULL, NULL)};
    write_ops(ix, w2, 4, l);
    idx_op_t w3[] = {up("f", "phi", v[5], ""), up("f", "phi v2", v[6], ""),
                     rm("a")};
    write_ops(ix, w3, 3, l);
    for (int i = 7; i < 12; i++) {
        char id[16];
        snprintf(id, sizeof id, "g%d", i);
        write1(ix, up(id, "more", v[i], ""));
    }
}

/* ------------------------------------------------------------- open */

static void test_idx_create_needs_dim(void **state)
{
    fx_t *f = *state;
    char err[512];
    KBT_RC(kb_open_rc(f->dir, 0, NULL, NULL, NULL, err, sizeof err), KB_EINVAL,
           err);
    KBT_CONTAINS(err, "--dim");
    KBT_CONTAINS(err, f->dir);
    /* Nothing was claimed: a later open with a dim creates it. */
    f->ix = kb_open(f->dir, DIM, NULL, NULL, NULL);
    idx_stats_t st = stats(f->ix);
    assert_int_equal(st.dim, DIM);
    assert_string_equal(st.metric, "ip");
    assert_string_equal(st.index, "IDMap2,Flat");
    assert_string_equal(st.node_id, "node");
    KBT_U64(st.version, 0);
    KBT_U64(st.docs, 0);
    /* ...and from then on the stored dim is used when none is given. */
    idx_close(&f->ix);
    assert_null(f->ix);
    idx_close(&f->ix);
    f->ix = kb_open(f->dir, 0, NULL, NULL, NULL);
    assert_int_equal(stats(f->ix).dim, DIM);
}

static void test_idx_create_bad_settings(void **state)
{
    fx_t *f = *state;
    char err[512];
    KBT_RC(
        kb_open_rc(f->dir, KB_MAX_DIM + 1, NULL, NULL, NULL, err, sizeof err),
        KB_EINVAL, err);
    KBT_CONTAINS(err, "4097");
    KBT_RC(kb_open_rc(f->dir, DIM, "hamming", NULL, NULL, err, sizeof err),
           KB_EINVAL, err);
    KBT_CONTAINS(err, "hamming");
    KBT_RC(kb_open_rc(f->dir, DIM, NULL, "NoSuchIndex42", NULL, err, sizeof err),
           KB_EINDEX, err);
    KBT_CONTAINS(err, "NoSuchIndex42");
    /* None of those left settings behind. */
    f->ix = kb_open(f->dir, 8, "l2", NULL, "n1");
    idx_stats_t st = stats(f->ix);
    assert_int_equal(st.dim, 8);
    assert_string_equal(st.metric, "l2");
}

static void test_idx_reopen_mismatch_names_both_values(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", "IDMap2,Flat", "n1");
    float v[DIM];
    kbt_rand_unit(v, DIM, 1);
    write1(f->ix, up("a", "x", v, ""));
    idx_close(&f->ix);

    char err[512];
    KBT_RC(kb_open_rc(f->dir, 32, NULL, NULL, NULL, err, sizeof err),
           KB_EMISMATCH, err);
    KBT_CONTAINS(err, "dim 16");
    KBT_CONTAINS(err, "32");
    KBT_RC(kb_open_rc(f->dir, 0, "l2", NULL, NULL, err, sizeof err),
           KB_EMISMATCH, err);
    KBT_CONTAINS(err, "ip");
    KBT_CONTAINS(err, "l2");
    KBT_RC(kb_open_rc(f->dir, 0, NULL, "IDMap2,Flat,Refine(Flat)", NULL, err,
                      sizeof err),
           KB_EMISMATCH, err);
    KBT_CONTAINS(err, "\"IDMap2,Flat\"");
    KBT_CONTAINS(err, "Refine(Flat)");
    KBT_RC(kb_open_rc(f->dir, 0, NULL, NULL, "n2", err, sizeof err),
           KB_EMISMATCH, err);
    KBT_CONTAINS(err, "\"n1\"");
    KBT_CONTAINS(err, "\"n2\"");

    /* The same settings, or none, open it; the data is intact. */
    f->ix = kb_open(f->dir, DIM, "ip", "IDMap2,Flat", "n1");
    idx_stats_t st = stats(f->ix);
    KBT_U64(st.version, 1);
    KBT_U64(st.docs, 1);
    assert_string_equal(st.node_id, "n1");
}

/* ------------------------------------------------------------ write */

static void test_idx_write_and_search(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    enum { N = 10 };
    float v[N][DIM];
    char ids[N][16], texts[N][32], metas[N][32];
    idx_op_t ops[N];
    for (int i = 0; i < N; i++) {
        kbt_rand_unit(v[i], DIM, 10 + i);
        snprintf(ids[i], sizeof ids[i], "doc-%d", i);
        snprintf(texts[i], sizeof texts[i], "text %d", i);
        snprintf(metas[i], sizeof metas[i], "{\"i\":%d}", i);
        ops[i] = up(ids[i], texts[i], v[i], metas[i]);
    }
    ops[3].metadata = NULL; /* no metadata comes back as "" */
    uint64_t lsns[N];
    char err[512] = "";
    KBT_OK(idx_validate(f->ix, ops, N, err, sizeof err), err);
    KBT_OK(idx_write(f->ix, ops, N, 1234567, lsns, NULL, NULL, err, sizeof err),
           err);
    for (int i = 0; i < N; i++)
        KBT_U64(lsns[i], i + 1); /* consecutive, after version 0 */
    idx_stats_t st = stats(f->ix);
    KBT_U64(st.version, N);
    KBT_U64(st.commit_us, 1234567);
    KBT_U64(st.docs, N);

    for (int i = 0; i < N; i++) {
        idx_hits_t h = search(f->ix, v[i], 3);
        assert_int_equal(h.n, 3);
        assert_string_equal(h.hit[0].id, ids[i]);
        assert_string_equal(h.hit[0].text, texts[i]);
        assert_string_equal(h.hit[0].metadata, i == 3 ? "" : metas[i]);
        KBT_NEAR(h.hit[0].score, 1.0, 1e-5); /* unit vectors, ip */
        assert_true(h.hit[1].score <= h.hit[0].score);
        assert_true(h.hit[2].score <= h.hit[1].score);
        idx_hits_free(&h);
        assert_null(h.hit);
    }
    /* k = 0 means 10; k above the count gives what there is. */
    idx_hits_t h = search(f->ix, v[0], 0);
    assert_int_equal(h.n, 10);
    idx_hits_free(&h);
    write1(f->ix, up("extra", "", v[0], ""));
    h = search(f->ix, v[0], 0);
    assert_int_equal(h.n, 10);
    idx_hits_free(&h);
    h = search(f->ix, v[0], 1000);
    assert_int_equal(h.n, N + 1);
    idx_hits_free(&h);
    idx_hits_free(NULL);

    /* A write with n = 0 is a no-op. */
    KBT_OK(idx_write(f->ix, ops, 0, 0, lsns, NULL, NULL, err, sizeof err), err);
    KBT_U64(stats(f->ix).version, N + 1);
}

static void test_idx_l2_metric_scores(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "l2", NULL, NULL);
    float a[DIM] = {0}, b[DIM] = {0}, q[DIM] = {0};
    a[0] = 10, a[1] = 10; /* big inner product with q, far in L2 */
    b[0] = 1, b[1] = 0.1f;
    q[0] = 1;
    write1(f->ix, up("a", "", a, ""));
    write1(f->ix, up("b", "", b, ""));
    idx_hits_t h = search(f->ix, q, 2);
    assert_int_equal(h.n, 2);
    assert_string_equal(h.hit[0].id, "b"); /* lower distance first */
    KBT_NEAR(h.hit[0].score, 0.01, 1e-5);
    KBT_NEAR(h.hit[1].score, 181.0, 1e-3);
    idx_hits_free(&h);
}

static void test_idx_upsert_replaces(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    float v1[DIM], v2[DIM], other[DIM];
    kbt_rand_unit(v1, DIM, 1);
    kbt_rand_unit(v2, DIM, 2);
    kbt_rand_unit(other, DIM, 3);
    assert_int_equal(write1(f->ix, up("a", "old", v1, "{\"v\":1}")), 1);
    assert_int_equal(write1(f->ix, up("z", "other", other, "")), 2);
    assert_int_equal(write1(f->ix, up("a", "new", v2, "{\"v\":2}")), 3);
    idx_stats_t st = stats(f->ix);
    KBT_U64(st.version, 3);
    KBT_U64(st.docs, 2);

    /* Whatever the query, "a" appears once, with its new content. */
    const float *qs[] = {v1, v2, other};
    for (int i = 0; i < 3; i++) {
        idx_hits_t h = search(f->ix, qs[i], 10);
        assert_int_equal(h.n, 2);
        assert_int_equal(count_id(&h, "a"), 1);
        for (size_t j = 0; j < h.n; j++)
            if (!strcmp(h.hit[j].id, "a")) {
                assert_string_equal(h.hit[j].text, "new");
                assert_string_equal(h.hit[j].metadata, "{\"v\":2}");
                KBT_NEAR(h.hit[j].score, kbt_dot(qs[i], v2, DIM), 1e-5);
            }
        idx_hits_free(&h);
    }
}

/* ListRequest: live ids with a prefix, after a cursor, in id order, pages
 * that join without gaps or repeats, the metadata value asked for. */
static void test_idx_list_pages_by_prefix(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    float v[DIM];
    kbt_rand_unit(v, DIM, 1);
    char id[32], meta[64];
    for (int i = 0; i < 25; i++) {
        snprintf(id, sizeof id, "doc/%02d", i);
        snprintf(meta, sizeof meta, "{\"sha\":\"h%d\",\"n\":%d}", i, i);
        write1(f->ix, up(id, "t", v, meta));
    }
    write1(f->ix, up("doa", "t", v, ""));        /* sorts before the prefix */
    write1(f->ix, up("doc0", "t", v, ""));       /* after it */
    write1(f->ix, up("doc/07", "t2", v, "{}"));  /* replaced: no "sha" now */
    write1(f->ix, rm("doc/03"));                 /* gone */
    uint64_t head = stats(f->ix).version;

    char err[256], after[64] = "";
    int seen = 0;
    for (int page = 0; page < 10; page++) {
        Kbsync__ListRequest q = KBSYNC__LIST_REQUEST__INIT;
        q.prefix = "doc/";
        q.after = after;
        q.limit = 7;
        q.meta_key = "sha";
        Kbsync__ListResult r;
        assert_int_equal(idx_list(f->ix, &q, &r, err, sizeof err), 0);
        KBT_U64(r.version, head);
        for (size_t i = 0; i < r.n_entries; i++, seen++) {
            int want = seen < 3 ? seen : seen + 1; /* doc/03 is deleted */
            snprintf(id, sizeof id, "doc/%02d", want);
            assert_string_equal(r.entries[i]->id, id);
            if (want == 7) {
                assert_string_equal(r.entries[i]->meta_value, "");
                KBT_U64(r.entries[i]->version, head - 1);
            } else {
                snprintf(meta, sizeof meta, "\"h%d\"", want);
                assert_string_equal(r.entries[i]->meta_value, meta);
                KBT_U64(r.entries[i]->version, (uint64_t)want + 1);
            }
        }
        int more = r.more;
        if (r.n_entries)
            snprintf(after, sizeof after, "%s",
                     r.entries[r.n_entries - 1]->id);
        idx_list_free(&r);
        if (!more)
            break;
    }
    assert_int_equal(seen, 24);

    /* No prefix: every live id; bounds are refused by name. */
    Kbsync__ListRequest q = KBSYNC__LIST_REQUEST__INIT;
    Kbsync__ListResult r;
    assert_int_equal(idx_list(f->ix, &q, &r, err, sizeof err), 0);
    assert_int_equal(r.n_entries, 26);
    assert_string_equal(r.entries[0]->id, "doa");
    assert_string_equal(r.entries[25]->id, "doc0");
    assert_false(r.more);
    idx_list_free(&r);
    q.limit = IDX_LIST_MAX + 1;
    assert_int_equal(idx_list(f->ix, &q, &r, err, sizeof err), KB_EINVAL);
    assert_non_null(strstr(err, "limit"));

    /* A page ends at IDX_LIST_BYTES of ids and values: 80 values of 60 KB
     * take two pages that join without a gap. */
    size_t big = 60000;
    char *m = malloc(big + 32);
    assert_non_null(m);
    memcpy(m, "{\"v\":\"", 6);
    memset(m + 6, 'x', big);
    memcpy(m + 6 + big, "\"}", 3);
    for (int i = 0; i < 80; i++) {
        snprintf(id, sizeof id, "big/%02d", i);
        write1(f->ix, up(id, "t", v, m));
    }
    free(m);
    Kbsync__ListRequest bq = KBSYNC__LIST_REQUEST__INIT;
    bq.prefix = "big/";
    bq.meta_key = "v";
    assert_int_equal(idx_list(f->ix, &bq, &r, err, sizeof err), 0);
    size_t first = r.n_entries;
    assert_true(first > 0 && first < 80);
    assert_true(r.more);
    assert_true(first * (big + 8) <= IDX_LIST_BYTES);
    snprintf(after, sizeof after, "%s", r.entries[first - 1]->id);
    idx_list_free(&r);
    bq.after = after;
    assert_int_equal(idx_list(f->ix, &bq, &r, err, sizeof err), 0);
    assert_int_equal(first + r.n_entries, 80);
    assert_false(r.more);
    idx_list_free(&r);
}

static void test_idx_same_id_twice_in_one_write(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    float v1[DIM], v2[DIM], v3[DIM];
    kbt_rand_unit(v1, DIM, 11);
    kbt_rand_unit(v2, DIM, 12);
    kbt_rand_unit(v3, DIM, 13);
    idx_op_t ops[] = {up("a", "first", v1, ""), up("b", "bee", v3, ""),
                      up("a", "second", v2, "")};
    uint64_t lsns[3];
    write_ops(f->ix, ops, 3, lsns);
    KBT_U64(lsns[0], 1);
    KBT_U64(lsns[1], 2);
    KBT_U64(lsns[2], 3);
    idx_stats_t st = stats(f->ix);
    KBT_U64(st.version, 3);
    KBT_U64(st.docs, 2);
    KBT_U64(st.vectors, 2);
    idx_hits_t h = search(f->ix, v1, 10);
    assert_int_equal(h.n, 2);
    assert_int_equal(count_id(&h, "a"), 1);
    for (size_t j = 0; j < h.n; j++)
        if (!strcmp(h.hit[j].id, "a")) {
            assert_string_equal(h.hit[j].text, "second");
            KBT_NEAR(h.hit[j].score, kbt_dot(v1, v2, DIM), 1e-5);
        }
    idx_hits_free(&h);

    /* Upsert then delete of one id in one write: it is gone, both LSNs
     * are taken, and nothing stays in the index. */
    idx_op_t ops2[] = {up("c", "sea", v3, ""), rm("c")};
    write_ops(f->ix, ops2, 2, lsns);
    KBT_U64(lsns[0], 4);
    KBT_U64(lsns[1], 5);
    st = stats(f->ix);
    KBT_U64(st.version, 5);
    KBT_U64(st.docs, 2);
    h = search(f->ix, v3, 10);
    assert_int_equal(count_id(&h, "c"), 0);
    assert_int_equal(h.n, 2);
    idx_hits_free(&h);

    /* Delete then upsert: the doc is back with the new content. */
    idx_op_t ops3[] = {rm("b"), up("b", "bee again", v1, "")};
    write_ops(f->ix, ops3, 2, lsns);
    KBT_U64(lsns[0], 6);
    KBT_U64(lsns[1], 7);
    st = stats(f->ix);
    KBT_U64(st.docs, 2);
    h = search(f->ix, v1, 10);
    assert_int_equal(count_id(&h, "b"), 1);
    idx_hits_free(&h);
}

static void test_idx_delete(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    float v[3][DIM];
    for (int i = 0; i < 3; i++)
        kbt_rand_unit(v[i], DIM, 40 + i);
    idx_op_t ops[] = {up("a", "", v[0], ""), up("b", "", v[1], ""),
                      up("c", "", v[2], "")};
    uint64_t lsns[3];
    write_ops(f->ix, ops, 3, lsns);
    assert_int_equal(write1(f->ix, rm("b")), 4);
    idx_stats_t st = stats(f->ix);
    KBT_U64(st.version, 4);
    KBT_U64(st.docs, 2);
    idx_hits_t h = search(f->ix, v[1], 10);
    assert_int_equal(h.n, 2);
    assert_int_equal(count_id(&h, "b"), 0);
    idx_hits_free(&h);
    /* Deleting it again: not present, no LSN. */
    assert_int_equal(write1(f->ix, rm("b")), 0);
    KBT_U64(stats(f->ix).version, 4);
}

static void test_idx_missing_delete_takes_no_lsn(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    float v[DIM];
    kbt_rand_unit(v, DIM, 9);
    write1(f->ix, up("a", "", v, ""));
    idx_stats_t before = stats(f->ix);

    uint64_t lsns[3] = {9, 9, 9};
    idx_op_t only[] = {rm("nope"), rm("nada")};
    char err[512] = "";
    KBT_OK(idx_write(f->ix, only, 2, 999, lsns, NULL, NULL, err, sizeof err),
           err);
    KBT_U64(lsns[0], 0);
    KBT_U64(lsns[1], 0);
    idx_stats_t st = stats(f->ix);
    KBT_U64(st.version, 1);
    KBT_U64(st.commit_us, before.commit_us); /* not the 999 of the no-op */
    recs_t r;
    read_log(f->ix, 2, &r);
    assert_int_equal(r.n, 0);

    /* Mixed: the missing ones take no LSN, the rest stay consecutive. */
    idx_op_t mixed[] = {rm("nope"), up("b", "", v, ""), rm("nope2")};
    write_ops(f->ix, mixed, 3, lsns);
    KBT_U64(lsns[0], 0);
    KBT_U64(lsns[1], 2);
    KBT_U64(lsns[2], 0);
    KBT_U64(stats(f->ix).version, 2);
    read_log(f->ix, 0, &r);
    assert_int_equal(r.n, 2);
    KBT_U64(r.lsn[0], 1);
    KBT_U64(r.lsn[1], 2);
    recs_free(&r);
}

/* ---------------------------------------------------------- validate */

/* Runs idx_validate on [good, bad, good]; checks the code, that the text
 * names op #1 (and its id when it has one), and that nothing changed. */
static void expect_invalid(idx_kb_t *ix, idx_op_t bad, int code,
                           const char *needle)
{
    float g[DIM];
    kbt_rand_unit(g, DIM, 77);
    idx_op_t ops[3] = {up("good-0", "fine", g, "{}"), bad,
                       up("good-2", "fine", g, "")};
    idx_stats_t before = stats(ix);
    char err[512] = "";
    int rc = idx_validate(ix, ops, 3, err, sizeof err);
    KBT_RC(rc, code, err);
    KBT_CONTAINS(err, "#1");
    if (bad.id && *bad.id && strlen(bad.id) <= KB_MAX_ID_LEN) {
        char q[KB_MAX_ID_LEN + 3];
        snprintf(q, sizeof q, "\"%s\"", bad.id);
        KBT_CONTAINS(err, q);
    }
    if (needle)
        KBT_CONTAINS(err, needle);
    idx_stats_t after = stats(ix);
    KBT_U64(after.version, before.version);
    KBT_U64(after.docs, before.docs);
    KBT_U64(after.vectors, before.vectors);
}

static void test_idx_validate_errors_change_nothing(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    float v[DIM], nan_v[DIM], inf_v[DIM];
    kbt_rand_unit(v, DIM, 5);
    write1(f->ix, up("existing", "", v, ""));
    memcpy(nan_v, v, sizeof v);
    memcpy(inf_v, v, sizeof v);
    nan_v[3] = NAN;
    inf_v[15] = -INFINITY;
    char *long_id = kbt_repeat('i', KB_MAX_ID_LEN + 1);
    char *max_id = kbt_repeat('m', KB_MAX_ID_LEN);
    char *big_text = kbt_repeat('t', KB_MAX_TEXT_LEN + 1);
    char *ok_text = kbt_repeat('t', KB_MAX_TEXT_LEN);
    size_t mlen = KB_MAX_METADATA_LEN + 1;
    char *big_meta = kbt_repeat(' ', mlen);
    big_meta[0] = '{';
    big_meta[mlen - 1] = '}';

    expect_invalid(f->ix, up("", "x", v, ""), KB_EBADID, "empty id");
    expect_invalid(f->ix, up(NULL, "x", v, ""), KB_EBADID, "empty id");
    expect_invalid(f->ix, rm(""), KB_EBADID, "empty id");
    expect_invalid(f->ix, up(long_id, "x", v, ""), KB_EBADID, "257 bytes");
    expect_invalid(f->ix, rm(long_id), KB_EBADID, "257 bytes");
    idx_op_t short_emb = up("short", "x", v, "");
    short_emb.embedding_len = DIM - 1;
    expect_invalid(f->ix, short_emb, KB_EDIM, "15 values");
    idx_op_t long_emb = up("long", "x", v, "");
    long_emb.embedding_len = DIM + 1;
    expect_invalid(f->ix, long_emb, KB_EDIM, "dim 16");
    expect_invalid(f->ix, up("nan", "x", nan_v, ""), KB_ENONFINITE,
                   "embedding[3] is NaN");
    expect_invalid(f->ix, up("inf", "x", inf_v, ""), KB_ENONFINITE,
                   "embedding[15] is infinite");
    expect_invalid(f->ix, up("meta1", "x", v, "{not json"), KB_EBADJSON,
                   "metadata");
    expect_invalid(f->ix, up("meta2", "x", v, "[1,2]"), KB_EBADJSON, NULL);
    expect_invalid(f->ix, up("meta3", "x", v, "\"str\""), KB_EBADJSON, NULL);
    expect_invalid(f->ix, up("meta4", "x", v, "{\"a\":1"), KB_EBADJSON, NULL);
    expect_invalid(f->ix, up("meta5", "x", v, "{} {}"), KB_EBADJSON, NULL);
    expect_invalid(f->ix, up("meta6", "x", v, "null"), KB_EBADJSON, NULL);
    expect_invalid(f->ix, up("bigmeta", "x", v, big_meta), KB_ETOOBIG,
                   "metadata");
    expect_invalid(f->ix, up("bigtext", big_text, v, ""), KB_ETOOBIG, "text");
    expect_invalid(f->ix, up("bigtext2", big_text, NULL, ""), KB_ETOOBIG,
                   "text");
    expect_invalid(f->ix, up("nothing", NULL, NULL, ""), KB_EINVAL, "neither");
    expect_invalid(f->ix, up("nothing2", "", NULL, ""), KB_EINVAL, "neither");
    /* A text without a word embeds to the zero vector: refused under every
     * metric (here ip), unless an embedding comes with it. */
    expect_invalid(f->ix, up("nowords", "--- !! ...", NULL, ""), KB_EINVAL,
                   "no words");
    idx_op_t bad_op = up("weird", "x", v, "");
    bad_op.op = (idx_opcode_t)7;
    expect_invalid(f->ix, bad_op, KB_EINVAL, "unknown operation");

    /* The limits themselves are fine. */
    idx_op_t fine[] = {up(max_id, ok_text, v, "{\"a\":[1,{\"b\":null}]}"),
                       up("textonly", "some words", NULL, NULL),
                       rm("existing")};
    char err[512] = "";
    KBT_OK(idx_validate(f->ix, fine, 3, err, sizeof err), err);
    uint64_t lsns[3];
    KBT_OK(idx_write(f->ix, fine, 3, 0, lsns, NULL, NULL, err, sizeof err),
           err);
    idx_stats_t st = stats(f->ix);
    KBT_U64(st.version, 4);
    KBT_U64(st.docs, 2);
    free(long_id);
    free(max_id);
    free(big_text);
    free(ok_text);
    free(big_meta);
}

/* ---------------------------------------------------- text and search */

static void test_idx_text_only_doc_is_embedded_and_found(void **state)
{
    fx_t *f = *state;
    enum { D = 64 }; /* more buckets: fewer hash collisions in this test */
    f->ix = kb_open(f->dir, D, "ip", NULL, NULL);
    idx_op_t ops[] = {
        {IDX_OP_UPSERT, "cat", "the cat sat on the mat", NULL, 0, NULL},
        {IDX_OP_UPSERT, "market", "stock market prices fell sharply", NULL, 0,
         NULL},
        {IDX_OP_UPSERT, "rust", "the borrow checker rejects my code", NULL, 0,
         NULL},
        {IDX_OP_UPSERT, "lmdb", "memory mapped btree database pages", NULL, 0,
         NULL},
    };
    uint64_t lsns[4];
    char err[512] = "";
    KBT_OK(idx_validate(f->ix, ops, 4, err, sizeof err), err);
    KBT_OK(idx_write(f->ix, ops, 4, 0, lsns, NULL, NULL, err, sizeof err), err);

    static const char *q[][2] = {{"a cat on a mat", "cat"},
                                 {"market prices", "market"},
                                 {"borrow checker", "rust"},
                                 {"btree pages", "lmdb"}};
    for (int i = 0; i < 4; i++) {
        idx_hits_t h = search_text(f->ix, q[i][0], 1);
        assert_int_equal(h.n, 1);
        if (strcmp(h.hit[0].id, q[i][1]))
            fail_msg("text query \"%s\" found \"%s\", wanted \"%s\"", q[i][0],
                     h.hit[0].id, q[i][1]);
        idx_hits_free(&h);
    }

    /* The embedding the leader computed is the built-in one, and it is in
     * the log record (replicas never re-embed). */
    recs_t r;
    read_log(f->ix, 1, &r);
    assert_int_equal(r.n, 4);
    for (size_t i = 0; i < 4; i++) {
        Kbsync__LogRecord *rec =
            kbsync__log_record__unpack(NULL, r.len[i], r.data[i]);
        assert_non_null(rec);
        assert_non_null(rec->doc);
        assert_int_equal(rec->doc->n_embedding, D);
        float want[D];
        assert_int_equal(
            idx_embed_text(ops[i].text, strlen(ops[i].text), want, D), 0);
        assert_memory_equal(rec->doc->embedding, want, sizeof want);
        kbsync__log_record__free_unpacked(rec, NULL);
    }
    recs_free(&r);

    /* Searching by that vector is searching by the text. */
    float qv[D];
    idx_embed_text("the cat sat on the mat", 22, qv, D);
    idx_hits_t h = search(f->ix, qv, 1);
    assert_string_equal(h.hit[0].id, "cat");
    KBT_NEAR(h.hit[0].score, 1.0, 1e-5);
    idx_hits_free(&h);
}

static void test_idx_search_errors(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    float v[DIM];
    kbt_rand_unit(v, DIM, 3);
    write1(f->ix, up("a", "", v, ""));
    idx_hits_t h;
    char err[512] = "";
    KBT_RC(idx_search(f->ix, v, NULL, 0, KB_MAX_K + 1, &h, err, sizeof err),
           KB_EINVAL, err);
    KBT_CONTAINS(err, "1001");
    assert_int_equal(h.n, 0);
    KBT_RC(idx_search(f->ix, NULL, NULL, 0, 5, &h, err, sizeof err), KB_EINVAL,
           err);
    KBT_RC(idx_search(f->ix, NULL, "", 0, 5, &h, err, sizeof err), KB_EINVAL,
           err);
    v[7] = NAN;
    KBT_RC(idx_search(f->ix, v, NULL, 0, 5, &h, err, sizeof err), KB_ENONFINITE,
           err);
    KBT_CONTAINS(err, "[7]");
    v[7] = INFINITY;
    KBT_RC(idx_search(f->ix, v, NULL, 0, 5, &h, err, sizeof err), KB_ENONFINITE,
           err);
}

/* BUG (indexer/idx_vec.c, idx_vec_search; see test_idx_vec): a query on a
 * knowledge base with no documents crashes inside FAISS once
 * idx_vec_setup() has run, as it does in kbsync. Both a new knowledge base
 * and one whose documents were all deleted must answer with no hits. Runs
 * in a child so the crash fails only this test. */
static int empty_kb_child(void *arg)
{
    fx_t *f = arg;
    idx_config_t c = {.dir = f->dir2, .dim = DIM, .nosync = 1};
    idx_kb_t *ix = NULL;
    char err[512];
    if (idx_open(&c, &ix, err, sizeof err))
        return 1;
    float v[DIM];
    kbt_rand_unit(v, DIM, 3);
    idx_hits_t h;
    if (idx_search(ix, v, NULL, 0, 10, &h, err, sizeof err) || h.n != 0)
        return 2;
    idx_hits_free(&h);
    if (idx_search(ix, NULL, "any text", 8, 10, &h, err, sizeof err) ||
        h.n != 0)
        return 3;
    idx_hits_free(&h);
    idx_op_t ops[] = {{IDX_OP_UPSERT, "a", "", v, DIM, ""},
                      {IDX_OP_DELETE, "a", NULL, NULL, 0, NULL}};
    uint64_t lsns[2];
    if (idx_write(ix, ops, 1, 0, lsns, NULL, NULL, err, sizeof err) ||
        idx_write(ix, ops + 1, 1, 0, lsns, NULL, NULL, err, sizeof err))
        return 4;
    if (idx_search(ix, v, NULL, 0, 10, &h, err, sizeof err) || h.n != 0)
        return 5;
    idx_hits_free(&h);
    idx_close(&ix);
    return 0;
}

static void test_idx_search_empty_kb(void **state)
{
    kbt_run_isolated("query on an empty knowledge base", empty_kb_child, *state,
                     60000);
}

/* ---------------------------------------------------- reopen / crash */

#define NQ 6

static void snapshot(idx_kb_t *ix, idx_hits_t *out)
{
    for (int i = 0; i < NQ; i++) {
        float q[DIM];
        kbt_rand_unit(q, DIM, 9000 + i);
        out[i] = search(ix, q, 8);
    }
}

static void snapshot_free(idx_hits_t *h)
{
    for (int i = 0; i < NQ; i++)
        idx_hits_free(&h[i]);
}

/* Fails unless ix answers the snapshot queries exactly like `want`. */
static void assert_unchanged_hits(idx_kb_t *ix, idx_hits_t *want)
{
    idx_hits_t now[NQ];
    snapshot(ix, now);
    for (int i = 0; i < NQ; i++)
        assert_same_hits(&want[i], &now[i]);
    snapshot_free(now);
}

/* Fails unless x and y answer every snapshot query alike. */
static void assert_same_answers(idx_kb_t *x, idx_kb_t *y)
{
    idx_hits_t a[NQ];
    snapshot(x, a);
    assert_unchanged_hits(y, a);
    snapshot_free(a);
}

static void test_idx_reopen_rebuilds_same_results(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    leader_history(f->ix);
    idx_stats_t before = stats(f->ix);
    assert_true(before.docs > 5);
    idx_hits_t a[NQ], b[NQ];
    snapshot(f->ix, a);
    idx_close(&f->ix);

    f->ix = kb_open(f->dir, 0, NULL, NULL, NULL);
    idx_stats_t after = stats(f->ix);
    KBT_U64(after.version, before.version);
    KBT_U64(after.commit_us, before.commit_us);
    KBT_U64(after.docs, before.docs);
    KBT_U64(after.vectors, before.vectors);
    snapshot(f->ix, b);
    for (int i = 0; i < NQ; i++)
        assert_same_hits(&a[i], &b[i]);
    snapshot_free(a);
    snapshot_free(b);
}

static void test_idx_crash_after_commit_rebuilds_index(void **state)
{
    fx_t *f = *state;
    /* A child process writes and dies without closing anything (no
     * idx_close, no atexit): only what LMDB committed survives, and the
     * FAISS index must come back from it. */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        idx_config_t c = {.dir = f->dir, .dim = DIM, .metric = "ip"};
        idx_kb_t *ix = NULL;
        char err[512];
        if (idx_open(&c, &ix, err, sizeof err))
            _exit(2);
        float v[DIM];
        for (int i = 0; i < 20; i++) {
            char id[16];
            snprintf(id, sizeof id, "c%d", i % 15); /* 5 replaces */
            kbt_rand_unit(v, DIM, 300 + i);
            idx_op_t o = {IDX_OP_UPSERT, id, "t", v, DIM, ""};
            uint64_t lsn;
            if (idx_write(ix, &o, 1, 0, &lsn, NULL, NULL, err, sizeof err))
                _exit(3);
        }
        idx_op_t d = {IDX_OP_DELETE, "c3", NULL, NULL, 0, NULL};
        uint64_t lsn;
        if (idx_write(ix, &d, 1, 0, &lsn, NULL, NULL, err, sizeof err) ||
            lsn != 21)
            _exit(4);
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);

    f->ix = kb_open(f->dir, 0, NULL, NULL, NULL);
    idx_stats_t s = stats(f->ix);
    KBT_U64(s.version, 21);
    KBT_U64(s.docs, 14);
    KBT_U64(s.vectors, 14);
    /* Every surviving doc is found by its last vector. */
    for (int i = 5; i < 20; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%d", i % 15);
        float v[DIM];
        kbt_rand_unit(v, DIM, 300 + i);
        idx_hits_t h = search(f->ix, v, 1);
        if (i % 15 == 3) {
            assert_true(h.n == 0 || strcmp(h.hit[0].id, "c3") != 0);
        } else {
            assert_int_equal(h.n, 1);
            assert_string_equal(h.hit[0].id, id);
            KBT_NEAR(h.hit[0].score, 1.0, 1e-5);
        }
        idx_hits_free(&h);
    }
}

/* ------------------------------------------------------- apply log */

static void test_idx_apply_log_matches_leader(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "leader");
    leader_history(f->ix);
    f->rep = kb_open(f->dir2, DIM, "ip", NULL, "replica");

    recs_t r;
    read_log(f->ix, 1, &r);
    idx_stats_t ls = stats(f->ix);
    KBT_U64(r.n, ls.version); /* one record per LSN, no holes */
    for (size_t i = 0; i < r.n; i++)
        KBT_U64(r.lsn[i], i + 1);

    /* Applied in three batches of different sizes. */
    char err[512];
    KBT_OK(apply(f->rep, &r, 0, 1, err, sizeof err), err);
    KBT_U64(stats(f->rep).version, 1);
    KBT_OK(apply(f->rep, &r, 1, 6, err, sizeof err), err);
    KBT_U64(stats(f->rep).version, 7);
    KBT_OK(apply(f->rep, &r, 7, r.n - 7, err, sizeof err), err);
    KBT_OK(apply(f->rep, &r, 0, 0, err, sizeof err), err); /* n = 0 */

    idx_stats_t rs = stats(f->rep);
    KBT_U64(rs.version, ls.version);
    KBT_U64(rs.commit_us, ls.commit_us);
    KBT_U64(rs.docs, ls.docs);
    KBT_U64(rs.vectors, ls.vectors);

    assert_same_answers(f->ix, f->rep);
    idx_hits_t ha = search_text(f->ix, "replication log", 3);
    idx_hits_t hb = search_text(f->rep, "replication log", 3);
    assert_same_hits(&ha, &hb);
    assert_string_equal(ha.hit[0].id, "e");
    idx_hits_free(&ha);
    idx_hits_free(&hb);

    /* The replica's log holds the very same bytes (it can serve them). */
    recs_t r2;
    read_log(f->rep, 1, &r2);
    assert_int_equal(r2.n, r.n);
    for (size_t i = 0; i < r.n; i++) {
        assert_int_equal(r2.len[i], r.len[i]);
        assert_memory_equal(r2.data[i], r.data[i], r.len[i]);
    }
    recs_free(&r2);

    /* And the replica survives a reopen with the same answers. */
    idx_close(&f->rep);
    f->rep = kb_open(f->dir2, 0, NULL, NULL, NULL);
    assert_same_answers(f->ix, f->rep);
    recs_free(&r);
}

/* Fails unless rep still answers exactly like `want` and is at version. */
static void assert_unchanged(idx_kb_t *rep, uint64_t version, idx_hits_t *want)
{
    KBT_U64(stats(rep).version, version);
    idx_hits_t now[NQ];
    snapshot(rep, now);
    for (int i = 0; i < NQ; i++)
        assert_same_hits(&want[i], &now[i]);
    snapshot_free(now);
}

static void test_idx_apply_log_gap_and_duplicate_refused(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    leader_history(f->ix);
    f->rep = kb_open(f->dir2, DIM, "ip", NULL, NULL);
    recs_t r;
    read_log(f->ix, 1, &r);
    assert_true(r.n >= 10);
    char err[512];
    KBT_OK(apply(f->rep, &r, 0, 3, err, sizeof err), err); /* at 3 */
    idx_hits_t want[NQ];
    snapshot(f->rep, want);
    idx_stats_t before = stats(f->rep);

    /* Gap: LSN 5 when 4 is expected. */
    KBT_RC(apply(f->rep, &r, 4, 1, err, sizeof err), KB_EGAP, err);
    KBT_CONTAINS(err, "LSN 5");
    KBT_CONTAINS(err, "expected 4");
    KBT_CONTAINS(err, "gap");
    assert_unchanged(f->rep, 3, want);
    /* Duplicate: LSN 3 again, and LSN 1. */
    KBT_RC(apply(f->rep, &r, 2, 1, err, sizeof err), KB_EGAP, err);
    KBT_CONTAINS(err, "duplicate");
    KBT_RC(apply(f->rep, &r, 0, 4, err, sizeof err), KB_EGAP, err);
    assert_unchanged(f->rep, 3, want);
    /* A good record followed by a gap: all or nothing. */
    void *d[2] = {r.data[3], r.data[5]};
    size_t l[2] = {r.len[3], r.len[5]};
    err[0] = 0;
    KBT_RC(idx_apply_log(f->rep, 2, (const void *const *)d, l, err, sizeof err),
           KB_EGAP, err);
    KBT_CONTAINS(err, "#1");
    assert_unchanged(f->rep, 3, want);
    /* Reordered inside one batch. */
    d[0] = r.data[4], d[1] = r.data[3];
    l[0] = r.len[4], l[1] = r.len[3];
    KBT_RC(idx_apply_log(f->rep, 2, (const void *const *)d, l, err, sizeof err),
           KB_EGAP, err);
    /* The same record twice in one batch. */
    d[0] = d[1] = r.data[3];
    l[0] = l[1] = r.len[3];
    KBT_RC(idx_apply_log(f->rep, 2, (const void *const *)d, l, err, sizeof err),
           KB_EGAP, err);
    assert_unchanged(f->rep, 3, want);
    idx_stats_t after = stats(f->rep);
    KBT_U64(after.docs, before.docs);
    KBT_U64(after.commit_us, before.commit_us);
    snapshot_free(want);

    /* After all that, the right next record still applies. */
    KBT_OK(apply(f->rep, &r, 3, r.n - 3, err, sizeof err), err);
    KBT_U64(stats(f->rep).version, r.n);
    recs_free(&r);
}

static void test_idx_apply_log_corrupt_record_is_ebadmsg(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    leader_history(f->ix);
    f->rep = kb_open(f->dir2, DIM, "ip", NULL, NULL);
    recs_t r;
    read_log(f->ix, 1, &r);
    char err[512];
    KBT_OK(apply(f->rep, &r, 0, 2, err, sizeof err), err);
    idx_hits_t want[NQ];
    snapshot(f->rep, want);

    /* Truncated: the doc field ends early. */
    KBT_RC(idx_apply_log(f->rep, 1, (const void *const *)&r.data[2],
                         (size_t[]){r.len[2] - 3}, err, sizeof err),
           KB_EBADMSG, err);
    KBT_CONTAINS(err, "#0");
    assert_unchanged(f->rep, 2, want);
    /* A byte that is no protobuf tag (field 0, wire type 7). */
    unsigned char *bad = malloc(r.len[2]);
    memcpy(bad, r.data[2], r.len[2]);
    bad[0] = 0x07;
    KBT_RC(idx_apply_log(f->rep, 1, (const void *const *)&bad, &r.len[2], err,
                         sizeof err),
           KB_EBADMSG, err);
    assert_unchanged(f->rep, 2, want);
    /* A good record then a corrupt one: neither is applied. */
    unsigned char *cut = malloc(r.len[3]);
    memcpy(cut, r.data[3], r.len[3]);
    void *d[2] = {r.data[2], cut};
    size_t l[2] = {r.len[2], r.len[3] - 2}; /* LSN 4, truncated */
    KBT_RC(idx_apply_log(f->rep, 2, (const void *const *)d, l, err, sizeof err),
           KB_EBADMSG, err);
    KBT_CONTAINS(err, "#1");
    assert_unchanged(f->rep, 2, want);
    free(cut);
    /* ...while both intact records still apply. */
    KBT_OK(apply(f->rep, &r, 2, 2, err, sizeof err), err);
    KBT_U64(stats(f->rep).version, 4);
    free(bad);
    snapshot_free(want);
    recs_free(&r);
}

/* Packs a LogRecord; caller frees. */
static void *pack_rec(const Kbsync__LogRecord *rec, size_t *len)
{
    *len = kbsync__log_record__get_packed_size(rec);
    void *b = malloc(*len ? *len : 1);
    kbsync__log_record__pack(rec, b);
    return b;
}

static void test_idx_apply_log_refuses_bad_records(void **state)
{
    fx_t *f = *state;
    f->rep = kb_open(f->dir2, DIM, "ip", NULL, NULL);
    float v[DIM];
    kbt_rand_unit(v, DIM, 1);
    char err[512];
    struct {
        const char *name;
        int code;
        Kbsync__LogOp op;
        int with_doc;
        size_t nemb;
        float bad_value;
        const char *id;
        const char *meta;
    } cases[] = {
        {"upsert without doc", KB_EBADMSG, KBSYNC__LOG_OP__LOG_OP_UPSERT, 0, 0,
         0, "x", ""},
        {"upsert without embedding", KB_EBADMSG, KBSYNC__LOG_OP__LOG_OP_UPSERT,
         1, 0, 0, "x", ""},
        {"wrong dim", KB_EDIM, KBSYNC__LOG_OP__LOG_OP_UPSERT, 1, DIM - 2, 0,
         "x", ""},
        {"NaN", KB_ENONFINITE, KBSYNC__LOG_OP__LOG_OP_UPSERT, 1, DIM, NAN, "x",
         ""},
        {"empty id", KB_EBADID, KBSYNC__LOG_OP__LOG_OP_UPSERT, 1, DIM, 0, "",
         ""},
        {"bad metadata", KB_EBADJSON, KBSYNC__LOG_OP__LOG_OP_UPSERT, 1, DIM, 0,
         "x", "{oops"},
        {"delete without id", KB_EBADID, KBSYNC__LOG_OP__LOG_OP_DELETE, 0, 0, 0,
         "", ""},
        {"no op", KB_EBADMSG, KBSYNC__LOG_OP__LOG_OP_NONE, 1, DIM, 0, "x", ""},
        {"unknown op", KB_EBADMSG, (Kbsync__LogOp)9, 1, DIM, 0, "x", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float emb[DIM];
        memcpy(emb, v, sizeof v);
        if (cases[i].bad_value != 0) /* NaN != 0 too */
            emb[2] = cases[i].bad_value;
        Kbsync__Doc d = KBSYNC__DOC__INIT;
        d.id = (char *)cases[i].id;
        d.text = "t";
        d.metadata_json = (char *)cases[i].meta;
        d.n_embedding = cases[i].nemb;
        d.embedding = cases[i].nemb ? emb : NULL;
        Kbsync__LogRecord rec = KBSYNC__LOG_RECORD__INIT;
        rec.lsn = 1;
        rec.commit_time_us = 5;
        rec.op = cases[i].op;
        rec.doc = cases[i].with_doc ? &d : NULL;
        rec.id = (char *)cases[i].id;
        size_t len;
        void *b = pack_rec(&rec, &len);
        err[0] = 0;
        int rc = idx_apply_log(f->rep, 1, (const void *const *)&b, &len, err,
                               sizeof err);
        if (rc != cases[i].code)
            fail_msg("%s: got %d (%s), wanted %s; err \"%s\"", cases[i].name,
                     rc, kb_errname(rc), kb_errname(cases[i].code), err);
        assert_true(strlen(err) > 0);
        free(b);
        idx_stats_t st = stats(f->rep);
        KBT_U64(st.version, 0);
        KBT_U64(st.docs, 0);
    }
    /* The same record made valid is accepted. */
    Kbsync__Doc d = KBSYNC__DOC__INIT;
    d.id = "x";
    d.n_embedding = DIM;
    d.embedding = v;
    Kbsync__LogRecord rec = KBSYNC__LOG_RECORD__INIT;
    rec.lsn = 1;
    rec.commit_time_us = 5;
    rec.op = KBSYNC__LOG_OP__LOG_OP_UPSERT;
    rec.doc = &d;
    size_t len;
    void *b = pack_rec(&rec, &len);
    KBT_OK(idx_apply_log(f->rep, 1, (const void *const *)&b, &len, err,
                         sizeof err),
           err);
    free(b);
    idx_stats_t st = stats(f->rep);
    KBT_U64(st.version, 1);
    KBT_U64(st.commit_us, 5);
    KBT_U64(st.docs, 1);
}

/* ------------------------------------------------------ precommit */

typedef struct shipped {
    recs_t recs; /* records seen by precommit, in call order */
    int ends;    /* calls with bytes == NULL */
    int fail_at; /* return 7 at this call (1-based; 0 = never) */
    int calls;
} shipped_t;

static int ship(void *ctx, uint64_t lsn, const void *bytes, size_t len)
{
    shipped_t *s = ctx;
    s->calls++;
    if (bytes)
        copy_rec(&s->recs, lsn, bytes, len);
    else
        s->ends++;
    return s->fail_at && s->calls == s->fail_at ? 7 : 0;
}

static void test_idx_write_precommit_ships_records(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, NULL);
    float v[3][DIM];
    for (int i = 0; i < 3; i++)
        kbt_rand_unit(v[i], DIM, 900 + i);
    write1(f->ix, up("old", "", v[2], ""));

    /* Every new record, in LSN order, then one end call; the missing
     * delete has no record. */
    idx_op_t ops[] = {up("a", "", v[0], ""), rm("nope"),
                      up("b", "", v[1], "{\"k\":1}"), rm("old")};
    uint64_t lsns[4];
    shipped_t sh;
    memset(&sh, 0, sizeof sh);
    char err[512] = "";
    KBT_OK(idx_validate(f->ix, ops, 4, err, sizeof err), err);
    KBT_OK(idx_write(f->ix, ops, 4, 4242, lsns, ship, &sh, err, sizeof err),
           err);
    assert_int_equal(sh.recs.n, 3);
    assert_int_equal(sh.ends, 1);
    assert_int_equal(sh.calls, 4); /* the end call comes last */
    KBT_U64(sh.recs.lsn[0], 2);
    KBT_U64(sh.recs.lsn[1], 3);
    KBT_U64(sh.recs.lsn[2], 4);
    /* ...byte for byte what the log then holds. */
    recs_t r;
    read_log(f->ix, 2, &r);
    assert_int_equal(r.n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(r.len[i], sh.recs.len[i]);
        assert_memory_equal(r.data[i], sh.recs.data[i], r.len[i]);
    }
    recs_free(&r);
    recs_free(&sh.recs);
    KBT_U64(stats(f->ix).version, 4);
    KBT_U64(stats(f->ix).commit_us, 4242);

    /* A precommit failure (on a record, or on the end call) commits
     * nothing, and the LSNs are used by the next write instead. */
    idx_hits_t want[NQ];
    snapshot(f->ix, want);
    for (int fail_at = 1; fail_at <= 3; fail_at++) {
        idx_op_t more[] = {up("c", "", v[2], ""), rm("a")};
        memset(&sh, 0, sizeof sh);
        sh.fail_at = fail_at;
        int rc = idx_write(f->ix, more, 2, 0, lsns, ship, &sh, err, sizeof err);
        assert_int_equal(rc, 7);
        assert_int_equal(sh.calls, fail_at);
        recs_free(&sh.recs);
        idx_stats_t st = stats(f->ix);
        KBT_U64(st.version, 4);
        KBT_U64(st.docs, 2);
        KBT_U64(st.commit_us, 4242);
        assert_unchanged_hits(f->ix, want);
        read_log(f->ix, 5, &r);
        assert_int_equal(r.n, 0);
    }
    snapshot_free(want);
    assert_int_equal(write1(f->ix, up("c", "", v[2], "")), 5);
}


/* ------------------------------------------------------- foreign edits */

/* As an operator's tool editing the data directory would (run by
 * kbt_lmdb_child): the first live document's stored record with its last
 * byte changed. */
static int flip_first_doc(MDB_txn *txn, void *unused)
{
    (void)unused;
    MDB_dbi ids, log;
    MDB_cursor *c;
    MDB_val k, v, lv;
    int rc = mdb_dbi_open(txn, "ids", 0, &ids);
    rc = rc ? rc : mdb_dbi_open(txn, "log", MDB_INTEGERKEY, &log);
    rc = rc ? rc : mdb_cursor_open(txn, ids, &c);
    rc = rc ? rc : mdb_cursor_get(c, &k, &v, MDB_FIRST);
    uint64_t label = 0;
    if (!rc && v.mv_size == sizeof label)
        memcpy(&label, v.mv_data, sizeof label);
    MDB_val lk = {sizeof label, &label};
    rc = rc ? rc : mdb_get(txn, log, &lk, &lv);
    char *copy = rc ? NULL : malloc(lv.mv_size);
    if (!copy)
        return rc ? rc : ENOMEM;
    memcpy(copy, lv.mv_data, lv.mv_size);
    copy[lv.mv_size - 1] ^= 1;
    lv.mv_data = copy;
    rc = mdb_put(txn, log, &lk, &lv, 0);
    free(copy);
    return rc;
}

static void edit_first_doc(const char *dir)
{
    kbt_lmdb_child(dir, flip_first_doc, NULL);
}

/* A document edited by another process is found by a digest check that
 * starts at once, not at the next turn of the schedule (here 10 minutes
 * away): within about a second, also when the node commits writes of its
 * own right after the edit; the node's own writes start none. */
static void test_idx_foreign_edit_starts_a_digest_check(void **state)
{
    fx_t *f = *state;
    idx_config_t c = {.dir = f->dir,
                      .dim = DIM,
                      .nosync = 1,
                      .scrub_ms = 600000};
    char err[512] = "";
    KBT_OK(idx_open(&c, &f->ix, err, sizeof err), err);
    float v[DIM];
    for (int i = 0; i < 50; i++) {
        char id[16];
        kbt_rand_unit(v, DIM, (unsigned)i + 1);
        snprintf(id, sizeof id, "d%d", i);
        write1(f->ix, up(id, "some text", v, ""));
    }
    uint64_t want = idx_check_request(f->ix); /* a pass of all 50 */
    idx_check_t ck;
    for (int i = 0; i < 1000; i++) {
        idx_check_state(f->ix, &ck);
        if (ck.ended >= want)
            break;
        usleep(10000);
    }
    assert_true(ck.ended >= want && ck.last_ok >= want);
    KBT_U64(ck.last_lsn, 50);
    KBT_U64(ck.mismatches, 0);
    KBT_U64(ck.foreign, 0);
    uint64_t passes = ck.passes;
    edit_first_doc(f->dir);
    kbt_rand_unit(v, DIM, 99);
    write1(f->ix, up("after", "written after the edit", v, ""));
    uint64_t t0 = kb_mono_us();
    while (kb_mono_us() - t0 < 3000000u) {
        idx_check_state(f->ix, &ck);
        if (ck.mismatches)
            break;
        usleep(10000);
    }
    assert_true(ck.passes > passes);
    KBT_U64(ck.mismatches, 1);
    KBT_U64(ck.foreign, 1);
    assert_true(ck.bad_stored != ck.bad_scanned);
}

/* Flips the case of the first letter of every copy of needle in DIR's
 * data file with plain writes to the file, past LMDB (as a tool rewriting
 * bytes, or a bit flip written back, would); returns the copies changed.
 * Stale copies in pages LMDB freed are changed too: harmless. */
static int rewrite_in_file(const char *dir, const char *needle)
{
    char path[512];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    char *buf = malloc((size_t)st.st_size);
    assert_non_null(buf);
    assert_int_equal(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
    size_t nl = strlen(needle);
    int n = 0;
    for (char *p = buf; (p = memmem(p, (size_t)(buf + st.st_size - p),
                                    needle, nl)) != NULL;
         p += nl) {
        char c = (char)(*p ^ 0x20);
        assert_int_equal(pwrite(fd, &c, 1, p - buf), 1);
        n++;
    }
    free(buf);
    close(fd);
    return n;
}

/* An idle node does not re-read documents nobody changed: once a pass
 * has checked the store, no scheduled pass runs while LMDB's newest
 * transaction and the data file's size and times stay the same (here the
 * schedule alone would run one every 250 ms). Bytes rewritten in the
 * file past LMDB make a pass due at once, and it finds them. Fails when
 * unchanged stores are checked again and again, and when a write to the
 * file is not noticed. */
static void test_idx_idle_store_is_not_checked_again(void **state)
{
    fx_t *f = *state;
    idx_config_t c = {.dir = f->dir, .dim = DIM, .nosync = 1, .scrub_ms = 1};
    char err[512] = "";
    KBT_OK(idx_open(&c, &f->ix, err, sizeof err), err);
    float v[DIM];
    for (int i = 0; i < 50; i++) {
        char id[16], text[64];
        kbt_rand_unit(v, DIM, (unsigned)i + 1);
        snprintf(id, sizeof id, "d%d", i);
        snprintf(text, sizeof text, "needle-%d-of-an-idle-store", i);
        write1(f->ix, up(id, text, v, ""));
    }
    /* passes go on until one begins 3 s after the last write (file times
     * move in steps: idx_store_stamp's settled), then looks skip them */
    idx_check_t ck = {0};
    uint64_t base = UINT64_MAX;
    for (int i = 0; i < 1500; i++) {
        usleep(10000);
        idx_check_state(f->ix, &ck);
        if (ck.passes && ck.last_lsn == 50 && base == UINT64_MAX)
            base = ck.unchanged;
        if (base != UINT64_MAX && ck.unchanged > base)
            break;
    }
    KBT_U64(ck.last_lsn, 50);
    KBT_U64(ck.mismatches, 0);
    if (base == UINT64_MAX || ck.unchanged <= base)
        fail_msg("no look found the store unchanged in 15 s (%llu passes)",
                 (unsigned long long)ck.passes);
    uint64_t started = ck.started, unchanged = ck.unchanged;
    usleep(1300000);
    idx_check_state(f->ix, &ck);
    if (ck.started != started)
        fail_msg("%llu passes over an unchanged store in 1.3 s",
                 (unsigned long long)(ck.started - started));
    assert_true(ck.unchanged > unchanged);
    assert_true(rewrite_in_file(f->dir, "needle-7-of") >= 1);
    uint64_t t0 = kb_mono_us();
    while (kb_mono_us() - t0 < 3000000u && !ck.mismatches) {
        usleep(10000);
        idx_check_state(f->ix, &ck);
    }
    if (!ck.mismatches)
        fail_msg("bytes rewritten in the data file not found in 3 s (%llu "
                 "passes begun since)",
                 (unsigned long long)(ck.started - started));
    KBT_U64(ck.foreign, 0); /* not through LMDB */
    assert_true(ck.bad_stored != ck.bad_scanned);
}

/* ... but checks it again unchanged_ms after the last pass all the same
 * (here 500 ms; 5 minutes by default). Fails when an unchanged store is
 * never checked again. */
static void test_idx_unchanged_store_is_rechecked(void **state)
{
    fx_t *f = *state;
    idx_config_t c = {.dir = f->dir, .dim = DIM, .nosync = 1, .scrub_ms = 1,
                      .scrub_unchanged_ms = 500};
    char err[512] = "";
    KBT_OK(idx_open(&c, &f->ix, err, sizeof err), err);
    float v[DIM];
    kbt_rand_unit(v, DIM, 7);
    write1(f->ix, up("only", "one document", v, ""));
    idx_check_t ck = {0};
    for (int i = 0; i < 1500 && !ck.unchanged; i++) {
        usleep(10000);
        idx_check_state(f->ix, &ck);
    }
    assert_true(ck.unchanged > 0);
    uint64_t passes = ck.passes;
    for (int i = 0; i < 500 && ck.passes < passes + 2; i++) {
        usleep(10000);
        idx_check_state(f->ix, &ck);
    }
    if (ck.passes < passes + 2)
        fail_msg("an unchanged store was checked %llu times in 5 s with "
                 "a 500 ms re-check",
                 (unsigned long long)(ck.passes - passes));
    KBT_U64(ck.mismatches, 0);
}

/* ------------------------------------------------------- store full */

static void test_idx_write_failure_changes_nothing(void **state)
{
    fx_t *f = *state;
    idx_config_t c = {
        .dir = f->dir, .dim = DIM, .map_size = 2u << 20, .nosync = 1};
    char err[512] = "";
    KBT_OK(idx_open(&c, &f->ix, err, sizeof err), err);
    float v[DIM];
    kbt_rand_unit(v, DIM, 1);
    write1(f->ix, up("small", "s", v, ""));
    idx_hits_t want[NQ];
    snapshot(f->ix, want);

    /* Three 900 KiB docs overflow the 2 MiB map in the middle of the
     * write, after some of it was already put in the transaction. */
    char *big = kbt_repeat('b', 900u << 10);
    float w[DIM];
    kbt_rand_unit(w, DIM, 2);
    idx_op_t ops[] = {up("big1", big, w, ""), up("big2", big, w, ""),
                      up("big3", big, w, ""), rm("small")};
    uint64_t lsns[4];
    KBT_OK(idx_validate(f->ix, ops, 4, err, sizeof err), err);
    int rc = idx_write(f->ix, ops, 4, 0, lsns, NULL, NULL, err, sizeof err);
    KBT_RC(rc, KB_ESTORE, err);
    KBT_CONTAINS(err, "MDB_MAP_FULL");
    free(big);
    idx_stats_t st = stats(f->ix);
    KBT_U64(st.version, 1);
    KBT_U64(st.docs, 1);
    idx_hits_t now[NQ];
    snapshot(f->ix, now);
    for (int i = 0; i < NQ; i++)
        assert_same_hits(&want[i], &now[i]);
    snapshot_free(want);
    snapshot_free(now);
    recs_t r;
    read_log(f->ix, 2, &r);
    assert_int_equal(r.n, 0);

    /* The next write takes LSN 2, as if the failed one never happened. */
    assert_int_equal(write1(f->ix, up("next", "n", w, "")), 2);
    idx_hits_t h = search(f->ix, w, 1);
    assert_string_equal(h.hit[0].id, "next");
    idx_hits_free(&h);
}


/* ------------------------------------------- batches, kinds, filters */

/* Writes docs "<prefix><i>" for i in [from, to) in ONE write, vector
 * seed = vseed + i, metadata from fmt (printf arguments: i % 100, i, i). */
static void write_range(idx_kb_t *ix, const char *prefix, int from, int to,
                        int vseed, const char *fmt)
{
    size_t n = (size_t)(to - from);
    idx_op_t *ops = calloc(n, sizeof *ops);
    float *v = calloc(n * DIM, sizeof *v);
    char(*ids)[32] = calloc(n, 32);
    char(*meta)[128] = calloc(n, 128);
    assert_true(ops && v && ids && meta);
    for (size_t i = 0; i < n; i++) {
        int d = from + (int)i;
        snprintf(ids[i], 32, "%s%d", prefix, d);
        if (fmt)
            snprintf(meta[i], 128, fmt, d % 100, d, d);
        kbt_rand_unit(v + i * DIM, DIM, (uint64_t)(vseed + d));
        ops[i] = up(ids[i], "t", v + i * DIM, fmt ? meta[i] : NULL);
    }
    uint64_t *lsns = calloc(n, sizeof *lsns);
    write_ops(ix, ops, n, lsns);
    free(lsns);
    free(ops);
    free(v);
    free(ids);
    free(meta);
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Writes docs g<from>..g<to-1> of BIG_DIM dims (vector seed = number). */
enum { BIG_DIM = 2048 };
static void write_big(idx_kb_t *ix, int from, int to)
{
    enum { B = 500 };
    idx_op_t ops[B];
    char ids[B][16];
    float *v = malloc((size_t)B * BIG_DIM * sizeof *v);
    uint64_t lsns[B];
    assert_non_null(v);
    for (int at = from; at < to; at += B) {
        int n = to - at < B ? to - at : B;
        for (int i = 0; i < n; i++) {
            snprintf(ids[i], sizeof ids[i], "g%d", at + i);
            kbt_rand_unit(v + (size_t)i * BIG_DIM, BIG_DIM,
                          (uint64_t)(at + i));
            ops[i] = (idx_op_t){IDX_OP_UPSERT, ids[i], "t",
                                v + (size_t)i * BIG_DIM, BIG_DIM, NULL};
        }
        char err[512] = "";
        KBT_OK(idx_write(ix, ops, (size_t)n, 0, lsns, NULL, NULL, err,
                         sizeof err),
               err);
    }
    free(v);
}

/* A large flat index that must grow (here: the first merge after a reopen,
 * whose loaded array has no room) grows beside the searches: a search
 * made while the merger holds the grown copy (paused 1.5 s by the test
 * hook) answers at once, then the swap brings every new document in. Fails
 * when the growth runs in place under the index lock (grows stays 0) or the
 * copy is made holding that lock (searches wait for the pause). */
static void test_idx_flat_grows_beside_searches(void **state)
{
    fx_t *f = *state;
    enum { N0 = 8300, N1 = 4200 }; /* 8,300 x 8 KiB > 64 MiB */
    f->ix = kb_open(f->dir, BIG_DIM, "ip", "Flat", "n1");
    write_big(f->ix, 0, N0);
    idx_close(&f->ix);
    setenv("KBSYNC_TEST_FAULT", "grow-pause-ms:1500", 1);
    f->ix = kb_open(f->dir, 0, NULL, NULL, NULL);
    uint64_t grows0 = stats(f->ix).grows;
    write_big(f->ix, N0, N0 + N1); /* >= IDX_MERGE_MIN: merged at once */
    float *q = malloc(BIG_DIM * sizeof *q);
    assert_non_null(q);
    double t_end = mono_ms() + 1300, worst = 0;
    int searches = 0;
    while (mono_ms() < t_end) {
        kbt_rand_unit(q, BIG_DIM, (uint64_t)(N0 + searches % N1));
        double t0 = mono_ms();
        idx_hits_t h;
        char err[512] = "";
        KBT_OK(idx_search(f->ix, q, NULL, 0, 1, &h, err, sizeof err), err);
        assert_int_equal(h.n, 1); /* found in the delta meanwhile */
        idx_hits_free(&h);
        double dt = mono_ms() - t0;
        worst = dt > worst ? dt : worst;
        searches++;
    }
    unsetenv("KBSYNC_TEST_FAULT");
    assert_true(searches >= 3);
    if (worst > 700)
        fail_msg("a search took %.0f ms while the index grew", worst);
    idx_stats_t st;
    for (int i = 0; i < 1000; i++) {
        st = stats(f->ix);
        if (st.grows > grows0 && st.unmerged == 0)
            break;
        kbt_sleep_ms(10);
    }
    if (st.grows <= grows0 || st.unmerged)
        fail_msg("the index did not grow beside the searches (grows %llu, "
                 "%llu unmerged)",
                 (unsigned long long)st.grows,
                 (unsigned long long)st.unmerged);
    KBT_U64(st.docs, N0 + N1);
    for (int d = 0; d < N0 + N1; d += 997) { /* old and new, from FAISS */
        kbt_rand_unit(q, BIG_DIM, (uint64_t)d);
        idx_hits_t h;
        char err[512] = "", id[16];
        KBT_OK(idx_search(f->ix, q, NULL, 0, 1, &h, err, sizeof err), err);
        snprintf(id, sizeof id, "g%d", d);
        assert_int_equal(h.n, 1);
        assert_string_equal(h.hit[0].id, id);
        idx_hits_free(&h);
    }
    free(q);
}

static void test_idx_search_batch_equals_single_searches(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "n1");
    write_range(f->ix, "d", 0, 500, 100, NULL);
    enum { NB = 16 };
    float q[NB][DIM];
    idx_query_t qs[NB];
    for (int i = 0; i < NB; i++) {
        kbt_rand_unit(q[i], DIM, 9000 + (uint64_t)i);
        qs[i] = (idx_query_t){.vec = q[i], .vec_len = DIM, .k = 1 + i % 7};
    }
    idx_hits_t batch[NB];
    idx_view_t view;
    char err[512] = "";
    KBT_OK(idx_search_batch(f->ix, NB, qs, batch, &view, err, sizeof err),
           err);
    KBT_U64(view.version, 500);
    KBT_U64(view.docs, 500);
    for (int i = 0; i < NB; i++) {
        idx_hits_t one = search(f->ix, q[i], qs[i].k);
        assert_int_equal(batch[i].n, qs[i].k);
        assert_same_hits(&batch[i], &one);
        idx_hits_free(&one);
        idx_hits_free(&batch[i]);
    }
}

/* FOUND: the hits read one query at a time equal the batch's, and with a
 * byte bound the read stops with KB_ETOOBIG at the first hit past it (an
 * answer of exactly the bound is given). */
static void test_idx_found_hits_bounded(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "n1");
    write_range(f->ix, "d", 0, 300, 100, NULL);
    enum { NB = 4, K = 5 };
    float q[NB][DIM];
    idx_query_t qs[NB];
    for (int i = 0; i < NB; i++) {
        kbt_rand_unit(q[i], DIM, 7000 + (uint64_t)i);
        qs[i] = (idx_query_t){.vec = q[i], .vec_len = DIM, .k = K};
    }
    idx_found_t *fd = NULL;
    idx_view_t view;
    char err[512] = "";
    KBT_OK(idx_search_found(f->ix, NB, qs, &fd, &view, err, sizeof err), err);
    assert_non_null(fd);
    KBT_U64(view.version, 300);
    for (int i = 0; i < NB; i++) {
        idx_hits_t all, one = search(f->ix, q[i], K);
        KBT_OK(idx_found_hits(fd, (size_t)i, 0, &all, err, sizeof err), err);
        assert_same_hits(&all, &one);
        size_t b1 = 0, ball = 0;
        for (size_t h = 0; h < all.n; h++) {
            size_t b = strlen(all.hit[h].id) + strlen(all.hit[h].text) +
                       strlen(all.hit[h].metadata) + IDX_HIT_OVERHEAD;
            if (h == 0)
                b1 = b;
            ball += b;
        }
        idx_hits_t cut;
        KBT_OK(idx_found_hits(fd, (size_t)i, ball, &cut, err, sizeof err), err);
        assert_same_hits(&cut, &one);
        idx_hits_free(&cut);
        assert_int_equal(
            idx_found_hits(fd, (size_t)i, b1, &cut, err, sizeof err),
            KB_ETOOBIG);
        assert_int_equal(cut.n, 0);
        assert_non_null(strstr(err, "at hit 2 of the 5 asked for"));
        idx_hits_free(&all);
        idx_hits_free(&one);
    }
    idx_hits_t none;
    assert_int_equal(idx_found_hits(fd, NB, 0, &none, err, sizeof err),
                     KB_EINVAL);
    idx_found_free(&fd);
    assert_null(fd);
}

/* Writer: rewrites the same GEN_DOCS ids with a new generation, one write
 * per generation (more vectors than one exclusive hold adds). Readers:
 * every answer must show exactly one generation, never a mix (the new
 * vectors equal the old ones, so a half-applied write would rank both). */
#define GEN_DOCS 4500
#define GENS 6

typedef struct gen_reader {
    idx_kb_t *ix;
    atomic_int *done;
    int bad, searches;
    char why[256];
} gen_reader_t;

static void *gen_reader_main(void *arg)
{
    gen_reader_t *r = arg;
    float q[DIM];
    kbt_rand_unit(q, DIM, 4242);
    while (!atomic_load(r->done) && !r->bad) {
        idx_query_t qq = {.vec = q, .vec_len = DIM, .k = 200};
        idx_hits_t h;
        idx_view_t v;
        char err[256];
        if (idx_search_batch(r->ix, 1, &qq, &h, &v, err, sizeof err)) {
            snprintf(r->why, sizeof r->why, "search: %.200s", err);
            r->bad = 1;
            break;
        }
        r->searches++;
        if (h.n != 200) {
            snprintf(r->why, sizeof r->why, "%zu hits at version %llu", h.n,
                     (unsigned long long)v.version);
            r->bad = 1;
        }
        for (size_t i = 1; i < h.n && !r->bad; i++)
            if (strcmp(h.hit[i].metadata, h.hit[0].metadata)) {
                snprintf(r->why, sizeof r->why,
                         "version %llu mixes %s and %s",
                         (unsigned long long)v.version, h.hit[0].metadata,
                         h.hit[i].metadata);
                r->bad = 1;
            }
        idx_hits_free(&h);
    }
    return NULL;
}

static void test_idx_search_never_sees_half_applied_write(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "n1");
    char fmt[64];
    snprintf(fmt, sizeof fmt, "{\"gen\":0}");
    write_range(f->ix, "d", 0, GEN_DOCS, 0, fmt);
    atomic_int done = 0;
    gen_reader_t r[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        r[i] = (gen_reader_t){.ix = f->ix, .done = &done};
        assert_int_equal(pthread_create(&th[i], NULL, gen_reader_main, &r[i]),
                         0);
    }
    for (int g = 1; g <= GENS; g++) {
        snprintf(fmt, sizeof fmt, "{\"gen\":%d}", g);
        write_range(f->ix, "d", 0, GEN_DOCS, 0, fmt);
    }
    kbt_sleep_ms(50);
    atomic_store(&done, 1);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        if (r[i].bad)
            fail_msg("reader %d: %s", i, r[i].why);
        assert_true(r[i].searches > 0);
    }
    idx_stats_t st = stats(f->ix);
    KBT_U64(st.docs, GEN_DOCS);
}

/* Replaces and deletes on an index kind; checks that no dead document
 * comes back, now, after a background rebuild and after a reopen. */
static void check_no_dead(idx_kb_t *ix, int ndocs, const char *when)
{
    for (int qi = 0; qi < 20; qi++) {
        float q[DIM];
        kbt_rand_unit(q, DIM, 7000 + (uint64_t)qi);
        idx_query_t qq = {.vec = q, .vec_len = DIM, .k = 50, .ef_search = 200};
        idx_hits_t h;
        idx_view_t v;
        char err[256] = "";
        KBT_OK(idx_search_batch(ix, 1, &qq, &h, &v, err, sizeof err), err);
        for (size_t i = 0; i < h.n; i++) {
            int d = atoi(h.hit[i].id + 1);
            if (d < ndocs / 10)
                fail_msg("%s: deleted doc %s returned", when, h.hit[i].id);
            if (d < ndocs / 2 && strcmp(h.hit[i].metadata, "{\"v\":2}"))
                fail_msg("%s: replaced doc %s returned in its old version %s",
                         when, h.hit[i].id, h.hit[i].metadata);
            for (size_t j = 0; j < i; j++)
                if (!strcmp(h.hit[i].id, h.hit[j].id))
                    fail_msg("%s: %s returned twice", when, h.hit[i].id);
        }
        assert_true(h.n >= 40); /* k live hits still come back */
        idx_hits_free(&h);
    }
}

static void wait_rebuilt(idx_kb_t *ix, uint64_t rebuilds)
{
    for (int i = 0; i < 3000; i++) {
        idx_stats_t st;
        idx_stats(ix, &st);
        if (!st.rebuilding && st.rebuilds >= rebuilds)
            return;
        kbt_sleep_ms(10);
    }
    fail_msg("background rebuild did not finish in 30 s");
}

static void churn_kind(fx_t *f, const char *index, int ndocs)
{
    f->ix = kb_open(f->dir, DIM, "l2", index, "n1");
    write_range(f->ix, "d", 0, ndocs, 0, "{\"v\":1}");
    /* Replace the first half with new vectors, delete the first tenth. */
    write_range(f->ix, "d", 0, ndocs / 2, 50000, "{\"v\":2}");
    for (int d = 0; d < ndocs / 10; d++) {
        char id[16];
        snprintf(id, sizeof id, "d%d", d);
        write1(f->ix, rm(id));
    }
    idx_stats_t st = stats(f->ix);
    KBT_U64(st.docs, (uint64_t)(ndocs - ndocs / 10));
    check_no_dead(f->ix, ndocs, "before rebuild");
    assert_true(st.dead > 0);
    /* Rebuild in the background while writes go on: they are journaled and
     * replayed on the new index. */
    idx_rebuild_start(f->ix); /* 1: the writes above started one */
    write_range(f->ix, "d", ndocs / 10, ndocs / 5, 50000, "{\"v\":2}");
    wait_rebuilt(f->ix, 1);
    st = stats(f->ix);
    KBT_U64(st.docs, (uint64_t)(ndocs - ndocs / 10));
    check_no_dead(f->ix, ndocs, "after rebuild");
    idx_close(&f->ix);
    /* Reopened from the checkpoint idx_close() wrote: its tombstones come
     * back with it (hidden until a rebuild drops them). */
    f->ix = kb_open(f->dir, 0, NULL, NULL, NULL);
    st = stats(f->ix);
    assert_true(st.ckpt_loaded);
    check_no_dead(f->ix, ndocs, "after reopen from the checkpoint");
    idx_close(&f->ix);
    /* Without checkpoints, rebuilt from the store: no dead vectors. */
    idx_config_t c = {.dir = f->dir, .nosync = 1, .ckpt_off = 1};
    char err[512] = "";
    KBT_OK(idx_open(&c, &f->ix, err, sizeof err), err);
    st = stats(f->ix);
    assert_false(st.ckpt_loaded);
    KBT_U64(st.dead, 0);
    check_no_dead(f->ix, ndocs, "after reopen");
}

static void test_idx_flat_replace_delete_never_resurface(void **state)
{
    churn_kind(*state, "Flat", 2000);
}

static void test_idx_hnsw_replace_delete_never_resurface(void **state)
{
    churn_kind(*state, "HNSW16", 2000);
}


/* kill -9 of a node with an HNSW index in the middle of its merges: at
 * reopen, no replaced or deleted document comes back. */
static void test_idx_hnsw_kill9_keeps_deletes(void **state)
{
    fx_t *f = *state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        idx_kb_t *ix = kb_open(f->dir, DIM, "l2", "HNSW16", "n1");
        write_range(ix, "d", 0, 2000, 0, "{\"v\":1}");
        write_range(ix, "d", 0, 1000, 50000, "{\"v\":2}");
        for (int d = 0; d < 200; d++) {
            char id[16];
            snprintf(id, sizeof id, "d%d", d);
            write1(ix, rm(id));
        }
        kill(getpid(), SIGKILL); /* the merger is still at work */
        _exit(9);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    f->ix = kb_open(f->dir, 0, NULL, NULL, NULL);
    idx_stats_t s = stats(f->ix);
    KBT_U64(s.docs, 1800);
    check_no_dead(f->ix, 2000, "after kill -9");
}

static void test_idx_ivf_replace_delete_never_resurface(void **state)
{
    fx_t *f = *state;
    churn_kind(f, "IVF8,Flat", 2000);
    idx_stats_t st = stats(f->ix);
    assert_true(st.trained); /* 1800 docs >= 39 * 8: trained at reopen */
    assert_string_equal(st.kind, "ivf");
}

static void test_idx_ivf_trains_in_background(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", "IVF16,Flat", "n1");
    write_range(f->ix, "d", 0, 300, 0, NULL);
    idx_stats_t st = stats(f->ix);
    assert_false(st.trained); /* 300 < 39 * 16: exact search meanwhile */
    float q[DIM];
    kbt_rand_unit(q, DIM, 77);
    idx_hits_t before = search(f->ix, q, 10);
    write_range(f->ix, "d", 300, 700, 0, NULL); /* passes 624: trains */
    wait_rebuilt(f->ix, 1);
    st = stats(f->ix);
    assert_true(st.trained);
    KBT_U64(st.docs, 700);
    /* nprobe = nlist searches every list: exact again. */
    idx_query_t qq = {.vec = q, .vec_len = DIM, .k = 10, .nprobe = 16};
    idx_hits_t after;
    idx_view_t v;
    char err[256] = "";
    KBT_OK(idx_search_batch(f->ix, 1, &qq, &after, &v, err, sizeof err), err);
    idx_hits_t exact = search(f->ix, q, 10); /* default nprobe */
    assert_int_equal(after.n, 10);
    (void)exact;
    /* The 300 first docs keep their place among the new ones. */
    for (size_t i = 0; i < before.n; i++) {
        int found = 0;
        for (size_t j = 0; j < after.n; j++)
            found |= !strcmp(before.hit[i].id, after.hit[j].id);
        float s = before.hit[i].score;
        if (!found && s > after.hit[after.n - 1].score)
            fail_msg("%s (score %g) missing after training", before.hit[i].id,
                     s);
    }
    idx_hits_free(&after);
    qq.nprobe = 17;
    KBT_RC(idx_check_query(f->ix, &qq, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "nprobe");
    idx_hits_free(&before);
    idx_hits_free(&exact);
}

/* Exact top-k among documents whose metadata matches, by brute force. */
static void test_idx_filter_returns_exactly_the_matching(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "n1");
    /* 10,000 docs: g = i % 100 (1% each), h = i % 2 (half), tag list. */
    write_range(f->ix, "d", 0, 10000, 0,
                "{\"g\":%d,\"h\":\"x%d\",\"tags\":[\"t\",\"u%d\"]}");
    /* Round 0: g = 0, 7, ... (1% each); round 1: h = x<i> (one doc). */
    for (int round = 0; round < 2; round++) {
        const char *key = round ? "h" : "g";
        for (int qi = 0; qi < 5; qi++) {
            float q[DIM];
            kbt_rand_unit(q, DIM, 300 + (uint64_t)qi);
            char val[16];
            snprintf(val, sizeof val, round ? "x%d" : "%d",
                     round ? qi * 2 : qi * 7);
            idx_filter_kv_t fl = {key, val};
            idx_query_t qq = {.vec = q,
                              .vec_len = DIM,
                              .k = 10,
                              .filters = &fl,
                              .nfilters = 1};
            idx_hits_t h;
            idx_view_t v;
            char err[256] = "";
            KBT_OK(idx_search_batch(f->ix, 1, &qq, &h, &v, err, sizeof err),
                   err);
            /* brute force over the matching docs */
            int want = round ? 1 : 10; /* x<i> matches one doc */
            assert_int_equal(h.n, (size_t)want);
            for (size_t i = 0; i < h.n; i++) {
                int d = atoi(h.hit[i].id + 1);
                if (round)
                    assert_int_equal(d, qi * 2);
                else
                    assert_int_equal(d % 100, qi * 7);
            }
            float best = -1e30f;
            for (int d = 0; d < 10000; d++) {
                if (round ? d != qi * 2 : d % 100 != qi * 7)
                    continue;
                float x[DIM];
                kbt_rand_unit(x, DIM, (uint64_t)d);
                float s = (float)kbt_dot(q, x, DIM);
                if (s > best)
                    best = s;
            }
            KBT_NEAR(h.hit[0].score, best, 1e-4);
            idx_hits_free(&h);
        }
    }
    /* A broad filter (every doc has tag t): k hits, through the index. */
    float q[DIM];
    kbt_rand_unit(q, DIM, 5);
    idx_filter_kv_t fl[2] = {{"tags", "t"}, {"tags", "u9"}};
    idx_query_t qq = {
        .vec = q, .vec_len = DIM, .k = 10, .filters = fl, .nfilters = 1};
    idx_hits_t h, plain = search(f->ix, q, 10);
    idx_view_t v;
    char err[256] = "";
    KBT_OK(idx_search_batch(f->ix, 1, &qq, &h, &v, err, sizeof err), err);
    assert_same_hits(&h, &plain);
    idx_hits_free(&h);
    qq.nfilters = 2; /* all must hold: only d9 */
    KBT_OK(idx_search_batch(f->ix, 1, &qq, &h, &v, err, sizeof err), err);
    assert_int_equal(h.n, 1);
    assert_string_equal(h.hit[0].id, "d9");
    idx_hits_free(&h);
    idx_hits_free(&plain);
    /* Deleted and replaced documents leave the filter's results. */
    write1(f->ix, rm("d9"));
    KBT_OK(idx_search_batch(f->ix, 1, &qq, &h, &v, err, sizeof err), err);
    assert_int_equal(h.n, 0);
    idx_hits_free(&h);
}

/* Filter values are numbers as written; a number beyond the double range
 * is accepted by validation, so the filter index must take it too (it once
 * failed after the commit, and the node aborted and could not reopen). */
static size_t filter_hits(idx_kb_t *ix, const char *key, const char *val)
{
    float q[DIM];
    kbt_rand_unit(q, DIM, 1);
    idx_filter_kv_t fl = {key, val};
    idx_query_t qq = {
        .vec = q, .vec_len = DIM, .k = 10, .filters = &fl, .nfilters = 1};
    idx_hits_t h;
    idx_view_t v;
    char err[256] = "";
    KBT_OK(idx_search_batch(ix, 1, &qq, &h, &v, err, sizeof err), err);
    size_t n = h.n;
    idx_hits_free(&h);
    return n;
}

static void test_idx_filter_numbers_as_written(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "n1");
    float x[DIM];
    kbt_rand_unit(x, DIM, 2);
    write1(f->ix, up("big", NULL, x, "{\"n\": 1e400, \"m\": 123456789012345678901234}"));
    write1(f->ix, up("e2", NULL, x, "{\"n\": 1e2}"));
    write1(f->ix, up("hundred", NULL, x, "{\"n\": 100}"));
    /* As written; then reopened from the checkpoint written at close; then
     * reopened without it, the postings rebuilt from the stored documents. */
    for (int pass = 0; pass < 3; pass++) {
        assert_int_equal(filter_hits(f->ix, "n", "1e400"), 1);
        assert_int_equal(filter_hits(f->ix, "m", "123456789012345678901234"), 1);
        assert_int_equal(filter_hits(f->ix, "n", "1e2"), 1);
        assert_int_equal(filter_hits(f->ix, "n", "100"), 1);
        assert_int_equal(filter_hits(f->ix, "n", "100.0"), 0);
        idx_stats_t st = stats(f->ix);
        if (pass == 1)
            assert_true(st.ckpt_loaded);
        if (pass == 2)
            assert_false(st.ckpt_loaded);
        idx_close(&f->ix);
        if (pass == 1) {
            char ck[600];
            kbt_path(ck, sizeof ck, f->dir, "index.ckpt");
            assert_int_equal(unlink(ck), 0);
        }
        f->ix = kb_open(f->dir, 0, NULL, NULL, NULL);
    }
}

static void test_idx_filter_and_param_bounds(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "cosine", NULL, "n1");
    float q[DIM], zero[DIM] = {0};
    kbt_rand_unit(q, DIM, 1);
    char err[256];
    idx_filter_kv_t fl[IDX_MAX_FILTERS + 1];
    for (int i = 0; i <= IDX_MAX_FILTERS; i++)
        fl[i] = (idx_filter_kv_t){"k", "v"};
    idx_query_t qq = {.vec = q, .vec_len = DIM, .k = 10};
    qq.ef_search = IDX_MAX_EF_SEARCH + 1;
    KBT_RC(idx_check_query(f->ix, &qq, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "ef_search");
    qq.ef_search = 0;
    qq.filters = fl;
    qq.nfilters = IDX_MAX_FILTERS + 1;
    KBT_RC(idx_check_query(f->ix, &qq, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "filters");
    fl[0].key = "";
    qq.nfilters = 1;
    KBT_RC(idx_check_query(f->ix, &qq, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "key");
    qq.nfilters = 0;
    qq.vec = zero;
    KBT_RC(idx_check_query(f->ix, &qq, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "zeros");
    /* Cosine scores are cosine similarities whatever the length. */
    float big[DIM];
    for (int i = 0; i < DIM; i++)
        big[i] = q[i] * 50;
    write1(f->ix, up("a", "x", big, ""));
    idx_hits_t h = search(f->ix, q, 1);
    assert_int_equal(h.n, 1);
    KBT_NEAR(h.hit[0].score, 1.0, 1e-4);
    idx_hits_free(&h);
    idx_op_t z = up("z", "x", zero, "");
    KBT_RC(idx_validate(f->ix, &z, 1, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "zero");
    /* Tiny components (subnormal floats, whose float norm underflows and
     * whose inverse overflows) still have a direction: a unit vector in the
     * index and in the unmerged delta alike, never an infinite or NaN score. */
    float tiny[DIM] = {0}, tiny2[DIM] = {0};
    tiny[0] = tiny[1] = 1e-40f;
    tiny2[0] = 1e-40f;
    write1(f->ix, up("tiny", "x", tiny, ""));
    write1(f->ix, up("tiny2", "x", tiny2, ""));
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0 searches the unmerged delta (the merger waits 200 ms; on
         * a machine too busy for that the pass still checks the index) */
        if (pass == 0 && stats(f->ix).unmerged == 0)
            fprintf(stderr, "note: the delta was merged before the search\n");
        h = search(f->ix, tiny, 3);
        assert_int_equal(h.n, 3);
        assert_string_equal(h.hit[0].id, "tiny");
        KBT_NEAR(h.hit[0].score, 1.0, 1e-4);
        assert_string_equal(h.hit[1].id, "tiny2");
        KBT_NEAR(h.hit[1].score, 0.70710678, 1e-4);
        for (size_t i = 0; i < h.n; i++)
            assert_true(isfinite(h.hit[i].score));
        idx_hits_free(&h);
        /* Reopened: every vector is in the FAISS index, none in the delta. */
        idx_close(&f->ix);
        f->ix = kb_open(f->dir, 0, NULL, NULL, NULL);
    }
}

/* A snapshot: the leader's log is compacted (only live documents stay
 * below its log start), then streamed from LSN 1 into an empty replica that
 * is loading. The gaps are refused unless it is loading; it answers no
 * search until it is complete (also after a reopen part way); then it
 * answers exactly as the leader. */
static void test_idx_snapshot_of_compacted_log_matches_leader(void **state)
{
    fx_t *f = *state;
    char err[512] = "";
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "leader");
    leader_history(f->ix);
    leader_history(f->ix); /* replaces the same ids: superseded records */
    usleep(1100000);       /* compaction stays behind searches (>= 100 ms) */
    uint64_t removed = 0, bytes = 0;
    KBT_OK(idx_compact(f->ix, UINT64_MAX, UINT64_MAX, 100000, &removed, &bytes, err,
                       sizeof err),
           err);
    assert_true(removed > 0);
    const uint64_t start = idx_log_start(f->ix);
    idx_stats_t ls = stats(f->ix);
    KBT_U64(start, ls.version); /* all but the newest record */
    recs_t r;
    read_log(f->ix, 1, &r);
    assert_true(r.n < ls.version); /* the documents table has gaps */
    assert_true(r.lsn[0] > 1);

    idx_config_t c = {.dir = f->dir2, .dim = DIM, .metric = "ip",
                      .node_id = "replica", .nosync = 1, .replica = 1};
    KBT_OK(idx_open(&c, &f->rep, err, sizeof err), err);
    KBT_RC(apply(f->rep, &r, 0, 1, err, sizeof err), KB_EGAP, err);
    KBT_OK(idx_set_loading(f->rep, start - 1, 0, err, sizeof err), err);
    KBT_OK(apply(f->rep, &r, 0, 2, err, sizeof err), err);
    idx_hits_t h;
    float q[DIM];
    kbt_rand_unit(q, DIM, 1);
    KBT_RC(idx_search(f->rep, q, NULL, 0, 5, &h, err, sizeof err),
           KB_EUNAVAIL, err);
    /* A restart part way remembers that the copy is partial. */
    idx_close(&f->rep);
    KBT_OK(idx_open(&c, &f->rep, err, sizeof err), err);
    KBT_U64(idx_loading(f->rep), start - 1);
    KBT_OK(apply(f->rep, &r, 2, r.n - 2, err, sizeof err), err);
    KBT_U64(idx_loading(f->rep), 0);
    idx_stats_t rs = stats(f->rep);
    KBT_U64(rs.version, ls.version);
    KBT_U64(rs.docs, ls.docs);
    assert_same_answers(f->ix, f->rep);
    recs_free(&r);
}

/* The nice value of this process's thread named `name` (/proc), or -100
 * when there is none. */
static int thread_nice(const char *name)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int nice = -100;
    while (d && nice == -100 && (e = readdir(d))) {
        char path[300], comm[64] = "", stat[1024];
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (!fgets(comm, sizeof comm, f))
            comm[0] = 0;
        fclose(f);
        comm[strcspn(comm, "\n")] = 0;
        if (strcmp(comm, name))
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
        if (!(f = fopen(path, "r")))
            continue;
        size_t n = fread(stat, 1, sizeof stat - 1, f);
        fclose(f);
        stat[n] = 0;
        /* after "(comm) ": state, then fields 4..19; nice is field 19 */
        const char *p = strrchr(stat, ')');
        int field = 2;
        for (; p && *p && field < 19; p++)
            if (*p == ' ')
                field++;
        if (p && field == 19)
            nice = atoi(p);
    }
    if (d)
        closedir(d);
    return nice;
}

/* The background digest check runs below the node's other threads (nice
 * 10): on a busy machine readers and writers come first. Fails when the
 * thread keeps the process's nice value. */
static void test_idx_digest_check_thread_is_niced(void **state)
{
    fx_t *f = *state;
    errno = 0;
    int own = getpriority(PRIO_PROCESS, 0);
    if (errno == 0 && own >= 10)
        skip(); /* already at 10 or below: nothing to see */
    idx_config_t c = {.dir = f->dir2, .dim = DIM, .metric = "ip",
                      .node_id = "replica", .nosync = 1, .replica = 1,
                      .scrub_ms = 1};
    char err[512] = "";
    KBT_OK(idx_open(&c, &f->rep, err, sizeof err), err);
    int nice = -100;
    for (int i = 0; i < 100 && nice != 10; i++) {
        usleep(10000); /* the thread sets it when it starts */
        nice = thread_nice("kb-scrub");
    }
    if (nice != 10)
        fail_msg("the digest check thread runs at nice %d (want 10)", nice);
}

/* While writes flow, a scheduled digest check gives way rather than hold
 * its read transaction past the hold limit (LMDB could not reuse the pages
 * the writes free, and the data file would grow); once the writes stop, a
 * pass runs to the end. Here the limit is 1 ms and a pass reads 20,000
 * documents. Fails when scheduled passes get no limit. */
static void test_idx_scheduled_check_gives_way_to_writes(void **state)
{
    fx_t *f = *state;
    idx_config_t c = {.dir = f->dir, .dim = DIM, .metric = "ip",
                      .nosync = 1, .scrub_ms = 1, .scrub_hold_ms = 1};
    char err[512] = "";
    KBT_OK(idx_open(&c, &f->ix, err, sizeof err), err);
    for (int i = 0; i < 20000; i += 5000)
        write_range(f->ix, "d", i, i + 5000, 1, NULL);
    idx_check_t ck = {0};
    double t0 = mono_ms();
    /* a pass that gave way sets the next one 30 x its duration later:
     * seconds under TSan on a loaded machine */
    for (int i = 0; mono_ms() - t0 < 30000 && ck.yielded < 2; i++) {
        write_range(f->ix, "w", i % 100, i % 100 + 1, i, NULL);
        idx_check_state(f->ix, &ck);
    }
    if (ck.yielded < 2)
        fail_msg("no scheduled pass gave way to 30 s of writes (%llu passes "
                 "completed, the last in %llu ms)",
                 (unsigned long long)ck.passes,
                 (unsigned long long)ck.last_ms);
    /* quiet: the next pass completes, and finds the documents intact */
    uint64_t passes = ck.passes, lsn = 0;
    idx_state(f->ix, &lsn, NULL);
    for (int i = 0; i < 3000 && !(ck.passes > passes && ck.last_lsn == lsn);
         i++) {
        usleep(10000);
        idx_check_state(f->ix, &ck);
    }
    assert_true(ck.passes > passes);
    KBT_U64(ck.last_lsn, lsn);
    KBT_U64(ck.mismatches, 0);
}

/* While a snapshot is being loaded no scheduled digest check runs (its
 * documents are checked once complete); a requested one still does, and
 * the schedule resumes when the snapshot is complete. */
static void test_idx_no_scheduled_check_while_loading(void **state)
{
    fx_t *f = *state;
    idx_config_t c = {.dir = f->dir2, .dim = DIM, .metric = "ip",
                      .node_id = "replica", .nosync = 1, .replica = 1,
                      .scrub_ms = 1, .scrub_unchanged_ms = 1};
    /* (unchanged_ms 1: an idle store would otherwise get no pass either,
     * and the pause could go unnoticed) */
    char err[512] = "";
    KBT_OK(idx_open(&c, &f->rep, err, sizeof err), err);
    KBT_OK(idx_set_loading(f->rep, 20, 20, err, sizeof err), err);
    idx_check_t ck;
    usleep(300000); /* a pass that had begun before has ended */
    idx_check_state(f->rep, &ck);
    uint64_t started = ck.started;
    usleep(1200000); /* without the pause: about four passes */
    idx_check_state(f->rep, &ck);
    KBT_U64(ck.started, started);
    uint64_t want = idx_check_request(f->rep);
    for (int i = 0; i < 300 && ck.ended < want; i++) {
        usleep(10000);
        idx_check_state(f->rep, &ck);
    }
    assert_true(ck.ended >= want);
    /* the snapshot completes: LSN 1..20 */
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "leader");
    write_range(f->ix, "d", 0, 20, 1, NULL);
    recs_t r;
    read_log(f->ix, 1, &r);
    KBT_OK(apply(f->rep, &r, 0, r.n, err, sizeof err), err);
    assert_false(idx_loading(f->rep));
    started = ck.started;
    for (int i = 0; i < 200 && ck.started <= started + 1; i++) {
        usleep(10000);
        idx_check_state(f->rep, &ck);
    }
    assert_true(ck.started > started + 1);
    recs_free(&r);
}

/* The leader keeps the newest operations (the keep window) above its log
 * start, and sweeps the documents-table records they replaced: the table
 * alone is then NOT the state at the snapshot's LSN (start - 1), it lacks
 * those documents. A replica must not serve (nor check its digest) before
 * it has applied the kept operations too, up to the leader's head when the
 * snapshot began (`ready`). Found by bench/run_storage.sh: a new replica
 * served 92,001 of 100,000 documents at LSN 392,000, failed its digest
 * check and started over, again and again. Fails when `ready` is ignored. */
static void test_idx_snapshot_served_only_with_the_kept_operations(void **state)
{
    fx_t *f = *state;
    char err[512] = "";
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "leader");
    write_range(f->ix, "d", 0, 20, 1, NULL);  /* LSN 1..20 */
    write_range(f->ix, "d", 0, 10, 50, NULL); /* LSN 21..30 replace d0..d9 */
    usleep(1100000); /* compaction stays behind searches (>= 100 ms) */
    uint64_t removed = 0, bytes = 0;
    KBT_OK(idx_compact(f->ix, 21, UINT64_MAX, 100000, &removed, &bytes, err,
                       sizeof err),
           err);
    KBT_U64(idx_log_start(f->ix), 21);
    recs_t r;
    read_log(f->ix, 1, &r);
    size_t k = 0; /* the documents table: records below the log start */
    while (k < r.n && r.lsn[k] < 21)
        k++;
    KBT_U64(r.lsn[k - 1], 20); /* the record at log start - 1 stays */
    KBT_U64(r.n - k, 10);      /* the kept operations 21..30 */
    if (k >= 20)
        fail_msg("no documents-table record was swept (%zu kept)", k);

    idx_config_t c = {.dir = f->dir2, .dim = DIM, .metric = "ip",
                      .node_id = "replica", .nosync = 1, .replica = 1};
    KBT_OK(idx_open(&c, &f->rep, err, sizeof err), err);
    KBT_OK(idx_set_loading(f->rep, 20, 30, err, sizeof err), err);
    KBT_OK(apply(f->rep, &r, 0, k, err, sizeof err), err); /* to LSN 20 */
    if (!idx_loading(f->rep))
        fail_msg("served at LSN 20 with %llu of the leader's 20 documents",
                 (unsigned long long)idx_store_docs(f->rep));
    /* the snapshot's documents replaced nothing: no undo entries */
    KBT_U64(idx_undo_count(f->rep), 0);
    float q[DIM];
    kbt_rand_unit(q, DIM, 3);
    idx_hits_t h;
    KBT_RC(idx_search(f->rep, q, NULL, 0, 5, &h, err, sizeof err),
           KB_EUNAVAIL, err);
    /* Both marks survive a restart. */
    idx_close(&f->rep);
    KBT_OK(idx_open(&c, &f->rep, err, sizeof err), err);
    KBT_U64(idx_loading(f->rep), 20);
    KBT_OK(apply(f->rep, &r, k, 9, err, sizeof err), err); /* to LSN 29 */
    assert_true(idx_loading(f->rep) != 0);
    KBT_OK(apply(f->rep, &r, k + 9, 1, err, sizeof err), err); /* LSN 30 */
    KBT_U64(idx_loading(f->rep), 0);
    KBT_U64(stats(f->rep).docs, 20);
    /* the log after the snapshot (21..30, each replacing a document): an
     * undo entry for every write */
    KBT_U64(idx_undo_count(f->rep), 10);
    assert_same_answers(f->ix, f->rep);
    recs_free(&r);
}

/* A snapshot walks the documents table in LSN order while writes go on. A
 * document the walk has not reached yet, replaced after the snapshot's LSN,
 * must still be sent in its old version: the replica's state at that LSN
 * holds it. The leader bounds the sweep by the snapshot (sweep_max); the
 * same sweep without the bound drops those old versions. */
static void sweep_case(fx_t *f, int bounded, uint64_t *docs_at_snapshot)
{
    char err[512] = "";
    float v[DIM];
    char id[16];
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "s%d", i);
        kbt_rand_unit(v, DIM, 900 + (uint64_t)i);
        write1(f->ix, up(id, "first", v, ""));
    }
    write1(f->ix, up("last", "x", v, "")); /* the log starts after s39 */
    usleep(1100000); /* compaction stays behind searches (>= 100 ms) */
    uint64_t removed = 0, bytes = 0;
    KBT_OK(idx_compact(f->ix, UINT64_MAX, UINT64_MAX, 100000, &removed,
                       &bytes, err, sizeof err),
           err);
    const uint64_t snap = idx_log_start(f->ix) - 1;
    KBT_U64(snap, 40);
    /* the walk has sent s0..s19 (LSNs 1..20) when s20..s39 are replaced */
    for (int i = 20; i < 40; i++) {
        snprintf(id, sizeof id, "s%d", i);
        kbt_rand_unit(v, DIM, 1900 + (uint64_t)i);
        write1(f->ix, up(id, "second", v, ""));
    }
    usleep(1100000);
    KBT_OK(idx_compact(f->ix, idx_log_start(f->ix), bounded ? snap + 1
                                                          : UINT64_MAX,
                       100000, &removed, &bytes, err, sizeof err),
           err);
    /* the rest of the documents table, up to the snapshot's LSN */
    recs_t r;
    read_log(f->ix, 1, &r);
    idx_config_t c = {.dir = f->dir2, .dim = DIM, .metric = "ip",
                      .node_id = "replica", .nosync = 1, .replica = 1};
    KBT_OK(idx_open(&c, &f->rep, err, sizeof err), err);
    KBT_OK(idx_set_loading(f->rep, snap, 0, err, sizeof err), err);
    size_t n = 0;
    while (n < r.n && r.lsn[n] <= snap)
        n++;
    KBT_OK(apply(f->rep, &r, 0, n, err, sizeof err), err);
    *docs_at_snapshot = stats(f->rep).docs;
    recs_free(&r);
}

static void test_idx_sweep_keeps_what_a_snapshot_needs(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "leader");
    uint64_t docs;
    sweep_case(f, 1, &docs);
    KBT_U64(docs, 40); /* s0..s39: the state at the snapshot LSN */
}

static void test_idx_unbounded_sweep_loses_snapshot_documents(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "leader");
    uint64_t docs;
    sweep_case(f, 0, &docs);
    assert_true(docs < 40); /* the hazard the bound exists for */
}

/* Compaction removes the records of replaced documents; a search running
 * meanwhile, at a version where they were live, must still find them:
 * 64 documents, k = 20, every answer has 20 hits. */
typedef struct churn {
    idx_kb_t *ix;
    int stop; /* __atomic */
    long searches, short_answers;
} churn_t;

static void *churn_reader(void *arg)
{
    churn_t *c = arg;
    float q[DIM];
    kbt_rand_unit(q, DIM, 7);
    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        idx_hits_t h;
        char err[256];
        if (idx_search(c->ix, q, NULL, 0, 20, &h, err, sizeof err) == 0) {
            if (h.n < 20)
                c->short_answers++;
            idx_hits_free(&h);
        }
        c->searches++;
    }
    return NULL;
}

static void test_idx_search_during_compaction_misses_nothing(void **state)
{
    fx_t *f = *state;
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "leader");
    float v[64][DIM];
    char ids[64][8];
    idx_op_t ops[64];
    uint64_t lsns[64];
    for (int i = 0; i < 64; i++) {
        kbt_rand_unit(v[i], DIM, 900 + i);
        snprintf(ids[i], sizeof ids[i], "d%d", i);
        ops[i] = up(ids[i], "x", v[i], NULL);
    }
    write_ops(f->ix, ops, 64, lsns);
    churn_t c = {.ix = f->ix};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, churn_reader, &c), 0);
    uint64_t t0 = kb_mono_us(), removed_total = 0;
    for (long w = 0; kb_mono_us() - t0 < 2500000u; w++) {
        int k = (int)(w % 64);
        kbt_rand_unit(v[k], DIM, 2000 + (uint64_t)w);
        write_ops(f->ix, &ops[k], 1, lsns);
        uint64_t removed = 0, bytes = 0;
        char err[256] = "";
        KBT_OK(idx_compact(f->ix, UINT64_MAX, UINT64_MAX, 4096, &removed, &bytes, err,
                           sizeof err),
               err);
        removed_total += removed;
    }
    __atomic_store_n(&c.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    assert_true(removed_total > 0); /* compaction did run */
    assert_true(c.searches > 0);
    if (c.short_answers)
        fail_msg("%ld of %ld answers had fewer than 20 of 64 documents",
                 c.short_answers, c.searches);
}

/* A store of format 1 (before undo entries were kept on every node) is
 * upgraded in place at open: every document stays; compaction afterwards
 * judges the older writes by the id map, and a document deleted before the
 * upgrade is never taken for a live one (snapshots skip such records). */
static void test_idx_format1_store_is_upgraded_in_place(void **state)
{
    fx_t *f = *state;
    char err[512] = "";
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "leader");
    leader_history(f->ix); /* a, c deleted; b, f replaced */
    idx_stats_t before = stats(f->ix);
    idx_close(&f->ix);
    /* Make it format 1: settings say so, and no undo_from. */
    idx_store_t *st = NULL;
    KBT_OK(idx_store_open(f->dir, 0, 1, &st, err, sizeof err), err);
    Kbsync__KbMeta *m = NULL;
    KBT_OK(idx_store_get_meta(st, &m, err, sizeof err), err);
    m->format_version = 1;
    KBT_OK(idx_store_put_meta(st, m, err, sizeof err), err);
    kbsync__kb_meta__free_unpacked(m, NULL);
    KBT_OK(idx_store_set_u64(st, "undo_from", 0, err, sizeof err), err);
    idx_store_close(&st);

    f->ix = kb_open(f->dir, DIM, "ip", NULL, "leader");
    const Kbsync__KbMeta *nm = idx_meta(f->ix);
    assert_int_equal(nm->format_version, 2);
    KBT_U64(idx_undo_from(f->ix), before.version + 1);
    idx_stats_t after = stats(f->ix);
    KBT_U64(after.version, before.version);
    KBT_U64(after.docs, before.docs);
    /* The first record (upsert of "a", deleted since) is not live. */
    recs_t r;
    read_log(f->ix, 1, &r);
    assert_true(r.n > 0);
    KBT_U64(r.lsn[0], 1);
    assert_int_equal(idx_record_is_live(f->ix, 1, r.data[0], r.len[0]), 0);
    recs_free(&r);
    /* Compacting everything keeps every live document searchable. */
    usleep(1100000);
    uint64_t removed = 0, bytes = 0;
    KBT_OK(idx_compact(f->ix, UINT64_MAX, UINT64_MAX, 100000, &removed, &bytes, err,
                       sizeof err),
           err);
    assert_true(removed > 0);
    idx_close(&f->ix);
    f->ix = kb_open(f->dir, DIM, "ip", NULL, "leader");
    KBT_U64(stats(f->ix).docs, before.docs);
    idx_hits_t h = search_text(f->ix, "replication log", 3);
    assert_string_equal(h.hit[0].id, "e");
    idx_hits_free(&h);
}

int main(void)
{
    kb_log_setup(KB_LOG_WARN, "test_idx");
    idx_vec_setup(1);
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_idx_create_needs_dim),
        T(test_idx_create_bad_settings),
        T(test_idx_reopen_mismatch_names_both_values),
        T(test_idx_write_and_search),
        T(test_idx_l2_metric_scores),
        T(test_idx_upsert_replaces),
        T(test_idx_list_pages_by_prefix),
        T(test_idx_same_id_twice_in_one_write),
        T(test_idx_delete),
        T(test_idx_missing_delete_takes_no_lsn),
        T(test_idx_validate_errors_change_nothing),
        T(test_idx_text_only_doc_is_embedded_and_found),
        T(test_idx_search_errors),
        T(test_idx_search_empty_kb),
        T(test_idx_reopen_rebuilds_same_results),
        T(test_idx_crash_after_commit_rebuilds_index),
        T(test_idx_apply_log_matches_leader),
        T(test_idx_apply_log_gap_and_duplicate_refused),
        T(test_idx_apply_log_corrupt_record_is_ebadmsg),
        T(test_idx_apply_log_refuses_bad_records),
        T(test_idx_write_precommit_ships_records),
        T(test_idx_write_failure_changes_nothing),
        T(test_idx_foreign_edit_starts_a_digest_check),
        T(test_idx_idle_store_is_not_checked_again),
        T(test_idx_unchanged_store_is_rechecked),
        T(test_idx_search_batch_equals_single_searches),
        T(test_idx_found_hits_bounded),
        T(test_idx_flat_grows_beside_searches),
        T(test_idx_search_never_sees_half_applied_write),
        T(test_idx_flat_replace_delete_never_resurface),
        T(test_idx_hnsw_replace_delete_never_resurface),
        T(test_idx_hnsw_kill9_keeps_deletes),
        T(test_idx_ivf_replace_delete_never_resurface),
        T(test_idx_ivf_trains_in_background),
        T(test_idx_filter_returns_exactly_the_matching),
        T(test_idx_filter_and_param_bounds),
        T(test_idx_filter_numbers_as_written),
        T(test_idx_snapshot_of_compacted_log_matches_leader),
        T(test_idx_snapshot_served_only_with_the_kept_operations),
        T(test_idx_digest_check_thread_is_niced),
        T(test_idx_no_scheduled_check_while_loading),
        T(test_idx_scheduled_check_gives_way_to_writes),
        T(test_idx_sweep_keeps_what_a_snapshot_needs),
        T(test_idx_unbounded_sweep_loses_snapshot_documents),
        T(test_idx_search_during_compaction_misses_nothing),
        T(test_idx_format1_store_is_upgraded_in_place),
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (live)
        fx_free(live);
    return failed;
}
