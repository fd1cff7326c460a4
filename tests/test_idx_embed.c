/* test_idx_embed: the built-in lexical embedder of indexer/include/idx_embed.h. In:
 * short texts. Out: pass/fail on determinism, unit norm, the zero vector
 * for word-less text, case folding, word splitting, and that texts sharing
 * words are closer than unrelated ones, and that the vectors are the same
 * bits as the first version's. Pure function: no state. */
#include "kb_test.h"

#include <ctype.h>

#include "idx_embed.h"
#include "kb_err.h"

#define DIM 64

static void embed(const char *text, float *out, uint32_t dim)
{
    int rc = idx_embed_text(text, strlen(text), out, dim);
    if (rc)
        fail_msg("idx_embed_text(\"%.40s\", dim %u) = %d (%s)", text, dim, rc,
                 kb_errname(rc));
}

static double norm(const float *x, uint32_t dim)
{
    return sqrt(kbt_dot(x, x, dim));
}

static double sim(const char *a, const char *b)
{
    float x[DIM], y[DIM];
    embed(a, x, DIM);
    embed(b, y, DIM);
    return kbt_dot(x, y, DIM);
}

static void test_idx_embed_deterministic(void **state)
{
    (void)state;
    float a[DIM], b[DIM];
    const char *t = "Replicas apply the leader's log in LSN order.";
    embed(t, a, DIM);
    /* Garbage in the output buffer must not leak into the result. */
    for (int i = 0; i < DIM; i++)
        b[i] = 1e30f;
    embed(t, b, DIM);
    assert_memory_equal(a, b, sizeof a);
    /* Not trivially zero. */
    KBT_NEAR(norm(a, DIM), 1.0, 1e-5);
}

static void test_idx_embed_unit_norm(void **state)
{
    (void)state;
    static const char *texts[] = {
        "a",
        "x y z",
        "The quick brown fox jumps over the lazy dog",
        "1234 5678",
        "caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9",
        "one-word,another;third...fourth!!"};
    static const uint32_t dims[] = {1, 2, 8, 64, 384};
    float out[384];
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
            embed(texts[i], out, dims[d]);
            for (uint32_t j = 0; j < dims[d]; j++)
                assert_true(isfinite(out[j]));
            KBT_NEAR(norm(out, dims[d]), 1.0, 1e-5);
        }
}

static void test_idx_embed_no_words_is_zero(void **state)
{
    (void)state;
    static const char *texts[] = {"", " ", "  ,.;:!?-_()[]{}\t\n", "\"'\\/"};
    float out[DIM];
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        for (int j = 0; j < DIM; j++)
            out[j] = 7.0f; /* must be overwritten */
        embed(texts[i], out, DIM);
        for (int j = 0; j < DIM; j++)
            if (out[j] != 0.0f)
                fail_msg("text \"%s\": out[%d] = %g, wanted 0", texts[i], j,
                         out[j]);
    }
}

static void test_idx_embed_case_insensitive(void **state)
{
    (void)state;
    float a[DIM], b[DIM], c[DIM];
    embed("Hello World FAISS", a, DIM);
    embed("hello world faiss", b, DIM);
    embed("HELLO wOrLd FaIsS", c, DIM);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(a, c, sizeof a);
}

static void test_idx_embed_words_split_on_punctuation(void **state)
{
    (void)state;
    float a[DIM], b[DIM], c[DIM];
    embed("lmdb, faiss; zeromq!", a, DIM);
    embed("lmdb faiss zeromq", b, DIM);
    embed("zeromq lmdb faiss", c, DIM); /* a bag of words: order is free */
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(a, c, sizeof a);
    /* ...but joining words changes the features. */
    embed("lmdbfaisszeromq", c, DIM);
    assert_true(memcmp(a, c, sizeof a) != 0);
}

static void test_idx_embed_honours_len(void **state)
{
    (void)state;
    float a[DIM], b[DIM];
    const char *t = "vector index";
    assert_int_equal(idx_embed_text(t, 6, a, DIM), 0); /* "vector" */
    embed("vector", b, DIM);
    assert_memory_equal(a, b, sizeof a);
    /* len 0 is no words, whatever the pointer holds. */
    assert_int_equal(idx_embed_text(t, 0, a, DIM), 0);
    for (int i = 0; i < DIM; i++)
        assert_true(a[i] == 0.0f);
}

