/* test_faiss_compat: checks the FAISS C API subset behind `kb_faiss` (our
 * indexer/faiss_c_compat.cpp, or a system faiss_c) on tiny real indexes:
 * getters, add/search/remove/reset, train/reconstruct, write/read, tuning
 * knobs, per-call search parameters (faiss_c_ext.h: efSearch, nprobe,
 * selectors through an IDMap2), and every error path kbsync relies on
 * (nonzero code + last-error text, no crash). */
#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/clone_index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
#include <faiss/c_api/utils/distances_c.h>

#include "faiss_c_ext.h"

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
#include <sys/resource.h>
#include <sys/wait.h>
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

/* ---- per-call search parameters (faiss_c_ext.h) ------------------------ */

enum { PN = 3000, PQ = 50, PK = 20 };

/* PN random unit vectors of d floats (seed 21) and PQ queries (seed 22),
 * with the exact top-PK of each query by inner product (ids 0..PN-1). */
typedef struct pdata {
    int d;
    float *x, *q;
    idx_t truth[PQ * PK];
} pdata_t;

static pdata_t *pdata_new(int d)
{
    pdata_t *p = calloc(1, sizeof *p);
    FaissIndex *flat = NULL;
    float dist[PQ * PK];
    assert_non_null(p);
    p->d = d;
    p->x = malloc(sizeof(float) * PN * d);
    p->q = malloc(sizeof(float) * PQ * d);
    assert_true(p->x && p->q);
    fill_random(p->x, PN, d, 21);
    fill_random(p->q, PQ, d, 22);
    assert_int_equal(
        faiss_index_factory(&flat, d, "Flat", METRIC_INNER_PRODUCT), 0);
    assert_int_equal(faiss_Index_add_with_ids(flat, PN, p->x, NULL), 0);
    assert_int_equal(faiss_Index_search(flat, PQ, p->q, PK, dist, p->truth), 0);
    faiss_Index_free(flat);
    return p;
}

static void pdata_free(pdata_t *p)
{
    free(p->x);
    free(p->q);
    free(p);
}

/* Fraction of the true top-PK found; labels are ids + offset. */
static double recall(const pdata_t *p, const idx_t *labels, idx_t offset)
{
    size_t hit = 0;
    for (int i = 0; i < PQ; i++)
        for (int j = 0; j < PK; j++)
            for (int m = 0; m < PK; m++)
                if (labels[i * PK + j] == p->truth[i * PK + m] + offset) {
                    hit++;
                    break;
                }
    return (double)hit / (PQ * PK);
}

/* An index from desc over the PN vectors, ids 1000 + i when it is an ID
 * map (so external ids never equal internal ones), trained first if need
 * be. */
static FaissIndex *pindex(const pdata_t *p, const char *desc)
{
    FaissIndex *idx = NULL;
    idx_t *ids = malloc(sizeof(idx_t) * PN);
    assert_non_null(ids);
    for (int i = 0; i < PN; i++)
        ids[i] = 1000 + i;
    assert_int_equal(
        faiss_index_factory(&idx, p->d, desc, METRIC_INNER_PRODUCT), 0);
    if (!faiss_Index_is_trained(idx))
        assert_int_equal(faiss_Index_train(idx, PN, p->x), 0);
    assert_int_equal(faiss_Index_add_with_ids(
                         idx, PN, p->x, strncmp(desc, "IDMap", 5) ? NULL : ids),
                     0);
    free(ids);
    return idx;
}

/* Searches the PQ queries with params; returns the recall. */
static double psearch(const pdata_t *p, const FaissIndex *idx,
                      const FaissSearchParameters *sp, idx_t offset,
                      idx_t *labels)
{
    float d[PQ * PK];
    int rc = faiss_Index_search_with_params(idx, PQ, p->q, PK, sp, d, labels);
    if (rc)
        fail_msg("search_with_params: %d %s", rc, faiss_get_last_error());
    for (int i = 0; i < PQ; i++) /* best first: inner products descend */
        for (int j = 1; j < PK; j++)
            if (labels[i * PK + j] >= 0)
                assert_true(d[i * PK + j] <= d[i * PK + j - 1] + 1e-6f);
    return recall(p, labels, offset);
}

