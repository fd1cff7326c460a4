/* test_kb_json: checks kb_json (common/kb_json.cpp) on real files in a temp
 * dir and on standard input: good records, blank lines and CRLF, every
 * documented error with its exact "FILE:LINE: reason" and the continuation
 * after it, records across chunk boundaries (kb_jsonl_open_chunk), too long lines,
 * and kb_json_parse_floats / kb_json_check_object on good and bad input. */
#include "kb_json.h"
#include "kb_test.h"

#include <errno.h>
#include <float.h>
#include <sys/wait.h>

static char g_dir[256]; /* per-run temp dir, made by setup_dir() */

static int setup_dir(void **state)
{
    (void)state;
    kbt_tmpdir(g_dir, sizeof g_dir, "json");
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    kbt_rmrf(g_dir);
    return 0;
}

/* Writes data[0..len) to g_dir/name; the path goes to path[0..512). */
static void write_file(char *path, const char *name, const char *data,
                       size_t len)
{
    kbt_path(path, 512, g_dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void write_str(char *path, const char *name, const char *data)
{
    write_file(path, name, data, strlen(data));
}

/* A growable string for building test files. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf_t;

static void sb_add(sbuf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf_t *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL,
                          b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        assert_true(n >= 0);
        if (b->p && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
}

/* Fails unless the record's id is exactly `id`. */
static void assert_id(const kb_jsonl_rec_t *rec, const char *id)
{
    if (rec->id_len != strlen(id) || memcmp(rec->id, id, rec->id_len) != 0)
        fail_msg("id \"%.*s\", wanted \"%s\"", (int)rec->id_len, rec->id, id);
}

static void assert_mem(const char *got, size_t got_len, const char *want)
{
    if (got == NULL || got_len != strlen(want) || memcmp(got, want, got_len))
        fail_msg("got \"%.*s\" (%zu bytes), wanted \"%s\"", (int)got_len,
                 got ? got : "(null)", got_len, want);
}

/* Fails unless a and b are the same float, bit for bit. */
static void assert_float_same(float a, float b, const char *what)
{
    if (memcmp(&a, &b, sizeof a) != 0)
        fail_msg("%s: got %a (%.9g), wanted %a (%.9g)", what, (double)a,
                 (double)a, (double)b, (double)b);
}

/* Fails unless the reader's error is exactly "PATH:LINE: reason". */
static void assert_err(const kb_jsonl_t *r, const char *path, int line,
                       const char *reason)
{
    char want[1024];
    snprintf(want, sizeof want, "%s:%d: %s", path, line, reason);
    assert_string_equal(kb_jsonl_error(r), want);
}

/* Fails unless the reader's error starts with "PATH:LINE: prefix". */
static void assert_err_prefix(const kb_jsonl_t *r, const char *path, int line,
                              const char *prefix)
{
    char want[1024];
    snprintf(want, sizeof want, "%s:%d: %s", path, line, prefix);
    if (strncmp(kb_jsonl_error(r), want, strlen(want)) != 0)
        fail_msg("error \"%s\" does not start with \"%s\"", kb_jsonl_error(r),
                 want);
}

/* ---- records ---------------------------------------------------------- */

static void test_kb_json_good_records(void **state)
{
    (void)state;
    char path[512];
    write_str(
        path, "good.jsonl",
        "{\"id\": \"a1\", \"text\": \"say \\\"hi\\\"\\n\\u00e9\\ud83d\\ude00\","
        " \"embedding\": [0.5, -1, 2e-3, 1e39, -1e39, 1E2],"
        " \"metadata\": {\"b\": [1, 2.5e3, true, false, null],"
        " \"s\": \"x\\ty\", \"n\": {}, \"e\": []}}\n"
        "{\"id\": 42}\n"
        "{\"metadata\": null, \"embedding\": [], \"id\": -7}\n"
        "{\"id\": 18446744073709551615, \"text\": \"\"}\n"
        "{\"\\u0069d\": \"esc-key\", \"metadata\": {\"q\": \"a\\\"b\\\\c"
        "\\u0001\\/\", \"k\\u00e9\": \"\xc3\xa9\"}}\n");
    kb_jsonl_t *r = NULL;
    KBT_OK(kb_jsonl_open(path, &r), path);
    assert_non_null(r);
    assert_string_equal(kb_jsonl_error(r), "");
    kb_jsonl_rec_t rec;

    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "a1");
    assert_mem(rec.text, rec.text_len, "say \"hi\"\n\xc3\xa9\xf0\x9f\x98\x80");
    assert_non_null(rec.embedding);
    assert_int_equal(rec.embedding_len, 6);
    assert_float_same(rec.embedding[0], 0.5f, "[0]");
    assert_float_same(rec.embedding[1], -1.0f, "[1]");
    assert_float_same(rec.embedding[2], (float)2e-3, "[2]");
    assert_float_same(rec.embedding[3], INFINITY, "[3] 1e39 overflows float");
    assert_float_same(rec.embedding[4], -INFINITY, "[4]");
    assert_float_same(rec.embedding[5], 100.0f, "[5]");
    assert_mem(rec.metadata, rec.metadata_len,
               "{\"b\":[1,2.5e3,true,false,null],\"s\":\"x\\ty\",\"n\":{},"
               "\"e\":[]}");
    assert_int_equal(rec.line, 1);
    char err[128];
    assert_int_equal(
        kb_json_check_object(rec.metadata, rec.metadata_len, err, sizeof err),
        0);

    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "42");
    assert_non_null(rec.text);
    assert_int_equal(rec.text_len, 0);
    assert_null(rec.embedding);
    assert_int_equal(rec.embedding_len, 0);
    assert_null(rec.metadata);
    assert_int_equal(rec.metadata_len, 0);
    assert_int_equal(rec.line, 2);

    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "-7");
    assert_non_null(rec.embedding); /* [] is present, with length 0 */
    assert_int_equal(rec.embedding_len, 0);
    assert_null(rec.metadata); /* null is absent */
    assert_int_equal(rec.line, 3);

    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "18446744073709551615");
    assert_int_equal(rec.text_len, 0);
    assert_int_equal(rec.line, 4);

    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "esc-key");
    assert_mem(rec.metadata, rec.metadata_len,
               "{\"q\":\"a\\\"b\\\\c\\u0001/\",\"k\xc3\xa9\":\"\xc3\xa9\"}");
    assert_int_equal(
        kb_json_check_object(rec.metadata, rec.metadata_len, err, sizeof err),
        0);
    assert_int_equal(rec.line, 5);

    KBT_RC(kb_jsonl_next(r, &rec), 0, kb_jsonl_error(r));
    KBT_RC(kb_jsonl_next(r, &rec), 0, kb_jsonl_error(r)); /* stays at the end */
    assert_string_equal(kb_jsonl_error(r), "");
    kb_jsonl_close(&r);
    assert_null(r);
    unlink(path);
}

