/* idx_vec: the node's vector index over the official FAISS C API
 * (faiss/c_api plus faiss_c_ext.h; a real libfaiss_c or our
 * faiss_c_compat.cpp). In: vectors under labels, tombstones, searches. Out:
 * filtered top-k. State: the FAISS index (+ a flat fallback for an untrained
 * IVF) and the stored/dead label bitmaps. FAISS return codes are translated
 * here, once: any failure becomes KB_EINDEX with FAISS's text copied at once.
 */
#include "idx_vec.h"

#include "faiss_c_ext.h"
#include "kb_err.h"
#include "kb_util.h"

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

#include <assert.h>
#include <dlfcn.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== TOMBSTONES: THE LABEL BITMAPS =======================================
 * Removing a vector from FAISS shifts its storage (flat: memmove of every
 * later vector; HNSW: impossible), so idx_vec never does: a removal sets a
 * "dead" bit and every search skips dead labels. Compaction is the caller's
 * job (build a new idx_vec in the background, swap).
 *
 * Labels are LSNs: non-negative, growing, dense-ish, below 2^40. Two bits per
 * label (stored, dead) live in pages of 4096 labels (1 KiB), allocated on
 * first use; 4096 pages form a directory (16.7M labels), and the directories
 * hang off a top array indexed by label >> 24 that grows by realloc. A dense
 * run of 10M LSNs costs 2.5 MB; a stray huge label costs one page, one
 * directory and a top array of at most 65536 pointers.
 *
 * Pages and directories count their live labels, so "live labels <= L" (the
 * vectors a search bounded by max_label can return) is a sum over at most
 * label >> 24 directories + 4096 pages + 64 words, whatever the index size. */
#define LS_PAGE_SHIFT 12
#define LS_PAGE_LABELS (1u << LS_PAGE_SHIFT)
#define LS_PAGE_WORDS (LS_PAGE_LABELS / 64)
#define LS_DIR_SHIFT 12
#define LS_DIR_PAGES (1u << LS_DIR_SHIFT)
#define LS_TOP_SHIFT (LS_PAGE_SHIFT + LS_DIR_SHIFT)

typedef struct ls_page {
    uint64_t stored[LS_PAGE_WORDS];
    uint64_t dead[LS_PAGE_WORDS];
    uint32_t nlive;
} ls_page_t;

typedef struct ls_dir {
    ls_page_t *page[LS_DIR_PAGES];
    uint64_t nlive;
} ls_dir_t;

typedef struct labelset {
    ls_dir_t **top;     /* top[label >> 24]; NULL where no label was stored */
    size_t ntop;        /* entries in top */
    size_t npages;      /* pages allocated */
    size_t ndirs;       /* directories allocated */
    uint64_t nstored;   /* labels stored (live + dead) */
    uint64_t ndead;     /* stored labels removed */
    int64_t max_stored; /* highest label ever stored, -1 if none */
} labelset_t;

static const ls_page_t *ls_page(const labelset_t *ls, int64_t label)
{
    if (label < 0 || label >= IDX_VEC_LABEL_LIMIT)
        return NULL;
    size_t t = (size_t)(label >> LS_TOP_SHIFT);
    if (t >= ls->ntop || !ls->top[t])
        return NULL;
    return ls->top[t]->page[(label >> LS_PAGE_SHIFT) & (LS_DIR_PAGES - 1)];
}

static int ls_bit(const uint64_t *words, int64_t label)
{
    uint32_t b = (uint32_t)(label & (LS_PAGE_LABELS - 1));
    return (int)((words[b >> 6] >> (b & 63)) & 1);
}

static int ls_stored(const labelset_t *ls, int64_t label)
{
    const ls_page_t *p = ls_page(ls, label);
    return p && ls_bit(p->stored, label);
}

static int ls_live(const labelset_t *ls, int64_t label)
{
    const ls_page_t *p = ls_page(ls, label);
    return p && ls_bit(p->stored, label) && !ls_bit(p->dead, label);
}

/* The page of label, allocated (with its directory) if need be; NULL when
 * out of memory. label must be in range. */
static ls_page_t *ls_page_make(labelset_t *ls, int64_t label)
{
    size_t t = (size_t)(label >> LS_TOP_SHIFT);
    if (t >= ls->ntop) {
        size_t n = ls->ntop ? ls->ntop : 1;
        while (n <= t)
            n *= 2;
        ls_dir_t **top = realloc(ls->top, n * sizeof *top);
        if (!top)
            return NULL;
        memset(top + ls->ntop, 0, (n - ls->ntop) * sizeof *top);
        ls->top = top;
        ls->ntop = n;
    }
    if (!ls->top[t]) {
        if (!(ls->top[t] = calloc(1, sizeof(ls_dir_t))))
            return NULL;
        ls->ndirs++;
    }
    ls_page_t **pp =
        &ls->top[t]->page[(label >> LS_PAGE_SHIFT) & (LS_DIR_PAGES - 1)];
    if (!*pp) {
        if (!(*pp = calloc(1, sizeof(ls_page_t))))
            return NULL;
        ls->npages++;
    }
    return *pp;
}

/* Flips label's stored bit to `on` and keeps the live counts; the label must
 * not be dead. Returns 0, or KB_ENOMEM. */
static int ls_set_stored(labelset_t *ls, int64_t label, int on)
{
    ls_page_t *p = ls_page_make(ls, label);
    if (!p)
        return KB_ENOMEM;
    uint32_t b = (uint32_t)(label & (LS_PAGE_LABELS - 1));
    uint64_t m = UINT64_C(1) << (b & 63);
    int d = on ? 1 : -1;
    p->stored[b >> 6] = on ? p->stored[b >> 6] | m : p->stored[b >> 6] & ~m;
    p->nlive += d;
    ls->top[label >> LS_TOP_SHIFT]->nlive += d;
    ls->nstored += d;
    if (on && label > ls->max_stored)
        ls->max_stored = label;
    return 0;
}

