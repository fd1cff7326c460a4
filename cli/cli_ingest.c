/* cli_ingest: `kbsync ingest`. In: JSONL files of documents (common/kb_json)
 * and text, Markdown and HTML files or directory trees of them, cut into
 * overlapping chunks (cli_chunk); with --embed-url, each batch's texts go
 * to the user's model server first (cli_embed) and the batch waits for its
 * vectors. Out: batched UpsertRequests (with
 * --resume also DeleteRequests) to the leader, several in flight at once
 * (--window); a progress line on a terminal; one JSON summary line on
 * stdout {written, failed, version, seconds, ...}.
 *
 * ---------------------------------------------------------------------
 * BAD INPUT AND WHAT A STOPPED RUN LEAVES
 *
 * Each batch is one all-or-nothing write on the leader. A bad record is
 * skipped and counted in "failed", with a message naming where it is:
 *   FILE:LINE:COLUMN: FIELD: REASON    a JSONL line (column in bytes, from
 *                                      1; the field as "embedding[3]")
 *   FILE:LINE:COLUMN: text: REASON     a text file that is not UTF-8 (and
 *                                      --encoding cannot decode) or holds NUL
 *   FILE: FIELD: REASON                a file that cannot be read, or whose
 *                                      path cannot make valid chunk ids
 * A file is read and checked whole before any chunk of it is queued, so a
 * bad file adds nothing. A batch the leader refuses counts as one error.
 * Once more than --max-errors errors were seen (default 0: the first one;
 * --keep-going: never), the run stops: acknowledged batches stay written,
 * the batch being filled is never sent, and no delete is sent.
 *
 * ---------------------------------------------------------------------
 * RESUME (--resume; --sync-deletes implies it)
 *
 * 1. Before any write, the leader's documents whose ids start with
 *    --id-prefix are listed once with their metadata "sha" (ListRequest,
 *    pages of 10,000). An id "P#n" (n decimal) whose "sha" is 32 hex
 *    digits is chunk n of file P; any other document is not ingest's and is
 *    never touched.
 * 2. Chunk n of file P is sent only when the listing lacks P#n or holds it
 *    with another sha (cli_chunk.c: the sha covers the text, the offsets
 *    and the chunking settings). Then P#k is deleted for every listed k at
 *    or above P's new chunk count.
 * 3. --sync-deletes: once every file went through and the run did not
 *    stop, every listed P that is no file of this run is deleted, all its
 *    chunks: the trees of one run mirror everything under the prefix, so
 *    other trees in the same knowledge base belong under another prefix.
 * 4. The listing is read once, before the writes: two runs on one prefix
 *    at the same time may each skip what the other changes. It is read in
 *    two ranges of ids side by side (split at the middle file of the walk,
 *    two page requests in flight), by a thread, while the other threads
 *    (one per core, up to 4) read and hash the files; a file whose hashes
 *    all match is not read again.
 * 5. The hash cache (cli_hcache.h; --no-cache: none): a run records each
 *    file's chunk hashes with its stat, so the next --resume takes those of
 *    a file whose device, inode, size, mtime and ctime are the same
 *    instead of reading it. Only what a file holds is taken from the
 *    cache; what the leader holds always comes from the listing.
 * A run killed part way leaves whole acknowledged batches, each chunk with
 * its sha, so the next --resume sends only the rest; a complete resume of
 * an unchanged tree sends nothing and the leader's version stays put.
 * --------------------------------------------------------------------- */
#include "cli.h"
#include "cli_chunk.h"
#include "cli_embed.h"
#include "cli_hcache.h"

#include "idx_embed.h"
#include "kb_err.h"
#include "kb_json.h"
#include "kb_util.h"
#include "qry_client.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define INGEST_LIST_PAGE 10000u /* ids per ListRequest (the node's max) */
#define INGEST_PROGRESS_US 250000u

static const char INGEST_USAGE[] =
    "usage: kbsync ingest --to EP [options] PATH...\n"
    "  PATH: a .jsonl/.ndjson file of {\"id\",\"text\",\"embedding\","
    "\"metadata\"}\n"
    "        records (- = standard input), a text/Markdown/HTML file, or a\n"
    "        directory: its *.txt *.text *.md *.markdown *.html *.htm files,\n"
    "        recursively (names starting with . skipped)\n"
    "  chunks of files get ids PATH#N: PATH relative to the directory "
    "named\n"
    "        (or the file's base name), behind --id-prefix; metadata\n"
    "        {\"source\",\"chunk\",\"start\",\"end\",\"sha\"}\n"
    "  --chunk-bytes N     largest chunk (default 1000, 32..1048576)\n"
    "  --overlap-bytes N   text repeated from the chunk before (default "
    "100,\n"
    "                      less than half of --chunk-bytes)\n"
    "  --resume            send only chunks the leader lacks or holds with\n"
    "                      another content hash; delete a changed file's\n"
    "                      chunks beyond its new count\n"
    "  --sync-deletes      --resume, and delete the chunks of files gone "
    "from\n"
    "                      the trees (everything under --id-prefix)\n"
    "  --no-cache          read and hash every file (else --resume takes the\n"
    "                      chunk hashes of a file whose inode, size, mtime\n"
    "                      and ctime are as when a run last read it)\n"
    "  --cache-dir D       where those are kept (default $KBSYNC_CACHE_DIR,\n"
    "                      else $XDG_CACHE_HOME/kbsync, else "
    "~/.cache/kbsync)\n"
    "  --id-prefix P       put P in front of chunk ids (one per tree)\n"
    "  --encoding E        decode files that are not UTF-8 from E (iconv:\n"
    "                      latin1, cp1252, utf-16, ...)\n"
    "  --embed-on node|client  who embeds texts with the built-in embedder\n"
    "                      (default node: the leader; client: this process)\n"
    "  --max-errors N      skip up to N bad records/files, stop at the next\n"
    "                      (default 0); --keep-going: no limit\n"
    "  --mode async|all|majority|quorum:K  --batch N (1000)  --window N "
    "(4)\n"
    "  --timeout-ms N (120000)  --retries N (3)  --dry-run  --key F "
    "--server-key F\n"
    "  texts without \"embedding\" get vectors from your model server "
    "with\n" CLI_EMBED_USAGE;

/* A request in flight: sent (again after a timeout) until answered. */
typedef struct ingest_slot {
    uint64_t rid, seq; /* request id; client_seq */
    size_t n;
    Kbsync__Doc **docs; /* an upsert's documents (owned), or NULL */
    char **ids;         /* a delete's ids (owned), or NULL */
    float *vecs;        /* vectors the docs point at (owned), or NULL */
} ingest_slot_t;

/* What a reader of files reuses from file to file: the file's bytes and
 * its chunk spans. The main pass has g->scr; each pre-pass thread its own
 * (RESUME). */
typedef struct scratch {
    char *buf;
    size_t bufcap;
    size_t *spans, spancap;
} scratch_t;

/* --resume: a file's chunk hashes, computed while the listing is read. */
typedef struct pre_file {
    size_t ns;   /* chunks */
    uint64_t *h; /* 2 per chunk (owned); NULL: not computed */
    int cached;  /* h came from the hash cache, not from reading the file */
} pre_file_t;

/* --resume: one file's chunks as the leader listed them. */
typedef struct known_chunk {
    uint64_t n, h[2]; /* P#n and its sha */
} known_chunk_t;

typedef struct known_file {
    char *path;       /* P: the ids without "#n" */
    known_chunk_t *c; /* sorted by n once the listing is read */
    size_t nc, cap;
    int seen; /* a file of this run has this P */
} known_file_t;

typedef struct ingest {
    /* settings */
    const char *ep, *prefix, *encoding;
    size_t batch, window, chunk, overlap;
    int mode;        /* repl_mode_t, 0 = the leader's default */
    uint32_t quorum; /* K of quorum:K */
    int dry_run, timeout_ms, resume, sync_deletes, tty;
    int no_cache;          /* --no-cache */
    const char *cache_dir; /* --cache-dir, or NULL: cli_hcache_default_dir */
    int embed_client;   /* --embed-on client: texts embedded here */
    uint32_t embed_dim; /* texts embedded here, this dim; 0 = not here */
    /* --embed-url: texts embedded by the user's model server (cli_embed),
     * batches queued in emb_q (oldest first, the order of their jobs) */
    cli_embed_config_t emb_cfg;
    cli_embed_t *emb;
    struct emb_wait *emb_q, *emb_q_tail;
    size_t emb_window; /* embedding jobs kept queued */
    uint64_t max_errors;
    unsigned max_retries; /* resends in a row, without an answer */
    /* the connection, the batches being filled and those in flight */
    qry_client_t *cl;
    char cid[64];       /* this run's client_id */
    uint64_t seq;       /* the last client_seq */
    Kbsync__Doc **docs; /* each doc and its strings in one allocation */
    size_t ndocs;
    char **dels;
    size_t ndels;
    ingest_slot_t *fl;
    size_t inflight;
    unsigned retries;
    /* --resume: the leader's chunks, by P (open addressing over kf) */
    known_file_t *kf;
    size_t nkf, kfcap;
    uint32_t *kidx; /* index + 1 into kf; 0 = empty */
    size_t kidxcap;
    pre_file_t *pre; /* one per file of the walk, or NULL */
    scratch_t scr; /* the main pass's */
    /* the hash cache (NULL: none) and the chunk hashes of the file the
     * main pass is at, for it */
    cli_hcache_t *hc;
    uint64_t *fh;
    size_t fhcap;
    uint32_t list_page; /* ids per ListRequest (INGEST_LIST_PAGE) */
    /* figures */
    uint64_t written, failed, unchanged, deleted, missing, unreplicated;
    uint64_t cached; /* files whose chunk hashes came from the cache */
    uint64_t version, errors, resent, answered_retried;
    uint64_t nfiles, files_done, total_bytes, bytes_done, docs_made;
    uint64_t t0, last_progress;
    int progress_shown, stopped;
} ingest_t;

