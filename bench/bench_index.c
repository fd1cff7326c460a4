/* bench_index: the approximate indexes (HNSW, IVF) and metadata filters of a
 * running leader + replicas, side by side with raw FAISS (idx_vec) built in
 * this process from the same vectors. bench/run_index.sh starts the cluster
 * and runs one section per mode:
 *
 *   bench_index hnsw   ingest N docs through the leader (upserts of --batch
 *                      docs, --window in flight, or --ingest-cmd), time until
 *                      both replicas applied them / hold N vectors / are
 *                      idle; recall@k of the served answers (ef_search --ef)
 *                      against exact search (in-process IDMap2,Flat); served
 *                      single-query latency vs raw FAISS HNSW in-process;
 *                      replica memory vs the raw index; then replace
 *                      --replace of the documents (new vectors, text "v2 ..")
 *                      and delete --delete of them, with a checker thread
 *                      querying r1 all along: recall over the live set vs a
 *                      fresh in-process HNSW of the live set, no deleted or
 *                      old-version document ever returned; the same after
 *                      `kbsync rebuild --to r1`.
 *   bench_index ivf    ingest; time until index_trained (the replica trains
 *                      in the background) and the replica log's "trained
 *                      index ... in X s"; recall@k and latency at the default
 *                      nprobe (0) and at --nprobes; again after
 *                      `kbsync rebuild` (retrains on all N); raw FAISS IVF
 *                      in-process (training time, recall, latency).
 *   bench_index filter ingest with metadata {"bucket": 0..99 (1%), "half":
 *                      "a"|"b" (50%)}; latency of unfiltered / bucket / half
 *                      queries (1 client), every answer checked (exactly k
 *                      hits, all matching, recall vs exact filtered search);
 *                      raw FAISS flat with the same predicates in-process.
 *
 * Data: bench_vector(seed, i), i < N (bench_common.h: synthetic clustered
 * 384-d vectors, not a model's), ids doc-<i>, text bench_text(i), metadata
 * {"source": "bench", "n": i} -- what bench_gen writes. Queries: "other"
 * = bench_vector(qseed, j) (another seed, as the issue asks: its cluster
 * directions differ from the data's) and "same" = bench_vector(seed, N +
 * 10^6 + j) (held-out vectors of the data's own clusters).
 *
 * Idle: status says version >= the last LSN, vectors == the live count,
 * unmerged_vectors 0 and rebuilding false (and index_trained when asked):
 * reported as "status idle". "CPU quiet" adds, when the node's pid is given,
 * that its threads other than the query readers (kb-reader-*) used < 5% of
 * a core for >= 1 s (/proc/PID/task): the merger, tombstoning and any
 * rebuild have finished. The benchmark waits for both before measuring.
 *
 * Every pass must be run against a kbsync built from the same tree as this
 * program (defaults such as the IVF nprobe live in the shared library).
 *
 * Last line: RESULT key=value ... (machine-readable). */
#include "bench_common.h"
#include "idx_vec.h"
#include "kb_err.h"
#include "kb_util.h"
#include "qry_client.h"

#include <dirent.h>
#include <float.h>
#include <getopt.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#define BI_MAXK 32
#define BI_MAXNODES 4 /* leader + up to 3 replicas */
#define BI_MAXNPROBE 16

/* ------------------------------------------------------------------------ */
/* small helpers                                                            */

typedef struct dvec {
    double *v;
    size_t n, cap;
} dvec_t;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_index: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static void *xcalloc(size_t n, size_t s)
{
    void *p = calloc(n ? n : 1, s ? s : 1);
    if (!p) {
        fprintf(stderr, "bench_index: out of memory\n");
        exit(1);
    }
    return p;
}

static void dvec_push(dvec_t *d, double x)
{
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 1024;
        d->v = realloc(d->v, d->cap * sizeof *d->v);
        if (!d->v) {
            fprintf(stderr, "bench_index: out of memory\n");
            exit(1);
        }
    }
    d->v[d->n++] = x;
}

static void dvec_free(dvec_t *d)
{
    free(d->v);
    memset(d, 0, sizeof *d);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Metadata of doc i (filter mode): hashed, so not tied to the clusters
 * (cluster = i % 64). */
static int doc_bucket(long i) { return (int)(mix64((uint64_t)i ^ 0xb0c0ull) % 100u); }
static int doc_half(long i) { return (int)((mix64((uint64_t)i ^ 0x4a1full) >> 7) & 1u); }

static char g_result[16384];
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
/* /proc                                                                    */

typedef struct pmem {
    long rss_kb, anon_kb, file_kb, hwm_kb;
} pmem_t;

static int proc_mem(int pid, pmem_t *m)
{
    char path[64], line[256];
    memset(m, 0, sizeof *m);
    if (pid > 0)
        snprintf(path, sizeof path, "/proc/%d/status", pid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        long v;
        if (sscanf(line, "VmRSS: %ld", &v) == 1)
            m->rss_kb = v;
        else if (sscanf(line, "RssAnon: %ld", &v) == 1)
            m->anon_kb = v;
        else if (sscanf(line, "RssFile: %ld", &v) == 1)
            m->file_kb = v;
        else if (sscanf(line, "VmHWM: %ld", &v) == 1)
            m->hwm_kb = v;
    }
    fclose(f);
    return 0;
}

/* CPU clock ticks used by the threads of pid other than the query readers
 * (comm "kb-reader-*"); -1 when the process is gone. */
static long proc_bg_ticks(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    long total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p2[300], buf[1024];
        snprintf(p2, sizeof p2, "/proc/%d/task/%s/stat", pid, e->d_name);
        FILE *f = fopen(p2, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *lp = strchr(buf, '('), *rp = strrchr(buf, ')');
        if (!lp || !rp || rp[1] == 0)
            continue;
        if (!strncmp(lp + 1, "kb-reader", 9))
            continue;
        char *save = NULL, *tok = strtok_r(rp + 2, " ", &save);
        unsigned long ut = 0, st = 0;
        for (int field = 3; tok; field++, tok = strtok_r(NULL, " ", &save)) {
            if (field == 14)
                ut = strtoul(tok, NULL, 10);
            if (field == 15) {
                st = strtoul(tok, NULL, 10);
                break;
            }
        }
        total += (long)(ut + st);
    }
    closedir(d);
    return total;
}

/* ------------------------------------------------------------------------ */
/* options                                                                  */

typedef struct opts {
    const char *mode;
    const char *leader_ep;
    int leader_pid;
    const char *rep_ep[BI_MAXNODES];
    int rep_pid[BI_MAXNODES];
    const char *rep_log[BI_MAXNODES];
    int nrep, npid, nlog;
    long n;
    int dim, k, nq;
    uint64_t seed, qseed;
    uint32_t ef;
    const char *index;  /* raw in-process index (hnsw / ivf modes) */
    const char *metric; /* ip | l2 | cosine: must match the leader's */
    int metric_id;
    uint32_t nprobe[BI_MAXNPROBE];
    int nnprobe;
    uint32_t efs[BI_MAXNPROBE];
    int nefs;
    const char *ingest_cmd;
    const char *kbsync; /* path of kbsync, for `kbsync rebuild` */
    int batch, window;
    double replace_frac, delete_frac;
    int wait_s;
    int check_qps;
    int no_rebuild, no_fresh, ingest_only, train_wait_s;
    const char *label;
} opts_t;

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: bench_index hnsw|ivf|filter --leader EP --replica EP "
        "[--replica EP] [options]\n"
        "cluster:\n"
        "  --leader EP          the leader's client endpoint\n"
        "  --leader-pid PID     its pid (memory, idle detection)\n"
        "  --replica EP         a replica's client endpoint (repeat; first = "
        "r1)\n"
        "  --pid PID            pid of the replica of the same rank (repeat)\n"
        "  --log FILE           stderr log of the replica of the same rank "
        "(repeat; ivf: \"trained index\" lines)\n"
        "  --kbsync BIN         run `BIN rebuild --to EP` (default: send a "
        "RebuildRequest)\n"
        "data and queries:\n"
        "  --n N                documents (default 100000)\n"
        "  --dim D              (default 384)\n"
        "  --seed S             data seed, as bench_gen's (default 1)\n"
        "  --qseed S            seed of the \"other\" queries (default "
        "seed+99)\n"
        "  --nq Q               queries per round (default 1000)\n"
        "  -k K                 neighbours (1..32, default 10)\n"
        "  --metric M           ip|l2|cosine, as the leader's (default ip)\n"
        "ingest:\n"
        "  --batch B            docs per upsert (default 1000)\n"
        "  --window W           upserts in flight (default 4)\n"
        "  --ingest-cmd CMD     ingest by running CMD (sh -c) instead, e.g. "
        "`kbsync ingest` of bench_gen's JSONL (hnsw/ivf only)\n"
        "  --ingest-only        stop after the ingest figures (1c)\n"
        "  --wait-s S           longest wait for a node to settle (default "
        "900)\n"
        "hnsw:\n"
        "  --index DESC         raw in-process index (default HNSW32; ivf: "
        "IVF1024,Flat)\n"
        "  --ef E               ef_search of every served and raw query "
        "(default 64)\n"
        "  --replace F          fraction replaced (default 0.2)\n"
        "  --delete F           fraction deleted (default 0.1)\n"
        "  --check-qps Q        checker queries/s on r1 during churn and "
        "rebuild (default 50)\n"
        "  --no-rebuild         skip the `kbsync rebuild` step\n"
        "  --ef-sweep LIST      more ef_search values for recall/latency, "
        "served r1 and raw (default 32,128,256; \"\" = none)\n"
        "  --no-fresh           skip the fresh in-process HNSW of the live "
        "set\n"
        "ivf:\n"
        "  --nprobes LIST       nprobe values besides 0 (default "
        "1,4,16,32,64,128)\n"
        "  --train-wait-s S     after ingest, wait S s for the automatic "
        "training, then send `kbsync rebuild` to an untrained node "
        "(default 60)\n"
        "  --label TEXT         echoed in the RESULT line\n");
}

static int parse_u32_list(const char *s, uint32_t *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || v == 0 || v > 1u << 20)
            return -1;
        out[n++] = (uint32_t)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static int parse_opts(int argc, char **argv, opts_t *o)
{
    enum {
        O_LEADER = 256, O_LPID, O_REPLICA, O_PID, O_LOG, O_KBSYNC, O_N, O_DIM,
        O_SEED, O_QSEED, O_NQ, O_METRIC, O_BATCH, O_WINDOW, O_ICMD, O_WAIT,
        O_INDEX, O_EF, O_REPLACE, O_DELETE, O_CHECKQPS, O_NOREB, O_NOFRESH,
        O_NPROBES, O_LABEL, O_INGONLY, O_EFS, O_TWAIT, O_HELP
    };
    static const struct option lo[] = {
        {"leader", required_argument, 0, O_LEADER},
        {"leader-pid", required_argument, 0, O_LPID},
        {"replica", required_argument, 0, O_REPLICA},
        {"pid", required_argument, 0, O_PID},
        {"log", required_argument, 0, O_LOG},
        {"kbsync", required_argument, 0, O_KBSYNC},
        {"n", required_argument, 0, O_N},
        {"dim", required_argument, 0, O_DIM},
        {"seed", required_argument, 0, O_SEED},
        {"qseed", required_argument, 0, O_QSEED},
        {"nq", required_argument, 0, O_NQ},
        {"metric", required_argument, 0, O_METRIC},
        {"batch", required_argument, 0, O_BATCH},
        {"window", required_argument, 0, O_WINDOW},
        {"ingest-cmd", required_argument, 0, O_ICMD},
        {"wait-s", required_argument, 0, O_WAIT},
        {"index", required_argument, 0, O_INDEX},
        {"ef", required_argument, 0, O_EF},
        {"replace", required_argument, 0, O_REPLACE},
        {"delete", required_argument, 0, O_DELETE},
        {"check-qps", required_argument, 0, O_CHECKQPS},
        {"no-rebuild", no_argument, 0, O_NOREB},
        {"no-fresh", no_argument, 0, O_NOFRESH},
        {"nprobes", required_argument, 0, O_NPROBES},
        {"label", required_argument, 0, O_LABEL},
        {"ingest-only", no_argument, 0, O_INGONLY},
        {"ef-sweep", required_argument, 0, O_EFS},
        {"train-wait-s", required_argument, 0, O_TWAIT},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0}};
    *o = (opts_t){.n = 100000, .dim = 384, .k = 10, .nq = 1000, .seed = 1,
                  .ef = 64, .metric = "ip", .metric_id = 1, .batch = 1000,
                  .window = 4, .replace_frac = 0.2, .delete_frac = 0.1,
                  .wait_s = 900, .check_qps = 50, .train_wait_s = 60,
                  .label = "-"};
    int qseed_set = 0, c, li = 0;
    const char *nprobes = "1,4,16,32,64,128";
    const char *efsweep = "32,128,256";
    if (argc < 2 || argv[1][0] == '-') {
        if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
            usage(stdout);
            exit(0);
        }
        fprintf(stderr, "bench_index: first argument is the mode: hnsw, ivf "
                        "or filter\n");
        return -1;
    }
    o->mode = argv[1];
    if (strcmp(o->mode, "hnsw") && strcmp(o->mode, "ivf") &&
        strcmp(o->mode, "filter")) {
        fprintf(stderr, "bench_index: unknown mode '%s'\n", o->mode);
        return -1;
    }
    optind = 2;
    char *end;
