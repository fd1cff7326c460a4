/* qry_pool: reader threads and micro-batching (see qry_pool.h).
 *
 * ANSWERS
 * A reader never touches the client ROUTER socket (ZeroMQ sockets belong to
 * one thread). It packs each Response and pushes it on its own PUSH socket
 * as [1 byte: envelope frame count n, plus OUTQ_COUNTED when counted][n
 * envelope frames][payload]; the node loop forwards that to the ROUTER
 * without copying (qry_pool_forward). Each answer counts against its
 * client from the moment its reader builds it until ZeroMQ has written it
 * (CLIENT QUEUES, below).
 *
 * READ CONSISTENCY AT ANSWER TIME
 * The loop hands over a query only once the node's version reached its
 * min_version. The reader checks again against the version it searched
 * (a replica that started over after divergence can go back), and checks
 * max_lag_ms against the staleness of that version, computed when the
 * answer is built; either refusal is KB_ESTALE naming the figures.
 *
 * LISTINGS
 * A leader's ListRequest pages (idx_list: one LMDB read transaction each)
 * run here too, each alone, in their turn with the queries (a waiting
 * listing wakes a reader even where queries would gather; a reader on a
 * listing does not count as busy for the gathering of queries): a page of
 * 10,000 documents reads 10,000 log records, which on the loop thread held
 * up writes and acknowledgements, and which `ingest --resume`'s two ranges
 * need side by side on two cores. */
#include "qry_pool.h"

#include "kb_err.h"
#include "kb_metrics.h"
#include "qry_read.h"
#include "kb_util.h"

#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

typedef struct outq_entry outq_entry_t;
/* In an answer's first byte: counted by its reader (CLIENT QUEUES). */
#define OUTQ_COUNTED 0x80

typedef struct job {
    kb_peer_t peer;
    Kbsync__Request *req;
    outq_entry_t *e; /* its client's queue entry, pinned (or NULL) */
    struct qry_pool *pool;
} job_t;

struct qry_pool {
    qry_pool_config_t cfg;
    char answer_ep[256];
    pthread_mutex_t mu; /* guards q, nq, qcap, stop, busy */
    pthread_cond_t cv;
    job_t *q;
    size_t nq, qcap;
    int stop;
    int busy; /* readers inside a batch of queries (not a listing) */
    size_t nlist; /* listings in q */
    size_t last_batch; /* size of the last batch a reader took */
    pthread_t *thr;
    int nthr;
    _Atomic uint64_t queries, batches, hist[QRY_HIST_BUCKETS];
};

/* ------------------------------------------------------------- answers */

static int outq_admit(qry_pool_t *p, const job_t *j, size_t len);
static int client_over(qry_pool_t *p, const job_t *j);

/* Pushes resp for job j's client to the loop, counted against it; drops it
 * when that client is over its limit (CLIENT QUEUES, outq_admit). */
static void push_response(void *push, const job_t *j, Kbsync__Response *resp)
{
    const kb_peer_t *peer = &j->peer;
    resp->protocol_version = KB_PROTOCOL_VERSION;
    size_t len = kbsync__response__get_packed_size(resp);
    void *buf = malloc(len ? len : 1);
    if (!buf) {
        kb_error("out of memory packing an answer of %zu bytes; dropped", len);
        return;
    }
    /* counted before the loop can see it, or dropped */
    if (!outq_admit(j->pool, j, len)) {
        free(buf);
        return;
    }
    if (resp->error)
        kb_metrics_error(resp->error->code);
    else if (resp->query)
        kb_metrics_query(resp->query->level, kb_mono_us() - peer->t_us);
    kbsync__response__pack(resp, buf);
    unsigned char n = (unsigned char)peer->nframes;
    if (j->e)
        n |= OUTQ_COUNTED;
    zmq_send(push, &n, 1, ZMQ_SNDMORE);
    for (size_t i = 0; i < peer->nframes; i++)
        zmq_send(push, peer->frame[i], peer->len[i], ZMQ_SNDMORE);
    /* Copied into ZeroMQ's own buffer, not handed over: a buffer that
     * crosses threads inside libzmq is invisible to ThreadSanitizer's
     * happens-before tracking (most answers are a few KB; a large one is
     * held twice until this returns). */
    zmq_send(push, buf, len, 0);
    free(buf);
}

