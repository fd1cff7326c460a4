/* Tests of cli/cli_embed (the embedding-server client) against a real HTTP
 * server on loopback: tests/embed_server.py, started per test on a free
 * port with the faults the test needs, and always killed (teardown and
 * atexit, PR_SET_PDEATHSIG). The last tests drive `kbsync query
 * --embed-url` against a real leader. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cli_embed.h"
#include "kb_proc.h"
#include "kb_test.h"
#include "kb_util.h"

#include <curl/curl.h>
#include <poll.h>

#define DIM 16

/* ------------------------------------------------- the stand-in server */

typedef struct es {
    pid_t pid;
    int port;
    char url[64];
} es_t;

/* Starts tests/embed_server.py with the given options (NULL-terminated)
 * and waits for the port it prints. */
static void es_start(es_t *s, ...)
{
    const char *src = getenv("KBSYNC_SRC");
    char script[600];
    snprintf(script, sizeof script, "%s/tests/embed_server.py",
             src ? src : "..");
    char *argv[40] = {"/usr/bin/python3", script};
    int argc = 2;
    va_list ap;
    va_start(ap, s);
    const char *a;
    while ((a = va_arg(ap, const char *)) && argc < 38)
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fd[1]);
    for (int i = 0; i < KBP_MAX_CHILDREN; i++)
        if (kbp_children[i] == 0) {
            kbp_children[i] = pid; /* kbp_kill_all() kills it */
            break;
        }
    s->pid = pid;
    char line[32] = "";
    size_t n = 0;
    struct pollfd p = {fd[0], POLLIN, 0};
    while (n < sizeof line - 1 && !strchr(line, '\n') &&
           poll(&p, 1, 15000) == 1) {
        ssize_t r = read(fd[0], line + n, sizeof line - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        line[n] = 0;
    }
    close(fd[0]);
    s->port = atoi(line);
    if (s->port <= 0)
        fail_msg("embed_server.py did not print its port (got \"%s\")", line);
    snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", s->port);
}

static void es_stop(es_t *s)
{
    if (s->pid > 0)
        kbp_stop(s->pid, SIGTERM, 3000);
    s->pid = 0;
}

static size_t es_sink(char *d, size_t sz, size_t n, void *arg)
{
    char *b = arg;
    size_t have = strlen(b), add = sz * n;
    if (have + add < 8192) {
        memcpy(b + have, d, add);
        b[have + add] = 0;
    }
    return sz * n;
}

/* One counter from the server's GET /stats. */
static double es_stat(es_t *s, const char *key)
{
    char buf[8192] = "", url[128];
    snprintf(url, sizeof url, "%s/stats", s->url);
    CURL *h = curl_easy_init();
    assert_non_null(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, es_sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, buf);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
    assert_int_equal(curl_easy_perform(h), CURLE_OK);
    curl_easy_cleanup(h);
    cJSON *o = cJSON_Parse(buf);
    assert_non_null(o);
    double v = kbp_num(o, key);
    cJSON_Delete(o);
    return v;
}

/* The stand-in's vector of text (as tests/embed_server.py computes it). */
static void es_vec(const char *text, uint32_t dim, float *out)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        h = (h ^ *p) * 0x100000001B3ull;
    uint64_t s = h ? h : 1;
    double v[CLI_EMBED_MAX_DIM > 4096 ? 4096 : CLI_EMBED_MAX_DIM], norm = 0;
    assert_true(dim <= 4096);
    for (uint32_t i = 0; i < dim; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        uint64_t r = s * 0x2545F4914F6CDD1Dull;
        v[i] = (double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0;
    }
    for (uint32_t i = 0; i < dim; i++)
        norm += v[i] * v[i];
    norm = sqrt(norm);
    for (uint32_t i = 0; i < dim; i++)
        out[i] = (float)(v[i] / norm);
}

/* --------------------------------------------------------------- fixture */

