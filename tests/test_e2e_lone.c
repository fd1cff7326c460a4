/* End-to-end test of a lone node: starts a real `kbsync leader` process on
 * a loopback port and drives it with the real CLI (ingest, query, delete,
 * status), including bad input, kill -9 and restart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "kb_err.h"
#include "kb_proc.h"

#include "kbsync.pb-c.h"

#include <dirent.h>
#include <zmq.h>

#define DIM 16
#define NDOCS 300

typedef struct e2e {
    char dir[256];
    char data[300], epfile[300], log[300];
    char ep[256];
    pid_t leader;
} e2e_t;

static void write_jsonl(const char *path, int from, int to, float bump)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = from; i < to; i++) {
        fprintf(f,
                "{\"id\": \"doc-%d\", \"text\": \"document number %d\", "
                "\"metadata\": {\"n\": %d, \"tag\": \"t%d\"}, \"embedding\": [",
                i, i, i, i % 3);
        for (int j = 0; j < DIM; j++)
            fprintf(f, "%s%.9g", j ? ", " : "", kbp_vec(i, j) + bump);
        fprintf(f, "]}\n");
    }
    fclose(f);
}

/* with_dim: 0 = reuse the stored dim, else create with that dim */
static void start_leader(e2e_t *e, int with_dim)
{
    unlink(e->epfile);
    char dim[16];
    snprintf(dim, sizeof dim, "%d", with_dim);
    char *argv_dim[] = {
        "kbsync",          "leader",  "--data",   e->data,
        "--dim",           dim,       "--listen", "tcp://127.0.0.1:*",
        "--endpoint-file", e->epfile, NULL};
    char *argv_nodim[] = {"kbsync",          "leader",   "--data",
                          e->data,           "--listen", "tcp://127.0.0.1:*",
                          "--endpoint-file", e->epfile,  NULL};
    e->leader = kbp_spawn(e->log, with_dim ? argv_dim : argv_nodim);
    assert_true(e->leader > 0);
    assert_int_equal(kbp_wait_file(e->epfile, e->ep, sizeof e->ep, 20000), 0);
}

static int setup(void **state)
{
    e2e_t *e = calloc(1, sizeof *e);
    snprintf(e->dir, sizeof e->dir, "/tmp/kbsync-e2e-XXXXXX");
    if (!mkdtemp(e->dir))
        return -1;
    snprintf(e->data, sizeof e->data, "%s/data", e->dir);
    snprintf(e->epfile, sizeof e->epfile, "%s/ep", e->dir);
    snprintf(e->log, sizeof e->log, "%s/leader.log", e->dir);
    *state = e;
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

static cJSON *status_json(e2e_t *e)
{
    static char out[65536];
    int rc = kbp_run(out, sizeof out, "'%s' status --to '%s' --json", kbp_bin(),
                     e->ep);
    assert_int_equal(rc, 0);
    cJSON *o = kbp_last_json(out);
    assert_non_null(o);
    return o;
}

static cJSON *query_json(e2e_t *e, int doc, int k)
{
    static char out[1 << 20];
    char v[2048];
    int rc = kbp_run(
        out, sizeof out, "'%s' query --to '%s' -k %d --json --vector '%s'",
        kbp_bin(), e->ep, k, kbp_vector_arg(doc, DIM, v, sizeof v));
    assert_int_equal(rc, 0);
    cJSON *o = kbp_last_json(out);
    assert_non_null(o);
    return o;
}

static int count_id(const cJSON *q, const char *id, int *rank)
{
    const cJSON *hits = cJSON_GetObjectItemCaseSensitive(q, "hits");
    int n = 0, i = 0;
    const cJSON *h;
    cJSON_ArrayForEach(h, hits)
    {
        const cJSON *hid = cJSON_GetObjectItemCaseSensitive(h, "id");
        if (cJSON_IsString(hid) && !strcmp(hid->valuestring, id)) {
            if (rank && n == 0)
                *rank = i;
            n++;
        }
        i++;
    }
    return n;
}

/* A node re-executes itself with glibc's malloc on transparent huge pages
 * when the kernel hands them out on request, and not when told not to. */
static int environ_has(pid_t pid, const char *what)
{
    char path[64], buf[65536];
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i++)
        if (!buf[i])
            buf[i] = '\n';
    buf[n] = 0;
    return strstr(buf, what) != NULL;
}

/* The process keeps its name across the exec (not "exe"). */
static void assert_comm_kbsync(pid_t pid)
{
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(comm, sizeof comm, f));
    fclose(f);
    assert_string_equal(comm, "kbsync\n");
}

