/* test_idx_ckpt: vector index checkpoints (indexer/idx_ckpt.h through
 * idx.h) = real LMDB in a fresh /tmp directory + real FAISS. In: writes,
 * checkpoints, writes after them, damaged or foreign checkpoint files. Out:
 * pass/fail on "a checkpoint plus the later writes answers exactly as a
 * rebuild from the store", on every damaged or mismatched checkpoint being
 * ignored (the index is rebuilt and answers the same), and on the
 * checkpoint being used when it is good. */
#include "kb_test.h"

#include "idx.h"
#include "kb_err.h"
#include "kb_util.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#define DIM 16
#define NQ 40

typedef struct fx {
    char tmp[256];
    char dir[300];
    char dir2[300];
    char ckpt[400]; /* DIR/index.ckpt */
    char saved[400];
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    kbt_tmpdir(f->tmp, sizeof f->tmp, "ckpt");
    kbt_path(f->dir, sizeof f->dir, f->tmp, "kb");
    kbt_path(f->dir2, sizeof f->dir2, f->tmp, "kb2");
    snprintf(f->ckpt, sizeof f->ckpt, "%s/index.ckpt", f->dir);
    snprintf(f->saved, sizeof f->saved, "%s/saved.ckpt", f->tmp);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    kbt_rmrf(f->tmp);
    free(f);
    return 0;
}

/* Opens dir; ckpt_off = 1 rebuilds from the store whatever is on disk. */
static idx_kb_t *open_kb(const char *dir, const char *index, int ckpt_off)
{
    idx_config_t c = {.dir = dir,
                      .dim = DIM,
                      .metric = "l2",
                      .index = index,
                      .nosync = 1,
                      .ckpt_ops = IDX_CKPT_NEVER,
                      .ckpt_off = ckpt_off};
    idx_kb_t *ix = NULL;
    char err[512] = "";
    KBT_OK(idx_open(&c, &ix, err, sizeof err), err);
    return ix;
}

static idx_stats_t stats(idx_kb_t *ix)
{
    idx_stats_t st;
    idx_stats(ix, &st);
    return st;
}

/* Upserts docs [from, to) as "d<i>" with vectors of seed vseed + i and
 * metadata {"g": i % 5, "v": vseed}; one write per 100 documents. */
static void put_range(idx_kb_t *ix, int from, int to, int vseed)
{
    for (int b = from; b < to; b += 100) {
        int n = to - b < 100 ? to - b : 100;
        idx_op_t ops[100];
        float v[100 * DIM];
        char ids[100][16], meta[100][48];
        uint64_t lsns[100];
        for (int i = 0; i < n; i++) {
            snprintf(ids[i], sizeof ids[i], "d%d", b + i);
            snprintf(meta[i], sizeof meta[i], "{\"g\":%d,\"v\":%d}",
                     (b + i) % 5, vseed);
            kbt_rand_unit(v + i * DIM, DIM, (uint64_t)(vseed + b + i));
            ops[i] = (idx_op_t){IDX_OP_UPSERT, ids[i], "t", v + i * DIM, DIM,
                                meta[i]};
        }
        char err[512] = "";
        KBT_OK(idx_write(ix, ops, (size_t)n, 0, lsns, NULL, NULL, err,
                         sizeof err),
               err);
    }
}

static void del_range(idx_kb_t *ix, int from, int to)
{
    for (int i = from; i < to; i++) {
        char id[16];
        snprintf(id, sizeof id, "d%d", i);
        idx_op_t o = {IDX_OP_DELETE, id, NULL, NULL, 0, NULL};
        uint64_t lsn;
        char err[512] = "";
        KBT_OK(idx_write(ix, &o, 1, 0, &lsn, NULL, NULL, err, sizeof err),
               err);
    }
}

/* The answers to NQ queries, unfiltered (k 20) and filtered on g=2 (k 10):
 * ids and metadata as text, one line per hit, and the scores. ef_search is
 * high enough that HNSW over a few thousand vectors answers exactly. */
typedef struct answers {
    char *text;
    float score[NQ * 30];
    size_t n;
} answers_t;