static void test_faiss_compat_params_hnsw_efsearch(void **state)
{
    (void)state;
    /* efSearch 1 (i.e. max(1, k)) vs 256: a wider walk finds (nearly) every
     * true neighbour. FAISS 1.7.3 alone would stop both walks at the index's
     * own efSearch (16), so 256 would score no better. Plain HNSW and
     * through an IDMap2 (labels = external ids). */
    pdata_t *p = pdata_new(64); /* hard enough for a narrow walk to miss */
    static const char *descs[] = {"HNSW32", "IDMap2,HNSW32"};
    for (int i = 0; i < 2; i++) {
        FaissIndex *idx = pindex(p, descs[i]);
        idx_t offset = i ? 1000 : 0, labels[PQ * PK];
        FaissSearchParametersHNSW *lo = NULL, *hi = NULL;
        assert_int_equal(faiss_SearchParametersHNSW_new_with(&lo, NULL, 1), 0);
        assert_int_equal(faiss_SearchParametersHNSW_new_with(&hi, NULL, 256),
                         0);
        double r_lo = psearch(p, idx, lo, offset, labels);
        double r_hi = psearch(p, idx, hi, offset, labels);
        if (!(r_hi >= 0.99 && r_lo <= r_hi - 0.05))
            fail_msg("%s: recall@%d efSearch 1 = %.3f, 256 = %.3f", descs[i],
                     PK, r_lo, r_hi);
        faiss_SearchParametersHNSW_free(lo);
        faiss_SearchParametersHNSW_free(hi);
        faiss_Index_free(idx);
    }
    pdata_free(p);
}

static void test_faiss_compat_params_ivf_nprobe(void **state)
{
    (void)state;
    /* nprobe 1 of 16 lists misses neighbours; nprobe = nlist is exact. The
     * index's own nprobe (1) is not changed by a parameterised search. */
    pdata_t *p = pdata_new(16);
    static const char *descs[] = {"IVF16,Flat", "IDMap2,IVF16,Flat"};
    for (int i = 0; i < 2; i++) {
        FaissIndex *idx = pindex(p, descs[i]);
        idx_t offset = i ? 1000 : 0, labels[PQ * PK], plain[PQ * PK];
        float d[PQ * PK];
        FaissSearchParametersIVF *one = NULL, *all = NULL;
        assert_int_equal(faiss_SearchParametersIVF_new_with(&one, NULL, 1, 0),
                         0);
        assert_int_equal(faiss_SearchParametersIVF_new_with(&all, NULL, 16, 0),
                         0);
        double r_one = psearch(p, idx, one, offset, labels);
        assert_true(r_one < 0.9);
        assert_int_equal(psearch(p, idx, all, offset, labels) == 1.0, 1);
        for (int j = 0; j < PQ * PK; j++)
            assert_int_equal(labels[j], p->truth[j] + offset);
        assert_int_equal(faiss_Index_search(idx, PQ, p->q, PK, d, plain), 0);
        assert_true(recall(p, plain, offset) < 0.9);
        faiss_SearchParametersIVF_free(one);
        faiss_SearchParametersIVF_free(all);
        faiss_Index_free(idx);
    }
    pdata_free(p);
}

static void test_faiss_compat_params_idmap2_labels(void **state)
{
    (void)state;
    /* 1.7.3's IndexIDMap2::search refuses parameters; with_params maps the
     * sub-index's labels itself. k > ntotal: the padding stays -1. */
    FaissIndex *idx = new_basis_index(), *empty = NULL;
    FaissSearchParameters *sp = NULL;
    const float q[8] = {0, 0, 1, 0, 0.6f, 0.8f, 0, 0};
    float d[12];
    idx_t l[12];
    assert_int_equal(faiss_SearchParameters_new(&sp, NULL), 0);
    assert_int_equal(faiss_Index_search_with_params(idx, 2, q, 6, sp, d, l), 0);
    assert_int_equal(l[0], 102);
    assert_true(d[0] > 0.999f && d[0] < 1.001f);
    assert_int_equal(l[6], 101);
    assert_int_equal(l[7], 100);
    assert_int_equal(l[4], -1);
    assert_int_equal(l[11], -1);
    /* NULL params: the index's own search. */
    assert_int_equal(faiss_Index_search_with_params(idx, 1, q, 2, NULL, d, l),
                     0);
    assert_int_equal(l[0], 102);
    /* An empty IDMap2 answers -1 everywhere (never garbage labels). */
    assert_int_equal(
        faiss_index_factory(&empty, 4, "IDMap2,Flat", METRIC_INNER_PRODUCT), 0);
    memset(l, 0x5a, sizeof l);
    assert_int_equal(faiss_Index_search_with_params(empty, 2, q, 6, sp, d, l),
                     0);
    for (int i = 0; i < 12; i++)
        assert_int_equal(l[i], -1);
    faiss_SearchParameters_free(sp);
    faiss_Index_free(idx);
    faiss_Index_free(empty);
}