static void test_kb_json_blank_lines_and_crlf(void **state)
{
    (void)state;
    char path[512];
    write_str(path, "blank.jsonl",
              "\n   \n{\"id\":\"a\",\"text\":\"x\"}\r\n\r\n\t \r\n"
              "{\"id\":\"b\",\"embedding\":[1,2]}\r\n"
              "{\"id\":\"c\"}   \n"
              "  {\"id\":\"d\"}"); /* last line: no '\n' */
    kb_jsonl_t *r;
    kb_jsonl_rec_t rec;
    KBT_OK(kb_jsonl_open(path, &r), path);
    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "a");
    assert_mem(rec.text, rec.text_len, "x");
    assert_int_equal(rec.line, 3);
    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "b");
    assert_int_equal(rec.embedding_len, 2);
    assert_int_equal(rec.line, 6);
    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "c");
    assert_int_equal(rec.line, 7);
    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "d");
    assert_int_equal(rec.line, 8);
    KBT_RC(kb_jsonl_next(r, &rec), 0, kb_jsonl_error(r));
    kb_jsonl_close(&r);

    /* Only blank lines, and an empty file: no records. */
    write_str(path, "blank.jsonl", "\n\r\n  \n\t");
    KBT_OK(kb_jsonl_open(path, &r), path);
    KBT_RC(kb_jsonl_next(r, &rec), 0, kb_jsonl_error(r));
    kb_jsonl_close(&r);
    write_str(path, "blank.jsonl", "");
    KBT_OK(kb_jsonl_open(path, &r), path);
    KBT_RC(kb_jsonl_next(r, &rec), 0, kb_jsonl_error(r));
    kb_jsonl_close(&r);
    unlink(path);
}

/* ---- errors ------------------------------------------------------------ */

