/* bench_tradeoff: the load driver of bench/tradeoff.sh (issue #4), which
 * measures what `all` buys over `async` on a leader + N replicas. In: the
 * endpoints of real kbsync processes that the script started. Out: one JSON
 * line per measurement on stdout (the script appends them to raw.jsonl),
 * and `report` turns those lines into medians, CSV/JSON, the trade-off
 * table and gnuplot data. Documents are synthetic clustered 384-d vectors
 * (bench_common.h, not a model's) plus ~300 bytes of text.
 *
 * usage: bench_tradeoff COMMAND [options]   (run without arguments for help)
 *
 * MEASUREMENTS (each prints one JSON line; --tag adds the script's keys)
 * closed     one client, single-doc upserts, each waiting for its ack
 *            (closed loop): latency p50/p99/p999. Then read-after-write:
 *            after each acked write, one query (k=10, the doc's vector, no
 *            min_version) to a replica drawn at random; the share of answers
 *            whose version >= the write's version. Then read levels: after
 *            each acked write, one query at each level (eventual, session
 *            with the write's version, strong) to a random replica: the
 *            share that sees the write and the read latency p50 / p99.
 * open       open loop: single-doc upserts sent at fixed times (i/rate), so
 *            latency counts from the scheduled send time and a slow node
 *            cannot hide it (no coordinated omission). One poller thread
 *            per replica asks for its status every --poll-us, pipelined;
 *            an answer is dated at the midpoint of its round trip. Lag of a
 *            write on a replica = first time it is seen there - its ack on
 *            the leader (0 when seen before the ack, as `all` ensures). Lag
 *            in versions = newest LSN acked at that time - replica version.
 *            A point is "saturated" when a write waits more than 0.5 s.
 *            The first 0.5 s of a point is warm-up: sent, not counted.
 * ingest     batched ingest (--batch docs per request, --window requests in
 *            flight) of --docs documents, timed from the first send until
 *            every replica reports a version >= the last LSN.
 * partition  runs --cut (SIGSTOP a replica, or take its link down), then
 *            for --seconds sends writes (open loop) and reads to every
 *            replica (open loop, each with --read-timeout-ms); a write
 *            counts as accepted when acknowledged without error, a read as
 *            answered when it is answered in time. Then waits for the writes'
 *            answers, runs --heal, and times how long the cut-off replica
 *            takes to reach the leader's version at that moment.
 * delay      holds every packet of NFQUEUE --queue for --ms ms, then accepts
 *            it (per-link WAN delay where the kernel has no netem). Raw
 *            netlink, no library; FIFO, so packets keep their order.
 * report     medians over runs of raw.jsonl -> summary.csv, summary.json,
 *            table.md, gnuplot .dat files; --check fails unless every cell
 *            of the table was produced. */
#include "bench_common.h"
#include "kb_err.h"
#include "kb_util.h"
#include "qry_client.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPLICAS 16
#define SAT_US 500000u /* an open-loop write waiting longer: saturated */
#define OPEN_CONNS 8       /* open loop: connections to the leader */
#define OPEN_INFLIGHT 800  /* open loop: unanswered writes per connection */
#define WARM_US 500000u /* open loop: the first 0.5 s is warm-up, not counted */

/* ------------------------------------------------------------- options */

/* K of --mode quorum:K (0 otherwise): every upsert carries it. */
static uint32_t g_quorum;

typedef struct opts {
    const char *leader, *tag, *cut, *heal, *raw, *out, *lag_rate_s;
    char *rep[MAX_REPLICAS];
    int nrep;
    char *ns[MAX_REPLICAS]; /* --region-ns: replica k's namespace ("" = here) */
    int nns;
    char *lf[MAX_REPLICAS]; /* --leader-from: the leader as seen from region k */
    int nlf;
    Kbsync__WriteMode mode;
    const char *mode_name;
    int dim, rate, docs, batch, window, max_writes, poll_us, timeout_ms;
    int read_rate, write_rate, read_timeout_ms, queue, ms, check, victim;
    double seconds, raw_seconds, converge_s;
    const char *expect_n, *expect_d;
} opts_t;

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_tradeoff COMMAND [options]\n"
            "  closed    --leader EP --replicas EP,.. --mode async|all "
            "[--seconds S] [--max-writes N] [--raw-seconds S]\n"
            "  open      --leader EP --replicas EP,.. --mode M --rate R "
            "--seconds S [--poll-us US]\n"
            "  ingest    --leader EP --replicas EP,.. --mode M --docs N "
            "[--batch 1000] [--window 4]\n"
            "  partition --leader EP --replicas EP,.. --mode M --cut CMD "
            "--heal CMD [--victim 0] [--seconds S]\n"
            "            [--write-rate 200] [--read-rate 20] "
            "[--read-timeout-ms 500] [--converge-s 60]\n"
            "  delay     --queue Q --ms D\n"
            "  report    --raw raw.jsonl --out DIR [--replicas \"1 2 4\"] "
            "[--delays \"0 5 50\"] [--lag-rate R] [--check]\n"
            "common: --dim 384, --tag '\"k\":v,...' (copied into every JSON "
            "line), --timeout-ms (client waits)\n");
    exit(2);
}

static void parse_eps(opts_t *o, const char *s)
{
    char *dup = strdup(s), *save = NULL;
    for (char *t = strtok_r(dup, ", ", &save); t && o->nrep < MAX_REPLICAS;
         t = strtok_r(NULL, ", ", &save))
        o->rep[o->nrep++] = t;
}

static int split_list(const char *s, char **out)
{
    char *dup = strdup(s), *save = NULL;
    int n = 0;
    for (char *t = strtok_r(dup, ",", &save); t && n < MAX_REPLICAS;
         t = strtok_r(NULL, ",", &save))
        out[n++] = t;
    return n;
}

static void parse_opts(int argc, char **argv, opts_t *o)
{
    static const struct option lo[] = {
        {"leader", 1, 0, 'L'},       {"replicas", 1, 0, 'R'},
        {"mode", 1, 0, 'm'},         {"dim", 1, 0, 'd'},
        {"rate", 1, 0, 'r'},         {"seconds", 1, 0, 's'},
        {"docs", 1, 0, 'n'},         {"batch", 1, 0, 'b'},
        {"window", 1, 0, 'w'},       {"max-writes", 1, 0, 'M'},
        {"raw-seconds", 1, 0, 'S'},  {"poll-us", 1, 0, 'p'},
        {"timeout-ms", 1, 0, 't'},   {"tag", 1, 0, 'T'},
        {"cut", 1, 0, 'c'},          {"heal", 1, 0, 'h'},
        {"victim", 1, 0, 'v'},       {"write-rate", 1, 0, 'W'},
        {"read-rate", 1, 0, 'Q'},    {"read-timeout-ms", 1, 0, 'o'},
        {"converge-s", 1, 0, 'C'},   {"queue", 1, 0, 'q'},
        {"ms", 1, 0, 'D'},           {"raw", 1, 0, 'a'},
        {"out", 1, 0, 'O'},          {"check", 0, 0, 'k'},
        {"delays", 1, 0, 'y'},       {"lag-rate", 1, 0, 'l'},
        {"region-ns", 1, 0, 'N'},    {"leader-from", 1, 0, 'F'},
        {0, 0, 0, 0}};
    *o = (opts_t){.dim = 384, .rate = 1000, .docs = 100000, .batch = 1000,
                  .window = 4, .max_writes = 2000, .poll_us = 1000,
                  .timeout_ms = 10000, .read_rate = 20, .write_rate = 200,
                  .read_timeout_ms = 500, .seconds = 3, .raw_seconds = 2,
                  .converge_s = 60, .tag = "", .mode_name = "default",
                  .mode = KBSYNC__WRITE_MODE__WRITE_MODE_DEFAULT};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'L': o->leader = optarg; break;
        case 'R': o->expect_n = optarg; parse_eps(o, optarg); break;
        case 'm':
            o->mode_name = optarg;
            if (!strcmp(optarg, "all"))
                o->mode = KBSYNC__WRITE_MODE__WRITE_MODE_ALL;
            else if (!strcmp(optarg, "async"))
                o->mode = KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC;
            else if (!strncmp(optarg, "quorum:", 7) && atoi(optarg + 7) > 0) {
                o->mode = KBSYNC__WRITE_MODE__WRITE_MODE_QUORUM;
                g_quorum = (uint32_t)atoi(optarg + 7);
            } else
                usage();
            break;
        case 'd': o->dim = atoi(optarg); break;
        case 'r': o->rate = atoi(optarg); break;
        case 's': o->seconds = atof(optarg); break;
        case 'n': o->docs = atoi(optarg); break;
        case 'b': o->batch = atoi(optarg); break;
        case 'w': o->window = atoi(optarg); break;
        case 'M': o->max_writes = atoi(optarg); break;
        case 'S': o->raw_seconds = atof(optarg); break;
        case 'p': o->poll_us = atoi(optarg); break;
        case 't': o->timeout_ms = atoi(optarg); break;
        case 'T': o->tag = optarg; break;
        case 'c': o->cut = optarg; break;
        case 'h': o->heal = optarg; break;
        case 'v': o->victim = atoi(optarg); break;
        case 'W': o->write_rate = atoi(optarg); break;
        case 'Q': o->read_rate = atoi(optarg); break;
        case 'o': o->read_timeout_ms = atoi(optarg); break;
        case 'C': o->converge_s = atof(optarg); break;
        case 'q': o->queue = atoi(optarg); break;
        case 'D': o->ms = atoi(optarg); break;
        case 'a': o->raw = optarg; break;
        case 'O': o->out = optarg; break;
        case 'k': o->check = 1; break;
        case 'y': o->expect_d = optarg; break;
        case 'l': o->lag_rate_s = optarg; break;
        case 'N': o->nns = split_list(optarg, o->ns); break;
        case 'F': o->nlf = split_list(optarg, o->lf); break;
        default: usage();
        }
    }
    if (o->dim <= 0 || o->rate <= 0 || o->batch <= 0 || o->window <= 0 ||
        o->poll_us < 100)
        usage();
}

/* ---------------------------------------------------------- JSON lines */

typedef struct jline {
    char b[8192];
    size_t n;
} jline_t;

static void j_begin(jline_t *j, const opts_t *o, const char *test)
{
    j->n = (size_t)snprintf(j->b, sizeof j->b, "{\"test\":\"%s\"", test);
    if (*o->tag)
        j->n += (size_t)snprintf(j->b + j->n, sizeof j->b - j->n, ",%s", o->tag);
    if (strcmp(test, "delay"))
        j->n += (size_t)snprintf(j->b + j->n, sizeof j->b - j->n,
                                 ",\"mode\":\"%s\",\"replicas\":%d",
                                 o->mode_name, o->nrep);
}

static void j_num(jline_t *j, const char *k, double v)
{
    if (j->n < sizeof j->b)
        j->n += (size_t)snprintf(j->b + j->n, sizeof j->b - j->n,
                                 ",\"%s\":%.6g", k, isfinite(v) ? v : -1);
}

