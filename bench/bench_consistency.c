/* bench_consistency: the issue #11 figures that need a client of their own.
 *
 * strong LEADER REPLICA [N=2000] [dim=384]
 *   N rounds, interleaved: a plain (eventual) query on the replica, a strong
 *   query on the replica (the replica asks the leader for its read index),
 *   and a status call to the leader (one client-to-leader round trip). One
 *   client, closed loop, synthetic query vectors. Prints the p50 and p99 of
 *   each and whether strong p50 <= plain p50 + leader round trip + 0.3 ms.
 *
 * retry LEADER [N=10000] [dim=384] [window=16] [cut-every=40]
 *   N single-document upserts of new ids, each with this run's client_id and
 *   its own client_seq, up to `window` in flight. After about every
 *   `cut-every` sends (random) the client drops its connection with
 *   whatever was in flight (answers unread, requests maybe unsent), opens a
 *   new one and sends every unanswered write again with the same identity.
 *   Checks: every write answered; the versions answered are N distinct LSNs
 *   and the leader's version moved by exactly N (0 duplicates, 0 lost);
 *   how many answers said `retried` (an earlier attempt had committed). */
#include "bench_common.h"
#include "kb_util.h"
#include "qry_client.h"

#include <unistd.h>

static qry_client_t *open_or_die(const char *ep)
{
    char err[512];
    qry_client_t *c;
    if (qry_client_open(ep, &c, err, sizeof err)) {
        fprintf(stderr, "bench_consistency: %s\n", err);
        exit(1);
    }
    return c;
}

static Kbsync__Response *call_or_die(qry_client_t *c, Kbsync__Request *req)
{
    char err[512];
    Kbsync__Response *r;
    if (qry_client_call(c, req, 10000, &r, err, sizeof err)) {
        fprintf(stderr, "bench_consistency: %s\n", err);
        exit(1);
    }
    if (r->error) {
        fprintf(stderr, "bench_consistency: %s\n", r->error->message);
        exit(1);
    }
    return r;
}

static uint64_t leader_version(qry_client_t *c)
{
    Kbsync__StatusRequest sr = KBSYNC__STATUS_REQUEST__INIT;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_STATUS;
    req.status = &sr;
    Kbsync__Response *r = call_or_die(c, &req);
    uint64_t v = r->status ? r->status->version : 0;
    kbsync__response__free_unpacked(r, NULL);
    return v;
}