static void ls_kill(labelset_t *ls, int64_t label)
{
    if (!ls_live(ls, label))
        return;
    ls_page_t *p = (ls_page_t *)ls_page(ls, label);
    uint32_t b = (uint32_t)(label & (LS_PAGE_LABELS - 1));
    p->dead[b >> 6] |= UINT64_C(1) << (b & 63);
    p->nlive--;
    ls->top[label >> LS_TOP_SHIFT]->nlive--;
    ls->ndead++;
}

/* Live labels <= max. */
static uint64_t ls_live_upto(const labelset_t *ls, int64_t max)
{
    if (max >= ls->max_stored)
        return ls->nstored - ls->ndead;
    if (max < 0)
        return 0;
    size_t t = (size_t)(max >> LS_TOP_SHIFT);
    uint32_t pg = (uint32_t)((max >> LS_PAGE_SHIFT) & (LS_DIR_PAGES - 1));
    uint32_t b = (uint32_t)(max & (LS_PAGE_LABELS - 1));
    uint64_t n = 0;
    for (size_t i = 0; i < t && i < ls->ntop; i++)
        n += ls->top[i] ? ls->top[i]->nlive : 0;
    const ls_dir_t *d = t < ls->ntop ? ls->top[t] : NULL;
    if (!d)
        return n;
    for (uint32_t i = 0; i < pg; i++)
        n += d->page[i] ? d->page[i]->nlive : 0;
    const ls_page_t *p = d->page[pg];
    for (uint32_t w = 0; p && w <= b >> 6; w++) {
        uint64_t live = p->stored[w] & ~p->dead[w];
        if (w == b >> 6 && (b & 63) != 63)
            live &= (UINT64_C(1) << ((b & 63) + 1)) - 1;
        n += (uint64_t)__builtin_popcountll(live);
    }
    return n;
}

static uint64_t ls_bytes(const labelset_t *ls)
{
    return ls->npages * sizeof(ls_page_t) + ls->ndirs * sizeof(ls_dir_t) +
           ls->ntop * sizeof(ls_dir_t *);
}

static void ls_free(labelset_t *ls)
{
    for (size_t t = 0; t < ls->ntop; t++) {
        if (!ls->top[t])
            continue;
        for (uint32_t i = 0; i < LS_DIR_PAGES; i++)
            free(ls->top[t]->page[i]);
        free(ls->top[t]);
    }
    free(ls->top);
    memset(ls, 0, sizeof *ls);
}

/* ==== THE HANDLE ========================================================= */

enum vec_kind { VEC_FLAT, VEC_HNSW, VEC_IVF };

struct idx_vec {
    FaissIndex *index;    /* IDMap2 over the kind's index */
    FaissIndex *fallback; /* IDMap2,Flat while an IVF is untrained, else NULL */
    uint32_t dim;
    int metric;      /* idx_metric_t */
    int kind;        /* enum vec_kind */
    uint32_t hnsw_m; /* HNSW: links per node (2M on level 0) */
    uint32_t nlist;  /* IVF: inverted lists */
    uint32_t pq_m;   /* IVF,PQ: sub-quantizers of 8 bits; 0 for IVF,Flat */
    uint64_t room;   /* flat: vectors the array holds without reallocating,
                        as far as this handle knows (0: unknown) */
    labelset_t ls;
};

/* The FAISS index that holds the vectors now. */
static const FaissIndex *active(const idx_vec_t *v)
{
    return v->fallback ? v->fallback : v->index;
}

/* The score of an unfilled slot: worse than any real one. */
static float no_score(const idx_vec_t *v)
{
    return v->metric == IDX_METRIC_L2 ? FLT_MAX : -FLT_MAX;
}

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

/* ==== DESCRIPTIONS ========================================================
 * kbsync maintains three kinds, each behind an IDMap2 (labels are sparse
 * 64-bit LSNs; IDMap2 also reconstructs by label):
 *   Flat                  exact; the default
 *   HNSW<M>[,Flat]        graph over full vectors; tombstones keep the graph
 *                         navigable (FAISS cannot remove from HNSW anyway)
 *   IVF<n>,Flat|PQ<m>     k-means lists (+ product quantizer); a direct map
 *                         lets it reconstruct; until trained, an exact flat
 *                         fallback holds the vectors
 * Anything else FAISS builds (SQ, LSH, PCA, HNSW over PQ, ...) is refused:
 * its training, removal or reconstruction rules are not handled here. */
typedef struct vec_desc {
    int kind;
    uint32_t m, nlist, pq_m;
} vec_desc_t;

/* Parses an unsigned decimal in [lo, hi] at *s; advances *s. */
static int parse_num(const char **s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    if (**s < '0' || **s > '9')
        return 0;
    unsigned long n = strtoul(*s, &end, 10);
    if (n < lo || n > hi)
        return 0;
    *s = end;
    *out = (uint32_t)n;
    return 1;
}

/* 1 when s is one of the kinds above (without the IDMap prefix). */
static int parse_desc(const char *s, vec_desc_t *d)
{
    memset(d, 0, sizeof *d);
    if (!strcmp(s, "Flat")) {
        d->kind = VEC_FLAT;
        return 1;
    }
    if (!strncmp(s, "HNSW", 4)) {
        s += 4;
        d->kind = VEC_HNSW;
        return parse_num(&s, 2, 512, &d->m) && (!*s || !strcmp(s, ",Flat"));
    }
    if (!strncmp(s, "IVF", 3)) {
        s += 3;
        d->kind = VEC_IVF;
        if (!parse_num(&s, 1, 1u << 24, &d->nlist))
            return 0;
        if (!strcmp(s, ",Flat"))
            return 1;
        if (strncmp(s, ",PQ", 3))
            return 0;
        s += 3;
        return parse_num(&s, 1, 4096, &d->pq_m) && !*s;
    }
    return 0;
}

