/* End-to-end test of replication: a real `kbsync leader` and two real
 * `kbsync replica` processes on loopback, driven with the real CLI. Covers
 * `all` and `async` ingest, upsert/delete on replicas, catch-up after a
 * replica restart, an `all` write refused while a replica is down, a stalled
 * replica timing an `all` write out, a cut-off replica's growing lag, and
 * kill -9 of the leader. Timing assertions are generous (loaded 2-core CI). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "kb_proc.h"

#include "kb_err.h"
#include "kbsync.pb-c.h"

#include <zmq.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define DIM 16

typedef struct node {
    char data[300], epfile[300], log[300], ep[256];
    pid_t pid;
} node_t;

typedef struct cluster {
    char dir[256];
    char repl_ep[64];
    node_t leader, r[2];
} cluster_t;

static void write_jsonl(const char *path, const char *prefix, int from, int to)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = from; i < to; i++) {
        fprintf(f, "{\"id\": \"%s-%d\", \"text\": \"doc %d\", \"embedding\": [",
                prefix, i, i);
        for (int j = 0; j < DIM; j++)
            fprintf(f, "%s%.9g", j ? "," : "", kbp_vec(i, j));
        fprintf(f, "]}\n");
    }
    fclose(f);
}

/* A free loopback port for the replication endpoint: bind :0, read, close.
 * (The client endpoints use --listen tcp://127.0.0.1:* instead.) */
static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(s, (struct sockaddr *)&a, sizeof a) ||
        getsockname(s, (struct sockaddr *)&a, &len)) {
        close(s);
        return -1;
    }
    int port = ntohs(a.sin_port);
    close(s);
    return port;
}

static void node_paths(cluster_t *c, node_t *n, const char *name)
{
    snprintf(n->data, sizeof n->data, "%s/%s", c->dir, name);
    snprintf(n->epfile, sizeof n->epfile, "%s/%s.ep", c->dir, name);
    snprintf(n->log, sizeof n->log, "%s/%s.log", c->dir, name);
}

static void start_leader_args(cluster_t *c, const char *const *extra);

static void start_leader(cluster_t *c, const char *extra1, const char *extra2)
{
    const char *extra[] = {extra1, extra2, NULL};
    start_leader_args(c, extra1 ? extra : NULL);
}

static void start_leader_args(cluster_t *c, const char *const *extra)
{
    node_t *n = &c->leader;
    unlink(n->epfile);
    char dim[8];
    snprintf(dim, sizeof dim, "%d", DIM);
    char *argv[24] = {"kbsync",
                      "leader",
                      "--data",
                      n->data,
                      "--dim",
                      dim,
                      "--listen",
                      "tcp://127.0.0.1:*",
                      "--endpoint-file",
                      n->epfile,
                      "--repl-listen",
                      c->repl_ep,
                      "--replicas",
                      "r1,r2",
                      NULL};
    int k = 14;
    for (int i = 0; extra && extra[i] && k < 23; i++)
        argv[k++] = (char *)extra[i];
    argv[k] = NULL;
    n->pid = kbp_spawn(n->log, argv);
    assert_true(n->pid > 0);
    assert_int_equal(kbp_wait_file(n->epfile, n->ep, sizeof n->ep, 20000), 0);
}

static void start_replica_args(cluster_t *c, int i, const char *const *extra);

static void start_replica(cluster_t *c, int i)
{
    start_replica_args(c, i, NULL);
}

static void start_replica_args(cluster_t *c, int i, const char *const *extra)
{
    node_t *n = &c->r[i];
    unlink(n->epfile);
    char id[8];
    snprintf(id, sizeof id, "r%d", i + 1);
    char *argv[] = {"kbsync",
                    "replica",
                    "--data",
                    n->data,
                    "--id",
                    id,
                    "--leader",
                    c->repl_ep,
                    "--listen",
                    "tcp://127.0.0.1:*",
                    "--endpoint-file",
                    n->epfile,
                    NULL,
                    NULL,
                    NULL,
                    NULL,
                    NULL};
    for (int k = 12, j = 0; extra && extra[j] && k < 16; j++)
        argv[k++] = (char *)extra[j];
    n->pid = kbp_spawn(n->log, argv);
    assert_true(n->pid > 0);
    assert_int_equal(kbp_wait_file(n->epfile, n->ep, sizeof n->ep, 20000), 0);
}

static cJSON *status(const node_t *n)
{
    static char out[1 << 16];
    if (kbp_run(out, sizeof out,
                "'%s' status --to '%s' --json --timeout-ms 5000", kbp_bin(),
                n->ep) != 0)
        return NULL;
    return kbp_last_json(out);
}

static int replica_connected(const cJSON *leader_status, const char *id)
{
    const cJSON *r;
    cJSON_ArrayForEach(r, cJSON_GetObjectItem(leader_status, "replicas"))
    {
        if (!strcmp(cJSON_GetObjectItem(r, "id")->valuestring, id))
            return cJSON_IsTrue(cJSON_GetObjectItem(r, "connected"));
    }
    return 0;
}

/* Waits until the leader reports replica `id` connected (want=1) or not. */
static void wait_connected(cluster_t *c, const char *id, int want)
{
    for (int i = 0; i < 300; i++) {
        cJSON *s = status(&c->leader);
        int ok = s && replica_connected(s, id) == want;
        cJSON_Delete(s);
        if (ok)
            return;
        usleep(50000);
    }
    fail_msg("replica %s never became %s", id,
             want ? "connected" : "disconnected");
}

/* Waits until node n reports version >= v; returns the version seen. */
static int wait_version(const node_t *n, int v, int timeout_ms)
{
    int seen = -1;
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        cJSON *s = status(n);
        if (s)
            seen = (int)kbp_num(s, "version");
        cJSON_Delete(s);
        if (seen >= v)
            return seen;
        usleep(50000);
    }
    return seen;
}

static int setup(void **state)
{
    cluster_t *c = calloc(1, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "/tmp/kbsync-repl-XXXXXX");
    if (!mkdtemp(c->dir))
        return -1;
    snprintf(c->repl_ep, sizeof c->repl_ep, "tcp://127.0.0.1:%d", free_port());
    node_paths(c, &c->leader, "leader");
    node_paths(c, &c->r[0], "r1");
    node_paths(c, &c->r[1], "r2");
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    cluster_t *c = *state;
    kbp_kill_all();
    unsetenv("KBSYNC_KEY");
    unsetenv("KBSYNC_SERVER_KEY");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", c->dir);
    free(c);
    return 0;
}

static void start_cluster(cluster_t *c, const char *e1, const char *e2)
{
    start_leader(c, e1, e2);
    start_replica(c, 0);
    start_replica(c, 1);
    wait_connected(c, "r1", 1);
    wait_connected(c, "r2", 1);
}

static int ingest(cluster_t *c, const char *mode, const char *file,
                  cJSON **summary)
{
    static char out[1 << 16];
    int rc = kbp_run(out, sizeof out,
                     "'%s' ingest --to '%s' --mode %s --batch 50 '%s'",
                     kbp_bin(), c->leader.ep, mode, file);
    if (summary)
        *summary = kbp_last_json(out);
    return rc;
}

/* Writes DIR/PREFIX.jsonl with docs PREFIX-0 .. PREFIX-(n-1) and ingests it
 * in `mode`, which must succeed. */
static void ingest_docs(cluster_t *c, const char *prefix, int n,
                        const char *mode)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s.jsonl", c->dir, prefix);
    write_jsonl(path, prefix, 0, n);
    assert_int_equal(ingest(c, mode, path, NULL), 0);
}

/* Queries node n with doc's vector; returns the rank of id in the hits
 * (-1 absent) and the answer's version in *version. */
static int rank_on(const node_t *n, int doc, const char *id, int *version)
{
    static char out[1 << 18];
    char v[1024];
    int rc = kbp_run(out, sizeof out,
                     "'%s' query --to '%s' -k 5 --json --vector '%s'",
                     kbp_bin(), n->ep, kbp_vector_arg(doc, DIM, v, sizeof v));
    assert_int_equal(rc, 0);
    cJSON *q = kbp_last_json(out);
    assert_non_null(q);
    if (version)
        *version = (int)kbp_num(q, "version");
    int rank = -1, i = 0;
    const cJSON *h;
    cJSON_ArrayForEach(h, cJSON_GetObjectItem(q, "hits"))
    {
        if (rank < 0 && !strcmp(cJSON_GetObjectItem(h, "id")->valuestring, id))
            rank = i;
        i++;
    }
    cJSON_Delete(q);
    return rank;
}

