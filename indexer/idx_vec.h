/* idx_vec: the FAISS vector index of one node, private to indexer/. In:
 * float vectors under int64 labels (label = LSN of the upsert that wrote the
 * document) and removals of labels. Out: top-k labels and scores, never a
 * removed label. Owns one FaissIndex (flat, HNSW or IVF behind an IDMap2),
 * an exact flat fallback while an IVF is untrained, and the label bitmaps
 * (stored, dead); holds no documents (those live in idx_store).
 *
 * THREAD SAFETY. Functions taking `const idx_vec_t *` (search, search_params,
 * count, dead, stored, is_live, kind, is_trained, needs_training, train_min,
 * reconstruct, score_labels, bytes, grow_due, grow) only read the handle
 * and use no shared scratch: any number of threads may call them at once on
 * one index. add, remove, train, adopt and free need exclusive access: the
 * caller holds a write lock (idx's vlock) that excludes every reader. The only process-wide state is
 * what idx_vec_setup() sets. */
#ifndef IDX_VEC_H
#define IDX_VEC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct idx_vec idx_vec_t;

/* The `metric` argument of idx_vec_new(). The historical `int metric_ip`
 * values keep their meaning: 1 = inner product, 0 = L2. Cosine stores and
 * searches L2-normalised copies (the caller's buffers are never modified)
 * and scores are cosine similarities. */
typedef enum idx_metric {
    IDX_METRIC_L2 = 0,    /* squared L2 distance, lower is closer */
    IDX_METRIC_IP = 1,    /* inner product, higher is closer */
    IDX_METRIC_COSINE = 2 /* cosine similarity in [-1, 1], higher is closer */
} idx_metric_t;

/* Labels are LSNs: 0 <= label < IDX_VEC_LABEL_LIMIT (2^40). */
#define IDX_VEC_LABEL_LIMIT (INT64_C(1) << 40)

/* HNSW efSearch when idx_vec_params_t.ef_search is 0. Measured with
 * bench/bench_common.h vectors (dim 384, HNSW32, inner product, 200 held-out
 * queries, recall@10 against exact search):
 *    20,000 vectors: ef 16 0.963, 32 0.988, 64 0.995, 256 1.000
 *                    (0.14, 0.15, 0.17, 0.24 ms per query, one thread)
 *   100,000 vectors: ef 32 0.884, 64 0.957, 128 0.984
 * 64 keeps recall >= 0.95 at both sizes; callers wanting more pass more. */
#define IDX_VEC_EF_SEARCH_DEFAULT 64u

/* IVF nprobe when idx_vec_params_t.nprobe is 0: max(IDX_VEC_NPROBE_MIN,
 * nlist / IDX_VEC_NPROBE_DIV), at most nlist. Measured recall@10 on the
 * same data (bench_common.h has 64 natural clusters, so an IVF<n> splits
 * each into ~n/64 lists): the smallest nprobe reaching 0.95 was 1 of 64
 * (0.970), 4 of 256 (0.976) and 16 of 1024 (0.993; 8 gave 0.860). The
 * default probes at least 4x that (8, 16 and 64 lists there: recall 1.000
 * at all three), a margin for data less clustered than the benchmark's,
 * and still scans only 1/16 of the lists of a large index. */
#define IDX_VEC_NPROBE_DIV 16u
#define IDX_VEC_NPROBE_MIN 8u

/* Per-hit predicate of a filtered search: non-zero = label may be returned.
 * Called on the searching thread, possibly more than once for one label
 * (retries); must not call back into this index's writers. */
typedef int (*idx_vec_allow_fn)(void *ctx, int64_t label);

/* Per-call search parameters; a zeroed struct (or NULL) means defaults. They
 * never modify the index, so concurrent searches may use different ones. */