static answers_t *answers(idx_kb_t *ix)
{
    size_t cap = 1 << 20, len = 0;
    answers_t *a = calloc(1, sizeof *a);
    char *out = a ? malloc(cap) : NULL;
    assert_non_null(out);
    idx_filter_kv_t g2 = {"g", "2"};
    for (int qi = 0; qi < NQ; qi++) {
        float q[DIM];
        kbt_rand_unit(q, DIM, 90000 + (uint64_t)qi);
        for (int filtered = 0; filtered < 2; filtered++) {
            idx_query_t qq = {.vec = q,
                              .vec_len = DIM,
                              .k = filtered ? 10 : 20,
                              .ef_search = IDX_MAX_EF_SEARCH,
                              .filters = filtered ? &g2 : NULL,
                              .nfilters = (size_t)filtered};
            idx_hits_t h;
            idx_view_t v;
            char err[256] = "";
            KBT_OK(idx_search_batch(ix, 1, &qq, &h, &v, err, sizeof err),
                   err);
            assert_int_equal(h.n, qq.k);
            for (size_t i = 0; i < h.n; i++) {
                len += (size_t)snprintf(out + len, cap - len, "%d %d %s %s\n",
                                        qi, filtered, h.hit[i].id,
                                        h.hit[i].metadata);
                a->score[a->n++] = h.hit[i].score;
            }
            idx_hits_free(&h);
        }
    }
    assert_true(len < cap - 1);
    a->text = out;
    return a;
}

static void answers_free(answers_t *a)
{
    free(a->text);
    free(a);
}

/* Same hits in the same order; scores equal up to float rounding (a vector
 * scored from the delta and from FAISS differs in the last bits). */
static void answers_equal(const answers_t *a, const answers_t *b,
                          const char *what)
{
    if (strcmp(a->text, b->text)) {
        size_t i = 0;
        while (a->text[i] == b->text[i])
            i++;
        while (i && a->text[i - 1] != '\n')
            i--;
        fail_msg("%s: answers differ at:\n%.200s\nrebuild:\n%.200s", what,
                 a->text + i, b->text + i);
    }
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++)
        KBT_NEAR(a->score[i], b->score[i], 1e-4);
}

static void copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    assert_non_null(a);
    assert_non_null(b);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0)
        assert_int_equal(fwrite(buf, 1, n, b), n);
    fclose(a);
    fclose(b);
}

static void wait_merged(idx_kb_t *ix)
{
    for (int i = 0; i < 3000 && stats(ix).unmerged; i++)
        kbt_sleep_ms(10);
    KBT_U64(stats(ix).unmerged, 0);
}

/* The knowledge base of the tests: 1500 docs, a checkpoint (saved aside),
 * then replaces, deletes and new docs after it, then a close (whose own
 * checkpoint is replaced by the saved one: as if the node was killed right
 * after the checkpoint). settle: the merger has moved every vector into
 * FAISS before the checkpoint (else the newest usually sit in the delta,
 * and the checkpoint keeps them as such). Returns the checkpoint's LSN. */
static uint64_t build_with_tail(fx_t *f, const char *index, int settle)
{
    idx_kb_t *ix = open_kb(f->dir, index, 0);
    put_range(ix, 0, 1500, 0);
    del_range(ix, 0, 50);     /* tombstones inside the checkpoint */
    put_range(ix, 50, 150, 7000);
    for (int i = 0; i < 3000 && stats(ix).rebuilding; i++)
        kbt_sleep_ms(10); /* an IVF trains in the background */
    if (settle)
        wait_merged(ix);
    char err[512] = "";
    KBT_OK(idx_checkpoint(ix, err, sizeof err), err);
    idx_stats_t st = stats(ix);
    KBT_U64(st.ckpt_lsn, st.version);
    KBT_U64(st.ckpts, 1);
    uint64_t lsn = st.ckpt_lsn;
    copy_file(f->ckpt, f->saved);
    put_range(ix, 100, 400, 20000); /* replaced after the checkpoint */
    del_range(ix, 400, 460);        /* deleted after it */
    put_range(ix, 1500, 1800, 0);   /* new after it */
    idx_close(&ix);
    copy_file(f->saved, f->ckpt);
    return lsn;
}

