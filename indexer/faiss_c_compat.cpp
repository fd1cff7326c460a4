/* faiss_c_compat: the subset of the FAISS C API (faiss/c_api/ headers, plus
 * the newer search-parameter functions of faiss_c_ext.h) that kbsync uses,
 * implemented on the C++ libfaiss.a because Debian 12 ships no libfaiss_c.
 * Where 1.7.3 falls short of the newer API (parameters through an IDMap,
 * per-call HNSW efSearch) it behaves as the newer one does; see the
 * banners. In: opaque handles and caller-owned buffers from C. Out: int
 * codes (0 = OK, FAISS_EXCEPT / STD_EXCEPT / UNKNOWN_EXCEPT on failure).
 * State owned: one thread_local last-error text per thread. Built only when
 * cmake/faiss.cmake finds no usable faiss_c; written from the headers. */

/* The C++ headers come first. The C headers then add, at global scope, the
 * typedef idx_t (== faiss::Index::idx_t, checked below) and the enumerators
 * OK, METRIC_L2, ...; faiss's own names stay inside namespace faiss, and this
 * file always qualifies them (no `using namespace faiss`). */
#include <faiss/AutoTune.h>
#include <faiss/Index.h>
#include <faiss/IndexFlatCodes.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/clone_index.h>
#include <faiss/impl/HNSW.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/utils/distances.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <queue>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

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
const faiss::SearchParameters *sp(const FaissSearchParameters *h)
{
    return reinterpret_cast<const faiss::SearchParameters *>(h);
}
/* A new parameters object as the handle type T (base-class pointer inside). */
template <typename T> T *sp_handle(faiss::SearchParameters *p)
{
    return reinterpret_cast<T *>(p);
}

/* ==== SEARCH PARAMETERS THROUGH AN ID MAP =================================
 * FAISS 1.7.3's IndexIDMap / IndexIDMap2 ::search refuses any parameters
 * ("search params not supported for this index") while the indexes they wrap
 * accept theirs (IVF: nprobe, HNSW: efSearch, every kind: an IDSelector).
 * Newer FAISS handles this itself; faiss_Index_search_with_params does it
 * here, with the same result:
 *  1. An ID map (IndexIDMap or IndexIDMap2, nested ones too) is unwrapped:
 *     the search runs on its sub-index with the same n, k and buffers, then
 *     each label >= 0 becomes id_map[label]; -1 (no result) stays -1.
 *  2. A selector in the parameters speaks EXTERNAL ids, but the sub-index
 *     asks about its INTERNAL ids (0..ntotal-1): it is wrapped in
 *     ExternalIdSelector, which answers sel->is_member(id_map[internal]).
 *     The wrapper needs a copy of the parameters with `sel` replaced; the
 *     copy is made by dynamic type (SearchParameters, SearchParametersIVF,
 *     SearchParametersHNSW), so the caller's object is never touched. A
 *     subclass this file does not know cannot be copied: it is passed
 *     through when it has no selector and refused when it has one.
 *  3. An index (or sub-index) with no vectors answers every slot with label
 *     -1 without calling FAISS: 1.7.3's BLAS path returns early on an empty
 *     index and leaves the buffers unwritten.
 * The copy and the wrapper live on this call's stack and the index is only
 * read, so concurrent searches are safe while nobody writes the index. */
struct ExternalIdSelector final : faiss::IDSelector {
    const faiss::IDSelector *outer;
    const std::vector<faiss::Index::idx_t> *id_map;

    ExternalIdSelector(const faiss::IDSelector *o,
                       const std::vector<faiss::Index::idx_t> *m)
        : outer(o), id_map(m)
    {
    }
    bool is_member(faiss::Index::idx_t internal) const override
    {
        return internal >= 0 &&
               static_cast<size_t>(internal) < id_map->size() &&
               outer->is_member((*id_map)[internal]);
    }
};

/* Storage for one copy of a parameters object, whichever kind it is. */
struct ParamsCopy {
    faiss::SearchParameters base;
    faiss::SearchParametersIVF ivf;
    faiss::SearchParametersHNSW hnsw;
};