static void test_e2e_repl_all_mode_visible_on_every_replica(void **state)
{
    cluster_t *c = *state;
    start_cluster(c, NULL, NULL);
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    write_jsonl(path, "a", 0, 200);
    cJSON *s;
    assert_int_equal(ingest(c, "all", path, &s), 0);
    assert_int_equal((int)kbp_num(s, "written"), 200);
    assert_int_equal((int)kbp_num(s, "version"), 200);
    cJSON_Delete(s);
    /* immediately after the acknowledgement, every replica has every write */
    for (int r = 0; r < 2; r++) {
        cJSON *st = status(&c->r[r]);
        assert_non_null(st);
        assert_string_equal(cJSON_GetObjectItem(st, "role")->valuestring,
                            "replica");
        assert_int_equal((int)kbp_num(st, "version"), 200);
        assert_int_equal((int)kbp_num(st, "docs"), 200);
        assert_int_equal((int)kbp_num(st, "lag_ops"), 0);
        cJSON_Delete(st);
        for (int d = 0; d < 200; d += 37) {
            char id[32];
            snprintf(id, sizeof id, "a-%d", d);
            int ver;
            assert_int_equal(rank_on(&c->r[r], d, id, &ver), 0);
            assert_int_equal(ver, 200);
        }
    }
    /* upsert and delete in `all` mode are visible on replicas at once */
    snprintf(path, sizeof path, "%s/b.jsonl", c->dir);
    write_jsonl(path, "a", 5, 6); /* re-upsert a-5 */
    assert_int_equal(ingest(c, "all", path, NULL), 0);
    char out[4096];
    assert_int_equal(kbp_run(out, sizeof out,
                             "'%s' delete --to '%s' --mode all a-7", kbp_bin(),
                             c->leader.ep),
                     0);
    for (int r = 0; r < 2; r++) {
        int ver;
        assert_int_equal(rank_on(&c->r[r], 7, "a-7", &ver), -1);
        assert_int_equal(ver, 202);
        assert_int_equal(rank_on(&c->r[r], 5, "a-5", NULL), 0);
        cJSON *st = status(&c->r[r]);
        assert_int_equal((int)kbp_num(st, "docs"), 199);
        cJSON_Delete(st);
    }
    /* writes sent to a replica are refused, naming the leader */
    int rc = kbp_run(out, sizeof out, "'%s' delete --to '%s' a-1 2>&1",
                     kbp_bin(), c->r[0].ep);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, c->leader.ep));
}

/* Disk flushes per commit on each node (issue #13): the leader flushes
 * every group commit in full (data, then meta); a replica commits records
 * no writer waits for lazily (one flush, meta with the next commit),
 * flushes them in full once the stream pauses, and flushes in full at once
 * what an `all` writer waits for. */
static void test_e2e_repl_flushes_per_commit(void **state)
{
    cluster_t *c = *state;
    start_cluster(c, NULL, NULL);
    char path[400], out[1 << 16];
    snprintf(path, sizeof path, "%s/f.jsonl", c->dir);
    write_jsonl(path, "f", 0, 40);
    int rc = kbp_run(out, sizeof out,
                     "'%s' ingest --to '%s' --mode async --batch 1 '%s'",
                     kbp_bin(), c->leader.ep, path);
    assert_int_equal(rc, 0);
    assert_int_equal(wait_version(&c->r[0], 40, 20000), 40);
    usleep(200000); /* the stream paused: lazy commits are flushed */
    cJSON *ls = status(&c->leader), *rs = status(&c->r[0]);
    assert_non_null(ls);
    assert_non_null(rs);
    int lcommits = (int)kbp_num(ls, "commits");
    assert_true(lcommits >= 1 && lcommits <= 40);
    /* (>=: the leader also saves retention pins every 5 s, in full) */
    assert_true(kbp_num(ls, "synced_commits") >= lcommits);
    assert_int_equal((int)kbp_num(ls, "lazy_commits"), 0);
    int rcommits = (int)kbp_num(rs, "commits");
    int rlazy = (int)kbp_num(rs, "lazy_commits");
    assert_true(rcommits >= 1 && rcommits <= lcommits);
    assert_int_equal(rlazy, rcommits);
    assert_int_equal((int)kbp_num(rs, "synced_commits"), 0);
    assert_true(kbp_num(rs, "store_syncs") >= 1);
    assert_int_equal((int)kbp_num(rs, "durable_version"), 40);
    cJSON_Delete(ls);
    cJSON_Delete(rs);
    /* the leader sees r1 durable and applied at 40 (acks say so) */
    for (int i = 0; i < 100; i++) {
        cJSON *l = status(&c->leader);
        const cJSON *r;
        int ok = 0;
        cJSON_ArrayForEach(r, cJSON_GetObjectItem(l, "replicas"))
        {
            if (!strcmp(cJSON_GetObjectItem(r, "id")->valuestring, "r1"))
                ok = kbp_num(r, "version") == 40 &&
                     kbp_num(r, "durable_version") == 40;
        }
        cJSON_Delete(l);
        if (ok)
            break;
        assert_true(i < 99);
        usleep(20000);
    }

    /* `all`: every commit on the replica is flushed in full */
    snprintf(path, sizeof path, "%s/g.jsonl", c->dir);
    write_jsonl(path, "g", 0, 10);
    rc = kbp_run(out, sizeof out,
                 "'%s' ingest --to '%s' --mode all --batch 1 '%s'",
                 kbp_bin(), c->leader.ep, path);
    assert_int_equal(rc, 0);
    ls = status(&c->leader);
    rs = status(&c->r[0]);
    int lnew = (int)kbp_num(ls, "commits") - lcommits;
    assert_true(lnew >= 1);
    assert_true(kbp_num(ls, "synced_commits") >= lcommits + lnew);
    assert_int_equal((int)kbp_num(ls, "lazy_commits"), 0);
    assert_int_equal((int)kbp_num(rs, "lazy_commits"), rlazy);
    /* each commit the replica made for them was flushed in full (not
     * compared with lnew: the leader's count also holds its own retention
     * pins and compaction, which a slow run can fit in; >=: the replica
     * also commits marks of its own in full, e.g. its staged mark) */
    int rnew = (int)kbp_num(rs, "commits") - rcommits;
    assert_true(rnew >= 1);
    assert_true((int)kbp_num(rs, "synced_commits") >= rnew);
    assert_int_equal((int)kbp_num(rs, "version"), 50);
    assert_int_equal((int)kbp_num(rs, "durable_version"), 50);
    cJSON_Delete(ls);
    cJSON_Delete(rs);
}

/* kill -9 of the leader between its commit and the replicas' durability
 * acks, in each write mode (KBSYNC_TEST_FAULT=crash-after-commit: the
 * leader exits right after a group commit, before answering it and, for
 * `async`, before streaming it; an `all` or quorum group was shipped before
 * the commit and sits staged on the replicas). Nothing acknowledged is
 * lost, the committed write survives, and both replicas converge on the
 * leader's documents, lazily committed records included. */
static void test_e2e_repl_leader_killed_between_commit_and_acks(void **state)
{
    cluster_t *c = *state;
    const char *modes[] = {"async", "quorum:1", "all"};
    char path[400], out[1 << 16];
    int total = 0;
    for (int m = 0; m < 3; m++) {
        setenv("KBSYNC_TEST_FAULT", "crash-after-commit:3", 1);
        start_leader(c, NULL, NULL);
        unsetenv("KBSYNC_TEST_FAULT");
        if (m == 0) {
            start_replica(c, 0);
            start_replica(c, 1);
        }
        wait_connected(c, "r1", 1);
        wait_connected(c, "r2", 1);
        char prefix[8];
        snprintf(prefix, sizeof prefix, "k%d", m);
        snprintf(path, sizeof path, "%s/%s.jsonl", c->dir, prefix);
        write_jsonl(path, prefix, m * 100, m * 100 + 30);
        int before = total;
        int rc = kbp_run(out, sizeof out,
                         "'%s' ingest --to '%s' --mode %s --batch 1 "
                         "--timeout-ms 3000 --retries 0 '%s' 2>&1",
                         kbp_bin(), c->leader.ep, modes[m], path);
        assert_int_not_equal(rc, 0); /* the leader died under it */
        int st = 0;
        pid_t got = 0;
        for (int i = 0; i < 400 && got == 0; i++) {
            got = waitpid(c->leader.pid, &st, WNOHANG);
            if (got == 0)
                usleep(50000);
        }
        if (got != c->leader.pid)
            fail_msg("the leader did not exit at its 3rd commit (%s): %s",
                     modes[m], out);
        kbp_forget(c->leader.pid);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 9);
        start_leader(c, NULL, NULL);
        cJSON *ls = status(&c->leader);
        assert_non_null(ls);
        int v = (int)kbp_num(ls, "version");
        int docs = (int)kbp_num(ls, "docs");
        cJSON_Delete(ls);
        /* 3 commits of at least one write each, the crashing one too */
        assert_true(v >= total + 3);
        assert_int_equal(docs, v);
        total = v;
        for (int r = 0; r < 2; r++) {
            assert_int_equal(wait_version(&c->r[r], v, 20000), v);
            cJSON *rs = status(&c->r[r]);
            assert_int_equal((int)kbp_num(rs, "docs"), docs);
            cJSON_Delete(rs);
        }
        /* the newest write committed (one request per document, in file
         * order) is searchable on both replicas, the next one nowhere */
        int n = v - before;
        char id[32];
        snprintf(id, sizeof id, "%s-%d", prefix, m * 100 + n - 1);
        for (int r = 0; r < 2; r++)
            assert_int_equal(rank_on(&c->r[r], m * 100 + n - 1, id, NULL), 0);
        snprintf(id, sizeof id, "%s-%d", prefix, m * 100 + n);
        assert_int_equal(rank_on(&c->leader, m * 100 + n, id, NULL), -1);
        assert_int_equal(kbp_stop(c->leader.pid, SIGTERM, 10000), 0);
    }
}

