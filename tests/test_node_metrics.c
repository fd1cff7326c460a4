/* Tests of node_metrics: the Prometheus page (text format 0.0.4) rendered
 * from a node state, and the endpoint of real `kbsync leader` and `kbsync
 * replica` processes on loopback, scraped over HTTP after real writes,
 * refusals and queries. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "kb_proc.h"

#include "kb_err.h"
#include "kb_metrics.h"
#include "node_metrics.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <math.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* ------------------------------------------------------------ the format */

/* The value of the sample line that starts with `series` exactly ("name"
 * or "name{labels}"), or NAN when there is none. */
static double sample(const char *page, const char *series)
{
    size_t n = strlen(series);
    for (const char *l = page; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : l)
        if (!strncmp(l, series, n) && l[n] == ' ')
            return strtod(l + n + 1, NULL);
    return NAN;
}

static int name_char(int c, int first)
{
    return isalpha(c) || c == '_' || c == ':' || (!first && isdigit(c));
}

/* Checks every line of page against the text format: "# HELP name text",
 * "# TYPE name type" before the family's samples, and samples
 * `name{label="value",...} number`; histograms' buckets cumulative, ending
 * in le="+Inf" equal to _count. Fails the test naming the line. */
static void check_format(const char *page)
{
    char typed[256][96];
    size_t ntyped = 0;
    char last_series[256] = "";
    double last_bucket = -1;
    const char *l = page;
    int lines = 0;
    while (*l) {
        const char *e = strchr(l, '\n');
        assert_non_null(e); /* every line ends with a newline */
        char line[1024];
        size_t len = (size_t)(e - l);
        assert_true(len < sizeof line);
        memcpy(line, l, len);
        line[len] = 0;
        l = e + 1;
        lines++;
        if (!strncmp(line, "# HELP ", 7))
            continue;
        if (!strncmp(line, "# TYPE ", 7)) {
            char name[96], type[32];
            assert_int_equal(sscanf(line + 7, "%95s %31s", name, type), 2);
            assert_true(!strcmp(type, "gauge") || !strcmp(type, "counter") ||
                        !strcmp(type, "histogram"));
            assert_true(ntyped < 256);
            snprintf(typed[ntyped++], sizeof typed[0], "%s", name);
            continue;
        }
        /* a sample: name */
        size_t i = 0;
        while (name_char((unsigned char)line[i], i == 0))
            i++;
        if (i == 0)
            fail_msg("not a metric line: \"%s\"", line);
        char name[96];
        snprintf(name, sizeof name, "%.*s", (int)i, line);
        /* its family was typed before it */
        int found = 0;
        for (size_t t = 0; t < ntyped && !found; t++) {
            size_t tl = strlen(typed[t]);
            found = !strcmp(name, typed[t]) ||
                    (!strncmp(name, typed[t], tl) &&
                     (!strcmp(name + tl, "_bucket") ||
                      !strcmp(name + tl, "_sum") ||
                      !strcmp(name + tl, "_count")));
        }
        if (!found)
            fail_msg("sample before its # TYPE: \"%s\"", line);
        char le[32] = "";
        if (line[i] == '{') { /* labels: name="value" with \\ \" \n */
            i++;
            while (line[i] != '}') {
                size_t k = i;
                while (name_char((unsigned char)line[i], i == k))
                    i++;
                if (i == k || line[i] != '=' || line[i + 1] != '"')
                    fail_msg("bad label in \"%s\"", line);
                int is_le = i - k == 2 && !strncmp(line + k, "le", 2);
                i += 2;
                size_t v = i;
                while (line[i] && line[i] != '"') {
                    if (line[i] == '\\') {
                        if (!strchr("\\\"n", line[i + 1]))
                            fail_msg("bad escape in \"%s\"", line);
                        i++;
                    }
                    i++;
                }
                if (!line[i])
                    fail_msg("unterminated label value in \"%s\"", line);
                if (is_le)
                    snprintf(le, sizeof le, "%.*s", (int)(i - v), line + v);
                i++;
                if (line[i] == ',')
                    i++;
                else if (line[i] != '}')
                    fail_msg("bad label list in \"%s\"", line);
            }
            i++;
        }
        if (line[i] != ' ')
            fail_msg("no value in \"%s\"", line);
        char *end;
        double v = strtod(line + i + 1, &end);
        if (end == line + i + 1 || *end)
            fail_msg("bad value in \"%s\"", line);
        /* histograms: cumulative buckets, +Inf == _count */
        size_t nl = strlen(name);
        if (nl > 7 && !strcmp(name + nl - 7, "_bucket")) {
            char series[256];
            const char *lb = strchr(line, '{');
            const char *lep = strstr(line, "le=\"");
            snprintf(series, sizeof series, "%.*s", (int)(lep - lb), lb);
            if (strcmp(series, last_series)) {
                snprintf(last_series, sizeof last_series, "%s", series);
                last_bucket = -1;
            }
            if (v < last_bucket)
                fail_msg("bucket not cumulative: \"%s\"", line);
            last_bucket = v;
            if (!strcmp(le, "+Inf")) {
                /* the _count line follows the _sum line */
                const char *c = strstr(l, "_count");
                assert_non_null(c);
                const char *sp = strchr(c, ' ');
                assert_non_null(sp);
                if (strtod(sp + 1, NULL) != v)
                    fail_msg("_count differs from the +Inf bucket after "
                             "\"%s\"", line);
            }
        }
    }
    assert_true(lines > 50);
}