/* The factory string kbsync builds for a parsed description. FAISS's
 * factory turns on "polysemous training" for PQ, which reorders codes for
 * Hamming-distance filtering that kbsync never uses and costs ~24 s per
 * idx_vec_train() whatever the data size (measured, 1.7.3): "np" skips it. */
static void factory_desc(const vec_desc_t *d, char *buf, size_t len)
{
    if (d->kind == VEC_FLAT)
        snprintf(buf, len, "IDMap2,Flat");
    else if (d->kind == VEC_HNSW)
        snprintf(buf, len, "IDMap2,HNSW%u", d->m);
    else if (d->pq_m) /* np: no polysemous training (below) */
        snprintf(buf, len, "IDMap2,IVF%u,PQ%unp", d->nlist, d->pq_m);
    else
        snprintf(buf, len, "IDMap2,IVF%u,Flat", d->nlist);
}

static FaissMetricType metric_of(int metric)
{
    return metric == IDX_METRIC_L2 ? METRIC_L2 : METRIC_INNER_PRODUCT;
}

/* Builds the FAISS index (and, for IVF, its direct map and flat fallback). */
static int vec_build(idx_vec_t *v, const char *desc, const char *user,
                     int parsed, char *err, size_t errlen)
{
    if (faiss_index_factory(&v->index, (int)v->dim, desc,
                            metric_of(v->metric))) {
        const char *why = faiss_get_last_error();
        return kb_seterr(err, errlen, KB_EINDEX,
                         "index \"%s\": FAISS index_factory failed: %s", user,
                         why ? why : "(no error text)");
    }
    if (!parsed)
        return kb_seterr(err, errlen, KB_EINDEX,
                         "index \"%s\" is a kind kbsync cannot maintain; use "
                         "Flat, HNSW<M> or HNSW<M>,Flat (M 2..512), "
                         "IVF<n>,Flat or IVF<n>,PQ<m>",
                         user);
    if (v->kind != VEC_IVF)
        return 0;
    FaissIndexIDMap2 *map = faiss_IndexIDMap2_cast(v->index);
    FaissIndexIVF *ivf =
        map ? faiss_IndexIVF_cast(faiss_IndexIDMap2_sub_index(map)) : NULL;
    if (!ivf)
        return kb_seterr(err, errlen, KB_EINDEX,
                         "index \"%s\": FAISS built no IDMap2 over an IVF",
                         desc);
    if (faiss_IndexIVF_make_direct_map(ivf, 1))
        return vec_fail(err, errlen, "IndexIVF_make_direct_map");
    if (faiss_index_factory(&v->fallback, (int)v->dim, "IDMap2,Flat",
                            metric_of(v->metric)))
        return vec_fail(err, errlen, "index_factory (flat fallback)");
    return 0;
}

int idx_vec_new(uint32_t dim, const char *description, int metric,
                idx_vec_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (dim == 0)
        return kb_seterr(err, errlen, KB_EINVAL, "dimension 0");
    if (metric < IDX_METRIC_L2 || metric > IDX_METRIC_COSINE)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "metric %d unknown (0 = l2, 1 = ip, 2 = cosine)",
                         metric);
    const char *user = description && *description ? description : "Flat";
    const char *s = user;
    if (!strncmp(s, "IDMap2,", 7))
        s += 7;
    else if (!strncmp(s, "IDMap,", 6))
        s += 6;
    vec_desc_t d;
    char desc[300];
    int parsed = parse_desc(s, &d);
    if (parsed)
        factory_desc(&d, desc, sizeof desc);
    else
        snprintf(desc, sizeof desc, "IDMap2,%s", s);

    idx_vec_t *v = calloc(1, sizeof *v);
    if (!v)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    v->dim = dim;
    v->metric = metric;
    v->kind = d.kind;
    v->hnsw_m = d.m;
    v->nlist = d.nlist;
    v->pq_m = d.pq_m;
    v->ls.max_stored = -1;
    int rc = vec_build(v, desc, user, parsed, err, errlen);
    if (rc) {
        idx_vec_free(&v);
        return rc;
    }
    *out = v;
    return 0;
}

void idx_vec_free(idx_vec_t **v)
{
    if (!v || !*v)
        return;
    faiss_Index_free((*v)->index);
    faiss_Index_free((*v)->fallback);
    ls_free(&(*v)->ls);
    free(*v);
    *v = NULL;
}

/* ==== ADD, REMOVE, TRAIN ================================================= */

int idx_vec_normalise(float *dst, const float *src, uint32_t dim)
{
    double ss = 0;
    for (uint32_t j = 0; j < dim; j++)
        ss += (double)src[j] * src[j];
    if (!(ss > 0))
        return -1;
    double inv = 1.0 / sqrt(ss);
    for (uint32_t j = 0; j < dim; j++)
        dst[j] = (float)(src[j] * inv);
    return 0;
}

/* Under cosine: a malloc'd normalised copy of n vectors in *copy (NULL for
 * other metrics, when x is used as is). what names them in errors. */
static int normalised(const idx_vec_t *v, size_t n, const float *x,
                      const int64_t *labels, const char *what, float **copy,
                      char *err, size_t errlen)
{
    *copy = NULL;
    if (v->metric != IDX_METRIC_COSINE || n == 0)
        return 0;
    float *y = malloc(n * v->dim * sizeof *y);
    if (!y)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (idx_vec_normalise(y + i * v->dim, x + i * v->dim, v->dim)) {
            free(y);
            if (labels)
                return kb_seterr(err, errlen, KB_EINVAL,
                                 "%s %zu (label %lld) is a zero vector, "
                                 "which has no cosine",
                                 what, i, (long long)labels[i]);
            return kb_seterr(err, errlen, KB_EINVAL,
                             "%s %zu is a zero vector, which has no cosine",
                             what, i);
        }
    }
    *copy = y;
    return 0;
}

