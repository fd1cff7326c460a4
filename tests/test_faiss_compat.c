/* test_faiss_compat: checks the FAISS C API subset behind `kb_faiss` (our
 * indexer/faiss_c_compat.cpp, or a system faiss_c) on tiny real indexes:
 * getters, add/search/remove/reset, write/read, tuning knobs, and every error
 * path kbsync relies on (nonzero code + last-error text, no crash). */
#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
#include <faiss/c_api/utils/distances_c.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static char g_dir[512]; /* per-run temp dir, made by setup_dir() */

/* Fails the test unless the last error text exists and contains `needle`. */
static void assert_last_error_mentions(const char *needle)
{
    const char *t = faiss_get_last_error();
    if (t == NULL)
        fail_msg("faiss_get_last_error() is NULL, wanted \"%s\"", needle);
    if (strstr(t, needle) == NULL)
        fail_msg("last error \"%s\" does not mention \"%s\"", t, needle);
}

static void path_in_dir(char *buf, size_t len, const char *name)
{
    int n = snprintf(buf, len, "%s/%s", g_dir, name);
    assert_true(n > 0 && (size_t)n < len);
}

/* Deterministic pseudo-random unit vectors (xorshift64*). */
static void fill_random(float *x, size_t n, int d, uint64_t seed)
{
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        double norm = 0;
        for (int j = 0; j < d; j++) {
            s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
            float v = (float)((s * 2685821657736338717ull) >> 40) / (1 << 24);
            x[i * d + j] = v - 0.5f;
            norm += (double)x[i * d + j] * x[i * d + j];
        }
        for (int j = 0; j < d; j++)
            x[i * d + j] /= (float)(norm > 0 ? sqrt(norm) : 1);
    }
}

/* Four orthonormal 4-d vectors with ids 100..103: the query e_i finds 100+i
 * at inner product 1, everything else at 0. */
static const float k_basis[16] = {1, 0, 0, 0, 0, 1, 0, 0,
                                  0, 0, 1, 0, 0, 0, 0, 1};
static const idx_t k_basis_ids[4] = {100, 101, 102, 103};

static FaissIndex *new_basis_index(void)
{
    FaissIndex *idx = NULL;
    assert_int_equal(
        faiss_index_factory(&idx, 4, "IDMap2,Flat", METRIC_INNER_PRODUCT), 0);
    assert_non_null(idx);
    assert_int_equal(faiss_Index_add_with_ids(idx, 4, k_basis, k_basis_ids), 0);
    return idx;
}

static FaissIndex *new_hnsw_index(int n)
{
    FaissIndex *idx = NULL;
    float *x = malloc(sizeof(float) * 8 * n);
    assert_non_null(x);
    fill_random(x, n, 8, 7);
    assert_int_equal(faiss_index_factory(&idx, 8, "HNSW32", METRIC_L2), 0);
    assert_int_equal(faiss_Index_add_with_ids(idx, n, x, NULL), 0);
    free(x);
    return idx;
}

static void test_faiss_compat_factory_getters(void **state)
{
    (void)state;
    FaissIndex *ip = NULL, *l2 = NULL;
    assert_int_equal(
        faiss_index_factory(&ip, 8, "IDMap2,Flat", METRIC_INNER_PRODUCT), 0);
    assert_int_equal(faiss_Index_d(ip), 8);
    assert_int_equal(faiss_Index_ntotal(ip), 0);
    assert_int_equal(faiss_Index_is_trained(ip), 1);
    assert_int_equal(faiss_Index_metric_type(ip), METRIC_INNER_PRODUCT);
    assert_int_equal(faiss_index_factory(&l2, 16, "Flat", METRIC_L2), 0);
    assert_int_equal(faiss_Index_d(l2), 16);
    assert_int_equal(faiss_Index_metric_type(l2), METRIC_L2);
    faiss_Index_free(ip);
    faiss_Index_free(l2);
}