typedef struct idx_vec_params {
    uint32_t ef_search; /* HNSW: 0 = IDX_VEC_EF_SEARCH_DEFAULT */
    uint32_t nprobe;    /* IVF: 0 = max(8, nlist / 16) (see above) */
    int64_t max_label;  /* labels above this are never returned (0 = none) */
    idx_vec_allow_fn allow; /* optional post-filter, NULL = all */
    void *allow_ctx;        /* borrowed; passed to allow */
} idx_vec_params_t;

/* Sets process-wide compute threads for FAISS (OpenMP: searches and HNSW /
 * IVF adds and training) and OpenBLAS, and makes single queries go through
 * BLAS (faster on Debian's generic FAISS build). Call once at start-up,
 * before any other idx_vec call. threads >= 1. */
void idx_vec_setup(int threads);

/* Cosine's normalisation, shared by the index and the delta: dst = src /
 * |src|, computed in double so that a vector of tiny components (1e-40,
 * subnormal in float, whose float norm underflows to 0 and whose inverse
 * would overflow) still becomes a unit vector. dst may be src. Returns 0,
 * or -1 for a zero vector (dst untouched). */
int idx_vec_normalise(float *dst, const float *src, uint32_t dim);

/* Builds an empty index of dimension dim from a description:
 *   "Flat" (also NULL, "" and "IDMap2,Flat")   exact search
 *   "HNSW<M>" or "HNSW<M>,Flat", 2 <= M <= 512  graph, approximate
 *   "IVF<n>,Flat" or "IVF<n>,PQ<m>", n >= 1     inverted lists, need training
 * each optionally prefixed with "IDMap2," or "IDMap," (kbsync always wraps
 * the index in an IDMap2 itself). metric: an idx_metric_t (0, 1 or 2).
 * Returns 0 and sets *out, or (with *out = NULL and the reason in err):
 * KB_EINVAL (dim 0, unknown metric), KB_EINDEX (FAISS refused the
 * description, naming FAISS's reason; or a description FAISS accepts but
 * kbsync cannot maintain, e.g. "SQ8", "HNSW32,PQ8"), KB_ENOMEM. */
int idx_vec_new(uint32_t dim, const char *description, int metric,
                idx_vec_t **out, char *err, size_t errlen);

/* Frees the index; accepts NULL and sets *v to NULL. */
void idx_vec_free(idx_vec_t **v);

/* Adds n vectors (n*dim floats, borrowed for the call) under labels (n
 * values, each new: never added before, not even if removed since). An
 * untrained IVF stores them in its exact flat fallback. All or nothing.
 * Returns 0, or KB_EINVAL (a label out of range or already stored, a zero
 * vector under cosine; naming it), KB_EINDEX (FAISS failed), KB_ENOMEM. */
int idx_vec_add(idx_vec_t *v, size_t n, const float *x, const int64_t *labels,
                char *err, size_t errlen);

/* Marks every stored label in labels[0..n) dead (a tombstone: the vector
 * stays in FAISS's storage, searches skip it). Labels never added, or
 * already dead, are ignored. O(n), no FAISS call. Returns 0 (no failure
 * today; err is kept for symmetry with add). */
int idx_vec_remove(idx_vec_t *v, size_t n, const int64_t *labels, char *err,
                   size_t errlen);

/* GROWTH OUTSIDE THE LOCK. A flat index keeps its vectors in one array
 * that an add reallocates (and copies whole) when it is full: for 1M x 384
 * that is 1.5 GB of fresh memory, about 1.6 s on the VM of FIGURES.md, and
 * an add runs under the caller's exclusive lock, so searches stop for that
 * long. Instead, when idx_vec_grow_due() says the next add of n vectors
 * may reallocate a large array, the caller makes the grown copy with
 * idx_vec_grow() while searches go on, then swaps it in with
 * idx_vec_adopt() under its exclusive lock (a pointer swap plus the label
 * bitmap), and frees the old array with idx_vec_grown_free() after
 * unlocking. While the copy exists the index needs about twice its memory.
 * Only flat indexes: an HNSW merge step is dominated by its graph inserts
 * (its vector array still grows in place, four times at a time in
 * faiss_c_compat.cpp), and an IVF's lists grow one by one. */
