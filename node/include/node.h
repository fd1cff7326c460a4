/* node: a kbsync node, leader or replica: its event loop and its threads.
 * In: client Requests on one ROUTER socket, plus the replication socket of
 * its role. Out: writes to the leader's group commit (replicator/), queries
 * to the reader pool (query/qry_pool), status answers; answers from the
 * readers forwarded to their clients.
 *
 * THREADS AND OWNERSHIP
 * - The node loop (the calling thread of node_run) owns the ZeroMQ sockets
 *   (client ROUTER, the inproc PULL the readers answer on, the role's
 *   replication socket), the role object (repl_leader: group commit, log
 *   shipping, acks; repl_replica: apply, acks, hellos), the queries parked
 *   for min_version, and the queries held until the same client's queued
 *   write is committed. It is the knowledge base's only writer. It never
 *   runs a search and never waits for one: the stream (receive, apply,
 *   ack, heartbeat) and the group commit go on while readers search
 *   (idx.h: writes go to a delta, not into the FAISS index).
 * - --query-threads reader threads (qry_pool) search and answer queries.
 * - One background rebuild thread per knowledge base (idx.h).
 * ix_lock (a reader-writer lock) keeps a replica's knowledge base alive for
 * the readers: they hold it shared for a batch; the loop holds it
 * exclusively to create, close or replace it. */
#ifndef NODE_H
#define NODE_H

#include "idx.h"
#include "repl_leader.h"
#include "repl_replica.h"

#include <signal.h>
#include <stddef.h>

#define NODE_CLIENT_QUEUE_DEFAULT (64u << 20)

typedef enum node_role { NODE_LEADER = 0, NODE_REPLICA = 1 } node_role_t;

typedef struct node_config {
    const char *listen;        /* ZMQ endpoint, e.g. tcp://127.0.0.1:7400 */
    const char *endpoint_file; /* if set, the bound endpoint is written here */
    size_t max_msg;            /* largest request accepted, bytes */
    int query_threads;         /* reader threads; 0 = the number of cores */
    node_role_t role;
    /* CURVE (kb_sec.h): the node's key pair, used on the client socket and
     * the replication socket (a replica's own is in replica.curve); NULL
     * for plain TCP. trust_file: the ZAP trust file (keys and roles). */
    const struct kb_curve *curve;
    const char *trust_file;
    /* Unread query answer bytes a client may have queued before its
     * answers and requests are dropped (qry_pool.h, CLIENT QUEUES);
     * 0 = NODE_CLIENT_QUEUE_DEFAULT, UINT64_MAX = no limit. */
    uint64_t max_client_queue;
    int insecure; /* --insecure: reported in status */
    /* --metrics-listen HOST:PORT: the Prometheus endpoint (node_metrics.h);
     * NULL = none. */
    const char *metrics_listen;
    repl_leader_config_t leader;   /* role == NODE_LEADER */
    repl_replica_config_t replica; /* role == NODE_REPLICA */
} node_config_t;

/* Serves until *stop becomes non-zero (set it from a signal handler).
 * ix: the leader's knowledge base (borrowed); NULL for a replica, which
 * opens its own. Returns 0 on a clean stop, or a negative code with err set
 * when the node could not start (e.g. the endpoint is in use). */
int node_run(idx_kb_t *ix, const node_config_t *cfg,
             volatile sig_atomic_t *stop, char *err, size_t errlen);

#endif