/* ============================================================= messages */

/* A line on stderr; the progress line, if shown, is cleared first. */
static void ingest_msg(ingest_t *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void ingest_msg(ingest_t *g, const char *fmt, ...)
{
    if (g->progress_shown) {
        fputs("\r\033[K", stderr);
        g->progress_shown = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    fputs("kbsync ingest: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void batch_clear(ingest_t *g)
{
    for (size_t i = 0; i < g->ndocs; i++)
        free(g->docs[i]);
    g->ndocs = 0;
    for (size_t i = 0; i < g->ndels; i++)
        free(g->dels[i]);
    g->ndels = 0;
}

/* Stops the run: what is queued and not sent is failed, never sent. */
static void ingest_stop(ingest_t *g)
{
    if (g->stopped)
        return;
    g->stopped = 1;
    g->failed += g->ndocs;
    batch_clear(g);
}

/* One more error (a bad record, a refused batch): stops the run once more
 * than --max-errors were seen. */
static void ingest_error(ingest_t *g)
{
    if (++g->errors > g->max_errors)
        ingest_stop(g);
}

/* A bad record (JSONL line or file): said, counted, skipped. */
static void ingest_bad(ingest_t *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void ingest_bad(ingest_t *g, const char *fmt, ...)
{
    char m[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    ingest_msg(g, "%s", m);
    g->failed++;
    ingest_error(g);
}

/* =================================================== requests in flight */

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

static void slot_free(ingest_slot_t *s)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->docs)
            free(s->docs[i]);
        if (s->ids)
            free(s->ids[i]);
    }
    free(s->docs);
    free(s->ids);
    free(s->vecs);
    s->docs = NULL;
    s->ids = NULL;
    s->vecs = NULL;
    s->n = 0;
}

/* Sends in-flight slot i (again): same client_id and client_seq, so the
 * leader writes it once whatever happened to an earlier attempt. */
static int send_slot(ingest_t *g, size_t i, char *err, size_t errlen)
{
    ingest_slot_t *s = &g->fl[i];
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    Kbsync__UpsertRequest u = KBSYNC__UPSERT_REQUEST__INIT;
    Kbsync__DeleteRequest d = KBSYNC__DELETE_REQUEST__INIT;
    if (s->docs) {
        u.docs = s->docs;
        u.n_docs = s->n;
        u.mode = cli_wire_mode(g->mode);
        u.quorum = g->quorum;
        u.client_id = g->cid;
        u.client_seq = s->seq;
        req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
        req.upsert = &u;
    } else {
        d.ids = s->ids;
        d.n_ids = s->n;
        d.mode = cli_wire_mode(g->mode);
        d.quorum = g->quorum;
        d.client_id = g->cid;
        d.client_seq = s->seq;
        req.body_case = KBSYNC__REQUEST__BODY_DELETE;
        req.delete_ = &d;
    }
    return qry_client_send(g->cl, &req, &s->rid, err, errlen);
}

/* No answer in time: open a new connection (the old one may be dead, and
 * answers on it are lost) and send every request in flight again. */
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

/* Books the answer to slot s (taken out of the window already). */
static void ingest_book(ingest_t *g, ingest_slot_t *s, Kbsync__Response *r)
{
    const char *what = s->docs ? "batch" : "delete";
    if (r->write && r->write->retried)
        g->answered_retried++;
    if (r->write && r->write->version > g->version)
        g->version = r->write->version;
    if (r->error && r->write) {
        /* `all` timed out: committed on the leader, not confirmed on every
         * named replica. */
        ingest_msg(g, "%s of %zu: %s", what, s->n, r->error->message);
        if (s->docs) {
            g->written += r->write->written;
            g->unreplicated += r->write->written;
        } else {
            g->deleted += r->write->written;
        }
        ingest_error(g);
    } else if (r->error || !r->write) {
        ingest_msg(g, "%s of %zu refused, nothing of it written: %s: %s", what,
                   s->n, r->error ? kb_errname(r->error->code) : "?",
                   r->error ? r->error->message : "no write result");
        g->failed += s->n;
        ingest_error(g);
    } else if (s->docs) {
        g->written += r->write->written;
    } else {
        g->deleted += r->write->written;
        g->missing += r->write->missing;
    }
}

/* Waits for one in-flight answer and books it. */
static void ingest_reap(ingest_t *g)
{
    char err[512];
    Kbsync__Response *r;
    int rc = qry_client_recv(g->cl, g->timeout_ms, &r, err, sizeof err);
    while (rc && g->retries < g->max_retries) {
        g->retries++;
        ingest_msg(g,
                   "%s; sending the %zu requests in flight again on a new "
                   "connection (attempt %u of %u; the leader writes each "
                   "once)",
                   err, g->inflight, g->retries, g->max_retries);
        rc = ingest_resend(g, err, sizeof err);
        if (!rc)
            rc = qry_client_recv(g->cl, g->timeout_ms, &r, err, sizeof err);
    }
    if (rc) {
        ingest_msg(g, "%s", err);
        /* Unknown outcome for what is in flight: count it as failed. */
        for (size_t i = 0; i < g->inflight; i++) {
            if (g->fl[i].docs)
                g->failed += g->fl[i].n;
            slot_free(&g->fl[i]);
        }
        g->inflight = 0;
        ingest_stop(g);
        return;
    }
    g->retries = 0;
    size_t i = 0;
    while (i < g->inflight && g->fl[i].rid != r->request_id)
        i++;
    if (i == g->inflight) {
        ingest_msg(g, "unexpected answer id %llu",
                   (unsigned long long)r->request_id);
    } else {
        ingest_slot_t s = g->fl[i];
        g->fl[i] = g->fl[--g->inflight];
        ingest_book(g, &s, r);
        slot_free(&s);
    }
    kbsync__response__free_unpacked(r, NULL);
}

/* Sends n docs (or n delete ids), taking them, once the window has room. */
static void ingest_dispatch(ingest_t *g, Kbsync__Doc **docs, char **ids,
                            size_t n, float *vecs)
{
    while (g->inflight >= g->window && !g->stopped)
        ingest_reap(g);
    ingest_slot_t dropped = {0, 0, n, docs, ids, vecs}, *s = &dropped;
    if (g->stopped) {
        if (docs)
            g->failed += n;
        slot_free(s);
        return;
    }
    s = &g->fl[g->inflight];
    *s = (ingest_slot_t){0, ++g->seq, n, docs, ids, vecs};
    char err[512];
    if (send_slot(g, g->inflight, err, sizeof err)) {
        ingest_msg(g, "%s", err);
        if (docs)
            g->failed += n;
        slot_free(s);
        ingest_stop(g);
        return;
    }
    g->inflight++;
}

/* THE place where a batch's texts get their vectors before it is sent.
 * Docs that carry an embedding (JSONL records with one) are left alone.
 * By default (--embed-on node) nothing happens here and the leader embeds
 * the texts itself. With --embed-on client they are embedded here with
 * the same built-in embedder the node uses (indexer/idx_embed, the
 * knowledge base's dim from its status): the vectors the leader would
 * make, computed off its single write thread (about a third of its CPU
 * in an ingest of text; worth it when the client has cores to spare). A
 * client-side model (--embed-url) hooks in here too. The docs point into *vecs
 * (owned by the caller, freed with the batch). Returns 0 or KB_ENOMEM. */
static int ingest_embed(ingest_t *g, Kbsync__Doc **docs, size_t n, float **vecs)
{
    size_t need = 0;
    *vecs = NULL;
    for (size_t i = 0; g->embed_dim && !g->emb && i < n; i++)
        need += docs[i]->n_embedding == 0 && docs[i]->text[0];
    if (!need)
        return 0;
    float *v = malloc(need * g->embed_dim * sizeof *v);
    if (!v)
        return KB_ENOMEM;
    for (size_t i = 0, k = 0; i < n; i++) {
        Kbsync__Doc *d = docs[i];
        if (d->n_embedding || !d->text[0])
            continue;
        d->embedding = v + k++ * g->embed_dim;
        d->n_embedding = g->embed_dim;
        idx_embed_text(d->text, strlen(d->text), d->embedding, g->embed_dim);
    }
    *vecs = v;
    return 0;
}

/* --embed-url: a batch waiting for its texts' vectors from the model
 * server; the tag of its embedding job. need[k]: the doc that gets the
 * job's vector k (docs with an "embedding" or no text get none). */
typedef struct emb_wait {
    struct emb_wait *next;
    Kbsync__Doc **docs; /* owned */
    size_t n, nneed, need[];
} emb_wait_t;

static void emb_wait_fail(ingest_t *g, emb_wait_t *w, float *vecs)
{
    ingest_slot_t s = {0, 0, w->n, w->docs, NULL, vecs};
    g->failed += w->n;
    slot_free(&s);
    free(w);
}

/* Takes the oldest embedding job (waiting up to wait_ms, < 0: for ever)
 * and sends its batch with the vectors, or fails the batch, naming its
 * documents. Returns 0 when a job was taken, -EAGAIN when none is ready,
 * KB_EINVAL when none is pending. */
static int ingest_embed_take(ingest_t *g, int wait_ms)
{
    if (!cli_embed_pending(g->emb))
        return KB_EINVAL;
    cli_embed_result_t r;
    char err[800];
    int rc = cli_embed_next(g->emb, wait_ms, &r, err, sizeof err);
    if (rc == -EAGAIN)
        return rc;
    emb_wait_t *w = g->emb_q; /* jobs come back in order: r.tag == w */
    g->emb_q = w->next;
    if (!g->emb_q)
        g->emb_q_tail = NULL;
    if (rc) {
        Kbsync__Doc *a = w->docs[w->need[r.failed_from]],
                    *b = w->docs[w->need[r.failed_from + r.failed_n - 1]];
        ingest_msg(g, "%s: documents %s .. %s; the batch of %zu from %s "
                      "was not sent",
                   err, a->id, b->id, w->n, w->docs[0]->id);
        emb_wait_fail(g, w, NULL);
        ingest_error(g);
        return 0;
    }
    if (g->stopped) {
        emb_wait_fail(g, w, r.vectors);
        return 0;
    }
    for (size_t k = 0; k < w->nneed; k++) {
        Kbsync__Doc *d = w->docs[w->need[k]];
        d->embedding = r.vectors + k * r.dim;
        d->n_embedding = r.dim;
    }
    Kbsync__Doc **docs = w->docs;
    size_t n = w->n;
    free(w);
    ingest_dispatch(g, docs, NULL, n, r.vectors); /* the slot owns vectors */
    return 0;
}

/* Queues the docs for embedding by the model server; batches that are
 * embedded go out meanwhile, and at most emb_window jobs stay queued. */
static void ingest_embed_submit(ingest_t *g, Kbsync__Doc **docs, size_t n)
{
    emb_wait_t *w = malloc(sizeof *w + n * sizeof w->need[0]);
    const char **texts = malloc(n * sizeof *texts);
    char err[800];
    if (!w || !texts) {
        ingest_msg(g, "out of memory");
        free(texts);
        free(w);
        ingest_slot_t s = {0, 0, n, docs, NULL, NULL};
        g->failed += n;
        slot_free(&s);
        ingest_stop(g);
        return;
    }
    w->next = NULL;
    w->docs = docs;
    w->n = n;
    w->nneed = 0;
    for (size_t i = 0; i < n; i++)
        if (!docs[i]->n_embedding && docs[i]->text[0]) {
            w->need[w->nneed] = i;
            texts[w->nneed++] = docs[i]->text;
        }
    int rc = cli_embed_submit(g->emb, texts, NULL, w->nneed, w, err,
                              sizeof err);
    free(texts);
    if (rc) {
        ingest_msg(g, "%s (the batch of %zu from %s was not sent)", err, n,
                   docs[0]->id);
        emb_wait_fail(g, w, NULL);
        ingest_error(g);
        return;
    }
    if (g->emb_q_tail)
        g->emb_q_tail->next = w;
    else
        g->emb_q = w;
    g->emb_q_tail = w;
    while (!ingest_embed_take(g, 0)) {
    }
    while (cli_embed_pending(g->emb) >= g->emb_window)
        ingest_embed_take(g, -1);
}

/* Sends every batch still waiting for vectors (in order), e.g. before
 * deletes. A stopped run leaves them to ingest_embed_close. */
static void ingest_embed_drain(ingest_t *g)
{
    while (g->emb && !g->stopped && !ingest_embed_take(g, -1)) {
    }
}

/* Says what the model server did, stops the client and fails the batches
 * a stopped run left waiting. */
static void ingest_embed_close(ingest_t *g)
{
    if (!g->emb)
        return;
    cli_embed_stats_t st;
    cli_embed_stats(g->emb, &st);
    ingest_msg(g,
               "embedding server: %llu texts in %llu requests (%llu "
               "retried), %llu batches failed",
               (unsigned long long)st.texts, (unsigned long long)st.attempts,
               (unsigned long long)st.retries,
               (unsigned long long)st.batches_failed);
    cli_embed_close(&g->emb);
    while (g->emb_q) {
        emb_wait_t *w = g->emb_q;
        g->emb_q = w->next;
        emb_wait_fail(g, w, NULL);
    }
    g->emb_q_tail = NULL;
}

/* Sends the batch of documents being filled. */
static void ingest_send(ingest_t *g)
{
    if (g->ndocs == 0 || g->stopped)
        return;
    if (g->dry_run) {
        g->written += g->ndocs;
        batch_clear(g);
        return;
    }
    Kbsync__Doc **docs = malloc(g->ndocs * sizeof *docs);
    float *vecs = NULL;
    if (!docs || ingest_embed(g, g->docs, g->ndocs, &vecs)) {
        ingest_msg(g, "out of memory");
        free(docs);
        ingest_stop(g);
        return;
    }
    memcpy(docs, g->docs, g->ndocs * sizeof *docs);
    size_t n = g->ndocs;
    g->ndocs = 0;
    if (g->emb)
        ingest_embed_submit(g, docs, n);
    else
        ingest_dispatch(g, docs, NULL, n, vecs);
}

/* Sends the batch of ids to delete being filled. */
static void ingest_send_dels(ingest_t *g)
{
    ingest_embed_drain(g); /* upserts queued before go first */
    if (g->ndels == 0 || g->stopped)
        return;
    if (g->dry_run) {
        g->deleted += g->ndels;
        batch_clear(g);
        return;
    }
    char **ids = malloc(g->ndels * sizeof *ids);
    if (!ids) {
        ingest_msg(g, "out of memory");
        ingest_stop(g);
        return;
    }
    memcpy(ids, g->dels, g->ndels * sizeof *ids);
    size_t n = g->ndels;
    g->ndels = 0;
    ingest_dispatch(g, NULL, ids, n, NULL);
}

static void ingest_add(ingest_t *g, Kbsync__Doc *d)
{
    if (!d) {
        ingest_msg(g, "out of memory");
        ingest_stop(g);
        return;
    }
    if (g->stopped) {
        free(d);
        return;
    }
    g->docs[g->ndocs++] = d;
    if (g->ndocs == g->batch)
        ingest_send(g);
}

/* Queues the deletion of id path#n. */
static void ingest_del(ingest_t *g, const char *path, uint64_t n)
{
    char *id;
    if (g->stopped)
        return;
    if (asprintf(&id, "%s#%llu", path, (unsigned long long)n) < 0) {
        ingest_msg(g, "out of memory");
        ingest_stop(g);
        return;
    }
    g->dels[g->ndels++] = id;
    if (g->ndels == g->batch)
        ingest_send_dels(g);
}

/* ============================================= resume: what the leader has */

static uint64_t path_hash(const char *p, size_t n)
{
    uint64_t h[2];
    cli_hash128(p, n, 0, h);
    return h[0];
}

static known_file_t *known_find(ingest_t *g, const char *p, size_t n)
{
    if (!g->kidxcap)
        return NULL;
    size_t mask = g->kidxcap - 1, i = (size_t)path_hash(p, n) & mask;
    for (; g->kidx[i]; i = (i + 1) & mask) {
        known_file_t *k = &g->kf[g->kidx[i] - 1];
        if (strlen(k->path) == n && !memcmp(k->path, p, n))
            return k;
    }
    return NULL;
}

static int known_reindex(ingest_t *g, size_t cap)
{
    uint32_t *ix = calloc(cap, sizeof *ix);
    if (!ix)
        return KB_ENOMEM;
    free(g->kidx);
    g->kidx = ix;
    g->kidxcap = cap;
    for (size_t k = 0; k < g->nkf; k++) {
        const char *p = g->kf[k].path;
        size_t i = (size_t)path_hash(p, strlen(p)) & (cap - 1);
        while (ix[i])
            i = (i + 1) & (cap - 1);
        ix[i] = (uint32_t)k + 1;
    }
    return 0;
}

static known_file_t *known_get(ingest_t *g, const char *p, size_t n)
{
    known_file_t *k = g->nkf ? &g->kf[g->nkf - 1] : NULL;
    if (k && strlen(k->path) == n && !memcmp(k->path, p, n))
        return k; /* the ids of one file come together, mostly */
    if ((k = known_find(g, p, n)) != NULL)
        return k;
    if (g->nkf == g->kfcap) {
        size_t cap = g->kfcap ? g->kfcap * 2 : 1024;
        known_file_t *nk = realloc(g->kf, cap * sizeof *nk);
        if (!nk)
            return NULL;
        g->kf = nk;
        g->kfcap = cap;
    }
    k = &g->kf[g->nkf];
    *k = (known_file_t){0};
    if (!(k->path = strndup(p, n)))
        return NULL;
    g->nkf++;
    if (g->nkf * 2 > g->kidxcap)
        return known_reindex(g, g->kidxcap ? g->kidxcap * 2 : 4096)
                   ? NULL
                   : &g->kf[g->nkf - 1];
    size_t mask = g->kidxcap - 1, i = (size_t)path_hash(p, n) & mask;
    while (g->kidx[i])
        i = (i + 1) & mask;
    g->kidx[i] = (uint32_t)g->nkf;
    return k;
}

/* 32 hex digits -> h[2]; 0, or -1 when s is not that. */
static int parse_sha(const char *s, size_t n, uint64_t h[2])
{
    if (n != 32)
        return -1;
    h[0] = h[1] = 0;
    for (size_t i = 0; i < 32; i++) {
        int c = s[i], v = c >= '0' && c <= '9'   ? c - '0'
                          : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                                 : -1;
        if (v < 0)
            return -1;
        h[i / 16] = h[i / 16] << 4 | (uint64_t)v;
    }
    return 0;
}

/* Books one listed document if it is a chunk (see RESUME). */
static int known_add(ingest_t *g, const char *id, const char *meta)
{
    const char *hash = strrchr(id, '#');
    size_t ml = strlen(meta);
    uint64_t h[2], n = 0;
    if (!hash || !hash[1] || ml != 34 || meta[0] != '"' || meta[33] != '"' ||
        parse_sha(meta + 1, 32, h) || (hash[1] == '0' && hash[2]) ||
        strlen(hash + 1) > 18)
        return 0;
    for (const char *p = hash + 1; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        n = n * 10 + (uint64_t)(*p - '0');
    }
    known_file_t *k = known_get(g, id, (size_t)(hash - id));
    if (!k)
        return KB_ENOMEM;
    if (k->nc == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 8;
        known_chunk_t *nc = realloc(k->c, cap * sizeof *nc);
        if (!nc)
            return KB_ENOMEM;
        k->c = nc;
        k->cap = cap;
    }
    k->c[k->nc++] = (known_chunk_t){n, {h[0], h[1]}};
    return 0;
}

static int cmp_chunk_n(const void *a, const void *b)
{
    uint64_t x = ((const known_chunk_t *)a)->n,
             y = ((const known_chunk_t *)b)->n;
    return x < y ? -1 : x > y;
}

static const known_chunk_t *known_chunk(const known_file_t *k, uint64_t n)
{
    size_t lo = 0, hi = k->nc;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (k->c[mid].n < n)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < k->nc && k->c[lo].n == n ? &k->c[lo] : NULL;
}

/* The listing (RESUME, step 1) reads two ranges of ids side by side over
 * the one connection, so that the node makes one's next page while this
 * side reads the other's: ids up to `upto` (the cursor stops at the first
 * id past it), and ids after it. */
typedef struct list_cursor {
    char *after;      /* the next page starts after this id (owned) */
    const char *upto; /* NULL: to the end */
    uint64_t rid;     /* the page request in flight */
    int done;
} list_cursor_t;

static int list_send(ingest_t *g, list_cursor_t *c)
{
    Kbsync__ListRequest lq = KBSYNC__LIST_REQUEST__INIT;
    lq.prefix = (char *)g->prefix;
    lq.after = c->after;
    lq.limit = g->list_page;
    lq.meta_key = "sha";
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_LIST;
    req.list = &lq;
    char err[512];
    int rc = qry_client_send(g->cl, &req, &c->rid, err, sizeof err);
    if (rc)
        ingest_msg(g, "--resume: listing the leader's chunks: %s", err);
    return rc;
}

/* Books one page's entries for cursor c and moves it on. */
static int list_take(ingest_t *g, list_cursor_t *c, const Kbsync__ListResult *l)
{
    int rc = 0;
    if (l->version > g->version)
        g->version = l->version;
    size_t i = 0;
    for (; !rc && i < l->n_entries; i++) {
        if (c->upto && strcmp(l->entries[i]->id, c->upto) > 0)
            break; /* the next cursor's */
        rc = known_add(g, l->entries[i]->id, l->entries[i]->meta_value);
    }
    c->done = i < l->n_entries || !l->more || !l->n_entries;
    if (!c->done && !rc) {
        free(c->after);
        c->after = strdup(l->entries[l->n_entries - 1]->id);
        rc = c->after ? 0 : KB_ENOMEM;
    }
    return rc;
}

/* The listing's thread and what the main thread tells it: where to split
 * (published once the walk is done; NULL or "": one range), and to give
 * up (the walk failed). */
typedef struct list_job {
    ingest_t *g;
    char *split;          /* owned; read after split_set */
    atomic_int split_set; /* 1: split is final */
    atomic_int cancel;
    int rc;
} list_job_t;

#define INGEST_LIST_SLICE_MS 50 /* a cancel is seen this soon */

/* Reads what the leader holds under the prefix (RESUME, step 1). It starts
 * with one range; once the split is known, a range that has not passed it
 * yet stops there and a second range starts after it. */
static int ingest_list(list_job_t *job)
{
    ingest_t *g = job->g;
    list_cursor_t cur[2] = {{strdup(""), NULL, 0, 0}, {NULL, NULL, 0, 1}};
    int split_taken = 0;
    int rc = cur[0].after ? list_send(g, &cur[0]) : KB_ENOMEM;
    uint64_t waited = 0;
    while (!rc && !(cur[0].done && cur[1].done)) {
        if (!split_taken && atomic_load(&job->split_set)) {
            split_taken = 1;
            const char *x = job->split;
            if (x && *x && !cur[0].done && strcmp(cur[0].after, x) < 0) {
                cur[0].upto = x;
                cur[1] = (list_cursor_t){strdup(x), NULL, 0, 0};
                rc = cur[1].after ? list_send(g, &cur[1]) : KB_ENOMEM;
                if (rc)
                    break;
            }
        }
        if (atomic_load(&job->cancel)) {
            rc = -ECANCELED;
            break;
        }
        Kbsync__Response *r;
        char err[512];
        rc = qry_client_recv(g->cl, INGEST_LIST_SLICE_MS, &r, err, sizeof err);
        if (rc == KB_ETIMEOUT &&
            (waited += INGEST_LIST_SLICE_MS) < (uint64_t)g->timeout_ms) {
            rc = 0;
            continue;
        }
        if (rc) {
            if (rc == KB_ETIMEOUT)
                snprintf(err, sizeof err, "no answer from %s within %d ms",
                         g->ep, g->timeout_ms);
            ingest_msg(g, "--resume: listing the leader's chunks: %s", err);
            break;
        }
        waited = 0;
        list_cursor_t *c = NULL;
        for (int i = 0; i < 2; i++)
            if (!cur[i].done && r->request_id == cur[i].rid)
                c = &cur[i];
        if (!c && !(r->request_id == 0 && r->error)) {
            kbsync__response__free_unpacked(r, NULL); /* a stale answer */
            continue;
        }
        if (r->error || !r->list) {
            ingest_msg(g, "--resume: listing the leader's chunks: %s: %s",
                       r->error ? kb_errname(r->error->code) : "?",
                       r->error ? r->error->message : "no list result");
            rc = r->error ? r->error->code : KB_EBADMSG;
        } else {
            rc = list_take(g, c, r->list);
            if (!rc && !c->done)
                rc = list_send(g, c);
        }
        kbsync__response__free_unpacked(r, NULL);
    }
    if (rc == KB_ENOMEM)
        ingest_msg(g, "--resume: out of memory listing the leader's chunks");
    free(cur[0].after);
    free(cur[1].after);
    for (size_t i = 0; i < g->nkf; i++)
        qsort(g->kf[i].c, g->kf[i].nc, sizeof *g->kf[i].c, cmp_chunk_n);
    return rc;
}

/* RESUME, step 3: the chunks of files no longer there. */
static void ingest_sync_deletes(ingest_t *g)
{
    for (size_t i = 0; i < g->nkf && !g->stopped; i++)
        for (size_t j = 0; !g->kf[i].seen && j < g->kf[i].nc; j++)
            ingest_del(g, g->kf[i].path, g->kf[i].c[j].n);
}

static void known_free(ingest_t *g)
{
    for (size_t i = 0; i < g->nkf; i++) {
        free(g->kf[i].path);
        free(g->kf[i].c);
    }
    free(g->kf);
    free(g->kidx);
}

/* ================================================================ files */

/* Reads the whole file into sc->buf; `size` (the walk's stat; 0: not
 * known) sizes the first read, and a file that grew since is read to its
 * end all the same. Returns 0 or -errno. */
static int read_all(scratch_t *sc, const char *path, uint64_t size,
                    size_t *len)
{
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    size_t want = size > 0 && size < SIZE_MAX / 2 ? (size_t)size
                  : fstat(fd, &st) == 0 && st.st_size > 0
                      ? (size_t)st.st_size
                      : 65536;
    size_t n = 0;
    int rc = 0;
    for (;;) {
        if (n + want + 1 > sc->bufcap) {
            size_t cap = sc->bufcap ? sc->bufcap : 65536;
            while (cap < n + want + 1)
                cap *= 2;
            char *nb = realloc(sc->buf, cap);
            if (!nb) {
                rc = -ENOMEM;
                break;
            }
            sc->buf = nb;
            sc->bufcap = cap;
        }
        ssize_t got = read(fd, sc->buf + n, sc->bufcap - n - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            rc = got < 0 ? -errno : 0;
            break;
        }
        n += (size_t)got;
        want = 65536;
    }
    close(fd);
    *len = n;
    return rc;
}

/* A bad file, unless quiet (the pre-pass: the main pass says it). */
#define file_bad(g, quiet, ...)                                                \
    do {                                                                       \
        if (!(quiet))                                                          \
            ingest_bad(g, __VA_ARGS__);                                        \
    } while (0)

/* The file's text as UTF-8 in *text (sc->buf or *owned, which the caller
 * frees). Returns 0, or -1 after reporting it as a bad record (unless
 * quiet: then g is only read, and any thread may call it). */
static int file_text(ingest_t *g, scratch_t *sc, const cli_file_t *f,
                     const char **text, size_t *n, char **owned, int quiet)
{
    size_t len, bad;
    const char *why;
    int rc = read_all(sc, f->path, f->size, &len);
    if (rc) {
        file_bad(g, quiet, "%s: cannot read: %s", f->path, strerror(-rc));
        return -1;
    }
    *text = sc->buf;
    *n = len;
    if (!cli_utf8_check(sc->buf, len, &bad, &why))
        return 0;
    uint64_t line, col;
    if (!g->encoding) {
        cli_line_col(sc->buf, bad, &line, &col);
        file_bad(g, quiet,
                 "%s:%llu:%llu: text: %s (byte 0x%02x): not a UTF-8 text "
                 "file; give its encoding with --encoding (e.g. latin1)",
                 f->path, (unsigned long long)line, (unsigned long long)col,
                 why, (unsigned char)sc->buf[bad]);
        return -1;
    }
    char err[256];
    if (cli_decode(g->encoding, sc->buf, len, owned, n, &bad, err,
                   sizeof err)) {
        cli_line_col(sc->buf, bad, &line, &col);
        file_bad(g, quiet, "%s:%llu:%llu: text: %s", f->path,
                 (unsigned long long)line, (unsigned long long)col, err);
        return -1;
    }
    *text = *owned;
    if (!cli_utf8_check(*owned, *n, &bad, &why))
        return 0;
    cli_line_col(*owned, bad, &line, &col);
    file_bad(g, quiet, "%s:%llu:%llu: text: %s after decoding from %s", f->path,
             (unsigned long long)line, (unsigned long long)col, why,
             g->encoding);
    free(*owned);
    *owned = NULL;
    return -1;
}

/* Checks that P can make chunk ids up to P#last. Returns 0 or -1 after
 * reporting it. */
static int check_path(ingest_t *g, const cli_file_t *f, const char *p,
                      size_t last)
{
    size_t bad, n = strlen(p);
    const char *why;
    char num[24];
    int dl = snprintf(num, sizeof num, "%zu", last);
    if (cli_utf8_check(p, n, &bad, &why)) {
        ingest_bad(g, "%s: id: the path is not UTF-8 (%s at byte %zu)", f->path,
                   why, bad);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f) {
            ingest_bad(g,
                       "%s: id: the path holds control character 0x%02x, "
                       "which ids may not",
                       f->path, (unsigned char)p[i]);
            return -1;
        }
    if (n + 1 + (size_t)dl > KB_MAX_ID_LEN) {
        ingest_bad(g,
                   "%s: id: \"%s#%s\" would be %zu bytes, over the %u "
                   "bytes an id may have",
                   f->path, p, num, n + 1 + (size_t)dl, KB_MAX_ID_LEN);
        return -1;
    }
    return 0;
}

/* The spans of text in sc->spans (start, end pairs); returns their
 * count, or SIZE_MAX when out of memory. Reads g only. */
static size_t file_spans(const ingest_t *g, scratch_t *sc, const char *text,
                         size_t n, size_t from)
{
    cli_chunker_t ck;
    cli_chunker_init(&ck, text, n, g->chunk, g->overlap);
    ck.pos = from;
    size_t ns = 0, s, e;
    while (cli_chunker_next(&ck, &s, &e)) {
        /* Nothing for the built-in embedder (e.g. a "----" rule alone):
         * the node would refuse it, and a search could never find it by its
         * words. Your model server (--embed-url) may see more in it. */
        if (!g->emb_cfg.url && !idx_embed_has_words(text + s, e - s))
            continue;
        if (2 * ns + 2 > sc->spancap) {
            size_t cap = sc->spancap ? sc->spancap * 2 : 256;
            size_t *nsp = realloc(sc->spans, cap * sizeof *nsp);
            if (!nsp)
                return SIZE_MAX;
            sc->spans = nsp;
            sc->spancap = cap;
        }
        sc->spans[2 * ns] = s;
        sc->spans[2 * ns + 1] = e;
        ns++;
    }
    return ns;
}

/* Chunk i's (sc->spans) hash and source offsets; base: the offset of
 * text's first byte in the file (a byte-order mark before HTML). */
static void chunk_sha(const ingest_t *g, const scratch_t *sc, size_t i,
                      const char *text,
                      const cli_text_t *map, size_t base, uint64_t h[2],
                      size_t *ss, size_t *se)
{
    size_t s = sc->spans[2 * i], e = sc->spans[2 * i + 1];
    *ss = base + cli_text_src_start(map, s);
    *se = base + cli_text_src_end(map, e);
    /* The model server's model is part of what is stored: another model
     * (or the built-in embedder, salt "") must rewrite every chunk. */
    cli_chunk_params_t par = {g->chunk, g->overlap, *ss, *se,
                              g->emb_cfg.url ? g->emb_cfg.model : ""};
    cli_chunk_hash(text + s, e - s, &par, h);
}

/* Queues chunk i of file P (unless --resume finds it unchanged). */
static void file_chunk(ingest_t *g, const char *p, const known_file_t *k,
                       size_t i, const char *text, const cli_text_t *map,
                       size_t base)
{
    size_t s = g->scr.spans[2 * i], e = g->scr.spans[2 * i + 1], ss, se;
    char hex[33], id[KB_MAX_ID_LEN + 32], meta[KB_MAX_ID_LEN * 6 + 160];
    uint64_t h[2];
    chunk_sha(g, &g->scr, i, text, map, base, h, &ss, &se);
    if (g->fh) {
        g->fh[2 * i] = h[0];
        g->fh[2 * i + 1] = h[1];
    }
    g->docs_made++;
    const known_chunk_t *kc = k ? known_chunk(k, i) : NULL;
    if (kc && kc->h[0] == h[0] && kc->h[1] == h[1]) {
        g->unchanged++;
        return;
    }
    cli_hash_hex(h, hex);
    int idl = snprintf(id, sizeof id, "%s#%zu", p, i);
    size_t ml = 0;
    memcpy(meta, "{\"source\":", 10);
    ml = 10;
    cli_json_str(meta, sizeof meta, &ml, p, strlen(p));
    ml += (size_t)snprintf(meta + ml, sizeof meta - ml,
                           ",\"chunk\":%zu,\"start\":%zu,\"end\":%zu,"
                           "\"sha\":\"%s\"}",
                           i, ss, se, hex);
    ingest_add(g, doc_new(id, (size_t)idl, text + s, e - s, NULL, 0, meta, ml));
}

/* Records file f's chunk hashes in the hash cache; without memory the
 * cache is given up (nothing is saved), the run goes on. */
static void ingest_cache_put(ingest_t *g, const cli_file_t *f,
                             const uint64_t *h, size_t ns)
{
    if (g->hc && cli_hcache_put(g->hc, f, h, ns)) {
        cli_hcache_free(g->hc);
        g->hc = NULL;
    }
}

/* Room in g->fh for ns chunks' hashes (none: g->fh NULL, no cache). */
static void ingest_fh_reserve(ingest_t *g, size_t ns)
{
    if (!g->hc) {
        free(g->fh);
        g->fh = NULL;
        g->fhcap = 0;
        return;
    }
    if (2 * ns <= g->fhcap && g->fh)
        return;
    size_t cap = g->fhcap ? g->fhcap : 256;
    while (cap < 2 * ns)
        cap *= 2;
    uint64_t *n = realloc(g->fh, cap * sizeof *n);
    if (!n) {
        free(g->fh);
        g->fh = NULL;
        g->fhcap = 0;
        cli_hcache_free(g->hc);
        g->hc = NULL;
        return;
    }
    g->fh = n;
    g->fhcap = cap;
}

/* Chunks a file's text and queues what is new (and, with --resume, the
 * deletion of chunks beyond the new count). */
static void file_chunks(ingest_t *g, const cli_file_t *f, const char *p,
                        known_file_t *k, const char *text, size_t n)
{
    size_t bom = n >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3) ? 3 : 0;
    cli_text_t html = {0}, *map = NULL;
    if (f->kind == CLI_KIND_HTML) {
        if (cli_html_extract(text + bom, n - bom, &html)) {
            ingest_msg(g, "%s: out of memory", f->path);
            ingest_stop(g);
            return;
        }
        map = &html;
        text = html.s;
        n = html.n;
    }
    size_t ns = file_spans(g, &g->scr, text, n, map ? 0 : bom);
    if (ns == SIZE_MAX) {
        ingest_msg(g, "out of memory");
        ingest_stop(g);
        ns = 0;
    }
    if (!g->stopped && !check_path(g, f, p, ns ? ns - 1 : 0)) {
        ingest_fh_reserve(g, ns);
        for (size_t i = 0; i < ns && !g->stopped; i++)
            file_chunk(g, p, k, i, text, map, map ? bom : 0);
        for (size_t j = 0; k && j < k->nc && !g->stopped; j++)
            if (k->c[j].n >= ns)
                ingest_del(g, p, k->c[j].n);
        if (g->fh && !g->stopped)
            ingest_cache_put(g, f, g->fh, ns);
    }
    cli_text_free(&html);
}

/* The pre-pass's chunk hashes of file f match what the leader has. */
static int pre_unchanged(const known_file_t *k, const pre_file_t *pf)
{
    if (!pf || !pf->h || k->nc != pf->ns)
        return 0;
    for (size_t i = 0; i < pf->ns; i++)
        if (k->c[i].n != i || k->c[i].h[0] != pf->h[2 * i] ||
            k->c[i].h[1] != pf->h[2 * i + 1])
            return 0;
    return 1;
}

static void ingest_file(ingest_t *g, const cli_file_t *f, pre_file_t *pf)
{
    char *p;
    if (asprintf(&p, "%s%s", g->prefix, f->rel) < 0) {
        ingest_msg(g, "out of memory");
        ingest_stop(g);
        return;
    }
    known_file_t *k = g->resume ? known_find(g, p, strlen(p)) : NULL;
    if (k) /* there, good or bad: --sync-deletes keeps its chunks */
        k->seen = 1;
    const char *text;
    size_t n;
    char *owned = NULL;
    if (k && pre_unchanged(k, pf)) { /* not read again */
        g->cached += pf->cached;
        g->unchanged += pf->ns;
        g->docs_made += pf->ns;
        ingest_cache_put(g, f, pf->h, pf->ns);
    } else if (!file_text(g, &g->scr, f, &text, &n, &owned, 0)) {
        file_chunks(g, f, p, k, text, n);
    }
    free(owned);
    free(p);
}

/* The pre-pass of --resume over file f: its chunk hashes in *pf, quietly
 * (a bad file is left to the main pass, which says what is wrong). Reads g
 * only: the pre-pass threads call it side by side, each with its own
 * scratch. */
static void file_prehash(const ingest_t *g, scratch_t *sc, const cli_file_t *f,
                         pre_file_t *pf)
{
    const char *text;
    size_t n;
    char *owned = NULL;
    if (file_text((ingest_t *)g, sc, f, &text, &n, &owned, 1))
        return;
    size_t bom = n >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3) ? 3 : 0;
    cli_text_t html = {0}, *map = NULL;
    if (f->kind == CLI_KIND_HTML &&
        !cli_html_extract(text + bom, n - bom, &html)) {
        map = &html;
        text = html.s;
        n = html.n;
    }
    if (f->kind != CLI_KIND_HTML || map) {
        size_t ns = file_spans(g, sc, text, n, map ? 0 : bom), ss, se;
        if (ns != SIZE_MAX) {
            pf->h = malloc((2 * ns + 1) * sizeof *pf->h);
            for (size_t i = 0; pf->h && i < ns; i++)
                chunk_sha(g, sc, i, text, map, map ? bom : 0, pf->h + 2 * i,
                          &ss, &se);
            pf->ns = ns;
        }
    }
    cli_text_free(&html);
    free(owned);
}

static void *list_main(void *arg)
{
    list_job_t *j = arg;
    j->rc = ingest_list(j);
    return NULL;
}

static int cmp_rel(const void *a, const void *b)
{
    return strcmp((*(const cli_file_t *const *)a)->rel,
                  (*(const cli_file_t *const *)b)->rel);
}

/* Where the listing splits its two ranges: the id path of the middle
 * file of the walk in id order (so that each range holds about half the
 * chunks of a run like the last one). NULL (one range) for fewer than two
 * files or without memory. The caller frees it. */
static char *list_split(const ingest_t *g, const cli_walk_t *w)
{
    if (w->n < 2)
        return NULL;
    const cli_file_t **f = malloc(w->n * sizeof *f);
    if (!f)
        return NULL;
    for (size_t i = 0; i < w->n; i++)
        f[i] = &w->files[i];
    qsort(f, w->n, sizeof *f, cmp_rel);
    char *x = NULL;
    if (asprintf(&x, "%s%s", g->prefix, f[w->n / 2]->rel) < 0)
        x = NULL;
    free(f);
    /* It goes to the node as ListRequest.after, which must be an id the
     * node would take (not too long, UTF-8): otherwise one range. */
    size_t bad;
    const char *why;
    if (x && (strlen(x) > KB_MAX_ID_LEN ||
              cli_utf8_check(x, strlen(x), &bad, &why))) {
        free(x);
        x = NULL;
    }
    return x;
}

/* The pre-pass threads take the files in turns from `next`. */
#define INGEST_PREHASH_MAX_THREADS 4
typedef struct prehash_job {
    const ingest_t *g;
    const cli_walk_t *w;
    _Atomic size_t *next;
    scratch_t sc;
} prehash_job_t;

static void prehash_files(prehash_job_t *j)
{
    for (;;) {
        size_t i = atomic_fetch_add(j->next, 1);
        if (i >= j->w->n)
            break;
        const cli_file_t *f = &j->w->files[i];
        pre_file_t *pf = &j->g->pre[i];
        size_t ns;
        const uint64_t *h =
            f->kind == CLI_KIND_JSONL ? NULL : cli_hcache_get(j->g->hc, f, &ns);
        if (h && (pf->h = malloc((2 * ns + 1) * sizeof *pf->h))) {
            if (ns)
                memcpy(pf->h, h, 2 * ns * sizeof *h);
            pf->ns = ns;
            pf->cached = 1;
        } else if (f->kind != CLI_KIND_JSONL) {
            file_prehash(j->g, &j->sc, f, pf);
        }
    }
}

static void *prehash_main(void *arg)
{
    prehash_files(arg);
    return NULL;
}

/* RESUME, step 1: the listing is read by a thread (the only user of g->cl
 * and of the known table until it is joined), started before the walk
 * (list_start) so that it runs while the files are found, and split in two
 * ranges once they are. Meanwhile this thread and, on a machine with more
 * than one core, up to INGEST_PREHASH_MAX_THREADS - 1 more read and hash
 * the files (each file by one of them, into its own g->pre[i]; g is only
 * read). A file whose hashes then all match the listing is not read
 * again; the others are read once more, in the main pass. A complete
 * resume then takes about the longer of the two, not their sum. */
typedef struct lister {
    list_job_t job;
    pthread_t t;
    int running; /* else: not started (the listing runs in list_finish) */
} lister_t;

static void list_start(ingest_t *g, lister_t *l)
{
    memset(l, 0, sizeof *l);
    l->job.g = g;
    l->running = !pthread_create(&l->t, NULL, list_main, &l->job);
}

/* After the walk: splits the listing, hashes the files (w NULL: the walk
 * failed; the listing is given up), waits for the listing. Returns its
 * result. */
static int list_finish(ingest_t *g, lister_t *l, const cli_walk_t *w)
{
    if (!w) {
        atomic_store(&l->job.cancel, 1);
        if (l->running)
            pthread_join(l->t, NULL);
        free(l->job.split);
        return -ECANCELED;
    }
    l->job.split = list_split(g, w);
    atomic_store(&l->job.split_set, 1);
    g->pre = calloc(w->n + 1, sizeof *g->pre);
    if (!l->running || !g->pre) {
        if (l->running)
            pthread_join(l->t, NULL);
        else
            l->job.rc = ingest_list(&l->job); /* one after the other */
        free(l->job.split);
        return l->job.rc;
    }
    _Atomic size_t next = 0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    size_t nt = cores < 1 ? 1
                : cores > INGEST_PREHASH_MAX_THREADS
                    ? INGEST_PREHASH_MAX_THREADS
                    : (size_t)cores;
    if (nt > w->n)
        nt = w->n ? w->n : 1;
    prehash_job_t job[INGEST_PREHASH_MAX_THREADS];
    pthread_t pt[INGEST_PREHASH_MAX_THREADS];
    size_t started = 1;
    for (size_t i = 0; i < nt; i++)
        job[i] = (prehash_job_t){g, w, &next, {0}};
    job[0].sc = g->scr; /* this thread's: the main pass's buffers */
    while (started < nt &&
           !pthread_create(&pt[started], NULL, prehash_main, &job[started]))
        started++;
    prehash_files(&job[0]);
    g->scr = job[0].sc;
    for (size_t i = 1; i < started; i++) {
        pthread_join(pt[i], NULL);
        free(job[i].sc.buf);
        free(job[i].sc.spans);
    }
    pthread_join(l->t, NULL);
    free(l->job.split);
    return l->job.rc;
}

/* ================================================================ JSONL */

/* Re-reads lines of a JSONL file to explain its errors (they come in
 * line order, so one pass). Only regular files: a pipe cannot be read
 * twice. */
typedef struct line_reader {
    FILE *f;
    uint64_t line; /* of buf */
    char *buf;
    size_t cap;
    ssize_t len;
} line_reader_t;

static const char *line_get(line_reader_t *lr, const char *path, uint64_t ln,
                            size_t *len)
{
    struct stat st;
    if (!lr->f || ln < lr->line) {
        if (lr->f)
            fclose(lr->f);
        lr->f = NULL;
        lr->line = 0;
        if (stat(path, &st) || !S_ISREG(st.st_mode) ||
            !(lr->f = fopen(path, "rb")))
            return NULL;
    }
    while (lr->line < ln) {
        if ((lr->len = getline(&lr->buf, &lr->cap, lr->f)) < 0)
            return NULL;
        lr->line++;
    }
    size_t l = (size_t)lr->len;
    while (l && (lr->buf[l - 1] == '\n' || lr->buf[l - 1] == '\r'))
        l--;
    *len = l;
    return lr->buf;
}

/* A record the reader took but ingest refuses: field and why. */
static void jsonl_field_bad(ingest_t *g, const cli_file_t *f, line_reader_t *lr,
                            uint64_t ln, const char *field, const char *why)
{
    size_t len;
    const char *l = line_get(lr, f->path, ln, &len);
    uint64_t col = l ? cli_json_value_col(l, len, field) : 0;
    const char *name = strcmp(f->path, "-") ? f->path : "<stdin>";
    if (col)
        ingest_bad(g, "%s:%llu:%llu: %s: %s", name, (unsigned long long)ln,
                   (unsigned long long)col, field, why);
    else /* standard input cannot be read again to find the column */
        ingest_bad(g, "%s:%llu: %s: %s", name, (unsigned long long)ln, field,
                   why);
}

/* The reader's error "FILE:LINE: reason", with column and field added. */
static void jsonl_read_bad(ingest_t *g, const cli_file_t *f, line_reader_t *lr,
                           const char *msg, int code)
{
    size_t pl = strlen(f->path);
    char *end;
    if (strncmp(msg, f->path, pl) || msg[pl] != ':') {
        ingest_bad(g, "%s", msg);
        return;
    }
    unsigned long long ln = strtoull(msg + pl + 1, &end, 10);
    const char *reason = *end == ':' ? end + 1 + (end[1] == ' ') : end;
    size_t len;
    const char *l =
        code == KB_EBADJSON ? line_get(lr, f->path, ln, &len) : NULL;
    cli_json_diag_t d;
    if (l && cli_jsonl_diag(l, len, &d))
        ingest_bad(g, "%s:%llu:%llu: %s: %s", f->path, ln,
                   (unsigned long long)d.col, d.field, d.why);
    else if (l)
        ingest_bad(g, "%s:%llu:1: record: %s", f->path, ln, reason);
    else
        ingest_bad(g, "%s", msg);
}

static void ingest_jsonl(ingest_t *g, const cli_file_t *f)
{
    kb_jsonl_t *r;
    int rc = kb_jsonl_open(f->path, &r);
    if (rc) {
        ingest_bad(g, "%s: cannot read: %s", f->path, kb_strerror(rc));
        return;
    }
    line_reader_t lr = {0};
    kb_jsonl_rec_t rec;
    while (!g->stopped && (rc = kb_jsonl_next(r, &rec)) != 0) {
        if (rc < 0)
            jsonl_read_bad(g, f, &lr, kb_jsonl_error(r), rc);
        else if (rec.embedding && rec.embedding_len == 0)
            jsonl_field_bad(g, f, &lr, rec.line, "embedding",
                            "is an empty array");
        else if (memchr(rec.id, 0, rec.id_len))
            /* "\u0000": a protobuf string would be cut there */
            jsonl_field_bad(g, f, &lr, rec.line, "id",
                            "contains a NUL character (\\u0000), which "
                            "\"id\" may not");
        else if (memchr(rec.text, 0, rec.text_len))
            jsonl_field_bad(g, f, &lr, rec.line, "text",
                            "contains a NUL character (\\u0000), which "
                            "\"text\" may not");
        /* What the leader would refuse for this record alone, refused here
         * so that it does not take its batch with it. */
        else if (!rec.embedding && rec.text_len == 0)
            jsonl_field_bad(g, f, &lr, rec.line, "record",
                            "has neither \"text\" nor \"embedding\"");
        else if (!rec.embedding && !g->emb_cfg.url &&
                 !idx_embed_has_words(rec.text, rec.text_len))
            jsonl_field_bad(g, f, &lr, rec.line, "text",
                            "has no word to embed (no letter, digit or "
                            "non-ASCII character): add an \"embedding\" "
                            "or leave the record out");
        else
            ingest_add(g,
                       doc_new(rec.id, rec.id_len, rec.text, rec.text_len,
                               rec.embedding, rec.embedding_len, rec.metadata,
                               rec.metadata ? rec.metadata_len : 0));
        g->docs_made += rc > 0;
    }
    kb_jsonl_close(&r);
    if (lr.f)
        fclose(lr.f);
    free(lr.buf);
}

/* ======================================================= progress, summary */

static void fmt_secs(char *b, size_t n, double s)
{
    if (s >= 3600)
        snprintf(b, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
    else if (s >= 60)
        snprintf(b, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else
        snprintf(b, n, "%ds", (int)(s + 0.5));
}

/* On a terminal: one line, redrawn a few times a second. */
static void ingest_progress(ingest_t *g)
{
    uint64_t now = kb_mono_us();
    if (!g->tty || now - g->last_progress < INGEST_PROGRESS_US)
        return;
    g->last_progress = now;
    double secs = (double)(now - g->t0) / 1e6;
    double mbs = secs > 0 ? (double)g->bytes_done / 1e6 / secs : 0;
    char eta[32] = "?";
    if (mbs > 0 && g->total_bytes >= g->bytes_done)
        fmt_secs(eta, sizeof eta,
                 (double)(g->total_bytes - g->bytes_done) / 1e6 / mbs);
    fprintf(stderr,
            "\r\033[Kkbsync ingest: %llu/%llu files, %.1f/%.1f MB, %.0f "
            "docs/s, %.1f MB/s, ETA %s",
            (unsigned long long)g->files_done, (unsigned long long)g->nfiles,
            (double)g->bytes_done / 1e6, (double)g->total_bytes / 1e6,
            secs > 0 ? (double)g->docs_made / secs : 0.0, mbs, eta);
    fflush(stderr);
    g->progress_shown = 1;
}

/* The one line on stderr at the end, and the JSON line on stdout. */
static void ingest_summary(ingest_t *g, double secs)
{
    if (g->resent)
        ingest_msg(g,
                   "%llu requests sent again after timeouts; the leader "
                   "answered %llu of them from its idempotency table "
                   "(written once, before)",
                   (unsigned long long)g->resent,
                   (unsigned long long)g->answered_retried);
    ingest_msg(g,
               "%llu file%s (%.1f MB) in %.2f s, %.1f MB/s, %.0f docs/s: "
               "%llu documents written, %llu unchanged, %llu deleted, %llu "
               "failed%s%s",
               (unsigned long long)g->files_done, g->files_done == 1 ? "" : "s",
               (double)g->bytes_done / 1e6, secs,
               secs > 0 ? (double)g->bytes_done / 1e6 / secs : 0.0,
               secs > 0 ? (double)g->docs_made / secs : 0.0,
               (unsigned long long)g->written, (unsigned long long)g->unchanged,
               (unsigned long long)g->deleted, (unsigned long long)g->failed,
               g->stopped ? " (stopped)" : "",
               g->dry_run ? " [dry run: nothing sent]" : "");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "written", (double)g->written);
    cJSON_AddNumberToObject(o, "failed", (double)g->failed);
    cJSON_AddNumberToObject(o, "version", (double)g->version);
    cJSON_AddNumberToObject(o, "seconds", secs);
    if (g->unreplicated)
        cJSON_AddNumberToObject(o, "unreplicated", (double)g->unreplicated);
    if (g->resume) {
        cJSON_AddNumberToObject(o, "unchanged", (double)g->unchanged);
        cJSON_AddNumberToObject(o, "cached", (double)g->cached);
        cJSON_AddNumberToObject(o, "deleted", (double)g->deleted);
        if (g->missing)
            cJSON_AddNumberToObject(o, "missing", (double)g->missing);
    }
    char *s = cJSON_PrintUnformatted(o);
    printf("%s\n", s);
    fflush(stdout);
    cJSON_free(s);
    cJSON_Delete(o);
}

/* ================================================================= main */

static int ingest_usage(const char *why)
{
    if (why)
        fprintf(stderr, "kbsync ingest: %s\n", why);
    fputs(INGEST_USAGE, stderr);
    return 2;
}

enum {
    OPT_CHUNK = 1300,
    OPT_OVERLAP,
    OPT_RESUME,
    OPT_SYNC_DELETES,
    OPT_PREFIX,
    OPT_ENCODING,
    OPT_MAX_ERRORS,
    OPT_EMBED_ON,
    OPT_NO_CACHE,
    OPT_CACHE_DIR,
};

static int ingest_check_options(ingest_t *g, int argc);

/* Parses the options into g. Returns 0, or 2 after a usage message. */
static int ingest_options(ingest_t *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, 0, 't'},
        {"batch", required_argument, 0, 'b'},
        {"window", required_argument, 0, 'w'},
        {"keep-going", no_argument, 0, 'k'},
        {"max-errors", required_argument, 0, OPT_MAX_ERRORS},
        {"dry-run", no_argument, 0, 'n'},
        {"json", no_argument, 0, 'j'},
        {"timeout-ms", required_argument, 0, 'T'},
        {"mode", required_argument, 0, 'm'},
        {"retries", required_argument, 0, 'r'},
        {"chunk-bytes", required_argument, 0, OPT_CHUNK},
        {"overlap-bytes", required_argument, 0, OPT_OVERLAP},
        {"resume", no_argument, 0, OPT_RESUME},
        {"sync-deletes", no_argument, 0, OPT_SYNC_DELETES},
        {"id-prefix", required_argument, 0, OPT_PREFIX},
        {"encoding", required_argument, 0, OPT_ENCODING},
        {"embed-on", required_argument, 0, OPT_EMBED_ON},
        {"no-cache", no_argument, 0, OPT_NO_CACHE},
        {"cache-dir", required_argument, 0, OPT_CACHE_DIR},
        {"help", no_argument, 0, 'h'},
        CLI_CLIENT_KEY_OPTIONS,
        CLI_EMBED_OPTIONS,
        {0, 0, 0, 0}};
    int c;
    cli_embed_config_init(&g->emb_cfg);
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (cli_client_key_option(c, optarg) ||
            cli_embed_option(c, optarg, &g->emb_cfg))
            continue;
        switch (c) {
        case 't': g->ep = optarg; break;
        case 'b': g->batch = cli_uint("--batch", optarg, 100000); break;
        case 'w': g->window = cli_uint("--window", optarg, 64); break;
        case 'k': g->max_errors = UINT64_MAX; break;
        case OPT_MAX_ERRORS:
            g->max_errors = cli_uint("--max-errors", optarg, UINT64_MAX);
            break;
        case 'm': g->mode = cli_mode(optarg, &g->quorum); break;
        case 'r':
            g->max_retries = (unsigned)cli_uint("--retries", optarg, 1000);
            break;
        case 'n': g->dry_run = 1; break;
        case 'j': break; /* the summary line is always JSON */
        case 'T':
            g->timeout_ms = (int)cli_uint("--timeout-ms", optarg, 86400000);
            break;
        case OPT_CHUNK:
            g->chunk = cli_uint("--chunk-bytes", optarg, CLI_CHUNK_MAX);
            break;
        case OPT_OVERLAP:
            g->overlap = cli_uint("--overlap-bytes", optarg, CLI_CHUNK_MAX);
            break;
        case OPT_SYNC_DELETES: g->sync_deletes = 1; /* fallthrough */
        case OPT_RESUME: g->resume = 1; break;
        case OPT_PREFIX: g->prefix = optarg; break;
        case OPT_ENCODING: g->encoding = optarg; break;
        case OPT_NO_CACHE: g->no_cache = 1; break;
        case OPT_CACHE_DIR: g->cache_dir = optarg; break;
        case OPT_EMBED_ON:
            if (strcmp(optarg, "client") && strcmp(optarg, "node"))
                return ingest_usage("--embed-on takes client or node");
            g->embed_client = !strcmp(optarg, "client");
            break;
        case 'h': fputs(INGEST_USAGE, stdout); exit(0);
        default: return ingest_usage(NULL);
        }
    }
    return ingest_check_options(g, argc);
}

