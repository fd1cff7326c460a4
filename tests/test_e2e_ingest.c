/* End-to-end test of `kbsync ingest` on file trees: a real `kbsync leader`
 * on a loopback port, the real CLI. A directory of text, Markdown and HTML
 * files is ingested, stopped part way (a bad file, then kill -9), resumed;
 * a complete resume must write nothing; changed, shrunk and removed files
 * must be updated and deleted (--resume, --sync-deletes, --id-prefix); bad
 * input is named by FILE:LINE:COLUMN and changes nothing; the progress
 * line shows on a terminal only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "kb_proc.h"
#include "kb_test.h"
#include "kb_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <pty.h>
#include <sys/stat.h>

/* Two figures that must be equal, printed as integers. */
#define KBT_U64_EQ(a, b)                                                       \
    KBT_U64((unsigned long long)(a), (unsigned long long)(b))

#define DIM 64
#define NFILES 30

typedef struct e2e {
    char dir[256];
    char data[300], epfile[300], log[300], tree[300];
    char ep[256];
    pid_t leader;
} e2e_t;

static int setup(void **state)
{
    e2e_t *e = calloc(1, sizeof *e);
    snprintf(e->dir, sizeof e->dir, "/tmp/kbsync-e2e-ingest-XXXXXX");
    if (!mkdtemp(e->dir))
        return -1;
    snprintf(e->data, sizeof e->data, "%s/data", e->dir);
    snprintf(e->epfile, sizeof e->epfile, "%s/ep", e->dir);
    snprintf(e->log, sizeof e->log, "%s/leader.log", e->dir);
    snprintf(e->tree, sizeof e->tree, "%s/tree", e->dir);
    *state = e;
    /* each test's hash cache in its own directory, removed with it */
    char cache[300];
    snprintf(cache, sizeof cache, "%s/cache", e->dir);
    setenv("KBSYNC_CACHE_DIR", cache, 1);
    char dim[16];
    snprintf(dim, sizeof dim, "%d", DIM);
    char *argv[] = {
        "kbsync",          "leader",  "--data",   e->data,
        "--dim",           dim,       "--listen", "tcp://127.0.0.1:*",
        "--endpoint-file", e->epfile, NULL};
    e->leader = kbp_spawn(e->log, argv);
    if (e->leader <= 0 || kbp_wait_file(e->epfile, e->ep, sizeof e->ep, 20000))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    e2e_t *e = *state;
    kbp_kill_all();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", e->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", e->dir);
    free(e);
    return 0;
}

/* ------------------------------------------------------------- corpus */

/* Paragraphs of sentences, different for each (file, paragraph) pair. */
static void prose(FILE *f, int file, int paras, const char *tag)
{
    static const char *const w[] = {"leader",  "replica", "version",  "index",
                                    "vector",  "query",   "snapshot", "commit",
                                    "durable", "lag",     "écrit",    "größe"};
    for (int p = 0; p < paras; p++) {
        unsigned x = (unsigned)(file * 7919 + p * 104729 + 17);
        for (int s = 0; s < 6; s++) {
            fprintf(f, "%s%s file %d para %d", s ? " " : "", tag, file, p);
            for (int k = 0; k < 8; k++) {
                x = x * 1103515245u + 12345u;
                fprintf(f, " %s", w[(x >> 16) % 12]);
            }
            fputc('.', f);
        }
        fputs("\n\n", f);
    }
}

/* File i of the tree: .txt, .md or .html, in a few subdirectories. */
static void tree_path(const e2e_t *e, int i, char *p, size_t cap)
{
    static const char *const ext[] = {"txt", "md", "html"};
    snprintf(p, cap, "%s/%s/f%02d.%s", e->tree, i % 4 ? "docs" : "notes/deep",
             i, ext[i % 3]);
}

static void write_file(const e2e_t *e, int i, int paras, const char *tag)
{
    char p[400];
    tree_path(e, i, p, sizeof p);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    if (i % 3 == 2)
        fprintf(f,
                "<html><head><title>f%d</title><script>var x = "
                "'<p>no</p>';</script></head><body><p>",
                i);
    prose(f, i, paras, tag);
    if (i % 3 == 2)
        fputs("</p></body></html>\n", f);
    fclose(f);
}