/* Marks labels[0..n) stored, or marks none and says why. */
static int mark_stored(idx_vec_t *v, size_t n, const int64_t *labels, char *err,
                       size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        int64_t l = labels[i];
        int rc = 0;
        if (l < 0 || l >= IDX_VEC_LABEL_LIMIT)
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "label %lld out of range [0, 2^40)", (long long)l);
        else if (ls_stored(&v->ls, l))
            rc =
                kb_seterr(err, errlen, KB_EINVAL,
                          "label %lld is already stored%s; labels are never "
                          "reused",
                          (long long)l, ls_live(&v->ls, l) ? "" : " (removed)");
        else if ((rc = ls_set_stored(&v->ls, l, 1)))
            kb_seterr(err, errlen, rc, "label bitmap: out of memory");
        if (rc) {
            while (i-- > 0)
                ls_set_stored(&v->ls, labels[i], 0);
            return rc;
        }
    }
    return 0;
}

int idx_vec_add(idx_vec_t *v, size_t n, const float *x, const int64_t *labels,
                char *err, size_t errlen)
{
    if (n == 0)
        return 0;
    float *y = NULL;
    int rc = normalised(v, n, x, labels, "vector", &y, err, errlen);
    if (!rc)
        rc = mark_stored(v, n, labels, err, errlen);
    if (!rc && faiss_Index_add_with_ids(v->fallback ? v->fallback : v->index,
                                        (idx_t)n, y ? y : x, labels)) {
        rc = vec_fail(err, errlen, "add_with_ids");
        for (size_t i = 0; i < n; i++)
            ls_set_stored(&v->ls, labels[i], 0);
    }
    free(y);
    return rc;
}

int idx_vec_remove(idx_vec_t *v, size_t n, const int64_t *labels, char *err,
                   size_t errlen)
{
    (void)err;
    (void)errlen;
    for (size_t i = 0; i < n; i++)
        ls_kill(&v->ls, labels[i]);
    return 0;
}

/* ---- growth outside the lock (idx_vec.h) ---- */

struct idx_vec_grown {
    FaissIndex *index; /* the grown copy, or after adopt the old index */
    const FaissIndex *from; /* the index it was copied from */
    idx_t from_n;           /* its vector count then */
    size_t n;
    int64_t *labels;
};

int idx_vec_grow_due(const idx_vec_t *v, size_t n)
{
    if (v->kind != VEC_FLAT || v->fallback || n == 0)
        return 0;
    uint64_t after = (uint64_t)faiss_Index_ntotal(v->index) + n;
    return after > v->room &&
           after * v->dim * sizeof(float) >= IDX_VEC_GROW_MIN_BYTES;
}

int idx_vec_grow(const idx_vec_t *v, size_t n, const float *x,
                 const int64_t *labels, idx_vec_grown_t **out, char *err,
                 size_t errlen)
{
    *out = NULL;
    idx_vec_grown_t *g = calloc(1, sizeof *g);
    float *y = NULL;
    int rc = 0;
    if (!g || !(g->labels = malloc((n ? n : 1) * sizeof *labels))) {
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
        goto out;
    }
    memcpy(g->labels, labels, n * sizeof *labels);
    g->n = n;
    g->from = v->index;
    g->from_n = faiss_Index_ntotal(v->index);
    if ((rc = normalised(v, n, x, labels, "vector", &y, err, errlen)))
        goto out;
    /* The copy (which faiss_c_compat.cpp makes with room for four times
     * as many vectors; a system faiss_c makes it exactly as large, and the
     * add below then reallocates it) lives in memory no search reads yet. */
    if (faiss_clone_index(v->index, &g->index)) {
        rc = vec_fail(err, errlen, "clone_index");
        goto out;
    }
    if (n && faiss_Index_add_with_ids(g->index, (idx_t)n, y ? y : x,
                                      labels)) {
        rc = vec_fail(err, errlen, "add_with_ids");
        goto out;
    }
out:
    free(y);
    if (rc)
        idx_vec_grown_free(&g);
    *out = g;
    return rc;
}

int idx_vec_adopt(idx_vec_t *v, idx_vec_grown_t *g, char *err, size_t errlen)
{
    if (g->from != v->index || faiss_Index_ntotal(v->index) != g->from_n ||
        !g->index)
        return kb_seterr(err, errlen, KB_EUNAVAIL,
                         "the index changed while its grown copy was made");
    int rc = mark_stored(v, g->n, g->labels, err, errlen);
    if (rc)
        return rc;
    FaissIndex *old = v->index;
    v->index = g->index;
    g->index = old;
    g->from = NULL;
    /* The add that grew the copy left room for at least as many vectors
     * again as it held: FAISS resizes a std::vector, which at least doubles
     * its capacity. faiss_c_compat.cpp's clone reserved four times as many
     * as it copied (when it cannot, the clone fails, and idx.c grows the
     * index in place for a while: this room is never counted on falsely). */
    uint64_t had = (uint64_t)g->from_n;
#ifdef KB_FAISS_COMPAT
    const uint64_t times = 4;
#else
    const uint64_t times = 2;
#endif
    v->room = had * times > had + g->n ? had * times : had + g->n;
    return 0;
}

void idx_vec_grown_free(idx_vec_grown_t **g)
{
    if (!g || !*g)
        return;
    faiss_Index_free((*g)->index);
    free((*g)->labels);
    free(*g);
    *g = NULL;
}

