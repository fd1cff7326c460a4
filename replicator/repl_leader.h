/* repl_leader: the leader's write path. In: decoded Upsert/Delete requests
 * from clients. Out: one durable group commit per batch of requests (LSNs
 * assigned in arrival order) and a WriteResult or error to each client.
 * Owns the queue of requests waiting for the next commit; borrows the idx
 * and the client socket. Single-threaded: called from the node loop only. */
#ifndef REPL_LEADER_H
#define REPL_LEADER_H

#include "idx.h"
#include "kb_wire.h"

#include <stddef.h>

typedef struct repl_leader repl_leader_t;

/* ix is borrowed and must outlive the leader. */
int repl_leader_new(idx_t *ix, repl_leader_t **out);
/* Answers nothing still queued (call repl_leader_flush first); accepts NULL
 * and sets *l to NULL. */
void repl_leader_free(repl_leader_t **l);

/* Validates req (an upsert or delete) and queues it for the next group
 * commit, taking ownership of req. A request that fails validation is
 * answered at once with the reason, and nothing of it is written. */
void repl_leader_submit(repl_leader_t *l, void *router, const kb_peer_t *peer,
                        Kbsync__Request *req);

/* Number of ops (documents + ids) queued. */
size_t repl_leader_queued(const repl_leader_t *l);

/* Commits every queued request in ONE durable LMDB transaction and answers
 * each; if the commit fails, every queued request gets the error and none of
 * them is written. */
void repl_leader_flush(repl_leader_t *l, void *router);

#endif
