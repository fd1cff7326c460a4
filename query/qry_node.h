/* qry_node: the serving loop of a kbsync node. In: client Requests on one
 * ROUTER socket (and, with replication, the replication socket). Out:
 * query hits and status with the node's version and staleness; writes are
 * handed to the leader's write path (replicator/). Owns the ZeroMQ context
 * and sockets; borrows the idx. Runs on the calling thread until *stop. */
#ifndef QRY_NODE_H
#define QRY_NODE_H

#include "idx.h"

#include <signal.h>
#include <stddef.h>

typedef struct qry_node_config {
    const char *listen;        /* ZMQ endpoint, e.g. tcp://127.0.0.1:7400 */
    const char *endpoint_file; /* if set, the bound endpoint is written here */
    size_t max_msg;            /* largest request accepted, bytes */
} qry_node_config_t;

/* Serves until *stop becomes non-zero (set it from a signal handler).
 * Returns 0 on a clean stop, or a negative code with err set when the
 * node could not start (e.g. the endpoint is in use). */
int qry_node_run(idx_t *ix, const qry_node_config_t *cfg,
                 volatile sig_atomic_t *stop, char *err, size_t errlen);

#endif