/* The options' values together. Returns 0, or 2 after a usage message. */
static int ingest_check_options(ingest_t *g, int argc)
{
    if (optind >= argc)
        return ingest_usage("no PATH to ingest");
    if (cli_embed_finish(&g->emb_cfg) && g->embed_client)
        return ingest_usage("--embed-url and --embed-on client exclude each "
                            "other");
    if (g->batch == 0 || g->window == 0)
        return ingest_usage("--batch and --window must be at least 1");
    if (g->chunk < CLI_CHUNK_MIN)
        return ingest_usage("--chunk-bytes must be at least 32");
    if (2 * g->overlap >= g->chunk)
        return ingest_usage("--overlap-bytes must be less than half of "
                            "--chunk-bytes");
    if (g->cache_dir && !*g->cache_dir)
        return ingest_usage("--cache-dir is empty (--no-cache: no cache)");
    if (strlen(g->prefix) >= KB_MAX_ID_LEN)
        return ingest_usage("--id-prefix is longer than an id may be");
    if (g->encoding && cli_encoding_ok(g->encoding)) {
        fprintf(stderr,
                "kbsync ingest: --encoding %s: iconv does not know it "
                "(`iconv -l` lists the names)\n",
                g->encoding);
        return 2;
    }
    return 0;
}