static void j_end(jline_t *j)
{
    printf("%s}\n", j->b);
    fflush(stdout);
}

/* -------------------------------------------------------------- helpers */

static void sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000u), (long)(us % 1000000u) * 1000};
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

static qry_client_t *open_or_die(const char *ep)
{
    char err[512];
    qry_client_t *c;
    if (qry_client_open(ep, &c, err, sizeof err)) {
        fprintf(stderr, "bench_tradeoff: %s\n", err);
        exit(1);
    }
    return c;
}

/* One document: vector number i of data set `seed`, ~300 B of text. */
typedef struct docbuf {
    char id[64];
    char text[400];
    float *vec;
    Kbsync__Doc d;
    Kbsync__Doc *dp;
} docbuf_t;

static void doc_make(docbuf_t *b, int dim, uint64_t seed, uint64_t i,
                     const char *prefix)
{
    if (!b->vec)
        b->vec = malloc(sizeof(float) * (size_t)dim);
    bench_vector(seed, i, dim, b->vec);
    bench_text(i + seed * 1000003u, b->text, 300);
    snprintf(b->id, sizeof b->id, "%s-%llu", prefix, (unsigned long long)i);
    kbsync__doc__init(&b->d);
    b->d.id = b->id;
    b->d.text = b->text;
    b->d.embedding = b->vec;
    b->d.n_embedding = (size_t)dim;
    b->dp = &b->d;
}

static int send_upsert(qry_client_t *c, Kbsync__Doc **docs, size_t n,
                       Kbsync__WriteMode mode, uint64_t *rid)
{
    char err[512];
    Kbsync__UpsertRequest u = KBSYNC__UPSERT_REQUEST__INIT;
    u.docs = docs;
    u.n_docs = n;
    u.mode = mode;
    u.quorum = g_quorum;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
    req.upsert = &u;
    int rc = qry_client_send(c, &req, rid, err, sizeof err);
    if (rc)
        fprintf(stderr, "bench_tradeoff: %s\n", err);
    return rc;
}

static int send_query(qry_client_t *c, float *v, int dim, uint64_t *rid)
{
    char err[512];
    Kbsync__QueryRequest q = KBSYNC__QUERY_REQUEST__INIT;
    q.k = 10;
    q.vector = v;
    q.n_vector = (size_t)dim;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_QUERY;
    req.query = &q;
    return qry_client_send(c, &req, rid, err, sizeof err);
}

static int send_status(qry_client_t *c, uint64_t *rid)
{
    char err[512];
    Kbsync__StatusRequest s = KBSYNC__STATUS_REQUEST__INIT;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_STATUS;
    req.status = &s;
    return qry_client_send(c, &req, rid, err, sizeof err);
}

/* Version of a node, or -1 when it does not answer within timeout_ms. */
static int64_t node_version(qry_client_t *c, int timeout_ms)
{
    char err[512];
    Kbsync__StatusRequest s = KBSYNC__STATUS_REQUEST__INIT;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_STATUS;
    req.status = &s;
    Kbsync__Response *r;
    if (qry_client_call(c, &req, timeout_ms, &r, err, sizeof err))
        return -1;
    int64_t v = r->status ? (int64_t)r->status->version : -1;
    kbsync__response__free_unpacked(r, NULL);
    return v;
}

static double pct(double *v, size_t n, double p) { return bench_pct(v, n, p); }

/* Waits for the next Response on c for up to wait_us (sub-millisecond waits
 * sleep first, then look without blocking). */
static Kbsync__Response *recv_within(qry_client_t *c, uint64_t wait_us)
{
    char err[512];
    Kbsync__Response *r = NULL;
    if (wait_us >= 1000) {
        qry_client_recv(c, (int)(wait_us / 1000u), &r, err, sizeof err);
        return r;
    }
    if (qry_client_recv(c, 0, &r, err, sizeof err) == 0)
        return r;
    /* short naps: an answer that arrives meanwhile waits at most 100 us */
    if (wait_us > 0)
        sleep_us(wait_us < 100 ? wait_us : 100);
    return NULL;
}

/* ------------------------------------------------------------- closed */

/* A replica's region: in netns mode the namespace it lives in, entered by
 * the thread that acts as a client there (ZeroMQ's I/O thread, started by
 * that thread's first socket, inherits the namespace). */
typedef struct region {
    const opts_t *o;
    int k;             /* replica index */
    uint64_t t_stop;   /* monotonic time the thread's load ends */
    atomic_int *go;    /* partition: set when the cut is in place */
    size_t sent, answered, unanswered, wfail;
    double max_lag_ms; /* partition: staleness the answers reported */
} region_t;