typedef struct fx {
    es_t es;
    cli_embed_t *e;
    cli_embed_config_t cfg;
    char texts[512][48];
    const char *tp[512];
    char err[1024];
    char tmpdir[128]; /* a test's temp dir, removed by teardown */
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    cli_embed_config_init(&f->cfg);
    f->cfg.model = "test-model";
    f->cfg.backoff_ms = 20; /* keep retry tests quick */
    f->cfg.backoff_max_ms = 200;
    f->cfg.timeout_ms = 10000;
    for (int i = 0; i < 512; i++) {
        snprintf(f->texts[i], sizeof f->texts[i], "text number %d", i);
        f->tp[i] = f->texts[i];
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    cli_embed_close(&f->e);
    es_stop(&f->es);
    kbp_kill_all();
    if (f->tmpdir[0])
        kbt_rmrf(f->tmpdir);
    free(f);
    return 0;
}

static void fx_open(fx_t *f)
{
    f->cfg.url = f->es.url;
    KBT_OK(cli_embed_open(&f->cfg, &f->e, f->err, sizeof f->err), f->err);
}

/* Checks the vectors of a job whose texts are f->tp[from..from+n). */
static void check_vectors(fx_t *f, const cli_embed_result_t *r, size_t from)
{
    float want[DIM];
    assert_non_null(r->vectors);
    assert_int_equal(r->dim, DIM);
    for (size_t i = 0; i < r->n; i++) {
        es_vec(f->tp[from + i], DIM, want);
        for (int j = 0; j < DIM; j++)
            KBT_NEAR(r->vectors[i * DIM + j], want[j], 1e-6);
    }
}

/* Submits one job of n texts from f->tp[from], waits for it and returns
 * its result code (vectors freed after a check). */
static int one_job(fx_t *f, size_t from, size_t n)
{
    cli_embed_result_t r;
    KBT_OK(cli_embed_submit(f->e, f->tp + from, NULL, n, NULL, f->err,
                            sizeof f->err),
           f->err);
    int rc = cli_embed_next(f->e, 60000, &r, f->err, sizeof f->err);
    if (!rc) {
        check_vectors(f, &r, from);
        free(r.vectors);
    } else {
        assert_null(r.vectors);
    }
    return rc;
}

/* ------------------------------------------------------------------ tests */

/* Six jobs of different sizes (one of none), split into batches of 8 and up to
 * 4 in flight; the answers come back shuffled inside each batch, and batch 0 is
 * the slowest by far: the jobs must still come back whole, right, and in the
 * order they went in. */
static void test_cli_embed_order_across_batches(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--dim", "16", "--shuffle", "--latency-ms", "30", NULL);
    f->cfg.batch = 8;
    f->cfg.parallel = 4;
    f->cfg.dim = DIM;
    snprintf(f->texts[0], sizeof f->texts[0], "sleep:700:first text");
    fx_open(f);
    static const size_t sizes[] = {20, 7, 33, 0, 1, 16};
    size_t from[6], at = 0;
    for (size_t k = 0; k < 6; k++) {
        from[k] = at;
        KBT_OK(cli_embed_submit(f->e, f->tp + at, NULL, sizes[k],
                                (void *)(uintptr_t)(k + 100), f->err,
                                sizeof f->err),
               f->err);
        at += sizes[k];
    }
    assert_int_equal(cli_embed_pending(f->e), 6);
    for (size_t k = 0; k < 6; k++) {
        cli_embed_result_t r;
        KBT_OK(cli_embed_next(f->e, 60000, &r, f->err, sizeof f->err), f->err);
        KBT_U64((uintptr_t)r.tag, k + 100);
        KBT_U64(r.n, sizes[k]);
        KBT_U64(r.first_text, from[k]);
        if (sizes[k]) /* a job of no text keeps its place only */
            check_vectors(f, &r, from[k]);
        else
            assert_null(r.vectors);
        free(r.vectors);
    }
    assert_int_equal(cli_embed_pending(f->e), 0);
    cli_embed_stats_t st;
    cli_embed_stats(f->e, &st);
    KBT_U64(st.texts, at);
    KBT_U64(st.batches_ok, 3 + 1 + 5 + 1 + 2);
    KBT_U64(st.retries, 0);
    /* pipelined, within the limit, as the server saw it too */
    assert_true(st.peak_in_flight >= 2 && st.peak_in_flight <= 4);
    double peak = es_stat(&f->es, "peak_inflight");
    assert_true(peak >= 2 && peak <= 4);
    KBT_U64((uint64_t)es_stat(&f->es, "requests"), 12);
}

/* 429 twice, then answers: retried after a growing, jittered backoff. */
static void test_cli_embed_429_backoff(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--fail-429", "2", NULL);
    f->cfg.backoff_ms = 200;
    f->cfg.backoff_max_ms = 5000;
    fx_open(f);
    uint64_t t0 = kb_mono_us();
    KBT_OK(one_job(f, 0, 5), f->err);
    uint64_t ms = (kb_mono_us() - t0) / 1000;
    cli_embed_stats_t st;
    cli_embed_stats(f->e, &st);
    KBT_U64(st.retries, 2);
    KBT_U64(st.http_429, 2);
    KBT_U64(st.attempts, 3);
    KBT_U64((uint64_t)es_stat(&f->es, "answered_429"), 2);
    /* at least half of 200 ms, then half of 400 ms */
    if (ms < 300)
        fail_msg("two retries after 429 took %llu ms; the backoff (200 ms, "
                 "doubling, jittered to [d/2, d]) allows no less than 300",
                 (unsigned long long)ms);
}

/* A Retry-After of 1 s is waited for even though the backoff is 20 ms. */
static void test_cli_embed_retry_after(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--fail-429", "1", "--retry-after", "1", NULL);
    fx_open(f);
    uint64_t t0 = kb_mono_us();
    KBT_OK(one_job(f, 0, 3), f->err);
    uint64_t ms = (kb_mono_us() - t0) / 1000;
    cli_embed_stats_t st;
    cli_embed_stats(f->e, &st);
    KBT_U64(st.retries, 1);
    if (ms < 1000)
        fail_msg("Retry-After: 1 not obeyed: retried after %llu ms",
                 (unsigned long long)ms);
}

/* 5xx then success; and 5xx for ever: the batch fails after the retries,
 * named, with the server's message and the attempts. */
static void test_cli_embed_5xx(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--fail-500", "2", NULL);
    fx_open(f);
    KBT_OK(one_job(f, 0, 4), f->err);
    cli_embed_stats_t st;
    cli_embed_stats(f->e, &st);
    KBT_U64(st.http_5xx, 2);
    KBT_U64(st.retries, 2);
    cli_embed_close(&f->e);
    es_stop(&f->es);

    es_start(&f->es, "--fail-500", "1000", NULL);
    f->cfg.retries = 2;
    f->cfg.batch = 4;
    fx_open(f);
    KBT_RC(one_job(f, 0, 4), KB_ENET, f->err); /* batch 0 */
    KBT_CONTAINS(f->err, "embedding batch 0 (texts 0..3): server answered "
                         "HTTP 500");
    KBT_CONTAINS(f->err, "model crashed");
    KBT_CONTAINS(f->err, "(3 attempts)");
    KBT_U64((uint64_t)es_stat(&f->es, "requests"), 3);
    KBT_RC(one_job(f, 4, 6), KB_ENET, f->err); /* batches 1 and 2 */
    KBT_CONTAINS(f->err, "embedding batch 1 (texts 4..7)");
}

/* Connections closed without an answer are retried; a port nobody
 * listens on fails after the retries, naming the URL. */
static void test_cli_embed_connection_errors(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--drop", "2", NULL);
    fx_open(f);
    KBT_OK(one_job(f, 0, 4), f->err);
    cli_embed_stats_t st;
    cli_embed_stats(f->e, &st);
    KBT_U64(st.conn_errors, 2);
    KBT_U64(st.retries, 2);
    cli_embed_close(&f->e);
    es_stop(&f->es);

    f->cfg.url = "http://127.0.0.1:1";
    f->cfg.retries = 1;
    KBT_OK(cli_embed_open(&f->cfg, &f->e, f->err, sizeof f->err), f->err);
    KBT_RC(one_job(f, 0, 2), KB_ENET, f->err);
    KBT_CONTAINS(f->err, "embedding batch 0 (texts 0..1): cannot reach "
                         "http://127.0.0.1:1/v1/embeddings");
    KBT_CONTAINS(f->err, "(2 attempts)");
}

/* An answer slower than the per-request timeout: each attempt is cut
 * off, and the batch fails as timed out. */
static void test_cli_embed_timeout(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--latency-ms", "3000", NULL);
    f->cfg.timeout_ms = 300;
    f->cfg.retries = 1;
    fx_open(f);
    KBT_RC(one_job(f, 0, 2), KB_ETIMEOUT, f->err); /* not the 3 s answer */
    KBT_CONTAINS(f->err, "embedding batch 0 (texts 0..1): no answer within "
                         "300 ms");
    KBT_CONTAINS(f->err, "(2 attempts)");
    cli_embed_stats_t st;
    cli_embed_stats(f->e, &st);
    KBT_U64(st.timeouts, 2);
}

/* Three jobs of 16 texts in batches of 8; the server gets one batch wrong
 * (the one holding text 28: batch 3, the second half of job 1). Job 0 is
 * whole; job 1 fails as a whole, naming batch 3 and its texts; job 2 is
 * fine. */
static void check_bad_batch(fx_t *f, int want_rc, const char *want_msg)
{
    snprintf(f->texts[28], sizeof f->texts[28], "BAD text 28");
    f->cfg.batch = 8;
    fx_open(f);
    int tags[3] = {0, 1, 2};
    for (int k = 0; k < 3; k++)
        KBT_OK(cli_embed_submit(f->e, f->tp + 16 * k, NULL, 16, &tags[k],
                                f->err, sizeof f->err),
               f->err);
    cli_embed_result_t r;
    KBT_OK(cli_embed_next(f->e, 60000, &r, f->err, sizeof f->err), f->err);
    assert_ptr_equal(r.tag, &tags[0]);
    check_vectors(f, &r, 0);
    free(r.vectors);
    KBT_RC(cli_embed_next(f->e, 60000, &r, f->err, sizeof f->err), want_rc,
           f->err);
    assert_ptr_equal(r.tag, &tags[1]);
    assert_null(r.vectors);
    KBT_U64(r.failed_from, 8); /* the job's texts 8..15 */
    KBT_U64(r.failed_n, 8);
    KBT_CONTAINS(f->err, "embedding batch 3 (texts 24..31): ");
    KBT_CONTAINS(f->err, want_msg);
    KBT_OK(cli_embed_next(f->e, 60000, &r, f->err, sizeof f->err), f->err);
    assert_ptr_equal(r.tag, &tags[2]);
    check_vectors(f, &r, 32);
    free(r.vectors);
    cli_embed_stats_t st;
    cli_embed_stats(f->e, &st);
    KBT_U64(st.retries, 0); /* a wrong answer is not asked again */
    KBT_U64(st.batches_failed, 1);
}

static void test_cli_embed_wrong_dim(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--wrong-dim", "--fault-text", "BAD", NULL);
    f->cfg.dim = DIM;
    f->cfg.dim_from = "the knowledge base's";
    check_bad_batch(f, KB_EDIM,
                    "the vector for text 24 has 17 dimensions, expected 16 "
                    "(the knowledge base's)");
}

/* Without an expected dim, batch 0's answer sets it (batch 0 goes first
 * and alone, so that is not a race). */
static void test_cli_embed_wrong_dim_learned(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--wrong-dim", "--fault-text", "BAD", NULL);
    check_bad_batch(f, KB_EDIM,
                    "has 17 dimensions, expected 16 (the length in batch "
                    "0's answer)");
    cli_embed_stats_t st;
    cli_embed_stats(f->e, &st);
    KBT_U64(st.dim, DIM);
}

static void test_cli_embed_wrong_count(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--wrong-count", "--fault-text", "BAD", NULL);
    check_bad_batch(f, KB_EBADMSG, "server returned 7 vectors for 8 texts");
}

static void test_cli_embed_dup_index(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--dup-index", "--fault-text", "BAD", NULL);
    check_bad_batch(f, KB_EBADMSG, "item 1 repeats index 0");
}

static void test_cli_embed_nan(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--nan", "--fault-text", "BAD", NULL);
    check_bad_batch(f, KB_ENONFINITE,
                    "the vector for text 24 holds NaN at position 0");
}

static void test_cli_embed_inf(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--inf", "--fault-text", "BAD", NULL);
    check_bad_batch(f, KB_ENONFINITE, "holds 1e999 at position 0");
}

static void test_cli_embed_malformed(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--malformed", "--fault-text", "BAD", NULL);
    check_bad_batch(f, KB_EBADJSON, "server answer is not valid JSON at byte");
}

/* Statuses that are not worth a retry fail at once with a hint. */
static void test_cli_embed_http_errors(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--max-batch", "4", "--key", "s3cret", NULL);
    strcpy(f->cfg.key, "s3cret");
    f->cfg.batch = 8;
    fx_open(f);
    KBT_RC(one_job(f, 0, 8), KB_ETOOBIG, f->err);
    KBT_CONTAINS(f->err, "embedding batch 0 (texts 0..7): server answered "
                         "HTTP 413 (too many texts in one request: lower "
                         "--embed-batch)");
    KBT_CONTAINS(f->err, "batch size 8 > maximum allowed batch size 4");
    KBT_OK(one_job(f, 8, 4), f->err); /* 4 texts pass, with the key */
    cli_embed_close(&f->e);

    f->cfg.key[0] = 0;
    fx_open(f);
    KBT_RC(one_job(f, 0, 2), KB_EACCES, f->err);
    KBT_CONTAINS(f->err, "HTTP 401 (give the key with KBSYNC_EMBED_KEY");
    cli_embed_close(&f->e);

    strcpy(f->cfg.key, "s3cret");
    char url[128];
    snprintf(url, sizeof url, "%s/other/v1/embeddings", f->es.url);
    f->cfg.url = url;
    KBT_OK(cli_embed_open(&f->cfg, &f->e, f->err, sizeof f->err), f->err);
    KBT_RC(one_job(f, 0, 2), KB_ENET, f->err);
    KBT_CONTAINS(f->err, "HTTP 404 (is --embed-url right");
    cli_embed_stats_t st;
    cli_embed_stats(f->e, &st);
    KBT_U64(st.retries, 0);
}

/* The URL may be the base, .../v1 or the full endpoint. */
static void test_cli_embed_url_forms(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, NULL);
    const char *tails[] = {"", "/", "/v1", "/v1/", "/v1/embeddings"};
    char url[128];
    for (size_t i = 0; i < 5; i++) {
        snprintf(url, sizeof url, "%s%s", f->es.url, tails[i]);
        f->cfg.url = url;
        KBT_OK(cli_embed_open(&f->cfg, &f->e, f->err, sizeof f->err), f->err);
        KBT_OK(one_job(f, i, 1), f->err);
        cli_embed_close(&f->e);
    }
    f->cfg.url = "ftp://127.0.0.1/";
    KBT_RC(cli_embed_open(&f->cfg, &f->e, f->err, sizeof f->err), KB_EINVAL,
           f->err);
    KBT_CONTAINS(f->err, "must start with http:// or https://");
    f->cfg.url = f->es.url;
    f->cfg.model = NULL;
    KBT_RC(cli_embed_open(&f->cfg, &f->e, f->err, sizeof f->err), KB_EINVAL,
           f->err);
    assert_null(f->e);
}

