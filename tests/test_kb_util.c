/* test_kb_util: the helpers every module shares (common/kb_util.c): CRC-32C
 * against its published check values, the error-text convention, the
 * clocks, the log level filter and the log-line format, and the rate
 * limiter for lines a peer can cause. */
#include "kb_test.h"

#include "kb_err.h"
#include "kb_util.h"

#include <fcntl.h>

/* ------------------------------------------------------------- CRC-32C */

static void test_crc32c_check_values(void **state)
{
    (void)state;
    /* The check value of CRC-32C (RFC 3720, B.4, and every CRC catalogue). */
    assert_int_equal(kb_crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(kb_crc32c(0, "", 0), 0u);
    /* RFC 3720 B.4: 32 bytes of zeros, and 32 bytes of 0xff. */
    unsigned char z[32] = {0}, f[32];
    memset(f, 0xff, sizeof f);
    assert_int_equal(kb_crc32c(0, z, sizeof z), 0x8A9136AAu);
    assert_int_equal(kb_crc32c(0, f, sizeof f), 0x62A8AB43u);
}

static void test_crc32c_streams_and_any_alignment(void **state)
{
    (void)state;
    /* The hardware path works in 8-byte words: every split point and
     * start offset must give the one-shot value. */
    unsigned char buf[203];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 131u + 7u);
    for (size_t off = 0; off < 8; off++) {
        const unsigned char *p = buf + off;
        size_t n = sizeof buf - off;
        uint32_t whole = kb_crc32c(0, p, n);
        for (size_t cut = 0; cut <= n; cut += 13) {
            uint32_t c = kb_crc32c(0, p, cut);
            assert_int_equal(kb_crc32c(c, p + cut, n - cut), whole);
        }
    }
    /* One flipped bit changes the value. */
    uint32_t a = kb_crc32c(0, buf, sizeof buf);
    buf[100] ^= 4;
    assert_int_not_equal(kb_crc32c(0, buf, sizeof buf), a);
}

/* ----------------------------------------------------------- kb_seterr */

static void test_seterr_returns_code_and_truncates(void **state)
{
    (void)state;
    char err[16];
    assert_int_equal(kb_seterr(err, sizeof err, KB_EDIM, "dim %d != %d", 3, 4),
                     KB_EDIM);
    assert_string_equal(err, "dim 3 != 4");
    /* A long text is cut, NUL-terminated, never overrun. */
    memset(err, 'x', sizeof err);
    assert_int_equal(kb_seterr(err, 8, KB_EINVAL, "%s", "abcdefghijklmnop"),
                     KB_EINVAL);
    assert_string_equal(err, "abcdefg");
    assert_int_equal(err[8], 'x');
    /* No buffer: only the code. */
    assert_int_equal(kb_seterr(NULL, 0, KB_ESTORE, "ignored"), KB_ESTORE);
}

/* --------------------------------------------------------------- clocks */

static void test_clocks(void **state)
{
    (void)state;
    uint64_t m0 = kb_mono_us(), w0 = kb_wall_us();
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    uint64_t m1 = kb_mono_us(), w1 = kb_wall_us();
    assert_true(m1 - m0 >= 20000u);
    assert_true(m1 - m0 < 5u * 1000 * 1000);
    /* Wall clock in microseconds since 1970: after 2020, before 2100. */
    assert_true(w0 > UINT64_C(1577836800000000));
    assert_true(w1 < UINT64_C(4102444800000000));
    assert_true(w1 >= w0);
    /* kb_abstime_in: the wall clock that far ahead, nanoseconds normal */
    for (uint64_t us = 0; us < 3000000u; us += 499999u) {
        struct timespec at;
        uint64_t before = kb_wall_us();
        kb_abstime_in(&at, us);
        uint64_t after = kb_wall_us();
        assert_true(at.tv_nsec >= 0 && at.tv_nsec < 1000000000L);
        uint64_t at_us =
            (uint64_t)at.tv_sec * 1000000u + (uint64_t)at.tv_nsec / 1000u;
        assert_true(at_us + 1 >= before + us && at_us <= after + us);
    }
}