/* Every label of a search is -1 or in [lo, hi); returns how many are not -1. */
static int labels_within(const idx_t *l, int n, idx_t lo, idx_t hi)
{
    int real = 0;
    for (int i = 0; i < n; i++) {
        if (l[i] == -1)
            continue;
        if (l[i] < lo || l[i] >= hi)
            fail_msg("label %lld outside [%lld, %lld)", (long long)l[i],
                     (long long)lo, (long long)hi);
        real++;
    }
    return real;
}

static void test_faiss_compat_params_selector_sees_external_ids(void **state)
{
    (void)state;
    /* External ids are 1000 + i, internal ones 0..PN-1: a selector asked
     * about internal ids would accept nothing. Flat (base parameters), HNSW
     * and IVF (their own parameters) behind an IDMap2. */
    pdata_t *p = pdata_new(16);
    static const char *descs[] = {"IDMap2,Flat", "IDMap2,HNSW32",
                                  "IDMap2,IVF16,Flat"};
    FaissIDSelectorRange *range = NULL;
    FaissIDSelectorBatch *batch = NULL;
    const idx_t picked[3] = {1000 + 17, 1000 + 2500, 1000 + 999};
    assert_int_equal(faiss_IDSelectorRange_new(&range, 1000, 1000 + PN / 2), 0);
    assert_int_equal(faiss_IDSelectorBatch_new(&batch, 3, picked), 0);
    for (int i = 0; i < 3; i++) {
        FaissIndex *idx = pindex(p, descs[i]);
        FaissSearchParameters *sp = NULL, *sb = NULL;
        idx_t l[PQ * PK];
        if (i == 0) {
            faiss_SearchParameters_new(&sp, (FaissIDSelector *)range);
            faiss_SearchParameters_new(&sb, (FaissIDSelector *)batch);
        } else if (i == 1) {
            faiss_SearchParametersHNSW_new_with(&sp, (FaissIDSelector *)range,
                                                256);
            faiss_SearchParametersHNSW_new_with(&sb, (FaissIDSelector *)batch,
                                                PN);
        } else {
            faiss_SearchParametersIVF_new_with(&sp, (FaissIDSelector *)range,
                                               16, 0);
            faiss_SearchParametersIVF_new_with(&sb, (FaissIDSelector *)batch,
                                               16, 0);
        }
        assert_non_null(sp);
        assert_non_null(sb);
        psearch(p, idx, sp, 1000, l);
        assert_int_equal(labels_within(l, PQ * PK, 1000, 1000 + PN / 2),
                         PQ * PK);
        /* Exactly the three picked ids come back (then -1) for query 0. */
        psearch(p, idx, sb, 1000, l);
        int seen = 0;
        for (int j = 0; j < PK; j++)
            for (int m = 0; m < 3; m++)
                seen += l[j] == picked[m];
        if (seen != 3)
            fail_msg("%s: %d of the 3 selected ids found", descs[i], seen);
        assert_int_equal(l[3], -1);
        faiss_SearchParameters_free(sp);
        faiss_SearchParameters_free(sb);
        faiss_Index_free(idx);
    }
    faiss_IDSelector_free((FaissIDSelector *)range);
    faiss_IDSelector_free((FaissIDSelector *)batch);
    pdata_free(p);
}