static int cmd_strong(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_consistency strong LEADER REPLICA [N] "
                        "[dim]\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 2000;
    int dim = argc > 3 ? atoi(argv[3]) : 384;
    qry_client_t *L = open_or_die(argv[0]), *R = open_or_die(argv[1]);
    double *lat[3];
    for (int k = 0; k < 3; k++)
        lat[k] = malloc(sizeof(double) * (size_t)n);
    float *v = malloc(sizeof(float) * (size_t)dim);
    uint64_t stale = 0;
    int warm = n / 20 + 5;
    for (int i = -warm; i < n; i++) {
        bench_vector(99, (uint64_t)(i + warm), dim, v);
        for (int k = 0; k < 3; k++) {
            Kbsync__QueryRequest q = KBSYNC__QUERY_REQUEST__INIT;
            Kbsync__StatusRequest sr = KBSYNC__STATUS_REQUEST__INIT;
            Kbsync__Request req = KBSYNC__REQUEST__INIT;
            if (k < 2) {
                q.k = 10;
                q.vector = v;
                q.n_vector = (size_t)dim;
                q.consistency = k ? KBSYNC__READ_LEVEL__READ_STRONG
                                  : KBSYNC__READ_LEVEL__READ_EVENTUAL;
                req.body_case = KBSYNC__REQUEST__BODY_QUERY;
                req.query = &q;
            } else {
                req.body_case = KBSYNC__REQUEST__BODY_STATUS;
                req.status = &sr;
            }
            uint64_t t0 = kb_mono_us();
            Kbsync__Response *r = call_or_die(k < 2 ? R : L, &req);
            uint64_t t1 = kb_mono_us();
            if (k == 1 && (!r->query || r->query->level !=
                                            KBSYNC__READ_LEVEL__READ_STRONG))
                stale++;
            kbsync__response__free_unpacked(r, NULL);
            if (i >= 0)
                lat[k][i] = (double)(t1 - t0) / 1000.0;
        }
    }
    double p50[3], p99[3];
    const char *name[3] = {"plain query on the replica",
                           "strong query on the replica",
                           "status round trip to the leader"};
    for (int k = 0; k < 3; k++) {
        p50[k] = bench_pct(lat[k], (size_t)n, 50);
        p99[k] = bench_pct(lat[k], (size_t)n, 99);
        printf("%-32s p50 %.3f ms  p99 %.3f ms  (%d calls)\n", name[k], p50[k],
               p99[k], n);
    }
    double bound = p50[0] + p50[2] + 0.3;
    printf("strong p50 %.3f ms vs plain p50 + leader round trip + 0.3 ms = "
           "%.3f ms: %s%s\n",
           p50[1], bound, p50[1] <= bound ? "met" : "MISSED",
           stale ? " (some answers were not strong!)" : "");
    qry_client_close(&L);
    qry_client_close(&R);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct wr {
    uint64_t rid;     /* request id on the current connection (0: unsent) */
    uint64_t version; /* answered (0: not yet) */
    int retried;
    int sends;
} wr_t;

static int cmd_retry(int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "usage: bench_consistency retry LEADER [N] [dim] "
                        "[window] [cut-every]\n");
        return 2;
    }
    int n = argc > 1 ? atoi(argv[1]) : 10000;
    int dim = argc > 2 ? atoi(argv[2]) : 384;
    int window = argc > 3 ? atoi(argv[3]) : 16;
    int cut_every = argc > 4 ? atoi(argv[4]) : 40;
    char cid[64], err[512];
    snprintf(cid, sizeof cid, "bench-retry-%d-%llu", (int)getpid(),
             (unsigned long long)kb_wall_us());
    qry_client_t *c = open_or_die(argv[0]);
    uint64_t v0 = leader_version(c);
    wr_t *w = calloc((size_t)n, sizeof *w);
    float *v = malloc(sizeof(float) * (size_t)dim);
    bench_rng_t rng = {12345};
    int lo = 0, answered = 0, inflight = 0, cuts = 0;
    uint64_t t0 = kb_mono_us();
    while (answered < n) {
        /* fill the window: unanswered writes not in flight on this
         * connection, oldest first (resends, then new ones) */
        while (lo < n && w[lo].version)
            lo++;
        for (int i = lo; i < n && inflight < window; i++) {
            if (w[i].version || w[i].rid)
                continue;
            char id[96], text[400];
            snprintf(id, sizeof id, "%s-%d", cid, i);
            bench_vector(5, (uint64_t)i, dim, v);
            bench_text((uint64_t)i, text, 300);
            Kbsync__Doc d = KBSYNC__DOC__INIT;
            Kbsync__Doc *dp = &d;
            d.id = id;
            d.text = text;
            d.embedding = v;
            d.n_embedding = (size_t)dim;
            Kbsync__UpsertRequest u = KBSYNC__UPSERT_REQUEST__INIT;
            u.docs = &dp;
            u.n_docs = 1;
            u.mode = KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC;
            u.client_id = cid;
            u.client_seq = (uint64_t)i + 1;
            Kbsync__Request req = KBSYNC__REQUEST__INIT;
            req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
            req.upsert = &u;
            if (qry_client_send(c, &req, &w[i].rid, err, sizeof err)) {
                fprintf(stderr, "send: %s\n", err);
                return 1;
            }
            w[i].sends++;
            inflight++;
            if (bench_next(&rng) % (uint64_t)cut_every == 0) {
                /* cut: drop the connection with everything in flight */
                qry_client_close(&c);
                c = open_or_die(argv[0]);
                for (int j = 0; j < n; j++)
                    w[j].rid = 0;
                inflight = 0;
                cuts++;
                break;
            }
        }
        if (!inflight)
            continue;
        Kbsync__Response *r;
        if (qry_client_recv(c, 5000, &r, err, sizeof err)) {
            fprintf(stderr, "recv: %s\n", err);
            return 1;
        }
        if (r->error) {
            fprintf(stderr, "write refused: %s\n", r->error->message);
            return 1;
        }
        for (int j = lo; j < n; j++)
            if (w[j].rid == r->request_id && !w[j].version) {
                w[j].version = r->write->version;
                w[j].retried = r->write->retried;
                w[j].rid = 0;
                answered++;
                inflight--;
                break;
            }
        kbsync__response__free_unpacked(r, NULL);
    }
    double secs = (double)(kb_mono_us() - t0) / 1e6;
    uint64_t v1 = leader_version(c);
    uint64_t *vs = malloc(sizeof(uint64_t) * (size_t)n);
    int resent = 0, retried = 0;
    for (int i = 0; i < n; i++) {
        vs[i] = w[i].version;
        resent += w[i].sends > 1;
        retried += w[i].retried;
    }
    /* distinct versions, all in (v0, v1] */
    int dup = 0, outside = 0;
    for (int i = 0; i < n; i++)
        outside += vs[i] <= v0 || vs[i] > v1;
    qsort(vs, (size_t)n, sizeof *vs, cmp_u64);
    for (int i = 1; i < n; i++)
        dup += vs[i] == vs[i - 1];
    int64_t extra = (int64_t)(v1 - v0) - n;
    printf("idempotent retries: %d writes in %.2f s, %d connection cuts, %d "
           "writes sent more than once, %d answered as retried\n",
           n, secs, cuts, resent, retried);
    printf("leader version %llu -> %llu: %lld LSNs for %d writes; %d "
           "duplicate versions answered, %d outside the run: %s\n",
           (unsigned long long)v0, (unsigned long long)v1,
           (long long)(v1 - v0), n, dup, outside,
           extra == 0 && dup == 0 && outside == 0
               ? "0 duplicates, 0 lost"
               : "FAILED");
    qry_client_close(&c);
    return extra == 0 && dup == 0 && outside == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "strong"))
        return cmd_strong(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "retry"))
        return cmd_retry(argc - 2, argv + 2);
    fprintf(stderr, "usage: bench_consistency strong LEADER REPLICA [N] "
                    "[dim]\n"
                    "       bench_consistency retry LEADER [N] [dim] [window] "
                    "[cut-every]\n");
    return 2;
}
