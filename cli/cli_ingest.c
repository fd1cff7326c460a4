/* cli_ingest: `kbsync ingest`. In: JSONL files of documents (common/kb_json)
 * or plain-text files, which are cut into paragraph chunks. Out: batched
 * UpsertRequests to a node, several in flight at once (--window), and one
 * JSON summary line {written, failed, version, seconds}.
 *
 * Each batch is one all-or-nothing write on the node. On the first bad
 * record (malformed JSON, named by file and line) or refused batch, ingest
 * stops: batches already acknowledged stay written, the batch holding the
 * bad record is never sent, and the summary counts the rest as failed.
 * --keep-going skips bad records and refused batches instead. */
#include "cli.h"

#include "kb_err.h"
#include "kb_json.h"
#include "kb_util.h"
#include "qry_client.h"

#include <errno.h>
#include <getopt.h>
#include <sys/random.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INGEST_CHUNK_TARGET 800 /* bytes of text per plain-text chunk */
#define INGEST_CHUNK_MAX 2000

typedef struct ingest {
    qry_client_t *cl;
    size_t batch, window;
    int mode; /* repl_mode_t, 0 = the leader's default */
    uint32_t quorum; /* K of quorum:K */
    int keep_going, dry_run, timeout_ms;
    /* the batch being filled: each doc and its strings in one allocation */
    Kbsync__Doc **docs;
    size_t ndocs;
    /* requests in flight: request id, doc count, client_seq and the docs
     * (kept until answered, to send again after a timeout) */
    uint64_t *fl_id;
    size_t *fl_n;
    uint64_t *fl_seq;
    Kbsync__Doc ***fl_docs;
    size_t inflight;
    /* idempotent retries: this run's client_id, the last client_seq */
    const char *ep;
    char cid[64];
    uint64_t seq;
    unsigned retries, max_retries; /* in a row, without an answer */
    uint64_t resent, answered_retried;
    /* totals */
    uint64_t written, failed, version, read;
    uint64_t unreplicated; /* committed on the leader, `all` acks timed out */
    int stopped;
} ingest_t;

/* One allocation holding a Doc, its floats and its NUL-terminated strings. */
static Kbsync__Doc *doc_new(const char *id, size_t idlen, const char *text,
                            size_t tlen, const float *emb, size_t nemb,
                            const char *meta, size_t mlen)
{
    size_t sz =
        sizeof(Kbsync__Doc) + nemb * sizeof(float) + idlen + tlen + mlen + 3;
    Kbsync__Doc *d = malloc(sz);
    if (!d)
        return NULL;
    kbsync__doc__init(d);
    char *p = (char *)(d + 1);
    if (nemb) {
        d->embedding = (float *)p;
        d->n_embedding = nemb;
        memcpy(p, emb, nemb * sizeof(float));
        p += nemb * sizeof(float);
    }
    d->id = p;
    memcpy(p, id, idlen);
    p[idlen] = 0;
    p += idlen + 1;
    d->text = p;
    memcpy(p, text, tlen);
    p[tlen] = 0;
    p += tlen + 1;
    d->metadata_json = p;
    if (mlen)
        memcpy(p, meta, mlen);
    p[mlen] = 0;
    return d;
}

static void batch_clear(ingest_t *g)
{
    for (size_t i = 0; i < g->ndocs; i++)
        free(g->docs[i]);
    g->ndocs = 0;
}

static void free_docs(Kbsync__Doc **d, size_t n)
{
    for (size_t i = 0; d && i < n; i++)
        free(d[i]);
    free(d);
}

/* Sends in-flight slot i (again): same client_id and client_seq, so the
 * leader writes it once whatever happened to an earlier attempt. */
