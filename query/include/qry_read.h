/* qry_read: read consistency in the node loop, before a query reaches the
 * readers. In: query requests and the node's applied version. Out: each
 * query either run now, parked until the node applies its min_version or
 * (strong reads on a replica, and bounded reads whose bound only the age
 * of the leader's last message exceeds) the leader's read index, then
 * handed to the
 * readers, or refused with KB_ESTALE: at once on a leader
 * (no such write was acknowledged), after wait_ms on a replica, naming both
 * versions and the node's lag. Owns the parked requests. Node loop only.
 * (max_lag_ms is checked by the reader that answers, against the version
 * it searched: query/qry_pool.c.) */
#ifndef QRY_READ_H
#define QRY_READ_H

#include "kb_wire.h"
#include "kbsync.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define QRY_WAIT_DEFAULT_MS 1000
#define QRY_WAIT_MAX_MS 60000
/* A bounded read on a replica whose lag_ms exceeds the bound only by the
 * age of the leader's last message asks the leader first when that age is
 * at most this (a live leader sends one every 100 ms); past it, the bound
 * is refused at once by the readers. */
#define QRY_BOUNDED_ASK_MS 300
/* ...or comes within this of the bound: the readers check it again when
 * they answer, a few ms later (without it, 1-3 of 400 idle bounded:20
 * reads were refused at 21 ms). */
#define QRY_BOUNDED_SLACK_MS 10
/* Reads waiting at once on one node (for min_version, or the leader's read
 * index), in number and packed bytes: past either, KB_EUNAVAIL. */
#define QRY_PARKED_MAX 10000
#define QRY_PARKED_MAX_BYTES (256 << 20)

typedef struct qry_read qry_read_t;

/* Where the node stands, for the loop: has_kb = 0 before a replica got its
 * knowledge base; state() fills a NodeState for refusal texts. */
typedef struct qry_read_node {
    void *ctx;
    int has_kb;
    int leader;
    uint64_t version;
    void (*run)(void *ctx, const kb_peer_t *peer, Kbsync__Request *req);
    void (*state)(void *ctx, Kbsync__NodeState *s);
    /* The node's id, version, leader_version, lag_ops, lag_ms and
     * leader_contact_ms only, without waiting for any lock the readers or
     * the merger hold (state() may wait for the index lock: status only).
     * NULL: state() is used. */
    void (*staleness)(void *ctx, Kbsync__NodeState *s);
    /* Replicas, strong reads and bounded reads that ask (see
     * qry_read_admit): asks the leader for a read index and returns
     * the request seq to wait for; ri_seq/ri_lsn: the newest answer. */
    uint64_t (*ri_begin)(void *ctx);
    uint64_t ri_seq, ri_lsn;
    /* Checks a query that is about to wait (or be refused for freshness)
     * as the readers would (without a knowledge base, what needs none): a
     * malformed query is refused at once with its own error, not after a
     * wait. NULL, or 0 = fine. */
    int (*check)(void *ctx, const Kbsync__QueryRequest *q, char *err,
                 size_t errlen);
} qry_read_node_t;

/* The level a query asks for (QueryRequest.consistency, or derived from
 * min_version and max_lag_ms when DEFAULT). */
Kbsync__ReadLevel qry_read_level(const Kbsync__QueryRequest *q);

int qry_read_new(qry_read_t **out);

/* Refuses every parked query with KB_EUNAVAIL through router (NULL: just
 * frees), frees; accepts NULL and sets *r to NULL. */
void qry_read_free(qry_read_t **r, void *router);

/* Takes a query request (ownership passes): runs it through node->run when
 * the node can answer it now, parks it, or refuses it. A strong read runs
 * with min_version raised to the read index (the leader's version on a
 * leader, its answer to a ReplReadIndex on a replica). */
void qry_read_admit(qry_read_t *r, void *router, const qry_read_node_t *node,
                    const kb_peer_t *peer, Kbsync__Request *req);

/* Runs the parked queries whose min_version the node reached; refuses those
 * whose wait is over. Call after each apply and at least every
 * qry_read_next_ms(). */
void qry_read_release(qry_read_t *r, void *router, const qry_read_node_t *node);

/* Milliseconds until the next parked deadline (capped at max), or max when
 * nothing is parked. */
int qry_read_next_ms(const qry_read_t *r, int max);

#endif
