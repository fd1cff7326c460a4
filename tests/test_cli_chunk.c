/* Tests of cli_chunk, the pure parts of `kbsync ingest` for file trees:
 * the chunker (sizes, boundaries, overlap, stability), the chunk hash, UTF-8
 * checks and iconv decoding, the HTML extractor and its source map, the
 * directory walk (real files in a temp dir) and the JSONL diagnosis. */
#include "kb_test.h"

#include <errno.h>

#include "cli_chunk.h"

/* cli_chunk_hash_hex("hello world") with {1000, 100, 0, 11, ""} */
#define KBT_PINNED_HASH "83e816effbb9500c46e6e3e32c3b6508"

/* ------------------------------------------------------------- helpers */

/* Deterministic prose: sentences of words (some multi-byte), paragraphs. */
static char *prose(size_t want, uint64_t seed, size_t *len)
{
    static const char *const words[] = {
        "leader", "replica", "version", "snapshot", "index",  "vector",
        "query",  "écrit",   "größe",   "日本語",   "emoji😀", "lag",
        "commit", "durable", "a",       "of",       "the",    "to"};
    size_t cap = want + 256, n = 0, nw = sizeof words / sizeof *words;
    char *s = malloc(cap);
    uint64_t x = seed * 6364136223846793005ull + 1442695040888963407ull;
    int sent = 0;
    while (n < want) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        const char *w = words[(x >> 33) % nw];
        n += (size_t)snprintf(s + n, cap - n, "%s", w);
        if ((x >> 20) % 9 == 0) {
            s[n++] = '.';
            sent++;
        }
        if (sent && (x >> 40) % 7 == 0 && s[n - 1] == '.') {
            n += (size_t)snprintf(s + n, cap - n, "\n\n");
            sent = 0;
        } else {
            s[n++] = ' ';
        }
    }
    s[n] = 0;
    *len = n;
    return s;
}

static int is_cont(const char *s, size_t i)
{
    return ((unsigned char)s[i] & 0xC0) == 0x80;
}

static int is_sp(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

/* Cuts s and checks what holds for every text: sizes, boundaries, trimmed
 * ends, progress, coverage, overlap. Returns the spans (2 per chunk). */
static size_t *cut_checked(const char *s, size_t n, size_t chunk,
                           size_t overlap, size_t *count)
{
    cli_chunker_t c;
    cli_chunker_init(&c, s, n, chunk, overlap);
    size_t cap = 64, k = 0, st, en;
    size_t *sp = malloc(cap * sizeof *sp);
    char *covered = calloc(n + 1, 1);
    while (cli_chunker_next(&c, &st, &en)) {
        if (2 * k + 2 > cap)
            sp = realloc(sp, (cap *= 2) * sizeof *sp);
        if (en <= st || en - st > chunk)
            fail_msg("chunk %zu is [%zu, %zu): empty or over %zu bytes", k, st,
                     en, chunk);
        if (is_cont(s, st) || (en < n && is_cont(s, en)))
            fail_msg("chunk %zu [%zu, %zu) splits a UTF-8 sequence", k, st, en);
        if (is_sp(s[st]) || is_sp(s[en - 1]))
            fail_msg("chunk %zu [%zu, %zu) is not trimmed", k, st, en);
        if (k && st <= sp[2 * k - 2])
            fail_msg("chunk %zu starts at %zu, not after chunk %zu (%zu)", k,
                     st, k - 1, sp[2 * k - 2]);
        if (k && st + overlap < sp[2 * k - 1])
            fail_msg("chunk %zu overlaps the one before by %zu > %zu bytes", k,
                     sp[2 * k - 1] - st, overlap);
        memset(covered + st, 1, en - st);
        sp[2 * k] = st;
        sp[2 * k + 1] = en;
        k++;
    }
    for (size_t i = 0; i < n; i++)
        if (!covered[i] && !is_sp(s[i]))
            fail_msg("byte %zu ('%c') is in no chunk", i, s[i]);
    free(covered);
    *count = k;
    return sp;
}

/* ------------------------------------------------------------- chunker */

static void test_cli_chunk_sizes_boundaries_coverage(void **state)
{
    (void)state;
    static const size_t cfg[][2] = {{1000, 100}, {200, 50}, {64, 31},
                                    {1000, 0},   {32, 15},  {4000, 1000}};
    for (uint64_t seed = 1; seed <= 6; seed++) {
        size_t n;
        char *s = prose(20000 + seed * 777, seed, &n);
        for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
            size_t k;
            free(cut_checked(s, n, cfg[c][0], cfg[c][1], &k));
            assert_true(k >= n / cfg[c][0]);
        }
        free(s);
    }
}

