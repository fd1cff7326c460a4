/* bench_ckpt: index checkpoints (issue 9, item 4), in one process through
 * idx.h. Prints figures; asserts nothing.
 *
 *   bench_ckpt restart DIR  builds (or reuses) a knowledge base of N docs
 *                           (bench_vector(1, i), dim 384, metadata {"source":
 *                           "bench", "n": i}), takes a checkpoint, then
 *                           writes --tail more operations (replaces of
 *                           existing docs; a tenth deletes) and dies by
 *                           SIGKILL in a child process: no close-time
 *                           checkpoint. The parent then times idx_open()
 *                           until the first query is answered, with the
 *                           checkpoint and (--rebuild) without it.
 *   bench_ckpt open DIR     one timed open of DIR (--rebuild: without its
 *                           checkpoint), no close.
 *   bench_ckpt p99 DIR      opens DIR, runs --clients query threads (single
 *                           queries, k 10, back to back) and measures their
 *                           latency outside checkpoints and while the
 *                           background checkpoint thread writes (--rounds
 *                           checkpoints, started through idx_maintain() as
 *                           the node loop does).
 *
 * The files stay in the page cache between the kill and the restart, as
 * they do when a node is restarted on the same machine.
 * Last line: RESULT key=value ... */
#include "bench_common.h"
#include "idx.h"
#include "kb_err.h"
#include "kb_util.h"

#include <getopt.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#define DIM 384

typedef struct opts {
    const char *mode, *dir, *index;
    uint64_t n, tail;
    int rebuild, clients, rounds, threads;
} opts_t;

static void die(const char *what, const char *err)
{
    fprintf(stderr, "bench_ckpt: %s: %s\n", what, err);
    exit(1);
}

static idx_kb_t *open_kb(const opts_t *o, int ckpt_off)
{
    idx_config_t c = {.dir = o->dir,
                      .dim = DIM,
                      .metric = "ip",
                      .index = o->index,
                      .nosync = 1,
                      .ckpt_ops = IDX_CKPT_NEVER,
                      .ckpt_off = ckpt_off};
    idx_kb_t *ix;
    char err[512];
    if (idx_open(&c, &ix, err, sizeof err))
        die("open", err);
    return ix;
}

/* Upserts docs [from, to) with vector seed vseed (a delete for every
 * tenth doc when del is set). */
static void put(idx_kb_t *ix, uint64_t from, uint64_t to, uint64_t vseed,
                int del)
{
    enum { B = 1000 };
    static float v[B * DIM];
    static char ids[B][32], meta[B][64];
    idx_op_t ops[B];
    uint64_t lsns[B];
    for (uint64_t b = from; b < to; b += B) {
        size_t n = to - b < B ? (size_t)(to - b) : B;
        for (size_t i = 0; i < n; i++) {
            uint64_t d = b + i;
            snprintf(ids[i], sizeof ids[i], "doc-%llu", (unsigned long long)d);
            snprintf(meta[i], sizeof meta[i],
                     "{\"source\":\"bench\",\"n\":%llu}",
                     (unsigned long long)d);
            bench_vector(vseed, d, DIM, v + i * DIM);
            ops[i] = (idx_op_t){IDX_OP_UPSERT, ids[i], NULL, v + i * DIM, DIM,
                                meta[i]};
            if (del && d % 10 == 0)
                ops[i] = (idx_op_t){IDX_OP_DELETE, ids[i], NULL, NULL, 0,
                                    NULL};
        }
        char err[512];
        if (idx_write(ix, ops, n, 0, lsns, NULL, NULL, err, sizeof err))
            die("write", err);
    }
}

static double query_ms(idx_kb_t *ix, uint64_t j)
{
    float q[DIM];
    bench_vector(777, j, DIM, q);
    idx_hits_t h;
    char err[512];
    uint64_t t0 = kb_mono_us();
    if (idx_search(ix, q, NULL, 0, 10, &h, err, sizeof err))
        die("search", err);
    idx_hits_free(&h);
    return (double)(kb_mono_us() - t0) / 1e3;
}