static int send_slot(ingest_t *g, size_t i, char *err, size_t errlen)
{
    Kbsync__UpsertRequest u = KBSYNC__UPSERT_REQUEST__INIT;
    u.docs = g->fl_docs[i];
    u.n_docs = g->fl_n[i];
    u.mode = cli_wire_mode(g->mode);
    u.quorum = g->quorum;
    u.client_id = g->cid;
    u.client_seq = g->fl_seq[i];
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
    req.upsert = &u;
    return qry_client_send(g->cl, &req, &g->fl_id[i], err, errlen);
}

/* No answer in time: open a new connection (the old one may be dead, and
 * answers on it are lost) and send every batch in flight again. */
static int ingest_resend(ingest_t *g, char *err, size_t errlen)
{
    qry_client_close(&g->cl);
    int rc = qry_client_open(g->ep, &g->cl, err, errlen);
    for (size_t i = 0; !rc && i < g->inflight; i++) {
        rc = send_slot(g, i, err, errlen);
        g->resent++;
    }
    return rc;
}

/* Waits for one in-flight answer and books it. */
static int ingest_reap(ingest_t *g)
{
    char err[512];
    Kbsync__Response *r;
    int rc = qry_client_recv(g->cl, g->timeout_ms, &r, err, sizeof err);
    while (rc && g->retries < g->max_retries) {
        g->retries++;
        fprintf(stderr,
                "kbsync ingest: %s; sending the %zu batches in flight again "
                "on a new connection (attempt %u of %u; the leader writes "
                "each batch once)\n",
                err, g->inflight, g->retries, g->max_retries);
        rc = ingest_resend(g, err, sizeof err);
        if (!rc)
            rc = qry_client_recv(g->cl, g->timeout_ms, &r, err, sizeof err);
    }
    if (rc) {
        fprintf(stderr, "kbsync ingest: %s\n", err);
        /* Unknown outcome for what is in flight: count it as failed. */
        for (size_t i = 0; i < g->inflight; i++) {
            g->failed += g->fl_n[i];
            free_docs(g->fl_docs[i], g->fl_n[i]);
        }
        g->inflight = 0;
        g->stopped = 1;
        return rc;
    }
    g->retries = 0;
    size_t slot = g->inflight;
    for (size_t i = 0; i < g->inflight; i++)
        if (g->fl_id[i] == r->request_id)
            slot = i;
    if (slot == g->inflight) {
        fprintf(stderr, "kbsync ingest: unexpected answer id %llu\n",
                (unsigned long long)r->request_id);
        kbsync__response__free_unpacked(r, NULL);
        return 0;
    }
    size_t n = g->fl_n[slot];
    free_docs(g->fl_docs[slot], n);
    g->fl_id[slot] = g->fl_id[g->inflight - 1];
    g->fl_n[slot] = g->fl_n[g->inflight - 1];
    g->fl_seq[slot] = g->fl_seq[g->inflight - 1];
    g->fl_docs[slot] = g->fl_docs[g->inflight - 1];
    g->inflight--;
    if (r->write && r->write->retried)
        g->answered_retried++;
    if (r->error && r->write) {
        /* `all` timed out: committed on the leader, not confirmed on every
         * named replica. */
        fprintf(stderr, "kbsync ingest: batch of %zu: %s\n", n,
                r->error->message);
        g->written += r->write->written;
        g->unreplicated += r->write->written;
        if (r->write->version > g->version)
            g->version = r->write->version;
        if (!g->keep_going)
            g->stopped = 1;
        rc = r->error->code;
    } else if (r->error || !r->write) {
        fprintf(stderr,
                "kbsync ingest: batch of %zu refused, nothing of it "
                "written: %s: %s\n",
                n, r->error ? kb_errname(r->error->code) : "?",
                r->error ? r->error->message : "no write result");
        g->failed += n;
        if (!g->keep_going)
            g->stopped = 1;
        rc = r->error ? r->error->code : KB_EBADMSG;
    } else {
        g->written += r->write->written;
        if (r->write->version > g->version)
            g->version = r->write->version;
    }
    kbsync__response__free_unpacked(r, NULL);
    return rc;
}

