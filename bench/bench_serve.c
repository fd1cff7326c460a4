/* bench_serve: a query node under concurrent closed-loop clients, side by
 * side with raw FAISS in the same process.
 *
 * Served part (--query EP): N client threads, each with its own DEALER
 * socket (its own qry_client: qry_client_t is not thread-safe) and one
 * request in flight, send vector queries (bench_vector(seed + 7, random i),
 * not the ingested vectors) for a 1 s warm-up plus --seconds, and record the
 * latency of every answer (CLOCK_MONOTONIC), errors by code, and the
 * staleness the node states in each answer (NodeState lag_ms, version).
 *
 * Write load (--leader EP --write-rate R): an open-loop writer sends R async
 * single-doc upserts per second to the leader at scheduled times (latency is
 * counted from the scheduled time, so a slow leader cannot hide it);
 * --all-probe adds one `all`-mode upsert every 100 ms (closed loop). A
 * status poller asks the leader every 50 ms and records each replica's lag
 * (the leader's view) and connected flag.
 *
 * Raw part (--raw N): builds IDMap2,Flat (inner product) of bench_vector(
 * seed, i, dim), labels i + 1 -- what a node holds after ingesting
 * bench_gen's data set -- with the node's settings (idx_vec_setup(1)), then
 * T threads search batches of --raw-batch queries for --seconds, and one
 * thread searches single queries. Raw runs after the served part, never at
 * the same time (it would take the node's CPU).
 *
 * Last line: RESULT key=value ... (machine-readable). */
#include "bench_common.h"
#include "idx_vec.h"
#include "kb_err.h"
#include "kb_util.h"
#include "qry_client.h"

#include <getopt.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

/* The QueryRequest search parameters and filters arrived with a later
 * schema; build without them against an older one. */
#if defined(KBSYNC__FILTER__INIT)
#define BS_HAVE_SEARCH_PARAMS 1
#else
#define BS_HAVE_SEARCH_PARAMS 0
#endif

#define BS_MAX_FILTERS 16
#define BS_MAX_CODES 32
#define BS_MAX_REPLICAS 16

/* ------------------------------------------------------------------------ */
/* small helpers                                                            */

typedef struct dvec {
    double *v;
    size_t n, cap;
} dvec_t;

static void dvec_push(dvec_t *d, double x)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 1024;
        double *v = realloc(d->v, cap * sizeof *v);
        if (!v) {
            fprintf(stderr, "bench_serve: out of memory\n");
            exit(1);
        }
        d->v = v;
        d->cap = cap;
    }
    d->v[d->n++] = x;
}

static void dvec_append(dvec_t *d, const dvec_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        dvec_push(d, s->v[i]);
}

static void dvec_free(dvec_t *d)
{
    free(d->v);
    d->v = NULL;
    d->n = d->cap = 0;
}

typedef struct codes {
    int code[BS_MAX_CODES];
    uint64_t count[BS_MAX_CODES];
    int n;
} codes_t;

static void codes_add(codes_t *c, int code, uint64_t count)
{
    for (int i = 0; i < c->n; i++)
        if (c->code[i] == code) {
            c->count[i] += count;
            return;
        }
    if (c->n < BS_MAX_CODES) {
        c->code[c->n] = code;
        c->count[c->n++] = count;
    }
}

static void codes_merge(codes_t *to, const codes_t *from)
{
    for (int i = 0; i < from->n; i++)
        codes_add(to, from->code[i], from->count[i]);
}

static uint64_t codes_total(const codes_t *c)
{
    uint64_t t = 0;
    for (int i = 0; i < c->n; i++)
        t += c->count[i];
    return t;
}

/* "KB_ETIMEOUT:3,KB_ESTALE:1" or "none" */
static void codes_str(const codes_t *c, char *out, size_t len)
{
    size_t n = 0;
    out[0] = 0;
    if (c->n == 0) {
        snprintf(out, len, "none");
        return;
    }
    for (int i = 0; i < c->n && n < len; i++)
        n += (size_t)snprintf(out + n, len - n, "%s%s:%llu", i ? "," : "",
                              kb_errname(c->code[i]),
                              (unsigned long long)c->count[i]);
}

static void sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000u), (long)(us % 1000000u) * 1000};
    nanosleep(&ts, NULL);
}

/* Sleeps until the monotonic time t (µs) or until *stop is set, in steps of
 * at most 20 ms. */
static void sleep_until(uint64_t t, atomic_int *stop)
{
    for (;;) {
        uint64_t now = kb_mono_us();
        if (now >= t || (stop && atomic_load(stop)))
            return;
        uint64_t gap = t - now;
        sleep_us(gap > 20000 ? 20000 : gap);
    }
}

/* ------------------------------------------------------------------------ */
/* options                                                                  */