static void test_e2e_repl_async_converges_and_lag_is_reported(void **state)
{
    cluster_t *c = *state;
    start_cluster(c, NULL, NULL);
    /* stall r1 so that async writes are acknowledged without it */
    kill(c->r[0].pid, SIGSTOP);
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    write_jsonl(path, "a", 0, 300);
    cJSON *s;
    assert_int_equal(ingest(c, "async", path, &s), 0);
    assert_int_equal((int)kbp_num(s, "written"), 300);
    cJSON_Delete(s);
    /* the leader reports r1 behind: non-zero lag before it converges */
    cJSON *ls = status(&c->leader);
    const cJSON *r;
    int seen = 0;
    cJSON_ArrayForEach(r, cJSON_GetObjectItem(ls, "replicas"))
    {
        if (!strcmp(cJSON_GetObjectItem(r, "id")->valuestring, "r1")) {
            assert_true(kbp_num(r, "lag_ops") > 0);
            assert_true(kbp_num(r, "version") < 300);
            seen = 1;
        }
    }
    assert_true(seen);
    cJSON_Delete(ls);
    kill(c->r[0].pid, SIGCONT);
    assert_int_equal(wait_version(&c->r[0], 300, 20000), 300);
    assert_int_equal(wait_version(&c->r[1], 300, 20000), 300);
    cJSON *st = status(&c->r[0]);
    assert_int_equal((int)kbp_num(st, "lag_ops"), 0);
    assert_int_equal((int)kbp_num(st, "docs"), 300);
    cJSON_Delete(st);
    assert_int_equal(rank_on(&c->r[0], 42, "a-42", NULL), 0);

    /* a replica cut off from the leader shows its lag growing */
    kill(c->leader.pid, SIGSTOP);
    usleep(600000);
    cJSON *s1 = status(&c->r[1]);
    usleep(700000);
    cJSON *s2 = status(&c->r[1]);
    kill(c->leader.pid, SIGCONT);
    assert_non_null(s1);
    assert_non_null(s2);
    assert_true(kbp_num(s1, "lag_ms") >= 300);
    assert_true(kbp_num(s2, "lag_ms") >= kbp_num(s1, "lag_ms") + 300);
    assert_true(kbp_num(s2, "leader_contact_ms") >= 1000);
    cJSON_Delete(s1);
    cJSON_Delete(s2);
}

/* A bounded read on replica n (--consistency bounded:MS, --wait-ms WAIT):
 * 1 answered (its lag_ms in *lag), 0 refused with KB_ESTALE. */
static int bounded_on(const node_t *n, int ms, int wait, int *lag)
{
    static char out[1 << 16];
    char v[1024];
    int rc = kbp_run(out, sizeof out,
                     "'%s' query --to '%s' -k 1 --json --vector '%s' "
                     "--consistency bounded:%d --wait-ms %d 2>&1",
                     kbp_bin(), n->ep, kbp_vector_arg(0, DIM, v, sizeof v),
                     ms, wait);
    if (rc) {
        assert_non_null(strstr(out, "KB_ESTALE"));
        return 0;
    }
    cJSON *q = kbp_last_json(out);
    assert_non_null(q);
    *lag = (int)kbp_num(q, "lag_ms");
    cJSON_Delete(q);
    return 1;
}

/* lag_ms is never below the true lag, so a bounded read is never answered
 * staler than asked: a replica that holds every write it knows of can
 * vouch only for the time since the leader's last message (a write
 * committed since then may be on its way). Such a bounded read asks the
 * leader first, so tight bounds are answered on an idle knowledge base. */
static void test_e2e_repl_bounded_reads_never_staler(void **state)
{
    cluster_t *c = *state;
    start_cluster(c, NULL, NULL);
    ingest_docs(c, "a", 20, "all");
    /* Idle: heartbeats every 100 ms, so the leader's last message is
     * older than 20 ms most of the time; each read asks the leader. */
    int answered = 0, lag = -1;
    for (int i = 0; i < 10; i++) {
        if (bounded_on(&c->r[0], 20, 1000, &lag)) {
            answered++;
            assert_true(lag <= 20);
        }
        usleep(37000);
    }
    assert_true(answered >= 8);
    /* The leader stops: after 100 ms of silence (under the 300 ms after
     * which a silence also counts when behind), the caught-up replica
     * reports at least that silence, and refuses a 50 ms bound. */
    kill(c->leader.pid, SIGSTOP);
    usleep(100000);
    cJSON *st = status(&c->r[0]);
    int refused = !bounded_on(&c->r[0], 50, 200, &lag);
    kill(c->leader.pid, SIGCONT);
    assert_non_null(st);
    assert_int_equal((int)kbp_num(st, "lag_ops"), 0);
    assert_true(kbp_num(st, "lag_ms") >= 100);
    assert_true(kbp_num(st, "lag_ms") >= kbp_num(st, "leader_contact_ms"));
    cJSON_Delete(st);
    assert_true(refused);
    /* The leader answers again: so does the bound. */
    int ok = 0;
    for (int i = 0; i < 40 && !ok; i++)
        if (!(ok = bounded_on(&c->r[0], 50, 1000, &lag)))
            usleep(50000);
    assert_true(ok);
    assert_true(lag <= 50);
}

static void test_e2e_repl_replica_restart_catches_up(void **state)
{
    cluster_t *c = *state;
    start_cluster(c, NULL, NULL);
    ingest_docs(c, "a", 100, "all");
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    /* r2 dies; async writes go on without it */
    kill(c->r[1].pid, SIGKILL);
    waitpid(c->r[1].pid, NULL, 0);
    kbp_forget(c->r[1].pid);
    wait_connected(c, "r2", 0);

    /* `all` with r2 down: refused at once, nothing committed */
    snprintf(path, sizeof path, "%s/b.jsonl", c->dir);
    write_jsonl(path, "b", 0, 10);
    static char out[1 << 16];
    int rc =
        kbp_run(out, sizeof out, "'%s' ingest --to '%s' --mode all '%s' 2>&1",
                kbp_bin(), c->leader.ep, path);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "KB_ENOREPLICA"));
    assert_non_null(strstr(out, "r2"));
    cJSON *ls = status(&c->leader);
    assert_int_equal((int)kbp_num(ls, "version"), 100);
    cJSON_Delete(ls);

    snprintf(path, sizeof path, "%s/c.jsonl", c->dir);
    write_jsonl(path, "c", 0, 150);
    assert_int_equal(ingest(c, "async", path, NULL), 0);
    assert_int_equal(kbp_run(out, sizeof out, "'%s' delete --to '%s' a-3",
                             kbp_bin(), c->leader.ep),
                     0);
    /* r2 restarts from its own applied LSN and receives only what it missed */
    start_replica(c, 1);
    assert_int_equal(wait_version(&c->r[1], 251, 20000), 251);
    cJSON *st = status(&c->r[1]);
    assert_int_equal((int)kbp_num(st, "docs"), 249);
    cJSON_Delete(st);
    assert_int_equal(rank_on(&c->r[1], 77, "c-77", NULL), 0);
    assert_int_equal(rank_on(&c->r[1], 3, "a-3", NULL), -1);
    rc =
        kbp_run(out, sizeof out,
                "grep -c 'r2 connected: applied LSN 100,' '%s'", c->leader.log);
    assert_int_equal(rc, 0);
}

static void test_e2e_repl_stalled_replica_times_out_all_write(void **state)
{
    cluster_t *c = *state;
    start_cluster(c, "--write-timeout-ms", "800");
    kill(c->r[0].pid, SIGSTOP); /* alive for TCP, but applies nothing */
    static char out[1 << 16];
    int rc = kbp_run(out, sizeof out, "'%s' delete --to '%s' --mode all x 2>&1",
                     kbp_bin(), c->leader.ep);
    assert_int_equal(rc,
                     0); /* a missing id takes no LSN: nothing to wait for */
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    write_jsonl(path, "a", 0, 5);
    rc = kbp_run(out, sizeof out, "'%s' ingest --to '%s' --mode all '%s' 2>&1",
                 kbp_bin(), c->leader.ep, path);
    kill(c->r[0].pid, SIGCONT);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "IS committed on the leader at version 5"));
    assert_non_null(strstr(out, "r1"));
    cJSON *s = kbp_last_json(out);
    assert_int_equal((int)kbp_num(s, "written"), 5);
    assert_int_equal((int)kbp_num(s, "unreplicated"), 5);
    cJSON_Delete(s);
    /* the write reaches r1 once it is back */
    assert_int_equal(wait_version(&c->r[0], 5, 20000), 5);
}