#define IDX_VEC_GROW_MIN_BYTES (64u << 20) /* smaller arrays: add in place */
typedef struct idx_vec_grown idx_vec_grown_t;

/* 1 when adding n vectors may reallocate a flat array of at least
 * IDX_VEC_GROW_MIN_BYTES (this handle's own account of the room left: none
 * after a load, at least the array's size after a growth, three times it
 * with faiss_c_compat.cpp, whose clone reserves four times what it copies;
 * KB_FAISS_COMPAT is defined then). Reads only. */
int idx_vec_grow_due(const idx_vec_t *v, size_t n);

/* A copy of v's FAISS index with x[0..n) (labels[0..n), ascending, not
 * stored yet) added, in fresh memory with room for more. Reads v as a
 * search does; the caller guarantees that nothing adds to, loads into or
 * frees v until idx_vec_adopt() or idx_vec_grown_free(). Returns 0 or
 * KB_EINVAL (a zero vector under cosine), KB_EINDEX, KB_ENOMEM. */
int idx_vec_grow(const idx_vec_t *v, size_t n, const float *x,
                 const int64_t *labels, idx_vec_grown_t **out, char *err,
                 size_t errlen);

/* Exclusive access: makes the grown copy v's index and marks its labels
 * stored, as idx_vec_add() would have; *g then holds the old index, for
 * idx_vec_grown_free() after the lock. KB_EUNAVAIL, nothing changed, if v
 * was added to or swapped since idx_vec_grow(); KB_EINVAL as in add. */
int idx_vec_adopt(idx_vec_t *v, idx_vec_grown_t *g, char *err,
                  size_t errlen);
void idx_vec_grown_free(idx_vec_grown_t **g);

/* idx_vec_search_params() with default parameters (p = NULL). */
int idx_vec_search(const idx_vec_t *v, size_t nq, const float *q, uint32_t k,
                   float *scores, int64_t *labels, char *err, size_t errlen);

/* Searches nq queries (nq*dim floats); writes nq*k scores and labels
 * (caller-allocated), best first. Only live labels <= p->max_label (when
 * set) that p->allow accepts (when set) are returned; a query gets
 * min(k, eligible vectors) hits on a flat index, an untrained IVF and an
 * IVF with nprobe = nlist, and as many as the graph / probed lists hold on
 * HNSW / other IVF settings. Unfilled slots have label -1 and score -FLT_MAX
 * (ip, cosine) or FLT_MAX (l2). Scores: see idx_metric_t. Returns 0, or
 * KB_EINVAL (a zero query under cosine), KB_EINDEX (FAISS failed),
 * KB_ENOMEM. */
int idx_vec_search_params(const idx_vec_t *v, size_t nq, const float *q,
                          uint32_t k, const idx_vec_params_t *p, float *scores,
                          int64_t *labels, char *err, size_t errlen);

/* Live vectors: stored minus dead. */
uint64_t idx_vec_count(const idx_vec_t *v);

/* Dead vectors: removed but still in FAISS's storage. */
uint64_t idx_vec_dead(const idx_vec_t *v);

/* Vectors physically stored (live + dead). */
uint64_t idx_vec_stored(const idx_vec_t *v);

/* 1 when label is stored and not removed, else 0. */
int idx_vec_is_live(const idx_vec_t *v, int64_t label);

/* "flat", "hnsw" or "ivf"; static, never NULL. */
const char *idx_vec_kind(const idx_vec_t *v);

/* 1 when the index can hold vectors in its own structure: always for flat
 * and HNSW; for IVF once idx_vec_train() succeeded. */
int idx_vec_is_trained(const idx_vec_t *v);

/* 1 for an untrained IVF (its vectors sit in the exact flat fallback). */
int idx_vec_needs_training(const idx_vec_t *v);