/* A text that is not UTF-8 is refused before anything is sent; texts
 * with quotes, control characters and non-ASCII go through intact. */
static void test_cli_embed_text_encoding(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, NULL);
    fx_open(f);
    const char *bad[] = {"fine", "caf\xc3", "fine too"};
    KBT_RC(cli_embed_submit(f->e, bad, NULL, 3, NULL, f->err, sizeof f->err),
           KB_EINVAL, f->err);
    KBT_CONTAINS(f->err, "text 1 of the job (text 1): byte 4 is not valid "
                         "UTF-8; nothing of the job was sent");
    assert_int_equal(cli_embed_pending(f->e), 0);
    snprintf(f->texts[0], sizeof f->texts[0], "quote \" back\\slash \t tab");
    snprintf(f->texts[1], sizeof f->texts[1], "caf\xc3\xa9 \xe2\x82\xac \x01");
    size_t lens[2] = {strlen(f->texts[0]), strlen(f->texts[1])};
    KBT_OK(cli_embed_submit(f->e, f->tp, lens, 2, NULL, f->err, sizeof f->err),
           f->err);
    cli_embed_result_t r;
    KBT_OK(cli_embed_next(f->e, 60000, &r, f->err, sizeof f->err), f->err);
    check_vectors(f, &r, 0); /* the server hashed exactly these bytes */
    free(r.vectors);
    KBT_U64((uint64_t)es_stat(&f->es, "requests"), 1);
}

