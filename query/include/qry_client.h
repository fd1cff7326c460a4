/* qry_client: the client side of the kbsync API, used by the CLI, the
 * benchmarks and the tests. In: Requests built by the caller. Out: the
 * node's Responses, matched by request_id. Owns a ZeroMQ context and one
 * DEALER socket connected to one node; several requests may be in flight. */
#ifndef QRY_CLIENT_H
#define QRY_CLIENT_H

#include "kbsync.pb-c.h"

#include <stddef.h>
#include <stdint.h>

typedef struct qry_client qry_client_t;

/* Connects to endpoint (e.g. tcp://127.0.0.1:7400). ZeroMQ connects in the
 * background, so a node that is down shows up as a timeout on recv. */
int qry_client_open(const char *endpoint, qry_client_t **out, char *err,
                    size_t errlen);
void qry_client_close(qry_client_t **c);

/* Sends req after filling in protocol_version and a fresh request_id
 * (returned in *rid). Does not wait for the answer. */
int qry_client_send(qry_client_t *c, Kbsync__Request *req, uint64_t *rid,
                    char *err, size_t errlen);

/* Waits up to timeout_ms (-1 = forever) for the next Response. Returns 0
 * and sets *resp (free with kbsync__response__free_unpacked), KB_ETIMEOUT
 * naming the endpoint, or KB_EBADMSG for an undecodable answer. */
int qry_client_recv(qry_client_t *c, int timeout_ms, Kbsync__Response **resp,
                    char *err, size_t errlen);

/* send + wait for the Response with that request_id. A Response carrying
 * an error is returned as 0 with (*resp)->error set: the caller decides. */
int qry_client_call(qry_client_t *c, Kbsync__Request *req, int timeout_ms,
                    Kbsync__Response **resp, char *err, size_t errlen);

#endif
