/* idx_vec: thin wrapper over the official FAISS C API (faiss/c_api), which
 * is either a real libfaiss_c or our faiss_c_compat.cpp. FAISS return codes
 * are translated here, once: any failure becomes KB_EINDEX with FAISS's
 * last-error text copied into the caller's buffer at once. */
#include "idx_vec.h"

#include "kb_err.h"
#include "kb_util.h"

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/utils/distances_c.h>

#include <dlfcn.h>
#include <float.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct idx_vec {
    FaissIndex *index;
    uint32_t dim;
    int metric_ip;
};

static int vec_fail(char *err, size_t errlen, const char *what)
{
    const char *why = faiss_get_last_error();
    return kb_seterr(err, errlen, KB_EINDEX, "FAISS %s failed: %s", what,
                     why ? why : "(no error text)");
}

void idx_vec_setup(int threads)
{
    if (threads < 1)
        threads = 1;
    omp_set_num_threads(threads);
    /* OpenBLAS keeps its own thread pool; when it and OpenMP both spin up
     * `threads` workers on a 2-core machine they compete. FAISS calls BLAS
     * from a single thread per search, so give BLAS the same budget. Found
     * by name so that a reference BLAS (no such function) also works. */
    void (*set_blas)(int) =
        (void (*)(int))dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
    if (set_blas)
        set_blas(threads);
    /* Debian's FAISS is built without SIMD: its scalar loop for fewer than 20
     * queries is about twice slower than the sgemm path (FIGURES.md). */
    faiss_set_distance_compute_blas_threshold(1);
}

int idx_vec_new(uint32_t dim, const char *description, int metric_ip,
                idx_vec_t **out, char *err, size_t errlen)
{
    char desc[256];
    *out = NULL;
    if (!description || !*description)
        description = "IDMap2,Flat";
    if (strncmp(description, "IDMap", 5) == 0)
        snprintf(desc, sizeof desc, "%s", description);
    else
        snprintf(desc, sizeof desc, "IDMap2,%s", description);

    FaissIndex *index = NULL;
    if (faiss_index_factory(&index, (int)dim, desc,
                            metric_ip ? METRIC_INNER_PRODUCT : METRIC_L2))
        return vec_fail(err, errlen, "index_factory");
    if (!faiss_Index_is_trained(index)) {
        faiss_Index_free(index);
        return kb_seterr(err, errlen, KB_EINDEX,
                         "index \"%s\" needs training, which kbsync does not "
                         "do yet; use a Flat index (e.g. IDMap2,Flat)",
                         desc);
    }
    /* Upsert and delete remove vectors: refuse an index that cannot. */
    FaissIDSelectorBatch *sel = NULL;
    int64_t none = -1;
    if (faiss_IDSelectorBatch_new(&sel, 1, &none)) {
        faiss_Index_free(index);
        return vec_fail(err, errlen, "IDSelectorBatch_new");
    }
    size_t removed = 0;
    int rc = faiss_Index_remove_ids(index, (FaissIDSelector *)sel, &removed);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    if (rc) {
        char why[512];
        snprintf(why, sizeof why, "%s", faiss_get_last_error());
        faiss_Index_free(index);
        return kb_seterr(err, errlen, KB_EINDEX,
                         "index \"%s\" cannot remove vectors, which upsert and "
                         "delete need (%s)",
                         desc, why);
    }

    idx_vec_t *v = calloc(1, sizeof *v);
    if (!v) {
        faiss_Index_free(index);
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    v->index = index;
    v->dim = dim;
    v->metric_ip = metric_ip;
    *out = v;
    return 0;
}

void idx_vec_free(idx_vec_t **v)
{
    if (!v || !*v)
        return;
    faiss_Index_free((*v)->index);
    free(*v);
    *v = NULL;
}

int idx_vec_add(idx_vec_t *v, size_t n, const float *x, const int64_t *labels,
                char *err, size_t errlen)
{
    if (n == 0)
        return 0;
    if (faiss_Index_add_with_ids(v->index, (idx_t)n, x, labels))
        return vec_fail(err, errlen, "add_with_ids");
    return 0;
}

int idx_vec_remove(idx_vec_t *v, size_t n, const int64_t *labels, char *err,
                   size_t errlen)
{
    if (n == 0)
        return 0;
    FaissIDSelectorBatch *sel = NULL;
    if (faiss_IDSelectorBatch_new(&sel, n, labels))
        return vec_fail(err, errlen, "IDSelectorBatch_new");
    size_t removed = 0;
    int rc = faiss_Index_remove_ids(v->index, (FaissIDSelector *)sel, &removed);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    if (rc)
        return vec_fail(err, errlen, "remove_ids");
    return 0;
}

int idx_vec_search(const idx_vec_t *v, size_t nq, const float *q, uint32_t k,
                   float *scores, int64_t *labels, char *err, size_t errlen)
{
    /* FAISS 1.7.3's BLAS path (every query once idx_vec_setup() ran) returns
     * early on an empty index without writing the result buffers, and IDMap2
     * then maps those garbage labels through its empty id map: answer the
     * empty result here. */
    if (faiss_Index_ntotal(v->index) == 0) {
        for (size_t i = 0; i < nq * (size_t)k; i++) {
            labels[i] = -1;
            scores[i] = v->metric_ip ? -FLT_MAX : FLT_MAX;
        }
        return 0;
    }
    if (faiss_Index_search(v->index, (idx_t)nq, q, (idx_t)k, scores, labels))
        return vec_fail(err, errlen, "search");
    return 0;
}

uint64_t idx_vec_count(const idx_vec_t *v)
{
    return (uint64_t)faiss_Index_ntotal(v->index);
}