static void push_error(void *push, const job_t *j, uint64_t rid, int code,
                       const char *msg)
{
    Kbsync__Error e = KBSYNC__ERROR__INIT;
    e.code = code;
    e.message = (char *)msg;
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    r.request_id = rid;
    r.error = &e;
    push_response(push, j, &r);
}

/* ------------------------------------------------------- client queues
 *
 * CLIENT QUEUES
 * A client that sends queries and never reads the answers would otherwise
 * make the node hold them all (the ROUTER queues up to its high-water mark
 * of 100,000 messages per client, and answers can be megabytes). Each
 * answer counts against its client (by routing id) from the moment a
 * reader has built it until ZeroMQ's I/O thread has written it to the
 * connection and frees it: the answer travels as a message whose free
 * function lowers the count. A client over --max-client-queue-mb gets no
 * more answers, and its new requests are dropped unanswered, until it
 * reads (docs/PROTOCOL.md).
 * The readers look before each answer they build: a reader answering a
 * batch of 64 queries of one client, each answer tens of MB, builds answers
 * only until the client is over its limit (when answers were counted only
 * as the loop forwarded them, a batch's 64 answers were all built first:
 * 130 pipelined k=1000 queries over 24 KB texts took 3 GB), and counts an
 * answer in the same atomic step as it looks again (outq_admit): one answer
 * at most takes a client past its limit, whatever the number of readers.
 * The loop pins a client's entry (refs) for each of its queries it hands to
 * the readers, so the reader can count into it. Entries are allocated one by
 * one and never move while they count bytes or are pinned (readers and the I/O
 * thread hold pointers to them); entries at zero go when the table is rebuilt.
 */

struct outq_entry {
    atomic_uint_fast64_t bytes;
    atomic_uint refs; /* queries of this client held by the pool */
    size_t len;
    unsigned char rid[256];
};

struct qry_outq {
    uint64_t limit;      /* set before the readers start, then only read */
    outq_entry_t **slot; /* open addressing by hash of the routing id */
    size_t cap, used;
    _Atomic uint64_t dropped_answers, dropped_requests;
};


typedef struct outq_held {
    zmq_msg_t msg;
    outq_entry_t *e;
    size_t size;
    atomic_int ready; /* release/acquire: makes the hand-over visible to
                         ThreadSanitizer (libzmq is not instrumented) */
} outq_held_t;