static void test_idx_embed_long_word_is_cut(void **state)
{
    (void)state;
    /* Words are cut at 64 bytes: a 5000-byte word embeds like its first 64
     * bytes (and does not overrun anything on the way). */
    char *w64 = kbt_repeat('q', 64);
    float a[DIM], b[DIM];
    embed(w64, a, DIM);
    KBT_NEAR(norm(a, DIM), 1.0, 1e-5);
    static const size_t lens[] = {65, 100, 5000};
    for (size_t i = 0; i < 3; i++) {
        char *w = kbt_repeat('q', lens[i]);
        embed(w, b, DIM);
        if (memcmp(a, b, sizeof a))
            fail_msg("a %zu-byte word embeds unlike its first 64 bytes",
                     lens[i]);
        free(w);
    }
    /* Below the cut, length matters. */
    w64[63] = 0;
    embed(w64, b, DIM);
    assert_true(memcmp(a, b, sizeof a) != 0);
    free(w64);
}

static void test_idx_embed_shared_words_score_higher(void **state)
{
    (void)state;
    const char *q = "the leader commits writes to the replication log";
    double self = sim(q, q);
    double close = sim(q, "replication log writes from the leader");
    double partial = sim(q, "the commit log of a database");
    double far = sim(q, "banana smoothie recipe with yogurt");
    KBT_NEAR(self, 1.0, 1e-5);
    if (!(close > partial && partial > far))
        fail_msg("want close %.3f > partial %.3f > unrelated %.3f", close,
                 partial, far);
    assert_true(close > 0.5);
    assert_true(far < 0.35);
    /* Word pieces count too: an inflected form is closer than nothing. */
    double piece = sim("replication", "replicated");
    double none = sim("replication", "banana");
    if (!(piece > none + 0.2))
        fail_msg("trigram overlap: replicated %.3f vs banana %.3f", piece,
                 none);
}

static void test_idx_embed_dim_zero_is_einval(void **state)
{
    (void)state;
    float sentinel = 3.5f;
    assert_int_equal(idx_embed_text("hello", 5, &sentinel, 0), KB_EINVAL);
    assert_true(sentinel == 3.5f); /* nothing written */
}

static void test_idx_embed_dim_one(void **state)
{
    (void)state;
    float x;
    embed("anything at all", &x, 1);
    assert_true(x == 1.0f || x == -1.0f);
}

/* FNV-1a over the bits of a vector */
static uint64_t fingerprint(const float *v, uint32_t dim)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < dim; i++) {
        uint32_t u;
        memcpy(&u, &v[i], sizeof u);
        for (int b = 0; b < 4; b++)
            h = (h ^ ((u >> (8 * b)) & 0xff)) * 0x100000001b3ull;
    }
    return h;
}

/* The first version of the embedder, kept as the reference: per feature
 * an FNV-1a hash (seed 1 words, 2 trigrams of "^word$") with splitmix64's
 * finaliser, bucket = low 32 bits mod dim, sign = top bit; then
 * sign * log1pf(|x|) per bucket and L2 normalisation. */
static uint64_t ref_hash(uint64_t seed, const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    return h ^ (h >> 31);
}

static void ref_add(float *out, uint32_t dim, uint64_t h, float w)
{
    if (h >> 63)
        out[(h & 0xffffffffu) % dim] -= w;
    else
        out[(h & 0xffffffffu) % dim] += w;
}