#define NUM(dst, lo_, hi_)                                                     \
    do {                                                                       \
        long long x_ = strtoll(optarg, &end, 10);                              \
        if (*optarg == 0 || *end || x_ < (lo_) || x_ > (hi_)) {                \
            fprintf(stderr, "bench_index: bad value '%s' for --%s\n", optarg,  \
                    c == 'k' ? "k" : lo[li].name);                             \
            return -1;                                                         \
        }                                                                      \
        dst = x_;                                                              \
    } while (0)
#define FRAC(dst)                                                              \
    do {                                                                       \
        dst = strtod(optarg, &end);                                            \
        if (*optarg == 0 || *end || dst < 0 || dst > 1) {                      \
            fprintf(stderr, "bench_index: bad fraction '%s'\n", optarg);       \
            return -1;                                                         \
        }                                                                      \
    } while (0)
    while ((c = getopt_long(argc, argv, "k:h", lo, &li)) != -1) {
        switch (c) {
        case 'k': NUM(o->k, 1, BI_MAXK); break;
        case O_LEADER: o->leader_ep = optarg; break;
        case O_LPID: NUM(o->leader_pid, 1, 1 << 30); break;
        case O_REPLICA:
            if (o->nrep == BI_MAXNODES - 1) {
                fprintf(stderr, "bench_index: at most %d replicas\n",
                        BI_MAXNODES - 1);
                return -1;
            }
            o->rep_ep[o->nrep++] = optarg;
            break;
        case O_PID:
            if (o->npid < BI_MAXNODES - 1)
                NUM(o->rep_pid[o->npid++], 1, 1 << 30);
            break;
        case O_LOG:
            if (o->nlog < BI_MAXNODES - 1)
                o->rep_log[o->nlog++] = optarg;
            break;
        case O_KBSYNC: o->kbsync = optarg; break;
        case O_N: NUM(o->n, 100, 100000000); break;
        case O_DIM: NUM(o->dim, 2, 4096); break;
        case O_SEED: NUM(o->seed, 0, (long long)(~0ull >> 2)); break;
        case O_QSEED:
            NUM(o->qseed, 0, (long long)(~0ull >> 2));
            qseed_set = 1;
            break;
        case O_NQ: NUM(o->nq, 10, 1000000); break;
        case O_METRIC:
            o->metric = optarg;
            if (!strcmp(optarg, "ip"))
                o->metric_id = IDX_METRIC_IP;
            else if (!strcmp(optarg, "l2"))
                o->metric_id = IDX_METRIC_L2;
            else if (!strcmp(optarg, "cosine"))
                o->metric_id = IDX_METRIC_COSINE;
            else {
                fprintf(stderr, "bench_index: --metric ip|l2|cosine\n");
                return -1;
            }
            break;
        case O_BATCH: NUM(o->batch, 1, 100000); break;
        case O_WINDOW: NUM(o->window, 1, 64); break;
        case O_ICMD: o->ingest_cmd = optarg; break;
        case O_WAIT: NUM(o->wait_s, 1, 86400); break;
        case O_INDEX: o->index = optarg; break;
        case O_EF: NUM(o->ef, 1, 4096); break;
        case O_REPLACE: FRAC(o->replace_frac); break;
        case O_DELETE: FRAC(o->delete_frac); break;
        case O_CHECKQPS: NUM(o->check_qps, 0, 100000); break;
        case O_NOREB: o->no_rebuild = 1; break;
        case O_NOFRESH: o->no_fresh = 1; break;
        case O_NPROBES: nprobes = optarg; break;
        case O_LABEL: o->label = optarg; break;
        case O_INGONLY: o->ingest_only = 1; break;
        case O_EFS: efsweep = optarg; break;
        case O_TWAIT: NUM(o->train_wait_s, 0, 86400); break;
        case 'h':
        case O_HELP: usage(stdout); exit(0);
        default: return -1;
        }
    }