/* Walks every PATH; refuses the run (nothing sent) if one cannot be read
 * or two files would make the same ids. */
static int ingest_walk(ingest_t *g, cli_walk_t *w, int argc, char **argv)
{
    char err[1024];
    for (int i = optind; i < argc; i++)
        if (cli_walk_arg(w, argv[i], err, sizeof err)) {
            fprintf(stderr, "kbsync ingest: %s; nothing sent\n", err);
            return 1;
        }
    if (cli_walk_check_unique(w, err, sizeof err)) {
        fprintf(stderr, "kbsync ingest: %s; nothing sent\n", err);
        return 1;
    }
    g->nfiles = w->n;
    g->total_bytes = w->total_bytes;
    return 0;
}

/* Opens the hash cache for this run's roots and settings (not for a dry
 * run, nor with --no-cache, nor without a directory for it). What the
 * hashes depend on besides the files' bytes is in the key: the chunking
 * settings, the embedding salt, the encoding, and this program's binary
 * (a rebuilt or upgraded kbsync may chunk otherwise). The roots are too,
 * so that each tree has a cache file of its own. */
static void ingest_cache_open(ingest_t *g, const cli_walk_t *w, int argc,
                              char **argv, int64_t walk_ns)
{
    if (g->dry_run || g->no_cache)
        return;
    size_t texts = 0;
    for (size_t i = 0; i < w->n; i++)
        texts += w->files[i].kind != CLI_KIND_JSONL;
    char *dir = g->cache_dir ? strdup(g->cache_dir) : cli_hcache_default_dir();
    if (!texts || !dir) {
        free(dir);
        return;
    }
    struct stat exe = {0};
    (void)stat("/proc/self/exe", &exe);
    char *key = NULL;
    size_t kl = 0;
    FILE *k = open_memstream(&key, &kl);
    if (!k) {
        free(dir);
        return;
    }
    fprintf(k,
            "kbsync ingest hash cache 1\nexe %llu %llu %lld.%09ld\n"
            "chunk %zu overlap %zu\nembed %d %s\nencoding %s\n",
            (unsigned long long)exe.st_ino, (unsigned long long)exe.st_size,
            (long long)exe.st_mtim.tv_sec, exe.st_mtim.tv_nsec, g->chunk,
            g->overlap, g->emb_cfg.url != NULL,
            g->emb_cfg.url ? g->emb_cfg.model : "",
            g->encoding ? g->encoding : "");
    for (int i = optind; i < argc; i++) {
        char *rp = realpath(argv[i], NULL);
        fprintf(k, "root %s\n", rp ? rp : argv[i]);
        free(rp);
    }
    int bad = fclose(k) != 0;
    const char *why = NULL;
    if (!bad)
        (void)cli_hcache_open(&g->hc, dir, key, walk_ns, &why);
    free(key);
    free(dir);
}

