/* Tests of cli_hcache, the chunk hash cache of `kbsync ingest`: what a
 * run puts comes back in the next run for a file with the same identity
 * and times and for no other; a file changed too recently is not
 * recorded; a torn, altered, foreign or malformed cache file is ignored
 * whole; a run that changes nothing writes nothing; old cache files are
 * trimmed. Real files in a temp dir. */
#include "kb_test.h"

#include <errno.h>
#include <fcntl.h>

#include "cli_hcache.h"

#define NS_PER_S 1000000000LL
/* "Now", read once: a file's times computed from it in one place must
 * equal those computed in another, whichever second each one ran in (the
 * round trip failed under ASan when a second ticked between the put and
 * the get). */
static int64_t test_now(void)
{
    static int64_t t;
    if (!t)
        t = (int64_t)time(NULL) * NS_PER_S;
    return t;
}
#define NOW test_now()

/* A file as a walk would see it: long unchanged (times a day ago). */
static cli_file_t file_at(uint64_t ino, uint64_t size)
{
    cli_file_t f = {0};
    f.path = f.rel = "x.txt";
    f.kind = CLI_KIND_TEXT;
    f.dev = 42;
    f.ino = ino;
    f.size = size;
    f.mtime_ns = NOW - 86400 * NS_PER_S;
    f.ctime_ns = f.mtime_ns + 5;
    return f;
}

/* ns chunks' hashes, different for each seed. */
static void hashes(uint64_t *h, size_t ns, uint64_t seed)
{
    for (size_t i = 0; i < 2 * ns; i++)
        h[i] = seed * 1000003u + i * 7919u + 1;
}

static cli_hcache_t *open_ok(const char *dir, const char *key,
                             const char **why)
{
    cli_hcache_t *c = NULL;
    assert_int_equal(cli_hcache_open(&c, dir, key, NOW, why), 0);
    assert_non_null(c);
    return c;
}

static void save_ok(cli_hcache_t *c)
{
    char err[512] = "";
    KBT_OK(cli_hcache_save(c, err, sizeof err), err);
}

/* Puts files 1..n (file i: inode i, 100 * i bytes, i + 2 chunks whose
 * hashes are seeded i, except file 3's, seeded seed3). */
static void put_files(cli_hcache_t *c, uint64_t n, uint64_t seed3)
{
    uint64_t h[2 * 5];
    for (uint64_t i = 1; i <= n; i++) {
        cli_file_t f = file_at(i, 100 * i);
        hashes(h, (size_t)i + 2, i == 3 ? seed3 : i);
        assert_int_equal(cli_hcache_put(c, &f, h, (size_t)i + 2), 0);
    }
}

/* Three files put and saved, for the next open. */
static void put_three(const char *dir, const char *key)
{
    cli_hcache_t *c = open_ok(dir, key, NULL);
    put_files(c, 3, 3);
    assert_int_equal(cli_hcache_recorded(c), 3);
    save_ok(c);
    cli_hcache_free(c);
}

static void test_cli_hcache_round_trip(void **state)
{
    (void)state;
    char d[256];
    kbt_tmpdir(d, sizeof d, "hcache");
    const char *why = NULL;
    cli_hcache_t *c = open_ok(d, "k1", &why);
    assert_string_equal(why, "no cache file yet");
    cli_file_t f1 = file_at(1, 100);
    size_t ns = 9;
    assert_null(cli_hcache_get(c, &f1, &ns));
    cli_hcache_free(c);
    put_three(d, "k1");

    c = open_ok(d, "k1", &why);
    assert_null(why);
    assert_int_equal(cli_hcache_loaded(c), 3);
    uint64_t h[2 * 5];
    for (uint64_t i = 1; i <= 3; i++) {
        cli_file_t f = file_at(i, 100 * i);
        const uint64_t *got = cli_hcache_get(c, &f, &ns);
        assert_non_null(got);
        assert_int_equal(ns, i + 2);
        hashes(h, ns, i);
        assert_memory_equal(got, h, 2 * ns * sizeof *h);
    }
    /* any difference in identity or times: not this file's hashes */
    cli_file_t f = file_at(2, 200);
    f.size++;
    assert_null(cli_hcache_get(c, &f, &ns));
    f = file_at(2, 200);
    f.mtime_ns++;
    assert_null(cli_hcache_get(c, &f, &ns));
    f = file_at(2, 200);
    f.ctime_ns++; /* rewritten in place, size and mtime put back */
    assert_null(cli_hcache_get(c, &f, &ns));
    f = file_at(2, 200);
    f.ino = 7;
    assert_null(cli_hcache_get(c, &f, &ns));
    f = file_at(2, 200);
    f.dev = 43;
    assert_null(cli_hcache_get(c, &f, &ns));
    f = file_at(2, 200);
    f.kind = CLI_KIND_HTML; /* a hard link read as HTML */
    assert_null(cli_hcache_get(c, &f, &ns));
    cli_hcache_free(c);

    /* another key (other settings or roots): another file, empty */
    c = open_ok(d, "k2", &why);
    assert_int_equal(cli_hcache_loaded(c), 0);
    assert_null(cli_hcache_get(c, &f1, &ns));
    cli_hcache_free(c);
    kbt_rmrf(d);
}