static void test_node_metrics_render_format(void **state)
{
    (void)state;
    Kbsync__NodeState s = KBSYNC__NODE_STATE__INIT;
    Kbsync__ReplicaState r1 = KBSYNC__REPLICA_STATE__INIT,
                         r2 = KBSYNC__REPLICA_STATE__INIT,
                         r3 = KBSYNC__REPLICA_STATE__INIT;
    Kbsync__ReplicaState *rs[3] = {&r1, &r2, &r3};
    uint64_t qh[7] = {5, 1, 0, 2, 0, 0, 0};
    s.role = "leader";
    s.node_id = "lead\"er";
    s.version = 42;
    s.leader_version = 42;
    s.docs = 40;
    s.replicas = rs;
    s.n_replicas = 3;
    s.query_batch_hist = qh;
    s.n_query_batch_hist = 7;
    r1.id = "r1";
    r1.connected = 1;
    r1.version = 40;
    r1.durable_version = 41;
    r1.received_version = 42;
    r1.lag_ops = 2;
    r1.lag_ms = 1500;
    r2.id = "odd\\id\"";
    r3.id = "x\xff\xfe"; /* not UTF-8: a hostile unnamed replica's id */
    r3.connected = 1;
    kb_metrics_t *m = kb_metrics();
    uint64_t before = atomic_load(&m->write_us[2].count);
    kb_metrics_write(KBSYNC__WRITE_MODE__WRITE_MODE_ALL, 1500, 10);
    kb_metrics_query(KBSYNC__READ_LEVEL__READ_STRONG, 30);
    kb_metrics_error(KB_ESTALE);
    kb_metrics_error(-7); /* not a kbsync code: "other" */
    size_t len;
    char *page = node_metrics_render(&s, &len);
    assert_non_null(page);
    assert_int_equal(strlen(page), len);
    check_format(page);
    assert_true(sample(page, "kbsync_version") == 42);
    assert_true(sample(page, "kbsync_is_leader") == 1);
    assert_true(sample(page, "kbsync_replica_applied_version{replica=\"r1\"}") ==
                40);
    assert_true(sample(page, "kbsync_replica_durable_version{replica=\"r1\"}") ==
                41);
    assert_true(
        sample(page, "kbsync_replica_lag_seconds{replica=\"r1\",stage=\"applied\"}") ==
        1.5);
    assert_true(sample(page, "kbsync_replica_connected{replica=\"odd\\\\id\\\"\"}") ==
                0);
    assert_true(sample(page, "kbsync_write_duration_seconds_count{mode=\"all\"}") ==
                (double)before + 1);
    assert_true(sample(page, "kbsync_replica_connected{replica=\"x??\"}") == 1);
    for (const char *c = page; *c; c++)
        assert_true((unsigned char)*c < 0x80); /* all of it ASCII here */
    /* 1.5 ms lands in le=0.0025, not in le=0.001 */
    assert_true(
        sample(page, "kbsync_write_duration_seconds_bucket{mode=\"all\",le=\"0.0025\"}") -
            sample(page, "kbsync_write_duration_seconds_bucket{mode=\"all\",le=\"0.001\"}") >=
        1);
    assert_true(sample(page, "kbsync_query_duration_seconds_count{level=\"strong\"}") >=
                1);
    assert_true(sample(page, "kbsync_errors_total{code=\"KB_ESTALE\"}") >= 1);
    assert_true(sample(page, "kbsync_errors_total{code=\"other\"}") >= 1);
    assert_true(sample(page, "kbsync_query_batch_size_bucket{le=\"+Inf\"}") == 8);
    assert_true(sample(page, "kbsync_query_batch_size_bucket{le=\"2\"}") == 6);
    free(page);
}