/* Writes the hash cache for the next run (not after a stopped run: the
 * files it did not reach would drop out of it); a failure is only told. */
static void ingest_cache_save(ingest_t *g)
{
    char err[512];
    if (g->hc && !g->stopped && cli_hcache_save(g->hc, err, sizeof err))
        ingest_msg(g, "hash cache not saved (the next --resume reads every "
                      "file): %s",
                   err);
    cli_hcache_free(g->hc);
    g->hc = NULL;
}

/* This run's identity for idempotent retries: unique per host and run. */
static void ingest_client_id(ingest_t *g)
{
    char host[32] = "";
    gethostname(host, sizeof host - 1);
    unsigned rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        rnd = (unsigned)kb_mono_us();
    snprintf(g->cid, sizeof g->cid, "ingest-%.24s-%d-%08x", host, (int)getpid(),
             rnd);
}

/* The knowledge base's dim, for embedding texts here (ingest_embed).
 * Returns 0, or the error after saying it. */
static int ingest_kb_dim(ingest_t *g)
{
    Kbsync__StatusRequest sq = KBSYNC__STATUS_REQUEST__INIT;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_STATUS;
    req.status = &sq;
    Kbsync__Response *r;
    char err[512];
    int rc = qry_client_call(g->cl, &req, g->timeout_ms, &r, err, sizeof err);
    if (rc) {
        ingest_msg(g, "asking the node for its dim: %s", err);
        return rc;
    }
    if (r->error || !r->status || !r->status->dim) {
        ingest_msg(g, "asking the node for its dim: %s",
                   r->error ? r->error->message : "no dim in its status");
        rc = r->error ? r->error->code : KB_EBADMSG;
    } else {
        g->embed_dim = r->status->dim;
    }
    kbsync__response__free_unpacked(r, NULL);
    return rc;
}

