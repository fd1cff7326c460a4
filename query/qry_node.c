/* qry_node: the node's event loop (see qry_node.h). One thread polls the
 * client ROUTER socket and the role's replication socket; each wake-up
 * drains what is waiting (up to a bound), queues writes for one group
 * commit, and serves reads in arrival order. A read that arrives after a
 * write on the same node is answered only after that write is committed,
 * so a client always reads its own acknowledged writes from the node it
 * wrote to.
 *
 * STALENESS
 * Every query and status answer carries NodeState: version (LSN applied
 * here), leader_version (newest leader LSN known here), lag_ops =
 * leader_version - version, lag_ms (how long the oldest write not applied
 * here has been committed on the leader; rules in repl_replica.c) and
 * leader_contact_ms. On the leader the two versions are equal by definition
 * and both lags are 0.
 *
 * READ CONSISTENCY
 * QueryRequest.min_version (read-your-writes: pass the version a write
 * returned): a node below it waits up to wait_ms (default 1000, at most
 * 60000) for the replication stream to reach it, then refuses with
 * KB_ESTALE naming both versions. On the leader a token above its version
 * was never handed out and is refused at once. max_lag_ms: a node whose
 * lag_ms is above the bound refuses with KB_ESTALE at once. A replica that
 * has not yet received the leader's settings answers KB_EUNAVAIL. */
#include "qry_node.h"

#include "kb_err.h"
#include "kb_util.h"
#include "kb_wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define NODE_DRAIN_MAX 256    /* client messages handled per wake-up */
#define NODE_GROUP_MAX 100000 /* ops in one group commit */
#define NODE_WAIT_DEFAULT_MS 1000
#define NODE_WAIT_MAX_MS 60000

typedef struct waiting { /* a query waiting for min_version */
    kb_peer_t peer;
    Kbsync__Request *req;
    uint64_t deadline_us;
} waiting_t;

typedef struct node {
    idx_kb_t *ix; /* leader: borrowed; replica: repl_replica's */
    const qry_node_config_t *cfg;
    void *ctx, *router;
    repl_leader_t *leader;
    repl_replica_t *replica;
    waiting_t *wait;
    size_t nwait, waitcap;
} node_t;

static idx_kb_t *node_idx(node_t *n)
{
    return n->replica ? repl_replica_idx(n->replica) : n->ix;
}

static void node_state(node_t *n, Kbsync__NodeState *s,
                       Kbsync__ReplicaState ***rs, size_t *nrs)
{
    kbsync__node_state__init(s);
    idx_kb_t *ix = node_idx(n);
    idx_stats_t st;
    if (ix) {
        idx_stats(ix, &st);
        s->node_id = (char *)st.node_id;
        s->version = st.version;
        s->docs = st.docs;
        s->dim = st.dim;
        s->metric = (char *)st.metric;
        s->index = (char *)st.index;
    } else {
        s->node_id = (char *)n->cfg->replica.id;
    }
    if (n->replica) {
        s->role = "replica";
        repl_replica_staleness(n->replica, s);
    } else {
        s->role = "leader";
        s->leader_version = s->version;
        if (rs)
            repl_leader_replicas(n->leader, rs, nrs);
    }
}

static void node_status(node_t *n, const kb_peer_t *peer, uint64_t rid)
{
    Kbsync__NodeState s;
    Kbsync__ReplicaState **rs = NULL;
    size_t nrs = 0;
    node_state(n, &s, &rs, &nrs);
    s.replicas = rs;
    s.n_replicas = nrs;
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    r.request_id = rid;
    r.body_case = KBSYNC__RESPONSE__BODY_STATUS;
    r.status = &s;
    kb_wire_send_response(n->router, peer, &r);
}

/* Returns 1 when the query was answered (hits or error), 0 when it must
 * wait for min_version. */