/* ------------------------------------------------------------ real nodes */

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (!bind(s, (struct sockaddr *)&a, sizeof a) &&
        !getsockname(s, (struct sockaddr *)&a, &len))
        port = ntohs(a.sin_port);
    close(s);
    return port;
}

/* Seconds http_get waits for each read. */
static int http_timeout_s = 15;

/* GET path from 127.0.0.1:port; the HTTP status in *code, the body in a
 * malloc'd string (NULL when the connection failed). */
static char *http_get(int port, const char *path, int *code)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = http_timeout_s};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) {
        close(s);
        return NULL;
    }
    char req[256];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(s, req, (size_t)n) != n) {
        close(s);
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t got;
    while ((got = read(s, buf + len, cap - len - 1)) > 0) {
        len += (size_t)got;
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    close(s);
    buf[len] = 0;
    *code = 0;
    sscanf(buf, "HTTP/1.%*d %d", code);
    char *body = strstr(buf, "\r\n\r\n");
    char *out = strdup(body ? body + 4 : "");
    free(buf);
    return out;
}

typedef struct fx {
    char dir[256], lead_ep[256], rep_ep[256], repl_ep[64];
    int lead_port, rep_port;
} fx_t;

static int e2e_setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/kbsync-metrics-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    *state = f;
    return 0;
}

