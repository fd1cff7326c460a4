/* node_metrics: the node's Prometheus endpoint (--metrics-listen). In: HTTP
 * GET /metrics on a libmicrohttpd thread. Out: the text exposition format
 * (version 0.0.4) of the node's state and the process's kb_metrics.
 *
 * The HTTP thread never reads node state itself: it asks the node loop over
 * an inproc REQ/REP pair, and the loop renders the page from the same
 * NodeState that `status` answers (node_metrics_render), so a scrape sees
 * one consistent moment and adds no lock to the loop. A loop that does not
 * answer within 5 s gets the scrape a 503. */
#ifndef NODE_METRICS_H
#define NODE_METRICS_H

#include "kbsync.pb-c.h"

#include <stddef.h>
#include <stdint.h>

typedef struct node_metrics node_metrics_t;

/* Binds the loop's side in zctx and starts the HTTP server on listen
 * ("HOST:PORT"; HOST an IPv4 address, 127.0.0.1 when empty; PORT 0 picks a
 * free one). Returns 0, or KB_EINVAL (a malformed address) / KB_ENET (it
 * cannot listen) with err set. */
int node_metrics_start(void *zctx, const char *listen, node_metrics_t **out,
                       char *err, size_t errlen);
/* The REP socket the node loop polls; NULL-safe. */
void *node_metrics_socket(node_metrics_t *m);
/* The TCP port it listens on. */
unsigned node_metrics_port(const node_metrics_t *m);
/* Stops the HTTP thread, then closes the socket. Accepts NULL. */
void node_metrics_stop(node_metrics_t **m);

/* The page for state s (with its replicas on a leader) and the process's
 * counters: a malloc'd NUL-terminated text (*len bytes), NULL when out of
 * memory. Any thread. */
char *node_metrics_render(const Kbsync__NodeState *s, size_t *len);

#endif