static void test_cli_hcache_recent_files_not_recorded(void **state)
{
    (void)state;
    char d[256];
    kbt_tmpdir(d, sizeof d, "hcache");
    cli_hcache_t *c = open_ok(d, "k", NULL);
    uint64_t h[2] = {1, 2};
    cli_file_t f = file_at(1, 10);
    f.ctime_ns = NOW - CLI_HCACHE_RACY_NS + NS_PER_S / 2; /* too recent */
    assert_int_equal(cli_hcache_put(c, &f, h, 1), 0);
    f = file_at(2, 10);
    f.mtime_ns = NOW + 3600 * NS_PER_S; /* in the future */
    assert_int_equal(cli_hcache_put(c, &f, h, 1), 0);
    f = file_at(3, 10);
    f.ino = 0; /* standard input */
    assert_int_equal(cli_hcache_put(c, &f, h, 1), 0);
    assert_int_equal(cli_hcache_recorded(c), 0);
    f = file_at(4, 10);
    f.ctime_ns = NOW - CLI_HCACHE_RACY_NS - NS_PER_S / 2; /* old enough */
    assert_int_equal(cli_hcache_put(c, &f, h, 1), 0);
    assert_int_equal(cli_hcache_recorded(c), 1);
    save_ok(c);
    cli_hcache_free(c);
    c = open_ok(d, "k", NULL);
    assert_int_equal(cli_hcache_loaded(c), 1);
    size_t ns;
    assert_non_null(cli_hcache_get(c, &f, &ns));
    f = file_at(1, 10);
    f.ctime_ns = NOW - CLI_HCACHE_RACY_NS + NS_PER_S / 2;
    assert_null(cli_hcache_get(c, &f, &ns));
    cli_hcache_free(c);
    kbt_rmrf(d);
}

/* The cache file of key "k" in d, read whole into *len bytes. */
static uint64_t *read_cache(const char *d, char *path, size_t plen,
                            size_t *len)
{
    cli_hcache_t *c = open_ok(d, "k", NULL);
    snprintf(path, plen, "%s", cli_hcache_path(c));
    cli_hcache_free(c);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint64_t *w = malloc(1 << 16);
    *len = fread(w, 1, 1 << 16, f);
    fclose(f);
    return w;
}

