/* idx_delta: recent vectors searched exactly until the merger moves them
 * into the FAISS index (see idx_delta.h). Entries live in blocks of
 * DELTA_BLOCK; block b sits in slot b % DELTA_RING of a fixed ring, so an
 * appended entry never moves. Scoring uses BLAS (sgemm of the queries
 * against one block at a time), as FAISS's flat search does. */
#include "idx_delta.h"

#include "idx_vec.h"
#include "kb_err.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define DELTA_BLOCK 1024u
#define DELTA_RING (IDX_DELTA_MAX / DELTA_BLOCK)

typedef struct block {
    float *x;  /* DELTA_BLOCK * dim (normalised under cosine) */
    float *n2; /* squared norms (L2) */
    int64_t *l;
} block_t;

struct idx_delta {
    uint32_t dim;
    int metric;
    block_t *ring[DELTA_RING];
    _Atomic uint64_t count; /* entries published */
    _Atomic uint64_t base;  /* entries below are freed */
    _Atomic uint64_t bytes;
};

static block_t *blk(const idx_delta_t *d, uint64_t i)
{
    return d->ring[(i / DELTA_BLOCK) % DELTA_RING];
}

int idx_delta_new(uint32_t dim, int metric, idx_delta_t **out)
{
    idx_delta_t *d = calloc(1, sizeof *d);
    if (!d)
        return KB_ENOMEM;
    d->dim = dim;
    d->metric = metric;
    *out = d;
    return 0;
}

static void block_free(block_t *b)
{
    if (!b)
        return;
    free(b->x);
    free(b->n2);
    free(b->l);
    free(b);
}

void idx_delta_free(idx_delta_t **dp)
{
    if (!dp || !*dp)
        return;
    idx_delta_t *d = *dp;
    for (size_t i = 0; i < DELTA_RING; i++)
        block_free(d->ring[i]);
    free(d);
    *dp = NULL;
}

static float dot(const float *a, const float *b, uint32_t n)
{
    return cblas_sdot((int)n, a, 1, b, 1);
}

int idx_delta_append(idx_delta_t *d, size_t n, const float *x,
                     const int64_t *labels)
{
    uint64_t c = atomic_load_explicit(&d->count, memory_order_relaxed);
    uint64_t base = atomic_load(&d->base);
    if (c + n - base > IDX_DELTA_MAX - DELTA_BLOCK)
        return KB_EUNAVAIL;
    for (size_t i = 0; i < n; i++, c++) {
        size_t slot = (c / DELTA_BLOCK) % DELTA_RING;
        if (c % DELTA_BLOCK == 0 || !d->ring[slot]) {
            block_t *b = calloc(1, sizeof *b);
            if (b) {
                b->x = malloc(sizeof(float) * DELTA_BLOCK * d->dim);
                b->n2 = malloc(sizeof(float) * DELTA_BLOCK);
                b->l = malloc(sizeof(int64_t) * DELTA_BLOCK);
            }
            if (!b || !b->x || !b->n2 || !b->l) {
                block_free(b);
                /* Entries written so far stay unpublished. */
                return KB_ENOMEM;
            }
            block_free(d->ring[slot]); /* NULL unless never freed */
            d->ring[slot] = b;
            atomic_fetch_add(&d->bytes,
                             (uint64_t)DELTA_BLOCK *
                                 (sizeof(float) * (d->dim + 1) +
                                  sizeof(int64_t)));
        }
        block_t *b = d->ring[slot];
        size_t j = c % DELTA_BLOCK;
        float *dst = b->x + j * d->dim;
        memcpy(dst, x + i * d->dim, sizeof(float) * d->dim);
        float nn = d->metric == IDX_METRIC_COSINE &&
                           !idx_vec_normalise(dst, dst, d->dim)
                       ? 1.0f
                       : dot(dst, dst, d->dim);
        b->n2[j] = nn;
        b->l[j] = labels[i];
    }
    atomic_store_explicit(&d->count, c, memory_order_release);
    return 0;
}

uint64_t idx_delta_count(const idx_delta_t *d)
{
    return atomic_load_explicit(&d->count, memory_order_acquire);
}

int64_t idx_delta_label(const idx_delta_t *d, uint64_t i)
{
    return blk(d, i)->l[i % DELTA_BLOCK];
}

const float *idx_delta_vector(const idx_delta_t *d, uint64_t i)
{
    return blk(d, i)->x + (i % DELTA_BLOCK) * d->dim;
}

uint64_t idx_delta_find(const idx_delta_t *d, uint64_t lo, uint64_t hi,
                        int64_t label)
{
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (idx_delta_label(d, mid) < label)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < atomic_load(&d->count) && idx_delta_label(d, lo) == label
               ? lo
               : UINT64_MAX;
}

static int better(int metric, float a, float b)
{
    return metric == IDX_METRIC_L2 ? a < b : a > b;
}

/* (s, l) goes before (s2, l2): a better score, or an equal score and a
 * newer label (the newer document wins a tie, as in FAISS's heaps). */