/* cli_embed_next without waiting, and with nothing pending. */
static void test_cli_embed_next_wait(void **state)
{
    fx_t *f = *state;
    es_start(&f->es, "--latency-ms", "1500", NULL);
    fx_open(f);
    cli_embed_result_t r;
    KBT_RC(cli_embed_next(f->e, 0, &r, f->err, sizeof f->err), KB_EINVAL,
           f->err);
    KBT_OK(cli_embed_submit(f->e, f->tp, NULL, 3, NULL, f->err, sizeof f->err),
           f->err);
    KBT_RC(cli_embed_next(f->e, 0, &r, f->err, sizeof f->err), -EAGAIN, f->err);
    KBT_RC(cli_embed_next(f->e, 20, &r, f->err, sizeof f->err), -EAGAIN,
           f->err);
    assert_int_equal(cli_embed_pending(f->e), 1);
    KBT_OK(cli_embed_next(f->e, -1, &r, f->err, sizeof f->err), f->err);
    check_vectors(f, &r, 0);
    free(r.vectors);
    /* closing with jobs in flight frees them */
    KBT_OK(
        cli_embed_submit(f->e, f->tp, NULL, 100, NULL, f->err, sizeof f->err),
        f->err);
    cli_embed_close(&f->e);
    assert_null(f->e);
}