static void test_e2e_repl_leader_kill9_loses_nothing(void **state)
{
    cluster_t *c = *state;
    start_cluster(c, NULL, NULL);
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    write_jsonl(path, "a", 0, 400);
    cJSON *s;
    assert_int_equal(ingest(c, "all", path, &s), 0);
    int acked = (int)kbp_num(s, "version");
    cJSON_Delete(s);
    assert_int_equal(acked, 400);
    kill(c->leader.pid, SIGKILL);
    waitpid(c->leader.pid, NULL, 0);
    kbp_forget(c->leader.pid);
    /* replicas keep answering, stale but honest */
    cJSON *st = status(&c->r[0]);
    assert_int_equal((int)kbp_num(st, "version"), 400);
    cJSON_Delete(st);
    /* a replica restarted while its leader is down has heard nothing: it
     * must not claim lag 0, and bounded-staleness reads are refused */
    kill(c->r[0].pid, SIGKILL);
    waitpid(c->r[0].pid, NULL, 0);
    kbp_forget(c->r[0].pid);
    usleep(400000);
    start_replica(c, 0);
    st = status(&c->r[0]);
    assert_int_equal((int)kbp_num(st, "version"), 400);
    assert_true(kbp_num(st, "lag_ms") >= 400);
    cJSON_Delete(st);
    static char out[1 << 16];
    char v[1024];
    int rc =
        kbp_run(out, sizeof out,
                "'%s' query --to '%s' --max-lag-ms 200 --vector '%s' 2>&1",
                kbp_bin(), c->r[0].ep, kbp_vector_arg(1, DIM, v, sizeof v));
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "KB_ESTALE"));
    start_leader(c, NULL, NULL);
    cJSON *ls = status(&c->leader);
    assert_int_equal((int)kbp_num(ls, "version"), 400);
    assert_int_equal((int)kbp_num(ls, "docs"), 400);
    cJSON_Delete(ls);
    wait_connected(c, "r1", 1);
    wait_connected(c, "r2", 1);
    snprintf(path, sizeof path, "%s/b.jsonl", c->dir);
    write_jsonl(path, "b", 0, 10);
    assert_int_equal(ingest(c, "all", path, &s), 0);
    assert_int_equal((int)kbp_num(s, "version"), 410);
    cJSON_Delete(s);
    for (int r = 0; r < 2; r++)
        assert_int_equal(rank_on(&c->r[r], 9, "b-9", NULL), 0);
}

/* Lines of file path that contain needle. */
static int file_count(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

static int file_has(const char *path, const char *needle)
{
    return file_count(path, needle) > 0;
}

/* The leader dies after shipping a group to the replicas and before its own
 * commit (KBSYNC_TEST_FAULT, as a power cut would): no replica may serve
 * that write, not while the leader is down, not after a replica restart,
 * and at the leader's return each replica drops only that tail. */
static void test_e2e_repl_unconfirmed_records_never_served(void **state)
{
    cluster_t *c = *state;
    setenv("KBSYNC_TEST_FAULT", "crash-after-ship:2", 1);
    start_leader(c, "--write-mode", "all");
    unsetenv("KBSYNC_TEST_FAULT");
    start_replica(c, 0);
    start_replica(c, 1);
    wait_connected(c, "r1", 1);
    wait_connected(c, "r2", 1);
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    write_jsonl(path, "a", 0, 40);
    cJSON *s;
    assert_int_equal(ingest(c, "all", path, &s), 0); /* shipped group #1 */
    assert_int_equal((int)kbp_num(s, "version"), 40);
    cJSON_Delete(s);
    snprintf(path, sizeof path, "%s/p.jsonl", c->dir);
    write_jsonl(path, "p", 0, 5);
    /* group #2: shipped, never committed; the client gets no answer */
    static char out[1 << 16];
    kbp_run(out, sizeof out,
            "'%s' ingest --to '%s' --mode all --timeout-ms 3000 '%s'",
            kbp_bin(), c->leader.ep, path);
    assert_int_equal(waitpid(c->leader.pid, NULL, 0), c->leader.pid);
    kbp_forget(c->leader.pid);
    assert_true(file_has(c->leader.log, "KBSYNC_TEST_FAULT: exiting"));
    /* Both replicas received the records (durable there) ... */
    for (int r = 0; r < 2; r++) {
        int seen = -1;
        for (int i = 0; i < 40 && seen < 0; i++) {
            usleep(50000);
            seen = file_has(c->r[r].log, "dropped") ? 1 : -1;
            cJSON *st = status(&c->r[r]);
            assert_non_null(st);
            /* ... but serve none of them. */
            assert_int_equal((int)kbp_num(st, "version"), 40);
            assert_int_equal((int)kbp_num(st, "docs"), 40);
            cJSON_Delete(st);
        }
        int v;
        assert_int_equal(rank_on(&c->r[r], 3, "p-3", &v), -1);
        assert_int_equal(v, 40);
    }
    /* A replica restarted while the leader is down drops the unconfirmed
     * records before it serves. */
    kill(c->r[0].pid, SIGKILL);
    waitpid(c->r[0].pid, NULL, 0);
    kbp_forget(c->r[0].pid);
    start_replica(c, 0);
    cJSON *st = status(&c->r[0]);
    assert_int_equal((int)kbp_num(st, "version"), 40);
    cJSON_Delete(st);
    assert_int_equal(rank_on(&c->r[0], 3, "p-3", NULL), -1);
    assert_true(file_has(c->r[0].log, "that the leader had not confirmed"));
    /* The leader comes back without them; r2 still holds them: it drops
     * only that tail, never its whole knowledge base. */
    start_leader(c, NULL, NULL);
    wait_connected(c, "r1", 1);
    wait_connected(c, "r2", 1);
    assert_true(file_has(c->r[1].log, "records after LSN 40"));
    assert_false(file_has(c->r[1].log, "starting over from an empty"));
    assert_false(file_has(c->r[0].log, "starting over from an empty"));
    snprintf(path, sizeof path, "%s/b.jsonl", c->dir);
    write_jsonl(path, "b", 0, 10);
    assert_int_equal(ingest(c, "all", path, &s), 0);
    assert_int_equal((int)kbp_num(s, "version"), 50);
    cJSON_Delete(s);
    for (int r = 0; r < 2; r++) {
        assert_int_equal(rank_on(&c->r[r], 9, "b-9", NULL), 0);
        assert_int_equal(rank_on(&c->r[r], 3, "p-3", NULL), -1);
        st = status(&c->r[r]);
        assert_int_equal((int)kbp_num(st, "docs"), 50);
        cJSON_Delete(st);
    }
}

static void stop_node(node_t *n, int sig)
{
    kill(n->pid, sig);
    waitpid(n->pid, NULL, 0);
    kbp_forget(n->pid);
}

/* Waits until the leader's log starts above `above`; returns it. */
static int wait_log_start(const node_t *n, int above, int timeout_ms)
{
    int seen = -1;
    for (int waited = 0; waited <= timeout_ms; waited += 100) {
        cJSON *s = status(n);
        if (s)
            seen = (int)kbp_num(s, "log_start");
        cJSON_Delete(s);
        if (seen > above)
            return seen;
        usleep(100000);
    }
    return seen;
}

/* The replica holds what the leader holds: same version and documents,
 * and every sampled document answers with the same top hit. */
static void expect_same(cluster_t *c, node_t *r, int ndocs, const char *prefix)
{
    cJSON *ls = status(&c->leader), *rs = NULL;
    int lv = (int)kbp_num(ls, "version"), ld = (int)kbp_num(ls, "docs");
    cJSON_Delete(ls);
    assert_true(wait_version(r, lv, 30000) >= lv);
    rs = status(r);
    assert_int_equal((int)kbp_num(rs, "docs"), ld);
    cJSON_Delete(rs);
    for (int d = 0; d < ndocs; d += ndocs / 25) {
        char id[64];
        snprintf(id, sizeof id, "%s-%d", prefix, d);
        int vl, vr;
        int a = rank_on(&c->leader, d, id, &vl), b = rank_on(r, d, id, &vr);
        assert_int_equal(a, b);
        assert_int_equal(vl, vr);
    }
}

/* A named replica that is away pins the log: the leader compacts nothing
 * it still needs, and it catches up from the log, not from a snapshot. */
static void test_e2e_repl_retention_keeps_what_a_named_replica_needs(
    void **state)
{
    cluster_t *c = *state;
    start_cluster(c, "--log-keep-ops", "0");
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    write_jsonl(path, "a", 0, 300);
    assert_int_equal(ingest(c, "all", path, NULL), 0); /* LSN 1..300 */
    assert_int_equal(ingest(c, "all", path, NULL), 0); /* replaces them */
    int start = wait_log_start(&c->leader, 300, 5000);
    assert_true(start > 300); /* compacted: both replicas have it all */
    stop_node(&c->r[1], SIGKILL); /* r2 stops at 600 */
    wait_connected(c, "r2", 0);
    assert_int_equal(ingest(c, "async", path, NULL), 0); /* 601..900 */
    assert_int_equal(ingest(c, "async", path, NULL), 0); /* 901..1200 */
    usleep(2500000); /* two retention passes */
    cJSON *ls = status(&c->leader);
    int ls_start = (int)kbp_num(ls, "log_start");
    cJSON_Delete(ls);
    assert_true(ls_start <= 600); /* r2's newest record is kept */
    start_replica(c, 1);
    expect_same(c, &c->r[1], 300, "a");
    assert_true(file_has(c->leader.log, "streaming what it missed"));
    assert_false(file_has(c->r[1].log, "snapshot"));
    /* Once r2 is back, the log is compacted past it. */
    assert_true(wait_log_start(&c->leader, 900, 5000) > 900);
}

/* Beyond --log-retain-mb, a named replica that is away loses its pin: at
 * its return it is told it is behind the retained log and gets a snapshot;
 * a new replica of a compacted log gets one too. Both converge. */
static void test_e2e_repl_snapshot_when_behind_or_new(void **state)
{
    cluster_t *c = *state;
    const char *extra[] = {"--log-retain-mb", "1", "--log-keep-ops", "0", NULL};
    start_leader_args(c, extra);
    start_replica(c, 0);
    start_replica(c, 1);
    wait_connected(c, "r1", 1);
    wait_connected(c, "r2", 1);
    ingest_docs(c, "a", 6000, "async");
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    assert_true(wait_version(&c->r[1], 6000, 20000) >= 6000);
    stop_node(&c->r[1], SIGKILL);
    wait_connected(c, "r2", 0);
    /* Replace every document twice and delete some: over 1 MB of log. */
    assert_int_equal(ingest(c, "async", path, NULL), 0);
    assert_int_equal(ingest(c, "async", path, NULL), 0);
    static char out[1 << 16];
    assert_int_equal(kbp_run(out, sizeof out,
                             "'%s' delete --to '%s' a-1 a-2 a-3 a-5000",
                             kbp_bin(), c->leader.ep),
                     0);
    assert_true(wait_log_start(&c->leader, 6000, 10000) > 6000);
    assert_true(file_has(c->leader.log, "it is sent a snapshot"));
    start_replica(c, 1);
    expect_same(c, &c->r[1], 6000, "a");
    assert_true(file_has(c->r[1].log, "behind the retained log"));
    assert_true(file_has(c->r[1].log, "snapshot complete"));
    assert_int_equal(rank_on(&c->r[1], 5000, "a-5000", NULL), -1);
    /* A new replica (empty directory) of the compacted log. */
    stop_node(&c->r[0], SIGKILL);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->r[0].data);
    assert_int_equal(system(cmd), 0);
    start_replica(c, 0);
    expect_same(c, &c->r[0], 6000, "a");
    assert_true(file_has(c->r[0].log, "snapshot complete"));
    assert_true(file_has(c->leader.log, "is new; the log is compacted"));
}

