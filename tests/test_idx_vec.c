/* test_idx_vec: the FAISS wrapper of indexer/idx_vec.h on real, tiny FAISS
 * indexes of every kind (flat, HNSW, IVF trained and untrained) and metric
 * (L2, IP, cosine). In: factory descriptions, random vectors under sparse
 * labels, removals, search parameters. Out: pass/fail on which descriptions
 * are accepted, tombstones, over-fetch, max_label and allow filters,
 * training, cosine, reconstruct/score_labels against brute force, memory
 * figures, and concurrent searches. Each test owns its indexes, except the
 * read-only kinds x metrics group, which shares one set (kinds_setup). */
#include "kb_test.h"

#include "idx_vec.h"
#include "kb_err.h"

#include <float.h>
#include <pthread.h>

#define DIM 16

static idx_vec_t *vec_new(uint32_t dim, const char *desc, int metric)
{
    idx_vec_t *v = NULL;
    char err[512] = "";
    KBT_OK(idx_vec_new(dim, desc, metric, &v, err, sizeof err), err);
    assert_non_null(v);
    return v;
}

/* ------------------------------------------------------------- fixtures */

/* n random unit vectors of DIM floats (seed) under labels label0 + step*i. */
typedef struct vset {
    size_t n;
    float *x;
    int64_t *labels;
} vset_t;

static vset_t vset_make(size_t n, uint64_t seed, int64_t label0, int64_t step)
{
    vset_t s = {n, malloc(n * DIM * sizeof(float)), malloc(n * 8)};
    assert_true(s.x && s.labels);
    for (size_t i = 0; i < n; i++) {
        kbt_rand_unit(s.x + i * DIM, DIM, seed * 100003 + i);
        s.labels[i] = label0 + step * (int64_t)i;
    }
    return s;
}

static void vset_free(vset_t *s)
{
    free(s->x);
    free(s->labels);
}

/* The index's score of stored vector a for query q, in double. */
static double ref_score(int metric, const float *q, const float *a)
{
    if (metric == IDX_METRIC_L2)
        return kbt_l2sq(q, a, DIM);
    double d = kbt_dot(q, a, DIM);
    if (metric == IDX_METRIC_COSINE)
        d /= sqrt(kbt_dot(q, q, DIM) * kbt_dot(a, a, DIM));
    return d;
}

typedef int (*pred_fn)(const void *ctx, int64_t label);

typedef struct scored {
    double s;
    int64_t l;
} scored_t;

static int g_cmp_metric; /* qsort has no context: set before sorting */
static int cmp_scored(const void *a, const void *b)
{
    double x = ((const scored_t *)a)->s, y = ((const scored_t *)b)->s;
    int c = (x > y) - (x < y);
    return g_cmp_metric == IDX_METRIC_L2 ? c : -c;
}

/* Brute-force top-k of q among the vectors of s that ok() accepts; writes
 * labels (and scores) of the hits, -1 after them; returns their number. */
static size_t brute(const vset_t *s, int metric, const float *q, uint32_t k,
                    pred_fn ok, const void *ctx, int64_t *out, double *outs)
{
    scored_t *all = malloc((s->n + 1) * sizeof *all);
    size_t m = 0;
    assert_non_null(all);
    for (size_t i = 0; i < s->n; i++)
        if (!ok || ok(ctx, s->labels[i]))
            all[m++] =
                (scored_t){ref_score(metric, q, s->x + i * DIM), s->labels[i]};
    g_cmp_metric = metric;
    qsort(all, m, sizeof *all, cmp_scored);
    for (uint32_t j = 0; j < k; j++) {
        out[j] = j < m ? all[j].l : -1;
        if (outs)
            outs[j] = j < m ? all[j].s : 0;
    }
    free(all);
    return m < k ? m : k;
}

static void add_all(idx_vec_t *v, const vset_t *s)
{
    char err[512] = "";
    KBT_OK(idx_vec_add(v, s->n, s->x, s->labels, err, sizeof err), err);
}

/* Trains an untrained IVF on its own minimum of fresh random vectors. */
static void train_ivf(idx_vec_t *v)
{
    size_t n = idx_vec_train_min(v);
    assert_true(n > 0);
    vset_t t = vset_make(n, 777, 0, 1);
    char err[512] = "";
    KBT_OK(idx_vec_train(v, n, t.x, err, sizeof err), err);
    vset_free(&t);
}

/* Fails unless the row (k slots) is: only labels ok() accepts, no label
 * twice, scores best first, `want` real labels then -1s. */
static void check_row(const idx_vec_t *v, int metric, const float *sc,
                      const int64_t *l, uint32_t k, pred_fn ok, const void *ctx,
                      size_t want)
{
    (void)v;
    size_t real = 0;
    for (uint32_t j = 0; j < k; j++) {
        if (l[j] < 0) {
            assert_int_equal(l[j], -1);
            continue;
        }
        if (real != j)
            fail_msg("label %lld after an empty slot", (long long)l[j]);
        real++;
        if (ok && !ok(ctx, l[j]))
            fail_msg("label %lld returned but not eligible", (long long)l[j]);
        for (uint32_t m = 0; m < j; m++)
            assert_int_not_equal(l[m], l[j]);
        if (j > 0) {
            if (metric == IDX_METRIC_L2)
                assert_true(sc[j] >= sc[j - 1] - 1e-5f);
            else
                assert_true(sc[j] <= sc[j - 1] + 1e-5f);
        }
    }
    if (real != want)
        fail_msg("%zu hits, wanted %zu", real, want);
}

/* ------------------------------------------------------- descriptions */

