/* faiss_c_compat: the subset of the FAISS C API (faiss/c_api/ headers) that
 * kbsync uses, implemented on the C++ libfaiss.a because Debian 12 ships no
 * libfaiss_c. In: opaque handles and caller-owned buffers from C. Out: int
 * codes (0 = OK, FAISS_EXCEPT / STD_EXCEPT / UNKNOWN_EXCEPT on failure). State
 * owned: one thread_local last-error text per thread. Built only when
 * cmake/faiss.cmake finds no usable faiss_c; written from the headers. */

/* The C++ headers come first. The C headers then add, at global scope, the
 * typedef idx_t (== faiss::Index::idx_t, checked below) and the enumerators
 * OK, METRIC_L2, ...; faiss's own names stay inside namespace faiss, and this
 * file always qualifies them (no `using namespace faiss`). */
#include <faiss/AutoTune.h>
#include <faiss/Index.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/utils/distances.h>

#include <new>
#include <string>
#include <type_traits>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
#include <faiss/c_api/utils/distances_c.h>

static_assert(std::is_same<idx_t, faiss::Index::idx_t>::value,
              "C idx_t must be faiss::Index::idx_t: buffers pass unconverted");
static_assert(static_cast<int>(METRIC_INNER_PRODUCT) ==
                      static_cast<int>(faiss::METRIC_INNER_PRODUCT) &&
                  static_cast<int>(METRIC_L2) ==
                      static_cast<int>(faiss::METRIC_L2) &&
                  static_cast<int>(METRIC_Lp) ==
                      static_cast<int>(faiss::METRIC_Lp) &&
                  static_cast<int>(METRIC_Canberra) ==
                      static_cast<int>(faiss::METRIC_Canberra),
              "FaissMetricType must mirror faiss::MetricType");

namespace
{

/* ==== ERROR BOUNDARY =====================================================
 * No C++ exception crosses into C. Every entry point that can fail runs its
 * body through guard(), which maps
 *   faiss::FaissException -> FAISS_EXCEPT (-2), text = what()
 *   std::bad_alloc        -> STD_EXCEPT   (-4), text = "out of memory ..."
 *   std::exception        -> STD_EXCEPT   (-4), text = what()
 *   anything else         -> UNKNOWN_EXCEPT (-1)
 * and copies the text into this thread's buffer. The pointer handed out by
 * faiss_get_last_error() stays valid until the next *failing* call on the
 * same thread (successful calls leave it alone); it is NULL on a thread that
 * has not failed yet. Handles always hold the base-class pointer
 * (faiss::Index*, faiss::IDSelector*), so a C cast between selector handle
 * types is a no-op here. */
thread_local std::string tl_err;
thread_local const char *tl_err_ptr = nullptr;

void set_error(const char *what) noexcept
{
    try {
        tl_err.assign(what ? what : "(no message)");
        tl_err_ptr = tl_err.c_str();
    } catch (...) { /* cannot even copy the text */
        tl_err_ptr = "out of memory while recording a FAISS error";
    }
}

template <typename F> int guard(F &&body) noexcept
{
    try {
        body();
        return OK;
    } catch (const faiss::FaissException &e) {
        set_error(e.what());
        return FAISS_EXCEPT;
    } catch (const std::bad_alloc &) {
        set_error("out of memory (std::bad_alloc)");
        return STD_EXCEPT;
    } catch (const std::exception &e) {
        set_error(e.what());
        return STD_EXCEPT;
    } catch (...) {
        set_error("unknown exception in FAISS");
        return UNKNOWN_EXCEPT;
    }
}

faiss::Index *ix(FaissIndex *h)
{
    return reinterpret_cast<faiss::Index *>(h);
}
const faiss::Index *ix(const FaissIndex *h)
{
    return reinterpret_cast<const faiss::Index *>(h);
}
FaissIndex *handle(faiss::Index *p)
{
    return reinterpret_cast<FaissIndex *>(p);
}
const faiss::IDSelector *sel(const FaissIDSelector *h)
{
    return reinterpret_cast<const faiss::IDSelector *>(h);
}
const faiss::ParameterSpace *space(const FaissParameterSpace *h)
{
    return reinterpret_cast<const faiss::ParameterSpace *>(h);
}

} // namespace

/* extern "C" on the definitions too: a signature that drifts from the header
 * is then a "conflicting declaration of C function" error, not an overload. */