/* Child: the knowledge base, a checkpoint, the tail, then SIGKILL. */
static void build_and_die(const opts_t *o)
{
    idx_kb_t *ix = open_kb(o, 0);
    idx_stats_t st;
    idx_stats(ix, &st);
    if (st.docs < o->n) {
        uint64_t t0 = kb_mono_us();
        put(ix, st.docs, o->n, 1, 0);
        printf("built %llu docs in %.1f s\n", (unsigned long long)o->n,
               (double)(kb_mono_us() - t0) / 1e6);
    }
    /* The merger first moves everything into FAISS (an HNSW graph takes a
     * while): the checkpoint then holds a complete index. */
    uint64_t t0 = kb_mono_us();
    do {
        idx_maintain(ix);
        usleep(100000);
        idx_stats(ix, &st);
    } while (st.unmerged || st.rebuilding);
    printf("index settled after %.1f s more\n",
           (double)(kb_mono_us() - t0) / 1e6);
    char err[512];
    t0 = kb_mono_us();
    if (idx_checkpoint(ix, err, sizeof err))
        die("checkpoint", err);
    idx_stats(ix, &st);
    printf("checkpoint of version %llu written in %.2f s (idx_checkpoint, "
           "foreground)\n",
           (unsigned long long)st.ckpt_lsn, (double)(kb_mono_us() - t0) / 1e6);
    /* The tail: replaces of the newest docs, a tenth of them deletes. */
    put(ix, o->n - o->tail, o->n, 2 + st.version, 1);
    idx_stats(ix, &st);
    printf("tail: %llu operations after the checkpoint; killed\n",
           (unsigned long long)(st.version - st.ckpt_lsn));
    fflush(stdout);
    kill(getpid(), SIGKILL);
}

static double restart_s(const opts_t *o, int ckpt_off, idx_stats_t *st)
{
    uint64_t t0 = kb_mono_us();
    idx_kb_t *ix = open_kb(o, ckpt_off);
    query_ms(ix, 0);
    double s = (double)(kb_mono_us() - t0) / 1e6;
    idx_stats(ix, st);
    /* No close: a checkpoint at close would change the next run. */
    return s;
}

static int run_restart(const opts_t *o)
{
    pid_t pid = fork();
    if (pid == 0)
        build_and_die(o);
    int ws;
    waitpid(pid, &ws, 0);
    if (!WIFSIGNALED(ws))
        die("child", "did not die by SIGKILL");
    idx_stats_t st;
    double with = restart_s(o, 0, &st);
    printf("restart with checkpoint: %.3f s to the first answer (index "
           "opened in %.3f s, from checkpoint: %s, covering %llu of %llu, "
           "%llu unmerged)\n",
           with, st.rebuild_s, st.ckpt_loaded ? "yes" : "NO",
           (unsigned long long)st.ckpt_lsn, (unsigned long long)st.version,
           (unsigned long long)st.unmerged);
    double without = 0;
    if (o->rebuild) {
        pid = fork(); /* a fresh process: the first open's memory is gone */
        if (pid == 0) {
            idx_stats_t s2;
            double w = restart_s(o, 1, &s2);
            printf("restart without checkpoint (full rebuild): %.3f s\n", w);
            printf("RESULT_REBUILD s=%.3f\n", w);
            fflush(stdout);
            _exit(0);
        }
        waitpid(pid, &ws, 0);
    }
    printf("RESULT mode=restart n=%llu index=%s tail=%llu restart_s=%.3f "
           "open_s=%.3f loaded=%d\n",
           (unsigned long long)o->n, o->index, (unsigned long long)o->tail,
           with, st.rebuild_s, st.ckpt_loaded);
    (void)without;
    return st.ckpt_loaded ? 0 : 1;
}

/* ------------------------------------------------------------------ p99 */

typedef struct lat {
    double *v;
    size_t n, cap;
} lat_t;

typedef struct client {
    idx_kb_t *ix;
    atomic_int *stop;
    atomic_int *during; /* 1 while a checkpoint is written */
    lat_t out, in;
    uint64_t seed;
} client_t;

static void lat_add(lat_t *l, double x)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 4096;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v)
            die("latency", "out of memory");
    }
    l->v[l->n++] = x;
}

static void *client_main(void *arg)
{
    client_t *c = arg;
    /* One FAISS thread per query, as the node's readers run (qry_pool.c):
     * a new thread otherwise gets OpenMP's default of one per core. */
    omp_set_num_threads(1);
    for (uint64_t j = c->seed; !atomic_load(c->stop); j++) {
        int during = atomic_load(c->during);
        double ms = query_ms(c->ix, j);
        if (ms > 1500) /* where the slow ones fall, against the log */
            printf("slow query: %.0f ms, ended at %.3f s\n", ms,
                   (double)kb_mono_us() / 1e6);
        if (during == atomic_load(c->during)) /* not at a boundary */
            lat_add(during ? &c->in : &c->out, ms);
    }
    return NULL;
}

static void report(const char *what, lat_t *l)
{
    printf("%-22s %6zu queries  p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms\n",
           what, l->n, bench_pct(l->v, l->n, 50), bench_pct(l->v, l->n, 99),
           bench_pct(l->v, l->n, 100));
}