/* Opens with the checkpoint, then without, and compares every answer. */
static void check_same_as_rebuild(fx_t *f, const char *index, int want_loaded)
{
    idx_kb_t *ix = open_kb(f->dir, index, 0);
    idx_stats_t st = stats(ix);
    assert_int_equal(st.ckpt_loaded, want_loaded);
    KBT_U64(st.docs, 1800 - 50 - 60);
    answers_t *a = answers(ix);
    /* Again once the merger has moved the later writes into FAISS. */
    wait_merged(ix);
    answers_t *a2 = answers(ix);
    idx_close(&ix);
    ix = open_kb(f->dir, index, 1);
    st = stats(ix);
    assert_false(st.ckpt_loaded);
    KBT_U64(st.dead, 0);
    answers_t *b = answers(ix);
    idx_close(&ix);
    answers_equal(a, b, "just opened");
    answers_equal(a2, b, "merged");
    answers_free(a);
    answers_free(a2);
    answers_free(b);
}

static void test_idx_ckpt_tail_matches_rebuild_flat(void **state)
{
    fx_t *f = *state;
    build_with_tail(f, "Flat", 1);
    check_same_as_rebuild(f, "Flat", 1);
}

/* The same with the checkpoint taken before the merger ran: its vectors
 * are (mostly) delta entries in the file. */
static void test_idx_ckpt_tail_matches_rebuild_unmerged(void **state)
{
    fx_t *f = *state;
    build_with_tail(f, "Flat", 0);
    check_same_as_rebuild(f, "Flat", 1);
}

static void test_idx_ckpt_tail_matches_rebuild_hnsw(void **state)
{
    fx_t *f = *state;
    build_with_tail(f, "HNSW16", 1);
    check_same_as_rebuild(f, "HNSW16", 1);
}

static void test_idx_ckpt_tail_matches_rebuild_ivf(void **state)
{
    fx_t *f = *state;
    build_with_tail(f, "IVF8,Flat", 1); /* 1500 >= 39 * 8: trained */
    /* nprobe is left at the default: compare with every list probed. */
    check_same_as_rebuild(f, "IVF8,Flat", 1);
}

/* Without writes after it, the checkpoint written at close is loaded with
 * nothing to add: the same answers as before the close, same stats. */
static void test_idx_ckpt_close_writes_one_and_open_uses_it(void **state)
{
    fx_t *f = *state;
    idx_kb_t *ix = open_kb(f->dir, "HNSW16", 0);
    put_range(ix, 0, 1000, 0);
    del_range(ix, 0, 10);
    answers_t *before = answers(ix);
    idx_stats_t st = stats(ix);
    assert_false(kbt_exists(f->ckpt));
    idx_close(&ix);
    assert_true(kbt_exists(f->ckpt));
    ix = open_kb(f->dir, "HNSW16", 0);
    idx_stats_t st2 = stats(ix);
    assert_true(st2.ckpt_loaded);
    KBT_U64(st2.ckpt_lsn, st.version);
    KBT_U64(st2.version, st.version);
    KBT_U64(st2.docs, st.docs);
    KBT_U64(st2.vectors, st.vectors);
    assert_true(st2.ckpt_us > 0);
    answers_t *after = answers(ix);
    answers_equal(after, before, "reopened");
    idx_close(&ix);
    answers_free(before);
    answers_free(after);
}

/* Rewrites the file at path through fn, then checks that the open ignores
 * it and answers as a rebuild. */