static int before(int metric, float s, int64_t l, float s2, int64_t l2)
{
    return better(metric, s, s2) || (s == s2 && l > l2);
}

/* Inserts (s, l) into a best-first list of k slots. */
static void topk_insert(int metric, float *sc, int64_t *lab, uint32_t k,
                        float s, int64_t l)
{
    if (k == 0 ||
        (lab[k - 1] >= 0 && !before(metric, s, l, sc[k - 1], lab[k - 1])))
        return;
    uint32_t i = k - 1;
    while (i > 0 && (lab[i - 1] < 0 ||
                     before(metric, s, l, sc[i - 1], lab[i - 1]))) {
        sc[i] = sc[i - 1];
        lab[i] = lab[i - 1];
        i--;
    }
    sc[i] = s;
    lab[i] = l;
}

/* Queries as stored entries are: normalised under cosine. */
static float *prep_queries(const idx_delta_t *d, size_t nq, const float *q,
                           float *qn2)
{
    float *y = malloc(sizeof(float) * nq * d->dim);
    if (!y)
        return NULL;
    memcpy(y, q, sizeof(float) * nq * d->dim);
    for (size_t i = 0; i < nq; i++) {
        float *yi = y + i * d->dim;
        qn2[i] = d->metric == IDX_METRIC_COSINE &&
                         !idx_vec_normalise(yi, yi, d->dim)
                     ? 1.0f
                     : dot(yi, yi, d->dim);
    }
    return y;
}

int idx_delta_search(const idx_delta_t *d, uint64_t lo, uint64_t hi,
                     int64_t max_label, idx_delta_keep_fn keep, void *keep_ctx,
                     size_t nq, const float *q, uint32_t k, float *scores,
                     int64_t *labels)
{
    if (lo >= hi || nq == 0 || k == 0)
        return 0;
    float *qn2 = malloc(sizeof(float) * nq);
    float *s = malloc(sizeof(float) * nq * DELTA_BLOCK);
    float *y = qn2 ? prep_queries(d, nq, q, qn2) : NULL;
    if (!qn2 || !s || !y) {
        free(qn2);
        free(s);
        free(y);
        return KB_ENOMEM;
    }
    for (uint64_t i = lo; i < hi;) {
        block_t *b = blk(d, i);
        uint64_t j0 = i % DELTA_BLOCK;
        uint64_t m = DELTA_BLOCK - j0;
        if (m > hi - i)
            m = hi - i;
        if (b->l[j0] > max_label)
            break; /* labels ascend: nothing visible beyond */
        /* s[nq x m] = y[nq x dim] . x[m x dim]^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)m,
                    (int)d->dim, 1.0f, y, (int)d->dim, b->x + j0 * d->dim,
                    (int)d->dim, 0.0f, s, (int)m);
        for (uint64_t j = 0; j < m; j++) {
            int64_t l = b->l[j0 + j];
            if (l > max_label || (keep && !keep(keep_ctx, l)))
                continue;
            for (size_t qi = 0; qi < nq; qi++) {
                float v = s[qi * m + j];
                if (d->metric == IDX_METRIC_L2)
                    v = qn2[qi] + b->n2[j0 + j] - 2 * v;
                topk_insert(d->metric, scores + qi * k, labels + qi * k, k, v,
                            l);
            }
        }
        i += m;
    }
    free(qn2);
    free(s);
    free(y);
    return 0;
}

float idx_delta_score(const idx_delta_t *d, const float *q, uint64_t i)
{
    float qn2;
    float *y = prep_queries(d, 1, q, &qn2);
    if (!y)
        return d->metric == IDX_METRIC_L2 ? FLT_MAX : -FLT_MAX;
    block_t *b = blk(d, i);
    size_t j = i % DELTA_BLOCK;
    float v = dot(y, b->x + j * d->dim, d->dim);
    free(y);
    return d->metric == IDX_METRIC_L2 ? qn2 + b->n2[j] - 2 * v : v;
}

void idx_delta_free_below(idx_delta_t *d, uint64_t i)
{
    uint64_t base = atomic_load(&d->base);
    /* Free whole blocks only; the block holding i stays. */
    uint64_t first = base / DELTA_BLOCK, last = i / DELTA_BLOCK;
    for (uint64_t bno = first; bno < last; bno++) {
        size_t slot = bno % DELTA_RING;
        if (d->ring[slot]) {
            block_free(d->ring[slot]);
            d->ring[slot] = NULL;
            atomic_fetch_sub(&d->bytes,
                             (uint64_t)DELTA_BLOCK *
                                 (sizeof(float) * (d->dim + 1) +
                                  sizeof(int64_t)));
        }
    }
    if (last * DELTA_BLOCK > base)
        atomic_store(&d->base, last * DELTA_BLOCK);
}

uint64_t idx_delta_bytes(const idx_delta_t *d)
{
    return atomic_load(&d->bytes);
}
