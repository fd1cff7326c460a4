/* bench_pg: the PostgreSQL side of bench/peer_pg.sh (issue #13). Writes the
 * rows kbsync's benchmarks write (bench_common.h: 384 float4 + ~300 B of
 * text, same generator and seeds as bench_write and `bench_tradeoff
 * ingest`) to a PostgreSQL primary through libpq: one connection, closed
 * loop, as bench_write does on the kbsync side. Out: one line of figures.
 *
 * usage: bench_pg single PRIMARY [options]   single-row upserts, each
 *                                            waiting for its commit
 *        bench_pg copy PRIMARY [options]     COPY (binary) in batches, timed
 *                                            until every --standby replayed
 * options: --standby CONNINFO (repeatable), --n 2000 (single), --docs 100000
 *          and --batch 1000 (copy), --dim 384, --emb real|bytea,
 *          --sync-commit on|remote_apply|... (the session's
 *          synchronous_commit; the primary's synchronous_standby_names is
 *          the caller's: it is printed, not set).
 *
 * Before the clock starts each command drops and creates the table
 * kb_docs (id text primary key, emb real[] or bytea, body text), runs a
 * CHECKPOINT and waits until every standby has replayed it, so every run
 * starts from the same state. */
#include "bench_common.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <time.h>
#include <unistd.h>

#define PG_MAX_STANDBYS 8
#define OID_TEXT 25
#define OID_BYTEA 17
#define OID_FLOAT4 700
#define OID_FLOAT4_ARRAY 1021

typedef struct pg_opts {
    const char *cmd, *primary, *emb, *sync_commit;
    const char *standby[PG_MAX_STANDBYS];
    int nstandby, n, docs, batch, dim, real_array;
} pg_opts_t;

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_pg single|copy PRIMARY_CONNINFO [--standby CONNINFO]"
            "... [--n 2000] [--docs 100000] [--batch 1000] [--dim 384] "
            "[--emb real|bytea] [--sync-commit on|remote_apply|...]\n");
    exit(2);
}

static void parse_opts(int argc, char **argv, pg_opts_t *o)
{
    if (argc < 3)
        usage();
    *o = (pg_opts_t){.cmd = argv[1],
                     .primary = argv[2],
                     .emb = "real",
                     .sync_commit = "on",
                     .n = 2000,
                     .docs = 100000,
                     .batch = 1000,
                     .dim = 384};
    for (int i = 3; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (!strcmp(k, "--standby") && o->nstandby < PG_MAX_STANDBYS)
            o->standby[o->nstandby++] = v;
        else if (!strcmp(k, "--n"))
            o->n = atoi(v);
        else if (!strcmp(k, "--docs"))
            o->docs = atoi(v);
        else if (!strcmp(k, "--batch"))
            o->batch = atoi(v);
        else if (!strcmp(k, "--dim"))
            o->dim = atoi(v);
        else if (!strcmp(k, "--emb"))
            o->emb = v;
        else if (!strcmp(k, "--sync-commit"))
            o->sync_commit = v;
        else
            usage();
        i++;
    }
    o->real_array = !strcmp(o->emb, "real");
    if ((!o->real_array && strcmp(o->emb, "bytea")) || o->n < 1 ||
        o->docs < 1 || o->batch < 1 || o->dim < 1)
        usage();
}

/* ------------------------------------------------------------ libpq */

static PGconn *connect_or_die(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "bench_pg: connect %s: %s", conninfo,
                PQerrorMessage(c));
        exit(1);
    }
    return c;
}

/* Runs one statement that returns no rows or one row; exits on failure.
 * Returns the first value of the first row (copied into out) or "". */
static void exec_or_die(PGconn *c, const char *sql, char *out, size_t cap)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "bench_pg: %s: %s", sql, PQerrorMessage(c));
        exit(1);
    }
    if (out && cap) {
        const char *v =
            st == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)
                ? PQgetvalue(r, 0, 0)
                : "";
        snprintf(out, cap, "%s", v);
    }
    PQclear(r);
}