static void test_e2e_lone_huge_pages(void **state)
{
    e2e_t *e = *state;
    char mode[128] = "";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f) {
        if (!fgets(mode, sizeof mode, f))
            mode[0] = 0;
        fclose(f);
    }
    if (!strstr(mode, "[madvise]"))
        skip(); /* nothing to ask for: "always" or "never" */
    unsetenv("GLIBC_TUNABLES");
    start_leader(e, DIM);
    /* it serves after the exec, so the exec has happened */
    cJSON *st = status_json(e);
    assert_int_equal((int)kbp_num(st, "dim"), DIM);
    cJSON_Delete(st);
    assert_true(environ_has(e->leader, "glibc.malloc.hugetlb=1"));
    assert_comm_kbsync(e->leader);
    assert_int_equal(kbp_stop(e->leader, SIGTERM, 10000), 0);

    setenv("KBSYNC_HUGE_PAGES", "0", 1);
    start_leader(e, 0);
    unsetenv("KBSYNC_HUGE_PAGES");
    cJSON *st2 = status_json(e);
    cJSON_Delete(st2);
    assert_false(environ_has(e->leader, "glibc.malloc.hugetlb"));
}

/* Threads of a process now. */
static int thread_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* `kbsync ingest --dry-run -` reading a pipe: its pid (write end of its
 * standard input in *wfd). */
static pid_t ingest_on_pipe(int *wfd)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(p[0], 0);
        close(p[0]);
        close(p[1]);
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(kbp_bin(), kbp_bin(), "ingest", "--dry-run", "-", (char *)0);
        _exit(127);
    }
    close(p[0]);
    *wfd = p[1];
    return pid;
}

/* Whether pid runs kbsync and sits in read(0, ...): started, and waiting
 * for its input. */
static int reading_stdin(pid_t pid)
{
    char path[64], exe[4096], want[4096], sc[128] = "";
    snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
    ssize_t n = readlink(path, exe, sizeof exe - 1);
    if (n <= 0 || !realpath(kbp_bin(), want))
        return 0;
    exe[n] = 0;
    if (strcmp(exe, want))
        return 0;
    snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int ok = fgets(sc, sizeof sc, f) && !strncmp(sc, "0 0x0 ", 6);
    fclose(f);
    return ok;
}

static void ingest_finish(pid_t pid, int wfd)
{
    const char *line = "{\"id\":\"a\",\"text\":\"one word\"}\n";
    assert_int_equal(write(wfd, line, strlen(line)), (ssize_t)strlen(line));
    close(wfd);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* `kbsync ingest` runs without OpenBLAS's threads (it never calls BLAS;
 * the thread OpenBLAS starts per further core would spin on a core the
 * nodes need). */
static void test_e2e_lone_ingest_without_blas_threads(void **state)
{
    (void)state;
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
        skip(); /* OpenBLAS starts no thread on one core */
    char *omp = getenv("OMP_NUM_THREADS") ? strdup(getenv("OMP_NUM_THREADS"))
                                          : NULL;
    unsetenv("OMP_NUM_THREADS"); /* the test environment sets it */
    char *blas = getenv("OPENBLAS_NUM_THREADS")
                     ? strdup(getenv("OPENBLAS_NUM_THREADS"))
                     : NULL;
    unsetenv("OPENBLAS_NUM_THREADS");
    int wfd;
    pid_t pid = ingest_on_pipe(&wfd);
    if (omp)
        setenv("OMP_NUM_THREADS", omp, 1);
    if (blas)
        setenv("OPENBLAS_NUM_THREADS", blas, 1);
    free(omp);
    free(blas);
    int ready = 0;
    for (int i = 0; i < 500 && !ready; i++) {
        ready = reading_stdin(pid);
        if (!ready)
            usleep(10000);
    }
    int n = thread_count(pid);
    ingest_finish(pid, wfd);
    assert_true(ready);
    if (n != 1)
        fail_msg("kbsync ingest runs %d threads while it reads (1 wanted)",
                 n);
}