int idx_vec_train(idx_vec_t *v, size_t n, const float *x, char *err,
                  size_t errlen)
{
    if (!idx_vec_needs_training(v))
        return kb_seterr(err, errlen, KB_EINVAL, "%s",
                         v->kind == VEC_IVF
                             ? "the IVF index is trained already"
                             : "only an IVF index needs training");
    if (v->ls.nstored)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "index stores %llu vectors; train an empty index, "
                         "then add them",
                         (unsigned long long)v->ls.nstored);
    if (n == 0)
        return kb_seterr(err, errlen, KB_EINVAL, "no training vectors");
    float *y = NULL;
    int rc = normalised(v, n, x, NULL, "training vector", &y, err, errlen);
    if (!rc && faiss_Index_train(v->index, (idx_t)n, y ? y : x))
        rc = vec_fail(err, errlen, "train");
    free(y);
    if (rc)
        return rc;
    faiss_Index_free(v->fallback);
    v->fallback = NULL;
    return 0;
}

/* ==== SEARCH ==============================================================
 * FILTERING. A stored vector can be returned when it is live (not dead),
 * its label <= max_label (when set) and allow() accepts it (when set). FAISS
 * knows none of this, so each query asks FAISS for k' >= k neighbours and
 * keeps the first k that pass, in FAISS's order (best first).
 *
 * K' FOR THE FIRST TRY (all nq queries in one FAISS call, which keeps the
 * BLAS batch): with S stored vectors, E eligible ones (live and <= max_label,
 * counted exactly from the bitmaps) and I = S - E that can never be returned,
 *   no allow():  k' = min(k + I, 2 k S / E + 16)
 *   allow():     k' = 4 k S / E + 32
 * then k <= k' <= S. k + I is always enough on an exact index (the I
 * ineligible ones can take at most I slots); the second term caps it when
 * many are dead: it is twice the k S / E slots that hold k eligible vectors
 * when the ineligible ones are spread evenly, so a 50%-dead index asks for
 * 4k + 16, not half the index. An allow() filter of unknown selectivity
 * doubles it. With I = 0 and no allow(), k' = k. The batch's scratch is
 * nq k' (score, label) pairs: k' is also capped at max(k, 2^20 / nq), 12 MiB
 * per call; queries that need more get it from the retry, one at a time.
 *
 * RETRY. A query that ends with fewer than min(k, E) survivors (k with
 * allow()) while FAISS filled all k' slots is searched again, alone, with
 * k' doubled (at most S), until it has them, FAISS returns fewer than k'
 * labels (an IVF's probed lists or an HNSW graph walk are exhausted) or
 * k' = S. Exact indexes (flat, untrained IVF, IVF with nprobe = nlist) thus
 * return exactly min(k, eligible) hits.
 *
 * PARAMETERS. efSearch and nprobe go to FAISS per call
 * (faiss_Index_search_with_params), never into the shared index; HNSW's
 * efSearch is raised to k' (FAISS would use max(efSearch, k') anyway). */
typedef struct search {
    const idx_vec_t *v;
    const idx_vec_params_t *p;
    const float *q;  /* nq*dim queries, normalised under cosine */
    uint64_t stored; /* S */
    uint64_t elig;   /* E */
    uint32_t ef;     /* HNSW efSearch */
    size_t nprobe;   /* IVF nprobe */
    int filtering;   /* some stored vector may be skipped */
} search_t;

#define KP_BATCH_SLOTS (1u << 20)

static size_t first_kprime(const search_t *s, size_t nq, uint32_t k)
{
    double kp = k;
    if (s->filtering) {
        kp = 2.0 * k * ((double)s->stored / (double)s->elig) + 16;
        if (s->p->allow)
            kp *= 2;
        else if ((double)k + (double)(s->stored - s->elig) < kp)
            kp = (double)k + (double)(s->stored - s->elig);
        double budget = (double)(KP_BATCH_SLOTS / nq);
        if (kp > budget)
            kp = budget;
        if (kp < k)
            kp = k;
    }
    return kp >= (double)s->stored ? (size_t)s->stored : (size_t)kp;
}

/* One FAISS search of n queries for kp neighbours each. */
static int search_faiss(const search_t *s, size_t n, const float *q, size_t kp,
                        float *d, int64_t *l, char *err, size_t errlen)
{
    const idx_vec_t *v = s->v;
    FaissSearchParameters *fp = NULL;
    int rc = 0;
    if (v->fallback || v->kind == VEC_FLAT) {
        rc = faiss_Index_search(active(v), (idx_t)n, q, (idx_t)kp, d, l);
    } else {
        /* The derived handle types are FaissSearchParameters itself. */
        if (v->kind == VEC_HNSW)
            rc = faiss_SearchParametersHNSW_new_with(
                &fp, NULL, (int)(s->ef > kp ? s->ef : kp));
        else
            rc = faiss_SearchParametersIVF_new_with(&fp, NULL, s->nprobe, 0);
        if (!rc)
            rc = faiss_Index_search_with_params(active(v), (idx_t)n, q,
                                                (idx_t)kp, fp, d, l);
        faiss_SearchParameters_free(fp);
    }
    return rc ? vec_fail(err, errlen, "search") : 0;
}

/* Copies the hits of one FAISS row (kp slots) that pass the filters into
 * out (k slots), empties the slots after them; returns how many.
 * *full = FAISS filled all kp slots. */
static uint32_t keep_hits(const search_t *s, const float *d, const int64_t *l,
                          size_t kp, uint32_t k, float *os, int64_t *ol,
                          int *full)
{
    const idx_vec_params_t *p = s->p;
    uint32_t got = 0;
    *full = kp > 0 && l[kp - 1] >= 0;
    for (size_t j = 0; j < kp && got < k; j++) {
        int64_t lab = l[j];
        if (lab < 0 || !ls_live(&s->v->ls, lab) ||
            (p->max_label > 0 && lab > p->max_label) ||
            (p->allow && !p->allow(p->allow_ctx, lab)))
            continue;
        os[got] = d[j];
        ol[got++] = lab;
    }
    for (uint32_t j = got; j < k; j++) {
        os[j] = no_score(s->v);
        ol[j] = -1;
    }
    return got;
}