static uint64_t rid_hash(const void *rid, size_t len)
{
    const unsigned char *p = rid;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

int qry_outq_new(uint64_t limit, qry_outq_t **out)
{
    qry_outq_t *q = calloc(1, sizeof *q);
    if (!q || !(q->slot = calloc(1024, sizeof *q->slot))) {
        free(q);
        return KB_ENOMEM;
    }
    q->cap = 1024;
    q->limit = limit;
    *out = q;
    return 0;
}

void qry_outq_free(qry_outq_t **qp)
{
    if (!qp || !*qp)
        return;
    qry_outq_t *q = *qp;
    for (size_t i = 0; i < q->cap; i++)
        free(q->slot[i]);
    free(q->slot);
    free(q);
    *qp = NULL;
}

static outq_entry_t **outq_find(qry_outq_t *q, const void *rid, size_t len)
{
    for (size_t i = rid_hash(rid, len) & (q->cap - 1);; i = (i + 1) & (q->cap - 1)) {
        outq_entry_t *e = q->slot[i];
        if (!e || (e->len == len && !memcmp(e->rid, rid, len)))
            return &q->slot[i];
    }
}

/* Whether no answer and no query points at e (loop thread). refs first:
 * only the loop raises it from 0, and bytes rise only while a reader holds
 * a ref, so a reader that counted an answer and then let go is seen (bytes
 * read second). The other order could miss both and free e under a
 * counted answer, whose free function would then lower a new entry's
 * count below zero: that client's count would stay near 2^64. */
static int outq_idle(outq_entry_t *e)
{
    return !atomic_load(&e->refs) && !atomic_load(&e->bytes);
}

/* Rebuilds the table without the entries at zero, doubling it if it is
 * still more than half full. */
static int outq_rebuild(qry_outq_t *q)
{
    size_t live = 0;
    for (size_t i = 0; i < q->cap; i++)
        if (q->slot[i] && !outq_idle(q->slot[i]))
            live++;
    size_t cap = q->cap;
    while (live * 2 >= cap)
        cap *= 2;
    outq_entry_t **old = q->slot, **ns = calloc(cap, sizeof *ns);
    if (!ns)
        return KB_ENOMEM;
    size_t oldcap = q->cap;
    q->slot = ns;
    q->cap = cap;
    q->used = 0;
    for (size_t i = 0; i < oldcap; i++) {
        outq_entry_t *e = old[i];
        if (!e)
            continue;
        if (outq_idle(e)) {
            free(e); /* no message or query points at it any more */
            continue;
        }
        *outq_find(q, e->rid, e->len) = e;
        q->used++;
    }
    free(old);
    return 0;
}

/* The entry of a routing id, made when new; NULL out of memory. */
static outq_entry_t *outq_get(qry_outq_t *q, const void *rid, size_t len)
{
    if (len > sizeof q->slot[0]->rid)
        return NULL;
    outq_entry_t **s = outq_find(q, rid, len);
    if (*s)
        return *s;
    if ((q->used + 1) * 4 > q->cap * 3) {
        if (outq_rebuild(q))
            return NULL;
        s = outq_find(q, rid, len);
    }
    outq_entry_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    atomic_init(&e->bytes, 0);
    atomic_init(&e->refs, 0);
    e->len = len;
    memcpy(e->rid, rid, len);
    *s = e;
    q->used++;
    return e;
}

int qry_outq_over(qry_outq_t *q, const void *rid, size_t len)
{
    if (!q || !q->limit || len > sizeof q->slot[0]->rid)
        return 0;
    outq_entry_t *e = *outq_find(q, rid, len);
    return e && atomic_load(&e->bytes) > q->limit;
}

void qry_outq_stats(qry_outq_t *q, qry_outq_stats_t *st)
{
    memset(st, 0, sizeof *st);
    if (!q)
        return;
    for (size_t i = 0; i < q->cap; i++) {
        outq_entry_t *e = q->slot[i];
        uint64_t b = e ? atomic_load(&e->bytes) : 0;
        if (!b)
            continue;
        st->bytes += b;
        st->clients++;
        if (q->limit && b > q->limit)
            st->clients_over++;
    }
    st->dropped_answers = atomic_load(&q->dropped_answers);
    st->dropped_requests = atomic_load(&q->dropped_requests);
}

size_t qry_outq_top(qry_outq_t *q, size_t max, char (*rid_hex)[512],
                    uint64_t *bytes, int *over)
{
    size_t n = 0;
    for (size_t i = 0; q && i < q->cap; i++) {
        outq_entry_t *e = q->slot[i];
        uint64_t b = e ? atomic_load(&e->bytes) : 0;
        if (!b)
            continue;
        /* insertion into the sorted top list */
        size_t at = n;
        while (at > 0 && bytes[at - 1] < b)
            at--;
        if (at >= max)
            continue;
        size_t last = n < max ? n : max - 1;
        for (size_t j = last; j > at; j--) {
            bytes[j] = bytes[j - 1];
            over[j] = over[j - 1];
            memcpy(rid_hex[j], rid_hex[j - 1], sizeof rid_hex[j]);
        }
        bytes[at] = b;
        over[at] = q->limit && b > q->limit;
        for (size_t k = 0; k < e->len; k++)
            snprintf(rid_hex[at] + 2 * k, 3, "%02x", e->rid[k]);
        rid_hex[at][2 * e->len] = '\0';
        if (n < max)
            n++;
    }
    return n;
}

void qry_outq_count_dropped_request(qry_outq_t *q)
{
    if (q)
        atomic_fetch_add(&q->dropped_requests, 1);
}

/* ZeroMQ's free function of a counted answer (its I/O thread, or the loop
 * when a send fails). */
static void outq_release(void *data, void *hint)
{
    (void)data;
    outq_held_t *h = hint;
    (void)atomic_load_explicit(&h->ready, memory_order_acquire);
    atomic_fetch_sub(&h->e->bytes, h->size);
    zmq_msg_close(&h->msg);
    free(h);
}

int qry_pool_forward(void *answers, void *router, qry_outq_t *q,
                     qry_pool_t *pool)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, answers, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return -EAGAIN;
    }
    /* The pushed parts arrive together: the rest is there. */
    int more = zmq_msg_more(&m);
    int counted = zmq_msg_size(&m) == 1 &&
                  (*(unsigned char *)zmq_msg_data(&m) & OUTQ_COUNTED);
    zmq_msg_close(&m);
    outq_entry_t *e = NULL;
    int first = 1, drop = 0;
    while (more) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, answers, 0) < 0) {
            zmq_msg_close(&m);
            return 0;
        }
        more = zmq_msg_more(&m);
        if (first && q) {
            /* the routing id: whose queue this answer joins */
            e = outq_get(q, zmq_msg_data(&m), zmq_msg_size(&m));
            /* A counted answer was built while its client was within its
             * limit (its reader looked): it goes. */
            drop =
                !counted && e && q->limit && atomic_load(&e->bytes) > q->limit;
            if (drop) {
                atomic_fetch_add(&q->dropped_answers, 1);
                /* its queries still waiting would only be dropped too:
                 * the readers need not search them */
                atomic_fetch_add(&q->dropped_requests,
                                 qry_pool_drop_client(pool, zmq_msg_data(&m),
                                                      zmq_msg_size(&m)));
            }
        }
        first = 0;
        if (drop) {
            zmq_msg_close(&m);
            continue; /* the envelope did not go either: drop all of it */
        }
        /* (a counted answer's entry is found: it counts bytes, so it
         * stayed in the table) */
        if (!more && e) {
            /* the payload: counted until ZeroMQ frees it */
            outq_held_t *h = malloc(sizeof *h);
            if (!h && counted)
                atomic_fetch_sub(&e->bytes, zmq_msg_size(&m)); /* sent as is */
            if (h) {
                zmq_msg_init(&h->msg);
                zmq_msg_move(&h->msg, &m);
                h->e = e;
                h->size = zmq_msg_size(&h->msg);
                if (!counted)
                    atomic_fetch_add(&e->bytes, h->size);
                atomic_init(&h->ready, 0);
                atomic_store_explicit(&h->ready, 1, memory_order_release);
                zmq_msg_close(&m);
                if (zmq_msg_init_data(&m, zmq_msg_data(&h->msg), h->size,
                                      outq_release, h)) {
                    outq_release(NULL, h);
                    return 0;
                }
            }
        }
        /* DONTWAIT: a client that stopped reading loses answers past its
         * queue limit instead of stalling the loop. */
        if (zmq_msg_send(&m, router, (more ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) <
            0)
            zmq_msg_close(&m);
    }
    return 0;
}