static void test_e2e_lone_ingest_query_delete_restart(void **state)
{
    e2e_t *e = *state;
    char path[400], out[1 << 16];
    start_leader(e, DIM);

    /* ingest: every doc acknowledged, version = number of writes */
    snprintf(path, sizeof path, "%s/docs.jsonl", e->dir);
    write_jsonl(path, 0, NDOCS, 0);
    int rc = kbp_run(out, sizeof out, "'%s' ingest --to '%s' --batch 64 '%s'",
                     kbp_bin(), e->ep, path);
    assert_int_equal(rc, 0);
    cJSON *s = kbp_last_json(out);
    assert_non_null(s);
    assert_int_equal((int)kbp_num(s, "written"), NDOCS);
    assert_int_equal((int)kbp_num(s, "failed"), 0);
    assert_int_equal((int)kbp_num(s, "version"), NDOCS);
    assert_true(kbp_num(s, "seconds") >= 0);
    cJSON_Delete(s);

    cJSON *st = status_json(e);
    assert_string_equal(cJSON_GetObjectItem(st, "role")->valuestring, "leader");
    assert_true(cJSON_IsString(cJSON_GetObjectItem(st, "node_id")));
    assert_int_equal((int)kbp_num(st, "version"), NDOCS);
    assert_int_equal((int)kbp_num(st, "leader_version"), NDOCS);
    assert_int_equal((int)kbp_num(st, "lag_ops"), 0);
    assert_int_equal((int)kbp_num(st, "lag_ms"), 0);
    assert_int_equal((int)kbp_num(st, "docs"), NDOCS);
    assert_int_equal((int)kbp_num(st, "dim"), DIM);
    cJSON_Delete(st);

    /* query by a document's own vector: it is the top hit, with metadata */
    cJSON *q = query_json(e, 7, 5);
    int rank = -1;
    assert_int_equal(count_id(q, "doc-7", &rank), 1);
    assert_int_equal(rank, 0);
    assert_int_equal((int)kbp_num(q, "version"), NDOCS);
    assert_int_equal((int)kbp_num(q, "leader_version"), NDOCS);
    assert_int_equal((int)kbp_num(q, "lag_ops"), 0);
    const cJSON *h0 = cJSON_GetArrayItem(cJSON_GetObjectItem(q, "hits"), 0);
    assert_string_equal(cJSON_GetObjectItem(h0, "text")->valuestring,
                        "document number 7");
    const cJSON *meta = cJSON_GetObjectItem(h0, "metadata");
    assert_true(cJSON_IsObject(meta));
    assert_int_equal((int)kbp_num(meta, "n"), 7);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(q, "hits")), 5);
    cJSON_Delete(q);

    /* upsert the same ids with moved vectors: never two hits per id */
    snprintf(path, sizeof path, "%s/update.jsonl", e->dir);
    write_jsonl(path, 0, 20, 0.05f);
    rc = kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s'", kbp_bin(),
                 e->ep, path);
    assert_int_equal(rc, 0);
    s = kbp_last_json(out);
    assert_int_equal((int)kbp_num(s, "version"), NDOCS + 20);
    cJSON_Delete(s);
    q = query_json(e, 7, 50);
    assert_int_equal(count_id(q, "doc-7", NULL), 1);
    cJSON_Delete(q);
    st = status_json(e);
    assert_int_equal((int)kbp_num(st, "docs"), NDOCS);
    cJSON_Delete(st);

    /* delete: gone from search; missing ids take no version */
    rc = kbp_run(out, sizeof out, "'%s' delete --to '%s' doc-7 no-such-doc",
                 kbp_bin(), e->ep);
    assert_int_equal(rc, 0);
    s = kbp_last_json(out);
    assert_int_equal((int)kbp_num(s, "written"), 1);
    assert_int_equal((int)kbp_num(s, "missing"), 1);
    assert_int_equal((int)kbp_num(s, "version"), NDOCS + 21);
    cJSON_Delete(s);
    q = query_json(e, 7, 50);
    assert_int_equal(count_id(q, "doc-7", NULL), 0);
    cJSON_Delete(q);

    /* kill -9, restart without --dim: everything acknowledged is there */
    kill(e->leader, SIGKILL);
    waitpid(e->leader, NULL, 0);
    kbp_forget(e->leader);
    start_leader(e, 0);
    st = status_json(e);
    assert_int_equal((int)kbp_num(st, "version"), NDOCS + 21);
    assert_int_equal((int)kbp_num(st, "docs"), NDOCS - 1);
    cJSON_Delete(st);
    q = query_json(e, 8, 3);
    rank = -1;
    assert_int_equal(count_id(q, "doc-8", &rank), 1);
    assert_int_equal(rank, 0);
    assert_int_equal(count_id(q, "doc-7", NULL), 0);
    cJSON_Delete(q);

    /* SIGTERM: clean exit, status 0 */
    int ws = kbp_stop(e->leader, SIGTERM, 10000);
    assert_true(ws >= 0 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0);

    /* restart with a different dim is refused with a clear error */
    char dim2[] = "32";
    char *argv_bad[] = {"kbsync", "leader", "--data",   e->data,
                        "--dim",  dim2,     "--listen", "tcp://127.0.0.1:*",
                        NULL};
    pid_t bad = kbp_spawn(e->log, argv_bad);
    int bst;
    waitpid(bad, &bst, 0);
    kbp_forget(bad);
    assert_true(WIFEXITED(bst) && WEXITSTATUS(bst) != 0);
    rc = kbp_run(out, sizeof out, "grep -c 'dim 16; --dim 32 differs' '%s'",
                 e->log);
    assert_int_equal(rc, 0);
}