/* Searches query i alone with growing k' until it has its hits (RETRY). */
static int retry_one(const search_t *s, size_t i, size_t kp, uint32_t k,
                     float *os, int64_t *ol, char *err, size_t errlen)
{
    uint64_t want = s->p->allow || s->elig > k ? k : s->elig;
    float *d = NULL;
    int64_t *l = NULL;
    int rc = 0, full = 1;
    uint32_t got = 0;
    while (got < want && full && kp < s->stored) {
        kp = kp * 2 < s->stored ? kp * 2 : (size_t)s->stored;
        float *d2 = realloc(d, kp * sizeof *d);
        int64_t *l2 = d2 ? realloc(l, kp * sizeof *l) : NULL;
        d = d2 ? d2 : d;
        l = l2 ? l2 : l;
        if (!d2 || !l2) {
            rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
            break;
        }
        rc = search_faiss(s, 1, s->q + i * s->v->dim, kp, d, l, err, errlen);
        if (rc)
            break;
        got = keep_hits(s, d, l, kp, k, os, ol, &full);
    }
    free(d);
    free(l);
    return rc;
}

/* The first try for all queries, then the retries; out is pre-filled with
 * empty slots. */
static int search_run(const search_t *s, size_t nq, uint32_t k, float *scores,
                      int64_t *labels, char *err, size_t errlen)
{
    size_t kp = first_kprime(s, nq, k);
    float *d = malloc(nq * kp * sizeof *d);
    int64_t *l = malloc(nq * kp * sizeof *l);
    int rc = d && l ? 0 : kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (!rc)
        rc = search_faiss(s, nq, s->q, kp, d, l, err, errlen);
    uint64_t want = s->p->allow || s->elig > k ? k : s->elig;
    for (size_t i = 0; i < nq && !rc; i++) {
        float *os = scores + i * k;
        int64_t *ol = labels + i * k;
        int full;
        uint32_t got =
            keep_hits(s, d + i * kp, l + i * kp, kp, k, os, ol, &full);
        if (got < want && full && kp < s->stored)
            rc = retry_one(s, i, kp, k, os, ol, err, errlen);
    }
    free(d);
    free(l);
    return rc;
}

int idx_vec_search(const idx_vec_t *v, size_t nq, const float *q, uint32_t k,
                   float *scores, int64_t *labels, char *err, size_t errlen)
{
    return idx_vec_search_params(v, nq, q, k, NULL, scores, labels, err,
                                 errlen);
}

static size_t default_nprobe(const idx_vec_t *v)
{
    size_t np = v->nlist / IDX_VEC_NPROBE_DIV;
    if (np < IDX_VEC_NPROBE_MIN)
        np = IDX_VEC_NPROBE_MIN;
    return np < v->nlist ? np : v->nlist;
}

int idx_vec_search_params(const idx_vec_t *v, size_t nq, const float *q,
                          uint32_t k, const idx_vec_params_t *p, float *scores,
                          int64_t *labels, char *err, size_t errlen)
{
    static const idx_vec_params_t defaults;
    if (!p)
        p = &defaults;
    for (size_t i = 0; i < nq * (size_t)k; i++) {
        labels[i] = -1;
        scores[i] = no_score(v);
    }
    float *y = NULL;
    int rc = normalised(v, nq, q, NULL, "query", &y, err, errlen);
    if (rc)
        return rc;
    search_t s = {.v = v, .p = p, .q = y ? y : q, .stored = v->ls.nstored};
    s.elig = p->max_label > 0 ? ls_live_upto(&v->ls, p->max_label)
                              : v->ls.nstored - v->ls.ndead;
    s.filtering = s.elig < s.stored || p->allow;
    s.ef = p->ef_search ? p->ef_search : IDX_VEC_EF_SEARCH_DEFAULT;
    s.nprobe = p->nprobe ? p->nprobe : default_nprobe(v);
    if (s.nprobe > v->nlist)
        s.nprobe = v->nlist;
    /* Nothing to find. This also keeps an empty index away from FAISS
     * 1.7.3's BLAS path, which leaves the buffers unwritten then (and IDMap2
     * maps the garbage labels). */
    if (nq && k && s.elig)
        rc = search_run(&s, nq, k, scores, labels, err, errlen);
    free(y);
    return rc;
}

/* ==== READERS ============================================================ */

uint64_t idx_vec_count(const idx_vec_t *v)
{
    return v->ls.nstored - v->ls.ndead;
}

uint64_t idx_vec_dead(const idx_vec_t *v)
{
    return v->ls.ndead;
}

uint64_t idx_vec_stored(const idx_vec_t *v)
{
    return v->ls.nstored;
}

int idx_vec_is_live(const idx_vec_t *v, int64_t label)
{
    return ls_live(&v->ls, label);
}

const char *idx_vec_kind(const idx_vec_t *v)
{
    return v->kind == VEC_HNSW ? "hnsw" : v->kind == VEC_IVF ? "ivf" : "flat";
}

int idx_vec_is_trained(const idx_vec_t *v)
{
    return !v->fallback;
}

int idx_vec_needs_training(const idx_vec_t *v)
{
    return v->fallback != NULL;
}

size_t idx_vec_train_min(const idx_vec_t *v)
{
    if (v->kind != VEC_IVF)
        return 0;
    size_t k = v->pq_m && v->nlist < 256 ? 256 : v->nlist;
    return 39 * k;
}

int idx_vec_reconstruct(const idx_vec_t *v, int64_t label, float *out,
                        char *err, size_t errlen)
{
    if (!ls_live(&v->ls, label))
        return kb_seterr(
            err, errlen, KB_EINVAL, "label %lld is not %s", (long long)label,
            ls_stored(&v->ls, label) ? "live (removed)" : "in the index");
    if (faiss_Index_reconstruct(active(v), label, out))
        return vec_fail(err, errlen, "reconstruct");
    return 0;
}