static void test_idx_vec_bad_description_fails_with_text(void **state)
{
    (void)state;
    idx_vec_t *v = (void *)1;
    char err[512] = "";
    KBT_RC(idx_vec_new(DIM, "NoSuchIndex42", 1, &v, err, sizeof err), KB_EINDEX,
           err);
    assert_null(v);
    KBT_CONTAINS(err, "FAISS");
    KBT_CONTAINS(err, "index_factory");
    KBT_CONTAINS(err, "\"NoSuchIndex42\"");
    assert_true(strlen(err) > strlen("index \"NoSuchIndex42\": FAISS "
                                     "index_factory failed: "));
    /* FAISS's own reason for an impossible PQ split (16 % 5 != 0). */
    v = (void *)1;
    KBT_RC(idx_vec_new(DIM, "IVF4,PQ5", 1, &v, err, sizeof err), KB_EINDEX,
           err);
    assert_null(v);
    KBT_CONTAINS(err, "FAISS");
    /* Bad arguments. */
    KBT_RC(idx_vec_new(DIM, "Flat", 3, &v, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "metric 3");
    KBT_RC(idx_vec_new(0, "Flat", 1, &v, err, sizeof err), KB_EINVAL, err);
    assert_null(v);
}

static void test_idx_vec_unmaintainable_kind_refused(void **state)
{
    (void)state;
    /* FAISS builds these, kbsync does not maintain them: refused, naming
     * the description and what is accepted. */
    static const char *descs[] = {"SQ8",        "HNSW32,PQ4", "IVF4,SQ8",
                                  "IDMap2,SQ4", "HNSW1",      "IVF4,PQ4x4"};
    for (size_t d = 0; d < sizeof descs / sizeof descs[0]; d++) {
        idx_vec_t *v = (void *)1;
        char err[512] = "";
        KBT_RC(idx_vec_new(DIM, descs[d], 1, &v, err, sizeof err), KB_EINDEX,
               err);
        assert_null(v);
        KBT_CONTAINS(err, descs[d]);
        KBT_CONTAINS(err, "cannot maintain");
        KBT_CONTAINS(err, "HNSW<M>");
    }
}

static void test_idx_vec_flat_is_wrapped(void **state)
{
    (void)state;
    /* A bare Flat index cannot take labels; the wrapper makes it
     * IDMap2,Flat, so sparse 64-bit labels work. NULL and "" mean the same
     * default. */
    static const char *descs[] = {"Flat", "IDMap2,Flat", "IDMap,Flat", "",
                                  NULL};
    for (size_t d = 0; d < sizeof descs / sizeof descs[0]; d++) {
        idx_vec_t *v = vec_new(DIM, descs[d], 0);
        assert_string_equal(idx_vec_kind(v), "flat");
        float x[2 * DIM];
        kbt_rand_unit(x, DIM, 1);
        kbt_rand_unit(x + DIM, DIM, 2);
        int64_t labels[2] = {1000000007LL, 5};
        char err[512] = "";
        KBT_OK(idx_vec_add(v, 2, x, labels, err, sizeof err), err);
        KBT_U64(idx_vec_count(v), 2);
        float s[2];
        int64_t l[2];
        KBT_OK(idx_vec_search(v, 1, x, 2, s, l, err, sizeof err), err);
        assert_int_equal(l[0], 1000000007LL);
        assert_int_equal(l[1], 5);
        KBT_NEAR(s[0], 0.0, 1e-5);
        idx_vec_free(&v);
        assert_null(v);
    }
    idx_vec_free(NULL);
}

/* --------------------------------------------------- kinds x metrics */

static const char *const k_kinds[] = {"Flat",      "HNSW16",   "HNSW8,Flat",
                                      "IVF4,Flat", "IVF4,PQ4", NULL};
static const char *const k_kind_names[] = {"flat", "hnsw", "hnsw", "ivf",
                                           "ivf"};

/* The 15 kind x metric indexes over one data set, with s.labels[4]
 * removed: built once (by the group setup) for the tests that only read
 * them, because training IVF,PQ is most of their cost. */
enum { FX_N = 200, FX_DEAD = 4 };

typedef struct kinds_fx {
    vset_t s;
    idx_vec_t *v[5][3]; /* [k_kinds][metric] */
} kinds_fx_t;

static int kinds_setup(void **state)
{
    kinds_fx_t *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    fx->s = vset_make(FX_N, 11, 100, 10); /* labels 100, 110, ... */
    for (size_t i = 0; i < FX_N * DIM; i++)
        fx->s.x[i] *= 3.0f; /* not unit: cosine must normalise */
    for (int kd = 0; k_kinds[kd]; kd++)
        for (int metric = 0; metric <= 2; metric++) {
            idx_vec_t *v = vec_new(DIM, k_kinds[kd], metric);
            if (idx_vec_needs_training(v))
                train_ivf(v);
            add_all(v, &fx->s);
            char err[512] = "";
            KBT_OK(
                idx_vec_remove(v, 1, &fx->s.labels[FX_DEAD], err, sizeof err),
                err);
            fx->v[kd][metric] = v;
        }
    *state = fx;
    return 0;
}

static int kinds_teardown(void **state)
{
    kinds_fx_t *fx = *state;
    for (int kd = 0; k_kinds[kd]; kd++)
        for (int metric = 0; metric <= 2; metric++)
            idx_vec_free(&fx->v[kd][metric]);
    vset_free(&fx->s);
    free(fx);
    return 0;
}

static int not_fx_dead(const void *ctx, int64_t label)
{
    return label != *(const int64_t *)ctx;
}

static void test_idx_vec_every_kind_and_metric_adds_and_searches(void **state)
{
    kinds_fx_t *fx = *state;
    enum { K = 5, NQ = 20 };
    const vset_t *s = &fx->s;
    for (int kd = 0; k_kinds[kd]; kd++) {
        for (int metric = 0; metric <= 2; metric++) {
            idx_vec_t *v = fx->v[kd][metric];
            assert_string_equal(idx_vec_kind(v), k_kind_names[kd]);
            assert_int_equal(idx_vec_is_trained(v), 1);
            KBT_U64(idx_vec_count(v), FX_N - 1);
            KBT_U64(idx_vec_stored(v), FX_N);
            float sc[NQ * K];
            int64_t l[NQ * K];
            char err[512] = "";
            /* Queries 5..24: each a stored, live vector. */
            KBT_OK(idx_vec_search(v, NQ, s->x + 5 * DIM, K, sc, l, err,
                                  sizeof err),
                   err);
            int self_first = 0;
            for (int i = 0; i < NQ; i++) {
                check_row(v, metric, sc + i * K, l + i * K, K, not_fx_dead,
                          &s->labels[FX_DEAD], K);
                self_first += l[i * K] == s->labels[5 + i];
            }
            /* PQ is lossy; every other kind finds each vector itself. */
            if (self_first < (strstr(k_kinds[kd], "PQ") ? 16 : NQ))
                fail_msg("%s metric %d: %d of %d queries found themselves",
                         k_kinds[kd], metric, self_first, NQ);
        }
    }
}

static void test_idx_vec_ip_vs_l2_ordering(void **state)
{
    (void)state;
    /* q = e0. a = (10, 10, 0...): big inner product (10) but far in L2
     * (81 + 100 = 181). b = (1, 0.1, 0...): inner product 1, L2 0.01. */
    float x[2 * DIM] = {0};
    x[0] = 10, x[1] = 10;
    x[DIM] = 1, x[DIM + 1] = 0.1f;
    float q[DIM] = {0};
    q[0] = 1;
    int64_t labels[2] = {1, 2}; /* a = 1, b = 2 */
    char err[512] = "";
    float s[2];
    int64_t l[2];

    idx_vec_t *ip = vec_new(DIM, "Flat", 1);
    KBT_OK(idx_vec_add(ip, 2, x, labels, err, sizeof err), err);
    KBT_OK(idx_vec_search(ip, 1, q, 2, s, l, err, sizeof err), err);
    assert_int_equal(l[0], 1); /* higher is better */
    assert_int_equal(l[1], 2);
    KBT_NEAR(s[0], 10.0, 1e-4);
    KBT_NEAR(s[1], 1.0, 1e-5);
    idx_vec_free(&ip);

    idx_vec_t *l2 = vec_new(DIM, "Flat", 0);
    KBT_OK(idx_vec_add(l2, 2, x, labels, err, sizeof err), err);
    KBT_OK(idx_vec_search(l2, 1, q, 2, s, l, err, sizeof err), err);
    assert_int_equal(l[0], 2); /* lower is better */
    assert_int_equal(l[1], 1);
    KBT_NEAR(s[0], 0.01, 1e-5);
    KBT_NEAR(s[1], 181.0, 1e-3);
    idx_vec_free(&l2);

    /* Cosine: b is nearly parallel to q (0.995), a at 45 degrees. */
    idx_vec_t *cs = vec_new(DIM, "Flat", IDX_METRIC_COSINE);
    KBT_OK(idx_vec_add(cs, 2, x, labels, err, sizeof err), err);
    KBT_OK(idx_vec_search(cs, 1, q, 2, s, l, err, sizeof err), err);
    assert_int_equal(l[0], 2);
    KBT_NEAR(s[0], 1 / sqrt(1.01), 1e-5);
    KBT_NEAR(s[1], sqrt(0.5), 1e-5);
    idx_vec_free(&cs);
}

/* --------------------------------------------------------- tombstones */

static int alive_third(const void *ctx, int64_t label)
{
    (void)ctx;
    return (label - 10) / 3 % 3 == 0; /* vset labels 10 + 3i: i % 3 == 0 */
}

/* Builds an index of desc over s ("IVF... untrained" = no training), then
 * removes every label with i % 3 != 0 (two thirds dead). */
static idx_vec_t *two_thirds_dead(const char *desc, int train, const vset_t *s)
{
    idx_vec_t *v = vec_new(DIM, desc, IDX_METRIC_L2);
    if (train)
        train_ivf(v);
    add_all(v, s);
    char err[512] = "";
    for (size_t i = 0; i < s->n; i++)
        if (i % 3)
            KBT_OK(idx_vec_remove(v, 1, &s->labels[i], err, sizeof err), err);
    return v;
}

static void test_idx_vec_removed_never_returned_on_every_kind(void **state)
{
    (void)state;
    /* Two thirds dead: no dead label ever comes back, and each query still
     * gets k live hits (over-fetch and retry); exact kinds give exactly the
     * brute-force top-k of the live vectors. */
    enum { N = 300, K = 10, NQ = 30 };
    vset_t s = vset_make(N, 2, 10, 3);
    static const struct {
        const char *desc;
        int train, exact;
        idx_vec_params_t p;
    } cases[] = {
        {"Flat", 0, 1, {0}},
        {"HNSW8", 0, 0, {0}},
        {"IVF4,Flat", 0, 1, {0}},           /* untrained: flat fallback */
        {"IVF4,Flat", 1, 1, {.nprobe = 4}}, /* nprobe = nlist: exact */
        {"IVF4,Flat", 1, 0, {0}},           /* default nprobe */
        {"IVF4,PQ4", 1, 0, {.nprobe = 4}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        idx_vec_t *v = two_thirds_dead(cases[c].desc, cases[c].train, &s);
        KBT_U64(idx_vec_count(v), N / 3);
        KBT_U64(idx_vec_dead(v), N - N / 3);
        KBT_U64(idx_vec_stored(v), N);
        assert_int_equal(idx_vec_is_live(v, s.labels[0]), 1);
        assert_int_equal(idx_vec_is_live(v, s.labels[1]), 0);
        float sc[NQ * K];
        int64_t l[NQ * K], want[K];
        char err[512] = "";
        KBT_OK(idx_vec_search_params(v, NQ, s.x, K, &cases[c].p, sc, l, err,
                                     sizeof err),
               err);
        for (int i = 0; i < NQ; i++) {
            check_row(v, 0, sc + i * K, l + i * K, K, alive_third, NULL, K);
            brute(&s, 0, s.x + i * DIM, K, alive_third, NULL, want, NULL);
            if (cases[c].exact)
                assert_memory_equal(l + i * K, want, sizeof want);
        }
        idx_vec_free(&v);
    }
    vset_free(&s);
}

static void test_idx_vec_all_dead_and_few_live(void **state)
{
    (void)state;
    /* k larger than the live count: every live vector, then -1; all dead:
     * nothing. HNSW too (the graph still links through the dead). */
    enum { N = 60 };
    vset_t s = vset_make(N, 3, 10, 3);
    static const char *descs[] = {"Flat", "HNSW8"};
    for (int d = 0; d < 2; d++) {
        idx_vec_t *v = two_thirds_dead(descs[d], 0, &s);
        float sc[50];
        int64_t l[50];
        char err[512] = "";
        KBT_OK(idx_vec_search(v, 1, s.x + 5 * DIM, 50, sc, l, err, sizeof err),
               err);
        check_row(v, 0, sc, l, 50, alive_third, NULL, N / 3);
        KBT_OK(idx_vec_remove(v, N, s.labels, err, sizeof err), err);
        KBT_U64(idx_vec_count(v), 0);
        KBT_U64(idx_vec_dead(v), N);
        KBT_OK(idx_vec_search(v, 1, s.x, 50, sc, l, err, sizeof err), err);
        check_row(v, 0, sc, l, 50, NULL, NULL, 0);
        assert_true(sc[0] == FLT_MAX);
        idx_vec_free(&v);
    }
    vset_free(&s);
}

static int count_calls(void *ctx, int64_t label)
{
    (void)label;
    ++*(int *)ctx;
    return 1;
}

static void test_idx_vec_first_try_overfetches(void **state)
{
    (void)state;
    /* With half the vectors dead, one batched FAISS call per search must
     * already hold k live hits for every query: the allow filter (which
     * sees each live candidate once per try, in rank order) is then called
     * exactly k times per query. Asking FAISS for only k would need
     * retries, and call it more. */
    enum { N = 400, K = 10, NQ = 20 };
    vset_t s = vset_make(N, 14, 1, 1);
    idx_vec_t *v = vec_new(DIM, "Flat", 0);
    add_all(v, &s);
    char err[512] = "";
    for (size_t i = 0; i < N; i += 2)
        KBT_OK(idx_vec_remove(v, 1, &s.labels[i], err, sizeof err), err);
    int calls = 0;
    idx_vec_params_t p = {.allow = count_calls, .allow_ctx = &calls};
    float sc[NQ * K];
    int64_t l[NQ * K];
    KBT_OK(idx_vec_search_params(v, NQ, s.x, K, &p, sc, l, err, sizeof err),
           err);
    assert_int_equal(calls, NQ * K);
    for (int i = 0; i < NQ; i++)
        check_row(v, 0, sc + i * K, l + i * K, K, NULL, NULL, K);
    idx_vec_free(&v);
    vset_free(&s);
}

static void test_idx_vec_retry_when_nearest_are_dead(void **state)
{
    (void)state;
    /* The 150 nearest neighbours of the query are removed: no first try
     * sized from the dead fraction (1/2) can reach past them, so the query
     * is searched again with a larger k'; it still gets k live hits (the
     * exact ones on flat and untrained IVF). */
    enum { N = 300, K = 10 };
    vset_t s = vset_make(N, 15, 1, 1);
    int64_t order[N];
    double ds[N];
    brute(&s, 0, s.x, N, NULL, NULL, order, ds);
    static const char *descs[] = {"Flat", "HNSW8", "IVF4,Flat"};
    for (int d = 0; d < 3; d++) {
        idx_vec_t *v = vec_new(DIM, descs[d], 0);
        add_all(v, &s);
        char err[512] = "";
        KBT_OK(idx_vec_remove(v, 150, order, err, sizeof err), err);
        float sc[K];
        int64_t l[K];
        KBT_OK(idx_vec_search(v, 1, s.x, K, sc, l, err, sizeof err), err);
        for (int j = 0; j < K; j++) {
            assert_true(l[j] >= 0);
            assert_int_equal(idx_vec_is_live(v, l[j]), 1);
            if (d != 1)
                assert_int_equal(l[j], order[150 + j]);
        }
        idx_vec_free(&v);
    }
    vset_free(&s);
}

static void test_idx_vec_add_search_remove(void **state)
{
    (void)state;
    enum { N = 20 };
    idx_vec_t *v = vec_new(DIM, "IDMap2,Flat", 0);
    float x[N * DIM];
    int64_t labels[N];
    for (int i = 0; i < N; i++) {
        kbt_rand_unit(x + i * DIM, DIM, 100 + i);
        labels[i] = 100 + 7 * i;
    }
    char err[512] = "";
    KBT_OK(idx_vec_add(v, 0, x, labels, err, sizeof err), err); /* no-op */
    KBT_U64(idx_vec_count(v), 0);
    KBT_OK(idx_vec_add(v, N, x, labels, err, sizeof err), err);
    KBT_U64(idx_vec_count(v), N);

    /* Every vector finds itself first, at distance 0; batch of N queries. */
    float s[N * 3];
    int64_t l[N * 3];
    KBT_OK(idx_vec_search(v, N, x, 3, s, l, err, sizeof err), err);
    for (int i = 0; i < N; i++) {
        assert_int_equal(l[i * 3], labels[i]);
        KBT_NEAR(s[i * 3], 0.0, 1e-5);
        assert_true(s[i * 3 + 1] >= s[i * 3]);
        assert_true(s[i * 3 + 2] >= s[i * 3 + 1]);
    }

    /* Remove two labels (and one that was never there, and one twice). */
    int64_t rm[4] = {labels[5], labels[10], 999999, labels[5]};
    KBT_OK(idx_vec_remove(v, 4, rm, err, sizeof err), err);
    KBT_OK(idx_vec_remove(v, 0, rm, err, sizeof err), err); /* no-op */
    KBT_U64(idx_vec_count(v), N - 2);
    KBT_U64(idx_vec_dead(v), 2);
    KBT_U64(idx_vec_stored(v), N);
    KBT_OK(idx_vec_search(v, N, x, 3, s, l, err, sizeof err), err);
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < 3; j++) {
            assert_int_not_equal(l[i * 3 + j], labels[5]);
            assert_int_not_equal(l[i * 3 + j], labels[10]);
        }
        if (i != 5 && i != 10)
            assert_int_equal(l[i * 3], labels[i]);
    }

    /* Asking for more than there is: the rest are -1. */
    float s2[N + 5];
    int64_t l2[N + 5];
    KBT_OK(idx_vec_search(v, 1, x, N + 5, s2, l2, err, sizeof err), err);
    for (int j = 0; j < N - 2; j++)
        assert_true(l2[j] >= 100);
    for (int j = N - 2; j < N + 5; j++)
        assert_int_equal(l2[j], -1);
    idx_vec_free(&v);
}