/* -------------------------------------------------------------- batches */

static int is_list(const job_t *j)
{
    return j->req->body_case == KBSYNC__REQUEST__BODY_LIST;
}

/* A listing page: answered from one read transaction of the store. */
static void run_list(qry_pool_t *p, void *push, const job_t *j)
{
    char err[512];
    if (client_over(p, j))
        return; /* not built (CLIENT QUEUES) */
    qry_source_t *src = &p->cfg.src;
    idx_kb_t *ix = src->acquire(src->ctx);
    if (!ix) {
        push_error(push, j, j->req->request_id, KB_EUNAVAIL, QRY_NO_KB_MSG);
        return;
    }
    Kbsync__ListResult lr;
    int rc = idx_list(ix, j->req->list, &lr, err, sizeof err);
    src->release(src->ctx);
    if (rc) {
        push_error(push, j, j->req->request_id, rc, err);
        return;
    }
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    r.request_id = j->req->request_id;
    r.body_case = KBSYNC__RESPONSE__BODY_LIST;
    r.list = &lr;
    push_response(push, j, &r);
    idx_list_free(&lr);
}

/* Two queries can share a FAISS call when their search parameters agree and
 * neither is filtered. */
static int compatible(const Kbsync__QueryRequest *a,
                      const Kbsync__QueryRequest *b)
{
    return !a->n_filters && !b->n_filters && a->ef_search == b->ef_search &&
           a->nprobe == b->nprobe;
}