static void make_tree(const e2e_t *e)
{
    char p[400];
    snprintf(p, sizeof p, "%s/notes/deep", e->tree);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' '%s/docs'", p, e->tree);
    assert_int_equal(system(cmd), 0);
    for (int i = 0; i < NFILES; i++)
        write_file(e, i, 3 + i % 4, "orig");
}

/* ------------------------------------------------------------ running */

typedef struct run {
    int rc;
    double written, failed, unchanged, deleted, version, cached;
    char out[1 << 16]; /* stderr and stdout */
} run_t;

/* Runs `kbsync ingest --to EP <args>` and parses its summary line. */
static void ingest(e2e_t *e, run_t *r, const char *fmt, ...)
{
    char args[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    r->rc = kbp_run(r->out, sizeof r->out, "'%s' ingest --to '%s' %s 2>&1",
                    kbp_bin(), e->ep, args);
    cJSON *s = kbp_last_json(r->out);
    if (!s)
        fail_msg("no summary line from ingest %s: %s", args, r->out);
    r->written = kbp_num(s, "written");
    r->failed = kbp_num(s, "failed");
    r->unchanged = kbp_num(s, "unchanged");
    r->deleted = kbp_num(s, "deleted");
    r->version = kbp_num(s, "version");
    r->cached = kbp_num(s, "cached");
    cJSON_Delete(s);
}

static double status_num(e2e_t *e, const char *key)
{
    static char out[65536];
    assert_int_equal(kbp_run(out, sizeof out, "'%s' status --to '%s' --json",
                             kbp_bin(), e->ep),
                     0);
    cJSON *o = kbp_last_json(out);
    assert_non_null(o);
    double v = kbp_num(o, key);
    cJSON_Delete(o);
    return v;
}

/* Ids listed under prefix with a "sha" (ingest's chunks); the count, and
 * whether `want` is among them. */
static int list_count(e2e_t *e, const char *prefix, const char *want,
                      int *found)
{
    static char out[1 << 20];
    assert_int_equal(kbp_run(out, sizeof out,
                             "'%s' list --to '%s' --prefix '%s' --meta-key sha",
                             kbp_bin(), e->ep, prefix),
                     0);
    int n = 0;
    if (found)
        *found = 0;
    for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n")) {
        cJSON *o = cJSON_Parse(l);
        assert_non_null(o);
        const cJSON *id = cJSON_GetObjectItem(o, "id");
        const cJSON *m = cJSON_GetObjectItem(o, "meta");
        if (cJSON_IsString(m) && strlen(m->valuestring) == 32) {
            n++;
            if (found && want && !strcmp(id->valuestring, want))
                *found = 1;
        }
        cJSON_Delete(o);
    }
    return n;
}

/* ------------------------------------------------------------- tests */

/* Stopped part way (a bad file; then kill -9), resumed, resumed again
 * (nothing written), then files changed, shrunk and removed. The listing
 * runs in pages of 3 ids (KBSYNC_TEST_LIST_PAGE), so that it takes many
 * pages in both of its ranges: an id either range lost would be written
 * again by the complete resume. */