/* Growth outside the lock (idx_vec.h): the grown copy is invisible until
 * adopted, then holds every old vector and the new ones; a copy made
 * before another add is refused and changes nothing. 4096 dims, so that
 * 4,096 vectors reach IDX_VEC_GROW_MIN_BYTES (64 MiB). */
static void test_idx_vec_grow_beside_searches(void **state)
{
    (void)state;
    enum { D = 4096, N0 = 4090 };
    idx_vec_t *v = vec_new(D, "Flat", IDX_METRIC_COSINE);
    float *x = malloc((size_t)(N0 + 20) * D * sizeof *x);
    int64_t *lab = malloc((N0 + 20) * sizeof *lab);
    assert_true(x && lab);
    for (int i = 0; i < N0 + 20; i++) {
        kbt_rand_unit(x + (size_t)i * D, D, 7000 + i);
        lab[i] = 1 + i;
    }
    char err[512] = "";
    KBT_OK(idx_vec_add(v, N0, x, lab, err, sizeof err), err);
    assert_int_equal(idx_vec_grow_due(v, 5), 0);  /* 4,095 vectors < 64 MiB */
    assert_int_equal(idx_vec_grow_due(v, 10), 1); /* 4,100: a large array */

    const float *xn = x + (size_t)N0 * D; /* the 10 new ones */
    idx_vec_grown_t *g = NULL;
    KBT_OK(idx_vec_grow(v, 10, xn, lab + N0, &g, err, sizeof err), err);
    assert_non_null(g);
    float s[2];
    int64_t l[2];
    KBT_OK(idx_vec_search(v, 1, xn, 1, s, l, err, sizeof err), err);
    assert_int_not_equal(l[0], lab[N0]); /* not adopted yet: not there */
    KBT_U64(idx_vec_count(v), N0);
    KBT_OK(idx_vec_adopt(v, g, err, sizeof err), err);
    idx_vec_grown_free(&g); /* the old index */
    assert_null(g);
    KBT_U64(idx_vec_count(v), N0 + 10);
    assert_true(idx_vec_is_stored(v, lab[N0 + 9]));
    for (int i = 0; i < N0 + 10; i += 409) { /* old and new find themselves */
        KBT_OK(idx_vec_search(v, 1, x + (size_t)i * D, 1, s, l, err,
                              sizeof err),
               err);
        assert_int_equal(l[0], lab[i]);
        KBT_NEAR(s[0], 1.0, 1e-4);
    }
    /* Room for at least as many again (four times as many with
     * faiss_c_compat.cpp, whose clone reserves that): no copy for the
     * next adds, until that room is used up. */
#ifdef KB_FAISS_COMPAT
    const int room = 4 * N0;
#else
    const int room = 2 * N0;
#endif
    assert_int_equal(idx_vec_grow_due(v, 10), 0);
    assert_int_equal(idx_vec_grow_due(v, (size_t)(room - N0 - 10)), 0);
    assert_int_equal(idx_vec_grow_due(v, (size_t)(room - N0 - 9)), 1);

    /* A copy made before another add is refused; nothing changes. */
    KBT_OK(idx_vec_grow(v, N0, x, lab, &g, err, sizeof err), err);
    int64_t extra = 99999;
    KBT_OK(idx_vec_add(v, 1, x + (size_t)(N0 + 10) * D, &extra, err,
                       sizeof err),
           err);
    assert_int_equal(idx_vec_adopt(v, g, err, sizeof err), KB_EUNAVAIL);
    idx_vec_grown_free(&g);
    KBT_U64(idx_vec_count(v), N0 + 11);
    /* Labels already stored are refused at adoption, as add refuses them. */
    KBT_OK(idx_vec_grow(v, 10, xn, lab + N0, &g, err, sizeof err), err);
    assert_int_equal(idx_vec_adopt(v, g, err, sizeof err), KB_EINVAL);
    idx_vec_grown_free(&g);
    KBT_U64(idx_vec_count(v), N0 + 11);
    KBT_U64(idx_vec_stored(v), N0 + 11);
    idx_vec_free(&v);

    /* Small arrays, and kinds other than flat, grow in place. */
    v = vec_new(DIM, "Flat", IDX_METRIC_L2);
    assert_int_equal(idx_vec_grow_due(v, 1000000), 0); /* 61 MiB */
    idx_vec_free(&v);
    v = vec_new(D, "HNSW16", IDX_METRIC_L2);
    assert_int_equal(idx_vec_grow_due(v, 100000), 0);
    idx_vec_free(&v);
    free(x);
    free(lab);
}