/* One bad line, the code it gives, and the reason (exact unless prefix). */
static const struct bad_line {
    const char *line;
    int code;
    const char *reason;
    int prefix; /* 1: reason is only the start of the message */
} bad_lines[] = {
    {"{\"id\": \"a\",}", KB_EBADJSON, "malformed JSON (TAPE_ERROR: ", 1},
    {"{\"id\": \"a\"", KB_EBADJSON,
     "malformed JSON (INCOMPLETE_ARRAY_OR_OBJECT: ", 1},
    {"{\"id\": \"a\", \"text\": \"\xff\"}", KB_EBADJSON,
     "malformed JSON (UTF8_ERROR: ", 1},
    {"{\"id\": \"a\", \"text\": \"\\x\"}", KB_EBADJSON,
     "malformed JSON in \"text\" (STRING_ERROR: ", 1},
    {"{\"id\": \"a\", \"text\": \"tab\there\"}", KB_EBADJSON,
     "malformed JSON (UNESCAPED_CHARS: ", 1},
    {"{\"text\": \"x\", \"embedding\": [1]}", KB_EBADJSON, "missing \"id\"", 0},
    {"{}", KB_EBADJSON, "missing \"id\"", 0},
    {"{\"id\": \"a\", \"embeding\": [1]}", KB_EBADJSON,
     "unknown key \"embeding\" (expected id, text, embedding, metadata)", 0},
    {"{\"id\": \"a\", \"id\": \"b\"}", KB_EBADJSON, "duplicate key \"id\"", 0},
    {"{\"id\": \"a\", \"embedding\": [0,1,2,3,4,5,6,7,8,9,10,11,\"12\",13]}",
     KB_EBADJSON, "\"embedding\"[12] is not a number", 0},
    {"{\"id\": \"a\", \"embedding\": [1, null]}", KB_EBADJSON,
     "\"embedding\"[1] is not a number", 0},
    {"{\"id\": \"a\", \"embedding\": [1, [2]]}", KB_EBADJSON,
     "\"embedding\"[1] is not a number", 0},
    {"{\"id\": \"a\", \"embedding\": [1, NaN]}", KB_EBADJSON,
     "\"embedding\"[1] is not a number", 0},
    {"{\"id\": \"a\", \"embedding\": [1.2.3]}", KB_EBADJSON,
     "\"embedding\"[0] is not a valid number", 0},
    {"{\"id\": \"a\", \"embedding\": [0, 01]}", KB_EBADJSON,
     "\"embedding\"[1] is not a valid number", 0},
    {"{\"id\": \"a\", \"embedding\": [-Infinity]}", KB_EBADJSON,
     "\"embedding\"[0] is not a valid number", 0},
    {"{\"id\": \"a\", \"embedding\": [1 2]}", KB_EBADJSON,
     "malformed JSON in \"embedding\" (TAPE_ERROR: ", 1},
    {"{\"id\": \"a\", \"embedding\": \"1,2\"}", KB_EBADJSON,
     "\"embedding\" must be an array of numbers", 0},
    {"{\"id\": \"a\", \"embedding\": null}", KB_EBADJSON,
     "\"embedding\" must be an array of numbers", 0},
    {"{\"id\": 1.5}", KB_EBADJSON, "\"id\" must be a string or integer", 0},
    {"{\"id\": true}", KB_EBADJSON, "\"id\" must be a string or integer", 0},
    {"{\"id\": null}", KB_EBADJSON, "\"id\" must be a string or integer", 0},
    {"{\"id\": [\"a\"]}", KB_EBADJSON, "\"id\" must be a string or integer", 0},
    {"{\"id\": 123456789012345678901234567890}", KB_EBADJSON,
     "\"id\" must be a string or integer (a 64-bit one)", 0},
    {"{\"id\": \"a\", \"text\": 5}", KB_EBADJSON, "\"text\" must be a string",
     0},
    {"{\"id\": \"a\", \"text\": null}", KB_EBADJSON,
     "\"text\" must be a string", 0},
    {"{\"id\": \"a\", \"metadata\": [1]}", KB_EBADJSON,
     "\"metadata\" must be an object or null", 0},
    {"{\"id\": \"a\", \"metadata\": \"{}\"}", KB_EBADJSON,
     "\"metadata\" must be an object or null", 0},
    {"{\"id\": \"a\", \"metadata\": {\"n\": 01}}", KB_EBADJSON,
     "malformed JSON in \"metadata\" (NUMBER_ERROR: ", 1},
    {"{\"id\": \"a\", \"metadata\": {\"t\": tru}}", KB_EBADJSON,
     "malformed JSON in \"metadata\" (T_ATOM_ERROR: ", 1},
    {"{\"id\": \"a\", \"metadata\": {\"t\": [1,]}}", KB_EBADJSON,
     "malformed JSON in \"metadata\" (TAPE_ERROR: ", 1},
    {"{\"id\": \"a\", \"metadata\": {\"t\" 1}}", KB_EBADJSON,
     "malformed JSON in \"metadata\" (TAPE_ERROR: ", 1},
    {"{\"id\": \"a\"} {\"id\": \"b\"}", KB_EBADJSON,
     "trailing content after the object (at byte 13)", 0},
    {"{\"id\": \"a\"}}", KB_EBADJSON,
     "trailing content after the object (at byte 12)", 0},
    {"{\"id\": \"a\"} x", KB_EBADJSON, "trailing content after the object", 0},
    {"{\"id\": \"a\"} 5", KB_EBADJSON, "trailing content after the object", 0},
    {"[{\"id\": \"a\"}]", KB_EBADJSON, "line is not a JSON object", 0},
    {"\"id\"", KB_EBADJSON, "line is not a JSON object", 0},
    {"42", KB_EBADJSON, "line is not a JSON object", 0},
};

static void test_kb_json_errors_name_file_and_line(void **state)
{
    (void)state;
    size_t nbad = sizeof bad_lines / sizeof *bad_lines;
    sbuf_t sb = {0};
    /* Bad line k is at line 2k+1, a good one ("ok<k>") follows each. */
    for (size_t k = 0; k < nbad; k++)
        sb_add(&sb, "%s\n{\"id\": \"ok%zu\"}\n", bad_lines[k].line, k);
    char path[512];
    write_file(path, "bad.jsonl", sb.p, sb.len);
    free(sb.p);

    kb_jsonl_t *r;
    kb_jsonl_rec_t rec;
    KBT_OK(kb_jsonl_open(path, &r), path);
    for (size_t k = 0; k < nbad; k++) {
        const struct bad_line *b = &bad_lines[k];
        int rc = kb_jsonl_next(r, &rec);
        if (rc != b->code)
            fail_msg("line %zu (%s): rc %d (%s), wanted %d", 2 * k + 1, b->line,
                     rc, kb_jsonl_error(r), b->code);
        if (b->prefix)
            assert_err_prefix(r, path, (int)(2 * k + 1), b->reason);
        else
            assert_err(r, path, (int)(2 * k + 1), b->reason);
        /* The next call goes on with the next line. */
        KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
        char id[32];
        snprintf(id, sizeof id, "ok%zu", k);
        assert_id(&rec, id);
        assert_int_equal(rec.line, 2 * k + 2);
        assert_string_equal(kb_jsonl_error(r), "");
    }
    KBT_RC(kb_jsonl_next(r, &rec), 0, kb_jsonl_error(r));
    kb_jsonl_close(&r);

    /* An error on the last line, without '\n'. */
    write_str(path, "bad.jsonl", "{\"id\": \"a\"}\n{\"id\": \"b\",");
    KBT_OK(kb_jsonl_open(path, &r), path);
    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    KBT_RC(kb_jsonl_next(r, &rec), KB_EBADJSON, kb_jsonl_error(r));
    assert_err_prefix(r, path, 2, "malformed JSON (");
    KBT_RC(kb_jsonl_next(r, &rec), 0, kb_jsonl_error(r));
    kb_jsonl_close(&r);
    unlink(path);
}