static int enter_region(const opts_t *o, int k)
{
    if (k >= o->nns || !*o->ns[k])
        return 0;
    char p[512];
    snprintf(p, sizeof p, "/run/netns/%s", o->ns[k]);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET)) {
        fprintf(stderr, "bench_tradeoff: cannot enter namespace %s: %s\n",
                o->ns[k], strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

static const char *leader_from(const opts_t *o, int k)
{
    return k < o->nlf ? o->lf[k] : o->leader;
}

/* One read-after-write probe: write doc i to the leader through W (closed
 * loop), and the moment it is acknowledged query R (k = 10, the doc's
 * vector, no min_version): does the answer's version include the write? */
static void raw_once(const opts_t *o, qry_client_t *W, qry_client_t *R,
                     const char *pre, uint64_t i, docbuf_t *b, region_t *g)
{
    char err[512];
    doc_make(b, o->dim, 8, i, pre);
    Kbsync__Response *r = NULL;
    Kbsync__UpsertRequest u = KBSYNC__UPSERT_REQUEST__INIT;
    u.docs = &b->dp;
    u.n_docs = 1;
    u.mode = o->mode;
    u.quorum = g_quorum;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
    req.upsert = &u;
    if (qry_client_call(W, &req, o->timeout_ms, &r, err, sizeof err) ||
        r->error || !r->write) {
        g->wfail++;
        if (r)
            kbsync__response__free_unpacked(r, NULL);
        return;
    }
    uint64_t version = r->write->version;
    kbsync__response__free_unpacked(r, NULL);
    r = NULL;
    Kbsync__QueryRequest q = KBSYNC__QUERY_REQUEST__INIT;
    q.k = 10;
    q.vector = b->vec;
    q.n_vector = (size_t)o->dim;
    Kbsync__Request qr = KBSYNC__REQUEST__INIT;
    qr.body_case = KBSYNC__REQUEST__BODY_QUERY;
    qr.query = &q;
    g->sent++;
    if (qry_client_call(R, &qr, o->timeout_ms, &r, err, sizeof err) ||
        r->error || !r->query || !r->query->state)
        g->unanswered++;
    else if (r->query->state->version >= version)
        g->answered++;
    if (r)
        kbsync__response__free_unpacked(r, NULL);
}

/* Opens a client of ep as if from region k: the ZeroMQ I/O thread that
 * makes the connection starts in region k's namespace; this thread then
 * returns to its own. */
static qry_client_t *open_in_region(const opts_t *o, int k, const char *ep)
{
    int self = -1;
    if (k < o->nns && *o->ns[k]) {
        self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (self < 0 || enter_region(o, k))
            exit(1);
    }
    qry_client_t *c = open_or_die(ep);
    if (self >= 0) {
        if (setns(self, CLONE_NEWNET)) {
            perror("bench_tradeoff: setns back");
            exit(1);
        }
        close(self);
    }
    return c;
}

/* read-after-write from region k, concurrently with the other regions. */
static void *raw_main(void *arg)
{
    region_t *g = arg;
    const opts_t *o = g->o;
    if (enter_region(o, g->k))
        return NULL;
    qry_client_t *W = open_or_die(leader_from(o, g->k));
    qry_client_t *R = open_or_die(o->rep[g->k]);
    docbuf_t b = {0};
    char pre[32];
    snprintf(pre, sizeof pre, "rawc%d", g->k);
    for (uint64_t i = 0; kb_mono_us() < g->t_stop; i++)
        raw_once(o, W, R, pre, i, &b, g);
    free(b.vec);
    qry_client_close(&R);
    qry_client_close(&W);
    return NULL;
}

static int cmd_closed(const opts_t *o)
{
    if (!o->leader || o->nrep < 1)
        usage();
    qry_client_t *L = open_or_die(o->leader);
    size_t cap = (size_t)o->max_writes;
    double *lat = malloc(sizeof(double) * cap);
    docbuf_t b = {0};
    char err[512];
    size_t n = 0, fail = 0;
    /* warm-up, not counted: 20 writes or 0.3 s, whichever comes first */
    size_t warm = 0;
    uint64_t t_warm = kb_mono_us() + 300000, t_end = 0;
    for (size_t i = 0; n < cap; i++) {
        if (!t_end && (i == 20 || kb_mono_us() >= t_warm)) {
            warm = i;
            t_end = kb_mono_us() + (uint64_t)(o->seconds * 1e6);
        }
        if (t_end && kb_mono_us() >= t_end)
            break;
        doc_make(&b, o->dim, 7, i, "closed");
        uint64_t rid;
        Kbsync__Response *r = NULL;
        uint64_t t0 = kb_mono_us();
        if (send_upsert(L, &b.dp, 1, o->mode, &rid))
            break;
        for (;;) {
            if (qry_client_recv(L, o->timeout_ms, &r, err, sizeof err))
                break;
            if (r->request_id == rid)
                break;
            kbsync__response__free_unpacked(r, NULL);
            r = NULL;
        }
        uint64_t t1 = kb_mono_us();
        if (!r || r->error)
            fail++;
        else if (t_end)
            lat[n++] = (double)(t1 - t0) / 1000.0;
        if (r)
            kbsync__response__free_unpacked(r, NULL);
    }
    /* read-after-write, one client: each probe from a replica region drawn
     * at random, reading that region's replica */
    qry_client_t *W1[MAX_REPLICAS], *R1[MAX_REPLICAS];
    for (int k = 0; k < o->nrep; k++) {
        W1[k] = open_in_region(o, k, leader_from(o, k));
        R1[k] = open_in_region(o, k, o->rep[k]);
    }
    sleep_us(100000);
    region_t one = {.o = o};
    bench_rng_t rng = {(uint64_t)kb_wall_us()};
    uint64_t raw_end = kb_mono_us() + (uint64_t)(o->raw_seconds * 1e6);
    for (uint64_t i = 0; kb_mono_us() < raw_end; i++) {
        int k = (int)(bench_next(&rng) % (uint64_t)o->nrep);
        raw_once(o, W1[k], R1[k], "raw1", i, &b, &one);
    }
    for (int k = 0; k < o->nrep; k++) {
        qry_client_close(&W1[k]);
        qry_client_close(&R1[k]);
    }
    /* and with one client per replica region, all at once */
    region_t G[MAX_REPLICAS];
    pthread_t th[MAX_REPLICAS];
    raw_end = kb_mono_us() + 100000 + (uint64_t)(o->raw_seconds * 1e6);
    for (int k = 0; k < o->nrep; k++) {
        G[k] = (region_t){.o = o, .k = k, .t_stop = raw_end};
        pthread_create(&th[k], NULL, raw_main, &G[k]);
    }
    region_t all = {.o = o};
    for (int k = 0; k < o->nrep; k++) {
        pthread_join(th[k], NULL);
        all.sent += G[k].sent;
        all.answered += G[k].answered;
        all.unanswered += G[k].unanswered;
        all.wfail += G[k].wfail;
    }
    /* read levels: a write, then one read at each level on a random
     * replica (from that replica's region) */
    enum { NLVL = 3 };
    static const Kbsync__ReadLevel lvl[NLVL] = {
        KBSYNC__READ_LEVEL__READ_EVENTUAL, KBSYNC__READ_LEVEL__READ_SESSION,
        KBSYNC__READ_LEVEL__READ_STRONG};
    static const char *const lvl_name[NLVL] = {"eventual", "session",
                                               "strong"};
    size_t lcap = 100000, ln[NLVL] = {0}, lseen[NLVL] = {0}, lfail = 0;
    double *llat[NLVL];
    for (int l = 0; l < NLVL; l++)
        llat[l] = malloc(sizeof(double) * lcap);
    for (int k = 0; k < o->nrep; k++) {
        W1[k] = open_in_region(o, k, leader_from(o, k));
        R1[k] = open_in_region(o, k, o->rep[k]);
    }
    sleep_us(100000);
    raw_end = kb_mono_us() + (uint64_t)(o->raw_seconds * 1e6);
    for (uint64_t i = 0; kb_mono_us() < raw_end && ln[NLVL - 1] < lcap; i++) {
        int k = (int)(bench_next(&rng) % (uint64_t)o->nrep);
        doc_make(&b, o->dim, 9, i, "lvl");
        Kbsync__Response *r = NULL;
        Kbsync__UpsertRequest u = KBSYNC__UPSERT_REQUEST__INIT;
        u.docs = &b.dp;
        u.n_docs = 1;
        u.mode = o->mode;
        u.quorum = g_quorum;
        Kbsync__Request req = KBSYNC__REQUEST__INIT;
        req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
        req.upsert = &u;
        if (qry_client_call(W1[k], &req, o->timeout_ms, &r, err, sizeof err) ||
            r->error || !r->write) {
            lfail++;
            if (r)
                kbsync__response__free_unpacked(r, NULL);
            continue;
        }
        uint64_t version = r->write->version;
        kbsync__response__free_unpacked(r, NULL);
        for (int l = 0; l < NLVL; l++) {
            Kbsync__QueryRequest q = KBSYNC__QUERY_REQUEST__INIT;
            q.k = 10;
            q.vector = b.vec;
            q.n_vector = (size_t)o->dim;
            q.consistency = lvl[l];
            if (lvl[l] == KBSYNC__READ_LEVEL__READ_SESSION)
                q.min_version = version;
            Kbsync__Request qr = KBSYNC__REQUEST__INIT;
            qr.body_case = KBSYNC__REQUEST__BODY_QUERY;
            qr.query = &q;
            r = NULL;
            uint64_t t0 = kb_mono_us();
            int bad = qry_client_call(R1[k], &qr, o->timeout_ms, &r, err,
                                      sizeof err) ||
                      r->error || !r->query || !r->query->state;
            uint64_t t1 = kb_mono_us();
            if (!bad) {
                llat[l][ln[l]++] = (double)(t1 - t0) / 1000.0;
                lseen[l] += r->query->state->version >= version;
            } else {
                lfail++;
            }
            if (r)
                kbsync__response__free_unpacked(r, NULL);
        }
    }
    for (int k = 0; k < o->nrep; k++) {
        qry_client_close(&W1[k]);
        qry_client_close(&R1[k]);
    }
    jline_t j;
    j_begin(&j, o, "closed");
    for (int l = 0; l < NLVL; l++) {
        char key[64];
        snprintf(key, sizeof key, "lvl_%s_reads", lvl_name[l]);
        j_num(&j, key, (double)ln[l]);
        snprintf(key, sizeof key, "lvl_%s_share", lvl_name[l]);
        j_num(&j, key, ln[l] ? (double)lseen[l] / (double)ln[l] : -1);
        snprintf(key, sizeof key, "lvl_%s_p50", lvl_name[l]);
        j_num(&j, key, ln[l] ? pct(llat[l], ln[l], 50) : -1);
        snprintf(key, sizeof key, "lvl_%s_p99", lvl_name[l]);
        j_num(&j, key, ln[l] ? pct(llat[l], ln[l], 99) : -1);
        free(llat[l]);
    }
    j_num(&j, "lvl_failed", (double)lfail);
    double mean = 0;
    for (size_t i = 0; i < n; i++)
        mean += lat[i];
    j_num(&j, "writes", (double)n);
    j_num(&j, "warmup_writes", (double)warm);
    j_num(&j, "failed", (double)fail);
    j_num(&j, "lat_mean", n ? mean / (double)n : -1);
    j_num(&j, "lat_p50", n ? pct(lat, n, 50) : -1);
    j_num(&j, "lat_p99", n ? pct(lat, n, 99) : -1);
    j_num(&j, "lat_p999", n ? pct(lat, n, 99.9) : -1);
    j_num(&j, "lat_max", n ? pct(lat, n, 100) : -1);
    j_num(&j, "raw_reads", (double)one.sent);
    j_num(&j, "raw_unanswered", (double)one.unanswered);
    j_num(&j, "raw_write_failed", (double)one.wfail);
    j_num(&j, "raw_share", one.sent ? (double)one.answered / (double)one.sent : -1);
    j_num(&j, "rawc_clients", o->nrep);
    j_num(&j, "rawc_reads", (double)all.sent);
    j_num(&j, "rawc_unanswered", (double)all.unanswered);
    j_num(&j, "rawc_write_failed", (double)all.wfail);
    j_num(&j, "rawc_share", all.sent ? (double)all.answered / (double)all.sent : -1);
    j_end(&j);
    qry_client_close(&L);
    free(lat);
    free(b.vec);
    return n ? 0 : 1;
}

/* --------------------------------------------------------------- open */

typedef struct poller {
    const char *ep;
    int interval_us;
    atomic_int *stop;          /* set by the writer when its load is over */
    _Atomic uint64_t target;   /* stop once this version is seen, after stop */
    uint64_t deadline_us;      /* ... or at this time */
    uint64_t *mid, *ver;       /* samples: midpoint of round trip, version */
    size_t n, cap;
} poller_t;

static void *poller_main(void *arg)
{
    poller_t *p = arg;
    qry_client_t *c = open_or_die(p->ep);
    enum { RING = 1 << 16 };
    uint64_t *sent_at = calloc(RING, sizeof *sent_at);
    uint64_t next = kb_mono_us(), last_v = 0;
    for (;;) {
        uint64_t now = kb_mono_us();
        if (atomic_load(p->stop) &&
            (last_v >= atomic_load(&p->target) || now > p->deadline_us))
            break;
        if (now >= next) {
            uint64_t rid;
            if (send_status(c, &rid) == 0)
                sent_at[rid % RING] = now;
            next += (uint64_t)p->interval_us;
            if (next < now)
                next = now + (uint64_t)p->interval_us;
        }
        now = kb_mono_us();
        uint64_t gap = next > now ? next - now : 0;
        char err[256];
        Kbsync__Response *r = NULL;
        int got = qry_client_recv(c, (int)((gap + 999) / 1000), &r, err,
                                  sizeof err) == 0;
        while (got) {
            uint64_t at = kb_mono_us();
            uint64_t s = sent_at[r->request_id % RING];
            if (r->status && s && p->n < p->cap) {
                p->mid[p->n] = (s + at) / 2;
                p->ver[p->n] = r->status->version;
                if (r->status->version > last_v)
                    last_v = r->status->version;
                p->n++;
            }
            kbsync__response__free_unpacked(r, NULL);
            r = NULL;
            got = qry_client_recv(c, 0, &r, err, sizeof err) == 0;
        }
    }
    free(sent_at);
    qry_client_close(&c);
    return NULL;
}

typedef struct ackpt { /* for "newest LSN acknowledged by time t" */
    uint64_t at, lsn;
} ackpt_t;

static int cmp_ackpt(const void *a, const void *b)
{
    const ackpt_t *x = a, *y = b;
    return (x->at > y->at) - (x->at < y->at);
}

static int cmd_open(const opts_t *o)
{
    if (!o->leader || o->nrep < 1)
        usage();
    qry_client_t *L = open_or_die(o->leader);
    int64_t v0 = node_version(L, o->timeout_ms);
    if (v0 < 0) {
        fprintf(stderr, "bench_tradeoff: leader %s does not answer\n", o->leader);
        return 1;
    }
    size_t n = (size_t)((double)o->rate * o->seconds);
    if (n < 1)
        n = 1;
    uint64_t first_lsn = (uint64_t)v0 + 1;
    uint64_t *ack_us = calloc(n, sizeof *ack_us);     /* by LSN - first_lsn */
    uint64_t *done_us = calloc(n, sizeof *done_us);   /* by request index */
    uint8_t *okay = calloc(n, 1);
    double *lat = malloc(n * sizeof *lat);
    double *late = malloc(n * sizeof *late); /* send time - scheduled, ms */
    atomic_int stop = 0;
    poller_t P[MAX_REPLICAS];
    pthread_t th[MAX_REPLICAS];
    size_t samp_cap = (size_t)((o->seconds + 30) * 1e6 / o->poll_us) + 1000;
    for (int i = 0; i < o->nrep; i++) {
        P[i] = (poller_t){.ep = o->rep[i], .interval_us = o->poll_us,
                          .stop = &stop, .cap = samp_cap};
        atomic_store(&P[i].target, UINT64_MAX);
        P[i].mid = malloc(samp_cap * sizeof(uint64_t));
        P[i].ver = malloc(samp_cap * sizeof(uint64_t));
        pthread_create(&th[i], NULL, poller_main, &P[i]);
    }
    sleep_us(50000); /* pollers connected and sampling */
    docbuf_t b = {0};
    /* OPEN_CONNS connections, write i on connection i % OPEN_CONNS, each with
     * at most OPEN_INFLIGHT unanswered writes, so that no queue of this
     * driver's DEALER socket reaches ZeroMQ's default high-water mark (1,000
     * messages), where a send would block this loop and stop it reading
     * answers. (The node's client ROUTER queues up to 100,000 answers per
     * connection, ZMQ_SNDHWM in node/node.c, and drops answers only beyond
     * that.) A write that must wait for a free slot is sent late, and its
     * latency still counts from its scheduled time. */
    qry_client_t *C[OPEN_CONNS];
    uint64_t rid0[OPEN_CONNS] = {0};
    size_t inflight[OPEN_CONNS] = {0};
    for (int k = 0; k < OPEN_CONNS; k++)
        C[k] = open_or_die(o->leader);
    sleep_us(20000);
    uint64_t t0 = kb_mono_us() + 10000;
    size_t sent = 0, answered = 0, errors = 0, oldest = 0;
    int saturated = 0;
    uint64_t step_ns = 1000000000ull / (uint64_t)o->rate;
#define SCHED(i) (t0 + (uint64_t)(i) * step_ns / 1000u)
    uint64_t drain_deadline = 0, t_load_end = 0;
    uint64_t last_ack_lsn = 0;
    for (;;) {
        uint64_t now = kb_mono_us();
        int sending = sent < n && !saturated, burst = 0;
        /* at most 64 sends between looks at the answers, so that answers
         * are dated when they arrive even when sends block */
        while (sending && sent < n && now >= SCHED(sent) && burst++ < 64 &&
               inflight[sent % OPEN_CONNS] < OPEN_INFLIGHT) {
            int k = (int)(sent % OPEN_CONNS);
            doc_make(&b, o->dim, 11, sent, "open");
            uint64_t rid;
            late[sent] = (double)(kb_mono_us() - SCHED(sent)) / 1000.0;
            if (send_upsert(C[k], &b.dp, 1, o->mode, &rid))
                return 1;
            if (sent < OPEN_CONNS)
                rid0[k] = rid;
            inflight[k]++;
            sent++;
            now = kb_mono_us();
        }
        while (oldest < sent && done_us[oldest])
            oldest++;
        /* stop offering load when a write past the warm-up has waited too
         * long: the node cannot keep up */
        if (!saturated && oldest < sent && SCHED(oldest) >= t0 + WARM_US &&
            now > SCHED(oldest) + SAT_US)
            saturated = 1;
        if (answered == sent && (sent == n || saturated))
            break;
        if ((sent == n || saturated) && !drain_deadline) {
            drain_deadline = now + (uint64_t)o->timeout_ms * 1000u;
            t_load_end = now;
        }
        if (drain_deadline && now > drain_deadline)
            break;
        now = kb_mono_us();
        uint64_t wait = sent < n && !saturated
                            ? (SCHED(sent) > now ? SCHED(sent) - now : 0)
                            : 5000;
        Kbsync__Response *r = NULL;
        char err[256];
        int got = 0;
        for (int k = 0; k < OPEN_CONNS; k++)
            while (qry_client_recv(C[k], 0, &r, err, sizeof err) == 0) {
                got = 1;
                uint64_t at = kb_mono_us();
                uint64_t i = (r->request_id - rid0[k]) * OPEN_CONNS + (uint64_t)k;
                if (i < sent && !done_us[i]) {
                    done_us[i] = at;
                    answered++;
                    inflight[k]--;
                    if (r->error || !r->write) {
                        errors++;
                        if (errors <= 3)
                            fprintf(stderr, "bench_tradeoff: open-loop write: %s\n",
                                    r->error ? r->error->message : "no result");
                    } else {
                        okay[i] = 1;
                        uint64_t lsn = r->write->version;
                        if (lsn >= first_lsn && lsn - first_lsn < n)
                            ack_us[lsn - first_lsn] = at;
                        if (lsn > last_ack_lsn)
                            last_ack_lsn = lsn;
                    }
                }
                kbsync__response__free_unpacked(r, NULL);
                r = NULL;
            }
        /* nothing arrived: nap until the next send is due (at most 100 us,
         * so that answers are dated within 0.1 ms) */
        if (!got)
            sleep_us(wait < 100 ? (wait ? wait : 20) : 100);
    }
    uint64_t t_end = kb_mono_us();
    for (int i = 0; i < o->nrep; i++) {
        P[i].deadline_us = kb_mono_us() + 5000000u;
        atomic_store(&P[i].target, last_ack_lsn);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < o->nrep; i++)
        pthread_join(th[i], NULL);

    /* write latency from the scheduled send time */
    size_t nl = 0;
    size_t nok = 0, during = 0; /* acked; acked while the load was offered */
    for (size_t i = 0; i < sent; i++) {
        nok += okay[i];
        during += okay[i] && done_us[i] <= t_load_end;
        if (okay[i] && SCHED(i) >= t0 + WARM_US)
            lat[nl++] = (double)(done_us[i] - SCHED(i)) / 1000.0;
    }
    /* replica lag per write, in ms, and in versions per status sample */
    size_t nack = 0;
    ackpt_t *ap = malloc((n + 1) * sizeof *ap);
    for (size_t l = 0; l < n; l++)
        if (ack_us[l])
            ap[nack++] = (ackpt_t){ack_us[l], first_lsn + l};
    qsort(ap, nack, sizeof *ap, cmp_ackpt);
    for (size_t k = 1; k < nack; k++)
        if (ap[k].lsn < ap[k - 1].lsn)
            ap[k].lsn = ap[k - 1].lsn; /* prefix max */
    double *lagms = malloc((nack * (size_t)o->nrep + 1) * sizeof *lagms);
    size_t nlag = 0, unseen = 0, nv = 0, nvcap = 0;
    double *lagv = NULL;
    for (int i = 0; i < o->nrep; i++) {
        poller_t *p = &P[i];
        uint64_t *vis = calloc(n, sizeof *vis);
        uint64_t seen = first_lsn - 1;
        for (size_t s = 0; s < p->n; s++) {
            /* a write became visible between the previous sample (which did
             * not show it) and this one: date it halfway */
            uint64_t est = s ? (p->mid[s - 1] + p->mid[s]) / 2 : p->mid[s];
            for (uint64_t l = seen + 1; l <= p->ver[s] && l - first_lsn < n; l++)
                vis[l - first_lsn] = est;
            if (p->ver[s] > seen)
                seen = p->ver[s];
            /* versions behind, while the load ran */
            if (p->mid[s] < t0 + WARM_US || p->mid[s] > t_end)
                continue;
            size_t lo = 0, hi = nack; /* first ack after mid */
            while (lo < hi) {
                size_t m = (lo + hi) / 2;
                if (ap[m].at <= p->mid[s])
                    lo = m + 1;
                else
                    hi = m;
            }
            uint64_t acked = lo ? ap[lo - 1].lsn : first_lsn - 1;
            if (nv == nvcap) {
                nvcap = nvcap ? nvcap * 2 : 4096;
                lagv = realloc(lagv, nvcap * sizeof *lagv);
            }
            lagv[nv++] = acked > p->ver[s] ? (double)(acked - p->ver[s]) : 0;
        }
        for (size_t l = 0; l < n; l++) {
            if (!ack_us[l] || ack_us[l] < t0 + WARM_US)
                continue;
            if (!vis[l]) {
                unseen++;
                continue;
            }
            lagms[nlag++] = vis[l] > ack_us[l]
                                ? (double)(vis[l] - ack_us[l]) / 1000.0
                                : 0.0;
        }
        free(vis);
    }
    jline_t j;
    j_begin(&j, o, "open");
    double span = (double)(t_end - t0) / 1e6;
    j_num(&j, "rate", o->rate);
    j_num(&j, "seconds", o->seconds);
    j_num(&j, "sent", (double)sent);
    j_num(&j, "acked", (double)nok);
    j_num(&j, "measured", (double)nl);
    j_num(&j, "errors", (double)errors + (double)(sent - answered));
    j_num(&j, "error_answers", (double)errors);
    j_num(&j, "unanswered", (double)(sent - answered));
    /* what the node sustained: acks while the load was offered, per second */
    j_num(&j, "achieved", t_load_end > t0 ? (double)during * 1e6 / (double)(t_load_end - t0) : 0);
    j_num(&j, "span_s", span);
    j_num(&j, "saturated", saturated || errors > 0);
    j_num(&j, "lat_p50", nl ? pct(lat, nl, 50) : -1);
    j_num(&j, "lat_p99", nl ? pct(lat, nl, 99) : -1);
    j_num(&j, "lat_p999", nl ? pct(lat, nl, 99.9) : -1);
    j_num(&j, "lat_max", nl ? pct(lat, nl, 100) : -1);
    j_num(&j, "lag_ms_p50", nlag ? pct(lagms, nlag, 50) : -1);
    j_num(&j, "lag_ms_p99", nlag ? pct(lagms, nlag, 99) : -1);
    j_num(&j, "lag_ms_max", nlag ? pct(lagms, nlag, 100) : -1);
    j_num(&j, "lag_v_p50", nv ? pct(lagv, nv, 50) : -1);
    j_num(&j, "lag_v_p99", nv ? pct(lagv, nv, 99) : -1);
    j_num(&j, "lag_v_max", nv ? pct(lagv, nv, 100) : -1);
    j_num(&j, "send_late_p50", sent ? pct(late, sent, 50) : -1);
    j_num(&j, "send_late_p99", sent ? pct(late, sent, 99) : -1);
    j_num(&j, "lag_unseen", (double)unseen);
    j_num(&j, "lag_samples", (double)nv);
    j_end(&j);
#undef SCHED
    for (int k = 0; k < OPEN_CONNS; k++)
        qry_client_close(&C[k]);
    qry_client_close(&L);
    return nl ? 0 : 1;
}

/* ------------------------------------------------------------- ingest */

static int cmd_ingest(const opts_t *o)
{
    if (!o->leader || o->nrep < 1 || o->docs < 1)
        usage();
    qry_client_t *L = open_or_die(o->leader);
    qry_client_t *R[MAX_REPLICAS];
    for (int i = 0; i < o->nrep; i++)
        R[i] = open_or_die(o->rep[i]);
    int64_t v0 = node_version(L, o->timeout_ms);
    if (v0 < 0)
        return 1;
    /* every document is built before the clock starts */
    size_t n = (size_t)o->docs;
    float *vec = malloc(sizeof(float) * (size_t)o->dim * n);
    char *text = malloc(320 * n), *ids = malloc(32 * n);
    Kbsync__Doc *d = malloc(n * sizeof *d);
    Kbsync__Doc **dp = malloc(n * sizeof *dp);
    for (size_t i = 0; i < n; i++) {
        bench_vector(1, i, o->dim, vec + i * (size_t)o->dim);
        bench_text(i, text + 320 * i, 300);
        snprintf(ids + 32 * i, 32, "ingest-%zu", i);
        kbsync__doc__init(&d[i]);
        d[i].id = ids + 32 * i;
        d[i].text = text + 320 * i;
        d[i].embedding = vec + i * (size_t)o->dim;
        d[i].n_embedding = (size_t)o->dim;
        dp[i] = &d[i];
    }
    uint64_t t0 = kb_mono_us();
    size_t next = 0, inflight = 0, failed = 0;
    uint64_t last = 0;
    char err[512];
    while (next < n || inflight) {
        while (next < n && inflight < (size_t)o->window) {
            size_t m = n - next < (size_t)o->batch ? n - next : (size_t)o->batch;
            uint64_t rid;
            if (send_upsert(L, dp + next, m, o->mode, &rid))
                return 1;
            next += m;
            inflight++;
        }
        Kbsync__Response *r;
        if (qry_client_recv(L, o->timeout_ms, &r, err, sizeof err)) {
            fprintf(stderr, "bench_tradeoff: ingest: %s\n", err);
            return 1;
        }
        inflight--;
        if (r->error) {
            failed++;
            fprintf(stderr, "bench_tradeoff: ingest batch: %s\n", r->error->message);
        }
        if (r->write && r->write->version > last)
            last = r->write->version;
        kbsync__response__free_unpacked(r, NULL);
    }
    uint64_t t_ack = kb_mono_us();
    /* until every replica has applied everything */
    uint64_t t_all = 0, give_up = t_ack + (uint64_t)o->timeout_ms * 6000u;
    int behind = 1;
    while (behind && kb_mono_us() < give_up) {
        behind = 0;
        uint64_t mid = 0;
        for (int i = 0; i < o->nrep; i++) {
            uint64_t s = kb_mono_us();
            int64_t v = node_version(R[i], o->timeout_ms);
            mid = (s + kb_mono_us()) / 2;
            if (v < 0 || (uint64_t)v < last) {
                behind = 1;
                break;
            }
        }
        if (!behind)
            t_all = mid;
        else
            sleep_us(2000);
    }
    jline_t j;
    j_begin(&j, o, "ingest");
    j_num(&j, "docs", (double)n);
    j_num(&j, "batch", o->batch);
    j_num(&j, "window", o->window);
    j_num(&j, "failed_batches", (double)failed);
    j_num(&j, "ack_s", (double)(t_ack - t0) / 1e6);
    j_num(&j, "applied_s", t_all ? (double)(t_all - t0) / 1e6 : -1);
    j_num(&j, "leader_docs_per_s", (double)n / ((double)(t_ack - t0) / 1e6));
    j_num(&j, "docs_per_s",
          t_all && !failed ? (double)n / ((double)(t_all - t0) / 1e6) : -1);
    j_end(&j);
    for (int i = 0; i < o->nrep; i++)
        qry_client_close(&R[i]);
    qry_client_close(&L);
    return t_all && !failed ? 0 : 1;
}

/* ---------------------------------------------------------- partition */

static int run_cmd(const char *what, const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "bench_tradeoff: %s command failed (%d): %s\n", what,
                rc, cmd);
    return rc;
}

/* Reads at a fixed rate from region k to its replica while the cut is in
 * place; a read counts as answered when its answer (without error) comes
 * within --read-timeout-ms. Records the staleness the answers reported. */
static void *part_reader(void *arg)
{
    region_t *g = arg;
    const opts_t *o = g->o;
    if (enter_region(o, g->k))
        return NULL;
    qry_client_t *R = open_or_die(o->rep[g->k]);
    size_t cap = (size_t)(o->read_rate * o->seconds) + 2;
    uint64_t *sent_at = calloc(cap, sizeof *sent_at);
    uint8_t *ok = calloc(cap, 1);
    float *qv = malloc(sizeof(float) * (size_t)o->dim);
    while (!atomic_load(g->go))
        sleep_us(200);
    uint64_t t0 = kb_mono_us(), rid0 = 0;
    uint64_t tmo = (uint64_t)o->read_timeout_ms * 1000u;
    char err[256];
    for (;;) {
        uint64_t now = kb_mono_us();
        while (now < g->t_stop && g->sent < cap &&
               now >= t0 + (uint64_t)((double)g->sent * 1e6 / o->read_rate)) {
            uint64_t rid;
            bench_vector(99, g->sent * 31 + (uint64_t)g->k, o->dim, qv);
            if (send_query(R, qv, o->dim, &rid))
                break;
            if (g->sent == 0)
                rid0 = rid;
            sent_at[g->sent++] = kb_mono_us();
        }
        Kbsync__Response *r = NULL;
        while (qry_client_recv(R, 0, &r, err, sizeof err) == 0) {
            uint64_t i = r->request_id - rid0, at = kb_mono_us();
            if (i < g->sent && !ok[i] && !r->error && r->query &&
                at - sent_at[i] <= tmo) {
                ok[i] = 1;
                g->answered++;
                /* lag_ms 18446744073709551 means "unknown": not counted */
                if (r->query->state && r->query->state->lag_ms < 1000000000000ull &&
                    (double)r->query->state->lag_ms > g->max_lag_ms)
                    g->max_lag_ms = (double)r->query->state->lag_ms;
            }
            kbsync__response__free_unpacked(r, NULL);
        }
        if (now > g->t_stop + tmo)
            break;
        sleep_us(500);
    }
    free(sent_at);
    free(ok);
    free(qv);
    qry_client_close(&R);
    return NULL;
}

static int cmd_partition(const opts_t *o)
{
    if (!o->leader || o->nrep < 1 || !o->cut || !o->heal || o->victim < 0 ||
        o->victim >= o->nrep)
        usage();
    qry_client_t *L = open_or_die(o->leader);
    qry_client_t *V = open_or_die(o->rep[o->victim]);
    int64_t v_cut = node_version(V, o->timeout_ms);
    if (v_cut < 0) {
        fprintf(stderr, "bench_tradeoff: replica %s does not answer\n",
                o->rep[o->victim]);
        return 1;
    }
    /* readers: one per replica, in that replica's region */
    atomic_int go = 0;
    region_t G[MAX_REPLICAS];
    pthread_t th[MAX_REPLICAS];
    for (int k = 0; k < o->nrep; k++) {
        G[k] = (region_t){.o = o, .k = k, .go = &go, .t_stop = UINT64_MAX};
        pthread_create(&th[k], NULL, part_reader, &G[k]);
    }
    sleep_us(100000); /* readers connected */
    size_t nw = (size_t)(o->write_rate * o->seconds) + 1;
    int8_t *w_res = calloc(nw, 1); /* 0 waiting, 1 ok, 2 timeout, 3 refused, 4 other */
    docbuf_t b = {0};
    if (run_cmd("cut", o->cut))
        return 1;
    uint64_t t0 = kb_mono_us();
    uint64_t t_stop = t0 + (uint64_t)(o->seconds * 1e6);
    for (int k = 0; k < o->nrep; k++)
        G[k].t_stop = t_stop;
    atomic_store(&go, 1);
    size_t ws = 0;
    uint64_t w_rid0 = 0, w_deadline = 0;
    char err[256];
    /* writes from the leader's region, open loop, in the mode under test */
    for (;;) {
        uint64_t now = kb_mono_us();
        if (now < t_stop) {
            while (ws < nw &&
                   now >= t0 + (uint64_t)((double)ws * 1e6 / o->write_rate)) {
                doc_make(&b, o->dim, 13, ws, "part");
                uint64_t rid;
                if (send_upsert(L, &b.dp, 1, o->mode, &rid))
                    return 1;
                if (ws == 0)
                    w_rid0 = rid;
                ws++;
            }
        } else if (!w_deadline) {
            /* the last writes get their answers (or time out) while the
             * replica is still cut off */
            w_deadline = now + (uint64_t)o->timeout_ms * 1000u;
        }
        Kbsync__Response *r = NULL;
        while (qry_client_recv(L, 0, &r, err, sizeof err) == 0) {
            uint64_t i = r->request_id - w_rid0;
            if (i < ws && !w_res[i])
                w_res[i] = !r->error ? 1
                           : r->error->code == KB_ETIMEOUT ? 2
                           : r->error->code == KB_ENOREPLICA ? 3 : 4;
            kbsync__response__free_unpacked(r, NULL);
        }
        size_t open_w = 0;
        for (size_t i = 0; i < ws; i++)
            open_w += !w_res[i];
        if (w_deadline && (open_w == 0 || now > w_deadline))
            break;
        sleep_us(500);
    }
    for (int k = 0; k < o->nrep; k++)
        pthread_join(th[k], NULL);
    int64_t target = node_version(L, o->timeout_ms);
    uint64_t t_heal = kb_mono_us(); /* reconnected when the command starts */
    if (run_cmd("heal", o->heal))
        return 1;
    /* status requests to the victim every 5 ms until it reaches target;
     * any answer counts (it reports the version when it answers) */
    uint64_t conv_end = t_heal + (uint64_t)(o->converge_s * 1e6), next = t_heal;
    uint64_t t_conv = 0;
    while (!t_conv && kb_mono_us() < conv_end) {
        uint64_t now = kb_mono_us();
        if (now >= next) {
            uint64_t rid;
            send_status(V, &rid);
            next = now + 5000;
        }
        Kbsync__Response *r = recv_within(V, 1000);
        while (r) {
            if (r->status && (int64_t)r->status->version >= target)
                t_conv = kb_mono_us();
            kbsync__response__free_unpacked(r, NULL);
            r = recv_within(V, 0);
        }
    }
    size_t acc = 0, tmo = 0, ref = 0, oth = 0, unanswered = 0;
    for (size_t i = 0; i < ws; i++) {
        acc += w_res[i] == 1;
        tmo += w_res[i] == 2;
        ref += w_res[i] == 3;
        oth += w_res[i] == 4;
        unanswered += w_res[i] == 0;
    }
    size_t vs = G[o->victim].sent, va = G[o->victim].answered, os = 0, oa = 0;
    for (int k = 0; k < o->nrep; k++)
        if (k != o->victim) {
            os += G[k].sent;
            oa += G[k].answered;
        }
    jline_t j;
    j_begin(&j, o, "partition");
    j_num(&j, "seconds", o->seconds);
    j_num(&j, "writes_sent", (double)ws);
    j_num(&j, "writes_accepted", (double)acc);
    j_num(&j, "writes_timeout", (double)tmo);
    j_num(&j, "writes_refused", (double)ref);
    j_num(&j, "writes_other_error", (double)oth);
    j_num(&j, "writes_unanswered", (double)unanswered);
    j_num(&j, "writes_share", ws ? (double)acc / (double)ws : -1);
    j_num(&j, "reads_victim_sent", (double)vs);
    j_num(&j, "reads_victim_share", vs ? (double)va / (double)vs : -1);
    j_num(&j, "reads_victim_max_lag_ms", va ? G[o->victim].max_lag_ms : -1);
    j_num(&j, "reads_others_sent", (double)os);
    /* with one replica there are no others: -1 = not applicable */
    j_num(&j, "reads_others_share", os ? (double)oa / (double)os : -1);
    j_num(&j, "leader_version", (double)target);
    j_num(&j, "victim_behind", target > v_cut ? (double)(target - v_cut) : 0);
    j_num(&j, "converge_ms", t_conv ? (double)(t_conv - t_heal) / 1000.0 : -1);
    j_end(&j);
    qry_client_close(&V);
    qry_client_close(&L);
    free(w_res);
    free(b.vec);
    return t_conv ? 0 : 1;
}

/* -------------------------------------------------------------- delay */

/* NETLINK QUEUE DELAY
 * The kernel hands each packet that an iptables NFQUEUE rule matched to this
 * process (metadata only: NFQNL_COPY_META) and holds it until a verdict
 * arrives. We keep (packet id, due time) in a FIFO and, when the oldest are
 * due, send one NFQNL_MSG_VERDICT_BATCH that accepts every packet with an
 * id <= the newest due one. Ids grow per queue and every packet waits the
 * same time, so a batch never releases a packet early. The rule should use
 * --queue-bypass so that packets pass undelayed when no one listens. */

static volatile sig_atomic_t g_stop;
static void on_term(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void nl_attr(struct nlmsghdr *nh, uint16_t type, const void *data,
                    uint16_t len)
{
    struct nlattr *a = (struct nlattr *)((char *)nh + NLMSG_ALIGN(nh->nlmsg_len));
    a->nla_type = type;
    a->nla_len = (uint16_t)(NLA_HDRLEN + len);
    memcpy((char *)a + NLA_HDRLEN, data, len);
    nh->nlmsg_len = NLMSG_ALIGN(nh->nlmsg_len) + NLA_ALIGN(a->nla_len);
}

static struct nlmsghdr *nfq_hdr(char *buf, uint16_t type, uint16_t queue,
                                int ack, uint32_t seq)
{
    memset(buf, 0, 256);
    struct nlmsghdr *nh = (struct nlmsghdr *)buf;
    nh->nlmsg_len = NLMSG_LENGTH(sizeof(struct nfgenmsg));
    nh->nlmsg_type = (uint16_t)((NFNL_SUBSYS_QUEUE << 8) | type);
    nh->nlmsg_flags = (uint16_t)(NLM_F_REQUEST | (ack ? NLM_F_ACK : 0));
    nh->nlmsg_seq = seq;
    struct nfgenmsg *g = NLMSG_DATA(nh);
    g->nfgen_family = AF_UNSPEC;
    g->version = NFNETLINK_V0;
    g->res_id = htons(queue);
    return nh;
}

/* Sends a config message and waits for the kernel's ack: 0 or -errno. */
static int nfq_config(int fd, struct nlmsghdr *nh)
{
    if (send(fd, nh, nh->nlmsg_len, 0) < 0)
        return -errno;
    char buf[8192];
    for (;;) {
        ssize_t k = recv(fd, buf, sizeof buf, 0);
        if (k < 0)
            return -errno;
        for (struct nlmsghdr *m = (struct nlmsghdr *)buf; NLMSG_OK(m, (size_t)k);
             m = NLMSG_NEXT(m, k))
            if (m->nlmsg_type == NLMSG_ERROR && m->nlmsg_seq == nh->nlmsg_seq)
                return ((struct nlmsgerr *)NLMSG_DATA(m))->error;
    }
}

static int cmd_delay(const opts_t *o)
{
    if (o->ms < 0 || o->queue < 0 || o->queue > 65535)
        usage();
    int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER);
    if (fd < 0) {
        perror("bench_tradeoff delay: netlink socket");
        return 1;
    }
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    int big = 32 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa)) {
        perror("bench_tradeoff delay: bind");
        return 1;
    }
    char buf[256];
    uint32_t seq = 1;
    uint16_t q = (uint16_t)o->queue;
    struct nlmsghdr *nh = nfq_hdr(buf, NFQNL_MSG_CONFIG, q, 1, seq++);
    struct nfqnl_msg_config_cmd cmd = {.command = NFQNL_CFG_CMD_BIND,
                                       .pf = htons(AF_INET)};
    nl_attr(nh, NFQA_CFG_CMD, &cmd, sizeof cmd);
    int rc = nfq_config(fd, nh);
    if (rc) {
        fprintf(stderr, "bench_tradeoff delay: cannot bind queue %d: %s\n",
                o->queue, strerror(-rc));
        return 1;
    }
    nh = nfq_hdr(buf, NFQNL_MSG_CONFIG, q, 1, seq++);
    struct nfqnl_msg_config_params par = {.copy_range = 0,
                                          .copy_mode = NFQNL_COPY_META};
    nl_attr(nh, NFQA_CFG_PARAMS, &par, sizeof par);
    uint32_t maxlen = htonl(1u << 20);
    nl_attr(nh, NFQA_CFG_QUEUE_MAXLEN, &maxlen, sizeof maxlen);
    uint32_t flags = htonl(NFQA_CFG_F_GSO);
    nl_attr(nh, NFQA_CFG_MASK, &flags, sizeof flags);
    nl_attr(nh, NFQA_CFG_FLAGS, &flags, sizeof flags);
    rc = nfq_config(fd, nh);
    if (rc) {
        fprintf(stderr, "bench_tradeoff delay: cannot configure queue %d: %s\n",
                o->queue, strerror(-rc));
        return 1;
    }
    struct sigaction sg = {.sa_handler = on_term};
    sigaction(SIGTERM, &sg, NULL);
    sigaction(SIGINT, &sg, NULL);
    enum { RING = 1 << 21 };
    uint32_t *ids = malloc(RING * sizeof *ids);
    uint64_t *due = malloc(RING * sizeof *due);
    size_t head = 0, tail = 0, maxdepth = 0;
    uint64_t total = 0, enobufs = 0, d_us = (uint64_t)o->ms * 1000u;
    static char rb[1 << 17];
    fprintf(stderr, "bench_tradeoff delay: queue %d, %d ms per packet\n",
            o->queue, o->ms);
    while (!g_stop) {
        uint64_t now = kb_mono_us();
        struct timespec ts, *tp = NULL;
        struct timespec idle = {0, 200000000};
        if (tail != head) {
            uint64_t w = due[head % RING] > now ? due[head % RING] - now : 0;
            ts.tv_sec = (time_t)(w / 1000000u);
            ts.tv_nsec = (long)(w % 1000000u) * 1000;
            tp = &ts;
        } else {
            tp = &idle;
        }
        struct pollfd pf = {fd, POLLIN, 0};
        int pr = ppoll(&pf, 1, tp, NULL);
        if (pr < 0 && errno != EINTR)
            break;
        if (pr > 0) {
            for (;;) {
                ssize_t k = recv(fd, rb, sizeof rb, MSG_DONTWAIT);
                if (k < 0) {
                    if (errno == ENOBUFS) {
                        enobufs++; /* packets lost to us; a later batch
                                      verdict still releases them */
                        continue;
                    }
                    break;
                }
                uint64_t at = kb_mono_us();
                for (struct nlmsghdr *m = (struct nlmsghdr *)rb;
                     NLMSG_OK(m, (size_t)k); m = NLMSG_NEXT(m, k)) {
                    if ((m->nlmsg_type & 0xff) != NFQNL_MSG_PACKET ||
                        (m->nlmsg_type >> 8) != NFNL_SUBSYS_QUEUE)
                        continue;
                    char *p = (char *)NLMSG_DATA(m) + NLMSG_ALIGN(sizeof(struct nfgenmsg));
                    int left = (int)m->nlmsg_len -
                               (int)(p - (char *)m);
                    for (struct nlattr *a = (struct nlattr *)p;
                         left >= (int)sizeof *a && a->nla_len >= sizeof *a &&
                         a->nla_len <= left;
                         left -= NLA_ALIGN(a->nla_len),
                                       a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len))) {
                        if ((a->nla_type & NLA_TYPE_MASK) != NFQA_PACKET_HDR)
                            continue;
                        struct nfqnl_msg_packet_hdr *ph =
                            (void *)((char *)a + NLA_HDRLEN);
                        if (tail - head == RING) { /* full: release oldest */
                            head++;
                        }
                        ids[tail % RING] = ntohl(ph->packet_id);
                        due[tail % RING] = at + d_us;
                        tail++;
                        total++;
                        break;
                    }
                }
            }
            if (tail - head > maxdepth)
                maxdepth = tail - head;
        }
        now = kb_mono_us();
        size_t last = head;
        while (last != tail && due[last % RING] <= now)
            last++;
        if (last != head) {
            nh = nfq_hdr(buf, NFQNL_MSG_VERDICT_BATCH, q, 0, seq++);
            struct nfqnl_msg_verdict_hdr vh = {.verdict = htonl(NF_ACCEPT),
                                               .id = htonl(ids[(last - 1) % RING])};
            nl_attr(nh, NFQA_VERDICT_HDR, &vh, sizeof vh);
            if (send(fd, nh, nh->nlmsg_len, 0) < 0)
                fprintf(stderr, "bench_tradeoff delay: verdict: %s\n",
                        strerror(errno));
            head = last;
        }
    }
    if (tail != head) { /* let everything still held go */
        nh = nfq_hdr(buf, NFQNL_MSG_VERDICT_BATCH, q, 0, seq++);
        struct nfqnl_msg_verdict_hdr vh = {.verdict = htonl(NF_ACCEPT),
                                           .id = htonl(ids[(tail - 1) % RING])};
        nl_attr(nh, NFQA_VERDICT_HDR, &vh, sizeof vh);
        send(fd, nh, nh->nlmsg_len, 0);
    }
    fprintf(stderr,
            "bench_tradeoff delay: queue %d: %llu packets delayed %d ms, "
            "deepest queue %zu, %llu ENOBUFS\n",
            o->queue, (unsigned long long)total, o->ms, maxdepth,
            (unsigned long long)enobufs);
    close(fd);
    return 0;
}

