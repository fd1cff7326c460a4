/* kb_test: helpers shared by the per-module cmocka tests (test code only).
 * In: nothing but the test's own calls. Out: a fresh temp dir under /tmp per
 * test (kbt_tmpdir / kbt_rmrf), deterministic pseudo-random vectors, and
 * asserts that print both values and the error text. No global state beyond
 * what each test passes in. Header-only: every function is static. */
#ifndef KB_TEST_H
#define KB_TEST_H

#include "kb_err.h"

#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* ------------------------------------------------------------ temp dirs */

/* Makes a new empty directory /tmp/kbtest-<what>-XXXXXX; writes its path to
 * buf. Fails the test when it cannot. */
static inline void kbt_tmpdir(char *buf, size_t len, const char *what)
{
    int n = snprintf(buf, len, "/tmp/kbtest-%s-XXXXXX", what);
    assert_true(n > 0 && (size_t)n < len);
    if (!mkdtemp(buf))
        fail_msg("mkdtemp(%s) failed", buf);
}

static inline int kbt__rm_one(const char *path, const struct stat *st, int flag,
                              struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path))
        fprintf(stderr, "kb_test: cannot remove %s\n", path);
    return 0;
}

/* Removes path and everything under it (depth first, no symlink follow).
 * Refuses anything outside /tmp/kbtest- so a bug cannot wipe real data. */
static inline void kbt_rmrf(const char *path)
{
    if (!path || strncmp(path, "/tmp/kbtest-", 12) != 0)
        return;
    nftw(path, kbt__rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* buf = dir + "/" + name. */
static inline void kbt_path(char *buf, size_t len, const char *dir,
                            const char *name)
{
    int n = snprintf(buf, len, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < len);
}

static inline int kbt_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* --------------------------------------------------------------- vectors */

/* Deterministic pseudo-random floats in [-0.5, 0.5) (xorshift64*), the same
 * for the same seed on every run, so a failure can be replayed. */
static inline void kbt_rand(float *x, size_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        uint64_t r = s * 2685821657736338717ull;
        x[i] = (float)(r >> 40) / (float)(1u << 24) - 0.5f;
    }
}

/* A random unit vector of dim floats. */
static inline void kbt_rand_unit(float *x, uint32_t dim, uint64_t seed)
{
    kbt_rand(x, dim, seed);
    double norm = 0;
    for (uint32_t i = 0; i < dim; i++)
        norm += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(norm > 0 ? norm : 1));
    for (uint32_t i = 0; i < dim; i++)
        x[i] *= inv;
}

static inline double kbt_dot(const float *a, const float *b, uint32_t dim)
{
    double s = 0;
    for (uint32_t i = 0; i < dim; i++)
        s += (double)a[i] * b[i];
    return s;
}

static inline double kbt_l2sq(const float *a, const float *b, uint32_t dim)
{
    double s = 0;
    for (uint32_t i = 0; i < dim; i++)
        s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return s;
}

/* A malloc'd string of n copies of c (NUL-terminated). */
static inline char *kbt_repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = 0;
    return s;
}

/* ---------------------------------------------------------------- asserts */

/* Fails unless rc == want; prints both codes by name and the error text. */
#define KBT_RC(rc, want, errtext)                                              \
    do {                                                                       \
        int kbt__rc = (rc), kbt__want = (want);                                \
        if (kbt__rc != kbt__want)                                              \
            fail_msg("%s returned %d (%s), wanted %d (%s); err: \"%s\"", #rc,  \
                     kbt__rc, kb_errname(kbt__rc), kbt__want,                  \
                     kb_errname(kbt__want), (errtext));                        \
    } while (0)

/* Fails unless rc == 0; prints the code and the error text. */
#define KBT_OK(rc, errtext) KBT_RC(rc, 0, errtext)

/* Fails unless hay contains needle; prints both. */
#define KBT_CONTAINS(hay, needle)                                              \
    do {                                                                       \
        const char *kbt__h = (hay), *kbt__n = (needle);                        \
        if (!kbt__h || !strstr(kbt__h, kbt__n))                                \
            fail_msg("\"%s\" does not contain \"%s\"",                         \
                     kbt__h ? kbt__h : "(null)", kbt__n);                      \
    } while (0)

/* Fails unless |a - b| <= tol; prints both. */
#define KBT_NEAR(a, b, tol)                                                    \
    do {                                                                       \
        double kbt__a = (a), kbt__b = (b);                                     \
        if (!(fabs(kbt__a - kbt__b) <= (tol)))                                 \
            fail_msg("%s = %.9g, %s = %.9g: differ by more than %g", #a,       \
                     kbt__a, #b, kbt__b, (double)(tol));                       \
    } while (0)

/* Fails unless two u64 values are equal; prints both in decimal. */
#define KBT_U64(a, b)                                                          \
    do {                                                                       \
        unsigned long long kbt__a = (a), kbt__b = (b);                         \
        if (kbt__a != kbt__b)                                                  \
            fail_msg("%s = %llu, %s = %llu", #a, kbt__a, #b, kbt__b);          \
    } while (0)

/* ------------------------------------------------------------- isolation */

/* Runs fn(arg) in a forked child so that a crash (e.g. a SIGSEGV inside
 * FAISS) fails this one test instead of killing the whole test binary.
 * fn must not use cmocka asserts (a failing assert in the child would go on
 * running the remaining tests there): it returns 0 for success or a small
 * code naming the failed check. Fails the test when the child crashes,
 * returns non-zero, or runs past timeout_ms (it is then killed). */
static inline void kbt_run_isolated(const char *what, int (*fn)(void *),
                                    void *arg, int timeout_ms)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* cmocka's crash handlers would finish the test run in the child:
         * let a crash be a plain death by signal instead. */
        static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
            signal(sigs[i], SIG_DFL);
        int rc = fn(arg);
        fflush(NULL);
        _exit(rc < 0 || rc > 255 ? 255 : rc);
    }
    int st = 0;
    for (int waited = 0;; waited += 10) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (waited >= timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            fail_msg("%s: child still running after %d ms (killed)", what,
                     timeout_ms);
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (WIFSIGNALED(st))
        fail_msg("%s: child died with signal %d (%s)", what, WTERMSIG(st),
                 strsignal(WTERMSIG(st)));
    if (WEXITSTATUS(st) != 0)
        fail_msg("%s: child failed check #%d (see its output above)", what,
                 WEXITSTATUS(st));
}

/* Sleeps ms milliseconds. */
static inline void kbt_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#endif