static void test_kb_json_line_too_long(void **state)
{
    (void)state;
    const size_t limit = 64u << 20;
    char path[512];
    snprintf(path, sizeof path, "%s/long.jsonl", g_dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    /* Line 1: fine. Line 2: limit + 1 bytes. Line 3: exactly limit bytes
     * (accepted as a line; a long text). Line 4: fine. */
    fputs("{\"id\": \"first\"}\n", f);
    const char *head = "{\"id\": \"long\", \"text\": \"";
    size_t fill = limit + 1 - strlen(head) - 2;
    char *x = malloc(fill);
    assert_non_null(x);
    memset(x, 'x', fill);
    fputs(head, f);
    assert_int_equal(fwrite(x, 1, fill, f), fill);
    fputs("\"}\n", f);
    fputs(head, f);
    assert_int_equal(fwrite(x, 1, fill - 1, f), fill - 1);
    fputs("\"}\n", f);
    free(x);
    fputs("{\"id\": \"last\"}\n", f);
    assert_int_equal(fclose(f), 0);

    kb_jsonl_t *r;
    kb_jsonl_rec_t rec;
    KBT_OK(kb_jsonl_open(path, &r), path);
    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "first");
    KBT_RC(kb_jsonl_next(r, &rec), KB_ETOOBIG, kb_jsonl_error(r));
    assert_err(r, path, 2, "line longer than 67108864 bytes");
    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "long");
    assert_int_equal(rec.text_len, limit - strlen(head) - 2);
    assert_int_equal(rec.line, 3);
    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "last");
    assert_int_equal(rec.line, 4);
    KBT_RC(kb_jsonl_next(r, &rec), 0, kb_jsonl_error(r));
    kb_jsonl_close(&r);
    unlink(path);
}

/* Damaged records (bytes replaced, dropped, inserted; lines cut short) must
 * each give a record or KB_EBADJSON naming their line, never crash (run it
 * under ASan), and metadata given back must be valid JSON. */
static void test_kb_json_damaged_lines_fail_cleanly(void **state)
{
    (void)state;
    static const char base[] =
        "{\"id\": \"d\\u00e9\", \"text\": \"a \\\"b\\\" \\\\ \\n\", "
        "\"embedding\": [0.25, -1.5e-3, 12, 0.012345678901234567], "
        "\"metadata\": {\"k\": [1, 2.5, true, null, {\"x\": \"y\"}], "
        "\"n\": -0.5e+2}}";
    static const char junk[] = "{}[],:\"\\ -+.eE0x9tfn\t\xff\xc3";
    const int n = 3000;
    uint64_t s = 0x2545f4914f6cdd1dull;
    sbuf_t sb = {0};
    for (int k = 0; k < n; k++) {
        char line[sizeof base + 8];
        size_t len = sizeof base - 1;
        memcpy(line, base, len);
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        uint64_t x = s * 2685821657736338717ull;
        size_t pos = 1 + (size_t)(x >> 8) % (len - 1);
        char c = junk[(x >> 40) % (sizeof junk - 1)];
        switch (x % 4) {
        case 0: line[pos] = c; break; /* replace */
        case 1:
            memmove(line + pos, line + pos + 1, len - pos);
            len--;
            break;
        case 2:
            memmove(line + pos + 1, line + pos, len - pos);
            line[pos] = c;
            len++;
            break;                 /* insert */
        default: len = pos; break; /* cut */
        }
        sb_add(&sb, "%.*s\n", (int)len, line);
    }
    char path[512];
    write_file(path, "damaged.jsonl", sb.p, sb.len);
    free(sb.p);

    kb_jsonl_t *r;
    kb_jsonl_rec_t rec;
    int good = 0;
    KBT_OK(kb_jsonl_open(path, &r), path);
    for (int k = 0; k < n; k++) {
        int rc = kb_jsonl_next(r, &rec);
        if (rc == 1) {
            good++;
            assert_int_equal(rec.line, k + 1);
            if (rec.metadata) {
                char err[160];
                if (kb_json_check_object(rec.metadata, rec.metadata_len, err,
                                         sizeof err) != 0)
                    fail_msg("line %d: metadata \"%.*s\": %s", k + 1,
                             (int)rec.metadata_len, rec.metadata, err);
            }
        } else if (rc == KB_EBADJSON) {
            char want[600];
            snprintf(want, sizeof want, "%s:%d: ", path, k + 1);
            if (strncmp(kb_jsonl_error(r), want, strlen(want)) != 0)
                fail_msg("line %d: error \"%s\"", k + 1, kb_jsonl_error(r));
        } else {
            fail_msg("line %d: rc %d (%s)", k + 1, rc, kb_jsonl_error(r));
        }
    }
    KBT_RC(kb_jsonl_next(r, &rec), 0, kb_jsonl_error(r));
    kb_jsonl_close(&r);
    /* Some damage is harmless (a digit replaced, whitespace added). */
    assert_true(good > 0 && good < n);
    unlink(path);
}

/* ---- chunks and standard input ----------------------------------------- */

