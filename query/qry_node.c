/* qry_node: the node's event loop (see qry_node.h). One thread polls the
 * client ROUTER socket; each wake-up drains what is waiting (up to a
 * bound), queues writes for one group commit, and serves reads in arrival
 * order. A read that arrives after a write on the same socket is answered
 * only after that write is committed, so a client always reads its own
 * acknowledged writes from the node it wrote to.
 *
 * STALENESS
 * Every query and status answer carries NodeState: version (LSN applied
 * here), leader_version (newest leader LSN known here), lag_ops =
 * leader_version - version, and lag_ms = now - leader commit time of the
 * oldest write not yet applied here (0 when lag_ops is 0). On a leader the
 * two versions are equal by definition and both lags are 0. */
#include "qry_node.h"

#include "kb_err.h"
#include "kb_util.h"
#include "kb_wire.h"
#include "repl_leader.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define NODE_DRAIN_MAX 256     /* messages handled per wake-up */
#define NODE_GROUP_MAX 100000  /* ops in one group commit */

typedef struct node {
    idx_t *ix;
    const qry_node_config_t *cfg;
    void *ctx, *router;
    repl_leader_t *leader;
} node_t;

static void node_state(node_t *n, Kbsync__NodeState *s)
{
    idx_stats_t st;
    idx_stats(n->ix, &st);
    kbsync__node_state__init(s);
    s->role = "leader";
    s->node_id = (char *)st.node_id;
    s->version = st.version;
    s->leader_version = st.version;
    s->lag_ops = 0;
    s->lag_ms = 0;
    s->docs = st.docs;
    s->dim = st.dim;
    s->metric = (char *)st.metric;
    s->index = (char *)st.index;
}

static void node_status(node_t *n, const kb_peer_t *peer, uint64_t rid)
{
    Kbsync__NodeState s;
    node_state(n, &s);
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    r.request_id = rid;
    r.body_case = KBSYNC__RESPONSE__BODY_STATUS;
    r.status = &s;
    kb_wire_send_response(n->router, peer, &r);
}

static void node_query(node_t *n, const kb_peer_t *peer, uint64_t rid,
                       const Kbsync__QueryRequest *q)
{
    char err[512];
    idx_stats_t st;
    idx_stats(n->ix, &st);
    if (q->n_vector && q->n_vector != st.dim) {
        snprintf(err, sizeof err,
                 "query vector has %zu values, the knowledge base has dim %u",
                 q->n_vector, st.dim);
        kb_wire_send_error(n->router, peer, rid, KB_EDIM, err);
        return;
    }
    if (q->min_version > st.version) {
        /* On the leader every acknowledged write is applied: a token above
         * its version was never handed out by it. */
        snprintf(err, sizeof err,
                 "min_version %llu is above the leader's version %llu: no "
                 "such write was acknowledged",
                 (unsigned long long)q->min_version,
                 (unsigned long long)st.version);
        kb_wire_send_error(n->router, peer, rid, KB_ESTALE, err);
        return;
    }
    idx_hits_t h;
    int rc = idx_search(n->ix, q->n_vector ? q->vector : NULL, q->text,
                        q->text ? strlen(q->text) : 0, q->k, &h, err,
                        sizeof err);
    if (rc) {
        kb_wire_send_error(n->router, peer, rid, rc, err);
        return;
    }
    Kbsync__Hit *hits = calloc(h.n ? h.n : 1, sizeof *hits);
    Kbsync__Hit **hp = calloc(h.n ? h.n : 1, sizeof *hp);
    if (!hits || !hp) {
        free(hits);
        free(hp);
        idx_hits_free(&h);
        kb_wire_send_error(n->router, peer, rid, KB_ENOMEM, "out of memory");
        return;
    }
    for (size_t i = 0; i < h.n; i++) {
        kbsync__hit__init(&hits[i]);
        hits[i].id = (char *)h.hit[i].id;
        hits[i].score = h.hit[i].score;
        hits[i].text = (char *)h.hit[i].text;
        hits[i].metadata_json = (char *)h.hit[i].metadata;
        hp[i] = &hits[i];
    }
    Kbsync__NodeState s;
    node_state(n, &s);
    Kbsync__QueryResult qr = KBSYNC__QUERY_RESULT__INIT;
    qr.state = &s;
    qr.n_hits = h.n;
    qr.hits = hp;
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    r.request_id = rid;
    r.body_case = KBSYNC__RESPONSE__BODY_QUERY;
    r.query = &qr;
    kb_wire_send_response(n->router, peer, &r);
    free(hits);
    free(hp);
    idx_hits_free(&h);
}