static int ingest_send(ingest_t *g)
{
    if (g->ndocs == 0)
        return 0;
    if (g->dry_run) {
        g->written += g->ndocs;
        batch_clear(g);
        return 0;
    }
    while (g->inflight >= g->window && !g->stopped)
        ingest_reap(g);
    if (g->stopped) {
        g->failed += g->ndocs;
        batch_clear(g);
        return KB_EINVAL;
    }
    /* the slot takes the batch's docs until its answer comes */
    size_t i = g->inflight;
    g->fl_docs[i] = malloc(g->ndocs * sizeof *g->fl_docs[i]);
    if (!g->fl_docs[i]) {
        fprintf(stderr, "kbsync ingest: out of memory\n");
        g->failed += g->ndocs;
        g->stopped = 1;
        batch_clear(g);
        return KB_ENOMEM;
    }
    memcpy(g->fl_docs[i], g->docs, g->ndocs * sizeof *g->docs);
    g->fl_n[i] = g->ndocs;
    g->fl_seq[i] = ++g->seq;
    g->ndocs = 0;
    char err[512];
    int rc = send_slot(g, i, err, sizeof err);
    if (rc) {
        fprintf(stderr, "kbsync ingest: %s\n", err);
        g->failed += g->fl_n[i];
        free_docs(g->fl_docs[i], g->fl_n[i]);
        g->stopped = 1;
    } else {
        g->inflight++;
    }
    return rc;
}

static int ingest_add(ingest_t *g, Kbsync__Doc *d)
{
    if (!d) {
        fprintf(stderr, "kbsync ingest: out of memory\n");
        g->stopped = 1;
        return KB_ENOMEM;
    }
    g->read++;
    g->docs[g->ndocs++] = d;
    return g->ndocs == g->batch ? ingest_send(g) : 0;
}

static int ingest_jsonl(ingest_t *g, const char *path)
{
    kb_jsonl_t *r;
    int rc = kb_jsonl_open(path, &r);
    if (rc) {
        fprintf(stderr, "kbsync ingest: cannot open %s: %s\n", path,
                kb_strerror(rc));
        g->stopped = 1;
        return rc;
    }
    kb_jsonl_rec_t rec;
    char why[600];
    while (!g->stopped && (rc = kb_jsonl_next(r, &rec)) != 0) {
        if (rc < 0)
            snprintf(why, sizeof why, "%s", kb_jsonl_error(r));
        else if (rec.embedding && rec.embedding_len == 0)
            snprintf(why, sizeof why,
                     "%s:%llu: \"embedding\" is an empty array", path,
                     (unsigned long long)rec.line);
        else if (memchr(rec.id, 0, rec.id_len) ||
                 memchr(rec.text, 0, rec.text_len))
            /* "\u0000": a protobuf string would be cut there */
            snprintf(why, sizeof why,
                     "%s:%llu: \"%s\" contains a NUL character (\\u0000)",
                     path, (unsigned long long)rec.line,
                     memchr(rec.id, 0, rec.id_len) ? "id" : "text");
        else
            why[0] = 0;
        if (why[0]) {
            fprintf(stderr, "kbsync ingest: %s\n", why);
            g->failed++;
            if (g->keep_going)
                continue;
            /* The batch holding the bad record is not sent. */
            g->failed += g->ndocs;
            batch_clear(g);
            g->stopped = 1;
            break;
        }
        ingest_add(g, doc_new(rec.id, rec.id_len, rec.text, rec.text_len,
                              rec.embedding, rec.embedding_len, rec.metadata,
                              rec.metadata ? rec.metadata_len : 0));
    }
    kb_jsonl_close(&r);
    return g->stopped ? KB_EINVAL : 0;
}

/* Plain text: paragraphs (split at blank lines) are merged up to about
 * INGEST_CHUNK_TARGET bytes; a longer paragraph is cut at a sentence or
 * word boundary near INGEST_CHUNK_MAX. Chunk ids are "<file>#<n>". */