/* Training vectors worth collecting before idx_vec_train(): 39 per k-means
 * centroid, the number below which FAISS warns, i.e. 39 * nlist for
 * IVF<n>,Flat and 39 * max(nlist, 256) for IVF<n>,PQ<m> (each PQ
 * sub-quantizer has 256 centroids). 0 for kinds that need no training. */
size_t idx_vec_train_min(const idx_vec_t *v);

/* Trains an untrained IVF on n vectors (n*dim floats, borrowed; normalised
 * copies under cosine). Only on an index that stores no vectors yet: to move
 * an index that has some, build a new idx_vec, train it, add everything.
 * Returns 0, or KB_EINVAL (not an untrained IVF, vectors already stored,
 * n = 0, a zero vector under cosine), KB_EINDEX (FAISS failed, e.g. fewer
 * training vectors than centroids), KB_ENOMEM. */
int idx_vec_train(idx_vec_t *v, size_t n, const float *x, char *err,
                  size_t errlen);

/* Writes the stored vector of a live label into out (dim floats):
 * normalised under cosine, PQ's approximation for IVF,PQ. Returns 0, or
 * KB_EINVAL (label not live), KB_EINDEX. */
int idx_vec_reconstruct(const idx_vec_t *v, int64_t label, float *out,
                        char *err, size_t errlen);

/* Exact scores of one query q (dim floats) against the stored vectors of n
 * labels, in the index's convention (idx_metric_t); scores[i] belongs to
 * labels[i]. A label that is not live gets the unfilled-slot score
 * (-FLT_MAX for ip/cosine, FLT_MAX for l2). For filtered search over a small
 * candidate set. Returns 0, or KB_EINVAL (zero query under cosine),
 * KB_EINDEX, KB_ENOMEM. */
int idx_vec_score_labels(const idx_vec_t *v, const float *q, size_t n,
                         const int64_t *labels, float *scores, char *err,
                         size_t errlen);

/* 1 when label is stored (live or dead), else 0. */
int idx_vec_is_stored(const idx_vec_t *v, int64_t label);

/* Calls cb for every live label in ascending order; stops and returns cb's
 * value when it is non-zero. Returns 0 after a full walk. */
typedef int (*idx_vec_label_cb)(void *ctx, int64_t label);
int idx_vec_foreach_live(const idx_vec_t *v, idx_vec_label_cb cb, void *ctx);

/* Writes the whole index to f: the FAISS index (and an untrained IVF's flat
 * fallback) in FAISS's own format, then the label bitmaps. Only reads v (a
 * reader: safe next to searches, not next to add/remove/train). f is
 * borrowed. Returns 0, or KB_EINDEX (FAISS failed, e.g. a short write,
 * naming FAISS's reason), -EIO (a bitmap write failed). */
int idx_vec_save(const idx_vec_t *v, FILE *f, char *err, size_t errlen);

/* Reads an index written by idx_vec_save() from f and checks it against
 * dim, description and metric (as for idx_vec_new()): FAISS's dimension,
 * metric, vector count and training state, and the bitmaps' counts. Bytes
 * from disk are never trusted: anything that does not fit is refused.
 * Returns 0 and sets *out, or (with *out = NULL) KB_ECORRUPT naming what did
 * not fit, KB_EINDEX (FAISS could not read it, naming FAISS's reason),
 * KB_ENOMEM. */
int idx_vec_load(FILE *f, uint32_t dim, const char *description, int metric,
                 idx_vec_t **out, char *err, size_t errlen);

/* Memory held by the index in bytes, from sizes (no FAISS walk): vectors or
 * codes, HNSW links (expected 2M + 1 per vector), IVF centroids, direct map
 * and PQ tables, the IDMap2 maps (id_map + hash map) and the label bitmaps.
 * O(1). */
uint64_t idx_vec_bytes(const idx_vec_t *v);

#endif