#undef NUM
#undef FRAC
    if (optind < argc) {
        fprintf(stderr, "bench_index: unexpected argument '%s'\n",
                argv[optind]);
        return -1;
    }
    if (!o->leader_ep || o->nrep == 0) {
        fprintf(stderr, "bench_index: give --leader and at least one "
                        "--replica\n");
        return -1;
    }
    if (o->replace_frac + o->delete_frac > 0.9) {
        fprintf(stderr, "bench_index: --replace + --delete must stay <= 0.9\n");
        return -1;
    }
    if (o->ingest_cmd && !strcmp(o->mode, "filter")) {
        fprintf(stderr, "bench_index: filter mode writes its own metadata: no "
                        "--ingest-cmd\n");
        return -1;
    }
    if (!qseed_set)
        o->qseed = o->seed + 99;
    if (!o->index)
        o->index = !strcmp(o->mode, "ivf") ? "IVF1024,Flat"
                   : !strcmp(o->mode, "hnsw") ? "HNSW32"
                                              : "IDMap2,Flat";
    o->nefs = *efsweep ? parse_u32_list(efsweep, o->efs, BI_MAXNPROBE) : 0;
    if (o->nefs < 0) {
        fprintf(stderr, "bench_index: bad --ef-sweep '%s'\n", efsweep);
        return -1;
    }
    o->nnprobe = parse_u32_list(nprobes, o->nprobe, BI_MAXNPROBE);
    if (o->nnprobe < 0) {
        fprintf(stderr, "bench_index: bad --nprobes '%s'\n", nprobes);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* data: vectors, document states                                           */

enum { FATE_KEEP = 0, FATE_REPLACE = 1, FATE_DELETE = 2 };

static long g_n;
static int g_dim;
static float *g_x;     /* N x dim: generation 0 (the ingested vectors) */
static float *g_x2;    /* N x dim: generation 1 (replacements), or NULL */
static uint8_t *g_fate; /* per doc, FATE_* (churn) */
static uint64_t *g_lo, *g_hi; /* per doc: LSN range of the batch that
                                 replaced / deleted it (0 = none) */
static int g_meta_filter; /* docs carry bucket/half metadata */

static const float *doc_vec(long i, int gen)
{
    return (gen ? g_x2 : g_x) + (size_t)i * (size_t)g_dim;
}

static float score_of(int metric, const float *q, const float *x, int dim)
{
    double s = 0, qq = 0, xx = 0;
    for (int j = 0; j < dim; j++) {
        if (metric == IDX_METRIC_L2) {
            double d = (double)q[j] - x[j];
            s += d * d;
        } else {
            s += (double)q[j] * x[j];
            qq += (double)q[j] * q[j];
            xx += (double)x[j] * x[j];
        }
    }
    if (metric == IDX_METRIC_COSINE)
        s /= sqrt(qq * xx);
    return (float)s;
}

/* Fills one upsert Doc of doc i, generation gen. */
static void fill_doc(long i, int gen, Kbsync__Doc *d, char *id, char *text,
                     char *meta)
{
    kbsync__doc__init(d);
    snprintf(id, 32, "doc-%ld", i);
    char t[320];
    bench_text((uint64_t)i, t, 300);
    snprintf(text, 330, "%s%s", gen ? "v2 " : "", t);
    if (g_meta_filter)
        snprintf(meta, 160,
                 "{\"source\": \"bench\", \"n\": %ld, \"bucket\": %d, "
                 "\"half\": \"%s\"}",
                 i, doc_bucket(i), doc_half(i) ? "a" : "b");
    else
        snprintf(meta, 160, "{\"source\": \"bench\", \"n\": %ld}", i);
    d->id = id;
    d->text = text;
    d->metadata_json = meta;
    d->embedding = (float *)doc_vec(i, gen);
    d->n_embedding = (size_t)g_dim;
}

/* ------------------------------------------------------------------------ */
/* nodes                                                                    */

typedef struct nodeh {
    char name[16];
    const char *ep;
    int pid;
    const char *log;
    qry_client_t *cl;
} nodeh_t;

typedef struct nstat {
    uint64_t version, docs, vectors, dead, index_bytes, store_bytes, rebuilds,
        queries, commits, unmerged;
    int trained, rebuilding;
} nstat_t;

static int node_status(nodeh_t *nd, nstat_t *s)
{
    Kbsync__StatusRequest sr = KBSYNC__STATUS_REQUEST__INIT;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_STATUS;
    req.status = &sr;
    Kbsync__Response *r = NULL;
    char err[256];
    int rc = qry_client_call(nd->cl, &req, 10000, &r, err, sizeof err);
    if (rc) {
        fprintf(stderr, "status of %s: %s\n", nd->name, err);
        return rc;
    }
    if (r->error || !r->status) {
        fprintf(stderr, "status of %s: %s\n", nd->name,
                r->error ? r->error->message : "no node state");
        kbsync__response__free_unpacked(r, NULL);
        return KB_EBADMSG;
    }
    const Kbsync__NodeState *n = r->status;
    *s = (nstat_t){.version = n->version, .docs = n->docs,
                   .vectors = n->vectors, .dead = n->dead_vectors,
                   .index_bytes = n->index_bytes,
                   .store_bytes = n->store_bytes, .rebuilds = n->rebuilds,
                   .queries = n->queries, .commits = n->commits,
                   .unmerged = n->unmerged_vectors,
                   .trained = n->index_trained, .rebuilding = n->rebuilding};
    kbsync__response__free_unpacked(r, NULL);
    return 0;
}

typedef struct want {
    uint64_t version;  /* version >= */
    uint64_t vectors;  /* vectors == */
    uint64_t rebuilds; /* rebuilds >= */
    int trained;       /* index_trained must be true */
} want_t;

typedef struct settle {
    double applied, vectors, trained, merged, idle; /* s since t0; -1 = not
                                                       reached */
    double st_p50, st_p99, st_max;          /* status round trips, ms */
    nstat_t last;
} settle_t;

/* Polls every node every 100 ms until each is idle (see the header) or
 * wait_s passes. Times in out[] are seconds since t0 (monotonic µs). */
static int wait_settle(const opts_t *o, nodeh_t *nodes, int nn,
                       const want_t *w, uint64_t t0, settle_t *out,
                       const char *what)
{
    long hz = sysconf(_SC_CLK_TCK);
    long base_ticks[BI_MAXNODES];
    uint64_t streak[BI_MAXNODES];
    int done[BI_MAXNODES];
    for (int i = 0; i < nn; i++) {
        out[i] = (settle_t){-1, -1, -1, -1, -1, 0, 0, 0, {0}};
        base_ticks[i] = -1;
        streak[i] = 0;
        done[i] = 0;
    }
    uint64_t start = kb_mono_us(), deadline = start + (uint64_t)o->wait_s * 1000000u;
    uint64_t next_print = start + 5000000u;
    int left = nn;
    dvec_t rtt[BI_MAXNODES];
    memset(rtt, 0, sizeof rtt);
    while (left) {
        sleep_ms(100);
        uint64_t now = kb_mono_us();
        double ts = (double)(now - t0) / 1e6;
        for (int i = 0; i < nn; i++) {
            if (done[i])
                continue;
            nstat_t s;
            uint64_t q0 = kb_mono_us();
            if (node_status(&nodes[i], &s))
                continue;
            dvec_push(&rtt[i], (double)(kb_mono_us() - q0) / 1000.0);
            out[i].last = s;
            if (s.version >= w->version && out[i].applied < 0)
                out[i].applied = ts;
            if (s.version >= w->version && s.vectors == w->vectors &&
                out[i].vectors < 0)
                out[i].vectors = ts;
            if (s.trained && out[i].trained < 0)
                out[i].trained = ts;
            int ok = s.version >= w->version && s.vectors == w->vectors &&
                     !s.rebuilding && s.rebuilds >= w->rebuilds &&
                     (!w->trained || s.trained) && s.unmerged == 0;
            if (ok && out[i].merged < 0)
                out[i].merged = ts; /* status alone says idle */
            if (!ok)
                out[i].merged = -1;
            /* A quiet streak starts when the status conditions hold; it is
             * restarted whenever the background threads used more than 5%
             * of a core (+2 ticks) since its start; >= 1 s of it = idle,
             * dated at its start. Without a pid: idle when status says so. */
            uint64_t tn = kb_mono_us();
            if (!ok) {
                streak[i] = 0;
                continue;
            }
            if (!nodes[i].pid) {
                out[i].idle = (double)(tn - t0) / 1e6;
                done[i] = 1;
                left--;
                continue;
            }
            long t = proc_bg_ticks(nodes[i].pid);
            if (t < 0) {
                fprintf(stderr, "bench_index: %s (pid %d) is gone\n",
                        nodes[i].name, nodes[i].pid);
                return -1;
            }
            if (!streak[i] || t < base_ticks[i]) {
                streak[i] = tn;
                base_ticks[i] = t;
                continue;
            }
            double el = (double)(tn - streak[i]) / 1e6;
            if (t - base_ticks[i] > (long)(0.05 * el * (double)hz) + 2) {
                streak[i] = tn;
                base_ticks[i] = t;
            } else if (el >= 1.0) {
                out[i].idle = (double)(streak[i] - t0) / 1e6;
                if (out[i].idle < out[i].vectors)
                    out[i].idle = out[i].vectors;
                done[i] = 1;
                left--;
            }
        }
        if (now >= next_print || !left) {
            next_print = now + 5000000u;
            printf("  [%s %6.1f s]", what, ts);
            for (int i = 0; i < nn; i++) {
                double mx = 0;
                for (size_t j = 0; j < rtt[i].n; j++)
                    if (rtt[i].v[j] > mx)
                        mx = rtt[i].v[j];
                printf(" %s v%llu vec%llu unmerged%llu dead%llu%s%s%s status "
                       "max %.0f ms;",
                       nodes[i].name, (unsigned long long)out[i].last.version,
                       (unsigned long long)out[i].last.vectors,
                       (unsigned long long)out[i].last.unmerged,
                       (unsigned long long)out[i].last.dead,
                       out[i].last.trained ? "" : " untrained",
                       out[i].last.rebuilding ? " rebuilding" : "",
                       done[i] ? " idle" : "", mx);
            }
            printf("\n");
        }
        if (now > deadline) {
            fprintf(stderr, "bench_index: %s: nodes did not settle within %d "
                            "s\n",
                    what, o->wait_s);
            return -1;
        }
    }
    for (int i = 0; i < nn; i++) {
        out[i].st_max = bench_pct(rtt[i].v, rtt[i].n, 100);
        out[i].st_p99 = bench_pct(rtt[i].v, rtt[i].n, 99);
        out[i].st_p50 = bench_pct(rtt[i].v, rtt[i].n, 50);
        printf("  %s status round trip while settling (%zu polls): p50 %.1f "
               "ms p99 %.1f ms max %.1f ms\n",
               nodes[i].name, rtt[i].n, out[i].st_p50, out[i].st_p99,
               out[i].st_max);
        dvec_free(&rtt[i]);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* writes                                                                   */

enum { OP_UP0 = 0, OP_UP1 = 1, OP_DEL = 2 };

/* Sends items (doc indices) as upserts (generation 0/1) or deletes in
 * batches of o->batch, o->window in flight, async. Records each item's
 * batch LSN range in lo/hi (when not NULL) and the highest version in
 * *last. */
static int send_all(const opts_t *o, qry_client_t *cl, const long *items,
                    size_t n, int op, uint64_t *lo, uint64_t *hi,
                    uint64_t *last)
{
    size_t B = (size_t)o->batch;
    Kbsync__Doc *docs = xcalloc(B, sizeof *docs);
    Kbsync__Doc **dp = xcalloc(B, sizeof *dp);
    char (*ids)[32] = xcalloc(B, sizeof *ids);
    char (*texts)[330] = xcalloc(B, sizeof *texts);
    char (*metas)[160] = xcalloc(B, sizeof *metas);
    char **idp = xcalloc(B, sizeof *idp);
    struct infl {
        uint64_t rid;
        size_t start, cnt;
    } fl[64];
    int nfl = 0, rc = 0;
    size_t next = 0;
    while ((next < n || nfl) && !rc) {
        while (nfl < o->window && next < n) {
            size_t cnt = n - next < B ? n - next : B;
            Kbsync__Request req = KBSYNC__REQUEST__INIT;
            Kbsync__UpsertRequest u = KBSYNC__UPSERT_REQUEST__INIT;
            Kbsync__DeleteRequest dr = KBSYNC__DELETE_REQUEST__INIT;
            if (op == OP_DEL) {
                for (size_t j = 0; j < cnt; j++) {
                    snprintf(ids[j], sizeof ids[j], "doc-%ld", items[next + j]);
                    idp[j] = ids[j];
                }
                dr.ids = idp;
                dr.n_ids = cnt;
                dr.mode = KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC;
                req.body_case = KBSYNC__REQUEST__BODY_DELETE;
                req.delete_ = &dr;
            } else {
                for (size_t j = 0; j < cnt; j++) {
                    fill_doc(items[next + j], op == OP_UP1, &docs[j], ids[j],
                             texts[j], metas[j]);
                    dp[j] = &docs[j];
                }
                u.docs = dp;
                u.n_docs = cnt;
                u.mode = KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC;
                req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
                req.upsert = &u;
            }
            uint64_t rid;
            char err[256];
            if (qry_client_send(cl, &req, &rid, err, sizeof err)) {
                fprintf(stderr, "send: %s\n", err);
                rc = 1;
                break;
            }
            fl[nfl++] = (struct infl){rid, next, cnt};
            next += cnt;
        }
        if (rc || !nfl)
            break;
        Kbsync__Response *r = NULL;
        char err[256];
        int e = qry_client_recv(cl, 120000, &r, err, sizeof err);
        if (e || !r) {
            fprintf(stderr, "write answer: %s\n", e ? err : "none");
            rc = 1;
            break;
        }
        int j = 0;
        while (j < nfl && fl[j].rid != r->request_id)
            j++;
        if (j == nfl) {
            kbsync__response__free_unpacked(r, NULL);
            continue;
        }
        if (r->error || !r->write) {
            fprintf(stderr, "write refused: %s (%s)\n",
                    r->error ? r->error->message : "no write result",
                    r->error ? kb_errname(r->error->code) : "-");
            rc = 1;
        } else {
            uint64_t v = r->write->version, wr = r->write->written;
            if (wr != fl[j].cnt || r->write->missing) {
                fprintf(stderr, "write: %llu of %zu written, %u missing\n",
                        (unsigned long long)wr, fl[j].cnt, r->write->missing);
                rc = 1;
            }
            if (lo)
                for (size_t m = 0; m < fl[j].cnt; m++) {
                    long d = items[fl[j].start + m];
                    lo[d] = v - wr + 1;
                    hi[d] = v;
                }
            if (v > *last)
                *last = v;
        }
        kbsync__response__free_unpacked(r, NULL);
        fl[j] = fl[--nfl];
    }
    free(docs);
    free(dp);
    free(ids);
    free(texts);
    free(metas);
    free(idp);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* answers and their checks                                                 */

typedef struct answer {
    uint64_t version;
    int qi; /* query number (checker) */
    int nh;
    int32_t doc[BI_MAXK]; /* -1 = id not doc-<i> of this data set */
    int8_t gen[BI_MAXK];  /* 0, 1, -1 = text of neither generation */
    uint8_t score_bad[BI_MAXK];
} answer_t;

typedef struct viol {
    uint64_t answers, hits;
    uint64_t short_ans, dup, bad_id, deleted, stale, early, score, filter;
    char first[6][200];
    int nfirst;
} viol_t;

static uint64_t viol_total(const viol_t *v)
{
    return v->short_ans + v->dup + v->bad_id + v->deleted + v->stale +
           v->early + v->score + v->filter;
}

__attribute__((format(printf, 2, 3))) static void viol_note(viol_t *v,
                                                            const char *fmt, ...)
{
    if (v->nfirst >= 6)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->first[v->nfirst++], sizeof v->first[0], fmt, ap);
    va_end(ap);
}

static void viol_merge(viol_t *to, const viol_t *f)
{
    to->answers += f->answers;
    to->hits += f->hits;
    to->short_ans += f->short_ans;
    to->dup += f->dup;
    to->bad_id += f->bad_id;
    to->deleted += f->deleted;
    to->stale += f->stale;
    to->early += f->early;
    to->score += f->score;
    to->filter += f->filter;
    for (int i = 0; i < f->nfirst; i++)
        if (to->nfirst < 6)
            snprintf(to->first[to->nfirst++], sizeof to->first[0], "%s",
                     f->first[i]);
}

static void viol_print(const char *what, const viol_t *v)
{
    printf("    %s: %llu answers, %llu hits checked: %llu violations (short "
           "%llu, duplicate %llu, unknown id/text %llu, deleted %llu, old "
           "version %llu, new-before-its-LSN %llu, score %llu, filter %llu)\n",
           what, (unsigned long long)v->answers, (unsigned long long)v->hits,
           (unsigned long long)viol_total(v), (unsigned long long)v->short_ans,
           (unsigned long long)v->dup, (unsigned long long)v->bad_id,
           (unsigned long long)v->deleted, (unsigned long long)v->stale,
           (unsigned long long)v->early, (unsigned long long)v->score,
           (unsigned long long)v->filter);
    for (int i = 0; i < v->nfirst; i++)
        printf("      e.g. %s\n", v->first[i]);
}

typedef enum { F_NONE = 0, F_BUCKET = 1, F_HALF = 2 } fkind_t;

typedef struct fspec {
    fkind_t kind;
    int value; /* bucket number, or half 1 = "a" */
} fspec_t;

static int doc_matches(const fspec_t *f, long i)
{
    if (!f || f->kind == F_NONE)
        return 1;
    if (f->kind == F_BUCKET)
        return doc_bucket(i) == f->value;
    return doc_half(i) == f->value;
}

/* Decodes a QueryResult into an answer (scores checked against the
 * vector of the generation the text names). */
static void decode_answer(const opts_t *o, const Kbsync__QueryResult *qr,
                          const float *q, answer_t *a)
{
    memset(a, 0, sizeof *a);
    a->version = qr->state ? qr->state->version : 0;
    a->nh = (int)(qr->n_hits < BI_MAXK ? qr->n_hits : BI_MAXK);
    char t[320];
    for (int h = 0; h < a->nh; h++) {
        const Kbsync__Hit *hit = qr->hits[h];
        char *end;
        long d = -1;
        if (hit->id && !strncmp(hit->id, "doc-", 4)) {
            d = strtol(hit->id + 4, &end, 10);
            if (*end || d < 0 || d >= g_n)
                d = -1;
        }
        a->doc[h] = (int32_t)d;
        a->gen[h] = -1;
        if (d < 0)
            continue;
        bench_text((uint64_t)d, t, 300);
        const char *tx = hit->text ? hit->text : "";
        if (!strcmp(tx, t))
            a->gen[h] = 0;
        else if (!strncmp(tx, "v2 ", 3) && !strcmp(tx + 3, t) && g_x2)
            a->gen[h] = 1;
        if (a->gen[h] >= 0) {
            float want = score_of(o->metric_id, q, doc_vec(d, a->gen[h]),
                                  o->dim);
            float tol = 2e-3f * (fabsf(want) > 1 ? fabsf(want) : 1);
            a->score_bad[h] = fabsf(want - hit->score) > tol;
        }
    }
}

/* Checks one answer against the document states (g_fate, g_lo, g_hi: all
 * LSN ranges must be known) and the filter. */
static void check_answer(const opts_t *o, const answer_t *a, const fspec_t *f,
                         viol_t *v)
{
    v->answers++;
    v->hits += (uint64_t)a->nh;
    if (a->nh < o->k) {
        v->short_ans++;
        viol_note(v, "answer at version %llu has %d hits, k = %d",
                  (unsigned long long)a->version, a->nh, o->k);
    }
    for (int h = 0; h < a->nh; h++) {
        long d = a->doc[h];
        if (d < 0 || a->gen[h] < 0) {
            v->bad_id++;
            viol_note(v, "hit %d: unknown id or text (doc %ld)", h, d);
            continue;
        }
        for (int j = 0; j < h; j++)
            if (a->doc[j] == d) {
                v->dup++;
                viol_note(v, "doc-%ld twice in one answer (version %llu)", d,
                          (unsigned long long)a->version);
            }
        if (a->score_bad[h]) {
            v->score++;
            viol_note(v, "doc-%ld gen %d: score differs from its vector", d,
                      a->gen[h]);
        }
        if (f && !doc_matches(f, d)) {
            v->filter++;
            viol_note(v, "doc-%ld does not match the filter", d);
        }
        int fate = g_fate ? g_fate[d] : FATE_KEEP;
        uint64_t lo = g_lo ? g_lo[d] : 0, hi = g_hi ? g_hi[d] : 0;
        if (fate == FATE_KEEP || !hi) {
            if (a->gen[h] != 0) {
                v->early++;
                viol_note(v, "doc-%ld: generation 1 of a doc never replaced", d);
            }
            continue;
        }
        if (a->gen[h] == 1 && (fate != FATE_REPLACE || a->version < lo)) {
            v->early++;
            viol_note(v, "doc-%ld: new version at answer version %llu < its "
                         "LSN %llu",
                      d, (unsigned long long)a->version,
                      (unsigned long long)lo);
        }
        if (a->version >= hi) {
            if (fate == FATE_DELETE) {
                v->deleted++;
                viol_note(v, "doc-%ld deleted at LSN <= %llu returned at "
                             "version %llu",
                          d, (unsigned long long)hi,
                          (unsigned long long)a->version);
            } else if (a->gen[h] == 0) {
                v->stale++;
                viol_note(v, "doc-%ld replaced at LSN <= %llu returned in its "
                             "old version at version %llu",
                          d, (unsigned long long)hi,
                          (unsigned long long)a->version);
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* queries                                                                  */

static void fill_filter(const fspec_t *f, Kbsync__Filter *fl, char *val)
{
    kbsync__filter__init(fl);
    if (f->kind == F_BUCKET) {
        fl->key = "bucket";
        snprintf(val, 16, "%d", f->value);
    } else {
        fl->key = "half";
        snprintf(val, 16, "%s", f->value ? "a" : "b");
    }
    fl->value = val;
}

/* One served query; 0 and *a filled, or an error code (printed once). */
static atomic_int g_qerr_printed;

static int served_query(const opts_t *o, qry_client_t *cl, const float *q,
                        uint32_t ef, uint32_t nprobe, const fspec_t *f,
                        answer_t *a, double *ms)
{
    Kbsync__QueryRequest qr = KBSYNC__QUERY_REQUEST__INIT;
    qr.k = (uint32_t)o->k;
    qr.vector = (float *)q;
    qr.n_vector = (size_t)o->dim;
    qr.ef_search = ef;
    qr.nprobe = nprobe;
    Kbsync__Filter fl, *flp = &fl;
    char val[16];
    if (f && f->kind != F_NONE) {
        fill_filter(f, &fl, val);
        qr.filters = &flp;
        qr.n_filters = 1;
    }
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_QUERY;
    req.query = &qr;
    Kbsync__Response *r = NULL;
    char err[256];
    uint64_t t0 = kb_mono_us();
    int rc = qry_client_call(cl, &req, 30000, &r, err, sizeof err);
    uint64_t t1 = kb_mono_us();
    if (ms)
        *ms = (double)(t1 - t0) / 1000.0;
    if (rc) {
        if (atomic_fetch_add(&g_qerr_printed, 1) < 5)
            fprintf(stderr, "query: %s\n", err);
        return rc;
    }
    if (r->error || !r->query) {
        rc = r->error ? r->error->code : KB_EBADMSG;
        if (atomic_fetch_add(&g_qerr_printed, 1) < 5)
            fprintf(stderr, "query refused: %s\n",
                    r->error ? r->error->message : "no query result");
        kbsync__response__free_unpacked(r, NULL);
        return rc;
    }
    decode_answer(o, r->query, q, a);
    kbsync__response__free_unpacked(r, NULL);
    return 0;
}

/* Exact top-k docs (nq x k, -1 = none) -> recall of got (doc ids). */
static double recall_of(const int32_t *exact, const int32_t *got, int ngot,
                        int k)
{
    int hit = 0, n = 0;
    for (int i = 0; i < k; i++) {
        if (exact[i] < 0)
            continue;
        n++;
        for (int j = 0; j < ngot; j++)
            if (got[j] == exact[i]) {
                hit++;
                break;
            }
    }
    return n ? (double)hit / n : 1.0;
}

typedef struct round {
    double recall, p50, p99, mean, hits_mean;
    uint64_t answers, errors;
    viol_t v;
} round_t;

static void round_finish(round_t *R, dvec_t *lat, double rsum, uint64_t hits)
{
    R->recall = R->answers ? rsum / (double)R->answers : 0;
    R->hits_mean = R->answers ? (double)hits / (double)R->answers : 0;
    double s = 0;
    for (size_t i = 0; i < lat->n; i++)
        s += lat->v[i];
    R->mean = lat->n ? s / (double)lat->n : 0;
    R->p50 = bench_pct(lat->v, lat->n, 50);
    R->p99 = bench_pct(lat->v, lat->n, 99);
    dvec_free(lat);
}

/* nq served queries, one at a time (closed loop, 1 client), after 20
 * warm-up queries; recall vs exact (nq x k docs) and every answer checked. */
static void served_round(const opts_t *o, nodeh_t *nd, const float *qs, int nq,
                         uint32_t ef, uint32_t nprobe, const fspec_t *f,
                         const int32_t *exact, round_t *R)
{
    memset(R, 0, sizeof *R);
    dvec_t lat = {0};
    double rsum = 0;
    uint64_t hits = 0;
    answer_t a;
    for (int i = 0; i < 20 && i < nq; i++)
        served_query(o, nd->cl, qs + (size_t)i * o->dim, ef, nprobe, f, &a,
                     NULL);
    for (int i = 0; i < nq; i++) {
        double ms;
        const float *q = qs + (size_t)i * o->dim;
        if (served_query(o, nd->cl, q, ef, nprobe, f, &a, &ms)) {
            R->errors++;
            continue;
        }
        R->answers++;
        dvec_push(&lat, ms);
        hits += (uint64_t)a.nh;
        if (exact)
            rsum += recall_of(exact + (size_t)i * o->k, a.doc, a.nh, o->k);
        check_answer(o, &a, f, &R->v);
    }
    round_finish(R, &lat, rsum, hits);
}

/* The same with raw FAISS in this process: single queries, one thread. */
typedef struct allow_ctx {
    const fspec_t *f;
} allow_ctx_t;

static int allow_label(void *ctx, int64_t label)
{
    const allow_ctx_t *c = ctx;
    return doc_matches(c->f, (long)(label % g_n));
}

static void raw_round(const opts_t *o, const idx_vec_t *v, const float *qs,
                      int nq, uint32_t ef, uint32_t nprobe, const fspec_t *f,
                      const int32_t *exact, round_t *R)
{
    memset(R, 0, sizeof *R);
    dvec_t lat = {0};
    double rsum = 0;
    uint64_t hits = 0;
    float sc[BI_MAXK];
    int64_t lb[BI_MAXK];
    int32_t got[BI_MAXK];
    char err[256];
    allow_ctx_t ac = {f};
    idx_vec_params_t p = {.ef_search = ef, .nprobe = nprobe};
    if (f && f->kind != F_NONE) {
        p.allow = allow_label;
        p.allow_ctx = &ac;
    }
    for (int i = 0; i < 20 && i < nq; i++)
        idx_vec_search_params(v, 1, qs + (size_t)i * o->dim, (uint32_t)o->k, &p,
                              sc, lb, err, sizeof err);
    for (int i = 0; i < nq; i++) {
        uint64_t t0 = kb_mono_us();
        int rc = idx_vec_search_params(v, 1, qs + (size_t)i * o->dim,
                                       (uint32_t)o->k, &p, sc, lb, err,
                                       sizeof err);
        uint64_t t1 = kb_mono_us();
        if (rc) {
            if (!R->errors)
                fprintf(stderr, "raw search: %s\n", err);
            R->errors++;
            continue;
        }
        R->answers++;
        dvec_push(&lat, (double)(t1 - t0) / 1000.0);
        int nh = 0;
        for (int j = 0; j < o->k; j++)
            if (lb[j] >= 0)
                got[nh++] = (int32_t)(lb[j] % g_n);
        hits += (uint64_t)nh;
        if (exact)
            rsum += recall_of(exact + (size_t)i * o->k, got, nh, o->k);
    }
    round_finish(R, &lat, rsum, hits);
}

/* Served (node nd) and raw (v) single queries in alternating blocks of 50,
 * so both see the same background load of this shared machine; nq each. */
static void interleaved(const opts_t *o, nodeh_t *nd, const idx_vec_t *v,
                        const float *qs, int nq, uint32_t ef, double *s50,
                        double *s99, double *r50, double *r99)
{
    dvec_t ls = {0}, lr = {0};
    idx_vec_params_t p = {.ef_search = ef};
    float sc[BI_MAXK];
    int64_t lb[BI_MAXK];
    char err[256];
    answer_t a;
    for (int b = 0; b < nq; b += 50) {
        int e = b + 50 < nq ? b + 50 : nq;
        for (int i = b; i < e; i++) {
            double ms;
            if (!served_query(o, nd->cl, qs + (size_t)i * o->dim, ef, 0, NULL,
                              &a, &ms))
                dvec_push(&ls, ms);
        }
        for (int i = b; i < e; i++) {
            uint64_t t0 = kb_mono_us();
            if (!idx_vec_search_params(v, 1, qs + (size_t)i * o->dim,
                                       (uint32_t)o->k, &p, sc, lb, err,
                                       sizeof err))
                dvec_push(&lr, (double)(kb_mono_us() - t0) / 1000.0);
        }
    }
    *s50 = bench_pct(ls.v, ls.n, 50);
    *s99 = bench_pct(ls.v, ls.n, 99);
    *r50 = bench_pct(lr.v, lr.n, 50);
    *r99 = bench_pct(lr.v, lr.n, 99);
    dvec_free(&ls);
    dvec_free(&lr);
}

/* ------------------------------------------------------------------------ */
/* in-process indexes                                                       */

/* Adds the live documents (generation by g_fate: keep -> 0 under label i,
 * replace -> 1 under label N + i, delete -> absent; all gen 0 when
 * live_only is 0) to v in chunks. */
static int add_docs(const opts_t *o, idx_vec_t *v, int live_only, int verbose)
{
    enum { CH = 10000 };
    float *x = xmalloc(sizeof(float) * (size_t)o->dim * CH);
    int64_t *lab = xmalloc(sizeof(int64_t) * CH);
    char err[512];
    uint64_t t0 = kb_mono_us(), tp = t0;
    long i = 0, added = 0;
    int rc = 0;
    while (i < g_n && !rc) {
        size_t m = 0;
        for (; m < CH && i < g_n; i++) {
            int fate = live_only && g_fate ? g_fate[i] : FATE_KEEP;
            if (fate == FATE_DELETE)
                continue;
            int gen = fate == FATE_REPLACE;
            memcpy(x + m * (size_t)o->dim, doc_vec(i, gen),
                   sizeof(float) * (size_t)o->dim);
            lab[m++] = gen ? g_n + i : i;
        }
        if (m && idx_vec_add(v, m, x, lab, err, sizeof err)) {
            fprintf(stderr, "idx_vec_add: %s\n", err);
            rc = 1;
        }
        added += (long)m;
        uint64_t now = kb_mono_us();
        if (verbose && now - tp > 15000000u) {
            tp = now;
            printf("    ... %ld vectors added in %.0f s\n", added,
                   (double)(now - t0) / 1e6);
        }
    }
    free(x);
    free(lab);
    return rc;
}

/* Exact top-k docs of nq queries (flat index ex), through the predicate of
 * f when set; out: nq x k doc ids (-1 = none). */
static int exact_topk(const opts_t *o, const idx_vec_t *ex, const float *qs,
                      int nq, const fspec_t *f, int32_t *out)
{
    enum { QB = 256 };
    float *sc = xmalloc(sizeof(float) * QB * (size_t)o->k);
    int64_t *lb = xmalloc(sizeof(int64_t) * QB * (size_t)o->k);
    char err[256];
    allow_ctx_t ac = {f};
    idx_vec_params_t p = {0};
    if (f && f->kind != F_NONE) {
        p.allow = allow_label;
        p.allow_ctx = &ac;
    }
    for (int i = 0; i < nq; i += QB) {
        int b = nq - i < QB ? nq - i : QB;
        if (idx_vec_search_params(ex, (size_t)b, qs + (size_t)i * o->dim,
                                  (uint32_t)o->k, &p, sc, lb, err,
                                  sizeof err)) {
            fprintf(stderr, "exact search: %s\n", err);
            free(sc);
            free(lb);
            return 1;
        }
        for (int j = 0; j < b * o->k; j++)
            out[(size_t)i * o->k + j] = lb[j] >= 0 ? (int32_t)(lb[j] % g_n) : -1;
    }
    free(sc);
    free(lb);
    return 0;
}

static idx_vec_t *new_index(const opts_t *o, const char *desc)
{
    idx_vec_t *v = NULL;
    char err[512];
    if (idx_vec_new((uint32_t)o->dim, desc, o->metric_id, &v, err,
                    sizeof err)) {
        fprintf(stderr, "idx_vec_new(%s): %s\n", desc, err);
        return NULL;
    }
    return v;
}

/* ------------------------------------------------------------------------ */
/* cluster plumbing shared by the modes                                     */

typedef struct cluster {
    nodeh_t node[BI_MAXNODES]; /* [0] leader, then replicas */
    int nn;
} cluster_t;

static int cluster_open(const opts_t *o, cluster_t *C)
{
    memset(C, 0, sizeof *C);
    C->nn = 1 + o->nrep;
    for (int i = 0; i < C->nn; i++) {
        nodeh_t *nd = &C->node[i];
        if (i == 0) {
            snprintf(nd->name, sizeof nd->name, "leader");
            nd->ep = o->leader_ep;
            nd->pid = o->leader_pid;
        } else {
            snprintf(nd->name, sizeof nd->name, "r%d", i);
            nd->ep = o->rep_ep[i - 1];
            nd->pid = i - 1 < o->npid ? o->rep_pid[i - 1] : 0;
            nd->log = i - 1 < o->nlog ? o->rep_log[i - 1] : NULL;
        }
        char err[256];
        if (qry_client_open(nd->ep, &nd->cl, err, sizeof err)) {
            fprintf(stderr, "%s: %s\n", nd->name, err);
            return 1;
        }
    }
    return 0;
}

static void cluster_close(cluster_t *C)
{
    for (int i = 0; i < C->nn; i++)
        qry_client_close(&C->node[i].cl);
}

/* Generates the data set and the two query sets. */
static void make_data(const opts_t *o, float **qa, float **qb)
{
    g_n = o->n;
    g_dim = o->dim;
    uint64_t t0 = kb_mono_us();
    g_x = xmalloc(sizeof(float) * (size_t)o->n * (size_t)o->dim);
    for (long i = 0; i < o->n; i++)
        bench_vector(o->seed, (uint64_t)i, o->dim, g_x + (size_t)i * o->dim);
    *qa = xmalloc(sizeof(float) * (size_t)o->nq * (size_t)o->dim);
    *qb = xmalloc(sizeof(float) * (size_t)o->nq * (size_t)o->dim);
    for (int j = 0; j < o->nq; j++) {
        bench_vector(o->qseed, (uint64_t)j, o->dim, *qa + (size_t)j * o->dim);
        bench_vector(o->seed, (uint64_t)o->n + 1000000u + (uint64_t)j, o->dim,
                     *qb + (size_t)j * o->dim);
    }
    printf("data: %ld x %d bench_vector(seed %llu) + %d queries x 2 sets "
           "(other: seed %llu; same: held-out vectors of the data's clusters), "
           "generated in %.1f s\n",
           o->n, o->dim, (unsigned long long)o->seed, o->nq,
           (unsigned long long)o->qseed, (double)(kb_mono_us() - t0) / 1e6);
}

/* Ingest phase: all N docs (generation 0) through the leader, then wait for
 * every node to settle. Prints and records the figures; *t0 = first write. */
static int ingest_phase(const opts_t *o, cluster_t *C, int need_trained,
                        uint64_t *t0_out, settle_t *st, uint64_t *last_out)
{
    uint64_t last = 0, t0, t_ack;
    const char *via;
    if (o->ingest_cmd) {
        via = "cmd";
        printf("ingest: sh -c '%s'\n", o->ingest_cmd);
        fflush(stdout);
        t0 = kb_mono_us();
        int rc = system(o->ingest_cmd);
        t_ack = kb_mono_us();
        if (rc != 0) {
            fprintf(stderr, "ingest command failed (%d)\n", rc);
            return 1;
        }
        nstat_t s;
        if (node_status(&C->node[0], &s))
            return 1;
        last = s.version;
    } else {
        via = "program";
        long *items = xmalloc(sizeof(long) * (size_t)o->n);
        for (long i = 0; i < o->n; i++)
            items[i] = i;
        t0 = kb_mono_us();
        int rc = send_all(o, C->node[0].cl, items, (size_t)o->n, OP_UP0, NULL,
                          NULL, &last);
        t_ack = kb_mono_us();
        free(items);
        if (rc)
            return 1;
    }
    double ack_s = (double)(t_ack - t0) / 1e6;
    printf("ingest (%s, %s): %ld docs acked by the leader (async) in %.2f s "
           "(%.0f docs/s); last LSN %llu\n",
           via, o->ingest_cmd ? "as the command does" : "upserts of --batch docs, --window in flight",
           o->n, ack_s, (double)o->n / ack_s, (unsigned long long)last);
    want_t w = {.version = last, .vectors = (uint64_t)o->n,
                .trained = need_trained};
    if (wait_settle(o, C->node, C->nn, &w, t0, st, "ingest"))
        return 1;
    double both = 0, vec_all = 0, idle_all = 0;
    for (int i = 1; i < C->nn; i++) {
        if (st[i].applied > both)
            both = st[i].applied;
        if (st[i].vectors > vec_all)
            vec_all = st[i].vectors;
        if (st[i].idle > idle_all)
            idle_all = st[i].idle;
    }
    printf("  all replicas at version >= %llu after %.2f s: %.0f docs/s "
           "(first write -> applied on every replica; status polled every "
           "100 ms)\n",
           (unsigned long long)last, both, (double)o->n / both);
    for (int i = 0; i < C->nn; i++)
        printf("  %-6s applied %.2f s, vectors == N %.2f s, trained %.2f s, "
               "status idle (unmerged_vectors 0, not rebuilding) %.2f s, "
               "background CPU quiet %.2f s; status: vectors "
               "%llu dead %llu index %.1f MB store %.1f MB rebuilds %llu\n",
               C->node[i].name, st[i].applied, st[i].vectors, st[i].trained,
               st[i].merged, st[i].idle,
               (unsigned long long)st[i].last.vectors,
               (unsigned long long)st[i].last.dead,
               st[i].last.index_bytes / 1e6, st[i].last.store_bytes / 1e6,
               (unsigned long long)st[i].last.rebuilds);
    res(" ingest_via=%s ingest_ack_s=%.2f ingest_s=%.2f ingest_docs_per_s=%.0f "
        "applied_all_s=%.2f vectors_all_s=%.2f idle_all_s=%.2f",
        via, ack_s, both, (double)o->n / both, both, vec_all, idle_all);
    for (int i = 0; i < C->nn; i++)
        res(" %s_applied_s=%.2f %s_vectors_s=%.2f %s_merged_s=%.2f "
            "%s_idle_s=%.2f %s_status_p99_ms=%.1f %s_status_max_ms=%.1f",
            C->node[i].name, st[i].applied, C->node[i].name, st[i].vectors,
            C->node[i].name, st[i].merged, C->node[i].name, st[i].idle,
            C->node[i].name, st[i].st_p99, C->node[i].name, st[i].st_max);
    *t0_out = t0;
    *last_out = last;
    return 0;
}

static void print_mem(const opts_t *o, cluster_t *C, const char *tag,
                      double raw_bytes)
{
    for (int i = 0; i < C->nn; i++) {
        nodeh_t *nd = &C->node[i];
        nstat_t s;
        if (node_status(nd, &s))
            continue;
        pmem_t m = {0};
        if (nd->pid)
            proc_mem(nd->pid, &m);
        printf("  memory %-6s VmRSS %.1f MB (anon %.1f, file %.1f; peak %.1f) "
               "| status index_bytes %.1f MB store_bytes %.1f MB",
               nd->name, m.rss_kb / 1024.0, m.anon_kb / 1024.0,
               m.file_kb / 1024.0, m.hwm_kb / 1024.0, s.index_bytes / 1048576.0,
               s.store_bytes / 1048576.0);
        if (raw_bytes > 0 && m.rss_kb)
            printf(" | VmRSS / raw index %.2f", m.rss_kb * 1024.0 / raw_bytes);
        printf("\n");
        res(" %s%s_rss_mb=%.1f %s%s_anon_mb=%.1f %s%s_file_mb=%.1f "
            "%s%s_index_mb=%.1f %s%s_store_mb=%.1f",
            tag, nd->name, m.rss_kb / 1024.0, tag, nd->name, m.anon_kb / 1024.0,
            tag, nd->name, m.file_kb / 1024.0, tag, nd->name,
            s.index_bytes / 1048576.0, tag, nd->name,
            s.store_bytes / 1048576.0);
    }
    (void)o;
}

/* `kbsync rebuild --to EP` (or a RebuildRequest), then waits until status
 * says rebuilding false with rebuilds incremented and the node is idle. */
/* Sends `kbsync rebuild --to EP` (or a RebuildRequest); *before = the
 * node's rebuild count before it. */
static int send_rebuild(const opts_t *o, nodeh_t *nd, uint64_t *before_out)
{
    nstat_t s;
    if (node_status(nd, &s))
        return 1;
    uint64_t before = s.rebuilds;
    *before_out = before;
    if (o->kbsync) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "'%s' rebuild --to '%s' >/dev/null", o->kbsync,
                 nd->ep);
        printf("rebuild: %s rebuild --to %s (rebuilds before: %llu)\n",
               o->kbsync, nd->ep, (unsigned long long)before);
        if (system(cmd) != 0) {
            fprintf(stderr, "kbsync rebuild failed\n");
            return 1;
        }
    } else {
        Kbsync__RebuildRequest rr = KBSYNC__REBUILD_REQUEST__INIT;
        Kbsync__Request req = KBSYNC__REQUEST__INIT;
        req.body_case = KBSYNC__REQUEST__BODY_REBUILD;
        req.rebuild = &rr;
        Kbsync__Response *r = NULL;
        char err[256];
        printf("rebuild: RebuildRequest to %s (rebuilds before: %llu)\n", nd->ep,
               (unsigned long long)before);
        if (qry_client_call(nd->cl, &req, 10000, &r, err, sizeof err) ||
            r->error) {
            fprintf(stderr, "rebuild: %s\n", r && r->error ? r->error->message
                                                           : err);
            if (r)
                kbsync__response__free_unpacked(r, NULL);
            return 1;
        }
        kbsync__response__free_unpacked(r, NULL);
    }
    return 0;
}

static int rebuild_phase(const opts_t *o, nodeh_t *nd, uint64_t version,
                         uint64_t vectors, double *secs, settle_t *st)
{
    uint64_t before;
    uint64_t t0 = kb_mono_us();
    if (send_rebuild(o, nd, &before))
        return 1;
    want_t w = {.version = version, .vectors = vectors, .rebuilds = before + 1};
    if (wait_settle(o, nd, 1, &w, t0, st, "rebuild"))
        return 1;
    *secs = st->idle;
    printf("  rebuild of %s done (rebuilding false, rebuilds %llu -> %llu) "
           "after %.2f s; vectors %llu, dead %llu, index %.1f MB\n",
           nd->name, (unsigned long long)before,
           (unsigned long long)st->last.rebuilds, st->idle,
           (unsigned long long)st->last.vectors,
           (unsigned long long)st->last.dead, st->last.index_bytes / 1e6);
    return 0;
}

/* Prints the "trained index" lines of a replica log (from byte offset
 * *off); returns the seconds of the last one (or -1) and its vectors. */
static double log_trained(const char *path, long *off, long *vectors)
{
    double secs = -1;
    if (!path)
        return -1;
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    if (off && *off)
        fseek(f, *off, SEEK_SET);
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, "trained index");
        if (!p)
            continue;
        line[strcspn(line, "\n")] = 0;
        printf("    log %s: %s\n", path, line);
        char *q = strstr(p, " on ");
        long nv;
        double s;
        if (q && sscanf(q, " on %ld vectors in %lf s", &nv, &s) == 2) {
            secs = s;
            if (vectors)
                *vectors = nv;
        }
    }
    if (off)
        *off = ftell(f);
    fclose(f);
    return secs;
}

/* ------------------------------------------------------------------------ */
/* checker thread: queries r1 during churn and rebuild                      */

typedef struct checker {
    const opts_t *o;
    const char *ep;
    const float *qs;
    int nq;
    atomic_int stop;
    answer_t *a;
    size_t n, cap;
    uint64_t errors;
    dvec_t lat;
    pthread_mutex_t mu;
} checker_t;

static void *checker_main(void *arg)
{
    checker_t *K = arg;
    const opts_t *o = K->o;
    qry_client_t *cl;
    char err[256];
    if (qry_client_open(K->ep, &cl, err, sizeof err)) {
        fprintf(stderr, "checker: %s\n", err);
        return NULL;
    }
    uint64_t period = o->check_qps ? 1000000u / (uint64_t)o->check_qps : 0;
    uint64_t next = kb_mono_us();
    for (int i = 0; !atomic_load(&K->stop); i++) {
        const float *q = K->qs + (size_t)(i % K->nq) * o->dim;
        answer_t a;
        double ms;
        if (served_query(o, cl, q, o->ef, 0, NULL, &a, &ms)) {
            K->errors++;
            sleep_ms(20);
        } else {
            a.qi = i % K->nq;
            pthread_mutex_lock(&K->mu);
            if (K->n == K->cap) {
                K->cap = K->cap ? K->cap * 2 : 4096;
                K->a = realloc(K->a, K->cap * sizeof *K->a);
                if (!K->a) {
                    fprintf(stderr, "checker: out of memory\n");
                    exit(1);
                }
            }
            K->a[K->n++] = a;
            dvec_push(&K->lat, ms);
            pthread_mutex_unlock(&K->mu);
        }
        next += period;
        uint64_t now = kb_mono_us();
        if (next > now)
            sleep_ms((int)((next - now) / 1000u));
        else
            next = now;
    }
    qry_client_close(&cl);
    return NULL;
}

/* Checks the checker's answers from index `from` on (all LSN ranges are
 * known by then). */
static void checker_check(const opts_t *o, checker_t *K, size_t from,
                          size_t to, viol_t *v)
{
    for (size_t i = from; i < to; i++)
        check_answer(o, &K->a[i], NULL, v);
}

/* Mean recall of the checker's answers [from, to) at version >= vmin
 * against exact (nq x k docs over the final live set). */
static double checker_recall(const opts_t *o, checker_t *K, size_t from,
                             size_t to, uint64_t vmin, const int32_t *exact,
                             uint64_t *n)
{
    double sum = 0;
    *n = 0;
    for (size_t i = from; i < to; i++) {
        const answer_t *a = &K->a[i];
        if (a->version < vmin)
            continue;
        sum += recall_of(exact + (size_t)a->qi * o->k, a->doc, a->nh, o->k);
        (*n)++;
    }
    return *n ? sum / (double)*n : 0;
}

/* ------------------------------------------------------------------------ */
/* mode hnsw                                                                */

static int mode_hnsw(opts_t *o)
{
    cluster_t C;
    if (cluster_open(o, &C))
        return 1;
    float *qa, *qb;
    make_data(o, &qa, &qb);
    settle_t st[BI_MAXNODES];
    uint64_t t0, last;
    printf("\n== 1c ingest\n");
    if (ingest_phase(o, &C, 0, &t0, st, &last))
        return 1;
    if (o->ingest_only) {
        print_mem(o, &C, "", 0);
        cluster_close(&C);
        return 0;
    }

    printf("\n== 1e memory (cluster idle, before any query)\n");
    print_mem(o, &C, "pq_", 0);

    printf("\n== exact reference (in-process IDMap2,Flat %s)\n", o->metric);
    uint64_t tb = kb_mono_us();
    idx_vec_t *ex = new_index(o, "IDMap2,Flat");
    if (!ex || add_docs(o, ex, 0, 0))
        return 1;
    size_t nk = (size_t)o->nq * (size_t)o->k;
    int32_t *exa = xmalloc(sizeof(int32_t) * nk), *exb = xmalloc(sizeof(int32_t) * nk);
    if (exact_topk(o, ex, qa, o->nq, NULL, exa) ||
        exact_topk(o, ex, qb, o->nq, NULL, exb))
        return 1;
    printf("  built and searched %d + %d queries in %.1f s\n", o->nq, o->nq,
           (double)(kb_mono_us() - tb) / 1e6);

    printf("\n== 1a/1b served (1 closed-loop client, ef_search %u, k %d)\n",
           o->ef, o->k);
    round_t s1a, s2a, s1b;
    served_round(o, &C.node[1], qa, o->nq, o->ef, 0, NULL, exa, &s1a);
    printf("  r1 other-seed queries: recall@%d %.4f; latency p50 %.3f ms p99 "
           "%.3f ms mean %.3f ms; %llu answers, %llu errors\n",
           o->k, s1a.recall, s1a.p50, s1a.p99, s1a.mean,
           (unsigned long long)s1a.answers, (unsigned long long)s1a.errors);
    viol_print("r1 checks", &s1a.v);
    served_round(o, &C.node[1], qb, o->nq, o->ef, 0, NULL, exb, &s1b);
    printf("  r1 same-cluster queries: recall@%d %.4f; latency p50 %.3f ms p99 "
           "%.3f ms\n",
           o->k, s1b.recall, s1b.p50, s1b.p99);
    memset(&s2a, 0, sizeof s2a);
    if (C.nn > 2) {
        served_round(o, &C.node[2], qa, o->nq, o->ef, 0, NULL, exa, &s2a);
        printf("  r2 other-seed queries: recall@%d %.4f; latency p50 %.3f ms "
               "p99 %.3f ms\n",
               o->k, s2a.recall, s2a.p50, s2a.p99);
    }
    res(" recall_r1=%.4f recall_r2=%.4f recall_r1_same=%.4f served_p50_ms=%.3f "
        "served_p99_ms=%.3f served_mean_ms=%.3f served_same_p50_ms=%.3f "
        "served_same_p99_ms=%.3f served_errors=%llu served_violations=%llu",
        s1a.recall, s2a.recall, s1b.recall, s1a.p50, s1a.p99, s1a.mean, s1b.p50,
        s1b.p99, (unsigned long long)(s1a.errors + s1b.errors + s2a.errors),
        (unsigned long long)(viol_total(&s1a.v) + viol_total(&s1b.v) +
                             viol_total(&s2a.v)));

    printf("\n== raw FAISS in-process: %s %s of the same %ld vectors, "
           "idx_vec_setup(1), ef_search %u, one query at a time\n",
           o->index, o->metric, o->n, o->ef);
    pmem_t m0, m1;
    proc_mem(0, &m0);
    tb = kb_mono_us();
    idx_vec_t *raw = new_index(o, o->index);
    if (!raw || add_docs(o, raw, 0, 1))
        return 1;
    double build_s = (double)(kb_mono_us() - tb) / 1e6;
    proc_mem(0, &m1);
    double raw_bytes = (double)idx_vec_bytes(raw);
    double rss_growth = (m1.rss_kb - m0.rss_kb) * 1024.0;
    printf("  built in %.1f s (%.0f vectors/s, 1 thread); idx_vec_bytes %.1f "
           "MB; RSS growth while building %.1f MB\n",
           build_s, o->n / build_s, raw_bytes / 1048576.0,
           rss_growth / 1048576.0);
    round_t ra, rb;
    raw_round(o, raw, qa, o->nq, o->ef, 0, NULL, exa, &ra);
    raw_round(o, raw, qb, o->nq, o->ef, 0, NULL, exb, &rb);
    printf("  other-seed queries: recall@%d %.4f; latency p50 %.3f ms p99 "
           "%.3f ms mean %.3f ms\n",
           o->k, ra.recall, ra.p50, ra.p99, ra.mean);
    printf("  same-cluster queries: recall@%d %.4f; latency p50 %.3f ms p99 "
           "%.3f ms\n",
           o->k, rb.recall, rb.p50, rb.p99);
    printf("  served / raw latency (served round before the raw build): p50 "
           "%.2fx  p99 %.2fx  mean %.2fx\n",
           s1a.p50 / ra.p50, s1a.p99 / ra.p99, s1a.mean / ra.mean);
    double i_s50, i_s99, i_r50, i_r99, j_s50, j_s99, j_r50, j_r99;
    interleaved(o, &C.node[1], raw, qa, o->nq, o->ef, &i_s50, &i_s99, &i_r50,
                &i_r99);
    interleaved(o, &C.node[1], raw, qb, o->nq, o->ef, &j_s50, &j_s99, &j_r50,
                &j_r99);
    printf("  interleaved (blocks of 50 served / 50 raw, same load), other-"
           "seed queries: served p50 %.3f ms p99 %.3f ms, raw p50 %.3f ms p99 "
           "%.3f ms: served/raw p50 %.2fx p99 %.2fx (target <= 1.3x)\n",
           i_s50, i_s99, i_r50, i_r99, i_s50 / i_r50, i_s99 / i_r99);
    printf("  interleaved, same-cluster queries: served p50 %.3f ms p99 %.3f "
           "ms, raw p50 %.3f ms p99 %.3f ms: served/raw p50 %.2fx p99 %.2fx\n",
           j_s50, j_s99, j_r50, j_r99, j_s50 / j_r50, j_s99 / j_r99);
    res(" il_served_p50_ms=%.3f il_served_p99_ms=%.3f il_raw_p50_ms=%.3f "
        "il_raw_p99_ms=%.3f il_ratio_p50=%.3f il_ratio_p99=%.3f "
        "il_same_served_p50_ms=%.3f il_same_raw_p50_ms=%.3f "
        "il_same_ratio_p50=%.3f il_same_ratio_p99=%.3f",
        i_s50, i_s99, i_r50, i_r99, i_s50 / i_r50, i_s99 / i_r99, j_s50, j_r50,
        j_s50 / j_r50, j_s99 / j_r99);
    res(" raw_build_s=%.1f raw_add_per_s=%.0f raw_index_mb=%.1f "
        "raw_rss_growth_mb=%.1f recall_raw=%.4f recall_raw_same=%.4f "
        "raw_p50_ms=%.3f raw_p99_ms=%.3f raw_mean_ms=%.3f "
        "lat_ratio_p50=%.3f lat_ratio_p99=%.3f lat_ratio_mean=%.3f",
        build_s, o->n / build_s, raw_bytes / 1048576.0, rss_growth / 1048576.0,
        ra.recall, rb.recall, ra.p50, ra.p99, ra.mean, s1a.p50 / ra.p50,
        s1a.p99 / ra.p99, s1a.mean / ra.mean);
    if (o->nefs) {
        printf("\n== ef_search sweep (other-seed / same-cluster queries; "
               "served r1 vs raw)\n");
        for (int e = 0; e < o->nefs; e++) {
            round_t sa, sb2, xa, xb;
            served_round(o, &C.node[1], qa, o->nq, o->efs[e], 0, NULL, exa, &sa);
            served_round(o, &C.node[1], qb, o->nq, o->efs[e], 0, NULL, exb, &sb2);
            raw_round(o, raw, qa, o->nq, o->efs[e], 0, NULL, exa, &xa);
            raw_round(o, raw, qb, o->nq, o->efs[e], 0, NULL, exb, &xb);
            printf("  ef %-4u served recall %.4f / %.4f p50 %.3f ms p99 %.3f "
                   "ms | raw recall %.4f / %.4f p50 %.3f ms p99 %.3f ms | "
                   "p50 ratio %.2f\n",
                   o->efs[e], sa.recall, sb2.recall, sa.p50, sa.p99, xa.recall,
                   xb.recall, xa.p50, xa.p99, sa.p50 / xa.p50);
            res(" ef%u_recall_r1=%.4f ef%u_recall_r1_same=%.4f "
                "ef%u_served_p50_ms=%.3f ef%u_recall_raw=%.4f "
                "ef%u_recall_raw_same=%.4f ef%u_raw_p50_ms=%.3f",
                o->efs[e], sa.recall, o->efs[e], sb2.recall, o->efs[e], sa.p50,
                o->efs[e], xa.recall, o->efs[e], xb.recall, o->efs[e], xa.p50);
        }
    }
    idx_vec_free(&raw);

    printf("\n== 1e memory vs the raw index (%.1f MB by idx_vec_bytes, %.1f "
           "MB by RSS growth)\n",
           raw_bytes / 1048576.0, rss_growth / 1048576.0);
    print_mem(o, &C, "", raw_bytes);
    if (C.node[1].pid) {
        pmem_t m;
        proc_mem(C.node[1].pid, &m);
        res(" r1_rss_over_raw=%.3f r1_anon_over_raw=%.3f", m.rss_kb * 1024.0 / raw_bytes,
            m.anon_kb * 1024.0 / raw_bytes);
    }

    /* ---- 1d churn ---- */
    printf("\n== 1d churn: replace %.0f%% (new vectors, text \"v2 ...\"), "
           "delete %.0f%%; checker on r1 at %d queries/s\n",
           o->replace_frac * 100, o->delete_frac * 100, o->check_qps);
    g_fate = xcalloc((size_t)o->n, 1);
    g_lo = xcalloc((size_t)o->n, sizeof *g_lo);
    g_hi = xcalloc((size_t)o->n, sizeof *g_hi);
    g_x2 = xmalloc(sizeof(float) * (size_t)o->n * (size_t)o->dim);
    long *rep = xmalloc(sizeof(long) * (size_t)o->n);
    long *del = xmalloc(sizeof(long) * (size_t)o->n);
    size_t nrep = 0, ndel = 0;
    for (long i = 0; i < o->n; i++) {
        double r = (double)(mix64((uint64_t)i ^ 0xc4e5ull) % 1000000u) / 1e6;
        if (r < o->replace_frac) {
            g_fate[i] = FATE_REPLACE;
            rep[nrep++] = i;
            /* a new vector of the same cluster */
            bench_vector(o->seed, (uint64_t)i + 50000000u, o->dim,
                         g_x2 + (size_t)i * o->dim);
        } else if (r < o->replace_frac + o->delete_frac) {
            g_fate[i] = FATE_DELETE;
            del[ndel++] = i;
        }
    }
    /* the new vector of doc i must stay in cluster i % 64: 50000000 % 64 == 0 */
    uint64_t live = (uint64_t)o->n - ndel;
    nstat_t sb[BI_MAXNODES];
    for (int i = 0; i < C.nn; i++)
        node_status(&C.node[i], &sb[i]);
    checker_t K = {.o = o, .ep = C.node[1].ep, .qs = qa, .nq = o->nq};
    pthread_mutex_init(&K.mu, NULL);
    pthread_t kt;
    int checker_on = o->check_qps > 0;
    if (checker_on)
        pthread_create(&kt, NULL, checker_main, &K);
    uint64_t tc = kb_mono_us(), last2 = last;
    if (send_all(o, C.node[0].cl, rep, nrep, OP_UP1, g_lo, g_hi, &last2) ||
        send_all(o, C.node[0].cl, del, ndel, OP_DEL, g_lo, g_hi, &last2))
        return 1;
    double churn_ack = (double)(kb_mono_us() - tc) / 1e6;
    printf("  %zu replaced + %zu deleted, acked in %.2f s; last LSN %llu; "
           "live docs %llu\n",
           nrep, ndel, churn_ack, (unsigned long long)last2,
           (unsigned long long)live);
    want_t w = {.version = last2, .vectors = live};
    settle_t sc[BI_MAXNODES];
    if (wait_settle(o, C.node, C.nn, &w, tc, sc, "churn"))
        return 1;
    for (int i = 0; i < C.nn; i++)
        printf("  %-6s applied %.2f s, status idle %.2f s, CPU quiet %.2f s "
               "after the first churn write; vectors %llu dead %llu rebuilds "
               "%llu -> %llu (automatic)\n",
               C.node[i].name, sc[i].applied, sc[i].merged, sc[i].idle,
               (unsigned long long)sc[i].last.vectors,
               (unsigned long long)sc[i].last.dead,
               (unsigned long long)sb[i].rebuilds,
               (unsigned long long)sc[i].last.rebuilds);
    res(" churn_status_max_ms_leader=%.1f churn_status_max_ms_r1=%.1f",
        sc[0].st_max, sc[1].st_max);
    res(" churn_replaced=%zu churn_deleted=%zu churn_ack_s=%.2f "
        "churn_r1_applied_s=%.2f churn_r1_idle_s=%.2f churn_r1_dead=%llu "
        "churn_r1_auto_rebuilds=%llu",
        nrep, ndel, churn_ack, sc[1].applied, sc[1].idle,
        (unsigned long long)sc[1].last.dead,
        (unsigned long long)(sc[1].last.rebuilds - sb[1].rebuilds));

    /* exact over the live set */
    {
        int64_t *rm = xmalloc(sizeof(int64_t) * (nrep + ndel));
        for (size_t i = 0; i < nrep; i++)
            rm[i] = rep[i];
        for (size_t i = 0; i < ndel; i++)
            rm[nrep + i] = del[i];
        char err[256];
        idx_vec_remove(ex, nrep + ndel, rm, err, sizeof err);
        free(rm);
        float *x = xmalloc(sizeof(float) * (size_t)o->dim * 1000);
        int64_t *lab = xmalloc(sizeof(int64_t) * 1000);
        for (size_t i = 0; i < nrep;) {
            size_t m = 0;
            for (; m < 1000 && i < nrep; m++, i++) {
                memcpy(x + m * o->dim, doc_vec(rep[i], 1),
                       sizeof(float) * (size_t)o->dim);
                lab[m] = o->n + rep[i];
            }
            if (idx_vec_add(ex, m, x, lab, err, sizeof err)) {
                fprintf(stderr, "exact add: %s\n", err);
                return 1;
            }
        }
        free(x);
        free(lab);
        if (exact_topk(o, ex, qa, o->nq, NULL, exa) ||
            exact_topk(o, ex, qb, o->nq, NULL, exb))
            return 1;
    }
    round_t c1, c2, c1b;
    served_round(o, &C.node[1], qa, o->nq, o->ef, 0, NULL, exa, &c1);
    memset(&c2, 0, sizeof c2);
    if (C.nn > 2)
        served_round(o, &C.node[2], qa, o->nq, o->ef, 0, NULL, exa, &c2);
    printf("  served after churn: r1 recall@%d %.4f (p50 %.3f ms p99 %.3f "
           "ms), r2 recall@%d %.4f\n",
           o->k, c1.recall, c1.p50, c1.p99, o->k, c2.recall);
    viol_print("r1 checks after churn", &c1.v);
    served_round(o, &C.node[1], qb, o->nq, o->ef, 0, NULL, exb, &c1b);
    printf("  served after churn, same-cluster queries: r1 recall@%d %.4f\n",
           o->k, c1b.recall);
    viol_print("r1 checks after churn (same-cluster queries)", &c1b.v);
    if (C.nn > 2)
        viol_print("r2 checks after churn", &c2.v);
    round_t fr = {0}, frb = {0};
    idx_vec_t *fresh = NULL;
    if (!o->no_fresh) {
        tb = kb_mono_us();
        fresh = new_index(o, o->index);
        if (!fresh || add_docs(o, fresh, 1, 1))
            return 1;
        double fb = (double)(kb_mono_us() - tb) / 1e6;
        raw_round(o, fresh, qa, o->nq, o->ef, 0, NULL, exa, &fr);
        raw_round(o, fresh, qb, o->nq, o->ef, 0, NULL, exb, &frb);
        printf("  fresh in-process %s of the %llu live docs (built in %.1f "
               "s): recall@%d %.4f (same-cluster queries %.4f); p50 %.3f ms\n",
               o->index, (unsigned long long)live, fb, o->k, fr.recall,
               frb.recall, fr.p50);
        printf("  served - fresh, same-cluster queries: r1 %+.4f\n",
               c1b.recall - frb.recall);
        printf("  served - fresh recall: r1 %+.4f  r2 %+.4f (target: within "
               "0.01)\n",
               c1.recall - fr.recall, C.nn > 2 ? c2.recall - fr.recall : 0);
        res(" fresh_build_s=%.1f", fb);
    }
    res(" recall_churn_r1=%.4f recall_churn_r2=%.4f recall_fresh=%.4f "
        "churn_diff_r1=%.4f churn_diff_r2=%.4f churn_violations=%llu "
        "recall_churn_r1_same=%.4f recall_fresh_same=%.4f "
        "churn_diff_r1_same=%.4f churn_p50_ms=%.3f churn_p99_ms=%.3f",
        c1.recall, c2.recall, fr.recall, c1.recall - fr.recall,
        C.nn > 2 ? c2.recall - fr.recall : 0,
        (unsigned long long)(viol_total(&c1.v) + viol_total(&c2.v) +
                             viol_total(&c1b.v)),
        c1b.recall, frb.recall, c1b.recall - frb.recall, c1.p50, c1.p99);
    idx_vec_free(&fresh);
    size_t k_churn_end;
    pthread_mutex_lock(&K.mu);
    k_churn_end = K.n;
    pthread_mutex_unlock(&K.mu);

    /* ---- rebuild ---- */
    round_t rr = {0}, rrb = {0};
    if (!o->no_rebuild) {
        printf("\n== 1d after `kbsync rebuild --to r1`\n");
        double rb_s = 0;
        settle_t srb;
        if (rebuild_phase(o, &C.node[1], last2, live, &rb_s, &srb))
            return 1;
        served_round(o, &C.node[1], qa, o->nq, o->ef, 0, NULL, exa, &rr);
        printf("  served after rebuild: r1 recall@%d %.4f (p50 %.3f ms p99 "
               "%.3f ms); served - fresh %+.4f\n",
               o->k, rr.recall, rr.p50, rr.p99, rr.recall - fr.recall);
        viol_print("r1 checks after rebuild", &rr.v);
        served_round(o, &C.node[1], qb, o->nq, o->ef, 0, NULL, exb, &rrb);
        printf("  same-cluster queries after rebuild: r1 recall@%d %.4f; "
               "served - fresh %+.4f\n",
               o->k, rrb.recall, rrb.recall - frb.recall);
        viol_print("r1 checks after rebuild (same-cluster queries)", &rrb.v);
        print_mem(o, &C, "rb_", 0);
        res(" rebuild_s=%.2f rebuild_dead_after=%llu rebuild_vectors_after=%llu "
            "recall_rebuild_r1=%.4f rebuild_diff_r1=%.4f rebuild_p50_ms=%.3f "
            "rebuild_p99_ms=%.3f rebuild_violations=%llu "
            "recall_rebuild_r1_same=%.4f rebuild_diff_r1_same=%.4f",
            rb_s, (unsigned long long)srb.last.dead,
            (unsigned long long)srb.last.vectors, rr.recall,
            rr.recall - fr.recall, rr.p50, rr.p99,
            (unsigned long long)(viol_total(&rr.v) + viol_total(&rrb.v)),
            rrb.recall, rrb.recall - frb.recall);
    }
    if (checker_on) {
        atomic_store(&K.stop, 1);
        pthread_join(kt, NULL);
        viol_t v1 = {0}, v2 = {0};
        checker_check(o, &K, 0, k_churn_end, &v1);
        checker_check(o, &K, k_churn_end, K.n, &v2);
        /* latencies of the two phases (K.lat is index-aligned with K.a) */
        dvec_t l1 = {0}, l2 = {0};
        for (size_t i = 0; i < K.lat.n; i++)
            dvec_push(i < k_churn_end ? &l1 : &l2, K.lat.v[i]);
        double p50 = bench_pct(l1.v, l1.n, 50), p99 = bench_pct(l1.v, l1.n, 99),
               mx = bench_pct(l1.v, l1.n, 100);
        double q50 = bench_pct(l2.v, l2.n, 50), q99 = bench_pct(l2.v, l2.n, 99),
               qmx = bench_pct(l2.v, l2.n, 100);
        printf("\n== checker on r1 (queried during churn, merging, %s)\n",
               o->no_rebuild ? "no rebuild" : "the rebuild");
        viol_print("during churn + merge", &v1);
        printf("      latency p50 %.3f ms p99 %.3f ms max %.3f ms\n", p50, p99,
               mx);
        viol_print("during rebuild", &v2);
        printf("      latency p50 %.3f ms p99 %.3f ms max %.3f ms\n", q50, q99,
               qmx);
        printf("    checker errors: %llu\n", (unsigned long long)K.errors);
        dvec_free(&l1);
        dvec_free(&l2);
        uint64_t n1, n2;
        double cr1 = checker_recall(o, &K, 0, k_churn_end, last2, exa, &n1);
        double cr2 = checker_recall(o, &K, k_churn_end, K.n, last2, exa, &n2);
        printf("    recall@%d of the checker's answers once all churn was "
               "applied (before the settled rounds: tombstoned index + delta, "
               "automatic rebuild running): %.4f over %llu answers; during "
               "`kbsync rebuild`: %.4f over %llu\n",
               o->k, cr1, (unsigned long long)n1, cr2, (unsigned long long)n2);
        res(" checker_churn_recall=%.4f checker_churn_recall_n=%llu "
            "checker_rebuild_recall=%.4f",
            cr1, (unsigned long long)n1, cr2);
        viol_t all = v1;
        viol_merge(&all, &v2);
        res(" checker_answers=%llu checker_violations=%llu "
            "checker_rebuild_answers=%llu checker_rebuild_violations=%llu "
            "checker_errors=%llu checker_churn_p50_ms=%.3f "
            "checker_churn_p99_ms=%.3f checker_churn_max_ms=%.3f "
            "checker_rebuild_p50_ms=%.3f checker_rebuild_p99_ms=%.3f "
            "checker_rebuild_max_ms=%.3f",
            (unsigned long long)all.answers,
            (unsigned long long)viol_total(&all),
            (unsigned long long)v2.answers,
            (unsigned long long)viol_total(&v2),
            (unsigned long long)K.errors, p50, p99, mx, q50, q99, qmx);
        free(K.a);
        dvec_free(&K.lat);
    }
    uint64_t all_viol = viol_total(&s1a.v) + viol_total(&s1b.v) +
                        viol_total(&s2a.v) + viol_total(&c1.v) +
                        viol_total(&c2.v) + viol_total(&rr.v) +
                        viol_total(&c1b.v) + viol_total(&rrb.v);
    double both = 0;
    for (int i = 1; i < C.nn; i++)
        if (st[i].applied > both)
            both = st[i].applied;
    printf("\ntargets: recall@%d r1 %.4f (>= 0.95: %s); served/raw p50 "
           "interleaved %.2fx (<= 1.3: %s); ingest %.0f docs/s (>= 1500: %s); "
           "violations %llu\n",
           o->k, s1a.recall, s1a.recall >= 0.95 ? "PASS" : "MISS",
           i_s50 / i_r50, i_s50 / i_r50 <= 1.3 ? "PASS" : "MISS",
           (double)o->n / both, (double)o->n / both >= 1500 ? "PASS" : "MISS",
           (unsigned long long)all_viol);
    (void)all_viol;
    idx_vec_free(&ex);
    free(exa);
    free(exb);
    free(rep);
    free(del);
    free(qa);
    free(qb);
    cluster_close(&C);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* mode ivf                                                                 */

/* 0 (the node's default) and the --nprobes values up to nlist. */
static int nprobe_list(const opts_t *o, uint32_t *list)
{
    const char *p = strstr(o->index, "IVF");
    unsigned long nlist = p ? strtoul(p + 3, NULL, 10) : 0;
    int nl = 0;
    list[nl++] = 0;
    for (int i = 0; i < o->nnprobe; i++)
        if (!nlist || o->nprobe[i] <= nlist)
            list[nl++] = o->nprobe[i];
    return nl;
}

static void ivf_rounds(const opts_t *o, nodeh_t *nd, const float *qa,
                       const int32_t *exa, const char *tag)
{
    uint32_t list[BI_MAXNPROBE + 1];
    int nl = nprobe_list(o, list);
    for (int i = 0; i < nl; i++) {
        round_t R;
        served_round(o, nd, qa, o->nq, 0, list[i], NULL, exa, &R);
        printf("  %s %s nprobe %-4u%s recall@%d %.4f  p50 %.3f ms  p99 %.3f "
               "ms  hits/answer %.2f  violations %llu  errors %llu\n",
               tag, nd->name, list[i], list[i] ? "" : " (default)", o->k,
               R.recall, R.p50, R.p99, R.hits_mean,
               (unsigned long long)viol_total(&R.v),
               (unsigned long long)R.errors);
        if (viol_total(&R.v))
            viol_print("checks", &R.v);
        res(" %s_%s_np%u_recall=%.4f %s_%s_np%u_p50_ms=%.3f "
            "%s_%s_np%u_p99_ms=%.3f",
            tag, nd->name, list[i], R.recall, tag, nd->name, list[i], R.p50,
            tag, nd->name, list[i], R.p99);
    }
}

static int mode_ivf(opts_t *o)
{
    cluster_t C;
    if (cluster_open(o, &C))
        return 1;
    float *qa, *qb;
    make_data(o, &qa, &qb);
    settle_t st[BI_MAXNODES];
    uint64_t t0, last;
    printf("\n== ingest (the replicas train the IVF in the background)\n");
    if (ingest_phase(o, &C, 0, &t0, st, &last))
        return 1;
    /* Automatic training: wait up to --train-wait-s after every node is
     * idle; a node still untrained then gets an explicit rebuild (and the
     * figures say so). */
    {
        uint64_t tw = kb_mono_us();
        int forced[BI_MAXNODES] = {0}, nforced = 0;
        for (;;) {
            int untrained = 0;
            for (int i = 0; i < C.nn; i++) {
                nstat_t s;
                if (node_status(&C.node[i], &s))
                    continue;
                if (s.trained && st[i].trained < 0)
                    st[i].trained = (double)(kb_mono_us() - t0) / 1e6;
                if (!s.trained || s.rebuilding)
                    untrained++;
            }
            if (!untrained ||
                kb_mono_us() - tw > (uint64_t)o->train_wait_s * 1000000u)
                break;
            sleep_ms(100);
        }
        uint64_t tf = kb_mono_us();
        for (int i = 0; i < C.nn; i++) {
            if (st[i].trained >= 0)
                continue;
            printf("  %s: index_trained still false %d s after the node was "
                   "idle with all %ld docs (%.1f s after the first write): the "
                   "automatic training did not start; sending `kbsync "
                   "rebuild`\n",
                   C.node[i].name, o->train_wait_s, o->n,
                   (double)(tf - t0) / 1e6);
            uint64_t b;
            if (send_rebuild(o, &C.node[i], &b))
                return 1;
            forced[i] = 1;
            nforced++;
        }
        res(" auto_train_missing=%d", nforced);
        if (nforced) {
            want_t w = {.version = last, .vectors = (uint64_t)o->n,
                        .trained = 1};
            settle_t sf[BI_MAXNODES];
            if (wait_settle(o, C.node, C.nn, &w, tf, sf, "forced training"))
                return 1;
            for (int i = 0; i < C.nn; i++)
                if (forced[i]) {
                    printf("  %s trained by the explicit rebuild %.2f s after "
                           "it was sent\n",
                           C.node[i].name, sf[i].trained);
                    res(" %s_forced_train_s=%.2f", C.node[i].name,
                        sf[i].trained);
                }
        }
    }
    long offs[BI_MAXNODES] = {0};
    for (int i = 1; i < C.nn; i++) {
        long nv = 0;
        double s = log_trained(C.node[i].log, &offs[i], &nv);
        double after = st[i].trained >= 0 ? st[i].trained - st[i].applied : -1;
        printf("  %s: index_trained true %.2f s after the first write, %.2f "
               "s after it applied the last write; last log training: %.2f "
               "s on %ld vectors\n",
               C.node[i].name, st[i].trained, after, s, nv);
        res(" %s_trained_s=%.2f %s_trained_after_ingest_s=%.2f "
            "%s_log_train_s=%.2f %s_log_train_vectors=%ld",
            C.node[i].name, st[i].trained, C.node[i].name, after,
            C.node[i].name, s, C.node[i].name, nv);
    }
    print_mem(o, &C, "", 0);

    printf("\n== exact reference (in-process IDMap2,Flat %s)\n", o->metric);
    idx_vec_t *ex = new_index(o, "IDMap2,Flat");
    if (!ex || add_docs(o, ex, 0, 0))
        return 1;
    size_t nk = (size_t)o->nq * (size_t)o->k;
    int32_t *exa = xmalloc(sizeof(int32_t) * nk), *exb = xmalloc(sizeof(int32_t) * nk);
    if (exact_topk(o, ex, qa, o->nq, NULL, exa) ||
        exact_topk(o, ex, qb, o->nq, NULL, exb))
        return 1;
    idx_vec_free(&ex);

    printf("\n== served, as trained in the background during ingest (other-"
           "seed queries, 1 client)\n");
    ivf_rounds(o, &C.node[1], qa, exa, "bg");
    {
        round_t R;
        served_round(o, &C.node[1], qb, o->nq, 0, 0, NULL, exb, &R);
        printf("  bg r1 same-cluster queries, nprobe default: recall@%d %.4f "
               "p50 %.3f ms\n",
               o->k, R.recall, R.p50);
        res(" bg_r1_same_recall=%.4f", R.recall);
    }
    if (!o->no_rebuild) {
        printf("\n== `kbsync rebuild --to r1` (retrains on all %ld)\n", o->n);
        double rb_s;
        settle_t srb;
        if (rebuild_phase(o, &C.node[1], last, (uint64_t)o->n, &rb_s, &srb))
            return 1;
        long nv = 0;
        double s = log_trained(C.node[1].log, &offs[1], &nv);
        printf("  rebuild took %.2f s; its training (log): %.2f s on %ld "
               "vectors\n",
               rb_s, s, nv);
        res(" rebuild_s=%.2f rebuild_log_train_s=%.2f "
            "rebuild_log_train_vectors=%ld",
            rb_s, s, nv);
        ivf_rounds(o, &C.node[1], qa, exa, "rb");
    }

    printf("\n== raw FAISS in-process: %s %s of the same %ld vectors, "
           "idx_vec_setup(1)\n",
           o->index, o->metric, o->n);
    idx_vec_t *raw = new_index(o, o->index);
    if (!raw)
        return 1;
    char err[512];
    uint64_t tb = kb_mono_us();
    if (idx_vec_needs_training(raw) &&
        idx_vec_train(raw, (size_t)o->n, g_x, err, sizeof err)) {
        fprintf(stderr, "raw train: %s\n", err);
        return 1;
    }
    double train_s = (double)(kb_mono_us() - tb) / 1e6;
    tb = kb_mono_us();
    if (add_docs(o, raw, 0, 0))
        return 1;
    double add_s = (double)(kb_mono_us() - tb) / 1e6;
    printf("  trained on %ld in %.2f s, added in %.2f s; %.1f MB\n", o->n,
           train_s, add_s, idx_vec_bytes(raw) / 1048576.0);
    res(" raw_train_s=%.2f raw_add_s=%.2f raw_index_mb=%.1f", train_s, add_s,
        idx_vec_bytes(raw) / 1048576.0);
    uint32_t list[BI_MAXNPROBE + 1];
    int nl = nprobe_list(o, list);
    for (int i = 0; i < nl; i++) {
        round_t R;
        raw_round(o, raw, qa, o->nq, 0, list[i], NULL, exa, &R);
        printf("  raw nprobe %-4u%s recall@%d %.4f  p50 %.3f ms  p99 %.3f ms\n",
               list[i], list[i] ? "" : " (default)", o->k, R.recall, R.p50,
               R.p99);
        res(" raw_np%u_recall=%.4f raw_np%u_p50_ms=%.3f raw_np%u_p99_ms=%.3f",
            list[i], R.recall, list[i], R.p50, list[i], R.p99);
    }
    idx_vec_free(&raw);
    free(exa);
    free(exb);
    free(qa);
    free(qb);
    cluster_close(&C);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* mode filter                                                              */

static int mode_filter(opts_t *o)
{
    cluster_t C;
    if (cluster_open(o, &C))
        return 1;
    g_meta_filter = 1;
    float *qa, *qb;
    make_data(o, &qa, &qb);
    long nb = 0, nh = 0;
    for (long i = 0; i < o->n; i++) {
        nb += doc_bucket(i) == 7;
        nh += doc_half(i) == 1;
    }
    printf("metadata: {\"source\": \"bench\", \"n\": i, \"bucket\": "
           "hash(i) %% 100, \"half\": \"a\"|\"b\"}; bucket=7 holds %ld docs "
           "(%.2f%%), half=a %ld (%.1f%%)\n",
           nb, 100.0 * nb / o->n, nh, 100.0 * nh / o->n);
    res(" bucket7_docs=%ld half_a_docs=%ld", nb, nh);
    settle_t st[BI_MAXNODES];
    uint64_t t0, last;
    printf("\n== ingest\n");
    if (ingest_phase(o, &C, 0, &t0, st, &last))
        return 1;
    print_mem(o, &C, "", 0);

    idx_vec_t *ex = new_index(o, "IDMap2,Flat");
    if (!ex || add_docs(o, ex, 0, 0))
        return 1;
    const fspec_t fs[3] = {{F_NONE, 0}, {F_BUCKET, 7}, {F_HALF, 1}};
    const char *fname[3] = {"none", "bucket", "half"};
    const char *fdesc[3] = {"unfiltered", "bucket=7 (1%)", "half=a (50%)"};
    size_t nk = (size_t)o->nq * (size_t)o->k;
    int32_t *exf[3];
    for (int f = 0; f < 3; f++) {
        exf[f] = xmalloc(sizeof(int32_t) * nk);
        if (exact_topk(o, ex, qa, o->nq, &fs[f], exf[f]))
            return 1;
    }
    printf("\n== served by r1 (1 closed-loop client, k %d, %s index)\n", o->k,
           o->index);
    round_t S[3], Rw[3];
    for (int f = 0; f < 3; f++) {
        served_round(o, &C.node[1], qa, o->nq, o->ef, 0, &fs[f], exf[f], &S[f]);
        printf("  %-14s p50 %.3f ms  p99 %.3f ms  mean %.3f ms; recall@%d vs "
               "exact filtered %.4f; hits/answer %.2f\n",
               fdesc[f], S[f].p50, S[f].p99, S[f].mean, o->k, S[f].recall,
               S[f].hits_mean);
        viol_print("checks (exactly k hits, all matching, ids/texts/scores)",
                   &S[f].v);
        res(" served_%s_p50_ms=%.3f served_%s_p99_ms=%.3f "
            "served_%s_recall=%.4f served_%s_violations=%llu "
            "served_%s_errors=%llu",
            fname[f], S[f].p50, fname[f], S[f].p99, fname[f], S[f].recall,
            fname[f], (unsigned long long)viol_total(&S[f].v), fname[f],
            (unsigned long long)S[f].errors);
    }
    for (int f = 1; f < 3; f++) {
        printf("  %s / unfiltered: p50 %.2fx  p99 %.2fx (target <= 2x)\n",
               fdesc[f], S[f].p50 / S[0].p50, S[f].p99 / S[0].p99);
        res(" ratio_%s_p50=%.3f ratio_%s_p99=%.3f", fname[f],
            S[f].p50 / S[0].p50, fname[f], S[f].p99 / S[0].p99);
    }

    printf("\n== raw FAISS in-process (IDMap2,Flat %s, idx_vec_setup(1), "
           "single queries; filters as an allow() predicate)\n",
           o->metric);
    for (int f = 0; f < 3; f++) {
        raw_round(o, ex, qa, o->nq, 0, 0, &fs[f], exf[f], &Rw[f]);
        printf("  %-14s p50 %.3f ms  p99 %.3f ms; recall %.4f\n", fdesc[f],
               Rw[f].p50, Rw[f].p99, Rw[f].recall);
        res(" raw_%s_p50_ms=%.3f raw_%s_p99_ms=%.3f", fname[f], Rw[f].p50,
            fname[f], Rw[f].p99);
    }
    {
        /* the 1% case as exact scoring of the candidate list */
        int64_t *cand = xmalloc(sizeof(int64_t) * (size_t)nb);
        float *sc = xmalloc(sizeof(float) * (size_t)nb);
        long m = 0;
        for (long i = 0; i < o->n; i++)
            if (doc_bucket(i) == 7)
                cand[m++] = i;
        dvec_t lat = {0};
        char err[256];
        for (int i = 0; i < o->nq; i++) {
            uint64_t a = kb_mono_us();
            idx_vec_score_labels(ex, qa + (size_t)i * o->dim, (size_t)m, cand,
                                 sc, err, sizeof err);
            /* top-k selection of m scores */
            float best[BI_MAXK];
            for (int j = 0; j < o->k; j++)
                best[j] = -FLT_MAX;
            for (long j = 0; j < m; j++) {
                float s = o->metric_id == IDX_METRIC_L2 ? -sc[j] : sc[j];
                if (s > best[o->k - 1]) {
                    int p = o->k - 1;
                    while (p > 0 && best[p - 1] < s) {
                        best[p] = best[p - 1];
                        p--;
                    }
                    best[p] = s;
                }
            }
            dvec_push(&lat, (double)(kb_mono_us() - a) / 1000.0);
        }
        double p50 = bench_pct(lat.v, lat.n, 50), p99 = bench_pct(lat.v, lat.n, 99);
        printf("  bucket=7 as idx_vec_score_labels over its %ld candidates + "
               "top-k: p50 %.3f ms  p99 %.3f ms\n",
               m, p50, p99);
        res(" raw_bucket_cand_p50_ms=%.3f raw_bucket_cand_p99_ms=%.3f", p50,
            p99);
        dvec_free(&lat);
        free(cand);
        free(sc);
    }
    idx_vec_free(&ex);
    for (int f = 0; f < 3; f++)
        free(exf[f]);
    free(qa);
    free(qb);
    cluster_close(&C);
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
    idx_vec_setup(1);
    res("RESULT mode=%s label=%s n=%ld dim=%d k=%d nq=%d metric=%s index=%s "
        "ef=%u batch=%d window=%d",
        o.mode, o.label, o.n, o.dim, o.k, o.nq, o.metric, o.index, o.ef,
        o.batch, o.window);
    printf("bench_index %s: %ld x %d, k %d, metric %s, raw index %s, %d "
           "replicas (synthetic clustered vectors, bench_common.h)\n",
           o.mode, o.n, o.dim, o.k, o.metric, o.index, o.nrep);
    int rc;
    if (!strcmp(o.mode, "hnsw"))
        rc = mode_hnsw(&o);
    else if (!strcmp(o.mode, "ivf"))
        rc = mode_ivf(&o);
    else
        rc = mode_filter(&o);
    res(" rc=%d", rc);
    printf("%s\n", g_result);
    return rc;
}