static int ingest_text(ingest_t *g, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "kbsync ingest: cannot open %s: %s\n", path,
                strerror(errno));
        g->stopped = 1;
        return -errno;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (len + 1 == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) {
        g->stopped = 1;
        return KB_ENOMEM;
    }
    buf[len] = 0;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char chunk[INGEST_CHUNK_MAX + 8];
    size_t cl = 0, nchunk = 0, i = 0;
    while (i <= len && !g->stopped) {
        /* next paragraph [i, e) */
        size_t e = i;
        while (e < len &&
               !(buf[e] == '\n' && e + 1 < len &&
                 (buf[e + 1] == '\n' ||
                  (buf[e + 1] == '\r' && e + 2 < len && buf[e + 2] == '\n'))))
            e++;
        for (size_t j = i; j < e; j++) {
            char ch = buf[j] == '\n' || buf[j] == '\r' || buf[j] == '\t'
                          ? ' '
                          : buf[j];
            if (ch == ' ' && (cl == 0 || chunk[cl - 1] == ' '))
                continue;
            chunk[cl++] = ch;
            if (cl >= INGEST_CHUNK_MAX) {
                /* cut at the last sentence end, else the last space */
                size_t cut = cl;
                for (size_t k = cl; k > INGEST_CHUNK_TARGET; k--)
                    if (chunk[k - 1] == '.' || chunk[k - 1] == '?') {
                        cut = k;
                        break;
                    }
                if (cut == cl)
                    for (size_t k = cl; k > INGEST_CHUNK_TARGET; k--)
                        if (chunk[k - 1] == ' ') {
                            cut = k;
                            break;
                        }
                char id[300], meta[600];
                snprintf(id, sizeof id, "%.200s#%zu", base, nchunk);
                snprintf(meta, sizeof meta,
                         "{\"source\":\"%.200s\",\"chunk\":%zu}", base, nchunk);
                nchunk++;
                ingest_add(g, doc_new(id, strlen(id), chunk, cut, NULL, 0, meta,
                                      strlen(meta)));
                memmove(chunk, chunk + cut, cl - cut);
                cl -= cut;
            }
        }
        int last = e >= len;
        if (cl && (cl >= INGEST_CHUNK_TARGET || last)) {
            char id[300], meta[600];
            snprintf(id, sizeof id, "%.200s#%zu", base, nchunk);
            snprintf(meta, sizeof meta, "{\"source\":\"%.200s\",\"chunk\":%zu}",
                     base, nchunk);
            nchunk++;
            ingest_add(g, doc_new(id, strlen(id), chunk, cl, NULL, 0, meta,
                                  strlen(meta)));
            cl = 0;
        } else if (cl && chunk[cl - 1] != ' ') {
            chunk[cl++] = ' ';
        }
        i = e + 1;
    }
    free(buf);
    fprintf(stderr, "kbsync ingest: %s: %zu text chunks\n", path, nchunk);
    return g->stopped ? KB_EINVAL : 0;
}

static int is_jsonl(const char *path)
{
    size_t n = strlen(path);
    return !strcmp(path, "-") || (n > 6 && !strcmp(path + n - 6, ".jsonl")) ||
           (n > 7 && !strcmp(path + n - 7, ".ndjson"));
}