static void write_cache(const char *path, const void *w, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(w, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Opens key "k" in d and checks that the file was ignored, and why. */
static void expect_ignored(const char *d, const char *why_want)
{
    const char *why = NULL;
    cli_hcache_t *c = open_ok(d, "k", &why);
    assert_int_equal(cli_hcache_loaded(c), 0);
    cli_file_t f = file_at(1, 100);
    size_t ns;
    assert_null(cli_hcache_get(c, &f, &ns));
    assert_non_null(why);
    if (!strstr(why, why_want))
        fail_msg("ignored because \"%s\", wanted \"%s\"", why, why_want);
    cli_hcache_free(c);
}

static void test_cli_hcache_bad_files_ignored(void **state)
{
    (void)state;
    char d[256], path[512];
    kbt_tmpdir(d, sizeof d, "hcache");
    put_three(d, "k");
    size_t len;
    uint64_t *good = read_cache(d, path, sizeof path, &len);
    size_t nw = len / 8;
    assert_int_equal(len, 8 * (8 + 3 * 7 + 2 * (3 + 4 + 5) + 2));
    uint64_t *w = malloc(len);

    /* a flipped bit anywhere */
    memcpy(w, good, len);
    ((unsigned char *)w)[8 * 8 + 3 * 8 + 1] ^= 4; /* a file's size */
    write_cache(path, w, len);
    expect_ignored(d, "checksum");
    /* torn: cut short, at a word or not, or empty */
    write_cache(path, good, len - 8);
    expect_ignored(d, "checksum");
    write_cache(path, good, len - 3);
    expect_ignored(d, "truncated");
    write_cache(path, good, 0);
    expect_ignored(d, "truncated");
    /* whole and checksummed, but wrong inside (the trailer recomputed) */
    struct {
        size_t word;
        uint64_t value;
        const char *why;
    } bad[] = {
        {0, 0x3148434143484B42ull, "not a cache file"}, /* "KBHCACH1" */
        {1, 0x0807060504030201ull, "not a cache file"}, /* byte order */
        {2, 12345, "other settings"},                  /* another key */
        {4, 1000000, "impossible"},                    /* file count */
        {4, 2, "bytes after"},                         /* one file left over */
        {4, 4, "runs past"},                           /* one file missing */
        {8 + 6, 1u << 30, "runs past"},                /* a chunk count */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        memcpy(w, good, len);
        w[bad[i].word] = bad[i].value;
        cli_hash128(w, (nw - 2) * 8, 0x6B62686361636865ull, w + nw - 2);
        write_cache(path, w, len);
        expect_ignored(d, bad[i].why);
    }
    /* the good file again: read */
    write_cache(path, good, len);
    cli_hcache_t *c = open_ok(d, "k", NULL);
    assert_int_equal(cli_hcache_loaded(c), 3);
    cli_hcache_free(c);
    free(w);
    free(good);
    kbt_rmrf(d);
}

static void test_cli_hcache_unchanged_run_writes_nothing(void **state)
{
    (void)state;
    char d[256];
    kbt_tmpdir(d, sizeof d, "hcache");
    put_three(d, "k");
    cli_hcache_t *c = open_ok(d, "k", NULL);
    char path[512];
    snprintf(path, sizeof path, "%s", cli_hcache_path(c));
    struct stat st0, st1;
    struct timespec hour_ago[2] = {{time(NULL) - 3600, 0},
                                   {time(NULL) - 3600, 0}};
    assert_int_equal(utimensat(AT_FDCWD, path, hour_ago, 0), 0);
    assert_int_equal(stat(path, &st0), 0);
    uint64_t h[2 * 5];
    put_files(c, 3, 3); /* the same three again */
    save_ok(c);
    cli_hcache_free(c);
    assert_int_equal(stat(path, &st1), 0);
    KBT_U64(st1.st_ino, st0.st_ino); /* not replaced */
    /* but its time says it was used (for hc_trim) */
    assert_true(st1.st_mtim.tv_sec > time(NULL) - 60);

    /* one file's hashes differ: the file is written anew, with all three */
    c = open_ok(d, "k", NULL);
    put_files(c, 3, 99);
    save_ok(c);
    cli_hcache_free(c);
    assert_int_equal(stat(path, &st1), 0);
    assert_true(st1.st_ino != st0.st_ino);
    c = open_ok(d, "k", NULL);
    assert_int_equal(cli_hcache_loaded(c), 3);
    cli_file_t f = file_at(3, 300);
    size_t ns;
    const uint64_t *got = cli_hcache_get(c, &f, &ns);
    assert_non_null(got);
    hashes(h, 5, 99);
    assert_memory_equal(got, h, sizeof h);
    f = file_at(1, 100);
    assert_non_null(cli_hcache_get(c, &f, &ns));

    /* a file fewer (gone from the tree): written, without it */
    assert_int_equal(stat(path, &st0), 0);
    put_files(c, 2, 3);
    save_ok(c);
    cli_hcache_free(c);
    assert_int_equal(stat(path, &st1), 0);
    assert_true(st1.st_ino != st0.st_ino);
    c = open_ok(d, "k", NULL);
    assert_int_equal(cli_hcache_loaded(c), 2);
    cli_hcache_free(c);
    kbt_rmrf(d);
}

/* d/name: a file written age seconds ago (0: now); its path in p. */
static void put_aged(const char *d, const char *name, time_t age, char *p,
                     size_t plen)
{
    kbt_path(p, plen, d, name);
    write_cache(p, "x", 1);
    struct timespec t[2] = {{time(NULL) - age, 0}, {time(NULL) - age, 0}};
    if (age)
        assert_int_equal(utimensat(AT_FDCWD, p, t, 0), 0);
}

static void test_cli_hcache_old_files_trimmed(void **state)
{
    (void)state;
    char d[256], p[512], name[64];
    kbt_tmpdir(d, sizeof d, "hcache");
    /* 40 cache files of other trees, file i written i + 1 hours ago; a
     * temporary file of a killed run, two days old; another file */
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "ingest-old%02d.cache", i);
        put_aged(d, name, 3600 * (i + 1), p, sizeof p);
    }
    put_aged(d, ".ingest-AbCdEf", 2 * 86400, p, sizeof p);
    put_aged(d, "notes.txt", 0, p, sizeof p);

    put_three(d, "k"); /* the newest: 41 cache files, 32 kept */
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "ingest-old%02d.cache", i);
        kbt_path(p, sizeof p, d, name);
        if (kbt_exists(p) != (i < 31))
            fail_msg("%s: %s", name, i < 31 ? "removed" : "kept");
    }
    kbt_path(p, sizeof p, d, ".ingest-AbCdEf");
    assert_false(kbt_exists(p));
    kbt_path(p, sizeof p, d, "notes.txt");
    assert_true(kbt_exists(p));
    cli_hcache_t *c = open_ok(d, "k", NULL);
    assert_int_equal(cli_hcache_loaded(c), 3);
    cli_hcache_free(c);
    kbt_rmrf(d);
}