static int hist_bucket(size_t n)
{
    int b = 0;
    while (b < QRY_HIST_BUCKETS - 1 && ((size_t)1 << b) < n)
        b++;
    return b;
}

static void answer_hits(void *push, const job_t *j, const idx_hits_t *h,
                        Kbsync__NodeState *s)
{
    Kbsync__Hit *hits = calloc(h->n ? h->n : 1, sizeof *hits);
    Kbsync__Hit **hp = calloc(h->n ? h->n : 1, sizeof *hp);
    if (!hits || !hp) {
        free(hits);
        free(hp);
        push_error(push, j, j->req->request_id, KB_ENOMEM, "out of memory");
        return;
    }
    for (size_t i = 0; i < h->n; i++) {
        kbsync__hit__init(&hits[i]);
        hits[i].id = (char *)h->hit[i].id;
        hits[i].score = h->hit[i].score;
        hits[i].text = (char *)h->hit[i].text;
        hits[i].metadata_json = (char *)h->hit[i].metadata;
        hits[i].version = h->hit[i].version;
        hp[i] = &hits[i];
    }
    Kbsync__QueryResult qr = KBSYNC__QUERY_RESULT__INIT;
    qr.state = s;
    qr.level = qry_read_level(j->req->query);
    if (qr.level == KBSYNC__READ_LEVEL__READ_STRONG)
        qr.read_index = j->req->query->min_version;
    qr.n_hits = h->n;
    qr.hits = hp;
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    r.request_id = j->req->request_id;
    r.body_case = KBSYNC__RESPONSE__BODY_QUERY;
    r.query = &qr;
    push_response(push, j, &r);
    free(hits);
    free(hp);
}

/* Fills an idx_query from a request; kv receives its filters. */
static void query_from(const Kbsync__QueryRequest *r, idx_query_t *q,
                       idx_filter_kv_t *kv)
{
    memset(q, 0, sizeof *q);
    q->vec = r->n_vector ? r->vector : NULL;
    q->vec_len = r->n_vector;
    q->text = r->text;
    q->text_len = r->text ? strlen(r->text) : 0;
    q->k = r->k;
    q->ef_search = r->ef_search;
    q->nprobe = r->nprobe;
    size_t nf = r->n_filters < IDX_MAX_FILTERS ? r->n_filters : IDX_MAX_FILTERS;
    for (size_t i = 0; i < nf; i++) {
        kv[i].key = r->filters[i]->key;
        kv[i].value = r->filters[i]->value;
    }
    q->filters = kv;
    q->nfilters = r->n_filters; /* checked against the bound */
}

static int check_query(idx_kb_t *ix, const Kbsync__QueryRequest *r,
                       idx_query_t *q, idx_filter_kv_t *kv, char *err,
                       size_t errlen)
{
    if (r->n_vector && r->text && *r->text)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "query has both a vector and text: send one");
    query_from(r, q, kv);
    return idx_check_query(ix, q, err, errlen);
}

int qry_pool_check(idx_kb_t *ix, const Kbsync__QueryRequest *r, char *err,
                   size_t errlen)
{
    idx_query_t q;
    idx_filter_kv_t kv[IDX_MAX_FILTERS];
    return check_query(ix, r, &q, kv, err, errlen);
}

/* Job j's answer is dropped, its client being over its limit: counted, and
 * the client's queries still queued dropped with it (counted too). */
static void drop_for_client(qry_pool_t *p, const job_t *j)
{
    qry_outq_t *q = p->cfg.outq;
    atomic_fetch_add(&q->dropped_answers, 1);
    atomic_fetch_add(&q->dropped_requests,
                     qry_pool_drop_client(p, j->e->rid, j->e->len));
}

/* Whether job j's client is over its answer limit (CLIENT QUEUES): then
 * nothing is built for j, and the client's queries still queued are
 * dropped too; both counted. Reader threads. */
static int client_over(qry_pool_t *p, const job_t *j)
{
    qry_outq_t *q = p->cfg.outq;
    if (!j->e || !q || !q->limit || atomic_load(&j->e->bytes) <= q->limit)
        return 0;
    drop_for_client(p, j);
    return 1;
}