/* Documents with ~2 KB of text, so that a snapshot takes a while. */
static void write_big_jsonl(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    char pad[2049];
    memset(pad, 'x', sizeof pad - 1);
    pad[sizeof pad - 1] = 0;
    for (int i = 0; i < n; i++) {
        fprintf(f, "{\"id\": \"s-%d\", \"text\": \"doc %d %s\", "
                   "\"embedding\": [",
                i, i, pad);
        for (int j = 0; j < DIM; j++)
            fprintf(f, "%s%.9g", j ? "," : "", kbp_vec(i, j));
        fprintf(f, "]}\n");
    }
    fclose(f);
}

/* Whether the node reports a snapshot being loaded. */
static int loading(const node_t *n)
{
    cJSON *s = status(n);
    int l = s && cJSON_GetObjectItem(s, "snapshot") != NULL;
    cJSON_Delete(s);
    return l;
}

/* kill -9 of the replica, then of the leader, in the middle of a snapshot:
 * while loading, the replica answers no query; it resumes or starts again,
 * and ends with the leader's documents. */
static void test_e2e_repl_kill9_during_snapshot(void **state)
{
    cluster_t *c = *state;
    start_cluster(c, "--log-keep-ops", "0");
    char path[400];
    snprintf(path, sizeof path, "%s/s.jsonl", c->dir);
    write_big_jsonl(path, 30000);
    assert_int_equal(ingest(c, "async", path, NULL), 0);
    assert_true(wait_version(&c->r[0], 30000, 30000) >= 30000);
    assert_true(wait_log_start(&c->leader, 20000, 10000) > 20000);
    stop_node(&c->r[1], SIGKILL);
    char cmd[800];
    snprintf(cmd, sizeof cmd, "rm -rf '%.300s'", c->r[1].data);
    assert_int_equal(system(cmd), 0);
    static char out[1 << 16];
    char v[1024];
    int killed = 0;

    for (int round = 0; round < 2; round++) {
        start_replica(c, 1);
        int seen = 0;
        for (int i = 0; i < 400 && !seen; i++) {
            seen = loading(&c->r[1]);
            if (!seen)
                usleep(5000);
        }
        if (!seen)
            break; /* loaded before we looked: nothing to kill */
        /* Loading: a query is refused, with the progress. */
        int rc = kbp_run(out, sizeof out,
                         "'%s' query --to '%s' --vector '%s' 2>&1",
                         kbp_bin(), c->r[1].ep,
                         kbp_vector_arg(3, DIM, v, sizeof v));
        if (loading(&c->r[1])) {
            assert_int_equal(rc, 1);
            assert_non_null(strstr(out, "KB_EUNAVAIL"));
            assert_non_null(strstr(out, "loading a snapshot"));
        }
        if (round == 0) {
            stop_node(&c->r[1], SIGKILL);
        } else {
            stop_node(&c->leader, SIGKILL);
            usleep(300000);
            start_leader(c, "--log-keep-ops", "0");
        }
        killed++;
    }
    if (c->r[1].pid <= 0 || kill(c->r[1].pid, 0))
        start_replica(c, 1);
    expect_same(c, &c->r[1], 30000, "s");
    assert_false(loading(&c->r[1]));
    assert_true(file_has(c->r[1].log, "snapshot complete"));
    print_message("killed %d times during the snapshot\n", killed);
}

/* A replica whose log shares no record with its leader's (here: the
 * leader's directory was replaced by a new knowledge base with the same
 * settings) is told it diverged with nothing to keep: it moves its data
 * directory aside (kept for inspection) and copies the leader's anew. */
static void test_e2e_repl_diverged_without_shared_record_starts_over(
    void **state)
{
    cluster_t *c = *state;
    start_cluster(c, NULL, NULL);
    ingest_docs(c, "a", 50, "all");
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    stop_node(&c->leader, SIGKILL);
    char cmd[800];
    snprintf(cmd, sizeof cmd, "rm -rf '%.300s'", c->leader.data);
    assert_int_equal(system(cmd), 0);
    /* A new leader history: other documents under the same LSNs. */
    start_leader(c, NULL, NULL);
    snprintf(path, sizeof path, "%s/b.jsonl", c->dir);
    write_jsonl(path, "b", 0, 60);
    static char out[1 << 16];
    assert_int_equal(kbp_run(out, sizeof out,
                             "'%s' ingest --to '%s' --mode async '%s'",
                             kbp_bin(), c->leader.ep, path),
                     0);
    wait_connected(c, "r1", 1);
    expect_same(c, &c->r[0], 60, "b");
    assert_int_equal(rank_on(&c->r[0], 7, "a-7", NULL), -1);
    assert_true(file_has(c->r[0].log, "starting over from an empty"));
    snprintf(cmd, sizeof cmd, "ls -d '%.300s'.diverged-* >/dev/null 2>&1",
             c->r[0].data);
    assert_int_equal(system(cmd), 0); /* the old copy is kept aside */
    snprintf(cmd, sizeof cmd, "rm -rf '%.300s'.diverged-* '%.300s'.diverged-*",
             c->r[0].data, c->r[1].data);
    assert_int_equal(system(cmd), 0);
}

/* ------------------------------------------------------- hostile peers */

/* A DEALER with routing id `id` connected to the replication endpoint. */
static void *peer_connect(void *ctx, const cluster_t *c, const char *id)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(s);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_ROUTING_ID, id, strlen(id));
    assert_int_equal(zmq_connect(s, c->repl_ep), 0);
    return s;
}

static void peer_send(void *s, Kbsync__ReplMessage *m)
{
    size_t n = kbsync__repl_message__get_packed_size(m);
    uint8_t buf[256];
    assert_true(n <= sizeof buf);
    kbsync__repl_message__pack(m, buf);
    assert_int_equal(zmq_send(s, buf, n, 0), (int)n);
}

/* A hello in protocol `version`, in a message of protocol `outer`. */
static void peer_hello2(void *s, uint32_t version, uint32_t outer,
                        const char *id)
{
    Kbsync__ReplHello h = KBSYNC__REPL_HELLO__INIT;
    h.protocol_version = version;
    h.replica_id = (char *)id;
    Kbsync__ReplMessage m = KBSYNC__REPL_MESSAGE__INIT;
    m.protocol_version = outer;
    m.body_case = KBSYNC__REPL_MESSAGE__BODY_HELLO;
    m.hello = &h;
    peer_send(s, &m);
}

static void peer_hello(void *s, uint32_t version, const char *id)
{
    peer_hello2(s, version, version, id);
}