/* --embed-url: checks the model's vectors against the knowledge base's
 * dim (from its status), and keeps enough batches queued to keep every
 * request slot busy. Returns 0, or 1 after saying why. */
static int ingest_embed_open(ingest_t *g)
{
    char err[800];
    g->emb_cfg.dim = g->embed_dim;
    g->emb_cfg.dim_from = "the knowledge base's dim";
    if (cli_embed_open(&g->emb_cfg, &g->emb, err, sizeof err)) {
        ingest_msg(g, "%s", err);
        return 1;
    }
    g->emb_window = 1 + (g->emb_cfg.parallel * (size_t)g->emb_cfg.batch +
                         g->batch - 1) / g->batch;
    return 0;
}

/* Every file, then the last batches and the deletes; waits for answers. */
static void ingest_run(ingest_t *g, const cli_walk_t *w)
{
    for (size_t i = 0; i < w->n && !g->stopped; i++) {
        if (w->files[i].kind == CLI_KIND_JSONL)
            ingest_jsonl(g, &w->files[i]);
        else
            ingest_file(g, &w->files[i], g->pre ? &g->pre[i] : NULL);
        g->files_done++;
        g->bytes_done += w->files[i].size;
        ingest_progress(g);
    }
    ingest_send(g);
    ingest_embed_drain(g);
    if (g->sync_deletes && !g->stopped)
        ingest_sync_deletes(g);
    ingest_send_dels(g);
    ingest_embed_close(g);
    uint64_t keep = g->max_errors;
    g->max_errors = UINT64_MAX; /* collect every answer on its way */
    while (g->inflight) {
        ingest_reap(g);
        ingest_progress(g);
    }
    g->max_errors = keep;
    if (g->errors > g->max_errors)
        g->stopped = 1;
}