static float score_of(const idx_vec_t *v, const float *q, const float *x)
{
    float s = 0;
    if (v->metric == IDX_METRIC_L2) {
        for (uint32_t j = 0; j < v->dim; j++)
            s += (q[j] - x[j]) * (q[j] - x[j]);
    } else {
        for (uint32_t j = 0; j < v->dim; j++)
            s += q[j] * x[j];
    }
    return s;
}

int idx_vec_score_labels(const idx_vec_t *v, const float *q, size_t n,
                         const int64_t *labels, float *scores, char *err,
                         size_t errlen)
{
    float *y = NULL;
    float *x = malloc(v->dim * sizeof *x);
    if (!x)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    int rc = normalised(v, 1, q, NULL, "query", &y, err, errlen);
    for (size_t i = 0; i < n && !rc; i++) {
        if (!ls_live(&v->ls, labels[i])) {
            scores[i] = no_score(v);
            continue;
        }
        if (faiss_Index_reconstruct(active(v), labels[i], x))
            rc = vec_fail(err, errlen, "reconstruct");
        else
            scores[i] = score_of(v, y ? y : q, x);
    }
    free(x);
    free(y);
    return rc;
}

/* Bytes per stored vector, and fixed bytes, of the FAISS structures. The
 * IDMap2 keeps id_map (8 B) and an unordered_map node (key, value, next:
 * 24 B, 32 with malloc's header) plus a bucket pointer (8 B) per vector. */
uint64_t idx_vec_bytes(const idx_vec_t *v)
{
    const uint64_t n = v->ls.nstored, vec = (uint64_t)v->dim * sizeof(float);
    uint64_t per = 8 + 32 + 8, fixed = ls_bytes(&v->ls);
    if (v->kind == VEC_FLAT || v->fallback) {
        per += vec;
    } else if (v->kind == VEC_HNSW) {
        /* Level 0 has 2M links, upper levels M each, reached with
         * probability 1/M per level: 2M + 1 int32 links expected; plus the
         * node's offset (8 B) and level (4 B). */
        per += vec + 4 * (2 * (uint64_t)v->hnsw_m + 1) + 8 + 4;
    } else {
        /* Inverted-list entry: code + id (8 B); direct map (8 B). */
        per += (v->pq_m ? v->pq_m : vec) + 8 + 8;
        fixed += (uint64_t)v->nlist * vec; /* coarse centroids */
        if (v->pq_m) {
            fixed += 256 * vec; /* PQ centroids: 256 per sub-quantizer */
            if (v->metric == IDX_METRIC_L2) /* precomputed L2 table */
                fixed += (uint64_t)v->nlist * v->pq_m * 256 * sizeof(float);
        }
    }
    return fixed + n * per;
}

int idx_vec_is_stored(const idx_vec_t *v, int64_t label)
{
    return ls_stored(&v->ls, label);
}

int idx_vec_foreach_live(const idx_vec_t *v, idx_vec_label_cb cb, void *ctx)
{
    const labelset_t *ls = &v->ls;
    for (size_t t = 0; t < ls->ntop; t++) {
        const ls_dir_t *d = ls->top[t];
        for (uint32_t i = 0; d && d->nlive && i < LS_DIR_PAGES; i++) {
            const ls_page_t *p = d->page[i];
            for (uint32_t w = 0; p && p->nlive && w < LS_PAGE_WORDS; w++) {
                uint64_t live = p->stored[w] & ~p->dead[w];
                while (live) {
                    int b = __builtin_ctzll(live);
                    live &= live - 1;
                    int64_t label = ((int64_t)t << LS_TOP_SHIFT) |
                                    ((int64_t)i << LS_PAGE_SHIFT) |
                                    (int64_t)(w * 64 + (uint32_t)b);
                    int rc = cb(ctx, label);
                    if (rc)
                        return rc;
                }
            }
        }
    }
    return 0;
}

/* ==== SAVE AND LOAD =======================================================
 * idx_vec_save() writes, all integers little-endian as in memory (x86-64
 * and aarch64 are both little-endian; a checkpoint is never moved between
 * machines of different kinds: its reader checks the format and its
 * checksum, and rebuilds on any doubt):
 *   u32 IDX_VEC_SAVE_MAGIC, u32 1 when an untrained IVF's fallback follows
 *   u64 stored labels, u64 dead labels, u64 pages written below
 *   the FAISS index (faiss_write_index), then the fallback when present
 *   per page that holds a stored label: u64 page number (label >> 12),
 *   then its 64 "stored" words and 64 "dead" words. */
#define IDX_VEC_SAVE_MAGIC 0x4556424bu /* "KBVE" */

static int put(FILE *f, const void *p, size_t n)
{
    return fwrite(p, 1, n, f) == n ? 0 : -EIO;
}

static int get(FILE *f, void *p, size_t n)
{
    return fread(p, 1, n, f) == n ? 0 : -EIO;
}

int idx_vec_save(const idx_vec_t *v, FILE *f, char *err, size_t errlen)
{
    const labelset_t *ls = &v->ls;
    uint32_t head[2] = {IDX_VEC_SAVE_MAGIC, v->fallback != NULL};
    uint64_t counts[3] = {ls->nstored, ls->ndead, ls->npages};
    if (put(f, head, sizeof head) || put(f, counts, sizeof counts))
        return kb_seterr(err, errlen, -EIO, "index header: write failed");
    if (faiss_write_index(v->index, f) ||
        (v->fallback && faiss_write_index(v->fallback, f)))
        return vec_fail(err, errlen, "write_index");
    for (size_t t = 0; t < ls->ntop; t++) {
        const ls_dir_t *d = ls->top[t];
        for (uint32_t i = 0; d && i < LS_DIR_PAGES; i++) {
            const ls_page_t *p = d->page[i];
            uint64_t no = ((uint64_t)t << LS_DIR_SHIFT) | i;
            if (p && (put(f, &no, sizeof no) ||
                      put(f, p->stored, sizeof p->stored) ||
                      put(f, p->dead, sizeof p->dead)))
                return kb_seterr(err, errlen, -EIO,
                                 "label bitmaps: write failed");
        }
    }
    return 0;
}