/* ------------------------------------------------------------- report */

/* raw.jsonl holds one object per measurement with at least test, mode,
 * replicas, delay, run (and rate for `open`). A group is every run of one
 * (test, delay, replicas, mode, rate); each numeric field of a group is
 * summarised by its median over the runs. */

typedef struct group {
    char test[16], mode[16];
    int delay, n, rate;
    char method[16];
    cJSON *runs[64];
    int nruns;
} group_t;

typedef struct report {
    group_t *g;
    size_t n, cap;
} report_t;

static int jint(const cJSON *o, const char *k, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : dflt;
}

static const char *jstr(const cJSON *o, const char *k, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

static group_t *rep_find(report_t *R, const char *test, int delay, int n,
                         const char *mode, int rate, int create)
{
    for (size_t i = 0; i < R->n; i++) {
        group_t *g = &R->g[i];
        if (!strcmp(g->test, test) && g->delay == delay && g->n == n &&
            !strcmp(g->mode, mode) && g->rate == rate)
            return g;
    }
    if (!create)
        return NULL;
    if (R->n == R->cap) {
        R->cap = R->cap ? R->cap * 2 : 64;
        R->g = realloc(R->g, R->cap * sizeof *R->g);
    }
    group_t *g = &R->g[R->n++];
    memset(g, 0, sizeof *g);
    snprintf(g->test, sizeof g->test, "%s", test);
    snprintf(g->mode, sizeof g->mode, "%s", mode);
    g->delay = delay;
    g->n = n;
    g->rate = rate;
    return g;
}

/* Median over runs of field k; NAN when no run has it (or it is -1, the
 * drivers' "not measured"). */
static double med(const group_t *g, const char *k)
{
    if (!g)
        return NAN;
    double v[64];
    size_t m = 0;
    for (int i = 0; i < g->nruns; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(g->runs[i], k);
        if (cJSON_IsNumber(x) && x->valuedouble >= 0)
            v[m++] = x->valuedouble;
    }
    if (!m)
        return NAN;
    qsort(v, m, sizeof *v, bench_cmp_double);
    return m % 2 ? v[m / 2] : (v[m / 2 - 1] + v[m / 2]) / 2;
}

static void fmt_num(char *b, size_t bl, double v)
{
    if (isnan(v))
        snprintf(b, bl, "—");
    else if (v >= 1000)
        snprintf(b, bl, "%.0f", v);
    else if (v >= 100)
        snprintf(b, bl, "%.0f", v);
    else if (v >= 10)
        snprintf(b, bl, "%.1f", v);
    else if (v >= 1)
        snprintf(b, bl, "%.2f", v);
    else if (v == 0)
        snprintf(b, bl, "0");
    else
        snprintf(b, bl, "%.3f", v);
}

static void fmt_rate(char *b, size_t bl, double v)
{
    if (isnan(v))
        snprintf(b, bl, "—");
    else if (v >= 10000)
        snprintf(b, bl, "%.1fk", v / 1000);
    else if (v >= 1000)
        snprintf(b, bl, "%.2fk", v / 1000);
    else
        snprintf(b, bl, "%.0f", v);
}

static void fmt_share(char *b, size_t bl, double v)
{
    if (isnan(v))
        snprintf(b, bl, "—");
    else if (v >= 0.9995)
        snprintf(b, bl, "100%%");
    else if (v > 0 && v < 0.001)
        snprintf(b, bl, "<0.1%%");
    else
        snprintf(b, bl, "%.1f%%", v * 100);
}

/* "a / b / c" from three medians; missing when any is missing. */
static int fmt_triple(char *b, size_t bl, const group_t *g, const char *k1,
                      const char *k2, const char *k3)
{
    char x[32], y[32], z[32];
    double a = med(g, k1), c = med(g, k2), d = med(g, k3);
    if (isnan(a) || isnan(c) || isnan(d)) {
        snprintf(b, bl, "—");
        return 0;
    }
    fmt_num(x, sizeof x, a);
    fmt_num(y, sizeof y, c);
    fmt_num(z, sizeof z, d);
    snprintf(b, bl, "%s / %s / %s", x, y, z);
    return 1;
}

static int parse_list(const char *s, int *v, int max)
{
    int n = 0;
    char *dup = strdup(s ? s : ""), *save = NULL;
    for (char *t = strtok_r(dup, ", ", &save); t && n < max;
         t = strtok_r(NULL, ", ", &save))
        v[n++] = atoi(t);
    free(dup);
    return n;
}

static FILE *open_out(const char *dir, const char *name)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f) {
        fprintf(stderr, "bench_tradeoff report: %s: %s\n", p, strerror(errno));
        exit(1);
    }
    return f;
}