/* With overlap, each chunk repeats the end of the one before; without,
 * none does. */
static void test_cli_chunk_overlap(void **state)
{
    (void)state;
    size_t n, k;
    char *s = prose(30000, 7, &n);
    size_t *sp = cut_checked(s, n, 1000, 100, &k);
    assert_true(k > 20);
    for (size_t i = 1; i < k; i++) {
        size_t prev_end = sp[2 * i - 1], st = sp[2 * i];
        if (st >= prev_end)
            fail_msg("chunk %zu starts at %zu, at or after the end of chunk "
                     "%zu (%zu): no overlap",
                     i, st, i - 1, prev_end);
        /* it starts at a word: after white space */
        assert_true(is_sp(s[st - 1]));
    }
    free(sp);
    sp = cut_checked(s, n, 1000, 0, &k);
    for (size_t i = 1; i < k; i++)
        assert_true(sp[2 * i] >= sp[2 * i - 1]);
    free(sp);
    free(s);
}

/* Cuts prefer a paragraph break, then a sentence end, then a space. */
static void test_cli_chunk_prefers_paragraph_sentence_word(void **state)
{
    (void)state;
    char s[4096];
    /* paragraph A (612 B, several sentences), blank line, paragraph B */
    size_t n = 0;
    for (int i = 0; i < 34; i++)
        n += (size_t)sprintf(s + n, "Sentence %02d of A. ", i);
    size_t a_end = n - 1; /* without the trailing space */
    n += (size_t)sprintf(s + n, "\n\n");
    for (int i = 0; i < 30; i++)
        n += (size_t)sprintf(s + n, "Sentence %02d of B. ", i);
    cli_chunker_t c;
    size_t st, en;
    cli_chunker_init(&c, s, n, 1000, 100);
    assert_true(cli_chunker_next(&c, &st, &en));
    KBT_U64(st, 0);
    KBT_U64(en, a_end); /* at the paragraph, though sentences end later */

    /* one long paragraph: the cut follows a full stop */
    n = 0;
    for (int i = 0; i < 80; i++)
        n += (size_t)sprintf(s + n, "Word word word %02d. ", i);
    cli_chunker_init(&c, s, n, 1000, 100);
    assert_true(cli_chunker_next(&c, &st, &en));
    assert_int_equal(s[en - 1], '.');
    assert_true(en > 900);
    /* ... and the next chunk starts at a sentence, within the overlap */
    assert_true(cli_chunker_next(&c, &st, &en));
    assert_true(st >= 1000 - 100 - 20 && st < 1000);
    assert_int_equal(s[st - 2], '.');

    /* no sentence: the cut is at a space, never inside a word */
    n = 0;
    for (int i = 0; i < 300; i++)
        n += (size_t)sprintf(s + n, "w%03d ", i);
    cli_chunker_init(&c, s, n, 1000, 100);
    assert_true(cli_chunker_next(&c, &st, &en));
    assert_int_equal(s[en], ' ');
    assert_true(en > 990);
}

/* A text without spaces is cut at UTF-8 character boundaries. */
static void test_cli_chunk_never_splits_utf8(void **state)
{
    (void)state;
    static const char *const unit[] = {"é", "日", "😀", "aé😀日"};
    for (size_t u = 0; u < 4; u++) {
        size_t ul = strlen(unit[u]), n = 0, k;
        char *s = malloc(5000 * ul + 1);
        while (n + ul <= 5000 * ul - ul)
            memcpy(s + n, unit[u], ul), n += ul;
        s[n] = 0;
        for (size_t chunk = 32; chunk <= 1000; chunk += 121) {
            size_t *sp = cut_checked(s, n, chunk, chunk / 4, &k);
            for (size_t i = 0; i + 1 < k; i++) /* a full window, less <= 3 */
                assert_true(sp[2 * i + 1] - sp[2 * i] + 3 >= chunk);
            free(sp);
        }
        free(s);
    }
}

/* An edit near the end of a file leaves the chunks before it as they were
 * (what --resume relies on to send only changed chunks); the same text
 * always gives the same chunks. */