static void ref_embed(const char *text, float *out, uint32_t dim)
{
    const unsigned char *t = (const unsigned char *)text;
    size_t len = strlen(text), i = 0;
    memset(out, 0, sizeof(float) * dim);
    while (i < len) {
        unsigned char w[66];
        size_t n = 0;
        while (i < len && !(isalnum(t[i]) || t[i] >= 0x80))
            i++;
        while (i < len && (isalnum(t[i]) || t[i] >= 0x80)) {
            if (n < 64)
                w[1 + n++] = (unsigned char)tolower(t[i]);
            i++;
        }
        if (!n)
            continue;
        w[0] = '^';
        w[n + 1] = '$';
        ref_add(out, dim, ref_hash(1, w + 1, n), 1.0f);
        for (size_t j = 0; j < n; j++)
            ref_add(out, dim, ref_hash(2, w + j, 3), 0.5f);
    }
    double norm = 0;
    for (uint32_t j = 0; j < dim; j++) {
        out[j] = out[j] < 0 ? -log1pf(-out[j]) : log1pf(out[j]);
        norm += (double)out[j] * out[j];
    }
    for (uint32_t j = 0; norm > 0 && j < dim; j++)
        out[j] *= (float)(1.0 / sqrt(norm));
}

/* Knowledge bases hold vectors embedded by earlier versions and are queried
 * with vectors embedded now: a faster embedder must give the same bits as
 * the reference above, on texts of every length, repeated words (buckets
 * beyond the table of small values the embedder keeps) and odd dims. */
static void test_idx_embed_same_bits_as_reference(void **state)
{
    (void)state;
    static const char *words[] = {"vector", "LSN", "replica", "the", "\xc3\xa9t\xc3\xa9",
                                  "a", "Staleness", "42", "x7y", "query"};
    static char text[8192];
    float got[384], want[384];
    const uint32_t dims[] = {384, 7, 1, 100};
    uint64_t seed = 12345;
    for (int round = 0; round < 200; round++) {
        size_t n = 0;
        int nw = round < 190 ? round % 60 : 1000; /* the last: one word */
        for (int i = 0; i < nw && n + 16 < sizeof text; i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            const char *w = round < 190 ? words[(seed >> 33) % 10] : "vector";
            n += (size_t)snprintf(text + n, sizeof text - n, "%s%s", w,
                                  (seed >> 40) % 3 ? " " : ", ");
        }
        text[n] = 0;
        uint32_t dim = dims[round % 4];
        if (!n) /* no words: refused, nothing to compare */
            continue;
        embed(text, got, dim);
        ref_embed(text, want, dim);
        if (memcmp(got, want, sizeof(float) * dim))
            fail_msg("round %d, dim %u: \"%.60s\" embeds differently from "
                     "the reference", round, dim, text);
    }
}

/* The same, pinned: fingerprints of the first version's vectors (glibc's
 * log1pf on x86-64, where they were taken). */
static void test_idx_embed_same_bits_as_before(void **state)
{
#if !(defined(__x86_64__) && defined(__GLIBC__))
    skip();
#endif
    (void)state;
    static char rep[7 * 700 + 1];
    for (int i = 0; i < 700; i++)
        memcpy(rep + 7 * i, "vector ", 7);
    const char *t = "Replicas apply the leader's log in LSN order; a query "
                    "node answers with its version and staleness. "
                    "\xc3\x9cNICODE w\xc3\xb6rds 42x";
    float v[384];
    embed(t, v, 384);
    assert_int_equal(fingerprint(v, 384), 0x86b8ccca9d1976f0ull);
    embed(rep, v, 384);
    assert_int_equal(fingerprint(v, 384), 0xb6d738f08da9bc51ull);
    embed(t, v, 7);
    assert_int_equal(fingerprint(v, 7), 0xf79939bcc6a184c2ull);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idx_embed_deterministic),
        cmocka_unit_test(test_idx_embed_unit_norm),
        cmocka_unit_test(test_idx_embed_no_words_is_zero),
        cmocka_unit_test(test_idx_embed_case_insensitive),
        cmocka_unit_test(test_idx_embed_words_split_on_punctuation),
        cmocka_unit_test(test_idx_embed_honours_len),
        cmocka_unit_test(test_idx_embed_long_word_is_cut),
        cmocka_unit_test(test_idx_embed_shared_words_score_higher),
        cmocka_unit_test(test_idx_embed_dim_zero_is_einval),
        cmocka_unit_test(test_idx_embed_dim_one),
        cmocka_unit_test(test_idx_embed_same_bits_as_reference),
        cmocka_unit_test(test_idx_embed_same_bits_as_before),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