static void damage_and_check(fx_t *f, const char *what,
                             void (*fn)(const char *path))
{
    copy_file(f->saved, f->ckpt);
    fn(f->ckpt);
    print_message("damage: %s\n", what);
    check_same_as_rebuild(f, "Flat", 0);
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static void flip_at(const char *path, off_t at)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, at), 1);
    c ^= 0x20;
    assert_int_equal(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

static void cut_half(const char *p) { assert_int_equal(truncate(p, file_size(p) / 2), 0); }
static void cut_tail(const char *p) { assert_int_equal(truncate(p, file_size(p) - 1), 0); }
static void empty(const char *p) { assert_int_equal(truncate(p, 0), 0); }
static void flip_head(const char *p) { flip_at(p, 30); }
static void flip_middle(const char *p) { flip_at(p, file_size(p) / 2); }
static void flip_late(const char *p) { flip_at(p, file_size(p) - 200); }
static void flip_crc(const char *p) { flip_at(p, file_size(p) - 15); }

static void garbage(const char *p)
{
    FILE *o = fopen(p, "wb");
    assert_non_null(o);
    for (int i = 0; i < 100000; i++)
        fputc((i * 7919) & 0xff, o);
    fclose(o);
}

static void test_idx_ckpt_torn_or_corrupt_is_ignored(void **state)
{
    fx_t *f = *state;
    build_with_tail(f, "Flat", 1);
    damage_and_check(f, "truncated to half", cut_half);
    damage_and_check(f, "last byte missing", cut_tail);
    damage_and_check(f, "empty file", empty);
    damage_and_check(f, "head byte flipped", flip_head);
    damage_and_check(f, "byte in the vectors flipped", flip_middle);
    damage_and_check(f, "byte in the bitmaps flipped", flip_late);
    damage_and_check(f, "recorded checksum flipped", flip_crc);
    damage_and_check(f, "not a checkpoint", garbage);
    /* And the good one is still used. */
    copy_file(f->saved, f->ckpt);
    check_same_as_rebuild(f, "Flat", 1);
}

/* A checkpoint of another knowledge base: other settings, ahead of the
 * store, or the same LSN in another history. Each is ignored. */
static void test_idx_ckpt_mismatch_is_ignored(void **state)
{
    fx_t *f = *state;
    build_with_tail(f, "Flat", 1);
    char other[400];
    snprintf(other, sizeof other, "%s/index.ckpt", f->dir2);
    /* Another index description (same dim and metric). */
    idx_kb_t *ix = open_kb(f->dir2, "HNSW16", 0);
    put_range(ix, 0, 1500, 0);
    idx_close(&ix);
    copy_file(other, f->ckpt);
    check_same_as_rebuild(f, "Flat", 0);
    /* Same settings, written at a higher LSN than this store has. */
    kbt_rmrf(f->dir2);
    ix = open_kb(f->dir2, "Flat", 0);
    put_range(ix, 0, 2500, 0);
    idx_close(&ix);
    copy_file(other, f->ckpt);
    check_same_as_rebuild(f, "Flat", 0);
    /* Same settings and LSN, other records (other commit times). */
    kbt_rmrf(f->dir2);
    ix = open_kb(f->dir2, "Flat", 0);
    put_range(ix, 0, 1500, 0);
    del_range(ix, 0, 50);
    put_range(ix, 50, 150, 7000);
    idx_close(&ix);
    copy_file(other, f->ckpt);
    check_same_as_rebuild(f, "Flat", 0);
}

/* n documents "<prefix><i>", all committed at the same fixed time. */
static void put_fixed(idx_kb_t *ix, const char *prefix, int n, int vseed)
{
    for (int i = 0; i < n; i++) {
        char id[16];
        float v[DIM];
        snprintf(id, sizeof id, "%s%d", prefix, i);
        kbt_rand_unit(v, DIM, (uint64_t)(vseed + i));
        idx_op_t o = {IDX_OP_UPSERT, id, "t", v, DIM, NULL};
        uint64_t lsn;
        char err[512] = "";
        KBT_OK(idx_write(ix, &o, 1, 12345, &lsn, NULL, NULL, err, sizeof err),
               err);
    }
}

/* A checkpoint of another store whose records carry the same LSNs and the
 * same commit times (what a copied directory, or a history that went back
 * and wrote again, can look like) is refused by the store's history id. */
static void test_idx_ckpt_other_store_same_lsns_is_ignored(void **state)
{
    fx_t *f = *state;
    idx_kb_t *a = open_kb(f->dir2, "Flat", 0);
    put_fixed(a, "a", 50, 100);
    idx_close(&a); /* writes its checkpoint at close */
    idx_kb_t *b = open_kb(f->dir, "Flat", 1);
    put_fixed(b, "b", 50, 900);
    idx_close(&b);
    char other[400];
    snprintf(other, sizeof other, "%s/index.ckpt", f->dir2);
    copy_file(other, f->ckpt);
    b = open_kb(f->dir, "Flat", 0);
    assert_int_equal(stats(b).ckpt_loaded, 0);
    float v[DIM];
    kbt_rand_unit(v, DIM, 912); /* b12's vector */
    idx_hits_t h;
    char err[512] = "";
    KBT_OK(idx_search(b, v, NULL, 0, 1, &h, err, sizeof err), err);
    assert_int_equal(h.n, 1);
    assert_string_equal(h.hit[0].id, "b12");
    idx_hits_free(&h);
    idx_close(&b);
}

/* Periodic checkpoints: after ckpt_ops writes and ckpt_secs, idx_maintain
 * starts one in the background. */
static void test_idx_ckpt_periodic(void **state)
{
    fx_t *f = *state;
    idx_config_t c = {.dir = f->dir,
                      .dim = DIM,
                      .metric = "l2",
                      .nosync = 1,
                      .ckpt_ops = 500,
                      .ckpt_secs = 3};
    idx_kb_t *ix = NULL;
    char err[512] = "";
    KBT_OK(idx_open(&c, &ix, err, sizeof err), err);
    put_range(ix, 0, 400, 0);
    idx_maintain(ix);
    kbt_sleep_ms(50);
    idx_stats_t st = stats(ix);
    KBT_U64(st.ckpts, 0); /* 400 < 500 operations */
    put_range(ix, 400, 700, 0);
    for (int i = 0; i < 500 && stats(ix).ckpts < 1; i++) {
        idx_maintain(ix);
        kbt_sleep_ms(10);
    }
    st = stats(ix);
    KBT_U64(st.ckpts, 1);
    KBT_U64(st.ckpt_lsn, 700);
    put_range(ix, 700, 1300, 0); /* 600 more, but within 3 s */
    idx_maintain(ix);
    st = stats(ix);
    KBT_U64(st.ckpts, 1);
    for (int i = 0; i < 500 && stats(ix).ckpts < 2; i++) {
        idx_maintain(ix);
        kbt_sleep_ms(10);
    }
    KBT_U64(stats(ix).ckpt_lsn, 1300);
    idx_close(&ix);
}

typedef struct searcher {
    idx_kb_t *ix;
    atomic_int *stop;
    int searches, bad;
} searcher_t;

static void *searcher_main(void *arg)
{
    searcher_t *s = arg;
    for (int i = 0; !atomic_load(s->stop); i++) {
        float q[DIM];
        kbt_rand_unit(q, DIM, 50000 + (uint64_t)i);
        idx_query_t qq = {.vec = q, .vec_len = DIM, .k = 10};
        idx_hits_t h;
        idx_view_t v;
        char err[256];
        if (idx_search_batch(s->ix, 1, &qq, &h, &v, err, sizeof err) ||
            (v.docs >= 10 && h.n != 10))
            s->bad++;
        else
            idx_hits_free(&h);
        s->searches++;
    }
    return NULL;
}

/* Background checkpoints while searches, writes and a rebuild run (the
 * rebuild's swap waits for the checkpoint): nothing fails, and the last
 * checkpoint plus its tail answers as a rebuild. Meant for the TSan run. */
static void test_idx_ckpt_concurrent_with_searches_and_rebuild(void **state)
{
    fx_t *f = *state;
    idx_config_t c = {.dir = f->dir,
                      .dim = DIM,
                      .metric = "l2",
                      .index = "HNSW16",
                      .nosync = 1,
                      .ckpt_ops = 300,
                      .ckpt_secs = 1};
    idx_kb_t *ix = NULL;
    char err[512] = "";
    KBT_OK(idx_open(&c, &ix, err, sizeof err), err);
    put_range(ix, 0, 1500, 0);
    atomic_int stop = 0;
    searcher_t s[2] = {{ix, &stop, 0, 0}, {ix, &stop, 0, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, searcher_main, &s[i]);
    for (int round = 0; round < 6; round++) {
        put_range(ix, 100 * round, 100 * round + 400, 100000 * (round + 1));
        del_range(ix, 1000 + 10 * round, 1005 + 10 * round);
        idx_maintain(ix); /* starts a checkpoint when due */
        if (round == 2)
            idx_rebuild_start(ix);
        for (int i = 0; i < 60; i++) {
            idx_maintain(ix);
            kbt_sleep_ms(10);
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(s[i].bad, 0);
        assert_true(s[i].searches > 0);
    }
    idx_stats_t st = stats(ix);
    assert_true(st.ckpts >= 2);
    assert_true(st.rebuilds >= 1);
    idx_close(&ix);
    /* closed cleanly: the close-time checkpoint; now one from the run. */
    ix = open_kb(f->dir, "HNSW16", 0);
    assert_true(stats(ix).ckpt_loaded);
    answers_t *a = answers(ix);
    idx_close(&ix);
    ix = open_kb(f->dir, "HNSW16", 1);
    answers_t *b = answers(ix);
    idx_close(&ix);
    answers_equal(a, b, "after concurrent checkpoints");
    answers_free(a);
    answers_free(b);
}

/* A replica that drops a diverged tail loses the checkpoint above it. */
static void test_idx_ckpt_truncate_drops_newer_checkpoint(void **state)
{
    fx_t *f = *state;
    idx_kb_t *ix = open_kb(f->dir, "Flat", 0);
    put_range(ix, 0, 300, 0);
    idx_close(&ix);
    assert_true(kbt_exists(f->ckpt));
    char err[512] = "";
    uint64_t dropped = 0;
    KBT_OK(idx_truncate_dir(f->dir, 0, 1, 300, &dropped, err, sizeof err),
           err);
    assert_true(kbt_exists(f->ckpt)); /* covers 300: still good */
    KBT_OK(idx_truncate_dir(f->dir, 0, 1, 250, &dropped, err, sizeof err),
           err);
    KBT_U64(dropped, 50);
    assert_false(kbt_exists(f->ckpt));
}

/* Checkpoints off: none written, none read. */
/* A checkpoint (or a rebuild, or the writer) that needs the index lock
 * exclusively gets it between two merge steps, not after the merger's
 * whole backlog: the HNSW merger takes the lock step after step, and a
 * thread waiting for it made every search and status request wait too
 * (97 s behind 50k vectors). Fails when the merger does not let it in: the
 * checkpoint then finds the backlog merged. Then the resave of a settled
 * index at close. */
static void test_idx_ckpt_not_starved_by_merge_backlog(void **state)
{
    fx_t *f = *state;
    idx_kb_t *ix = open_kb(f->dir, "HNSW32", 0);
    put_range(ix, 0, 30000, 1);
    uint64_t before = stats(ix).unmerged;
    /* the merger is busy for a while, and the checkpoint will hold more
     * than IDX_CKPT_RESAVE_MIN (4,096) unmerged vectors */
    if (before <= 8000)
        fail_msg("only %llu unmerged after the writes",
                 (unsigned long long)before);
    char err[512] = "";
    KBT_OK(idx_checkpoint(ix, err, sizeof err), err);
    uint64_t after = stats(ix).unmerged;
    if (after == 0)
        fail_msg("the checkpoint waited for the merge backlog (%llu vectors)",
                 (unsigned long long)before);
    wait_merged(ix);
    /* That checkpoint held the backlog; the index now holds it merged, so
     * the close saves it again although no write came since, and the next
     * open has nothing to merge (without the resave: ~27k to merge). */
    idx_close(&ix);
    ix = open_kb(f->dir, "HNSW32", 0);
    idx_stats_t st = stats(ix);
    assert_true(st.ckpt_loaded);
    KBT_U64(st.unmerged, 0);
    idx_close(&ix);
}

static void test_idx_ckpt_off(void **state)
{
    fx_t *f = *state;
    idx_kb_t *ix = open_kb(f->dir, "Flat", 1);
    put_range(ix, 0, 100, 0);
    char err[512] = "";
    KBT_RC(idx_checkpoint(ix, err, sizeof err), KB_EUNAVAIL, err);
    idx_close(&ix);
    assert_false(kbt_exists(f->ckpt));
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    kb_log_setup(KB_LOG_WARN, "test_idx_ckpt");
    idx_setup(1); /* as kbsync does (--threads 1) */
    const struct CMUnitTest tests[] = {
        T(test_idx_ckpt_tail_matches_rebuild_flat),
        T(test_idx_ckpt_tail_matches_rebuild_unmerged),
        T(test_idx_ckpt_tail_matches_rebuild_hnsw),
        T(test_idx_ckpt_tail_matches_rebuild_ivf),
        T(test_idx_ckpt_close_writes_one_and_open_uses_it),
        T(test_idx_ckpt_torn_or_corrupt_is_ignored),
        T(test_idx_ckpt_mismatch_is_ignored),
        T(test_idx_ckpt_other_store_same_lsns_is_ignored),
        T(test_idx_ckpt_periodic),
        T(test_idx_ckpt_concurrent_with_searches_and_rebuild),
        T(test_idx_ckpt_truncate_drops_newer_checkpoint),
        T(test_idx_ckpt_not_starved_by_merge_backlog),
        T(test_idx_ckpt_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