static void test_cli_hcache_dirs(void **state)
{
    (void)state;
    char d[256], p[512];
    kbt_tmpdir(d, sizeof d, "hcache");
    /* the directory is made, 0700, on the first save */
    kbt_path(p, sizeof p, d, "a/b/kbsync");
    put_three(p, "k");
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* a directory that cannot be made: a clear error, nothing else */
    kbt_path(p, sizeof p, d, "file");
    write_cache(p, "x", 1);
    kbt_path(p, sizeof p, d, "file/sub");
    cli_hcache_t *c = open_ok(p, "k", NULL);
    cli_file_t f = file_at(1, 1);
    uint64_t h[2] = {1, 2};
    assert_int_equal(cli_hcache_put(c, &f, h, 1), 0);
    char err[512] = "";
    assert_int_not_equal(cli_hcache_save(c, err, sizeof err), 0);
    if (!strstr(err, "file/sub") || !strstr(err, "directory"))
        fail_msg("error: %s", err);
    cli_hcache_free(c);

    /* a directory others may write in: not used, and save says why */
    kbt_path(p, sizeof p, d, "shared");
    assert_int_equal(mkdir(p, 0700), 0);
    put_three(p, "k");
    assert_int_equal(chmod(p, 0777), 0);
    const char *why = NULL;
    c = open_ok(p, "k", &why);
    assert_non_null(why);
    assert_non_null(strstr(why, "writable by others"));
    size_t ns;
    f = file_at(1, 100);
    assert_null(cli_hcache_get(c, &f, &ns));
    assert_int_equal(cli_hcache_put(c, &f, h, 1), 0);
    assert_int_equal(cli_hcache_recorded(c), 0);
    assert_int_not_equal(cli_hcache_save(c, err, sizeof err), 0);
    if (!strstr(err, "shared") || !strstr(err, "writable by others"))
        fail_msg("error: %s", err);
    cli_hcache_free(c);
    assert_int_equal(chmod(p, 0700), 0);
    c = open_ok(p, "k", NULL);
    assert_int_equal(cli_hcache_loaded(c), 3);
    cli_hcache_free(c);
    /* an empty directory name: not used */
    c = open_ok("", "k", &why);
    assert_non_null(why);
    assert_int_not_equal(cli_hcache_save(c, err, sizeof err), 0);
    cli_hcache_free(c);

    /* the default: $KBSYNC_CACHE_DIR, $XDG_CACHE_HOME/kbsync,
     * $HOME/.cache/kbsync, none */
    const char *names[] = {"KBSYNC_CACHE_DIR", "XDG_CACHE_HOME", "HOME"};
    char *saved[3];
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(names[i]);
        saved[i] = v ? strdup(v) : NULL;
    }
    setenv("KBSYNC_CACHE_DIR", "/x/kb", 1);
    setenv("XDG_CACHE_HOME", "/x/xdg", 1);
    setenv("HOME", "/x/home", 1);
    char *dir = cli_hcache_default_dir();
    assert_string_equal(dir, "/x/kb");
    free(dir);
    unsetenv("KBSYNC_CACHE_DIR");
    assert_string_equal(dir = cli_hcache_default_dir(), "/x/xdg/kbsync");
    free(dir);
    unsetenv("XDG_CACHE_HOME");
    assert_string_equal(dir = cli_hcache_default_dir(), "/x/home/.cache/kbsync");
    free(dir);
    unsetenv("HOME");
    assert_null(cli_hcache_default_dir());
    for (int i = 0; i < 3; i++) {
        if (saved[i])
            setenv(names[i], saved[i], 1);
        free(saved[i]);
    }
    kbt_rmrf(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_hcache_round_trip),
        cmocka_unit_test(test_cli_hcache_recent_files_not_recorded),
        cmocka_unit_test(test_cli_hcache_bad_files_ignored),
        cmocka_unit_test(test_cli_hcache_unchanged_run_writes_nothing),
        cmocka_unit_test(test_cli_hcache_old_files_trimmed),
        cmocka_unit_test(test_cli_hcache_dirs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