/* Counts an answer of len bytes against job j's client, unless the client
 * was over its limit already: then the answer is dropped (counted, and the
 * client's queries still queued with it). Returns 1 when it may go. The
 * look and the count are one step, so however many readers answer one
 * client at once, one answer at most takes it past the limit. */
static int outq_admit(qry_pool_t *p, const job_t *j, size_t len)
{
    qry_outq_t *q = p->cfg.outq;
    if (!j->e)
        return 1;
    /* compare-and-swap, so that a refused answer never shows in the count,
     * even for a moment */
    uint_fast64_t had = atomic_load(&j->e->bytes);
    while (!q || !q->limit || had <= q->limit)
        if (atomic_compare_exchange_weak(&j->e->bytes, &had, had + len))
            return 1;
    drop_for_client(p, j);
    return 0;
}

static void run_batch(qry_pool_t *p, void *push, job_t *jobs, size_t n)
{
    if (n == 1 && is_list(&jobs[0])) {
        run_list(p, push, &jobs[0]);
        return;
    }
    char err[512];
    qry_source_t *src = &p->cfg.src;
    idx_kb_t *ix = src->acquire(src->ctx);
    if (!ix) {
        for (size_t i = 0; i < n; i++)
            push_error(push, &jobs[i], jobs[i].req->request_id, KB_EUNAVAIL,
                       QRY_NO_KB_MSG);
        return;
    }
    idx_query_t qs[QRY_BATCH_MAX];
    idx_filter_kv_t kv[QRY_BATCH_MAX][IDX_MAX_FILTERS];
    job_t *ok[QRY_BATCH_MAX];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const Kbsync__QueryRequest *r = jobs[i].req->query;
        int rc = check_query(ix, r, &qs[m], kv[m], err, sizeof err);
        if (rc) {
            push_error(push, &jobs[i], jobs[i].req->request_id, rc, err);
            continue;
        }
        ok[m++] = &jobs[i];
    }
    if (m) {
        idx_found_t *found = NULL;
        idx_view_t view;
        int rc = idx_search_found(ix, m, qs, &found, &view, err, sizeof err);
        if (rc) {
            for (size_t i = 0; i < m; i++)
                push_error(push, ok[i], ok[i]->req->request_id, rc, err);
        } else {
            /* Counted before the answers go out: a client that reads its
             * answers and then asks for status sees them counted. */
            atomic_fetch_add(&p->batches, 1);
            atomic_fetch_add(&p->hist[hist_bucket(m)], 1);
            atomic_fetch_add(&p->queries, m);
            Kbsync__NodeState s;
            src->state(src->ctx, ix, &view, &s);
            for (size_t i = 0; i < m; i++) {
                const Kbsync__QueryRequest *r = ok[i]->req->query;
                if (client_over(p, ok[i])) {
                    /* dropped, not built (CLIENT QUEUES) */
                } else if (r->min_version > s.version) {
                    snprintf(err, sizeof err,
                             "node %s is at version %llu, below the "
                             "requested min_version %llu",
                             s.node_id, (unsigned long long)s.version,
                             (unsigned long long)r->min_version);
                    push_error(push, ok[i], ok[i]->req->request_id, KB_ESTALE,
                               err);
                } else if ((r->max_lag_ms ||
                            r->consistency ==
                                KBSYNC__READ_LEVEL__READ_BOUNDED) &&
                           s.lag_ms > r->max_lag_ms) {
                    snprintf(err, sizeof err,
                             "node %s lags the leader by %llu ms (%llu "
                             "versions), above max_lag_ms %llu",
                             s.node_id, (unsigned long long)s.lag_ms,
                             (unsigned long long)s.lag_ops,
                             (unsigned long long)r->max_lag_ms);
                    push_error(push, ok[i], ok[i]->req->request_id, KB_ESTALE,
                               err);
                } else {
                    /* One answer's documents at a time, read in the
                     * search's transaction. */
                    idx_hits_t h;
                    int hrc = idx_found_hits(found, i, p->cfg.max_answer, &h,
                                             err, sizeof err);
                    if (hrc)
                        push_error(push, ok[i], ok[i]->req->request_id, hrc,
                                   err);
                    else
                        answer_hits(push, ok[i], &h, &s);
                    idx_hits_free(&h);
                }
            }
        }
        idx_found_free(&found);
    }
    src->release(src->ctx);
}

