/* test_idx_vec: the FAISS wrapper of indexer/idx_vec.h on real, tiny FAISS
 * indexes. In: factory descriptions, random vectors with sparse labels. Out:
 * pass/fail on which descriptions are accepted, on add/search/remove, and
 * on score order for inner product vs L2. Each test owns its index. */
#include "kb_test.h"

#include "idx_vec.h"
#include "kb_err.h"

#define DIM 16

static idx_vec_t *vec_new(uint32_t dim, const char *desc, int ip)
{
    idx_vec_t *v = NULL;
    char err[512] = "";
    KBT_OK(idx_vec_new(dim, desc, ip, &v, err, sizeof err), err);
    assert_non_null(v);
    return v;
}

static void test_idx_vec_bad_description_fails_with_text(void **state)
{
    (void)state;
    idx_vec_t *v = (void *)1;
    char err[512] = "";
    KBT_RC(idx_vec_new(DIM, "NoSuchIndex42", 1, &v, err, sizeof err), KB_EINDEX,
           err);
    assert_null(v);
    KBT_CONTAINS(err, "FAISS");
    KBT_CONTAINS(err, "index_factory");
    assert_true(strlen(err) > strlen("FAISS index_factory failed: "));
}

static void test_idx_vec_flat_is_wrapped(void **state)
{
    (void)state;
    /* A bare Flat index cannot take labels; the wrapper makes it
     * IDMap2,Flat, so sparse 64-bit labels work. NULL and "" mean the same
     * default. */
    static const char *descs[] = {"Flat", "IDMap2,Flat", "", NULL};
    for (size_t d = 0; d < sizeof descs / sizeof descs[0]; d++) {
        idx_vec_t *v = vec_new(DIM, descs[d], 0);
        float x[2 * DIM];
        kbt_rand_unit(x, DIM, 1);
        kbt_rand_unit(x + DIM, DIM, 2);
        int64_t labels[2] = {1000000007LL, 5};
        char err[512] = "";
        KBT_OK(idx_vec_add(v, 2, x, labels, err, sizeof err), err);
        KBT_U64(idx_vec_count(v), 2);
        float s[2];
        int64_t l[2];
        KBT_OK(idx_vec_search(v, 1, x, 2, s, l, err, sizeof err), err);
        assert_int_equal(l[0], 1000000007LL);
        assert_int_equal(l[1], 5);
        KBT_NEAR(s[0], 0.0, 1e-5);
        idx_vec_free(&v);
        assert_null(v);
    }
    idx_vec_free(NULL);
}

static void test_idx_vec_hnsw_refused(void **state)
{
    (void)state;
    /* HNSW cannot remove vectors, which upsert and delete need. */
    static const char *descs[] = {"HNSW32", "IDMap2,HNSW16"};
    for (size_t d = 0; d < 2; d++) {
        idx_vec_t *v = (void *)1;
        char err[512] = "";
        KBT_RC(idx_vec_new(DIM, descs[d], 1, &v, err, sizeof err), KB_EINDEX,
               err);
        assert_null(v);
        KBT_CONTAINS(err, "cannot remove");
        KBT_CONTAINS(err, "HNSW");
    }
}

static void test_idx_vec_training_refused(void **state)
{
    (void)state;
    idx_vec_t *v = (void *)1;
    char err[512] = "";
    KBT_RC(idx_vec_new(DIM, "IVF4,Flat", 0, &v, err, sizeof err), KB_EINDEX,
           err);
    assert_null(v);
    KBT_CONTAINS(err, "training");
    KBT_CONTAINS(err, "IVF4,Flat");
}

static void test_idx_vec_add_search_remove(void **state)
{
    (void)state;
    enum { N = 20 };
    idx_vec_t *v = vec_new(DIM, "IDMap2,Flat", 0);
    float x[N * DIM];
    int64_t labels[N];
    for (int i = 0; i < N; i++) {
        kbt_rand_unit(x + i * DIM, DIM, 100 + i);
        labels[i] = 100 + 7 * i;
    }
    char err[512] = "";
    KBT_OK(idx_vec_add(v, 0, x, labels, err, sizeof err), err); /* no-op */
    KBT_U64(idx_vec_count(v), 0);
    KBT_OK(idx_vec_add(v, N, x, labels, err, sizeof err), err);
    KBT_U64(idx_vec_count(v), N);

    /* Every vector finds itself first, at distance 0; batch of N queries. */
    float s[N * 3];
    int64_t l[N * 3];
    KBT_OK(idx_vec_search(v, N, x, 3, s, l, err, sizeof err), err);
    for (int i = 0; i < N; i++) {
        assert_int_equal(l[i * 3], labels[i]);
        KBT_NEAR(s[i * 3], 0.0, 1e-5);
        assert_true(s[i * 3 + 1] >= s[i * 3]);
        assert_true(s[i * 3 + 2] >= s[i * 3 + 1]);
    }

    /* Remove two labels (and one that was never there). */
    int64_t rm[3] = {labels[5], labels[10], 999999};
    KBT_OK(idx_vec_remove(v, 3, rm, err, sizeof err), err);
    KBT_OK(idx_vec_remove(v, 0, rm, err, sizeof err), err); /* no-op */
    KBT_U64(idx_vec_count(v), N - 2);
    KBT_OK(idx_vec_search(v, N, x, 3, s, l, err, sizeof err), err);
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < 3; j++) {
            assert_int_not_equal(l[i * 3 + j], labels[5]);
            assert_int_not_equal(l[i * 3 + j], labels[10]);
        }
        if (i != 5 && i != 10)
            assert_int_equal(l[i * 3], labels[i]);
    }

    /* Asking for more than there is: the rest are -1. */
    float s2[N + 5];
    int64_t l2[N + 5];
    KBT_OK(idx_vec_search(v, 1, x, N + 5, s2, l2, err, sizeof err), err);
    for (int j = 0; j < N - 2; j++)
        assert_true(l2[j] >= 100);
    for (int j = N - 2; j < N + 5; j++)
        assert_int_equal(l2[j], -1);

    /* A removed label can be added again (replace = remove + add). */
    KBT_OK(idx_vec_add(v, 1, x + 5 * DIM, &labels[5], err, sizeof err), err);
    KBT_U64(idx_vec_count(v), N - 1);
    KBT_OK(idx_vec_search(v, 1, x + 5 * DIM, 1, s, l, err, sizeof err), err);
    assert_int_equal(l[0], labels[5]);
    idx_vec_free(&v);
}