static void test_faiss_compat_factory_bad_description_fails(void **state)
{
    (void)state;
    FaissIndex *idx = NULL;
    int rc = faiss_index_factory(&idx, 8, "NoSuchIndex42", METRIC_L2);
    assert_int_not_equal(rc, 0);
    assert_int_equal(rc, FAISS_EXCEPT);
    assert_null(idx);
    assert_last_error_mentions("NoSuchIndex42");
}

static void test_faiss_compat_search_known_vectors(void **state)
{
    (void)state;
    FaissIndex *idx = new_basis_index();
    assert_int_equal(faiss_Index_ntotal(idx), 4);

    /* Two queries in one call; k = 6 > ntotal pads with -1. */
    const float q[8] = {0, 0, 1, 0, 0.6f, 0.8f, 0, 0};
    float dist[12];
    idx_t lab[12];
    assert_int_equal(faiss_Index_search(idx, 2, q, 6, dist, lab), 0);
    assert_int_equal(lab[0], 102);
    assert_true(dist[0] > 0.999f && dist[0] < 1.001f);
    assert_true(dist[1] > -0.001f && dist[1] < 0.001f);
    assert_int_equal(lab[4], -1);
    assert_int_equal(lab[5], -1);
    assert_int_equal(lab[6], 101); /* 0.8 beats 0.6 */
    assert_int_equal(lab[7], 100);
    assert_true(dist[6] > 0.799f && dist[6] < 0.801f);
    faiss_Index_free(idx);
}

static void test_faiss_compat_add_without_ids(void **state)
{
    (void)state;
    /* NULL ids on IDMap2 is refused (IDMap needs ids) ... */
    FaissIndex *idx = new_basis_index();
    assert_int_not_equal(faiss_Index_add_with_ids(idx, 1, k_basis, NULL), 0);
    assert_last_error_mentions("add_with_ids");
    assert_int_equal(faiss_Index_ntotal(idx), 4);
    faiss_Index_free(idx);

    /* ... and on a plain Flat means sequential ids 0, 1, ... */
    FaissIndex *flat = NULL;
    float d;
    idx_t l;
    assert_int_equal(
        faiss_index_factory(&flat, 4, "Flat", METRIC_INNER_PRODUCT), 0);
    assert_int_equal(faiss_Index_add_with_ids(flat, 4, k_basis, NULL), 0);
    assert_int_equal(faiss_Index_search(flat, 1, k_basis + 12, 1, &d, &l), 0);
    assert_int_equal(l, 3);
    faiss_Index_free(flat);
}