int cli_ingest_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, 0, 't'},
        {"batch", required_argument, 0, 'b'},
        {"window", required_argument, 0, 'w'},
        {"keep-going", no_argument, 0, 'k'},
        {"dry-run", no_argument, 0, 'n'},
        {"json", no_argument, 0, 'j'},
        {"timeout-ms", required_argument, 0, 'T'},
        {"mode", required_argument, 0, 'm'},
        {"retries", required_argument, 0, 'r'},
        CLI_CLIENT_KEY_OPTIONS,
        {0, 0, 0, 0}};
    const char *ep = CLI_DEFAULT_ENDPOINT;
    ingest_t g = {.batch = 1000, .window = 4, .timeout_ms = 120000,
                  .max_retries = 3};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (cli_client_key_option(c, optarg))
            continue;
        switch (c) {
        case 't': ep = optarg; break;
        case 'b': g.batch = cli_uint("--batch", optarg, 100000); break;
        case 'w': g.window = cli_uint("--window", optarg, 64); break;
        case 'k': g.keep_going = 1; break;
        case 'm': g.mode = cli_mode(optarg, &g.quorum); break;
        case 'r':
            g.max_retries = (unsigned)cli_uint("--retries", optarg, 1000);
            break;
        case 'n': g.dry_run = 1; break;
        case 'j': break; /* the summary line is always JSON */
        case 'T':
            g.timeout_ms = (int)cli_uint("--timeout-ms", optarg, 86400000);
            break;
        default:
            fprintf(stderr,
                    "usage: kbsync ingest --to EP [--batch N] [--window N] "
                    "[--keep-going] [--dry-run] FILE...\n");
            return 2;
        }
    }
    if (optind >= argc || g.batch == 0 || g.window == 0) {
        fprintf(stderr, "usage: kbsync ingest --to EP [--batch N>0] [--window "
                        "N>0] [--keep-going] [--dry-run] FILE...\n");
        return 2;
    }
    uint64_t t0 = kb_mono_us();
    g.docs = calloc(g.batch, sizeof *g.docs);
    g.fl_id = calloc(g.window, sizeof *g.fl_id);
    g.fl_n = calloc(g.window, sizeof *g.fl_n);
    g.fl_seq = calloc(g.window, sizeof *g.fl_seq);
    g.fl_docs = calloc(g.window, sizeof *g.fl_docs);
    if (!g.docs || !g.fl_id || !g.fl_n || !g.fl_seq || !g.fl_docs)
        return 1;
    g.ep = ep;
    /* This run's identity for idempotent retries: unique per host and run. */
    {
        char host[32] = "";
        gethostname(host, sizeof host - 1);
        unsigned rnd = 0;
        if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
            rnd = (unsigned)kb_mono_us();
        snprintf(g.cid, sizeof g.cid, "ingest-%.24s-%d-%08x", host,
                 (int)getpid(), rnd);
    }
    char err[512];
    if (!g.dry_run && qry_client_open(ep, &g.cl, err, sizeof err)) {
        fprintf(stderr, "kbsync ingest: %s\n", err);
        return 1;
    }
    for (int i = optind; i < argc && !g.stopped; i++) {
        if (is_jsonl(argv[i]))
            ingest_jsonl(&g, argv[i]);
        else
            ingest_text(&g, argv[i]);
    }
    if (!g.stopped)
        ingest_send(&g);
    else {
        g.failed += g.ndocs;
        batch_clear(&g);
    }
    while (g.inflight) {
        int keep = g.keep_going;
        g.keep_going = 1; /* collect every answer that is on its way */
        ingest_reap(&g);
        g.keep_going = keep;
    }
    double secs = (double)(kb_mono_us() - t0) / 1e6;
    if (g.resent)
        fprintf(stderr,
                "kbsync ingest: %llu batches sent again after timeouts; the "
                "leader answered %llu of them from its idempotency table "
                "(written once, before)\n",
                (unsigned long long)g.resent,
                (unsigned long long)g.answered_retried);
    if (!g.failed && !g.unreplicated)
        fprintf(stderr,
                "kbsync ingest: %llu documents in %.3f s (%.0f docs/s)%s\n",
                (unsigned long long)g.written, secs,
                secs > 0 ? (double)g.written / secs : 0.0,
                g.dry_run ? " [dry run: nothing sent]" : "");
    cli_print_write_summary(g.written, g.failed, g.version, secs, 0,
                            g.unreplicated);
    qry_client_close(&g.cl);
    free(g.docs);
    free(g.fl_id);
    free(g.fl_n);
    free(g.fl_seq);
    free(g.fl_docs);
    return g.failed || g.unreplicated ? 1 : 0;
}
