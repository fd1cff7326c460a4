/* qry_node: the serving loop of a kbsync node, leader or replica. In:
 * client Requests on one ROUTER socket, plus the replication socket of its
 * role. Out: query hits and status carrying the node's version and
 * staleness; reads that demand freshness wait or are refused; writes go to
 * the leader's write path (replicator/repl_leader) and are refused on a
 * replica. Owns the ZeroMQ context and client socket, and the role's
 * replicator object; borrows the leader's idx. Runs on the calling thread
 * until *stop. */
#ifndef QRY_NODE_H
#define QRY_NODE_H

#include "idx.h"
#include "repl_leader.h"
#include "repl_replica.h"

#include <signal.h>
#include <stddef.h>

typedef enum qry_role { QRY_LEADER = 0, QRY_REPLICA = 1 } qry_role_t;

typedef struct qry_node_config {
    const char *listen;        /* ZMQ endpoint, e.g. tcp://127.0.0.1:7400 */
    const char *endpoint_file; /* if set, the bound endpoint is written here */
    size_t max_msg;            /* largest request accepted, bytes */
    qry_role_t role;
    repl_leader_config_t leader;   /* role == QRY_LEADER */
    repl_replica_config_t replica; /* role == QRY_REPLICA */
} qry_node_config_t;

/* Serves until *stop becomes non-zero (set it from a signal handler).
 * ix: the leader's knowledge base (borrowed); NULL for a replica, which
 * opens its own. Returns 0 on a clean stop, or a negative code with err set
 * when the node could not start (e.g. the endpoint is in use). */
int qry_node_run(idx_kb_t *ix, const qry_node_config_t *cfg,
                 volatile sig_atomic_t *stop, char *err, size_t errlen);

#endif