static void test_idx_vec_ip_vs_l2_ordering(void **state)
{
    (void)state;
    /* q = e0. a = (10, 10, 0...): big inner product (10) but far in L2
     * (81 + 100 = 181). b = (1, 0.1, 0...): inner product 1, L2 0.01. */
    float x[2 * DIM] = {0};
    x[0] = 10, x[1] = 10;
    x[DIM] = 1, x[DIM + 1] = 0.1f;
    float q[DIM] = {0};
    q[0] = 1;
    int64_t labels[2] = {1, 2}; /* a = 1, b = 2 */
    char err[512] = "";
    float s[2];
    int64_t l[2];

    idx_vec_t *ip = vec_new(DIM, "Flat", 1);
    KBT_OK(idx_vec_add(ip, 2, x, labels, err, sizeof err), err);
    KBT_OK(idx_vec_search(ip, 1, q, 2, s, l, err, sizeof err), err);
    assert_int_equal(l[0], 1); /* higher is better */
    assert_int_equal(l[1], 2);
    KBT_NEAR(s[0], 10.0, 1e-4);
    KBT_NEAR(s[1], 1.0, 1e-5);
    idx_vec_free(&ip);

    idx_vec_t *l2 = vec_new(DIM, "Flat", 0);
    KBT_OK(idx_vec_add(l2, 2, x, labels, err, sizeof err), err);
    KBT_OK(idx_vec_search(l2, 1, q, 2, s, l, err, sizeof err), err);
    assert_int_equal(l[0], 2); /* lower is better */
    assert_int_equal(l[1], 1);
    KBT_NEAR(s[0], 0.01, 1e-5);
    KBT_NEAR(s[1], 181.0, 1e-3);
    idx_vec_free(&l2);
}

/* BUG (indexer/idx_vec.c, idx_vec_search): after idx_vec_setup() (which
 * kbsync's main calls) FAISS takes its BLAS path for every query, and that
 * path returns early when the index is empty without writing the result
 * buffers; IndexIDMap2 then maps the uninitialised labels through its empty
 * id_map and crashes. A fresh node, or one whose documents were all
 * deleted, dies on its first query. Run in a child so the crash fails only
 * this test. */
static int empty_search_child(void *arg)
{
    (void)arg;
    idx_vec_setup(1);
    for (int ip = 0; ip <= 1; ip++) {
        idx_vec_t *v = NULL;
        char err[512];
        if (idx_vec_new(DIM, "Flat", ip, &v, err, sizeof err))
            return 1;
        float q[DIM], s[4];
        int64_t l[4];
        kbt_rand_unit(q, DIM, 1);
        memset(l, 0x5a, sizeof l); /* what malloc might hand out */
        if (idx_vec_search(v, 1, q, 4, s, l, err, sizeof err))
            return 2;
        for (int i = 0; i < 4; i++)
            if (l[i] != -1)
                return 3;
        /* Emptied by removal: the same. */
        int64_t label = 7;
        if (idx_vec_add(v, 1, q, &label, err, sizeof err) ||
            idx_vec_remove(v, 1, &label, err, sizeof err) ||
            idx_vec_count(v) != 0)
            return 4;
        memset(l, 0x5a, sizeof l);
        if (idx_vec_search(v, 1, q, 4, s, l, err, sizeof err))
            return 5;
        for (int i = 0; i < 4; i++)
            if (l[i] != -1)
                return 6;
        idx_vec_free(&v);
    }
    return 0;
}

static void test_idx_vec_search_empty_index(void **state)
{
    (void)state;
    kbt_run_isolated("search of an empty index", empty_search_child, NULL,
                     30000);
}

int main(void)
{
    /* As kbsync's main does: one thread, BLAS for single queries. */
    idx_vec_setup(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idx_vec_bad_description_fails_with_text),
        cmocka_unit_test(test_idx_vec_flat_is_wrapped),
        cmocka_unit_test(test_idx_vec_hnsw_refused),
        cmocka_unit_test(test_idx_vec_training_refused),
        cmocka_unit_test(test_idx_vec_add_search_remove),
        cmocka_unit_test(test_idx_vec_ip_vs_l2_ordering),
        cmocka_unit_test(test_idx_vec_search_empty_index),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