static void test_cli_chunk_stable_before_an_edit(void **state)
{
    (void)state;
    size_t n, k1, k2, k3;
    char *s = prose(20000, 11, &n);
    size_t *a = cut_checked(s, n, 1000, 100, &k1);
    size_t *b = cut_checked(s, n, 1000, 100, &k2);
    KBT_U64(k1, k2);
    assert_memory_equal(a, b, 2 * k1 * sizeof *a);
    memcpy(s + 15000, "CHANGED", 7);
    size_t *c = cut_checked(s, n, 1000, 100, &k3);
    size_t same = 0;
    while (same < k1 && same < k3 && a[2 * same] == c[2 * same] &&
           a[2 * same + 1] == c[2 * same + 1])
        same++;
    /* every chunk whose window ends before the edit is unchanged */
    size_t want = 0;
    while (want < k1 && a[2 * want] + 1000 < 15000)
        want++;
    assert_true(same >= want);
    assert_true(want >= 10);
    free(a);
    free(b);
    free(c);
    free(s);
}

static void test_cli_chunk_blank_and_tiny(void **state)
{
    (void)state;
    cli_chunker_t c;
    size_t st, en;
    cli_chunker_init(&c, "", 0, 1000, 100);
    assert_false(cli_chunker_next(&c, &st, &en));
    cli_chunker_init(&c, " \n\n\t ", 5, 1000, 100);
    assert_false(cli_chunker_next(&c, &st, &en));
    cli_chunker_init(&c, "\n  hello world \n", 16, 1000, 100);
    assert_true(cli_chunker_next(&c, &st, &en));
    KBT_U64(st, 3);
    KBT_U64(en, 14);
    assert_false(cli_chunker_next(&c, &st, &en));
}

/* ---------------------------------------------------------------- hash */

static void test_cli_chunk_hash(void **state)
{
    (void)state;
    cli_chunk_params_t p = {1000, 100, 0, 11, ""};
    char h1[33], h2[33];
    cli_chunk_hash_hex("hello world", 11, &p, h1);
    cli_chunk_hash_hex("hello world", 11, &p, h2);
    assert_string_equal(h1, h2);
    assert_int_equal(strlen(h1), 32);
    /* the value is part of what is stored: it must not change by accident
     * (a change makes every --resume rewrite everything once) */
    assert_string_equal(h1, KBT_PINNED_HASH);
    cli_chunk_hash_hex("hello worle", 11, &p, h2);
    assert_string_not_equal(h1, h2);
    /* the binary hash is what the hex spells, as printf would write it */
    uint64_t bin[2];
    cli_chunk_hash("hello world", 11, &p, bin);
    char want[33];
    const uint64_t vals[][2] = {{bin[0], bin[1]},
                                {0, 1},
                                {0xf00000000000000full, UINT64_MAX},
                                {0x0123456789abcdefull, 0xfedcba9876543210ull}};
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) {
        snprintf(want, sizeof want, "%016llx%016llx",
                 (unsigned long long)vals[i][0],
                 (unsigned long long)vals[i][1]);
        cli_hash_hex(vals[i], h2);
        assert_string_equal(h2, want);
    }
    cli_hash_hex(bin, h2);
    assert_string_equal(h2, KBT_PINNED_HASH);
    cli_chunk_params_t q[] = {{999, 100, 0, 11, ""},
                              {1000, 99, 0, 11, ""},
                              {1000, 100, 1, 11, ""},
                              {1000, 100, 0, 12, ""},
                              {1000, 100, 0, 11, "model-x"}};
    for (size_t i = 0; i < sizeof q / sizeof *q; i++) {
        cli_chunk_hash_hex("hello world", 11, &q[i], h2);
        if (!strcmp(h1, h2))
            fail_msg("params %zu do not change the hash", i);
    }
    /* one-byte and one-bit changes of a 1000-byte text, and every length
     * of a prefix: no two of these 64-bit halves collide */
    size_t n;
    char *s = prose(1000, 3, &n);
    size_t cnt = 0, cap = 4 * n + 8 * n + 16;
    uint64_t *lo = malloc(cap * sizeof *lo), h[2];
    for (size_t i = 0; i < n; i++) {
        char keep = s[i];
        for (int b = 0; b < 8; b++) {
            s[i] = (char)(keep ^ (1 << b));
            cli_hash128(s, n, 42, h);
            lo[cnt++] = h[0];
        }
        s[i] = keep;
        cli_hash128(s, i, 42, h);
        lo[cnt++] = h[1];
    }
    cli_hash128(s, n, 42, h);
    lo[cnt++] = h[0];
    for (size_t i = 0; i < cnt; i++)
        for (size_t j = i + 1; j < cnt; j++)
            if (lo[i] == lo[j])
                fail_msg("hash collision between variants %zu and %zu", i, j);
    free(lo);
    free(s);
}

