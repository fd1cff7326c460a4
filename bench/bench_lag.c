/* bench_lag: replica lag under a steady open-loop async write load. One
 * thread sends single-document async upserts to the leader at a fixed rate
 * (scheduled send times, not "after the previous answer", so a slow node
 * cannot hide latency: no coordinated omission) and records when each LSN
 * was acknowledged. Another thread asks the replica for its status as fast
 * as it answers and records when each version first became visible there.
 * The lag of a write = visible on the replica - acknowledged by the leader.
 * It also samples the replica's self-reported lag_ms and lag_ops.
 * usage: bench_lag LEADER_EP REPLICA_EP [rate=5000] [seconds=10] [dim=384] */
#include "bench_common.h"
#include "kb_util.h"
#include "qry_client.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

typedef struct lagrun {
    const char *leader, *replica;
    int rate, seconds, dim;
    uint64_t *ack_us;     /* by LSN - first_lsn */
    uint64_t *visible_us; /* by LSN - first_lsn */
    uint64_t first_lsn;
    size_t n;
    atomic_int done;
    double *self_lag;
    size_t nself, capself;
    uint64_t max_lag_ops;
} lagrun_t;

static void *poller(void *arg)
{
    lagrun_t *L = arg;
    char err[256];
    qry_client_t *c;
    if (qry_client_open(L->replica, &c, err, sizeof err))
        return NULL;
    uint64_t seen = 0;
    int idle_after_done = 0;
    while (idle_after_done < 2000) {
        Kbsync__StatusRequest sr = KBSYNC__STATUS_REQUEST__INIT;
        Kbsync__Request req = KBSYNC__REQUEST__INIT;
        req.body_case = KBSYNC__REQUEST__BODY_STATUS;
        req.status = &sr;
        Kbsync__Response *r;
        if (qry_client_call(c, &req, 5000, &r, err, sizeof err) || !r->status)
            break;
        uint64_t now = kb_mono_us();
        uint64_t v = r->status->version;
        if (atomic_load(&L->done) == 0 && L->nself < L->capself)
            L->self_lag[L->nself++] = (double)r->status->lag_ms;
        if (r->status->lag_ops > L->max_lag_ops)
            L->max_lag_ops = r->status->lag_ops;
        kbsync__response__free_unpacked(r, NULL);
        if (L->first_lsn && v >= L->first_lsn) {
            for (uint64_t l = seen > L->first_lsn ? seen : L->first_lsn;
                 l <= v && l - L->first_lsn < L->n; l++)
                if (!L->visible_us[l - L->first_lsn])
                    L->visible_us[l - L->first_lsn] = now;
            seen = v;
        }
        if (atomic_load(&L->done)) {
            if (L->first_lsn && seen >= L->first_lsn + L->n - 1)
                break;
            idle_after_done++;
        }
        /* ~4,000 status requests/s: 0.25 ms resolution without making the
         * replica spend its time answering them. */
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    qry_client_close(&c);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(
            stderr,
            "usage: bench_lag LEADER_EP REPLICA_EP [rate] [seconds] [dim]\n");
        return 2;
    }
    lagrun_t L = {.leader = argv[1], .replica = argv[2]};
    L.rate = argc > 3 ? atoi(argv[3]) : 5000;
    L.seconds = argc > 4 ? atoi(argv[4]) : 10;
    L.dim = argc > 5 ? atoi(argv[5]) : 384;
    L.n = (size_t)L.rate * (size_t)L.seconds;
    L.ack_us = calloc(L.n, sizeof *L.ack_us);
    L.visible_us = calloc(L.n, sizeof *L.visible_us);
    L.capself = 1000000;
    L.self_lag = malloc(L.capself * sizeof *L.self_lag);
    char err[256];
    qry_client_t *c;
    if (qry_client_open(L.leader, &c, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, poller, &L);
    float *v = malloc(sizeof(float) * (size_t)L.dim);
    char id[64], text[400];
    uint64_t t0 = kb_mono_us() + 20000;
    size_t sent = 0, acked = 0, late = 0;
    uint64_t *rid_of = calloc(L.n, sizeof *rid_of);
    while (acked < L.n) {
        uint64_t now = kb_mono_us();
        /* send everything whose scheduled time has come */
        while (sent < L.n && now >= t0 + sent * 1000000u / (uint64_t)L.rate) {
            if (now > t0 + sent * 1000000u / (uint64_t)L.rate + 1000)
                late++;
            bench_vector(11, sent, L.dim, v);
            bench_text(sent, text, 300);
            snprintf(id, sizeof id, "lag-%zu", sent);
            Kbsync__Doc d = KBSYNC__DOC__INIT;
            Kbsync__Doc *dp = &d;
            d.id = id;
            d.text = text;
            d.embedding = v;
            d.n_embedding = (size_t)L.dim;
            Kbsync__UpsertRequest u = KBSYNC__UPSERT_REQUEST__INIT;
            u.docs = &dp;
            u.n_docs = 1;
            u.mode = KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC;
            Kbsync__Request req = KBSYNC__REQUEST__INIT;
            req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
            req.upsert = &u;
            qry_client_send(c, &req, &rid_of[sent], err, sizeof err);
            sent++;
        }
        /* collect answers until the next send is due */
        uint64_t next = sent < L.n ? t0 + sent * 1000000u / (uint64_t)L.rate
                                   : now + 1000000;
        int wait_ms = sent == L.n  ? 10000
                      : next > now ? (int)((next - now) / 1000u)
                                   : 0;
        Kbsync__Response *r;
        int got = qry_client_recv(c, wait_ms, &r, err, sizeof err) == 0;
        if (!got && wait_ms == 0 && sent < L.n) {
            /* next send is due in under 1 ms: sleep, do not spin */
            uint64_t gap = next > kb_mono_us() ? next - kb_mono_us() : 0;
            struct timespec ts = {0, (long)(gap > 100 ? 100 : gap) * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        if (got) {
            uint64_t at = kb_mono_us();
            if (r->write && !r->error) {
                uint64_t lsn = r->write->version;
                if (!L.first_lsn)
                    L.first_lsn = lsn; /* answers come in commit order */
                if (lsn >= L.first_lsn && lsn - L.first_lsn < L.n)
                    L.ack_us[lsn - L.first_lsn] = at;
            } else {
                fprintf(stderr, "write failed: %s\n",
                        r->error ? r->error->message : "?");
            }
            acked++;
            kbsync__response__free_unpacked(r, NULL);
        } else if (sent == L.n) {
            fprintf(stderr, "timed out waiting for acks (%zu of %zu)\n", acked,
                    L.n);
            break;
        }
    }
    double elapsed = (double)(kb_mono_us() - t0) / 1e6;
    atomic_store(&L.done, 1);
    pthread_join(th, NULL);
    double *lag = malloc(L.n * sizeof *lag);
    size_t nl = 0, unseen = 0;
    for (size_t i = 0; i < L.n; i++) {
        if (!L.ack_us[i])
            continue;
        if (!L.visible_us[i]) {
            unseen++;
            continue;
        }
        lag[nl++] = L.visible_us[i] > L.ack_us[i]
                        ? (double)(L.visible_us[i] - L.ack_us[i]) / 1000.0
                        : 0.0;
    }
    printf(
        "async load %d docs/s for %d s (%zu writes, %.0f docs/s achieved, %zu "
        "sent >1 ms late), dim %d\n",
        L.rate, L.seconds, L.n, (double)acked / elapsed, late, L.dim);
    printf("  replica lag (ack on leader -> visible on replica): p50 %.3f ms  "
           "p99 %.3f ms  max %.3f ms  (%zu writes measured, %zu never seen)\n",
           bench_pct(lag, nl, 50), bench_pct(lag, nl, 99),
           bench_pct(lag, nl, 100), nl, unseen);
    printf(
        "  replica's own lag_ms over %zu status samples: p50 %.0f  p99 %.0f  "
        "max %.0f; max lag_ops seen %llu\n",
        L.nself, bench_pct(L.self_lag, L.nself, 50),
        bench_pct(L.self_lag, L.nself, 99), bench_pct(L.self_lag, L.nself, 100),
        (unsigned long long)L.max_lag_ops);
    qry_client_close(&c);
    return 0;
}
