/* test_idx_delta: the recent-vectors log of indexer/idx_delta.h. In:
 * appended vectors with ascending labels. Out: pass/fail on exact top-k
 * (inner product, L2, cosine) against brute force, on max_label and keep(),
 * on lookups by label, and on freeing merged blocks while appending goes on
 * across block boundaries. */
#include "kb_test.h"

#include "idx_delta.h"
#include "idx_vec.h"
#include "kb_err.h"

#include <float.h>

#define DIM 16
#define N 3000 /* several 1024-entry blocks */

static float vecs[N][DIM];
static int64_t labels[N];

static void fill(void)
{
    for (int i = 0; i < N; i++) {
        kbt_rand(vecs[i], DIM, 100 + (uint64_t)i);
        labels[i] = 10 + 2 * i; /* ascending, with gaps */
    }
}

static float score(int metric, const float *q, const float *x)
{
    if (metric == IDX_METRIC_L2)
        return (float)kbt_l2sq(q, x, DIM);
    double d = kbt_dot(q, x, DIM);
    if (metric == IDX_METRIC_COSINE)
        d /= sqrt(kbt_dot(q, q, DIM) * kbt_dot(x, x, DIM));
    return (float)d;
}

static int keep_mod3(void *ctx, int64_t label)
{
    (void)ctx;
    return (label / 2) % 3 != 0;
}

/* Best k of entries [lo, hi) by brute force, under max_label and keep. */
static void brute(int metric, const float *q, uint64_t lo, uint64_t hi,
                  int64_t max_label, int use_keep, uint32_t k, int64_t *out)
{
    float best[64];
    for (uint32_t j = 0; j < k; j++)
        out[j] = -1;
    for (uint64_t i = lo; i < hi; i++) {
        if (labels[i] > max_label || (use_keep && !keep_mod3(NULL, labels[i])))
            continue;
        float s = score(metric, q, vecs[i]);
        for (uint32_t j = 0; j < k; j++) {
            int better = out[j] < 0 || (metric == IDX_METRIC_L2 ? s < best[j]
                                                                : s > best[j]);
            if (!better)
                continue;
            for (uint32_t t = k - 1; t > j; t--) {
                best[t] = best[t - 1];
                out[t] = out[t - 1];
            }
            best[j] = s;
            out[j] = labels[i];
            break;
        }
    }
}

static void check_metric(int metric)
{
    idx_delta_t *d = NULL;
    KBT_OK(idx_delta_new(DIM, metric, &d), "new");
    /* Appended in uneven pieces that cross block boundaries. */
    for (int i = 0; i < N;) {
        int n = 1 + (i * 7) % 500;
        if (i + n > N)
            n = N - i;
        KBT_OK(idx_delta_append(d, (size_t)n, vecs[i], &labels[i]), "append");
        i += n;
    }
    KBT_U64(idx_delta_count(d), N);
    enum { NQ = 3, K = 10 };
    float q[NQ][DIM];
    for (int i = 0; i < NQ; i++)
        kbt_rand(q[i], DIM, 9 + (uint64_t)i);
    struct {
        uint64_t lo, hi;
        int64_t max;
        int keep;
    } cases[] = {{0, N, INT64_MAX, 0},
                 {100, 2500, INT64_MAX, 0},
                 {0, N, labels[1500], 0},
                 {0, N, INT64_MAX, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        float sc[NQ * K];
        int64_t lb[NQ * K];
        for (int i = 0; i < NQ * K; i++) {
            lb[i] = -1;
            sc[i] = metric == IDX_METRIC_L2 ? FLT_MAX : -FLT_MAX;
        }
        KBT_OK(idx_delta_search(d, cases[c].lo, cases[c].hi, cases[c].max,
                                cases[c].keep ? keep_mod3 : NULL, NULL, NQ,
                                q[0], K, sc, lb),
               "search");
        for (int i = 0; i < NQ; i++) {
            int64_t want[K];
            brute(metric, q[i], cases[c].lo, cases[c].hi, cases[c].max,
                  cases[c].keep, K, want);
            for (int j = 0; j < K; j++) {
                if (lb[i * K + j] != want[j])
                    fail_msg("metric %d case %zu query %d rank %d: label %lld, "
                             "brute force says %lld",
                             metric, c, i, j, (long long)lb[i * K + j],
                             (long long)want[j]);
                uint64_t e = idx_delta_find(d, 0, N, want[j]);
                assert_true(e != UINT64_MAX);
                KBT_NEAR(sc[i * K + j], score(metric, q[i], vecs[e]), 1e-3);
                KBT_NEAR(idx_delta_score(d, q[i], e), sc[i * K + j], 1e-3);
            }
        }
    }
    assert_true(idx_delta_find(d, 0, N, 11) == UINT64_MAX); /* a gap */
    assert_int_equal(idx_delta_label(d, 5), labels[5]);
    idx_delta_free(&d);
    assert_null(d);
}

static void test_idx_delta_exact_topk_every_metric(void **state)
{
    (void)state;
    check_metric(IDX_METRIC_IP);
    check_metric(IDX_METRIC_L2);
    check_metric(IDX_METRIC_COSINE);
}

static void test_idx_delta_free_below_keeps_the_rest(void **state)
{
    (void)state;
    idx_delta_t *d = NULL;
    KBT_OK(idx_delta_new(DIM, IDX_METRIC_IP, &d), "new");
    KBT_OK(idx_delta_append(d, 2000, vecs[0], labels), "append");
    uint64_t bytes = idx_delta_bytes(d);
    assert_true(bytes > 0);
    idx_delta_free_below(d, 1500); /* frees the first block only */
    assert_true(idx_delta_bytes(d) < bytes);
    KBT_OK(idx_delta_append(d, 1000, vecs[2000], &labels[2000]), "append");
    float q[DIM];
    kbt_rand(q, DIM, 1);
    float sc[5];
    int64_t lb[5];
    for (int i = 0; i < 5; i++) {
        lb[i] = -1;
        sc[i] = -FLT_MAX;
    }
    KBT_OK(idx_delta_search(d, 1500, 3000, INT64_MAX, NULL, NULL, 1, q, 5, sc,
                            lb),
           "search");
    int64_t want[5];
    brute(IDX_METRIC_IP, q, 1500, 3000, INT64_MAX, 0, 5, want);
    for (int i = 0; i < 5; i++)
        assert_int_equal(lb[i], want[i]);
    idx_delta_free_below(d, 3000);
    idx_delta_free(&d);
    idx_delta_free(NULL);
}

int main(void)
{
    fill();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idx_delta_exact_topk_every_metric),
        cmocka_unit_test(test_idx_delta_free_below_keeps_the_rest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