static int node_query(node_t *n, const kb_peer_t *peer, uint64_t rid,
                      const Kbsync__QueryRequest *q, int may_wait)
{
    char err[512];
    idx_kb_t *ix = node_idx(n);
    if (!ix) {
        kb_wire_send_error(n->router, peer, rid, KB_EUNAVAIL,
                           "replica has not received the knowledge base's "
                           "settings from its leader yet");
        return 1;
    }
    Kbsync__NodeState s;
    node_state(n, &s, NULL, NULL);
    if (q->n_vector && q->n_vector != s.dim) {
        snprintf(err, sizeof err,
                 "query vector has %zu values, the knowledge base has dim %u",
                 q->n_vector, s.dim);
        kb_wire_send_error(n->router, peer, rid, KB_EDIM, err);
        return 1;
    }
    if (q->min_version > s.version) {
        if (!n->replica) {
            snprintf(err, sizeof err,
                     "min_version %llu is above the leader's version %llu: no "
                     "such write was acknowledged",
                     (unsigned long long)q->min_version,
                     (unsigned long long)s.version);
            kb_wire_send_error(n->router, peer, rid, KB_ESTALE, err);
            return 1;
        }
        if (may_wait)
            return 0;
        snprintf(err, sizeof err,
                 "node %s is at version %llu, below the requested min_version "
                 "%llu, after waiting %u ms (leader_version %llu, lag %llu ms)",
                 s.node_id, (unsigned long long)s.version,
                 (unsigned long long)q->min_version,
                 q->wait_ms ? q->wait_ms : NODE_WAIT_DEFAULT_MS,
                 (unsigned long long)s.leader_version,
                 (unsigned long long)s.lag_ms);
        kb_wire_send_error(n->router, peer, rid, KB_ESTALE, err);
        return 1;
    }
    if (q->max_lag_ms && s.lag_ms > q->max_lag_ms) {
        snprintf(err, sizeof err,
                 "node %s lags the leader by %llu ms (%llu versions), above "
                 "max_lag_ms %llu",
                 s.node_id, (unsigned long long)s.lag_ms,
                 (unsigned long long)s.lag_ops,
                 (unsigned long long)q->max_lag_ms);
        kb_wire_send_error(n->router, peer, rid, KB_ESTALE, err);
        return 1;
    }
    idx_hits_t h;
    int rc =
        idx_search(ix, q->n_vector ? q->vector : NULL, q->text,
                   q->text ? strlen(q->text) : 0, q->k, &h, err, sizeof err);
    if (rc) {
        kb_wire_send_error(n->router, peer, rid, rc, err);
        return 1;
    }
    Kbsync__Hit *hits = calloc(h.n ? h.n : 1, sizeof *hits);
    Kbsync__Hit **hp = calloc(h.n ? h.n : 1, sizeof *hp);
    if (!hits || !hp) {
        free(hits);
        free(hp);
        idx_hits_free(&h);
        kb_wire_send_error(n->router, peer, rid, KB_ENOMEM, "out of memory");
        return 1;
    }
    for (size_t i = 0; i < h.n; i++) {
        kbsync__hit__init(&hits[i]);
        hits[i].id = (char *)h.hit[i].id;
        hits[i].score = h.hit[i].score;
        hits[i].text = (char *)h.hit[i].text;
        hits[i].metadata_json = (char *)h.hit[i].metadata;
        hp[i] = &hits[i];
    }
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
    return 1;
}

/* Parks a query until min_version arrives; takes ownership of req. */
static void node_park(node_t *n, const kb_peer_t *peer, Kbsync__Request *req)
{
    if (n->nwait == n->waitcap) {
        size_t cap = n->waitcap ? n->waitcap * 2 : 16;
        waiting_t *w = realloc(n->wait, cap * sizeof *w);
        if (!w) {
            kb_wire_send_error(n->router, peer, req->request_id, KB_ENOMEM,
                               "out of memory");
            kbsync__request__free_unpacked(req, NULL);
            return;
        }
        n->wait = w;
        n->waitcap = cap;
    }
    uint32_t ms =
        req->query->wait_ms ? req->query->wait_ms : NODE_WAIT_DEFAULT_MS;
    if (ms > NODE_WAIT_MAX_MS)
        ms = NODE_WAIT_MAX_MS;
    waiting_t *w = &n->wait[n->nwait++];
    w->peer = *peer;
    w->req = req;
    w->deadline_us = kb_mono_us() + (uint64_t)ms * 1000u;
}

/* Answers waiting queries whose min_version arrived or whose time is up. */
static void node_unpark(node_t *n)
{
    uint64_t now = kb_mono_us();
    size_t keep = 0;
    for (size_t i = 0; i < n->nwait; i++) {
        waiting_t *w = &n->wait[i];
        int may_wait = now < w->deadline_us;
        if (node_query(n, &w->peer, w->req->request_id, w->req->query,
                       may_wait))
            kbsync__request__free_unpacked(w->req, NULL);
        else
            n->wait[keep++] = *w;
    }
    n->nwait = keep;
}

static void node_flush(node_t *n)
{
    if (n->leader)
        repl_leader_flush(n->leader, n->router);
}

