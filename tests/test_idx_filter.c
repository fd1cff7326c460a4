/* test_idx_filter: the metadata postings of indexer/idx_filter.h. In: label
 * + metadata JSON pairs. Out: pass/fail on which labels match which
 * key=value filters (strings, numbers, booleans, arrays, several filters),
 * on what is not filterable (nested values, null), and on label order. */
#include "kb_test.h"

#include "idx_filter.h"
#include "kb_err.h"

static idx_filter_pair_t kv(const char *k, const char *v)
{
    idx_filter_pair_t p = {k, strlen(k), v, strlen(v)};
    return p;
}

static void add(idx_filter_t *f, int64_t label, const char *meta)
{
    KBT_OK(idx_filter_add(f, label, meta, strlen(meta)), meta);
}

/* Matches and compares with want[0..nwant). */
static void expect(idx_filter_t *f, const idx_filter_pair_t *p, size_t np,
                   const int64_t *want, size_t nwant)
{
    int64_t *got = NULL;
    size_t n = 0;
    KBT_OK(idx_filter_match(f, p, np, &got, &n), "match");
    if (n != nwant)
        fail_msg("%zu labels match, wanted %zu", n, nwant);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(got[i], want[i]);
    assert_true(idx_filter_estimate(f, p, np) >= nwant);
    free(got);
}

static void test_idx_filter_scalars_match_by_text(void **state)
{
    (void)state;
    idx_filter_t *f;
    KBT_OK(idx_filter_new(&f), "new");
    add(f, 1, "{\"lang\":\"en\",\"year\":2024,\"draft\":true}");
    add(f, 2, "{\"lang\":\"de\",\"year\":2023,\"draft\":false}");
    add(f, 3, "{\"lang\":\"en\",\"year\":2023}");
    add(f, 4, "");
    idx_filter_pair_t p[2];
    p[0] = kv("lang", "en");
    expect(f, p, 1, (int64_t[]){1, 3}, 2);
    p[0] = kv("year", "2023");
    expect(f, p, 1, (int64_t[]){2, 3}, 2);
    p[0] = kv("draft", "true");
    expect(f, p, 1, (int64_t[]){1}, 1);
    p[0] = kv("lang", "en");
    p[1] = kv("year", "2023");
    expect(f, p, 2, (int64_t[]){3}, 1);
    p[1] = kv("year", "1999");
    expect(f, p, 2, NULL, 0);
    p[0] = kv("nokey", "en");
    expect(f, p, 1, NULL, 0);
    /* Values are compared whole: no prefix, no case folding. */
    p[0] = kv("lang", "e");
    expect(f, p, 1, NULL, 0);
    p[0] = kv("lang", "EN");
    expect(f, p, 1, NULL, 0);
    assert_true(idx_filter_bytes(f) > 0);
    idx_filter_free(&f);
    assert_null(f);
    idx_filter_free(NULL);
}

static void test_idx_filter_arrays_nested_and_escapes(void **state)
{
    (void)state;
    idx_filter_t *f;
    KBT_OK(idx_filter_new(&f), "new");
    add(f, 10, "{\"tags\":[\"a\",\"b\",\"a\"],\"n\":null,\"o\":{\"x\":\"y\"}}");
    add(f, 11, "{\"tags\":[\"b\"],\"q\":\"say \\\"hi\\\"\"}");
    idx_filter_pair_t p[1];
    p[0] = kv("tags", "a");
    expect(f, p, 1, (int64_t[]){10}, 1); /* listed once */
    p[0] = kv("tags", "b");
    expect(f, p, 1, (int64_t[]){10, 11}, 2);
    p[0] = kv("n", "null");
    expect(f, p, 1, NULL, 0);
    p[0] = kv("o", "{\"x\":\"y\"}");
    expect(f, p, 1, NULL, 0);
    p[0] = kv("x", "y");
    expect(f, p, 1, NULL, 0);
    p[0] = kv("q", "say \"hi\""); /* unescaped text */
    expect(f, p, 1, (int64_t[]){11}, 1);
    idx_filter_free(&f);
}

static void test_idx_filter_bad_json_refused(void **state)
{
    (void)state;
    idx_filter_t *f;
    KBT_OK(idx_filter_new(&f), "new");
    KBT_RC(idx_filter_add(f, 1, "[1,2]", 5), KB_EBADJSON, "array");
    KBT_RC(idx_filter_add(f, 1, "{\"a\":", 5), KB_EBADJSON, "truncated");
    idx_filter_free(&f);
}

static void test_idx_filter_many_labels_and_keys(void **state)
{
    (void)state;
    idx_filter_t *f;
    KBT_OK(idx_filter_new(&f), "new");
    /* Enough distinct pairs to grow the table several times. */
    char meta[128];
    for (int i = 1; i <= 5000; i++) {
        snprintf(meta, sizeof meta, "{\"mod7\":%d,\"id\":\"k%d\"}", i % 7, i);
        add(f, i, meta);
    }
    idx_filter_pair_t p[2] = {kv("mod7", "3"), kv("id", "k1000")};
    int64_t *got;
    size_t n;
    KBT_OK(idx_filter_match(f, p, 1, &got, &n), "match");
    KBT_U64(n, 714); /* i % 7 == 3 for i in 1..5000 */
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(got[i] % 7, 3);
        if (i)
            assert_true(got[i] > got[i - 1]);
    }
    free(got);
    p[0] = kv("mod7", "6");
    expect(f, p, 2, (int64_t[]){1000}, 1);
    p[0] = kv("mod7", "5");
    expect(f, p, 2, NULL, 0);
    idx_filter_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idx_filter_scalars_match_by_text),
        cmocka_unit_test(test_idx_filter_arrays_nested_and_escapes),
        cmocka_unit_test(test_idx_filter_bad_json_refused),
        cmocka_unit_test(test_idx_filter_many_labels_and_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