typedef struct opts {
    const char *query_ep, *leader_ep;
    int clients, seconds, k, dim;
    long n;
    uint64_t seed;
    int timeout_ms;
    uint32_t ef_search, nprobe;
    int nfilters;
    char *fkey[BS_MAX_FILTERS], *fval[BS_MAX_FILTERS];
    double write_rate;
    int all_probe;
    const char *id_prefix;
    long raw_n;
    int raw_threads, raw_batch, raw_single_seconds;
    const char *label;
} opts_t;

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: bench_serve [--query EP --clients N] [--leader EP "
        "[--write-rate R] [--all-probe]]\n"
        "                   [--raw N [--raw-threads T] [--raw-batch B]]\n"
        "                   [options]\n"
        "served (closed-loop clients against a query node):\n"
        "  --query EP          the query node's client endpoint\n"
        "  --clients N         closed-loop client threads (default 1)\n"
        "  --n N               documents the node holds; queries are "
        "bench_vector(seed+7, random i < N) (default 100000)\n"
        "  -k K                neighbours per query (default 10)\n"
        "  --ef-search E       QueryRequest.ef_search (0 = node default)\n"
        "  --nprobe P          QueryRequest.nprobe (0 = node default)\n"
        "  --filter KEY=VALUE  QueryRequest.filters (repeatable, at most 16)\n"
        "  --timeout-ms MS     per-request timeout (default 30000)\n"
        "write load (to the leader, during the served run or alone):\n"
        "  --leader EP         the leader's client endpoint; also polls its "
        "status every 50 ms\n"
        "  --write-rate R      open-loop async single-doc upserts per second\n"
        "  --all-probe         one `all`-mode upsert every 100 ms\n"
        "  --id-prefix P       ids of written docs: P-<n>, P-all-<n> "
        "(default w)\n"
        "raw FAISS in this process (after the served run):\n"
        "  --raw N             build IDMap2,Flat of bench_vector(seed, i), "
        "i < N\n"
        "  --raw-threads T     searching threads (default: cores)\n"
        "  --raw-batch B       queries per search call (default 16)\n"
        "  --raw-single-seconds S  seconds of 1-thread single-query search "
        "(default --seconds; 0 = skip)\n"
        "common:\n"
        "  --seconds S         measured seconds after a 1 s warm-up "
        "(default 10)\n"
        "  --dim D             dimension (default 384)\n"
        "  --seed S            data set seed, as given to bench_gen "
        "(default 1)\n"
        "  --label TEXT        label echoed in the RESULT line\n");
}

static int parse_opts(int argc, char **argv, opts_t *o)
{
    enum {
        O_QUERY = 256, O_CLIENTS, O_SECONDS, O_DIM, O_N, O_EF, O_NPROBE,
        O_FILTER, O_LEADER, O_RATE, O_ALLPROBE, O_RAW, O_RAWT, O_RAWB,
        O_RAWS, O_SEED, O_TIMEOUT, O_PREFIX, O_LABEL, O_HELP
    };
    static const struct option lo[] = {
        {"query", required_argument, 0, O_QUERY},
        {"clients", required_argument, 0, O_CLIENTS},
        {"seconds", required_argument, 0, O_SECONDS},
        {"dim", required_argument, 0, O_DIM},
        {"n", required_argument, 0, O_N},
        {"ef-search", required_argument, 0, O_EF},
        {"nprobe", required_argument, 0, O_NPROBE},
        {"filter", required_argument, 0, O_FILTER},
        {"leader", required_argument, 0, O_LEADER},
        {"write-rate", required_argument, 0, O_RATE},
        {"all-probe", no_argument, 0, O_ALLPROBE},
        {"raw", required_argument, 0, O_RAW},
        {"raw-threads", required_argument, 0, O_RAWT},
        {"raw-batch", required_argument, 0, O_RAWB},
        {"raw-single-seconds", required_argument, 0, O_RAWS},
        {"seed", required_argument, 0, O_SEED},
        {"timeout-ms", required_argument, 0, O_TIMEOUT},
        {"id-prefix", required_argument, 0, O_PREFIX},
        {"label", required_argument, 0, O_LABEL},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0}};
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    *o = (opts_t){.clients = 1, .seconds = 10, .k = 10, .dim = 384,
                  .n = 100000, .seed = 1, .timeout_ms = 30000,
                  .id_prefix = "w", .raw_threads = cores > 0 ? (int)cores : 1,
                  .raw_batch = 16, .raw_single_seconds = -1, .label = ""};
    int c;
    char *end;
#define NUM(dst, lo_, hi_)                                                     \
    do {                                                                       \
        long long x_ = strtoll(optarg, &end, 10);                              \
        if (*optarg == 0 || *end || x_ < (lo_) || x_ > (hi_)) {                \
            fprintf(stderr, "bench_serve: bad value '%s' for --%s\n", optarg,  \
                    lo[li].name);                                              \
            return -1;                                                         \
        }                                                                      \
        dst = x_;                                                              \
    } while (0)
    int li = 0;
    while ((c = getopt_long(argc, argv, "k:h", lo, &li)) != -1) {
        switch (c) {
        case 'k':
            li = -1;
            {
                long long x = strtoll(optarg, &end, 10);
                if (*optarg == 0 || *end || x < 1 || x > 1000) {
                    fprintf(stderr, "bench_serve: bad value '%s' for -k\n",
                            optarg);
                    return -1;
                }
                o->k = (int)x;
            }
            break;
        case O_QUERY: o->query_ep = optarg; break;
        case O_CLIENTS: NUM(o->clients, 1, 4096); break;
        case O_SECONDS: NUM(o->seconds, 1, 86400); break;
        case O_DIM: NUM(o->dim, 1, 4096); break;
        case O_N: NUM(o->n, 1, 1000000000); break;
        case O_EF: NUM(o->ef_search, 0, 1000000); break;
        case O_NPROBE: NUM(o->nprobe, 0, 1000000); break;
        case O_FILTER: {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || o->nfilters == BS_MAX_FILTERS) {
                fprintf(stderr,
                        "bench_serve: --filter wants KEY=VALUE (at most %d)\n",
                        BS_MAX_FILTERS);
                return -1;
            }
            o->fkey[o->nfilters] = strndup(optarg, (size_t)(eq - optarg));
            o->fval[o->nfilters++] = strdup(eq + 1);
            break;
        }
        case O_LEADER: o->leader_ep = optarg; break;
        case O_RATE:
            o->write_rate = strtod(optarg, &end);
            if (*optarg == 0 || *end || o->write_rate < 0 ||
                o->write_rate > 1e6) {
                fprintf(stderr, "bench_serve: bad --write-rate '%s'\n", optarg);
                return -1;
            }
            break;
        case O_ALLPROBE: o->all_probe = 1; break;
        case O_RAW: NUM(o->raw_n, 1, 1000000000); break;
        case O_RAWT: NUM(o->raw_threads, 1, 1024); break;
        case O_RAWB: NUM(o->raw_batch, 1, 4096); break;
        case O_RAWS: NUM(o->raw_single_seconds, 0, 86400); break;
        case O_SEED: NUM(o->seed, 0, (long long)(~0ull >> 1)); break;
        case O_TIMEOUT: NUM(o->timeout_ms, 1, 3600000); break;
        case O_PREFIX: o->id_prefix = optarg; break;
        case O_LABEL: o->label = optarg; break;
        case 'h':
        case O_HELP: usage(stdout); exit(0);
        default: return -1;
        }
    }