static void test_idx_vec_label_errors(void **state)
{
    (void)state;
    /* Labels are LSNs: never negative, below 2^40, never stored twice (not
     * even after removal). A refused batch stores nothing. */
    vset_t s = vset_make(3, 4, 50, 1); /* labels 50, 51, 52 */
    idx_vec_t *v = vec_new(DIM, "Flat", 1);
    char err[512] = "";
    int64_t dup[3] = {50, 51, 50};
    KBT_RC(idx_vec_add(v, 3, s.x, dup, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "label 50");
    KBT_U64(idx_vec_stored(v), 0);
    assert_int_equal(idx_vec_is_live(v, 51), 0);
    int64_t bad[2] = {7, -3};
    KBT_RC(idx_vec_add(v, 2, s.x, bad, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "-3");
    int64_t big = IDX_VEC_LABEL_LIMIT;
    KBT_RC(idx_vec_add(v, 1, s.x, &big, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "out of range");
    KBT_U64(idx_vec_stored(v), 0);

    add_all(v, &s);
    KBT_RC(idx_vec_add(v, 1, s.x, &s.labels[1], err, sizeof err), KB_EINVAL,
           err);
    KBT_CONTAINS(err, "already stored");
    KBT_OK(idx_vec_remove(v, 1, &s.labels[1], err, sizeof err), err);
    KBT_RC(idx_vec_add(v, 1, s.x, &s.labels[1], err, sizeof err), KB_EINVAL,
           err);
    KBT_CONTAINS(err, "removed");
    KBT_U64(idx_vec_stored(v), 3);
    KBT_U64(idx_vec_count(v), 2);
    idx_vec_free(&v);
    vset_free(&s);
}

/* ------------------------------------------------- max_label, allow */

static int upto_label(const void *ctx, int64_t label)
{
    return label <= *(const int64_t *)ctx;
}

static void test_idx_vec_max_label_hides_newer(void **state)
{
    (void)state;
    /* A reader at version V sees no label above V, and still k hits. */
    enum { N = 300, K = 8, NQ = 20 };
    vset_t s = vset_make(N, 5, 1, 1); /* labels 1..N */
    static const char *descs[] = {"Flat", "HNSW8"};
    int64_t bounds[] = {N / 10, N / 2, N + 100};
    for (int d = 0; d < 2; d++) {
        idx_vec_t *v = vec_new(DIM, descs[d], 1);
        add_all(v, &s);
        for (int b = 0; b < 3; b++) {
            idx_vec_params_t p = {.max_label = bounds[b]};
            float sc[NQ * K];
            int64_t l[NQ * K], want[K];
            char err[512] = "";
            /* Queries from the newest vectors: their nearest are hidden. */
            KBT_OK(idx_vec_search_params(v, NQ, s.x + (N - NQ) * DIM, K, &p, sc,
                                         l, err, sizeof err),
                   err);
            for (int i = 0; i < NQ; i++) {
                check_row(v, 1, sc + i * K, l + i * K, K, upto_label,
                          &bounds[b], K);
                brute(&s, 1, s.x + (N - NQ + i) * DIM, K, upto_label,
                      &bounds[b], want, NULL);
                if (d == 0)
                    assert_memory_equal(l + i * K, want, sizeof want);
            }
        }
        idx_vec_free(&v);
    }
    vset_free(&s);
}

typedef struct allow_ctx {
    int64_t mod;
    int calls;
} allow_ctx_t;

static int allow_mod(void *ctx, int64_t label)
{
    allow_ctx_t *a = ctx;
    a->calls++;
    return label % a->mod == 0;
}

static int allowed_and_live(const void *ctx, int64_t label)
{
    const allow_ctx_t *a = ctx;
    return label % a->mod == 0 && label % 5 != 0; /* test removes % 5 */
}

static void test_idx_vec_allow_filter(void **state)
{
    (void)state;
    /* Only labels the filter accepts come back: k of them when at least k
     * are allowed (exactly the brute-force ones on flat), all of them then
     * -1 when fewer. Combined with tombstones (labels % 5 removed). */
    enum { N = 400, NQ = 10 };
    vset_t s = vset_make(N, 6, 1, 1);
    static const char *descs[] = {"Flat", "HNSW8", "IVF4,Flat"};
    for (int d = 0; d < 3; d++) {
        idx_vec_t *v = vec_new(DIM, descs[d], 0);
        add_all(v, &s);
        char err[512] = "";
        for (int64_t l = 5; l <= N; l += 5)
            KBT_OK(idx_vec_remove(v, 1, &l, err, sizeof err), err);
        /* mod 7: 57 allowed, 46 live; mod 37: 10 allowed, 8 live. */
        static const struct {
            int64_t mod;
            uint32_t k;
            size_t want;
        } cases[] = {{7, 10, 10}, {37, 10, 8}, {37, 3, 3}};
        for (int c = 0; c < 3; c++) {
            allow_ctx_t a = {cases[c].mod, 0};
            idx_vec_params_t p = {.allow = allow_mod, .allow_ctx = &a};
            float sc[NQ * 10];
            int64_t l[NQ * 10], want[10];
            uint32_t k = cases[c].k;
            KBT_OK(idx_vec_search_params(v, NQ, s.x, k, &p, sc, l, err,
                                         sizeof err),
                   err);
            assert_true(a.calls > 0);
            for (int i = 0; i < NQ; i++) {
                check_row(v, 0, sc + i * k, l + i * k, k, allowed_and_live, &a,
                          cases[c].want);
                brute(&s, 0, s.x + i * DIM, k, allowed_and_live, &a, want,
                      NULL);
                if (d != 1) /* flat, untrained IVF: exact */
                    assert_memory_equal(l + i * k, want, k * sizeof *want);
            }
        }
        idx_vec_free(&v);
    }
    vset_free(&s);
}

static void test_idx_vec_hnsw_ef_search_per_call(void **state)
{
    (void)state;
    /* ef_search reaches FAISS per call: a walk of 10 misses true
     * neighbours that a walk of 256 finds (dim 48: hard enough), and
     * neither changes the index for the next call. */
    enum { D = 48, N = 2000, NQ = 40, K = 10 };
    float *x = malloc(N * D * sizeof *x), *q = malloc(NQ * D * sizeof *q);
    int64_t *labels = malloc(N * sizeof *labels);
    assert_true(x && q && labels);
    for (int i = 0; i < N; i++) {
        kbt_rand_unit(x + i * D, D, 5000 + i);
        labels[i] = i + 1;
    }
    for (int i = 0; i < NQ; i++)
        kbt_rand_unit(q + i * D, D, 9000 + i);
    idx_vec_t *flat = vec_new(D, "Flat", 1), *h = vec_new(D, "HNSW8", 1);
    char err[512] = "";
    KBT_OK(idx_vec_add(flat, N, x, labels, err, sizeof err), err);
    KBT_OK(idx_vec_add(h, N, x, labels, err, sizeof err), err);
    float sc[NQ * K];
    int64_t truth[NQ * K], got[NQ * K];
    KBT_OK(idx_vec_search(flat, NQ, q, K, sc, truth, err, sizeof err), err);
    double recall[3];
    uint32_t efs[3] = {10, 256, 10};
    for (int r = 0; r < 3; r++) {
        idx_vec_params_t p = {.ef_search = efs[r]};
        KBT_OK(idx_vec_search_params(h, NQ, q, K, &p, sc, got, err, sizeof err),
               err);
        int hit = 0;
        for (int i = 0; i < NQ * K; i++)
            for (int j = 0; j < K; j++)
                hit += got[i] == truth[i / K * K + j];
        recall[r] = (double)hit / (NQ * K);
    }
    if (!(recall[1] >= 0.98 && recall[0] <= recall[1] - 0.05 &&
          recall[2] == recall[0]))
        fail_msg("recall@%d: ef 10 = %.3f, ef 256 = %.3f, ef 10 again = %.3f",
                 K, recall[0], recall[1], recall[2]);
    idx_vec_free(&flat);
    idx_vec_free(&h);
    free(x);
    free(q);
    free(labels);
}

/* ------------------------------------------------------------ training */

static void test_idx_vec_untrained_ivf_is_exact(void **state)
{
    (void)state;
    /* Before training, an IVF keeps its vectors in a flat fallback: add,
     * remove and search work, with exact results, under every metric. */
    enum { N = 150, K = 7 };
    vset_t s = vset_make(N, 7, 3, 2);
    for (int metric = 0; metric <= 2; metric++) {
        idx_vec_t *v = vec_new(DIM, "IVF8,Flat", metric);
        assert_string_equal(idx_vec_kind(v), "ivf");
        assert_int_equal(idx_vec_needs_training(v), 1);
        assert_int_equal(idx_vec_is_trained(v), 0);
        add_all(v, &s);
        char err[512] = "";
        KBT_OK(idx_vec_remove(v, 1, &s.labels[3], err, sizeof err), err);
        float sc[N * K];
        int64_t l[N * K], want[K + 1];
        double ws[K + 1];
        KBT_OK(idx_vec_search(v, N, s.x, K, sc, l, err, sizeof err), err);
        for (int i = 0; i < N; i++) {
            brute(&s, metric, s.x + i * DIM, K + 1, NULL, NULL, want, ws);
            /* brute() sees the removed label: drop it */
            int64_t live[K];
            double ls[K];
            for (int j = 0, m = 0; j < K + 1 && m < K; j++)
                if (want[j] != s.labels[3]) {
                    live[m] = want[j];
                    ls[m++] = ws[j];
                }
            assert_memory_equal(l + i * K, live, sizeof live);
            for (int j = 0; j < K; j++)
                KBT_NEAR(sc[i * K + j], ls[j], 1e-4);
        }
        idx_vec_free(&v);
    }
    vset_free(&s);
}

static void test_idx_vec_training_threshold(void **state)
{
    (void)state;
    idx_vec_t *ivf = vec_new(DIM, "IVF8,Flat", 0);
    idx_vec_t *pq = vec_new(DIM, "IDMap2,IVF8,PQ4", 0);
    idx_vec_t *flat = vec_new(DIM, "Flat", 0);
    idx_vec_t *hnsw = vec_new(DIM, "HNSW8", 0);
    KBT_U64(idx_vec_train_min(ivf), 39 * 8);
    KBT_U64(idx_vec_train_min(pq), 39 * 256);
    KBT_U64(idx_vec_train_min(flat), 0);
    KBT_U64(idx_vec_train_min(hnsw), 0);
    assert_int_equal(idx_vec_needs_training(flat), 0);
    assert_int_equal(idx_vec_needs_training(hnsw), 0);
    assert_int_equal(idx_vec_needs_training(pq), 1);

    vset_t s = vset_make(400, 8, 1, 1);
    char err[512] = "";
    KBT_RC(idx_vec_train(flat, 400, s.x, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "only an IVF");
    KBT_RC(idx_vec_train(ivf, 0, s.x, err, sizeof err), KB_EINVAL, err);
    /* Fewer training vectors than lists: FAISS's reason. */
    KBT_RC(idx_vec_train(ivf, 4, s.x, err, sizeof err), KB_EINDEX, err);
    KBT_CONTAINS(err, "FAISS train failed");
    assert_int_equal(idx_vec_needs_training(ivf), 1);
    /* An index that stores vectors is not trained in place. */
    KBT_OK(idx_vec_add(pq, 1, s.x, s.labels, err, sizeof err), err);
    KBT_RC(idx_vec_train(pq, 400, s.x, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "stores 1 vectors");
    /* Even when all of them are dead. */
    KBT_OK(idx_vec_remove(pq, 1, s.labels, err, sizeof err), err);
    KBT_RC(idx_vec_train(pq, 400, s.x, err, sizeof err), KB_EINVAL, err);

    KBT_OK(idx_vec_train(ivf, 400, s.x, err, sizeof err), err);
    assert_int_equal(idx_vec_needs_training(ivf), 0);
    assert_int_equal(idx_vec_is_trained(ivf), 1);
    KBT_RC(idx_vec_train(ivf, 400, s.x, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "trained already");
    idx_vec_free(&ivf);
    idx_vec_free(&pq);
    idx_vec_free(&flat);
    idx_vec_free(&hnsw);
    vset_free(&s);
}

static void test_idx_vec_trained_ivf_nprobe_per_call(void **state)
{
    (void)state;
    /* Trained: nprobe = nlist is exact; nprobe 1 misses some neighbours,
     * and the per-call value does not stick to the index. */
    vset_t s = vset_make(400, 8, 1, 1);
    idx_vec_t *ivf = vec_new(DIM, "IVF8,Flat", 0);
    char err[512] = "";
    KBT_OK(idx_vec_train(ivf, 400, s.x, err, sizeof err), err);
    add_all(ivf, &s);
    enum { NQ = 40, K = 10 };
    float sc[NQ * K];
    int64_t all[NQ * K], one[NQ * K], want[K];
    idx_vec_params_t p_all = {.nprobe = 8}, p_one = {.nprobe = 1};
    KBT_OK(idx_vec_search_params(ivf, NQ, s.x, K, &p_all, sc, all, err,
                                 sizeof err),
           err);
    KBT_OK(idx_vec_search_params(ivf, NQ, s.x, K, &p_one, sc, one, err,
                                 sizeof err),
           err);
    int differ = 0;
    for (int i = 0; i < NQ; i++) {
        brute(&s, 0, s.x + i * DIM, K, NULL, NULL, want, NULL);
        assert_memory_equal(all + i * K, want, sizeof want);
        differ += memcmp(one + i * K, want, sizeof want) != 0;
    }
    assert_true(differ > 0);
    KBT_OK(idx_vec_search_params(ivf, NQ, s.x, K, &p_all, sc, one, err,
                                 sizeof err),
           err);
    assert_memory_equal(one, all, sizeof all);
    idx_vec_free(&ivf);
    vset_free(&s);
}

/* -------------------------------------------------------------- cosine */

static void test_idx_vec_cosine_scores_are_cosine_similarity(void **state)
{
    (void)state;
    /* Vectors and queries of all sizes: scores equal cos(q, x) and do not
     * change when a query is scaled; the caller's buffers stay as they
     * were. */
    enum { N = 100, K = 5 };
    vset_t s = vset_make(N, 9, 1, 1);
    for (size_t i = 0; i < N; i++)
        for (int j = 0; j < DIM; j++)
            s.x[i * DIM + j] *= (float)(0.01 + (double)(i % 13) * 7.5);
    float *copy = malloc(N * DIM * sizeof *copy);
    assert_non_null(copy);
    memcpy(copy, s.x, N * DIM * sizeof *copy);
    static const char *descs[] = {"Flat", "HNSW8", "IVF4,Flat"};
    for (int d = 0; d < 3; d++) {
        idx_vec_t *v = vec_new(DIM, descs[d], IDX_METRIC_COSINE);
        if (d == 2)
            train_ivf(v);
        add_all(v, &s);
        assert_memory_equal(s.x, copy, N * DIM * sizeof *copy);
        float sc[N * K], sc2[K], q2[DIM];
        int64_t l[N * K], l2[K];
        char err[512] = "";
        idx_vec_params_t p = {.nprobe = 4};
        KBT_OK(idx_vec_search_params(v, N, s.x, K, &p, sc, l, err, sizeof err),
               err);
        assert_memory_equal(s.x, copy, N * DIM * sizeof *copy);
        for (int i = 0; i < N; i++) {
            assert_int_equal(l[i * K], s.labels[i]);
            KBT_NEAR(sc[i * K], 1.0, 1e-5);
            for (int j = 0; j < K; j++) {
                const float *x = s.x + (l[i * K + j] - 1) * DIM;
                KBT_NEAR(sc[i * K + j],
                         ref_score(IDX_METRIC_COSINE, s.x + i * DIM, x), 1e-5);
            }
        }
        for (int j = 0; j < DIM; j++)
            q2[j] = s.x[3 * DIM + j] * -0.001f; /* opposite direction */
        KBT_OK(idx_vec_search_params(v, 1, q2, K, &p, sc2, l2, err, sizeof err),
               err);
        assert_true(sc2[0] < 0.9f);
        for (int j = 0; j < K; j++)
            assert_true(sc2[j] >= -1.0001f && sc2[j] <= 1.0001f);
        idx_vec_free(&v);
    }
    free(copy);
    vset_free(&s);
}

static void test_idx_vec_cosine_zero_vector_refused(void **state)
{
    (void)state;
    /* A zero vector has no cosine: refused with its position and label,
     * and the batch stores nothing. */
    vset_t s = vset_make(4, 10, 20, 1);
    memset(s.x + 2 * DIM, 0, DIM * sizeof(float));
    idx_vec_t *v = vec_new(DIM, "IVF4,Flat", IDX_METRIC_COSINE);
    char err[512] = "";
    KBT_RC(idx_vec_add(v, 4, s.x, s.labels, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "zero vector");
    KBT_CONTAINS(err, "label 22");
    KBT_U64(idx_vec_stored(v), 0);
    KBT_OK(idx_vec_add(v, 2, s.x, s.labels, err, sizeof err), err);
    float sc[2];
    int64_t l[2];
    KBT_RC(idx_vec_search(v, 1, s.x + 2 * DIM, 2, sc, l, err, sizeof err),
           KB_EINVAL, err);
    KBT_CONTAINS(err, "query 0 is a zero vector");
    KBT_RC(idx_vec_score_labels(v, s.x + 2 * DIM, 1, s.labels, sc, err,
                                sizeof err),
           KB_EINVAL, err);
    KBT_CONTAINS(err, "zero vector");
    idx_vec_t *e = vec_new(DIM, "IVF4,Flat", IDX_METRIC_COSINE);
    KBT_RC(idx_vec_train(e, 4, s.x, err, sizeof err), KB_EINVAL, err);
    KBT_CONTAINS(err, "training vector 2 is a zero vector");
    /* Under L2 and IP a zero vector is an ordinary vector. */
    idx_vec_t *ip = vec_new(DIM, "Flat", IDX_METRIC_IP);
    KBT_OK(idx_vec_add(ip, 4, s.x, s.labels, err, sizeof err), err);
    idx_vec_free(&ip);
    idx_vec_free(&e);
    idx_vec_free(&v);
    vset_free(&s);
}

/* ------------------------------------------- reconstruct, score_labels */

/* Checks reconstruct and score_labels of one index over s (its first 50
 * vectors; s.labels[4] removed) against brute force. */
static void check_stored_vectors(idx_vec_t *v, int metric, int pq,
                                 const vset_t *s)
{
    enum { N = 50 };
    char err[512] = "";
    float q[DIM], rec[N * DIM], sc[N + 2];
    int64_t ask[N + 2];
    kbt_rand(q, DIM, 99);
    for (int i = 0; i < N; i++) {
        ask[i] = s->labels[i];
        int rc = idx_vec_reconstruct(v, ask[i], rec + i * DIM, err, sizeof err);
        if (i == 4) {
            KBT_RC(rc, KB_EINVAL, err);
            KBT_CONTAINS(err, "removed");
            continue;
        }
        KBT_OK(rc, err);
        const float *x = s->x + i * DIM;
        double scale =
            metric == IDX_METRIC_COSINE ? 1 / sqrt(kbt_dot(x, x, DIM)) : 1;
        for (int j = 0; j < DIM && !pq; j++)
            KBT_NEAR(rec[i * DIM + j], x[j] * scale, 1e-5);
    }
    ask[N] = 99999;  /* never added */
    ask[N + 1] = -1; /* not a label */
    KBT_OK(idx_vec_score_labels(v, q, N + 2, ask, sc, err, sizeof err), err);
    float none = metric == IDX_METRIC_L2 ? FLT_MAX : -FLT_MAX;
    assert_true(sc[4] == none && sc[N] == none && sc[N + 1] == none);
    for (int i = 0; i < N; i++) {
        if (i == 4)
            continue;
        /* Against what is stored: the original, or PQ's version of it. */
        double want = pq ? ref_score(metric == 2 ? 1 : metric, q, rec + i * DIM)
                         : ref_score(metric, q, s->x + i * DIM);
        if (pq && metric == IDX_METRIC_COSINE)
            want /= sqrt(kbt_dot(q, q, DIM));
        KBT_NEAR(sc[i], want, 1e-4);
    }
}

static void test_idx_vec_reconstruct_and_score_labels(void **state)
{
    /* reconstruct gives the stored vector (normalised under cosine, PQ's
     * approximation for PQ); score_labels scores a query against stored
     * vectors exactly as brute force does; labels not live get the
     * unfilled-slot score. Every kind and metric. */
    kinds_fx_t *fx = *state;
    for (int kd = 0; k_kinds[kd]; kd++)
        for (int metric = 0; metric <= 2; metric++)
            check_stored_vectors(fx->v[kd][metric], metric,
                                 strstr(k_kinds[kd], "PQ") != NULL, &fx->s);
}

/* ------------------------------------------------------ memory figures */

static void test_idx_vec_bytes_counts_storage(void **state)
{
    (void)state;
    enum { N = 500 };
    vset_t s = vset_make(N, 12, 1, 1);
    idx_vec_t *flat = vec_new(DIM, "Flat", 0);
    idx_vec_t *hnsw = vec_new(DIM, "HNSW16", 0);
    idx_vec_t *pq = vec_new(DIM, "IVF4,PQ4", 0);
    uint64_t empty = idx_vec_bytes(flat);
    add_all(flat, &s);
    add_all(hnsw, &s);
    /* Vectors + id maps + bitmaps: at least the raw floats, and not wildly
     * more (id maps ~48 B per vector; one bitmap page of 1 KiB and its
     * directory of 32 KiB). */
    uint64_t fb = idx_vec_bytes(flat);
    assert_true(fb - empty >= (uint64_t)N * DIM * 4);
    assert_true(fb - empty <= (uint64_t)N * (DIM * 4 + 64) + 40000);
    /* HNSW16 adds 2M + 1 = 33 links of 4 B per vector. */
    assert_true(idx_vec_bytes(hnsw) >= fb + (uint64_t)N * 33 * 4);
    /* PQ4 codes are 4 B instead of 64 B of floats (after training, whose
     * tables are fixed costs). */
    train_ivf(pq);
    uint64_t pq0 = idx_vec_bytes(pq);
    add_all(pq, &s);
    assert_true(idx_vec_bytes(pq) - pq0 < fb - empty);
    /* A far-away label costs a new bitmap page and directory. */
    char err[512] = "";
    int64_t far = INT64_C(1) << 39;
    uint64_t before = idx_vec_bytes(flat);
    KBT_OK(idx_vec_add(flat, 1, s.x, &far, err, sizeof err), err);
    assert_true(idx_vec_bytes(flat) >= before + 1024);
    assert_int_equal(idx_vec_is_live(flat, far), 1);
    idx_vec_free(&flat);
    idx_vec_free(&hnsw);
    idx_vec_free(&pq);
    vset_free(&s);
}

/* -------------------------------------------------------- concurrency */

enum { CQ = 60, CK = 10, CROUNDS = 5 };

typedef struct conc {
    const idx_vec_t *v;
    const float *q;
    const int64_t *want_l; /* single-thread results, per params case */
    const float *want_s;
    int mismatches;
    int failures;
} conc_t;

static int allow_even(void *ctx, int64_t label)
{
    (void)ctx;
    return label % 2 == 0;
}

static const idx_vec_params_t k_conc_params[3] = {
    {0},
    {.ef_search = 24, .max_label = 700},
    {.ef_search = 200, .allow = allow_even},
};

/* Runs the three parameter sets over all queries; counts differences. */
static void conc_round(conc_t *c, int64_t *l, float *s)
{
    char err[256];
    for (int p = 0; p < 3; p++) {
        if (idx_vec_search_params(c->v, CQ, c->q, CK, &k_conc_params[p], s, l,
                                  err, sizeof err)) {
            c->failures++;
            continue;
        }
        if (memcmp(l, c->want_l + p * CQ * CK, CQ * CK * sizeof *l) ||
            memcmp(s, c->want_s + p * CQ * CK, CQ * CK * sizeof *s))
            c->mismatches++;
    }
}

static void *conc_thread(void *arg)
{
    conc_t *c = arg;
    int64_t *l = malloc(CQ * CK * sizeof *l);
    float *s = malloc(CQ * CK * sizeof *s);
    for (int r = 0; r < CROUNDS && l && s; r++)
        conc_round(c, l, s);
    if (!l || !s)
        c->failures++;
    free(l);
    free(s);
    return NULL;
}

static void test_idx_vec_concurrent_searches_match_single_thread(void **state)
{
    (void)state;
    /* Four threads search one index at once, with different per-call
     * parameters (efSearch, max_label, allow) and many dead labels: every
     * answer equals the single-threaded one. */
    enum { N = 1500 };
    vset_t s = vset_make(N, 13, 1, 1);
    static const char *descs[] = {"HNSW16", "Flat", "IVF8,Flat"};
    for (int d = 0; d < 3; d++) {
        idx_vec_t *v = vec_new(DIM, descs[d], 1);
        if (idx_vec_needs_training(v))
            train_ivf(v);
        add_all(v, &s);
        char err[512] = "";
        for (size_t i = 0; i < N; i += 3)
            KBT_OK(idx_vec_remove(v, 1, &s.labels[i], err, sizeof err), err);
        int64_t *wl = malloc(3 * CQ * CK * sizeof *wl);
        float *ws = malloc(3 * CQ * CK * sizeof *ws);
        assert_true(wl && ws);
        for (int p = 0; p < 3; p++)
            KBT_OK(idx_vec_search_params(v, CQ, s.x, CK, &k_conc_params[p],
                                         ws + p * CQ * CK, wl + p * CQ * CK,
                                         err, sizeof err),
                   err);
        conc_t c[4];
        pthread_t t[4];
        for (int i = 0; i < 4; i++) {
            c[i] = (conc_t){v, s.x, wl, ws, 0, 0};
            assert_int_equal(pthread_create(&t[i], NULL, conc_thread, &c[i]),
                             0);
        }
        for (int i = 0; i < 4; i++) {
            assert_int_equal(pthread_join(t[i], NULL), 0);
            if (c[i].mismatches || c[i].failures)
                fail_msg("%s thread %d: %d mismatches, %d failures", descs[d],
                         i, c[i].mismatches, c[i].failures);
        }
        free(wl);
        free(ws);
        idx_vec_free(&v);
    }
    vset_free(&s);
}

/* BUG (indexer/idx_vec.c, idx_vec_search): after idx_vec_setup() (which
 * kbsync's main calls) FAISS takes its BLAS path for every query, and that
 * path returns early when the index is empty without writing the result
 * buffers; IndexIDMap2 then maps the uninitialised labels through its empty
 * id_map and crashes. A fresh node, or one whose documents were all
 * deleted, dies on its first query. Run in a child so the crash fails only
 * this test. Every kind. */
static int empty_search_child(void *arg)
{
    (void)arg;
    idx_vec_setup(1);
    static const char *descs[] = {"Flat", "HNSW8", "IVF4,Flat"};
    for (int d = 0; d < 3; d++)
        for (int ip = 0; ip <= 1; ip++) {
            idx_vec_t *v = NULL;
            char err[512];
            if (idx_vec_new(DIM, descs[d], ip, &v, err, sizeof err))
                return 1;
            float q[DIM], s[4];
            int64_t l[4];
            kbt_rand_unit(q, DIM, 1);
            memset(l, 0x5a, sizeof l); /* what malloc might hand out */
            if (idx_vec_search(v, 1, q, 4, s, l, err, sizeof err))
                return 2;
            for (int i = 0; i < 4; i++)
                if (l[i] != -1)
                    return 3;
            /* Emptied by removal: the same. */
            int64_t label = 7;
            if (idx_vec_add(v, 1, q, &label, err, sizeof err) ||
                idx_vec_remove(v, 1, &label, err, sizeof err) ||
                idx_vec_count(v) != 0)
                return 4;
            memset(l, 0x5a, sizeof l);
            if (idx_vec_search(v, 1, q, 4, s, l, err, sizeof err))
                return 5;
            for (int i = 0; i < 4; i++)
                if (l[i] != -1)
                    return 6;
            idx_vec_free(&v);
        }
    return 0;
}

static void test_idx_vec_search_empty_index(void **state)
{
    (void)state;
    kbt_run_isolated("search of an empty index", empty_search_child, NULL,
                     30000);
}

int main(void)
{
    /* As kbsync's main does: one thread, BLAS for single queries. */
    idx_vec_setup(1);
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_idx_vec_every_kind_and_metric_adds_and_searches),
        cmocka_unit_test(test_idx_vec_reconstruct_and_score_labels),
    };
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idx_vec_bad_description_fails_with_text),
        cmocka_unit_test(test_idx_vec_unmaintainable_kind_refused),
        cmocka_unit_test(test_idx_vec_flat_is_wrapped),
        cmocka_unit_test(test_idx_vec_ip_vs_l2_ordering),
        cmocka_unit_test(test_idx_vec_removed_never_returned_on_every_kind),
        cmocka_unit_test(test_idx_vec_all_dead_and_few_live),
        cmocka_unit_test(test_idx_vec_first_try_overfetches),
        cmocka_unit_test(test_idx_vec_retry_when_nearest_are_dead),
        cmocka_unit_test(test_idx_vec_add_search_remove),
        cmocka_unit_test(test_idx_vec_label_errors),
        cmocka_unit_test(test_idx_vec_grow_beside_searches),
        cmocka_unit_test(test_idx_vec_max_label_hides_newer),
        cmocka_unit_test(test_idx_vec_allow_filter),
        cmocka_unit_test(test_idx_vec_hnsw_ef_search_per_call),
        cmocka_unit_test(test_idx_vec_untrained_ivf_is_exact),
        cmocka_unit_test(test_idx_vec_training_threshold),
        cmocka_unit_test(test_idx_vec_trained_ivf_nprobe_per_call),
        cmocka_unit_test(test_idx_vec_cosine_scores_are_cosine_similarity),
        cmocka_unit_test(test_idx_vec_cosine_zero_vector_refused),
        cmocka_unit_test(test_idx_vec_bytes_counts_storage),
        cmocka_unit_test(test_idx_vec_concurrent_searches_match_single_thread),
        cmocka_unit_test(test_idx_vec_search_empty_index),
    };
    int failed = cmocka_run_group_tests_name("kinds x metrics", shared,
                                             kinds_setup, kinds_teardown);
    return failed + cmocka_run_group_tests(tests, NULL, NULL);
}