/* The first message within ms (NULL when none came). */
static Kbsync__ReplMessage *peer_recv(void *s, int ms)
{
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) != 1)
        return NULL;
    zmq_msg_t zm;
    zmq_msg_init(&zm);
    assert_true(zmq_msg_recv(&zm, s, 0) >= 0);
    Kbsync__ReplMessage *m = kbsync__repl_message__unpack(
        NULL, zmq_msg_size(&zm), zmq_msg_data(&zm));
    zmq_msg_close(&zm);
    assert_non_null(m);
    return m;
}

static int leader_sees(cluster_t *c, const char *id);

/* Whether the leader's status lists replica id. */
static int leader_lists(cluster_t *c, const char *id)
{
    return leader_sees(c, id) >= 0;
}

/* Plain mode authenticates no one, but a peer that claims a connected
 * replica's id does not take its stream over, a hello in another protocol
 * version or from an unknown sender is answered with an error and enters
 * no table, and peers under made-up ids do not lock a real replica out. */
static void test_e2e_repl_impostors_are_refused(void **state)
{
    cluster_t *c = *state;
    start_cluster(c, "--write-timeout-ms", "3000");
    void *ctx = zmq_ctx_new();

    /* 1. a second "r1" while r1 runs: refused, r1 keeps streaming */
    void *imp = peer_connect(ctx, c, "r1");
    peer_hello(imp, 2, "r1");
    Kbsync__ReplMessage *m = peer_recv(imp, 1500);
    if (m)
        fail_msg("an impostor of a connected replica got an answer (type %d)",
                 (int)m->body_case);
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    write_jsonl(path, "a", 0, 5);
    cJSON *sum = NULL;
    assert_int_equal(ingest(c, "all", path, &sum), 0);
    assert_int_equal((int)kbp_num(sum, "written"), 5);
    cJSON_Delete(sum);
    zmq_close(imp);

    /* 2. another protocol version, in the hello or in the message around
     * it: an error, no table entry */
    for (int outer = 0; outer < 2; outer++) {
        /* A new id each time: the leader may not have seen the previous
         * connection close, and refuses a second one under its id. */
        const char *id = outer ? "rz" : "rx";
        void *old = peer_connect(ctx, c, id);
        peer_hello2(old, outer ? 2 : 99, outer ? 99 : 2, id);
        m = peer_recv(old, 5000);
        assert_non_null(m);
        assert_int_equal(m->body_case, KBSYNC__REPL_MESSAGE__BODY_ERROR);
        assert_int_equal(m->error->code, KB_EPROTO);
        kbsync__repl_message__free_unpacked(m, NULL);
        assert_false(leader_lists(c, id));
        zmq_close(old);
    }

    /* 3. an ack from an id that never said hello: "say hello first" */
    void *unk = peer_connect(ctx, c, "ry");
    Kbsync__ReplAck ack = KBSYNC__REPL_ACK__INIT;
    ack.applied_lsn = 5;
    Kbsync__ReplMessage am = KBSYNC__REPL_MESSAGE__INIT;
    am.protocol_version = 2;
    am.body_case = KBSYNC__REPL_MESSAGE__BODY_ACK;
    am.ack = &ack;
    peer_send(unk, &am);
    m = peer_recv(unk, 5000);
    assert_non_null(m);
    assert_int_equal(m->body_case, KBSYNC__REPL_MESSAGE__BODY_ERROR);
    assert_int_equal(m->error->code, KB_EUNAVAIL);
    kbsync__repl_message__free_unpacked(m, NULL);
    zmq_close(unk);

    /* 4. 1,000 made-up ids say hello and leave (the table holds 64); then
     * a real replica that is not named still gets in */
    for (int i = 0; i < 1000; i++) {
        char id[16];
        snprintf(id, sizeof id, "fake%d", i);
        void *f = peer_connect(ctx, c, id);
        peer_hello(f, 2, id);
        m = peer_recv(f, 5000);
        assert_non_null(m); /* plain mode: it is welcomed */
        kbsync__repl_message__free_unpacked(m, NULL);
        zmq_close(f);
    }
    node_t r3;
    node_paths(c, &r3, "r3");
    char *argv[] = {"kbsync",      "replica", "--data",
                    r3.data,       "--id",    "r3",
                    "--leader",    c->repl_ep, "--listen",
                    "tcp://127.0.0.1:*", "--endpoint-file", r3.epfile,
                    NULL};
    r3.pid = kbp_spawn(r3.log, argv);
    assert_true(r3.pid > 0);
    assert_int_equal(kbp_wait_file(r3.epfile, r3.ep, sizeof r3.ep, 20000), 0);
    assert_int_equal(wait_version(&r3, 5, 20000), 5);
    wait_connected(c, "r3", 1);
    zmq_ctx_term(ctx);
}

static void peer_ack(void *s, uint64_t applied, uint64_t durable)
{
    Kbsync__ReplAck ack = KBSYNC__REPL_ACK__INIT;
    ack.applied_lsn = applied;
    ack.durable_lsn = durable;
    Kbsync__ReplMessage am = KBSYNC__REPL_MESSAGE__INIT;
    am.protocol_version = 2;
    am.body_case = KBSYNC__REPL_MESSAGE__BODY_ACK;
    am.ack = &ack;
    peer_send(s, &am);
}

/* Messages on the replication socket that a replica never sends: strings
 * that are not UTF-8 (they would reach status answers), durable LSNs
 * beyond what was sent (a receipt's stage is a lower bound), a message
 * far larger than any hello or ack (cut off before the leader buffers
 * it), and acks that cost a peer its place, many times a second (one log
 * line a second, then a count). */
static void test_e2e_repl_hostile_peer_messages(void **state)
{
    cluster_t *c = *state;
    start_leader(c, NULL, NULL);
    ingest_docs(c, "a", 5, "async");
    void *ctx = zmq_ctx_new();

    /* 1. a replica id that is not UTF-8 */
    void *bad = peer_connect(ctx, c, "\xff\xfe");
    peer_hello(bad, 2, "\xff\xfe");
    Kbsync__ReplMessage *m = peer_recv(bad, 5000);
    assert_non_null(m);
    assert_int_equal(m->body_case, KBSYNC__REPL_MESSAGE__BODY_ERROR);
    assert_int_equal(m->error->code, KB_EINVAL);
    kbsync__repl_message__free_unpacked(m, NULL);
    zmq_close(bad);

    /* 2. an ack whose durable LSN is beyond anything sent */
    void *p = peer_connect(ctx, c, "rd");
    peer_hello(p, 2, "rd");
    m = peer_recv(p, 5000);
    assert_non_null(m);
    assert_int_equal(m->body_case, KBSYNC__REPL_MESSAGE__BODY_WELCOME);
    kbsync__repl_message__free_unpacked(m, NULL);
    peer_ack(p, 0, UINT64_MAX);
    usleep(300000);
    cJSON *st = status(&c->leader);
    assert_non_null(st);
    const cJSON *r;
    int seen = 0;
    cJSON_ArrayForEach(r, cJSON_GetObjectItem(st, "replicas"))
    {
        if (strcmp(cJSON_GetObjectItem(r, "id")->valuestring, "rd"))
            continue;
        seen = 1;
        assert_true(kbp_num(r, "durable_version") <= 5);
        assert_true(kbp_num(r, "received_version") <= 5);
    }
    assert_true(seen);
    cJSON_Delete(st);

    /* 3. acks of LSNs never sent, 30 times in about a second: each loses
     * the peer its place (it says hello again), one line a second */
    for (int i = 0; i < 30; i++) {
        peer_hello(p, 2, "rd");
        peer_ack(p, 1000000, 0);
        usleep(30000);
    }
    zmq_close(p);

    /* 4. 2 MiB of bytes: dropped with the connection by ZeroMQ, never
     * read into the leader (which would log it as undecodable) */
    void *big = peer_connect(ctx, c, "rbig");
    size_t n = 2u << 20;
    char *junk = malloc(n);
    memset(junk, 0xff, n);
    assert_int_equal(zmq_send(big, junk, n, 0), (int)n);
    free(junk);
    usleep(500000);
    zmq_close(big);
    zmq_ctx_term(ctx);
    st = status(&c->leader); /* the leader serves on */
    assert_non_null(st);
    assert_int_equal((int)kbp_num(st, "version"), 5);
    cJSON_Delete(st);
    assert_false(file_has(c->leader.log, "(2097152 bytes)"));
    assert_true(file_count(c->leader.log, "marked disconnected") <= 3);

    /* 5. a replica started with an id that is not UTF-8 stops at once,
     * rather than asking a leader that refuses it forever */
    static char out[1 << 14];
    int rc = kbp_run(out, sizeof out,
                     "timeout 20 '%s' replica --data '%s/rbad' --id "
                     "\"$(printf 'r\\351')\" --leader '%s' --listen "
                     "'tcp://127.0.0.1:*' 2>&1",
                     kbp_bin(), c->dir, c->repl_ep);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "not valid UTF-8"));
}

/* The newest queued_bytes the leader reports for replica id (-1: none). */
static double queued_bytes(const cJSON *leader_status, const char *id)
{
    const cJSON *r;
    cJSON_ArrayForEach(r, cJSON_GetObjectItem(leader_status, "replicas"))
    {
        if (!strcmp(cJSON_GetObjectItem(r, "id")->valuestring, id))
            return kbp_num(r, "queued_bytes");
    }
    return -1;
}