static void test_faiss_compat_params_wrong_type_fails(void **state)
{
    (void)state;
    /* The wrong kind of parameters is an error code + text, never an
     * exception, on the index itself and through an IDMap2. */
    pdata_t *p = pdata_new(16);
    FaissSearchParametersIVF *ivf = NULL;
    FaissSearchParametersHNSW *hnsw = NULL;
    FaissSearchParameters *base = NULL;
    FaissIDSelectorRange *range = NULL;
    float d[PK];
    idx_t l[PK];
    assert_int_equal(faiss_SearchParametersIVF_new_with(&ivf, NULL, 4, 0), 0);
    assert_int_equal(faiss_SearchParametersHNSW_new_with(&hnsw, NULL, 32), 0);
    assert_int_equal(faiss_IDSelectorRange_new(&range, 0, 10), 0);
    assert_int_equal(
        faiss_SearchParameters_new(&base, (FaissIDSelector *)range), 0);
    static const char *hnsw_descs[] = {"HNSW32", "IDMap2,HNSW32"};
    static const char *ivf_descs[] = {"IVF16,Flat", "IDMap2,IVF16,Flat"};
    for (int i = 0; i < 2; i++) {
        FaissIndex *h = pindex(p, hnsw_descs[i]), *v = pindex(p, ivf_descs[i]);
        assert_int_equal(
            faiss_Index_search_with_params(h, 1, p->q, PK, ivf, d, l),
            FAISS_EXCEPT);
        assert_last_error_mentions("params");
        assert_int_equal(
            faiss_Index_search_with_params(h, 1, p->q, PK, base, d, l),
            FAISS_EXCEPT);
        assert_last_error_mentions("params");
        assert_int_equal(
            faiss_Index_search_with_params(v, 1, p->q, PK, hnsw, d, l),
            FAISS_EXCEPT);
        assert_last_error_mentions("params");
        faiss_Index_free(h);
        faiss_Index_free(v);
    }
    faiss_SearchParameters_free(base);
    faiss_SearchParametersIVF_free(ivf);
    faiss_SearchParametersHNSW_free(hnsw);
    faiss_IDSelector_free((FaissIDSelector *)range);
    faiss_SearchParameters_free(NULL);
    faiss_SearchParametersIVF_free(NULL);
    faiss_SearchParametersHNSW_free(NULL);
    pdata_free(p);
}