/* ---------------------------------------------------------- utf-8, iconv */

static void test_cli_chunk_utf8_check(void **state)
{
    (void)state;
    size_t bad;
    const char *why;
    static const char ok[] = "plain ascii, é, 日本, 😀, \xF4\x8F\xBF\xBF";
    assert_int_equal(cli_utf8_check(ok, strlen(ok), &bad, &why), 0);
    static const struct {
        const char *s;
        size_t n, bad;
        const char *why;
    } no[] = {
        {"ab\xC0\x80", 4, 2, "invalid UTF-8"},               /* overlong */
        {"abcdefghij\xED\xA0\x80", 13, 10, "invalid UTF-8"}, /* surrogate */
        {"\xF4\x90\x80\x80", 4, 0, "invalid UTF-8"},         /* > U+10FFFF */
        {"x\xF5\x80\x80\x80", 5, 1, "invalid UTF-8"},
        {"abc\xE6\x97", 5, 3, "invalid UTF-8"}, /* cut short */
        {"\x80", 1, 0, "invalid UTF-8"},        /* lone continuation */
        {"caf\xE9!", 5, 3, "invalid UTF-8"},    /* latin-1 */
        {"0123456789\0x", 12, 10, "NUL byte"},
    };
    for (size_t i = 0; i < sizeof no / sizeof *no; i++) {
        bad = 999;
        assert_int_equal(cli_utf8_check(no[i].s, no[i].n, &bad, &why),
                         KB_EINVAL);
        KBT_U64(bad, no[i].bad);
        assert_string_equal(why, no[i].why);
    }
    uint64_t line, col;
    const char *t = "ab\ncd\n\nefg";
    cli_line_col(t, 0, &line, &col);
    KBT_U64(line, 1);
    KBT_U64(col, 1);
    cli_line_col(t, 4, &line, &col);
    KBT_U64(line, 2);
    KBT_U64(col, 2);
    cli_line_col(t, 9, &line, &col);
    KBT_U64(line, 4);
    KBT_U64(col, 3);
}

static void test_cli_chunk_decode(void **state)
{
    (void)state;
    char *out = NULL, err[256] = "";
    size_t n, bad = 0;
    KBT_OK(cli_decode("latin1", "caf\xE9 \xFF", 6, &out, &n, &bad, err,
                      sizeof err),
           err);
    assert_string_equal(out, "café ÿ");
    KBT_U64(n, strlen("café ÿ"));
    free(out);
    KBT_OK(cli_decode("UTF-16LE", "h\0i\0", 4, &out, &n, &bad, err, sizeof err),
           err);
    assert_string_equal(out, "hi");
    free(out);
    /* a lone low surrogate is no UTF-16: the offset of its first byte */
    assert_int_equal(cli_decode("UTF-16LE", "h\0\x00\xDCx\0", 6, &out, &n, &bad,
                                err, sizeof err),
                     KB_EINVAL);
    KBT_U64(bad, 2);
    KBT_CONTAINS(err, "UTF-16LE");
    assert_int_equal(cli_encoding_ok("latin1"), 0);
    assert_int_equal(cli_encoding_ok("no-such-encoding"), KB_EINVAL);
    assert_int_equal(
        cli_decode("no-such-encoding", "x", 1, &out, &n, &bad, err, sizeof err),
        KB_EINVAL);
    KBT_CONTAINS(err, "no-such-encoding");
}

/* ---------------------------------------------------------------- HTML */