/* Takes the oldest job and the waiting jobs compatible with it (a listing
 * goes alone). p->mu held. */
static size_t take_batch(qry_pool_t *p, job_t *out)
{
    size_t n = 0, keep = 0;
    for (size_t i = 0; i < p->nq; i++) {
        job_t *j = &p->q[i];
        if (n == 0) {
            out[n++] = *j;
            if (is_list(j) || j->req->query->n_filters) { /* goes alone */
                for (i++; i < p->nq; i++)
                    p->q[keep++] = p->q[i];
                break;
            }
        } else if (n < QRY_BATCH_MAX && !is_list(j) &&
                   compatible(out[0].req->query, j->req->query)) {
            out[n++] = *j;
        } else {
            p->q[keep++] = *j;
        }
    }
    p->nq = keep;
    if (n && is_list(&out[0]))
        p->nlist--;
    return n;
}

/* A job's end: its request freed, its client's entry unpinned. */
static void job_done(job_t *j)
{
    kbsync__request__free_unpacked(j->req, NULL);
    if (j->e)
        atomic_fetch_sub(&j->e->refs, 1);
    j->req = NULL;
    j->e = NULL;
}

typedef struct reader {
    qry_pool_t *p;
    int no;
} reader_t;

static void *reader_main(void *arg)
{
    reader_t *rd = arg;
    qry_pool_t *p = rd->p;
    /* FAISS parallelism comes from the readers themselves: each searches
     * its batch on one OpenMP thread. */
    omp_set_num_threads(1);
    /* Searches use whatever CPU is left: the node loop (apply, acks,
     * heartbeats, group commit) and the merger must never queue behind
     * them for a core. A lower priority (nice QRY_READER_NICE, this
     * thread only) gives them the CPU the moment they wake. */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), QRY_READER_NICE))
        kb_warn("reader %d: cannot lower its priority: %s", rd->no,
                strerror(errno));
    void *push = zmq_socket(p->cfg.zctx, ZMQ_PUSH);
    int zero = 0, hwm = 0; /* never drop an answer inside the node */
    zmq_setsockopt(push, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(push, ZMQ_SNDHWM, &hwm, sizeof hwm);
    if (zmq_connect(push, p->answer_ep))
        kb_error("reader %d: cannot connect to %s: %s", rd->no, p->answer_ep,
                 zmq_strerror(errno));
    job_t *jobs = malloc(QRY_BATCH_MAX * sizeof *jobs);
    for (;;) {
        pthread_mutex_lock(&p->mu);
        /* GATHERING: when another reader is searching, a few waiting
         * queries are left to gather into a batch (until QRY_GATHER_MIN
         * wait, or no reader is busy): one more FAISS pass over a flat
         * index costs nearly as much for one query as for sixteen. An idle
         * node takes a lone query at once. */
        while (!p->stop &&
               (p->nq == 0 ||
                (p->nq < QRY_GATHER_MIN && p->busy > 0 && !p->nlist)))
            pthread_cond_wait(&p->cv, &p->mu);
        /* LINGER: under load (the last batch held several queries) the
         * clients it answered are sending their next queries; a batch
         * much smaller than the last waits up to QRY_LINGER_US for them.
         * At low load (last batch of one) nothing waits. */
        if (!p->stop && p->last_batch > 1 && p->nq * 2 < p->last_batch) {
            struct timespec ts;
            kb_abstime_in(&ts, QRY_LINGER_US);
            while (!p->stop && p->nq * 2 < p->last_batch &&
                   pthread_cond_timedwait(&p->cv, &p->mu, &ts) == 0)
                ;
        }
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        size_t n = take_batch(p, jobs);
        /* a listing neither gathers queries nor makes them wait (n is 0
         * when other readers emptied the queue during the linger) */
        int queries = !n || !is_list(&jobs[0]);
        if (queries)
            p->last_batch = n;
        p->busy += queries;
        pthread_mutex_unlock(&p->mu);
        run_batch(p, push, jobs, n);
        pthread_mutex_lock(&p->mu);
        p->busy -= queries;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (size_t i = 0; i < n; i++)
            job_done(&jobs[i]);
    }
    free(jobs);
    zmq_close(push);
    free(rd);
    return NULL;
}