static void test_e2e_ingest_resume_update_delete(void **state)
{
    e2e_t *e = *state;
    run_t *r = calloc(1, sizeof *r);
    setenv("KBSYNC_TEST_LIST_PAGE", "3", 1);
    make_tree(e);
    /* a document that is not a chunk: no run may touch it */
    char path[600];
    snprintf(path, sizeof path, "%s/other.jsonl", e->dir);
    FILE *f = fopen(path, "w");
    fputs("{\"id\": \"faq-1\", \"text\": \"not from a file\"}\n", f);
    fclose(f);
    ingest(e, r, "'%s'", path);
    assert_int_equal(r->rc, 0);

    ingest(e, r, "--dry-run '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    const int total = (int)r->written;
    assert_true(total > 2 * NFILES);

    /* 1. a file that is not UTF-8 (after f05): the run stops there, what was
     *    acknowledged stays, the batch being filled is not sent */
    char bad[400];
    snprintf(bad, sizeof bad, "%s/docs/f05x-bad.txt", e->tree);
    f = fopen(bad, "w");
    fputs("fine line\nnot \xE9 utf-8\n", f);
    fclose(f);
    ingest(e, r, "--resume --batch 7 '%s'", e->tree);
    assert_int_equal(r->rc, 1);
    if (!strstr(r->out, "docs/f05x-bad.txt:2:5: text: invalid UTF-8"))
        fail_msg("no FILE:LINE:COLUMN for the bad file in: %s", r->out);
    int first = (int)status_num(e, "docs") - 1;
    assert_true(first > 0 && first < total);
    KBT_U64_EQ(r->written, first);
    assert_int_equal(list_count(e, "", NULL, NULL), first);
    unlink(bad);

    /* 2. kill -9 part way through a slow run (one chunk per request) */
    char *argv[] = {"kbsync",   "ingest",  "--to", e->ep,
                    "--resume", "--batch", "1",    "--window",
                    "1",        e->tree,   NULL};
    char ilog[400];
    snprintf(ilog, sizeof ilog, "%s/ingest.log", e->dir);
    pid_t ing = kbp_spawn(ilog, argv);
    double v0 = status_num(e, "version");
    for (int i = 0; i < 2000 && status_num(e, "version") < v0 + 5; i++)
        usleep(5000);
    kbp_stop(ing, SIGKILL, 5000);
    /* a request already on its way may still be committed: wait until the
     * count holds still */
    int second = -1, now = (int)status_num(e, "docs") - 1;
    while (now != second) {
        second = now;
        usleep(200000);
        now = (int)status_num(e, "docs") - 1;
    }
    assert_true(second >= first);
    fprintf(stderr, "e2e: %d of %d chunks before the kill -9 run, %d after\n",
            first, total, second);

    /* 3. resume: only what is missing is written */
    ingest(e, r, "--resume '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    KBT_U64_EQ(r->written, total - second);
    KBT_U64_EQ(r->unchanged, second);
    KBT_U64_EQ(r->deleted, 0);
    assert_int_equal((int)status_num(e, "docs"), total + 1);
    assert_int_equal(list_count(e, "", NULL, NULL), total);

    /* 4. a complete resume writes nothing: the version stays put */
    double v = status_num(e, "version");
    ingest(e, r, "--resume '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    KBT_U64_EQ(r->written, 0);
    KBT_U64_EQ(r->unchanged, total);
    KBT_U64_EQ(r->deleted, 0);
    KBT_U64_EQ(r->version, v);
    KBT_U64_EQ(status_num(e, "version"), v);

    /* 5. f05 changed in its last paragraph, f07 shrunk to one paragraph,
     *    f10 removed: --resume updates f05, drops f07's extra chunks and
     *    leaves f10's; --sync-deletes then drops f10's */
    write_file(e, 5, 3 + 5 % 4 - 1, "orig");
    char p5[400];
    tree_path(e, 5, p5, sizeof p5);
    f = fopen(p5, "a");
    prose(f, 5, 1, "CHANGED");
    fclose(f);
    write_file(e, 7, 1, "orig");
    char p10[400];
    tree_path(e, 10, p10, sizeof p10);
    unlink(p10);
    ingest(e, r, "--dry-run '%s'", e->tree);
    const int total2 = (int)r->written;
    int f10;
    list_count(e, "docs/f10.md#0", "docs/f10.md#0", &f10);
    assert_true(f10);
    int n10 = list_count(e, "docs/f10.md#", NULL, NULL);
    int n7 = list_count(e, "docs/f07.md#", NULL, NULL);
    assert_true(n7 > 1 && n10 > 0);
    ingest(e, r, "--resume '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    assert_true(r->written >= 1 && r->written < 5); /* f05's last chunks */
    KBT_U64_EQ(r->deleted, n7 - 1);
    assert_int_equal(list_count(e, "docs/f07.md#", NULL, NULL), 1);
    assert_int_equal(list_count(e, "docs/f10.md#", NULL, NULL), n10);
    assert_int_equal(list_count(e, "", NULL, NULL), total2 + n10);
    ingest(e, r, "--sync-deletes '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    KBT_U64_EQ(r->written, 0);
    KBT_U64_EQ(r->deleted, n10);
    assert_int_equal(list_count(e, "docs/f10.md#", NULL, NULL), 0);
    assert_int_equal(list_count(e, "", NULL, NULL), total2);
    /* the document that is no chunk is still there */
    assert_int_equal((int)status_num(e, "docs"), total2 + 1);
    v = status_num(e, "version");
    ingest(e, r, "--sync-deletes '%s'", e->tree);
    KBT_U64_EQ(r->written + r->deleted, 0);
    KBT_U64_EQ(status_num(e, "version"), v);
    unsetenv("KBSYNC_TEST_LIST_PAGE");
    free(r);
}

/* The names of the cache files in e's cache directory: how many. */
static int cache_files(const e2e_t *e, char *last, size_t cap)
{
    char d[300];
    snprintf(d, sizeof d, "%s/cache", e->dir);
    DIR *dir = opendir(d);
    int n = 0;
    struct dirent *de;
    while (dir && (de = readdir(dir)))
        if (!strncmp(de->d_name, "ingest-", 7)) {
            n++;
            snprintf(last, cap, "%s/%s", d, de->d_name);
        }
    if (dir)
        closedir(dir);
    return n;
}

/* The hash cache: a resume of an unchanged tree reads no file; a file
 * rewritten in place with its size and mtime put back (only its ctime
 * tells) is read and its changed chunk written; --no-cache reads every
 * file; a damaged cache file is ignored and replaced. */
static void test_e2e_ingest_resume_hash_cache(void **state)
{
    e2e_t *e = *state;
    run_t *r = calloc(1, sizeof *r);
    make_tree(e);
    /* files changed within CLI_HCACHE_RACY_NS of a run are not cached */
    usleep(2200 * 1000);
    ingest(e, r, "'%s'", e->tree);
    assert_int_equal(r->rc, 0);
    const int total = (int)r->written;
    char cpath[600];
    assert_int_equal(cache_files(e, cpath, sizeof cpath), 1);

    ingest(e, r, "--resume '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    KBT_U64_EQ(r->written, 0);
    KBT_U64_EQ(r->unchanged, total);
    KBT_U64_EQ(r->cached, NFILES);

    /* f03 (text): one byte of its last paragraph changed in place */
    char p3[400];
    tree_path(e, 3, p3, sizeof p3);
    struct stat st0, st1;
    assert_int_equal(stat(p3, &st0), 0);
    FILE *f = fopen(p3, "r+");
    assert_non_null(f);
    char *buf = calloc(1, (size_t)st0.st_size + 1);
    assert_int_equal(fread(buf, 1, (size_t)st0.st_size, f), st0.st_size);
    char *o = strstr(buf + st0.st_size / 2, "orig");
    assert_non_null(o);
    assert_int_equal(fseek(f, o - buf, SEEK_SET), 0);
    fputs("ORIG", f);
    assert_int_equal(fclose(f), 0);
    free(buf);
    struct timespec t[2] = {st0.st_atim, st0.st_mtim};
    assert_int_equal(utimensat(AT_FDCWD, p3, t, 0), 0);
    assert_int_equal(stat(p3, &st1), 0);
    KBT_U64_EQ(st1.st_size, st0.st_size);
    KBT_U64_EQ(st1.st_mtim.tv_nsec, st0.st_mtim.tv_nsec);
    ingest(e, r, "--resume '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    if (r->written < 1)
        fail_msg("the changed chunk of f03 was not written: %s", r->out);
    KBT_U64_EQ(r->written + r->unchanged, total);
    KBT_U64_EQ(r->cached, NFILES - 1);

    /* --no-cache: every file read; still nothing to write */
    ingest(e, r, "--resume --no-cache '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    KBT_U64_EQ(r->written, 0);
    KBT_U64_EQ(r->cached, 0);

    /* a damaged cache file: ignored (every file read), then replaced */
    f = fopen(cpath, "r+");
    assert_non_null(f);
    fseek(f, 100, SEEK_SET);
    fputs("damage", f);
    fclose(f);
    ingest(e, r, "--resume '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    KBT_U64_EQ(r->written, 0);
    KBT_U64_EQ(r->cached, 0);
    ingest(e, r, "--resume '%s'", e->tree);
    KBT_U64_EQ(r->written, 0);
    /* all (f03 too, if its change is 2 s old by now: CLI_HCACHE_RACY_NS) */
    assert_true(r->cached >= NFILES - 1);
    assert_int_equal(cache_files(e, cpath, sizeof cpath), 1);
    free(r);
}

/* Two trees under two prefixes: --sync-deletes of one leaves the other. */
static void test_e2e_ingest_prefixes_keep_trees_apart(void **state)
{
    e2e_t *e = *state;
    run_t *r = calloc(1, sizeof *r);
    make_tree(e);
    ingest(e, r, "--id-prefix a/ '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    const int total = (int)r->written;
    ingest(e, r, "--id-prefix b/ '%s/docs'", e->tree);
    assert_int_equal(r->rc, 0);
    const int docs = (int)r->written;
    int found;
    list_count(e, "b/", "b/f01.md#0", &found); /* relative to the root */
    assert_true(found);
    char p[400];
    tree_path(e, 1, p, sizeof p);
    unlink(p);
    ingest(e, r, "--id-prefix a/ --sync-deletes '%s'", e->tree);
    assert_int_equal(r->rc, 0);
    assert_true(r->deleted > 0);
    assert_int_equal(list_count(e, "a/", NULL, NULL), total - (int)r->deleted);
    assert_int_equal(list_count(e, "b/", NULL, NULL), docs);
    free(r);
}

/* --resume starts listing the leader's chunks before it looks at the
 * files: a path that is not there is still reported at once, and the run
 * ends without waiting for a leader that does not answer (the listing is
 * given up). Fails when the listing is joined without being cancelled
 * (it would wait --timeout-ms for the silent leader). */
static void test_e2e_ingest_resume_bad_path_ends_at_once(void **state)
{
    e2e_t *e = *state;
    static char out[1 << 14];
    uint64_t t0 = kb_mono_us();
    int rc = kbp_run(out, sizeof out,
                     "'%s' ingest --to tcp://127.0.0.1:9 --timeout-ms 20000 "
                     "--resume '%s/no-such-tree' 2>&1",
                     kbp_bin(), e->dir);
    uint64_t ms = (kb_mono_us() - t0) / 1000u;
    assert_int_equal(rc, 1);
    KBT_CONTAINS(out, "no-such-tree");
    KBT_CONTAINS(out, "nothing sent");
    if (ms > 5000)
        fail_msg("the run took %llu ms", (unsigned long long)ms);
}

/* The resume's listing splits its two ranges at the middle file's id
 * path: when that path cannot be an id (too long), the listing still
 * works (one range) and only that file is refused. Before: the node
 * refused the split as ListRequest.after and nothing at all was sent. */
static void test_e2e_ingest_resume_split_at_a_bad_path(void **state)
{
    e2e_t *e = *state;
    run_t *r = calloc(1, sizeof *r);
    char t[300], cmd[4096], longdir[300];
    memset(longdir, 'y', 200);
    longdir[200] = 0;
    snprintf(t, sizeof t, "%s/split", e->dir);
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s/x' '%s/%s/yy' '%s/z' && "
             "echo 'first words here' > '%s/x/a.txt' && "
             "echo 'middle words here' > '%s/%s/yy/%s.txt' && "
             "echo 'last words here' > '%s/z/c.txt'",
             t, t, longdir, t, t, t, longdir, longdir, t);
    assert_int_equal(system(cmd), 0);
    ingest(e, r, "--keep-going --resume '%s'", t);
    KBT_CONTAINS(r->out, "bytes, over the 256");
    if (strstr(r->out, "nothing sent"))
        fail_msg("the resume gave up: %s", r->out);
    KBT_U64_EQ(r->written, 2);
    free(r);
}

/* Bad input: named with FILE:LINE:COLUMN: field, stops at --max-errors,
 * changes nothing of the bad records; --encoding decodes. */
static void test_e2e_ingest_errors_and_encoding(void **state)
{
    e2e_t *e = *state;
    run_t *r = calloc(1, sizeof *r);
    char j[400], t[400];
    snprintf(j, sizeof j, "%s/recs.jsonl", e->dir);
    FILE *f = fopen(j, "w");
    fputs("{\"id\": \"r1\", \"text\": \"one\"}\n"
          "{\"id\": \"r2\", \"text\": 12}\n"
          "{\"id\": \"r3\", \"text\": \"three\"}\n"
          "{\"id\": \"r4\", \"embedding\": [1, \"x\"]}\n"
          "{\"id\": \"r5\", \"text\": \"five\", \"colour\": 1}\n"
          "{\"id\": \"r6\", \"text\": \"six\"}\n",
          f);
    fclose(f);
    ingest(e, r, "'%s'", j);
    assert_int_equal(r->rc, 1);
    if (!strstr(r->out, "recs.jsonl:2:22: text: must be a string, not a "
                        "number"))
        fail_msg("unexpected message: %s", r->out);
    KBT_U64_EQ(r->written, 0);
    KBT_U64_EQ(status_num(e, "version"), 0);
    ingest(e, r, "--max-errors 2 '%s'", j);
    assert_int_equal(r->rc, 1);
    KBT_CONTAINS(r->out, "recs.jsonl:4:31: embedding[1]: must be a number");
    KBT_CONTAINS(r->out, "recs.jsonl:5:30: colour: unknown key");
    KBT_U64_EQ(r->written, 0);
    KBT_U64_EQ(status_num(e, "version"), 0);
    ingest(e, r, "--max-errors 3 '%s'", j);
    assert_int_equal(r->rc, 1); /* failed records: exit 1 */
    KBT_U64_EQ(r->written, 3);
    KBT_U64_EQ(r->failed, 3);
    KBT_U64_EQ(status_num(e, "docs"), 3);

    /* a Latin-1 file: refused naming it, then decoded */
    snprintf(t, sizeof t, "%s/latin.txt", e->dir);
    f = fopen(t, "w");
    fputs("Caf\xE9 cr\xE8me\nline two\n", f);
    fclose(f);
    double v = status_num(e, "version");
    ingest(e, r, "'%s'", t);
    assert_int_equal(r->rc, 1);
    KBT_CONTAINS(r->out, "latin.txt:1:4: text: invalid UTF-8 (byte 0xe9)");
    KBT_CONTAINS(r->out, "--encoding");
    KBT_U64_EQ(status_num(e, "version"), v);
    ingest(e, r, "--encoding latin1 '%s'", t);
    assert_int_equal(r->rc, 0);
    KBT_U64_EQ(r->written, 1);
    static char out[65536];
    assert_int_equal(
        kbp_run(out, sizeof out,
                "'%s' query --to '%s' --json -k 1 --text 'Café crème'",
                kbp_bin(), e->ep),
        0);
    KBT_CONTAINS(out, "Café crème");
    KBT_CONTAINS(out, "\"source\":\"latin.txt\"");

    /* JSONL records the leader would refuse fail alone, naming their line,
     * and do not take their batch with them. */
    snprintf(j, sizeof j, "%s/words.jsonl", e->dir);
    f = fopen(j, "w");
    fputs("{\"id\": \"w1\", \"text\": \"one\"}\n"
          "{\"id\": \"w2\", \"text\": \"----\"}\n"
          "{\"id\": \"w3\", \"metadata\": {\"a\": 1}}\n"
          "{\"id\": \"w4\", \"text\": \"four\"}\n",
          f);
    fclose(f);
    double v0 = status_num(e, "version");
    ingest(e, r, "--max-errors 2 '%s'", j);
    assert_int_equal(r->rc, 1);
    KBT_CONTAINS(r->out, "words.jsonl:2:");
    KBT_CONTAINS(r->out, "has no word to embed");
    KBT_CONTAINS(r->out, "words.jsonl:3: record: has neither");
    KBT_U64_EQ(r->written, 2);
    KBT_U64_EQ(r->failed, 2);
    KBT_U64_EQ(status_num(e, "version"), v0 + 2);

    /* A file without a word (a rule alone) has no chunk to write: the node
     * would refuse its text, so the ingest leaves it out and succeeds. */
    snprintf(t, sizeof t, "%s/rule.md", e->dir);
    f = fopen(t, "w");
    fputs("----\n\n* * *\n", f);
    fclose(f);
    v = status_num(e, "version");
    ingest(e, r, "'%s'", t);
    assert_int_equal(r->rc, 0);
    KBT_U64_EQ(r->written, 0);
    KBT_U64_EQ(r->failed, 0);
    KBT_U64_EQ(status_num(e, "version"), v);
    free(r);
}

/* --embed-on client computes the same vectors the leader would: the same
 * text ingested both ways scores the same for any query. */
static void test_e2e_ingest_client_embedding_matches_node(void **state)
{
    e2e_t *e = *state;
    run_t *r = calloc(1, sizeof *r);
    char t[400];
    snprintf(t, sizeof t, "%s/one.txt", e->dir);
    FILE *f = fopen(t, "w");
    prose(f, 3, 1, "twice");
    fclose(f);
    ingest(e, r, "--id-prefix n/ '%s'", t);
    assert_int_equal(r->rc, 0);
    ingest(e, r, "--id-prefix c/ --embed-on client '%s'", t);
    assert_int_equal(r->rc, 0);
    KBT_U64_EQ(r->written, 1);
    static char out[65536];
    assert_int_equal(kbp_run(out, sizeof out,
                             "'%s' query --to '%s' --json -k 2 --text "
                             "'replica version snapshot'",
                             kbp_bin(), e->ep),
                     0);
    cJSON *q = kbp_last_json(out);
    const cJSON *hits = cJSON_GetObjectItem(q, "hits");
    assert_int_equal(cJSON_GetArraySize(hits), 2);
    double s0 = kbp_num(cJSON_GetArrayItem(hits, 0), "score");
    double s1 = kbp_num(cJSON_GetArrayItem(hits, 1), "score");
    if (s0 <= 0 || s0 != s1)
        fail_msg("scores differ: %.9g %.9g (%s)", s0, s1, out);
    cJSON_Delete(q);
    free(r);
}

/* Reads everything fd gives until it closes. */
static size_t read_all_fd(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t k = read(fd, buf + n, cap - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
        if (n + 1 >= cap)
            break;
    }
    buf[n] = 0;
    return n;
}

/* On a terminal a progress line is drawn (and redrawn with \r); in a
 * pipe, stderr gets one summary line only. */
static void test_e2e_ingest_progress_terminal_only(void **state)
{
    e2e_t *e = *state;
    make_tree(e);
    static char out[1 << 16];
    int fd;
    pid_t pid = forkpty(&fd, NULL, NULL, NULL);
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(kbp_bin(), "kbsync", "ingest", "--to", e->ep, "--batch", "3",
              "--window", "1", e->tree, (char *)NULL);
        _exit(127);
    }
    read_all_fd(fd, out, sizeof out); /* EIO once the child is gone */
    close(fd);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    KBT_CONTAINS(out, "\r\033[Kkbsync ingest: ");
    KBT_CONTAINS(out, "MB/s, ETA ");
    KBT_CONTAINS(out, "files, ");

    /* a pipe: no progress line, one summary line on stderr */
    int rc = kbp_run(out, sizeof out,
                     "'%s' ingest --to '%s' --resume '%s' 2>&1 >/dev/null",
                     kbp_bin(), e->ep, e->tree);
    assert_int_equal(rc, 0);
    assert_null(strchr(out, '\r'));
    assert_null(strstr(out, "ETA"));
    KBT_CONTAINS(out, "files (");
    assert_int_equal(strchr(out, '\n') - out + 1, (long)strlen(out));
}

int main(void)
{
    atexit(kbp_kill_all);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_e2e_ingest_resume_hash_cache,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_ingest_resume_update_delete,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_ingest_prefixes_keep_trees_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_ingest_errors_and_encoding,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_ingest_resume_bad_path_ends_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_ingest_resume_split_at_a_bad_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_ingest_progress_terminal_only,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_ingest_client_embedding_matches_node, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
