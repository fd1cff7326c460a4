/* idx_vec: the FAISS vector index of one node, private to indexer/. In:
 * float vectors with int64 labels (label = LSN of the upsert that wrote the
 * document). Out: top-k labels and scores. Owns one FaissIndex; holds no
 * documents (those live in idx_store). Not thread-safe: idx serialises use. */
#ifndef IDX_VEC_H
#define IDX_VEC_H

#include <stddef.h>
#include <stdint.h>

typedef struct idx_vec idx_vec_t;

/* Sets process-wide compute threads for FAISS (OpenMP) and OpenBLAS, and
 * makes single queries go through BLAS (faster on Debian's generic FAISS
 * build). Call once at start-up, before any search. threads >= 1. */
void idx_vec_setup(int threads);

/* Builds an empty index from a FAISS factory description (e.g.
 * "IDMap2,Flat"; "Flat" is wrapped as "IDMap2,Flat"). metric_ip: 1 = inner
 * product, 0 = L2. Refuses descriptions that need training or that cannot
 * remove vectors (kbsync must replace and delete documents).
 * Returns 0 and sets *out, or KB_EINDEX with the reason in err. */
int idx_vec_new(uint32_t dim, const char *description, int metric_ip,
                idx_vec_t **out, char *err, size_t errlen);

/* Frees the index; accepts NULL and sets *v to NULL. */
void idx_vec_free(idx_vec_t **v);

/* Adds n vectors (n*dim floats, borrowed for the call) under labels. */
int idx_vec_add(idx_vec_t *v, size_t n, const float *x, const int64_t *labels,
                char *err, size_t errlen);

/* Removes every vector whose label is in labels[0..n). */
int idx_vec_remove(idx_vec_t *v, size_t n, const int64_t *labels, char *err,
                   size_t errlen);

/* Searches nq queries; writes nq*k scores and labels (caller-allocated).
 * Missing results (fewer than k vectors) have label -1. Scores are inner
 * products (higher is better) or squared L2 distances (lower is better). */
int idx_vec_search(const idx_vec_t *v, size_t nq, const float *q, uint32_t k,
                   float *scores, int64_t *labels, char *err, size_t errlen);

/* Number of vectors in the index. */
uint64_t idx_vec_count(const idx_vec_t *v);

#endif