static void test_faiss_compat_train_reconstruct_casts(void **state)
{
    (void)state;
    /* An IVF behind an IDMap2: adding before training fails with text;
     * after training (and with a direct map) it reconstructs by external
     * id; an unknown id is an error code. Casts answer NULL for other kinds. */
    pdata_t *p = pdata_new(16);
    FaissIndex *idx = NULL, *flat = NULL;
    idx_t id = 5000;
    float back[16];
    assert_int_equal(faiss_index_factory(&idx, 16, "IDMap2,IVF16,Flat",
                                         METRIC_INNER_PRODUCT),
                     0);
    assert_int_equal(faiss_Index_is_trained(idx), 0);
    assert_int_not_equal(faiss_Index_add_with_ids(idx, 1, p->x, &id), 0);
    assert_non_null(faiss_get_last_error());
    FaissIndexIDMap2 *map = faiss_IndexIDMap2_cast(idx);
    assert_non_null(map);
    FaissIndexIVF *ivf = faiss_IndexIVF_cast(faiss_IndexIDMap2_sub_index(map));
    assert_non_null(ivf);
    assert_int_equal(faiss_IndexIVF_make_direct_map(ivf, 1), 0);
    assert_int_equal(faiss_Index_train(idx, PN, p->x), 0);
    assert_int_equal(faiss_Index_is_trained(idx), 1);
    assert_int_equal(faiss_Index_add_with_ids(idx, 1, p->x + 7 * 16, &id), 0);
    assert_int_equal(faiss_Index_reconstruct(idx, 5000, back), 0);
    assert_memory_equal(back, p->x + 7 * 16, sizeof back);
    assert_int_not_equal(faiss_Index_reconstruct(idx, 4999, back), 0);
    assert_non_null(faiss_get_last_error());
    /* Training with fewer points than lists is refused with FAISS's text. */
    FaissIndex *small = NULL;
    assert_int_equal(
        faiss_index_factory(&small, 16, "IVF16,Flat", METRIC_INNER_PRODUCT), 0);
    assert_int_equal(faiss_Index_train(small, 4, p->x), FAISS_EXCEPT);
    assert_last_error_mentions("16");
    assert_int_equal(
        faiss_index_factory(&flat, 16, "Flat", METRIC_INNER_PRODUCT), 0);
    assert_null(faiss_IndexIDMap2_cast(flat));
    assert_null(faiss_IndexIVF_cast(flat));
    assert_int_not_equal(faiss_IndexIVF_make_direct_map(flat, 1), 0);
    faiss_Index_free(small);
    faiss_Index_free(flat);
    faiss_Index_free(idx);
    pdata_free(p);
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

/* faiss_clone_index of an IDMap2,Flat: the copy answers as the original,
 * and adding to it leaves the original alone. With faiss_c_compat.cpp the
 * copy is made with room for four times the vectors (idx_vec.c counts on
 * it), so when that much address space is not there the clone must fail
 * with an error, not copy at the exact size (checked in a child under
 * RLIMIT_AS; not under the sanitizers, which reserve terabytes). */
static void test_faiss_compat_clone_flat(void **state)
{
    (void)state;
    enum { D = 64, N = 100000 };
    float *x = malloc(sizeof(float) * D * (size_t)N);
    idx_t *ids = malloc(sizeof(idx_t) * N);
    assert_non_null(x);
    assert_non_null(ids);
    fill_random(x, N, D, 11);
    for (idx_t i = 0; i < N; i++)
        ids[i] = 1000 + i;
    FaissIndex *a = NULL, *b = NULL;
    assert_int_equal(faiss_index_factory(&a, D, "IDMap2,Flat", METRIC_L2), 0);
    assert_int_equal(faiss_Index_add_with_ids(a, N, x, ids), 0);
    assert_int_equal(faiss_clone_index(a, &b), 0);
    assert_int_equal(faiss_Index_ntotal(b), N);
    float dist[2];
    idx_t lab[2];
    assert_int_equal(faiss_Index_search(b, 1, x + (size_t)D * 777, 1, dist,
                                        lab),
                     0);
    assert_int_equal(lab[0], 1777);
    idx_t extra = 5;
    assert_int_equal(faiss_Index_add_with_ids(b, 1, x, &extra), 0);
    assert_int_equal(faiss_Index_ntotal(b), N + 1);
    assert_int_equal(faiss_Index_ntotal(a), N);
    faiss_Index_free(b);
#if defined(KB_FAISS_COMPAT) && !defined(__SANITIZE_ADDRESS__) &&             \
    !defined(__SANITIZE_THREAD__)
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* room for the exact copy (25.6 MB) but not for four times it */
        long pages = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (!f || fscanf(f, "%ld", &pages) != 1)
            _exit(3);
        fclose(f);
        struct rlimit rl;
        rl.rlim_cur = rl.rlim_max =
            (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (48u << 20);
        if (setrlimit(RLIMIT_AS, &rl))
            _exit(4);
        FaissIndex *c = NULL;
        int rc = faiss_clone_index(a, &c);
        _exit(rc != 0 && c == NULL && faiss_get_last_error() ? 0 : 1);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("a clone without room for four times the vectors did not "
                 "fail cleanly (child status 0x%x)", st);
#endif
    faiss_Index_free(a);
    free(x);
    free(ids);
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
        cmocka_unit_test(test_faiss_compat_params_hnsw_efsearch),
        cmocka_unit_test(test_faiss_compat_params_ivf_nprobe),
        cmocka_unit_test(test_faiss_compat_params_idmap2_labels),
        cmocka_unit_test(test_faiss_compat_params_selector_sees_external_ids),
        cmocka_unit_test(test_faiss_compat_params_wrong_type_fails),
        cmocka_unit_test(test_faiss_compat_train_reconstruct_casts),
        cmocka_unit_test(test_faiss_compat_last_error_per_thread),
        cmocka_unit_test(test_faiss_compat_last_error_kept_after_success),
        cmocka_unit_test(test_faiss_compat_free_null_is_noop),
        cmocka_unit_test(test_faiss_compat_clone_flat),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