/* Record k of a test file: varying lengths (from ~20 bytes to ~3 KB), some
 * with text, blank lines and CRLF in between. */
static void add_record(sbuf_t *sb, int k)
{
    int dim = (k * 37) % 150;
    sb_add(sb, "{\"id\": \"r%d\"", k);
    if (k % 3 == 0)
        sb_add(sb, ", \"text\": \"record \\\"%d\\\"\"", k);
    if (k % 5 != 4) {
        sb_add(sb, ", \"embedding\": [");
        for (int j = 0; j < dim; j++)
            sb_add(sb, j ? ", %.17g" : "%.17g", (k + 1) * 0.001 - j * 1e-5);
        sb_add(sb, "]");
    }
    if (k % 4 == 1)
        sb_add(sb, ", \"metadata\": {\"k\": %d}", k);
    sb_add(sb, k % 7 == 3 ? "}\r\n" : "}\n");
    if (k % 11 == 5)
        sb_add(sb, "\n   \n");
}

/* Reads n records made by add_record() and checks every one. */
static void check_records(kb_jsonl_t *r, int n)
{
    kb_jsonl_rec_t rec;
    int rc;
    for (int k = 0; k < n; k++) {
        rc = kb_jsonl_next(r, &rec);
        if (rc != 1)
            fail_msg("record %d: rc %d (%s)", k, rc, kb_jsonl_error(r));
        char id[32];
        snprintf(id, sizeof id, "r%d", k);
        assert_id(&rec, id);
        if (k % 3 == 0) {
            char text[64];
            snprintf(text, sizeof text, "record \"%d\"", k);
            assert_mem(rec.text, rec.text_len, text);
        } else {
            assert_int_equal(rec.text_len, 0);
        }
        if (k % 5 != 4) {
            int dim = (k * 37) % 150;
            assert_non_null(rec.embedding);
            assert_int_equal(rec.embedding_len, dim);
            for (int j = 0; j < dim; j++)
                assert_float_same(rec.embedding[j],
                                  (float)((k + 1) * 0.001 - j * 1e-5), id);
        } else {
            assert_null(rec.embedding);
        }
        if (k % 4 == 1) {
            char meta[64];
            snprintf(meta, sizeof meta, "{\"k\":%d}", k);
            assert_mem(rec.metadata, rec.metadata_len, meta);
        } else {
            assert_null(rec.metadata);
        }
    }
    rc = kb_jsonl_next(r, &rec);
    if (rc != 0)
        fail_msg("after %d records: rc %d (%s)", n, rc, kb_jsonl_error(r));
}

static void test_kb_json_records_across_chunks(void **state)
{
    (void)state;
    const int n = 3000;
    sbuf_t sb = {0};
    for (int k = 0; k < n; k++)
        add_record(&sb, k);
    char path[512];
    write_file(path, "chunks.jsonl", sb.p, sb.len);

    /* Chunks far smaller than a record (buffer grows), about one record, a
     * few records, and the default (file is ~2 MB, chunk 1 MiB). */
    static const size_t chunks[] = {64, 100, 1000, 4096, 65536, 0};
    for (int c = 0; c <= 5; c++) {
        kb_jsonl_t *r;
        KBT_OK(kb_jsonl_open_chunk(path, chunks[c], &r), path);
        check_records(r, n);
        kb_jsonl_close(&r);
    }
    /* Chunk sizes out of bounds are refused, and open nothing. */
    kb_jsonl_t *bad = (kb_jsonl_t *)path;
    assert_int_equal(kb_jsonl_open_chunk(path, KB_JSONL_CHUNK_MIN - 1, &bad),
                     KB_EINVAL);
    assert_null(bad);
    assert_int_equal(
        kb_jsonl_open_chunk(path, (size_t)KB_JSONL_CHUNK_MAX + 1, &bad),
        KB_EINVAL);

    /* An error in a record that spans a chunk boundary names its line. */
    sb.len = 0;
    sb_add(&sb, "{\"id\": \"x\", \"text\": \"%0500d\"}\n", 0);
    sb_add(&sb, "{\"id\": \"y\", \"embedding\": [1, 2, \"3\"]}\n");
    sb_add(&sb, "{\"id\": \"z\"}\n");
    write_file(path, "chunks.jsonl", sb.p, sb.len);
    free(sb.p);
    kb_jsonl_t *r;
    kb_jsonl_rec_t rec;
    KBT_OK(kb_jsonl_open_chunk(path, 530, &r), path);
    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    KBT_RC(kb_jsonl_next(r, &rec), KB_EBADJSON, kb_jsonl_error(r));
    assert_err(r, path, 2, "\"embedding\"[2] is not a number");
    KBT_RC(kb_jsonl_next(r, &rec), 1, kb_jsonl_error(r));
    assert_id(&rec, "z");
    assert_int_equal(rec.line, 3);
    kb_jsonl_close(&r);
    unlink(path);
}