/* Reads one bitmap page into v's label set and recounts it. */
static int load_page(idx_vec_t *v, FILE *f, char *err, size_t errlen)
{
    uint64_t no;
    ls_page_t pg;
    if (get(f, &no, sizeof no) || get(f, pg.stored, sizeof pg.stored) ||
        get(f, pg.dead, sizeof pg.dead))
        return kb_seterr(err, errlen, KB_ECORRUPT, "label bitmaps: truncated");
    int64_t first = (int64_t)(no << LS_PAGE_SHIFT);
    if (no >= (uint64_t)(IDX_VEC_LABEL_LIMIT >> LS_PAGE_SHIFT) ||
        ls_page(&v->ls, first))
        return kb_seterr(err, errlen, KB_ECORRUPT,
                         "label bitmaps: page %llu out of range or repeated",
                         (unsigned long long)no);
    ls_page_t *p = ls_page_make(&v->ls, first);
    if (!p)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    uint32_t stored = 0, dead = 0;
    for (uint32_t w = 0; w < LS_PAGE_WORDS; w++) {
        if (pg.dead[w] & ~pg.stored[w])
            return kb_seterr(err, errlen, KB_ECORRUPT,
                             "label bitmaps: page %llu has dead labels that "
                             "were never stored",
                             (unsigned long long)no);
        p->stored[w] = pg.stored[w];
        p->dead[w] = pg.dead[w];
        stored += (uint32_t)__builtin_popcountll(pg.stored[w]);
        dead += (uint32_t)__builtin_popcountll(pg.dead[w]);
        if (pg.stored[w])
            v->ls.max_stored =
                first + w * 64 + 63 - __builtin_clzll(pg.stored[w]);
    }
    p->nlive = stored - dead;
    v->ls.top[first >> LS_TOP_SHIFT]->nlive += p->nlive;
    v->ls.nstored += stored;
    v->ls.ndead += dead;
    return 0;
}

/* Checks a FAISS index read from disk against what v was built as. */
static int check_loaded(const idx_vec_t *v, const FaissIndex *x,
                        const char *what, char *err, size_t errlen)
{
    if (!faiss_IndexIDMap2_cast((FaissIndex *)x))
        return kb_seterr(err, errlen, KB_ECORRUPT, "%s is not an IDMap2",
                         what);
    if (faiss_Index_d(x) != (int)v->dim ||
        faiss_Index_metric_type(x) != metric_of(v->metric))
        return kb_seterr(err, errlen, KB_ECORRUPT,
                         "%s has dim %d and metric %d; expected %u and %d",
                         what, faiss_Index_d(x), (int)faiss_Index_metric_type(x),
                         v->dim, (int)metric_of(v->metric));
    return 0;
}

/* Replaces v's empty FAISS indexes by the ones in f, then its bitmaps. */
static int load_into(idx_vec_t *v, FILE *f, char *err, size_t errlen)
{
    uint32_t head[2];
    uint64_t counts[3];
    if (get(f, head, sizeof head) || get(f, counts, sizeof counts))
        return kb_seterr(err, errlen, KB_ECORRUPT, "index header: truncated");
    /* A new IVF has a fallback; a saved one has it until trained. */
    if (head[0] != IDX_VEC_SAVE_MAGIC || head[1] > 1 ||
        (head[1] && !v->fallback))
        return kb_seterr(err, errlen, KB_ECORRUPT,
                         "index header: magic %08x, fallback %u (expected "
                         "%08x, %s)",
                         head[0], head[1], IDX_VEC_SAVE_MAGIC,
                         v->fallback ? "0 or 1" : "0");
    FaissIndex *x = NULL, *fb = NULL;
    if (faiss_read_index(f, 0, &x))
        return vec_fail(err, errlen, "read_index");
    faiss_Index_free(v->index);
    v->index = x;
    if (head[1] && faiss_read_index(f, 0, &fb))
        return vec_fail(err, errlen, "read_index (flat fallback)");
    faiss_Index_free(v->fallback);
    v->fallback = fb;
    int rc = check_loaded(v, v->index, "the index", err, errlen);
    if (!rc && v->fallback)
        rc = check_loaded(v, v->fallback, "the flat fallback", err, errlen);
    if (!rc && faiss_Index_is_trained(v->index) != !v->fallback)
        rc = kb_seterr(err, errlen, KB_ECORRUPT,
                       "the index is %strained, with%s a fallback",
                       faiss_Index_is_trained(v->index) ? "" : "not ",
                       v->fallback ? "" : "out");
    for (uint64_t i = 0; i < counts[2] && !rc; i++)
        rc = load_page(v, f, err, errlen);
    if (!rc && (v->ls.nstored != counts[0] || v->ls.ndead != counts[1] ||
                (uint64_t)faiss_Index_ntotal(active(v)) != counts[0]))
        rc = kb_seterr(err, errlen, KB_ECORRUPT,
                       "the bitmaps hold %llu labels (%llu dead), the header "
                       "says %llu (%llu), FAISS holds %lld vectors",
                       (unsigned long long)v->ls.nstored,
                       (unsigned long long)v->ls.ndead,
                       (unsigned long long)counts[0],
                       (unsigned long long)counts[1],
                       (long long)faiss_Index_ntotal(active(v)));
    return rc;
}

int idx_vec_load(FILE *f, uint32_t dim, const char *description, int metric,
                 idx_vec_t **out, char *err, size_t errlen)
{
    idx_vec_t *v;
    int rc = idx_vec_new(dim, description, metric, &v, err, errlen);
    if (rc)
        return rc;
    rc = load_into(v, f, err, errlen);
    if (rc)
        idx_vec_free(&v);
    *out = v;
    return rc;
}
