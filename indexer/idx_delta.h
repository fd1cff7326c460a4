/* idx_delta: the recent vectors of one node that the FAISS index does not
 * hold yet, private to indexer/. In: vectors with their labels, appended by
 * the writer after each durable commit. Out: exact top-k scores over any
 * range of them, for searches that run while the writer appends. Owns an
 * append-only log of fixed-size blocks (never moved, so readers scan them
 * without a lock) and, for each entry, its squared norm (L2) or its
 * normalised copy (cosine).
 *
 * THREADS. One writer appends (idx_delta_append publishes the new count with
 * release semantics); any number of readers scan entries below a count they
 * read with idx_delta_count (acquire). idx_delta_free_below frees blocks
 * wholly below an index: the caller guarantees no reader will touch them
 * (idx calls it with its vlock held exclusively, and readers only scan from
 * the merged index they read under that lock). */
#ifndef IDX_DELTA_H
#define IDX_DELTA_H

#include <stddef.h>
#include <stdint.h>

typedef struct idx_delta idx_delta_t;

/* metric: an idx_metric_t (0 = L2, 1 = IP, 2 = cosine). */
int idx_delta_new(uint32_t dim, int metric, idx_delta_t **out);
void idx_delta_free(idx_delta_t **d);

/* Writer: appends n vectors (n*dim floats) with ascending labels, all above
 * every label appended before. Returns 0 or KB_ENOMEM (nothing appended),
 * or KB_EUNAVAIL when more than IDX_DELTA_MAX entries are waiting to be
 * merged (the caller waits for the merger and retries). */
int idx_delta_append(idx_delta_t *d, size_t n, const float *x,
                     const int64_t *labels);
#define IDX_DELTA_MAX (16u << 20)

/* Entries appended so far (index of the next one). Any thread. */
uint64_t idx_delta_count(const idx_delta_t *d);

/* Entry i (lo <= i < count, not freed): its label and its vector as
 * appended (borrowed, valid until freed). */
int64_t idx_delta_label(const idx_delta_t *d, uint64_t i);
const float *idx_delta_vector(const idx_delta_t *d, uint64_t i);

/* The index in [lo, hi) of the entry with that label, or UINT64_MAX. */
uint64_t idx_delta_find(const idx_delta_t *d, uint64_t lo, uint64_t hi,
                        int64_t label);

/* Keeps a label? non-zero = yes. */
typedef int (*idx_delta_keep_fn)(void *ctx, int64_t label);

/* Exact search of nq queries (nq*dim floats, as the caller got them) over
 * entries [lo, hi) with labels <= max_label that keep() accepts (NULL = all),
 * merged into the caller's per-query top-k lists scores/labels (k slots each,
 * best first, empty slots label -1). Scores follow the metric: inner product
 * or cosine (higher is closer), squared L2 (lower is closer). Returns 0 or
 * KB_ENOMEM. Any thread. */
int idx_delta_search(const idx_delta_t *d, uint64_t lo, uint64_t hi,
                     int64_t max_label, idx_delta_keep_fn keep, void *keep_ctx,
                     size_t nq, const float *q, uint32_t k, float *scores,
                     int64_t *labels);

/* Exact score of one query against entry i. */
float idx_delta_score(const idx_delta_t *d, const float *q, uint64_t i);

/* Frees the blocks whose entries are all below index i. */
void idx_delta_free_below(idx_delta_t *d, uint64_t i);

/* Memory held by live blocks, in bytes. Any thread (approximate). */
uint64_t idx_delta_bytes(const idx_delta_t *d);

#endif