int cli_ingest_main(int argc, char **argv)
{
    ingest_t g = {.ep = CLI_DEFAULT_ENDPOINT,
                  .prefix = "",
                  .batch = 1000,
                  .window = 4,
                  .chunk = CLI_CHUNK_DEFAULT,
                  .overlap = CLI_OVERLAP_DEFAULT,
                  .timeout_ms = 120000,
                  .max_retries = 3};
    int rc = ingest_options(&g, argc, argv);
    if (rc)
        return rc;
    /* KBSYNC_TEST_LIST_PAGE=N (tests only): smaller listing pages, so that
     * a small tree is listed in many pages and both ranges. */
    const char *lp = getenv("KBSYNC_TEST_LIST_PAGE");
    g.list_page = lp && atoi(lp) > 0 && atoi(lp) <= (int)INGEST_LIST_PAGE
                      ? (uint32_t)atoi(lp)
                      : INGEST_LIST_PAGE;
    g.tty = isatty(2);
    g.docs = calloc(g.batch, sizeof *g.docs);
    g.dels = calloc(g.batch, sizeof *g.dels);
    g.fl = calloc(g.window, sizeof *g.fl);
    if (!g.docs || !g.dels || !g.fl)
        return 1;
    ingest_client_id(&g);
    char err[512];
    int connect = !g.dry_run || g.resume;
    if (connect && qry_client_open(g.ep, &g.cl, err, sizeof err)) {
        fprintf(stderr, "kbsync ingest: %s\n", err);
        return 1;
    }
    /* --resume: the listing starts now and runs while the files are found,
     * unless the knowledge base's settings must be asked first (embedding
     * here), which uses the connection too. */
    lister_t lister;
    int early = g.resume && !g.embed_client && !g.emb_cfg.url;
    if (early)
        list_start(&g, &lister);
    cli_walk_t w = {0};
    int64_t walk_ns = (int64_t)kb_wall_us() * 1000;
    if (ingest_walk(&g, &w, argc, argv)) {
        if (early)
            list_finish(&g, &lister, NULL);
        rc = 1;
        goto out;
    }
    g.t0 = kb_mono_us(); /* last_progress 0: drawn at the first file */
    ingest_cache_open(&g, &w, argc, argv, walk_ns);
    int bad = (!g.dry_run && (g.embed_client || g.emb_cfg.url) &&
               ingest_kb_dim(&g)) ||
              (g.emb_cfg.url && !g.dry_run && ingest_embed_open(&g));
    if (!bad && g.resume) {
        if (!early)
            list_start(&g, &lister);
        bad = list_finish(&g, &lister, &w) != 0;
    }
    if (bad) {
        fprintf(stderr, "kbsync ingest: nothing sent\n");
        rc = 1;
    } else {
        ingest_run(&g, &w);
        ingest_cache_save(&g);
        ingest_summary(&g, (double)(kb_mono_us() - g.t0) / 1e6);
        rc = g.failed || g.unreplicated || g.stopped ? 1 : 0;
    }
out:
    ingest_embed_close(&g);
    qry_client_close(&g.cl);
    for (size_t i = 0; g.pre && i < w.n; i++)
        free(g.pre[i].h);
    free(g.pre);
    cli_walk_free(&w);
    known_free(&g);
    free(g.docs);
    free(g.dels);
    free(g.fl);
    free(g.scr.buf);
    free(g.scr.spans);
    free(g.fh);
    cli_hcache_free(g.hc);
    return rc;
}