static void test_faiss_compat_remove_ids_batch(void **state)
{
    (void)state;
    FaissIndex *idx = new_basis_index();
    FaissIDSelectorBatch *sel = NULL;
    const idx_t gone[2] = {101, 999};
    size_t n = 0;
    float d[4];
    idx_t l[4];
    assert_int_equal(faiss_IDSelectorBatch_new(&sel, 2, gone), 0);
    assert_int_equal(
        faiss_Index_remove_ids(idx, (const FaissIDSelector *)sel, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(faiss_Index_ntotal(idx), 3);
    assert_int_equal(faiss_Index_search(idx, 1, k_basis + 4, 4, d, l), 0);
    for (int i = 0; i < 4; i++)
        assert_int_not_equal(l[i], 101);
    assert_int_equal(l[3], -1);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    faiss_Index_free(idx);
}

static void test_faiss_compat_remove_ids_range(void **state)
{
    (void)state;
    FaissIndex *idx = new_basis_index();
    FaissIDSelectorRange *sel = NULL;
    size_t n = 0;
    float d;
    idx_t l;
    assert_int_equal(faiss_IDSelectorRange_new(&sel, 102, 104), 0);
    assert_int_equal(
        faiss_Index_remove_ids(idx, (const FaissIDSelector *)sel, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(faiss_Index_ntotal(idx), 2);
    assert_int_equal(faiss_Index_search(idx, 1, k_basis + 4, 1, &d, &l), 0);
    assert_int_equal(l, 101); /* survivors keep their ids after compaction */
    faiss_IDSelector_free((FaissIDSelector *)sel);
    faiss_Index_free(idx);
}

static void test_faiss_compat_remove_ids_on_hnsw_fails(void **state)
{
    (void)state;
    FaissIndex *idx = new_hnsw_index(40);
    FaissIDSelectorRange *sel = NULL;
    size_t n = 12345;
    float q[8], d[3];
    idx_t l[3];
    assert_int_equal(faiss_IDSelectorRange_new(&sel, 0, 10), 0);
    int rc = faiss_Index_remove_ids(idx, (const FaissIDSelector *)sel, &n);
    assert_int_not_equal(rc, 0);
    assert_last_error_mentions("remove_ids");
    assert_int_equal(n, 12345); /* untouched on failure */
    assert_int_equal(faiss_Index_ntotal(idx), 40);
    /* The index is still usable: vector 0 (same seed) finds itself. */
    fill_random(q, 1, 8, 7);
    assert_int_equal(faiss_Index_search(idx, 1, q, 3, d, l), 0);
    assert_int_equal(l[0], 0);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    faiss_Index_free(idx);
}

static void test_faiss_compat_reset_empties_index(void **state)
{
    (void)state;
    FaissIndex *idx = new_basis_index();
    float d;
    idx_t l;
    assert_int_equal(faiss_Index_reset(idx), 0);
    assert_int_equal(faiss_Index_ntotal(idx), 0);
    assert_int_equal(faiss_Index_search(idx, 1, k_basis, 1, &d, &l), 0);
    assert_int_equal(l, -1);
    /* Ids are reusable after a reset. */
    assert_int_equal(faiss_Index_add_with_ids(idx, 4, k_basis, k_basis_ids), 0);
    assert_int_equal(faiss_Index_ntotal(idx), 4);
    faiss_Index_free(idx);
}

static void test_faiss_compat_write_read_roundtrip(void **state)
{
    (void)state;
    char path[512];
    path_in_dir(path, sizeof path, "roundtrip.faiss");
    FaissIndex *idx = new_basis_index(), *back = NULL;
    float d1[8], d2[8];
    idx_t l1[8], l2[8];
    assert_int_equal(faiss_write_index_fname(idx, path), 0);
    assert_int_equal(faiss_read_index_fname(path, 0, &back), 0);
    assert_non_null(back);
    assert_int_equal(faiss_Index_d(back), 4);
    assert_int_equal(faiss_Index_ntotal(back), 4);
    assert_int_equal(faiss_Index_metric_type(back), METRIC_INNER_PRODUCT);
    assert_int_equal(faiss_Index_search(idx, 4, k_basis, 2, d1, l1), 0);
    assert_int_equal(faiss_Index_search(back, 4, k_basis, 2, d2, l2), 0);
    assert_memory_equal(l1, l2, sizeof l1);
    assert_memory_equal(d1, d2, sizeof d1);
    assert_int_equal(l2[6], 103);
    /* The reloaded IDMap2 still supports removal. */
    FaissIDSelectorBatch *sel = NULL;
    size_t n = 0;
    assert_int_equal(faiss_IDSelectorBatch_new(&sel, 1, k_basis_ids), 0);
    assert_int_equal(
        faiss_Index_remove_ids(back, (const FaissIDSelector *)sel, &n), 0);
    assert_int_equal(n, 1);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    faiss_Index_free(idx);
    faiss_Index_free(back);
    unlink(path);
}

static void test_faiss_compat_read_missing_file_fails(void **state)
{
    (void)state;
    char path[512];
    path_in_dir(path, sizeof path, "does-not-exist.faiss");
    FaissIndex *idx = NULL;
    assert_int_not_equal(faiss_read_index_fname(path, 0, &idx), 0);
    assert_null(idx);
    assert_last_error_mentions("does-not-exist.faiss");
}

static void test_faiss_compat_read_truncated_file_fails(void **state)
{
    (void)state;
    char path[512];
    path_in_dir(path, sizeof path, "truncated.faiss");
    FaissIndex *idx = new_basis_index();
    assert_int_equal(faiss_write_index_fname(idx, path), 0);
    faiss_Index_free(idx);

    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long size = ftell(f);
    fclose(f);
    assert_true(size > 64);

    /* Cut inside the header, inside the vectors, just before the id map,
     * one byte short, and to nothing. */
    const long cuts[] = {3, size / 2, size - 4 * 8, size - 1, 0};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        FaissIndex *back = NULL;
        assert_int_equal(truncate(path, cuts[i]), 0);
        int rc = faiss_read_index_fname(path, 0, &back);
        if (rc == 0)
            fail_msg("file cut to %ld of %ld bytes was read back", cuts[i],
                     size);
        assert_null(back);
        const char *t = faiss_get_last_error();
        assert_non_null(t);
        assert_true(strlen(t) > 0);
    }
    unlink(path);
}

static void test_faiss_compat_write_bad_path_fails(void **state)
{
    (void)state;
    FaissIndex *idx = new_basis_index();
    assert_int_not_equal(
        faiss_write_index_fname(idx, "/nonexistent-dir/x/index.faiss"), 0);
    assert_last_error_mentions("nonexistent-dir");
    faiss_Index_free(idx);
}

static void test_faiss_compat_blas_threshold_same_results(void **state)
{
    (void)state;
    enum { N = 500, D = 32, NQ = 4, K = 5 };
    float *x = malloc(sizeof(float) * N * D), q[NQ * D];
    float d1[NQ * K], d2[NQ * K];
    idx_t l1[NQ * K], l2[NQ * K];
    FaissIndex *idx = NULL;
    assert_non_null(x);
    fill_random(x, N, D, 11);
    fill_random(q, NQ, D, 12);
    assert_int_equal(faiss_index_factory(&idx, D, "Flat", METRIC_INNER_PRODUCT),
                     0);
    assert_int_equal(faiss_Index_add_with_ids(idx, N, x, NULL), 0);

    int saved = faiss_get_distance_compute_blas_threshold();
    assert_true(saved > NQ); /* default (20) keeps NQ queries off BLAS */
    assert_int_equal(faiss_Index_search(idx, NQ, q, K, d1, l1), 0);
    faiss_set_distance_compute_blas_threshold(1);
    assert_int_equal(faiss_get_distance_compute_blas_threshold(), 1);
    assert_int_equal(faiss_Index_search(idx, NQ, q, K, d2, l2), 0);
    faiss_set_distance_compute_blas_threshold(saved);
    assert_int_equal(faiss_get_distance_compute_blas_threshold(), saved);

    for (int i = 0; i < NQ * K; i++) {
        assert_int_equal(l1[i], l2[i]);
        assert_true(d1[i] - d2[i] < 1e-4f && d2[i] - d1[i] < 1e-4f);
    }
    faiss_Index_free(idx);
    free(x);
}

static void test_faiss_compat_parameter_space_efsearch(void **state)
{
    (void)state;
    FaissParameterSpace *ps = NULL;
    FaissIndex *hnsw = new_hnsw_index(20), *idmap = NULL;
    assert_int_equal(faiss_ParameterSpace_new(&ps), 0);
    assert_non_null(ps);
    assert_int_equal(
        faiss_ParameterSpace_set_index_parameter(ps, hnsw, "efSearch", 64), 0);
    /* Reaches through the IDMap2 wrapper too. */
    assert_int_equal(
        faiss_index_factory(&idmap, 8, "IDMap2,HNSW32", METRIC_INNER_PRODUCT),
        0);
    assert_int_equal(
        faiss_ParameterSpace_set_index_parameter(ps, idmap, "efSearch", 128),
        0);
    assert_int_not_equal(
        faiss_ParameterSpace_set_index_parameter(ps, hnsw, "noSuchParam", 1),
        0);
    assert_last_error_mentions("noSuchParam");
    faiss_ParameterSpace_free(ps);
    faiss_Index_free(hnsw);
    faiss_Index_free(idmap);
}

static void *fail_in_thread(void *arg)
{
    char *out = arg;
    FaissIndex *idx = NULL;
    /* A thread that never failed has no error text. */
    if (faiss_get_last_error() != NULL)
        return (void *)"fresh thread already has an error text";
    if (faiss_index_factory(&idx, 4, "ThreadOnlyBogus", METRIC_L2) == 0)
        return (void *)"bogus factory string accepted";
    snprintf(out, 256, "%s", faiss_get_last_error());
    return NULL;
}

static void test_faiss_compat_last_error_per_thread(void **state)
{
    (void)state;
    FaissIndex *idx = NULL;
    char theirs[256] = "";
    void *res = NULL;
    pthread_t t;
    assert_int_not_equal(faiss_index_factory(&idx, 4, "MainBogus", METRIC_L2),
                         0);
    assert_int_equal(pthread_create(&t, NULL, fail_in_thread, theirs), 0);
    assert_int_equal(pthread_join(t, &res), 0);
    if (res != NULL)
        fail_msg("%s", (const char *)res);
    assert_non_null(strstr(theirs, "ThreadOnlyBogus"));
    assert_last_error_mentions("MainBogus");
    assert_null(strstr(faiss_get_last_error(), "ThreadOnlyBogus"));
}

static void test_faiss_compat_last_error_kept_after_success(void **state)
{
    (void)state;
    FaissIndex *idx = NULL;
    assert_int_not_equal(faiss_index_factory(&idx, 4, "KeepMe", METRIC_L2), 0);
    const char *before = faiss_get_last_error();
    idx = new_basis_index(); /* successful calls */
    assert_ptr_equal(faiss_get_last_error(), before);
    assert_last_error_mentions("KeepMe");
    faiss_Index_free(idx);
}

static void test_faiss_compat_free_null_is_noop(void **state)
{
    (void)state;
    faiss_Index_free(NULL);
    faiss_IDSelector_free(NULL);
    faiss_ParameterSpace_free(NULL);
}

static int setup_dir(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    int n = snprintf(g_dir, sizeof g_dir, "%s/test_faiss_compat.XXXXXX",
                     tmp && *tmp ? tmp : "/tmp");
    if (n < 0 || (size_t)n >= sizeof g_dir)
        return -1;
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    (void)state;
    /* A failed test may leave its file behind. */
    static const char *const files[] = {"roundtrip.faiss", "truncated.faiss"};
    char path[512];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        if (snprintf(path, sizeof path, "%s/%s", g_dir, files[i]) > 0)
            unlink(path);
    return rmdir(g_dir) == 0 || errno == ENOENT ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_faiss_compat_factory_getters),
        cmocka_unit_test(test_faiss_compat_factory_bad_description_fails),
        cmocka_unit_test(test_faiss_compat_search_known_vectors),
        cmocka_unit_test(test_faiss_compat_add_without_ids),
        cmocka_unit_test(test_faiss_compat_remove_ids_batch),
        cmocka_unit_test(test_faiss_compat_remove_ids_range),
        cmocka_unit_test(test_faiss_compat_remove_ids_on_hnsw_fails),
        cmocka_unit_test(test_faiss_compat_reset_empties_index),
        cmocka_unit_test(test_faiss_compat_write_read_roundtrip),
        cmocka_unit_test(test_faiss_compat_read_missing_file_fails),
        cmocka_unit_test(test_faiss_compat_read_truncated_file_fails),
        cmocka_unit_test(test_faiss_compat_write_bad_path_fails),
        cmocka_unit_test(test_faiss_compat_blas_threshold_same_results),
        cmocka_unit_test(test_faiss_compat_parameter_space_efsearch),
        cmocka_unit_test(test_faiss_compat_last_error_per_thread),
        cmocka_unit_test(test_faiss_compat_last_error_kept_after_success),
        cmocka_unit_test(test_faiss_compat_free_null_is_noop),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