#define NMODES 3
static const char *const MODES[NMODES] = {"async", "quorum:1", "all"};

static int cmd_report(const opts_t *o)
{
    if (!o->raw || !o->out)
        usage();
    FILE *f = fopen(o->raw, "r");
    if (!f) {
        fprintf(stderr, "bench_tradeoff report: %s: %s\n", o->raw, strerror(errno));
        return 1;
    }
    report_t R = {0};
    char *line = NULL;
    size_t cap = 0;
    int rates[16], nrates = 0, delays[16], ndelays = 0, ns[16], nns = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *j = cJSON_Parse(line);
        if (!j)
            continue;
        const char *test = jstr(j, "test", "");
        if (!*test || !strcmp(test, "delay")) {
            cJSON_Delete(j);
            continue;
        }
        int rate = !strcmp(test, "open") ? jint(j, "rate", 0) : 0;
        group_t *g = rep_find(&R, test, jint(j, "delay", 0), jint(j, "replicas", 0),
                              jstr(j, "mode", "?"), rate, 1);
        snprintf(g->method, sizeof g->method, "%s", jstr(j, "method", ""));
        if (g->nruns < 64)
            g->runs[g->nruns++] = j;
        if (rate) {
            int seen = 0;
            for (int i = 0; i < nrates; i++)
                seen |= rates[i] == rate;
            if (!seen && nrates < 16)
                rates[nrates++] = rate;
        }
    }
    fclose(f);
    free(line);
    for (int i = 0; i < nrates; i++) /* ascending */
        for (int k = i + 1; k < nrates; k++)
            if (rates[k] < rates[i]) {
                int t = rates[i];
                rates[i] = rates[k];
                rates[k] = t;
            }
    /* which delays and replica counts: as asked, else as found */
    ndelays = parse_list(o->expect_d, delays, 16);
    nns = parse_list(o->expect_n, ns, 16);
    if (!ndelays || !nns)
        for (size_t i = 0; i < R.n; i++) {
            int sd = 0, sn = 0;
            for (int k = 0; k < ndelays; k++)
                sd |= delays[k] == R.g[i].delay;
            for (int k = 0; k < nns; k++)
                sn |= ns[k] == R.g[i].n;
            if (!sd && ndelays < 16 && !o->expect_d)
                delays[ndelays++] = R.g[i].delay;
            if (!sn && nns < 16 && !o->expect_n)
                ns[nns++] = R.g[i].n;
        }
    int lag_rate = o->lag_rate_s ? atoi(o->lag_rate_s) : (nrates > 1 ? rates[1] : nrates ? rates[0] : 0);

    /* summary.csv / summary.json: every numeric field, median/min/max */
    FILE *csv = open_out(o->out, "summary.csv");
    fprintf(csv, "test,delay_ms,replicas,mode,rate,metric,median,min,max,runs\n");
    cJSON *sum = cJSON_CreateArray();
    for (size_t i = 0; i < R.n; i++) {
        group_t *g = &R.g[i];
        cJSON *first = g->runs[0];
        for (cJSON *x = first->child; x; x = x->next) {
            if (!cJSON_IsNumber(x) || !strcmp(x->string, "delay") ||
                !strcmp(x->string, "replicas") || !strcmp(x->string, "run") ||
                !strcmp(x->string, "rate"))
                continue;
            double lo = INFINITY, hi = -INFINITY;
            for (int r = 0; r < g->nruns; r++) {
                const cJSON *y = cJSON_GetObjectItemCaseSensitive(g->runs[r], x->string);
                if (cJSON_IsNumber(y) && y->valuedouble >= 0) {
                    lo = fmin(lo, y->valuedouble);
                    hi = fmax(hi, y->valuedouble);
                }
            }
            double m = med(g, x->string);
            fprintf(csv, "%s,%d,%d,%s,%d,%s,%.6g,%.6g,%.6g,%d\n", g->test,
                    g->delay, g->n, g->mode, g->rate, x->string,
                    isnan(m) ? -1 : m, isfinite(lo) ? lo : -1,
                    isfinite(hi) ? hi : -1, g->nruns);
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "test", g->test);
            cJSON_AddNumberToObject(e, "delay_ms", g->delay);
            cJSON_AddNumberToObject(e, "replicas", g->n);
            cJSON_AddStringToObject(e, "mode", g->mode);
            if (g->rate)
                cJSON_AddNumberToObject(e, "rate", g->rate);
            cJSON_AddStringToObject(e, "metric", x->string);
            if (isnan(m))
                cJSON_AddNullToObject(e, "median");
            else
                cJSON_AddNumberToObject(e, "median", m);
            cJSON_AddNumberToObject(e, "runs", g->nruns);
            cJSON_AddItemToArray(sum, e);
        }
    }
    fclose(csv);
    FILE *js = open_out(o->out, "summary.json");
    char *txt = cJSON_Print(sum);
    fprintf(js, "%s\n", txt);
    cJSON_free(txt);
    fclose(js);
    cJSON_Delete(sum);

    /* table.md: one trade-off table per delay */
    FILE *md = open_out(o->out, "table.md");
    int missing = 0;
    char c[256], x[64], y[64];
    for (int di = 0; di < ndelays; di++) {
        int D = delays[di];
        const group_t *pg = NULL;
        for (int ni = 0; ni < nns && !pg; ni++)
            pg = rep_find(&R, "partition", D, ns[ni], "async", 0, 0);
        int any = 0;
        for (size_t i = 0; i < R.n; i++)
            any |= R.g[i].delay == D;
        if (!any) {
            fprintf(md, "### %d ms added delay per link: not measured\n\n", D);
            missing++;
            continue;
        }
        const char *method = pg && pg->runs[0] ? jstr(pg->runs[0], "method", "?") : "?";
        int nr = 0;
        for (size_t i = 0; i < R.n; i++)
            if (R.g[i].delay == D && R.g[i].nruns > nr)
                nr = R.g[i].nruns;
        fprintf(md, "### %s, %d ms added one-way delay per link (medians of %d run%s)\n\n",
                D ? "network namespaces" : "loopback", D, nr, nr == 1 ? "" : "s");
        fprintf(md, "| dimension | measure |");
        for (int ni = 0; ni < nns; ni++)
            for (int mi = 0; mi < NMODES; mi++)
                fprintf(md, " %s N=%d |", MODES[mi], ns[ni]);
        fprintf(md, "\n|---|---|");
        for (int ni = 0; ni < nns; ni++)
            for (int mi = 0; mi < NMODES; mi++)
                fprintf(md, "---|");
        fprintf(md, "\n");
        /* a row: label, then one cell per (N, mode) from a formatter */
#define ROW(dim, what, ...)                                                  \
    do {                                                                       \
        fprintf(md, "| %s | %s |", dim, what);                                 \
        for (int ni = 0; ni < nns; ni++)                                       \
            for (int mi = 0; mi < NMODES; mi++) {                              \
                int N = ns[ni];                                                \
                const char *M = MODES[mi];                                     \
                (void)N;                                                       \
                (void)M;                                                       \
                c[0] = 0;                                                      \
                int ok = 0;                                                    \
                __VA_ARGS__;                                                        \
                if (!ok) {                                                     \
                    snprintf(c, sizeof c, "—");                                \
                    missing++;                                                 \
                    fprintf(stderr, "table: missing %s / %s at %d ms, N=%d, "  \
                                    "%s\n", dim, what, D, N, M);               \
                }                                                              \
                fprintf(md, " %s |", c);                                       \
            }                                                                  \
        fprintf(md, "\n");                                                     \
    } while (0)
        char what[256];
        snprintf(what, sizeof what,
                 "replica lag, ms p50 / p99 / max (open-loop load %d writes/s)",
                 lag_rate);
        ROW("data freshness", what, {
            ok = fmt_triple(c, sizeof c, rep_find(&R, "open", D, N, M, lag_rate, 0),
                            "lag_ms_p50", "lag_ms_p99", "lag_ms_max");
        });
        snprintf(what, sizeof what,
                 "replica lag, versions p50 / p99 / max (same load)");
        ROW("data freshness", what, {
            ok = fmt_triple(c, sizeof c, rep_find(&R, "open", D, N, M, lag_rate, 0),
                            "lag_v_p50", "lag_v_p99", "lag_v_max");
        });
        ROW("data freshness",
            "read-after-write visibility: share of queries to a random replica, "
            "sent right after the write's ack, that see the write (1 client)", {
                double v = med(rep_find(&R, "closed", D, N, M, 0, 0), "raw_share");
                fmt_share(c, sizeof c, v);
                ok = !isnan(v);
            });
        ROW("data freshness",
            "same, with N clients at once (one per replica, each reading its own)", {
                double v = med(rep_find(&R, "closed", D, N, M, 0, 0), "rawc_share");
                fmt_share(c, sizeof c, v);
                ok = !isnan(v);
            });
        {
            static const char *const ln_[3] = {"eventual", "session",
                                               "strong"};
            static const char *const lt_[3] = {
                "eventual (no token)", "session (the write's version)",
                "strong (read index from the leader)"};
            for (int l = 0; l < 3; l++) {
                char k1[64], k2[64], k3[64];
                snprintf(k1, sizeof k1, "lvl_%s_share", ln_[l]);
                snprintf(k2, sizeof k2, "lvl_%s_p50", ln_[l]);
                snprintf(k3, sizeof k3, "lvl_%s_p99", ln_[l]);
                snprintf(what, sizeof what,
                         "read right after the write's ack at level %s on a "
                         "random replica: share that sees the write; read ms "
                         "p50 / p99",
                         lt_[l]);
                ROW("read levels", what, {
                    const group_t *g = rep_find(&R, "closed", D, N, M, 0, 0);
                    double sh = med(g, k1), a = med(g, k2), b2 = med(g, k3);
                    if (!isnan(sh) && !isnan(a) && a >= 0) {
                        fmt_share(x, sizeof x, sh);
                        snprintf(c, sizeof c, "%s; %.2f / %.2f", x, a, b2);
                        ok = 1;
                    }
                });
            }
        }
        ROW("write latency", "single-doc write, ms p50 / p99 / p999 (closed loop, 1 client)", {
            ok = fmt_triple(c, sizeof c, rep_find(&R, "closed", D, N, M, 0, 0),
                            "lat_p50", "lat_p99", "lat_p999");
        });
        for (int ri = 0; ri < nrates; ri++) {
            char rt[32];
            fmt_rate(rt, sizeof rt, rates[ri]);
            snprintf(what, sizeof what,
                     "single-doc write, ms p50 / p99 / p999, open loop at %s "
                     "writes/s (sat. = could not keep up: achieved rate)", rt);
            ROW("write latency", what, {
                const group_t *g = rep_find(&R, "open", D, N, M, rates[ri], 0);
                double s = med(g, "saturated");
                if (!isnan(s) && s > 0.5) {
                    fmt_rate(x, sizeof x, med(g, "achieved"));
                    snprintf(c, sizeof c, "sat. %s/s", x);
                    ok = 1;
                } else {
                    ok = fmt_triple(c, sizeof c, g, "lat_p50", "lat_p99", "lat_p999");
                }
            });
        }
        {
            int docs = 0;
            for (size_t i = 0; i < R.n; i++)
                if (!strcmp(R.g[i].test, "ingest") && R.g[i].delay == D)
                    docs = jint(R.g[i].runs[0], "docs", 0);
            snprintf(what, sizeof what,
                     "batched ingest of %d docs (1,000 per request, 4 in "
                     "flight), docs/s until every replica applied all", docs);
        }
        ROW("throughput", what, {
            double v = med(rep_find(&R, "ingest", D, N, M, 0, 0), "docs_per_s");
            fmt_rate(c, sizeof c, v);
            ok = !isnan(v);
        });
        snprintf(what, sizeof what,
                 "one replica cut off (%s): share of writes accepted",
                 !strcmp(method, "sigstop") ? "SIGSTOP" : "its link down");
        ROW("availability under partition", what, {
            double v = med(rep_find(&R, "partition", D, N, M, 0, 0), "writes_share");
            fmt_share(c, sizeof c, v);
            ok = !isnan(v);
        });
        ROW("availability under partition",
            "share of reads answered, each replica read from its own region: "
            "cut-off replica (the lag_ms its answers reported) / the others", {
                const group_t *g = rep_find(&R, "partition", D, N, M, 0, 0);
                double a = med(g, "reads_victim_share"), b2 = med(g, "reads_others_share");
                double st = med(g, "reads_victim_max_lag_ms");
                fmt_share(x, sizeof x, a);
                if (!isnan(st) && a > 0) {
                    size_t l = strlen(x);
                    snprintf(x + l, sizeof x - l, " (lag ≤ %.0f ms)", st);
                }
                if (N == 1)
                    snprintf(y, sizeof y, "(none)");
                else
                    fmt_share(y, sizeof y, b2);
                snprintf(c, sizeof c, "%s / %s", x, y);
                ok = !isnan(a) && (N == 1 || !isnan(b2));
            });
        ROW("availability under partition",
            "convergence after reconnection, ms (versions it was behind)", {
                const group_t *g = rep_find(&R, "partition", D, N, M, 0, 0);
                double a = med(g, "converge_ms"), b2 = med(g, "victim_behind");
                fmt_num(x, sizeof x, a);
                snprintf(c, sizeof c, "%s (%.0f)", x, isnan(b2) ? 0 : b2);
                ok = !isnan(a);
            });
        ROW("scalability", "write throughput (ingest docs/s) relative to the smallest N", {
            double b0 = med(rep_find(&R, "ingest", D, ns[0], M, 0, 0), "docs_per_s");
            double v = med(rep_find(&R, "ingest", D, N, M, 0, 0), "docs_per_s");
            snprintf(c, sizeof c, "%.2f×", v / b0);
            ok = !isnan(v) && !isnan(b0) && b0 > 0;
        });
        ROW("scalability", "p99 single-doc write latency (closed loop), ms (relative to the smallest N)", {
            double b0 = med(rep_find(&R, "closed", D, ns[0], M, 0, 0), "lat_p99");
            double v = med(rep_find(&R, "closed", D, N, M, 0, 0), "lat_p99");
            fmt_num(x, sizeof x, v);
            snprintf(c, sizeof c, "%s (%.2f×)", x, v / b0);
            ok = !isnan(v) && !isnan(b0) && b0 > 0;
        });
#undef ROW
        fprintf(md, "\n");
    }
    fclose(md);

    /* gnuplot data: open-loop points, per (delay, mode, N) */
    for (int di = 0; di < ndelays; di++)
        for (int mi = 0; mi < NMODES; mi += 2) /* plots: async and all */
            for (int ni = 0; ni < nns; ni++) {
                char name[128];
                snprintf(name, sizeof name, "open-d%d-%s-n%d.dat", delays[di],
                         MODES[mi], ns[ni]);
                FILE *d = open_out(o->out, name);
                fprintf(d, "# rate achieved lat_p50 lat_p99 lat_p999 lag_ms_p50 "
                           "lag_ms_p99 lag_v_p99 saturated\n");
                for (int ri = 0; ri < nrates; ri++) {
                    const group_t *g = rep_find(&R, "open", delays[di], ns[ni],
                                                MODES[mi], rates[ri], 0);
                    if (!g)
                        continue;
                    fprintf(d, "%d %g %g %g %g %g %g %g %g\n", rates[ri],
                            med(g, "achieved"), med(g, "lat_p50"), med(g, "lat_p99"),
                            med(g, "lat_p999"), med(g, "lag_ms_p50"),
                            med(g, "lag_ms_p99"), med(g, "lag_v_p99"),
                            med(g, "saturated"));
                }
                fclose(d);
            }
    /* per (delay, mode): by N */
    for (int di = 0; di < ndelays; di++)
        for (int mi = 0; mi < NMODES; mi += 2) /* plots: async and all */ {
            char name[128];
            snprintf(name, sizeof name, "scale-d%d-%s.dat", delays[di], MODES[mi]);
            FILE *d = open_out(o->out, name);
            fprintf(d, "# N ingest_docs_per_s closed_p50 closed_p99 closed_p999 "
                       "raw_share writes_share converge_ms\n");
            for (int ni = 0; ni < nns; ni++) {
                const group_t *gi = rep_find(&R, "ingest", delays[di], ns[ni], MODES[mi], 0, 0);
                const group_t *gc = rep_find(&R, "closed", delays[di], ns[ni], MODES[mi], 0, 0);
                const group_t *gp = rep_find(&R, "partition", delays[di], ns[ni], MODES[mi], 0, 0);
                if (!gi && !gc)
                    continue;
                fprintf(d, "%d %g %g %g %g %g %g %g\n", ns[ni], med(gi, "docs_per_s"),
                        med(gc, "lat_p50"), med(gc, "lat_p99"), med(gc, "lat_p999"),
                        med(gc, "raw_share"), med(gp, "writes_share"),
                        med(gp, "converge_ms"));
            }
            fclose(d);
        }
    /* per (mode, N): by delay */
    for (int mi = 0; mi < NMODES; mi += 2) /* plots: async and all */
        for (int ni = 0; ni < nns; ni++) {
            char name[128];
            snprintf(name, sizeof name, "delay-%s-n%d.dat", MODES[mi], ns[ni]);
            FILE *d = open_out(o->out, name);
            fprintf(d, "# delay_ms closed_p50 closed_p99 raw_share ingest_docs_per_s "
                       "lag_ms_p99 converge_ms rawc_share\n");
            for (int di = 0; di < ndelays; di++) {
                const group_t *gc = rep_find(&R, "closed", delays[di], ns[ni], MODES[mi], 0, 0);
                if (!gc)
                    continue;
                fprintf(d, "%d %g %g %g %g %g %g %g\n", delays[di], med(gc, "lat_p50"),
                        med(gc, "lat_p99"), med(gc, "raw_share"),
                        med(rep_find(&R, "ingest", delays[di], ns[ni], MODES[mi], 0, 0), "docs_per_s"),
                        med(rep_find(&R, "open", delays[di], ns[ni], MODES[mi], lag_rate, 0), "lag_ms_p99"),
                        med(rep_find(&R, "partition", delays[di], ns[ni], MODES[mi], 0, 0), "converge_ms"),
                        med(gc, "rawc_share"));
            }
            fclose(d);
        }
    for (size_t i = 0; i < R.n; i++)
        for (int r = 0; r < R.g[i].nruns; r++)
            cJSON_Delete(R.g[i].runs[r]);
    free(R.g);
    if (o->check) {
        if (missing) {
            fprintf(stderr, "bench_tradeoff report --check: %d cell(s) of the "
                            "table were not produced\n", missing);
            return 1;
        }
        fprintf(stderr, "bench_tradeoff report --check: every cell of the table "
                        "was produced\n");
    }
    return 0;
}

/* --------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *cmd = argv[1];
    argv++;
    argc--;
    opts_t o;
    parse_opts(argc, argv, &o);
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(cmd, "closed"))
        return cmd_closed(&o);
    if (!strcmp(cmd, "open"))
        return cmd_open(&o);
    if (!strcmp(cmd, "ingest"))
        return cmd_ingest(&o);
    if (!strcmp(cmd, "partition"))
        return cmd_partition(&o);
    if (!strcmp(cmd, "delay"))
        return cmd_delay(&o);
    if (!strcmp(cmd, "report"))
        return cmd_report(&o);
    usage();
    return 2;
}