static int run_p99(const opts_t *o)
{
    idx_config_t c = {.dir = o->dir, .nosync = 1, .ckpt_ops = 1,
                      .ckpt_secs = 1};
    idx_kb_t *ix;
    char err[512];
    if (idx_open(&c, &ix, err, sizeof err))
        die("open", err);
    idx_stats_t st;
    do { /* the index settled: nothing left for the merger */
        usleep(100000);
        idx_stats(ix, &st);
    } while (st.unmerged || st.rebuilding);
    atomic_int stop = 0, during = 0;
    client_t cl[16] = {0};
    pthread_t th[16];
    int nc = o->clients < 16 ? o->clients : 16;
    for (int i = 0; i < nc; i++) {
        cl[i] = (client_t){.ix = ix, .stop = &stop, .during = &during,
                           .seed = 1000000u * (uint64_t)i};
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    }
    double ck_s = 0;
    for (int r = 0; r < o->rounds; r++) {
        usleep(4000000); /* outside: 4 s before each checkpoint */
        put(ix, r, r + 1, 5, 0); /* one write: the version moves */
        atomic_store(&during, 1);
        printf("checkpoint %d starts at %.3f s\n", r + 1,
               (double)kb_mono_us() / 1e6);
        if (o->rebuild) { /* --rebuild: the same rounds, no checkpoint */
            usleep(2000000);
        } else {
            idx_maintain(ix);
            do {
                usleep(2000);
                idx_stats(ix, &st);
            } while (st.checkpointing || st.ckpts < (uint64_t)r + 1);
        }
        atomic_store(&during, 0);
        printf("checkpoint %d ends at %.3f s\n", r + 1,
               (double)kb_mono_us() / 1e6);
        ck_s += st.ckpt_s;
        printf("checkpoint %d: version %llu in %.2f s\n", r + 1,
               (unsigned long long)st.ckpt_lsn, st.ckpt_s);
    }
    usleep(4000000);
    atomic_store(&stop, 1);
    lat_t out = {0}, in = {0};
    for (int i = 0; i < nc; i++) {
        pthread_join(th[i], NULL);
        for (size_t j = 0; j < cl[i].out.n; j++)
            lat_add(&out, cl[i].out.v[j]);
        for (size_t j = 0; j < cl[i].in.n; j++)
            lat_add(&in, cl[i].in.v[j]);
        free(cl[i].out.v);
        free(cl[i].in.v);
    }
    qsort(out.v, out.n, sizeof *out.v, bench_cmp_double);
    qsort(in.v, in.n, sizeof *in.v, bench_cmp_double);
    report("outside checkpoints", &out);
    report("during checkpoints", &in);
    double p_out = bench_pct(out.v, out.n, 99), p_in = bench_pct(in.v, in.n, 99);
    printf("RESULT mode=p99 clients=%d rounds=%d ckpt_s=%.2f p99_out_ms=%.2f "
           "p99_in_ms=%.2f ratio=%.2f\n",
           nc, o->rounds, ck_s / o->rounds, p_out, p_in, p_in / p_out);
    idx_close(&ix);
    free(out.v);
    free(in.v);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"n", required_argument, 0, 'n'},
        {"tail", required_argument, 0, 't'},
        {"index", required_argument, 0, 'i'},
        {"rebuild", no_argument, 0, 'r'},
        {"clients", required_argument, 0, 'c'},
        {"rounds", required_argument, 0, 'R'},
        {"threads", required_argument, 0, 'T'},
        {0, 0, 0, 0}};
    opts_t o = {.index = "Flat", .n = 1000000, .tail = 10000, .clients = 1,
                .rounds = 5, .threads = 1};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'n': o.n = strtoull(optarg, NULL, 10); break;
        case 't': o.tail = strtoull(optarg, NULL, 10); break;
        case 'i': o.index = optarg; break;
        case 'r': o.rebuild = 1; break;
        case 'c': o.clients = atoi(optarg); break;
        case 'R': o.rounds = atoi(optarg); break;
        case 'T': o.threads = atoi(optarg); break;
        default: return 2;
        }
    }
    if (optind + 2 != argc || o.tail > o.n) {
        fprintf(stderr, "usage: bench_ckpt restart|open|p99 DIR [--n N] [--tail T] "
                        "[--index DESC] [--rebuild] [--clients C] "
                        "[--rounds R] [--threads T]\n");
        return 2;
    }
    o.mode = argv[optind];
    o.dir = argv[optind + 1];
    kb_log_setup(KB_LOG_INFO, "bench_ckpt");
    idx_setup(o.threads);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(o.mode, "open")) { /* one timed open, no close */
        idx_stats_t st;
        double s = restart_s(&o, o.rebuild, &st);
        printf("RESULT mode=open s=%.3f open_s=%.3f loaded=%d\n", s,
               st.rebuild_s, st.ckpt_loaded);
        return 0;
    }
    return !strcmp(o.mode, "restart") ? run_restart(&o)
           : !strcmp(o.mode, "p99")   ? run_p99(&o)
                                      : 2;
}