/* Returns p with its selector replaced by `sel` (a copy in c), or p itself
 * when it carries no selector. */
const faiss::SearchParameters *with_selector(const faiss::SearchParameters *p,
                                             faiss::IDSelector *sel,
                                             ParamsCopy &c)
{
    if (!p->sel)
        return p;
    if (auto *h = dynamic_cast<const faiss::SearchParametersHNSW *>(p)) {
        c.hnsw = *h;
        c.hnsw.sel = sel;
        return &c.hnsw;
    }
    if (auto *v = dynamic_cast<const faiss::SearchParametersIVF *>(p)) {
        c.ivf = *v;
        c.ivf.sel = sel;
        return &c.ivf;
    }
    if (typeid(*p) == typeid(faiss::SearchParameters)) {
        c.base = *p;
        c.base.sel = sel;
        return &c.base;
    }
    throw faiss::FaissException(
        std::string("an IDSelector cannot be passed through an IndexIDMap "
                    "with search parameters of type ") +
        typeid(*p).name());
}

void fill_empty(const faiss::Index *index, faiss::Index::idx_t n,
                faiss::Index::idx_t k, float *distances,
                faiss::Index::idx_t *labels)
{
    const float none = index->metric_type == faiss::METRIC_INNER_PRODUCT
                           ? -std::numeric_limits<float>::max()
                           : std::numeric_limits<float>::max();
    for (faiss::Index::idx_t i = 0; i < n * k; i++) {
        distances[i] = none;
        labels[i] = -1;
    }
}

/* ==== HNSW SEARCH WITH A PER-CALL efSearch ================================
 * FAISS 1.7.3's IndexHNSW::search(params) sizes its candidate queue with
 * params->efSearch but ends the level-0 walk by the index's own
 * hnsw.efSearch field (default 16): a larger per-call efSearch changes
 * nothing. Measured on 20,000 bench_common.h vectors (dim 384, HNSW32, IP,
 * 200 queries): recall@10 0.952 with params efSearch 16, 64, 256 or 2000,
 * but 0.990 / 1.000 with the field at 64 / 256. Newer FAISS honours the
 * parameter, and so does this unit: on an IndexHNSW given
 * SearchParametersHNSW, hnsw_search() walks FAISS's graph itself, reading it
 * only:
 *  - greedy descent from the entry point through levels max_level..1: move
 *    to any closer neighbour until none is closer;
 *  - level 0: best-first expansion from there. `beam` keeps the
 *    ef = max(efSearch, k) closest nodes seen; the walk stops when the
 *    closest unexpanded node is farther than the farthest of the beam;
 *  - a selector filters the RESULTS (best k members seen), not the walk:
 *    rejected nodes still lead to accepted ones.
 * Distances are the storage's: squared L2, or inner product (negated while
 * walking so that lower is always closer, restored on output). */
struct HnswNode {
    float d; /* lower = closer */
    int32_t id;
};
struct HnswCloser { /* priority_queue top = farthest */
    bool operator()(const HnswNode &a, const HnswNode &b) const
    {
        return a.d < b.d;
    }
};
struct HnswFarther { /* priority_queue top = closest */
    bool operator()(const HnswNode &a, const HnswNode &b) const
    {
        return a.d > b.d;
    }
};
using HnswMaxQ =
    std::priority_queue<HnswNode, std::vector<HnswNode>, HnswCloser>;
using HnswMinQ =
    std::priority_queue<HnswNode, std::vector<HnswNode>, HnswFarther>;

/* One thread's walk state: the distance computer and a visited table
 * (epoch per node; cleared when the epoch wraps). */
struct HnswWalk {
    const faiss::HNSW &g;
    faiss::DistanceComputer &dc;
    bool ip;
    std::vector<uint8_t> seen;
    uint8_t epoch = 0;

    float dist(int32_t v)
    {
        float s = dc(v);
        return ip ? -s : s;
    }
    bool visit(int32_t v) /* false when already visited in this query */
    {
        if (seen[v] == epoch)
            return false;
        seen[v] = epoch;
        return true;
    }
    void next_query()
    {
        if (++epoch == 0) {
            std::fill(seen.begin(), seen.end(), 0);
            epoch = 1;
        }
    }
};

