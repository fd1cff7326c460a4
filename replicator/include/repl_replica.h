/* repl_replica: a query node following the leader. In: ReplWelcome,
 * ReplRecords and ReplBeat from the leader's replication socket. Out: the
 * leader's log applied in LSN order, durably (LMDB, then FAISS), ReplAcks
 * (received/durable/applied LSNs and the store's digest), read-index
 * requests for strong reads,
 * and the node's staleness (leader_version, lag_ops, lag_ms, contact age).
 * Owns the replica's idx (opened at start when DIR holds a knowledge base,
 * else created from the leader's settings on first contact) and a DEALER
 * socket to the leader. Called from the node loop only, except
 * repl_replica_staleness(), which reader threads call too. */
#ifndef REPL_REPLICA_H
#define REPL_REPLICA_H

#include "idx.h"
#include "kbsync.pb-c.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct repl_replica repl_replica_t;

typedef struct repl_replica_config {
    const char *id;       /* replica id: the leader's --replicas names it */
    const char *leader;   /* the leader's replication endpoint */
    const char *data_dir; /* this replica's own knowledge base */
    uint64_t map_size;    /* bytes; 0 = default */
    int nosync;           /* benchmarks only */
    uint64_t ckpt_ops;    /* idx_config_t's checkpoint settings */
    uint32_t ckpt_secs;
    int ckpt_off;
    uint32_t scrub_ms; /* idx_config_t's digest-check setting */
    /* Held exclusively while the replica's knowledge base is created,
     * closed or replaced (reader threads hold it shared around a search);
     * borrowed, may be NULL. */
    pthread_rwlock_t *ix_lock;
    /* CURVE: this replica's key pair and its leader's public key (server);
     * NULL: plain TCP. */
    const struct kb_curve *curve;
} repl_replica_config_t;

/* zctx is borrowed. Opens DIR if it holds a knowledge base (so the replica
 * can answer, stale, while the leader is away) and connects to the leader. */
int repl_replica_new(void *zctx, const repl_replica_config_t *cfg,
                     repl_replica_t **out, char *err, size_t errlen);
void repl_replica_free(repl_replica_t **r);

/* The DEALER socket to poll for input. */
void *repl_replica_socket(repl_replica_t *r);

/* Handles everything waiting from the leader: applies records, acks.
 * Returns the number of log records applied. */
size_t repl_replica_on_msg(repl_replica_t *r);

/* Hellos while not streaming, acks as heartbeats. Returns the ms until it
 * wants to be called again. */
int repl_replica_tick(repl_replica_t *r);

/* The replica's knowledge base, or NULL before the first contact with the
 * leader created it. Borrowed; may change after repl_replica_on_msg(). A
 * reader thread calls this with cfg->ix_lock held shared. */
idx_kb_t *repl_replica_idx(repl_replica_t *r);

/* Fills version, leader_version, lag_ops, lag_ms and leader_contact_ms
 * (see docs/CONSISTENCY.md for the exact rules) for an answer reflecting
 * view (NULL: the newest applied version; node loop only). Any thread. */
void repl_replica_staleness(repl_replica_t *r, const idx_view_t *view,
                            Kbsync__NodeState *s);

/* Strong reads (read index): begin() asks the leader for its committed
 * LSN with a request sent from now on and returns that request's seq; once
 * repl_replica_read_index() reports an answered seq >= it, its lsn is the
 * version the read must wait for. Requests are batched: one in flight, the
 * reads that arrive meanwhile share the next. Node loop only. */
uint64_t repl_replica_read_index_begin(repl_replica_t *r);
void repl_replica_read_index(const repl_replica_t *r, uint64_t *seq,
                             uint64_t *lsn);

/* Copies of the knowledge base started over because a digest did not
 * match (the leader's, or the stored documents'). */
uint64_t repl_replica_resyncs(const repl_replica_t *r);

/* The leader's client endpoint as it announced it ("" until known). */
const char *repl_replica_leader_endpoint(const repl_replica_t *r);

/* A snapshot being loaded (the replica serves no query until it is
 * complete): the LSN it ends at, documents and bytes so far, and an ETA at
 * the rate since this session began (0 = unknown). */
typedef struct repl_snapshot {
    uint64_t lsn, version, docs_total, docs_loaded, bytes_loaded, eta_ms;
} repl_snapshot_t;

/* Fills *p and returns 1 while loading a snapshot, else 0. Node loop. */
int repl_replica_snapshot(repl_replica_t *r, repl_snapshot_t *p);

#endif