/* Ingests `jsonl` (written to path) and expects a refusal whose output
 * holds both texts. */
static void ingest_refused(e2e_t *e, const char *path, const char *jsonl,
                           const char *want1, const char *want2)
{
    static char out[1 << 16];
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(jsonl, f);
    fclose(f);
    int rc = kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s' 2>&1",
                     kbp_bin(), e->ep, path);
    assert_int_equal(rc, 1);
    if (!strstr(out, want1) || !strstr(out, want2))
        fail_msg("expected \"%s\" and \"%s\" in: %s", want1, want2, out);
}

static void test_e2e_lone_bad_input_changes_nothing(void **state)
{
    e2e_t *e = *state;
    char path[400], out[1 << 16];
    start_leader(e, DIM);
    snprintf(path, sizeof path, "%s/good.jsonl", e->dir);
    write_jsonl(path, 0, 10, 0);
    assert_int_equal(kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s'",
                             kbp_bin(), e->ep, path),
                     0);

    /* malformed JSON on line 3: error names file and line; nothing sent */
    snprintf(path, sizeof path, "%s/bad.jsonl", e->dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"id\": \"x1\", \"text\": \"fine\"}\n\n{\"id\": \"x2\", "
               "\"text\": }\n");
    fclose(f);
    int rc = kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s' 2>&1",
                     kbp_bin(), e->ep, path);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "bad.jsonl:3:"));
    cJSON *s = kbp_last_json(out);
    assert_int_equal((int)kbp_num(s, "written"), 0);
    assert_int_equal((int)kbp_num(s, "failed"), 2);
    cJSON_Delete(s);

    /* wrong dimension: refused by the node, naming the doc */
    f = fopen(path, "w");
    fprintf(f, "{\"id\": \"y1\", \"embedding\": [1, 2, 3]}\n");
    fclose(f);
    rc = kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s' 2>&1", kbp_bin(),
                 e->ep, path);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "KB_EDIM"));
    assert_non_null(strstr(out, "\"y1\""));

    /* a value that overflows float is refused as non-finite */
    f = fopen(path, "w");
    fprintf(f, "{\"id\": \"z1\", \"embedding\": [1e999");
    for (int j = 1; j < DIM; j++)
        fprintf(f, ", 0.5");
    fprintf(f, "]}\n");
    fclose(f);
    rc = kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s' 2>&1", kbp_bin(),
                 e->ep, path);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "KB_ENONFINITE"));

    /* empty id, over-long id */
    f = fopen(path, "w");
    fprintf(f, "{\"id\": \"\", \"text\": \"no id\"}\n");
    fclose(f);
    rc = kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s' 2>&1", kbp_bin(),
                 e->ep, path);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "KB_EBADID"));

    /* an id with a control character, an id with "\u0000" (a protobuf
     * string would be cut there, overwriting "doc-1"), a norm that could
     * make a score overflow */
    ingest_refused(e, path, "{\"id\": \"line\\nbreak\", \"text\": \"x\"}\n",
                   "KB_EBADID", "control character 0x0a at byte 4");
    ingest_refused(e, path, "{\"id\": \"doc-1\\u0000b\", \"text\": \"x\"}\n",
                   "NUL", "\"id\"");
    char big[16 * DIM + 64];
    int n = snprintf(big, sizeof big, "{\"id\": \"big\", \"embedding\": [1e30");
    for (int j = 1; j < DIM; j++)
        n += snprintf(big + n, sizeof big - (size_t)n, ", 1e30");
    snprintf(big + n, sizeof big - (size_t)n, "]}\n");
    ingest_refused(e, path, big, "KB_ENONFINITE", "overflow");

    /* query with the wrong dimension */
    rc = kbp_run(out, sizeof out, "'%s' query --to '%s' --vector '[1,2]' 2>&1",
                 kbp_bin(), e->ep);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "KB_EDIM"));

    /* nothing of the above changed the knowledge base */
    cJSON *st = status_json(e);
    assert_int_equal((int)kbp_num(st, "version"), 10);
    assert_int_equal((int)kbp_num(st, "docs"), 10);
    cJSON_Delete(st);
}