static void test_cli_chunk_html_text_and_entities(void **state)
{
    (void)state;
    static const char in[] =
        "<!DOCTYPE html><html><head><title>T &amp; U</title>"
        "<style>p{color:red}</style>"
        "<script>if (a<b) x=\"</p>\";</script></head>"
        "<body><h1>Head</h1><p class=\"a>b\">One&nbsp;&nbsp;two "
        "&#233;&#xE9; &bogus; &#0; a < b</p><!-- <p>gone</p> -->"
        "<p>x<br>y</p><pre>l1\nl2</pre>"
        "<table><tr><td>c1</td><td>c2</td></tr></table></body></html>";
    cli_text_t t;
    KBT_OK(cli_html_extract(in, strlen(in), &t), "");
    assert_string_equal(t.s, "T & U\n\nHead\n\nOne two éé &bogus; \xEF\xBF\xBD"
                             " a < b\n\nx\ny\n\nl1\nl2\n\nc1 c2");
    KBT_U64(t.n, strlen(t.s));
    size_t bad;
    const char *why;
    assert_int_equal(cli_utf8_check(t.s, t.n, &bad, &why), 0);

    /* the source map: words map to themselves, references to their span */
    const char *h = strstr(t.s, "Head");
    size_t o = (size_t)(h - t.s);
    KBT_U64(cli_text_src_start(&t, o), (size_t)(strstr(in, "Head") - in));
    KBT_U64(cli_text_src_end(&t, o + 4), (size_t)(strstr(in, "Head") - in) + 4);
    o = (size_t)(strstr(t.s, "éé") - t.s);
    size_t e1 = (size_t)(strstr(in, "&#233;") - in);
    KBT_U64(cli_text_src_start(&t, o), e1);
    KBT_U64(cli_text_src_end(&t, o + 4), e1 + strlen("&#233;&#xE9;"));
    o = (size_t)(strstr(t.s, "c2") - t.s);
    KBT_U64(cli_text_src_end(&t, o + 2), (size_t)(strstr(in, "c2") - in) + 2);
    cli_text_free(&t);

    /* no markup at all; an unclosed tag or comment eats the rest */
    KBT_OK(cli_html_extract("just  text", 10, &t), "");
    assert_string_equal(t.s, "just text");
    cli_text_free(&t);
    KBT_OK(cli_html_extract("a<!-- never closed", 18, &t), "");
    assert_string_equal(t.s, "a");
    cli_text_free(&t);
    KBT_OK(cli_html_extract("", 0, &t), "");
    assert_string_equal(t.s, "");
    KBT_U64(t.n, 0);
    cli_text_free(&t);
}

/* ------------------------------------------------------------------ walk */