/* ---------------------------------------------------- kbsync query e2e */

typedef struct node {
    char dir[128], data[160], epfile[160], log[160], ep[256];
    pid_t pid;
} node_t;

static void node_start(node_t *n, int dim)
{
    kbt_tmpdir(n->dir, sizeof n->dir, "embed");
    snprintf(n->data, sizeof n->data, "%s/data", n->dir);
    snprintf(n->epfile, sizeof n->epfile, "%s/ep", n->dir);
    snprintf(n->log, sizeof n->log, "%s/leader.log", n->dir);
    char d[16];
    snprintf(d, sizeof d, "%d", dim);
    char *argv[] = {
        "kbsync",          "leader",  "--data",   n->data,
        "--dim",           d,         "--listen", "tcp://127.0.0.1:*",
        "--endpoint-file", n->epfile, NULL};
    n->pid = kbp_spawn(n->log, argv);
    assert_true(n->pid > 0);
    assert_int_equal(kbp_wait_file(n->epfile, n->ep, sizeof n->ep, 20000), 0);
}

/* A leader of dim 16 holding doc-i = f->tp[i] with the stand-in's vector
 * of that text (i < 50), written by `kbsync ingest`. */
static void e2e_node(fx_t *f, node_t *n)
{
    char path[300], out[4096];
    node_start(n, DIM);
    snprintf(f->tmpdir, sizeof f->tmpdir, "%s", n->dir);
    snprintf(path, sizeof path, "%s/docs.jsonl", n->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    float v[DIM];
    for (int i = 0; i < 50; i++) {
        es_vec(f->tp[i], DIM, v);
        fprintf(fp, "{\"id\": \"doc-%d\", \"text\": \"%s\", \"embedding\": [",
                i, f->tp[i]);
        for (int j = 0; j < DIM; j++)
            fprintf(fp, "%s%.9g", j ? ", " : "", v[j]);
        fprintf(fp, "]}\n");
    }
    fclose(fp);
    assert_int_equal(kbp_run(out, sizeof out, "'%s' ingest --to '%s' '%s'",
                             kbp_bin(), n->ep, path),
                     0);
}

/* kbsync query --embed-url "T": the vector sent is the stand-in's for T,
 * so the document stored with that very vector comes back at score 1. */
static void test_cli_embed_query_e2e(void **state)
{
    fx_t *f = *state;
    node_t n;
    char out[1 << 16];
    e2e_node(f, &n);
    es_start(&f->es, NULL);
    const char *forms[] = {"'text number 7'", "--text 'text number 7'"};
    for (int k = 0; k < 2; k++) {
        int rc = kbp_run(out, sizeof out,
                         "'%s' query --to '%s' -k 3 --json --embed-url '%s' "
                         "--embed-model m %s",
                         kbp_bin(), n.ep, f->es.url, forms[k]);
        assert_int_equal(rc, 0);
        cJSON *o = kbp_last_json(out);
        assert_non_null(o);
        const cJSON *h =
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "hits"), 0);
        assert_non_null(h);
        assert_string_equal(
            cJSON_GetObjectItemCaseSensitive(h, "id")->valuestring, "doc-7");
        KBT_NEAR(kbp_num(h, "score"), 1.0, 1e-4);
        cJSON_Delete(o);
    }
    KBT_U64((uint64_t)es_stat(&f->es, "texts"), 2);
    es_stop(&f->es);

    /* a model of another dimension is refused before the query is sent */
    es_start(&f->es, "--dim", "8", NULL);
    int rc = kbp_run(out, sizeof out,
                     "'%s' query --to '%s' --embed-url '%s' --embed-model m8 "
                     "'text number 7' 2>&1",
                     kbp_bin(), n.ep, f->es.url);
    assert_int_equal(rc, 1);
    KBT_CONTAINS(out, "model \"m8\" at ");
    KBT_CONTAINS(out, "gives 8-dimensional vectors, but the knowledge base "
                      "at");
    KBT_CONTAINS(out, "has dim 16");
}