static void test_e2e_lone_text_ingest_and_text_query(void **state)
{
    e2e_t *e = *state;
    char path[400], out[1 << 16];
    start_leader(e, 256); /* the lexical embedder needs room: not 16 dims */
    snprintf(path, sizeof path, "%s/notes.txt", e->dir);
    FILE *f = fopen(path, "w");
    /* three paragraphs, each longer than one chunk's target size */
    static const char *para[] = {
        "LMDB is a memory-mapped key value store with ACID transactions. ",
        "ZeroMQ sockets carry messages between processes and threads. ",
        "FAISS searches dense vectors for their nearest neighbours. "};
    for (int p = 0; p < 3; p++) {
        for (int r = 0; r < 14; r++)
            fputs(para[p], f);
        fputs("\n\n", f);
    }
    fclose(f);
    assert_int_equal(kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s'",
                             kbp_bin(), e->ep, path),
                     0);
    cJSON *s = kbp_last_json(out);
    assert_int_equal((int)kbp_num(s, "written"), 3);
    cJSON_Delete(s);
    assert_int_equal(kbp_run(out, sizeof out,
                             "'%s' query --to '%s' --json -k 1 --text 'key "
                             "value transactions'",
                             kbp_bin(), e->ep),
                     0);
    cJSON *q = kbp_last_json(out);
    const cJSON *h0 = cJSON_GetArrayItem(cJSON_GetObjectItem(q, "hits"), 0);
    assert_non_null(h0);
    assert_non_null(
        strstr(cJSON_GetObjectItem(h0, "text")->valuestring, "LMDB"));
    cJSON_Delete(q);
}

/* Resident memory of a process, in MB (VmRSS). */
static long rss_mb(pid_t pid)
{
    return kbp_status_mb(pid, "VmRSS");
}

/* Writes e->dir/big.jsonl (its name into path): n documents big-<i>, each
 * with `words` times "word word " of text (10 bytes each). */
static void write_big_docs(e2e_t *e, char *path, size_t pathlen, int n,
                           int words)
{
    snprintf(path, pathlen, "%s/big.jsonl", e->dir);
    kbp_write_big_docs(path, n, DIM, "word word ", words);
}

/* Starts a leader of DIM dimensions on e with one more option and its
 * value (e.g. "--max-client-queue-mb", "16"), and a second pair (or
 * NULL). */
static void start_leader_opts(e2e_t *e, const char *o1, const char *v1,
                              const char *o2, const char *v2)
{
    unlink(e->epfile);
    char dim[16];
    snprintf(dim, sizeof dim, "%d", DIM);
    char *argv[] = {"kbsync", "leader", "--data", e->data, "--dim", dim,
                    "--listen", "tcp://127.0.0.1:*", "--endpoint-file",
                    e->epfile, (char *)o1, (char *)v1, (char *)o2,
                    (char *)v2, NULL};
    e->leader = kbp_spawn(e->log, argv);
    assert_true(e->leader > 0);
    assert_int_equal(kbp_wait_file(e->epfile, e->ep, sizeof e->ep, 20000), 0);
}

/* Sends request r (its protocol version and id set here) on s. */
static void send_request(void *s, Kbsync__Request *r, uint64_t rid)
{
    r->protocol_version = 1;
    r->request_id = rid;
    uint8_t buf[512];
    assert_true(kbsync__request__get_packed_size(r) <= sizeof buf);
    size_t n = kbsync__request__pack(r, buf);
    assert_int_equal(zmq_send(s, buf, n, 0), (int)n);
}

/* Sends a k-NN query for vec (DIM floats) on s. */
static void send_query(void *s, uint64_t rid, const float *vec, uint32_t k)
{
    Kbsync__QueryRequest q = KBSYNC__QUERY_REQUEST__INIT;
    q.k = k;
    q.n_vector = DIM;
    q.vector = (float *)vec;
    Kbsync__Request r = KBSYNC__REQUEST__INIT;
    r.body_case = KBSYNC__REQUEST__BODY_QUERY;
    r.query = &q;
    send_request(s, &r, rid);
}

/* Polls status every 50 ms (at most 30 s) until the node counts at least
 * want answers and requests dropped for unread clients; returns that
 * count, and the queued answer bytes then in *queued. */
static double wait_dropped(e2e_t *e, double want, double *queued)
{
    double dropped = 0;
    for (int i = 0; i < 600; i++) {
        cJSON *st = status_json(e);
        dropped = kbp_num(st, "dropped_client_answers") +
                  kbp_num(st, "dropped_client_requests");
        *queued = kbp_num(st, "client_queue_bytes");
        cJSON_Delete(st);
        if (dropped >= want)
            break;
        usleep(50000);
    }
    return dropped;
}