#undef NUM
    if (optind < argc) {
        fprintf(stderr, "bench_serve: unexpected argument '%s'\n",
                argv[optind]);
        return -1;
    }
    if (!o->query_ep && !o->leader_ep && !o->raw_n) {
        fprintf(stderr, "bench_serve: nothing to do: give --query, --leader "
                        "or --raw\n");
        return -1;
    }
    if ((o->write_rate > 0 || o->all_probe) && !o->leader_ep) {
        fprintf(stderr,
                "bench_serve: --write-rate / --all-probe need --leader\n");
        return -1;
    }
    if (o->raw_single_seconds < 0)
        o->raw_single_seconds = o->seconds;
#if !BS_HAVE_SEARCH_PARAMS
    if (o->ef_search || o->nprobe || o->nfilters)
        fprintf(stderr, "bench_serve: warning: this build's schema has no "
                        "ef_search/nprobe/filters; they are not sent\n");
#endif
    return 0;
}

/* ------------------------------------------------------------------------ */
/* the shared clock of one served run                                       */

typedef struct run {
    const opts_t *o;
    uint64_t t_start, t_warm, t_end; /* monotonic µs */
    atomic_int stop;
} run_t;

static int in_window(const run_t *R, uint64_t t)
{
    return t >= R->t_warm && t < R->t_end;
}

/* ------------------------------------------------------------------------ */
/* closed-loop query clients                                                */

typedef struct qclient {
    run_t *R;
    int id;
    dvec_t lat_ms;   /* answers in the window */
    dvec_t lag_ms;   /* NodeState.lag_ms of those answers */
    uint64_t vmin, vmax, docs;
    uint64_t ok, sent, hits;
    codes_t errs;
    int opened;
    char err[256];
} qclient_t;