static void node_handle(node_t *n, const kb_peer_t *peer, const kb_buf_t *b)
{
    char err[512];
    Kbsync__Request *req;
    uint64_t rid;
    int rc = kb_wire_decode_request(b->data, b->len, n->cfg->max_msg, &req,
                                    &rid, err, sizeof err);
    if (rc) {
        kb_warn("refused a request: %s", err);
        node_flush(n);
        kb_wire_send_error(n->router, peer, rid, rc, err);
        return;
    }
    switch (req->body_case) {
    case KBSYNC__REQUEST__BODY_UPSERT:
    case KBSYNC__REQUEST__BODY_DELETE:
        if (n->replica) {
            const char *ep = repl_replica_leader_endpoint(n->replica);
            snprintf(err, sizeof err,
                     "this node is replica %s and does not accept writes; "
                     "send them to the leader at %s",
                     n->cfg->replica.id, *ep ? ep : n->cfg->replica.leader);
            kb_wire_send_error(n->router, peer, rid, KB_ENOTLEADER, err);
            break;
        }
        repl_leader_submit(n->leader, n->router, peer, req); /* takes req */
        if (repl_leader_queued(n->leader) >= NODE_GROUP_MAX)
            node_flush(n);
        return;
    case KBSYNC__REQUEST__BODY_QUERY:
        node_flush(n);
        if (!node_query(n, peer, rid, req->query, 1)) {
            node_park(n, peer, req); /* takes req */
            return;
        }
        break;
    case KBSYNC__REQUEST__BODY_STATUS:
        node_flush(n);
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
    /* ROUTER drops answers silently past its send queue limit (1000 by
     * default): let pipelining clients have many requests in flight. */
    int hwm = 100000;
    zmq_setsockopt(n->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    if (zmq_bind(n->router, n->cfg->listen))
        return kb_seterr(err, errlen, KB_ENET, "cannot listen on %s: %s",
                         n->cfg->listen, zmq_strerror(errno));
    char ep[256];
    size_t eplen = sizeof ep;
    zmq_getsockopt(n->router, ZMQ_LAST_ENDPOINT, ep, &eplen);
    int rc;
    if (n->cfg->role == QRY_REPLICA) {
        rc = repl_replica_new(n->ctx, &n->cfg->replica, &n->replica, err,
                              errlen);
    } else {
        repl_leader_config_t lc = n->cfg->leader;
        lc.client_endpoint = ep;
        rc = repl_leader_new(n->ix, n->ctx, &lc, &n->leader, err, errlen);
    }
    if (rc)
        return rc;
    kb_info("%s serving clients on %s",
            n->cfg->role == QRY_REPLICA ? "replica" : "leader", ep);
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
    return 0;
}

int qry_node_run(idx_kb_t *ix, const qry_node_config_t *cfg,
                 volatile sig_atomic_t *stop, char *err, size_t errlen)
{
    node_t n = {.ix = ix, .cfg = cfg};
    int rc = node_open(&n, err, errlen);
    int timeout = 0;
    while (!rc && !*stop) {
        zmq_pollitem_t items[2] = {{n.router, 0, ZMQ_POLLIN, 0},
                                   {NULL, 0, ZMQ_POLLIN, 0}};
        int nitems = 1;
        void *rs = n.leader ? repl_leader_socket(n.leader)
                            : repl_replica_socket(n.replica);
        if (rs)
            items[nitems++].socket = rs;
        if (n.nwait && timeout > 20)
            timeout = 20; /* re-check waiting reads' deadlines */
        int pr = zmq_poll(items, nitems, timeout);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            rc = kb_seterr(err, errlen, KB_ENET, "zmq_poll: %s",
                           zmq_strerror(errno));
            break;
        }
        /* Replication first: applied records can release waiting reads. */
        if (n.replica) {
            if (repl_replica_on_msg(n.replica) && n.nwait)
                node_unpark(&n);
        } else {
            repl_leader_on_repl(n.leader, n.router);
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
        node_flush(&n);
        timeout = n.leader ? repl_leader_tick(n.leader, n.router)
                           : repl_replica_tick(n.replica);
        if (n.nwait)
            node_unpark(&n);
    }
    if (n.leader)
        repl_leader_shutdown(n.leader, n.router);
    for (size_t i = 0; i < n.nwait; i++) {
        kb_wire_send_error(n.router, &n.wait[i].peer, n.wait[i].req->request_id,
                           KB_EUNAVAIL, "node is shutting down");
        kbsync__request__free_unpacked(n.wait[i].req, NULL);
    }
    free(n.wait);
    repl_leader_free(&n.leader);
    repl_replica_free(&n.replica);
    if (n.router)
        zmq_close(n.router);
    if (n.ctx)
        zmq_ctx_term(n.ctx);
    if (!rc)
        kb_info("stopped cleanly");
    return rc;
}