/* Writes documents doc-0 .. doc-(n-1) (write_jsonl) to e->dir/NAME.jsonl
 * and ingests them into the node at e->ep. */
static void ingest_n(e2e_t *e, const char *name, int n)
{
    char path[600];
    static char out[1 << 16];
    snprintf(path, sizeof path, "%s/%s.jsonl", e->dir, name);
    write_jsonl(path, 0, n, 0);
    assert_int_equal(kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s'",
                             kbp_bin(), e->ep, path),
                     0);
}

/* A client that sends queries with megabyte answers and never reads them:
 * the node keeps at most --max-client-queue-mb of its answers, drops the
 * rest and its later requests, and serves other clients meanwhile. */
static void test_e2e_lone_slow_reader_stays_bounded(void **state)
{
    e2e_t *e = *state;
    start_leader_opts(e, "--max-client-queue-mb", "16", NULL, NULL);
    /* 20 documents of 60 KB of text: a k=20 answer is about 1.2 MB */
    char path[400];
    write_big_docs(e, path, sizeof path, 20, 6000);
    static char out[1 << 16];
    assert_int_equal(kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s'",
                             kbp_bin(), e->ep, path),
                     0);
    long rss0 = rss_mb(e->leader);

    void *ctx = zmq_ctx_new();
    /* a few unread answers, then its I/O thread stops reading too */
    void *slow = kbp_non_reader(ctx, e->ep, 4, 65536, NULL);
    assert_non_null(slow);
    float vec[DIM];
    for (int j = 0; j < DIM; j++)
        vec[j] = 1.0f;
    /* 400 x 1.2 MB = 480 MB if the node kept every answer (fewer under
     * ASan, whose readers take ~20x longer per answer: the other client's
     * query below waits behind them) */
#ifdef __SANITIZE_ADDRESS__
    const int nflood = 120;
#else
    const int nflood = 400;
#endif
    for (int i = 0; i < nflood; i++)
        send_query(slow, (uint64_t)i + 1, vec, 20);
    /* meanwhile another client is served */
    usleep(1500000);
    cJSON *q = query_json(e, 0, 1);
    assert_non_null(q);
    cJSON_Delete(q);
    ingest_n(e, "small", 5);
    /* until the node has gone through the flood (on a loaded machine it
     * can take longer than the 1.5 s above): half of it dropped */
    cJSON *st = status_json(e);
    double dropped = 0;
    for (int i = 0; i < 300; i++) {
        dropped = kbp_num(st, "dropped_client_answers") +
                  kbp_num(st, "dropped_client_requests");
        if (dropped >= nflood / 2)
            break;
        cJSON_Delete(st);
        usleep(100000);
        st = status_json(e);
    }
    double queued = kbp_num(st, "client_queue_bytes");
    long rss1 = rss_mb(e->leader);
    /* the flooding client is listed first, at its limit: over it, or
     * below it by what the kernel's socket buffers took after the last
     * answer was dropped (then the drops say it was over). The limit is
     * 16 MB: the answers count against it from the moment they are built,
     * so a client holds at most the limit plus one answer, and the socket
     * buffers (up to 4 MB) could empty a 4 MB queue. */
    const cJSON *cq = cJSON_GetArrayItem(cJSON_GetObjectItem(st, "client_queues"), 0);
    assert_non_null(cq);
    if (!(kbp_num(cq, "bytes") > 16.0 * 1048576 - 6.0 * 1048576))
        fail_msg("the first client listed has %.0f bytes queued (want over "
                 "10 MB); %.0f dropped, %.0f bytes queued in all",
                 kbp_num(cq, "bytes"), dropped, queued);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(cq, "over_limit")) ||
                dropped >= nflood / 2);
    cJSON_Delete(st);
#ifdef __SANITIZE_ADDRESS__
    /* ASan keeps freed memory in quarantine (256 MB): resident memory
     * says nothing there; the queue and the drops still do */
    rss1 = rss0;
#endif
    /* resident memory: far below the 480 MB of every answer kept; what
     * malloc keeps of the dropped answers' memory varies (growth of 175 -
     * 22 = 153 MB seen once in a full-suite run, so 250 MB) */
    if (queued > 16.0 * 1048576 + 2.5 * 1048576 || dropped < nflood / 2 ||
        rss1 - rss0 > 250)
        fail_msg("slow reader: %.0f bytes queued (limit 16 MB + one answer), "
                 "%.0f answers/requests dropped, resident %ld -> %ld MB",
                 queued, dropped, rss0, rss1);
    zmq_close(slow);
    zmq_ctx_term(ctx);
}

