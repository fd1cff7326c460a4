/* qry_pool: the query node's reader threads. In: decoded query requests
 * handed over by the node loop (each with its sender's envelope), ready to
 * run (read-consistency waits are the loop's). Out: answers (hits + the
 * NodeState of the version searched, or an error) pushed to the loop over an
 * inproc socket, which forwards them to the client. Owns N reader threads,
 * the queue of waiting queries (guarded by its mutex) and the serving
 * counters (atomics).
 *
 * MICRO-BATCHING
 * A reader that wakes takes the oldest waiting query and every other
 * waiting query compatible with it (same ef_search and nprobe, no
 * filters), up to QRY_BATCH_MAX, and searches them in ONE FAISS call (the
 * BLAS path). It never waits for company: a lone query is searched alone
 * at once. Filtered queries are searched one by one.
 *
 * THREADS
 * qry_pool_new/submit/stats/stop/free: the node loop only. Reader threads
 * touch the queue under the pool mutex, the knowledge base through the
 * source's acquire/release (which keep it alive for the batch), and their
 * own PUSH socket. */
#ifndef QRY_POOL_H
#define QRY_POOL_H

#include "idx.h"
#include "kb_wire.h"
#include "kbsync.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define QRY_BATCH_MAX 64
#define QRY_GATHER_MIN 4   /* see GATHERING in qry_pool.c */
#define QRY_LINGER_US 1000 /* see LINGER in qry_pool.c */
#define QRY_READER_NICE 10 /* readers yield the CPU to the node loop */
#define QRY_HIST_BUCKETS 7 /* batch sizes 1, 2, 3-4, 5-8, 9-16, 17-32, 33-64 */

typedef struct qry_pool qry_pool_t;

/* Where readers find the knowledge base and the node's staleness. */
typedef struct qry_source {
    void *ctx;
    /* The knowledge base for one batch, kept alive until release(); NULL
     * (then no release) when the node has none yet. Any thread. */
    idx_kb_t *(*acquire)(void *ctx);
    void (*release)(void *ctx);
    /* Fills s for an answer reflecting view: role, node id, version,
     * leader_version, lag_ops, lag_ms, leader_contact_ms, dim, metric,
     * index, docs. String fields point to storage that lives as long as the
     * node. Called between acquire and release. Any thread. */
    void (*state)(void *ctx, idx_kb_t *ix, const idx_view_t *view,
                  Kbsync__NodeState *s);
} qry_source_t;

typedef struct qry_outq qry_outq_t;

typedef struct qry_pool_config {
    int threads;           /* reader threads, >= 1 */
    void *zctx;            /* ZeroMQ context (borrowed) */
    const char *answer_ep; /* inproc endpoint the loop PULLs answers from */
    qry_source_t src;
    /* The clients' answer queues (borrowed; may be NULL): readers count
     * each answer against its client as they build it, and build none for
     * a client over its limit (CLIENT QUEUES in qry_pool.c). */
    qry_outq_t *outq;
    /* Largest answer a reader builds (bytes of the hits' strings; 0 = no
     * bound): a query whose hits would exceed it is refused KB_ETOOBIG. */
    size_t max_answer;
} qry_pool_config_t;

typedef struct qry_pool_stats {
    uint64_t queries;                  /* answered */
    uint64_t batches;                  /* FAISS calls that answered them */
    uint64_t hist[QRY_HIST_BUCKETS];   /* batches by size bucket */
} qry_pool_stats_t;

/* Starts the readers; the loop must have bound answer_ep (a PULL socket)
 * first. Returns 0 and sets *out, or a negative code with err set. */
int qry_pool_new(const qry_pool_config_t *cfg, qry_pool_t **out, char *err,
                 size_t errlen);

/* Queues a query request (body QUERY), or a leader's listing page (body
 * LIST), from peer; takes ownership of req. */
void qry_pool_submit(qry_pool_t *p, const kb_peer_t *peer,
                     Kbsync__Request *req);

/* Counters so far. */
void qry_pool_stats(qry_pool_t *p, qry_pool_stats_t *st);

/* The refusal (KB_EUNAVAIL) of a replica that has no knowledge base open. */
#define QRY_NO_KB_MSG                                                          \
    "replica has no knowledge base open: not yet received from its leader, " \
    "or being replaced (a diverged tail dropped, or a start-over)"

/* Checks a query against the knowledge base ix as a reader would before
 * searching (one of vector and text, k, filters, search parameters, the
 * vector's dimension and values); ix NULL: what needs no knowledge base.
 * Returns 0, or a code with err set. Any thread. */
int qry_pool_check(idx_kb_t *ix, const Kbsync__QueryRequest *r, char *err,
                   size_t errlen);

/* Stops the readers after their current batch and joins them; queries
 * still queued are answered KB_EUNAVAIL through router. Then frees; accepts
 * NULL and sets *p to NULL. */
void qry_pool_free(qry_pool_t **p, void *router);

/* Unread answers per client (CLIENT QUEUES in qry_pool.c): the bytes of
 * query answers built by the readers and not yet written to the client's
 * connection, counted per routing id. The table is the node loop's; the
 * counters are atomic (readers raise them, ZeroMQ's I/O thread lowers
 * them). */
/* limit: bytes a client may have unread before its answers and requests
 * are dropped (0 = no limit). */
int qry_outq_new(uint64_t limit, qry_outq_t **out);
/* After the ROUTER's context is terminated (no answer is in flight). */
void qry_outq_free(qry_outq_t **q);
/* Whether the client with this routing id is over the limit. */
int qry_outq_over(qry_outq_t *q, const void *rid, size_t len);
typedef struct qry_outq_stats {
    uint64_t bytes;            /* unread answer bytes, all clients */
    uint64_t clients;          /* clients with unread answers */
    uint64_t clients_over;     /* ... of which over the limit */
    uint64_t dropped_answers;  /* answers dropped: client over its limit */
    uint64_t dropped_requests; /* requests dropped, counted by the caller */
} qry_outq_stats_t;
void qry_outq_stats(qry_outq_t *q, qry_outq_stats_t *st);
/* The clients with unread answers, most bytes first: up to max of them
 * into rid_hex (each up to 2 * 255 + 1 chars, in a buffer of max * 512),
 * bytes and over. Returns how many. */
size_t qry_outq_top(qry_outq_t *q, size_t max, char (*rid_hex)[512],
                    uint64_t *bytes, int *over);
void qry_outq_count_dropped_request(qry_outq_t *q);

/* The node loop: forwards one answer waiting on the PULL socket `answers`
 * to the client ROUTER, counting its bytes in q (may be NULL), or dropping
 * it when its client is over the limit, and then that client's queries
 * still queued in pool (may be NULL). Returns 0, or -EAGAIN when none is
 * waiting. */
int qry_pool_forward(void *answers, void *router, qry_outq_t *q,
                     qry_pool_t *pool);

/* Drops (unanswered) the queries of the client with this routing id that
 * wait for a reader; returns how many. */
size_t qry_pool_drop_client(qry_pool_t *p, const void *rid, size_t len);

#endif