/* Ingests 160 documents big-<i> of 540 KB of text (86 MB) `times` times
 * into the leader. */
static void ingest_big(cluster_t *c, int times)
{
    char path[400];
    snprintf(path, sizeof path, "%s/big.jsonl", c->dir);
    kbp_write_big_docs(path, 160, DIM, "wordy ", 90000);
    static char out[1 << 16];
    for (int i = 0; i < times; i++)
        assert_int_equal(kbp_run(out, sizeof out,
                                 "'%s' ingest --to '%s' --batch 10 '%s'",
                                 kbp_bin(), c->leader.ep, path),
                         0);
}

/* A peer that says hello again and again on one connection and reads
 * nothing: each hello starts a new session, whose 64 MiB window used to be
 * sent anew while the earlier sessions' messages still sat in ZeroMQ's
 * queue for it (2.8 GB of leader memory after 40 hellos). What ZeroMQ
 * still holds for a routing id now counts against its window whatever the
 * session, so the leader holds about one window for it, also across the
 * loss and return of its table entry. */
static void test_e2e_repl_repeated_hellos_bounded(void **state)
{
    cluster_t *c = *state;
    start_leader(c, NULL, NULL);
    ingest_big(c, 1);
    long rss0 = kbp_status_mb(c->leader.pid, "VmRSS");
    void *ctx = zmq_ctx_new();
    void *p = kbp_non_reader(ctx, c->repl_ep, 1, 4096, "rh");
    assert_non_null(p);
    /* 4 hellos 0.4 s apart, then 4 that are 1.5 s apart: the leader
     * marks a replica gone after 1 s without a word and drops the table
     * entry of an unnamed one, which must not take its queue count with
     * it */
    for (int i = 0; i < 8; i++) {
        peer_hello(p, 2, "rh");
        usleep(i < 4 ? 400000 : 1500000);
    }
    long rss1 = kbp_status_mb(c->leader.pid, "VmRSS");
    cJSON *st = status(&c->leader); /* the leader serves on */
    assert_non_null(st);
    cJSON_Delete(st);
    zmq_close(p);
    zmq_ctx_term(ctx);
#ifdef __SANITIZE_ADDRESS__
    rss1 = rss0; /* quarantine and shadow memory: RSS says little here */
#endif
    print_message("8 hellos, nothing read: leader resident %ld -> %ld MB\n",
                  rss0, rss1);
    /* one window (64 MiB) and change; 8 windows were 512 MB */
    if (rss1 - rss0 > 200)
        fail_msg("8 hellos, nothing read: leader resident %ld -> %ld MB", rss0,
                 rss1);
}

/* A replica catching up on 173 MB of records is never sent more than the
 * 64 MiB byte window (plus one message) beyond what it acknowledged. */
static void test_e2e_repl_catch_up_bounded_in_flight(void **state)
{
    cluster_t *c = *state;
    start_leader(c, NULL, NULL);
    ingest_big(c, 2); /* twice: 320 records of ~540 KB in the log */
    start_replica(c, 0);
    double most = 0;
    int seen = 0;
    for (int i = 0; i < 400 && seen < 320; i++) {
        cJSON *s = status(&c->leader);
        double q = s ? queued_bytes(s, "r1") : -1;
        if (q > most)
            most = q;
        cJSON_Delete(s);
        cJSON *r = status(&c->r[0]);
        seen = r ? (int)kbp_num(r, "version") : 0;
        cJSON_Delete(r);
        usleep(10000);
    }
    assert_int_equal(wait_version(&c->r[0], 320, 30000), 320);
    if (most > (64.0 + 5.0) * 1048576 || most < 8.0 * 1048576)
        fail_msg("largest queued_bytes seen for r1: %.1f MB (expected 8 MB "
                 "to 69 MB: the 64 MiB window plus one message)",
                 most / 1048576);
}

/* -------------------------------------------------------------- CURVE */

/* kbsync keygen DIR/name; returns the public key file's path. */
static const char *keygen(cluster_t *c, const char *name, char *pub,
                          size_t cap)
{
    static char out[4096];
    assert_int_equal(kbp_run(out, sizeof out, "'%s' keygen '%s/%s'",
                             kbp_bin(), c->dir, name),
                     0);
    snprintf(pub, cap, "%s/%s.pub", c->dir, name);
    return pub;
}

/* The public key in DIR/name.pub. */
static void pubkey(cluster_t *c, const char *name, char *out)
{
    char path[400], line[256];
    snprintf(path, sizeof path, "%s/%s.pub", c->dir, name);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    out[0] = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "public-key = %40s", out) == 1)
            break;
    fclose(f);
    assert_int_equal(strlen(out), 40);
}

/* Client commands that follow use key `name` against node `server`. */
static void use_key(cluster_t *c, const char *name, const char *server)
{
    char k[400], s2[400];
    snprintf(k, sizeof k, "%s/%s.key", c->dir, name);
    snprintf(s2, sizeof s2, "%s/%s.pub", c->dir, server);
    setenv("KBSYNC_KEY", k, 1);
    setenv("KBSYNC_SERVER_KEY", s2, 1);
}

static void start_replica_key(cluster_t *c, node_t *n, const char *id,
                              const char *key)
{
    char k[400], lk[400], trust[400];
    snprintf(k, sizeof k, "%s/%s.key", c->dir, key);
    snprintf(lk, sizeof lk, "%s/leader.pub", c->dir);
    snprintf(trust, sizeof trust, "%s/trust-replica.txt", c->dir);
    unlink(n->epfile);
    char *argv[] = {"kbsync", "replica", "--data", n->data, "--id", (char *)id,
                    "--leader", c->repl_ep, "--listen", "tcp://127.0.0.1:*",
                    "--endpoint-file", n->epfile, "--key", k, "--trust",
                    trust, "--leader-key", lk, NULL};
    n->pid = kbp_spawn(n->log, argv);
    assert_true(n->pid > 0);
    assert_int_equal(kbp_wait_file(n->epfile, n->ep, sizeof n->ep, 20000), 0);
}

/* With --key/--trust: only trusted keys connect, each does what its role
 * allows, and a replica follows only under the id its key names. */
static void test_e2e_repl_curve_keys_and_roles(void **state)
{
    cluster_t *c = *state;
    char pub[400], k[9][41], path[400];
    const char *names[] = {"leader", "r1", "r2", "writer", "reader",
                           "admin",  "eve"};
    for (int i = 0; i < 7; i++) {
        keygen(c, names[i], pub, sizeof pub);
        pubkey(c, names[i], k[i]);
    }
    snprintf(path, sizeof path, "%s/trust.txt", c->dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "# the leader's trust file\n%s replica:r1\n%s replica:r2\n"
               "%s writer\n%s reader\n%s admin\n",
            k[1], k[2], k[3], k[4], k[5]);
    fclose(f);
    char rpath[400];
    snprintf(rpath, sizeof rpath, "%s/trust-replica.txt", c->dir);
    f = fopen(rpath, "w");
    fprintf(f, "%s reader\n%s admin\n", k[4], k[5]);
    fclose(f);
    char lkey[400];
    snprintf(lkey, sizeof lkey, "%s/leader.key", c->dir);
    const char *extra[] = {"--key", lkey, "--trust", path,
                           "--write-timeout-ms", "3000", NULL};
    start_leader_args(c, extra);
    start_replica_key(c, &c->r[0], "r1", "r1");
    start_replica_key(c, &c->r[1], "r2", "r2");
    use_key(c, "admin", "leader");
    wait_connected(c, "r1", 1);
    wait_connected(c, "r2", 1);

    /* a writer writes (`all`: both replicas confirm over CURVE) */
    char jl[400];
    snprintf(jl, sizeof jl, "%s/a.jsonl", c->dir);
    write_jsonl(jl, "a", 0, 5);
    use_key(c, "writer", "leader");
    cJSON *sum = NULL;
    assert_int_equal(ingest(c, "all", jl, &sum), 0);
    assert_int_equal((int)kbp_num(sum, "written"), 5);
    cJSON_Delete(sum);

    /* a reader reads (also on a replica, with the replica's key) but may
     * not write */
    use_key(c, "reader", "leader");
    static char out[1 << 16];
    assert_int_equal(ingest(c, "async", jl, NULL), 1);
    int rc = kbp_run(out, sizeof out,
                     "'%s' delete --to '%s' a-0 2>&1", kbp_bin(), c->leader.ep);
    if (rc != 1 || !strstr(out, "may not write"))
        fail_msg("delete with a reader key: rc %d, %s", rc, out);
    int v = -1;
    assert_int_equal(rank_on(&c->leader, 0, "a-0", &v), 0);
    use_key(c, "reader", "r1");
    assert_int_equal(rank_on(&c->r[0], 0, "a-0", &v), 0);
    assert_int_equal(v, 5);

    /* an unknown key gets no answer; neither does a client without keys */
    use_key(c, "eve", "leader");
    rc = kbp_run(out, sizeof out, "'%s' status --to '%s' --timeout-ms 1500",
                 kbp_bin(), c->leader.ep);
    assert_int_not_equal(rc, 0);
    unsetenv("KBSYNC_KEY");
    unsetenv("KBSYNC_SERVER_KEY");
    rc = kbp_run(out, sizeof out, "'%s' status --to '%s' --timeout-ms 1500",
                 kbp_bin(), c->leader.ep);
    assert_int_not_equal(rc, 0);

    /* with r2 down: r1's key cannot follow as r2, a writer's key cannot
     * follow at all, an unknown key cannot connect; so an `all` write is
     * refused (KB_ENOREPLICA), never confirmed by an impostor */
    stop_node(&c->r[1], SIGKILL);
    use_key(c, "admin", "leader");
    wait_connected(c, "r2", 0);
    node_t imp[3];
    const char *as[3][2] = {{"r2", "r1"}, {"r9", "writer"}, {"r2", "eve"}};
    for (int i = 0; i < 3; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "imp%d", i);
        node_paths(c, &imp[i], nm);
        start_replica_key(c, &imp[i], as[i][0], as[i][1]);
    }
    usleep(1500000);
    cJSON *s = status(&c->leader);
    assert_false(replica_connected(s, "r2"));
    assert_false(replica_connected(s, "r9"));
    cJSON_Delete(s);
    use_key(c, "writer", "leader");
    snprintf(jl, sizeof jl, "%s/b.jsonl", c->dir);
    write_jsonl(jl, "b", 0, 2);
    rc = kbp_run(out, sizeof out, "'%s' ingest --to '%s' --mode all '%s' 2>&1",
                 kbp_bin(), c->leader.ep, jl);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "KB_ENOREPLICA"));
    assert_true(file_has(c->leader.log, "may not follow the leader"));
    assert_true(file_has(c->leader.log, "is not in the trust file"));
    unsetenv("KBSYNC_KEY");
    unsetenv("KBSYNC_SERVER_KEY");
}