static void test_kb_json_reads_stdin(void **state)
{
    (void)state;
    const int n = 400;
    sbuf_t sb = {0};
    for (int k = 0; k < n; k++)
        add_record(&sb, k);
    sb_add(&sb, "{\"id\": \"bad\"\n");

    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* writer: small, uneven writes */
        close(p[0]);
        size_t off = 0, step = 1;
        while (off < sb.len) {
            size_t w = step < sb.len - off ? step : sb.len - off;
            ssize_t got = write(p[1], sb.p + off, w);
            if (got <= 0)
                _exit(1);
            off += (size_t)got;
            step = step * 3 % 9973 + 1;
        }
        _exit(0);
    }
    close(p[1]);
    int saved = dup(0);
    assert_true(saved >= 0);
    assert_true(dup2(p[0], 0) == 0);
    close(p[0]);

    kb_jsonl_t *r;
    kb_jsonl_rec_t rec;
    KBT_OK(kb_jsonl_open("-", &r), "<stdin>");
    for (int k = 0; k < n; k++) {
        int rc = kb_jsonl_next(r, &rec);
        if (rc != 1)
            fail_msg("record %d: rc %d (%s)", k, rc, kb_jsonl_error(r));
        char id[32];
        snprintf(id, sizeof id, "r%d", k);
        assert_id(&rec, id);
    }
    int line = (int)rec.line + 1;
    KBT_RC(kb_jsonl_next(r, &rec), KB_EBADJSON, kb_jsonl_error(r));
    assert_err_prefix(r, "<stdin>", line, "malformed JSON (");
    KBT_RC(kb_jsonl_next(r, &rec), 0, kb_jsonl_error(r));
    kb_jsonl_close(&r);

    assert_true(dup2(saved, 0) == 0);
    close(saved);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free(sb.p);
}

static void test_kb_json_open_errors(void **state)
{
    (void)state;
    kb_jsonl_t *r = (kb_jsonl_t *)&r; /* must be overwritten */
    char path[512];
    snprintf(path, sizeof path, "%s/does-not-exist.jsonl", g_dir);
    KBT_RC(kb_jsonl_open(path, &r), -ENOENT, path);
    assert_null(r);
    KBT_RC(kb_jsonl_open(g_dir, &r), -EISDIR, g_dir);
    assert_null(r);
    kb_jsonl_close(NULL);
    kb_jsonl_close(&r); /* NULL reader */
    assert_null(r);
    assert_string_equal(kb_jsonl_error(NULL), "");
}

/* ---- kb_json_parse_floats ---------------------------------------------- */

static void test_kb_json_parse_floats_good(void **state)
{
    (void)state;
    float v[8];
    size_t n = 99;
    char err[128];
    const char *s = "[0.1, 2, -3e-2]";
    KBT_OK(kb_json_parse_floats(s, strlen(s), v, 8, &n, err, sizeof err), err);
    assert_int_equal(n, 3);
    assert_float_same(v[0], 0.1f, "0.1");
    assert_float_same(v[1], 2.0f, "2");
    assert_float_same(v[2], -0.03f, "-3e-2");

    s = " \n[ ]\t ";
    KBT_OK(kb_json_parse_floats(s, strlen(s), v, 8, &n, err, sizeof err), err);
    assert_int_equal(n, 0);
    assert_int_equal(kb_json_parse_floats("[]", 2, NULL, 0, &n, NULL, 0), 0);

    /* Exactly cap elements; overflow to inf; huge and tiny doubles; -0. */
    s = "[3.4028235e38, 3.5e38, -1e39, 1e400, -1e400, 1e-400, -0.0, "
        "123456789012345678901234567890]";
    KBT_OK(kb_json_parse_floats(s, strlen(s), v, 8, &n, err, sizeof err), err);
    assert_int_equal(n, 8);
    assert_float_same(v[0], FLT_MAX, "3.4028235e38");
    assert_float_same(v[1], INFINITY, "3.5e38");
    assert_float_same(v[2], -INFINITY, "-1e39");
    assert_float_same(v[3], INFINITY, "1e400");
    assert_float_same(v[4], -INFINITY, "-1e400");
    assert_float_same(v[5], 0.0f, "1e-400");
    assert_float_same(v[6], -0.0f, "-0.0");
    assert_float_same(v[7], 1.2345679e29f, "30 digits");

    /* Not NUL-terminated: only s[0..len) is read. */
    const char buf[] = {'[', '1', ',', '2', ']', '9', ']'};
    KBT_OK(kb_json_parse_floats(buf, 5, v, 8, &n, err, sizeof err), err);
    assert_int_equal(n, 2);
}

/* Values must equal (float)strtod(text): the fast number path and simdjson's
 * own must both round correctly, for the shapes json.dumps writes and
 * others. */
static void test_kb_json_parse_floats_match_strtod(void **state)
{
    (void)state;
    static const char *const fmts[] = {"%.17g", "%.16g", "%.9g", "%.3g",
                                       "%.20e", "%.25f", "%g",   "%.17e"};
    const size_t per = 2000;
    uint64_t s = 88172645463325252ull;
    float *v = malloc(per * sizeof *v);
    assert_non_null(v);
    for (size_t f = 0; f < sizeof fmts / sizeof *fmts; f++) {
        sbuf_t sb = {0};
        sb_add(&sb, "[");
        for (size_t i = 0; i < per; i++) {
            s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
            uint64_t bits = s * 2685821657736338717ull;
            /* Mostly embedding-sized values, some of any magnitude. */
            double d = (double)(bits >> 11) / 9007199254740992.0 - 0.5;
            if (i % 16 == 15)
                d = ldexp(d, (int)(bits % 2000) - 1000);
            else if (i % 4 == 3)
                d = ldexp(d, (int)(bits % 200) - 100);
            sb_add(&sb, i ? ", " : "");
            sb_add(&sb, fmts[f], d);
        }
        sb_add(&sb, "]");
        size_t n;
        char err[128];
        int rc =
            kb_json_parse_floats(sb.p, sb.len, v, per, &n, err, sizeof err);
        if (rc != 0)
            fail_msg("format %s: rc %d: %s", fmts[f], rc, err);
        assert_int_equal(n, per);
        char *p = sb.p + 1;
        for (size_t i = 0; i < per; i++) {
            char *end;
            double want = strtod(p, &end);
            char what[96];
            snprintf(what, sizeof what, "format %s, \"%.*s\"", fmts[f],
                     (int)(end - p), p);
            assert_float_same(v[i], (float)want, what);
            p = end + 2; /* ", " */
        }
        free(sb.p);
    }
    free(v);
}