static void put_file(const char *dir, const char *name, const char *text)
{
    char p[512];
    kbt_path(p, sizeof p, dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_cli_chunk_walk(void **state)
{
    (void)state;
    char d[256], p[512], q[512], err[512] = "";
    kbt_tmpdir(d, sizeof d, "walk");
    kbt_path(p, sizeof p, d, "sub");
    assert_int_equal(mkdir(p, 0755), 0);
    kbt_path(p, sizeof p, d, "sub/deeper");
    assert_int_equal(mkdir(p, 0755), 0);
    kbt_path(p, sizeof p, d, ".git");
    assert_int_equal(mkdir(p, 0755), 0);
    put_file(d, "b.md", "b");
    put_file(d, "a.TXT", "aa");
    put_file(d, "sub.txt", "sub file");
    put_file(d, "page.HTM", "<p>x</p>");
    put_file(d, "data.jsonl", "{}");
    put_file(d, "image.png", "png");
    put_file(d, ".hidden.txt", "h");
    put_file(d, ".git/config.txt", "g");
    put_file(d, "sub/c.markdown", "c");
    put_file(d, "sub/deeper/d.html", "<b>d</b>");
    kbt_path(p, sizeof p, d, "sub/deeper");
    kbt_path(q, sizeof q, d, "loop"); /* a link to a directory: skipped */
    assert_int_equal(symlink(p, q), 0);
    kbt_path(p, sizeof p, d, "b.md");
    kbt_path(q, sizeof q, d, "link.txt"); /* a link to a file: followed */
    assert_int_equal(symlink(p, q), 0);
    kbt_path(q, sizeof q, d, "dangling.txt");
    assert_int_equal(symlink("/nonexistent/x", q), 0);

    cli_walk_t w = {0};
    KBT_OK(cli_walk_arg(&w, d, err, sizeof err), err);
    static const char *const rel[] = {
        "a.TXT",   "b.md",           "link.txt",         "page.HTM",
        "sub.txt", "sub/c.markdown", "sub/deeper/d.html"};
    static const int kind[] = {CLI_KIND_TEXT, CLI_KIND_TEXT, CLI_KIND_TEXT,
                               CLI_KIND_HTML, CLI_KIND_TEXT, CLI_KIND_TEXT,
                               CLI_KIND_HTML};
    assert_int_equal(w.n, 7);
    for (size_t i = 0; i < w.n; i++) {
        assert_string_equal(w.files[i].rel, rel[i]);
        assert_int_equal(w.files[i].kind, kind[i]);
        kbt_path(p, sizeof p, d, rel[i]);
        assert_string_equal(w.files[i].path, p);
    }
    KBT_U64(w.total_bytes, 2 + 1 + 1 + 8 + 8 + 1 + 8);
    /* each file's stat, for the hash cache; a link's is its target's */
    for (size_t i = 0; i < w.n; i++) {
        struct stat st;
        kbt_path(p, sizeof p, d, rel[i]);
        assert_int_equal(stat(p, &st), 0);
        KBT_U64(w.files[i].dev, (uint64_t)st.st_dev);
        KBT_U64(w.files[i].ino, (uint64_t)st.st_ino);
        KBT_U64(w.files[i].size, (uint64_t)st.st_size);
        KBT_U64((uint64_t)w.files[i].mtime_ns,
                (uint64_t)st.st_mtim.tv_sec * 1000000000u +
                    (uint64_t)st.st_mtim.tv_nsec);
        KBT_U64((uint64_t)w.files[i].ctime_ns,
                (uint64_t)st.st_ctim.tv_sec * 1000000000u +
                    (uint64_t)st.st_ctim.tv_nsec);
    }
    KBT_U64(w.files[2].ino, w.files[1].ino); /* link.txt -> b.md */
    KBT_OK(cli_walk_check_unique(&w, err, sizeof err), err);

    /* a file named on the command line: its base name; any extension */
    kbt_path(p, sizeof p, d, "image.png");
    KBT_OK(cli_walk_arg(&w, p, err, sizeof err), err);
    assert_string_equal(w.files[7].rel, "image.png");
    assert_int_equal(w.files[7].kind, CLI_KIND_TEXT);
    kbt_path(p, sizeof p, d, "data.jsonl");
    KBT_OK(cli_walk_arg(&w, p, err, sizeof err), err);
    assert_int_equal(w.files[8].kind, CLI_KIND_JSONL);
    KBT_OK(cli_walk_arg(&w, "-", err, sizeof err), err);
    assert_int_equal(w.files[9].kind, CLI_KIND_JSONL);
    KBT_U64(w.files[9].ino, 0); /* standard input: never cached */
    KBT_OK(cli_walk_check_unique(&w, err, sizeof err), err);
    /* the same ids twice: refused, naming both */
    kbt_path(p, sizeof p, d, "sub.txt");
    KBT_OK(cli_walk_arg(&w, p, err, sizeof err), err);
    assert_int_equal(cli_walk_check_unique(&w, err, sizeof err), KB_EINVAL);
    KBT_CONTAINS(err, "sub.txt#N");
    KBT_CONTAINS(err, "--id-prefix");
    size_t n = w.n;
    kbt_path(p, sizeof p, d, "no-such-dir");
    assert_int_equal(cli_walk_arg(&w, p, err, sizeof err), -ENOENT);
    KBT_CONTAINS(err, "no-such-dir");
    KBT_U64(w.n, n);
    cli_walk_free(&w);

    /* a trailing slash on the root changes nothing */
    snprintf(p, sizeof p, "%s/sub/", d);
    KBT_OK(cli_walk_arg(&w, p, err, sizeof err), err);
    assert_int_equal(w.n, 2);
    assert_string_equal(w.files[0].rel, "c.markdown");
    assert_string_equal(w.files[1].rel, "deeper/d.html");
    snprintf(q, sizeof q, "%s/sub/c.markdown", d);
    assert_string_equal(w.files[0].path, q);
    cli_walk_free(&w);
    kbt_rmrf(d);
}

/* ----------------------------------------------------------------- JSONL */

static void test_cli_chunk_jsonl_diag(void **state)
{
    (void)state;
    static const struct {
        const char *line, *field, *why;
        uint64_t col;
    } bad[] = {
        {"{\"id\": \"b\", \"text\": 12}", "text",
         "must be a string, not a number", 21},
        {"{\"id\": \"c\", \"embedding\": [1, \"x\"]}", "embedding[1]",
         "must be a number, not a string", 30},
        {"{\"id\": \"d\", \"txt\": \"x\"}", "txt", "unknown key", 13},
        {"{\"id\": \"e\", \"text\": \"open}", "text", "not closed", 21},
        {"{\"text\": \"no id\"}", "id", "missing", 1},
        {"{\"id\": 1.5}", "id", "fraction", 8},
        {"{\"id\": 123456789012345678901234}", "id", "beyond 64 bits", 8},
        {"{\"id\": \"h\", \"metadata\": [1]}", "metadata",
         "an object or null, not an array", 25},
        {"{\"id\": \"i\"} x", "record", "trailing", 13},
        {"[1, 2]", "record", "a JSON object, not an array", 1},
        {"{\"id\": \"j\", \"id\": \"k\"}", "id", "duplicate", 13},
        {"{\"id\": \"k\", \"metadata\": {\"a\": tru}}", "metadata",
         "invalid value", 31},
        {"{\"id\": \"l\", \"text\": \"a\\qb\"}", "text", "invalid escape", 23},
        {"{\"id\": \"m\" \"text\": \"x\"}", "id", "expected ','", 12},
        {"{\"id\": \"n\", \"embedding\": [1,]}", "embedding[1]",
         "invalid value", 29},
        {"{\"id\": \"o\", \"text\": \"\xff\"}", "text", "invalid UTF-8", 22},
        {"{\"id\": \"p\", \"embedding\": [1e]}", "embedding[0]", "exponent",
         27},
    };
    cli_json_diag_t d;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (!cli_jsonl_diag(bad[i].line, strlen(bad[i].line), &d))
            fail_msg("line %zu (%s): no problem found", i, bad[i].line);
        if (strcmp(d.field, bad[i].field) || !strstr(d.why, bad[i].why) ||
            d.col != bad[i].col)
            fail_msg("line %zu (%s): got %llu: %s: %s; wanted %llu: %s: ...%s",
                     i, bad[i].line, (unsigned long long)d.col, d.field, d.why,
                     (unsigned long long)bad[i].col, bad[i].field, bad[i].why);
    }
    static const char *const good[] = {
        "{\"id\": \"a\"}",
        "  {\"id\": -12, \"text\": \"\\u00e9\\n\", \"embedding\": [0.5, -1e-3, "
        "2E+2], "
        "\"metadata\": {\"k\": [1, {\"x\": null}], \"b\": true}}  ",
        "{\"metadata\": null, \"id\": \"z\", \"embedding\": []}"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        if (cli_jsonl_diag(good[i], strlen(good[i]), &d))
            fail_msg("valid line %zu flagged: %llu: %s: %s", i,
                     (unsigned long long)d.col, d.field, d.why);
    const char *l = "{\"id\": \"x\", \"embedding\": [], \"text\": \"t\"}";
    KBT_U64(cli_json_value_col(l, strlen(l), "embedding"), 26);
    KBT_U64(cli_json_value_col(l, strlen(l), "text"), 38);
    KBT_U64(cli_json_value_col(l, strlen(l), "metadata"), 0);
}

static void test_cli_chunk_json_str(void **state)
{
    (void)state;
    char b[64];
    size_t n = 0;
    assert_int_equal(cli_json_str(b, sizeof b, &n, "a\"b\\c\n\x01é", 9), 0);
    assert_string_equal(b, "\"a\\\"b\\\\c\\u000a\\u0001é\"");
    KBT_U64(n, strlen(b));
    n = 0;
    assert_int_equal(cli_json_str(b, 8, &n, "0123456789", 10), -1);
    assert_true(strlen(b) < 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_chunk_sizes_boundaries_coverage),
        cmocka_unit_test(test_cli_chunk_overlap),
        cmocka_unit_test(test_cli_chunk_prefers_paragraph_sentence_word),
        cmocka_unit_test(test_cli_chunk_never_splits_utf8),
        cmocka_unit_test(test_cli_chunk_stable_before_an_edit),
        cmocka_unit_test(test_cli_chunk_blank_and_tiny),
        cmocka_unit_test(test_cli_chunk_hash),
        cmocka_unit_test(test_cli_chunk_utf8_check),
        cmocka_unit_test(test_cli_chunk_decode),
        cmocka_unit_test(test_cli_chunk_html_text_and_entities),
        cmocka_unit_test(test_cli_chunk_walk),
        cmocka_unit_test(test_cli_chunk_jsonl_diag),
        cmocka_unit_test(test_cli_chunk_json_str),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