/* ------------------------------------------------------------ lifecycle */

int qry_pool_new(const qry_pool_config_t *cfg, qry_pool_t **out, char *err,
                 size_t errlen)
{
    *out = NULL;
    qry_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    p->cfg = *cfg;
    if (p->cfg.threads < 1)
        p->cfg.threads = 1;
    snprintf(p->answer_ep, sizeof p->answer_ep, "%s", cfg->answer_ep);
    p->cfg.answer_ep = p->answer_ep;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->thr = calloc((size_t)p->cfg.threads, sizeof *p->thr);
    if (!p->thr) {
        qry_pool_free(&p, NULL);
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    for (int i = 0; i < p->cfg.threads; i++) {
        reader_t *rd = malloc(sizeof *rd);
        if (rd) {
            rd->p = p;
            rd->no = i;
        }
        if (!rd || pthread_create(&p->thr[i], NULL, reader_main, rd)) {
            free(rd);
            qry_pool_free(&p, NULL);
            return kb_seterr(err, errlen, KB_ENOMEM,
                             "cannot start reader thread %d", i);
        }
        char name[32];
        snprintf(name, sizeof name, "kb-reader-%d", i);
        name[15] = 0; /* the kernel keeps 15 bytes */
        pthread_setname_np(p->thr[i], name);
        p->nthr++;
    }
    *out = p;
    return 0;
}

void qry_pool_submit(qry_pool_t *p, const kb_peer_t *peer,
                     Kbsync__Request *req)
{
    pthread_mutex_lock(&p->mu);
    if (p->nq == p->qcap) {
        size_t cap = p->qcap ? p->qcap * 2 : 256;
        job_t *q = realloc(p->q, cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&p->mu);
            kb_error("out of memory queueing a query; dropped");
            kbsync__request__free_unpacked(req, NULL);
            return;
        }
        p->q = q;
        p->qcap = cap;
    }
    p->q[p->nq].peer = *peer;
    p->q[p->nq].req = req;
    p->q[p->nq].pool = p;
    /* pinned until the job is done (NULL without a table or memory: then
     * the loop counts the answer when it forwards it) */
    outq_entry_t *e = p->cfg.outq && peer->nframes
                          ? outq_get(p->cfg.outq, peer->frame[0], peer->len[0])
                          : NULL;
    if (e)
        atomic_fetch_add(&e->refs, 1);
    p->q[p->nq].e = e;
    p->nlist += is_list(&p->q[p->nq]);
    p->nq++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

size_t qry_pool_drop_client(qry_pool_t *p, const void *rid, size_t len)
{
    if (!p)
        return 0;
    size_t keep = 0, dropped = 0;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->nq; i++) {
        job_t *j = &p->q[i];
        if (j->peer.nframes && j->peer.len[0] == len &&
            !memcmp(j->peer.frame[0], rid, len)) {
            p->nlist -= is_list(j);
            job_done(j);
            dropped++;
        } else {
            p->q[keep++] = *j;
        }
    }
    p->nq = keep;
    pthread_mutex_unlock(&p->mu);
    return dropped;
}

void qry_pool_stats(qry_pool_t *p, qry_pool_stats_t *st)
{
    st->queries = atomic_load(&p->queries);
    st->batches = atomic_load(&p->batches);
    for (int i = 0; i < QRY_HIST_BUCKETS; i++)
        st->hist[i] = atomic_load(&p->hist[i]);
}

void qry_pool_free(qry_pool_t **pp, void *router)
{
    if (!pp || !*pp)
        return;
    qry_pool_t *p = *pp;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthr; i++)
        pthread_join(p->thr[i], NULL);
    for (size_t i = 0; i < p->nq; i++) {
        if (router)
            kb_wire_send_error(router, &p->q[i].peer,
                               p->q[i].req->request_id, KB_EUNAVAIL,
                               "node is shutting down");
        job_done(&p->q[i]);
    }
    free(p->q);
    free(p->thr);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
    *pp = NULL;
}
