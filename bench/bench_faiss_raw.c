/* bench_faiss_raw: the "raw FAISS search time, in-process" reference that
 * kbsync's served query latency is compared with. Builds an "IDMap2,Flat"
 * inner-product index of N random unit 384-d vectors through the FAISS C API
 * (kb_faiss) and times faiss_Index_search() under the settings that matter on
 * a small box: BLAS threshold, OpenMP threads, OpenBLAS threads, batching.
 *
 * usage: bench_faiss_raw [N=100000] [queries=200] [k=10]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_DEFAULT */
#endif
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/utils/distances_c.h>

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { DIM = 384, BATCH = 16, BATCH_CALLS = 50, WARMUP = 3 };

/* OpenMP and OpenBLAS knobs are looked up at run time: the runtimes are the
 * ones libfaiss was linked with (libgomp, the libblas alternative), and this
 * program includes no header but FAISS's C API. NULL = not present. */
static void (*p_omp_set)(int);
static int (*p_omp_get)(void);
static void (*p_oblas_set)(int);
static int (*p_oblas_get)(void);

/* One row of the table. 0 in a knob = leave the process default. */
struct setting {
    const char *name;
    int blas_threshold;
    int omp_threads;
    int oblas_threads;
    int batch;
};

static const struct setting k_settings[] = {
    {"default", 0, 0, 0, 1},
    {"omp=1", 0, 1, 0, 1},
    {"omp=2", 0, 2, 0, 1},
    {"blas_thr=1", 1, 0, 0, 1},
    {"blas_thr=1 omp=1", 1, 1, 0, 1},
    {"blas_thr=1 omp=2", 1, 2, 0, 1},
    {"blas_thr=1 omp=1 oblas=1", 1, 1, 1, 1},
    {"blas_thr=1 omp=2 oblas=1", 1, 2, 1, 1},
    {"batch16", 0, 0, 0, BATCH},
    {"batch16 blas_thr=1 omp=1", 1, 1, 0, BATCH},
    {"batch16 blas_thr=1 omp=2", 1, 2, 0, BATCH},
    {"batch16 blas_thr=1 omp=1 oblas=1", 1, 1, 1, BATCH},
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Deterministic unit vectors: xorshift64* uniforms in [-0.5, 0.5), then
 * L2-normalised, as sentence embeddings are. */
static void fill_unit(float *x, size_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull | 1;
    for (size_t i = 0; i < n; i++) {
        float *v = x + i * DIM;
        double norm = 0;
        for (int j = 0; j < DIM; j++) {
            s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
            v[j] =
                (float)((s * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f - 0.5f;
            norm += (double)v[j] * v[j];
        }
        for (int j = 0; j < DIM; j++)
            v[j] = (float)(v[j] / sqrt(norm));
    }
}

static void die_faiss(const char *what, int rc)
{
    const char *t = faiss_get_last_error();
    fprintf(stderr, "bench_faiss_raw: %s failed (%d): %s\n", what, rc,
            t ? t : "(no text)");
    exit(1);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    int nq = argc > 2 ? atoi(argv[2]) : 200;
    int k = argc > 3 ? atoi(argv[3]) : 10;
    if (n < 1 || nq < 1 || k < 1) {
        fprintf(stderr, "usage: %s [N=100000] [queries=200] [k=10]\n", argv[0]);
        return 2;
    }
    p_omp_set = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    p_omp_get = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_max_threads");
    p_oblas_set =
        (void (*)(int))dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
    p_oblas_get =
        (int (*)(void))dlsym(RTLD_DEFAULT, "openblas_get_num_threads");
    const int omp_def = p_omp_get ? p_omp_get() : 0;
    const int oblas_def = p_oblas_get ? p_oblas_get() : 0;
    const int thr_def = faiss_get_distance_compute_blas_threshold();

    /* Query pool: single-query rows use the first nq, batch rows use
     * BATCH_CALLS * BATCH (at least nq). */
    int pool = nq > BATCH_CALLS * BATCH ? nq : BATCH_CALLS * BATCH;
    float *xb = malloc(sizeof(float) * DIM * (size_t)n);
    float *xq = malloc(sizeof(float) * DIM * (size_t)pool);
    idx_t *ids = malloc(sizeof(idx_t) * (size_t)n);
    idx_t *ref = malloc(sizeof(idx_t) * (size_t)pool * k);
    idx_t *lab = malloc(sizeof(idx_t) * (size_t)pool * k);
    float *dis = malloc(sizeof(float) * (size_t)pool * k);
    double *t = malloc(sizeof(double) * (size_t)pool);
    if (!xb || !xq || !ids || !ref || !lab || !dis || !t) {
        fprintf(stderr, "bench_faiss_raw: out of memory for N=%ld\n", n);
        return 1;
    }
    fill_unit(xb, (size_t)n, 1);
    fill_unit(xq, (size_t)pool, 2);
    for (long i = 0; i < n; i++)
        ids[i] = 1000000 + i; /* not 0..N-1, so the id map is exercised */

    FaissIndex *idx = NULL;
    int rc =
        faiss_index_factory(&idx, DIM, "IDMap2,Flat", METRIC_INNER_PRODUCT);
    if (rc)
        die_faiss("faiss_index_factory", rc);
    double t0 = now_ms();
    if ((rc = faiss_Index_add_with_ids(idx, n, xb, ids)))
        die_faiss("faiss_Index_add_with_ids", rc);
    double t_add = now_ms() - t0;

    const char *env = getenv("OMP_NUM_THREADS");
    printf("bench_faiss_raw: IDMap2,Flat inner product, N=%ld d=%d k=%d; "
           "%d single queries, %d calls x %d for batch rows\n",
           n, DIM, k, nq, BATCH_CALLS, BATCH);
    printf("  add_with_ids: %.0f ms; defaults: OpenMP threads %d "
           "(OMP_NUM_THREADS=%s), OpenBLAS threads %s%d, BLAS threshold %d\n",
           t_add, omp_def, env ? env : "unset", p_oblas_get ? "" : "n/a ",
           oblas_def, thr_def);
    printf("  times are per faiss_Index_search() call; ms/query = median / "
           "batch; top1 = queries whose best id matches the default row\n\n");
    printf("%-34s %5s %5s %9s %9s %9s %9s\n", "setting", "batch", "calls",
           "median ms", "p99 ms", "ms/query", "top1");

    for (size_t s = 0; s < sizeof k_settings / sizeof k_settings[0]; s++) {
        const struct setting *c = &k_settings[s];
        if ((c->omp_threads && !p_omp_set) ||
            (c->oblas_threads && !p_oblas_set)) {
            printf("%-34s (skipped: runtime knob not found)\n", c->name);
            continue;
        }
        faiss_set_distance_compute_blas_threshold(
            c->blas_threshold ? c->blas_threshold : thr_def);
        if (p_omp_set)
            p_omp_set(c->omp_threads ? c->omp_threads : omp_def);
        if (p_oblas_set)
            p_oblas_set(c->oblas_threads ? c->oblas_threads : oblas_def);

        int calls = c->batch == 1 ? nq : BATCH_CALLS;
        for (int w = 0; w < WARMUP; w++)
            if ((rc = faiss_Index_search(idx, c->batch, xq, k, dis, lab)))
                die_faiss("faiss_Index_search", rc);
        for (int i = 0; i < calls; i++) {
            size_t q0 = (size_t)i * c->batch;
            double a = now_ms();
            rc = faiss_Index_search(idx, c->batch, xq + q0 * DIM, k,
                                    dis + q0 * k, lab + q0 * k);
            t[i] = now_ms() - a;
            if (rc)
                die_faiss("faiss_Index_search", rc);
        }
        if (s == 0)
            memcpy(ref, lab, sizeof(idx_t) * (size_t)nq * k);
        int covered = calls * c->batch < nq ? calls * c->batch : nq, agree = 0;
        for (int q = 0; q < covered; q++)
            agree += lab[(size_t)q * k] == ref[(size_t)q * k];

        qsort(t, (size_t)calls, sizeof(double), cmp_double);
        double med =
            calls % 2 ? t[calls / 2] : (t[calls / 2 - 1] + t[calls / 2]) / 2;
        int p99i = (int)ceil(0.99 * calls) - 1;
        char top1[32];
        snprintf(top1, sizeof top1, "%d/%d", agree, covered);
        printf("%-34s %5d %5d %9.2f %9.2f %9.3f %9s\n", c->name, c->batch,
               calls, med, t[p99i < 0 ? 0 : p99i], med / c->batch, top1);
        fflush(stdout);
    }

    faiss_set_distance_compute_blas_threshold(thr_def);
    faiss_Index_free(idx);
    free(xb), free(xq), free(ids), free(ref), free(lab), free(dis), free(t);
    return 0;
}
