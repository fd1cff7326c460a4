/* repl_leader: the leader's write path and replication. In: decoded
 * Upsert/Delete requests from clients; Hello and Ack messages from replicas
 * on the replication socket. Out: one durable group commit per batch of
 * requests (LSNs in arrival order), the log streamed in LSN order to every
 * replica, and a WriteResult or error to each client — at once (`async`) or
 * once K named replicas applied the write (`quorum:K`, `majority`, `all`);
 * read-index answers for strong reads; digest comparisons on acks. Owns the replication
 * ROUTER socket, the replica table and the requests waiting for acks;
 * borrows the idx and the client socket. Single-threaded: node loop only.
 * Implemented in three parts: repl_commit.c (group commit and answers),
 * repl_ship.c (log shipping, heartbeats, acks) and repl_retain.c (how much
 * log to keep for the replicas). */
#ifndef REPL_LEADER_H
#define REPL_LEADER_H

#include "idx.h"
#include "kb_wire.h"

#include <stddef.h>
#include <stdint.h>

typedef struct repl_leader repl_leader_t;

/* Write modes (docs/CONSISTENCY.md): answered after the leader's commit
 * (ASYNC), or once K named replicas applied the write: all of them (ALL),
 * K given (QUORUM), K = floor((n + 1) / 2) of n named (MAJORITY, so that
 * the leader and K replicas are a majority of the n + 1 copies). */
typedef enum repl_mode {
    REPL_ASYNC = 1,
    REPL_ALL = 2,
    REPL_QUORUM = 3,
    REPL_MAJORITY = 4
} repl_mode_t;

/* Parses "async", "all", "majority" or "quorum:K" (K >= 1). Returns 0, or
 * KB_EINVAL with err naming what is wrong. *k is 0 unless quorum. */
int repl_mode_parse(const char *s, repl_mode_t *mode, uint32_t *k, char *err,
                    size_t errlen);
/* "async", "all", "quorum" or "majority". */
const char *repl_mode_name(repl_mode_t mode);
/* Named replicas a write in this mode waits for, with n named. */
uint32_t repl_mode_need(repl_mode_t mode, uint32_t k, uint32_t n);

typedef struct repl_leader_config {
    const char *repl_listen;     /* replication endpoint; NULL = none */
    const char *replicas;        /* "r1,r2": the replicas `all` waits for */
    repl_mode_t default_mode;    /* for requests that do not choose */
    uint32_t default_quorum;     /* K when default_mode is REPL_QUORUM */
    int write_timeout_ms;        /* how long all/quorum wait for acks */
    const char *client_endpoint; /* told to replicas, for KB_ENOTLEADER */
    /* Log retention (see repl_retain.c): the log a lagging replica needs is
     * kept, but at most log_retain_mb MB and log_retain_hours hours of it
     * (0 = the defaults, 1024 MB and 24 h); beyond that it gets a snapshot.
     * log_keep_ops: the newest operations always kept (0 = the default,
     * 10,000; UINT64_MAX = none beyond what replicas need; audits of the
     * whole history set it high). */
    uint64_t log_retain_mb;
    uint64_t log_retain_hours;
    uint64_t log_keep_ops;
    /* Idempotent writes: the results of (client_id, client_seq) writes are
     * kept dedup_hours (0 = 24) and at most dedup_max (0 = 1,000,000), the
     * oldest dropped first. */
    uint64_t dedup_hours;
    uint64_t dedup_max;
    /* CURVE server keys for the replication socket (NULL: plain TCP); its
     * ZAP domain is "kbsync-repl", and a peer may follow only under the id
     * its key's role names (replica:<id>). */
    const struct kb_curve *curve;
} repl_leader_config_t;

/* ix and zctx (a ZeroMQ context) are borrowed and must outlive the leader.
 * Binds the replication socket when cfg->repl_listen is set. */
int repl_leader_new(idx_kb_t *ix, void *zctx, const repl_leader_config_t *cfg,
                    repl_leader_t **out, char *err, size_t errlen);
/* Answers nothing still queued or waiting (call repl_leader_flush first);
 * accepts NULL and sets *l to NULL. */
void repl_leader_free(repl_leader_t **l);

/* Before stopping: commits what is queued and answers every `all` write
 * still waiting for acks (KB_EUNAVAIL + its WriteResult: it IS committed). */
void repl_leader_shutdown(repl_leader_t *l, void *router);

/* The replication socket to poll for input, or NULL. */
void *repl_leader_socket(repl_leader_t *l);

/* Validates req (an upsert or delete) and queues it for the next group
 * commit, taking ownership of req. A request that fails validation is
 * answered at once with the reason, and nothing of it is written. */
void repl_leader_submit(repl_leader_t *l, void *router, const kb_peer_t *peer,
                        Kbsync__Request *req);

/* Number of ops (documents + ids) queued. */
size_t repl_leader_queued(const repl_leader_t *l);

/* Commits every queued request in ONE durable LMDB transaction and answers
 * each (or parks it until its replicas ack). If the commit fails, every
 * queued request gets the error and none of them is written. */
void repl_leader_flush(repl_leader_t *l, void *router);

/* Handles everything waiting on the replication socket. */
void repl_leader_on_repl(repl_leader_t *l, void *router);

/* Heartbeats, catch-up streaming, dead replicas and `all` timeouts. Call
 * at least every repl_leader_tick() milliseconds (its return value). */
int repl_leader_tick(repl_leader_t *l, void *router);

/* Idempotency table: results kept (as of the last expiry pass) and
 * retries answered from it since start. */
void repl_leader_dedup_stats(const repl_leader_t *l, uint64_t *entries,
                             uint64_t *retries);

/* Fills the leader-only part of a status answer: the replica list.
 * Pointers are borrowed from the leader until the next call. */
void repl_leader_replicas(repl_leader_t *l, Kbsync__ReplicaState ***out,
                          size_t *n);

#endif