/* Handles one message; returns 1 when it queued a write. */
static void node_handle(node_t *n, const kb_peer_t *peer, const kb_buf_t *b)
{
    char err[512];
    Kbsync__Request *req;
    uint64_t rid;
    int rc = kb_wire_decode_request(b->data, b->len, n->cfg->max_msg, &req,
                                    &rid, err, sizeof err);
    if (rc) {
        kb_warn("refused a request: %s", err);
        repl_leader_flush(n->leader, n->router);
        kb_wire_send_error(n->router, peer, rid, rc, err);
        return;
    }
    switch (req->body_case) {
    case KBSYNC__REQUEST__BODY_UPSERT:
    case KBSYNC__REQUEST__BODY_DELETE:
        repl_leader_submit(n->leader, n->router, peer, req); /* takes req */
        if (repl_leader_queued(n->leader) >= NODE_GROUP_MAX)
            repl_leader_flush(n->leader, n->router);
        return;
    case KBSYNC__REQUEST__BODY_QUERY:
        repl_leader_flush(n->leader, n->router);
        node_query(n, peer, rid, req->query);
        break;
    case KBSYNC__REQUEST__BODY_STATUS:
        repl_leader_flush(n->leader, n->router);
        node_status(n, peer, rid);
        break;
    default:
        kb_wire_send_error(n->router, peer, rid, KB_EBADMSG,
                           "unknown request body");
        break;
    }
    kbsync__request__free_unpacked(req, NULL);
}

static int node_open(node_t *n, char *err, size_t errlen)
{
    n->ctx = zmq_ctx_new();
    if (!n->ctx)
        return kb_seterr(err, errlen, KB_ENET, "zmq_ctx_new failed");
    n->router = zmq_socket(n->ctx, ZMQ_ROUTER);
    if (!n->router)
        return kb_seterr(err, errlen, KB_ENET, "zmq_socket: %s",
                         zmq_strerror(errno));
    int zero = 0;
    /* A message far above max_msg is dropped by ZeroMQ itself (the sender's
     * connection is closed); between max_msg and this, the sender gets a
     * clear KB_ETOOBIG answer. */
    int64_t hard = (int64_t)n->cfg->max_msg * 4 + (1 << 20);
    zmq_setsockopt(n->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(n->router, ZMQ_MAXMSGSIZE, &hard, sizeof hard);
    if (zmq_bind(n->router, n->cfg->listen))
        return kb_seterr(err, errlen, KB_ENET, "cannot listen on %s: %s",
                         n->cfg->listen, zmq_strerror(errno));
    char ep[256];
    size_t eplen = sizeof ep;
    zmq_getsockopt(n->router, ZMQ_LAST_ENDPOINT, ep, &eplen);
    kb_info("serving on %s", ep);
    if (n->cfg->endpoint_file) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", n->cfg->endpoint_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%s\n", ep) < 0 || fclose(f) ||
            rename(tmp, n->cfg->endpoint_file))
            return kb_seterr(err, errlen, -errno,
                             "cannot write endpoint file %s: %s",
                             n->cfg->endpoint_file, strerror(errno));
    }
    return repl_leader_new(n->ix, &n->leader);
}

int qry_node_run(idx_t *ix, const qry_node_config_t *cfg,
                 volatile sig_atomic_t *stop, char *err, size_t errlen)
{
    node_t n = {.ix = ix, .cfg = cfg};
    int rc = node_open(&n, err, errlen);
    while (!rc && !*stop) {
        zmq_pollitem_t items[1] = {{n.router, 0, ZMQ_POLLIN, 0}};
        int pr = zmq_poll(items, 1, 200);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            rc = kb_seterr(err, errlen, KB_ENET, "zmq_poll: %s",
                           zmq_strerror(errno));
            break;
        }
        for (int i = 0; i < NODE_DRAIN_MAX; i++) {
            kb_peer_t peer;
            kb_buf_t b;
            int r = kb_wire_recv(n.router, &peer, &b);
            if (r == -EAGAIN || r == -EINTR)
                break;
            if (r) {
                kb_warn("dropped a malformed message envelope (%s)",
                        kb_strerror(r));
                continue;
            }
            node_handle(&n, &peer, &b);
            kb_buf_free(&b);
        }
        repl_leader_flush(n.leader, n.router);
    }
    if (n.leader)
        repl_leader_flush(n.leader, n.router);
    repl_leader_free(&n.leader);
    if (n.router)
        zmq_close(n.router);
    if (n.ctx)
        zmq_ctx_term(n.ctx);
    if (!rc)
        kb_info("stopped cleanly");
    return rc;
}