/* Without keys, a node refuses to listen beyond loopback unless
 * --insecure. */
static void test_e2e_repl_plain_tcp_only_on_loopback(void **state)
{
    cluster_t *c = *state;
    static char out[1 << 16];
    int rc = kbp_run(out, sizeof out,
                     "'%s' leader --data '%s/x' --dim 4 --listen "
                     "'tcp://0.0.0.0:%d' 2>&1",
                     kbp_bin(), c->dir, free_port());
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "not a loopback address"));
    assert_non_null(strstr(out, "--insecure"));
    /* --insecure is said at start and in status (loopback here: tests bind
     * nothing else) */
    const char *extra[] = {"--insecure", NULL};
    start_leader_args(c, extra);
    cJSON *s = status(&c->leader);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(s, "insecure")));
    cJSON_Delete(s);
    assert_true(file_has(c->leader.log, "--insecure: no CURVE keys"));
}

/* Number of lines of the log file at path that hold needle. */
static int log_lines_with(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/* --log-level is honoured by leader and replica alike (a replica once
 * reset it to INFO after parsing it). */
static void test_e2e_repl_log_level_honoured(void **state)
{
    cluster_t *c = *state;
    start_leader(c, "--log-level", "warn");
    const char *quiet[] = {"--log-level", "error", NULL};
    start_replica_args(c, 0, quiet);
    start_replica(c, 1);
    wait_connected(c, "r1", 1);
    wait_connected(c, "r2", 1);
    ingest_docs(c, "a", 5, "all");
    /* r2 at the default level says what it does; r1 and the leader, asked
     * for warnings or errors only, say nothing at INFO. */
    assert_true(log_lines_with(c->r[1].log, " INFO: ") > 0);
    assert_int_equal(log_lines_with(c->r[0].log, " INFO: "), 0);
    assert_int_equal(log_lines_with(c->r[0].log, " WARN: "), 0);
    assert_int_equal(log_lines_with(c->leader.log, " INFO: "), 0);
}

/* The version the leader's status gives replica id ("version": its applied
 * position as the leader counts it), -1 when it is not listed. */
static int leader_sees(cluster_t *c, const char *id)
{
    cJSON *s = status(&c->leader);
    int v = -1;
    const cJSON *r;
    cJSON_ArrayForEach(r, cJSON_GetObjectItem(s, "replicas"))
    {
        if (!strcmp(cJSON_GetObjectItem(r, "id")->valuestring, id))
            v = (int)kbp_num(r, "version");
    }
    cJSON_Delete(s);
    return v;
}

/* A replica that says hello holding staged records (durable, not yet
 * searchable) is counted as applied only up to its searchable_lsn until its
 * next ack: an `all` or quorum write must not be answered on records a
 * query there cannot see yet. A peer plays replica r2 by hand. */
static void test_e2e_repl_hello_counts_searchable_only(void **state)
{
    cluster_t *c = *state;
    start_leader(c, NULL, NULL);
    char path[400];
    snprintf(path, sizeof path, "%s/a.jsonl", c->dir);
    write_jsonl(path, "a", 0, 5);
    assert_int_equal(ingest(c, "async", path, NULL), 0); /* LSNs 1..5 */
    void *ctx = zmq_ctx_new();
    void *r2 = peer_connect(ctx, c, "r2");
    /* From scratch: the leader streams LSNs 1..5; note the last one's
     * commit time, which a hello at LSN 5 must name. */
    peer_hello(r2, 2, "r2");
    uint64_t last = 0, last_us = 0;
    for (int i = 0; i < 50 && last < 5; i++) {
        Kbsync__ReplMessage *m = peer_recv(r2, 2000);
        assert_non_null(m);
        if (m->body_case == KBSYNC__REPL_MESSAGE__BODY_RECORDS)
            for (size_t k = 0; k < m->records->n_records; k++) {
                Kbsync__LogRecord *lr = kbsync__log_record__unpack(
                    NULL, m->records->records[k].len,
                    m->records->records[k].data);
                assert_non_null(lr);
                last = lr->lsn;
                last_us = lr->commit_time_us;
                kbsync__log_record__free_unpacked(lr, NULL);
            }
        kbsync__repl_message__free_unpacked(m, NULL);
    }
    assert_int_equal(last, 5);
    /* Hello again (as after a reconnect) holding 1..5, of which only 1..4
     * are searchable. */
    Kbsync__ReplHello h = KBSYNC__REPL_HELLO__INIT;
    h.protocol_version = 2;
    h.replica_id = "r2";
    h.applied_lsn = 5;
    h.applied_commit_us = last_us;
    h.searchable_lsn = 4;
    Kbsync__ReplMessage hm = KBSYNC__REPL_MESSAGE__INIT;
    hm.protocol_version = 2;
    hm.body_case = KBSYNC__REPL_MESSAGE__BODY_HELLO;
    hm.hello = &h;
    peer_send(r2, &hm);
    Kbsync__ReplMessage *m = NULL;
    for (int i = 0; i < 50; i++) { /* beats may come first */
        m = peer_recv(r2, 2000);
        assert_non_null(m);
        if (m->body_case == KBSYNC__REPL_MESSAGE__BODY_WELCOME)
            break;
        kbsync__repl_message__free_unpacked(m, NULL);
        m = NULL;
    }
    assert_non_null(m);
    assert_false(m->welcome->diverged);
    kbsync__repl_message__free_unpacked(m, NULL);
    assert_int_equal(leader_sees(c, "r2"), 4);
    /* Its ack after the welcome made them searchable: now 5. */
    Kbsync__ReplAck ack = KBSYNC__REPL_ACK__INIT;
    ack.applied_lsn = ack.durable_lsn = ack.received_lsn = 5;
    Kbsync__ReplMessage am = KBSYNC__REPL_MESSAGE__INIT;
    am.protocol_version = 2;
    am.body_case = KBSYNC__REPL_MESSAGE__BODY_ACK;
    am.ack = &ack;
    peer_send(r2, &am);
    int v = -1;
    for (int i = 0; i < 50 && (v = leader_sees(c, "r2")) != 5; i++)
        usleep(20000);
    assert_int_equal(v, 5);
    zmq_close(r2);
    zmq_ctx_term(ctx);
}

int main(void)
{
    atexit(kbp_kill_all);
    /* KB_TEST_FILTER=pattern runs only the tests it matches (cmocka's) */
    if (getenv("KB_TEST_FILTER"))
        cmocka_set_test_filter(getenv("KB_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_e2e_repl_log_level_honoured, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_hello_counts_searchable_only, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_all_mode_visible_on_every_replica, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_async_converges_and_lag_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_bounded_reads_never_staler, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_replica_restart_catches_up, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_stalled_replica_times_out_all_write, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_leader_kill9_loses_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_unconfirmed_records_never_served, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_retention_keeps_what_a_named_replica_needs, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_snapshot_when_behind_or_new, setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_repl_flushes_per_commit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_leader_killed_between_commit_and_acks, setup,
            teardown),
        cmocka_unit_test_setup_teardown(test_e2e_repl_impostors_are_refused,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_repl_repeated_hellos_bounded,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_repl_hostile_peer_messages,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_repl_curve_keys_and_roles,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_catch_up_bounded_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_plain_tcp_only_on_loopback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_e2e_repl_kill9_during_snapshot,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_e2e_repl_diverged_without_shared_record_starts_over, setup,
            teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