static int e2e_teardown(void **state)
{
    fx_t *f = *state;
    kbp_kill_all();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

static pid_t start(fx_t *f, const char *name, char *ep, int port,
                   const char *role_args)
{
    char cmd[2048], log[300], epf[300];
    snprintf(log, sizeof log, "%s/%s.log", f->dir, name);
    snprintf(epf, sizeof epf, "%s/%s.ep", f->dir, name);
    snprintf(cmd, sizeof cmd,
             "%s --data %s/%s --listen tcp://127.0.0.1:* --endpoint-file %s "
             "--metrics-listen 127.0.0.1:%d",
             role_args, f->dir, name, epf, port);
    char *argv[40];
    int k = 0;
    argv[k++] = "kbsync";
    for (char *t = strtok(cmd, " "); t && k < 39; t = strtok(NULL, " "))
        argv[k++] = t;
    argv[k] = NULL;
    pid_t pid = kbp_spawn(log, argv);
    assert_true(pid > 0);
    assert_int_equal(kbp_wait_file(epf, ep, 256, 20000), 0);
    return pid;
}

static char *scrape(int port)
{
    int code = 0;
    char *page = http_get(port, "/metrics", &code);
    assert_non_null(page);
    assert_int_equal(code, 200);
    check_format(page);
    return page;
}

static void test_node_metrics_endpoint_of_real_nodes(void **state)
{
    fx_t *f = *state;
    char out[1 << 16], args[512];
    snprintf(f->repl_ep, sizeof f->repl_ep, "tcp://127.0.0.1:%d", free_port());
    f->lead_port = free_port();
    f->rep_port = free_port();
    snprintf(args, sizeof args,
             "leader --dim 8 --repl-listen %s --replicas r1", f->repl_ep);
    start(f, "leader", f->lead_ep, f->lead_port, args);
    snprintf(args, sizeof args, "replica --id r1 --leader %s", f->repl_ep);
    start(f, "r1", f->rep_ep, f->rep_port, args);

    /* three `all` writes, one refusal, one strong query on the replica */
    char jsonl[300];
    snprintf(jsonl, sizeof jsonl, "%s/in.jsonl", f->dir);
    FILE *fp = fopen(jsonl, "w");
    assert_non_null(fp);
    fprintf(fp, "{\"id\":\"a\",\"text\":\"alpha\"}\n{\"id\":\"b\",\"text\":"
                "\"beta\"}\n{\"id\":\"c\",\"text\":\"gamma\"}\n");
    fclose(fp);
    int ok = 0;
    for (int i = 0; i < 100 && !ok; i++) { /* until r1 is connected */
        ok = kbp_run(out, sizeof out,
                     "'%s' ingest --to '%s' --mode all --batch 1 --retries 0 "
                     "--timeout-ms 5000 '%s'",
                     kbp_bin(), f->lead_ep, jsonl) == 0;
        if (!ok)
            usleep(100000);
    }
    assert_true(ok);
    assert_int_not_equal(kbp_run(out, sizeof out,
                                 "'%s' ingest --to '%s' --mode quorum:5 '%s'",
                                 kbp_bin(), f->lead_ep, jsonl),
                         0);
    assert_int_equal(kbp_run(out, sizeof out,
                             "'%s' query --to '%s' --text alpha "
                             "--consistency strong",
                             kbp_bin(), f->rep_ep),
                     0);

    char *lp = scrape(f->lead_port);
    double v = sample(lp, "kbsync_version");
    assert_true(v >= 3);
    /* every answered `all` write is in the histogram (a first try that
     * found r1 not yet connected was refused: it is an error, not a
     * write) */
    double writes = sample(lp, "kbsync_write_duration_seconds_count{mode=\"all\"}");
    assert_true(writes >= 3 && writes == v);
    assert_true(sample(lp, "kbsync_write_request_documents_count") == writes);
    assert_true(sample(lp, "kbsync_errors_total{code=\"KB_EINVAL\"}") >= 1);
    assert_true(sample(lp, "kbsync_replica_applied_version{replica=\"r1\"}") ==
                v);
    assert_true(sample(lp, "kbsync_replica_connected{replica=\"r1\"}") == 1);
    assert_true(sample(lp, "kbsync_documents") == 3);
    free(lp);

    char *rp = scrape(f->rep_port);
    assert_true(sample(rp, "kbsync_is_leader") == 0);
    assert_true(sample(rp, "kbsync_version") == v);
    assert_true(sample(rp, "kbsync_query_duration_seconds_count{level=\"strong\"}") ==
                1);
    assert_true(sample(rp, "kbsync_queries_total") == 1);
    free(rp);

    int code = 0;
    char *nf = http_get(f->rep_port, "/nothing", &code);
    assert_non_null(nf);
    assert_int_equal(code, 404);
    free(nf);
}

/* 16 peers that each send one header line every 2 s (never idle, never
 * done) held every connection the endpoint takes, and scrapes were shut
 * out for as long as they kept on; so would peers sending a small request
 * every 2 s on one kept-alive connection. Now a connection serves one
 * request and is closed 10 s after its start: then a scrape gets in. Half
 * the peers here drip header lines, half send whole requests. */
static void test_node_metrics_slow_peers_cut(void **state)
{
    fx_t *f = *state;
    f->lead_port = free_port();
    start(f, "leader", f->lead_ep, f->lead_port, "leader --dim 8");
    enum { NSLOW = 16 };
    int s[NSLOW];
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)f->lead_port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < NSLOW; i++) {
        s[i] = socket(AF_INET, SOCK_STREAM, 0);
        assert_int_equal(connect(s[i], (struct sockaddr *)&a, sizeof a), 0);
        const char *first = i % 2 ? "GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
                                  : "GET /metrics HTTP/1.1\r\n";
        assert_true(send(s[i], first, strlen(first), MSG_NOSIGNAL) > 0);
    }
    /* 13 s of dripping: past the 10 s every request has */
    int cut = 0;
    for (int t = 0; t < 13; t++) {
        sleep(1);
        for (int i = 0; i < NSLOW; i++) {
            if (s[i] < 0 || t % 2)
                continue;
            const char *more =
                i % 2 ? "GET /x HTTP/1.1\r\nHost: a\r\n\r\n" : "X-Slow: 1\r\n";
            if (send(s[i], more, strlen(more), MSG_NOSIGNAL | MSG_DONTWAIT) <
                0) {
                close(s[i]);
                s[i] = -1;
                cut++;
            }
        }
    }
    /* while they still drip, a scrape is served at once (3 s: the
     * endpoint's own idle timeout, 10 s, cannot be what lets it in) */
    int code = 0;
    http_timeout_s = 3;
    char *page = http_get(f->lead_port, "/metrics", &code);
    http_timeout_s = 15;
    for (int i = 0; i < NSLOW; i++)
        if (s[i] >= 0)
            close(s[i]);
    if (!page || code != 200)
        fail_msg("a scrape after 13 s of 16 slow peers: HTTP %d (%d of them "
                 "seen cut)",
                 code, cut);
    assert_true(sample(page, "kbsync_version") >= 0);
    free(page);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_metrics_render_format),
        cmocka_unit_test_setup_teardown(test_node_metrics_slow_peers_cut,
                                        e2e_setup, e2e_teardown),
        cmocka_unit_test_setup_teardown(
            test_node_metrics_endpoint_of_real_nodes, e2e_setup, e2e_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