/* Greedy descent through the upper levels; returns the level-0 start. */
HnswNode hnsw_descend(HnswWalk &w)
{
    HnswNode cur = {w.dist(w.g.entry_point), w.g.entry_point};
    for (int level = w.g.max_level; level >= 1; level--) {
        for (bool moved = true; moved;) {
            moved = false;
            size_t b, e;
            w.g.neighbor_range(cur.id, level, &b, &e);
            for (size_t j = b; j < e && w.g.neighbors[j] >= 0; j++) {
                float d = w.dist(w.g.neighbors[j]);
                if (d < cur.d) {
                    cur = {d, w.g.neighbors[j]};
                    moved = true;
                }
            }
        }
    }
    return cur;
}

/* Offers node n to the k best selector members found so far. */
void hnsw_offer(HnswMaxQ &best, faiss::Index::idx_t k,
                const faiss::IDSelector *sel, HnswNode n)
{
    if (sel && !sel->is_member(n.id))
        return;
    if ((faiss::Index::idx_t)best.size() < k) {
        best.push(n);
    } else if (n.d < best.top().d) {
        best.pop();
        best.push(n);
    }
}

void hnsw_search_one(HnswWalk &w, size_t ef, faiss::Index::idx_t k,
                     const faiss::IDSelector *sel, float *D,
                     faiss::Index::idx_t *L)
{
    w.next_query();
    HnswNode start = hnsw_descend(w);
    HnswMinQ todo;
    HnswMaxQ beam, best;
    w.visit(start.id);
    todo.push(start);
    beam.push(start);
    hnsw_offer(best, k, sel, start);
    while (!todo.empty()) {
        HnswNode c = todo.top();
        if (beam.size() >= ef && c.d > beam.top().d)
            break;
        todo.pop();
        size_t b, e;
        w.g.neighbor_range(c.id, 0, &b, &e);
        for (size_t j = b; j < e && w.g.neighbors[j] >= 0; j++) {
            int32_t v = w.g.neighbors[j];
            if (!w.visit(v))
                continue;
            HnswNode n = {w.dist(v), v};
            hnsw_offer(best, k, sel, n);
            if (beam.size() < ef || n.d < beam.top().d) {
                todo.push(n);
                beam.push(n);
                if (beam.size() > ef)
                    beam.pop();
            }
        }
    }
    for (faiss::Index::idx_t i = (faiss::Index::idx_t)best.size(); i < k; i++) {
        D[i] = w.ip ? -std::numeric_limits<float>::max()
                    : std::numeric_limits<float>::max();
        L[i] = -1;
    }
    for (faiss::Index::idx_t i = (faiss::Index::idx_t)best.size(); i-- > 0;) {
        D[i] = w.ip ? -best.top().d : best.top().d;
        L[i] = best.top().id;
        best.pop();
    }
}

/* n queries over OpenMP threads, like FAISS's own search. No exception may
 * leave an OpenMP region (nor skip the loop's barrier): each is caught where
 * it happens, the first one is kept and rethrown after the region. */
void hnsw_search(const faiss::IndexHNSW *h, faiss::Index::idx_t n,
                 const float *x, faiss::Index::idx_t k,
                 const faiss::SearchParametersHNSW *p, float *distances,
                 faiss::Index::idx_t *labels)
{
    FAISS_THROW_IF_NOT_MSG(k > 0, "k must be > 0");
    FAISS_THROW_IF_NOT_MSG(h->storage, "IndexHNSW without storage");
    const size_t ef = (size_t)std::max<faiss::Index::idx_t>(p->efSearch, k);
    const bool ip = h->metric_type == faiss::METRIC_INNER_PRODUCT;
    std::exception_ptr failed;
#pragma omp parallel if (n > 1)
    {
        std::unique_ptr<faiss::DistanceComputer> dc;
        std::unique_ptr<HnswWalk> w;
        try {
            dc.reset(h->storage->get_distance_computer());
            w.reset(new HnswWalk{h->hnsw, *dc, ip,
                                 std::vector<uint8_t>(h->ntotal, 0)});
        } catch (...) {
#pragma omp critical(kb_hnsw_search)
            failed = failed ? failed : std::current_exception();
        }
#pragma omp for
        for (faiss::Index::idx_t i = 0; i < n; i++) {
            if (!w)
                continue;
            try {
                dc->set_query(x + i * h->d);
                hnsw_search_one(*w, ef, k, p->sel, distances + i * k,
                                labels + i * k);
            } catch (...) {
#pragma omp critical(kb_hnsw_search)
                failed = failed ? failed : std::current_exception();
            }
        }
    }
    if (failed)
        std::rethrow_exception(failed);
}