extern "C" {

const char *faiss_get_last_error()
{
    return tl_err_ptr;
}

/* ---- index life cycle and getters -------------------------------------- */

int faiss_index_factory(FaissIndex **p_index, int d, const char *description,
                        FaissMetricType metric)
{
    return guard([&] {
        *p_index = handle(faiss::index_factory(
            d, description, static_cast<faiss::MetricType>(metric)));
    });
}

void faiss_Index_free(FaissIndex *obj)
{
    delete ix(obj); /* virtual destructor; NULL is a no-op */
}

int faiss_Index_d(const FaissIndex *index)
{
    return ix(index)->d;
}

idx_t faiss_Index_ntotal(const FaissIndex *index)
{
    return ix(index)->ntotal;
}

int faiss_Index_is_trained(const FaissIndex *index)
{
    return ix(index)->is_trained ? 1 : 0;
}

FaissMetricType faiss_Index_metric_type(const FaissIndex *index)
{
    return static_cast<FaissMetricType>(ix(index)->metric_type);
}

/* ---- add / search / remove --------------------------------------------- */

int faiss_Index_add_with_ids(FaissIndex *index, idx_t n, const float *x,
                             const idx_t *xids)
{
    /* The header says "if non-null": NULL ids means sequential ids (add). */
    return guard([&] {
        if (xids)
            ix(index)->add_with_ids(n, x, xids);
        else
            ix(index)->add(n, x);
    });
}

int faiss_Index_search(const FaissIndex *index, idx_t n, const float *x,
                       idx_t k, float *distances, idx_t *labels)
{
    return guard([&] { ix(index)->search(n, x, k, distances, labels); });
}

int faiss_Index_remove_ids(FaissIndex *index, const FaissIDSelector *s,
                           size_t *n_removed)
{
    return guard([&] {
        size_t n = ix(index)->remove_ids(*sel(s));
        if (n_removed)
            *n_removed = n;
    });
}

int faiss_Index_reset(FaissIndex *index)
{
    return guard([&] { ix(index)->reset(); });
}

/* ---- ID selectors ------------------------------------------------------ */

int faiss_IDSelectorBatch_new(FaissIDSelectorBatch **p_sel, size_t n,
                              const idx_t *indices)
{
    return guard([&] {
        faiss::IDSelector *s = new faiss::IDSelectorBatch(n, indices);
        *p_sel = reinterpret_cast<FaissIDSelectorBatch *>(s);
    });
}

int faiss_IDSelectorRange_new(FaissIDSelectorRange **p_sel, idx_t imin,
                              idx_t imax)
{
    return guard([&] {
        faiss::IDSelector *s = new faiss::IDSelectorRange(imin, imax);
        *p_sel = reinterpret_cast<FaissIDSelectorRange *>(s);
    });
}

void faiss_IDSelector_free(FaissIDSelector *obj)
{
    delete sel(obj);
}

/* ---- persistence ------------------------------------------------------- */

int faiss_write_index_fname(const FaissIndex *idx, const char *fname)
{
    return guard([&] { faiss::write_index(ix(idx), fname); });
}

int faiss_read_index_fname(const char *fname, int io_flags, FaissIndex **p_out)
{
    /* *p_out is written only on success. */
    return guard([&] { *p_out = handle(faiss::read_index(fname, io_flags)); });
}

/* ---- tuning ------------------------------------------------------------ */

/* Process-wide FAISS globals, not per index: callers set them once at start. */
void faiss_set_distance_compute_blas_threshold(int value)
{
    faiss::distance_compute_blas_threshold = value;
}

int faiss_get_distance_compute_blas_threshold()
{
    return faiss::distance_compute_blas_threshold;
}

int faiss_ParameterSpace_new(FaissParameterSpace **p_space)
{
    return guard([&] {
        *p_space =
            reinterpret_cast<FaissParameterSpace *>(new faiss::ParameterSpace);
    });
}

void faiss_ParameterSpace_free(FaissParameterSpace *obj)
{
    delete space(obj);
}

int faiss_ParameterSpace_set_index_parameter(const FaissParameterSpace *ps,
                                             FaissIndex *index,
                                             const char *name, double value)
{
    /* e.g. "efSearch" on HNSW (also through IDMap2), "nprobe" on IVF. */
    return guard(
        [&] { space(ps)->set_index_parameter(ix(index), name, value); });
}

} /* extern "C" */