/* Peak resident memory (VmHWM) in MB; reset_peak first makes the peak
 * start from the current resident memory (clear_refs 5). */
static long hwm_mb(pid_t pid, int reset_peak)
{
    if (reset_peak) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/clear_refs", (int)pid);
        FILE *c = fopen(path, "w");
        assert_non_null(c);
        fputs("5", c);
        fclose(c);
    }
    return kbp_status_mb(pid, "VmHWM");
}

/* One query on its own DEALER; returns the decoded answer (assert). */
static Kbsync__Response *ask(void *ctx, const char *ep, uint64_t rid,
                             const float *vec, uint32_t k)
{
    void *c = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, tmo = 60000;
    zmq_setsockopt(c, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(c, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    assert_int_equal(zmq_connect(c, ep), 0);
    send_query(c, rid, vec, k);
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, c, 0) > 0);
    Kbsync__Response *r =
        kbsync__response__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
    zmq_msg_close(&m);
    zmq_close(c);
    assert_non_null(r);
    return r;
}

/* Queries with answers of megabytes: (1) an answer above the message limit
 * (--max-msg-mb) is refused KB_ETOOBIG naming the limit, one below it is
 * answered; (2) a client that sends a burst of such queries and reads none
 * makes the node build answers only up to its queue limit
 * (--max-client-queue-mb): the readers used to read every hit of a whole
 * micro-batch (up to 64 answers, here 10 MB each) before the first answer
 * was counted against the client. */
static void test_e2e_lone_big_answers_bounded(void **state)
{
    e2e_t *e = *state;
    start_leader_opts(e, "--max-client-queue-mb", "4", "--max-msg-mb", "12");
    /* 30 documents of 500 KB of text: a k=20 answer is about 10 MB, a
     * k=30 one 15 MB */
    char path[400];
    static char out[1 << 16];
    write_big_docs(e, path, sizeof path, 30, 50000);
    if (kbp_run(out, sizeof out, "'%s' ingest --batch 8 --to '%s' '%s' 2>&1",
                kbp_bin(), e->ep, path))
        fail_msg("ingest: %s", out);
    void *ctx = zmq_ctx_new();
    float vec[DIM];
    for (int j = 0; j < DIM; j++)
        vec[j] = 1.0f;

    /* (1) */
    Kbsync__Response *r = ask(ctx, e->ep, 1, vec, 20);
    if (r->error)
        fail_msg("k=20 (10 MB): %s", r->error->message);
    assert_int_equal(r->query->n_hits, 20);
    kbsync__response__free_unpacked(r, NULL);
    r = ask(ctx, e->ep, 2, vec, 30);
    assert_non_null(r->error);
    assert_int_equal(r->error->code, KB_ETOOBIG);
    if (!strstr(r->error->message, "message limit of 12 MiB (--max-msg-mb)"))
        fail_msg("k=30 (15 MB): %s", r->error->message);
    kbsync__response__free_unpacked(r, NULL);

    /* (2) */
    long hwm0 = hwm_mb(e->leader, 1);
    void *slow = kbp_non_reader(ctx, e->ep, 1, 65536, NULL);
    assert_non_null(slow);
    const int nflood = 64;
    for (int i = 0; i < nflood; i++)
        send_query(slow, (uint64_t)i + 10, vec, 20);
    /* until the node has gone through them: all but a few dropped (the
     * few that the client's socket buffers took, each time the count fell
     * back to the limit) */
    double queued = 0, dropped = wait_dropped(e, nflood - 8, &queued);
    long hwm1 = hwm_mb(e->leader, 0);
    /* meanwhile another client is served */
    r = ask(ctx, e->ep, 3, vec, 1);
    assert_null(r->error);
    assert_int_equal(r->query->n_hits, 1);
    kbsync__response__free_unpacked(r, NULL);
#ifdef __SANITIZE_ADDRESS__
    /* ASan keeps freed memory in quarantine (256 MB): the peak says
     * little there; the queue and the drops still do */
    hwm1 = hwm0;
#endif
    /* built before the limit stopped them: one answer (10 MB) per reader,
     * and its copies; every answer of a batch was 640 MB */
    if (dropped < nflood - 8 || queued > 2 * 10.5 * 1048576 + 4 * 1048576 ||
        hwm1 - hwm0 > 200)
        fail_msg("burst of %d 10 MB answers: %.0f answers/requests dropped, "
                 "%.0f bytes queued, peak resident %ld -> %ld MB",
                 nflood, dropped, queued, hwm0, hwm1);
    print_message("burst of %d 10 MB answers: %.0f dropped, %.0f bytes "
                  "queued, peak resident %ld -> %ld MB\n",
                  nflood, dropped, queued, hwm0, hwm1);
    zmq_close(slow);
    zmq_ctx_term(ctx);
}