void search_params(const faiss::Index *index, faiss::Index::idx_t n,
                   const float *x, faiss::Index::idx_t k,
                   const faiss::SearchParameters *params, float *distances,
                   faiss::Index::idx_t *labels)
{
    if (index->ntotal == 0) {
        fill_empty(index, n, k, distances, labels);
        return;
    }
    auto *hnsw = dynamic_cast<const faiss::IndexHNSW *>(index);
    auto *hp = dynamic_cast<const faiss::SearchParametersHNSW *>(params);
    if (hnsw && hp) {
        hnsw_search(hnsw, n, x, k, hp, distances, labels);
        return;
    }
    auto *map = dynamic_cast<const faiss::IndexIDMap *>(index);
    if (!map || !params) { /* 1.7.3's IDMap search is fine without params */
        index->search(n, x, k, distances, labels, params);
        return;
    }
    const std::vector<faiss::Index::idx_t> &ids = map->id_map;
    ExternalIdSelector wrap(params->sel, &ids);
    ParamsCopy copy;
    search_params(map->index, n, x, k, with_selector(params, &wrap, copy),
                  distances, labels);
    for (faiss::Index::idx_t i = 0; i < n * k; i++) {
        faiss::Index::idx_t l = labels[i];
        labels[i] = l >= 0 && static_cast<size_t>(l) < ids.size() ? ids[l] : -1;
    }
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

/* GROWTH OF FLAT STORAGE
 * A flat index (and an HNSW index's vectors) keep their codes in one
 * std::vector, which add() grows by resize(): twice the size each time it
 * is full, copying everything into fresh memory. Fresh memory is costly on
 * the first write to each page (measured on the 2-core VM of FIGURES.md:
 * 1.46 s to touch 512 MB), so a node that adds 100k x 384 vectors in merge
 * steps spent more time in those copies than in anything else. Before the
 * add, this unit reserves four times the current size instead (pages that
 * are never written cost address space, not memory), which cuts the copied
 * bytes from about one to about a third of the final size. Behaviour is
 * otherwise that of add(). */
static faiss::IndexFlatCodes *flat_storage(faiss::Index *index)
{
    if (auto *m = dynamic_cast<faiss::IndexIDMap *>(index))
        index = m->index;
    if (auto *h = dynamic_cast<faiss::IndexHNSW *>(index))
        index = h->storage;
    return dynamic_cast<faiss::IndexFlatCodes *>(index);
}

static void reserve_for_add(faiss::Index *index, idx_t n)
{
    faiss::IndexFlatCodes *f = flat_storage(index);
    if (!f || n <= 0)
        return;
    size_t need = (static_cast<size_t>(f->ntotal) + static_cast<size_t>(n)) *
                  f->code_size;
    if (need <= f->codes.capacity())
        return;
    size_t want = std::max(need, f->codes.size() * 4);
    try {
        f->codes.reserve(want);
    } catch (const std::bad_alloc &) {
        /* add() then asks for only what it needs */
    }
}

int faiss_Index_add_with_ids(FaissIndex *index, idx_t n, const float *x,
                             const idx_t *xids)
{
    /* The header says "if non-null": NULL ids means sequential ids (add). */
    return guard([&] {
        reserve_for_add(ix(index), n);
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

int faiss_Index_search_with_params(const FaissIndex *index, idx_t n,
                                   const float *x, idx_t k,
                                   const FaissSearchParameters *params,
                                   float *distances, idx_t *labels)
{
    return guard([&] {
        search_params(ix(index), n, x, k, sp(params), distances, labels);
    });
}

int faiss_Index_train(FaissIndex *index, idx_t n, const float *x)
{
    return guard([&] { ix(index)->train(n, x); });
}

int faiss_Index_reconstruct(const FaissIndex *index, idx_t key, float *recons)
{
    /* On an IndexIDMap2, key is the external id (unknown: std::out_of_range
     * from its reverse map, returned as STD_EXCEPT). */
    return guard([&] { ix(index)->reconstruct(key, recons); });
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

/* ---- search parameters (faiss_c_ext.h) ---------------------------------- */

/* Handles hold the faiss::SearchParameters* base pointer, as index handles
 * hold faiss::Index*; `sel` is borrowed (never freed by the parameters). */
int faiss_SearchParameters_new(FaissSearchParameters **p_sp,
                               FaissIDSelector *sel)
{
    return guard([&] {
        faiss::SearchParameters *p = new faiss::SearchParameters;
        p->sel = reinterpret_cast<faiss::IDSelector *>(sel);
        *p_sp = sp_handle<FaissSearchParameters>(p);
    });
}

int faiss_SearchParametersIVF_new_with(FaissSearchParametersIVF **p_sp,
                                       FaissIDSelector *sel, size_t nprobe,
                                       size_t max_codes)
{
    return guard([&] {
        auto *p = new faiss::SearchParametersIVF;
        p->sel = reinterpret_cast<faiss::IDSelector *>(sel);
        p->nprobe = nprobe;
        p->max_codes = max_codes;
        *p_sp = sp_handle<FaissSearchParametersIVF>(p);
    });
}

int faiss_SearchParametersHNSW_new_with(FaissSearchParametersHNSW **p_sp,
                                        FaissIDSelector *sel, int efSearch)
{
    return guard([&] {
        auto *p = new faiss::SearchParametersHNSW;
        p->sel = reinterpret_cast<faiss::IDSelector *>(sel);
        p->efSearch = efSearch;
        *p_sp = sp_handle<FaissSearchParametersHNSW>(p);
    });
}

/* All three free through the virtual destructor; NULL is a no-op. */
void faiss_SearchParameters_free(FaissSearchParameters *obj)
{
    delete sp(obj);
}

void faiss_SearchParametersIVF_free(FaissSearchParametersIVF *obj)
{
    delete sp(obj);
}

void faiss_SearchParametersHNSW_free(FaissSearchParametersHNSW *obj)
{
    delete sp(obj);
}

/* ---- wrapped indexes: ID map, IVF ------------------------------------- */

/* FaissIndexIDMap2 and FaissIndexIVF are the FaissIndex handle type itself
 * (FAISS_DECLARE_CLASS_INHERITED); a cast answers NULL for another kind. */
FaissIndexIDMap2 *faiss_IndexIDMap2_cast(FaissIndex *index)
{
    auto *p = dynamic_cast<faiss::IndexIDMap2 *>(ix(index));
    return p ? handle(p) : nullptr;
}

FaissIndex *faiss_IndexIDMap2_sub_index(FaissIndexIDMap2 *index)
{
    auto *p = dynamic_cast<faiss::IndexIDMap2 *>(ix(index));
    return p ? handle(p->index) : nullptr;
}

FaissIndexIVF *faiss_IndexIVF_cast(FaissIndex *index)
{
    auto *p = dynamic_cast<faiss::IndexIVF *>(ix(index));
    return p ? handle(p) : nullptr;
}

int faiss_IndexIVF_make_direct_map(FaissIndexIVF *index,
                                   int new_maintain_direct_map)
{
    return guard([&] {
        auto *p = dynamic_cast<faiss::IndexIVF *>(ix(index));
        if (!p)
            throw faiss::FaissException("make_direct_map: not an IndexIVF");
        p->make_direct_map(new_maintain_direct_map != 0);
    });
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

/* ---- cloning ----------------------------------------------------------- */

/* FAISS's deep copy, except for flat storage (an IndexFlat, IndexFlatIP or
 * IndexFlatL2, alone or under an IDMap/IDMap2): its codes are copied once
 * into an array with room for four times as many vectors (or the clone
 * fails), as reserve_for_add() would make on the next add. kbsync clones a
 * large flat index to add to the copy outside its lock (idx_vec.h, "growth
 * outside the lock"); with plain clone_index() the add would copy
 * everything a second time. What the copy holds and how it behaves are
 * those of clone_index(). */
namespace
{
struct RoomyCloner : faiss::Cloner {
    faiss::Index *clone_Index(const faiss::Index *index) override
    {
        const std::type_info &t = typeid(*index);
        /* An id map is copied here, not by faiss::Cloner, which copies the
         * wrapper before cloning what it wraps and loses the copy when
         * that clone throws (as the flat one below may, by design). The
         * wrapper is built empty (owning nothing) and filled in, so that
         * no failure can free the original's storage either. */
        if (t == typeid(faiss::IndexIDMap) || t == typeid(faiss::IndexIDMap2)) {
            auto *src = static_cast<const faiss::IndexIDMap *>(index);
            std::unique_ptr<faiss::Index> inner(clone_Index(src->index));
            std::unique_ptr<faiss::IndexIDMap> c;
            if (t == typeid(faiss::IndexIDMap2)) {
                auto *c2 = new faiss::IndexIDMap2();
                c.reset(c2);
                c2->rev_map =
                    static_cast<const faiss::IndexIDMap2 *>(index)->rev_map;
            } else {
                c.reset(new faiss::IndexIDMap());
            }
            static_cast<faiss::Index &>(*c) =
                static_cast<const faiss::Index &>(*src);
            c->id_map = src->id_map;
            c->index = inner.release();
            c->own_fields = true;
            return c.release();
        }
        if (t != typeid(faiss::IndexFlat) && t != typeid(faiss::IndexFlatIP) &&
            t != typeid(faiss::IndexFlatL2))
            return faiss::Cloner::clone_Index(index);
        auto *src = static_cast<const faiss::IndexFlat *>(index);
        std::unique_ptr<faiss::IndexFlat> c;
        if (t == typeid(faiss::IndexFlatIP))
            c.reset(new faiss::IndexFlatIP(src->d));
        else if (t == typeid(faiss::IndexFlatL2))
            c.reset(new faiss::IndexFlatL2(src->d));
        else
            c.reset(new faiss::IndexFlat(src->d, src->metric_type));
        c->metric_arg = src->metric_arg;
        c->verbose = src->verbose;
        c->is_trained = src->is_trained;
        /* When the room cannot be had, the clone fails (std::bad_alloc,
         * a FaissErrorCode to the caller) rather than copy at the exact
         * size: kbsync counts on the room (idx_vec.c, idx_vec_adopt), and
         * a failed copy makes it grow the index in place for a while. */
        c->codes.reserve(src->codes.size() * 4);
        c->codes.assign(src->codes.begin(), src->codes.end());
        c->ntotal = src->ntotal;
        return c.release();
    }
};
} // namespace

int faiss_clone_index(const FaissIndex *index, FaissIndex **p_out)
{
    /* *p_out is written only on success. */
    return guard([&] {
        RoomyCloner cloner;
        *p_out = handle(cloner.clone_Index(ix(index)));
    });
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

/* The FILE* forms: the caller owns f (kbsync's checkpoints pass a stream
 * that checksums what goes through it). A short read or write throws inside
 * FAISS, which guard() turns into a code. */
int faiss_write_index(const FaissIndex *idx, FILE *f)
{
    return guard([&] { faiss::write_index(ix(idx), f); });
}

int faiss_read_index(FILE *f, int io_flags, FaissIndex **p_out)
{
    /* *p_out is written only on success. */
    return guard([&] { *p_out = handle(faiss::read_index(f, io_flags)); });
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