/* Until every standby reports pg_last_wal_replay_lsn() >= lsn (a pg_lsn
 * text). Polls them in turn, 2 ms apart, as `bench_tradeoff ingest` polls
 * kbsync's replicas; the time a pass found all of them there is the
 * midpoint of its last query's round trip. Returns that time (mono us). */
static uint64_t wait_replayed(PGconn **sb, int n, const char *lsn)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT pg_last_wal_replay_lsn() >= '%s'", lsn);
    uint64_t give_up = mono_us() + 120u * 1000000u;
    for (;;) {
        int behind = 0;
        uint64_t mid = 0;
        for (int i = 0; i < n && !behind; i++) {
            char v[8];
            uint64_t s = mono_us();
            exec_or_die(sb[i], sql, v, sizeof v);
            mid = (s + mono_us()) / 2;
            behind = strcmp(v, "t") != 0;
        }
        if (!behind)
            return mid;
        if (mono_us() > give_up) {
            fprintf(stderr, "bench_pg: standbys never replayed %s\n", lsn);
            exit(1);
        }
        usleep(2000);
    }
}

/* Drops and creates kb_docs, checkpoints, waits until the standbys have
 * replayed all of it, then sets the session's synchronous_commit. Prints
 * what the primary says about its standbys. */
static void setup(PGconn *p, PGconn **sb, const pg_opts_t *o)
{
    char sql[256], lsn[64], ssn[256], states[256];
    exec_or_die(p, "SET client_min_messages = warning", NULL, 0);
    exec_or_die(p, "DROP TABLE IF EXISTS kb_docs", NULL, 0);
    snprintf(sql, sizeof sql,
             "CREATE TABLE kb_docs (id text PRIMARY KEY, emb %s NOT NULL, "
             "body text NOT NULL)",
             o->real_array ? "real[]" : "bytea");
    exec_or_die(p, sql, NULL, 0);
    exec_or_die(p, "CHECKPOINT", NULL, 0);
    exec_or_die(p, "SELECT pg_current_wal_flush_lsn()", lsn, sizeof lsn);
    wait_replayed(sb, o->nstandby, lsn);
    snprintf(sql, sizeof sql, "SET synchronous_commit = '%s'", o->sync_commit);
    exec_or_die(p, sql, NULL, 0);
    exec_or_die(p, "SHOW synchronous_standby_names", ssn, sizeof ssn);
    exec_or_die(p,
                "SELECT string_agg(application_name || ':' || state || '/' "
                "|| sync_state, ' ' ORDER BY application_name) "
                "FROM pg_stat_replication",
                states, sizeof states);
    printf("# pg: synchronous_commit=%s synchronous_standby_names='%s' "
           "standbys: %s; emb %s\n",
           o->sync_commit, ssn, states[0] ? states : "(none)",
           o->real_array ? "real[]" : "bytea");
}

/* ---------------------------------------------------- binary encoding */

static char *put_u32(char *p, uint32_t v)
{
    v = htonl(v);
    memcpy(p, &v, 4);
    return p + 4;
}

static size_t emb_size(const pg_opts_t *o)
{
    return o->real_array ? 20 + 8 * (size_t)o->dim : 4 * (size_t)o->dim;
}

/* The embedding in PostgreSQL's binary format: a one-dimensional float4
 * array (ndim, no-nulls flag, element type, length, lower bound, then
 * length + big-endian value per element), or for bytea the raw float32s in
 * this machine's order, as kbsync's protobuf carries them. Writes
 * emb_size(o) bytes at p and returns the end. */
static char *put_emb(char *p, const float *v, const pg_opts_t *o)
{
    if (!o->real_array) {
        memcpy(p, v, 4 * (size_t)o->dim);
        return p + 4 * (size_t)o->dim;
    }
    p = put_u32(p, 1);
    p = put_u32(p, 0);
    p = put_u32(p, OID_FLOAT4);
    p = put_u32(p, (uint32_t)o->dim);
    p = put_u32(p, 1);
    for (int j = 0; j < o->dim; j++) {
        uint32_t bits;
        memcpy(&bits, &v[j], 4);
        p = put_u32(p, 4);
        p = put_u32(p, bits);
    }
    return p;
}