static void *qclient_main(void *arg)
{
    qclient_t *C = arg;
    run_t *R = C->R;
    const opts_t *o = R->o;
    qry_client_t *cl;
    if (qry_client_open(o->query_ep, &cl, C->err, sizeof C->err))
        return NULL;
    C->opened = 1;
    C->vmin = UINT64_MAX;
    float *q = malloc(sizeof(float) * (size_t)o->dim);
    bench_rng_t rng = {0x1234567ull + (uint64_t)C->id * 7777u};
#if BS_HAVE_SEARCH_PARAMS
    Kbsync__Filter fl[BS_MAX_FILTERS];
    Kbsync__Filter *flp[BS_MAX_FILTERS];
    for (int i = 0; i < o->nfilters; i++) {
        kbsync__filter__init(&fl[i]);
        fl[i].key = o->fkey[i];
        fl[i].value = o->fval[i];
        flp[i] = &fl[i];
    }
#endif
    while (!atomic_load(&R->stop) && kb_mono_us() < R->t_end) {
        uint64_t i = bench_next(&rng) % (uint64_t)o->n;
        bench_vector(o->seed + 7, i, o->dim, q);
        Kbsync__QueryRequest qr = KBSYNC__QUERY_REQUEST__INIT;
        qr.k = (uint32_t)o->k;
        qr.vector = q;
        qr.n_vector = (size_t)o->dim;
#if BS_HAVE_SEARCH_PARAMS
        qr.ef_search = o->ef_search;
        qr.nprobe = o->nprobe;
        qr.filters = o->nfilters ? flp : NULL;
        qr.n_filters = (size_t)o->nfilters;
#endif
        Kbsync__Request req = KBSYNC__REQUEST__INIT;
        req.body_case = KBSYNC__REQUEST__BODY_QUERY;
        req.query = &qr;
        Kbsync__Response *r = NULL;
        char err[256];
        uint64_t t0 = kb_mono_us();
        int rc = qry_client_call(cl, &req, o->timeout_ms, &r, err, sizeof err);
        uint64_t t1 = kb_mono_us();
        C->sent++;
        int counted = in_window(R, t1);
        if (rc) {
            if (counted)
                codes_add(&C->errs, rc, 1);
            if (rc != KB_ETIMEOUT) /* e.g. KB_ENET: do not spin */
                sleep_us(10000);
        } else if (r->error) {
            if (counted)
                codes_add(&C->errs, r->error->code, 1);
        } else if (counted) {
            C->ok++;
            dvec_push(&C->lat_ms, (double)(t1 - t0) / 1000.0);
            if (r->query)
                C->hits += r->query->n_hits;
            if (r->query && r->query->state) {
                const Kbsync__NodeState *s = r->query->state;
                dvec_push(&C->lag_ms, (double)s->lag_ms);
                if (s->version < C->vmin)
                    C->vmin = s->version;
                if (s->version > C->vmax)
                    C->vmax = s->version;
                C->docs = s->docs;
            }
        }
        if (r)
            kbsync__response__free_unpacked(r, NULL);
    }
    free(q);
    qry_client_close(&cl);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* open-loop async writer                                                   */

typedef struct writer {
    run_t *R;
    dvec_t lat_ms; /* scheduled send -> ack, writes scheduled in the window */
    uint64_t sent, acked, late, in_window;
    codes_t errs;
    char err[256];
    int ok;
} writer_t;

static Kbsync__Request *make_upsert(Kbsync__Request *req,
                                    Kbsync__UpsertRequest *u, Kbsync__Doc *d,
                                    Kbsync__Doc **dp, char *id, char *text,
                                    float *v, const opts_t *o, uint64_t n,
                                    uint64_t vseed, Kbsync__WriteMode mode)
{
    bench_vector(vseed, n, o->dim, v);
    bench_text(n, text, 300);
    kbsync__doc__init(d);
    d->id = id;
    d->text = text;
    d->embedding = v;
    d->n_embedding = (size_t)o->dim;
    *dp = d;
    kbsync__upsert_request__init(u);
    u->docs = dp;
    u->n_docs = 1;
    u->mode = mode;
    kbsync__request__init(req);
    req->body_case = KBSYNC__REQUEST__BODY_UPSERT;
    req->upsert = u;
    return req;
}

static void *writer_main(void *arg)
{
    writer_t *W = arg;
    run_t *R = W->R;
    const opts_t *o = R->o;
    qry_client_t *cl;
    if (qry_client_open(o->leader_ep, &cl, W->err, sizeof W->err))
        return NULL;
    W->ok = 1;
    /* rid -> scheduled time; request ids of one client are consecutive */
    size_t cap = (size_t)(o->write_rate * (o->seconds + 2)) + 16;
    uint64_t *sched = calloc(cap, sizeof *sched);
    uint64_t rid0 = 0;
    float *v = malloc(sizeof(float) * (size_t)o->dim);
    char id[320], text[400];
    const double period_us = 1e6 / o->write_rate;
    uint64_t t0 = R->t_start;
    uint64_t drain_until = 0;
    for (;;) {
        uint64_t now = kb_mono_us();
        int sending = now < R->t_end && !atomic_load(&R->stop);
        while (sending && W->sent < cap &&
               now >= t0 + (uint64_t)(W->sent * period_us)) {
            uint64_t due = t0 + (uint64_t)(W->sent * period_us);
            if (now > due + 1000)
                W->late++;
            snprintf(id, sizeof id, "%s-%llu", o->id_prefix,
                     (unsigned long long)W->sent);
            Kbsync__Request req;
            Kbsync__UpsertRequest u;
            Kbsync__Doc d, *dp;
            make_upsert(&req, &u, &d, &dp, id, text, v, o, W->sent, o->seed + 11,
                        KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC);
            uint64_t rid;
            char err[256];
            if (qry_client_send(cl, &req, &rid, err, sizeof err)) {
                codes_add(&W->errs, KB_ENET, 1);
                break;
            }
            if (!rid0)
                rid0 = rid;
            sched[rid - rid0] = due;
            W->sent++;
            now = kb_mono_us();
        }
        if (!sending) {
            if (!drain_until)
                drain_until = now + 10000000u; /* 10 s for the last acks */
            if (W->acked >= W->sent || now >= drain_until)
                break;
        }
        uint64_t next = t0 + (uint64_t)(W->sent * period_us);
        int wait_ms = !sending ? 100
                      : next > now ? (int)((next - now) / 1000u)
                                   : 0;
        Kbsync__Response *r = NULL;
        char err[256];
        int rc = qry_client_recv(cl, wait_ms, &r, err, sizeof err);
        if (rc == KB_ETIMEOUT || (rc == 0 && !r)) {
            if (wait_ms == 0 && sending) {
                uint64_t n2 = kb_mono_us();
                uint64_t gap = next > n2 ? next - n2 : 0;
                sleep_us(gap > 200 ? 200 : gap);
            }
            continue;
        }
        if (rc) {
            codes_add(&W->errs, rc, 1);
            continue;
        }
        uint64_t at = kb_mono_us();
        W->acked++;
        uint64_t k = r->request_id - rid0;
        if (r->request_id >= rid0 && k < cap && sched[k]) {
            int win = in_window(R, sched[k]);
            if (win)
                W->in_window++;
            if (r->error) {
                if (win)
                    codes_add(&W->errs, r->error->code, 1);
            } else if (win) {
                dvec_push(&W->lat_ms, (double)(at - sched[k]) / 1000.0);
            }
        }
        kbsync__response__free_unpacked(r, NULL);
    }
    free(v);
    free(sched);
    qry_client_close(&cl);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* `all`-mode probe: one closed-loop upsert every 100 ms                    */

typedef struct probe {
    run_t *R;
    dvec_t lat_ms;
    codes_t errs;
    char err[256];
    int ok;
} probe_t;

static void *probe_main(void *arg)
{
    probe_t *P = arg;
    run_t *R = P->R;
    const opts_t *o = R->o;
    qry_client_t *cl;
    if (qry_client_open(o->leader_ep, &cl, P->err, sizeof P->err))
        return NULL;
    P->ok = 1;
    float *v = malloc(sizeof(float) * (size_t)o->dim);
    char id[320], text[400];
    uint64_t next = R->t_start;
    for (uint64_t n = 0; !atomic_load(&R->stop); n++) {
        sleep_until(next, &R->stop);
        uint64_t t0 = kb_mono_us();
        if (atomic_load(&R->stop) || t0 >= R->t_end)
            break;
        snprintf(id, sizeof id, "%s-all-%llu", o->id_prefix,
                 (unsigned long long)n);
        Kbsync__Request req;
        Kbsync__UpsertRequest u;
        Kbsync__Doc d, *dp;
        make_upsert(&req, &u, &d, &dp, id, text, v, o, n, o->seed + 13,
                    KBSYNC__WRITE_MODE__WRITE_MODE_ALL);
        Kbsync__Response *r = NULL;
        char err[256];
        int rc = qry_client_call(cl, &req, 15000, &r, err, sizeof err);
        uint64_t t1 = kb_mono_us();
        int win = in_window(R, t0);
        if (win) {
            if (rc)
                codes_add(&P->errs, rc, 1);
            else if (r->error)
                codes_add(&P->errs, r->error->code, 1);
            else
                dvec_push(&P->lat_ms, (double)(t1 - t0) / 1000.0);
        }
        if (r)
            kbsync__response__free_unpacked(r, NULL);
        next += 100000;
        if (next < t1) /* a slow ack: next probe right away, no backlog */
            next = t1;
    }
    free(v);
    qry_client_close(&cl);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* leader status poller (every 50 ms)                                       */

typedef struct repl_stat {
    char id[64];
    dvec_t lag_ms;
    uint64_t samples, disconnected; /* whole run, warm-up included */
} repl_stat_t;

typedef struct poller {
    run_t *R;
    repl_stat_t rep[BS_MAX_REPLICAS];
    int nrep;
    uint64_t polls, failures;
    char err[256];
    int ok;
} poller_t;

static void *poller_main(void *arg)
{
    poller_t *S = arg;
    run_t *R = S->R;
    qry_client_t *cl;
    if (qry_client_open(R->o->leader_ep, &cl, S->err, sizeof S->err))
        return NULL;
    S->ok = 1;
    uint64_t next = R->t_start;
    while (!atomic_load(&R->stop) && kb_mono_us() < R->t_end) {
        sleep_until(next, &R->stop);
        next += 50000;
        if (atomic_load(&R->stop))
            break;
        Kbsync__StatusRequest sr = KBSYNC__STATUS_REQUEST__INIT;
        Kbsync__Request req = KBSYNC__REQUEST__INIT;
        req.body_case = KBSYNC__REQUEST__BODY_STATUS;
        req.status = &sr;
        Kbsync__Response *r = NULL;
        char err[256];
        int rc = qry_client_call(cl, &req, 5000, &r, err, sizeof err);
        uint64_t now = kb_mono_us();
        if (rc || r->error || !r->status) {
            S->failures++;
        } else {
            S->polls++;
            for (size_t i = 0; i < r->status->n_replicas; i++) {
                const Kbsync__ReplicaState *rs = r->status->replicas[i];
                int j = 0;
                while (j < S->nrep && strcmp(S->rep[j].id, rs->id))
                    j++;
                if (j == S->nrep) {
                    if (S->nrep == BS_MAX_REPLICAS)
                        continue;
                    snprintf(S->rep[j].id, sizeof S->rep[j].id, "%s", rs->id);
                    S->nrep++;
                }
                repl_stat_t *p = &S->rep[j];
                p->samples++;
                if (!rs->connected)
                    p->disconnected++;
                if (in_window(R, now))
                    dvec_push(&p->lag_ms, (double)rs->lag_ms);
            }
        }
        if (r)
            kbsync__response__free_unpacked(r, NULL);
        if (next < now)
            next = now;
    }
    qry_client_close(&cl);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* RESULT line                                                              */

static char g_result[8192];
static size_t g_rlen;

__attribute__((format(printf, 1, 2))) static void res(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (g_rlen < sizeof g_result)
        g_rlen += (size_t)vsnprintf(g_result + g_rlen, sizeof g_result - g_rlen,
                                    fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* served run                                                               */

static double g_served_qps = -1;

static int served_run(const opts_t *o)
{
    run_t R = {.o = o};
    int nc = o->query_ep ? o->clients : 0;
    qclient_t *C = calloc((size_t)(nc ? nc : 1), sizeof *C);
    pthread_t *ct = calloc((size_t)(nc ? nc : 1), sizeof *ct);
    writer_t W = {.R = &R};
    probe_t P = {.R = &R};
    poller_t S = {.R = &R};
    pthread_t wt, pt, st;
    int has_w = o->leader_ep && o->write_rate > 0;
    int has_p = o->leader_ep && o->all_probe;
    int has_s = o->leader_ep != NULL;

    R.t_start = kb_mono_us() + 20000;
    R.t_warm = R.t_start + 1000000u;
    R.t_end = R.t_warm + (uint64_t)o->seconds * 1000000u;
    for (int i = 0; i < nc; i++) {
        C[i].R = &R;
        C[i].id = i;
        pthread_create(&ct[i], NULL, qclient_main, &C[i]);
    }
    if (has_w)
        pthread_create(&wt, NULL, writer_main, &W);
    if (has_p)
        pthread_create(&pt, NULL, probe_main, &P);
    if (has_s)
        pthread_create(&st, NULL, poller_main, &S);
    sleep_until(R.t_end, NULL);
    atomic_store(&R.stop, 1);
    for (int i = 0; i < nc; i++)
        pthread_join(ct[i], NULL);
    if (has_w)
        pthread_join(wt, NULL);
    if (has_p)
        pthread_join(pt, NULL);
    if (has_s)
        pthread_join(st, NULL);
    int rc = 0;

    printf("bench_serve%s%s: %d s measured after 1 s warm-up, k=%d, dim %d, "
           "data seed %llu (synthetic clustered vectors)\n",
           *o->label ? " " : "", o->label, o->seconds, o->k, o->dim,
           (unsigned long long)o->seed);
    if (nc) {
        dvec_t lat = {0}, lag = {0};
        codes_t errs = {0};
        uint64_t ok = 0, hits = 0, vmin = UINT64_MAX, vmax = 0, docs = 0;
        int opened = 0;
        for (int i = 0; i < nc; i++) {
            if (!C[i].opened) {
                fprintf(stderr, "client %d: %s\n", i, C[i].err);
                continue;
            }
            opened++;
            dvec_append(&lat, &C[i].lat_ms);
            dvec_append(&lag, &C[i].lag_ms);
            codes_merge(&errs, &C[i].errs);
            ok += C[i].ok;
            hits += C[i].hits;
            if (C[i].vmin < vmin)
                vmin = C[i].vmin;
            if (C[i].vmax > vmax)
                vmax = C[i].vmax;
            if (C[i].docs > docs)
                docs = C[i].docs;
        }
        if (!opened)
            rc = 1;
        if (vmin == UINT64_MAX)
            vmin = 0;
        double qps = (double)ok / o->seconds;
        g_served_qps = qps;
        double p50 = bench_pct(lat.v, lat.n, 50), p90 = bench_pct(lat.v, lat.n, 90),
               p99 = bench_pct(lat.v, lat.n, 99),
               mx = bench_pct(lat.v, lat.n, 100);
        double l50 = bench_pct(lag.v, lag.n, 50), l99 = bench_pct(lag.v, lag.n, 99),
               lmx = bench_pct(lag.v, lag.n, 100);
        char es[512];
        codes_str(&errs, es, sizeof es);
        printf("  served  %s: %d closed-loop clients", o->query_ep, nc);
#if BS_HAVE_SEARCH_PARAMS
        if (o->ef_search)
            printf(", ef_search %u", o->ef_search);
        if (o->nprobe)
            printf(", nprobe %u", o->nprobe);
        for (int i = 0; i < o->nfilters; i++)
            printf(", filter %s=%s", o->fkey[i], o->fval[i]);
#endif
        printf("\n");
        printf("    %.1f QPS (%llu answers); latency p50 %.2f ms  p90 %.2f ms  "
               "p99 %.2f ms  max %.2f ms\n",
               qps, (unsigned long long)ok, p50, p90, p99, mx);
        double hmean = ok ? (double)hits / (double)ok : 0;
        printf("    errors: %s; hits per answer: %.2f\n", es, hmean);
        printf("    node's own lag_ms in answers: p50 %.0f  p99 %.0f  max %.0f; "
               "version %llu..%llu; docs %llu (expected >= %ld)\n",
               l50, l99, lmx, (unsigned long long)vmin,
               (unsigned long long)vmax, (unsigned long long)docs, o->n);
        res(" clients=%d qps=%.1f answers=%llu p50_ms=%.2f p90_ms=%.2f "
            "p99_ms=%.2f max_ms=%.2f errors=%llu error_codes=%s "
            "node_lag_p50_ms=%.0f node_lag_p99_ms=%.0f node_lag_max_ms=%.0f "
            "version_min=%llu version_max=%llu docs=%llu hits_mean=%.2f",
            nc, qps, (unsigned long long)ok, p50, p90, p99, mx,
            (unsigned long long)codes_total(&errs), es, l50, l99, lmx,
            (unsigned long long)vmin, (unsigned long long)vmax,
            (unsigned long long)docs, hmean);
#if BS_HAVE_SEARCH_PARAMS
        res(" ef_search=%u nprobe=%u filters=%d", o->ef_search, o->nprobe,
            o->nfilters);
#endif
        dvec_free(&lat);
        dvec_free(&lag);
        for (int i = 0; i < nc; i++) {
            dvec_free(&C[i].lat_ms);
            dvec_free(&C[i].lag_ms);
        }
    }
    if (has_w) {
        if (!W.ok) {
            fprintf(stderr, "writer: %s\n", W.err);
            rc = 1;
        }
        char es[512];
        codes_str(&W.errs, es, sizeof es);
        double p50 = bench_pct(W.lat_ms.v, W.lat_ms.n, 50),
               p99 = bench_pct(W.lat_ms.v, W.lat_ms.n, 99),
               mx = bench_pct(W.lat_ms.v, W.lat_ms.n, 100);
        printf("  writes  %s: open loop %.0f async single-doc upserts/s; %llu "
               "sent, %llu acked, %llu sent >1 ms late\n",
               o->leader_ep, o->write_rate, (unsigned long long)W.sent,
               (unsigned long long)W.acked, (unsigned long long)W.late);
        printf("    async write latency (scheduled -> ack), %zu in window: p50 "
               "%.2f ms  p99 %.2f ms  max %.2f ms; errors: %s\n",
               W.lat_ms.n, p50, p99, mx, es);
        res(" write_rate=%.0f writes_sent=%llu writes_acked=%llu "
            "writes_late=%llu write_p50_ms=%.2f write_p99_ms=%.2f "
            "write_max_ms=%.2f write_errors=%llu",
            o->write_rate, (unsigned long long)W.sent,
            (unsigned long long)W.acked, (unsigned long long)W.late, p50, p99,
            mx, (unsigned long long)codes_total(&W.errs));
        dvec_free(&W.lat_ms);
    }
    if (has_p) {
        if (!P.ok) {
            fprintf(stderr, "all-probe: %s\n", P.err);
            rc = 1;
        }
        char es[512];
        codes_str(&P.errs, es, sizeof es);
        double p50 = bench_pct(P.lat_ms.v, P.lat_ms.n, 50),
               p99 = bench_pct(P.lat_ms.v, P.lat_ms.n, 99),
               mx = bench_pct(P.lat_ms.v, P.lat_ms.n, 100);
        printf("  all-probe: %zu `all` upserts (1 per 100 ms): p50 %.2f ms  "
               "p99 %.2f ms  max %.2f ms; errors: %s\n",
               P.lat_ms.n, p50, p99, mx, es);
        res(" all_n=%zu all_p50_ms=%.2f all_p99_ms=%.2f all_max_ms=%.2f "
            "all_errors=%llu",
            P.lat_ms.n, p50, p99, mx, (unsigned long long)codes_total(&P.errs));
        dvec_free(&P.lat_ms);
    }
    if (has_s) {
        if (!S.ok) {
            fprintf(stderr, "status poller: %s\n", S.err);
            rc = 1;
        }
        printf("  leader's view of its replicas (status every 50 ms, %llu "
               "polls, %llu failed):\n",
               (unsigned long long)S.polls, (unsigned long long)S.failures);
        int any_disc = 0;
        /* sort by id for stable output */
        for (int a = 0; a < S.nrep; a++)
            for (int b = a + 1; b < S.nrep; b++)
                if (strcmp(S.rep[a].id, S.rep[b].id) > 0) {
                    repl_stat_t t = S.rep[a];
                    S.rep[a] = S.rep[b];
                    S.rep[b] = t;
                }
        for (int j = 0; j < S.nrep; j++) {
            repl_stat_t *p = &S.rep[j];
            double l50 = bench_pct(p->lag_ms.v, p->lag_ms.n, 50),
                   l99 = bench_pct(p->lag_ms.v, p->lag_ms.n, 99),
                   lmx = bench_pct(p->lag_ms.v, p->lag_ms.n, 100);
            if (p->disconnected)
                any_disc = 1;
            printf("    %-8s lag_ms p50 %.0f  p99 %.0f  max %.0f; marked "
                   "disconnected in %llu of %llu polls\n",
                   p->id, l50, l99, lmx, (unsigned long long)p->disconnected,
                   (unsigned long long)p->samples);
            res(" repl_%s_lag_p50_ms=%.0f repl_%s_lag_p99_ms=%.0f "
                "repl_%s_lag_max_ms=%.0f repl_%s_disconnected=%llu",
                p->id, l50, p->id, l99, p->id, lmx, p->id,
                (unsigned long long)p->disconnected);
            dvec_free(&p->lag_ms);
        }
        printf("    any replica ever marked disconnected: %s\n",
               any_disc ? "YES" : "no");
        res(" replicas=%d any_disconnected=%d", S.nrep, any_disc);
    }
    free(C);
    free(ct);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* raw FAISS                                                                */

typedef struct rawrun {
    const idx_vec_t *v;
    const float *q; /* pool of nq queries */
    int nq, dim, k, batch;
    pthread_barrier_t *go;
    atomic_int *stop;
    uint64_t t_stop_hint;
    /* out */
    uint64_t queries, calls;
    dvec_t call_ms;
    int failed;
    char err[256];
} rawrun_t;

static void *raw_main(void *arg)
{
    rawrun_t *T = arg;
    /* OpenMP's thread count is a per-thread setting: give this thread the
     * node's settings too (the rest of idx_vec_setup is process-wide). */
    idx_vec_setup(1);
    float *sc = malloc(sizeof(float) * (size_t)T->batch * (size_t)T->k);
    int64_t *lb = malloc(sizeof(int64_t) * (size_t)T->batch * (size_t)T->k);
    int off = 0;
    for (int w = 0; w < 2; w++) /* warm-up, not counted */
        idx_vec_search(T->v, (size_t)T->batch, T->q, (uint32_t)T->k, sc, lb,
                       T->err, sizeof T->err);
    pthread_barrier_wait(T->go);
    while (!atomic_load(T->stop)) {
        if (off + T->batch > T->nq)
            off = 0;
        uint64_t a = kb_mono_us();
        if (idx_vec_search(T->v, (size_t)T->batch, T->q + (size_t)off * T->dim,
                           (uint32_t)T->k, sc, lb, T->err, sizeof T->err)) {
            T->failed = 1;
            break;
        }
        uint64_t b = kb_mono_us();
        if (atomic_load(T->stop))
            break; /* finished after the end: not counted */
        T->queries += (uint64_t)T->batch;
        T->calls++;
        dvec_push(&T->call_ms, (double)(b - a) / 1000.0);
        off += T->batch;
    }
    free(sc);
    free(lb);
    return NULL;
}

/* Runs `threads` threads searching `batch` queries per call for `seconds`;
 * returns QPS and the per-call median in *call_p50. */
static double raw_measure(const idx_vec_t *v, const float *q, int nq,
                          const opts_t *o, int threads, int batch, int seconds,
                          double *call_p50, double *call_p99)
{
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)threads + 1);
    atomic_int stop = 0;
    rawrun_t *T = calloc((size_t)threads, sizeof *T);
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    for (int i = 0; i < threads; i++) {
        T[i] = (rawrun_t){.v = v, .q = q, .nq = nq, .dim = o->dim, .k = o->k,
                          .batch = batch, .go = &go, .stop = &stop};
        pthread_create(&th[i], NULL, raw_main, &T[i]);
    }
    pthread_barrier_wait(&go);
    uint64_t t0 = kb_mono_us();
    sleep_until(t0 + (uint64_t)seconds * 1000000u, NULL);
    atomic_store(&stop, 1);
    uint64_t t1 = kb_mono_us();
    uint64_t total = 0;
    dvec_t all = {0};
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        if (T[i].failed)
            fprintf(stderr, "raw search failed: %s\n", T[i].err);
        total += T[i].queries;
        dvec_append(&all, &T[i].call_ms);
        dvec_free(&T[i].call_ms);
    }
    *call_p50 = bench_pct(all.v, all.n, 50);
    *call_p99 = bench_pct(all.v, all.n, 99);
    dvec_free(&all);
    pthread_barrier_destroy(&go);
    free(T);
    free(th);
    return (double)total / ((double)(t1 - t0) / 1e6);
}

static int raw_run(const opts_t *o)
{
    char err[512];
    idx_vec_setup(1);
    idx_vec_t *v;
    if (idx_vec_new((uint32_t)o->dim, "IDMap2,Flat", 1, &v, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    uint64_t tb = kb_mono_us();
    enum { CH = 10000 };
    float *x = malloc(sizeof(float) * (size_t)o->dim * CH);
    int64_t *lab = malloc(sizeof(int64_t) * CH);
    for (long i = 0; i < o->raw_n;) {
        long m = 0;
        for (; m < CH && i < o->raw_n; m++, i++) {
            bench_vector(o->seed, (uint64_t)i, o->dim, x + m * o->dim);
            lab[m] = i + 1; /* a node's label = LSN; bench_gen's doc i = LSN i+1 */
        }
        if (idx_vec_add(v, (size_t)m, x, lab, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
    }
    free(x);
    free(lab);
    double build_s = (double)(kb_mono_us() - tb) / 1e6;
    /* query pool: as the served clients ask, bench_vector(seed+7, random i) */
    int nq = 4096;
    nq -= nq % o->raw_batch;
    if (nq < o->raw_batch)
        nq = o->raw_batch;
    float *q = malloc(sizeof(float) * (size_t)o->dim * (size_t)nq);
    bench_rng_t rng = {0xabcdefull};
    for (int i = 0; i < nq; i++)
        bench_vector(o->seed + 7, bench_next(&rng) % (uint64_t)o->raw_n, o->dim,
                     q + (size_t)i * o->dim);

    double c50, c99;
    double qps = raw_measure(v, q, nq, o, o->raw_threads, o->raw_batch,
                             o->seconds, &c50, &c99);
    printf("  raw FAISS in-process: IDMap2,Flat ip, %ld x %d (built in %.1f "
           "s), idx_vec_setup(1) per thread (1 OpenMP + 1 OpenBLAS thread, "
           "BLAS threshold 1)\n",
           o->raw_n, o->dim, build_s);
    printf("    %d thread(s) x batch %d: %.0f QPS; per call p50 %.2f ms  p99 "
           "%.2f ms (%.3f ms/query)\n",
           o->raw_threads, o->raw_batch, qps, c50, c99, c50 / o->raw_batch);
    res(" raw_n=%ld raw_threads=%d raw_batch=%d raw_qps=%.0f "
        "raw_call_p50_ms=%.2f raw_call_p99_ms=%.2f",
        o->raw_n, o->raw_threads, o->raw_batch, qps, c50, c99);
    if (o->raw_single_seconds > 0) {
        double s50, s99;
        double sq = raw_measure(v, q, nq, o, 1, 1, o->raw_single_seconds, &s50,
                                &s99);
        printf("    1 thread x single query: %.0f QPS; p50 %.2f ms  p99 %.2f "
               "ms\n",
               sq, s50, s99);
        res(" raw_single_qps=%.0f raw_single_p50_ms=%.2f "
            "raw_single_p99_ms=%.2f",
            sq, s50, s99);
    }
    if (g_served_qps >= 0 && qps > 0) {
        printf("  served QPS / raw QPS (%d x batch %d): %.3f\n",
               o->raw_threads, o->raw_batch, g_served_qps / qps);
        res(" served_over_raw=%.4f", g_served_qps / qps);
    }
    free(q);
    idx_vec_free(&v);
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse_opts(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    res("RESULT label=%s seconds=%d k=%d dim=%d n=%ld", *o.label ? o.label : "-",
        o.seconds, o.k, o.dim, o.n);
    int rc = 0;
    if (o.query_ep || o.leader_ep)
        rc |= served_run(&o);
    if (o.raw_n)
        rc |= raw_run(&o);
    printf("%s\n", g_result);
    for (int i = 0; i < o.nfilters; i++) {
        free(o.fkey[i]);
        free(o.fval[i]);
    }
    return rc;
}