/* ------------------------------------------------------------ logging */

/* Runs fn with stderr sent to a temp file; returns what it wrote. */
static char *capture_stderr(void (*fn)(void *), void *arg)
{
    char path[] = "/tmp/kbtest-util-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0);
    assert_true(dup2(fd, 2) == 2);
    fn(arg);
    fflush(stderr);
    assert_true(dup2(saved, 2) == 2);
    close(saved);
    off_t n = lseek(fd, 0, SEEK_END);
    char *out = calloc(1, (size_t)n + 1);
    assert_non_null(out);
    assert_int_equal(pread(fd, out, (size_t)n, 0), n);
    close(fd);
    return out;
}

static void log_some(void *arg)
{
    (void)arg;
    kb_debug("a debug line %d", 1);
    kb_info("an info line %d", 2);
    kb_warn("a warn line %d", 3);
    kb_error("an error line %d", 4);
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_log_level_filters_and_format(void **state)
{
    (void)state;
    kb_log_setup(KB_LOG_WARN, "unit");
    char *out = capture_stderr(log_some, NULL);
    assert_null(strstr(out, "debug line"));
    assert_null(strstr(out, "info line"));
    assert_non_null(strstr(out, " unit WARN: a warn line 3\n"));
    assert_non_null(strstr(out, " unit ERROR: an error line 4\n"));
    assert_int_equal(count_lines(out), 2);
    /* "2026-11-21T11:22:33.456Z unit WARN: ...": an ISO 8601 UTC stamp. */
    int y, mo, d, h, mi, s, ms;
    char z;
    assert_int_equal(sscanf(out, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &y, &mo, &d,
                            &h, &mi, &s, &ms, &z),
                     8);
    assert_int_equal(z, 'Z');
    free(out);

    kb_log_setup(KB_LOG_DEBUG, NULL); /* NULL keeps the name */
    out = capture_stderr(log_some, NULL);
    assert_int_equal(count_lines(out), 4);
    assert_non_null(strstr(out, " unit DEBUG: a debug line 1\n"));
    free(out);
    kb_log_setup(KB_LOG_INFO, "kbsync");
}

typedef struct {
    kb_loglimit_t lim;
    int printed;
} limited_t;

static void log_limited_burst(void *arg)
{
    limited_t *l = arg;
    for (int i = 0; i < 100; i++)
        l->printed += kb_log_limited(&l->lim, KB_LOG_WARN, "bad message %d", i);
}

static void test_log_limited(void **state)
{
    (void)state;
    kb_log_setup(KB_LOG_INFO, "unit");
    limited_t l = {{0, 0}, 0};
    char *out = capture_stderr(log_limited_burst, &l);
    /* A burst: the first line only; the other 99 are counted. */
    assert_int_equal(l.printed, 1);
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(out, "bad message 0\n"));
    assert_int_equal(l.lim.suppressed, 99);
    free(out);
    /* After the interval the next line says how many were left out. */
    l.lim.last_us -= (KB_LOG_LIMIT_MS + 1) * 1000u;
    l.printed = 0;
    out = capture_stderr(log_limited_burst, &l);
    assert_int_equal(l.printed, 1);
    assert_non_null(
        strstr(out, "bad message 0 (and 99 more like it since the last "
                    "such line)\n"));
    free(out);
    /* Below the level: not printed, and not counted as left out. */
    kb_loglimit_t q = {0, 0};
    kb_log_setup(KB_LOG_ERROR, "unit");
    assert_int_equal(kb_log_limited(&q, KB_LOG_WARN, "quiet"), 0);
    assert_int_equal(q.suppressed, 0);
    kb_log_setup(KB_LOG_INFO, "kbsync");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_check_values),
        cmocka_unit_test(test_crc32c_streams_and_any_alignment),
        cmocka_unit_test(test_seterr_returns_code_and_truncates),
        cmocka_unit_test(test_clocks),
        cmocka_unit_test(test_log_level_filters_and_format),
        cmocka_unit_test(test_log_limited),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