/* The query's key comes from KBSYNC_EMBED_KEY or --embed-key-file; a
 * failing server is named with the batch; --embed-url needs a model. */
static void test_cli_embed_query_e2e_errors(void **state)
{
    fx_t *f = *state;
    node_t n;
    char out[1 << 16];
    int rc;
    e2e_node(f, &n);

    /* the key: from KBSYNC_EMBED_KEY or --embed-key-file, else 401 */
    es_start(&f->es, "--key", "s3cret", NULL);
    char keyfile[300];
    snprintf(keyfile, sizeof keyfile, "%s/key", n.dir);
    FILE *fp = fopen(keyfile, "w");
    assert_non_null(fp);
    fprintf(fp, "s3cret\n");
    fclose(fp);
    rc = kbp_run(out, sizeof out,
                 "KBSYNC_EMBED_KEY=s3cret '%s' query --to '%s' --embed-url "
                 "'%s' --embed-model m 'text number 7'",
                 kbp_bin(), n.ep, f->es.url);
    assert_int_equal(rc, 0);
    KBT_CONTAINS(out, "doc-7");
    rc = kbp_run(out, sizeof out,
                 "'%s' query --to '%s' --embed-url '%s' --embed-model m "
                 "--embed-key-file '%s' 'text number 7'",
                 kbp_bin(), n.ep, f->es.url, keyfile);
    assert_int_equal(rc, 0);
    rc = kbp_run(out, sizeof out,
                 "'%s' query --to '%s' --embed-url '%s' --embed-model m "
                 "'text number 7' 2>&1",
                 kbp_bin(), n.ep, f->es.url);
    assert_int_equal(rc, 1);
    KBT_CONTAINS(out, "server answered HTTP 401 (give the key with "
                      "KBSYNC_EMBED_KEY or --embed-key-file): invalid API key");
    es_stop(&f->es);

    /* a failing server: the batch is named; options must come together */
    es_start(&f->es, "--fail-500", "100", NULL);
    rc = kbp_run(out, sizeof out,
                 "'%s' query --to '%s' --embed-url '%s' --embed-model m "
                 "--embed-retries 0 'text number 7' 2>&1",
                 kbp_bin(), n.ep, f->es.url);
    assert_int_equal(rc, 1);
    KBT_CONTAINS(out, "embedding batch 0 (texts 0..0): server answered HTTP "
                      "500");
    rc = kbp_run(out, sizeof out,
                 "'%s' query --to '%s' --embed-url '%s' 'x' 2>&1", kbp_bin(),
                 n.ep, f->es.url);
    assert_int_equal(rc, 2);
    KBT_CONTAINS(out, "--embed-url and --embed-model go together");
    kbp_stop(n.pid, SIGTERM, 10000);
}