static void test_kb_json_parse_floats_bad(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int code;
        const char *reason; /* start of the message */
    } cases[] = {
        {"", KB_EBADJSON, "empty input"},
        {"  ", KB_EBADJSON, "empty input"},
        {"{\"a\": 1}", KB_EBADJSON, "not a JSON array"},
        {"1.5", KB_EBADJSON, "not a JSON array"},
        {"[1, \"a\"]", KB_EBADJSON, "element 1 is not a number"},
        {"[1, true]", KB_EBADJSON, "element 1 is not a number"},
        {"[[1]]", KB_EBADJSON, "element 0 is not a number"},
        {"[1, 2.]", KB_EBADJSON, "element 1 is not a valid number"},
        {"[1, 2", KB_EBADJSON, "malformed JSON (INCOMPLETE_ARRAY_OR_OBJECT"},
        {"[1,,2]", KB_EBADJSON, "malformed JSON ("},
        {"[1, 2] x", KB_EBADJSON, "trailing content after the array"},
        {"[1, 2]]", KB_EBADJSON,
         "trailing content after the array (at byte 7)"},
        {"[1, 2] [3]", KB_EBADJSON, "trailing content after the array"},
        {"[1, 2, 3, 4, 5]", KB_ETOOBIG, "5 numbers, more than the 4 allowed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        float v[4];
        size_t n = 99;
        char err[128];
        int rc = kb_json_parse_floats(cases[i].s, strlen(cases[i].s), v, 4, &n,
                                      err, sizeof err);
        if (rc != cases[i].code)
            fail_msg("\"%s\": rc %d (%s), wanted %d", cases[i].s, rc, err,
                     cases[i].code);
        if (strncmp(err, cases[i].reason, strlen(cases[i].reason)) != 0)
            fail_msg("\"%s\": error \"%s\", wanted \"%s...\"", cases[i].s, err,
                     cases[i].reason);
        assert_int_equal(n, 0);
        /* err may be NULL, or too small for the text. */
        assert_int_equal(kb_json_parse_floats(cases[i].s, strlen(cases[i].s), v,
                                              4, &n, NULL, 0),
                         cases[i].code);
        char tiny[4];
        assert_int_equal(kb_json_parse_floats(cases[i].s, strlen(cases[i].s), v,
                                              4, &n, tiny, sizeof tiny),
                         cases[i].code);
        assert_int_equal(strlen(tiny), 3);
    }
}

/* ---- kb_json_check_object ---------------------------------------------- */

static void test_kb_json_check_object_good(void **state)
{
    (void)state;
    static const char *const good[] = {
        "{}",
        " \r\n{ } \t\n",
        "{\"a\": [1, {\"b\": null}, [], {}], \"c\": \"\\u00e9\\n\", \"d\": "
        "true}",
        "{\"big\": 1e400, \"long\": 123456789012345678901234567890, "
        "\"neg\": -0.5E-7}",
        "{\"a\": {\"a\": {\"a\": {\"a\": {\"a\": [[[[\"deep\"]]]]}}}}}",
        "{\"dup\": 1, \"dup\": 2}", /* duplicates are valid JSON */
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        char err[128] = "";
        int rc =
            kb_json_check_object(good[i], strlen(good[i]), err, sizeof err);
        if (rc != 0)
            fail_msg("\"%s\": rc %d: %s", good[i], rc, err);
    }
    /* Not NUL-terminated: only s[0..len) is read. */
    const char buf[] = {'{', '}', '}'};
    assert_int_equal(kb_json_check_object(buf, 2, NULL, 0), 0);
}

