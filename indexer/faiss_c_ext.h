/* faiss_c_ext: the FAISS C API functions that kbsync uses and that Debian's
 * FAISS 1.7.3 headers (<faiss/c_api/...>) lack: per-call search parameters.
 * Declared with exactly the names and signatures of the newer official C API
 * (Index_c.h, IndexIVF_c.h, IndexHNSW_c.h of FAISS >= 1.7.4), so C code that
 * includes this header builds unchanged against a newer libfaiss_c, and
 * against indexer/faiss_c_compat.cpp, which implements them on 1.7.3. */
#ifndef KB_FAISS_C_EXT_H
#define KB_FAISS_C_EXT_H

#include <stddef.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/faiss_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The typedefs below repeat the newer headers' ones word for word; C11 and
 * C++ both accept a typedef repeated with the same type, so this header may
 * be included next to a newer FAISS's own headers. */

/* Base class of the per-call search parameters. `sel` (may be NULL) is
 * borrowed: it must outlive the parameters object, which never frees it.
 * On an IndexIDMap/IndexIDMap2, `sel` is asked about the EXTERNAL ids. */
FAISS_DECLARE_CLASS(SearchParameters)
FAISS_DECLARE_DESTRUCTOR(SearchParameters)

/* Returns 0 and sets *p_sp, or a FaissErrorCode with the last-error text. */
int faiss_SearchParameters_new(FaissSearchParameters **p_sp,
                               FaissIDSelector *sel);

/* Searches n queries (n*d floats) for their k nearest neighbours, as
 * faiss_Index_search does, with per-call parameters: params may be NULL (the
 * index's own settings), or must be of the kind the index accepts
 * (SearchParametersIVF for an IVF index, SearchParametersHNSW for HNSW, plain
 * SearchParameters for a flat index). The index is not modified, so
 * concurrent searches with different parameters do not race. distances and
 * labels hold n*k values; missing results have label -1. Returns 0, or a
 * FaissErrorCode with the last-error text (e.g. a wrong parameter type). */
int faiss_Index_search_with_params(const FaissIndex *index, idx_t n,
                                   const float *x, idx_t k,
                                   const FaissSearchParameters *params,
                                   float *distances, idx_t *labels);

/* IVF: nprobe = inverted lists visited per query (1..nlist), max_codes = cap
 * on the codes scanned per query (0 = no cap). */
FAISS_DECLARE_CLASS_INHERITED(SearchParametersIVF, SearchParameters)
FAISS_DECLARE_DESTRUCTOR(SearchParametersIVF)

int faiss_SearchParametersIVF_new_with(FaissSearchParametersIVF **p_sp,
                                       FaissIDSelector *sel, size_t nprobe,
                                       size_t max_codes);

/* HNSW: efSearch = size of the candidate list during the graph walk; FAISS
 * uses max(efSearch, k). */
FAISS_DECLARE_CLASS_INHERITED(SearchParametersHNSW, SearchParameters)
FAISS_DECLARE_DESTRUCTOR(SearchParametersHNSW)

int faiss_SearchParametersHNSW_new_with(FaissSearchParametersHNSW **p_sp,
                                        FaissIDSelector *sel, int efSearch);

#ifdef __cplusplus
}
#endif

#endif