/* kbsync ingest --embed-url: every text-only document is stored with the
 * stand-in's vector of its text (a query by that vector finds it at score
 * 1), and a batch the server answers badly is named and not written while
 * the batches before it are. */
static void test_cli_embed_ingest_e2e(void **state)
{
    fx_t *f = *state;
    node_t n;
    char path[300], out[1 << 16];
    node_start(&n, DIM);
    snprintf(f->tmpdir, sizeof f->tmpdir, "%s", n.dir);
    snprintf(path, sizeof path, "%s/texts.jsonl", n.dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (int i = 0; i < 200; i++)
        fprintf(fp, "{\"id\": \"ing-%03d\", \"text\": \"%s\"}\n", i, f->tp[i]);
    fclose(fp);
    es_start(&f->es, "--latency-ms", "5", NULL);
    int rc = kbp_run(out, sizeof out,
                     "'%s' ingest --to '%s' --batch 20 --embed-url '%s' "
                     "--embed-model m --embed-batch 8 '%s'",
                     kbp_bin(), n.ep, f->es.url, path);
    assert_int_equal(rc, 0);
    KBT_CONTAINS(out, "\"written\":200");
    KBT_U64((uint64_t)es_stat(&f->es, "texts"), 200);
    for (int i = 0; i < 200; i += 37) {
        char vec[1024];
        float v[DIM];
        es_vec(f->tp[i], DIM, v);
        size_t k = 0;
        k += (size_t)snprintf(vec + k, sizeof vec - k, "[");
        for (int j = 0; j < DIM; j++)
            k += (size_t)snprintf(vec + k, sizeof vec - k, "%s%.9g",
                                  j ? "," : "", v[j]);
        snprintf(vec + k, sizeof vec - k, "]");
        assert_int_equal(kbp_run(out, sizeof out,
                                 "'%s' query --to '%s' -k 1 --json "
                                 "--vector '%s'",
                                 kbp_bin(), n.ep, vec),
                         0);
        cJSON *o = kbp_last_json(out);
        const cJSON *h =
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "hits"), 0);
        assert_non_null(h);
        char want[16];
        snprintf(want, sizeof want, "ing-%03d", i);
        assert_string_equal(
            cJSON_GetObjectItemCaseSensitive(h, "id")->valuestring, want);
        KBT_NEAR(kbp_num(h, "score"), 1.0, 1e-4);
        cJSON_Delete(o);
    }
    es_stop(&f->es);

    /* NaN in the answer for the batch holding text 130: that ingest batch
     * (ing-120..139 under new ids) is not written */
    fp = fopen(path, "w");
    assert_non_null(fp);
    for (int i = 0; i < 200; i++)
        fprintf(fp, "{\"id\": \"bad-%03d\", \"text\": \"%s\"}\n", i, f->tp[i]);
    fclose(fp);
    es_start(&f->es, "--nan", "--fault-text", "text number 130", NULL);
    rc = kbp_run(out, sizeof out,
                 "'%s' ingest --to '%s' --batch 20 --embed-url '%s' "
                 "--embed-model m --embed-batch 8 --embed-retries 0 '%s' 2>&1",
                 kbp_bin(), n.ep, f->es.url, path);
    assert_int_not_equal(rc, 0);
    KBT_CONTAINS(out, "embedding batch");
    assert_int_equal(kbp_run(out, sizeof out,
                             "'%s' list --to '%s' --prefix bad-", kbp_bin(),
                             n.ep),
                     0);
    assert_null(strstr(out, "\"bad-120\""));
    assert_null(strstr(out, "\"bad-130\""));
    assert_null(strstr(out, "\"bad-139\""));
    assert_non_null(strstr(out, "\"bad-000\"")); /* the batches before it */
    kbp_stop(n.pid, SIGTERM, 10000);
}

int main(void)
{
    atexit(kbp_kill_all);
    unsetenv("KBSYNC_EMBED_KEY"); /* the tests choose their keys */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cli_embed_order_across_batches,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_429_backoff, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_retry_after, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_5xx, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_connection_errors, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_timeout, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_wrong_dim, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_wrong_dim_learned, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_wrong_count, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_dup_index, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_nan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_inf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_malformed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_http_errors, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_url_forms, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_text_encoding, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_next_wait, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_query_e2e, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_ingest_e2e, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cli_embed_query_e2e_errors, setup,
                                        teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