static void test_kb_json_check_object_bad(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        const char *reason; /* start of the message */
    } cases[] = {
        {"", "empty input"},
        {"[]", "not a JSON object"},
        {"\"{}\"", "not a JSON object"},
        {"null", "not a JSON object"},
        {"{\"a\": 1,}", "malformed JSON (TAPE_ERROR"},
        {"{\"a\" 1}", "malformed JSON (TAPE_ERROR"},
        {"{a: 1}", "malformed JSON ("},
        {"{\"a\": 1", "malformed JSON (INCOMPLETE_ARRAY_OR_OBJECT"},
        {"{\"a\": [1}", "malformed JSON ("},
        {"{\"a\": 01}", "malformed JSON (NUMBER_ERROR"},
        {"{\"a\": 1.}", "malformed JSON (NUMBER_ERROR"},
        {"{\"a\": -}", "malformed JSON (NUMBER_ERROR"},
        {"{\"a\": tru}", "malformed JSON (T_ATOM_ERROR"},
        {"{\"a\": nul}", "malformed JSON (N_ATOM_ERROR"},
        {"{\"a\": \"\\q\"}", "malformed JSON (STRING_ERROR"},
        {"{\"a\": \"\xc3\"}", "malformed JSON (UTF8_ERROR"},
        {"{\"a\": \"x}", "malformed JSON ("},
        {"{\"a\": 1} {}", "trailing content after the object (at byte 10)"},
        {"{\"a\": 1} x", "trailing content after the object"},
        {"{\"a\": 1}}", "trailing content after the object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char err[160] = "";
        int rc = kb_json_check_object(cases[i].s, strlen(cases[i].s), err,
                                      sizeof err);
        if (rc != KB_EBADJSON)
            fail_msg("\"%s\": rc %d (%s), wanted KB_EBADJSON", cases[i].s, rc,
                     err);
        if (strncmp(err, cases[i].reason, strlen(cases[i].reason)) != 0)
            fail_msg("\"%s\": error \"%s\", wanted \"%s...\"", cases[i].s, err,
                     cases[i].reason);
        assert_int_equal(
            kb_json_check_object(cases[i].s, strlen(cases[i].s), NULL, 0),
            KB_EBADJSON);
    }

    /* Nesting beyond the limit is refused, not a stack overflow. */
    sbuf_t sb = {0};
    sb_add(&sb, "{\"a\": ");
    for (int i = 0; i < 100000; i++)
        sb_add(&sb, "[");
    for (int i = 0; i < 100000; i++)
        sb_add(&sb, "]");
    sb_add(&sb, "}");
    char err[160];
    KBT_RC(kb_json_check_object(sb.p, sb.len, err, sizeof err), KB_EBADJSON,
           err);
    assert_string_equal(err, "nested more than 128 levels deep");
    free(sb.p);
}

/* kb_json_fields: collects "key=value;" for every filterable field. */
static int collect_field(void *ctx, const char *key, size_t key_len,
                         const char *val, size_t val_len)
{
    char *out = ctx;
    size_t n = strlen(out);
    snprintf(out + n, 1024 - n, "%.*s=%.*s;", (int)key_len, key, (int)val_len,
             val);
    return 0;
}

static void test_kb_json_fields_as_written(void **state)
{
    (void)state;
    /* Numbers and booleans as written in the document, strings unescaped,
     * array elements one by one; null, objects and nested arrays skipped.
     * A number beyond the double range is a value like any other (it was
     * accepted by kb_json_check_object, so the filter index must take it). */
    const char *m =
        "{\"n\": 1e2, \"f\":1.50, \"z\": -0, \"big\": 1e400, "
        "\"huge\": 123456789012345678901234, \"s\": \"a\\\"b\\u00e9\", "
        "\"b\": true, \"nul\": null, \"o\": {\"x\": 1}, "
        "\"arr\": [1, \"two\", false, null, [3], {\"y\": 2}]}";
    char out[1024] = "";
    KBT_OK(kb_json_fields(m, strlen(m), collect_field, out), out);
    assert_string_equal(out, "n=1e2;f=1.50;z=-0;big=1e400;"
                             "huge=123456789012345678901234;s=a\"b\xc3\xa9;"
                             "b=true;arr=1;arr=two;arr=false;");
    KBT_OK(kb_json_check_object(m, strlen(m), out, sizeof out), out);
    /* Not an object. */
    out[0] = 0;
    assert_int_equal(kb_json_fields("[1]", 3, collect_field, out),
                     KB_EBADJSON);
}

static void test_kb_json_value_minified_as_written(void **state)
{
    (void)state;
    const char *m = "{\"a\" : { \"x\" : [ 1 , 2e0 ] , \"s\" : \"p q\" }, "
                    "\"n\": 1e400, \"s\": \"t\\u00e9\", \"nul\": null}";
    static const struct {
        const char *key, *want;
    } cases[] = {
        {"a", "{\"x\":[1,2e0],\"s\":\"p q\"}"},
        {"n", "1e400"},
        {"s", "\"t\\u00e9\""},
        {"nul", "null"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *v = NULL;
        size_t vlen = 0;
        KBT_OK(kb_json_value(m, strlen(m), cases[i].key,
                             strlen(cases[i].key), &v, &vlen),
               cases[i].key);
        assert_non_null(v);
        assert_string_equal(v, cases[i].want);
        assert_int_equal(vlen, strlen(cases[i].want));
        free(v);
    }
    char *v = NULL;
    size_t vlen = 0;
    KBT_OK(kb_json_value(m, strlen(m), "absent", 6, &v, &vlen), "absent");
    assert_null(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kb_json_good_records),
        cmocka_unit_test(test_kb_json_blank_lines_and_crlf),
        cmocka_unit_test(test_kb_json_errors_name_file_and_line),
        cmocka_unit_test(test_kb_json_line_too_long),
        cmocka_unit_test(test_kb_json_damaged_lines_fail_cleanly),
        cmocka_unit_test(test_kb_json_records_across_chunks),
        cmocka_unit_test(test_kb_json_reads_stdin),
        cmocka_unit_test(test_kb_json_open_errors),
        cmocka_unit_test(test_kb_json_parse_floats_good),
        cmocka_unit_test(test_kb_json_parse_floats_match_strtod),
        cmocka_unit_test(test_kb_json_parse_floats_bad),
        cmocka_unit_test(test_kb_json_check_object_good),
        cmocka_unit_test(test_kb_json_check_object_bad),
        cmocka_unit_test(test_kb_json_fields_as_written),
        cmocka_unit_test(test_kb_json_value_minified_as_written),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