/* Listing pages count against the client's queue like query answers: a
 * client that pipelines 300 pages of 10,000 ids and reads none gets no
 * more pages built once it is over --max-client-queue-mb (the pages were
 * built, counted and all sent on before: the first review of 6c79d4c). */
static void test_e2e_lone_list_pages_bounded(void **state)
{
    e2e_t *e = *state;
    start_leader_opts(e, "--max-client-queue-mb", "1", NULL, NULL);
    ingest_n(e, "many", 10000);
    void *ctx = zmq_ctx_new();
    void *slow = kbp_non_reader(ctx, e->ep, 1, 65536, NULL);
    assert_non_null(slow);
    const int npages = 300; /* ~170 KB each: 50 MB if all were kept */
    for (int i = 0; i < npages; i++) {
        Kbsync__ListRequest l = KBSYNC__LIST_REQUEST__INIT;
        l.limit = 10000;
        Kbsync__Request r = KBSYNC__REQUEST__INIT;
        r.body_case = KBSYNC__REQUEST__BODY_LIST;
        r.list = &l;
        send_request(slow, &r, (uint64_t)i + 1);
    }
    double queued = 0, dropped = wait_dropped(e, npages - 40, &queued);
    /* all but what the socket buffers took (a few MB: tens of pages) */
    if (dropped < npages - 40 || queued > 1.5 * 1048576)
        fail_msg("%d pipelined pages of 10,000 ids, none read: %.0f "
                 "dropped, %.0f bytes queued (limit 1 MB + one page)",
                 npages, dropped, queued);
    zmq_close(slow);
    zmq_ctx_term(ctx);
}

/* `kbsync COMMAND --help` prints the usage on stdout and exits 0 (it was
 * "bad option" and exit 2 for every command but ingest). */
/* With the background digest checks off (--digest-check-ms 0), `kbsync
 * verify` still runs on the digest-check thread, off the node's loop (so
 * its 16-request limit holds and other clients are served meanwhile):
 * each verify shows as a pass in status, and no pass runs unasked. */
static void test_e2e_lone_verify_with_checks_off(void **state)
{
    e2e_t *e = *state;
    char dim[16];
    snprintf(dim, sizeof dim, "%d", DIM);
    char *argv[] = {"kbsync",          "leader",  "--data",
                    e->data,           "--dim",   dim,
                    "--listen",        "tcp://127.0.0.1:*",
                    "--endpoint-file", e->epfile, "--digest-check-ms",
                    "0",               NULL};
    e->leader = kbp_spawn(e->log, argv);
    assert_true(e->leader > 0);
    assert_int_equal(kbp_wait_file(e->epfile, e->ep, sizeof e->ep, 20000), 0);
    ingest_n(e, "docs", 50);
    static char out[1 << 16];
    for (int i = 0; i < 2; i++)
        assert_int_equal(kbp_run(out, sizeof out, "'%s' verify --to '%s'",
                                 kbp_bin(), e->ep),
                         0);
    usleep(1500000); /* a scheduled pass would have run by now */
    cJSON *st = status_json(e);
    assert_int_equal((int)kbp_num(st, "digest_checks"), 2);
    cJSON_Delete(st);
}

static void test_e2e_lone_help(void **state)
{
    (void)state;
    static char out[1 << 16];
    const char *cmds[] = {"leader", "replica", "query", "status", "delete",
                          "verify", "list", "rebuild"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        assert_int_equal(
            kbp_run(out, sizeof out, "'%s' %s --help 2>/dev/null", kbp_bin(),
                    cmds[i]),
            0);
        assert_non_null(strstr(out, "usage: kbsync <command>"));
    }
    assert_int_equal(kbp_run(out, sizeof out, "'%s' leader --bogus 2>&1",
                             kbp_bin()),
                     2);
    assert_non_null(strstr(out, "bad option for leader"));
}

int main(void)
{
    atexit(kbp_kill_all);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e2e_lone_help),
        cmocka_unit_test_setup_teardown(test_e2e_lone_verify_with_checks_off,
                                        setup, teardown),
        cmocka_unit_test(test_e2e_lone_ingest_without_blas_threads),
        cmocka_unit_test_setup_teardown(
            test_e2e_lone_ingest_query_delete_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_lone_huge_pages, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_e2e_lone_list_pages_bounded,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_lone_big_answers_bounded,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_lone_slow_reader_stays_bounded,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_lone_bad_input_changes_nothing,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_lone_text_ingest_and_text_query, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
