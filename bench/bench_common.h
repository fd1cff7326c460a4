/* bench_common: what the benchmark programs share: a seeded generator of
 * embedding-like vectors (clustered: a few dozen directions plus noise,
 * L2-normalised, as sentence embeddings are; stated as synthetic in every
 * report), realistic chunk text, and percentile helpers. Header-only. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_CLUSTERS 64

typedef struct bench_rng {
    uint64_t s;
} bench_rng_t;

static inline uint64_t bench_next(bench_rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline float bench_unif(bench_rng_t *r) /* [-1, 1) */
{
    return (float)((bench_next(r) >> 11) * (1.0 / 9007199254740992.0) * 2 - 1);
}

/* Vector number i of a data set: cluster i % 64 direction + noise. The same
 * (seed, i, dim) always gives the same vector. */
static inline void bench_vector(uint64_t seed, uint64_t i, int dim, float *out)
{
    bench_rng_t c = {seed * 1000003u + (i % BENCH_CLUSTERS)};
    bench_rng_t n = {seed ^ (i * 0x9e3779b97f4a7c15ull) ^ 0x5555};
    double norm = 0;
    for (int j = 0; j < dim; j++) {
        out[j] = bench_unif(&c) + 0.6f * bench_unif(&n);
        norm += (double)out[j] * out[j];
    }
    float inv = (float)(1 / sqrt(norm));
    for (int j = 0; j < dim; j++)
        out[j] *= inv;
}

static const char *const bench_words[] = {
    "replica",    "leader",    "index",     "vector",    "query",
    "latency",    "durable",   "commit",    "document",  "chunk",
    "embedding",  "metadata",  "version",   "staleness", "consistency",
    "throughput", "network",   "partition", "cluster",   "storage",
    "search",     "neighbour", "knowledge", "answer",    "retrieval",
    "generation", "model",     "token",     "context",   "window"};

/* ~len bytes of word salad, deterministic per i. */
static inline void bench_text(uint64_t i, char *out, size_t len)
{
    bench_rng_t r = {i * 7919u + 17};
    size_t n = 0;
    while (n + 16 < len) {
        const char *w = bench_words[bench_next(&r) % 30];
        n += (size_t)snprintf(out + n, len - n, "%s%s", n ? " " : "", w);
    }
    out[n] = 0;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v and returns the p-th percentile (0..100). */
static inline double bench_pct(double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, bench_cmp_double);
    size_t k = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return v[k < n ? k : n - 1];
}

#endif