/* ------------------------------------------------------------- single */

static void print_latency(const pg_opts_t *o, double *lat)
{
    double sum = 0;
    for (int i = 0; i < o->n; i++)
        sum += lat[i];
    double p50 = bench_pct(lat, (size_t)o->n, 50);
    double p99 = bench_pct(lat, (size_t)o->n, 99);
    double p999 = bench_pct(lat, (size_t)o->n, 99.9);
    printf("pg single-row write (synchronous_commit=%s), %d writes, dim %d: "
           "p50 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max %.3f ms  "
           "mean %.3f ms\n",
           o->sync_commit, o->n, o->dim, p50, p99, p999, lat[o->n - 1],
           sum / o->n);
}

/* Single-row upserts (INSERT ... ON CONFLICT DO UPDATE, as kbsync's upsert
 * replaces), prepared once, parameters in binary, one at a time. The same
 * ids, vectors, texts and warm-up count as bench_write. */
static int cmd_single(PGconn *p, const pg_opts_t *o)
{
    Oid types[3] = {OID_TEXT, o->real_array ? OID_FLOAT4_ARRAY : OID_BYTEA,
                    OID_TEXT};
    PGresult *r = PQprepare(p, "ins",
                            "INSERT INTO kb_docs (id, emb, body) "
                            "VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE "
                            "SET emb = EXCLUDED.emb, body = EXCLUDED.body",
                            3, types);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "bench_pg: prepare: %s", PQerrorMessage(p));
        return 1;
    }
    PQclear(r);
    float *v = malloc(sizeof(float) * (size_t)o->dim);
    char *emb = malloc(emb_size(o));
    double *lat = malloc(sizeof(double) * (size_t)o->n);
    char id[64], text[400];
    int warm = o->n / 20 + 5, fmt[3] = {1, 1, 1};
    for (int i = -warm; i < o->n; i++) {
        bench_vector(7, (uint64_t)(i + warm), o->dim, v);
        bench_text((uint64_t)(i + warm), text, 300);
        snprintf(id, sizeof id, "w-%d", i + warm);
        const char *val[3] = {id, emb, text};
        int len[3] = {(int)strlen(id), (int)emb_size(o), (int)strlen(text)};
        put_emb(emb, v, o);
        uint64_t t0 = mono_us();
        r = PQexecPrepared(p, "ins", 3, val, len, fmt, 1);
        uint64_t t1 = mono_us();
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "bench_pg: write %d: %s", i, PQerrorMessage(p));
            return 1;
        }
        PQclear(r);
        if (i >= 0)
            lat[i] = (double)(t1 - t0) / 1000.0;
    }
    print_latency(o, lat);
    free(v);
    free(emb);
    free(lat);
    return 0;
}

/* --------------------------------------------------------------- copy */

typedef struct pg_rows {
    float *vec;
    char *text, *ids;
} pg_rows_t;

/* Appends rows [from, to) as COPY binary tuples (3 fields, each length +
 * bytes) at p; returns the end. */
static char *put_tuples(char *p, const pg_rows_t *d, size_t from, size_t to,
                        const pg_opts_t *o)
{
    for (size_t i = from; i < to; i++) {
        const char *id = d->ids + 32 * i, *text = d->text + 320 * i;
        size_t il = strlen(id), tl = strlen(text);
        uint16_t nf = htons(3);
        memcpy(p, &nf, 2);
        p = put_u32(p + 2, (uint32_t)il);
        memcpy(p, id, il);
        p = put_u32(p + il, (uint32_t)emb_size(o));
        p = put_emb(p, d->vec + i * (size_t)o->dim, o);
        p = put_u32(p, (uint32_t)tl);
        memcpy(p, text, tl);
        p += tl;
    }
    return p;
}

/* One COPY ... FROM STDIN (FORMAT binary) of rows [from, to): its own
 * transaction, so it returns once committed as synchronous_commit asks. */
static int copy_batch(PGconn *p, const pg_rows_t *d, size_t from, size_t to,
                      char *buf, const pg_opts_t *o)
{
    static const char hdr[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0";
    PGresult *r = PQexec(p, "COPY kb_docs (id, emb, body) FROM STDIN "
                            "(FORMAT binary)");
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        fprintf(stderr, "bench_pg: COPY: %s", PQerrorMessage(p));
        return -1;
    }
    PQclear(r);
    memcpy(buf, hdr, sizeof hdr);
    char *e = put_tuples(buf + sizeof hdr, d, from, to, o);
    memcpy(e, "\377\377", 2); /* trailer: field count -1 */
    e += 2;
    if (PQputCopyData(p, buf, (int)(e - buf)) != 1 ||
        PQputCopyEnd(p, NULL) != 1) {
        fprintf(stderr, "bench_pg: COPY data: %s", PQerrorMessage(p));
        return -1;
    }
    int rc = 0;
    while ((r = PQgetResult(p))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "bench_pg: COPY end: %s", PQerrorMessage(p));
            rc = -1;
        }
        PQclear(r);
    }
    return rc;
}

/* Builds every row before the clock starts (as `bench_tradeoff ingest`
 * builds every document): ids ingest-I, vector (seed 1, I), text I. */
static void build_rows(pg_rows_t *d, const pg_opts_t *o)
{
    size_t n = (size_t)o->docs;
    d->vec = malloc(sizeof(float) * (size_t)o->dim * n);
    d->text = malloc(320 * n);
    d->ids = malloc(32 * n);
    for (size_t i = 0; i < n; i++) {
        bench_vector(1, i, o->dim, d->vec + i * (size_t)o->dim);
        bench_text(i, d->text + 320 * i, 300);
        snprintf(d->ids + 32 * i, 32, "ingest-%zu", i);
    }
}

static int cmd_copy(PGconn *p, PGconn **sb, const pg_opts_t *o)
{
    pg_rows_t d;
    build_rows(&d, o);
    size_t n = (size_t)o->docs, b = (size_t)o->batch;
    char *buf = malloc(21 + b * (2 + 12 + 32 + emb_size(o) + 320));
    char lsn[64];
    uint64_t t0 = mono_us();
    for (size_t next = 0; next < n; next += b)
        if (copy_batch(p, &d, next, next + b < n ? next + b : n, buf, o))
            return 1;
    uint64_t t_ack = mono_us();
    /* Flushed WAL: at or past the last commit, and all of it sendable. */
    exec_or_die(p, "SELECT pg_current_wal_flush_lsn()", lsn, sizeof lsn);
    uint64_t t_all = wait_replayed(sb, o->nstandby, lsn);
    double ack_s = (double)(t_ack - t0) / 1e6,
           all_s = (double)(t_all - t0) / 1e6;
    printf("pg copy of %zu rows (batch %zu, synchronous_commit=%s), "
           "dim %d: primary acks done in %.3f s (%.0f rows/s); "
           "%d standbys replayed %s at %.3f s = %.0f rows/s\n",
           n, b, o->sync_commit, o->dim, ack_s, (double)n / ack_s, o->nstandby,
           lsn, all_s, (double)n / all_s);
    free(buf);
    free(d.vec);
    free(d.text);
    free(d.ids);
    return 0;
}

int main(int argc, char **argv)
{
    pg_opts_t o;
    parse_opts(argc, argv, &o);
    int single = !strcmp(o.cmd, "single");
    if (!single && strcmp(o.cmd, "copy"))
        usage();
    if (!single && o.nstandby == 0) {
        fprintf(stderr, "bench_pg: copy needs at least one --standby\n");
        return 2;
    }
    PGconn *p = connect_or_die(o.primary), *sb[PG_MAX_STANDBYS];
    for (int i = 0; i < o.nstandby; i++)
        sb[i] = connect_or_die(o.standby[i]);
    setup(p, sb, &o);
    int rc = single ? cmd_single(p, &o) : cmd_copy(p, sb, &o);
    for (int i = 0; i < o.nstandby; i++)
        PQfinish(sb[i]);
    PQfinish(p);
    return rc;
}
